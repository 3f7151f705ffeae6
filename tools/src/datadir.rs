//! Offline access to a data directory. Every command first makes sure the
//! directory exists (a typo must not create an empty store). Looking (`ls`,
//! `stat`, `dump`, `wal`, `verify`) opens it read-only with the store's own
//! code (`ckpt_storage::inspect`): no lock, no byte changed, a running
//! server undisturbed. Changing it (`restore`, `salvage`) takes the
//! directory's lock (`DataDirLock`, the store's own), so the tool never
//! repairs a directory a running server is writing.

use std::path::{Path, PathBuf};

use ckpt_client::ClientError;
use ckpt_proto::ErrorCode;
use ckpt_storage::{DataDirLock, ReadOnlyStore, Store, StoreConfig};

/// A `LIBRARY` error with a message.
pub fn library(message: impl Into<String>) -> ClientError {
    ClientError::new(ErrorCode::Library, message)
}

/// An IO error on `path`.
pub fn io_error(what: &str, path: &Path, error: &std::io::Error) -> ClientError {
    let code = if error.raw_os_error() == Some(28) {
        ErrorCode::NoSpace
    } else {
        ErrorCode::Library
    };
    ClientError::new(code, format!("{what} {}: {error}", path.display()))
}

/// The WAL directory of a data directory.
pub fn wal_dir(dir: &Path) -> PathBuf {
    dir.join("wal")
}

/// The RocksDB directory of a data directory.
pub fn db_dir(dir: &Path) -> PathBuf {
    dir.join("db")
}

/// Refuses a path that is not an existing data directory (so a typo does
/// not create an empty store).
///
/// # Errors
/// `NOT_EXIST` naming the path.
pub fn require_data_dir(dir: &Path) -> Result<(), ClientError> {
    if !dir.is_dir() {
        return Err(ClientError::new(
            ErrorCode::NotExist,
            format!("data directory {} does not exist", dir.display()),
        ));
    }
    if !wal_dir(dir).is_dir() && !db_dir(dir).is_dir() {
        return Err(ClientError::new(
            ErrorCode::NotExist,
            format!(
                "{} is not a ckpt data directory (it has neither wal/ nor db/)",
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// Takes the directory's exclusive lock.
///
/// # Errors
/// `IN_USE` naming the holder's pid when a server (or another tool) has it.
pub fn lock(dir: &Path) -> Result<DataDirLock, ClientError> {
    require_data_dir(dir)?;
    DataDirLock::acquire(dir).map_err(ClientError::from)
}

/// Opens the store to change it (takes the lock, recovers from the log).
///
/// # Errors
/// `IN_USE` when the directory is held; recovery errors (a corrupt log
/// names the segment and offset and points at `salvage`).
pub fn open_store(dir: &Path, must_exist: bool) -> Result<Store, ClientError> {
    if must_exist {
        require_data_dir(dir)?;
    }
    Store::open(StoreConfig::new(dir)).map_err(ClientError::from)
}

/// Opens the store read-only: the log replayed over RocksDB in memory, as
/// recovery would, changing nothing; a server may be running on it.
///
/// # Errors
/// `NOT_EXIST` for a missing directory; recovery's errors (a corrupt log
/// names the segment and offset and points at `salvage`).
pub fn open_read_only(dir: &Path) -> Result<ReadOnlyStore, ClientError> {
    require_data_dir(dir)?;
    let store = ReadOnlyStore::open(dir).map_err(ClientError::from)?;
    if store.live() {
        note_live(dir);
    }
    Ok(store)
}

/// Says on stderr that a server is running on `dir` (looking at it is
/// fine: the view is of the moment).
pub fn note_live(dir: &Path) {
    eprintln!(
        "note: a server is running on {}; this is a read-only view of its state now",
        dir.display()
    );
}

/// [`note_live`] if a server holds `dir`.
pub fn note_if_live(dir: &Path) {
    if ckpt_storage::inspect::held_by_another_process(dir) {
        note_live(dir);
    }
}
