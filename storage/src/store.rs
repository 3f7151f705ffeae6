//! The store: one node's durable checkpoints.
//!
//! Write path (one group-commit thread, [`Writer`]):
//! 1. take every queued request, up to the batch bounds;
//! 2. validate each against the state machine; a rejected one is answered
//!    at once and leaves no trace; accepted ones become records;
//! 3. append all records of the batch to the WAL with one write;
//! 4. apply their effects to RocksDB as one `WriteBatch` carrying the new
//!    applied position, so RocksDB always holds a prefix of the log;
//! 5. answer requests that asked for [`Durability::Written`] (the
//!    WR_ACTIVE_REPLICA_WEAK contract: visible now, durable with this batch);
//! 6. `fdatasync` once for the whole batch, then answer the rest.
//!
//! Because RocksDB may receive a batch before its fsync, after a power cut
//! RocksDB can be *ahead* of the log; recovery then simply continues the log
//! after RocksDB's applied position. It can never be behind what was
//! acknowledged as durable: those records are in the log and are replayed.
//!
//! Failures: a failed append (full disk) is undone — the segment is cut back
//! and the in-memory state reloaded from RocksDB — and answered NO_SPACE;
//! the store keeps serving. A failed fsync, a failed undo or a RocksDB
//! write error poisons the store: every later write *and read* fails with a
//! message naming the cause, because the durable state is no longer known
//! and RocksDB may hold a batch that was never acknowledged as durable. A
//! writer, fsync or checkpoint thread that dies (a panic) leaves the store
//! dead: [`Store::failure`] says so and every request fails naming the
//! thread. Either way only a restart (recovery from the log) helps.
//!
//! Reads never touch the writer: they read a RocksDB snapshot.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ckpt_proto::{
    now_ns, CheckpointName, CheckpointStatus, CkptError, CkptResult, ErrorCode, ReadElement,
    SectionDescriptor, SectionId, ELEMENTS_MAX, TIME_END, UPDATE_BYTES_MAX,
};

use crate::db::{Db, DbOptions, SESSION_IDLE_NS};
use crate::io::{OsFs, WalFile, WalFs};
use crate::lock::DataDirLock;
use crate::reserve::Reserve;
use crate::snapshot::{EntriesAfter, Fnv64, SnapshotPart, SNAPSHOT_PART_BYTES};
use crate::state::{
    stale_error, Backing, Committed, Effect, InstanceMeta, Op, Outcome, SectionMeta, StateMachine,
    Totals,
};
use crate::wal::history::{
    instance_records_after, records_after_hinted, records_after_many, InstanceHistory, SegmentReads,
};
use crate::wal::mark;
use crate::wal::record::{
    encode_record, Entry, Epoch, InstanceId, Lsn, Origin, Position, Record, RecordBody, Seq,
};
use crate::wal::segment::{
    check_durable_end, next_record_after, parse_segment_name, scan_segment_with, SegmentEnd,
    TailRule,
};
use crate::wal::writer::{RotateError, SyncHandle, WalWriter};

/// How long a request whose answer was dropped waits for the dying thread
/// that dropped it to record its death (unwinding takes microseconds; the
/// bound only keeps a caller from waiting forever on a bug).
const DEATH_RECORD_WAIT_MS: u64 = 5_000;

/// How often the writer forgets the applied origins of sessions idle for
/// [`SESSION_IDLE_NS`].
const SESSION_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// When a write is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// After the record is durable in the log (`fdatasync` returned).
    Durable,
    /// After the record is written and applied; durable with the batch's
    /// fsync that follows (WR_ACTIVE_REPLICA_WEAK).
    Written,
}

/// Store configuration. Every queue and batch has a bound.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Data directory: RocksDB in `db/`, the log in `wal/`.
    pub data_dir: PathBuf,
    /// A segment is closed once it holds this many bytes.
    pub segment_bytes_max: u64,
    /// Whether the next segment is zero-filled and synced ahead of time by
    /// a helper thread, so that each group commit's fsync overwrites
    /// existing blocks instead of growing the file (docs/storage.md,
    /// "Preallocated segments"). Costs one segment of disk space.
    pub preallocate_segments: bool,
    /// Segments kept at most: past this the writer makes RocksDB durable
    /// itself instead of waiting for the background checkpoint, so the log
    /// stays bounded even when the background falls behind.
    pub wal_segments_max: usize,
    /// Most requests in one group commit.
    pub batch_requests_max: usize,
    /// Most record bytes in one group commit (one request may exceed it alone).
    pub batch_bytes_max: usize,
    /// Requests queued for the writer before `submit` blocks.
    pub queue_depth_max: usize,
    /// Batches written and waiting for their fsync before the writer waits.
    pub sync_queue_max: usize,
    /// Whether fsyncs run on their own thread, overlapping the next batch's
    /// write and apply (true), or on the writer thread (false: one thread
    /// hop less per request, no overlap). With the thread, a batch that
    /// finds it idle and nothing queued behind is still synced on the
    /// writer thread: nothing could overlap, and the hop is saved.
    pub fsync_thread: bool,
    /// Records applied per RocksDB batch during recovery.
    pub recovery_batch_records: usize,
    /// Bytes kept back in a preallocated file in the data directory, freed
    /// so that recovery and deletes work on a full disk (see [`crate::reserve`]);
    /// 0 keeps none.
    pub reserve_bytes: u64,
    /// Closed segments RocksDB already covers are kept while they total no
    /// more than this, bytes, so recent records can be read back
    /// ([`Store::instance_records_after`]) — across restarts too. 0 trims
    /// every covered segment at once.
    pub wal_history_bytes: u64,
    /// How often the fsync thread also syncs the durable mark, ms. Between
    /// syncs the mark on disk may lag the log's durable end; a bit flip in
    /// a record acknowledged within that lag, followed by a power cut, is
    /// taken for a torn tail (docs/storage.md, "Torn versus corrupt"), so
    /// this bounds that window. The sync runs after the batch is answered.
    pub mark_sync_interval_ms: u64,
    /// Most bytes of log kept for [`Store::set_wal_hold`]: segments from
    /// the hold on are kept while they total at most this; past it they
    /// are trimmed as usual and readers find the entries gone.
    pub wal_hold_bytes_max: u64,
    /// RocksDB tuning.
    pub db: DbOptions,
    /// Where [`Store::open`] reports recovery's progress as it goes (a
    /// server's readiness endpoint reads it); `None` reports nowhere.
    pub recovery_progress: Option<Arc<RecoveryProgress>>,
}

/// Recovery's progress while [`Store::open`] replays the log.
#[derive(Debug, Default)]
pub struct RecoveryProgress {
    /// Records replayed so far.
    pub replayed: AtomicU64,
    /// Records to replay: from the durable mark once it is read (it may
    /// lag the log's end by `mark_sync_interval_ms`, so it is raised to
    /// `replayed` when the log holds more); 0 until then.
    pub total: AtomicU64,
}

impl StoreConfig {
    /// Defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        StoreConfig {
            data_dir: data_dir.into(),
            segment_bytes_max: 64 * 1024 * 1024,
            preallocate_segments: true,
            wal_segments_max: 16,
            batch_requests_max: 1024,
            batch_bytes_max: 16 * 1024 * 1024,
            queue_depth_max: 8192,
            sync_queue_max: 64,
            fsync_thread: true,
            recovery_batch_records: 4096,
            reserve_bytes: 64 * 1024 * 1024,
            wal_history_bytes: 0,
            mark_sync_interval_ms: 1000,
            wal_hold_bytes_max: 1024 * 1024 * 1024,
            db: DbOptions::default(),
            recovery_progress: None,
        }
    }
}

/// What recovery found.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// RocksDB's applied position at open.
    pub applied_at_open: u64,
    /// Records replayed from the log into RocksDB.
    pub replayed: u64,
    /// A torn tail that was cut off: segment, offset, reason.
    pub torn_tail: Option<(String, u64, String)>,
    /// Whole, checksummed records found in the torn tail and cut off with
    /// it (pages written back out of order): written, never acknowledged
    /// as durable.
    pub torn_records: u64,
    /// The lsn the next record gets.
    pub next_lsn: u64,
    /// Segments found.
    pub segments: usize,
}

/// Upper bounds of [`StoreStats::fsync_ns`]'s buckets: 50 µs to 10 s
/// (the [`WriteStages`] bounds from 50 µs on).
pub const FSYNC_BUCKETS_NS: &[u64] = STAGE_BUCKETS_NS.split_at(5).1;

/// Upper bounds of [`StoreStats::batch_records`]'s buckets: 1 to 4096.
pub const BATCH_RECORDS_BUCKETS: &[u64] =
    &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096];

/// Upper bounds of the [`WriteStages`] buckets, ns: 1 µs to 10 s.
pub const STAGE_BUCKETS_NS: &[u64] = &[
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    // FSYNC_BUCKETS_NS from here.
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    10_000_000_000,
];

/// Where the time of requests answered after their fsync went, hop by
/// hop inside the store: one histogram per stage, ns, one value per
/// request, so that the stages' means add up to the store's share of a
/// durable write's latency.
#[derive(Debug)]
pub struct WriteStages {
    /// Submitted, until the writer thread takes it into a batch.
    pub queue: Buckets,
    /// The batch taken, until it is written to the log and applied.
    pub commit: Buckets,
    /// Written and applied, until the fsync that covers it starts (behind
    /// an fsync already running, or the hand-off to the fsync thread).
    pub sync_wait: Buckets,
    /// The `fdatasync` (or those of two segments) that made it durable.
    pub fsync: Buckets,
    /// The fsync done, until its reply is called (the listeners and the
    /// replies of the batch's earlier requests come first).
    pub answer: Buckets,
}

impl WriteStages {
    fn new() -> WriteStages {
        WriteStages {
            queue: Buckets::new(STAGE_BUCKETS_NS),
            commit: Buckets::new(STAGE_BUCKETS_NS),
            sync_wait: Buckets::new(STAGE_BUCKETS_NS),
            fsync: Buckets::new(STAGE_BUCKETS_NS),
            answer: Buckets::new(STAGE_BUCKETS_NS),
        }
    }

