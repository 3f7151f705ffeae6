//! File access of the write-ahead log, behind a small trait.
//!
//! The WAL never touches `std::fs` directly: it goes through [`WalFs`], so
//! tests can swap the real [`OsFs`] for [`FaultFs`], an in-memory file system
//! that remembers which bytes and directory entries were made durable and can
//! (a) cut the power at any changing call, that call included, and then
//!     keep, lose or mangle whatever was not synced, as a real disk may
//!     ([`PowerLoss::Harsh`]: a random prefix of each file's unsynced bytes,
//!     sometimes zeros or garbage past it, or unsynced pages written back
//!     out of order; unsynced creations and removals undone or not),
//! (b) fail the next write or sync, and
//! (c) report a full disk once a byte budget is spent.
//!
//! Contract of the trait, which both implementations keep:
//! - bytes passed to [`WalFile::write_all`] or [`WalFile::write_at`] are
//!   readable at once, but survive a power loss only after
//!   [`WalFile::sync_data`] returned `Ok`; until then any of them may come
//!   back as they were, as zeros or as garbage;
//! - a creation or removal survives a power loss only after
//!   [`WalFs::sync_dir`]; until then it may or may not have happened;
//! - [`WalFs::truncate`], [`WalFile::set_len`] and [`WalFs::rename`] are
//!   durable when they return.

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
    /// Opens a file for writing in place, creating it (empty) if missing;
    /// a creation is durable after [`WalFs::sync_dir`].
    fn open(&self, name: &str) -> io::Result<Box<dyn WalFile>>;
    /// Reads a whole file.
    fn read(&self, name: &str) -> io::Result<Vec<u8>>;
    /// Cuts a file to `len` bytes and makes the cut durable.
    fn truncate(&self, name: &str, len: u64) -> io::Result<()>;
    /// Removes a file (durable after [`WalFs::sync_dir`]).
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Renames a file (used to move damaged segments aside).
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Makes creations and removals in the directory durable.
    fn sync_dir(&self) -> io::Result<()>;
    /// Bytes still free for files in the directory, if known.
    fn free_bytes(&self) -> Option<u64>;
}

/// One file open for appending.
pub trait WalFile: Send {
    /// Appends all of `buf`.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Writes all of `buf` at `offset` (the file grows if needed); does not
    /// move the append position of [`WalFile::write_all`].
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()>;
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

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.file, buf, offset)
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

    fn open(&self, name: &str) -> io::Result<Box<dyn WalFile>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
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

    fn free_bytes(&self) -> Option<u64> {
        crate::reserve::free_bytes(&self.dir)
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
    /// How long every sync takes (a slow disk).
    sync_delay: std::time::Duration,
    /// Changing calls left before the power goes: then that call is cut
    /// short (it may have taken partial, unsynced effect) and every later
    /// call fails without effect until `power_loss`.
    calls_before_crash: Option<u64>,
    crashed: bool,
}

/// What an armed crash does to one changing call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// The call runs normally.
    Runs,
    /// The power goes during this call: it may take partial, unsynced
    /// effect, and fails.
    CutShort,
    /// The power is already gone: the call fails without effect.
    Down,
}

impl Faults {
    /// Counts one changing call (write, sync, truncation, creation, removal,
    /// directory sync) against the crash budget.
    fn fate(&mut self) -> Fate {
        if self.crashed {
            return Fate::Down;
        }
        match self.calls_before_crash.as_mut() {
            Some(0) => {
                self.crashed = true;
                Fate::CutShort
            }
            Some(left) => {
                *left -= 1;
                Fate::Runs
            }
            None => Fate::Runs,
        }
    }
}

fn powered_off() -> io::Error {
    io::Error::other("injected power loss: device is gone")
}

/// Default page size of the simulated device: power loss writes back or
/// loses whole pages.
pub const FAULT_PAGE_BYTES: usize = 4096;

/// A small deterministic PRNG (splitmix64), so the library needs no `rand`.
#[derive(Debug, Clone)]
struct Prng(u64);

