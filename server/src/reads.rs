//! Reads of one checkpoint instance, as values that can cross the peer
//! connection: in a cluster a node that must not answer from its own
//! replica forwards a [`ReadRequest`] to the active replica, which answers
//! it with [`serve`] — the same function a node uses for its local reads, so
//! both paths give the same answers and errors.

use std::sync::Arc;

use ckpt_proto::{
    CheckpointName, CheckpointStatus, CkptError, CkptResult, CreationAttributes, ErrorCode,
    ReadElement, SectionDescriptor, SectionId,
};
use ckpt_storage::{InstanceId, Store};
use serde::{Deserialize, Serialize};

/// A read of one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadRequest {
    /// clCkptCheckpointStatusGet.
    Status,
    /// clCkptCheckpointRead: every element from one point in time.
    Read { elements: Vec<ReadElement> },
    /// Bytes a read of these elements returns now (for the reply budget).
    ReadSize { elements: Vec<ReadElement> },
    /// Every section's descriptor (iteration start).
    Sections,
    /// One section's descriptor, if it exists.
    Section { section_id: SectionId },
    /// The instance's metadata.
    Meta,
}

/// The instance metadata a front end needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaView {
    /// The name it was created under.
    pub name: CheckpointName,
    /// Creation attributes (retention as last set).
    pub attributes: CreationAttributes,
    /// The last sequence number applied.
    pub seq: u64,
    /// Whether its name was removed.
    pub unlinked: bool,
}

/// The answer to a [`ReadRequest`], variant for variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadReply {
    /// For [`ReadRequest::Status`].
    Status(CheckpointStatus),
    /// For [`ReadRequest::Read`]: one buffer per element.
    Data(#[serde(with = "ckpt_proto::bytes_list")] Vec<Vec<u8>>),
    /// For [`ReadRequest::ReadSize`].
    Size(u64),
    /// For [`ReadRequest::Sections`].
    Sections(Vec<SectionDescriptor>),
    /// For [`ReadRequest::Section`].
    Section(Option<SectionDescriptor>),
    /// For [`ReadRequest::Meta`].
    Meta(MetaView),
}

/// Answers `request` from this node's store (blocking: call it off the
/// async runtime).
///
/// # Errors
/// The store's errors: `NOT_EXIST` for an unknown instance or section,
/// `INVALID_PARAMETER` for a bad element, `LIBRARY` for a failed store.
pub fn serve(store: &Store, instance: InstanceId, request: &ReadRequest) -> CkptResult<ReadReply> {
    Ok(match request {
        ReadRequest::Status => ReadReply::Status(store.status(instance)?),
        ReadRequest::Read { elements } => ReadReply::Data(store.read(instance, elements)?),
        ReadRequest::ReadSize { elements } => {
            let mut total: u64 = 0;
            for element in elements {
                let size = store
                    .section(instance, &element.section_id)?
                    .map_or(0, |d| d.section_size.saturating_sub(element.offset));
                let wanted = element.size.map_or(size, |n| n.min(size));
                total = total.saturating_add(wanted);
            }
            ReadReply::Size(total)
        }
        ReadRequest::Sections => ReadReply::Sections(store.sections(instance)?),
        ReadRequest::Section { section_id } => {
            ReadReply::Section(store.section(instance, section_id)?)
        }
        ReadRequest::Meta => {
            let meta = store.instance(instance)?;
            ReadReply::Meta(MetaView {
                name: meta.name,
                attributes: meta.attributes,
                seq: meta.seq.0,
                unlinked: meta.unlinked,
            })
        }
    })
}

/// [`serve`] from async code: answered on the calling thread, with no
/// hand-off, when everything it reads is in memory (RocksDB's memtables and
/// block cache, as a hot checkpoint's are); otherwise on the blocking pool,
/// so a read that waits for the disk never stalls the async threads.
///
/// # Errors
/// As [`serve`]; `LIBRARY` if the blocking task fails.
pub async fn serve_async(
    store: &Arc<Store>,
    instance: InstanceId,
    request: ReadRequest,
) -> CkptResult<ReadReply> {
    if let Some(answer) = ckpt_storage::memory_only(|| serve(store, instance, &request)) {
        return answer;
    }
    let store = store.clone();
    tokio::task::spawn_blocking(move || serve(&store, instance, &request))
        .await
        .map_err(|e| CkptError::new(ErrorCode::Library, format!("read task failed: {e}")))?
}
