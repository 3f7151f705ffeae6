//! [`Client`]: a session with a ckpt cluster over one TCP connection at a
//! time, shared by clones.
//!
//! A connection is three parts that never wait on each other:
//!
//! - callers ([`Client::request`]) take an in-flight permit, register their
//!   request under a fresh request id in the shared table, and hand the
//!   encoded frame to the writer;
//! - the **writer task** owns the socket's write half; it feeds every frame
//!   already queued and flushes once, so pipelined requests share syscalls;
//! - the **reader task** owns the read half; it routes each `Response` to the
//!   request registered under its request id (answers may come in any order)
//!   and each `Notification` to the subscription of its handle.
//!
//! # Reconnecting
//!
//! The client is given a list of nodes. When its connection ends (EOF, a
//! reset, a `Goodbye` such as "shutting down", a frame it cannot decode), it
//! keeps every pending request and connects to the next node of the list
//! (round robin, pausing [`RECONNECT_BACKOFF_FIRST_MS`] doubling up to
//! [`RECONNECT_BACKOFF_MAX_MS`] between attempts), says `Hello` with the same
//! session, reopens every open handle (same name and flags, without CREATE),
//! re-registers every subscription from the last sequence number it
//! delivered, and sends every pending request again with its ORIGINAL
//! request id: the server recognises a write it already applied by
//! `(session, request_id)` and answers with its first outcome. Callers keep
//! their handles: the ids they hold are translated to the new connection's
//! (module `ids`). Iterators and dumps live on one connection and are
//! lost with it: calls on them fail with a message saying so. When no node
//! accepts within [`ClientOptions::reconnect_timeout`], every pending and
//! later request fails with `MESSAGE_ERROR` (connection lost), as a single
//! connection did before.
//!
//! A `TRY_AGAIN` answer (no active replica right now, failover in progress)
//! is retried with the same request id, with the same backoff, for up to
//! [`ClientOptions::try_again_timeout`]; then the caller gets it.
//!
//! When the client is closed for good (finalize, the last clone dropped, or
//! reconnecting gave up), the table is marked closed and every pending
//! request fails with the reason, under the same lock that registration
//! takes. So a request either is registered before the close, and then is
//! failed by it, or sees the close and fails at once: no request can hang.
//!
//! Bounds: requests in flight are limited to the first server's
//! `in_flight_max` (the permit is held until the answer arrives, even if the
//! caller gave up); request bodies to its `frame_body_bytes_max`; queued
//! frames to [`WRITE_QUEUE_FRAMES_MAX`]; queued notifications per
//! subscription to [`NOTIFICATIONS_QUEUED_MAX`] (a subscriber that falls
//! further behind is cut off rather than stalling every other request on the
//! connection; see [`crate::Subscription::overflowed`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use ckpt_proto::wire::{
    ApiVersion, CheckpointInfo, Frame, FrameCodec, FrameKind, Goodbye, Handle, Hello, HelloReply,
    Notification, Reply, Request, Response, API_VERSION,
};
use ckpt_proto::{CheckpointName, CkptError, CreationAttributes, ErrorCode, OpenFlags};
use futures::{SinkExt, StreamExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::checkpoint::Checkpoint;
use crate::error::ClientError;
use crate::ids::{id_of, releases_id, with_id, IdError, IdKind, IdMap};

/// How long [`Client::connect`] waits for the TCP connection to one node.
pub const CONNECT_TIMEOUT_MS: u64 = 10_000;
/// How long [`Client::connect`] waits for the server's `HelloReply`.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Default of [`ClientOptions::reconnect_timeout`] and
/// [`ClientOptions::try_again_timeout`].
pub const RECONNECT_TIMEOUT_MS: u64 = 10_000;
/// First pause between reconnect attempts (and `TRY_AGAIN` retries).
pub const RECONNECT_BACKOFF_FIRST_MS: u64 = 50;
/// Longest pause between reconnect attempts (and `TRY_AGAIN` retries).
pub const RECONNECT_BACKOFF_MAX_MS: u64 = 1_000;
/// How long one reconnect attempt waits for a node's TCP connection and
/// `HelloReply`, so an unreachable node (no reset, just silence) does not
/// use up the whole reconnect timeout before the others are tried.
pub const RECONNECT_ATTEMPT_TIMEOUT_MS: u64 = 2_000;
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

/// How a [`Client`] connects and recovers; build with the setters:
/// `ClientOptions::new().reconnect_timeout(Duration::from_secs(5))`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// How long the client keeps trying to reach a node after its
    /// connection ended before pending requests fail as connection lost.
    /// Zero: no reconnecting; the first connection's end fails everything.
    pub reconnect_timeout: Duration,
    /// How long a request answered `TRY_AGAIN` is retried (same request id)
    /// before the caller gets the `TRY_AGAIN`. Zero: returned at once.
    pub try_again_timeout: Duration,
    /// The API version asked for in `Hello`.
    pub version: ApiVersion,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            reconnect_timeout: Duration::from_millis(RECONNECT_TIMEOUT_MS),
            try_again_timeout: Duration::from_millis(RECONNECT_TIMEOUT_MS),
            version: API_VERSION,
        }
    }
}

impl ClientOptions {
    /// The defaults: reconnect and retry `TRY_AGAIN` for 10 s, [`API_VERSION`].
    pub fn new() -> Self {
        ClientOptions::default()
    }

    /// Sets [`ClientOptions::reconnect_timeout`].
    pub fn reconnect_timeout(mut self, timeout: Duration) -> Self {
        self.reconnect_timeout = timeout;
        self
    }

    /// Sets [`ClientOptions::try_again_timeout`].
    pub fn try_again_timeout(mut self, timeout: Duration) -> Self {
        self.try_again_timeout = timeout;
        self
    }

    /// Sets [`ClientOptions::version`].
    pub fn version(mut self, version: ApiVersion) -> Self {
        self.version = version;
        self
    }
}

/// Splits a node list, `"h1:p1,h2:p2"` (spaces around commas allowed).
///
/// # Errors
/// `INVALID_PARAMETER` for a list without any address.
pub fn parse_nodes(addrs: &str) -> Result<Vec<String>, ClientError> {
    let nodes: Vec<String> = addrs
        .split(',')
        .map(str::trim)
        .filter(|addr| !addr.is_empty())
        .map(str::to_string)
        .collect();
    if nodes.is_empty() {
        return Err(ClientError::new(
            ErrorCode::InvalidParameter,
            format!("no server address in {addrs:?} (expected host:port[,host:port…])"),
        ));
    }
    Ok(nodes)
}

/// A fresh exactly-once session id: random, never 0.
fn new_session() -> u64 {
    loop {
        let session: u64 = rand::random();
        if session != 0 {
            return session;
        }
    }
}

/// A session with ckpt servers (`ClCkptSvcHdlT`). Cheap to clone: clones
/// share it, and it closes (with a `Goodbye`) when the last clone,
/// [`Checkpoint`], iterator and subscription is dropped.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("version", &version_string(self.inner.version))
            .field("in_flight_max", &self.inner.in_flight_max)
            .field("session", &self.inner.shared.session)
            .field("nodes", &self.inner.shared.nodes)
            .finish_non_exhaustive()
    }
}

