//! Three cluster runtimes in one process: real stores in temporary
//! directories, real peer connections on loopback ports.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use ckpt_proto::{
    CheckpointName, CkptResult, CreationAttributes, CreationFlags, ErrorCode, ReadElement,
    SectionCreationAttributes, SectionId, WriteElement, TIME_END,
};
use ckpt_replication::config::{ClusterConfig, NodeConfig};
use ckpt_replication::data::Need;
use ckpt_replication::NodeId;
use ckpt_storage::{InstanceId, Op, Origin, Outcome, Store, StoreConfig};
use tokio_util::sync::CancellationToken;

use super::runtime::Cluster;
use crate::front::WriteOrigin;
use crate::reads::{ReadReply, ReadRequest};

/// Conditions are waited for up to this long, never slept for.
const DEADLINE: Duration = Duration::from_secs(30);

fn free_addr() -> SocketAddr {
    // Bound and released: nothing else on loopback takes it meanwhile in
    // practice, and the runtime binds it again at once.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

struct Node {
    id: NodeId,
    cluster: Arc<Cluster>,
    store: Arc<Store>,
    shutdown: CancellationToken,
    registry: prometheus::Registry,
    _dir: tempfile::TempDir,
}

impl Node {
    /// The value of an unlabelled counter or gauge the runtime registered.
    fn metric(&self, name: &str) -> f64 {
        let family = self
            .registry
            .gather()
            .into_iter()
            .find(|f| f.name() == name)
            .unwrap_or_else(|| panic!("no metric {name}"));
        let metric = &family.get_metric()[0];
        match family.get_field_type() {
            prometheus::proto::MetricType::COUNTER => metric.get_counter().get_value(),
            _ => metric.get_gauge().get_value(),
        }
    }
}

fn config(ids: &[NodeId]) -> ClusterConfig {
    ClusterConfig {
        cluster_name: ckpt_replication::config::CLUSTER_NAME_DEFAULT.to_string(),
        join: false,
        replication_factor: 3,
        min_in_sync: 2,
        replica_lag_timeout_ms: 1000,
        replica_lag_records_max: ckpt_replication::data::LAG_RECORDS_MAX_DEFAULT,
        lease_timeout_ms: 600,
        tick_ms: 10,
        placement_avoid_creator: false,
        checkpoint_metrics: true,
        // Compactions (off the driver, raft.snap) in every test here.
        raft_compact_entries: 16,
        nodes: ids
            .iter()
            .map(|id| NodeConfig {
                id: *id,
                client_addr: free_addr(),
                peer_addr: free_addr(),
                admin_addr: free_addr(),
            })
            .collect(),
    }
}

async fn start(config: &ClusterConfig, id: NodeId) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let store_config = StoreConfig::new(dir.path().join("data"));
    let store = Arc::new(
        tokio::task::spawn_blocking(move || Store::open(store_config))
            .await
            .unwrap()
            .unwrap(),
    );
    let shutdown = CancellationToken::new();
    let registry = prometheus::Registry::new();
    let cluster = Cluster::start(
        config.clone(),
        id,
        &std::collections::BTreeMap::new(),
        store.clone(),
        &dir.path().join("raft"),
        &registry,
        shutdown.clone(),
    )
    .await
    .unwrap();
    Node {
        id,
        cluster,
        store,
        shutdown,
        registry,
        _dir: dir,
    }
}

/// Every node of `config`, started.
async fn start_all(config: &ClusterConfig) -> Vec<Node> {
    let mut nodes = Vec::new();
    for node in &config.nodes {
        nodes.push(start(config, node.id).await);
    }
    nodes
}

/// The runtimes' info lines in the test's output (shown when it fails).
fn log_to_test_output() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_test_writer()
        .try_init();
}

/// Retries `attempt` while it answers TRY_AGAIN, until [`DEADLINE`].
async fn retrying<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = CkptResult<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(error) if error.code == ErrorCode::TryAgain => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{what}: still TRY_AGAIN at the deadline: {error}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("{what}: {error}"),
        }
    }
}

