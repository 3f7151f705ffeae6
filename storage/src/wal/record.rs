//! One log record per state change, in a fixed-width little-endian format.
//!
//! A record is a node-local envelope (length, crc, lsn) around an
//! [`Entry`]: the unit replicas ship to each other, whose bytes
//! ([`Entry::encode`]) are exactly the record's bytes after the lsn.
//!
//! ```text
//! offset size field
//!      0    4 length      bytes that follow the crc field (lsn .. end of payload)
//!      4    4 crc32       crc32 (IEEE, crc32fast) of those `length` bytes
//!      8    8 lsn         position in this node's log, +1 per record, never reused
//!     -- entry --
//!     16    1 kind        RecordKind
//!     17    8 instance    checkpoint instance id (cluster-wide)
//!     25    8 epoch       the checkpoint's epoch when the entry was ordered
//!     33    8 seq         the checkpoint's sequence number (1, 2, ... per instance)
//!     41    8 timestamp   ns since the Unix epoch when the change was ordered (i64)
//!     49    1 origin      0: none; 1: followed by session (u64) and request (u64)
//!   50/66   … payload     per kind, see `RecordBody`
//! ```
//!
//! Format history (segment header version, `segment::SEGMENT_VERSION`):
//! 1 = kind before lsn, no origin, `CheckpointCreate` carried its column
//! family; 2 = the envelope/entry split above, origin added, the column
//! family chosen at apply time from the instance id, kinds 11-15
//! (epochs, snapshots, suffix discard) added.
//!
//! Payload fields are fixed-width little-endian integers; byte strings are a
//! `u32` length followed by the bytes. Decoding never trusts a length: every
//! read is bounds-checked, and a record claims at most
//! [`RECORD_BYTES_MAX`] bytes.

use ckpt_proto::{
    CheckpointName, CkptError, CkptResult, CreationAttributes, CreationFlags, ErrorCode, SectionId,
};

/// Bytes before the payload of a record without origin: length, crc, lsn,
/// kind, instance, epoch, seq, timestamp, origin flag (the smallest record).
pub const RECORD_HEADER_BYTES: usize = 4 + 4 + 8 + ENTRY_HEADER_BYTES;

/// Bytes of an entry before its payload when it has no origin.
pub const ENTRY_HEADER_BYTES: usize = 1 + 8 * 4 + 1;

/// Largest encoded record (header included) a reader accepts. One update
/// carries at most `UPDATE_BYTES_MAX` of data plus per-element overhead.
pub const RECORD_BYTES_MAX: u64 = ckpt_proto::UPDATE_BYTES_MAX + 64 * 1024 * 1024;

/// Position of a record in this node's log.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Lsn(pub u64);

/// A checkpoint instance: one per creation, never reused, so a deleted
/// checkpoint that is still open and a new one of the same name are distinct.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct InstanceId(pub u64);

/// The term of a checkpoint's active replica (bumped on failover).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Epoch(pub u64);

/// A checkpoint's update sequence number within its instance.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Seq(pub u64);

