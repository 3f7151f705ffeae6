//! `ckpt-tool verify` finds a single flipped byte — in a dump file and in a
//! WAL segment — and names its location; a damaged dump is refused by
//! `restore` before anything is written.

mod common;

use std::path::Path;

use common::{text, tool, Server};

fn flip(path: &Path, offset: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

/// Record offsets and kinds of a dump, read straight from the documented
/// format (docs/dump-format.md): a 16-byte header, then length | crc | kind.
fn dump_records(bytes: &[u8]) -> Vec<(usize, u8)> {
    assert_eq!(&bytes[0..8], b"CKPTDUMP");
    let mut out = Vec::new();
    let mut at = 16;
    while at < bytes.len() {
        let length = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap());
        assert_eq!(
            crc,
            crc32(&bytes[at + 8..at + 8 + length]),
            "record at {at}"
        );
        out.push((at, bytes[at + 8]));
        at += 8 + length;
    }
    assert_eq!(at, bytes.len());
    out
}

/// crc32 (IEEE), bit by bit: the test does not trust the tool's crate.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn verify_finds_a_flipped_byte_in_a_dump() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let addr = server.addr.as_str();
    assert!(tool(&[
        "create",
        "v",
        "--max-sections",
        "4",
        "--max-section-size",
        "20000000",
        "--addr",
        addr
    ])
    .status
    .success());
    let payload = dir.path().join("payload");
    let data: Vec<u8> = (0..10_000_000u32).map(|i| (i % 251) as u8 + 1).collect();
    std::fs::write(&payload, &data).unwrap();
    assert!(tool(&["section-create", "v", "s1", "--addr", addr])
        .status
        .success());
    assert!(tool(&[
        "write",
        "v",
        "s1",
        "--file",
        payload.to_str().unwrap(),
        "--addr",
        addr
    ])
    .status
    .success());
    let dump = dir.path().join("v.ckd");
    let dump_s = dump.to_str().unwrap();
    assert!(tool(&["dump", "v", "-o", dump_s, "--addr", addr])
        .status
        .success());
    let clean = tool(&["verify", dump_s]);
    assert!(clean.status.success(), "{}", text(&clean));

    // The documented layout: Info, Checkpoint, Section, 3 Data (4+4+~1.5 MiB), End.
    let records = dump_records(&std::fs::read(&dump).unwrap());
    let kinds: Vec<u8> = records.iter().map(|(_, k)| *k).collect();
    assert_eq!(kinds, [1, 2, 3, 4, 4, 4, 5]);
    let (second_data, _) = records[4];
    flip(&dump, second_data + 8 + 9 + 123_456);

    let damaged = tool(&["verify", dump_s]);
    let out = text(&damaged);
    assert_eq!(damaged.status.code(), Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "byte {second_data} (checkpoint \"v\" section \"s1\"): record checksum mismatch"
        )),
        "{out}"
    );
    assert!(out.contains("whole-file checksum mismatch"), "{out}");

    // restore refuses it and writes nothing.
    assert!(tool(&["rm", "v", "--addr", addr]).status.success());
    let refused = tool(&["restore", dump_s, "--addr", addr]);
    let out = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{out}");
    assert!(out.contains("nothing was restored"), "{out}");
    let ls = tool(&["ls", "--addr", addr]);
    assert!(
        !String::from_utf8_lossy(&ls.stdout).contains("\nv "),
        "{}",
        text(&ls)
    );

    // A truncated dump is found too.
    let bytes = std::fs::read(&dump).unwrap();
    std::fs::write(&dump, &bytes[..bytes.len() - 5]).unwrap();
    let truncated = tool(&["verify", dump_s]);
    assert_eq!(truncated.status.code(), Some(1));
    assert!(
        text(&truncated).contains("truncated dump"),
        "{}",
        text(&truncated)
    );
}

