//! A small deterministic harness: three [`ControlPlane`]s in one thread,
//! simulated time, a lossless zero-latency network that can isolate or kill
//! nodes, and optionally real [`RaftLog`] files in a temporary directory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use ckpt_proto::{CheckpointName, CreationAttributes, CreationFlags, ErrorCode, TIME_END};
use ckpt_storage::Epoch;

use super::*;
use crate::config::ClusterConfig;
use crate::raftlog::RaftLog;
use crate::NodeId;

fn config() -> ClusterConfig {
    let mut text = String::from("lease_timeout_ms = 1500\ntick_ms = 50\n");
    for id in 1..=3u16 {
        text += &format!(
            "[[nodes]]\nid = {id}\nclient_addr = \"127.0.0.1:{}\"\npeer_addr = \"127.0.0.1:{}\"\nadmin_addr = \"127.0.0.1:{}\"\n",
            7400 + id * 10,
            7500 + id * 10,
            7401 + id * 10
        );
    }
    ClusterConfig::parse(&text).unwrap()
}

fn attrs(retention_duration_ns: i64, flags: CreationFlags) -> CreationAttributes {
    CreationAttributes {
        creation_flags: flags,
        checkpoint_size: 1 << 20,
        retention_duration_ns,
        max_sections: 4,
        max_section_size: 1 << 18,
        max_section_id_size: 16,
    }
}

fn name(s: &str) -> CheckpointName {
    CheckpointName::new(s).unwrap()
}

struct SimNode {
    cp: ControlPlane,
    log: Option<RaftLog>,
}

struct Sim {
    config: ClusterConfig,
    now_ms: u64,
    nodes: BTreeMap<NodeId, SimNode>,
    /// Nodes whose messages are dropped both ways.
    isolated: BTreeSet<NodeId>,
    net: Vec<(NodeId, NodeId, Vec<u8>)>,
    applied: BTreeMap<NodeId, Vec<(Option<Ticket>, Command, Applied)>>,
    dir: Option<PathBuf>,
    compact_entries: Option<u64>,
    /// Each node's compactions: (snapshot index, checkpoints in it).
    compactions: BTreeMap<NodeId, Vec<(u64, usize)>>,
    /// Raft snapshot messages still to lose on the way, and those lost.
    snapshots_to_lose: usize,
    snapshots_lost: usize,
    /// Largest Raft message sent whole, when not the default.
    part_bytes: Option<usize>,
    /// Parts of Raft messages seen; second parts still to lose, and lost.
    parts_seen: usize,
    parts_to_lose: usize,
    parts_lost: usize,
}

impl Sim {
    fn new() -> Sim {
        Sim::built(None, None)
    }

    fn with_logs(dir: PathBuf, compact_entries: Option<u64>) -> Sim {
        Sim::built(Some(dir), compact_entries)
    }

    /// Every node started, with Raft logs in `dir` when there is one.
    fn built(dir: Option<PathBuf>, compact_entries: Option<u64>) -> Sim {
        let mut sim = Sim {
            config: config(),
            now_ms: 1_000,
            nodes: BTreeMap::new(),
            isolated: BTreeSet::new(),
            net: Vec::new(),
            applied: BTreeMap::new(),
            dir,
            compact_entries,
            compactions: BTreeMap::new(),
            snapshots_to_lose: 0,
            snapshots_lost: 0,
            part_bytes: None,
            parts_seen: 0,
            parts_to_lose: 0,
            parts_lost: 0,
        };
        for id in sim.config.node_ids() {
            sim.start(id);
        }
        sim
    }

    /// (Re)starts a node: from its raft log when the sim has a directory.
    fn start(&mut self, id: NodeId) {
        let (log, persisted) = match &self.dir {
            Some(dir) => {
                let (log, persisted) = RaftLog::open(&dir.join(format!("node{id}"))).unwrap();
                (Some(log), persisted)
            }
            None => (None, PersistedRaft::default()),
        };
        let mut cp = ControlPlane::new(id, &self.config, persisted, self.now_ms).unwrap();
        if let Some(n) = self.compact_entries {
            cp.set_compact_entries(n);
        }
        if let Some(n) = self.part_bytes {
            cp.set_raft_part_bytes(n);
        }
        // Tickets are per life: forget what the previous life saw.
        self.applied.remove(&id);
        self.nodes.insert(id, SimNode { cp, log });
    }

    /// The node stops (its unsent messages are lost).
    fn kill(&mut self, id: NodeId) {
        self.nodes.remove(&id);
        self.net.retain(|(from, to, _)| *from != id && *to != id);
    }

    fn cp(&self, id: NodeId) -> &ControlPlane {
        &self.nodes[&id].cp
    }

    fn cp_mut(&mut self, id: NodeId) -> &mut ControlPlane {
        &mut self.nodes.get_mut(&id).unwrap().cp
    }

