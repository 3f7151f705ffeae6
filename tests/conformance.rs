//! Conformance suite: every API function and every row of DESIGN.md §2
//! (with its error cases), checked against a real `ckpt-server` process
//! through the `ckpt-client` library. Each test asserts both the error codes
//! and the data.
//!
//! Most tests share one lazily started server (unique checkpoint names per
//! test); the tests that kill and restart a server start their own. Nothing
//! here asserts a duration: anything that happens "later" is polled for with
//! a deadline.
//!
//! Run: `cargo build --release -p ckpt-server && cargo test --release --test conformance`.

#[path = "common/client.rs"]
mod client_helpers;
mod common;

use client_helpers::*;

use ckpt_client::{
    Callbacks, Checkpoint, CkptService, Client, ClientError, DispatchFlags, Invocation,
};
use ckpt_proto::wire::{ApiVersion, Change, Notification, Reply, Request, API_VERSION};
use ckpt_proto::{
    CheckpointName, CreationAttributes, CreationFlags, ErrorCode, OpenFlags, ReadElement,
    SectionCreationAttributes, SectionId, SectionState, SectionsChosen, WriteElement, TIME_END,
};

/// Every request that takes a checkpoint handle, aimed at `handle`.
fn handle_requests(handle: u64) -> Vec<Request> {
    vec![
        Request::RetentionDurationSet {
            handle,
            retention_duration_ns: TIME_END,
        },
        Request::ActiveReplicaSet { handle },
        Request::StatusGet { handle },
        Request::SectionCreate {
            handle,
            attributes: forever("x"),
            initial_data: vec![1],
        },
        Request::SectionDelete {
            handle,
            section_id: sid("s"),
        },
        Request::SectionExpirationTimeSet {
            handle,
            section_id: sid("s"),
            expiration_time: TIME_END,
        },
        Request::SectionOverwrite {
            handle,
            section_id: sid("s"),
            data: vec![1],
        },
        Request::Write {
            handle,
            elements: vec![we("s", 0, b"z")],
        },
        Request::Read {
            handle,
            elements: vec![re("s", 0, None)],
        },
        Request::Synchronize { handle },
        Request::IterationInitialize {
            handle,
            sections_chosen: SectionsChosen::Any as u32,
            expiration_time: 0,
        },
        Request::ImmediateConsumptionRegister {
            handle,
            resume_after: None,
        },
        Request::Close { handle },
    ]
}

/// Attributes with the given limits (WR_ACTIVE_REPLICA, kept forever).
fn limits(
    max_sections: u32,
    max_section_size: u64,
    checkpoint_size: u64,
    max_section_id_size: u64,
) -> CreationAttributes {
    CreationAttributes {
        creation_flags: CreationFlags::WR_ACTIVE_REPLICA,
        checkpoint_size,
        retention_duration_ns: TIME_END,
        max_sections,
        max_section_size,
        max_section_id_size,
    }
}

fn with_retention(retention_duration_ns: i64) -> CreationAttributes {
    CreationAttributes {
        retention_duration_ns,
        ..attrs()
    }
}

// ───────────────────────────── open / create ─────────────────────────────

#[tokio::test]
async fn open_create_new_checkpoint_reports_created_and_attributes() {
    let client = connect().await;
    let name = unique("create");
    let checkpoint = create(&client, &name, attrs()).await;
    assert!(checkpoint.created());
    assert_eq!(checkpoint.name(), &name);
    let status = checkpoint.status().await.unwrap();
    assert_eq!(status.attributes, attrs());
    assert_eq!((status.number_of_sections, status.memory_used), (0, 0));
    let info = client.stat(&name).await.unwrap();
    assert_eq!(info.status, status);
    assert_eq!(info.open_count, 1);
    checkpoint.close().await.unwrap();
    assert_eq!(client.stat(&name).await.unwrap().open_count, 0);
}

#[tokio::test]
async fn open_without_create_on_missing_name_is_not_exist() {
    let client = connect().await;
    let name = unique("missing");
    for flags in [OpenFlags::READ, OpenFlags::WRITE, rw(), OpenFlags(0)] {
        expect_code(client.open(&name, None, flags).await, ErrorCode::NotExist);
    }
    expect_code(client.stat(&name).await, ErrorCode::NotExist);
    assert!(!client.list().await.unwrap().iter().any(|c| c.name == name));
}

#[tokio::test]
async fn open_create_without_attributes_is_invalid_parameter() {
    let client = connect().await;
    let name = unique("create-no-attrs");
    expect_code(
        client.open(&name, None, rwc()).await,
        ErrorCode::InvalidParameter,
    );
    expect_code(
        client.open(&name, None, OpenFlags::CREATE).await,
        ErrorCode::InvalidParameter,
    );
    assert!(!exists(&client, &name).await, "nothing was created");
}

#[tokio::test]
async fn open_attributes_without_create_is_invalid_parameter() {
    let client = connect().await;
    let name = unique("attrs-no-create");
    expect_code(
        client.open(&name, Some(attrs()), rw()).await,
        ErrorCode::InvalidParameter,
    );
    assert!(!exists(&client, &name).await, "nothing was created");
    // Also when the checkpoint exists with exactly these attributes.
    let checkpoint = create(&client, &name, attrs()).await;
    section(&checkpoint, "s", b"kept").await;
    expect_code(
        client.open(&name, Some(attrs()), rw()).await,
        ErrorCode::InvalidParameter,
    );
    assert_eq!(
        client.stat(&name).await.unwrap().open_count,
        1,
        "the failed open holds no handle"
    );
    assert_eq!(read_str(&checkpoint, "s").await, b"kept");
}

#[tokio::test]
async fn open_flags_other_than_read_write_create_are_bad_flag() {
    let client = connect().await;
    let name = unique("bad-open-flag");
    for extra in [0x8u32, 0x10, 0x100, 0x8000_0000] {
        let flags = OpenFlags(rwc().0 | extra);
        expect_code(
            client.open(&name, Some(attrs()), flags).await,
            ErrorCode::BadFlag,
        );
    }
    assert!(!exists(&client, &name).await, "nothing was created");
    let checkpoint = create(&client, &name, attrs()).await;
    expect_code(
        client
            .open(&name, None, OpenFlags(OpenFlags::READ.0 | 0x8))
            .await,
        ErrorCode::BadFlag,
    );
    assert_eq!(client.stat(&name).await.unwrap().open_count, 1);
    checkpoint.close().await.unwrap();
}

#[tokio::test]
async fn create_with_unknown_creation_flags_is_bad_flag() {
    let client = connect().await;
    let name = unique("bad-creation-flag");
    for extra in [0x200u32, 0x1000, 0x8000_0000] {
        let attributes = CreationAttributes {
            creation_flags: CreationFlags(CreationFlags::WR_ACTIVE_REPLICA.0 | extra),
            ..attrs()
        };
        expect_code(
            client.open(&name, Some(attributes), rwc()).await,
            ErrorCode::BadFlag,
        );
    }
    assert!(!exists(&client, &name).await);
}

#[tokio::test]
async fn create_without_update_mode_is_invalid_parameter() {
    let client = connect().await;
    let name = unique("no-update-mode");
    for flags in [
        CreationFlags(0),
        CreationFlags::CHECKPOINT_COLLOCATED,
        CreationFlags::DISTRIBUTED | CreationFlags::WR_ALL_SAFE,
        CreationFlags::ALL_OPEN_ARE_REPLICAS | CreationFlags::PEER_TO_PEER_REPLICA,
    ] {
        let attributes = CreationAttributes {
            creation_flags: flags,
            ..attrs()
        };
        expect_code(
            client.open(&name, Some(attributes), rwc()).await,
            ErrorCode::InvalidParameter,
        );
    }
    assert!(!exists(&client, &name).await);
}

#[tokio::test]
async fn create_with_several_update_modes_is_invalid_parameter() {
    let client = connect().await;
    let name = unique("two-update-modes");
    for flags in [
        CreationFlags::WR_ALL_REPLICAS | CreationFlags::WR_ACTIVE_REPLICA,
        CreationFlags::WR_ACTIVE_REPLICA | CreationFlags::WR_ACTIVE_REPLICA_WEAK,
        CreationFlags::WR_ALL_REPLICAS | CreationFlags::WR_ACTIVE_REPLICA_WEAK,
        CreationFlags::WR_ALL_REPLICAS
            | CreationFlags::WR_ACTIVE_REPLICA
            | CreationFlags::WR_ACTIVE_REPLICA_WEAK,
    ] {
        let attributes = CreationAttributes {
            creation_flags: flags,
            ..attrs()
        };
        expect_code(
            client.open(&name, Some(attributes), rwc()).await,
            ErrorCode::InvalidParameter,
        );
    }
    assert!(!exists(&client, &name).await);
}

#[tokio::test]
async fn create_with_each_single_update_mode_is_ok() {
    let client = connect().await;
    for flags in [
        CreationFlags::WR_ALL_REPLICAS,
        CreationFlags::WR_ACTIVE_REPLICA,
        CreationFlags::WR_ACTIVE_REPLICA_WEAK,
        CreationFlags::WR_ACTIVE_REPLICA | CreationFlags::WR_ALL_SAFE,
        CreationFlags::WR_ALL_REPLICAS
            | CreationFlags::DISTRIBUTED
            | CreationFlags::CHECKPOINT_COLLOCATED,
        CreationFlags::WR_ACTIVE_REPLICA_WEAK | CreationFlags::ALL_OPEN_ARE_REPLICAS,
    ] {
        let name = unique("one-update-mode");
        let attributes = CreationAttributes {
            creation_flags: flags,
            ..attrs()
        };
        let checkpoint = create(&client, &name, attributes.clone()).await;
        assert!(checkpoint.created());
        section(&checkpoint, "s", b"mode").await;
        assert_eq!(read_str(&checkpoint, "s").await, b"mode");
        assert_eq!(checkpoint.status().await.unwrap().attributes, attributes);
        checkpoint.close().await.unwrap();
    }
}

#[tokio::test]
async fn create_checkpoint_size_over_sections_times_section_size_is_invalid_parameter() {
    let client = connect().await;
    let name = unique("capacity");
    expect_code(
        client
            .open(&name, Some(limits(4, 100, 401, 8)), rwc())
            .await,
        ErrorCode::InvalidParameter,
    );
    expect_code(
        client
            .open(&name, Some(limits(1, 100, 101, 0)), rwc())
            .await,
        ErrorCode::InvalidParameter,
    );
    assert!(!exists(&client, &name).await);
    let checkpoint = create(&client, &name, limits(4, 100, 400, 8)).await;
    assert_eq!(
        checkpoint
            .status()
            .await
            .unwrap()
            .attributes
            .checkpoint_size,
        400
    );
}

#[tokio::test]
async fn create_with_invalid_limits_is_invalid_parameter() {
    let client = connect().await;
    let name = unique("bad-limits");
    let cases = [
        CreationAttributes {
            max_sections: 0,
            checkpoint_size: 0,
            ..attrs()
        },
        CreationAttributes {
            retention_duration_ns: -1,
            ..attrs()
        },
        CreationAttributes {
            max_section_id_size: 0,
            ..attrs()
        },
        CreationAttributes {
            max_section_id_size: ckpt_proto::SECTION_ID_BYTES_MAX + 1,
            ..attrs()
        },
    ];
    for attributes in cases {
        let result = client.open(&name, Some(attributes.clone()), rwc()).await;
        let error = expect_code(result, ErrorCode::InvalidParameter);
        assert!(
            !error.message.is_empty(),
            "{attributes:?}: the error says why"
        );
    }
    assert!(!exists(&client, &name).await);
}

#[tokio::test]
async fn reopen_with_identical_attributes_is_ok_and_shares_the_instance() {
    let client = connect().await;
    let other = connect().await;
    let name = unique("reopen-same");
    let first = create(&client, &name, attrs()).await;
    section(&first, "s", b"shared").await;
    let second = create(&other, &name, attrs()).await;
    assert!(!second.created(), "the second open found the checkpoint");
    assert_eq!(read_str(&second, "s").await, b"shared");
    second.write(vec![we("s", 0, b"SH")]).await.unwrap();
    assert_eq!(read_str(&first, "s").await, b"SHared");
    assert_eq!(client.stat(&name).await.unwrap().open_count, 2);
}

#[tokio::test]
async fn reopen_with_only_a_different_retention_is_ok() {
    let client = connect().await;
    let name = unique("reopen-retention");
    let first = create(&client, &name, attrs()).await;
    section(&first, "s", b"data").await;
    for retention in [0, 5_000_000_000, TIME_END - 1] {
        let again = client
            .open(&name, Some(with_retention(retention)), rwc())
            .await
            .unwrap();
        assert!(!again.created());
        assert_eq!(read_str(&again, "s").await, b"data");
        again.close().await.unwrap();
    }
    assert!(
        exists(&client, &name).await,
        "still open through the first handle"
    );
}

#[tokio::test]
async fn reopen_with_different_attributes_is_already_exist() {
    let client = connect().await;
    let name = unique("reopen-different");
    let checkpoint = create(&client, &name, attrs()).await;
    section(&checkpoint, "s", b"untouched").await;
    let base = attrs();
    let different = [
        CreationAttributes {
            creation_flags: CreationFlags::WR_ALL_REPLICAS,
            ..base.clone()
        },
        CreationAttributes {
            creation_flags: CreationFlags::WR_ACTIVE_REPLICA | CreationFlags::CHECKPOINT_COLLOCATED,
            ..base.clone()
        },
        CreationAttributes {
            checkpoint_size: base.checkpoint_size - 1,
            ..base.clone()
        },
        CreationAttributes {
            max_sections: base.max_sections + 1,
            ..base.clone()
        },
        CreationAttributes {
            max_section_size: base.max_section_size + 1,
            ..base.clone()
        },
        CreationAttributes {
            max_section_id_size: base.max_section_id_size + 1,
            ..base.clone()
        },
    ];
    // The error names the attribute that differs (issue #12, point 8).
    let named = [
        "creationFlags",
        "creationFlags",
        "checkpointSize",
        "maxSections",
        "maxSectionSize",
        "maxSectionIdSize",
    ];
    for (attributes, attribute) in different.into_iter().zip(named) {
        let refused = client.open(&name, Some(attributes), rwc()).await;
        let Err(error) = refused else {
            panic!("reopened with other attributes: {refused:?}")
        };
        assert_eq!(error.code, ErrorCode::AlreadyExist, "{error:?}");
        assert!(
            error.message.contains(attribute) && error.message.contains("(asked "),
            "{attribute} not named: {error:?}"
        );
    }
    let status = checkpoint.status().await.unwrap();
    assert_eq!(status.attributes, attrs());
    assert_eq!((status.number_of_sections, status.memory_used), (1, 9));
    assert_eq!(read_str(&checkpoint, "s").await, b"untouched");
    assert_eq!(client.stat(&name).await.unwrap().open_count, 1);
}

#[tokio::test]
async fn name_of_256_bytes_is_accepted() {
    let client = connect().await;
    let mut bytes = unique("long").as_bytes().to_vec();
    bytes.resize(256, b'n');
    let name = CheckpointName::new(bytes).unwrap();
    let checkpoint = create(&client, &name, attrs()).await;
    section(&checkpoint, "s", b"long name").await;
    let again = open(&client, &name, OpenFlags::READ).await;
    assert_eq!(read_str(&again, "s").await, b"long name");
    assert_eq!(client.stat(&name).await.unwrap().name.as_bytes().len(), 256);
}

#[tokio::test]
async fn name_of_257_bytes_is_name_too_long_in_the_client_library() {
    let client = connect().await;
    let mut bytes = unique("toolong-lib").as_bytes().to_vec();
    bytes.resize(257, b'n');
    // The library cannot even build such a name, so it cannot be opened.
    let error = CheckpointName::new(bytes.clone()).unwrap_err();
    assert_eq!(error.code, ErrorCode::NameTooLong);
    bytes.truncate(256);
    let fits = CheckpointName::new(bytes).unwrap();
    expect_code(
        client.open(&fits, None, OpenFlags::READ).await,
        ErrorCode::NotExist,
    );
}

#[tokio::test]
async fn name_of_257_bytes_on_the_wire_is_name_too_long() {
    // A client that does not validate (another language binding) sends a
    // 257-byte name: the server answers NAME_TOO_LONG, with or without
    // CREATE, and keeps the connection.
    let mut bytes = unique("toolong-wire").as_bytes().to_vec();
    bytes.resize(257, b'n');
    let addr = shared_addr();
    // The same request with 256 bytes is accepted (the hand-made frame is right).
    let response = raw_open_with_name(&addr, &bytes[..256], Some(attrs()), rwc());
    assert!(
        matches!(response, Ok(Reply::Opened { created: true, .. })),
        "{response:?}"
    );
    let response = raw_open_with_name(&addr, &bytes, Some(attrs()), rwc());
    assert_eq!(raw_code(&response), ErrorCode::NameTooLong, "{response:?}");
    let response = raw_open_with_name(&addr, &bytes, None, rw());
    assert_eq!(raw_code(&response), ErrorCode::NameTooLong, "{response:?}");
    let client = connect().await;
    let listed = client.list().await.unwrap();
    assert!(
        !listed.iter().any(|c| c.name.as_bytes().len() > 256),
        "a 257-byte name was created"
    );
}

