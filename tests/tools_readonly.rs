//! Looking must not change anything (issue #12, point 1): the offline
//! inspection commands — `ls`, `stat`, `dump --data-dir`, `wal` and
//! `verify --data-dir` — open the store read-only. Every file of the data
//! directory (WAL segments, the durable mark, every RocksDB file, the lock
//! file) keeps its size and bytes, after a clean shutdown of a server that
//! wrote tens of MB and after a crash that left RocksDB behind the log; and
//! what they show is what the server shows once it recovers.

mod common;

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::Path;

use common::{text, tool, Server};

/// Every file under `dir` (relative path) with its size and a hash of its
/// bytes.
fn files(dir: &Path) -> BTreeMap<String, (u64, u64)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u64, u64)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                walk(root, &path, out);
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut hasher);
            let name = path.strip_prefix(root).unwrap().display().to_string();
            out.insert(name, (bytes.len() as u64, hasher.finish()));
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn assert_unchanged(
    before: &BTreeMap<String, (u64, u64)>,
    after: &BTreeMap<String, (u64, u64)>,
    what: &str,
) {
    let mut changes = Vec::new();
    for (name, (size, hash)) in before {
        match after.get(name) {
            None => changes.push(format!("{name} ({size} bytes) disappeared")),
            Some((s, h)) if s != size || h != hash => changes.push(format!(
                "{name} changed: {size} bytes -> {s} bytes{}",
                if s == size { " (other bytes)" } else { "" }
            )),
            Some(_) => {}
        }
    }
    for (name, (size, _)) in after {
        if !before.contains_key(name) {
            changes.push(format!("{name} ({size} bytes) appeared"));
        }
    }
    assert!(changes.is_empty(), "{what}:\n{}", changes.join("\n"));
}

fn ok(args: &[&str]) -> std::process::Output {
    let output = tool(args);
    assert!(output.status.success(), "{args:?}: {}", text(&output));
    output
}

/// Creates `big` (one 40 MB section written in four 10 MB writes) and a
/// few small checkpoints.
fn fill(addr: &str, payload: &Path) {
    ok(&[
        "create",
        "big",
        "--max-sections",
        "2",
        "--max-section-size",
        "50000000",
        "--addr",
        addr,
    ]);
    ok(&["section-create", "big", "s1", "--addr", addr]);
    let data: Vec<u8> = (0..10_000_000u32).map(|i| (i % 251) as u8 + 1).collect();
    std::fs::write(payload, &data).unwrap();
    for part in 0..4u64 {
        let offset = (part * 10_000_000).to_string();
        ok(&[
            "write",
            "big",
            "s1",
            "--offset",
            &offset,
            "--file",
            payload.to_str().unwrap(),
            "--addr",
            addr,
        ]);
    }
    for name in ["small-a", "small-b"] {
        ok(&["create", name, "--max-sections", "2", "--addr", addr]);
        ok(&["section-create", name, "one", "--addr", addr]);
    }
}

fn wal_records(data: &str) -> usize {
    let output = ok(&["wal", "--data-dir", data]);
    String::from_utf8_lossy(&output.stdout).lines().count()
}

/// Runs every read-only command and checks after each that nothing in
/// the directory changed.
fn look_everywhere(
    data: &Path,
    out_dir: &Path,
    before: &BTreeMap<String, (u64, u64)>,
    checkpoints: usize,
) {
    let data_s = data.to_str().unwrap();
    let dump = out_dir.join("offline.ckd");
    let dump_s = dump.to_str().unwrap();
    let commands: Vec<Vec<&str>> = vec![
        vec!["ls", "--data-dir", data_s],
        vec!["ls", "--json", "--data-dir", data_s],
        vec!["stat", "big", "--data-dir", data_s],
        vec!["dump", "--all", "-o", dump_s, "--data-dir", data_s],
        vec!["wal", "--data-dir", data_s],
        vec!["wal", "--json", "--data-dir", data_s],
        vec!["verify", "--data-dir", data_s],
        vec!["verify", "--json", "--data-dir", data_s],
    ];
    for args in &commands {
        ok(args);
        assert_unchanged(before, &files(data), &format!("{args:?}"));
    }
    let verified = ok(&["verify", dump_s]);
    assert!(
        String::from_utf8_lossy(&verified.stdout).contains(&format!("{checkpoints} checkpoints")),
        "{}",
        text(&verified)
    );
}