    fn drain(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        while let Some(mut rd) = node.cp.ready() {
            if let (Some(p), Some(log)) = (&rd.persist, node.log.as_mut()) {
                log.persist(p).unwrap();
            }
            // Carried out at once here (the runtime does it on a thread of
            // its own, the simulator some steps later).
            if let Some(compaction) = rd.compaction.take() {
                let snap = compaction.encode();
                if let (Some(log), Some(dir)) = (node.log.as_mut(), &self.dir) {
                    crate::raftlog::write_snapshot(&dir.join(format!("node{id}")), &snap).unwrap();
                    log.snapshot_written(&snap);
                }
                let state = ClusterState::restore(snap.get_data(), 3).unwrap();
                self.compactions
                    .entry(id)
                    .or_default()
                    .push((snap.get_metadata().index, state.checkpoint_count()));
                node.cp.compacted(snap);
            }
            for (to, msg) in &rd.messages {
                assert_ne!(*to, id, "a node never messages itself");
                self.net.push((id, *to, msg.encode()));
            }
            self.applied
                .entry(id)
                .or_default()
                .extend(rd.applied.iter().cloned());
            node.cp.advance(rd);
        }
    }

    fn deliver(&mut self) {
        for _ in 0..50 {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in &ids {
                self.drain(*id);
            }
            if self.net.is_empty() {
                return;
            }
            let now = self.now_ms;
            for (from, to, bytes) in std::mem::take(&mut self.net) {
                if self.isolated.contains(&from) || self.isolated.contains(&to) {
                    continue;
                }
                let msg = ControlMessage::decode(&bytes).unwrap();
                if self.snapshots_to_lose > 0 && is_raft_snapshot(&msg) {
                    self.snapshots_to_lose -= 1;
                    self.snapshots_lost += 1;
                    continue;
                }
                if let ControlMessage::RaftPart { part, .. } = &msg {
                    self.parts_seen += 1;
                    if self.parts_to_lose > 0 && *part == 1 {
                        self.parts_to_lose -= 1;
                        self.parts_lost += 1;
                        continue;
                    }
                }
                if let Some(node) = self.nodes.get_mut(&to) {
                    node.cp.step(from, msg, now);
                }
            }
        }
        panic!("the network did not quiesce");
    }

    fn step_time(&mut self) {
        self.now_ms += self.config.tick_ms;
        let now = self.now_ms;
        for node in self.nodes.values_mut() {
            node.cp.tick(now);
        }
        self.deliver();
    }

    fn run_until(&mut self, what: &str, max_ms: u64, mut cond: impl FnMut(&Sim) -> bool) {
        let deadline = self.now_ms + max_ms;
        self.deliver();
        while !cond(self) {
            assert!(self.now_ms < deadline, "not within {max_ms} ms: {what}");
            self.step_time();
        }
    }

    fn run_for(&mut self, ms: u64) {
        let end = self.now_ms + ms;
        while self.now_ms < end {
            self.step_time();
        }
    }

    /// The leader every running, connected node agrees on.
    fn agreed_leader(&self) -> Option<NodeId> {
        let connected: Vec<&SimNode> = self
            .nodes
            .iter()
            .filter(|(id, _)| !self.isolated.contains(id))
            .map(|(_, n)| n)
            .collect();
        let leader = connected.first()?.cp.leader()?;
        let leaders = connected.iter().filter(|n| n.cp.is_leader()).count();
        (leaders == 1 && connected.iter().all(|n| n.cp.leader() == Some(leader))).then_some(leader)
    }

    fn elect(&mut self) -> NodeId {
        self.run_until("a leader everyone agrees on", 10_000, |s| {
            s.agreed_leader().is_some()
        });
        self.agreed_leader().unwrap()
    }

    fn follower(&self) -> NodeId {
        let leader = self.agreed_leader().unwrap();
        *self.nodes.keys().find(|id| **id != leader).unwrap()
    }

    /// Proposes on `node` and runs until that node has the outcome.
    fn propose(&mut self, node: NodeId, cmd: Command) -> Applied {
        let ticket = self.cp_mut(node).propose(cmd.clone()).unwrap();
        let mut outcome = None;
        self.run_until("the proposal's outcome", 10_000, |s| {
            outcome = s
                .applied
                .get(&node)
                .and_then(|v| v.iter().find(|(t, _, _)| *t == Some(ticket)))
                .map(|(_, c, a)| {
                    assert_eq!(*c, cmd);
                    a.clone()
                });
            outcome.is_some()
        });
        outcome.unwrap()
    }