#[tokio::test]
async fn empty_name_is_invalid_parameter() {
    assert_eq!(
        CheckpointName::new(Vec::new()).unwrap_err().code,
        ErrorCode::InvalidParameter
    );
    let addr = shared_addr();
    let one_byte = unique("x").as_bytes().to_vec();
    let response = raw_open_with_name(&addr, &one_byte, Some(attrs()), rwc());
    assert!(
        matches!(response, Ok(Reply::Opened { created: true, .. })),
        "{response:?}"
    );
    let response = raw_open_with_name(&addr, b"", Some(attrs()), rwc());
    assert_eq!(
        raw_code(&response),
        ErrorCode::InvalidParameter,
        "{response:?}"
    );
    let client = connect().await;
    assert!(!client
        .list()
        .await
        .unwrap()
        .iter()
        .any(|c| c.name.as_bytes().is_empty()));
}

#[tokio::test]
async fn names_are_arbitrary_bytes_compared_exactly() {
    let client = connect().await;
    let base = unique("bytes");
    let mut binary = base.as_bytes().to_vec();
    binary.extend_from_slice(&[0, 0xff, b'\n', 0x80]);
    let binary = CheckpointName::new(binary).unwrap();
    let upper = CheckpointName::new(base.as_bytes().to_ascii_uppercase()).unwrap();
    let a = create(&client, &binary, attrs()).await;
    let b = create(&client, &base, attrs()).await;
    let c = create(&client, &upper, attrs()).await;
    assert!(
        a.created() && b.created() && c.created(),
        "three distinct names"
    );
    section(&a, "s", b"binary").await;
    section(&b, "s", b"base").await;
    section(&c, "s", b"upper").await;
    let again = open(&client, &binary, OpenFlags::READ).await;
    assert_eq!(read_str(&again, "s").await, b"binary");
    assert_eq!(read_str(&b, "s").await, b"base");
    assert_eq!(client.stat(&binary).await.unwrap().name, binary);
}

#[tokio::test]
async fn list_and_stat_report_checkpoints_and_open_counts() {
    let client = connect().await;
    let name = unique("list");
    let one = create(&client, &name, attrs()).await;
    let two = open(&client, &name, OpenFlags::READ).await;
    section(&one, "s", b"12345").await;
    let info = client.stat(&name).await.unwrap();
    assert_eq!(info.open_count, 2);
    assert_eq!(
        (info.status.number_of_sections, info.status.memory_used),
        (1, 5)
    );
    let listed = client.list().await.unwrap();
    let entry = listed.iter().find(|c| c.name == name).expect("listed");
    assert_eq!(entry.status, info.status);
    two.close().await.unwrap();
    assert_eq!(client.stat(&name).await.unwrap().open_count, 1);
    one.close().await.unwrap();
    assert_eq!(client.stat(&name).await.unwrap().open_count, 0);
}

// ───────────────────────────── access and handles ─────────────────────────────

#[tokio::test]
async fn read_only_handle_rejects_every_write_operation() {
    let client = connect().await;
    let name = unique("read-only");
    let attributes = CreationAttributes {
        creation_flags: CreationFlags::WR_ACTIVE_REPLICA | CreationFlags::CHECKPOINT_COLLOCATED,
        ..attrs()
    };
    let writer = create(&client, &name, attributes).await;
    section(&writer, "s", b"original").await;
    let reader = open(&client, &name, OpenFlags::READ).await;
    let denied = ErrorCode::OpNotPermitted;
    expect_code(
        reader.section_create(forever("t"), b"x".to_vec()).await,
        denied,
    );
    expect_code(reader.section_delete(&sid("s")).await, denied);
    expect_code(
        reader
            .section_expiration_time_set(&sid("s"), in_ms(60_000))
            .await,
        denied,
    );
    expect_code(
        reader.section_overwrite(&sid("s"), b"new".to_vec()).await,
        denied,
    );
    expect_code(reader.write(vec![we("s", 0, b"W")]).await, denied);
    expect_code(reader.synchronize().await, denied);
    expect_code(reader.active_replica_set().await, denied);
    // Nothing changed, and reads work.
    assert_eq!(read_str(&reader, "s").await, b"original");
    let sections = iterate_all(&reader, SectionsChosen::Any, 0).await;
    assert_eq!(ids_of(&sections), ["s"]);
    assert_eq!(sections[0].expiration_time, TIME_END);
    let status = reader.status().await.unwrap();
    assert_eq!((status.number_of_sections, status.memory_used), (1, 8));
}

#[tokio::test]
async fn write_only_handle_rejects_read_operations() {
    let client = connect().await;
    let name = unique("write-only");
    let creator = create(&client, &name, attrs()).await;
    section(&creator, "s", b"abc").await;
    let writer = open(&client, &name, OpenFlags::WRITE).await;
    let denied = ErrorCode::OpNotPermitted;
    expect_code(writer.read(vec![re("s", 0, None)]).await, denied);
    expect_code(writer.iterate(SectionsChosen::Any, 0).await, denied);
    expect_code(writer.subscribe(None).await, denied);
    // Writes work through it.
    writer.write(vec![we("s", 3, b"def")]).await.unwrap();
    writer
        .section_create(forever("t"), b"t".to_vec())
        .await
        .unwrap();
    writer.synchronize().await.unwrap();
    assert_eq!(read_str(&creator, "s").await, b"abcdef");
    assert_eq!(read_str(&creator, "t").await, b"t");
    assert_eq!(writer.status().await.unwrap().number_of_sections, 2);
}

#[tokio::test]
async fn status_retention_and_close_need_neither_read_nor_write() {
    let client = connect().await;
    let name = unique("no-access");
    let creator = create(&client, &name, attrs()).await;
    section(&creator, "s", b"xyz").await;
    let bare = open(&client, &name, OpenFlags(0)).await;
    let status = bare.status().await.unwrap();
    assert_eq!((status.number_of_sections, status.memory_used), (1, 3));
    bare.retention_duration_set(7_000_000_000).await.unwrap();
    assert_eq!(
        creator
            .status()
            .await
            .unwrap()
            .attributes
            .retention_duration_ns,
        7_000_000_000
    );
    expect_code(
        bare.read(vec![re("s", 0, None)]).await,
        ErrorCode::OpNotPermitted,
    );
    expect_code(
        bare.write(vec![we("s", 0, b"q")]).await,
        ErrorCode::OpNotPermitted,
    );
    bare.close().await.unwrap();
    assert_eq!(read_str(&creator, "s").await, b"xyz");
}

#[tokio::test]
async fn handle_is_invalid_after_close() {
    let client = connect().await;
    let name = unique("closed-handle");
    let checkpoint = create(&client, &name, attrs()).await;
    section(&checkpoint, "s", b"still here").await;
    let keeper = open(&client, &name, OpenFlags::READ).await;
    let handle = checkpoint.handle();
    checkpoint.close().await.unwrap();
    for request in handle_requests(handle) {
        let what = format!("{request:?}");
        let error = expect_code(client.request(request).await, ErrorCode::InvalidHandle);
        assert!(!error.message.is_empty(), "{what}");
    }
    // The checkpoint itself is untouched.
    assert_eq!(read_str(&keeper, "s").await, b"still here");
    assert_eq!(client.stat(&name).await.unwrap().open_count, 1);
}

#[tokio::test]
async fn never_issued_and_foreign_handles_are_invalid() {
    let owner = connect().await;
    let name = unique("foreign-handle");
    let checkpoint = create(&owner, &name, attrs()).await;
    section(&checkpoint, "s", b"mine").await;
    // A connection with no handles of its own: neither a made-up handle nor
    // another connection's handle is valid on it.
    let stranger = connect().await;
    for handle in [checkpoint.handle(), 987_654_321] {
        for request in handle_requests(handle) {
            expect_code(stranger.request(request).await, ErrorCode::InvalidHandle);
        }
    }
    assert_eq!(read_str(&checkpoint, "s").await, b"mine");
    assert_eq!(owner.stat(&name).await.unwrap().open_count, 1);
}

// ───────────────────────────── sections ─────────────────────────────

#[tokio::test]
async fn section_create_with_initial_data_reads_back() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("section-create"), attrs()).await;
    let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    let id = checkpoint
        .section_create(forever("blob"), data.clone())
        .await
        .unwrap();
    assert_eq!(id, sid("blob"));
    let empty = checkpoint
        .section_create(forever("empty"), Vec::new())
        .await
        .unwrap();
    assert_eq!(empty, sid("empty"));
    assert_eq!(read_str(&checkpoint, "blob").await, data);
    assert_eq!(read_str(&checkpoint, "empty").await, b"");
    let sections = iterate_all(&checkpoint, SectionsChosen::Any, 0).await;
    let blob = sections
        .iter()
        .find(|d| d.section_id == sid("blob"))
        .unwrap();
    assert_eq!((blob.section_size, blob.state), (1000, SectionState::Valid));
}

#[tokio::test]
async fn section_create_duplicate_id_is_already_exist() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("dup-section"), attrs()).await;
    section(&checkpoint, "s", b"first").await;
    expect_code(
        checkpoint
            .section_create(forever("s"), b"second".to_vec())
            .await,
        ErrorCode::AlreadyExist,
    );
    assert_eq!(read_str(&checkpoint, "s").await, b"first");
    let status = checkpoint.status().await.unwrap();
    assert_eq!((status.number_of_sections, status.memory_used), (1, 5));
}

#[tokio::test]
async fn section_create_beyond_max_sections_is_no_space() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("max-sections"), limits(3, 100, 300, 8)).await;
    for id in ["a", "b", "c"] {
        section(&checkpoint, id, id.as_bytes()).await;
    }
    expect_code(
        checkpoint.section_create(forever("d"), b"d".to_vec()).await,
        ErrorCode::NoSpace,
    );
    expect_code(
        checkpoint.section_create(generated(), b"g".to_vec()).await,
        ErrorCode::NoSpace,
    );
    expect_code(
        checkpoint.read(vec![re("d", 0, None)]).await,
        ErrorCode::NotExist,
    );
    assert_eq!(checkpoint.status().await.unwrap().number_of_sections, 3);
    checkpoint.section_delete(&sid("b")).await.unwrap();
    section(&checkpoint, "d", b"d").await;
    assert_eq!(
        ids_of(&iterate_all(&checkpoint, SectionsChosen::Any, 0).await),
        ["a", "c", "d"]
    );
}

#[tokio::test]
async fn section_id_longer_than_max_section_id_size_is_invalid_parameter() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("id-size"), limits(8, 100, 800, 4)).await;
    section(&checkpoint, "abcd", b"fits").await;
    expect_code(
        checkpoint
            .section_create(forever("abcde"), b"x".to_vec())
            .await,
        ErrorCode::InvalidParameter,
    );
    assert_eq!(
        ids_of(&iterate_all(&checkpoint, SectionsChosen::Any, 0).await),
        ["abcd"]
    );
    // Generated ids fit, too.
    let generated_id = checkpoint
        .section_create(generated(), Vec::new())
        .await
        .unwrap();
    assert!(!generated_id.is_default());
    assert!(
        generated_id.as_bytes().len() <= 4,
        "generated id {generated_id} is over maxSectionIdSize"
    );
}

#[tokio::test]
async fn section_initial_data_over_max_section_size_is_invalid_parameter() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("initial-size"), limits(4, 10, 40, 8)).await;
    expect_code(
        checkpoint.section_create(forever("big"), vec![7; 11]).await,
        ErrorCode::InvalidParameter,
    );
    expect_code(
        checkpoint.read(vec![re("big", 0, None)]).await,
        ErrorCode::NotExist,
    );
    section(&checkpoint, "max", &[7; 10]).await;
    assert_eq!(read_str(&checkpoint, "max").await, vec![7; 10]);
    assert_eq!(checkpoint.status().await.unwrap().memory_used, 10);
}

#[tokio::test]
async fn section_create_beyond_checkpoint_size_is_no_space() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("ckpt-size-create"), limits(4, 100, 100, 8)).await;
    section(&checkpoint, "a", &[1; 60]).await;
    expect_code(
        checkpoint.section_create(forever("b"), vec![2; 41]).await,
        ErrorCode::NoSpace,
    );
    expect_code(
        checkpoint.read(vec![re("b", 0, None)]).await,
        ErrorCode::NotExist,
    );
    section(&checkpoint, "b", &[2; 40]).await;
    let status = checkpoint.status().await.unwrap();
    assert_eq!((status.number_of_sections, status.memory_used), (2, 100));
    // Empty sections still fit when the checkpoint is full.
    section(&checkpoint, "c", b"").await;
    expect_code(
        checkpoint.section_create(forever("d"), vec![1]).await,
        ErrorCode::NoSpace,
    );
}

#[tokio::test]
async fn section_create_with_past_expiration_is_invalid_parameter() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("past-expiry"), attrs()).await;
    for at in [in_ms(-10_000), 1, 0] {
        expect_code(
            checkpoint
                .section_create(expiring("old", at), b"x".to_vec())
                .await,
            ErrorCode::InvalidParameter,
        );
    }
    assert_eq!(checkpoint.status().await.unwrap().number_of_sections, 0);
    let future = in_ms(600_000);
    checkpoint
        .section_create(expiring("new", future), b"x".to_vec())
        .await
        .unwrap();
    let sections = iterate_all(&checkpoint, SectionsChosen::Any, 0).await;
    assert_eq!(sections.len(), 1);
    assert_eq!(sections[0].expiration_time, future);
}

#[tokio::test]
async fn section_delete_removes_the_section_and_a_missing_one_is_not_exist() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("section-delete"), attrs()).await;
    section(&checkpoint, "a", b"aaaa").await;
    section(&checkpoint, "b", b"bb").await;
    checkpoint.section_delete(&sid("a")).await.unwrap();
    expect_code_at(
        checkpoint.read(vec![re("a", 0, None)]).await,
        ErrorCode::NotExist,
        0,
    );
    expect_code(
        checkpoint.section_delete(&sid("a")).await,
        ErrorCode::NotExist,
    );
    expect_code(
        checkpoint.section_delete(&sid("never")).await,
        ErrorCode::NotExist,
    );
    expect_code(
        checkpoint.section_overwrite(&sid("a"), b"x".to_vec()).await,
        ErrorCode::NotExist,
    );
    let status = checkpoint.status().await.unwrap();
    assert_eq!((status.number_of_sections, status.memory_used), (1, 2));
    assert_eq!(read_str(&checkpoint, "b").await, b"bb");
    // The id can be used again.
    section(&checkpoint, "a", b"again").await;
    assert_eq!(read_str(&checkpoint, "a").await, b"again");
}

#[tokio::test]
async fn generated_section_ids_are_unique() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("generated"), attrs()).await;
    let mut ids = Vec::new();
    for i in 0..8u8 {
        let id = checkpoint
            .section_create(generated(), vec![i; usize::from(i)])
            .await
            .unwrap();
        assert!(!id.is_default(), "a generated id is never the default id");
        assert!(id.as_bytes().len() as u64 <= attrs().max_section_id_size);
        assert!(!ids.contains(&id), "{id} generated twice");
        ids.push(id);
    }
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(read_all(&checkpoint, id).await, vec![i as u8; i]);
    }
    assert_eq!(checkpoint.status().await.unwrap().number_of_sections, 8);
}

#[tokio::test]
async fn generated_section_ids_are_never_reused_after_delete() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("generated-reuse"), attrs()).await;
    let mut seen = Vec::new();
    for round in 0..5u8 {
        let id = checkpoint
            .section_create(generated(), vec![round])
            .await
            .unwrap();
        assert!(
            !seen.contains(&id),
            "round {round}: id {id} was used before"
        );
        seen.push(id.clone());
        checkpoint.section_delete(&id).await.unwrap();
    }
    assert_eq!(checkpoint.status().await.unwrap().number_of_sections, 0);
}

#[tokio::test]
async fn generated_section_ids_avoid_explicit_ids() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("generated-explicit"), attrs()).await;
    // Take the ids a counter would most likely produce.
    for i in 0..8 {
        section(&checkpoint, &i.to_string(), b"explicit").await;
    }
    let mut generated_ids = Vec::new();
    for _ in 0..4 {
        let id = checkpoint
            .section_create(generated(), b"generated".to_vec())
            .await
            .unwrap();
        generated_ids.push(id);
    }
    for id in &generated_ids {
        assert_eq!(read_all(&checkpoint, id).await, b"generated");
    }
    for i in 0..8 {
        assert_eq!(
            read_str(&checkpoint, &i.to_string()).await,
            b"explicit",
            "explicit section {i} kept"
        );
    }
    assert_eq!(checkpoint.status().await.unwrap().number_of_sections, 12);
}