impl Prng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `low..=high` (`low` if the range is empty).
    fn range(&mut self, low: usize, high: usize) -> usize {
        if high <= low {
            return low;
        }
        let span = (high - low) as u64 + 1;
        low + (self.next() % span) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// How much a power loss takes from unsynced state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerLoss {
    /// Every unsynced byte and directory change is lost, nothing else.
    DropUnsynced,
    /// As a real disk: each file keeps a random prefix of its unsynced
    /// bytes, sometimes followed by zeros or garbage, or a random subset of
    /// its unsynced pages (written back out of order); each unsynced
    /// creation, removal or truncation may or may not have happened.
    Harsh,
}

#[derive(Debug, Default, Clone)]
struct MemFile {
    /// Everything written, readable now.
    data: Vec<u8>,
    /// What survives a power loss for certain (as of the last sync).
    durable: Vec<u8>,
    /// Lowest offset changed since the last sync: `data[..dirty_from]`
    /// equals `durable[..dirty_from]`. Never above `durable.len()`.
    dirty_from: usize,
}

impl MemFile {
    fn sync(&mut self) {
        let keep = self.dirty_from.min(self.data.len());
        self.durable.truncate(keep);
        self.durable.extend_from_slice(&self.data[keep..]);
        self.dirty_from = self.durable.len();
    }

    fn set_len(&mut self, len: usize) {
        self.data.resize(len, 0);
        self.dirty_from = self.dirty_from.min(len);
    }

    fn write_at(&mut self, offset: usize, buf: &[u8]) {
        let end = offset + buf.len();
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        self.data[offset..end].copy_from_slice(buf);
        self.dirty_from = self.dirty_from.min(offset);
    }

    /// The bytes a power loss leaves; `page_bytes` is the unit the disk
    /// writes back.
    fn after_power_loss(&self, mode: PowerLoss, page_bytes: usize, rng: &mut Prng) -> Vec<u8> {
        let from = self.dirty_from;
        if mode == PowerLoss::DropUnsynced || self.data == self.durable {
            return self.durable.clone();
        }
        let new = &self.data;
        let old = &self.durable;
        let garbage = |rng: &mut Prng, len: usize| -> Vec<u8> {
            (0..len).map(|_| rng.next() as u8).collect()
        };
        match rng.range(0, 99) {
            // Nothing written back.
            0..=14 => old.clone(),
            // Everything written back.
            15..=29 => new.clone(),
            // A prefix of the new bytes.
            30..=54 => {
                let len = rng.range(from, new.len());
                let mut out = new[..len].to_vec();
                if out.len() < old.len() && len < new.len() {
                    // The cut landed before the old end: the old bytes
                    // there are still on disk.
                    out.extend_from_slice(&old[len..]);
                }
                out
            }
            // A prefix, then zeros or garbage up to a later length (the
            // size was updated, the data blocks were not).
            55..=74 => {
                let len = rng.range(from, new.len().max(old.len()));
                let kept = rng.range(from, len.min(new.len()));
                let mut out = new[..kept].to_vec();
                if rng.chance(50) {
                    out.resize(len, 0);
                } else {
                    out.extend(garbage(rng, len - kept));
                }
                out
            }
            // Pages written back in any order: each page from `from` on is
            // new, old, zeros or garbage; the length is the old or the new.
            _ => {
                let len = if rng.chance(70) {
                    new.len()
                } else {
                    rng.range(from.min(new.len()), new.len().max(old.len()))
                };
                let mut out = new[..from.min(len)].to_vec();
                let mut page_start = from;
                while page_start < len {
                    let page_end = ((page_start / page_bytes) + 1) * page_bytes;
                    let page_end = page_end.min(len);
                    let pick = |source: &[u8]| -> Vec<u8> {
                        (page_start..page_end)
                            .map(|i| source.get(i).copied().unwrap_or(0))
                            .collect()
                    };
                    let page = match rng.range(0, 9) {
                        0..=4 => pick(new),
                        5..=6 => pick(old),
                        7..=8 => vec![0; page_end - page_start],
                        _ => garbage(rng, page_end - page_start),
                    };
                    out.extend(page);
                    page_start = page_end;
                }
                out
            }
        }
    }
}

type Inode = u64;