    fn create(&mut self, node: NodeId, n: &str, retention_ns: i64) -> CheckpointMeta {
        let cmd = Command::Create {
            name: name(n),
            attributes: attrs(retention_ns, CreationFlags::WR_ALL_REPLICAS),
            creator: node,
        };
        let meta = match self.propose(node, cmd) {
            Applied::Created { meta } => meta,
            other => panic!("create {n}: {other:?}"),
        };
        // Its backups caught up: the active replica proposes them in.
        let caught_up = Command::SetInSync {
            instance: meta.instance,
            epoch: meta.epoch,
            from: Some(meta.in_sync.clone()),
            generation: None,
            in_sync: meta.replicas.clone(),
        };
        assert_eq!(self.propose(node, caught_up), Applied::Done);
        self.cp(node).state().get(meta.instance).unwrap().clone()
    }

    fn states_equal(&self) -> bool {
        let mut states = self.nodes.values().map(|n| n.cp.state());
        let first = states.next().unwrap();
        states.all(|s| s == first)
    }

    fn applied_count(&self, node: NodeId, pred: impl Fn(&Command) -> bool) -> usize {
        self.applied.get(&node).map_or(0, |v| {
            v.iter()
                .filter(|(_, c, a)| pred(c) && *a == Applied::Done)
                .count()
        })
    }
}

#[test]
fn a_leader_is_elected_and_every_node_gets_a_lease() {
    let mut sim = Sim::new();
    let leader = sim.elect();
    assert!(sim.cp(leader).term() >= 1);
    sim.run_until("every node holds its lease", 5_000, |s| {
        s.nodes.values().all(|n| n.cp.holds_lease(s.now_ms))
    });
    // Nobody was declared dead.
    sim.run_for(3_000);
    assert!(sim
        .nodes
        .values()
        .all(|n| n.cp.state().nodes().all(|(_, alive)| alive)));
}

#[test]
fn a_create_proposed_on_a_follower_applies_identically_everywhere() {
    let mut sim = Sim::new();
    sim.elect();
    let follower = sim.follower();
    let meta = sim.create(follower, "alpha", TIME_END);
    assert_eq!(meta.instance.0, 1);
    assert_eq!(
        meta.replicas[0], follower,
        "the creator is the first replica"
    );
    assert_eq!(meta.active, Some(follower));
    assert_eq!(meta.epoch, Epoch(1));
    assert_eq!(meta.in_sync, vec![1, 2, 3]);
    sim.run_until("every node applied it", 2_000, |s| s.states_equal());
    for node in sim.nodes.values() {
        assert_eq!(node.cp.state().lookup(&name("alpha")), Some(&meta));
    }
    // The other nodes saw the command without a ticket.
    for (id, applied) in &sim.applied {
        let seen: Vec<_> = applied
            .iter()
            .filter(|(_, c, _)| matches!(c, Command::Create { .. }))
            .collect();
        assert_eq!(seen.len(), 1, "node {id}");
        assert_eq!(seen[0].0.is_some(), *id == follower, "node {id}");
    }
    // A second create of the same name fails on every node alike.
    let again = Command::Create {
        name: name("alpha"),
        attributes: attrs(TIME_END, CreationFlags::WR_ALL_REPLICAS),
        creator: follower,
    };
    assert!(
        matches!(sim.propose(follower, again), Applied::Failed(e) if e.code == ErrorCode::AlreadyExist)
    );
}

#[test]
fn killing_the_leader_elects_another_with_the_state_intact() {
    let mut sim = Sim::new();
    let old = sim.elect();
    let a = sim.create(old, "a", TIME_END);
    sim.run_until("replicated", 2_000, |s| s.states_equal());
    let old_term = sim.cp(old).term();
    sim.kill(old);
    let leader = sim.elect();
    assert_ne!(leader, old);
    assert!(sim.cp(leader).term() > old_term);
    assert_eq!(
        sim.cp(leader).state().lookup(&name("a")).unwrap().instance,
        a.instance
    );
    // The registry goes on: ids keep counting.
    let b = sim.create(sim.follower(), "b", TIME_END);
    assert_eq!(b.instance.0, a.instance.0 + 1);
    // The dead leader was active for "a": it fails over to a live in-sync node.
    sim.run_until("a fails over", 10_000, |s| {
        s.cp(leader)
            .state()
            .get(a.instance)
            .unwrap()
            .active
            .is_some_and(|n| n != old)
    });
}

