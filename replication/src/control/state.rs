//! The metadata state machine replicated by Raft: the checkpoint registry,
//! placement, active replicas, epochs, in-sync sets, node liveness and
//! cluster-wide open sets.
//!
//! [`ClusterState::apply`] is a pure function of the state and one
//! committed [`Command`]: every node applies the same commands in the same
//! order and reaches the same state, so nothing here may read a clock,
//! iterate a hash map or depend on the local node. A command that cannot be
//! applied leaves the state unchanged and yields [`Applied::Failed`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ckpt_proto::{
    CheckpointName, CkptError, CkptResult, CreationAttributes, CreationFlags, ErrorCode,
};
use ckpt_storage::{Epoch, InstanceId, Seq};
use imbl::OrdMap;
use serde::{Deserialize, Serialize};

use crate::NodeId;

/// One checkpoint instance as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "MetaWire", from = "MetaWire")]
pub struct CheckpointMeta {
    /// Its name (still reported after an unlink).
    pub name: CheckpointName,
    /// Cluster-wide instance id, allocated by the state machine.
    pub instance: InstanceId,
    /// Creation attributes (retention as created; see `retention_duration_ns`).
    pub attributes: CreationAttributes,
    /// Nodes holding a copy, placement order (the first is the preferred active).
    pub replicas: Vec<NodeId>,
    /// The node ordering writes in the current epoch; `None` for a
    /// COLLOCATED checkpoint before ActiveReplicaSet, or when no in-sync
    /// replica is alive.
    pub active: Option<NodeId>,
    /// Bumped whenever the active replica changes.
    pub epoch: Epoch,
    /// The first seq of each epoch, ascending (KIP-101 divergence checks).
    pub epoch_starts: Vec<(Epoch, Seq)>,
    /// Replicas known to hold every acknowledged write, ascending.
    pub in_sync: Vec<NodeId>,
    /// Unlinked: no longer reachable by name, destroyed once closed everywhere.
    pub unlinked: bool,
    /// Nodes that have it open.
    pub open_on: BTreeSet<NodeId>,
    /// Current retention (SetRetention changes it).
    pub retention_duration_ns: i64,
    /// Bumped by every in-sync change applied: a change naming the
    /// generation it was computed at applies only at that generation, so
    /// of two changes computed at one generation at most one applies (an
    /// active replica fences off its own pending proposal that way).
    pub in_sync_generation: u64,
}

impl CheckpointMeta {
    /// COLLOCATED: the active replica is only ever named by ActiveReplicaSet.
    pub fn collocated(&self) -> bool {
        self.attributes
            .creation_flags
            .contains(CreationFlags::CHECKPOINT_COLLOCATED)
    }

    /// DISTRIBUTED or ALL_OPEN_ARE_REPLICAS: every opener gets a replica.
    pub fn replica_per_opener(&self) -> bool {
        let flags = self.attributes.creation_flags;
        flags.contains(CreationFlags::DISTRIBUTED)
            || flags.contains(CreationFlags::ALL_OPEN_ARE_REPLICAS)
    }
}

/// A checkpoint as snapshots have always written it.
#[derive(Serialize, Deserialize)]
struct MetaWireV1 {
    name: CheckpointName,
    instance: u64,
    attributes: CreationAttributes,
    replicas: Vec<NodeId>,
    active: Option<NodeId>,
    epoch: u64,
    epoch_starts: Vec<(u64, u64)>,
    in_sync: Vec<NodeId>,
    unlinked: bool,
    open_on: BTreeSet<NodeId>,
    retention_duration_ns: i64,
}

/// A checkpoint in a snapshot: postcard writes a nested struct's fields in
/// line, so this is [`MetaWireV1`]'s layout with the in-sync generation
/// after it.
#[derive(Serialize, Deserialize)]
struct MetaWire {
    base: MetaWireV1,
    in_sync_generation: u64,
}

impl From<MetaWireV1> for CheckpointMeta {
    fn from(base: MetaWireV1) -> Self {
        CheckpointMeta::from(MetaWire {
            base,
            in_sync_generation: 0,
        })
    }
}

impl From<CheckpointMeta> for MetaWire {
    fn from(m: CheckpointMeta) -> Self {
        MetaWire {
            base: MetaWireV1 {
                name: m.name,
                instance: m.instance.0,
                attributes: m.attributes,
                replicas: m.replicas,
                active: m.active,
                epoch: m.epoch.0,
                epoch_starts: m.epoch_starts.iter().map(|(e, s)| (e.0, s.0)).collect(),
                in_sync: m.in_sync,
                unlinked: m.unlinked,
                open_on: m.open_on,
                retention_duration_ns: m.retention_duration_ns,
            },
            in_sync_generation: m.in_sync_generation,
        }
    }
}

impl From<MetaWire> for CheckpointMeta {
    fn from(m: MetaWire) -> Self {
        let b = m.base;
        CheckpointMeta {
            name: b.name,
            instance: InstanceId(b.instance),
            attributes: b.attributes,
            replicas: b.replicas,
            active: b.active,
            epoch: Epoch(b.epoch),
            epoch_starts: b
                .epoch_starts
                .iter()
                .map(|(e, s)| (Epoch(*e), Seq(*s)))
                .collect(),
            in_sync: b.in_sync,
            unlinked: b.unlinked,
            open_on: b.open_on,
            retention_duration_ns: b.retention_duration_ns,
            in_sync_generation: m.in_sync_generation,
        }
    }
}

/// A change to the cluster metadata, proposed through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "CommandWire", from = "CommandWire")]
pub enum Command {
    /// A new checkpoint instance; `creator` is the node whose client asked
    /// (it counts as having it open).
    Create {
        /// Name; must not name a linked checkpoint.
        name: CheckpointName,
        /// Validated attributes.
        attributes: CreationAttributes,
        /// The proposing node.
        creator: NodeId,
    },
    /// The name goes; the instance lives on until closed everywhere.
    Unlink {
        /// The linked checkpoint's name.
        name: CheckpointName,
    },
    /// Forget the instance (refused while it is open anywhere).
    Destroy {
        /// Which instance.
        instance: InstanceId,
    },
    /// `node` opened the checkpoint.
    Opened {
        /// Which instance.
        instance: InstanceId,
        /// The opening node.
        node: NodeId,
    },
    /// `node` closed its last handle on the checkpoint.
    Closed {
        /// Which instance.
        instance: InstanceId,
        /// The closing node.
        node: NodeId,
    },
    /// `node` started afresh: it has nothing open, and every checkpoint it
    /// is active for gets a new epoch (same active): a crashed active may
    /// have lost unsynced entries that a backup holds, so it must not go on
    /// writing `(epoch, seq)` pairs that exist elsewhere with other bytes.
    NodeRestarted {
        /// The restarted node.
        node: NodeId,
    },
    /// New retention duration in ns.
    SetRetention {
        /// Which instance.
        instance: InstanceId,
        /// Non-negative; `TIME_END` = forever.
        ns: i64,
    },
    /// ActiveReplicaSet: `node` (an in-sync replica) becomes active; epoch + 1.
    SetActive {
        /// Which instance.
        instance: InstanceId,
        /// The new active replica.
        node: NodeId,
    },
    /// The active replica of `epoch` replaces the in-sync set `from` by
    /// `in_sync` (refused for any other epoch, and when the set is no longer
    /// `from`: a proposal computed from a set since changed could otherwise
    /// bring back a member removed meanwhile, one that lacks writes
    /// acknowledged without it).
    SetInSync {
        /// Which instance.
        instance: InstanceId,
        /// The proposer's epoch.
        epoch: Epoch,
        /// The set the proposer saw applied and computed `in_sync` from;
        /// `None` only in Raft logs written before this check (applied as
        /// they were then, unconditionally).
        from: Option<Vec<NodeId>>,
        /// The set's generation the proposer saw applied (refused at any
        /// other); `None` in Raft logs written before it.
        generation: Option<u64>,
        /// Replicas holding every acknowledged write.
        in_sync: Vec<NodeId>,
    },
    /// The active replica of `epoch` wrote its epoch-start entry at `start_seq`.
    EpochStarted {
        /// Which instance.
        instance: InstanceId,
        /// The epoch started.
        epoch: Epoch,
        /// Its first seq.
        start_seq: Seq,
    },
    /// `node` gets a (catching-up, not in-sync) replica.
    AddReplica {
        /// Which instance.
        instance: InstanceId,
        /// The new replica.
        node: NodeId,
    },
    /// `node` lost its lease: it is dead; every checkpoint it was active for
    /// gets a new active replica from its in-sync set (COLLOCATED: none).
    Failover {
        /// The dead node.
        node: NodeId,
    },
    /// `node` asks for leases again: alive, a catching-up backup.
    NodeUp {
        /// The returning node.
        node: NodeId,
    },
    /// A new node joins the cluster (`ckpt-tool cluster add-node`): known,
    /// not alive until it asks for a lease, which places replicas on it
    /// (NodeUp). Committed as a Raft configuration change adding a voter.
    AddNode {
        /// Its id (not a member now).
        node: NodeId,
        /// Where it is reached.
        addrs: NodeAddrs,
    },
    /// A dead node leaves the cluster for good (`cluster remove-node`):
    /// it leaves every checkpoint, and each checkpoint it held a replica of
    /// gets one on another live node, if there is one. Committed as a Raft
    /// configuration change removing the voter.
    RemoveNode {
        /// The node leaving.
        node: NodeId,
    },
}

