//! [`Client`]: one TCP connection to a ckpt server, shared by clones.
//!
//! The connection is three parts that never wait on each other:
//!
//! - callers ([`Client::request`]) take an in-flight permit, register a
//!   oneshot under a fresh request id in the shared table, and hand the
//!   encoded frame to the writer;
//! - the **writer task** owns the socket's write half; it feeds every frame
//!   already queued and flushes once, so pipelined requests share syscalls;
//! - the **reader task** owns the read half; it routes each `Response` to the
//!   oneshot registered under its request id (answers may come in any order)
//!   and each `Notification` to the subscription of its handle.
//!
//! When the connection ends for any reason (EOF, `Goodbye`, a frame we cannot
//! decode, a socket error, `finalize`), the reader or writer marks the table
//! closed and fails every pending request with that reason, under the same
//! lock that registration takes. So a request either is registered before the
//! close, and then is failed by it, or sees the close and fails at once: no
//! request can hang on a dead connection.
//!
//! Bounds: requests in flight are limited to the server's `in_flight_max`
//! (the permit is held until the answer arrives, even if the caller gave up);
//! request bodies to the server's `frame_body_bytes_max`; queued frames to
//! [`WRITE_QUEUE_FRAMES_MAX`]; queued notifications per subscription to
//! [`NOTIFICATIONS_QUEUED_MAX`] (a subscriber that falls further behind is cut
//! off rather than stalling every other request on the connection; see
//! [`crate::Subscription::overflowed`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use ckpt_proto::wire::{
    ApiVersion, CheckpointInfo, Frame, FrameCodec, FrameKind, Goodbye, Handle, Hello, HelloReply,
    Notification, Reply, Request, Response, API_VERSION,
};
use ckpt_proto::{CheckpointName, CkptError, CreationAttributes, ErrorCode, OpenFlags};
use futures::{SinkExt, StreamExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::checkpoint::Checkpoint;
use crate::error::ClientError;

/// How long [`Client::connect`] waits for the TCP connection.
pub const CONNECT_TIMEOUT_MS: u64 = 10_000;
/// How long [`Client::connect`] waits for the server's `HelloReply`.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Frames waiting for the writer task; a caller beyond it waits.
pub const WRITE_QUEUE_FRAMES_MAX: usize = 1024;
/// Frames the writer feeds before it flushes, however many are queued.
pub const WRITE_BATCH_FRAMES_MAX: usize = 256;
/// Notifications queued for one subscription before it is cut off.
pub const NOTIFICATIONS_QUEUED_MAX: usize = 65_536;

/// `ClVersionT` as text: release code, major, minor (`B.1.1`).
pub fn version_string(version: ApiVersion) -> String {
    format!(
        "{}.{}.{}",
        char::from(version.release_code),
        version.major,
        version.minor
    )
}

/// A connection to a ckpt server (`ClCkptSvcHdlT`). Cheap to clone: clones
/// share the connection, and it closes (with a `Goodbye`) when the last
/// clone, [`Checkpoint`], iterator and subscription is dropped.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("version", &version_string(self.inner.version))
            .field("in_flight_max", &self.inner.in_flight_max)
            .finish_non_exhaustive()
    }
}

struct Inner {
    shared: Arc<Shared>,
    outgoing: mpsc::Sender<Outgoing>,
    in_flight: Arc<Semaphore>,
    /// Request ids start at 1: 0 marks pushed frames.
    next_request_id: AtomicU64,
    next_subscription_id: AtomicU64,
    version: ApiVersion,
    frame_body_bytes_max: u32,
    in_flight_max: u32,
    reader: tokio::task::AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Say goodbye if the writer has room; it then closes the socket. If it
        // has none, dropping our sender closes the channel and the writer
        // closes the socket after the queued frames anyway.
        let goodbye = goodbye_frame("the client was dropped");
        if let Some(goodbye) = goodbye {
            let _ = self.outgoing.try_send(Outgoing::Close(Some(goodbye)));
        }
        self.reader.abort();
    }
}

/// What the writer task is asked to do.
enum Outgoing {
    /// Send a frame.
    Frame(Frame),
    /// Send this frame if any (a `Goodbye`), then close the write half.
    Close(Option<Frame>),
}

