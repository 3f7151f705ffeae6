//! Recovery: cutting the log at every byte, corruption before the tail,
//! RocksDB ahead of the log, a bounded log, recycled column families.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;

use ckpt_proto::{
    CreationAttributes, ErrorCode, SectionCreationAttributes, SectionId, WriteElement, TIME_END,
};
use ckpt_storage::wal::segment::scan_segment;
use ckpt_storage::{FaultFs, Op, RocksWalMode, Store, WalFs};
use common::*;

/// Ops that each log exactly one record, ending with small ones so the
/// every-byte cut below stays quick.
fn scripted_ops(store: &Store) -> Vec<Op> {
    let c = create(store, "cut", attrs(4, 4096, 16384));
    let mk = |id: &str, data: &[u8], expiration_time| Op::CreateSection {
        instance: c,
        attributes: SectionCreationAttributes {
            section_id: Some(SectionId::new(id)),
            expiration_time,
        },
        data: data.to_vec(),
    };
    vec![
        mk("a", b"alpha", TIME_END),
        mk("b", &[b'b'; 300], common::NOW + 1_000_000),
        Op::Write {
            instance: c,
            elements: vec![
                WriteElement {
                    section_id: SectionId::new("a"),
                    offset: 8,
                    data: b"zz".to_vec(),
                },
                WriteElement {
                    section_id: SectionId::new("b"),
                    offset: 0,
                    data: b"BB".to_vec(),
                },
            ],
        },
        Op::Overwrite {
            instance: c,
            section_id: SectionId::new("b"),
            data: b"over".to_vec(),
        },
        Op::SetExpiration {
            instance: c,
            section_id: SectionId::new("b"),
            expiration_time: common::NOW + 5,
        },
        Op::SetRetention {
            instance: c,
            retention_duration_ns: 77,
        },
        mk("c", b"", TIME_END),
        Op::DeleteSection {
            instance: c,
            section_id: SectionId::new("a"),
        },
        write(c, "c", 2, b"q"),
    ]
}

/// The WAL segments in `fs` (not the durable mark), in log order.
fn segment_names(fs: &FaultFs) -> Vec<String> {
    let mut names: Vec<String> = fs
        .list()
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with(".log"))
        .collect();
    names.sort();
    names
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn cutting_the_log_at_every_byte_recovers_exactly_a_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    // RocksDB's own WAL is off and nothing is flushed, so dropping the store
    // loses every memtable: recovery must rebuild everything from our log.
    let store = open(dir.path(), &fs, RocksWalMode::Disabled);
    let ops = scripted_ops(&store);
    let mut digests = vec![digest(&store)];
    for op in ops {
        run(&store, op).expect("scripted op");
        digests.push(digest(&store));
    }
    drop(store);
    let names = segment_names(&fs);
    assert_eq!(names.len(), 1, "one segment: {names:?}");
    let bytes = fs.get(&names[0]).unwrap();
    let scan = scan_segment(&bytes);
    // digests[0] is after the create record; record i+1 ends at ends[i+1].
    let ends: Vec<u64> = scan
        .records
        .iter()
        .map(|(offset, record)| offset + record.encode().len() as u64)
        .collect();
    assert_eq!(ends.len(), digests.len());
    let cut_from = scan.records[ends.len() - 5].0 as usize;
    let mut cuts = 0;
    for cut in cut_from..=bytes.len() {
        let case = tempfile::tempdir().unwrap();
        copy_dir(&dir.path().join("db"), &case.path().join("db"));
        // No durable mark: each cut is what a power cut leaves when no
        // fsync has yet covered the bytes cut off.
        let case_fs = FaultFs::new();
        case_fs.put(&names[0], bytes[..cut].to_vec());
        let store = open(case.path(), &case_fs, RocksWalMode::Disabled);
        let report = store.recovery_report().clone();
        assert_eq!(
            report.applied_at_open, 0,
            "RocksDB must hold nothing durable in this test"
        );
        let complete = ends.iter().filter(|&&end| end <= cut as u64).count();
        assert_eq!(
            digest(&store),
            digests[complete - 1],
            "cut at byte {cut}: recovered state is not the prefix of {complete} records"
        );
        assert_eq!(report.replayed as usize, complete);
        assert_eq!(
            report.torn_tail.is_some(),
            !ends.contains(&(cut as u64)),
            "cut at byte {cut}"
        );
        // The torn tail was cut off durably: a record written now follows
        // the prefix and survives the next power cut with it.
        if cut % 7 == 0 {
            let c = store.lookup(&name("cut")).unwrap();
            run(
                &store,
                Op::SetRetention {
                    instance: c,
                    retention_duration_ns: 1,
                },
            )
            .unwrap();
            let expected = digest(&store);
            drop(store);
            case_fs.power_loss();
            let store = open(case.path(), &case_fs, RocksWalMode::Disabled);
            assert_eq!(
                digest(&store),
                expected,
                "cut at byte {cut}: the write after recovery"
            );
            assert_eq!(store.status(c).unwrap().attributes.retention_duration_ns, 1);
        }
        cuts += 1;
    }
    assert!(cuts > 100, "only {cuts} cuts");
}