// ───────────────────────────── default section ─────────────────────────────

#[tokio::test]
async fn default_section_exists_iff_max_sections_is_one() {
    let client = connect().await;
    let single = create(&client, &unique("default-yes"), default_section_attrs()).await;
    let status = single.status().await.unwrap();
    assert_eq!((status.number_of_sections, status.memory_used), (1, 0));
    assert_eq!(read_all(&single, &SectionId::DEFAULT).await, b"");
    let sections = iterate_all(&single, SectionsChosen::Any, 0).await;
    assert_eq!(sections.len(), 1);
    assert!(sections[0].section_id.is_default());
    assert_eq!(
        (sections[0].expiration_time, sections[0].section_size),
        (TIME_END, 0)
    );

    let multi = create(&client, &unique("default-no"), limits(2, 100, 200, 8)).await;
    assert_eq!(multi.status().await.unwrap().number_of_sections, 0);
    let element = ReadElement {
        section_id: SectionId::DEFAULT,
        offset: 0,
        size: None,
    };
    expect_code_at(multi.read(vec![element]).await, ErrorCode::NotExist, 0);
    expect_code(
        multi
            .section_overwrite(&SectionId::DEFAULT, b"x".to_vec())
            .await,
        ErrorCode::NotExist,
    );
    expect_code(
        multi.section_delete(&SectionId::DEFAULT).await,
        ErrorCode::NotExist,
    );
    assert!(iterate_all(&multi, SectionsChosen::Any, 0).await.is_empty());
}

#[tokio::test]
async fn default_section_is_written_overwritten_and_read() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("default-rw"), default_section_attrs()).await;
    let default = SectionId::DEFAULT;
    checkpoint
        .section_overwrite(&default, b"hello".to_vec())
        .await
        .unwrap();
    assert_eq!(read_all(&checkpoint, &default).await, b"hello");
    let element = WriteElement {
        section_id: default.clone(),
        offset: 8,
        data: b"!!".to_vec(),
    };
    checkpoint.write(vec![element]).await.unwrap();
    assert_eq!(read_all(&checkpoint, &default).await, b"hello\0\0\0!!");
    assert_eq!(checkpoint.status().await.unwrap().memory_used, 10);
    checkpoint
        .section_overwrite(&default, b"hi".to_vec())
        .await
        .unwrap();
    assert_eq!(read_all(&checkpoint, &default).await, b"hi");
    let status = checkpoint.status().await.unwrap();
    assert_eq!((status.number_of_sections, status.memory_used), (1, 2));
}

#[tokio::test]
async fn default_section_cannot_be_deleted() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("default-delete"), default_section_attrs()).await;
    checkpoint
        .section_overwrite(&SectionId::DEFAULT, b"keep".to_vec())
        .await
        .unwrap();
    expect_code(
        checkpoint.section_delete(&SectionId::DEFAULT).await,
        ErrorCode::InvalidParameter,
    );
    assert_eq!(read_all(&checkpoint, &SectionId::DEFAULT).await, b"keep");
    assert_eq!(checkpoint.status().await.unwrap().number_of_sections, 1);
}

#[tokio::test]
async fn default_section_cannot_get_an_expiration_time() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("default-expiry"), default_section_attrs()).await;
    checkpoint
        .section_overwrite(&SectionId::DEFAULT, b"keep".to_vec())
        .await
        .unwrap();
    for at in [in_ms(1_000), in_ms(3_600_000)] {
        expect_code(
            checkpoint
                .section_expiration_time_set(&SectionId::DEFAULT, at)
                .await,
            ErrorCode::InvalidParameter,
        );
    }
    let sections = iterate_all(&checkpoint, SectionsChosen::Forever, 0).await;
    assert_eq!(sections.len(), 1);
    assert_eq!(sections[0].expiration_time, TIME_END);
    assert_eq!(read_all(&checkpoint, &SectionId::DEFAULT).await, b"keep");
}

#[tokio::test]
async fn section_create_with_max_sections_one_is_already_exist() {
    // DESIGN.md §2 "limits": the default section holds the only slot, so
    // any SectionCreate answers ALREADY_EXIST (as OpenSAF does), whatever
    // the id: explicit, generated, too long, or the default one itself.
    let client = connect().await;
    let attributes = CreationAttributes {
        max_section_id_size: 8,
        ..default_section_attrs()
    };
    let checkpoint = create(&client, &unique("default-full"), attributes).await;
    let default_id = SectionCreationAttributes {
        section_id: Some(SectionId::DEFAULT),
        expiration_time: TIME_END,
    };
    for attributes in [
        forever("x"),
        generated(),
        forever("far-too-long-id"),
        default_id,
    ] {
        expect_code(
            checkpoint
                .section_create(attributes.clone(), b"x".to_vec())
                .await,
            ErrorCode::AlreadyExist,
        );
    }
    let status = checkpoint.status().await.unwrap();
    assert_eq!((status.number_of_sections, status.memory_used), (1, 0));
    assert_eq!(read_all(&checkpoint, &SectionId::DEFAULT).await, b"");
}

#[tokio::test]
async fn default_section_cannot_be_created_explicitly() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("default-create"), attrs()).await;
    let attributes = SectionCreationAttributes {
        section_id: Some(SectionId::DEFAULT),
        expiration_time: TIME_END,
    };
    expect_code(
        checkpoint.section_create(attributes, b"x".to_vec()).await,
        ErrorCode::InvalidParameter,
    );
    assert_eq!(checkpoint.status().await.unwrap().number_of_sections, 0);
    assert!(iterate_all(&checkpoint, SectionsChosen::Any, 0)
        .await
        .is_empty());
}

// ───────────────────────────── write ─────────────────────────────

#[tokio::test]
async fn write_of_several_elements_across_sections() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("write-multi"), attrs()).await;
    section(&checkpoint, "a", b"aaaaaa").await;
    section(&checkpoint, "b", b"bbbb").await;
    checkpoint
        .write(vec![
            we("a", 0, b"XX"),
            we("b", 2, b"YY"),
            we("a", 4, b"ZZ"),
        ])
        .await
        .unwrap();
    assert_eq!(read_str(&checkpoint, "a").await, b"XXaaZZ");
    assert_eq!(read_str(&checkpoint, "b").await, b"bbYY");
    let status = checkpoint.status().await.unwrap();
    assert_eq!(
        status.memory_used, 10,
        "in-place writes do not change sizes"
    );
}

#[tokio::test]
async fn write_is_atomic_when_the_third_element_is_invalid() {
    let client = connect().await;
    let name = unique("write-atomic");
    let checkpoint = create(&client, &name, limits(4, 16, 64, 8)).await;
    section(&checkpoint, "a", b"aaaa").await;
    section(&checkpoint, "b", b"bbbb").await;
    let seq_before = client.stat(&name).await.unwrap().seq;
    // Element 2 ends at 17 > maxSectionSize 16.
    let elements = vec![
        we("a", 0, b"AAAAAAAA"),
        we("b", 4, b"BBBB"),
        we("a", 10, b"1234567"),
    ];
    expect_code_at(
        checkpoint.write(elements).await,
        ErrorCode::InvalidParameter,
        2,
    );
    assert_eq!(
        read_str(&checkpoint, "a").await,
        b"aaaa",
        "element 0 was not applied"
    );
    assert_eq!(
        read_str(&checkpoint, "b").await,
        b"bbbb",
        "element 1 was not applied"
    );
    let info = client.stat(&name).await.unwrap();
    assert_eq!(
        (info.status.number_of_sections, info.status.memory_used),
        (2, 8)
    );
    assert_eq!(info.seq, seq_before, "nothing was logged");
}

#[tokio::test]
async fn write_is_atomic_when_an_element_names_a_missing_section() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("write-missing"), attrs()).await;
    section(&checkpoint, "a", b"aaaa").await;
    section(&checkpoint, "b", b"bbbb").await;
    let elements = vec![
        we("a", 0, b"A"),
        we("b", 0, b"B"),
        we("nope", 0, b"N"),
        we("a", 1, b"A"),
    ];
    expect_code_at(checkpoint.write(elements).await, ErrorCode::NotExist, 2);
    assert_eq!(read_str(&checkpoint, "a").await, b"aaaa");
    assert_eq!(read_str(&checkpoint, "b").await, b"bbbb");
    expect_code(
        checkpoint.read(vec![re("nope", 0, None)]).await,
        ErrorCode::NotExist,
    );
}

#[tokio::test]
async fn write_beyond_checkpoint_size_is_no_space_with_index() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("write-ckpt-size"), limits(4, 100, 100, 8)).await;
    section(&checkpoint, "a", &[1; 50]).await;
    section(&checkpoint, "b", &[2; 40]).await;
    // Element 0 grows a by 5 (95 total), element 1 grows b by 6 (101).
    let elements = vec![we("a", 50, &[3; 5]), we("b", 40, &[4; 6])];
    expect_code_at(checkpoint.write(elements).await, ErrorCode::NoSpace, 1);
    assert_eq!(read_str(&checkpoint, "a").await, vec![1; 50]);
    assert_eq!(read_str(&checkpoint, "b").await, vec![2; 40]);
    assert_eq!(checkpoint.status().await.unwrap().memory_used, 90);
    // Exactly reaching checkpointSize is fine.
    checkpoint
        .write(vec![we("a", 50, &[3; 5]), we("b", 40, &[4; 5])])
        .await
        .unwrap();
    assert_eq!(checkpoint.status().await.unwrap().memory_used, 100);
    expect_code_at(
        checkpoint.write(vec![we("a", 55, &[0])]).await,
        ErrorCode::NoSpace,
        0,
    );
    // In-place writes need no room.
    checkpoint.write(vec![we("a", 0, &[9; 10])]).await.unwrap();
    assert_eq!(
        &read_str(&checkpoint, "a").await[..11],
        &[9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 1]
    );
}

#[tokio::test]
async fn write_offset_plus_size_over_max_section_size_is_invalid_parameter() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("write-section-size"), limits(4, 16, 64, 8)).await;
    section(&checkpoint, "a", b"").await;
    checkpoint.write(vec![we("a", 12, b"1234")]).await.unwrap();
    assert_eq!(read_str(&checkpoint, "a").await.len(), 16);
    expect_code_at(
        checkpoint.write(vec![we("a", 13, b"1234")]).await,
        ErrorCode::InvalidParameter,
        0,
    );
    expect_code_at(
        checkpoint.write(vec![we("a", 17, b"")]).await,
        ErrorCode::InvalidParameter,
        0,
    );
    expect_code_at(
        checkpoint.write(vec![we("a", u64::MAX, b"x")]).await,
        ErrorCode::InvalidParameter,
        0,
    );
    let data = read_str(&checkpoint, "a").await;
    assert_eq!(data, b"\0\0\0\0\0\0\0\0\0\0\0\x001234");
}

#[tokio::test]
async fn write_past_the_end_grows_the_section_and_zero_fills() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("zero-fill"), attrs()).await;
    section(&checkpoint, "a", b"abc").await;
    checkpoint.write(vec![we("a", 6, b"xy")]).await.unwrap();
    assert_eq!(read_str(&checkpoint, "a").await, b"abc\0\0\0xy");
    let sections = iterate_all(&checkpoint, SectionsChosen::Any, 0).await;
    assert_eq!(sections[0].section_size, 8);
    assert_eq!(checkpoint.status().await.unwrap().memory_used, 8);
    // Growth of an empty section from a far offset.
    section(&checkpoint, "b", b"").await;
    checkpoint.write(vec![we("b", 1000, b"end")]).await.unwrap();
    let data = read_str(&checkpoint, "b").await;
    assert_eq!(data.len(), 1003);
    assert!(data[..1000].iter().all(|&b| b == 0));
    assert_eq!(&data[1000..], b"end");
    assert_eq!(checkpoint.status().await.unwrap().memory_used, 1011);
}

#[tokio::test]
async fn write_elements_apply_in_order() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("write-order"), attrs()).await;
    section(&checkpoint, "a", b"").await;
    checkpoint
        .write(vec![
            we("a", 0, b"1111"),
            we("a", 2, b"22"),
            we("a", 3, b"333"),
        ])
        .await
        .unwrap();
    assert_eq!(read_str(&checkpoint, "a").await, b"112333");
    assert_eq!(checkpoint.status().await.unwrap().memory_used, 6);
}

#[tokio::test]
async fn write_without_elements_is_invalid_parameter() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("write-empty"), attrs()).await;
    section(&checkpoint, "a", b"a").await;
    expect_code(
        checkpoint.write(Vec::new()).await,
        ErrorCode::InvalidParameter,
    );
    assert_eq!(read_str(&checkpoint, "a").await, b"a");
}

// ───────────────────────────── overwrite ─────────────────────────────

#[tokio::test]
async fn overwrite_replaces_data_and_size() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("overwrite"), attrs()).await;
    section(&checkpoint, "a", b"12345678").await;
    checkpoint
        .section_overwrite(&sid("a"), b"ab".to_vec())
        .await
        .unwrap();
    assert_eq!(
        read_str(&checkpoint, "a").await,
        b"ab",
        "no trailing old bytes"
    );
    assert_eq!(
        iterate_all(&checkpoint, SectionsChosen::Any, 0).await[0].section_size,
        2
    );
    assert_eq!(checkpoint.status().await.unwrap().memory_used, 2);
    checkpoint
        .section_overwrite(&sid("a"), vec![5; 300])
        .await
        .unwrap();
    assert_eq!(read_str(&checkpoint, "a").await, vec![5; 300]);
    assert_eq!(checkpoint.status().await.unwrap().memory_used, 300);
    checkpoint
        .section_overwrite(&sid("a"), Vec::new())
        .await
        .unwrap();
    assert_eq!(read_str(&checkpoint, "a").await, b"");
    let status = checkpoint.status().await.unwrap();
    assert_eq!(
        (status.number_of_sections, status.memory_used),
        (1, 0),
        "an empty section still exists"
    );
}

#[tokio::test]
async fn overwrite_of_a_missing_section_is_not_exist() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("overwrite-missing"), attrs()).await;
    expect_code(
        checkpoint
            .section_overwrite(&sid("nope"), b"x".to_vec())
            .await,
        ErrorCode::NotExist,
    );
    let status = checkpoint.status().await.unwrap();
    assert_eq!(
        (status.number_of_sections, status.memory_used),
        (0, 0),
        "overwrite does not create"
    );
}

#[tokio::test]
async fn overwrite_over_max_section_size_is_invalid_parameter() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("overwrite-size"), limits(4, 10, 40, 8)).await;
    section(&checkpoint, "a", b"old").await;
    expect_code(
        checkpoint.section_overwrite(&sid("a"), vec![1; 11]).await,
        ErrorCode::InvalidParameter,
    );
    assert_eq!(read_str(&checkpoint, "a").await, b"old");
    checkpoint
        .section_overwrite(&sid("a"), vec![1; 10])
        .await
        .unwrap();
    assert_eq!(read_str(&checkpoint, "a").await, vec![1; 10]);
}

#[tokio::test]
async fn overwrite_beyond_checkpoint_size_is_no_space() {
    let client = connect().await;
    let checkpoint = create(
        &client,
        &unique("overwrite-ckpt-size"),
        limits(4, 100, 100, 8),
    )
    .await;
    section(&checkpoint, "a", &[1; 60]).await;
    section(&checkpoint, "b", &[2; 30]).await;
    // The section's own old size does not count against it.
    checkpoint
        .section_overwrite(&sid("a"), vec![3; 70])
        .await
        .unwrap();
    assert_eq!(checkpoint.status().await.unwrap().memory_used, 100);
    expect_code(
        checkpoint.section_overwrite(&sid("a"), vec![4; 71]).await,
        ErrorCode::NoSpace,
    );
    assert_eq!(read_str(&checkpoint, "a").await, vec![3; 70]);
    assert_eq!(checkpoint.status().await.unwrap().memory_used, 100);
}

// ───────────────────────────── read ─────────────────────────────

#[tokio::test]
async fn read_size_is_the_bytes_actually_read() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("read-size"), attrs()).await;
    section(&checkpoint, "a", b"0123456789").await;
    let data = checkpoint
        .read(vec![
            re("a", 2, Some(3)),
            re("a", 8, Some(10)),
            re("a", 10, Some(5)),
            re("a", 0, Some(0)),
        ])
        .await
        .unwrap();
    assert_eq!(
        data,
        vec![b"234".to_vec(), b"89".to_vec(), Vec::new(), Vec::new()]
    );
}

