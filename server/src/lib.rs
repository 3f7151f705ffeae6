//! ckpt-server: the checkpoint service on one node.
//!
//! Layout:
//! - [`config`]: defaults, TOML file, `CKPT_*` environment, flags.
//! - [`service`]: every API function over the store — handles, access
//!   checks, open counts, retention timers.
//! - [`connection`]: the wire protocol on one TCP connection.
//! - [`hub`]: notifications in log order with resumable history.
//! - [`metrics`]: Prometheus metrics and the admin endpoint (`/livez`,
//!   `/readyz`, `/metrics`, `/config`, ...), bound before recovery.
//!
//! Shutdown (SIGTERM/SIGINT): stop accepting, let every connection finish
//! and answer the requests it has in flight, then close the store (which
//! flushes RocksDB and trims the log) and exit 0. A store that fails while
//! serving (poisoned, or a thread of it dead) takes the same path and the
//! process exits non-zero with the cause logged, so that a supervisor
//! restarts it into recovery.

pub mod cluster;
pub mod config;
pub mod connection;
pub mod front;
pub mod hub;
pub mod metrics;
pub mod reads;
pub mod service;

use std::sync::Arc;
use std::time::Duration;

use ckpt_storage::store::RecoveryProgress;
use ckpt_storage::Store;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{Cli, Config};

/// Why the server could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The store did not open.
    #[error("opening the store in {dir}: {error}")]
    Store {
        dir: String,
        error: ckpt_proto::CkptError,
    },
    /// The data directory cannot be used (missing along with its parent,
    /// not a directory).
    #[error("{0}")]
    DataDir(String),
    /// An address could not be bound; `what` names the port and its key.
    #[error("binding the {what} at {addr}: {error}")]
    Bind {
        what: &'static str,
        addr: String,
        error: std::io::Error,
    },
    /// Start-up recovery failed.
    #[error("recovering checkpoints: {0}")]
    Recover(ckpt_proto::CkptError),
    /// The store failed while serving (poisoned, or a thread of it died);
    /// the server stopped so that a restart recovers from the log.
    #[error("the store failed: {0}")]
    StoreFailed(String),
    /// The signal handlers (SIGTERM, SIGINT, SIGHUP) could not be installed.
    #[error("installing the signal handlers failed")]
    Signals,
    /// The cluster runtime did not start (Raft log, peer address, ...).
    #[error("starting the cluster: {0}")]
    Cluster(String),
}

/// Runs the server until `shutdown` is cancelled.
///
/// # Errors
/// Start-up failures; a store that cannot be flushed at the end is logged.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), ServerError> {
    let config = Arc::new(config);
    let created = config::prepare_data_dir(&config.data_dir, config.create_data_dir)
        .map_err(|error| ServerError::DataDir(error.0))?;
    if created {
        tracing::info!(data_dir = %config.data_dir.display(), "created the data directory");
    }
    // The admin endpoint first: /livez and /readyz answer while the log
    // is replayed, which on a big log takes a while.
    let recovery = Arc::new(RecoveryProgress::default());
    let admin = AdminEndpoint::start(&config, recovery.clone()).await?;
    tracing::info!(
        admin = %admin.addr,
        data_dir = %config.data_dir.display(),
        "admin endpoint up; recovering (/readyz answers 503 until ready)"
    );
    let mut store_config = config.store();
    store_config.recovery_progress = Some(recovery);
    let dir = config.data_dir.display().to_string();
    let started = std::time::Instant::now();
    let opened = tokio::task::spawn_blocking(move || Store::open(store_config))
        .await
        .map_err(|e| ServerError::Store {
            dir: dir.clone(),
            error: join_error(e),
        })
        .and_then(|opened| opened.map_err(|error| ServerError::Store { dir, error }));
    let result = match opened {
        Ok(store) => {
            admin
                .state
                .metrics()
                .recovered(started.elapsed(), store.recovery_report().replayed);
            serve_on(config, Arc::new(store), shutdown, &admin).await
        }
        Err(error) => Err(error),
    };
    admin.stop().await;
    result
}

