//! The callback-and-dispatch layer, for code ported from the C API.
//!
//! In the C library, `clCkptCheckpointOpenAsync`, `clCkptCheckpointSynchronizeAsync`
//! and `clCkptImmediateConsumptionRegister` do not call back on their own:
//! their completions wait in a queue until the application calls
//! `clCkptDispatch`, on its own thread, usually when the selection object
//! (a file descriptor) polls readable. [`CkptService`] keeps that shape:
//!
//! - [`CkptService::open_async`] / [`CkptService::synchronize_async`] start
//!   the call on a background task and return at once; the completion is
//!   queued.
//! - [`CkptService::immediate_consumption_register`] subscribes; a background
//!   task queues each notification.
//! - [`CkptService::dispatch`] runs queued callbacks on the caller's task, as
//!   [`DispatchFlags`] says; [`CkptService::selection_object`] is ready when
//!   something is queued.
//! - [`CkptService::finalize`] drops every queued callback, stops the
//!   background tasks, ends a blocking dispatch and finalizes the connection.
//! - [`Checkpoint::close`] of a handle drops its callbacks not yet
//!   dispatched — a completed SynchronizeAsync, its notifications — and any
//!   SynchronizeAsync still running for it will not call back (DESIGN.md §2
//!   "async calls"). The connection tells the service of the close before the
//!   Close request goes out; a completion racing with it is dropped under the
//!   queue lock, either when it is queued or by the close.
//!
//! Parameter errors of OpenAsync (flags, attributes, name) are returned by
//! the call itself, as the synchronous open would return them; only what
//! needs the server reaches the callback.
//!
//! Bounds: at most [`CALLBACKS_QUEUED_MAX`] callbacks wait in the queue; a
//! background task with more waits for a dispatch. A notification forwarder
//! that falls behind the connection by [`crate::NOTIFICATIONS_QUEUED_MAX`]
//! re-subscribes from its last sequence number, so the callback still sees
//! every update in order (or a `Resync` when the server's log no longer has
//! them).
//!
//! Callbacks run while the service holds its callback lock: call
//! [`CkptService::dispatch`] from one task at a time.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use ckpt_proto::wire::{ApiVersion, Handle, Notification};
use ckpt_proto::{CheckpointName, CreationAttributes, ErrorCode, OpenFlags};
use futures::StreamExt;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::checkpoint::Checkpoint;
use crate::connection::{Client, HandleCloseObserver};
use crate::error::ClientError;

/// Most callbacks waiting for [`CkptService::dispatch`].
pub const CALLBACKS_QUEUED_MAX: usize = 4096;

/// `ClInvocationT`: the caller's tag for an asynchronous call, handed back
/// to its callback.
pub type Invocation = u64;

/// `ClCkptCheckpointOpenCallbackT`.
pub type OpenCallback = Box<dyn FnMut(Invocation, Result<Checkpoint, ClientError>) + Send>;
/// `ClCkptCheckpointSynchronizeCallbackT`.
pub type SynchronizeCallback = Box<dyn FnMut(Invocation, Result<(), ClientError>) + Send>;
/// `ClCkptNotificationCallbackT`; the C cookie is whatever the closure captures.
pub type NotificationCallback = Box<dyn FnMut(Notification) + Send>;

/// `ClCkptCallbacksT`: the callbacks given to [`CkptService::initialize`].
#[derive(Default)]
pub struct Callbacks {
    /// Completes [`CkptService::open_async`].
    pub open: Option<OpenCallback>,
    /// Completes [`CkptService::synchronize_async`].
    pub synchronize: Option<SynchronizeCallback>,
}

/// `ClDispatchFlagsT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum DispatchFlags {
    /// `CL_DISPATCH_ONE`: run at most one queued callback.
    One = 1,
    /// `CL_DISPATCH_ALL`: run every callback queued, then return.
    All = 2,
    /// `CL_DISPATCH_BLOCKING`: run callbacks as they come until
    /// [`CkptService::finalize`].
    Blocking = 3,
}