fn goodbye_frame(why: &str) -> Option<Frame> {
    // The protocol has no "no error" code; NO_OP says "nothing wrong, done".
    let goodbye = Goodbye {
        error: CkptError::new(ErrorCode::NoOp, why),
    };
    Frame::new(FrameKind::Goodbye, 0, &goodbye).ok()
}

/// State shared by callers, the reader and the writer.
struct Shared {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Why the connection ended; once set, never cleared.
    closed: Option<ClientError>,
    pending: HashMap<u64, Pending>,
    subscriptions: HashMap<Handle, SubscriptionSender>,
    /// Told of every handle being closed (the dispatch layers on this
    /// connection); dead ones are pruned when the next one registers.
    close_observers: Vec<Weak<dyn HandleCloseObserver>>,
}

/// Something holding work for handles of a connection (the dispatch layer's
/// queued callbacks), told when one is being closed so it can drop that work.
pub(crate) trait HandleCloseObserver: Send + Sync {
    /// `handle` is being closed: nothing queued for it may run any more.
    fn handle_closing(&self, handle: Handle);
}

struct Pending {
    reply: oneshot::Sender<Result<Reply, ClientError>>,
    /// Released when the answer arrives (or the connection dies), so the
    /// server never sees more than `in_flight_max` of our requests.
    _permit: OwnedSemaphorePermit,
}

/// The reader's end of one subscription.
struct SubscriptionSender {
    id: u64,
    tx: mpsc::Sender<Notification>,
    overflowed: Arc<AtomicBool>,
}

/// What [`Client::add_subscription`] hands to a new subscription.
pub(crate) struct SubscriptionReceiver {
    pub(crate) id: u64,
    pub(crate) rx: mpsc::Receiver<Notification>,
    pub(crate) overflowed: Arc<AtomicBool>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves only maps behind; keep going.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn closed(&self) -> Option<ClientError> {
        self.lock().closed.clone()
    }

    /// Marks the connection closed and fails everything waiting on it. The
    /// first reason wins: later ones are consequences.
    fn fail_all(&self, reason: ClientError) {
        let (pending, reason) = {
            let mut state = self.lock();
            let reason = state.closed.get_or_insert(reason).clone();
            state.subscriptions.clear();
            (std::mem::take(&mut state.pending), reason)
        };
        if !pending.is_empty() {
            tracing::debug!(pending = pending.len(), %reason, "failing pending requests");
        }
        for (_, waiter) in pending {
            let _ = waiter.reply.send(Err(reason.clone()));
        }
    }

    fn complete(&self, frame: &Frame) {
        let response = match frame.decode::<Response>() {
            Ok(response) => response.map_err(ClientError::from),
            Err(error) => Err(ClientError::from(error)),
        };
        let waiter = self.lock().pending.remove(&frame.request_id);
        match waiter {
            Some(waiter) => {
                let _ = waiter.reply.send(response);
            }
            None => tracing::warn!(
                request_id = frame.request_id,
                "response to a request id we are not waiting for"
            ),
        }
    }

    fn route_notification(&self, frame: &Frame) {
        let notification = match frame.decode::<Notification>() {
            Ok(notification) => notification,
            Err(error) => {
                tracing::warn!(%error, "dropping a malformed notification");
                return;
            }
        };
        let handle = match &notification {
            Notification::Update { handle, .. } | Notification::Resync { handle, .. } => *handle,
        };
        let mut state = self.lock();
        let Some(subscription) = state.subscriptions.get(&handle) else {
            tracing::debug!(handle, "notification for a handle without a subscription");
            return;
        };
        match subscription.tx.try_send(notification) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    handle,
                    queued = NOTIFICATIONS_QUEUED_MAX,
                    "subscriber fell behind; cutting it off (it can resume from its last sequence number)"
                );
                subscription.overflowed.store(true, Ordering::Release);
                state.subscriptions.remove(&handle);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                state.subscriptions.remove(&handle);
            }
        }
    }
}

impl Client {
    /// Connects and negotiates [`API_VERSION`] (clCkptInitialize).
    ///
    /// # Errors
    /// `MESSAGE_ERROR` when the server cannot be reached or does not answer
    /// the handshake in time; the server's code (`VERSION_MISMATCH`) when it
    /// refuses the version.
    pub async fn connect(addr: &str) -> Result<Client, ClientError> {
        Ok(Client::connect_with_version(addr, API_VERSION).await?.0)
    }

