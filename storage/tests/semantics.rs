//! Every data rule of DESIGN.md §2, through a real store (RocksDB in a temp
//! dir, the log on the in-memory file layer), asserting codes and data.

mod common;

use ckpt_proto::{
    CreationFlags, ErrorCode, ReadElement, SectionCreationAttributes, SectionId, WriteElement,
    CHECKPOINT_BYTES_MAX, SECTION_BYTES_MAX, TIME_END,
};
use ckpt_storage::{FaultFs, Op, Outcome, RocksWalMode};
use common::*;

fn store() -> (tempfile::TempDir, FaultFs, ckpt_storage::Store) {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let store = open(dir.path(), &fs, RocksWalMode::Unsynced);
    (dir, fs, store)
}

fn code(result: ckpt_proto::CkptResult<Outcome>) -> (ErrorCode, Option<u32>) {
    let error = result.expect_err("operation must fail");
    (error.code, error.index)
}

#[test]
fn create_validates_attributes() {
    let (_d, _f, s) = store();
    let mut a = attrs(4, 100, 400);
    a.checkpoint_size = 401;
    assert_eq!(
        code(run(
            &s,
            Op::CreateCheckpoint {
                name: name("x"),
                attributes: a,
                instance: None,
                epoch: ckpt_storage::Epoch(1),
            }
        ))
        .0,
        ErrorCode::InvalidParameter
    );
    let mut a = attrs(4, 100, 400);
    a.creation_flags = CreationFlags::WR_ALL_REPLICAS | CreationFlags::WR_ACTIVE_REPLICA_WEAK;
    assert_eq!(
        code(run(
            &s,
            Op::CreateCheckpoint {
                name: name("x"),
                attributes: a,
                instance: None,
                epoch: ckpt_storage::Epoch(1),
            }
        ))
        .0,
        ErrorCode::InvalidParameter
    );
    let mut a = attrs(4, 100, 400);
    a.creation_flags = CreationFlags(0x2 | 0x8000);
    assert_eq!(
        code(run(
            &s,
            Op::CreateCheckpoint {
                name: name("x"),
                attributes: a,
                instance: None,
                epoch: ckpt_storage::Epoch(1),
            }
        ))
        .0,
        ErrorCode::BadFlag
    );
    assert!(
        s.lookup(&name("x")).is_err(),
        "a rejected create leaves no trace"
    );
    assert_eq!(
        s.stats().records.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[test]
fn reopen_with_same_attributes_opens_and_different_is_already_exist() {
    let (_d, _f, s) = store();
    let first = create(&s, "c", attrs(4, 100, 400));
    let mut same_but_retention = attrs(4, 100, 400);
    same_but_retention.retention_duration_ns = 5;
    let again = run(
        &s,
        Op::CreateCheckpoint {
            name: name("c"),
            attributes: same_but_retention,
            instance: None,
            epoch: ckpt_storage::Epoch(1),
        },
    )
    .unwrap();
    assert_eq!(
        again,
        Outcome::Opened {
            instance: first,
            existed: true
        }
    );
    let other = run(
        &s,
        Op::CreateCheckpoint {
            name: name("c"),
            attributes: attrs(5, 100, 400),
            instance: None,
            epoch: ckpt_storage::Epoch(1),
        },
    );
    assert_eq!(code(other).0, ErrorCode::AlreadyExist);
}

#[test]
fn default_section_exists_iff_one_section() {
    let (_d, _f, s) = store();
    let single = create(&s, "single", attrs(1, 100, 100));
    let sections = s.sections(single).unwrap();
    assert_eq!(sections.len(), 1);
    assert!(sections[0].section_id.is_default());
    assert_eq!(sections[0].expiration_time, TIME_END);
    run(&s, write(single, "", 0, b"state")).unwrap();
    assert_eq!(read_all(&s, single, ""), b"state");
    let delete = Op::DeleteSection {
        instance: single,
        section_id: SectionId::DEFAULT,
    };
    assert_eq!(code(run(&s, delete)).0, ErrorCode::InvalidParameter);
    let expire = Op::SetExpiration {
        instance: single,
        section_id: SectionId::DEFAULT,
        expiration_time: NOW + 10,
    };
    assert_eq!(code(run(&s, expire)).0, ErrorCode::InvalidParameter);
    let more = Op::CreateSection {
        instance: single,
        attributes: SectionCreationAttributes {
            section_id: Some(SectionId::new("a")),
            expiration_time: TIME_END,
        },
        data: vec![],
    };
    assert_eq!(
        code(run(&s, more)).0,
        ErrorCode::AlreadyExist,
        "the default section holds the only slot of maxSections = 1"
    );

    let multi = create(&s, "multi", attrs(3, 100, 300));
    assert!(s.sections(multi).unwrap().is_empty());
    assert_eq!(
        code(run(&s, write(multi, "", 0, b"x"))),
        (ErrorCode::NotExist, Some(0))
    );
    let default_create = Op::CreateSection {
        instance: multi,
        attributes: SectionCreationAttributes {
            section_id: Some(SectionId::DEFAULT),
            expiration_time: TIME_END,
        },
        data: vec![],
    };
    assert_eq!(code(run(&s, default_create)).0, ErrorCode::InvalidParameter);
}

#[test]
fn section_limits() {
    let (_d, _f, s) = store();
    let c = create(&s, "c", attrs(2, 10, 20));
    let make = |id: &str, data: &[u8], expiration_time| Op::CreateSection {
        instance: c,
        attributes: SectionCreationAttributes {
            section_id: Some(SectionId::new(id)),
            expiration_time,
        },
        data: data.to_vec(),
    };
    assert_eq!(
        code(run(&s, make(&"i".repeat(17), b"", TIME_END))).0,
        ErrorCode::InvalidParameter,
        "id too long"
    );
    assert_eq!(
        code(run(&s, make("a", &[0; 11], TIME_END))).0,
        ErrorCode::InvalidParameter,
        "data over maxSectionSize"
    );
    assert_eq!(
        code(run(&s, make("a", b"", NOW - 1))).0,
        ErrorCode::InvalidParameter,
        "expiration in the past"
    );
    run(&s, make(&"i".repeat(16), b"", TIME_END)).unwrap();
    run(&s, make("a", b"0123456789", TIME_END)).unwrap();
    assert_eq!(
        code(run(&s, make("a", b"", TIME_END))).0,
        ErrorCode::AlreadyExist
    );
    assert_eq!(
        code(run(&s, make("b", b"", TIME_END))).0,
        ErrorCode::NoSpace,
        "maxSections"
    );
    let status = s.status(c).unwrap();
    assert_eq!((status.number_of_sections, status.memory_used), (2, 10));
}

#[test]
fn generated_ids_are_unique_and_never_reused() {
    let (_d, _f, s) = store();
    let c = create(&s, "c", attrs(10, 10, 100));
    let generate = || Op::CreateSection {
        instance: c,
        attributes: SectionCreationAttributes {
            section_id: None,
            expiration_time: TIME_END,
        },
        data: b"g".to_vec(),
    };
    // A user-chosen id that a naive counter would hand out next is skipped.
    section(&s, c, "2", b"user");
    let mut ids = Vec::new();
    for _ in 0..3 {
        match run(&s, generate()).unwrap() {
            Outcome::SectionCreated { section_id } => ids.push(section_id),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        ids,
        vec![
            SectionId::new("1"),
            SectionId::new("3"),
            SectionId::new("4")
        ]
    );
    run(
        &s,
        Op::DeleteSection {
            instance: c,
            section_id: SectionId::new("4"),
        },
    )
    .unwrap();
    match run(&s, generate()).unwrap() {
        Outcome::SectionCreated { section_id } => {
            assert_eq!(section_id, SectionId::new("5"), "4 is not reused")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(read_all(&s, c, "2"), b"user");
}

#[test]
fn generated_ids_fit_max_section_id_size() {
    let (_d, _f, s) = store();
    let mut a = attrs(20, 10, 200);
    a.max_section_id_size = 1;
    let c = create(&s, "c", a);
    let generate = || Op::CreateSection {
        instance: c,
        attributes: SectionCreationAttributes {
            section_id: None,
            expiration_time: TIME_END,
        },
        data: vec![],
    };
    for _ in 0..9 {
        run(&s, generate()).unwrap();
    }
    assert_eq!(
        code(run(&s, generate())).0,
        ErrorCode::NoSpace,
        "id 10 does not fit in one byte"
    );
}

#[test]
fn multi_element_write_is_atomic_and_reports_the_failing_index() {
    let (_d, _f, s) = store();
    let c = create(&s, "c", attrs(4, 10, 40));
    section(&s, c, "a", b"aaaa");
    section(&s, c, "b", b"bbbb");
    let before = digest(&s);
    let element = |id: &str, offset: u64, data: &[u8]| WriteElement {
        section_id: SectionId::new(id),
        offset,
        data: data.to_vec(),
    };
    let bad_third = vec![
        element("a", 0, b"AA"),
        element("b", 0, b"BB"),
        element("missing", 0, b"x"),
    ];
    assert_eq!(
        code(run(
            &s,
            Op::Write {
                instance: c,
                elements: bad_third
            }
        )),
        (ErrorCode::NotExist, Some(2))
    );
    let too_far = vec![
        element("a", 0, b"AA"),
        element("b", 0, b"BB"),
        element("b", 8, b"xyz"),
    ];
    assert_eq!(
        code(run(
            &s,
            Op::Write {
                instance: c,
                elements: too_far
            }
        )),
        (ErrorCode::InvalidParameter, Some(2))
    );
    assert_eq!(digest(&s), before, "a rejected write changes nothing");
    let good = vec![
        element("a", 0, b"AA"),
        element("b", 2, b"BBB"),
        element("a", 3, b"Z"),
    ];
    run(
        &s,
        Op::Write {
            instance: c,
            elements: good,
        },
    )
    .unwrap();
    assert_eq!(read_all(&s, c, "a"), b"AAaZ");
    assert_eq!(read_all(&s, c, "b"), b"bbBBB");
    assert_eq!(s.status(c).unwrap().memory_used, 9);
    assert_eq!(
        code(run(
            &s,
            Op::Write {
                instance: c,
                elements: vec![]
            }
        ))
        .0,
        ErrorCode::InvalidParameter
    );
}

#[test]
fn writing_past_the_end_grows_and_zero_fills() {
    let (_d, _f, s) = store();
    let c = create(&s, "c", attrs(2, 300_000, 600_000));
    section(&s, c, "a", b"abc");
    run(&s, write(c, "a", 10, b"xy")).unwrap();
    assert_eq!(read_all(&s, c, "a"), b"abc\0\0\0\0\0\0\0xy");
    // Across chunk boundaries (64 KiB chunks): a gap of whole chunks reads as zeros.
    run(&s, write(c, "a", 200_000, b"tail")).unwrap();
    let data = read_all(&s, c, "a");
    assert_eq!(data.len(), 200_004);
    assert!(data[12..200_000].iter().all(|&b| b == 0));
    assert_eq!(&data[200_000..], b"tail");
    // A partial read in the middle, and a bounded read at the end.
    let element = |offset, size| ReadElement {
        section_id: SectionId::new("a"),
        offset,
        size,
    };
    assert_eq!(
        s.read(c, &[element(199_998, Some(4))]).unwrap()[0],
        b"\0\0ta"
    );
    assert_eq!(
        s.read(c, &[element(200_002, Some(100))]).unwrap()[0],
        b"il",
        "readSize is what was read"
    );
    assert_eq!(s.read(c, &[element(200_004, None)]).unwrap()[0], b"");
    // Past the end but within maxSectionSize: nothing is read.
    let beyond = s
        .read(c, &[element(200_005, None), element(300_000, Some(7))])
        .unwrap();
    assert_eq!(beyond, [Vec::<u8>::new(), Vec::new()]);
    let past = s
        .read(c, &[element(0, None), element(300_001, None)])
        .unwrap_err();
    assert_eq!(
        (past.code, past.index),
        (ErrorCode::InvalidParameter, Some(1))
    );
    assert_eq!(s.status(c).unwrap().memory_used, 200_004);
    assert_eq!(
        code(run(&s, write(c, "a", 299_999, b"xy"))),
        (ErrorCode::InvalidParameter, Some(0))
    );
}

#[test]
fn overwrite_replaces_data_and_size() {
    let (_d, _f, s) = store();
    let c = create(&s, "c", attrs(2, 200_000, 200_000));
    section(&s, c, "a", &vec![7u8; 150_000]);
    run(
        &s,
        Op::Overwrite {
            instance: c,
            section_id: SectionId::new("a"),
            data: b"short".to_vec(),
        },
    )
    .unwrap();
    assert_eq!(read_all(&s, c, "a"), b"short");
    assert_eq!(s.status(c).unwrap().memory_used, 5);
    // Growing again after shrinking must not resurrect the old bytes.
    run(&s, write(c, "a", 70_000, b"z")).unwrap();
    let data = read_all(&s, c, "a");
    assert_eq!(data.len(), 70_001);
    assert!(
        data[5..70_000].iter().all(|&b| b == 0),
        "old data came back"
    );
    let missing = Op::Overwrite {
        instance: c,
        section_id: SectionId::new("nope"),
        data: vec![],
    };
    assert_eq!(code(run(&s, missing)).0, ErrorCode::NotExist);
    let too_big = Op::Overwrite {
        instance: c,
        section_id: SectionId::new("a"),
        data: vec![0; 200_001],
    };
    assert_eq!(code(run(&s, too_big)).0, ErrorCode::InvalidParameter);
}

#[test]
fn checkpoint_size_is_enforced() {
    let (_d, _f, s) = store();
    let c = create(&s, "c", attrs(3, 10, 15));
    section(&s, c, "a", &[1; 10]);
    let create_b = |len| Op::CreateSection {
        instance: c,
        attributes: SectionCreationAttributes {
            section_id: Some(SectionId::new("b")),
            expiration_time: TIME_END,
        },
        data: vec![2; len],
    };
    assert_eq!(code(run(&s, create_b(6))).0, ErrorCode::NoSpace);
    run(&s, create_b(5)).unwrap();
    assert_eq!(
        code(run(&s, write(c, "b", 5, b"x"))),
        (ErrorCode::NoSpace, Some(0))
    );
    let grow = Op::Overwrite {
        instance: c,
        section_id: SectionId::new("b"),
        data: vec![3; 6],
    };
    assert_eq!(code(run(&s, grow)).0, ErrorCode::NoSpace);
    // Two elements that fit alone but not together: the second is at fault.
    let elements = vec![
        WriteElement {
            section_id: SectionId::new("a"),
            offset: 0,
            data: vec![9; 10],
        },
        WriteElement {
            section_id: SectionId::new("b"),
            offset: 5,
            data: vec![9; 1],
        },
    ];
    assert_eq!(
        code(run(
            &s,
            Op::Write {
                instance: c,
                elements
            }
        )),
        (ErrorCode::NoSpace, Some(1))
    );
    // Rewriting within the current size needs no space.
    run(&s, write(c, "b", 0, b"xxxxx")).unwrap();
    run(
        &s,
        Op::DeleteSection {
            instance: c,
            section_id: SectionId::new("a"),
        },
    )
    .unwrap();
    run(&s, write(c, "b", 5, b"0123456789")).unwrap_err(); // over maxSectionSize
    run(&s, write(c, "b", 5, b"01234")).unwrap();
    assert_eq!(s.status(c).unwrap().memory_used, 10);
}

#[test]
fn expiration_times_and_expiry() {
    let (_d, _f, s) = store();
    let c = create(&s, "c", attrs(4, 10, 40));
    let make = |id: &str, expiration_time| Op::CreateSection {
        instance: c,
        attributes: SectionCreationAttributes {
            section_id: Some(SectionId::new(id)),
            expiration_time,
        },
        data: b"d".to_vec(),
    };
    run(&s, make("soon", NOW + 100)).unwrap();
    run(&s, make("later", NOW + 1_000)).unwrap();
    run(&s, make("never", TIME_END)).unwrap();
    let set = |id: &str, t| Op::SetExpiration {
        instance: c,
        section_id: SectionId::new(id),
        expiration_time: t,
    };
    assert_eq!(
        code(run(&s, set("later", NOW - 1))).0,
        ErrorCode::InvalidParameter
    );
    assert_eq!(
        code(run(&s, set("missing", NOW + 1))).0,
        ErrorCode::NotExist
    );
    run(&s, set("later", NOW + 500)).unwrap();
    let by_id: Vec<_> = s
        .sections(c)
        .unwrap()
        .into_iter()
        .map(|d| (d.section_id, d.expiration_time))
        .collect();
    assert!(by_id.contains(&(SectionId::new("later"), NOW + 500)));

    // Nothing is due yet.
    assert_eq!(
        s.execute_with(Op::ExpireDue, ckpt_storage::Durability::Durable, NOW + 99)
            .unwrap(),
        Outcome::Expired { count: 0 }
    );
    assert_eq!(
        s.execute_with(Op::ExpireDue, ckpt_storage::Durability::Durable, NOW + 100)
            .unwrap(),
        Outcome::Expired { count: 1 }
    );
    // The old expiry entry of "later" (NOW+1000) was replaced, so it expires at +500.
    assert_eq!(
        s.execute_with(Op::ExpireDue, ckpt_storage::Durability::Durable, NOW + 600)
            .unwrap(),
        Outcome::Expired { count: 1 }
    );
    assert_eq!(
        s.execute_with(
            Op::ExpireDue,
            ckpt_storage::Durability::Durable,
            NOW + 2_000
        )
        .unwrap(),
        Outcome::Expired { count: 0 }
    );
    let left: Vec<_> = s
        .sections(c)
        .unwrap()
        .into_iter()
        .map(|d| d.section_id)
        .collect();
    assert_eq!(left, vec![SectionId::new("never")]);
    assert_eq!(s.status(c).unwrap().number_of_sections, 1);
}

#[test]
fn delete_while_open_keeps_the_old_instance_apart() {
    let (_d, _f, s) = store();
    let old = create(&s, "c", attrs(2, 10, 20));
    section(&s, old, "a", b"old");
    run(&s, Op::Unlink { name: name("c") }).unwrap();
    assert_eq!(s.lookup(&name("c")).unwrap_err().code, ErrorCode::NotExist);
    assert_eq!(
        code(run(&s, Op::Unlink { name: name("c") })).0,
        ErrorCode::NotExist
    );
    // The old instance keeps working through its handle.
    run(&s, write(old, "a", 0, b"OLD")).unwrap();
    assert_eq!(read_all(&s, old, "a"), b"OLD");
    // A create makes a new, separate instance.
    let new = create(&s, "c", attrs(2, 10, 20));
    assert_ne!(new, old);
    assert!(s.sections(new).unwrap().is_empty());
    section(&s, new, "a", b"new");
    assert_eq!(read_all(&s, old, "a"), b"OLD");
    assert_eq!(s.lookup(&name("c")).unwrap(), new);
    // The last close destroys the old one only.
    run(&s, Op::Destroy { instance: old }).unwrap();
    assert_eq!(s.instance(old).unwrap_err().code, ErrorCode::NotExist);
    assert_eq!(read_all(&s, new, "a"), b"new");
    assert_eq!(
        code(run(&s, Op::Destroy { instance: old })).0,
        ErrorCode::NotExist
    );
}

#[test]
fn retention_is_logged_and_validated() {
    let (_d, _f, s) = store();
    let c = create(&s, "c", attrs(2, 10, 20));
    run(
        &s,
        Op::SetRetention {
            instance: c,
            retention_duration_ns: 5_000,
        },
    )
    .unwrap();
    assert_eq!(s.status(c).unwrap().attributes.retention_duration_ns, 5_000);
    let negative = Op::SetRetention {
        instance: c,
        retention_duration_ns: -1,
    };
    assert_eq!(code(run(&s, negative)).0, ErrorCode::InvalidParameter);
    // Once unlinked, the instance goes at its last close whatever its
    // retention: setting one is a BAD_OPERATION, and nothing is logged.
    run(
        &s,
        Op::Unlink {
            name: ckpt_proto::CheckpointName::new("c").unwrap(),
        },
    )
    .unwrap();
    let records = s.stats().records.load(std::sync::atomic::Ordering::Relaxed);
    let after_unlink = Op::SetRetention {
        instance: c,
        retention_duration_ns: 0,
    };
    assert_eq!(code(run(&s, after_unlink)).0, ErrorCode::BadOperation);
    assert_eq!(s.status(c).unwrap().attributes.retention_duration_ns, 5_000);
    assert_eq!(
        s.stats().records.load(std::sync::atomic::Ordering::Relaxed),
        records
    );
}

#[test]
fn oversize_updates_are_refused_before_logging() {
    let (_d, _f, s) = store();
    let mut a = attrs(2, SECTION_BYTES_MAX, SECTION_BYTES_MAX);
    a.max_section_id_size = 8;
    let c = create(&s, "c", a);
    section(&s, c, "a", b"");
    let records = s.stats().records.load(std::sync::atomic::Ordering::Relaxed);
    let huge = vec![0u8; ckpt_proto::UPDATE_BYTES_MAX as usize + 1];
    assert_eq!(code(run(&s, write(c, "a", 0, &huge))).0, ErrorCode::TooBig);
    assert_eq!(
        code(run(&s, write(c, "a", u64::MAX - 1, b"xy"))),
        (ErrorCode::InvalidParameter, Some(0))
    );
    assert_eq!(
        s.stats().records.load(std::sync::atomic::Ordering::Relaxed),
        records
    );
}

#[test]
fn data_survives_a_clean_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let s = open(dir.path(), &fs, RocksWalMode::Unsynced);
    let c = create(&s, "c", attrs(3, 100_000, 300_000));
    section(&s, c, "a", &vec![5u8; 99_999]);
    run(&s, write(c, "a", 3, b"mid")).unwrap();
    let before = digest(&s);
    s.close().unwrap();
    let s = open(dir.path(), &fs, RocksWalMode::Unsynced);
    assert_eq!(
        s.recovery_report().replayed,
        0,
        "a clean close leaves nothing to replay"
    );
    assert_eq!(digest(&s), before);
}

#[test]
fn concurrent_creations_and_writes_all_complete() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(
        ckpt_storage::Store::open(config(dir.path(), RocksWalMode::Disabled)).unwrap(),
    );
    let busy = create(&store, "busy", attrs(2, 100, 200));
    section(&store, busy, "a", b"");
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    let c = create(&store, &format!("c-{t}-{i}"), attrs(2, 10, 20));
                    section(&store, c, "s", &[t as u8, i as u8]);
                }
            })
        })
        .collect();
    for i in 0..50u8 {
        run(&store, write(busy, "a", 0, &[i])).unwrap();
    }
    for thread in threads {
        thread.join().unwrap();
    }
    let all = digest(&store);
    assert_eq!(all.len(), 101, "every creation completed");
    assert_eq!(all[&b"c-3-24".to_vec()].2[&b"s".to_vec()].1, vec![3, 24]);
    assert_eq!(read_all(&store, busy, "a"), vec![49]);
}

