//! `cluster.toml`: the list of nodes and the replication settings, the same
//! file on every node.
//!
//! ```toml
//! cluster_name = "ckpt"       # default "ckpt"; peers of another name are refused
//! replication_factor = 3      # default 3, capped by the node count
//! min_in_sync = 2             # default 2, capped by replication_factor
//! replica_lag_timeout_ms = 2000
//! replica_lag_records_max = 1000  # WR_ACTIVE_REPLICA(_WEAK): most records a failover may lose
//! lease_timeout_ms = 1500
//! tick_ms = 50                # control-plane tick (Raft heartbeat = 2 ticks, election = 10)
//! raft_compact_entries = 1024 # Raft entries between compactions (at least a quarter of the checkpoints)
//! [[nodes]]
//! id = 1
//! client_addr = "127.0.0.1:7400"
//! peer_addr = "127.0.0.1:7500"
//! admin_addr = "127.0.0.1:7401"
//! ```
//!
//! The file is parsed into a loose form first (every key optional, numbers
//! as TOML's i64) and then checked by hand, so that every refusal names the
//! offending key (`nodes[2].peer_addr: ...`) instead of a serde position.
//! Unknown keys are refused: a misspelt `lease_timout_ms` must not silently
//! fall back to the default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

use crate::NodeId;

/// Raft election timeout in control-plane ticks.
pub const ELECTION_TICKS: usize = 10;
/// Raft heartbeat interval in control-plane ticks.
pub const HEARTBEAT_TICKS: usize = 2;
/// Most nodes one cluster file may list.
pub const NODES_MAX: usize = 64;
/// Largest replication factor accepted.
pub const REPLICATION_FACTOR_MAX: usize = 16;
/// Largest timeout accepted for any `*_ms` key (10 minutes).
pub const TIMEOUT_MS_MAX: u64 = 600_000;
/// Largest `replica_lag_records_max` accepted.
pub const LAG_RECORDS_MAX_MAX: u64 = 1_000_000_000;
/// Largest control-plane tick accepted.
pub const TICK_MS_MAX: u64 = 10_000;
/// Fewest Raft entries between compactions accepted.
pub const RAFT_COMPACT_ENTRIES_MIN: u64 = 8;
/// Most Raft entries between compactions accepted (the log between
/// compactions is kept in memory and replayed at a start).
pub const RAFT_COMPACT_ENTRIES_MAX: u64 = 10_000_000;

/// The cluster name when the file gives none.
pub const CLUSTER_NAME_DEFAULT: &str = "ckpt";
/// Longest `cluster_name` accepted.
pub const CLUSTER_NAME_BYTES_MAX: usize = 64;

const DEFAULT_REPLICATION_FACTOR: usize = 3;
const DEFAULT_MIN_IN_SYNC: usize = 2;
const DEFAULT_REPLICA_LAG_TIMEOUT_MS: u64 = 2000;
const DEFAULT_LEASE_TIMEOUT_MS: u64 = 1500;
const DEFAULT_TICK_MS: u64 = 50;

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// The node's id (>= 1; also its Raft id).
    pub id: NodeId,
    /// Where clients connect.
    pub client_addr: SocketAddr,
    /// Where other nodes connect (control plane and log shipping).
    pub peer_addr: SocketAddr,
    /// HTTP admin endpoint (`/health`, `/metrics`, `/cluster`, `/checksums`).
    pub admin_addr: SocketAddr,
}