/// Where a node added at run time is reached (the nodes of the cluster
/// file are reached at the file's addresses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddrs {
    /// Client API.
    pub client_addr: std::net::SocketAddr,
    /// Peer links (control plane and log shipping).
    pub peer_addr: std::net::SocketAddr,
    /// Admin HTTP endpoint.
    pub admin_addr: std::net::SocketAddr,
}

#[derive(Serialize, Deserialize)]
enum CommandWire {
    Create {
        name: CheckpointName,
        attributes: CreationAttributes,
        creator: NodeId,
    },
    Unlink {
        name: CheckpointName,
    },
    Destroy {
        instance: u64,
    },
    Opened {
        instance: u64,
        node: NodeId,
    },
    Closed {
        instance: u64,
        node: NodeId,
    },
    NodeRestarted {
        node: NodeId,
    },
    SetRetention {
        instance: u64,
        ns: i64,
    },
    SetActive {
        instance: u64,
        node: NodeId,
    },
    SetInSync {
        instance: u64,
        epoch: u64,
        in_sync: Vec<NodeId>,
    },
    EpochStarted {
        instance: u64,
        epoch: u64,
        start_seq: u64,
    },
    AddReplica {
        instance: u64,
        node: NodeId,
    },
    Failover {
        node: NodeId,
    },
    NodeUp {
        node: NodeId,
    },
    AddNode {
        node: NodeId,
        addrs: NodeAddrs,
    },
    RemoveNode {
        node: NodeId,
    },
    // Appended, so that Raft logs written before it still decode (postcard
    // numbers variants in order): SetInSync with the set it replaces.
    SetInSyncFrom {
        instance: u64,
        epoch: u64,
        from: Vec<NodeId>,
        in_sync: Vec<NodeId>,
    },
    // Appended too: SetInSync at a generation of the set.
    SetInSyncAt {
        instance: u64,
        epoch: u64,
        from: Option<Vec<NodeId>>,
        generation: u64,
        in_sync: Vec<NodeId>,
    },
}

impl From<Command> for CommandWire {
    fn from(c: Command) -> Self {
        match c {
            Command::Create {
                name,
                attributes,
                creator,
            } => CommandWire::Create {
                name,
                attributes,
                creator,
            },
            Command::Unlink { name } => CommandWire::Unlink { name },
            Command::Destroy { instance } => CommandWire::Destroy {
                instance: instance.0,
            },
            Command::Opened { instance, node } => CommandWire::Opened {
                instance: instance.0,
                node,
            },
            Command::Closed { instance, node } => CommandWire::Closed {
                instance: instance.0,
                node,
            },
            Command::NodeRestarted { node } => CommandWire::NodeRestarted { node },
            Command::SetRetention { instance, ns } => CommandWire::SetRetention {
                instance: instance.0,
                ns,
            },
            Command::SetActive { instance, node } => CommandWire::SetActive {
                instance: instance.0,
                node,
            },
            Command::SetInSync {
                instance,
                epoch,
                from: None,
                generation: None,
                in_sync,
            } => CommandWire::SetInSync {
                instance: instance.0,
                epoch: epoch.0,
                in_sync,
            },
            Command::SetInSync {
                instance,
                epoch,
                from: Some(from),
                generation: None,
                in_sync,
            } => CommandWire::SetInSyncFrom {
                instance: instance.0,
                epoch: epoch.0,
                from,
                in_sync,
            },
            Command::SetInSync {
                instance,
                epoch,
                from,
                generation: Some(generation),
                in_sync,
            } => CommandWire::SetInSyncAt {
                instance: instance.0,
                epoch: epoch.0,
                from,
                generation,
                in_sync,
            },
            Command::EpochStarted {
                instance,
                epoch,
                start_seq,
            } => CommandWire::EpochStarted {
                instance: instance.0,
                epoch: epoch.0,
                start_seq: start_seq.0,
            },
            Command::AddReplica { instance, node } => CommandWire::AddReplica {
                instance: instance.0,
                node,
            },
            Command::Failover { node } => CommandWire::Failover { node },
            Command::NodeUp { node } => CommandWire::NodeUp { node },
            Command::AddNode { node, addrs } => CommandWire::AddNode { node, addrs },
            Command::RemoveNode { node } => CommandWire::RemoveNode { node },
        }
    }
}

impl From<CommandWire> for Command {
    fn from(c: CommandWire) -> Self {
        match c {
            CommandWire::Create {
                name,
                attributes,
                creator,
            } => Command::Create {
                name,
                attributes,
                creator,
            },
            CommandWire::Unlink { name } => Command::Unlink { name },
            CommandWire::Destroy { instance } => Command::Destroy {
                instance: InstanceId(instance),
            },
            CommandWire::Opened { instance, node } => Command::Opened {
                instance: InstanceId(instance),
                node,
            },
            CommandWire::Closed { instance, node } => Command::Closed {
                instance: InstanceId(instance),
                node,
            },
            CommandWire::NodeRestarted { node } => Command::NodeRestarted { node },
            CommandWire::SetRetention { instance, ns } => Command::SetRetention {
                instance: InstanceId(instance),
                ns,
            },
            CommandWire::SetActive { instance, node } => Command::SetActive {
                instance: InstanceId(instance),
                node,
            },
            CommandWire::SetInSync {
                instance,
                epoch,
                in_sync,
            } => Command::SetInSync {
                instance: InstanceId(instance),
                epoch: Epoch(epoch),
                from: None,
                generation: None,
                in_sync,
            },
            CommandWire::SetInSyncFrom {
                instance,
                epoch,
                from,
                in_sync,
            } => Command::SetInSync {
                instance: InstanceId(instance),
                epoch: Epoch(epoch),
                from: Some(from),
                generation: None,
                in_sync,
            },
            CommandWire::SetInSyncAt {
                instance,
                epoch,
                from,
                generation,
                in_sync,
            } => Command::SetInSync {
                instance: InstanceId(instance),
                epoch: Epoch(epoch),
                from,
                generation: Some(generation),
                in_sync,
            },
            CommandWire::EpochStarted {
                instance,
                epoch,
                start_seq,
            } => Command::EpochStarted {
                instance: InstanceId(instance),
                epoch: Epoch(epoch),
                start_seq: Seq(start_seq),
            },
            CommandWire::AddReplica { instance, node } => Command::AddReplica {
                instance: InstanceId(instance),
                node,
            },
            CommandWire::Failover { node } => Command::Failover { node },
            CommandWire::NodeUp { node } => Command::NodeUp { node },
            CommandWire::AddNode { node, addrs } => Command::AddNode { node, addrs },
            CommandWire::RemoveNode { node } => Command::RemoveNode { node },
        }
    }
}

impl Command {
    /// postcard bytes (the Raft entry data).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("a Command always serializes")
    }

    /// # Errors
    /// `BAD_OPERATION` when the bytes are not a command.
    pub fn decode(bytes: &[u8]) -> CkptResult<Command> {
        postcard::from_bytes(bytes).map_err(|e| {
            CkptError::new(
                ErrorCode::BadOperation,
                format!("undecodable control command: {e}"),
            )
        })
    }
}

/// The outcome of one applied command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// `Create` succeeded: the new checkpoint.
    Created {
        /// Its metadata as created.
        meta: CheckpointMeta,
    },
    /// Any other command took effect (or was already in effect).
    Done,
    /// Refused; the state is unchanged.
    Failed(CkptError),
}

/// What changed in a [`ClusterState`] since the last
/// [`ClusterState::take_changes`], so that a reader acting on changes (the
/// server's runtime) costs the size of the change, not of the registry: a
/// failover of thousands of checkpoints applies thousands of commands.
///
/// Local bookkeeping, not replicated state: it is neither encoded nor
/// compared (`==` ignores it), and it may name more than changed.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// Instances created, changed or removed.
    pub instances: BTreeSet<InstanceId>,
    /// A node's liveness changed, or a node joined or left.
    pub nodes: bool,
    /// Anything may have changed (a new or restored state): compare all.
    pub everything: bool,
}

impl Changes {
    /// Adds what `other` names.
    pub fn merge(&mut self, other: Changes) {
        self.instances.extend(other.instances);
        self.nodes |= other.nodes;
        self.everything |= other.everything;
    }
}

impl PartialEq for Changes {
    fn eq(&self, _: &Changes) -> bool {
        true
    }
}

impl Eq for Changes {}

/// How many replicas each node holds, kept up to date from the instances
/// changed since it was last brought up to date, so that placing a new
/// checkpoint does not count every checkpoint (it did, once per node, on
/// every node, for every creation: creating checkpoints in a cluster slowed
/// as it filled).
///
/// Local bookkeeping like [`Changes`]: derived from the replicated state,
/// neither encoded nor compared.
#[derive(Debug, Clone, Default)]
struct Loads {
    /// Replicas per node, as of the last [`ClusterState::loads`].
    per_node: BTreeMap<NodeId, usize>,
    /// Instances created, changed or removed since, with the replicas they
    /// were counted with then (none for a new one).
    changed: BTreeMap<InstanceId, Vec<NodeId>>,
    /// Count from scratch (a new or restored state).
    recount: bool,
}

