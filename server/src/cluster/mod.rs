//! The cluster: peer transport, and the runtime that drives the
//! replication cores (control plane, data plane) with real sockets, clocks
//! and the store.

pub mod transport;
pub mod messages;
pub mod metrics;
