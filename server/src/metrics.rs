//! Prometheus metrics and the admin HTTP endpoint, and the watchdog that
//! takes the server down when its store fails.
//!
//! The admin endpoint is bound before recovery, so an orchestrator can tell
//! a node that is replaying its log from one that is dead: `/livez` answers
//! 200 as long as the process runs; `/readyz` answers 503 with
//! `recovering: N of M records` while the log is replayed, 200 `ready` once
//! clients are served, and 503 again when the store fails (poisoned, or a
//! thread of it dead) or the server shuts down. `/health` is the older
//! name of readiness (200 `serving` or 503 `not serving`). `/metrics`,
//! `/config`, `/cluster` and `/checksums` complete it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use ckpt_proto::ErrorCode;
use ckpt_storage::store::RecoveryProgress;
use ckpt_storage::Store;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    wal_bytes: IntCounter,
    wal_records: IntCounter,
    wal_fsyncs: IntCounter,
    group_commits: IntCounter,
    batch_size: Histogram,
    rocksdb_flushes: IntCounter,
    wal_segments: IntGauge,
    memtable_bytes: IntGauge,
    connections: IntGauge,
    disk_full: IntGauge,
    serving: AtomicBool,
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let counter = IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(counter.clone()))
        .expect("unique metric");
    counter
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let gauge = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(gauge.clone()))
        .expect("unique metric");
    gauge
}

impl Metrics {
    /// The registry every metric is on (the cluster runtime adds its own).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Registers all metrics.
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "ckpt_requests_total",
                "Requests served, by operation and result code",
            ),
            &["op", "result"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(requests.clone()))
            .expect("unique metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "ckpt_request_duration_seconds",
                "Request latency by operation",
            )
            .buckets(vec![
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                0.1, 0.25, 1.0,
            ]),
            &["op"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(latency.clone()))
            .expect("unique metric");
        let batch_size = Histogram::with_opts(
            HistogramOpts::new(
                "ckpt_wal_batch_records",
                "Mean records per group commit between scrapes, per commit",
            )
            .buckets(vec![
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
            ]),
        )
        .expect("valid metric");
        registry
            .register(Box::new(batch_size.clone()))
            .expect("unique metric");
        Arc::new(Metrics {
            wal_bytes: counter(
                &registry,
                "ckpt_wal_bytes_total",
                "Bytes appended to the write-ahead log",
            ),
            wal_records: counter(
                &registry,
                "ckpt_wal_records_total",
                "Records appended to the write-ahead log",
            ),
            wal_fsyncs: counter(
                &registry,
                "ckpt_wal_fsyncs_total",
                "fdatasync calls on the write-ahead log",
            ),
            group_commits: counter(
                &registry,
                "ckpt_wal_group_commits_total",
                "Group commits (batches)",
            ),
            rocksdb_flushes: counter(
                &registry,
                "ckpt_rocksdb_flushes_total",
                "Times RocksDB was made durable so the log could be trimmed",
            ),
            wal_segments: gauge(&registry, "ckpt_wal_segments", "WAL segment files on disk"),
            memtable_bytes: gauge(
                &registry,
                "ckpt_rocksdb_memtable_bytes",
                "Bytes in RocksDB memtables",
            ),
            connections: gauge(&registry, "ckpt_connections", "Client connections open"),
            disk_full: gauge(
                &registry,
                "ckpt_disk_full",
                "1 while the disk is full (log writes failed with ENOSPC; only deletions accepted), else 0",
            ),
            requests,
            latency,
            batch_size,
            registry,
            serving: AtomicBool::new(false),
        })
    }

    /// Records one served request.
    pub fn observe(&self, op: &str, elapsed: Duration, error: Option<ErrorCode>) {
        let result = error.map_or("ok", |code| code.cl_name());
        self.requests.with_label_values(&[op, result]).inc();
        self.latency
            .with_label_values(&[op])
            .observe(elapsed.as_secs_f64());
    }

    /// Registers one more gauge (memory bounds and their levels).
    pub fn register_gauge(&self, name: &str, help: &str) -> IntGauge {
        gauge(&self.registry, name, help)
    }

    /// A connection opened (+1) or closed (-1).
    pub fn connection(&self, delta: i64) {
        self.connections.add(delta);
    }

    /// Whether `/health` answers 200.
    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::Release);
    }

    fn catch_up(counter: &IntCounter, total: u64) {
        let current = counter.get();
        if total > current {
            counter.inc_by(total - current);
        }
    }

    /// The text exposition, with the store's counters brought up to date
    /// when there is a store (there is none yet during recovery).
    pub fn render(&self, store: Option<&Store>) -> String {
        if let Some(store) = store {
            self.update(store);
        }
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Brings the metrics read from the store up to date.
    fn update(&self, store: &Store) {
        let stats = store.stats();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let (records_before, batches_before) = (self.wal_records.get(), self.group_commits.get());
        Self::catch_up(&self.wal_bytes, load(&stats.wal_bytes));
        Self::catch_up(&self.wal_records, load(&stats.records));
        Self::catch_up(&self.wal_fsyncs, load(&stats.fsyncs));
        Self::catch_up(&self.group_commits, load(&stats.batches));
        Self::catch_up(&self.rocksdb_flushes, load(&stats.rocksdb_flushes));
        let (records, batches) = (
            self.wal_records.get() - records_before,
            self.group_commits.get() - batches_before,
        );
        if batches > 0 {
            // The mean batch since the last scrape, weighted by batch count.
            let mean = records as f64 / batches as f64;
            for _ in 0..batches.min(10_000) {
                self.batch_size.observe(mean);
            }
        }
        self.wal_segments.set(store.wal_segments() as i64);
        self.disk_full.set(i64::from(store.disk_full()));
        if let Some(bytes) = store
            .rocksdb_property("rocksdb.cur-size-all-mem-tables")
            .and_then(|v| v.parse().ok())
        {
            self.memtable_bytes.set(bytes);
        }
    }
}