#[derive(Debug)]
struct MemState {
    inodes: BTreeMap<Inode, MemFile>,
    next_inode: Inode,
    /// The directory as it is now.
    names: BTreeMap<String, Inode>,
    /// The directory as of the last directory sync.
    durable_names: BTreeMap<String, Inode>,
    faults: Faults,
    mode: PowerLoss,
    page_bytes: usize,
    rng: Prng,
}

impl Default for MemState {
    fn default() -> Self {
        MemState {
            inodes: BTreeMap::new(),
            next_inode: 1,
            names: BTreeMap::new(),
            durable_names: BTreeMap::new(),
            faults: Faults::default(),
            mode: PowerLoss::Harsh,
            page_bytes: FAULT_PAGE_BYTES,
            rng: Prng(0x5EED),
        }
    }
}

impl MemState {
    fn new_inode(&mut self) -> Inode {
        let inode = self.next_inode;
        self.next_inode += 1;
        self.inodes.insert(inode, MemFile::default());
        inode
    }

    fn file(&mut self, name: &str) -> io::Result<&mut MemFile> {
        let inode = *self.names.get(name).ok_or_else(|| not_found(name))?;
        self.inodes.get_mut(&inode).ok_or_else(|| not_found(name))
    }
}

/// An in-memory [`WalFs`] for tests that injects faults and power loss.
/// Clones share one file system, so a store reopened on a clone sees what
/// the crashed one left.
///
/// Files are inodes behind names, as on a real file system: a handle keeps
/// working on a file removed or replaced under it, and a name survives a
/// power loss only once the directory was synced after it changed.
#[derive(Debug, Clone, Default)]
pub struct FaultFs {
    state: Arc<Mutex<MemState>>,
}

impl FaultFs {
    /// An empty file system with no faults armed, whose power loss is
    /// [`PowerLoss::Harsh`] with a fixed seed.
    pub fn new() -> Self {
        FaultFs::default()
    }

    /// An empty file system whose harsh power losses draw from `seed`.
    pub fn with_seed(seed: u64) -> Self {
        let fs = FaultFs::default();
        fs.lock().rng = Prng(seed);
        fs
    }

    /// Chooses what a power loss takes.
    pub fn set_power_loss(&self, mode: PowerLoss) {
        self.lock().mode = mode;
    }

    /// Sets the unit in which unsynced bytes are written back out of order
    /// (default [`FAULT_PAGE_BYTES`]); a smaller one, down to a 512-byte
    /// sector, puts more boundaries inside a small unsynced tail.
    pub fn set_page_bytes(&self, bytes: usize) {
        self.lock().page_bytes = bytes.max(1);
    }

    fn lock(&self) -> MutexGuard<'_, MemState> {
        // A panic elsewhere in a test must not hide this one's data.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Cuts the power and brings it back: unsynced bytes and unsynced
    /// directory changes are lost, kept or mangled as the mode says; every
    /// synced byte and every synced directory entry survives. Disarms all
    /// faults.
    pub fn power_loss(&self) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let harsh = state.mode == PowerLoss::Harsh;
        let mut names = BTreeMap::new();
        let all: std::collections::BTreeSet<String> = state
            .names
            .keys()
            .chain(state.durable_names.keys())
            .cloned()
            .collect();
        for name in all {
            let now = state.names.get(&name).copied();
            let synced = state.durable_names.get(&name).copied();
            // An unsynced directory change may or may not have reached the disk.
            let survivor = if now == synced || !harsh || !state.rng.chance(50) {
                synced
            } else {
                now
            };
            if let Some(inode) = survivor {
                names.insert(name, inode);
            }
        }
        let mut inodes = BTreeMap::new();
        for inode in names.values() {
            if inodes.contains_key(inode) {
                continue;
            }
            if let Some(file) = state.inodes.get(inode) {
                let bytes = file.after_power_loss(state.mode, state.page_bytes, &mut state.rng);
                inodes.insert(
                    *inode,
                    MemFile {
                        dirty_from: bytes.len(),
                        durable: bytes.clone(),
                        data: bytes,
                    },
                );
            }
        }
        state.inodes = inodes;
        state.durable_names = names.clone();
        state.names = names;
        state.faults = Faults::default();
    }

    /// After `calls` more changing calls succeed, the power goes: that call
    /// is cut short and every later one fails and changes nothing, until
    /// [`FaultFs::power_loss`] brings the machine back.
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

    /// From now on every sync takes `delay` longer, as on a slow disk.
    pub fn set_sync_delay(&self, delay: std::time::Duration) {
        self.lock().faults.sync_delay = delay;
    }

    /// From now on only `bytes` more bytes fit; a write that does not fit
    /// writes what fits and fails with ENOSPC. `None` lifts the limit.
    pub fn set_free_bytes(&self, bytes: Option<u64>) {
        self.lock().faults.free_bytes = bytes;
    }

    /// Replaces a file's content (durably, directory entry included), for
    /// corruption tests.
    pub fn put(&self, name: &str, data: Vec<u8>) {
        let mut state = self.lock();
        let inode = state.new_inode();
        state.inodes.insert(
            inode,
            MemFile {
                dirty_from: data.len(),
                durable: data.clone(),
                data,
            },
        );
        state.names.insert(name.to_string(), inode);
        state.durable_names.insert(name.to_string(), inode);
    }

    /// A file's current content, if it exists.
    pub fn get(&self, name: &str) -> Option<Vec<u8>> {
        self.lock().file(name).ok().map(|file| file.data.clone())
    }
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{name}: no such file"))
}

