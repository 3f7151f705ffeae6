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
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use ckpt_proto::ErrorCode;
use ckpt_storage::store::{Buckets, RecoveryProgress, STAGE_BUCKETS_NS};
use ckpt_storage::Store;
use prometheus::proto::{Bucket, Metric, MetricFamily, MetricType};
use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// Every metric the server exports (docs/operations.md lists them;
/// docs/grafana-dashboard.json is built on them).
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    wal_bytes: IntCounter,
    wal_records: IntCounter,
    wal_fsyncs: IntCounter,
    wal_syncs_on_writer: IntCounter,
    read_cache_hits: IntCounter,
    read_cache_misses: IntCounter,
    read_cache_bytes: IntGauge,
    group_commits: IntCounter,
    rocksdb_flushes: IntCounter,
    wal_segments: IntGauge,
    wal_applied_lsn: IntGauge,
    wal_disk_bytes: IntGauge,
    sst_bytes: IntGauge,
    memtable_bytes: IntGauge,
    checkpoints: IntGauge,
    sections: IntGauge,
    section_bytes: IntGauge,
    connections: IntGauge,
    connections_rejected: IntCounter,
    disk_full: IntGauge,
    store_failed: IntGauge,
    ready: IntGauge,
    recovery_seconds: Gauge,
    recovery_records: IntGauge,
    /// The server's hops of a request (the store counts its own).
    pub stages: ServerStages,
}

/// The hops of a request outside the store, ns, one value per request
/// (exported with the store's [`ckpt_storage::WriteStages`] as
/// `ckpt_request_stage_seconds`).
pub struct ServerStages {
    /// Read from the socket, until the task that handles it starts.
    pub spawn: Buckets,
    /// The store answered, until the task waiting for it resumes.
    pub wake: Buckets,
    /// The answer queued for the connection, until it is written to the
    /// socket.
    pub out: Buckets,
}

impl ServerStages {
    fn new() -> ServerStages {
        ServerStages {
            spawn: Buckets::new(STAGE_BUCKETS_NS),
            wake: Buckets::new(STAGE_BUCKETS_NS),
            out: Buckets::new(STAGE_BUCKETS_NS),
        }
    }
}

/// A histogram family for `/metrics` from the store's [`Buckets`], each
/// value and bound divided by `scale` (1e9 turns ns into seconds).
fn histogram_family(name: &str, help: &str, buckets: &Buckets, scale: f64) -> MetricFamily {
    labelled_histograms(name, help, "", &[("", buckets)], scale)
}

/// One histogram family of several [`Buckets`], each labelled `label`
/// with its name (no label when `label` is empty).
fn labelled_histograms(
    name: &str,
    help: &str,
    label: &str,
    buckets: &[(&str, &Buckets)],
    scale: f64,
) -> MetricFamily {
    let metrics = buckets
        .iter()
        .map(|(value, buckets)| {
            let mut metric = histogram_metric(buckets, scale);
            if !label.is_empty() {
                let mut pair = prometheus::proto::LabelPair::default();
                pair.set_name(label.to_string());
                pair.set_value(value.to_string());
                metric.set_label(vec![pair]);
            }
            metric
        })
        .collect();
    let mut family = MetricFamily::default();
    family.set_name(name.to_string());
    family.set_help(help.to_string());
    family.set_field_type(MetricType::HISTOGRAM);
    family.set_metric(metrics);
    family
}

fn histogram_metric(buckets: &Buckets, scale: f64) -> Metric {
    let (cumulative, total, sum) = buckets.snapshot();
    let mut histogram = prometheus::proto::Histogram::default();
    histogram.set_sample_count(total);
    histogram.set_sample_sum(sum as f64 / scale);
    histogram.set_bucket(
        buckets
            .bounds()
            .iter()
            .zip(cumulative)
            .map(|(&bound, count)| {
                let mut bucket = Bucket::default();
                bucket.set_upper_bound(bound as f64 / scale);
                bucket.set_cumulative_count(count);
                bucket
            })
            .collect(),
    );
    let mut metric = Metric::default();
    metric.set_histogram(histogram);
    metric
}

