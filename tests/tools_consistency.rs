//! An online dump taken while writers go on is one point in time.
//!
//! Two kinds of writers run during the dumps:
//! - `ckpt-tool bench` (8 clients overwriting sections `c<i>` with
//!   counters): in any single point in time the checkpoint's update number
//!   is 1 (create) + one per section created + the sum of the counters, so
//!   a dump mixing metadata and data from different moments breaks it;
//! - a writer updating two 6 MiB sections `a` and `b` together with one
//!   multi-element write, each filled with the same counter: every dump
//!   must show them equal, word for word (each section takes two 4 MiB
//!   reads, so this also checks that reads within a section agree).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ckpt_client::Client;
use ckpt_proto::{
    CheckpointName, CreationAttributes, CreationFlags, OpenFlags, SectionCreationAttributes,
    SectionId, WriteElement, TIME_END,
};
use common::{bin, Server};

const PAIR_BYTES: usize = 6 * 1024 * 1024;
/// Bench clients: at most this many writes are applied but not yet in the
/// bench's record at any moment (one in flight per client).
const BENCH_CLIENTS: usize = 8;
/// How long the writers may take to make the progress a step waits for; on
/// a loaded machine it is still seconds.
const PROGRESS_DEADLINE: Duration = Duration::from_secs(120);

/// Acknowledged writes in the bench's record so far (its complete lines).
fn acked_lines(record: &Path) -> usize {
    std::fs::read(record)
        .map(|bytes| bytes.iter().filter(|&&b| b == b'\n').count())
        .unwrap_or(0)
}

