//! Where a backup's log stops being a prefix of the primary's.
//!
//! Kafka's KIP-101 lesson: a follower must never truncate to a high-water
//! mark, because a high-water mark says nothing about *which* entries it holds
//! up to there. Compare epochs instead. Each epoch has one primary, and the
//! control plane records the first seq of every epoch (`epoch_starts`). In the
//! primary's log the entries of epoch `e` occupy the seqs from `start(e)` up to
//! just before the first later epoch that starts no later than that — a later
//! epoch may start *below* an earlier epoch's end when the new primary never
//! received that tail, which is exactly the divergent suffix of a backup that
//! did. So a backup whose last entry is `(e, s)` holds a prefix of the
//! primary's log iff the primary knows epoch `e` and
//! `start(e) <= s <= min(start of every later epoch) - 1` (and `s` is not past
//! the primary's own last entry, nor at it in another epoch: an epoch whose
//! primary died before its start was recorded is in no list). Then the
//! primary streams what follows (a read checks that its entry at `s` is
//! `(e, s)`);
//! otherwise the backup gets a snapshot, whose installation discards its
//! divergent suffix.

use ckpt_storage::{Epoch, Seq};

/// How a primary brings a backup up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUpPlan {
    /// The backup's log is a prefix of ours: send the entries after `after`
    /// (`None`: from the start of the log).
    Stream { after: Option<(Epoch, Seq)> },
    /// The backup's log diverges from ours (or is not known to match): send a
    /// snapshot of the instance.
    Snapshot,
}

