//! The durable mark: where the log's durable end was, so recovery can tell
//! a torn tail (bytes never made durable, which a power cut may leave as a
//! prefix, zeros, garbage or out-of-order pages) from corruption of records
//! that were durable and acknowledged.
//!
//! The file `durable.mark` in the WAL directory holds slots, each in its
//! own 512-byte sector so that tearing one write damages one slot:
//!
//! ```text
//! slot offset   0, 512: baseline — written and fsynced at the end of
//!                       recovery, alternately, so one always survives intact
//! slot offset 1024 + 512 i, i < 64: rolling — rewritten (not fsynced)
//!                       after every fsync of the log with the highest lsn
//!                       that fsync covered. The file is synced now and then;
//!                       each sync moves the writes on to the next slot, so
//!                       no slot a sync made durable is rewritten, and the
//!                       slot being written lies after every synced one
//!                       (unsynced bytes cannot take a synced slot with them).
//!                       After the last slot a fresh baseline is synced and
//!                       the writes start again at slot 0.
//!
//! each slot:
//! offset size field
//!      0    8 magic   b"CKPTDUR\0"
//!      8    8 lsn     every record up to it was durable when written
//!     16    4 crc32   of bytes 0..16
//!     20    4 reserved zero
//! ```
//!
//! Every valid slot states something that was true when it was written, and
//! lsns up to a durable mark are never reused, so the mark is the highest
//! valid slot. The rolling slots are not synced with every batch (that
//! would double the fsyncs); after a power cut the one being written may be
//! older than the true durable end or unreadable, while the ones before it
//! hold what the last sync made durable, so the mark is a *lower* bound: damage at or below it is
//! certainly corruption; damage above it is treated as torn. The residual
//! risk — bit rot in records acknowledged after the last mark that reached
//! the disk — is the price; docs/storage.md says so.

use std::io;

use super::record::Lsn;
use crate::io::{WalFile, WalFs};

/// File name of the durable mark in the WAL directory.
pub const MARK_FILE: &str = "durable.mark";
/// First bytes of every slot.
pub const MARK_MAGIC: [u8; 8] = *b"CKPTDUR\0";
/// Bytes of one slot.
pub const MARK_SLOT_BYTES: usize = 24;
/// Offsets of the two baseline slots and the rolling slot.
pub const BASELINE_SLOTS: [u64; 2] = [0, 512];
/// Bytes of a mark file with its baseline slots only: rolling slots follow.
pub const BASELINE_BYTES: u64 = 1024;
/// Rolling slots, one sector each after the baselines.
pub const ROLLING_SLOTS_MAX: u64 = 64;
const SECTOR_BYTES: u64 = 512;

/// Offset of rolling slot `index` (taken modulo [`ROLLING_SLOTS_MAX`]).
pub fn rolling_slot(index: u64) -> u64 {
    BASELINE_BYTES + SECTOR_BYTES * (index % ROLLING_SLOTS_MAX)
}

/// One encoded slot stating that records up to `lsn` were durable.
pub fn encode_slot(lsn: Lsn) -> [u8; MARK_SLOT_BYTES] {
    let mut slot = [0u8; MARK_SLOT_BYTES];
    slot[0..8].copy_from_slice(&MARK_MAGIC);
    slot[8..16].copy_from_slice(&lsn.0.to_le_bytes());
    let crc = crc32fast::hash(&slot[0..16]);
    slot[16..20].copy_from_slice(&crc.to_le_bytes());
    slot
}

fn decode_slot(bytes: &[u8], offset: u64) -> Option<Lsn> {
    let start = usize::try_from(offset).ok()?;
    let slot = bytes.get(start..start.checked_add(MARK_SLOT_BYTES)?)?;
    if slot[0..8] != MARK_MAGIC {
        return None;
    }
    let stored = u32::from_le_bytes([slot[16], slot[17], slot[18], slot[19]]);
    if stored != crc32fast::hash(&slot[0..16]) {
        return None;
    }
    let mut lsn = [0u8; 8];
    lsn.copy_from_slice(&slot[8..16]);
    Some(Lsn(u64::from_le_bytes(lsn)))
}

/// The mark a file's bytes state: the highest valid slot, or `None` when no
/// slot is readable.
pub fn decode(bytes: &[u8]) -> Option<Lsn> {
    BASELINE_SLOTS
        .iter()
        .copied()
        .chain((0..ROLLING_SLOTS_MAX).map(rolling_slot))
        .filter_map(|offset| decode_slot(bytes, offset))
        .max()
}

/// The baseline slot to overwrite next: an unreadable one, else the lower
/// one, so the other (the higher, valid one) survives a torn write.
fn next_baseline(bytes: &[u8]) -> u64 {
    let [a, b] = BASELINE_SLOTS;
    match (decode_slot(bytes, a), decode_slot(bytes, b)) {
        (None, _) => a,
        (_, None) => b,
        (Some(x), Some(y)) if x <= y => a,
        _ => b,
    }
}