    /// Connects asking for `version`; returns the client and the version the
    /// server granted (the INOUT `version` of clCkptInitialize).
    ///
    /// # Errors
    /// As [`Client::connect`]; a `VERSION_MISMATCH` error carries the version
    /// the server supports in [`ClientError::supported_version`] (and names
    /// it in its message).
    pub async fn connect_with_version(
        addr: &str,
        version: ApiVersion,
    ) -> Result<(Client, ApiVersion), ClientError> {
        let stream = tokio::time::timeout(
            Duration::from_millis(CONNECT_TIMEOUT_MS),
            TcpStream::connect(addr),
        )
        .await
        .map_err(|_| ClientError::connection_lost(format!("connecting to {addr} timed out")))?
        .map_err(|e| ClientError::connection_lost(format!("cannot connect to {addr}: {e}")))?;
        // Requests are small and latency-bound; the writer batches on its own.
        let _ = stream.set_nodelay(true);
        let (read_half, write_half) = stream.into_split();
        let mut reader = FramedRead::new(read_half, FrameCodec::default());
        let mut writer = FramedWrite::new(write_half, FrameCodec::default());

        let hello = Hello {
            version,
            client_name: format!(
                "ckpt-client {} pid {}",
                env!("CARGO_PKG_VERSION"),
                std::process::id()
            ),
        };
        let frame = Frame::new(FrameKind::Hello, 0, &hello)?;
        writer
            .send(frame)
            .await
            .map_err(|e| ClientError::connection_lost(format!("sending Hello to {addr}: {e}")))?;
        let reply =
            tokio::time::timeout(Duration::from_millis(HANDSHAKE_TIMEOUT_MS), reader.next())
                .await
                .map_err(|_| {
                    ClientError::connection_lost(format!(
                        "{addr} did not answer Hello within {HANDSHAKE_TIMEOUT_MS} ms"
                    ))
                })?;
        let frame = match reply {
            None => {
                return Err(ClientError::connection_lost(format!(
                    "{addr} closed the connection during the handshake"
                )))
            }
            Some(Err(e)) => {
                return Err(ClientError::connection_lost(format!(
                    "handshake with {addr}: {e}"
                )))
            }
            Some(Ok(frame)) => frame,
        };
        let reply: HelloReply = match frame.kind {
            FrameKind::HelloReply => frame.decode()?,
            FrameKind::Goodbye => {
                let goodbye: Goodbye = frame.decode()?;
                return Err(ClientError::from(goodbye.error));
            }
            other => {
                return Err(ClientError::connection_lost(format!(
                    "protocol error: {addr} answered Hello with a {other:?} frame"
                )))
            }
        };
        if let Some(error) = reply.error {
            return Err(ClientError {
                code: error.code,
                message: format!(
                    "asked for {}, the server supports {} ({})",
                    version_string(version),
                    version_string(reply.version),
                    error.detail
                ),
                index: error.index,
                supported_version: Some(reply.version),
            });
        }

        let in_flight_max = reply.in_flight_max.max(1);
        let permits = usize::try_from(in_flight_max)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
        });
        let (outgoing, outgoing_rx) = mpsc::channel(WRITE_QUEUE_FRAMES_MAX);
        tokio::spawn(write_loop(writer, outgoing_rx, shared.clone()));
        let reader =
            tokio::spawn(read_loop(reader, shared.clone(), outgoing.clone())).abort_handle();
        tracing::debug!(addr, version = %version_string(reply.version), in_flight_max, "connected");
        let inner = Inner {
            shared,
            outgoing,
            in_flight: Arc::new(Semaphore::new(permits)),
            next_request_id: AtomicU64::new(1),
            next_subscription_id: AtomicU64::new(1),
            version: reply.version,
            frame_body_bytes_max: reply.frame_body_bytes_max,
            in_flight_max,
            reader,
        };
        Ok((
            Client {
                inner: Arc::new(inner),
            },
            reply.version,
        ))
    }

    /// The API version the server granted.
    pub fn version(&self) -> ApiVersion {
        self.inner.version
    }

    /// Most requests this connection has in flight at once (the server's bound).
    pub fn in_flight_max(&self) -> u32 {
        self.inner.in_flight_max
    }

    /// Largest request body the server accepts, in bytes.
    pub fn frame_body_bytes_max(&self) -> u32 {
        self.inner.frame_body_bytes_max
    }

    /// Why the connection is closed, or `None` while it is open.
    pub fn closed_reason(&self) -> Option<ClientError> {
        self.inner.shared.closed()
    }

    /// Sends one request and waits for its answer. Many calls may be in
    /// flight at once; beyond the server's `in_flight_max` they wait for a
    /// slot.
    ///
    /// # Errors
    /// The server's error; `TOO_BIG` for a request over the server's frame
    /// bound (not sent); `MESSAGE_ERROR` when the connection ends before the
    /// answer (the request may or may not have been applied).
    pub async fn request(&self, request: Request) -> Result<Reply, ClientError> {
        let answer = self.start(&request).await?;
        match answer.await {
            Ok(result) => result,
            // Only a dead connection drops a waiter without answering it.
            Err(_) => Err(self
                .closed_reason()
                .unwrap_or_else(|| ClientError::connection_lost("connection closed"))),
        }
    }

    /// Registers and queues `request`; the receiver yields its answer.
    async fn start(
        &self,
        request: &Request,
    ) -> Result<oneshot::Receiver<Result<Reply, ClientError>>, ClientError> {
        let inner = &*self.inner;
        // Fail fast rather than wait for a permit on a dead connection.
        if let Some(reason) = inner.shared.closed() {
            return Err(reason);
        }
        let permit = inner
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ClientError::connection_lost("connection closed"))?;
        let request_id = inner.next_request_id.fetch_add(1, Ordering::Relaxed);
        let frame = Frame::new(FrameKind::Request, request_id, request)?;
        if frame.body.len() as u64 > u64::from(inner.frame_body_bytes_max) {
            return Err(ClientError::new(
                ErrorCode::TooBig,
                format!(
                    "request of {} bytes exceeds the server's frame bound of {} bytes",
                    frame.body.len(),
                    inner.frame_body_bytes_max
                ),
            ));
        }
        let (reply, answer) = oneshot::channel();
        {
            let mut state = inner.shared.lock();
            if let Some(reason) = &state.closed {
                return Err(reason.clone());
            }
            state.pending.insert(
                request_id,
                Pending {
                    reply,
                    _permit: permit,
                },
            );
        }
        if inner.outgoing.send(Outgoing::Frame(frame)).await.is_err() {
            inner.shared.lock().pending.remove(&request_id);
            return Err(self
                .closed_reason()
                .unwrap_or_else(|| ClientError::connection_lost("connection closed")));
        }
        Ok(answer)
    }

    /// Registers a notification queue for `handle`, replacing any earlier
    /// one (whose stream then ends). Done before the register request is
    /// sent, so no notification that follows its answer can be missed.
    pub(crate) fn add_subscription(&self, handle: Handle) -> SubscriptionReceiver {
        let id = self
            .inner
            .next_subscription_id
            .fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(NOTIFICATIONS_QUEUED_MAX);
        let overflowed = Arc::new(AtomicBool::new(false));
        let sender = SubscriptionSender {
            id,
            tx,
            overflowed: overflowed.clone(),
        };
        let mut state = self.inner.shared.lock();
        if state.closed.is_none() {
            state.subscriptions.insert(handle, sender);
        }
        SubscriptionReceiver { id, rx, overflowed }
    }

    /// Removes the subscription `id` of `handle` if it is still the current one.
    pub(crate) fn remove_subscription(&self, handle: Handle, id: u64) {
        let mut state = self.inner.shared.lock();
        if state.subscriptions.get(&handle).is_some_and(|s| s.id == id) {
            state.subscriptions.remove(&handle);
        }
    }

    /// Registers `observer` to be told of every handle closed on this
    /// connection from now on.
    pub(crate) fn observe_closes(&self, observer: Weak<dyn HandleCloseObserver>) {
        let mut state = self.inner.shared.lock();
        state
            .close_observers
            .retain(|existing| existing.strong_count() > 0);
        state.close_observers.push(observer);
    }

    /// `handle` is being closed: ends its subscription and tells every
    /// observer, before the Close request goes out, so nothing for the handle
    /// is delivered after [`Checkpoint::close`] starts.
    pub(crate) fn handle_closing(&self, handle: Handle) {
        let observers: Vec<Arc<dyn HandleCloseObserver>> = {
            let mut state = self.inner.shared.lock();
            state.subscriptions.remove(&handle);
            state
                .close_observers
                .iter()
                .filter_map(Weak::upgrade)
                .collect()
        };
        // Outside our lock: observers take their own.
        for observer in observers {
            observer.handle_closing(handle);
        }
    }

    /// Opens (and with `OpenFlags::CREATE` creates) a checkpoint
    /// (clCkptCheckpointOpen).
    ///
    /// # Errors
    /// `NOT_EXIST` without CREATE for a missing name; `ALREADY_EXIST` when it
    /// exists with other attributes; `INVALID_PARAMETER` / `BAD_FLAG` for bad
    /// attributes or flags; connection errors as [`Client::request`].
    pub async fn open(
        &self,
        name: &CheckpointName,
        attributes: Option<CreationAttributes>,
        flags: OpenFlags,
    ) -> Result<Checkpoint, ClientError> {
        let request = Request::Open {
            name: name.clone(),
            attributes,
            flags,
        };
        match self.request(request).await? {
            Reply::Opened { handle, created } => {
                Ok(Checkpoint::new(self.clone(), handle, name.clone(), created))
            }
            other => Err(ClientError::unexpected_reply("Open", &other)),
        }
    }

    /// Deletes a checkpoint's name (clCkptCheckpointDelete). Open handles
    /// keep working on the old instance until their last close.
    ///
    /// # Errors
    /// `NOT_EXIST` for a missing name; connection errors.
    pub async fn delete(&self, name: &CheckpointName) -> Result<(), ClientError> {
        expect_done(
            "Delete",
            self.request(Request::Delete { name: name.clone() }).await?,
        )
    }

    /// Every checkpoint with its status.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn list(&self) -> Result<Vec<CheckpointInfo>, ClientError> {
        match self.request(Request::List).await? {
            Reply::Checkpoints(checkpoints) => Ok(checkpoints),
            other => Err(ClientError::unexpected_reply("List", &other)),
        }
    }

    /// One checkpoint's status, by name, without opening it.
    ///
    /// # Errors
    /// `NOT_EXIST` for a missing name; connection errors.
    pub async fn stat(&self, name: &CheckpointName) -> Result<CheckpointInfo, ClientError> {
        match self.request(Request::Stat { name: name.clone() }).await? {
            Reply::Checkpoint(info) => Ok(info),
            other => Err(ClientError::unexpected_reply("Stat", &other)),
        }
    }

    /// Closes every handle of this connection on the server, then the
    /// connection itself (clCkptFinalize). Every later call on this client,
    /// its clones and its checkpoints fails with `INVALID_HANDLE`.
    ///
    /// # Errors
    /// The server's answer to `Finalize` if it failed, or a connection error;
    /// the connection is closed either way.
    pub async fn finalize(&self) -> Result<(), ClientError> {
        let answer = self.request(Request::Finalize).await;
        self.inner.shared.fail_all(ClientError::new(
            ErrorCode::InvalidHandle,
            "the client was finalized",
        ));
        let goodbye = goodbye_frame("clCkptFinalize");
        let _ = self.inner.outgoing.send(Outgoing::Close(goodbye)).await;
        expect_done("Finalize", answer?)
    }
}

