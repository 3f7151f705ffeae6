//! [`ControlPlane`]: one node's member of the Raft group, without IO.
//!
//! The driver (the server, or a test harness) feeds it time (`tick`),
//! messages from peers (`step`) and proposals (`propose`), and repeatedly
//! drains [`ControlPlane::ready`]: it persists `persist` durably (fsync),
//! then sends `messages`, acts on `applied`, and hands the ready back with
//! [`ControlPlane::advance`]. That is raft-rs's `Ready` contract
//! (persist before send, advance after persist), with two conveniences:
//!
//! - between `ready()` and `advance()` raft-rs must not be touched; steps,
//!   proposals and ticks arriving meanwhile are queued and run right after
//!   `advance`, so the driver may persist asynchronously;
//! - every ticket gets exactly one answer: the applied command, or a
//!   `Failed(TRY_AGAIN)` when the proposal was dropped or not committed
//!   within `proposal_timeout_ms` (if it commits later it is reported
//!   without its ticket).
//!
//! Leader duties, all driven by the `now_ms` of `tick`/`step`:
//! - leases: every node asks the leader for its lease every
//!   `lease_timeout_ms / 4`; the lease holds while
//!   `now < sent_at of the last granted request + lease_timeout_ms`; the
//!   leader grants only while a quorum has asked within an election timeout
//!   and its own lease runs from the last time a quorum had asked, so a
//!   leader cut off from the majority stops granting (and holding) before a
//!   new leader can be elected;
//! - dead nodes: the leader proposes one `Failover{node}` when a node has
//!   sent no request for `lease_timeout_ms + margin` (`margin` = one election
//!   timeout; a fresh leader counts from its election, so every lease an
//!   earlier leader granted has expired first), and `NodeUp{node}` when a
//!   dead node asks again;
//! - retention: a linked checkpoint open nowhere gets a timer (in memory,
//!   leader only, started afresh on every leader change and so after a
//!   whole-cluster restart); on expiry the leader proposes `Unlink` then
//!   `Destroy`; an unlinked checkpoint open nowhere gets `Destroy`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ckpt_proto::{CheckpointName, CkptError, CkptResult, ErrorCode, TIME_END};
use ckpt_storage::InstanceId;
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfState, Entry, EntryType, Message, MessageType, Snapshot,
};
use raft::storage::MemStorage;
use raft::{GetEntriesContext, RaftState, RawNode, Ready, SnapshotStatus, StateRole, Storage};

use super::message::{
    Compaction, ControlMessage, ControlReady, PersistedRaft, RaftPersist, Ticket,
};
use super::parts::{self, Assembler, RAFT_PART_BYTES};
use super::state::{Applied, Changes, ClusterState, Command};
use crate::config::{ClusterConfig, ELECTION_TICKS, HEARTBEAT_TICKS};
use crate::{NodeId, ReplicationError};

/// Applied entries kept in the in-memory log before a compaction snapshot.
pub const COMPACT_ENTRIES_DEFAULT: u64 = 1024;

/// A compaction also waits for at least one entry per this many
/// checkpoints: it encodes (and the Raft log then writes) the whole
/// registry, so at a fixed interval its cost per entry grew with the
/// registry (a third of a node's CPU at 50,000 checkpoints while a
/// failover's commands applied). Spaced this way it costs at most this
/// many checkpoints' encoding per entry, and the log kept in memory and
/// replayed at a restart is at most a quarter as many entries as there are
/// checkpoints (or `compact_entries`).
const COMPACT_CHECKPOINTS_PER_ENTRY: u64 = 4;

#[cfg(test)]
thread_local! {
    /// Set by the simulator: the election timeout, in ticks, of the next
    /// control plane made on this thread (instead of a random one).
    pub(crate) static SIM_ELECTION_TICKS: std::cell::Cell<Option<usize>> =
        const { std::cell::Cell::new(None) };
}

/// raft-rs storage: MemStorage plus the latest snapshot *with* the cluster
/// state in its data (MemStorage's own snapshots carry no data, so a
/// lagging follower could not be brought up to date from them).
struct ControlStorage {
    mem: MemStorage,
    snapshot: Snapshot,
}

impl Storage for ControlStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.mem.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let meta = self.snapshot.get_metadata();
        if idx == meta.index && idx > 0 {
            return Ok(meta.term);
        }
        self.mem.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.snapshot.get_metadata().index == 0 {
            return Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.snapshot.clone())
    }
}

/// Who the proposer was, carried in the Raft entry's context.
#[derive(serde::Serialize, serde::Deserialize)]
struct ProposalContext {
    node: NodeId,
    incarnation: u64,
    ticket: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Duty {
    Failover(NodeId),
    NodeUp(NodeId),
    Expire(InstanceId),
    Destroy(InstanceId),
}

/// What only the leader keeps, reset on every leader change.
struct LeaderDuties {
    term: u64,
    since_ms: u64,
    /// When each node's last lease request arrived (leader's clock).
    last_request_ms: BTreeMap<NodeId, u64>,
    /// Proposals made for a duty and when, so they are not repeated every
    /// tick (retried after `retry_ms`).
    proposed_ms: BTreeMap<Duty, u64>,
    /// Retention deadlines of linked checkpoints open nowhere.
    retention_timers: RetentionTimers,
    /// Instances changed since the last pass: reconcile their timers.
    retention_dirty: BTreeSet<InstanceId>,
    /// Reconcile every checkpoint's timer (a new leader, a state installed).
    retention_all: bool,
    /// Unlinked and open nowhere: their Destroy is proposed (again after a
    /// retry interval, should it be lost) until they are gone.
    destroy_due: BTreeSet<InstanceId>,
}

/// Retention deadlines (leader's clock, ms), by instance and by time, so
/// that a tick looks only at those due rather than at every checkpoint
/// closed everywhere.
#[derive(Default)]
struct RetentionTimers {
    by_instance: BTreeMap<InstanceId, u64>,
    by_deadline: BTreeSet<(u64, InstanceId)>,
}

impl RetentionTimers {
    /// Starts `instance`'s timer unless one runs.
    fn start(&mut self, instance: InstanceId, at_ms: u64) {
        if let std::collections::btree_map::Entry::Vacant(e) = self.by_instance.entry(instance) {
            e.insert(at_ms);
            self.by_deadline.insert((at_ms, instance));
        }
    }