/// Where start-up is, as `/readyz` tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// The store is opening: RocksDB, then the log's replay.
    Recovering = 0,
    /// The log is replayed; checkpoints and the client port are being set up.
    Starting = 1,
    /// Clients are served.
    Serving = 2,
    /// Shutting down.
    Stopping = 3,
}

/// What the admin endpoint serves from. It is bound before recovery and
/// learns the store and the cluster as start-up reaches them; it holds
/// them weakly, so shutdown can close the store while it still answers.
pub struct Admin {
    metrics: Arc<Metrics>,
    /// The effective configuration as JSON, for `/config`.
    config: Arc<str>,
    phase: AtomicU8,
    recovery: Arc<RecoveryProgress>,
    store: OnceLock<Weak<Store>>,
    cluster: OnceLock<Weak<crate::cluster::Cluster>>,
}

impl Admin {
    /// The endpoint's state at the start: recovering, reported through
    /// `recovery` (give it to the store's configuration).
    pub fn new(
        metrics: Arc<Metrics>,
        config: Arc<str>,
        recovery: Arc<RecoveryProgress>,
    ) -> Arc<Admin> {
        Arc::new(Admin {
            metrics,
            config,
            phase: AtomicU8::new(Phase::Recovering as u8),
            recovery,
            store: OnceLock::new(),
            cluster: OnceLock::new(),
        })
    }

    /// The metrics it serves.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The store is open (recovery is over).
    pub fn set_store(&self, store: &Arc<Store>) {
        let _ = self.store.set(Arc::downgrade(store));
    }

    /// The cluster runtime is up.
    pub fn set_cluster(&self, cluster: &Arc<crate::cluster::Cluster>) {
        let _ = self.cluster.set(Arc::downgrade(cluster));
    }

    /// Moves start-up on (or to shutdown).
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
        self.metrics.set_serving(phase == Phase::Serving);
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Recovering,
            1 => Phase::Starting,
            2 => Phase::Serving,
            _ => Phase::Stopping,
        }
    }

    fn store(&self) -> Option<Arc<Store>> {
        self.store.get().and_then(Weak::upgrade)
    }

    fn cluster(&self) -> Option<Arc<crate::cluster::Cluster>> {
        self.cluster.get().and_then(Weak::upgrade)
    }

    /// `/readyz`: 200 `ready` while clients are served by a working store;
    /// otherwise 503 and why: `recovering: N of M records`, `starting`,
    /// `store failed: CAUSE` (poisoned, or its writer, fsync or checkpoint
    /// thread dead), or `shutting down`.
    pub fn readiness(&self) -> (StatusCode, String) {
        if let Some(cause) = self.store().and_then(|store| store.failure()) {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("store failed: {cause}\n"),
            );
        }
        let text = match self.phase() {
            Phase::Serving => return (StatusCode::OK, "ready\n".into()),
            Phase::Recovering => {
                let replayed = self.recovery.replayed.load(Ordering::Relaxed);
                let total = self.recovery.total.load(Ordering::Relaxed);
                if replayed == 0 && total == 0 {
                    "recovering: opening the store\n".to_string()
                } else {
                    format!("recovering: {replayed} of {total} records\n")
                }
            }
            Phase::Starting => format!(
                "starting: the log is replayed ({} records); opening the client port\n",
                self.recovery.replayed.load(Ordering::Relaxed)
            ),
            Phase::Stopping => "shutting down\n".to_string(),
        };
        (StatusCode::SERVICE_UNAVAILABLE, text)
    }
}

