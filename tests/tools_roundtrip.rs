//! `ckpt-tool dump` / `restore` round trip against real servers: 100
//! checkpoints with mixed attributes (flags, retention, default-section and
//! multi-section, expiration times, generated ids, holes, one 64 MiB
//! section) are dumped online, restored into an empty server, and compared
//! attribute by attribute and byte by byte; then the restored directory is
//! dumped offline and restored offline into a third, compared again.

mod common;

use std::path::Path;
use std::process::Output;

use ckpt_client::Client;
use ckpt_proto::{
    now_ns, CheckpointName, CheckpointStatus, CreationAttributes, CreationFlags, OpenFlags,
    ReadElement, SectionCreationAttributes, SectionDescriptor, SectionId, SectionsChosen,
    WriteElement, TIME_END,
};
use common::{tool, Server};

const MIB: u64 = 1024 * 1024;
const BIG: usize = 50;

fn ok(output: &Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Deterministic pseudo-random bytes.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn name(i: usize) -> CheckpointName {
    CheckpointName::new(format!("rt-{i:03}")).unwrap()
}

fn attributes(i: usize) -> CreationAttributes {
    let mut flags = [
        CreationFlags::WR_ACTIVE_REPLICA,
        CreationFlags::WR_ALL_REPLICAS,
        CreationFlags::WR_ACTIVE_REPLICA_WEAK,
    ][i % 3];
    if i.is_multiple_of(5) {
        flags = flags | CreationFlags::CHECKPOINT_COLLOCATED;
    }
    if i.is_multiple_of(7) {
        flags = flags | CreationFlags::DISTRIBUTED;
    }
    if i.is_multiple_of(11) {
        flags = flags | CreationFlags::WR_ALL_SAFE;
    }
    let max_sections = if i == BIG {
        3
    } else if i.is_multiple_of(4) {
        1
    } else {
        2 + (i as u32 % 9)
    };
    let max_section_size = if i == BIG { 64 * MIB } else { MIB };
    CreationAttributes {
        creation_flags: flags,
        checkpoint_size: u64::from(max_sections) * max_section_size - (i as u64 % 3) * 7,
        retention_duration_ns: if i.is_multiple_of(2) {
            TIME_END
        } else {
            (i as i64 + 1) * 1_000_000_000_000
        },
        max_sections,
        max_section_size,
        max_section_id_size: 16 + (i as u64 % 50),
    }
}

async fn populate(client: &Client) {
    let hour = 3_600_000_000_000i64;
    let now = now_ns();
    for i in 0..100 {
        let a = attributes(i);
        let checkpoint = client
            .open(
                &name(i),
                Some(a.clone()),
                OpenFlags::CREATE | OpenFlags::READ | OpenFlags::WRITE,
            )
            .await
            .unwrap();
        if i == BIG {
            let id = SectionId::new("big");
            checkpoint
                .section_create(
                    SectionCreationAttributes {
                        section_id: Some(id.clone()),
                        expiration_time: now + 48 * hour,
                    },
                    bytes(7, (28 * MIB) as usize),
                )
                .await
                .unwrap();
            // 28..36 MiB stays a hole (zeros); the rest is data.
            checkpoint
                .write(vec![WriteElement {
                    section_id: id,
                    offset: 36 * MIB,
                    data: bytes(8, (28 * MIB) as usize),
                }])
                .await
                .unwrap();
            checkpoint
                .section_create(
                    SectionCreationAttributes {
                        section_id: None,
                        expiration_time: TIME_END,
                    },
                    bytes(9, 1000),
                )
                .await
                .unwrap();
        } else if a.max_sections == 1 {
            let size = (i * 37) % 5000;
            if size > 0 {
                checkpoint
                    .write(vec![WriteElement {
                        section_id: SectionId::DEFAULT,
                        offset: 0,
                        data: bytes(i as u64, size),
                    }])
                    .await
                    .unwrap();
            }
        } else {
            let mut generated = Vec::new();
            for j in 0..(a.max_sections as usize - 1) {
                let size = (i * 131 + j * 17) % 20000;
                let expiration_time = if j % 4 == 0 {
                    TIME_END
                } else {
                    now + (j as i64 + 1) * hour
                };
                let section_id = (j % 2 == 0).then(|| SectionId::new(format!("s{j}")));
                let hole = (i + j) % 3 == 0 && size > 10;
                let initial = if hole {
                    Vec::new()
                } else {
                    bytes((i * 100 + j) as u64, size)
                };
                let id = checkpoint
                    .section_create(
                        SectionCreationAttributes {
                            section_id,
                            expiration_time,
                        },
                        initial,
                    )
                    .await
                    .unwrap();
                if hole {
                    checkpoint
                        .write(vec![WriteElement {
                            section_id: id.clone(),
                            offset: (size / 2) as u64,
                            data: bytes((i * 100 + j) as u64, size - size / 2),
                        }])
                        .await
                        .unwrap();
                }
                if j % 2 == 1 {
                    generated.push(id);
                }
            }
            if i % 6 == 1 {
                if let Some(id) = generated.first() {
                    checkpoint.section_delete(id).await.unwrap();
                }
            }
        }
        checkpoint.close().await.unwrap();
    }
}

struct Captured {
    status: CheckpointStatus,
    sections: Vec<SectionDescriptor>,
    data: Vec<Vec<u8>>,
}

async fn capture(client: &Client, name: &CheckpointName) -> Captured {
    let checkpoint = client.open(name, None, OpenFlags::READ).await.unwrap();
    let status = checkpoint.status().await.unwrap();
    let mut iterator = checkpoint.iterate(SectionsChosen::Any, 0).await.unwrap();
    let mut sections = Vec::new();
    while let Some(section) = iterator.next().await.unwrap() {
        sections.push(section);
    }
    iterator.finalize().await.unwrap();
    sections.sort_by(|a, b| a.section_id.cmp(&b.section_id));
    let mut data = Vec::new();
    for section in &sections {
        let mut bytes = Vec::with_capacity(section.section_size as usize);
        let mut offset = 0;
        while offset < section.section_size {
            let size = (section.section_size - offset).min(16 * MIB);
            let mut parts = checkpoint
                .read(vec![ReadElement {
                    section_id: section.section_id.clone(),
                    offset,
                    size: Some(size),
                }])
                .await
                .unwrap();
            bytes.append(&mut parts[0]);
            offset += size;
        }
        data.push(bytes);
    }
    checkpoint.close().await.unwrap();
    Captured {
        status,
        sections,
        data,
    }
}

async fn compare(original: &Client, restored: &Client, rename: impl Fn(usize) -> CheckpointName) {
    let listed = restored.list().await.unwrap();
    assert_eq!(listed.len(), 100, "restored checkpoint count");
    for i in 0..100 {
        let a = capture(original, &name(i)).await;
        let b = capture(restored, &rename(i)).await;
        let what = format!("checkpoint {}", name(i));
        assert_eq!(a.status, b.status, "{what}: attributes and usage");
        assert_eq!(a.sections.len(), b.sections.len(), "{what}: sections");
        for (x, y) in a.sections.iter().zip(&b.sections) {
            assert_eq!(x.section_id, y.section_id, "{what}");
            assert_eq!(x.section_size, y.section_size, "{what} {}", x.section_id);
            assert_eq!(
                x.expiration_time, y.expiration_time,
                "{what} {}",
                x.section_id
            );
            assert_eq!(x.state, y.state, "{what} {}", x.section_id);
        }
        for (k, (x, y)) in a.data.iter().zip(&b.data).enumerate() {
            assert!(
                x == y,
                "{what} section {}: data differs",
                a.sections[k].section_id
            );
        }
    }
    // The generated-id counters came along: the next generated id matches.
    for i in 0..100 {
        if attributes(i).max_sections == 1 {
            continue;
        }
        let mut ids = Vec::new();
        for (client, name) in [(original, name(i)), (restored, rename(i))] {
            let checkpoint = client.open(&name, None, OpenFlags::WRITE).await.unwrap();
            let id = checkpoint
                .section_create(
                    SectionCreationAttributes {
                        section_id: None,
                        expiration_time: TIME_END,
                    },
                    Vec::new(),
                )
                .await
                .unwrap();
            checkpoint.section_delete(&id).await.unwrap();
            checkpoint.close().await.unwrap();
            ids.push(id);
        }
        assert_eq!(ids[0], ids[1], "checkpoint {}: next generated id", name(i));
    }
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dump_and_restore_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let source = Server::start(&dir.path().join("a"));
    let a = Client::connect(&source.addr).await.unwrap();
    populate(&a).await;

    // Online dump of everything.
    let dump = dir.path().join("all.ckd");
    let text = ok(
        &tool(&[
            "dump",
            "--all",
            "-o",
            dump.to_str().unwrap(),
            "--addr",
            &source.addr,
        ]),
        "dump",
    );
    assert!(text.contains("dumped 100 checkpoints"), "{text}");
    // The hole of the big section is not stored: the file is smaller than
    // the data.
    assert!(
        file_size(&dump) < 64 * MIB + 2 * MIB,
        "{}",
        file_size(&dump)
    );
    assert!(file_size(&dump) > 56 * MIB);
    assert!(!dir.path().join("all.ckd.partial").exists());
    let text = ok(&tool(&["verify", dump.to_str().unwrap()]), "verify");
    assert!(text.contains("ok: 100 checkpoints"), "{text}");

    // Restore into an empty server and compare everything.
    let target = Server::start(&dir.path().join("b"));
    let text = ok(
        &tool(&["restore", dump.to_str().unwrap(), "--addr", &target.addr]),
        "restore",
    );
    assert!(text.contains("restored 100 checkpoints"), "{text}");
    let b = Client::connect(&target.addr).await.unwrap();
    compare(&a, &b, name).await;

    // Existing checkpoints are refused without --replace, before anything
    // is written.
    let refused = tool(&["restore", dump.to_str().unwrap(), "--addr", &target.addr]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("CL_ERR_ALREADY_EXIST"), "{stderr}");
    assert!(stderr.contains("nothing was restored"), "{stderr}");

    // One checkpoint, renamed, next to the original.
    let one = dir.path().join("one.ckd");
    ok(
        &tool(&[
            "dump",
            "rt-003",
            "-o",
            one.to_str().unwrap(),
            "--addr",
            &source.addr,
        ]),
        "dump one",
    );
    ok(
        &tool(&[
            "restore",
            one.to_str().unwrap(),
            "--rename",
            "rt-003=copy-003",
            "--addr",
            &target.addr,
        ]),
        "restore renamed",
    );
    let x = capture(&a, &name(3)).await;
    let y = capture(&b, &CheckpointName::new("copy-003").unwrap()).await;
    assert_eq!(x.status, y.status);
    assert_eq!(x.data, y.data);
    // Only the checkpoints asked for, from a dump of all.
    let text = ok(
        &tool(&[
            "restore",
            dump.to_str().unwrap(),
            "rt-005",
            "--rename",
            "rt-005=sel-005",
            "--addr",
            &target.addr,
        ]),
        "restore one of all",
    );
    assert!(text.contains("restored 1 checkpoints"), "{text}");
    let y = capture(&b, &CheckpointName::new("sel-005").unwrap()).await;
    assert_eq!(capture(&a, &name(5)).await.data, y.data);
    b.delete(&CheckpointName::new("sel-005").unwrap())
        .await
        .unwrap();
    // --replace overwrites.
    ok(
        &tool(&[
            "restore",
            one.to_str().unwrap(),
            "--replace",
            "--addr",
            &target.addr,
        ]),
        "restore --replace",
    );
    b.delete(&CheckpointName::new("copy-003").unwrap())
        .await
        .unwrap();
    drop(b);

    // Offline: dump the restored directory, restore into a fresh one,
    // serve it and compare with the original once more.
    let mut target = target;
    assert!(target.terminate().success());
    let offline = dir.path().join("offline.ckd");
    let b_dir = dir.path().join("b");
    // Offline ls (opening the store replays whatever the server did not
    // flush into RocksDB at shutdown).
    let listed = ok(
        &tool(&["ls", "--data-dir", b_dir.to_str().unwrap()]),
        "ls --data-dir",
    );
    assert_eq!(listed.lines().filter(|l| l.starts_with("rt-")).count(), 100);
    assert!(listed.contains("wal: "), "{listed}");
    // The restored directory passes every check.
    let verified = ok(
        &tool(&["verify", "--data-dir", b_dir.to_str().unwrap()]),
        "verify --data-dir",
    );
    assert!(verified.contains("0 problems"), "{verified}");
    assert!(verified.contains("100 checkpoints"), "{verified}");
    ok(
        &tool(&[
            "dump",
            "--all",
            "-o",
            offline.to_str().unwrap(),
            "--data-dir",
            b_dir.to_str().unwrap(),
        ]),
        "offline dump",
    );
    let c_dir = dir.path().join("c");
    ok(
        &tool(&[
            "restore",
            offline.to_str().unwrap(),
            "--data-dir",
            c_dir.to_str().unwrap(),
        ]),
        "offline restore",
    );
    let third = Server::start(&c_dir);
    let c = Client::connect(&third.addr).await.unwrap();
    compare(&a, &c, name).await;
}