/// Waits until `done`, for up to [`DEADLINE`].
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn all_safe() -> CreationAttributes {
    CreationAttributes {
        creation_flags: CreationFlags::WR_ACTIVE_REPLICA | CreationFlags::WR_ALL_SAFE,
        checkpoint_size: 1 << 20,
        retention_duration_ns: TIME_END,
        max_sections: 16,
        max_section_size: 1 << 16,
        max_section_id_size: 16,
    }
}

fn section(name: &str) -> SectionId {
    SectionId::new(name.as_bytes().to_vec())
}

async fn read_local(node: &Node, instance: InstanceId, id: &SectionId) -> Vec<u8> {
    let request = ReadRequest::Read {
        elements: vec![ReadElement {
            section_id: id.clone(),
            offset: 0,
            size: None,
        }],
    };
    match node.cluster.read(instance, request, true).await.unwrap() {
        ReadReply::Data(mut data) => data.remove(0),
        other => panic!("unexpected reply {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_safe_writes_reach_every_replica_and_survive_the_active_node() {
    log_to_test_output();
    let ids = [1, 2, 3];
    let config = config(&ids);
    let mut nodes = start_all(&config).await;
    let name = CheckpointName::new("replicated").unwrap();
    let attempts = std::cell::Cell::new(0_u32);
    let (instance, created) = retrying("create", || {
        attempts.set(attempts.get() + 1);
        nodes[0].cluster.create(name.clone(), all_safe(), None)
    })
    .await;
    // An attempt that answered TRY_AGAIN (a leader change or a lease expiry
    // on a loaded machine) may still have created it: the next one then
    // opens the checkpoint that attempt created.
    assert!(
        created || attempts.get() > 1,
        "the only attempt found the checkpoint already there"
    );
    assert_eq!(
        nodes[0]
            .cluster
            .state()
            .lookup(&name)
            .map(|meta| meta.instance),
        Some(instance)
    );
    let meta = nodes[0].cluster.state().get(instance).cloned().unwrap();
    assert_eq!(meta.replicas.len(), 3, "{meta:?}");
    let active = meta
        .active
        .expect("a non-collocated checkpoint has an active replica");

    // Written through a node that is not the active replica: forwarded.
    let writer = nodes.iter().find(|n| n.id != active).unwrap();
    // Opening by name on another node finds it (asking the leader if this
    // node has not applied the creation yet).
    let found = retrying("lookup", || writer.cluster.lookup(&name)).await;
    assert_eq!(found, instance);
    let id = section("s1");
    let outcome = retrying("section create", || {
        writer.cluster.write(
            instance,
            Op::CreateSection {
                instance,
                attributes: SectionCreationAttributes {
                    section_id: Some(id.clone()),
                    expiration_time: TIME_END,
                },
                data: b"first".to_vec(),
            },
            Some(Origin {
                session: 7,
                request: 1,
            }),
            Need::AllInSync,
        )
    })
    .await;
    assert_eq!(
        outcome,
        Outcome::SectionCreated {
            section_id: id.clone()
        }
    );
    retrying("write", || {
        writer.cluster.write(
            instance,
            Op::Write {
                instance,
                elements: vec![WriteElement {
                    section_id: id.clone(),
                    offset: 5,
                    data: b"+second".to_vec(),
                }],
            },
            Some(Origin {
                session: 7,
                request: 2,
            }),
            Need::AllInSync,
        )
    })
    .await;
    // ALL_SAFE: acknowledged means on every in-sync replica, so each
    // in-sync replica's own copy has it now, without waiting. (A new
    // checkpoint's in-sync set starts with its active replica; a backup
    // joins once it holds the creation, and creation waited for
    // `min_in_sync` of them.)
    let in_sync = {
        let active_node = nodes.iter().find(|n| n.id == active).unwrap();
        active_node
            .cluster
            .state()
            .get(instance)
            .unwrap()
            .in_sync
            .clone()
    };
    assert!(in_sync.len() >= 2, "in sync: {in_sync:?}");
    for node in nodes.iter().filter(|n| in_sync.contains(&n.id)) {
        assert_eq!(
            read_local(node, instance, &id).await,
            b"first+second",
            "node {}",
            node.id
        );
    }
    // The third replica catches up and joins the set.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while nodes[0]
        .cluster
        .state()
        .get(instance)
        .unwrap()
        .in_sync
        .len()
        < 3
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the third replica never joined the in-sync set"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for node in &nodes {
        assert_eq!(
            read_local(node, instance, &id).await,
            b"first+second",
            "node {}",
            node.id
        );
    }

    // The active node dies.
    let victim = nodes.iter().position(|n| n.id == active).unwrap();
    let dead = nodes.remove(victim);
    dead.shutdown.cancel();
    let started = std::time::Instant::now();
    let survivor = &nodes[0];
    retrying("write after failover", || {
        survivor.cluster.write(
            instance,
            Op::Write {
                instance,
                elements: vec![WriteElement {
                    section_id: id.clone(),
                    offset: 0,
                    data: b"FIRST".to_vec(),
                }],
            },
            Some(Origin {
                session: 7,
                request: 3,
            }),
            Need::AllInSync,
        )
    })
    .await;
    let pause = started.elapsed();
    let meta = survivor.cluster.state().get(instance).cloned().unwrap();
    assert_ne!(meta.active, Some(active), "{meta:?}");
    assert!(meta.epoch.0 > 1, "failover bumps the epoch: {meta:?}");
    for node in &nodes {
        assert_eq!(
            read_local(node, instance, &id).await,
            b"FIRST+second",
            "node {} after failover",
            node.id
        );
    }
    eprintln!("writes resumed {pause:?} after the active node stopped");
    drop(dead);
    for node in &nodes {
        node.shutdown.cancel();
        let _ = node.store.stats();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backup_leaves_the_in_sync_set_and_all_safe_writes_go_on() {
    log_to_test_output();
    let ids = [1, 2, 3];
    let config = config(&ids);
    let mut nodes = start_all(&config).await;
    let name = CheckpointName::new("backup-dies").unwrap();
    let (instance, _) = retrying("create", || {
        nodes[0].cluster.create(name.clone(), all_safe(), None)
    })
    .await;
    let meta = nodes[0].cluster.state().get(instance).cloned().unwrap();
    let active = meta.active.unwrap();
    let id = section("s");
    let write = |node: &Node, data: &'static [u8]| {
        let cluster = node.cluster.clone();
        let id = id.clone();
        async move {
            cluster
                .write(
                    instance,
                    Op::Overwrite {
                        instance,
                        section_id: id,
                        data: data.to_vec(),
                    },
                    Some(Origin {
                        session: 7,
                        request: 5,
                    }),
                    Need::AllInSync,
                )
                .await
        }
    };
    let primary = nodes.iter().find(|n| n.id == active).unwrap();
    retrying("section create", || {
        primary.cluster.write(
            instance,
            Op::CreateSection {
                instance,
                attributes: SectionCreationAttributes {
                    section_id: Some(id.clone()),
                    expiration_time: TIME_END,
                },
                data: b"one".to_vec(),
            },
            Some(Origin {
                session: 7,
                request: 4,
            }),
            Need::AllInSync,
        )
    })
    .await;
    // A backup dies: the next ALL_SAFE write is answered once the control
    // plane removed it from the in-sync set (never before).
    let victim = nodes.iter().position(|n| n.id != active).unwrap();
    let dead = nodes.remove(victim);
    dead.shutdown.cancel();
    let primary = nodes.iter().find(|n| n.id == active).unwrap();
    retrying("write without the dead backup", || write(primary, b"two")).await;
    let meta = primary.cluster.state().get(instance).cloned().unwrap();
    assert!(!meta.in_sync.contains(&dead.id), "{meta:?}");
    // The active replica stays, unless its lease lapsed meanwhile (the
    // dead backup may have been the Raft leader: an election follows).
    assert!(
        meta.active.is_some_and(|a| a != dead.id),
        "an active replica that runs: {meta:?}"
    );
    for node in &nodes {
        assert_eq!(
            read_local(node, instance, &id).await,
            b"two",
            "node {}",
            node.id
        );
    }
    for node in &nodes {
        node.shutdown.cancel();
    }
}

/// A create whose checkpoint was made but did not become writable in time
/// answers TRY_AGAIN; the client's retry, with the same request, is told
/// it created the checkpoint (its first outcome), not that it found one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_retried_after_try_again_is_answered_as_created() {
    log_to_test_output();
    let ids = [1, 2, 3];
    let mut config = config(&ids);
    // Writable only once all three replicas are in sync: with node 3 not
    // started, the first attempt times out after the Create applied.
    config.min_in_sync = 3;
    let mut nodes = vec![start(&config, 1).await, start(&config, 2).await];
    let name = CheckpointName::new("retried-create").unwrap();
    let origin = Some(WriteOrigin {
        session: 11,
        request: 1,
    });
    let first = loop {
        match nodes[0]
            .cluster
            .create(name.clone(), all_safe(), origin)
            .await
        {
            Err(error) if error.code == ErrorCode::TryAgain => {
                if nodes[0].cluster.state().lookup(&name).is_some() {
                    break error;
                }
                // Refused before the Create applied (no leader yet).
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("node 3 is down, yet the create answered {other:?}"),
        }
    };
    eprintln!("first attempt: {first}");
    nodes.push(start(&config, 3).await);
    let (instance, created) = retrying("retried create", || {
        nodes[0].cluster.create(name.clone(), all_safe(), origin)
    })
    .await;
    assert!(created, "the retry of the request that created it");
    assert_eq!(
        nodes[0].cluster.state().lookup(&name).map(|m| m.instance),
        Some(instance)
    );
    // Another request finds it.
    let other = Some(WriteOrigin {
        session: 12,
        request: 1,
    });
    let (again, created) = retrying("another create", || {
        nodes[0].cluster.create(name.clone(), all_safe(), other)
    })
    .await;
    assert_eq!(again, instance);
    assert!(!created, "another request opens the existing checkpoint");
    for node in &nodes {
        node.shutdown.cancel();
    }
}

/// A failover changes every checkpoint at once (with three nodes each has a
/// replica on the dead one); the runtime acts on a slice of them per pass
/// (two in these tests), so that Raft's ticks and the lease go on between.
/// The ALL_SAFE writes acknowledged before survive, and every checkpoint
/// takes writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_acted_on_over_several_passes_keeps_every_acknowledged_write() {
    log_to_test_output();
    let ids = [1, 2, 3];
    let config = config(&ids);
    let mut nodes = start_all(&config).await;
    let id = section("s");
    let origin = |request| {
        Some(Origin {
            session: 11,
            request,
        })
    };
    let mut instances = Vec::new();
    for i in 0..6_u64 {
        let name = CheckpointName::new(format!("spread{i}")).unwrap();
        let (instance, _) = retrying("create", || {
            nodes[0].cluster.create(name.clone(), all_safe(), None)
        })
        .await;
        retrying("section create", || {
            nodes[0].cluster.write(
                instance,
                Op::CreateSection {
                    instance,
                    attributes: SectionCreationAttributes {
                        section_id: Some(id.clone()),
                        expiration_time: TIME_END,
                    },
                    data: format!("one-{i}").into_bytes(),
                },
                origin(2 * i),
                Need::AllInSync,
            )
        })
        .await;
        instances.push(instance);
    }
    // Every replica in sync, so that the failover has a choice.
    wait_until("the backups never joined the in-sync sets", || {
        instances
            .iter()
            .all(|i| nodes[0].cluster.state().get(*i).unwrap().in_sync.len() == 3)
    })
    .await;

    let victim_id = nodes[0]
        .cluster
        .state()
        .get(instances[0])
        .unwrap()
        .active
        .unwrap();
    let victim = nodes.iter().position(|n| n.id == victim_id).unwrap();
    let deferred_before: Vec<f64> = nodes
        .iter()
        .map(|n| n.metric("ckpt_cluster_sync_deferred_total"))
        .collect();
    let dead = nodes.remove(victim);
    dead.shutdown.cancel();
    let deferred_before: Vec<f64> = deferred_before
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, v)| v)
        .collect();

    for (i, instance) in instances.iter().enumerate() {
        let i = u64::try_from(i).unwrap();
        retrying("write after the failover", || {
            nodes[0].cluster.write(
                *instance,
                Op::Write {
                    instance: *instance,
                    elements: vec![WriteElement {
                        section_id: id.clone(),
                        offset: 0,
                        data: b"TWO".to_vec(),
                    }],
                },
                origin(2 * i + 1),
                Need::AllInSync,
            )
        })
        .await;
    }
    for (i, instance) in instances.iter().enumerate() {
        let meta = nodes[0].cluster.state().get(*instance).cloned().unwrap();
        assert_ne!(meta.active, Some(victim_id), "{meta:?}");
        for node in nodes.iter().filter(|n| meta.in_sync.contains(&n.id)) {
            assert_eq!(
                read_local(node, *instance, &id).await,
                format!("TWO-{i}").into_bytes(),
                "node {}, instance {}",
                node.id,
                instance.0
            );
        }
    }
    for (node, before) in nodes.iter().zip(deferred_before) {
        assert!(
            node.metric("ckpt_cluster_sync_deferred_total") > before,
            "node {} acted on the failover's six changes in one pass",
            node.id
        );
        wait_until("a backlog never drained", || {
            node.metric("ckpt_cluster_sync_backlog") == 0.0
        })
        .await;
    }
    drop(dead);
    for node in &nodes {
        node.shutdown.cancel();
    }
}

