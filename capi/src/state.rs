//! What the library keeps between calls: the handle tables, each service's
//! selection object (an eventfd) and the callbacks waiting for C.
//!
//! # Handles
//!
//! Service, checkpoint and iteration handles are numbers from one counter
//! that never repeats, so a handle used after its Finalize/Close, or a
//! handle of another kind or of the other API, is never mistaken for a
//! live one: it gets `CL_ERR_INVALID_HANDLE` / `SA_AIS_ERR_BAD_HANDLE`.
//! The tables hold `Arc`s: a call looks its handle up under the registry
//! lock, then works without it, so calls on different threads run at
//! once and a Close racing with a call on the same handle makes that call
//! fail cleanly (the client answers `INVALID_HANDLE`), never crash.
//!
//! # Callbacks
//!
//! The Rust dispatch layer ([`CkptService`]) runs its callbacks inside
//! `dispatch`, which the C API's Dispatch runs with `block_on`. A C
//! callback must not run there: it may call the library again (open a
//! checkpoint, write, even finalize), which would block on the runtime from
//! inside it. So the Rust callbacks registered here only copy what happened
//! into a [`CCall`] on the dispatching thread's list; Dispatch runs that
//! list after `block_on` returns, on the caller's thread, with no lock held.
//!
//! # The selection object
//!
//! An eventfd per service, readable while callbacks wait. A watcher task
//! raises it when the queue becomes non-empty and then waits until a
//! Dispatch has looked at the queue: Dispatch clears the eventfd and
//! raises it again if callbacks remain, or re-arms the watcher. Finalize
//! closes it under the same lock the watcher writes under, so a write never
//! reaches a recycled descriptor number.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use ckpt_client::{Checkpoint, CkptService, ClientError, SectionIterator};
use ckpt_proto::wire::{Change, Notification};
use ckpt_proto::{CheckpointName, ErrorCode, SectionId};
use tokio::sync::Notify;

use crate::ctypes::{
    write_name, IoVectorElementC, NotificationCallbackC, OpenCallbackC, SectionIdC,
    SynchronizeCallbackC,
};
use crate::errors::Api;

pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An initialized service (`ClCkptSvcHdlT` / `SaCkptHandleT`).
pub struct Service {
    pub api: Api,
    pub service: CkptService,
    pub signal: Arc<Signal>,
    pub finalized: AtomicBool,
    pub watcher: Mutex<Option<tokio::task::AbortHandle>>,
}

/// An open checkpoint (`ClCkptHdlT` / `SaCkptCheckpointHandleT`).
pub struct Ckpt {
    pub api: Api,
    pub service: u64,
    pub checkpoint: Checkpoint,
}

/// A section iteration (`ClHandleT` / `SaCkptSectionIterationHandleT`).
pub struct Iter {
    pub api: Api,
    pub checkpoint: u64,
    pub iterator: tokio::sync::Mutex<Option<SectionIterator>>,
    /// SA Forum: the id bytes the last IterationNext handed out, which the
    /// library owns until the next IterationNext or IterationFinalize.
    pub last_id: Mutex<Option<SaBuffer>>,
}

/// A buffer from `malloc` the library owns.
pub struct SaBuffer(pub *mut u8);

// SAFETY: a plain heap pointer, freed once by whoever owns the SaBuffer.
unsafe impl Send for SaBuffer {}

impl Drop for SaBuffer {
    fn drop(&mut self) {
        // SAFETY: from malloc, owned by this value alone.
        unsafe { libc::free(self.0.cast()) };
    }
}

#[derive(Default)]
struct Registry {
    services: HashMap<u64, Arc<Service>>,
    checkpoints: HashMap<u64, Arc<Ckpt>>,
    iterators: HashMap<u64, Arc<Iter>>,
    /// SA Forum buffers handed to the application (read data, generated
    /// ids) and the checkpoint handle they came from, until it frees them
    /// with saCkptIOVectorElementDataFree / saCkptSectionIdFree.
    sa_buffers: HashMap<usize, u64>,
}

impl Registry {
    /// Gives an emptied table's memory back: a process that finalized
    /// everything holds no heap blocks of the library (hashbrown points into
    /// the middle of its allocation, which valgrind would call "possibly
    /// lost" at exit).
    fn tidy(&mut self) {
        fn reset<K, V>(map: &mut HashMap<K, V>) {
            if map.is_empty() && map.capacity() > 0 {
                *map = HashMap::new();
            }
        }
        reset(&mut self.services);
        reset(&mut self.checkpoints);
        reset(&mut self.iterators);
        reset(&mut self.sa_buffers);
    }
}

