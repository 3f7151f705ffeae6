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
//! Contract: every failure ends in [`run`] returning a [`Failure`] (a
//! [`ClientError`] and its [`Exit`] status); the binary prints it as
//! `error: CL_ERR_NAME: message` (and as JSON on stdout with `--json`) and
//! exits with the status: 1 failure, 2 usage, 3 not found, 4 server
//! unreachable. Output
//! meant for scripts (read's bytes, JSON, `N acked, M lost`) goes to stdout;
//! diagnostics go to stderr. Online, ckpt-tool talks to the server only
//! through ckpt-client; offline (`--data-dir`) it looks read-only through
//! the store's own code (`ckpt_storage::inspect`, no lock, no byte
//! changed), and changes a directory (`restore`, `salvage`) only under its
//! lock, refusing one a server holds.
//!
//! Operator commands:
//! - [`dump`]: the portable dump format (writer, reader, checker);
//!   [`backup`]: `dump` and `restore`, online and offline.
//! - [`walscan`]: formatting log records; [`logtool`]: `wal`,
//!   `verify --data-dir` and `salvage`.
//! - [`datadir`]: opening a data directory (read-only, or locked to
//!   change it); [`progress`]:
//!   progress bars or log lines.

pub mod admin;
pub mod backup;
pub mod bench;
pub mod cli;
pub mod cluster;
pub mod datadir;
pub mod dump;
pub mod duration;
pub mod histogram;
pub mod logtool;
pub mod progress;
pub mod record;
pub mod status;
pub mod walscan;

use ckpt_client::{Client, ClientError};
use ckpt_proto::ErrorCode;

use crate::cli::{Cli, ClusterCommand, Command};

/// The exit status of a failed command (documented in `ckpt-tool --help`
/// and docs/operations.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 1: anything else (the server refused, a check found problems, ...).
    Failure = 1,
    /// 2: the command line is wrong.
    Usage = 2,
    /// 3: the checkpoint, section or file named does not exist.
    NotFound = 3,
    /// 4: no ckpt server answers: nothing listens, the connection was
    /// lost, or the peer is not a ckpt server.
    Unreachable = 4,
}

/// A failed command: the error and the exit status it maps to.
#[derive(Debug, Clone)]
pub struct Failure {
    /// What went wrong.
    pub error: ClientError,
    /// The exit status.
    pub exit: Exit,
}

impl Failure {
    /// A usage error (exit 2), `CL_ERR_INVALID_PARAMETER`.
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure {
            error: ClientError::new(ErrorCode::InvalidParameter, message),
            exit: Exit::Usage,
        }
    }

    /// The error as `--json` prints it:
    /// `{"error": {"code": N, "name": "CL_ERR_…", "message": "…"}}`.
    pub fn json(&self) -> serde_json::Value {
        error_json(&self.error)
    }
}

/// `{"error": {"code": N, "name": "CL_ERR_…", "message": "…"}}`.
pub fn error_json(error: &ClientError) -> serde_json::Value {
    serde_json::json!({
        "error": {
            "code": error.code.code(),
            "name": error.code.cl_name(),
            "message": error.message,
        }
    })
}