/// How long the admin endpoint's requests in flight may take at exit, ms.
pub const ADMIN_STOP_MS: u64 = 2_000;

/// The admin endpoint, bound and served from its [`metrics::Admin`] state.
struct AdminEndpoint {
    state: Arc<metrics::Admin>,
    addr: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl AdminEndpoint {
    /// Binds `admin_listen` and serves it, recovering until told otherwise.
    async fn start(
        config: &Config,
        recovery: Arc<RecoveryProgress>,
    ) -> Result<AdminEndpoint, ServerError> {
        let listener = metrics::bind_admin(config.admin_listen)
            .await
            .map_err(|error| ServerError::Bind {
                what: "admin port (admin_listen)",
                addr: config.admin_listen.to_string(),
                error,
            })?;
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let state = metrics::Admin::new(
            metrics::Metrics::new(),
            &config.data_dir,
            serde_json::Value::Object(config.effective())
                .to_string()
                .into(),
            recovery,
        );
        let stop = CancellationToken::new();
        let task = tokio::spawn(metrics::serve_admin(listener, state.clone(), stop.clone()));
        Ok(AdminEndpoint {
            state,
            addr,
            stop,
            task,
        })
    }

    /// Stops serving: requests in flight get [`ADMIN_STOP_MS`] to finish
    /// (a scraper's open connection must not hold the exit up).
    async fn stop(self) {
        self.stop.cancel();
        let mut task = self.task;
        let stopped = tokio::time::timeout(Duration::from_millis(ADMIN_STOP_MS), &mut task).await;
        match stopped {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::warn!(%error, "the admin endpoint failed"),
            Ok(Err(error)) => tracing::warn!(%error, "the admin endpoint panicked"),
            Err(_) => {
                tracing::warn!("admin requests still running at exit; dropping them");
                task.abort();
            }
        }
    }
}

/// Serves an open store until `shutdown` is cancelled or the store fails
/// (its admin endpoint bound here: tests open the store themselves).
///
/// # Errors
/// Start-up failures; [`ServerError::StoreFailed`] when the store failed
/// while serving (the server then shut down like at SIGTERM).
pub async fn serve(
    config: Arc<Config>,
    store: Arc<Store>,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let admin = AdminEndpoint::start(&config, Arc::default()).await?;
    let result = serve_on(config, store, shutdown, &admin).await;
    admin.stop().await;
    result
}

/// [`serve`] with the admin endpoint already up.
async fn serve_on(
    config: Arc<Config>,
    store: Arc<Store>,
    shutdown: CancellationToken,
    admin: &AdminEndpoint,
) -> Result<(), ServerError> {
    admin.state.set_store(&store);
    admin.state.set_phase(metrics::Phase::Starting);
    let metrics = admin.state.metrics().clone();
    let gauges = memory_gauges(&metrics, &config);
    // Everything recovery found is in the log: resuming subscribers may
    // read it back.
    let recovered_lsn = store.recovery_report().next_lsn.saturating_sub(1);
    let hub = hub::Hub::new(
        config.notification_history_bytes_max,
        recovered_lsn,
        gauges.history_bytes.clone(),
        hub::SubscriberMetrics {
            fell_behind: metrics.register_counter(
                "ckpt_subscriber_fell_behind_total",
                "Times a subscription fell behind: its connection's notification queue was full and updates were dropped",
            ),
            resyncs: metrics.register_counter(
                "ckpt_subscriber_resyncs_total",
                "Resync notifications sent: a subscriber told to re-read the updates it missed",
            ),
            missed: metrics.register_counter(
                "ckpt_subscriber_resync_missed_updates_total",
                "Updates the Resync notifications covered (the subscribers' lag when they were resynced)",
            ),
        },
    );
    {
        let hub = hub.clone();
        store.set_commit_listener(Arc::new(move |records| hub.on_commit(records)));
    }
    let cluster = match &config.cluster {
        None => None,
        Some((cluster_config, node_id)) => Some(
            cluster::Cluster::start(
                cluster_config.clone(),
                *node_id,
                &config.peer_via,
                store.clone(),
                &config.data_dir.join("raft"),
                metrics.registry(),
                shutdown.clone(),
            )
            .await
            .map_err(|error| ServerError::Cluster(error.to_string()))?,
        ),
    };
    if let Some(cluster) = &cluster {
        admin.state.set_cluster(cluster);
    }
    let front = cluster.clone().map(|c| c as Arc<dyn front::ClusterFront>);
    let service = service::Service::with_cluster(store.clone(), hub, metrics.clone(), front);
    service.recover().await.map_err(ServerError::Recover)?;

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|error| ServerError::Bind {
            what: "client API port (listen)",
            addr: config.listen.to_string(),
            error,
        })?;
    let listen_addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let admin_addr = admin.addr.clone();