/// Read by every call (a handle lookup), written by opens, closes and the
/// SA Forum free calls: a reader-writer lock, so that many threads calling
/// at once do not queue behind each other.
static REGISTRY: LazyLock<RwLock<Registry>> = LazyLock::new(RwLock::default);

fn read_registry() -> RwLockReadGuard<'static, Registry> {
    REGISTRY
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write_registry() -> RwLockWriteGuard<'static, Registry> {
    REGISTRY
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Handles start high so that small integers (0, 1, a file descriptor)
/// are never valid handles.
static NEXT_HANDLE: AtomicU64 = AtomicU64::new(0x1000);

pub fn new_handle() -> u64 {
    NEXT_HANDLE.fetch_add(1, Ordering::Relaxed)
}

fn bad_handle(what: &str, handle: u64) -> ClientError {
    ClientError::new(
        ErrorCode::InvalidHandle,
        format!("{what} handle {handle} is not open"),
    )
}

/// The live service `handle` of `api`.
///
/// # Errors
/// `INVALID_HANDLE` otherwise.
pub fn service(api: Api, handle: u64) -> Result<Arc<Service>, ClientError> {
    match read_registry().services.get(&handle) {
        Some(service) if service.api == api => Ok(service.clone()),
        _ => Err(bad_handle("service", handle)),
    }
}

/// The open checkpoint `handle` of `api`.
///
/// # Errors
/// `INVALID_HANDLE` otherwise.
pub fn checkpoint(api: Api, handle: u64) -> Result<Arc<Ckpt>, ClientError> {
    match read_registry().checkpoints.get(&handle) {
        Some(checkpoint) if checkpoint.api == api => Ok(checkpoint.clone()),
        _ => Err(bad_handle("checkpoint", handle)),
    }
}

/// The iteration `handle` of `api`.
///
/// # Errors
/// `INVALID_HANDLE` otherwise.
pub fn iterator(api: Api, handle: u64) -> Result<Arc<Iter>, ClientError> {
    match read_registry().iterators.get(&handle) {
        Some(iterator) if iterator.api == api => Ok(iterator.clone()),
        _ => Err(bad_handle("iteration", handle)),
    }
}

pub fn add_service(handle: u64, service: Arc<Service>) {
    write_registry().services.insert(handle, service);
}

/// Registers an opened checkpoint of service `service`; `None` when that
/// service was finalized meanwhile (the checkpoint is then just dropped:
/// Finalize closed it on the server).
pub fn add_checkpoint(api: Api, service: u64, checkpoint: Checkpoint) -> Option<u64> {
    let mut registry = write_registry();
    if !registry.services.contains_key(&service) {
        return None;
    }
    let handle = new_handle();
    registry.checkpoints.insert(
        handle,
        Arc::new(Ckpt {
            api,
            service,
            checkpoint,
        }),
    );
    Some(handle)
}

/// Registers an iteration of checkpoint `checkpoint`; `None` when that
/// checkpoint was closed meanwhile.
pub fn add_iterator(api: Api, checkpoint: u64, iterator: SectionIterator) -> Option<u64> {
    let mut registry = write_registry();
    if !registry.checkpoints.contains_key(&checkpoint) {
        return None;
    }
    let handle = new_handle();
    registry.iterators.insert(
        handle,
        Arc::new(Iter {
            api,
            checkpoint,
            iterator: tokio::sync::Mutex::new(Some(iterator)),
            last_id: Mutex::new(None),
        }),
    );
    Some(handle)
}

/// Removes a service and everything opened through it.
pub fn remove_service(api: Api, handle: u64) -> Result<Arc<Service>, ClientError> {
    let mut registry = write_registry();
    match registry.services.get(&handle) {
        Some(service) if service.api == api => {}
        _ => return Err(bad_handle("service", handle)),
    }
    let service = registry.services.remove(&handle).expect("checked above");
    let checkpoints: Vec<u64> = registry
        .checkpoints
        .iter()
        .filter(|(_, c)| c.service == handle)
        .map(|(&h, _)| h)
        .collect();
    for checkpoint in &checkpoints {
        registry.checkpoints.remove(checkpoint);
    }
    registry
        .iterators
        .retain(|_, iterator| !checkpoints.contains(&iterator.checkpoint));
    registry.tidy();
    Ok(service)
}