/// Decides how to catch up a backup whose last entry is `backup_last`.
///
/// `epoch_starts` are the first seqs of the primary's epochs (any order; the
/// primary's current epoch included), `primary_last` the primary's last entry.
pub fn plan_catch_up(
    backup_last: Option<(Epoch, Seq)>,
    epoch_starts: &[(Epoch, Seq)],
    primary_last: (Epoch, Seq),
) -> CatchUpPlan {
    let Some((epoch, seq)) = backup_last else {
        // An empty log is a prefix of every log.
        return CatchUpPlan::Stream { after: None };
    };
    if seq.0 == 0 || seq > primary_last.1 || epoch > primary_last.0 {
        return CatchUpPlan::Snapshot;
    }
    // At our last seq the entries match exactly when the epochs do (one
    // primary per epoch). This must be decided here, not by the starts: a
    // backup at our last seq is streamed without a read (the read is what
    // checks an earlier entry), and the recorded starts miss an epoch whose
    // primary died before recording it.
    if seq == primary_last.1 {
        return if epoch == primary_last.0 {
            CatchUpPlan::Stream { after: backup_last }
        } else {
            CatchUpPlan::Snapshot
        };
    }
    let Some(start) = epoch_starts
        .iter()
        .filter(|(e, _)| *e == epoch)
        .map(|(_, s)| *s)
        .min()
    else {
        // An epoch the primary's history does not know: its entries cannot
        // be shown to be ours.
        return CatchUpPlan::Snapshot;
    };
    // The end of `epoch` in the primary's log: before the lowest start of any
    // later epoch, and never past the primary's last entry.
    let mut end = primary_last.1;
    for (later, later_start) in epoch_starts {
        if *later > epoch {
            match later_start.0.checked_sub(1) {
                Some(before) => end = end.min(Seq(before)),
                None => return CatchUpPlan::Snapshot,
            }
        }
    }
    if start <= seq && seq <= end {
        CatchUpPlan::Stream {
            after: Some((epoch, seq)),
        }
    } else {
        CatchUpPlan::Snapshot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(epoch: u64, seq: u64) -> (Epoch, Seq) {
        (Epoch(epoch), Seq(seq))
    }

    #[test]
    fn kip101_divergence_table() {
        // Primary history: epoch 1 from 1, epoch 2 from 10, epoch 4 from 15
        // (epoch 3's primary recorded start 20 but never got further than our
        // log: its range is empty in our log), last entry (4, 30).
        let starts = [p(1, 1), p(2, 10), p(3, 20), p(4, 15)];
        let last = p(4, 30);
        let stream = |e, s| CatchUpPlan::Stream {
            after: Some(p(e, s)),
        };
        type Case = (&'static str, Option<(Epoch, Seq)>, CatchUpPlan);
        let cases: Vec<Case> = vec![
            ("empty backup", None, CatchUpPlan::Stream { after: None }),
            ("same epoch, behind", Some(p(4, 22)), stream(4, 22)),
            ("same epoch, caught up", Some(p(4, 30)), stream(4, 30)),
            (
                "same epoch, ahead of us",
                Some(p(4, 31)),
                CatchUpPlan::Snapshot,
            ),
            ("old epoch, inside its range", Some(p(1, 5)), stream(1, 5)),
            ("old epoch, its last entry", Some(p(1, 9)), stream(1, 9)),
            (
                "old epoch, ahead of its end",
                Some(p(1, 10)),
                CatchUpPlan::Snapshot,
            ),
            (
                "epoch 2, last entry before epoch 4",
                Some(p(2, 14)),
                stream(2, 14),
            ),
            (
                "epoch 2 suffix we never had",
                Some(p(2, 16)),
                CatchUpPlan::Snapshot,
            ),
            (
                "epoch whose range is empty here",
                Some(p(3, 20)),
                CatchUpPlan::Snapshot,
            ),
            ("epoch we never knew", Some(p(5, 3)), CatchUpPlan::Snapshot),
            ("unknown old epoch", Some(p(0, 3)), CatchUpPlan::Snapshot),
            ("seq zero", Some(p(1, 0)), CatchUpPlan::Snapshot),
            (
                "before its epoch's start",
                Some(p(2, 9)),
                CatchUpPlan::Snapshot,
            ),
        ];
        for (name, backup, want) in cases {
            assert_eq!(plan_catch_up(backup, &starts, last), want, "{name}");
        }
    }

    #[test]
    fn a_later_epoch_starting_below_an_earlier_ones_end_cuts_it() {
        // Epoch 2's primary wrote up to seq 12 and recorded start 10; epoch 3's
        // primary only had epoch 1 up to 7 and started at 8.
        let starts = [p(1, 1), p(2, 10), p(3, 8)];
        let last = p(3, 9);
        assert_eq!(
            plan_catch_up(Some(p(1, 9)), &starts, last),
            CatchUpPlan::Snapshot
        );
        assert_eq!(
            plan_catch_up(Some(p(2, 10)), &starts, last),
            CatchUpPlan::Snapshot
        );
        assert_eq!(
            plan_catch_up(Some(p(1, 7)), &starts, last),
            CatchUpPlan::Stream {
                after: Some(p(1, 7))
            }
        );
    }

    #[test]
    fn our_last_seq_in_another_epoch_is_a_divergence_even_when_its_start_was_never_recorded() {
        // Seed 100502 of the cluster simulator: the primary of epoch 5
        // wrote its begin entry at 168 and crashed before the control plane
        // recorded the start; back as primary of epoch 6 (recorded at 169,
        // its begin entry not yet appended) its last entry is (5, 168). The
        // old primary of epoch 4 wrote its own 168. By the recorded starts
        // epoch 4 runs to 168, but the entries at 168 differ: no stream.
        let starts = [p(1, 1), p(4, 138), p(6, 169)];
        assert_eq!(
            plan_catch_up(Some(p(4, 168)), &starts, p(5, 168)),
            CatchUpPlan::Snapshot
        );
        assert_eq!(
            plan_catch_up(Some(p(5, 168)), &starts, p(5, 168)),
            CatchUpPlan::Stream {
                after: Some(p(5, 168))
            }
        );
    }

    #[test]
    fn a_later_epoch_starting_at_zero_is_not_trusted() {
        let starts = [p(1, 1), p(2, 0)];
        assert_eq!(
            plan_catch_up(Some(p(1, 1)), &starts, p(2, 5)),
            CatchUpPlan::Snapshot
        );
    }
}