struct Inner {
    shared: Arc<Shared>,
    in_flight: Arc<Semaphore>,
    next_subscription_id: AtomicU64,
    version: ApiVersion,
    frame_body_bytes_max: u32,
    in_flight_max: u32,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Nobody can use the session any more: stop reconnecting, say
        // goodbye if the writer has room (it then closes the socket; if it
        // has none, it closes the socket when the channel closes anyway).
        let link = self
            .shared
            .close(ClientError::connection_lost("the client was dropped"));
        if let Some(link) = link {
            link.shut(goodbye_frame("the client was dropped"));
        }
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

/// The current connection.
#[derive(Clone)]
struct Link {
    addr: String,
    outgoing: mpsc::Sender<Outgoing>,
    reader: AbortHandle,
    writer: AbortHandle,
}

impl Link {
    /// Closes the connection on purpose, sending `goodbye` first if the
    /// writer has room.
    fn shut(self, goodbye: Option<Frame>) {
        self.reader.abort();
        if self.outgoing.try_send(Outgoing::Close(goodbye)).is_err() {
            self.writer.abort();
        }
    }

    /// Drops a connection that already failed.
    fn abandon(self) {
        self.reader.abort();
        self.writer.abort();
    }
}

/// State shared by callers, the reader, the writer and the reconnector.
struct Shared {
    state: Mutex<State>,
    nodes: Vec<String>,
    session: u64,
    options: ClientOptions,
    /// Request ids start at 1 (0 marks pushed frames) and never restart:
    /// they are the session's request numbers.
    next_request_id: AtomicU64,
}

struct State {
    /// Why the session ended; once set, never cleared.
    closed: Option<ClientError>,
    /// The connection requests go to; `None` while reconnecting.
    link: Option<Link>,
    /// Bumped by every new connection; frames of older ones are ignored.
    generation: u64,
    /// Index in `nodes` of the current (or last) connection.
    node: usize,
    /// Connections made after the first.
    reconnects: u64,
    /// Requests sent (or to send) and not answered, by request id.
    pending: BTreeMap<u64, Pending>,
    handles: IdMap,
    iterators: IdMap,
    dumps: IdMap,
    /// How to reopen each handle opened by name on a new connection.
    reopen: HashMap<Handle, (CheckpointName, OpenFlags)>,
    subscriptions: HashMap<Handle, SubscriptionSender>,
    /// Told of every handle being closed (the dispatch layers on this
    /// client); dead ones are pruned when the next one registers.
    close_observers: Vec<Weak<dyn HandleCloseObserver>>,
}

/// Something holding work for handles of a connection (the dispatch layer's
/// queued callbacks), told when one is being closed so it can drop that work.
pub(crate) trait HandleCloseObserver: Send + Sync {
    /// `handle` is being closed: nothing queued for it may run any more.
    fn handle_closing(&self, handle: Handle);
}

/// What a caller waits for: the answer, and its in-flight permit back (for
/// a retry).
type Answer = (Result<Reply, ClientError>, Option<OwnedSemaphorePermit>);

/// A registered request: where its answer comes, and the frame to send on
/// the current connection (none while reconnecting: the reconnect sends it).
type Submitted = (oneshot::Receiver<Answer>, Option<(Link, Frame)>);

struct Pending {
    /// As the caller wrote it (caller ids), for sending again.
    request: Arc<Request>,
    reply: oneshot::Sender<Answer>,
    /// Held until the answer arrives (or the session dies), so the server
    /// never sees more than `in_flight_max` of our requests.
    permit: Option<OwnedSemaphorePermit>,
}

impl Pending {
    fn fail(self, error: ClientError) {
        let _ = self.reply.send((Err(error), self.permit));
    }
}

/// The reader's end of one subscription.
struct SubscriptionSender {
    id: u64,
    tx: mpsc::Sender<Notification>,
    overflowed: Arc<AtomicBool>,
    /// The server confirmed the registration: a new connection registers it
    /// again from `resume_after`.
    registered: bool,
    /// The last sequence number delivered (or, before the first, the one
    /// before the server's `next_seq`).
    resume_after: Option<u64>,
    delivered_any: bool,
}

/// What [`Client::add_subscription`] hands to a new subscription.
pub(crate) struct SubscriptionReceiver {
    pub(crate) id: u64,
    pub(crate) rx: mpsc::Receiver<Notification>,
    pub(crate) overflowed: Arc<AtomicBool>,
}

fn notification_handle(notification: &mut Notification) -> &mut Handle {
    match notification {
        Notification::Update { handle, .. } | Notification::Resync { handle, .. } => handle,
    }
}

impl State {
    fn new() -> State {
        State {
            closed: None,
            link: None,
            generation: 0,
            node: 0,
            reconnects: 0,
            pending: BTreeMap::new(),
            handles: IdMap::new("handle"),
            iterators: IdMap::new("iterator"),
            dumps: IdMap::new("dump"),
            reopen: HashMap::new(),
            subscriptions: HashMap::new(),
            close_observers: Vec::new(),
        }
    }

    fn map(&mut self, kind: IdKind) -> &mut IdMap {
        match kind {
            IdKind::Handle => &mut self.handles,
            IdKind::Iterator => &mut self.iterators,
            IdKind::Dump => &mut self.dumps,
        }
    }

    /// The server id to put in `request` on the current connection, `None`
    /// when it is sent as written.
    ///
    /// # Errors
    /// Why the id it names cannot be used any more.
    fn outgoing_id(&mut self, request: &Request) -> Result<Option<u64>, IdError> {
        let Some((kind, caller_id)) = id_of(request) else {
            return Ok(None);
        };
        let server_id = self.map(kind).to_server(caller_id)?;
        Ok((server_id != caller_id).then_some(server_id))
    }

    /// Learns from the answer to `request` (new and released ids,
    /// subscriptions confirmed) and turns server ids in `response` into
    /// caller ids.
    fn absorb(&mut self, request: &Request, response: Response) -> Result<Reply, ClientError> {
        if releases_id(request) {
            if let Some((kind, caller_id)) = id_of(request) {
                self.map(kind).remove(caller_id);
                if kind == IdKind::Handle {
                    self.reopen.remove(&caller_id);
                }
            }
        }
        let reply = response?;
        Ok(match (request, reply) {
            (Request::Open { name, flags, .. }, Reply::Opened { handle, created }) => {
                let handle = self.handles.register(handle);
                self.reopen.insert(
                    handle,
                    (name.clone(), OpenFlags(flags.0 & !OpenFlags::CREATE.0)),
                );
                Reply::Opened { handle, created }
            }
            (Request::Restore { .. }, Reply::Opened { handle, created }) => {
                // A restore session cannot be reopened: lost on reconnect.
                let handle = self.handles.register(handle);
                self.reopen.remove(&handle);
                Reply::Opened { handle, created }
            }
            (Request::IterationInitialize { .. }, Reply::Iterator { iterator }) => {
                Reply::Iterator {
                    iterator: self.iterators.register(iterator),
                }
            }
            (Request::DumpBegin { .. }, Reply::Dump { dump, checkpoints }) => Reply::Dump {
                dump: self.dumps.register(dump),
                checkpoints,
            },
            (
                Request::ImmediateConsumptionRegister { handle, .. },
                Reply::Registered { next_seq },
            ) => {
                if let Some(subscription) = self.subscriptions.get_mut(handle) {
                    subscription.registered = true;
                    if !subscription.delivered_any {
                        subscription.resume_after = next_seq.checked_sub(1);
                    }
                }
                Reply::Registered { next_seq }
            }
            (_, reply) => reply,
        })
    }