/// Reads `len` bytes of a section from `offset`.
fn read_range(
    s: &ckpt_storage::Store,
    c: ckpt_storage::InstanceId,
    id: &str,
    offset: u64,
    len: u64,
) -> Vec<u8> {
    let element = ReadElement {
        section_id: SectionId::new(id),
        offset,
        size: Some(len),
    };
    s.read(c, &[element]).expect("read").remove(0)
}

#[test]
fn a_write_at_offset_2_48_is_invalid_parameter_and_chunk_zero_survives() {
    let (_d, _f, s) = store();
    let create_op = |attributes| Op::CreateCheckpoint {
        name: name("c"),
        attributes,
        instance: None,
        epoch: ckpt_storage::Epoch(1),
    };
    // Before the bounds this checkpoint was created, and a write at 2^48
    // (chunk 2^32 of 64 KiB) wrapped the u32 chunk index onto chunk 0.
    assert_eq!(
        code(run(&s, create_op(attrs(2, 1 << 60, 1 << 60)))).0,
        ErrorCode::InvalidParameter
    );
    let c = create(&s, "c", attrs(2, SECTION_BYTES_MAX, SECTION_BYTES_MAX));
    section(&s, c, "a", b"chunk zero");
    assert_eq!(
        code(run(&s, write(c, "a", 1 << 48, b"X"))),
        (ErrorCode::InvalidParameter, Some(0))
    );
    assert_eq!(
        code(run(&s, write(c, "a", u64::MAX, b"X"))),
        (ErrorCode::InvalidParameter, Some(0))
    );
    run(&s, write(c, "a", SECTION_BYTES_MAX - 1, b"X")).unwrap();
    assert_eq!(read_range(&s, c, "a", 0, 10), b"chunk zero");
    assert_eq!(read_range(&s, c, "a", SECTION_BYTES_MAX - 2, 2), b"\0X");
    assert_eq!(s.status(c).unwrap().memory_used, SECTION_BYTES_MAX);
}