    fn cancel(&mut self, instance: InstanceId) {
        if let Some(at) = self.by_instance.remove(&instance) {
            self.by_deadline.remove(&(at, instance));
        }
    }

    fn clear(&mut self) {
        self.by_instance.clear();
        self.by_deadline.clear();
    }

    /// The instances whose deadline is `now_ms` or earlier.
    fn due(&self, now_ms: u64) -> impl Iterator<Item = InstanceId> + '_ {
        self.by_deadline
            .range(..=(now_ms, InstanceId(u64::MAX)))
            .map(|(_, i)| *i)
    }
}

enum Deferred {
    Step(Message),
    Propose(Option<u64>, Command),
}

/// One node's control plane (see the module docs).
pub struct ControlPlane {
    id: NodeId,
    raw: RawNode<ControlStorage>,
    state: ClusterState,
    /// What the state changed since the driver last took it (moved out of
    /// the state as commands apply, so the retention pass sees it too).
    changes: Changes,
    /// A membership change was applied: snapshot now, so that a joining
    /// node is sent the state (it cannot replay the log from its start:
    /// the first members come from the cluster file, not from the log).
    compact_now: bool,
    replication_factor: usize,
    /// `placement_avoid_creator` from the configuration.
    avoid_creator: bool,
    lease_timeout_ms: u64,
    tick_ms: u64,
    margin_ms: u64,
    proposal_timeout_ms: u64,
    compact_entries: u64,
    now_ms: u64,
    last_tick_ms: u64,
    incarnation: u64,
    next_ticket: u64,
    tickets: BTreeMap<u64, (u64, Command)>,
    pending: Option<(u64, Ready)>,
    ready_number: u64,
    deferred: VecDeque<Deferred>,
    out_messages: Vec<(NodeId, ControlMessage)>,
    out_applied: Vec<(Option<Ticket>, Command, Applied)>,
    /// A compaction not yet handed to the driver.
    out_compaction: Option<Compaction>,
    /// The index of the compaction the driver is carrying out: no other
    /// starts until it is handed back ([`ControlPlane::compacted`]).
    compacting: Option<u64>,
    /// Followers sent a Raft snapshot in the ready being carried out: its
    /// status is reported once it is advanced (see `advance`).
    snapshots_sent: Vec<u64>,
    /// A Raft message larger than this goes in parts (see [`parts`]).
    part_bytes: usize,
    /// Raft messages sent in parts so far in this life.
    messages_in_parts: u64,
    /// Parts received, by sender.
    assembler: Assembler,
    state_replaced: bool,
    snapshot_index: u64,
    lease_sent_at_ms: Option<u64>,
    /// Grants received and not yet held: (sent_at_ms, commit index the
    /// log must be applied up to first).
    lease_grants: Vec<(u64, u64)>,
    last_lease_request_ms: Option<u64>,
    duties: Option<LeaderDuties>,
}

/// Grants kept while the log catches up (the newest win).
const LEASE_GRANTS_PENDING_MAX: usize = 16;

/// The latest time by which a quorum of the nodes had asked this leader
/// for a lease (a node not heard from yet counts from the election, which a
/// quorum voted for).
fn quorum_heard_ms(d: &LeaderDuties, nodes: &[NodeId]) -> u64 {
    let mut times: Vec<u64> = nodes
        .iter()
        .map(|n| {
            d.last_request_ms
                .get(n)
                .copied()
                .unwrap_or(d.since_ms)
                .max(d.since_ms)
        })
        .collect();
    times.sort_unstable_by(|a, b| b.cmp(a));
    let quorum = nodes.len() / 2 + 1;
    times.get(quorum - 1).copied().unwrap_or(d.since_ms)
}

/// The command in a committed entry (none in the empty entries of new
/// leaders), with the Raft configuration change it carries, if any.
fn command_of(entry: &Entry) -> Option<(Command, Option<ConfChange>)> {
    let (bytes, change) = match entry.get_entry_type() {
        EntryType::EntryNormal => (entry.get_data().to_vec(), None),
        EntryType::EntryConfChange => match ConfChange::parse_from_bytes(entry.get_data()) {
            Ok(cc) => (cc.get_context().to_vec(), Some(cc)),
            Err(e) => {
                tracing::error!(index = entry.index, error = %e, "committed raft configuration change does not decode");
                return None;
            }
        },
        EntryType::EntryConfChangeV2 => {
            tracing::error!(index = entry.index, "unexpected joint configuration change");
            return None;
        }
    };
    if bytes.is_empty() {
        return None;
    }
    match Command::decode(&bytes) {
        Ok(c) => Some((c, change)),
        Err(e) => {
            tracing::error!(index = entry.index, error = %e, "committed raft entry is not a command");
            None
        }
    }
}

/// The Raft configuration change that carries a membership command.
fn conf_change_of(cmd: &Command) -> Option<ConfChange> {
    let (change_type, node) = match cmd {
        Command::AddNode { node, .. } => (ConfChangeType::AddNode, *node),
        Command::RemoveNode { node } => (ConfChangeType::RemoveNode, *node),
        _ => return None,
    };
    let mut cc = ConfChange::default();
    cc.set_change_type(change_type);
    cc.node_id = node;
    cc.context = cmd.encode().into();
    Some(cc)
}