/// With `checkpoint_metrics = false` a node exports none of the series per
/// checkpoint, and its summary still tells an operator what they would:
/// how many checkpoints it is active for, how many have a replica out of
/// the in-sync set, and how far the furthest backup is behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_per_checkpoint_series_the_summary_still_shows_a_dead_backup() {
    log_to_test_output();
    let ids = [1, 2, 3];
    let mut config = config(&ids);
    config.checkpoint_metrics = false;
    let mut nodes = start_all(&config).await;
    let mut instances = Vec::new();
    for i in 0..2_u64 {
        let name = CheckpointName::new(format!("summary{i}")).unwrap();
        let (instance, _) = retrying("create", || {
            nodes[0].cluster.create(name.clone(), all_safe(), None)
        })
        .await;
        instances.push(instance);
    }
    let sum = |nodes: &[Node], name: &str| nodes.iter().map(|n| n.metric(name)).sum::<f64>();
    wait_until(
        "every checkpoint active somewhere, all replicas in sync",
        || {
            sum(&nodes, "ckpt_active_checkpoints") == 2.0
                && sum(&nodes, "ckpt_active_checkpoints_out_of_sync") == 0.0
        },
    )
    .await;
    let per_checkpoint = [
        "ckpt_replication_lag_records",
        "ckpt_replication_lag_bytes",
        "ckpt_in_sync_replicas",
        "ckpt_replication_writes_held_by_lag",
    ];
    for node in &nodes {
        let series: usize = node
            .registry
            .gather()
            .iter()
            .filter(|f| per_checkpoint.contains(&f.name()))
            .map(|f| f.get_metric().len())
            .sum();
        assert_eq!(series, 0, "node {} exports per-checkpoint series", node.id);
    }

    // A backup of both dies: they are out of sync, and it falls behind as
    // they are written.
    let active: Vec<NodeId> = instances
        .iter()
        .map(|i| nodes[0].cluster.state().get(*i).unwrap().active.unwrap())
        .collect();
    let victim = nodes
        .iter()
        .position(|n| !active.contains(&n.id))
        .unwrap_or(2);
    let dead = nodes.remove(victim);
    dead.shutdown.cancel();
    let id = section("s");
    for (i, instance) in (0_u64..).zip(&instances) {
        retrying("section create", || {
            nodes[0].cluster.write(
                *instance,
                Op::CreateSection {
                    instance: *instance,
                    attributes: SectionCreationAttributes {
                        section_id: Some(id.clone()),
                        expiration_time: TIME_END,
                    },
                    data: b"written without the dead backup".to_vec(),
                },
                Some(Origin {
                    session: 13,
                    request: i,
                }),
                Need::AllInSync,
            )
        })
        .await;
    }
    wait_until("a replica out of sync, and a backup behind", || {
        sum(&nodes, "ckpt_active_checkpoints") == 2.0
            && sum(&nodes, "ckpt_active_checkpoints_out_of_sync") == 2.0
            && nodes
                .iter()
                .any(|n| n.metric("ckpt_replication_lag_records_max") > 0.0)
    })
    .await;
    drop(dead);
    for node in &nodes {
        node.shutdown.cancel();
    }
}
