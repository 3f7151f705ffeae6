//! The checkpoint state machine: validates operations into log records and
//! applies records to in-memory metadata, returning the storage effects.
//!
//! This module does no IO. The writer calls [`StateMachine::plan`] for each
//! operation of a group-commit batch; a rejected operation produces no
//! record and so leaves no trace. Each accepted record is immediately
//! [`StateMachine::apply`]-ed, so later operations in the same batch are
//! validated against it, and `apply` returns the [`Effect`]s that the RocksDB
//! layer turns into one `WriteBatch`. Recovery replays records through the
//! same `apply`, so a record means the same thing live and on replay.
//!
//! Section maps are loaded lazily through [`Backing::load_sections`]: with
//! ten thousand checkpoints only those touched since start-up are in memory.

use std::collections::{BTreeMap, HashMap};

use ckpt_proto::{
    CheckpointName, CkptError, CkptResult, CreationAttributes, ErrorCode,
    SectionCreationAttributes, SectionId, SectionState, WriteElement, CHECKPOINT_BYTES_MAX,
    ELEMENTS_MAX, SECTIONS_MAX, SECTION_BYTES_MAX, TIME_END, UPDATE_BYTES_MAX,
};

use crate::wal::record::{Entry, Epoch, InstanceId, Position, RecordBody, Seq, WriteOp};

/// A section's metadata (its data lives in the instance's column family).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectionMeta {
    /// Size in bytes.
    pub size: u64,
    /// Absolute expiration in ns, or `TIME_END`.
    pub expiration_time: i64,
    /// Always `Valid`: writes are atomic.
    pub state: SectionState,
    /// When the section last changed (ns).
    pub last_update: i64,
}

/// A checkpoint instance's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceMeta {
    /// The name it was created under (still reported after unlink).
    pub name: CheckpointName,
    /// Creation attributes; retention as last set.
    pub attributes: CreationAttributes,
    /// Its data column family (`cf-<slot>`).
    pub column_family: u32,
    /// Whether the name was removed (delete while open).
    pub unlinked: bool,
    /// Current epoch.
    pub epoch: Epoch,
    /// Last sequence number used.
    pub seq: Seq,
    /// Next generated-id counter value.
    pub generated_next: u64,
    /// Number of sections.
    pub section_count: u32,
    /// Sum of section sizes.
    pub memory_used: u64,
    /// When it was created (ns).
    pub created_at: i64,
    /// Whether the instance refuses reads and writes until a snapshot is
    /// installed: its log diverged from the active replica's
    /// (`SuffixDiscard`), or a snapshot install has not finished.
    pub stale: bool,
}

/// What the RocksDB layer must do for an applied record, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Store the instance's metadata.
    PutInstance {
        instance: InstanceId,
        meta: InstanceMeta,
    },
    /// Remove the instance's metadata and every section meta of it.
    DeleteInstance { instance: InstanceId },
    /// Point the name at the instance.
    PutName {
        name: CheckpointName,
        instance: InstanceId,
    },
    /// Remove the name.
    DeleteName { name: CheckpointName },
    /// Store a section's metadata.
    PutSection {
        instance: InstanceId,
        section_id: SectionId,
        meta: SectionMeta,
    },
    /// Remove a section's metadata.
    DeleteSection {
        instance: InstanceId,
        section_id: SectionId,
    },
    /// Index a section under its expiration time.
    PutExpiry {
        expiration_time: i64,
        instance: InstanceId,
        section_id: SectionId,
    },
    /// Remove an expiry index entry.
    DeleteExpiry {
        expiration_time: i64,
        instance: InstanceId,
        section_id: SectionId,
    },
    /// Write bytes at an offset (the section grows to `size_after`, gaps read as zeros).
    WriteData {
        column_family: u32,
        instance: InstanceId,
        section_id: SectionId,
        offset: u64,
        data: Vec<u8>,
        size_after: u64,
    },
    /// Replace a section's data (create or overwrite).
    ReplaceData {
        column_family: u32,
        instance: InstanceId,
        section_id: SectionId,
        data: Vec<u8>,
        size_before: u64,
    },
    /// Remove a section's data.
    RemoveData {
        column_family: u32,
        instance: InstanceId,
        section_id: SectionId,
        size_before: u64,
    },
    /// Remove every data key of the instance from its column family.
    ClearInstance {
        column_family: u32,
        instance: InstanceId,
    },
}

impl Effect {
    /// The instance whose reads the effect changes (None for names, which
    /// reads never go through).
    pub fn instance(&self) -> Option<InstanceId> {
        match self {
            Effect::PutName { .. } | Effect::DeleteName { .. } => None,
            Effect::PutInstance { instance, .. }
            | Effect::DeleteInstance { instance }
            | Effect::PutSection { instance, .. }
            | Effect::DeleteSection { instance, .. }
            | Effect::PutExpiry { instance, .. }
            | Effect::DeleteExpiry { instance, .. }
            | Effect::WriteData { instance, .. }
            | Effect::ReplaceData { instance, .. }
            | Effect::RemoveData { instance, .. }
            | Effect::ClearInstance { instance, .. } => Some(*instance),
        }
    }
}

/// An operation on the store, before validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create a checkpoint, or open an identical existing one.
    CreateCheckpoint {
        name: CheckpointName,
        attributes: CreationAttributes,
        /// The cluster-assigned instance id, or `None` for the next one of
        /// this node's counter (kept above every id assigned).
        instance: Option<InstanceId>,
        /// The epoch the instance starts at (`Epoch(1)` on a single node).
        epoch: Epoch,
    },
    /// Remove a name; the instance stays until destroyed.
    Unlink { name: CheckpointName },
    /// Delete an instance and all its data.
    Destroy { instance: InstanceId },
    /// Change the retention duration.
    SetRetention {
        instance: InstanceId,
        retention_duration_ns: i64,
    },
    /// Create a section with initial data.
    CreateSection {
        instance: InstanceId,
        attributes: SectionCreationAttributes,
        data: Vec<u8>,
    },
    /// Delete a section.
    DeleteSection {
        instance: InstanceId,
        section_id: SectionId,
    },
    /// Change a section's expiration time.
    SetExpiration {
        instance: InstanceId,
        section_id: SectionId,
        expiration_time: i64,
    },
    /// Atomic multi-element write.
    Write {
        instance: InstanceId,
        elements: Vec<WriteElement>,
    },
    /// Replace a section's data.
    Overwrite {
        instance: InstanceId,
        section_id: SectionId,
        data: Vec<u8>,
    },
    /// Delete every section whose expiration time is at or before `now`.
    ExpireDue,
    /// Delete every section of one instance whose expiration time is at or
    /// before `now` (a cluster's active replica expires its own checkpoints
    /// only: backups receive the deletions as entries).
    ExpireDueIn { instance: InstanceId },
    /// Nothing; answered once everything queued before it is durable
    /// (clCkptCheckpointSynchronize on one node).
    Barrier,
    /// Recreate a checkpoint from a dump: its attributes and generated-id
    /// counter exactly; the name must be free.
    Restore {
        name: CheckpointName,
        attributes: CreationAttributes,
        generated_next: u64,
        /// As for [`Op::CreateCheckpoint`].
        instance: Option<InstanceId>,
        /// As for [`Op::CreateCheckpoint`].
        epoch: Epoch,
    },
    /// Recreate a section from a dump with its expiration time, even one
    /// already past (it then expires at the next expiry pass).
    RestoreSection {
        instance: InstanceId,
        section_id: SectionId,
        expiration_time: i64,
        data: Vec<u8>,
    },
}

