//! File access of the write-ahead log, behind a small trait.
//!
//! The WAL never touches `std::fs` directly: it goes through [`WalFs`], so
//! tests can swap the real [`OsFs`] for [`FaultFs`], an in-memory file system
//! that remembers which bytes were made durable and can
//! (a) lose every byte not yet synced, as a power cut would,
//! (b) fail the next write or sync, and
//! (c) report a full disk once a byte budget is spent.
//!
//! Contract of the trait, which both implementations keep:
//! - bytes passed to [`WalFile::write_all`] are readable at once, but survive
//!   a power loss only after [`WalFile::sync_data`] returned `Ok`;
//! - a file created by [`WalFs::create`] survives a power loss only after
//!   [`WalFs::sync_dir`]; a removal or truncation is durable when it returns.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// A directory of WAL segment files.
pub trait WalFs: Send + Sync {
    /// Names of the files in the directory, in no particular order.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Creates (or truncates) a file and opens it for appending.
    fn create(&self, name: &str) -> io::Result<Box<dyn WalFile>>;
    /// Reads a whole file.
    fn read(&self, name: &str) -> io::Result<Vec<u8>>;
    /// Cuts a file to `len` bytes and makes the cut durable.
    fn truncate(&self, name: &str, len: u64) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Renames a file (used to move damaged segments aside).
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Makes creations and renames in the directory durable.
    fn sync_dir(&self) -> io::Result<()>;
}

/// One file open for appending.
pub trait WalFile: Send {
    /// Appends all of `buf`.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Makes every byte written so far durable (`fdatasync`).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Cuts the file back to `len` bytes (undoing a failed append).
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// A second handle on the same file, so another thread can sync it
    /// while this one appends.
    fn try_clone(&self) -> io::Result<Box<dyn WalFile>>;
}

/// The real file system.
#[derive(Debug, Clone)]
pub struct OsFs {
    dir: PathBuf,
}

impl OsFs {
    /// A WAL directory at `dir`, created if missing.
    ///
    /// # Errors
    /// Any IO error creating the directory.
    pub fn new(dir: impl AsRef<Path>) -> io::Result<Self> {
        std::fs::create_dir_all(dir.as_ref())?;
        Ok(OsFs {
            dir: dir.as_ref().to_path_buf(),
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

struct OsFile {
    file: File,
}

impl WalFile for OsFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.file.seek(SeekFrom::Start(len))?;
        self.file.sync_data()
    }

    fn try_clone(&self) -> io::Result<Box<dyn WalFile>> {
        Ok(Box::new(OsFile {
            file: self.file.try_clone()?,
        }))
    }
}

impl WalFs for OsFs {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_string());
            }
        }
        Ok(names)
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn WalFile>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(self.path(name))?;
        Ok(Box::new(OsFile { file }))
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        std::fs::read(self.path(name))
    }

    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        let file = OpenOptions::new().write(true).open(self.path(name))?;
        file.set_len(len)?;
        file.sync_all()
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.path(name))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.path(from), self.path(to))?;
        self.sync_dir()
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

/// Failures a [`FaultFs`] can be told to produce.
#[derive(Debug, Default)]
struct Faults {
    fail_next_write: bool,
    fail_next_sync: bool,
    /// The next write panics (a bug in the writer thread, for tests of
    /// how a dead writer is reported).
    panic_next_write: bool,
    /// Bytes that may still be written before writes fail with ENOSPC.
    free_bytes: Option<u64>,
    /// Writes and syncs left before the power goes: then every later call
    /// fails without effect until `power_loss`.
    calls_before_crash: Option<u64>,
    crashed: bool,
}

impl Faults {
    /// Counts one write or sync against the crash budget; true when the
    /// machine is (now) down.
    fn crash_now(&mut self) -> bool {
        if self.crashed {
            return true;
        }
        match self.calls_before_crash.as_mut() {
            Some(0) => {
                self.crashed = true;
                true
            }
            Some(left) => {
                *left -= 1;
                false
            }
            None => false,
        }
    }
}

fn powered_off() -> io::Error {
    io::Error::other("injected power loss: device is gone")
}

#[derive(Debug, Default, Clone)]
struct MemFile {
    /// Everything written, readable now.
    data: Vec<u8>,
    /// The prefix that survives a power loss.
    durable_len: usize,
    /// Whether the file itself survives a power loss (directory synced).
    durable_exists: bool,
}

