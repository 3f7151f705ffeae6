//! The checkpoint service: every API function on top of the store, with
//! handles, access checks, cluster-wide open counts (one node for now) and
//! retention timers. Transport-free: sessions hand it decoded requests.
//!
//! Concurrency: open, close, delete, restore and retention expiry of one
//! checkpoint *name* are serialised by a lock per name ([`NameLocks`]), held
//! across their storage work; different names proceed at once, so their
//! records share group commits like writes do. The open counts and timers
//! ([`Registry`]) sit behind a plain mutex held only for bookkeeping, never
//! across an await. The races this allows are settled so:
//! - two creates of one name: the store orders them; under the name lock
//!   the second finds the first's checkpoint (`created: false`);
//! - a delete racing opens: both take the name lock; an open that comes
//!   first holds a handle on the instance the delete then unlinks (it lives
//!   until that handle closes), an open that comes second gets NOT_EXIST;
//! - a last close racing an open or a retention timer: the close counts
//!   down under the registry mutex, then decides under the name lock after
//!   checking again that nobody opened the instance meanwhile; a timer that
//!   fires checks, under the name lock, that it is still the current timer
//!   of an instance nobody has open.
//!
//! Open counts live in memory only. After a restart nobody has a handle
//! open, so every checkpoint starts its retention timer afresh (downtime
//! never deletes data; retention 0 counts as [`RESTART_RETENTION_GRACE_NS`]
//! then, since its handles were lost to the crash, not closed) and every
//! instance left unlinked by a crash is destroyed — nobody can reach it any
//! more.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ckpt_proto::wire::{CheckpointInfo, Handle, IteratorHandle, Reply, Request, Response};
use ckpt_proto::{
    now_ns, CheckpointName, CkptError, CkptResult, CreationAttributes, CreationFlags, ErrorCode,
    OpenFlags, SectionsChosen, UpdateMode, TIME_END,
};
use ckpt_storage::{Durability, InstanceId, InstanceMeta, Op, Outcome, Store, Submission};
use tokio::task::AbortHandle;

use crate::connection::{ReplyBudget, Reservation, SMALL_REPLY_BYTES};
use crate::front::{ClusterFront, WriteNeed, WriteOrigin};
use crate::hub::{Hub, Outbox, SubscribeRequest};
use crate::metrics::Metrics;
use crate::reads::{ReadReply, ReadRequest};

/// One open handle.
#[derive(Debug, Clone)]
struct OpenHandle {
    instance: InstanceId,
    name: CheckpointName,
    flags: OpenFlags,
    durability: Durability,
    /// When a write through it is answered, in a cluster.
    need: WriteNeed,
    /// Whether its reads may come from this node's replica (in a cluster):
    /// DISTRIBUTED and ALL_OPEN_ARE_REPLICAS openers read their local copy
    /// by design; every other read goes to the active replica.
    local_reads: bool,
    collocated: bool,
}

impl OpenHandle {
    fn new(
        instance: InstanceId,
        name: CheckpointName,
        flags: OpenFlags,
        attributes: &CreationAttributes,
    ) -> OpenHandle {
        let creation = attributes.creation_flags;
        let mode = creation.update_mode().unwrap_or(UpdateMode::AllReplicas);
        let all_safe = creation.contains(CreationFlags::WR_ALL_SAFE);
        let (durability, need) = match mode {
            UpdateMode::ActiveReplicaWeak => (Durability::Written, WriteNeed::Applied),
            UpdateMode::ActiveReplica if !all_safe => {
                (Durability::Durable, WriteNeed::LocalDurable)
            }
            _ => (Durability::Durable, WriteNeed::AllInSync),
        };
        let local_reads = creation.contains(CreationFlags::DISTRIBUTED)
            || creation.contains(CreationFlags::ALL_OPEN_ARE_REPLICAS);
        OpenHandle {
            instance,
            name,
            flags,
            durability,
            need,
            local_reads,
            collocated: creation.contains(CreationFlags::CHECKPOINT_COLLOCATED),
        }
    }
}

struct SectionIteration {
    handle: Handle,
    ids: VecDeque<ckpt_proto::SectionId>,
}

/// A connection's handles and iterators.
pub struct Session {
    id: u64,
    /// The client's own session id from its Hello (0: none), which with a
    /// request's number identifies a write across reconnects.
    client_session: u64,
    outbox: Arc<Outbox>,
    budget: Arc<ReplyBudget>,
    state: Mutex<SessionState>,
}

#[derive(Default)]
struct SessionState {
    next_id: u64,
    handles: HashMap<Handle, OpenHandle>,
    iterations: HashMap<IteratorHandle, SectionIteration>,
    dumps: HashMap<u64, Arc<Dump>>,
}

/// A dump in progress: a snapshot and the instances it covers.
struct Dump {
    snapshot: ckpt_storage::StoreSnapshot,
    instances: Vec<InstanceId>,
}

/// Most bytes one `DumpRead` returns.
const DUMP_READ_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// After a restart every unopened checkpoint starts its retention timer
/// afresh; one with retention 0 ("deleted at the last close") gets this
/// instead (60 s): it exists only because it was open at the crash, its
/// handles were lost rather than closed, and its owners must be able to
/// reconnect and open it again before it goes.
pub const RESTART_RETENTION_GRACE_NS: i64 = 60_000_000_000;

impl Session {
    fn lock(&self) -> std::sync::MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn handle(&self, handle: Handle) -> CkptResult<OpenHandle> {
        self.lock().handles.get(&handle).cloned().ok_or_else(|| {
            CkptError::new(
                ErrorCode::InvalidHandle,
                format!("handle {handle} is not open"),
            )
        })
    }
}

/// Open counts and retention timers. Behind a plain mutex: never held
/// across an await.
#[derive(Default)]
struct Registry {
    opens: HashMap<InstanceId, u32>,
    /// Each instance's pending retention timer, with an id telling a timer
    /// that fires from one that replaced it.
    timers: HashMap<InstanceId, (u64, AbortHandle)>,
    next_timer: u64,
}