/// Reads the mark from `fs`; `None` if the file is missing or unreadable.
///
/// # Errors
/// IO errors other than the file being missing.
pub fn read(fs: &dyn WalFs) -> io::Result<Option<Lsn>> {
    match fs.read(MARK_FILE) {
        Ok(bytes) => Ok(decode(&bytes)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// Replaces the mark file of the log directory `wal_dir` by a fresh one
/// stating `lsn` in its first baseline slot, durably: written to a
/// temporary file, synced, renamed over the old one, the directory synced.
/// For `ckpt-tool salvage`, after it dropped records the old mark may claim
/// (no process may be using the log).
///
/// # Errors
/// IO errors, naming the file.
pub fn replace_file(wal_dir: &std::path::Path, lsn: Lsn) -> io::Result<()> {
    use std::io::Write;
    let path = wal_dir.join(MARK_FILE);
    let temporary = wal_dir.join(format!("{MARK_FILE}.salvage"));
    let named = |what: &str, path: &std::path::Path, e: io::Error| {
        io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
    };
    let mut bytes = vec![0u8; BASELINE_BYTES as usize];
    bytes[..MARK_SLOT_BYTES].copy_from_slice(&encode_slot(lsn));
    let mut file =
        std::fs::File::create(&temporary).map_err(|e| named("creating", &temporary, e))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| named("writing", &temporary, e))?;
    drop(file);
    std::fs::rename(&temporary, &path).map_err(|e| named("renaming to", &path, e))?;
    std::fs::File::open(wal_dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| named("syncing", wal_dir, e))
}

/// Durably records that every record up to `lsn` is durable (in a baseline
/// slot, fsynced, and the file's directory entry synced), and returns the
/// file open for [`write_rolling`] and the baseline slot to write next.
///
/// # Errors
/// IO errors writing or syncing.
pub fn write_baseline(fs: &dyn WalFs, lsn: Lsn) -> io::Result<(Box<dyn WalFile>, u64)> {
    let existing = match fs.read(MARK_FILE) {
        Ok(bytes) => Some(bytes),
        Err(error) if error.kind() == io::ErrorKind::NotFound => None,
        Err(error) => return Err(error),
    };
    let mut file = fs.open(MARK_FILE)?;
    let slot = existing.as_deref().map_or(BASELINE_SLOTS[0], next_baseline);
    file.write_at(slot, &encode_slot(lsn))?;
    file.sync_data()?;
    if existing.is_none() {
        fs.sync_dir()?;
    }
    Ok((file, other_baseline(slot)))
}

/// Records, without syncing, that every record up to `lsn` is durable, in
/// rolling slot `index`. The caller moves on to the next slot after each
/// sync of the file, so a slot that a sync made durable is never rewritten.
///
/// # Errors
/// IO errors writing.
pub fn write_rolling(file: &mut dyn WalFile, index: u64, lsn: Lsn) -> io::Result<()> {
    file.write_at(rolling_slot(index), &encode_slot(lsn))
}

/// Durably records `lsn` in the baseline slot at `offset` (one of
/// [`BASELINE_SLOTS`]; the caller alternates them), before the rolling
/// slots start again from the first.
///
/// # Errors
/// IO errors writing or syncing.
pub fn rewrite_baseline(file: &mut dyn WalFile, offset: u64, lsn: Lsn) -> io::Result<()> {
    file.write_at(offset, &encode_slot(lsn))?;
    file.sync_data()
}

/// The baseline slot after `offset`.
pub fn other_baseline(offset: u64) -> u64 {
    if offset == BASELINE_SLOTS[0] {
        BASELINE_SLOTS[1]
    } else {
        BASELINE_SLOTS[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::FaultFs;

    #[test]
    fn the_mark_is_the_highest_valid_slot() {
        let fs = FaultFs::new();
        assert_eq!(read(&fs).unwrap(), None);
        let (mut file, _) = write_baseline(&fs, Lsn(5)).unwrap();
        assert_eq!(read(&fs).unwrap(), Some(Lsn(5)));
        write_rolling(file.as_mut(), 0, Lsn(9)).unwrap();
        assert_eq!(read(&fs).unwrap(), Some(Lsn(9)));
        write_rolling(file.as_mut(), 1, Lsn(12)).unwrap();
        assert_eq!(read(&fs).unwrap(), Some(Lsn(12)));
        // A damaged rolling slot falls back to the other one, then to the
        // baseline.
        let mut bytes = fs.get(MARK_FILE).unwrap();
        bytes[rolling_slot(1) as usize + 9] ^= 1;
        fs.put(MARK_FILE, bytes.clone());
        assert_eq!(read(&fs).unwrap(), Some(Lsn(9)));
        bytes[rolling_slot(0) as usize + 9] ^= 1;
        fs.put(MARK_FILE, bytes);
        assert_eq!(read(&fs).unwrap(), Some(Lsn(5)));
    }

    #[test]
    fn a_baseline_write_never_overwrites_the_only_valid_baseline() {
        let fs = FaultFs::new();
        drop(write_baseline(&fs, Lsn(3)).unwrap());
        drop(write_baseline(&fs, Lsn(7)).unwrap());
        let bytes = fs.get(MARK_FILE).unwrap();
        assert_eq!(decode_slot(&bytes, BASELINE_SLOTS[0]), Some(Lsn(3)));
        assert_eq!(decode_slot(&bytes, BASELINE_SLOTS[1]), Some(Lsn(7)));
        // The next one replaces the lower (older) slot.
        drop(write_baseline(&fs, Lsn(8)).unwrap());
        let bytes = fs.get(MARK_FILE).unwrap();
        assert_eq!(decode_slot(&bytes, BASELINE_SLOTS[0]), Some(Lsn(8)));
        assert_eq!(decode_slot(&bytes, BASELINE_SLOTS[1]), Some(Lsn(7)));
    }
}