type AdminState = Arc<Admin>;

/// `/cluster`: nodes, leader, and every checkpoint's placement and lag
/// (docs/replication.md); 404 on a single node (and 503 while starting).
async fn cluster_page(State(state): State<AdminState>) -> (StatusCode, String) {
    match (&state.cluster(), state.phase()) {
        (Some(cluster), _) => (StatusCode::OK, cluster.cluster_json().to_string()),
        (None, Phase::Recovering | Phase::Starting) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: no cluster state yet\n".into(),
        ),
        (None, _) => (
            StatusCode::NOT_FOUND,
            "not a cluster node: started without a cluster file\n".into(),
        ),
    }
}

/// `/checksums`: each local replica's position and checksum, for
/// `ckpt-tool cluster verify`; 404 on a single node.
async fn checksums_page(State(state): State<AdminState>) -> (StatusCode, String) {
    match (&state.cluster(), state.phase()) {
        (Some(cluster), _) => (StatusCode::OK, cluster.checksums_json().await.to_string()),
        (None, Phase::Recovering | Phase::Starting) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: no cluster state yet\n".into(),
        ),
        (None, _) => (
            StatusCode::NOT_FOUND,
            "not a cluster node: started without a cluster file\n".into(),
        ),
    }
}

/// `/config`: the effective configuration, every key by its TOML name
/// (docs/configuration.md), as JSON.
async fn config_page(
    State(state): State<AdminState>,
) -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        format!("{}\n", state.config),
    )
}

async fn metrics_page(State(state): State<AdminState>) -> String {
    state.metrics.render(state.store().as_deref())
}

/// `/livez`: the process runs and its admin endpoint answers.
async fn livez() -> &'static str {
    "alive\n"
}

async fn readyz(State(state): State<AdminState>) -> (StatusCode, String) {
    state.readiness()
}

async fn health(State(state): State<AdminState>) -> (StatusCode, &'static str) {
    match state.readiness().0 {
        StatusCode::OK => (StatusCode::OK, "serving\n"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "not serving\n"),
    }
}

/// How often the watchdog asks the store whether it still works: a failed
/// store answers every request with an error, so a second of that is
/// enough before the process goes down and a supervisor restarts it.
pub const STORE_WATCH_INTERVAL_MS: u64 = 200;

/// Watches the store until `stop` fires. When the store fails (poisoned by a
/// storage error, or its writer, fsync or checkpoint thread dead) `/health`
/// turns 503, the cause is logged and returned: the caller shuts the server
/// down so that a restart recovers from the log, instead of lingering with
/// a store that refuses everything.
pub async fn watch_store(
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    stop: tokio_util::sync::CancellationToken,
) -> Option<String> {
    let mut tick = tokio::time::interval(Duration::from_millis(STORE_WATCH_INTERVAL_MS));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tick.tick() => {
                if let Some(cause) = store.failure() {
                    metrics.set_serving(false);
                    tracing::error!(%cause, "the store failed; shutting down so that a restart recovers from the log");
                    return Some(cause);
                }
            }
        }
    }
}

