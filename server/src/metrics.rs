//! Prometheus metrics and the admin HTTP endpoint (`/metrics`, `/health`),
//! and the watchdog that takes the server down when its store fails.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use ckpt_proto::ErrorCode;
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

    /// The text exposition, with the store's counters brought up to date.
    pub fn render(&self, store: &Store) -> String {
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
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

#[derive(Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    store: Arc<Store>,
    cluster: Option<Arc<crate::cluster::Cluster>>,
    /// The effective configuration as JSON, for `/config`.
    config: Arc<str>,
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

/// `/cluster`: nodes, leader, and every checkpoint's placement and lag
/// (docs/replication.md); 404 on a single node.
async fn cluster_page(State(state): State<AdminState>) -> (StatusCode, String) {
    match &state.cluster {
        Some(cluster) => (StatusCode::OK, cluster.cluster_json().to_string()),
        None => (
            StatusCode::NOT_FOUND,
            "not a cluster node: started without a cluster file\n".into(),
        ),
    }
}

/// `/checksums`: each local replica's position and checksum, for
/// `ckpt-tool cluster verify`; 404 on a single node.
async fn checksums_page(State(state): State<AdminState>) -> (StatusCode, String) {
    match &state.cluster {
        Some(cluster) => (StatusCode::OK, cluster.checksums_json().await.to_string()),
        None => (
            StatusCode::NOT_FOUND,
            "not a cluster node: started without a cluster file\n".into(),
        ),
    }
}

async fn metrics_page(State(state): State<AdminState>) -> String {
    state.metrics.render(&state.store)
}

async fn health(State(state): State<AdminState>) -> (StatusCode, &'static str) {
    health_status(&state.metrics, &state.store)
}

/// `/health`: 200 while serving with a working store; 503 before start-up
/// ends, during shutdown, and once the store is poisoned or a thread of it
/// died (requests then fail until a restart).
pub fn health_status(metrics: &Metrics, store: &Store) -> (StatusCode, &'static str) {
    if metrics.serving.load(Ordering::Acquire) && store.failure().is_none() {
        (StatusCode::OK, "serving\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not serving\n")
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
/// The address cannot be bound.
pub async fn serve_admin(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    store: Arc<Store>,
    cluster: Option<Arc<crate::cluster::Cluster>>,
    config: Arc<str>,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/config", get(config_page))
        .route("/health", get(health))
        .route("/cluster", get(cluster_page))
        .route("/checksums", get(checksums_page))
        .with_state(AdminState {
            metrics,
            store,
            cluster,
            config,
        });
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
        metrics.set_serving(true);
        assert_eq!(health_status(&metrics, &store).0, StatusCode::OK);
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
        assert_eq!(
            health_status(&metrics, &store).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
