//! Offline access to a data directory: every command that works without a
//! server first makes sure the directory exists and that no process holds
//! it (`DataDirLock`; the store takes the same lock), so the tool can never
//! read or repair a directory a running server is writing.

use std::path::{Path, PathBuf};

use ckpt_client::ClientError;
use ckpt_proto::ErrorCode;
use ckpt_storage::db::{Db, DbOptions, Loaded};
use ckpt_storage::{DataDirLock, Store, StoreConfig};

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

/// Opens the store (takes the lock, recovers from the log).
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

/// Opens RocksDB alone, without touching the log (the caller holds the
/// lock): for reading metadata as it is on disk.
///
/// # Errors
/// `NOT_EXIST` without a db/ directory; RocksDB errors.
pub fn open_db(dir: &Path) -> Result<(Db, Loaded), ClientError> {
    let path = db_dir(dir);
    if !path.join("CURRENT").is_file() {
        return Err(ClientError::new(
            ErrorCode::NotExist,
            format!("{} holds no RocksDB database", path.display()),
        ));
    }
    Db::open(&path, DbOptions::default()).map_err(ClientError::from)
}
