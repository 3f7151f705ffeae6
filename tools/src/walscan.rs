//! Reading WAL segment files directly (docs/storage.md): listing them in log
//! order, judging each segment with the store's own recovery rule
//! ([`judge_segment`]: the same `scan_segment_with` and `TailRule` recovery
//! calls, fed the same durable mark), re-synchronising after damage to
//! decode what follows it, and formatting records for people and scripts.

use std::path::{Path, PathBuf};

use ckpt_client::ClientError;
use ckpt_proto::TIME_END;
use ckpt_storage::wal::mark;
use ckpt_storage::wal::segment::{
    self, parse_segment_name, scan_segment_with, SegmentScan, TailRule,
};
use ckpt_storage::{Lsn, Record, RecordBody};
use serde_json::{json, Map, Value};

use crate::datadir::io_error;

/// One segment file.
#[derive(Debug, Clone)]
pub struct SegmentFile {
    /// File name, `wal-<20 digits>.log`.
    pub name: String,
    /// First lsn, from the name.
    pub first_lsn: u64,
    /// Full path.
    pub path: PathBuf,
    /// Size in bytes.
    pub len: u64,
}

/// The segments of a WAL directory in log order, and the other files there.
///
/// # Errors
/// An unreadable directory.
pub fn list_segments(wal: &Path) -> Result<(Vec<SegmentFile>, Vec<String>), ClientError> {
    let mut segments = Vec::new();
    let mut others = Vec::new();
    if !wal.is_dir() {
        return Ok((segments, others));
    }
    let entries = std::fs::read_dir(wal).map_err(|e| io_error("listing", wal, &e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_error("listing", wal, &e))?;
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
    segments.sort_by_key(|s| s.first_lsn);
    others.sort();
    Ok((segments, others))
}

/// How a segment's bytes end: the store's own classification.
pub use ckpt_storage::wal::segment::SegmentEnd as Tail;

/// A checked segment header.
#[derive(Debug, Clone)]
pub struct Header {
    /// The first lsn it names, when the header is sound.
    pub first_lsn: Option<u64>,
    /// Why it is not, at offset 0 (torn or corrupt).
    pub problem: Option<Tail>,
}

/// Checks a segment's header as the store does.
pub fn check_header(bytes: &[u8]) -> Header {
    match segment::check_header(bytes) {
        Ok(lsn) => Header {
            first_lsn: Some(lsn.0),
            problem: None,
        },
        Err(problem) => Header {
            first_lsn: None,
            problem: Some(problem),
        },
    }
}

/// The durable mark of a WAL directory, as recovery reads it (`None` when
/// the file is missing or no slot is readable).
///
/// # Errors
/// An unreadable mark file.
pub fn read_mark(wal: &Path) -> Result<Option<Lsn>, ClientError> {
    let path = wal.join(mark::MARK_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(mark::decode(&bytes)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(io_error("reading", &path, &error)),
    }
}

/// Judges the segment at `position` of `count` exactly as recovery does:
/// its records, where they end, and whether the rest is clean, torn or
/// corrupt.
pub fn judge_segment(
    bytes: &[u8],
    segment: &SegmentFile,
    position: usize,
    count: usize,
    durable_mark: Option<Lsn>,
) -> SegmentScan {
    scan_segment_with(
        bytes,
        Lsn(segment.first_lsn),
        TailRule::for_segment(position, count, durable_mark),
    )
}

/// Walks the records of a segment from `start` (after the header), calling
/// `on_record(offset, encoded length, record)`; returns where valid records
/// end and, if they end before the bytes do, why the next one did not
/// decode. It does not judge torn versus corrupt: [`judge_segment`] does.
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
        let rest = &bytes[offset..];
        match Record::decode(rest) {
            Ok((record, used)) => {
                on_record(offset as u64, used as u64, record);
                offset += used;
            }
            Err(error) => return (offset as u64, Some(error.to_string())),
        }
    }
}

/// Looks for the next offset after `from` where a whole, checksummed record
/// with an lsn in `(after_lsn, after_lsn + 2^32)` starts (the store's own
/// forward scan).
pub fn resync(bytes: &[u8], from: usize, after_lsn: u64) -> Option<usize> {
    segment::next_record_after(bytes, from, Lsn(after_lsn)).map(|(at, _)| at)
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

/// Walks a segment from `start`, re-synchronising after damage: every
/// decodable record is passed to `on_record`, every undecodable stretch to
/// `on_gap`. A torn tail is reported as a gap too.
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
        match resync(bytes, from, after_lsn.saturating_sub(1 << 20)) {
            Some(next) => {
                on_gap(Gap {
                    segment: segment.to_string(),
                    start: end,
                    end: next as u64,
                    reason,
                });
                offset = next;
            }
            None => {
                on_gap(Gap {
                    segment: segment.to_string(),
                    start: end,
                    end: bytes.len() as u64,
                    reason,
                });
                return;
            }
        }
    }
}

