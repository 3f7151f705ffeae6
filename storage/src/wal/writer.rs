//! Appends to the current segment, rotates full segments, deletes segments
//! the durable applied position has covered.
//!
//! The writer is owned by the store's single group-commit thread, so it
//! needs no locking. A failed append is rolled back by cutting the segment
//! to its length before the append; if even that fails the caller must
//! poison the store, because the file's end is then unknown.
//!
//! Segments are preallocated: a helper thread fills the next segment with
//! zeros and syncs it ahead of time, so the group commit's `fdatasync`
//! overwrites blocks that exist instead of growing the file — no size
//! change for the file system's journal to commit with every sync
//! (docs/storage.md, "Preallocated segments"; about 35 % off each sync on
//! ext4). Recovery reads the zeros after the last record like any other
//! unsynced tail of the last segment and cuts them off.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use super::record::Lsn;
use super::segment::{encode_header, segment_name, SEGMENT_HEADER_BYTES};
use crate::io::{WalFile, WalFs};

/// Why an append failed.
#[derive(Debug)]
pub struct AppendError {
    /// The IO error.
    pub error: io::Error,
    /// The disk is full (ENOSPC).
    pub no_space: bool,
    /// The segment was cut back to its length before the append, so the log
    /// is exactly as it was.
    pub rolled_back: bool,
}

/// Why a rotation failed.
#[derive(Debug)]
pub enum RotateError {
    /// Syncing the current segment failed: its durability is unknown.
    Sync(io::Error),
    /// Creating the next segment failed; the current one stays in use.
    Create(io::Error),
    /// Creating the next segment failed and the half-made file could not
    /// be removed durably: the log's shape after a power cut is unknown
    /// (the caller must poison the store).
    Stray(io::Error),
}

impl From<RotateError> for io::Error {
    fn from(error: RotateError) -> io::Error {
        match error {
            RotateError::Sync(error) | RotateError::Create(error) | RotateError::Stray(error) => {
                error
            }
        }
    }
}

/// A handle that syncs one segment from another thread.
pub type SyncHandle = Arc<Mutex<Box<dyn WalFile>>>;

/// The file the helper thread zero-fills for the next segment. Not a
/// segment name, so recovery never reads it; [`WalWriter::start`] removes a
/// leftover one.
pub const SPARE_NAME: &str = "wal-spare.tmp";

/// Zeros written per call while filling a spare segment.
const ZERO_CHUNK_BYTES: usize = 1 << 20;

/// The appending end of the log.
pub struct WalWriter {
    fs: Arc<dyn WalFs>,
    file: Box<dyn WalFile>,
    sync_handle: SyncHandle,
    current: (Lsn, String),
    len: u64,
    /// Bytes of the current segment that were zero-filled and synced before
    /// it was used (0: the segment grows with every append).
    preallocated: u64,
    /// Closed segments, oldest first: first lsn, name, bytes.
    older: VecDeque<(Lsn, String, u64)>,
    closed_bytes: u64,
    segment_bytes_max: u64,
    /// Fills the next segment ahead of time; `None` when segments grow.
    spare: Option<SpareFiller>,
}

impl WalWriter {
    /// Starts a new segment at `first_lsn` after the `older` segments
    /// (oldest first), writing and syncing its header and the directory.
    /// With `preallocate`, a helper thread starts zero-filling the next
    /// segment; once it is ready the writer moves to it at the next
    /// [`WalWriter::rotate`] ([`WalWriter::is_full`] asks for that early,
    /// so a restarted store does not write a whole segment that grows).
    ///
    /// # Errors
    /// IO errors creating the segment.
    pub fn start(
        fs: Arc<dyn WalFs>,
        first_lsn: Lsn,
        older: Vec<(Lsn, String, u64)>,
        segment_bytes_max: u64,
        preallocate: bool,
    ) -> io::Result<Self> {
        // A spare left by an earlier run may be half filled: start afresh.
        match fs.remove(SPARE_NAME) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        let (file, name) = create_segment(fs.as_ref(), first_lsn)?;
        let sync_handle = Arc::new(Mutex::new(file.try_clone()?));
        let spare = if preallocate {
            let filler = SpareFiller::start(fs.clone(), segment_bytes_max)?;
            filler.request();
            Some(filler)
        } else {
            None
        };
        Ok(WalWriter {
            fs,
            file,
            sync_handle,
            current: (first_lsn, name),
            len: SEGMENT_HEADER_BYTES as u64,
            preallocated: 0,
            closed_bytes: older.iter().map(|(_, _, bytes)| bytes).sum(),
            older: older.into(),
            segment_bytes_max,
            spare,
        })
    }