impl Op {
    /// A creating operation's start epoch.
    pub fn start_epoch(&self) -> Option<Epoch> {
        match self {
            Op::CreateCheckpoint { epoch, .. } | Op::Restore { epoch, .. } => Some(*epoch),
            _ => None,
        }
    }
}

/// What a successful operation produced.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Outcome {
    /// A checkpoint was created (`existed` = an identical one was opened).
    Opened { instance: InstanceId, existed: bool },
    /// A section was created under this id.
    SectionCreated { section_id: SectionId },
    /// Sections were expired.
    Expired { count: u32 },
    /// Done, nothing to report.
    Done,
}

/// What an ordered operation produced, and where: the position of the last
/// entry it logged (`None` when it logged nothing).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Committed {
    pub outcome: Outcome,
    pub position: Option<Position>,
}

impl Committed {
    /// What an entry with an origin produced, as a node that did not plan
    /// it (a backup, or recovery replaying it) tells: creations answer
    /// with the instance, section creations with the id, the rest `Done`.
    /// `earlier` is what the same origin's earlier entries of the same
    /// operation produced: the first outcome stays, the position moves on.
    pub fn of_entry(entry: &Entry, earlier: Option<Committed>) -> Committed {
        let position = Some(entry.position());
        if let Some(earlier) = earlier {
            return Committed {
                outcome: earlier.outcome,
                position,
            };
        }
        let outcome = match &entry.body {
            RecordBody::CheckpointCreate { .. } => Outcome::Opened {
                instance: entry.instance,
                existed: false,
            },
            RecordBody::SectionCreate { section_id, .. } => Outcome::SectionCreated {
                section_id: section_id.clone(),
            },
            _ => Outcome::Done,
        };
        Committed { outcome, position }
    }
}

/// What the state machine needs from storage.
pub trait Backing {
    /// Every section of an instance as committed to storage.
    ///
    /// # Errors
    /// A storage error.
    fn load_sections(&self, instance: InstanceId) -> CkptResult<BTreeMap<SectionId, SectionMeta>>;
    /// The data column family a new instance goes to.
    ///
    /// # Errors
    /// A storage error.
    fn take_column_family(&self, instance: InstanceId) -> CkptResult<u32>;
    /// Sections whose committed expiration is at or before `now`.
    ///
    /// # Errors
    /// A storage error.
    fn expiry_candidates(&self, now: i64) -> CkptResult<Vec<(InstanceId, SectionId)>>;
}

struct Instance {
    meta: InstanceMeta,
    sections: Option<BTreeMap<SectionId, SectionMeta>>,
}

/// Names, instances and (lazily) sections, ahead of storage by the records
/// of the batch being planned.
pub struct StateMachine {
    names: HashMap<CheckpointName, InstanceId>,
    instances: HashMap<InstanceId, Instance>,
    next_instance: u64,
    totals: Totals,
}

fn err(code: ErrorCode, detail: impl Into<String>) -> CkptError {
    CkptError::new(code, detail)
}

impl StateMachine {
    /// A state machine over committed metadata.
    pub fn new(
        names: HashMap<CheckpointName, InstanceId>,
        instances: HashMap<InstanceId, InstanceMeta>,
        next_instance: u64,
    ) -> Self {
        let mut totals = Totals::default();
        let instances = instances
            .into_iter()
            .map(|(id, meta)| {
                totals.add(Totals::of(&meta));
                (
                    id,
                    Instance {
                        meta,
                        sections: None,
                    },
                )
            })
            .collect();
        StateMachine {
            names,
            instances,
            next_instance,
            totals,
        }
    }

    /// What the named checkpoints hold, in all.
    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// The totals of the instances an entry may change: its own, and for
    /// a creation the one that held its name until then.
    fn totals_touched(&self, entry: &Entry) -> Totals {
        let mut totals = Totals::default();
        if let Some(i) = self.instances.get(&entry.instance) {
            totals.add(Totals::of(&i.meta));
        }
        let name = match &entry.body {
            RecordBody::CheckpointCreate { name, .. } | RecordBody::SnapshotBegin { name, .. } => {
                Some(name)
            }
            _ => None,
        };
        if let Some(previous) = name.and_then(|n| self.names.get(n)) {
            if *previous != entry.instance {
                if let Some(i) = self.instances.get(previous) {
                    totals.add(Totals::of(&i.meta));
                }
            }
        }
        totals
    }

    /// The next instance id to hand out.
    pub fn next_instance(&self) -> u64 {
        self.next_instance
    }

    /// An instance's metadata.
    pub fn instance(&self, instance: InstanceId) -> Option<&InstanceMeta> {
        self.instances.get(&instance).map(|i| &i.meta)
    }

    /// Every instance's id and name (in no particular order).
    pub fn instance_names(&self) -> Vec<(InstanceId, CheckpointName)> {
        self.instances
            .iter()
            .map(|(id, i)| (*id, i.meta.name.clone()))
            .collect()
    }

    /// Every instance whose metadata passes `keep`, with that metadata (in
    /// no particular order).
    pub fn instances_where(
        &self,
        keep: impl Fn(&InstanceMeta) -> bool,
    ) -> Vec<(InstanceId, InstanceMeta)> {
        self.instances
            .iter()
            .filter(|(_, i)| keep(&i.meta))
            .map(|(id, i)| (*id, i.meta.clone()))
            .collect()
    }

    /// Replaces names and instances from storage (after a failed batch).
    pub fn reset(
        &mut self,
        names: HashMap<CheckpointName, InstanceId>,
        instances: HashMap<InstanceId, InstanceMeta>,
        next_instance: u64,
    ) {
        *self = StateMachine::new(names, instances, next_instance);
    }

    /// An instance that serves writes: loaded, and not stale.
    fn loaded(
        &mut self,
        backing: &dyn Backing,
        instance: InstanceId,
    ) -> CkptResult<(&mut InstanceMeta, &mut BTreeMap<SectionId, SectionMeta>)> {
        let (meta, sections) = load_instance(&mut self.instances, backing, instance)?;
        if meta.stale {
            return Err(stale_error(instance));
        }
        Ok((meta, sections))
    }

