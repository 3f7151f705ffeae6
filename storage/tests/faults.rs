//! Storage failures: a failed fsync poisons the store, a full disk answers
//! NO_SPACE and keeps everything durable, WEAK writes resolve before fsync.

mod common;

use std::sync::atomic::Ordering;

use ckpt_proto::ErrorCode;
use ckpt_storage::{Durability, FaultFs, Op, Outcome, RocksWalMode, Store};
use common::*;

#[test]
fn a_failed_fsync_poisons_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let store = open(dir.path(), &fs, RocksWalMode::Unsynced);
    let c = create(&store, "p", attrs(2, 100, 200));
    section(&store, c, "a", b"durable");
    fs.fail_next_sync();
    let error = run(&store, write(c, "a", 0, b"DOOMED")).unwrap_err();
    assert_eq!(error.code, ErrorCode::Library);
    assert!(error.detail.contains("poisoned"), "{}", error.detail);
    assert!(error.detail.contains("fsync"), "{}", error.detail);
    assert!(store.poisoned().is_some());
    // Every later write is refused, even though the disk works again.
    let again = run(&store, write(c, "a", 0, b"later")).unwrap_err();
    assert!(again.detail.contains("poisoned"), "{}", again.detail);
    let create_again = run(
        &store,
        Op::CreateCheckpoint {
            name: name("q"),
            attributes: attrs(1, 1, 1),
            instance: None,
            epoch: ckpt_storage::Epoch(1),
        },
    );
    assert!(create_again.is_err());
    drop(store);
    fs.power_loss();
    let store = open(dir.path(), &fs, RocksWalMode::Unsynced);
    assert!(store.poisoned().is_none(), "a restart recovers");
    let data = read_all(&store, c, "a");
    assert!(
        data == b"durable" || data == b"DOOMEDe",
        "acknowledged data kept, the failed write whole or absent: {data:?}"
    );
    run(&store, write(c, "a", 0, b"fine")).unwrap();
}

#[test]
fn a_failed_log_write_poisons_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let store = open(dir.path(), &fs, RocksWalMode::Disabled);
    let c = create(&store, "p", attrs(2, 100, 200));
    section(&store, c, "a", b"kept");
    fs.fail_next_write();
    let error = run(&store, write(c, "a", 0, b"lost")).unwrap_err();
    assert_eq!(error.code, ErrorCode::Library);
    // Reads are refused too: batches applied before the failure may still
    // have been waiting for their fsync, which a poisoned store never does.
    let element = ckpt_proto::ReadElement {
        section_id: ckpt_proto::SectionId::new("a"),
        offset: 0,
        size: None,
    };
    let read = store.read(c, &[element]).unwrap_err();
    assert!(read.detail.contains("poisoned"), "{read}");
    assert!(run(&store, write(c, "a", 0, b"next"))
        .unwrap_err()
        .detail
        .contains("poisoned"));
    drop(store);
    fs.power_loss();
    let store = open(dir.path(), &fs, RocksWalMode::Disabled);
    assert_eq!(
        read_all(&store, c, "a"),
        b"kept",
        "a write that never reached the log is not visible after the restart"
    );
}

#[test]
fn a_full_disk_answers_no_space_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let store = open(dir.path(), &fs, RocksWalMode::Disabled);
    let c = create(&store, "full", attrs(4, 1000, 4000));
    section(&store, c, "a", b"before");
    let before = digest(&store);
    fs.set_free_bytes(Some(20));
    let error = run(&store, write(c, "a", 0, &[b'x'; 500])).unwrap_err();
    assert_eq!(error.code, ErrorCode::NoSpace, "{error}");
    let create_error = run(
        &store,
        Op::CreateCheckpoint {
            name: name("other"),
            attributes: attrs(2, 10, 20),
            instance: None,
            epoch: ckpt_storage::Epoch(1),
        },
    );
    assert_eq!(create_error.unwrap_err().code, ErrorCode::NoSpace);
    assert_eq!(
        digest(&store),
        before,
        "nothing of the refused writes is visible"
    );
    assert!(
        store.poisoned().is_none(),
        "a full disk does not poison the store"
    );
    // Space comes back: the store carries on where it was.
    fs.set_free_bytes(None);
    run(&store, write(c, "a", 0, b"AFTER")).unwrap();
    let other = create(&store, "other", attrs(2, 10, 20));
    section(&store, other, "s", b"1");
    let after = digest(&store);
    drop(store);
    fs.power_loss();
    let store = open(dir.path(), &fs, RocksWalMode::Disabled);
    assert_eq!(
        digest(&store),
        after,
        "everything acknowledged survives a power cut"
    );
    assert_eq!(read_all(&store, c, "a"), b"AFTERe");
}

