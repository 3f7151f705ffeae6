//! Reading one checkpoint's recent records back from the log, for
//! subscribers that resume after their last seen sequence number (after a
//! server restart too): DESIGN.md §2, "resumes … without gaps while the log
//! still holds it, else it is told to re-read".
//!
//! Segments are read newest first with the same scanner recovery uses
//! ([`scan_segment`]), keeping only valid records, and reading stops as soon
//! as the history reaches back far enough. This module never decides
//! whether the result is complete: the caller checks that the sequence
//! numbers it got are contiguous, because segments can be trimmed (or a
//! damaged one cut short) at any time, between listing and reading too.

use std::collections::BTreeMap;
use std::io;

use super::record::{InstanceId, Lsn, Record, Seq};
use super::segment::{parse_segment_name, Frames};
use crate::io::WalFs;

/// What the log still holds of one instance.
#[derive(Debug, Clone, Default)]
pub struct InstanceHistory {
    /// Records of the instance with `after < seq` and `lsn <= upto`, in log
    /// (and so sequence) order. Possibly with gaps, possibly empty.
    pub records: Vec<Record>,
    /// The newest record of the instance with `seq <= after` (for `after > 0`),
    /// if the log still holds one: the entry `records` continue, unless its
    /// seq is below `after` or it is not a plain entry.
    pub at_after: Option<Record>,
    /// Segment bytes read to find them.
    pub bytes_read: u64,
    /// Records decoded to find them (the others were skipped by their
    /// length fields and headers).
    pub decoded: u64,
}

/// The records of `instance` after sequence number `after`, up to log
/// position `upto` (records past it may not be durable yet), as far back
/// as the log in `fs` still holds them.
///
/// A segment removed between listing and reading ends the search there
/// (trimming removes the oldest first, so nothing older is left either).
///
/// # Errors
/// IO errors listing the directory or reading a segment that exists.
pub fn instance_records_after(
    fs: &dyn WalFs,
    instance: InstanceId,
    after: Seq,
    upto: Lsn,
) -> io::Result<InstanceHistory> {
    let mut all = records_after_many(fs, &[(instance, after)], upto)?;
    Ok(all.pop().unwrap_or_default())
}

/// [`instance_records_after`] for several `(instance, after)` at once, in
/// one pass over the segments: each segment is read and decoded once for
/// all of them, not once per instance (a failover catches thousands of
/// checkpoints up at the same moment). The answers are in `wants` order.
///
/// # Errors
/// IO errors listing the directory or reading a segment that exists.
pub fn records_after_many(
    fs: &dyn WalFs,
    wants: &[(InstanceId, Seq)],
    upto: Lsn,
) -> io::Result<Vec<InstanceHistory>> {
    let mut histories = vec![InstanceHistory::default(); wants.len()];
    if wants.is_empty() {
        return Ok(histories);
    }
    let mut by_instance: BTreeMap<InstanceId, Vec<usize>> = BTreeMap::new();
    for (i, (instance, _)) in wants.iter().enumerate() {
        by_instance.entry(*instance).or_default().push(i);
    }
    let mut segments = segments_upto(fs, upto)?;
    // Newest first: the records wanted are the most recent ones.
    segments.reverse();
    // Per want: newest segment first, each segment's records in log order.
    let mut found: Vec<Vec<Vec<Record>>> = vec![Vec::new(); wants.len()];
    let mut reached_back = vec![false; wants.len()];
    let mut pending = wants.len();
    for (_, name) in segments {
        let bytes = match fs.read(&name) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => break,
            Err(error) => return Err(error),
        };
        let mut mine: BTreeMap<usize, Vec<Record>> = BTreeMap::new();
        let mut reached_here: Vec<usize> = Vec::new();
        let mut frames = Frames::new(&bytes);
        while let Some(frame) = frames.as_mut().and_then(Frames::next_checked) {
            if frame.lsn > upto {
                continue;
            }
            let Some(indices) = by_instance.get(&frame.instance) else {
                continue;
            };
            for &i in indices {
                histories[i].decoded += 1;
            }
            let Some(record) = frame.decode() else {
                // Checksummed yet not a valid record: like recovery's
                // scanner, nothing past it in this segment is taken.
                break;
            };
            for &i in indices {
                if reached_back[i] {
                    continue;
                }
                let after = wants[i].1;
                if record.entry.seq <= after {
                    // Newest segment first: the first segment reaching back
                    // this far holds the newest such record (its last one).
                    reached_here.push(i);
                    if after.0 > 0 {
                        histories[i].at_after = Some(record.clone());
                    }
                    continue;
                }
                if after.0 == 0 && record.entry.seq.0 == 1 {
                    reached_here.push(i);
                }
                mine.entry(i).or_default().push(record.clone());
            }
        }
        for (i, history) in histories.iter_mut().enumerate() {
            if !reached_back[i] {
                history.bytes_read += bytes.len() as u64;
                found[i].push(mine.remove(&i).unwrap_or_default());
            }
        }
        for i in reached_here {
            if !reached_back[i] {
                reached_back[i] = true;
                pending -= 1;
            }
        }
        if pending == 0 {
            break;
        }
    }
    for (history, segments) in histories.iter_mut().zip(found) {
        history.records = segments.into_iter().rev().flatten().collect();
    }
    Ok(histories)
}

