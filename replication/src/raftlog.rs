//! The control plane's durable Raft state: log entries, hard state and the
//! latest snapshot, in one append-only file per node.
//!
//! ```text
//! raft.log := magic "CKPTRAFT" | version u32 LE (2; 1 is read) | frame*
//! frame    := length u32 LE | crc32 u32 LE (of payload) | payload
//! payload  := postcard Frame { entries: [protobuf Entry], hard_state: protobuf?,
//!                              snapshot: protobuf? (replaces the log),
//!                              compacted: protobuf? (covers entries up to its
//!                                         index; written by version 1),
//!                              needs_snapshot_file: u64 (0, or the raft.snap
//!                                         index the entries follow; not in 1) }
//!
//! raft.snap := magic "CKPTSNAP" | version u32 LE | length u32 LE | crc32 u32 LE
//!              | protobuf Snapshot (the latest local compaction)
//! ```
//!
//! One [`RaftLog::persist`] call writes one frame and fsyncs it before
//! returning, so a power cut can tear only the last frame: on open, a bad
//! frame that runs to the end of the file (or is followed only by zeros)
//! is a torn tail and is cut off; a bad frame followed by more data is
//! corruption and the log is refused rather than silently shortened.
//!
//! The file stays bounded: the control plane compacts its log into a
//! snapshot every [`crate::control::COMPACT_ENTRIES_DEFAULT`] entries (or
//! more, with a large registry), and once the file grows past a multiple of
//! its live content it is rewritten (new file, fsync, rename, fsync of the
//! directory) as a single frame.
//!
//! A compaction's snapshot goes to a file of its own, `raft.snap`, written
//! whole the same way (temporary file, fsync, rename, fsync of the
//! directory) by [`write_snapshot`] on a thread other than the one that
//! persists the log: it is the whole registry, 3.5 MB at 50,000
//! checkpoints, and writing it in line held up the log's next appends and
//! Raft's ticks. Once it is durable the log may forget the entries it
//! covers ([`RaftLog::snapshot_written`]); until then they stay. On open the
//! newer of the log's snapshot (one installed from the leader) and
//! `raft.snap` wins, and the log's entries it covers are dropped: both are
//! of committed entries, which never change.
//!
//! A rewrite that leaves out entries because `raft.snap` covers them says
//! so in its frame (`needs_snapshot_file`), and the log is refused at open
//! when that file is missing or older: without it the node would start
//! from an empty registry with its old term and vote. Version 1 logs never
//! relied on another file; one is rewritten as version 2 when opened, and
//! an earlier ckpt-server refuses version 2 ("unsupported version") rather
//! than ignore `raft.snap`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState, Snapshot};
use serde::{Deserialize, Serialize};

use crate::control::{PersistedRaft, RaftPersist};
use crate::ReplicationError;

/// File name inside the directory.
pub const FILE_NAME: &str = "raft.log";
const MAGIC: &[u8; 8] = b"CKPTRAFT";
const VERSION: u32 = 2;
/// Frames without `needs_snapshot_file`.
const VERSION_1: u32 = 1;
/// The latest compaction's snapshot, inside the directory.
pub const SNAPSHOT_FILE_NAME: &str = "raft.snap";
const SNAPSHOT_TMP_NAME: &str = "raft.snap.tmp";
const SNAPSHOT_MAGIC: &[u8; 8] = b"CKPTSNAP";
const SNAPSHOT_VERSION: u32 = 1;
const SNAPSHOT_HEADER_BYTES: usize = 20;
const HEADER_BYTES: usize = 12;
const FRAME_HEADER_BYTES: usize = 8;
/// Largest frame accepted (a snapshot of a very large registry).
pub const FRAME_BYTES_MAX: usize = 256 << 20;
/// The file is rewritten once it is larger than this and than
/// [`REWRITE_FACTOR`] times its content at the last rewrite.
pub const REWRITE_BYTES_MIN_DEFAULT: u64 = 4 << 20;
const REWRITE_FACTOR: u64 = 4;

#[derive(Serialize, Deserialize, Default)]
struct Frame {
    entries: Vec<serde_bytes::ByteBuf>,
    hard_state: Option<serde_bytes::ByteBuf>,
    snapshot: Option<serde_bytes::ByteBuf>,
    compacted: Option<serde_bytes::ByteBuf>,
    /// The entries that follow rely on `raft.snap` at this index or newer
    /// (0: on no file).
    needs_snapshot_file: u64,
}

