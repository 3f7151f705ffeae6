//! The control plane: cluster metadata replicated by Raft (raft-rs), with
//! no IO — no sockets, threads, files or clocks. Time comes in as `now_ms`
//! arguments; durability is the driver's job ([`crate::raftlog`]).
//!
//! - [`state`]: the deterministic metadata state machine ([`ClusterState`],
//!   [`Command`], [`Applied`]).
//! - [`message`]: what goes between nodes and to the driver
//!   ([`ControlMessage`], [`ControlReady`], [`RaftPersist`], [`PersistedRaft`]).
//! - [`node`]: [`ControlPlane`], one node's Raft member plus the leader's
//!   duties (leases, dead-node failover, retention timers).

pub mod message;
pub mod node;
pub mod parts;
pub mod state;
pub mod unbegun;
pub mod unsynced;

#[cfg(test)]
mod tests;

pub use message::{Compaction, ControlMessage, ControlReady, PersistedRaft, RaftPersist, Ticket};
pub use node::{ControlPlane, COMPACT_ENTRIES_DEFAULT};
/// The Raft snapshot a [`Compaction`] encodes to.
pub use raft::eraftpb::Snapshot as RaftSnapshot;
pub use state::{Applied, Changes, CheckpointMeta, ClusterState, Command, NodeAddrs};
pub use unbegun::Unbegun;
pub use unsynced::Unsynced;
