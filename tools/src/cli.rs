//! The command line (clap derive). Parsing only: every value is checked here
//! as far as it can be without the server, so a bad flag fails before any
//! connection is made.

use std::path::PathBuf;

use ckpt_proto::{CheckpointName, CreationFlags, SectionId, TIME_END};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// Default server address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7400";

/// Default port of a server's client API (`--addr HOST` means HOST:7400).
pub const DEFAULT_PORT: u16 = 7400;

/// Default port of a server's admin endpoint (`--admin HOST` means HOST:7401).
pub const DEFAULT_ADMIN_PORT: u16 = 7401;

/// The exit statuses, as `ckpt-tool --help` prints them.
pub const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  success
  1  failure (the server refused, a check found problems, a file is damaged, ...)
  2  usage: the command line is wrong (unknown flag, missing or bad value)
  3  not found: the checkpoint, section or file named does not exist
  4  server unreachable: nothing answers at --addr/--admin, the connection
     was lost, or what answered is not a ckpt server (e.g. an HTTP port)

Errors go to stderr as `error: CL_ERR_NAME: message`; with --json also to
stdout as {\"error\": {\"code\": N, \"name\": \"CL_ERR_NAME\", \"message\": \"...\"}}.
Durations take units: 500ms, 30s, 5m, 1h30m, 2d, or `forever` where that
means something (a bare number is seconds).";

/// ckpt-tool: operate a ckpt checkpoint service from the shell.
///
/// The checkpoint commands talk to the server at --addr (or $CKPT_ADDR);
/// `wal`, `salvage`, `verify FILE` and `dump`/`restore --data-dir` work on
/// files offline; `status` and `cluster` talk to admin ports. Every command
/// takes --json. Offline looking (`ls`, `stat`, `dump`, `wal`, `verify`
/// with --data-dir) is read-only: it changes no byte and takes no lock.
#[derive(Debug, Parser)]
#[command(
    name = "ckpt-tool",
    version,
    propagate_version = true,
    after_help = EXIT_STATUS_HELP
)]
pub struct Cli {
    /// Server address, host[:port] (port 7400 if left out); a cluster's
    /// nodes as a comma-separated list `h1:p1,h2:p2,...` (the first that
    /// answers is used).
    #[arg(long, global = true, env = "CKPT_ADDR", default_value = DEFAULT_ADDR)]
    pub addr: String,

    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// One server at a glance, from its admin port (like `etcdctl endpoint
    /// status` and redis `INFO`): version, uptime, data directory, ready or
    /// not (and why), poisoned, WAL and RocksDB bytes on disk, applied lsn,
    /// checkpoints and sections, connections. `--json` for scripts.
    Status(StatusArgs),
    /// Follow a checkpoint's updates as they commit (like `etcdctl watch`):
    /// one line per update (`--json`: one object per line). `--from SEQ`
    /// resumes after sequence number SEQ without a gap while the server's
    /// log still holds it (else a `resync` line says what was missed).
    Watch(WatchArgs),
    /// Create a checkpoint (open with CREATE|READ|WRITE, then close). An
    /// existing checkpoint with the same attributes is fine; with other
    /// attributes it is CL_ERR_ALREADY_EXIST, naming the attributes that
    /// differ. Replication flags (--mode all-replicas/all-safe, --all-safe,
    /// --collocated, --distributed) on a checkpoint with one replica (a
    /// single node) draw a warning: they change nothing there.
    Create(CreateArgs),
    /// Create a section, with initial data from --file (empty without it).
    /// Prints the section's id.
    SectionCreate(SectionCreateArgs),
    /// Write bytes from stdin (or --file) into a section at --offset; with
    /// --overwrite, replace the section's data and size. Without a section
    /// ID: the default section (a checkpoint of --max-sections 1).
    Write(WriteArgs),
    /// Read a section's bytes (from --offset, --size bytes or to the end) to
    /// stdout, raw (--json: as a string or base64). Without a section ID:
    /// the default section.
    Read(ReadArgs),
    /// Delete a section.
    SectionRm(SectionRmArgs),
    /// List a checkpoint's sections: one line per section with its id, size
    /// in bytes, expiration (UTC time and how far away, or "forever"; --json:
    /// ns since the epoch) and state.
    Sections(SectionsArgs),
    /// List every checkpoint with its size, sections, replicas and RocksDB
    /// footprint, and the node's WAL footprint. Online, or offline with
    /// --data-dir (read-only).
    Ls(LsArgs),
    /// Show one checkpoint's attributes, usage, replicas and footprint.
    /// Online, or offline with --data-dir (read-only).
    Stat(StatArgs),
    /// Write checkpoints to a portable dump file (docs/dump-format.md): one
    /// consistent point in time, taken while writers go on. Online through
    /// the server, or offline from a data directory (read-only).
    Dump(DumpArgs),
    /// Recreate the checkpoints of a dump exactly (attributes, sections,
    /// expiration times, generated-id counters). The whole dump is checked
    /// first: a damaged dump is refused before anything is written.
    /// Existing checkpoints are refused unless --replace.
    Restore(RestoreArgs),
    /// Check a dump file, or a data directory (every WAL record checksum
    /// and lsn, RocksDB invariants, every section read back). Prints each
    /// problem with its location; exits 1 if there is any.
    Verify(VerifyArgs),
    /// Print the write-ahead log's records, one per line (or JSON lines):
    /// lsn, segment and offset, time, checkpoint, epoch, seq, kind, ids,
    /// offsets and sizes — never the data. Offline only (read-only).
    Wal(WalArgs),
    /// Recover a data directory whose log is damaged before its tail: keep
    /// every record up to the damage, move the damaged segment and the
    /// later ones aside (`<name>.damaged`, never deleted), and print
    /// exactly which checkpoints and sequence ranges were dropped.
    Salvage(SalvageArgs),
    /// Delete a checkpoint's name (open handles keep working until closed).
    Rm(RmArgs),
    /// Load generator: N clients, each on its own connection, overwrite
    /// their own section `c<i>` in a loop; prints throughput and latency,
    /// and live progress each second when stderr is a terminal.
    ///
    /// The bench is a guest: it writes only checkpoints it created (a fresh
    /// `bench-<run>` per run unless --checkpoint names one an earlier bench
    /// created and kept) and removes them at the end unless --keep or
    /// --record (which keeps what `check-acked` reads).
    ///
    /// Each value is --value-size bytes whose first 8 bytes are an increasing
    /// u64 counter (little-endian), starting after the value stored, so
    /// reruns keep increasing; the other bytes derive from the checkpoint,
    /// section, counter and size. If the server goes away mid-run, the clients
    /// stop and the summary covers what was acknowledged; the exit status is
    /// 0 unless nothing at all succeeded.
    Bench(BenchArgs),
    /// Check that every acknowledged write recorded by `bench --record` is
    /// still there.
    ///
    /// For every (checkpoint, section) in FILE, takes the acknowledged write
    /// with the highest counter, reads the section's whole value from the
    /// server and prints `N acked, M lost, K wrong`: N is the number of
    /// acknowledged writes in the file (its lines), M the number of sections
    /// whose stored counter is lower than their last acknowledged one (a
    /// missing section or checkpoint counts as lost), K the number whose
    /// value is not one the bench wrote there as that write or the one after
    /// it (wrong size or bytes, or a counter further ahead). Each is named
    /// on stderr. Exits 1 when M + K > 0.
    CheckAcked(CheckAckedArgs),
    /// Look at a cluster through its nodes' admin HTTP ports: `status`
    /// (nodes, leader, every checkpoint's replicas) and `verify` (every
    /// replica of every checkpoint holds the same data).
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

/// `cluster` subcommands.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// GET /cluster from the first node that answers: nodes and their
    /// liveness, the Raft leader and term, and per checkpoint its replicas,
    /// active replica, epoch, in-sync set and backup lag.
    Status(ClusterStatusArgs),
    /// GET /checksums from every node and compare each checkpoint's
    /// (epoch, seq, checksum) across the nodes holding a replica. Prints
    /// each checkpoint as identical or names the nodes that differ; exits 1
    /// on any difference or unreachable node. Meaningful on a quiet cluster
    /// (writes in flight make backups lag).
    Verify(ClusterVerifyArgs),
    /// Make a new node a member (POST /cluster/add-node to the first node
    /// that takes it). Start the new node first with `ckpt-server --join`
    /// and an empty data directory; once it asks for its lease, the
    /// checkpoints short of replicas get one on it (snapshot, then the
    /// log). `cluster status` shows how many are still filling.
    AddNode(ClusterAddNodeArgs),
    /// Remove a dead node for good (POST /cluster/remove-node): its
    /// replicas are placed on the other live members. Refused for a live
    /// node, the last one, or one holding the only in-sync copy of a
    /// checkpoint.
    RemoveNode(ClusterRemoveNodeArgs),
}

