//! Helpers for cluster tests: reading `/cluster` from the admin port, waiting
//! for a cluster to settle, running `ckpt-tool bench` in the background.
//!
//! Include with `mod common; #[path = "common/cluster.rs"] mod cluster_helpers;`.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{bin, http_get, Cluster};

/// How long a cluster gets to do something it must do eventually (elect a
/// leader, fail over, let a node catch up) on a loaded 2-core CI box.
pub const SETTLE: Duration = Duration::from_secs(60);

/// One loaded cluster at a time: a test that keeps a bench writing at full
/// speed while it waits for every replica to be in sync holds this for its
/// whole run. Writes are paced only for a backup that streams, not for one
/// catching up from the log (docs/replication.md, "Pacing"), and three such
/// clusters with their benches on two cores
/// starve each other's backups for longer than [`SETTLE`]: on a 2-core
/// machine one or two of `cluster_failover`'s three tests failed to settle
/// in each of 3 runs, at 12b6e5d as after it; one at a time they passed.
pub fn one_loaded_cluster_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOADED: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOADED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `/cluster` of the first live node that answers, parsed.
pub fn status(cluster: &Cluster) -> Option<Value> {
    for (i, node) in cluster.nodes.iter().enumerate() {
        if node.is_none() {
            continue;
        }
        let addr = &cluster.admin_addrs[i];
        if std::net::TcpStream::connect(addr).is_err() {
            continue;
        }
        let (code, body) = http_get(addr, "/cluster");
        if code == 200 {
            if let Ok(value) = serde_json::from_str(&body) {
                return Some(value);
            }
        }
    }
    None
}

