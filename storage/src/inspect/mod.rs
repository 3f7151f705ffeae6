//! Looking at a data directory without changing it: what `ckpt-tool`'s
//! offline commands (`ls`, `stat`, `dump`, `wal`, `verify --data-dir`) are
//! built on.
//!
//! - [`ReadOnlyStore`]: the store as recovery would leave it — RocksDB
//!   opened as a read-only (secondary) instance, the log replayed over it
//!   in memory by recovery's own code ([`crate::store`]'s `replay_log`:
//!   the same segment scan, torn-versus-corrupt rule, lsn checks and state
//!   machine) — without a single write: no trim, no flush, no new segment,
//!   no mark, no RocksDB file, no lock.
//! - [`WalReader`]: the log's segments in order, each judged exactly as
//!   recovery judges it, and a walk that re-synchronises after damage to
//!   show what lies beyond it.
//! - [`verify`]: every check of a data directory, with the verdict of
//!   recovery itself.
//!
//! A server may be running on the directory meanwhile: nothing here takes
//! the directory's lock, RocksDB's secondary mode is made for reading
//! beside a live primary, and the log is append-only. The result is a view
//! of one moment; if the server trimmed the log between the moment RocksDB
//! was read and the moment a segment was, the open is retried.

mod verify;
mod wal;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ckpt_proto::{CheckpointName, CkptError, CkptResult, ErrorCode, SectionDescriptor};

use crate::db::Db;
use crate::io::{WalFile, WalFs};
use crate::state::{InstanceMeta, StateMachine};
use crate::store::{descriptor, replay_log, RecoveryReport, ReplayError, StoreSnapshot};
use crate::wal::record::{InstanceId, Lsn};

pub use verify::{verify, Finding, VerifyProgress, VerifyReport};
pub use wal::{
    tail_reason, torn_from, walk_records, walk_with_resync, Gap, SegmentFile, WalReader,
};

/// Records applied to memory per batch while a read-only store replays the
/// log (the batching only bounds a batch's size; the result is the same).
const REPLAY_BATCH_RECORDS: usize = 1024;

/// Opens of a live directory tried before giving up (a server trimming the
/// log between the RocksDB open and the log scan makes one fail).
const LIVE_ATTEMPTS: usize = 3;

/// The log directory, opened for reading only: every method that would
/// change something fails with `PermissionDenied`, so recovery's code run
/// on it cannot write.
pub(crate) struct ReadOnlyFs {
    dir: PathBuf,
    /// Files listed as if they were not there (segments a salvage would
    /// move aside).
    hidden: Vec<String>,
}

impl ReadOnlyFs {
    pub(crate) fn new(dir: impl Into<PathBuf>) -> Self {
        ReadOnlyFs {
            dir: dir.into(),
            hidden: Vec::new(),
        }
    }
}

fn refused(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("{what}: the log is open read-only"),
    )
}

impl WalFs for ReadOnlyFs {
    fn list(&self) -> io::Result<Vec<String>> {
        match std::fs::read_dir(&self.dir) {
            Ok(entries) => {
                let mut names = Vec::new();
                for entry in entries {
                    let name = entry?.file_name().to_string_lossy().into_owned();
                    if !self.hidden.contains(&name) {
                        names.push(name);
                    }
                }
                Ok(names)
            }
            // No log directory: an empty log (it is not created).
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(error) => Err(error),
        }
    }
    fn create(&self, _: &str) -> io::Result<Box<dyn WalFile>> {
        Err(refused("creating a file"))
    }
    fn open(&self, _: &str) -> io::Result<Box<dyn WalFile>> {
        Err(refused("opening a file for writing"))
    }
    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        std::fs::read(self.dir.join(name))
    }
    fn truncate(&self, _: &str, _: u64) -> io::Result<()> {
        Err(refused("truncating a file"))
    }
    fn remove(&self, _: &str) -> io::Result<()> {
        Err(refused("removing a file"))
    }
    fn free_bytes(&self) -> Option<u64> {
        None
    }
    fn rename(&self, _: &str, _: &str) -> io::Result<()> {
        Err(refused("renaming a file"))
    }
    fn sync_dir(&self) -> io::Result<()> {
        Err(refused("syncing the directory"))
    }
}

/// A directory of its own, outside the data directory, for the files a
/// RocksDB secondary instance keeps (its info log); removed on drop.
pub(crate) struct SecondaryDir {
    path: PathBuf,
}

