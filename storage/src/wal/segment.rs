//! Segment files: a fixed header, then records back to back.
//!
//! ```text
//! offset size field
//!      0    8 magic         b"CKPTWAL\0"
//!      8    4 version       format version, currently 2 (see record.rs, "Format history")
//!     12    4 reserved      zero
//!     16    8 first_lsn     lsn of the first record this segment may hold
//!     24    4 header_crc    crc32 of bytes 0..24
//!     28    4 reserved      zero
//!     32    … records       see `record.rs`
//! ```
//!
//! A segment is named `wal-<first_lsn, 20 digits>.log`, so names sort in log
//! order. Scanning a segment classifies how it ends: cleanly, in a torn
//! tail (bytes that were never synced, which a power cut may leave as a
//! prefix, zeros, garbage or out-of-order pages — cut off by recovery), or
//! in corruption (damage to bytes an fsync covered — never silently
//! dropped). Bytes alone cannot tell the two apart (a flipped bit in a
//! length field looks like a record running past the end), so the verdict
//! depends on the segment's place in the log and on the durable mark: see
//! [`TailRule`] and [`classify`]. Recovery and `ckpt-tool` both call
//! [`scan_segment_with`], so they always agree.

use super::record::{
    DecodeError, InstanceId, Lsn, Record, RecordHeader, RecordKind, RECORD_HEADER_BYTES,
};

/// First bytes of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"CKPTWAL\0";
/// Format version written into new segments.
pub const SEGMENT_VERSION: u32 = 2;
/// Size of the segment header.
pub const SEGMENT_HEADER_BYTES: usize = 32;

/// The file name of the segment starting at `first_lsn`.
pub fn segment_name(first_lsn: Lsn) -> String {
    format!("wal-{:020}.log", first_lsn.0)
}

/// The first lsn of a segment from its file name, if it is one.
pub fn parse_segment_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_prefix("wal-")?.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Lsn)
}

/// The encoded header of a segment starting at `first_lsn`.
pub fn encode_header(first_lsn: Lsn) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    header[0..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    header[16..24].copy_from_slice(&first_lsn.0.to_le_bytes());
    let crc = crc32fast::hash(&header[0..24]);
    header[24..28].copy_from_slice(&crc.to_le_bytes());
    header
}

/// How a segment's bytes end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentEnd {
    /// Every byte belongs to a valid record.
    Clean,
    /// The bytes from `offset` on are what a power cut can leave after the
    /// last durable record: a prefix, zeros, garbage, or pages written out
    /// of order. Recovery cuts them off.
    Torn { offset: u64, reason: String },
    /// The bytes at `offset` are damaged where a power cut cannot have left
    /// them (see [`TailRule`]); recovery refuses to start.
    Corrupt { offset: u64, reason: String },
}

/// What is known about a segment's place in the log; decides whether damage
/// in it may be a torn tail. Recovery and `ckpt-tool` both build it with
/// [`TailRule::for_segment`], so they judge every segment alike.
///
/// The writer keeps two invariants that make this decidable:
/// - a segment is synced before its successor is created, so only the
///   log's last segment can hold bytes that were never synced;
/// - after each fsync the durable mark (`mark.rs`) records the highest lsn
///   that fsync covered, so records up to it were durable — acknowledged —
///   and no power cut can have damaged them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TailRule {
    /// The segment is the last of the log.
    pub is_last: bool,
    /// Every record up to this lsn was durable, from the durable mark.
    /// `None` when no mark could be read (a log written before marks
    /// existed): then damage is torn only if no valid later record follows.
    pub durable_through: Option<Lsn>,
}

impl TailRule {
    /// The rule for the segment at `position` of `count` segments, given the
    /// durable mark.
    pub fn for_segment(position: usize, count: usize, durable_through: Option<Lsn>) -> Self {
        TailRule {
            is_last: position + 1 == count,
            durable_through,
        }
    }

    /// The most lenient rule: the last segment, nothing known durable, so
    /// damage is torn unless a valid later record follows it.
    pub fn unknown_tail() -> Self {
        TailRule {
            is_last: true,
            durable_through: None,
        }
    }
}