/// One element of a logged write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOp {
    /// Section written.
    pub section_id: SectionId,
    /// Byte offset.
    pub offset: u64,
    /// Bytes written.
    pub data: Vec<u8>,
}

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordBody {
    /// A new checkpoint instance under `name` (its data column family is
    /// chosen by each node from the instance id when applying).
    CheckpointCreate {
        name: CheckpointName,
        attributes: CreationAttributes,
    },
    /// The name is removed; the instance lives on until destroyed.
    CheckpointUnlink,
    /// The instance and all its sections are gone; its data keys are range-deleted.
    CheckpointDestroy,
    /// The retention duration changed.
    RetentionSet { retention_duration_ns: i64 },
    /// A section was created; `generated_next` is the instance's
    /// generated-id counter after this record.
    SectionCreate {
        section_id: SectionId,
        expiration_time: i64,
        data: Vec<u8>,
        generated_next: u64,
    },
    /// A section was deleted (by a user, or because it expired).
    SectionDelete {
        section_id: SectionId,
        expired: bool,
    },
    /// A section's expiration time changed.
    SectionExpirationSet {
        section_id: SectionId,
        expiration_time: i64,
    },
    /// An atomic write of one or more elements.
    Write { elements: Vec<WriteOp> },
    /// A section's data and size were replaced.
    Overwrite {
        section_id: SectionId,
        data: Vec<u8>,
    },
    /// The generated-id counter was set (restoring a dump).
    GeneratedIdSet { next: u64 },
    /// A new active replica took over the instance at `epoch` (the entry's
    /// own epoch is the same).
    EpochStart { epoch: Epoch },
    /// Installing a whole instance from a snapshot starts: every section of
    /// the instance is dropped, its metadata replaced, and the instance is
    /// incomplete (refusing reads and writes) until [`RecordBody::SnapshotEnd`].
    /// The entry's epoch and seq are those of the snapshot's point.
    SnapshotBegin {
        name: CheckpointName,
        attributes: CreationAttributes,
        unlinked: bool,
        generated_next: u64,
        created_at: i64,
    },
    /// One part of a section of the snapshot being installed: at offset 0
    /// it creates the section, later parts append at `offset`.
    SnapshotSection {
        section_id: SectionId,
        expiration_time: i64,
        last_update: i64,
        offset: u64,
        data: Vec<u8>,
    },
    /// The snapshot is complete: the instance serves again.
    SnapshotEnd,
    /// The instance's log suffix diverged from the active replica's: it is
    /// stale (refusing reads and writes) until a snapshot is installed.
    SuffixDiscard,
}

/// The kind byte of each [`RecordBody`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    CheckpointCreate = 1,
    CheckpointUnlink = 2,
    CheckpointDestroy = 3,
    RetentionSet = 4,
    SectionCreate = 5,
    SectionDelete = 6,
    SectionExpirationSet = 7,
    Write = 8,
    Overwrite = 9,
    GeneratedIdSet = 10,
    EpochStart = 11,
    SnapshotBegin = 12,
    SnapshotSection = 13,
    SnapshotEnd = 14,
    SuffixDiscard = 15,
}

impl RecordKind {
    /// The kind's name, as docs/storage.md and `ckpt-tool wal` spell it.
    pub fn name(self) -> &'static str {
        match self {
            RecordKind::CheckpointCreate => "CheckpointCreate",
            RecordKind::CheckpointUnlink => "CheckpointUnlink",
            RecordKind::CheckpointDestroy => "CheckpointDestroy",
            RecordKind::RetentionSet => "RetentionSet",
            RecordKind::SectionCreate => "SectionCreate",
            RecordKind::SectionDelete => "SectionDelete",
            RecordKind::SectionExpirationSet => "SectionExpirationSet",
            RecordKind::Write => "Write",
            RecordKind::Overwrite => "Overwrite",
            RecordKind::GeneratedIdSet => "GeneratedIdSet",
            RecordKind::EpochStart => "EpochStart",
            RecordKind::SnapshotBegin => "SnapshotBegin",
            RecordKind::SnapshotSection => "SnapshotSection",
            RecordKind::SnapshotEnd => "SnapshotEnd",
            RecordKind::SuffixDiscard => "SuffixDiscard",
        }
    }

    /// The kind of a kind byte, if it is one.
    pub fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => RecordKind::CheckpointCreate,
            2 => RecordKind::CheckpointUnlink,
            3 => RecordKind::CheckpointDestroy,
            4 => RecordKind::RetentionSet,
            5 => RecordKind::SectionCreate,
            6 => RecordKind::SectionDelete,
            7 => RecordKind::SectionExpirationSet,
            8 => RecordKind::Write,
            9 => RecordKind::Overwrite,
            10 => RecordKind::GeneratedIdSet,
            11 => RecordKind::EpochStart,
            12 => RecordKind::SnapshotBegin,
            13 => RecordKind::SnapshotSection,
            14 => RecordKind::SnapshotEnd,
            15 => RecordKind::SuffixDiscard,
            _ => return None,
        })
    }
}