#[test]
fn a_dead_node_gets_exactly_one_failover_covering_all_its_checkpoints() {
    let mut sim = Sim::new();
    let leader = sim.elect();
    let victim = sim.follower();
    let mut mine = Vec::new();
    for i in 0..5 {
        mine.push(sim.create(victim, &format!("v{i}"), TIME_END));
    }
    let other = sim.create(leader, "other", TIME_END);
    sim.run_until("replicated", 2_000, |s| s.states_equal());
    sim.isolated.insert(victim);
    sim.run_until("the victim is declared dead", 20_000, |s| {
        !s.cp(leader).state().node_alive(victim)
    });
    // Lease safety: by the time the failover applied, the victim's own lease
    // had expired.
    assert!(
        !sim.cp(victim).holds_lease(sim.now_ms),
        "failover while the old lease held"
    );
    sim.run_for(5_000);
    for id in sim.nodes.keys().copied().filter(|id| *id != victim) {
        assert_eq!(
            sim.applied_count(id, |c| *c == Command::Failover { node: victim }),
            1,
            "node {id}: exactly one failover for the victim"
        );
        let state = sim.cp(id).state();
        for m in &mine {
            let now = state.get(m.instance).unwrap();
            assert_eq!(now.epoch, Epoch(2));
            let active = now.active.expect("a new active replica");
            assert_ne!(active, victim);
            assert!(
                m.in_sync.contains(&active),
                "new active from the in-sync set"
            );
            assert!(!now.in_sync.contains(&victim));
        }
        let o = state.get(other.instance).unwrap();
        assert_eq!((o.active, o.epoch), (Some(leader), Epoch(1)));
    }
    // Nobody else was declared dead.
    assert_eq!(
        sim.applied_count(leader, |c| matches!(c, Command::Failover { .. })),
        1
    );
    // Healed: the victim asks for leases again and is declared up.
    sim.isolated.clear();
    sim.run_until("NodeUp applied everywhere", 10_000, |s| {
        s.nodes.values().all(|n| n.cp.state().node_alive(victim))
    });
    sim.run_until("the victim holds a lease again", 5_000, |s| {
        s.cp(victim).holds_lease(s.now_ms)
    });
    assert_eq!(
        sim.applied_count(leader, |c| *c == Command::NodeUp { node: victim }),
        1
    );
    sim.run_until("states converge", 5_000, |s| s.states_equal());
}

#[test]
fn epochs_in_sync_sets_and_active_handover_go_through_raft() {
    let mut sim = Sim::new();
    sim.elect();
    let f = sim.follower();
    let m = sim.create(f, "c", TIME_END);
    let stale = Command::SetInSync {
        instance: m.instance,
        epoch: Epoch(9),
        from: Some(m.in_sync.clone()),
        generation: None,
        in_sync: vec![f],
    };
    assert!(matches!(sim.propose(f, stale), Applied::Failed(e) if e.code == ErrorCode::TryAgain));
    let shrink = Command::SetInSync {
        instance: m.instance,
        epoch: Epoch(1),
        from: Some(m.in_sync.clone()),
        generation: None,
        in_sync: vec![f, m.replicas[1]],
    };
    assert_eq!(sim.propose(f, shrink), Applied::Done);
    let to = m.replicas[2];
    assert!(matches!(
        sim.propose(to, Command::SetActive { instance: m.instance, node: to }),
        Applied::Failed(e) if e.code == ErrorCode::TryAgain
    ));
    let to = m.replicas[1];
    assert_eq!(
        sim.propose(
            to,
            Command::SetActive {
                instance: m.instance,
                node: to
            }
        ),
        Applied::Done
    );
    sim.run_until("replicated", 2_000, |s| s.states_equal());
    let now = sim.cp(f).state().get(m.instance).unwrap().clone();
    assert_eq!((now.active, now.epoch), (Some(to), Epoch(2)));
}

#[test]
fn retention_runs_on_the_leader_after_the_last_close_and_destroys() {
    let mut sim = Sim::new();
    sim.elect();
    let f = sim.follower();
    let m = sim.create(f, "r", 1_000_000_000); // 1 s
    sim.run_for(3_000);
    assert!(
        sim.cp(f).state().get(m.instance).is_some(),
        "open on its creator: kept"
    );
    assert_eq!(
        sim.propose(
            f,
            Command::Closed {
                instance: m.instance,
                node: f
            }
        ),
        Applied::Done
    );
    let closed_at = sim.now_ms;
    sim.run_until("destroyed everywhere", 5_000, |s| {
        s.nodes
            .values()
            .all(|n| n.cp.state().get(m.instance).is_none())
    });
    assert!(
        sim.now_ms >= closed_at + 1_000,
        "destroyed before the retention elapsed"
    );
    for id in sim.nodes.keys() {
        assert_eq!(
            sim.applied_count(*id, |c| *c == Command::Unlink { name: name("r") }),
            1
        );
        assert_eq!(
            sim.applied_count(*id, |c| *c
                == Command::Destroy {
                    instance: m.instance
                }),
            1
        );
    }
}