    /// The id of an instance about to be created: the cluster-assigned one
    /// (which must be new), else the next of the local counter.
    fn new_instance_id(&self, assigned: Option<InstanceId>) -> CkptResult<InstanceId> {
        match assigned {
            None => Ok(InstanceId(self.next_instance)),
            Some(id) if self.instances.contains_key(&id) => Err(err(
                ErrorCode::AlreadyExist,
                format!("checkpoint instance {} exists", id.0),
            )),
            Some(id) if id.0 == 0 || id.0 == u64::MAX => Err(err(
                ErrorCode::InvalidParameter,
                format!("instance id {} is out of range", id.0),
            )),
            Some(id) => Ok(id),
        }
    }

    /// Validates `op` against the current state and returns the records it
    /// makes (each with its instance), or the outcome when nothing needs to
    /// be logged. Nothing is changed; call [`StateMachine::apply`] for each
    /// record, in order, before planning the next operation.
    ///
    /// # Errors
    /// The user-facing error of DESIGN.md §2 for an invalid operation.
    pub fn plan(
        &mut self,
        backing: &dyn Backing,
        op: &Op,
        now: i64,
    ) -> CkptResult<(Vec<(InstanceId, RecordBody)>, Outcome)> {
        match op {
            Op::CreateCheckpoint {
                name,
                attributes,
                instance,
                epoch: _,
            } => {
                name.validate()?;
                attributes.validate()?;
                if let Some(&existing) = self.names.get(name) {
                    let meta = &self.instances[&existing].meta;
                    if meta.attributes.same_except_retention(attributes) {
                        return Ok((
                            vec![],
                            Outcome::Opened {
                                instance: existing,
                                existed: true,
                            },
                        ));
                    }
                    return Err(err(
                        ErrorCode::AlreadyExist,
                        meta.attributes.mismatch(name, attributes),
                    ));
                }
                let instance = self.new_instance_id(*instance)?;
                let body = RecordBody::CheckpointCreate {
                    name: name.clone(),
                    attributes: attributes.clone(),
                };
                Ok((
                    vec![(instance, body)],
                    Outcome::Opened {
                        instance,
                        existed: false,
                    },
                ))
            }
            Op::Unlink { name } => {
                let instance = *self.names.get(name).ok_or_else(|| {
                    err(
                        ErrorCode::NotExist,
                        format!("checkpoint {name} does not exist"),
                    )
                })?;
                Ok((
                    vec![(instance, RecordBody::CheckpointUnlink)],
                    Outcome::Done,
                ))
            }
            Op::Destroy { instance } => {
                // A stale instance can still be destroyed.
                load_instance(&mut self.instances, backing, *instance)?;
                Ok((
                    vec![(*instance, RecordBody::CheckpointDestroy)],
                    Outcome::Done,
                ))
            }
            Op::SetRetention {
                instance,
                retention_duration_ns,
            } => {
                let (meta, _) = self.loaded(backing, *instance)?;
                // DESIGN.md §2 "retention set": an unlinked instance is
                // destroyed at its last close whatever its retention.
                if meta.unlinked {
                    return Err(err(
                        ErrorCode::BadOperation,
                        format!(
                            "checkpoint {} was deleted: its retention no longer applies",
                            meta.name
                        ),
                    ));
                }
                if *retention_duration_ns < 0 {
                    return Err(err(
                        ErrorCode::InvalidParameter,
                        format!("retention duration {retention_duration_ns} is negative"),
                    ));
                }
                let body = RecordBody::RetentionSet {
                    retention_duration_ns: *retention_duration_ns,
                };
                Ok((vec![(*instance, body)], Outcome::Done))
            }
            Op::CreateSection {
                instance,
                attributes,
                data,
            } => {
                let (meta, sections) = self.loaded(backing, *instance)?;
                let a = &meta.attributes;
                // DESIGN.md §2 "limits": the default section holds the only
                // slot, whatever id is asked for (OpenSAF's SA_AIS_ERR_EXIST).
                if a.has_default_section() {
                    return Err(err(
                        ErrorCode::AlreadyExist,
                        "maxSections is 1: the default section is the only one",
                    ));
                }
                let mut generated_next = meta.generated_next;
                let section_id = match &attributes.section_id {
                    Some(id) if id.is_default() => {
                        return Err(err(
                            ErrorCode::InvalidParameter,
                            "the default section cannot be created",
                        ))
                    }
                    Some(id) => {
                        if id.as_bytes().len() as u64 > a.max_section_id_size {
                            return Err(err(
                                ErrorCode::InvalidParameter,
                                format!(
                                    "section id is {} bytes, maxSectionIdSize is {}",
                                    id.as_bytes().len(),
                                    a.max_section_id_size
                                ),
                            ));
                        }
                        id.clone()
                    }
                    None => loop {
                        let id = SectionId::new(generated_next.to_string());
                        generated_next += 1;
                        if id.as_bytes().len() as u64 > a.max_section_id_size {
                            return Err(err(
                                ErrorCode::NoSpace,
                                "no generated section id fits in maxSectionIdSize",
                            ));
                        }
                        if !sections.contains_key(&id) {
                            break id;
                        }
                    },
                };
                if attributes.expiration_time < now {
                    return Err(err(
                        ErrorCode::InvalidParameter,
                        format!(
                            "expiration time {} is in the past",
                            attributes.expiration_time
                        ),
                    ));
                }
                check_update_size(data.len())?;
                if data.len() as u64 > section_bytes_max(a) {
                    return Err(err(
                        ErrorCode::InvalidParameter,
                        format!(
                            "initial data is {} bytes, maxSectionSize is {}",
                            data.len(),
                            section_bytes_max(a)
                        ),
                    ));
                }
                if sections.contains_key(&section_id) {
                    return Err(err(
                        ErrorCode::AlreadyExist,
                        format!("section {section_id} exists"),
                    ));
                }
                if sections.len() as u64 >= u64::from(sections_max(a)) {
                    return Err(err(
                        ErrorCode::NoSpace,
                        format!("checkpoint has maxSections = {} sections", sections_max(a)),
                    ));
                }
                check_checkpoint_size(meta.memory_used, data.len() as u64, a)?;
                let body = RecordBody::SectionCreate {
                    section_id: section_id.clone(),
                    expiration_time: attributes.expiration_time,
                    data: data.clone(),
                    generated_next,
                };
                Ok((
                    vec![(*instance, body)],
                    Outcome::SectionCreated { section_id },
                ))
            }
            Op::DeleteSection {
                instance,
                section_id,
            } => {
                let (meta, sections) = self.loaded(backing, *instance)?;
                if section_id.is_default() && meta.attributes.has_default_section() {
                    return Err(err(
                        ErrorCode::InvalidParameter,
                        "the default section cannot be deleted",
                    ));
                }
                if !sections.contains_key(section_id) {
                    return Err(err(
                        ErrorCode::NotExist,
                        format!("section {section_id} does not exist"),
                    ));
                }
                let body = RecordBody::SectionDelete {
                    section_id: section_id.clone(),
                    expired: false,
                };
                Ok((vec![(*instance, body)], Outcome::Done))
            }
            Op::SetExpiration {
                instance,
                section_id,
                expiration_time,
            } => {
                let (meta, sections) = self.loaded(backing, *instance)?;
                if section_id.is_default() && meta.attributes.has_default_section() {
                    return Err(err(
                        ErrorCode::InvalidParameter,
                        "the default section cannot expire",
                    ));
                }
                if !sections.contains_key(section_id) {
                    return Err(err(
                        ErrorCode::NotExist,
                        format!("section {section_id} does not exist"),
                    ));
                }
                if *expiration_time < now {
                    return Err(err(
                        ErrorCode::InvalidParameter,
                        format!("expiration time {expiration_time} is in the past"),
                    ));
                }
                let body = RecordBody::SectionExpirationSet {
                    section_id: section_id.clone(),
                    expiration_time: *expiration_time,
                };
                Ok((vec![(*instance, body)], Outcome::Done))
            }
            Op::Write { instance, elements } => {
                let (meta, sections) = self.loaded(backing, *instance)?;
                let body = plan_write(meta, sections, elements)?;
                Ok((vec![(*instance, body)], Outcome::Done))
            }
            Op::Overwrite {
                instance,
                section_id,
                data,
            } => {
                let (meta, sections) = self.loaded(backing, *instance)?;
                let a = &meta.attributes;
                let section = sections.get(section_id).ok_or_else(|| {
                    err(
                        ErrorCode::NotExist,
                        format!("section {section_id} does not exist"),
                    )
                })?;
                check_update_size(data.len())?;
                if data.len() as u64 > section_bytes_max(a) {
                    return Err(err(
                        ErrorCode::InvalidParameter,
                        format!(
                            "data is {} bytes, maxSectionSize is {}",
                            data.len(),
                            section_bytes_max(a)
                        ),
                    ));
                }
                let used_without = meta.memory_used.checked_sub(section.size).ok_or_else(|| {
                    err(
                        ErrorCode::Library,
                        format!(
                            "memoryUsed {} is less than section {section_id}'s size {}",
                            meta.memory_used, section.size
                        ),
                    )
                })?;
                check_checkpoint_size(used_without, data.len() as u64, a)?;
                let body = RecordBody::Overwrite {
                    section_id: section_id.clone(),
                    data: data.clone(),
                };
                Ok((vec![(*instance, body)], Outcome::Done))
            }
            Op::ExpireDue | Op::ExpireDueIn { .. } => {
                let only = match op {
                    Op::ExpireDueIn { instance } => Some(*instance),
                    _ => None,
                };
                let mut records = Vec::new();
                for (instance, section_id) in backing.expiry_candidates(now)? {
                    if only.is_some_and(|only| only != instance) {
                        continue;
                    }
                    let Ok((_, sections)) = self.loaded(backing, instance) else {
                        continue;
                    };
                    let due = sections
                        .get(&section_id)
                        .is_some_and(|s| s.expiration_time <= now);
                    if due {
                        records.push((
                            instance,
                            RecordBody::SectionDelete {
                                section_id,
                                expired: true,
                            },
                        ));
                    }
                }
                let count = records.len() as u32;
                Ok((records, Outcome::Expired { count }))
            }
            Op::Barrier => Ok((vec![], Outcome::Done)),
            Op::Restore {
                name,
                attributes,
                generated_next,
                instance,
                epoch: _,
            } => {
                name.validate()?;
                attributes.validate()?;
                if self.names.contains_key(name) {
                    return Err(err(
                        ErrorCode::AlreadyExist,
                        format!("checkpoint {name} exists"),
                    ));
                }
                let instance = self.new_instance_id(*instance)?;
                let mut records = vec![(
                    instance,
                    RecordBody::CheckpointCreate {
                        name: name.clone(),
                        attributes: attributes.clone(),
                    },
                )];
                if *generated_next > 1 {
                    records.push((
                        instance,
                        RecordBody::GeneratedIdSet {
                            next: *generated_next,
                        },
                    ));
                }
                Ok((
                    records,
                    Outcome::Opened {
                        instance,
                        existed: false,
                    },
                ))
            }
            Op::RestoreSection {
                instance,
                section_id,
                expiration_time,
                data,
            } => {
                let (meta, sections) = self.loaded(backing, *instance)?;
                let a = &meta.attributes;
                check_update_size(data.len())?;
                if data.len() as u64 > section_bytes_max(a) {
                    return Err(err(
                        ErrorCode::InvalidParameter,
                        format!(
                            "section data is {} bytes, maxSectionSize is {}",
                            data.len(),
                            section_bytes_max(a)
                        ),
                    ));
                }
                if section_id.is_default() && a.has_default_section() {
                    let body = RecordBody::Overwrite {
                        section_id: section_id.clone(),
                        data: data.clone(),
                    };
                    return Ok((vec![(*instance, body)], Outcome::Done));
                }
                if section_id.is_default()
                    || section_id.as_bytes().len() as u64 > a.max_section_id_size
                {
                    return Err(err(
                        ErrorCode::InvalidParameter,
                        format!("section id {section_id} does not fit"),
                    ));
                }
                if sections.contains_key(section_id) {
                    return Err(err(
                        ErrorCode::AlreadyExist,
                        format!("section {section_id} exists"),
                    ));
                }
                if sections.len() as u64 >= u64::from(sections_max(a)) {
                    return Err(err(ErrorCode::NoSpace, "maxSections reached"));
                }
                check_checkpoint_size(meta.memory_used, data.len() as u64, a)?;
                let body = RecordBody::SectionCreate {
                    section_id: section_id.clone(),
                    expiration_time: *expiration_time,
                    data: data.clone(),
                    generated_next: meta.generated_next,
                };
                Ok((vec![(*instance, body)], Outcome::Done))
            }
        }
    }

