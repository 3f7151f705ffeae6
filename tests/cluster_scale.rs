//! Failover at scale (issue #9, acceptance 5): checkpoints spread over 3
//! nodes (each created through the node that becomes its active replica),
//! the node active for a third of them is SIGKILLed, and every one of those
//! is written until it accepts again. Reports the time from the kill to the
//! last checkpoint accepting a write, the median, and the size of the
//! control plane's Raft log on the survivors.
//!
//! `CKPT_SCALE_CHECKPOINTS` sets the count (default 300 in `make test`;
//! the figure is 10,000).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ckpt_client::{Checkpoint, Client, ClientOptions};
use ckpt_proto::{
    CheckpointName, CreationAttributes, CreationFlags, OpenFlags, SectionId, TIME_END,
};
use common::Cluster;
use futures::stream::{self, StreamExt};
use serde_json::Value;

const VICTIM: u64 = 3;
/// Requests in flight at once, per phase.
const CONCURRENCY: usize = 64;

fn count() -> usize {
    std::env::var("CKPT_SCALE_CHECKPOINTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300)
}

fn name(k: usize) -> CheckpointName {
    CheckpointName::new(format!("scale-{k}")).expect("a valid name")
}

fn attributes() -> CreationAttributes {
    CreationAttributes {
        creation_flags: CreationFlags::WR_ACTIVE_REPLICA | CreationFlags::WR_ALL_SAFE,
        checkpoint_size: 1024,
        retention_duration_ns: TIME_END,
        max_sections: 1,
        max_section_size: 1024,
        max_section_id_size: 0,
    }
}

/// Bytes under `dir`, recursively.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Active replica of every checkpoint, from a survivor's `/cluster`.
fn actives(cluster: &Cluster, from: u64) -> BTreeMap<String, Option<u64>> {
    let (_, body) = common::http_get(&cluster.admin_addrs[(from - 1) as usize], "/cluster");
    let status: Value = serde_json::from_str(&body).expect("/cluster is JSON");
    status["checkpoints"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter_map(|c| Some((c["name"].as_str()?.to_string(), c["active"].as_u64())))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_checkpoint_of_a_killed_node_accepts_writes_again() {
    let n = count();
    let mut cluster = Cluster::start(3, "");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let addrs: Vec<String> = cluster.client_addrs.clone();
    let started = Instant::now();
    let handles: Vec<Checkpoint> = runtime.block_on(async {
        // One client per node: checkpoint k is created through node k % 3 + 1.
        // Patient: on a loaded machine a lease can lapse mid-run, and the
        // creates retry across the failover it brings.
        let options = ClientOptions::new().try_again_timeout(Duration::from_secs(60));
        let mut creators = Vec::new();
        for addr in &addrs {
            creators.push(Arc::new(
                Client::connect_with_options(addr, options.clone())
                    .await
                    .expect("connect"),
            ));
        }
        let created: Vec<()> = stream::iter(0..n)
            .map(|k| {
                let creator = creators[k % 3].clone();
                async move {
                    let checkpoint = creator
                        .open(
                            &name(k),
                            Some(attributes()),
                            OpenFlags::CREATE | OpenFlags::WRITE,
                        )
                        .await
                        .unwrap_or_else(|e| panic!("create scale-{k}: {e}"));
                    checkpoint
                        .section_overwrite(&SectionId::DEFAULT, b"created".to_vec())
                        .await
                        .unwrap_or_else(|e| panic!("first write of scale-{k}: {e}"));
                    checkpoint.close().await.expect("close");
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        assert_eq!(created.len(), n);
        // The writer reaches the cluster through node 1, which survives.
        let options = ClientOptions::new().try_again_timeout(Duration::from_secs(60));
        let writer = Client::connect_with_options(&addrs[0], options)
            .await
            .expect("connect");
        let writer = Arc::new(writer);
        stream::iter(0..n)
            .map(|k| {
                let writer = writer.clone();
                async move {
                    writer
                        .open(&name(k), None, OpenFlags::WRITE)
                        .await
                        .unwrap_or_else(|e| panic!("open scale-{k}: {e}"))
                }
            })
            .buffered(CONCURRENCY)
            .collect()
            .await
    });
    eprintln!(
        "{n} checkpoints created, written and opened in {:?}",
        started.elapsed()
    );
    let before = actives(&cluster, 1);
    let victims: Vec<usize> = (0..n)
        .filter(|k| before.get(&format!("scale-{k}")) == Some(&Some(VICTIM)))
        .collect();
    // Placement spreads the active replicas (a third each here), but a
    // lease that lapsed during the creates on a loaded machine moves some:
    // only their presence is needed.
    eprintln!("node {VICTIM} is active for {} of {n}", victims.len());
    assert!(!victims.is_empty(), "node {VICTIM} is active for none");
    let raft_before: Vec<u64> = (1..=3)
        .map(|id| dir_bytes(&cluster.data_dir(id).join("raft")))
        .collect();

    cluster.kill(VICTIM);
    let killed = Instant::now();
    let handles = Arc::new(handles);
    let mut accepted: Vec<(Duration, usize, Vec<String>)> = runtime.block_on(async {
        stream::iter(victims.clone())
            .map(|k| {
                let handles = handles.clone();
                async move {
                    // What each refused attempt answered, and when.
                    let mut refusals = Vec::new();
                    loop {
                        let sent = killed.elapsed();
                        match handles[k]
                            .section_overwrite(&SectionId::DEFAULT, b"after".to_vec())
                            .await
                        {
                            Ok(_) => return (killed.elapsed(), k, refusals),
                            Err(e) => {
                                assert!(
                                    killed.elapsed() < Duration::from_secs(120),
                                    "scale-{k} still refuses writes: {e}"
                                );
                                refusals.push(format!("{sent:?}..{:?}: {e}", killed.elapsed()));
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    }
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await
    });
    accepted.sort();
    let at = |q: usize| accepted[(accepted.len() - 1) * q / 100].0;
    let (last, slowest, refusals) = accepted
        .last()
        .cloned()
        .expect("some checkpoints were on the victim");
    let median = at(50);
    eprintln!(
        "accepting again after: p50 {median:?}, p90 {:?}, p99 {:?}, max {last:?} (scale-{slowest}, refused {refusals:?})",
        at(90),
        at(99)
    );
    let after = actives(&cluster, 1);
    assert!(
        victims
            .iter()
            .all(|k| matches!(after.get(&format!("scale-{k}")), Some(Some(a)) if *a != VICTIM)),
        "a checkpoint is still active on the killed node"
    );
    let raft_after: Vec<u64> = (1..=2)
        .map(|id| dir_bytes(&cluster.data_dir(id).join("raft")))
        .collect();
    eprintln!(
        "node {VICTIM} (active for {} of {n}) killed: every one accepts writes again after {last:?} (median {median:?}); \
         Raft log bytes before {raft_before:?}, survivors after {raft_after:?}",
        victims.len()
    );
    if std::env::var_os("CKPT_SCALE_LOGS").is_some() {
        for (i, server) in cluster.nodes.iter_mut().enumerate() {
            if let Some(server) = server {
                for line in server.drain_log() {
                    eprintln!("node {}: {line}", i + 1);
                }
            }
        }
    }
    // A generous bound for a loaded 2-core CI box; the figure to report is
    // printed above (the target is 5 s for 10,000).
    assert!(last < Duration::from_secs(60), "{last:?}");
}
