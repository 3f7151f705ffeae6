//! The RocksDB side of the store: a `meta` column family and a fixed set of
//! data column families `cf-0` … `cf-<n-1>` that checkpoint instances are
//! spread over (instance id modulo n, recorded in the instance's creation
//! record, so n may change between runs without moving anything).
//!
//! Layout of `meta` (integers big-endian in keys so they sort, little-endian
//! in values):
//!
//! ```text
//! key                                   value
//! "A"                                   applied lsn u64 | next instance id u64
//! "N" name                              instance u64
//! "C" instance(8)                       InstanceMeta (see `encode_instance`)
//! "S" instance(8) section id            size u64 | expiration i64 | state u8 | last update i64
//! "E" expiration(8, sign-flipped) instance(8) section id     (empty)
//! ```
//!
//! A data column family holds sections' data in chunks of [`CHUNK_BYTES`]:
//! key = instance u64 | id length u16 | id | chunk index u32 (big-endian).
//! A missing chunk, or bytes past a stored chunk's end, read as zeros, so
//! growth by a write far past the end stores nothing for the gap. No chunk
//! lies beyond a section's size. Destroying an instance range-deletes its
//! key prefix in the same batch as its metadata.
//!
//! Why not one column family per checkpoint (DESIGN.md §3): measured at
//! 10,000 checkpoints with RocksDB 11.8, every column family creation and
//! every memtable switch runs a loop over all column families
//! (`InstallSuperVersionAndScheduleWork`), and every creation batch and
//! every open rewrites and re-parses an OPTIONS file that grows by ~5 KiB
//! per column family (123 MiB at 12k), building a cache per column family
//! to verify it. Even with a pool refilled in batches off the request path,
//! creation p99 was 1.4–2.2 s, reopen 6–10 s and peak RSS 2 GiB. A fixed
//! set of column families keyed by instance keeps every one of those costs
//! flat; see docs/storage.md.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

use ckpt_proto::{
    CheckpointName, CkptError, CkptResult, CreationAttributes, CreationFlags, ErrorCode, SectionId,
    SectionState,
};
use librocksdb_sys as ffi;
use rocksdb::{
    AsColumnFamilyRef, AsRawPtr, ColumnFamilyDescriptor, FlushOptions, Options, ReadOptions,
    WriteBatch, WriteBufferManager, WriteOptions, DB,
};

use crate::read_cache::ReadCache;
use crate::state::{Committed, Effect, InstanceMeta, SectionMeta};
use crate::wal::record::{Epoch, InstanceId, Lsn, Origin, Seq};

/// Bytes of section data per RocksDB value.
pub const CHUNK_BYTES: u64 = 64 * 1024;

/// Most entries the maps of a loaded store reserve room for up front.
const LOAD_RESERVE_MAX: u64 = 1 << 24;

/// Reads of up to this many chunks look each one up; longer ones scan.
const POINT_READ_CHUNKS_MAX: u64 = 8;

/// Dropping more chunks than this from one section uses one range deletion
/// instead of a delete per chunk: a sparse section of maxSectionSize may
/// span 2^24 chunk indexes, nearly all never stored, and a delete per index
/// would build a batch of gigabytes. Below it, point deletes are cheaper for
/// later reads than a range tombstone.
const RANGE_DELETE_CHUNKS_MIN: u64 = 16;

const META_CF: &str = "meta";
/// Key layout of the RocksDB side (stored under `L` in `meta`).
pub const LAYOUT_VERSION: u32 = 2;

/// Applied origins kept per client session: the last this many request
/// numbers. Sessions idle for [`SESSION_IDLE_NS`] are forgotten whole.
/// A client retries only its outstanding requests, far fewer than this.
pub const ORIGINS_PER_SESSION: u64 = 4096;

/// A session that applied nothing for this long (1 h) is forgotten.
pub const SESSION_IDLE_NS: i64 = 3_600_000_000_000;

/// A session's last-applied time (`Q`) is rewritten at most this often
/// (60 s), not once per write: a put per write in the meta memtable costs
/// every write a skip-list insert. [`Db::forget_idle_sessions`] allows for
/// it, so a session is never forgotten before it was idle for the full
/// [`SESSION_IDLE_NS`].
pub const SESSION_MARK_NS: i64 = 60_000_000_000;

/// Origins below a session's bound are swept once the bound has moved this
/// many requests (and at a session's first write after the store opens),
/// not by a range tombstone per write: tombstones pile up in the memtable
/// and every read of the meta column family pays for them. A session holds
/// at most [`ORIGINS_PER_SESSION`] + this many origins.
pub const ORIGIN_SWEEP_STEP: u64 = 64;
const CF_PREFIX: &str = "cf-";

/// How RocksDB's own WAL is used (DESIGN.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RocksWalMode {
    /// (a) RocksDB's WAL on, never synced by RocksDB: a process crash
    /// recovers from it; before our WAL is truncated, `flush_wal(sync)`
    /// makes RocksDB's copy durable.
    Unsynced,
    /// (b) RocksDB's WAL off, atomic flush across column families: before
    /// our WAL is truncated every dirty column family is flushed together.
    Disabled,
}

/// RocksDB tuning, with bounds.
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// RocksDB WAL strategy.
    pub wal_mode: RocksWalMode,
    /// Budget shared by all memtables.
    pub write_buffer_bytes_total: usize,
    /// Memtable size of one column family.
    pub write_buffer_bytes_per_cf: usize,
    /// Most files RocksDB keeps open.
    pub open_files_max: i32,
    /// Data column families new checkpoints are spread over.
    pub data_column_families: u32,
    /// Bytes of whole small sections kept for reads
    /// ([`crate::read_cache`]); 0 turns the cache off.
    pub read_cache_bytes: u64,
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            wal_mode: RocksWalMode::Disabled,
            write_buffer_bytes_total: 256 * 1024 * 1024,
            write_buffer_bytes_per_cf: 64 * 1024 * 1024,
            open_files_max: 1024,
            data_column_families: 16,
            read_cache_bytes: 64 * 1024 * 1024,
        }
    }
}

/// A column family handle we can hand to rust-rocksdb's `_cf` methods.
#[derive(Clone, Copy)]
struct CfPtr {
    raw: *mut ffi::rocksdb_column_family_handle_t,
}

// SAFETY: RocksDB column family handles are thread-safe; the pointers come
// from the DB's own handle map and stay valid while the DB is open, which
// outlives every `Db` method call.
unsafe impl Send for CfPtr {}
unsafe impl Sync for CfPtr {}

impl AsColumnFamilyRef for CfPtr {
    fn inner(&self) -> *mut ffi::rocksdb_column_family_handle_t {
        self.raw
    }
}

/// Metadata read at open.
pub struct Loaded {
    /// Last lsn applied to RocksDB.
    pub applied: Lsn,
    /// Next instance id to hand out.
    pub next_instance: u64,
    /// Live names.
    pub names: HashMap<CheckpointName, InstanceId>,
    /// Every instance (named or unlinked).
    pub instances: HashMap<InstanceId, InstanceMeta>,
}

/// RocksDB with the checkpoint layout.
pub struct Db {
    /// Data column families by slot (`cf-<slot>`); None for a gap.
    slots: Vec<Option<CfPtr>>,
    meta: CfPtr,
    options: DbOptions,
    db: DB,
    /// Per session, the bookkeeping this process last wrote for it.
    sessions: Mutex<HashMap<u64, SessionMark>>,
    /// Opened read-only ([`Db::open_read_only`]): batches are applied to
    /// this in-memory layer over RocksDB, never to RocksDB, and every read
    /// sees the layer first.
    memory: Option<Mutex<MemLayer>>,
    /// Whole small sections for reads; every change is announced to it.
    pub(crate) read_cache: ReadCache,
}

/// A column family, by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Family {
    Meta,
    Data(u32),
}

/// Where a batch's changes go: a RocksDB `WriteBatch`, or the in-memory
/// layer of a read-only open. [`Db::apply_with`] builds both with the same
/// code, so a replay in memory means exactly what it means in RocksDB.
trait Batch {
    fn put(&mut self, family: Family, key: &[u8], value: &[u8]);
    fn delete(&mut self, family: Family, key: &[u8]);
    fn delete_range(&mut self, family: Family, from: &[u8], to: &[u8]);
}

/// A RocksDB `WriteBatch` addressed by [`Family`].
struct RocksBatch<'a> {
    db: &'a Db,
    batch: WriteBatch,
}

impl RocksBatch<'_> {
    fn cf(&self, family: Family) -> CfPtr {
        match family {
            Family::Meta => self.db.meta,
            // Every data family was resolved with `Db::cf` (which fails for
            // a missing one) before anything is put into it.
            Family::Data(slot) => self.db.slots[slot as usize].expect("a checked column family"),
        }
    }
}

impl Batch for RocksBatch<'_> {
    fn put(&mut self, family: Family, key: &[u8], value: &[u8]) {
        let cf = self.cf(family);
        self.batch.put_cf(&cf, key, value);
    }
    fn delete(&mut self, family: Family, key: &[u8]) {
        let cf = self.cf(family);
        self.batch.delete_cf(&cf, key);
    }
    fn delete_range(&mut self, family: Family, from: &[u8], to: &[u8]) {
        let cf = self.cf(family);
        self.batch.delete_range_cf(&cf, from, to);
    }
}

/// One change of a batch bound for the in-memory layer.
enum MemOp {
    Put(Family, Vec<u8>, Vec<u8>),
    Delete(Family, Vec<u8>),
    DeleteRange(Family, Vec<u8>, Vec<u8>),
}

/// A batch bound for the in-memory layer: applied whole at its end, as a
/// `WriteBatch` is.
#[derive(Default)]
struct MemBatch(Vec<MemOp>);

impl Batch for MemBatch {
    fn put(&mut self, family: Family, key: &[u8], value: &[u8]) {
        self.0
            .push(MemOp::Put(family, key.to_vec(), value.to_vec()));
    }
    fn delete(&mut self, family: Family, key: &[u8]) {
        self.0.push(MemOp::Delete(family, key.to_vec()));
    }
    fn delete_range(&mut self, family: Family, from: &[u8], to: &[u8]) {
        self.0
            .push(MemOp::DeleteRange(family, from.to_vec(), to.to_vec()));
    }
}