    /// Whether `entry` can follow the instance's current state: the
    /// sequence number is the next one, the epoch the current one (only an
    /// `EpochStart` raises it, a snapshot sets it), a creation is for an
    /// unknown instance, and a stale instance takes only a snapshot.
    /// Returns why not.
    pub fn check_entry(&self, entry: &Entry) -> Result<(), String> {
        let instance = entry.instance.0;
        // Formatted only into an error: this runs for every entry.
        let at = EntryAt(entry);
        let meta = self.instances.get(&entry.instance).map(|i| &i.meta);
        match (&entry.body, meta) {
            // A stale instance (a snapshot install cut short) holds nothing
            // valid: a creation replaces it, as a snapshot's start does.
            (RecordBody::CheckpointCreate { .. }, Some(meta)) if !meta.stale => {
                Err(format!("{at}: creates instance {instance}, which exists"))
            }
            (RecordBody::CheckpointCreate { .. }, _) if entry.seq != Seq(1) => {
                Err(format!("{at}: a creation must have seq 1"))
            }
            (RecordBody::CheckpointCreate { .. }, _) => Ok(()),
            (RecordBody::SnapshotBegin { .. }, _) => Ok(()),
            (_, None) => Err(format!("{at}: instance {instance} does not exist")),
            (RecordBody::SnapshotSection { .. } | RecordBody::SnapshotEnd, Some(meta)) => {
                if !meta.stale {
                    Err(format!("{at}: no snapshot is being installed"))
                } else if (entry.epoch, entry.seq) != (meta.epoch, meta.seq) {
                    Err(format!(
                        "{at}: the snapshot being installed is at epoch {} seq {}",
                        meta.epoch.0, meta.seq.0
                    ))
                } else {
                    Ok(())
                }
            }
            (RecordBody::SuffixDiscard, Some(meta)) => {
                if (entry.epoch, entry.seq) != (meta.epoch, meta.seq) {
                    Err(format!(
                        "{at}: a discard is stamped with the instance's position, epoch {} seq {}",
                        meta.epoch.0, meta.seq.0
                    ))
                } else {
                    Ok(())
                }
            }
            (body, Some(meta)) => {
                if meta.stale {
                    return Err(format!(
                        "{at}: the instance is stale until a snapshot is installed"
                    ));
                }
                let next = meta
                    .seq
                    .0
                    .checked_add(1)
                    .ok_or_else(|| format!("{at}: seq overflows"))?;
                if entry.seq.0 != next {
                    return Err(format!(
                        "{at}: expected seq {next} (last applied epoch {} seq {})",
                        meta.epoch.0, meta.seq.0
                    ));
                }
                match body {
                    RecordBody::EpochStart { epoch } => {
                        if *epoch != entry.epoch {
                            Err(format!(
                                "{at}: starts epoch {} under another epoch",
                                epoch.0
                            ))
                        } else if entry.epoch <= meta.epoch {
                            Err(format!(
                                "{at}: epoch {} does not follow the current epoch {}",
                                entry.epoch.0, meta.epoch.0
                            ))
                        } else {
                            Ok(())
                        }
                    }
                    _ if entry.epoch != meta.epoch => Err(format!(
                        "{at}: the instance is at epoch {} (epochs change only by an epoch start)",
                        meta.epoch.0
                    )),
                    _ => Ok(()),
                }
            }
        }
    }

