//! The data plane: primary-backup log shipping of checkpoint entries, and the
//! decision which client requests may be answered now.
//!
//! Everything here is IO-free and deterministic (DESIGN.md §4 "A core
//! without IO"): inputs are method calls carrying `now_ms`, outputs are
//! [`DataOutput`]s the driver drains and carries out — messages to send,
//! entries to append on a backup, WAL reads, snapshots, proposals to the
//! control plane, released and failed client tickets. No sockets, threads or
//! clocks inside, so a seeded simulator drives the same code as the server.
//!
//! Layout:
//! - [`tracker`]: the pure reply rule ([`Tracker`], [`Need`]).
//! - [`message`]: what peers send each other ([`DataMessage`], serde).
//! - [`catchup`]: where a backup's log stops being a prefix of the primary's
//!   (KIP-101: by epoch boundaries, never a high-water mark).
//! - [`plane`]: the per-node state machine ([`DataPlane`], [`DataOutput`]).
//!
//! Invariants:
//! - A backup appends only entries whose predecessor `(epoch, seq)` equals its
//!   own last entry (the log-matching rule: an epoch has one primary, so equal
//!   `(epoch, seq)` means equal logs up to there), and never entries of an
//!   epoch older than the one the control plane told it (fencing).
//! - A ticket needing every in-sync replica is released only once every member
//!   of the in-sync set *applied by the control plane* (plus members being
//!   added) acknowledged it; a member leaves that set only through the control
//!   plane, never by a local decision.
//! - Acknowledgements count only within the epoch they were sent in.
//! - The log-matching rule needs every `(epoch, seq)` to name one entry: an
//!   active replica that crashed must not go on writing in the same epoch (it
//!   may have lost entries a backup holds); it gets a new epoch first.
//! - Nothing is shipped to a backup, in sync or not, before its CatchUp of
//!   the current epoch was answered: only then is its log known to match.

pub mod catchup;
pub mod message;
pub mod plane;
pub mod tracker;

#[cfg(test)]
mod tests;

pub use catchup::{plan_catch_up, CatchUpPlan};
pub use message::{DataMessage, WireEntry};
pub use plane::{
    DataOutput, DataPlane, Proposal, EARLY_BYTES_MAX, LAG_WINDOW_ENTRIES_MAX,
    READ_BYTES_MAX_DEFAULT,
};
pub use tracker::{Need, Tracker, LAG_RECORDS_MAX_DEFAULT};

use ckpt_storage::{Epoch, InstanceId, Lsn, Seq};

/// A node of the cluster (the `id` of a `[[nodes]]` table).
pub type NodeId = u64;

/// Where an instance's log is (the storage crate's type, re-exported).
pub use ckpt_storage::Position;

/// The `(epoch, seq)` of a position, in log order.
pub fn point(position: &Position) -> (Epoch, Seq) {
    (position.epoch, position.seq)
}

/// One entry appended on this node, as the data plane sees it: its header and
/// its shipped bytes (`Entry::encode`). The lsn is node-local and never sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShippedEntry {
    /// The checkpoint instance.
    pub instance: InstanceId,
    /// Epoch the entry was ordered in.
    pub epoch: Epoch,
    /// Sequence number within the instance.
    pub seq: Seq,
    /// Where this node's WAL holds it (for holding segments a backup needs).
    pub lsn: Lsn,
    /// The encoded entry, shipped as is.
    pub bytes: Vec<u8>,
}

/// The replication metadata of one checkpoint instance, filled by the server
/// from the control plane's `CheckpointMeta` after every applied command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSet {
    /// The checkpoint instance.
    pub instance: InstanceId,
    /// Every node holding a replica, the active one included.
    pub replicas: Vec<NodeId>,
    /// The active replica (primary) of `epoch`; `None` while a COLLOCATED
    /// checkpoint waits for ActiveReplicaSet.
    pub active: Option<NodeId>,
    /// The current epoch.
    pub epoch: Epoch,
    /// The first sequence number of each epoch, oldest first.
    pub epoch_starts: Vec<(Epoch, Seq)>,
    /// Members holding every acknowledged write, the active one included.
    pub in_sync: Vec<NodeId>,
    /// The in-sync set's generation (bumped by every change applied): a
    /// proposal names it and applies only at it.
    pub in_sync_generation: u64,
    /// Writes needing every in-sync replica fail with TRY_AGAIN below this.
    pub min_in_sync: usize,
}