/// The whole cluster file, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The cluster's name (default `ckpt`): nodes of clusters with other
    /// names refuse each other's peer connections.
    pub cluster_name: String,
    /// Not a file key: `ckpt-server --join` sets it. A node with an empty
    /// Raft log joins a running cluster (no voter, no state until the
    /// leader adds it) instead of starting one from the file's nodes.
    pub join: bool,
    /// Replicas per checkpoint (default 3, capped by the node count).
    pub replication_factor: usize,
    /// Fewest in-sync replicas a checkpoint accepts writes with (default 2,
    /// capped by `replication_factor`); below it writes fail TRY_AGAIN.
    pub min_in_sync: usize,
    /// A backup that has not acknowledged for this long leaves the in-sync set.
    pub replica_lag_timeout_ms: u64,
    /// The most records a WR_ACTIVE_REPLICA or WEAK write may be answered
    /// ahead of an in-sync backup (default 1000): what a failover loses at
    /// most, per checkpoint. Writes wait while a backup is further behind.
    pub replica_lag_records_max: u64,
    /// How long a granted lease lasts after its request was sent.
    pub lease_timeout_ms: u64,
    /// Control-plane tick; Raft elections take [`ELECTION_TICKS`] ticks.
    pub tick_ms: u64,
    /// Every node, sorted by id.
    pub nodes: Vec<NodeConfig>,
    /// Place a new checkpoint's active replica on another node than the
    /// one whose client created it (default false: the creator, which saves
    /// the forwarding hop for the usual writer). Tests set it so that every
    /// request is routed.
    pub placement_avoid_creator: bool,
    /// Export the per-checkpoint replication series (lag per backup,
    /// in-sync size, writes held) of the checkpoints a node is active for
    /// (default true). About six series per checkpoint: a node active for
    /// 100,000 checkpoints exports 600,000. The per-node summaries are
    /// exported either way.
    pub checkpoint_metrics: bool,
    /// Applied Raft entries between compactions of the control plane's log
    /// (default 1024; never fewer than a quarter of the checkpoints). Fewer
    /// make a start replay less and compact more often.
    pub raft_compact_entries: u64,
}

/// A refused cluster file. `Display` starts with the offending key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    /// The key at fault (`nodes[2].peer_addr`), or the file for errors that
    /// concern it as a whole.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    cluster_name: Option<String>,
    replication_factor: Option<i64>,
    min_in_sync: Option<i64>,
    replica_lag_timeout_ms: Option<i64>,
    replica_lag_records_max: Option<i64>,
    lease_timeout_ms: Option<i64>,
    tick_ms: Option<i64>,
    placement_avoid_creator: Option<bool>,
    checkpoint_metrics: Option<bool>,
    raft_compact_entries: Option<i64>,
    nodes: Option<Vec<RawNode>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: Option<i64>,
    client_addr: Option<String>,
    peer_addr: Option<String>,
    admin_addr: Option<String>,
}

fn number(
    key: &str,
    value: Option<i64>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    let Some(value) = value else {
        return Ok(default);
    };
    let value =
        u64::try_from(value).map_err(|_| ConfigError::new(key, format!("{value} is negative")))?;
    if value < min || value > max {
        return Err(ConfigError::new(
            key,
            format!("{value} is outside {min}..={max}"),
        ));
    }
    Ok(value)
}

fn address(key: String, value: Option<String>) -> Result<SocketAddr, ConfigError> {
    let value = value.ok_or_else(|| ConfigError::new(key.clone(), "missing"))?;
    value.parse().map_err(|e| {
        ConfigError::new(
            key,
            format!("{value:?} is not an ip:port socket address ({e})"),
        )
    })
}

