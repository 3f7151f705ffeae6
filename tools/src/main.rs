//! The `ckpt-tool` binary: parses the command line, runs the command on a
//! tokio runtime, prints `error: CL_ERR_NAME: message` (and, with --json,
//! the error as JSON on stdout) and exits with the failure's status: 1
//! failure, 2 usage, 3 not found, 4 server unreachable.

use std::process::ExitCode;

use ckpt_client::ClientError;
use ckpt_proto::ErrorCode;
use ckpt_tool::{error_json, Exit, Failure};
use clap::Parser;

/// Writes `text` and a newline on stdout, ignoring a reader that went
/// away: what fails is already on stderr, and `println!` would panic.
fn print_json(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}").and_then(|()| out.flush());
}

/// Prints `failure` on stderr, and as JSON on stdout (stderr when stdout
/// carries data) when asked to.
fn report(failure: &Failure, json: bool, json_to_stderr: bool) -> ExitCode {
    eprintln!("error: {failure}");
    if json {
        let text = error_json(&failure.error).to_string();
        if json_to_stderr {
            eprintln!("{text}");
        } else {
            print_json(&text);
        }
    }
    ExitCode::from(failure.exit as u8)
}

fn main() -> ExitCode {
    let cli = match ckpt_tool::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            use clap::error::ErrorKind;
            if matches!(
                error.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) || !std::env::args_os().any(|a| a == "--json")
            {
                // Help, version, or usage (exit 2) as clap prints them.
                error.exit();
            }
            let text = error.render().to_string();
            let message = text.trim().trim_start_matches("error: ").to_string();
            let failure = Failure {
                error: ClientError::new(ErrorCode::InvalidParameter, message),
                exit: Exit::Usage,
            };
            print_json(&error_json(&failure.error).to_string());
            eprint!("{text}");
            return ExitCode::from(Exit::Usage as u8);
        }
    };
    let json = ckpt_tool::wants_json(&cli.command);
    let json_to_stderr = ckpt_tool::stdout_is_data(&cli.command);
    // Library diagnostics (connection loss, protocol oddities) at warn by
    // default; RUST_LOG overrides.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let ckpt_tool::cli::Command::Bench(args) = &cli.command {
        if args.threads > 0 {
            builder.worker_threads(usize::from(args.threads));
        }
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            let failure = Failure {
                error: ClientError::new(
                    ErrorCode::Library,
                    format!("cannot start the async runtime: {e}"),
                ),
                exit: Exit::Failure,
            };
            return report(&failure, json, json_to_stderr);
        }
    };
    match runtime.block_on(ckpt_tool::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => report(&failure, json, json_to_stderr),
    }
}