/// A frame of a version 1 log.
#[derive(Serialize, Deserialize, Default)]
struct FrameV1 {
    entries: Vec<serde_bytes::ByteBuf>,
    hard_state: Option<serde_bytes::ByteBuf>,
    snapshot: Option<serde_bytes::ByteBuf>,
    compacted: Option<serde_bytes::ByteBuf>,
}

impl From<FrameV1> for Frame {
    fn from(v1: FrameV1) -> Frame {
        Frame {
            entries: v1.entries,
            hard_state: v1.hard_state,
            snapshot: v1.snapshot,
            compacted: v1.compacted,
            needs_snapshot_file: 0,
        }
    }
}

/// The open log (see the module docs).
pub struct RaftLog {
    path: PathBuf,
    file: File,
    file_bytes: u64,
    rewrite_bytes_min: u64,
    last_rewrite_bytes: u64,
    model: PersistedRaft,
    /// The index of the snapshot in `raft.snap` (0: none): a rewrite need
    /// not carry a snapshot that old.
    file_snapshot_index: u64,
}

fn io_error(path: &Path, what: &str, e: impl std::fmt::Display) -> ReplicationError {
    ReplicationError::RaftLog {
        path: path.to_path_buf(),
        detail: format!("{what}: {e}"),
    }
}

fn encode<M: protobuf::Message>(m: &M) -> serde_bytes::ByteBuf {
    serde_bytes::ByteBuf::from(
        m.write_to_bytes()
            .expect("raft protobuf messages always encode"),
    )
}

fn sync_dir(dir: &Path) -> Result<(), ReplicationError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, "fsync of the directory", e))
}