/// One async lock per checkpoint name with an operation in progress.
#[derive(Default)]
struct NameLocks {
    held: Mutex<HashMap<CheckpointName, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds a name's lock; the entry goes when nobody holds or waits for it.
struct NameGuard<'a> {
    locks: &'a NameLocks,
    name: CheckpointName,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl NameLocks {
    fn map(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<CheckpointName, Arc<tokio::sync::Mutex<()>>>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn lock(&self, name: &CheckpointName) -> NameGuard<'_> {
        let lock = self.map().entry(name.clone()).or_default().clone();
        NameGuard {
            locks: self,
            name: name.clone(),
            guard: Some(lock.lock_owned().await),
        }
    }
}

impl Drop for NameGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.locks.map();
        // Waiters hold clones of the Arc (taken under this map lock), so a
        // count of one means nobody needs the entry.
        if map
            .get(&self.name)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            map.remove(&self.name);
        }
    }
}

/// The service shared by all sessions.
pub struct Service {
    store: Arc<Store>,
    /// The cluster, when this node is one of several; `None` on the
    /// embedded single node.
    cluster: Option<Arc<dyn ClusterFront>>,
    registry: Mutex<Registry>,
    names: NameLocks,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    next_session: AtomicU64,
}

/// A single node's write ready for the store, from [`Service::write_now`].
pub struct WriteNow {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    op: Op,
    durability: Durability,
    room: Reservation,
    name: &'static str,
    /// A section creation, answered with the section's id.
    creates: bool,
    started: std::time::Instant,
}

impl WriteNow {
    /// Hands the write to the store; `answer` is called with its response
    /// and reply room on the store's thread once the write is done (per the
    /// handle's durability) or refused.
    ///
    /// # Errors
    /// The writer's queue is full: the write is handed back, answer
    /// attached, to be queued with [`Submission::wait`] on a thread that may
    /// block.
    pub fn submit(
        self,
        answer: impl FnOnce(Response, Reservation) + Send + 'static,
    ) -> Result<(), Submission> {
        let WriteNow {
            store,
            metrics,
            op,
            durability,
            room,
            name,
            creates,
            started,
        } = self;
        let reply = move |result: CkptResult<Outcome>| {
            let response = result.and_then(|outcome| section_write_reply(creates, outcome));
            metrics.observe(
                name,
                started.elapsed(),
                response.as_ref().err().map(|e| e.code),
            );
            answer(response, room);
        };
        store.try_submit(op, durability, now_ns(), reply)
    }
}

fn permission(what: &str, needed: &str) -> CkptError {
    CkptError::new(
        ErrorCode::OpNotPermitted,
        format!("{what} needs a handle opened with {needed}"),
    )
}

impl Service {
    /// The service over an open store.
    pub fn new(store: Arc<Store>, hub: Arc<Hub>, metrics: Arc<Metrics>) -> Arc<Service> {
        Service::with_cluster(store, hub, metrics, None)
    }

    /// The service of a cluster node (`None`: a single node).
    pub fn with_cluster(
        store: Arc<Store>,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        cluster: Option<Arc<dyn ClusterFront>>,
    ) -> Arc<Service> {
        Arc::new(Service {
            store,
            cluster,
            registry: Mutex::new(Registry::default()),
            names: NameLocks::default(),
            hub,
            metrics,
            next_session: AtomicU64::new(1),
        })
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The store (for metrics and shutdown).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The metrics it counts into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Start-up: destroy instances left unlinked, start every checkpoint's
    /// retention timer afresh.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn recover(self: &Arc<Self>) -> CkptResult<()> {
        // Taken in any case, so that a cluster node does not keep it.
        let picked = self.store.take_not_kept_forever();
        if self.cluster.is_some() {
            // Retention and deletion are the control plane's, cluster-wide;
            // it restarts the timers of unopened checkpoints itself.
            return Ok(());
        }
        let instances = match picked {
            Some(instances) => instances,
            None => {
                let store = self.store.clone();
                tokio::task::spawn_blocking(move || store.instances())
                    .await
                    .map_err(|e| CkptError::new(ErrorCode::Library, e.to_string()))??
            }
        };
        for (instance, meta) in instances {
            if meta.unlinked {
                tracing::info!(name = %meta.name, instance = instance.0, "destroying a checkpoint deleted before the restart");
                self.exec(Op::Destroy { instance }, Durability::Durable)
                    .await?;
            } else if meta.attributes.retention_duration_ns != TIME_END {
                // A crash is not a close: retention 0 means "deleted at the
                // last close", and a checkpoint with it that exists now was
                // open at the crash; its owner must be able to open it again.
                // (Kept forever, a checkpoint needs no timer, nor its
                // name's lock: at a million checkpoints that was a second.)
                let mut fresh = meta.clone();
                let retention = &mut fresh.attributes.retention_duration_ns;
                if *retention == 0 {
                    *retention = RESTART_RETENTION_GRACE_NS;
                }
                let _name = self.names.lock(&meta.name).await;
                self.start_retention(instance, &fresh).await?;
            }
        }
        Ok(())
    }

    /// Cancels every retention timer (at shutdown).
    pub async fn stop_timers(&self) {
        let timers: Vec<_> = self.registry().timers.drain().collect();
        for (_, (_, timer)) in timers {
            timer.abort();
        }
    }

    /// Applies due section expirations (called periodically).
    ///
    /// # Errors
    /// Storage errors.
    pub async fn expire_due(&self) -> CkptResult<u32> {
        if let Some(cluster) = &self.cluster {
            // Store-wide expiry would log entries on backups, outside their
            // checkpoints' replication streams: each active replica expires
            // its own checkpoints, and backups get the deletions shipped.
            let now = now_ns();
            let due = self
                .blocking(move |s| s.instances_with_expiry_due(now))
                .await?;
            let mut count = 0u32;
            for instance in due.into_iter().filter(|i| cluster.is_active_here(*i)) {
                let op = Op::ExpireDueIn { instance };
                match cluster
                    .write(instance, op, None, WriteNeed::LocalDurable)
                    .await
                {
                    Ok(Outcome::Expired { count: n }) => count = count.saturating_add(n),
                    Ok(_) => {}
                    // Not writable here right now (epoch starting, lease,
                    // failover): the next pass tries again.
                    Err(error) => {
                        tracing::debug!(%error, instance = instance.0, "expiry pass skipped")
                    }
                }
            }
            return Ok(count);
        }
        match self.exec(Op::ExpireDue, Durability::Durable).await? {
            Outcome::Expired { count } => Ok(count),
            _ => Ok(0),
        }
    }

    /// A new session with its notification queue and reply budget.
    pub fn open_session(
        &self,
        outbox: Arc<Outbox>,
        budget: Arc<ReplyBudget>,
        client_session: u64,
    ) -> Session {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        // Weak: the hub holds the outbox (through subscriptions).
        let hub = Arc::downgrade(&self.hub);
        outbox.set_on_drained(Box::new(move || {
            if let Some(hub) = hub.upgrade() {
                hub.catch_up(id);
            }
        }));
        Session {
            id,
            client_session,
            outbox,
            budget,
            state: Mutex::default(),
        }
    }

