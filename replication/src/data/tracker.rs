//! Which client requests may be answered now.
//!
//! The reply rule of DESIGN.md §4's durability table, as a pure state machine
//! fed by local durability and replica acknowledgements:
//!
//! | need | released when |
//! |---|---|
//! | [`Need::Applied`] (WEAK) | within the lag bound: registration happens after apply |
//! | [`Need::LocalDurable`] (ACTIVE_REPLICA) | this node's log is durable up to the ticket's seq, within the lag bound |
//! | [`Need::AllInSync`] (ALL_SAFE, ALL_REPLICAS) | locally durable *and* every in-sync member but this node acknowledged the seq in the current epoch |
//!
//! The lag bound (DESIGN.md §4: WR_ACTIVE_REPLICA's "lag is bounded"): a
//! WEAK or ACTIVE write is answered only once every in-sync member but this
//! node acknowledged, in the current epoch, the log up to at most `lag_max`
//! records before it. A failover names an in-sync member, so it loses at
//! most `lag_max` acknowledged records of a checkpoint. A member that does
//! not acknowledge holds such writes back until the control plane removed
//! it (as ALL_SAFE writes are held); a slow one slows them to its pace.
//!
//! Pacing (DESIGN.md is silent; docs/replication.md "Pacing"): a backup
//! outside the in-sync set that streams but acknowledges slower than the
//! checkpoint is written would never get back into the set. While the data
//! plane names it ([`Tracker::pace`]), every write of the checkpoint is
//! answered only within a window of records past its acknowledgement; the
//! window starts at its lag when pacing starts (nothing answerable is held
//! back then) and shrinks by half of each advance of its acknowledgement, so
//! writes go on at half its pace and its lag shrinks to nothing.
//!
//! The in-sync set is the one the control plane *applied* ([`Tracker::set_in_sync`]
//! is called from control apply), plus members whose addition was proposed
//! ([`Tracker::expect_in_sync`], Kafka's "maximal ISR"): a member is never
//! dropped from the requirement before the control plane removed it, and a
//! member being added is required from the moment it is proposed, so the
//! control plane never names an in-sync member that lacks an acknowledged
//! write. Fewer than `min_in_sync` members fail such writes with TRY_AGAIN.
//! A new epoch fails the tickets of older epochs with TRY_AGAIN: the client
//! retries on the new active replica, where exactly-once answers a write that
//! did survive with its first outcome.

use std::collections::{BTreeMap, BTreeSet};

use ckpt_proto::{CkptError, ErrorCode};
use ckpt_storage::{Epoch, InstanceId, Seq};

use super::{point, NodeId, Position};

/// What a client request waits for before it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Need {
    /// Applied on the active replica (WR_ACTIVE_REPLICA_WEAK).
    Applied,
    /// Durable on the active replica (WR_ACTIVE_REPLICA).
    LocalDurable,
    /// Durable on the active replica and every in-sync replica
    /// (WR_ACTIVE_REPLICA | ALL_SAFE, WR_ALL_REPLICAS, Synchronize).
    AllInSync,
}

impl Need {
    /// The durability a checkpoint's writes need, from its creation flags
    /// (DESIGN.md §4 "Modes"). Shared by the server and the simulator.
    pub fn for_flags(flags: ckpt_proto::CreationFlags) -> Need {
        match flags.update_mode() {
            Ok(ckpt_proto::UpdateMode::ActiveReplicaWeak) => Need::Applied,
            Ok(ckpt_proto::UpdateMode::AllReplicas) => Need::AllInSync,
            _ if flags.contains(ckpt_proto::CreationFlags::WR_ALL_SAFE) => Need::AllInSync,
            _ => Need::LocalDurable,
        }
    }
}

/// Records a WEAK or ACTIVE write may be ahead of the in-sync backups by
/// default (`replica_lag_records_max`).
pub const LAG_RECORDS_MAX_DEFAULT: u64 = 1000;

/// Pending tickets and what is known of one instance.
#[derive(Debug, Default)]
struct Track {
    /// Metadata was seen (`set_in_sync`); without it no AllInSync ticket is accepted.
    known: bool,
    epoch: Epoch,
    in_sync: BTreeSet<NodeId>,
    /// Proposed additions to the in-sync set, required until the epoch changes
    /// or the control plane applied them.
    adding: BTreeSet<NodeId>,
    min_in_sync: usize,
    /// This node's last durable position of the instance.
    durable: Option<(Epoch, Seq)>,
    /// Highest seq each replica acknowledged durable in `epoch`.
    acked: BTreeMap<NodeId, Seq>,
    /// LocalDurable tickets by (seq, ticket) → the epoch they were ordered in.
    local: BTreeMap<(Seq, u64), Epoch>,
    /// AllInSync tickets by (seq, ticket) → the epoch they were ordered in.
    all: BTreeMap<(Seq, u64), Epoch>,
    /// Applied tickets held by the lag bound, by (seq, ticket) → epoch.
    weak: BTreeMap<(Seq, u64), Epoch>,
    /// Highest seq of any ticket released in `epoch`.
    released_max: Option<Seq>,
    /// Backups being paced back into the in-sync set → the records a write
    /// may be past their acknowledgement.
    paced: BTreeMap<NodeId, u64>,
    /// Highest seq of an AllInSync ticket released in `epoch` (the high
    /// watermark): a member may join the in-sync set once it holds it.
    released_all: Option<Seq>,
}

