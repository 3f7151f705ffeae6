//! The `ckpt-tool` binary: parses the command line, runs the command on a
//! tokio runtime, prints `error: CL_ERR_NAME: message` and exits 1 on failure.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = ckpt_tool::cli::Cli::parse();
    // Library diagnostics (connection loss, protocol oddities) at warn by
    // default; RUST_LOG overrides.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: CL_ERR_LIBRARY: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(ckpt_tool::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
