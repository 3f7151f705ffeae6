//! The metrics an operator looks for (issue #12, point 6), from a real
//! server under a real load, and the Grafana dashboard in docs/ built only
//! on metrics the server exports.

mod common;
mod ops_support;

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::process::Command;

use common::bin;
use ops_support::{field, http_get, wait_until, Process};

/// The value of the sample `name` (labels included) in `text`.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

/// Every metric name a PromQL expression mentions (`ckpt_*`, `process_*`).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        // Label values ("...") name no metric.
        if bytes[at] == b'"' {
            at += expr[at + 1..].find('"').map_or(bytes.len(), |end| end + 2);
            continue;
        }
        let rest = &expr[at..];
        let starts_name = rest.starts_with("ckpt_") || rest.starts_with("process_");
        let after_word =
            at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
        if starts_name && after_word {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            names.push(rest[..end].to_string());
            at += end;
        } else {
            at += 1;
        }
    }
    names
}

#[test]
fn a_loaded_server_exports_what_the_dashboard_shows() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Process::start(
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--connections-max",
            "4",
        ],
        &[],
    );
    let ready = server.wait_line("ckpt-server ready");
    let (addr, admin) = (field(&ready, "listen="), field(&ready, "admin="));

    // Load: two clients writing two kept checkpoints' sections and reading
    // each twice after each write (four connections with the bench's own
    // two).
    let bench = Command::new(bin("ckpt-tool"))
        .args([
            "bench",
            "--addr",
            &addr,
            "--clients",
            "2",
            "--checkpoints",
            "2",
            "--mix",
            "2:1",
        ])
        .args(["--value-size", "100", "--duration-s", "1", "--keep"])
        .output()
        .unwrap();
    assert!(
        bench.status.success(),
        "{}",
        String::from_utf8_lossy(&bench.stderr)
    );
    // Connections over the bound are refused and counted.
    let metrics = || http_get(&admin, "/metrics").expect("/metrics answers").1;
    wait_until("the bench's connections to close", || {
        sample(&metrics(), "ckpt_connections") == Some(0.0)
    });
    let held: Vec<TcpStream> = (0..5).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    wait_until("a refused connection to be counted", || {
        sample(&metrics(), "ckpt_connections_rejected_total").unwrap_or(0.0) >= 1.0
    });
    drop(held);

    let text = metrics();
    let value = |name: &str| sample(&text, name).unwrap_or_else(|| panic!("no {name} in\n{text}"));
    let fsyncs = value("ckpt_wal_fsyncs_total");
    assert!(fsyncs > 10.0, "{fsyncs}");
    assert_eq!(value("ckpt_wal_fsync_duration_seconds_count"), fsyncs);
    assert_eq!(
        value("ckpt_wal_batch_records_count"),
        value("ckpt_wal_group_commits_total")
    );
    assert_eq!(
        value("ckpt_wal_batch_records_sum"),
        value("ckpt_wal_records_total")
    );
    assert_eq!(value("ckpt_checkpoints"), 2.0);
    // One section per client and the bench's marker in each checkpoint.
    assert_eq!(value("ckpt_sections"), 4.0);
    assert_eq!(value("ckpt_section_bytes"), 200.0);
    assert!(value("ckpt_wal_disk_bytes") > 0.0);
    // The first read after a write fills the read cache, the second hits.
    assert!(value("ckpt_read_cache_misses_total") >= 1.0);
    assert!(value("ckpt_read_cache_hits_total") >= 1.0);
    assert!(value("ckpt_read_cache_bytes") > 0.0);
    assert!(value("ckpt_rocksdb_sst_bytes") >= 0.0);
    assert_eq!(value("ckpt_ready"), 1.0);
    assert_eq!(value("ckpt_store_poisoned"), 0.0);
    assert!(value("ckpt_recovery_duration_seconds") > 0.0);
    assert_eq!(value("ckpt_recovery_records_replayed"), 0.0);
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(text.contains("ckpt_build_info{version=\""), "{text}");
    // Where requests' time went, hop by hop: the store's stages count
    // each durable write once, the server's every request it handled.
    let stage = |name: &str, what: &str| {
        value(&format!(
            "ckpt_request_stage_seconds_{what}{{stage=\"{name}\"}}"
        ))
    };
    let durable = stage("fsync", "count");
    assert!(durable > 10.0, "{durable}");
    for name in ["queue", "commit", "sync_wait", "answer"] {
        assert_eq!(stage(name, "count"), durable, "stage {name}");
    }
    for name in ["spawn", "wake", "out"] {
        assert!(stage(name, "count") >= 1.0, "stage {name}");
    }
    // Every answer queued was written (the connections are closed).
    assert!(stage("out", "count") >= stage("spawn", "count"));
    // A durable write waits for its fsync at least as long as it takes.
    assert!(stage("fsync", "sum") >= value("ckpt_wal_fsync_duration_seconds_sum") * 0.99);
    // The HELP of the group-commit histogram says what it counts.
    assert!(
        text.contains("# HELP ckpt_wal_batch_records Records per group commit"),
        "{text}"
    );

    // Every metric the dashboard names above its cluster row is exported.
    let (named, _) = dashboard_names();
    assert!(named.len() >= 25, "{named:?}");
    let missing = not_exported(&named, &text);
    assert!(
        missing.is_empty(),
        "the dashboard names metrics the server does not export: {missing:?}"
    );
    // And the essentials are on it.
    for wanted in [
        "ckpt_wal_fsync_duration_seconds_bucket",
        "ckpt_wal_batch_records_bucket",
        "ckpt_ready",
        "ckpt_store_poisoned",
        "ckpt_rocksdb_sst_bytes",
        "ckpt_connections_rejected_total",
    ] {
        assert!(named.contains(wanted), "{wanted} is not on the dashboard");
    }
}