/// What a read-only store's replay changed, over RocksDB's state: keys
/// written or deleted (`None`), and ranges deleted (keys written after a
/// range deletion are in `entries`, which is consulted first).
#[derive(Default)]
struct MemLayer {
    entries: BTreeMap<(Family, Vec<u8>), Option<Vec<u8>>>,
    ranges: Vec<(Family, Vec<u8>, Vec<u8>)>,
}

impl MemLayer {
    fn apply(&mut self, batch: MemBatch) {
        for op in batch.0 {
            match op {
                MemOp::Put(family, key, value) => {
                    self.entries.insert((family, key), Some(value));
                }
                MemOp::Delete(family, key) => {
                    self.entries.insert((family, key), None);
                }
                MemOp::DeleteRange(family, from, to) => {
                    if from >= to {
                        continue;
                    }
                    let doomed: Vec<_> = self
                        .entries
                        .range((family, from.clone())..(family, to.clone()))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for key in doomed {
                        self.entries.remove(&key);
                    }
                    self.ranges.push((family, from, to));
                }
            }
        }
    }

    /// `Some(value or None)` when the layer decides a key, `None` when
    /// RocksDB does.
    fn get(&self, family: Family, key: &[u8]) -> Option<Option<Vec<u8>>> {
        if let Some(value) = self.entries.get(&(family, key.to_vec())) {
            return Some(value.clone());
        }
        self.in_range(family, key).then_some(None)
    }

    fn in_range(&self, family: Family, key: &[u8]) -> bool {
        self.ranges
            .iter()
            .any(|(f, from, to)| *f == family && key >= from.as_slice() && key < to.as_slice())
    }

    /// The layer's keys in `[from, to)` of `family` in order, and the
    /// ranges it deleted there: what a scan must merge over RocksDB's.
    fn over(&self, family: Family, from: &[u8], to: &[u8]) -> MergeOver {
        let entries = if from < to {
            self.entries
                .range((family, from.to_vec())..(family, to.to_vec()))
                .map(|((_, key), value)| (key.clone(), value.clone()))
                .collect()
        } else {
            Vec::new()
        };
        MergeOver {
            entries,
            ranges: self
                .ranges
                .iter()
                .filter(|(f, _, _)| *f == family)
                .map(|(_, from, to)| (from.clone(), to.clone()))
                .collect(),
        }
    }
}

/// What a scan merges over RocksDB's keys (see [`MemLayer::over`]).
#[derive(Default)]
struct MergeOver {
    entries: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ranges: Vec<(Vec<u8>, Vec<u8>)>,
}

/// What was last written of a session's bookkeeping (not itself stored:
/// after a restart every session's first write writes both again).
#[derive(Debug, Clone, Copy)]
struct SessionMark {
    /// The time last written to its `Q` key.
    time: i64,
    /// Its origins below this request number have been swept (0: not yet).
    swept_below: u64,
    /// The highest request number of an origin of the session that RocksDB
    /// may hold: found by one seek at the session's first lookup after
    /// the open, then raised by every origin put (`Unknown` until looked
    /// up). A request above it was never applied, so [`Db::origin`]
    /// answers it without a read; a client's requests are new far more
    /// often than retried.
    stored_max: StoredMax,
}

impl SessionMark {
    const FRESH: SessionMark = SessionMark {
        time: i64::MIN,
        swept_below: 0,
        stored_max: StoredMax::Unknown,
    };
}

/// See [`SessionMark::stored_max`]. Only ever an upper bound: sweeps and
/// failed writes leave it above what is stored, never below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoredMax {
    /// Not looked up since the open.
    Unknown,
    /// RocksDB holds no origin of the session.
    None,
    /// RocksDB holds none above this request number.
    At(u64),
}

impl StoredMax {
    /// Whether `request` may have been applied (and must be read).
    fn may_hold(self, request: u64) -> bool {
        match self {
            StoredMax::Unknown => true,
            StoredMax::None => false,
            StoredMax::At(max) => request <= max,
        }
    }

    /// After an origin with `request` is put.
    fn raise(self, request: u64) -> StoredMax {
        match self {
            StoredMax::Unknown => StoredMax::Unknown,
            StoredMax::None => StoredMax::At(request),
            StoredMax::At(max) => StoredMax::At(max.max(request)),
        }
    }
}

/// Memtable insert hints of a data column family: per key (instance, id
/// length, id and chunk index, whole for ids up to 50 bytes), so the
/// overwrite of a chunk is inserted next to its previous version. A hint
/// costs ~250 bytes of the memtable's budget per distinct prefix.
const DATA_HINT_PREFIX: usize = 64;

/// Memtable insert hints of `meta`: per tag and instance (`C`, `S`) or
/// session (`O`, `Q`), so an instance's metadata lands next to its previous
/// version, a section's near its instance's other sections, and an origin
/// after its session's previous one.
const META_HINT_PREFIX: usize = 9;

/// `base` with memtable insert hints per key prefix of up to `prefix`
/// bytes (RocksDB's `memtable_insert_with_hint_prefix_extractor`, which
/// its C API reaches only through an options string).
fn insert_hints(base: &mut Options, prefix: usize) -> CkptResult<Options> {
    base.get_options_from_string(format!(
        "memtable_insert_with_hint_prefix_extractor=rocksdb.CappedPrefix.{prefix}"
    ))
    .map_err(|e| storage_error("setting memtable insert hints", e))
}

fn storage_error(context: &str, error: impl std::fmt::Display) -> CkptError {
    CkptError::new(ErrorCode::Library, format!("{context}: {error}"))
}

thread_local! {
    /// Whether this thread's views read only the memtables and the block
    /// cache ([`memory_only`]).
    static MEMORY_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Whether a memory-only read on this thread needed the disk.
    static NEEDED_DISK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `reads` with every view it takes reading only what is in memory
/// (RocksDB's memtables and block cache): `Some` of its result when that
/// sufficed, `None` when some read would have had to go to the disk (the
/// caller then runs it again where blocking is fine). So a server can
/// answer a read that hits memory on its async thread, with no hand-off,
/// and send only the rest to a blocking pool.
pub fn memory_only<T>(reads: impl FnOnce() -> T) -> Option<T> {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            MEMORY_ONLY.with(|m| m.set(false));
        }
    }
    MEMORY_ONLY.with(|m| m.set(true));
    NEEDED_DISK.with(|n| n.set(false));
    let reset = Reset;
    let result = reads();
    drop(reset);
    (!NEEDED_DISK.with(std::cell::Cell::get)).then_some(result)
}

/// A RocksDB error as a storage error; a memory-only read that would have
/// gone to the disk (`Incomplete`) is noted for [`memory_only`].
fn rocks_error(context: &str, error: rocksdb::Error) -> CkptError {
    if error.kind() == rocksdb::ErrorKind::Incomplete {
        NEEDED_DISK.with(|n| n.set(true));
    }
    storage_error(context, error)
}

fn slot_name(slot: u32) -> String {
    format!("{CF_PREFIX}{slot}")
}

fn parse_slot(name: &str) -> Option<u32> {
    name.strip_prefix(CF_PREFIX)?.parse().ok()
}

mod keys {
    use super::*;

    pub const APPLIED: &[u8] = b"A";
    pub const LAYOUT: &[u8] = b"L";

    /// An applied origin: `O` session request (big-endian, so a session's
    /// requests sort together, in order).
    pub fn origin(origin: Origin) -> Vec<u8> {
        [
            &b"O"[..],
            &origin.session.to_be_bytes(),
            &origin.request.to_be_bytes(),
        ]
        .concat()
    }

    /// When a session last applied an origin: `Q` session.
    pub fn session(session: u64) -> Vec<u8> {
        [&b"Q"[..], &session.to_be_bytes()].concat()
    }

    pub fn name(name: &CheckpointName) -> Vec<u8> {
        [b"N", name.as_bytes()].concat()
    }

    pub fn instance(instance: InstanceId) -> Vec<u8> {
        [&b"C"[..], &instance.0.to_be_bytes()].concat()
    }

    pub fn section_prefix(instance: InstanceId) -> Vec<u8> {
        [&b"S"[..], &instance.0.to_be_bytes()].concat()
    }

    pub fn section(instance: InstanceId, id: &SectionId) -> Vec<u8> {
        [section_prefix(instance), id.as_bytes().to_vec()].concat()
    }

    pub fn expiry_time(expiration_time: i64) -> [u8; 8] {
        // Flip the sign bit so negative times sort before positive ones.
        ((expiration_time as u64) ^ (1 << 63)).to_be_bytes()
    }

    pub fn expiry(expiration_time: i64, instance: InstanceId, id: &SectionId) -> Vec<u8> {
        [
            &b"E"[..],
            &expiry_time(expiration_time),
            &instance.0.to_be_bytes(),
            id.as_bytes(),
        ]
        .concat()
    }

    pub fn data_prefix(instance: InstanceId, id: &SectionId) -> Vec<u8> {
        // Ids are at most SECTION_ID_BYTES_MAX (4096) bytes, so the length
        // fits in u16.
        let len = id.as_bytes().len() as u16;
        [
            &instance.0.to_be_bytes()[..],
            &len.to_be_bytes()[..],
            id.as_bytes(),
        ]
        .concat()
    }

    /// A chunk's key. The attribute bounds (maxSectionSize ≤ 2^40) keep
    /// every index far below 2^32; an index past it is refused rather than
    /// wrapped onto chunk 0 of the same section.
    pub fn chunk(prefix: &[u8], index: u64) -> CkptResult<Vec<u8>> {
        let index = u32::try_from(index).map_err(|_| {
            storage_error(
                "section data",
                format!("chunk index {index} does not fit the key (offset past 2^48)"),
            )
        })?;
        Ok([prefix, &index.to_be_bytes()].concat())
    }
}

fn encode_section(meta: &SectionMeta) -> [u8; 25] {
    let mut out = [0u8; 25];
    out[0..8].copy_from_slice(&meta.size.to_le_bytes());
    out[8..16].copy_from_slice(&meta.expiration_time.to_le_bytes());
    out[16] = meta.state as u8;
    out[17..25].copy_from_slice(&meta.last_update.to_le_bytes());
    out
}