/// The result of reading one segment.
#[derive(Debug, Clone)]
pub struct SegmentScan {
    /// The lsn named in the header (None if the header itself is damaged).
    pub first_lsn: Option<Lsn>,
    /// Valid records with their byte offsets, in order.
    pub records: Vec<(u64, Record)>,
    /// Offset just past the last valid record.
    pub valid_len: u64,
    /// How the segment ends.
    pub end: SegmentEnd,
}

/// Reads a segment's bytes as the log's last segment with nothing known to
/// be durable ([`TailRule::unknown_tail`]). Never panics, whatever the input.
pub fn scan_segment(bytes: &[u8]) -> SegmentScan {
    let first_lsn = check_header(bytes).map_or(Lsn(1), |lsn| lsn);
    scan_segment_with(bytes, first_lsn, TailRule::unknown_tail())
}

/// Reads a segment's bytes; `name_lsn` is the first lsn its file name
/// gives; `rule` decides torn versus corrupt. Never panics.
pub fn scan_segment_with(bytes: &[u8], name_lsn: Lsn, rule: TailRule) -> SegmentScan {
    let first_lsn = match check_header(bytes) {
        Ok(lsn) => lsn,
        Err(end) => {
            return SegmentScan {
                first_lsn: None,
                records: Vec::new(),
                valid_len: 0,
                end: classify_header(bytes, name_lsn, rule, end),
            }
        }
    };
    let mut records: Vec<(u64, Record)> = Vec::new();
    let mut offset = SEGMENT_HEADER_BYTES;
    let end = loop {
        if offset == bytes.len() {
            break SegmentEnd::Clean;
        }
        let rest = &bytes[offset..];
        match Record::decode(rest) {
            Ok((record, used)) => {
                records.push((offset as u64, record));
                offset += used;
            }
            Err(error) => {
                let last = records
                    .last()
                    .map_or(Lsn(first_lsn.0.saturating_sub(1)), |(_, r)| r.lsn);
                break classify(bytes, offset, &error, last, rule);
            }
        }
    };
    SegmentScan {
        first_lsn: Some(first_lsn),
        records,
        valid_len: offset as u64,
        end,
    }
}

/// One record of a segment, its entry not decoded: readers of one
/// checkpoint's history decode only that checkpoint's records. Decoding
/// every record of a 64 MiB segment (an allocation per payload) took a
/// catch-up read of a loaded node over a second, so a backup catching up
/// under load fell further behind each read.
pub struct Frame<'a> {
    pub lsn: Lsn,
    pub instance: InstanceId,
    /// The whole record, length and checksum included.
    bytes: &'a [u8],
}

impl Frame<'_> {
    /// The record, checksummed and decoded; `None` when it is not valid.
    pub fn decode(&self) -> Option<Record> {
        Record::decode(self.bytes).ok().map(|(record, _)| record)
    }
}

/// The records of one segment's bytes in log order, read by their length
/// fields — a lighter [`scan_segment`] for readers that decode few of them.
/// [`Frames::next_checked`] stops at the first record that is not whole
/// and checksummed, the valid prefix the scanner keeps;
/// [`Frames::next_unchecked`] trusts the length and header fields, for
/// records the reader only skips (a flipped length then derails the walk,
/// which the reader must detect: see `history::records_after_hinted`).
pub struct Frames<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Frames<'a> {
    /// `None` when the segment's header is not valid (it holds no record).
    pub fn new(bytes: &'a [u8]) -> Option<Self> {
        check_header(bytes).ok()?;
        Some(Frames {
            bytes,
            offset: SEGMENT_HEADER_BYTES,
        })
    }

    /// The next record by its header alone; `None` at the end of what
    /// looks like records.
    pub fn next_unchecked(&mut self) -> Option<(Frame<'a>, RecordHeader)> {
        let rest = self.bytes.get(self.offset..)?;
        let header = RecordHeader::peek(rest)?;
        self.offset += header.total;
        let frame = Frame {
            lsn: header.lsn,
            instance: header.instance,
            bytes: &rest[..header.total],
        };
        Some((frame, header))
    }

    /// The next record if it is whole and checksummed; after the first
    /// that is not, `None` for good.
    pub fn next_checked(&mut self) -> Option<Frame<'a>> {
        let frame = self
            .next_unchecked()
            .filter(|(frame, header)| header.checksum_holds(frame.bytes))
            .map(|(frame, _)| frame);
        if frame.is_none() {
            self.offset = self.bytes.len();
        }
        frame
    }
}