/// The leader's retention pass looks only at checkpoints that changed: a
/// checkpoint kept forever, closed everywhere and then deleted with nothing
/// else happening, is destroyed; one reopened before its retention elapsed
/// is kept, and its timer starts over at its next close.
#[test]
fn retention_follows_each_change_of_a_checkpoint() {
    let mut sim = Sim::new();
    sim.elect();
    let f = sim.follower();
    let gone_everywhere = |s: &Sim, i: ckpt_storage::InstanceId| {
        s.nodes.values().all(|n| n.cp.state().get(i).is_none())
    };
    let forever = sim.create(f, "forever", TIME_END);
    let closed = Command::Closed {
        instance: forever.instance,
        node: f,
    };
    assert_eq!(sim.propose(f, closed), Applied::Done);
    sim.run_for(2_000);
    assert!(!gone_everywhere(&sim, forever.instance));
    let unlink = Command::Unlink {
        name: name("forever"),
    };
    assert_eq!(sim.propose(f, unlink), Applied::Done);
    for (id, v) in &sim.applied {
        for (_, c, a) in v {
            eprintln!("{id}: {c:?} {a:?}");
        }
    }
    sim.run_until("the deleted checkpoint destroyed", 5_000, |s| {
        gone_everywhere(s, forever.instance)
    });

    let m = sim.create(f, "reopened", 2_000_000_000); // 2 s
    let close = Command::Closed {
        instance: m.instance,
        node: f,
    };
    assert_eq!(sim.propose(f, close.clone()), Applied::Done);
    sim.run_for(1_500);
    let open = Command::Opened {
        instance: m.instance,
        node: f,
    };
    assert_eq!(sim.propose(f, open), Applied::Done);
    sim.run_for(2_000);
    assert!(
        !gone_everywhere(&sim, m.instance),
        "destroyed while open again"
    );
    assert_eq!(sim.propose(f, close), Applied::Done);
    let closed_again_at = sim.now_ms;
    sim.run_until("destroyed after its second close", 6_000, |s| {
        gone_everywhere(s, m.instance)
    });
    assert!(
        sim.now_ms >= closed_again_at + 2_000,
        "the timer of the first close went on after the reopen"
    );
}

#[test]
fn an_unanswered_proposal_times_out_with_try_again_exactly_once() {
    let mut sim = Sim::new();
    sim.elect();
    let f = sim.follower();
    sim.isolated.insert(f);
    let cmd = Command::Create {
        name: name("lost"),
        attributes: attrs(TIME_END, CreationFlags::WR_ALL_REPLICAS),
        creator: f,
    };
    let ticket = sim.cp_mut(f).propose(cmd).unwrap();
    sim.run_until("the ticket is answered", 10_000, |s| {
        s.applied
            .get(&f)
            .is_some_and(|v| v.iter().any(|(t, _, _)| *t == Some(ticket)))
    });
    sim.run_for(5_000);
    let answers: Vec<_> = sim.applied[&f]
        .iter()
        .filter(|(t, _, _)| *t == Some(ticket))
        .collect();
    assert_eq!(answers.len(), 1);
    assert!(matches!(&answers[0].2, Applied::Failed(e) if e.code == ErrorCode::TryAgain));
}

#[test]
fn a_whole_cluster_restart_from_raft_logs_keeps_the_registry_and_restarts_retention() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = Sim::with_logs(dir.path().to_path_buf(), Some(8));
    let leader = sim.elect();
    let keep = sim.create(leader, "keep", TIME_END);
    let f = sim.follower();
    let timed = sim.create(f, "timed", 2_000_000_000); // 2 s
                                                       // Enough commands to compact every log at least once.
    for i in 0..12 {
        let node = if i % 2 == 0 { leader } else { f };
        assert_eq!(
            sim.propose(
                node,
                Command::Opened {
                    instance: keep.instance,
                    node
                }
            ),
            Applied::Done
        );
    }
    assert_eq!(
        sim.propose(
            f,
            Command::Closed {
                instance: timed.instance,
                node: f
            }
        ),
        Applied::Done
    );
    sim.run_until("replicated", 2_000, |s| s.states_equal());
    let before = sim.cp(leader).state().clone();
    for id in sim.config.node_ids() {
        sim.kill(id);
    }
    // Power returns a while later, well before the retention would have
    // expired counted from the close: it counts afresh from the restart.
    sim.now_ms += 500;
    for id in sim.config.node_ids() {
        sim.start(id);
    }
    let restarted_at = sim.now_ms;
    for id in sim.config.node_ids() {
        assert_eq!(
            sim.cp(id).state().lookup(&name("keep")),
            before.lookup(&name("keep")),
            "node {id} from its log"
        );
    }
    sim.elect();
    sim.run_until("replayed everywhere", 5_000, |s| {
        s.states_equal() && s.cp(1).state() == &before
    });
    sim.run_until("timed destroyed", 10_000, |s| {
        s.nodes
            .values()
            .all(|n| n.cp.state().get(timed.instance).is_none())
    });
    assert!(
        sim.now_ms >= restarted_at + 2_000,
        "retention restarted at the restart"
    );
    assert!(sim
        .nodes
        .values()
        .all(|n| n.cp.state().lookup(&name("keep")).is_some()));
    // Ids are never reused after the restart.
    let next = sim.create(sim.follower(), "next", TIME_END);
    assert_eq!(next.instance.0, timed.instance.0 + 1);
}