    /// Closes every handle of a session (clCkptFinalize, connection loss).
    pub async fn close_session(self: &Arc<Self>, session: &Session) {
        let handles: Vec<Handle> = {
            let mut state = session.lock();
            state.iterations.clear();
            state.dumps.clear();
            state.handles.keys().copied().collect()
        };
        for handle in handles {
            if let Err(error) = self.close(session, handle).await {
                tracing::warn!(%error, handle, "closing a handle of a finished session");
            }
        }
    }

    async fn exec(&self, op: Op, durability: Durability) -> CkptResult<Outcome> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let reply = move |result| {
            let _ = tx.send((result, std::time::Instant::now()));
        };
        if let Err(submission) = self.store.try_submit(op, durability, now_ns(), reply) {
            // The writer's queue is full: wait for room on a blocking
            // thread, never on a runtime worker.
            let _ = tokio::task::spawn_blocking(move || submission.wait()).await;
        }
        match rx.await {
            Ok((result, answered)) => {
                self.metrics.stages.wake.observe_since(answered);
                result
            }
            Err(_) => Err(CkptError::new(ErrorCode::Library, "the store stopped")),
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Store) -> CkptResult<T> + Send + 'static,
    ) -> CkptResult<T> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(|e| CkptError::new(ErrorCode::Library, format!("read task failed: {e}")))?
    }

    /// A write of an open checkpoint: on the local store on a single node;
    /// in a cluster on the checkpoint's active replica, answered per the
    /// handle's durability, carrying the client's (session, request) so a
    /// retry is applied once.
    async fn write(
        &self,
        session: &Session,
        h: &OpenHandle,
        op: Op,
        request_id: u64,
    ) -> CkptResult<Outcome> {
        match &self.cluster {
            None => self.exec(op, h.durability).await,
            Some(cluster) => {
                let origin = (session.client_session != 0).then_some(WriteOrigin {
                    session: session.client_session,
                    request: request_id,
                });
                cluster.write(h.instance, op, origin, h.need).await
            }
        }
    }

    /// A read of an open checkpoint: the local store on a single node; in a
    /// cluster the active replica's, or this node's where the handle allows.
    async fn read(&self, h: &OpenHandle, request: ReadRequest) -> CkptResult<ReadReply> {
        match &self.cluster {
            None => crate::reads::serve_async(&self.store, h.instance, request).await,
            Some(cluster) => cluster.read(h.instance, request, h.local_reads).await,
        }
    }

    /// An open checkpoint's metadata, from where its reads come.
    async fn meta(&self, h: &OpenHandle) -> CkptResult<crate::reads::MetaView> {
        match self.read(h, ReadRequest::Meta).await? {
            ReadReply::Meta(meta) => Ok(meta),
            other => Err(unexpected_read(other)),
        }
    }

    /// Serves one request. Returns the response and the room its reply
    /// holds in the session's reply budget until it is written: taken
    /// before the work, sized by what a read will return.
    pub async fn handle(
        self: &Arc<Self>,
        session: &Session,
        request: Request,
        request_id: u64,
    ) -> (Response, Reservation) {
        let op = request_name(&request);
        let started = std::time::Instant::now();
        // Reads reserve once they know their size (holding nothing else
        // from the budget while they wait).
        let mut room = match &request {
            Request::Read { .. } => None,
            Request::DumpRead { size, .. } => Some(
                session
                    .budget
                    .reserve((*size).min(DUMP_READ_BYTES_MAX))
                    .await,
            ),
            _ => Some(session.budget.reserve(SMALL_REPLY_BYTES).await),
        };
        let response = self.dispatch(session, request, request_id, &mut room).await;
        self.metrics.observe(
            op,
            started.elapsed(),
            response.as_ref().err().map(|e| e.code),
        );
        let room = match room {
            Some(room) => room,
            None => session.budget.reserve(SMALL_REPLY_BYTES).await,
        };
        (response, room)
    }

    /// The answer to `request` if it can be given now without waiting: a
    /// read on a single node that memory answers (RocksDB's memtables and
    /// block cache) and that the session's reply budget has room for. The
    /// caller then needs no task for it. `None` for everything else, errors
    /// included: [`Service::handle`] answers those (and finds the same error).
    pub fn answer_now(
        &self,
        session: &Session,
        request: &Request,
    ) -> Option<(Response, Reservation)> {
        let Request::Read { handle, elements } = request else {
            return None;
        };
        if self.cluster.is_some() || request.validate().is_err() {
            return None;
        }
        let started = std::time::Instant::now();
        let h = self.readable(session, *handle, "Read").ok()?;
        let data = ckpt_storage::memory_only(|| self.store.read(h.instance, elements))?.ok()?;
        // No await between the read and the try: the bytes held before
        // they are reserved are those of one read per async thread.
        let bytes = data.iter().map(|d| d.len() as u64).sum();
        let room = session.budget.try_reserve(bytes)?;
        self.metrics.observe("read", started.elapsed(), None);
        Some((Ok(Reply::Data(data)), room))
    }

    /// A write on a single node made ready to go to the store with its
    /// answer attached, so that the store's thread answers it and no task
    /// waits for it: a section write (create, delete, expiration time,
    /// overwrite, write) through a handle that may write, with room for its
    /// answer at once. The request comes back unchanged
    /// for everything else (a cluster, an invalid request, no room):
    /// [`Service::handle`] serves those, errors included.
    pub fn write_now(&self, session: &Session, request: Request) -> Result<WriteNow, Request> {
        let Some((handle, what)) = section_write_handle(&request) else {
            return Err(request);
        };
        if self.cluster.is_some() || request.validate().is_err() {
            return Err(request);
        }
        let Ok(h) = self.writable(session, handle, what) else {
            return Err(request);
        };
        let Some(room) = session.budget.try_reserve(SMALL_REPLY_BYTES) else {
            return Err(request);
        };
        let name = request_name(&request);
        let creates = matches!(request, Request::SectionCreate { .. });
        let op = section_write_op(request, h.instance)?;
        Ok(WriteNow {
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            op,
            durability: h.durability,
            room,
            name,
            creates,
            started: std::time::Instant::now(),
        })
    }

    async fn dispatch(
        self: &Arc<Self>,
        session: &Session,
        request: Request,
        request_id: u64,
        room: &mut Option<Reservation>,
    ) -> Response {
        request.validate()?;
        match request {
            Request::Open {
                name,
                attributes,
                flags,
            } => {
                self.open(session, name, attributes, flags, request_id)
                    .await
            }
            Request::Close { handle } => self.close(session, handle).await.map(|()| Reply::Done),
            Request::Delete { name } => self.delete(name).await.map(|()| Reply::Done),
            Request::RetentionDurationSet {
                handle,
                retention_duration_ns,
            } => {
                let mut h = session.handle(handle)?;
                // A management change: durable wherever the checkpoint's
                // writes are, whatever its update mode.
                h.durability = Durability::Durable;
                if h.need == WriteNeed::Applied {
                    h.need = WriteNeed::LocalDurable;
                }
                let op = Op::SetRetention {
                    instance: h.instance,
                    retention_duration_ns,
                };
                self.write(session, &h, op, request_id).await?;
                Ok(Reply::Done)
            }
            Request::ActiveReplicaSet { handle } => {
                let h = session.handle(handle)?;
                if !h.flags.contains(OpenFlags::WRITE) {
                    return Err(permission("ActiveReplicaSet", "WRITE"));
                }
                if !h.collocated {
                    return Err(CkptError::new(
                        ErrorCode::BadOperation,
                        "ActiveReplicaSet applies to collocated checkpoints only",
                    ));
                }
                match &self.cluster {
                    // One node: the local replica is the only one, and active.
                    None => Ok(Reply::Done),
                    Some(cluster) => {
                        cluster.set_active(h.instance).await?;
                        Ok(Reply::Done)
                    }
                }
            }
            Request::StatusGet { handle } => {
                let h = session.handle(handle)?;
                match self.read(&h, ReadRequest::Status).await? {
                    ReadReply::Status(status) => Ok(Reply::Status(status)),
                    other => Err(unexpected_read(other)),
                }
            }
            Request::SectionCreate { .. }
            | Request::SectionDelete { .. }
            | Request::SectionExpirationTimeSet { .. }
            | Request::SectionOverwrite { .. }
            | Request::Write { .. } => {
                let Some((handle, what)) = section_write_handle(&request) else {
                    return Err(CkptError::new(ErrorCode::Library, "not a section write"));
                };
                let h = self.writable(session, handle, what)?;
                let creates = matches!(request, Request::SectionCreate { .. });
                let op = section_write_op(request, h.instance)
                    .map_err(|_| CkptError::new(ErrorCode::Library, "not a section write"))?;
                let outcome = self.write(session, &h, op, request_id).await?;
                section_write_reply(creates, outcome)
            }
            Request::Read { handle, elements } => {
                let h = self.readable(session, handle, "Read")?;
                // (A read that memory answers and the budget has room for
                // was answered by `answer_now` before it got here.)
                // What the read returns, from the sections' sizes now (a
                // section growing meanwhile makes the reply a little larger).
                let sizing = ReadRequest::ReadSize {
                    elements: elements.clone(),
                };
                let reply_bytes = match self.read(&h, sizing).await? {
                    ReadReply::Size(bytes) => bytes,
                    other => return Err(unexpected_read(other)),
                };
                *room = Some(session.budget.reserve(reply_bytes).await);
                match self.read(&h, ReadRequest::Read { elements }).await? {
                    ReadReply::Data(data) => Ok(Reply::Data(data)),
                    other => Err(unexpected_read(other)),
                }
            }
            Request::Synchronize { handle } => {
                let h = self.writable(session, handle, "Synchronize")?;
                // DESIGN.md §2 "synchronize": WR_ALL_REPLICAS writes reach
                // every replica before they return; nothing is left to do.
                let meta = self.meta(&h).await?;
                if meta.attributes.creation_flags.update_mode()? == UpdateMode::AllReplicas {
                    return Err(CkptError::new(
                        ErrorCode::BadOperation,
                        "Synchronize applies to WR_ACTIVE_REPLICA(_WEAK) checkpoints, not WR_ALL_REPLICAS",
                    ));
                }
                match &self.cluster {
                    // Everything queued before the barrier is durable when
                    // it is answered (WEAK writes included).
                    None => {
                        self.exec(Op::Barrier, Durability::Durable).await?;
                    }
                    Some(cluster) => cluster.synchronize(h.instance).await?,
                }
                Ok(Reply::Done)
            }
            Request::IterationInitialize {
                handle,
                sections_chosen,
                expiration_time,
            } => {
                let h = self.readable(session, handle, "SectionIterationInitialize")?;
                let chosen = SectionsChosen::from_u32(sections_chosen)?;
                let sections = match self.read(&h, ReadRequest::Sections).await? {
                    ReadReply::Sections(sections) => sections,
                    other => return Err(unexpected_read(other)),
                };
                let ids = sections
                    .into_iter()
                    .filter(|d| chosen.matches(d.expiration_time, d.state, expiration_time))
                    .map(|d| d.section_id)
                    .collect();
                let mut state = session.lock();
                state.next_id += 1;
                let iterator = state.next_id;
                state
                    .iterations
                    .insert(iterator, SectionIteration { handle, ids });
                Ok(Reply::Iterator { iterator })
            }
            Request::IterationNext { iterator } => loop {
                let (h, id) = {
                    let mut state = session.lock();
                    let SessionState {
                        iterations,
                        handles,
                        ..
                    } = &mut *state;
                    let iteration = iterations.get_mut(&iterator).ok_or_else(|| {
                        CkptError::new(
                            ErrorCode::InvalidHandle,
                            format!("iterator {iterator} is not open"),
                        )
                    })?;
                    let Some(h) = handles.get(&iteration.handle) else {
                        return Err(CkptError::new(
                            ErrorCode::InvalidHandle,
                            "the iterator's checkpoint handle was closed",
                        ));
                    };
                    (h.clone(), iteration.ids.pop_front())
                };
                let Some(id) = id else {
                    return Err(CkptError::new(ErrorCode::NoSections, "no more sections"));
                };
                // Sections deleted since the iteration started are skipped.
                match self
                    .read(&h, ReadRequest::Section { section_id: id })
                    .await?
                {
                    ReadReply::Section(Some(descriptor)) => return Ok(Reply::Section(descriptor)),
                    ReadReply::Section(None) => {}
                    other => return Err(unexpected_read(other)),
                }
            },
            Request::IterationFinalize { iterator } => {
                session.lock().iterations.remove(&iterator).ok_or_else(|| {
                    CkptError::new(
                        ErrorCode::InvalidHandle,
                        format!("iterator {iterator} is not open"),
                    )
                })?;
                Ok(Reply::Done)
            }
            Request::ImmediateConsumptionRegister {
                handle,
                resume_after,
            } => {
                let h = self.readable(session, handle, "ImmediateConsumptionRegister")?;
                // Notifications come from this node's replica (its commit
                // feed), so its sequence numbers are what a subscriber
                // resumes from, here or on the node it moves to.
                let instance = h.instance;
                if self.cluster.is_some() {
                    // This node's replica may not have applied the
                    // checkpoint's creation yet (writes of WR_ACTIVE_REPLICA
                    // checkpoints return before backups apply them).
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                    while tokio::time::Instant::now() < deadline
                        && self.blocking(move |s| s.instance(instance)).await.is_err()
                    {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                let meta = self.blocking(move |s| s.instance(instance)).await.map_err(|e| {
                    if self.cluster.is_some() && e.code == ErrorCode::NotExist {
                        CkptError::new(
                            ErrorCode::NotExist,
                            "this node holds no replica of the checkpoint: subscribe on a node that does (DISTRIBUTED checkpoints get one on every opening node)",
                        )
                    } else {
                        e
                    }
                })?;
                let request = SubscribeRequest {
                    instance: h.instance,
                    name: h.name.clone(),
                    current_seq: meta.seq.0,
                    session: session.id,
                    handle,
                    resume_after,
                    outbox: session.outbox.clone(),
                };
                let next_seq = self.hub.subscribe(&self.store, request).await;
                Ok(Reply::Registered { next_seq })
            }
            Request::List if self.cluster.is_some() => Ok(Reply::Checkpoints(
                self.cluster_infos(self.cluster.as_ref().map(|c| c.checkpoints()))
                    .await,
            )),
            Request::Stat { name } if self.cluster.is_some() => {
                let cluster = self.cluster.clone();
                let checkpoint = match &cluster {
                    Some(cluster) => cluster.lookup(name).await?,
                    None => unreachable!("guarded by the match arm"),
                };
                let mut infos = self.cluster_infos(Some(vec![checkpoint])).await;
                Ok(Reply::Checkpoint(infos.remove(0)))
            }
            Request::List => {
                // Storage work first, off the runtime; the registry only
                // for the open counts.
                let instances = self
                    .blocking(|s| {
                        Ok(s.instances()?
                            .into_iter()
                            .filter(|(_, meta)| !meta.unlinked)
                            .map(|(instance, meta)| {
                                let footprint = s.instance_footprint(instance).unwrap_or(0);
                                (instance, meta, footprint)
                            })
                            .collect::<Vec<_>>())
                    })
                    .await?;
                let registry = self.registry();
                Ok(Reply::Checkpoints(
                    instances
                        .into_iter()
                        .map(|(instance, meta, footprint)| {
                            info(&registry, instance, meta, footprint)
                        })
                        .collect(),
                ))
            }
            Request::Stat { name } => {
                let lookup = name.clone();
                let (instance, meta, footprint) = self
                    .blocking(move |s| {
                        let instance = s.lookup(&lookup)?;
                        let footprint = s.instance_footprint(instance).unwrap_or(0);
                        Ok((instance, s.instance(instance)?, footprint))
                    })
                    .await?;
                let registry = self.registry();
                Ok(Reply::Checkpoint(info(
                    &registry, instance, meta, footprint,
                )))
            }
            Request::Finalize => {
                self.close_session(session).await;
                Ok(Reply::Done)
            }
            Request::DumpBegin { names } => self.dump_begin(session, names).await,
            Request::DumpRead {
                dump,
                checkpoint,
                section_id,
                offset,
                size,
            } => {
                let dump = session.lock().dumps.get(&dump).cloned().ok_or_else(|| {
                    CkptError::new(ErrorCode::InvalidHandle, format!("dump {dump} is not open"))
                })?;
                let instance = *dump.instances.get(checkpoint as usize).ok_or_else(|| {
                    CkptError::new(
                        ErrorCode::InvalidParameter,
                        format!("the dump has no checkpoint {checkpoint}"),
                    )
                })?;
                let size = size.min(DUMP_READ_BYTES_MAX);
                let data = tokio::task::spawn_blocking(move || {
                    dump.snapshot.read(instance, &section_id, offset, size)
                })
                .await
                .map_err(|e| CkptError::new(ErrorCode::Library, e.to_string()))??;
                Ok(Reply::Data(vec![data]))
            }
            Request::DumpEnd { dump } => {
                session.lock().dumps.remove(&dump).ok_or_else(|| {
                    CkptError::new(ErrorCode::InvalidHandle, format!("dump {dump} is not open"))
                })?;
                Ok(Reply::Done)
            }
            Request::Restore {
                name,
                attributes,
                generated_next,
                replace,
            } => {
                self.restore(session, name, attributes, generated_next, replace)
                    .await
            }
            Request::RestoreSection {
                handle,
                section_id,
                expiration_time,
                data,
            } => {
                let h = self.writable(session, handle, "RestoreSection")?;
                let op = Op::RestoreSection {
                    instance: h.instance,
                    section_id,
                    expiration_time,
                    data,
                };
                self.exec(op, Durability::Durable).await?;
                Ok(Reply::Done)
            }
            Request::ServerStatus => {
                let (checkpoints, (wal_bytes, wal_segments)) = self
                    .blocking(|s| {
                        let named = s
                            .instances()?
                            .into_iter()
                            .filter(|(_, m)| !m.unlinked)
                            .count() as u64;
                        Ok((named, s.wal_footprint()))
                    })
                    .await?;
                Ok(Reply::ServerStatus(ckpt_proto::wire::ServerStatus {
                    checkpoints,
                    wal_bytes,
                    wal_segments,
                }))
            }
        }
    }

    /// List and Stat in a cluster: names, attributes, replicas and opens from
    /// the control plane; sizes and sequence numbers from this node's replica
    /// where it has one (zero where it has none).
    async fn cluster_infos(
        &self,
        checkpoints: Option<Vec<crate::front::ClusterCheckpoint>>,
    ) -> Vec<CheckpointInfo> {
        let checkpoints = checkpoints.unwrap_or_default();
        let opens: HashMap<InstanceId, u32> = self.registry().opens.clone();
        // Sizes and sequence numbers from the active replica (a local
        // replica may lag), where it answers.
        let mut statuses = HashMap::new();
        if let Some(cluster) = &self.cluster {
            for c in &checkpoints {
                if let Ok(ReadReply::Meta(meta)) =
                    cluster.read(c.instance, ReadRequest::Meta, false).await
                {
                    if let Ok(ReadReply::Status(status)) =
                        cluster.read(c.instance, ReadRequest::Status, false).await
                    {
                        statuses.insert(c.instance, (meta.seq, status));
                    }
                }
            }
        }
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            checkpoints
                .into_iter()
                .map(|c| {
                    let local = store.instance(c.instance).ok();
                    let footprint = local
                        .as_ref()
                        .map(|_| store.instance_footprint(c.instance).unwrap_or(0))
                        .unwrap_or(0);
                    let open_count = c
                        .open_elsewhere
                        .saturating_add(opens.get(&c.instance).copied().unwrap_or(0));
                    match statuses.remove(&c.instance) {
                        Some((seq, status)) => CheckpointInfo {
                            footprint_bytes: footprint,
                            replicas: c.replicas,
                            name: c.name,
                            status,
                            open_count,
                            seq,
                        },
                        None => CheckpointInfo {
                            footprint_bytes: footprint,
                            replicas: c.replicas,
                            name: c.name,
                            status: ckpt_proto::CheckpointStatus {
                                attributes: c.attributes,
                                number_of_sections: local.as_ref().map_or(0, |m| m.section_count),
                                memory_used: local.as_ref().map_or(0, |m| m.memory_used),
                            },
                            open_count,
                            seq: local.as_ref().map_or(0, |m| m.seq.0),
                        },
                    }
                })
                .collect()
        })
        .await
        .unwrap_or_default()
    }

    async fn dump_begin(&self, session: &Session, names: Vec<CheckpointName>) -> Response {
        let (dump, checkpoints) = self
            .blocking(move |s| {
                let snapshot = s.snapshot();
                let all = snapshot.instances()?;
                let chosen: Vec<(InstanceId, InstanceMeta)> = if names.is_empty() {
                    all.into_iter().filter(|(_, m)| !m.unlinked).collect()
                } else {
                    let mut chosen = Vec::new();
                    for name in &names {
                        let found = all
                            .iter()
                            .find(|(_, m)| !m.unlinked && &m.name == name)
                            .cloned();
                        chosen.push(found.ok_or_else(|| {
                            CkptError::new(
                                ErrorCode::NotExist,
                                format!("checkpoint {name} does not exist"),
                            )
                        })?);
                    }
                    chosen
                };
                let mut checkpoints = Vec::with_capacity(chosen.len());
                for (instance, meta) in &chosen {
                    checkpoints.push(ckpt_proto::wire::DumpCheckpoint {
                        name: meta.name.clone(),
                        attributes: meta.attributes.clone(),
                        generated_next: meta.generated_next,
                        seq: meta.seq.0,
                        sections: snapshot.sections(*instance)?,
                    });
                }
                let instances = chosen.into_iter().map(|(i, _)| i).collect();
                Ok((
                    Dump {
                        snapshot,
                        instances,
                    },
                    checkpoints,
                ))
            })
            .await?;
        let mut state = session.lock();
        state.next_id += 1;
        let id = state.next_id;
        state.dumps.insert(id, Arc::new(dump));
        Ok(Reply::Dump {
            dump: id,
            checkpoints,
        })
    }

    async fn restore(
        self: &Arc<Self>,
        session: &Session,
        name: CheckpointName,
        attributes: CreationAttributes,
        generated_next: u64,
        replace: bool,
    ) -> Response {
        if self.cluster.is_some() {
            return Err(CkptError::new(
                ErrorCode::BadOperation,
                "restore is not supported on a cluster yet: restore the dump into a single-node server (ckpt-tool restore --addr of one, or --data-dir of a stopped one) to read it back; docs/replication.md, \"Not yet\"",
            ));
        }
        let name_lock = self.names.lock(&name).await;
        if replace {
            match self.delete_locked(name.clone()).await {
                Ok(()) => {}
                Err(error) if error.code == ErrorCode::NotExist => {}
                Err(error) => return Err(error),
            }
        }
        let op = Op::Restore {
            name: name.clone(),
            attributes: attributes.clone(),
            generated_next,
            instance: None,
            epoch: ckpt_storage::Epoch(1),
        };
        let instance = match self.exec(op, Durability::Durable).await? {
            Outcome::Opened { instance, .. } => instance,
            other => return Err(unexpected(other)),
        };
        *self.registry().opens.entry(instance).or_insert(0) += 1;
        drop(name_lock);
        let mut open = OpenHandle::new(
            instance,
            name,
            OpenFlags::READ | OpenFlags::WRITE,
            &attributes,
        );
        open.durability = Durability::Durable;
        let mut state = session.lock();
        state.next_id += 1;
        let handle = state.next_id;
        state.handles.insert(handle, open);
        Ok(Reply::Opened {
            handle,
            created: true,
        })
    }

    fn writable(&self, session: &Session, handle: Handle, what: &str) -> CkptResult<OpenHandle> {
        let h = session.handle(handle)?;
        if !h.flags.contains(OpenFlags::WRITE) {
            return Err(permission(what, "CL_CKPT_CHECKPOINT_WRITE"));
        }
        Ok(h)
    }

    fn readable(&self, session: &Session, handle: Handle, what: &str) -> CkptResult<OpenHandle> {
        let h = session.handle(handle)?;
        if !h.flags.contains(OpenFlags::READ) {
            return Err(permission(what, "CL_CKPT_CHECKPOINT_READ"));
        }
        Ok(h)
    }

    async fn open(
        self: &Arc<Self>,
        session: &Session,
        name: CheckpointName,
        attributes: Option<CreationAttributes>,
        flags: OpenFlags,
        request_id: u64,
    ) -> Response {
        flags.validate()?;
        let create = flags.contains(OpenFlags::CREATE);
        if let Some(cluster) = self.cluster.clone() {
            return self
                .open_clustered(cluster, session, name, attributes, flags, request_id)
                .await;
        }
        let name_lock = self.names.lock(&name).await;
        let (instance, created) = match (create, attributes) {
            (true, Some(attributes)) => {
                match self
                    .exec(
                        Op::CreateCheckpoint {
                            name: name.clone(),
                            attributes,
                            instance: None,
                            epoch: ckpt_storage::Epoch(1),
                        },
                        Durability::Durable,
                    )
                    .await?
                {
                    Outcome::Opened { instance, existed } => (instance, !existed),
                    other => return Err(unexpected(other)),
                }
            }
            (true, None) => {
                return Err(CkptError::new(
                    ErrorCode::InvalidParameter,
                    "CL_CKPT_CHECKPOINT_CREATE needs creation attributes",
                ))
            }
            (false, Some(_)) => {
                return Err(CkptError::new(
                    ErrorCode::InvalidParameter,
                    "creation attributes are given without CL_CKPT_CHECKPOINT_CREATE",
                ))
            }
            (false, None) => {
                let lookup = name.clone();
                (self.blocking(move |s| s.lookup(&lookup)).await?, false)
            }
        };
        let meta = {
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || store.instance(instance))
                .await
                .map_err(|e| CkptError::new(ErrorCode::Library, e.to_string()))??
        };
        {
            let mut registry = self.registry();
            *registry.opens.entry(instance).or_insert(0) += 1;
            if let Some((_, timer)) = registry.timers.remove(&instance) {
                timer.abort();
            }
        }
        drop(name_lock);
        let open = OpenHandle::new(instance, name, flags, &meta.attributes);
        let mut state = session.lock();
        state.next_id += 1;
        let handle = state.next_id;
        state.handles.insert(handle, open);
        Ok(Reply::Opened { handle, created })
    }

    /// Open in a cluster: the control plane knows the checkpoint (creates
    /// it); this node counts its own handles and tells the control plane
    /// when it has the first one and when it closed the last, which runs
    /// retention cluster-wide.
    async fn open_clustered(
        self: &Arc<Self>,
        cluster: Arc<dyn ClusterFront>,
        session: &Session,
        name: CheckpointName,
        attributes: Option<CreationAttributes>,
        flags: OpenFlags,
        request_id: u64,
    ) -> Response {
        let create = flags.contains(OpenFlags::CREATE);
        let name_lock = self.names.lock(&name).await;
        let (checkpoint, created) = match (create, attributes) {
            (true, Some(attributes)) => {
                let origin = (session.client_session != 0).then_some(WriteOrigin {
                    session: session.client_session,
                    request: request_id,
                });
                cluster.create(name.clone(), attributes, origin).await?
            }
            (true, None) => {
                return Err(CkptError::new(
                    ErrorCode::InvalidParameter,
                    "CL_CKPT_CHECKPOINT_CREATE needs creation attributes",
                ))
            }
            (false, Some(_)) => {
                return Err(CkptError::new(
                    ErrorCode::InvalidParameter,
                    "creation attributes are given without CL_CKPT_CHECKPOINT_CREATE",
                ))
            }
            (false, None) => (cluster.lookup(name.clone()).await?, false),
        };
        let instance = checkpoint.instance;
        let first = {
            let mut registry = self.registry();
            let count = registry.opens.entry(instance).or_insert(0);
            *count += 1;
            *count == 1
        };
        if first {
            if let Err(error) = cluster.opened(instance).await {
                let mut registry = self.registry();
                if let Some(count) = registry.opens.get_mut(&instance) {
                    *count = count.saturating_sub(1);
                    if *count == 0 {
                        registry.opens.remove(&instance);
                    }
                }
                return Err(error);
            }
        }
        drop(name_lock);
        let open = OpenHandle::new(instance, name, flags, &checkpoint.attributes);
        let mut state = session.lock();
        state.next_id += 1;
        let handle = state.next_id;
        state.handles.insert(handle, open);
        Ok(Reply::Opened { handle, created })
    }

    async fn close(self: &Arc<Self>, session: &Session, handle: Handle) -> CkptResult<()> {
        let open = {
            let mut state = session.lock();
            let open = state.handles.remove(&handle).ok_or_else(|| {
                CkptError::new(
                    ErrorCode::InvalidHandle,
                    format!("handle {handle} is not open"),
                )
            })?;
            state.iterations.retain(|_, it| it.handle != handle);
            open
        };
        self.hub.unsubscribe(session.id, handle);
        {
            let mut registry = self.registry();
            let count = registry.opens.entry(open.instance).or_insert(1);
            *count = count.saturating_sub(1);
            if *count > 0 {
                return Ok(());
            }
            registry.opens.remove(&open.instance);
        }
        // The last handle closed. Decide under the name lock, after making
        // sure nobody opened the instance again meanwhile.
        let _name = self.names.lock(&open.name).await;
        if let Some(cluster) = &self.cluster {
            if self.registry().opens.contains_key(&open.instance) {
                return Ok(());
            }
            // The control plane decides about retention and deletion, from
            // every node's opens.
            return cluster.closed(open.instance).await;
        }
        if self
            .registry()
            .opens
            .get(&open.instance)
            .copied()
            .unwrap_or(0)
            > 0
        {
            return Ok(());
        }
        let store = self.store.clone();
        let meta = match tokio::task::spawn_blocking(move || store.instance(open.instance)).await {
            Ok(Ok(meta)) => meta,
            // Already destroyed (deleted, or retention 0 raced): nothing to do.
            _ => return Ok(()),
        };
        if meta.unlinked {
            // Nobody can open an unlinked instance: this close was its last.
            self.destroy(open.instance).await
        } else {
            self.start_retention(open.instance, &meta).await
        }
    }

    async fn delete(self: &Arc<Self>, name: CheckpointName) -> CkptResult<()> {
        let _name = self.names.lock(&name).await;
        if let Some(cluster) = &self.cluster {
            return cluster.delete(name).await;
        }
        self.delete_locked(name).await
    }

    /// Delete, the caller holding the name's lock.
    async fn delete_locked(self: &Arc<Self>, name: CheckpointName) -> CkptResult<()> {
        let lookup = name.clone();
        let instance = self.blocking(move |s| s.lookup(&lookup)).await?;
        self.exec(Op::Unlink { name }, Durability::Durable).await?;
        let unused = {
            let mut registry = self.registry();
            if let Some((_, timer)) = registry.timers.remove(&instance) {
                timer.abort();
            }
            registry.opens.get(&instance).copied().unwrap_or(0) == 0
        };
        // Otherwise the last close destroys it.
        if unused {
            self.destroy(instance).await?;
        }
        Ok(())
    }

    async fn destroy(&self, instance: InstanceId) -> CkptResult<()> {
        self.exec(Op::Destroy { instance }, Durability::Durable)
            .await?;
        self.hub.forget(instance);
        Ok(())
    }

    /// After the last close: retention 0 deletes now, TIME_END never,
    /// anything else after that long unless it is opened again. The caller
    /// holds the name's lock.
    async fn start_retention(
        self: &Arc<Self>,
        instance: InstanceId,
        meta: &InstanceMeta,
    ) -> CkptResult<()> {
        let retention = meta.attributes.retention_duration_ns;
        if retention == TIME_END {
            return Ok(());
        }
        if retention <= 0 {
            self.exec(
                Op::Unlink {
                    name: meta.name.clone(),
                },
                Durability::Durable,
            )
            .await?;
            return self.destroy(instance).await;
        }
        let mut registry = self.registry();
        registry.next_timer += 1;
        let timer_id = registry.next_timer;
        let service = self.clone();
        let name = meta.name.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_nanos(retention as u64)).await;
            if let Err(error) = service.retention_expired(instance, name, timer_id).await {
                tracing::error!(%error, instance = instance.0, "deleting a checkpoint after its retention failed");
            }
        });
        if let Some((_, old)) = registry
            .timers
            .insert(instance, (timer_id, timer.abort_handle()))
        {
            old.abort();
        }
        Ok(())
    }

    async fn retention_expired(
        self: &Arc<Self>,
        instance: InstanceId,
        name: CheckpointName,
        timer_id: u64,
    ) -> CkptResult<()> {
        let _name = self.names.lock(&name).await;
        {
            let mut registry = self.registry();
            // An open cancelled this timer, or a later close replaced it.
            if registry.timers.get(&instance).map(|(id, _)| *id) != Some(timer_id) {
                return Ok(());
            }
            registry.timers.remove(&instance);
            if registry.opens.get(&instance).copied().unwrap_or(0) > 0 {
                return Ok(());
            }
        }
        let lookup = name.clone();
        let current = self.blocking(move |s| s.lookup(&lookup)).await;
        if current.as_ref().ok() == Some(&instance) {
            tracing::info!(%name, "retention duration elapsed; deleting the checkpoint");
            self.exec(Op::Unlink { name }, Durability::Durable).await?;
        }
        self.destroy(instance).await
    }
}