impl RaftLog {
    /// Opens (or creates) the log in `dir` and reads it back.
    ///
    /// # Errors
    /// IO failures; a bad magic or version; a corrupt frame that is not the
    /// file's torn tail.
    pub fn open(dir: &Path) -> Result<(RaftLog, PersistedRaft), ReplicationError> {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, "create directory", e))?;
        let path = dir.join(FILE_NAME);
        if !path.exists() {
            write_atomically(dir, &path, None)?;
        }
        let mut bytes = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| io_error(&path, "read", e))?;
        if bytes.len() < HEADER_BYTES || &bytes[..8] != MAGIC {
            return Err(io_error(&path, "open", "not a ckpt raft log (bad magic)"));
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != VERSION && version != VERSION_1 {
            return Err(io_error(
                &path,
                "open",
                format!("unsupported version {version}"),
            ));
        }
        let mut model = PersistedRaft::default();
        let mut needs_snapshot_file = 0;
        let mut pos = HEADER_BYTES;
        let good_end = loop {
            if pos == bytes.len() {
                break pos;
            }
            match read_frame(&bytes, pos) {
                FrameRead::Good(payload, next) => {
                    let frame: Result<Frame, _> = if version == VERSION_1 {
                        postcard::from_bytes::<FrameV1>(payload).map(Frame::from)
                    } else {
                        postcard::from_bytes(payload)
                    };
                    let frame = frame.map_err(|e| {
                        io_error(
                            &path,
                            &format!("frame at byte {pos}"),
                            format!("checksummed but undecodable: {e}"),
                        )
                    })?;
                    needs_snapshot_file = needs_snapshot_file.max(frame.needs_snapshot_file);
                    apply_frame(&mut model, &frame)
                        .map_err(|e| io_error(&path, &format!("frame at byte {pos}"), e))?;
                    pos = next;
                }
                FrameRead::TornTail => {
                    tracing::warn!(path = %path.display(), offset = pos, dropped_bytes = bytes.len() - pos, "torn raft log tail dropped");
                    break pos;
                }
                FrameRead::Corrupt(why) => {
                    return Err(io_error(
                        &path,
                        &format!("frame at byte {pos}"),
                        format!("{why}, and data follows it: corruption inside the log, refusing to drop it"),
                    ));
                }
            }
        };
        let file_snapshot = read_snapshot(dir)?;
        let file_snapshot_index = file_snapshot
            .as_ref()
            .map_or(0, |snap| snap.get_metadata().index);
        if let Some(snap) = &file_snapshot {
            merge_snapshot(&mut model, snap);
        }
        let covered = model
            .snapshot
            .as_ref()
            .map_or(0, |snap| snap.get_metadata().index);
        if covered < needs_snapshot_file {
            return Err(io_error(
                &path,
                "open",
                format!(
                    "the log relies on {SNAPSHOT_FILE_NAME} at index {needs_snapshot_file} or later for the entries before its own, and {}: refusing to start without them (restore the file, or replace the node: docs/replication.md)",
                    match &file_snapshot {
                        None => "that file is missing".to_string(),
                        Some(_) => format!("that file is at index {file_snapshot_index}"),
                    }
                ),
            ));
        }
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| io_error(&path, "open for append", e))?;
        if good_end < bytes.len() {
            file.set_len(good_end as u64)
                .and_then(|_| file.sync_all())
                .map_err(|e| io_error(&path, "cut the torn tail", e))?;
        }
        let mut log = RaftLog {
            path,
            file,
            file_bytes: good_end as u64,
            rewrite_bytes_min: REWRITE_BYTES_MIN_DEFAULT,
            last_rewrite_bytes: good_end as u64,
            model: model.clone(),
            file_snapshot_index,
        };
        // Frames are appended in the current version only.
        if version == VERSION_1 {
            log.rewrite()?;
        }
        Ok((log, model))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Current file size in bytes.
    pub fn file_bytes(&self) -> u64 {
        self.file_bytes
    }

    /// Lower bound for rewriting the file (tests use small values).
    pub fn set_rewrite_bytes_min(&mut self, bytes: u64) {
        self.rewrite_bytes_min = bytes;
    }

    /// Appends one frame and fsyncs it; rewrites the file when it has
    /// grown well past its content. Durable when this returns `Ok`.
    ///
    /// # Errors
    /// IO failures. After a failed write or fsync the log must not be used
    /// again (the node stops): what is on disk is unknown.
    pub fn persist(&mut self, p: &RaftPersist) -> Result<(), ReplicationError> {
        if p.is_empty() {
            return Ok(());
        }
        let frame = Frame {
            entries: p.entries.iter().map(encode).collect(),
            hard_state: p.hard_state.as_ref().map(encode),
            snapshot: p.snapshot.as_ref().map(encode),
            compacted: None,
            needs_snapshot_file: 0,
        };
        apply_frame(&mut self.model, &frame).map_err(|e| io_error(&self.path, "persist", e))?;
        let bytes = frame_bytes(&frame)?;
        self.file
            .write_all(&bytes)
            .and_then(|_| self.file.sync_data())
            .map_err(|e| io_error(&self.path, "append", e))?;
        self.file_bytes += bytes.len() as u64;
        if self.file_bytes > self.rewrite_bytes_min
            && self.file_bytes > self.last_rewrite_bytes.saturating_mul(REWRITE_FACTOR)
        {
            self.rewrite()?;
        }
        Ok(())
    }

    /// [`write_snapshot`] made `snap` durable in `raft.snap`: the entries
    /// it covers need not be carried by the next rewrite. Snapshots must be
    /// written in ascending order (the control plane carries out one
    /// compaction at a time).
    pub fn snapshot_written(&mut self, snap: &Snapshot) {
        let index = snap.get_metadata().index;
        if index < self.file_snapshot_index {
            tracing::error!(
                index,
                previous = self.file_snapshot_index,
                "raft snapshot file went backwards"
            );
            return;
        }
        self.file_snapshot_index = index;
        merge_snapshot(&mut self.model, snap);
    }

    /// Replaces the file by one frame holding its current content (a
    /// snapshot only if it is newer than `raft.snap`'s).
    fn rewrite(&mut self) -> Result<(), ReplicationError> {
        let file_snapshot_index = self.file_snapshot_index;
        let snapshot = self
            .model
            .snapshot
            .as_ref()
            .filter(|snap| snap.get_metadata().index > file_snapshot_index)
            .map(encode);
        let frame = Frame {
            entries: self.model.entries.iter().map(encode).collect(),
            hard_state: Some(encode(&self.model.hard_state)),
            // Without a snapshot of its own, what the entries follow is
            // raft.snap's.
            needs_snapshot_file: if snapshot.is_none() {
                file_snapshot_index
            } else {
                0
            },
            snapshot,
            compacted: None,
        };
        let dir = self
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let written = write_atomically(&dir, &self.path, Some(&frame))?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| io_error(&self.path, "reopen after rewrite", e))?;
        self.file_bytes = written;
        self.last_rewrite_bytes = written;
        tracing::debug!(path = %self.path.display(), bytes = written, "raft log rewritten");
        Ok(())
    }
}