impl Track {
    /// The members writes wait for: in-sync or being added, but not `me`.
    fn members(&self, me: NodeId) -> impl Iterator<Item = NodeId> + '_ {
        self.in_sync
            .union(&self.adding)
            .copied()
            .filter(move |n| *n != me)
    }

    /// The least seq any of [`members`](Self::members) acknowledged in
    /// this epoch (0 for one that has not); `None` without members.
    fn least_acked(&self, me: NodeId) -> Option<Seq> {
        self.members(me)
            .map(|n| self.acked.get(&n).copied().unwrap_or_default())
            .min()
    }

    /// The highest seq pacing lets out: the least acknowledgement plus
    /// window of the paced backups; `None` without any.
    fn pace_bound(&self) -> Option<Seq> {
        self.paced
            .iter()
            .map(|(n, window)| {
                let acked = self.acked.get(n).copied().unwrap_or_default();
                Seq(acked.0.saturating_add(*window))
            })
            .min()
    }
}

/// The pure reply rule for every instance of one node.
#[derive(Debug)]
pub struct Tracker {
    me: NodeId,
    lag_max: u64,
    tracks: BTreeMap<InstanceId, Track>,
    released: Vec<u64>,
    failed: Vec<(u64, CkptError)>,
}

fn try_again(detail: String) -> CkptError {
    CkptError::new(ErrorCode::TryAgain, detail)
}

impl Tracker {
    /// A tracker for node `me` (never counted among the replicas to wait for)
    /// with the default lag bound.
    pub fn new(me: NodeId) -> Self {
        Self::with_lag_max(me, LAG_RECORDS_MAX_DEFAULT)
    }

    /// A tracker for node `me` whose WEAK and ACTIVE writes may be at most
    /// `lag_max` records ahead of every in-sync backup.
    pub fn with_lag_max(me: NodeId, lag_max: u64) -> Self {
        Tracker {
            me,
            lag_max,
            tracks: BTreeMap::new(),
            released: Vec::new(),
            failed: Vec::new(),
        }
    }

    /// Waits for `need` on the entry at `pos`. Call after the entry was applied
    /// on this node. The outcome comes out of [`take_released`](Self::take_released)
    /// or [`take_failed`](Self::take_failed), possibly at once.
    pub fn register(&mut self, ticket: u64, pos: Position, need: Need) {
        let me = self.me;
        let lag_max = self.lag_max;
        let track = self.tracks.entry(pos.instance).or_default();
        if track.known && pos.epoch < track.epoch {
            self.failed.push((
                ticket,
                try_again(format!(
                    "instance {}: write of epoch {} superseded by epoch {}",
                    pos.instance.0, pos.epoch.0, track.epoch.0
                )),
            ));
            return;
        }
        match need {
            Need::Applied => {
                track.weak.insert((pos.seq, ticket), pos.epoch);
            }
            Need::LocalDurable => {
                track.local.insert((pos.seq, ticket), pos.epoch);
            }
            Need::AllInSync => {
                if !track.known {
                    self.failed.push((
                        ticket,
                        try_again(format!(
                            "instance {}: replica set not known yet",
                            pos.instance.0
                        )),
                    ));
                    return;
                }
                if track.in_sync.len() < track.min_in_sync {
                    self.failed.push((ticket, below_min(pos.instance, track)));
                    return;
                }
                track.all.insert((pos.seq, ticket), pos.epoch);
            }
        }
        Self::evaluate(
            me,
            lag_max,
            pos.instance,
            track,
            &mut self.released,
            &mut self.failed,
        );
    }

    /// This node's log became durable up to these positions (one per instance).
    pub fn local_durable(&mut self, positions: &[Position]) {
        for pos in positions {
            let track = self.tracks.entry(pos.instance).or_default();
            if track.durable.is_none_or(|d| d < point(pos)) {
                track.durable = Some(point(pos));
            }
            Self::evaluate(
                self.me,
                self.lag_max,
                pos.instance,
                track,
                &mut self.released,
                &mut self.failed,
            );
        }
    }