#[test]
fn memory_used_cannot_wrap_past_checkpoint_size() {
    let (_d, _f, s) = store();
    // Before the bounds: memoryUsed u64::MAX - 5 plus a 10-byte write
    // wrapped to 4 and the write was accepted past checkpointSize.
    let unbounded = Op::CreateCheckpoint {
        name: name("c"),
        attributes: attrs(3, u64::MAX, u64::MAX),
        instance: None,
        epoch: ckpt_storage::Epoch(1),
    };
    assert_eq!(code(run(&s, unbounded)).0, ErrorCode::InvalidParameter);
    // At the bounds: 16 sparse sections of 1 TiB fill 16 TiB exactly.
    let c = create(&s, "c", attrs(17, SECTION_BYTES_MAX, CHECKPOINT_BYTES_MAX));
    for i in 0..16 {
        let id = format!("s{i}");
        section(&s, c, &id, b"");
        run(&s, write(c, &id, SECTION_BYTES_MAX - 1, b"X")).unwrap();
    }
    assert_eq!(s.status(c).unwrap().memory_used, CHECKPOINT_BYTES_MAX);
    let one_more = Op::CreateSection {
        instance: c,
        attributes: SectionCreationAttributes {
            section_id: Some(SectionId::new("last")),
            expiration_time: TIME_END,
        },
        data: b"x".to_vec(),
    };
    assert_eq!(code(run(&s, one_more)).0, ErrorCode::NoSpace);
    let overwrite = Op::Overwrite {
        instance: c,
        section_id: SectionId::new("s0"),
        data: b"x".to_vec(),
    };
    run(&s, overwrite).unwrap();
    assert_eq!(
        s.status(c).unwrap().memory_used,
        CHECKPOINT_BYTES_MAX - SECTION_BYTES_MAX + 1
    );
    assert_eq!(
        code(run(&s, write(c, "s0", SECTION_BYTES_MAX - 1, b"XY"))),
        (ErrorCode::InvalidParameter, Some(0))
    );
    run(&s, write(c, "s0", SECTION_BYTES_MAX - 1, b"X")).unwrap();
    assert_eq!(
        code(run(&s, write(c, "s0", SECTION_BYTES_MAX, b"X"))),
        (ErrorCode::InvalidParameter, Some(0))
    );
}

