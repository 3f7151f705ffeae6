//! `ckpt-tool status` and `ckpt-tool watch` against a real server (issue
//! #12 point 7).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{bin, text, tool, Server};

fn ok(args: &[&str]) -> String {
    let output = tool(args);
    assert!(output.status.success(), "{args:?}: {}", text(&output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn status_shows_the_server_at_a_glance() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let addr = server.addr.as_str();
    ok(&["--addr", addr, "create", "orders", "--max-sections", "4"]);
    ok(&["--addr", addr, "section-create", "orders", "a"]);

    let out = ok(&["status", "--admin", &server.admin]);
    for expected in [
        "server       ckpt-server ",
        "ready        yes (ready)",
        "poisoned     no",
        "checkpoints  1 (1 sections",
        &format!("data dir     {}", dir.path().display()),
    ] {
        assert!(out.contains(expected), "{expected:?} in:\n{out}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["status", "--admin", &server.admin, "--json"])).unwrap();
    assert_eq!(json["ready"], true);
    assert_eq!(json["checkpoints"], 1);
    assert!(
        json["applied_lsn"].as_u64().is_some_and(|l| l > 0),
        "{json}"
    );
    assert!(json["uptime_s"].as_u64().is_some(), "{json}");

    // Nothing listening: a clear failure naming the address, exit 4
    // (server unreachable).
    let dead = common::free_port();
    let output = tool(&["status", "--admin", &format!("127.0.0.1:{dead}")]);
    assert_eq!(output.status.code(), Some(4), "{}", text(&output));
    assert!(
        text(&output).contains(&dead.to_string()),
        "{}",
        text(&output)
    );
}

#[test]
fn watch_follows_updates_and_resumes_from_a_sequence_number() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let addr = server.addr.as_str();
    ok(&["--addr", addr, "create", "feed", "--max-sections", "1000"]);
    let mut watcher = Command::new(bin("ckpt-tool"))
        .args(["--addr", addr, "watch", "feed", "--count", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watcher.stdout.take().unwrap()).lines();
    // The watcher is subscribed once an update made after its start
    // reaches it: write until two lines arrived. Should none arrive in
    // 30 s, the watcher is killed and the test fails instead of hanging.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let addr = addr.to_string();
        let stop = stop.clone();
        let pid = watcher.id().to_string();
        std::thread::spawn(move || {
            for i in 0..600 {
                if stop.load(std::sync::atomic::Ordering::Acquire) {
                    return;
                }
                let output = tool(&["--addr", &addr, "section-create", "feed", &format!("s{i}")]);
                assert!(output.status.success(), "{}", text(&output));
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let _ = Command::new("kill").args(["-9", &pid]).status();
        })
    };
    let first = lines.next().expect("a first line").unwrap();
    let second = lines.next().expect("a second line").unwrap();
    stop.store(true, std::sync::atomic::Ordering::Release);
    assert!(
        watcher.wait().unwrap().success(),
        "watch --count 2 ends by itself"
    );
    let seq = |line: &str| -> u64 {
        line.split('\t')
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("{line}"))
    };
    assert!(first.contains("\tcreated\ts"), "{first}");
    assert_eq!(seq(&second), seq(&first) + 1, "{first} / {second}");
    // Resuming after the first gives the second again, as JSON.
    let resumed = ok(&[
        "--addr",
        addr,
        "watch",
        "feed",
        "--from",
        &seq(&first).to_string(),
        "--count",
        "1",
        "--json",
    ]);
    let update: serde_json::Value = serde_json::from_str(resumed.trim()).unwrap();
    assert_eq!(update["seq"].as_u64(), Some(seq(&second)), "{resumed}");
    assert!(update["change"]["SectionCreated"].is_object(), "{resumed}");
    drop(lines);
    writer.join().unwrap();
    // A checkpoint that does not exist: the client error, exit 3 (not
    // found).
    let output = tool(&["--addr", addr, "watch", "nosuch", "--count", "1"]);
    assert_eq!(output.status.code(), Some(3));
    assert!(text(&output).contains("NOT_EXIST"), "{}", text(&output));
}