/// Applies `p` to an in-memory model of the log exactly as
/// [`RaftLog::persist`] does before writing it: the simulator's durable
/// Raft state.
#[cfg(test)]
pub(crate) fn apply_persist(model: &mut PersistedRaft, p: &RaftPersist) -> Result<(), String> {
    let frame = Frame {
        entries: p.entries.iter().map(encode).collect(),
        hard_state: p.hard_state.as_ref().map(encode),
        snapshot: p.snapshot.as_ref().map(encode),
        compacted: None,
        needs_snapshot_file: 0,
    };
    apply_frame(model, &frame)
}

/// A compaction's snapshot, durable: `model` takes it if it is newer than
/// its own and drops the entries it covers. What [`RaftLog::open`] does
/// with `raft.snap`, and the simulator's durable Raft state with a
/// snapshot written.
pub(crate) fn merge_snapshot(model: &mut PersistedRaft, snap: &Snapshot) {
    let index = snap.get_metadata().index;
    if model
        .snapshot
        .as_ref()
        .is_some_and(|own| own.get_metadata().index >= index)
    {
        return;
    }
    model.entries.retain(|e| e.index > index);
    model.snapshot = Some(snap.clone());
}

/// Makes `snap` durable as `dir`'s `raft.snap` (temporary file, fsync,
/// rename, fsync of the directory): a power cut leaves the old file or the
/// new one. Returns the bytes written. Call it off the thread that
/// persists the log; then [`RaftLog::snapshot_written`].
///
/// # Errors
/// IO failures; a snapshot larger than [`FRAME_BYTES_MAX`].
pub fn write_snapshot(dir: &Path, snap: &Snapshot) -> Result<u64, ReplicationError> {
    let payload = snap
        .write_to_bytes()
        .expect("raft protobuf messages always encode");
    let path = dir.join(SNAPSHOT_FILE_NAME);
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|len| *len as usize <= FRAME_BYTES_MAX)
        .ok_or_else(|| {
            io_error(
                &path,
                "write",
                format!(
                    "snapshot of {} bytes exceeds {FRAME_BYTES_MAX}",
                    payload.len()
                ),
            )
        })?;
    let mut bytes = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + payload.len());
    bytes.extend_from_slice(SNAPSHOT_MAGIC);
    bytes.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
    let tmp = dir.join(SNAPSHOT_TMP_NAME);
    let mut f = File::create(&tmp).map_err(|e| io_error(&tmp, "create", e))?;
    f.write_all(&bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| io_error(&tmp, "write", e))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(|e| io_error(&path, "rename", e))?;
    sync_dir(dir)?;
    Ok(bytes.len() as u64)
}

/// `raft.snap`, if there is one; a leftover temporary file (a crash while
/// writing) is removed. A damaged file is refused, not ignored: the log may
/// no longer hold the entries it covers.
fn read_snapshot(dir: &Path) -> Result<Option<Snapshot>, ReplicationError> {
    let tmp = dir.join(SNAPSHOT_TMP_NAME);
    if tmp.exists() {
        std::fs::remove_file(&tmp).map_err(|e| io_error(&tmp, "remove", e))?;
    }
    let path = dir.join(SNAPSHOT_FILE_NAME);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(&path, "read", e)),
    };
    let damaged = |why: String| {
        io_error(
            &path,
            "open",
            format!("{why}: the snapshot file is damaged, and the log may no longer hold the entries it covers; refusing to start (replace the node: docs/replication.md)"),
        )
    };
    if bytes.len() < SNAPSHOT_HEADER_BYTES || &bytes[..8] != SNAPSHOT_MAGIC {
        return Err(damaged("not a ckpt raft snapshot (bad magic)".into()));
    }
    let field = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let version = field(8);
    if version != SNAPSHOT_VERSION {
        return Err(damaged(format!("unsupported version {version}")));
    }
    let len = field(12) as usize;
    let payload = &bytes[SNAPSHOT_HEADER_BYTES..];
    if payload.len() != len {
        return Err(damaged(format!(
            "{} bytes after the header, the header says {len}",
            payload.len()
        )));
    }
    if crc32fast::hash(payload) != field(16) {
        return Err(damaged("checksum mismatch".into()));
    }
    Snapshot::parse_from_bytes(payload)
        .map(Some)
        .map_err(|e| damaged(format!("checksummed but undecodable: {e}")))
}

fn frame_bytes<F: Serialize>(frame: &F) -> Result<Vec<u8>, ReplicationError> {
    let payload = postcard::to_allocvec(frame).expect("a raft log frame always serializes");
    if payload.len() > FRAME_BYTES_MAX {
        return Err(ReplicationError::RaftLog {
            path: PathBuf::new(),
            detail: format!("frame of {} bytes exceeds {FRAME_BYTES_MAX}", payload.len()),
        });
    }
    let mut bytes = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
    Ok(bytes)
}