/// Who asked for a change: a client session and its request number
/// (exactly-once: a resubmitted origin is answered, not applied again).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Origin {
    pub session: u64,
    pub request: u64,
}

/// A state change of one instance, as ordered by its active replica: the
/// unit shipped between replicas, the same on every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub instance: InstanceId,
    pub epoch: Epoch,
    pub seq: Seq,
    /// ns since the Unix epoch when the change was ordered.
    pub timestamp: i64,
    pub origin: Option<Origin>,
    pub body: RecordBody,
}

/// An entry at its position in this node's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub lsn: Lsn,
    pub entry: Entry,
}

/// Why bytes did not decode as a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the record needs: a torn tail if at the end of the log.
    #[error("record truncated: needs {needed} bytes, {available} available")]
    Truncated { needed: u64, available: u64 },
    /// The checksum does not match.
    #[error("record checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    /// The checksum matched but the content is not a valid record.
    #[error("malformed record: {0}")]
    Malformed(String),
}

impl RecordBody {
    /// The kind byte.
    pub fn kind(&self) -> RecordKind {
        match self {
            RecordBody::CheckpointCreate { .. } => RecordKind::CheckpointCreate,
            RecordBody::CheckpointUnlink => RecordKind::CheckpointUnlink,
            RecordBody::CheckpointDestroy => RecordKind::CheckpointDestroy,
            RecordBody::RetentionSet { .. } => RecordKind::RetentionSet,
            RecordBody::SectionCreate { .. } => RecordKind::SectionCreate,
            RecordBody::SectionDelete { .. } => RecordKind::SectionDelete,
            RecordBody::SectionExpirationSet { .. } => RecordKind::SectionExpirationSet,
            RecordBody::Write { .. } => RecordKind::Write,
            RecordBody::Overwrite { .. } => RecordKind::Overwrite,
            RecordBody::GeneratedIdSet { .. } => RecordKind::GeneratedIdSet,
            RecordBody::EpochStart { .. } => RecordKind::EpochStart,
            RecordBody::SnapshotBegin { .. } => RecordKind::SnapshotBegin,
            RecordBody::SnapshotSection { .. } => RecordKind::SnapshotSection,
            RecordBody::SnapshotEnd => RecordKind::SnapshotEnd,
            RecordBody::SuffixDiscard => RecordKind::SuffixDiscard,
        }
    }

    /// Data bytes this record carries (for batch sizing).
    pub fn data_len(&self) -> usize {
        match self {
            RecordBody::SectionCreate { data, .. }
            | RecordBody::Overwrite { data, .. }
            | RecordBody::SnapshotSection { data, .. } => data.len(),
            RecordBody::Write { elements } => elements.iter().map(|e| e.data.len()).sum(),
            _ => 0,
        }
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Lengths are bounded by UPDATE_BYTES_MAX (< 4 GiB) before a record is built.
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

impl Entry {
    /// Appends the encoded entry to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(self.body.kind() as u8);
        out.extend_from_slice(&self.instance.0.to_le_bytes());
        out.extend_from_slice(&self.epoch.0.to_le_bytes());
        out.extend_from_slice(&self.seq.0.to_le_bytes());
        out.extend_from_slice(&self.timestamp.to_le_bytes());
        match self.origin {
            None => out.push(0),
            Some(origin) => {
                out.push(1);
                out.extend_from_slice(&origin.session.to_le_bytes());
                out.extend_from_slice(&origin.request.to_le_bytes());
            }
        }
        encode_body(&self.body, out);
    }

    /// The encoded entry (the bytes a record holds after its lsn).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out
    }

    /// Size of [`Entry::encode`]'s output, computed without encoding.
    pub fn encoded_len(&self) -> usize {
        let origin = if self.origin.is_some() { 16 } else { 0 };
        ENTRY_HEADER_BYTES + origin + body_len(&self.body)
    }

