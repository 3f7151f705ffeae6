//! Reads a node serves for an instance, locally or for a peer that
//! forwarded them: everything `service.rs` asks the store about one
//! instance, as one serde enum so that it can travel over the peer
//! connection unchanged.

use ckpt_proto::{
    CheckpointName, CheckpointStatus, CkptResult, CreationAttributes, ReadElement,
    SectionDescriptor, SectionId,
};
use ckpt_storage::{InstanceId, InstanceMeta, Store};
use serde::{Deserialize, Serialize};

/// A read of one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadRequest {
    /// `Store::read`: the data of every element from one point in time.
    Read { elements: Vec<ReadElement> },
    /// What a read of these elements would return, in bytes, from the
    /// sections' sizes now (the reply budget is reserved with it).
    ReadSize { elements: Vec<ReadElement> },
    /// `Store::status`.
    Status,
    /// `Store::sections`: every section's descriptor in id order.
    Sections,
    /// `Store::section`: one section's descriptor, if it exists.
    Section { section_id: SectionId },
    /// `Store::instance`: the instance's metadata.
    Meta,
    /// `Store::instance_footprint`.
    Footprint,
}

/// The answer to a [`ReadRequest`] of the same name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadReply {
    Data(Vec<Vec<u8>>),
    Size(u64),
    Status(CheckpointStatus),
    Sections(Vec<SectionDescriptor>),
    Section(Option<SectionDescriptor>),
    Meta(MetaReply),
    Footprint(u64),
}

/// [`InstanceMeta`] without what is node-local (the column family).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaReply {
    pub name: CheckpointName,
    pub attributes: CreationAttributes,
    pub unlinked: bool,
    pub epoch: u64,
    pub seq: u64,
    pub generated_next: u64,
    pub section_count: u32,
    pub memory_used: u64,
    pub created_at: i64,
}

impl From<&InstanceMeta> for MetaReply {
    fn from(meta: &InstanceMeta) -> Self {
        MetaReply {
            name: meta.name.clone(),
            attributes: meta.attributes.clone(),
            unlinked: meta.unlinked,
            epoch: meta.epoch.0,
            seq: meta.seq.0,
            generated_next: meta.generated_next,
            section_count: meta.section_count,
            memory_used: meta.memory_used,
            created_at: meta.created_at,
        }
    }
}

/// Serves `request` from this node's store. Blocking (RocksDB): call it
/// on a blocking thread.
///
/// # Errors
/// What the store answers (`NOT_EXIST` for an instance it does not hold).
pub fn execute(store: &Store, instance: InstanceId, request: ReadRequest) -> CkptResult<ReadReply> {
    Ok(match request {
        ReadRequest::Read { elements } => ReadReply::Data(store.read(instance, &elements)?),
        ReadRequest::ReadSize { elements } => {
            let mut total: u64 = 0;
            for element in &elements {
                let size = store
                    .section(instance, &element.section_id)?
                    .map_or(0, |d| d.section_size.saturating_sub(element.offset));
                let wanted = element.size.map_or(size, |n| n.min(size));
                total = total.saturating_add(wanted);
            }
            ReadReply::Size(total)
        }
        ReadRequest::Status => ReadReply::Status(store.status(instance)?),
        ReadRequest::Sections => ReadReply::Sections(store.sections(instance)?),
        ReadRequest::Section { section_id } => {
            ReadReply::Section(store.section(instance, &section_id)?)
        }
        ReadRequest::Meta => ReadReply::Meta(MetaReply::from(&store.instance(instance)?)),
        ReadRequest::Footprint => ReadReply::Footprint(store.instance_footprint(instance)?),
    })
}