    /// `node` holds `instance` durably up to `seq`, acknowledged in `epoch`.
    /// Acknowledgements of another epoch than the current one are ignored.
    pub fn replica_acked(&mut self, node: NodeId, instance: InstanceId, epoch: Epoch, seq: Seq) {
        let Some(track) = self.tracks.get_mut(&instance) else {
            return;
        };
        if !track.known || epoch != track.epoch {
            return;
        }
        let acked = track.acked.entry(node).or_default();
        if *acked < seq {
            let advance = seq.0 - acked.0;
            *acked = seq;
            if let Some(window) = track.paced.get_mut(&node) {
                *window = window.saturating_sub(advance.div_ceil(2));
            }
        }
        Self::evaluate(
            self.me,
            self.lag_max,
            instance,
            track,
            &mut self.released,
            &mut self.failed,
        );
    }

    /// The control plane applied this in-sync set (and epoch) for `instance`.
    /// A newer epoch fails the pending tickets of older epochs with TRY_AGAIN
    /// and forgets the acknowledgements; fewer than `min_in_sync` members fail
    /// every pending AllInSync ticket.
    pub fn set_in_sync(
        &mut self,
        instance: InstanceId,
        epoch: Epoch,
        in_sync: &[NodeId],
        min_in_sync: usize,
    ) {
        let track = self.tracks.entry(instance).or_default();
        if track.known && epoch < track.epoch {
            // An older view arriving late never undoes a newer one.
            return;
        }
        if !track.known || epoch > track.epoch {
            track.acked.clear();
            track.adding.clear();
            track.paced.clear();
            track.released_all = None;
            track.released_max = None;
            let old: Vec<((Seq, u64), Epoch)> = track
                .local
                .iter()
                .chain(track.all.iter())
                .chain(track.weak.iter())
                .filter(|(_, e)| **e < epoch)
                .map(|(k, e)| (*k, *e))
                .collect();
            for ((seq, ticket), ticket_epoch) in old {
                track.local.remove(&(seq, ticket));
                track.all.remove(&(seq, ticket));
                track.weak.remove(&(seq, ticket));
                self.failed.push((
                    ticket,
                    try_again(format!(
                        "instance {}: write of epoch {} superseded by epoch {}",
                        instance.0, ticket_epoch.0, epoch.0
                    )),
                ));
            }
        }
        track.known = true;
        track.epoch = epoch;
        track.in_sync = in_sync.iter().copied().collect();
        let in_sync_now = &track.in_sync;
        track.adding.retain(|n| !in_sync_now.contains(n));
        track.paced.retain(|n, _| !in_sync_now.contains(n));
        track.min_in_sync = min_in_sync;
        Self::evaluate(
            self.me,
            self.lag_max,
            instance,
            track,
            &mut self.released,
            &mut self.failed,
        );
    }

    /// The addition of `node` to the in-sync set was proposed: from now on
    /// AllInSync tickets wait for it too, until the epoch changes, the control
    /// plane applied it, or [`drop_expected`](Self::drop_expected).
    pub fn expect_in_sync(&mut self, instance: InstanceId, node: NodeId) {
        if node == self.me {
            return;
        }
        if let Some(track) = self.tracks.get_mut(&instance) {
            if track.known && !track.in_sync.contains(&node) {
                track.adding.insert(node);
                // The lag bound holds writes for it from now on.
                track.paced.remove(&node);
            }
        }
    }

    /// Stops waiting for a member whose proposed addition is given up.
    pub fn drop_expected(&mut self, instance: InstanceId, node: NodeId) {
        if let Some(track) = self.tracks.get_mut(&instance) {
            if track.adding.remove(&node) {
                Self::evaluate(
                    self.me,
                    self.lag_max,
                    instance,
                    track,
                    &mut self.released,
                    &mut self.failed,
                );
            }
        }
    }

    /// Paces the writes of `instance` for exactly these backups outside the
    /// in-sync set (see the module doc). A backup newly named starts with
    /// its lag behind the highest released write as its window, so nothing
    /// answerable now is held back; one no longer named stops holding
    /// writes. Members of the set or being added are ignored: the lag bound
    /// holds writes for them.
    pub fn pace(&mut self, instance: InstanceId, nodes: &BTreeSet<NodeId>) {
        let me = self.me;
        let Some(track) = self.tracks.get_mut(&instance) else {
            return;
        };
        if track.paced.is_empty() && nodes.is_empty() {
            return;
        }
        let before = track.paced.len();
        track.paced.retain(|n, _| nodes.contains(n));
        let dropped = track.paced.len() != before;
        let released_max = track.released_max.unwrap_or_default();
        for node in nodes {
            if *node == me
                || !track.known
                || track.in_sync.contains(node)
                || track.adding.contains(node)
            {
                continue;
            }
            let acked = track.acked.get(node).copied().unwrap_or_default();
            track
                .paced
                .entry(*node)
                .or_insert_with(|| released_max.0.saturating_sub(acked.0));
        }
        if dropped {
            Self::evaluate(
                me,
                self.lag_max,
                instance,
                track,
                &mut self.released,
                &mut self.failed,
            );
        }
    }

