//! Segment files: a fixed header, then records back to back.
//!
//! ```text
//! offset size field
//!      0    8 magic         b"CKPTWAL\0"
//!      8    4 version       format version, currently 1
//!     12    4 reserved      zero
//!     16    8 first_lsn     lsn of the first record this segment may hold
//!     24    4 header_crc    crc32 of bytes 0..24
//!     28    4 reserved      zero
//!     32    … records       see `record.rs`
//! ```
//!
//! A segment is named `wal-<first_lsn, 20 digits>.log`, so names sort in log
//! order. Scanning a segment classifies how it ends: cleanly, in a torn
//! record (a prefix of a record, or a record running past the end — what a
//! power cut during an append leaves), or in corruption followed by more
//! bytes, which is never silently dropped.

use super::record::{DecodeError, Lsn, Record};

/// First bytes of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"CKPTWAL\0";
/// Format version written into new segments.
pub const SEGMENT_VERSION: u32 = 1;
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
    /// The bytes from `offset` on are an incomplete final record.
    Torn { offset: u64, reason: String },
    /// The bytes at `offset` are damaged and more bytes follow.
    Corrupt { offset: u64, reason: String },
}

/// The result of reading one segment.
#[derive(Debug, Clone)]
pub struct SegmentScan {
    /// The lsn named in the header (None if the header itself is torn).
    pub first_lsn: Option<Lsn>,
    /// Valid records with their byte offsets, in order.
    pub records: Vec<(u64, Record)>,
    /// Offset just past the last valid record.
    pub valid_len: u64,
    /// How the segment ends.
    pub end: SegmentEnd,
}

/// Reads a segment's bytes. Never panics, whatever the input.
pub fn scan_segment(bytes: &[u8]) -> SegmentScan {
    let first_lsn = match check_header(bytes) {
        Ok(lsn) => lsn,
        Err(end) => {
            return SegmentScan {
                first_lsn: None,
                records: Vec::new(),
                valid_len: 0,
                end,
            }
        }
    };
    let mut records = Vec::new();
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
            Err(error) => break classify(offset as u64, rest, &error),
        }
    };
    SegmentScan {
        first_lsn: Some(first_lsn),
        records,
        valid_len: offset as u64,
        end,
    }
}

/// Checks a segment's header; returns its first lsn, or how the segment
/// ends at offset 0 (torn while being created, or corrupt).
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

/// Decides whether a record at `offset` that failed to decode is a torn
/// tail (it runs to or past the end, or only zeros follow — preallocated
/// space never written) or corruption followed by data. `rest` is the
/// segment from `offset` on.
pub fn classify(offset: u64, rest: &[u8], error: &DecodeError) -> SegmentEnd {
    let reason = error.to_string();
    if rest.iter().all(|&b| b == 0) {
        return SegmentEnd::Torn {
            offset,
            reason: "zeros after the last record".into(),
        };
    }
    match error {
        DecodeError::Truncated { .. } => SegmentEnd::Torn { offset, reason },
        DecodeError::Checksum { .. } => {
            // The record's own length says where it ends: when that is the end
            // of the file, this was the final append, cut short.
            let length = u64::from(u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]])) + 8;
            if length >= rest.len() as u64 {
                SegmentEnd::Torn { offset, reason }
            } else {
                SegmentEnd::Corrupt { offset, reason }
            }
        }
        DecodeError::Malformed(_) => SegmentEnd::Corrupt { offset, reason },
    }
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
        assert!(matches!(
            scan_segment(b"XKPT").end,
            SegmentEnd::Corrupt { .. }
        ));
    }
}
