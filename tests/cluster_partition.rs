//! A network partition of real `ckpt-server` processes (issue #9,
//! acceptance 2): every peer link of a 3-node cluster goes through a
//! fault-injecting proxy (`tests/common/proxy.rs`, `ckpt-server
//! --peer-via`), and the node active for some ALL_SAFE checkpoints is cut
//! off from the other two while `ckpt-tool bench` writes.
//!
//! What must hold:
//! - (a) once its lease has expired, the isolated node acknowledges no
//!   write — to the checkpoints it was active for or to any other —
//!   through a client connected to it alone;
//! - (b) the majority names new active replicas, only after the old lease
//!   expired, and writes through the two majority nodes succeed;
//! - (c) after the heal the old node rejoins as a backup (in every in-sync
//!   set, active for none of the moved checkpoints) and the replicas
//!   converge (`cluster verify`);
//! - (d) `check-acked` finds every acknowledged write;
//! - (e) no epoch had two ordering primaries, checked in the nodes' WALs
//!   (`ckpt-tool wal --json`; see [`check_one_writer_per_epoch`]).

#[path = "common/client.rs"]
mod client_helpers;
#[path = "common/cluster.rs"]
mod cluster_helpers;
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ckpt_client::{Checkpoint, Client, ClientOptions};
use ckpt_proto::{CheckpointName, CreationAttributes, CreationFlags, ErrorCode, TIME_END};
use client_helpers::{forever, rw, rwc, we};
use cluster_helpers::*;
use common::proxy::{ProxiedCluster, Proxy};
use common::{bin, http_get, text, tool, Cluster};
use serde_json::Value;

/// The leases of the other cluster tests (the file's default, spelt out).
const LEASE_MS: u64 = 1500;
const CLUSTER: &str = "replication_factor = 3\nmin_in_sync = 2\nlease_timeout_ms = 1500\nreplica_lag_timeout_ms = 2000";
/// Bench checkpoints and clients: client i writes checkpoint i % 4 through
/// node i % 3 + 1, so every checkpoint has a writer on every node.
const BENCH_CHECKPOINTS: usize = 4;
const BENCH_CLIENTS: usize = 12;
/// How long the isolated node is probed, each time.
const PROBE_FOR: Duration = Duration::from_secs(2);
/// How long one probe write may take before it counts as unanswered.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn name(text: &str) -> CheckpointName {
    CheckpointName::new(text).expect("a valid name")
}

fn probe_attributes(flags: CreationFlags) -> CreationAttributes {
    CreationAttributes {
        creation_flags: flags,
        checkpoint_size: 1024,
        retention_duration_ns: TIME_END,
        max_sections: 4,
        max_section_size: 256,
        max_section_id_size: 16,
    }
}

/// `/cluster` as node `id` sees it (a partitioned node's view is stale).
fn status_of(cluster: &Cluster, id: u64) -> Option<Value> {
    let addr = &cluster.admin_addrs[(id - 1) as usize];
    TcpStream::connect(addr).ok()?;
    let (code, body) = http_get(addr, "/cluster");
    if code != 200 {
        return None;
    }
    serde_json::from_str(&body).ok()
}