/// Checks a segment's header; returns its first lsn, or how the segment
/// ends at offset 0 — before [`TailRule`] is applied: `Torn` for a prefix of
/// a header, `Corrupt` otherwise.
pub fn check_header(bytes: &[u8]) -> Result<Lsn, SegmentEnd> {
    if bytes.len() < SEGMENT_HEADER_BYTES {
        // A header shorter than its size can only be a creation cut short,
        // provided what is there agrees with a header.
        let is_prefix = bytes.iter().zip(SEGMENT_MAGIC.iter()).all(|(a, b)| a == b);
        return Err(if is_prefix {
            SegmentEnd::Torn {
                offset: 0,
                reason: format!("header is {} of 32 bytes", bytes.len()),
            }
        } else {
            SegmentEnd::Corrupt {
                offset: 0,
                reason: "bad segment magic".into(),
            }
        });
    }
    let header = &bytes[..SEGMENT_HEADER_BYTES];
    let corrupt = |reason: String| Err(SegmentEnd::Corrupt { offset: 0, reason });
    if header[0..8] != SEGMENT_MAGIC {
        return corrupt("bad segment magic".into());
    }
    let stored = u32::from_le_bytes([header[24], header[25], header[26], header[27]]);
    let computed = crc32fast::hash(&header[0..24]);
    if stored != computed {
        return corrupt(format!(
            "segment header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
        ));
    }
    let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if version != SEGMENT_VERSION {
        return corrupt(format!("unsupported segment version {version}"));
    }
    let mut lsn_bytes = [0u8; 8];
    lsn_bytes.copy_from_slice(&header[16..24]);
    Ok(Lsn(u64::from_le_bytes(lsn_bytes)))
}

/// A damaged header. The writer syncs a header (and the directory) before
/// it writes any record into the segment, so a damaged header is a creation
/// cut short only in the last segment, holding no record, above the durable
/// mark; anywhere else it is corruption.
fn classify_header(bytes: &[u8], name_lsn: Lsn, rule: TailRule, end: SegmentEnd) -> SegmentEnd {
    let reason = match end {
        SegmentEnd::Clean => return SegmentEnd::Clean,
        SegmentEnd::Torn { reason, .. } | SegmentEnd::Corrupt { reason, .. } => reason,
    };
    let corrupt = |why: String| SegmentEnd::Corrupt {
        offset: 0,
        reason: format!("segment header: {reason}; {why}"),
    };
    if !rule.is_last {
        return corrupt("a later segment exists, so this one was complete".into());
    }
    if let Some(durable) = rule.durable_through {
        if name_lsn <= durable {
            return corrupt(format!(
                "records from lsn {} were made durable (durable mark {})",
                name_lsn.0, durable.0
            ));
        }
    }
    if let Some((at, lsn)) = next_record_after(bytes, 0, Lsn(name_lsn.0.saturating_sub(1))) {
        return corrupt(format!(
            "a valid record (lsn {}) follows at offset {at}",
            lsn.0
        ));
    }
    SegmentEnd::Torn {
        offset: 0,
        reason: format!("segment header: {reason} (creation cut short)"),
    }
}

