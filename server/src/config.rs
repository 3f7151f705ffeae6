//! Server configuration: defaults, then a TOML file, then `CKPT_*`
//! environment variables, then command-line flags; then `validate()`.
//!
//! Every setting is one [`Key`] of [`KEYS`]: its TOML name is the
//! [`Config`] field, its variable `CKPT_<NAME>` and its flag `--<name>`
//! (underscores as dashes). `docs/configuration.md` is the reference an
//! operator reads; a test compares it, the flags and the example
//! `ckpt.toml` with [`KEYS`] and [`Config::default`], so none of them can
//! drift from the code. Enumerated values are lowercase; the capitalized
//! spellings of earlier versions are still accepted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ckpt_replication::{ClusterConfig, NodeId};
use ckpt_storage::{RocksWalMode, StoreConfig};
use clap::Parser;
use serde::Deserialize;

/// Smallest per-connection queue bound: a few frames.
const QUEUE_BYTES_MIN: u64 = 64 * 1024;
/// Largest byte bound accepted for a queue or history (1 TiB: beyond it the
/// number is a typo, not a budget).
const QUEUE_BYTES_MAX: u64 = 1 << 40;
/// Most segments' worth of log kept as history.
const WAL_HISTORY_SEGMENTS_MAX: u64 = 8;

/// Most `worker_threads`: more is a typo, not a machine.
const WORKER_THREADS_MAX: usize = 1024;
/// Largest `connections_max`: a bound beyond it is a typo, not a budget.
const CONNECTIONS_MAX_MAX: usize = 1_000_000;
/// Largest interval or drain time accepted, ms (one hour).
const INTERVAL_MS_MAX: u64 = 3_600_000;

/// One setting as an operator meets it: the TOML key `name`, the variable
/// [`Key::env`] and the flag [`Key::flag`].
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// The TOML key (and [`Config`] field).
    pub name: &'static str,
    /// Whether the TOML file may set it (a few exist only on the command
    /// line and in the environment).
    pub in_file: bool,
    /// What the number counts: `bytes`, `ms`, ... ("" when not a number).
    pub unit: &'static str,
    /// The values accepted.
    pub allowed: &'static str,
    /// What it sets.
    pub about: &'static str,
}

impl Key {
    /// `CKPT_<NAME>`.
    pub fn env(&self) -> String {
        format!("CKPT_{}", self.name.to_ascii_uppercase())
    }

    /// `--<name>` with dashes.
    pub fn flag(&self) -> String {
        format!("--{}", self.name.replace('_', "-"))
    }
}

/// Every setting of the server, in the order of `docs/configuration.md`.
pub const KEYS: &[Key] = &[
    Key {
        name: "config",
        in_file: false,
        unit: "path",
        allowed: "a readable TOML file",
        about: "The configuration file; its keys are the ones below (and a cluster's `[[nodes]]`).",
    },
    Key {
        name: "data_dir",
        in_file: true,
        unit: "path",
        allowed: "a directory",
        about: "Where the store keeps its log and RocksDB files.",
    },
    Key {
        name: "create_data_dir",
        in_file: true,
        unit: "",
        allowed: "`true`, `false`",
        about: "Create `data_dir` with all its missing parents. Without it a missing `data_dir` is created only when its parent exists, so a mistyped path does not start an empty node.",
    },
    Key {
        name: "listen",
        in_file: true,
        unit: "IP:PORT",
        allowed: "a socket address; port 0 picks a free port",
        about: "The client API address.",
    },
    Key {
        name: "admin_listen",
        in_file: true,
        unit: "IP:PORT",
        allowed: "a socket address; port 0 picks a free port",
        about: "The admin HTTP address (`/metrics`, `/health`, `/config`).",
    },
    Key {
        name: "frame_body_bytes_max",
        in_file: true,
        unit: "bytes",
        allowed: "4096 ..= 4294967295",
        about: "Largest frame body accepted from a client.",
    },
    Key {
        name: "in_flight_max",
        in_file: true,
        unit: "requests",
        allowed: "1 ..= 65536",
        about: "Requests one connection may have in flight.",
    },
    Key {
        name: "connections_max",
        in_file: true,
        unit: "connections",
        allowed: "1 ..= 1000000",
        about: "Client connections served at once; more are refused.",
    },
    Key {
        name: "reply_queue_bytes_max",
        in_file: true,
        unit: "bytes",
        allowed: "65536 ..= 1099511627776",
        about: "Reply bytes one connection may hold before its requests wait.",
    },
    Key {
        name: "notification_queue_bytes_max",
        in_file: true,
        unit: "bytes",
        allowed: "65536 ..= 1099511627776",
        about: "Notification bytes queued per connection before its subscriptions fall behind (then `Resync`).",
    },
    Key {
        name: "notification_history_bytes_max",
        in_file: true,
        unit: "bytes",
        allowed: "0 ..= 1099511627776",
        about: "Bytes of recent updates kept in memory, node-wide, for resuming subscribers.",
    },
    Key {
        name: "wal_history_bytes",
        in_file: true,
        unit: "bytes",
        allowed: "0 ..= 1099511627776 (at most 8 segments' worth is kept)",
        about: "Bytes of log segments kept after RocksDB covers them, for resuming subscribers.",
    },
    Key {
        name: "expiry_interval_ms",
        in_file: true,
        unit: "ms",
        allowed: "1 ..= 3600000",
        about: "How often due section expirations are applied.",
    },
    Key {
        name: "segment_bytes_max",
        in_file: true,
        unit: "bytes",
        allowed: "65536 ..= 1099511627776",
        about: "Size of a write-ahead log segment file.",
    },
    Key {
        name: "preallocate_segments",
        in_file: true,
        unit: "",
        allowed: "`true`, `false`",
        about: "Zero-fill and sync the next log segment ahead of time, so that a group commit's fdatasync overwrites blocks instead of growing the file (docs/storage.md, \"Preallocated segments\"); `false`: segments grow.",
    },
    Key {
        name: "rocksdb_wal_mode",
        in_file: true,
        unit: "",
        allowed: "`disabled`, `unsynced`",
        about: "RocksDB's own WAL: `disabled` (atomic flush before the log is trimmed) or `unsynced` (on, synced before the log is trimmed).",
    },
    Key {
        name: "reserve_bytes",
        in_file: true,
        unit: "bytes",
        allowed: "0 ..= 1099511627776",
        about: "Disk space kept back for deletes and recovery when the disk fills.",
    },
    Key {
        name: "shutdown_drain_ms",
        in_file: true,
        unit: "ms",
        allowed: "0 ..= 3600000",
        about: "How long shutdown waits for connections to write the replies of requests in flight.",
    },
    Key {
        name: "read_cache_bytes",
        in_file: true,
        unit: "bytes",
        allowed: "0 ..= 1099511627776",
        about: "Memory for whole sections of up to 64 KiB kept for reads (0: off); see docs/storage.md.",
    },
    Key {
        name: "worker_threads",
        in_file: true,
        unit: "threads",
        allowed: "0 ..= 1024",
        about: "Threads serving connections (0: one per CPU core). The log writer and fsync threads come on top.",
    },
    Key {
        name: "node_id",
        in_file: false,
        unit: "",
        allowed: "an id of the cluster file's `[[nodes]]`",
        about: "This node's id (cluster mode only).",
    },
    Key {
        name: "peer_via",
        in_file: false,
        unit: "",
        allowed: "`ID=IP:PORT`, comma-separated or repeated",
        about: "Reach peer ID at another address than its `peer_addr` (a proxy or NAT; cluster mode only).",
    },
    Key {
        name: "join",
        in_file: false,
        unit: "",
        allowed: "`true`, `false`",
        about: "Join a running cluster as a new member: wait for `ckpt-tool cluster add-node` instead of starting a new cluster from the file (cluster mode only; see docs/replication.md).",
    },
];