    /// Applies an entry (live after [`StateMachine::plan`], replicated from
    /// an active replica after [`StateMachine::check_entry`], or on replay)
    /// and returns what storage must do.
    ///
    /// # Errors
    /// `LIBRARY` when the entry does not fit the state (a log that does not
    /// belong to this store); a storage error while loading sections.
    pub fn apply(&mut self, backing: &dyn Backing, entry: &Entry) -> CkptResult<Vec<Effect>> {
        // Names are looked up before: a creation may take one from another
        // instance, whose totals change with it.
        let before = self.totals_touched(entry);
        let result = self.apply_entry(backing, entry);
        // (After a creation the name is the entry's own; the instance it
        // was taken from is unlinked now and counts nothing.)
        let after = self.totals_touched(entry);
        self.totals.sub(before);
        self.totals.add(after);
        result
    }

    fn apply_entry(&mut self, backing: &dyn Backing, entry: &Entry) -> CkptResult<Vec<Effect>> {
        let Entry {
            instance,
            epoch,
            seq,
            timestamp: timestamp_ns,
            ref body,
            ..
        } = *entry;
        let mismatch = |what: &str| {
            err(
                ErrorCode::Library,
                format!(
                    "log record does not fit the state: {what} (instance {})",
                    instance.0
                ),
            )
        };
        self.check_entry(entry).map_err(|why| mismatch(&why))?;
        let mut effects = Vec::new();
        match body {
            RecordBody::CheckpointCreate { name, attributes } => {
                if self.instances.contains_key(&instance) {
                    // Stale (check_entry refuses any other): replaced.
                    self.drop_instance(backing, instance, &mut effects)?;
                }
                self.create_instance(
                    backing,
                    entry,
                    name,
                    attributes,
                    Created {
                        unlinked: false,
                        generated_next: 1,
                        created_at: timestamp_ns,
                        stale: false,
                    },
                    &mut effects,
                )?;
                return Ok(effects);
            }
            RecordBody::SnapshotBegin {
                name,
                attributes,
                unlinked,
                generated_next,
                created_at,
            } => {
                if self.instances.contains_key(&instance) {
                    self.drop_instance(backing, instance, &mut effects)?;
                }
                self.create_instance(
                    backing,
                    entry,
                    name,
                    attributes,
                    Created {
                        unlinked: *unlinked,
                        generated_next: *generated_next,
                        created_at: *created_at,
                        stale: true,
                    },
                    &mut effects,
                )?;
                return Ok(effects);
            }
            RecordBody::CheckpointDestroy => {
                self.drop_instance(backing, instance, &mut effects)?;
                return Ok(effects);
            }
            _ => {}
        }
        let (meta, sections) = load_instance(&mut self.instances, backing, instance)?;
        meta.epoch = epoch;
        meta.seq = seq;
        let column_family = meta.column_family;
        let touch = |size: u64, expiration_time: i64| SectionMeta {
            size,
            expiration_time,
            state: SectionState::Valid,
            last_update: timestamp_ns,
        };
        match body {
            RecordBody::CheckpointCreate { .. }
            | RecordBody::SnapshotBegin { .. }
            | RecordBody::CheckpointDestroy => unreachable!("handled above"),
            RecordBody::EpochStart { .. } => {}
            RecordBody::SnapshotEnd => meta.stale = false,
            RecordBody::SuffixDiscard => meta.stale = true,
            RecordBody::SnapshotSection {
                section_id,
                expiration_time,
                last_update,
                offset,
                data,
            } => {
                let section = if *offset == 0 {
                    if sections.contains_key(section_id) && !section_id.is_default() {
                        return Err(mismatch("snapshot section installed twice"));
                    }
                    let size_before = sections.get(section_id).map_or(0, |s| s.size);
                    if sections.get(section_id).is_none() {
                        meta.section_count = meta
                            .section_count
                            .checked_add(1)
                            .ok_or_else(|| mismatch("section count overflows"))?;
                    }
                    meta.memory_used = meta
                        .memory_used
                        .checked_sub(size_before)
                        .and_then(|used| used.checked_add(data.len() as u64))
                        .ok_or_else(|| mismatch("memoryUsed out of range"))?;
                    if let Some(old) = sections.get(section_id) {
                        if old.expiration_time != TIME_END {
                            effects.push(Effect::DeleteExpiry {
                                expiration_time: old.expiration_time,
                                instance,
                                section_id: section_id.clone(),
                            });
                        }
                    }
                    effects.push(Effect::ReplaceData {
                        instance,
                        column_family,
                        section_id: section_id.clone(),
                        data: data.clone(),
                        size_before,
                    });
                    if *expiration_time != TIME_END {
                        effects.push(Effect::PutExpiry {
                            expiration_time: *expiration_time,
                            instance,
                            section_id: section_id.clone(),
                        });
                    }
                    data.len() as u64
                } else {
                    let section = sections
                        .get(section_id)
                        .ok_or_else(|| mismatch("snapshot part of a missing section"))?;
                    if section.size != *offset {
                        return Err(mismatch("snapshot part does not continue its section"));
                    }
                    let size_after = offset
                        .checked_add(data.len() as u64)
                        .ok_or_else(|| mismatch("section size overflows"))?;
                    meta.memory_used = meta
                        .memory_used
                        .checked_add(data.len() as u64)
                        .ok_or_else(|| mismatch("memoryUsed overflows"))?;
                    effects.push(Effect::WriteData {
                        instance,
                        column_family,
                        section_id: section_id.clone(),
                        offset: *offset,
                        data: data.clone(),
                        size_after,
                    });
                    size_after
                };
                let section = SectionMeta {
                    size: section,
                    expiration_time: *expiration_time,
                    state: SectionState::Valid,
                    last_update: *last_update,
                };
                sections.insert(section_id.clone(), section);
                effects.push(Effect::PutSection {
                    instance,
                    section_id: section_id.clone(),
                    meta: section,
                });
            }
            RecordBody::CheckpointUnlink => {
                if meta.unlinked {
                    return Err(mismatch("unlink of an unlinked instance"));
                }
                meta.unlinked = true;
                let name = meta.name.clone();
                if self.names.get(&name) == Some(&instance) {
                    self.names.remove(&name);
                    effects.push(Effect::DeleteName { name });
                }
            }
            RecordBody::RetentionSet {
                retention_duration_ns,
            } => {
                meta.attributes.retention_duration_ns = *retention_duration_ns;
            }
            RecordBody::GeneratedIdSet { next } => {
                meta.generated_next = *next;
            }
            RecordBody::SectionCreate {
                section_id,
                expiration_time,
                data,
                generated_next,
            } => {
                if sections.contains_key(section_id) {
                    return Err(mismatch("section created twice"));
                }
                let section = touch(data.len() as u64, *expiration_time);
                meta.section_count = meta
                    .section_count
                    .checked_add(1)
                    .ok_or_else(|| mismatch("section count overflows"))?;
                meta.memory_used = meta
                    .memory_used
                    .checked_add(data.len() as u64)
                    .ok_or_else(|| mismatch("memoryUsed overflows"))?;
                sections.insert(section_id.clone(), section);
                meta.generated_next = *generated_next;
                effects.push(Effect::PutSection {
                    instance,
                    section_id: section_id.clone(),
                    meta: section,
                });
                if *expiration_time != TIME_END {
                    effects.push(Effect::PutExpiry {
                        expiration_time: *expiration_time,
                        instance,
                        section_id: section_id.clone(),
                    });
                }
                effects.push(Effect::ReplaceData {
                    instance,
                    column_family,
                    section_id: section_id.clone(),
                    data: data.clone(),
                    size_before: 0,
                });
            }
            RecordBody::SectionDelete { section_id, .. } => {
                let size = sections
                    .get(section_id)
                    .ok_or_else(|| mismatch("delete of a missing section"))?
                    .size;
                meta.section_count = meta
                    .section_count
                    .checked_sub(1)
                    .ok_or_else(|| mismatch("section count below zero"))?;
                meta.memory_used = meta
                    .memory_used
                    .checked_sub(size)
                    .ok_or_else(|| mismatch("memoryUsed below zero"))?;
                let Some(section) = sections.remove(section_id) else {
                    return Err(mismatch("delete of a missing section"));
                };
                effects.push(Effect::DeleteSection {
                    instance,
                    section_id: section_id.clone(),
                });
                if section.expiration_time != TIME_END {
                    effects.push(Effect::DeleteExpiry {
                        expiration_time: section.expiration_time,
                        instance,
                        section_id: section_id.clone(),
                    });
                }
                effects.push(Effect::RemoveData {
                    instance,
                    column_family,
                    section_id: section_id.clone(),
                    size_before: section.size,
                });
            }
            RecordBody::SectionExpirationSet {
                section_id,
                expiration_time,
            } => {
                let section = sections
                    .get_mut(section_id)
                    .ok_or_else(|| mismatch("expiry of a missing section"))?;
                if section.expiration_time != TIME_END {
                    effects.push(Effect::DeleteExpiry {
                        expiration_time: section.expiration_time,
                        instance,
                        section_id: section_id.clone(),
                    });
                }
                *section = touch(section.size, *expiration_time);
                if *expiration_time != TIME_END {
                    effects.push(Effect::PutExpiry {
                        expiration_time: *expiration_time,
                        instance,
                        section_id: section_id.clone(),
                    });
                }
                effects.push(Effect::PutSection {
                    instance,
                    section_id: section_id.clone(),
                    meta: *section,
                });
            }
            RecordBody::Write { elements } => {
                for WriteOp {
                    section_id,
                    offset,
                    data,
                } in elements
                {
                    let section = sections
                        .get_mut(section_id)
                        .ok_or_else(|| mismatch("write to a missing section"))?;
                    let end = offset
                        .checked_add(data.len() as u64)
                        .ok_or_else(|| mismatch("write end overflows"))?;
                    let size_after = section.size.max(end);
                    meta.memory_used = meta
                        .memory_used
                        .checked_add(size_after - section.size)
                        .ok_or_else(|| mismatch("memoryUsed overflows"))?;
                    *section = touch(size_after, section.expiration_time);
                    effects.push(Effect::PutSection {
                        instance,
                        section_id: section_id.clone(),
                        meta: *section,
                    });
                    effects.push(Effect::WriteData {
                        instance,
                        column_family,
                        section_id: section_id.clone(),
                        offset: *offset,
                        data: data.clone(),
                        size_after,
                    });
                }
            }
            RecordBody::Overwrite { section_id, data } => {
                let section = sections
                    .get_mut(section_id)
                    .ok_or_else(|| mismatch("overwrite of a missing section"))?;
                let size_before = section.size;
                meta.memory_used = meta
                    .memory_used
                    .checked_sub(size_before)
                    .and_then(|used| used.checked_add(data.len() as u64))
                    .ok_or_else(|| mismatch("memoryUsed out of range"))?;
                *section = touch(data.len() as u64, section.expiration_time);
                effects.push(Effect::PutSection {
                    instance,
                    section_id: section_id.clone(),
                    meta: *section,
                });
                effects.push(Effect::ReplaceData {
                    instance,
                    column_family,
                    section_id: section_id.clone(),
                    data: data.clone(),
                    size_before,
                });
            }
        }
        effects.push(Effect::PutInstance {
            instance,
            meta: meta.clone(),
        });
        Ok(effects)
    }
}

