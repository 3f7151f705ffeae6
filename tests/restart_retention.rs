//! DESIGN.md §2 "close/retention": downtime never deletes data. A checkpoint
//! with retention 0 that was open when the server crashed was never closed;
//! after the restart its owner must be able to open it again with its data.

#[path = "common/client.rs"]
mod client_helpers;
mod common;

use ckpt_proto::{CreationFlags, ErrorCode};
use client_helpers::*;
use common::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retention_0_checkpoint_open_at_a_crash_survives_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let name = unique("ret0");
    {
        let client = connect_to(&server.addr).await;
        let mut attributes = attrs();
        attributes.retention_duration_ns = 0;
        attributes.creation_flags = CreationFlags::WR_ACTIVE_REPLICA;
        let checkpoint = create(&client, &name, attributes).await;
        section(&checkpoint, "s", b"still here").await;
        // The handle stays open: the crash, not a close, ends it.
        server.kill();
        drop(checkpoint);
    }
    let server = Server::start(dir.path());
    let client = connect_to(&server.addr).await;
    let checkpoint = client.open(&name, None, rw()).await;
    let checkpoint = checkpoint.unwrap_or_else(|e| {
        panic!("the retention-0 checkpoint open at the crash is gone after the restart: {e}")
    });
    assert_eq!(read_str(&checkpoint, "s").await, b"still here");
    // Retention 0 still means what it says once it is closed again.
    checkpoint.close().await.unwrap();
    eventually_gone(&client, &name).await;
    expect_code(client.open(&name, None, rw()).await, ErrorCode::NotExist);
}

/// A checkpoint deleted while open is only unlinked: its data goes at the
/// last close. A crash is no close, so the restart destroys it (and starts
/// retention timers) from the list the store picked at open, not a scan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_deleted_while_open_at_a_crash_is_destroyed_at_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let kept = unique("kept");
    let gone = unique("gone");
    {
        let client = connect_to(&server.addr).await;
        let keeper = create(&client, &kept, attrs()).await;
        section(&keeper, "s", b"kept").await;
        let doomed = create(&client, &gone, attrs()).await;
        section(&doomed, "s", b"doomed").await;
        client.delete(&gone).await.unwrap();
        server.kill();
        drop((keeper, doomed));
    }
    let mut server = Server::start(dir.path());
    let destroyed = server
        .drain_log()
        .iter()
        .any(|line| line.contains("destroying a checkpoint deleted before the restart"));
    assert!(destroyed, "{}", server.drain_log().join("\n"));
    let client = connect_to(&server.addr).await;
    expect_code(client.open(&gone, None, rw()).await, ErrorCode::NotExist);
    let keeper = client.open(&kept, None, rw()).await.unwrap();
    assert_eq!(read_str(&keeper, "s").await, b"kept");
    drop((keeper, client));
    assert!(server.terminate().success());
    // Nothing of it is left in the store.
    let mut config = ckpt_storage::StoreConfig::new(dir.path());
    config.reserve_bytes = 0;
    let store = ckpt_storage::Store::open(config).unwrap();
    let names: Vec<_> = store
        .instances()
        .unwrap()
        .into_iter()
        .map(|(_, meta)| meta.name)
        .collect();
    assert_eq!(names, vec![kept]);
}