    let tasks = TaskTracker::new();
    let expiry = {
        let service = service.clone();
        let shutdown = shutdown.clone();
        let interval = Duration::from_millis(config.expiry_interval_ms);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {
                        if let Err(error) = service.expire_due().await {
                            tracing::warn!(%error, "expiring sections failed");
                        }
                    }
                }
            }
        })
    };

    let watchdog_stop = CancellationToken::new();
    let watchdog = {
        let (store, metrics, stop, shutdown) = (
            store.clone(),
            metrics.clone(),
            watchdog_stop.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            let failure = metrics::watch_store(store, metrics, stop).await;
            if failure.is_some() {
                shutdown.cancel();
            }
            failure
        })
    };

    write_ports_file(&config.data_dir, &listen_addr, &admin_addr);
    admin.state.set_phase(metrics::Phase::Serving);
    tracing::info!(
        listen = %listen_addr,
        admin = %admin_addr,
        data_dir = %config.data_dir.display(),
        replayed = store.recovery_report().replayed,
        "ckpt-server ready"
    );
    let connections = Arc::new(Semaphore::new(config.connections_max));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, _) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            metrics.connection_rejected();
            tracing::warn!(
                limit = config.connections_max,
                "refusing a connection over the limit"
            );
            drop(stream);
            continue;
        };
        let (service, config, shutdown, metrics, queues) = (
            service.clone(),
            config.clone(),
            shutdown.clone(),
            metrics.clone(),
            gauges.queues.clone(),
        );
        tasks.spawn(async move {
            metrics.connection(1);
            connection::serve(service, stream, config, queues, shutdown).await;
            metrics.connection(-1);
            drop(permit);
        });
    }
    tracing::info!("shutting down: no new connections; finishing requests in flight");
    admin.state.set_phase(metrics::Phase::Stopping);
    drop(listener);
    let _ = expiry.await;
    tasks.close();
    let drain = Duration::from_millis(config.shutdown_drain_ms);
    if tokio::time::timeout(drain, tasks.wait()).await.is_err() {
        // A client that does not read its socket must not keep the process
        // alive (after a store failure above all: its supervisor must get
        // to restart it into recovery). Its connection goes with the runtime.
        tracing::warn!(
            connections = tasks.len(),
            shutdown_drain_ms = config.shutdown_drain_ms,
            "connections still writing replies at the drain deadline; exiting without them"
        );
    }
    watchdog_stop.cancel();
    let failure = watchdog.await.ok().flatten();
    // Pending retention timers hold the service (and so the store); they
    // restart afresh at the next start anyway.
    service.stop_timers().await;
    drop(service);
    // Aborted tasks release their references when the runtime drops them.
    for _ in 0..100 {
        if Arc::strong_count(&store) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    match Arc::try_unwrap(store) {
        Ok(store) => {
            let closed = tokio::task::spawn_blocking(move || store.close()).await;
            match closed {
                Ok(Ok(())) => tracing::info!("store closed cleanly"),
                Ok(Err(error)) => {
                    tracing::error!(%error, "closing the store failed; the log keeps everything")
                }
                Err(error) => tracing::error!(%error, "closing the store panicked"),
            }
        }
        Err(_) => tracing::warn!(
            "store still referenced at shutdown; dropping it (the log keeps everything)"
        ),
    }
    // The ports are no longer there: a script must not find them.
    let _ = std::fs::remove_file(config.data_dir.join(PORTS_FILE));
    match failure {
        Some(cause) => Err(ServerError::StoreFailed(cause)),
        None => Ok(()),
    }
}

