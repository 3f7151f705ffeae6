//! A Raft message too large for one peer message, sent in parts.
//!
//! raft-rs sends a follower behind the compacted log the whole cluster state
//! as one `MsgSnapshot`: about 70 bytes per checkpoint with short names, and
//! up to about 400 with the longest. One peer frame holds at most 80 MiB
//! (`server::cluster::transport::FRAME_BYTES_MAX`), so at a few hundred
//! thousand checkpoints the snapshot could not be sent at all and a node
//! behind the log could never catch up. A message larger than
//! [`RAFT_PART_BYTES`] goes as numbered parts
//! ([`ControlMessage::RaftPart`]) that the receiver puts back together.
//!
//! Parts may arrive twice, out of order, or not at all (a full send queue
//! drops messages, a connection breaks): a duplicate is ignored, an
//! incomplete message is dropped when a part of another one comes from the
//! same sender or when no part of it came for [`RAFT_PART_WAIT_MS`], and
//! Raft sends a lost snapshot again (the leader reports
//! each snapshot as sent, probes the follower, and sends another when the
//! probe is refused).

use std::collections::BTreeMap;

use super::message::ControlMessage;
use crate::NodeId;

/// Largest Raft message sent whole; a larger one goes in parts of this size.
pub const RAFT_PART_BYTES: usize = 1 << 20;

/// A message in parts no part of which came for this long is dropped (its
/// sender died or gave it up; Raft sends what matters again).
pub const RAFT_PART_WAIT_MS: u64 = 30_000;

/// Most parts one message may have (256 at [`RAFT_PART_BYTES`]): what the
/// receiver keeps per part is bounded by it, not only by the bytes.
pub const RAFT_PARTS_MAX: u32 = 1 << 16;

/// Largest message put back together: what the Raft log accepts as one
/// frame (an installed snapshot is persisted whole).
pub const RAFT_MESSAGE_BYTES_MAX: usize = crate::raftlog::FRAME_BYTES_MAX;

/// `bytes` (an encoded Raft message) as parts of at most `part_bytes`,
/// numbered `message` by the sender's life `incarnation`; `None` when it
/// would not be accepted whole ([`RAFT_MESSAGE_BYTES_MAX`]).
pub fn split(
    incarnation: u64,
    message: u64,
    bytes: &[u8],
    part_bytes: usize,
) -> Option<Vec<ControlMessage>> {
    if bytes.len() > RAFT_MESSAGE_BYTES_MAX {
        return None;
    }
    let chunks = bytes.chunks(part_bytes.max(1));
    let parts = u32::try_from(chunks.len())
        .ok()
        .filter(|parts| *parts <= RAFT_PARTS_MAX)?;
    Some(
        chunks
            .enumerate()
            .map(|(part, chunk)| ControlMessage::RaftPart {
                incarnation,
                message,
                part: u32::try_from(part).expect("fewer parts than u32::MAX"),
                parts,
                bytes: chunk.to_vec(),
            })
            .collect(),
    )
}

struct Assembly {
    key: (u64, u64),
    parts: u32,
    got: BTreeMap<u32, Vec<u8>>,
    bytes: usize,
    /// When its last part came.
    last_ms: u64,
}

/// Puts parts back together, one message per sender at a time.
#[derive(Default)]
pub struct Assembler {
    by_sender: BTreeMap<NodeId, Assembly>,
}