/// `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The server's admin address (port 7401 if left out).
    #[arg(
        long,
        env = "CKPT_ADMIN",
        default_value = "127.0.0.1:7401",
        value_name = "HOST[:PORT]"
    )]
    pub admin: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub name: NameArg,
    /// Resume after this sequence number (the last one seen).
    #[arg(long, value_name = "SEQ")]
    pub from: Option<u64>,
    /// Stop after this many updates (default: follow until interrupted).
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

/// `cluster add-node`.
#[derive(Debug, Args)]
pub struct ClusterAddNodeArgs {
    #[command(flatten)]
    pub target: AdminTarget,
    /// The new node's id (not a member's).
    #[arg(long)]
    pub id: u64,
    /// Its client API address.
    #[arg(long, value_name = "IP:PORT")]
    pub client_addr: std::net::SocketAddr,
    /// Its peer address.
    #[arg(long, value_name = "IP:PORT")]
    pub peer_addr: std::net::SocketAddr,
    /// Its admin address.
    #[arg(long, value_name = "IP:PORT")]
    pub admin_addr: std::net::SocketAddr,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `cluster remove-node`.
#[derive(Debug, Args)]
pub struct ClusterRemoveNodeArgs {
    #[command(flatten)]
    pub target: AdminTarget,
    /// The node to remove.
    #[arg(long)]
    pub id: u64,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Where the admin ports of a cluster's nodes are: `--admin` or `--config`.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct AdminTarget {
    /// The nodes' admin addresses, `h1:p1,h2:p2,...` (port 7401 where left out).
    #[arg(long, value_name = "LIST")]
    pub admin: Option<String>,
    /// A cluster.toml: the `admin_addr` of every `[[nodes]]` entry.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `cluster status`.
#[derive(Debug, Args)]
pub struct ClusterStatusArgs {
    #[command(flatten)]
    pub target: AdminTarget,
    /// Print the node's JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Which checkpoints to list after the summary: every one, none (what
    /// a poll of a large cluster wants: the node renders tens of thousands
    /// of lines otherwise), or those needing attention (under-replicated,
    /// without an active replica, or with a backup behind).
    #[arg(long, value_enum, default_value = "all")]
    pub checkpoints: ListedCheckpoints,
}

/// `cluster status --checkpoints`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListedCheckpoints {
    /// Every checkpoint.
    All,
    /// None: the summary only.
    None,
    /// Under-replicated, without an active replica, or with a backup behind.
    Unsettled,
}

/// `cluster verify`.
#[derive(Debug, Args)]
pub struct ClusterVerifyArgs {
    #[command(flatten)]
    pub target: AdminTarget,
    /// Print the comparison as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `--mode`: the update mode of a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// CL_CKPT_WR_ALL_REPLICAS: a write returns when every replica has it.
    AllReplicas,
    /// CL_CKPT_WR_ACTIVE_REPLICA: a write returns when it is durable on the active replica.
    Active,
    /// CL_CKPT_WR_ACTIVE_REPLICA_WEAK: a write returns when applied; durable within one group commit.
    #[value(alias = "weak")]
    ActiveWeak,
    /// CL_CKPT_WR_ACTIVE_REPLICA | CL_CKPT_WR_ALL_SAFE: a write returns
    /// when it is durable on the active replica and every in-sync backup.
    AllSafe,
}

impl Mode {
    /// The creation flag of this mode.
    pub fn flag(self) -> CreationFlags {
        match self {
            Mode::AllReplicas => CreationFlags::WR_ALL_REPLICAS,
            Mode::Active => CreationFlags::WR_ACTIVE_REPLICA,
            Mode::ActiveWeak => CreationFlags::WR_ACTIVE_REPLICA_WEAK,
            Mode::AllSafe => CreationFlags::WR_ACTIVE_REPLICA | CreationFlags::WR_ALL_SAFE,
        }
    }

