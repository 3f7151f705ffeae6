//! Space kept back for when the disk fills.
//!
//! A full disk must not stop an operator from freeing space, nor stop a
//! restart: deleting a checkpoint writes a log record and RocksDB
//! tombstones, and opening RocksDB writes a new MANIFEST. So the store keeps
//! a preallocated file, `reserve`, in the data directory
//! (`StoreConfig::reserve_bytes`, 64 MiB by default):
//!
//! - it is released (deleted) before RocksDB is opened, so recovery always
//!   has that much room, and re-created once the store has recovered;
//! - when a log write fails for lack of space the store logs it once,
//!   reports `disk_full`, releases the reserve and from then on accepts only
//!   operations that free space (delete, unlink, destroy, expiry), so the
//!   released room goes to them and not to the writes that filled the disk;
//! - once the file system has room for the reserve twice over (so it is not
//!   merely the reserve's own space coming back) the reserve is re-created,
//!   the store logs that the disk recovered, and all writes are accepted.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};

/// Name of the reserve file in the data directory.
pub const RESERVE_FILE: &str = "reserve";

/// The preallocated reserve file.
#[derive(Debug)]
pub struct Reserve {
    path: PathBuf,
    bytes: u64,
}

impl Reserve {
    /// The reserve of `bytes` in `data_dir` (nothing is created yet).
    pub fn new(data_dir: &Path, bytes: u64) -> Self {
        Reserve {
            path: data_dir.join(RESERVE_FILE),
            bytes,
        }
    }

    /// Its size when held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether the file exists with its full size allocated.
    pub fn is_held(&self) -> bool {
        std::fs::metadata(&self.path).is_ok_and(|m| m.len() == self.bytes)
    }

    /// Deletes the file, freeing its blocks; true if it existed.
    ///
    /// # Errors
    /// Any error but the file not existing.
    pub fn release(&self) -> io::Result<bool> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Allocates the file's blocks (`posix_fallocate`, so they are really
    /// taken, unlike a sparse file) and syncs it; a no-op with size 0.
    ///
    /// # Errors
    /// ENOSPC when the room is not there (the partial file is removed).
    pub fn hold(&self) -> io::Result<()> {
        if self.bytes == 0 || self.is_held() {
            return Ok(());
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&self.path)?;
        let len = libc::off_t::try_from(self.bytes)
            .map_err(|_| io::Error::other("reserve size does not fit off_t"))?;
        // SAFETY: fallocate on a file descriptor we own for the call.
        let rc = unsafe { libc::posix_fallocate(std::os::fd::AsRawFd::as_raw_fd(&file), 0, len) };
        let result = if rc == 0 {
            file.sync_all()
        } else {
            Err(io::Error::from_raw_os_error(rc))
        };
        if result.is_err() {
            drop(file);
            let _ = std::fs::remove_file(&self.path);
        }
        result
    }

    /// Whether the file system has room for the reserve twice over, so
    /// re-creating it leaves as much again for writes.
    pub fn room_to_hold(&self) -> bool {
        free_bytes(self.path.parent().unwrap_or(Path::new(".")))
            .is_some_and(|free| free >= self.bytes.saturating_mul(2))
    }
}

/// Bytes available to this user on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we pass; the path is a
    // valid NUL-terminated string for the call.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stats) };
    // Both are u64 on Linux; `as` keeps it building where they are not.
    #[allow(clippy::unnecessary_cast)]
    let (available, fragment) = (stats.f_bavail as u64, stats.f_frsize as u64);
    (rc == 0).then(|| available.saturating_mul(fragment))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn hold_allocates_real_blocks_and_release_frees_them() {
        let dir = tempfile::tempdir().unwrap();
        let reserve = Reserve::new(dir.path(), 4 << 20);
        assert!(!reserve.is_held());
        reserve.hold().unwrap();
        assert!(reserve.is_held());
        let meta = std::fs::metadata(dir.path().join(RESERVE_FILE)).unwrap();
        assert!(
            meta.blocks() * 512 >= 4 << 20,
            "the reserve is allocated, not sparse: {} blocks",
            meta.blocks()
        );
        reserve.hold().unwrap();
        assert!(reserve.release().unwrap());
        assert!(!reserve.is_held());
        assert!(!reserve.release().unwrap(), "releasing twice is harmless");
    }

    #[test]
    fn room_to_hold_needs_twice_the_reserve() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).expect("statvfs works");
        assert!(free > 0);
        assert!(Reserve::new(dir.path(), 1).room_to_hold());
        assert!(!Reserve::new(dir.path(), free).room_to_hold());
    }

    #[test]
    fn an_impossible_reserve_fails_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let reserve = Reserve::new(dir.path(), 1 << 62);
        assert!(reserve.hold().is_err());
        assert!(!dir.path().join(RESERVE_FILE).exists());
    }
}