#[test]
fn corruption_before_the_tail_names_segment_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let store = open(dir.path(), &fs, RocksWalMode::Disabled);
    for op in scripted_ops(&store) {
        run(&store, op).unwrap();
    }
    drop(store);
    let name = segment_names(&fs).remove(0);
    let mut bytes = fs.get(&name).unwrap();
    let victim = scan_segment(&bytes).records[3].0;
    bytes[victim as usize + 20] ^= 0x10;
    fs.put(&name, bytes);
    let error = Store::open_with_fs(
        config(dir.path(), RocksWalMode::Disabled),
        std::sync::Arc::new(fs.clone()),
    )
    .err()
    .expect("corruption must fail the open");
    assert_eq!(error.code, ErrorCode::Library);
    assert!(error.detail.contains(&name), "{}", error.detail);
    assert!(
        error.detail.contains(&format!("offset {victim}")),
        "{}",
        error.detail
    );
    assert!(
        fs.get(&name).unwrap().len() as u64 > victim,
        "nothing was cut away"
    );
}

#[test]
fn rocksdb_ahead_of_the_log_continues_after_its_position() {
    // RocksDB's WAL on: after a crash RocksDB keeps what it was given even
    // though our log lost its unsynced tail; the log continues after it.
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let store = open(dir.path(), &fs, RocksWalMode::Unsynced);
    let c = create(&store, "ahead", attrs(2, 100, 200));
    section(&store, c, "a", b"one");
    // The next batch is written and applied, then the fsync fails.
    fs.fail_next_sync();
    assert!(run(&store, write(c, "a", 0, b"two")).is_err());
    // The poisoned store refuses reads (the batch was never acknowledged);
    // what RocksDB kept shows after the restart.
    drop(store);
    fs.power_loss();
    let store = open(dir.path(), &fs, RocksWalMode::Unsynced);
    assert_eq!(
        read_all(&store, c, "a"),
        b"two",
        "RocksDB's state is a whole prefix, the failed write included"
    );
    digest(&store);
    run(&store, write(c, "a", 0, b"three")).unwrap();
    drop(store);
    fs.power_loss();
    let store = open(dir.path(), &fs, RocksWalMode::Unsynced);
    assert_eq!(read_all(&store, c, "a"), b"three");
}

#[test]
fn the_log_stays_bounded_under_steady_writes() {
    for mode in [RocksWalMode::Unsynced, RocksWalMode::Disabled] {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let mut config = config(dir.path(), mode);
        config.segment_bytes_max = 8 * 1024;
        config.wal_segments_max = 6;
        let store = Store::open_with_fs(config.clone(), std::sync::Arc::new(fs.clone())).unwrap();
        let c = create(&store, "steady", attrs(4, 1024, 4096));
        section(&store, c, "a", b"");
        let mut max_segments = 0;
        for i in 0..3000u32 {
            run(&store, write(c, "a", 0, &[i as u8; 200])).unwrap();
            max_segments = max_segments.max(store.wal_segments());
        }
        // ~750 KiB were logged into 8 KiB segments: without deletion there
        // would be ~90 files; with it, never more than wal_segments_max.
        let deleted = store.stats().segments_deleted.load(Ordering::Relaxed);
        assert!(deleted > 50, "{mode:?}: only {deleted} segments deleted");
        assert!(
            max_segments <= 6,
            "{mode:?}: the log grew to {max_segments} segments"
        );
        assert!(segment_names(&fs).len() <= 6);
        drop(store);
        fs.power_loss();
        let store = Store::open_with_fs(config, std::sync::Arc::new(fs.clone())).unwrap();
        assert_eq!(
            read_all(&store, c, "a"),
            vec![2999u32 as u8; 200],
            "{mode:?}"
        );
    }
}