    /// Appends encoded records (not yet durable).
    ///
    /// # Errors
    /// The write failed; see [`AppendError`] for whether it was undone.
    pub fn append(&mut self, bytes: &[u8]) -> Result<(), AppendError> {
        // At the writer's own end, not the file's: a preallocated segment
        // is longer than what was written into it.
        match self.file.write_at(self.len, bytes) {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(error) => {
                let no_space = error.raw_os_error() == Some(libc::ENOSPC)
                    || error.kind() == io::ErrorKind::StorageFull;
                // Cutting back also drops the rest of a preallocation: the
                // segment grows from here on.
                let rolled_back = self.file.set_len(self.len).is_ok();
                if rolled_back {
                    self.preallocated = 0;
                }
                Err(AppendError {
                    error,
                    no_space,
                    rolled_back,
                })
            }
        }
    }

    /// Makes every appended byte durable.
    ///
    /// # Errors
    /// The sync failed: durability of everything since the last successful
    /// sync is unknown.
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// A handle on the current segment for a syncing thread; appends made
    /// before it is synced are durable once `sync_data` on it returns.
    pub fn sync_handle(&self) -> SyncHandle {
        self.sync_handle.clone()
    }

    /// Whether the current segment should be closed: it reached its size
    /// bound, or it grows with every append while a zero-filled spare is
    /// ready to take over (and it holds a record, so the next segment's
    /// first lsn differs from its own).
    pub fn is_full(&self) -> bool {
        self.len >= self.segment_bytes_max
            || (self.preallocated == 0
                && self.len > SEGMENT_HEADER_BYTES as u64
                && self.spare.as_ref().is_some_and(SpareFiller::is_ready))
    }

    /// Whether the current segment was zero-filled ahead of time.
    pub fn is_preallocated(&self) -> bool {
        self.preallocated > 0
    }

    /// Syncs the current segment, then starts one at `next_lsn`.
    ///
    /// The sync comes first so that only the log's last segment can ever
    /// hold bytes that were never synced: recovery relies on this to call
    /// any damage before the last segment corruption rather than a torn
    /// tail (fsyncs of the old segment still queued on the fsync thread
    /// would otherwise race with the new segment's).
    ///
    /// # Errors
    /// [`RotateError::Sync`]: the sync failed, so the durability of the
    /// segment is unknown (the caller must poison the store);
    /// [`RotateError::Create`]: the new segment could not be made; the
    /// current one stays in use.
    pub fn rotate(&mut self, next_lsn: Lsn) -> Result<(), RotateError> {
        if self.preallocated > self.len {
            // Zeros past the end would read as damage in a segment that is
            // not the last; cutting them off syncs the segment too.
            self.file.set_len(self.len).map_err(RotateError::Sync)?;
        } else {
            self.file.sync_data().map_err(RotateError::Sync)?;
        }
        let ready = self.spare.as_ref().and_then(SpareFiller::take);
        let (file, name, preallocated) = match ready {
            Some((file, bytes)) => match take_spare(self.fs.as_ref(), file, next_lsn) {
                Ok((file, name)) => (file, name, bytes),
                Err(error) => {
                    tracing::warn!(%error, "could not use the zero-filled spare segment; creating one that grows");
                    let (file, name) = create_segment(self.fs.as_ref(), next_lsn)?;
                    (file, name, 0)
                }
            },
            None => {
                let (file, name) = create_segment(self.fs.as_ref(), next_lsn)?;
                (file, name, 0)
            }
        };
        if let Some(spare) = &self.spare {
            spare.request();
        }
        let sync_handle = Arc::new(Mutex::new(file.try_clone().map_err(RotateError::Stray)?));
        let (first, previous) = std::mem::replace(&mut self.current, (next_lsn, name));
        self.older.push_back((first, previous, self.len));
        self.closed_bytes += self.len;
        self.file = file;
        self.sync_handle = sync_handle;
        self.len = SEGMENT_HEADER_BYTES as u64;
        self.preallocated = preallocated;
        Ok(())
    }

    /// Deletes closed segments holding only records at or below `durable`,
    /// oldest first, as long as the closed segments left total at least
    /// `keep_bytes` (recent history kept for reading back), and syncs the
    /// directory so the deletions are durable. Returns how
    /// many were deleted.
    ///
    /// # Errors
    /// IO errors removing a file (the rest stay for the next attempt).
    pub fn delete_covered(&mut self, durable: Lsn, keep_bytes: u64) -> io::Result<usize> {
        let deleted = self.remove_covered(durable, keep_bytes)?;
        if deleted > 0 {
            self.fs.sync_dir()?;
        }
        Ok(deleted)
    }

