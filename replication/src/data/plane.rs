//! The per-node data plane: every checkpoint instance this node holds a
//! replica of, as primary or as backup.
//!
//! Primary side. Entries the store appended ([`DataPlane::on_appended`], called
//! right after the append, before the fsync) go at once to every backup that
//! is streaming, one [`DataMessage::Entries`] per backup and instance per call,
//! each naming the entry before it (`prev`). A backup starts streaming only
//! after its [`DataMessage::CatchUp`] was answered: per KIP-101
//! ([`plan_catch_up`]) either with entries read from the WAL
//! ([`DataOutput::ReadEntries`]) or with a snapshot ([`DataOutput::SendSnapshot`]),
//! streamed one part at a time: the next part is read only once the backup
//! acknowledged the last ([`DataMessage::SnapshotAck`]), so neither side
//! holds more than a part whatever the checkpoint's size.
//! In a new epoch, catch-ups wait until the epoch began on this node
//! ([`DataPlane::on_epoch_begun`]). Acknowledgements feed the [`Tracker`]; on
//! [`tick`](DataPlane::tick) a backup that is behind without acknowledging
//! anything new for `replica_lag_timeout_ms` is proposed out of the in-sync
//! set, and a streaming backup that acknowledged every write released so far
//! (the high watermark) is proposed back in — each proposal once per timeout,
//! not every tick. One that keeps acknowledging but is a round trip behind
//! under steady writes is waited for first, so that it reaches the watermark. A backup that is
//! behind and silent is sent a [`DataMessage::Probe`] so that it asks for a
//! catch-up (its CatchUp or our answer may have been lost, or we restarted).
//! WAL reads for a backup pause while more than four reads' worth of bytes
//! are unacknowledged, and [`DataOutput::HoldWal`] keeps what lagging in-sync
//! backups, backups being read for and backups being sent a snapshot still
//! need.
//!
//! Backup side. Entries from the active replica of the epoch the control plane
//! named are appended in order ([`DataOutput::Apply`]) when their `prev` is
//! this node's last entry; a gap or mismatch asks for a catch-up; entries of
//! an older epoch are answered [`DataMessage::Fenced`]. Once the store made
//! them durable ([`DataPlane::on_replica_durable`]) the backup acknowledges.
//! Snapshot parts are applied in order from part 0, which discards what the
//! backup held; a stream that breaks off leaves the backup holding nothing
//! valid of the instance, and its next CatchUp (with no position) starts
//! over.
//!
//! The driver carries out the outputs in order; per instance, `Apply` and
//! `ApplySnapshotPart` must reach the store in the order they were output.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ckpt_proto::{CkptError, ErrorCode};
use ckpt_storage::{Epoch, InstanceId, Lsn, Seq};

use super::catchup::{plan_catch_up, CatchUpPlan};
use super::message::{DataMessage, WireEntry};
use super::tracker::{Need, Tracker};
use super::{point, NodeId, Position, ReplicaSet, ShippedEntry};

/// Bytes one WAL read for a catching-up backup returns at most (default).
pub const READ_BYTES_MAX_DEFAULT: u64 = 4 * 1024 * 1024;

/// Appended entries remembered per instance for lag bytes and WAL holds.
pub const LAG_WINDOW_ENTRIES_MAX: usize = 1 << 16;

/// Bytes of a new checkpoint's first entries its primary keeps in memory
/// until every backup streams (see `Primary::early`).
pub const EARLY_BYTES_MAX: u64 = 64 * 1024;