/// `2026-11-24T21:15:53.123456789Z` for ns since the Unix epoch.
pub fn rfc3339(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// The name of a record's kind.
pub fn kind_name(body: &RecordBody) -> &'static str {
    match body {
        RecordBody::CheckpointCreate { .. } => "CheckpointCreate",
        RecordBody::CheckpointUnlink => "CheckpointUnlink",
        RecordBody::CheckpointDestroy => "CheckpointDestroy",
        RecordBody::RetentionSet { .. } => "RetentionSet",
        RecordBody::SectionCreate { .. } => "SectionCreate",
        RecordBody::SectionDelete { .. } => "SectionDelete",
        RecordBody::SectionExpirationSet { .. } => "SectionExpirationSet",
        RecordBody::Write { .. } => "Write",
        RecordBody::Overwrite { .. } => "Overwrite",
        RecordBody::GeneratedIdSet { .. } => "GeneratedIdSet",
        RecordBody::EpochStart { .. } => "EpochStart",
        RecordBody::SnapshotBegin { .. } => "SnapshotBegin",
        RecordBody::SnapshotSection { .. } => "SnapshotSection",
        RecordBody::SnapshotEnd => "SnapshotEnd",
        RecordBody::SuffixDiscard => "SuffixDiscard",
    }
}

fn time_text(t: i64) -> String {
    if t == TIME_END {
        "forever".into()
    } else {
        t.to_string()
    }
}

fn quoted(text: impl std::fmt::Display) -> String {
    format!("{:?}", text.to_string())
}

/// One line for people: `key=value` pairs, never the data itself.
pub fn record_line(segment: &str, offset: u64, record: &Record, name: Option<&str>) -> String {
    let mut line = format!(
        "lsn={} seg={segment} off={offset} time={} ckpt={} inst={} epoch={} seq={} {}",
        record.lsn.0,
        rfc3339(record.entry.timestamp),
        name.map_or_else(|| "?".to_string(), quoted),
        record.entry.instance.0,
        record.entry.epoch.0,
        record.entry.seq.0,
        kind_name(&record.entry.body)
    );
    let details = match &record.entry.body {
        RecordBody::CheckpointCreate { name, attributes: a } => format!(
            " name={} flags={} size={} retention={} max_sections={} max_section_size={} max_section_id_size={}",
            quoted(name),
            crate::admin::creation_flag_names(a.creation_flags).join("|"),
            a.checkpoint_size,
            time_text(a.retention_duration_ns),
            a.max_sections,
            a.max_section_size,
            a.max_section_id_size
        ),
        RecordBody::CheckpointUnlink | RecordBody::CheckpointDestroy => String::new(),
        RecordBody::RetentionSet {
            retention_duration_ns,
        } => format!(" retention={}", time_text(*retention_duration_ns)),
        RecordBody::SectionCreate {
            section_id,
            expiration_time,
            data,
            generated_next,
        } => format!(
            " id={} expiration={} generated_next={generated_next} len={}",
            quoted(section_id),
            time_text(*expiration_time),
            data.len()
        ),
        RecordBody::SectionDelete {
            section_id,
            expired,
        } => format!(" id={} expired={expired}", quoted(section_id)),
        RecordBody::SectionExpirationSet {
            section_id,
            expiration_time,
        } => format!(
            " id={} expiration={}",
            quoted(section_id),
            time_text(*expiration_time)
        ),
        RecordBody::Write { elements } => {
            let mut text = format!(" elements={}", elements.len());
            for e in elements {
                text.push_str(&format!(
                    " [id={} off={} len={}]",
                    quoted(&e.section_id),
                    e.offset,
                    e.data.len()
                ));
            }
            text
        }
        RecordBody::Overwrite { section_id, data } => {
            format!(" id={} len={}", quoted(section_id), data.len())
        }
        RecordBody::GeneratedIdSet { next } => format!(" next={next}"),
        RecordBody::EpochStart { epoch } => format!(" epoch={}", epoch.0),
        RecordBody::SnapshotBegin {
            name,
            unlinked,
            generated_next,
            ..
        } => format!(
            " name={} unlinked={unlinked} generated_next={generated_next}",
            quoted(name)
        ),
        RecordBody::SnapshotSection {
            section_id,
            expiration_time,
            offset,
            data,
            ..
        } => format!(
            " id={} expiration={} off={offset} len={}",
            quoted(section_id),
            time_text(*expiration_time),
            data.len()
        ),
        RecordBody::SnapshotEnd | RecordBody::SuffixDiscard => String::new(),
    };
    if let Some(origin) = record.entry.origin {
        line.push_str(&format!(" origin={}:{}", origin.session, origin.request));
    }
    line.push_str(&details);
    line
}

