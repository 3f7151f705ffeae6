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
use super::segment::{parse_segment_name, scan_segment};
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
    let mut segments: Vec<(Lsn, String)> = fs
        .list()?
        .into_iter()
        .filter_map(|name| parse_segment_name(&name).map(|lsn| (lsn, name)))
        .filter(|(first, _)| *first <= upto)
        .collect();
    // Newest first: the records wanted are the most recent ones.
    segments.sort_by_key(|(first, _)| std::cmp::Reverse(*first));
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
        let scan = scan_segment(&bytes);
        let mut mine: BTreeMap<usize, Vec<Record>> = BTreeMap::new();
        let mut reached_here: Vec<usize> = Vec::new();
        for (_, record) in scan.records {
            if record.lsn > upto {
                continue;
            }
            let Some(indices) = by_instance.get(&record.entry.instance) else {
                continue;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{OsFs, WalFs};
    use crate::wal::record::{Entry, Epoch, RecordBody};
    use crate::wal::segment::{encode_header, segment_name};

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