/// Polls until `done` holds; panics naming `what` after [`PROGRESS_DEADLINE`].
async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PROGRESS_DEADLINE;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {PROGRESS_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[derive(Debug, Default)]
struct DumpedCheckpoint {
    seq: u64,
    sections: BTreeMap<Vec<u8>, Vec<u8>>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Reads a dump straight from the documented format (docs/dump-format.md).
fn read_dump(path: &Path) -> BTreeMap<String, DumpedCheckpoint> {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[0..8], b"CKPTDUMP");
    let mut out: BTreeMap<String, DumpedCheckpoint> = BTreeMap::new();
    let mut current = String::new();
    let mut section: Vec<u8> = Vec::new();
    let mut at = 16;
    while at < bytes.len() {
        let length = u32_at(&bytes, at) as usize;
        let body = &bytes[at + 8..at + 8 + length];
        match body[0] {
            2 => {
                let name_len = u32_at(body, 1) as usize;
                current = String::from_utf8(body[5..5 + name_len].to_vec()).unwrap();
                // name, flags u32, size u64, retention i64, maxSections u32,
                // maxSectionSize u64, maxSectionIdSize u64, generated u64, seq u64
                let seq_at = 5 + name_len + 4 + 8 + 8 + 4 + 8 + 8 + 8;
                out.entry(current.clone()).or_default().seq = u64_at(body, seq_at);
            }
            3 => {
                let id_len = u32_at(body, 1) as usize;
                section = body[5..5 + id_len].to_vec();
                let size = u64_at(body, 5 + id_len + 8 + 1 + 8) as usize;
                out.get_mut(&current)
                    .unwrap()
                    .sections
                    .insert(section.clone(), vec![0u8; size]);
            }
            4 => {
                let offset = u64_at(body, 1) as usize;
                let data = &body[9..];
                let target = out
                    .get_mut(&current)
                    .unwrap()
                    .sections
                    .get_mut(&section)
                    .unwrap();
                target[offset..offset + data.len()].copy_from_slice(data);
            }
            _ => {}
        }
        at += 8 + length;
    }
    out
}

fn check_bench(dump: &BTreeMap<String, DumpedCheckpoint>, what: &str) -> u64 {
    let bench = &dump["bench"];
    let mut sum = 0u64;
    for data in bench.sections.values() {
        if data.len() >= 8 {
            sum += u64_at(data, 0);
        }
    }
    let expected = 1 + bench.sections.len() as u64 + sum;
    assert_eq!(
        bench.seq, expected,
        "{what}: bench seq {} but 1 + {} sections + counters {sum}: metadata and data are from different moments",
        bench.seq,
        bench.sections.len()
    );
    sum
}

fn check_pair(dump: &BTreeMap<String, DumpedCheckpoint>, what: &str) -> u64 {
    let pair = &dump["pair"];
    let a = &pair.sections[&b"a".to_vec()];
    let b = &pair.sections[&b"b".to_vec()];
    assert_eq!(a.len(), PAIR_BYTES, "{what}");
    assert_eq!(b.len(), PAIR_BYTES, "{what}");
    let counter = u64_at(a, 0);
    for (i, (x, y)) in a.chunks(8).zip(b.chunks(8)).enumerate() {
        assert!(
            u64_at(x, 0) == counter && u64_at(y, 0) == counter,
            "{what}: word {i}: a={} b={} (expected {counter} everywhere)",
            u64_at(x, 0),
            u64_at(y, 0)
        );
    }
    // create + 2 section creates + one write per counter value.
    assert_eq!(pair.seq, 3 + counter, "{what}: pair seq");
    counter
}

fn dump(addr: &str, file: &Path) {
    let output = Command::new(bin("ckpt-tool"))
        .args(["dump", "bench", "pair", "-o"])
        .arg(file)
        .args(["--addr", addr])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "dump: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn online_dump_under_writes_is_one_point_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let addr = server.addr.clone();

    // The pair writer's checkpoint.
    let client = Client::connect(&addr).await.unwrap();
    let pair = client
        .open(
            &CheckpointName::new("pair").unwrap(),
            Some(CreationAttributes {
                creation_flags: CreationFlags::WR_ACTIVE_REPLICA,
                checkpoint_size: 2 * PAIR_BYTES as u64,
                retention_duration_ns: TIME_END,
                max_sections: 2,
                max_section_size: PAIR_BYTES as u64,
                max_section_id_size: 8,
            }),
            OpenFlags::CREATE | OpenFlags::READ | OpenFlags::WRITE,
        )
        .await
        .unwrap();
    for id in ["a", "b"] {
        pair.section_create(
            SectionCreationAttributes {
                section_id: Some(SectionId::new(id)),
                expiration_time: TIME_END,
            },
            Vec::new(),
        )
        .await
        .unwrap();
    }

    // The bench runs until we stop it (Ctrl-C), not for a fixed time that a
    // slow machine could use up before the dumps.
    let record = dir.path().join("bench-acked.txt");
    let bench = Command::new(bin("ckpt-tool"))
        .args([
            "bench",
            "--addr",
            &addr,
            "--clients",
            &BENCH_CLIENTS.to_string(),
            "--duration-s",
            "600",
            "--value-size",
            "4096",
            "--checkpoint",
            "bench",
        ])
        .arg("--record")
        .arg(&record)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    // The pair writer's last acknowledged counter.
    let pair_acked = Arc::new(AtomicU64::new(0));
    let writer = {
        let stop = stop.clone();
        let pair_acked = pair_acked.clone();
        tokio::spawn(async move {
            let mut counter = 0u64;
            while !stop.load(Ordering::Relaxed) {
                counter += 1;
                let value: Vec<u8> = std::iter::repeat_n(counter.to_le_bytes(), PAIR_BYTES / 8)
                    .flatten()
                    .collect();
                pair.write(vec![
                    WriteElement {
                        section_id: SectionId::new("a"),
                        offset: 0,
                        data: value.clone(),
                    },
                    WriteElement {
                        section_id: SectionId::new("b"),
                        offset: 0,
                        data: value,
                    },
                ])
                .await
                .unwrap();
                pair_acked.store(counter, Ordering::Release);
            }
            pair.close().await.unwrap();
            counter
        })
    };

    // Both writers under way, then dump repeatedly; before each next dump,
    // wait until both writers are past what the last dump saw, so every
    // dump is taken under load and differs from the one before.
    wait_for("both writers acknowledge a write", || {
        acked_lines(&record) > 0 && pair_acked.load(Ordering::Acquire) > 0
    })
    .await;
    let mut seen: Vec<(u64, u64)> = Vec::new();
    for round in 0..4 {
        if let Some(&(_, last_pair)) = seen.last() {
            // More new acknowledgements than the bench can have applied but
            // not yet recorded: at least one was applied after that dump.
            let bench_from = acked_lines(&record);
            wait_for("both writers move on after a dump", || {
                acked_lines(&record) > bench_from + BENCH_CLIENTS
                    && pair_acked.load(Ordering::Acquire) > last_pair
            })
            .await;
        }
        let file = dir.path().join(format!("during-{round}.ckd"));
        let addr = addr.clone();
        let path = file.clone();
        tokio::task::spawn_blocking(move || dump(&addr, &path))
            .await
            .unwrap();
        let parsed = read_dump(&file);
        let what = format!("dump {round} (taken under load)");
        let bench_sum = check_bench(&parsed, &what);
        let pair_counter = check_pair(&parsed, &what);
        if let Some(&(last_bench, last_pair)) = seen.last() {
            assert!(
                bench_sum > last_bench && pair_counter > last_pair,
                "{what}: ({bench_sum}, {pair_counter}) does not move on from ({last_bench}, {last_pair})"
            );
        }
        seen.push((bench_sum, pair_counter));
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(bench.id() as i32, libc::SIGINT) };
    let output = tokio::task::spawn_blocking(move || bench.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "bench: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.unwrap();

    // A dump at rest checks the formulas themselves.
    let file = dir.path().join("rest.ckd");
    let path = file.clone();
    let addr2 = addr.clone();
    tokio::task::spawn_blocking(move || dump(&addr2, &path))
        .await
        .unwrap();
    let parsed = read_dump(&file);
    let (bench_sum, pair_counter) = (
        check_bench(&parsed, "dump at rest"),
        check_pair(&parsed, "dump at rest"),
    );
    assert_eq!(pair_counter, written);
    assert!(seen.iter().all(|(b, p)| *b <= bench_sum && *p <= written));
    assert!(seen[0].0 > 0 && seen[0].1 > 0, "{seen:?}");
}