    /// The name `--mode` takes.
    pub fn name(self) -> &'static str {
        match self {
            Mode::AllReplicas => "all-replicas",
            Mode::Active => "active",
            Mode::ActiveWeak => "active-weak",
            Mode::AllSafe => "all-safe",
        }
    }
}

/// `bench --op`: what each client does in its loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchOp {
    /// Overwrite the client's own section.
    Write,
    /// Write the client's own section once, then read it back whole in the
    /// loop (each read checked against the value written); ops are reads.
    Read,
    /// Create a checkpoint of the client's own, close it and delete it;
    /// ops are creations.
    Open,
    /// Fill the server: create checkpoints `<checkpoint>-<n>` of
    /// `--sections` sections of `--value-size` bytes each and keep them
    /// (needs --keep); ops are checkpoints created, until `--total` (or the
    /// deadline). For scale tests: restart the server afterwards and see.
    Fill,
}

/// `bench --target`: what system the bench loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchTarget {
    /// A ckpt server or cluster at --addr.
    Ckpt,
    /// An etcd cluster at --endpoints, through its v3 JSON gateway
    /// (POST /v3/kv/put), for side-by-side comparisons.
    Etcd,
}

/// Parses `--reconnect`: a duration from 0 to 1 day, in seconds.
pub fn parse_reconnect_s(text: &str) -> Result<f64, String> {
    crate::duration::parse_seconds(text, 0.0, false, 86_400.0)
}

/// Parses a checkpoint name (its bytes are the argument's UTF-8 bytes).
pub fn parse_name(text: &str) -> Result<CheckpointName, String> {
    CheckpointName::new(text.as_bytes()).map_err(|e| e.detail)
}

/// Parses `--retention`: a duration, or `forever`.
pub fn parse_retention(text: &str) -> Result<i64, String> {
    crate::duration::parse_ns(text, true)
}

/// Parses the hidden `--retention-ns`: a count of nanoseconds, or `forever`.
pub fn parse_retention_ns(text: &str) -> Result<i64, String> {
    if text == "forever" {
        return Ok(TIME_END);
    }
    match text.parse::<i64>() {
        Ok(ns) if ns >= 0 => Ok(ns),
        _ => Err(format!(
            "`{text}` is neither a non-negative number of nanoseconds nor `forever`"
        )),
    }
}

/// Parses `--expires-in`: a duration (a bare number is seconds, as the old
/// `--expires-in-s` took).
pub fn parse_expires_in(text: &str) -> Result<i64, String> {
    crate::duration::parse_ns(text, false)
}

/// Parses `--mix R:W`: R reads, then W writes, over and over; R + W > 0.
pub fn parse_mix(text: &str) -> Result<(u32, u32), String> {
    let bad = || format!("`{text}` is not R:W (two whole numbers, not both 0, e.g. 9:1)");
    let (reads, writes) = text.split_once(':').ok_or_else(bad)?;
    let reads: u32 = reads.trim().parse().map_err(|_| bad())?;
    let writes: u32 = writes.trim().parse().map_err(|_| bad())?;
    if reads.checked_add(writes).is_none_or(|sum| sum == 0) {
        return Err(bad());
    }
    Ok((reads, writes))
}

/// `--server-pid`: the processes whose CPU time a bench reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pids(pub Vec<u32>);