    /// The backups writes of `instance` are paced for, with their windows.
    pub fn paced(&self, instance: InstanceId) -> Vec<(NodeId, u64)> {
        self.tracks.get(&instance).map_or_else(Vec::new, |t| {
            t.paced.iter().map(|(n, w)| (*n, *w)).collect()
        })
    }

    /// Fails every pending ticket of `instance` with `err` and returns them
    /// (they are not also queued for [`take_failed`](Self::take_failed)).
    pub fn fail_instance(&mut self, instance: InstanceId, err: CkptError) -> Vec<(u64, CkptError)> {
        let Some(track) = self.tracks.get_mut(&instance) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for ((_, ticket), _) in std::mem::take(&mut track.local)
            .into_iter()
            .chain(std::mem::take(&mut track.all))
            .chain(std::mem::take(&mut track.weak))
        {
            out.push((ticket, err.clone()));
        }
        out
    }

    /// Forgets a destroyed instance, failing its pending tickets with `err`.
    pub fn forget(&mut self, instance: InstanceId, err: CkptError) {
        let failed = self.fail_instance(instance, err);
        self.failed.extend(failed);
        self.tracks.remove(&instance);
    }

    /// Tickets released since the last call, in release order.
    pub fn take_released(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.released)
    }

    /// Tickets failed since the last call.
    pub fn take_failed(&mut self) -> Vec<(u64, CkptError)> {
        std::mem::take(&mut self.failed)
    }

    /// Number of tickets of `instance` still waiting.
    pub fn pending(&self, instance: InstanceId) -> usize {
        self.tracks
            .get(&instance)
            .map_or(0, |t| t.local.len() + t.all.len() + t.weak.len())
    }

    /// WEAK and ACTIVE tickets of `instance` that wait only for the lag
    /// bound or pacing (applied, and for ACTIVE durable here): writes a
    /// backup holds back.
    pub fn held_by_lag(&self, instance: InstanceId) -> usize {
        self.tracks.get(&instance).map_or(0, |t| {
            let durable = t.durable.map(|(_, s)| s);
            let local = t
                .local
                .keys()
                .take_while(|(seq, _)| durable.is_some_and(|d| *seq <= d))
                .count();
            t.weak.len() + local
        })
    }

    /// The highest seq of `instance` any ticket was released at in the
    /// current epoch: a backup joining the in-sync set must hold the log up
    /// to at most the lag bound before it.
    pub fn released_max(&self, instance: InstanceId) -> Option<Seq> {
        self.tracks.get(&instance).and_then(|t| t.released_max)
    }

    /// Records a WEAK or ACTIVE write may be ahead of the in-sync backups.
    pub fn lag_max(&self) -> u64 {
        self.lag_max
    }

    /// The highest seq of `instance` an AllInSync ticket was released at in
    /// the current epoch: every in-sync member holds the log up to it, so a
    /// member that acknowledged it (in this epoch) may join the in-sync set.
    pub fn released_through(&self, instance: InstanceId) -> Option<Seq> {
        self.tracks.get(&instance).and_then(|t| t.released_all)
    }

    /// The members (other than this node) AllInSync tickets of `instance` wait for.
    pub fn required(&self, instance: InstanceId) -> Vec<NodeId> {
        self.tracks
            .get(&instance)
            .map_or_else(Vec::new, |t| t.members(self.me).collect())
    }

    fn evaluate(
        me: NodeId,
        lag_max: u64,
        instance: InstanceId,
        track: &mut Track,
        released: &mut Vec<u64>,
        failed: &mut Vec<(u64, CkptError)>,
    ) {
        let durable = track.durable.map(|(_, s)| s);
        // The highest seq the lag bound lets out: `lag_max` past the least
        // any in-sync member (or member being added) acknowledged in this
        // epoch; no bound without such members.
        let least_acked = track.least_acked(me);
        let bound = least_acked.map(|least| Seq(least.0.saturating_add(lag_max)));
        // And pacing, for every need.
        let paced = track.pace_bound();
        let within = |seq: Seq| bound.is_none_or(|b| seq <= b) && paced.is_none_or(|p| seq <= p);
        if let Some(durable) = durable {
            while let Some(entry) = track.local.first_entry() {
                let seq = entry.key().0;
                if seq > durable || !within(seq) {
                    break;
                }
                track.released_max = track.released_max.max(Some(seq));
                released.push(entry.key().1);
                entry.remove();
            }
        }
        while let Some(entry) = track.weak.first_entry() {
            let seq = entry.key().0;
            if !within(seq) {
                break;
            }
            track.released_max = track.released_max.max(Some(seq));
            released.push(entry.key().1);
            entry.remove();
        }
        if track.all.is_empty() {
            return;
        }
        if track.known && track.in_sync.len() < track.min_in_sync {
            let err = below_min(instance, track);
            for ((_, ticket), _) in std::mem::take(&mut track.all) {
                failed.push((ticket, err.clone()));
            }
            return;
        }
        let Some(durable) = durable else {
            return;
        };
        let mut threshold = least_acked.map_or(durable, |least| durable.min(least));
        if let Some(paced) = paced {
            threshold = threshold.min(paced);
        }
        while let Some(entry) = track.all.first_entry() {
            if entry.key().0 > threshold {
                break;
            }
            let seq = entry.key().0;
            track.released_all = track.released_all.max(Some(seq));
            track.released_max = track.released_max.max(Some(seq));
            released.push(entry.key().1);
            entry.remove();
        }
    }
}