/// How [`StateMachine::create_instance`] sets up a new instance.
struct Created {
    unlinked: bool,
    generated_next: u64,
    created_at: i64,
    stale: bool,
}

impl StateMachine {
    /// A new instance from a creation or the start of a snapshot install.
    fn create_instance(
        &mut self,
        backing: &dyn Backing,
        entry: &Entry,
        name: &CheckpointName,
        attributes: &CreationAttributes,
        created: Created,
        effects: &mut Vec<Effect>,
    ) -> CkptResult<()> {
        let instance = entry.instance;
        let has_default = attributes.has_default_section();
        // A snapshot brings its sections, the default one included.
        let default_section = has_default && !created.stale;
        let meta = InstanceMeta {
            name: name.clone(),
            attributes: attributes.clone(),
            column_family: backing.take_column_family(instance)?,
            unlinked: created.unlinked,
            epoch: entry.epoch,
            seq: entry.seq,
            generated_next: created.generated_next,
            section_count: u32::from(default_section),
            memory_used: 0,
            created_at: created.created_at,
            stale: created.stale,
        };
        let mut sections = BTreeMap::new();
        if default_section {
            let section = SectionMeta {
                size: 0,
                expiration_time: TIME_END,
                state: SectionState::Valid,
                last_update: entry.timestamp,
            };
            sections.insert(SectionId::DEFAULT, section);
            effects.push(Effect::PutSection {
                instance,
                section_id: SectionId::DEFAULT,
                meta: section,
            });
        }
        if !created.unlinked {
            if let Some(previous) = self.names.insert(name.clone(), instance) {
                // The old instance keeps living under no name.
                if let Some(old) = self.instances.get_mut(&previous) {
                    old.meta.unlinked = true;
                    effects.push(Effect::PutInstance {
                        instance: previous,
                        meta: old.meta.clone(),
                    });
                }
            }
            effects.push(Effect::PutName {
                name: name.clone(),
                instance,
            });
        }
        self.next_instance = self.next_instance.max(instance.0.saturating_add(1));
        effects.push(Effect::PutInstance {
            instance,
            meta: meta.clone(),
        });
        self.instances.insert(
            instance,
            Instance {
                meta,
                sections: Some(sections),
            },
        );
        Ok(())
    }

