//! The store as a replication log: ordered submissions with origins,
//! entries shipped to a backup store, epochs, reading the log back,
//! snapshots and checksums.

mod common;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ckpt_proto::{CkptResult, ErrorCode, SectionCreationAttributes, SectionId, TIME_END};
use ckpt_storage::{
    decode_entries, encode_entries, Committed, Durability, EntriesAfter, Entry, Epoch, InstanceId,
    Lsn, Op, Origin, Outcome, Position, RecordBody, RocksWalMode, Seq, SnapshotPart, Store,
    StoreConfig,
};
use common::*;

fn open_at(dir: &std::path::Path, tweak: impl FnOnce(&mut StoreConfig)) -> Store {
    let mut config = config(dir, RocksWalMode::Unsynced);
    config.reserve_bytes = 0;
    tweak(&mut config);
    Store::open(config).expect("store opens")
}

fn ordered(
    store: &Store,
    op: Op,
    origin: Option<Origin>,
    durability: Durability,
) -> CkptResult<Committed> {
    let (tx, rx) = mpsc::sync_channel(1);
    store.submit_ordered(op, origin, durability, NOW, move |r| {
        let _ = tx.send(r);
    });
    rx.recv().expect("answered")
}

fn wait_position<F>(call: F) -> CkptResult<Position>
where
    F: FnOnce(Box<dyn FnOnce(CkptResult<Position>) + Send>),
{
    let (tx, rx) = mpsc::sync_channel(1);
    call(Box::new(move |r| {
        let _ = tx.send(r);
    }));
    rx.recv().expect("answered")
}

fn replicate(store: &Store, entries: Vec<Entry>) -> CkptResult<Position> {
    wait_position(|reply| store.submit_replicated(entries, reply))
}

fn create_op(text: &str, instance: Option<InstanceId>, epoch: u64) -> Op {
    Op::CreateCheckpoint {
        name: name(text),
        attributes: attrs(16, 1 << 20, 1 << 24),
        instance,
        epoch: Epoch(epoch),
    }
}

fn new_section(instance: InstanceId, id: Option<&str>, data: &[u8]) -> Op {
    Op::CreateSection {
        instance,
        attributes: SectionCreationAttributes {
            section_id: id.map(SectionId::new),
            expiration_time: TIME_END,
        },
        data: data.to_vec(),
    }
}

/// Collects every entry the store appends.
fn capture(store: &Store) -> Arc<Mutex<Vec<Entry>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    store.set_append_listener(Arc::new(move |entries: &[Entry]| {
        sink.lock().unwrap().extend(entries.iter().cloned());
    }));
    seen
}

#[test]
fn an_assigned_instance_id_and_epoch_are_used_and_the_counter_stays_above() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_at(dir.path(), |_| {});
    let c = ordered(
        &store,
        create_op("a", Some(InstanceId(100)), 3),
        None,
        Durability::Durable,
    )
    .unwrap();
    assert_eq!(
        c.outcome,
        Outcome::Opened {
            instance: InstanceId(100),
            existed: false
        }
    );
    let expected = Position {
        instance: InstanceId(100),
        epoch: Epoch(3),
        seq: Seq(1),
    };
    assert_eq!(c.position, Some(expected));
    assert_eq!(store.position(InstanceId(100)).unwrap(), Some(expected));
    // Entries planned later carry the instance's epoch.
    let c = ordered(
        &store,
        new_section(InstanceId(100), Some("s"), b"x"),
        None,
        Durability::Durable,
    )
    .unwrap();
    assert_eq!(c.position.unwrap().epoch, Epoch(3));
    assert_eq!(c.position.unwrap().seq, Seq(2));
    // The local counter continues above the assigned id.
    let local = create(&store, "b", attrs(10, 100, 1000));
    assert_eq!(local, InstanceId(101));
    // An assigned id that exists is refused.
    let error = ordered(
        &store,
        create_op("c", Some(InstanceId(100)), 1),
        None,
        Durability::Durable,
    )
    .unwrap_err();
    assert_eq!(error.code, ErrorCode::AlreadyExist);
}

