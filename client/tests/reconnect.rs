//! The client against real `ckpt-server` processes: a node list with a dead
//! node, and a server SIGKILLed and restarted on the same port and data
//! directory while a handle is open, a subscription runs and a write is
//! issued.
//!
//! Needs `target/release/ckpt-server` (`cargo build --release -p
//! ckpt-server`), or `CKPT_BIN_DIR` naming the directory holding it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ckpt_client::{Client, ClientOptions};
use ckpt_proto::wire::{Change, Notification, Reply, Request};
use ckpt_proto::{
    CheckpointName, CreationAttributes, CreationFlags, OpenFlags, ReadElement, SectionId, TIME_END,
};
use futures::StreamExt;

fn server_binary() -> PathBuf {
    let dir = match std::env::var("CKPT_BIN_DIR") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => {
            // target/release/deps/reconnect-… → target/release
            let exe = std::env::current_exe().expect("test executable path");
            exe.parent()
                .and_then(Path::parent)
                .expect("target dir")
                .to_path_buf()
        }
    };
    let path = dir.join("ckpt-server");
    assert!(
        path.exists(),
        "{} is missing: cargo build --release -p ckpt-server",
        path.display()
    );
    path
}

/// A `ckpt-server` child, SIGKILLed when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    /// Starts a server on `data_dir` listening on `listen` and waits for
    /// its "ready" line.
    fn start(data_dir: &Path, listen: &str) -> Server {
        let mut child = Command::new(server_binary())
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", listen, "--admin-listen", "127.0.0.1:0"])
            .env("CKPT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ckpt-server starts");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Keep draining so the server never blocks on its log.
                    continue;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut lines = Vec::new();
        while Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    if line.contains("ckpt-server ready") {
                        let addr = line
                            .split_whitespace()
                            .find_map(|word| word.strip_prefix("listen="))
                            .map(|v| v.trim_matches('"').to_string())
                            .unwrap_or_else(|| panic!("no listen= in {line:?}"));
                        return Server { child, addr };
                    }
                    lines.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        // Exited (and reaped by try_wait).
                        panic!("ckpt-server exited with {status}:\n{}", lines.join("\n"));
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("ckpt-server was not ready in time:\n{}", lines.join("\n"));
    }

    /// SIGKILL, as a crash would.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An address nobody listens on (bound, then released).
fn dead_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

fn attributes() -> CreationAttributes {
    CreationAttributes {
        creation_flags: CreationFlags::WR_ACTIVE_REPLICA,
        checkpoint_size: 4096,
        retention_duration_ns: TIME_END,
        max_sections: 1,
        max_section_size: 4096,
        max_section_id_size: 0,
    }
}

async fn read_default(checkpoint: &ckpt_client::Checkpoint) -> Vec<u8> {
    checkpoint
        .read(vec![ReadElement {
            section_id: SectionId::DEFAULT,
            offset: 0,
            size: None,
        }])
        .await
        .unwrap()
        .pop()
        .unwrap()
}

/// Waits until `condition` holds, failing after `limit`.
async fn wait_for(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_dead_node_in_the_list_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0");
    let dead = dead_addr();
    let client = Client::connect(&format!("{dead},{}", server.addr))
        .await
        .unwrap();
    assert_eq!(client.node(), Some(server.addr.clone()));
    let name = CheckpointName::new("dead-node-skipped").unwrap();
    let flags = OpenFlags::CREATE | OpenFlags::READ | OpenFlags::WRITE;
    let checkpoint = client.open(&name, Some(attributes()), flags).await.unwrap();
    checkpoint
        .section_overwrite(&SectionId::DEFAULT, b"live".to_vec())
        .await
        .unwrap();
    assert_eq!(read_default(&checkpoint).await, b"live");
    // Only dead nodes: the error names each one.
    let error = Client::connect(&format!("{dead},{}", dead_addr()))
        .await
        .unwrap_err();
    assert!(error.is_connection_lost(), "{error}");
    assert!(error.message.contains("any of 2 nodes"), "{error}");
}

#[tokio::test]
async fn a_killed_and_restarted_server_takes_the_session_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), "127.0.0.1:0");
    let addr = server.addr.clone();
    let options = ClientOptions::new().reconnect_timeout(Duration::from_secs(120));
    let client = Client::connect_with_options(&addr, options).await.unwrap();
    let name = CheckpointName::new("survives-restart").unwrap();
    let flags = OpenFlags::CREATE | OpenFlags::READ | OpenFlags::WRITE;
    let checkpoint = client.open(&name, Some(attributes()), flags).await.unwrap();
    let handle = checkpoint.handle();
    let mut subscription = checkpoint.subscribe(None).await.unwrap();
    checkpoint
        .section_overwrite(&SectionId::DEFAULT, b"before".to_vec())
        .await
        .unwrap();
    let before = subscription.next().await.expect("the update of 'before'");
    let Notification::Update {
        seq: before_seq, ..
    } = before
    else {
        panic!("{before:?}")
    };

    server.kill();
    wait_for("the client to notice", Duration::from_secs(30), || {
        client.node().is_none()
    })
    .await;
    // Issued while no server runs: it waits for the restart.
    let write = {
        let client = client.clone();
        let name = name.clone();
        tokio::spawn(async move {
            let checkpoint = client.open(&name, None, OpenFlags::WRITE).await?;
            checkpoint
                .section_overwrite(&SectionId::DEFAULT, b"during".to_vec())
                .await?;
            checkpoint.close().await
        })
    };
    // And one on the handle opened before the outage (raw, on a clone).
    let during = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .request(Request::SectionOverwrite {
                    handle,
                    section_id: SectionId::DEFAULT,
                    data: b"outage".to_vec(),
                })
                .await
        })
    };
    // Both are registered (in flight) before the server comes back.
    wait_for("both writes to be pending", Duration::from_secs(30), || {
        client.pending() >= 2
    })
    .await;

    let _restarted = Server::start(dir.path(), &addr);
    let reply = during
        .await
        .unwrap()
        .expect("the write issued during the outage completes");
    assert_eq!(reply, Reply::Done);
    write
        .await
        .unwrap()
        .expect("an open and a write issued during the outage complete");
    assert!(client.reconnects() >= 1);
    assert_eq!(client.node(), Some(addr.clone()));
    assert_eq!(checkpoint.handle(), handle, "the caller's handle is kept");

    // The old handle works on the new connection, and sees both writes.
    let value = read_default(&checkpoint).await;
    assert!(
        value == b"during" || value == b"outage",
        "{:?}",
        String::from_utf8_lossy(&value)
    );
    checkpoint
        .section_overwrite(&SectionId::DEFAULT, b"after".to_vec())
        .await
        .unwrap();
    assert_eq!(read_default(&checkpoint).await, b"after");

    // The subscription resumed after 'before' without a gap: the next
    // updates are the outage writes and 'after', in order, numbered on.
    let mut seen = Vec::new();
    let mut expected_seq = before_seq + 1;
    while seen.last().map(Vec::as_slice) != Some(&b"after"[..]) {
        let notification = tokio::time::timeout(Duration::from_secs(30), subscription.next())
            .await
            .expect("notifications keep coming after the restart")
            .expect("the subscription is still open");
        match notification {
            Notification::Update {
                handle: got,
                seq,
                change: Change::Overwritten { data, .. },
                ..
            } => {
                assert_eq!(got, handle);
                assert_eq!(seq, expected_seq, "no gap, no repeat");
                expected_seq += 1;
                seen.push(data);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    checkpoint.close().await.unwrap();
    client.finalize().await.unwrap();
}
