//! Exclusive ownership of a data directory.
//!
//! The store and every offline `ckpt-tool` command take an exclusive
//! `flock` on `<data-dir>/ckpt.lock` for as long as they use the
//! directory, so an operator's tool can never read or repair a directory a
//! running server is writing. The lock dies with the process (no stale
//! lock files after a crash); the file records the holder's pid for the
//! error message.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use ckpt_proto::{CkptError, CkptResult, ErrorCode};

/// Held while a process owns a data directory.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Locks `dir` (created if missing) or says who holds it.
    ///
    /// # Errors
    /// `IN_USE` when another process holds the directory; `LIBRARY` for IO
    /// errors.
    pub fn acquire(dir: &Path) -> CkptResult<DataDirLock> {
        std::fs::create_dir_all(dir).map_err(|e| {
            CkptError::new(
                ErrorCode::Library,
                format!("creating {}: {e}", dir.display()),
            )
        })?;
        let path = dir.join("ckpt.lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| {
                CkptError::new(
                    ErrorCode::Library,
                    format!("opening {}: {e}", path.display()),
                )
            })?;
        // SAFETY: flock on a descriptor we own.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if !locked {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() {
                String::new()
            } else {
                format!(" (pid {holder})")
            };
            return Err(CkptError::new(
                ErrorCode::InUse,
                format!(
                    "data directory {} is in use by another process{who}; stop the server first \
                     or use --addr to work online",
                    dir.display()
                ),
            ));
        }
        let _ = file.set_len(0);
        let _ = file.seek(SeekFrom::Start(0));
        let _ = write!(file, "{}", std::process::id());
        let _ = file.sync_all();
        Ok(DataDirLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_with_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        let error = DataDirLock::acquire(dir.path()).unwrap_err();
        assert_eq!(error.code, ErrorCode::InUse);
        assert!(
            error.detail.contains(&std::process::id().to_string()),
            "{}",
            error.detail
        );
        drop(first);
        DataDirLock::acquire(dir.path()).unwrap();
    }
}