/// Polls node `id`'s `/cluster` until `condition` holds; on timeout dumps
/// the nodes' logs and panics with the last answer.
fn wait_on(
    cluster: &mut Cluster,
    id: u64,
    what: &str,
    condition: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + SETTLE;
    let mut last = Value::Null;
    loop {
        if let Some(status) = status_of(cluster, id) {
            if condition(&status) {
                return status;
            }
            last = status;
        }
        if Instant::now() >= deadline {
            dump_logs(cluster, 60);
            panic!("{what}: not within {SETTLE:?}; last /cluster of node {id}: {last:#}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until every node's `/checksums` has checkpoints `names` at the
/// same position with the same checksum.
fn wait_replicas_identical(cluster: &mut Cluster, names: &[&str]) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let last = (1..=cluster.nodes.len())
            .map(|i| {
                let (_, body) = http_get(&cluster.admin_addrs[i - 1], "/checksums");
                let sums: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                names
                    .iter()
                    .map(|name| {
                        sums["checkpoints"]
                            .as_array()
                            .and_then(|all| all.iter().find(|c| c["name"] == *name).cloned())
                            .unwrap_or(Value::Null)
                    })
                    .collect::<Vec<Value>>()
            })
            .collect::<Vec<_>>();
        if last
            .iter()
            .all(|sums| *sums == last[0] && !sums.contains(&Value::Null))
        {
            return;
        }
        if Instant::now() >= deadline {
            dump_logs(cluster, 60);
            panic!("the replicas of {names:?} still differ after {SETTLE:?}: {last:#?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The entry of checkpoint `name` in a `/cluster` answer.
fn find<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["checkpoints"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["name"].as_str() == Some(name)))
        .unwrap_or_else(|| panic!("{name} not in /cluster: {status:#}"))
}

/// Awaits `$attempt` (an expression making a new future each time) again
/// while it answers TRY_AGAIN (the probe client returns TRY_AGAIN at once),
/// for at most [`SETTLE`].
macro_rules! retrying {
    ($what:expr, $attempt:expr) => {
        async {
            let deadline = Instant::now() + SETTLE;
            loop {
                match $attempt.await {
                    Ok(value) => break value,
                    Err(error)
                        if error.code == ErrorCode::TryAgain && Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(error) => panic!("{}: {error}", $what),
                }
            }
        }
    };
}

/// Writes through a client connected to the isolated node alone, for
/// [`PROBE_FOR`] and at least 3 rounds; panics on any success. Returns how
/// the attempts ended (error code or "no answer") and how often.
fn probe_isolated(
    rt: &tokio::runtime::Runtime,
    probes: &[(String, Checkpoint)],
    phase: &str,
) -> BTreeMap<String, u32> {
    let mut outcomes = BTreeMap::new();
    let started = Instant::now();
    let mut round = 0u32;
    while round < 3 || started.elapsed() < PROBE_FOR {
        for (name, checkpoint) in probes {
            let data = format!("isolated {phase} {round}");
            let result = rt.block_on(async {
                tokio::time::timeout(
                    PROBE_TIMEOUT,
                    checkpoint.write(vec![we("p", 0, data.as_bytes())]),
                )
                .await
            });
            let outcome = match result {
                Ok(Ok(())) => panic!(
                    "{phase}: the isolated node acknowledged a write to {name} after its lease expired"
                ),
                Ok(Err(error)) => format!("{} ({})", error.code.cl_name(), error.message),
                Err(_) => "no answer".to_string(),
            };
            *outcomes.entry(format!("{name}: {outcome}")).or_default() += 1;
        }
        round += 1;
    }
    outcomes
}

#[test]
fn an_isolated_active_node_stops_acknowledging_and_rejoins_as_a_backup() {
    let started = Instant::now();
    let mut cluster = ProxiedCluster::start(3, CLUSTER);
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("acked.txt");
    let bench = Bench::start(
        &cluster.addrs(),
        &record,
        &[
            "--checkpoints",
            &BENCH_CHECKPOINTS.to_string(),
            "--clients",
            &BENCH_CLIENTS.to_string(),
            "--size",
            "256",
            "--mode",
            "active",
            "--all-safe",
        ],
    );
    wait_acks(&record, 0, 200, "bench writes");
    let status = wait_settled(&mut cluster, &[1, 2, 3]);
    let victim = busiest_active(&status);
    let others: Vec<u64> = (1..=3).filter(|n| *n != victim).collect();
    let addr_of = |id: u64| cluster.client_addrs[(id - 1) as usize].clone();
    let victim_addr = addr_of(victim);
    let majority_addrs = others.iter().map(|n| addr_of(*n)).collect::<Vec<_>>();
    let majority_addrs = majority_addrs.join(",");

    // Probe checkpoints: two created through the victim, so it is their
    // active replica (ALL_SAFE, and WR_ACTIVE_REPLICA alone, which the
    // active replica acknowledges on its own — only its lease stops it),
    // and one active on the majority, which the victim can only forward to.
    let safe = CreationFlags::WR_ACTIVE_REPLICA | CreationFlags::WR_ALL_SAFE;
    let probe_specs = [
        ("probe-safe", safe, victim_addr.clone()),
        (
            "probe-active",
            CreationFlags::WR_ACTIVE_REPLICA,
            victim_addr.clone(),
        ),
        ("probe-elsewhere", safe, addr_of(others[0])),
    ];
    for (probe, flags, through) in &probe_specs {
        let creator = rt.block_on(Client::connect(through)).unwrap();
        let checkpoint = rt
            .block_on(creator.open(&name(probe), Some(probe_attributes(*flags)), rwc()))
            .unwrap_or_else(|e| panic!("create {probe}: {e}"));
        rt.block_on(checkpoint.section_create(forever("p"), b"created".to_vec()))
            .unwrap_or_else(|e| panic!("section of {probe}: {e}"));
    }
    // The probing client: connected to the victim alone, TRY_AGAIN answered
    // at once rather than retried.
    let probe_client = rt
        .block_on(Client::connect_with_options(
            &victim_addr,
            ClientOptions::new()
                .try_again_timeout(Duration::ZERO)
                .reconnect_timeout(Duration::from_secs(1)),
        ))
        .unwrap();
    let probes: Vec<(String, Checkpoint)> = probe_specs
        .iter()
        .map(|(probe, _, _)| {
            let probe_name = name(probe);
            let checkpoint = rt.block_on(retrying!(
                format!("open {probe} on the victim"),
                probe_client.open(&probe_name, None, rw())
            ));
            // Writes through the victim work before the partition.
            rt.block_on(retrying!(
                format!("write {probe} before the partition"),
                checkpoint.write(vec![we("p", 0, b"before")])
            ));
            (probe.to_string(), checkpoint)
        })
        .collect();

    let before = wait_settled(&mut cluster, &[1, 2, 3]);
    // Every replica holds the probes' entries: a WR_ACTIVE_REPLICA write is
    // acknowledged before it is shipped, and a failover may pick a backup
    // that has not got it yet (a new checkpoint's backup can take a second
    // to catch up) — a loss the mode allows, not what this test is about.
    let probe_names: Vec<&str> = probe_specs.iter().map(|(probe, _, _)| *probe).collect();
    wait_replicas_identical(&mut cluster, &probe_names);
    // Who ordered epoch 1 of each checkpoint: the first of its replicas
    // (placement names it the active replica at creation, and only a
    // RemoveNode reorders them). Not "its active replica now": on a loaded
    // machine a lease may have lapsed during the warm-up already.
    let mut first_writer: BTreeMap<u64, (String, u64)> = BTreeMap::new();
    for c in checkpoints(&before) {
        let name = c["name"].as_str().unwrap().to_string();
        let first = ids(&c["replicas"])[0];
        if c["epoch"].as_u64() == Some(1) {
            assert_eq!(c["active"].as_u64(), Some(first), "{name}: {before:#}");
        }
        first_writer.insert(c["instance"].as_u64().unwrap(), (name, first));
    }
    for (probe, _, _) in &probe_specs[..2] {
        assert_eq!(find(&before, probe)["active"].as_u64(), Some(victim));
    }
    let moved: Vec<String> = checkpoints(&before)
        .iter()
        .filter(|c| c["active"].as_u64() == Some(victim))
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect();
    let moved_bench: Vec<String> = moved
        .iter()
        .filter(|n| n.starts_with("bench"))
        .cloned()
        .collect();
    assert!(
        !moved_bench.is_empty(),
        "node {victim} is active for no bench checkpoint: {before:#}"
    );
    eprintln!(
        "isolating node {victim}, active for {moved:?} ({:.1} s after the start)",
        started.elapsed().as_secs_f64()
    );

    let acked_before = acked_lines(&record).len();
    let accepted_before: u64 = others
        .iter()
        .flat_map(|o| [cluster.link(victim, *o), cluster.link(*o, victim)])
        .map(|link| link.accepted())
        .sum();
    let isolating = Instant::now();
    cluster.isolate(victim);
    let isolated = Instant::now();

    // (b) The majority fails the victim's checkpoints over: new active
    // replicas among the majority, a new epoch, the victim out of the
    // in-sync sets — and only once the victim's lease has expired.
    wait_on(
        &mut cluster,
        others[0],
        "the majority names new active replicas",
        |s| {
            moved.iter().all(|name| {
                let c = find(s, name);
                c["active"].as_u64().is_some_and(|a| others.contains(&a))
                    && c["epoch"].as_u64() > Some(1)
                    && !ids(&c["in_sync"]).contains(&victim)
            })
        },
    );
    let failover_after = isolating.elapsed();
    eprintln!("failover seen {failover_after:?} after the isolation");
    assert!(
        failover_after >= Duration::from_millis(LEASE_MS),
        "new active replicas were named {failover_after:?} after the isolation, before the old lease ({LEASE_MS} ms) could expire"
    );

    // (a) The victim's lease has expired (it ran from a request sent before
    // the isolation): from now on it must not acknowledge anything.
    while isolated.elapsed() < Duration::from_millis(LEASE_MS + 100) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let first_probes = probe_isolated(&rt, &probes, "after the failover");
    eprintln!("probes through the isolated node, after the failover: {first_probes:?}");

    // (b) Writes through the majority succeed, on the probes (as a client
    // retrying TRY_AGAIN does) and in the bench: every moved checkpoint has
    // more new acknowledgements than it has writers, so at least one came
    // from its new active replica.
    let majority = rt.block_on(Client::connect(&majority_addrs)).unwrap();
    for (probe, _, _) in &probe_specs {
        let checkpoint = rt
            .block_on(majority.open(&name(probe), None, rw()))
            .unwrap_or_else(|e| panic!("open {probe} through the majority: {e}"));
        rt.block_on(checkpoint.write(vec![we("p", 0, b"majority")]))
            .unwrap_or_else(|e| panic!("write {probe} through the majority: {e}"));
    }
    let resumed = wait_all_resume(
        &record,
        acked_before,
        &moved_bench,
        BENCH_CLIENTS / BENCH_CHECKPOINTS,
    );
    eprintln!(
        "bench writes to {moved_bench:?} resumed through the majority after another {resumed:?}"
    );
    // (a) again, now that the new active replicas are writing.
    let second_probes = probe_isolated(&rt, &probes, "while the majority writes");
    eprintln!("probes through the isolated node, while the majority writes: {second_probes:?}");
    let stale = status_of(&cluster, victim).expect("the isolated node answers /cluster");
    eprintln!(
        "the isolated node's own view of {}: active {}, epoch {}",
        moved[0],
        find(&stale, &moved[0])["active"],
        find(&stale, &moved[0])["epoch"]
    );

    // (c) Heal: the victim learns the new epochs, rejoins every in-sync
    // set as a backup, and the replicas converge.
    // While cut off, the nodes keep trying the links, each proxy accepting
    // and closing at once: they must back off as from a peer that is down,
    // not reconnect in a loop (at most a few attempts a second per link).
    let cut_links = |cluster: &ProxiedCluster| -> u64 {
        others
            .iter()
            .flat_map(|o| [cluster.link(victim, *o), cluster.link(*o, victim)])
            .map(|link| link.accepted())
            .sum()
    };
    let attempts = cut_links(&cluster) - accepted_before;
    let per_second = attempts as f64 / isolated.elapsed().as_secs_f64();
    eprintln!(
        "connection attempts on the 4 cut links while partitioned: {attempts} ({per_second:.1}/s)"
    );
    assert!(
        per_second < 40.0,
        "{attempts} connection attempts on the 4 cut links in {:?}: the nodes reconnect without backing off",
        isolated.elapsed()
    );
    cluster.heal(victim);
    let healed = Instant::now();
    wait_acks(
        &record,
        acked_lines(&record).len(),
        100,
        "writes go on after the heal",
    );
    // The old active node catches up and rejoins with the load still on:
    // its catch-up reads end where the entries appended meanwhile begin,
    // and it streams from there (before, every read came back a little
    // behind, and it never rejoined while the bench ran).
    let mut bench = Some(bench);
    let rejoined = |s: &Value| {
        is_settled(s, &[1, 2, 3])
            && moved
                .iter()
                .all(|name| find(s, name)["active"].as_u64() != Some(victim))
    };
    wait_on(
        &mut cluster,
        victim,
        "the healed node learns the new epochs",
        rejoined,
    );
    wait_on(
        &mut cluster,
        others[0],
        "the healed node rejoins as a backup",
        rejoined,
    );
    eprintln!(
        "node {victim} rejoined every in-sync set {:?} after the heal",
        healed.elapsed()
    );
    drop(bench.take());

    // (d) Nothing acknowledged was lost.
    let (acked, lost, wrong) = check_acked(&cluster.addrs(), &record);
    eprintln!("check-acked: {acked} acked, {lost} lost, {wrong} wrong");
    assert!(acked > 0);
    assert_eq!((lost, wrong), (0, 0), "ALL_SAFE lost acknowledged writes");
    let last = wait_on(&mut cluster, others[0], "the cluster settles", rejoined);
    wait_verified(&cluster);

    // (e) One ordering primary per epoch, from the WALs of the stopped nodes.
    let mut begun: BTreeMap<(u64, u64), BTreeSet<u64>> = BTreeMap::new();
    for id in 1..=3u64 {
        let server = cluster.nodes[(id - 1) as usize]
            .as_mut()
            .expect("node running");
        for line in server.drain_log() {
            if line.contains("epoch begun as active replica") {
                begun
                    .entry((number(line, "instance="), number(line, "epoch=")))
                    .or_default()
                    .insert(id);
            }
        }
    }
    for id in 1..=3u64 {
        let status = cluster.nodes[(id - 1) as usize]
            .as_mut()
            .expect("node running")
            .terminate();
        assert!(status.success(), "node {id} stopped with {status}");
    }
    let wals: Vec<(u64, Vec<Value>)> = (1..=3u64)
        .map(|id| (id, wal_entries(&cluster.data_dir(id))))
        .collect();
    check_one_writer_per_epoch(&wals, &first_writer, &begun, &last);
    eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());
}

/// The number after `key` in a log line (`instance=5`).
fn number(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key))
        .and_then(|v| v.trim_matches('"').parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

/// Every record of a stopped node's WAL, as `ckpt-tool wal --json` prints it.
fn wal_entries(data_dir: &Path) -> Vec<Value> {
    let output = tool(&["wal", "--json", "--data-dir", data_dir.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "ckpt-tool wal {}: {}",
        data_dir.display(),
        text(&output)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// (e): no epoch of any checkpoint had two ordering primaries.
///
/// A WAL entry does not name the node that ordered it; what identifies it
/// is its slot `(instance, epoch, seq)`, and a backup logs the active
/// replica's entry exactly as shipped (same timestamp, origin, kind and
/// body). So:
///
/// 1. For every slot, every copy on every node is the same entry (the
///    node-local envelope — segment, offset, lsn — aside). Two primaries in
///    one epoch would each order the next seq themselves, and their entries
///    would differ (timestamps at least) wherever both were logged. Snapshot
///    installs and suffix discards are left out: a node logs them itself,
///    at the position of the snapshot or the discard.
/// 2. Each epoch has one writer: epoch 1 the checkpoint's first replica
///    (its active replica at creation), every
///    later epoch the one node that logged "epoch begun as active replica"
///    for it — two nodes beginning one epoch fail here. The writer's own WAL
///    holds every entry of its epoch that any node holds: nothing in that
///    epoch was ordered by anyone else. (Nothing is trimmed from the WALs in
///    a run this short: one 64 MiB segment each.)
/// 3. The final active replica and epoch of each checkpoint, as the
///    control plane has them, are the ones its writer began.
fn check_one_writer_per_epoch(
    wals: &[(u64, Vec<Value>)],
    first_writer: &BTreeMap<u64, (String, u64)>,
    begun: &BTreeMap<(u64, u64), BTreeSet<u64>>,
    last: &Value,
) {
    const NODE_LOCAL: &[&str] = &[
        "SnapshotBegin",
        "SnapshotSection",
        "SnapshotEnd",
        "SuffixDiscard",
    ];
    // slot -> (the entry, the nodes holding it)
    let mut slots: BTreeMap<(u64, u64, u64), (Value, BTreeSet<u64>)> = BTreeMap::new();
    let mut by_node: BTreeMap<u64, BTreeSet<(u64, u64, u64)>> = BTreeMap::new();
    for (node, entries) in wals {
        for entry in entries {
            let kind = entry["kind"].as_str().unwrap_or_default();
            if NODE_LOCAL.contains(&kind) {
                continue;
            }
            let slot = (
                entry["instance"].as_u64().unwrap(),
                entry["epoch"].as_u64().unwrap(),
                entry["seq"].as_u64().unwrap(),
            );
            let mut content = entry.clone();
            for local in ["segment", "offset", "lsn", "checkpoint"] {
                content.as_object_mut().unwrap().remove(local);
            }
            let (first, holders) = slots
                .entry(slot)
                .or_insert_with(|| (content.clone(), BTreeSet::new()));
            assert_eq!(
                *first, content,
                "two different entries at (instance, epoch, seq) {slot:?}: one on node(s) {holders:?}, one on node {node}"
            );
            holders.insert(*node);
            by_node.entry(*node).or_default().insert(slot);
        }
    }
    let mut epochs: BTreeMap<(u64, u64), usize> = BTreeMap::new();
    for (instance, epoch, _) in slots.keys() {
        *epochs.entry((*instance, *epoch)).or_default() += 1;
    }
    for (&(instance, epoch), &count) in &epochs {
        let Some((name, creator)) = first_writer.get(&instance) else {
            panic!("instance {instance} is in the WALs but was not in /cluster");
        };
        let writer = if epoch == 1 {
            *creator
        } else {
            let nodes = begun.get(&(instance, epoch)).unwrap_or_else(|| {
                panic!(
                    "{name} (instance {instance}) has {count} entries in epoch {epoch} but no node logged beginning it (logs at info level needed)"
                )
            });
            assert_eq!(
                nodes.len(),
                1,
                "{name}: epoch {epoch} begun by nodes {nodes:?}"
            );
            *nodes.first().unwrap()
        };
        let own = by_node.get(&writer).cloned().unwrap_or_default();
        for ((i, e, seq), (entry, holders)) in
            slots.range((instance, epoch, 0)..=(instance, epoch, u64::MAX))
        {
            assert!(
                own.contains(&(*i, *e, *seq)),
                "{name} epoch {epoch} (written by node {writer}): entry {entry} on node(s) {holders:?} is not in node {writer}'s WAL — another node ordered it"
            );
        }
    }
    for c in checkpoints(last) {
        let name = c["name"].as_str().unwrap();
        let (instance, epoch) = (
            c["instance"].as_u64().unwrap(),
            c["epoch"].as_u64().unwrap(),
        );
        let active = c["active"].as_u64().unwrap();
        if epoch > 1 {
            assert_eq!(
                begun.get(&(instance, epoch)),
                Some(&BTreeSet::from([active])),
                "{name}: the control plane has node {active} active in epoch {epoch}"
            );
        }
    }
    eprintln!(
        "WALs: {} slots over {} (checkpoint, epoch) pairs, each written by one node; epochs begun: {begun:?}",
        slots.len(),
        epochs.len()
    );
}

/// An echo server on a free loopback port.
fn echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn round_trip(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    stream.write_all(bytes)?;
    let mut back = vec![0u8; bytes.len()];
    stream.read_exact(&mut back)?;
    Ok(back)
}

fn connect(proxy: &Proxy) -> TcpStream {
    let stream = TcpStream::connect(proxy.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// The proxy itself: forwards, cuts open and new connections while
/// partitioned, forwards again once healed, delays.
#[test]
fn the_proxy_forwards_partitions_heals_and_delays() {
    let proxy = Proxy::start(echo());
    let mut open = connect(&proxy);
    assert_eq!(round_trip(&mut open, b"hello").unwrap(), b"hello");
    assert_eq!(proxy.open_connections(), 1);
    proxy.partition();
    assert_eq!(proxy.open_connections(), 0);
    assert!(
        round_trip(&mut open, b"lost").is_err(),
        "an open connection is cut"
    );
    let mut refused = connect(&proxy);
    assert!(round_trip(&mut refused, b"lost").is_err(), "a new one too");
    proxy.heal();
    let mut again = connect(&proxy);
    assert_eq!(round_trip(&mut again, b"back").unwrap(), b"back");
    proxy.delay(100);
    let sent = Instant::now();
    assert_eq!(round_trip(&mut again, b"slow").unwrap(), b"slow");
    assert!(sent.elapsed() >= Duration::from_millis(100));
    drop(proxy);
    assert!(
        round_trip(&mut again, b"gone").is_err(),
        "dropped: everything closed"
    );
}

/// `--peer-via` refuses what cannot be right, naming the flag (exit 2).
#[test]
fn peer_via_is_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.toml");
    let mut nodes = String::new();
    for id in 1..=2 {
        nodes.push_str(&format!(
            "[[nodes]]\nid = {id}\nclient_addr = \"127.0.0.1:{}\"\npeer_addr = \"127.0.0.1:{}\"\nadmin_addr = \"127.0.0.1:{}\"\n",
            common::free_port(),
            common::free_port(),
            common::free_port()
        ));
    }
    std::fs::write(&file, nodes).unwrap();
    for (via, says) in [
        ("7=127.0.0.1:9000", "no [[nodes]] entry with id = 7"),
        ("1=127.0.0.1:9000", "this node"),
        ("2=nowhere", "not an IP:PORT address"),
    ] {
        let output = Command::new(bin("ckpt-server"))
            .args(["--config", file.to_str().unwrap(), "--node-id", "1"])
            .args(["--peer-via", via])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{via}: {stderr}");
        assert!(
            stderr.contains("--peer-via") && stderr.contains(says),
            "{via}: {stderr}"
        );
    }
}