fn info(
    registry: &Registry,
    instance: InstanceId,
    meta: InstanceMeta,
    footprint_bytes: u64,
) -> CheckpointInfo {
    CheckpointInfo {
        footprint_bytes,
        replicas: 1,
        name: meta.name,
        status: ckpt_proto::CheckpointStatus {
            attributes: meta.attributes,
            number_of_sections: meta.section_count,
            memory_used: meta.memory_used,
        },
        open_count: registry.opens.get(&instance).copied().unwrap_or(0),
        seq: meta.seq.0,
    }
}

fn unexpected_read(reply: ReadReply) -> CkptError {
    CkptError::new(
        ErrorCode::Library,
        format!("unexpected read reply {reply:?}"),
    )
}

/// The handle and operation name of a section write, the requests a single
/// node hands to the store with their answer attached
/// ([`Service::write_now`]); `None` for every other request.
fn section_write_handle(request: &Request) -> Option<(Handle, &'static str)> {
    match request {
        Request::SectionCreate { handle, .. } => Some((*handle, "SectionCreate")),
        Request::SectionDelete { handle, .. } => Some((*handle, "SectionDelete")),
        Request::SectionExpirationTimeSet { handle, .. } => {
            Some((*handle, "SectionExpirationTimeSet"))
        }
        Request::SectionOverwrite { handle, .. } => Some((*handle, "SectionOverwrite")),
        Request::Write { handle, .. } => Some((*handle, "Write")),
        _ => None,
    }
}