pub(crate) fn expect_done(request: &str, reply: Reply) -> Result<(), ClientError> {
    match reply {
        Reply::Done => Ok(()),
        other => Err(ClientError::unexpected_reply(request, &other)),
    }
}

/// Owns the write half: sends queued frames, flushing once per batch.
async fn write_loop(
    mut sink: FramedWrite<OwnedWriteHalf, FrameCodec>,
    mut outgoing: mpsc::Receiver<Outgoing>,
    shared: Arc<Shared>,
) {
    while let Some(first) = outgoing.recv().await {
        let mut next = Some(first);
        let mut fed = 0;
        while let Some(item) = next.take() {
            match item {
                Outgoing::Frame(frame) => {
                    if let Err(e) = sink.feed(frame).await {
                        shared.fail_all(ClientError::connection_lost(format!(
                            "connection lost while sending: {e}"
                        )));
                        return;
                    }
                }
                Outgoing::Close(goodbye) => {
                    if let Some(goodbye) = goodbye {
                        let _ = sink.feed(goodbye).await;
                    }
                    // Flushes and shuts down the write half; the server then
                    // closes its side and the reader sees EOF.
                    let _ = sink.close().await;
                    return;
                }
            }
            fed += 1;
            if fed < WRITE_BATCH_FRAMES_MAX {
                next = outgoing.try_recv().ok();
            }
        }
        if let Err(e) = sink.flush().await {
            shared.fail_all(ClientError::connection_lost(format!(
                "connection lost while sending: {e}"
            )));
            return;
        }
    }
    // Every sender is gone: nobody can use the connection any more.
    let _ = sink.close().await;
}