    /// Removes an instance with all its sections and data (a destroy, or
    /// the reset before a snapshot install).
    fn drop_instance(
        &mut self,
        backing: &dyn Backing,
        instance: InstanceId,
        effects: &mut Vec<Effect>,
    ) -> CkptResult<()> {
        let (meta, sections) = load_instance(&mut self.instances, backing, instance)?;
        for (section_id, section) in sections.iter() {
            if section.expiration_time != TIME_END {
                effects.push(Effect::DeleteExpiry {
                    expiration_time: section.expiration_time,
                    instance,
                    section_id: section_id.clone(),
                });
            }
        }
        let name = meta.name.clone();
        effects.push(Effect::ClearInstance {
            column_family: meta.column_family,
            instance,
        });
        effects.push(Effect::DeleteInstance { instance });
        if self.names.get(&name) == Some(&instance) {
            self.names.remove(&name);
            effects.push(Effect::DeleteName { name });
        }
        self.instances.remove(&instance);
        Ok(())
    }
}

/// "instance I entry epoch E seq S", for errors about an entry.
struct EntryAt<'a>(&'a Entry);

impl std::fmt::Display for EntryAt<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entry = self.0;
        write!(
            f,
            "instance {} entry epoch {} seq {}",
            entry.instance.0, entry.epoch.0, entry.seq.0
        )
    }
}

/// What the named checkpoints hold, in all: kept up to date as entries
/// are applied, so that reporting it needs no scan of every instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Checkpoints with a name (unlinked ones are not counted).
    pub checkpoints: u64,
    /// Their sections.
    pub sections: u64,
    /// Their data bytes (`memory_used`).
    pub bytes: u64,
}

impl Totals {
    fn of(meta: &InstanceMeta) -> Totals {
        if meta.unlinked {
            return Totals::default();
        }
        Totals {
            checkpoints: 1,
            sections: u64::from(meta.section_count),
            bytes: meta.memory_used,
        }
    }

    fn add(&mut self, other: Totals) {
        self.checkpoints = self.checkpoints.saturating_add(other.checkpoints);
        self.sections = self.sections.saturating_add(other.sections);
        self.bytes = self.bytes.saturating_add(other.bytes);
    }

    fn sub(&mut self, other: Totals) {
        self.checkpoints = self.checkpoints.saturating_sub(other.checkpoints);
        self.sections = self.sections.saturating_sub(other.sections);
        self.bytes = self.bytes.saturating_sub(other.bytes);
    }
}

fn load_instance<'a>(
    instances: &'a mut HashMap<InstanceId, Instance>,
    backing: &dyn Backing,
    instance: InstanceId,
) -> CkptResult<(
    &'a mut InstanceMeta,
    &'a mut BTreeMap<SectionId, SectionMeta>,
)> {
    let entry = instances.get_mut(&instance).ok_or_else(|| {
        err(
            ErrorCode::NotExist,
            format!("checkpoint instance {} does not exist", instance.0),
        )
    })?;
    if entry.sections.is_none() {
        entry.sections = Some(backing.load_sections(instance)?);
    }
    let Instance { meta, sections } = entry;
    match sections {
        Some(sections) => Ok((meta, sections)),
        None => Err(err(ErrorCode::Library, "section map failed to load")),
    }
}

/// The error for an instance that is stale or mid-install.
pub fn stale_error(instance: InstanceId) -> CkptError {
    err(
        ErrorCode::TryAgain,
        format!(
            "checkpoint instance {} is stale (its log diverged from the active replica's, or a snapshot install did not finish): it serves nothing until a snapshot is installed",
            instance.0
        ),
    )
}

fn check_update_size(len: usize) -> CkptResult<()> {
    if len as u64 > UPDATE_BYTES_MAX {
        return Err(err(
            ErrorCode::TooBig,
            format!("update carries {len} bytes, at most {UPDATE_BYTES_MAX} per call"),
        ));
    }
    Ok(())
}

/// The largest section size allowed: maxSectionSize, and never more than
/// [`SECTION_BYTES_MAX`] even for a checkpoint whose attributes were stored
/// before that bound existed.
fn section_bytes_max(a: &CreationAttributes) -> u64 {
    a.max_section_size.min(SECTION_BYTES_MAX)
}

/// checkpointSize, bounded by [`CHECKPOINT_BYTES_MAX`] (as above).
fn checkpoint_bytes_max(a: &CreationAttributes) -> u64 {
    a.checkpoint_size.min(CHECKPOINT_BYTES_MAX)
}

/// maxSections, bounded by [`SECTIONS_MAX`] (as above).
fn sections_max(a: &CreationAttributes) -> u32 {
    a.max_sections.min(SECTIONS_MAX)
}