/// Parses `--server-pid`: process ids, comma-separated.
pub fn parse_pids(text: &str) -> Result<Pids, String> {
    text.split(',')
        .map(|pid| {
            pid.trim()
                .parse::<u32>()
                .ok()
                .filter(|&pid| pid > 0)
                .ok_or_else(|| format!("`{pid}` is not a process id"))
        })
        .collect::<Result<_, _>>()
        .map(Pids)
}

/// Parses `--duration`: a positive duration up to 10^9 s, in seconds.
pub fn parse_duration_s(text: &str) -> Result<f64, String> {
    crate::duration::parse_seconds(text, 0.0, true, 1e9)
}

/// The checkpoint a command works on.
#[derive(Debug, Args)]
pub struct NameArg {
    /// Checkpoint name (1..=256 bytes).
    #[arg(value_name = "NAME", value_parser = parse_name)]
    pub name: CheckpointName,
}

/// A section: an ID argument; left out, the default section.
#[derive(Debug, Args)]
pub struct SectionArg {
    /// Section id (the argument's UTF-8 bytes). Leave it out for the default
    /// section (CL_CKPT_DEFAULT_SECTION_ID), the only section of a
    /// checkpoint created with --max-sections 1.
    #[arg(value_name = "ID")]
    pub id: Option<String>,

    /// The default section (the same as leaving the ID out).
    #[arg(long, conflicts_with = "id")]
    pub default_section: bool,
}

impl SectionArg {
    /// The section id these arguments name.
    pub fn section_id(&self) -> SectionId {
        match (&self.id, self.default_section) {
            (Some(id), false) => SectionId::new(id.as_bytes()),
            _ => SectionId::DEFAULT,
        }
    }

    /// Whether the ID was left out (neither an ID nor --default-section):
    /// the checkpoint must then have only the default section.
    pub fn left_out(&self) -> bool {
        self.id.is_none() && !self.default_section
    }
}