    /// Decodes an entry that fills `bytes` exactly.
    ///
    /// # Errors
    /// `INVALID_PARAMETER` naming what is wrong when the bytes are not one
    /// valid entry.
    pub fn decode(bytes: &[u8]) -> CkptResult<Entry> {
        if bytes.len() as u64 > RECORD_BYTES_MAX {
            return Err(CkptError::new(
                ErrorCode::InvalidParameter,
                format!("entry of {} bytes exceeds the maximum", bytes.len()),
            ));
        }
        let mut c = Cursor { bytes };
        let entry = decode_entry(&mut c)
            .and_then(|entry| c.finish().map(|()| entry))
            .map_err(|e| CkptError::new(ErrorCode::InvalidParameter, format!("entry: {e}")))?;
        Ok(entry)
    }

    /// Where this entry puts its instance.
    pub fn position(&self) -> Position {
        Position {
            instance: self.instance,
            epoch: self.epoch,
            seq: self.seq,
        }
    }
}

/// Where an instance's log is: the last entry's epoch and sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Position {
    pub instance: InstanceId,
    pub epoch: Epoch,
    pub seq: Seq,
}

fn body_len(body: &RecordBody) -> usize {
    let b = |bytes: &[u8]| 4 + bytes.len();
    match body {
        RecordBody::CheckpointCreate { name, .. } => b(name.as_bytes()) + ATTRIBUTES_BYTES,
        RecordBody::CheckpointUnlink
        | RecordBody::CheckpointDestroy
        | RecordBody::SnapshotEnd
        | RecordBody::SuffixDiscard => 0,
        RecordBody::RetentionSet { .. }
        | RecordBody::GeneratedIdSet { .. }
        | RecordBody::EpochStart { .. } => 8,
        RecordBody::SectionCreate {
            section_id, data, ..
        } => b(section_id.as_bytes()) + 16 + b(data),
        RecordBody::SectionDelete { section_id, .. } => b(section_id.as_bytes()) + 1,
        RecordBody::SectionExpirationSet { section_id, .. } => b(section_id.as_bytes()) + 8,
        RecordBody::Write { elements } => {
            4 + elements
                .iter()
                .map(|e| b(e.section_id.as_bytes()) + 8 + b(&e.data))
                .sum::<usize>()
        }
        RecordBody::Overwrite { section_id, data } => b(section_id.as_bytes()) + b(data),
        RecordBody::SnapshotBegin { name, .. } => b(name.as_bytes()) + ATTRIBUTES_BYTES + 1 + 16,
        RecordBody::SnapshotSection {
            section_id, data, ..
        } => b(section_id.as_bytes()) + 24 + b(data),
    }
}

/// Bytes of `CreationAttributes::encode_le`.
const ATTRIBUTES_BYTES: usize = 4 + 8 + 8 + 4 + 8 + 8;

