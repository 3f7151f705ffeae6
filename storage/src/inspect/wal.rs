//! Reading the log's segment files as recovery does, for people: listing
//! them in log order, judging each with recovery's own rule (the same
//! [`scan_segment_with`] under the same [`TailRule`] and durable mark), and
//! walking past damage to show what lies beyond it.

use std::path::{Path, PathBuf};

use ckpt_proto::{CkptError, CkptResult, ErrorCode};

use super::ReadOnlyFs;
use crate::wal::mark;
use crate::wal::record::{Lsn, Record};
use crate::wal::segment::{
    next_record_after, parse_segment_name, scan_segment_with, SegmentEnd, SegmentScan, TailRule,
};

/// One segment file.
#[derive(Debug, Clone)]
pub struct SegmentFile {
    /// File name, `wal-<20 digits>.log`.
    pub name: String,
    /// First lsn, from the name.
    pub first_lsn: u64,
    /// Full path.
    pub path: PathBuf,
    /// Size in bytes when listed.
    pub len: u64,
}

fn io_error(what: &str, path: &Path, error: &std::io::Error) -> CkptError {
    let code = if error.raw_os_error() == Some(libc::ENOSPC) {
        ErrorCode::NoSpace
    } else {
        ErrorCode::Library
    };
    CkptError::new(code, format!("{what} {}: {error}", path.display()))
}

/// A log directory, listed once: its segments in log order, the other
/// files there, and the durable mark (read after the listing, as recovery
/// reads it). Reads only.
#[derive(Debug, Clone)]
pub struct WalReader {
    segments: Vec<SegmentFile>,
    others: Vec<String>,
    durable_mark: Option<Lsn>,
}