#[test]
fn a_deleted_checkpoint_leaves_no_data_behind() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let store = open(dir.path(), &fs, RocksWalMode::Disabled);
    let first = create(&store, "one", attrs(3, 300_000, 900_000));
    section(&store, first, "a", &vec![7u8; 200_000]);
    section(&store, first, "b", b"small");
    let neighbour = create(&store, "neighbour", attrs(3, 100, 300));
    section(&store, neighbour, "a", b"kept");
    assert_eq!(
        store.data_keys(first).unwrap(),
        5,
        "four 64 KiB chunks of a, one of b"
    );
    run(&store, Op::Unlink { name: name("one") }).unwrap();
    run(&store, Op::Destroy { instance: first }).unwrap();
    assert_eq!(
        store.data_keys(first).unwrap(),
        0,
        "the destroy range-deleted every chunk"
    );
    assert_eq!(store.instance(first).unwrap_err().code, ErrorCode::NotExist);
    // A new checkpoint of the same name is a new, empty instance.
    let second = create(&store, "one", attrs(3, 300_000, 900_000));
    assert_ne!(second, first);
    assert!(store.sections(second).unwrap().is_empty());
    // After a crash the destroy is replayed: still nothing of the old one.
    drop(store);
    fs.power_loss();
    let store = open(dir.path(), &fs, RocksWalMode::Disabled);
    assert!(store.recovery_report().replayed > 0);
    assert_eq!(store.data_keys(first).unwrap(), 0);
    assert_eq!(read_all(&store, neighbour, "a"), b"kept");
    assert_eq!(store.lookup(&name("one")).unwrap(), second);
}

/// Twenty single-record writes into one segment; returns the data dir, the
/// file system, the state after all of them, and the record offsets.
fn twenty_records() -> (tempfile::TempDir, FaultFs, Digest, Vec<u64>) {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let store = open(dir.path(), &fs, RocksWalMode::Disabled);
    let c = create(&store, "flip", attrs(4, 4096, 16384));
    section(&store, c, "a", b"");
    for i in 0..18u8 {
        run(&store, write(c, "a", u64::from(i) * 8, &[i; 300])).unwrap();
    }
    let full = digest(&store);
    drop(store);
    let names: Vec<String> = fs
        .list()
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with(".log"))
        .collect();
    assert_eq!(names.len(), 1, "one segment: {names:?}");
    let scan = scan_segment(&fs.get(&names[0]).unwrap());
    assert_eq!(scan.records.len(), 20);
    let offsets = scan.records.iter().map(|(offset, _)| *offset).collect();
    (dir, fs, full, offsets)
}

/// Copies every WAL file of `fs` into a new file system (durably).
fn clone_fs(fs: &FaultFs) -> FaultFs {
    let copy = FaultFs::new();
    for name in fs.list().unwrap() {
        copy.put(&name, fs.get(&name).unwrap());
    }
    copy
}