#[test]
fn written_durability_resolves_before_the_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let store = open(dir.path(), &fs, RocksWalMode::Unsynced);
    let c = create(&store, "weak", attrs(2, 100, 200));
    section(&store, c, "a", b"0");
    // The fsync of this batch fails: the WEAK write was already answered
    // (applied, visible), as WR_ACTIVE_REPLICA_WEAK allows.
    fs.fail_next_sync();
    let weak = store.execute_with(write(c, "a", 0, b"1"), Durability::Written, NOW);
    assert_eq!(weak.unwrap(), Outcome::Done);
    // A returned write is visible to the next read, unless the fsync has
    // failed meanwhile: then the store refuses reads, since "1" never
    // became durable.
    let element = ckpt_proto::ReadElement {
        section_id: ckpt_proto::SectionId::new("a"),
        offset: 0,
        size: None,
    };
    match store.read(c, &[element]) {
        Ok(data) => assert_eq!(data[0], b"1", "a returned write is visible"),
        Err(error) => assert!(error.detail.contains("poisoned"), "{error}"),
    }
    // The writer thread reaches the failed fsync after answering; the next
    // durable write queues behind it and sees the poisoned store.
    let next = run(&store, write(c, "a", 0, b"2")).unwrap_err();
    assert!(next.detail.contains("poisoned"), "{}", next.detail);
    assert!(store.poisoned().is_some());
}

#[test]
fn after_a_failed_fsync_reads_fail_too() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let store = open(dir.path(), &fs, RocksWalMode::Unsynced);
    let c = create(&store, "p", attrs(2, 100, 200));
    section(&store, c, "a", b"durable");
    fs.fail_next_sync();
    let error = run(&store, write(c, "a", 0, b"DOOMED")).unwrap_err();
    assert!(error.detail.contains("poisoned"), "{}", error.detail);
    // The failed batch is in RocksDB, but it was never acknowledged as
    // durable: no read may return it.
    let element = ckpt_proto::ReadElement {
        section_id: ckpt_proto::SectionId::new("a"),
        offset: 0,
        size: None,
    };
    let read = store.read(c, &[element]);
    assert!(
        read.is_err(),
        "a read after poisoning returned {:?}",
        read.map(|r| String::from_utf8_lossy(&r[0]).into_owned())
    );
    let error = read.unwrap_err();
    assert_eq!(error.code, ErrorCode::Library);
    assert!(error.detail.contains("poisoned"), "{}", error.detail);
    assert!(store.status(c).is_err(), "status after poisoning");
    assert!(store.sections(c).is_err(), "section list after poisoning");
}

#[test]
fn a_dead_writer_thread_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let store = open(dir.path(), &fs, RocksWalMode::Disabled);
    let c = create(&store, "p", attrs(2, 100, 200));
    section(&store, c, "a", b"kept");
    fs.panic_next_write();
    // The batch in flight dies with the thread.
    assert!(run(&store, write(c, "a", 0, b"lost")).is_err());
    // Every later write names the cause instead of "store is closed".
    let later = run(&store, write(c, "a", 0, b"later")).unwrap_err();
    assert_eq!(later.code, ErrorCode::Library, "{later}");
    assert!(later.detail.contains("writer thread"), "{}", later.detail);
    let failure = store.failure().expect("the store reports its death");
    assert!(failure.contains("writer thread panicked"), "{failure}");
    assert!(failure.contains("injected panic"), "{failure}");
    assert!(store.read(c, &[]).is_err(), "a dead store serves no reads");
}

/// Submits through [`Store::try_submit`], the server's path (never blocking
/// a runtime worker), and waits for the reply.
fn run_try(store: &Store, op: Op) -> ckpt_proto::CkptResult<Outcome> {
    let (tx, rx) = std::sync::mpsc::channel();
    let reply = move |result| {
        let _ = tx.send(result);
    };
    if let Err(submission) = store.try_submit(op, Durability::Durable, NOW, reply) {
        submission.wait();
    }
    rx.recv().expect("the store answers every submission")
}

#[test]
fn a_full_disk_is_reported_until_space_returns() {
    full_disk_round_trip(run);
}

#[test]
fn a_full_disk_is_reported_through_try_submit_too() {
    full_disk_round_trip(run_try);
}