/// Raft logs in `dir`, a compaction every 4 entries, and a follower that
/// was down while 10 checkpoints were created: it can be caught up only by
/// a Raft snapshot once started.
fn behind_the_compacted_log(dir: &tempfile::TempDir) -> (Sim, NodeId) {
    let mut sim = Sim::with_logs(dir.path().to_path_buf(), Some(4));
    let leader = sim.elect();
    let lagging = sim.follower();
    sim.kill(lagging);
    for i in 0..10 {
        sim.create(leader, &format!("c{i}"), TIME_END);
    }
    (sim, lagging)
}

#[test]
fn a_node_behind_the_compacted_log_catches_up_by_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (mut sim, lagging) = behind_the_compacted_log(&dir);
    sim.start(lagging);
    sim.run_until("the lagging node caught up", 20_000, |s| s.states_equal());
    assert_eq!(sim.cp(lagging).state().checkpoints().count(), 10);
    // And it survives its own restart from the installed snapshot.
    sim.kill(lagging);
    sim.start(lagging);
    assert_eq!(sim.cp(lagging).state().checkpoints().count(), 10);
}

fn is_raft_snapshot(msg: &ControlMessage) -> bool {
    use protobuf::Message as _;
    match msg {
        ControlMessage::Raft(bytes) => {
            raft::eraftpb::Message::parse_from_bytes(bytes)
                .unwrap()
                .get_msg_type()
                == raft::eraftpb::MessageType::MsgSnapshot
        }
        _ => false,
    }
}

/// raft-rs sends a follower behind the compacted log nothing but heartbeats
/// after a snapshot until the snapshot's status is reported. Lost on the
/// way (a dropped connection, a full send queue), it left the follower's
/// control plane behind for as long as the leader led (found by the cluster
/// simulator with a compaction every 8 entries, run 11). Now another one
/// follows.
#[test]
fn a_raft_snapshot_lost_on_the_way_is_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let (mut sim, lagging) = behind_the_compacted_log(&dir);
    sim.snapshots_to_lose = 1;
    sim.start(lagging);
    sim.run_until("the lagging node caught up", 20_000, |s| s.states_equal());
    assert_eq!(sim.snapshots_lost, 1, "no snapshot was sent");
    assert_eq!(sim.cp(lagging).state().checkpoints().count(), 10);
}

/// A Raft snapshot larger than one peer message may be goes in parts (at a
/// few hundred thousand checkpoints it exceeded a peer frame, and a node
/// behind the compacted log could never catch up). Here every message over
/// 64 bytes does: the lagging node catches up from the parts, also when a
/// part of the first snapshot is lost on the way.
#[test]
fn a_raft_snapshot_in_parts_catches_a_node_up_though_a_part_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (mut sim, lagging) = behind_the_compacted_log(&dir);
    sim.part_bytes = Some(64);
    for node in sim.nodes.values_mut() {
        node.cp.set_raft_part_bytes(64);
    }
    sim.parts_to_lose = 1;
    sim.start(lagging);
    sim.run_until("the lagging node caught up", 20_000, |s| s.states_equal());
    assert_eq!(sim.parts_lost, 1, "no snapshot went in parts");
    assert!(sim.parts_seen > 10, "{} parts", sim.parts_seen);
    assert_eq!(sim.cp(lagging).state().checkpoints().count(), 10);
}

/// A compaction encodes the whole registry: taken every `compact_entries`
/// whatever the registry's size, its cost per entry grew with the number
/// of checkpoints (at 50,000, a third of a node's CPU while a failover's
/// commands were applied). Entries between two compactions are at least
/// a quarter of the checkpoints the first held, so the encoding costs at
/// most four checkpoints' worth per entry.
#[test]
fn compactions_space_out_as_the_registry_grows() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = Sim::with_logs(dir.path().to_path_buf(), Some(4));
    let leader = sim.elect();
    for i in 0..120 {
        sim.create(leader, &format!("c{i}"), TIME_END);
    }
    sim.run_until("replicated", 2_000, |s| s.states_equal());
    let taken = &sim.compactions[&leader];
    assert!(taken.len() >= 3, "{taken:?}");
    for pair in taken.windows(2) {
        let ((from, held), (to, _)) = (pair[0], pair[1]);
        assert!(
            to - from >= (held as u64 / 4).max(4),
            "a compaction {} entries after one of {held} checkpoints: {taken:?}",
            to - from
        );
    }
    // Far fewer than one per 4 entries.
    let last = taken.last().unwrap().0;
    assert!((taken.len() as u64) < last / 4, "{taken:?}");
}