    /// The stages in the order a request passes them, with their names.
    pub fn named(&self) -> [(&'static str, &Buckets); 5] {
        [
            ("queue", &self.queue),
            ("commit", &self.commit),
            ("sync_wait", &self.sync_wait),
            ("fsync", &self.fsync),
            ("answer", &self.answer),
        ]
    }
}

/// Nanoseconds from `earlier` to `later` (0 if `later` is not later).
fn ns_between(earlier: Instant, later: Instant) -> u64 {
    u64::try_from(later.saturating_duration_since(earlier).as_nanos()).unwrap_or(u64::MAX)
}

/// A histogram the store's threads count into (one relaxed add per value)
/// and a metrics endpoint reads at any time.
#[derive(Debug)]
pub struct Buckets {
    bounds: &'static [u64],
    /// One per bound (values up to it and above the previous one), then
    /// one for values above the last bound.
    counts: Vec<AtomicU64>,
    sum: AtomicU64,
}

impl Buckets {
    /// Empty buckets with these upper bounds (inclusive, increasing).
    pub fn new(bounds: &'static [u64]) -> Buckets {
        Buckets {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// Counts one value.
    pub fn observe(&self, value: u64) {
        let bucket = self.bounds.partition_point(|&bound| bound < value);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// Counts the nanoseconds since `since`.
    pub fn observe_since(&self, since: Instant) {
        self.observe(ns_between(since, Instant::now()));
    }

    /// The upper bounds.
    pub fn bounds(&self) -> &'static [u64] {
        self.bounds
    }

    /// The cumulative count at each bound, the total count and the sum
    /// (read without a lock: a value counted meanwhile may be in one and
    /// not yet in another).
    pub fn snapshot(&self) -> (Vec<u64>, u64, u64) {
        let mut running = 0;
        let mut cumulative = Vec::with_capacity(self.bounds.len());
        for count in &self.counts[..self.bounds.len()] {
            running += count.load(Ordering::Relaxed);
            cumulative.push(running);
        }
        let total = running + self.counts[self.bounds.len()].load(Ordering::Relaxed);
        (cumulative, total, self.sum.load(Ordering::Relaxed))
    }
}

/// Counters for metrics.
#[derive(Debug)]
pub struct StoreStats {
    /// Records appended.
    pub records: AtomicU64,
    /// Group commits.
    pub batches: AtomicU64,
    /// Bytes appended to the log.
    pub wal_bytes: AtomicU64,
    /// fdatasync calls of the log.
    pub fsyncs: AtomicU64,
    /// Batches the writer thread synced itself, the fsync thread being idle
    /// and no request queued (see [`StoreConfig::fsync_thread`]).
    pub syncs_on_writer: AtomicU64,
    /// RocksDB durability points (flush_wal / flush).
    pub rocksdb_flushes: AtomicU64,
    /// Segments deleted.
    pub segments_deleted: AtomicU64,
    /// Segments started on a zero-filled spare (see
    /// [`StoreConfig::preallocate_segments`]).
    pub segments_preallocated: AtomicU64,
    /// How long each fdatasync of the log took, ns.
    pub fsync_ns: Buckets,
    /// Records per group commit.
    pub batch_records: Buckets,
    /// Where durable requests' time went inside the store.
    pub write_stages: WriteStages,
}

impl Default for StoreStats {
    fn default() -> Self {
        StoreStats {
            records: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            wal_bytes: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            syncs_on_writer: AtomicU64::new(0),
            rocksdb_flushes: AtomicU64::new(0),
            segments_deleted: AtomicU64::new(0),
            segments_preallocated: AtomicU64::new(0),
            fsync_ns: Buckets::new(FSYNC_BUCKETS_NS),
            batch_records: Buckets::new(BATCH_RECORDS_BUCKETS),
            write_stages: WriteStages::new(),
        }
    }
}

type Reply = Box<dyn FnOnce(CkptResult<Committed>) + Send>;

/// Called by the writer with every durable batch's records, in log order.
pub type CommitListener = Arc<dyn Fn(&[Record]) + Send + Sync>;

/// Called on the writer thread with every batch's entries right after they
/// were appended and applied, before their fsync (to ship them meanwhile).
pub type AppendListener = Arc<dyn Fn(&[Entry]) + Send + Sync>;

/// Called after each fsync with the last durable position of every
/// instance the synced batches changed.
pub type DurableListener = Arc<dyn Fn(&[Position]) + Send + Sync>;

#[derive(Clone, Default)]
struct Listeners {
    commit: Option<CommitListener>,
    append: Option<AppendListener>,
    durable: Option<DurableListener>,
}

/// What the writer does for a request.
enum Work {
    /// Validate an operation into entries (on the active replica).
    Plan { op: Op, origin: Option<Origin> },
    /// Append and apply entries ordered by the active replica (a backup);
    /// committed in a batch of its own, so a refusal undoes nothing else.
    Replicated { entries: Vec<Entry> },
    /// A node-local change of an instance.
    Local(LocalWork),
}

enum LocalWork {
    BeginEpoch { instance: InstanceId, epoch: Epoch },
    Discard { instance: InstanceId },
}

impl Work {
    fn bytes(&self) -> usize {
        match self {
            Work::Plan { op, .. } => op_bytes(op),
            Work::Replicated { entries } => entries.iter().map(Entry::encoded_len).sum(),
            Work::Local(_) => 64,
        }
    }

    /// Accepted on a full disk: shrinks what is stored, or is tiny and
    /// needed to keep replicas consistent.
    fn frees_space(&self) -> bool {
        match self {
            Work::Plan { op, .. } => frees_space(op),
            Work::Local(LocalWork::Discard { .. } | LocalWork::BeginEpoch { .. }) => true,
            Work::Replicated { .. } => false,
        }
    }
}

struct Request {
    work: Work,
    durability: Durability,
    now: i64,
    reply: Reply,
    /// When it was submitted.
    queued: Instant,
}

/// An operation [`Store::try_submit`] could not queue without blocking.
pub struct Submission {
    request: Box<Request>,
    sender: SyncSender<Request>,
}

impl Submission {
    /// Queues the operation, blocking while the queue is full; its reply
    /// is called as for [`Store::submit`].
    pub fn wait(self) {
        if let Err(mpsc::SendError(request)) = self.sender.send(*self.request) {
            (request.reply)(Err(CkptError::new(
                ErrorCode::NotInitialized,
                "store is closed",
            )));
        }
    }
}

struct Shared {
    /// See [`Store::take_not_kept_forever`].
    not_kept_forever: Mutex<Option<Vec<(InstanceId, InstanceMeta)>>>,
    /// The state machine's totals as of the last batch (see [`Store::totals`]).
    totals: Mutex<Totals>,
    db: Db,
    poisoned: Mutex<Option<String>>,
    /// Why a thread of the store died, once one has.
    dead: Mutex<Option<String>>,
    /// Set before the threads are told to stop, so their exit is not taken
    /// for a death.
    closing: AtomicBool,
    stats: StoreStats,
    applied: AtomicU64,
    durable_applied: AtomicU64,
    stopping: AtomicBool,
    segments: AtomicU64,
    listeners: std::sync::RwLock<Listeners>,
    /// The lowest lsn replication still wants to read back (see
    /// [`Store::set_wal_hold`]).
    wal_hold: AtomicU64,
    /// Bytes of WAL segments on disk (approximate: updated per batch).
    wal_bytes_on_disk: AtomicU64,
    reserve: Reserve,
    /// Held by the one caller looking for space to end a disk-full episode.
    disk_space_checked: Mutex<()>,
    /// Whether the last log write failed for lack of space (and the reserve
    /// is released): only operations that free space are accepted.
    disk_full: AtomicBool,
}

impl Shared {
    fn listeners(&self) -> Listeners {
        self.listeners
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn poison(&self, cause: String) {
        tracing::error!(%cause, "store poisoned: refusing further writes");
        let mut poisoned = self.poisoned.lock().unwrap_or_else(|p| p.into_inner());
        poisoned.get_or_insert(cause);
    }

    fn poisoned_error(&self) -> Option<CkptError> {
        let poisoned = self.poisoned.lock().unwrap_or_else(|p| p.into_inner());
        poisoned.as_ref().map(|cause| {
            CkptError::new(
                ErrorCode::Library,
                format!("store is poisoned after a storage failure ({cause}); restart to recover"),
            )
        })
    }

    fn dead_error(&self) -> Option<CkptError> {
        let dead = self.dead.lock().unwrap_or_else(|p| p.into_inner());
        dead.as_ref().map(|cause| {
            CkptError::new(
                ErrorCode::Library,
                format!("store is dead: {cause}; restart to recover"),
            )
        })
    }

    /// Reads are refused once the store is poisoned or dead: RocksDB may
    /// then hold a batch whose fsync failed (never acknowledged as durable,
    /// possibly gone after a power cut), and a read must not return it.
    fn check_readable(&self) -> CkptResult<()> {
        match self.poisoned_error().or_else(|| self.dead_error()) {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// A log write failed for lack of space: logged once per episode; the
    /// reserve is released so that deletes can be logged and applied.
    fn mark_disk_full(&self, detail: &str) {
        if self.disk_full.swap(true, Ordering::AcqRel) {
            return;
        }
        let released = self.reserve.release();
        tracing::error!(
            %detail,
            reserve_bytes = self.reserve.bytes(),
            reserve_released = ?released,
            "disk full: writes get NO_SPACE; deletes are still accepted, using the reserve"
        );
    }

    /// Ends a disk-full episode once the file system has room for the
    /// reserve twice over and the reserve is held again; true if the disk
    /// is (now) not full.
    fn recover_disk_space(&self) -> bool {
        if !self.disk_full.load(Ordering::Acquire) {
            return true;
        }
        // One caller at a time looks (a statvfs, then re-creating the
        // reserve file): the others are refused as still full rather than
        // queue behind it or race it on the reserve file.
        let Ok(_looking) = self.disk_space_checked.try_lock() else {
            return false;
        };
        if !self.reserve.room_to_hold() || self.reserve.hold().is_err() {
            return false;
        }
        if self.disk_full.swap(false, Ordering::AcqRel) {
            tracing::info!(
                reserve_bytes = self.reserve.bytes(),
                "disk space available again: reserve re-created, all writes accepted"
            );
        }
        true
    }

    fn record_death(&self, cause: String) {
        tracing::error!(%cause, "a store thread died: the store refuses every request");
        let mut dead = self.dead.lock().unwrap_or_else(|p| p.into_inner());
        dead.get_or_insert(cause);
    }
}

/// Runs a store thread's body and records its death — a panic, or (for the
/// writer, `exit_is_death`) an exit while the store is not closing — so that
/// it cannot pass unnoticed while requests queue up behind it. The fsync and
/// checkpoint threads exit whenever the writer does, so only their panics
/// count: the writer's exit is the cause to report.
fn watched(shared: &Shared, thread: &str, exit_is_death: bool, body: impl FnOnce()) {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(()) if !exit_is_death || shared.closing.load(Ordering::Acquire) => {}
        Ok(()) => shared.record_death(format!("the {thread} thread exited")),
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_string());
            shared.record_death(format!("the {thread} thread panicked: {message}"));
        }
    }
}

struct DbBacking<'a>(&'a Db);

impl Backing for DbBacking<'_> {
    fn load_sections(
        &self,
        instance: InstanceId,
    ) -> CkptResult<std::collections::BTreeMap<SectionId, SectionMeta>> {
        self.0.load_sections(instance)
    }

    fn take_column_family(&self, instance: InstanceId) -> CkptResult<u32> {
        Ok(self.0.column_family_for(instance))
    }

    fn expiry_candidates(&self, now: i64) -> CkptResult<Vec<(InstanceId, SectionId)>> {
        self.0.expiry_candidates(now)
    }
}

/// One node's checkpoint store. Cheap to share behind an `Arc`.
pub struct Store {
    shared: Arc<Shared>,
    sender: Option<SyncSender<Request>>,
    writer: Option<JoinHandle<()>>,
    helpers: Vec<JoinHandle<()>>,
    report: RecoveryReport,
    /// The log directory, for reading records back.
    wal_fs: Arc<dyn WalFs>,
    // Released last, after every thread using the directory stopped.
    _lock: DataDirLock,
}

impl Store {
    /// Opens the store in `config.data_dir`, recovering from the log.
    ///
    /// # Errors
    /// `IN_USE` if another process holds the directory; `LIBRARY` for IO
    /// errors and for corruption before the log's tail (naming segment and
    /// offset).
    pub fn open(config: StoreConfig) -> CkptResult<Store> {
        let fs = OsFs::new(config.data_dir.join("wal"))
            .map_err(|e| io_error("creating WAL directory", &e))?;
        Store::open_with_fs(config, Arc::new(fs))
    }

    /// Like [`Store::open`] with the log on `fs` (tests use a `FaultFs`).
    ///
    /// # Errors
    /// See [`Store::open`].
    pub fn open_with_fs(config: StoreConfig, fs: Arc<dyn WalFs>) -> CkptResult<Store> {
        let lock = DataDirLock::acquire(&config.data_dir)?;
        // Free the reserve first: opening RocksDB writes a MANIFEST and
        // recovery applies the log, which must work on a full disk too.
        let reserve = Reserve::new(&config.data_dir, config.reserve_bytes);
        if let Err(error) = reserve.release() {
            tracing::warn!(%error, "could not release the space reserve before recovery");
        }
        let (db, loaded) = Db::open(&config.data_dir.join("db"), config.db.clone())?;
        let mut state = StateMachine::new(loaded.names, loaded.instances, loaded.next_instance);
        let wal_fs = fs.clone();
        let (writer, mark_file, report) =
            recover(&config, fs, &db, &mut state, Lsn(loaded.applied.0))?;
        tracing::info!(
            replayed = report.replayed,
            next_lsn = report.next_lsn,
            segments = report.segments,
            "store recovered"
        );
        // Picked from the recovered state now, so a server need not scan a
        // million instances for the few that need it at start-up.
        let not_kept_forever = state.instances_where(|meta| {
            meta.unlinked || meta.attributes.retention_duration_ns != TIME_END
        });
        let shared = Arc::new(Shared {
            not_kept_forever: Mutex::new(Some(not_kept_forever)),
            totals: Mutex::new(state.totals()),
            db,
            poisoned: Mutex::new(None),
            dead: Mutex::new(None),
            closing: AtomicBool::new(false),
            stats: StoreStats::default(),
            applied: AtomicU64::new(report.next_lsn - 1),
            durable_applied: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            segments: AtomicU64::new(writer.segment_count() as u64),
            listeners: std::sync::RwLock::new(Listeners::default()),
            wal_hold: AtomicU64::new(0),
            wal_bytes_on_disk: AtomicU64::new(0),
            reserve,
            disk_space_checked: Mutex::new(()),
            disk_full: AtomicBool::new(false),
        });
        if let Err(error) = shared.reserve.hold() {
            shared.mark_disk_full(&format!("re-creating the space reserve: {error}"));
        }
        let (sender, receiver) = mpsc::sync_channel(config.queue_depth_max);
        let (checkpoint_sender, checkpoint_receiver) = mpsc::sync_channel::<u64>(1);
        let mut writer_thread = Writer {
            shared: shared.clone(),
            wal: writer,
            state,
            next_lsn: report.next_lsn,
            config: config.clone(),
            checkpoint: checkpoint_sender,
            syncer: Arc::new(Mutex::new(Syncer {
                shared: shared.clone(),
                mark: mark_file,
            })),
            sync_pending: Arc::new(AtomicU64::new(0)),
            origins: HashMap::new(),
            sessions_swept: Instant::now(),
        };
        // Make what recovery replayed durable in RocksDB, so the log behind
        // it can go at the first opportunity.
        let _ = checkpoint_now(&shared, report.next_lsn - 1);
        writer_thread.delete_covered();
        let watch = shared.clone();
        let writer = std::thread::Builder::new()
            .name("ckpt-wal".into())
            .spawn(move || watched(&watch, "writer", true, || writer_thread.run(receiver)))
            .map_err(|e| io_error("starting the writer thread", &e))?;
        let helpers = vec![spawn_checkpointer(shared.clone(), checkpoint_receiver)?];
        Ok(Store {
            shared,
            sender: Some(sender),
            writer: Some(writer),
            helpers,
            report,
            wal_fs,
            _lock: lock,
        })
    }

    /// What recovery found at open.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    /// Registers the function told about every durable record, in log
    /// order, from the writer thread (keep it quick: it delays the next
    /// group commit).
    pub fn set_commit_listener(&self, listener: CommitListener) {
        self.shared
            .listeners
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .commit = Some(listener);
    }