fn full_disk_round_trip(run: fn(&Store, Op) -> ckpt_proto::CkptResult<Outcome>) {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let store = open(dir.path(), &fs, RocksWalMode::Disabled);
    let reserve = dir.path().join(ckpt_storage::reserve::RESERVE_FILE);
    assert!(
        reserve.exists(),
        "the reserve is held while the disk has room"
    );
    let c = create(&store, "full", attrs(4, 1000, 4000));
    section(&store, c, "a", b"before");
    assert!(!store.disk_full());
    fs.set_free_bytes(Some(20));
    let error = run(&store, write(c, "a", 0, &[b'x'; 500])).unwrap_err();
    assert_eq!(error.code, ErrorCode::NoSpace, "{error}");
    assert!(
        store.disk_full(),
        "a log write that hit ENOSPC marks the disk full"
    );
    assert!(!reserve.exists(), "the reserve is released for deletes");
    fs.set_free_bytes(None);
    run(&store, write(c, "a", 0, b"after")).unwrap();
    assert!(!store.disk_full(), "space came back");
    assert!(reserve.exists(), "the reserve is held again");
}

#[test]
fn recovery_releases_the_reserve_first_and_holds_it_after() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let store = open(dir.path(), &fs, RocksWalMode::Disabled);
    let c = create(&store, "r", attrs(2, 100, 200));
    section(&store, c, "a", b"kept");
    drop(store);
    fs.power_loss();
    let reserve = dir.path().join(ckpt_storage::reserve::RESERVE_FILE);
    // A reserve of another size from an earlier configuration is replaced.
    std::fs::write(&reserve, b"stale").unwrap();
    let store = open(dir.path(), &fs, RocksWalMode::Disabled);
    assert_eq!(read_all(&store, c, "a"), b"kept");
    assert_eq!(
        std::fs::metadata(&reserve).unwrap().len(),
        ckpt_storage::StoreConfig::new(dir.path()).reserve_bytes
    );
}

#[test]
fn a_lone_write_is_synced_by_the_writer_itself_and_survives_a_power_cut() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let store = open(dir.path(), &fs, RocksWalMode::Disabled);
    let c = create(&store, "lone", attrs(2, 100, 200));
    section(&store, c, "a", b"start");
    let stats = store.stats();
    let fsyncs_before = stats.fsyncs.load(Ordering::Relaxed);
    let here_before = stats.syncs_on_writer.load(Ordering::Relaxed);
    // One request at a time: the fsync thread is idle and nothing is
    // queued behind each, so the writer thread syncs every one itself.
    for i in 0..20u8 {
        run(&store, write(c, "a", 0, &[b'0' + i % 10; 5])).unwrap();
    }
    let fsyncs = stats.fsyncs.load(Ordering::Relaxed) - fsyncs_before;
    let here = stats.syncs_on_writer.load(Ordering::Relaxed) - here_before;
    assert_eq!(fsyncs, 20, "one fsync per write");
    assert_eq!(here, 20, "all synced on the writer thread");
    // Acknowledged means durable on this path too.
    drop(store);
    fs.power_loss();
    let store = open(dir.path(), &fs, RocksWalMode::Disabled);
    assert_eq!(read_all(&store, c, "a"), b"99999");
}

#[test]
fn a_slow_disk_shows_in_the_fsync_stage_of_every_durable_write() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let store = open(dir.path(), &fs, RocksWalMode::Disabled);
    let c = create(&store, "slow", attrs(2, 100, 200));
    section(&store, c, "a", b"start");
    let stages = &store.stats().write_stages;
    let counts = || stages.named().map(|(_, buckets)| buckets.snapshot().1);
    let delay = std::time::Duration::from_millis(20);
    let delay_ns = u64::try_from(delay.as_nanos()).unwrap();
    // The bucket of fsync stage values up to half the delay.
    let fast = ckpt_storage::store::STAGE_BUCKETS_NS
        .iter()
        .rposition(|&bound| bound <= delay_ns / 2)
        .unwrap();
    let before = counts();
    let (fsync_cumulative, _, fsync_sum) = stages.fsync.snapshot();
    fs.set_sync_delay(delay);
    for i in 0..5u8 {
        run(&store, write(c, "a", 0, &[b'0' + i; 5])).unwrap();
    }
    // Answered before its fsync: not a durable write, in no stage.
    store
        .execute_with(write(c, "a", 0, b"weak!"), Durability::Written, NOW)
        .unwrap();
    let after = counts();
    for ((name, _), (b, a)) in stages.named().iter().zip(before.iter().zip(after)) {
        assert_eq!(a - b, 5, "stage {name}: one value per durable write");
    }
    let (cumulative, _, sum) = stages.fsync.snapshot();
    assert!(
        sum - fsync_sum >= 5 * delay_ns,
        "the slow syncs are in the fsync stage: {} ns",
        sum - fsync_sum
    );
    assert_eq!(
        cumulative[fast], fsync_cumulative[fast],
        "no write's fsync stage is under half the disk's delay"
    );
}
