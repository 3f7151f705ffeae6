//! ckpt-server: the checkpoint service on one node.
//!
//! Layout:
//! - [`config`]: defaults, TOML file, `CKPT_*` environment, flags.
//! - [`service`]: every API function over the store — handles, access
//!   checks, open counts, retention timers.
//! - [`connection`]: the wire protocol on one TCP connection.
//! - [`hub`]: notifications in log order with resumable history.
//! - [`metrics`]: Prometheus metrics, `/metrics` and `/health`.
//!
//! Shutdown (SIGTERM/SIGINT): stop accepting, let every connection finish
//! and answer the requests it has in flight, then close the store (which
//! flushes RocksDB and trims the log) and exit 0.

pub mod config;
pub mod connection;
pub mod hub;
pub mod metrics;
pub mod service;

use std::sync::Arc;
use std::time::Duration;

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
    /// An address could not be bound.
    #[error("binding {addr}: {error}")]
    Bind { addr: String, error: std::io::Error },
    /// Start-up recovery failed.
    #[error("recovering checkpoints: {0}")]
    Recover(ckpt_proto::CkptError),
}

/// Runs the server until `shutdown` is cancelled.
///
/// # Errors
/// Start-up failures; a store that cannot be flushed at the end is logged.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), ServerError> {
    let config = Arc::new(config);
    let store_config = config.store();
    let store = tokio::task::spawn_blocking(move || Store::open(store_config))
        .await
        .map_err(|e| ServerError::Store {
            dir: config.data_dir.display().to_string(),
            error: join_error(e),
        })?
        .map_err(|error| ServerError::Store {
            dir: config.data_dir.display().to_string(),
            error,
        })?;
    let store = Arc::new(store);
    let metrics = metrics::Metrics::new();
    let gauges = memory_gauges(&metrics, &config);
    // Everything recovery found is in the log: resuming subscribers may
    // read it back.
    let recovered_lsn = store.recovery_report().next_lsn.saturating_sub(1);
    let hub = hub::Hub::new(
        config.notification_history_bytes_max,
        recovered_lsn,
        gauges.history_bytes.clone(),
    );
    {
        let hub = hub.clone();
        store.set_commit_listener(Arc::new(move |records| hub.on_commit(records)));
    }
    let service = service::Service::new(store.clone(), hub, metrics.clone());
    service.recover().await.map_err(ServerError::Recover)?;

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|error| ServerError::Bind {
            addr: config.listen.to_string(),
            error,
        })?;
    let admin = metrics::bind_admin(config.admin_listen)
        .await
        .map_err(|error| ServerError::Bind {
            addr: config.admin_listen.to_string(),
            error,
        })?;
    let listen_addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let admin_addr = admin
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();

    let tasks = TaskTracker::new();
    let admin_shutdown = CancellationToken::new();
    tasks.spawn(metrics::serve_admin(
        admin,
        metrics.clone(),
        store.clone(),
        admin_shutdown.clone(),
    ));
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

    metrics.set_serving(true);
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
    metrics.set_serving(false);
    drop(listener);
    let _ = expiry.await;
    admin_shutdown.cancel();
    tasks.close();
    tasks.wait().await;
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
    Ok(())
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