/// Removes a checkpoint handle and its iterations.
pub fn remove_checkpoint(api: Api, handle: u64) -> Result<Arc<Ckpt>, ClientError> {
    let mut registry = write_registry();
    match registry.checkpoints.get(&handle) {
        Some(checkpoint) if checkpoint.api == api => {}
        _ => return Err(bad_handle("checkpoint", handle)),
    }
    let checkpoint = registry.checkpoints.remove(&handle).expect("checked above");
    registry
        .iterators
        .retain(|_, iterator| iterator.checkpoint != handle);
    registry.tidy();
    Ok(checkpoint)
}

/// Removes an iteration handle.
pub fn remove_iterator(api: Api, handle: u64) -> Result<Arc<Iter>, ClientError> {
    let mut registry = write_registry();
    match registry.iterators.get(&handle) {
        Some(iterator) if iterator.api == api => {}
        _ => return Err(bad_handle("iteration", handle)),
    }
    let iterator = registry.iterators.remove(&handle).expect("checked above");
    registry.tidy();
    Ok(iterator)
}

/// Records an SA Forum buffer handed to the application for `checkpoint`.
pub fn add_sa_buffer(buffer: *mut u8, checkpoint: u64) {
    write_registry()
        .sa_buffers
        .insert(buffer as usize, checkpoint);
}

/// Frees an SA Forum buffer the application hands back.
///
/// # Errors
/// `INVALID_HANDLE` for a checkpoint handle that is not open;
/// `INVALID_PARAMETER` for a pointer the library did not hand out for it
/// (NULL, freed already, or someone else's).
pub fn free_sa_buffer(checkpoint: u64, buffer: *mut c_void) -> Result<(), ClientError> {
    let mut registry = write_registry();
    match registry.checkpoints.get(&checkpoint) {
        Some(open) if open.api == Api::Sa => {}
        _ => return Err(bad_handle("checkpoint", checkpoint)),
    }
    if registry.sa_buffers.get(&(buffer as usize)) != Some(&checkpoint) {
        return Err(ClientError::new(
            ErrorCode::InvalidParameter,
            format!("{buffer:p} is not memory the library handed out for checkpoint {checkpoint}"),
        ));
    }
    registry.sa_buffers.remove(&(buffer as usize));
    registry.tidy();
    drop(registry);
    drop(SaBuffer(buffer.cast()));
    Ok(())
}

/// A service's eventfd and what re-arms its watcher.
pub struct Signal {
    fd: Mutex<Option<OwnedFd>>,
    rearm: Notify,
}

impl Signal {
    /// A new, unreadable eventfd.
    ///
    /// # Errors
    /// `NO_RESOURCE` when the process cannot have another descriptor.
    pub fn new() -> Result<Arc<Signal>, ClientError> {
        // SAFETY: eventfd(2) with valid flags; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(ClientError::new(
                ErrorCode::NoResource,
                format!(
                    "cannot create the selection object: {}",
                    std::io::Error::last_os_error()
                ),
            ));
        }
        Ok(Arc::new(Signal {
            // SAFETY: a fresh descriptor we own.
            fd: Mutex::new(Some(unsafe { OwnedFd::from_raw_fd(fd) })),
            rearm: Notify::new(),
        }))
    }

    /// The descriptor, `None` once closed.
    pub fn raw_fd(&self) -> Option<i32> {
        lock(&self.fd).as_ref().map(AsRawFd::as_raw_fd)
    }

    fn raise_locked(fd: &OwnedFd) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a u64 to our eventfd. It can only
        // fail when the counter would overflow, and then it is readable.
        unsafe { libc::write(fd.as_raw_fd(), (&raw const one).cast(), 8) };
    }

    /// Makes the eventfd readable (the watcher: callbacks are queued).
    pub fn raise(&self) -> bool {
        match lock(&self.fd).as_ref() {
            Some(fd) => {
                Signal::raise_locked(fd);
                true
            }
            None => false,
        }
    }

    /// After a Dispatch: readable again if callbacks remain, else
    /// unreadable and the watcher re-armed.
    pub fn after_dispatch(&self, pending: impl Fn() -> usize) {
        let guard = lock(&self.fd);
        let Some(fd) = guard.as_ref() else { return };
        let mut value: u64 = 0;
        // SAFETY: a non-blocking read of 8 bytes into a u64 resets the
        // counter; EAGAIN (already zero) is fine.
        unsafe { libc::read(fd.as_raw_fd(), (&raw mut value).cast(), 8) };
        if pending() > 0 {
            Signal::raise_locked(fd);
        } else {
            drop(guard);
            self.rearm.notify_one();
        }
    }

    /// Waits until a Dispatch re-arms the watcher.
    pub async fn rearmed(&self) {
        self.rearm.notified().await;
    }

    /// Closes the eventfd (Finalize): the descriptor is invalid from now on.
    pub fn close(&self) {
        lock(&self.fd).take();
        self.rearm.notify_one();
    }
}