/// Writes header (+ frame) to a temporary file, fsyncs, renames over
/// `path`, fsyncs the directory. Returns the file's size.
fn write_atomically(
    dir: &Path,
    path: &Path,
    frame: Option<&Frame>,
) -> Result<u64, ReplicationError> {
    let tmp = path.with_extension("tmp");
    let mut bytes = Vec::new();
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    if let Some(frame) = frame {
        bytes.extend_from_slice(&frame_bytes(frame)?);
    }
    let mut f = File::create(&tmp).map_err(|e| io_error(&tmp, "create", e))?;
    f.write_all(&bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| io_error(&tmp, "write", e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| io_error(path, "rename", e))?;
    sync_dir(dir)?;
    Ok(bytes.len() as u64)
}

enum FrameRead<'a> {
    Good(&'a [u8], usize),
    TornTail,
    Corrupt(String),
}

fn read_frame(bytes: &[u8], pos: usize) -> FrameRead<'_> {
    let rest = &bytes[pos..];
    let zeros_to_end = rest.iter().all(|b| *b == 0);
    if rest.len() < FRAME_HEADER_BYTES {
        return FrameRead::TornTail;
    }
    let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
    if len > FRAME_BYTES_MAX {
        return if zeros_to_end {
            FrameRead::TornTail
        } else {
            // A length past the bound cannot have been written by us; if it
            // also runs past the end it is the torn last frame.
            if FRAME_HEADER_BYTES + len > rest.len() {
                FrameRead::TornTail
            } else {
                FrameRead::Corrupt(format!("length {len} over the bound {FRAME_BYTES_MAX}"))
            }
        };
    }
    let end = FRAME_HEADER_BYTES + len;
    if end > rest.len() {
        return FrameRead::TornTail;
    }
    let payload = &rest[FRAME_HEADER_BYTES..end];
    if len == 0 || crc32fast::hash(payload) != crc {
        if zeros_to_end || end == rest.len() {
            return FrameRead::TornTail;
        }
        return FrameRead::Corrupt("checksum mismatch".into());
    }
    FrameRead::Good(payload, pos + end)
}