    fn remove_covered(&mut self, durable: Lsn, keep_bytes: u64) -> io::Result<usize> {
        let mut deleted = 0;
        loop {
            // A closed segment's last record is just below the next
            // segment's first lsn.
            let next_first = match (self.older.get(1), self.older.front()) {
                (Some((next, _, _)), Some(_)) => *next,
                (None, Some(_)) => self.current.0,
                _ => break,
            };
            if next_first.0 > durable.0 + 1 {
                break;
            }
            let front_bytes = self.older.front().map_or(0, |(_, _, bytes)| *bytes);
            if self.closed_bytes.saturating_sub(front_bytes) < keep_bytes {
                break;
            }
            if let Some((_, name, bytes)) = self.older.front() {
                self.fs.remove(name)?;
                self.closed_bytes -= bytes;
            }
            self.older.pop_front();
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Bytes of the segments that hold records at or after `lsn` (the
    /// current one included): what keeping them all costs.
    pub fn bytes_from(&self, lsn: Lsn) -> u64 {
        let mut bytes = self.len;
        let mut next_first = self.current.0;
        for (first, _, segment_bytes) in self.older.iter().rev() {
            // This segment holds lsns first .. next_first - 1.
            if next_first <= lsn {
                break;
            }
            bytes += segment_bytes;
            next_first = *first;
        }
        bytes
    }

    /// Number of segment files, the current one included.
    pub fn segment_count(&self) -> usize {
        self.older.len() + 1
    }

    /// Bytes of all segments (closed ones at their full size).
    pub fn bytes_on_disk(&self) -> u64 {
        self.closed_bytes + self.len
    }

    /// Bytes in the current segment.
    pub fn current_len(&self) -> u64 {
        self.len
    }
}

impl Drop for WalWriter {
    /// Stops the spare filler and removes its file, and cuts the unused
    /// zeros off the current segment so that a closed log ends cleanly
    /// (after a crash recovery cuts them off instead). Errors are ignored:
    /// both are tidying, never needed for correctness.
    fn drop(&mut self) {
        if let Some(spare) = self.spare.take() {
            spare.stop();
            let _ = self.fs.remove(SPARE_NAME);
        }
        if self.preallocated > self.len {
            let _ = self.file.set_len(self.len);
        }
    }
}

/// Makes a zero-filled spare the segment starting at `next_lsn`: its
/// header is written and synced while it still has the spare's name, then
/// it is renamed (durably), so a segment never exists without its header.
fn take_spare(
    fs: &dyn WalFs,
    mut file: Box<dyn WalFile>,
    next_lsn: Lsn,
) -> io::Result<(Box<dyn WalFile>, String)> {
    let name = segment_name(next_lsn);
    let result = file
        .write_at(0, &encode_header(next_lsn))
        .and_then(|()| file.sync_data())
        .and_then(|()| fs.rename(SPARE_NAME, &name));
    if let Err(error) = result {
        // Whichever name it has now, it must not stay: a half-taken spare
        // under a segment name would be a segment of zeros.
        let _ = fs.remove(SPARE_NAME);
        let _ = fs.remove(&name);
        return Err(error);
    }
    Ok((file, name))
}

/// The helper thread that zero-fills the next segment.
struct SpareFiller {
    shared: Arc<(Mutex<SpareState>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct SpareState {
    /// A filled and synced spare and its size.
    ready: Option<(Box<dyn WalFile>, u64)>,
    /// The writer wants one (set at start and after each rotation).
    wanted: bool,
    stop: bool,
    /// Fills that failed or were refused, for tests to wait on.
    failures: u64,
}

impl SpareFiller {
    fn start(fs: Arc<dyn WalFs>, bytes: u64) -> io::Result<Self> {
        let shared = Arc::new((Mutex::new(SpareState::default()), Condvar::new()));
        let theirs = shared.clone();
        let thread = std::thread::Builder::new()
            .name("ckpt-wal-spare".into())
            .spawn(move || fill_spares(fs.as_ref(), bytes, &theirs))?;
        Ok(SpareFiller {
            shared,
            thread: Some(thread),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SpareState> {
        self.shared.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn request(&self) {
        self.state().wanted = true;
        self.shared.1.notify_one();
    }

    fn is_ready(&self) -> bool {
        self.state().ready.is_some()
    }

    #[cfg(test)]
    fn failures(&self) -> u64 {
        self.state().failures
    }

    fn take(&self) -> Option<(Box<dyn WalFile>, u64)> {
        self.state().ready.take()
    }

    fn stop(mut self) {
        self.state().stop = true;
        self.shared.1.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The filler's loop: whenever a spare is wanted and none is ready, write
/// one. A failure (a full disk, say) is logged and the spare removed; the
/// writer then creates segments that grow until a later request succeeds.
fn fill_spares(fs: &dyn WalFs, bytes: u64, shared: &(Mutex<SpareState>, Condvar)) {
    let (lock, wake) = shared;
    let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        while !(state.stop || (state.wanted && state.ready.is_none())) {
            state = wake.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        if state.stop {
            return;
        }
        state.wanted = false;
        drop(state);
        let stopping = || lock.lock().unwrap_or_else(|e| e.into_inner()).stop;
        let filled = fill_spare(fs, bytes, &stopping);
        state = lock.lock().unwrap_or_else(|e| e.into_inner());
        match filled {
            Ok(Some(file)) => state.ready = Some((file, bytes)),
            Ok(None) => {}
            Err(error) => {
                state.failures += 1;
                let _ = fs.remove(SPARE_NAME);
                tracing::warn!(%error, "could not zero-fill the next WAL segment; it will grow as it is written");
            }
        }
    }
}

/// Writes `bytes` of zeros into a new spare file and syncs it; `None` when
/// told to stop meanwhile.
///
/// A spare must never be what fills the disk: the log's own appends would
/// then fail with NO_SPACE for space that only holds zeros. So it is
/// filled only while the disk keeps at least another segment's worth free
/// beyond what the spare still needs; short of that the filler gives up
/// (and removes what it wrote) and segments grow as they are written.
fn fill_spare(
    fs: &dyn WalFs,
    bytes: u64,
    stopping: &dyn Fn() -> bool,
) -> io::Result<Option<Box<dyn WalFile>>> {
    let too_full = |still: u64| {
        fs.free_bytes()
            .is_some_and(|free| free < still.saturating_add(bytes))
    };
    if too_full(bytes) {
        return Err(io::Error::new(
            io::ErrorKind::StorageFull,
            format!("less than two segments ({bytes} bytes each) free on the disk"),
        ));
    }
    let mut file = fs.create(SPARE_NAME)?;
    let zeros = vec![0u8; ZERO_CHUNK_BYTES];
    let mut written = 0u64;
    while written < bytes {
        if stopping() {
            return Ok(None);
        }
        if too_full(bytes - written) {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "the disk filled up while the spare segment was written",
            ));
        }
        let chunk = (bytes - written).min(ZERO_CHUNK_BYTES as u64);
        file.write_at(written, &zeros[..chunk as usize])?;
        written += chunk;
    }
    file.sync_data()?;
    Ok(Some(file))
}

fn create_segment(
    fs: &dyn WalFs,
    first_lsn: Lsn,
) -> Result<(Box<dyn WalFile>, String), RotateError> {
    let name = segment_name(first_lsn);
    let mut file = fs.create(&name).map_err(RotateError::Create)?;
    let result = file
        .write_all(&encode_header(first_lsn))
        .and_then(|()| file.sync_data())
        .and_then(|()| fs.sync_dir());
    if let Err(error) = result {
        // Leave no half-made segment behind for recovery to puzzle over,
        // and make its removal durable: a stray segment after the one in
        // use would make recovery take the real last segment for a synced
        // one (its torn tail for corruption). If that cannot be done the
        // log's shape after a power cut is unknown: say so, so the caller
        // stops writing.
        if let Err(cleanup) = fs.remove(&name).and_then(|()| fs.sync_dir()) {
            return Err(RotateError::Stray(io::Error::new(
                cleanup.kind(),
                format!("could not durably remove the half-made segment {name} after {error}: {cleanup}"),
            )));
        }
        return Err(RotateError::Create(error));
    }
    Ok((file, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::FaultFs;
    use crate::wal::segment::{
        check_header, scan_segment, scan_segment_with, SegmentEnd, TailRule,
    };

    #[test]
    fn a_segment_whose_creation_failed_never_survives_a_power_cut() {
        // A stray segment after the one in use would make recovery take the
        // real last segment for a synced one (its torn tail for corruption),
        // and trimming would infer its end from the stray's name.
        for seed in 0..64 {
            let fs = FaultFs::with_seed(seed);
            let mut w = WalWriter::start(Arc::new(fs.clone()), Lsn(1), vec![], 64, false).unwrap();
            w.append(&[1u8; 40]).unwrap();
            w.sync().unwrap();
            fs.fail_next_write();
            assert!(matches!(w.rotate(Lsn(5)), Err(RotateError::Create(_))));
            fs.power_loss();
            let names = fs.list().unwrap();
            assert!(
                !names.contains(&segment_name(Lsn(5))),
                "seed {seed}: the failed segment came back: {names:?}"
            );
        }
    }

    #[test]
    fn rotation_and_deletion_keep_the_log_bounded() {
        let fs = FaultFs::new();
        let mut w = WalWriter::start(Arc::new(fs.clone()), Lsn(1), vec![], 64, false).unwrap();
        w.append(&[1u8; 40]).unwrap();
        w.sync().unwrap();
        assert!(w.is_full());
        w.append(&[2u8; 8]).unwrap();
        w.rotate(Lsn(5)).unwrap();
        fs.power_loss();
        assert_eq!(
            fs.get(&segment_name(Lsn(1))).unwrap().len(),
            SEGMENT_HEADER_BYTES + 48,
            "rotation synced the old segment before starting the next"
        );
        w.rotate(Lsn(9)).unwrap();
        assert_eq!(w.segment_count(), 3);
        assert_eq!(
            w.delete_covered(Lsn(3), 0).unwrap(),
            0,
            "segment 1 holds lsn 4"
        );
        assert_eq!(w.delete_covered(Lsn(4), 0).unwrap(), 1);
        assert_eq!(w.delete_covered(Lsn(100), 0).unwrap(), 1);
        assert_eq!(w.segment_count(), 1, "the current segment is never deleted");
        assert_eq!(fs.list().unwrap(), vec![segment_name(Lsn(9))]);
    }

    #[test]
    fn covered_segments_are_kept_up_to_the_history_bytes() {
        let fs = FaultFs::new();
        let mut w = WalWriter::start(Arc::new(fs.clone()), Lsn(1), vec![], 64, false).unwrap();
        let header = SEGMENT_HEADER_BYTES as u64;
        for next in [5, 9, 13] {
            w.append(&[1u8; 40]).unwrap();
            w.rotate(Lsn(next)).unwrap();
        }
        // Three closed segments of header + 40 bytes, all covered: keeping
        // two segments' worth deletes only the oldest.
        let closed = header + 40;
        assert_eq!(w.delete_covered(Lsn(100), 2 * closed).unwrap(), 1);
        assert_eq!(w.segment_count(), 3);
        assert_eq!(w.delete_covered(Lsn(100), 2 * closed).unwrap(), 0);
        assert_eq!(w.delete_covered(Lsn(100), closed + 1).unwrap(), 0);
        assert_eq!(w.delete_covered(Lsn(100), closed).unwrap(), 1);
        assert_eq!(w.delete_covered(Lsn(100), 0).unwrap(), 1);
        assert_eq!(fs.list().unwrap(), vec![segment_name(Lsn(13))]);
    }

    /// Waits (without a fixed sleep) until the spare filler made `w` ask
    /// for a rotation.
    fn wait_until_full(w: &WalWriter) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !w.is_full() {
            assert!(
                std::time::Instant::now() < deadline,
                "no spare segment in 30 s"
            );
            std::thread::yield_now();
        }
    }

    fn record_at(lsn: u64) -> Vec<u8> {
        let mut record = crate::wal::record::tests::sample_records().remove(0);
        record.lsn = Lsn(lsn);
        record.encode()
    }

    #[test]
    fn a_preallocated_segment_is_written_in_place_and_trimmed_when_closed() {
        let fs = FaultFs::new();
        let max = 4096u64;
        let mut w = WalWriter::start(Arc::new(fs.clone()), Lsn(1), vec![], max, true).unwrap();
        assert!(
            !w.is_preallocated(),
            "the first segment after a start grows"
        );
        assert!(!w.is_full(), "an empty segment is never rotated");
        w.append(&record_at(1)).unwrap();
        // Once the spare is filled the growing segment asks to be closed
        // early, though far from its bound.
        wait_until_full(&w);
        w.rotate(Lsn(2)).unwrap();
        assert!(w.is_preallocated());
        let name = segment_name(Lsn(2));
        assert_eq!(
            fs.get(&name).unwrap().len() as u64,
            max,
            "zero-filled to the bound"
        );
        let record = record_at(2);
        w.append(&record).unwrap();
        w.sync().unwrap();
        // The next spare is filled meanwhile.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !w.spare.as_ref().unwrap().is_ready() {
            assert!(
                std::time::Instant::now() < deadline,
                "no second spare in 30 s"
            );
            std::thread::yield_now();
        }
        assert!(fs.get(SPARE_NAME).is_some());
        fs.power_loss();
        let bytes = fs.get(&name).unwrap();
        assert_eq!(bytes.len() as u64, max, "written in place, not appended");
        let last = TailRule {
            is_last: true,
            durable_through: Some(Lsn(2)),
        };
        let scan = scan_segment_with(&bytes, Lsn(2), last);
        assert_eq!(scan.records.len(), 1);
        assert_eq!(scan.valid_len as usize, SEGMENT_HEADER_BYTES + record.len());
        match &scan.end {
            SegmentEnd::Torn { offset, reason } => {
                assert_eq!(*offset, scan.valid_len);
                assert!(reason.contains("zeros to the end"), "{reason}");
            }
            other => panic!("the zeros after the last record read as {other:?}"),
        }
        // Closing cuts the zeros off and removes the next spare.
        drop(w);
        assert!(fs.get(SPARE_NAME).is_none(), "the spare is removed");
        let bytes = fs.get(&name).unwrap();
        assert_eq!(
            scan_segment_with(&bytes, Lsn(2), last).end,
            SegmentEnd::Clean
        );
        let mut names = fs.list().unwrap();
        names.sort();
        assert_eq!(names, vec![segment_name(Lsn(1)), name]);
    }

    #[test]
    fn a_segment_taken_from_a_spare_never_exists_without_its_header() {
        // A power cut at each call of the rotation: the new segment is
        // either missing or has a valid header, never a file of zeros under
        // a segment name (recovery would call that corruption).
        for calls in 0..8 {
            for seed in 0..16 {
                let fs = FaultFs::with_seed(seed);
                let mut w =
                    WalWriter::start(Arc::new(fs.clone()), Lsn(1), vec![], 4096, true).unwrap();
                w.append(&record_at(1)).unwrap();
                w.sync().unwrap();
                wait_until_full(&w);
                fs.crash_after(calls);
                let rotated = w.rotate(Lsn(2)).is_ok();
                drop(w);
                fs.power_loss();
                let new = fs.get(&segment_name(Lsn(2)));
                if rotated {
                    assert!(new.is_some(), "calls {calls} seed {seed}");
                }
                if let Some(bytes) = new {
                    assert!(
                        check_header(&bytes).is_ok(),
                        "calls {calls} seed {seed}: a segment without its header"
                    );
                }
                let old = fs.get(&segment_name(Lsn(1))).unwrap();
                assert_eq!(
                    scan_segment(&old).records.len(),
                    1,
                    "calls {calls} seed {seed}"
                );
            }
        }
    }

    #[test]
    fn no_spare_is_filled_on_a_nearly_full_disk() {
        // Less than two segments free: the spare would leave the log's own
        // appends no room, so segments grow instead and every byte of the
        // budget goes to records.
        let fs = FaultFs::new();
        fs.set_free_bytes(Some(6000));
        let mut w = WalWriter::start(Arc::new(fs.clone()), Lsn(1), vec![], 4096, true).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while w.spare.as_ref().unwrap().failures() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the filler never tried"
            );
            std::thread::yield_now();
        }
        assert!(fs.get(SPARE_NAME).is_none());
        assert!(!w.is_full());
        let record = record_at(1);
        w.append(&record).unwrap();
        assert_eq!(
            fs.free_bytes(),
            Some(6000 - (SEGMENT_HEADER_BYTES + record.len()) as u64)
        );
        assert!(!w.is_full(), "no spare to move to");
    }

    #[test]
    fn failed_append_is_rolled_back() {
        let fs = FaultFs::new();
        let mut w = WalWriter::start(Arc::new(fs.clone()), Lsn(1), vec![], 1 << 20, false).unwrap();
        fs.set_free_bytes(Some(10));
        let err = w.append(&[7u8; 20]).unwrap_err();
        assert!(err.no_space && err.rolled_back);
        let bytes = fs.get(&segment_name(Lsn(1))).unwrap();
        assert_eq!(bytes.len(), SEGMENT_HEADER_BYTES);
        assert_eq!(scan_segment(&bytes).end, SegmentEnd::Clean);
    }
}
