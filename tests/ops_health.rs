//! Health during recovery (issue #12, point 5): the admin port is bound
//! before the log is replayed, `/livez` answers 200 and `/readyz` 503 with
//! `recovering: N of M records` until the server serves; SIGHUP does not
//! stop the server. (A poisoned store or a dead writer turning `/readyz`
//! 503 is tested beside the code, in server/src/metrics.rs, where a
//! faulty file system can be put under the store.)

mod common;
mod ops_support;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{bin, free_port};
use ops_support::{field, http_get, Process, WAIT};

fn server_args<'a>(data: &'a str, admin: &'a str) -> Vec<&'a str> {
    vec![
        "--data-dir",
        data,
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        admin,
    ]
}

#[test]
fn readyz_is_503_with_progress_while_the_log_is_replayed_and_livez_is_200() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_text = data.to_str().unwrap();

    // A log to replay: writes, then a crash before RocksDB covers them
    // (it is made durable only when a 64 MiB segment fills).
    let mut server = Process::start(&server_args(data_text, "127.0.0.1:0"), &[]);
    let ready = server.wait_line("ckpt-server ready");
    let addr = field(&ready, "listen=");
    let bench = Command::new(bin("ckpt-tool"))
        .args([
            "bench",
            "--addr",
            &addr,
            "--clients",
            "32",
            "--value-size",
            "8",
        ])
        .args(["--duration-s", "4", "--keep", "--json"])
        .output()
        .unwrap();
    assert!(
        bench.status.success(),
        "{}",
        String::from_utf8_lossy(&bench.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&bench.stdout).unwrap();
    let acked = report["ops"].as_u64().unwrap();
    server.signal(libc::SIGKILL);
    let _ = server.wait_exit();

    // The admin port is fixed so the test can ask before anything is logged.
    let admin = format!("127.0.0.1:{}", free_port());
    let mut server = Process::start(&server_args(data_text, &admin), &[]);
    let started = Instant::now();
    let mut answers: Vec<(u16, String, u16)> = Vec::new();
    loop {
        assert!(started.elapsed() < WAIT, "never ready: {answers:?}");
        let Some((status, body)) = http_get(&admin, "/readyz") else {
            assert!(server.running(), "the server exited: {answers:?}");
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        let live = http_get(&admin, "/livez").map_or(0, |(status, _)| status);
        answers.push((status, body.trim().to_string(), live));
        if status == 200 {
            break;
        }
    }
    let replayed = server.wait_line("store recovered");
    eprintln!(
        "{acked} writes acknowledged; {replayed}; {} answers before ready",
        answers.len()
    );
    let (last_status, last_body, _) = answers.last().unwrap();
    assert_eq!((*last_status, last_body.as_str()), (200, "ready"));
    let waiting = &answers[..answers.len() - 1];
    assert!(
        !waiting.is_empty(),
        "ready at the first answer: {answers:?}"
    );
    for (status, body, live) in waiting {
        assert_eq!(*status, 503, "{answers:?}");
        assert!(
            body.starts_with("recovering: ") || body.starts_with("starting: "),
            "{body}"
        );
        assert_eq!(*live, 200, "/livez while {body}");
    }
    // At least one answer counted records: `recovering: N of M records`
    // with N <= M.
    let counted: Vec<(u64, u64)> = waiting
        .iter()
        .filter_map(|(_, body, _)| {
            let rest = body
                .strip_prefix("recovering: ")?
                .strip_suffix(" records")?;
            let (n, m) = rest.split_once(" of ")?;
            Some((n.parse().ok()?, m.parse().ok()?))
        })
        .collect();
    assert!(!counted.is_empty(), "no progress shown: {waiting:?}");
    for (n, m) in &counted {
        assert!(n <= m && *m > 0, "{n} of {m}");
    }
}

#[test]
fn sighup_is_ignored_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Process::start(&server_args(data.to_str().unwrap(), "127.0.0.1:0"), &[]);
    let ready = server.wait_line("ckpt-server ready");
    let admin = field(&ready, "admin=");
    // One at a time: signals sent together may be delivered as one.
    for count in 1..=3 {
        server.signal(libc::SIGHUP);
        server.wait_lines("SIGHUP received: ignored", count);
    }
    assert!(server.running(), "SIGHUP stopped the server");
    assert_eq!(http_get(&admin, "/readyz").map(|(s, _)| s), Some(200));
    server.signal(libc::SIGTERM);
    let (status, log) = server.wait_exit();
    assert!(status.success(), "{log}");
    assert!(log.contains("store closed cleanly"), "{log}");
}

#[test]
fn an_unfinished_admin_request_does_not_hold_up_the_exit() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Process::start(&server_args(data.to_str().unwrap(), "127.0.0.1:0"), &[]);
    let ready = server.wait_line("ckpt-server ready");
    let admin = field(&ready, "admin=");
    // A scraper that sent half a request and waits.
    let mut stalled = std::net::TcpStream::connect(&admin).unwrap();
    stalled
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // And one on a kept-alive connection.
    let mut idle = std::net::TcpStream::connect(&admin).unwrap();
    idle.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // Its answer shows the server took both connections (accepted in the
    // order they came), rather than a sleep hoping it did.
    {
        use std::io::Read;
        idle.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = idle.read(&mut buf).expect("the /livez answer");
            assert!(n > 0, "the admin endpoint closed the kept-alive connection");
            answer.extend_from_slice(&buf[..n]);
        }
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    }
    let stopping = Instant::now();
    server.signal(libc::SIGTERM);
    let (status, log) = server.wait_exit();
    assert!(status.success(), "{log}");
    assert!(
        stopping.elapsed() < Duration::from_secs(20),
        "the exit took {:?}",
        stopping.elapsed()
    );
    // It was the admin endpoint's bound on the wait that let it go.
    assert!(
        log.contains("admin requests still running at exit"),
        "{log}"
    );
    drop((stalled, idle));
}