/// Decides whether the record at `offset` of `bytes`, which failed to decode
/// with `error` after the record with lsn `last`, is a torn tail or
/// corruption, by `rule`:
/// - in a segment other than the last: corruption (it was synced whole
///   before its successor was created);
/// - at or below the durable mark: corruption (an fsync covered it and its
///   write was acknowledged; a power cut cannot undo that);
/// - above the mark: torn, whatever follows (zeros, garbage, or valid
///   records from pages written back out of order — none of them was
///   acknowledged as durable);
/// - with no mark: torn only if no valid record with a higher lsn follows
///   anywhere after it in the segment.
pub fn classify(
    bytes: &[u8],
    offset: usize,
    error: &DecodeError,
    last: Lsn,
    rule: TailRule,
) -> SegmentEnd {
    let at = offset as u64;
    let reason = if bytes[offset.min(bytes.len())..].iter().all(|&b| b == 0) {
        // What a preallocated segment holds past its last record.
        format!(
            "{} bytes of zeros to the end of the segment (preallocated, not yet written)",
            bytes.len().saturating_sub(offset)
        )
    } else {
        error.to_string()
    };
    let next = last.0.saturating_add(1);
    if !rule.is_last {
        return SegmentEnd::Corrupt {
            offset: at,
            reason: format!(
                "{reason}; in a segment that was synced whole before the next one was created"
            ),
        };
    }
    match rule.durable_through {
        Some(durable) if next <= durable.0 => SegmentEnd::Corrupt {
            offset: at,
            reason: format!(
                "{reason}; record lsn {next} was made durable (durable mark {})",
                durable.0
            ),
        },
        Some(durable) => SegmentEnd::Torn {
            offset: at,
            reason: format!(
                "{reason}; past the durable mark (lsn {}): never acknowledged as durable",
                durable.0
            ),
        },
        None => match next_record_after(bytes, offset, last) {
            Some((found, lsn)) => SegmentEnd::Corrupt {
                offset: at,
                reason: format!(
                    "{reason}; a valid record (lsn {}) follows at offset {found}",
                    lsn.0
                ),
            },
            None => SegmentEnd::Torn { offset: at, reason },
        },
    }
}

/// Checks that the log reaches the durable mark: records up to the mark
/// were acknowledged as durable, so if neither the log (`log_last`, its
/// highest lsn) nor RocksDB (`applied`) holds them, some were lost.
///
/// # Errors
/// Why the log is short, for the corruption message.
pub fn check_durable_end(
    mark: Option<Lsn>,
    log_last: Option<Lsn>,
    applied: Lsn,
) -> Result<(), String> {
    let Some(mark) = mark else { return Ok(()) };
    let reach = log_last.map_or(applied, |last| last.max(applied));
    if mark > reach {
        return Err(format!(
            "the durable mark says records up to lsn {} were made durable, but the log ends at lsn {} and RocksDB holds up to lsn {}: records {}..{} are missing",
            mark.0,
            log_last.map_or(0, |l| l.0),
            applied.0,
            reach.0 + 1,
            mark.0
        ));
    }
    Ok(())
}