#[test]
fn verify_finds_a_flipped_byte_in_a_wal_segment() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data);
    let addr = server.addr.clone();
    assert!(
        tool(&["create", "w", "--max-sections", "8", "--addr", &addr])
            .status
            .success()
    );
    let payload = dir.path().join("payload");
    std::fs::write(&payload, vec![7u8; 1000]).unwrap();
    for i in 0..5 {
        let id = format!("s{i}");
        assert!(tool(&["section-create", "w", &id, "--addr", &addr])
            .status
            .success());
        for _ in 0..4 {
            assert!(tool(&[
                "write",
                "w",
                &id,
                "--file",
                payload.to_str().unwrap(),
                "--addr",
                &addr
            ])
            .status
            .success());
        }
    }
    assert!(server.terminate().success());
    let data_s = data.to_str().unwrap();
    let clean = tool(&["verify", "--data-dir", data_s]);
    assert!(clean.status.success(), "{}", text(&clean));
    assert!(text(&clean).contains("0 problems"), "{}", text(&clean));

    // Find a record in the middle of the log with `wal`.
    let wal = tool(&["wal", "--data-dir", data_s]);
    assert!(wal.status.success(), "{}", text(&wal));
    let lines: Vec<String> = String::from_utf8_lossy(&wal.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert!(lines.len() >= 26, "{lines:?}");
    let field = |line: &str, key: &str| -> String {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .unwrap()
            .to_string()
    };
    let target = &lines[12];
    let segment = field(target, "seg=");
    let offset: usize = field(target, "off=").parse().unwrap();
    flip(&data.join("wal").join(&segment), offset + 60);

    let damaged = tool(&["verify", "--data-dir", data_s]);
    let out = text(&damaged);
    assert_eq!(damaged.status.code(), Some(1), "{out}");
    assert!(
        out.contains(&format!("problem: wal/{segment} offset {offset}:")),
        "{out}"
    );
    assert!(out.contains("record checksum mismatch"), "{out}");
    assert!(out.contains("ckpt-tool salvage"), "{out}");
    // `wal` shows what it can and says where the damage is.
    let wal = tool(&["wal", "--data-dir", data_s]);
    assert_eq!(wal.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&wal.stderr).contains(&format!("{segment} offset {offset}..")),
        "{}",
        text(&wal)
    );
    assert!(String::from_utf8_lossy(&wal.stdout).lines().count() >= lines.len() - 1);
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else if entry.file_name() != "LOCK" && entry.file_name() != "reserve" {
            // The reserve is 64 MiB of nothing: copied for every case it
            // filled CI's disk.
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// `verify --data-dir` and `salvage --dry-run` pass a directory exactly when
/// the store opens it, and name the same offset: on every bit flip of the
/// length of a record in the middle and at the end of the last segment,
/// on flips of its crc and lsn, on a power cut's zeros-then-records tail
/// above and at the durable mark, and on a log cut cleanly below the mark.
#[test]
fn verify_and_salvage_judge_the_log_as_recovery_does() {
    use ckpt_storage::wal::mark::{encode_slot, BASELINE_BYTES, MARK_FILE};
    use ckpt_storage::wal::segment::scan_segment;
    use ckpt_storage::{Durability, Op, RocksWalMode, Store, StoreConfig};

    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    let mut config = StoreConfig::new(&base);
    config.db.wal_mode = RocksWalMode::Disabled;
    config.reserve_bytes = 0;
    // Every record in one segment, the one the cases damage (with
    // preallocation the store would move to a spare segment part way).
    config.preallocate_segments = false;
    let store = Store::open(config).unwrap();
    let name = ckpt_proto::CheckpointName::new("agree").unwrap();
    let attributes = ckpt_proto::CreationAttributes {
        creation_flags: ckpt_proto::CreationFlags::WR_ACTIVE_REPLICA,
        checkpoint_size: 8192,
        retention_duration_ns: ckpt_proto::TIME_END,
        max_sections: 2,
        max_section_size: 4096,
        max_section_id_size: 8,
    };
    let now = 1_700_000_000_000_000_000;
    let instance = match store
        .execute_with(
            Op::CreateCheckpoint {
                name,
                attributes,
                instance: None,
                epoch: ckpt_storage::Epoch(1),
            },
            Durability::Durable,
            now,
        )
        .unwrap()
    {
        ckpt_storage::Outcome::Opened { instance, .. } => instance,
        other => panic!("{other:?}"),
    };
    let section_id = ckpt_proto::SectionId::new("s");
    store
        .execute_with(
            Op::CreateSection {
                instance,
                attributes: ckpt_proto::SectionCreationAttributes {
                    section_id: Some(section_id.clone()),
                    expiration_time: ckpt_proto::TIME_END,
                },
                data: vec![],
            },
            Durability::Durable,
            now,
        )
        .unwrap();
    for i in 0..18u8 {
        store
            .execute_with(
                Op::Overwrite {
                    instance,
                    section_id: section_id.clone(),
                    data: vec![i; 300],
                },
                Durability::Durable,
                now,
            )
            .unwrap();
    }
    // A crash, as far as RocksDB is concerned: recovery replays the log.
    drop(store);
    let wal = base.join("wal");
    let segment = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find(|n| n.ends_with(".log") && std::fs::metadata(wal.join(n)).unwrap().len() > 32)
        .expect("the segment with the records");
    let bytes = std::fs::read(wal.join(&segment)).unwrap();
    let offsets: Vec<usize> = scan_segment(&bytes)
        .records
        .iter()
        .map(|(o, _)| *o as usize)
        .collect();
    assert_eq!(offsets.len(), 20);

    // (description, segment bytes, mark file bytes or None to keep it)
    let mut cases: Vec<(String, Vec<u8>, Option<Vec<u8>>)> = Vec::new();
    for victim in [10usize, 19] {
        let at = offsets[victim];
        // every bit of the length, one of the crc, one of the lsn
        let fields = (0..32).chain([4 * 8 + 3, 9 * 8]);
        for bit in fields {
            let mut damaged = bytes.clone();
            damaged[at + bit / 8] ^= 1 << (bit % 8);
            cases.push((format!("record {victim} bit {bit}"), damaged, None));
        }
    }
    let page_victim = offsets.iter().rposition(|&o| o < 4096).unwrap();
    let mut zeroed = bytes.clone();
    zeroed[offsets[page_victim]..4096].fill(0);
    for mark in [page_victim as u64, page_victim as u64 + 1] {
        let mut file = vec![0u8; BASELINE_BYTES as usize];
        file[..24].copy_from_slice(&encode_slot(ckpt_storage::Lsn(mark)));
        cases.push((
            format!("zeros to the page boundary, mark {mark}"),
            zeroed.clone(),
            Some(file),
        ));
    }

    // Records 16..20 gone at a record boundary although the mark says they
    // were durable: no byte is damaged, yet acknowledged records are lost.
    cases.push((
        "the log ends below the durable mark".into(),
        bytes[..offsets[15]].to_vec(),
        None,
    ));

    // What a crash leaves of a preallocated segment: the records, then
    // zeros to the end of the file, all above the durable mark.
    let mut preallocated = bytes.clone();
    preallocated.resize(bytes.len() + (64 << 10), 0);
    cases.push((
        "zeros to the end of a preallocated segment".into(),
        preallocated,
        None,
    ));

    let mut opened = 0;
    for (index, (what, damaged, mark)) in cases.iter().enumerate() {
        let for_tool = dir.path().join(format!("tool-{index}"));
        let for_store = dir.path().join(format!("store-{index}"));
        for copy in [&for_tool, &for_store] {
            copy_tree(&base, copy);
            std::fs::write(copy.join("wal").join(&segment), damaged).unwrap();
            if let Some(mark) = mark {
                std::fs::write(copy.join("wal").join(MARK_FILE), mark).unwrap();
            }
        }
        let tool_s = for_tool.to_str().unwrap();
        let verify = tool(&["verify", "--data-dir", tool_s]);
        let salvage = tool(&["salvage", "--dry-run", "--data-dir", tool_s]);
        let mut config = StoreConfig::new(&for_store);
        config.db.wal_mode = RocksWalMode::Disabled;
        config.reserve_bytes = 0;
        match Store::open(config) {
            Ok(store) => {
                opened += 1;
                assert!(
                    verify.status.success(),
                    "{what}: recovery opens, verify says\n{}",
                    text(&verify)
                );
                assert!(
                    text(&salvage).contains("nothing to salvage"),
                    "{what}: recovery opens, salvage says\n{}",
                    text(&salvage)
                );
                if let Some((_, offset, _)) = &store.recovery_report().torn_tail {
                    assert!(
                        text(&verify).contains(&format!("warning: wal/{segment} offset {offset}:")),
                        "{what}: recovery cut a torn tail at {offset}, verify says\n{}",
                        text(&verify)
                    );
                }
            }
            Err(error) => {
                assert_eq!(
                    verify.status.code(),
                    Some(1),
                    "{what}: recovery refuses ({}), verify says\n{}",
                    error.detail,
                    text(&verify)
                );
                let at = error
                    .detail
                    .split("at offset ")
                    .nth(1)
                    .and_then(|rest| rest.split(':').next())
                    .unwrap_or_else(|| panic!("{what}: {}", error.detail))
                    .to_string();
                assert!(
                    text(&verify).contains(&format!("problem: wal/{segment} offset {at}:")),
                    "{what}: recovery refuses at offset {at}, verify says\n{}",
                    text(&verify)
                );
                assert!(
                    text(&salvage).contains(&format!("damage: wal/{segment} offset {at}:")),
                    "{what}: recovery refuses at offset {at}, salvage says\n{}",
                    text(&salvage)
                );
            }
        }
        for copy in [&for_tool, &for_store] {
            std::fs::remove_dir_all(copy).unwrap();
        }
    }
    assert_eq!(
        opened, 2,
        "only the power-cut tail above the mark and a preallocated segment's zeros open"
    );
}