fn encode_body(body: &RecordBody, out: &mut Vec<u8>) {
    match body {
        RecordBody::CheckpointCreate { name, attributes } => {
            put_bytes(out, name.as_bytes());
            attributes.encode_le(out);
        }
        RecordBody::CheckpointUnlink
        | RecordBody::CheckpointDestroy
        | RecordBody::SnapshotEnd
        | RecordBody::SuffixDiscard => {}
        RecordBody::RetentionSet {
            retention_duration_ns,
        } => {
            out.extend_from_slice(&retention_duration_ns.to_le_bytes());
        }
        RecordBody::SectionCreate {
            section_id,
            expiration_time,
            data,
            generated_next,
        } => {
            put_bytes(out, section_id.as_bytes());
            out.extend_from_slice(&expiration_time.to_le_bytes());
            out.extend_from_slice(&generated_next.to_le_bytes());
            put_bytes(out, data);
        }
        RecordBody::SectionDelete {
            section_id,
            expired,
        } => {
            put_bytes(out, section_id.as_bytes());
            out.push(u8::from(*expired));
        }
        RecordBody::SectionExpirationSet {
            section_id,
            expiration_time,
        } => {
            put_bytes(out, section_id.as_bytes());
            out.extend_from_slice(&expiration_time.to_le_bytes());
        }
        RecordBody::Write { elements } => {
            out.extend_from_slice(&(elements.len() as u32).to_le_bytes());
            for element in elements {
                put_bytes(out, element.section_id.as_bytes());
                out.extend_from_slice(&element.offset.to_le_bytes());
                put_bytes(out, &element.data);
            }
        }
        RecordBody::Overwrite { section_id, data } => {
            put_bytes(out, section_id.as_bytes());
            put_bytes(out, data);
        }
        RecordBody::GeneratedIdSet { next } => out.extend_from_slice(&next.to_le_bytes()),
        RecordBody::EpochStart { epoch } => out.extend_from_slice(&epoch.0.to_le_bytes()),
        RecordBody::SnapshotBegin {
            name,
            attributes,
            unlinked,
            generated_next,
            created_at,
        } => {
            put_bytes(out, name.as_bytes());
            attributes.encode_le(out);
            out.push(u8::from(*unlinked));
            out.extend_from_slice(&generated_next.to_le_bytes());
            out.extend_from_slice(&created_at.to_le_bytes());
        }
        RecordBody::SnapshotSection {
            section_id,
            expiration_time,
            last_update,
            offset,
            data,
        } => {
            put_bytes(out, section_id.as_bytes());
            out.extend_from_slice(&expiration_time.to_le_bytes());
            out.extend_from_slice(&last_update.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            put_bytes(out, data);
        }
    }
}

/// Appends the record of `entry` at `lsn` to `out` (what
/// [`Record::encode_into`] does, without building the record).
pub fn encode_record(lsn: Lsn, entry: &Entry, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]); // length and crc, filled below
    out.extend_from_slice(&lsn.0.to_le_bytes());
    entry.encode_into(out);
    let length = (out.len() - start - 8) as u32;
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&length.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

impl Record {
    /// Appends the encoded record to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        encode_record(self.lsn, &self.entry, out);
    }

    /// The encoded record.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.entry.encoded_len());
        self.encode_into(&mut out);
        out
    }

    /// Decodes the record at the start of `bytes`, returning it and its
    /// encoded size.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`] when `bytes` ends inside the record,
    /// [`DecodeError::Checksum`] when the crc does not match,
    /// [`DecodeError::Malformed`] when a checksummed record is not valid.
    pub fn decode(bytes: &[u8]) -> Result<(Record, usize), DecodeError> {
        let available = bytes.len() as u64;
        if bytes.len() < 8 {
            return Err(DecodeError::Truncated {
                needed: 8,
                available,
            });
        }
        let length = u64::from(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]));
        let stored = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        if length + 8 > RECORD_BYTES_MAX {
            return Err(DecodeError::Malformed(format!(
                "record length {length} exceeds the maximum"
            )));
        }
        let total = length + 8;
        if available < total {
            return Err(DecodeError::Truncated {
                needed: total,
                available,
            });
        }
        let body = &bytes[8..total as usize];
        let computed = crc32fast::hash(body);
        if computed != stored {
            return Err(DecodeError::Checksum { stored, computed });
        }
        let mut c = Cursor { bytes: body };
        let lsn = Lsn(c.u64()?);
        let entry = decode_entry(&mut c)?;
        c.finish()?;
        Ok((Record { lsn, entry }, total as usize))
    }
}

/// The fixed fields at the start of an encoded record, read without its
/// checksum or payload: walkers of a segment use them to skip records they
/// do not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Bytes of the whole record, length and checksum included.
    pub total: usize,
    pub lsn: Lsn,
    /// The entry's kind byte, not checked against [`RecordKind`].
    pub kind: u8,
    pub instance: InstanceId,
}