/// Serves the admin endpoint until `shutdown` fires.
///
/// # Errors
/// Accepting connections failed.
pub async fn serve_admin(
    listener: tokio::net::TcpListener,
    admin: Arc<Admin>,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/health", get(health))
        .route("/metrics", get(metrics_page))
        .route("/config", get(config_page))
        .route("/cluster", get(cluster_page))
        .route("/checksums", get(checksums_page))
        .with_state(admin);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Binds the admin address.
///
/// # Errors
/// The address cannot be bound.
pub async fn bind_admin(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use ckpt_proto::{CheckpointName, CreationAttributes, CreationFlags, SectionId, WriteElement};
    use ckpt_storage::{Durability, FaultFs, Op, Outcome, StoreConfig};

    #[tokio::test]
    async fn a_dead_store_writer_turns_health_unhealthy_and_stops_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let store = Arc::new(
            Store::open_with_fs(StoreConfig::new(dir.path()), Arc::new(fs.clone())).unwrap(),
        );
        let metrics = Metrics::new();
        let admin = serving_admin(&metrics, &store);
        assert_eq!(admin.readiness(), (StatusCode::OK, "ready\n".to_string()));
        let stop = tokio_util::sync::CancellationToken::new();
        let watchdog = tokio::spawn(watch_store(store.clone(), metrics.clone(), stop.clone()));

        let attributes = CreationAttributes {
            creation_flags: CreationFlags::WR_ACTIVE_REPLICA,
            checkpoint_size: 100,
            retention_duration_ns: ckpt_proto::TIME_END,
            max_sections: 1,
            max_section_size: 100,
            max_section_id_size: 0,
        };
        let create = Op::CreateCheckpoint {
            name: CheckpointName::new("c").unwrap(),
            attributes,
            instance: None,
            epoch: ckpt_storage::Epoch(1),
        };
        let writer = store.clone();
        let Outcome::Opened { instance, .. } = tokio::task::spawn_blocking(move || {
            writer.execute_with(create, Durability::Durable, ckpt_proto::now_ns())
        })
        .await
        .unwrap()
        .unwrap() else {
            panic!("create did not open");
        };
        fs.panic_next_write();
        let write = Op::Write {
            instance,
            elements: vec![WriteElement {
                section_id: SectionId::DEFAULT,
                offset: 0,
                data: b"x".to_vec(),
            }],
        };
        let writer = store.clone();
        let result = tokio::task::spawn_blocking(move || {
            writer.execute_with(write, Durability::Durable, ckpt_proto::now_ns())
        })
        .await
        .unwrap();
        assert!(result.is_err(), "the write in flight dies with the writer");

        let cause = watchdog
            .await
            .unwrap()
            .expect("the watchdog reports the failure");
        assert!(cause.contains("writer thread panicked"), "{cause}");
        let (status, text) = admin.readiness();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            text.starts_with("store failed: ") && text.contains("writer thread panicked"),
            "{text}"
        );
    }

    fn serving_admin(metrics: &Arc<Metrics>, store: &Arc<Store>) -> Arc<Admin> {
        let admin = Admin::new(metrics.clone(), "{}".into(), Arc::default());
        admin.set_store(store);
        admin.set_phase(Phase::Serving);
        admin
    }

    #[test]
    fn readiness_follows_recovery_and_start_up() {
        let recovery = Arc::new(RecoveryProgress::default());
        let admin = Admin::new(Metrics::new(), "{}".into(), recovery.clone());
        let unavailable = |text: &str| (StatusCode::SERVICE_UNAVAILABLE, text.to_string());
        assert_eq!(
            admin.readiness(),
            unavailable("recovering: opening the store\n")
        );
        recovery.total.store(1000, Ordering::Relaxed);
        recovery.replayed.store(250, Ordering::Relaxed);
        assert_eq!(
            admin.readiness(),
            unavailable("recovering: 250 of 1000 records\n")
        );
        recovery.replayed.store(1000, Ordering::Relaxed);
        admin.set_phase(Phase::Starting);
        assert!(admin
            .readiness()
            .1
            .starts_with("starting: the log is replayed (1000 records)"));
        admin.set_phase(Phase::Serving);
        assert_eq!(admin.readiness(), (StatusCode::OK, "ready\n".to_string()));
        admin.set_phase(Phase::Stopping);
        assert_eq!(admin.readiness(), unavailable("shutting down\n"));
    }

    #[tokio::test]
    async fn a_poisoned_store_is_not_ready() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let store = Arc::new(
            Store::open_with_fs(StoreConfig::new(dir.path()), Arc::new(fs.clone())).unwrap(),
        );
        let admin = serving_admin(&Metrics::new(), &store);
        assert_eq!(admin.readiness().0, StatusCode::OK);
        fs.fail_next_sync();
        let create = Op::CreateCheckpoint {
            name: CheckpointName::new("c").unwrap(),
            attributes: CreationAttributes {
                creation_flags: CreationFlags::WR_ACTIVE_REPLICA,
                checkpoint_size: 100,
                retention_duration_ns: ckpt_proto::TIME_END,
                max_sections: 1,
                max_section_size: 100,
                max_section_id_size: 0,
            },
            instance: None,
            epoch: ckpt_storage::Epoch(1),
        };
        let writer = store.clone();
        let result = tokio::task::spawn_blocking(move || {
            writer.execute_with(create, Durability::Durable, ckpt_proto::now_ns())
        })
        .await
        .unwrap();
        assert!(result.is_err(), "the write whose fsync failed is refused");
        let (status, text) = admin.readiness();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(text.starts_with("store failed: "), "{text}");
        assert_eq!(
            store.failure().map(|c| format!("store failed: {c}\n")),
            Some(text)
        );
    }
}
