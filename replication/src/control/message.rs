//! What the control plane exchanges with its driver: messages between
//! nodes, what to persist, what was applied.

use ckpt_proto::{CkptError, CkptResult, ErrorCode};
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use serde::{Deserialize, Serialize};

use super::state::{Applied, ClusterState, Command};
use crate::NodeId;

/// Identifies a local proposal; the applied command carries it back on the
/// proposing node only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(pub u64);

/// A control-plane message between two nodes (postcard on the wire).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlMessage {
    /// A raft-rs message, protobuf-encoded.
    Raft(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A node asks the Raft leader for its lease; `sent_at_ms` is the
    /// requester's clock, echoed in the grant.
    LeaseRequest {
        /// When the request left (requester's clock).
        sent_at_ms: u64,
    },
    /// The leader grants the lease asked for at `sent_at_ms`. It holds
    /// only once the requester has applied the log up to `commit`: a node
    /// whose state is behind (restarted from an old log, or just out of a
    /// partition) must not serve as an active replica the control plane
    /// has replaced meanwhile.
    LeaseGrant {
        /// The request's `sent_at_ms`.
        sent_at_ms: u64,
        /// The index the requester must have applied: the last entry of
        /// the leader's log when it granted, committed or not (a failover
        /// of the requester proposed just before the grant must reach it
        /// first).
        commit: u64,
    },
    /// One part of a Raft message larger than one peer message may be (a
    /// snapshot of a large registry; see [`super::parts`]).
    RaftPart {
        /// The sender's life (its control plane's incarnation).
        incarnation: u64,
        /// The message's number among the sender's messages in parts.
        message: u64,
        /// This part's number, from 0.
        part: u32,
        /// How many parts the message has.
        parts: u32,
        /// The part's bytes of the protobuf-encoded message.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
}

impl ControlMessage {
    /// postcard bytes.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("a ControlMessage always serializes")
    }

    /// # Errors
    /// `BAD_OPERATION` when the bytes are not a control message.
    pub fn decode(bytes: &[u8]) -> CkptResult<ControlMessage> {
        postcard::from_bytes(bytes).map_err(|e| {
            CkptError::new(
                ErrorCode::BadOperation,
                format!("undecodable control message: {e}"),
            )
        })
    }
}

/// What must be durable (see [`crate::raftlog::RaftLog::persist`]) before
/// the messages of the same [`ControlReady`] are sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RaftPersist {
    /// Log entries to append; an entry replaces any stored entry of the same
    /// or a higher index.
    pub entries: Vec<Entry>,
    /// New hard state (term, vote, commit).
    pub hard_state: Option<HardState>,
    /// A snapshot received from the leader: it replaces the whole log.
    pub snapshot: Option<Snapshot>,
}

impl RaftPersist {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.hard_state.is_none() && self.snapshot.is_none()
    }
}

/// The raft state read back from disk at start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PersistedRaft {
    /// Last persisted hard state (default for a new node).
    pub hard_state: HardState,
    /// The latest snapshot (installed or compacted), carrying a
    /// [`super::ClusterState`] in its data.
    pub snapshot: Option<Snapshot>,
    /// Entries after the snapshot, ascending and contiguous.
    pub entries: Vec<Entry>,
}

/// One round of work for the driver: persist, then send, then act on
/// `applied`, then hand it back with [`super::ControlPlane::advance`].
#[derive(Debug, Default)]
pub struct ControlReady {
    /// Sequence number, checked by `advance`.
    pub number: u64,
    /// Write and fsync before sending `messages` or calling `advance`.
    pub persist: Option<RaftPersist>,
    /// Send after `persist` is durable.
    pub messages: Vec<(NodeId, ControlMessage)>,
    /// Committed commands in log order with their outcome; the ticket is
    /// `Some` on the node that proposed it (or a ticket that timed out /
    /// could not be proposed, with `Failed`).
    pub applied: Vec<(Option<Ticket>, Command, Applied)>,
    /// The whole state was replaced by a snapshot from the leader: re-read
    /// [`super::ControlPlane::state`] instead of relying on `applied`.
    pub state_replaced: bool,
    /// A compaction of the Raft log to carry out off the driver's thread
    /// (see [`Compaction`]).
    pub compaction: Option<Compaction>,
}

/// A compaction of the Raft log, handed to the driver to carry out off its
/// thread: [`Compaction::encode`] the snapshot, make it durable
/// ([`crate::raftlog::write_snapshot`]), then hand it back with
/// [`super::ControlPlane::compacted`].
///
/// Encoding and writing the whole registry took 100–300 ms at 50,000
/// checkpoints; on the driver, that held up Raft's ticks and the lease
/// (docs/replication.md). Meanwhile the log stays whole in memory, and the
/// previous snapshot is what a follower behind the log is sent. No other
/// compaction starts until this one is handed back; one that is lost (the
/// process dies) only leaves the log longer, to be compacted in the next
/// life.
pub struct Compaction {
    index: u64,
    prepared: Prepared,
}

enum Prepared {
    /// The state as applied up to the index, to be encoded.
    State(Box<ToEncode>),
    /// Encoded already (a membership change compacts at once).
    Encoded(Snapshot),
}

struct ToEncode {
    term: u64,
    conf_state: ConfState,
    /// A copy is O(1): persistent maps.
    state: ClusterState,
}

impl Compaction {
    pub(crate) fn of_state(
        index: u64,
        term: u64,
        conf_state: ConfState,
        state: ClusterState,
    ) -> Compaction {
        Compaction {
            index,
            prepared: Prepared::State(Box::new(ToEncode {
                term,
                conf_state,
                state,
            })),
        }
    }

    pub(crate) fn encoded(snap: Snapshot) -> Compaction {
        Compaction {
            index: snap.get_metadata().index,
            prepared: Prepared::Encoded(snap),
        }
    }

    /// The last log entry the snapshot covers.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The snapshot: the whole cluster state, encoded (the slow part).
    pub fn encode(self) -> Snapshot {
        match self.prepared {
            Prepared::Encoded(snap) => snap,
            Prepared::State(to) => {
                let mut snap = Snapshot::default();
                snap.set_data(to.state.encode().into());
                let meta = snap.mut_metadata();
                meta.index = self.index;
                meta.term = to.term;
                meta.set_conf_state(to.conf_state);
                snap
            }
        }
    }
}

impl std::fmt::Debug for Compaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compaction")
            .field("index", &self.index)
            .field("encoded", &matches!(self.prepared, Prepared::Encoded(_)))
            .finish()
    }
}