/// Owns the read half: routes answers and notifications until the end.
async fn read_loop(
    mut frames: FramedRead<OwnedReadHalf, FrameCodec>,
    shared: Arc<Shared>,
    outgoing: mpsc::Sender<Outgoing>,
) {
    let (reason, goodbye) = loop {
        match frames.next().await {
            None => {
                break (
                    ClientError::connection_lost("the server closed the connection"),
                    None,
                )
            }
            Some(Err(e)) => {
                let reason = ClientError::connection_lost(format!("connection lost: {e}"));
                let goodbye = Frame::new(
                    FrameKind::Goodbye,
                    0,
                    &Goodbye {
                        error: CkptError::new(e.code(), e.to_string()),
                    },
                );
                break (reason, goodbye.ok());
            }
            Some(Ok(frame)) => match frame.kind {
                FrameKind::Response => shared.complete(&frame),
                FrameKind::Notification => shared.route_notification(&frame),
                FrameKind::Goodbye => {
                    let why = match frame.decode::<Goodbye>() {
                        Ok(goodbye) => {
                            format!("{}: {}", goodbye.error.code.cl_name(), goodbye.error.detail)
                        }
                        Err(e) => format!("malformed Goodbye: {}", e.detail),
                    };
                    break (
                        ClientError::connection_lost(format!(
                            "the server closed the connection ({why})"
                        )),
                        None,
                    );
                }
                FrameKind::Hello | FrameKind::HelloReply | FrameKind::Request => {
                    let detail = format!(
                        "protocol error: the server sent a {:?} frame after the handshake",
                        frame.kind
                    );
                    let goodbye = Frame::new(
                        FrameKind::Goodbye,
                        0,
                        &Goodbye {
                            error: CkptError::new(ErrorCode::InvalidBuffer, detail.clone()),
                        },
                    );
                    break (ClientError::connection_lost(detail), goodbye.ok());
                }
            },
        }
    };
    tracing::debug!(%reason, "connection ended");
    shared.fail_all(reason);
    let _ = outgoing.try_send(Outgoing::Close(goodbye));
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ckpt_proto::wire::{Notification, Reply, Request};
    use ckpt_proto::{CheckpointName, CkptError, ErrorCode, OpenFlags, SectionId};
    use futures::StreamExt;

    use super::*;
    use crate::testing::{hello_reply, FakeServer};

    fn name(text: &str) -> CheckpointName {
        CheckpointName::new(text).unwrap()
    }

    #[tokio::test]
    async fn answers_are_routed_by_request_id_in_any_order() {
        let server = FakeServer::start().await;
        let addr = server.addr();
        let script = tokio::spawn(async move {
            let mut conn = server.accept(hello_reply(16)).await;
            let mut requests = Vec::new();
            for _ in 0..3 {
                requests.push(conn.recv_request().await);
            }
            // Answer in reverse order, each with an error naming its request.
            for (id, request) in requests.into_iter().rev() {
                let Request::Delete { name } = request else {
                    panic!("unexpected {request:?}")
                };
                conn.respond(
                    id,
                    Err(CkptError::new(ErrorCode::NotExist, name.to_string())),
                )
                .await;
            }
            conn
        });
        let client = Client::connect(&addr).await.unwrap();
        let (na, nb, nc) = (name("a"), name("b"), name("c"));
        let (a, b, c) = tokio::join!(client.delete(&na), client.delete(&nb), client.delete(&nc));
        for (result, expected) in [(a, "a"), (b, "b"), (c, "c")] {
            let error = result.unwrap_err();
            assert_eq!(error.code, ErrorCode::NotExist);
            assert_eq!(error.message, expected);
        }
        drop(script.await.unwrap());
    }

    #[tokio::test]
    async fn connection_loss_fails_pending_and_later_requests() {
        let server = FakeServer::start().await;
        let addr = server.addr();
        let script = tokio::spawn(async move {
            let mut conn = server.accept(hello_reply(16)).await;
            conn.recv_request().await;
            conn.recv_request().await;
            // Drop the socket without answering.
        });
        let client = Client::connect(&addr).await.unwrap();
        let x = name("x");
        let (a, b) = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(client.list(), client.stat(&x))
        })
        .await
        .expect("pending requests must fail, not hang");
        script.await.unwrap();
        for error in [a.unwrap_err(), b.unwrap_err()] {
            assert_eq!(error.code, ErrorCode::MessageError);
            assert!(error.message.contains("closed the connection"), "{error}");
        }
        let later = client.list().await.unwrap_err();
        assert!(later.is_connection_lost());
        assert!(client.closed_reason().is_some());
    }

    #[tokio::test]
    async fn goodbye_fails_pending_requests_with_its_reason() {
        let server = FakeServer::start().await;
        let addr = server.addr();
        let script = tokio::spawn(async move {
            let mut conn = server.accept(hello_reply(16)).await;
            conn.recv_request().await;
            conn.goodbye(CkptError::new(ErrorCode::TryAgain, "server shutting down"))
                .await;
            conn
        });
        let client = Client::connect(&addr).await.unwrap();
        let error = client.list().await.unwrap_err();
        assert_eq!(error.code, ErrorCode::MessageError);
        assert!(
            error
                .message
                .contains("CL_ERR_TRY_AGAIN: server shutting down"),
            "{error}"
        );
        drop(script.await.unwrap());
    }

    #[tokio::test]
    async fn version_mismatch_names_the_server_version() {
        let server = FakeServer::start().await;
        let addr = server.addr();
        let script = tokio::spawn(async move {
            let mut reply = hello_reply(16);
            reply.error = Some(CkptError::new(
                ErrorCode::VersionMismatch,
                "release code A is not supported",
            ));
            let (hello, conn) = server.accept_raw(reply).await;
            (hello, conn)
        });
        let asked = ApiVersion {
            release_code: b'A',
            major: 1,
            minor: 1,
        };
        let error = Client::connect_with_version(&addr, asked)
            .await
            .unwrap_err();
        let (hello, _conn) = script.await.unwrap();
        assert_eq!(hello.version, asked);
        assert_eq!(error.code, ErrorCode::VersionMismatch);
        assert!(
            error.message.contains("the server supports B.1.1"),
            "{error}"
        );
        assert!(error.message.contains("asked for A.1.1"), "{error}");
        assert_eq!(error.supported_version, Some(API_VERSION));
    }

    #[tokio::test]
    async fn negotiated_version_is_returned() {
        let server = FakeServer::start().await;
        let addr = server.addr();
        let script = tokio::spawn(async move { server.accept(hello_reply(16)).await });
        let asked = ApiVersion {
            release_code: b'B',
            major: 1,
            minor: 0,
        };
        let (client, granted) = Client::connect_with_version(&addr, asked).await.unwrap();
        assert_eq!(granted, API_VERSION);
        assert_eq!(client.version(), API_VERSION);
        assert_eq!(client.in_flight_max(), 16);
        drop(script.await.unwrap());
    }

    #[tokio::test]
    async fn in_flight_requests_are_bounded_by_the_server() {
        let server = FakeServer::start().await;
        let addr = server.addr();
        let client_ready = tokio::sync::oneshot::channel::<()>();
        let script = tokio::spawn(async move {
            let mut conn = server.accept(hello_reply(2)).await;
            let _ = client_ready.1.await;
            let first = conn.recv_request().await;
            let _second = conn.recv_request().await;
            // Five were started; only two may arrive before an answer.
            assert!(
                conn.try_recv_request(Duration::from_millis(200))
                    .await
                    .is_none(),
                "a third request was sent"
            );
            conn.respond(first.0, Ok(Reply::Done)).await;
            let third = conn.recv_request().await;
            assert!(
                conn.try_recv_request(Duration::from_millis(200))
                    .await
                    .is_none(),
                "a fourth request was sent"
            );
            // Answer everything from here on.
            conn.respond(third.0, Ok(Reply::Done)).await;
            conn.respond(_second.0, Ok(Reply::Done)).await;
            for _ in 0..2 {
                let (id, _) = conn.recv_request().await;
                conn.respond(id, Ok(Reply::Done)).await;
            }
            conn
        });
        let client = Client::connect(&addr).await.unwrap();
        let calls: Vec<_> = (0..5)
            .map(|i| {
                let client = client.clone();
                tokio::spawn(async move { client.delete(&name(&format!("n{i}"))).await })
            })
            .collect();
        let _ = client_ready.0.send(());
        for call in calls {
            call.await.unwrap().unwrap();
        }
        drop(script.await.unwrap());
    }

    #[tokio::test]
    async fn oversized_requests_are_refused_locally() {
        let server = FakeServer::start().await;
        let addr = server.addr();
        let script = tokio::spawn(async move {
            let mut reply = hello_reply(16);
            reply.frame_body_bytes_max = 1000;
            let mut conn = server.accept(reply).await;
            // Only the small request after the refused one arrives.
            let (id, request) = conn.recv_request().await;
            assert_eq!(request, Request::List);
            conn.respond(id, Ok(Reply::Checkpoints(Vec::new()))).await;
            conn
        });
        let client = Client::connect(&addr).await.unwrap();
        let big = Request::SectionOverwrite {
            handle: 1,
            section_id: SectionId::DEFAULT,
            data: vec![0; 2000],
        };
        let error = client.request(big).await.unwrap_err();
        assert_eq!(error.code, ErrorCode::TooBig);
        assert!(client.list().await.unwrap().is_empty());
        drop(script.await.unwrap());
    }

    #[tokio::test]
    async fn notifications_reach_the_subscription_of_their_handle() {
        let server = FakeServer::start().await;
        let addr = server.addr();
        let script = tokio::spawn(async move {
            let mut conn = server.accept(hello_reply(16)).await;
            for handle in [7, 8] {
                let (id, _) = conn.recv_request().await;
                conn.respond(
                    id,
                    Ok(Reply::Opened {
                        handle,
                        created: true,
                    }),
                )
                .await;
            }
            let (id, request) = conn.recv_request().await;
            assert_eq!(
                request,
                Request::ImmediateConsumptionRegister {
                    handle: 7,
                    resume_after: Some(4)
                }
            );
            conn.respond(id, Ok(Reply::Registered { next_seq: 5 }))
                .await;
            // Pushed right after the answer: must not be lost.
            for (handle, seq) in [(7, 5), (8, 1), (7, 6)] {
                conn.notify(update(handle, seq)).await;
            }
            conn
        });
        let client = Client::connect(&addr).await.unwrap();
        let flags = OpenFlags::READ;
        let seven = client.open(&name("seven"), None, flags).await.unwrap();
        let _eight = client.open(&name("eight"), None, flags).await.unwrap();
        let mut subscription = seven.subscribe(Some(4)).await.unwrap();
        assert_eq!(subscription.next_seq(), 5);
        let conn = script.await.unwrap();
        let first = subscription.next().await.unwrap();
        let second = subscription.next().await.unwrap();
        assert_eq!((seq_of(&first), seq_of(&second)), (5, 6));
        assert_eq!(subscription.last_seq(), Some(6));
        // The stream ends when the connection does.
        drop(conn);
        let end = tokio::time::timeout(Duration::from_secs(5), subscription.next())
            .await
            .unwrap();
        assert!(end.is_none());
        assert!(!subscription.overflowed());
    }

    fn update(handle: u64, seq: u64) -> Notification {
        Notification::Update {
            handle,
            name: name("n"),
            seq,
            change: ckpt_proto::wire::Change::Deleted,
        }
    }

    fn seq_of(notification: &Notification) -> u64 {
        match notification {
            Notification::Update { seq, .. } => *seq,
            Notification::Resync { next_seq, .. } => *next_seq,
        }
    }

    #[tokio::test]
    async fn finalize_closes_the_connection() {
        let server = FakeServer::start().await;
        let addr = server.addr();
        let script = tokio::spawn(async move {
            let mut conn = server.accept(hello_reply(16)).await;
            let (id, request) = conn.recv_request().await;
            assert_eq!(request, Request::Finalize);
            conn.respond(id, Ok(Reply::Done)).await;
            // Then a Goodbye and the end of the stream.
            let goodbye = conn.recv_goodbye().await;
            assert_eq!(goodbye.error.code, ErrorCode::NoOp);
            assert!(conn.at_eof().await);
        });
        let client = Client::connect(&addr).await.unwrap();
        client.finalize().await.unwrap();
        script.await.unwrap();
        let error = client.list().await.unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidHandle);
    }
}