#[test]
fn a_resubmitted_origin_gets_the_first_outcome_and_logs_nothing_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin {
        session: 77,
        request: 5,
    };
    let (instance, first) = {
        let store = open_at(dir.path(), |_| {});
        let instance = create(&store, "a", attrs(10, 100, 1000));
        let first = ordered(
            &store,
            new_section(instance, None, b"one"),
            Some(origin),
            Durability::Durable,
        )
        .unwrap();
        assert!(matches!(first.outcome, Outcome::SectionCreated { .. }));
        let seen = capture(&store);
        let again = ordered(
            &store,
            new_section(instance, None, b"one"),
            Some(origin),
            Durability::Written,
        )
        .unwrap();
        assert_eq!(
            again, first,
            "same outcome (same generated id), same position"
        );
        assert_eq!(store.sections(instance).unwrap().len(), 1);
        assert!(seen.lock().unwrap().is_empty(), "nothing appended");
        // Another request of the same session is applied.
        let other = ordered(
            &store,
            new_section(instance, None, b"two"),
            Some(Origin {
                session: 77,
                request: 6,
            }),
            Durability::Durable,
        )
        .unwrap();
        assert_ne!(other.outcome, first.outcome);
        // Crash (no close): recovery replays the log.
        drop(store);
        (instance, first)
    };
    let store = open_at(dir.path(), |_| {});
    let again = ordered(
        &store,
        new_section(instance, None, b"one"),
        Some(origin),
        Durability::Durable,
    )
    .unwrap();
    assert_eq!(again, first);
    assert_eq!(store.sections(instance).unwrap().len(), 2);
    store.close().unwrap();
    let store = open_at(dir.path(), |_| {});
    let again = ordered(
        &store,
        new_section(instance, None, b"one"),
        Some(origin),
        Durability::Durable,
    )
    .unwrap();
    assert_eq!(again, first);
    assert_eq!(store.sections(instance).unwrap().len(), 2);
}

#[test]
fn listeners_see_appended_entries_then_durable_positions() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_at(dir.path(), |_| {});
    let events = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = events.clone();
    store.set_append_listener(Arc::new(move |entries: &[Entry]| {
        for e in entries {
            sink.lock()
                .unwrap()
                .push(format!("append {} {}", e.instance.0, e.seq.0));
        }
    }));
    let sink = events.clone();
    store.set_durable_listener(Arc::new(move |positions: &[Position]| {
        for p in positions {
            sink.lock()
                .unwrap()
                .push(format!("durable {} {}", p.instance.0, p.seq.0));
        }
    }));
    let instance = create(&store, "a", attrs(10, 100, 1000));
    section(&store, instance, "s", b"x");
    let events = events.lock().unwrap().clone();
    let i = instance.0;
    assert_eq!(
        events,
        vec![
            format!("append {i} 1"),
            format!("durable {i} 1"),
            format!("append {i} 2"),
            format!("durable {i} 2"),
        ]
    );
}

/// A primary and a backup store; entries flow through the append listener.
fn pair() -> (tempfile::TempDir, Store, Store, Arc<Mutex<Vec<Entry>>>) {
    let dir = tempfile::tempdir().unwrap();
    let primary = open_at(&dir.path().join("p"), |_| {});
    let backup = open_at(&dir.path().join("b"), |c| c.db.data_column_families = 3);
    let shipped = capture(&primary);
    (dir, primary, backup, shipped)
}

fn take(shipped: &Arc<Mutex<Vec<Entry>>>) -> Vec<Entry> {
    std::mem::take(&mut *shipped.lock().unwrap())
}

/// The snapshot of `instance` in parts of about `part_bytes`, each through
/// the encoding it travels in.
fn snapshot_parts(store: &Store, instance: InstanceId, part_bytes: usize) -> Vec<SnapshotPart> {
    let mut parts = Vec::new();
    let whole = store
        .stream_snapshot(instance, part_bytes, NOW, |mut part| {
            part.entries = decode_entries(&encode_entries(&part.entries)).unwrap();
            parts.push(part);
            true
        })
        .unwrap();
    assert!(whole);
    for (index, part) in parts.iter().enumerate() {
        assert_eq!(part.index, index as u64);
        assert_eq!(part.done, index + 1 == parts.len());
    }
    parts
}

