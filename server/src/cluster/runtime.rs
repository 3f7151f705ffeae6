//! [`Cluster`]: the replication cores of one node, driven with real
//! sockets, clocks and the store.
//!
//! One tokio task (the *driver*) owns the IO-free cores — the Raft
//! [`ControlPlane`] and the [`DataPlane`] — and is the only code that calls
//! them. Everything else talks to it through one unbounded channel of
//! [`Input`]s: peer messages, the store's append and durable listeners,
//! completions of store work, proposals and tickets from requests. After
//! each input (or batch of inputs) and each tick the driver carries out what
//! the cores asked for, in order:
//!
//! 1. control plane: persist the ready's Raft entries and hard state through
//!    [`RaftLog`] on a blocking thread, and only once that is durable send
//!    the ready's messages; then act on the applied commands (answer
//!    proposals, publish the new [`ClusterState`], tell the data plane about
//!    every checkpoint whose metadata changed, begin epochs this node became
//!    active for, destroy instances that went);
//! 2. data plane: send messages, hand replicated entries and snapshots to
//!    the store, read entries or snapshots for catching-up backups, propose
//!    in-sync changes, answer released and failed client tickets.
//!
//! Requests never wait inside the driver: a write on the active replica is
//! ordered by the store (`submit_ordered`) from the request's own task and
//! only its ticket is registered with the driver; reads are served from the
//! store directly; requests for another node travel as
//! [`PeerMessage::Forward`] and are served there by the same functions.
//!
//! An active replica serves writes only while it holds its lease (the
//! control plane's `holds_lease`, checked against the node's monotonic
//! clock) and once its epoch began here (`begin_epoch`, or the creation of
//! the instance, is durable).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use ckpt_proto::{
    now_ns, CheckpointName, CkptError, CkptResult, CreationAttributes, CreationFlags, ErrorCode,
};
use ckpt_replication::config::ClusterConfig;
use ckpt_replication::control::{
    Applied, CheckpointMeta, ClusterState, Command, Compaction, ControlMessage, ControlPlane,
    NodeAddrs, RaftSnapshot as Snapshot, Ticket, Unbegun, Unsynced,
};
use ckpt_replication::data::{
    DataMessage, DataOutput, DataPlane, Need, Proposal, ReplicaSet, ShippedEntry,
};
use ckpt_replication::raftlog::{self, RaftLog};
use ckpt_replication::NodeId;
use ckpt_storage::{
    decode_entries, encode_entries, Committed, Durability, EntriesAfter, Entry, Epoch, InstanceId,
    Lsn, Op, Origin, Outcome, Position, ReadAfter, Seq, Store, SNAPSHOT_PART_BYTES,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::messages::{ForwardOk, ForwardRequest, WireNeed, WireOp};
use super::metrics::ClusterMetrics;
use super::transport::{cluster_check, Transport};
use crate::front::WriteOrigin;
use crate::reads::{self, ReadReply, ReadRequest};

/// The applied cluster metadata, shared (cheap to clone).
pub type ClusterStateSnapshot = Arc<ClusterState>;

/// What nodes send each other.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerMessage {
    /// Raft and leases.
    Control(ControlMessage),
    /// Log shipping.
    Data(DataMessage),
    /// A request for this node to serve on behalf of the sender.
    Forward { id: u64, request: ForwardRequest },
    /// The answer to the sender's `Forward` of the same id.
    ForwardReply {
        id: u64,
        result: Result<ForwardOk, CkptError>,
    },
}

/// Why the cluster runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// This node is not in the cluster file.
    #[error("node {0} is not in the cluster configuration")]
    UnknownNode(NodeId),
    /// The Raft log could not be opened or the control plane not restored.
    #[error("control plane: {0}")]
    Control(String),
    /// The peer address could not be bound.
    #[error("binding the peer address {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    /// The metrics could not be registered.
    #[error("registering cluster metrics: {0}")]
    Metrics(String),
}

/// How long a request forwarded to another node may take before it fails
/// with TRY_AGAIN (a dead target fails sooner, at its failover).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a freshly created or activated checkpoint may take to become
/// writable on its active replica before the waiter gets TRY_AGAIN.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a proposal is retried while no Raft leader is known.
const NO_LEADER_RETRY: Duration = Duration::from_secs(5);
/// How often the lag gauges and the admin view of lag are refreshed.
const LAG_REFRESH_MS: u64 = 1000;
/// Checkpoints whose gauges one lag refresh sets at most.
const LAG_REFRESH_MAX: usize = 4096;
/// Inputs the driver takes before carrying out outputs.
const INPUT_BATCH_MAX: usize = 256;
/// Checkpoints whose metadata changed that the driver acts on per pass
/// (see [`Unsynced`]): about 10 ms of work. Two in the crate's tests, so
/// that the in-process cluster tests spread even a few checkpoints' changes
/// over passes.
#[cfg(not(test))]
const SYNC_SLICE: usize = 1024;
#[cfg(test)]
const SYNC_SLICE: usize = 2;
/// How long a snapshot stream waits for the backup to hold its last part
/// before it gives up (the backup then starts over with a CatchUp).
const SNAPSHOT_PART_WAIT: Duration = Duration::from_secs(30);

fn try_again(detail: impl Into<String>) -> CkptError {
    CkptError::new(ErrorCode::TryAgain, detail)
}

fn stopped() -> CkptError {
    CkptError::new(ErrorCode::TryAgain, "the cluster runtime stopped")
}

fn not_exist(instance: InstanceId) -> CkptError {
    CkptError::new(
        ErrorCode::NotExist,
        format!("checkpoint instance {} does not exist", instance.0),
    )
}

/// The durability a checkpoint's writes need, from its creation flags
/// (DESIGN.md §4 "Modes").
pub fn need_for(flags: CreationFlags) -> Need {
    Need::for_flags(flags)
}

fn wire_need(need: Need) -> WireNeed {
    match need {
        Need::Applied => WireNeed::Applied,
        Need::LocalDurable => WireNeed::LocalDurable,
        Need::AllInSync => WireNeed::AllInSync,
    }
}

fn from_wire_need(need: WireNeed) -> Need {
    match need {
        WireNeed::Applied => Need::Applied,
        WireNeed::LocalDurable => Need::LocalDurable,
        WireNeed::AllInSync => Need::AllInSync,
    }
}

/// What the driver is told.
/// Answers a request waiting for its write to be safe per its need.
type TicketReply = Box<dyn FnOnce(CkptResult<()>) + Send>;

/// The writer's answer to an active replica's write.
enum Written {
    /// Final: an error, a write that logged nothing, or a write released
    /// by its ticket.
    Answered(CkptResult<Outcome>),
    /// A retried origin first applied in an earlier epoch.
    Earlier(Outcome),
}

enum Input {
    /// A Raft message, and when it was queued.
    Control(NodeId, ControlMessage, Instant),
    Data(NodeId, DataMessage),
    Appended(Vec<ShippedEntry>),
    Durable(Vec<Position>),
    /// `immediate` answers TRY_AGAIN at once (no leader) instead of through
    /// the ticket, so that the caller may retry.
    Propose {
        command: Command,
        reply: oneshot::Sender<Result<Applied, CkptError>>,
    },
    Register {
        ticket: u64,
        position: Position,
        need: Need,
        reply: TicketReply,
    },
    ReplicaDone {
        instance: InstanceId,
        result: CkptResult<Position>,
    },
    EntriesRead {
        for_node: NodeId,
        instance: InstanceId,
        /// The entry the read was asked to follow.
        after: Option<(Epoch, Seq)>,
        result: CkptResult<EntriesAfter>,
    },
    /// A part of a snapshot streamed to `to` was read.
    SnapshotPart {
        to: NodeId,
        last: Position,
        index: u64,
        done: bool,
        bytes: Vec<u8>,
    },
    /// Reading a snapshot for `to` failed.
    SnapshotFailed {
        to: NodeId,
        instance: InstanceId,
        error: CkptError,
    },
    /// A snapshot part from the active replica was applied here (or refused).
    SnapshotPartDone {
        instance: InstanceId,
        last: (Epoch, Seq),
        index: u64,
        done: bool,
        result: CkptResult<Position>,
    },
    Begun {
        instance: InstanceId,
        epoch: Epoch,
        result: CkptResult<Position>,
        created: bool,
    },
    /// A Raft log compaction's snapshot is durable in `raft.snap` (or
    /// could not be written), with how long it took.
    Compacted(Result<(Snapshot, Duration), String>),
}

/// What the driver publishes for request tasks.
#[derive(Default)]
struct Published {
    leader: Option<NodeId>,
    term: u64,
    /// This node leads and has applied everything committed (its
    /// published state is the cluster's, up to creates still in flight).
    leader_caught_up: bool,
    /// By instance this node is primary of: `(node, records, bytes)` behind.
    /// Persistent: `/cluster` takes a copy in O(1) and renders it without
    /// holding the lock the driver takes to publish (a render of 50,000
    /// checkpoints under it stalled the driver past its lease).
    lag: imbl::OrdMap<InstanceId, Vec<(NodeId, u64, u64)>>,
}

struct PendingForward {
    to: NodeId,
    reply: oneshot::Sender<CkptResult<ForwardOk>>,
}

/// One node's cluster runtime. See the module docs.
pub struct Cluster {
    me: NodeId,
    config: ClusterConfig,
    store: Arc<Store>,
    inputs: mpsc::UnboundedSender<Input>,
    state: watch::Receiver<ClusterStateSnapshot>,
    /// Epochs begun on this node as active replica, by instance.
    began: watch::Receiver<Arc<BTreeMap<InstanceId, Epoch>>>,
    /// Instances this node is the active replica of (read by the store's
    /// append listener to ship only what a primary appended).
    primary_of: Arc<RwLock<HashSet<InstanceId>>>,
    transport: Transport<PeerMessage>,
    forwards: Mutex<HashMap<u64, PendingForward>>,
    next_id: AtomicU64,
    /// The lease holds until this many ms of `clock` (0: not held).
    lease_until_ms: AtomicU64,
    /// Creates made by this node whose request answered TRY_AGAIN.
    unready_creates: UnreadyCreates,
    published: Mutex<Published>,
    metrics: ClusterMetrics,
    clock: Instant,
    clock_base_ms: u64,
    shutdown: CancellationToken,
}

