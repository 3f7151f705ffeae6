//! ckpt-tool: the operator's command-line tool for a running ckpt server.
//!
//! Layout:
//! - [`cli`]: the command line (clap derive) and its value parsers.
//! - [`admin`]: create, section-create, write, read, section-rm, sections,
//!   ls, stat, rm, with their text and JSON views.
//! - [`bench`]: the load generator, and [`histogram`], its latency histogram.
//! - [`cluster`]: `cluster status` / `cluster verify` over the nodes'
//!   admin HTTP ports, and the small HTTP client they use.
//! - [`record`]: the acknowledgement record of `bench --record` and the
//!   `check-acked` comparison.
//!
//! Contract: every failure ends in [`run`] returning a [`ClientError`]; the
//! binary prints it as `error: CL_ERR_NAME: message` and exits 1. Output
//! meant for scripts (read's bytes, JSON, `N acked, M lost`) goes to stdout;
//! diagnostics go to stderr. Online, ckpt-tool talks to the server only
//! through ckpt-client; offline (`--data-dir`) it takes the directory's
//! lock first and refuses a directory a server holds.
//!
//! Operator commands:
//! - [`dump`]: the portable dump format (writer, reader, checker);
//!   [`backup`]: `dump` and `restore`, online and offline.
//! - [`walscan`]: reading WAL segments directly; [`logtool`]: `wal`,
//!   `verify --data-dir` and `salvage`.
//! - [`datadir`]: locking and opening a data directory; [`progress`]:
//!   progress bars or log lines.

pub mod admin;
pub mod backup;
pub mod bench;
pub mod cli;
pub mod cluster;
pub mod datadir;
pub mod dump;
pub mod histogram;
pub mod logtool;
pub mod progress;
pub mod record;
pub mod status;
pub mod walscan;

use ckpt_client::{Client, ClientError};
use ckpt_proto::ErrorCode;

use crate::cli::{Cli, ClusterCommand, Command};

/// Connects to `addrs`: one `host:port`, or a cluster's nodes as
/// `h1:p1,h2:p2,...` ([`Client::connect`]: the first node that answers;
/// the client moves to another node of the list by itself when its
/// connection ends).
///
/// # Errors
/// `INVALID_PARAMETER` for an empty list entry; otherwise the client's
/// error, naming every node's failure.
pub async fn connect(addrs: &str) -> Result<Client, ClientError> {
    cluster::split_addrs(addrs)?;
    Client::connect(addrs).await
}

/// Runs one command.
///
/// # Errors
/// Whatever made the command fail; the binary prints it and exits 1.
pub async fn run(cli: Cli) -> Result<(), ClientError> {
    let addr = cli.addr.as_str();
    match &cli.command {
        Command::Bench(args) => match bench::run(addr, args).await {
            Ok(report) => print_bench(&report, args.json),
            Err((report, error)) => {
                if let Some(report) = report {
                    print_bench(&report, args.json)?;
                }
                Err(error)
            }
        },
        Command::CheckAcked(args) => check_acked(addr, &args.file).await,
        Command::Dump(args) => backup::dump(addr, args).await,
        Command::Restore(args) => backup::restore(addr, args).await,
        Command::Status(args) => status::status(args).await,
        Command::Cluster(ClusterCommand::Status(args)) => cluster::status(args).await,
        Command::Cluster(ClusterCommand::Verify(args)) => cluster::verify(args).await,
        Command::Cluster(ClusterCommand::AddNode(args)) => cluster::add_node(args).await,
        Command::Cluster(ClusterCommand::RemoveNode(args)) => cluster::remove_node(args).await,
        Command::Verify(args) => match (&args.data_dir, &args.file) {
            (Some(dir), _) => logtool::verify_data_dir(dir, args.json),
            (None, Some(file)) => verify_dump(file, args.json),
            (None, None) => Err(ClientError::new(
                ErrorCode::InvalidParameter,
                "verify needs a dump FILE or --data-dir DIR",
            )),
        },
        Command::Wal(args) => logtool::wal(args),
        Command::Salvage(args) => logtool::salvage(args),
        Command::Ls(args) if args.data_dir.is_some() => admin::ls_offline(
            args.data_dir
                .as_deref()
                .unwrap_or(std::path::Path::new(".")),
            args,
        ),
        Command::Stat(args) if args.data_dir.is_some() => admin::stat_offline(
            args.data_dir
                .as_deref()
                .unwrap_or(std::path::Path::new(".")),
            args,
        ),
        command => {
            let client = connect(addr).await?;
            let result = match command {
                Command::Create(args) => admin::create(&client, args).await,
                Command::SectionCreate(args) => admin::section_create(&client, args).await,
                Command::Write(args) => admin::write(&client, args).await,
                Command::Read(args) => admin::read(&client, args).await,
                Command::Watch(args) => status::watch(&client, args).await,
                Command::SectionRm(args) => admin::section_rm(&client, args).await,
                Command::Sections(args) => admin::sections(&client, args).await,
                Command::Ls(args) => admin::ls(&client, args).await,
                Command::Stat(args) => admin::stat(&client, args).await,
                Command::Rm(args) => admin::rm(&client, args).await,
                Command::Bench(_)
                | Command::CheckAcked(_)
                | Command::Dump(_)
                | Command::Restore(_)
                | Command::Verify(_)
                | Command::Wal(_)
                | Command::Salvage(_)
                | Command::Status(_)
                | Command::Cluster(_) => unreachable!("handled above"),
            };
            // Release the handles and say goodbye; the command's own error
            // matters more than a failure to finalize.
            let finalized = client.finalize().await;
            result?;
            if let Err(error) = finalized {
                if !error.is_connection_lost() {
                    return Err(error);
                }
            }
            Ok(())
        }
    }
}