/// Installs the parts on `store`, one submission each; returns the position
/// the last left.
fn install(store: &Store, parts: Vec<SnapshotPart>) -> Position {
    let mut at = None;
    for part in parts {
        at = Some(replicate(store, part.entries).unwrap());
    }
    at.expect("a snapshot has parts")
}

#[test]
fn a_backup_applies_shipped_entries_to_the_same_state() {
    let (_dir, primary, backup, shipped) = pair();
    let instance = create(&primary, "a", attrs(16, 1 << 20, 1 << 24));
    section(&primary, instance, "s", b"hello");
    run(&primary, write(instance, "s", 3, b"LO world")).unwrap();
    let origin = Origin {
        session: 9,
        request: 1,
    };
    ordered(
        &primary,
        new_section(instance, None, b"gen"),
        Some(origin),
        Durability::Durable,
    )
    .unwrap();
    // Shipped as bytes.
    let entries: Vec<Entry> = take(&shipped)
        .iter()
        .map(|e| Entry::decode(&e.encode()).unwrap())
        .collect();
    let last = replicate(&backup, entries).unwrap();
    assert_eq!(Some(last), primary.position(instance).unwrap());
    assert_eq!(
        backup.checksum(instance).unwrap(),
        primary.checksum(instance).unwrap()
    );
    assert_eq!(read_all(&backup, instance, "s"), b"helLO world");
    // The backup remembers the origin: after a failover it answers it.
    let again = ordered(
        &backup,
        new_section(instance, None, b"gen"),
        Some(origin),
        Durability::Durable,
    )
    .unwrap();
    assert!(matches!(again.outcome, Outcome::SectionCreated { .. }));
    assert_eq!(again.position, Some(last));
    assert_eq!(backup.position(instance).unwrap(), Some(last));
}

#[test]
fn a_gap_an_old_epoch_or_a_second_creation_is_refused_without_poisoning() {
    let (_dir, primary, backup, shipped) = pair();
    let instance = create(&primary, "a", attrs(10, 100, 1000));
    replicate(&backup, take(&shipped)).unwrap();
    section(&primary, instance, "s", b"1");
    section(&primary, instance, "t", b"2");
    let mut entries = take(&shipped);
    let second = entries.pop().unwrap();
    // Seq 3 after seq 1: a gap.
    let error = replicate(&backup, vec![second.clone()]).unwrap_err();
    assert_eq!(error.code, ErrorCode::BadOperation);
    assert!(
        error.detail.contains(&format!("instance {}", instance.0))
            && error.detail.contains("seq 3")
            && error.detail.contains("expected seq 2"),
        "{}",
        error.detail
    );
    assert_eq!(backup.failure(), None);
    // A refused call applies nothing of itself, not even its valid prefix.
    let mut with_gap = entries.clone();
    with_gap.push(second.clone());
    with_gap.push(second.clone());
    replicate(&backup, with_gap).unwrap_err();
    assert_eq!(backup.position(instance).unwrap().unwrap().seq, Seq(1));
    replicate(&backup, entries).unwrap();
    replicate(&backup, vec![second]).unwrap();
    // A creation of an instance the backup has.
    let create_again = Entry {
        instance,
        epoch: Epoch(1),
        seq: Seq(1),
        timestamp: NOW,
        origin: None,
        body: RecordBody::CheckpointCreate {
            name: name("a"),
            attributes: attrs(10, 100, 1000),
        },
    };
    let error = replicate(&backup, vec![create_again]).unwrap_err();
    assert_eq!(error.code, ErrorCode::BadOperation);
    assert!(error.detail.contains("exists"), "{}", error.detail);
    // Epochs: after an epoch start, entries of the old epoch are refused.
    let started = wait_position(|r| primary.begin_epoch(instance, Epoch(2), r)).unwrap();
    assert_eq!((started.epoch, started.seq), (Epoch(2), Seq(4)));
    let epoch_start = take(&shipped);
    assert!(matches!(
        epoch_start[..],
        [Entry {
            body: RecordBody::EpochStart { epoch: Epoch(2) },
            ..
        }]
    ));
    replicate(&backup, epoch_start).unwrap();
    let stale_epoch = Entry {
        instance,
        epoch: Epoch(1),
        seq: Seq(5),
        timestamp: NOW,
        origin: None,
        body: RecordBody::RetentionSet {
            retention_duration_ns: 5,
        },
    };
    let error = replicate(&backup, vec![stale_epoch]).unwrap_err();
    assert!(error.detail.contains("epoch 2"), "{}", error.detail);
    // The primary stamps the new epoch on what it plans.
    section(&primary, instance, "u", b"3");
    let next = take(&shipped);
    assert_eq!((next[0].epoch, next[0].seq), (Epoch(2), Seq(5)));
    replicate(&backup, next).unwrap();
    // An epoch that does not go forward is refused.
    let error = wait_position(|r| primary.begin_epoch(instance, Epoch(2), r)).unwrap_err();
    assert_eq!(error.code, ErrorCode::BadOperation);
    assert_eq!(
        backup.checksum(instance).unwrap(),
        primary.checksum(instance).unwrap()
    );
    assert_eq!(backup.failure(), None);
    assert_eq!(primary.failure(), None);
}