    /// Registers the function told, on the writer thread, about every
    /// batch's entries right after they were appended and applied and
    /// before their fsync (so they can be shipped while it runs). Keep it
    /// quick: it delays the next group commit.
    pub fn set_append_listener(&self, listener: AppendListener) {
        self.shared
            .listeners
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .append = Some(listener);
    }

    /// Registers the function told after every fsync (on the fsync thread,
    /// before the synced requests are answered) the last durable position
    /// of each instance the synced batches changed.
    pub fn set_durable_listener(&self, listener: DurableListener) {
        self.shared
            .listeners
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .durable = Some(listener);
    }

    /// Counters.
    pub fn stats(&self) -> &StoreStats {
        &self.shared.stats
    }

    /// Hits, misses and bytes of the read cache ([`crate::read_cache`]).
    pub fn read_cache_stats(&self) -> crate::read_cache::ReadCacheStats {
        self.shared.db.read_cache.stats()
    }

    /// Number of WAL segment files.
    pub fn wal_segments(&self) -> u64 {
        self.shared.segments.load(Ordering::Relaxed)
    }

    /// The log position of the last record applied to the state.
    pub fn applied_lsn(&self) -> Lsn {
        Lsn(self.shared.applied.load(Ordering::Acquire))
    }

    /// Queues an operation; `reply` is called once, from the writer thread,
    /// when it is answered. Blocks while the queue is full.
    pub fn submit(
        &self,
        op: Op,
        durability: Durability,
        now: i64,
        reply: impl FnOnce(CkptResult<Outcome>) + Send + 'static,
    ) {
        let work = Work::Plan { op, origin: None };
        let reply: Reply = Box::new(move |result| reply(result.map(|c| c.outcome)));
        self.enqueue(work, durability, now, reply);
    }

    /// Like [`Store::submit`] on the active replica of a cluster: the
    /// entries are stamped with `origin`, and the answer says where the
    /// last of them is. An origin already applied (here, or on the replica
    /// this one took over from) is answered with its first outcome and
    /// position, and nothing is logged.
    pub fn submit_ordered(
        &self,
        op: Op,
        origin: Option<Origin>,
        durability: Durability,
        now: i64,
        reply: impl FnOnce(CkptResult<Committed>) + Send + 'static,
    ) {
        self.enqueue(Work::Plan { op, origin }, durability, now, Box::new(reply));
    }

    /// Appends and applies entries ordered by the active replica (the
    /// backup's path: no planning). Each must follow its instance's last
    /// applied entry — the next seq, the current epoch (an `EpochStart`
    /// raises it) — and a creation must be of a new instance; else the
    /// whole call is refused with `BAD_OPERATION` naming instance, epoch
    /// and seq, nothing is logged and the store serves on. Answered after
    /// the fsync with the last entry's position.
    pub fn submit_replicated(
        &self,
        entries: Vec<Entry>,
        reply: impl FnOnce(CkptResult<Position>) + Send + 'static,
    ) {
        let work = Work::Replicated { entries };
        self.enqueue(work, Durability::Durable, now_ns(), position_reply(reply));
    }

    /// Starts `epoch` on `instance` (this node became its active replica):
    /// logs an `EpochStart` entry with the next seq; later entries planned
    /// here carry the new epoch. Answered durable with its position.
    ///
    /// `BAD_OPERATION` unless `epoch` is above the instance's epoch.
    pub fn begin_epoch(
        &self,
        instance: InstanceId,
        epoch: Epoch,
        reply: impl FnOnce(CkptResult<Position>) + Send + 'static,
    ) {
        let work = Work::Local(LocalWork::BeginEpoch { instance, epoch });
        self.enqueue(work, Durability::Durable, now_ns(), position_reply(reply));
    }

    /// Marks `instance` stale (its log diverged from the active replica's):
    /// it refuses reads and writes with `TRY_AGAIN` until a snapshot is
    /// installed. Answered durable with its (unchanged) position.
    pub fn discard_suffix(
        &self,
        instance: InstanceId,
        reply: impl FnOnce(CkptResult<Position>) + Send + 'static,
    ) {
        let work = Work::Local(LocalWork::Discard { instance });
        self.enqueue(work, Durability::Durable, now_ns(), position_reply(reply));
    }

    fn enqueue(&self, work: Work, durability: Durability, now: i64, reply: Reply) {
        if let Err(Submission { request, sender }) = self.try_enqueue(work, durability, now, reply)
        {
            if let Err(mpsc::SendError(request)) = sender.send(*request) {
                (request.reply)(Err(self.gone_error()));
            }
        }
    }

    /// What every submission goes through before it is queued: a dead
    /// store answers at once; while the disk is full only operations that
    /// free space pass; and the reply notices a log append that hit ENOSPC,
    /// which starts a disk-full episode (logged once, reserve released).
    /// Returns the request to queue, or `None` once it has been answered.
    fn admit(&self, work: Work, durability: Durability, now: i64, reply: Reply) -> Option<Request> {
        if let Some(error) = self.shared.dead_error() {
            reply(Err(error));
            return None;
        }
        if !work.frees_space() && !self.shared.recover_disk_space() {
            reply(Err(CkptError::new(
                ErrorCode::NoSpace,
                "disk full: only deletions are accepted until space is freed",
            )));
            return None;
        }
        let shared = self.shared.clone();
        Some(Request {
            work,
            durability,
            now,
            queued: Instant::now(),
            reply: Box::new(move |result: CkptResult<Committed>| {
                if let Err(error) = &result {
                    // The writer's wording for a log append that hit ENOSPC.
                    if error.code == ErrorCode::NoSpace && error.detail.starts_with("disk full") {
                        shared.mark_disk_full(&error.detail);
                    }
                }
                reply(result)
            }),
        })
    }

    /// Like [`Store::submit`], but never blocks: when the queue is full the
    /// operation is handed back, to be queued with [`Submission::wait`] on
    /// a thread that may block (async callers use `spawn_blocking`).
    ///
    /// # Errors
    /// The queue is full.
    pub fn try_submit(
        &self,
        op: Op,
        durability: Durability,
        now: i64,
        reply: impl FnOnce(CkptResult<Outcome>) + Send + 'static,
    ) -> Result<(), Submission> {
        let work = Work::Plan { op, origin: None };
        let reply: Reply = Box::new(move |result| reply(result.map(|c| c.outcome)));
        self.try_enqueue(work, durability, now, reply)
    }

    /// [`Store::submit_ordered`] without blocking, as [`Store::try_submit`]:
    /// the active replica's write path, which runs on an async worker.
    ///
    /// # Errors
    /// The queue is full.
    pub fn try_submit_ordered(
        &self,
        op: Op,
        origin: Option<Origin>,
        durability: Durability,
        now: i64,
        reply: impl FnOnce(CkptResult<Committed>) + Send + 'static,
    ) -> Result<(), Submission> {
        self.try_enqueue(Work::Plan { op, origin }, durability, now, Box::new(reply))
    }

