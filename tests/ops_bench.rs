//! `ckpt-tool bench` is a guest on the server (issue #12, point 2): each
//! run writes checkpoints of its own and removes them unless `--keep` or
//! `--record`; it refuses to write into a checkpoint it did not create;
//! it shows live progress on a terminal and stays quiet in a pipe.

mod common;
mod ops_support;

use std::path::Path;
use std::process::{Command, Output};

use ckpt_client::Client;
use ckpt_proto::{
    CheckpointName, CreationAttributes, CreationFlags, OpenFlags, ReadElement,
    SectionCreationAttributes, SectionId, TIME_END,
};
use common::{bin, Server};

fn tool(args: &[&str]) -> Output {
    Command::new(bin("ckpt-tool"))
        .args(args)
        .output()
        .expect("ckpt-tool runs")
}

fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs a short bench against `addr` with `extra` flags and its JSON report.
fn bench(addr: &str, extra: &[&str]) -> (Output, Option<serde_json::Value>) {
    let mut args = vec!["bench", "--addr", addr, "--json"];
    if !extra.contains(&"--duration-s") {
        args.extend_from_slice(&["--duration-s", "0.3"]);
    }
    args.extend_from_slice(extra);
    let output = tool(&args);
    let report = serde_json::from_slice(&output.stdout).ok();
    (output, report)
}

async fn names(client: &Client) -> Vec<String> {
    let mut names: Vec<String> = client
        .list()
        .await
        .unwrap()
        .iter()
        .map(|info| info.name.to_string())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn benches_of_different_shapes_in_a_row_both_run_and_leave_no_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let client = Client::connect(&server.addr).await.unwrap();
    for shape in [
        &["--clients", "2", "--value-size", "64"][..],
        &[
            "--clients",
            "5",
            "--value-size",
            "1000",
            "--mode",
            "all-replicas",
        ],
        &["--clients", "4", "--checkpoints", "2", "--mode", "weak"],
    ] {
        let (output, report) = bench(&server.addr, shape);
        assert!(output.status.success(), "{shape:?}: {}", text(&output));
        let report = report.unwrap();
        assert!(report["ops"].as_u64().unwrap() > 0, "{report}");
        let removed = report["removed"].as_array().unwrap();
        let checkpoints = report["checkpoints"].as_u64().unwrap() as usize;
        assert_eq!(removed.len(), checkpoints, "{report}");
        assert!(report["kept"].as_array().unwrap().is_empty(), "{report}");
        assert!(
            removed[0].as_str().unwrap().starts_with("bench-"),
            "{report}"
        );
        assert_eq!(names(&client).await, Vec::<String>::new(), "{shape:?}");
    }
}