/// The first offset after `from` where a whole, checksummed record with an
/// lsn above `after` (and less than 2^32 above it, which garbage that
/// happens to checksum would hardly meet) starts, scanning byte by byte.
pub fn next_record_after(bytes: &[u8], from: usize, after: Lsn) -> Option<(usize, Lsn)> {
    // A record's kind byte is never zero, so none starts in the trailing
    // zeros of a preallocated segment: skip them in one pass.
    let nonzero_end = bytes.iter().rposition(|&b| b != 0).map_or(0, |at| at + 1);
    let mut p = from + 1;
    while p + RECORD_HEADER_BYTES <= bytes.len() && p + 16 < nonzero_end {
        // Cheap tests first: a length that fits, the kind byte, the lsn.
        if let Some(header) = RecordHeader::peek(&bytes[p..]) {
            if RecordKind::from_u8(header.kind).is_some()
                && header.lsn > after
                && header.lsn.0 - after.0 < (1 << 32)
            {
                if let Ok((record, _)) = Record::decode(&bytes[p..]) {
                    return Some((p, record.lsn));
                }
            }
        }
        p += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::record::tests::sample_records;

    fn segment() -> Vec<u8> {
        let mut bytes = encode_header(Lsn(1)).to_vec();
        for record in sample_records() {
            record.encode_into(&mut bytes);
        }
        bytes
    }

    #[test]
    fn names_sort_in_log_order() {
        assert_eq!(segment_name(Lsn(42)), "wal-00000000000000000042.log");
        assert_eq!(parse_segment_name(&segment_name(Lsn(42))), Some(Lsn(42)));
        assert_eq!(parse_segment_name("wal-42.log"), None);
        assert_eq!(
            parse_segment_name("wal-00000000000000000042.log.damaged"),
            None
        );
        assert!(segment_name(Lsn(9)) < segment_name(Lsn(10)));
    }

    #[test]
    fn clean_segment_scans_all_records() {
        let scan = scan_segment(&segment());
        assert_eq!(scan.end, SegmentEnd::Clean);
        assert_eq!(scan.first_lsn, Some(Lsn(1)));
        assert_eq!(scan.records.len(), sample_records().len());
    }

    #[test]
    fn every_cut_is_a_torn_tail_keeping_a_prefix() {
        let bytes = segment();
        let full = sample_records();
        for cut in 0..bytes.len() {
            let scan = scan_segment(&bytes[..cut]);
            assert!(
                matches!(scan.end, SegmentEnd::Torn { .. } | SegmentEnd::Clean),
                "cut at {cut}: {:?}",
                scan.end
            );
            let got: Vec<_> = scan.records.iter().map(|(_, r)| r.clone()).collect();
            assert_eq!(got[..], full[..got.len()], "cut at {cut} is not a prefix");
        }
    }

    #[test]
    fn a_flip_before_the_tail_is_corruption_with_its_offset() {
        let mut bytes = segment();
        let second = scan_segment(&bytes).records[1].0;
        bytes[second as usize + 12] ^= 1;
        let scan = scan_segment(&bytes);
        assert_eq!(scan.records.len(), 1);
        match scan.end {
            SegmentEnd::Corrupt { offset, .. } => assert_eq!(offset, second),
            other => panic!("expected corruption, got {other:?}"),
        }
    }

    #[test]
    fn bad_header_is_corruption() {
        let mut bytes = segment();
        bytes[17] ^= 1;
        assert!(matches!(
            scan_segment(&bytes).end,
            SegmentEnd::Corrupt { offset: 0, .. }
        ));
        // A garbage header with nothing after it: a creation cut short by
        // a power cut (the header had not been synced) — but only in the
        // last segment and above the durable mark.
        assert!(matches!(
            scan_segment(b"XKPT").end,
            SegmentEnd::Torn { offset: 0, .. }
        ));
        let not_last = TailRule::for_segment(0, 2, Some(Lsn(0)));
        assert!(matches!(
            scan_segment_with(b"XKPT", Lsn(1), not_last).end,
            SegmentEnd::Corrupt { offset: 0, .. }
        ));
        let covered = TailRule::for_segment(0, 1, Some(Lsn(1)));
        assert!(matches!(
            scan_segment_with(b"XKPT", Lsn(1), covered).end,
            SegmentEnd::Corrupt { offset: 0, .. }
        ));
        let above = TailRule::for_segment(0, 1, Some(Lsn(0)));
        assert!(matches!(
            scan_segment_with(&[0u8; 32], Lsn(1), above).end,
            SegmentEnd::Torn { offset: 0, .. }
        ));
    }

    #[test]
    fn damage_is_torn_only_past_the_durable_mark_of_the_last_segment() {
        let bytes = segment();
        let scan = scan_segment(&bytes);
        let offsets: Vec<u64> = scan.records.iter().map(|(o, _)| *o).collect();
        // Zeros from record 4 (lsn 5) on, then record 6 and later intact:
        // pages written back out of order.
        let mut holed = bytes.clone();
        holed[offsets[4] as usize..offsets[5] as usize].fill(0);
        for (mark, last, torn) in [
            (Some(Lsn(4)), true, true),
            (Some(Lsn(5)), true, false),
            (Some(Lsn(4)), false, false),
            // No mark: valid records after the hole prove it was written.
            (None, true, false),
        ] {
            let rule = TailRule {
                is_last: last,
                durable_through: mark,
            };
            let scan = scan_segment_with(&holed, Lsn(1), rule);
            assert_eq!(scan.records.len(), 4);
            match scan.end {
                SegmentEnd::Torn { offset, .. } if torn => assert_eq!(offset, offsets[4]),
                SegmentEnd::Corrupt { offset, .. } if !torn => assert_eq!(offset, offsets[4]),
                other => panic!("mark {mark:?} last {last}: {other:?}"),
            }
        }
        // Without a mark, a flipped length bit in the middle (the record now
        // claims to run past the end) is corruption: valid records follow.
        let mut flipped = bytes.clone();
        flipped[offsets[2] as usize + 2] ^= 0x01;
        assert!(matches!(
            scan_segment(&flipped).end,
            SegmentEnd::Corrupt { offset, .. } if offset == offsets[2]
        ));
    }
}