fn decode_section(bytes: &[u8]) -> CkptResult<SectionMeta> {
    if bytes.len() != 25 {
        return Err(storage_error(
            "section metadata",
            format!("{} bytes, expected 25", bytes.len()),
        ));
    }
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        b
    };
    Ok(SectionMeta {
        size: u64::from_le_bytes(u64_at(0)),
        expiration_time: i64::from_le_bytes(u64_at(8)),
        state: if bytes[16] == SectionState::Corrupted as u8 {
            SectionState::Corrupted
        } else {
            SectionState::Valid
        },
        last_update: i64::from_le_bytes(u64_at(17)),
    })
}

fn encode_instance(meta: &InstanceMeta) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + meta.name.as_bytes().len());
    out.push(2u8); // value format version (2 added `stale`)
    out.extend_from_slice(&(meta.name.as_bytes().len() as u32).to_le_bytes());
    out.extend_from_slice(meta.name.as_bytes());
    meta.attributes.encode_le(&mut out);
    out.extend_from_slice(&meta.column_family.to_le_bytes());
    out.push(u8::from(meta.unlinked));
    out.extend_from_slice(&meta.epoch.0.to_le_bytes());
    out.extend_from_slice(&meta.seq.0.to_le_bytes());
    out.extend_from_slice(&meta.generated_next.to_le_bytes());
    out.extend_from_slice(&meta.section_count.to_le_bytes());
    out.extend_from_slice(&meta.memory_used.to_le_bytes());
    out.extend_from_slice(&meta.created_at.to_le_bytes());
    out.push(u8::from(meta.stale));
    out
}

fn decode_instance(bytes: &[u8]) -> CkptResult<InstanceMeta> {
    let bad = |what: &str| storage_error("instance metadata", what.to_string());
    let mut at = 0usize;
    let mut take = |n: usize| -> CkptResult<&[u8]> {
        let slice = bytes.get(at..at + n).ok_or_else(|| bad("truncated"))?;
        at += n;
        Ok(slice)
    };
    let version = take(1)?[0];
    if version != 1 && version != 2 {
        return Err(bad("unknown format version"));
    }
    let u32v = |s: &[u8]| u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let u64v = |s: &[u8]| {
        let mut b = [0u8; 8];
        b.copy_from_slice(s);
        u64::from_le_bytes(b)
    };
    let name_len = u32v(take(4)?) as usize;
    let name = CheckpointName::new(take(name_len)?.to_vec()).map_err(|e| bad(&e.to_string()))?;
    let attributes = CreationAttributes {
        creation_flags: CreationFlags(u32v(take(4)?)),
        checkpoint_size: u64v(take(8)?),
        retention_duration_ns: u64v(take(8)?) as i64,
        max_sections: u32v(take(4)?),
        max_section_size: u64v(take(8)?),
        max_section_id_size: u64v(take(8)?),
    };
    Ok(InstanceMeta {
        name,
        attributes,
        column_family: u32v(take(4)?),
        unlinked: take(1)?[0] != 0,
        epoch: Epoch(u64v(take(8)?)),
        seq: Seq(u64v(take(8)?)),
        generated_next: u64v(take(8)?),
        section_count: u32v(take(4)?),
        memory_used: u64v(take(8)?),
        created_at: u64v(take(8)?) as i64,
        stale: version >= 2 && take(1)?[0] != 0,
    })
}

/// Chunk values being rewritten in the current batch, so that a second
/// write to the same chunk in one batch builds on the first.
#[derive(Default)]
struct Overlay {
    chunks: HashMap<(u32, Vec<u8>), Option<Vec<u8>>>,
    cleared: HashSet<(u32, InstanceId)>,
    /// Key ranges `[from, to)` range-deleted in this batch, by column family.
    cleared_ranges: Vec<(u32, Vec<u8>, Vec<u8>)>,
}

impl Overlay {
    /// Records a range deletion: chunks rewritten earlier in the batch
    /// inside it are gone, and reads in it find nothing until rewritten.
    fn clear_range(&mut self, slot: u32, from: Vec<u8>, to: Vec<u8>) {
        self.chunks.retain(|(s, key), _| {
            !(*s == slot && key.as_slice() >= from.as_slice() && key.as_slice() < to.as_slice())
        });
        self.cleared_ranges.push((slot, from, to));
    }

    fn in_cleared_range(&self, slot: u32, key: &[u8]) -> bool {
        self.cleared_ranges
            .iter()
            .any(|(s, from, to)| *s == slot && key >= from.as_slice() && key < to.as_slice())
    }
}

