//! `ckpt-tool salvage` on a log corrupt in a middle segment.
//!
//! A server with 64 KiB segments overwrites one section with a counter
//! (seq = counter + 2) hundreds of times. The server trims segments once
//! RocksDB has made them durable, so the test hard-links every segment as
//! it appears (after every acknowledged write) and rebuilds a data directory whose RocksDB is from before
//! the writes (copied after the checkpoint was created) and whose log holds
//! every segment: recovery needs all of them. Then one byte of a record in
//! a middle segment is flipped:
//! - `verify --data-dir` names the segment and the record's offset;
//! - the server refuses to start and points at salvage;
//! - `salvage` keeps every record before the damage, moves the damaged
//!   segment and every later one aside (`.damaged`), rewrites the damaged
//!   segment's sound prefix, and names the checkpoint and seq range lost;
//! - the server then starts, holding exactly the state before the damage.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, text, tool, Server};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn segments(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("wal-") && n.ends_with(".log"))
        .collect();
    names.sort();
    names
}

fn field(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        .to_string()
}

fn read_counter(addr: &str) -> u64 {
    let output = tool(&["read", "salv", "s", "--size", "8", "--addr", addr]);
    assert!(output.status.success(), "{}", text(&output));
    u64::from_le_bytes(output.stdout[..8].try_into().unwrap())
}