#[test]
fn entries_after_reads_the_log_back_until_it_is_trimmed_unless_held() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_at(dir.path(), |c| {
        c.segment_bytes_max = 4096;
        c.wal_history_bytes = 0;
    });
    let instance = create(&store, "a", attrs(16, 1 << 20, 1 << 24));
    section(&store, instance, "s", b"");
    store.set_wal_hold(Some(Lsn(1)));
    for i in 0..40u8 {
        run(&store, write(instance, "s", 0, &[i; 500])).unwrap();
    }
    let last = store.position(instance).unwrap().unwrap();
    assert_eq!(last.seq, Seq(42));
    match store
        .entries_after(instance, Epoch(1), Seq(0), u64::MAX)
        .unwrap()
    {
        EntriesAfter::Entries(entries) => {
            let seqs: Vec<u64> = entries.iter().map(|(_, e)| e.seq.0).collect();
            assert_eq!(seqs, (1..=42).collect::<Vec<_>>());
        }
        EntriesAfter::Gone => panic!("held log is gone"),
    }
    // Bounded by bytes, but at least one entry.
    match store.entries_after(instance, Epoch(1), Seq(10), 1).unwrap() {
        EntriesAfter::Entries(entries) => assert_eq!(entries.len(), 1),
        EntriesAfter::Gone => panic!("gone"),
    }
    // Up to date: nothing.
    assert_eq!(
        store
            .entries_after(instance, last.epoch, last.seq, u64::MAX)
            .unwrap(),
        EntriesAfter::Entries(vec![])
    );
    // Ahead: refused.
    assert!(store
        .entries_after(instance, Epoch(1), Seq(99), u64::MAX)
        .is_err());
    // Released: the covered segments go at the next checkpoint of RocksDB.
    store.set_wal_hold(None);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        run(&store, write(instance, "s", 0, &[1; 500])).unwrap();
        if store
            .entries_after(instance, Epoch(1), Seq(0), u64::MAX)
            .unwrap()
            == EntriesAfter::Gone
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "log never trimmed");
    }
}