impl SecondaryDir {
    pub(crate) fn new() -> CkptResult<SecondaryDir> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "ckpt-read-only-{}-{}-{}",
            std::process::id(),
            ckpt_proto::now_ns(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).map_err(|e| {
            CkptError::new(
                ErrorCode::Library,
                format!("creating {}: {e}", path.display()),
            )
        })?;
        Ok(SecondaryDir { path })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SecondaryDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Whether a process holds the directory's lock (a server running on it):
/// probed with a shared `flock` on a read-only descriptor, released at
/// once; the lock file is neither created nor written.
pub fn held_by_another_process(data_dir: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(file) = std::fs::File::open(data_dir.join("ckpt.lock")) else {
        return false;
    };
    // SAFETY: flock on a descriptor we own; closing it releases the lock.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) != 0 }
}

/// Refuses a path that is not an existing data directory, creating nothing.
fn require_data_dir(dir: &Path) -> CkptResult<()> {
    if !dir.is_dir() {
        return Err(CkptError::new(
            ErrorCode::NotExist,
            format!("data directory {} does not exist", dir.display()),
        ));
    }
    if !dir.join("wal").is_dir() && !dir.join("db").is_dir() {
        return Err(CkptError::new(
            ErrorCode::NotExist,
            format!(
                "{} is not a ckpt data directory (it has neither wal/ nor db/)",
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// What RocksDB holds as it is on disk, without the log: its applied
/// position and the name of every instance (named or unlinked).
#[derive(Debug, Clone)]
pub struct RocksDbFacts {
    /// The last lsn applied to RocksDB.
    pub applied: Lsn,
    /// Instance ids and names.
    pub names: Vec<(InstanceId, CheckpointName)>,
}

/// Reads [`RocksDbFacts`] of `data_dir` read-only (for `ckpt-tool wal` and
/// `salvage`, which look at a log that may not recover).
///
/// # Errors
/// `NOT_EXIST` without a database; RocksDB errors.
pub fn rocksdb_facts(data_dir: &Path) -> CkptResult<RocksDbFacts> {
    let secondary = SecondaryDir::new()?;
    let (db, loaded) = Db::open_read_only(&data_dir.join("db"), secondary.path())?;
    drop(db);
    let mut names: Vec<(InstanceId, CheckpointName)> = loaded
        .instances
        .into_iter()
        .map(|(id, meta)| (id, meta.name))
        .collect();
    names.sort_by_key(|(id, _)| *id);
    Ok(RocksDbFacts {
        applied: loaded.applied,
        names,
    })
}

/// Where recovery refuses a data directory.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The segment it names.
    pub segment: String,
    /// The offset it names.
    pub offset: u64,
    /// Why (recovery's words).
    pub reason: String,
    /// The log is whole as far as it goes but ends below the durable mark
    /// (acknowledged records are missing; nothing is damaged).
    pub durable_end: bool,
}

/// What recovery would do with a data directory: [`recovery_verdict`].
#[derive(Debug, Clone)]
pub struct RecoveryVerdict {
    /// Where it would refuse to start; `None` when it starts.
    pub refusal: Option<Refusal>,
    /// RocksDB's applied position.
    pub applied: Lsn,
    /// The highest lsn of the log's records recovery reads before any
    /// refusal.
    pub kept_last: Option<u64>,
    /// A torn tail it would cut off: segment, offset, reason.
    pub torn_tail: Option<(String, u64, String)>,
    /// Instance names known to RocksDB and to the records replayed.
    pub names: Vec<(InstanceId, CheckpointName)>,
}

/// Runs recovery on `data_dir` read-only (the log replayed over RocksDB in
/// memory by recovery's own code) and says where it would refuse to start,
/// with the log's segments named in `set_aside` treated as moved away (what
/// a salvage plans). Changes nothing.
///
/// # Errors
/// `NOT_EXIST` without a data directory or database; RocksDB and IO errors
/// (not refusals).
pub fn recovery_verdict(data_dir: &Path, set_aside: &[String]) -> CkptResult<RecoveryVerdict> {
    require_data_dir(data_dir)?;
    let secondary = SecondaryDir::new()?;
    let (db, loaded) = Db::open_read_only(&data_dir.join("db"), secondary.path())?;
    let applied = loaded.applied;
    let mut state = StateMachine::new(loaded.names, loaded.instances, loaded.next_instance);
    let mut fs = ReadOnlyFs::new(data_dir.join("wal"));
    fs.hidden = set_aside.to_vec();
    let result = replay_log(
        &fs,
        &db,
        &mut state,
        applied,
        REPLAY_BATCH_RECORDS,
        None,
        |_, scan, _| Ok(scan.first_lsn.is_some()),
    );
    let mut names = state.instance_names();
    names.sort_by_key(|(id, _)| *id);
    let (refusal, kept_last, torn_tail) = match result {
        Ok(replayed) => (None, replayed.log_last, replayed.report.torn_tail),
        Err(ReplayError::Corrupt {
            segment,
            offset,
            reason,
            kept_last,
            durable_end,
        }) => (
            Some(Refusal {
                segment,
                offset,
                reason,
                durable_end,
            }),
            kept_last,
            None,
        ),
        Err(ReplayError::Other(error)) => return Err(error),
    };
    Ok(RecoveryVerdict {
        refusal,
        applied,
        kept_last,
        torn_tail,
        names,
    })
}

/// A data directory's checkpoints as recovery would leave them, read
/// without changing a byte (see the module documentation).
pub struct ReadOnlyStore {
    db: Arc<Db>,
    report: RecoveryReport,
    wal_bytes: u64,
    wal_segments: u64,
    live: bool,
    // Removed after the database is closed.
    _secondary: SecondaryDir,
}

impl ReadOnlyStore {
    /// Opens `data_dir` read-only and replays the log over RocksDB in
    /// memory, exactly as [`crate::Store::open`] would replay it.
    ///
    /// # Errors
    /// `NOT_EXIST` for a missing directory or one without a database; the
    /// errors recovery gives (a corrupt log names the segment and offset
    /// and points at `ckpt-tool salvage`); RocksDB errors.
    pub fn open(data_dir: &Path) -> CkptResult<ReadOnlyStore> {
        require_data_dir(data_dir)?;
        let live = held_by_another_process(data_dir);
        let mut attempt = 1;
        loop {
            match ReadOnlyStore::open_once(data_dir, live) {
                Err(error)
                    if live && attempt < LIVE_ATTEMPTS && error.code != ErrorCode::NotExist =>
                {
                    tracing::debug!(%error, attempt, "the live directory changed while it was read; again");
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    fn open_once(data_dir: &Path, live: bool) -> CkptResult<ReadOnlyStore> {
        let secondary = SecondaryDir::new()?;
        let (db, loaded) = Db::open_read_only(&data_dir.join("db"), secondary.path())?;
        let mut state = StateMachine::new(loaded.names, loaded.instances, loaded.next_instance);
        let fs = ReadOnlyFs::new(data_dir.join("wal"));
        let replayed = replay_log(
            &fs,
            &db,
            &mut state,
            loaded.applied,
            REPLAY_BATCH_RECORDS,
            None,
            // Recovery would cut a torn tail off; here it is only reported.
            |_, scan, _| Ok(scan.first_lsn.is_some()),
        )?;
        let mut report = replayed.report;
        report.next_lsn = replayed.last_lsn.max(loaded.applied.0) + 1;
        let (wal_bytes, wal_segments) = WalReader::open(&data_dir.join("wal"))?.footprint();
        Ok(ReadOnlyStore {
            db: Arc::new(db),
            report,
            wal_bytes,
            wal_segments,
            live,
            _secondary: secondary,
        })
    }

    /// What recovery would do: records it would replay, a torn tail it
    /// would cut off, the next lsn.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    /// RocksDB's applied position as it is on disk.
    pub fn applied_lsn(&self) -> Lsn {
        Lsn(self.report.applied_at_open)
    }

    /// Whether a server held the directory when it was opened (the view is
    /// then of that moment).
    pub fn live(&self) -> bool {
        self.live
    }

    /// The instance a name points at.
    ///
    /// # Errors
    /// `NOT_EXIST` for an unknown name; storage errors.
    pub fn lookup(&self, name: &CheckpointName) -> CkptResult<InstanceId> {
        self.db.lookup_name(name)?.ok_or_else(|| {
            CkptError::new(
                ErrorCode::NotExist,
                format!("checkpoint {name} does not exist"),
            )
        })
    }

    /// Every instance, named or unlinked, in id order.
    ///
    /// # Errors
    /// Storage errors.
    pub fn instances(&self) -> CkptResult<Vec<(InstanceId, InstanceMeta)>> {
        self.db.list_instances()
    }

    /// Every section of an instance, in id order.
    ///
    /// # Errors
    /// Storage errors.
    pub fn sections(&self, instance: InstanceId) -> CkptResult<Vec<SectionDescriptor>> {
        Ok(self
            .db
            .snapshot()
            .sections(instance)?
            .into_iter()
            .map(|(id, meta)| descriptor(id, &meta))
            .collect())
    }

    /// A read view (the same type a running store's dump reads from).
    pub fn snapshot(&self) -> StoreSnapshot {
        StoreSnapshot::of_read_only(&self.db)
    }

    /// Bytes the log's segments hold on disk, and their number.
    pub fn wal_footprint(&self) -> (u64, u64) {
        (self.wal_bytes, self.wal_segments)
    }

    /// RocksDB's estimate of one instance's data size on disk (SST files).
    ///
    /// # Errors
    /// `NOT_EXIST` for an unknown instance; storage errors.
    pub fn instance_footprint(&self, instance: InstanceId) -> CkptResult<u64> {
        let meta = self.db.snapshot().instance(instance)?.ok_or_else(|| {
            CkptError::new(
                ErrorCode::NotExist,
                format!("checkpoint instance {} does not exist", instance.0),
            )
        })?;
        Ok(self.db.instance_bytes(meta.column_family, instance))
    }

    /// Closes the store. Nothing is written, so nothing can fail; it
    /// exists so a caller can treat both stores alike.
    ///
    /// # Errors
    /// None.
    pub fn close(self) -> CkptResult<()> {
        Ok(())
    }
}