#[test]
fn a_flipped_bit_in_a_record_header_never_drops_what_follows() {
    use ckpt_storage::wal::mark::{self, MARK_FILE};
    use ckpt_storage::wal::segment::{scan_segment_with, SegmentEnd, TailRule};
    let (_dir, fs, full, offsets) = twenty_records();
    let segment = segment_names(&fs).remove(0);
    let bytes = fs.get(&segment).unwrap();
    let durable_mark = mark::decode(&fs.get(MARK_FILE).unwrap());
    assert_eq!(durable_mark, Some(ckpt_storage::Lsn(20)));
    let rule = TailRule::for_segment(0, 1, durable_mark);
    let mut opened_cases = 0;
    // A refused open changes nothing in RocksDB, so one directory serves
    // until an open succeeds.
    let mut case = tempfile::tempdir().unwrap();
    // Record 10 has ten acknowledged records after it; record 19 is the last.
    for victim in [10usize, 19] {
        let at = offsets[victim] as usize;
        // length, crc, kind, lsn, instance, epoch, seq, timestamp
        for byte in at..at + 49 {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[byte] ^= 1 << bit;
                let what = format!("record {victim} byte {} bit {bit}", byte - at);
                // Every flip, judged by the code recovery runs.
                let scan = scan_segment_with(&damaged, ckpt_storage::Lsn(1), rule);
                match &scan.end {
                    SegmentEnd::Corrupt { offset, .. } => {
                        assert_eq!(*offset as usize, at, "{what}")
                    }
                    other => panic!("{what}: judged {other:?}, acknowledged records would go"),
                }
                // Every bit of the length and of the crc, and one bit of
                // every other header byte, through a whole recovery.
                if byte >= at + 8 && bit != byte % 8 {
                    continue;
                }
                let case_fs = clone_fs(&fs);
                case_fs.put(&segment, damaged);
                let opened = Store::open_with_fs(
                    config(case.path(), RocksWalMode::Disabled),
                    std::sync::Arc::new(case_fs.clone()),
                );
                match opened {
                    Ok(store) => {
                        assert_eq!(
                            digest(&store),
                            full,
                            "{what}: recovery started but dropped acknowledged records (replayed {})",
                            store.recovery_report().replayed
                        );
                        drop(store);
                        case = tempfile::tempdir().unwrap();
                    }
                    Err(error) => {
                        assert_eq!(error.code, ErrorCode::Library, "{what}");
                        assert!(
                            error.detail.contains(&segment)
                                && error.detail.contains(&format!("offset {at}")),
                            "{what}: {}",
                            error.detail
                        );
                    }
                }
                opened_cases += 1;
            }
        }
    }
    assert_eq!(opened_cases, 2 * (64 + 41));
}

/// A durable mark file stating that records up to `lsn` were durable.
fn mark_file(lsn: u64) -> Vec<u8> {
    use ckpt_storage::wal::mark::{encode_slot, BASELINE_BYTES};
    let mut bytes = vec![0u8; BASELINE_BYTES as usize];
    bytes[..24].copy_from_slice(&encode_slot(ckpt_storage::Lsn(lsn)));
    bytes
}

/// Section "a" after the first `writes` writes of [`twenty_records`].
fn twenty_records_data(writes: usize) -> Vec<u8> {
    let mut data = Vec::new();
    for i in 0..writes {
        let at = i * 8;
        if data.len() < at + 300 {
            data.resize(at + 300, 0);
        }
        data[at..at + 300].fill(i as u8);
    }
    data
}

#[test]
fn zeros_to_a_page_boundary_then_unacknowledged_records_are_a_torn_tail() {
    use ckpt_storage::wal::mark::MARK_FILE;
    let (_dir, fs, _full, offsets) = twenty_records();
    let segment = fs
        .list()
        .unwrap()
        .into_iter()
        .find(|n| n.ends_with(".log"))
        .unwrap();
    let bytes = fs.get(&segment).unwrap();
    // The record that straddles the first 4 KiB page boundary: a power cut
    // left its page unwritten (zeros) but the next page written.
    let victim = offsets
        .iter()
        .rposition(|&offset| offset < 4096)
        .expect("a record starts in the first page");
    assert!(victim + 2 < offsets.len(), "whole records follow the page");
    let mut damaged = bytes.clone();
    damaged[offsets[victim] as usize..4096].fill(0);
    // Record lsn = index + 1; the fsync thread had confirmed up to the
    // record before the victim.
    for (mark, must_open) in [(victim as u64, true), (victim as u64 + 1, false)] {
        let case_fs = clone_fs(&fs);
        case_fs.put(&segment, damaged.clone());
        case_fs.put(MARK_FILE, mark_file(mark));
        let case = tempfile::tempdir().unwrap();
        let opened = Store::open_with_fs(
            config(case.path(), RocksWalMode::Disabled),
            std::sync::Arc::new(case_fs.clone()),
        );
        match (opened, must_open) {
            (Ok(store), true) => {
                let report = store.recovery_report().clone();
                assert_eq!(report.replayed as usize, victim, "records before the hole");
                assert_eq!(
                    report.torn_tail.as_ref().map(|(_, offset, _)| *offset),
                    Some(offsets[victim])
                );
                let c = store.lookup(&name("flip")).unwrap();
                assert_eq!(read_all(&store, c, "a"), twenty_records_data(victim - 2));
                // The cut is durable and the log goes on after it.
                run(&store, write(c, "a", 0, b"after")).unwrap();
                drop(store);
                case_fs.power_loss();
                let store = Store::open_with_fs(
                    config(case.path(), RocksWalMode::Disabled),
                    std::sync::Arc::new(case_fs.clone()),
                )
                .expect("reopens after the cut");
                assert_eq!(&read_all(&store, c, "a")[..5], b"after");
            }
            (Err(error), false) => {
                assert!(
                    error
                        .detail
                        .contains(&format!("offset {}", offsets[victim])),
                    "{}",
                    error.detail
                );
            }
            (Ok(_), false) => panic!("mark {mark}: a hole in durable records was accepted"),
            (Err(error), true) => panic!(
                "mark {mark}: a state a power cut can leave was refused: {}",
                error.detail
            ),
        }
    }
}