/// A change the data plane asks the control plane for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proposal {
    /// Replace the in-sync set `from` of `instance` in `epoch` by `in_sync`
    /// (refused by the control plane if the epoch moved on or the set is no
    /// longer `from`: two proposals computed from one set must not both
    /// apply, or the later one would bring back a member the earlier one
    /// removed, after writes were released without it).
    SetInSync {
        instance: InstanceId,
        epoch: Epoch,
        from: Vec<NodeId>,
        /// The set's generation `from` was read at (refused at any other).
        generation: u64,
        in_sync: Vec<NodeId>,
    },
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataOutput {
    /// Send a message to a peer.
    Send { to: NodeId, msg: DataMessage },
    /// Backup: append and apply these entries (`store.submit_replicated`),
    /// then call [`DataPlane::on_replica_durable`] with the reply's position,
    /// or [`DataPlane::on_replica_failed`].
    Apply {
        instance: InstanceId,
        from: NodeId,
        entries: Vec<WireEntry>,
    },
    /// Primary: read the entries of `instance` after `after`
    /// (`store.entries_after`, at most `max_bytes`), then call
    /// [`DataPlane::on_entries_read`], or [`DataPlane::on_entries_gone`] when
    /// the log no longer holds them — or when this node's entry at
    /// `after`'s seq is not `after` itself. That check is what makes
    /// streaming safe: a backup's last entry can lie inside an epoch's range
    /// by the recorded starts while this node, primary after two quick
    /// failovers, never held that epoch.
    ReadEntries {
        instance: InstanceId,
        after: Option<(Epoch, Seq)>,
        /// Where this node's WAL holds the `after` entry, when an earlier
        /// read returned it: the read can start there and stop after
        /// `max_bytes` instead of reading back from the newest segment (a
        /// catch-up costs what it ships, not the backlog per read).
        after_lsn: Option<Lsn>,
        for_node: NodeId,
        max_bytes: u64,
    },
    /// Primary: start streaming a snapshot of `instance` to `to`
    /// (`store.stream_snapshot`, from one consistent view): hand its first
    /// part to [`DataPlane::on_snapshot_part`], each later one only after
    /// [`DataOutput::NextSnapshotPart`]; or call
    /// [`DataPlane::on_read_failed`]. A new `SendSnapshot` for the same
    /// backup replaces a stream under way.
    SendSnapshot { instance: InstanceId, to: NodeId },
    /// Primary: the backup holds the part handed over last; read the next
    /// part of the stream to `to` and hand it to
    /// [`DataPlane::on_snapshot_part`].
    NextSnapshotPart { instance: InstanceId, to: NodeId },
    /// Backup: log and apply part `index` of a snapshot (`bytes` are
    /// install entries: `store.submit_replicated`), in output order with
    /// `Apply`; then call [`DataPlane::on_replica_durable`] with `last` when
    /// `done`, else [`DataPlane::on_snapshot_part_durable`]; or
    /// [`DataPlane::on_replica_failed`].
    ApplySnapshotPart {
        instance: InstanceId,
        from: NodeId,
        last: (Epoch, Seq),
        index: u64,
        done: bool,
        bytes: Vec<u8>,
    },
    /// Propose to the control plane.
    Propose(Proposal),
    /// Answer these client tickets with success.
    Released(Vec<u64>),
    /// Answer these client tickets with the error.
    Failed(Vec<(u64, CkptError)>),
    /// Keep WAL segments from this lsn on (`store.set_wal_hold`); `None`: no hold.
    HoldWal(Option<Lsn>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerMode {
    /// Nothing is sent until the backup's CatchUp was answered.
    AwaitCatchUp,
    /// A WAL read for it is out.
    Reading,
    /// A snapshot is being streamed to it, part by part.
    Snapshotting,
    /// Appended entries go to it as they come.
    Streaming,
}

#[derive(Debug)]
struct Peer {
    mode: PeerMode,
    /// The last entry sent (what the next `Entries` names as `prev`).
    sent: Option<(Epoch, Seq)>,
    /// Highest seq acknowledged durable in the current epoch.
    acked: Option<Seq>,
    /// When it last acknowledged progress, or fell behind after being caught up.
    progress_ms: u64,
    /// Entries read from the WAL and sent, not yet acknowledged: (last seq
    /// of a message, its bytes). Reading pauses while they exceed the bound.
    read_inflight: VecDeque<(Seq, u64)>,
    read_paused: bool,
    /// The snapshot part sent last, not yet acknowledged: (the snapshot's
    /// position, the part's index).
    snapshot_part: Option<((Epoch, Seq), u64)>,
    /// The `last` of the CatchUp being answered and when: a retry of it
    /// within the retry interval is ignored.
    serving: Option<(Option<(Epoch, Seq)>, u64)>,
    remove_proposed_ms: Option<u64>,
    add_proposed_ms: Option<u64>,
    /// The in-sync generation its last addition was proposed at: once the
    /// applied generation is past it, that addition can never apply.
    add_generation: Option<u64>,
    /// When a change fencing off its pending addition was last proposed.
    fence_proposed_ms: Option<u64>,
    probe_sent_ms: Option<u64>,
    /// Its log cannot be continued, and it is in the in-sync set: it must
    /// leave the set before a snapshot discards what it holds.
    needs_snapshot: bool,
    /// The position named by the CatchUp the snapshot under way answers.
    snapshot_answers: Option<(Epoch, Seq)>,
    /// When the snapshot under way last made progress (started, a part
    /// sent or acknowledged).
    snapshot_progress_ms: u64,
    /// It sent a message of this epoch: it applied the metadata that
    /// started it (and so no longer acts as an earlier epoch's primary).
    heard: bool,
    /// The last entry a WAL read returned for it and its lsn: where the log
    /// must be held for it, and a hint for the next read (see
    /// [`DataOutput::ReadEntries`]).
    read_at: Option<((Epoch, Seq), Lsn)>,
    /// Entries appended since the read under way was asked for, kept for
    /// it (while `Some`, at most `read_bytes_max` bytes): when the read
    /// comes back ending where they begin, the backup is sent both and
    /// streams from there. Without it, a backup catching up under steady
    /// writes chased the log forever — every read came back a little
    /// behind the entries appended while it ran — and never got back into
    /// the in-sync set.
    tail: Option<Vec<ShippedEntry>>,
    tail_bytes: u64,
}

impl Peer {
    /// Where the WAL holds `after`, if a read for this peer returned it.
    fn lsn_of(&self, after: Option<(Epoch, Seq)>) -> Option<Lsn> {
        self.read_at
            .filter(|(at, lsn)| Some(*at) == after && lsn.0 > 0)
            .map(|(_, lsn)| lsn)
    }

    /// Forgets any read or snapshot under way.
    fn reset_read(&mut self) {
        self.read_at = None;
        self.tail = None;
        self.tail_bytes = 0;
        self.read_inflight.clear();
        self.read_paused = false;
        self.snapshot_part = None;
    }

    fn new(now_ms: u64) -> Self {
        Peer {
            mode: PeerMode::AwaitCatchUp,
            sent: None,
            acked: None,
            progress_ms: now_ms,
            read_inflight: VecDeque::new(),
            read_paused: false,
            snapshot_part: None,
            serving: None,
            remove_proposed_ms: None,
            add_proposed_ms: None,
            add_generation: None,
            fence_proposed_ms: None,
            probe_sent_ms: None,
            needs_snapshot: false,
            snapshot_answers: None,
            snapshot_progress_ms: now_ms,
            heard: false,
            read_at: None,
            tail: None,
            tail_bytes: 0,
        }
    }
}

#[derive(Debug)]
struct Primary {
    epoch: Epoch,
    /// The epoch began on this node: it may ship and answer catch-ups.
    begun: bool,
    /// First seq of `epoch`, when known exactly (from the control plane or
    /// the EpochStart entry).
    begun_start: Option<Seq>,
    /// Last entry appended here.
    last: Option<(Epoch, Seq)>,
    /// Recent appended entries: (seq, lsn, bytes appended before it).
    window: VecDeque<(Seq, Lsn, u64)>,
    bytes_total: u64,
    peers: BTreeMap<NodeId, Peer>,
    /// CatchUps that arrived before the epoch began here.
    deferred: BTreeMap<NodeId, Option<(Epoch, Seq)>>,
    /// A peer knows a newer epoch: stop acting as primary.
    fenced: bool,
    /// When members holding no replica were last proposed out of the in-sync set.
    stray_proposed_ms: Option<u64>,
    /// `(tick time, last seq)` samples over the last lag timeout, oldest
    /// first: where this log was a while ago, to tell how far behind *in
    /// time* a backup is.
    marks: VecDeque<(u64, Seq)>,
    /// Every entry of a checkpoint new on this node, from its first (seq 1)
    /// on, kept while some backup does not stream yet and they come to at
    /// most [`EARLY_BYTES_MAX`] bytes: a new checkpoint's backups ask to be
    /// caught up from nothing just after its first entries went by, and are
    /// answered from here instead of by a WAL read, which reads whole
    /// segments (creating checkpoints in a cluster spent a third of its CPU
    /// copying them).
    early: Option<Vec<ShippedEntry>>,
    early_bytes: u64,
    /// When it started keeping them: they are let go a lag timeout later
    /// even if a backup never asked (a node down while thousands of
    /// checkpoints are created must not pin their first entries).
    early_since_ms: u64,
}

impl Primary {
    /// Adds an entry appended after `last` to [`Primary::early`], or stops
    /// keeping them: past the bound, or when the entries would not be the
    /// whole log from its first.
    fn keep_early(&mut self, entry: &ShippedEntry) {
        let Some(early) = self.early.as_mut() else {
            return;
        };
        // From seq 1 on, without a gap (`begin` may have moved `last` past
        // an entry never appended here: then the last kept is not `last`,
        // and `early_after` answers nothing).
        let follows = match early.last() {
            Some(kept) => kept.seq.0.checked_add(1) == Some(entry.seq.0),
            None => entry.seq == Seq(1),
        };
        let bytes = self.early_bytes.saturating_add(entry.bytes.len() as u64);
        if follows && bytes <= EARLY_BYTES_MAX {
            early.push(entry.clone());
            self.early_bytes = bytes;
        } else {
            self.early = None;
            self.early_bytes = 0;
        }
    }

    /// The kept entries that follow `after`, up to `last`: what a WAL read
    /// after `after` would return, when they are all kept.
    fn early_after(&self, after: Option<(Epoch, Seq)>) -> Option<Vec<ShippedEntry>> {
        let early = self.early.as_ref()?;
        let from = usize::try_from(seq_of(after).0).ok()?;
        if let Some((epoch, seq)) = after {
            // `after` must be our entry, not another epoch's at that seq.
            let ours = early.get(from.checked_sub(1)?)?;
            if (ours.epoch, ours.seq) != (epoch, seq) {
                return None;
            }
        }
        let rest = early.get(from..)?;
        let reaches = rest.last().map(|e| (e.epoch, e.seq)) == self.last;
        (reaches && !rest.is_empty()).then(|| rest.to_vec())
    }

    /// Records where the log is at `now_ms` if it moved since the last
    /// sample (a sample holds from its time until the next one's), keeping
    /// one sample at or before `now_ms - keep_ms` and every later one. An
    /// idle checkpoint keeps its one sample: every tick visits every
    /// checkpoint, and most are idle.
    fn mark(&mut self, now_ms: u64, keep_ms: u64) {
        let last = seq_of(self.last);
        if self.marks.back().is_none_or(|(_, s)| *s != last) {
            self.marks.push_back((now_ms, last));
        }
        let horizon = now_ms.saturating_sub(keep_ms);
        while self.marks.get(1).is_some_and(|(t, _)| *t <= horizon) {
            self.marks.pop_front();
        }
    }

    /// The last seq as of `at_ms` (the oldest sample when none is that old).
    fn last_as_of(&self, at_ms: u64) -> Seq {
        self.marks
            .iter()
            .rev()
            .find(|(t, _)| *t <= at_ms)
            .or(self.marks.front())
            .map_or(Seq(0), |(_, s)| *s)
    }

    /// The first remembered entry after `seq` (the window is in seq order).
    fn window_after(&self, seq: Seq) -> Option<(Seq, Lsn, u64)> {
        let index = self.window.partition_point(|(s, _, _)| *s <= seq);
        self.window.get(index).copied()
    }
}

/// Primary: `peer`'s log cannot be continued; stream it a snapshot that
/// names the position of the CatchUp it answers, so that a stream answering
/// an older CatchUp (still on the wire when a newer one was answered) never
/// discards what the backup got since. A stream the backup ignores stalls:
/// the tick probes it after two lag timeouts without progress, and its
/// CatchUp starts over.
///
/// Not while it is in the in-sync set, or may be put in it by an addition
/// still pending: installing discards what the backup holds, released
/// writes included, until the install ends, and were it made active
/// meanwhile they would be lost. It leaves the set first (proposed on
/// tick); its CatchUp after that gets the snapshot.
fn start_snapshot(outputs: &mut Vec<DataOutput>, at: SnapshotAt, peer: &mut Peer, in_sync: bool) {
    let SnapshotAt {
        instance,
        to,
        now_ms,
        settle_ms,
    } = at;
    let addition_pending = peer
        .add_proposed_ms
        .is_some_and(|t| now_ms.saturating_sub(t) < settle_ms);
    if in_sync || addition_pending {
        peer.mode = PeerMode::AwaitCatchUp;
        peer.serving = None;
        peer.needs_snapshot = in_sync;
        return;
    }
    peer.mode = PeerMode::Snapshotting;
    peer.needs_snapshot = false;
    // The CatchUp being answered (or, after a probe reset it, what was
    // sent last).
    peer.snapshot_answers = peer.serving.map_or(peer.sent, |(last, _)| last);
    peer.snapshot_progress_ms = now_ms;
    outputs.push(DataOutput::SendSnapshot { instance, to });
}

/// Where a snapshot would go, for [`start_snapshot`].
struct SnapshotAt {
    instance: InstanceId,
    to: NodeId,
    now_ms: u64,
    /// How long an in-sync addition may still be applied after its proposal.
    settle_ms: u64,
}

/// A snapshot part as a backup receives it.
struct SnapshotPartIn {
    last: (Epoch, Seq),
    answers: Option<(Epoch, Seq)>,
    index: u64,
    done: bool,
    bytes: Vec<u8>,
}

#[derive(Debug)]
struct Backup {
    epoch: Epoch,
    active: Option<NodeId>,
    /// Last entry handed to the store (applied or in flight).
    last: Option<(Epoch, Seq)>,
    /// Durable positions below this (a snapshot's) are not acknowledged:
    /// they may belong to a suffix the snapshot discarded.
    floor: Option<(Epoch, Seq)>,
    /// The primary showed our log matches its own.
    synced: bool,
    catch_up_sent_ms: Option<u64>,
    acked_sent: Option<Seq>,
    /// A snapshot being installed: (its position, the next part expected).
    installing: Option<((Epoch, Seq), u64)>,
    /// The position named by the last CatchUp sent: a snapshot stream must
    /// answer it, or it is stale.
    asked: Option<Option<(Epoch, Seq)>>,
}

#[derive(Debug)]
enum Role {
    Primary(Primary),
    Backup(Backup),
}

#[derive(Debug)]
struct Instance {
    rs: ReplicaSet,
    /// This node's last durable position of the instance.
    durable: Option<(Epoch, Seq)>,
    role: Role,
}

impl Instance {
    /// Nothing for a tick to do until something touches this instance: a
    /// synced backup, or a begun primary whose backups all stream, hold its
    /// whole log, need no snapshot and are its in-sync set, which names
    /// nobody else. Such a primary also holds no WAL (see `wal_hold`).
    fn settled(&self, me: NodeId) -> bool {
        match &self.role {
            Role::Backup(backup) => backup.synced,
            Role::Primary(primary) => {
                if primary.fenced || !primary.begun {
                    return false;
                }
                let last = seq_of(primary.last);
                let in_sync = &self.rs.in_sync;
                primary.peers.iter().all(|(node, peer)| {
                    peer.mode == PeerMode::Streaming
                        && !peer.needs_snapshot
                        && peer.acked.is_some_and(|a| a >= last)
                        && in_sync.contains(node)
                }) && in_sync
                    .iter()
                    .all(|n| *n == me || primary.peers.contains_key(n))
            }
        }
    }
}

/// Instances a tick visits at most: a failover or a dead backup can leave
/// every checkpoint a node holds unsettled at once (tens of thousands), and
/// a tick that visited them all would hold the runtime past its lease. The
/// rest wait for the next ticks, in instance order from where the last
/// tick stopped; their timers (probes, removals, additions) fire that much
/// later, and nothing waits on a tick to be correct.
pub const TICK_VISITS_MAX: usize = 512;

/// How often the WAL hold is computed while more instances are unsettled
/// than a tick visits.
const HOLD_EVERY_MS: u64 = 1000;

/// A data plane's instances, and which of them its ticks visit: those
/// handed out mutably (or added) since they were last visited, and those
/// a visit left unsettled. A settled instance ([`Instance::settled`]) has
/// nothing for a tick to do, and only a change to it can unsettle it, so
/// ticks cost what is in flight rather than everything a node holds (a
/// node ticks every 50 ms and may hold a million checkpoints).
#[derive(Debug, Default)]
struct Instances {
    map: BTreeMap<InstanceId, Instance>,
    /// Added or handed out by `get_mut` since the last tick.
    touched: BTreeSet<InstanceId>,
    /// Not known to be settled: touched, or unsettled at its last visit.
    unsettled: BTreeSet<InstanceId>,
    /// Where the last tick stopped.
    cursor: Option<InstanceId>,
    /// Visited by a tick since the last [`DataPlane::take_visited`]: every
    /// instance whose lag may have changed since.
    visited: BTreeSet<InstanceId>,
}

impl Instances {
    fn get(&self, instance: &InstanceId) -> Option<&Instance> {
        self.map.get(instance)
    }

    fn get_mut(&mut self, instance: &InstanceId) -> Option<&mut Instance> {
        let inst = self.map.get_mut(instance)?;
        self.touched.insert(*instance);
        Some(inst)
    }

    fn insert(&mut self, instance: InstanceId, inst: Instance) {
        self.touched.insert(instance);
        self.map.insert(instance, inst);
    }

    fn remove(&mut self, instance: &InstanceId) -> Option<Instance> {
        self.touched.remove(instance);
        self.unsettled.remove(instance);
        self.visited.remove(instance);
        self.map.remove(instance)
    }

    /// What this tick visits: at most `max` of the instances not known to
    /// be settled, in instance order from where the last tick stopped,
    /// wrapping around (all of them, in instance order, when they fit).
    /// Each visit tells [`Instances::visited`] whether to come back; those
    /// not visited stay for the next ticks.
    fn take_due(&mut self, max: usize) -> Vec<InstanceId> {
        let touched = std::mem::take(&mut self.touched);
        self.unsettled.extend(touched);
        let mut due: Vec<InstanceId>;
        if self.unsettled.len() <= max {
            due = self.unsettled.iter().copied().collect();
            self.cursor = None;
        } else {
            let from = self
                .cursor
                .map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
            due = self
                .unsettled
                .range((from, std::ops::Bound::Unbounded))
                .take(max)
                .copied()
                .collect();
            let rest = max - due.len();
            due.extend(self.unsettled.iter().take(rest).copied());
            self.cursor = due.last().copied();
        }
        self.visited.extend(due.iter().copied());
        due
    }

    fn visited(&mut self, instance: InstanceId, settled: bool) {
        if settled {
            self.unsettled.remove(&instance);
        }
    }

    /// Every instance not known to be settled.
    fn unsettled(&self) -> impl Iterator<Item = &Instance> {
        self.unsettled.iter().filter_map(|i| self.map.get(i))
    }
}

/// The data plane of one node, for all checkpoint instances it holds.
#[derive(Debug)]
pub struct DataPlane {
    me: NodeId,
    replica_lag_timeout_ms: u64,
    read_bytes_max: u64,
    tracker: Tracker,
    instances: Instances,
    outputs: Vec<DataOutput>,
    hold_sent: Option<Option<Lsn>>,
    /// When the WAL hold was last computed.
    hold_at_ms: u64,
    /// This node's view of the control plane is fresh (it holds its lease,
    /// which it does only once it applied what the Raft leader had
    /// committed when it granted it); see [`DataPlane::set_control_fresh`].
    control_fresh: bool,
}

/// Bytes read from the WAL for one backup that may be unacknowledged before
/// reading pauses.
fn read_ahead_bytes_max(read_bytes_max: u64) -> u64 {
    read_bytes_max.saturating_mul(4)
}

fn read_inflight_bytes(peer: &Peer) -> u64 {
    peer.read_inflight.iter().map(|(_, b)| *b).sum()
}

fn try_again(detail: String) -> CkptError {
    CkptError::new(ErrorCode::TryAgain, detail)
}

/// Asks backup `node` where it is (it answers with a CatchUp).
fn probe(
    outputs: &mut Vec<DataOutput>,
    instance: InstanceId,
    epoch: Epoch,
    node: NodeId,
    peer: &mut Peer,
    now_ms: u64,
) {
    peer.probe_sent_ms = Some(now_ms);
    // Its answer must not be taken for a retry.
    peer.serving = None;
    outputs.push(DataOutput::Send {
        to: node,
        msg: DataMessage::Probe { instance, epoch },
    });
}

fn seq_of(point: Option<(Epoch, Seq)>) -> Seq {
    point.map_or(Seq(0), |(_, s)| s)
}

impl DataPlane {
    /// The data plane of node `me`; a backup behind for `replica_lag_timeout_ms`
    /// without acknowledging progress is proposed out of the in-sync set.
    pub fn new(me: NodeId, replica_lag_timeout_ms: u64) -> Self {
        DataPlane {
            me,
            replica_lag_timeout_ms: replica_lag_timeout_ms.max(1),
            read_bytes_max: READ_BYTES_MAX_DEFAULT,
            tracker: Tracker::new(me),
            instances: Instances::default(),
            outputs: Vec::new(),
            hold_sent: None,
            hold_at_ms: 0,
            control_fresh: true,
        }
    }

    /// The same data plane with WEAK and ACTIVE writes held while they
    /// would be more than `lag` records ahead of an in-sync backup
    /// (`replica_lag_records_max`; [`Tracker`] has the rule).
    #[must_use]
    pub fn with_lag_records_max(mut self, lag: u64) -> Self {
        self.tracker = Tracker::with_lag_max(self.me, lag);
        self
    }

    /// Whether this node's view of the control plane is fresh (the driver
    /// sets it every tick: whether it holds its lease). A primary gives up
    /// waiting for a backup whose addition to the in-sync set it proposed
    /// only while fresh: the proposal may have been committed without this
    /// node having applied it yet (it was cut off), and a failover could
    /// then name that backup, which lacks what was released without it
    /// (the cluster simulator's run 3212).
    pub fn set_control_fresh(&mut self, fresh: bool) {
        self.control_fresh = fresh;
    }

    /// Sets the bytes one catch-up WAL read returns at most.
    pub fn set_read_bytes_max(&mut self, bytes: u64) {
        self.read_bytes_max = bytes.max(1);
    }

    /// This node's id.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// The reply tracker (read-only; feed it through the data plane).
    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// The control plane applied a command touching `rs.instance` (call after
    /// every apply, and once per instance at start). `local` is this node's
    /// last entry of the instance (`store.position`), used when the instance
    /// or this node's role in it is new.
    pub fn on_metadata(&mut self, rs: &ReplicaSet, local: Option<Position>, now_ms: u64) {
        let instance = rs.instance;
        let me = self.me;
        if !rs.replicas.contains(&me) {
            if self.instances.remove(&instance).is_some() {
                self.tracker.forget(
                    instance,
                    try_again(format!(
                        "instance {}: this node no longer holds a replica",
                        instance.0
                    )),
                );
                self.flush_tracker();
            }
            return;
        }
        let local = local.map(|p| point(&p));
        let previous = self.instances.remove(&instance);
        let (durable, prev_role, prev_rs) = match previous {
            Some(inst) => (inst.durable, Some(inst.role), Some(inst.rs)),
            None => (local, None, None),
        };
        let in_sync_changed = prev_rs
            .as_ref()
            .is_none_or(|p| p.in_sync != rs.in_sync || p.epoch != rs.epoch);
        let role = if rs.active == Some(me) {
            match prev_role {
                Some(Role::Primary(mut primary)) if primary.epoch == rs.epoch => {
                    primary.peers.retain(|n, _| rs.replicas.contains(n));
                    for node in &rs.replicas {
                        if *node != me {
                            primary
                                .peers
                                .entry(*node)
                                .or_insert_with(|| Peer::new(now_ms));
                        }
                    }
                    if in_sync_changed {
                        primary.stray_proposed_ms = None;
                        for peer in primary.peers.values_mut() {
                            peer.remove_proposed_ms = None;
                            peer.add_proposed_ms = None;
                        }
                    }
                    Role::Primary(primary)
                }
                other => {
                    if matches!(other, Some(Role::Primary(_))) {
                        self.fail_pending(instance, "this node's epoch ended");
                    }
                    let last = match &other {
                        Some(Role::Backup(b)) => b.last.max(local),
                        _ => local,
                    };
                    let peers = rs
                        .replicas
                        .iter()
                        .filter(|n| **n != me)
                        .map(|n| (*n, Peer::new(now_ms)))
                        .collect();
                    Role::Primary(Primary {
                        epoch: rs.epoch,
                        begun: false,
                        begun_start: None,
                        last,
                        window: VecDeque::new(),
                        bytes_total: 0,
                        peers,
                        deferred: BTreeMap::new(),
                        fenced: false,
                        stray_proposed_ms: None,
                        marks: VecDeque::new(),
                        // Only a log that starts here can be kept whole.
                        early: last.is_none().then(Vec::new),
                        early_bytes: 0,
                        early_since_ms: now_ms,
                    })
                }
            }
        } else {
            match prev_role {
                Some(Role::Backup(backup))
                    if backup.epoch == rs.epoch && backup.active == rs.active =>
                {
                    Role::Backup(backup)
                }
                other => {
                    let last = match &other {
                        Some(Role::Backup(b)) => b.last,
                        Some(Role::Primary(p)) => {
                            self.fail_pending(
                                instance,
                                "this node is no longer the active replica",
                            );
                            p.last.max(local)
                        }
                        None => local,
                    };
                    Role::Backup(Backup {
                        epoch: rs.epoch,
                        active: rs.active,
                        last,
                        floor: None,
                        synced: false,
                        catch_up_sent_ms: None,
                        acked_sent: None,
                        installing: None,
                        asked: None,
                    })
                }
            }
        };
        let mut inst = Instance {
            rs: rs.clone(),
            durable,
            role,
        };
        self.tracker
            .set_in_sync(instance, rs.epoch, &rs.in_sync, rs.min_in_sync);
        if let Role::Primary(primary) = &mut inst.role {
            if primary.begun_start.is_none() {
                if let Some(start) = rs
                    .epoch_starts
                    .iter()
                    .filter(|(e, _)| *e == rs.epoch)
                    .map(|(_, s)| *s)
                    .min()
                {
                    primary.begun_start = Some(start);
                    // An empty local log: this node has not created the
                    // instance in its store yet (a new checkpoint). Catch-ups
                    // wait for `on_epoch_begun`, or their WAL reads would
                    // find nothing and the backups would wait for a probe.
                    if primary.last.is_some() {
                        primary.begun = true;
                        if primary.last.is_some_and(|l| l.1 < start) {
                            primary.last = Some((rs.epoch, start));
                        }
                    }
                }
            }
        }
        if let Role::Backup(backup) = &mut inst.role {
            if !backup.synced && backup.catch_up_sent_ms.is_none() {
                Self::request_catch_up(&mut self.outputs, instance, backup, now_ms, 0);
            }
        }
        self.instances.insert(instance, inst);
        self.run_deferred(instance, now_ms);
        self.flush_tracker();
    }

    /// A destroyed instance: forget it, failing its pending tickets.
    pub fn on_instance_removed(&mut self, instance: InstanceId) {
        self.instances.remove(&instance);
        self.tracker.forget(
            instance,
            CkptError::new(
                ErrorCode::DoesntExist,
                format!("instance {} was destroyed", instance.0),
            ),
        );
        self.flush_tracker();
    }

    /// The new epoch began on this node as primary: its EpochStart entry (or,
    /// for a new instance, its create entry) is at `pos`. Catch-ups that waited
    /// for it are answered now.
    pub fn on_epoch_begun(&mut self, pos: Position, now_ms: u64) {
        self.begin(pos, Some(pos.seq), now_ms);
    }

    /// This node restarted as the active replica of an epoch it began before;
    /// `last` is its last entry (`store.position`). Unless the control plane
    /// recorded the epoch's start, backups whose last entry is of an older
    /// epoch get a snapshot (their divergence point cannot be proven).
    pub fn on_epoch_resumed(&mut self, last: Position, now_ms: u64) {
        self.begin(last, None, now_ms);
    }

    fn begin(&mut self, pos: Position, start: Option<Seq>, now_ms: u64) {
        let Some(inst) = self.instances.get_mut(&pos.instance) else {
            return;
        };
        let Role::Primary(primary) = &mut inst.role else {
            return;
        };
        if primary.epoch != pos.epoch {
            return;
        }
        primary.begun = true;
        if primary.begun_start.is_none() {
            primary.begun_start = start;
        }
        if primary.last.is_none_or(|l| l < point(&pos)) {
            primary.last = Some(point(&pos));
        }
        self.run_deferred(pos.instance, now_ms);
        // A backup's CatchUp may have come before this node knew the
        // instance (and was dropped): ask the ones not heard from now
        // rather than a retry interval later.
        let Some(Role::Primary(primary)) =
            self.instances.get_mut(&pos.instance).map(|i| &mut i.role)
        else {
            return;
        };
        let epoch = primary.epoch;
        for (node, peer) in primary.peers.iter_mut() {
            if peer.mode == PeerMode::AwaitCatchUp {
                probe(&mut self.outputs, pos.instance, epoch, *node, peer, now_ms);
            }
        }
    }

    /// The store appended (and applied) these entries on this node, in log
    /// order; called before their fsync. Ships them to streaming backups.
    pub fn on_appended(&mut self, entries: &[ShippedEntry], now_ms: u64) {
        // One message per backup and instance per call, in log order.
        let mut runs: BTreeMap<InstanceId, Vec<&ShippedEntry>> = BTreeMap::new();
        for entry in entries {
            runs.entry(entry.instance).or_default().push(entry);
        }
        for run in runs.values() {
            self.append_run(run, now_ms);
        }
    }

    fn append_run(&mut self, run: &[&ShippedEntry], now_ms: u64) {
        let instance = run[0].instance;
        let Some(inst) = self.instances.get_mut(&instance) else {
            return;
        };
        let Role::Primary(primary) = &mut inst.role else {
            return;
        };
        let before = seq_of(primary.last);
        for peer in primary.peers.values_mut() {
            if peer.acked.unwrap_or_default() >= before {
                // It was caught up: its lag clock starts now.
                peer.progress_ms = now_ms;
            }
        }
        for entry in run {
            if primary.last.is_some_and(|l| l >= (entry.epoch, entry.seq)) {
                continue;
            }
            primary.keep_early(entry);
            primary.last = Some((entry.epoch, entry.seq));
            primary
                .window
                .push_back((entry.seq, entry.lsn, primary.bytes_total));
            primary.bytes_total = primary.bytes_total.saturating_add(entry.bytes.len() as u64);
        }
        while primary.window.len() > LAG_WINDOW_ENTRIES_MAX {
            primary.window.pop_front();
        }
        if primary.fenced || !primary.begun {
            return;
        }
        let read_bytes_max = self.read_bytes_max;
        for (node, peer) in primary.peers.iter_mut() {
            if peer.mode == PeerMode::Reading {
                if let Some(tail) = peer.tail.as_mut() {
                    for entry in run {
                        peer.tail_bytes = peer.tail_bytes.saturating_add(entry.bytes.len() as u64);
                        tail.push((*entry).clone());
                    }
                    if peer.tail_bytes > read_bytes_max {
                        // Too much for memory: plain reads go on.
                        peer.tail = None;
                        peer.tail_bytes = 0;
                    }
                }
                continue;
            }
            if peer.mode != PeerMode::Streaming {
                continue;
            }
            let sent_seq = seq_of(peer.sent);
            let fresh: Vec<&ShippedEntry> =
                run.iter().copied().filter(|e| e.seq > sent_seq).collect();
            let Some(first) = fresh.first() else {
                continue;
            };
            if first.seq.0 != sent_seq.0.saturating_add(1) {
                // Entries went by that this peer never got: read them.
                peer.mode = PeerMode::Reading;
                self.outputs.push(DataOutput::ReadEntries {
                    instance,
                    after: peer.sent,
                    after_lsn: peer.lsn_of(peer.sent),
                    for_node: *node,
                    max_bytes: self.read_bytes_max,
                });
                continue;
            }
            let wire: Vec<WireEntry> = fresh
                .iter()
                .map(|e| WireEntry {
                    epoch: e.epoch,
                    seq: e.seq,
                    bytes: e.bytes.clone(),
                })
                .collect();
            let prev = peer.sent;
            peer.sent = wire.last().map(|w| (w.epoch, w.seq));
            self.outputs.push(DataOutput::Send {
                to: *node,
                msg: DataMessage::Entries {
                    instance,
                    epoch: primary.epoch,
                    prev,
                    entries: wire,
                },
            });
        }
    }

    /// This node's log is durable up to these positions (the store's durable
    /// listener; one position per instance).
    pub fn on_local_durable(&mut self, positions: &[Position]) {
        for pos in positions {
            if let Some(inst) = self.instances.get_mut(&pos.instance) {
                if inst.durable.is_none_or(|d| d < point(pos)) {
                    inst.durable = Some(point(pos));
                }
                if let Role::Backup(backup) = &mut inst.role {
                    Self::maybe_ack(&mut self.outputs, pos.instance, backup, inst.durable);
                }
            }
        }
        self.tracker.local_durable(positions);
        self.flush_tracker();
    }

    /// Backup: the store made replicated entries (or an installed snapshot)
    /// durable up to `pos`.
    pub fn on_replica_durable(&mut self, pos: Position) {
        self.on_local_durable(&[pos]);
    }

    /// Backup: the store refused replicated entries or a snapshot; `store_last`
    /// is its last entry of the instance now. Asks the primary to catch us up.
    pub fn on_replica_failed(
        &mut self,
        instance: InstanceId,
        store_last: Option<Position>,
        now_ms: u64,
    ) {
        let Some(inst) = self.instances.get_mut(&instance) else {
            return;
        };
        let Role::Backup(backup) = &mut inst.role else {
            return;
        };
        backup.last = store_last.map(|p| point(&p));
        backup.synced = false;
        backup.catch_up_sent_ms = None;
        backup.installing = None;
        Self::request_catch_up(&mut self.outputs, instance, backup, now_ms, 0);
    }

    /// Backup: snapshot part `index` (not the last) of the snapshot at
    /// `last` is durable here: ask the primary for the next.
    pub fn on_snapshot_part_durable(
        &mut self,
        instance: InstanceId,
        last: (Epoch, Seq),
        index: u64,
        now_ms: u64,
    ) {
        let Some(Role::Backup(backup)) = self.instances.get_mut(&instance).map(|i| &mut i.role)
        else {
            return;
        };
        backup.catch_up_sent_ms = Some(now_ms);
        let Some(active) = backup.active else {
            return;
        };
        if backup.installing.is_some_and(|(at, _)| at == last) {
            self.outputs.push(DataOutput::Send {
                to: active,
                msg: DataMessage::SnapshotAck {
                    instance,
                    epoch: backup.epoch,
                    last,
                    index,
                },
            });
        }
    }

    /// A message from a peer.
    pub fn on_message(&mut self, from: NodeId, msg: DataMessage, now_ms: u64) {
        if let DataMessage::CatchUp {
            instance, epoch, ..
        }
        | DataMessage::Ack {
            instance, epoch, ..
        }
        | DataMessage::SnapshotAck {
            instance, epoch, ..
        } = &msg
        {
            if let Some(Role::Primary(primary)) =
                self.instances.get_mut(instance).map(|i| &mut i.role)
            {
                if primary.epoch == *epoch {
                    if let Some(peer) = primary.peers.get_mut(&from) {
                        peer.heard = true;
                    }
                }
            }
        }
        match msg {
            DataMessage::Entries {
                instance,
                epoch,
                prev,
                entries,
            } => self.backup_entries(from, instance, epoch, prev, entries, now_ms),
            DataMessage::SnapshotPart {
                instance,
                epoch,
                last,
                answers,
                index,
                done,
                bytes,
            } => self.backup_snapshot_part(
                from,
                instance,
                epoch,
                SnapshotPartIn {
                    last,
                    answers,
                    index,
                    done,
                    bytes,
                },
                now_ms,
            ),
            DataMessage::SnapshotAck {
                instance,
                epoch,
                last,
                index,
            } => self.primary_snapshot_ack(from, instance, epoch, last, index, now_ms),
            DataMessage::Ack {
                instance,
                epoch,
                seq,
            } => self.primary_ack(from, instance, epoch, seq, now_ms),
            DataMessage::CatchUp {
                instance,
                epoch,
                last,
            } => self.primary_catch_up(from, instance, epoch, last, now_ms),
            DataMessage::Fenced { instance, epoch } => {
                self.fence_if_newer(instance, epoch, from);
            }
            DataMessage::Probe { instance, epoch } => {
                self.backup_probe(from, instance, epoch, now_ms)
            }
        }
        self.flush_tracker();
    }

    /// Primary: the WAL read for `for_node` that followed `after` (as in its
    /// [`DataOutput::ReadEntries`]) returned these entries (in order).
    pub fn on_entries_read(
        &mut self,
        for_node: NodeId,
        instance: InstanceId,
        after: Option<(Epoch, Seq)>,
        entries: Vec<ShippedEntry>,
        now_ms: u64,
    ) {
        let settle_ms = self.settle_ms();
        let read_bytes_max = self.read_bytes_max;
        let Some(inst) = self.instances.get_mut(&instance) else {
            return;
        };
        let Role::Primary(primary) = &mut inst.role else {
            return;
        };
        let epoch = primary.epoch;
        let primary_last = seq_of(primary.last);
        let Some(peer) = primary.peers.get_mut(&for_node) else {
            return;
        };
        if peer.mode != PeerMode::Reading || primary.fenced {
            return;
        }
        // A read issued for an earlier catch-up (the backup asked again
        // while it ran) checked its own `after`, not the one we stand at
        // now: its entries may follow another epoch's entry at this seq.
        // The read issued for the current position answers in its place.
        if after != peer.sent {
            return;
        }
        let sent_seq = seq_of(peer.sent);
        let fresh: Vec<ShippedEntry> = entries.into_iter().filter(|e| e.seq > sent_seq).collect();
        let contiguous = fresh
            .first()
            .is_none_or(|f| f.seq.0 == sent_seq.0.saturating_add(1))
            && fresh
                .windows(2)
                .all(|w| w[1].seq.0 == w[0].seq.0.saturating_add(1));
        if !contiguous {
            let in_sync = inst.rs.in_sync.contains(&for_node);
            let at = SnapshotAt {
                instance,
                to: for_node,
                now_ms,
                settle_ms,
            };
            start_snapshot(&mut self.outputs, at, peer, in_sync);
            return;
        }
        let _ = now_ms;
        let prev = peer.sent;
        let mut fresh = fresh;
        if let Some(last) = fresh.last() {
            peer.sent = Some((last.epoch, last.seq));
            peer.read_at = Some(((last.epoch, last.seq), last.lsn));
        }
        // The entries appended while the read ran, if they continue it up
        // to our last entry: send them too, and stream from there.
        if let Some(tail) = peer.tail.take() {
            peer.tail_bytes = 0;
            let read_to = seq_of(peer.sent);
            let rest: Vec<ShippedEntry> = tail.into_iter().filter(|e| e.seq > read_to).collect();
            let bridges = rest
                .first()
                .is_some_and(|f| f.seq.0 == read_to.0.saturating_add(1))
                && rest
                    .windows(2)
                    .all(|w| w[1].seq.0 == w[0].seq.0.saturating_add(1))
                && rest.last().is_some_and(|l| l.seq == primary_last);
            if bridges {
                if let Some(last) = rest.last() {
                    peer.sent = Some((last.epoch, last.seq));
                }
                fresh.extend(rest);
            }
        }
        let done = fresh.is_empty() || seq_of(peer.sent) >= primary_last;
        let batch_bytes: u64 = fresh.iter().map(|e| e.bytes.len() as u64).sum();
        if !fresh.is_empty() {
            peer.read_inflight
                .push_back((seq_of(peer.sent), batch_bytes));
        }
        self.outputs.push(DataOutput::Send {
            to: for_node,
            msg: DataMessage::Entries {
                instance,
                epoch,
                prev,
                entries: fresh
                    .into_iter()
                    .map(|e| WireEntry {
                        epoch: e.epoch,
                        seq: e.seq,
                        bytes: e.bytes,
                    })
                    .collect(),
            },
        });
        if done {
            peer.mode = PeerMode::Streaming;
            peer.reset_read();
        } else if read_inflight_bytes(peer) > read_ahead_bytes_max(read_bytes_max) {
            // Wait for acknowledgements before reading more: a backup far
            // behind must not pull the whole WAL into the send queue.
            peer.read_paused = true;
        } else {
            peer.tail = Some(Vec::new());
            self.outputs.push(DataOutput::ReadEntries {
                instance,
                after: peer.sent,
                after_lsn: peer.lsn_of(peer.sent),
                for_node,
                max_bytes: read_bytes_max,
            });
        }
    }

    /// Primary: the WAL no longer holds what `for_node` needs; send a snapshot.
    pub fn on_entries_gone(&mut self, for_node: NodeId, instance: InstanceId, now_ms: u64) {
        let settle_ms = self.settle_ms();
        let Some(inst) = self.instances.get_mut(&instance) else {
            return;
        };
        let in_sync = inst.rs.in_sync.contains(&for_node);
        let Role::Primary(primary) = &mut inst.role else {
            return;
        };
        if let Some(peer) = primary.peers.get_mut(&for_node) {
            if peer.mode == PeerMode::Reading {
                peer.reset_read();
                let at = SnapshotAt {
                    instance,
                    to: for_node,
                    now_ms,
                    settle_ms,
                };
                start_snapshot(&mut self.outputs, at, peer, in_sync);
            }
        }
    }

    /// Primary: a WAL read or snapshot for `for_node` failed. The backup's
    /// CatchUp retry starts over.
    pub fn on_read_failed(&mut self, for_node: NodeId, instance: InstanceId) {
        if let Some(peer) = self.peer_mut(instance, for_node) {
            peer.mode = PeerMode::AwaitCatchUp;
            peer.reset_read();
        }
    }

    /// Primary: part `index` of the snapshot streamed to `to` was read:
    /// the instance as of its entry `last`, install entries encoded as
    /// `bytes`. Sends it; after the last part, the entries that follow.
    pub fn on_snapshot_part(
        &mut self,
        to: NodeId,
        last: Position,
        index: u64,
        done: bool,
        bytes: Vec<u8>,
        now_ms: u64,
    ) {
        let read_bytes_max = self.read_bytes_max;
        let instance = last.instance;
        let Some(inst) = self.instances.get_mut(&instance) else {
            return;
        };
        let Role::Primary(primary) = &mut inst.role else {
            return;
        };
        let epoch = primary.epoch;
        let primary_last = seq_of(primary.last);
        let Some(peer) = primary.peers.get_mut(&to) else {
            return;
        };
        let at = point(&last);
        let expected = peer.snapshot_part.map_or(0, |(_, i)| i.saturating_add(1));
        let same = peer.snapshot_part.is_none_or(|(a, _)| a == at);
        if peer.mode != PeerMode::Snapshotting || primary.fenced || index != expected || !same {
            return;
        }
        self.outputs.push(DataOutput::Send {
            to,
            msg: DataMessage::SnapshotPart {
                instance,
                epoch,
                last: at,
                answers: peer.snapshot_answers,
                index,
                done,
                bytes,
            },
        });
        // Progress: a CatchUp retry now would restart the stream.
        if let Some((_, at_ms)) = &mut peer.serving {
            *at_ms = now_ms;
        }
        peer.snapshot_progress_ms = now_ms;
        if !done {
            peer.snapshot_part = Some((at, index));
            return;
        }
        peer.snapshot_part = None;
        peer.sent = Some(at);
        if last.seq < primary_last {
            peer.mode = PeerMode::Reading;
            self.outputs.push(DataOutput::ReadEntries {
                instance,
                after: peer.sent,
                after_lsn: peer.lsn_of(peer.sent),
                for_node: to,
                max_bytes: read_bytes_max,
            });
        } else {
            peer.mode = PeerMode::Streaming;
        }
    }

    /// Primary: the backup holds snapshot part `index`: the next one.
    fn primary_snapshot_ack(
        &mut self,
        from: NodeId,
        instance: InstanceId,
        epoch: Epoch,
        last: (Epoch, Seq),
        index: u64,
        now_ms: u64,
    ) {
        let Some(Role::Primary(primary)) = self.instances.get_mut(&instance).map(|i| &mut i.role)
        else {
            return;
        };
        if epoch != primary.epoch || primary.fenced {
            return;
        }
        let Some(peer) = primary.peers.get_mut(&from) else {
            return;
        };
        if peer.mode != PeerMode::Snapshotting || peer.snapshot_part != Some((last, index)) {
            return;
        }
        if let Some((_, at_ms)) = &mut peer.serving {
            *at_ms = now_ms;
        }
        peer.snapshot_progress_ms = now_ms;
        self.outputs
            .push(DataOutput::NextSnapshotPart { instance, to: from });
    }

    /// Waits for `need` on the entry at `pos` (registered after it was
    /// applied on this node, the active replica).
    pub fn register(&mut self, ticket: u64, pos: Position, need: Need) {
        self.tracker.register(ticket, pos, need);
        self.flush_tracker();
    }

    /// Time passed: catch-up retries and probes, in-sync removals and
    /// additions, the WAL hold.
    pub fn tick(&mut self, now_ms: u64) {
        let settle_ms = self.settle_ms();
        let retry_ms = (self.replica_lag_timeout_ms / 2).max(1);
        for instance in self.instances.take_due(TICK_VISITS_MAX) {
            let Some(inst) = self.instances.map.get_mut(&instance) else {
                continue;
            };
            // A visit changes nothing `settled` looks at (probes, proposals,
            // catch-up requests, a stalled snapshot given up: all of an
            // unsettled instance), so one look serves the visit and the
            // decision to come back; test builds check it every tick.
            let settled = inst.settled(self.me);
            match &mut inst.role {
                Role::Backup(backup) => {
                    if !backup.synced {
                        // A snapshot part can take long to log (4 MiB on a
                        // loaded disk): a stream is waited for longer.
                        let retry_ms = if backup.installing.is_some() {
                            settle_ms
                        } else {
                            retry_ms
                        };
                        Self::request_catch_up(
                            &mut self.outputs,
                            instance,
                            backup,
                            now_ms,
                            retry_ms,
                        );
                    }
                }
                Role::Primary(_) => self.tick_primary(instance, settled, now_ms),
            }
            self.instances.visited(instance, settled);
        }
        self.flush_tracker();
        #[cfg(test)]
        self.check_unvisited_settled();
        // The hold walks every unsettled instance: every tick while they
        // are few, at most once a second while a tick cannot visit them all
        // (a dead node's thousands). A hold a second stale at worst lets a
        // segment go that a lagging backup then gets as a snapshot.
        let many = self.instances.unsettled.len() > TICK_VISITS_MAX;
        if !many || now_ms.saturating_sub(self.hold_at_ms) >= HOLD_EVERY_MS {
            self.hold_at_ms = now_ms;
            let hold = self.wal_hold();
            if self.hold_sent != Some(hold) {
                self.hold_sent = Some(hold);
                self.outputs.push(DataOutput::HoldWal(hold));
            }
        }
    }

    fn tick_primary(&mut self, instance: InstanceId, settled: bool, now_ms: u64) {
        let timeout = self.replica_lag_timeout_ms;
        let settle_ms = self.settle_ms();
        let control_fresh = self.control_fresh;
        let retry_ms = (timeout / 2).max(1);
        let me = self.me;
        // Not `Instances::get_mut`: visiting is not touching.
        let Some(inst) = self.instances.map.get_mut(&instance) else {
            return;
        };
        let Role::Primary(primary) = &mut inst.role else {
            return;
        };
        if primary.fenced || !primary.begun {
            return;
        }
        let last = seq_of(primary.last);
        if primary.early.is_some() && now_ms.saturating_sub(primary.early_since_ms) >= timeout {
            primary.early = None;
            primary.early_bytes = 0;
        }
        // Settled: nothing below applies (no probe, no addition, no
        // removal), and later ticks pass this instance by until it changes.
        if settled {
            // Every backup streams: nobody will ask for the first entries.
            primary.early = None;
            primary.early_bytes = 0;
            primary.mark(now_ms, timeout);
            self.tracker.pace(instance, &BTreeSet::new());
            return;
        }
        let required: BTreeSet<NodeId> = self.tracker.required(instance).into_iter().collect();
        let due = |at: Option<u64>| at.is_none_or(|t| now_ms.saturating_sub(t) >= timeout);
        // Members of the in-sync set that hold no replica: nobody will ever
        // acknowledge for them.
        let mut remove: BTreeSet<NodeId> = inst
            .rs
            .in_sync
            .iter()
            .copied()
            .filter(|n| *n != me && !primary.peers.contains_key(n))
            .collect();
        let mut propose = !remove.is_empty() && due(primary.stray_proposed_ms);
        if propose {
            primary.stray_proposed_ms = Some(now_ms);
        }
        let mut give_up = Vec::new();
        let mut add = BTreeSet::new();
        let mut expect = Vec::new();
        let mut pace = BTreeSet::new();
        // A backup may join the in-sync set once it acknowledged, in this
        // epoch, this node's log up to the epoch's start (which holds every
        // write released in earlier epochs) and every AllInSync write
        // released since: then the set the control plane applies never names
        // a member lacking one. Where the epoch's start is unknown, all of
        // this node's log counts as released.
        let watermark = self
            .tracker
            .released_through(instance)
            .max(Some(primary.begun_start.unwrap_or(last)));
        let holds_released = |peer: &Peer| peer.acked.is_some() && peer.acked >= watermark;
        // And hold the log up to the lag bound before every write released
        // in this epoch: a failover to it then loses no more than the bound.
        let released_max = self.tracker.released_max(instance);
        let lag_max = self.tracker.lag_max();
        let within_lag = |peer: &Peer| {
            released_max.is_none_or(|r| {
                peer.acked
                    .is_some_and(|a| a.0.saturating_add(lag_max) >= r.0)
            })
        };
        // And it must be close in time: holding where this log was half a
        // lag timeout ago. Without ALL_SAFE writes holding the watermark up,
        // a backup far behind would otherwise rejoin, and a failover to it
        // would lose all it lacks.
        primary.mark(now_ms, timeout);
        let generation = inst.rs.in_sync_generation;
        let recent = primary.last_as_of(now_ms.saturating_sub(retry_ms));
        let close = |peer: &Peer| peer.acked.is_some_and(|a| a >= recent);
        for (node, peer) in primary.peers.iter_mut() {
            let acked = peer.acked.unwrap_or_default();
            let behind = acked < last;
            let idle_ms = now_ms.saturating_sub(peer.progress_ms);
            let stalled = behind && idle_ms >= timeout;
            // A backup that is behind and silent may not know it should ask
            // for a catch-up (its CatchUp or our answer was lost, or we
            // restarted): ask it where it is.
            let waiting = match peer.mode {
                PeerMode::AwaitCatchUp => true,
                PeerMode::Streaming | PeerMode::Reading => behind,
                // A stream without progress (its parts ignored or lost, or
                // the reading failed silently) is given up: ask again.
                PeerMode::Snapshotting => {
                    let idle = now_ms.saturating_sub(peer.snapshot_progress_ms);
                    let stalled = idle >= settle_ms;
                    if stalled {
                        peer.mode = PeerMode::AwaitCatchUp;
                        peer.reset_read();
                    }
                    stalled
                }
            };
            if waiting
                && idle_ms >= retry_ms
                && peer
                    .probe_sent_ms
                    .is_none_or(|t| now_ms.saturating_sub(t) >= retry_ms)
            {
                probe(
                    &mut self.outputs,
                    instance,
                    primary.epoch,
                    *node,
                    peer,
                    now_ms,
                );
            }
            if inst.rs.in_sync.contains(node) {
                if stalled || peer.needs_snapshot {
                    // Kept out of any set we propose; proposed once per timeout.
                    remove.insert(*node);
                    if due(peer.remove_proposed_ms) {
                        peer.remove_proposed_ms = Some(now_ms);
                        propose = true;
                    }
                }
            } else {
                // Not in the applied set. If its addition is pending (or it
                // is being waited for before being proposed) and it fell
                // behind, stop waiting for it — but only once the proposal is
                // old enough to have been applied or lost, and while this
                // node's view of the control plane is fresh (a node cut off
                // from it may not have applied a proposal long committed):
                // were it applied after we gave up, the control plane would
                // name an in-sync member lacking writes released meanwhile.
                let pending = required.contains(node);
                let proposal_settled = peer
                    .add_proposed_ms
                    .is_none_or(|t| now_ms.saturating_sub(t) >= settle_ms);
                // No timer proves a proposal dead: one made before this
                // node's lease can still be committed after it (the
                // cluster simulator's run 117047). The addition named the
                // set's generation, so it can never apply once the set
                // applied here is past that generation (without it: this
                // branch). Until then, propose a change at that generation
                // without it (a fence): whichever of the two commits first
                // refuses the other.
                let addition_dead = peer.add_generation.is_none_or(|g| generation > g);
                if pending && stalled && proposal_settled && control_fresh {
                    if addition_dead {
                        give_up.push(*node);
                        peer.add_proposed_ms = None;
                        peer.add_generation = None;
                    } else if due(peer.fence_proposed_ms) {
                        peer.fence_proposed_ms = Some(now_ms);
                        propose = true;
                    }
                } else if peer.mode == PeerMode::Streaming
                    && close(peer)
                    && within_lag(peer)
                    && !stalled
                {
                    if holds_released(peer) {
                        // First proposal, or the last one may have been lost.
                        if due(peer.add_proposed_ms) {
                            add.insert(*node);
                            peer.add_proposed_ms = Some(now_ms);
                            peer.add_generation = Some(generation);
                            propose = true;
                        }
                    } else if !pending {
                        // Under steady writes a streaming backup is always a
                        // round trip behind, so it would never hold the high
                        // watermark at a tick: wait for it from now on (the
                        // watermark stops passing it) and propose it once it
                        // holds what was released before.
                        expect.push(*node);
                    }
                } else if peer.mode == PeerMode::Streaming && !pending && idle_ms < retry_ms {
                    // Streaming and acknowledging, but too far behind to
                    // join — in time, or in records past the lag bound
                    // (waiting for it as a member would stop the writes
                    // until it is within the bound). Were the writes left
                    // at full speed, a backup slower than they are would
                    // never get closer: pace them to half its progress.
                    // Not while it reads the log or takes a snapshot (a
                    // returning node far behind does not slow the writes),
                    // nor once silent for half a lag timeout.
                    pace.insert(*node);
                }
            }
        }
        let epoch = primary.epoch;
        for node in give_up {
            self.tracker.drop_expected(instance, node);
        }
        for node in expect {
            self.tracker.expect_in_sync(instance, node);
        }
        if propose {
            let mut in_sync: BTreeSet<NodeId> = inst.rs.in_sync.iter().copied().collect();
            in_sync.retain(|n| !remove.contains(n));
            in_sync.extend(add.iter().copied());
            in_sync.insert(me);
            for node in &add {
                self.tracker.expect_in_sync(instance, *node);
            }
            self.outputs.push(DataOutput::Propose(Proposal::SetInSync {
                instance,
                epoch,
                from: inst.rs.in_sync.clone(),
                generation: inst.rs.in_sync_generation,
                in_sync: in_sync.into_iter().collect(),
            }));
        }
        // Last: a backup no longer paced may release writes held for it,
        // and the watermark the additions above were judged against must
        // not move before they are required (the cluster simulator's run
        // 429 answered an ALL_SAFE write without a backup proposed into the
        // set, when pacing ended before its addition was registered).
        self.tracker.pace(instance, &pace);
    }

    /// Everything to carry out, in order.
    pub fn drain(&mut self) -> Vec<DataOutput> {
        std::mem::take(&mut self.outputs)
    }

    /// Primary: how far each backup of `instance` is behind, as
    /// `(node, records, bytes)`, by node id. Empty unless this node is the
    /// instance's primary. Bytes are a lower bound once a backup is more than
    /// [`LAG_WINDOW_ENTRIES_MAX`] entries behind.
    pub fn lag(&self, instance: InstanceId) -> Vec<(NodeId, u64, u64)> {
        let Some(inst) = self.instances.get(&instance) else {
            return Vec::new();
        };
        let Role::Primary(primary) = &inst.role else {
            return Vec::new();
        };
        let last = seq_of(primary.last);
        primary
            .peers
            .iter()
            .map(|(node, peer)| {
                let acked = peer.acked.unwrap_or_default();
                let records = last.0.saturating_sub(acked.0);
                let bytes = if records == 0 {
                    0
                } else {
                    let before = primary
                        .window_after(acked)
                        .map_or(primary.bytes_total, |(_, _, before)| before);
                    primary.bytes_total.saturating_sub(before)
                };
                (*node, records, bytes)
            })
            .collect()
    }

    /// The instances ticks visited since the last call. An instance
    /// changes only when touched, and a touched instance is visited by one
    /// of the next ticks (the next, unless more than [`TICK_VISITS_MAX`]
    /// wait), so one whose [`DataPlane::lag`] changed shows up here soon
    /// after. For a driver that refreshes per-checkpoint figures without
    /// looking at every checkpoint.
    pub fn take_visited(&mut self) -> BTreeSet<InstanceId> {
        std::mem::take(&mut self.instances.visited)
    }

    /// Primary: `node` sent a message of this epoch, so it applied the
    /// metadata that started it (a handover's previous active replica has
    /// stepped down).
    pub fn heard_in_epoch(&self, instance: InstanceId, node: NodeId) -> bool {
        match self.instances.get(&instance).map(|i| &i.role) {
            Some(Role::Primary(primary)) => primary.peers.get(&node).is_some_and(|p| p.heard),
            _ => false,
        }
    }

    /// Whether this node is the primary of `instance` and may ship (the epoch
    /// began here and no peer showed it a newer epoch).
    pub fn is_primary(&self, instance: InstanceId) -> bool {
        self.instances
            .get(&instance)
            .is_some_and(|inst| matches!(&inst.role, Role::Primary(p) if p.begun && !p.fenced))
    }

    /// The instances the last tick left for the next one to come back to.
    #[cfg(test)]
    pub(crate) fn unsettled_instances(&self) -> Vec<InstanceId> {
        self.instances.unsettled.iter().copied().collect()
    }

    #[cfg(test)]
    pub(crate) fn peer_debug(&self, instance: InstanceId, node: NodeId) -> String {
        match self.instances.get(&instance).map(|i| &i.role) {
            Some(Role::Primary(p)) => format!(
                "last {:?} peer {:?}",
                p.last,
                p.peers.get(&node).map(|x| (
                    x.mode,
                    x.sent,
                    x.acked,
                    x.progress_ms,
                    x.read_paused,
                    x.add_proposed_ms,
                    x.probe_sent_ms
                ))
            ),
            Some(Role::Backup(b)) => format!(
                "backup last {:?} synced {} floor {:?} acked_sent {:?} catch_up {:?}",
                b.last, b.synced, b.floor, b.acked_sent, b.catch_up_sent_ms
            ),
            None => "none".into(),
        }
    }

    // ---- internals ----

    fn peer_mut(&mut self, instance: InstanceId, node: NodeId) -> Option<&mut Peer> {
        match &mut self.instances.get_mut(&instance)?.role {
            Role::Primary(primary) => primary.peers.get_mut(&node),
            Role::Backup(_) => None,
        }
    }

    /// Two lag timeouts: how long an in-sync proposal may still be applied
    /// after it was made, and how long a snapshot stream may go without
    /// progress (a 4 MiB part can take long to log) before it is given up.
    fn settle_ms(&self) -> u64 {
        self.replica_lag_timeout_ms.saturating_mul(2)
    }

    fn flush_tracker(&mut self) {
        let released = self.tracker.take_released();
        if !released.is_empty() {
            self.outputs.push(DataOutput::Released(released));
        }
        let failed = self.tracker.take_failed();
        if !failed.is_empty() {
            self.outputs.push(DataOutput::Failed(failed));
        }
    }

    fn fail_pending(&mut self, instance: InstanceId, why: &str) {
        let failed = self.tracker.fail_instance(
            instance,
            try_again(format!("instance {}: {why}", instance.0)),
        );
        if !failed.is_empty() {
            self.outputs.push(DataOutput::Failed(failed));
        }
    }

    fn fence_if_newer(&mut self, instance: InstanceId, epoch: Epoch, from: NodeId) {
        let Some(inst) = self.instances.get_mut(&instance) else {
            return;
        };
        let Role::Primary(primary) = &mut inst.role else {
            return;
        };
        if epoch <= primary.epoch {
            return;
        }
        primary.fenced = true;
        for peer in primary.peers.values_mut() {
            peer.mode = PeerMode::AwaitCatchUp;
        }
        let ours = primary.epoch;
        self.fail_pending(
            instance,
            &format!(
                "node {from} knows epoch {}, newer than this node's {}",
                epoch.0, ours.0
            ),
        );
    }

    fn request_catch_up(
        outputs: &mut Vec<DataOutput>,
        instance: InstanceId,
        backup: &mut Backup,
        now_ms: u64,
        retry_ms: u64,
    ) {
        let Some(active) = backup.active else {
            return;
        };
        if backup
            .catch_up_sent_ms
            .is_some_and(|t| now_ms.saturating_sub(t) < retry_ms)
        {
            return;
        }
        backup.synced = false;
        backup.catch_up_sent_ms = Some(now_ms);
        backup.asked = Some(backup.last);
        // Whatever we acknowledged may have been lost (a probe means the
        // primary does not know where we are): once re-synced, acknowledge
        // what we hold again, even if no entry follows.
        backup.acked_sent = None;
        outputs.push(DataOutput::Send {
            to: active,
            msg: DataMessage::CatchUp {
                instance,
                epoch: backup.epoch,
                last: backup.last,
            },
        });
    }

    fn maybe_ack(
        outputs: &mut Vec<DataOutput>,
        instance: InstanceId,
        backup: &mut Backup,
        durable: Option<(Epoch, Seq)>,
    ) {
        let (Some(active), Some(durable)) = (backup.active, durable) else {
            return;
        };
        if !backup.synced || backup.floor.is_some_and(|f| durable < f) {
            return;
        }
        if backup.last.is_none_or(|l| durable > l) {
            return;
        }
        // Only an entry of the current epoch is known to be the primary's:
        // a durable entry of an older epoch may be this node's own divergent
        // suffix (say, a write it took as the previous active replica that
        // landed after the handover), which `(epoch, seq)` order puts below
        // the primary's entries of the new epoch. Acknowledging its seq in
        // this epoch let the primary release writes this node did not hold
        // (the cluster simulator's run 7212). Acknowledgements of older
        // epochs release nothing anyway: their tickets ended with them.
        if durable.0 != backup.epoch {
            return;
        }
        if backup.acked_sent.is_some_and(|a| a >= durable.1) {
            return;
        }
        backup.acked_sent = Some(durable.1);
        outputs.push(DataOutput::Send {
            to: active,
            msg: DataMessage::Ack {
                instance,
                epoch: backup.epoch,
                seq: durable.1,
            },
        });
    }

    fn backup_entries(
        &mut self,
        from: NodeId,
        instance: InstanceId,
        epoch: Epoch,
        prev: Option<(Epoch, Seq)>,
        entries: Vec<WireEntry>,
        now_ms: u64,
    ) {
        let retry_ms = (self.replica_lag_timeout_ms / 2).max(1);
        let Some(inst) = self.instances.get_mut(&instance) else {
            return;
        };
        let known = match &inst.role {
            Role::Backup(b) => b.epoch,
            Role::Primary(p) => p.epoch,
        };
        if epoch < known {
            self.outputs.push(DataOutput::Send {
                to: from,
                msg: DataMessage::Fenced {
                    instance,
                    epoch: known,
                },
            });
            return;
        }
        let Role::Backup(backup) = &mut inst.role else {
            return;
        };
        if epoch > backup.epoch || backup.active != Some(from) {
            // Our metadata is behind; the catch-up after it arrives re-syncs.
            return;
        }
        let well_formed = entries
            .windows(2)
            .all(|w| w[1].seq.0 == w[0].seq.0.saturating_add(1) && w[1].epoch >= w[0].epoch)
            && entries.iter().all(|e| e.epoch <= epoch)
            && entries
                .first()
                .is_none_or(|f| f.seq.0 == seq_of(prev).0.saturating_add(1));
        if !well_formed {
            Self::request_catch_up(&mut self.outputs, instance, backup, now_ms, retry_ms);
            return;
        }
        let accepted: Vec<WireEntry> = if prev == backup.last {
            entries
        } else {
            let last_seq = seq_of(backup.last);
            if seq_of(prev) > last_seq {
                // A gap: entries we never got.
                Self::request_catch_up(&mut self.outputs, instance, backup, now_ms, retry_ms);
                return;
            }
            if entries.last().is_none_or(|e| e.seq <= last_seq) {
                // Nothing new (a resend of what we hold).
                return;
            }
            let matches = match backup.last {
                None => false,
                Some(last) => entries.iter().any(|e| e.seq == last.1 && e.epoch == last.0),
            };
            if !matches {
                Self::request_catch_up(&mut self.outputs, instance, backup, now_ms, retry_ms);
                return;
            }
            entries.into_iter().filter(|e| e.seq > last_seq).collect()
        };
        backup.synced = true;
        backup.catch_up_sent_ms = None;
        if let Some(last) = accepted.last() {
            // Entries past the CatchUp's position answer it: a snapshot
            // stream answering it would discard them.
            backup.asked = None;
            backup.last = Some((last.epoch, last.seq));
            self.outputs.push(DataOutput::Apply {
                instance,
                from,
                entries: accepted,
            });
        }
        Self::maybe_ack(&mut self.outputs, instance, backup, inst.durable);
    }

    fn backup_probe(&mut self, from: NodeId, instance: InstanceId, epoch: Epoch, now_ms: u64) {
        let Some(inst) = self.instances.get_mut(&instance) else {
            return;
        };
        let Role::Backup(backup) = &mut inst.role else {
            return;
        };
        if epoch < backup.epoch {
            self.outputs.push(DataOutput::Send {
                to: from,
                msg: DataMessage::Fenced {
                    instance,
                    epoch: backup.epoch,
                },
            });
            return;
        }
        if epoch > backup.epoch || backup.active != Some(from) {
            return;
        }
        // The primary does not know where we are: whatever we thought, we
        // are not in step with it.
        backup.synced = false;
        backup.catch_up_sent_ms = None;
        Self::request_catch_up(&mut self.outputs, instance, backup, now_ms, 0);
    }

    fn backup_snapshot_part(
        &mut self,
        from: NodeId,
        instance: InstanceId,
        epoch: Epoch,
        part: SnapshotPartIn,
        now_ms: u64,
    ) {
        let Some(inst) = self.instances.get_mut(&instance) else {
            return;
        };
        let known = match &inst.role {
            Role::Backup(b) => b.epoch,
            Role::Primary(p) => p.epoch,
        };
        if epoch < known {
            self.outputs.push(DataOutput::Send {
                to: from,
                msg: DataMessage::Fenced {
                    instance,
                    epoch: known,
                },
            });
            return;
        }
        let Role::Backup(backup) = &mut inst.role else {
            return;
        };
        if epoch > backup.epoch || backup.active != Some(from) {
            return;
        }
        let SnapshotPartIn {
            last,
            answers,
            index,
            done,
            bytes,
        } = part;
        if index == 0 && (backup.asked != Some(answers) || inst.rs.in_sync.contains(&self.me)) {
            // A stream answering a CatchUp before our last one (it may
            // discard entries we got since), or one that would discard the
            // replica of an in-sync member: ignored.
            return;
        }
        if index == 0 {
            // The install discards what we held: nothing of it may be
            // acknowledged, and if the stream breaks we hold nothing valid.
            backup.installing = Some((last, 0));
            backup.last = None;
            backup.synced = false;
            backup.acked_sent = None;
            inst.durable = None;
        } else if backup.installing != Some((last, index)) {
            // A part of a stream we did not start, or after a gap: the
            // primary starts again when our CatchUp comes back.
            return;
        }
        // Parts arriving are progress: no CatchUp retry meanwhile.
        backup.catch_up_sent_ms = Some(now_ms);
        if done {
            backup.installing = None;
            backup.last = Some(last);
            backup.floor = Some(last);
            backup.synced = true;
            backup.catch_up_sent_ms = None;
            // That CatchUp is answered: a stream answering it again (a
            // duplicated or late first part) would discard what we hold
            // now (the cluster simulator's run 3796).
            backup.asked = None;
        } else {
            backup.installing = Some((last, index.saturating_add(1)));
        }
        self.outputs.push(DataOutput::ApplySnapshotPart {
            instance,
            from,
            last,
            index,
            done,
            bytes,
        });
    }

    fn primary_ack(
        &mut self,
        from: NodeId,
        instance: InstanceId,
        epoch: Epoch,
        seq: Seq,
        now_ms: u64,
    ) {
        let Some(inst) = self.instances.get_mut(&instance) else {
            return;
        };
        let Role::Primary(primary) = &mut inst.role else {
            return;
        };
        if epoch > primary.epoch {
            self.fence_if_newer(instance, epoch, from);
            return;
        }
        if epoch < primary.epoch || seq > seq_of(primary.last) {
            return;
        }
        let Some(peer) = primary.peers.get_mut(&from) else {
            return;
        };
        if peer.acked.is_none_or(|a| a < seq) {
            peer.acked = Some(seq);
            peer.progress_ms = now_ms;
        }
        while peer.read_inflight.front().is_some_and(|(s, _)| *s <= seq) {
            peer.read_inflight.pop_front();
        }
        if peer.mode == PeerMode::Reading && Some(seq) >= primary.last.map(|l| l.1) {
            // It holds all we have (an earlier answer, say a snapshot, got
            // there first): stream from here, whatever read is under way.
            peer.mode = PeerMode::Streaming;
            peer.sent = primary.last;
            peer.reset_read();
        }
        if peer.mode == PeerMode::Reading
            && peer.read_paused
            && read_inflight_bytes(peer) <= read_ahead_bytes_max(self.read_bytes_max)
        {
            peer.read_paused = false;
            peer.tail = Some(Vec::new());
            self.outputs.push(DataOutput::ReadEntries {
                instance,
                after: peer.sent,
                after_lsn: peer.lsn_of(peer.sent),
                for_node: from,
                max_bytes: self.read_bytes_max,
            });
        }
        let floor = primary
            .peers
            .values()
            .map(|p| p.acked.unwrap_or_default())
            .min();
        if let Some(floor) = floor {
            while primary.window.front().is_some_and(|(s, _, _)| *s <= floor) {
                primary.window.pop_front();
            }
        }
        self.tracker.replica_acked(from, instance, epoch, seq);
    }

    fn primary_catch_up(
        &mut self,
        from: NodeId,
        instance: InstanceId,
        epoch: Epoch,
        last: Option<(Epoch, Seq)>,
        now_ms: u64,
    ) {
        let settle_ms = self.settle_ms();
        let Some(inst) = self.instances.get_mut(&instance) else {
            return;
        };
        let Role::Primary(primary) = &mut inst.role else {
            return;
        };
        if epoch > primary.epoch {
            self.fence_if_newer(instance, epoch, from);
            return;
        }
        if epoch < primary.epoch || !primary.peers.contains_key(&from) || primary.fenced {
            return;
        }
        if let Some(peer) = primary.peers.get(&from) {
            let busy = matches!(peer.mode, PeerMode::Reading | PeerMode::Snapshotting);
            let retry_ms = if peer.mode == PeerMode::Snapshotting {
                // Parts can take long to log; the backup waits as long.
                settle_ms
            } else {
                (self.replica_lag_timeout_ms / 2).max(1)
            };
            let recent = peer
                .serving
                .is_some_and(|(l, at)| l == last && now_ms.saturating_sub(at) < retry_ms);
            if busy && recent {
                // A retry of the CatchUp we are answering.
                return;
            }
        }
        if !primary.begun {
            primary.deferred.insert(from, last);
            return;
        }
        self.answer_catch_up(instance, from, last, now_ms);
    }

    fn run_deferred(&mut self, instance: InstanceId, now_ms: u64) {
        let deferred = match self.instances.get_mut(&instance).map(|i| &mut i.role) {
            Some(Role::Primary(primary)) if primary.begun && !primary.fenced => {
                std::mem::take(&mut primary.deferred)
            }
            _ => return,
        };
        for (node, last) in deferred {
            self.answer_catch_up(instance, node, last, now_ms);
        }
    }

    fn answer_catch_up(
        &mut self,
        instance: InstanceId,
        from: NodeId,
        last: Option<(Epoch, Seq)>,
        now_ms: u64,
    ) {
        let settle_ms = self.settle_ms();
        let read_bytes_max = self.read_bytes_max;
        let Some(inst) = self.instances.get_mut(&instance) else {
            return;
        };
        let Role::Primary(primary) = &mut inst.role else {
            return;
        };
        let Some(primary_last) = primary.last else {
            return;
        };
        let mut starts = inst.rs.epoch_starts.clone();
        let plan = match primary.begun_start {
            Some(start) => {
                if !starts.iter().any(|(e, _)| *e == primary.epoch) {
                    starts.push((primary.epoch, start));
                }
                plan_catch_up(last, &starts, primary_last)
            }
            // Where our epoch starts is unknown: only an empty log, or one
            // whose last entry we wrote in this epoch, is provably our prefix.
            None => match last {
                None => CatchUpPlan::Stream { after: None },
                Some((e, s)) if e == primary.epoch && s <= primary_last.1 => {
                    CatchUpPlan::Stream { after: last }
                }
                Some(_) => CatchUpPlan::Snapshot,
            },
        };
        let epoch = primary.epoch;
        // At most what one read returns (the kept bytes bound those sent).
        let early = match plan {
            CatchUpPlan::Stream { after }
                if seq_of(after) < primary_last.1 && primary.early_bytes <= read_bytes_max =>
            {
                primary.early_after(after)
            }
            _ => None,
        };
        let Some(peer) = primary.peers.get_mut(&from) else {
            return;
        };
        peer.reset_read();
        peer.serving = Some((last, now_ms));
        // Decided again below, from where it is now.
        peer.needs_snapshot = false;
        // It holds no more than it says (a snapshot install it abandoned
        // discarded what it had acknowledged).
        let holds = last.map(|(_, seq)| seq);
        if peer.acked > holds {
            peer.acked = holds;
        }
        match plan {
            CatchUpPlan::Stream { after } => {
                peer.sent = after;
                if seq_of(after) >= primary_last.1 {
                    peer.mode = PeerMode::Streaming;
                    self.outputs.push(DataOutput::Send {
                        to: from,
                        msg: DataMessage::Entries {
                            instance,
                            epoch,
                            prev: after,
                            entries: Vec::new(),
                        },
                    });
                } else if let Some(entries) = early {
                    // A new checkpoint's first entries, still in memory:
                    // answered as the WAL read would be.
                    peer.mode = PeerMode::Reading;
                    self.on_entries_read(from, instance, after, entries, now_ms);
                } else {
                    peer.mode = PeerMode::Reading;
                    self.outputs.push(DataOutput::ReadEntries {
                        instance,
                        after,
                        after_lsn: peer.lsn_of(after),
                        for_node: from,
                        max_bytes: read_bytes_max,
                    });
                }
            }
            CatchUpPlan::Snapshot => {
                let in_sync = inst.rs.in_sync.contains(&from);
                peer.sent = last;
                let at = SnapshotAt {
                    instance,
                    to: from,
                    now_ms,
                    settle_ms,
                };
                start_snapshot(&mut self.outputs, at, peer, in_sync);
            }
        }
    }

    /// Tests (and so every simulated run): a tick may pass by only what
    /// is settled, and the WAL hold over the unsettled instances is the
    /// hold over all of them.
    #[cfg(test)]
    fn check_unvisited_settled(&self) {
        for (instance, inst) in &self.instances.map {
            assert!(
                self.instances.unsettled.contains(instance) || inst.settled(self.me),
                "node {}: instance {} left out of the next tick but not settled",
                self.me,
                instance.0
            );
        }
        assert_eq!(
            Self::wal_hold_of(self.instances.unsettled()),
            Self::wal_hold_of(self.instances.map.values()),
            "node {}: the WAL hold over the unsettled instances differs",
            self.me
        );
    }

    /// The lowest lsn a lagging in-sync backup, or a backup being caught up
    /// from the WAL, still needs, over every instance this node is primary of.
    /// Backups out of sync hold nothing: they get a snapshot if the WAL moved on.
    fn wal_hold(&self) -> Option<Lsn> {
        Self::wal_hold_of(self.instances.unsettled())
    }

    /// The hold of [`DataPlane::wal_hold`] over `instances`: a settled
    /// instance holds nothing, so the unsettled ones are enough.
    fn wal_hold_of<'a>(instances: impl Iterator<Item = &'a Instance>) -> Option<Lsn> {
        let mut hold: Option<Lsn> = None;
        for inst in instances {
            let Role::Primary(primary) = &inst.role else {
                continue;
            };
            let last = seq_of(primary.last);
            for (node, peer) in &primary.peers {
                if peer.mode == PeerMode::Snapshotting {
                    // The entries after the snapshot's point follow it: kept
                    // while it streams, or it ends only to be followed by
                    // another snapshot under a steady write load.
                    let from = peer
                        .snapshot_part
                        .map_or(peer.acked.unwrap_or_default(), |(at, _)| at.1);
                    if let Some((_, lsn, _)) = primary.window_after(from) {
                        hold = Some(hold.map_or(lsn, |h| h.min(lsn)));
                    }
                    continue;
                }
                let reading = peer.mode == PeerMode::Reading;
                if !reading && !inst.rs.in_sync.contains(node) {
                    continue;
                }
                let acked = peer.acked.unwrap_or_default();
                if acked >= last && !reading {
                    continue;
                }
                let needed = if acked >= last {
                    None
                } else {
                    primary.window_after(acked).map(|(_, lsn, _)| lsn)
                };
                let needed = match (needed, peer.read_at.map(|(_, lsn)| lsn)) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                if let Some(lsn) = needed {
                    hold = Some(hold.map_or(lsn, |h| h.min(lsn)));
                }
            }
        }
        hold
    }
}