impl RecordHeader {
    /// The header of the record at the start of `bytes`, if its length
    /// field claims a size between the smallest record and
    /// [`RECORD_BYTES_MAX`] that `bytes` holds. Nothing is checksummed.
    pub fn peek(bytes: &[u8]) -> Option<RecordHeader> {
        if bytes.len() < RECORD_HEADER_BYTES {
            return None;
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let total = u64::from(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])) + 8;
        if total < RECORD_HEADER_BYTES as u64
            || total > RECORD_BYTES_MAX
            || total > bytes.len() as u64
        {
            return None;
        }
        // Length, crc, lsn, then the entry: kind, instance, ...
        Some(RecordHeader {
            total: total as usize,
            lsn: Lsn(u64_at(8)),
            kind: bytes[16],
            instance: InstanceId(u64_at(17)),
        })
    }

    /// Whether the checksum of the record at the start of `bytes` (whose
    /// header this is) holds.
    pub fn checksum_holds(&self, bytes: &[u8]) -> bool {
        let stored = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        crc32fast::hash(&bytes[8..self.total]) == stored
    }
}

/// A bounds-checked reader over a checksummed record body.
struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError::Malformed(format!(
                "field needs {n} bytes, {} left",
                self.bytes.len()
            )));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    fn bytes(&mut self) -> Result<Vec<u8>, DecodeError> {
        let len = self.u32()? as usize;
        Ok(self.take(len)?.to_vec())
    }

    fn section_id(&mut self) -> Result<SectionId, DecodeError> {
        Ok(SectionId::new(self.bytes()?))
    }

    fn attributes(&mut self) -> Result<CreationAttributes, DecodeError> {
        Ok(CreationAttributes {
            creation_flags: CreationFlags(self.u32()?),
            checkpoint_size: self.u64()?,
            retention_duration_ns: self.i64()?,
            max_sections: self.u32()?,
            max_section_size: self.u64()?,
            max_section_id_size: self.u64()?,
        })
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed(format!(
                "{} trailing bytes",
                self.bytes.len()
            )))
        }
    }
}

