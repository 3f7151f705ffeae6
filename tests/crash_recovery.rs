//! SIGKILL under load: 16 `ckpt-tool bench` clients record every
//! acknowledged write; the server is killed at a random moment, restarted,
//! and `ckpt-tool check-acked` must find every acknowledged write.
//! Repeated 20 times with different seeds (`CKPT_CRASH_SEED` replays one).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, Server};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

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
        let record = dir.path().join(format!("acked-{round}.txt"));
        let mut server = Server::start(&data);
        let mode = ["active", "all-replicas"][round % 2];
        let mut bench = Command::new(bin("ckpt-tool"))
            .args([
                "bench",
                "--addr",
                &server.addr,
                "--clients",
                "16",
                "--duration-s",
                "5",
                "--value-size",
                "512",
            ])
            .args(["--mode", mode, "--checkpoint", &format!("crash-{mode}")])
            .arg("--record")
            .arg(&record)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ckpt-tool bench starts");
        std::thread::sleep(Duration::from_millis(rng.random_range(300..3000)));
        server.kill();
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = bench.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "seed {seed} round {round}: bench did not stop after the server died"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let output = bench.wait_with_output().unwrap();
        assert!(
            status.success(),
            "seed {seed} round {round}: bench failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let acked = std::fs::read_to_string(&record).unwrap_or_default();
        assert!(
            !acked.is_empty(),
            "seed {seed} round {round}: nothing was acknowledged before the kill"
        );

        let server = Server::start(&data);
        let check = Command::new(bin("ckpt-tool"))
            .args(["check-acked", "--addr", &server.addr])
            .arg(&record)
            .output()
            .expect("ckpt-tool check-acked runs");
        let report = String::from_utf8_lossy(&check.stdout);
        assert!(
            check.status.success() && report.contains(", 0 lost"),
            "seed {seed} round {round}: {report}{}",
            String::from_utf8_lossy(&check.stderr)
        );
        drop(server);
    }
}