/// The checkpoints of a `/cluster` answer.
pub fn checkpoints(status: &Value) -> Vec<Value> {
    status["checkpoints"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Node ids in a JSON array.
pub fn ids(value: &Value) -> Vec<u64> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

/// Polls `condition` on `/cluster` every 100 ms until it holds; panics with
/// the last status after [`SETTLE`].
pub fn wait_status(cluster: &Cluster, what: &str, condition: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + SETTLE;
    let mut last = None;
    loop {
        if let Some(status) = status(cluster) {
            if condition(&status) {
                return status;
            }
            last = Some(status);
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {SETTLE:?}; last /cluster: {last:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether `status` shows a leader, and every checkpoint with an active
/// replica among `live` and every live replica of it in sync.
pub fn is_settled(status: &Value, live: &[u64]) -> bool {
    status["leader"].as_u64().is_some()
        && checkpoints(status).iter().all(|c| {
            let replicas = ids(&c["replicas"]);
            let in_sync = ids(&c["in_sync"]);
            c["active"].as_u64().is_some_and(|a| live.contains(&a))
                && replicas
                    .iter()
                    .filter(|r| live.contains(r))
                    .all(|r| in_sync.contains(r))
        })
}

/// Waits until the cluster [`is_settled`]; on timeout prints the last lines
/// every running node logged, then panics with the last `/cluster`.
pub fn wait_settled(cluster: &mut Cluster, live: &[u64]) -> Value {
    let deadline = Instant::now() + SETTLE;
    let mut last = None;
    loop {
        if let Some(status) = status(cluster) {
            if is_settled(&status, live) {
                return status;
            }
            last = Some(status);
        }
        if Instant::now() >= deadline {
            dump_logs(cluster, 80);
            panic!(
                "the cluster did not settle within {SETTLE:?}; last /cluster: {last:#}",
                last = last.unwrap_or(Value::Null)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Prints the last `n` log lines of every running node to stderr.
pub fn dump_logs(cluster: &mut Cluster, n: usize) {
    for (i, server) in cluster.nodes.iter_mut().enumerate() {
        if let Some(server) = server {
            let lines = server.drain_log().to_vec();
            eprintln!("---- node {} log (last {n} lines)", i + 1);
            for line in lines.iter().rev().take(n).rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// The node active for most checkpoints in `status` (the failover victim).
pub fn busiest_active(status: &Value) -> u64 {
    let mut counts = std::collections::BTreeMap::new();
    for c in checkpoints(status) {
        if let Some(active) = c["active"].as_u64() {
            *counts.entry(active).or_insert(0u32) += 1;
        }
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(node, _)| node)
        .expect("some checkpoint has an active replica")
}

/// `ckpt-tool bench` running in the background against `addrs`, recording
/// every acknowledged write to `record`.
pub struct Bench {
    child: Child,
}

impl Bench {
    /// Starts `bench` with `args` after the common ones.
    pub fn start(addrs: &str, record: &Path, args: &[&str]) -> Bench {
        let child = Command::new(bin("ckpt-tool"))
            .args(["bench", "--addr", addrs, "--record"])
            .arg(record)
            .args(["--duration-s", "3600", "--reconnect-s", "120"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ckpt-tool bench starts");
        Bench { child }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lines of the record file (acknowledged writes so far).
pub fn acked_lines(record: &Path) -> Vec<String> {
    std::fs::read_to_string(record)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split_whitespace().count() == 4)
        .map(str::to_string)
        .collect()
}

/// Waits until the record file holds at least `n` more lines than `from`.
pub fn wait_acks(record: &Path, from: usize, n: usize, what: &str) -> Duration {
    wait_acks_within(record, from, n, what, SETTLE)
}

/// [`wait_acks`] with its own limit (many writes on a loaded 2-core box).
pub fn wait_acks_within(
    record: &Path,
    from: usize,
    n: usize,
    what: &str,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    // Reading a record of many lines costs: poll less often as it grows.
    let poll = Duration::from_millis(20).max(Duration::from_micros(5 * n as u64).min(limit / 100));
    loop {
        let got = acked_lines(record).len();
        if got >= from + n {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{what}: {} of {n} acknowledged writes within {limit:?}",
            got.saturating_sub(from)
        );
        std::thread::sleep(poll);
    }
}

/// Waits until every checkpoint in `names` has acknowledged writes after
/// line `from` of the record that the new active replica must have made:
/// the time from the call until the last of them resumed.
pub fn wait_all_resume(
    record: &Path,
    from: usize,
    names: &[String],
    writers_per_checkpoint: usize,
) -> Duration {
    let started = Instant::now();
    loop {
        let lines = acked_lines(record);
        // More new acknowledgements per checkpoint than it has writers (one
        // write in flight each, which the dying node may still have
        // acknowledged): at least one came from the new active replica.
        let resumed = names.iter().all(|name| {
            lines
                .iter()
                .skip(from)
                .filter(|l| l.split_whitespace().next() == Some(name.as_str()))
                .count()
                > writers_per_checkpoint
        });
        if resumed {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < SETTLE,
            "writes to {names:?} did not resume within {SETTLE:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `ckpt-tool check-acked` against `addrs`: (acked, lost, wrong), panicking
/// with its output if it cannot run.
pub fn check_acked(addrs: &str, record: &Path) -> (u64, u64, u64) {
    let output = Command::new(bin("ckpt-tool"))
        .args(["check-acked", "--addr", addrs])
        .arg(record)
        .output()
        .expect("ckpt-tool check-acked runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // "N acked, M lost, K wrong"
    let numbers: Vec<u64> = text
        .lines()
        .find(|l| l.contains(" acked, ") && l.contains(" lost, "))
        .unwrap_or_else(|| panic!("check-acked printed no summary:\n{text}"))
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(numbers.len() >= 3, "check-acked summary: {text}");
    if numbers[1] + numbers[2] > 0 {
        eprintln!("check-acked:\n{text}");
    }
    (numbers[0], numbers[1], numbers[2])
}

/// `ckpt-tool cluster verify` against every admin address: (success, output).
pub fn verify(cluster: &Cluster) -> (bool, String) {
    let output = Command::new(bin("ckpt-tool"))
        .args(["cluster", "verify", "--admin", &cluster.admins()])
        .output()
        .expect("ckpt-tool cluster verify runs");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// Runs `cluster verify` until it finds every replica identical (replicas
/// still catching up differ for a moment); panics with its last output after
/// [`SETTLE`].
pub fn wait_verified(cluster: &Cluster) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let (same, output) = verify(cluster);
        if same {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replicas still differ after {SETTLE:?}:\n{output}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `ckpt-tool cluster ARGS --admin ADMINS`: (success, stdout + stderr).
pub fn cluster_tool(admins: &str, args: &[&str]) -> (bool, String) {
    let output = Command::new(bin("ckpt-tool"))
        .arg("cluster")
        .args(args)
        .args(["--admin", admins])
        .output()
        .expect("ckpt-tool runs");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}