impl ClusterConfig {
    /// Parses and validates a cluster file's text.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key for: TOML syntax, unknown keys,
    /// missing keys, zero or absurd numbers, duplicate node ids, an address
    /// used twice (any of client/peer/admin across all nodes), an explicit
    /// `min_in_sync` over the replication factor.
    pub fn parse(text: &str) -> Result<ClusterConfig, ConfigError> {
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| ConfigError::new("cluster.toml", e.to_string().trim_end().to_string()))?;
        let raw_nodes = raw.nodes.ok_or_else(|| {
            ConfigError::new("nodes", "missing: list every node as a [[nodes]] table")
        })?;
        if raw_nodes.is_empty() {
            return Err(ConfigError::new("nodes", "empty: list at least one node"));
        }
        if raw_nodes.len() > NODES_MAX {
            return Err(ConfigError::new(
                "nodes",
                format!("{} nodes, at most {NODES_MAX}", raw_nodes.len()),
            ));
        }
        let mut nodes = Vec::with_capacity(raw_nodes.len());
        let mut ids: BTreeMap<NodeId, usize> = BTreeMap::new();
        let mut addrs: BTreeMap<SocketAddr, String> = BTreeMap::new();
        for (i, node) in raw_nodes.into_iter().enumerate() {
            let id_key = format!("nodes[{i}].id");
            let id = node
                .id
                .ok_or_else(|| ConfigError::new(id_key.clone(), "missing"))?;
            let id = u64::try_from(id)
                .ok()
                .filter(|id| *id >= 1)
                .ok_or_else(|| {
                    ConfigError::new(id_key.clone(), format!("{id} is not a positive node id"))
                })?;
            if let Some(first) = ids.insert(id, i) {
                return Err(ConfigError::new(
                    id_key,
                    format!("node id {id} is a duplicate of nodes[{first}].id"),
                ));
            }
            let mut field =
                |name: &str, value: Option<String>| -> Result<SocketAddr, ConfigError> {
                    let key = format!("nodes[{i}].{name}");
                    let addr = address(key.clone(), value)?;
                    if let Some(first) = addrs.get(&addr) {
                        return Err(ConfigError::new(
                            key,
                            format!("{addr} is a duplicate of {first}"),
                        ));
                    }
                    addrs.insert(addr, key);
                    Ok(addr)
                };
            let client_addr = field("client_addr", node.client_addr)?;
            let peer_addr = field("peer_addr", node.peer_addr)?;
            let admin_addr = field("admin_addr", node.admin_addr)?;
            nodes.push(NodeConfig {
                id,
                client_addr,
                peer_addr,
                admin_addr,
            });
        }
        nodes.sort_by_key(|n| n.id);
        let node_count = nodes.len();