impl Assembler {
    /// Takes one part from `from`; returns the whole message once its last
    /// missing part arrived. A part of another message than the one being
    /// put together from `from` starts over with it; a part that cannot be
    /// right (its number past the count, a count that changed, a message
    /// past [`RAFT_MESSAGE_BYTES_MAX`]) drops what `from` sent of it.
    pub fn add(
        &mut self,
        from: NodeId,
        (incarnation, message): (u64, u64),
        (part, parts): (u32, u32),
        bytes: Vec<u8>,
        now_ms: u64,
    ) -> Option<Vec<u8>> {
        let key = (incarnation, message);
        if part >= parts || parts > RAFT_PARTS_MAX || bytes.is_empty() {
            tracing::warn!(
                from,
                part,
                parts,
                bytes = bytes.len(),
                "raft message part that cannot be right dropped"
            );
            self.by_sender.remove(&from);
            return None;
        }
        // A late part of an earlier message of the same life: the one
        // being put together is newer.
        if self
            .by_sender
            .get(&from)
            .is_some_and(|a| a.key.0 == incarnation && message < a.key.1)
        {
            return None;
        }
        let fresh = || Assembly {
            key,
            parts,
            got: BTreeMap::new(),
            bytes: 0,
            last_ms: now_ms,
        };
        let assembly = self.by_sender.entry(from).or_insert_with(fresh);
        if assembly.key != key {
            *assembly = fresh();
        }
        assembly.last_ms = now_ms;
        if assembly.parts != parts {
            tracing::warn!(
                from,
                parts,
                expected = assembly.parts,
                "raft message parts disagree on their count; dropped"
            );
            self.by_sender.remove(&from);
            return None;
        }
        if assembly.got.contains_key(&part) {
            return None;
        }
        let total = assembly.bytes.checked_add(bytes.len());
        match total {
            Some(total) if total <= RAFT_MESSAGE_BYTES_MAX => assembly.bytes = total,
            _ => {
                tracing::warn!(
                    from,
                    bytes_max = RAFT_MESSAGE_BYTES_MAX,
                    "raft message in parts larger than accepted; dropped"
                );
                self.by_sender.remove(&from);
                return None;
            }
        }
        assembly.got.insert(part, bytes);
        if assembly.got.len() < parts as usize {
            return None;
        }
        let assembly = self.by_sender.remove(&from)?;
        let mut whole = Vec::with_capacity(assembly.bytes);
        for chunk in assembly.got.into_values() {
            whole.extend_from_slice(&chunk);
        }
        Some(whole)
    }

    /// Bytes held for messages not yet whole.
    pub fn held_bytes(&self) -> usize {
        self.by_sender.values().map(|a| a.bytes).sum()
    }

