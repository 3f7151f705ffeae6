//! The checkpoint API on a real 3-node cluster (issue #8): the cluster
//! file, routing to the active replica, exactly-once retries, COLLOCATED
//! checkpoints and ActiveReplicaSet, the DISTRIBUTED hot standby.

#[path = "common/client.rs"]
mod client_helpers;
#[path = "common/cluster.rs"]
mod cluster_helpers;
mod common;

use std::process::Command;

use ckpt_client::Client;
use ckpt_proto::wire::{Reply, Request, Response};
use ckpt_proto::{CreationAttributes, CreationFlags, ErrorCode, SectionId};
use client_helpers::*;
use cluster_helpers::*;
use common::{bin, Cluster, RawClient};

fn flags_attrs(flags: CreationFlags) -> CreationAttributes {
    CreationAttributes {
        creation_flags: flags,
        ..attrs()
    }
}

fn all_safe() -> CreationAttributes {
    flags_attrs(CreationFlags::WR_ACTIVE_REPLICA | CreationFlags::WR_ALL_SAFE)
}

/// Node `id`'s client address.
fn node(cluster: &Cluster, id: u64) -> String {
    cluster.client_addrs[(id - 1) as usize].clone()
}

/// `(active, in_sync)` of checkpoint `name` in `/cluster`.
/// A client that retries TRY_AGAIN for 60 s rather than 10: across a
/// failover on a loaded machine, the lease, the new epoch and the
/// reconnection can take longer than the default allows.
async fn patient_client(addrs: &str) -> Client {
    let options =
        ckpt_client::ClientOptions::new().try_again_timeout(std::time::Duration::from_secs(60));
    Client::connect_with_options(addrs, options).await.unwrap()
}