/// The metric names of the dashboard's panels: those of every server
/// (and its node variable), and those under its "Cluster" row.
fn dashboard_names() -> (BTreeSet<String>, BTreeSet<String>) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let (mut every, mut cluster) = (BTreeSet::new(), BTreeSet::new());
    let mut in_cluster_row = false;
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            in_cluster_row = panel["title"].as_str().unwrap().starts_with("Cluster");
            continue;
        }
        let names = if in_cluster_row {
            &mut cluster
        } else {
            &mut every
        };
        for target in panel["targets"].as_array().unwrap() {
            names.extend(metric_names(target["expr"].as_str().unwrap()));
        }
    }
    every.extend(metric_names(
        dashboard["templating"]["list"][1]["query"]
            .as_str()
            .unwrap(),
    ));
    (every, cluster)
}

/// Of `named`, those `text` (a `/metrics` page) has no sample of.
fn not_exported<'a>(named: &'a BTreeSet<String>, text: &str) -> Vec<&'a String> {
    let exported: BTreeSet<&str> = text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .collect();
    named
        .iter()
        .filter(|n| !exported.contains(n.as_str()))
        .collect()
}

/// The dashboard's cluster row shows only what a cluster node exports from
/// its start (no per-checkpoint series: those are optional), and the
/// essentials of a cluster are on it.
#[test]
fn a_cluster_node_exports_what_the_dashboard_shows_of_a_cluster() {
    let (_, named) = dashboard_names();
    for wanted in [
        "ckpt_raft_leader",
        "ckpt_lease_expiries_total",
        "ckpt_failovers_total",
        "ckpt_active_checkpoints_out_of_sync",
        "ckpt_replication_lag_records_max",
        "ckpt_cluster_pass_seconds_bucket",
        "ckpt_cluster_raft_compaction_seconds_count",
        "ckpt_peer_messages_dropped_total",
    ] {
        assert!(named.contains(wanted), "{wanted} is not in the cluster row");
    }
    let cluster = common::Cluster::start(3, "checkpoint_metrics = false");
    for admin in &cluster.admin_addrs {
        let (code, text) = common::http_get(admin, "/metrics");
        assert_eq!(code, 200, "{text}");
        let missing = not_exported(&named, &text);
        assert!(
            missing.is_empty(),
            "the dashboard's cluster row names metrics node {admin} does not export: {missing:?}"
        );
    }
}

#[test]
fn metric_names_are_found_in_expressions() {
    assert_eq!(
        metric_names("rate(ckpt_a_total{x=\"ckpt_label\"}[1m]) / process_b + my_ckpt_c"),
        vec!["ckpt_a_total", "process_b"]
    );
}