#[tokio::test]
async fn read_without_a_size_reads_the_whole_section_from_the_offset() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("read-whole"), attrs()).await;
    let big: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    section(&checkpoint, "big", &big).await;
    section(&checkpoint, "a", b"0123456789").await;
    let data = checkpoint
        .read(vec![
            re("big", 0, None),
            re("a", 4, None),
            re("a", 10, None),
        ])
        .await
        .unwrap();
    assert_eq!(data[0], big);
    assert_eq!(data[1], b"456789");
    assert_eq!(data[2], b"");
}

#[tokio::test]
async fn read_at_or_past_the_end_within_max_section_size_reads_nothing() {
    // DESIGN.md §2 "read": an offset at or past the section's end, within
    // maxSectionSize, is OK with readSize 0.
    let client = connect().await;
    let checkpoint = create(&client, &unique("read-past-end"), limits(4, 64, 256, 8)).await;
    section(&checkpoint, "a", b"0123456789").await;
    section(&checkpoint, "b", b"").await;
    let data = checkpoint
        .read(vec![
            re("a", 0, Some(1)),
            re("b", 0, None),
            re("a", 10, Some(1)),
            re("a", 11, Some(1)),
            re("a", 11, None),
            re("b", 1, None),
            re("b", 63, Some(5)),
            re("a", 64, None),
        ])
        .await
        .unwrap();
    let empty: Vec<u8> = Vec::new();
    assert_eq!(
        data,
        vec![
            b"0".to_vec(),
            empty.clone(),
            empty.clone(),
            empty.clone(),
            empty.clone(),
            empty.clone(),
            empty.clone(),
            empty
        ]
    );
    assert_eq!(read_str(&checkpoint, "a").await, b"0123456789");
}

#[tokio::test]
async fn read_offset_past_max_section_size_is_invalid_parameter_with_index() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("read-past-max"), limits(4, 64, 256, 8)).await;
    section(&checkpoint, "a", b"0123456789").await;
    let elements = vec![re("a", 0, Some(1)), re("a", 11, None), re("a", 65, Some(1))];
    expect_code_at(
        checkpoint.read(elements).await,
        ErrorCode::InvalidParameter,
        2,
    );
    expect_code_at(
        checkpoint.read(vec![re("a", u64::MAX, None)]).await,
        ErrorCode::InvalidParameter,
        0,
    );
    assert_eq!(read_str(&checkpoint, "a").await, b"0123456789");
}

#[tokio::test]
async fn read_of_a_missing_section_is_not_exist_with_index() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("read-missing"), attrs()).await;
    section(&checkpoint, "a", b"a").await;
    expect_code_at(
        checkpoint
            .read(vec![re("a", 0, None), re("zz", 0, None)])
            .await,
        ErrorCode::NotExist,
        1,
    );
    expect_code_at(
        checkpoint
            .read(vec![re("zz", 0, None), re("a", 0, None)])
            .await,
        ErrorCode::NotExist,
        0,
    );
}

#[tokio::test]
async fn read_of_several_sections_keeps_the_element_order() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("read-order"), attrs()).await;
    for (id, data) in [("x", "ex"), ("y", "why"), ("z", "zed")] {
        section(&checkpoint, id, data.as_bytes()).await;
    }
    let data = checkpoint
        .read(vec![
            re("z", 0, None),
            re("x", 0, None),
            re("y", 1, Some(1)),
            re("z", 0, None),
        ])
        .await
        .unwrap();
    assert_eq!(
        data,
        vec![
            b"zed".to_vec(),
            b"ex".to_vec(),
            b"h".to_vec(),
            b"zed".to_vec()
        ]
    );
}

// ───────────────────────────── status ─────────────────────────────

#[tokio::test]
async fn status_counts_sections_and_sums_section_sizes() {
    let client = connect().await;
    let name = unique("status");
    let checkpoint = create(&client, &name, attrs()).await;
    let check = async |sections: u32, memory: u64| {
        let status = checkpoint.status().await.unwrap();
        assert_eq!(
            (status.number_of_sections, status.memory_used),
            (sections, memory)
        );
        let info = client.stat(&name).await.unwrap();
        assert_eq!(
            (info.status.number_of_sections, info.status.memory_used),
            (sections, memory)
        );
    };
    check(0, 0).await;
    section(&checkpoint, "a", &[0; 5]).await;
    section(&checkpoint, "b", &[0; 10]).await;
    section(&checkpoint, "c", b"").await;
    check(3, 15).await;
    checkpoint
        .write(vec![we("c", 3, b"xx"), we("a", 0, b"yy")])
        .await
        .unwrap();
    check(3, 20).await;
    checkpoint
        .section_overwrite(&sid("b"), vec![1; 4])
        .await
        .unwrap();
    check(3, 14).await;
    checkpoint.section_delete(&sid("a")).await.unwrap();
    check(2, 9).await;
    let total: u64 = iterate_all(&checkpoint, SectionsChosen::Any, 0)
        .await
        .iter()
        .map(|d| d.section_size)
        .sum();
    assert_eq!(total, 9);
}

#[tokio::test]
async fn status_reports_the_retention_as_last_set() {
    let client = connect().await;
    let checkpoint = create(
        &client,
        &unique("status-retention"),
        with_retention(5_000_000_000),
    )
    .await;
    assert_eq!(
        checkpoint
            .status()
            .await
            .unwrap()
            .attributes
            .retention_duration_ns,
        5_000_000_000
    );
    checkpoint
        .retention_duration_set(9_000_000_000)
        .await
        .unwrap();
    let status = checkpoint.status().await.unwrap();
    assert_eq!(status.attributes, with_retention(9_000_000_000));
}

// ───────────────────────────── expiration ─────────────────────────────

#[tokio::test]
async fn section_is_deleted_after_its_expiration_time() {
    let client = connect().await;
    let c = &client;
    with_growing_window("section expiry", 1_500, async |window_ms| {
        let checkpoint = create(c, &unique("expiry"), attrs()).await;
        section(&checkpoint, "keep", b"forever").await;
        let at = in_ms(window_ms);
        match checkpoint
            .section_create(expiring("short", at), b"short-lived".to_vec())
            .await
        {
            Ok(_) => {}
            Err(error) if error.code == ErrorCode::InvalidParameter && passed(at) => {
                return Window::TooSlow(format!("created after its expiry: {error}"))
            }
            Err(error) => panic!("create: {error}"),
        }
        match checkpoint.read(vec![re("short", 0, None)]).await {
            Ok(data) => assert_eq!(data, [b"short-lived".to_vec()]),
            Err(error) if error.code == ErrorCode::NotExist => {
                assert!(passed(at), "expired before its time")
            }
            Err(error) => panic!("read: {error}"),
        }
        let cp = &checkpoint;
        eventually("the section expires", async || {
            match cp.read(vec![re("short", 0, None)]).await {
                Ok(_) => false,
                Err(error) => {
                    assert_eq!(error.code, ErrorCode::NotExist, "{error}");
                    true
                }
            }
        })
        .await;
        assert!(passed(at), "expired before its time");
        let status = checkpoint.status().await.unwrap();
        assert_eq!((status.number_of_sections, status.memory_used), (1, 7));
        assert_eq!(
            ids_of(&iterate_all(&checkpoint, SectionsChosen::Any, 0).await),
            ["keep"]
        );
        assert_eq!(read_str(&checkpoint, "keep").await, b"forever");
        Window::Done
    })
    .await;
}

#[tokio::test]
async fn expiration_time_set_makes_a_section_expire() {
    let client = connect().await;
    let c = &client;
    with_growing_window("expiration time set", 1_500, async |window_ms| {
        let checkpoint = create(c, &unique("expiry-set"), attrs()).await;
        section(&checkpoint, "s", b"data").await;
        let at = in_ms(window_ms);
        match checkpoint.section_expiration_time_set(&sid("s"), at).await {
            Ok(()) => {}
            Err(error) if error.code == ErrorCode::InvalidParameter && passed(at) => {
                return Window::TooSlow(format!("set after the time: {error}"))
            }
            Err(error) => panic!("set: {error}"),
        }
        let sections = iterate_all(&checkpoint, SectionsChosen::Any, 0).await;
        match sections.as_slice() {
            [only] => assert_eq!(only.expiration_time, at),
            [] => return Window::TooSlow("expired before the iteration".into()),
            more => panic!("{more:?}"),
        }
        let cp = &checkpoint;
        eventually("the section expires", async || {
            cp.status().await.unwrap().number_of_sections == 0
        })
        .await;
        assert!(passed(at), "expired before its time");
        expect_code(
            checkpoint.read(vec![re("s", 0, None)]).await,
            ErrorCode::NotExist,
        );
        Window::Done
    })
    .await;
}

#[tokio::test]
async fn expiration_time_set_to_time_end_cancels_the_expiry() {
    let client = connect().await;
    let c = &client;
    with_growing_window("expiry cancelled", 1_500, async |window_ms| {
        let checkpoint = create(c, &unique("expiry-cancel"), attrs()).await;
        let at = in_ms(window_ms);
        for (id, data) in [("sentinel", b"goes"), ("saved", b"stay")] {
            match checkpoint
                .section_create(expiring(id, at), data.to_vec())
                .await
            {
                Ok(_) => {}
                Err(error) if error.code == ErrorCode::InvalidParameter && passed(at) => {
                    return Window::TooSlow(format!("{id} created after its expiry"))
                }
                Err(error) => panic!("create {id}: {error}"),
            }
        }
        match checkpoint
            .section_expiration_time_set(&sid("saved"), TIME_END)
            .await
        {
            Ok(()) => {}
            Err(error) if error.code == ErrorCode::NotExist && passed(at) => {
                return Window::TooSlow("saved expired before the cancel".into())
            }
            Err(error) => panic!("cancel: {error}"),
        }
        let cp = &checkpoint;
        eventually("the sentinel expires", async || {
            cp.read(vec![re("sentinel", 0, None)]).await.is_err()
        })
        .await;
        assert_eq!(read_str(&checkpoint, "saved").await, b"stay");
        let sections = iterate_all(&checkpoint, SectionsChosen::Forever, 0).await;
        assert_eq!(ids_of(&sections), ["saved"]);
        Window::Done
    })
    .await;
}

#[tokio::test]
async fn expiration_time_in_the_past_is_invalid_parameter() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("expiry-past"), attrs()).await;
    section(&checkpoint, "s", b"data").await;
    for at in [in_ms(-1_000), 0, -5] {
        expect_code(
            checkpoint.section_expiration_time_set(&sid("s"), at).await,
            ErrorCode::InvalidParameter,
        );
    }
    let sections = iterate_all(&checkpoint, SectionsChosen::Any, 0).await;
    assert_eq!(sections[0].expiration_time, TIME_END);
    assert_eq!(read_str(&checkpoint, "s").await, b"data");
}

#[tokio::test]
async fn expiration_time_set_on_a_missing_section_is_not_exist() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("expiry-missing"), attrs()).await;
    expect_code(
        checkpoint
            .section_expiration_time_set(&sid("nope"), in_ms(60_000))
            .await,
        ErrorCode::NotExist,
    );
    assert_eq!(checkpoint.status().await.unwrap().number_of_sections, 0);
}

// ───────────────────────────── iteration ─────────────────────────────

#[tokio::test]
async fn iteration_any_returns_every_section_then_no_sections() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("iter-any"), attrs()).await;
    let later = in_ms(3_600_000);
    section(&checkpoint, "a", b"1").await;
    section(&checkpoint, "b", b"22").await;
    checkpoint
        .section_create(expiring("c", later), b"333".to_vec())
        .await
        .unwrap();
    let mut iterator = checkpoint.iterate(SectionsChosen::Any, 0).await.unwrap();
    let mut seen = Vec::new();
    while let Some(descriptor) = iterator.next().await.unwrap() {
        assert_eq!(descriptor.state, SectionState::Valid);
        seen.push(descriptor);
    }
    assert_eq!(ids_of(&seen), ["a", "b", "c"]);
    for d in &seen {
        let expected = match d.section_id.as_bytes() {
            b"a" => (1, TIME_END),
            b"b" => (2, TIME_END),
            _ => (3, later),
        };
        assert_eq!((d.section_size, d.expiration_time), expected);
    }
    // The end is CL_CKPT_ERR_NO_SECTIONS (0x101), and stays so.
    let raw = client
        .request(Request::IterationNext {
            iterator: iterator.handle(),
        })
        .await;
    let error = expect_code(raw, ErrorCode::NoSections);
    assert_eq!(error.code.code(), 0x101);
    assert_eq!(iterator.next().await.unwrap(), None);
    iterator.finalize().await.unwrap();
}

#[tokio::test]
async fn iteration_forever_returns_sections_that_never_expire() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("iter-forever"), attrs()).await;
    section(&checkpoint, "f1", b"").await;
    section(&checkpoint, "f2", b"").await;
    checkpoint
        .section_create(expiring("e1", in_ms(3_600_000)), Vec::new())
        .await
        .unwrap();
    let sections = iterate_all(&checkpoint, SectionsChosen::Forever, 0).await;
    assert_eq!(ids_of(&sections), ["f1", "f2"]);
    assert!(sections.iter().all(|d| d.expiration_time == TIME_END));
}

#[tokio::test]
async fn iteration_leq_and_geq_filter_by_expiration_time() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("iter-leq-geq"), attrs()).await;
    let t1 = in_ms(100_000);
    let t2 = in_ms(200_000);
    let middle = (t1 + t2) / 2;
    checkpoint
        .section_create(expiring("early", t1), Vec::new())
        .await
        .unwrap();
    checkpoint
        .section_create(expiring("late", t2), Vec::new())
        .await
        .unwrap();
    section(&checkpoint, "never", b"").await;
    assert_eq!(
        ids_of(&iterate_all(&checkpoint, SectionsChosen::LeqExpirationTime, middle).await),
        ["early"]
    );
    assert_eq!(
        ids_of(&iterate_all(&checkpoint, SectionsChosen::GeqExpirationTime, middle).await),
        ["late", "never"]
    );
    // The bounds are inclusive.
    assert_eq!(
        ids_of(&iterate_all(&checkpoint, SectionsChosen::LeqExpirationTime, t2).await),
        ["early", "late"]
    );
    assert_eq!(
        ids_of(&iterate_all(&checkpoint, SectionsChosen::GeqExpirationTime, t1).await),
        ["early", "late", "never"]
    );
    assert!(
        iterate_all(&checkpoint, SectionsChosen::LeqExpirationTime, t1 - 1)
            .await
            .is_empty()
    );
    assert_eq!(
        ids_of(&iterate_all(&checkpoint, SectionsChosen::GeqExpirationTime, TIME_END).await),
        ["never"]
    );
}

#[tokio::test]
async fn iteration_corrupted_returns_nothing_because_writes_are_atomic() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("iter-corrupted"), attrs()).await;
    section(&checkpoint, "a", b"a").await;
    section(&checkpoint, "b", b"b").await;
    assert!(iterate_all(&checkpoint, SectionsChosen::Corrupted, 0)
        .await
        .is_empty());
    assert_eq!(
        iterate_all(&checkpoint, SectionsChosen::Any, 0).await.len(),
        2
    );
}

#[tokio::test]
async fn iteration_set_is_fixed_at_initialize() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("iter-fixed"), attrs()).await;
    for id in ["a", "b", "c"] {
        section(&checkpoint, id, id.as_bytes()).await;
    }
    let mut iterator = checkpoint.iterate(SectionsChosen::Any, 0).await.unwrap();
    section(&checkpoint, "d", b"d").await;
    checkpoint.section_delete(&sid("b")).await.unwrap();
    checkpoint.write(vec![we("c", 1, b"grown")]).await.unwrap();
    let mut seen = Vec::new();
    while let Some(descriptor) = iterator.next().await.unwrap() {
        seen.push(descriptor);
    }
    iterator.finalize().await.unwrap();
    assert_eq!(
        ids_of(&seen),
        ["a", "c"],
        "created-after is not in the set, deleted-after is skipped"
    );
    let c = seen.iter().find(|d| d.section_id == sid("c")).unwrap();
    assert_eq!(c.section_size, 6, "descriptors are current");
    assert_eq!(
        ids_of(&iterate_all(&checkpoint, SectionsChosen::Any, 0).await),
        ["a", "c", "d"]
    );
}

#[tokio::test]
async fn iteration_with_invalid_sections_chosen_is_invalid_parameter() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("iter-invalid"), attrs()).await;
    section(&checkpoint, "a", b"a").await;
    for chosen in [0u32, 6, 99, u32::MAX] {
        let request = Request::IterationInitialize {
            handle: checkpoint.handle(),
            sections_chosen: chosen,
            expiration_time: 0,
        };
        expect_code(client.request(request).await, ErrorCode::InvalidParameter);
    }
    assert_eq!(
        ids_of(&iterate_all(&checkpoint, SectionsChosen::Any, 0).await),
        ["a"]
    );
}