impl Db {
    /// Opens (or creates) the database at `path` with every existing
    /// column family, and reads the metadata.
    ///
    /// # Errors
    /// `IN_USE` when another process holds the directory; `LIBRARY` for
    /// other RocksDB errors or undecodable metadata.
    pub fn open(path: &Path, options: DbOptions) -> CkptResult<(Db, Loaded)> {
        let manager =
            WriteBufferManager::new_write_buffer_manager(options.write_buffer_bytes_total, false);
        let mut db_options = Options::default();
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        db_options.set_max_open_files(options.open_files_max);
        db_options.set_write_buffer_manager(&manager);
        db_options.set_keep_log_file_num(4);
        db_options.set_max_background_jobs(2);
        db_options.set_skip_stats_update_on_db_open(true);
        db_options.set_max_total_wal_size(512 * 1024 * 1024);
        if options.wal_mode == RocksWalMode::Disabled {
            db_options.set_atomic_flush(true);
        }
        // SAFETY: the options object is alive for the call. A crash must look
        // the same as a clean stop minus memtables: we flush explicitly.
        unsafe { ffi::rocksdb_options_set_avoid_flush_during_shutdown(db_options.as_raw_ptr(), 1) };
        let mut cf_options = Options::default();
        cf_options.set_write_buffer_size(options.write_buffer_bytes_per_cf);
        // Room for memtables to queue while one flushes, so a burst of
        // writes never waits on a flush (the shared budget still bounds
        // the total).
        cf_options.set_max_write_buffer_number(4);
        cf_options.set_compression_type(rocksdb::DBCompressionType::Lz4);

        let existing = match DB::list_cf(&db_options, path) {
            Ok(names) => names,
            Err(_) => vec!["default".to_string()],
        };
        let mut names: Vec<String> = existing
            .iter()
            .filter(|n| n.as_str() != META_CF)
            .cloned()
            .collect();
        for slot in 0..options.data_column_families.max(1) {
            if !names.contains(&slot_name(slot)) {
                names.push(slot_name(slot));
            }
        }
        // Every write rewrites the same few keys (a section's chunk and
        // metadata) and appends to its session's origins. Without a hint a
        // memtable insert searches the whole skip list from the top (10 % of
        // the server's CPU under 64 writers); with one per key prefix it
        // starts from where that prefix was last inserted. Hints need
        // inserts from one thread at a time, which is all we have (the
        // writer thread).
        db_options.set_allow_concurrent_memtable_write(false);
        let data_options = insert_hints(&mut cf_options, DATA_HINT_PREFIX)?;
        let meta_options = insert_hints(&mut cf_options, META_HINT_PREFIX)?;
        let mut descriptors: Vec<ColumnFamilyDescriptor> = names
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(name, data_options.clone()))
            .collect();
        descriptors.push(ColumnFamilyDescriptor::new(META_CF, meta_options));
        let db = DB::open_cf_descriptors(&db_options, path, descriptors).map_err(|e| {
            let text = e.to_string();
            if text.contains("lock") || text.contains("Resource temporarily unavailable") {
                CkptError::new(
                    ErrorCode::InUse,
                    format!(
                        "data directory {} is in use by another process ({text})",
                        path.display()
                    ),
                )
            } else {
                storage_error("opening RocksDB", text)
            }
        })?;
        let (meta, slots) = column_families(&db, &names)?;
        let this = Db {
            slots,
            meta,
            read_cache: ReadCache::new(options.read_cache_bytes),
            options,
            db,
            sessions: Mutex::new(HashMap::new()),
            memory: None,
        };
        this.check_layout()?;
        let loaded = this.load()?;
        Ok((this, loaded))
    }

    /// Opens the database at `path` for reading only, as a RocksDB
    /// secondary instance whose own files (its info log) go to `secondary`,
    /// a directory outside the data directory: nothing under `path` is
    /// created or written, no lock is taken, and a server may have the
    /// database open meanwhile (the view is of the moment of the open).
    /// [`Db::apply_with`] then applies batches to memory, over RocksDB's
    /// state, and every read sees them: a recovery replayed without
    /// writing.
    ///
    /// # Errors
    /// `NOT_EXIST` without a database at `path`; RocksDB errors;
    /// undecodable metadata or another layout version.
    pub fn open_read_only(path: &Path, secondary: &Path) -> CkptResult<(Db, Loaded)> {
        if !path.join("CURRENT").is_file() {
            return Err(CkptError::new(
                ErrorCode::NotExist,
                format!("{} holds no RocksDB database", path.display()),
            ));
        }
        let mut db_options = Options::default();
        // Every table file is opened now, so a compaction of a live
        // server deleting one later cannot make it unreadable.
        db_options.set_max_open_files(-1);
        db_options.set_skip_stats_update_on_db_open(true);
        let names = DB::list_cf(&db_options, path)
            .map_err(|e| storage_error("opening RocksDB read-only", e))?;
        let descriptors: Vec<ColumnFamilyDescriptor> = names
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(name, Options::default()))
            .collect();
        let db = DB::open_cf_descriptors_as_secondary(&db_options, path, secondary, descriptors)
            .map_err(|e| storage_error("opening RocksDB read-only", e))?;
        let (meta, slots) = column_families(&db, &names)?;
        let options = DbOptions {
            data_column_families: slots.len().max(1) as u32,
            ..DbOptions::default()
        };
        let this = Db {
            slots,
            meta,
            read_cache: ReadCache::new(options.read_cache_bytes),
            options,
            db,
            sessions: Mutex::new(HashMap::new()),
            memory: Some(Mutex::new(MemLayer::default())),
        };
        this.check_layout()?;
        let loaded = this.load()?;
        Ok((this, loaded))
    }

    /// Whether this is a read-only open ([`Db::open_read_only`]).
    pub fn is_read_only(&self) -> bool {
        self.memory.is_some()
    }

    fn memory(&self) -> Option<std::sync::MutexGuard<'_, MemLayer>> {
        self.memory
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A key's value, through the in-memory layer of a read-only open.
    fn get_merged(
        &self,
        family: Family,
        key: &[u8],
        base: impl FnOnce() -> Result<Option<Vec<u8>>, rocksdb::Error>,
        context: &str,
    ) -> CkptResult<Option<Vec<u8>>> {
        if let Some(decided) = self.memory().and_then(|m| m.get(family, key)) {
            return Ok(decided);
        }
        base().map_err(|e| rocks_error(context, e))
    }

    /// Calls `each` with every `(key, value)` of `[from, to)` in
    /// `family`, in order, read with `read` (a snapshot, perhaps), through
    /// the in-memory layer of a read-only open; streams, holding nothing.
    fn for_each_merged(
        &self,
        family: Family,
        mut read: ReadOptions,
        from: &[u8],
        to: &[u8],
        context: &str,
        mut each: impl FnMut(&[u8], &[u8]),
    ) -> CkptResult<()> {
        let cf = match family {
            Family::Meta => self.meta,
            Family::Data(slot) => self.cf(slot)?,
        };
        let over = self
            .memory()
            .map(|m| m.over(family, from, to))
            .unwrap_or_default();
        let deleted = |key: &[u8]| {
            over.ranges
                .iter()
                .any(|(from, to)| key >= from.as_slice() && key < to.as_slice())
        };
        let mut ours = over.entries.iter().peekable();
        read.set_iterate_upper_bound(to.to_vec());
        let mode = rocksdb::IteratorMode::From(from, rocksdb::Direction::Forward);
        for item in self.db.iterator_cf_opt(&cf, read, mode) {
            let (key, value) = item.map_err(|e| rocks_error(context, e))?;
            while let Some((k, v)) = ours.next_if(|(k, _)| k.as_slice() < &key[..]) {
                if let Some(v) = v {
                    each(k, v);
                }
            }
            if let Some((_, v)) = ours.next_if(|(k, _)| k.as_slice() == &key[..]) {
                if let Some(v) = v {
                    each(&key, v);
                }
                continue;
            }
            if !deleted(&key) {
                each(&key, &value);
            }
        }
        for (k, v) in ours {
            if let Some(v) = v {
                each(k, v);
            }
        }
        Ok(())
    }

    /// [`Db::for_each_merged`], collected.
    fn scan_merged(
        &self,
        family: Family,
        read: ReadOptions,
        from: &[u8],
        to: &[u8],
        context: &str,
    ) -> CkptResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        self.for_each_merged(family, read, from, to, context, |k, v| {
            out.push((k.to_vec(), v.to_vec()))
        })?;
        Ok(out)
    }

    /// Refuses a database written with another key layout instead of
    /// misreading it, and stamps a new one with ours.
    fn check_layout(&self) -> CkptResult<()> {
        match self.get_meta(keys::LAYOUT)? {
            Some(v) if v == LAYOUT_VERSION.to_le_bytes() => Ok(()),
            Some(v) => Err(storage_error(
                "opening RocksDB",
                format!("data layout version {v:?} is not {LAYOUT_VERSION}; use the ckpt-tool of the version that wrote it to dump the data"),
            )),
            None if self.get_meta(keys::APPLIED)?.is_some() => Err(storage_error(
                "opening RocksDB",
                "the database predates layout versions (one column family per checkpoint); dump it with the ckpt-tool that wrote it",
            )),
            // A read-only open stamps nothing (an empty database).
            None if self.is_read_only() => Ok(()),
            None => self
                .db
                .put_cf(&self.meta, keys::LAYOUT, LAYOUT_VERSION.to_le_bytes())
                .map_err(|e| storage_error("stamping the data layout", e)),
        }
    }

    fn load(&self) -> CkptResult<Loaded> {
        let (applied, next_instance) = match self.get_meta(keys::APPLIED)? {
            Some(v) if v.len() == 16 => {
                let mut a = [0u8; 8];
                let mut b = [0u8; 8];
                a.copy_from_slice(&v[0..8]);
                b.copy_from_slice(&v[8..16]);
                (Lsn(u64::from_le_bytes(a)), u64::from_le_bytes(b))
            }
            Some(v) => {
                return Err(storage_error(
                    "applied position",
                    format!("{} bytes", v.len()),
                ))
            }
            None => (Lsn(0), 1),
        };
        // Streamed, not collected first, into maps sized once: at a million
        // checkpoints the copies and rehashing were most of a restart.
        // Instance ids are handed out in order, so `next_instance` bounds
        // the count (capped, should ids ever be sparse).
        let expected = usize::try_from(next_instance.min(LOAD_RESERVE_MAX)).unwrap_or(0);
        let mut names = HashMap::with_capacity(expected);
        self.for_each_meta(b"N", |key, value| {
            let name = CheckpointName::new(key[1..].to_vec())
                .map_err(|e| storage_error("name index", e))?;
            names.insert(name, InstanceId(u64_be(value)?));
            Ok(())
        })?;
        let mut instances = HashMap::with_capacity(expected);
        self.for_each_meta(b"C", |key, value| {
            instances.insert(InstanceId(u64_be(&key[1..])?), decode_instance(value)?);
            Ok(())
        })?;
        Ok(Loaded {
            applied,
            next_instance,
            names,
            instances,
        })
    }

    /// Re-reads names and instances (after a batch failed to reach the log).
    ///
    /// # Errors
    /// RocksDB errors, undecodable metadata.
    pub fn reload(&self) -> CkptResult<Loaded> {
        self.load()
    }

    /// The instance a name points at.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn lookup_name(&self, name: &CheckpointName) -> CkptResult<Option<InstanceId>> {
        self.get_meta(&keys::name(name))?
            .map(|v| u64_be(&v).map(InstanceId))
            .transpose()
    }

    /// Every instance in id order.
    ///
    /// # Errors
    /// RocksDB errors, undecodable metadata.
    pub fn list_instances(&self) -> CkptResult<Vec<(InstanceId, InstanceMeta)>> {
        self.scan_meta(b"C")?
            .into_iter()
            .map(|(key, value)| Ok((InstanceId(u64_be(&key[1..])?), decode_instance(&value)?)))
            .collect()
    }

    fn get_meta(&self, key: &[u8]) -> CkptResult<Option<Vec<u8>>> {
        self.get_merged(
            Family::Meta,
            key,
            || self.db.get_cf(&self.meta, key),
            "reading metadata",
        )
    }

    /// Calls `each` with every `(key, value)` of `meta` starting with
    /// `prefix`, in order, streaming; stops at its first error.
    fn for_each_meta(
        &self,
        prefix: &[u8],
        mut each: impl FnMut(&[u8], &[u8]) -> CkptResult<()>,
    ) -> CkptResult<()> {
        let mut failed = None;
        self.for_each_merged(
            Family::Meta,
            ReadOptions::default(),
            prefix,
            &prefix_end(prefix),
            "scanning metadata",
            |key, value| {
                if failed.is_none() {
                    failed = each(key, value).err();
                }
            },
        )?;
        failed.map_or(Ok(()), Err)
    }

    /// Every `(key, value)` of `meta` starting with `prefix`.
    fn scan_meta(&self, prefix: &[u8]) -> CkptResult<Vec<(Vec<u8>, Vec<u8>)>> {
        self.scan_meta_range(prefix, &prefix_end(prefix))
    }

    fn scan_meta_range(&self, from: &[u8], to: &[u8]) -> CkptResult<Vec<(Vec<u8>, Vec<u8>)>> {
        self.scan_merged(
            Family::Meta,
            ReadOptions::default(),
            from,
            to,
            "scanning metadata",
        )
    }

    /// Every section of an instance.
    ///
    /// # Errors
    /// RocksDB errors, undecodable metadata.
    pub fn load_sections(
        &self,
        instance: InstanceId,
    ) -> CkptResult<BTreeMap<SectionId, SectionMeta>> {
        let prefix = keys::section_prefix(instance);
        let mut sections = BTreeMap::new();
        for (key, value) in self.scan_meta(&prefix)? {
            sections.insert(
                SectionId::new(key[prefix.len()..].to_vec()),
                decode_section(&value)?,
            );
        }
        Ok(sections)
    }

    /// What an applied origin produced, if it is remembered.
    ///
    /// # Errors
    /// RocksDB errors, an undecodable value.
    pub fn origin(&self, origin: Origin) -> CkptResult<Option<Committed>> {
        // A read-only view's batches live in its memory layer, which the
        // seek below does not see: it always reads.
        if self.memory.is_none() {
            let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            let mark = sessions.entry(origin.session).or_insert(SessionMark::FRESH);
            if mark.stored_max == StoredMax::Unknown {
                mark.stored_max = self.stored_origin_max(origin.session)?;
            }
            if !mark.stored_max.may_hold(origin.request) {
                return Ok(None);
            }
        }
        self.get_meta(&keys::origin(origin))?
            .map(|v| postcard::from_bytes(&v).map_err(|e| storage_error("an origin's outcome", e)))
            .transpose()
    }

    /// The highest request number of `session`'s origins in RocksDB.
    fn stored_origin_max(&self, session: u64) -> CkptResult<StoredMax> {
        let prefix = [&b"O"[..], &session.to_be_bytes()].concat();
        let mut read = ReadOptions::default();
        read.set_iterate_lower_bound(prefix);
        let mut iterator = self.db.raw_iterator_cf_opt(&self.meta, read);
        iterator.seek_for_prev(keys::origin(Origin {
            session,
            request: u64::MAX,
        }));
        let found = match iterator.key() {
            Some(key) if key.len() == 17 => StoredMax::At(u64_be(&key[9..])?),
            Some(_) => return Err(storage_error("an origin's key", "wrong length")),
            None => StoredMax::None,
        };
        iterator
            .status()
            .map_err(|e| rocks_error("looking up a session's origins", e))?;
        Ok(found)
    }

    /// Forgets every session whose last applied origin is older than
    /// `idle_before` (ns); returns how many. The stored time of a session
    /// may lag its last write by up to [`SESSION_MARK_NS`], so a session is
    /// forgotten only when its stored time is that much older.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn forget_idle_sessions(&self, idle_before: i64) -> CkptResult<usize> {
        let idle_before = idle_before.saturating_sub(SESSION_MARK_NS);
        let mut batch = WriteBatch::default();
        let mut forgotten = 0;
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        // Sessions only looked up (their requests changed nothing) have no
        // `Q` key to be found idle by: their marks go on every sweep, and
        // their next lookup seeks again.
        sessions.retain(|_, mark| mark.time != i64::MIN);
        for (key, value) in self.scan_meta(b"Q")? {
            let last = <[u8; 8]>::try_from(value.as_slice())
                .map(i64::from_le_bytes)
                .unwrap_or(i64::MIN);
            if last >= idle_before || key.len() != 9 {
                continue;
            }
            if let Ok(session) = <[u8; 8]>::try_from(&key[1..9]) {
                sessions.remove(&u64::from_be_bytes(session));
            }
            let prefix = [&b"O"[..], &key[1..9]].concat();
            batch.delete_range_cf(&self.meta, prefix.clone(), prefix_end(&prefix));
            batch.delete_cf(&self.meta, key);
            forgotten += 1;
        }
        if forgotten > 0 {
            let mut write = WriteOptions::default();
            write.disable_wal(self.options.wal_mode == RocksWalMode::Disabled);
            self.db
                .write_opt(batch, &write)
                .map_err(|e| storage_error("forgetting idle sessions", e))?;
        }
        Ok(forgotten)
    }

    /// Sections whose expiration is at or before `now`, by the index.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn expiry_candidates(&self, now: i64) -> CkptResult<Vec<(InstanceId, SectionId)>> {
        let to = [&b"E"[..], &keys::expiry_time(now.saturating_add(1))].concat();
        let mut out = Vec::new();
        for (key, _) in self.scan_meta_range(b"E", &to)? {
            if key.len() < 17 {
                return Err(storage_error("expiry index", "short key"));
            }
            out.push((
                InstanceId(u64_be(&key[9..17])?),
                SectionId::new(key[17..].to_vec()),
            ));
        }
        Ok(out)
    }

    fn cf(&self, slot: u32) -> CkptResult<CfPtr> {
        self.slots
            .get(slot as usize)
            .copied()
            .flatten()
            .ok_or_else(|| {
                storage_error(
                    "column family",
                    format!("{} does not exist", slot_name(slot)),
                )
            })
    }

    /// The data column family a new instance goes to.
    pub fn column_family_for(&self, instance: InstanceId) -> u32 {
        (instance.0 % u64::from(self.options.data_column_families.max(1))) as u32
    }

    /// Writes the effects of a batch of records, with the applied position,
    /// as one atomic `WriteBatch`.
    ///
    /// # Errors
    /// RocksDB errors (the caller poisons the store).
    pub fn apply(&self, effects: &[Effect], applied: Lsn, next_instance: u64) -> CkptResult<()> {
        self.apply_with(effects, &[], applied, next_instance)
    }

    /// [`Db::apply`], also remembering the origins the batch applied (in
    /// the same atomic batch: exactly-once survives a crash). Per session
    /// only the last [`ORIGINS_PER_SESSION`] request numbers are kept.
    ///
    /// # Errors
    /// RocksDB errors (the caller poisons the store).
    pub fn apply_with(
        &self,
        effects: &[Effect],
        origins: &[(Origin, Committed, i64)],
        applied: Lsn,
        next_instance: u64,
    ) -> CkptResult<()> {
        // Cached reads of these instances stop before any of the batch can
        // be seen, and fills start again once it all can (read_cache.rs).
        let _writing = self
            .read_cache
            .writing(effects.iter().filter_map(Effect::instance));
        if self.memory.is_some() {
            let mut batch = MemBatch::default();
            let _sessions =
                self.build_batch(&mut batch, effects, origins, applied, next_instance)?;
            if let Some(mut memory) = self.memory() {
                memory.apply(batch);
            }
            return Ok(());
        }
        let mut batch = RocksBatch {
            db: self,
            batch: WriteBatch::default(),
        };
        // Held until the batch is written: a concurrent `origin` must not
        // seek a session's stored maximum between the bound's raise and the
        // write it was raised for.
        let _sessions = self.build_batch(&mut batch, effects, origins, applied, next_instance)?;
        let mut write = WriteOptions::default();
        write.disable_wal(self.options.wal_mode == RocksWalMode::Disabled);
        self.db
            .write_opt(batch.batch, &write)
            .map_err(|e| storage_error("applying to RocksDB", e))
    }

    /// Puts a batch's changes into `batch` (see [`Db::apply_with`]);
    /// returns the sessions' marks, still locked, for the caller to hold
    /// until the batch is written.
    fn build_batch(
        &self,
        batch: &mut impl Batch,
        effects: &[Effect],
        origins: &[(Origin, Committed, i64)],
        applied: Lsn,
        next_instance: u64,
    ) -> CkptResult<std::sync::MutexGuard<'_, HashMap<u64, SessionMark>>> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        for (origin, committed, now) in origins {
            let value = postcard::to_allocvec(committed)
                .map_err(|e| storage_error("encoding an origin's outcome", e))?;
            batch.put(Family::Meta, &keys::origin(*origin), &value);
            let mark = sessions.entry(origin.session).or_insert(SessionMark::FRESH);
            mark.stored_max = mark.stored_max.raise(origin.request);
            if *now < mark.time || now.saturating_sub(mark.time) >= SESSION_MARK_NS {
                batch.put(
                    Family::Meta,
                    &keys::session(origin.session),
                    &now.to_le_bytes(),
                );
                mark.time = *now;
            }
            let below = origin.request.saturating_sub(ORIGINS_PER_SESSION);
            let step_from = mark.swept_below.saturating_add(ORIGIN_SWEEP_STEP);
            if below > 0 && (mark.swept_below == 0 || below >= step_from) {
                let from = keys::origin(Origin {
                    session: origin.session,
                    request: 0,
                });
                let to = keys::origin(Origin {
                    session: origin.session,
                    request: below,
                });
                batch.delete_range(Family::Meta, &from, &to);
                mark.swept_below = below;
            }
        }
        let mut overlay = Overlay::default();
        // An instance's metadata is rewritten by every record of it; within
        // one atomic batch only its last version matters.
        let mut last_put: HashMap<InstanceId, usize> = HashMap::new();
        for (index, effect) in effects.iter().enumerate() {
            if let Effect::PutInstance { instance, .. } = effect {
                last_put.insert(*instance, index);
            }
        }
        for (index, effect) in effects.iter().enumerate() {
            if let Effect::PutInstance { instance, .. } = effect {
                if last_put.get(instance) != Some(&index) {
                    continue;
                }
            }
            self.apply_effect(batch, &mut overlay, effect)?;
        }
        let mut position = Vec::with_capacity(16);
        position.extend_from_slice(&applied.0.to_le_bytes());
        position.extend_from_slice(&next_instance.to_le_bytes());
        batch.put(Family::Meta, keys::APPLIED, &position);
        Ok(sessions)
    }

    fn apply_effect(
        &self,
        batch: &mut impl Batch,
        overlay: &mut Overlay,
        effect: &Effect,
    ) -> CkptResult<()> {
        match effect {
            Effect::PutInstance { instance, meta } => {
                batch.put(
                    Family::Meta,
                    &keys::instance(*instance),
                    &encode_instance(meta),
                );
            }
            Effect::DeleteInstance { instance } => {
                batch.delete(Family::Meta, &keys::instance(*instance));
                let prefix = keys::section_prefix(*instance);
                batch.delete_range(Family::Meta, &prefix, &prefix_end(&prefix));
            }
            Effect::PutName { name, instance } => {
                batch.put(Family::Meta, &keys::name(name), &instance.0.to_be_bytes());
            }
            Effect::DeleteName { name } => batch.delete(Family::Meta, &keys::name(name)),
            Effect::PutSection {
                instance,
                section_id,
                meta,
            } => {
                batch.put(
                    Family::Meta,
                    &keys::section(*instance, section_id),
                    &encode_section(meta),
                );
            }
            Effect::DeleteSection {
                instance,
                section_id,
            } => {
                batch.delete(Family::Meta, &keys::section(*instance, section_id));
            }
            Effect::PutExpiry {
                expiration_time,
                instance,
                section_id,
            } => {
                batch.put(
                    Family::Meta,
                    &keys::expiry(*expiration_time, *instance, section_id),
                    b"",
                );
            }
            Effect::DeleteExpiry {
                expiration_time,
                instance,
                section_id,
            } => {
                batch.delete(
                    Family::Meta,
                    &keys::expiry(*expiration_time, *instance, section_id),
                );
            }
            Effect::WriteData {
                column_family,
                instance,
                section_id,
                offset,
                data,
                size_after,
            } => {
                let cf = self.cf(*column_family)?;
                let family = Family::Data(*column_family);
                let prefix = keys::data_prefix(*instance, section_id);
                let end = offset + data.len() as u64;
                let mut chunk = offset / CHUNK_BYTES;
                while chunk * CHUNK_BYTES < end {
                    let chunk_start = chunk * CHUNK_BYTES;
                    let from = (*offset).max(chunk_start);
                    let to = end.min(chunk_start + CHUNK_BYTES);
                    let key = keys::chunk(&prefix, chunk)?;
                    // Nothing of the old chunk survives when the write
                    // covers it from its start to its end or to the
                    // section's end: then there is nothing to read.
                    let whole_chunk_replaced = from == chunk_start
                        && (to == chunk_start + CHUNK_BYTES || to >= *size_after);
                    let mut value = if whole_chunk_replaced {
                        Vec::new()
                    } else {
                        self.chunk_value(overlay, *column_family, *instance, &cf, &key)?
                            .unwrap_or_default()
                    };
                    let needed = (to - chunk_start) as usize;
                    if value.len() < needed {
                        value.resize(needed, 0);
                    }
                    let src = &data[(from - offset) as usize..(to - offset) as usize];
                    value[(from - chunk_start) as usize..needed].copy_from_slice(src);
                    batch.put(family, &key, &value);
                    overlay.chunks.insert((*column_family, key), Some(value));
                    chunk += 1;
                }
            }
            Effect::ReplaceData {
                column_family,
                instance,
                section_id,
                data,
                size_before,
            } => {
                self.cf(*column_family)?;
                let family = Family::Data(*column_family);
                let prefix = keys::data_prefix(*instance, section_id);
                let chunks_after = (data.len() as u64).div_ceil(CHUNK_BYTES);
                self.delete_chunks(
                    batch,
                    overlay,
                    *column_family,
                    &prefix,
                    chunks_after,
                    size_before.div_ceil(CHUNK_BYTES),
                )?;
                for (chunk, piece) in data.chunks(CHUNK_BYTES as usize).enumerate() {
                    let key = keys::chunk(&prefix, chunk as u64)?;
                    batch.put(family, &key, piece);
                    overlay
                        .chunks
                        .insert((*column_family, key), Some(piece.to_vec()));
                }
            }
            Effect::RemoveData {
                column_family,
                instance,
                section_id,
                size_before,
            } => {
                self.cf(*column_family)?;
                let prefix = keys::data_prefix(*instance, section_id);
                self.delete_chunks(
                    batch,
                    overlay,
                    *column_family,
                    &prefix,
                    0,
                    size_before.div_ceil(CHUNK_BYTES),
                )?;
            }
            Effect::ClearInstance {
                column_family,
                instance,
            } => {
                self.cf(*column_family)?;
                let from = instance.0.to_be_bytes();
                batch.delete_range(Family::Data(*column_family), &from, &prefix_end(&from));
                overlay.cleared.insert((*column_family, *instance));
                overlay
                    .chunks
                    .retain(|(slot, key), _| !(slot == column_family && key.starts_with(&from)));
            }
        }
        Ok(())
    }

    /// Deletes a section's chunks `from..to` (every chunk from `from` on:
    /// no chunk lies past a section's size), one by one when few, else as
    /// one range deletion to the end of the section's key prefix.
    fn delete_chunks(
        &self,
        batch: &mut impl Batch,
        overlay: &mut Overlay,
        slot: u32,
        prefix: &[u8],
        from: u64,
        to: u64,
    ) -> CkptResult<()> {
        if to <= from {
            return Ok(());
        }
        if to - from < RANGE_DELETE_CHUNKS_MIN {
            for chunk in from..to {
                let key = keys::chunk(prefix, chunk)?;
                batch.delete(Family::Data(slot), &key);
                overlay.chunks.insert((slot, key), None);
            }
            return Ok(());
        }
        let start = keys::chunk(prefix, from)?;
        let end = prefix_end(prefix);
        batch.delete_range(Family::Data(slot), &start, &end);
        overlay.clear_range(slot, start, end);
        Ok(())
    }

    fn chunk_value(
        &self,
        overlay: &Overlay,
        slot: u32,
        instance: InstanceId,
        cf: &CfPtr,
        key: &[u8],
    ) -> CkptResult<Option<Vec<u8>>> {
        if let Some(value) = overlay.chunks.get(&(slot, key.to_vec())) {
            return Ok(value.clone());
        }
        if overlay.cleared.contains(&(slot, instance)) || overlay.in_cleared_range(slot, key) {
            return Ok(None);
        }
        self.get_merged(
            Family::Data(slot),
            key,
            || self.db.get_cf(cf, key),
            "reading section data",
        )
    }

    /// Makes everything applied so far durable in RocksDB, so the log below
    /// it may be deleted.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn make_durable(&self) -> CkptResult<()> {
        match self.options.wal_mode {
            RocksWalMode::Unsynced => self
                .db
                .flush_wal(true)
                .map_err(|e| storage_error("syncing RocksDB WAL", e)),
            RocksWalMode::Disabled => self.flush_all(),
        }
    }

    /// Flushes every memtable, so the next open has nothing to replay from
    /// RocksDB's own WAL (used at a clean close).
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn flush_all(&self) -> CkptResult<()> {
        let mut cfs: Vec<&CfPtr> = self.slots.iter().flatten().collect();
        cfs.push(&self.meta);
        let mut flush = FlushOptions::default();
        flush.set_wait(true);
        self.db
            .flush_cfs_opt(&cfs, &flush)
            .map_err(|e| storage_error("flushing RocksDB", e))
    }

    /// RocksDB's estimate of the bytes an instance's data takes on disk
    /// (SST files; data still in memtables is not counted).
    pub fn instance_bytes(&self, slot: u32, instance: InstanceId) -> u64 {
        let Ok(cf) = self.cf(slot) else { return 0 };
        let from = instance.0.to_be_bytes();
        let to = prefix_end(&from);
        let range = rocksdb::Range::new(&from[..], &to[..]);
        self.db
            .get_approximate_sizes_cf(&cf, &[range])
            .first()
            .copied()
            .unwrap_or(0)
    }

    /// Keys an instance has in a data column family.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn count_data_keys(&self, slot: u32, instance: InstanceId) -> CkptResult<u64> {
        let from = instance.0.to_be_bytes();
        let mut count = 0;
        self.for_each_merged(
            Family::Data(slot),
            ReadOptions::default(),
            &from,
            &prefix_end(&from),
            "scanning section data",
            |_, _| count += 1,
        )?;
        Ok(count)
    }

    /// A consistent read view.
    pub fn snapshot(&self) -> View<'_> {
        View {
            db: self,
            // A secondary instance has no snapshots; it stands still
            // anyway (it never catches up with its primary after the
            // open), and so does its in-memory layer after the replay.
            snapshot: (!self.is_read_only()).then(|| self.db.snapshot()),
        }
    }

    /// RocksDB's own statistics text for one property, if known.
    pub fn property(&self, name: &str) -> Option<String> {
        self.db.property_value(name).ok().flatten()
    }
}