fn raft_error(e: impl std::fmt::Display) -> ReplicationError {
    ReplicationError::Raft(e.to_string())
}

impl ControlPlane {
    /// A node's control plane, restored from what [`crate::raftlog::RaftLog::open`]
    /// read (an empty [`PersistedRaft`] for a new node: every node of the
    /// file starts as a voter with an empty log).
    ///
    /// # Errors
    /// `id` not in the configuration; a persisted log that does not follow
    /// its snapshot, or a snapshot whose state does not decode.
    pub fn new(
        id: NodeId,
        config: &ClusterConfig,
        persisted: PersistedRaft,
        now_ms: u64,
    ) -> Result<ControlPlane, ReplicationError> {
        Self::open(id, config, persisted, now_ms, false)
    }

    /// A node joining a running cluster (`ckpt-server --join`): with an
    /// empty log it is no voter and knows no state until the leader, once
    /// `ckpt-tool cluster add-node` committed, sends it a snapshot. With a
    /// log (it joined before and restarted) it is [`ControlPlane::new`].
    ///
    /// # Errors
    /// As [`ControlPlane::new`].
    pub fn joining(
        id: NodeId,
        config: &ClusterConfig,
        persisted: PersistedRaft,
        now_ms: u64,
    ) -> Result<ControlPlane, ReplicationError> {
        Self::open(id, config, persisted, now_ms, true)
    }

