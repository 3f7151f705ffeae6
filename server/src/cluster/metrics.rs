//! The cluster's Prometheus metrics, registered on the server's registry.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts, Registry};

/// Every metric of the cluster runtime.
#[derive(Clone)]
pub struct ClusterMetrics {
    /// Records a backup is behind the active replica, by instance and node.
    pub lag_records: IntGaugeVec,
    /// Bytes a backup is behind, by instance and node.
    pub lag_bytes: IntGaugeVec,
    /// In-sync set size, by instance (of the checkpoints this node is active for).
    pub in_sync: IntGaugeVec,
    /// WR_ACTIVE_REPLICA and WEAK writes held back by the lag bound, by
    /// instance (of the checkpoints this node is active for).
    pub held_by_lag: IntGaugeVec,
    /// Epoch changes applied (any checkpoint).
    pub epoch_changes: IntCounter,
    /// Failovers applied (one per dead node, however many checkpoints).
    pub failovers: IntCounter,
    /// Requests this node forwarded to another node.
    pub forwarded: IntCounter,
    /// Requests other nodes forwarded to this one.
    pub forwarded_in: IntCounter,
    /// The Raft leader this node knows (0 = none).
    pub raft_leader: IntGauge,
    /// The Raft term.
    pub raft_term: IntGauge,
    /// Times this node found its lease expired while it was active for some checkpoint.
    pub lease_expiries: IntCounter,
    /// Whether this node holds its lease now.
    pub lease_held: IntGauge,
    /// Snapshots this node sent to backups whose log could not be continued.
    pub snapshots_sent: IntCounter,
    /// Snapshots this node received as a backup and installed.
    pub snapshots_installed: IntCounter,
    /// Parts of snapshots this node sent (a snapshot streams in parts of
    /// about 4 MiB, each acknowledged before the next is read).
    pub snapshot_parts_sent: IntCounter,
    /// Checkpoints whose metadata changed and that this node has not yet
    /// acted on (a failover or a restart changes every checkpoint at once;
    /// the runtime takes them a slice per pass).
    pub sync_backlog: IntGauge,
    /// Passes of the runtime that left checkpoints for a later pass.
    pub sync_deferred: IntCounter,
    /// Checkpoints this node is the active replica of (exported whether or
    /// not the per-checkpoint series are).
    pub active_checkpoints: IntGauge,
    /// Of those, the ones with a replica outside the in-sync set.
    pub active_out_of_sync: IntGauge,
    /// The most records any backup of a checkpoint this node is active for
    /// is behind.
    pub lag_records_max: IntGauge,
    /// How long each pass of the runtime's driver took (Raft ticks wait
    /// for a pass to end).
    pub pass_seconds: Histogram,
    /// How long each Raft log compaction took off the driver (encoding the
    /// whole cluster state and writing it durably).
    pub raft_compaction_seconds: Histogram,
    /// Messages to peers dropped before they were sent (a full send queue,
    /// a node that is not a peer, a message larger than a frame).
    pub peer_dropped: IntCounter,
    /// Parts of Raft messages received (a snapshot larger than 1 MiB, sent
    /// to a node behind the compacted Raft log, goes in parts).
    pub raft_parts: IntCounter,
}