fn apply_frame(model: &mut PersistedRaft, frame: &Frame) -> Result<(), String> {
    if let Some(snap) = &frame.snapshot {
        let snap = Snapshot::parse_from_bytes(snap).map_err(|e| format!("snapshot: {e}"))?;
        model.entries.clear();
        model.snapshot = Some(snap);
    }
    if let Some(snap) = &frame.compacted {
        let snap =
            Snapshot::parse_from_bytes(snap).map_err(|e| format!("compaction snapshot: {e}"))?;
        let index = snap.get_metadata().index;
        model.entries.retain(|e| e.index > index);
        model.snapshot = Some(snap);
    }
    if let Some(first) = frame.entries.first() {
        let first = Entry::parse_from_bytes(first).map_err(|e| format!("entry: {e}"))?;
        // Raft overwrites a conflicting suffix: drop it.
        model.entries.retain(|e| e.index < first.index);
        for bytes in &frame.entries {
            let e = Entry::parse_from_bytes(bytes).map_err(|e| format!("entry: {e}"))?;
            if let Some(last) = model.entries.last() {
                if e.index != last.index + 1 {
                    return Err(format!(
                        "entry {} does not follow entry {}",
                        e.index, last.index
                    ));
                }
            }
            model.entries.push(e);
        }
    }
    if let Some(hs) = &frame.hard_state {
        model.hard_state =
            HardState::parse_from_bytes(hs).map_err(|e| format!("hard state: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        let mut e = Entry::default();
        e.set_index(index);
        e.set_term(term);
        e.set_data(data.to_vec().into());
        e
    }

    fn hs(term: u64, commit: u64) -> HardState {
        let mut h = HardState::default();
        h.set_term(term);
        h.set_vote(1);
        h.set_commit(commit);
        h
    }

    /// Persists one entry at a time from `from` until the file is
    /// rewritten; returns the last entry's index.
    fn persist_until_rewritten(log: &mut RaftLog, from: u64, term: u64) -> u64 {
        for last in from..from + 10_000 {
            let before = log.file_bytes();
            persist_entries(log, last, last, term);
            if log.file_bytes() < before {
                return last;
            }
        }
        panic!("the log was never rewritten");
    }

    fn indices(p: &PersistedRaft) -> Vec<u64> {
        p.entries.iter().map(|e| e.index).collect()
    }

    fn snapshot(index: u64, term: u64, data: &[u8]) -> Snapshot {
        let mut snap = Snapshot::default();
        snap.set_data(data.to_vec().into());
        snap.mut_metadata().index = index;
        snap.mut_metadata().term = term;
        snap
    }

    fn persist_entries(log: &mut RaftLog, from: u64, to: u64, term: u64) {
        let p = RaftPersist {
            entries: (from..=to)
                .map(|i| entry(i, term, &i.to_le_bytes()))
                .collect(),
            hard_state: Some(hs(term, to)),
            ..Default::default()
        };
        log.persist(&p).unwrap();
    }

    #[test]
    fn persisted_state_reads_back_with_overwrites_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, p) = RaftLog::open(dir.path()).unwrap();
            assert_eq!(p, PersistedRaft::default());
            persist_entries(&mut log, 1, 5, 1);
            // A new leader overwrites 4..: the old 4 and 5 go.
            persist_entries(&mut log, 4, 6, 2);
            let snap = snapshot(3, 1, b"state");
            write_snapshot(dir.path(), &snap).unwrap();
            log.snapshot_written(&snap);
        }
        let (_, p) = RaftLog::open(dir.path()).unwrap();
        assert_eq!(
            p.entries
                .iter()
                .map(|e| (e.index, e.term))
                .collect::<Vec<_>>(),
            vec![(4, 2), (5, 2), (6, 2)]
        );
        assert_eq!(p.hard_state, hs(2, 6));
        let snap = p.snapshot.unwrap();
        assert_eq!(
            (snap.get_metadata().index, snap.get_data()),
            (3, &b"state"[..])
        );
    }

    #[test]
    fn installed_snapshot_replaces_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = RaftLog::open(dir.path()).unwrap();
        persist_entries(&mut log, 1, 5, 1);
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 3;
        log.persist(&RaftPersist {
            snapshot: Some(snap),
            ..Default::default()
        })
        .unwrap();
        drop(log);
        let (_, p) = RaftLog::open(dir.path()).unwrap();
        assert!(p.entries.is_empty());
        assert_eq!(p.snapshot.unwrap().get_metadata().index, 3);
    }

    #[test]
    fn a_torn_tail_is_dropped_at_every_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = RaftLog::open(dir.path()).unwrap();
        persist_entries(&mut log, 1, 3, 1);
        let good = log.file_bytes();
        persist_entries(&mut log, 4, 6, 1);
        let full = log.file_bytes();
        drop(log);
        let path = dir.path().join(FILE_NAME);
        let bytes = std::fs::read(&path).unwrap();
        for cut in good..full {
            std::fs::write(&path, &bytes[..cut as usize]).unwrap();
            let (log, p) = RaftLog::open(dir.path()).unwrap();
            assert_eq!(p.entries.len(), 3, "cut at {cut}");
            assert_eq!(log.file_bytes(), good, "torn tail cut off at {cut}");
        }
        // A torn tail followed by zeros (file extended, data never written).
        let mut zeroed = bytes.clone();
        for b in &mut zeroed[good as usize + 3..] {
            *b = 0;
        }
        std::fs::write(&path, &zeroed).unwrap();
        let (_, p) = RaftLog::open(dir.path()).unwrap();
        assert_eq!(p.entries.len(), 3);
        // A flipped byte in the last frame: torn.
        let mut flipped = bytes.clone();
        flipped[full as usize - 2] ^= 0x40;
        std::fs::write(&path, &flipped).unwrap();
        let (mut log, p) = RaftLog::open(dir.path()).unwrap();
        assert_eq!(p.entries.len(), 3);
        // And the log goes on from there.
        persist_entries(&mut log, 4, 4, 2);
        drop(log);
        let (_, p) = RaftLog::open(dir.path()).unwrap();
        assert_eq!(p.entries.last().unwrap().term, 2);
    }

    #[test]
    fn a_corrupt_middle_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = RaftLog::open(dir.path()).unwrap();
        persist_entries(&mut log, 1, 3, 1);
        let first_end = log.file_bytes();
        persist_entries(&mut log, 4, 6, 1);
        persist_entries(&mut log, 7, 9, 1);
        drop(log);
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[first_end as usize + 12] ^= 0x01; // inside the second frame's payload
        std::fs::write(&path, &bytes).unwrap();
        let e = RaftLog::open(dir.path()).err().expect("corruption refused");
        let text = e.to_string();
        assert!(text.contains("corruption"), "{text}");
        assert!(text.contains(&format!("byte {first_end}")), "{text}");
        // Bad magic.
        std::fs::write(&path, b"NOTRAFTLOG..").unwrap();
        assert!(RaftLog::open(dir.path()).is_err());
    }

    #[test]
    fn the_file_stays_bounded_by_rewrites() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = RaftLog::open(dir.path()).unwrap();
        log.set_rewrite_bytes_min(4096);
        let mut max_bytes = 0;
        for round in 0..200u64 {
            let base = round * 10;
            persist_entries(&mut log, base + 1, base + 10, 1);
            // Compact everything but the last 10 entries.
            let snap = snapshot(base, 1, &[7u8; 100]);
            write_snapshot(dir.path(), &snap).unwrap();
            log.snapshot_written(&snap);
            max_bytes = max_bytes.max(log.file_bytes());
        }
        assert!(max_bytes < 16 * 1024, "file grew to {max_bytes}");
        drop(log);
        let (_, p) = RaftLog::open(dir.path()).unwrap();
        assert_eq!(p.entries.first().unwrap().index, 1991);
        assert_eq!(p.entries.last().unwrap().index, 2000);
        assert_eq!(p.snapshot.unwrap().get_metadata().index, 1990);
        assert_eq!(p.hard_state, hs(1, 2000));
    }

    /// A version 1 log, with a compaction as a frame of the log, still
    /// reads back, and is rewritten as version 2 (an earlier ckpt-server
    /// refuses it then rather than ignore raft.snap).
    #[test]
    fn a_version_1_log_reads_back_and_becomes_version_2() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&VERSION_1.to_le_bytes());
        let entries = FrameV1 {
            entries: (1..=6).map(|i| encode(&entry(i, 1, b"e"))).collect(),
            hard_state: Some(encode(&hs(1, 6))),
            ..Default::default()
        };
        let compacted = FrameV1 {
            compacted: Some(encode(&snapshot(4, 1, b"old"))),
            ..Default::default()
        };
        bytes.extend_from_slice(&frame_bytes(&entries).unwrap());
        bytes.extend_from_slice(&frame_bytes(&compacted).unwrap());
        std::fs::write(dir.path().join(FILE_NAME), &bytes).unwrap();
        for _ in 0..2 {
            let (log, p) = RaftLog::open(dir.path()).unwrap();
            assert_eq!(p.snapshot.as_ref().unwrap().get_data(), b"old");
            assert_eq!(indices(&p), vec![5, 6]);
            assert_eq!(p.hard_state, hs(1, 6));
            drop(log);
            let file = std::fs::read(dir.path().join(FILE_NAME)).unwrap();
            assert_eq!(file[8..12], VERSION.to_le_bytes());
        }
    }

    /// A log rewritten without the entries raft.snap covers refuses to open
    /// without that file (or with an older one): it would start from an
    /// empty registry with its old term and vote.
    #[test]
    fn a_log_that_relies_on_the_snapshot_file_is_refused_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = RaftLog::open(dir.path()).unwrap();
        log.set_rewrite_bytes_min(0);
        persist_entries(&mut log, 1, 8, 1);
        let older = snapshot(5, 1, b"five");
        write_snapshot(dir.path(), &older).unwrap();
        let path = dir.path().join(SNAPSHOT_FILE_NAME);
        let older_bytes = std::fs::read(&path).unwrap();
        let snap = snapshot(8, 1, b"eight");
        write_snapshot(dir.path(), &snap).unwrap();
        log.snapshot_written(&snap);
        let last = persist_until_rewritten(&mut log, 9, 1);
        drop(log);
        let good = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let err = RaftLog::open(dir.path())
            .err()
            .expect("opened without raft.snap");
        assert!(err.to_string().contains("that file is missing"), "{err}");
        std::fs::write(&path, &older_bytes).unwrap();
        let err = RaftLog::open(dir.path())
            .err()
            .expect("opened with an older raft.snap");
        assert!(err.to_string().contains("at index 5"), "{err}");
        std::fs::write(&path, &good).unwrap();
        let (_, p) = RaftLog::open(dir.path()).unwrap();
        assert_eq!(p.snapshot.as_ref().unwrap().get_data(), b"eight");
        assert_eq!(indices(&p), (9..=last).collect::<Vec<_>>());
    }

    /// Until the log is told that `raft.snap` is durable it keeps every
    /// entry; a crash between the two, or while writing the file, loses
    /// nothing.
    #[test]
    fn a_snapshot_file_covers_the_log_only_once_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = RaftLog::open(dir.path()).unwrap();
        persist_entries(&mut log, 1, 8, 1);
        // A crash while writing the file: a temporary file, no raft.snap.
        std::fs::write(dir.path().join(SNAPSHOT_TMP_NAME), b"half a snap").unwrap();
        drop(log);
        let (log, p) = RaftLog::open(dir.path()).unwrap();
        assert!(p.snapshot.is_none());
        assert_eq!(p.entries.len(), 8);
        assert!(!dir.path().join(SNAPSHOT_TMP_NAME).exists());
        // Written, and the process dies before the log is told: the file
        // alone covers entries 1..=5 at the next open.
        let snap = snapshot(5, 1, b"five");
        write_snapshot(dir.path(), &snap).unwrap();
        drop(log);
        let (mut log, p) = RaftLog::open(dir.path()).unwrap();
        log.set_rewrite_bytes_min(0);
        assert_eq!(p.snapshot.as_ref().unwrap().get_data(), b"five");
        assert_eq!(indices(&p), vec![6, 7, 8]);
        // Told, and the file grown until it is rewritten: the log no
        // longer carries entries 1..=5 nor a copy of the snapshot.
        log.snapshot_written(&snap);
        let last = persist_until_rewritten(&mut log, 9, 1);
        let file = std::fs::read(dir.path().join(FILE_NAME)).unwrap();
        assert!(!file.windows(4).any(|w| w == b"five"));
        drop(log);
        let (_, p) = RaftLog::open(dir.path()).unwrap();
        assert_eq!(p.snapshot.as_ref().unwrap().get_metadata().index, 5);
        assert_eq!(indices(&p), (6..=last).collect::<Vec<_>>());
        // The log alone no longer holds entries 1..=5, and says so.
        std::fs::remove_file(dir.path().join(SNAPSHOT_FILE_NAME)).unwrap();
        let err = RaftLog::open(dir.path())
            .err()
            .expect("opened without raft.snap");
        assert!(err.to_string().contains("at index 5 or later"), "{err}");
    }

    /// A snapshot installed from the leader after the last compaction is
    /// newer than `raft.snap` and wins at the next open, also once the log
    /// is rewritten.
    #[test]
    fn an_installed_snapshot_newer_than_the_file_wins() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = RaftLog::open(dir.path()).unwrap();
        log.set_rewrite_bytes_min(0);
        persist_entries(&mut log, 1, 4, 1);
        let compacted = snapshot(3, 1, b"compacted");
        write_snapshot(dir.path(), &compacted).unwrap();
        log.snapshot_written(&compacted);
        log.persist(&RaftPersist {
            snapshot: Some(snapshot(20, 2, b"installed")),
            ..Default::default()
        })
        .unwrap();
        let last = persist_until_rewritten(&mut log, 21, 2);
        drop(log);
        let (_, p) = RaftLog::open(dir.path()).unwrap();
        assert_eq!(p.snapshot.as_ref().unwrap().get_data(), b"installed");
        assert_eq!(indices(&p), (21..=last).collect::<Vec<_>>());
    }

    /// A damaged `raft.snap` stops the node with an error naming the file,
    /// at every kind of damage.
    #[test]
    fn a_damaged_snapshot_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = RaftLog::open(dir.path()).unwrap();
        persist_entries(&mut log, 1, 4, 1);
        let snap = snapshot(3, 1, b"compacted state");
        write_snapshot(dir.path(), &snap).unwrap();
        log.snapshot_written(&snap);
        drop(log);
        let path = dir.path().join(SNAPSHOT_FILE_NAME);
        let good = std::fs::read(&path).unwrap();
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        for (what, bytes) in [
            ("checksum", flipped),
            ("magic", bad_magic),
            ("after the header", good[..good.len() - 1].to_vec()),
            ("magic", good[..10].to_vec()),
        ] {
            std::fs::write(&path, &bytes).unwrap();
            let err = match RaftLog::open(dir.path()) {
                Ok(_) => panic!("a snapshot file with a bad {what} was accepted"),
                Err(e) => e.to_string(),
            };
            assert!(err.contains(SNAPSHOT_FILE_NAME), "{err}");
            assert!(err.contains(what), "{what}: {err}");
        }
        std::fs::write(&path, &good).unwrap();
        let (_, p) = RaftLog::open(dir.path()).unwrap();
        assert_eq!(p.snapshot.unwrap().get_data(), b"compacted state");
    }
}