/// The records of `instance` after the one at log position `at_lsn`, which
/// the caller knows holds its sequence number `after` (an earlier read
/// returned it), read forward from the segment holding it and no further
/// than `max_bytes` of entries: a replica catching up pays for what it is
/// sent, not for the whole log written since its position, each read.
///
/// `segments` is [`SegmentReads::list`]`(fs, upto)` (listed once for a
/// batch of reads, each segment read once for the batch). `Ok(None)` when the hint does not hold — the segment is gone, the record
/// at `at_lsn` is not `(instance, after)`, or a later record of the
/// instance is at `after` or below (a discard or a snapshot install
/// rewrote its history) — and the caller reads back with
/// [`records_after_many`] instead. The answer is the one that would give
/// for the entries it holds: `at_after` is the record at `at_lsn`.
///
/// # Errors
/// IO errors reading a segment that exists.
pub fn records_after_hinted(
    segments: &mut SegmentReads,
    instance: InstanceId,
    after: Seq,
    at_lsn: Lsn,
    upto: Lsn,
    max_bytes: u64,
) -> io::Result<Option<InstanceHistory>> {
    if at_lsn > upto || after.0 == 0 {
        return Ok(None);
    }
    let Some(start) = segments
        .listed
        .iter()
        .rposition(|(first, _)| *first <= at_lsn)
    else {
        return Ok(None);
    };
    let mut history = InstanceHistory::default();
    let mut bytes = 0u64;
    for index in start..segments.listed.len() {
        let data = match segments.read(index) {
            Ok(data) => data,
            // Trimmed meanwhile: what was read so far is still true.
            Err(error) if error.kind() == io::ErrorKind::NotFound => break,
            Err(error) => return Err(error),
        };
        history.bytes_read += data.len() as u64;
        let Some(mut frames) = Frames::new(&data) else {
            continue;
        };
        if history.at_after.is_none() {
            // Up to the hint, records are only skipped: by their length
            // fields, unchecked. A walk derailed by a damaged length never
            // lands on a checksummed record at `at_lsn` holding `after`, so
            // it ends in `None` and the caller reads back with the
            // recovery-grade scan.
            let found = loop {
                let Some((frame, _)) = frames.next_unchecked() else {
                    break false;
                };
                if frame.lsn < at_lsn {
                    continue;
                }
                if frame.lsn > at_lsn || frame.instance != instance {
                    return Ok(None);
                }
                history.decoded += 1;
                match frame.decode() {
                    Some(record) if record.entry.seq == after => {
                        history.at_after = Some(record);
                        break true;
                    }
                    _ => return Ok(None),
                }
            };
            if !found {
                continue;
            }
        }
        while let Some(frame) = frames.next_checked() {
            if frame.lsn > upto {
                return Ok(Some(history));
            }
            if frame.instance != instance {
                continue;
            }
            history.decoded += 1;
            let Some(record) = frame.decode() else {
                break;
            };
            if record.entry.seq <= after {
                return Ok(None);
            }
            bytes = bytes.saturating_add(record.entry.encoded_len() as u64);
            history.records.push(record);
            if bytes >= max_bytes {
                return Ok(Some(history));
            }
        }
    }
    Ok(history.at_after.is_some().then_some(history))
}