#[derive(Debug, Default)]
struct MemState {
    files: BTreeMap<String, MemFile>,
    faults: Faults,
}

/// An in-memory [`WalFs`] for tests that injects faults and power loss.
/// Clones share one file system, so a store reopened on a clone sees what
/// the crashed one left.
#[derive(Debug, Clone, Default)]
pub struct FaultFs {
    state: Arc<Mutex<MemState>>,
}

impl FaultFs {
    /// An empty file system with no faults armed.
    pub fn new() -> Self {
        FaultFs::default()
    }

    fn lock(&self) -> MutexGuard<'_, MemState> {
        // A panic elsewhere in a test must not hide this one's data.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Loses every byte that was not synced and every file whose creation
    /// was not made durable, as a power cut would.
    pub fn power_loss(&self) {
        let mut state = self.lock();
        state.files.retain(|_, file| file.durable_exists);
        for file in state.files.values_mut() {
            file.data.truncate(file.durable_len);
        }
        state.faults = Faults::default();
    }

    /// After `calls` more writes and syncs succeed, the power goes: every
    /// later write, sync, creation or truncation fails and changes nothing,
    /// until [`FaultFs::power_loss`] brings the machine back.
    pub fn crash_after(&self, calls: u64) {
        self.lock().faults.calls_before_crash = Some(calls);
    }

    /// Whether an armed crash has happened.
    pub fn crashed(&self) -> bool {
        self.lock().faults.crashed
    }

    /// The next write fails with EIO (and writes nothing).
    pub fn fail_next_write(&self) {
        self.lock().faults.fail_next_write = true;
    }

    /// The next write panics in the calling thread (and writes nothing), as
    /// a bug in the writer thread would.
    pub fn panic_next_write(&self) {
        self.lock().faults.panic_next_write = true;
    }

    /// The next sync fails with EIO (and makes nothing durable).
    pub fn fail_next_sync(&self) {
        self.lock().faults.fail_next_sync = true;
    }

    /// From now on only `bytes` more bytes fit; a write that does not fit
    /// writes what fits and fails with ENOSPC. `None` lifts the limit.
    pub fn set_free_bytes(&self, bytes: Option<u64>) {
        self.lock().faults.free_bytes = bytes;
    }

    /// Replaces a file's content (durably), for corruption tests.
    pub fn put(&self, name: &str, data: Vec<u8>) {
        let durable_len = data.len();
        self.lock().files.insert(
            name.to_string(),
            MemFile {
                data,
                durable_len,
                durable_exists: true,
            },
        );
    }

    /// A file's current content, if it exists.
    pub fn get(&self, name: &str) -> Option<Vec<u8>> {
        self.lock().files.get(name).map(|file| file.data.clone())
    }
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{name}: no such file"))
}

struct FaultFile {
    fs: FaultFs,
    name: String,
}

impl WalFile for FaultFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut state = self.fs.lock();
        if state.faults.crash_now() {
            return Err(powered_off());
        }
        if std::mem::take(&mut state.faults.fail_next_write) {
            return Err(io::Error::other("injected write failure"));
        }
        if std::mem::take(&mut state.faults.panic_next_write) {
            drop(state);
            panic!("injected panic in a WAL write");
        }
        let (fits, full) = match state.faults.free_bytes {
            Some(free) if (buf.len() as u64) > free => (free as usize, true),
            _ => (buf.len(), false),
        };
        if let Some(free) = state.faults.free_bytes.as_mut() {
            *free -= fits as u64;
        }
        let file = state
            .files
            .get_mut(&self.name)
            .ok_or_else(|| not_found(&self.name))?;
        file.data.extend_from_slice(&buf[..fits]);
        if full {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let mut state = self.fs.lock();
        if state.faults.crash_now() {
            return Err(powered_off());
        }
        if std::mem::take(&mut state.faults.fail_next_sync) {
            return Err(io::Error::other("injected fsync failure"));
        }
        // As with POSIX, a file removed while open can still be synced;
        // its data is gone with the name, so there is nothing to keep.
        if let Some(file) = state.files.get_mut(&self.name) {
            file.durable_len = file.data.len();
        }
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let mut state = self.fs.lock();
        if state.faults.crashed {
            return Err(powered_off());
        }
        let file = state
            .files
            .get_mut(&self.name)
            .ok_or_else(|| not_found(&self.name))?;
        let len = len as usize;
        let freed = file.data.len().saturating_sub(len) as u64;
        file.data.truncate(len);
        file.durable_len = file.durable_len.min(len);
        if let Some(free) = state.faults.free_bytes.as_mut() {
            *free += freed;
        }
        Ok(())
    }

    fn try_clone(&self) -> io::Result<Box<dyn WalFile>> {
        Ok(Box::new(FaultFile {
            fs: self.fs.clone(),
            name: self.name.clone(),
        }))
    }
}