fn decode_entry(c: &mut Cursor<'_>) -> Result<Entry, DecodeError> {
    let kind_byte = c.u8()?;
    let kind = RecordKind::from_u8(kind_byte)
        .ok_or_else(|| DecodeError::Malformed(format!("unknown record kind {kind_byte}")))?;
    let instance = InstanceId(c.u64()?);
    let epoch = Epoch(c.u64()?);
    let seq = Seq(c.u64()?);
    let timestamp = c.i64()?;
    let origin = match c.u8()? {
        0 => None,
        1 => Some(Origin {
            session: c.u64()?,
            request: c.u64()?,
        }),
        other => return Err(DecodeError::Malformed(format!("origin flag {other}"))),
    };
    let flag = |c: &mut Cursor<'_>, what: &str| match c.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(DecodeError::Malformed(format!("{what} flag {other}"))),
    };
    let name = |c: &mut Cursor<'_>| {
        CheckpointName::new(c.bytes()?)
            .map_err(|e| DecodeError::Malformed(format!("checkpoint name: {e}")))
    };
    let body = match kind {
        RecordKind::CheckpointCreate => RecordBody::CheckpointCreate {
            name: name(c)?,
            attributes: c.attributes()?,
        },
        RecordKind::CheckpointUnlink => RecordBody::CheckpointUnlink,
        RecordKind::CheckpointDestroy => RecordBody::CheckpointDestroy,
        RecordKind::RetentionSet => RecordBody::RetentionSet {
            retention_duration_ns: c.i64()?,
        },
        RecordKind::SectionCreate => {
            let section_id = c.section_id()?;
            let expiration_time = c.i64()?;
            let generated_next = c.u64()?;
            let data = c.bytes()?;
            RecordBody::SectionCreate {
                section_id,
                expiration_time,
                data,
                generated_next,
            }
        }
        RecordKind::SectionDelete => {
            let section_id = c.section_id()?;
            let expired = flag(c, "expired")?;
            RecordBody::SectionDelete {
                section_id,
                expired,
            }
        }
        RecordKind::SectionExpirationSet => {
            let section_id = c.section_id()?;
            RecordBody::SectionExpirationSet {
                section_id,
                expiration_time: c.i64()?,
            }
        }
        RecordKind::Write => {
            let count = c.u32()? as usize;
            // Each element needs at least 16 bytes, which bounds `count` by
            // the body size before anything is allocated.
            if count > c.bytes.len() / 16 {
                return Err(DecodeError::Malformed(format!(
                    "write claims {count} elements"
                )));
            }
            let mut elements = Vec::with_capacity(count);
            for _ in 0..count {
                let section_id = c.section_id()?;
                let offset = c.u64()?;
                let data = c.bytes()?;
                elements.push(WriteOp {
                    section_id,
                    offset,
                    data,
                });
            }
            RecordBody::Write { elements }
        }
        RecordKind::Overwrite => {
            let section_id = c.section_id()?;
            RecordBody::Overwrite {
                section_id,
                data: c.bytes()?,
            }
        }
        RecordKind::GeneratedIdSet => RecordBody::GeneratedIdSet { next: c.u64()? },
        RecordKind::EpochStart => RecordBody::EpochStart {
            epoch: Epoch(c.u64()?),
        },
        RecordKind::SnapshotBegin => {
            let name = name(c)?;
            let attributes = c.attributes()?;
            let unlinked = flag(c, "unlinked")?;
            RecordBody::SnapshotBegin {
                name,
                attributes,
                unlinked,
                generated_next: c.u64()?,
                created_at: c.i64()?,
            }
        }
        RecordKind::SnapshotSection => {
            let section_id = c.section_id()?;
            RecordBody::SnapshotSection {
                section_id,
                expiration_time: c.i64()?,
                last_update: c.i64()?,
                offset: c.u64()?,
                data: c.bytes()?,
            }
        }
        RecordKind::SnapshotEnd => RecordBody::SnapshotEnd,
        RecordKind::SuffixDiscard => RecordBody::SuffixDiscard,
    };
    Ok(Entry {
        instance,
        epoch,
        seq,
        timestamp,
        origin,
        body,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample_records() -> Vec<Record> {
        let attributes = CreationAttributes {
            creation_flags: CreationFlags::WR_ACTIVE_REPLICA,
            checkpoint_size: 1000,
            retention_duration_ns: 5,
            max_sections: 10,
            max_section_size: 100,
            max_section_id_size: 8,
        };
        let bodies = vec![
            RecordBody::CheckpointCreate {
                name: CheckpointName::new("ckpt").unwrap(),
                attributes: attributes.clone(),
            },
            RecordBody::CheckpointUnlink,
            RecordBody::CheckpointDestroy,
            RecordBody::RetentionSet {
                retention_duration_ns: -1,
            },
            RecordBody::SectionCreate {
                section_id: SectionId::new("s1"),
                expiration_time: 77,
                data: b"hello".to_vec(),
                generated_next: 4,
            },
            RecordBody::SectionDelete {
                section_id: SectionId::new("s1"),
                expired: true,
            },
            RecordBody::SectionExpirationSet {
                section_id: SectionId::DEFAULT,
                expiration_time: 9,
            },
            RecordBody::Write {
                elements: vec![
                    WriteOp {
                        section_id: SectionId::new("a"),
                        offset: 3,
                        data: b"xyz".to_vec(),
                    },
                    WriteOp {
                        section_id: SectionId::new("b"),
                        offset: 0,
                        data: vec![],
                    },
                ],
            },
            RecordBody::Overwrite {
                section_id: SectionId::new("a"),
                data: vec![0; 300],
            },
            RecordBody::GeneratedIdSet { next: 12 },
            RecordBody::EpochStart { epoch: Epoch(4) },
            RecordBody::SnapshotBegin {
                name: CheckpointName::new("snap").unwrap(),
                attributes,
                unlinked: true,
                generated_next: 9,
                created_at: -3,
            },
            RecordBody::SnapshotSection {
                section_id: SectionId::new("z"),
                expiration_time: 100,
                last_update: 50,
                offset: 7,
                data: b"part".to_vec(),
            },
            RecordBody::SnapshotEnd,
            RecordBody::SuffixDiscard,
        ];
        bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| Record {
                lsn: Lsn(i as u64 + 1),
                entry: Entry {
                    instance: InstanceId(7),
                    epoch: Epoch(1),
                    seq: Seq(i as u64 + 1),
                    timestamp: 1_700_000_000_000_000_000 + i as i64,
                    origin: (i % 2 == 1).then_some(Origin {
                        session: 0xdead_beef,
                        request: i as u64,
                    }),
                    body,
                },
            })
            .collect()
    }

    #[test]
    fn every_kind_round_trips() {
        for record in sample_records() {
            let bytes = record.encode();
            let (decoded, used) = Record::decode(&bytes).unwrap();
            assert_eq!(used, bytes.len());
            assert_eq!(decoded, record);
            // The entry's bytes are the record's after length, crc and lsn.
            let entry = record.entry.encode();
            assert_eq!(entry.len(), record.entry.encoded_len());
            assert_eq!(&bytes[16..], &entry[..]);
            assert_eq!(Entry::decode(&entry).unwrap(), record.entry);
        }
    }

    #[test]
    fn a_bad_entry_is_refused_with_a_reason() {
        let entry = sample_records()[4].entry.encode();
        let error = Entry::decode(&entry[..entry.len() - 1]).unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidParameter);
        let mut longer = entry.clone();
        longer.push(0);
        let error = Entry::decode(&longer).unwrap_err();
        assert!(error.detail.contains("trailing"), "{}", error.detail);
        let mut bad_origin = entry;
        bad_origin[ENTRY_HEADER_BYTES - 1] = 7;
        let error = Entry::decode(&bad_origin).unwrap_err();
        assert!(error.detail.contains("origin flag 7"), "{}", error.detail);
    }

    #[test]
    fn golden_encoding_of_a_retention_record() {
        let record = Record {
            lsn: Lsn(1),
            entry: Entry {
                instance: InstanceId(2),
                epoch: Epoch(3),
                seq: Seq(4),
                timestamp: 5,
                origin: None,
                body: RecordBody::RetentionSet {
                    retention_duration_ns: 6,
                },
            },
        };
        let bytes = record.encode();
        // Built by hand, with the crc computed by the bitwise reference
        // below over the expected bytes (never over the encoder's output),
        // so a wrong length, field order or checksum input fails the test.
        let mut body = 1u64.to_le_bytes().to_vec();
        body.push(4); // kind
        for v in [2u64, 3, 4, 5] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        body.push(0); // no origin
        body.extend_from_slice(&6u64.to_le_bytes());
        let mut expected = vec![50, 0, 0, 0];
        expected.extend_from_slice(&reference_crc32(&body).to_le_bytes());
        expected.extend_from_slice(&body);
        assert_eq!(bytes, expected);
        // The same record, reviewed byte by byte (crc 0xebf64572 pinned, computed with Python zlib.crc32).
        assert_eq!(
            &bytes[..17],
            &[50, 0, 0, 0, 0x72, 0x45, 0xf6, 0xeb, 1, 0, 0, 0, 0, 0, 0, 0, 4],
            "length, crc, lsn and kind"
        );
    }

    /// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), one bit at a
    /// time: an implementation independent of the table-driven one the
    /// encoder uses.
    fn reference_crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &byte in bytes {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn reference_crc_matches_the_published_check_value() {
        // The CRC-32 check value of the ASCII digits 1..9.
        assert_eq!(reference_crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn every_prefix_is_truncated_and_every_flip_is_detected() {
        for record in sample_records() {
            let bytes = record.encode();
            for cut in 0..bytes.len() {
                assert!(matches!(
                    Record::decode(&bytes[..cut]),
                    Err(DecodeError::Truncated { .. }) | Err(DecodeError::Malformed(_))
                ));
            }
            for at in 8..bytes.len() {
                let mut flipped = bytes.clone();
                flipped[at] ^= 0x40;
                assert!(Record::decode(&flipped).is_err(), "flip at {at} undetected");
            }
        }
    }
}