    /// Drops what was put together of messages no part of which came for
    /// `max_age_ms`: a sender that died or stopped sending a message midway
    /// must not keep up to [`RAFT_MESSAGE_BYTES_MAX`] held here.
    pub fn expire(&mut self, now_ms: u64, max_age_ms: u64) {
        self.by_sender.retain(|from, a| {
            let keep = now_ms.saturating_sub(a.last_ms) < max_age_ms;
            if !keep {
                tracing::info!(
                    from,
                    parts = a.got.len(),
                    of = a.parts,
                    "an incomplete raft message in parts dropped"
                );
            }
            keep
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts_of(message: u64, bytes: &[u8], part_bytes: usize) -> Vec<(u32, u32, Vec<u8>)> {
        split(7, message, bytes, part_bytes)
            .unwrap()
            .into_iter()
            .map(|m| match m {
                ControlMessage::RaftPart {
                    part, parts, bytes, ..
                } => (part, parts, bytes),
                other => panic!("not a part: {other:?}"),
            })
            .collect()
    }

    fn message(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn parts_in_any_order_and_twice_make_the_message_once() {
        let whole = message(1000);
        let parts = parts_of(1, &whole, 64);
        assert_eq!(parts.len(), 16);
        assert!(parts.iter().all(|(_, n, b)| *n == 16 && b.len() <= 64));
        let mut a = Assembler::default();
        let mut order: Vec<usize> = (0..16).rev().collect();
        order.insert(3, 15); // a duplicate
        let mut done = Vec::new();
        for i in order {
            let (part, n, bytes) = parts[i].clone();
            if let Some(m) = a.add(2, (7, 1), (part, n), bytes, 0) {
                done.push(m);
            }
        }
        assert_eq!(done, vec![whole]);
        assert_eq!(a.held_bytes(), 0);
    }

    #[test]
    fn a_lost_part_leaves_nothing_once_the_next_message_comes() {
        let first = message(300);
        let second = message(200);
        let mut a = Assembler::default();
        for (part, n, bytes) in parts_of(1, &first, 100).into_iter().skip(1) {
            assert!(a.add(2, (7, 1), (part, n), bytes, 0).is_none());
        }
        assert_eq!(a.held_bytes(), 200);
        // Another sender's message is put together beside it.
        for (part, n, bytes) in parts_of(1, &first, 100) {
            if let Some(m) = a.add(3, (9, 1), (part, n), bytes, 0) {
                assert_eq!(m, first);
            }
        }
        let mut got = None;
        for (part, n, bytes) in parts_of(2, &second, 100) {
            got = a.add(2, (7, 2), (part, n), bytes, 0).or(got);
        }
        assert_eq!(got, Some(second));
        assert_eq!(a.held_bytes(), 0);
    }

    #[test]
    fn parts_that_cannot_be_right_are_dropped() {
        let mut a = Assembler::default();
        assert!(a.add(2, (7, 1), (3, 3), vec![1], 0).is_none());
        assert_eq!(a.held_bytes(), 0);
        assert!(a.add(2, (7, 1), (0, 3), vec![1], 0).is_none());
        assert!(
            a.add(2, (7, 1), (1, 4), vec![2], 0).is_none(),
            "count changed"
        );
        assert_eq!(a.held_bytes(), 0);
        // Larger in all than a message may be.
        let big = vec![0u8; RAFT_MESSAGE_BYTES_MAX / 2 + 1];
        assert!(a.add(2, (7, 2), (0, 3), big.clone(), 0).is_none());
        assert!(a.add(2, (7, 2), (1, 3), big, 0).is_none());
        assert_eq!(a.held_bytes(), 0, "the oversize message was dropped");
        assert!(split(7, 3, &vec![0u8; RAFT_MESSAGE_BYTES_MAX + 1], 1 << 20).is_none());
        // Empty parts, or more parts than a message may have, would hold
        // memory without counting bytes.
        assert!(a.add(2, (7, 4), (0, 3), Vec::new(), 0).is_none());
        assert!(a
            .add(2, (7, 4), (0, RAFT_PARTS_MAX + 1), vec![1], 0)
            .is_none());
        assert_eq!(a.held_bytes(), 0);
        let many = vec![0u8; RAFT_PARTS_MAX as usize + 1];
        assert!(split(7, 5, &many, 1).is_none());
    }

    #[test]
    fn a_late_part_of_an_earlier_message_leaves_the_newer_one_alone() {
        let first = message(300);
        let second = message(200);
        let old_parts = parts_of(1, &first, 100);
        let new_parts = parts_of(2, &second, 100);
        let mut a = Assembler::default();
        let (part, n, bytes) = new_parts[0].clone();
        assert!(a.add(2, (7, 2), (part, n), bytes, 0).is_none());
        let (part, n, bytes) = old_parts[2].clone();
        assert!(a.add(2, (7, 1), (part, n), bytes, 0).is_none());
        let (part, n, bytes) = new_parts[1].clone();
        assert_eq!(a.add(2, (7, 2), (part, n), bytes, 0), Some(second));
    }

    #[test]
    fn an_incomplete_message_is_dropped_once_its_parts_stop_coming() {
        let whole = message(300);
        let parts = parts_of(1, &whole, 100);
        let mut a = Assembler::default();
        let (part, n, bytes) = parts[0].clone();
        assert!(a.add(2, (7, 1), (part, n), bytes, 1_000).is_none());
        let (part, n, bytes) = parts[1].clone();
        assert!(a.add(2, (7, 1), (part, n), bytes, 5_000).is_none());
        a.expire(9_999, 5_000);
        assert_eq!(a.held_bytes(), 200, "the last part came 4,999 ms ago");
        a.expire(10_000, 5_000);
        assert_eq!(a.held_bytes(), 0);
        // The last part alone no longer completes it.
        let (part, n, bytes) = parts[2].clone();
        assert!(a.add(2, (7, 1), (part, n), bytes, 10_001).is_none());
    }

    #[test]
    fn a_message_that_fits_in_one_part_is_one_part() {
        let whole = message(64);
        let parts = parts_of(1, &whole, 64);
        assert_eq!(parts, vec![(0, 1, whole.clone())]);
        let mut a = Assembler::default();
        assert_eq!(a.add(2, (7, 1), (0, 1), whole.clone(), 0), Some(whole));
    }
}