#[test]
fn a_snapshot_replaces_a_diverged_instance_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let primary = open_at(&dir.path().join("p"), |_| {});
    let shipped = capture(&primary);
    let instance = create(&primary, "a", attrs(10, 16 << 20, 64 << 20));
    section(&primary, instance, "big", &vec![7u8; 9 << 20]);
    section(&primary, instance, "small", b"s");
    run(
        &primary,
        Op::SetExpiration {
            instance,
            section_id: SectionId::new("small"),
            expiration_time: NOW + 1_000_000_000_000,
        },
    )
    .unwrap();
    let backup_dir = dir.path().join("b");
    let backup = open_at(&backup_dir, |_| {});
    let create_entry = take(&shipped);
    replicate(&backup, create_entry[..1].to_vec()).unwrap();
    // The backup wrote something of its own (a diverged suffix).
    let diverged = Entry {
        instance,
        epoch: Epoch(1),
        seq: Seq(2),
        timestamp: NOW,
        origin: None,
        body: RecordBody::SectionCreate {
            section_id: SectionId::new("wrong"),
            expiration_time: TIME_END,
            data: b"zzz".to_vec(),
            generated_next: 1,
        },
    };
    replicate(&backup, vec![diverged]).unwrap();
    wait_position(|r| backup.discard_suffix(instance, r)).unwrap();
    let error = backup.sections(instance).unwrap_err();
    assert_eq!(error.code, ErrorCode::TryAgain);
    assert!(error.detail.contains("stale"), "{}", error.detail);
    assert_eq!(
        backup.checksum(instance).unwrap_err().code,
        ErrorCode::TryAgain
    );
    // 9 MiB in parts of about 1 MiB: the big section's three entries
    // (4 MiB at most each) go one per part.
    let parts = snapshot_parts(&primary, instance, 1 << 20);
    assert_eq!(
        parts.len(),
        4,
        "{:?}",
        parts.iter().map(|p| p.entries.len()).collect::<Vec<_>>()
    );
    let at = install(&backup, parts);
    assert_eq!(Some(at), primary.position(instance).unwrap());
    let want = primary.checksum(instance).unwrap();
    assert_eq!(backup.checksum(instance).unwrap(), want);
    assert_eq!(backup.lookup(&name("a")).unwrap(), instance);
    // Entries after the snapshot's point apply on top.
    run(&primary, write(instance, "small", 0, b"S")).unwrap();
    replicate(&backup, take(&shipped)).unwrap();
    let want = primary.checksum(instance).unwrap();
    assert_eq!(backup.checksum(instance).unwrap(), want);
    drop(backup);
    let backup = open_at(&backup_dir, |_| {});
    assert_eq!(backup.checksum(instance).unwrap(), want);
    backup.close().unwrap();
    let backup = open_at(&backup_dir, |_| {});
    assert_eq!(backup.checksum(instance).unwrap(), want);
}

#[test]
fn an_install_cut_short_leaves_the_instance_stale_not_half_valid() {
    let dir = tempfile::tempdir().unwrap();
    let primary = open_at(&dir.path().join("p"), |_| {});
    let shipped = capture(&primary);
    let instance = create(&primary, "a", attrs(10, 100, 1000));
    section(&primary, instance, "s", b"x");
    section(&primary, instance, "t", b"y");
    let parts = snapshot_parts(&primary, instance, 1);
    assert_eq!(parts.len(), 3);
    assert!(matches!(
        parts[2].entries.last().unwrap().body,
        RecordBody::SnapshotEnd
    ));
    let backup_dir = dir.path().join("b");
    let backup = open_at(&backup_dir, |_| {});
    // Every part but the last (a crash, or the connection lost, before it).
    install(&backup, parts[..2].to_vec());
    drop(backup);
    let backup = open_at(&backup_dir, |_| {});
    assert_eq!(
        backup.sections(instance).unwrap_err().code,
        ErrorCode::TryAgain
    );
    let error = backup.execute(write(instance, "s", 0, b"y")).unwrap_err();
    assert_eq!(error.code, ErrorCode::TryAgain);
    // Its own entries are refused, not applied over the stale state.
    let log = take(&shipped);
    let error = replicate(&backup, log[1..].to_vec()).unwrap_err();
    assert!(error.detail.contains("stale"), "{}", error.detail);
    // Installing again completes it.
    install(&backup, parts);
    assert_eq!(
        backup.checksum(instance).unwrap(),
        primary.checksum(instance).unwrap()
    );
}

#[test]
fn a_creation_replaces_a_stale_instance() {
    // A backup whose install was cut short is caught up from the start of
    // the primary's log when the log still holds it.
    let dir = tempfile::tempdir().unwrap();
    let primary = open_at(&dir.path().join("p"), |_| {});
    let shipped = capture(&primary);
    let instance = create(&primary, "a", attrs(10, 100, 1000));
    section(&primary, instance, "s", b"x");
    let parts = snapshot_parts(&primary, instance, 1);
    let backup = open_at(&dir.path().join("b"), |_| {});
    install(&backup, parts[..1].to_vec());
    assert_eq!(
        backup.sections(instance).unwrap_err().code,
        ErrorCode::TryAgain
    );
    replicate(&backup, take(&shipped)).unwrap();
    assert_eq!(
        backup.checksum(instance).unwrap(),
        primary.checksum(instance).unwrap()
    );
    // A creation of an instance that is not stale stays refused.
    let again = Entry {
        instance,
        epoch: Epoch(1),
        seq: Seq(1),
        timestamp: NOW,
        origin: None,
        body: RecordBody::CheckpointCreate {
            name: name("a"),
            attributes: attrs(10, 100, 1000),
        },
    };
    let error = replicate(&backup, vec![again]).unwrap_err();
    assert!(error.detail.contains("exists"), "{}", error.detail);
}

