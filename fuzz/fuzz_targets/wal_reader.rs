//! Feeds arbitrary bytes to the WAL reader.
//!
//! Properties checked on every input:
//! 1. `scan_segment` on the raw bytes never panics and stays within them.
//! 2. `Record::decode` on the raw bytes never panics; when it succeeds,
//!    `record.encode()` reproduces exactly the bytes it consumed.
//! 3. `scan_segment` on a valid header followed by the bytes: `valid_len`
//!    is within the input, and every record re-encodes to the bytes at its
//!    offset (records are contiguous and end at `valid_len`).
//! 4. and 5. The same as 2. and 3. after fixing up the record checksums in
//!    the bytes. Without this, libFuzzer almost never gets past the crc32
//!    check, and the body decoder (`decode_checked`) would go unexercised.
#![no_main]

use ckpt_storage::wal::record::{Lsn, Record};
use ckpt_storage::wal::segment::{
    encode_header, scan_segment, scan_segment_with, SegmentEnd, TailRule, SEGMENT_HEADER_BYTES,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check_segment_raw(data);
    check_record(data);
    check_segment_with_header(data);

    let mut fixed = data.to_vec();
    fix_record_crcs(&mut fixed, 0);
    check_record(&fixed);
    check_segment_with_header(&fixed);
});

/// Property 1, under every kind of rule recovery uses: never panics, stays
/// within the bytes, and only the last segment is ever torn.
fn check_segment_raw(data: &[u8]) {
    let scan = scan_segment(data);
    assert!(scan.valid_len <= data.len() as u64);
    check_records(data, &scan);
    for (position, count) in [(0, 1), (0, 2)] {
        for mark in [None, Some(Lsn(0)), Some(Lsn(3)), Some(Lsn(u64::MAX))] {
            let rule = TailRule::for_segment(position, count, mark);
            let scan = scan_segment_with(data, Lsn(1), rule);
            assert!(scan.valid_len <= data.len() as u64);
            check_records(data, &scan);
            if count == 2 {
                assert!(!matches!(scan.end, SegmentEnd::Torn { .. }));
            }
        }
    }
}

/// Property 2.
fn check_record(data: &[u8]) {
    if let Ok((record, used)) = Record::decode(data) {
        assert!(
            used <= data.len(),
            "decode used {used} of {} bytes",
            data.len()
        );
        let encoded = record.encode();
        assert_eq!(
            encoded[..],
            data[..used],
            "re-encoding {record:?} does not give back the decoded bytes"
        );
    }
}

/// Property 3.
fn check_segment_with_header(data: &[u8]) {
    let mut input = encode_header(Lsn(1)).to_vec();
    input.extend_from_slice(data);
    let scan = scan_segment(&input);
    assert_eq!(
        scan.first_lsn,
        Some(Lsn(1)),
        "a valid header was rejected: {:?}",
        scan.end
    );
    assert!(scan.valid_len <= input.len() as u64);
    assert!(scan.valid_len >= SEGMENT_HEADER_BYTES as u64);
    check_records(&input, &scan);
    if scan.valid_len == input.len() as u64 {
        assert_eq!(scan.end, SegmentEnd::Clean);
    } else {
        match &scan.end {
            SegmentEnd::Torn { offset, .. } | SegmentEnd::Corrupt { offset, .. } => {
                assert_eq!(*offset, scan.valid_len)
            }
            SegmentEnd::Clean => panic!("clean end at {} of {} bytes", scan.valid_len, input.len()),
        }
    }
}

/// Every record the scan returned re-encodes to the bytes at its offset, and
/// the records lie back to back up to `valid_len`.
fn check_records(input: &[u8], scan: &ckpt_storage::wal::segment::SegmentScan) {
    let mut expected_offset = SEGMENT_HEADER_BYTES as u64;
    for (offset, record) in &scan.records {
        assert_eq!(*offset, expected_offset, "records are not contiguous");
        let encoded = record.encode();
        let start = *offset as usize;
        let end = start + encoded.len();
        assert!(
            end <= input.len(),
            "record at {start} re-encodes past the end of the input"
        );
        assert_eq!(
            encoded[..],
            input[start..end],
            "record at {start} re-encodes to different bytes: {record:?}"
        );
        expected_offset = end as u64;
    }
    if !scan.records.is_empty() {
        assert_eq!(
            scan.valid_len, expected_offset,
            "valid_len is not the end of the last record"
        );
    }
}

/// Walks `bytes` as back-to-back records from `offset`, overwriting each
/// record's crc32 with the correct one for its body, as far as the length
/// fields describe records that fit.
fn fix_record_crcs(bytes: &mut [u8], mut offset: usize) {
    while bytes.len() - offset >= 8 {
        let length = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
        let Some(end) = (offset + 8)
            .checked_add(length)
            .filter(|&end| end <= bytes.len())
        else {
            return;
        };
        let crc = crc32fast_ieee(&bytes[offset + 8..end]);
        bytes[offset + 4..offset + 8].copy_from_slice(&crc.to_le_bytes());
        offset = end;
    }
}

/// crc32 (IEEE), as `crc32fast::hash` computes it; bitwise to avoid adding
/// a dependency that must track the storage crate's.
fn crc32fast_ieee(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & 0u32.wrapping_sub(crc & 1));
        }
    }
    !crc
}