/// Reads from one point in time.
pub struct View<'a> {
    db: &'a Db,
    snapshot: Option<rocksdb::SnapshotWithThreadMode<'a, DB>>,
}

impl View<'_> {
    /// Every instance in id order.
    ///
    /// # Errors
    /// RocksDB errors, undecodable metadata.
    pub fn instances(&self) -> CkptResult<Vec<(InstanceId, InstanceMeta)>> {
        self.db
            .scan_merged(
                Family::Meta,
                self.read_options(),
                b"C",
                b"D",
                "scanning instances",
            )?
            .into_iter()
            .map(|(key, value)| Ok((InstanceId(u64_be(&key[1..])?), decode_instance(&value)?)))
            .collect()
    }

    fn read_options(&self) -> ReadOptions {
        let mut read = ReadOptions::default();
        if let Some(snapshot) = &self.snapshot {
            read.set_snapshot(snapshot);
        }
        if MEMORY_ONLY.with(std::cell::Cell::get) {
            read.set_read_tier(rocksdb::ReadTier::BlockCache);
        }
        read
    }

    /// An instance's metadata.
    ///
    /// # Errors
    /// RocksDB errors, undecodable metadata.
    pub fn instance(&self, instance: InstanceId) -> CkptResult<Option<InstanceMeta>> {
        self.meta_value(&keys::instance(instance))?
            .map(|v| decode_instance(&v))
            .transpose()
    }

    /// A metadata value at `key` as this view sees it.
    fn meta_value(&self, key: &[u8]) -> CkptResult<Option<Vec<u8>>> {
        self.db.get_merged(
            Family::Meta,
            key,
            || {
                self.db
                    .db
                    .get_cf_opt(&self.db.meta, key, &self.read_options())
            },
            "reading metadata",
        )
    }

    /// A section's metadata.
    ///
    /// # Errors
    /// RocksDB errors, undecodable metadata.
    pub fn section(&self, instance: InstanceId, id: &SectionId) -> CkptResult<Option<SectionMeta>> {
        self.meta_value(&keys::section(instance, id))?
            .map(|v| decode_section(&v))
            .transpose()
    }

    /// Every section of an instance, in id order.
    ///
    /// # Errors
    /// RocksDB errors, undecodable metadata.
    pub fn sections(&self, instance: InstanceId) -> CkptResult<Vec<(SectionId, SectionMeta)>> {
        let prefix = keys::section_prefix(instance);
        self.db
            .scan_merged(
                Family::Meta,
                self.read_options(),
                &prefix,
                &prefix_end(&prefix),
                "scanning sections",
            )?
            .into_iter()
            .map(|(key, value)| {
                Ok((
                    SectionId::new(key[prefix.len()..].to_vec()),
                    decode_section(&value)?,
                ))
            })
            .collect()
    }

    /// `len` bytes of a section's data from `offset`; the caller has
    /// checked the range against the section's size. Gaps read as zeros.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn read_data(
        &self,
        column_family: u32,
        instance: InstanceId,
        id: &SectionId,
        offset: u64,
        len: u64,
    ) -> CkptResult<Vec<u8>> {
        let mut out = vec![0u8; len as usize];
        if len == 0 {
            return Ok(out);
        }
        let prefix = keys::data_prefix(instance, id);
        let first = offset / CHUNK_BYTES;
        let last = (offset + len - 1) / CHUNK_BYTES;
        let copy = |out: &mut [u8], index: u64, value: &[u8]| {
            let chunk_start = index * CHUNK_BYTES;
            let chunk_end = chunk_start + value.len() as u64;
            let from = offset.max(chunk_start);
            let to = (offset + len).min(chunk_end);
            if from < to {
                out[(from - offset) as usize..(to - offset) as usize].copy_from_slice(
                    &value[(from - chunk_start) as usize..(to - chunk_start) as usize],
                );
            }
        };
        if last - first < POINT_READ_CHUNKS_MAX {
            // A few chunks: one point lookup each. An iterator would seek,
            // then step over every older version of the chunk still in
            // the memtable (a section overwritten in a loop leaves many)
            // to find the range's end; a lookup stops at the newest.
            let family = Family::Data(column_family);
            let cf = self.db.cf(column_family)?;
            for index in first..=last {
                let key = keys::chunk(&prefix, index)?;
                let read = self.read_options();
                let value = self.db.get_merged(
                    family,
                    &key,
                    || self.db.db.get_cf_opt(&cf, &key, &read),
                    "reading section data",
                )?;
                if let Some(value) = value {
                    copy(&mut out, index, &value);
                }
            }
            return Ok(out);
        }
        let start_key = keys::chunk(&prefix, first)?;
        // The last chunk may be the highest index: bound by the prefix's end
        // then, so the bound itself never needs an index past u32.
        let upper = match keys::chunk(&prefix, last + 1) {
            Ok(key) => key,
            Err(_) => prefix_end(&prefix),
        };
        self.db.for_each_merged(
            Family::Data(column_family),
            self.read_options(),
            &start_key,
            &upper,
            "reading section data",
            |key, value| {
                if key.len() != prefix.len() + 4 || !key.starts_with(&prefix) {
                    return;
                }
                let index = u64::from(u32::from_be_bytes([
                    key[prefix.len()],
                    key[prefix.len() + 1],
                    key[prefix.len() + 2],
                    key[prefix.len() + 3],
                ]));
                copy(&mut out, index, value);
            },
        )?;
        Ok(out)
    }
}