    fn open(
        id: NodeId,
        config: &ClusterConfig,
        persisted: PersistedRaft,
        now_ms: u64,
        join: bool,
    ) -> Result<ControlPlane, ReplicationError> {
        if config.node(id).is_none() {
            return Err(ReplicationError::Raft(format!(
                "node id {id} is not in the cluster file (nodes: {:?})",
                config.node_ids()
            )));
        }
        let nodes = config.node_ids();
        let mem = MemStorage::new();
        let mut snapshot = Snapshot::default();
        let mut snapshot_index = 0;
        let mut voters: Vec<NodeId> = nodes.clone();
        let state = match persisted.snapshot {
            Some(snap) => {
                voters = snap.get_metadata().get_conf_state().voters.clone();
                let state = ClusterState::restore(snap.get_data(), config.replication_factor)
                    .map_err(|e| ReplicationError::Raft(format!("raft snapshot: {}", e.detail)))?
                    .avoiding_creator(config.placement_avoid_creator);
                snapshot_index = snap.get_metadata().index;
                mem.wl().apply_snapshot(snap.clone()).map_err(raft_error)?;
                snapshot = snap;
                state
            }
            None if join => {
                voters.clear();
                ClusterState::new(&[], config.replication_factor)
                    .avoiding_creator(config.placement_avoid_creator)
            }
            None => {
                mem.initialize_with_conf_state(ConfState::from((nodes.clone(), vec![])));
                ClusterState::new(&nodes, config.replication_factor)
                    .avoiding_creator(config.placement_avoid_creator)
            }
        };
        let entries: Vec<Entry> = persisted
            .entries
            .into_iter()
            .filter(|e| e.index > snapshot_index)
            .collect();
        for (i, e) in entries.iter().enumerate() {
            let expected = snapshot_index + 1 + i as u64;
            if e.index != expected {
                return Err(ReplicationError::Raft(format!(
                    "persisted raft log has entry {} where {expected} was expected",
                    e.index
                )));
            }
        }
        mem.wl().append(&entries).map_err(raft_error)?;
        let last_index = snapshot_index + entries.len() as u64;
        if persisted.hard_state != Default::default() {
            let mut hs = persisted.hard_state;
            hs.commit = hs.commit.max(snapshot_index).min(last_index);
            let term = mem.rl().hard_state().term;
            hs.term = hs.term.max(term);
            mem.wl().set_hardstate(hs);
        }
        // Apply what is committed now, so that `state()` is current as soon
        // as the node is constructed; raft-rs then starts from `applied`.
        let commit = mem.rl().hard_state().commit.max(snapshot_index);
        let mut state = state;
        let mut replayed = Vec::new();
        let mut voters_changed = false;
        for e in entries.iter().filter(|e| e.index <= commit) {
            if let Some((cmd, change)) = command_of(e) {
                let applied = state.apply(&cmd);
                // raft-rs starts from the configuration in the storage and
                // takes everything up to `applied` as applied: the changes
                // replayed here are applied to it by hand.
                if let Some(cc) = change.filter(|_| !matches!(applied, Applied::Failed(_))) {
                    match cc.get_change_type() {
                        ConfChangeType::AddNode => voters.push(cc.node_id),
                        ConfChangeType::RemoveNode => voters.retain(|v| *v != cc.node_id),
                        ConfChangeType::AddLearnerNode => {}
                    }
                    voters_changed = true;
                }
                replayed.push((None, cmd, applied));
            }
        }
        if voters_changed {
            voters.sort_unstable();
            voters.dedup();
            mem.wl()
                .set_conf_state(ConfState::from((voters.clone(), vec![])));
        }
        let raft_config = raft::Config {
            id,
            applied: commit,
            election_tick: ELECTION_TICKS,
            heartbeat_tick: HEARTBEAT_TICKS,
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            ..Default::default()
        };
        #[cfg(test)]
        let raft_config = {
            // The simulator's runs must repeat exactly: raft-rs draws the
            // election timeout from `thread_rng` in [min, max), so a
            // range of one is drawn by the simulator instead.
            let mut raft_config = raft_config;
            if let Some(ticks) = SIM_ELECTION_TICKS.with(std::cell::Cell::get) {
                raft_config.min_election_tick = ticks;
                raft_config.max_election_tick = ticks + 1;
            }
            raft_config
        };
        raft_config.validate().map_err(raft_error)?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let storage = ControlStorage { mem, snapshot };
        let mut raw = RawNode::new(&raft_config, storage, &logger).map_err(raft_error)?;
        if nodes == [id] && !join {
            // Alone in the cluster: no one to wait for, lead at once.
            raw.campaign().map_err(raft_error)?;
        }
        let election_ms = config.election_timeout_ms();
        Ok(ControlPlane {
            id,
            raw,
            state,
            changes: Changes::default(),
            compact_now: false,
            replication_factor: config.replication_factor,
            avoid_creator: config.placement_avoid_creator,
            lease_timeout_ms: config.lease_timeout_ms,
            tick_ms: config.tick_ms.max(1),
            margin_ms: election_ms,
            proposal_timeout_ms: config
                .lease_timeout_ms
                .saturating_add(election_ms.saturating_mul(2)),
            compact_entries: config.raft_compact_entries,
            now_ms,
            last_tick_ms: now_ms,
            // Distinguishes this life's tickets from a previous life's
            // proposals still in the log.
            incarnation: now_ms ^ (last_index << 40),
            next_ticket: 1,
            tickets: BTreeMap::new(),
            pending: None,
            ready_number: 0,
            deferred: VecDeque::new(),
            out_messages: Vec::new(),
            out_applied: replayed,
            out_compaction: None,
            compacting: None,
            snapshots_sent: Vec::new(),
            part_bytes: RAFT_PART_BYTES,
            messages_in_parts: 0,
            assembler: Assembler::default(),
            state_replaced: false,
            snapshot_index,
            lease_sent_at_ms: None,
            lease_grants: Vec::new(),
            last_lease_request_ms: None,
            duties: None,
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The replicated metadata as applied on this node.
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// The Raft voters now.
    fn voters(&self) -> Vec<NodeId> {
        self.raw.raft.prs().conf().voters().ids().iter().collect()
    }

    /// What the applied commands changed since the last call (see
    /// [`Changes`]).
    pub fn take_changes(&mut self) -> Changes {
        self.note_changes();
        std::mem::take(&mut self.changes)
    }

    /// Moves what the state changed into what the driver will take, and
    /// has the leader's retention pass look at it.
    fn note_changes(&mut self) {
        let changes = self.state.take_changes();
        if let Some(d) = self.duties.as_mut() {
            if changes.everything {
                d.retention_all = true;
            } else {
                d.retention_dirty.extend(changes.instances.iter().copied());
            }
        }
        self.changes.merge(changes);
    }

    /// The Raft leader this node knows of.
    pub fn leader(&self) -> Option<NodeId> {
        match self.raw.raft.leader_id {
            0 => None,
            id => Some(id),
        }
    }

    /// Whether this node is the Raft leader.
    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The current Raft term.
    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// Index of the last applied log entry.
    pub fn applied_index(&self) -> u64 {
        self.raw.raft.raft_log.applied
    }

    /// Whether this node leads and has applied everything committed, its
    /// own term's first entry included: only then is a name missing from
    /// its state missing from the cluster's (a leader just elected may
    /// not have applied a Create that committed under its predecessor).
    pub fn leader_caught_up(&self) -> bool {
        self.committed_in_term()
            .is_some_and(|commit| self.applied_index() >= commit)
    }

    /// Whether this node holds its lease at `now_ms`: an active replica
    /// serves writes only while this is true.
    pub fn holds_lease(&self, now_ms: u64) -> bool {
        self.lease_sent_at_ms
            .is_some_and(|sent| now_ms < sent.saturating_add(self.lease_timeout_ms))
    }

    /// How long a proposal may take to commit before it is answered TRY_AGAIN.
    #[cfg(test)]
    pub(crate) fn proposal_timeout_ms(&self) -> u64 {
        self.proposal_timeout_ms
    }

    /// Applied entries kept before compacting into a snapshot (tests use small values).
    pub fn set_compact_entries(&mut self, entries: u64) {
        self.compact_entries = entries.max(1);
    }

    /// Largest Raft message sent whole (tests use small values).
    pub fn set_raft_part_bytes(&mut self, bytes: usize) {
        self.part_bytes = bytes.max(1);
    }

    /// Advances time: Raft ticks, lease requests, leader duties, proposal timeouts.
    pub fn tick(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        self.assembler.expire(self.now_ms, parts::RAFT_PART_WAIT_MS);
        self.drive();
    }

    /// A message from `from`.
    pub fn step(&mut self, from: NodeId, msg: ControlMessage, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        match msg {
            ControlMessage::Raft(bytes) => {
                let msg = match Message::parse_from_bytes(&bytes) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(from, error = %e, "undecodable raft message dropped");
                        return;
                    }
                };
                if msg.to != self.id || msg.from != from {
                    tracing::warn!(
                        from,
                        msg_from = msg.from,
                        msg_to = msg.to,
                        "misaddressed raft message dropped"
                    );
                    return;
                }
                self.deferred.push_back(Deferred::Step(msg));
            }
            ControlMessage::RaftPart {
                incarnation,
                message,
                part,
                parts,
                bytes,
            } => {
                if let Some(whole) = self.assembler.add(
                    from,
                    (incarnation, message),
                    (part, parts),
                    bytes,
                    self.now_ms,
                ) {
                    self.step(from, ControlMessage::Raft(whole), now_ms);
                }
            }
            ControlMessage::LeaseRequest { sent_at_ms } => {
                if !self.is_leader() || !self.state.is_member(from) {
                    return;
                }
                let now = self.now_ms;
                let voters = self.voters();
                let Some(d) = self.duties.as_mut() else {
                    // Leader since the last tick: duties start at the next one.
                    return;
                };
                d.last_request_ms.insert(from, now);
                d.last_request_ms.insert(self.id, now);
                // Grant only while a quorum has been heard from within an
                // election timeout: a leader cut off from the majority
                // stops granting before a new leader can be elected, even
                // though raft-rs may take two election timeouts to depose it.
                let heard = quorum_heard_ms(d, &voters);
                // A failover of the requester proposed by this leader and not
                // yet in its log (deferred) or applied: no grant. Once in the
                // log, the index below covers it.
                let failing_over = self.state.node_alive(from)
                    && d.proposed_ms
                        .get(&Duty::Failover(from))
                        .is_some_and(|at| now < at.saturating_add(self.lease_timeout_ms));
                // The grant names the index the requester must have applied
                // before its lease holds: not the commit index but the last
                // entry of this leader's log, so that a Failover of the
                // requester proposed before this grant and committed after
                // it is applied first (cluster simulator, run 47420: a node
                // back from a partition got a lease between the proposal and
                // the commit of its own failover, and served reads in the
                // epoch the failover ended). A leader that has not yet
                // committed an entry of its own term grants nothing.
                if self.committed_in_term().is_some() && !failing_over {
                    let commit = self.raw.raft.raft_log.last_index();
                    if now <= heard.saturating_add(self.margin_ms) {
                        self.out_messages
                            .push((from, ControlMessage::LeaseGrant { sent_at_ms, commit }));
                    }
                }
                if !self.state.node_alive(from) {
                    self.propose_duty(Duty::NodeUp(from), vec![Command::NodeUp { node: from }]);
                }
            }
            ControlMessage::LeaseGrant { sent_at_ms, commit } => {
                if sent_at_ms <= self.now_ms {
                    // Held once the log is applied up to `commit` (see
                    // `promote_grants`, run by `drive` below).
                    self.lease_grants.push((sent_at_ms, commit));
                    if self.lease_grants.len() > LEASE_GRANTS_PENDING_MAX {
                        self.lease_grants.remove(0);
                    }
                }
            }
        }
        self.drive();
    }

    /// Proposes a command; its outcome comes back in a later
    /// [`ControlReady::applied`] with this ticket.
    ///
    /// # Errors
    /// `TRY_AGAIN` when no leader is known or raft refuses the proposal.
    pub fn propose(&mut self, cmd: Command) -> CkptResult<Ticket> {
        if self.leader().is_none() {
            return Err(CkptError::new(
                ErrorCode::TryAgain,
                "no control-plane leader",
            ));
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.tickets.insert(ticket, (self.now_ms, cmd.clone()));
        if self.pending.is_some() {
            self.deferred
                .push_back(Deferred::Propose(Some(ticket), cmd));
            return Ok(Ticket(ticket));
        }
        match self.raw_propose(Some(ticket), &cmd) {
            Ok(()) => Ok(Ticket(ticket)),
            Err(e) => {
                self.tickets.remove(&ticket);
                Err(e)
            }
        }
    }

    fn raw_propose(&mut self, ticket: Option<u64>, cmd: &Command) -> CkptResult<()> {
        let context = match ticket {
            Some(ticket) => postcard::to_allocvec(&ProposalContext {
                node: self.id,
                incarnation: self.incarnation,
                ticket,
            })
            .expect("a proposal context always serializes"),
            None => Vec::new(),
        };
        let proposed = match conf_change_of(cmd) {
            Some(cc) => self.raw.propose_conf_change(context, cc),
            None => self.raw.propose(context, cmd.encode()),
        };
        proposed.map_err(|e| {
            CkptError::new(
                ErrorCode::TryAgain,
                format!("control-plane proposal dropped: {e}"),
            )
        })
    }

    /// The next round of work, if any. Call again only after
    /// [`ControlPlane::advance`].
    pub fn ready(&mut self) -> Option<ControlReady> {
        if self.pending.is_some() {
            return None;
        }
        let mut persist = RaftPersist::default();
        let mut raft_ready = None;
        if self.raw.has_ready() {
            let mut rd = self.raw.ready();
            let messages = rd.take_messages();
            self.queue_raft_messages(messages);
            if rd.snapshot().get_metadata().index > 0 {
                let snap = rd.snapshot().clone();
                self.install_snapshot(&snap);
                persist.snapshot = Some(snap);
            }
            let committed = rd.take_committed_entries();
            self.apply_entries(committed);
            if !rd.entries().is_empty() {
                persist.entries = rd.entries().clone();
                if let Err(e) = self.raw.mut_store().mem.wl().append(rd.entries()) {
                    tracing::error!(error = %e, "raft entries could not be staged");
                }
            }
            if let Some(hs) = rd.hs() {
                self.raw.mut_store().mem.wl().set_hardstate(hs.clone());
                persist.hard_state = Some(hs.clone());
            }
            let messages = rd.take_persisted_messages();
            self.queue_raft_messages(messages);
            raft_ready = Some(rd);
        }
        let state_replaced = std::mem::take(&mut self.state_replaced);
        if raft_ready.is_none()
            && persist.is_empty()
            && self.out_messages.is_empty()
            && self.out_applied.is_empty()
            && !state_replaced
            && self.out_compaction.is_none()
        {
            return None;
        }
        self.ready_number += 1;
        let number = self.ready_number;
        if let Some(rd) = raft_ready {
            self.pending = Some((number, rd));
        }
        Some(ControlReady {
            number,
            persist: (!persist.is_empty()).then_some(persist),
            messages: std::mem::take(&mut self.out_messages),
            applied: std::mem::take(&mut self.out_applied),
            state_replaced,
            compaction: self.out_compaction.take(),
        })
    }

    /// The ready's `persist` is durable and its messages are sent.
    pub fn advance(&mut self, done: ControlReady) {
        if let Some((number, rd)) = self.pending.take() {
            if number != done.number {
                tracing::error!(
                    expected = number,
                    got = done.number,
                    "control ready advanced out of order"
                );
            }
            let mut light = self.raw.advance(rd);
            if let Some(commit) = light.commit_index() {
                self.raw
                    .mut_store()
                    .mem
                    .wl()
                    .mut_hard_state()
                    .set_commit(commit);
            }
            let messages = light.take_messages();
            self.queue_raft_messages(messages);
            let committed = light.take_committed_entries();
            self.apply_entries(committed);
            self.raw.advance_apply();
            self.maybe_compact();
        }
        // raft-rs holds a follower it sent a snapshot to (no appends, only
        // heartbeats) until the snapshot's status is reported. A snapshot
        // lost on the way (a dropped connection, a full send queue) left
        // that follower's control plane behind for as long as this node
        // led (the cluster simulator with compactions every 8 entries, run
        // 11). Reported as sent: the leader probes the follower at the
        // snapshot's index, and a follower that did not get it refuses the
        // probe and is sent another.
        for to in std::mem::take(&mut self.snapshots_sent) {
            self.raw.report_snapshot(to, SnapshotStatus::Finish);
        }
        self.drive();
    }

    fn queue_raft_messages(&mut self, messages: Vec<Message>) {
        for m in messages {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                self.snapshots_sent.push(m.to);
            }
            let bytes = match m.write_to_bytes() {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::error!(error = %e, "raft message could not be encoded");
                    continue;
                }
            };
            if bytes.len() <= self.part_bytes {
                self.out_messages.push((m.to, ControlMessage::Raft(bytes)));
                continue;
            }
            self.messages_in_parts += 1;
            match parts::split(
                self.incarnation,
                self.messages_in_parts,
                &bytes,
                self.part_bytes,
            ) {
                Some(parts) => self
                    .out_messages
                    .extend(parts.into_iter().map(|part| (m.to, part))),
                None => tracing::error!(
                    to = m.to,
                    bytes = bytes.len(),
                    bytes_max = parts::RAFT_MESSAGE_BYTES_MAX,
                    "raft message too large to send, even in parts"
                ),
            }
        }
    }