/// The store operation of a section write through a handle of `instance`;
/// every other request comes back unchanged.
fn section_write_op(request: Request, instance: InstanceId) -> Result<Op, Request> {
    Ok(match request {
        Request::SectionCreate {
            attributes,
            initial_data,
            ..
        } => Op::CreateSection {
            instance,
            attributes,
            data: initial_data,
        },
        Request::SectionDelete { section_id, .. } => Op::DeleteSection {
            instance,
            section_id,
        },
        Request::SectionExpirationTimeSet {
            section_id,
            expiration_time,
            ..
        } => Op::SetExpiration {
            instance,
            section_id,
            expiration_time,
        },
        Request::SectionOverwrite {
            section_id, data, ..
        } => Op::Overwrite {
            instance,
            section_id,
            data,
        },
        Request::Write { elements, .. } => Op::Write { instance, elements },
        other => return Err(other),
    })
}

/// The answer to a section write the store applied: a creation's section
/// id, `Done` for the others.
fn section_write_reply(creates: bool, outcome: Outcome) -> Response {
    match (creates, outcome) {
        (true, Outcome::SectionCreated { section_id }) => Ok(Reply::SectionCreated { section_id }),
        (true, other) => Err(unexpected(other)),
        (false, _) => Ok(Reply::Done),
    }
}