/// A checkpoint service handle with callbacks (`ClCkptSvcHdlT` after
/// `clCkptInitialize`). Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct CkptService {
    inner: Arc<ServiceInner>,
}

struct ServiceInner {
    client: Client,
    /// Fixed at initialize, like the C callbacks structure; read without the
    /// callback lock so a callback may start another asynchronous call.
    has_open: bool,
    has_synchronize: bool,
    callbacks: Mutex<Callbacks>,
    notification_callbacks: Mutex<HashMap<Handle, NotificationCallback>>,
    queue: Arc<Queue>,
    runtime: tokio::runtime::Handle,
    /// Notification forwarders, by the handle they serve.
    forwarders: Mutex<Vec<(Handle, tokio::task::AbortHandle)>>,
}

/// A completed call or a notification, waiting for its callback.
enum Queued {
    Open(Invocation, Result<Checkpoint, ClientError>),
    Synchronize(Handle, Invocation, Result<(), ClientError>),
    Notification(Handle, Notification),
}

impl Queued {
    /// The handle whose close cancels this callback, if any.
    fn handle(&self) -> Option<Handle> {
        match self {
            Queued::Open(..) => None,
            Queued::Synchronize(handle, ..) | Queued::Notification(handle, _) => Some(*handle),
        }
    }
}

struct Queue {
    state: Mutex<QueueState>,
    /// Woken whenever something is queued and at finalize.
    ready: Notify,
    /// One permit per queued item; closed at finalize.
    slots: Arc<Semaphore>,
}

#[derive(Default)]
struct QueueState {
    items: VecDeque<(Queued, OwnedSemaphorePermit)>,
    finalized: bool,
    /// Background tasks still running per handle (SynchronizeAsync calls,
    /// notification forwarders); see [`HandleTask`].
    tasks: HashMap<Handle, usize>,
    /// Handles closed while tasks for them still ran: whatever those tasks
    /// queue is dropped. Bounded by `tasks`: a handle leaves when its last
    /// task ends.
    closed: HashSet<Handle>,
}

/// Counts one background task for a handle while it lives.
struct HandleTask {
    queue: Arc<Queue>,
    handle: Handle,
}

impl HandleTask {
    fn start(queue: &Arc<Queue>, handle: Handle) -> HandleTask {
        *lock(&queue.state).tasks.entry(handle).or_insert(0) += 1;
        HandleTask {
            queue: queue.clone(),
            handle,
        }
    }
}