    fn install_snapshot(&mut self, snap: &Snapshot) {
        match ClusterState::restore(snap.get_data(), self.replication_factor) {
            Ok(state) => {
                let state = state.avoiding_creator(self.avoid_creator);
                self.state = state;
                self.state_replaced = true;
                if let Some(d) = self.duties.as_mut() {
                    d.retention_timers.clear();
                    d.retention_all = true;
                }
            }
            Err(e) => tracing::error!(error = %e, "raft snapshot without a cluster state"),
        }
        let store = self.raw.mut_store();
        if let Err(e) = store.mem.wl().apply_snapshot(snap.clone()) {
            tracing::error!(error = %e, "raft snapshot could not be staged");
        }
        store.snapshot = snap.clone();
        self.snapshot_index = snap.get_metadata().index;
        // The leader's snapshot covers more than a compaction not yet
        // handed out; one being carried out is ignored when it comes back.
        if self.out_compaction.take().is_some() {
            self.compacting = None;
        }
    }

    /// The driver made the snapshot of [`ControlReady::compaction`] durable:
    /// the in-memory log is compacted up to it, and it is what a follower
    /// behind the log is sent from now on. One that an installed snapshot
    /// has overtaken meanwhile is dropped.
    pub fn compacted(&mut self, snap: Snapshot) {
        let index = snap.get_metadata().index;
        if self.compacting == Some(index) {
            self.compacting = None;
        }
        if index > self.snapshot_index {
            self.compact_in_memory(snap);
        }
    }