/// The log's segments as listed for one batch of hinted reads
/// ([`segments_upto`]), and the bytes of those read, shared by the reads: a
/// failover's or a loaded node's catch-up reads mostly start in the same
/// recent segments. Holds the last [`SegmentReads::HELD_MAX`] read.
pub struct SegmentReads<'a> {
    fs: &'a dyn WalFs,
    listed: Vec<(Lsn, String)>,
    held: std::collections::VecDeque<(usize, std::sync::Arc<Vec<u8>>)>,
}

impl<'a> SegmentReads<'a> {
    /// Segments held at most (each up to the segment size, 64 MiB by default).
    pub const HELD_MAX: usize = 4;

    /// Lists the segments of `fs` whose first record is at or before `upto`.
    ///
    /// # Errors
    /// IO errors listing the directory.
    pub fn list(fs: &'a dyn WalFs, upto: Lsn) -> io::Result<Self> {
        Ok(SegmentReads {
            fs,
            listed: segments_upto(fs, upto)?,
            held: std::collections::VecDeque::new(),
        })
    }

    /// The bytes of the `index`th segment listed.
    fn read(&mut self, index: usize) -> io::Result<std::sync::Arc<Vec<u8>>> {
        if let Some((_, bytes)) = self.held.iter().find(|(i, _)| *i == index) {
            return Ok(bytes.clone());
        }
        let bytes = std::sync::Arc::new(self.fs.read(&self.listed[index].1)?);
        if self.held.len() == Self::HELD_MAX {
            self.held.pop_front();
        }
        self.held.push_back((index, bytes.clone()));
        Ok(bytes)
    }
}