/// The file in the data directory that names the bound addresses, for
/// scripts that start a server on port 0: `listen=IP:PORT` and
/// `admin_listen=IP:PORT`, one a line. Written once both are bound
/// (atomically: a reader sees all of it or none), removed at shutdown.
pub const PORTS_FILE: &str = "ports";

fn write_ports_file(data_dir: &std::path::Path, listen: &str, admin: &str) {
    let text = format!("listen={listen}\nadmin_listen={admin}\n");
    let temporary = data_dir.join(format!("{PORTS_FILE}.tmp"));
    let written = std::fs::write(&temporary, text)
        .and_then(|()| std::fs::rename(&temporary, data_dir.join(PORTS_FILE)));
    if let Err(error) = written {
        tracing::warn!(%error, "could not write the ports file");
    }
}

/// The gauges of the memory bounds: levels, and the bounds themselves so a
/// dashboard can show both.
struct MemoryGauges {
    queues: connection::QueueGauges,
    history_bytes: prometheus::IntGauge,
}

fn memory_gauges(metrics: &metrics::Metrics, config: &Config) -> MemoryGauges {
    let bound = |name: &str, help: &str, value: u64| {
        metrics
            .register_gauge(name, help)
            .set(i64::try_from(value).unwrap_or(i64::MAX));
    };
    bound(
        "ckpt_reply_queue_bytes_max",
        "Bound on the reply bytes one connection holds (reply_queue_bytes_max)",
        config.reply_queue_bytes_max,
    );
    bound(
        "ckpt_notification_queue_bytes_max",
        "Bound on the notification bytes queued per connection (notification_queue_bytes_max)",
        config.notification_queue_bytes_max,
    );
    bound(
        "ckpt_notification_history_bytes_max",
        "Bound on the bytes of recent updates kept in memory (notification_history_bytes_max)",
        config.notification_history_bytes_max,
    );
    MemoryGauges {
        queues: connection::QueueGauges {
            reply_bytes: metrics.register_gauge(
                "ckpt_reply_queue_bytes",
                "Reply bytes held by all connections (being read or not yet written)",
            ),
            notification_bytes: metrics.register_gauge(
                "ckpt_notification_queue_bytes",
                "Notification bytes queued on all connections and not yet written",
            ),
        },
        history_bytes: metrics.register_gauge(
            "ckpt_notification_history_bytes",
            "Bytes of recent updates kept in memory for resuming subscribers",
        ),
    }
}