#[test]
fn salvage_recovers_the_prefix_of_a_log_corrupt_in_the_middle() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("ckpt.toml");
    std::fs::write(&config, "segment_bytes_max = 65536\n").unwrap();
    let config_s = config.to_str().unwrap().to_string();
    let extra = ["--config", config_s.as_str()];

    // 1. The checkpoint, then RocksDB as it is before any write.
    let mut server = Server::start_with(&data, &extra);
    let addr = server.addr.clone();
    assert!(
        tool(&["create", "salv", "--max-sections", "2", "--addr", &addr])
            .status
            .success()
    );
    let zero = dir.path().join("zero");
    std::fs::write(&zero, vec![0u8; 3000]).unwrap();
    assert!(tool(&[
        "section-create",
        "salv",
        "s",
        "--file",
        zero.to_str().unwrap(),
        "--addr",
        &addr
    ])
    .status
    .success());
    assert!(server.terminate().success());
    let db_early = dir.path().join("db-early");
    copy_dir(&data.join("db"), &db_early);

    // 2. Writes, with every segment hard-linked as it appears. Linking
    //    after every acknowledged write catches each segment before it can
    //    be trimmed: a segment goes only once a later one exists and
    //    RocksDB is durable past it, and the next segment is started only
    //    after ~20 more writes filled this one — no polling, no timing.
    let links = dir.path().join("links");
    std::fs::create_dir_all(&links).unwrap();
    let wal_dir = data.join("wal");
    let mut linked = BTreeSet::new();
    let link_new = |linked: &mut BTreeSet<String>| {
        for name in segments(&wal_dir) {
            if !linked.contains(&name) {
                std::fs::hard_link(wal_dir.join(&name), links.join(&name))
                    .unwrap_or_else(|e| panic!("linking {name}: {e}"));
                linked.insert(name);
            }
        }
    };
    let mut server = Server::start_with(&data, &extra);
    let addr = server.addr.clone();
    link_new(&mut linked);
    let writes = 300u64;
    let value = dir.path().join("value");
    for counter in 1..=writes {
        let mut bytes = counter.to_le_bytes().to_vec();
        bytes.resize(3000, (counter % 251) as u8);
        std::fs::write(&value, &bytes).unwrap();
        let output = tool(&[
            "write",
            "salv",
            "s",
            "--overwrite",
            "--file",
            value.to_str().unwrap(),
            "--addr",
            &addr,
        ]);
        assert!(output.status.success(), "{}", text(&output));
        link_new(&mut linked);
    }
    assert_eq!(read_counter(&addr), writes);
    assert!(server.terminate().success());
    link_new(&mut linked);
    assert!(
        linked.len() >= 8,
        "only {} segments: {linked:?}",
        linked.len()
    );

    // 3. The rebuilt directory: early RocksDB, every segment.
    std::fs::remove_dir_all(data.join("db")).unwrap();
    copy_dir(&db_early, &data.join("db"));
    std::fs::remove_dir_all(data.join("wal")).unwrap();
    copy_dir(&links, &data.join("wal"));
    let data_s = data.to_str().unwrap();
    let clean = tool(&["verify", "--data-dir", data_s]);
    assert!(
        clean.status.success(),
        "the rebuilt log must be complete: {}",
        text(&clean)
    );

    // 4. Flip a byte in a record in the middle of a middle segment.
    let wal = tool(&["wal", "--data-dir", data_s, "--checkpoint", "salv"]);
    assert!(wal.status.success(), "{}", text(&wal));
    let lines: Vec<String> = String::from_utf8_lossy(&wal.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let names = segments(&data.join("wal"));
    let middle = names[names.len() / 2].clone();
    let in_middle: Vec<&String> = lines
        .iter()
        .filter(|l| field(l, "seg=") == middle && l.contains("Overwrite"))
        .collect();
    assert!(in_middle.len() >= 3, "{middle}: {in_middle:?}");
    let victim = in_middle[in_middle.len() / 2];
    let offset: usize = field(victim, "off=").parse().unwrap();
    let seq: u64 = field(victim, "seq=").parse().unwrap();
    let segment_path = data.join("wal").join(&middle);
    let mut bytes = std::fs::read(&segment_path).unwrap();
    bytes[offset + 100] ^= 0x20;
    std::fs::write(&segment_path, &bytes).unwrap();

    let damaged = tool(&["verify", "--data-dir", data_s]);
    let out = text(&damaged);
    println!("ckpt-tool verify --data-dir:\n{out}");
    assert_eq!(damaged.status.code(), Some(1), "{out}");
    assert!(
        out.contains(&format!("problem: wal/{middle} offset {offset}:")),
        "{out}"
    );

    // 5. The server refuses the directory and points at salvage.
    let refused = Command::new(bin("ckpt-server"))
        .args(["--data-dir", data_s, "--config", &config_s])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let output = refused.wait_with_output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("salvage"), "{stderr}");

    // 6. Salvage.
    let later: Vec<String> = names.iter().filter(|n| **n > middle).cloned().collect();
    let salvage = tool(&["salvage", "--data-dir", data_s]);
    let out = text(&salvage);
    println!("ckpt-tool salvage:\n{out}");
    assert!(salvage.status.success(), "{out}");
    assert!(
        out.contains(&format!("damage: wal/{middle} offset {offset}:")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "dropped: checkpoint \"salv\" (instance 1): LOST seq {}..{}",
            seq + 1,
            writes + 2
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("undecodable: wal/{middle} bytes {offset}..")),
        "{out}"
    );
    // Damaged files are kept; the damaged segment holds its sound prefix.
    let wal_dir = data.join("wal");
    for name in std::iter::once(&middle).chain(&later) {
        assert!(
            wal_dir.join(format!("{name}.damaged")).exists(),
            "{name}.damaged missing"
        );
    }
    for name in &later {
        assert!(!wal_dir.join(name).exists(), "{name} still in the log");
    }
    assert_eq!(
        std::fs::metadata(wal_dir.join(&middle)).unwrap().len(),
        offset as u64
    );
    assert_eq!(
        std::fs::read(wal_dir.join(format!("{middle}.damaged"))).unwrap(),
        bytes,
        "the damaged segment is kept as it was"
    );

    // 7. The server starts with every update before the damaged one.
    let mut server = Server::start_with(&data, &extra);
    assert_eq!(read_counter(&server.addr), seq - 3);
    assert!(server.terminate().success());

    // verify: sound, with warnings about the moved-aside files.
    let after = tool(&["verify", "--data-dir", data_s]);
    assert!(after.status.success(), "{}", text(&after));
    assert!(text(&after).contains("moved aside by salvage"));
}