/// `--json`, for commands whose output is otherwise raw or nothing.
#[derive(Debug, Args)]
pub struct JsonArg {
    /// Print the result (and any error) as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub name: NameArg,
    /// Most sections (1 = only the default section).
    #[arg(long, default_value_t = 1)]
    pub max_sections: u32,
    /// Largest section, in bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_section_size: u64,
    /// Upper bound on the sum of all section sizes, in bytes
    /// [default: max-sections × max-section-size].
    #[arg(long)]
    pub size: Option<u64>,
    /// Longest section id, in bytes.
    #[arg(long, default_value_t = 64)]
    pub max_section_id_size: u64,
    /// How long the checkpoint is kept once nobody has it open: a duration
    /// (30s, 5m, 1h, 2d; 0 = deleted at its last close) or `forever`.
    #[arg(long, value_name = "DURATION", value_parser = parse_retention)]
    pub retention: Option<i64>,
    /// The same in nanoseconds (the old spelling, kept for scripts).
    #[arg(long, hide = true, conflicts_with = "retention", value_parser = parse_retention_ns)]
    pub retention_ns: Option<i64>,
    /// Update mode.
    #[arg(long, value_enum, default_value_t = Mode::Active)]
    pub mode: Mode,
    /// CL_CKPT_WR_ALL_SAFE: acknowledge writes only when every in-sync replica has them.
    #[arg(long)]
    pub all_safe: bool,
    /// CL_CKPT_CHECKPOINT_COLLOCATED.
    #[arg(long)]
    pub collocated: bool,
    /// CL_CKPT_DISTRIBUTED.
    #[arg(long)]
    pub distributed: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

impl CreateArgs {
    /// The retention asked for, in ns ([`TIME_END`] = forever, the default).
    pub fn retention_duration_ns(&self) -> i64 {
        self.retention.or(self.retention_ns).unwrap_or(TIME_END)
    }
}

/// `section-create`.
#[derive(Debug, Args)]
pub struct SectionCreateArgs {
    #[command(flatten)]
    pub name: NameArg,
    /// Section id (the argument's UTF-8 bytes).
    #[arg(value_name = "ID", required_unless_present = "generated")]
    pub id: Option<String>,
    /// Let the server choose the id (CL_CKPT_GENERATED_SECTION_ID).
    #[arg(long, conflicts_with = "id")]
    pub generated: bool,
    /// Initial data from this file (`-` for stdin); empty without it.
    #[arg(long, value_name = "F")]
    pub file: Option<PathBuf>,
    /// Expire the section this long from now (30s, 5m, 1h, 2d; default:
    /// never). `--expires-in-s N` (seconds) is the old spelling.
    #[arg(long = "expires-in", alias = "expires-in-s", value_name = "DURATION", value_parser = parse_expires_in)]
    pub expires_in_ns: Option<i64>,
    /// Print the new section's id as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `write`.
#[derive(Debug, Args)]
pub struct WriteArgs {
    #[command(flatten)]
    pub name: NameArg,
    #[command(flatten)]
    pub section: SectionArg,
    /// Byte offset in the section.
    #[arg(long, default_value_t = 0, conflicts_with = "overwrite")]
    pub offset: u64,
    /// Data from this file instead of stdin (`-` is stdin).
    #[arg(long, value_name = "F")]
    pub file: Option<PathBuf>,
    /// Replace the section's data and size (clCkptSectionOverwrite).
    #[arg(long)]
    pub overwrite: bool,
    /// Print what was written as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `read`.
#[derive(Debug, Args)]
pub struct ReadArgs {
    #[command(flatten)]
    pub name: NameArg,
    #[command(flatten)]
    pub section: SectionArg,
    /// Byte offset in the section.
    #[arg(long, default_value_t = 0)]
    pub offset: u64,
    /// How many bytes (default: to the end of the section).
    #[arg(long)]
    pub size: Option<u64>,
    /// Print the bytes as JSON: `data` (UTF-8 text) or `data_base64`.
    #[arg(long)]
    pub json: bool,
}

/// `section-rm`.
#[derive(Debug, Args)]
pub struct SectionRmArgs {
    #[command(flatten)]
    pub name: NameArg,
    #[command(flatten)]
    pub section: SectionArg,
    #[command(flatten)]
    pub json: JsonArg,
}

/// `sections`.
#[derive(Debug, Args)]
pub struct SectionsArgs {
    #[command(flatten)]
    pub name: NameArg,
    /// Print JSON instead of lines.
    #[arg(long)]
    pub json: bool,
}

/// `ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Read a data directory instead of asking a server. Read-only: the log
    /// is replayed in memory as recovery would, no file is changed, no lock
    /// taken (a running server's directory works too).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// `stat`.
#[derive(Debug, Args)]
pub struct StatArgs {
    #[command(flatten)]
    pub name: NameArg,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Read a data directory instead of asking a server. Read-only: the log
    /// is replayed in memory as recovery would, no file is changed, no lock
    /// taken (a running server's directory works too).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// Parses `--rename OLD=NEW`.
pub fn parse_rename(text: &str) -> Result<(CheckpointName, CheckpointName), String> {
    let (old, new) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not OLD=NEW"))?;
    Ok((parse_name(old)?, parse_name(new)?))
}

/// `dump`.
#[derive(Debug, Args)]
pub struct DumpArgs {
    /// Checkpoints to dump.
    #[arg(value_name = "NAME", value_parser = parse_name, required_unless_present = "all", conflicts_with = "all")]
    pub names: Vec<CheckpointName>,
    /// Dump every checkpoint.
    #[arg(long)]
    pub all: bool,
    /// The dump file (`-` for stdout). Written as FILE.partial, synced,
    /// then renamed, so FILE is always a complete dump.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    /// Dump from a data directory instead of a server. Read-only: no file is
    /// changed, no lock taken (a running server's directory works too).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The dump file (`-` reads it from stdin; it is spooled to a temporary
    /// file, since restore reads the dump twice).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Restore only these checkpoints of the dump (default: all).
    #[arg(value_name = "NAME", value_parser = parse_name)]
    pub names: Vec<CheckpointName>,
    /// Restore checkpoint OLD of the dump under the name NEW (repeatable).
    #[arg(long, value_name = "OLD=NEW", value_parser = parse_rename)]
    pub rename: Vec<(CheckpointName, CheckpointName)>,
    /// Delete an existing checkpoint of the same name first.
    #[arg(long)]
    pub replace: bool,
    /// Restore into a data directory instead of a server (no server may
    /// hold it; created if missing).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// A dump file to check (`-` reads it from stdin).
    #[arg(
        value_name = "FILE",
        required_unless_present = "data_dir",
        conflicts_with = "data_dir"
    )]
    pub file: Option<PathBuf>,
    /// A data directory to check. Read-only: no file is changed, no lock
    /// taken (a running server's directory works too).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Print the findings as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `wal`.
#[derive(Debug, Args)]
pub struct WalArgs {
    /// The data directory. Read-only: no file is changed, no lock taken (a
    /// running server's directory works too).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Only records whose checkpoint sequence number is at least SEQ
    /// (per checkpoint; most useful with --checkpoint).
    #[arg(long, value_name = "SEQ")]
    pub from: Option<u64>,
    /// Only records at or after this log position.
    #[arg(long, value_name = "LSN")]
    pub from_lsn: Option<u64>,
    /// Only records of the checkpoint(s) that had this name.
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    pub checkpoint: Option<CheckpointName>,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `salvage`.
#[derive(Debug, Args)]
pub struct SalvageArgs {
    /// The data directory (no server may hold it).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Say what would be done; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    #[command(flatten)]
    pub name: NameArg,
    #[command(flatten)]
    pub json: JsonArg,
}

/// `bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Concurrent clients, each on its own connection.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub clients: u32,
    /// How long to run (10s, 500ms, 2m; a bare number is seconds).
    /// `--duration-s` is the old spelling.
    #[arg(long = "duration", alias = "duration-s", value_name = "DURATION", default_value = "10s", value_parser = parse_duration_s)]
    pub duration_s: f64,
    /// Bytes per value (at least 8: the counter).
    #[arg(long, alias = "size", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(8..=ckpt_proto::UPDATE_BYTES_MAX))]
    pub value_size: u64,
    /// Update mode of the checkpoint, if the bench creates it.
    #[arg(long, value_enum, default_value_t = Mode::Active)]
    pub mode: Mode,
    /// Add CL_CKPT_WR_ALL_SAFE.
    #[arg(long)]
    pub all_safe: bool,
    /// What each client does: `write` its section, or `open` (create,
    /// close and delete checkpoints named `<checkpoint>-o<client>-<n>`).
    #[arg(long, value_enum, default_value_t = BenchOp::Write)]
    pub op: BenchOp,
    /// Each client does R reads of its own section, then W writes of it,
    /// over and over (e.g. `9:1`); every read is checked against the
    /// client's last acknowledged write. `--mix 1:0` is `--op read`. Not
    /// with `--op open`.
    #[arg(long, value_name = "R:W", value_parser = parse_mix, conflicts_with = "op")]
    pub mix: Option<(u32, u32)>,
    /// With `--op fill`: stop after this many checkpoints (default: run
    /// until `--duration` ends).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub total: Option<u64>,
    /// With `--op fill`: sections per checkpoint.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub sections: u32,
    /// The server's process ids (comma-separated; a cluster's or etcd's
    /// every node): their CPU time (user + system, from /proc) during the
    /// timed phase is reported per operation, which, on a machine the
    /// bench shares with the server, says more than ops/s alone.
    #[arg(long, value_name = "PID,...", value_parser = parse_pids)]
    pub server_pid: Option<Pids>,
    /// The server's admin address (`--admin-listen`): its
    /// `ckpt_request_stage_seconds` are read before and after the timed
    /// phase, and the report says where the requests' time went, hop by
    /// hop (mean per request: read → task, writer queue, log write and
    /// apply, wait for the fsync, fsync, answer, task wake-up, socket).
    #[arg(long, value_name = "HOST:PORT")]
    pub server_metrics: Option<String>,
    /// Threads the bench's clients run on (0: one per CPU core).
    /// `redis-benchmark` runs on one unless told otherwise; on a machine
    /// shared with the server, one leaves the server the other cores.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=1024))]
    pub threads: u16,
    /// The checkpoint to write. Default: a new `bench-<run>` of this run's
    /// own. A name that exists must be one an earlier bench created (kept
    /// with --keep or --record) with the same mode and room for the
    /// clients' sections; any other checkpoint is refused, never written.
    #[arg(long, value_parser = parse_name)]
    pub checkpoint: Option<CheckpointName>,
    /// Keep the checkpoints this run created (default: removed at the end).
    #[arg(long)]
    pub keep: bool,
    /// Spread the clients over K checkpoints named `<checkpoint>-0` ..
    /// `<checkpoint>-<K-1>` (client i writes checkpoint i % K), so a
    /// cluster's active replicas on every node get load. 1 = the one
    /// checkpoint `<checkpoint>`. With --target etcd: K key prefixes.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub checkpoints: u32,
    /// After losing its connection, a client keeps reconnecting to
    /// --addr's nodes for up to this many seconds and resends its
    /// unanswered write (same request id: applied at most once); then it
    /// stops. 0 = stop at once. Default: 0 with one address, 10 with a
    /// list. With --target etcd: how long a client retries its endpoint.
    /// A duration (10s, 2m); `--reconnect-s` is the old spelling.
    #[arg(long = "reconnect", alias = "reconnect-s", value_name = "DURATION", value_parser = parse_reconnect_s)]
    pub reconnect_s: Option<f64>,
    /// The system to load.
    #[arg(long, value_enum, default_value_t = BenchTarget::Ckpt)]
    pub target: BenchTarget,
    /// With --target etcd: the etcd client URLs' host:port, comma-separated
    /// (client i uses endpoint i % count).
    #[arg(long, value_name = "LIST", required_if_eq("target", "etcd"))]
    pub endpoints: Option<String>,
    /// Append `CHECKPOINT SECTION COUNTER SIZE` for every acknowledged write to
    /// FILE, each line written to the file before the next write is sent.
    /// Implies --keep: `check-acked FILE` reads the checkpoints back.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `check-acked`.
#[derive(Debug, Args)]
pub struct CheckAckedArgs {
    /// A file written by `bench --record`.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Print the counts and problems as JSON.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ckpt-tool").chain(args.iter().copied()))
    }

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn create_defaults() {
        let cli = parse(&["create", "app"]).unwrap();
        if std::env::var_os("CKPT_ADDR").is_none() {
            assert_eq!(cli.addr, DEFAULT_ADDR);
        }
        let Command::Create(args) = cli.command else {
            panic!("not create")
        };
        assert_eq!(args.name.name.as_bytes(), b"app");
        assert_eq!(
            (args.max_sections, args.max_section_size, args.size),
            (1, 1024 * 1024, None)
        );
        assert_eq!(args.max_section_id_size, 64);
        assert_eq!(args.retention_duration_ns(), TIME_END);
        assert_eq!(args.mode, Mode::Active);
        assert!(!args.all_safe && !args.collocated && !args.distributed);
    }