/// The log's segments whose first record is at or before `upto`, oldest
/// first: `(first lsn, file name)`.
///
/// # Errors
/// IO errors listing the directory.
pub fn segments_upto(fs: &dyn WalFs, upto: Lsn) -> io::Result<Vec<(Lsn, String)>> {
    let mut segments: Vec<(Lsn, String)> = fs
        .list()?
        .into_iter()
        .filter_map(|name| parse_segment_name(&name).map(|lsn| (lsn, name)))
        .filter(|(first, _)| *first <= upto)
        .collect();
    segments.sort_by_key(|(first, _)| *first);
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`records_after_hinted`] over the segments listed now.
    fn read_hinted(
        fs: &dyn WalFs,
        after: Seq,
        at_lsn: Lsn,
        upto: Lsn,
        max_bytes: u64,
    ) -> io::Result<Option<InstanceHistory>> {
        let mut segments = SegmentReads::list(fs, upto)?;
        records_after_hinted(&mut segments, InstanceId(1), after, at_lsn, upto, max_bytes)
    }
    use crate::io::{OsFs, WalFs};
    use crate::wal::record::{Entry, Epoch, RecordBody};
    use crate::wal::segment::{encode_header, segment_name, SEGMENT_HEADER_BYTES};

    fn record(lsn: u64, instance: u64, seq: u64) -> Record {
        Record {
            lsn: Lsn(lsn),
            entry: Entry {
                instance: InstanceId(instance),
                epoch: Epoch(1),
                seq: Seq(seq),
                timestamp: 0,
                origin: None,
                body: RecordBody::RetentionSet {
                    retention_duration_ns: seq as i64,
                },
            },
        }
    }

    /// Segments of `per_segment` records; instances 1 and 2 alternate.
    fn log(fs: &OsFs, records: u64, per_segment: u64) {
        let mut seqs = [0u64; 3];
        let mut lsn = 1;
        while lsn <= records {
            let mut file = fs.create(&segment_name(Lsn(lsn))).unwrap();
            let mut bytes = encode_header(Lsn(lsn)).to_vec();
            for _ in 0..per_segment {
                if lsn > records {
                    break;
                }
                let instance = 1 + (lsn % 2);
                seqs[instance as usize] += 1;
                record(lsn, instance, seqs[instance as usize]).encode_into(&mut bytes);
                lsn += 1;
            }
            file.write_all(&bytes).unwrap();
        }
    }

    fn seqs(history: &InstanceHistory) -> Vec<u64> {
        history.records.iter().map(|r| r.entry.seq.0).collect()
    }

    #[test]
    fn a_hinted_read_starts_at_its_segment_and_stops_after_max_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let fs = OsFs::new(dir.path()).unwrap();
        log(&fs, 400, 10); // instance 1 has seqs 1..=200, 5 per segment
        let upto = Lsn(400);
        // Instance 1 has the even lsns: its seq 10 is at lsn 20.
        let back = records_after_many(&fs, &[(InstanceId(1), Seq(10))], upto).unwrap();
        let at = back[0].at_after.clone().unwrap();
        assert_eq!(at.entry.seq, Seq(10));
        let one = record(1, 1, 1).entry.encoded_len() as u64;
        let hinted = read_hinted(&fs, Seq(10), at.lsn, upto, 3 * one)
            .unwrap()
            .expect("the hint holds");
        assert_eq!(seqs(&hinted), vec![11, 12, 13]);
        assert_eq!(hinted.at_after.as_ref().map(|r| r.lsn), Some(at.lsn));
        // The same records as reading back, which read the whole log after it.
        assert_eq!(hinted.records[..], back[0].records[..3]);
        assert!(
            hinted.bytes_read * 10 < back[0].bytes_read,
            "hinted {} bytes, back {} bytes",
            hinted.bytes_read,
            back[0].bytes_read
        );
        // Decoded: the record at the hint and the three returned, not the
        // records before them in its segment nor instance 2's among them
        // (before 73d9815 a hinted read decoded every record of each
        // segment it read).
        assert_eq!(hinted.decoded, 4);
        // Reading back decodes only instance 1's records: seqs 6..=200 in
        // the segments from the newest back to the one holding seq 10.
        assert_eq!(back[0].decoded, 195);
        // Everything up to `upto` when max_bytes is large.
        let all = read_hinted(&fs, Seq(10), at.lsn, upto, u64::MAX)
            .unwrap()
            .unwrap();
        assert_eq!(seqs(&all), (11..=200).collect::<Vec<_>>());
    }

    #[test]
    fn a_hint_that_does_not_hold_asks_for_a_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let fs = OsFs::new(dir.path()).unwrap();
        log(&fs, 40, 10);
        let upto = Lsn(40);
        let at = records_after_many(&fs, &[(InstanceId(1), Seq(10))], upto).unwrap()[0]
            .at_after
            .clone()
            .unwrap();
        // Another record at that lsn (instance 2's), another seq, past upto.
        let other = Lsn(at.lsn.0 + 1);
        assert!(read_hinted(&fs, Seq(10), other, upto, 100)
            .unwrap()
            .is_none());
        assert!(read_hinted(&fs, Seq(9), at.lsn, upto, 100)
            .unwrap()
            .is_none());
        assert!(read_hinted(&fs, Seq(10), at.lsn, Lsn(at.lsn.0 - 1), 100)
            .unwrap()
            .is_none());
        // Its segment trimmed.
        let first = (at.lsn.0 - 1) / 10 * 10 + 1;
        fs.remove(&segment_name(Lsn(first))).unwrap();
        assert!(read_hinted(&fs, Seq(10), at.lsn, upto, 100)
            .unwrap()
            .is_none());
    }

    /// A damaged length field: before the hint it derails the skipping
    /// walk, which must end in a read back (never in records taken from
    /// the wrong place); after it, both readers keep the valid prefix.
    #[test]
    fn a_damaged_length_sends_a_hinted_read_back_or_ends_it() {
        let one = record(1, 1, 1).encode().len();
        let length_at = |lsn: usize| SEGMENT_HEADER_BYTES + (lsn - 1) * one;
        for (damaged, bump) in [(5usize, 3u8), (5, 0x80), (25, 3), (25, 0x80)] {
            let dir = tempfile::tempdir().unwrap();
            let fs = OsFs::new(dir.path()).unwrap();
            log(&fs, 40, 40);
            let upto = Lsn(40);
            let at = records_after_many(&fs, &[(InstanceId(1), Seq(10))], upto).unwrap()[0]
                .at_after
                .clone()
                .unwrap();
            assert_eq!(at.lsn, Lsn(20));
            let name = segment_name(Lsn(1));
            let mut bytes = fs.read(&name).unwrap();
            bytes[length_at(damaged)] ^= bump;
            fs.create(&name).unwrap().write_all(&bytes).unwrap();
            let hinted = read_hinted(&fs, Seq(10), at.lsn, upto, u64::MAX).unwrap();
            let back = records_after_many(&fs, &[(InstanceId(1), Seq(10))], upto).unwrap();
            if damaged < 20 {
                assert!(
                    hinted.is_none(),
                    "length of lsn {damaged} ^ {bump}: {hinted:?}"
                );
                // Reading back keeps what precedes the damage: instance
                // 1's seqs 1 and 2, nothing after 10.
                assert!(back[0].records.is_empty());
                assert_eq!(back[0].at_after.as_ref().map(|r| r.entry.seq), Some(Seq(2)));
            } else {
                let hinted = hinted.expect("the hint holds");
                // Instance 1's records at lsn 22 and 24, then the damage.
                assert_eq!(
                    seqs(&hinted),
                    vec![11, 12],
                    "length of lsn {damaged} ^ {bump}"
                );
                assert_eq!(hinted.records, back[0].records);
            }
        }
    }

    #[test]
    fn reads_back_only_as_far_as_needed() {
        let dir = tempfile::tempdir().unwrap();
        let fs = OsFs::new(dir.path()).unwrap();
        log(&fs, 40, 10); // instance 1 has seqs 1..=20, 5 per segment
        let all = instance_records_after(&fs, InstanceId(1), Seq(0), Lsn(40)).unwrap();
        assert_eq!(seqs(&all), (1..=20).collect::<Vec<_>>());
        let recent = instance_records_after(&fs, InstanceId(1), Seq(17), Lsn(40)).unwrap();
        assert_eq!(seqs(&recent), vec![18, 19, 20]);
        assert!(
            recent.bytes_read < all.bytes_read,
            "stops at the newest segment"
        );
        // Nothing past `upto`.
        let durable = instance_records_after(&fs, InstanceId(1), Seq(17), Lsn(36)).unwrap();
        assert_eq!(seqs(&durable), vec![18]);
    }

    #[test]
    fn many_reads_in_one_pass_answer_as_each_alone() {
        let dir = tempfile::tempdir().unwrap();
        let fs = OsFs::new(dir.path()).unwrap();
        log(&fs, 40, 10);
        // Both instances, one twice, positions in different segments, one
        // instance the log never held, and one read past `upto`.
        let wants = [
            (InstanceId(1), Seq(17)),
            (InstanceId(2), Seq(3)),
            (InstanceId(1), Seq(0)),
            (InstanceId(9), Seq(4)),
            (InstanceId(2), Seq(19)),
        ];
        for upto in [Lsn(40), Lsn(33)] {
            let together = records_after_many(&fs, &wants, upto).unwrap();
            assert_eq!(together.len(), wants.len());
            for ((instance, after), got) in wants.iter().zip(&together) {
                let alone = instance_records_after(&fs, *instance, *after, upto).unwrap();
                assert_eq!(got.records, alone.records, "{instance:?} after {after:?}");
                assert_eq!(got.at_after, alone.at_after, "{instance:?} after {after:?}");
            }
        }
        let together = records_after_many(&fs, &wants, Lsn(40)).unwrap();
        assert_eq!(seqs(&together[0]), vec![18, 19, 20]);
        assert_eq!(seqs(&together[1]), (4..=20).collect::<Vec<_>>());
        assert!(together[3].records.is_empty() && together[3].at_after.is_none());
        assert!(records_after_many(&fs, &[], Lsn(40)).unwrap().is_empty());
    }

    #[test]
    fn a_trimmed_log_shows_as_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let fs = OsFs::new(dir.path()).unwrap();
        log(&fs, 40, 10);
        fs.remove(&segment_name(Lsn(1))).unwrap();
        fs.remove(&segment_name(Lsn(11))).unwrap();
        let history = instance_records_after(&fs, InstanceId(1), Seq(2), Lsn(40)).unwrap();
        // Records from lsn 21 on: instance 1's seq 11 onwards.
        assert_eq!(seqs(&history), (11..=20).collect::<Vec<_>>());
    }

    #[test]
    fn a_torn_tail_keeps_the_valid_records() {
        let dir = tempfile::tempdir().unwrap();
        let fs = OsFs::new(dir.path()).unwrap();
        log(&fs, 10, 10);
        let name = segment_name(Lsn(1));
        let bytes = fs.read(&name).unwrap();
        let mut file = fs.create(&name).unwrap();
        file.write_all(&bytes[..bytes.len() - 5]).unwrap();
        let history = instance_records_after(&fs, InstanceId(1), Seq(0), Lsn(10)).unwrap();
        assert_eq!(seqs(&history), vec![1, 2, 3, 4]);
    }
}