/// NO_SPACE unless `used_without + added` fits checkpointSize; the sum is
/// checked, so no value of either can wrap past the bound.
fn check_checkpoint_size(used_without: u64, added: u64, a: &CreationAttributes) -> CkptResult<()> {
    let limit = checkpoint_bytes_max(a);
    match used_without.checked_add(added) {
        Some(total) if total <= limit => Ok(()),
        total => Err(err(
            ErrorCode::NoSpace,
            format!(
                "checkpoint would hold {} bytes, checkpointSize is {limit}",
                total.map_or_else(|| format!("{used_without} + {added}"), |t| t.to_string())
            ),
        )),
    }
}

/// Validates a multi-element write as a whole: the first failing element's
/// index is reported and nothing is logged.
fn plan_write(
    meta: &InstanceMeta,
    sections: &BTreeMap<SectionId, SectionMeta>,
    elements: &[WriteElement],
) -> CkptResult<RecordBody> {
    let a = &meta.attributes;
    if elements.is_empty() {
        return Err(err(
            ErrorCode::InvalidParameter,
            "a write needs at least one element",
        ));
    }
    if elements.len() > ELEMENTS_MAX {
        return Err(err(
            ErrorCode::InvalidParameter,
            format!(
                "{} elements, at most {ELEMENTS_MAX} per write",
                elements.len()
            ),
        ));
    }
    check_update_size(elements.iter().map(|e| e.data.len()).sum())?;
    // Sizes as they will be after the elements so far, so that several
    // elements on one section and the checkpoint total add up correctly.
    let mut sizes: HashMap<&SectionId, u64> = HashMap::new();
    let mut memory_used = meta.memory_used;
    for (index, element) in elements.iter().enumerate() {
        let at = |e: CkptError| e.at_index(index as u32);
        let Some(section) = sections.get(&element.section_id) else {
            return Err(at(err(
                ErrorCode::NotExist,
                format!("section {} does not exist", element.section_id),
            )));
        };
        let end = element.offset.checked_add(element.data.len() as u64);
        let end = match end {
            Some(end) if end <= section_bytes_max(a) => end,
            _ => {
                return Err(at(err(
                    ErrorCode::InvalidParameter,
                    format!(
                        "offset {} + size {} exceeds maxSectionSize {}",
                        element.offset,
                        element.data.len(),
                        section_bytes_max(a)
                    ),
                )))
            }
        };
        let size = sizes.entry(&element.section_id).or_insert(section.size);
        if end > *size {
            let grown = end - *size;
            check_checkpoint_size(memory_used, grown, a).map_err(at)?;
            memory_used += grown;
            *size = end;
        }
    }
    let elements = elements
        .iter()
        .map(|e| WriteOp {
            section_id: e.section_id.clone(),
            offset: e.offset,
            data: e.data.clone(),
        })
        .collect();
    Ok(RecordBody::Write { elements })
}

#[cfg(test)]
mod golden;

#[cfg(test)]
mod entry_checks {
    use super::*;
    use ckpt_proto::CreationFlags;

    struct Empty;

    impl Backing for Empty {
        fn load_sections(&self, _: InstanceId) -> CkptResult<BTreeMap<SectionId, SectionMeta>> {
            Ok(BTreeMap::new())
        }
        fn take_column_family(&self, _: InstanceId) -> CkptResult<u32> {
            Ok(0)
        }
        fn expiry_candidates(&self, _: i64) -> CkptResult<Vec<(InstanceId, SectionId)>> {
            Ok(vec![])
        }
    }

    fn entry(epoch: u64, seq: u64, body: RecordBody) -> Entry {
        Entry {
            instance: InstanceId(5),
            epoch: Epoch(epoch),
            seq: Seq(seq),
            timestamp: 1,
            origin: None,
            body,
        }
    }

    fn retention(epoch: u64, seq: u64) -> Entry {
        entry(
            epoch,
            seq,
            RecordBody::RetentionSet {
                retention_duration_ns: 7,
            },
        )
    }

    fn created() -> StateMachine {
        let mut state = StateMachine::new(HashMap::new(), HashMap::new(), 1);
        let create = entry(
            1,
            1,
            RecordBody::CheckpointCreate {
                name: CheckpointName::new("c").unwrap(),
                attributes: CreationAttributes {
                    creation_flags: CreationFlags::WR_ACTIVE_REPLICA,
                    checkpoint_size: 100,
                    retention_duration_ns: 0,
                    max_sections: 2,
                    max_section_size: 50,
                    max_section_id_size: 8,
                },
            },
        );
        state.apply(&Empty, &create).unwrap();
        assert_eq!(state.next_instance(), 6, "the counter moves above the id");
        state
    }

    #[test]
    fn apply_refuses_a_seq_that_does_not_follow() {
        let mut state = created();
        for seq in [1, 3] {
            let error = state.apply(&Empty, &retention(1, seq)).unwrap_err();
            assert_eq!(error.code, ErrorCode::Library);
            assert!(error.detail.contains("expected seq 2"), "{}", error.detail);
        }
        state.apply(&Empty, &retention(1, 2)).unwrap();
        assert_eq!(state.instance(InstanceId(5)).unwrap().seq, Seq(2));
    }

    #[test]
    fn only_an_epoch_start_moves_the_epoch_and_never_back() {
        let mut state = created();
        assert!(
            state.check_entry(&retention(2, 2)).is_err(),
            "no epoch start"
        );
        let start = |epoch| {
            entry(
                epoch,
                2,
                RecordBody::EpochStart {
                    epoch: Epoch(epoch),
                },
            )
        };
        assert!(state.check_entry(&start(1)).is_err(), "not above");
        let mismatched = entry(3, 2, RecordBody::EpochStart { epoch: Epoch(2) });
        assert!(state.check_entry(&mismatched).is_err());
        state.apply(&Empty, &start(2)).unwrap();
        assert_eq!(state.instance(InstanceId(5)).unwrap().epoch, Epoch(2));
        let why = state.check_entry(&retention(1, 3)).unwrap_err();
        assert!(why.contains("epoch 2"), "{why}");
        state.apply(&Empty, &retention(2, 3)).unwrap();
    }

    #[test]
    fn a_stale_instance_takes_only_a_snapshot() {
        let mut state = created();
        state
            .apply(&Empty, &entry(1, 1, RecordBody::SuffixDiscard))
            .unwrap();
        assert!(state.instance(InstanceId(5)).unwrap().stale);
        let why = state.check_entry(&retention(1, 2)).unwrap_err();
        assert!(why.contains("stale"), "{why}");
        let error = state
            .plan(
                &Empty,
                &Op::SetRetention {
                    instance: InstanceId(5),
                    retention_duration_ns: 1,
                },
                0,
            )
            .unwrap_err();
        assert_eq!(error.code, ErrorCode::TryAgain);
        assert!(state
            .check_entry(&entry(
                3,
                9,
                RecordBody::SnapshotBegin {
                    name: CheckpointName::new("c").unwrap(),
                    attributes: state.instance(InstanceId(5)).unwrap().attributes.clone(),
                    unlinked: false,
                    generated_next: 1,
                    created_at: 0,
                }
            ))
            .is_ok());
    }
}
