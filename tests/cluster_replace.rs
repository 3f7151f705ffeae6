//! Node replacement (issue #9, acceptance 4): node 3 of 3 is destroyed
//! (SIGKILL, data directory deleted) while `ckpt-tool bench` writes ALL_SAFE;
//! `ckpt-tool cluster remove-node --id 3` takes it out and places its
//! replicas elsewhere, a new node 4 started with `--join` and an empty data
//! directory is made a member with `cluster add-node`, and then:
//! - every checkpoint is back to 3 in-sync replicas, node 4 among them;
//! - `cluster status` shows none still filling;
//! - `cluster verify` finds the replicas identical;
//! - `check-acked` finds every acknowledged write.
//!
//! Refusals on the way are checked too: removing a live node, an unknown
//! one, adding a member twice.

#[path = "common/cluster.rs"]
mod cluster_helpers;
mod common;

use cluster_helpers::*;
use common::Cluster;

fn node_alive(status: &serde_json::Value, id: u64) -> Option<bool> {
    status["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["id"].as_u64() == Some(id))
        .map(|n| n["alive"].as_bool() == Some(true))
}

#[test]
fn a_destroyed_node_is_replaced_and_every_checkpoint_is_whole_again() {
    // Compactions every 8 Raft entries, off the driver, also while the new
    // node joins (a membership change compacts at once).
    let mut cluster = Cluster::start(3, "raft_compact_entries = 8");
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("acked.txt");
    let bench = Bench::start(
        &cluster.addrs(),
        &record,
        &[
            "--checkpoints",
            "8",
            "--clients",
            "16",
            "--size",
            "1024",
            "--mode",
            "active",
            "--all-safe",
        ],
    );
    wait_acks(&record, 0, 200, "bench starts writing");
    let before = wait_settled(&mut cluster, &[1, 2, 3]);
    let count = checkpoints(&before).len();
    assert!(count >= 8, "the bench's checkpoints exist: {before:#}");

    let (removed_live, text) = cluster_tool(&cluster.admins(), &["remove-node", "--id", "1"]);
    assert!(!removed_live, "a live node is not removed: {text}");
    assert!(text.contains("alive"), "the refusal says why: {text}");

    // Destroy node 3.
    cluster.kill(3);
    std::fs::remove_dir_all(cluster.data_dir(3)).expect("delete node 3's data");
    wait_status(&cluster, "node 3 declared dead", |s| {
        node_alive(s, 3) == Some(false)
    });
    let (removed, text) = cluster_tool(&cluster.admins(), &["remove-node", "--id", "3"]);
    assert!(removed, "remove-node 3: {text}");
    eprint!("remove-node 3: {text}");
    let (again, text) = cluster_tool(&cluster.admins(), &["remove-node", "--id", "3"]);
    assert!(!again && text.contains("not a member"), "{text}");
    let status = wait_status(&cluster, "node 3 gone from the members", |s| {
        node_alive(s, 3).is_none()
    });
    for c in checkpoints(&status) {
        assert!(
            !ids(&c["replicas"]).contains(&3) && !ids(&c["in_sync"]).contains(&3),
            "node 3 left every checkpoint: {c}"
        );
    }
    wait_acks(
        &record,
        acked_lines(&record).len(),
        100,
        "writes go on with two nodes",
    );

    // A new node joins.
    let (id, client, peer, admin) = cluster.start_joining();
    assert_eq!(id, 4);
    let add = [
        "add-node",
        "--id",
        "4",
        "--client-addr",
        &client,
        "--peer-addr",
        &peer,
        "--admin-addr",
        &admin,
    ];
    let (added, text) = cluster_tool(&cluster.admins(), &add);
    assert!(added, "add-node 4: {text}");
    eprint!("add-node 4: {text}");
    let (twice, text) = cluster_tool(&cluster.admins(), &add);
    assert!(!twice && text.contains("already a member"), "{text}");

    let whole = |s: &serde_json::Value| {
        node_alive(s, 4) == Some(true)
            && s["under_replicated"].as_u64() == Some(0)
            && checkpoints(s).len() == count
            && checkpoints(s).iter().all(|c| {
                let in_sync = ids(&c["in_sync"]);
                in_sync.len() == 3 && in_sync.contains(&4) && ids(&c["replicas"]).len() == 3
            })
    };
    let status = wait_status(&cluster, "every checkpoint in sync on 1, 2 and 4", whole);
    eprintln!(
        "replaced: {} checkpoints in sync on nodes 1, 2, 4 (leader {})",
        checkpoints(&status).len(),
        status["leader"]
    );
    wait_acks(
        &record,
        acked_lines(&record).len(),
        100,
        "writes go on with the new node",
    );
    drop(bench);
    if std::env::var_os("CKPT_REPLACE_LOGS").is_some() {
        dump_logs(&mut cluster, usize::MAX);
    }

    let (ok, text) = cluster_tool(&cluster.admins(), &["status"]);
    assert!(ok, "{text}");
    assert!(text.contains("0 filling"), "{text}");
    eprint!("{text}");
    assert!(!text.lines().any(|l| l.starts_with("  3\t")), "{text}");
    wait_settled(&mut cluster, &[1, 2, 4]);
    wait_verified(&cluster);
    let addrs = format!("{},{client}", cluster.client_addrs[..2].join(","));
    let (acked, lost, wrong) = check_acked(&addrs, &record);
    eprintln!("check-acked: {acked} acked, {lost} lost, {wrong} wrong");
    assert!(acked > 0);
    assert_eq!(
        (lost, wrong),
        (0, 0),
        "the replacement lost acknowledged writes"
    );

    // The membership is in the Raft log, not in the files (nodes 1 and 2
    // still list node 3): a whole-cluster restart comes back as 1, 2, 4.
    for id in [1, 2, 4] {
        cluster.kill(id);
    }
    for id in [1, 2, 4] {
        cluster.restart(id);
    }
    let status = wait_settled(&mut cluster, &[1, 2, 4]);
    assert!(
        node_alive(&status, 3).is_none() && whole(&status),
        "after the restart: {status:#}"
    );
    let (acked_after, lost, wrong) = check_acked(&addrs, &record);
    assert_eq!(
        (acked_after, lost, wrong),
        (acked, 0, 0),
        "after the restart"
    );
}
