//! `ckpt-server`: see `ckpt-server --help`.

use std::io::IsTerminal;

use ckpt_server::config::{unknown_env, KEYS};
use ckpt_server::{Cli, Config};
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc's malloc: a request's buffers are allocated on
/// one thread and freed on another (connection task, writer thread, fsync
/// thread), where glibc's arenas spent about a tenth of the server's CPU
/// (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The variables behind a flag named in a command-line error: the value
/// came from the environment when the variable is set and the flag is not
/// on the command line.
fn env_sources(error: &str) -> Vec<String> {
    let args: Vec<String> = std::env::args().collect();
    KEYS.iter()
        .filter(|key| error.contains(&format!("{} ", key.flag())))
        .filter(|key| std::env::var_os(key.env()).is_some())
        .filter(|key| !args.iter().any(|a| a.starts_with(&key.flag())))
        .map(|key| key.env())
        .collect()
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("CKPT_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            if error.use_stderr() {
                for source in env_sources(&error.to_string()) {
                    eprintln!("(the value comes from {source})");
                }
            }
            return std::process::ExitCode::from(if error.use_stderr() { 2 } else { 0 });
        }
    };
    for name in unknown_env(std::env::vars().map(|(name, _)| name)) {
        tracing::warn!(
            variable = %name,
            "{name} is set but names no ckpt-server setting (ignored; see docs/configuration.md)"
        );
    }
    let config = match Config::load(&cli) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    tracing::info!(
        config = %serde_json::Value::Object(config.effective()),
        "effective configuration"
    );
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if config.worker_threads > 0 {
        builder.worker_threads(config.worker_threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let trigger = shutdown.clone();
        // Installed before recovery starts: SIGHUP's default action would
        // kill the process (a closed terminal, or `kill -HUP` sent by a
        // log rotator out of habit). The log goes to stderr, which the
        // supervisor owns, so there is no file to reopen: it is logged and
        // otherwise ignored.
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            return Err(ckpt_server::ServerError::Signals);
        };
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = int.recv() => tracing::info!("SIGINT received"),
                    _ = hup.recv() => {
                        tracing::info!("SIGHUP received: ignored (the log goes to stderr, nothing to reopen)");
                        continue;
                    }
                }
                trigger.cancel();
                return;
            }
        });
        ckpt_server::run(config, shutdown).await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "ckpt-server failed");
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
