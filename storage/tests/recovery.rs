//! Recovery: cutting the log at every byte, corruption before the tail,
//! RocksDB ahead of the log, a bounded log, recycled column families.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;

use ckpt_proto::{ErrorCode, SectionCreationAttributes, SectionId, WriteElement, TIME_END};
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
    let names = fs.list().unwrap();
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
    let name = fs.list().unwrap().remove(0);
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
        assert!(fs.list().unwrap().len() <= 6);
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