#[test]
fn checksums_differ_when_data_differs() {
    let (_dir, primary, backup, shipped) = pair();
    let instance = create(&primary, "a", attrs(10, 100, 1000));
    section(&primary, instance, "s", b"abc");
    replicate(&backup, take(&shipped)).unwrap();
    let (position, sum) = primary.checksum(instance).unwrap();
    assert_eq!(backup.checksum(instance).unwrap(), (position, sum));
    run(&primary, write(instance, "s", 1, b"X")).unwrap();
    assert_ne!(primary.checksum(instance).unwrap().1, sum);
}

#[test]
fn entries_after_an_install_are_gone_so_a_snapshot_is_sent() {
    let (_dir, primary, backup, shipped) = pair();
    let instance = create(&primary, "a", attrs(10, 100, 1000));
    section(&primary, instance, "s", b"x");
    take(&shipped);
    install(&backup, snapshot_parts(&primary, instance, 1 << 20));
    // The backup's log holds the install at seq 2, not the entries 1..2.
    assert_eq!(
        backup
            .entries_after(instance, Epoch(1), Seq(1), u64::MAX)
            .unwrap(),
        EntriesAfter::Gone
    );
    run(&backup, write(instance, "s", 0, b"y")).unwrap();
    match backup
        .entries_after(instance, Epoch(1), Seq(2), u64::MAX)
        .unwrap()
    {
        EntriesAfter::Entries(entries) => {
            assert_eq!(entries.len(), 1);
            assert_eq!(entries[0].1.seq, Seq(3));
        }
        EntriesAfter::Gone => panic!("the entry after the install is there"),
    }
}

#[test]
fn the_wal_hold_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_at(dir.path(), |c| {
        c.segment_bytes_max = 4096;
        c.wal_history_bytes = 0;
        c.wal_hold_bytes_max = 16 * 1024;
    });
    let instance = create(&store, "a", attrs(16, 1 << 20, 1 << 24));
    section(&store, instance, "s", b"");
    store.set_wal_hold(Some(Lsn(1)));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        run(&store, write(instance, "s", 0, &[3; 1000])).unwrap();
        let (bytes, _) = store.wal_footprint();
        if store
            .entries_after(instance, Epoch(1), Seq(0), u64::MAX)
            .unwrap()
            == EntriesAfter::Gone
        {
            // Trimmed only once the held part outgrew the bound.
            assert!(bytes <= 16 * 1024 + 2 * 4096 + 2048, "{bytes} bytes kept");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "hold never released");
    }
}

/// The primary streams to a backup only from an entry both logs hold. Its
/// own entry at the backup's last seq must be that very entry (same epoch):
/// after two quick failovers a primary may never have held an epoch whose
/// recorded range covers the backup's last entry.
#[test]
fn entries_after_an_entry_of_another_epoch_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_at(dir.path(), |_| {});
    let instance = create(&store, "a", attrs(16, 1 << 20, 1 << 24));
    section(&store, instance, "s", b"");
    run(&store, write(instance, "s", 0, b"x")).unwrap();
    let started = wait_position(|r| store.begin_epoch(instance, Epoch(3), r)).unwrap();
    assert_eq!((started.epoch, started.seq), (Epoch(3), Seq(4)));
    run(&store, write(instance, "s", 0, b"y")).unwrap();
    let seqs = |got: EntriesAfter| match got {
        EntriesAfter::Entries(entries) => entries.iter().map(|(_, e)| e.seq.0).collect(),
        EntriesAfter::Gone => Vec::<u64>::new(),
    };
    // This log holds (1, 3) and (3, 4): reading after them works.
    assert_eq!(
        seqs(
            store
                .entries_after(instance, Epoch(1), Seq(3), u64::MAX)
                .unwrap()
        ),
        vec![4, 5]
    );
    assert_eq!(
        seqs(
            store
                .entries_after(instance, Epoch(3), Seq(4), u64::MAX)
                .unwrap()
        ),
        vec![5]
    );
    // A backup's (2, 3) is not this log's (1, 3); nor is (2, 4) its (3, 4).
    for (epoch, seq) in [(2, 3), (2, 4)] {
        assert_eq!(
            store
                .entries_after(instance, Epoch(epoch), Seq(seq), u64::MAX)
                .unwrap(),
            EntriesAfter::Gone,
            "after ({epoch}, {seq})"
        );
    }
}

