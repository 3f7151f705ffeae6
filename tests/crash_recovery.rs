//! SIGKILL under load: 16 `ckpt-tool bench` clients record every
//! acknowledged write; once the record holds a random number of them (so
//! the kill never lands before the bench is under way, however slow the
//! machine) the server is killed, restarted, and `ckpt-tool check-acked`
//! must find every acknowledged write, byte for byte. Repeated 20 times with
//! different seeds (`CKPT_CRASH_SEED` replays one).
//!
//! And `check-acked` itself must be able to fail: a section whose body was
//! changed behind the bench's back is reported.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ckpt_client::Client;
use ckpt_proto::{CheckpointName, OpenFlags, ReadElement, SectionId};
use common::{bin, Server};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How long the bench is allowed to take to reach the acknowledgements a
/// test waits for; on a loaded machine it is still seconds.
const ACKS_DEADLINE: Duration = Duration::from_secs(120);

/// Starts `ckpt-tool bench` against `addr`, recording to `record`, running
/// far longer than any test waits: the test ends it (kill or Ctrl-C).
fn spawn_bench(addr: &str, record: &Path, extra: &[&str]) -> Child {
    Command::new(bin("ckpt-tool"))
        .args(["bench", "--addr", addr, "--duration-s", "600"])
        .args(extra)
        .arg("--record")
        .arg(record)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ckpt-tool bench starts")
}

/// Acknowledged writes in the record so far (its complete lines).
fn acked_lines(record: &Path) -> usize {
    std::fs::read(record)
        .map(|bytes| bytes.iter().filter(|&&b| b == b'\n').count())
        .unwrap_or(0)
}

/// Waits until the record holds at least `lines` acknowledged writes;
/// panics (with the bench's output) if the bench ends first or takes longer
/// than [`ACKS_DEADLINE`].
fn wait_for_acks(bench: &mut Child, record: &Path, lines: usize, what: &str) {
    let deadline = Instant::now() + ACKS_DEADLINE;
    while acked_lines(record) < lines {
        if let Some(status) = bench.try_wait().unwrap() {
            let mut stderr = String::new();
            if let Some(mut pipe) = bench.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
            }
            panic!(
                "{what}: bench exited ({status}) after {} of {lines} acknowledged writes: {stderr}",
                acked_lines(record)
            );
        }
        assert!(
            Instant::now() < deadline,
            "{what}: only {} of {lines} writes acknowledged within {ACKS_DEADLINE:?}",
            acked_lines(record)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits for the bench to exit (at most 60 s) and returns its output.
fn wait_exit(mut bench: Child, what: &str) -> Output {
    let deadline = Instant::now() + Duration::from_secs(60);
    while bench.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "{what}: bench did not stop within 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    bench.wait_with_output().unwrap()
}

fn check_acked(addr: &str, record: &Path) -> Output {
    Command::new(bin("ckpt-tool"))
        .args(["check-acked", "--addr", addr])
        .arg(record)
        .output()
        .expect("ckpt-tool check-acked runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn sigkill_under_load_loses_nothing_acknowledged() {
    let seed = std::env::var("CKPT_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("seed {seed} (CKPT_CRASH_SEED={seed} to replay)");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for round in 0..20 {
        let what = format!("seed {seed} round {round}");
        let record = dir.path().join(format!("acked-{round}.txt"));
        let mut server = Server::start(&data);
        let mode = ["active", "all-replicas"][round % 2];
        let checkpoint = format!("crash-{mode}");
        let mut bench = spawn_bench(
            &server.addr,
            &record,
            &[
                "--clients",
                "16",
                "--value-size",
                "512",
                "--mode",
                mode,
                "--checkpoint",
                &checkpoint,
            ],
        );
        // Kill at a random point once the bench is under way: after a random
        // number of acknowledged writes, with the other clients' writes in
        // flight.
        let kill_after = rng.random_range(1..=2000);
        wait_for_acks(&mut bench, &record, kill_after, &what);
        server.kill();
        let output = wait_exit(bench, &what);
        assert!(
            output.status.success(),
            "{what}: bench failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );

        let server = Server::start(&data);
        let check = check_acked(&server.addr, &record);
        let report = text(&check);
        assert!(
            check.status.success() && report.contains(", 0 lost, 0 wrong"),
            "{what} (killed after {kill_after} acks): {report}"
        );
        drop(server);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_acked_reports_a_section_whose_body_was_changed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let record = dir.path().join("acked.txt");
    let mut bench = spawn_bench(
        &server.addr,
        &record,
        &[
            "--clients",
            "2",
            "--value-size",
            "64",
            "--checkpoint",
            "body",
        ],
    );
    let record_path = record.clone();
    let bench = tokio::task::spawn_blocking(move || {
        wait_for_acks(&mut bench, &record_path, 20, "bench");
        // Ctrl-C: every client finishes its write in flight and records it.
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(bench.id() as i32, libc::SIGINT) };
        wait_exit(bench, "bench")
    })
    .await
    .unwrap();
    assert!(bench.status.success(), "{}", text(&bench));
    let check = check_acked(&server.addr, &record);
    assert!(
        check.status.success() && text(&check).contains(", 0 lost, 0 wrong"),
        "before the change: {}",
        text(&check)
    );

    // Flip one byte after the counter of c0: same counter, same size.
    let client = Client::connect(&server.addr).await.unwrap();
    let checkpoint = client
        .open(
            &CheckpointName::new("body").unwrap(),
            None,
            OpenFlags::READ | OpenFlags::WRITE,
        )
        .await
        .unwrap();
    let c0 = SectionId::new("c0");
    let mut value = checkpoint
        .read(vec![ReadElement {
            section_id: c0.clone(),
            offset: 0,
            size: None,
        }])
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(value.len(), 64);
    value[40] ^= 0x01;
    checkpoint.section_overwrite(&c0, value).await.unwrap();
    checkpoint.close().await.unwrap();

    let check = check_acked(&server.addr, &record);
    let report = text(&check);
    assert!(!check.status.success(), "{report}");
    assert!(report.contains(", 0 lost, 1 wrong"), "{report}");
    assert!(
        report.contains("wrong: body c0:") && report.contains("byte 40 differs"),
        "{report}"
    );
}