#[test]
fn deleting_or_shrinking_a_huge_sparse_section_is_quick_and_complete() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let s = open(dir.path(), &fs, RocksWalMode::Disabled);
    let c = create(&s, "c", attrs(3, SECTION_BYTES_MAX, 2 * SECTION_BYTES_MAX));
    for id in ["a", "b"] {
        section(&s, c, id, b"head");
        // 2^24 chunk indexes, two of them stored.
        run(&s, write(c, id, SECTION_BYTES_MAX - 1, b"X")).unwrap();
    }
    assert_eq!(s.data_keys(c).unwrap(), 4);
    let started = std::time::Instant::now();
    run(
        &s,
        Op::DeleteSection {
            instance: c,
            section_id: SectionId::new("a"),
        },
    )
    .unwrap();
    let overwrite = Op::Overwrite {
        instance: c,
        section_id: SectionId::new("b"),
        data: b"small".to_vec(),
    };
    run(&s, overwrite).unwrap();
    assert_eq!(s.data_keys(c).unwrap(), 1, "only b's one chunk is left");
    section(&s, c, "a", b"new");
    println!(
        "delete + overwrite of 1 TiB sparse sections: {:?}",
        started.elapsed()
    );
    assert_eq!(read_all(&s, c, "a"), b"new");
    assert_eq!(read_all(&s, c, "b"), b"small");
    // The same range deletions on replay.
    drop(s);
    fs.power_loss();
    let s = open(dir.path(), &fs, RocksWalMode::Disabled);
    assert_eq!(read_all(&s, c, "a"), b"new");
    assert_eq!(read_all(&s, c, "b"), b"small");
    assert_eq!(s.data_keys(c).unwrap(), 2);
    assert_eq!(s.status(c).unwrap().memory_used, 8);
}

