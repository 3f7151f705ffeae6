//! Scale benchmark (DESIGN.md §3, "Column families at scale"): create
//! 10,000 checkpoints with 10 sections each from 16 client threads, then
//! close and reopen the store; delete and recreate some to show deletion
//! reclaims everything.
//!
//! Reports the p99 latency of checkpoint creation over the whole run and
//! over the last 1,000 (target < 10 ms both), the reopen time (target < 5 s)
//! and peak RSS (target < 2 GiB).
//!
//! `cargo bench -p ckpt-storage --bench scale`; env: CKPT_SCALE_CHECKPOINTS
//! (10000), CKPT_SCALE_SECTIONS (10), CKPT_SCALE_CLIENTS (16),
//! CKPT_SCALE_MODE (disabled | unsynced).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ckpt_proto::{
    now_ns, CheckpointName, CreationAttributes, CreationFlags, ReadElement,
    SectionCreationAttributes, SectionId, TIME_END,
};
use ckpt_storage::{Durability, Op, Outcome, RocksWalMode, Store, StoreConfig};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn attributes(sections: u32) -> CreationAttributes {
    CreationAttributes {
        creation_flags: CreationFlags::WR_ACTIVE_REPLICA,
        checkpoint_size: u64::from(sections) * 1024,
        retention_duration_ns: TIME_END,
        max_sections: sections,
        max_section_size: 1024,
        max_section_id_size: 16,
    }
}

fn run(store: &Store, op: Op) -> Outcome {
    store
        .execute_with(op, Durability::Durable, now_ns())
        .expect("operation succeeds")
}

fn create(store: &Store, name: &str, sections: u32) -> (ckpt_storage::InstanceId, Duration) {
    let started = Instant::now();
    let outcome = run(
        store,
        Op::CreateCheckpoint {
            name: CheckpointName::new(name).unwrap(),
            attributes: attributes(sections),
            instance: None,
            epoch: ckpt_storage::Epoch(1),
        },
    );
    let latency = started.elapsed();
    let Outcome::Opened { instance, .. } = outcome else {
        panic!("unexpected {outcome:?}")
    };
    for s in 0..sections {
        let op = Op::CreateSection {
            instance,
            attributes: SectionCreationAttributes {
                section_id: Some(SectionId::new(format!("s{s}"))),
                expiration_time: TIME_END,
            },
            data: vec![s as u8; 100],
        };
        run(store, op);
    }
    (instance, latency)
}