/// A proposal that cannot commit (no quorum) is answered TRY_AGAIN once
/// the proposal timeout passed since it was made, each in its turn.
#[test]
fn proposals_without_a_quorum_expire_each_after_the_timeout() {
    let mut sim = Sim::new();
    let leader = sim.elect();
    for other in sim.config.node_ids() {
        if other != leader {
            sim.kill(other);
        }
    }
    let first = sim
        .cp_mut(leader)
        .propose(Command::Unlink { name: name("a") })
        .unwrap();
    let first_at = sim.now_ms;
    sim.run_for(sim.config.tick_ms * 2);
    let second = sim
        .cp_mut(leader)
        .propose(Command::Unlink { name: name("b") })
        .unwrap();
    let second_at = sim.now_ms;
    let answered_at = |sim: &Sim, ticket| {
        sim.applied.get(&leader).and_then(|v| {
            v.iter()
                .find(|(t, _, _)| *t == Some(ticket))
                .map(|(_, _, a)| a.clone())
        })
    };
    let mut first_seen = None;
    let mut second_seen = None;
    sim.run_until("both answered", 60_000, |s| {
        if first_seen.is_none() && answered_at(s, first).is_some() {
            first_seen = Some((s.now_ms, answered_at(s, first).unwrap()));
        }
        if second_seen.is_none() && answered_at(s, second).is_some() {
            second_seen = Some((s.now_ms, answered_at(s, second).unwrap()));
        }
        first_seen.is_some() && second_seen.is_some()
    });
    let (first_ms, first_outcome) = first_seen.unwrap();
    let (second_ms, second_outcome) = second_seen.unwrap();
    for outcome in [&first_outcome, &second_outcome] {
        assert!(
            matches!(outcome, Applied::Failed(e) if e.code == ErrorCode::TryAgain),
            "{outcome:?}"
        );
    }
    let proposal_timeout = sim.cp(leader).proposal_timeout_ms();
    assert!(
        first_ms > first_at + proposal_timeout,
        "{first_ms} {first_at}"
    );
    assert!(
        second_ms > second_at + proposal_timeout,
        "{second_ms} {second_at}"
    );
    assert!(first_ms < second_ms);
}

#[test]
fn a_torn_raft_log_tail_is_dropped_and_the_node_rejoins() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = Sim::with_logs(dir.path().to_path_buf(), None);
    let leader = sim.elect();
    sim.create(leader, "a", TIME_END);
    sim.run_until("replicated", 2_000, |s| s.states_equal());
    let victim = sim.follower();
    sim.kill(victim);
    let path = dir
        .path()
        .join(format!("node{victim}"))
        .join(crate::raftlog::FILE_NAME);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
    sim.start(victim);
    sim.run_until("the victim caught up again", 10_000, |s| s.states_equal());
    assert!(sim.cp(victim).state().lookup(&name("a")).is_some());
    // A corrupt middle is refused, not silently shortened.
    sim.kill(victim);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[20] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    assert!(RaftLog::open(path.parent().unwrap()).is_err());
}

#[test]
fn an_unlinked_checkpoint_is_destroyed_after_its_last_close_and_a_restarted_active_gets_a_new_epoch(
) {
    let mut sim = Sim::new();
    let leader = sim.elect();
    let f = sim.follower();
    let m = sim.create(f, "gone", TIME_END);
    assert_eq!(
        sim.propose(
            leader,
            Command::Opened {
                instance: m.instance,
                node: leader
            }
        ),
        Applied::Done
    );
    assert_eq!(
        sim.propose(f, Command::Unlink { name: name("gone") }),
        Applied::Done
    );
    assert_eq!(
        sim.propose(
            f,
            Command::Closed {
                instance: m.instance,
                node: f
            }
        ),
        Applied::Done
    );
    sim.run_for(2_000);
    assert!(
        sim.cp(f).state().get(m.instance).is_some(),
        "still open on the leader"
    );
    // The active (f) restarts: a new epoch before it writes again.
    assert_eq!(
        sim.propose(f, Command::NodeRestarted { node: f }),
        Applied::Done
    );
    assert_eq!(sim.cp(f).state().get(m.instance).unwrap().epoch, Epoch(2));
    assert_eq!(
        sim.propose(
            leader,
            Command::Closed {
                instance: m.instance,
                node: leader
            }
        ),
        Applied::Done
    );
    sim.run_until("destroyed everywhere", 5_000, |s| {
        s.nodes
            .values()
            .all(|n| n.cp.state().get(m.instance).is_none())
    });
    assert_eq!(
        sim.applied_count(f, |c| *c
            == Command::Destroy {
                instance: m.instance
            }),
        1
    );
}