/// The totals the store keeps as it applies entries (what metrics report)
/// equal a scan of every instance, through random creations, sections,
/// writes, deletions, unlinks, names taken over and destroys, and after a
/// restart.
#[test]
fn the_kept_totals_equal_a_scan_of_every_instance() {
    use rand::{Rng, SeedableRng};
    fn scanned(store: &ckpt_storage::Store) -> ckpt_storage::Totals {
        let mut totals = ckpt_storage::Totals::default();
        for (_, meta) in store.instances().unwrap() {
            if !meta.unlinked {
                totals.checkpoints += 1;
                totals.sections += u64::from(meta.section_count);
                totals.bytes += meta.memory_used;
            }
        }
        totals
    }
    let (dir, fs, store) = store();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut instances: Vec<ckpt_storage::InstanceId> = Vec::new();
    let mut changed = 0;
    for step in 0..400 {
        let pick = |rng: &mut rand::rngs::StdRng, instances: &[ckpt_storage::InstanceId]| {
            instances[rng.random_range(0..instances.len())]
        };
        let id = ["a", "b", "c", "d"][rng.random_range(0..4)];
        let op = match (rng.random_range(0..8), instances.is_empty()) {
            (0, _) | (_, true) => Op::CreateCheckpoint {
                name: name(["p", "q", "r"][rng.random_range(0..3)]),
                attributes: attrs(4, 64, 200),
                instance: None,
                epoch: ckpt_storage::Epoch(1),
            },
            (1, _) => Op::Unlink {
                name: name(["p", "q", "r"][rng.random_range(0..3)]),
            },
            (2, _) => Op::Destroy {
                instance: pick(&mut rng, &instances),
            },
            (3, _) => Op::DeleteSection {
                instance: pick(&mut rng, &instances),
                section_id: SectionId::new(id),
            },
            (4 | 5, _) => Op::CreateSection {
                instance: pick(&mut rng, &instances),
                attributes: SectionCreationAttributes {
                    section_id: Some(SectionId::new(id)),
                    expiration_time: TIME_END,
                },
                data: vec![b'x'; rng.random_range(0..40)],
            },
            _ => Op::Overwrite {
                instance: pick(&mut rng, &instances),
                section_id: SectionId::new(id),
                data: vec![b'y'; rng.random_range(0..64)],
            },
        };
        let destroyed = match &op {
            Op::Destroy { instance } => Some(*instance),
            _ => None,
        };
        match run(&store, op) {
            Ok(Outcome::Opened { instance, .. }) => {
                instances.push(instance);
                changed += 1;
            }
            Ok(_) => {
                instances.retain(|i| Some(*i) != destroyed);
                changed += 1;
            }
            Err(_) => {}
        }
        assert_eq!(store.totals(), scanned(&store), "after step {step}");
    }
    assert!(changed > 150, "many operations did something: {changed}");
    assert!(scanned(&store).checkpoints > 0);
    drop(store);
    fs.power_loss();
    let store = open(dir.path(), &fs, RocksWalMode::Unsynced);
    assert_eq!(store.totals(), scanned(&store), "after a restart");
}