fn placement(cluster: &Cluster, name: &str) -> (Option<u64>, Vec<u64>) {
    let status = status(cluster).expect("a node answers /cluster");
    let c = checkpoints(&status)
        .into_iter()
        .find(|c| c["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("{name} not in /cluster: {status:#}"));
    (c["active"].as_u64(), ids(&c["in_sync"]))
}

#[test]
fn a_bad_cluster_file_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = "[[nodes]]\nid = 1\nclient_addr = \"127.0.0.1:17400\"\npeer_addr = \"127.0.0.1:17500\"\nadmin_addr = \"127.0.0.1:17401\"\n\
                 [[nodes]]\nid = 2\nclient_addr = \"127.0.0.1:17410\"\npeer_addr = \"127.0.0.1:17510\"\nadmin_addr = \"127.0.0.1:17411\"\n";
    let cases: &[(&str, &str, &str)] = &[
        (
            "replication_factor = 2\nmin_in_sync = 3\n",
            "1",
            "min_in_sync",
        ),
        ("", "7", "node-id"),
        ("lease_timeout_ms = \"soon\"\n", "1", "lease_timeout_ms"),
        ("colour = 3\n", "1", "colour"),
    ];
    for (extra, id, key) in cases {
        let file = dir.path().join("cluster.toml");
        std::fs::write(&file, format!("{extra}{nodes}")).unwrap();
        let output = Command::new(bin("ckpt-server"))
            .args(["--config", file.to_str().unwrap(), "--node-id", id])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{extra:?} was accepted");
        assert!(
            stderr.contains(key),
            "{extra:?}: the error does not name {key}: {stderr}"
        );
    }
    // Duplicate addresses.
    let file = dir.path().join("cluster.toml");
    std::fs::write(&file, nodes.replace("17510", "17500")).unwrap();
    let output = Command::new(bin("ckpt-server"))
        .args(["--config", file.to_str().unwrap(), "--node-id", "1"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("peer_addr"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_any_node_reach_every_replica_and_survive_its_active_dying() {
    let mut cluster = Cluster::start(3, "");
    let client = patient_client(&cluster.addrs()).await;
    let name = unique("replicated");
    let checkpoint = create(&client, &name, all_safe()).await;
    section(&checkpoint, "s", b"").await;
    for i in 0..50u32 {
        checkpoint
            .write(vec![we("s", 0, format!("value {i:04}").as_bytes())])
            .await
            .unwrap();
    }
    // ALL_SAFE creation waited for `min_in_sync` (2) replicas; the third
    // joins once it caught up, and the node answering /cluster may not
    // have applied that yet.
    let status = wait_status(&cluster, "every replica in sync", |status| {
        checkpoints(status)
            .iter()
            .any(|c| c["name"].as_str() == Some(&name.to_string()) && ids(&c["in_sync"]).len() == 3)
    });
    let active = checkpoints(&status)
        .into_iter()
        .find(|c| c["name"].as_str() == Some(&name.to_string()))
        .and_then(|c| c["active"].as_u64())
        .expect("an active replica");
    // Every node answers reads with the last acknowledged value.
    for id in 1..=3 {
        let reader = Client::connect(&node(&cluster, id)).await.unwrap();
        let opened = open(&reader, &name, rw()).await;
        assert_eq!(read_str(&opened, "s").await, b"value 0049", "node {id}");
    }
    cluster.kill(active);
    // The client retries across the failover; the write lands on the new
    // active replica.
    checkpoint
        .write(vec![we("s", 0, b"after 0001")])
        .await
        .unwrap();
    assert_eq!(read_str(&checkpoint, "s").await, b"after 0001");
    // The node answering /cluster may apply the failover after the new
    // active replica acknowledged the write.
    wait_status(&cluster, "a new active replica", |status| {
        checkpoints(status).iter().any(|c| {
            c["name"].as_str() == Some(&name.to_string())
                && c["active"].as_u64().is_some_and(|a| a != active)
        })
    });
    cluster.restart(active);
    wait_settled(&mut cluster, &[1, 2, 3]);
    wait_verified(&cluster);
}

/// Issue #8 acceptance 5: a write whose reply is lost is retried with its
/// number and applied once — SectionCreate does not answer ALREADY_EXIST,
/// a generated-id create returns the same id, a Write is not applied twice.
#[test]
fn a_retried_write_is_applied_once() {
    let cluster = Cluster::start(3, "");
    let session = 0x5eed_0001;
    let name = unique("once");
    let open = Request::Open {
        name: name.clone(),
        attributes: Some(all_safe()),
        flags: rwc(),
    };
    let handle_of = |response: Response| match response {
        Ok(Reply::Opened { handle, .. }) => handle,
        other => panic!("open: {other:?}"),
    };
    // TRY_AGAIN (a lease lapsing on a loaded machine) is retried with the
    // same number, as the client library does.
    let patient = |client: &mut RawClient, number: u64, request: &Request| -> Response {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            match client.call_as(number, request) {
                Err(error)
                    if error.code == ErrorCode::TryAgain
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                response => return response,
            }
        }
    };
    let mut first = RawClient::connect_session(&node(&cluster, 1), session);
    let handle = handle_of(patient(&mut first, 1, &open));
    let create = |handle| Request::SectionCreate {
        handle,
        attributes: forever("a"),
        initial_data: b"one".to_vec(),
    };
    let generate = |handle| Request::SectionCreate {
        handle,
        attributes: generated(),
        initial_data: b"gen".to_vec(),
    };
    assert_eq!(
        patient(&mut first, 2, &create(handle)),
        Ok(Reply::SectionCreated {
            section_id: sid("a")
        })
    );
    let generated_id: SectionId = match patient(&mut first, 3, &generate(handle)) {
        Ok(Reply::SectionCreated { section_id }) => section_id,
        other => panic!("generated create: {other:?}"),
    };
    // The connection is lost before the replies were read; the client
    // reconnects — to another node — and retries with the same numbers.
    drop(first);
    let mut retry = RawClient::connect_session(&node(&cluster, 2), session);
    let handle = handle_of(patient(&mut retry, 1, &open));
    assert_eq!(
        patient(&mut retry, 2, &create(handle)),
        Ok(Reply::SectionCreated {
            section_id: sid("a")
        }),
        "a retried SectionCreate answers its first outcome, not ALREADY_EXIST"
    );
    assert_eq!(
        patient(&mut retry, 3, &generate(handle)),
        Ok(Reply::SectionCreated {
            section_id: generated_id.clone()
        }),
        "a retried generated-id create returns the same id"
    );
    // A new request number is a new write.
    match patient(&mut retry, 4, &create(handle)) {
        Err(error) => assert_eq!(error.code, ErrorCode::AlreadyExist),
        other => panic!("a new create of an existing section: {other:?}"),
    }
    let sections = match patient(&mut retry, 5, &Request::StatusGet { handle }) {
        Ok(Reply::Status(status)) => status.number_of_sections,
        other => panic!("status: {other:?}"),
    };
    assert_eq!(sections, 2, "each create applied once");
}

/// Issue #8 acceptance 6, COLLOCATED: no writes before ActiveReplicaSet;
/// after the active node dies, none until ActiveReplicaSet on a survivor,
/// and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collocated_writes_wait_for_active_replica_set_on_a_surviving_node() {
    let mut cluster = Cluster::start(3, "");
    let name = unique("colloc");
    let attributes = flags_attrs(
        CreationFlags::WR_ACTIVE_REPLICA
            | CreationFlags::WR_ALL_SAFE
            | CreationFlags::CHECKPOINT_COLLOCATED,
    );
    let a = Client::connect(&node(&cluster, 1)).await.unwrap();
    let on_a = create(&a, &name, attributes).await;
    expect_code(
        on_a.section_create(forever("s"), b"x".to_vec()).await,
        ErrorCode::NotExist,
    );
    on_a.active_replica_set().await.unwrap();
    section(&on_a, "s", b"").await;
    for i in 0..20u32 {
        on_a.write(vec![we("s", 0, format!("v{i:03}").as_bytes())])
            .await
            .unwrap();
    }
    let b = Client::connect(&node(&cluster, 2)).await.unwrap();
    let on_b = open(&b, &name, rw()).await;
    cluster.kill(1);
    wait_status(
        &cluster,
        "the collocated checkpoint loses its active replica",
        |s| {
            checkpoints(s)
                .iter()
                .any(|c| c["name"].as_str() == Some(&name.to_string()) && c["active"].is_null())
        },
    );
    expect_code(
        on_b.write(vec![we("s", 0, b"nope")]).await,
        ErrorCode::NotExist,
    );
    on_b.active_replica_set().await.unwrap();
    assert_eq!(
        read_str(&on_b, "s").await,
        b"v019",
        "nothing acknowledged lost"
    );
    on_b.write(vec![we("s", 0, b"v100")]).await.unwrap();
    assert_eq!(read_str(&on_b, "s").await, b"v100");
}

/// Issue #8 acceptance 6, DISTRIBUTED hot standby: a subscriber on node B
/// sees every update written through node A, in order; after A dies, B
/// writes and nothing acknowledged is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_distributed_hot_standby_follows_in_order_and_takes_over() {
    let mut cluster = Cluster::start(3, "replication_factor = 2");
    let name = unique("standby");
    let attributes = flags_attrs(
        CreationFlags::WR_ACTIVE_REPLICA | CreationFlags::WR_ALL_SAFE | CreationFlags::DISTRIBUTED,
    );
    let a = Client::connect(&node(&cluster, 1)).await.unwrap();
    let writer = create(&a, &name, attributes).await;
    section(&writer, "s", b"").await;
    // Node 3 opens: DISTRIBUTED adds a replica there.
    let b = patient_client(&node(&cluster, 3)).await;
    let standby = open(&b, &name, rw()).await;
    let mut updates = standby.subscribe(None).await.unwrap();
    for i in 0..30u32 {
        writer
            .write(vec![we("s", 0, format!("u{i:03}").as_bytes())])
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    while seen.len() < 30 {
        let (seq, change) = next_update(&mut updates).await;
        if let ckpt_proto::wire::Change::Written { elements } = change {
            seen.push((seq, elements[0].data.clone()));
        }
    }
    for (i, (_, data)) in seen.iter().enumerate() {
        assert_eq!(
            data,
            format!("u{i:03}").as_bytes(),
            "in order, none missing"
        );
    }
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0));
    cluster.kill(1);
    standby.write(vec![we("s", 0, b"took over")]).await.unwrap();
    assert_eq!(read_str(&standby, "s").await, b"took over");
}

/// A backup that was down while writes went on catches up when it returns
/// and rejoins the in-sync set, also when no writes follow its return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_backup_catches_up_and_rejoins_the_in_sync_set() {
    let mut cluster = Cluster::start(3, "");
    let client = Client::connect(&node(&cluster, 1)).await.unwrap();
    let name = unique("rejoin");
    let checkpoint = create(&client, &name, all_safe()).await;
    section(&checkpoint, "s", b"").await;
    let (active, _) = placement(&cluster, &name.to_string());
    let backup = (1..=3).find(|n| Some(*n) != active).unwrap();
    for i in 0..100u32 {
        checkpoint
            .write(vec![we("s", 0, format!("a{i:04}").as_bytes())])
            .await
            .unwrap();
    }
    cluster.kill(backup);
    for i in 0..300u32 {
        checkpoint
            .write(vec![we("s", 0, format!("b{i:04}").as_bytes())])
            .await
            .unwrap();
    }
    // `/cluster?checkpoints=`: the summary alone, or the checkpoints
    // needing attention — this one, its backup down, and only it.
    let admin = cluster.admin_addrs[(active.unwrap() - 1) as usize].clone();
    let listed = |query: &str| -> serde_json::Value {
        let (code, body) = common::http_get(&admin, &format!("/cluster{query}"));
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    let names = |page: &serde_json::Value| -> Vec<String> {
        checkpoints(page)
            .iter()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect()
    };
    let unsettled = wait_status(&cluster, "the backup's failure seen", |status| {
        ids(&checkpoints(status)[0]["in_sync"]).len() == 2
    });
    assert_eq!(unsettled["under_replicated"], 1, "{unsettled:#}");
    let none = listed("?checkpoints=none");
    assert_eq!(
        (none["checkpoint_count"].as_u64(), names(&none).len()),
        (Some(1), 0),
        "{none:#}"
    );
    assert_eq!(none["listed"], "none");
    assert_eq!(
        names(&listed("?checkpoints=unsettled")),
        vec![name.to_string()]
    );
    assert_eq!(names(&listed("?checkpoints=all")), vec![name.to_string()]);
    let (code, body) = common::http_get(&admin, "/cluster?checkpoints=some");
    assert_eq!(code, 400);
    assert!(body.contains("expected all, none or unsettled"), "{body}");
    let (code, body) = common::http_get(&admin, "/cluster?colour=red");
    assert_eq!(code, 400);
    assert!(body.contains("colour"), "{body}");
    let tool = |listed: &str| -> String {
        let (ok, text) = cluster_tool(&admin, &["status", "--checkpoints", listed]);
        assert!(ok, "{text}");
        text
    };
    let text = tool("none");
    assert!(
        text.contains("checkpoints: 1 (0 fully replicated, 1 filling)"),
        "{text}"
    );
    assert!(!text.contains(&name.to_string()), "{text}");
    let text = tool("unsettled");
    assert!(text.contains("needing attention"), "{text}");
    assert!(text.contains(&format!("{name}\tinstance")), "{text}");

    cluster.restart(backup);
    wait_settled(&mut cluster, &[1, 2, 3]);
    wait_verified(&cluster);
    // Settled: nothing needs attention.
    let settled = wait_status(&cluster, "nothing behind", |status| {
        checkpoints(status)[0]["lag"]
            .as_array()
            .is_some_and(|lag| lag.iter().all(|l| l["records"] == 0))
    });
    assert_eq!(settled["under_replicated"], 0);
    let quiet = listed("?checkpoints=unsettled");
    assert_eq!(names(&quiet), Vec::<String>::new(), "{quiet:#}");
}

/// An active replica that restarts before anyone fails it over may have
/// lost entries a backup holds (a power cut): it must resume in a new epoch,
/// never in the one it had. The lease is long here so that no failover can
/// be what raises the epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_replica_restarted_before_any_failover_resumes_in_a_new_epoch() {
    let mut cluster = Cluster::start(3, "lease_timeout_ms = 20000");
    let name = unique("restart-epoch");
    let epoch_of = |cluster: &Cluster| -> (Option<u64>, u64) {
        let status = status(cluster).expect("a node answers /cluster");
        let c = checkpoints(&status)
            .into_iter()
            .find(|c| c["name"].as_str() == Some(&name.to_string()))
            .expect("the checkpoint is listed");
        (c["active"].as_u64(), c["epoch"].as_u64().unwrap_or(0))
    };
    {
        let client = Client::connect(&node(&cluster, 1)).await.unwrap();
        let checkpoint = create(&client, &name, all_safe()).await;
        section(&checkpoint, "s", b"before").await;
    }
    let (active, epoch) = epoch_of(&cluster);
    assert_eq!(active, Some(1), "the creator is the active replica");
    cluster.kill(1);
    cluster.restart(1);
    let raised = wait_status(
        &cluster,
        "the restarted active replica takes a new epoch",
        |s| {
            checkpoints(s).iter().any(|c| {
                c["name"].as_str() == Some(&name.to_string())
                    && c["epoch"].as_u64().is_some_and(|e| e > epoch)
            })
        },
    );
    assert!(!checkpoints(&raised).is_empty());
    let client = Client::connect(&cluster.addrs()).await.unwrap();
    let checkpoint = open(&client, &name, rw()).await;
    assert_eq!(read_str(&checkpoint, "s").await, b"before");
    checkpoint.write(vec![we("s", 0, b"AFTER!")]).await.unwrap();
    assert_eq!(read_str(&checkpoint, "s").await, b"AFTER!");
}

/// A WR_ACTIVE_REPLICA checkpoint created through node 1 with one section
/// `s` written, once every replica is in sync: the client, the checkpoint,
/// its name, its active replica and its in-sync set.
async fn settled_active_checkpoint(
    cluster: &mut Cluster,
    tag: &str,
) -> (
    Client,
    ckpt_client::Checkpoint,
    ckpt_proto::CheckpointName,
    u64,
    Vec<u64>,
) {
    let client = Client::connect(&node(cluster, 1)).await.unwrap();
    let name = unique(tag);
    let checkpoint = create(
        &client,
        &name,
        flags_attrs(CreationFlags::WR_ACTIVE_REPLICA),
    )
    .await;
    section(&checkpoint, "s", b"").await;
    checkpoint.write(vec![we("s", 0, b"first")]).await.unwrap();
    wait_settled(cluster, &[1, 2, 3]);
    let (active, in_sync) = placement(cluster, &name.to_string());
    (
        client,
        checkpoint,
        name,
        active.expect("an active replica"),
        in_sync,
    )
}

/// DESIGN.md §4: WR_ACTIVE_REPLICA's lag "is bounded". With a bound of 4
/// records and one in-sync backup stopped (SIGSTOP; its lag timeout and the
/// leases long enough that it stays in the in-sync set meanwhile), ACTIVE
/// writes go on until they are 4 records ahead of it, then wait — the
/// active replica's `ckpt_replication_writes_held_by_lag` shows them — and
/// complete once it runs again; the gauge then goes back to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_writes_wait_past_the_lag_bound_for_a_stopped_in_sync_backup() {
    let mut cluster = Cluster::start(
        3,
        "replica_lag_records_max = 4\nreplica_lag_timeout_ms = 600000\nlease_timeout_ms = 60000",
    );
    let (_client, checkpoint, _, active, in_sync) =
        settled_active_checkpoint(&mut cluster, "lag-bound").await;
    let backup = in_sync.into_iter().find(|n| *n != active).unwrap();
    let pid = cluster.nodes[(backup - 1) as usize]
        .as_ref()
        .expect("the backup runs")
        .pid()
        .to_string();
    let signal = |sig: &str| {
        let status = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(status.success(), "kill {sig} {pid}");
    };
    signal("-STOP");
    let writer = tokio::spawn(async move {
        for i in 0..20u32 {
            checkpoint
                .write(vec![we("s", 0, format!("w{i:04}").as_bytes())])
                .await
                .unwrap();
        }
    });
    let held = |cluster: &Cluster| -> u64 {
        let (_, body) = common::http_get(&cluster.admin_addrs[(active - 1) as usize], "/metrics");
        body.lines()
            .filter(|l| l.starts_with("ckpt_replication_writes_held_by_lag{"))
            .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<u64>().ok())
            .sum()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while held(&cluster) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no write was held back while backup {backup} was stopped"
        );
        assert!(
            !writer.is_finished(),
            "all 20 writes were answered while backup {backup} was stopped"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(!writer.is_finished());
    signal("-CONT");
    tokio::time::timeout(std::time::Duration::from_secs(60), writer)
        .await
        .expect("the held writes were answered once the backup ran again")
        .unwrap();
    // The gauge follows back down (it is refreshed only for checkpoints
    // that changed: this one settles after its last change).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while held(&cluster) != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "writes still shown held after every one was answered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The per-checkpoint gauges of the active replica (lag, in-sync set size,
/// writes held) name only checkpoints it is active for now: a deleted
/// checkpoint's series go, rather than show its last values forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_checkpoints_replication_gauges_are_dropped() {
    let mut cluster = Cluster::start(3, "");
    let (client, checkpoint, name, _, _) = settled_active_checkpoint(&mut cluster, "gauges").await;
    // Every node's: on a loaded machine a lease expiry can move the active
    // replica meanwhile, and the series move with it.
    let admins = cluster.admin_addrs.clone();
    let series = || -> Vec<String> {
        admins
            .iter()
            .flat_map(|admin| {
                let (_, body) = common::http_get(admin, "/metrics");
                body.lines()
                    .filter(|l| {
                        l.starts_with("ckpt_replication_lag_records{")
                            || l.starts_with("ckpt_replication_lag_bytes{")
                            || l.starts_with("ckpt_in_sync_replicas{")
                            || l.starts_with("ckpt_replication_writes_held_by_lag{")
                    })
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let wait_for = |what: &str, done: &dyn Fn(&[String]) -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let now = series();
            if done(&now) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what}; the active replica shows {now:#?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    // Two lag series per backup, an in-sync size and a held count, on the
    // active replica only.
    wait_for("the checkpoint's gauges never appeared", &|s| s.len() == 6);
    checkpoint.close().await.unwrap();
    client.delete(&name).await.unwrap();
    wait_for("the deleted checkpoint's gauges stayed", &|s| s.is_empty());
}

/// A dump can be taken from a cluster node, but not yet restored into a
/// cluster (docs/replication.md, "Not yet"): the refusal says so, and where
/// a dump can be restored, instead of pointing at a way that does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_into_a_cluster_is_refused_saying_where_a_dump_restores() {
    let mut cluster = Cluster::start(3, "");
    let (_client, _checkpoint, name, _, _) =
        settled_active_checkpoint(&mut cluster, "dumped").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("one.ckd");
    let addr = node(&cluster, 1);
    let dump = Command::new(bin("ckpt-tool"))
        .args(["dump", &name.to_string(), "-o"])
        .arg(&file)
        .args(["--addr", &addr])
        .output()
        .unwrap();
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let restore = Command::new(bin("ckpt-tool"))
        .arg("restore")
        .arg(&file)
        .args(["--rename", &format!("{name}={name}-copy"), "--addr", &addr])
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&restore.stdout),
        String::from_utf8_lossy(&restore.stderr)
    );
    assert!(!restore.status.success(), "{said}");
    assert!(
        said.contains("not supported on a cluster") && said.contains("single-node server"),
        "{said}"
    );
}