#[test]
fn the_durable_mark_on_disk_trails_the_log_by_at_most_its_sync_interval() {
    // With the interval at 0 the fsync thread syncs the mark after every
    // batch, so once an operation is answered the mark on disk covers at
    // least the batch before it (the syncer finishes one batch, mark
    // included, before it takes the next) — whatever a power cut keeps of
    // the unsynced rest.
    for seed in 0..16 {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::with_seed(seed);
        let mut config = config(dir.path(), RocksWalMode::Disabled);
        config.mark_sync_interval_ms = 0;
        let store = Store::open_with_fs(config, std::sync::Arc::new(fs.clone())).unwrap();
        let c = create(&store, "m", attrs(32, 100, 3200));
        section(&store, c, "s", b"data");
        // More syncs than the mark has rolling slots: they wrap around
        // through a fresh baseline.
        let syncs = 2 * ckpt_storage::wal::mark::ROLLING_SLOTS_MAX + 7;
        for i in 0..syncs {
            run(&store, write(c, "s", 0, &i.to_le_bytes())).unwrap();
        }
        let logged = store.stats().records.load(Ordering::Relaxed);
        fs.power_loss();
        drop(store);
        let mark = ckpt_storage::wal::mark::read(&fs)
            .unwrap()
            .expect("a mark survives");
        assert!(
            mark.0 + 1 >= logged,
            "seed {seed}: the mark on disk says {} after {logged} acknowledged records",
            mark.0
        );
    }
}

#[test]
fn the_instances_not_kept_forever_are_picked_at_open_and_handed_out_once() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let store = open(dir.path(), &fs, RocksWalMode::Disabled);
    let forever = create(&store, "forever", attrs(1, 10, 10));
    let timed = create(
        &store,
        "timed",
        CreationAttributes {
            retention_duration_ns: 5_000_000_000,
            ..attrs(1, 10, 10)
        },
    );
    let unlinked = create(&store, "unlinked", attrs(1, 10, 10));
    run(
        &store,
        Op::Unlink {
            name: name("unlinked"),
        },
    )
    .unwrap();
    // The state at open: nothing yet.
    assert_eq!(store.take_not_kept_forever().map(|l| l.len()), Some(0));
    assert!(store.take_not_kept_forever().is_none(), "handed out once");
    drop(store);
    // Recovered from the log (RocksDB's memtables were never flushed).
    fs.power_loss();
    let store = open(dir.path(), &fs, RocksWalMode::Disabled);
    let mut picked: Vec<_> = store
        .take_not_kept_forever()
        .expect("the list at open")
        .into_iter()
        .map(|(id, meta)| (id, meta.unlinked))
        .collect();
    picked.sort();
    assert_eq!(picked, vec![(timed, false), (unlinked, true)]);
    assert!(!picked.iter().any(|(id, _)| *id == forever));
    assert!(store.take_not_kept_forever().is_none());
}