/// The attributes a `--clients 1 --value-size 64` bench would create: a
/// user's checkpoint that happens to have the bench's shape exactly.
fn bench_shaped() -> CreationAttributes {
    CreationAttributes {
        creation_flags: CreationFlags::WR_ACTIVE_REPLICA,
        checkpoint_size: 64,
        retention_duration_ns: TIME_END,
        max_sections: 2,
        max_section_size: 64,
        max_section_id_size: 64,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_refuses_to_write_into_a_checkpoint_it_did_not_create() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let client = Client::connect(&server.addr).await.unwrap();
    let name = CheckpointName::new("users").unwrap();
    let checkpoint = client
        .open(
            &name,
            Some(bench_shaped()),
            OpenFlags::CREATE | OpenFlags::READ | OpenFlags::WRITE,
        )
        .await
        .unwrap();
    checkpoint
        .section_create(
            SectionCreationAttributes {
                section_id: Some(SectionId::new("c0")),
                expiration_time: TIME_END,
            },
            b"precious".to_vec(),
        )
        .await
        .unwrap();
    for extra in [&[][..], &["--keep"], &["--mode", "all-replicas"]] {
        let mut args = vec![
            "--checkpoint",
            "users",
            "--clients",
            "1",
            "--value-size",
            "64",
        ];
        args.extend_from_slice(extra);
        let (output, _) = bench(&server.addr, &args);
        assert!(!output.status.success(), "{extra:?}: {}", text(&output));
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("not created by ckpt-tool bench"),
            "{extra:?}: {}",
            text(&output)
        );
    }
    let data = checkpoint
        .read(vec![ReadElement {
            section_id: SectionId::new("c0"),
            offset: 0,
            size: None,
        }])
        .await
        .unwrap();
    assert_eq!(data, vec![b"precious".to_vec()]);
    assert_eq!(checkpoint.status().await.unwrap().number_of_sections, 1);
    assert_eq!(names(&client).await, vec!["users".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_and_record_leave_the_checkpoints_and_a_kept_one_can_be_rerun() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let client = Client::connect(&server.addr).await.unwrap();

    let (output, report) = bench(
        &server.addr,
        &["--checkpoint", "mine", "--keep", "--clients", "2"],
    );
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(report.unwrap()["kept"], serde_json::json!(["mine"]));
    assert_eq!(names(&client).await, vec!["mine".to_string()]);

    // A rerun on the kept checkpoint continues it and, not having created
    // it, leaves it.
    let (output, report) = bench(&server.addr, &["--checkpoint", "mine", "--clients", "2"]);
    assert!(output.status.success(), "{}", text(&output));
    let report = report.unwrap();
    assert_eq!(report["kept"], serde_json::json!(["mine"]), "{report}");
    assert!(report["removed"].as_array().unwrap().is_empty());
    // Another shape does not fit it: refused, and the reason named.
    let (output, _) = bench(&server.addr, &["--checkpoint", "mine", "--clients", "9"]);
    assert!(!output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("does not fit"),
        "{}",
        text(&output)
    );

    // --record keeps what check-acked reads.
    let record = dir.path().join("acked.txt");
    let record_text = record.to_str().unwrap();
    let (output, report) = bench(&server.addr, &["--record", record_text, "--clients", "3"]);
    assert!(output.status.success(), "{}", text(&output));
    let report = report.unwrap();
    let recorded = report["checkpoint"].as_str().unwrap().to_string();
    assert_eq!(report["kept"], serde_json::json!([recorded]), "{report}");
    assert_eq!(names(&client).await, vec![recorded, "mine".to_string()]);
    let check = tool(&["check-acked", "--addr", &server.addr, record_text]);
    assert!(
        check.status.success() && text(&check).contains(", 0 lost, 0 wrong"),
        "{}",
        text(&check)
    );
}

/// Runs `command` under `script(1)`, on a pseudo-terminal, and returns
/// what the terminal showed.
fn on_a_terminal(command: &str, log: &Path) -> Output {
    Command::new("script")
        .args(["-q", "-e", "-c", command])
        .arg(log)
        .output()
        .expect("script(1) from util-linux runs (needed to test terminal output)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_shown_each_second_on_a_terminal_and_not_in_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let command = format!(
        "{} bench --addr {} --clients 2 --duration-s 2.5",
        bin("ckpt-tool").display(),
        server.addr
    );
    let output = on_a_terminal(&command, &dir.path().join("typescript"));
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", text(&output));
    let updates = shown.matches("ops/s  p99").count();
    // 2.5 s: redrawn after the first and the second second.
    assert!(
        updates >= 2,
        "{updates} live status lines on the terminal:\n{shown}"
    );
    assert!(shown.contains("acknowledged"), "{shown}");
    // The final report follows.
    assert!(shown.contains("latency us: p50"), "{shown}");

    let (output, _) = bench(&server.addr, &["--clients", "2", "--duration-s", "1.5"]);
    assert!(output.status.success(), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("ops/s"),
        "a status line in a pipe: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_the_bench_and_still_removes_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let client = Client::connect(&server.addr).await.unwrap();
    let bench = Command::new(bin("ckpt-tool"))
        .args(["bench", "--addr", &server.addr, "--clients", "2"])
        .args(["--duration-s", "120", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Running: its checkpoint holds the marker and both clients' sections.
    let deadline = std::time::Instant::now() + ops_support::WAIT;
    while !client
        .list()
        .await
        .unwrap()
        .iter()
        .any(|info| info.status.number_of_sections == 3)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the bench never wrote"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(bench.id() as i32, libc::SIGINT) };
    let output = tokio::task::spawn_blocking(move || bench.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["stopped_early"], true, "{report}");
    assert_eq!(report["removed"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(names(&client).await, Vec::<String>::new());
}

/// `--op read` reads back each client's own section, `--mix R:W`
/// interleaves reads and writes (every read checked against the client's
/// last acknowledged write), and `--server-pid` reports the server's CPU
/// time per operation (issue #11).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_and_mixed_benches_report_server_cpu_per_op() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let pid = server.pid().to_string();

    let (output, report) = bench(
        &server.addr,
        &["--clients", "3", "--op", "read", "--server-pid", &pid],
    );
    assert!(output.status.success(), "{}", text(&output));
    let report = report.unwrap();
    assert_eq!(report["op"], "read", "{report}");
    let ops = report["ops"].as_u64().unwrap();
    assert!(ops > 0, "{report}");
    assert_eq!(report["reads"].as_u64().unwrap(), ops, "{report}");
    assert_eq!(report["writes"], 0, "{report}");
    assert!(report["server_cpu_s"].as_f64().unwrap() >= 0.0, "{report}");
    assert!(report["server_cpu_us_per_op"].is_number(), "{report}");

    let (output, report) = bench(
        &server.addr,
        &["--clients", "2", "--mix", "3:1", "--server-pid", &pid],
    );
    assert!(output.status.success(), "{}", text(&output));
    let report = report.unwrap();
    assert_eq!(report["op"], "mix 3:1", "{report}");
    let (reads, writes) = (
        report["reads"].as_u64().unwrap(),
        report["writes"].as_u64().unwrap(),
    );
    assert!(writes > 0 && reads >= 2 * writes, "{report}");
    assert!(report["read_p99_us"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["write_p99_us"].as_f64().unwrap() > 0.0, "{report}");

    // The human summary says what ran.
    let output = tool(&[
        "bench",
        "--addr",
        &server.addr,
        "--duration",
        "0.2s",
        "--clients",
        "1",
        "--mix",
        "1:1",
        "--server-pid",
        &pid,
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(
        summary.contains("reads,") && summary.contains("writes)"),
        "{summary}"
    );
    assert!(summary.contains("server CPU:"), "{summary}");

    // A pid that is no server's is refused before anything runs.
    let (output, _) = bench(&server.addr, &["--server-pid", "4194305"]);
    assert_eq!(output.status.code(), Some(3), "{}", text(&output));
    let client = Client::connect(&server.addr).await.unwrap();
    assert_eq!(names(&client).await, Vec::<String>::new());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--server-pid 4194305"),
        "{}",
        text(&output)
    );
}

/// `--op fill` creates exactly `--total` checkpoints of `--sections`
/// sections and keeps them, and only with `--keep`: it is the one bench
/// that leaves data behind, for a scale test to restart on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fill_creates_the_total_and_keeps_it_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let client = Client::connect(&server.addr).await.unwrap();

    let (output, _) = bench(&server.addr, &["--op", "fill", "--total", "5"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("add --keep"),
        "{}",
        text(&output)
    );
    assert_eq!(names(&client).await, Vec::<String>::new());

    let (output, report) = bench(
        &server.addr,
        &[
            "--op",
            "fill",
            "--keep",
            "--total",
            "20",
            "--sections",
            "3",
            "--value-size",
            "16",
            "--clients",
            "4",
            "--checkpoint",
            "scale",
            "--duration-s",
            "60",
        ],
    );
    assert!(output.status.success(), "{}", text(&output));
    let report = report.unwrap();
    assert_eq!(report["ops"], 20, "{report}");
    assert_eq!(report["writes"], 60, "{report}");
    assert_eq!(report["kept"][0], "scale-0..scale-19", "{report}");
    let mut expected: Vec<String> = (0..20).map(|n| format!("scale-{n}")).collect();
    expected.sort();
    assert_eq!(names(&client).await, expected);
    let name = CheckpointName::new("scale-7").unwrap();
    let checkpoint = client.open(&name, None, OpenFlags::READ).await.unwrap();
    for s in 0..3 {
        let data = checkpoint
            .read(vec![ReadElement {
                section_id: SectionId::new(format!("s{s}")),
                offset: 0,
                size: None,
            }])
            .await
            .unwrap();
        assert_eq!(data, vec![vec![0x5a; 16]]);
    }
    assert_eq!(checkpoint.status().await.unwrap().number_of_sections, 3);
}