#[tokio::test]
async fn iteration_next_after_finalize_is_invalid_handle() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("iter-finalize"), attrs()).await;
    section(&checkpoint, "a", b"a").await;
    section(&checkpoint, "b", b"b").await;
    let mut iterator = checkpoint.iterate(SectionsChosen::Any, 0).await.unwrap();
    assert!(iterator.next().await.unwrap().is_some());
    let id = iterator.handle();
    iterator.finalize().await.unwrap();
    expect_code(
        client
            .request(Request::IterationNext { iterator: id })
            .await,
        ErrorCode::InvalidHandle,
    );
    expect_code(
        client
            .request(Request::IterationFinalize { iterator: id })
            .await,
        ErrorCode::InvalidHandle,
    );
    expect_code(
        client
            .request(Request::IterationNext {
                iterator: 55_555_555,
            })
            .await,
        ErrorCode::InvalidHandle,
    );
    // The checkpoint handle is unaffected.
    assert_eq!(
        iterate_all(&checkpoint, SectionsChosen::Any, 0).await.len(),
        2
    );
}

#[tokio::test]
async fn iterator_dies_with_its_checkpoint_handle() {
    let client = connect().await;
    let name = unique("iter-closed");
    let checkpoint = create(&client, &name, attrs()).await;
    let keeper = open(&client, &name, OpenFlags::READ).await;
    section(&checkpoint, "a", b"a").await;
    section(&checkpoint, "b", b"b").await;
    let mut iterator = checkpoint.iterate(SectionsChosen::Any, 0).await.unwrap();
    assert!(iterator.next().await.unwrap().is_some());
    checkpoint.close().await.unwrap();
    expect_code(iterator.next().await, ErrorCode::InvalidHandle);
    assert_eq!(iterate_all(&keeper, SectionsChosen::Any, 0).await.len(), 2);
}

#[tokio::test]
async fn concurrent_iterations_are_independent() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("iter-two"), attrs()).await;
    for id in ["a", "b", "c"] {
        section(&checkpoint, id, b"").await;
    }
    let mut first = checkpoint.iterate(SectionsChosen::Any, 0).await.unwrap();
    let mut second = checkpoint.iterate(SectionsChosen::Any, 0).await.unwrap();
    assert_ne!(first.handle(), second.handle());
    let mut one = vec![first.next().await.unwrap().unwrap()];
    let mut two = Vec::new();
    while let Some(d) = second.next().await.unwrap() {
        two.push(d);
    }
    second.finalize().await.unwrap();
    while let Some(d) = first.next().await.unwrap() {
        one.push(d);
    }
    first.finalize().await.unwrap();
    assert_eq!(ids_of(&one), ["a", "b", "c"]);
    assert_eq!(ids_of(&two), ["a", "b", "c"]);
}

#[tokio::test]
async fn iteration_descriptor_reports_the_last_update_time() {
    let client = connect().await;
    let checkpoint = create(&client, &unique("iter-last-update"), attrs()).await;
    let before = ckpt_proto::now_ns();
    section(&checkpoint, "a", b"a").await;
    let after = ckpt_proto::now_ns();
    let slack = 2_000_000_000; // clock reads on both sides of a request
    let d = &iterate_all(&checkpoint, SectionsChosen::Any, 0).await[0];
    assert!(
        d.last_update >= before - slack && d.last_update <= after + slack,
        "{d:?}"
    );
    let first_update = d.last_update;
    checkpoint.write(vec![we("a", 0, b"b")]).await.unwrap();
    let d = &iterate_all(&checkpoint, SectionsChosen::Any, 0).await[0];
    assert!(
        d.last_update >= first_update,
        "last_update moves forward on a write"
    );
}

// ───────────────────────────── retention ─────────────────────────────

#[tokio::test]
async fn retention_zero_deletes_at_the_last_close() {
    let client = connect().await;
    let other = connect().await;
    let name = unique("retention-zero");
    let first = create(&client, &name, with_retention(0)).await;
    section(&first, "s", b"transient").await;
    let second = open(&other, &name, OpenFlags::READ).await;
    first.close().await.unwrap();
    assert!(
        exists(&client, &name).await,
        "still open through the second handle"
    );
    assert_eq!(read_str(&second, "s").await, b"transient");
    second.close().await.unwrap();
    assert!(
        !exists(&client, &name).await,
        "deleted right after the last close"
    );
    expect_code(
        client.open(&name, None, OpenFlags::READ).await,
        ErrorCode::NotExist,
    );
    let again = create(&client, &name, with_retention(0)).await;
    assert!(again.created(), "a new checkpoint");
    assert_eq!(again.status().await.unwrap().number_of_sections, 0);
}

#[tokio::test]
async fn retention_forever_keeps_a_closed_checkpoint() {
    let client = connect().await;
    let name = unique("retention-forever");
    let checkpoint = create(&client, &name, with_retention(TIME_END)).await;
    section(&checkpoint, "s", b"kept").await;
    checkpoint.close().await.unwrap();
    assert!(exists(&client, &name).await);
    let other = connect().await;
    let again = open(&other, &name, OpenFlags::READ).await;
    assert!(!again.created());
    assert_eq!(read_str(&again, "s").await, b"kept");
}

#[tokio::test]
async fn timed_retention_keeps_while_open_and_deletes_after_the_last_close() {
    let client = connect().await;
    let name = unique("retention-timed");
    let sentinel = unique("retention-timed-sentinel");
    let retention = 300_000_000;
    let checkpoint = create(&client, &name, with_retention(retention)).await;
    section(&checkpoint, "s", b"timed").await;
    // A sentinel with the same retention, closed now: once it is gone, ours
    // has been open for longer than the retention duration.
    create(&client, &sentinel, with_retention(retention))
        .await
        .close()
        .await
        .unwrap();
    eventually_gone(&client, &sentinel).await;
    assert!(exists(&client, &name).await, "deleted while open");
    assert_eq!(read_str(&checkpoint, "s").await, b"timed");
    checkpoint.close().await.unwrap();
    eventually_gone(&client, &name).await;
    expect_code(
        client.open(&name, None, OpenFlags::READ).await,
        ErrorCode::NotExist,
    );
}

#[tokio::test]
async fn reopening_before_the_retention_elapses_keeps_the_checkpoint() {
    let client = connect().await;
    let c = &client;
    with_growing_window("reopen within the retention", 2_000, async |window_ms| {
        let name = unique("retention-reopen");
        let sentinel = unique("retention-sentinel");
        let retention = window_ms * 1_000_000;
        let ours = create(c, &name, with_retention(retention)).await;
        section(&ours, "s", b"saved").await;
        let theirs = create(c, &sentinel, with_retention(retention)).await;
        let closed_at = std::time::Instant::now();
        ours.close().await.unwrap();
        theirs.close().await.unwrap();
        let reopened = match c.open(&name, None, OpenFlags::READ).await {
            Ok(reopened) => reopened,
            Err(error)
                if error.code == ErrorCode::NotExist
                    && closed_at.elapsed().as_millis() >= window_ms as u128 =>
            {
                return Window::TooSlow("reopened after the retention elapsed".into())
            }
            Err(error) => panic!("reopen: {error}"),
        };
        // Once the sentinel (closed at the same time) is gone, our timer would
        // have fired too had the reopen not stopped it.
        eventually_gone(c, &sentinel).await;
        assert!(exists(c, &name).await);
        assert_eq!(read_str(&reopened, "s").await, b"saved");
        reopened.close().await.unwrap();
        eventually_gone(c, &name).await;
        Window::Done
    })
    .await;
}

#[tokio::test]
async fn retention_duration_set_applies_at_the_next_last_close() {
    let client = connect().await;
    let name = unique("retention-set-zero");
    let checkpoint = create(&client, &name, with_retention(TIME_END)).await;
    section(&checkpoint, "s", b"x").await;
    checkpoint.retention_duration_set(0).await.unwrap();
    assert_eq!(
        client
            .stat(&name)
            .await
            .unwrap()
            .status
            .attributes
            .retention_duration_ns,
        0
    );
    checkpoint.close().await.unwrap();
    assert!(
        !exists(&client, &name).await,
        "retention 0 deletes right after the last close"
    );

    let name = unique("retention-set-forever");
    let checkpoint = create(&client, &name, with_retention(0)).await;
    section(&checkpoint, "s", b"y").await;
    checkpoint.retention_duration_set(TIME_END).await.unwrap();
    checkpoint.close().await.unwrap();
    assert!(exists(&client, &name).await, "retention forever keeps it");
    let again = open(&client, &name, OpenFlags::READ).await;
    assert_eq!(read_str(&again, "s").await, b"y");
}

#[tokio::test]
async fn retention_duration_set_to_a_timed_value_deletes_later() {
    let client = connect().await;
    let name = unique("retention-set-timed");
    let checkpoint = create(&client, &name, with_retention(TIME_END)).await;
    checkpoint
        .retention_duration_set(200_000_000)
        .await
        .unwrap();
    checkpoint.close().await.unwrap();
    eventually_gone(&client, &name).await;
}

#[tokio::test]
async fn retention_duration_set_negative_is_invalid_parameter() {
    let client = connect().await;
    let name = unique("retention-negative");
    let checkpoint = create(&client, &name, with_retention(TIME_END)).await;
    for bad in [-1, i64::MIN] {
        expect_code(
            checkpoint.retention_duration_set(bad).await,
            ErrorCode::InvalidParameter,
        );
    }
    assert_eq!(
        checkpoint
            .status()
            .await
            .unwrap()
            .attributes
            .retention_duration_ns,
        TIME_END
    );
    checkpoint.close().await.unwrap();
    assert!(exists(&client, &name).await);
}

#[tokio::test]
async fn retention_duration_set_on_a_deleted_checkpoint_is_bad_operation() {
    // DESIGN.md §2 "retention set": once unlinked, the instance is
    // destroyed at its last close whatever its retention, so setting one is
    // a BAD_OPERATION rather than an OK that changes nothing.
    let client = connect().await;
    let name = unique("retention-unlinked");
    let checkpoint = create(&client, &name, with_retention(TIME_END)).await;
    section(&checkpoint, "s", b"old").await;
    client.delete(&name).await.unwrap();
    for retention in [0, 5_000_000_000, TIME_END] {
        let error = expect_code(
            checkpoint.retention_duration_set(retention).await,
            ErrorCode::BadOperation,
        );
        assert!(error.message.contains("deleted"), "{error}");
    }
    assert_eq!(
        checkpoint
            .status()
            .await
            .unwrap()
            .attributes
            .retention_duration_ns,
        TIME_END
    );
    // A new instance under the same name takes retention as usual.
    let fresh = create(&client, &name, with_retention(TIME_END)).await;
    assert!(fresh.created());
    fresh.retention_duration_set(7).await.unwrap();
    assert_eq!(read_str(&checkpoint, "s").await, b"old");
    checkpoint.close().await.unwrap();
    assert_eq!(
        client
            .stat(&name)
            .await
            .unwrap()
            .status
            .attributes
            .retention_duration_ns,
        7
    );
}

// ───────────────────────────── delete ─────────────────────────────

#[tokio::test]
async fn delete_of_a_missing_name_is_not_exist() {
    let client = connect().await;
    let name = unique("delete-missing");
    expect_code(client.delete(&name).await, ErrorCode::NotExist);
    let checkpoint = create(&client, &name, attrs()).await;
    checkpoint.close().await.unwrap();
    client.delete(&name).await.unwrap();
    expect_code(client.delete(&name).await, ErrorCode::NotExist);
}

#[tokio::test]
async fn delete_of_an_unopened_checkpoint_removes_it_at_once() {
    let client = connect().await;
    let name = unique("delete-unopened");
    let checkpoint = create(&client, &name, attrs()).await;
    section(&checkpoint, "s", b"old").await;
    checkpoint.close().await.unwrap();
    client.delete(&name).await.unwrap();
    assert!(!exists(&client, &name).await);
    assert!(!client.list().await.unwrap().iter().any(|c| c.name == name));
    expect_code(
        client.open(&name, None, OpenFlags::READ).await,
        ErrorCode::NotExist,
    );
    let fresh = create(&client, &name, attrs()).await;
    assert!(fresh.created());
    let status = fresh.status().await.unwrap();
    assert_eq!((status.number_of_sections, status.memory_used), (0, 0));
    expect_code(
        fresh.read(vec![re("s", 0, None)]).await,
        ErrorCode::NotExist,
    );
}

#[tokio::test]
async fn delete_while_open_removes_the_name_and_old_handles_keep_working() {
    let client = connect().await;
    let deleter = connect().await;
    let name = unique("delete-open");
    let old = create(&client, &name, attrs()).await;
    section(&old, "s", b"old data").await;
    deleter.delete(&name).await.unwrap();
    // The name is gone at once.
    expect_code(
        deleter.open(&name, None, OpenFlags::READ).await,
        ErrorCode::NotExist,
    );
    expect_code(deleter.stat(&name).await, ErrorCode::NotExist);
    expect_code(deleter.delete(&name).await, ErrorCode::NotExist);
    assert!(!deleter.list().await.unwrap().iter().any(|c| c.name == name));
    // The old handle keeps reading and writing the old instance.
    assert_eq!(read_str(&old, "s").await, b"old data");
    old.write(vec![we("s", 0, b"OLD")]).await.unwrap();
    section(&old, "t", b"more").await;
    assert_eq!(read_str(&old, "s").await, b"OLD data");
    let status = old.status().await.unwrap();
    assert_eq!((status.number_of_sections, status.memory_used), (2, 12));
    old.close().await.unwrap();
    assert!(
        !exists(&deleter, &name).await,
        "not resurrected by the close"
    );
}

#[tokio::test]
async fn create_after_delete_while_open_makes_a_separate_instance() {
    let client = connect().await;
    let name = unique("delete-recreate");
    let old = create(&client, &name, attrs()).await;
    section(&old, "s", b"old").await;
    client.delete(&name).await.unwrap();
    let other = connect().await;
    let new = create(&other, &name, attrs()).await;
    assert!(new.created(), "a new instance");
    let status = new.status().await.unwrap();
    assert_eq!(
        (status.number_of_sections, status.memory_used),
        (0, 0),
        "the new instance is empty"
    );
    expect_code(new.read(vec![re("s", 0, None)]).await, ErrorCode::NotExist);
    section(&new, "s", b"NEW!").await;
    old.write(vec![we("s", 0, b"o")]).await.unwrap();
    assert_eq!(read_str(&old, "s").await, b"old");
    assert_eq!(read_str(&new, "s").await, b"NEW!");
    // The last close of the old handle destroys the old instance only.
    old.close().await.unwrap();
    let info = other.stat(&name).await.unwrap();
    assert_eq!(
        (
            info.status.number_of_sections,
            info.status.memory_used,
            info.open_count
        ),
        (1, 4, 1)
    );
    assert_eq!(read_str(&new, "s").await, b"NEW!");
    let third = open(&client, &name, OpenFlags::READ).await;
    assert_eq!(read_str(&third, "s").await, b"NEW!");
    assert_eq!(
        other
            .list()
            .await
            .unwrap()
            .iter()
            .filter(|c| c.name == name)
            .count(),
        1
    );
}

// ───────────────────────────── sessions ─────────────────────────────

#[tokio::test]
async fn finalize_closes_every_handle_of_the_connection() {
    let observer = connect().await;
    let client = connect().await;
    let transient = unique("finalize-zero");
    let kept = unique("finalize-forever");
    let a = create(&client, &transient, with_retention(0)).await;
    section(&a, "s", b"x").await;
    let b1 = create(&client, &kept, attrs()).await;
    let _b2 = open(&client, &kept, OpenFlags::READ).await;
    section(&b1, "s", b"kept").await;
    assert_eq!(observer.stat(&kept).await.unwrap().open_count, 2);
    client.finalize().await.unwrap();
    assert!(
        !exists(&observer, &transient).await,
        "the retention-0 checkpoint was closed and deleted"
    );
    assert_eq!(observer.stat(&kept).await.unwrap().open_count, 0);
    // The finalized library refuses further calls.
    expect_code(b1.status().await, ErrorCode::InvalidHandle);
    expect_code(
        client.open(&kept, None, OpenFlags::READ).await,
        ErrorCode::InvalidHandle,
    );
    let reader = open(&observer, &kept, OpenFlags::READ).await;
    assert_eq!(read_str(&reader, "s").await, b"kept");
}

#[tokio::test]
async fn connection_loss_closes_that_sessions_handles() {
    let observer = connect().await;
    let name = unique("drop-client");
    let kept = unique("drop-client-kept");
    {
        let client = connect().await;
        let checkpoint = create(&client, &name, with_retention(0)).await;
        section(&checkpoint, "s", b"x").await;
        let other = create(&client, &kept, attrs()).await;
        section(&other, "s", b"kept").await;
        assert_eq!(observer.stat(&name).await.unwrap().open_count, 1);
        // Dropping every clone closes the connection without closing handles.
    }
    eventually_gone(&observer, &name).await;
    let o = &observer;
    let k = &kept;
    eventually("the other handle is closed", async || {
        o.stat(k).await.unwrap().open_count == 0
    })
    .await;
    let reader = open(&observer, &kept, OpenFlags::READ).await;
    assert_eq!(read_str(&reader, "s").await, b"kept");
}