    /// Drops the in-memory log up to `snap`'s index and makes `snap` what a
    /// follower behind the log is sent. False if raft-rs refused.
    fn compact_in_memory(&mut self, snap: Snapshot) -> bool {
        let index = snap.get_metadata().index;
        let store = self.raw.mut_store();
        if let Err(e) = store.mem.wl().compact(index) {
            tracing::error!(error = %e, index, "raft log compaction failed");
            return false;
        }
        store.snapshot = snap;
        self.snapshot_index = index;
        true
    }

    fn maybe_compact(&mut self) {
        let applied = self.raw.raft.raft_log.applied;
        let now = std::mem::take(&mut self.compact_now) && applied > self.snapshot_index;
        let checkpoints = u64::try_from(self.state.checkpoint_count()).unwrap_or(u64::MAX);
        let interval = self
            .compact_entries
            .max(checkpoints / COMPACT_CHECKPOINTS_PER_ENTRY);
        if !now
            && (self.compacting.is_some() || applied < self.snapshot_index.saturating_add(interval))
        {
            return;
        }
        let term = match self.raw.raft.raft_log.term(applied) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, applied, "no term for the compaction index");
                return;
            }
        };
        let compaction = Compaction::of_state(
            applied,
            term,
            self.raw.raft.prs().conf().to_conf_state(),
            self.state.clone(),
        );
        if !now {
            self.compacting = Some(applied);
            self.out_compaction = Some(compaction);
            return;
        }
        // A membership change: the log in memory is compacted at once, on
        // this thread, so that the very next message to a joining node is
        // this snapshot and not the log from its first entry. Making it
        // durable is only a shorter replay at the next start: handed to the
        // driver unless a compaction is being carried out already (one at a
        // time; the next one covers this).
        let snap = compaction.encode();
        if !self.compact_in_memory(snap.clone()) {
            return;
        }
        if self.compacting.is_none() {
            self.compacting = Some(applied);
            self.out_compaction = Some(Compaction::encoded(snap));
        }
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) {
        for entry in entries {
            let Some((cmd, change)) = command_of(&entry) else {
                continue;
            };
            let affected: Vec<InstanceId> = match &cmd {
                Command::NodeRestarted { node } => self
                    .state
                    .checkpoints()
                    .filter(|m| m.open_on.contains(node))
                    .map(|m| m.instance)
                    .collect(),
                Command::Opened { instance, .. }
                | Command::Closed { instance, .. }
                | Command::SetRetention { instance, .. }
                | Command::Destroy { instance } => vec![*instance],
                _ => Vec::new(),
            };
            let applied = self.state.apply(&cmd);
            if let Some(cc) = change.filter(|_| !matches!(applied, Applied::Failed(_))) {
                match self.raw.apply_conf_change(&cc) {
                    Ok(conf_state) => {
                        tracing::info!(?cmd, voters = ?conf_state.voters, "membership changed");
                        self.raw.mut_store().mem.wl().set_conf_state(conf_state);
                        self.compact_now = true;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, ?cmd, "raft refused a committed configuration change")
                    }
                }
            }
            if let Applied::Created { meta } = &applied {
                self.retention_changed(&[meta.instance]);
            }
            self.retention_changed(&affected);
            self.duty_done(&cmd);
            let ticket = postcard::from_bytes::<ProposalContext>(entry.get_context())
                .ok()
                .filter(|c| c.node == self.id && c.incarnation == self.incarnation)
                .and_then(|c| self.tickets.remove(&c.ticket).map(|_| Ticket(c.ticket)));
            self.out_applied.push((ticket, cmd, applied));
        }
        self.note_changes();
    }

    /// Opened, closed or given a new retention: a running timer starts
    /// over (at the next pass, if the checkpoint is still open nowhere).
    fn retention_changed(&mut self, instances: &[InstanceId]) {
        if let Some(d) = self.duties.as_mut() {
            for i in instances {
                d.retention_timers.cancel(*i);
                d.proposed_ms.remove(&Duty::Expire(*i));
                d.retention_dirty.insert(*i);
            }
        }
    }

    fn duty_done(&mut self, cmd: &Command) {
        let Some(d) = self.duties.as_mut() else {
            return;
        };
        match cmd {
            Command::Failover { node } => {
                d.proposed_ms.remove(&Duty::Failover(*node));
            }
            Command::NodeUp { node } => {
                d.proposed_ms.remove(&Duty::NodeUp(*node));
                // Count from now: it just asked (or we would not have proposed).
                let now = self.now_ms;
                d.last_request_ms.entry(*node).or_insert(now);
            }
            Command::Destroy { instance } => {
                d.proposed_ms.remove(&Duty::Destroy(*instance));
                d.proposed_ms.remove(&Duty::Expire(*instance));
            }
            _ => {}
        }
    }

    /// Proposes leader-duty commands unless the same duty was proposed
    /// within the retry interval.
    fn propose_duty(&mut self, duty: Duty, cmds: Vec<Command>) {
        let now = self.now_ms;
        let retry_ms = self.lease_timeout_ms;
        let Some(d) = self.duties.as_mut() else {
            return;
        };
        if d.proposed_ms
            .get(&duty)
            .is_some_and(|at| now < at.saturating_add(retry_ms))
        {
            return;
        }
        d.proposed_ms.insert(duty, now);
        for cmd in cmds {
            tracing::info!(?cmd, "control-plane leader proposes");
            if self.pending.is_some() {
                self.deferred.push_back(Deferred::Propose(None, cmd));
            } else if let Err(e) = self.raw_propose(None, &cmd) {
                tracing::warn!(error = %e, "leader duty proposal dropped");
            }
        }
    }

    /// Runs what can run now: queued steps and proposals, Raft ticks, lease
    /// requests, leader duties, proposal timeouts.
    fn drive(&mut self) {
        if self.pending.is_some() {
            return;
        }
        while let Some(d) = self.deferred.pop_front() {
            match d {
                Deferred::Step(msg) => {
                    if let Err(e) = self.raw.step(msg) {
                        tracing::debug!(error = %e, "raft message not stepped");
                    }
                }
                Deferred::Propose(ticket, cmd) => {
                    if let Err(e) = self.raw_propose(ticket, &cmd) {
                        if let Some(t) = ticket {
                            if self.tickets.remove(&t).is_some() {
                                self.out_applied
                                    .push((Some(Ticket(t)), cmd, Applied::Failed(e)));
                            }
                        }
                    }
                }
            }
        }
        let mut ticks = 0;
        while self.now_ms >= self.last_tick_ms.saturating_add(self.tick_ms)
            && ticks < 2 * ELECTION_TICKS
        {
            self.raw.tick();
            self.last_tick_ms += self.tick_ms;
            ticks += 1;
        }
        if self.now_ms >= self.last_tick_ms.saturating_add(self.tick_ms) {
            // A long pause: do not replay every missed tick.
            self.last_tick_ms = self.now_ms;
        }
        self.promote_grants();
        self.lease_and_duties();
        self.expire_tickets();
    }

    /// The commit index, once an entry of this leader's own term is
    /// committed (before that, entries of earlier terms may be committed
    /// without this leader knowing it).
    fn committed_in_term(&self) -> Option<u64> {
        let log = &self.raw.raft.raft_log;
        let committed = log.committed;
        (self.is_leader() && log.term(committed).ok() == Some(self.term())).then_some(committed)
    }

    /// Grants whose commit index this node has applied now hold.
    fn promote_grants(&mut self) {
        let applied = self.applied_index();
        let mut held = self.lease_sent_at_ms;
        self.lease_grants.retain(|(sent, commit)| {
            if *commit <= applied {
                held = Some(held.map_or(*sent, |h| h.max(*sent)));
                false
            } else {
                true
            }
        });
        self.lease_sent_at_ms = held;
    }

    /// Answers the proposals older than the proposal timeout TRY_AGAIN.
    /// Tickets are numbered in proposal order and stamped with `now_ms`,
    /// which never goes back, so the expired ones are the first few: this
    /// runs at every step, and scanning every pending ticket there (a
    /// failover proposes one per checkpoint) took a fifth of a node's CPU
    /// at 50,000 checkpoints.
    fn expire_tickets(&mut self) {
        let now = self.now_ms;
        let timeout = self.proposal_timeout_ms;
        while let Some(oldest) = self.tickets.first_entry() {
            if now <= oldest.get().0.saturating_add(timeout) {
                break;
            }
            let (t, (_, cmd)) = oldest.remove_entry();
            let e = CkptError::new(
                ErrorCode::TryAgain,
                format!("control-plane proposal not committed within {timeout} ms"),
            );
            self.out_applied
                .push((Some(Ticket(t)), cmd, Applied::Failed(e)));
        }
    }

    fn lease_and_duties(&mut self) {
        let now = self.now_ms;
        if !self.is_leader() {
            self.duties = None;
            if let Some(leader) = self.leader() {
                let due = self
                    .last_lease_request_ms
                    .is_none_or(|at| now >= at.saturating_add(self.lease_timeout_ms / 4));
                if due && leader != self.id {
                    self.out_messages
                        .push((leader, ControlMessage::LeaseRequest { sent_at_ms: now }));
                    self.last_lease_request_ms = Some(now);
                }
            }
            return;
        }
        let term = self.term();
        if self.duties.as_ref().is_none_or(|d| d.term != term) {
            tracing::info!(node = self.id, term, "control-plane leader");
            self.duties = Some(LeaderDuties {
                term,
                since_ms: now,
                last_request_ms: BTreeMap::new(),
                proposed_ms: BTreeMap::new(),
                retention_timers: RetentionTimers::default(),
                retention_dirty: BTreeSet::new(),
                retention_all: true,
                destroy_due: BTreeSet::new(),
            });
        }
        // The leader's own lease runs from the last time a quorum had
        // contacted it (its own request counts, and so does its election).
        let me = self.id;
        let voters = self.voters();
        // ... and only once it has applied everything committed, its
        // own term's entry included: a new leader's state may still be
        // behind the one the cluster acts on.
        let caught_up = self.leader_caught_up();
        if let Some(d) = self.duties.as_mut() {
            d.last_request_ms.insert(me, now);
            if caught_up {
                let heard = quorum_heard_ms(d, &voters);
                self.lease_sent_at_ms = Some(self.lease_sent_at_ms.map_or(heard, |s| s.max(heard)));
            }
        }
        self.last_lease_request_ms = Some(now);
        if !self.state.node_alive(me) {
            self.propose_duty(Duty::NodeUp(me), vec![Command::NodeUp { node: me }]);
        }
        let deadline_ms = self.lease_timeout_ms.saturating_add(self.margin_ms);
        let dead: Vec<NodeId> = {
            let d = self.duties.as_ref().expect("duties set above");
            self.state
                .nodes()
                .map(|(n, _)| n)
                .filter(|n| *n != me && self.state.node_alive(*n))
                .filter(|n| {
                    let last = d
                        .last_request_ms
                        .get(n)
                        .copied()
                        .unwrap_or(0)
                        .max(d.since_ms);
                    now > last.saturating_add(deadline_ms)
                })
                .collect()
        };
        for node in dead {
            self.propose_duty(Duty::Failover(node), vec![Command::Failover { node }]);
        }
        self.retention();
    }

    fn retention(&mut self) {
        let now = self.now_ms;
        let destroy: Vec<InstanceId>;
        let expire: Vec<(InstanceId, CheckpointName)>;
        {
            let Some(d) = self.duties.as_mut() else {
                return;
            };
            let check: BTreeSet<InstanceId> = if std::mem::take(&mut d.retention_all) {
                d.retention_dirty.clear();
                self.state
                    .checkpoints()
                    .map(|m| m.instance)
                    .chain(d.retention_timers.by_instance.keys().copied())
                    .chain(d.destroy_due.iter().copied())
                    .collect()
            } else {
                std::mem::take(&mut d.retention_dirty)
            };
            for instance in check {
                let meta = self.state.get(instance);
                let open_nowhere = meta.is_some_and(|m| m.open_on.is_empty());
                if open_nowhere && meta.is_some_and(|m| m.unlinked) {
                    d.destroy_due.insert(instance);
                } else {
                    d.destroy_due.remove(&instance);
                }
                match meta {
                    Some(meta)
                        if open_nowhere
                            && !meta.unlinked
                            && meta.retention_duration_ns != TIME_END
                            && meta.retention_duration_ns >= 0 =>
                    {
                        let ms = (meta.retention_duration_ns as u64).div_ceil(1_000_000);
                        d.retention_timers.start(instance, now.saturating_add(ms));
                    }
                    _ => d.retention_timers.cancel(instance),
                }
            }
            destroy = d.destroy_due.iter().copied().collect();
            expire = d
                .retention_timers
                .due(now)
                .filter_map(|instance| {
                    let meta = self.state.get(instance)?;
                    (meta.open_on.is_empty() && !meta.unlinked)
                        .then(|| (instance, meta.name.clone()))
                })
                .collect();
        }
        for instance in destroy {
            self.propose_duty(Duty::Destroy(instance), vec![Command::Destroy { instance }]);
        }
        for (instance, name) in expire {
            tracing::info!(instance = instance.0, %name, "retention expired");
            // The Destroy is in flight with the Unlink: do not propose it again.
            if let Some(d) = self.duties.as_mut() {
                d.proposed_ms.insert(Duty::Destroy(instance), now);
            }
            self.propose_duty(
                Duty::Expire(instance),
                vec![Command::Unlink { name }, Command::Destroy { instance }],
            );
        }
    }
}
