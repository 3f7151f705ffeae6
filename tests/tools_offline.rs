//! Offline `ckpt-tool` commands on a data directory a running server holds:
//! the ones that change it (`restore --data-dir`, `salvage`) refuse, with a
//! message naming the directory, the holder's pid and what to do, and
//! change nothing; the ones that only look (`ls`, `stat`, `dump`, `wal`,
//! `verify`) open it read-only, show the server's data and leave the
//! server undisturbed. Once the server stops every command works.

mod common;

use common::{text, tool, Server};

#[test]
fn offline_commands_that_change_refuse_a_directory_in_use_and_looking_works() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data);
    let addr = server.addr.clone();
    let created = tool(&["create", "held", "--addr", &addr]);
    assert!(created.status.success());
    let data_s = data.to_str().unwrap().to_string();
    // A dump to restore offline.
    let dump = dir.path().join("held.ckd");
    let dump_s = dump.to_str().unwrap().to_string();
    assert!(tool(&["dump", "held", "-o", &dump_s, "--addr", &addr])
        .status
        .success());
    let out = dir.path().join("offline.ckd");
    let out_s = out.to_str().unwrap().to_string();
    let changing: Vec<Vec<&str>> = vec![
        vec!["restore", &dump_s, "--replace", "--data-dir", &data_s],
        vec!["salvage", "--data-dir", &data_s],
    ];
    let looking: Vec<Vec<&str>> = vec![
        vec!["ls", "--data-dir", &data_s],
        vec!["stat", "held", "--data-dir", &data_s],
        vec!["dump", "--all", "-o", &out_s, "--data-dir", &data_s],
        vec!["verify", "--data-dir", &data_s],
        vec!["wal", "--data-dir", &data_s],
    ];
    let pid = server.pid().to_string();
    // The server itself changes the listing once: at its first commit after
    // the zero-filled spare is ready it moves from the segment it started
    // with to the spare, then fills the next spare (docs/storage.md,
    // "Preallocated segments"). Let that happen first, so that below only
    // the tool could change it.
    let listing = || -> Vec<String> {
        std::fs::read_dir(data.join("wal"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut commits = 0;
    loop {
        let names = listing();
        let segments = names.iter().filter(|n| n.ends_with(".log")).count();
        let spare = names.iter().any(|n| n == "wal-spare.tmp");
        if segments >= 2 && spare {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server never moved to a preallocated segment: {names:?}"
        );
        if spare && segments < 2 {
            // A commit, for the server to rotate at once the spare is ready.
            let name = format!("settle-{commits}");
            commits += 1;
            assert!(tool(&["create", &name, "--addr", &addr]).status.success());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let wal_before: Vec<_> = std::fs::read_dir(data.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    for args in &changing {
        let output = tool(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{args:?} must fail: {stderr}"
        );
        assert!(
            stderr.contains("CL_ERR_INUSE")
                && stderr.contains("is in use by another process")
                && stderr.contains(&format!("pid {pid}"))
                && stderr.contains("stop the server first"),
            "{args:?}: unclear refusal: {stderr}"
        );
        assert!(
            output.stdout.is_empty(),
            "{args:?} printed {:?}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
    for args in &looking {
        let output = tool(args);
        assert!(
            output.status.success(),
            "{args:?} on a live directory: {}",
            text(&output)
        );
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("read-only view"),
            "{args:?} does not say it looks at a live directory: {}",
            text(&output)
        );
    }
    let listed = tool(&["ls", "--data-dir", &data_s]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("held"));
    let verified = tool(&["verify", out.to_str().unwrap()]);
    assert!(verified.status.success(), "{}", text(&verified));
    std::fs::remove_file(&out).unwrap();
    let wal_after: Vec<_> = std::fs::read_dir(data.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(wal_before, wal_after, "the log was touched");
    // The server is unharmed.
    assert!(tool(&["stat", "held", "--addr", &addr]).status.success());

    // Stopped, the directory is the tool's.
    assert!(server.terminate().success());
    for args in changing.iter().chain(&looking) {
        let output = tool(args);
        assert!(
            output.status.success(),
            "{args:?} after the server stopped: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // A missing directory is not created by an offline command.
    let missing = dir.path().join("missing");
    let output = tool(&["ls", "--data-dir", missing.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(3), "not found");
    assert!(String::from_utf8_lossy(&output.stderr).contains("does not exist"));
    assert!(!missing.exists());
}