impl Loads {
    /// Instances remembered as changed at most: past it (a failover of
    /// thousands of checkpoints, say) the next placement counts from
    /// scratch once, rather than every published copy of the state carrying
    /// thousands of entries until then.
    const CHANGED_MAX: usize = 1024;

    /// `instance`, counted with `replicas`, is about to change.
    fn note(&mut self, instance: InstanceId, replicas: &[NodeId]) {
        if self.recount {
            return;
        }
        if self.changed.len() >= Self::CHANGED_MAX && !self.changed.contains_key(&instance) {
            self.recount = true;
            self.changed.clear();
            return;
        }
        self.changed
            .entry(instance)
            .or_insert_with(|| replicas.to_vec());
    }
}

impl PartialEq for Loads {
    fn eq(&self, _: &Loads) -> bool {
        true
    }
}

impl Eq for Loads {}

/// The replicated metadata. Equal on every node after the same commands.
///
/// Cloning costs the same whatever the registry's size: the two maps that
/// grow with it are persistent B-trees (a clone shares every node, a change
/// copies the path to it) of shared `Arc`s, copied on write. The runtime
/// publishes a clone after every Raft ready, and keeps the previous one to
/// compare with; with `BTreeMap`s that clone copied every name, and
/// creating checkpoints in a cluster slowed as it filled (docs/benchmarks.md,
/// "Creating checkpoints in a cluster").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterState {
    checkpoints: OrdMap<InstanceId, Arc<CheckpointMeta>>,
    names: OrdMap<Arc<CheckpointName>, InstanceId>,
    /// Every member node and whether it is alive.
    nodes: BTreeMap<NodeId, bool>,
    /// Addresses of the members added at run time (AddNode).
    addrs: BTreeMap<NodeId, NodeAddrs>,
    next_instance: u64,
    replication_factor: usize,
    /// From the configuration (the same on every node): place the active
    /// replica away from the creator.
    avoid_creator: bool,
    changes: Changes,
    loads: Loads,
}

/// A control snapshot: [`StateWire`] now, [`StateWireV1`] before the
/// in-sync generation.
#[derive(Serialize, Deserialize)]
struct StateWireOf<M> {
    checkpoints: Vec<M>,
    nodes: Vec<(NodeId, bool)>,
    next_instance: u64,
    addrs: Vec<(NodeId, NodeAddrs)>,
}

type StateWire = StateWireOf<CheckpointMeta>;
type StateWireV1 = StateWireOf<MetaWireV1>;

fn no_instance(instance: InstanceId) -> CkptError {
    CkptError::new(
        ErrorCode::NotExist,
        format!("no checkpoint instance {}", instance.0),
    )
}

fn fail<T>(code: ErrorCode, detail: String) -> Result<T, CkptError> {
    Err(CkptError::new(code, detail))
}

fn next_epoch(meta: &CheckpointMeta) -> CkptResult<Epoch> {
    meta.epoch.0.checked_add(1).map(Epoch).ok_or_else(|| {
        CkptError::new(
            ErrorCode::NoResource,
            format!("instance {}: epoch overflow", meta.instance.0),
        )
    })
}

impl ClusterState {
    /// The state before any command: every configured node alive, no checkpoint.
    pub fn new(nodes: &[NodeId], replication_factor: usize) -> ClusterState {
        ClusterState {
            checkpoints: OrdMap::new(),
            names: OrdMap::new(),
            nodes: nodes.iter().map(|n| (*n, true)).collect(),
            addrs: BTreeMap::new(),
            next_instance: 1,
            replication_factor: replication_factor.max(1),
            avoid_creator: false,
            changes: Changes {
                everything: true,
                ..Changes::default()
            },
            loads: Loads {
                recount: true,
                ..Loads::default()
            },
        }
    }

    /// What changed since the last call (everything, for a new or restored
    /// state).
    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    /// Places active replicas away from their creator (configuration
    /// `placement_avoid_creator`); returns the state.
    pub fn avoiding_creator(mut self, avoid: bool) -> ClusterState {
        self.avoid_creator = avoid;
        self
    }

    /// The linked checkpoint of this name.
    pub fn lookup(&self, name: &CheckpointName) -> Option<&CheckpointMeta> {
        self.names.get(name).and_then(|i| self.get(*i))
    }

    /// An instance, linked or not.
    pub fn get(&self, instance: InstanceId) -> Option<&CheckpointMeta> {
        self.checkpoints.get(&instance).map(|m| &**m)
    }

    /// The instance's metadata, shared (a copy of the pointer, not of the
    /// metadata).
    pub fn get_shared(&self, instance: InstanceId) -> Option<Arc<CheckpointMeta>> {
        self.checkpoints.get(&instance).cloned()
    }

    /// Every instance, by id.
    pub fn checkpoints(&self) -> impl Iterator<Item = &CheckpointMeta> {
        self.checkpoints.values().map(|m| &**m)
    }

    /// Whether the node is configured and not declared dead.
    pub fn node_alive(&self, node: NodeId) -> bool {
        self.nodes.get(&node).copied().unwrap_or(false)
    }