fn counter(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    let c = IntCounter::new(name, help)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
) -> prometheus::Result<Histogram> {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?;
    registry.register(Box::new(h.clone()))?;
    Ok(h)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let g = IntGauge::new(name, help)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

impl ClusterMetrics {
    /// Registers every metric on `registry`.
    ///
    /// # Errors
    /// A name already registered there.
    pub fn register(registry: &Registry) -> prometheus::Result<ClusterMetrics> {
        Ok(ClusterMetrics {
            lag_records: gauge_vec(
                registry,
                "ckpt_replication_lag_records",
                "Records a backup is behind the active replica",
                &["instance", "node"],
            )?,
            lag_bytes: gauge_vec(
                registry,
                "ckpt_replication_lag_bytes",
                "Bytes a backup is behind the active replica",
                &["instance", "node"],
            )?,
            in_sync: gauge_vec(
                registry,
                "ckpt_in_sync_replicas",
                "In-sync set size of the checkpoints this node is active for",
                &["instance"],
            )?,
            held_by_lag: gauge_vec(
                registry,
                "ckpt_replication_writes_held_by_lag",
                "WR_ACTIVE_REPLICA and WEAK writes waiting for a backup within replica_lag_records_max",
                &["instance"],
            )?,
            epoch_changes: counter(
                registry,
                "ckpt_epoch_changes_total",
                "Epoch changes applied by the control plane",
            )?,
            failovers: counter(
                registry,
                "ckpt_failovers_total",
                "Failovers applied (one per dead node)",
            )?,
            forwarded: counter(
                registry,
                "ckpt_forwarded_requests_total",
                "Requests forwarded to the active replica on another node",
            )?,
            forwarded_in: counter(
                registry,
                "ckpt_forwarded_in_requests_total",
                "Requests other nodes forwarded to this one",
            )?,
            raft_leader: gauge(
                registry,
                "ckpt_raft_leader",
                "The Raft leader this node knows (0 = none)",
            )?,
            raft_term: gauge(registry, "ckpt_raft_term", "The Raft term")?,
            lease_expiries: counter(
                registry,
                "ckpt_lease_expiries_total",
                "Times this node's lease expired while it was active for a checkpoint",
            )?,
            lease_held: gauge(
                registry,
                "ckpt_lease_held",
                "Whether this node holds its lease (1) or not (0)",
            )?,
            snapshots_sent: counter(
                registry,
                "ckpt_replication_snapshots_sent_total",
                "Checkpoint snapshots sent to backups whose log could not be continued",
            )?,
            snapshots_installed: counter(
                registry,
                "ckpt_replication_snapshots_installed_total",
                "Checkpoint snapshots received from the active replica and installed",
            )?,
            snapshot_parts_sent: counter(
                registry,
                "ckpt_replication_snapshot_parts_sent_total",
                "Parts of checkpoint snapshots sent to backups (about 4 MiB each)",
            )?,
            sync_backlog: gauge(
                registry,
                "ckpt_cluster_sync_backlog",
                "Checkpoints whose metadata changed and that this node has not yet acted on",
            )?,
            sync_deferred: counter(
                registry,
                "ckpt_cluster_sync_deferred_total",
                "Runtime passes that left checkpoints' metadata changes for a later pass",
            )?,
            active_checkpoints: gauge(
                registry,
                "ckpt_active_checkpoints",
                "Checkpoints this node is the active replica of",
            )?,
            active_out_of_sync: gauge(
                registry,
                "ckpt_active_checkpoints_out_of_sync",
                "Checkpoints this node is active for with a replica outside the in-sync set",
            )?,
            lag_records_max: gauge(
                registry,
                "ckpt_replication_lag_records_max",
                "The most records a backup of a checkpoint this node is active for is behind",
            )?,
            raft_parts: counter(
                registry,
                "ckpt_cluster_raft_message_parts_total",
                "Parts of Raft messages received (a Raft snapshot over 1 MiB goes in parts)",
            )?,
            peer_dropped: counter(
                registry,
                "ckpt_peer_messages_dropped_total",
                "Messages to peers dropped before they were sent (a full send queue: a slow or unreachable peer)",
            )?,
            pass_seconds: histogram(
                registry,
                "ckpt_cluster_pass_seconds",
                "Time of each pass of the cluster runtime's driver (Raft ticks wait for it)",
                vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5],
            )?,
            raft_compaction_seconds: histogram(
                registry,
                "ckpt_cluster_raft_compaction_seconds",
                "Time of each Raft log compaction, off the driver: encoding the cluster state and writing raft.snap durably",
                vec![0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0],
            )?,
        })
    }
}
