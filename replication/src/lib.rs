//! ckpt-replication: what turns single-node ckpt servers into a cluster.
//!
//! Layout:
//! - [`config`]: `cluster.toml` (nodes, replication settings), validated
//!   with errors that name the key.
//! - [`control`]: the Raft control plane (raft-rs) and its metadata state
//!   machine — registry, placement, active replicas, epochs, in-sync sets,
//!   leases, open sets and retention — without IO.
//! - [`data`]: the data plane — log shipping from active replicas to
//!   backups, acknowledgements, catch-up, and the tracker that decides
//!   which writes may be answered — without IO.
//! - [`raftlog`]: the only IO here: the control plane's durable Raft log
//!   and hard state (crc'd frames, fsync, torn tail dropped, compaction).
//!
//! Invariants:
//! - every node applies the same committed commands in the same order and
//!   so holds the same [`control::ClusterState`];
//! - Raft state is fsynced before the messages that depend on it are sent;
//! - an active replica acts only while it holds its lease, and a new one is
//!   named only after the old lease has expired.

pub mod config;
pub mod control;
pub mod data;
pub mod raftlog;
#[cfg(test)]
mod sim;

pub use config::{ClusterConfig, ConfigError, NodeConfig};
pub use control::{
    Applied, Changes, CheckpointMeta, ClusterState, Command, ControlMessage, ControlPlane,
    ControlReady, NodeAddrs, PersistedRaft, RaftPersist, Ticket,
};
pub use raftlog::RaftLog;

/// A cluster node's id (also its Raft id; never 0).
pub type NodeId = u64;

/// Failures of this crate outside the user-facing [`ckpt_proto::CkptError`]s.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// The cluster file is refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The Raft log directory cannot be read or written, or is corrupt.
    #[error("raft log {path}: {detail}")]
    RaftLog {
        /// The file or directory at fault.
        path: std::path::PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// raft-rs refused the persisted state or the configuration.
    #[error("raft: {0}")]
    Raft(String),
}