/// The names `rocksdb_wal_mode` takes (lowercase; any case is accepted,
/// as files of earlier versions say `Disabled` and `Unsynced`).
///
/// # Errors
/// Any other value, with the key and the allowed values named.
pub fn parse_wal_mode(text: &str) -> Result<RocksWalMode, String> {
    match text.to_ascii_lowercase().as_str() {
        "disabled" => Ok(RocksWalMode::Disabled),
        "unsynced" => Ok(RocksWalMode::Unsynced),
        _ => Err(format!(
            "rocksdb_wal_mode {text:?} is not one of: disabled, unsynced"
        )),
    }
}

/// The lowercase name of a RocksDB WAL mode.
pub fn wal_mode_name(mode: RocksWalMode) -> &'static str {
    match mode {
        RocksWalMode::Disabled => "disabled",
        RocksWalMode::Unsynced => "unsynced",
    }
}

/// Environment variables that name no setting: `CKPT_*` variables of other
/// programs are left alone, any other is most likely a misspelled setting.
const OTHER_ENV: &[&str] = &["CKPT_LOG", "CKPT_ADDR"];

/// The `CKPT_*` variables in `vars` that are no setting (a typo such as
/// `CKPT_CONECTIONS_MAX` would otherwise be silently ignored).
pub fn unknown_env<I: IntoIterator<Item = String>>(vars: I) -> Vec<String> {
    let known: Vec<String> = KEYS.iter().map(Key::env).collect();
    let mut unknown: Vec<String> = vars
        .into_iter()
        .filter(|name| name.starts_with("CKPT_"))
        .filter(|name| !known.contains(name) && !OTHER_ENV.contains(&name.as_str()))
        .filter(|name| !name.starts_with("CKPT_TEST_") && !name.starts_with("CKPT_BENCH_"))
        .collect();
    unknown.sort();
    unknown
}

/// `67108864 (64 MiB)`-style numbers of bytes for the reference.
fn bytes_text(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (size, unit) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{bytes} ({} {unit})", bytes / size);
        }
    }
    bytes.to_string()
}

/// The table of `docs/configuration.md`: one row per key, its default
/// taken from [`Config::default`].
pub fn reference_table() -> String {
    let defaults = Config::default().effective();
    let mut table = String::from(
        "| key (TOML) | environment | flag | default | unit | allowed values | what it sets |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for key in KEYS {
        let toml = if key.in_file {
            format!("`{}`", key.name)
        } else {
            "— (not in the file)".to_string()
        };
        let default = match defaults.get(key.name) {
            Some(serde_json::Value::String(text)) => format!("`{text}`"),
            Some(serde_json::Value::Number(n)) if key.unit == "bytes" => {
                bytes_text(n.as_u64().unwrap_or_default())
            }
            Some(serde_json::Value::Number(n)) => n.to_string(),
            Some(serde_json::Value::Bool(b)) => format!("`{b}`"),
            _ => "none".to_string(),
        };
        table.push_str(&format!(
            "| {toml} | `{}` | `{}` | {default} | {} | {} | {} |\n",
            key.env(),
            key.flag(),
            if key.unit.is_empty() { "—" } else { key.unit },
            key.allowed,
            key.about
        ));
    }
    table
}

/// Makes sure `dir` can be the data directory before the store opens it:
/// an existing directory is used as it is; a missing one is created when
/// its parent exists, or with all its parents when `create_all`
/// (`--create-data-dir`). Returns whether it was created.
///
/// # Errors
/// `dir` is not a directory, or it is missing along with its parent and
/// `create_all` is off (a mistyped path must not start an empty node), or
/// it cannot be created.
pub fn prepare_data_dir(dir: &Path, create_all: bool) -> Result<bool, ConfigError> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => return Ok(false),
        Ok(_) => {
            return Err(ConfigError(format!(
                "data_dir {} exists and is not a directory",
                dir.display()
            )))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(ConfigError(format!("data_dir {}: {error}", dir.display()))),
    }
    // "ckpt-data" has the parent "": the current directory, which exists.
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    let parent_exists = parent.is_none_or(Path::is_dir);
    if !parent_exists && !create_all {
        return Err(ConfigError(format!(
            "data_dir {} does not exist, and neither does its parent {}: check the path, or pass --create-data-dir (CKPT_CREATE_DATA_DIR=true) to create it",
            dir.display(),
            parent.map_or_else(String::new, |p| p.display().to_string())
        )));
    }
    let created = if create_all {
        std::fs::create_dir_all(dir)
    } else {
        std::fs::create_dir(dir)
    };
    created.map_err(|e| ConfigError(format!("data_dir {}: creating it: {e}", dir.display())))?;
    Ok(true)
}