struct FaultFile {
    fs: FaultFs,
    inode: Inode,
}

impl FaultFile {
    /// Writes `buf` at `offset` (None: at the end), within the free-space
    /// budget; a crash during the call writes a random prefix.
    fn write(&mut self, offset: Option<u64>, buf: &[u8]) -> io::Result<()> {
        let mut guard = self.fs.lock();
        let state = &mut *guard;
        let fate = state.faults.fate();
        if fate == Fate::Down {
            return Err(powered_off());
        }
        if fate == Fate::Runs && std::mem::take(&mut state.faults.fail_next_write) {
            return Err(io::Error::other("injected write failure"));
        }
        if fate == Fate::Runs && std::mem::take(&mut state.faults.panic_next_write) {
            drop(guard);
            panic!("injected panic in a WAL write");
        }
        let mut fits = buf.len();
        let mut full = false;
        if let Some(free) = state.faults.free_bytes {
            if (buf.len() as u64) > free {
                fits = free as usize;
                full = true;
            }
        }
        if fate == Fate::CutShort {
            // The power went during this call: some of it was written.
            fits = state.rng.range(0, fits);
        }
        if let Some(free) = state.faults.free_bytes.as_mut() {
            *free -= fits as u64;
        }
        let file = state
            .inodes
            .get_mut(&self.inode)
            .ok_or_else(|| io::Error::other("file vanished"))?;
        let at = offset.map_or(file.data.len(), |o| o as usize);
        file.write_at(at, &buf[..fits]);
        if fate == Fate::CutShort {
            return Err(powered_off());
        }
        if full {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }
}

impl WalFile for FaultFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.write(None, buf)
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.write(Some(offset), buf)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let mut state = self.fs.lock();
        if state.faults.fate() != Fate::Runs {
            return Err(powered_off());
        }
        if std::mem::take(&mut state.faults.fail_next_sync) {
            return Err(io::Error::other("injected fsync failure"));
        }
        let delay = state.faults.sync_delay;
        if !delay.is_zero() {
            // Slept without the file system's lock, as a disk would take
            // its time without stopping other files' calls.
            drop(state);
            std::thread::sleep(delay);
            state = self.fs.lock();
            if state.faults.crashed {
                return Err(powered_off());
            }
        }
        // As with POSIX, a file removed while open can still be synced.
        if let Some(file) = state.inodes.get_mut(&self.inode) {
            file.sync();
        }
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let mut guard = self.fs.lock();
        let state = &mut *guard;
        let fate = state.faults.fate();
        if fate == Fate::Down || (fate == Fate::CutShort && state.rng.chance(50)) {
            return Err(powered_off());
        }
        let file = state
            .inodes
            .get_mut(&self.inode)
            .ok_or_else(|| io::Error::other("file vanished"))?;
        let freed = file.data.len().saturating_sub(len as usize) as u64;
        file.set_len(len as usize);
        if fate == Fate::CutShort {
            // Cut, but the cut was never synced.
            return Err(powered_off());
        }
        // `OsFile::set_len` syncs the cut.
        file.sync();
        if let Some(free) = state.faults.free_bytes.as_mut() {
            *free += freed;
        }
        Ok(())
    }

    fn try_clone(&self) -> io::Result<Box<dyn WalFile>> {
        Ok(Box::new(FaultFile {
            fs: self.fs.clone(),
            inode: self.inode,
        }))
    }
}