    fn try_enqueue(
        &self,
        work: Work,
        durability: Durability,
        now: i64,
        reply: Reply,
    ) -> Result<(), Submission> {
        let Some(request) = self.admit(work, durability, now, reply) else {
            return Ok(());
        };
        let Some(sender) = &self.sender else {
            (request.reply)(Err(CkptError::new(
                ErrorCode::NotInitialized,
                "store is closed",
            )));
            return Ok(());
        };
        match sender.try_send(request) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(request)) => Err(Submission {
                request: Box::new(request),
                sender: sender.clone(),
            }),
            Err(TrySendError::Disconnected(request)) => {
                (request.reply)(Err(self.gone_error()));
                Ok(())
            }
        }
    }

    /// The records of `instance` after sequence number `after` and up to
    /// log position `upto` that the log still holds (see
    /// [`crate::wal::history`]); the caller checks them for gaps.
    ///
    /// # Errors
    /// `LIBRARY` for IO errors reading the log.
    pub fn instance_records_after(
        &self,
        instance: InstanceId,
        after: Seq,
        upto: Lsn,
    ) -> CkptResult<InstanceHistory> {
        instance_records_after(self.wal_fs.as_ref(), instance, after, upto)
            .map_err(|e| io_error("reading the log back", &e))
    }

    /// Where `instance` is: its last applied entry (not necessarily
    /// durable yet), or `None` if this node does not have it.
    ///
    /// # Errors
    /// Storage errors.
    pub fn position(&self, instance: InstanceId) -> CkptResult<Option<Position>> {
        self.position_if(instance, |_| true)
    }

    /// Like [`Store::position`], but `None` for a stale instance (a
    /// snapshot install cut short, a discarded suffix): what a backup holds
    /// that an active replica could continue.
    ///
    /// # Errors
    /// Storage errors.
    pub fn replica_position(&self, instance: InstanceId) -> CkptResult<Option<Position>> {
        self.position_if(instance, |meta| !meta.stale)
    }

    fn position_if(
        &self,
        instance: InstanceId,
        keep: impl FnOnce(&InstanceMeta) -> bool,
    ) -> CkptResult<Option<Position>> {
        self.shared.check_readable()?;
        Ok(self
            .shared
            .db
            .snapshot()
            .instance(instance)?
            .filter(keep)
            .map(|meta| Position {
                instance,
                epoch: meta.epoch,
                seq: meta.seq,
            }))
    }

    /// The entries of `instance` after `(epoch, seq)` that the log still
    /// holds, at most about `max_bytes` of them (always at least one when
    /// there is one), or [`EntriesAfter::Gone`] when the entry right after
    /// `seq` is no longer in the log — or when this node's entry at `seq`
    /// is not `(epoch, seq)` (another epoch's: the caller's log diverged
    /// from this one there, and only a snapshot brings it back in step).
    ///
    /// # Errors
    /// `NOT_EXIST` for an unknown instance; `BAD_OPERATION` when the
    /// position is ahead of this node's; IO errors reading the log.
    pub fn entries_after(
        &self,
        instance: InstanceId,
        epoch: Epoch,
        seq: Seq,
        max_bytes: u64,
    ) -> CkptResult<EntriesAfter> {
        let read = ReadAfter {
            instance,
            epoch,
            seq,
            max_bytes,
            after_lsn: None,
        };
        self.entries_after_many(&[read])
            .pop()
            .unwrap_or(Ok(EntriesAfter::Gone))
    }

    /// [`Store::entries_after`] for several reads, answered in order, with
    /// one pass over the log for all of them (a failover catches thousands
    /// of checkpoints up at once; a pass per checkpoint is quadratic).
    pub fn entries_after_many(&self, reads: &[ReadAfter]) -> Vec<CkptResult<EntriesAfter>> {
        if let Err(error) = self.shared.check_readable() {
            return reads.iter().map(|_| Err(error.clone())).collect();
        }
        // One consistent view for every position of the batch (taken before
        // `upto` below, so none is past what the log is read up to).
        let view = self.shared.db.snapshot();
        let mut answers: Vec<Option<CkptResult<EntriesAfter>>> = Vec::with_capacity(reads.len());
        let mut wants = Vec::new();
        // Reads whose hint holds are answered from where they left off.
        let mut hinted: Vec<Option<InstanceHistory>> = Vec::with_capacity(reads.len());
        for read in reads {
            let last = view.instance(read.instance).map(|meta| {
                meta.map(|meta| Position {
                    instance: read.instance,
                    epoch: meta.epoch,
                    seq: meta.seq,
                })
            });
            let answer = entries_after_without_log(read, last);
            answers.push(answer);
        }
        drop(view);
        let upto = Lsn(self.shared.applied.load(Ordering::Acquire));
        // Listed once for every hinted read of the batch, each segment
        // read once for all of them.
        let mut segments: Option<SegmentReads> = None;
        for (read, answer) in reads.iter().zip(&answers) {
            let mut history = None;
            if let (None, Some(at_lsn)) = (answer, read.after_lsn) {
                let listed = match &mut segments {
                    Some(listed) => Ok(listed),
                    None => SegmentReads::list(self.wal_fs.as_ref(), upto)
                        .map(|listed| segments.insert(listed)),
                };
                match listed.and_then(|listed| {
                    records_after_hinted(
                        listed,
                        read.instance,
                        read.seq,
                        at_lsn,
                        upto,
                        read.max_bytes,
                    )
                }) {
                    Ok(found) => history = found,
                    Err(e) => {
                        tracing::debug!(error = %e, "a hinted log read failed; reading back instead")
                    }
                }
            }
            if answer.is_none() && history.is_none() {
                wants.push((read.instance, read.seq));
            }
            hinted.push(history);
        }
        let mut histories = match records_after_many(self.wal_fs.as_ref(), &wants, upto) {
            Ok(histories) => histories.into_iter(),
            Err(e) => {
                let error = io_error("reading the log back", &e);
                return answers
                    .into_iter()
                    .map(|a| a.unwrap_or_else(|| Err(error.clone())))
                    .collect();
            }
        };
        answers
            .into_iter()
            .zip(reads)
            .zip(hinted)
            .map(|((answer, read), hinted)| match (answer, hinted) {
                (Some(answer), _) => answer,
                (None, Some(history)) => Ok(entries_from_history(history, read)),
                (None, None) => Ok(entries_from_history(
                    histories.next().unwrap_or_default(),
                    read,
                )),
            })
            .collect()
    }

    /// Keeps the log from `lsn` on (replication still reads it), within
    /// [`StoreConfig::wal_hold_bytes_max`]; `None` releases the hold.
    pub fn set_wal_hold(&self, lsn: Option<Lsn>) {
        self.shared
            .wal_hold
            .store(lsn.map_or(0, |l| l.0.max(1)), Ordering::Release);
    }

    /// Streams the instance's whole state as of one position, read from a
    /// consistent view: `send` gets each [`SnapshotPart`] in order — install
    /// entries stamped `now`, about `part_bytes` of section data each (at
    /// least one entry) — and returns whether to go on. Only one part is in
    /// memory at a time. Returns whether the last part was sent.
    ///
    /// # Errors
    /// `NOT_EXIST` for an unknown instance, `TRY_AGAIN` for a stale one;
    /// storage errors.
    pub fn stream_snapshot(
        &self,
        instance: InstanceId,
        part_bytes: usize,
        now: i64,
        mut send: impl FnMut(SnapshotPart) -> bool,
    ) -> CkptResult<bool> {
        self.shared.check_readable()?;
        let view = self.shared.db.snapshot();
        let meta = serving(instance, view.instance(instance)?)?;
        let last = Position {
            instance,
            epoch: meta.epoch,
            seq: meta.seq,
        };
        let entry = |body| Entry {
            instance,
            epoch: meta.epoch,
            seq: meta.seq,
            timestamp: now,
            origin: None,
            body,
        };
        let mut entries = vec![entry(RecordBody::SnapshotBegin {
            name: meta.name.clone(),
            attributes: meta.attributes.clone(),
            unlinked: meta.unlinked,
            generated_next: meta.generated_next,
            created_at: meta.created_at,
        })];
        let mut bytes = 0usize;
        let mut index = 0u64;
        for (section_id, section) in view.sections(instance)? {
            let mut offset = 0u64;
            loop {
                let len = (section.size - offset).min(SNAPSHOT_PART_BYTES as u64);
                let data =
                    view.read_data(meta.column_family, instance, &section_id, offset, len)?;
                bytes = bytes.saturating_add(data.len() + section_id.as_bytes().len() + 64);
                entries.push(entry(RecordBody::SnapshotSection {
                    section_id: section_id.clone(),
                    expiration_time: section.expiration_time,
                    last_update: section.last_update,
                    offset,
                    data,
                }));
                offset += len;
                if bytes >= part_bytes {
                    let part = SnapshotPart {
                        last,
                        index,
                        done: false,
                        entries: std::mem::take(&mut entries),
                    };
                    if !send(part) {
                        return Ok(false);
                    }
                    index += 1;
                    bytes = 0;
                }
                if offset >= section.size {
                    break;
                }
            }
        }
        entries.push(entry(RecordBody::SnapshotEnd));
        Ok(send(SnapshotPart {
            last,
            index,
            done: true,
            entries,
        }))
    }

    /// The instance's position and a checksum of its metadata (name,
    /// attributes, unlinked, generated-id counter, section count, bytes
    /// used) and of every section (id, expiration, data) in id order: the
    /// same on every replica holding the same state (no lsn, no column
    /// family, no time of the last update).
    ///
    /// # Errors
    /// `NOT_EXIST` for an unknown instance, `TRY_AGAIN` for a stale one;
    /// storage errors.
    pub fn checksum(&self, instance: InstanceId) -> CkptResult<(Position, u64)> {
        self.shared.check_readable()?;
        let view = self.shared.db.snapshot();
        let meta = serving(instance, view.instance(instance)?)?;
        let mut hash = Fnv64::default();
        hash.write_bytes(meta.name.as_bytes());
        let mut attributes = Vec::new();
        meta.attributes.encode_le(&mut attributes);
        hash.write_bytes(&attributes);
        hash.write(&[u8::from(meta.unlinked)]);
        hash.write(&meta.generated_next.to_le_bytes());
        hash.write(&meta.section_count.to_le_bytes());
        hash.write(&meta.memory_used.to_le_bytes());
        for (section_id, section) in view.sections(instance)? {
            hash.write_bytes(section_id.as_bytes());
            hash.write(&section.expiration_time.to_le_bytes());
            hash.write(&section.size.to_le_bytes());
            let mut offset = 0;
            while offset < section.size {
                let len = (section.size - offset).min(crate::db::CHUNK_BYTES * 16);
                let data =
                    view.read_data(meta.column_family, instance, &section_id, offset, len)?;
                hash.write(&data);
                offset += len;
            }
        }
        let position = Position {
            instance,
            epoch: meta.epoch,
            seq: meta.seq,
        };
        Ok((position, hash.finish()))
    }

    /// Runs an operation and waits for its answer.
    ///
    /// # Errors
    /// The operation's error.
    pub fn execute_with(&self, op: Op, durability: Durability, now: i64) -> CkptResult<Outcome> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(op, durability, now, move |result| {
            let _ = tx.send(result);
        });
        rx.recv().unwrap_or_else(|_| {
            // An answer is dropped unsent only by a store thread dying:
            // wait for its death to be recorded, to name it.
            self.wait_for_death();
            Err(self.shared.dead_error().unwrap_or_else(|| {
                CkptError::new(ErrorCode::Library, "the writer stopped without answering")
            }))
        })
    }

    /// Why a request cannot reach the writer: its death, if it died.
    fn gone_error(&self) -> CkptError {
        self.wait_writer_exit();
        self.shared
            .dead_error()
            .unwrap_or_else(|| CkptError::new(ErrorCode::NotInitialized, "store is closed"))
    }

    /// Waits until the writer thread has finished. Called only once its
    /// queue is gone, so it is exiting, and its death is recorded as the
    /// last step of that.
    fn wait_writer_exit(&self) {
        if let Some(writer) = &self.writer {
            while !writer.is_finished() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// Waits until a dying store thread has recorded its death (it does so
    /// once it has unwound), at most [`DEATH_RECORD_WAIT_MS`].
    fn wait_for_death(&self) {
        let deadline = Instant::now() + Duration::from_millis(DEATH_RECORD_WAIT_MS);
        while self.shared.dead_error().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Instances with a section whose expiration time is at or before
    /// `now` (an index scan; what [`Op::ExpireDueIn`] would delete).
    ///
    /// # Errors
    /// Storage errors; a poisoned or dead store.
    pub fn instances_with_expiry_due(&self, now: i64) -> CkptResult<Vec<InstanceId>> {
        self.shared.check_readable()?;
        let mut instances: Vec<InstanceId> = self
            .shared
            .db
            .expiry_candidates(now)?
            .into_iter()
            .map(|(instance, _)| instance)
            .collect();
        instances.dedup();
        Ok(instances)
    }

    /// Whether the disk is full: the last log write failed for lack of
    /// space and room for the reserve has not come back since. Only
    /// operations that free space are accepted meanwhile.
    pub fn disk_full(&self) -> bool {
        self.shared.disk_full.load(Ordering::Acquire)
    }

    /// Why the store can serve nothing any more — poisoned after a storage
    /// failure, or a thread of it dead — or `None` while it is healthy.
    /// Only a restart (recovery from the log) brings it back.
    pub fn failure(&self) -> Option<String> {
        self.shared
            .poisoned_error()
            .or_else(|| self.shared.dead_error())
            .map(|error| error.detail)
    }

    /// Runs an operation durably at the current time.
    ///
    /// # Errors
    /// The operation's error.
    pub fn execute(&self, op: Op) -> CkptResult<Outcome> {
        self.execute_with(op, Durability::Durable, now_ns())
    }

    /// The instance a name refers to now.
    ///
    /// # Errors
    /// `NOT_EXIST` for an unknown name; storage errors.
    pub fn lookup(&self, name: &CheckpointName) -> CkptResult<InstanceId> {
        self.shared.check_readable()?;
        self.shared.db.lookup_name(name)?.ok_or_else(|| {
            CkptError::new(
                ErrorCode::NotExist,
                format!("checkpoint {name} does not exist"),
            )
        })
    }

    /// An instance's metadata.
    ///
    /// # Errors
    /// `NOT_EXIST` for an unknown instance; storage errors.
    pub fn instance(&self, instance: InstanceId) -> CkptResult<InstanceMeta> {
        self.shared.check_readable()?;
        self.shared
            .db
            .snapshot()
            .instance(instance)?
            .ok_or_else(|| missing_instance(instance))
    }

    /// Every instance, named or unlinked, in id order.
    ///
    /// # Errors
    /// Storage errors.
    pub fn instances(&self) -> CkptResult<Vec<(InstanceId, InstanceMeta)>> {
        self.shared.check_readable()?;
        self.shared.db.list_instances()
    }

    /// What the named checkpoints hold in all (checkpoints, sections, data
    /// bytes), as of the last group commit: kept by the writer as it
    /// applies entries, so it costs no scan (metrics ask for it at every
    /// scrape; a scan at a million checkpoints took a second and a
    /// gigabyte).
    pub fn totals(&self) -> Totals {
        *self.shared.totals.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The instances that, in the state recovered when the store opened,
    /// were unlinked or had a retention other than forever (`TIME_END`):
    /// what a single-node server destroys or starts retention timers for
    /// at start-up, without a scan of every instance (a second at a million
    /// checkpoints). Handed out once; `None` afterwards, when
    /// [`Store::instances`] gives the current state.
    pub fn take_not_kept_forever(&self) -> Option<Vec<(InstanceId, InstanceMeta)>> {
        self.shared
            .not_kept_forever
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// `clCkptCheckpointStatusGet`.
    ///
    /// # Errors
    /// `NOT_EXIST` for an unknown instance; storage errors.
    pub fn status(&self, instance: InstanceId) -> CkptResult<CheckpointStatus> {
        let meta = serving(instance, Some(self.instance(instance)?))?;
        Ok(CheckpointStatus {
            attributes: meta.attributes,
            number_of_sections: meta.section_count,
            memory_used: meta.memory_used,
        })
    }

    /// Every section's descriptor, in id order, from one point in time.
    ///
    /// # Errors
    /// `NOT_EXIST` for an unknown instance; storage errors.
    pub fn sections(&self, instance: InstanceId) -> CkptResult<Vec<SectionDescriptor>> {
        self.shared.check_readable()?;
        let view = self.shared.db.snapshot();
        serving(instance, view.instance(instance)?)?;
        Ok(view
            .sections(instance)?
            .into_iter()
            .map(|(section_id, meta)| descriptor(section_id, &meta))
            .collect())
    }

    /// A point-in-time view that stays valid while writers go on (for
    /// dumps); release it by dropping it.
    pub fn snapshot(&self) -> StoreSnapshot {
        let view = self.shared.db.snapshot();
        // SAFETY: the view borrows the Db inside `shared`, which lives at a
        // stable address behind the Arc that the snapshot holds; the view
        // is declared first in StoreSnapshot, so it is dropped (and the
        // RocksDB snapshot released) before that Arc.
        let view: crate::db::View<'static> = unsafe { std::mem::transmute(view) };
        StoreSnapshot {
            view,
            owner: SnapshotOwner::Store(self.shared.clone()),
        }
    }

    /// Bytes the log's segments hold on disk now, and their number.
    pub fn wal_footprint(&self) -> (u64, u64) {
        (
            self.shared.wal_bytes_on_disk.load(Ordering::Relaxed),
            self.wal_segments(),
        )
    }

    /// RocksDB's estimate of one instance's data size on disk (SST files).
    pub fn instance_footprint(&self, instance: InstanceId) -> CkptResult<u64> {
        let meta = self.instance(instance)?;
        Ok(self.shared.db.instance_bytes(meta.column_family, instance))
    }

    /// Data keys (chunks) an instance has in RocksDB now; for tests and
    /// `ckpt-tool verify`.
    ///
    /// # Errors
    /// Storage errors.
    pub fn data_keys(&self, instance: InstanceId) -> CkptResult<u64> {
        let column_family = self.shared.db.column_family_for(instance);
        let column_family = match self.shared.db.snapshot().instance(instance)? {
            Some(meta) => meta.column_family,
            None => column_family,
        };
        self.shared.db.count_data_keys(column_family, instance)
    }

    /// One section's descriptor, if it exists.
    ///
    /// # Errors
    /// Storage errors.
    pub fn section(
        &self,
        instance: InstanceId,
        section_id: &SectionId,
    ) -> CkptResult<Option<SectionDescriptor>> {
        self.shared.check_readable()?;
        let view = self.shared.db.snapshot();
        Ok(view
            .section(instance, section_id)?
            .map(|meta| descriptor(section_id.clone(), &meta)))
    }

    /// `clCkptCheckpointRead`: every element from one point in time. An
    /// element without a size reads to the end of its section; the result
    /// holds the bytes actually read.
    ///
    /// # Errors
    /// `NOT_EXIST` (missing section), `INVALID_PARAMETER` (offset past
    /// maxSectionSize) with the failing element's index; `NOT_EXIST` for an
    /// unknown instance. An offset at or past the section's end reads
    /// nothing.
    pub fn read(&self, instance: InstanceId, elements: &[ReadElement]) -> CkptResult<Vec<Vec<u8>>> {
        if elements.len() > ELEMENTS_MAX {
            return Err(CkptError::new(
                ErrorCode::InvalidParameter,
                format!(
                    "{} elements, at most {ELEMENTS_MAX} per read",
                    elements.len()
                ),
            ));
        }
        self.shared.check_readable()?;
        if let Some(out) = self.read_cached(instance, elements) {
            return Ok(out);
        }
        let cache = &self.shared.db.read_cache;
        // Taken before the snapshot: what it reads may then be kept.
        let tag = cache.tag(instance);
        let view = self.shared.db.snapshot();
        let meta = serving(instance, view.instance(instance)?)?;
        let mut total = 0u64;
        let mut out = Vec::with_capacity(elements.len());
        for (index, element) in elements.iter().enumerate() {
            let section = view
                .section(instance, &element.section_id)?
                .ok_or_else(|| {
                    CkptError::new(
                        ErrorCode::NotExist,
                        format!("section {} does not exist", element.section_id),
                    )
                    .at_index(index as u32)
                })?;
            let max_section_size = meta.attributes.max_section_size;
            let (offset, len) =
                read_range(max_section_size, section.size, element, index, &mut total)?;
            let data = view.read_data(
                meta.column_family,
                instance,
                &element.section_id,
                offset,
                len,
            )?;
            let whole = offset == 0 && len == section.size;
            if let Some(tag) = tag.filter(|_| whole) {
                cache.insert(instance, &element.section_id, tag, max_section_size, &data);
            }
            out.push(data);
        }
        Ok(out)
    }

    /// [`Store::read`] from the read cache: None unless every element's
    /// section is cached, unchanged, and all as of the same moment, and
    /// the read is valid (an error is left to the full read, which finds
    /// it in order).
    fn read_cached(&self, instance: InstanceId, elements: &[ReadElement]) -> Option<Vec<Vec<u8>>> {
        let cache = &self.shared.db.read_cache;
        let mut tag = None;
        let mut total = 0u64;
        let mut out = Vec::with_capacity(elements.len());
        for (index, element) in elements.iter().enumerate() {
            let cached = cache.get(instance, &element.section_id)?;
            if *tag.get_or_insert(cached.tag) != cached.tag {
                return None;
            }
            let size = cached.data.len() as u64;
            let (offset, len) =
                read_range(cached.max_section_size, size, element, index, &mut total).ok()?;
            // An offset at or past the end reads nothing (len is then 0);
            // otherwise offset + len is within the data.
            out.push(if len == 0 {
                Vec::new()
            } else {
                cached.data[offset as usize..(offset + len) as usize].to_vec()
            });
        }
        // No elements: the full read still says whether the instance exists.
        tag.map(|_| out)
    }

    /// Whether the store refuses writes, and why.
    pub fn poisoned(&self) -> Option<String> {
        self.shared
            .poisoned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// RocksDB property (for metrics).
    pub fn rocksdb_property(&self, name: &str) -> Option<String> {
        self.shared.db.property(name)
    }

    /// Stops accepting requests, answers everything queued, makes RocksDB
    /// durable and trims the log.
    ///
    /// # Errors
    /// A storage error while flushing (nothing acknowledged is lost: the
    /// log still holds it).
    pub fn close(mut self) -> CkptResult<()> {
        self.stop_threads();
        if self.shared.poisoned_error().is_some() || self.shared.dead_error().is_some() {
            // Flushing could make a batch durable in RocksDB that the log
            // never acknowledged; recovery sorts it out from the log.
            return Ok(());
        }
        // A full flush (not only RocksDB's WAL) so the next open replays
        // nothing, in either RocksDB WAL mode.
        self.shared.db.flush_all()?;
        checkpoint_now(&self.shared, self.shared.applied.load(Ordering::Acquire))
    }

    fn stop_threads(&mut self) {
        self.shared.closing.store(true, Ordering::Release);
        self.sender = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        self.shared.stopping.store(true, Ordering::Release);
        for helper in self.helpers.drain(..) {
            let _ = helper.join();
        }
    }
}

impl Drop for Store {
    /// Dropping without [`Store::close`] is a crash as far as RocksDB is
    /// concerned: memtables are not flushed, and recovery replays the log.
    fn drop(&mut self) {
        self.stop_threads();
    }
}

/// A consistent point-in-time read view of the whole store, independent of
/// later writes. Holding one keeps RocksDB from discarding old versions.
pub struct StoreSnapshot {
    view: crate::db::View<'static>,
    owner: SnapshotOwner,
}

/// What keeps a [`StoreSnapshot`]'s database alive (held, never read).
enum SnapshotOwner {
    Store(Arc<Shared>),
    ReadOnly(#[allow(dead_code)] Arc<Db>),
}

impl SnapshotOwner {
    fn check_readable(&self) -> CkptResult<()> {
        match self {
            SnapshotOwner::Store(shared) => shared.check_readable(),
            SnapshotOwner::ReadOnly(_) => Ok(()),
        }
    }
}

impl StoreSnapshot {
    /// A snapshot of a read-only open's database (`crate::inspect`).
    pub(crate) fn of_read_only(db: &Arc<Db>) -> StoreSnapshot {
        let view = db.snapshot();
        // SAFETY: as in `Store::snapshot`: the view borrows the Db behind
        // the Arc the snapshot holds, and is dropped before it.
        let view: crate::db::View<'static> = unsafe { std::mem::transmute(view) };
        StoreSnapshot {
            view,
            owner: SnapshotOwner::ReadOnly(db.clone()),
        }
    }
}

impl StoreSnapshot {
    /// Every instance, named or unlinked, in id order.
    ///
    /// # Errors
    /// Storage errors.
    pub fn instances(&self) -> CkptResult<Vec<(InstanceId, InstanceMeta)>> {
        self.owner.check_readable()?;
        self.view.instances()
    }

    /// Every section of an instance, in id order.
    ///
    /// # Errors
    /// Storage errors.
    pub fn sections(&self, instance: InstanceId) -> CkptResult<Vec<SectionDescriptor>> {
        self.owner.check_readable()?;
        Ok(self
            .view
            .sections(instance)?
            .into_iter()
            .map(|(id, meta)| descriptor(id, &meta))
            .collect())
    }

    /// `len` bytes of a section from `offset` (clamped to its size).
    ///
    /// # Errors
    /// `NOT_EXIST` for a missing instance or section; storage errors.
    pub fn read(
        &self,
        instance: InstanceId,
        section_id: &SectionId,
        offset: u64,
        len: u64,
    ) -> CkptResult<Vec<u8>> {
        self.owner.check_readable()?;
        let meta = serving(instance, self.view.instance(instance)?)?;
        let section = self.view.section(instance, section_id)?.ok_or_else(|| {
            CkptError::new(
                ErrorCode::NotExist,
                format!("section {section_id} does not exist"),
            )
        })?;
        let offset = offset.min(section.size);
        let len = len.min(section.size - offset);
        self.view
            .read_data(meta.column_family, instance, section_id, offset, len)
    }
}

/// A reply for an operation answered with a position.
fn position_reply(reply: impl FnOnce(CkptResult<Position>) + Send + 'static) -> Reply {
    Box::new(move |result: CkptResult<Committed>| {
        reply(result.and_then(|c| {
            c.position
                .ok_or_else(|| CkptError::new(ErrorCode::Library, "the operation logged no entry"))
        }))
    })
}

/// Where element `index` of a read starts in its section and how many
/// bytes it returns, adding them to `total` (checked against the most one
/// read may return).
///
/// DESIGN.md §2 "read": at or past the end, within maxSectionSize, reads
/// nothing; only beyond maxSectionSize is the offset itself wrong.
fn read_range(
    max_section_size: u64,
    section_size: u64,
    element: &ReadElement,
    index: usize,
    total: &mut u64,
) -> CkptResult<(u64, u64)> {
    if element.offset > max_section_size {
        return Err(CkptError::new(
            ErrorCode::InvalidParameter,
            format!(
                "offset {} is past maxSectionSize ({max_section_size})",
                element.offset
            ),
        )
        .at_index(index as u32));
    }
    let available = section_size.saturating_sub(element.offset);
    let len = element.size.map_or(available, |size| size.min(available));
    *total = total.saturating_add(len);
    if *total > UPDATE_BYTES_MAX {
        return Err(CkptError::new(
            ErrorCode::TooBig,
            format!("read would return more than {UPDATE_BYTES_MAX} bytes; read in parts"),
        )
        .at_index(index as u32));
    }
    Ok((element.offset, len))
}

/// An instance's metadata if it exists and is not stale.
fn serving(instance: InstanceId, meta: Option<InstanceMeta>) -> CkptResult<InstanceMeta> {
    match meta {
        None => Err(missing_instance(instance)),
        Some(meta) if meta.stale => Err(stale_error(instance)),
        Some(meta) => Ok(meta),
    }
}

/// One read of [`Store::entries_after_many`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadAfter {
    /// Which instance.
    pub instance: InstanceId,
    /// The reader's last entry's epoch...
    pub epoch: Epoch,
    /// ...and seq: the entries after it are wanted.
    pub seq: Seq,
    /// About how many entry bytes to answer with (at least one entry).
    pub max_bytes: u64,
    /// Where the log holds the `(epoch, seq)` entry, if the reader knows
    /// (an earlier read returned it): the read starts at that segment and
    /// stops after `max_bytes`, instead of reading back from the newest
    /// segment. A hint that does not hold (the segment is gone, another
    /// record is there) falls back to reading back.
    pub after_lsn: Option<Lsn>,
}

/// The answer to `read` when the log need not be read (an error, or the
/// reader is at this node's last entry `last`); `None` when it must be.
fn entries_after_without_log(
    read: &ReadAfter,
    last: CkptResult<Option<Position>>,
) -> Option<CkptResult<EntriesAfter>> {
    let ReadAfter {
        instance,
        epoch,
        seq,
        ..
    } = *read;
    let last = match last {
        Ok(Some(last)) => last,
        Ok(None) => return Some(Err(missing_instance(instance))),
        Err(error) => return Some(Err(error)),
    };
    if (epoch, seq) > (last.epoch, last.seq) {
        return Some(Err(CkptError::new(
            ErrorCode::BadOperation,
            format!(
                "instance {} is at epoch {} seq {} here: epoch {} seq {} is ahead of it",
                instance.0, last.epoch.0, last.seq.0, epoch.0, seq.0
            ),
        )));
    }
    if seq >= last.seq {
        if (epoch, seq) != (last.epoch, last.seq) {
            return Some(Ok(EntriesAfter::Gone));
        }
        return Some(Ok(EntriesAfter::Entries(Vec::new())));
    }
    None
}

/// The entries after `read`'s position in what the log still holds.
fn entries_from_history(history: InstanceHistory, read: &ReadAfter) -> EntriesAfter {
    let ReadAfter {
        epoch,
        seq,
        max_bytes,
        ..
    } = *read;
    if seq.0 > 0 {
        // Streaming continues a log only from an entry both hold: our
        // newest record at `seq` must be (epoch, seq) itself (an entry,
        // or the install of a snapshot taken there). Anything else —
        // another epoch's entry at that seq, a discard, or nothing left —
        // means the reader needs a snapshot.
        let continues = history.at_after.as_ref().is_some_and(|r| {
            r.entry.seq == seq
                && r.entry.epoch == epoch
                && !matches!(r.entry.body, RecordBody::SuffixDiscard)
        });
        if !continues {
            return EntriesAfter::Gone;
        }
    }
    let mut out = Vec::new();
    let mut bytes = 0u64;
    for (expected, record) in (seq.0 + 1..).zip(history.records) {
        // A snapshot install logs several entries at one seq, and a
        // discard repeats the seq: what follows them is not a log to
        // replay but a state to copy (send a snapshot).
        let copies_state = matches!(
            record.entry.body,
            RecordBody::SnapshotBegin { .. }
                | RecordBody::SnapshotSection { .. }
                | RecordBody::SnapshotEnd
                | RecordBody::SuffixDiscard
        );
        if record.entry.seq.0 != expected || copies_state {
            if out.is_empty() {
                return EntriesAfter::Gone;
            }
            break;
        }
        if !out.is_empty() && bytes >= max_bytes {
            break;
        }
        bytes += record.entry.encoded_len() as u64;
        out.push((record.lsn, record.entry));
    }
    if out.is_empty() {
        return EntriesAfter::Gone;
    }
    EntriesAfter::Entries(out)
}

fn missing_instance(instance: InstanceId) -> CkptError {
    CkptError::new(
        ErrorCode::NotExist,
        format!("checkpoint instance {} does not exist", instance.0),
    )
}

pub(crate) fn descriptor(section_id: SectionId, meta: &SectionMeta) -> SectionDescriptor {
    SectionDescriptor {
        section_id,
        expiration_time: meta.expiration_time,
        section_size: meta.size,
        state: meta.state,
        last_update: meta.last_update,
    }
}

fn io_error(context: &str, error: &std::io::Error) -> CkptError {
    let code = if error.raw_os_error() == Some(libc::ENOSPC) {
        ErrorCode::NoSpace
    } else {
        ErrorCode::Library
    };
    CkptError::new(code, format!("{context}: {error}"))
}

/// Makes RocksDB durable up to at least `applied` and publishes it.
fn checkpoint_now(shared: &Shared, applied: u64) -> CkptResult<()> {
    shared.db.make_durable()?;
    shared.stats.rocksdb_flushes.fetch_add(1, Ordering::Relaxed);
    shared.durable_applied.fetch_max(applied, Ordering::AcqRel);
    Ok(())
}

fn spawn_checkpointer(shared: Arc<Shared>, requests: Receiver<u64>) -> CkptResult<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("ckpt-checkpoint".into())
        .spawn(move || {
            watched(&shared.clone(), "checkpoint", false, || loop {
                match requests.recv_timeout(Duration::from_millis(200)) {
                    Ok(applied) => {
                        if let Err(error) = checkpoint_now(&shared, applied) {
                            tracing::error!(%error, "making RocksDB durable failed; the log is kept");
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        if shared.stopping.load(Ordering::Acquire) {
                            return;
                        }
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            })
        })
        .map_err(|e| io_error("starting the checkpoint thread", &e))
}

/// What [`replay_log`] found: the segments it keeps (first lsn, name,
/// valid length), the last lsn applied (RocksDB's applied position or the
/// last replayed record), the durable mark, and the report so far.
pub(crate) struct Replayed {
    pub(crate) kept: Vec<(Lsn, String, u64)>,
    pub(crate) last_lsn: u64,
    pub(crate) log_last: Option<u64>,
    pub(crate) durable_mark: Option<Lsn>,
    pub(crate) report: RecoveryReport,
}

/// Why [`replay_log`] stopped.
#[derive(Debug)]
pub(crate) enum ReplayError {
    /// The log is damaged where recovery will not cut it (or records are
    /// missing): segment, offset, reason; the highest lsn of the records
    /// read before it; whether the log is whole but ends below the durable
    /// mark.
    Corrupt {
        segment: String,
        offset: u64,
        reason: String,
        kept_last: Option<u64>,
        durable_end: bool,
    },
    /// Any other failure (IO, RocksDB).
    Other(CkptError),
}

impl From<CkptError> for ReplayError {
    fn from(error: CkptError) -> Self {
        ReplayError::Other(error)
    }
}

impl From<ReplayError> for CkptError {
    fn from(error: ReplayError) -> Self {
        match error {
            ReplayError::Corrupt {
                segment,
                offset,
                reason,
                ..
            } => corrupt(&segment, offset, &reason),
            ReplayError::Other(error) => error,
        }
    }
}

fn corrupt_at(segment: &str, offset: u64, reason: &str, kept_last: Option<u64>) -> ReplayError {
    ReplayError::Corrupt {
        segment: segment.to_string(),
        offset,
        reason: reason.to_string(),
        kept_last,
        durable_end: false,
    }
}

/// Recovery's reading of the log, shared by [`Store::open`] and the
/// read-only store (`crate::inspect`): lists the segments and reads the
/// durable mark, judges each segment with [`scan_segment_with`] under its
/// [`TailRule`], requires the records above `applied` to follow each other,
/// applies them through the state machine to `db` in batches of
/// `batch_records` (a read-only `db` applies them to memory), checks that
/// the log reaches the durable mark ([`check_durable_end`]), and fails with
/// the corruption message on damage before the tail. `cut_torn(name,
/// scan, whole records in the tail)` is told of a torn tail (recovery cuts
/// it off; a read-only replay only reports it) and says whether the segment
/// is kept.
pub(crate) fn replay_log(
    fs: &dyn WalFs,
    db: &Db,
    state: &mut StateMachine,
    applied: Lsn,
    batch_records: usize,
    progress: Option<&RecoveryProgress>,
    mut cut_torn: impl FnMut(&str, &crate::wal::segment::SegmentScan, u64) -> CkptResult<bool>,
) -> Result<Replayed, ReplayError> {
    let mut segments: Vec<(Lsn, String)> = fs
        .list()
        .map_err(|e| io_error("listing WAL segments", &e))?
        .into_iter()
        .filter_map(|name| parse_segment_name(&name).map(|lsn| (lsn, name)))
        .collect();
    segments.sort();
    let durable_mark = mark::read(fs).map_err(|e| io_error("reading the durable mark", &e))?;
    let mut report = RecoveryReport {
        applied_at_open: applied.0,
        segments: segments.len(),
        ..Default::default()
    };
    if let Some(progress) = progress {
        let marked = durable_mark.map_or(0, |mark| mark.0.saturating_sub(applied.0));
        progress.total.store(marked, Ordering::Relaxed);
    }
    let backing = DbBacking(db);
    let mut last_lsn = applied.0;
    // The highest lsn the log itself holds after recovery.
    let mut log_last: Option<u64> = None;
    let mut expected = applied.0 + 1;
    let mut pending: Vec<Effect> = Vec::new();
    let mut pending_records = 0usize;
    // Origins of the replayed entries (all of them, so that an operation's
    // entries split over two RocksDB batches keep the first outcome).
    let mut replayed_origins: HashMap<Origin, (Committed, i64)> = HashMap::new();
    let mut kept = Vec::new();
    let count = segments.len();
    for (position, (first_lsn, name)) in segments.into_iter().enumerate() {
        let bytes = fs
            .read(&name)
            .map_err(|e| io_error(&format!("reading WAL segment {name}"), &e))?;
        let rule = TailRule::for_segment(position, count, durable_mark);
        let scan = scan_segment_with(&bytes, first_lsn, rule);
        if scan.first_lsn.is_some_and(|lsn| lsn != first_lsn) {
            return Err(corrupt_at(
                &name,
                0,
                "header lsn does not match the file name",
                log_last,
            ));
        }
        for (offset, record) in &scan.records {
            let highest = Some(log_last.map_or(record.lsn.0, |l: u64| l.max(record.lsn.0)));
            if record.lsn.0 <= applied.0 {
                log_last = highest;
                last_lsn = last_lsn.max(record.lsn.0);
                continue;
            }
            if record.lsn.0 != expected {
                return Err(corrupt_at(
                    &name,
                    *offset,
                    &format!(
                        "expected lsn {expected}, found {} (records are missing)",
                        record.lsn.0
                    ),
                    log_last,
                ));
            }
            let effects = state
                .apply(&backing, &record.entry)
                .map_err(|e| corrupt_at(&name, *offset, &e.detail, log_last))?;
            log_last = highest;
            pending.extend(effects);
            if let Some(origin) = record.entry.origin {
                // Remembered again as a node that did not plan it would:
                // the live answer was written with the batch, which
                // RocksDB lost with everything after its applied position.
                let earlier = replayed_origins.get(&origin).map(|(c, _)| c.clone());
                let committed = Committed::of_entry(&record.entry, earlier);
                replayed_origins.insert(origin, (committed, record.entry.timestamp));
            }
            pending_records += 1;
            report.replayed += 1;
            if let Some(progress) = progress {
                progress.replayed.store(report.replayed, Ordering::Relaxed);
                progress.total.fetch_max(report.replayed, Ordering::Relaxed);
            }
            expected += 1;
            last_lsn = record.lsn.0;
            if pending_records >= batch_records {
                db.apply_with(
                    &pending,
                    &origin_writes(&replayed_origins),
                    Lsn(last_lsn),
                    state.next_instance(),
                )?;
                pending.clear();
                pending_records = 0;
            }
        }
        match &scan.end {
            SegmentEnd::Clean => kept.push((first_lsn, name, scan.valid_len)),
            SegmentEnd::Torn { offset, reason } => {
                // Only the last segment can be torn (TailRule).
                let mut after = *offset as usize;
                let mut last = scan.records.last().map_or(Lsn(0), |(_, r)| r.lsn);
                while let Some((at, lsn)) = next_record_after(&bytes, after, last) {
                    report.torn_records += 1;
                    (after, last) = (at, lsn);
                }
                report.torn_tail = Some((name.clone(), *offset, reason.clone()));
                if cut_torn(&name, &scan, report.torn_records)? {
                    kept.push((first_lsn, name, scan.valid_len));
                }
            }
            SegmentEnd::Corrupt { offset, reason } => {
                return Err(corrupt_at(&name, *offset, reason, log_last));
            }
        }
    }
    if let Err(reason) = check_durable_end(durable_mark, log_last.map(Lsn), applied) {
        let last = kept
            .last()
            .map_or_else(|| "(none)".to_string(), |(_, name, _)| name.clone());
        let end = kept.last().map_or(0, |(_, _, len)| *len);
        return Err(ReplayError::Corrupt {
            segment: last,
            offset: end,
            reason,
            kept_last: log_last,
            durable_end: true,
        });
    }
    if pending_records > 0 {
        db.apply_with(
            &pending,
            &origin_writes(&replayed_origins),
            Lsn(last_lsn),
            state.next_instance(),
        )?;
    }
    Ok(Replayed {
        kept,
        last_lsn,
        log_last,
        durable_mark,
        report,
    })
}

/// Reads the log, replays what RocksDB lacks, cuts a torn tail, makes what
/// it kept durable, records that in the durable mark, and starts a fresh
/// segment. Returns the writer and the mark file, open for the fsync
/// thread's updates.
///
/// What is torn and what is corrupt is decided by [`replay_log`] — the
/// same code the read-only store (`crate::inspect`, and so `ckpt-tool`)
/// runs. Every step is safe to interrupt: a crash during recovery leaves a
/// state the next recovery accepts (the cut is durable before the new
/// segment exists; the mark only ever states what is durable).
fn recover(
    config: &StoreConfig,
    fs: Arc<dyn WalFs>,
    db: &Db,
    state: &mut StateMachine,
    applied: Lsn,
) -> CkptResult<(WalWriter, MarkWriter, RecoveryReport)> {
    let Replayed {
        kept,
        last_lsn,
        log_last,
        durable_mark,
        mut report,
    } = replay_log(
        fs.as_ref(),
        db,
        state,
        applied,
        config.recovery_batch_records,
        config.recovery_progress.as_deref(),
        |name, scan, torn_records| {
            if let SegmentEnd::Torn { offset, reason } = &scan.end {
                tracing::warn!(segment = %name, offset, %reason, whole_records_dropped = torn_records, "cutting off a torn tail of the log (never acknowledged as durable)");
            }
            if scan.first_lsn.is_none() {
                fs.remove(name)
                    .map_err(|e| io_error("removing a torn segment", &e))?;
                Ok(false)
            } else {
                fs.truncate(name, scan.valid_len)
                    .map_err(|e| io_error("cutting a torn tail", &e))?;
                Ok(true)
            }
        },
    )
    .map_err(CkptError::from)?;
    let next_lsn = last_lsn.max(applied.0) + 1;
    report.next_lsn = next_lsn;
    // A segment starting at or after next_lsn can hold no record (every
    // record is below next_lsn): it was started by a run that crashed
    // before logging anything. The new segment may even reuse its name.
    let (empty, kept): (Vec<_>, Vec<_>) =
        kept.into_iter().partition(|(lsn, _, _)| lsn.0 >= next_lsn);
    for (_, name, _) in empty {
        fs.remove(&name)
            .map_err(|e| io_error("removing an empty segment", &e))?;
    }
    // What the log holds now was read back, but after a process crash it
    // may sit only in the page cache: make it durable before anything is
    // written after it, or a power cut could open a hole below new records.
    // (Truncating to its own length syncs the file.)
    if let Some((_, name, len)) = kept.last() {
        fs.truncate(name, *len)
            .map_err(|e| io_error("syncing the log's last segment", &e))?;
    }
    // Removals (of torn or empty segments) must not come back once the new
    // segment exists: a resurrected one would sit after it in log order.
    fs.sync_dir()
        .map_err(|e| io_error("syncing the WAL directory", &e))?;
    let durable_through = Lsn(log_last.unwrap_or(0).max(durable_mark.map_or(0, |m| m.0)));
    let (file, baseline_next) = mark::write_baseline(fs.as_ref(), durable_through)
        .map_err(|e| io_error("writing the durable mark", &e))?;
    let mark_file = MarkWriter {
        file,
        index: 0,
        baseline_next,
        lsn: durable_through,
        dirty: false,
        synced_at: Instant::now(),
        sync_interval: Duration::from_millis(config.mark_sync_interval_ms),
    };
    let writer = WalWriter::start(
        fs,
        Lsn(next_lsn),
        kept,
        config.segment_bytes_max,
        config.preallocate_segments,
    )
    .map_err(|e| io_error("starting a WAL segment", &e))?;
    Ok((writer, mark_file, report))
}

fn origin_writes(origins: &HashMap<Origin, (Committed, i64)>) -> Vec<(Origin, Committed, i64)> {
    origins
        .iter()
        .map(|(origin, (committed, at))| (*origin, committed.clone(), *at))
        .collect()
}

fn corrupt(segment: &str, offset: u64, reason: &str) -> CkptError {
    CkptError::new(
        ErrorCode::Library,
        format!("WAL corrupt in segment {segment} at offset {offset}: {reason}; run `ckpt-tool salvage`"),
    )
}

/// The group-commit thread: validates, appends and applies batches, then
/// hands each to the [`Syncer`], so the next batch is written and applied
/// while the previous one's fsync runs.
struct Writer {
    shared: Arc<Shared>,
    wal: WalWriter,
    state: StateMachine,
    next_lsn: u64,
    config: StoreConfig,
    checkpoint: SyncSender<u64>,
    /// The fsync step. With `fsync_thread` set it runs on its own thread,
    /// except that a batch finding that thread idle and no request queued
    /// behind it is synced here, saving the hand-off (a thread wake-up is
    /// as long as half an fsync on a fast disk); else it always runs here.
    syncer: Arc<Mutex<Syncer>>,
    /// Batches handed to the fsync thread and not yet synced by it.
    sync_pending: Arc<AtomicU64>,
    /// Origins applied by the batch being committed, with what they
    /// produced and when: written to RocksDB with the batch.
    origins: HashMap<Origin, (Committed, i64)>,
    /// When idle sessions were last forgotten.
    sessions_swept: Instant,
}

struct Accepted {
    request: Request,
    committed: Committed,
}

/// A batch planned: what to log, apply and answer.
struct Planned {
    encoded: Vec<u8>,
    effects: Vec<Effect>,
    accepted: Vec<Accepted>,
    logged: Vec<Entry>,
    lsns: Vec<Lsn>,
}

/// A batch written and applied, waiting for its fsync.
struct SyncJob {
    segment: SyncHandle,
    durable: Vec<Accepted>,
    /// The batch's records, kept only for a commit listener.
    records: Vec<Record>,
    /// The last position of each instance the batch changed.
    positions: Vec<Position>,
    /// The batch's last lsn, if it logged anything.
    last_lsn: Option<Lsn>,
    /// When the writer took the batch, and when it had written and
    /// applied it ([`WriteStages`]).
    picked: Instant,
    committed: Instant,
}

impl Writer {
    fn run(mut self, requests: Receiver<Request>) {
        let (jobs, job_receiver) = mpsc::sync_channel::<SyncJob>(self.config.sync_queue_max);
        let mut syncer_thread = None;
        if self.config.fsync_thread {
            let syncer = self.syncer.clone();
            let pending = self.sync_pending.clone();
            let watch = self.shared.clone();
            let spawned = std::thread::Builder::new()
                .name("ckpt-fsync".into())
                .spawn(move || {
                    watched(&watch, "fsync", false, || {
                        Syncer::run(&syncer, &pending, job_receiver)
                    })
                });
            match spawned {
                Ok(handle) => syncer_thread = Some(handle),
                Err(error) => {
                    self.shared
                        .poison(format!("cannot start the fsync thread: {error}"));
                    return self.refuse_all(requests);
                }
            }
        }
        let mut carried: Option<Request> = None;
        loop {
            let first = match carried.take() {
                Some(request) => request,
                None => match requests.recv() {
                    Ok(request) => request,
                    Err(_) => break,
                },
            };
            let mut bytes: usize = first.work.bytes();
            let mut batch = vec![first];
            while batch.len() < self.config.batch_requests_max
                && bytes < self.config.batch_bytes_max
            {
                match requests.try_recv() {
                    Ok(request) => {
                        bytes += request.work.bytes();
                        batch.push(request);
                    }
                    Err(_) => break,
                }
            }
            let job = self.commit(batch, Instant::now());
            *self.shared.totals.lock().unwrap_or_else(|p| p.into_inner()) = self.state.totals();
            if let Some(job) = job {
                if syncer_thread.is_none() {
                    lock_syncer(&self.syncer).sync(vec![job]);
                } else if let Some(job) = self.sync_here_if_idle(job, &requests, &mut carried) {
                    self.sync_pending.fetch_add(1, Ordering::AcqRel);
                    if let Err(mpsc::SendError(job)) = jobs.send(job) {
                        self.sync_pending.fetch_sub(1, Ordering::AcqRel);
                        let error = CkptError::new(ErrorCode::Library, "the fsync thread stopped");
                        fail_all(job.durable, &error);
                    }
                }
            }
            self.after_commit();
        }
        drop(jobs);
        if let Some(handle) = syncer_thread {
            let _ = handle.join();
        }
    }

    /// Syncs `job` on this thread when nothing would overlap with its
    /// fsync: the fsync thread has nothing of ours to sync (so the log
    /// order of answers holds) and no request is queued (the next batch
    /// would wait for this one). Returns the job otherwise, for the fsync
    /// thread; a request taken to look is left in `carried`.
    fn sync_here_if_idle(
        &mut self,
        job: SyncJob,
        requests: &Receiver<Request>,
        carried: &mut Option<Request>,
    ) -> Option<SyncJob> {
        if carried.is_some() || self.sync_pending.load(Ordering::Acquire) > 0 {
            return Some(job);
        }
        match requests.try_recv() {
            Ok(request) => {
                *carried = Some(request);
                return Some(job);
            }
            Err(mpsc::TryRecvError::Disconnected) | Err(mpsc::TryRecvError::Empty) => {}
        }
        // The fsync thread counts a batch off only after answering it, still
        // holding the syncer: with nothing pending it has nothing left to
        // answer, so answers stay in log order. (Counting off before the
        // answers would make this path run under load too, while the fsync
        // thread answers — serializing fsyncs with the next batch's work.)
        let Ok(mut syncer) = self.syncer.try_lock() else {
            return Some(job);
        };
        if self.sync_pending.load(Ordering::Acquire) > 0 {
            return Some(job);
        }
        // Counted before the answers, so whoever is answered sees it.
        self.shared
            .stats
            .syncs_on_writer
            .fetch_add(1, Ordering::Relaxed);
        syncer.sync(vec![job]);
        None
    }

    fn refuse_all(&self, requests: Receiver<Request>) {
        while let Ok(request) = requests.recv() {
            let error = self
                .shared
                .poisoned_error()
                .unwrap_or_else(|| CkptError::new(ErrorCode::Library, "store failed"));
            (request.reply)(Err(error));
        }
    }

    /// The entries one request makes, each applied to the state machine
    /// (effects appended to `effects`), and what to answer; or the error
    /// to answer with. A duplicate origin makes no entry.
    fn plan_request(
        &mut self,
        work: &Work,
        now: i64,
        effects: &mut Vec<Effect>,
    ) -> CkptResult<(Vec<Entry>, Committed)> {
        let shared = self.shared.clone();
        let backing = DbBacking(&shared.db);
        let mut entries = Vec::new();
        match work {
            Work::Plan { op, origin } => {
                if let Some(origin) = origin {
                    if let Some(first) = self.origin_applied(*origin)? {
                        return Ok((entries, first));
                    }
                }
                let (planned, outcome) = self.state.plan(&backing, op, now)?;
                for (instance, body) in planned {
                    let (epoch, seq) = match self.state.instance(instance) {
                        Some(meta) => (meta.epoch, Seq(meta.seq.0 + 1)),
                        None => (op.start_epoch().unwrap_or(Epoch(1)), Seq(1)),
                    };
                    let entry = Entry {
                        instance,
                        epoch,
                        seq,
                        timestamp: now,
                        origin: *origin,
                        body,
                    };
                    match self.state.apply(&backing, &entry) {
                        Ok(record_effects) => effects.extend(record_effects),
                        Err(error) => {
                            // plan() accepted what apply() refuses: a bug, and
                            // the in-memory state can no longer be trusted.
                            self.shared
                                .poison(format!("state machine inconsistency: {error}"));
                        }
                    }
                    entries.push(entry);
                }
                let committed = Committed {
                    outcome,
                    position: entries.last().map(Entry::position),
                };
                if let (Some(origin), false) = (origin, entries.is_empty()) {
                    self.origins.insert(*origin, (committed.clone(), now));
                }
                Ok((entries, committed))
            }
            Work::Replicated { entries: incoming } => {
                // On an error the caller undoes the whole batch (see
                // `Writer::plan_batch`).
                if incoming.is_empty() {
                    return Err(CkptError::new(
                        ErrorCode::BadOperation,
                        "no entries to apply",
                    ));
                }
                for entry in incoming {
                    self.state.check_entry(entry).map_err(|why| {
                        CkptError::new(ErrorCode::BadOperation, format!("refused: {why}"))
                    })?;
                    let entry_effects = self.state.apply(&backing, entry).map_err(|e| {
                        CkptError::new(
                            ErrorCode::BadOperation,
                            format!(
                                "refused: instance {} entry epoch {} seq {} does not fit: {}",
                                entry.instance.0, entry.epoch.0, entry.seq.0, e.detail
                            ),
                        )
                    })?;
                    effects.extend(entry_effects);
                    self.remember_entry_origin(entry);
                }
                let position = incoming.last().map(Entry::position);
                entries.extend(incoming.iter().cloned());
                Ok((
                    entries,
                    Committed {
                        outcome: Outcome::Done,
                        position,
                    },
                ))
            }
            Work::Local(local) => {
                let made = self.local_entries(local, now)?;
                for entry in made {
                    self.state
                        .check_entry(&entry)
                        .map_err(|why| CkptError::new(ErrorCode::BadOperation, why))?;
                    match self.state.apply(&backing, &entry) {
                        Ok(entry_effects) => effects.extend(entry_effects),
                        Err(error) => self
                            .shared
                            .poison(format!("state machine inconsistency: {error}")),
                    }
                    entries.push(entry);
                }
                Ok((
                    entries.clone(),
                    Committed {
                        outcome: Outcome::Done,
                        position: entries.last().map(Entry::position),
                    },
                ))
            }
        }
    }

    /// The entries of a node-local operation, validated.
    fn local_entries(&mut self, local: &LocalWork, now: i64) -> CkptResult<Vec<Entry>> {
        let entry = |instance, epoch, seq, body| Entry {
            instance,
            epoch,
            seq,
            timestamp: now,
            origin: None,
            body,
        };
        match local {
            LocalWork::BeginEpoch { instance, epoch } => {
                let meta = self
                    .state
                    .instance(*instance)
                    .ok_or_else(|| missing_instance(*instance))?;
                if meta.stale {
                    return Err(stale_error(*instance));
                }
                if *epoch <= meta.epoch {
                    return Err(CkptError::new(
                        ErrorCode::BadOperation,
                        format!(
                            "instance {} is at epoch {}: epoch {} does not follow it",
                            instance.0, meta.epoch.0, epoch.0
                        ),
                    ));
                }
                Ok(vec![entry(
                    *instance,
                    *epoch,
                    Seq(meta.seq.0 + 1),
                    RecordBody::EpochStart { epoch: *epoch },
                )])
            }
            LocalWork::Discard { instance } => {
                let meta = self
                    .state
                    .instance(*instance)
                    .ok_or_else(|| missing_instance(*instance))?;
                Ok(vec![entry(
                    *instance,
                    meta.epoch,
                    meta.seq,
                    RecordBody::SuffixDiscard,
                )])
            }
        }
    }

    /// What an origin produced when it was applied, if it was: in this
    /// batch, or remembered in RocksDB.
    fn origin_applied(&self, origin: Origin) -> CkptResult<Option<Committed>> {
        if let Some((committed, _)) = self.origins.get(&origin) {
            return Ok(Some(committed.clone()));
        }
        self.shared.db.origin(origin)
    }

    /// Remembers the origin of an entry this node did not plan.
    fn remember_entry_origin(&mut self, entry: &Entry) {
        if let Some(origin) = entry.origin {
            let earlier = self.origins.get(&origin).map(|(c, _)| c.clone());
            let committed = Committed::of_entry(entry, earlier);
            self.origins.insert(origin, (committed, entry.timestamp));
        }
    }

    /// Validates, appends and applies one batch; answers what can be
    /// answered now and returns what waits for the fsync.
    fn commit(&mut self, mut batch: Vec<Request>, picked: Instant) -> Option<SyncJob> {
        if let Some(error) = self.shared.poisoned_error() {
            for request in batch {
                (request.reply)(Err(error.clone()));
            }
            return None;
        }
        let first_lsn = self.next_lsn;
        let planned = loop {
            match self.plan_batch(batch) {
                Ok(planned) => break planned,
                // A refused replicated request was answered and the batch
                // undone: plan the others again, from the state before it.
                Err(rest) => batch = rest,
            }
        };
        let Planned {
            encoded,
            effects,
            accepted,
            logged,
            lsns,
        } = planned;
        let records = logged.len() as u64;
        if records == 0 {
            // Nothing to log (rejections, an existing checkpoint opened, a
            // barrier, a duplicate origin): answered once every earlier
            // batch is durable, which the fsync queue's order guarantees.
            return Some(SyncJob {
                segment: self.wal.sync_handle(),
                durable: accepted,
                records: Vec::new(),
                positions: Vec::new(),
                last_lsn: None,
                picked,
                committed: Instant::now(),
            });
        }
        if let Some(error) = self.shared.poisoned_error() {
            self.undo(first_lsn);
            fail_all(accepted, &error);
            return None;
        }

        if let Err(failure) = self.wal.append(&encoded) {
            self.undo(first_lsn);
            let error = if failure.no_space {
                CkptError::new(
                    ErrorCode::NoSpace,
                    format!("disk full writing the log: {}", failure.error),
                )
            } else {
                CkptError::new(
                    ErrorCode::Library,
                    format!("writing the log failed: {}", failure.error),
                )
            };
            if !failure.rolled_back || !failure.no_space {
                self.shared
                    .poison(format!("log write failed: {}", failure.error));
            }
            fail_all(accepted, &error);
            return None;
        }
        let last_lsn = Lsn(self.next_lsn - 1);
        let origins: Vec<(Origin, Committed, i64)> = self
            .origins
            .drain()
            .map(|(origin, (committed, at))| (origin, committed, at))
            .collect();
        if let Err(error) =
            self.shared
                .db
                .apply_with(&effects, &origins, last_lsn, self.state.next_instance())
        {
            self.shared
                .poison(format!("RocksDB write failed: {}", error.detail));
            fail_all(accepted, &error);
            return None;
        }
        self.shared.applied.store(last_lsn.0, Ordering::Release);
        let stats = &self.shared.stats;
        stats.records.fetch_add(records, Ordering::Relaxed);
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.batch_records.observe(records);
        stats
            .wal_bytes
            .fetch_add(encoded.len() as u64, Ordering::Relaxed);

        let listeners = self.shared.listeners();
        if let Some(append) = &listeners.append {
            append(&logged);
        }
        let mut positions: Vec<Position> = Vec::new();
        for entry in &logged {
            match positions.iter_mut().find(|p| p.instance == entry.instance) {
                Some(position) => *position = entry.position(),
                None => positions.push(entry.position()),
            }
        }
        let (written, durable): (Vec<_>, Vec<_>) = accepted
            .into_iter()
            .partition(|a| a.request.durability == Durability::Written);
        for Accepted { request, committed } in written {
            (request.reply)(Ok(committed));
        }
        let records = if listeners.commit.is_some() {
            lsns.into_iter()
                .zip(logged)
                .map(|(lsn, entry)| Record { lsn, entry })
                .collect()
        } else {
            Vec::new()
        };
        Some(SyncJob {
            segment: self.wal.sync_handle(),
            durable,
            records,
            positions,
            last_lsn: Some(last_lsn),
            picked,
            committed: Instant::now(),
        })
    }

    /// Plans every request of a batch: validated and applied to the state
    /// machine, its records encoded; a refused request is answered at once.
    /// A replicated request may be refused after some of its entries were
    /// applied in memory: then the whole batch is undone and the others are
    /// handed back, to be planned again (refusals are rare: a backup that
    /// diverged), so replicated requests batch like any other.
    fn plan_batch(&mut self, batch: Vec<Request>) -> Result<Planned, Vec<Request>> {
        let first_lsn = self.next_lsn;
        self.origins.clear();
        let mut planned = Planned {
            encoded: Vec::new(),
            effects: Vec::new(),
            accepted: Vec::with_capacity(batch.len()),
            logged: Vec::new(),
            lsns: Vec::new(),
        };
        let mut requests = batch.into_iter();
        while let Some(request) = requests.next() {
            // A replicated request refused at its first entry applied
            // nothing (the common refusal: a gap, an old epoch): no undo.
            let may_apply = match &request.work {
                Work::Replicated { entries } => entries
                    .first()
                    .is_some_and(|first| self.state.check_entry(first).is_ok()),
                _ => false,
            };
            let (entries, committed) =
                match self.plan_request(&request.work, request.now, &mut planned.effects) {
                    Ok(planned) => planned,
                    Err(error) => {
                        (request.reply)(Err(error));
                        if may_apply {
                            // Entries before the refused one may have been
                            // applied in memory: forget the whole batch.
                            self.undo(first_lsn);
                            let mut rest: Vec<Request> =
                                planned.accepted.into_iter().map(|a| a.request).collect();
                            rest.extend(requests);
                            return Err(rest);
                        }
                        continue;
                    }
                };
            for entry in entries {
                encode_record(Lsn(self.next_lsn), &entry, &mut planned.encoded);
                planned.lsns.push(Lsn(self.next_lsn));
                self.next_lsn += 1;
                planned.logged.push(entry);
            }
            planned.accepted.push(Accepted { request, committed });
        }
        Ok(planned)
    }

    /// Forgets a batch that never reached the log: lsns are reused and the
    /// in-memory state is reloaded from RocksDB.
    fn undo(&mut self, first_lsn: u64) {
        self.next_lsn = first_lsn;
        self.origins.clear();
        match self.shared.db.reload() {
            Ok(loaded) => self
                .state
                .reset(loaded.names, loaded.instances, loaded.next_instance),
            Err(error) => self.shared.poison(format!(
                "reloading state after a failed write: {}",
                error.detail
            )),
        }
    }

    fn after_commit(&mut self) {
        if self.sessions_swept.elapsed() >= SESSION_SWEEP_INTERVAL {
            self.sessions_swept = Instant::now();
            match self
                .shared
                .db
                .forget_idle_sessions(now_ns().saturating_sub(SESSION_IDLE_NS))
            {
                Ok(0) => {}
                Ok(forgotten) => tracing::debug!(forgotten, "forgot idle client sessions"),
                Err(error) => tracing::warn!(%error, "forgetting idle sessions failed"),
            }
        }
        if self.wal.is_full() {
            match self.wal.rotate(Lsn(self.next_lsn)) {
                Ok(()) => {
                    if self.wal.is_preallocated() {
                        self.shared
                            .stats
                            .segments_preallocated
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    // Ask for RocksDB to be made durable up to here; if a
                    // request is already pending it covers less, and the next
                    // rotation asks again.
                    let _ = self.checkpoint.try_send(self.next_lsn - 1);
                }
                Err(RotateError::Sync(error)) => {
                    // Batches not yet answered wait on the fsync thread,
                    // which sees the poison and fails them.
                    self.shared
                        .poison(format!("fsync of a full WAL segment failed: {error}"));
                }
                Err(RotateError::Stray(error)) => {
                    self.shared
                        .poison(format!("starting a WAL segment: {error}"));
                }
                Err(RotateError::Create(error)) => {
                    tracing::warn!(%error, "could not start a new WAL segment; continuing in the current one")
                }
            }
            if self.wal.segment_count() >= self.config.wal_segments_max {
                // The background checkpoint fell behind: catch up here, at
                // the cost of one stalled batch, rather than let the log grow.
                if let Err(error) = checkpoint_now(&self.shared, self.next_lsn - 1) {
                    tracing::error!(%error, "making RocksDB durable failed; the log is kept");
                }
            }
        }
        self.delete_covered();
    }

    fn delete_covered(&mut self) {
        let mut durable = self.shared.durable_applied.load(Ordering::Acquire);
        let hold = self.shared.wal_hold.load(Ordering::Acquire);
        if hold > 0 && self.wal.bytes_from(Lsn(hold)) <= self.config.wal_hold_bytes_max {
            // Replication still reads from `hold` on: keep it while the
            // bound allows (past it, readers are told the log is gone).
            durable = durable.min(hold - 1);
        }
        match self
            .wal
            .delete_covered(Lsn(durable), self.config.wal_history_bytes)
        {
            Ok(deleted) => {
                self.shared
                    .stats
                    .segments_deleted
                    .fetch_add(deleted as u64, Ordering::Relaxed);
            }
            Err(error) => tracing::warn!(%error, "deleting old WAL segments failed; will retry"),
        }
        self.shared
            .segments
            .store(self.wal.segment_count() as u64, Ordering::Relaxed);
        self.shared
            .wal_bytes_on_disk
            .store(self.wal.bytes_on_disk(), Ordering::Relaxed);
    }
}

/// The fsync thread: syncs every batch the writer handed over (one
/// `fdatasync` for all that queued meanwhile), records the lsn they reach in
/// the durable mark, then answers them and tells the commit listener, in
/// log order.
struct Syncer {
    shared: Arc<Shared>,
    /// The durable mark, rewritten after every fsync.
    mark: MarkWriter,
}

/// The durable mark file (`wal/mark.rs`) as the fsync thread keeps it.
struct MarkWriter {
    file: Box<dyn WalFile>,
    /// The rolling slot written until the next sync of the file.
    index: u64,
    /// The baseline slot written when the rolling slots wrap around.
    baseline_next: u64,
    /// The lsn last written.
    lsn: Lsn,
    /// Whether the file was written since it was last synced.
    dirty: bool,
    synced_at: Instant,
    sync_interval: Duration,
}

impl MarkWriter {
    /// Records, without syncing (that would double the fsyncs), that the
    /// log is durable up to `lsn`: the mark is a lower bound of the durable
    /// end, which is all recovery needs.
    fn advance(&mut self, lsn: Lsn) {
        match mark::write_rolling(self.file.as_mut(), self.index, lsn) {
            Ok(()) => {
                self.lsn = lsn;
                self.dirty = true;
            }
            Err(error) => tracing::warn!(%error, "updating the durable mark failed"),
        }
    }

    /// Syncs the file once the interval has passed and moves on to the
    /// next rolling slot, so the slot just synced is never rewritten; after
    /// the last slot, a synced baseline takes over and the slots start
    /// again. A failure is not a durability failure (the log itself was
    /// synced): the mark stays a lower bound and the next interval retries.
    fn sync_if_due(&mut self) {
        if !self.dirty || self.synced_at.elapsed() < self.sync_interval {
            return;
        }
        if let Err(error) = self.file.sync_data() {
            tracing::warn!(%error, "syncing the durable mark failed");
            return;
        }
        self.dirty = false;
        self.synced_at = Instant::now();
        self.index += 1;
        if self.index.is_multiple_of(mark::ROLLING_SLOTS_MAX) {
            match mark::rewrite_baseline(self.file.as_mut(), self.baseline_next, self.lsn) {
                Ok(()) => self.baseline_next = mark::other_baseline(self.baseline_next),
                Err(error) => {
                    tracing::warn!(%error, "rewriting the durable mark's baseline failed")
                }
            }
        }
    }
}

fn lock_syncer(syncer: &Mutex<Syncer>) -> std::sync::MutexGuard<'_, Syncer> {
    syncer.lock().unwrap_or_else(|p| p.into_inner())
}

impl Syncer {
    /// The fsync thread: syncs what the writer hands over, all that queued
    /// in one go, and counts it off `pending` once answered, before letting
    /// go of the syncer (see [`Writer::sync_here_if_idle`]).
    fn run(syncer: &Mutex<Syncer>, pending: &AtomicU64, jobs: Receiver<SyncJob>) {
        while let Ok(first) = jobs.recv() {
            let mut syncer = lock_syncer(syncer);
            let mut batch = vec![first];
            while let Ok(job) = jobs.try_recv() {
                batch.push(job);
            }
            let count = batch.len() as u64;
            syncer.sync(batch);
            pending.fetch_sub(count, Ordering::AcqRel);
        }
    }

    fn sync(&mut self, batch: Vec<SyncJob>) {
        let needs_sync = batch
            .iter()
            .any(|job| job.last_lsn.is_some() || !job.durable.is_empty());
        let mut synced: Vec<&SyncHandle> = Vec::new();
        let mut failure = self.shared.poisoned_error();
        let sync_started = Instant::now();
        if needs_sync && failure.is_none() {
            for job in &batch {
                if synced.iter().any(|h| Arc::ptr_eq(h, &job.segment)) {
                    continue;
                }
                synced.push(&job.segment);
                self.shared.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                let started = Instant::now();
                let result = job
                    .segment
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .sync_data();
                let took_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                self.shared.stats.fsync_ns.observe(took_ns);
                if let Err(error) = result {
                    self.shared
                        .poison(format!("fsync of the log failed: {error}"));
                    failure = Some(
                        self.shared
                            .poisoned_error()
                            .unwrap_or_else(|| io_error("fsync", &error)),
                    );
                    break;
                }
            }
        }
        let sync_ended = Instant::now();
        if needs_sync && failure.is_none() {
            if let Some(last) = batch.iter().filter_map(|job| job.last_lsn).max() {
                self.mark.advance(last);
            }
        }
        let listeners = self.shared.listeners();
        if let (Some(listener), None) = (&listeners.durable, &failure) {
            // Before the answers, so that whoever is answered finds the
            // position already reported durable.
            let mut positions: Vec<Position> = Vec::new();
            for position in batch.iter().flat_map(|job| job.positions.iter()) {
                match positions
                    .iter_mut()
                    .find(|p| p.instance == position.instance)
                {
                    Some(last) => *last = *position,
                    None => positions.push(*position),
                }
            }
            if !positions.is_empty() {
                listener(&positions);
            }
        }
        for job in batch {
            match &failure {
                Some(error) => fail_all(job.durable, error),
                None => {
                    let stages = &self.shared.stats.write_stages;
                    let fsync_ns = ns_between(sync_started, sync_ended);
                    for Accepted { request, committed } in job.durable {
                        stages.queue.observe(ns_between(request.queued, job.picked));
                        stages.commit.observe(ns_between(job.picked, job.committed));
                        stages
                            .sync_wait
                            .observe(ns_between(job.committed, sync_started));
                        stages.fsync.observe(fsync_ns);
                        // Counted before the reply: whoever is answered
                        // finds its request counted.
                        stages.answer.observe_since(sync_ended);
                        (request.reply)(Ok(committed));
                    }
                    if let (Some(listener), false) = (&listeners.commit, job.records.is_empty()) {
                        listener(&job.records);
                    }
                }
            }
        }
        // After the answers: syncing the mark now and then bounds how far
        // behind the disk's copy of it can be.
        self.mark.sync_if_due();
    }
}

fn fail_all(accepted: Vec<Accepted>, error: &CkptError) {
    for Accepted { request, .. } in accepted {
        (request.reply)(Err(error.clone()));
    }
}

/// Operations accepted on a full disk: they shrink what is stored (their
/// log record is small and the reserve pays for it).
fn frees_space(op: &Op) -> bool {
    match op {
        Op::Unlink { .. }
        | Op::Destroy { .. }
        | Op::DeleteSection { .. }
        | Op::ExpireDue
        | Op::ExpireDueIn { .. } => true,
        Op::Barrier => true,
        Op::CreateCheckpoint { .. }
        | Op::SetRetention { .. }
        | Op::CreateSection { .. }
        | Op::SetExpiration { .. }
        | Op::Write { .. }
        | Op::Overwrite { .. }
        | Op::Restore { .. }
        | Op::RestoreSection { .. } => false,
    }
}

fn op_bytes(op: &Op) -> usize {
    match op {
        Op::CreateSection { data, .. } | Op::Overwrite { data, .. } => data.len() + 64,
        Op::Write { elements, .. } => elements.iter().map(|e| e.data.len() + 32).sum(),
        _ => 64,
    }
}