#[tokio::test]
async fn abrupt_disconnect_closes_that_sessions_handles() {
    let addr = shared_addr();
    let observer = connect().await;
    let name = unique("drop-raw");
    {
        let mut raw = common::RawClient::connect(&addr);
        let opened = raw.call(&Request::Open {
            name: name.clone(),
            attributes: Some(with_retention(0)),
            flags: rwc(),
        });
        let Ok(Reply::Opened {
            handle,
            created: true,
        }) = opened
        else {
            panic!("{opened:?}")
        };
        let created = raw.call(&Request::SectionCreate {
            handle,
            attributes: forever("s"),
            initial_data: b"x".to_vec(),
        });
        assert!(created.is_ok(), "{created:?}");
        assert_eq!(observer.stat(&name).await.unwrap().open_count, 1);
        // The socket closes without a Goodbye or a Close.
    }
    eventually_gone(&observer, &name).await;
}

#[tokio::test]
async fn connection_loss_leaves_other_sessions_handles_open() {
    let observer = connect().await;
    let name = unique("drop-shared");
    let survivor = create_transient(&observer, &name).await;
    {
        let client = connect().await;
        let checkpoint = open(&client, &name, rw()).await;
        section(&checkpoint, "s", b"from the dropped one").await;
    }
    let o = &observer;
    let n = &name;
    eventually("the dropped session's handle is closed", async || {
        o.stat(n).await.unwrap().open_count == 1
    })
    .await;
    assert_eq!(read_str(&survivor, "s").await, b"from the dropped one");
    survivor.close().await.unwrap();
    assert!(
        !exists(&observer, &name).await,
        "retention 0: gone after the last close"
    );
}

async fn create_transient(client: &Client, name: &CheckpointName) -> Checkpoint {
    create(client, name, with_retention(0)).await
}

// ───────────────────────────── replicas and synchronize ─────────────────────────────

#[tokio::test]
async fn synchronize_is_ok_and_every_update_is_readable() {
    let client = connect().await;
    for flags in [
        CreationFlags::WR_ACTIVE_REPLICA,
        CreationFlags::WR_ACTIVE_REPLICA | CreationFlags::WR_ALL_SAFE,
        CreationFlags::WR_ACTIVE_REPLICA_WEAK,
    ] {
        let attributes = CreationAttributes {
            creation_flags: flags,
            ..attrs()
        };
        let checkpoint = create(&client, &unique("synchronize"), attributes).await;
        section(&checkpoint, "s", b"abc").await;
        checkpoint.write(vec![we("s", 3, b"def")]).await.unwrap();
        checkpoint.synchronize().await.unwrap();
        assert_eq!(read_str(&checkpoint, "s").await, b"abcdef");
    }
}

#[tokio::test]
async fn synchronize_on_a_wr_all_replicas_checkpoint_is_bad_operation() {
    // DESIGN.md §2 "synchronize": every write to a WR_ALL_REPLICAS
    // checkpoint already reaches every replica, so there is nothing to
    // synchronize (SA_AIS_ERR_BAD_OPERATION).
    let client = connect().await;
    let name = unique("synchronize-all-replicas");
    for flags in [
        CreationFlags::WR_ALL_REPLICAS,
        CreationFlags::WR_ALL_REPLICAS | CreationFlags::DISTRIBUTED,
    ] {
        let name = unique("synchronize-all-replicas");
        let attributes = CreationAttributes {
            creation_flags: flags,
            ..attrs()
        };
        let checkpoint = create(&client, &name, attributes).await;
        section(&checkpoint, "s", b"abc").await;
        let error = expect_code(checkpoint.synchronize().await, ErrorCode::BadOperation);
        assert!(error.message.contains("WR_ALL_REPLICAS"), "{error}");
        assert_eq!(read_str(&checkpoint, "s").await, b"abc");
    }
    // A read-only handle is refused for its access first, as on the
    // other update modes.
    let attributes = CreationAttributes {
        creation_flags: CreationFlags::WR_ALL_REPLICAS,
        ..attrs()
    };
    let _writer = create(&client, &name, attributes).await;
    let reader = open(&client, &name, OpenFlags::READ).await;
    expect_code(reader.synchronize().await, ErrorCode::OpNotPermitted);
}

#[tokio::test]
async fn active_replica_set_on_a_collocated_checkpoint_is_ok() {
    let client = connect().await;
    let attributes = CreationAttributes {
        creation_flags: CreationFlags::WR_ACTIVE_REPLICA | CreationFlags::CHECKPOINT_COLLOCATED,
        ..attrs()
    };
    let checkpoint = create(&client, &unique("collocated"), attributes).await;
    checkpoint.active_replica_set().await.unwrap();
    section(&checkpoint, "s", b"active").await;
    checkpoint.active_replica_set().await.unwrap();
    assert_eq!(read_str(&checkpoint, "s").await, b"active");
}

#[tokio::test]
async fn active_replica_set_on_a_non_collocated_checkpoint_is_bad_operation() {
    let client = connect().await;
    for flags in [
        CreationFlags::WR_ACTIVE_REPLICA,
        CreationFlags::WR_ALL_REPLICAS | CreationFlags::DISTRIBUTED,
    ] {
        let attributes = CreationAttributes {
            creation_flags: flags,
            ..attrs()
        };
        let checkpoint = create(&client, &unique("not-collocated"), attributes).await;
        section(&checkpoint, "s", b"fine").await;
        expect_code(
            checkpoint.active_replica_set().await,
            ErrorCode::BadOperation,
        );
        assert_eq!(read_str(&checkpoint, "s").await, b"fine");
    }
}

#[tokio::test]
async fn active_replica_set_through_a_read_only_handle_is_op_not_permitted() {
    let client = connect().await;
    let name = unique("collocated-read-only");
    let attributes = CreationAttributes {
        creation_flags: CreationFlags::WR_ACTIVE_REPLICA | CreationFlags::CHECKPOINT_COLLOCATED,
        ..attrs()
    };
    let writer = create(&client, &name, attributes).await;
    section(&writer, "s", b"data").await;
    let reader = open(&client, &name, OpenFlags::READ).await;
    expect_code(reader.active_replica_set().await, ErrorCode::OpNotPermitted);
    let bare = open(&client, &name, OpenFlags(0)).await;
    expect_code(bare.active_replica_set().await, ErrorCode::OpNotPermitted);
    writer.active_replica_set().await.unwrap();
    assert_eq!(read_str(&reader, "s").await, b"data");
}

#[tokio::test]
async fn weak_mode_writes_are_visible_to_the_next_read() {
    let client = connect().await;
    let attributes = CreationAttributes {
        creation_flags: CreationFlags::WR_ACTIVE_REPLICA_WEAK,
        ..attrs()
    };
    let name = unique("weak");
    let writer = create(&client, &name, attributes).await;
    let other = connect().await;
    let reader = open(&other, &name, OpenFlags::READ).await;
    section(&writer, "s", b"").await;
    for i in 0..100u32 {
        writer
            .write(vec![we("s", u64::from(i) * 4, &i.to_le_bytes())])
            .await
            .unwrap();
        let data = reader
            .read(vec![re("s", u64::from(i) * 4, Some(4))])
            .await
            .unwrap();
        assert_eq!(
            data[0],
            i.to_le_bytes(),
            "write {i} not visible to the next read"
        );
    }
    writer
        .section_overwrite(&sid("s"), b"weak".to_vec())
        .await
        .unwrap();
    assert_eq!(read_str(&reader, "s").await, b"weak");
    assert_eq!(reader.status().await.unwrap().memory_used, 4);
}

// ───────────────────────────── notifications ─────────────────────────────

#[tokio::test]
async fn notifications_deliver_every_committed_update_in_order() {
    let writer_client = connect().await;
    let subscriber_client = connect().await;
    let name = unique("notify");
    let writer = create(&writer_client, &name, attrs()).await;
    let watched = open(&subscriber_client, &name, OpenFlags::READ).await;
    let mut subscription = watched.subscribe(None).await.unwrap();
    let first = subscription.next_seq();
    let at = in_ms(3_600_000);
    section(&writer, "a", b"init").await;
    writer
        .write(vec![we("a", 2, b"IT"), we("a", 6, b"!")])
        .await
        .unwrap();
    writer
        .section_overwrite(&sid("a"), b"over".to_vec())
        .await
        .unwrap();
    writer
        .section_expiration_time_set(&sid("a"), at)
        .await
        .unwrap();
    writer.retention_duration_set(123).await.unwrap();
    writer.section_delete(&sid("a")).await.unwrap();
    let expected = vec![
        Change::SectionCreated {
            section_id: sid("a"),
            data: b"init".to_vec(),
        },
        Change::Written {
            elements: vec![we("a", 2, b"IT"), we("a", 6, b"!")],
        },
        Change::Overwritten {
            section_id: sid("a"),
            data: b"over".to_vec(),
        },
        Change::ExpirationSet {
            section_id: sid("a"),
            expiration_time: at,
        },
        Change::RetentionSet {
            retention_duration_ns: 123,
        },
        Change::SectionDeleted {
            section_id: sid("a"),
            expired: false,
        },
    ];
    for (i, want) in expected.into_iter().enumerate() {
        match next_notification(&mut subscription).await {
            Notification::Update {
                handle,
                name: got_name,
                seq,
                change,
            } => {
                assert_eq!(handle, watched.handle());
                assert_eq!(got_name, name);
                assert_eq!(seq, first + i as u64, "sequence numbers increase by one");
                assert_eq!(change, want);
            }
            other => panic!("expected an update, got {other:?}"),
        }
    }
    assert_eq!(subscription.last_seq(), Some(first + 5));
}

#[tokio::test]
async fn notification_deleted_when_the_checkpoint_is_deleted() {
    let client = connect().await;
    let subscriber_client = connect().await;
    let name = unique("notify-delete");
    let writer = create(&client, &name, attrs()).await;
    let watched = open(&subscriber_client, &name, OpenFlags::READ).await;
    let mut subscription = watched.subscribe(None).await.unwrap();
    section(&writer, "s", b"x").await;
    let (seq, change) = next_update(&mut subscription).await;
    assert_eq!(
        change,
        Change::SectionCreated {
            section_id: sid("s"),
            data: b"x".to_vec()
        }
    );
    client.delete(&name).await.unwrap();
    let (deleted_seq, change) = next_update(&mut subscription).await;
    assert_eq!(change, Change::Deleted);
    assert_eq!(deleted_seq, seq + 1);
    // The subscriber's handle still reads the old instance.
    assert_eq!(read_str(&watched, "s").await, b"x");
}

#[tokio::test]
async fn resubscribing_with_the_last_seen_seq_resumes_without_gaps() {
    let writer_client = connect().await;
    let name = unique("notify-resume");
    let writer = create(&writer_client, &name, attrs()).await;
    let last_seen = {
        let subscriber_client = connect().await;
        let watched = open(&subscriber_client, &name, OpenFlags::READ).await;
        let mut subscription = watched.subscribe(None).await.unwrap();
        section(&writer, "s", b"one").await;
        writer.write(vec![we("s", 3, b"two")]).await.unwrap();
        let (first, _) = next_update(&mut subscription).await;
        let (second, change) = next_update(&mut subscription).await;
        assert_eq!(second, first + 1);
        assert_eq!(
            change,
            Change::Written {
                elements: vec![we("s", 3, b"two")]
            }
        );
        assert_eq!(subscription.resume_point(), Some(second));
        second
        // The subscriber's connection goes away here.
    };
    // Updates while nobody listens.
    writer
        .section_overwrite(&sid("s"), b"three".to_vec())
        .await
        .unwrap();
    section(&writer, "t", b"four").await;
    writer.section_delete(&sid("t")).await.unwrap();
    let subscriber_client = connect().await;
    let watched = open(&subscriber_client, &name, OpenFlags::READ).await;
    let mut subscription = watched.subscribe(Some(last_seen)).await.unwrap();
    let missed = [
        Change::Overwritten {
            section_id: sid("s"),
            data: b"three".to_vec(),
        },
        Change::SectionCreated {
            section_id: sid("t"),
            data: b"four".to_vec(),
        },
        Change::SectionDeleted {
            section_id: sid("t"),
            expired: false,
        },
    ];
    for (i, want) in missed.into_iter().enumerate() {
        let (seq, change) = next_update(&mut subscription).await;
        assert_eq!(seq, last_seen + 1 + i as u64, "no gap");
        assert_eq!(change, want);
    }
    // And it continues live.
    writer.write(vec![we("s", 0, b"5")]).await.unwrap();
    let (seq, change) = next_update(&mut subscription).await;
    assert_eq!(seq, last_seen + 4);
    assert_eq!(
        change,
        Change::Written {
            elements: vec![we("s", 0, b"5")]
        }
    );
}

#[tokio::test]
async fn failed_updates_produce_no_notifications() {
    let client = connect().await;
    let name = unique("notify-failed");
    let writer = create(&client, &name, limits(4, 8, 32, 8)).await;
    let subscriber_client = connect().await;
    let watched = open(&subscriber_client, &name, OpenFlags::READ).await;
    let mut subscription = watched.subscribe(None).await.unwrap();
    section(&writer, "s", b"ok").await;
    let (seq, _) = next_update(&mut subscription).await;
    expect_code_at(
        writer.write(vec![we("s", 0, b"x"), we("s", 8, b"y")]).await,
        ErrorCode::InvalidParameter,
        1,
    );
    expect_code(
        writer.section_create(forever("s"), Vec::new()).await,
        ErrorCode::AlreadyExist,
    );
    expect_code(
        writer.section_overwrite(&sid("s"), vec![0; 9]).await,
        ErrorCode::InvalidParameter,
    );
    expect_code(
        writer.section_delete(&sid("missing")).await,
        ErrorCode::NotExist,
    );
    writer.write(vec![we("s", 0, b"OK")]).await.unwrap();
    let (next, change) = next_update(&mut subscription).await;
    assert_eq!(next, seq + 1, "the failed calls used no sequence numbers");
    assert_eq!(
        change,
        Change::Written {
            elements: vec![we("s", 0, b"OK")]
        }
    );
}

#[tokio::test]
async fn every_subscriber_sees_the_same_sequence() {
    let client = connect().await;
    let name = unique("notify-many");
    let writer = create(&client, &name, attrs()).await;
    let mut subscriptions = Vec::new();
    let mut handles = Vec::new();
    for _ in 0..3 {
        let c = connect().await;
        let checkpoint = open(&c, &name, OpenFlags::READ).await;
        subscriptions.push(checkpoint.subscribe(None).await.unwrap());
        handles.push(checkpoint);
    }
    section(&writer, "s", b"").await;
    for i in 0..5u8 {
        writer
            .write(vec![we("s", u64::from(i), &[i])])
            .await
            .unwrap();
    }
    let mut streams = Vec::new();
    for subscription in &mut subscriptions {
        let mut got = Vec::new();
        for _ in 0..6 {
            got.push(next_update(subscription).await);
        }
        streams.push(got);
    }
    assert_eq!(streams[0], streams[1]);
    assert_eq!(streams[1], streams[2]);
    for pair in streams[0].windows(2) {
        assert_eq!(pair[1].0, pair[0].0 + 1);
    }
    assert_eq!(
        streams[0][5].1,
        Change::Written {
            elements: vec![we("s", 4, &[4])]
        }
    );
}

#[tokio::test]
async fn expired_sections_are_notified_as_expired_deletes() {
    let client = connect().await;
    let c = &client;
    with_growing_window("expiry notification", 1_500, async |window_ms| {
        let name = unique("notify-expired");
        let writer = create(c, &name, attrs()).await;
        let watched = open(c, &name, OpenFlags::READ).await;
        let mut subscription = watched.subscribe(None).await.unwrap();
        let at = in_ms(window_ms);
        match writer
            .section_create(expiring("e", at), b"e".to_vec())
            .await
        {
            Ok(_) => {}
            Err(error) if error.code == ErrorCode::InvalidParameter && passed(at) => {
                return Window::TooSlow("created after its expiry".into())
            }
            Err(error) => panic!("create: {error}"),
        }
        let (seq, change) = next_update(&mut subscription).await;
        assert_eq!(
            change,
            Change::SectionCreated {
                section_id: sid("e"),
                data: b"e".to_vec()
            }
        );
        let (expired_seq, change) = next_update(&mut subscription).await;
        assert_eq!(expired_seq, seq + 1);
        assert_eq!(
            change,
            Change::SectionDeleted {
                section_id: sid("e"),
                expired: true
            }
        );
        assert!(passed(at), "expired before its time");
        expect_code(
            writer.read(vec![re("e", 0, None)]).await,
            ErrorCode::NotExist,
        );
        Window::Done
    })
    .await;
}

