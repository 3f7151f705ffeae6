//! The read-only store (`ckpt_storage::inspect`): it shows exactly what
//! recovery will produce — after a crash that left RocksDB behind the log,
//! with range deletions, shrinking overwrites and destroyed checkpoints
//! replayed over it — refuses exactly what recovery refuses, and changes
//! no byte of the data directory, in both RocksDB WAL modes.

mod common;

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::Path;

use ckpt_proto::{ReadElement, SectionId};
use ckpt_storage::inspect::{verify, ReadOnlyStore, WalReader};
use ckpt_storage::{Op, RocksWalMode, Store};
use common::*;

/// name -> (seq, section id -> (expiration, data)) of a read-only store.
type View = BTreeMap<Vec<u8>, (u64, BTreeMap<Vec<u8>, (i64, Vec<u8>)>)>;

fn view_read_only(store: &ReadOnlyStore) -> View {
    let snapshot = store.snapshot();
    let mut out = BTreeMap::new();
    for (instance, meta) in snapshot.instances().unwrap() {
        if meta.unlinked {
            continue;
        }
        let mut sections = BTreeMap::new();
        for d in snapshot.sections(instance).unwrap() {
            let data = snapshot
                .read(instance, &d.section_id, 0, d.section_size)
                .unwrap();
            sections.insert(d.section_id.as_bytes().to_vec(), (d.expiration_time, data));
        }
        out.insert(meta.name.as_bytes().to_vec(), (meta.seq.0, sections));
    }
    out
}

fn view_store(store: &Store) -> View {
    let mut out = BTreeMap::new();
    for (instance, meta) in store.instances().unwrap() {
        if meta.unlinked {
            continue;
        }
        let mut sections = BTreeMap::new();
        for d in store.sections(instance).unwrap() {
            let element = ReadElement {
                section_id: d.section_id.clone(),
                offset: 0,
                size: None,
            };
            let data = store.read(instance, &[element]).unwrap().remove(0);
            sections.insert(d.section_id.as_bytes().to_vec(), (d.expiration_time, data));
        }
        out.insert(meta.name.as_bytes().to_vec(), (meta.seq.0, sections));
    }
    out
}

/// Every file under `dir` with its size and a hash of its bytes.
fn files(dir: &Path) -> BTreeMap<String, (u64, u64)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u64, u64)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut hasher);
            let name = path.strip_prefix(root).unwrap().display().to_string();
            out.insert(name, (bytes.len() as u64, hasher.finish()));
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ seed | 1)
        .collect::<Vec<u8>>()
}

/// Phase 1 is made durable in RocksDB by a clean close; phase 2 lives only
/// in the log when the store is dropped (a crash: RocksDB loses it).
fn build(dir: &Path, mode: RocksWalMode) {
    let store = Store::open(config(dir, mode)).unwrap();
    let big = create(&store, "big", attrs(4, 4 << 20, 16 << 20));
    section(&store, big, "huge", &data(3 << 20, 1));
    section(&store, big, "mid", &data(200_000, 2));
    section(&store, big, "gone", &data(70_000, 3));
    let small = create(&store, "small", attrs(2, 4096, 8192));
    section(&store, small, "a", b"alpha");
    let doomed = create(&store, "doomed", attrs(2, 1 << 20, 2 << 20));
    section(&store, doomed, "d", &data(300_000, 4));
    store.close().unwrap();

    let store = Store::open(config(dir, mode)).unwrap();
    let big = store.lookup(&name("big")).unwrap();
    let small = store.lookup(&name("small")).unwrap();
    let doomed = store.lookup(&name("doomed")).unwrap();
    // A shrinking overwrite of a section of 48 chunks: one range deletion.
    run(
        &store,
        Op::Overwrite {
            instance: big,
            section_id: SectionId::new("huge"),
            data: data(100_000, 5),
        },
    )
    .unwrap();
    // Writes into a chunk RocksDB holds, and across chunks.
    run(&store, write(big, "mid", 65_000, &data(70_000, 6))).unwrap();
    run(&store, write(big, "huge", 99_000, &data(5_000, 7))).unwrap();
    run(
        &store,
        Op::DeleteSection {
            instance: big,
            section_id: SectionId::new("gone"),
        },
    )
    .unwrap();
    section(&store, big, "gone", b"back");
    run(&store, write(small, "a", 2, b"PH")).unwrap();
    run(
        &store,
        Op::Unlink {
            name: name("doomed"),
        },
    )
    .unwrap();
    run(&store, Op::Destroy { instance: doomed }).unwrap();
    let later = create(&store, "later", attrs(2, 1 << 20, 2 << 20));
    section(&store, later, "x", &data(150_000, 8));
    drop(store);
}