        let factor = number(
            "replication_factor",
            raw.replication_factor,
            DEFAULT_REPLICATION_FACTOR as u64,
            1,
            REPLICATION_FACTOR_MAX as u64,
        )?;
        // Bounded by REPLICATION_FACTOR_MAX above, so the cast cannot truncate.
        let replication_factor = (factor as usize).min(node_count);
        let min_in_sync = match raw.min_in_sync {
            None => DEFAULT_MIN_IN_SYNC.min(replication_factor),
            Some(_) => {
                let value = number(
                    "min_in_sync",
                    raw.min_in_sync,
                    DEFAULT_MIN_IN_SYNC as u64,
                    1,
                    REPLICATION_FACTOR_MAX as u64,
                )? as usize;
                if value > replication_factor {
                    return Err(ConfigError::new(
                        "min_in_sync",
                        format!(
                            "{value} exceeds replication_factor {replication_factor} (capped by the {node_count} nodes)"
                        ),
                    ));
                }
                value
            }
        };
        let tick_ms = number("tick_ms", raw.tick_ms, DEFAULT_TICK_MS, 1, TICK_MS_MAX)?;
        let election_ms = tick_ms * ELECTION_TICKS as u64;
        let lease_timeout_ms = number(
            "lease_timeout_ms",
            raw.lease_timeout_ms,
            DEFAULT_LEASE_TIMEOUT_MS,
            1,
            TIMEOUT_MS_MAX,
        )?;
        if lease_timeout_ms < election_ms {
            return Err(ConfigError::new(
                "lease_timeout_ms",
                format!(
                    "{lease_timeout_ms} is shorter than a Raft election ({ELECTION_TICKS} x tick_ms {tick_ms} = {election_ms} ms)"
                ),
            ));
        }
        let replica_lag_timeout_ms = number(
            "replica_lag_timeout_ms",
            raw.replica_lag_timeout_ms,
            DEFAULT_REPLICA_LAG_TIMEOUT_MS,
            1,
            TIMEOUT_MS_MAX,
        )?;
        let replica_lag_records_max = number(
            "replica_lag_records_max",
            raw.replica_lag_records_max,
            crate::data::LAG_RECORDS_MAX_DEFAULT,
            1,
            LAG_RECORDS_MAX_MAX,
        )?;
        let raft_compact_entries = number(
            "raft_compact_entries",
            raw.raft_compact_entries,
            crate::control::COMPACT_ENTRIES_DEFAULT,
            RAFT_COMPACT_ENTRIES_MIN,
            RAFT_COMPACT_ENTRIES_MAX,
        )?;
        let cluster_name = raw
            .cluster_name
            .unwrap_or_else(|| CLUSTER_NAME_DEFAULT.to_string());
        if cluster_name.is_empty() || cluster_name.len() > CLUSTER_NAME_BYTES_MAX {
            return Err(ConfigError::new(
                "cluster_name",
                format!("must be 1 to {CLUSTER_NAME_BYTES_MAX} bytes"),
            ));
        }
        Ok(ClusterConfig {
            cluster_name,
            join: false,
            replication_factor,
            min_in_sync,
            replica_lag_timeout_ms,
            replica_lag_records_max,
            lease_timeout_ms,
            tick_ms,
            nodes,
            placement_avoid_creator: raw.placement_avoid_creator.unwrap_or(false),
            checkpoint_metrics: raw.checkpoint_metrics.unwrap_or(true),
            raft_compact_entries,
        })
    }

    /// Reads and parses a cluster file.
    ///
    /// # Errors
    /// As [`ClusterConfig::parse`]; an unreadable file names its path.
    pub fn load(path: &Path) -> Result<ClusterConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(path.display().to_string(), format!("cannot read: {e}"))
        })?;
        ClusterConfig::parse(&text).map_err(|mut e| {
            e.key = format!("{}: {}", path.display(), e.key);
            e
        })
    }

    /// The node with this id, if the file lists it.
    pub fn node(&self, id: NodeId) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Every node id, ascending.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// The Raft election timeout in milliseconds.
    pub fn election_timeout_ms(&self) -> u64 {
        self.tick_ms.saturating_mul(ELECTION_TICKS as u64)
    }

    /// A one-node configuration on the given addresses (tests, embedded use).
    pub fn single(
        id: NodeId,
        client_addr: SocketAddr,
        peer_addr: SocketAddr,
        admin_addr: SocketAddr,
    ) -> ClusterConfig {
        ClusterConfig {
            cluster_name: CLUSTER_NAME_DEFAULT.to_string(),
            join: false,
            replication_factor: 1,
            min_in_sync: 1,
            replica_lag_timeout_ms: DEFAULT_REPLICA_LAG_TIMEOUT_MS,
            replica_lag_records_max: crate::data::LAG_RECORDS_MAX_DEFAULT,
            lease_timeout_ms: DEFAULT_LEASE_TIMEOUT_MS,
            tick_ms: DEFAULT_TICK_MS,
            placement_avoid_creator: false,
            checkpoint_metrics: true,
            raft_compact_entries: crate::control::COMPACT_ENTRIES_DEFAULT,
            nodes: vec![NodeConfig {
                id,
                client_addr,
                peer_addr,
                admin_addr,
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, base: u16) -> String {
        format!(
            "[[nodes]]\nid = {id}\nclient_addr = \"127.0.0.1:{}\"\npeer_addr = \"127.0.0.1:{}\"\nadmin_addr = \"127.0.0.1:{}\"\n",
            base,
            base + 100,
            base + 1
        )
    }

    fn three(head: &str) -> String {
        format!(
            "{head}\n{}{}{}",
            node(1, 7400),
            node(2, 7410),
            node(3, 7420)
        )
    }

    fn refused(text: &str) -> ConfigError {
        match ClusterConfig::parse(text) {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn the_issue_example_parses_with_its_values() {
        let c = ClusterConfig::parse(&three(
            "replication_factor = 3\nmin_in_sync = 2\nreplica_lag_timeout_ms = 2000\nlease_timeout_ms = 1500",
        ))
        .unwrap();
        assert_eq!(c.replica_lag_records_max, 1000);
        let c = ClusterConfig::parse(&three("replica_lag_records_max = 64")).unwrap();
        assert_eq!(c.replica_lag_records_max, 64);
        assert_eq!(c.replication_factor, 3);
        assert_eq!(c.min_in_sync, 2);
        assert_eq!(c.replica_lag_timeout_ms, 2000);
        assert_eq!(c.lease_timeout_ms, 1500);
        assert_eq!(c.tick_ms, 50);
        assert_eq!(c.node_ids(), vec![1, 2, 3]);
        assert_eq!(
            c.node(2).unwrap().peer_addr,
            "127.0.0.1:7510".parse().unwrap()
        );
        assert!(c.node(4).is_none());
    }

    #[test]
    fn defaults_are_capped_by_the_node_count() {
        let c = ClusterConfig::parse(&node(7, 7400)).unwrap();
        assert_eq!((c.replication_factor, c.min_in_sync), (1, 1));
        let two = format!("{}{}", node(1, 7400), node(2, 7410));
        let c = ClusterConfig::parse(&two).unwrap();
        assert_eq!((c.replication_factor, c.min_in_sync), (2, 2));
        let c = ClusterConfig::parse(&format!("replication_factor = 5\n{two}")).unwrap();
        assert_eq!(c.replication_factor, 2);
        let c = ClusterConfig::parse(&three("")).unwrap();
        assert_eq!((c.replication_factor, c.min_in_sync), (3, 2));
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let text = format!("{}{}", node(1, 7400), node(1, 7410));
        let e = refused(&text);
        assert_eq!(e.key, "nodes[1].id");
        assert!(e.to_string().contains("duplicate of nodes[0].id"), "{e}");
    }

    #[test]
    fn duplicate_addresses_across_nodes_and_kinds_are_refused() {
        // nodes[1].peer_addr equals nodes[0].client_addr.
        let text = format!(
            "{}[[nodes]]\nid = 2\nclient_addr = \"127.0.0.1:8000\"\npeer_addr = \"127.0.0.1:7400\"\nadmin_addr = \"127.0.0.1:8001\"\n",
            node(1, 7400)
        );
        let e = refused(&text);
        assert_eq!(e.key, "nodes[1].peer_addr");
        assert!(e.message.contains("nodes[0].client_addr"), "{e}");
        // Within one node.
        let text = "[[nodes]]\nid = 1\nclient_addr = \"127.0.0.1:1\"\npeer_addr = \"127.0.0.1:2\"\nadmin_addr = \"127.0.0.1:1\"\n";
        assert_eq!(refused(text).key, "nodes[0].admin_addr");
    }

    #[test]
    fn min_in_sync_over_the_replication_factor_is_refused() {
        let e = refused(&three("replication_factor = 2\nmin_in_sync = 3"));
        assert_eq!(e.key, "min_in_sync");
        assert!(
            e.to_string()
                .starts_with("min_in_sync: 3 exceeds replication_factor 2"),
            "{e}"
        );
        // Explicit min_in_sync against a factor capped by the node count.
        let e = refused(&format!("min_in_sync = 2\n{}", node(1, 7400)));
        assert_eq!(e.key, "min_in_sync");
    }

    #[test]
    fn missing_keys_are_named() {
        assert_eq!(refused("replication_factor = 3").key, "nodes");
        assert_eq!(refused("nodes = []").key, "nodes");
        let text =
            "[[nodes]]\nid = 1\nclient_addr = \"127.0.0.1:1\"\nadmin_addr = \"127.0.0.1:3\"\n";
        let e = refused(text);
        assert_eq!(e.to_string(), "nodes[0].peer_addr: missing");
        let text = "[[nodes]]\nclient_addr = \"127.0.0.1:1\"\npeer_addr = \"127.0.0.1:2\"\nadmin_addr = \"127.0.0.1:3\"\n";
        assert_eq!(refused(text).key, "nodes[0].id");
    }

    #[test]
    fn zero_negative_and_absurd_numbers_are_refused() {
        for (head, key) in [
            ("replication_factor = 0", "replication_factor"),
            ("replication_factor = 1000", "replication_factor"),
            ("min_in_sync = 0", "min_in_sync"),
            ("min_in_sync = -1", "min_in_sync"),
            ("replica_lag_timeout_ms = 0", "replica_lag_timeout_ms"),
            (
                "replica_lag_timeout_ms = 99999999999",
                "replica_lag_timeout_ms",
            ),
            ("replica_lag_records_max = 0", "replica_lag_records_max"),
            ("replica_lag_records_max = -5", "replica_lag_records_max"),
            (
                "replica_lag_records_max = 1000000000000",
                "replica_lag_records_max",
            ),
            ("lease_timeout_ms = 0", "lease_timeout_ms"),
            ("lease_timeout_ms = 100", "lease_timeout_ms"), // shorter than an election
            ("tick_ms = 0", "tick_ms"),
        ] {
            let e = refused(&three(head));
            assert_eq!(e.key, key, "{head}: {e}");
        }
        let text = "[[nodes]]\nid = 0\nclient_addr = \"127.0.0.1:1\"\npeer_addr = \"127.0.0.1:2\"\nadmin_addr = \"127.0.0.1:3\"\n";
        assert_eq!(refused(text).key, "nodes[0].id");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let e = refused(&three("lease_timout_ms = 1500"));
        assert!(e.to_string().contains("lease_timout_ms"), "{e}");
        let text = format!("{}bogus = 1\n", node(1, 7400));
        let e = refused(&text);
        assert!(e.to_string().contains("bogus"), "{e}");
        let text = "[[nodes]]\nid = 1\nclient_addr = \"localhost\"\npeer_addr = \"127.0.0.1:2\"\nadmin_addr = \"127.0.0.1:3\"\n";
        let e = refused(text);
        assert_eq!(e.key, "nodes[0].client_addr");
        assert!(e.message.contains("\"localhost\""), "{e}");
        assert_eq!(refused("this is not toml").key, "cluster.toml");
    }

    #[test]
    fn per_checkpoint_metrics_are_on_unless_turned_off() {
        assert!(ClusterConfig::parse(&three("")).unwrap().checkpoint_metrics);
        let c = ClusterConfig::parse(&three("checkpoint_metrics = false")).unwrap();
        assert!(!c.checkpoint_metrics);
        let e = refused(&three("checkpoint_metrics = \"no\""));
        assert!(e.to_string().contains("checkpoint_metrics"), "{e}");
    }

    #[test]
    fn the_raft_compaction_interval_defaults_and_is_bounded() {
        let c = ClusterConfig::parse(&three("")).unwrap();
        assert_eq!(
            c.raft_compact_entries,
            crate::control::COMPACT_ENTRIES_DEFAULT
        );
        let c = ClusterConfig::parse(&three("raft_compact_entries = 64")).unwrap();
        assert_eq!(c.raft_compact_entries, 64);
        for bad in ["0", "7", "-1", "10000001", "\"many\""] {
            let e = refused(&three(&format!("raft_compact_entries = {bad}")));
            assert!(e.to_string().contains("raft_compact_entries"), "{bad}: {e}");
        }
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.toml");
        let e = ClusterConfig::load(&path).unwrap_err();
        assert!(e.to_string().contains("cluster.toml"), "{e}");
        std::fs::write(&path, three("min_in_sync = 9")).unwrap();
        let e = ClusterConfig::load(&path).unwrap_err();
        assert!(e.to_string().contains("min_in_sync"), "{e}");
        std::fs::write(&path, three("")).unwrap();
        assert_eq!(ClusterConfig::load(&path).unwrap().nodes.len(), 3);
    }
}