    /// Every configured node with its liveness, by id.
    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, bool)> + '_ {
        self.nodes.iter().map(|(n, a)| (*n, *a))
    }

    /// Whether the node is a member (alive or not).
    pub fn is_member(&self, node: NodeId) -> bool {
        self.nodes.contains_key(&node)
    }

    /// Addresses of the members added at run time, by id.
    pub fn added_addrs(&self) -> impl Iterator<Item = (NodeId, &NodeAddrs)> + '_ {
        self.addrs.iter().map(|(n, a)| (*n, a))
    }

    /// Checkpoints with fewer replicas than the replication factor allows
    /// on the live members, or with replicas not in sync: what `cluster
    /// status` shows while a replacement node fills.
    pub fn under_replicated(&self) -> usize {
        let live = self.nodes.values().filter(|a| **a).count();
        self.checkpoints()
            .filter(|m| self.is_under_replicated(m, live))
            .count()
    }

    /// Whether `meta` counts in [`Self::under_replicated`], with `live`
    /// nodes alive.
    pub fn is_under_replicated(&self, meta: &CheckpointMeta, live: usize) -> bool {
        let wanted = self.replication_factor.min(live.max(1));
        !meta.unlinked
            && !meta.replica_per_opener()
            && (meta.replicas.len() < wanted || meta.in_sync.len() < meta.replicas.len())
    }

    /// How many checkpoints there are (unlinked ones too).
    pub fn checkpoint_count(&self) -> usize {
        self.checkpoints.len()
    }

    /// The id the next Create will get.
    pub fn next_instance(&self) -> InstanceId {
        InstanceId(self.next_instance)
    }

    /// Instances `node` is the active replica of.
    pub fn active_on(&self, node: NodeId) -> impl Iterator<Item = &CheckpointMeta> {
        self.checkpoints().filter(move |m| m.active == Some(node))
    }

    /// Snapshot bytes (postcard); see [`ClusterState::restore`].
    pub fn encode(&self) -> Vec<u8> {
        // The checkpoints by reference: serde writes a reference as what it
        // refers to, so these are a `StateWire`'s bytes without a copy of
        // every checkpoint's metadata (a compaction encodes the whole
        // registry on the runtime's driver).
        let wire: StateWireOf<&CheckpointMeta> = StateWireOf {
            checkpoints: self.checkpoints().collect(),
            nodes: self.nodes.iter().map(|(n, a)| (*n, *a)).collect(),
            next_instance: self.next_instance,
            addrs: self.addrs.iter().map(|(n, a)| (*n, a.clone())).collect(),
        };
        postcard::to_allocvec(&wire).expect("the cluster state always serializes")
    }

    /// The state from snapshot bytes; the replication factor comes from the
    /// local configuration.
    ///
    /// # Errors
    /// `BAD_OPERATION` when the bytes do not decode.
    pub fn restore(bytes: &[u8], replication_factor: usize) -> CkptResult<ClusterState> {
        // Whole: the old layout must not pass for the new one by leaving
        // bytes over.
        let whole = |r: Result<(StateWire, &[u8]), postcard::Error>| match r {
            Ok((wire, [])) => Ok(wire),
            Ok(_) => Err(postcard::Error::DeserializeBadEncoding),
            Err(e) => Err(e),
        };
        let wire: StateWire = match whole(postcard::take_from_bytes(bytes)) {
            Ok(wire) => wire,
            // A snapshot written before the in-sync generation.
            Err(e) => match postcard::take_from_bytes::<StateWireV1>(bytes) {
                Ok((old, [])) => StateWire {
                    checkpoints: old
                        .checkpoints
                        .into_iter()
                        .map(CheckpointMeta::from)
                        .collect(),
                    nodes: old.nodes,
                    next_instance: old.next_instance,
                    addrs: old.addrs,
                },
                _ => {
                    return Err(CkptError::new(
                        ErrorCode::BadOperation,
                        format!("undecodable control snapshot: {e}"),
                    ))
                }
            },
        };
        let mut state = ClusterState {
            checkpoints: OrdMap::new(),
            names: OrdMap::new(),
            nodes: wire.nodes.into_iter().collect(),
            addrs: wire.addrs.into_iter().collect(),
            next_instance: wire.next_instance,
            replication_factor: replication_factor.max(1),
            avoid_creator: false,
            changes: Changes {
                everything: true,
                ..Changes::default()
            },
            loads: Loads {
                recount: true,
                ..Loads::default()
            },
        };
        for meta in wire.checkpoints {
            if !meta.unlinked {
                state
                    .names
                    .insert(Arc::new(meta.name.clone()), meta.instance);
            }
            state.checkpoints.insert(meta.instance, Arc::new(meta));
        }
        Ok(state)
    }

    /// Applies one committed command. Deterministic; a failure changes nothing.
    pub fn apply(&mut self, cmd: &Command) -> Applied {
        match self.try_apply(cmd) {
            Ok(applied) => applied,
            Err(e) => Applied::Failed(e),
        }
    }

    fn meta_mut(&mut self, instance: InstanceId) -> CkptResult<&mut CheckpointMeta> {
        let meta = self
            .checkpoints
            .get_mut(&instance)
            .ok_or_else(|| no_instance(instance))?;
        self.changes.instances.insert(instance);
        self.loads.note(instance, &meta.replicas);
        Ok(Arc::make_mut(meta))
    }

    /// Runs `change` on every instance `affected` selects (and only those:
    /// the others stay shared with earlier copies of the state).
    fn change_where(
        &mut self,
        affected: impl Fn(&CheckpointMeta) -> bool,
        mut change: impl FnMut(&mut CheckpointMeta) -> CkptResult<()>,
    ) -> CkptResult<()> {
        let chosen: Vec<InstanceId> = self
            .checkpoints
            .iter()
            .filter(|(_, meta)| affected(meta))
            .map(|(instance, _)| *instance)
            .collect();
        for instance in chosen {
            if let Some(meta) = self.checkpoints.get_mut(&instance) {
                self.changes.instances.insert(instance);
                self.loads.note(instance, &meta.replicas);
                change(Arc::make_mut(meta))?;
            }
        }
        Ok(())
    }

    /// Replicas per node (a node holding none may be missing).
    fn loads(&mut self) -> &BTreeMap<NodeId, usize> {
        let loads = &mut self.loads;
        if loads.recount {
            loads.per_node.clear();
            loads.changed.clear();
            for meta in self.checkpoints.values() {
                for n in &meta.replicas {
                    *loads.per_node.entry(*n).or_default() += 1;
                }
            }
            loads.recount = false;
        }
        for (instance, before) in std::mem::take(&mut loads.changed) {
            for n in before {
                if let Some(count) = loads.per_node.get_mut(&n) {
                    *count = count.saturating_sub(1);
                }
            }
            if let Some(meta) = self.checkpoints.get(&instance) {
                for n in &meta.replicas {
                    *loads.per_node.entry(*n).or_default() += 1;
                }
            }
        }
        &loads.per_node
    }

    fn try_apply(&mut self, cmd: &Command) -> CkptResult<Applied> {
        match cmd {
            Command::Create {
                name,
                attributes,
                creator,
            } => self.create(name, attributes, *creator),
            Command::Unlink { name } => {
                let Some(instance) = self.names.remove(name) else {
                    return fail(ErrorCode::NotExist, format!("no checkpoint named {name}"));
                };
                self.meta_mut(instance)?.unlinked = true;
                Ok(Applied::Done)
            }
            Command::Destroy { instance } => {
                let meta = self.meta_mut(*instance)?;
                if !meta.open_on.is_empty() {
                    return fail(
                        ErrorCode::TryAgain,
                        format!(
                            "instance {} is still open on nodes {:?}",
                            instance.0, meta.open_on
                        ),
                    );
                }
                let name = meta.name.clone();
                self.checkpoints.remove(instance);
                self.changes.instances.insert(*instance);
                if self.names.get(&name) == Some(instance) {
                    self.names.remove(&name);
                }
                Ok(Applied::Done)
            }
            Command::Opened { instance, node } => {
                self.known_node(*node)?;
                let meta = self.meta_mut(*instance)?;
                meta.open_on.insert(*node);
                if meta.replica_per_opener() && !meta.replicas.contains(node) {
                    meta.replicas.push(*node);
                }
                Ok(Applied::Done)
            }
            Command::Closed { instance, node } => {
                self.meta_mut(*instance)?.open_on.remove(node);
                Ok(Applied::Done)
            }
            Command::NodeRestarted { node } => {
                self.known_node(*node)?;
                // Check every epoch first so that a failure changes nothing.
                for meta in self.active_on(*node) {
                    next_epoch(meta)?;
                }
                let node = *node;
                self.change_where(
                    |m| m.open_on.contains(&node) || m.active == Some(node),
                    |meta| {
                        meta.open_on.remove(&node);
                        if meta.active == Some(node) {
                            meta.epoch = next_epoch(meta)?;
                        }
                        Ok(())
                    },
                )?;
                Ok(Applied::Done)
            }
            Command::SetRetention { instance, ns } => {
                if *ns < 0 {
                    return fail(
                        ErrorCode::InvalidParameter,
                        format!("retention {ns} ns is negative"),
                    );
                }
                let meta = self.get(*instance).ok_or_else(|| no_instance(*instance))?;
                // DESIGN.md §2 "retention set": an unlinked instance is
                // destroyed at its last close whatever its retention. Refused
                // here, where a cluster learns of the unlink first, so that
                // a SetRetention after a Delete does not reach the active
                // replica's store before the unlink does.
                if meta.unlinked {
                    return fail(
                        ErrorCode::BadOperation,
                        format!(
                            "checkpoint {} was deleted: its retention no longer applies",
                            meta.name
                        ),
                    );
                }
                self.meta_mut(*instance)?.retention_duration_ns = *ns;
                Ok(Applied::Done)
            }
            Command::SetActive { instance, node } => {
                let alive = self.node_alive(*node);
                let meta = self.meta_mut(*instance)?;
                if meta.active == Some(*node) {
                    return Ok(Applied::Done);
                }
                if !alive {
                    return fail(ErrorCode::TryAgain, format!("node {node} is not alive"));
                }
                if !meta.in_sync.contains(node) {
                    return fail(
                        ErrorCode::TryAgain,
                        format!(
                            "node {node} is not an in-sync replica of instance {} (in sync: {:?})",
                            instance.0, meta.in_sync
                        ),
                    );
                }
                meta.epoch = next_epoch(meta)?;
                meta.active = Some(*node);
                Ok(Applied::Done)
            }
            Command::SetInSync {
                instance,
                epoch,
                from,
                generation,
                in_sync,
            } => {
                let meta = self.meta_mut(*instance)?;
                if let Some(generation) = generation {
                    if *generation != meta.in_sync_generation {
                        return fail(
                            ErrorCode::TryAgain,
                            format!(
                                "in-sync set of instance {} is at generation {}, not the {generation} the change was computed at",
                                instance.0, meta.in_sync_generation
                            ),
                        );
                    }
                }
                if *epoch != meta.epoch {
                    return fail(
                        ErrorCode::TryAgain,
                        format!(
                            "stale epoch {} for instance {} (now {})",
                            epoch.0, instance.0, meta.epoch.0
                        ),
                    );
                }
                if let Some(from) = from {
                    let same = |a: &[NodeId], b: &[NodeId]| {
                        a.iter().collect::<BTreeSet<_>>() == b.iter().collect::<BTreeSet<_>>()
                    };
                    if !same(from, &meta.in_sync) {
                        return fail(
                            ErrorCode::TryAgain,
                            format!(
                                "in-sync set of instance {} is {:?}, not the {from:?} the change was computed from",
                                instance.0, meta.in_sync
                            ),
                        );
                    }
                }
                let mut set = in_sync.clone();
                set.sort_unstable();
                set.dedup();
                if let Some(stranger) = set.iter().find(|n| !meta.replicas.contains(n)) {
                    return fail(
                        ErrorCode::InvalidParameter,
                        format!(
                            "node {stranger} is not a replica of instance {}",
                            instance.0
                        ),
                    );
                }
                if let Some(active) = meta.active {
                    if !set.contains(&active) {
                        return fail(
                            ErrorCode::InvalidParameter,
                            format!("in-sync set {set:?} lacks the active replica {active}"),
                        );
                    }
                }
                meta.in_sync = set;
                meta.in_sync_generation = meta.in_sync_generation.saturating_add(1);
                Ok(Applied::Done)
            }
            Command::EpochStarted {
                instance,
                epoch,
                start_seq,
            } => {
                let meta = self.meta_mut(*instance)?;
                if *epoch != meta.epoch {
                    return fail(
                        ErrorCode::TryAgain,
                        format!(
                            "stale epoch {} for instance {} (now {})",
                            epoch.0, instance.0, meta.epoch.0
                        ),
                    );
                }
                match meta.epoch_starts.last() {
                    Some((e, s)) if e == epoch => {
                        if s == start_seq {
                            return Ok(Applied::Done);
                        }
                        return fail(
                            ErrorCode::BadOperation,
                            format!(
                                "instance {} epoch {} already started at seq {}, not {}",
                                instance.0, epoch.0, s.0, start_seq.0
                            ),
                        );
                    }
                    Some((_, s)) if start_seq <= s => {
                        return fail(
                            ErrorCode::BadOperation,
                            format!(
                                "instance {} epoch {} start seq {} is not after the previous epoch's start {}",
                                instance.0, epoch.0, start_seq.0, s.0
                            ),
                        );
                    }
                    _ => meta.epoch_starts.push((*epoch, *start_seq)),
                }
                Ok(Applied::Done)
            }
            Command::AddReplica { instance, node } => {
                self.known_node(*node)?;
                let meta = self.meta_mut(*instance)?;
                if !meta.replicas.contains(node) {
                    meta.replicas.push(*node);
                }
                Ok(Applied::Done)
            }
            Command::Failover { node } => self.failover(*node),
            Command::NodeUp { node } => self.node_up(*node),
            Command::AddNode { node, addrs } => self.add_node(*node, addrs),
            Command::RemoveNode { node } => self.remove_node(*node),
        }
    }

    fn known_node(&self, node: NodeId) -> CkptResult<()> {
        if self.nodes.contains_key(&node) {
            Ok(())
        } else {
            fail(
                ErrorCode::InvalidParameter,
                format!("node {node} is not in the cluster"),
            )
        }
    }

    fn create(
        &mut self,
        name: &CheckpointName,
        attributes: &CreationAttributes,
        creator: NodeId,
    ) -> CkptResult<Applied> {
        name.validate()?;
        attributes.validate()?;
        if self.names.contains_key(name) {
            return fail(ErrorCode::AlreadyExist, format!("checkpoint {name} exists"));
        }
        // Least-loaded live nodes, the creator first when it is alive (last
        // with `avoid_creator`).
        let loads = self.loads().clone();
        let load = |n: &NodeId| loads.get(n).copied().unwrap_or(0);
        let mut candidates: Vec<(bool, usize, NodeId)> = self
            .nodes
            .iter()
            .filter(|(_, alive)| **alive)
            .map(|(n, _)| ((*n != creator) != self.avoid_creator, load(n), *n))
            .collect();
        if candidates.is_empty() {
            return fail(
                ErrorCode::TryAgain,
                "no live node to place a checkpoint on".into(),
            );
        }
        candidates.sort_unstable();
        let replicas: Vec<NodeId> = candidates
            .iter()
            .take(self.replication_factor)
            .map(|(_, _, n)| *n)
            .collect();
        let collocated = attributes
            .creation_flags
            .contains(CreationFlags::CHECKPOINT_COLLOCATED);
        let active = if collocated {
            None
        } else {
            replicas.first().copied()
        };
        let instance = InstanceId(self.next_instance);
        self.next_instance = self
            .next_instance
            .checked_add(1)
            .ok_or_else(|| CkptError::new(ErrorCode::NoResource, "instance ids exhausted"))?;
        // In sync: the members known to hold every acknowledged write. At
        // creation that is the active replica alone, which logs the
        // creation; a backup joins once it holds it (the active replica
        // proposes it), so a failover never names a node that never got
        // the checkpoint (the cluster simulator's run 2890 wedged there).
        // A COLLOCATED checkpoint has no data until its first
        // ActiveReplicaSet, which may name any replica.
        let mut in_sync = match active {
            Some(active) => vec![active],
            None => replicas.clone(),
        };
        in_sync.sort_unstable();
        let meta = CheckpointMeta {
            name: name.clone(),
            instance,
            attributes: attributes.clone(),
            replicas,
            active,
            epoch: Epoch(1),
            // The instance's first entry (its creation) is seq 1 of epoch 1.
            epoch_starts: vec![(Epoch(1), Seq(1))],
            in_sync,
            unlinked: false,
            open_on: if self.nodes.contains_key(&creator) {
                BTreeSet::from([creator])
            } else {
                BTreeSet::new()
            },
            retention_duration_ns: attributes.retention_duration_ns,
            in_sync_generation: 0,
        };
        self.names.insert(Arc::new(name.clone()), instance);
        self.loads.note(instance, &[]);
        self.checkpoints.insert(instance, Arc::new(meta.clone()));
        self.changes.instances.insert(instance);
        Ok(Applied::Created { meta })
    }

    fn failover(&mut self, node: NodeId) -> CkptResult<Applied> {
        self.known_node(node)?;
        self.nodes.insert(node, false);
        self.changes.nodes = true;
        let alive = self.nodes.clone();
        let affected = |m: &CheckpointMeta| m.active == Some(node) || m.in_sync.contains(&node);
        self.change_where(affected, |meta| {
            if meta.active == Some(node) {
                let epoch = next_epoch(meta)?;
                let candidate = meta
                    .in_sync
                    .iter()
                    .copied()
                    .filter(|n| *n != node && alive.get(n).copied().unwrap_or(false))
                    .min();
                meta.epoch = epoch;
                if meta.collocated() {
                    meta.active = None;
                    meta.in_sync.retain(|n| *n != node);
                } else if let Some(next) = candidate {
                    meta.active = Some(next);
                    meta.in_sync.retain(|n| *n != node);
                } else {
                    // No live replica has every acknowledged write: keep the
                    // dead node in the in-sync set so that it resumes as
                    // active when it returns (NodeUp) instead of a stale copy.
                    meta.active = None;
                }
            } else if meta.in_sync.contains(&node) && meta.in_sync.len() > 1 {
                // A dead backup can acknowledge nothing; dropping it here
                // saves ALL_SAFE writers the replica_lag_timeout.
                meta.in_sync.retain(|n| *n != node);
            }
            Ok(())
        })?;
        Ok(Applied::Done)
    }

    fn node_up(&mut self, node: NodeId) -> CkptResult<Applied> {
        self.known_node(node)?;
        self.nodes.insert(node, true);
        self.changes.nodes = true;
        let factor = self.replication_factor;
        let resumes = move |m: &CheckpointMeta| {
            m.active.is_none() && !m.collocated() && m.in_sync.contains(&node)
        };
        let short = move |m: &CheckpointMeta| {
            m.replicas.len() < factor && !m.replicas.contains(&node) && !m.unlinked
        };
        self.change_where(
            |m| resumes(m) || short(m),
            |meta| {
                if resumes(meta) {
                    meta.epoch = next_epoch(meta)?;
                    meta.active = Some(node);
                }
                if short(meta) {
                    meta.replicas.push(node);
                }
                Ok(())
            },
        )?;
        Ok(Applied::Done)
    }
}