impl Cluster {
    /// Starts node `me` of `config`: opens the Raft log in `raft_dir`,
    /// binds the peer address, installs the store's append and durable
    /// listeners, registers the metrics on `registry` and starts the driver.
    /// Peers in `peer_via` are connected to at that address instead of
    /// their `peer_addr`. Everything stops when `shutdown` is cancelled.
    ///
    /// # Errors
    /// See [`ClusterError`].
    pub async fn start(
        config: ClusterConfig,
        me: NodeId,
        peer_via: &BTreeMap<NodeId, SocketAddr>,
        store: Arc<Store>,
        raft_dir: &Path,
        registry: &prometheus::Registry,
        shutdown: CancellationToken,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let Some(node) = config.node(me) else {
            return Err(ClusterError::UnknownNode(me));
        };
        let peer_addr = node.peer_addr;
        let metrics =
            ClusterMetrics::register(registry).map_err(|e| ClusterError::Metrics(e.to_string()))?;
        let dir = raft_dir.to_path_buf();
        let (raftlog, persisted) = tokio::task::spawn_blocking(move || RaftLog::open(&dir))
            .await
            .map_err(|e| ClusterError::Control(e.to_string()))?
            .map_err(|e| ClusterError::Control(e.to_string()))?;
        let clock = Instant::now();
        let clock_base_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
        #[allow(unused_mut)]
        let mut control = if config.join {
            ControlPlane::joining(me, &config, persisted, clock_base_ms)
        } else {
            ControlPlane::new(me, &config, persisted, clock_base_ms)
        }
        .map_err(|e| ClusterError::Control(e.to_string()))?;
        // The in-process cluster tests send Raft messages over 128 bytes in
        // parts (1 MiB otherwise: only snapshots of large registries).
        #[cfg(test)]
        control.set_raft_part_bytes(128);
        let mut data = DataPlane::new(me, config.replica_lag_timeout_ms)
            .with_lag_records_max(config.replica_lag_records_max);
        data.set_read_bytes_max(4 * 1024 * 1024);
        // Members added at run time are peers too (the log replayed above
        // knows their addresses); the runtime follows later changes.
        let nodes = peer_addrs(&config, me, control.state());
        let check = cluster_check(&config.cluster_name);
        let started =
            Transport::<PeerMessage>::start(me, &nodes, peer_via, check, shutdown.clone())
                .await
                .map_err(|error| ClusterError::Bind {
                    addr: peer_addr,
                    error,
                })?;
        let (inputs, input_rx) = mpsc::unbounded_channel();
        let empty = Arc::new(ClusterState::new(
            &config.node_ids(),
            config.replication_factor,
        ));
        let (state_tx, state) = watch::channel(empty.clone());
        let (began_tx, began) = watch::channel(Arc::new(BTreeMap::new()));
        let cluster = Arc::new(Cluster {
            me,
            config,
            store: store.clone(),
            inputs: inputs.clone(),
            state,
            began,
            primary_of: Arc::new(RwLock::new(HashSet::new())),
            transport: started.transport,
            forwards: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            lease_until_ms: AtomicU64::new(0),
            unready_creates: UnreadyCreates::default(),
            published: Mutex::new(Published::default()),
            metrics,
            clock,
            clock_base_ms,
            shutdown: shutdown.clone(),
        });
        {
            let inputs = inputs.clone();
            let primary_of = cluster.primary_of.clone();
            store.set_append_listener(Arc::new(move |entries: &[Entry]| {
                let shipped: Vec<ShippedEntry> = {
                    let primary_of = primary_of.read().unwrap_or_else(|p| p.into_inner());
                    entries
                        .iter()
                        .filter(|e| primary_of.contains(&e.instance))
                        .map(|e| ShippedEntry {
                            instance: e.instance,
                            epoch: e.epoch,
                            seq: e.seq,
                            // The listener does not say where the entry is
                            // in the WAL; 0 makes a lagging backup's hold
                            // keep the log up to wal_hold_bytes_max.
                            lsn: Lsn(0),
                            bytes: e.encode(),
                        })
                        .collect()
                };
                if !shipped.is_empty() {
                    let _ = inputs.send(Input::Appended(shipped));
                }
            }));
        }
        {
            let inputs = inputs.clone();
            store.set_durable_listener(Arc::new(move |positions: &[Position]| {
                let _ = inputs.send(Input::Durable(positions.to_vec()));
            }));
        }
        let driver = Driver {
            cluster: cluster.clone(),
            control,
            data,
            raftlog: Some(raftlog),
            raft_dir: raft_dir.to_path_buf(),
            proposals: HashMap::new(),
            tickets: HashMap::new(),
            snapshot_streams: HashMap::new(),
            log_reads: start_log_reader(store.clone(), inputs.clone()),
            shown: empty,
            state_tx,
            began_tx,
            began_changed: false,
            began: BTreeMap::new(),
            unbegun: Unbegun::default(),
            unsynced: Unsynced::default(),
            beginning: BTreeSet::new(),
            restarted: false,
            restart_ticket: None,
            restart_applied: false,
            handovers: BTreeMap::new(),
            began_pending: BTreeMap::new(),
            life_start_ms: cluster.now_ms(),
            lag_refreshed_ms: 0,
            lag_due: BTreeSet::new(),
            gauge_nodes: BTreeMap::new(),
            summary: ActiveSummary::default(),
            pass: PassTimes::default(),
            control_wait_max: Duration::ZERO,
            waits_logged: Instant::now(),
            had_lease: false,
        };
        tokio::spawn(driver.run(input_rx));
        tokio::spawn(dispatch(cluster.clone(), started.inbound));
        Ok(cluster)
    }

    /// This node's id.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// The cluster configuration.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Milliseconds on this node's clock: monotonic, starting from the
    /// wall clock at start so that two lives of a node never reuse times
    /// (the control plane tells its proposals apart by them).
    fn now_ms(&self) -> u64 {
        let elapsed = u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.clock_base_ms.saturating_add(elapsed)
    }

    fn holds_lease(&self) -> bool {
        self.now_ms() < self.lease_until_ms.load(Ordering::Acquire)
    }

    /// The cluster metadata as applied on this node.
    pub fn state(&self) -> ClusterStateSnapshot {
        self.state.borrow().clone()
    }

    /// Every linked checkpoint (List, Stat).
    pub fn checkpoints(&self) -> Vec<CheckpointMeta> {
        self.state()
            .checkpoints()
            .filter(|m| !m.unlinked)
            .cloned()
            .collect()
    }

    /// The Raft leader and term this node knows.
    pub fn leader_and_term(&self) -> (Option<NodeId>, u64) {
        let published = self.published.lock().unwrap_or_else(|p| p.into_inner());
        (published.leader, published.term)
    }

    fn send_input(&self, input: Input) -> CkptResult<()> {
        self.inputs.send(input).map_err(|_| stopped())
    }

    /// `ckpt-tool cluster add-node`: makes `node` a member reached at
    /// `addrs` (a Raft voter; it gets replicas once it asks for a lease).
    ///
    /// # Errors
    /// `ALREADY_EXIST` for a member; `INVALID_PARAMETER` for id 0 or an
    /// address a member uses; TRY_AGAIN without a leader.
    pub async fn add_node(&self, node: NodeId, addrs: NodeAddrs) -> CkptResult<()> {
        let state = self.state();
        if node == 0 {
            return Err(CkptError::new(
                ErrorCode::InvalidParameter,
                "node id 0 is reserved",
            ));
        }
        if state.is_member(node) {
            return Err(CkptError::new(
                ErrorCode::AlreadyExist,
                format!("node {node} is already a member"),
            ));
        }
        let taken: Vec<SocketAddr> = self
            .config
            .nodes
            .iter()
            .filter(|n| state.is_member(n.id))
            .flat_map(|n| [n.client_addr, n.peer_addr, n.admin_addr])
            .chain(
                state
                    .added_addrs()
                    .flat_map(|(_, a)| [a.client_addr, a.peer_addr, a.admin_addr]),
            )
            .collect();
        for addr in [addrs.client_addr, addrs.peer_addr, addrs.admin_addr] {
            if taken.contains(&addr) {
                return Err(CkptError::new(
                    ErrorCode::InvalidParameter,
                    format!("address {addr} is already used by a member"),
                ));
            }
        }
        self.propose(Command::AddNode { node, addrs }).await?;
        Ok(())
    }

    /// `ckpt-tool cluster remove-node`: `node` (dead) leaves the cluster;
    /// its replicas are placed on the other live members.
    ///
    /// # Errors
    /// `NOT_EXIST` for a non-member; `BAD_OPERATION` for a live node, the
    /// last member, or one holding the only in-sync copy of a checkpoint.
    pub async fn remove_node(&self, node: NodeId) -> CkptResult<()> {
        if let Some(refused) = self.state().removal_refused(node) {
            return Err(refused);
        }
        self.propose(Command::RemoveNode { node }).await?;
        Ok(())
    }