impl From<ClientError> for Failure {
    /// Not found for `NOT_EXIST`, unreachable for a lost or failed
    /// connection (`MESSAGE_ERROR`), failure otherwise.
    fn from(error: ClientError) -> Failure {
        let exit = match error.code {
            ErrorCode::NotExist => Exit::NotFound,
            ErrorCode::MessageError => Exit::Unreachable,
            _ => Exit::Failure,
        };
        Failure { error, exit }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

/// `addrs` (one address or a comma-separated list) with `default_port`
/// added to every entry that has none: `db1` → `db1:7400`,
/// `[::1]` → `[::1]:7400`.
///
/// # Errors
/// A usage error for an empty entry or a port that is not a number.
pub fn with_default_port(addrs: &str, default_port: u16) -> Result<String, Failure> {
    let mut out = Vec::new();
    for entry in addrs.split(',').map(str::trim) {
        if entry.is_empty() {
            return Err(Failure::usage(format!(
                "`{addrs}`: expected host[:port][,host[:port]...] without empty entries"
            )));
        }
        let bracketed = entry.starts_with('[');
        let port = if bracketed {
            match entry.split_once(']') {
                Some((_, "")) => None,
                Some((_, rest)) => Some(rest.strip_prefix(':').unwrap_or(rest)),
                None => {
                    return Err(Failure::usage(format!("`{entry}`: unterminated [")));
                }
            }
        } else if entry.matches(':').count() > 1 {
            // A bare IPv6 address: no port can be told apart.
            None
        } else {
            entry.split_once(':').map(|(_, port)| port)
        };
        match port {
            None if !bracketed && entry.contains(':') => {
                out.push(format!("[{entry}]:{default_port}"))
            }
            None => out.push(format!("{entry}:{default_port}")),
            Some(port) if port.parse::<u16>().is_ok() => out.push(entry.to_string()),
            Some(port) => {
                return Err(Failure::usage(format!(
                    "`{entry}`: `{port}` is not a port number"
                )));
            }
        }
    }
    Ok(out.join(","))
}

/// Connects to `addrs`: one `host:port`, or a cluster's nodes as
/// `h1:p1,h2:p2,...` ([`Client::connect`]: the first node that answers;
/// the client moves to another node of the list by itself when its
/// connection ends). A handshake that fails because the peer answered
/// HTTP (an admin port, a web server) says so.
///
/// # Errors
/// `INVALID_PARAMETER` for an empty list entry; otherwise the client's
/// error, naming every node's failure.
pub async fn connect(addrs: &str) -> Result<Client, ClientError> {
    cluster::split_addrs(addrs)?;
    match Client::connect(addrs).await {
        Ok(client) => Ok(client),
        Err(error) => Err(explain_connect_error(addrs, error).await),
    }
}

/// A failed connection's error, or, when the handshake failed because a
/// node of `addrs` answers HTTP (an admin port, a web server), an error
/// that says so.
pub async fn explain_connect_error(addrs: &str, error: ClientError) -> ClientError {
    if !error.message.contains("handshake with") {
        return error;
    }
    let mut http = Vec::new();
    for addr in addrs.split(',').map(str::trim) {
        if speaks_http(addr).await {
            http.push(addr.to_string());
        }
    }
    if http.is_empty() {
        return error;
    }
    ClientError::new(
        ErrorCode::MessageError,
        format!(
            "{} is not a ckpt server (got HTTP): is it the admin port? The client API \
             is the server's `listen` address (default port {}); {}",
            http.join(", "),
            cli::DEFAULT_PORT,
            error.message
        ),
    )
}

/// Whether `addr` answers a minimal HTTP request with `HTTP/` (within 2 s).
pub async fn speaks_http(addr: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"GET / HTTP/1.0\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut head = [0u8; 5];
        stream.read_exact(&mut head).await.ok()?;
        Some(&head == b"HTTP/")
    };
    matches!(
        tokio::time::timeout(std::time::Duration::from_secs(2), probe).await,
        Ok(Some(true))
    )
}

/// Reads stdin into a temporary file (for a dump given as `-`): the
/// file's path, removed when the guard drops.
struct Spooled(std::path::PathBuf);

impl Drop for Spooled {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn spool_stdin() -> Result<Spooled, ClientError> {
    let path = std::env::temp_dir().join(format!(
        "ckpt-tool-stdin-{}-{}.ckd",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let spooled = Spooled(path.clone());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| {
            ClientError::new(
                ErrorCode::Library,
                format!("creating {} to hold stdin: {e}", path.display()),
            )
        })?;
    std::io::copy(&mut std::io::stdin().lock(), &mut file).map_err(|e| {
        ClientError::new(
            ErrorCode::Library,
            format!("copying stdin to {}: {e}", path.display()),
        )
    })?;
    Ok(spooled)
}

/// The section a command names: its ID, or the default section when the
/// ID is left out — which needs a checkpoint of `--max-sections 1`.
///
/// # Errors
/// A usage error when the ID is left out for a checkpoint of several
/// sections; the server's error when it cannot be looked at.
async fn resolve_section(
    client: &Client,
    name: &ckpt_proto::CheckpointName,
    section: &cli::SectionArg,
) -> Result<ckpt_proto::SectionId, Failure> {
    if section.left_out() {
        let info = client.stat(name).await?;
        let max_sections = info.status.attributes.max_sections;
        if max_sections != 1 {
            return Err(Failure::usage(format!(
                "checkpoint {name} holds up to {max_sections} sections: name the section ID \
                 (leaving it out means the default section, the only section of a checkpoint \
                 created with --max-sections 1)"
            )));
        }
    }
    Ok(section.section_id())
}

/// Runs one command.
///
/// # Errors
/// Whatever made the command fail, with its exit status.
pub async fn run(mut cli: Cli) -> Result<(), Failure> {
    cli.addr = with_default_port(&cli.addr, cli::DEFAULT_PORT)?;
    match &mut cli.command {
        Command::Status(args) => {
            args.admin = with_default_port(&args.admin, cli::DEFAULT_ADMIN_PORT)?;
        }
        Command::Cluster(
            ClusterCommand::Status(cli::ClusterStatusArgs { target, .. })
            | ClusterCommand::Verify(cli::ClusterVerifyArgs { target, .. })
            | ClusterCommand::AddNode(cli::ClusterAddNodeArgs { target, .. })
            | ClusterCommand::RemoveNode(cli::ClusterRemoveNodeArgs { target, .. }),
        ) => {
            if let Some(admin) = &target.admin {
                target.admin = Some(with_default_port(admin, cli::DEFAULT_ADMIN_PORT)?);
            }
        }
        _ => {}
    }
    let addr = cli.addr.as_str();
    // A dump read from stdin: spooled to a file that lives as long as the
    // command.
    let mut _spooled = None;
    if let Command::Restore(args) = &mut cli.command {
        if args.file == std::path::Path::new("-") {
            let spooled = spool_stdin()?;
            args.file = spooled.0.clone();
            _spooled = Some(spooled);
        }
    }
    let command = &cli.command;
    let result = match command {
        Command::Bench(args) => match bench::run(addr, args).await {
            Ok(report) => print_bench(&report, args.json),
            Err((report, error)) => {
                if let Some(report) = report {
                    print_bench(&report, args.json)?;
                }
                Err(error)
            }
        },
        Command::CheckAcked(args) => check_acked(addr, &args.file, args.json).await,
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
            (None, None) => {
                return Err(Failure::usage("verify needs a dump FILE or --data-dir DIR"))
            }
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
        command => return run_online(addr, command).await,
    };
    result.map_err(Failure::from)
}

/// The commands that talk to a server through one client.
async fn run_online(addr: &str, command: &Command) -> Result<(), Failure> {
    let client = connect(addr).await?;
    let result: Result<(), Failure> = async {
        match command {
            Command::Create(args) => admin::create(&client, args).await?,
            Command::SectionCreate(args) => admin::section_create(&client, args).await?,
            Command::Write(args) => {
                let section = resolve_section(&client, &args.name.name, &args.section).await?;
                admin::write(&client, args, section).await?;
            }
            Command::Read(args) => {
                let section = resolve_section(&client, &args.name.name, &args.section).await?;
                admin::read(&client, args, section).await?;
            }
            Command::SectionRm(args) => {
                let section = resolve_section(&client, &args.name.name, &args.section).await?;
                admin::section_rm(&client, args, section).await?;
            }
            Command::Watch(args) => status::watch(&client, args).await?,
            Command::Sections(args) => admin::sections(&client, args).await?,
            Command::Ls(args) => admin::ls(&client, args).await?,
            Command::Stat(args) => admin::stat(&client, args).await?,
            Command::Rm(args) => admin::rm(&client, args).await?,
            Command::Bench(_)
            | Command::CheckAcked(_)
            | Command::Dump(_)
            | Command::Restore(_)
            | Command::Verify(_)
            | Command::Wal(_)
            | Command::Salvage(_)
            | Command::Status(_)
            | Command::Cluster(_) => unreachable!("handled by run"),
        }
        Ok(())
    }
    .await;
    // Release the handles and say goodbye; the command's own error
    // matters more than a failure to finalize.
    let finalized = client.finalize().await;
    result?;
    if let Err(error) = finalized {
        if !error.is_connection_lost() {
            return Err(error.into());
        }
    }
    Ok(())
}

/// Whether the command line asked for `--json` (for how to print an
/// error).
pub fn wants_json(command: &Command) -> bool {
    match command {
        Command::Status(a) => a.json,
        Command::Watch(a) => a.json,
        Command::Create(a) => a.json,
        Command::SectionCreate(a) => a.json,
        Command::Write(a) => a.json,
        Command::Read(a) => a.json,
        Command::SectionRm(a) => a.json.json,
        Command::Sections(a) => a.json,
        Command::Ls(a) => a.json,
        Command::Stat(a) => a.json,
        Command::Dump(a) => a.json,
        Command::Restore(a) => a.json,
        Command::Verify(a) => a.json,
        Command::Wal(a) => a.json,
        Command::Salvage(a) => a.json,
        Command::Rm(a) => a.json.json,
        Command::Bench(a) => a.json,
        Command::CheckAcked(a) => a.json,
        Command::Cluster(ClusterCommand::Status(a)) => a.json,
        Command::Cluster(ClusterCommand::Verify(a)) => a.json,
        Command::Cluster(ClusterCommand::AddNode(a)) => a.json,
        Command::Cluster(ClusterCommand::RemoveNode(a)) => a.json,
    }
}

/// Whether the command's stdout carries data (a dump to `-`), so that a
/// JSON error goes to stderr instead.
pub fn stdout_is_data(command: &Command) -> bool {
    matches!(command, Command::Dump(a) if a.output == std::path::Path::new("-"))
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

async fn check_acked(addr: &str, path: &std::path::Path, json: bool) -> Result<(), ClientError> {
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
    if json {
        admin::emit_json(&serde_json::json!({
            "acked": report.acked.writes,
            "lost": lost,
            "wrong": wrong,
            "problems": report.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        }))?;
    } else {
        admin::emit(
            format!(
                "{} acked, {lost} lost, {wrong} wrong\n",
                report.acked.writes
            )
            .as_bytes(),
        )?;
    }
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

    #[test]
    fn addresses_without_a_port_get_the_default_one() {
        let with = |text: &str| with_default_port(text, 7400).map_err(|f| f.exit);
        assert_eq!(with("db1").unwrap(), "db1:7400");
        assert_eq!(with("db1:9").unwrap(), "db1:9");
        assert_eq!(with("a, b:1").unwrap(), "a:7400,b:1");
        assert_eq!(with("[::1]").unwrap(), "[::1]:7400");
        assert_eq!(with("[::1]:5").unwrap(), "[::1]:5");
        assert_eq!(with("::1").unwrap(), "[::1]:7400");
        assert_eq!(with("a:port"), Err(Exit::Usage));
        assert_eq!(with("a,,b"), Err(Exit::Usage));
        assert_eq!(with("a:70000"), Err(Exit::Usage));
    }

    #[test]
    fn failures_map_to_exit_statuses() {
        let exit = |code| Failure::from(ClientError::new(code, "x")).exit;
        assert_eq!(exit(ErrorCode::NotExist), Exit::NotFound);
        assert_eq!(exit(ErrorCode::MessageError), Exit::Unreachable);
        assert_eq!(exit(ErrorCode::AlreadyExist), Exit::Failure);
        let json = Failure::usage("bad").json();
        assert_eq!(json["error"]["name"], "CL_ERR_INVALID_PARAMETER");
        assert_eq!(json["error"]["code"], 2);
        assert_eq!(json["error"]["message"], "bad");
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