/// Everything the server needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the store keeps its data (default `./ckpt-data`).
    pub data_dir: PathBuf,
    /// Create `data_dir` and its missing parents; otherwise a missing
    /// `data_dir` is created only when its parent exists.
    pub create_data_dir: bool,
    /// Client API address (default `127.0.0.1:7400`).
    pub listen: SocketAddr,
    /// Admin HTTP address for `/metrics` and `/health` (default `127.0.0.1:7401`).
    pub admin_listen: SocketAddr,
    /// Largest frame body accepted from a client, bytes.
    pub frame_body_bytes_max: u32,
    /// Requests one connection may have in flight.
    pub in_flight_max: u32,
    /// Connections served at once.
    pub connections_max: usize,
    /// Bytes of replies one connection may hold — being read for it, or
    /// encoded and not yet written to its socket. A client that does not
    /// read its answers stalls its own requests at this bound.
    pub reply_queue_bytes_max: u64,
    /// Bytes of notifications queued for one connection and not yet
    /// written. A subscriber that falls further behind stops getting
    /// updates and, once it has caught up, is told to re-read (`Resync`).
    pub notification_queue_bytes_max: u64,
    /// Bytes of recent updates kept in memory, node-wide, for subscribers
    /// that resume (older ones are read back from the log).
    pub notification_history_bytes_max: u64,
    /// Bytes of log segments kept after RocksDB covers them, so subscribers
    /// can resume from the log, across restarts too; at most 8 segments'
    /// worth is kept (the store forces RocksDB flushes at 16 segments).
    pub wal_history_bytes: u64,
    /// How often due section expirations are applied, ms.
    pub expiry_interval_ms: u64,
    /// WAL segment size, bytes.
    pub segment_bytes_max: u64,
    /// Whether the next log segment is zero-filled ahead of time.
    pub preallocate_segments: bool,
    /// RocksDB WAL strategy.
    pub rocksdb_wal_mode: RocksWalMode,
    /// Space kept back for deletes and recovery on a full disk, bytes.
    pub reserve_bytes: u64,
    /// At shutdown (SIGTERM, or a failed store), how long connections may
    /// take to write the replies of requests in flight, ms; after it the
    /// server exits anyway, so a client that does not read cannot keep it
    /// running (its unwritten replies are lost with the connection).
    pub shutdown_drain_ms: u64,
    /// Bytes of whole small sections kept in memory for reads (0: off).
    pub read_cache_bytes: u64,
    /// Threads serving connections; 0 is one per CPU core.
    pub worker_threads: usize,
    /// The configuration file read, if any.
    pub config_file: Option<PathBuf>,
    /// This node's cluster (the file's `[[nodes]]` and replication keys)
    /// and its id in it; `None` is the embedded single node.
    pub cluster: Option<(ClusterConfig, NodeId)>,
    /// Peers this node reaches at another address than their `peer_addr`
    /// (`--peer-via`): a proxy or NAT in between. Only the connections
    /// this node opens change; the cluster file stays the same everywhere.
    pub peer_via: BTreeMap<NodeId, SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./ckpt-data"),
            create_data_dir: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 7401)),
            frame_body_bytes_max: ckpt_proto::wire::FRAME_BODY_BYTES_MAX,
            in_flight_max: ckpt_proto::wire::IN_FLIGHT_MAX,
            connections_max: 4096,
            reply_queue_bytes_max: 16 * 1024 * 1024,
            notification_queue_bytes_max: 16 * 1024 * 1024,
            notification_history_bytes_max: 64 * 1024 * 1024,
            wal_history_bytes: 64 * 1024 * 1024,
            expiry_interval_ms: 100,
            segment_bytes_max: 64 * 1024 * 1024,
            preallocate_segments: true,
            rocksdb_wal_mode: RocksWalMode::Disabled,
            reserve_bytes: 64 * 1024 * 1024,
            shutdown_drain_ms: 10_000,
            read_cache_bytes: 64 * 1024 * 1024,
            worker_threads: 0,
            config_file: None,
            cluster: None,
            peer_via: BTreeMap::new(),
        }
    }
}

/// The TOML file: every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    create_data_dir: Option<bool>,
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    frame_body_bytes_max: Option<u32>,
    in_flight_max: Option<u32>,
    connections_max: Option<usize>,
    reply_queue_bytes_max: Option<u64>,
    notification_queue_bytes_max: Option<u64>,
    notification_history_bytes_max: Option<u64>,
    wal_history_bytes: Option<u64>,
    expiry_interval_ms: Option<u64>,
    segment_bytes_max: Option<u64>,
    preallocate_segments: Option<bool>,
    /// Parsed by [`parse_wal_mode`] (any case).
    rocksdb_wal_mode: Option<String>,
    reserve_bytes: Option<u64>,
    shutdown_drain_ms: Option<u64>,
    read_cache_bytes: Option<u64>,
    worker_threads: Option<usize>,
}

/// The keys of [`FileConfig`]: in a cluster file, these are the server's
/// and every other key is the cluster's.
const SERVER_KEYS: &[&str] = &[
    "data_dir",
    "create_data_dir",
    "listen",
    "admin_listen",
    "frame_body_bytes_max",
    "in_flight_max",
    "connections_max",
    "reply_queue_bytes_max",
    "notification_queue_bytes_max",
    "notification_history_bytes_max",
    "wal_history_bytes",
    "expiry_interval_ms",
    "segment_bytes_max",
    "preallocate_segments",
    "rocksdb_wal_mode",
    "reserve_bytes",
    "shutdown_drain_ms",
    "read_cache_bytes",
    "worker_threads",
];