impl Drop for HandleTask {
    fn drop(&mut self) {
        let mut state = lock(&self.queue.state);
        let last = match state.tasks.get_mut(&self.handle) {
            Some(count) => {
                *count = count.saturating_sub(1);
                *count == 0
            }
            None => false,
        };
        if last {
            state.tasks.remove(&self.handle);
            state.closed.remove(&self.handle);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Queue {
    /// Queues `item`, waiting for a free slot. False once finalized or once
    /// the item's handle is closed (the item is dropped).
    async fn push(&self, item: Queued) -> bool {
        let Ok(slot) = self.slots.clone().acquire_owned().await else {
            return false;
        };
        {
            let mut state = lock(&self.state);
            if state.finalized {
                return false;
            }
            if item.handle().is_some_and(|h| state.closed.contains(&h)) {
                drop(state);
                drop(item);
                return false;
            }
            state.items.push_back((item, slot));
        }
        self.ready.notify_waiters();
        true
    }

    /// Drops every queued callback of `handle`, and whatever its running
    /// tasks queue later.
    fn cancel_handle(&self, handle: Handle) {
        let dropped: VecDeque<(Queued, OwnedSemaphorePermit)> = {
            let mut state = lock(&self.state);
            if state.tasks.contains_key(&handle) {
                state.closed.insert(handle);
            }
            let (dropped, kept) = std::mem::take(&mut state.items)
                .into_iter()
                .partition(|(item, _)| item.handle() == Some(handle));
            state.items = kept;
            dropped
        };
        if !dropped.is_empty() {
            tracing::debug!(
                handle,
                dropped = dropped.len(),
                "handle closed: dropping its callbacks"
            );
        }
    }

    fn pop(&self) -> Option<Queued> {
        lock(&self.state)
            .items
            .pop_front()
            .map(|(item, _slot)| item)
    }

    fn len(&self) -> usize {
        lock(&self.state).items.len()
    }

    fn finalized(&self) -> bool {
        lock(&self.state).finalized
    }

    /// Returns once something is queued or the service is finalized.
    async fn wait_ready(&self) {
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            // Registered before the check, so a push between the check and
            // the await still wakes us.
            notified.as_mut().enable();
            {
                let state = lock(&self.state);
                if !state.items.is_empty() || state.finalized {
                    return;
                }
            }
            notified.await;
        }
    }

    fn finalize(&self) {
        let dropped = {
            let mut state = lock(&self.state);
            state.finalized = true;
            std::mem::take(&mut state.items)
        };
        self.slots.close();
        self.ready.notify_waiters();
        // Dropped outside the lock: an open checkpoint in a completion is
        // just a value; the server closes its handle at Finalize.
        drop(dropped);
    }
}

/// Ready when callbacks are queued (`clCkptSelectionObjectGet`); the async
/// counterpart of polling the C selection object's file descriptor.
#[derive(Clone)]
pub struct SelectionObject {
    queue: Arc<Queue>,
}

impl SelectionObject {
    /// Waits until at least one callback is queued, or the service is finalized.
    pub async fn ready(&self) {
        self.queue.wait_ready().await;
    }

    /// How many callbacks are queued now.
    pub fn pending(&self) -> usize {
        self.queue.len()
    }
}

impl CkptService {
    /// Connects, negotiates `version` and registers `callbacks`
    /// (clCkptInitialize). [`CkptService::version`] is the version granted.
    ///
    /// # Errors
    /// As [`Client::connect_with_version`].
    pub async fn initialize(
        addr: &str,
        callbacks: Callbacks,
        version: ApiVersion,
    ) -> Result<CkptService, ClientError> {
        let (client, _granted) = Client::connect_with_version(addr, version).await?;
        let inner = Arc::new(ServiceInner {
            client,
            has_open: callbacks.open.is_some(),
            has_synchronize: callbacks.synchronize.is_some(),
            callbacks: Mutex::new(callbacks),
            notification_callbacks: Mutex::new(HashMap::new()),
            queue: Arc::new(Queue {
                state: Mutex::new(QueueState::default()),
                ready: Notify::new(),
                slots: Arc::new(Semaphore::new(CALLBACKS_QUEUED_MAX)),
            }),
            runtime: tokio::runtime::Handle::current(),
            forwarders: Mutex::new(Vec::new()),
        });
        let observer: Weak<ServiceInner> = Arc::downgrade(&inner);
        inner.client.observe_closes(observer);
        Ok(CkptService { inner })
    }

    /// The API version the server granted.
    pub fn version(&self) -> ApiVersion {
        self.inner.client.version()
    }

    /// The connection, for the synchronous calls (clCkptCheckpointOpen,
    /// clCkptCheckpointDelete, ...).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    fn check_open(&self) -> Result<(), ClientError> {
        if self.inner.queue.finalized() {
            return Err(ClientError::new(
                ErrorCode::InvalidHandle,
                "the checkpoint service was finalized",
            ));
        }
        Ok(())
    }

    /// Starts opening a checkpoint; the open callback gets `invocation` and
    /// the outcome at a later [`CkptService::dispatch`]
    /// (clCkptCheckpointOpenAsync).
    ///
    /// # Errors
    /// `NO_CALLBACK` when initialize had no open callback; `INVALID_HANDLE`
    /// after finalize; the parameter errors of [`Client::open`] that need no
    /// server (`BAD_FLAG`, `INVALID_PARAMETER`, `NAME_TOO_LONG`, see
    /// [`check_open_parameters`]). Everything else reaches the callback.
    pub fn open_async(
        &self,
        invocation: Invocation,
        name: &CheckpointName,
        attributes: Option<CreationAttributes>,
        flags: OpenFlags,
    ) -> Result<(), ClientError> {
        self.check_open()?;
        if !self.inner.has_open {
            return Err(ClientError::new(
                ErrorCode::NoCallback,
                "initialize was given no open callback",
            ));
        }
        check_open_parameters(name, attributes.as_ref(), flags)?;
        let client = self.inner.client.clone();
        let queue = self.inner.queue.clone();
        let name = name.clone();
        self.inner.runtime.spawn(async move {
            let result = client.open(&name, attributes, flags).await;
            queue.push(Queued::Open(invocation, result)).await;
        });
        Ok(())
    }

    /// Starts synchronizing `checkpoint`'s replicas; the synchronize callback
    /// gets `invocation` and the outcome at a later dispatch
    /// (clCkptCheckpointSynchronizeAsync).
    ///
    /// # Errors
    /// `NO_CALLBACK` when initialize had no synchronize callback;
    /// `INVALID_HANDLE` after finalize.
    pub fn synchronize_async(
        &self,
        invocation: Invocation,
        checkpoint: &Checkpoint,
    ) -> Result<(), ClientError> {
        self.check_open()?;
        if !self.inner.has_synchronize {
            return Err(ClientError::new(
                ErrorCode::NoCallback,
                "initialize was given no synchronize callback",
            ));
        }
        let checkpoint = checkpoint.alias();
        let handle = checkpoint.handle();
        let queue = self.inner.queue.clone();
        // Counted before the spawn, so a close right after this call
        // already knows the task is out there.
        let task = HandleTask::start(&queue, handle);
        self.inner.runtime.spawn(async move {
            let result = checkpoint.synchronize().await;
            queue
                .push(Queued::Synchronize(handle, invocation, result))
                .await;
            drop(task);
        });
        Ok(())
    }

    /// Subscribes to `checkpoint`'s updates; `callback` gets each one at a
    /// later dispatch, in log order (clCkptImmediateConsumptionRegister).
    /// Registering again for the same handle replaces the callback.
    ///
    /// # Errors
    /// `INVALID_HANDLE` after finalize; the server's answer to the register request.
    pub async fn immediate_consumption_register(
        &self,
        checkpoint: &Checkpoint,
        callback: NotificationCallback,
    ) -> Result<(), ClientError> {
        self.check_open()?;
        let handle = checkpoint.handle();
        let mut subscription = checkpoint.subscribe(None).await?;
        lock(&self.inner.notification_callbacks).insert(handle, callback);
        let checkpoint = checkpoint.alias();
        let queue = self.inner.queue.clone();
        let task = HandleTask::start(&queue, handle);
        let forwarder = self.inner.runtime.spawn(async move {
            let _task = task;
            loop {
                while let Some(notification) = subscription.next().await {
                    if !queue.push(Queued::Notification(handle, notification)).await {
                        return;
                    }
                }
                if !subscription.overflowed() {
                    return;
                }
                // Fell behind: pick up again right after the last update queued.
                let resume_after = subscription.resume_point();
                match checkpoint.subscribe(resume_after).await {
                    Ok(next) => subscription = next,
                    Err(error) => {
                        tracing::warn!(handle, %error, "cannot resume a notification subscription");
                        return;
                    }
                }
            }
        });
        let mut forwarders = lock(&self.inner.forwarders);
        forwarders.retain(|(_, task)| !task.is_finished());
        forwarders.push((handle, forwarder.abort_handle()));
        Ok(())
    }

    /// What becomes ready when callbacks are queued (clCkptSelectionObjectGet).
    pub fn selection_object(&self) -> SelectionObject {
        SelectionObject {
            queue: self.inner.queue.clone(),
        }
    }

    /// Runs queued callbacks on the caller's task (clCkptDispatch); returns
    /// how many ran. `One` runs at most one, `All` every one queued, and
    /// `Blocking` keeps waiting for more until [`CkptService::finalize`].
    ///
    /// # Errors
    /// `INVALID_HANDLE` when called after finalize.
    pub async fn dispatch(&self, flags: DispatchFlags) -> Result<u32, ClientError> {
        self.check_open()?;
        let mut ran = 0u32;
        match flags {
            DispatchFlags::One => {
                if let Some(item) = self.inner.queue.pop() {
                    self.run(item);
                    ran += 1;
                }
            }
            DispatchFlags::All => {
                while let Some(item) = self.inner.queue.pop() {
                    self.run(item);
                    ran = ran.saturating_add(1);
                }
            }
            DispatchFlags::Blocking => loop {
                while let Some(item) = self.inner.queue.pop() {
                    self.run(item);
                    ran = ran.saturating_add(1);
                }
                if self.inner.queue.finalized() {
                    break;
                }
                self.inner.queue.wait_ready().await;
            },
        }
        Ok(ran)
    }

    fn run(&self, item: Queued) {
        match item {
            Queued::Open(invocation, result) => {
                if let Some(callback) = lock(&self.inner.callbacks).open.as_mut() {
                    callback(invocation, result);
                }
            }
            Queued::Synchronize(_handle, invocation, result) => {
                if let Some(callback) = lock(&self.inner.callbacks).synchronize.as_mut() {
                    callback(invocation, result);
                }
            }
            Queued::Notification(handle, notification) => {
                match lock(&self.inner.notification_callbacks).get_mut(&handle) {
                    Some(callback) => callback(notification),
                    None => tracing::debug!(handle, "notification without a callback"),
                }
            }
        }
    }

    /// Cancels every queued callback, stops the subscriptions, ends a
    /// blocking [`CkptService::dispatch`], closes every handle and the
    /// connection (clCkptFinalize).
    ///
    /// # Errors
    /// `INVALID_HANDLE` when already finalized; the connection's
    /// [`Client::finalize`] error (everything is released anyway).
    pub async fn finalize(&self) -> Result<(), ClientError> {
        self.check_open()?;
        self.inner.queue.finalize();
        for (_, forwarder) in lock(&self.inner.forwarders).drain(..) {
            forwarder.abort();
        }
        lock(&self.inner.notification_callbacks).clear();
        self.inner.client.finalize().await
    }
}

impl HandleCloseObserver for ServiceInner {
    fn handle_closing(&self, handle: Handle) {
        self.queue.cancel_handle(handle);
        let mut forwarders = lock(&self.forwarders);
        forwarders.retain(|(served, forwarder)| {
            if *served == handle {
                forwarder.abort();
            }
            *served != handle && !forwarder.is_finished()
        });
        drop(forwarders);
        lock(&self.notification_callbacks).remove(&handle);
    }
}

/// The checks of clCkptCheckpointOpen that need no server, in the server's
/// order (DESIGN.md §2 "names", "create"): the name's length, the open
/// flags, CREATE with attributes and only with them, the attributes on their
/// own. What needs the checkpoint (does it exist, with which attributes) is
/// left to the server.
///
/// # Errors
/// `INVALID_PARAMETER` / `NAME_TOO_LONG` for the name, `BAD_FLAG` for open or
/// creation flags, `INVALID_PARAMETER` for attributes.
pub fn check_open_parameters(
    name: &CheckpointName,
    attributes: Option<&CreationAttributes>,
    flags: OpenFlags,
) -> Result<(), ClientError> {
    name.validate()?;
    flags.validate()?;
    match (flags.contains(OpenFlags::CREATE), attributes) {
        (true, Some(attributes)) => attributes.validate()?,
        (true, None) => {
            return Err(ClientError::new(
                ErrorCode::InvalidParameter,
                "CL_CKPT_CHECKPOINT_CREATE needs creation attributes",
            ))
        }
        (false, Some(_)) => {
            return Err(ClientError::new(
                ErrorCode::InvalidParameter,
                "creation attributes are given without CL_CKPT_CHECKPOINT_CREATE",
            ))
        }
        (false, None) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use ckpt_proto::wire::{Change, Notification, Reply, Request, API_VERSION};
    use ckpt_proto::{CheckpointName, CkptError, CreationAttributes, ErrorCode, OpenFlags};

    use super::*;
    use crate::testing::{hello_reply, FakeServer};

    type Log = Arc<Mutex<Vec<String>>>;

    fn logging_callbacks(log: &Log) -> Callbacks {
        let open_log = log.clone();
        let sync_log = log.clone();
        Callbacks {
            open: Some(Box::new(
                move |invocation, result: Result<Checkpoint, ClientError>| {
                    let outcome = match result {
                        Ok(checkpoint) => format!("handle {}", checkpoint.handle()),
                        Err(error) => error.code.cl_name().to_string(),
                    };
                    open_log
                        .lock()
                        .unwrap()
                        .push(format!("open {invocation} {outcome}"));
                },
            )),
            synchronize: Some(Box::new(
                move |invocation, result: Result<(), ClientError>| {
                    let outcome =
                        result.map_or_else(|e| e.code.cl_name().to_string(), |()| "ok".to_string());
                    sync_log
                        .lock()
                        .unwrap()
                        .push(format!("sync {invocation} {outcome}"));
                },
            )),
        }
    }

    #[tokio::test]
    async fn completions_wait_for_dispatch() {
        let server = FakeServer::start().await;
        let addr = server.addr();
        let script = tokio::spawn(async move {
            let mut conn = server.accept(hello_reply(16)).await;
            let (id, request) = conn.recv_request().await;
            assert!(matches!(request, Request::Open { .. }));
            conn.respond(
                id,
                Ok(Reply::Opened {
                    handle: 3,
                    created: true,
                }),
            )
            .await;
            // The two asynchronous calls run on their own tasks: any order.
            for _ in 0..2 {
                let (id, request) = conn.recv_request().await;
                let response = match request {
                    Request::Open { .. } => {
                        Err(CkptError::new(ErrorCode::NotExist, "no such checkpoint"))
                    }
                    Request::Synchronize { handle: 3 } => Ok(Reply::Done),
                    other => panic!("unexpected {other:?}"),
                };
                conn.respond(id, response).await;
            }
            let (id, request) = conn.recv_request().await;
            assert_eq!(request, Request::Finalize);
            conn.respond(id, Ok(Reply::Done)).await;
            conn
        });
        let log: Log = Arc::default();
        let service = CkptService::initialize(&addr, logging_callbacks(&log), API_VERSION)
            .await
            .unwrap();
        let selection = service.selection_object();
        let name = CheckpointName::new("a").unwrap();
        let checkpoint = service
            .client()
            .open(&name, None, OpenFlags::READ)
            .await
            .unwrap();
        service
            .open_async(10, &name, None, OpenFlags::READ)
            .unwrap();
        service.synchronize_async(11, &checkpoint).unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            while selection.pending() < 2 {
                selection.ready().await;
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        // Queued, not yet run: callbacks only run inside dispatch.
        assert!(log.lock().unwrap().is_empty());
        assert_eq!(service.dispatch(DispatchFlags::One).await.unwrap(), 1);
        assert_eq!(log.lock().unwrap().len(), 1);
        assert_eq!(service.dispatch(DispatchFlags::All).await.unwrap(), 1);
        let mut entries = log.lock().unwrap().clone();
        entries.sort();
        assert_eq!(entries, ["open 10 CL_ERR_NOT_EXIST", "sync 11 ok"]);
        assert_eq!(service.dispatch(DispatchFlags::All).await.unwrap(), 0);
        service.finalize().await.unwrap();
        assert_eq!(
            service.dispatch(DispatchFlags::All).await.unwrap_err().code,
            ErrorCode::InvalidHandle
        );
        drop(script.await.unwrap());
    }

    #[tokio::test]
    async fn close_drops_queued_and_running_callbacks_of_its_handle() {
        let server = FakeServer::start().await;
        let addr = server.addr();
        let (answer_late_tx, answer_late_rx) = tokio::sync::oneshot::channel::<()>();
        let script = tokio::spawn(async move {
            let mut conn = server.accept(hello_reply(16)).await;
            for handle in [3, 4] {
                let (id, _) = conn.recv_request().await;
                conn.respond(
                    id,
                    Ok(Reply::Opened {
                        handle,
                        created: false,
                    }),
                )
                .await;
            }
            // Two synchronizes of handle 3 and one of handle 4, in any order.
            let mut held = None;
            for _ in 0..3 {
                let (id, request) = conn.recv_request().await;
                match request {
                    Request::Synchronize { handle: 3 } if held.is_none() => held = Some(id),
                    Request::Synchronize { .. } => conn.respond(id, Ok(Reply::Done)).await,
                    other => panic!("unexpected {other:?}"),
                }
            }
            let (id, request) = conn.recv_request().await;
            assert_eq!(request, Request::Close { handle: 3 });
            conn.respond(id, Ok(Reply::Done)).await;
            // Answered only after the close: completes, must not call back.
            answer_late_rx.await.unwrap();
            conn.respond(held.unwrap(), Ok(Reply::Done)).await;
            conn
        });
        let log: Log = Arc::default();
        let service = CkptService::initialize(&addr, logging_callbacks(&log), API_VERSION)
            .await
            .unwrap();
        let name = CheckpointName::new("c").unwrap();
        let closing = service
            .client()
            .open(&name, None, OpenFlags::READ | OpenFlags::WRITE)
            .await
            .unwrap();
        let other = service
            .client()
            .open(&name, None, OpenFlags::READ | OpenFlags::WRITE)
            .await
            .unwrap();
        service.synchronize_async(1, &closing).unwrap();
        service.synchronize_async(2, &closing).unwrap();
        service.synchronize_async(3, &other).unwrap();
        let selection = service.selection_object();
        tokio::time::timeout(Duration::from_secs(5), async {
            while selection.pending() < 2 {
                selection.ready().await;
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        closing.close().await.unwrap();
        assert_eq!(selection.pending(), 1, "handle 3's completion is dropped");
        answer_late_tx.send(()).unwrap();
        // Once the late call's task has ended, nothing of handle 3 is left:
        // neither a callback nor the bookkeeping of its close.
        tokio::time::timeout(Duration::from_secs(5), async {
            while !lock(&service.inner.queue.state).tasks.is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
        assert!(lock(&service.inner.queue.state).closed.is_empty());
        assert_eq!(service.dispatch(DispatchFlags::All).await.unwrap(), 1);
        assert_eq!(*log.lock().unwrap(), ["sync 3 ok"]);
        drop(script.await.unwrap());
    }

    #[tokio::test]
    async fn open_async_refuses_bad_parameters_at_the_call() {
        let server = FakeServer::start().await;
        let addr = server.addr();
        let script = tokio::spawn(async move { server.accept(hello_reply(16)).await });
        let log: Log = Arc::default();
        let service = CkptService::initialize(&addr, logging_callbacks(&log), API_VERSION)
            .await
            .unwrap();
        let name = CheckpointName::new("a").unwrap();
        let create = OpenFlags::CREATE | OpenFlags::READ;
        let attributes = CreationAttributes {
            creation_flags: ckpt_proto::CreationFlags::WR_ACTIVE_REPLICA,
            checkpoint_size: 10,
            retention_duration_ns: 0,
            max_sections: 1,
            max_section_size: 10,
            max_section_id_size: 0,
        };
        let bad_flags = OpenFlags(OpenFlags::READ.0 | 0x100);
        let cases = [
            (None, bad_flags, ErrorCode::BadFlag),
            (None, create, ErrorCode::InvalidParameter),
            (
                Some(attributes.clone()),
                OpenFlags::READ,
                ErrorCode::InvalidParameter,
            ),
            (
                Some(CreationAttributes {
                    max_sections: 0,
                    ..attributes.clone()
                }),
                create,
                ErrorCode::InvalidParameter,
            ),
        ];
        for (attributes, flags, code) in cases {
            let error = service.open_async(1, &name, attributes, flags).unwrap_err();
            assert_eq!(error.code, code, "{error}");
        }
        // Nothing was sent or queued: the connection saw no request.
        assert_eq!(service.selection_object().pending(), 0);
        let conn = script.await.unwrap();
        drop(conn);
        assert!(log.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn missing_callbacks_are_refused_at_the_call() {
        let server = FakeServer::start().await;
        let addr = server.addr();
        let script = tokio::spawn(async move { server.accept(hello_reply(16)).await });
        let service = CkptService::initialize(&addr, Callbacks::default(), API_VERSION)
            .await
            .unwrap();
        let name = CheckpointName::new("a").unwrap();
        let error = service
            .open_async(1, &name, None, OpenFlags::READ)
            .unwrap_err();
        assert_eq!(error.code, ErrorCode::NoCallback);
        assert_eq!(service.dispatch(DispatchFlags::All).await.unwrap(), 0);
        drop(script.await.unwrap());
    }

    #[tokio::test]
    async fn blocking_dispatch_delivers_notifications_until_finalize() {
        let server = FakeServer::start().await;
        let addr = server.addr();
        let (pushed_tx, pushed_rx) = tokio::sync::oneshot::channel();
        let script = tokio::spawn(async move {
            let mut conn = server.accept(hello_reply(16)).await;
            let (id, _) = conn.recv_request().await;
            conn.respond(
                id,
                Ok(Reply::Opened {
                    handle: 5,
                    created: false,
                }),
            )
            .await;
            // SynchronizeAsync runs on its own task: either may come first.
            for _ in 0..2 {
                let (id, request) = conn.recv_request().await;
                let response = match request {
                    Request::Synchronize { handle: 5 } => Ok(Reply::Done),
                    Request::ImmediateConsumptionRegister {
                        handle: 5,
                        resume_after: None,
                    } => Ok(Reply::Registered { next_seq: 1 }),
                    other => panic!("unexpected {other:?}"),
                };
                conn.respond(id, response).await;
            }
            for seq in 1..=3 {
                let change = Change::RetentionSet {
                    retention_duration_ns: seq as i64,
                };
                let name = CheckpointName::new("n").unwrap();
                conn.notify(Notification::Update {
                    handle: 5,
                    name,
                    seq,
                    change,
                })
                .await;
            }
            let _ = pushed_tx.send(());
            let (id, request) = conn.recv_request().await;
            assert_eq!(request, Request::Finalize);
            conn.respond(id, Ok(Reply::Done)).await;
            conn
        });
        let log: Log = Arc::default();
        let service = CkptService::initialize(&addr, logging_callbacks(&log), API_VERSION)
            .await
            .unwrap();
        let name = CheckpointName::new("n").unwrap();
        let checkpoint = service
            .client()
            .open(&name, None, OpenFlags::READ)
            .await
            .unwrap();
        service.synchronize_async(7, &checkpoint).unwrap();
        let seen = log.clone();
        let callback: NotificationCallback = Box::new(move |notification| {
            if let Notification::Update { seq, .. } = notification {
                seen.lock().unwrap().push(format!("update {seq}"));
            }
        });
        service
            .immediate_consumption_register(&checkpoint, callback)
            .await
            .unwrap();

        let dispatcher = {
            let service = service.clone();
            tokio::spawn(async move { service.dispatch(DispatchFlags::Blocking).await })
        };
        pushed_rx.await.unwrap();
        // Wait until the blocking dispatcher has run all four callbacks.
        tokio::time::timeout(Duration::from_secs(5), async {
            while log.lock().unwrap().len() < 4 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
        service.finalize().await.unwrap();
        let ran = tokio::time::timeout(Duration::from_secs(5), dispatcher)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(ran, 4);
        let mut log = log.lock().unwrap().clone();
        let sync = log.iter().position(|entry| entry == "sync 7 ok").unwrap();
        log.remove(sync);
        assert_eq!(log, ["update 1", "update 2", "update 3"]);
        drop(script.await.unwrap());
    }
}