    #[test]
    fn create_flags() {
        let cli = parse(&[
            "create",
            "app",
            "--addr",
            "10.0.0.1:1",
            "--max-sections",
            "4",
            "--size",
            "100",
            "--retention-ns",
            "5",
            "--mode",
            "all-replicas",
            "--all-safe",
            "--collocated",
            "--distributed",
        ])
        .unwrap();
        assert_eq!(cli.addr, "10.0.0.1:1");
        let Command::Create(args) = cli.command else {
            panic!("not create")
        };
        assert_eq!(
            (args.max_sections, args.size, args.retention_duration_ns()),
            (4, Some(100), 5)
        );
        assert_eq!(args.mode, Mode::AllReplicas);
        assert!(args.all_safe && args.collocated && args.distributed);
        assert!(parse(&["create", "app", "--retention-ns", "-1"]).is_err());
        let Command::Create(args) = parse(&["create", "app", "--retention", "1h30m"])
            .unwrap()
            .command
        else {
            panic!("not create")
        };
        assert_eq!(args.retention_duration_ns(), 5_400_000_000_000);
        assert!(parse(&["create", "app", "--retention", "5m", "--retention-ns", "5"]).is_err());
        assert!(parse(&["create", "app", "--retention", "soon"]).is_err());
        assert!(parse(&["create", "app", "--mode", "eventual"]).is_err());
        assert!(parse(&["create", ""]).is_err());
        assert!(parse(&["create", &"x".repeat(257)]).is_err());
    }

