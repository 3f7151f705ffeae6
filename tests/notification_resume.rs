//! Resuming subscribers served from the write-ahead log while the server
//! runs: with no in-memory history at all every missed update must come
//! from the log, in order and without gaps; once the log has been trimmed
//! past them, the subscriber is told to re-read.

#[path = "common/client.rs"]
mod client_helpers;
mod common;

use std::time::{Duration, Instant};

use ckpt_proto::wire::{Change, Notification};
use ckpt_proto::OpenFlags;
use client_helpers::*;
use common::Server;

fn segments(server: &Server) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(server.data_dir.join("wal"))
        .expect("wal dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("wal-") && n.ends_with(".log"))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn with_no_memory_history_missed_updates_come_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &["--notification-history-bytes-max", "0"]);
    let client = connect_to(&server.addr).await;
    let name = unique("from-log");
    let writer = create(&client, &name, attrs()).await;
    let last_seen = {
        let subscriber = connect_to(&server.addr).await;
        let watched = open(&subscriber, &name, OpenFlags::READ).await;
        let mut subscription = watched.subscribe(None).await.unwrap();
        section(&writer, "s", b"1").await;
        next_update(&mut subscription).await.0
    };
    // Missed: every kind of update, some on another checkpoint between.
    let other = create(&client, &unique("other"), attrs()).await;
    writer.write(vec![we("s", 1, b"2")]).await.unwrap();
    section(&other, "x", b"noise").await;
    writer
        .section_create(forever("t"), b"T".to_vec())
        .await
        .unwrap();
    writer
        .section_overwrite(&sid("t"), b"TT".to_vec())
        .await
        .unwrap();
    writer.section_delete(&sid("t")).await.unwrap();

    let subscriber = connect_to(&server.addr).await;
    let watched = open(&subscriber, &name, OpenFlags::READ).await;
    let mut subscription = watched.subscribe(Some(last_seen)).await.unwrap();
    let expected = [
        Change::Written {
            elements: vec![we("s", 1, b"2")],
        },
        Change::SectionCreated {
            section_id: sid("t"),
            data: b"T".to_vec(),
        },
        Change::Overwritten {
            section_id: sid("t"),
            data: b"TT".to_vec(),
        },
        Change::SectionDeleted {
            section_id: sid("t"),
            expired: false,
        },
    ];
    for (i, want) in expected.iter().enumerate() {
        let (seq, change) = next_update(&mut subscription).await;
        assert_eq!(seq, last_seen + 1 + i as u64);
        assert_eq!(&change, want);
    }
    writer.write(vec![we("s", 2, b"3")]).await.unwrap();
    let (seq, _) = next_update(&mut subscription).await;
    assert_eq!(seq, last_seen + 1 + expected.len() as u64);
}

#[tokio::test]
async fn once_the_log_is_trimmed_past_the_missed_updates_the_subscriber_resyncs() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ckpt.toml");
    std::fs::write(
        &config,
        "segment_bytes_max = 65536\nwal_history_bytes = 0\nnotification_history_bytes_max = 0\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let server = Server::start_with(&data, &["--config", config.to_str().unwrap()]);
    let client = connect_to(&server.addr).await;
    let name = unique("trimmed");
    let writer = create(&client, &name, attrs()).await;
    let last_seen = {
        let subscriber = connect_to(&server.addr).await;
        let watched = open(&subscriber, &name, OpenFlags::READ).await;
        let mut subscription = watched.subscribe(None).await.unwrap();
        section(&writer, "s", b"1").await;
        next_update(&mut subscription).await.0
    };
    writer.write(vec![we("s", 1, b"2")]).await.unwrap();
    // Write elsewhere until every segment that held the missed update is gone.
    let holding = segments(&server);
    let other = create(&client, &unique("filler"), attrs()).await;
    section(&other, "f", b"").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut filler = 0u64;
    while segments(&server).iter().any(|s| holding.contains(s)) {
        assert!(
            Instant::now() < deadline,
            "the log was not trimmed: {:?}",
            segments(&server)
        );
        other
            .section_overwrite(&sid("f"), vec![filler as u8; 16 * 1024])
            .await
            .unwrap();
        filler += 1;
    }
    let subscriber = connect_to(&server.addr).await;
    let watched = open(&subscriber, &name, OpenFlags::READ).await;
    let mut subscription = watched.subscribe(Some(last_seen)).await.unwrap();
    match next_notification(&mut subscription).await {
        Notification::Resync {
            after_seq,
            next_seq,
            ..
        } => {
            assert_eq!(after_seq, last_seen);
            assert_eq!(next_seq, last_seen + 2);
        }
        other => panic!("expected a Resync after the log was trimmed, got {other:?}"),
    }
    assert_eq!(read_str(&watched, "s").await, b"12");
}
