//! A checkpoint instance streamed whole — what an active replica sends a
//! backup whose log is too far behind or diverged — and the checksum
//! replicas compare.
//!
//! A snapshot is a sequence of install entries (`SnapshotBegin`, one
//! `SnapshotSection` per part of each section, `SnapshotEnd`), all stamped
//! with the instance's position, cut into [`SnapshotPart`]s of a bounded
//! size: the sender reads one part at a time from a consistent view, the
//! backup logs and applies each with `Store::submit_replicated`, so memory
//! stays flat whatever the checkpoint's size. Recovery reproduces an
//! install like any other change; the instance is stale between the first
//! entry and the last, so an install cut short (a crash, a lost connection)
//! leaves it refusing service, never half-valid, until a snapshot is
//! installed whole or a creation replaces it.

use ckpt_proto::{CkptError, CkptResult, ErrorCode};

use crate::wal::record::{Entry, Lsn, Position};

/// Most section bytes in one `SnapshotSection` entry.
pub const SNAPSHOT_PART_BYTES: usize = 4 * 1024 * 1024;

/// One part of a streamed snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPart {
    /// The instance's position the snapshot is of (every entry's epoch and seq).
    pub last: Position,
    /// 0 for the part that starts with `SnapshotBegin`, then 1, 2, …
    pub index: u64,
    /// The last part (it ends with `SnapshotEnd`).
    pub done: bool,
    /// Install entries, in order.
    pub entries: Vec<Entry>,
}

/// Entries as one byte string (each `Entry::encode`, after its length as a
/// u32 little-endian): how a part travels.
pub fn encode_entries(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.iter().map(|e| e.encoded_len() + 4).sum());
    for entry in entries {
        let bytes = entry.encode();
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

/// The entries of [`encode_entries`].
///
/// # Errors
/// `INVALID_PARAMETER` for a truncated length or entry, or bytes that do
/// not decode to an entry.
pub fn decode_entries(mut bytes: &[u8]) -> CkptResult<Vec<Entry>> {
    let mut entries = Vec::new();
    while !bytes.is_empty() {
        let (len, rest) = bytes
            .split_first_chunk::<4>()
            .ok_or_else(|| truncated("an entry length"))?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err(truncated("an entry"));
        }
        let (entry, rest) = rest.split_at(len);
        entries.push(Entry::decode(entry)?);
        bytes = rest;
    }
    Ok(entries)
}

fn truncated(what: &str) -> CkptError {
    CkptError::new(
        ErrorCode::InvalidParameter,
        format!("snapshot part: {what} is cut short"),
    )
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
