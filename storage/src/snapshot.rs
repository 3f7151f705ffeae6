//! A whole checkpoint instance as one value — what an active replica sends
//! a backup whose log is too far behind or diverged — and the checksum
//! replicas compare.
//!
//! A snapshot is installed as log entries (`SnapshotBegin`, one
//! `SnapshotSection` per part of each section, `SnapshotEnd`), so recovery
//! reproduces an install like any other change; the instance is stale
//! between the first and the last, so an install cut short by a crash
//! leaves it refusing service, never half-valid.

use ckpt_proto::{CheckpointName, CkptResult, CreationAttributes, SectionId};
use serde::{Deserialize, Serialize};

use crate::wal::record::{Entry, Epoch, InstanceId, Lsn, RecordBody, Seq};

/// Most section bytes in one `SnapshotSection` entry.
pub const SNAPSHOT_PART_BYTES: usize = 4 * 1024 * 1024;

/// One section of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotSection {
    pub section_id: SectionId,
    pub expiration_time: i64,
    pub last_update: i64,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// An instance's whole state at one point (`epoch`, `seq`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSnapshot {
    pub instance: InstanceId,
    pub name: CheckpointName,
    pub attributes: CreationAttributes,
    pub unlinked: bool,
    pub epoch: Epoch,
    pub seq: Seq,
    pub generated_next: u64,
    pub created_at: i64,
    /// Every section, in id order.
    pub sections: Vec<SnapshotSection>,
}

/// What the log still holds of an instance after a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntriesAfter {
    /// The entries that follow, in order, with their lsns here (possibly
    /// none: the caller is up to date).
    Entries(Vec<(Lsn, Entry)>),
    /// The log no longer holds the entry right after the position: send a
    /// snapshot instead.
    Gone,
}

impl InstanceSnapshot {
    /// The entries that install this snapshot, stamped `now`.
    ///
    /// # Errors
    /// None today; kept fallible for validation.
    pub fn entries(&self, now: i64) -> CkptResult<Vec<Entry>> {
        let entry = |body| Entry {
            instance: self.instance,
            epoch: self.epoch,
            seq: self.seq,
            timestamp: now,
            origin: None,
            body,
        };
        let mut entries = vec![entry(RecordBody::SnapshotBegin {
            name: self.name.clone(),
            attributes: self.attributes.clone(),
            unlinked: self.unlinked,
            generated_next: self.generated_next,
            created_at: self.created_at,
        })];
        for section in &self.sections {
            let mut offset = 0usize;
            loop {
                let end = (offset + SNAPSHOT_PART_BYTES).min(section.data.len());
                entries.push(entry(RecordBody::SnapshotSection {
                    section_id: section.section_id.clone(),
                    expiration_time: section.expiration_time,
                    last_update: section.last_update,
                    offset: offset as u64,
                    data: section.data[offset..end].to_vec(),
                }));
                offset = end;
                if offset >= section.data.len() {
                    break;
                }
            }
        }
        entries.push(entry(RecordBody::SnapshotEnd));
        Ok(entries)
    }

    /// Encoded with postcard (what replicas send each other).
    ///
    /// # Errors
    /// Never in practice (postcard to a vector).
    pub fn to_bytes(&self) -> CkptResult<Vec<u8>> {
        postcard::to_allocvec(self).map_err(|e| {
            ckpt_proto::CkptError::new(ckpt_proto::ErrorCode::Library, format!("snapshot: {e}"))
        })
    }

    /// Decoded from [`InstanceSnapshot::to_bytes`].
    ///
    /// # Errors
    /// `INVALID_PARAMETER` for bytes that are not a snapshot.
    pub fn from_bytes(bytes: &[u8]) -> CkptResult<InstanceSnapshot> {
        postcard::from_bytes(bytes).map_err(|e| {
            ckpt_proto::CkptError::new(
                ckpt_proto::ErrorCode::InvalidParameter,
                format!("snapshot: {e}"),
            )
        })
    }
}

/// FNV-1a, 64 bit: a checksum that is the same on every node and build.
#[derive(Debug, Clone, Copy)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    /// Adds bytes.
    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// Adds a byte string with its length, so that boundaries count.
    pub fn write_bytes(&mut self, bytes: &[u8]) {
        self.write(&(bytes.len() as u64).to_le_bytes());
        self.write(bytes);
    }

    /// The checksum so far.
    pub fn finish(&self) -> u64 {
        self.0
    }
}