fn unexpected(outcome: Outcome) -> CkptError {
    CkptError::new(
        ErrorCode::Library,
        format!("unexpected store outcome {outcome:?}"),
    )
}

/// The metrics label of a request.
pub fn request_name(request: &Request) -> &'static str {
    match request {
        Request::Open { .. } => "open",
        Request::Close { .. } => "close",
        Request::Delete { .. } => "delete",
        Request::RetentionDurationSet { .. } => "retention_duration_set",
        Request::ActiveReplicaSet { .. } => "active_replica_set",
        Request::StatusGet { .. } => "status_get",
        Request::SectionCreate { .. } => "section_create",
        Request::SectionDelete { .. } => "section_delete",
        Request::SectionExpirationTimeSet { .. } => "section_expiration_time_set",
        Request::SectionOverwrite { .. } => "section_overwrite",
        Request::Write { .. } => "write",
        Request::Read { .. } => "read",
        Request::Synchronize { .. } => "synchronize",
        Request::IterationInitialize { .. } => "iteration_initialize",
        Request::IterationNext { .. } => "iteration_next",
        Request::IterationFinalize { .. } => "iteration_finalize",
        Request::ImmediateConsumptionRegister { .. } => "immediate_consumption_register",
        Request::List => "list",
        Request::Stat { .. } => "stat",
        Request::Finalize => "finalize",
        Request::DumpBegin { .. } => "dump_begin",
        Request::DumpRead { .. } => "dump_read",
        Request::DumpEnd { .. } => "dump_end",
        Request::Restore { .. } => "restore",
        Request::RestoreSection { .. } => "restore_section",
        Request::ServerStatus => "server_status",
    }
}