impl WalFs for FaultFs {
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.lock().files.keys().cloned().collect())
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn WalFile>> {
        let mut state = self.lock();
        if state.faults.crashed {
            return Err(powered_off());
        }
        state.files.insert(name.to_string(), MemFile::default());
        drop(state);
        Ok(Box::new(FaultFile {
            fs: self.clone(),
            name: name.to_string(),
        }))
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        self.get(name).ok_or_else(|| not_found(name))
    }

    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        let mut state = self.lock();
        if state.faults.crashed {
            return Err(powered_off());
        }
        let file = state.files.get_mut(name).ok_or_else(|| not_found(name))?;
        file.data.truncate(len as usize);
        file.durable_len = file.data.len();
        Ok(())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut state = self.lock();
        if state.faults.crashed {
            return Err(powered_off());
        }
        state
            .files
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| not_found(name))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut state = self.lock();
        let mut file = state.files.remove(from).ok_or_else(|| not_found(from))?;
        file.durable_exists = true;
        state.files.insert(to.to_string(), file);
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        let mut state = self.lock();
        if state.faults.crashed {
            return Err(powered_off());
        }
        for file in state.files.values_mut() {
            file.durable_exists = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_loss_keeps_only_synced_bytes_of_durable_files() {
        let fs = FaultFs::new();
        let mut a = fs.create("a").unwrap();
        fs.sync_dir().unwrap();
        a.write_all(b"hello").unwrap();
        a.sync_data().unwrap();
        a.write_all(b" world").unwrap();
        let mut b = fs.create("b").unwrap();
        b.write_all(b"lost").unwrap();
        b.sync_data().unwrap();
        fs.power_loss();
        assert_eq!(fs.read("a").unwrap(), b"hello");
        assert!(
            fs.read("b").is_err(),
            "a file whose directory entry was never synced is lost"
        );
    }

    #[test]
    fn full_disk_writes_what_fits_then_enospc() {
        let fs = FaultFs::new();
        let mut a = fs.create("a").unwrap();
        fs.set_free_bytes(Some(3));
        let err = a.write_all(b"hello").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(fs.read("a").unwrap(), b"hel");
        a.set_len(0).unwrap();
        a.write_all(b"abc").unwrap();
    }

    #[test]
    fn injected_failures_fire_once() {
        let fs = FaultFs::new();
        let mut a = fs.create("a").unwrap();
        fs.fail_next_write();
        assert!(a.write_all(b"x").is_err());
        a.write_all(b"x").unwrap();
        fs.fail_next_sync();
        assert!(a.sync_data().is_err());
        a.sync_data().unwrap();
    }

    #[test]
    fn crash_freezes_the_disk_until_power_returns() {
        let fs = FaultFs::new();
        let mut a = fs.create("a").unwrap();
        fs.sync_dir().unwrap();
        fs.crash_after(2);
        a.write_all(b"ab").unwrap();
        a.sync_data().unwrap();
        assert!(a.write_all(b"cd").is_err());
        assert!(fs.crashed());
        assert!(a.sync_data().is_err());
        fs.power_loss();
        assert_eq!(fs.read("a").unwrap(), b"ab");
        a.write_all(b"x").unwrap();
    }

    #[test]
    fn os_fs_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let fs = OsFs::new(dir.path()).unwrap();
        let mut f = fs.create("seg").unwrap();
        f.write_all(b"abcdef").unwrap();
        f.sync_data().unwrap();
        f.set_len(3).unwrap();
        f.write_all(b"xy").unwrap();
        assert_eq!(fs.read("seg").unwrap(), b"abcxy");
        fs.truncate("seg", 1).unwrap();
        assert_eq!(fs.read("seg").unwrap(), b"a");
        assert_eq!(fs.list().unwrap(), vec!["seg".to_string()]);
        fs.rename("seg", "seg.bad").unwrap();
        fs.remove("seg.bad").unwrap();
    }
}