impl WalReader {
    /// Lists `wal_dir` (a missing directory is an empty log) and reads its
    /// durable mark.
    ///
    /// # Errors
    /// An unreadable directory or mark file.
    pub fn open(wal_dir: &Path) -> CkptResult<WalReader> {
        let mut segments = Vec::new();
        let mut others = Vec::new();
        if wal_dir.is_dir() {
            let entries =
                std::fs::read_dir(wal_dir).map_err(|e| io_error("listing", wal_dir, &e))?;
            for entry in entries {
                let entry = entry.map_err(|e| io_error("listing", wal_dir, &e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                match parse_segment_name(&name) {
                    Some(lsn) => segments.push(SegmentFile {
                        path: entry.path(),
                        len: entry.metadata().map(|m| m.len()).unwrap_or(0),
                        name,
                        first_lsn: lsn.0,
                    }),
                    None => others.push(name),
                }
            }
        }
        segments.sort_by_key(|s| s.first_lsn);
        others.sort();
        let durable_mark = mark::read(&ReadOnlyFs::new(wal_dir))
            .map_err(|e| io_error("reading", &wal_dir.join(mark::MARK_FILE), &e))?;
        Ok(WalReader {
            segments,
            others,
            durable_mark,
        })
    }

    /// The segments, in log order.
    pub fn segments(&self) -> &[SegmentFile] {
        &self.segments
    }

    /// The directory's other files (the mark, segments moved aside by
    /// salvage, …), sorted.
    pub fn other_files(&self) -> &[String] {
        &self.others
    }

    /// The durable mark: every record up to it was made durable.
    pub fn durable_mark(&self) -> Option<Lsn> {
        self.durable_mark
    }

    /// Bytes of the segments (as listed) and their number.
    pub fn footprint(&self) -> (u64, u64) {
        (
            self.segments.iter().map(|s| s.len).sum(),
            self.segments.len() as u64,
        )
    }

    /// The bytes of segment `index`.
    ///
    /// # Errors
    /// IO errors (a segment a live server deleted since the listing).
    pub fn read(&self, index: usize) -> CkptResult<Vec<u8>> {
        let segment = &self.segments[index];
        std::fs::read(&segment.path).map_err(|e| io_error("reading", &segment.path, &e))
    }

    /// Judges segment `index`'s bytes exactly as recovery does: its
    /// records, where they end, and whether the rest is clean, torn or
    /// corrupt (under the rule for its place in the log and the durable
    /// mark).
    pub fn judge(&self, index: usize, bytes: &[u8]) -> SegmentScan {
        scan_segment_with(
            bytes,
            Lsn(self.segments[index].first_lsn),
            TailRule::for_segment(index, self.segments.len(), self.durable_mark),
        )
    }
}

/// How a segment ends, in words: `clean`, `torn: …`, or the corruption.
pub fn tail_reason(end: &SegmentEnd) -> String {
    match end {
        SegmentEnd::Clean => "clean".into(),
        SegmentEnd::Torn { reason, .. } => format!("torn: {reason}"),
        SegmentEnd::Corrupt { reason, .. } => reason.clone(),
    }
}

/// Whether recovery cuts the segment judged `end` off as torn at or before
/// `offset`: everything from a torn tail on is cut, decodable or not.
pub fn torn_from(end: &SegmentEnd, offset: u64) -> bool {
    matches!(end, SegmentEnd::Torn { offset: torn, .. } if *torn <= offset)
}

/// Walks the records of a segment from `start` (after the header), calling
/// `on_record(offset, encoded length, record)`; returns where valid records
/// end and, if they end before the bytes do, why the next one did not
/// decode. It does not judge torn versus corrupt: [`WalReader::judge`]
/// does.
pub fn walk_records(
    bytes: &[u8],
    start: usize,
    mut on_record: impl FnMut(u64, u64, Record),
) -> (u64, Option<String>) {
    let mut offset = start;
    loop {
        if offset >= bytes.len() {
            return (offset as u64, None);
        }
        match Record::decode(&bytes[offset..]) {
            Ok((record, used)) => {
                on_record(offset as u64, used as u64, record);
                offset += used;
            }
            Err(error) => return (offset as u64, Some(error.to_string())),
        }
    }
}

/// A stretch of bytes that holds no decodable record.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Gap {
    /// Segment file name.
    pub segment: String,
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// What the first undecodable bytes were.
    pub reason: String,
}

/// Walks a segment from `start`, re-synchronising after damage with
/// recovery's own forward scan ([`next_record_after`]): every decodable
/// record is passed to `on_record`, every undecodable stretch to `on_gap`.
/// A torn tail is reported as a gap too.
pub fn walk_with_resync(
    segment: &str,
    bytes: &[u8],
    start: usize,
    mut after_lsn: u64,
    mut on_record: impl FnMut(u64, u64, Record),
    mut on_gap: impl FnMut(Gap),
) {
    let mut offset = start;
    loop {
        let (end, failure) = walk_records(bytes, offset, |at, len, record| {
            after_lsn = after_lsn.max(record.lsn.0);
            on_record(at, len, record);
        });
        let Some(reason) = failure else { return };
        let from = end as usize;
        let next = next_record_after(bytes, from, Lsn(after_lsn.saturating_sub(1 << 20)))
            .map(|(at, _)| at);
        on_gap(Gap {
            segment: segment.to_string(),
            start: end,
            end: next.map_or(bytes.len() as u64, |at| at as u64),
            reason,
        });
        match next {
            Some(next) => offset = next,
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::record::{Entry, Epoch, InstanceId, RecordBody, Seq};
    use crate::wal::segment::{encode_header, scan_segment, SEGMENT_HEADER_BYTES};
    use ckpt_proto::SectionId;

    fn segment() -> Vec<u8> {
        let mut bytes = encode_header(Lsn(5)).to_vec();
        for i in 0..7u64 {
            Record {
                lsn: Lsn(5 + i),
                entry: Entry {
                    instance: InstanceId(1),
                    epoch: Epoch(1),
                    seq: Seq(1 + i),
                    timestamp: 1_700_000_000_000_000_000,
                    body: RecordBody::Overwrite {
                        section_id: SectionId::new("s"),
                        data: vec![i as u8; 20],
                    },
                    origin: None,
                },
            }
            .encode_into(&mut bytes);
        }
        bytes
    }

    #[test]
    fn the_walk_decodes_what_the_scan_does_and_resyncs_after_damage() {
        let good = segment();
        let scan = scan_segment(&good);
        let mut count = 0;
        let (valid, failure) = walk_records(&good, SEGMENT_HEADER_BYTES, |_, _, _| count += 1);
        assert_eq!(
            (count, valid, failure),
            (scan.records.len(), scan.valid_len, None)
        );

        let offsets: Vec<u64> = scan.records.iter().map(|(o, _)| *o).collect();
        let mut bytes = good.clone();
        bytes[offsets[2] as usize + 20] ^= 1;
        let mut seen = Vec::new();
        let mut gaps = Vec::new();
        walk_with_resync(
            "s",
            &bytes,
            SEGMENT_HEADER_BYTES,
            0,
            |_, _, r| seen.push(r.lsn.0),
            |g| gaps.push(g),
        );
        assert_eq!(seen, [5, 6, 8, 9, 10, 11]);
        assert_eq!(gaps.len(), 1);
        assert_eq!((gaps[0].start, gaps[0].end), (offsets[2], offsets[3]));
    }
}
