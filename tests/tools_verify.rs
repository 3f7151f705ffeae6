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