fn below_min(instance: InstanceId, track: &Track) -> CkptError {
    try_again(format!(
        "instance {}: {} in-sync replicas, fewer than min_in_sync {}",
        instance.0,
        track.in_sync.len(),
        track.min_in_sync
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const I: InstanceId = InstanceId(7);

    fn pos(epoch: u64, seq: u64) -> Position {
        Position {
            instance: I,
            epoch: Epoch(epoch),
            seq: Seq(seq),
        }
    }

    /// Node 1 is this node; in-sync {1, 2, 3}, min 2, epoch 1.
    fn tracker() -> Tracker {
        let mut t = Tracker::new(1);
        t.set_in_sync(I, Epoch(1), &[1, 2, 3], 2);
        t
    }

    fn codes(failed: &[(u64, CkptError)]) -> Vec<(u64, ErrorCode)> {
        failed.iter().map(|(t, e)| (*t, e.code)).collect()
    }

    #[test]
    fn each_need_is_released_by_its_own_condition() {
        // (need, events, released after the events?)
        #[derive(Clone, Copy)]
        enum Event {
            Durable(u64),
            Ack(NodeId, u64),
        }
        use Event::*;
        let cases: Vec<(Need, Vec<Event>, bool)> = vec![
            (Need::Applied, vec![], true),
            (Need::LocalDurable, vec![], false),
            (Need::LocalDurable, vec![Durable(4)], false),
            (Need::LocalDurable, vec![Durable(5)], true),
            (Need::LocalDurable, vec![Durable(9)], true),
            (Need::LocalDurable, vec![Ack(2, 5), Ack(3, 5)], false),
            (Need::AllInSync, vec![Durable(5)], false),
            (Need::AllInSync, vec![Durable(5), Ack(2, 5)], false),
            (Need::AllInSync, vec![Ack(2, 5), Ack(3, 5)], false),
            (
                Need::AllInSync,
                vec![Durable(5), Ack(2, 5), Ack(3, 4)],
                false,
            ),
            (
                Need::AllInSync,
                vec![Durable(5), Ack(2, 5), Ack(3, 5)],
                true,
            ),
            (
                Need::AllInSync,
                vec![Ack(2, 6), Ack(3, 9), Durable(5)],
                true,
            ),
            // An ack from a node outside the in-sync set counts for nothing.
            (
                Need::AllInSync,
                vec![Durable(5), Ack(2, 5), Ack(4, 5)],
                false,
            ),
        ];
        for (i, (need, events, released)) in cases.into_iter().enumerate() {
            let mut t = tracker();
            t.register(42, pos(1, 5), need);
            for event in events {
                match event {
                    Durable(seq) => t.local_durable(&[pos(1, seq)]),
                    Ack(node, seq) => t.replica_acked(node, I, Epoch(1), Seq(seq)),
                }
            }
            let got = t.take_released();
            assert_eq!(
                got == vec![42],
                released,
                "case {i}: {need:?} released {got:?}"
            );
            assert!(t.take_failed().is_empty(), "case {i}");
            assert_eq!(t.pending(I), usize::from(!released), "case {i}");
        }
    }

    #[test]
    fn tickets_are_released_in_seq_order_up_to_the_slowest_member() {
        let mut t = tracker();
        for seq in [3, 1, 2, 4] {
            t.register(100 + seq, pos(1, seq), Need::AllInSync);
        }
        t.local_durable(&[pos(1, 4)]);
        t.replica_acked(2, I, Epoch(1), Seq(4));
        t.replica_acked(3, I, Epoch(1), Seq(2));
        assert_eq!(t.take_released(), vec![101, 102]);
        t.replica_acked(3, I, Epoch(1), Seq(1)); // going back changes nothing
        assert!(t.take_released().is_empty());
        t.replica_acked(3, I, Epoch(1), Seq(4));
        assert_eq!(t.take_released(), vec![103, 104]);
    }

    #[test]
    fn acks_of_another_epoch_do_not_count() {
        let mut t = tracker();
        t.register(1, pos(1, 5), Need::AllInSync);
        t.local_durable(&[pos(1, 5)]);
        t.replica_acked(2, I, Epoch(0), Seq(5));
        t.replica_acked(3, I, Epoch(2), Seq(5));
        t.replica_acked(2, I, Epoch(1), Seq(5));
        assert!(t.take_released().is_empty());
        t.replica_acked(3, I, Epoch(1), Seq(5));
        assert_eq!(t.take_released(), vec![1]);
    }

    #[test]
    fn a_lagging_member_holds_tickets_until_its_removal_is_applied() {
        let mut t = tracker();
        t.register(1, pos(1, 5), Need::AllInSync);
        t.local_durable(&[pos(1, 5)]);
        t.replica_acked(2, I, Epoch(1), Seq(5));
        assert!(t.take_released().is_empty(), "node 3 has not acked");
        // The control plane applied the set without node 3.
        t.set_in_sync(I, Epoch(1), &[1, 2], 2);
        assert_eq!(t.take_released(), vec![1]);
        // New tickets no longer wait for node 3.
        t.register(2, pos(1, 6), Need::AllInSync);
        t.local_durable(&[pos(1, 6)]);
        t.replica_acked(2, I, Epoch(1), Seq(6));
        assert_eq!(t.take_released(), vec![2]);
    }

    #[test]
    fn a_member_being_added_is_waited_for_from_the_proposal_on() {
        let mut t = Tracker::new(1);
        t.set_in_sync(I, Epoch(1), &[1, 2], 2);
        t.register(1, pos(1, 5), Need::AllInSync);
        t.expect_in_sync(I, 3);
        assert_eq!(t.required(I), vec![2, 3]);
        t.local_durable(&[pos(1, 5)]);
        t.replica_acked(2, I, Epoch(1), Seq(5));
        assert!(t.take_released().is_empty(), "node 3 is being added");
        t.replica_acked(3, I, Epoch(1), Seq(5));
        assert_eq!(t.take_released(), vec![1]);
        // Giving the addition up releases what only waited for it.
        t.register(2, pos(1, 6), Need::AllInSync);
        t.local_durable(&[pos(1, 6)]);
        t.replica_acked(2, I, Epoch(1), Seq(6));
        assert!(t.take_released().is_empty());
        t.drop_expected(I, 3);
        assert_eq!(t.take_released(), vec![2]);
        // Once applied it is a plain member.
        t.expect_in_sync(I, 3);
        t.set_in_sync(I, Epoch(1), &[1, 2, 3], 2);
        assert_eq!(t.required(I), vec![2, 3]);
        t.drop_expected(I, 3);
        assert_eq!(t.required(I), vec![2, 3]);
    }

    #[test]
    fn a_new_epoch_fails_the_older_epochs_tickets_with_try_again() {
        let mut t = tracker();
        t.register(1, pos(1, 5), Need::AllInSync);
        t.register(2, pos(1, 6), Need::LocalDurable);
        t.local_durable(&[pos(1, 4)]);
        t.replica_acked(2, I, Epoch(1), Seq(9));
        t.set_in_sync(I, Epoch(2), &[2, 3], 2);
        let failed = t.take_failed();
        let mut got = codes(&failed);
        got.sort_by_key(|(t, _)| *t);
        assert_eq!(
            got,
            vec![(1, ErrorCode::TryAgain), (2, ErrorCode::TryAgain)]
        );
        assert!(
            failed[0].1.detail.contains("epoch 2"),
            "{}",
            failed[0].1.detail
        );
        assert_eq!(t.pending(I), 0);
        // A late registration of the old epoch fails too.
        t.register(3, pos(1, 7), Need::LocalDurable);
        assert_eq!(codes(&t.take_failed()), vec![(3, ErrorCode::TryAgain)]);
        // Acks of the old epoch were forgotten.
        t.register(4, pos(2, 10), Need::AllInSync);
        t.local_durable(&[pos(2, 10)]);
        assert!(t.take_released().is_empty());
        // An older view arriving late changes nothing.
        t.set_in_sync(I, Epoch(1), &[1], 1);
        assert!(t.take_failed().is_empty());
        assert_eq!(t.required(I), vec![2, 3]);
    }

    #[test]
    fn fewer_than_min_in_sync_fails_pending_and_new_all_in_sync_writes() {
        let mut t = tracker();
        t.register(1, pos(1, 5), Need::AllInSync);
        t.register(2, pos(1, 5), Need::LocalDurable);
        t.set_in_sync(I, Epoch(1), &[1], 2);
        assert_eq!(codes(&t.take_failed()), vec![(1, ErrorCode::TryAgain)]);
        t.register(3, pos(1, 6), Need::AllInSync);
        let failed = t.take_failed();
        assert_eq!(codes(&failed), vec![(3, ErrorCode::TryAgain)]);
        assert!(
            failed[0].1.detail.contains("min_in_sync 2"),
            "{}",
            failed[0].1.detail
        );
        // Other needs are unaffected.
        t.local_durable(&[pos(1, 6)]);
        assert_eq!(t.take_released(), vec![2]);
        // Back at the minimum, writes wait again.
        t.set_in_sync(I, Epoch(1), &[1, 2], 2);
        t.register(4, pos(1, 7), Need::AllInSync);
        assert!(t.take_failed().is_empty());
        assert_eq!(t.pending(I), 1);
    }

    #[test]
    fn an_instance_without_metadata_refuses_all_in_sync_only() {
        let mut t = Tracker::new(1);
        t.register(1, pos(1, 1), Need::AllInSync);
        assert_eq!(codes(&t.take_failed()), vec![(1, ErrorCode::TryAgain)]);
        t.register(2, pos(1, 1), Need::LocalDurable);
        t.register(3, pos(1, 1), Need::Applied);
        assert_eq!(t.take_released(), vec![3]);
        t.local_durable(&[pos(1, 1)]);
        assert_eq!(t.take_released(), vec![2]);
    }

    #[test]
    fn a_single_replica_needs_only_local_durability() {
        let mut t = Tracker::new(1);
        t.set_in_sync(I, Epoch(1), &[1], 1);
        t.register(1, pos(1, 1), Need::AllInSync);
        assert!(t.take_released().is_empty());
        t.local_durable(&[pos(1, 1)]);
        assert_eq!(t.take_released(), vec![1]);
    }

    #[test]
    fn active_and_weak_writes_wait_while_an_in_sync_backup_is_more_than_the_bound_behind() {
        // In-sync {1, 2, 3}; no write may be acknowledged more than 3
        // records ahead of what every in-sync backup holds.
        let mut t = Tracker::with_lag_max(1, 3);
        t.set_in_sync(I, Epoch(1), &[1, 2, 3], 2);
        t.replica_acked(2, I, Epoch(1), Seq(5));
        t.replica_acked(3, I, Epoch(1), Seq(2));
        t.register(1, pos(1, 5), Need::LocalDurable);
        t.register(2, pos(1, 6), Need::LocalDurable);
        t.register(3, pos(1, 7), Need::Applied);
        t.local_durable(&[pos(1, 7)]);
        assert_eq!(
            t.take_released(),
            vec![1],
            "seq 5 is within 3 of node 3's 2"
        );
        assert_eq!(t.pending(I), 2);
        t.replica_acked(3, I, Epoch(1), Seq(3));
        assert_eq!(t.take_released(), vec![2]);
        t.replica_acked(3, I, Epoch(1), Seq(4));
        assert_eq!(t.take_released(), vec![3]);
        assert!(t.take_failed().is_empty());
        assert_eq!(t.pending(I), 0);
        assert_eq!(t.held_by_lag(I), 0);
        // Within the bound a weak write is released at once, before any
        // fsync, and an active one as soon as it is durable.
        t.register(4, pos(1, 7), Need::Applied);
        assert_eq!(t.take_released(), vec![4]);
        // Once the control plane removed the lagging member, it bounds
        // nothing.
        t.register(5, pos(1, 20), Need::Applied);
        t.register(6, pos(1, 21), Need::LocalDurable);
        t.register(8, pos(1, 21), Need::LocalDurable);
        assert_eq!(
            t.held_by_lag(I),
            1,
            "only the weak write waits for nothing but the bound"
        );
        t.local_durable(&[pos(1, 21)]);
        assert!(t.take_released().is_empty());
        assert_eq!(t.held_by_lag(I), 3);
        t.set_in_sync(I, Epoch(1), &[1, 2], 2);
        assert!(t.take_released().is_empty(), "node 2 holds 5");
        t.replica_acked(2, I, Epoch(1), Seq(18));
        let mut got = t.take_released();
        got.sort_unstable();
        assert_eq!(got, vec![5, 6, 8]);
        // A member being added bounds writes from its proposal on.
        t.expect_in_sync(I, 3);
        t.register(7, pos(1, 21), Need::Applied);
        assert!(t.take_released().is_empty(), "node 3 holds 4");
        t.replica_acked(3, I, Epoch(1), Seq(19));
        assert_eq!(t.take_released(), vec![7]);
        assert_eq!(t.released_max(I), Some(Seq(21)));
    }

    #[test]
    fn the_lag_bound_restarts_with_each_epoch_and_needs_backups() {
        let mut t = Tracker::with_lag_max(1, 3);
        t.set_in_sync(I, Epoch(1), &[1, 2], 1);
        t.replica_acked(2, I, Epoch(1), Seq(10));
        t.register(1, pos(1, 12), Need::Applied);
        assert_eq!(t.take_released(), vec![1]);
        // A new epoch forgets the acks: node 2 must acknowledge in it first.
        t.set_in_sync(I, Epoch(2), &[1, 2], 1);
        assert_eq!(t.released_max(I), None);
        t.register(2, pos(2, 13), Need::Applied);
        assert!(t.take_released().is_empty());
        t.replica_acked(2, I, Epoch(2), Seq(10));
        assert_eq!(t.take_released(), vec![2]);
        // A weak write held when the epoch changes fails with TRY_AGAIN.
        t.register(3, pos(2, 20), Need::Applied);
        t.set_in_sync(I, Epoch(3), &[1, 2], 1);
        assert_eq!(codes(&t.take_failed()), vec![(3, ErrorCode::TryAgain)]);
        // Without backups in the set nothing bounds the writes.
        t.set_in_sync(I, Epoch(4), &[1], 1);
        t.register(4, pos(4, 100), Need::Applied);
        assert_eq!(t.take_released(), vec![4]);
        let err = CkptError::new(ErrorCode::TryAgain, "fenced");
        t.set_in_sync(I, Epoch(4), &[1, 2], 1);
        t.register(5, pos(4, 101), Need::Applied);
        assert_eq!(
            codes(&t.fail_instance(I, err)),
            vec![(5, ErrorCode::TryAgain)]
        );
    }

    #[test]
    fn pacing_holds_every_need_to_a_window_that_shrinks_by_half_the_progress() {
        let mut t = Tracker::with_lag_max(1, 1000);
        t.set_in_sync(I, Epoch(1), &[1, 2], 1);
        t.local_durable(&[pos(1, 100)]);
        t.replica_acked(2, I, Epoch(1), Seq(100));
        t.replica_acked(3, I, Epoch(1), Seq(60));
        t.register(1, pos(1, 80), Need::LocalDurable);
        assert_eq!(t.take_released(), vec![1]);
        // Paced from 20 behind the highest released write: a window of 20.
        let three = BTreeSet::from([3]);
        t.pace(I, &three);
        assert_eq!(t.paced(I), vec![(3, 20)]);
        t.register(2, pos(1, 79), Need::Applied);
        t.register(3, pos(1, 80), Need::AllInSync);
        assert_eq!(t.take_released(), vec![2, 3], "within 60 + 20");
        t.register(4, pos(1, 81), Need::Applied);
        t.register(5, pos(1, 90), Need::LocalDurable);
        t.register(6, pos(1, 95), Need::AllInSync);
        assert!(t.take_released().is_empty(), "past 60 + 20: held");
        // Node 3 advances 10: the window shrinks by 5, the bound moves 5.
        t.replica_acked(3, I, Epoch(1), Seq(70));
        assert_eq!(t.paced(I), vec![(3, 15)]);
        assert_eq!(t.take_released(), vec![4], "81 <= 70 + 15 < 90");
        // Naming it again keeps its window; an odd advance rounds up.
        t.pace(I, &three);
        t.replica_acked(3, I, Epoch(1), Seq(73));
        assert_eq!(t.paced(I), vec![(3, 13)]);
        assert!(t.take_released().is_empty());
        // No longer paced (say, silent): the held writes go.
        t.pace(I, &BTreeSet::new());
        assert_eq!(t.take_released(), vec![5, 6]);
        // Joining the set, being added or a new epoch ends pacing; members
        // of the set are never paced.
        t.pace(I, &three);
        t.expect_in_sync(I, 3);
        assert_eq!(t.paced(I), vec![]);
        t.drop_expected(I, 3);
        t.pace(I, &BTreeSet::from([2, 3]));
        assert_eq!(t.paced(I).len(), 1);
        t.set_in_sync(I, Epoch(1), &[1, 2, 3], 1);
        assert_eq!(t.paced(I), vec![]);
        t.set_in_sync(I, Epoch(1), &[1, 2], 1);
        t.pace(I, &three);
        t.set_in_sync(I, Epoch(2), &[1, 2], 1);
        assert_eq!(t.paced(I), vec![]);
    }

    #[test]
    fn fail_instance_and_forget_fail_everything_pending() {
        let mut t = tracker();
        t.register(1, pos(1, 5), Need::AllInSync);
        t.register(2, pos(1, 6), Need::LocalDurable);
        let err = CkptError::new(ErrorCode::TryAgain, "fenced");
        let mut got = codes(&t.fail_instance(I, err.clone()));
        got.sort_by_key(|(t, _)| *t);
        assert_eq!(
            got,
            vec![(1, ErrorCode::TryAgain), (2, ErrorCode::TryAgain)]
        );
        assert!(t.take_failed().is_empty());
        t.register(3, pos(1, 7), Need::LocalDurable);
        t.forget(I, CkptError::new(ErrorCode::DoesntExist, "gone"));
        assert_eq!(codes(&t.take_failed()), vec![(3, ErrorCode::DoesntExist)]);
        assert_eq!(t.pending(I), 0);
    }
}