// ───────────────────────────── kill and restart (own servers) ─────────────────────────────

#[tokio::test]
async fn data_survives_sigkill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = common::Server::start(dir.path());
    let name = unique("durable");
    let single = unique("durable-default");
    let expected_status;
    {
        let client = connect_to(&server.addr).await;
        let checkpoint = create(&client, &name, attrs()).await;
        section(&checkpoint, "a", b"alpha").await;
        section(&checkpoint, "b", b"bravo").await;
        section(&checkpoint, "c", b"charlie").await;
        checkpoint
            .write(vec![we("a", 7, b"!"), we("b", 0, b"B")])
            .await
            .unwrap();
        checkpoint
            .section_overwrite(&sid("c"), b"C".to_vec())
            .await
            .unwrap();
        checkpoint.section_delete(&sid("b")).await.unwrap();
        let default = create(&client, &single, default_section_attrs()).await;
        default
            .section_overwrite(&SectionId::DEFAULT, b"default data".to_vec())
            .await
            .unwrap();
        expected_status = checkpoint.status().await.unwrap();
        server.kill();
    }
    let server = common::Server::start(dir.path());
    let client = connect_to(&server.addr).await;
    let checkpoint = open(&client, &name, OpenFlags::READ).await;
    assert!(!checkpoint.created());
    assert_eq!(checkpoint.status().await.unwrap(), expected_status);
    assert_eq!(read_str(&checkpoint, "a").await, b"alpha\0\0!");
    assert_eq!(read_str(&checkpoint, "c").await, b"C");
    expect_code(
        checkpoint.read(vec![re("b", 0, None)]).await,
        ErrorCode::NotExist,
    );
    assert_eq!(
        ids_of(&iterate_all(&checkpoint, SectionsChosen::Any, 0).await),
        ["a", "c"]
    );
    let default = open(&client, &single, OpenFlags::READ).await;
    assert_eq!(
        read_all(&default, &SectionId::DEFAULT).await,
        b"default data"
    );
}

#[tokio::test]
async fn generated_ids_are_not_reused_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = common::Server::start(dir.path());
    let name = unique("generated-restart");
    let mut used = Vec::new();
    {
        let client = connect_to(&server.addr).await;
        let checkpoint = create(&client, &name, attrs()).await;
        for _ in 0..3 {
            let id = checkpoint
                .section_create(generated(), b"g".to_vec())
                .await
                .unwrap();
            checkpoint.section_delete(&id).await.unwrap();
            used.push(id);
        }
        server.kill();
    }
    let server = common::Server::start(dir.path());
    let client = connect_to(&server.addr).await;
    let checkpoint = open(&client, &name, rw()).await;
    for _ in 0..3 {
        let id = checkpoint
            .section_create(generated(), b"after".to_vec())
            .await
            .unwrap();
        assert!(
            !used.contains(&id),
            "generated id {id} reused after the restart"
        );
        used.push(id);
    }
    assert_eq!(checkpoint.status().await.unwrap().number_of_sections, 3);
}

#[tokio::test]
async fn retention_timer_restarts_after_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = common::Server::start(dir.path());
    let name = unique("retention-restart");
    let retention_ms = 2_500;
    {
        let client = connect_to(&server.addr).await;
        let checkpoint = create(&client, &name, with_retention(retention_ms * 1_000_000)).await;
        section(&checkpoint, "s", b"survives downtime").await;
        checkpoint.close().await.unwrap();
        server.kill();
    }
    // The server is down for longer than the retention duration (a wall
    // clock requirement, not a wait for progress).
    tokio::time::sleep(std::time::Duration::from_millis(retention_ms as u64 + 500)).await;
    let restarted = std::time::Instant::now();
    let server = common::Server::start(dir.path());
    let client = connect_to(&server.addr).await;
    match client.stat(&name).await {
        Ok(info) => assert_eq!(
            (
                info.status.number_of_sections,
                info.status.memory_used,
                info.open_count
            ),
            (1, 17, 0)
        ),
        // The timer starts afresh at recovery: gone is fine only once a
        // whole retention duration has passed since the restart began.
        Err(error) if error.code == ErrorCode::NotExist => assert!(
            restarted.elapsed().as_millis() >= retention_ms as u128,
            "downtime deleted the checkpoint: gone {:?} after the restart",
            restarted.elapsed()
        ),
        Err(error) => panic!("stat: {error}"),
    }
    eventually_gone(&client, &name).await;
    assert!(
        restarted.elapsed().as_millis() >= retention_ms as u128,
        "deleted before a whole retention duration after the restart"
    );
}

#[tokio::test]
async fn weak_writes_survive_sigkill_after_synchronize() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = common::Server::start(dir.path());
    let name = unique("weak-durable");
    {
        let client = connect_to(&server.addr).await;
        let attributes = CreationAttributes {
            creation_flags: CreationFlags::WR_ACTIVE_REPLICA_WEAK,
            ..attrs()
        };
        let checkpoint = create(&client, &name, attributes).await;
        section(&checkpoint, "s", b"").await;
        for i in 0..50u8 {
            checkpoint
                .write(vec![we("s", u64::from(i), &[i])])
                .await
                .unwrap();
        }
        checkpoint.synchronize().await.unwrap();
        server.kill();
    }
    let server = common::Server::start(dir.path());
    let client = connect_to(&server.addr).await;
    let checkpoint = open(&client, &name, OpenFlags::READ).await;
    assert_eq!(
        read_str(&checkpoint, "s").await,
        (0..50u8).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn checkpoints_deleted_before_a_crash_stay_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = common::Server::start(dir.path());
    let unopened = unique("deleted-closed");
    let open_at_crash = unique("deleted-open");
    {
        let client = connect_to(&server.addr).await;
        let a = create(&client, &unopened, attrs()).await;
        section(&a, "s", b"a").await;
        a.close().await.unwrap();
        client.delete(&unopened).await.unwrap();
        let b = create(&client, &open_at_crash, attrs()).await;
        section(&b, "s", b"b").await;
        client.delete(&open_at_crash).await.unwrap();
        assert_eq!(
            read_str(&b, "s").await,
            b"b",
            "still readable through the open handle"
        );
        server.kill();
    }
    let server = common::Server::start(dir.path());
    let client = connect_to(&server.addr).await;
    for name in [&unopened, &open_at_crash] {
        expect_code(client.stat(name).await, ErrorCode::NotExist);
        expect_code(
            client.open(name, None, OpenFlags::READ).await,
            ErrorCode::NotExist,
        );
        let fresh = create(&client, name, attrs()).await;
        assert!(fresh.created());
        assert_eq!(fresh.status().await.unwrap().number_of_sections, 0);
    }
}

#[tokio::test]
async fn retention_zero_checkpoint_open_at_a_crash_survives_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = common::Server::start(dir.path());
    let name = unique("zero-at-crash");
    let kept = unique("forever-at-crash");
    {
        let client = connect_to(&server.addr).await;
        let a = create(&client, &name, with_retention(0)).await;
        section(&a, "s", b"a").await;
        let b = create(&client, &kept, with_retention(TIME_END)).await;
        section(&b, "s", b"b").await;
        server.kill();
    }
    // A crash is not a close (DESIGN.md 2, downtime never deletes data):
    // both are there after the restart, for their owners to open again.
    let server = common::Server::start(dir.path());
    let client = connect_to(&server.addr).await;
    let a = open(&client, &name, OpenFlags::READ).await;
    assert_eq!(read_str(&a, "s").await, b"a");
    let b = open(&client, &kept, OpenFlags::READ).await;
    assert_eq!(read_str(&b, "s").await, b"b");
}

#[tokio::test]
async fn errors_are_answered_and_the_connection_stays_usable() {
    // Every failure a user can cause is a code and a message, never a
    // dropped connection: run a burst of failing calls on one connection
    // and then use it.
    let client = connect().await;
    let name = unique("errors-keep-connection");
    let checkpoint = create(&client, &name, limits(2, 8, 16, 4)).await;
    let failures: Vec<Result<(), ClientError>> = vec![
        checkpoint
            .section_create(forever("toolong"), Vec::new())
            .await
            .map(|_| ()),
        checkpoint.write(vec![we("none", 0, b"x")]).await,
        checkpoint.read(vec![re("none", 0, None)]).await.map(|_| ()),
        checkpoint
            .section_overwrite(&sid("none"), vec![0; 100])
            .await,
        client.delete(&unique("never-made")).await,
        client.open(&name, Some(attrs()), rwc()).await.map(|_| ()),
        client
            .request(Request::IterationNext { iterator: 424_242 })
            .await
            .map(|_| ()),
    ];
    for failure in failures {
        let error = failure.expect_err("each call fails");
        assert!(!error.is_connection_lost(), "{error}");
        assert!(!error.message.is_empty());
    }
    assert!(client.closed_reason().is_none());
    section(&checkpoint, "ok", b"fine").await;
    assert_eq!(read_str(&checkpoint, "ok").await, b"fine");
}

// ───────────────────────────── initialize, async calls and dispatch ─────────────────────────────

type Collected<T> = std::sync::Arc<std::sync::Mutex<Vec<T>>>;

/// Dispatches queued callbacks until `done` holds; panics after the deadline.
async fn dispatch_until(service: &CkptService, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + DEADLINE;
    let selection = service.selection_object();
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "callbacks did not arrive within {DEADLINE:?}"
        );
        let _ =
            tokio::time::timeout(std::time::Duration::from_millis(200), selection.ready()).await;
        service.dispatch(DispatchFlags::All).await.unwrap();
    }
}

#[tokio::test]
async fn initialize_negotiates_the_version() {
    let addr = shared_addr();
    let (client, granted) = Client::connect_with_version(&addr, API_VERSION)
        .await
        .unwrap();
    assert_eq!(granted, API_VERSION);
    assert_eq!(client.version(), API_VERSION);
    // An older minor or major of the same release is served at the server's version.
    let older = ApiVersion {
        release_code: b'B',
        major: 1,
        minor: 0,
    };
    let (_, granted) = Client::connect_with_version(&addr, older).await.unwrap();
    assert_eq!(granted, API_VERSION);
    for unsupported in [
        ApiVersion {
            release_code: b'A',
            major: 1,
            minor: 1,
        },
        ApiVersion {
            release_code: b'C',
            major: 1,
            minor: 1,
        },
        ApiVersion {
            release_code: b'B',
            major: API_VERSION.major + 1,
            minor: 0,
        },
    ] {
        let error = Client::connect_with_version(&addr, unsupported)
            .await
            .map(|_| ())
            .unwrap_err();
        assert_eq!(error.code, ErrorCode::VersionMismatch, "{error}");
        // The INOUT version of clCkptInitialize: the supported version comes
        // back as data, not only inside the message.
        assert_eq!(error.supported_version, Some(API_VERSION), "{error}");
        let error = CkptService::initialize(&addr, Callbacks::default(), unsupported)
            .await
            .map(|_| ())
            .unwrap_err();
        assert_eq!(error.code, ErrorCode::VersionMismatch, "{error}");
        assert_eq!(error.supported_version, Some(API_VERSION), "{error}");
    }
    // The negotiated connection works.
    let checkpoint = create(&client, &unique("initialize"), attrs()).await;
    section(&checkpoint, "s", b"v").await;
    assert_eq!(read_str(&checkpoint, "s").await, b"v");
}

#[tokio::test]
async fn open_async_completes_through_the_open_callback() {
    let opened: Collected<(Invocation, Result<Checkpoint, ClientError>)> = Default::default();
    let sink = opened.clone();
    let callbacks = Callbacks {
        open: Some(Box::new(move |invocation, result| {
            sink.lock().unwrap().push((invocation, result))
        })),
        synchronize: None,
    };
    let service = CkptService::initialize(&shared_addr(), callbacks, API_VERSION)
        .await
        .unwrap();
    let name = unique("open-async");
    let missing = unique("open-async-missing");
    service.open_async(7, &name, Some(attrs()), rwc()).unwrap();
    service
        .open_async(8, &missing, None, OpenFlags::READ)
        .unwrap();
    dispatch_until(&service, || opened.lock().unwrap().len() == 2).await;
    let mut results = std::mem::take(&mut *opened.lock().unwrap());
    results.sort_by_key(|(invocation, _)| *invocation);
    let mut results = results.into_iter();
    let (invocation, first) = results.next().unwrap();
    assert_eq!(invocation, 7);
    let checkpoint = first.expect("open 7 succeeded");
    let (invocation, second) = results.next().unwrap();
    assert_eq!(invocation, 8);
    expect_code(second, ErrorCode::NotExist);
    assert!(results.next().is_none());
    // The handle from the callback is a real one.
    assert!(checkpoint.created());
    section(&checkpoint, "s", b"async").await;
    let other = connect().await;
    let reader = open(&other, &name, OpenFlags::READ).await;
    assert_eq!(read_str(&reader, "s").await, b"async");
    assert_eq!(other.stat(&name).await.unwrap().open_count, 2);
}

#[tokio::test]
async fn open_async_parameter_errors_are_returned_by_the_call() {
    // DESIGN.md §2 "async calls": flags, attributes and name are checked
    // by the call itself; nothing reaches the callback and nothing is created.
    let opened: Collected<(Invocation, Result<Checkpoint, ClientError>)> = Default::default();
    let sink = opened.clone();
    let callbacks = Callbacks {
        open: Some(Box::new(move |invocation, result| {
            sink.lock().unwrap().push((invocation, result))
        })),
        synchronize: None,
    };
    let service = CkptService::initialize(&shared_addr(), callbacks, API_VERSION)
        .await
        .unwrap();
    let name = unique("open-async-params");
    let no_mode = CreationAttributes {
        creation_flags: CreationFlags(0),
        ..attrs()
    };
    let unknown_creation_flag = CreationAttributes {
        creation_flags: CreationFlags(CreationFlags::WR_ACTIVE_REPLICA.0 | 0x8000),
        ..attrs()
    };
    let too_big = CreationAttributes {
        checkpoint_size: attrs().max_section_size * u64::from(attrs().max_sections) + 1,
        ..attrs()
    };
    let zero_sections = CreationAttributes {
        max_sections: 0,
        ..attrs()
    };
    // Decoding does not check a name's bounds (the server's validation
    // needs to see it); build an empty one the way a peer could.
    let empty_name: CheckpointName = ckpt_proto::wire::Frame {
        kind: ckpt_proto::wire::FrameKind::Request,
        request_id: 0,
        body: vec![0u8].into(),
    }
    .decode()
    .unwrap();
    let cases: Vec<(
        &CheckpointName,
        Option<CreationAttributes>,
        OpenFlags,
        ErrorCode,
    )> = vec![
        (
            &name,
            Some(attrs()),
            OpenFlags(rwc().0 | 0x40),
            ErrorCode::BadFlag,
        ),
        (&name, None, rwc(), ErrorCode::InvalidParameter),
        (&name, Some(attrs()), rw(), ErrorCode::InvalidParameter),
        (&name, Some(no_mode), rwc(), ErrorCode::InvalidParameter),
        (
            &name,
            Some(unknown_creation_flag),
            rwc(),
            ErrorCode::BadFlag,
        ),
        (&name, Some(too_big), rwc(), ErrorCode::InvalidParameter),
        (
            &name,
            Some(zero_sections),
            rwc(),
            ErrorCode::InvalidParameter,
        ),
        (
            &empty_name,
            Some(attrs()),
            rwc(),
            ErrorCode::InvalidParameter,
        ),
    ];
    for (invocation, (name, attributes, flags, code)) in cases.into_iter().enumerate() {
        let error = expect_code(
            service.open_async(invocation as Invocation, name, attributes.clone(), flags),
            code,
        );
        assert!(!error.message.is_empty());
    }
    // A valid call still completes through the callback, after every
    // refused one: the refused ones queued nothing.
    service
        .open_async(100, &name, Some(attrs()), rwc())
        .unwrap();
    dispatch_until(&service, || !opened.lock().unwrap().is_empty()).await;
    let results = std::mem::take(&mut *opened.lock().unwrap());
    assert_eq!(results.len(), 1);
    let (invocation, result) = results.into_iter().next().unwrap();
    assert_eq!(invocation, 100);
    assert!(result.expect("the valid open").created());
    assert_eq!(service.dispatch(DispatchFlags::All).await.unwrap(), 0);
}