    /// Proposes `command` and waits until it is applied on this node.
    /// While no Raft leader is known the proposal is retried for a while.
    ///
    /// # Errors
    /// The command's refusal (`Applied::Failed`), TRY_AGAIN without a
    /// leader or when the proposal did not commit in time.
    pub async fn propose(&self, command: Command) -> CkptResult<Applied> {
        let deadline = tokio::time::Instant::now() + NO_LEADER_RETRY;
        loop {
            let (reply, rx) = oneshot::channel();
            self.send_input(Input::Propose {
                command: command.clone(),
                reply,
            })?;
            match rx.await.map_err(|_| stopped())? {
                Ok(Applied::Failed(error)) => return Err(error),
                Ok(applied) => return Ok(applied),
                // Refused before reaching Raft (no leader yet): retry.
                Err(error)
                    if error.code == ErrorCode::TryAgain
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(self.config.tick_ms.clamp(10, 100)))
                        .await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Creates checkpoint `name` (or opens the identical existing one):
    /// proposes `Create`, then waits until its active replica created the
    /// instance (COLLOCATED: until it is in the registry). Returns the
    /// instance and whether it was created by this call, or by an earlier
    /// attempt of the same client request (`origin`) that created it and
    /// then answered TRY_AGAIN because it did not become writable in time.
    ///
    /// # Errors
    /// `ALREADY_EXIST` when `name` exists with other attributes; TRY_AGAIN
    /// without a Raft leader; validation errors of the attributes.
    pub async fn create(
        &self,
        name: CheckpointName,
        attributes: CreationAttributes,
        origin: Option<WriteOrigin>,
    ) -> CkptResult<(InstanceId, bool)> {
        let command = Command::Create {
            name: name.clone(),
            attributes: attributes.clone(),
            creator: self.me,
        };
        match self.propose(command).await {
            Ok(Applied::Created { meta }) => {
                if let Err(error) = self.await_ready(meta.instance).await {
                    if let Some(origin) = origin {
                        self.unready_creates.note(origin, meta.instance);
                    }
                    return Err(error);
                }
                Ok((meta.instance, true))
            }
            Ok(other) => Err(CkptError::new(
                ErrorCode::Library,
                format!("Create applied as {other:?}"),
            )),
            Err(error) if error.code == ErrorCode::AlreadyExist => {
                let existing = self.state().lookup(&name).cloned();
                match existing {
                    Some(meta) if same_attributes(&meta.attributes, &attributes) => {
                        self.await_ready(meta.instance).await?;
                        let created = origin
                            .is_some_and(|o| self.unready_creates.take(o) == Some(meta.instance));
                        Ok((meta.instance, created))
                    }
                    Some(meta) => Err(CkptError::new(
                        ErrorCode::AlreadyExist,
                        meta.attributes.mismatch(&name, &attributes),
                    )),
                    None => Err(error),
                }
            }
            Err(error) => Err(error),
        }
    }

    /// Ok when a name missing from this node's state is missing from the
    /// cluster: this node leads, has applied everything committed and
    /// holds its lease (a quorum heard from it lately: no newer leader).
    /// Otherwise TRY_AGAIN: a leader just elected may not have applied a
    /// Create its predecessor committed, and a deposed one may not know.
    fn miss_is_final(&self) -> CkptResult<()> {
        let (leader, caught_up) = {
            let published = self.published.lock().unwrap_or_else(|p| p.into_inner());
            (published.leader, published.leader_caught_up)
        };
        if leader == Some(self.me) && caught_up && self.holds_lease() {
            Ok(())
        } else {
            Err(try_again(format!(
                "node {} is not a control-plane leader that has applied its log",
                self.me
            )))
        }
    }

    /// The instance `name` refers to. On a local miss the Raft leader is
    /// asked (this node may be behind), and the answer is waited for here.
    ///
    /// # Errors
    /// `NOT_EXIST`; TRY_AGAIN when no leader is known, or the leader has
    /// not applied its log yet (just elected).
    pub async fn lookup(&self, name: &CheckpointName) -> CkptResult<InstanceId> {
        if let Some(meta) = self.state().lookup(name) {
            return Ok(meta.instance);
        }
        let missing = || {
            CkptError::new(
                ErrorCode::NotExist,
                format!("checkpoint {name} does not exist"),
            )
        };
        let (leader, _) = self.leader_and_term();
        let leader = match leader {
            Some(leader) if leader == self.me => {
                return Err(match self.miss_is_final() {
                    Ok(()) => missing(),
                    Err(not_final) => not_final,
                })
            }
            Some(leader) => leader,
            None => return Err(try_again("no Raft leader is known")),
        };
        let found = match self
            .forward(leader, ForwardRequest::Lookup { name: name.clone() })
            .await?
        {
            ForwardOk::Found(found) => found,
            other => return Err(unexpected_forward(other)),
        };
        let Some(instance) = found else {
            return Err(missing());
        };
        let instance = InstanceId(instance);
        // Catch up with the leader before answering, so that the caller's
        // next request finds the instance here.
        let mut state = self.state.clone();
        let _ = tokio::time::timeout(READY_TIMEOUT, async {
            loop {
                if state.borrow_and_update().get(instance).is_some() {
                    return;
                }
                if state.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        Ok(instance)
    }

    /// The checkpoint was opened on this node (counts cluster-wide; adds a
    /// replica here for DISTRIBUTED / ALL_OPEN_ARE_REPLICAS).
    ///
    /// # Errors
    /// As [`Cluster::propose`].
    pub async fn opened(&self, instance: InstanceId) -> CkptResult<()> {
        self.propose(Command::Opened {
            instance,
            node: self.me,
        })
        .await
        .map(|_| ())
    }

    /// The last handle of the checkpoint on this node closed.
    ///
    /// # Errors
    /// As [`Cluster::propose`].
    pub async fn closed(&self, instance: InstanceId) -> CkptResult<()> {
        self.propose(Command::Closed {
            instance,
            node: self.me,
        })
        .await
        .map(|_| ())
    }

    /// Removes `name`; the instance is destroyed on every replica once it
    /// is open nowhere (the leader proposes that).
    ///
    /// # Errors
    /// `NOT_EXIST`; as [`Cluster::propose`].
    pub async fn delete(&self, name: CheckpointName) -> CkptResult<()> {
        self.propose(Command::Unlink { name }).await.map(|_| ())
    }

    /// Changes the retention duration cluster-wide.
    ///
    /// # Errors
    /// As [`Cluster::propose`].
    pub async fn set_retention(&self, instance: InstanceId, ns: i64) -> CkptResult<()> {
        self.propose(Command::SetRetention { instance, ns })
            .await
            .map(|_| ())
    }

    /// ActiveReplicaSet from this node: makes it the active replica (a new
    /// epoch) and waits until it may write.
    ///
    /// # Errors
    /// TRY_AGAIN when this node is not an in-sync replica (yet); as
    /// [`Cluster::propose`].
    pub async fn set_active(&self, instance: InstanceId) -> CkptResult<()> {
        self.propose(Command::SetActive {
            instance,
            node: self.me,
        })
        .await?;
        self.await_ready(instance).await
    }

    /// Where requests for `instance` go: `Ok(None)` here, `Ok(Some(node))`.
    fn route(&self, instance: InstanceId) -> CkptResult<Option<NodeId>> {
        let state = self.state();
        let meta = state.get(instance).ok_or_else(|| not_exist(instance))?;
        match meta.active {
            Some(node) if node == self.me => Ok(None),
            Some(node) => Ok(Some(node)),
            None if meta.collocated() => Err(CkptError::new(
                ErrorCode::NotExist,
                format!(
                    "checkpoint {} has no active replica: call ActiveReplicaSet",
                    meta.name
                ),
            )),
            None => Err(try_again(format!(
                "checkpoint {} has no active replica (failover in progress)",
                meta.name
            ))),
        }
    }

    /// Applies an update on the checkpoint's active replica — here, or
    /// forwarded — and answers once `need` is met (DESIGN.md §4).
    ///
    /// # Errors
    /// TRY_AGAIN: failover in progress, lease not held, fewer in-sync
    /// replicas than `min_in_sync`, the active node unreachable;
    /// `NOT_EXIST`: a COLLOCATED checkpoint without an active replica; the
    /// store's validation errors.
    pub async fn write(
        &self,
        instance: InstanceId,
        op: Op,
        origin: Option<Origin>,
        need: Need,
    ) -> CkptResult<Outcome> {
        match self.route(instance)? {
            None => self.write_local(instance, op, origin, need).await,
            Some(node) => {
                let request = ForwardRequest::Write {
                    instance: instance.0,
                    op: WireOp::from_op(op)?,
                    origin: origin.map(|o| (o.session, o.request)),
                    need: wire_need(need),
                };
                match self.forward(node, request).await? {
                    ForwardOk::Outcome(outcome) => Ok(outcome.into()),
                    other => Err(unexpected_forward(other)),
                }
            }
        }
    }

    /// Checks that this node may write `instance` now.
    fn check_writable(&self, instance: InstanceId) -> CkptResult<Epoch> {
        let state = self.state();
        let meta = state.get(instance).ok_or_else(|| not_exist(instance))?;
        if meta.active != Some(self.me) {
            return Err(try_again(format!(
                "node {} is not the active replica of checkpoint {}",
                self.me, meta.name
            )));
        }
        if self.began.borrow().get(&instance) != Some(&meta.epoch) {
            return Err(try_again(format!(
                "checkpoint {}: epoch {} is still starting on this node",
                meta.name, meta.epoch.0
            )));
        }
        if !self.holds_lease() {
            return Err(try_again(format!(
                "node {} does not hold its lease",
                self.me
            )));
        }
        Ok(meta.epoch)
    }

    async fn write_local(
        &self,
        instance: InstanceId,
        op: Op,
        origin: Option<Origin>,
        need: Need,
    ) -> CkptResult<Outcome> {
        let epoch = self.check_writable(instance)?;
        let (tx, rx) = oneshot::channel();
        let inputs = self.inputs.clone();
        let ticket = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Answered on the writer thread: a write of this epoch goes
        // straight to the driver as a ticket, so the request's task wakes
        // once, when the write may be answered.
        let reply = move |result: CkptResult<Committed>| {
            let committed = match result {
                Ok(committed) => committed,
                Err(error) => {
                    let _ = tx.send(Written::Answered(Err(error)));
                    return;
                }
            };
            let Some(position) = committed.position else {
                let _ = tx.send(Written::Answered(Ok(committed.outcome)));
                return;
            };
            if position.epoch < epoch {
                let _ = tx.send(Written::Earlier(committed.outcome));
                return;
            }
            let outcome = committed.outcome;
            let reply: TicketReply = Box::new(move |released: CkptResult<()>| {
                let _ = tx.send(Written::Answered(released.map(|()| outcome)));
            });
            // A stopped driver drops the reply, and with it `tx`: the
            // request is answered "stopped".
            let _ = inputs.send(Input::Register {
                ticket,
                position,
                need,
                reply,
            });
        };
        let now = now_ns();
        if let Err(submission) =
            self.store
                .try_submit_ordered(op, origin, Durability::Written, now, reply)
        {
            // The writer's queue is full: wait for room on a blocking
            // thread, never on a runtime worker.
            tokio::task::spawn_blocking(move || submission.wait())
                .await
                .map_err(|e| CkptError::new(ErrorCode::Library, e.to_string()))?;
        }
        match rx.await.map_err(|_| stopped())? {
            Written::Answered(result) => result,
            Written::Earlier(outcome) => {
                // A retried origin first applied in an earlier epoch: it
                // is safe once everything here is, up to the last entry.
                if let Some(last) = self.store.position(instance)? {
                    self.wait_ticket(last, need).await?;
                }
                Ok(outcome)
            }
        }
    }

    async fn wait_ticket(&self, position: Position, need: Need) -> CkptResult<()> {
        let ticket = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.send_input(Input::Register {
            ticket,
            position,
            need,
            reply: Box::new(move |result| {
                let _ = tx.send(result);
            }),
        })?;
        rx.await.map_err(|_| stopped())?
    }

    /// Reads `instance`: here when this node is its active replica, or
    /// when `local_ok` (DISTRIBUTED / ALL_OPEN_ARE_REPLICAS openers) and
    /// this node holds a replica; else on the active replica.
    ///
    /// # Errors
    /// The store's errors; as [`Cluster::write`] for routing.
    pub async fn read(
        &self,
        instance: InstanceId,
        request: ReadRequest,
        local_ok: bool,
    ) -> CkptResult<ReadReply> {
        let state = self.state();
        let meta = state.get(instance).ok_or_else(|| not_exist(instance))?;
        let here = meta.active == Some(self.me)
            || (meta.replicas.contains(&self.me) && (local_ok || meta.active.is_none()));
        if here {
            return self.read_local(instance, request).await;
        }
        match self.route(instance)? {
            None => self.read_local(instance, request).await,
            Some(node) => match self
                .forward(
                    node,
                    ForwardRequest::Read {
                        instance: instance.0,
                        request,
                    },
                )
                .await?
            {
                ForwardOk::Read(reply) => Ok(reply),
                other => Err(unexpected_forward(other)),
            },
        }
    }

    async fn read_local(
        &self,
        instance: InstanceId,
        request: ReadRequest,
    ) -> CkptResult<ReadReply> {
        reads::serve_async(&self.store, instance, request).await
    }

    /// Waits until every in-sync replica holds everything written to
    /// `instance` before the call.
    ///
    /// # Errors
    /// As [`Cluster::write`].
    pub async fn synchronize(&self, instance: InstanceId) -> CkptResult<()> {
        match self.route(instance)? {
            None => self.synchronize_local(instance).await,
            Some(node) => match self
                .forward(
                    node,
                    ForwardRequest::Synchronize {
                        instance: instance.0,
                    },
                )
                .await?
            {
                ForwardOk::Done => Ok(()),
                other => Err(unexpected_forward(other)),
            },
        }
    }

    async fn synchronize_local(&self, instance: InstanceId) -> CkptResult<()> {
        self.check_writable(instance)?;
        let store = self.store.clone();
        let last = tokio::task::spawn_blocking(move || store.position(instance))
            .await
            .map_err(|e| CkptError::new(ErrorCode::Library, e.to_string()))??;
        match last {
            Some(position) => self.wait_ticket(position, Need::AllInSync).await,
            None => Ok(()),
        }
    }

    /// Waits until the active replica of `instance` may write (created the
    /// instance, or began its epoch). COLLOCATED without an active replica:
    /// at once.
    ///
    /// # Errors
    /// TRY_AGAIN after [`READY_TIMEOUT`] or when the active node is
    /// unreachable.
    pub async fn await_ready(&self, instance: InstanceId) -> CkptResult<()> {
        let active = {
            let state = self.state();
            let meta = state.get(instance).ok_or_else(|| not_exist(instance))?;
            meta.active
        };
        match active {
            None => Ok(()),
            Some(node) if node == self.me => self.await_ready_local(instance).await,
            Some(node) => match self
                .forward(
                    node,
                    ForwardRequest::AwaitReady {
                        instance: instance.0,
                    },
                )
                .await?
            {
                ForwardOk::Done => Ok(()),
                other => Err(unexpected_forward(other)),
            },
        }
    }

    /// Waits until this node holds an in-sync replica of `instance` (a
    /// DISTRIBUTED / ALL_OPEN_ARE_REPLICAS checkpoint just opened here, whose
    /// openers read and subscribe locally), at most [`READY_TIMEOUT`].
    ///
    /// # Errors
    /// TRY_AGAIN after the timeout; `NOT_EXIST` once it is gone.
    pub async fn await_local_replica(&self, instance: InstanceId) -> CkptResult<()> {
        let mut state = self.state.clone();
        let wait = async {
            loop {
                let in_sync = {
                    let state = state.borrow_and_update();
                    let meta = state.get(instance).ok_or_else(|| not_exist(instance))?;
                    meta.in_sync.contains(&self.me)
                };
                if in_sync && matches!(self.store.replica_position(instance), Ok(Some(_))) {
                    return Ok(());
                }
                // The store's replica grows without a state change: look
                // again at the next change or every 10 ms.
                let _ = tokio::time::timeout(Duration::from_millis(10), state.changed()).await;
            }
        };
        tokio::time::timeout(READY_TIMEOUT, wait)
            .await
            .unwrap_or_else(|_| {
                Err(try_again(format!(
                    "the replica of instance {} on node {} did not catch up in time",
                    instance.0, self.me
                )))
            })
    }

    async fn await_ready_local(&self, instance: InstanceId) -> CkptResult<()> {
        let mut began = self.began.clone();
        let mut state = self.state.clone();
        let wait = async {
            loop {
                let epoch = {
                    let state = state.borrow_and_update();
                    let meta = match state.get(instance) {
                        Some(meta) => Some(meta),
                        // Created through a node that is ahead of this one:
                        // not applied here yet.
                        None if instance >= state.next_instance() => None,
                        None => return Err(not_exist(instance)),
                    };
                    match meta {
                        None => None,
                        Some(meta) if meta.active != Some(self.me) => {
                            return Err(try_again(format!(
                                "node {} is no longer the active replica of instance {}",
                                self.me, instance.0
                            )))
                        }
                        // Writes that need every in-sync replica are refused
                        // below `min_in_sync`; a new checkpoint's backups
                        // join the set once they hold its creation.
                        Some(meta)
                            if Need::for_flags(meta.attributes.creation_flags)
                                == Need::AllInSync
                                && meta.in_sync.len()
                                    < self.config.min_in_sync.min(meta.replicas.len()) =>
                        {
                            None
                        }
                        Some(meta) => Some(meta.epoch),
                    }
                };
                let begun =
                    epoch.is_some() && began.borrow_and_update().get(&instance) == epoch.as_ref();
                // Writable means the lease too: a node that just started or
                // just caught up its Raft log gets it a heartbeat later.
                if begun && self.holds_lease() {
                    return Ok(());
                }
                let tick = Duration::from_millis(self.config.tick_ms.max(1));
                tokio::select! {
                    changed = began.changed() => changed.map_err(|_| stopped())?,
                    changed = state.changed() => changed.map_err(|_| stopped())?,
                    () = tokio::time::sleep(tick), if begun => {}
                }
            }
        };
        tokio::time::timeout(READY_TIMEOUT, wait)
            .await
            .unwrap_or_else(|_| {
                Err(try_again(format!(
                    "instance {} did not become writable in time",
                    instance.0
                )))
            })
    }

    /// Sends `request` to `to` and waits for its answer.
    async fn forward(&self, to: NodeId, request: ForwardRequest) -> CkptResult<ForwardOk> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, rx) = oneshot::channel();
        self.forwards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, PendingForward { to, reply });
        self.metrics.forwarded.inc();
        // The route was chosen from an earlier state: if the target has died
        // since, its failover may already have failed the forwards it found
        // (the runtime publishes the state first, then fails them), and
        // this one would wait out FORWARD_TIMEOUT.
        let target_dead = !self.state().node_alive(to);
        if target_dead
            || !self
                .transport
                .send(to, &PeerMessage::Forward { id, request })
        {
            self.forget_forward(id);
            return Err(try_again(format!("node {to} is unreachable")));
        }
        match tokio::time::timeout(FORWARD_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(stopped()),
            Err(_) => {
                self.forget_forward(id);
                Err(try_again(format!("node {to} did not answer in time")))
            }
        }
    }

    fn forget_forward(&self, id: u64) {
        self.forwards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// Fails every request forwarded to `node` (it died).
    fn fail_forwards_to(&self, node: NodeId) {
        let failed: Vec<PendingForward> = {
            let mut forwards = self.forwards.lock().unwrap_or_else(|p| p.into_inner());
            let ids: Vec<u64> = forwards
                .iter()
                .filter(|(_, p)| p.to == node)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| forwards.remove(&id))
                .collect()
        };
        for pending in failed {
            let _ = pending
                .reply
                .send(Err(try_again(format!("node {node} failed"))));
        }
    }

    /// Serves a request a peer forwarded, and answers it.
    async fn serve_forward(self: Arc<Self>, from: NodeId, id: u64, request: ForwardRequest) {
        self.metrics.forwarded_in.inc();
        let result = match request {
            ForwardRequest::Write {
                instance,
                op,
                origin,
                need,
            } => self
                .write_local(
                    InstanceId(instance),
                    op.into_op(),
                    origin.map(|(session, request)| Origin { session, request }),
                    from_wire_need(need),
                )
                .await
                .map(|o| ForwardOk::Outcome(o.into())),
            ForwardRequest::Read { instance, request } => self
                .read_local(InstanceId(instance), request)
                .await
                .map(ForwardOk::Read),
            ForwardRequest::Synchronize { instance } => self
                .synchronize_local(InstanceId(instance))
                .await
                .map(|()| ForwardOk::Done),
            ForwardRequest::AwaitReady { instance } => self
                .await_ready_local(InstanceId(instance))
                .await
                .map(|()| ForwardOk::Done),
            ForwardRequest::Lookup { name } => match self.state().lookup(&name) {
                Some(meta) => Ok(ForwardOk::Found(Some(meta.instance.0))),
                None => self.miss_is_final().map(|()| ForwardOk::Found(None)),
            },
        };
        self.transport
            .send(from, &PeerMessage::ForwardReply { id, result });
    }

    /// GET /cluster (plan8.md): nodes, leader, term, and every checkpoint
    /// with its replicas, active replica, epoch, in-sync set and — on its
    /// active node — each backup's lag.
    pub fn cluster_json(&self, listed: Listed) -> serde_json::Value {
        let state = self.state();
        let (leader, term, lag) = {
            let published = self.published.lock().unwrap_or_else(|p| p.into_inner());
            (published.leader, published.term, published.lag.clone())
        };
        // The members: the file's nodes at the file's addresses, the ones
        // added since at theirs (a node removed is no longer listed).
        let mut nodes: Vec<(NodeId, SocketAddr, SocketAddr)> = self
            .config
            .nodes
            .iter()
            .filter(|n| state.is_member(n.id))
            .map(|n| (n.id, n.client_addr, n.admin_addr))
            .collect();
        for (id, addrs) in state.added_addrs() {
            if !nodes.iter().any(|(n, _, _)| *n == id) {
                nodes.push((id, addrs.client_addr, addrs.admin_addr));
            }
        }
        nodes.sort_unstable();
        let nodes: Vec<serde_json::Value> = nodes
            .into_iter()
            .map(|(id, client_addr, admin_addr)| {
                serde_json::json!({
                    "id": id,
                    "client_addr": client_addr.to_string(),
                    "admin_addr": admin_addr.to_string(),
                    "alive": state.node_alive(id),
                })
            })
            .collect();
        let live = state.nodes().filter(|(_, alive)| *alive).count();
        let checkpoints: Vec<serde_json::Value> = state
            .checkpoints()
            .filter(|m| match listed {
                Listed::All => true,
                Listed::None => false,
                Listed::Unsettled => {
                    state.is_under_replicated(m, live)
                        || m.active.is_none()
                        || lag.get(&m.instance).is_some_and(|behind| {
                            behind.iter().any(|(_, records, _)| *records > 0)
                        })
                }
            })
            .map(|m| {
                let lag: Vec<serde_json::Value> = lag
                    .get(&m.instance)
                    .map(|lag| {
                        lag.iter()
                            .map(|(node, records, bytes)| {
                                serde_json::json!({"node": node, "records": records, "bytes": bytes})
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                serde_json::json!({
                    "name": m.name.to_string(),
                    "instance": m.instance.0,
                    "replicas": m.replicas,
                    "active": m.active,
                    "epoch": m.epoch.0,
                    "in_sync": m.in_sync,
                    "lag": lag,
                })
            })
            .collect();
        serde_json::json!({
            "node_id": self.me,
            "leader": leader,
            "term": term,
            "under_replicated": state.under_replicated(),
            "checkpoint_count": state.checkpoint_count(),
            "listed": listed.as_str(),
            "nodes": nodes,
            "checkpoints": checkpoints,
        })
    }

    /// GET /checksums (plan8.md): the checksum of every checkpoint this
    /// node holds a replica of, at its last applied position.
    pub async fn checksums_json(&self) -> serde_json::Value {
        let state = self.state();
        let held: Vec<(String, InstanceId)> = state
            .checkpoints()
            .filter(|m| m.replicas.contains(&self.me))
            .map(|m| (m.name.to_string(), m.instance))
            .collect();
        let store = self.store.clone();
        let sums = tokio::task::spawn_blocking(move || {
            held.into_iter()
                .filter_map(|(name, instance)| {
                    store
                        .checksum(instance)
                        .ok()
                        .map(|(position, sum)| (name, instance, position, sum))
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let checkpoints: Vec<serde_json::Value> = sums
            .into_iter()
            .map(|(name, instance, position, sum)| {
                serde_json::json!({
                    "name": name,
                    "instance": instance.0,
                    "epoch": position.epoch.0,
                    "seq": position.seq.0,
                    "checksum": format!("{sum:016x}"),
                })
            })
            .collect();
        serde_json::json!({"node_id": self.me, "checkpoints": checkpoints})
    }

    /// Stops the runtime (the driver, the transport).
    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}

/// Whether an open with `b` finds the checkpoint created with `a`: the
/// same attributes, the retention duration aside (DESIGN.md §2: it is
/// changed by RetentionDurationSet, and an open with another one is an open
/// of the same checkpoint, as on a single node).
fn same_attributes(a: &CreationAttributes, b: &CreationAttributes) -> bool {
    let mut b = b.clone();
    b.retention_duration_ns = a.retention_duration_ns;
    *a == b
}

fn unexpected_forward(ok: ForwardOk) -> CkptError {
    CkptError::new(
        ErrorCode::Library,
        format!("unexpected answer from a peer: {ok:?}"),
    )
}

/// Routes what peers send: cores' messages to the driver, forwarded
/// requests to their own tasks, answers to their waiters.
async fn dispatch(cluster: Arc<Cluster>, mut inbound: mpsc::Receiver<(NodeId, PeerMessage)>) {
    loop {
        let next = tokio::select! {
            _ = cluster.shutdown.cancelled() => return,
            next = inbound.recv() => next,
        };
        let Some((from, message)) = next else { return };
        match message {
            PeerMessage::Control(msg) => {
                let _ = cluster
                    .inputs
                    .send(Input::Control(from, msg, Instant::now()));
            }
            PeerMessage::Data(msg) => {
                let _ = cluster.inputs.send(Input::Data(from, msg));
            }
            PeerMessage::Forward { id, request } => {
                tokio::spawn(cluster.clone().serve_forward(from, id, request));
            }
            PeerMessage::ForwardReply { id, result } => {
                let pending = cluster
                    .forwards
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                match pending {
                    Some(pending) if pending.to == from => {
                        let _ = pending.reply.send(result);
                    }
                    Some(pending) => {
                        tracing::warn!(
                            from,
                            expected = pending.to,
                            id,
                            "a forward reply from the wrong node; ignored"
                        );
                        cluster
                            .forwards
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(id, pending);
                    }
                    // Timed out meanwhile.
                    None => {}
                }
            }
        }
    }
}

/// The node's summary of the checkpoints it is active for, kept from each
/// checkpoint's refresh (a node may be active for a hundred thousand:
/// nothing here walks them all).
#[derive(Debug, Default)]
struct ActiveSummary {
    /// By instance: the most records a backup is behind, and whether a
    /// replica is outside the in-sync set.
    each: HashMap<InstanceId, (u64, bool)>,
    /// How many checkpoints have each most-behind figure.
    lags: BTreeMap<u64, usize>,
    out_of_sync: usize,
}

impl ActiveSummary {
    /// `instance`'s figures now (`None`: not active here).
    fn set(&mut self, instance: InstanceId, figures: Option<(u64, bool)>) {
        if let Some((lag, out)) = self.each.remove(&instance) {
            if let Some(count) = self.lags.get_mut(&lag) {
                *count -= 1;
                if *count == 0 {
                    self.lags.remove(&lag);
                }
            }
            if out {
                self.out_of_sync -= 1;
            }
        }
        if let Some((lag, out)) = figures {
            self.each.insert(instance, (lag, out));
            *self.lags.entry(lag).or_default() += 1;
            if out {
                self.out_of_sync += 1;
            }
        }
    }

    fn active(&self) -> usize {
        self.each.len()
    }

    fn out_of_sync(&self) -> usize {
        self.out_of_sync
    }

    fn lag_max(&self) -> u64 {
        self.lags.last_key_value().map_or(0, |(lag, _)| *lag)
    }
}

/// What woke the driver for a pass.
enum Woke {
    Tick,
    Input(Input),
    /// Changes left for a later pass (see [`Unsynced`]).
    Unsynced,
}

/// Where one pass of the driver spent its time (logged when it held up
/// Raft's ticks).
#[derive(Debug, Default)]
struct PassTimes {
    /// In the control plane: stepping Raft and applying committed entries.
    raft: Duration,
    /// Waiting for the Raft log to be durable.
    persist: Duration,
    persisted_entries: usize,
    /// Whether a persist held a snapshot installed from the leader.
    snapshot: bool,
    /// Publishing the state and acting on changed checkpoints.
    sync: Duration,
    /// Carrying out the data plane's outputs.
    outputs: Duration,
}

/// The task owning the cores.
struct Driver {
    cluster: Arc<Cluster>,
    control: ControlPlane,
    data: DataPlane,
    /// `None` only while a persist runs on a blocking thread.
    raftlog: Option<RaftLog>,
    /// Where the Raft log is (a compaction writes `raft.snap` there).
    raft_dir: PathBuf,
    proposals: HashMap<Ticket, oneshot::Sender<Result<Applied, CkptError>>>,
    tickets: HashMap<u64, TicketReply>,
    /// Snapshots being streamed to backups: the permit to read the next part.
    snapshot_streams: HashMap<(InstanceId, NodeId), std::sync::mpsc::SyncSender<()>>,
    /// Catch-up reads of the log, answered by one thread in batches.
    log_reads: std::sync::mpsc::Sender<LogRead>,
    /// The state last published.
    shown: ClusterStateSnapshot,
    state_tx: watch::Sender<ClusterStateSnapshot>,
    began_tx: watch::Sender<Arc<BTreeMap<InstanceId, Epoch>>>,
    /// `began` changed since it was last published.
    began_changed: bool,
    began: BTreeMap<InstanceId, Epoch>,
    /// Active here in an epoch not begun yet: what `retry_begins` visits.
    unbegun: Unbegun,
    /// Checkpoints changed in `shown` that the driver has not acted on yet.
    unsynced: Unsynced,
    /// Creations and epoch starts under way here.
    beginning: BTreeSet<(InstanceId, Epoch)>,
    /// NodeRestarted{me} was applied in this life.
    restarted: bool,
    /// The ticket of this life's NodeRestarted proposal.
    restart_ticket: Option<Ticket>,
    /// Epochs this node became active in by a handover (ActiveReplicaSet,
    /// or an epoch of unknown origin at start): (epoch, the previous active
    /// replica if known, until when it may still hold its lease). Writes
    /// wait until it stepped down (it sent a message of the new epoch) or
    /// its lease must have expired.
    handovers: BTreeMap<InstanceId, (Epoch, Option<NodeId>, u64)>,
    /// Epochs begun in the store that wait for their handover to end.
    began_pending: BTreeMap<InstanceId, Epoch>,
    /// When this life started (the runtime's clock).
    life_start_ms: u64,
    /// This life's NodeRestarted was applied: every checkpoint this node
    /// was active for before is in a new epoch. Until then it begins none
    /// (see `begin`).
    restart_applied: bool,
    lag_refreshed_ms: u64,
    /// Instances whose gauges are to be refreshed: their metadata changed,
    /// or the data plane visited them, since their last refresh.
    lag_due: BTreeSet<InstanceId>,
    /// The checkpoints with per-checkpoint gauges (the in-sync size and
    /// writes held), and the backups each has a lag series for.
    gauge_nodes: BTreeMap<InstanceId, Vec<NodeId>>,
    /// The node's summary of the checkpoints it is active for.
    summary: ActiveSummary,
    /// Where the current pass spends its time.
    pass: PassTimes,
    /// The longest a Raft message waited in the input queue since
    /// `waits_logged` (logged at most once a second).
    control_wait_max: Duration,
    waits_logged: Instant,
    had_lease: bool,
}

impl Driver {
    fn now_ms(&self) -> u64 {
        self.cluster.now_ms()
    }

    async fn run(mut self, mut inputs: mpsc::UnboundedReceiver<Input>) {
        let tick_ms = self.cluster.config.tick_ms.max(1);
        let mut tick = tokio::time::interval(Duration::from_millis(tick_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let shutdown = self.cluster.shutdown.clone();
        // A pass this long holds up Raft's heartbeats and lease renewals
        // for half an election timeout: logged, with where it went, and so
        // is a Raft message that waited this long behind other inputs.
        let slow = Duration::from_millis(self.cluster.config.election_timeout_ms() / 2);
        // Everything the log held: publish it and act on it.
        self.sync_state();
        loop {
            let woke = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                // Before the inputs: a flood of them (a failover's catch-ups
                // for thousands of checkpoints) must not starve Raft's
                // heartbeats and the lease requests; a tick is ready at most
                // once a tick_ms, so it cannot starve the inputs.
                _ = tick.tick() => Woke::Tick,
                input = inputs.recv() => match input {
                    Some(input) => Woke::Input(input),
                    None => break,
                },
                // Changes left for a later pass: no waiting.
                () = std::future::ready(()), if !self.unsynced.is_empty() => Woke::Unsynced,
            };
            let started = Instant::now();
            let what = match &woke {
                Woke::Tick => "tick",
                Woke::Input(_) => "inputs",
                Woke::Unsynced => "changes left",
            };
            self.pass = PassTimes::default();
            let mut inputs_taken = 0;
            match woke {
                Woke::Tick => self.tick(),
                Woke::Input(input) => {
                    self.input(input);
                    inputs_taken = 1;
                    while inputs_taken < INPUT_BATCH_MAX {
                        match inputs.try_recv() {
                            Ok(more) => self.input(more),
                            Err(_) => break,
                        }
                        inputs_taken += 1;
                    }
                }
                Woke::Unsynced => {}
            }
            let handled = started.elapsed();
            if !self.process().await {
                shutdown.cancel();
                break;
            }
            let took = started.elapsed();
            self.cluster
                .metrics
                .pass_seconds
                .observe(took.as_secs_f64());
            if self.waits_logged.elapsed() >= Duration::from_secs(1) {
                let waited = std::mem::take(&mut self.control_wait_max);
                self.waits_logged = Instant::now();
                if waited >= slow {
                    tracing::warn!(
                        waited_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
                        "a Raft message waited behind other inputs in the runtime's queue"
                    );
                }
            }
            if took >= slow {
                let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                let pass = &self.pass;
                tracing::warn!(
                    took_ms = ms(took),
                    woke = what,
                    inputs = inputs_taken,
                    handled_ms = ms(handled),
                    raft_ms = ms(pass.raft),
                    persist_ms = ms(pass.persist),
                    persisted_entries = pass.persisted_entries,
                    snapshot = pass.snapshot,
                    sync_ms = ms(pass.sync),
                    outputs_ms = ms(pass.outputs),
                    "a runtime pass held up Raft's ticks"
                );
            }
        }
        // Whoever waits gets an answer.
        for (_, reply) in self.tickets.drain() {
            reply(Err(stopped()));
        }
        for (_, reply) in self.proposals.drain() {
            let _ = reply.send(Err(stopped()));
        }
    }

    /// Carries out a Raft log compaction on a blocking thread: encoding the
    /// whole cluster state and writing it durably took 100–300 ms at 50,000
    /// checkpoints, and on this task it held up Raft's ticks and the lease.
    /// The control plane starts no other until this one is handed back.
    fn compact(&self, compaction: Compaction) {
        let dir = self.raft_dir.clone();
        let inputs = self.cluster.inputs.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let index = compaction.index();
            // Answered whatever happens: without an answer the control
            // plane would start no other compaction, and the log would grow
            // for the rest of the process's life.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let snap = compaction.encode();
                raftlog::write_snapshot(&dir, &snap).map(|_| snap)
            }));
            let result = match result {
                Ok(Ok(snap)) => Ok((snap, started.elapsed())),
                Ok(Err(e)) => Err(format!("Raft log compaction at index {index}: {e}")),
                Err(_) => Err(format!("Raft log compaction at index {index} panicked")),
            };
            let _ = inputs.send(Input::Compacted(result));
        });
    }

    fn input(&mut self, input: Input) {
        let now = self.now_ms();
        match input {
            Input::Compacted(Ok((snap, took))) => {
                self.cluster
                    .metrics
                    .raft_compaction_seconds
                    .observe(took.as_secs_f64());
                tracing::debug!(
                    index = snap.get_metadata().index,
                    bytes = snap.get_data().len(),
                    took_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
                    "raft log compacted"
                );
                // Outside `process` the log is here (it is taken only while
                // a persist runs).
                if let Some(log) = self.raftlog.as_mut() {
                    log.snapshot_written(&snap);
                }
                self.control.compacted(snap);
            }
            Input::Compacted(Err(error)) => {
                // As when the log itself cannot be written: the disk is
                // failing or full, and the node stops rather than go on
                // with a log it cannot keep bounded.
                tracing::error!(%error, "writing a Raft snapshot failed; stopping the cluster runtime");
                self.cluster.shutdown.cancel();
            }
            Input::Control(from, msg, queued) => {
                self.control_wait_max = self.control_wait_max.max(queued.elapsed());
                if matches!(msg, ControlMessage::RaftPart { .. }) {
                    self.cluster.metrics.raft_parts.inc();
                }
                self.control.step(from, msg, now);
            }
            Input::Data(from, msg) => self.data.on_message(from, msg, now),
            Input::Appended(entries) => self.data.on_appended(&entries, now),
            Input::Durable(positions) => self.data.on_local_durable(&positions),
            Input::Propose { command, reply } => match self.control.propose(command) {
                Ok(ticket) => {
                    self.proposals.insert(ticket, reply);
                }
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            },
            Input::Register {
                ticket,
                position,
                need,
                reply,
            } => {
                self.tickets.insert(ticket, reply);
                self.data.register(ticket, position, need);
            }
            Input::ReplicaDone { instance, result } => match result {
                Ok(position) => self.data.on_replica_durable(position),
                Err(error) => {
                    tracing::warn!(instance = instance.0, %error, "the store refused replicated entries; catching up");
                    self.catch_up_again(instance, now);
                }
            },
            Input::EntriesRead {
                for_node,
                instance,
                after,
                result,
            } => match result {
                Ok(EntriesAfter::Entries(entries)) => {
                    let shipped = entries
                        .into_iter()
                        .map(|(lsn, e)| ShippedEntry {
                            instance: e.instance,
                            epoch: e.epoch,
                            seq: e.seq,
                            lsn,
                            bytes: e.encode(),
                        })
                        .collect();
                    self.data
                        .on_entries_read(for_node, instance, after, shipped, now);
                }
                Ok(EntriesAfter::Gone) => self.data.on_entries_gone(for_node, instance, now),
                Err(error) => {
                    tracing::warn!(instance = instance.0, for_node, %error, "reading entries for a backup failed");
                    self.data.on_read_failed(for_node, instance);
                }
            },
            Input::SnapshotPart {
                to,
                last,
                index,
                done,
                bytes,
            } => {
                if index == 0 {
                    tracing::info!(
                        instance = last.instance.0,
                        to,
                        epoch = last.epoch.0,
                        seq = last.seq.0,
                        "streaming a snapshot to a backup whose log cannot be continued"
                    );
                }
                self.cluster.metrics.snapshot_parts_sent.inc();
                if done {
                    self.snapshot_streams.remove(&(last.instance, to));
                    self.cluster.metrics.snapshots_sent.inc();
                }
                self.data
                    .on_snapshot_part(to, last, index, done, bytes, now);
            }
            Input::SnapshotFailed {
                to,
                instance,
                error,
            } => {
                tracing::warn!(instance = instance.0, to, %error, "a snapshot for a backup failed");
                self.snapshot_streams.remove(&(instance, to));
                self.data.on_read_failed(to, instance);
            }
            Input::SnapshotPartDone {
                instance,
                last,
                index,
                done,
                result,
            } => match result {
                Ok(position) if done => {
                    tracing::info!(
                        instance = instance.0,
                        epoch = position.epoch.0,
                        seq = position.seq.0,
                        parts = index + 1,
                        "installed a snapshot from the active replica"
                    );
                    self.cluster.metrics.snapshots_installed.inc();
                    self.data.on_replica_durable(position);
                }
                Ok(_) => self
                    .data
                    .on_snapshot_part_durable(instance, last, index, now),
                Err(error) => {
                    tracing::warn!(instance = instance.0, index, %error, "the store refused a snapshot part; catching up");
                    self.catch_up_again(instance, now);
                }
            },
            Input::Begun {
                instance,
                epoch,
                result,
                created,
            } => self.begun(instance, epoch, result, created),
        }
    }

    fn tick(&mut self) {
        let now = self.now_ms();
        self.control.tick(now);
        // The lease as seen from this node's clock, conservatively: the
        // longest of a few steps ahead for which it still holds.
        let step = self.cluster.config.tick_ms.max(1);
        let mut until = 0;
        for k in [8u64, 4, 2, 1] {
            let at = now.saturating_add(step.saturating_mul(k));
            if self.control.holds_lease(at) {
                until = at;
                break;
            }
        }
        self.cluster.lease_until_ms.store(until, Ordering::Release);
        let held = until > now;
        // Before the data plane's tick, which decides on it. Fresh means
        // the data plane knows what this node applied: not while changes
        // wait for a later pass.
        self.data
            .set_control_fresh(held && self.unsynced.is_empty());
        self.data.tick(now);
        let active_somewhere = !self.began.is_empty();
        if self.had_lease && !held && active_somewhere {
            self.cluster.metrics.lease_expiries.inc();
            tracing::warn!(
                node = self.cluster.me,
                "lease expired while active; writes answer TRY_AGAIN"
            );
        }
        self.had_lease = held;
        self.cluster.metrics.lease_held.set(i64::from(held));
        let dropped = self.cluster.transport.dropped();
        let counted = self.cluster.metrics.peer_dropped.get();
        self.cluster
            .metrics
            .peer_dropped
            .inc_by(dropped.saturating_sub(counted));
        let leader = self.control.leader();
        let term = self.control.term();
        self.cluster
            .metrics
            .raft_leader
            .set(i64::try_from(leader.unwrap_or(0)).unwrap_or(0));
        self.cluster
            .metrics
            .raft_term
            .set(i64::try_from(term).unwrap_or(i64::MAX));
        {
            let mut published = self
                .cluster
                .published
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            published.leader = leader;
            published.term = term;
            published.leader_caught_up = self.control.leader_caught_up();
        }
        if !self.restarted && leader.is_some() && self.proposals.len() < 1024 {
            // A restart closed every handle this node had: tell the
            // cluster once per life (its open counts forget this node).
            if let Ok(ticket) = self.control.propose(Command::NodeRestarted {
                node: self.cluster.me,
            }) {
                let (reply, _) = oneshot::channel();
                self.proposals.insert(ticket, reply);
                self.restarted = true;
                self.restart_ticket = Some(ticket);
            }
        }
        if now.saturating_sub(self.lag_refreshed_ms) >= LAG_REFRESH_MS {
            self.lag_refreshed_ms = now;
            self.refresh_lag();
        }
        self.end_handovers();
        self.retry_begins();
    }

    /// Sets the per-checkpoint gauges (lag per backup, in-sync size, writes
    /// held; unless `checkpoint_metrics` is off), the node's summary of
    /// them and the lag `/cluster` shows, for the checkpoints this node is
    /// active for. Only those whose metadata changed, or that the data
    /// plane visited, since the last refresh are looked at: the others'
    /// figures still hold, and a node may hold a million checkpoints.
    fn refresh_lag(&mut self) {
        let me = self.cluster.me;
        let per_checkpoint = self.cluster.config.checkpoint_metrics;
        self.lag_due.extend(self.data.take_visited());
        // At most LAG_REFRESH_MAX per refresh, the rest at the next ones:
        // a start or a failover changes every checkpoint at once.
        let due: Vec<InstanceId> = self.lag_due.iter().take(LAG_REFRESH_MAX).copied().collect();
        for instance in &due {
            self.lag_due.remove(instance);
        }
        let metrics = &self.cluster.metrics;
        let mut lag = Vec::with_capacity(due.len());
        for instance in due {
            let id = instance.0.to_string();
            let old_nodes = self.gauge_nodes.remove(&instance).unwrap_or_default();
            let Some(meta) = self.shown.get(instance).filter(|m| m.active == Some(me)) else {
                // Deleted, or no longer active here: its series go rather
                // than show stale values (absent ones are not an error).
                for node in old_nodes {
                    let labels = [id.as_str(), &node.to_string()];
                    let _ = metrics.lag_records.remove_label_values(&labels);
                    let _ = metrics.lag_bytes.remove_label_values(&labels);
                }
                let _ = metrics.in_sync.remove_label_values(&[id.as_str()]);
                let _ = metrics.held_by_lag.remove_label_values(&[id.as_str()]);
                self.summary.set(instance, None);
                lag.push((instance, None));
                continue;
            };
            let behind = self.data.lag(instance);
            let most = behind.iter().map(|(_, records, _)| *records).max();
            self.summary.set(
                instance,
                Some((most.unwrap_or(0), meta.in_sync.len() < meta.replicas.len())),
            );
            if !per_checkpoint {
                lag.push((instance, Some(behind)));
                continue;
            }
            for (node, records, bytes) in &behind {
                let node = node.to_string();
                metrics
                    .lag_records
                    .with_label_values(&[id.as_str(), node.as_str()])
                    .set(i64::try_from(*records).unwrap_or(i64::MAX));
                metrics
                    .lag_bytes
                    .with_label_values(&[id.as_str(), node.as_str()])
                    .set(i64::try_from(*bytes).unwrap_or(i64::MAX));
            }
            // Backups no longer replicas.
            for node in old_nodes {
                if !behind.iter().any(|(n, _, _)| *n == node) {
                    let labels = [id.as_str(), &node.to_string()];
                    let _ = metrics.lag_records.remove_label_values(&labels);
                    let _ = metrics.lag_bytes.remove_label_values(&labels);
                }
            }
            metrics
                .in_sync
                .with_label_values(&[id.as_str()])
                .set(i64::try_from(meta.in_sync.len()).unwrap_or(i64::MAX));
            metrics
                .held_by_lag
                .with_label_values(&[id.as_str()])
                .set(i64::try_from(self.data.tracker().held_by_lag(instance)).unwrap_or(i64::MAX));
            self.gauge_nodes
                .insert(instance, behind.iter().map(|(n, _, _)| *n).collect());
            lag.push((instance, Some(behind)));
        }
        metrics
            .active_checkpoints
            .set(i64::try_from(self.summary.active()).unwrap_or(i64::MAX));
        metrics
            .active_out_of_sync
            .set(i64::try_from(self.summary.out_of_sync()).unwrap_or(i64::MAX));
        metrics
            .lag_records_max
            .set(i64::try_from(self.summary.lag_max()).unwrap_or(i64::MAX));
        if lag.is_empty() {
            return;
        }
        let mut published = self
            .cluster
            .published
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (instance, behind) in lag {
            match behind {
                Some(behind) => published.lag.insert(instance, behind),
                None => published.lag.remove(&instance),
            };
        }
    }

    /// Carries out what the cores asked for. False: a fatal failure (the
    /// Raft log could not be made durable); the runtime stops.
    async fn process(&mut self) -> bool {
        let mut sliced = false;
        loop {
            let mut progressed = false;
            loop {
                let raft = Instant::now();
                let ready = self.control.ready();
                self.pass.raft += raft.elapsed();
                let Some(mut ready) = ready else { break };
                progressed = true;
                if let Some(persist) = ready.persist.take() {
                    if !persist.is_empty() {
                        let Some(mut log) = self.raftlog.take() else {
                            return false;
                        };
                        self.pass.persisted_entries += persist.entries.len();
                        self.pass.snapshot |= persist.snapshot.is_some();
                        let persisting = Instant::now();
                        let done = tokio::task::spawn_blocking(move || {
                            let result = log.persist(&persist);
                            (log, result)
                        })
                        .await;
                        self.pass.persist += persisting.elapsed();
                        match done {
                            Ok((log, Ok(()))) => self.raftlog = Some(log),
                            Ok((_, Err(error))) => {
                                tracing::error!(%error, "persisting the Raft log failed; stopping the cluster runtime");
                                return false;
                            }
                            Err(error) => {
                                tracing::error!(%error, "the Raft log persist task failed");
                                return false;
                            }
                        }
                    }
                }
                if let Some(compaction) = ready.compaction.take() {
                    self.compact(compaction);
                }
                // Durable: now the messages may go.
                for (to, msg) in std::mem::take(&mut ready.messages) {
                    self.cluster.transport.send(to, &PeerMessage::Control(msg));
                }
                let applied = std::mem::take(&mut ready.applied);
                let changed = !applied.is_empty() || ready.state_replaced;
                // Answered once the new state is published, so that a
                // proposer finds what it proposed in `state()`.
                let mut answers = Vec::new();
                for (ticket, command, outcome) in applied {
                    match &command {
                        Command::Failover { node } => {
                            self.cluster.metrics.failovers.inc();
                            tracing::info!(node, "failover applied");
                        }
                        // Only this life's proposal counts: the log replays
                        // the NodeRestarted of earlier lives (ticket None).
                        // Refused (no leader, ...): propose it again.
                        Command::NodeRestarted { node }
                            if *node == self.cluster.me
                                && ticket.is_some()
                                && ticket == self.restart_ticket =>
                        {
                            if matches!(outcome, Applied::Failed(_)) {
                                self.restarted = false;
                                self.restart_ticket = None;
                            } else {
                                self.restart_applied = true;
                            }
                        }
                        _ => {}
                    }
                    if let Some(ticket) = ticket {
                        if let Some(reply) = self.proposals.remove(&ticket) {
                            answers.push((reply, outcome));
                        }
                    }
                }
                let raft = Instant::now();
                self.control.advance(ready);
                self.pass.raft += raft.elapsed();
                if changed {
                    let sync = Instant::now();
                    self.sync_state();
                    self.pass.sync += sync.elapsed();
                }
                for (reply, outcome) in answers {
                    let _ = reply.send(Ok(outcome));
                }
            }
            // One slice per pass: a failover's changes to every checkpoint
            // must not keep Raft's ticks and the lease waiting.
            if !sliced {
                sliced = true;
                let sync = Instant::now();
                self.sync_slice();
                self.pass.sync += sync.elapsed();
            }
            let executing = Instant::now();
            let outputs = self.data.drain();
            if !outputs.is_empty() {
                progressed = true;
                for output in outputs {
                    self.execute(output);
                }
            }
            self.pass.outputs += executing.elapsed();
            if !progressed {
                self.publish_began();
                return true;
            }
        }
    }

    /// Publishes the applied state and notes what changed, to be acted on
    /// a slice per pass ([`Self::sync_slice`]): only the instances the
    /// applied commands touched are compared, so a failover of thousands of
    /// checkpoints (thousands of `EpochStarted` commits in many readies)
    /// does not cost the whole registry per ready.
    fn sync_state(&mut self) {
        let changes = self.control.take_changes();
        let new = Arc::new(self.control.state().clone());
        let old = std::mem::replace(&mut self.shown, new.clone());
        self.unsynced.note_changes(&changes, &old, &new);
        self.cluster
            .metrics
            .sync_backlog
            .set(i64::try_from(self.unsynced.len()).unwrap_or(i64::MAX));
        let _ = self.state_tx.send(new.clone());
        if changes.everything || changes.nodes {
            self.sync_peers(&new);
        }
        // After the publication: a forward registered after this scan finds
        // its target dead in the published state (see `forward`).
        if changes.everything || changes.nodes {
            for (node, alive) in new.nodes() {
                if !alive && old.node_alive(node) {
                    self.cluster.fail_forwards_to(node);
                }
            }
        }
    }

    /// Acts on up to [`SYNC_SLICE`] of the checkpoints whose metadata
    /// changed, lowest instance first: the data plane learns the replica
    /// set, epochs this node is now active for begin, those it no longer is
    /// end.
    fn sync_slice(&mut self) {
        if self.unsynced.is_empty() {
            return;
        }
        let me = self.cluster.me;
        let now = self.now_ms();
        let state = self.shown.clone();
        let slice = self.unsynced.take(SYNC_SLICE);
        {
            let mut primary_of = self
                .cluster
                .primary_of
                .write()
                .unwrap_or_else(|p| p.into_inner());
            for (instance, _) in &slice {
                if state.get(*instance).is_some_and(|m| m.active == Some(me)) {
                    primary_of.insert(*instance);
                } else {
                    primary_of.remove(instance);
                }
            }
        }
        for (instance, before) in slice {
            self.act_on(&state, instance, before.as_deref(), now);
            self.unbegun.note(me, instance, &state, &self.began);
            self.lag_due.insert(instance);
        }
        let left = self.unsynced.len();
        if left > 0 {
            self.cluster.metrics.sync_deferred.inc();
        }
        self.cluster
            .metrics
            .sync_backlog
            .set(i64::try_from(left).unwrap_or(i64::MAX));
    }

    /// Acts on `instance`'s change from `before` (what this node last acted
    /// on) to its metadata in `state`.
    fn act_on(
        &mut self,
        state: &ClusterState,
        instance: InstanceId,
        before: Option<&CheckpointMeta>,
        now: u64,
    ) {
        let me = self.cluster.me;
        let Some(meta) = state.get(instance) else {
            let Some(meta) = before else { return };
            self.data.on_instance_removed(instance);
            self.handovers.remove(&instance);
            self.began_pending.remove(&instance);
            if self.began.remove(&instance).is_some() {
                self.began_changed = true;
            }
            if meta.replicas.contains(&me) {
                self.destroy_locally(instance);
            }
            return;
        };
        if before == Some(meta) {
            return;
        }
        if before.is_some_and(|b| b.epoch != meta.epoch) {
            self.cluster.metrics.epoch_changes.inc();
        }
        let local = self.cluster.store.replica_position(instance).ok().flatten();
        self.data.on_metadata(&self.replica_set(meta), local, now);
        if meta.active == Some(me) {
            if before.is_none_or(|b| b.epoch != meta.epoch) {
                self.note_handover(before, meta, state, now);
            }
            if self.began.get(&instance) != Some(&meta.epoch) {
                self.begin(meta, local);
            }
            if meta.unlinked && !before.is_some_and(|b| b.unlinked) {
                self.unlink_locally(meta);
            }
        } else {
            self.handovers.remove(&instance);
            self.began_pending.remove(&instance);
            if self.began.remove(&instance).is_some() {
                self.began_changed = true;
            }
        }
    }

    /// Peers follow the membership: a node added is connected to, a node
    /// removed is no longer (nor accepted).
    fn sync_peers(&self, state: &ClusterState) {
        let transport = &self.cluster.transport;
        let wanted = peer_addrs(&self.cluster.config, self.cluster.me, state);
        for (id, addr) in &wanted {
            transport.add_peer(*id, *addr);
        }
        for id in transport.peers() {
            if !wanted.iter().any(|(n, _)| *n == id) {
                tracing::info!(node = id, "no longer a member: its peer link is closed");
                transport.remove_peer(id);
            }
        }
    }

    fn replica_set(&self, meta: &CheckpointMeta) -> ReplicaSet {
        ReplicaSet {
            instance: meta.instance,
            replicas: meta.replicas.clone(),
            active: meta.active,
            epoch: meta.epoch,
            epoch_starts: meta.epoch_starts.clone(),
            in_sync: meta.in_sync.clone(),
            in_sync_generation: meta.in_sync_generation,
            min_in_sync: self.cluster.config.min_in_sync,
        }
    }

    /// Publishes the epochs begun, once per pass of [`Self::process`]
    /// however many changed (a copy per change is quadratic in a failover).
    fn publish_began(&mut self) {
        if std::mem::take(&mut self.began_changed) {
            let _ = self.began_tx.send(Arc::new(self.began.clone()));
        }
    }

    /// This node is the active replica of `meta`'s epoch: create the
    /// instance (its first epoch) or begin the epoch in the store.
    fn begin(&mut self, meta: &CheckpointMeta, local: Option<Position>) {
        let instance = meta.instance;
        let epoch = meta.epoch;
        if self.beginning.contains(&(instance, epoch)) {
            return;
        }
        // Not before this life's NodeRestarted has moved every checkpoint
        // this node was active for to a new epoch: resuming the old one
        // after a power cut could reuse the positions of entries the
        // backups hold and this log lost, and the replicas would differ at
        // the same (epoch, seq) (the cluster simulator's run 101).
        // `retry_begins` comes back to it.
        if !self.restart_applied {
            return;
        }
        let store = &self.cluster.store;
        let inputs = self.cluster.inputs.clone();
        match local {
            Some(position) if position.epoch >= epoch => {
                // Begun before (this node restarted as the active replica).
                self.serve(instance, epoch);
                self.data.on_epoch_resumed(position, self.cluster.now_ms());
            }
            Some(_) => {
                self.beginning.insert((instance, epoch));
                store.begin_epoch(instance, epoch, move |result| {
                    let _ = inputs.send(Input::Begun {
                        instance,
                        epoch,
                        result,
                        created: false,
                    });
                });
            }
            // Never created anywhere: its first epoch, or a COLLOCATED
            // checkpoint's first ActiveReplicaSet (no epoch start was ever
            // recorded past the initial one, so no replica holds entries).
            None if meta.epoch_starts.iter().all(|(e, _)| *e == Epoch(1)) => {
                self.beginning.insert((instance, epoch));
                let op = Op::CreateCheckpoint {
                    name: meta.name.clone(),
                    attributes: meta.attributes.clone(),
                    instance: Some(instance),
                    epoch,
                };
                store.submit_ordered(op, None, Durability::Durable, now_ns(), move |result| {
                    let result = result.and_then(|committed| {
                        committed.position.ok_or_else(|| {
                            CkptError::new(
                                ErrorCode::Library,
                                format!("creating instance {} logged nothing", instance.0),
                            )
                        })
                    });
                    let _ = inputs.send(Input::Begun {
                        instance,
                        epoch,
                        result,
                        created: true,
                    });
                });
            }
            None => {
                tracing::error!(
                    instance = instance.0,
                    epoch = epoch.0,
                    "named active replica of an instance this node does not hold"
                );
            }
        }
    }

    fn begun(
        &mut self,
        instance: InstanceId,
        epoch: Epoch,
        result: CkptResult<Position>,
        created: bool,
    ) {
        self.beginning.remove(&(instance, epoch));
        let current = self
            .shown
            .get(instance)
            .filter(|m| m.active == Some(self.cluster.me) && m.epoch == epoch)
            .cloned();
        let position = match result {
            Ok(position) => position,
            Err(error) => {
                tracing::warn!(instance = instance.0, epoch = epoch.0, %error, "starting an epoch failed; retrying");
                return;
            }
        };
        let Some(meta) = current else {
            // Superseded meanwhile.
            return;
        };
        self.serve(instance, epoch);
        if created && epoch == Epoch(1) {
            tracing::debug!(
                instance = instance.0,
                epoch = epoch.0,
                seq = position.seq.0,
                "active replica of a new checkpoint"
            );
        } else {
            // One line per epoch a node takes over (a failover or
            // ActiveReplicaSet): who ordered which epoch can be read back
            // from the logs (tests/cluster_partition.rs does).
            tracing::info!(
                instance = instance.0,
                epoch = epoch.0,
                seq = position.seq.0,
                "epoch begun as active replica"
            );
        }
        self.data.on_epoch_begun(position, self.cluster.now_ms());
        let recorded = meta.epoch_starts.iter().any(|(e, _)| *e == epoch);
        if !created || !recorded {
            let command = Command::EpochStarted {
                instance,
                epoch,
                start_seq: position.seq,
            };
            match self.control.propose(command) {
                Ok(ticket) => {
                    let (reply, _) = oneshot::channel();
                    self.proposals.insert(ticket, reply);
                }
                Err(error) => {
                    tracing::warn!(instance = instance.0, %error, "proposing EpochStarted failed")
                }
            }
        }
    }

    /// This node became the active replica of `meta`'s new epoch. When the
    /// previous active replica is alive (ActiveReplicaSet), it may still
    /// hold a lease granted before the change and, until it applies it,
    /// serve reads and acknowledge WR_ACTIVE_REPLICA writes as the active
    /// replica: this node waits for it to step down (it sends a message of
    /// the new epoch) or for that lease to have expired. A failover needs
    /// no wait (the failed node's lease expired before it was failed over),
    /// nor a creation; an epoch whose origin this life never saw waits from
    /// the start of the life. Found by the cluster simulator (run 94).
    fn note_handover(
        &mut self,
        before: Option<&CheckpointMeta>,
        meta: &CheckpointMeta,
        state: &ClusterState,
        now: u64,
    ) {
        let me = self.cluster.me;
        let wait = handover_wait_ms(&self.cluster.config);
        let entry = match before {
            Some(b) => match b.active {
                Some(previous) if previous != me && state.node_alive(previous) => {
                    Some((Some(previous), now.saturating_add(wait)))
                }
                _ => None,
            },
            None if meta.epoch > Epoch(1) => Some((None, self.life_start_ms.saturating_add(wait))),
            None => None,
        };
        match entry {
            Some((previous, until)) if until > now => {
                self.handovers
                    .insert(meta.instance, (meta.epoch, previous, until));
            }
            _ => {
                self.handovers.remove(&meta.instance);
            }
        }
    }

    /// The epoch is begun here: writes are taken once its handover is over.
    fn serve(&mut self, instance: InstanceId, epoch: Epoch) {
        if self.handover_over(instance, epoch) {
            self.began_pending.remove(&instance);
            self.began.insert(instance, epoch);
            self.began_changed = true;
            self.unbegun
                .note(self.cluster.me, instance, &self.shown, &self.began);
        } else {
            tracing::info!(
                instance = instance.0,
                epoch = epoch.0,
                "epoch begun; writes wait for the previous active replica to step down"
            );
            self.began_pending.insert(instance, epoch);
        }
    }

    fn handover_over(&mut self, instance: InstanceId, epoch: Epoch) -> bool {
        let Some((e, previous, until)) = self.handovers.get(&instance).copied() else {
            return true;
        };
        let over = e != epoch
            || self.now_ms() >= until
            || previous.is_some_and(|p| self.data.heard_in_epoch(instance, p));
        if over {
            self.handovers.remove(&instance);
        }
        over
    }

    /// Epochs whose handover ended since the last tick.
    fn end_handovers(&mut self) {
        let pending: Vec<(InstanceId, Epoch)> =
            self.began_pending.iter().map(|(i, e)| (*i, *e)).collect();
        for (instance, epoch) in pending {
            if self.handover_over(instance, epoch) {
                self.serve(instance, epoch);
            }
        }
    }

    /// Epochs this node should have begun but has not (a failed attempt).
    fn retry_begins(&mut self) {
        let me = self.cluster.me;
        let due: Vec<CheckpointMeta> = self
            .unbegun
            .iter()
            // Acted on, with its newest metadata, in a coming slice.
            .filter(|instance| !self.unsynced.contains(*instance))
            .filter_map(|instance| self.shown.get(instance))
            .filter(|m| {
                m.active == Some(me)
                    && self.began.get(&m.instance) != Some(&m.epoch)
                    && self.began_pending.get(&m.instance) != Some(&m.epoch)
                    && !self.beginning.contains(&(m.instance, m.epoch))
            })
            .cloned()
            .collect();
        for meta in due {
            let local = self
                .cluster
                .store
                .replica_position(meta.instance)
                .ok()
                .flatten();
            self.begin(&meta, local);
        }
    }

    fn unlink_locally(&self, meta: &CheckpointMeta) {
        let name = meta.name.clone();
        let instance = meta.instance;
        self.cluster.store.submit_ordered(
            Op::Unlink { name },
            None,
            Durability::Durable,
            now_ns(),
            move |result| {
                if let Err(error) = result {
                    tracing::warn!(instance = instance.0, %error, "unlinking on the active replica failed");
                }
            },
        );
    }

    fn destroy_locally(&self, instance: InstanceId) {
        if !matches!(self.cluster.store.position(instance), Ok(Some(_))) {
            return;
        }
        self.cluster.store.submit_ordered(
            Op::Destroy { instance },
            None,
            Durability::Durable,
            now_ns(),
            move |result| {
                if let Err(error) = result {
                    tracing::warn!(instance = instance.0, %error, "destroying a replica failed");
                }
            },
        );
    }

    /// Backup: the store refused what the active replica sent (or it did
    /// not decode): ask again from what this node holds that can be
    /// continued (nothing, for a stale instance).
    fn catch_up_again(&mut self, instance: InstanceId, now: u64) {
        let held = self.cluster.store.replica_position(instance).ok().flatten();
        self.data.on_replica_failed(instance, held, now);
    }

    fn execute(&mut self, output: DataOutput) {
        let now = self.now_ms();
        let store = self.cluster.store.clone();
        let inputs = self.cluster.inputs.clone();
        match output {
            DataOutput::Send { to, msg } => {
                self.cluster.transport.send(to, &PeerMessage::Data(msg));
            }
            DataOutput::Apply {
                instance,
                from,
                entries,
            } => {
                let decoded: CkptResult<Vec<Entry>> =
                    entries.iter().map(|w| Entry::decode(&w.bytes)).collect();
                match decoded {
                    Ok(entries) => store.submit_replicated(entries, move |result| {
                        let _ = inputs.send(Input::ReplicaDone { instance, result });
                    }),
                    Err(error) => {
                        tracing::warn!(instance = instance.0, from, %error, "entries from a peer do not decode");
                        self.catch_up_again(instance, now);
                    }
                }
            }
            DataOutput::ReadEntries {
                instance,
                after,
                after_lsn,
                for_node,
                max_bytes,
            } => {
                let (epoch, seq) = after.unwrap_or((Epoch(0), Seq(0)));
                let read = ReadAfter {
                    instance,
                    epoch,
                    seq,
                    max_bytes,
                    after_lsn,
                };
                // The reader thread lives as long as the runtime; should it
                // have died, the read fails like an unreadable log.
                if self
                    .log_reads
                    .send(LogRead {
                        for_node,
                        after,
                        read,
                    })
                    .is_err()
                {
                    let _ = inputs.send(Input::EntriesRead {
                        for_node,
                        instance,
                        after,
                        result: Err(CkptError::new(
                            ErrorCode::Library,
                            "the log reader thread has stopped",
                        )),
                    });
                }
            }
            DataOutput::SendSnapshot { instance, to } => {
                // One part in memory at a time: the reading thread waits for
                // the backup to hold a part before it reads the next, and
                // stops when the stream is replaced or left waiting.
                let (permit, permits) = std::sync::mpsc::sync_channel::<()>(1);
                self.snapshot_streams.insert((instance, to), permit);
                tokio::task::spawn_blocking(move || {
                    let sent =
                        store.stream_snapshot(instance, SNAPSHOT_PART_BYTES, now_ns(), |part| {
                            let bytes = encode_entries(&part.entries);
                            let input = Input::SnapshotPart {
                                to,
                                last: part.last,
                                index: part.index,
                                done: part.done,
                                bytes,
                            };
                            if inputs.send(input).is_err() {
                                return false;
                            }
                            part.done || permits.recv_timeout(SNAPSHOT_PART_WAIT).is_ok()
                        });
                    if let Err(error) = sent {
                        let _ = inputs.send(Input::SnapshotFailed {
                            to,
                            instance,
                            error,
                        });
                    }
                });
            }
            DataOutput::NextSnapshotPart { instance, to } => {
                if let Some(permit) = self.snapshot_streams.get(&(instance, to)) {
                    let _ = permit.try_send(());
                }
            }
            DataOutput::ApplySnapshotPart {
                instance,
                from,
                last,
                index,
                done,
                bytes,
            } => match decode_entries(&bytes) {
                Ok(entries) => store.submit_replicated(entries, move |result| {
                    let _ = inputs.send(Input::SnapshotPartDone {
                        instance,
                        last,
                        index,
                        done,
                        result,
                    });
                }),
                Err(error) => {
                    tracing::warn!(instance = instance.0, from, index, %error, "a snapshot part from a peer does not decode");
                    self.catch_up_again(instance, now);
                }
            },
            DataOutput::Propose(Proposal::SetInSync {
                instance,
                epoch,
                from,
                generation,
                in_sync,
            }) => {
                let command = Command::SetInSync {
                    instance,
                    epoch,
                    from: Some(from),
                    generation: Some(generation),
                    in_sync,
                };
                match self.control.propose(command) {
                    Ok(ticket) => {
                        let (reply, _) = oneshot::channel();
                        self.proposals.insert(ticket, reply);
                    }
                    Err(error) => {
                        tracing::debug!(instance = instance.0, %error, "in-sync change not proposed; the data plane retries")
                    }
                }
            }
            DataOutput::Released(tickets) => {
                for ticket in tickets {
                    if let Some(reply) = self.tickets.remove(&ticket) {
                        reply(Ok(()));
                    }
                }
            }
            DataOutput::Failed(failed) => {
                for (ticket, error) in failed {
                    if let Some(reply) = self.tickets.remove(&ticket) {
                        reply(Err(error));
                    }
                }
            }
            DataOutput::HoldWal(lsn) => store.set_wal_hold(lsn),
        }
    }
}

/// Which checkpoints `/cluster` lists (`?checkpoints=`): every one, none
/// (the summary alone: what a status poll of a large cluster needs), or
/// those needing attention — under-replicated (a replica short or not in
/// sync), without an active replica, or with a backup behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listed {
    /// Every checkpoint (the default).
    All,
    /// None.
    None,
    /// Those needing attention.
    Unsettled,
}

impl Listed {
    /// The query value naming it.
    pub fn as_str(self) -> &'static str {
        match self {
            Listed::All => "all",
            Listed::None => "none",
            Listed::Unsettled => "unsettled",
        }
    }

    /// From the query value.
    ///
    /// # Errors
    /// A message naming the values allowed.
    pub fn parse(value: &str) -> Result<Listed, String> {
        match value {
            "all" => Ok(Listed::All),
            "none" => Ok(Listed::None),
            "unsettled" => Ok(Listed::Unsettled),
            other => Err(format!(
                "checkpoints={other:?}: expected all, none or unsettled\n"
            )),
        }
    }
}

/// The most creates [`UnreadyCreates`] remembers (the oldest go first).
const UNREADY_CREATES_MAX: usize = 4096;

/// Checkpoints created for a client request that then answered TRY_AGAIN
/// (created, not writable within [`READY_TIMEOUT`]), by the request: the
/// client retries the same request, and that retry is answered as the
/// first attempt's outcome, "created" (DESIGN.md §4, exactly once). Kept
/// on the node that proposed the create, in memory: a retry through
/// another node, or after this node restarted, finds the checkpoint
/// existing (created: false).
#[derive(Default)]
struct UnreadyCreates(Mutex<std::collections::VecDeque<(WriteOrigin, InstanceId)>>);

impl UnreadyCreates {
    fn note(&self, origin: WriteOrigin, instance: InstanceId) {
        let mut creates = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if creates.len() >= UNREADY_CREATES_MAX {
            creates.pop_front();
        }
        creates.push_back((origin, instance));
    }

    /// The instance `origin` created, forgotten now that it is answered.
    fn take(&self, origin: WriteOrigin) -> Option<InstanceId> {
        let mut creates = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let at = creates.iter().position(|(o, _)| *o == origin)?;
        creates.remove(at).map(|(_, instance)| instance)
    }
}

/// How long a new active replica waits for the previous one's lease: the
/// lease plus the margin the control plane keeps before a failover.
fn handover_wait_ms(config: &ClusterConfig) -> u64 {
    let margin = config
        .tick_ms
        .saturating_mul(ckpt_replication::config::ELECTION_TICKS as u64);
    config.lease_timeout_ms.saturating_add(margin)
}

/// One catch-up read for the log reader thread.
struct LogRead {
    for_node: NodeId,
    /// The entry the read follows, as the data plane asked for it.
    after: Option<(Epoch, Seq)>,
    read: ReadAfter,
}

/// Most catch-up reads answered by one pass over the log.
const LOG_READ_BATCH_MAX: usize = 4096;

/// Starts the thread that answers catch-up reads of the log: it takes
/// every read queued meanwhile and answers them with one pass over the
/// segments ([`Store::entries_after_many`]). One thread, so that a
/// failover's thousands of catch-ups neither read the log once each nor
/// take every core from Raft's heartbeats. It stops when the runtime drops
/// the sender or stops taking inputs.
fn start_log_reader(
    store: Arc<Store>,
    inputs: mpsc::UnboundedSender<Input>,
) -> std::sync::mpsc::Sender<LogRead> {
    let (tx, rx) = std::sync::mpsc::channel::<LogRead>();
    let spawned = std::thread::Builder::new()
        .name("ckpt-log-reader".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                while batch.len() < LOG_READ_BATCH_MAX {
                    match rx.try_recv() {
                        Ok(more) => batch.push(more),
                        Err(_) => break,
                    }
                }
                let reads: Vec<ReadAfter> = batch.iter().map(|r| r.read).collect();
                let results = store.entries_after_many(&reads);
                for (job, result) in batch.into_iter().zip(results) {
                    let input = Input::EntriesRead {
                        for_node: job.for_node,
                        instance: job.read.instance,
                        after: job.after,
                        result,
                    };
                    if inputs.send(input).is_err() {
                        return;
                    }
                }
            }
        });
    if let Err(error) = spawned {
        // The sender's receiver is gone with the closure: every read then
        // fails with LIBRARY (see `execute`).
        tracing::error!(%error, "the log reader thread could not start");
    }
    tx
}

/// Every member's peer address: the cluster file's, and for members added
/// at run time the address their AddNode recorded. Nodes of the file that
/// are no longer members are left out — unless the state knows no member
/// yet (a node joining, before the leader's snapshot): then the file is all
/// there is to reach the cluster by.
fn peer_addrs(
    config: &ClusterConfig,
    me: NodeId,
    state: &ClusterState,
) -> Vec<(NodeId, SocketAddr)> {
    let knows_members = state.nodes().next().is_some();
    let mut nodes: Vec<(NodeId, SocketAddr)> = config
        .nodes
        .iter()
        .filter(|n| !knows_members || state.is_member(n.id) || n.id == me)
        .map(|n| (n.id, n.peer_addr))
        .collect();
    for (id, addrs) in state.added_addrs() {
        if !nodes.iter().any(|(n, _)| *n == id) {
            nodes.push((id, addrs.peer_addr));
        }
    }
    nodes
}

#[cfg(test)]
mod summary_tests {
    use super::*;

    #[test]
    fn the_summary_follows_each_checkpoint_in_and_out() {
        let mut summary = ActiveSummary::default();
        assert_eq!(
            (summary.active(), summary.out_of_sync(), summary.lag_max()),
            (0, 0, 0)
        );
        summary.set(InstanceId(1), Some((5, false)));
        summary.set(InstanceId(2), Some((9, true)));
        summary.set(InstanceId(3), Some((9, true)));
        assert_eq!(
            (summary.active(), summary.out_of_sync(), summary.lag_max()),
            (3, 2, 9)
        );
        // One of the two furthest behind catches up and rejoins.
        summary.set(InstanceId(2), Some((0, false)));
        assert_eq!(
            (summary.active(), summary.out_of_sync(), summary.lag_max()),
            (3, 1, 9)
        );
        // The other moves away (a handover, a deletion).
        summary.set(InstanceId(3), None);
        assert_eq!(
            (summary.active(), summary.out_of_sync(), summary.lag_max()),
            (2, 0, 5)
        );
        summary.set(InstanceId(3), None);
        summary.set(InstanceId(1), None);
        summary.set(InstanceId(2), None);
        assert_eq!(
            (summary.active(), summary.out_of_sync(), summary.lag_max()),
            (0, 0, 0)
        );
        assert!(summary.lags.is_empty());
    }
}