fn stat_json(args: &[&str]) -> serde_json::Value {
    let output = ok(args);
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn offline_inspection_after_a_clean_shutdown_changes_no_byte() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_s = data.to_str().unwrap();
    let mut server = Server::start(&data);
    fill(&server.addr, &dir.path().join("payload"));
    assert!(server.terminate().success());

    let before = files(&data);
    let log_bytes: u64 = before
        .iter()
        .filter(|(name, _)| name.starts_with("wal/wal-"))
        .map(|(_, (size, _))| size)
        .sum();
    assert!(
        log_bytes > 40_000_000,
        "the test needs tens of MB in the log: {before:?}"
    );
    let records = wal_records(data_s);
    assert!(records >= 10, "{records} records");

    look_everywhere(&data, dir.path(), &before, 3);
    // The log still holds every record (it was cut to its header before).
    assert_eq!(wal_records(data_s), records);
    let stat = stat_json(&["stat", "big", "--json", "--data-dir", data_s]);
    assert_eq!(stat["memory_used"], 40_000_000);
    assert_eq!(stat["wal_bytes"], log_bytes);
    assert_unchanged(&before, &files(&data), "after everything");
    println!(
        "clean shutdown: {} files ({} bytes of log, {records} records) unchanged by every read-only command",
        before.len(),
        log_bytes
    );
}

#[test]
fn offline_inspection_after_a_crash_shows_what_recovery_will_and_changes_no_byte() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_s = data.to_str().unwrap();
    let mut server = Server::start(&data);
    fill(&server.addr, &dir.path().join("payload"));
    ok(&["rm", "small-b", "--addr", &server.addr]);
    // A crash: RocksDB (its WAL off) loses its memtables, the log has all.
    server.kill();

    let before = files(&data);
    let offline = stat_json(&["stat", "big", "--json", "--data-dir", data_s]);
    assert_eq!(offline["memory_used"], 40_000_000);
    let offline_ls = stat_json(&["ls", "--json", "--data-dir", data_s]);
    look_everywhere(&data, dir.path(), &before, 2);
    assert_unchanged(&before, &files(&data), "after everything");
    println!(
        "crash: {} files unchanged; the offline view showed {} checkpoints",
        before.len(),
        offline_ls.as_array().map_or(0, Vec::len)
    );

    // The server recovers to exactly what the offline view showed.
    let server = Server::start(&data);
    let online = stat_json(&["stat", "big", "--json", "--addr", &server.addr]);
    for key in [
        "memory_used",
        "seq",
        "number_of_sections",
        "checkpoint_size",
    ] {
        assert_eq!(offline[key], online[key], "{key}");
    }
    let online_ls = stat_json(&["ls", "--json", "--addr", &server.addr]);
    let names = |v: &serde_json::Value| -> Vec<(String, u64, u64)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_string(),
                    c["seq"].as_u64().unwrap(),
                    c["memory_used"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(names(&offline_ls), names(&online_ls));
    assert_eq!(names(&offline_ls).len(), 2, "{offline_ls}");
}

/// Each looking command's --help says that --data-dir is read-only.
#[test]
fn the_help_says_offline_inspection_is_read_only() {
    for command in ["ls", "stat", "dump", "wal", "verify"] {
        let output = ok(&[command, "--help"]);
        let help = String::from_utf8_lossy(&output.stdout);
        let data_dir = help
            .lines()
            .skip_while(|line| !line.contains("--data-dir"))
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            data_dir.contains("Read-only") && data_dir.contains("no lock"),
            "{command} --help: {help}"
        );
    }
}

/// Looking at a running server's directory while it writes (and rotates
/// and trims its log) works every time and does not disturb it.
#[test]
fn offline_inspection_of_a_server_under_load_works_and_disturbs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_s = data.to_str().unwrap();
    let server = Server::start(&data);
    let mut bench = std::process::Command::new(common::bin("ckpt-tool"))
        .args([
            "bench",
            "--addr",
            &server.addr,
            "--clients",
            "8",
            "--value-size",
            "65536",
            "--duration",
            "6s",
            "--keep",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut looks = 0;
    while bench.try_wait().unwrap().is_none() {
        let listed = ok(&["ls", "--data-dir", data_s]);
        assert!(
            String::from_utf8_lossy(&listed.stderr).contains("a server is running"),
            "{}",
            text(&listed)
        );
        looks += 1;
    }
    let bench = bench.wait_with_output().unwrap();
    assert!(bench.status.success(), "{}", text(&bench));
    assert!(
        String::from_utf8_lossy(&bench.stdout).contains("errors: none"),
        "{}",
        text(&bench)
    );
    assert!(looks >= 2, "only {looks} looks while the bench ran");
    println!("{looks} offline ls of the live directory while the bench ran");
    let listed = ok(&["ls", "--json", "--data-dir", data_s]);
    let offline: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let online = stat_json(&["ls", "--json", "--addr", &server.addr]);
    let seqs = |v: &serde_json::Value| -> Vec<(String, u64)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_string(),
                    c["seq"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    // The load is over: the read-only view and the server agree.
    assert_eq!(seqs(&offline), seqs(&online));
}