/// One element of an update: `(section, data (None: deleted), offset)`.
pub type Updated = (SectionId, Option<Vec<u8>>, u64);

/// What a C callback gets, copied out of the Rust callback that learned it.
pub enum CCall {
    Open {
        callback: OpenCallbackC,
        api: Api,
        invocation: u64,
        handle: u64,
        result: Result<(), ClientError>,
    },
    Synchronize {
        callback: SynchronizeCallbackC,
        api: Api,
        invocation: u64,
        result: Result<(), ClientError>,
    },
    Notification {
        callback: NotificationCallbackC,
        cookie: usize,
        handle: u64,
        name: CheckpointName,
        /// Empty: updates were lost, re-read.
        elements: Vec<Updated>,
    },
}

thread_local! {
    static COLLECTED: RefCell<Vec<CCall>> = const { RefCell::new(Vec::new()) };
}

/// Queues `call` for the Dispatch running on this thread.
pub fn collect(call: CCall) {
    COLLECTED.with(|collected| collected.borrow_mut().push(call));
}

/// Runs every C callback this thread's Dispatch collected, in order. The
/// list is taken first: a callback may dispatch again.
pub fn run_collected() -> usize {
    let calls = COLLECTED.with(|collected| std::mem::take(&mut *collected.borrow_mut()));
    let count = calls.len();
    for call in calls {
        run(call);
    }
    count
}

fn run(call: CCall) {
    match call {
        CCall::Open {
            callback,
            api,
            invocation,
            handle,
            result,
        } => {
            // SAFETY: the application's callback, with the arguments its
            // type declares.
            unsafe { callback(invocation, handle, api.result(&result)) };
        }
        CCall::Synchronize {
            callback,
            api,
            invocation,
            result,
        } => {
            // SAFETY: as above.
            unsafe { callback(invocation, api.result(&result)) };
        }
        CCall::Notification {
            callback,
            cookie,
            handle,
            name,
            elements,
        } => {
            let mut name = write_name(&name);
            let mut vector: Vec<IoVectorElementC> = elements
                .iter()
                .map(|(id, data, offset)| IoVectorElementC {
                    section_id: SectionIdC {
                        id_len: u16::try_from(id.as_bytes().len()).unwrap_or(u16::MAX),
                        id: id.as_bytes().as_ptr().cast_mut(),
                    },
                    data_buffer: data
                        .as_ref()
                        .map_or(std::ptr::null_mut(), |d| d.as_ptr().cast_mut().cast()),
                    data_size: data.as_ref().map_or(0, |d| d.len() as u64),
                    data_offset: *offset,
                    read_size: 0,
                })
                .collect();
            let pointer = if vector.is_empty() {
                std::ptr::null_mut()
            } else {
                vector.as_mut_ptr()
            };
            let count = u32::try_from(vector.len()).unwrap_or(u32::MAX);
            // SAFETY: the application's callback; name and vector (and the
            // bytes they point to, owned by `elements`) outlive the call.
            unsafe { callback(handle, &raw mut name, pointer, count, cookie as *mut c_void) };
        }
    }
}

/// The IO vector of an update: `None` for changes without section data
/// (expiration, retention, the checkpoint's deletion), which the C callback
/// does not hear of; empty for a `Resync` (updates were lost: re-read).
pub fn notification_elements(notification: Notification) -> Option<Vec<Updated>> {
    match notification {
        Notification::Update { change, .. } => match change {
            Change::SectionCreated { section_id, data }
            | Change::Overwritten { section_id, data } => Some(vec![(section_id, Some(data), 0)]),
            Change::Written { elements } => Some(
                elements
                    .into_iter()
                    .map(|e| (e.section_id, Some(e.data), e.offset))
                    .collect(),
            ),
            Change::SectionDeleted { section_id, .. } => Some(vec![(section_id, None, 0)]),
            Change::ExpirationSet { .. } | Change::RetentionSet { .. } | Change::Deleted => None,
        },
        Notification::Resync { .. } => Some(Vec::new()),
    }
}
