//! Open, close and delete from many clients at once, against a real
//! `ckpt-server`: they share group commits like writes do (no node-wide
//! serialisation), and the races that sharing makes possible — two creates
//! of one name, a delete racing opens, a close racing a retention timer —
//! keep every handle usable and every name unambiguous.

#[path = "common/client.rs"]
mod client_helpers;
mod common;

use std::sync::Arc;

use ckpt_client::Client;
use ckpt_proto::{CreationAttributes, ErrorCode, OpenFlags};
use client_helpers::*;
use common::{http_get, Server};

const CLIENTS: usize = 64;

/// `ckpt_wal_group_commits_total` now.
fn group_commits(admin: &str) -> u64 {
    let (status, body) = http_get(admin, "/metrics");
    assert_eq!(status, 200);
    body.lines()
        .find_map(|line| line.strip_prefix("ckpt_wal_group_commits_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("ckpt_wal_group_commits_total exported")
}

async fn clients(addr: &str, n: usize) -> Vec<Client> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(connect_to(addr).await);
    }
    out
}

/// Runs `work(i, client)` for every client at once (released together).
async fn all_at_once<T, F, Fut>(clients: &[Client], work: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize, Client) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let barrier = Arc::new(tokio::sync::Barrier::new(clients.len()));
    let tasks: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(i, client)| {
            let barrier = barrier.clone();
            let job = work(i, client.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                job.await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(task.await.expect("task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn opens_and_deletes_from_64_clients_share_group_commits() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let clients = clients(&server.addr, CLIENTS).await;
    let names: Vec<_> = (0..CLIENTS).map(|_| unique("batch")).collect();

    let before = group_commits(&server.admin);
    let names_c = names.clone();
    let handles = all_at_once(&clients, move |i, client| {
        let name = names_c[i].clone();
        async move { create(&client, &name, attrs()).await }
    })
    .await;
    let opens = group_commits(&server.admin) - before;
    // Serialised, every creation is its own group commit (64); shared,
    // they ride on a few.
    assert!(
        opens <= (CLIENTS / 2) as u64,
        "64 concurrent creations took {opens} group commits"
    );

    for handle in handles {
        handle.close().await.unwrap();
    }
    let before = group_commits(&server.admin);
    let names_d = names.clone();
    let deleted = all_at_once(&clients, move |i, client| {
        let name = names_d[i].clone();
        async move { client.delete(&name).await }
    })
    .await;
    for result in deleted {
        result.unwrap();
    }
    let deletes = group_commits(&server.admin) - before;
    // Each delete logs an unlink and a destroy: 128 commits serialised.
    assert!(
        deletes <= CLIENTS as u64,
        "64 concurrent deletes took {deletes} group commits"
    );
    for name in &names {
        assert!(!exists(&clients[0], name).await, "{name} still exists");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_of_one_name_make_one_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let clients = clients(&server.addr, CLIENTS).await;
    let name = unique("same");
    let name_c = name.clone();
    let opened = all_at_once(&clients, move |_, client| {
        let name = name_c.clone();
        async move { create(&client, &name, attrs()).await }
    })
    .await;
    let created = opened.iter().filter(|c| c.created()).count();
    assert_eq!(created, 1, "exactly one open creates the checkpoint");
    section(&opened[0], "s", b"one").await;
    for checkpoint in &opened {
        assert_eq!(read_str(checkpoint, "s").await, b"one");
    }
    assert_eq!(
        clients[0].stat(&name).await.unwrap().open_count,
        CLIENTS as u32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delete_racing_opens_leaves_no_handle_dangling() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let clients = clients(&server.addr, 9).await;
    for round in 0..20 {
        let name = unique("del-race");
        let creator = create(&clients[0], &name, attrs()).await;
        section(&creator, "s", b"v").await;
        creator.close().await.unwrap();
        let name_c = name.clone();
        let results = all_at_once(&clients, move |i, client| {
            let name = name_c.clone();
            async move {
                if i == 0 {
                    client.delete(&name).await.map(|()| None)
                } else {
                    client
                        .open(&name, None, OpenFlags::READ | OpenFlags::WRITE)
                        .await
                        .map(Some)
                }
            }
        })
        .await;
        let mut handles = Vec::new();
        for (i, result) in results.into_iter().enumerate() {
            match result {
                Ok(Some(handle)) => handles.push(handle),
                Ok(None) => assert_eq!(i, 0),
                Err(error) => assert_eq!(
                    error.code,
                    ErrorCode::NotExist,
                    "round {round} client {i}: {error}"
                ),
            }
        }
        // The name is gone; every handle that was opened still works on
        // the deleted checkpoint until it is closed.
        assert!(!exists(&clients[0], &name).await, "round {round}");
        for handle in &handles {
            handle
                .write(vec![we("s", 0, b"w")])
                .await
                .unwrap_or_else(|e| panic!("round {round}: write on an open handle: {e}"));
            assert_eq!(read_str(handle, "s").await, b"w");
        }
        for handle in handles {
            handle.close().await.unwrap();
        }
        // The name can be created afresh.
        let again = create(&clients[0], &name, attrs()).await;
        assert!(again.created(), "round {round}");
        // A new instance: the old one's section is not in it.
        expect_code(
            again.read(vec![re("s", 0, None)]).await,
            ErrorCode::NotExist,
        );
        again.close().await.unwrap();
        clients[0].delete(&name).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_close_racing_its_retention_timer_keeps_open_handles_valid() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let clients = clients(&server.addr, 8).await;
    let name = unique("retention-race");
    let attributes = CreationAttributes {
        retention_duration_ns: 1_000_000, // 1 ms: the timer fires between opens
        ..attrs()
    };
    let name_c = name.clone();
    let results = all_at_once(&clients, move |i, client| {
        let name = name_c.clone();
        let attributes = attributes.clone();
        async move {
            for round in 0..40 {
                let checkpoint = client
                    .open(&name, Some(attributes.clone()), rwc())
                    .await
                    .map_err(|e| format!("client {i} round {round}: open: {e}"))?;
                // Each client owns section c<i>; it exists unless the
                // instance is a fresh one. A handle on a destroyed instance
                // would fail both calls with NOT_EXIST.
                let own = format!("c{i}");
                match checkpoint.section_create(forever(&own), vec![]).await {
                    Ok(_) => {}
                    Err(e) if e.code == ErrorCode::AlreadyExist => {}
                    Err(e) => return Err(format!("client {i} round {round}: section create: {e}")),
                }
                let value = format!("{i}-{round}");
                checkpoint
                    .write(vec![we(&own, 0, value.as_bytes())])
                    .await
                    .map_err(|e| {
                        format!("client {i} round {round}: write on an open handle: {e}")
                    })?;
                checkpoint.status().await.map_err(|e| {
                    format!("client {i} round {round}: status on an open handle: {e}")
                })?;
                checkpoint
                    .close()
                    .await
                    .map_err(|e| format!("client {i} round {round}: close: {e}"))?;
            }
            Ok::<(), String>(())
        }
    })
    .await;
    for result in results {
        result.unwrap();
    }
    eventually_gone(&clients[0], &name).await;
}