#[tokio::test]
async fn closing_a_handle_cancels_its_callbacks_not_yet_dispatched() {
    // DESIGN.md §2 "async calls": a SynchronizeAsync that completed, and
    // notifications that arrived, for a handle closed before dispatch never
    // reach their callbacks; another handle's callbacks still do.
    let synced: Collected<Invocation> = Default::default();
    let sink = synced.clone();
    let callbacks = Callbacks {
        open: None,
        synchronize: Some(Box::new(move |invocation, result| {
            result.expect("synchronize");
            sink.lock().unwrap().push(invocation)
        })),
    };
    let service = CkptService::initialize(&shared_addr(), callbacks, API_VERSION)
        .await
        .unwrap();
    let name = unique("close-cancels");
    let writer = create(service.client(), &name, attrs()).await;
    let closing = open(service.client(), &name, rw()).await;
    let notified: Collected<Notification> = Default::default();
    let sink = notified.clone();
    service
        .immediate_consumption_register(
            &closing,
            Box::new(move |notification| sink.lock().unwrap().push(notification)),
        )
        .await
        .unwrap();
    section(&writer, "s", b"update").await;
    service.synchronize_async(1, &closing).unwrap();
    service.synchronize_async(2, &writer).unwrap();
    // Both completions and the notification are queued, none dispatched.
    let selection = service.selection_object();
    let deadline = std::time::Instant::now() + DEADLINE;
    while selection.pending() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "callbacks were not queued within {DEADLINE:?}: {} queued, synchronized {:?}",
            selection.pending(),
            synced.lock().unwrap()
        );
        // Not `selection.ready()`: it returns at once while anything is
        // queued, and this task must let the background tasks run.
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(synced.lock().unwrap().is_empty());
    closing.close().await.unwrap();
    assert_eq!(
        selection.pending(),
        1,
        "the closed handle's callbacks are dropped at the close"
    );
    assert_eq!(service.dispatch(DispatchFlags::All).await.unwrap(), 1);
    assert_eq!(*synced.lock().unwrap(), [2]);
    assert!(notified.lock().unwrap().is_empty(), "{notified:?}");
    // Later work on the other handle is delivered as before.
    service.synchronize_async(3, &writer).unwrap();
    dispatch_until(&service, || synced.lock().unwrap().len() == 2).await;
    assert_eq!(*synced.lock().unwrap(), [2, 3]);
}

#[tokio::test]
async fn synchronize_async_completes_through_its_callback() {
    let synced: Collected<(Invocation, Result<(), ClientError>)> = Default::default();
    let sink = synced.clone();
    let callbacks = Callbacks {
        open: None,
        synchronize: Some(Box::new(move |invocation, result| {
            sink.lock().unwrap().push((invocation, result))
        })),
    };
    let service = CkptService::initialize(&shared_addr(), callbacks, API_VERSION)
        .await
        .unwrap();
    let attributes = CreationAttributes {
        creation_flags: CreationFlags::WR_ACTIVE_REPLICA_WEAK,
        ..attrs()
    };
    let name = unique("sync-async");
    let writer = create(service.client(), &name, attributes).await;
    section(&writer, "s", b"").await;
    writer.write(vec![we("s", 0, b"weak data")]).await.unwrap();
    let reader = open(service.client(), &name, OpenFlags::READ).await;
    service.synchronize_async(41, &writer).unwrap();
    service.synchronize_async(42, &reader).unwrap();
    dispatch_until(&service, || synced.lock().unwrap().len() == 2).await;
    let mut results = std::mem::take(&mut *synced.lock().unwrap());
    results.sort_by_key(|(invocation, _)| *invocation);
    assert_eq!(results[0].0, 41);
    results[0]
        .1
        .clone()
        .expect("synchronize through a writable handle");
    assert_eq!(results[1].0, 42);
    expect_code(results[1].1.clone(), ErrorCode::OpNotPermitted);
    assert_eq!(read_str(&reader, "s").await, b"weak data");
}

#[tokio::test]
async fn async_calls_without_their_callback_are_no_callback() {
    let service = CkptService::initialize(&shared_addr(), Callbacks::default(), API_VERSION)
        .await
        .unwrap();
    let name = unique("no-callback");
    expect_code(
        service.open_async(1, &name, Some(attrs()), rwc()),
        ErrorCode::NoCallback,
    );
    let checkpoint = create(service.client(), &name, attrs()).await;
    assert!(
        checkpoint.created(),
        "the failed open_async created nothing"
    );
    expect_code(
        service.synchronize_async(2, &checkpoint),
        ErrorCode::NoCallback,
    );
    assert_eq!(
        service.dispatch(DispatchFlags::All).await.unwrap(),
        0,
        "nothing was queued"
    );
    assert_eq!(service.selection_object().pending(), 0);
}

#[tokio::test]
async fn dispatch_delivers_every_notification_to_the_registered_callback() {
    let service = CkptService::initialize(&shared_addr(), Callbacks::default(), API_VERSION)
        .await
        .unwrap();
    let name = unique("dispatch-notify");
    let writer_client = connect().await;
    let writer = create(&writer_client, &name, attrs()).await;
    let watched = open(service.client(), &name, OpenFlags::READ).await;
    let seen: Collected<Notification> = Default::default();
    let sink = seen.clone();
    let callback = Box::new(move |notification| sink.lock().unwrap().push(notification));
    service
        .immediate_consumption_register(&watched, callback)
        .await
        .unwrap();
    section(&writer, "a", b"1").await;
    writer.write(vec![we("a", 1, b"2")]).await.unwrap();
    writer
        .section_overwrite(&sid("a"), b"3".to_vec())
        .await
        .unwrap();
    writer.section_delete(&sid("a")).await.unwrap();
    writer_client.delete(&name).await.unwrap();
    // One at a time with DISPATCH_ONE first, then the rest.
    let selection = service.selection_object();
    tokio::time::timeout(DEADLINE, selection.ready())
        .await
        .expect("a callback is queued");
    assert_eq!(service.dispatch(DispatchFlags::One).await.unwrap(), 1);
    assert_eq!(seen.lock().unwrap().len(), 1);
    dispatch_until(&service, || seen.lock().unwrap().len() >= 5).await;
    let seen = seen.lock().unwrap().clone();
    let changes: Vec<(u64, Change)> = seen
        .into_iter()
        .map(|n| match n {
            Notification::Update {
                handle,
                seq,
                change,
                ..
            } => {
                assert_eq!(handle, watched.handle());
                (seq, change)
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    for pair in changes.windows(2) {
        assert_eq!(pair[1].0, pair[0].0 + 1, "in log order without gaps");
    }
    let kinds: Vec<Change> = changes.into_iter().map(|(_, c)| c).collect();
    assert_eq!(
        kinds,
        vec![
            Change::SectionCreated {
                section_id: sid("a"),
                data: b"1".to_vec()
            },
            Change::Written {
                elements: vec![we("a", 1, b"2")]
            },
            Change::Overwritten {
                section_id: sid("a"),
                data: b"3".to_vec()
            },
            Change::SectionDeleted {
                section_id: sid("a"),
                expired: false
            },
            Change::Deleted,
        ]
    );
}

#[tokio::test]
async fn service_finalize_closes_handles_and_refuses_later_calls() {
    let observer = connect().await;
    let service = CkptService::initialize(&shared_addr(), Callbacks::default(), API_VERSION)
        .await
        .unwrap();
    let name = unique("service-finalize");
    let checkpoint = create(service.client(), &name, with_retention(0)).await;
    section(&checkpoint, "s", b"x").await;
    assert_eq!(observer.stat(&name).await.unwrap().open_count, 1);
    service.finalize().await.unwrap();
    assert!(
        !exists(&observer, &name).await,
        "the handle was closed, retention 0 deleted it"
    );
    expect_code(
        service.dispatch(DispatchFlags::All).await,
        ErrorCode::InvalidHandle,
    );
    expect_code(
        service.open_async(1, &name, Some(attrs()), rwc()),
        ErrorCode::InvalidHandle,
    );
    expect_code(service.finalize().await, ErrorCode::InvalidHandle);
    expect_code(checkpoint.status().await, ErrorCode::InvalidHandle);
}

// ───────────────────────────── more interactions ─────────────────────────────

#[tokio::test]
async fn a_recreated_checkpoint_is_not_deleted_by_the_old_retention_timer() {
    let client = connect().await;
    let c = &client;
    with_growing_window("old retention timer", 700, async |window_ms| {
        let name = unique("old-timer");
        let sentinel = unique("old-timer-sentinel");
        let retention = window_ms * 1_000_000;
        let old = create(c, &name, with_retention(retention)).await;
        section(&old, "s", b"old").await;
        let s = create(c, &sentinel, with_retention(retention)).await;
        let closed_at = std::time::Instant::now();
        old.close().await.unwrap();
        s.close().await.unwrap();
        // The old instance's timer is running; delete it and create anew.
        match c.delete(&name).await {
            Ok(()) => {}
            Err(error)
                if error.code == ErrorCode::NotExist
                    && closed_at.elapsed().as_millis() >= window_ms as u128 =>
            {
                return Window::TooSlow("the old timer fired before the delete".into())
            }
            Err(error) => panic!("delete: {error}"),
        }
        let new = create(c, &name, with_retention(TIME_END)).await;
        assert!(new.created());
        section(&new, "s", b"new").await;
        new.close().await.unwrap();
        eventually_gone(c, &sentinel).await;
        let info = c
            .stat(&name)
            .await
            .expect("the new instance survives the old timer");
        assert_eq!(
            (info.status.number_of_sections, info.status.memory_used),
            (1, 3)
        );
        let again = open(c, &name, OpenFlags::READ).await;
        assert_eq!(read_str(&again, "s").await, b"new");
        Window::Done
    })
    .await;
}

#[tokio::test]
async fn concurrent_multi_element_writes_are_atomic_to_readers() {
    let name = unique("concurrent-atomic");
    let setup = connect().await;
    let checkpoint = create(&setup, &name, attrs()).await;
    section(&checkpoint, "a", &[0; 64]).await;
    section(&checkpoint, "b", &[0; 64]).await;
    let mut writers = Vec::new();
    for w in 1..=4u8 {
        let name = name.clone();
        writers.push(tokio::spawn(async move {
            let client = connect().await;
            let checkpoint = open(&client, &name, OpenFlags::WRITE).await;
            for round in 0..50u8 {
                let value = w.wrapping_mul(60).wrapping_add(round);
                let fill = [value; 64];
                checkpoint
                    .write(vec![we("a", 0, &fill), we("b", 0, &fill)])
                    .await
                    .unwrap();
            }
        }));
    }
    let reader_client = connect().await;
    let reader = open(&reader_client, &name, OpenFlags::READ).await;
    let mut reads = 0;
    while !writers.iter().all(|w| w.is_finished()) || reads < 20 {
        let data = reader
            .read(vec![re("a", 0, None), re("b", 0, None)])
            .await
            .unwrap();
        assert_eq!(data[0].len(), 64);
        assert!(
            data[0].iter().all(|&b| b == data[0][0]),
            "torn section a: {:?}",
            data[0]
        );
        assert_eq!(data[0], data[1], "a and b come from different writes");
        reads += 1;
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let status = reader.status().await.unwrap();
    assert_eq!((status.number_of_sections, status.memory_used), (2, 128));
}

#[tokio::test]
async fn retention_duration_set_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = common::Server::start(dir.path());
    let name = unique("retention-set-restart");
    {
        let client = connect_to(&server.addr).await;
        let checkpoint = create(&client, &name, with_retention(0)).await;
        section(&checkpoint, "s", b"keep me").await;
        checkpoint.retention_duration_set(TIME_END).await.unwrap();
        checkpoint.close().await.unwrap();
        assert!(exists(&client, &name).await);
        server.kill();
    }
    let server = common::Server::start(dir.path());
    let client = connect_to(&server.addr).await;
    let info = client
        .stat(&name)
        .await
        .expect("retention forever was kept across the restart");
    assert_eq!(info.status.attributes.retention_duration_ns, TIME_END);
    let checkpoint = open(&client, &name, OpenFlags::READ).await;
    assert_eq!(read_str(&checkpoint, "s").await, b"keep me");
}

#[tokio::test]
async fn section_expiry_is_applied_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = common::Server::start(dir.path());
    let d = &dir;
    let server_ref = &mut server;
    with_growing_window("expiry after a restart", 1_500, async |window_ms| {
        let name = unique("expiry-restart");
        let at = in_ms(window_ms);
        {
            let client = connect_to(&server_ref.addr).await;
            let checkpoint = create(&client, &name, attrs()).await;
            match checkpoint
                .section_create(expiring("short", at), b"short".to_vec())
                .await
            {
                Ok(_) => {}
                Err(error) if error.code == ErrorCode::InvalidParameter && passed(at) => {
                    return Window::TooSlow("created after its expiry".into())
                }
                Err(error) => panic!("create: {error}"),
            }
            section(&checkpoint, "long", b"long").await;
            server_ref.kill();
        }
        *server_ref = common::Server::start(d.path());
        let client = connect_to(&server_ref.addr).await;
        let checkpoint = open(&client, &name, OpenFlags::READ).await;
        let cp = &checkpoint;
        eventually("the section expires after the restart", async || {
            cp.status().await.unwrap().number_of_sections == 1
        })
        .await;
        assert!(passed(at), "expired before its time");
        expect_code(
            checkpoint.read(vec![re("short", 0, None)]).await,
            ErrorCode::NotExist,
        );
        assert_eq!(read_str(&checkpoint, "long").await, b"long");
        Window::Done
    })
    .await;
}

/// Two updates a subscriber misses, then a crash: the subscriber that
/// resubscribes with its last seen seq after the restart. Returns the server
/// (restarted with `extra`), the subscription, a writer and the last seq.
async fn miss_two_updates_across_a_crash(
    dir: &std::path::Path,
    extra: &[&str],
) -> (
    common::Server,
    Client,
    Checkpoint,
    Checkpoint,
    ckpt_client::Subscription,
    u64,
) {
    let mut server = common::Server::start_with(dir, extra);
    let name = unique("resume-restart");
    let last_seen;
    {
        let writer_client = connect_to(&server.addr).await;
        let writer = create(&writer_client, &name, attrs()).await;
        {
            let subscriber_client = connect_to(&server.addr).await;
            let watched = open(&subscriber_client, &name, OpenFlags::READ).await;
            let mut subscription = watched.subscribe(None).await.unwrap();
            section(&writer, "s", b"1").await;
            last_seen = next_update(&mut subscription).await.0;
        }
        writer.write(vec![we("s", 1, b"2")]).await.unwrap();
        writer.write(vec![we("s", 2, b"3")]).await.unwrap();
        server.kill();
    }
    let server = common::Server::start_with(dir, extra);
    let client = connect_to(&server.addr).await;
    let writer = open(&client, &name, rw()).await;
    let watched = open(&client, &name, OpenFlags::READ).await;
    let subscription = watched.subscribe(Some(last_seen)).await.unwrap();
    (server, client, writer, watched, subscription, last_seen)
}

#[tokio::test]
async fn resuming_a_subscription_after_a_server_restart_has_no_gap() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, _client, writer, _watched, mut subscription, last_seen) =
        miss_two_updates_across_a_crash(dir.path(), &[]).await;
    // The log still holds the missed updates: they come, in order.
    let (seq, change) = next_update(&mut subscription).await;
    assert_eq!(seq, last_seen + 1);
    assert_eq!(
        change,
        Change::Written {
            elements: vec![we("s", 1, b"2")]
        }
    );
    let (seq, change) = next_update(&mut subscription).await;
    assert_eq!(seq, last_seen + 2);
    assert_eq!(
        change,
        Change::Written {
            elements: vec![we("s", 2, b"3")]
        }
    );
    writer.write(vec![we("s", 3, b"4")]).await.unwrap();
    let (seq, change) = next_update(&mut subscription).await;
    assert_eq!(seq, last_seen + 3);
    assert_eq!(
        change,
        Change::Written {
            elements: vec![we("s", 3, b"4")]
        }
    );
}

#[tokio::test]
async fn resuming_after_the_log_was_trimmed_is_told_to_resync() {
    let dir = tempfile::tempdir().unwrap();
    // No log history kept: the restart trims every segment RocksDB covers.
    let (_server, _client, writer, watched, mut subscription, last_seen) =
        miss_two_updates_across_a_crash(dir.path(), &["--wal-history-bytes", "0"]).await;
    match next_notification(&mut subscription).await {
        Notification::Resync {
            after_seq,
            next_seq,
            ..
        } => {
            assert_eq!(after_seq, last_seen);
            assert_eq!(next_seq, last_seen + 3, "the resync names the next update");
        }
        other => panic!("expected a Resync, the log no longer holds the updates: {other:?}"),
    }
    assert_eq!(
        read_str(&watched, "s").await,
        b"123",
        "re-reading gives the current state"
    );
    writer.write(vec![we("s", 3, b"4")]).await.unwrap();
    let (seq, change) = next_update(&mut subscription).await;
    assert_eq!(seq, last_seen + 3);
    assert_eq!(
        change,
        Change::Written {
            elements: vec![we("s", 3, b"4")]
        }
    );
}