fn join_error(error: tokio::task::JoinError) -> ckpt_proto::CkptError {
    ckpt_proto::CkptError::new(ckpt_proto::ErrorCode::Library, error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ckpt_proto::{CheckpointName, CreationAttributes, CreationFlags, TIME_END};
    use ckpt_storage::{Durability, FaultFs, Op};

    /// A server's configuration on `data_dir`, listening on free ports.
    fn on_free_ports(data_dir: &std::path::Path) -> Config {
        Config {
            data_dir: data_dir.to_path_buf(),
            listen: "127.0.0.1:0".parse().unwrap(),
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            ..Config::default()
        }
    }

    /// Waits until the server on `data_dir` serves (it writes the ports
    /// file then) and returns its client address.
    async fn serving_at(data_dir: &std::path::Path) -> String {
        let ports = data_dir.join(PORTS_FILE);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&ports) {
                if let Some(addr) = text.lines().find_map(|l| l.strip_prefix("listen=")) {
                    return addr.to_string();
                }
            }
            assert!(std::time::Instant::now() < deadline, "never served");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_whose_writer_dies_stops_the_server_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let config = on_free_ports(dir.path());
        let fs = FaultFs::new();
        // The injected panic must hit the writer, not the spare-segment filler.
        let mut store_config = config.store();
        store_config.preallocate_segments = false;
        let store = Arc::new(Store::open_with_fs(store_config, Arc::new(fs.clone())).unwrap());
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(Arc::new(config), store.clone(), shutdown.clone()));
        // Serving, so the failure is one while serving and not one of
        // start-up's recovery.
        serving_at(dir.path()).await;
        fs.panic_next_write();
        let create = Op::CreateCheckpoint {
            name: CheckpointName::new("doomed").unwrap(),
            attributes: CreationAttributes {
                creation_flags: CreationFlags::WR_ACTIVE_REPLICA,
                checkpoint_size: 10,
                retention_duration_ns: TIME_END,
                max_sections: 1,
                max_section_size: 10,
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
        assert!(
            result.is_err(),
            "the request in flight dies with the writer"
        );
        drop(store);
        let stopped = tokio::time::timeout(std::time::Duration::from_secs(30), server)
            .await
            .expect("the server stops by itself")
            .unwrap();
        match stopped {
            Err(ServerError::StoreFailed(cause)) => {
                assert!(cause.contains("writer thread panicked"), "{cause}")
            }
            other => panic!("expected StoreFailed, got {other:?}"),
        }
        assert!(shutdown.is_cancelled(), "the failure shut the server down");
    }

    /// Writes go to the store from the connection's reader with their
    /// answer attached; when the writer's queue is full the reader waits
    /// for room on a blocking thread. A queue of one keeps it full: every
    /// pipelined write must still be answered, and applied.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pipelined_writes_behind_a_full_writer_queue_are_all_answered_and_applied() {
        use ckpt_proto::{OpenFlags, ReadElement, SectionCreationAttributes, SectionId};
        let dir = tempfile::tempdir().unwrap();
        let config = on_free_ports(dir.path());
        let mut store_config = config.store();
        store_config.queue_depth_max = 1;
        let store = Arc::new(Store::open(store_config).unwrap());
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(Arc::new(config), store.clone(), shutdown.clone()));
        let listen = serving_at(dir.path()).await;

        const SECTIONS: usize = 16;
        const WRITES: usize = 40;
        let client = ckpt_client::Client::connect(&listen).await.unwrap();
        let attributes = CreationAttributes {
            creation_flags: CreationFlags::WR_ACTIVE_REPLICA,
            checkpoint_size: SECTIONS as u64 * 1024,
            retention_duration_ns: TIME_END,
            max_sections: SECTIONS as u32,
            max_section_size: 1024,
            max_section_id_size: 16,
        };
        let checkpoint = Arc::new(
            client
                .open(
                    &CheckpointName::new("pipelined").unwrap(),
                    Some(attributes),
                    OpenFlags::CREATE | OpenFlags::READ | OpenFlags::WRITE,
                )
                .await
                .unwrap(),
        );
        let ids: Vec<SectionId> = (0..SECTIONS)
            .map(|i| SectionId::new(format!("s{i}").into_bytes()))
            .collect();
        for id in &ids {
            let attributes = SectionCreationAttributes {
                section_id: Some(id.clone()),
                expiration_time: TIME_END,
            };
            checkpoint
                .section_create(attributes, Vec::new())
                .await
                .unwrap();
        }
        // One task per section, all on one connection: up to SECTIONS
        // writes in flight against a writer queue of one.
        let value = |section: usize, n: usize| format!("{section}:{n}").repeat(20).into_bytes();
        let writers: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(section, id)| {
                let (checkpoint, id) = (checkpoint.clone(), id.clone());
                tokio::spawn(async move {
                    for n in 0..WRITES {
                        checkpoint
                            .section_overwrite(&id, value(section, n))
                            .await
                            .unwrap_or_else(|e| panic!("write {n} of section {section}: {e}"));
                    }
                })
            })
            .collect();
        for writer in writers {
            tokio::time::timeout(std::time::Duration::from_secs(60), writer)
                .await
                .expect("every write is answered")
                .unwrap();
        }
        for (section, id) in ids.iter().enumerate() {
            let read = checkpoint
                .read(vec![ReadElement {
                    section_id: id.clone(),
                    offset: 0,
                    size: None,
                }])
                .await
                .unwrap();
            assert_eq!(read, vec![value(section, WRITES - 1)], "section {section}");
        }
        drop(checkpoint);
        drop(client);
        shutdown.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(30), server)
            .await
            .expect("the server stops")
            .unwrap()
            .unwrap();
    }
}