    #[test]
    fn sections_are_named_by_id_or_default_flag() {
        let Command::Write(args) = parse(&["write", "app", "s1", "--offset", "3"])
            .unwrap()
            .command
        else {
            panic!("not write")
        };
        assert_eq!(args.section.section_id(), SectionId::new("s1"));
        assert_eq!(args.offset, 3);
        assert!(!args.overwrite);

        let Command::Read(args) = parse(&["read", "app", "--default-section", "--size", "8"])
            .unwrap()
            .command
        else {
            panic!("not read")
        };
        assert!(args.section.section_id().is_default());
        assert_eq!(args.size, Some(8));

        // The ID left out: the default section, resolved against the
        // checkpoint when the command runs.
        let Command::SectionRm(args) = parse(&["section-rm", "app"]).unwrap().command else {
            panic!("not section-rm")
        };
        assert!(args.section.left_out() && args.section.section_id().is_default());
        assert!(parse(&["section-rm", "app", "s1", "--default-section"]).is_err());
        // --overwrite replaces the whole section: no offset.
        assert!(parse(&["write", "app", "s1", "--overwrite", "--offset", "2"]).is_err());
        assert!(parse(&["write", "app", "s1", "--overwrite"]).is_ok());
    }

    #[test]
    fn section_create_takes_an_id_or_generated() {
        let Command::SectionCreate(args) = parse(&["section-create", "app", "--generated"])
            .unwrap()
            .command
        else {
            panic!("not section-create")
        };
        assert!(args.generated && args.id.is_none());
        assert!(parse(&["section-create", "app"]).is_err());
        assert!(parse(&["section-create", "app", "s", "--generated"]).is_err());
    }

    #[test]
    fn json_flags() {
        assert!(matches!(
            parse(&["ls", "--json"]).unwrap().command,
            Command::Ls(LsArgs { json: true, .. })
        ));
        assert!(matches!(
            parse(&["stat", "a", "--json"]).unwrap().command,
            Command::Stat(StatArgs { json: true, .. })
        ));
        assert!(matches!(
            parse(&["sections", "a", "--json"]).unwrap().command,
            Command::Sections(SectionsArgs { json: true, .. })
        ));
        assert!(parse(&["rm", "a", "--json"]).is_ok());
        assert!(parse(&["create", "a", "--json"]).is_ok());
        assert!(parse(&["read", "a", "--json"]).is_ok());
    }

    #[test]
    fn bench_defaults_and_bounds() {
        let Command::Bench(args) = parse(&["bench"]).unwrap().command else {
            panic!("not bench")
        };
        assert_eq!(
            (args.clients, args.duration_s, args.value_size),
            (16, 10.0, 1024)
        );
        assert_eq!(args.mode, Mode::Active);
        assert_eq!(args.threads, 0, "one thread per core unless told");
        let Command::Bench(one) = parse(&["bench", "--threads", "1"]).unwrap().command else {
            panic!("not bench")
        };
        assert_eq!(one.threads, 1);
        assert!(parse(&["bench", "--threads", "1025"]).is_err());
        assert!(args.checkpoint.is_none());
        assert!(args.record.is_none() && !args.json && !args.all_safe && !args.keep);

        let Command::Bench(args) = parse(&[
            "bench",
            "--clients",
            "2",
            "--duration-s",
            "0.5",
            "--value-size",
            "8",
            "--mode",
            "active-weak",
            "--record",
            "/tmp/r",
            "--json",
            "--checkpoint",
            "b2",
            "--keep",
        ])
        .unwrap()
        .command
        else {
            panic!("not bench")
        };
        assert_eq!(
            args.checkpoint.as_ref().map(|c| c.as_bytes()),
            Some(&b"b2"[..])
        );
        assert!(args.keep);
        assert_eq!(
            (args.clients, args.duration_s, args.value_size),
            (2, 0.5, 8)
        );
        assert_eq!(args.mode, Mode::ActiveWeak);
        assert_eq!(args.record.as_deref(), Some(std::path::Path::new("/tmp/r")));
        assert!(parse(&["bench", "--value-size", "7"]).is_err());
        assert!(parse(&["bench", "--clients", "0"]).is_err());
        assert!(parse(&["bench", "--duration-s", "0"]).is_err());
        assert!(parse(&["bench", "--duration-s", "nan"]).is_err());
        let Command::Bench(args) = parse(&["bench", "--duration", "1m30s", "--reconnect", "500ms"])
            .unwrap()
            .command
        else {
            panic!("not bench")
        };
        assert_eq!((args.duration_s, args.reconnect_s), (90.0, Some(0.5)));
    }

