//! The cluster: peer transport, and the runtime that drives the
//! replication cores (control plane, data plane) with real sockets, clocks
//! and the store.
//!
//! Layout:
//! - [`transport`]: one outbound connection per peer, inbound connections
//!   checked by a `Hello`, length-delimited postcard frames.
//! - [`messages`]: forwarded requests and the serde mirrors they need.
//! - [`runtime`]: [`Cluster`], the driver task owning the cores, and the
//!   API the service calls (create, write, read, synchronize, ...).
//! - [`metrics`]: replication lag, in-sync sizes, epochs, failovers,
//!   forwards, Raft leader and term, lease expiries.

pub mod messages;
pub mod metrics;
pub mod runtime;
pub mod transport;

#[cfg(test)]
mod tests;

pub use runtime::{need_for, Cluster, ClusterError, ClusterStateSnapshot, Listed, PeerMessage};