fn u64_be(bytes: &[u8]) -> CkptResult<u64> {
    let array: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| storage_error("metadata key", "short integer"))?;
    Ok(u64::from_be_bytes(array))
}

/// The smallest key greater than every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

/// The meta column family and the data slots' column families of an open
/// database, by slot number (a slot not in `names` is `None`).
fn column_families(db: &DB, names: &[String]) -> CkptResult<(CfPtr, Vec<Option<CfPtr>>)> {
    let raw = |name: &str| {
        db.cf_handle(name).map(|cf| CfPtr {
            raw: AsColumnFamilyRef::inner(&cf),
        })
    };
    let meta =
        raw(META_CF).ok_or_else(|| storage_error("opening RocksDB", "no meta column family"))?;
    let mut slots: Vec<Option<CfPtr>> = Vec::new();
    for name in names {
        if let Some(slot) = parse_slot(name) {
            let slot = slot as usize;
            if slots.len() <= slot {
                slots.resize(slot + 1, None);
            }
            slots[slot] = raw(name);
        }
    }
    Ok((meta, slots))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_a_strict_upper_bound() {
        assert_eq!(prefix_end(b"S"), b"T".to_vec());
        assert_eq!(prefix_end(&[1, 0xff]), vec![2]);
        assert!(prefix_end(&[0xff, 0xff]).as_slice() > &[0xff, 0xff, 0xff][..2]);
    }

    #[test]
    fn expiry_keys_sort_by_time_including_negative() {
        let id = SectionId::new("x");
        let a = keys::expiry(-5, InstanceId(1), &id);
        let b = keys::expiry(3, InstanceId(1), &id);
        let c = keys::expiry(i64::MAX - 1, InstanceId(1), &id);
        assert!(a < b && b < c);
    }

    #[test]
    fn instance_meta_round_trips() {
        let meta = InstanceMeta {
            name: CheckpointName::new("n").unwrap(),
            attributes: CreationAttributes {
                creation_flags: CreationFlags::WR_ALL_REPLICAS,
                checkpoint_size: 10,
                retention_duration_ns: -1,
                max_sections: 2,
                max_section_size: 5,
                max_section_id_size: 3,
            },
            column_family: 9,
            unlinked: true,
            epoch: Epoch(2),
            seq: Seq(3),
            generated_next: 4,
            section_count: 1,
            memory_used: 5,
            created_at: 6,
            stale: true,
        };
        assert_eq!(decode_instance(&encode_instance(&meta)).unwrap(), meta);
        // Version 1 (no stale flag) still reads, as not stale.
        let mut v1 = encode_instance(&meta);
        v1[0] = 1;
        v1.pop();
        let decoded = decode_instance(&v1).unwrap();
        assert!(!decoded.stale);
        assert!(decode_instance(&encode_instance(&meta)[..20]).is_err());
    }

    /// Options of a test database: one data column family.
    fn one_family() -> DbOptions {
        DbOptions {
            data_column_families: 1,
            ..DbOptions::default()
        }
    }

    fn open_db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = Db::open(dir.path(), one_family()).unwrap();
        (dir, db)
    }

    #[test]
    fn memtables_insert_with_hints_from_one_thread() {
        let (dir, db) = open_db();
        drop(db);
        let options = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("OPTIONS-")
            })
            .max()
            .expect("RocksDB wrote an OPTIONS file");
        let text = std::fs::read_to_string(options).unwrap();
        // One section per column family: cf-0's, then meta's.
        let hint = |family: &str| {
            let from = text.find(&format!("[CFOptions \"{family}\"]")).unwrap();
            let rest = &text[from..];
            let line = rest
                .lines()
                .find(|l| {
                    l.trim_start()
                        .starts_with("memtable_insert_with_hint_prefix_extractor=")
                })
                .unwrap();
            line.trim().to_string()
        };
        assert_eq!(
            hint("cf-0"),
            format!("memtable_insert_with_hint_prefix_extractor=rocksdb.CappedPrefix.{DATA_HINT_PREFIX}")
        );
        assert_eq!(
            hint("meta"),
            format!("memtable_insert_with_hint_prefix_extractor=rocksdb.CappedPrefix.{META_HINT_PREFIX}")
        );
        assert!(text.contains("allow_concurrent_memtable_write=false"));
    }

    fn replace(instance: InstanceId, id: &SectionId, data: &[u8], size_before: u64) -> Effect {
        Effect::ReplaceData {
            column_family: 0,
            instance,
            section_id: id.clone(),
            data: data.to_vec(),
            size_before,
        }
    }

    fn done_at(seq: u64) -> Committed {
        Committed {
            outcome: crate::state::Outcome::Done,
            position: Some(crate::wal::record::Position {
                instance: InstanceId(1),
                epoch: Epoch(1),
                seq: Seq(seq),
            }),
        }
    }

    #[test]
    fn origins_are_kept_per_session_up_to_the_bound() {
        let (_dir, db) = open_db();
        let origin = |session, request| Origin { session, request };
        const S: i64 = 1_000_000_000;
        let writes: Vec<_> = [(1, 1), (1, 2), (2, 1)]
            .into_iter()
            .map(|(s, r)| (origin(s, r), done_at(r), 100 * S))
            .collect();
        db.apply_with(&[], &writes, Lsn(1), 2).unwrap();
        assert_eq!(db.origin(origin(1, 2)).unwrap(), Some(done_at(2)));
        assert_eq!(db.origin(origin(1, 3)).unwrap(), None);
        // Request ORIGINS_PER_SESSION + 2 of session 1 pushes out 1.
        let far = ORIGINS_PER_SESSION + 2;
        db.apply_with(&[], &[(origin(1, far), done_at(far), 200 * S)], Lsn(2), 2)
            .unwrap();
        assert_eq!(db.origin(origin(1, 1)).unwrap(), None);
        assert_eq!(db.origin(origin(1, 2)).unwrap(), Some(done_at(2)));
        assert_eq!(
            db.origin(origin(2, 1)).unwrap(),
            Some(done_at(1)),
            "other sessions stay"
        );
        // A stored time may lag the last write by SESSION_MARK_NS: session
        // 2 (last write at 100 s) is not forgotten for idle_before 150 s,
        // it is for 161 s.
        assert_eq!(db.forget_idle_sessions(150 * S).unwrap(), 0);
        assert_eq!(db.forget_idle_sessions(161 * S).unwrap(), 1);
        assert_eq!(db.origin(origin(2, 1)).unwrap(), None);
        assert_eq!(db.origin(origin(1, far)).unwrap(), Some(done_at(far)));
        assert_eq!(db.forget_idle_sessions(161 * S).unwrap(), 0);
    }

    #[test]
    fn origins_applied_before_a_reopen_are_found_whatever_comes_first_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let origin = |session, request| Origin { session, request };
        let at = |session, r| (origin(session, r), done_at(r), 1_000);
        {
            let (db, _) = Db::open(dir.path(), one_family()).unwrap();
            // Pipelined requests may apply out of order: 60 before 10.
            db.apply_with(&[], &[at(1, 60), at(1, 10), at(4, 60)], Lsn(1), 2)
                .unwrap();
            db.flush_all().unwrap();
            // Session 6's origin in a second table file.
            db.apply_with(&[], &[at(6, 9)], Lsn(2), 2).unwrap();
            db.flush_all().unwrap();
        }
        let (db, _) = Db::open(dir.path(), one_family()).unwrap();
        // Session 1: the first thing after the open is the lookup of an
        // origin below the stored ones, then its put.
        assert_eq!(db.origin(origin(1, 5)).unwrap(), None);
        db.apply_with(&[], &[at(1, 5)], Lsn(3), 2).unwrap();
        for r in [5, 10, 60] {
            assert_eq!(db.origin(origin(1, r)).unwrap(), Some(done_at(r)), "{r}");
        }
        for r in [6, 59, 61, u64::MAX] {
            assert_eq!(db.origin(origin(1, r)).unwrap(), None, "{r}");
        }
        // Session 4: the first thing after the open is a put below the
        // stored ones, without a lookup before it.
        db.apply_with(&[], &[at(4, 5)], Lsn(4), 2).unwrap();
        assert_eq!(db.origin(origin(4, 60)).unwrap(), Some(done_at(60)));
        assert_eq!(db.origin(origin(4, 5)).unwrap(), Some(done_at(5)));
        assert_eq!(db.origin(origin(4, 61)).unwrap(), None);
        assert_eq!(db.origin(origin(6, 9)).unwrap(), Some(done_at(9)));
        // Raised by a put after the lookup, including the largest number,
        // whose sweep removes the session's others.
        db.apply_with(&[], &[at(1, u64::MAX)], Lsn(5), 2).unwrap();
        assert_eq!(
            db.origin(origin(1, u64::MAX)).unwrap(),
            Some(done_at(u64::MAX))
        );
        for r in [5, 10, 60] {
            assert_eq!(db.origin(origin(1, r)).unwrap(), None, "swept {r}");
        }
        // In the memtable only: a session never seen, and one whose first
        // touch is a put.
        assert_eq!(db.origin(origin(2, 1)).unwrap(), None);
        db.apply_with(&[], &[at(3, 4)], Lsn(6), 2).unwrap();
        assert_eq!(db.origin(origin(3, 4)).unwrap(), Some(done_at(4)));
        assert_eq!(db.origin(origin(3, 5)).unwrap(), None);
        // The idle sweep drops the marks of sessions 2 and 6 (only looked
        // up since the open) and keeps the others; lookups after it still
        // find what is stored.
        assert_eq!(db.sessions.lock().unwrap().len(), 5);
        db.forget_idle_sessions(0).unwrap();
        assert_eq!(db.sessions.lock().unwrap().len(), 3);
        assert_eq!(db.origin(origin(6, 9)).unwrap(), Some(done_at(9)));
        assert_eq!(db.origin(origin(4, 60)).unwrap(), Some(done_at(60)));
        assert_eq!(db.origin(origin(3, 4)).unwrap(), Some(done_at(4)));
    }

    #[test]
    fn a_busy_session_costs_no_tombstone_and_no_time_write_per_request() {
        let (_dir, db) = open_db();
        let origin = |request| Origin {
            session: 7,
            request,
        };
        let stored_time = |db: &Db| {
            let value = db.get_meta(&keys::session(7)).unwrap().unwrap();
            i64::from_le_bytes(value.try_into().unwrap())
        };
        let last = ORIGINS_PER_SESSION + 200;
        for request in 1..=last {
            let now = 1_000 + request as i64;
            db.apply_with(
                &[],
                &[(origin(request), done_at(request), now)],
                Lsn(request),
                2,
            )
            .unwrap();
        }
        // Written once: every request came within SESSION_MARK_NS of the first.
        assert_eq!(stored_time(&db), 1_001);
        // Swept at the first request past the bound, then every
        // ORIGIN_SWEEP_STEP: the last sweep was below 1 + 3 steps = 193.
        let swept = 1 + 3 * ORIGIN_SWEEP_STEP;
        assert_eq!(db.origin(origin(swept - 1)).unwrap(), None);
        assert_eq!(db.origin(origin(swept)).unwrap(), Some(done_at(swept)));
        let kept = db.scan_meta(&keys::origin(origin(0))[..9]).unwrap().len() as u64;
        assert_eq!(kept, last - swept + 1);
        assert!(kept <= ORIGINS_PER_SESSION + ORIGIN_SWEEP_STEP);
        // A minute later the time is written again.
        let later = 1_000 + SESSION_MARK_NS + last as i64;
        db.apply_with(
            &[],
            &[(origin(last + 1), done_at(last + 1), later)],
            Lsn(last + 1),
            2,
        )
        .unwrap();
        assert_eq!(stored_time(&db), later);
    }

    #[test]
    fn a_chunk_index_past_u32_is_refused_not_wrapped() {
        let (_dir, db) = open_db();
        let (instance, id) = (InstanceId(1), SectionId::new("a"));
        db.apply(&[replace(instance, &id, b"chunk zero", 0)], Lsn(1), 2)
            .unwrap();
        // Offset 2^48 is chunk 2^32: its index does not fit the key's u32.
        let wrapping = Effect::WriteData {
            column_family: 0,
            instance,
            section_id: id.clone(),
            offset: 1 << 48,
            data: b"X".to_vec(),
            size_after: (1 << 48) + 1,
        };
        assert!(db.apply(&[wrapping], Lsn(2), 2).is_err());
        assert_eq!(
            db.snapshot().read_data(0, instance, &id, 0, 10).unwrap(),
            b"chunk zero"
        );
    }

    fn section_meta(size: u64) -> SectionMeta {
        SectionMeta {
            size,
            expiration_time: ckpt_proto::TIME_END,
            state: SectionState::Valid,
            last_update: 1,
        }
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }

    /// Everything the readers see: sections (meta scan), their data
    /// (chunk scan), the data keys' count and the metadata point reads.
    fn observe(db: &Db, instance: InstanceId) -> Vec<String> {
        let view = db.snapshot();
        let mut seen = vec![format!("{:?}", view.instance(instance).unwrap())];
        for (id, meta) in view.sections(instance).unwrap() {
            let data = view.read_data(0, instance, &id, 0, meta.size).unwrap();
            let sum: u64 = data.iter().map(|&b| u64::from(b)).sum();
            seen.push(format!("{id}: {meta:?} sum {sum}"));
            assert_eq!(view.section(instance, &id).unwrap(), Some(meta));
        }
        seen.push(format!("keys {}", db.count_data_keys(0, instance).unwrap()));
        seen
    }

    /// A read-only open applies batches to memory; every read then answers
    /// as RocksDB answers after the same batches were written: puts over
    /// range deletions, range deletions over earlier puts, in one batch and
    /// across batches, over data RocksDB already holds.
    #[test]
    fn the_in_memory_layer_reads_as_rocksdb_after_the_same_batches() {
        let base = tempfile::tempdir().unwrap();
        let (instance, a, b) = (InstanceId(1), SectionId::new("a"), SectionId::new("b"));
        let meta = |memory_used| InstanceMeta {
            name: CheckpointName::new("n").unwrap(),
            attributes: CreationAttributes {
                creation_flags: CreationFlags::WR_ACTIVE_REPLICA,
                checkpoint_size: 1 << 30,
                retention_duration_ns: -1,
                max_sections: 4,
                max_section_size: 1 << 28,
                max_section_id_size: 8,
            },
            column_family: 0,
            unlinked: false,
            epoch: Epoch(1),
            seq: Seq(memory_used),
            generated_next: 0,
            section_count: 2,
            memory_used,
            created_at: 0,
            stale: false,
        };
        let big: Vec<u8> = (0..40 * CHUNK_BYTES).map(|i| (i % 253) as u8).collect();
        {
            let (db, _) = Db::open(base.path(), one_family()).unwrap();
            let first = [
                Effect::PutInstance {
                    instance,
                    meta: meta(1),
                },
                Effect::PutSection {
                    instance,
                    section_id: a.clone(),
                    meta: section_meta(big.len() as u64),
                },
                replace(instance, &a, &big, 0),
                Effect::PutSection {
                    instance,
                    section_id: b.clone(),
                    meta: section_meta(3 * CHUNK_BYTES),
                },
                replace(instance, &b, &big[..3 * CHUNK_BYTES as usize], 0),
            ];
            db.apply(&first, Lsn(1), 2).unwrap();
            db.flush_all().unwrap();
        }
        let copy = tempfile::tempdir().unwrap();
        copy_dir(base.path(), copy.path());
        let batches: Vec<Vec<Effect>> = vec![
            // Shrink a (a range deletion of 39 chunks), then write into it
            // past its new end in the same batch.
            vec![
                replace(instance, &a, &big[..1000], big.len() as u64),
                Effect::WriteData {
                    column_family: 0,
                    instance,
                    section_id: a.clone(),
                    offset: 5 * CHUNK_BYTES + 10,
                    data: vec![7; 100_000],
                    size_after: 5 * CHUNK_BYTES + 100_010,
                },
                Effect::PutSection {
                    instance,
                    section_id: a.clone(),
                    meta: section_meta(5 * CHUNK_BYTES + 100_010),
                },
                Effect::PutInstance {
                    instance,
                    meta: meta(2),
                },
            ],
            // Into a chunk RocksDB holds; then b removed and re-created.
            vec![
                Effect::WriteData {
                    column_family: 0,
                    instance,
                    section_id: b.clone(),
                    offset: CHUNK_BYTES - 5,
                    data: vec![9; 20],
                    size_after: 3 * CHUNK_BYTES,
                },
                Effect::RemoveData {
                    column_family: 0,
                    instance,
                    section_id: b.clone(),
                    size_before: 3 * CHUNK_BYTES,
                },
                Effect::DeleteSection {
                    instance,
                    section_id: b.clone(),
                },
            ],
            vec![
                Effect::PutSection {
                    instance,
                    section_id: b.clone(),
                    meta: section_meta(4),
                },
                replace(instance, &b, b"back", 0),
                Effect::PutInstance {
                    instance,
                    meta: meta(3),
                },
            ],
        ];
        let (written, _) = Db::open(base.path(), one_family()).unwrap();
        let secondary = tempfile::tempdir().unwrap();
        let (memory, _) = Db::open_read_only(copy.path(), secondary.path()).unwrap();
        assert!(memory.is_read_only() && !written.is_read_only());
        assert_eq!(observe(&written, instance), observe(&memory, instance));
        for (index, batch) in batches.iter().enumerate() {
            let lsn = Lsn(2 + index as u64);
            written.apply(batch, lsn, 2).unwrap();
            memory.apply(batch, lsn, 2).unwrap();
            assert_eq!(
                observe(&written, instance),
                observe(&memory, instance),
                "after batch {index}"
            );
        }
        assert_eq!(written.reload().unwrap().applied, Lsn(4));
        assert_eq!(memory.reload().unwrap().applied, Lsn(4));
        // Destroying the instance: its metadata and data ranges go.
        let destroy = [
            Effect::ClearInstance {
                column_family: 0,
                instance,
            },
            Effect::DeleteInstance { instance },
        ];
        written.apply(&destroy, Lsn(5), 2).unwrap();
        memory.apply(&destroy, Lsn(5), 2).unwrap();
        assert_eq!(observe(&written, instance), observe(&memory, instance));
        assert_eq!(memory.count_data_keys(0, instance).unwrap(), 0);
        // Nothing reached the copy's files: a fresh open sees batch 0.
        drop(memory);
        let (fresh, loaded) = Db::open_read_only(copy.path(), secondary.path()).unwrap();
        assert_eq!(loaded.applied, Lsn(1));
        assert_eq!(fresh.count_data_keys(0, instance).unwrap(), 43);
    }

    #[test]
    fn removing_or_replacing_a_huge_sparse_section_is_a_range_delete() {
        let (_dir, db) = open_db();
        let (instance, id) = (InstanceId(1), SectionId::new("a"));
        // 64 GiB: a million chunk keys if each were deleted on its own.
        let size_before = 1u64 << 36;
        let remove = Effect::RemoveData {
            column_family: 0,
            instance,
            section_id: id.clone(),
            size_before,
        };
        let mut batch = RocksBatch {
            db: &db,
            batch: WriteBatch::default(),
        };
        db.apply_effect(&mut batch, &mut Overlay::default(), &remove)
            .unwrap();
        assert!(batch.batch.len() <= 2, "{} operations", batch.batch.len());
        let mut batch = RocksBatch {
            db: &db,
            batch: WriteBatch::default(),
        };
        db.apply_effect(
            &mut batch,
            &mut Overlay::default(),
            &replace(instance, &id, b"small", size_before),
        )
        .unwrap();
        assert!(batch.batch.len() <= 3, "{} operations", batch.batch.len());
    }
}