    #[test]
    fn operator_commands() {
        let Command::Dump(args) = parse(&["dump", "a", "b", "-o", "f"]).unwrap().command else {
            panic!("not dump")
        };
        assert_eq!(args.names.len(), 2);
        assert!(!args.all && args.data_dir.is_none());
        assert!(parse(&["dump", "--all", "-o", "f", "--data-dir", "d"]).is_ok());
        assert!(parse(&["dump", "-o", "f"]).is_err());
        assert!(parse(&["dump", "a", "--all", "-o", "f"]).is_err());
        assert!(parse(&["dump", "a"]).is_err());
        let Command::Restore(args) = parse(&[
            "restore",
            "f",
            "--rename",
            "a=b",
            "--rename",
            "c=d",
            "--replace",
        ])
        .unwrap()
        .command
        else {
            panic!("not restore")
        };
        assert_eq!(args.rename.len(), 2);
        assert_eq!(args.rename[0].1.as_bytes(), b"b");
        assert!(args.replace);
        assert!(parse(&["restore", "f", "--rename", "ab"]).is_err());
        let Command::Restore(args) = parse(&["restore", "f", "x", "y"]).unwrap().command else {
            panic!("not restore")
        };
        assert_eq!(args.names.len(), 2);
        assert!(parse(&["restore", "f", "--rename", "=b"]).is_err());
        assert!(parse(&["verify", "f"]).is_ok());
        assert!(parse(&["verify", "--data-dir", "d"]).is_ok());
        assert!(parse(&["verify"]).is_err());
        assert!(parse(&["verify", "f", "--data-dir", "d"]).is_err());
        assert!(parse(&[
            "wal",
            "--data-dir",
            "d",
            "--from",
            "3",
            "--checkpoint",
            "x",
            "--json"
        ])
        .is_ok());
        assert!(parse(&["wal"]).is_err());
        assert!(parse(&["salvage", "--data-dir", "d", "--dry-run"]).is_ok());
        assert!(parse(&["ls", "--data-dir", "d", "--json"]).is_ok());
        assert!(parse(&["stat", "x", "--data-dir", "d"]).is_ok());
    }

    #[test]
    fn retention_parsing() {
        assert_eq!(parse_retention("forever"), Ok(TIME_END));
        assert_eq!(parse_retention("0"), Ok(0));
        assert_eq!(parse_retention("30s"), Ok(30_000_000_000));
        assert!(parse_retention("-5").is_err());
        assert!(parse_retention("soon").is_err());
        assert_eq!(parse_retention_ns("5"), Ok(5));
        assert_eq!(parse_retention_ns("forever"), Ok(TIME_END));
        assert_eq!(parse_expires_in("60"), Ok(60_000_000_000));
        assert_eq!(parse_expires_in("5m"), Ok(300_000_000_000));
    }
    #[test]
    fn cluster_commands_need_admin_or_config() {
        let Command::Cluster(ClusterCommand::Status(args)) =
            parse(&["cluster", "status", "--admin", "a:1,b:2", "--json"])
                .unwrap()
                .command
        else {
            panic!("not cluster status")
        };
        assert_eq!(args.target.admin.as_deref(), Some("a:1,b:2"));
        assert!(args.json);
        let Command::Cluster(ClusterCommand::Verify(args)) =
            parse(&["cluster", "verify", "--config", "c.toml"])
                .unwrap()
                .command
        else {
            panic!("not cluster verify")
        };
        assert_eq!(
            args.target.config.as_deref(),
            Some(std::path::Path::new("c.toml"))
        );
        assert!(parse(&["cluster", "verify"]).is_err());
        assert!(parse(&["cluster", "status", "--admin", "a:1", "--config", "c"]).is_err());
        assert!(parse(&["cluster"]).is_err());
    }

    #[test]
    fn bench_cluster_flags() {
        let Command::Bench(args) = parse(&[
            "bench",
            "--addr",
            "a:1,b:2",
            "--checkpoints",
            "12",
            "--clients",
            "64",
            "--size",
            "1024",
            "--mode",
            "all-safe",
            "--reconnect-s",
            "3",
        ])
        .unwrap()
        .command
        else {
            panic!("not bench")
        };
        assert_eq!(
            (args.checkpoints, args.clients, args.value_size),
            (12, 64, 1024)
        );
        assert_eq!(args.mode, Mode::AllSafe);
        assert_eq!(args.reconnect_s, Some(3.0));
        assert_eq!(args.target, BenchTarget::Ckpt);
        let Command::Bench(args) = parse(&["bench", "--mode", "weak"]).unwrap().command else {
            panic!("not bench")
        };
        assert_eq!(
            (args.mode, args.checkpoints, args.reconnect_s),
            (Mode::ActiveWeak, 1, None)
        );
        assert!(parse(&["bench", "--checkpoints", "0"]).is_err());
        assert!(parse(&["bench", "--reconnect-s", "-1"]).is_err());
        assert!(parse(&["bench", "--reconnect-s", "inf"]).is_err());
        // etcd needs its endpoints.
        assert!(parse(&["bench", "--target", "etcd"]).is_err());
        let Command::Bench(args) = parse(&["bench", "--target", "etcd", "--endpoints", "e:1,e:2"])
            .unwrap()
            .command
        else {
            panic!("not bench")
        };
        assert_eq!(args.endpoints.as_deref(), Some("e:1,e:2"));
        // create takes the same modes.
        let Command::Create(args) = parse(&["create", "x", "--mode", "all-safe"])
            .unwrap()
            .command
        else {
            panic!("not create")
        };
        assert_eq!(
            args.mode.flag(),
            CreationFlags::WR_ACTIVE_REPLICA | CreationFlags::WR_ALL_SAFE
        );
    }
}