    /// Delivers a notification (server ids) to its subscription.
    fn route(&mut self, mut notification: Notification) {
        let handle = notification_handle(&mut notification);
        *handle = self.handles.to_caller(*handle);
        let handle = *handle;
        let Some(subscription) = self.subscriptions.get_mut(&handle) else {
            tracing::debug!(handle, "notification for a handle without a subscription");
            return;
        };
        let seen = match &notification {
            Notification::Update { seq, .. } => Some(*seq),
            Notification::Resync { next_seq, .. } => next_seq.checked_sub(1),
        };
        match subscription.tx.try_send(notification) {
            Ok(()) => {
                subscription.resume_after = seen;
                subscription.delivered_any = true;
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    handle,
                    queued = NOTIFICATIONS_QUEUED_MAX,
                    "subscriber fell behind; cutting it off (it can resume from its last sequence number)"
                );
                subscription.overflowed.store(true, Ordering::Release);
                self.subscriptions.remove(&handle);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.subscriptions.remove(&handle);
            }
        }
    }
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

    fn next_request_id(&self) -> u64 {
        self.next_request_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Ends the session for good and fails everything waiting on it. The
    /// first reason wins: later ones are consequences. Returns the
    /// connection, for the caller to close as it sees fit.
    fn close(&self, reason: ClientError) -> Option<Link> {
        let (pending, reason, link) = {
            let mut state = self.lock();
            let reason = state.closed.get_or_insert(reason).clone();
            state.subscriptions.clear();
            (
                std::mem::take(&mut state.pending),
                reason,
                state.link.take(),
            )
        };
        if !pending.is_empty() {
            tracing::debug!(pending = pending.len(), %reason, "failing pending requests");
        }
        for (_, waiter) in pending {
            waiter.fail(reason.clone());
        }
        link
    }

    /// Registers `request` under `request_id` and sends it if connected
    /// (otherwise the reconnector will). `prepared` is its frame with caller
    /// ids, reused when the ids need no translation.
    fn submit(
        &self,
        request_id: u64,
        request: &Arc<Request>,
        permit: OwnedSemaphorePermit,
        prepared: Option<Frame>,
    ) -> Result<Submitted, ClientError> {
        let (reply, answer) = oneshot::channel();
        let (link, server_id) = {
            let mut state = self.lock();
            if let Some(reason) = &state.closed {
                return Err(reason.clone());
            }
            match state.outgoing_id(request) {
                Ok(server_id) => {
                    state.pending.insert(
                        request_id,
                        Pending {
                            request: request.clone(),
                            reply,
                            permit: Some(permit),
                        },
                    );
                    (state.link.clone(), server_id)
                }
                Err(IdError::Lost(why)) if releases_id(request) => {
                    // Releasing what is already gone: done.
                    if let Some((kind, caller_id)) = id_of(request) {
                        state.map(kind).remove(caller_id);
                        if kind == IdKind::Handle {
                            state.reopen.remove(&caller_id);
                        }
                    }
                    tracing::debug!(%why, "released an id lost with an earlier connection");
                    let _ = reply.send((Ok(Reply::Done), Some(permit)));
                    return Ok((answer, None));
                }
                Err(why) => return Err(ClientError::new(ErrorCode::InvalidHandle, why.message())),
            }
        };
        let Some(link) = link else {
            return Ok((answer, None));
        };
        let frame = match (server_id, prepared) {
            (None, Some(frame)) => Ok(frame),
            (None, None) => Frame::new(FrameKind::Request, request_id, &**request),
            (Some(id), _) => Frame::new(FrameKind::Request, request_id, &with_id(request, id)),
        };
        match frame {
            Ok(frame) => Ok((answer, Some((link, frame)))),
            Err(error) => {
                self.lock().pending.remove(&request_id);
                Err(error.into())
            }
        }
    }

    /// A `Response` frame of connection `generation`.
    fn complete(&self, generation: u64, frame: &Frame) {
        let response: Response = match frame.decode::<Response>() {
            Ok(response) => response,
            Err(error) => Err(error),
        };
        let (waiter, result) = {
            let mut state = self.lock();
            if state.generation != generation {
                return;
            }
            let Some(waiter) = state.pending.remove(&frame.request_id) else {
                tracing::warn!(
                    request_id = frame.request_id,
                    "response to a request id we are not waiting for"
                );
                return;
            };
            let result = state.absorb(&waiter.request, response);
            (waiter, result)
        };
        let _ = waiter.reply.send((result, waiter.permit));
    }

    /// A `Notification` frame of connection `generation`.
    fn route_notification(&self, generation: u64, frame: &Frame) {
        let notification = match frame.decode::<Notification>() {
            Ok(notification) => notification,
            Err(error) => {
                tracing::warn!(%error, "dropping a malformed notification");
                return;
            }
        };
        let mut state = self.lock();
        if state.generation == generation {
            state.route(notification);
        }
    }

    /// Connection `generation` ended with `reason`: reconnect, or, when the
    /// session does not reconnect, end it.
    fn link_died(self: &Arc<Self>, generation: u64, reason: ClientError) {
        let link = {
            let mut state = self.lock();
            if state.generation != generation || state.closed.is_some() {
                return;
            }
            let Some(link) = state.link.take() else {
                return;
            };
            link
        };
        tracing::debug!(addr = %link.addr, %reason, "connection ended");
        link.abandon();
        if self.options.reconnect_timeout.is_zero() {
            self.close(reason);
            return;
        }
        tokio::spawn(reconnect(self.clone(), reason));
    }
}

/// A connection that said hello.
struct Handshaken {
    addr: String,
    reader: FramedRead<OwnedReadHalf, FrameCodec>,
    writer: FramedWrite<OwnedWriteHalf, FrameCodec>,
    reply: HelloReply,
}

/// Connects to `addr` and negotiates `version` for `session`, within `limit`.
async fn handshake(
    addr: &str,
    version: ApiVersion,
    session: u64,
    limit: Duration,
) -> Result<Handshaken, ClientError> {
    let connect_limit = limit.min(Duration::from_millis(CONNECT_TIMEOUT_MS));
    let stream = tokio::time::timeout(connect_limit, TcpStream::connect(addr))
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
        session,
    };
    let frame = Frame::new(FrameKind::Hello, 0, &hello)?;
    writer
        .send(frame)
        .await
        .map_err(|e| ClientError::connection_lost(format!("sending Hello to {addr}: {e}")))?;
    let handshake_limit = limit.min(Duration::from_millis(HANDSHAKE_TIMEOUT_MS));
    let reply = tokio::time::timeout(handshake_limit, reader.next())
        .await
        .map_err(|_| {
            ClientError::connection_lost(format!(
                "{addr} did not answer Hello within {} ms",
                handshake_limit.as_millis()
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
    Ok(Handshaken {
        addr: addr.to_string(),
        reader,
        writer,
        reply,
    })
}

/// Starts the reader and writer of connection `generation`.
fn start_link(shared: &Arc<Shared>, conn: Handshaken, generation: u64) -> Link {
    let (outgoing, outgoing_rx) = mpsc::channel(WRITE_QUEUE_FRAMES_MAX);
    let writer = tokio::spawn(write_loop(
        conn.writer,
        outgoing_rx,
        shared.clone(),
        generation,
    ))
    .abort_handle();
    let reader = tokio::spawn(read_loop(
        conn.reader,
        shared.clone(),
        outgoing.clone(),
        generation,
    ))
    .abort_handle();
    Link {
        addr: conn.addr,
        outgoing,
        reader,
        writer,
    }
}

/// After the connection ended with `reason`: tries the nodes round robin
/// until one takes the session over, or the reconnect timeout passes.
async fn reconnect(shared: Arc<Shared>, reason: ClientError) {
    let timeout = shared.options.reconnect_timeout;
    let deadline = Instant::now() + timeout;
    let mut backoff = Duration::from_millis(RECONNECT_BACKOFF_FIRST_MS);
    let start = shared.lock().node.wrapping_add(1);
    let mut last_error = String::new();
    for attempt in 0usize.. {
        if shared.closed().is_some() {
            return;
        }
        let node = start.wrapping_add(attempt) % shared.nodes.len();
        let addr = shared.nodes[node].clone();
        let left = deadline.saturating_duration_since(Instant::now());
        match take_over(&shared, &addr, node, left).await {
            Ok(()) => return,
            Err(error) => {
                tracing::debug!(%addr, %error, "reconnect attempt failed");
                last_error = format!("{addr}: {}", error.message);
            }
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        tokio::time::sleep(backoff.min(deadline - now)).await;
        backoff = (backoff * 2).min(Duration::from_millis(RECONNECT_BACKOFF_MAX_MS));
    }
    let error = ClientError::connection_lost(format!(
        "{} (no node of {} took the session over within {} ms; last attempt: {last_error})",
        reason.message,
        shared.nodes.join(","),
        timeout.as_millis()
    ));
    if let Some(link) = shared.close(error) {
        link.shut(goodbye_frame("giving up"));
    }
}

/// Reads the answers to the requests `waiting` on a connection being set up
/// (no reader task yet), keeping notifications in `notifications`.
async fn collect_answers(
    conn: &mut Handshaken,
    mut waiting: HashMap<u64, u64>,
    limit: Instant,
    notifications: &mut Vec<Notification>,
) -> Result<HashMap<u64, Response>, ClientError> {
    let mut answers = HashMap::new();
    while !waiting.is_empty() {
        let left = limit.saturating_duration_since(Instant::now());
        let frame = match tokio::time::timeout(left, conn.reader.next()).await {
            Err(_) => {
                return Err(ClientError::connection_lost(format!(
                    "{} did not answer reopening the handles in time",
                    conn.addr
                )))
            }
            Ok(None) => {
                return Err(ClientError::connection_lost(format!(
                    "{} closed the connection while handles were reopened",
                    conn.addr
                )))
            }
            Ok(Some(Err(e))) => {
                return Err(ClientError::connection_lost(format!("{}: {e}", conn.addr)))
            }
            Ok(Some(Ok(frame))) => frame,
        };
        match frame.kind {
            FrameKind::Response => {
                if let Some(key) = waiting.remove(&frame.request_id) {
                    let response = frame.decode::<Response>().and_then(|r| r);
                    answers.insert(key, response);
                }
            }
            FrameKind::Notification => notifications.push(frame.decode()?),
            FrameKind::Goodbye => {
                let goodbye: Goodbye = frame.decode()?;
                return Err(ClientError::connection_lost(format!(
                    "{} said goodbye: {}",
                    conn.addr, goodbye.error
                )));
            }
            other => {
                return Err(ClientError::connection_lost(format!(
                    "protocol error: {} sent a {other:?} frame",
                    conn.addr
                )))
            }
        }
    }
    Ok(answers)
}

/// Sends `requests` (key, request with server ids) on a connection being
/// set up and collects their answers by key, at most the server's
/// `in_flight_max` at a time (it stops reading beyond that, and we read
/// nothing while we write).
async fn exchange(
    shared: &Shared,
    conn: &mut Handshaken,
    requests: Vec<(u64, Request)>,
    limit: Instant,
    notifications: &mut Vec<Notification>,
) -> Result<HashMap<u64, Response>, ClientError> {
    let window = usize::try_from(conn.reply.in_flight_max.max(1)).unwrap_or(usize::MAX);
    let mut answers = HashMap::new();
    let mut requests = requests.into_iter().peekable();
    while requests.peek().is_some() {
        let mut waiting = HashMap::new();
        for (key, request) in requests.by_ref().take(window) {
            let request_id = shared.next_request_id();
            conn.writer
                .feed(Frame::new(FrameKind::Request, request_id, &request)?)
                .await
                .map_err(|e| ClientError::connection_lost(format!("{}: {e}", conn.addr)))?;
            waiting.insert(request_id, key);
        }
        conn.writer
            .flush()
            .await
            .map_err(|e| ClientError::connection_lost(format!("{}: {e}", conn.addr)))?;
        answers.extend(collect_answers(conn, waiting, limit, notifications).await?);
    }
    Ok(answers)
}

/// Hands the session over to `addr`: hello, reopen the handles, register
/// the subscriptions again, then resend every pending request.
async fn take_over(
    shared: &Arc<Shared>,
    addr: &str,
    node: usize,
    left: Duration,
) -> Result<(), ClientError> {
    let limit = Instant::now() + left;
    let attempt = left.min(Duration::from_millis(RECONNECT_ATTEMPT_TIMEOUT_MS));
    let mut conn = handshake(addr, shared.options.version, shared.session, attempt).await?;

    // Reopen every handle opened by name, by the same name and flags.
    let to_reopen: Vec<(Handle, CheckpointName, OpenFlags)> = {
        let state = shared.lock();
        state
            .handles
            .live()
            .into_iter()
            .filter_map(|(handle, _)| {
                let (name, flags) = state.reopen.get(&handle)?;
                Some((handle, name.clone(), *flags))
            })
            .collect()
    };
    let requests = to_reopen
        .iter()
        .map(|(handle, name, flags)| {
            let open = Request::Open {
                name: name.clone(),
                attributes: None,
                flags: *flags,
            };
            (*handle, open)
        })
        .collect();
    let mut notifications = Vec::new();
    let answers = exchange(shared, &mut conn, requests, limit, &mut notifications).await?;
    let mut rebound = HashMap::new();
    let mut lost = HashMap::new();
    for (handle, name, _) in &to_reopen {
        match answers.get(handle) {
            Some(Ok(Reply::Opened { handle: server, .. })) => {
                rebound.insert(*handle, *server);
            }
            Some(Err(error)) if error.code == ErrorCode::TryAgain => {
                // Failover in progress: this node cannot serve it yet.
                return Err(ClientError::from(error.clone()));
            }
            other => {
                let why = match other {
                    Some(Err(error)) => format!("{}: {}", error.code.cl_name(), error.detail),
                    other => format!("unexpected answer {other:?}"),
                };
                lost.insert(
                    *handle,
                    format!("handle {handle} was lost when the client moved to {addr}: reopening {name} failed ({why})"),
                );
            }
        }
    }

    // Register every confirmed subscription again, from its last delivery.
    let to_resume: Vec<(Handle, Option<u64>)> = {
        let state = shared.lock();
        state
            .subscriptions
            .iter()
            .filter(|(handle, s)| s.registered && rebound.contains_key(handle))
            .map(|(handle, s)| (*handle, s.resume_after))
            .collect()
    };
    let requests = to_resume
        .iter()
        .map(|(handle, resume_after)| {
            let register = Request::ImmediateConsumptionRegister {
                handle: rebound[handle],
                resume_after: *resume_after,
            };
            (*handle, register)
        })
        .collect();
    let answers = exchange(shared, &mut conn, requests, limit, &mut notifications).await?;
    let mut ended = Vec::new();
    for (handle, resume_after) in &to_resume {
        match answers.get(handle) {
            Some(Ok(Reply::Registered { .. })) => {}
            Some(Err(error)) if error.code == ErrorCode::TryAgain => {
                return Err(ClientError::from(error.clone()));
            }
            other => {
                tracing::warn!(
                    handle,
                    ?resume_after,
                    ?other,
                    "cannot resume a subscription on {addr}"
                );
                ended.push(*handle);
            }
        }
    }

    // Switch over: from here on callers send on the new connection, and
    // what they registered before is sent again below.
    let (link, resend, failed) = {
        let mut state = shared.lock();
        if state.closed.is_some() {
            return Ok(());
        }
        let old_addr = shared.nodes[state.node].clone();
        state.handles.rebind(&rebound, &|handle| {
            format!("handle {handle} was lost when the client moved from {old_addr} to {addr}")
        });
        for (handle, why) in lost {
            state.handles.lose(handle, why);
        }
        state.iterators.rebind(&HashMap::new(), &|iterator| {
            format!("iterator {iterator} was lost with the connection to {old_addr}; start a new iteration")
        });
        state.dumps.rebind(&HashMap::new(), &|dump| {
            format!("dump {dump} was lost with the connection to {old_addr}; start a new dump")
        });
        // Subscriptions of handles that did not come over end (their
        // streams tell where to resume).
        state
            .subscriptions
            .retain(|handle, _| rebound.contains_key(handle) && !ended.contains(handle));
        let generation = state.generation.wrapping_add(1);
        state.generation = generation;
        let link = start_link(shared, conn, generation);
        state.link = Some(link.clone());
        state.node = node;
        state.reconnects = state.reconnects.saturating_add(1);
        for notification in notifications {
            state.route(notification);
        }
        let mut resend = Vec::new();
        let mut failed = Vec::new();
        let ids: Vec<u64> = state.pending.keys().copied().collect();
        for request_id in ids {
            let request = state.pending[&request_id].request.clone();
            match state.outgoing_id(&request) {
                Ok(server_id) => resend.push((request_id, request, server_id)),
                Err(why) => {
                    if let Some(waiter) = state.pending.remove(&request_id) {
                        failed.push((waiter, why));
                    }
                }
            }
        }
        (link, resend, failed)
    };
    tracing::info!(
        addr,
        session = shared.session,
        resent = resend.len(),
        "reconnected"
    );
    for (waiter, why) in failed {
        // Its outcome is unknown: it may have run on the old connection.
        waiter.fail(ClientError::connection_lost(why.message()));
    }
    for (request_id, request, server_id) in resend {
        let frame = match server_id {
            None => Frame::new(FrameKind::Request, request_id, &*request),
            Some(id) => Frame::new(FrameKind::Request, request_id, &with_id(&request, id)),
        };
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => {
                let waiter = shared.lock().pending.remove(&request_id);
                if let Some(waiter) = waiter {
                    waiter.fail(error.into());
                }
                continue;
            }
        };
        if link.outgoing.send(Outgoing::Frame(frame)).await.is_err() {
            // This connection died too; its reconnect sends the rest.
            break;
        }
    }
    Ok(())
}

impl Client {
    /// Connects to the first node of `addrs` that answers and negotiates
    /// [`API_VERSION`] (clCkptInitialize). `addrs` is one `host:port` or a
    /// comma-separated list of a cluster's nodes, `"h1:p1,h2:p2"`; the
    /// client moves to another one when its node goes away (see
    /// [`ClientOptions`] for the defaults).
    ///
    /// # Errors
    /// `MESSAGE_ERROR` when no node can be reached or answers the handshake
    /// in time; the server's code (`VERSION_MISMATCH`) when it refuses the
    /// version; `INVALID_PARAMETER` for an empty list.
    pub async fn connect(addrs: &str) -> Result<Client, ClientError> {
        Client::connect_with_options(addrs, ClientOptions::default()).await
    }

    /// Connects asking for `version`; returns the client and the version the
    /// server granted (the INOUT `version` of clCkptInitialize).
    ///
    /// # Errors
    /// As [`Client::connect`]; a `VERSION_MISMATCH` error carries the version
    /// the server supports in [`ClientError::supported_version`] (and names
    /// it in its message).
    pub async fn connect_with_version(
        addrs: &str,
        version: ApiVersion,
    ) -> Result<(Client, ApiVersion), ClientError> {
        let client =
            Client::connect_with_options(addrs, ClientOptions::default().version(version)).await?;
        let granted = client.version();
        Ok((client, granted))
    }

    /// Connects as [`Client::connect`] with `options`. Each node is tried
    /// once, in order; the first that completes the handshake is used.
    ///
    /// # Errors
    /// As [`Client::connect`]; with several nodes the message names every
    /// node's failure.
    pub async fn connect_with_options(
        addrs: &str,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let nodes = parse_nodes(addrs)?;
        let session = new_session();
        let mut failures = Vec::new();
        let limit = Duration::from_millis(CONNECT_TIMEOUT_MS.max(HANDSHAKE_TIMEOUT_MS));
        for (node, addr) in nodes.iter().enumerate() {
            match handshake(addr, options.version, session, limit).await {
                Ok(conn) => return Ok(Client::start(nodes, node, session, options, conn)),
                Err(error) if error.code == ErrorCode::VersionMismatch => return Err(error),
                Err(error) => failures.push(error),
            }
        }
        if failures.len() == 1 {
            return Err(failures.remove(0));
        }
        let detail: Vec<String> = failures.into_iter().map(|e| e.message).collect();
        Err(ClientError::connection_lost(format!(
            "cannot connect to any of {} nodes: {}",
            nodes.len(),
            detail.join("; ")
        )))
    }

    fn start(
        nodes: Vec<String>,
        node: usize,
        session: u64,
        options: ClientOptions,
        conn: Handshaken,
    ) -> Client {
        let reply = conn.reply.clone();
        let in_flight_max = reply.in_flight_max.max(1);
        let permits = usize::try_from(in_flight_max)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new()),
            nodes,
            session,
            options,
            next_request_id: AtomicU64::new(1),
        });
        {
            let mut state = shared.lock();
            state.generation = 1;
            state.node = node;
            let addr = conn.addr.clone();
            state.link = Some(start_link(&shared, conn, 1));
            tracing::debug!(%addr, version = %version_string(reply.version), in_flight_max, session, "connected");
        }
        Client {
            inner: Arc::new(Inner {
                shared,
                in_flight: Arc::new(Semaphore::new(permits)),
                next_subscription_id: AtomicU64::new(1),
                version: reply.version,
                frame_body_bytes_max: reply.frame_body_bytes_max,
                in_flight_max,
            }),
        }
    }

    /// The API version the server granted.
    pub fn version(&self) -> ApiVersion {
        self.inner.version
    }

    /// Most requests this client has in flight at once (the first server's bound).
    pub fn in_flight_max(&self) -> u32 {
        self.inner.in_flight_max
    }

    /// Largest request body the server accepts, in bytes.
    pub fn frame_body_bytes_max(&self) -> u32 {
        self.inner.frame_body_bytes_max
    }

    /// The exactly-once session id sent in every `Hello` (random, non-zero).
    pub fn session(&self) -> u64 {
        self.inner.shared.session
    }

    /// The nodes this client may connect to, as given.
    pub fn nodes(&self) -> &[String] {
        &self.inner.shared.nodes
    }

    /// The node of the current connection; `None` while reconnecting or
    /// once closed.
    pub fn node(&self) -> Option<String> {
        self.inner
            .shared
            .lock()
            .link
            .as_ref()
            .map(|link| link.addr.clone())
    }

    /// Requests sent (or waiting to be sent again) and not yet answered.
    pub fn pending(&self) -> usize {
        self.inner.shared.lock().pending.len()
    }

    /// How many times the client reconnected.
    pub fn reconnects(&self) -> u64 {
        self.inner.shared.lock().reconnects
    }

    /// Drops the current connection as a network failure would: the client
    /// reconnects (to the next node of its list) and sends every unanswered
    /// request again with its request id. For tests of exactly-once ("the
    /// reply was lost") and to move a client off a node. Without
    /// reconnecting (a zero [`ClientOptions::reconnect_timeout`]) the client
    /// is closed.
    pub fn cut_connection(&self) {
        let generation = self.inner.shared.lock().generation;
        self.inner.shared.link_died(
            generation,
            ClientError::connection_lost("the connection was cut by the client"),
        );
    }

    /// Why the client is closed for good, or `None` while it is usable
    /// (connected or reconnecting).
    pub fn closed_reason(&self) -> Option<ClientError> {
        self.inner.shared.closed()
    }

    /// Sends one request and waits for its answer. Many calls may be in
    /// flight at once; beyond the server's `in_flight_max` they wait for a
    /// slot. Handles, iterators and dumps in `request` are this client's
    /// ids (those its replies gave), translated to the current connection's.
    /// Across a reconnect the request is sent again with the same request
    /// id; a `TRY_AGAIN` answer is retried the same way.
    ///
    /// # Errors
    /// The server's error; `TOO_BIG` for a request over the server's frame
    /// bound (not sent); `INVALID_HANDLE` for an id lost with an earlier
    /// connection; `MESSAGE_ERROR` when the session ends before the answer
    /// (the request may or may not have been applied).
    pub async fn request(&self, request: Request) -> Result<Reply, ClientError> {
        let inner = &*self.inner;
        let shared = &inner.shared;
        // Fail fast rather than wait for a permit on a dead session.
        if let Some(reason) = shared.closed() {
            return Err(reason);
        }
        let mut permit = inner
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ClientError::connection_lost("connection closed"))?;
        let request_id = shared.next_request_id();
        let frame = Frame::new(FrameKind::Request, request_id, &request)?;
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
        let request = Arc::new(request);
        let mut prepared = Some(frame);
        let mut try_again_until: Option<Instant> = None;
        let mut backoff = Duration::from_millis(RECONNECT_BACKOFF_FIRST_MS);
        loop {
            let (answer, send) = shared.submit(request_id, &request, permit, prepared.take())?;
            if let Some((link, frame)) = send {
                // A dead link is fine: the request stays registered and the
                // reconnect sends it again (or the close fails it).
                let _ = link.outgoing.send(Outgoing::Frame(frame)).await;
            }
            let (result, returned) = match answer.await {
                Ok(answer) => answer,
                // Only a closed session drops a waiter without answering it.
                Err(_) => {
                    return Err(self
                        .closed_reason()
                        .unwrap_or_else(|| ClientError::connection_lost("connection closed")))
                }
            };
            let error = match result {
                Err(error) if error.code == ErrorCode::TryAgain => error,
                other => return other,
            };
            let now = Instant::now();
            let until = *try_again_until.get_or_insert(now + shared.options.try_again_timeout);
            if now >= until {
                return Err(error);
            }
            tracing::debug!(request_id, %error, "retrying after TRY_AGAIN");
            tokio::time::sleep(backoff.min(until - now)).await;
            backoff = (backoff * 2).min(Duration::from_millis(RECONNECT_BACKOFF_MAX_MS));
            permit = match returned {
                Some(permit) => permit,
                None => inner
                    .in_flight
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| ClientError::connection_lost("connection closed"))?,
            };
        }
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
            registered: false,
            resume_after: None,
            delivered_any: false,
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
    /// client from now on.
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
    /// (clCkptCheckpointOpen). The handle stays valid across reconnects:
    /// the client reopens it (same name and flags) on the new node.
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