/// `ckpt-server [--config FILE] [--data-dir DIR] [--listen ADDR] [--admin-listen ADDR]`
#[derive(Debug, Parser)]
#[command(
    name = "ckpt-server",
    version,
    about = "Persistent checkpoint service (SA Forum / OpenClovis checkpoint API)"
)]
pub struct Cli {
    /// TOML configuration file.
    #[arg(long, env = "CKPT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory [default: ./ckpt-data].
    #[arg(long, env = "CKPT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Create the data directory and its missing parents (without it, a
    /// missing data directory is created only when its parent exists).
    #[arg(long, env = "CKPT_CREATE_DATA_DIR")]
    pub create_data_dir: bool,
    /// Client API listen address [default: 127.0.0.1:7400].
    #[arg(long, env = "CKPT_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Admin (metrics, health) listen address [default: 127.0.0.1:7401].
    #[arg(long, env = "CKPT_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Requests in flight per connection.
    #[arg(long, env = "CKPT_IN_FLIGHT_MAX")]
    pub in_flight_max: Option<u32>,
    /// Largest frame body, bytes.
    #[arg(long, env = "CKPT_FRAME_BODY_BYTES_MAX")]
    pub frame_body_bytes_max: Option<u32>,
    /// Reply bytes one connection may hold before its requests wait.
    #[arg(long, env = "CKPT_REPLY_QUEUE_BYTES_MAX")]
    pub reply_queue_bytes_max: Option<u64>,
    /// Notification bytes queued per connection before its subscriptions
    /// fall behind (then Resync).
    #[arg(long, env = "CKPT_NOTIFICATION_QUEUE_BYTES_MAX")]
    pub notification_queue_bytes_max: Option<u64>,
    /// Bytes of recent updates kept in memory, node-wide, for resuming subscribers.
    #[arg(long, env = "CKPT_NOTIFICATION_HISTORY_BYTES_MAX")]
    pub notification_history_bytes_max: Option<u64>,
    /// Bytes of covered log segments kept for resuming subscribers (0: trim at once).
    #[arg(long, env = "CKPT_WAL_HISTORY_BYTES")]
    pub wal_history_bytes: Option<u64>,
    /// How long shutdown waits for replies to be written, ms.
    #[arg(long, env = "CKPT_SHUTDOWN_DRAIN_MS")]
    pub shutdown_drain_ms: Option<u64>,
    /// Client connections served at once [default: 4096].
    #[arg(long, env = "CKPT_CONNECTIONS_MAX")]
    pub connections_max: Option<usize>,
    /// How often due section expirations are applied, ms [default: 100].
    #[arg(long, env = "CKPT_EXPIRY_INTERVAL_MS")]
    pub expiry_interval_ms: Option<u64>,
    /// Write-ahead log segment size, bytes [default: 64 MiB].
    #[arg(long, env = "CKPT_SEGMENT_BYTES_MAX")]
    pub segment_bytes_max: Option<u64>,
    /// Zero-fill the next log segment ahead of time: true or false [default: true].
    #[arg(long, env = "CKPT_PREALLOCATE_SEGMENTS", value_name = "BOOL")]
    pub preallocate_segments: Option<bool>,
    /// RocksDB's own WAL: disabled or unsynced [default: disabled].
    #[arg(long, env = "CKPT_ROCKSDB_WAL_MODE", value_name = "MODE", value_parser = parse_wal_mode)]
    pub rocksdb_wal_mode: Option<RocksWalMode>,
    /// Disk space kept back for deletes and recovery, bytes [default: 64 MiB].
    #[arg(long, env = "CKPT_RESERVE_BYTES")]
    pub reserve_bytes: Option<u64>,
    /// Memory for small sections kept for reads, bytes (0: off) [default: 64 MiB].
    #[arg(long, env = "CKPT_READ_CACHE_BYTES")]
    pub read_cache_bytes: Option<u64>,
    /// Threads serving connections (0: one per CPU core) [default: 0].
    #[arg(long, env = "CKPT_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// This node's id in the cluster file's `[[nodes]]` (cluster mode only).
    #[arg(long, env = "CKPT_NODE_ID")]
    pub node_id: Option<NodeId>,
    /// Connect to node ID at IP:PORT instead of its peer_addr from the
    /// cluster file (a proxy or NAT in between; cluster mode only).
    /// Repeatable, or comma-separated.
    #[arg(
        long,
        env = "CKPT_PEER_VIA",
        value_name = "ID=IP:PORT",
        value_delimiter = ','
    )]
    pub peer_via: Vec<String>,
    /// Join a running cluster as a new member (cluster mode only): the
    /// Raft log starts empty and waits for `ckpt-tool cluster add-node`.
    #[arg(long, env = "CKPT_JOIN")]
    pub join: bool,
}