impl ClusterState {
    fn add_node(&mut self, node: NodeId, addrs: &NodeAddrs) -> CkptResult<Applied> {
        if node == 0 {
            return fail(ErrorCode::InvalidParameter, "node id 0 is reserved".into());
        }
        if self.nodes.contains_key(&node) {
            return fail(
                ErrorCode::AlreadyExist,
                format!("node {node} is already a member"),
            );
        }
        self.nodes.insert(node, false);
        self.addrs.insert(node, addrs.clone());
        self.changes.nodes = true;
        Ok(Applied::Done)
    }

    /// Why `node` may not be removed now, if it may not.
    pub fn removal_refused(&self, node: NodeId) -> Option<CkptError> {
        if !self.nodes.contains_key(&node) {
            return Some(CkptError::new(
                ErrorCode::NotExist,
                format!("node {node} is not a member"),
            ));
        }
        if self.node_alive(node) {
            return Some(CkptError::new(
                ErrorCode::BadOperation,
                format!(
                    "node {node} is alive: stop it first (it is removed once the cluster declared it dead)"
                ),
            ));
        }
        if self.nodes.len() <= 1 {
            return Some(CkptError::new(
                ErrorCode::BadOperation,
                format!("node {node} is the last member"),
            ));
        }
        let only_copy: Vec<String> = self
            .checkpoints()
            .filter(|m| !m.in_sync.is_empty() && m.in_sync.iter().all(|n| *n == node))
            .map(|m| m.name.to_string())
            .take(5)
            .collect();
        if !only_copy.is_empty() {
            return Some(CkptError::new(
                ErrorCode::BadOperation,
                format!(
                    "node {node} holds the only in-sync copy of {only_copy:?}: removing it would lose acknowledged writes; bring it back first"
                ),
            ));
        }
        None
    }