/// Replicated requests share group commits (a backup gets one per
/// checkpoint per shipment). One refused after part of it was applied in
/// memory undoes the batch, and the others in it are planned again: they
/// are applied, durable, and nothing of the refused one is.
#[test]
fn a_refused_replicated_request_in_a_shared_batch_leaves_the_others_applied() {
    let dir = tempfile::tempdir().unwrap();
    let fs = ckpt_storage::FaultFs::new();
    let primary = open_at(&dir.path().join("p"), |_| {});
    let shipped = capture(&primary);
    let backup_config = || {
        let mut config = config(&dir.path().join("b"), RocksWalMode::Disabled);
        config.reserve_bytes = 0;
        config
    };
    let backup = Store::open_with_fs(backup_config(), Arc::new(fs.clone())).unwrap();
    let a = create(&primary, "a", attrs(4, 100, 400));
    section(&primary, a, "s", b"of a");
    let for_a = take(&shipped);
    let b = create(&primary, "b", attrs(4, 100, 400));
    section(&primary, b, "s", b"of b");
    let for_b = take(&shipped);
    let c = create(&primary, "c", attrs(4, 100, 400));
    section(&primary, c, "s", b"of c");
    let for_c = take(&shipped);
    // B's creation, then its section twice: the second is a seq gap, found
    // after the first two entries were applied in memory.
    let mut bad = for_b.clone();
    bad.push(for_b[1].clone());

    // Hold the writer thread in a reply (WEAK replies run on it) while the
    // three requests queue, so that they make one batch.
    let (gate, held) = mpsc::sync_channel::<()>(0);
    let (entered, writer_held) = mpsc::sync_channel::<()>(1);
    backup.submit(
        create_op("blocker", Some(InstanceId(1000)), 1),
        Durability::Written,
        NOW,
        move |result| {
            result.unwrap();
            entered.send(()).unwrap();
            held.recv().unwrap();
        },
    );
    writer_held.recv().unwrap();
    let batches_before = backup
        .stats()
        .batches
        .load(std::sync::atomic::Ordering::Relaxed);
    let answers: Vec<_> = [for_a, bad, for_c]
        .into_iter()
        .map(|entries| {
            let (tx, rx) = mpsc::sync_channel(1);
            backup.submit_replicated(entries, move |r| {
                let _ = tx.send(r);
            });
            rx
        })
        .collect();
    gate.send(()).unwrap();
    let results: Vec<CkptResult<Position>> = answers.iter().map(|rx| rx.recv().unwrap()).collect();
    assert!(results[0].is_ok(), "{:?}", results[0]);
    let refused = results[1].as_ref().unwrap_err();
    assert_eq!(refused.code, ErrorCode::BadOperation, "{refused}");
    assert!(results[2].is_ok(), "{:?}", results[2]);
    let batches = backup
        .stats()
        .batches
        .load(std::sync::atomic::Ordering::Relaxed)
        - batches_before;
    assert_eq!(
        batches, 1,
        "the two accepted requests were committed together"
    );
    assert_eq!(backup.failure(), None);
    let same = |store: &Store, instance| {
        store.checksum(instance).unwrap() == primary.checksum(instance).unwrap()
    };
    assert!(same(&backup, a) && same(&backup, c));
    assert_eq!(
        backup.position(b).unwrap(),
        None,
        "nothing of the refused request"
    );
    // Durable: a power cut keeps both, and the refused one stays absent.
    drop(backup);
    fs.power_loss();
    let backup = Store::open_with_fs(backup_config(), Arc::new(fs.clone())).unwrap();
    assert!(same(&backup, a) && same(&backup, c));
    assert_eq!(backup.position(b).unwrap(), None);
    assert_eq!(read_all(&backup, c, "s"), b"of c");
}