impl WalFs for FaultFs {
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.lock().names.keys().cloned().collect())
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn WalFile>> {
        let mut state = self.lock();
        let fate = state.faults.fate();
        if fate == Fate::Down || (fate == Fate::CutShort && state.rng.chance(50)) {
            return Err(powered_off());
        }
        let inode = match state.names.get(name).copied() {
            // Like O_TRUNC: the same file, emptied (unsynced).
            Some(inode) => {
                if let Some(file) = state.inodes.get_mut(&inode) {
                    file.set_len(0);
                }
                inode
            }
            None => {
                let inode = state.new_inode();
                state.names.insert(name.to_string(), inode);
                inode
            }
        };
        if fate == Fate::CutShort {
            return Err(powered_off());
        }
        drop(state);
        Ok(Box::new(FaultFile {
            fs: self.clone(),
            inode,
        }))
    }

    fn open(&self, name: &str) -> io::Result<Box<dyn WalFile>> {
        let mut state = self.lock();
        let inode = match state.names.get(name).copied() {
            Some(inode) => inode,
            None => {
                let fate = state.faults.fate();
                if fate == Fate::Down || (fate == Fate::CutShort && state.rng.chance(50)) {
                    return Err(powered_off());
                }
                let inode = state.new_inode();
                state.names.insert(name.to_string(), inode);
                if fate == Fate::CutShort {
                    return Err(powered_off());
                }
                inode
            }
        };
        drop(state);
        Ok(Box::new(FaultFile {
            fs: self.clone(),
            inode,
        }))
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        self.get(name).ok_or_else(|| not_found(name))
    }

    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let fate = state.faults.fate();
        if fate == Fate::Down || (fate == Fate::CutShort && state.rng.chance(50)) {
            return Err(powered_off());
        }
        let file = state.file(name)?;
        file.set_len(len as usize);
        if fate == Fate::CutShort {
            // Cut, but the cut was never synced.
            return Err(powered_off());
        }
        file.sync();
        Ok(())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut state = self.lock();
        let fate = state.faults.fate();
        if fate == Fate::Down || (fate == Fate::CutShort && state.rng.chance(50)) {
            return Err(powered_off());
        }
        let removed = state.names.remove(name);
        if fate == Fate::CutShort {
            return Err(powered_off());
        }
        removed.map(|_| ()).ok_or_else(|| not_found(name))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut state = self.lock();
        if state.faults.fate() != Fate::Runs {
            return Err(powered_off());
        }
        let inode = state.names.remove(from).ok_or_else(|| not_found(from))?;
        state.names.insert(to.to_string(), inode);
        // `OsFs::rename` syncs the directory: both names are durable.
        state.durable_names.remove(from);
        state.durable_names.insert(to.to_string(), inode);
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        let mut state = self.lock();
        if state.faults.fate() != Fate::Runs {
            return Err(powered_off());
        }
        state.durable_names = state.names.clone();
        Ok(())
    }

    fn free_bytes(&self) -> Option<u64> {
        self.lock().faults.free_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_loss_keeps_only_synced_bytes_of_durable_files() {
        let fs = FaultFs::new();
        fs.set_power_loss(PowerLoss::DropUnsynced);
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
        fs.set_power_loss(PowerLoss::DropUnsynced);
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

    #[test]
    fn harsh_power_loss_never_touches_synced_bytes_and_varies_the_rest() {
        let mut outcomes = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let fs = FaultFs::with_seed(seed);
            let mut a = fs.create("a").unwrap();
            fs.sync_dir().unwrap();
            let synced: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
            a.write_all(&synced).unwrap();
            a.sync_data().unwrap();
            let unsynced = vec![0xAB; 9000];
            a.write_all(&unsynced).unwrap();
            let mut b = fs.create("b").unwrap();
            b.write_all(b"new file").unwrap();
            b.sync_data().unwrap();
            fs.power_loss();
            let after = fs.read("a").unwrap();
            assert_eq!(&after[..synced.len()], &synced[..], "seed {seed}");
            assert!(after.len() <= synced.len() + unsynced.len());
            let tail = &after[synced.len()..];
            let kind = if tail.is_empty() {
                "nothing"
            } else if tail.iter().all(|&x| x == 0xAB) {
                "prefix"
            } else if tail.contains(&0xAB) {
                "mixed"
            } else {
                "mangled"
            };
            outcomes.insert((kind, fs.read("b").is_ok()));
        }
        // Every kind of outcome shows up, and the unsynced creation is
        // sometimes kept, sometimes undone.
        for kind in ["nothing", "prefix", "mixed", "mangled"] {
            for exists in [false, true] {
                assert!(
                    outcomes.contains(&(kind, exists)),
                    "{kind} {exists}: {outcomes:?}"
                );
            }
        }
    }

    #[test]
    fn unsynced_removal_may_be_undone_and_synced_removal_is_not() {
        let mut came_back = 0;
        for seed in 0..50 {
            let fs = FaultFs::with_seed(seed);
            fs.put("old", b"segment".to_vec());
            fs.put("gone", b"segment".to_vec());
            fs.remove("gone").unwrap();
            fs.sync_dir().unwrap();
            fs.remove("old").unwrap();
            fs.power_loss();
            assert!(fs.read("gone").is_err(), "seed {seed}");
            if fs.read("old").is_ok() {
                assert_eq!(fs.read("old").unwrap(), b"segment");
                came_back += 1;
            }
        }
        assert!(came_back > 0 && came_back < 50, "{came_back} of 50");
    }

    #[test]
    fn a_crash_cuts_the_call_it_lands_on_short() {
        let mut partial = 0;
        for seed in 0..50 {
            let fs = FaultFs::with_seed(seed);
            fs.set_power_loss(PowerLoss::Harsh);
            let mut a = fs.create("a").unwrap();
            fs.sync_dir().unwrap();
            fs.crash_after(0);
            assert!(a.write_all(&[7; 100]).is_err());
            let len = fs.read("a").unwrap().len();
            assert!(len <= 100);
            if len > 0 && len < 100 {
                partial += 1;
            }
            assert!(a.write_all(b"x").is_err(), "the device is gone");
            assert_eq!(fs.read("a").unwrap().len(), len);
        }
        assert!(partial > 0);
    }

    #[test]
    fn write_at_overwrites_in_place() {
        let fs = FaultFs::new();
        fs.set_power_loss(PowerLoss::DropUnsynced);
        let mut a = fs.open("m").unwrap();
        a.write_at(4, b"abcd").unwrap();
        assert_eq!(fs.read("m").unwrap(), b"\0\0\0\0abcd");
        a.sync_data().unwrap();
        a.write_at(0, b"zz").unwrap();
        assert_eq!(fs.read("m").unwrap(), b"zz\0\0abcd");
        fs.sync_dir().unwrap();
        fs.power_loss();
        assert_eq!(
            fs.read("m").unwrap(),
            b"\0\0\0\0abcd",
            "the unsynced overwrite is lost"
        );
        let dir = tempfile::tempdir().unwrap();
        let os = OsFs::new(dir.path()).unwrap();
        let mut m = os.open("m").unwrap();
        m.write_at(2, b"xy").unwrap();
        m.write_at(0, b"a").unwrap();
        assert_eq!(os.read("m").unwrap(), b"a\0xy");
        drop(os.open("m").unwrap());
        assert_eq!(os.read("m").unwrap(), b"a\0xy", "open does not truncate");
    }
}