/// One JSON object for scripts.
pub fn record_json(segment: &str, offset: u64, record: &Record, name: Option<&str>) -> Value {
    let mut object = Map::new();
    let mut put = |key: &str, value: Value| {
        object.insert(key.to_string(), value);
    };
    put("segment", json!(segment));
    put("offset", json!(offset));
    put("lsn", json!(record.lsn.0));
    put("instance", json!(record.entry.instance.0));
    put("checkpoint", json!(name));
    put("epoch", json!(record.entry.epoch.0));
    put("seq", json!(record.entry.seq.0));
    put("timestamp_ns", json!(record.entry.timestamp));
    put("time", json!(rfc3339(record.entry.timestamp)));
    put("kind", json!(kind_name(&record.entry.body)));
    let time = |t: i64| if t == TIME_END { Value::Null } else { json!(t) };
    let id = |s: &ckpt_proto::SectionId| json!(String::from_utf8_lossy(s.as_bytes()));
    match &record.entry.body {
        RecordBody::CheckpointCreate {
            name,
            attributes: a,
        } => {
            put("name", json!(name.to_string()));
            put("creation_flags", json!(a.creation_flags.0));
            put(
                "flags",
                json!(crate::admin::creation_flag_names(a.creation_flags)),
            );
            put("checkpoint_size", json!(a.checkpoint_size));
            put("retention_duration_ns", time(a.retention_duration_ns));
            put("max_sections", json!(a.max_sections));
            put("max_section_size", json!(a.max_section_size));
            put("max_section_id_size", json!(a.max_section_id_size));
        }
        RecordBody::CheckpointUnlink | RecordBody::CheckpointDestroy => {}
        RecordBody::RetentionSet {
            retention_duration_ns,
        } => put("retention_duration_ns", time(*retention_duration_ns)),
        RecordBody::SectionCreate {
            section_id,
            expiration_time,
            data,
            generated_next,
        } => {
            put("section_id", id(section_id));
            put("expiration_time", time(*expiration_time));
            put("generated_next", json!(generated_next));
            put("size", json!(data.len()));
        }
        RecordBody::SectionDelete {
            section_id,
            expired,
        } => {
            put("section_id", id(section_id));
            put("expired", json!(expired));
        }
        RecordBody::SectionExpirationSet {
            section_id,
            expiration_time,
        } => {
            put("section_id", id(section_id));
            put("expiration_time", time(*expiration_time));
        }
        RecordBody::Write { elements } => {
            let elements: Vec<Value> = elements
                .iter()
                .map(|e| json!({"section_id": id(&e.section_id), "offset": e.offset, "size": e.data.len()}))
                .collect();
            put("elements", Value::Array(elements));
        }
        RecordBody::Overwrite { section_id, data } => {
            put("section_id", id(section_id));
            put("size", json!(data.len()));
        }
        RecordBody::GeneratedIdSet { next } => put("generated_next", json!(next)),
        RecordBody::EpochStart { epoch } => put("started_epoch", json!(epoch.0)),
        RecordBody::SnapshotBegin {
            name,
            unlinked,
            generated_next,
            ..
        } => {
            put("name", json!(name.to_string()));
            put("unlinked", json!(unlinked));
            put("generated_next", json!(generated_next));
        }
        RecordBody::SnapshotSection {
            section_id,
            expiration_time,
            offset,
            data,
            ..
        } => {
            put("section_id", id(section_id));
            put("expiration_time", time(*expiration_time));
            put("offset", json!(offset));
            put("size", json!(data.len()));
        }
        RecordBody::SnapshotEnd | RecordBody::SuffixDiscard => {}
    }
    if let Some(origin) = record.entry.origin {
        put(
            "origin",
            json!({"session": origin.session, "request": origin.request}),
        );
    }
    Value::Object(object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ckpt_proto::{CheckpointName, CreationAttributes, CreationFlags, SectionId};
    use ckpt_storage::wal::segment::{
        encode_header, scan_segment, SegmentEnd, SEGMENT_HEADER_BYTES,
    };
    use ckpt_storage::{Epoch, InstanceId, Lsn, Seq};

    fn records() -> Vec<Record> {
        let attributes = CreationAttributes {
            creation_flags: CreationFlags::WR_ACTIVE_REPLICA,
            checkpoint_size: 100,
            retention_duration_ns: TIME_END,
            max_sections: 2,
            max_section_size: 50,
            max_section_id_size: 8,
        };
        let mut out = vec![Record {
            lsn: Lsn(5),
            entry: ckpt_storage::Entry {
                instance: InstanceId(1),
                epoch: Epoch(1),
                seq: Seq(1),
                timestamp: 1_700_000_000_000_000_000,
                body: RecordBody::CheckpointCreate {
                    name: CheckpointName::new("a").unwrap(),
                    attributes,
                },
                origin: None,
            },
        }];
        for i in 0..6u64 {
            out.push(Record {
                lsn: Lsn(6 + i),
                entry: ckpt_storage::Entry {
                    instance: InstanceId(1),
                    epoch: Epoch(1),
                    seq: Seq(2 + i),
                    timestamp: 1_700_000_000_000_000_000,
                    body: RecordBody::Overwrite {
                        section_id: SectionId::new("s"),
                        data: vec![i as u8; 20],
                    },
                    origin: None,
                },
            });
        }
        out
    }

    fn segment() -> Vec<u8> {
        let mut bytes = encode_header(Lsn(5)).to_vec();
        for record in records() {
            record.encode_into(&mut bytes);
        }
        bytes
    }

    fn same_end(tail: &Tail, end: &SegmentEnd) -> bool {
        match (tail, end) {
            (Tail::Clean, SegmentEnd::Clean) => true,
            (Tail::Torn { offset: a, .. }, SegmentEnd::Torn { offset: b, .. }) => a == b,
            (Tail::Corrupt { offset: a, .. }, SegmentEnd::Corrupt { offset: b, .. }) => a == b,
            _ => false,
        }
    }

    /// The tool's judgement is recovery's on every flip and cut, for every
    /// place a segment can have in the log and every durable mark.
    #[test]
    fn agrees_with_the_store_scanner() {
        let good = segment();
        let mut inputs = Vec::new();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            inputs.push(bad);
            inputs.push(good[..i].to_vec());
        }
        let file = SegmentFile {
            name: "wal-00000000000000000005.log".into(),
            first_lsn: 5,
            path: PathBuf::new(),
            len: 0,
        };
        for bytes in inputs {
            for (position, count) in [(0, 1), (0, 2)] {
                for durable_mark in [None, Some(Lsn(0)), Some(Lsn(7)), Some(Lsn(11))] {
                    let ours = judge_segment(&bytes, &file, position, count, durable_mark);
                    let rule = TailRule::for_segment(position, count, durable_mark);
                    let store = ckpt_storage::wal::segment::scan_segment_with(&bytes, Lsn(5), rule);
                    assert!(
                        same_end(&ours.end, &store.end),
                        "{:?} {:?}",
                        ours.end,
                        store.end
                    );
                    assert_eq!(ours.valid_len, store.valid_len);
                    assert_eq!(ours.records.len(), store.records.len());
                    if count == 2 {
                        assert!(
                            !matches!(ours.end, SegmentEnd::Torn { .. }),
                            "only the last segment can be torn"
                        );
                    }
                }
            }
            let header = check_header(&bytes);
            if header.problem.is_none() {
                let mut count = 0;
                let (valid, _) = walk_records(&bytes, SEGMENT_HEADER_BYTES, |_, _, _| count += 1);
                assert_eq!(count, scan_segment(&bytes).records.len());
                assert_eq!(valid, scan_segment(&bytes).valid_len);
            }
        }
    }

    #[test]
    fn resync_finds_the_records_after_damage() {
        let mut bytes = segment();
        let offsets: Vec<u64> = scan_segment(&bytes)
            .records
            .iter()
            .map(|(o, _)| *o)
            .collect();
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
        assert_eq!(gaps[0].start, offsets[2]);
        assert_eq!(gaps[0].end, offsets[3]);
    }

    #[test]
    fn times_print_as_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339(1_700_000_000_123_456_789),
            "2023-11-14T22:13:20.123456789Z"
        );
        assert_eq!(
            rfc3339(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000000Z"
        );
    }
}