fn read_only_matches_recovery(mode: RocksWalMode) {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), mode);
    let before = files(dir.path());

    let read_only = ReadOnlyStore::open(dir.path()).unwrap();
    if mode == RocksWalMode::Disabled {
        // RocksDB lost its memtables; with its WAL on it replays that.
        assert!(
            read_only.recovery_report().replayed > 0,
            "the crash left records to replay"
        );
    }
    assert!(!read_only.live());
    let seen = view_read_only(&read_only);
    let (bytes, segments) = read_only.wal_footprint();
    assert!(bytes > 0 && segments > 0);
    read_only.close().unwrap();
    let report = verify(dir.path(), &mut ()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let wal = WalReader::open(&dir.path().join("wal")).unwrap();
    assert!(!wal.segments().is_empty());
    assert_eq!(
        before,
        files(dir.path()),
        "the read-only open changed the directory"
    );

    let store = Store::open(config(dir.path(), mode)).unwrap();
    let recovered = view_store(&store);
    assert_eq!(seen.len(), 3, "{:?}", seen.keys());
    assert_eq!(seen, recovered);
    let big = &seen[&b"big"[..]].1;
    assert_eq!(big[&b"huge"[..]].1.len(), 104_000);
    assert_eq!(big[&b"gone"[..]].1, b"back");
}

#[test]
fn the_read_only_store_shows_what_recovery_will_and_changes_nothing_rocksdb_wal_disabled() {
    read_only_matches_recovery(RocksWalMode::Disabled);
}

#[test]
fn the_read_only_store_shows_what_recovery_will_and_changes_nothing_rocksdb_wal_unsynced() {
    read_only_matches_recovery(RocksWalMode::Unsynced);
}

/// Damage in the log: the read-only open refuses with recovery's own
/// message, and `verify` has a problem where recovery points.
#[test]
fn the_read_only_store_refuses_what_recovery_refuses() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), RocksWalMode::Disabled);
    let wal = WalReader::open(&dir.path().join("wal")).unwrap();
    let (index, bytes) = wal
        .segments()
        .iter()
        .enumerate()
        .map(|(i, _)| (i, wal.read(i).unwrap()))
        .max_by_key(|(_, b)| b.len())
        .unwrap();
    let scan = wal.judge(index, &bytes);
    let victim = scan.records[scan.records.len() / 2].0 as usize + 20;
    let mut damaged = bytes.clone();
    damaged[victim] ^= 0x10;
    std::fs::write(&wal.segments()[index].path, &damaged).unwrap();
    let copy = tempfile::tempdir().unwrap();
    copy_tree(dir.path(), copy.path());

    let before = files(dir.path());
    let read_only = ReadOnlyStore::open(dir.path()).err().expect("refused");
    let report = verify(dir.path(), &mut ()).unwrap();
    assert_eq!(before, files(dir.path()));
    let recovery = Store::open(config(copy.path(), RocksWalMode::Disabled))
        .err()
        .expect("recovery refuses");
    assert_eq!(read_only.detail, recovery.detail);
    let at = recovery.detail.split("at offset ").nth(1).unwrap();
    let at = at.split(':').next().unwrap();
    let location = format!("wal/{} offset {at}", wal.segments()[index].name);
    assert!(
        report.problems.iter().any(|p| p.location == location),
        "{location}: {:?}",
        report.problems
    );
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_tree(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}