#[test]
fn a_single_node_cluster_leads_at_once_and_applies_its_own_proposals() {
    let config = ClusterConfig::parse(
        "[[nodes]]\nid = 5\nclient_addr = \"127.0.0.1:1\"\npeer_addr = \"127.0.0.1:2\"\nadmin_addr = \"127.0.0.1:3\"\n",
    )
    .unwrap();
    let mut cp = ControlPlane::new(5, &config, PersistedRaft::default(), 0).unwrap();
    let mut applied = Vec::new();
    let drain = |cp: &mut ControlPlane, applied: &mut Vec<_>| {
        while let Some(rd) = cp.ready() {
            assert!(rd.messages.is_empty(), "nobody to talk to");
            applied.extend(rd.applied.iter().cloned());
            cp.advance(rd);
        }
    };
    drain(&mut cp, &mut applied);
    assert!(
        cp.is_leader(),
        "a lone node leads without waiting for an election timeout"
    );
    cp.tick(50);
    assert!(cp.holds_lease(50), "the leader grants itself its lease");
    assert!(!cp.holds_lease(50 + config.lease_timeout_ms));
    let ticket = cp
        .propose(Command::Create {
            name: name("solo"),
            attributes: attrs(TIME_END, CreationFlags::WR_ACTIVE_REPLICA),
            creator: 5,
        })
        .unwrap();
    drain(&mut cp, &mut applied);
    assert!(matches!(
        applied.iter().find(|(t, _, _)| *t == Some(ticket)),
        Some((_, _, Applied::Created { meta })) if meta.replicas == vec![5] && meta.active == Some(5)
    ));
    assert!(
        ControlPlane::new(9, &config, PersistedRaft::default(), 0).is_err(),
        "unknown node id"
    );
}

#[test]
fn an_isolated_leader_loses_its_lease_before_it_is_failed_over() {
    let mut sim = Sim::new();
    let old = sim.elect();
    let m = sim.create(old, "held", TIME_END);
    sim.run_until("every node holds its lease", 5_000, |s| {
        s.nodes.values().all(|n| n.cp.holds_lease(s.now_ms))
    });
    sim.isolated.insert(old);
    let cut_at = sim.now_ms;
    let mut lost_at = None;
    let others: Vec<NodeId> = sim.nodes.keys().copied().filter(|n| *n != old).collect();
    sim.run_until("the old leader is failed over", 20_000, |s| {
        if lost_at.is_none() && !s.cp(old).holds_lease(s.now_ms) {
            lost_at = Some(s.now_ms);
        }
        others
            .iter()
            .any(|n| s.cp(*n).state().get(m.instance).unwrap().active != Some(old))
    });
    let lost_at = lost_at.expect("the old leader's lease ended before the failover applied");
    assert!(!sim.cp(old).holds_lease(sim.now_ms));
    assert!(
        lost_at <= cut_at + sim.config.lease_timeout_ms + sim.config.tick_ms,
        "lease held {} ms after the cut",
        lost_at - cut_at
    );
}

/// Found by the cluster simulator (run 93): a node restarted with a Raft
/// log from before its failover got a lease at once, while its replayed
/// state still named it the active replica of epoch 1, and served reads
/// that missed the writes acknowledged by the new active replica.
#[test]
fn a_lease_holds_only_once_the_node_applied_what_the_leader_had_committed() {
    let mut sim = Sim::new();
    let leader = sim.elect();
    let lagging = sim.follower();
    sim.run_until("every node holds its lease", 5_000, |s| {
        s.nodes.values().all(|n| n.cp.holds_lease(s.now_ms))
    });
    sim.isolated.insert(lagging);
    sim.run_for(2 * sim.config.lease_timeout_ms);
    assert!(!sim.cp(lagging).holds_lease(sim.now_ms));
    // What the lagging node has not seen.
    sim.create(leader, "unseen", TIME_END);
    let commit = sim.cp(leader).applied_index();
    assert!(sim.cp(lagging).applied_index() < commit);
    // A grant reaches it before the log does.
    let now = sim.now_ms;
    sim.cp_mut(lagging).step(
        leader,
        ControlMessage::LeaseGrant {
            sent_at_ms: now,
            commit,
        },
        now,
    );
    assert!(
        !sim.cp(lagging).holds_lease(now),
        "a lease held with a log {} entries behind the grant",
        commit - sim.cp(lagging).applied_index()
    );
    // Once it has applied the leader's log, the lease holds.
    sim.isolated.clear();
    sim.run_until("the lagging node holds its lease again", 5_000, |s| {
        s.cp(lagging).holds_lease(s.now_ms)
    });
    assert!(sim.cp(lagging).applied_index() >= commit);
    assert!(sim.cp(lagging).state().lookup(&name("unseen")).is_some());
}