/// `verify FILE`: every record checksum, the structure, the whole-file
/// checksum; each problem printed with its byte offset.
fn verify_dump(file: &std::path::Path, json: bool) -> Result<(), ClientError> {
    let (summary, problems) = backup::verify_dump_file(file, "verify")?;
    if json {
        #[derive(serde::Serialize)]
        struct Out<'a> {
            file: String,
            ok: bool,
            summary: &'a dump::DumpSummary,
            problems: &'a [dump::DumpProblem],
        }
        admin::emit_json(&Out {
            file: file.display().to_string(),
            ok: problems.is_empty(),
            summary: &summary,
            problems: &problems,
        })?;
    } else if problems.is_empty() {
        admin::emit(
            format!(
                "{}: ok: {} checkpoints, {} sections, {} bytes of data, {} records, {} bytes, taken {} from {}\n",
                file.display(),
                summary.checkpoints.len(),
                summary.sections,
                summary.data_bytes,
                summary.records,
                summary.bytes,
                walscan::rfc3339(summary.created_at_ns),
                summary.source
            )
            .as_bytes(),
        )?;
    } else {
        let mut text = String::new();
        for problem in &problems {
            text.push_str(&format!("problem: {}: {problem}\n", file.display()));
        }
        admin::emit(text.as_bytes())?;
    }
    if !problems.is_empty() {
        return Err(ClientError::new(
            ErrorCode::FailedOperation,
            format!(
                "{}: {} problem{} found",
                file.display(),
                problems.len(),
                if problems.len() == 1 { "" } else { "s" }
            ),
        ));
    }
    Ok(())
}

fn print_bench(report: &bench::BenchReport, json: bool) -> Result<(), ClientError> {
    for error in &report.client_errors {
        eprintln!("client {error}");
    }
    if json {
        let mut text = serde_json::to_string_pretty(report)
            .map_err(|e| ClientError::new(ErrorCode::Library, format!("encoding JSON: {e}")))?;
        text.push('\n');
        return admin::emit(text.as_bytes());
    }
    admin::emit(report.text().as_bytes())
}

async fn check_acked(addr: &str, path: &std::path::Path) -> Result<(), ClientError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ClientError::new(
            ErrorCode::Library,
            format!("reading {}: {e}", path.display()),
        )
    })?;
    let acked = record::parse_records(&text)?;
    if acked.torn_tail {
        eprintln!(
            "warning: skipped an unterminated last line of {}",
            path.display()
        );
    }
    let report = record::check_against_server(addr, acked).await?;
    for problem in &report.problems {
        eprintln!("{problem}");
    }
    let (lost, wrong) = (report.lost(), report.wrong());
    admin::emit(
        format!(
            "{} acked, {lost} lost, {wrong} wrong\n",
            report.acked.writes
        )
        .as_bytes(),
    )?;
    if !report.problems.is_empty() {
        return Err(ClientError::new(
            ErrorCode::FailedOperation,
            format!(
                "of {} sections, {lost} hold less than their last acknowledged write and {wrong} a value the bench did not write",
                report.acked.highest.len()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn dead_addr() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().to_string()
    }

    #[tokio::test]
    async fn connect_names_every_node_that_failed() {
        let (one, two) = (dead_addr().await, dead_addr().await);
        let error = match connect(&format!("{one},{two}")).await {
            Err(error) => error,
            Ok(_) => panic!("connected to nothing"),
        };
        assert!(error.is_connection_lost(), "{error}");
        assert!(
            error.message.contains(&one) && error.message.contains(&two),
            "{error}"
        );
        match connect(&format!("{one},,{two}")).await {
            Err(error) => assert_eq!(error.code, ErrorCode::InvalidParameter),
            Ok(_) => panic!("accepted an empty entry"),
        }
    }
}