/// Bytes of the files in `dir` whose names end in `suffix` (0 when it
/// cannot be read).
fn files_bytes(dir: &std::path::Path, suffix: &str) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(suffix))
        .filter_map(|entry| entry.metadata().ok())
        .map(|meta| meta.len())
        .sum()
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
        let build_info = IntGaugeVec::new(
            Opts::new(
                "ckpt_build_info",
                "Always 1; the labels name the running build",
            ),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry
            .register(Box::new(build_info))
            .expect("unique metric");
        // process_cpu_seconds_total, process_resident_memory_bytes,
        // process_open_fds, process_max_fds, process_start_time_seconds, ...
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric");
        let recovery_seconds = Gauge::new(
            "ckpt_recovery_duration_seconds",
            "How long opening the store took at start (RocksDB and the log's replay), s",
        )
        .expect("valid metric");
        registry
            .register(Box::new(recovery_seconds.clone()))
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
            wal_syncs_on_writer: counter(
                &registry,
                "ckpt_wal_syncs_on_writer_total",
                "Group commits synced by the writer thread itself (the fsync thread idle, nothing queued)",
            ),
            read_cache_hits: counter(
                &registry,
                "ckpt_read_cache_hits_total",
                "Section lookups answered by the read cache",
            ),
            read_cache_misses: counter(
                &registry,
                "ckpt_read_cache_misses_total",
                "Section lookups the read cache could not answer (the read goes to RocksDB)",
            ),
            read_cache_bytes: gauge(
                &registry,
                "ckpt_read_cache_bytes",
                "Bytes held by the read cache of small sections",
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
            wal_applied_lsn: gauge(
                &registry,
                "ckpt_wal_applied_lsn",
                "Log position of the last record applied to the state (ckpt-tool wal --from-lsn)",
            ),
            wal_disk_bytes: gauge(
                &registry,
                "ckpt_wal_disk_bytes",
                "Bytes of WAL segment files on disk",
            ),
            sst_bytes: gauge(
                &registry,
                "ckpt_rocksdb_sst_bytes",
                "Bytes of RocksDB SST files on disk",
            ),
            checkpoints: gauge(&registry, "ckpt_checkpoints", "Checkpoints (by name)"),
            sections: gauge(
                &registry,
                "ckpt_sections",
                "Sections of all checkpoints",
            ),
            section_bytes: gauge(
                &registry,
                "ckpt_section_bytes",
                "Bytes of section data of all checkpoints (their memoryUsed)",
            ),
            connections_rejected: counter(
                &registry,
                "ckpt_connections_rejected_total",
                "Client connections refused at the connections_max bound",
            ),
            store_failed: gauge(
                &registry,
                "ckpt_store_poisoned",
                "1 once the store refuses writes (poisoned by a failed fsync or write, or a thread of it dead; the server then stops), else 0",
            ),
            ready: gauge(
                &registry,
                "ckpt_ready",
                "1 while /readyz answers 200 (clients served by a working store), else 0",
            ),
            recovery_seconds,
            recovery_records: gauge(
                &registry,
                "ckpt_recovery_records_replayed",
                "Log records replayed into RocksDB at start",
            ),
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
            registry,
            stages: ServerStages::new(),
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

    /// A counter on this registry (owned by the caller, exported here).
    pub fn register_counter(&self, name: &str, help: &str) -> IntCounter {
        counter(&self.registry, name, help)
    }

    /// A connection opened (+1) or closed (-1).
    pub fn connection(&self, delta: i64) {
        self.connections.add(delta);
    }

    /// A connection was refused at the `connections_max` bound.
    pub fn connection_rejected(&self) {
        self.connections_rejected.inc();
    }

    /// What opening the store took.
    pub fn recovered(&self, duration: Duration, records: u64) {
        self.recovery_seconds.set(duration.as_secs_f64());
        self.recovery_records
            .set(i64::try_from(records).unwrap_or(i64::MAX));
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
        let mut families = self.registry.gather();
        if let Some(store) = store {
            let stats = store.stats();
            families.push(histogram_family(
                "ckpt_wal_fsync_duration_seconds",
                "Duration of the write-ahead log's fdatasync calls, s",
                &stats.fsync_ns,
                1e9,
            ));
            let [queue, commit, sync_wait, fsync, answer] = stats.write_stages.named();
            families.push(labelled_histograms(
                "ckpt_request_stage_seconds",
                "Where requests' time goes, hop by hop, s (one value per request and stage; \
                 docs/operations.md): spawn, queue, commit, sync_wait, fsync, answer, wake, out",
                "stage",
                &[
                    ("spawn", &self.stages.spawn),
                    queue,
                    commit,
                    sync_wait,
                    fsync,
                    answer,
                    ("wake", &self.stages.wake),
                    ("out", &self.stages.out),
                ],
                1e9,
            ));
            families.push(histogram_family(
                "ckpt_wal_batch_records",
                "Records per group commit (one write to the log; the fsync thread makes one or more of them durable with one fdatasync)",
                &stats.batch_records,
                1.0,
            ));
        }
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&families, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Brings the metrics read from the store up to date.
    fn update(&self, store: &Store) {
        let stats = store.stats();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Self::catch_up(&self.wal_bytes, load(&stats.wal_bytes));
        Self::catch_up(&self.wal_records, load(&stats.records));
        Self::catch_up(&self.wal_fsyncs, load(&stats.fsyncs));
        Self::catch_up(&self.wal_syncs_on_writer, load(&stats.syncs_on_writer));
        let cache = store.read_cache_stats();
        Self::catch_up(&self.read_cache_hits, cache.hits);
        Self::catch_up(&self.read_cache_misses, cache.misses);
        self.read_cache_bytes
            .set(i64::try_from(cache.bytes).unwrap_or(i64::MAX));
        Self::catch_up(&self.group_commits, load(&stats.batches));
        Self::catch_up(&self.rocksdb_flushes, load(&stats.rocksdb_flushes));
        self.wal_segments.set(store.wal_segments() as i64);
        self.wal_applied_lsn
            .set(i64::try_from(store.applied_lsn().0).unwrap_or(i64::MAX));
        let (wal_bytes, _) = store.wal_footprint();
        self.wal_disk_bytes
            .set(i64::try_from(wal_bytes).unwrap_or(i64::MAX));
        self.disk_full.set(i64::from(store.disk_full()));
        self.store_failed.set(i64::from(store.failure().is_some()));
        let totals = store.totals();
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.checkpoints.set(gauge(totals.checkpoints));
        self.sections.set(gauge(totals.sections));
        self.section_bytes.set(gauge(totals.bytes));
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
    /// The data directory (for the size of RocksDB's files).
    data_dir: std::path::PathBuf,
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
        data_dir: &std::path::Path,
        config: Arc<str>,
        recovery: Arc<RecoveryProgress>,
    ) -> Arc<Admin> {
        Arc::new(Admin {
            metrics,
            data_dir: data_dir.to_path_buf(),
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
    }

    /// `/metrics`: the exposition, with readiness and the files' sizes
    /// brought up to date.
    pub fn render(&self) -> String {
        let ready = self.readiness().0 == StatusCode::OK;
        self.metrics.ready.set(i64::from(ready));
        let sst_bytes = files_bytes(&self.data_dir.join("db"), ".sst");
        self.metrics
            .sst_bytes
            .set(i64::try_from(sst_bytes).unwrap_or(i64::MAX));
        self.metrics.render(self.store().as_deref())
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
/// Runs `page` on a blocking thread: the pages that grow with the number of
/// checkpoints (`/cluster`, `/metrics`: tens of megabytes at a million)
/// must not hold a runtime thread the cluster's driver needs to renew its
/// lease on time.
async fn off_runtime<T: Send + 'static>(
    page: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(page)
        .await
        .map_err(|e| format!("rendering the page failed: {e}\n"))
}

///
/// `?checkpoints=all|none|unsettled` says which checkpoints are listed
/// (default all); the summary (leader, nodes, counts) is always there.
async fn cluster_page(
    State(state): State<AdminState>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> (StatusCode, String) {
    let listed = match cluster_listed(query.as_deref()) {
        Ok(listed) => listed,
        Err(error) => return (StatusCode::BAD_REQUEST, error),
    };
    match (&state.cluster(), state.phase()) {
        (Some(cluster), _) => {
            let cluster = cluster.clone();
            match off_runtime(move || cluster.cluster_json(listed).to_string()).await {
                Ok(body) => (StatusCode::OK, body),
                Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e),
            }
        }
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

/// The query of `GET /cluster`: `checkpoints=all|none|unsettled`.
fn cluster_listed(query: Option<&str>) -> Result<crate::cluster::Listed, String> {
    let mut listed = crate::cluster::Listed::All;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("checkpoints", value)) => listed = crate::cluster::Listed::parse(value)?,
            _ => return Err(format!("unknown parameter {pair:?}\n")),
        }
    }
    Ok(listed)
}

/// The query of `POST /cluster/add-node` and `/cluster/remove-node`.
#[derive(Default)]
struct MemberQuery {
    id: ckpt_replication::NodeId,
    client_addr: Option<SocketAddr>,
    peer_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
}

impl MemberQuery {
    /// `id=N&client_addr=IP:PORT&...`; every refusal names the parameter.
    fn parse(query: Option<&str>) -> Result<MemberQuery, String> {
        let mut parsed = MemberQuery::default();
        let mut id = None;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let addr = |value: &str| {
                value
                    .parse::<SocketAddr>()
                    .map_err(|e| format!("{key}={value}: not an IP:PORT ({e})"))
            };
            match key {
                "id" => {
                    id = Some(
                        value
                            .parse()
                            .map_err(|e| format!("id={value}: not a node id ({e})"))?,
                    )
                }
                "client_addr" => parsed.client_addr = Some(addr(value)?),
                "peer_addr" => parsed.peer_addr = Some(addr(value)?),
                "admin_addr" => parsed.admin_addr = Some(addr(value)?),
                other => return Err(format!("unknown parameter {other:?}")),
            }
        }
        parsed.id = id.ok_or("missing parameter id")?;
        Ok(parsed)
    }
}

/// The answer to a membership change: 200 once applied on this node, or
/// the refusal with its error code.
fn member_answer(result: ckpt_proto::CkptResult<()>, what: String) -> (StatusCode, String) {
    match result {
        Ok(()) => (StatusCode::OK, format!("{what}\n")),
        Err(error) => {
            let status = match error.code {
                ckpt_proto::ErrorCode::TryAgain | ckpt_proto::ErrorCode::Timeout => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                ckpt_proto::ErrorCode::NotExist => StatusCode::NOT_FOUND,
                ckpt_proto::ErrorCode::AlreadyExist => StatusCode::CONFLICT,
                _ => StatusCode::BAD_REQUEST,
            };
            (
                status,
                format!("{}: {}\n", error.code.cl_name(), error.detail),
            )
        }
    }
}

/// The cluster and the parsed query of a membership request, or the
/// answer refusing it.
fn member_request(
    state: &AdminState,
    query: Option<&str>,
) -> Result<(Arc<crate::cluster::Cluster>, MemberQuery), (StatusCode, String)> {
    let query = MemberQuery::parse(query)
        .map_err(|error| (StatusCode::BAD_REQUEST, format!("{error}\n")))?;
    let cluster = state.cluster().ok_or_else(|| {
        (
            StatusCode::NOT_FOUND,
            "not a cluster node: started without a cluster file\n".to_string(),
        )
    })?;
    Ok((cluster, query))
}

/// `POST /cluster/add-node?id=N&client_addr=..&peer_addr=..&admin_addr=..`
/// (`ckpt-tool cluster add-node`).
async fn add_node_page(
    State(state): State<AdminState>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> (StatusCode, String) {
    let (cluster, query) = match member_request(&state, query.as_deref()) {
        Ok(request) => request,
        Err(refused) => return refused,
    };
    let (Some(client_addr), Some(peer_addr), Some(admin_addr)) =
        (query.client_addr, query.peer_addr, query.admin_addr)
    else {
        return (
            StatusCode::BAD_REQUEST,
            "add-node needs client_addr, peer_addr and admin_addr\n".into(),
        );
    };
    let addrs = ckpt_replication::NodeAddrs {
        client_addr,
        peer_addr,
        admin_addr,
    };
    let result = cluster.add_node(query.id, addrs).await;
    member_answer(result, format!("node {} added", query.id))
}

/// `POST /cluster/remove-node?id=N` (`ckpt-tool cluster remove-node`).
async fn remove_node_page(
    State(state): State<AdminState>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> (StatusCode, String) {
    let (cluster, query) = match member_request(&state, query.as_deref()) {
        Ok(request) => request,
        Err(refused) => return refused,
    };
    let result = cluster.remove_node(query.id).await;
    member_answer(result, format!("node {} removed", query.id))
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

async fn metrics_page(State(state): State<AdminState>) -> (StatusCode, String) {
    match off_runtime(move || state.render()).await {
        Ok(body) => (StatusCode::OK, body),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e),
    }
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
/// storage error, or its writer, fsync or checkpoint thread dead)
/// `ckpt_store_poisoned` turns 1 (`/readyz` is 503 already), the cause is logged and returned: the caller shuts the server
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
                    metrics.store_failed.set(1);
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
        .route("/cluster/add-node", post(add_node_page))
        .route("/cluster/remove-node", post(remove_node_page))
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

    /// A store whose injected faults hit the writer's own calls, not the
    /// spare-segment filler's.
    fn growing_segments(dir: &std::path::Path) -> StoreConfig {
        let mut config = StoreConfig::new(dir);
        config.preallocate_segments = false;
        config
    }

    #[tokio::test]
    async fn a_dead_store_writer_turns_health_unhealthy_and_stops_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let store = Arc::new(
            Store::open_with_fs(growing_segments(dir.path()), Arc::new(fs.clone())).unwrap(),
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
        let admin = Admin::new(
            metrics.clone(),
            std::path::Path::new("."),
            "{}".into(),
            Arc::default(),
        );
        admin.set_store(store);
        admin.set_phase(Phase::Serving);
        admin
    }

    #[test]
    fn readiness_follows_recovery_and_start_up() {
        let recovery = Arc::new(RecoveryProgress::default());
        let admin = Admin::new(
            Metrics::new(),
            std::path::Path::new("."),
            "{}".into(),
            recovery.clone(),
        );
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
            Store::open_with_fs(growing_segments(dir.path()), Arc::new(fs.clone())).unwrap(),
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

    /// The value of the sample `name` (with its labels, if any) in `text`.
    fn sample(text: &str, name: &str) -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    }

    #[tokio::test]
    async fn store_histograms_and_gauges_are_real() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(StoreConfig::new(dir.path())).unwrap());
        let metrics = Metrics::new();
        let admin = Admin::new(metrics.clone(), dir.path(), "{}".into(), Arc::default());
        let empty = admin.render();
        assert_eq!(sample(&empty, "ckpt_ready"), 0.0);
        assert!(
            !empty.contains("ckpt_wal_fsync_duration_seconds"),
            "no store yet"
        );
        admin.set_store(&store);
        admin.set_phase(Phase::Serving);

        let attributes = CreationAttributes {
            creation_flags: CreationFlags::WR_ACTIVE_REPLICA,
            checkpoint_size: 100,
            retention_duration_ns: ckpt_proto::TIME_END,
            max_sections: 1,
            max_section_size: 100,
            max_section_id_size: 0,
        };
        let writer = store.clone();
        tokio::task::spawn_blocking(move || {
            let create = Op::CreateCheckpoint {
                name: CheckpointName::new("c").unwrap(),
                attributes,
                instance: None,
                epoch: ckpt_storage::Epoch(1),
            };
            let Outcome::Opened { instance, .. } = writer
                .execute_with(create, Durability::Durable, ckpt_proto::now_ns())
                .unwrap()
            else {
                panic!("create did not open");
            };
            for value in [&b"abc"[..], b"abcdef"] {
                let write = Op::Write {
                    instance,
                    elements: vec![WriteElement {
                        section_id: SectionId::DEFAULT,
                        offset: 0,
                        data: value.to_vec(),
                    }],
                };
                writer
                    .execute_with(write, Durability::Durable, ckpt_proto::now_ns())
                    .unwrap();
            }
        })
        .await
        .unwrap();

        let text = admin.render();
        let fsyncs = sample(&text, "ckpt_wal_fsyncs_total");
        assert!(fsyncs >= 1.0, "{text}");
        // One observation per fsync, in seconds.
        assert_eq!(
            sample(&text, "ckpt_wal_fsync_duration_seconds_count"),
            fsyncs
        );
        assert_eq!(
            sample(&text, "ckpt_wal_fsync_duration_seconds_bucket{le=\"+Inf\"}"),
            fsyncs
        );
        let sum = sample(&text, "ckpt_wal_fsync_duration_seconds_sum");
        assert!(sum > 0.0 && sum < 10.0 * fsyncs, "{sum}");
        assert!(text.contains("ckpt_wal_fsync_duration_seconds_bucket{le=\"0.00005\"}"));
        // Three commits of one record each: all in the first bucket.
        let commits = sample(&text, "ckpt_wal_group_commits_total");
        assert_eq!(sample(&text, "ckpt_wal_batch_records_count"), commits);
        assert_eq!(sample(&text, "ckpt_wal_batch_records_sum"), 3.0);
        assert_eq!(
            sample(&text, "ckpt_wal_batch_records_bucket{le=\"1\"}"),
            commits
        );
        assert!(text.contains("# HELP ckpt_wal_batch_records Records per group commit"));
        assert_eq!(sample(&text, "ckpt_checkpoints"), 1.0);
        // The default section.
        assert_eq!(sample(&text, "ckpt_sections"), 1.0);
        assert_eq!(sample(&text, "ckpt_section_bytes"), 6.0);
        assert!(sample(&text, "ckpt_wal_disk_bytes") > 0.0);
        assert_eq!(sample(&text, "ckpt_ready"), 1.0);
        assert_eq!(sample(&text, "ckpt_store_poisoned"), 0.0);
        assert_eq!(
            sample(
                &text,
                &format!(
                    "ckpt_build_info{{version=\"{}\"}}",
                    env!("CARGO_PKG_VERSION")
                )
            ),
            1.0
        );
        assert!(sample(&text, "process_resident_memory_bytes") > 0.0);
        assert!(sample(&text, "process_open_fds") > 0.0);
    }

    #[test]
    fn buckets_count_values_at_or_below_each_bound() {
        let buckets = Buckets::new(&[1, 10, 100]);
        for value in [0, 1, 2, 10, 11, 1000] {
            buckets.observe(value);
        }
        assert_eq!(buckets.snapshot(), (vec![2, 4, 5], 6, 1024));
        let family = histogram_family("x", "y", &buckets, 10.0);
        let histogram = family.get_metric()[0].get_histogram();
        assert_eq!(histogram.get_sample_count(), 6);
        assert_eq!(histogram.get_sample_sum(), 102.4);
        let bounds: Vec<f64> = histogram
            .get_bucket()
            .iter()
            .map(|b| b.upper_bound())
            .collect();
        assert_eq!(bounds, vec![0.1, 1.0, 10.0]);
    }
}
