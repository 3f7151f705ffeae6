//! Appends to the current segment, rotates full segments, deletes segments
//! the durable applied position has covered.
//!
//! The writer is owned by the store's single group-commit thread, so it
//! needs no locking. A failed append is rolled back by cutting the segment
//! to its length before the append; if even that fails the caller must
//! poison the store, because the file's end is then unknown.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};

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

/// The appending end of the log.
pub struct WalWriter {
    fs: Arc<dyn WalFs>,
    file: Box<dyn WalFile>,
    sync_handle: SyncHandle,
    current: (Lsn, String),
    len: u64,
    /// Closed segments, oldest first: first lsn, name, bytes.
    older: VecDeque<(Lsn, String, u64)>,
    closed_bytes: u64,
    segment_bytes_max: u64,
}

impl WalWriter {
    /// Starts a new segment at `first_lsn` after the `older` segments
    /// (oldest first), writing and syncing its header and the directory.
    ///
    /// # Errors
    /// IO errors creating the segment.
    pub fn start(
        fs: Arc<dyn WalFs>,
        first_lsn: Lsn,
        older: Vec<(Lsn, String, u64)>,
        segment_bytes_max: u64,
    ) -> io::Result<Self> {
        let (file, name) = create_segment(fs.as_ref(), first_lsn)?;
        let sync_handle = Arc::new(Mutex::new(file.try_clone()?));
        Ok(WalWriter {
            fs,
            file,
            sync_handle,
            current: (first_lsn, name),
            len: SEGMENT_HEADER_BYTES as u64,
            closed_bytes: older.iter().map(|(_, _, bytes)| bytes).sum(),
            older: older.into(),
            segment_bytes_max,
        })
    }

    /// Appends encoded records (not yet durable).
    ///
    /// # Errors
    /// The write failed; see [`AppendError`] for whether it was undone.
    pub fn append(&mut self, bytes: &[u8]) -> Result<(), AppendError> {
        match self.file.write_all(bytes) {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(error) => {
                let no_space = error.raw_os_error() == Some(libc::ENOSPC)
                    || error.kind() == io::ErrorKind::StorageFull;
                let rolled_back = self.file.set_len(self.len).is_ok();
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

    /// Whether the current segment reached its size bound.
    pub fn is_full(&self) -> bool {
        self.len >= self.segment_bytes_max
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
        self.file.sync_data().map_err(RotateError::Sync)?;
        let (file, name) = create_segment(self.fs.as_ref(), next_lsn)?;
        let sync_handle = Arc::new(Mutex::new(file.try_clone().map_err(RotateError::Stray)?));
        let (first, previous) = std::mem::replace(&mut self.current, (next_lsn, name));
        self.older.push_back((first, previous, self.len));
        self.closed_bytes += self.len;
        self.file = file;
        self.sync_handle = sync_handle;
        self.len = SEGMENT_HEADER_BYTES as u64;
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
    use crate::wal::segment::{scan_segment, SegmentEnd};

    #[test]
    fn a_segment_whose_creation_failed_never_survives_a_power_cut() {
        // A stray segment after the one in use would make recovery take the
        // real last segment for a synced one (its torn tail for corruption),
        // and trimming would infer its end from the stray's name.
        for seed in 0..64 {
            let fs = FaultFs::with_seed(seed);
            let mut w = WalWriter::start(Arc::new(fs.clone()), Lsn(1), vec![], 64).unwrap();
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
        let mut w = WalWriter::start(Arc::new(fs.clone()), Lsn(1), vec![], 64).unwrap();
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
        let mut w = WalWriter::start(Arc::new(fs.clone()), Lsn(1), vec![], 64).unwrap();
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

    #[test]
    fn failed_append_is_rolled_back() {
        let fs = FaultFs::new();
        let mut w = WalWriter::start(Arc::new(fs.clone()), Lsn(1), vec![], 1 << 20).unwrap();
        fs.set_free_bytes(Some(10));
        let err = w.append(&[7u8; 20]).unwrap_err();
        assert!(err.no_space && err.rolled_back);
        let bytes = fs.get(&segment_name(Lsn(1))).unwrap();
        assert_eq!(bytes.len(), SEGMENT_HEADER_BYTES);
        assert_eq!(scan_segment(&bytes).end, SegmentEnd::Clean);
    }
}