/// The `--peer-via ID=IP:PORT` values of node `me` of `cluster`: each a
/// peer (not `me`) of the file, at most once.
fn peer_via(
    values: &[String],
    cluster: &ClusterConfig,
    me: NodeId,
) -> Result<BTreeMap<NodeId, SocketAddr>, ConfigError> {
    let mut via = BTreeMap::new();
    for value in values {
        let bad = |why: String| ConfigError(format!("--peer-via {value}: {why}"));
        let (id, addr) = value
            .split_once('=')
            .ok_or_else(|| bad("expected ID=IP:PORT".into()))?;
        let id: NodeId = id
            .trim()
            .parse()
            .map_err(|_| bad(format!("{id:?} is not a node id")))?;
        let addr: SocketAddr = addr
            .trim()
            .parse()
            .map_err(|e| bad(format!("{addr:?} is not an IP:PORT address ({e})")))?;
        if id == me {
            return Err(bad(format!(
                "node {id} is this node (--node-id); a node does not connect to itself"
            )));
        }
        if cluster.node(id).is_none() {
            return Err(bad(format!(
                "no [[nodes]] entry with id = {id} in the cluster file (ids: {:?})",
                cluster.node_ids()
            )));
        }
        if via.insert(id, addr).is_some() {
            return Err(bad(format!("node {id} is given more than once")));
        }
    }
    Ok(via)
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Builds the configuration from the command line, the environment and
    /// the file they name.
    ///
    /// # Errors
    /// An unreadable or invalid file, or invalid values.
    pub fn load(cli: &Cli) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        let mut cluster = None;
        if let Some(path) = &cli.config {
            cluster = config.apply_file(path)?;
            config.config_file = Some(path.clone());
        }
        match (cluster, cli.node_id) {
            (Some(cluster), Some(id)) => {
                let node = cluster.node(id).ok_or_else(|| {
                    ConfigError(format!(
                        "--node-id {id}: no [[nodes]] entry with id = {id} in the cluster file (ids: {:?})",
                        cluster.node_ids()
                    ))
                })?;
                if cli.listen.is_some() || cli.admin_listen.is_some() {
                    return Err(ConfigError(
                        "--listen/--admin-listen: a cluster node listens on its client_addr and admin_addr from the cluster file".into(),
                    ));
                }
                config.listen = node.client_addr;
                config.admin_listen = node.admin_addr;
                config.peer_via = peer_via(&cli.peer_via, &cluster, id)?;
                let mut cluster = cluster;
                cluster.join = cli.join;
                config.cluster = Some((cluster, id));
            }
            (Some(_), None) => {
                return Err(ConfigError(
                    "--node-id: the configuration file describes a cluster ([[nodes]]); say which node this is".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError(
                    "--node-id: given without a cluster file (--config with [[nodes]])".into(),
                ))
            }
            (None, None) => {
                if cli.join {
                    return Err(ConfigError(
                        "--join: given without a cluster file (--config with [[nodes]])".into(),
                    ));
                }
                if !cli.peer_via.is_empty() {
                    return Err(ConfigError(
                        "--peer-via: given without a cluster file (--config with [[nodes]])"
                            .into(),
                    ));
                }
            }
        }
        if let Some(v) = &cli.data_dir {
            config.data_dir = v.clone();
        }
        if cli.create_data_dir {
            config.create_data_dir = true;
        }
        if let Some(v) = cli.listen {
            config.listen = v;
        }
        if let Some(v) = cli.admin_listen {
            config.admin_listen = v;
        }
        if let Some(v) = cli.in_flight_max {
            config.in_flight_max = v;
        }
        if let Some(v) = cli.frame_body_bytes_max {
            config.frame_body_bytes_max = v;
        }
        if let Some(v) = cli.reply_queue_bytes_max {
            config.reply_queue_bytes_max = v;
        }
        if let Some(v) = cli.notification_queue_bytes_max {
            config.notification_queue_bytes_max = v;
        }
        if let Some(v) = cli.notification_history_bytes_max {
            config.notification_history_bytes_max = v;
        }
        if let Some(v) = cli.wal_history_bytes {
            config.wal_history_bytes = v;
        }
        if let Some(v) = cli.shutdown_drain_ms {
            config.shutdown_drain_ms = v;
        }
        if let Some(v) = cli.connections_max {
            config.connections_max = v;
        }
        if let Some(v) = cli.expiry_interval_ms {
            config.expiry_interval_ms = v;
        }
        if let Some(v) = cli.segment_bytes_max {
            config.segment_bytes_max = v;
        }
        if let Some(v) = cli.preallocate_segments {
            config.preallocate_segments = v;
        }
        if let Some(v) = cli.rocksdb_wal_mode {
            config.rocksdb_wal_mode = v;
        }
        if let Some(v) = cli.reserve_bytes {
            config.reserve_bytes = v;
        }
        if let Some(v) = cli.read_cache_bytes {
            config.read_cache_bytes = v;
        }
        if let Some(v) = cli.worker_threads {
            config.worker_threads = v;
        }
        config.validate()?;
        Ok(config)
    }

    /// Applies the server keys of the file; returns its cluster when it
    /// has `[[nodes]]` (every other key then belongs to the cluster).
    fn apply_file(&mut self, path: &Path) -> Result<Option<ClusterConfig>, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        let mut table: toml::Table =
            toml::from_str(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        let cluster = if table.contains_key("nodes") {
            let mut server = toml::Table::new();
            for key in SERVER_KEYS {
                if let Some(value) = table.remove(*key) {
                    server.insert(key.to_string(), value);
                }
            }
            let cluster_text = toml::to_string(&table)
                .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
            let cluster = ClusterConfig::parse(&cluster_text)
                .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
            table = server;
            Some(cluster)
        } else {
            None
        };
        let mut file: FileConfig = table
            .try_into()
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        if let Some(text) = file.rocksdb_wal_mode.take() {
            self.rocksdb_wal_mode = parse_wal_mode(&text)
                .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        }
        macro_rules! take {
            ($($field:ident),*) => { $( if let Some(v) = file.$field { self.$field = v; } )* };
        }
        take!(
            data_dir,
            create_data_dir,
            listen,
            admin_listen,
            frame_body_bytes_max,
            in_flight_max,
            connections_max,
            reply_queue_bytes_max,
            notification_queue_bytes_max,
            notification_history_bytes_max,
            wal_history_bytes,
            expiry_interval_ms,
            segment_bytes_max,
            preallocate_segments,
            reserve_bytes,
            shutdown_drain_ms,
            read_cache_bytes,
            worker_threads
        );
        Ok(cluster)
    }

    /// Checks bounds.
    ///
    /// # Errors
    /// The first value out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.in_flight_max == 0 || self.in_flight_max > 65_536 {
            return Err(ConfigError(format!(
                "in_flight_max {} is not in 1..=65536",
                self.in_flight_max
            )));
        }
        if self.frame_body_bytes_max < 4096 {
            return Err(ConfigError(format!(
                "frame_body_bytes_max {} is below 4096",
                self.frame_body_bytes_max
            )));
        }
        if !(1..=CONNECTIONS_MAX_MAX).contains(&self.connections_max) {
            return Err(ConfigError(format!(
                "connections_max {} is not in 1..={CONNECTIONS_MAX_MAX}",
                self.connections_max
            )));
        }
        if !(1..=INTERVAL_MS_MAX).contains(&self.expiry_interval_ms) {
            return Err(ConfigError(format!(
                "expiry_interval_ms {} is not in 1..={INTERVAL_MS_MAX}",
                self.expiry_interval_ms
            )));
        }
        if self.shutdown_drain_ms > INTERVAL_MS_MAX {
            return Err(ConfigError(format!(
                "shutdown_drain_ms {} is over {INTERVAL_MS_MAX}",
                self.shutdown_drain_ms
            )));
        }
        if !(QUEUE_BYTES_MIN..=QUEUE_BYTES_MAX).contains(&self.segment_bytes_max) {
            return Err(ConfigError(format!(
                "segment_bytes_max {} is not in {QUEUE_BYTES_MIN}..={QUEUE_BYTES_MAX}",
                self.segment_bytes_max
            )));
        }
        // Byte amounts where 0 is allowed (nothing kept).
        for (name, value) in [
            ("reserve_bytes", self.reserve_bytes),
            ("read_cache_bytes", self.read_cache_bytes),
            (
                "notification_history_bytes_max",
                self.notification_history_bytes_max,
            ),
            ("wal_history_bytes", self.wal_history_bytes),
        ] {
            if value > QUEUE_BYTES_MAX {
                return Err(ConfigError(format!(
                    "{name} {value} is over {QUEUE_BYTES_MAX}"
                )));
            }
        }
        if self.worker_threads > WORKER_THREADS_MAX {
            return Err(ConfigError(format!(
                "worker_threads {} is over {WORKER_THREADS_MAX}",
                self.worker_threads
            )));
        }
        for (name, value) in [
            ("reply_queue_bytes_max", self.reply_queue_bytes_max),
            (
                "notification_queue_bytes_max",
                self.notification_queue_bytes_max,
            ),
        ] {
            if !(QUEUE_BYTES_MIN..=QUEUE_BYTES_MAX).contains(&value) {
                return Err(ConfigError(format!(
                    "{name} {value} is not in {QUEUE_BYTES_MIN}..={QUEUE_BYTES_MAX}"
                )));
            }
        }
        if self.listen == self.admin_listen && self.listen.port() != 0 {
            return Err(ConfigError(format!(
                "listen and admin_listen are both {}",
                self.listen
            )));
        }
        Ok(())
    }

    /// The effective value of every setting, by TOML name (a path or
    /// address as text, numbers as numbers; `null` when unset), as logged
    /// at start and served at `/config`.
    pub fn effective(&self) -> serde_json::Map<String, serde_json::Value> {
        use serde_json::{json, Value};
        // Destructured in full: a new field does not compile until it is
        // given its place here (and so in KEYS and the reference).
        let Config {
            data_dir,
            create_data_dir,
            listen,
            admin_listen,
            frame_body_bytes_max,
            in_flight_max,
            connections_max,
            reply_queue_bytes_max,
            notification_queue_bytes_max,
            notification_history_bytes_max,
            wal_history_bytes,
            expiry_interval_ms,
            segment_bytes_max,
            preallocate_segments,
            rocksdb_wal_mode,
            reserve_bytes,
            shutdown_drain_ms,
            read_cache_bytes,
            worker_threads,
            config_file,
            cluster,
            peer_via,
        } = self;
        let peer_via: Vec<String> = peer_via
            .iter()
            .map(|(id, addr)| format!("{id}={addr}"))
            .collect();
        let mut values = serde_json::Map::new();
        for (name, value) in [
            (
                "config",
                config_file
                    .as_ref()
                    .map_or(Value::Null, |p| json!(p.display().to_string())),
            ),
            ("data_dir", json!(data_dir.display().to_string())),
            ("create_data_dir", json!(create_data_dir)),
            ("listen", json!(listen.to_string())),
            ("admin_listen", json!(admin_listen.to_string())),
            ("frame_body_bytes_max", json!(frame_body_bytes_max)),
            ("in_flight_max", json!(in_flight_max)),
            ("connections_max", json!(connections_max)),
            ("reply_queue_bytes_max", json!(reply_queue_bytes_max)),
            (
                "notification_queue_bytes_max",
                json!(notification_queue_bytes_max),
            ),
            (
                "notification_history_bytes_max",
                json!(notification_history_bytes_max),
            ),
            ("wal_history_bytes", json!(wal_history_bytes)),
            ("expiry_interval_ms", json!(expiry_interval_ms)),
            ("segment_bytes_max", json!(segment_bytes_max)),
            ("preallocate_segments", json!(preallocate_segments)),
            ("rocksdb_wal_mode", json!(wal_mode_name(*rocksdb_wal_mode))),
            ("reserve_bytes", json!(reserve_bytes)),
            ("shutdown_drain_ms", json!(shutdown_drain_ms)),
            ("read_cache_bytes", json!(read_cache_bytes)),
            ("worker_threads", json!(worker_threads)),
            (
                "node_id",
                cluster.as_ref().map_or(Value::Null, |(_, id)| json!(id)),
            ),
            (
                "peer_via",
                if peer_via.is_empty() {
                    Value::Null
                } else {
                    json!(peer_via.join(","))
                },
            ),
            ("join", json!(cluster.as_ref().is_some_and(|(c, _)| c.join))),
        ] {
            values.insert(name.to_string(), value);
        }
        values
    }

    /// The store's configuration.
    pub fn store(&self) -> StoreConfig {
        let mut store = StoreConfig::new(&self.data_dir);
        store.segment_bytes_max = self.segment_bytes_max;
        store.preallocate_segments = self.preallocate_segments;
        store.db.wal_mode = self.rocksdb_wal_mode;
        store.reserve_bytes = self.reserve_bytes;
        store.db.read_cache_bytes = self.read_cache_bytes;
        // Kept history counts towards the segments the store allows before
        // it forces RocksDB flushes; leave it half of them.
        store.wal_history_bytes = self.wal_history_bytes.min(
            self.segment_bytes_max
                .saturating_mul(WAL_HISTORY_SEGMENTS_MAX),
        );
        store
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::parse_from(std::iter::once("ckpt-server").chain(args.iter().copied()))
    }

    use clap::CommandFactory;

    fn workspace_file(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name)
    }

    const REFERENCE_BEGIN: &str = "<!-- keys: generated from KEYS in server/src/config.rs; CKPT_TEST_WRITE_REFERENCE=1 cargo test -p ckpt-server rewrites it -->\n";
    const REFERENCE_END: &str = "<!-- end of keys -->\n";

    /// docs/configuration.md holds exactly the table the code generates:
    /// a key added without its documentation (or a changed default) fails
    /// here.
    #[test]
    fn the_reference_lists_every_key_as_the_code_has_it() {
        let path = workspace_file("docs/configuration.md");
        let doc = std::fs::read_to_string(&path).unwrap();
        let begin = doc
            .find(REFERENCE_BEGIN)
            .expect("the generated-table marker")
            + REFERENCE_BEGIN.len();
        let end = doc[begin..].find(REFERENCE_END).expect("the end marker") + begin;
        let table = reference_table();
        if std::env::var_os("CKPT_TEST_WRITE_REFERENCE").is_some() {
            std::fs::write(&path, format!("{}{table}{}", &doc[..begin], &doc[end..])).unwrap();
            return;
        }
        assert_eq!(
            doc[begin..end],
            table,
            "docs/configuration.md is not what the code says (CKPT_TEST_WRITE_REFERENCE=1 rewrites it)"
        );
        for key in KEYS {
            assert!(table.contains(&format!("`{}`", key.env())), "{}", key.name);
        }
    }

    /// Every flag is a key and every key has its flag and its `CKPT_*`
    /// variable; the file takes exactly the keys marked `in_file`; the
    /// effective configuration names every key.
    #[test]
    fn every_key_has_its_flag_variable_and_file_entry() {
        let command = Cli::command();
        let mut flags = Vec::new();
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if ["help", "version"].contains(&long) {
                continue;
            }
            let key = KEYS
                .iter()
                .find(|k| k.flag() == format!("--{long}"))
                .unwrap_or_else(|| panic!("--{long} is not in KEYS (nor docs/configuration.md)"));
            assert_eq!(
                arg.get_env().and_then(|e| e.to_str()),
                Some(key.env().as_str()),
                "--{long} reads no or another variable"
            );
            flags.push(key.name);
        }
        for key in KEYS {
            assert!(flags.contains(&key.name), "{} has no flag", key.name);
        }
        let in_file: Vec<&str> = KEYS.iter().filter(|k| k.in_file).map(|k| k.name).collect();
        assert_eq!(SERVER_KEYS, in_file.as_slice());
        let effective: Vec<String> = Config::default().effective().keys().cloned().collect();
        let mut names: Vec<String> = KEYS.iter().map(|k| k.name.to_string()).collect();
        names.sort();
        let mut effective_sorted = effective.clone();
        effective_sorted.sort();
        assert_eq!(effective_sorted, names);
        // Every file key is accepted by the file parser.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("all.toml");
        let mut text = String::new();
        for (name, value) in Config::default().effective() {
            if in_file.contains(&name.as_str()) {
                text.push_str(&format!("{name} = {value}\n"));
            }
        }
        std::fs::write(&file, text).unwrap();
        let config = Config::load(&cli(&["--config", file.to_str().unwrap()])).unwrap();
        let mut expected = Config::default().effective();
        expected.insert(
            "config".into(),
            serde_json::json!(file.display().to_string()),
        );
        assert_eq!(config.effective(), expected);
    }

    /// The example `ckpt.toml` at the top of the repository lists every
    /// file key, commented out at its default: uncommented it parses to
    /// the defaults.
    #[test]
    fn the_example_file_has_every_key_at_its_default() {
        let example = std::fs::read_to_string(workspace_file("ckpt.toml")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ckpt.toml");
        // As shipped (everything commented out) it is valid too.
        std::fs::write(&file, &example).unwrap();
        Config::load(&cli(&["--config", file.to_str().unwrap()])).unwrap();
        let mut uncommented = String::new();
        for line in example.lines() {
            if let Some(setting) = line.strip_prefix("# ") {
                if let Some((name, _)) = setting.split_once(" = ") {
                    if SERVER_KEYS.contains(&name) {
                        uncommented.push_str(setting);
                        uncommented.push('\n');
                    }
                }
            }
        }
        for key in SERVER_KEYS {
            assert!(
                uncommented.contains(&format!("{key} = ")),
                "ckpt.toml does not show {key}"
            );
        }
        std::fs::write(&file, &uncommented).unwrap();
        let config = Config::load(&cli(&["--config", file.to_str().unwrap()])).unwrap();
        let mut expected = Config::default().effective();
        expected.insert(
            "config".into(),
            serde_json::json!(file.display().to_string()),
        );
        assert_eq!(
            config.effective(),
            expected,
            "ckpt.toml's values are not the defaults"
        );
    }

    #[test]
    fn wal_modes_are_lowercase_and_old_spellings_still_work() {
        for (text, mode) in [
            ("disabled", RocksWalMode::Disabled),
            ("unsynced", RocksWalMode::Unsynced),
            ("Disabled", RocksWalMode::Disabled),
            ("Unsynced", RocksWalMode::Unsynced),
            ("UNSYNCED", RocksWalMode::Unsynced),
        ] {
            assert_eq!(parse_wal_mode(text), Ok(mode));
            assert_eq!(parse_wal_mode(wal_mode_name(mode)), Ok(mode));
        }
        let error = parse_wal_mode("bogus").unwrap_err();
        assert!(
            error.contains("rocksdb_wal_mode") && error.contains("disabled, unsynced"),
            "{error}"
        );
        let error =
            Cli::try_parse_from(["ckpt-server", "--rocksdb-wal-mode", "bogus"]).unwrap_err();
        assert!(error.to_string().contains("rocksdb_wal_mode"), "{error}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ckpt.toml");
        std::fs::write(&file, "rocksdb_wal_mode = \"sometimes\"\n").unwrap();
        let error = Config::load(&cli(&["--config", file.to_str().unwrap()])).unwrap_err();
        assert!(error.0.contains("rocksdb_wal_mode"), "{error}");
    }

    #[test]
    fn every_bound_names_its_key() {
        for (flag, value, key) in [
            ("--connections-max", "0", "connections_max"),
            ("--connections-max", "1000001", "connections_max"),
            ("--expiry-interval-ms", "0", "expiry_interval_ms"),
            ("--shutdown-drain-ms", "3600001", "shutdown_drain_ms"),
            ("--segment-bytes-max", "1000", "segment_bytes_max"),
            ("--reserve-bytes", "2000000000000", "reserve_bytes"),
            ("--frame-body-bytes-max", "100", "frame_body_bytes_max"),
            ("--read-cache-bytes", "2000000000000", "read_cache_bytes"),
            ("--worker-threads", "1025", "worker_threads"),
        ] {
            let error = Config::load(&cli(&[flag, value])).unwrap_err();
            assert!(error.0.starts_with(key), "{flag} {value}: {error}");
        }
        let config = Config::load(&cli(&[
            "--connections-max",
            "7",
            "--expiry-interval-ms",
            "5",
            "--segment-bytes-max",
            "65536",
            "--reserve-bytes",
            "0",
            "--rocksdb-wal-mode",
            "unsynced",
            "--read-cache-bytes",
            "0",
            "--worker-threads",
            "1",
        ]))
        .unwrap();
        assert_eq!(config.store().db.read_cache_bytes, 0);
        assert_eq!(config.worker_threads, 1);
        assert_eq!(config.connections_max, 7);
        assert_eq!(config.expiry_interval_ms, 5);
        assert_eq!(config.segment_bytes_max, 65536);
        assert_eq!(config.reserve_bytes, 0);
        assert_eq!(config.rocksdb_wal_mode, RocksWalMode::Unsynced);
    }

    #[test]
    fn a_missing_data_dir_is_created_only_below_an_existing_parent() {
        let dir = tempfile::tempdir().unwrap();
        let existing = dir.path().join("existing");
        std::fs::create_dir(&existing).unwrap();
        assert!(!prepare_data_dir(&existing, false).unwrap());
        let child = dir.path().join("new");
        assert!(prepare_data_dir(&child, false).unwrap());
        assert!(child.is_dir());
        let typo = dir.path().join("no-such-parent").join("data");
        let error = prepare_data_dir(&typo, false).unwrap_err();
        assert!(
            error
                .0
                .contains("does not exist, and neither does its parent")
                && error.0.contains("--create-data-dir"),
            "{error}"
        );
        assert!(!typo.parent().unwrap().exists());
        assert!(prepare_data_dir(&typo, true).unwrap());
        assert!(typo.is_dir());
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(prepare_data_dir(&file, true)
            .unwrap_err()
            .0
            .contains("is not a directory"));
        // The flag and its variable.
        assert!(
            Config::load(&cli(&["--create-data-dir"]))
                .unwrap()
                .create_data_dir
        );
        assert!(!Config::load(&cli(&[])).unwrap().create_data_dir);
    }

    #[test]
    fn misspelled_variables_are_found() {
        let vars = [
            "CKPT_CONECTIONS_MAX",
            "CKPT_CONNECTIONS_MAX",
            "CKPT_LOG",
            "CKPT_ADDR",
            "CKPT_TEST_SERVER_LOG",
            "PATH",
            "CKPT_DATADIR",
        ]
        .map(String::from);
        assert_eq!(
            unknown_env(vars),
            vec!["CKPT_CONECTIONS_MAX", "CKPT_DATADIR"]
        );
    }

    #[test]
    fn defaults_then_file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ckpt.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:9000\"\ndata_dir = \"/from/file\"\nrocksdb_wal_mode = \"Unsynced\"\n")
            .unwrap();
        let config = Config::load(&cli(&[
            "--config",
            file.to_str().unwrap(),
            "--data-dir",
            "/from/flag",
        ]))
        .unwrap();
        assert_eq!(config.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(config.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(config.rocksdb_wal_mode, RocksWalMode::Unsynced);
        assert_eq!(config.admin_listen, Config::default().admin_listen);
    }

    #[test]
    fn memory_bounds_come_from_file_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ckpt.toml");
        std::fs::write(
            &file,
            "reply_queue_bytes_max = 1048576\nnotification_history_bytes_max = 0\nwal_history_bytes = 0\n",
        )
        .unwrap();
        let config = Config::load(&cli(&[
            "--config",
            file.to_str().unwrap(),
            "--notification-queue-bytes-max",
            "2097152",
        ]))
        .unwrap();
        assert_eq!(config.reply_queue_bytes_max, 1 << 20);
        assert_eq!(config.notification_queue_bytes_max, 2 << 20);
        assert_eq!(config.notification_history_bytes_max, 0);
        assert_eq!(config.store().wal_history_bytes, 0);
        // Small segments: the history kept is at most 8 of them.
        std::fs::write(&file, "segment_bytes_max = 65536\n").unwrap();
        let config = Config::load(&cli(&["--config", file.to_str().unwrap()])).unwrap();
        assert_eq!(config.store().wal_history_bytes, 8 * 65536);
    }

    /// Preallocation is on unless the file, a flag or the variable turns
    /// it off; a value other than true or false is refused.
    #[test]
    fn preallocated_segments_can_be_turned_off() {
        assert!(
            Config::load(&cli(&[]))
                .unwrap()
                .store()
                .preallocate_segments
        );
        let off = Config::load(&cli(&["--preallocate-segments", "false"])).unwrap();
        assert!(!off.store().preallocate_segments);
        assert_eq!(off.effective()["preallocate_segments"], false);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ckpt.toml");
        std::fs::write(&file, "preallocate_segments = false\n").unwrap();
        let path = file.to_str().unwrap();
        let from_file = Config::load(&cli(&["--config", path])).unwrap();
        assert!(!from_file.store().preallocate_segments);
        // The flag overrides the file.
        let flag = Config::load(&cli(&["--config", path, "--preallocate-segments", "true"]));
        assert!(flag.unwrap().store().preallocate_segments);
        assert!(Cli::try_parse_from(["ckpt-server", "--preallocate-segments", "maybe"]).is_err());
        std::fs::write(&file, "preallocate_segments = 1\n").unwrap();
        assert!(Config::load(&cli(&["--config", path])).is_err());
    }

    #[test]
    fn bad_files_and_values_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ckpt.toml");
        std::fs::write(&file, "no_such_setting = 1\n").unwrap();
        let error = Config::load(&cli(&["--config", file.to_str().unwrap()])).unwrap_err();
        assert!(error.0.contains("no_such_setting"), "{error}");
        let error = Config::load(&cli(&["--in-flight-max", "0"])).unwrap_err();
        assert!(error.0.contains("in_flight_max"), "{error}");
        let error = Config::load(&cli(&["--reply-queue-bytes-max", "10"])).unwrap_err();
        assert!(error.0.contains("reply_queue_bytes_max"), "{error}");
        let error = Config::load(&cli(&["--wal-history-bytes", "2000000000000"])).unwrap_err();
        assert!(error.0.contains("wal_history_bytes"), "{error}");
        let missing = Config::load(&cli(&["--config", "/no/such/file.toml"])).unwrap_err();
        assert!(missing.0.contains("cannot read"), "{missing}");
    }

    /// A 3-node cluster file in `dir`.
    fn cluster_file(dir: &Path) -> PathBuf {
        let file = dir.join("cluster.toml");
        let mut text = String::new();
        for id in 1..=3 {
            text.push_str(&format!(
                "[[nodes]]\nid = {id}\nclient_addr = \"127.0.0.1:{}\"\npeer_addr = \"127.0.0.1:{}\"\nadmin_addr = \"127.0.0.1:{}\"\n",
                7000 + 10 * id,
                7001 + 10 * id,
                7002 + 10 * id
            ));
        }
        std::fs::write(&file, text).unwrap();
        file
    }

    #[test]
    fn peer_via_names_a_peer_and_an_address() {
        let dir = tempfile::tempdir().unwrap();
        let file = cluster_file(dir.path());
        let file = file.to_str().unwrap();
        let base = ["--config", file, "--node-id", "1"];
        let with = |extra: &[&str]| {
            let args: Vec<&str> = base.iter().chain(extra).copied().collect();
            Config::load(&cli(&args))
        };
        let config = with(&[
            "--peer-via",
            "2=127.0.0.1:9002",
            "--peer-via",
            "3=[::1]:9003",
        ])
        .unwrap();
        assert_eq!(
            config.peer_via.into_iter().collect::<Vec<_>>(),
            vec![
                (2, "127.0.0.1:9002".parse().unwrap()),
                (3, "[::1]:9003".parse().unwrap())
            ]
        );
        // Comma-separated, as CKPT_PEER_VIA takes it.
        let config = with(&["--peer-via", "2=127.0.0.1:9002,3=127.0.0.1:9003"]).unwrap();
        assert_eq!(config.peer_via.len(), 2);
        assert!(with(&[]).unwrap().peer_via.is_empty());
        for (value, says) in [
            ("1=127.0.0.1:9001", "this node"),
            ("4=127.0.0.1:9004", "no [[nodes]] entry with id = 4"),
            ("2=localhost:9002", "not an IP:PORT address"),
            ("2=127.0.0.1", "not an IP:PORT address"),
            ("x=127.0.0.1:9002", "not a node id"),
            ("127.0.0.1:9002", "expected ID=IP:PORT"),
        ] {
            let error = with(&["--peer-via", value]).unwrap_err();
            assert!(
                error.0.starts_with("--peer-via ") && error.0.contains(says),
                "{value}: {error}"
            );
        }
        let twice = with(&["--peer-via", "2=127.0.0.1:1,2=127.0.0.1:2"]).unwrap_err();
        assert!(twice.0.contains("more than once"), "{twice}");
        let single = Config::load(&cli(&["--peer-via", "2=127.0.0.1:9002"])).unwrap_err();
        assert!(
            single
                .0
                .starts_with("--peer-via: given without a cluster file"),
            "{single}"
        );
    }
}