fn main() {
    let checkpoints: usize = env("CKPT_SCALE_CHECKPOINTS", 10_000);
    let sections: u32 = env("CKPT_SCALE_SECTIONS", 10);
    let clients: usize = env("CKPT_SCALE_CLIENTS", 16);
    let mode = match env("CKPT_SCALE_MODE", "disabled".to_string()).as_str() {
        "unsynced" => RocksWalMode::Unsynced,
        _ => RocksWalMode::Disabled,
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = StoreConfig::new(dir.path());
    config.db.wal_mode = mode;
    println!("scale: {checkpoints} checkpoints x {sections} sections, {clients} clients, RocksDB WAL {mode:?}, dir {}", dir.path().display());

    let store = Arc::new(Store::open(config.clone()).expect("store opens"));
    let next = AtomicUsize::new(0);
    // (completion order, latency)
    let latencies = Mutex::new(Vec::with_capacity(checkpoints));
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..clients {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= checkpoints {
                    return;
                }
                let (_, latency) = create(&store, &format!("ckpt-{i:05}"), sections);
                latencies.lock().unwrap().push(latency);
            });
        }
    });
    let create_s = started.elapsed().as_secs_f64();
    let latencies = latencies.into_inner().unwrap();
    let mut all = latencies.clone();
    all.sort();
    let mut last: Vec<Duration> = latencies[latencies.len().saturating_sub(1000)..].to_vec();
    last.sort();
    let rss_created = rss_mib("VmRSS:");
    println!(
        "created {} in {create_s:.2} s ({:.0}/s); CreateCheckpoint p50 {:.2} ms p99 {:.2} ms (last 1000: p99 {:.2} ms) max {:.2} ms; rss {rss_created:.0} MiB",
        all.len(),
        all.len() as f64 / create_s,
        ms(quantile(&all, 0.5)),
        ms(quantile(&all, 0.99)),
        ms(quantile(&last, 0.99)),
        ms(quantile(&all, 1.0)),
    );

    let closing = Instant::now();
    Arc::try_unwrap(store)
        .ok()
        .expect("sole owner")
        .close()
        .expect("close");
    let close_s = closing.elapsed().as_secs_f64();
    let reopening = Instant::now();
    let store = Store::open(config).expect("reopen");
    let reopen_s = reopening.elapsed().as_secs_f64();
    println!(
        "close {close_s:.3} s; reopen {reopen_s:.3} s (replayed {})",
        store.recovery_report().replayed
    );

    // Every 97th checkpoint reads back.
    let mut verified = 0;
    for i in (0..checkpoints).step_by(97) {
        let instance = store
            .lookup(&CheckpointName::new(format!("ckpt-{i:05}")).unwrap())
            .expect("lookup");
        let element = ReadElement {
            section_id: SectionId::new("s3"),
            offset: 0,
            size: None,
        };
        let data = store.read(instance, &[element]).expect("read").remove(0);
        assert_eq!(data, vec![3u8; 100]);
        verified += 1;
    }
    // Delete 100 and create 100 new: deletion reclaims the data keys.
    let churn = 100.min(checkpoints);
    let churning = Instant::now();
    let mut leftover_keys = 0;
    for i in 0..churn {
        let name = CheckpointName::new(format!("ckpt-{i:05}")).unwrap();
        let instance = store.lookup(&name).expect("lookup");
        run(&store, Op::Unlink { name });
        run(&store, Op::Destroy { instance });
        leftover_keys += store.data_keys(instance).expect("count");
    }
    for i in 0..churn {
        create(&store, &format!("churn-{i:05}"), sections);
    }
    let churn_s = churning.elapsed().as_secs_f64();
    println!("verified {verified}; churn: deleted {churn} and created {churn} in {churn_s:.2} s; data keys left by deleted checkpoints: {leftover_keys}");
    let hwm = rss_mib("VmHWM:");
    store.close().expect("close");

    let p99 = ms(quantile(&all, 0.99));
    let p99_last = ms(quantile(&last, 0.99));
    let yes = |ok: bool| if ok { "yes" } else { "NO" };
    println!("\n| metric | value | target | met |\n|---|---:|---|---|");
    println!("| checkpoints x sections | {checkpoints} x {sections} | | |");
    println!(
        "| creations/s ({clients} clients) | {:.0} | | |",
        all.len() as f64 / create_s
    );
    println!(
        "| CreateCheckpoint p99, whole run | {p99:.2} ms | < 10 ms | {} |",
        yes(p99 < 10.0)
    );
    println!(
        "| CreateCheckpoint p99, last 1000 | {p99_last:.2} ms | < 10 ms | {} |",
        yes(p99_last < 10.0)
    );
    println!(
        "| CreateCheckpoint max | {:.2} ms | | |",
        ms(quantile(&all, 1.0))
    );
    println!("| close | {close_s:.3} s | | |");
    println!(
        "| reopen | {reopen_s:.3} s | < 5 s | {} |",
        yes(reopen_s < 5.0)
    );
    println!(
        "| peak RSS (VmHWM) | {hwm:.0} MiB | < 2048 MiB | {} |",
        yes(hwm < 2048.0)
    );
    println!(
        "| data keys left after deleting {churn} | {leftover_keys} | 0 | {} |",
        yes(leftover_keys == 0)
    );
}