    fn remove_node(&mut self, node: NodeId) -> CkptResult<Applied> {
        if let Some(refused) = self.removal_refused(node) {
            return Err(refused);
        }
        self.nodes.remove(&node);
        self.addrs.remove(&node);
        self.changes.nodes = true;
        // Replicas per live node, for placing the lost ones (least loaded
        // first, then lowest id: the same choice on every node).
        let mut load: BTreeMap<NodeId, usize> = self
            .nodes
            .iter()
            .filter(|(_, alive)| **alive)
            .map(|(n, _)| (*n, 0))
            .collect();
        for meta in self.checkpoints() {
            for n in &meta.replicas {
                if let Some(l) = load.get_mut(n) {
                    *l += 1;
                }
            }
        }
        let factor = self.replication_factor;
        let affected = |m: &CheckpointMeta| {
            m.replicas.contains(&node)
                || m.in_sync.contains(&node)
                || m.open_on.contains(&node)
                || m.active == Some(node)
        };
        self.change_where(affected, |meta| {
            meta.replicas.retain(|n| *n != node);
            meta.in_sync.retain(|n| *n != node);
            meta.open_on.remove(&node);
            if meta.active == Some(node) {
                // Only a COLLOCATED checkpoint can still name a dead node
                // (a failover moved the others): it waits for ActiveReplicaSet.
                meta.active = None;
                meta.epoch = next_epoch(meta)?;
            }
            if meta.unlinked || meta.replica_per_opener() {
                return Ok(());
            }
            while meta.replicas.len() < factor {
                let Some(next) = load
                    .iter()
                    .filter(|(n, _)| !meta.replicas.contains(n))
                    .min_by_key(|(n, l)| (**l, **n))
                    .map(|(n, _)| *n)
                else {
                    break;
                };
                meta.replicas.push(next);
                if let Some(l) = load.get_mut(&next) {
                    *l += 1;
                }
            }
            Ok(())
        })?;
        Ok(Applied::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ckpt_proto::TIME_END;

    pub(crate) fn attrs(flags: CreationFlags) -> CreationAttributes {
        CreationAttributes {
            creation_flags: flags,
            checkpoint_size: 1 << 20,
            retention_duration_ns: TIME_END,
            max_sections: 8,
            max_section_size: 1 << 17,
            max_section_id_size: 32,
        }
    }

    fn name(s: &str) -> CheckpointName {
        CheckpointName::new(s).unwrap()
    }

    /// Creates a checkpoint whose backups then caught up (joined the
    /// in-sync set, as its active replica proposes once they hold it).
    fn create(
        state: &mut ClusterState,
        n: &str,
        flags: CreationFlags,
        creator: NodeId,
    ) -> CheckpointMeta {
        let meta = match state.apply(&Command::Create {
            name: name(n),
            attributes: attrs(flags),
            creator,
        }) {
            Applied::Created { meta } => meta,
            other => panic!("create {n}: {other:?}"),
        };
        if meta.active.is_none() {
            return meta;
        }
        let caught_up = Command::SetInSync {
            instance: meta.instance,
            epoch: meta.epoch,
            from: Some(meta.in_sync.clone()),
            generation: None,
            in_sync: meta.replicas.clone(),
        };
        assert_eq!(state.apply(&caught_up), Applied::Done);
        state.get(meta.instance).unwrap().clone()
    }

    #[test]
    fn create_places_on_least_loaded_nodes_creator_first() {
        let mut s = ClusterState::new(&[1, 2, 3, 4], 3);
        // In sync at creation: the active replica alone (it logs the creation).
        let created = s.apply(&Command::Create {
            name: name("z"),
            attributes: attrs(CreationFlags::WR_ALL_REPLICAS),
            creator: 2,
        });
        assert!(
            matches!(&created, Applied::Created { meta } if meta.in_sync == vec![2] && meta.active == Some(2)),
            "{created:?}"
        );
        let mut s = ClusterState::new(&[1, 2, 3, 4], 3);
        let a = create(&mut s, "a", CreationFlags::WR_ALL_REPLICAS, 2);
        assert_eq!(a.instance, InstanceId(1));
        assert_eq!(a.replicas, vec![2, 1, 3]);
        assert_eq!(a.active, Some(2));
        assert_eq!(a.in_sync, vec![1, 2, 3]);
        assert_eq!(a.epoch, Epoch(1));
        let b = create(&mut s, "b", CreationFlags::WR_ALL_REPLICAS, 2);
        // Node 4 carries nothing yet, so it comes before 1 and 3.
        assert_eq!(b.replicas, vec![2, 4, 1]);
        assert_eq!(b.instance, InstanceId(2));
        let c = create(
            &mut s,
            "c",
            CreationFlags::WR_ALL_REPLICAS | CreationFlags::CHECKPOINT_COLLOCATED,
            3,
        );
        assert_eq!(c.active, None);
        assert!(matches!(
            s.apply(&Command::Create { name: name("a"), attributes: attrs(CreationFlags::WR_ALL_REPLICAS), creator: 1 }),
            Applied::Failed(e) if e.code == ErrorCode::AlreadyExist
        ));
        assert_eq!(s.next_instance(), InstanceId(4));
    }

    #[test]
    fn failover_moves_every_active_role_of_the_dead_node_and_bumps_epochs() {
        let mut s = ClusterState::new(&[1, 2, 3], 3);
        let a = create(&mut s, "a", CreationFlags::WR_ALL_REPLICAS, 1);
        let b = create(&mut s, "b", CreationFlags::WR_ALL_REPLICAS, 1);
        let c = create(
            &mut s,
            "c",
            CreationFlags::WR_ALL_REPLICAS | CreationFlags::CHECKPOINT_COLLOCATED,
            1,
        );
        let d = create(&mut s, "d", CreationFlags::WR_ALL_REPLICAS, 2);
        // ActiveReplicaSet on node 1 for the COLLOCATED one: epoch 2.
        assert_eq!(
            s.apply(&Command::SetActive {
                instance: c.instance,
                node: 1
            }),
            Applied::Done
        );
        assert_eq!(s.apply(&Command::Failover { node: 1 }), Applied::Done);
        assert!(!s.node_alive(1));
        for inst in [a.instance, b.instance] {
            let m = s.get(inst).unwrap();
            assert_eq!(m.active, Some(2));
            assert_eq!(m.epoch, Epoch(2));
            assert_eq!(m.in_sync, vec![2, 3]);
        }
        let m = s.get(c.instance).unwrap();
        assert_eq!((m.active, m.epoch), (None, Epoch(3)));
        assert_eq!(m.in_sync, vec![2, 3]);
        // Not active on the dead node: same epoch, the dead backup leaves in_sync.
        let m = s.get(d.instance).unwrap();
        assert_eq!(
            (m.active, m.epoch, m.in_sync.clone()),
            (Some(2), Epoch(1), vec![2, 3])
        );
        // Back: alive again, not in sync until the data plane says so.
        assert_eq!(s.apply(&Command::NodeUp { node: 1 }), Applied::Done);
        assert!(s.node_alive(1));
        assert_eq!(s.get(a.instance).unwrap().active, Some(2));
    }

    /// Two in-sync changes computed by the active replica from one applied
    /// set (cluster simulator, run 31130): the first drops a stalled node 2
    /// and adds node 3; the second, a tick later, only re-proposes node 3
    /// and so still names node 2. Applied in that order without the check,
    /// node 2 came back into the set lacking a write released (ALL_SAFE)
    /// once the first had applied, and a failover to it lost that write.
    #[test]
    fn an_in_sync_change_computed_from_a_set_since_changed_is_refused() {
        let mut s = ClusterState::new(&[1, 2, 3], 3);
        let a = create(&mut s, "a", CreationFlags::WR_ALL_REPLICAS, 1);
        let set = |s: &mut ClusterState, from: &[NodeId], to: &[NodeId]| {
            s.apply(&Command::SetInSync {
                instance: a.instance,
                epoch: a.epoch,
                from: Some(from.to_vec()),
                generation: None,
                in_sync: to.to_vec(),
            })
        };
        assert_eq!(set(&mut s, &[1, 2, 3], &[1, 2]), Applied::Done);
        assert_eq!(set(&mut s, &[1, 2], &[1, 3]), Applied::Done);
        assert!(matches!(
            set(&mut s, &[1, 2], &[1, 2, 3]),
            Applied::Failed(e) if e.code == ErrorCode::TryAgain && e.detail.contains("[1, 3]")
        ));
        assert_eq!(s.get(a.instance).unwrap().in_sync, vec![1, 3]);
        // The set it was computed from is compared as a set, in any order.
        assert_eq!(set(&mut s, &[3, 1], &[1, 2, 3]), Applied::Done);
        assert_eq!(s.get(a.instance).unwrap().in_sync, vec![1, 2, 3]);
    }

    /// Of two in-sync changes computed at one generation, only the first
    /// applies, even when both name the same set (the active replica's
    /// fence against its own pending addition: cluster simulator run
    /// 117047); a change without a generation (older Raft logs) applies as
    /// before, and every applied change moves the generation on.
    #[test]
    fn an_in_sync_change_at_a_generation_since_passed_is_refused() {
        let mut s = ClusterState::new(&[1, 2, 3], 3);
        let a = create(&mut s, "a", CreationFlags::WR_ALL_REPLICAS, 1);
        let from = s.get(a.instance).unwrap().in_sync.clone();
        let g0 = s.get(a.instance).unwrap().in_sync_generation;
        let at = |generation: Option<u64>, to: &[NodeId]| Command::SetInSync {
            instance: a.instance,
            epoch: a.epoch,
            from: Some(from.clone()),
            generation,
            in_sync: to.to_vec(),
        };
        let addition = at(Some(g0), &[1, 2]);
        let fence = at(Some(g0), &from);
        assert_eq!(s.apply(&fence), Applied::Done);
        assert_eq!(s.get(a.instance).unwrap().in_sync_generation, g0 + 1);
        let now_at = format!("generation {}", g0 + 1);
        assert!(matches!(
            s.apply(&addition),
            Applied::Failed(e) if e.code == ErrorCode::TryAgain && e.detail.contains(&now_at)
        ));
        assert_eq!(s.get(a.instance).unwrap().in_sync, from);
        assert_eq!(s.apply(&at(None, &[1, 2])), Applied::Done);
        assert_eq!(s.get(a.instance).unwrap().in_sync, vec![1, 2]);
        assert_eq!(s.get(a.instance).unwrap().in_sync_generation, g0 + 2);
        // It travels in commands and snapshots.
        let cmd = at(Some(7), &[1]);
        assert_eq!(Command::decode(&cmd.encode()).unwrap(), cmd);
        let without_from = Command::SetInSync {
            instance: a.instance,
            epoch: a.epoch,
            from: None,
            generation: Some(7),
            in_sync: vec![1],
        };
        assert_eq!(
            Command::decode(&without_from.encode()).unwrap(),
            without_from
        );
        let back = ClusterState::restore(&s.encode(), 3).unwrap();
        assert_eq!(back.get(a.instance).unwrap().in_sync_generation, g0 + 2);
    }

    /// A snapshot written before the in-sync generation still restores
    /// (every set at generation 0).
    #[test]
    fn a_snapshot_without_in_sync_generations_restores_at_generation_zero() {
        let mut s = ClusterState::new(&[1, 2, 3], 3);
        let a = create(&mut s, "a", CreationFlags::WR_ALL_REPLICAS, 1);
        let b = create(&mut s, "b", CreationFlags::WR_ALL_REPLICAS, 2);
        let old = StateWireV1 {
            checkpoints: s
                .checkpoints()
                .map(|m| MetaWire::from(m.clone()).base)
                .collect(),
            nodes: s.nodes.iter().map(|(n, a)| (*n, *a)).collect(),
            next_instance: s.next_instance,
            addrs: s.addrs.iter().map(|(n, a)| (*n, a.clone())).collect(),
        };
        let bytes = postcard::to_allocvec(&old).unwrap();
        let back = ClusterState::restore(&bytes, 3).unwrap();
        for m in [&a, &b] {
            let mut want = s.get(m.instance).unwrap().clone();
            want.in_sync_generation = 0;
            assert_eq!(back.get(m.instance).unwrap(), &want);
        }
        assert!(ClusterState::restore(&bytes[..bytes.len() - 1], 3).is_err());
    }

    #[test]
    fn failover_without_a_live_in_sync_member_waits_for_the_node() {
        let mut s = ClusterState::new(&[1, 2, 3], 3);
        let a = create(&mut s, "a", CreationFlags::WR_ALL_REPLICAS, 1);
        let set = |s: &mut ClusterState, v: Vec<NodeId>, e: u64| {
            s.apply(&Command::SetInSync {
                instance: a.instance,
                epoch: Epoch(e),
                from: None,
                generation: None,
                in_sync: v,
            })
        };
        assert_eq!(set(&mut s, vec![1], 1), Applied::Done);
        assert!(
            matches!(set(&mut s, vec![2], 1), Applied::Failed(_)),
            "lacks the active"
        );
        assert!(
            matches!(set(&mut s, vec![1, 9], 1), Applied::Failed(_)),
            "not a replica"
        );
        assert!(
            matches!(set(&mut s, vec![1], 7), Applied::Failed(e) if e.code == ErrorCode::TryAgain)
        );
        s.apply(&Command::Failover { node: 1 });
        let m = s.get(a.instance).unwrap();
        assert_eq!((m.active, m.in_sync.clone()), (None, vec![1]));
        s.apply(&Command::NodeUp { node: 1 });
        let m = s.get(a.instance).unwrap();
        assert_eq!((m.active, m.epoch), (Some(1), Epoch(3)));
    }

    #[test]
    fn set_active_needs_an_in_sync_live_node_and_bumps_the_epoch() {
        let mut s = ClusterState::new(&[1, 2, 3], 3);
        let c = create(
            &mut s,
            "c",
            CreationFlags::WR_ALL_REPLICAS | CreationFlags::CHECKPOINT_COLLOCATED,
            1,
        );
        assert_eq!(
            s.apply(&Command::SetActive {
                instance: c.instance,
                node: 3
            }),
            Applied::Done
        );
        let m = s.get(c.instance).unwrap();
        assert_eq!((m.active, m.epoch), (Some(3), Epoch(2)));
        // Same node again: nothing changes.
        assert_eq!(
            s.apply(&Command::SetActive {
                instance: c.instance,
                node: 3
            }),
            Applied::Done
        );
        assert_eq!(s.get(c.instance).unwrap().epoch, Epoch(2));
        s.apply(&Command::SetInSync {
            instance: c.instance,
            epoch: Epoch(2),
            from: None,
            generation: None,
            in_sync: vec![3, 1],
        });
        assert!(matches!(
            s.apply(&Command::SetActive { instance: c.instance, node: 2 }),
            Applied::Failed(e) if e.code == ErrorCode::TryAgain
        ));
    }

    #[test]
    fn open_close_unlink_destroy() {
        let mut s = ClusterState::new(&[1, 2, 3], 2);
        let a = create(
            &mut s,
            "a",
            CreationFlags::WR_ALL_REPLICAS | CreationFlags::DISTRIBUTED,
            1,
        );
        assert_eq!(a.open_on, BTreeSet::from([1]));
        assert_eq!(a.replicas.len(), 2);
        s.apply(&Command::Opened {
            instance: a.instance,
            node: 3,
        });
        let m = s.get(a.instance).unwrap();
        assert!(m.replicas.contains(&3), "DISTRIBUTED openers get a replica");
        assert_eq!(s.apply(&Command::Unlink { name: name("a") }), Applied::Done);
        assert!(s.lookup(&name("a")).is_none());
        assert!(matches!(
            s.apply(&Command::Destroy {
                instance: a.instance
            }),
            Applied::Failed(_)
        ));
        s.apply(&Command::Closed {
            instance: a.instance,
            node: 1,
        });
        let epoch = s.get(a.instance).unwrap().epoch;
        s.apply(&Command::NodeRestarted { node: 3 });
        assert!(s.get(a.instance).unwrap().open_on.is_empty());
        assert_eq!(
            s.get(a.instance).unwrap().epoch,
            epoch,
            "node 3 is not its active"
        );
        s.apply(&Command::NodeRestarted { node: 1 });
        let m = s.get(a.instance).unwrap();
        assert_eq!(
            (m.active, m.epoch),
            (Some(1), Epoch(epoch.0 + 1)),
            "restarted active: new epoch"
        );
        // A new checkpoint may take the name meanwhile.
        let b = create(&mut s, "a", CreationFlags::WR_ALL_REPLICAS, 2);
        assert_eq!(
            s.apply(&Command::Destroy {
                instance: a.instance
            }),
            Applied::Done
        );
        assert!(s.get(a.instance).is_none());
        assert_eq!(s.lookup(&name("a")).unwrap().instance, b.instance);
    }

    #[test]
    fn retention_of_an_unlinked_instance_is_refused_and_kept() {
        // DESIGN.md §2 "retention set": an unlinked instance is destroyed at
        // its last close whatever its retention. The control plane is where
        // a cluster learns of the unlink first; refusing here is what keeps
        // a SetRetention that follows a Delete from racing the Unlink record
        // on its way to the active replica's store.
        let mut s = ClusterState::new(&[1, 2, 3], 2);
        let a = create(&mut s, "a", CreationFlags::WR_ACTIVE_REPLICA, 1);
        assert_eq!(
            s.apply(&Command::SetRetention {
                instance: a.instance,
                ns: 5,
            }),
            Applied::Done
        );
        assert_eq!(s.apply(&Command::Unlink { name: name("a") }), Applied::Done);
        let Applied::Failed(error) = s.apply(&Command::SetRetention {
            instance: a.instance,
            ns: 7,
        }) else {
            panic!("retention set on an unlinked instance was applied");
        };
        assert_eq!(error.code, ErrorCode::BadOperation, "{error}");
        assert!(error.detail.contains("deleted"), "{error}");
        assert_eq!(s.get(a.instance).unwrap().retention_duration_ns, 5);
    }

    #[test]
    fn epoch_starts_are_recorded_once_per_epoch() {
        let mut s = ClusterState::new(&[1, 2], 2);
        let a = create(&mut s, "a", CreationFlags::WR_ALL_REPLICAS, 1);
        s.apply(&Command::Failover { node: 1 });
        let start = |s: &mut ClusterState, e, q| {
            s.apply(&Command::EpochStarted {
                instance: a.instance,
                epoch: Epoch(e),
                start_seq: Seq(q),
            })
        };
        assert!(matches!(start(&mut s, 1, 5), Applied::Failed(_)));
        assert_eq!(start(&mut s, 2, 10), Applied::Done);
        assert_eq!(start(&mut s, 2, 10), Applied::Done);
        assert!(matches!(start(&mut s, 2, 11), Applied::Failed(_)));
        assert_eq!(
            s.get(a.instance).unwrap().epoch_starts,
            vec![(Epoch(1), Seq(1)), (Epoch(2), Seq(10))]
        );
    }

    fn addrs(port: u16) -> NodeAddrs {
        NodeAddrs {
            client_addr: format!("127.0.0.1:{port}").parse().unwrap(),
            peer_addr: format!("127.0.0.1:{}", port + 1).parse().unwrap(),
            admin_addr: format!("127.0.0.1:{}", port + 2).parse().unwrap(),
        }
    }

    /// Replicas per node counted over every checkpoint: what [`ClusterState::loads`]
    /// keeps up to date.
    fn counted(s: &ClusterState) -> BTreeMap<NodeId, usize> {
        let mut per_node = BTreeMap::new();
        for m in s.checkpoints() {
            for n in &m.replicas {
                *per_node.entry(*n).or_insert(0) += 1;
            }
        }
        per_node
    }

    fn loads_of(s: &mut ClusterState) -> BTreeMap<NodeId, usize> {
        s.loads()
            .iter()
            .filter(|(_, count)| **count > 0)
            .map(|(n, c)| (*n, *c))
            .collect()
    }

    #[test]
    fn a_snapshot_encoded_by_reference_has_the_owned_layout() {
        let mut s = ClusterState::new(&[1, 2, 3], 3);
        for i in 0..5u64 {
            create(
                &mut s,
                &format!("c{i}"),
                CreationFlags::WR_ALL_REPLICAS,
                1 + i % 3,
            );
        }
        let owned = StateWire {
            checkpoints: s.checkpoints().cloned().collect(),
            nodes: s.nodes.iter().map(|(n, a)| (*n, *a)).collect(),
            next_instance: s.next_instance,
            addrs: s.addrs.iter().map(|(n, a)| (*n, a.clone())).collect(),
        };
        assert_eq!(s.encode(), postcard::to_allocvec(&owned).unwrap());
    }

    #[test]
    fn loads_kept_up_to_date_match_a_count_of_every_checkpoint() {
        let mut s = ClusterState::new(&[1, 2, 3, 4], 2);
        let mut metas = Vec::new();
        for i in 0..12u64 {
            let flags = if i % 3 == 0 {
                CreationFlags::WR_ALL_REPLICAS | CreationFlags::DISTRIBUTED
            } else {
                CreationFlags::WR_ACTIVE_REPLICA
            };
            metas.push(create(&mut s, &format!("c{i}"), flags, 1 + i % 4));
            assert_eq!(loads_of(&mut s), counted(&s), "after creating c{i}");
        }
        // Placement spreads them: no node holds more than one above another.
        let loads = loads_of(&mut s);
        let (min, max) = (loads.values().min(), loads.values().max());
        assert!(max.zip(min).is_some_and(|(a, b)| a - b <= 1), "{loads:?}");
        let commands = [
            // A DISTRIBUTED opener gets a replica.
            Command::Opened {
                instance: metas[0].instance,
                node: 4,
            },
            Command::Opened {
                instance: metas[3].instance,
                node: 3,
            },
            Command::Unlink { name: name("c5") },
            Command::Closed {
                instance: metas[5].instance,
                node: metas[5].open_on.first().copied().unwrap_or(1),
            },
            Command::Destroy {
                instance: metas[5].instance,
            },
            // Refused (still open): counted as before.
            Command::Destroy {
                instance: metas[6].instance,
            },
            Command::Failover { node: 2 },
            Command::RemoveNode { node: 2 },
        ];
        for command in &commands {
            s.apply(command);
            assert_eq!(loads_of(&mut s), counted(&s), "after {command:?}");
        }
        assert!(!counted(&s).contains_key(&2));
        // Several commands between two placements, and a restored state.
        let mut t = s.clone();
        t.apply(&Command::Opened {
            instance: metas[9].instance,
            node: 1,
        });
        t.apply(&Command::Unlink { name: name("c7") });
        create(&mut t, "late", CreationFlags::WR_ACTIVE_REPLICA, 3);
        assert_eq!(loads_of(&mut t), counted(&t));
        let mut restored = ClusterState::restore(&t.encode(), 2).unwrap();
        assert_eq!(loads_of(&mut restored), counted(&t));
    }

    #[test]
    fn loads_after_more_changes_than_are_remembered_are_counted_again() {
        // Every checkpoint on every node.
        let mut s = ClusterState::new(&[1, 2, 3], 3);
        let count = Loads::CHANGED_MAX + 200;
        for i in 0..count {
            create(
                &mut s,
                &format!("c{i}"),
                CreationFlags::WR_ACTIVE_REPLICA,
                1,
            );
        }
        assert_eq!(loads_of(&mut s), counted(&s));
        // Node 3 dies and leaves: every checkpoint it held changes.
        s.apply(&Command::Failover { node: 3 });
        s.apply(&Command::RemoveNode { node: 3 });
        assert!(s.loads.recount, "more changed than remembered");
        assert!(s.loads.changed.is_empty());
        assert_eq!(loads_of(&mut s), counted(&s));
        assert!(!counted(&s).contains_key(&3));
    }

    #[test]
    fn a_removed_node_leaves_every_checkpoint_and_its_replicas_move() {
        let mut s = ClusterState::new(&[1, 2, 3, 4], 3);
        let metas: Vec<CheckpointMeta> = (0..8)
            .map(|i| {
                create(
                    &mut s,
                    &format!("c{i}"),
                    CreationFlags::WR_ALL_REPLICAS,
                    1 + i % 4,
                )
            })
            .collect();
        let on_3 = metas.iter().filter(|m| m.replicas.contains(&3)).count();
        assert!(on_3 > 0);
        // Alive: refused, nothing changes.
        let before = s.clone();
        assert!(matches!(
            s.apply(&Command::RemoveNode { node: 3 }),
            Applied::Failed(e) if e.code == ErrorCode::BadOperation && e.detail.contains("alive")
        ));
        assert_eq!(s, before);
        assert!(matches!(
            s.apply(&Command::RemoveNode { node: 9 }),
            Applied::Failed(e) if e.code == ErrorCode::NotExist
        ));
        s.apply(&Command::Failover { node: 3 });
        assert_eq!(s.apply(&Command::RemoveNode { node: 3 }), Applied::Done);
        assert!(!s.is_member(3));
        assert_eq!(s.nodes().map(|(n, _)| n).collect::<Vec<_>>(), vec![1, 2, 4]);
        for m in s.checkpoints() {
            assert!(!m.replicas.contains(&3) && !m.in_sync.contains(&3), "{m:?}");
            assert_ne!(m.active, Some(3));
            // Three live nodes left: every checkpoint has three replicas
            // again, the new one not in sync until it caught up.
            assert_eq!(m.replicas.len(), 3, "{m:?}");
        }
        assert_eq!(s.under_replicated(), on_3);
        // The same commands give the same state on every node.
        let mut t = ClusterState::new(&[1, 2, 3, 4], 3);
        for i in 0..8 {
            create(
                &mut t,
                &format!("c{i}"),
                CreationFlags::WR_ALL_REPLICAS,
                1 + i % 4,
            );
        }
        t.apply(&Command::Failover { node: 3 });
        t.apply(&Command::RemoveNode { node: 3 });
        assert_eq!(s, t);
    }

    #[test]
    fn removing_the_only_in_sync_copy_is_refused() {
        let mut s = ClusterState::new(&[1, 2], 2);
        let m = create(&mut s, "a", CreationFlags::WR_ACTIVE_REPLICA, 1);
        s.apply(&Command::SetInSync {
            instance: m.instance,
            epoch: m.epoch,
            from: Some(m.in_sync.clone()),
            generation: None,
            in_sync: vec![1],
        });
        s.apply(&Command::Failover { node: 1 });
        let refused = s.apply(&Command::RemoveNode { node: 1 });
        assert!(
            matches!(&refused, Applied::Failed(e) if e.detail.contains("only in-sync copy")),
            "{refused:?}"
        );
        assert!(s.is_member(1));
    }

    #[test]
    fn an_added_node_gets_replicas_when_it_comes_up() {
        let mut s = ClusterState::new(&[1, 2], 3);
        let m = create(&mut s, "a", CreationFlags::WR_ALL_REPLICAS, 1);
        assert_eq!(m.replicas.len(), 2);
        assert_eq!(
            s.under_replicated(),
            0,
            "as many replicas as live nodes, all in sync"
        );
        assert_eq!(
            s.apply(&Command::AddNode {
                node: 3,
                addrs: addrs(9000)
            }),
            Applied::Done
        );
        assert!(s.is_member(3) && !s.node_alive(3));
        assert!(matches!(
            s.apply(&Command::AddNode { node: 3, addrs: addrs(9100) }),
            Applied::Failed(e) if e.code == ErrorCode::AlreadyExist
        ));
        assert!(matches!(
            s.apply(&Command::AddNode { node: 0, addrs: addrs(9100) }),
            Applied::Failed(e) if e.code == ErrorCode::InvalidParameter
        ));
        assert_eq!(s.get(m.instance).unwrap().replicas.len(), 2);
        s.apply(&Command::NodeUp { node: 3 });
        assert_eq!(s.get(m.instance).unwrap().replicas, vec![1, 2, 3]);
        assert_eq!(
            s.under_replicated(),
            1,
            "the new replica is not in sync yet"
        );
        assert_eq!(s.added_addrs().collect::<Vec<_>>(), vec![(3, &addrs(9000))]);
        let back = ClusterState::restore(&s.encode(), 3).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.added_addrs().count(), 1);
        let cmd = Command::AddNode {
            node: 3,
            addrs: addrs(9000),
        };
        assert_eq!(Command::decode(&cmd.encode()).unwrap(), cmd);
    }

    #[test]
    fn state_and_commands_round_trip() {
        let mut s = ClusterState::new(&[1, 2, 3], 3);
        create(&mut s, "a", CreationFlags::WR_ALL_REPLICAS, 1);
        let b = create(&mut s, "b", CreationFlags::WR_ACTIVE_REPLICA, 2);
        s.apply(&Command::Unlink { name: name("b") });
        s.apply(&Command::Failover { node: 3 });
        let back = ClusterState::restore(&s.encode(), 3).unwrap();
        assert_eq!(back, s);
        // Both forms: a log written before SetInSync carried the set it
        // replaces still decodes, as a change applied unconditionally.
        for from in [None, Some(vec![1, 2, 3])] {
            let cmd = Command::SetInSync {
                instance: b.instance,
                epoch: Epoch(4),
                from,
                generation: None,
                in_sync: vec![1, 2],
            };
            assert_eq!(Command::decode(&cmd.encode()).unwrap(), cmd);
        }
        assert!(Command::decode(&[0xff, 0xff]).is_err());
    }
}