    /// Closes every handle of this client on the server, then the
    /// connection itself (clCkptFinalize). Every later call on this client,
    /// its clones and its checkpoints fails with `INVALID_HANDLE`.
    ///
    /// # Errors
    /// The server's answer to `Finalize` if it failed, or a connection error;
    /// the client is closed either way.
    pub async fn finalize(&self) -> Result<(), ClientError> {
        let answer = self.request(Request::Finalize).await;
        let link = self.inner.shared.close(ClientError::new(
            ErrorCode::InvalidHandle,
            "the client was finalized",
        ));
        if let Some(link) = link {
            let goodbye = goodbye_frame("clCkptFinalize");
            let _ = link.outgoing.send(Outgoing::Close(goodbye)).await;
            link.reader.abort();
        }
        expect_done("Finalize", answer?)
    }
}

pub(crate) fn expect_done(request: &str, reply: Reply) -> Result<(), ClientError> {
    match reply {
        Reply::Done => Ok(()),
        other => Err(ClientError::unexpected_reply(request, &other)),
    }
}

/// Owns the write half of connection `generation`: sends queued frames,
/// flushing once per batch.
async fn write_loop(
    mut sink: FramedWrite<OwnedWriteHalf, FrameCodec>,
    mut outgoing: mpsc::Receiver<Outgoing>,
    shared: Arc<Shared>,
    generation: u64,
) {
    while let Some(first) = outgoing.recv().await {
        let mut next = Some(first);
        let mut fed = 0;
        while let Some(item) = next.take() {
            match item {
                Outgoing::Frame(frame) => {
                    if let Err(e) = sink.feed(frame).await {
                        shared.link_died(
                            generation,
                            ClientError::connection_lost(format!(
                                "connection lost while sending: {e}"
                            )),
                        );
                        return;
                    }
                }
                Outgoing::Close(goodbye) => {
                    if let Some(goodbye) = goodbye {
                        let _ = sink.feed(goodbye).await;
                    }
                    // Flushes and shuts down the write half; the server then
                    // closes its side.
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
            shared.link_died(
                generation,
                ClientError::connection_lost(format!("connection lost while sending: {e}")),
            );
            return;
        }
    }
    // Every sender is gone: nobody can use the connection any more.
    let _ = sink.close().await;
}

/// Owns the read half of connection `generation`: routes answers and
/// notifications until the end.
async fn read_loop(
    mut frames: FramedRead<OwnedReadHalf, FrameCodec>,
    shared: Arc<Shared>,
    outgoing: mpsc::Sender<Outgoing>,
    generation: u64,
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
                FrameKind::Response => shared.complete(generation, &frame),
                FrameKind::Notification => shared.route_notification(generation, &frame),
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
    // Tell the server why, if we are the one ending it, before the link is
    // abandoned (which aborts the writer).
    if goodbye.is_some() {
        let _ = outgoing.try_send(Outgoing::Close(goodbye));
    }
    shared.link_died(generation, reason);
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

    /// A client that does not reconnect: the first connection's end is final.
    async fn connect_once(addr: &str) -> Client {
        Client::connect_with_options(addr, ClientOptions::new().reconnect_timeout(Duration::ZERO))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn reconnect_reopens_handles_resumes_subscriptions_and_resends_with_the_same_id() {
        let server = FakeServer::start().await;
        let addr = server.addr();
        let script = tokio::spawn(async move {
            let (hello1, mut conn) = server.accept_raw(hello_reply(16)).await;
            let (id, request) = conn.recv_request().await;
            assert!(matches!(
                request,
                Request::Open {
                    attributes: Some(_),
                    ..
                }
            ));
            conn.respond(
                id,
                Ok(Reply::Opened {
                    handle: 7,
                    created: true,
                }),
            )
            .await;
            let (id, request) = conn.recv_request().await;
            assert_eq!(
                request,
                Request::ImmediateConsumptionRegister {
                    handle: 7,
                    resume_after: None
                }
            );
            conn.respond(id, Ok(Reply::Registered { next_seq: 3 }))
                .await;
            conn.notify(update(7, 3)).await;
            conn.notify(update(7, 4)).await;
            let (id, request) = conn.recv_request().await;
            assert_eq!(
                request,
                Request::IterationInitialize {
                    handle: 7,
                    sections_chosen: ckpt_proto::SectionsChosen::Any as u32,
                    expiration_time: 0
                }
            );
            conn.respond(id, Ok(Reply::Iterator { iterator: 1 })).await;
            let (write_id, request) = conn.recv_request().await;
            assert!(matches!(
                request,
                Request::SectionOverwrite { handle: 7, .. }
            ));
            // The connection dies with the write unanswered.
            drop(conn);

            let (hello2, mut conn) = server.accept_raw(hello_reply(16)).await;
            let (id, request) = conn.recv_request().await;
            assert_eq!(
                request,
                Request::Open {
                    name: name("a"),
                    attributes: None,
                    flags: OpenFlags::READ | OpenFlags::WRITE
                },
                "reopened by name and flags, without CREATE"
            );
            assert!(id > write_id, "request numbers never go back");
            conn.respond(
                id,
                Ok(Reply::Opened {
                    handle: 9,
                    created: false,
                }),
            )
            .await;
            let (id, request) = conn.recv_request().await;
            assert_eq!(
                request,
                Request::ImmediateConsumptionRegister {
                    handle: 9,
                    resume_after: Some(4)
                }
            );
            conn.respond(id, Ok(Reply::Registered { next_seq: 5 }))
                .await;
            conn.notify(update(9, 5)).await;
            let (id, request) = conn.recv_request().await;
            assert_eq!(id, write_id, "the retried write keeps its request id");
            assert!(matches!(
                request,
                Request::SectionOverwrite { handle: 9, .. }
            ));
            conn.respond(id, Ok(Reply::Done)).await;
            let (id, request) = conn.recv_request().await;
            assert_eq!(request, Request::StatusGet { handle: 9 });
            conn.respond(id, Err(CkptError::new(ErrorCode::NotExist, "seen")))
                .await;
            (hello1, hello2, conn)
        });
        let client = Client::connect(&addr).await.unwrap();
        let flags = OpenFlags::CREATE | OpenFlags::READ | OpenFlags::WRITE;
        let attributes = ckpt_proto::CreationAttributes {
            creation_flags: ckpt_proto::CreationFlags::WR_ACTIVE_REPLICA,
            checkpoint_size: 100,
            retention_duration_ns: 0,
            max_sections: 1,
            max_section_size: 100,
            max_section_id_size: 0,
        };
        let checkpoint = client
            .open(&name("a"), Some(attributes), flags)
            .await
            .unwrap();
        assert_eq!(checkpoint.handle(), 7);
        let mut subscription = checkpoint.subscribe(None).await.unwrap();
        assert_eq!(seq_of(&subscription.next().await.unwrap()), 3);
        assert_eq!(seq_of(&subscription.next().await.unwrap()), 4);
        let mut iterator = checkpoint
            .iterate(ckpt_proto::SectionsChosen::Any, 0)
            .await
            .unwrap();
        checkpoint
            .section_overwrite(&SectionId::DEFAULT, b"x".to_vec())
            .await
            .expect("the write is retried on the new connection");
        assert_eq!(client.reconnects(), 1);
        let resumed = subscription.next().await.unwrap();
        assert_eq!(seq_of(&resumed), 5);
        assert!(
            matches!(resumed, Notification::Update { handle: 7, .. }),
            "{resumed:?}"
        );
        let error = checkpoint.status().await.unwrap_err();
        assert_eq!(error.message, "seen", "sent on handle 9 for the caller's 7");
        let lost = iterator.next().await.unwrap_err();
        assert_eq!(lost.code, ErrorCode::InvalidHandle);
        assert!(lost.message.contains("iterator 1 was lost"), "{lost}");
        iterator
            .finalize()
            .await
            .expect("releasing a lost iterator");
        let (hello1, hello2, _conn) = script.await.unwrap();
        assert_ne!(hello1.session, 0);
        assert_eq!(hello1.session, hello2.session);
        assert_eq!(client.session(), hello1.session);
    }

    #[tokio::test]
    async fn a_handle_that_cannot_be_reopened_is_lost_with_a_reason() {
        let server = FakeServer::start().await;
        let addr = server.addr();
        let script = tokio::spawn(async move {
            let mut conn = server.accept(hello_reply(16)).await;
            let (id, _) = conn.recv_request().await;
            conn.respond(
                id,
                Ok(Reply::Opened {
                    handle: 3,
                    created: false,
                }),
            )
            .await;
            let (id, _) = conn.recv_request().await;
            conn.respond(id, Ok(Reply::Registered { next_seq: 1 }))
                .await;
            let (_, request) = conn.recv_request().await;
            assert!(matches!(request, Request::Write { handle: 3, .. }));
            drop(conn);
            let mut conn = server.accept(hello_reply(16)).await;
            // Reopening fails once with TRY_AGAIN (failover in progress):
            // the client tries the whole takeover again.
            let (id, request) = conn.recv_request().await;
            assert!(matches!(request, Request::Open { .. }));
            conn.respond(id, Err(CkptError::new(ErrorCode::TryAgain, "electing")))
                .await;
            let mut conn = server.accept(hello_reply(16)).await;
            let (id, request) = conn.recv_request().await;
            assert!(matches!(request, Request::Open { .. }));
            conn.respond(id, Err(CkptError::new(ErrorCode::NotExist, "deleted")))
                .await;
            // Nothing on the lost handle reaches the server; the next
            // request is the List below.
            let (id, request) = conn.recv_request().await;
            assert_eq!(request, Request::List);
            conn.respond(id, Ok(Reply::Checkpoints(Vec::new()))).await;
            conn
        });
        let client = Client::connect(&addr).await.unwrap();
        let checkpoint = client
            .open(&name("gone"), None, OpenFlags::READ | OpenFlags::WRITE)
            .await
            .unwrap();
        let mut subscription = checkpoint.subscribe(None).await.unwrap();
        let error = checkpoint.write(Vec::new()).await.unwrap_err();
        assert!(error.is_connection_lost(), "outcome unknown: {error}");
        assert!(
            error
                .message
                .contains("reopening gone failed (CL_ERR_NOT_EXIST: deleted)"),
            "{error}"
        );
        assert!(subscription.next().await.is_none(), "its subscription ends");
        let later = checkpoint.status().await.unwrap_err();
        assert_eq!(later.code, ErrorCode::InvalidHandle);
        assert!(later.message.contains("handle 3 was lost"), "{later}");
        assert!(client.list().await.unwrap().is_empty());
        checkpoint.close().await.expect("closing a lost handle");
        assert_eq!(client.reconnects(), 1);
        drop(script.await.unwrap());
    }

    #[tokio::test]
    async fn a_cut_connection_resends_unanswered_requests_to_the_next_node() {
        let first = FakeServer::start().await;
        let second = FakeServer::start().await;
        let addrs = format!("{},{}", first.addr(), second.addr());
        let (cut_tx, cut_rx) = tokio::sync::oneshot::channel();
        let script = tokio::spawn(async move {
            let mut conn = first.accept(hello_reply(16)).await;
            let (sent, request) = conn.recv_request().await;
            assert_eq!(request, Request::Delete { name: name("x") });
            // Applied, but the reply never reaches the client.
            let _ = cut_tx.send(());
            assert!(conn.at_eof().await, "the client drops the connection");
            let mut conn = second.accept(hello_reply(16)).await;
            let (again, request) = conn.recv_request().await;
            assert_eq!(
                (again, &request),
                (sent, &Request::Delete { name: name("x") })
            );
            conn.respond(again, Ok(Reply::Done)).await;
            conn
        });
        let client = Client::connect(&addrs).await.unwrap();
        let delete = {
            let client = client.clone();
            tokio::spawn(async move { client.delete(&name("x")).await })
        };
        cut_rx.await.unwrap();
        client.cut_connection();
        delete.await.unwrap().expect("answered by the second node");
        assert_eq!(client.reconnects(), 1);
        let conn = script.await.unwrap();
        assert_eq!(client.node(), Some(client.nodes()[1].clone()));
        drop(conn);
    }

    #[test]
    fn node_lists_and_option_defaults() {
        assert_eq!(parse_nodes("a:1").unwrap(), ["a:1"]);
        assert_eq!(parse_nodes(" a:1 , b:2,").unwrap(), ["a:1", "b:2"]);
        assert_eq!(
            parse_nodes(" , ").unwrap_err().code,
            ErrorCode::InvalidParameter
        );
        let options = ClientOptions::new();
        assert_eq!(options.reconnect_timeout, Duration::from_secs(10));
        assert_eq!(options.try_again_timeout, Duration::from_secs(10));
        assert_eq!(options.version, API_VERSION);
        let options = options
            .reconnect_timeout(Duration::ZERO)
            .try_again_timeout(Duration::from_millis(5));
        assert_eq!(options.reconnect_timeout, Duration::ZERO);
        assert_eq!(options.try_again_timeout, Duration::from_millis(5));
    }

    #[tokio::test]
    async fn try_again_is_retried_with_the_same_request_id() {
        let server = FakeServer::start().await;
        let addr = server.addr();
        let script = tokio::spawn(async move {
            let mut conn = server.accept(hello_reply(16)).await;
            let (first, _) = conn.recv_request().await;
            conn.respond(first, Err(CkptError::new(ErrorCode::TryAgain, "failover")))
                .await;
            let (again, _) = conn.recv_request().await;
            assert_eq!(first, again);
            conn.respond(again, Ok(Reply::Done)).await;
            conn
        });
        let client = Client::connect(&addr).await.unwrap();
        client.delete(&name("a")).await.unwrap();
        drop(script.await.unwrap());
    }

    #[tokio::test]
    async fn try_again_reaches_the_caller_when_retrying_is_off() {
        let server = FakeServer::start().await;
        let addr = server.addr();
        let script = tokio::spawn(async move {
            let mut conn = server.accept(hello_reply(16)).await;
            let (id, _) = conn.recv_request().await;
            conn.respond(id, Err(CkptError::new(ErrorCode::TryAgain, "failover")))
                .await;
            conn
        });
        let options = ClientOptions::new().try_again_timeout(Duration::ZERO);
        let client = Client::connect_with_options(&addr, options).await.unwrap();
        let error = client.delete(&name("a")).await.unwrap_err();
        assert_eq!(error.code, ErrorCode::TryAgain);
        drop(script.await.unwrap());
    }

    #[tokio::test]
    async fn a_dead_node_in_the_list_is_skipped_and_giving_up_fails_pending_requests() {
        let dead = FakeServer::start().await;
        let dead_addr = dead.addr();
        drop(dead);
        let server = FakeServer::start().await;
        let addr = server.addr();
        let script = tokio::spawn(async move {
            let mut conn = server.accept(hello_reply(16)).await;
            conn.recv_request().await;
            // The listener and the connection go: nothing to reconnect to.
        });
        let options = ClientOptions::new().reconnect_timeout(Duration::from_millis(300));
        let client = Client::connect_with_options(&format!("{dead_addr}, {addr}"), options)
            .await
            .unwrap();
        assert_eq!(client.node(), Some(addr.clone()));
        assert_eq!(client.nodes(), [dead_addr.clone(), addr.clone()]);
        let error = tokio::time::timeout(Duration::from_secs(10), client.list())
            .await
            .expect("gives up after the reconnect timeout")
            .unwrap_err();
        script.await.unwrap();
        assert!(error.is_connection_lost(), "{error}");
        assert!(error.message.contains("no node of"), "{error}");
        assert!(client.closed_reason().is_some());
        assert!(client.list().await.unwrap_err().is_connection_lost());
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
        let client = connect_once(&addr).await;
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
        let client = connect_once(&addr).await;
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
        let client = connect_once(&addr).await;
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
