//! Group commit: durable 1 KiB writes through the store versus a raw loop
//! that appends the same bytes to a file and shares one `fdatasync` per
//! batch.
//!
//! ```text
//! cargo bench -p ckpt-storage --bench group_commit
//! ```
//!
//! Environment (defaults in brackets):
//! - `CKPT_BENCH_SECONDS` [5]: measured seconds per run (after a 1 s warm-up);
//! - `CKPT_BENCH_WRITERS` [1,8,64]: writer thread counts;
//! - `CKPT_BENCH_MODES` [unsynced,disabled]: RocksDB WAL modes of the store
//!   (`-inline` appended: fsync on the writer thread; `-grow`: segments
//!   grow as written instead of being zero-filled ahead); `raw-zeroed` is
//!   the raw loop writing over a zero-filled, synced file instead;
//! - `CKPT_BENCH_ROUNDS` [1]: repeat raw + modes back to back this many times
//!   per writer count and add a table of medians (the machine is noisy).
//!
//! For every writer count the raw baseline and the store (once per mode) run
//! side by side in this process. Only operations that start after the
//! warm-up and finish inside the measured window are counted; fsync and
//! record counters are deltas over the measured window.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ckpt_proto::{
    now_ns, CheckpointName, CreationAttributes, CreationFlags, SectionCreationAttributes,
    SectionId, WriteElement, TIME_END,
};
use ckpt_storage::{
    DbOptions, Durability, InstanceId, Op, Outcome, RocksWalMode, Store, StoreConfig,
};

/// The allocator `ckpt-server` ships with, so that the store is measured
/// as it runs there (glibc's malloc took a third of the writer thread).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PAYLOAD: usize = 1024;
const WARMUP: Duration = Duration::from_secs(1);

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// A 1 KiB payload that differs for every (writer, counter): the writer's
/// stamp repeated, the counter in the first and last 8 bytes. Cheap to make
/// (a copy), so that the bench's own threads take little of the CPU the
/// systems measured share with them.
fn payload(writer: usize, counter: u64) -> Vec<u8> {
    thread_local! {
        static BASE: std::cell::RefCell<Option<(usize, Vec<u8>)>> =
            const { std::cell::RefCell::new(None) };
    }
    let mut data = BASE.with_borrow_mut(|base| match base {
        Some((w, bytes)) if *w == writer => bytes.clone(),
        _ => {
            let stamp = format!("w{writer:04}-");
            let bytes: Vec<u8> = stamp.bytes().cycle().take(PAYLOAD).collect();
            *base = Some((writer, bytes.clone()));
            bytes
        }
    });
    data[..8].copy_from_slice(&counter.to_le_bytes());
    data[PAYLOAD - 8..].copy_from_slice(&counter.to_le_bytes());
    data
}

/// What one run measured.
struct RunResult {
    writers: usize,
    system: String,
    ops: u64,
    seconds: f64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    fsyncs: u64,
    records: u64,
    errors: u64,
    first_error: Option<String>,
}

impl RunResult {
    fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.seconds
    }

    fn avg_batch(&self) -> f64 {
        if self.fsyncs == 0 {
            0.0
        } else {
            self.records as f64 / self.fsyncs as f64
        }
    }

    fn print(&self) {
        println!(
            "writers={} system={} ops/s={:.0} p50_us={:.0} p99_us={:.0} fsyncs={} avg_batch={:.2}",
            self.writers,
            self.system,
            self.ops_per_s(),
            self.p50_us,
            self.p99_us,
            self.fsyncs,
            self.avg_batch()
        );
        if self.errors > 0 {
            println!(
                "  !! {} errors, first: {}",
                self.errors,
                self.first_error.as_deref().unwrap_or("?")
            );
        }
    }
}

/// Nearest-rank percentile of sorted nanoseconds, in microseconds.
fn percentile_us(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

/// Per-writer outcome of the measured window.
#[derive(Default)]
struct WriterLog {
    latencies_ns: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

/// Runs `writers` threads calling `op(writer, counter)` until the window
/// closes; `counters()` returns (fsyncs, records) and is sampled at the
/// start and end of the measured window.
fn drive<F, C>(writers: usize, seconds: f64, op: F, counters: C) -> (Vec<WriterLog>, f64, u64, u64)
where
    F: Fn(usize, u64) -> Result<(), String> + Sync,
    C: Fn() -> (u64, u64),
{
    let stop = AtomicBool::new(false);
    let begin = Instant::now();
    let measure_from = begin + WARMUP;
    let measure_to = measure_from + Duration::from_secs_f64(seconds);
    let mut logs = Vec::new();
    let mut fsyncs = 0;
    let mut records = 0;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..writers)
            .map(|writer| {
                let stop = &stop;
                let op = &op;
                scope.spawn(move || {
                    let mut log = WriterLog::default();
                    let mut counter = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        counter += 1;
                        let start = Instant::now();
                        let result = op(writer, counter);
                        let end = Instant::now();
                        if start >= measure_from && end <= measure_to {
                            match result {
                                Ok(()) => log.latencies_ns.push((end - start).as_nanos() as u64),
                                Err(error) => {
                                    log.errors += 1;
                                    log.first_error.get_or_insert(error);
                                }
                            }
                        } else if let Err(error) = result {
                            log.errors += 1;
                            log.first_error.get_or_insert(error);
                        }
                    }
                    log
                })
            })
            .collect();
        std::thread::sleep(measure_from.saturating_duration_since(Instant::now()));
        let (f0, r0) = counters();
        std::thread::sleep(measure_to.saturating_duration_since(Instant::now()));
        let (f1, r1) = counters();
        stop.store(true, Ordering::Relaxed);
        fsyncs = f1 - f0;
        records = r1 - r0;
        logs = handles
            .into_iter()
            .map(|h| h.join().expect("writer panicked"))
            .collect();
    });
    (logs, seconds, fsyncs, records)
}

fn summarize(
    writers: usize,
    system: &str,
    logs: Vec<WriterLog>,
    seconds: f64,
    fsyncs: u64,
    records: u64,
) -> RunResult {
    let mut all: Vec<u64> = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for log in logs {
        all.extend(log.latencies_ns);
        errors += log.errors;
        if first_error.is_none() {
            first_error = log.first_error;
        }
    }
    all.sort_unstable();
    RunResult {
        writers,
        system: system.to_string(),
        ops: all.len() as u64,
        seconds,
        p50_us: percentile_us(&all, 50.0),
        p99_us: percentile_us(&all, 99.0),
        max_us: all.last().map_or(0.0, |v| *v as f64 / 1000.0),
        fsyncs,
        records,
        errors,
        first_error,
    }
}

// ---------------------------------------------------------------- raw --

struct RawRequest {
    data: Vec<u8>,
    reply: mpsc::SyncSender<()>,
}

/// The syncer: take every queued request, one write, one fdatasync, answer all.
fn syncer(
    file: File,
    requests: mpsc::Receiver<RawRequest>,
    fsyncs: &AtomicU64,
    records: &AtomicU64,
) {
    use std::os::unix::fs::FileExt;
    let mut end = 0u64;
    let mut buffer = Vec::new();
    while let Ok(first) = requests.recv() {
        let mut batch = vec![first];
        while let Ok(more) = requests.try_recv() {
            batch.push(more);
        }
        buffer.clear();
        for request in &batch {
            buffer.extend_from_slice(&request.data);
        }
        file.write_all_at(&buffer, end).expect("raw append");
        end += buffer.len() as u64;
        file.sync_data().expect("raw fdatasync");
        fsyncs.fetch_add(1, Ordering::Relaxed);
        records.fetch_add(batch.len() as u64, Ordering::Relaxed);
        for request in batch {
            let _ = request.reply.send(());
        }
    }
}

/// Bytes a `raw-zeroed` run fills with zeros (and syncs) before it starts:
/// more than any run here writes.
const RAW_ZEROED_BYTES: usize = 512 << 20;

/// The raw loop, appending to a file that grows (`raw`, the baseline every
/// ratio is against) or writing over a file zero-filled and synced first
/// (`raw-zeroed`, what the store's preallocated segments do).
fn run_raw(dir: &Path, writers: usize, seconds: f64, zeroed: bool) -> RunResult {
    let mut file = File::options()
        .create(true)
        .truncate(true)
        .write(true)
        .open(dir.join("raw.log"))
        .expect("open raw log");
    if zeroed {
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..RAW_ZEROED_BYTES >> 20 {
            file.write_all(&zeros).expect("zero-fill");
        }
        file.sync_all().expect("sync zeros");
    }
    let fsyncs = AtomicU64::new(0);
    let records = AtomicU64::new(0);
    let (sender, receiver) = mpsc::sync_channel::<RawRequest>(8192);
    let (logs, seconds, f, r) = std::thread::scope(|scope| {
        let fsyncs_ref = &fsyncs;
        let records_ref = &records;
        let syncer_thread = scope.spawn(move || syncer(file, receiver, fsyncs_ref, records_ref));
        let result = drive(
            writers,
            seconds,
            |writer, counter| {
                let (reply, answer) = mpsc::sync_channel(1);
                sender
                    .send(RawRequest {
                        data: payload(writer, counter),
                        reply,
                    })
                    .map_err(|e| e.to_string())?;
                answer.recv().map_err(|e| e.to_string())
            },
            || {
                (
                    fsyncs.load(Ordering::Relaxed),
                    records.load(Ordering::Relaxed),
                )
            },
        );
        drop(sender);
        syncer_thread.join().expect("syncer panicked");
        result
    });
    let system = if zeroed { "raw-zeroed" } else { "raw" };
    summarize(writers, system, logs, seconds, f, r)
}

// --------------------------------------------------------------- ckpt --

/// A mode name: `unsynced` or `disabled` (RocksDB WAL), optionally with
/// `-inline` (fsync on the writer thread instead of the fsync thread) and
/// `-grow` (segments grow as written instead of being zero-filled ahead).
fn mode_of(name: &str) -> (RocksWalMode, bool, bool) {
    let mut wal = name;
    let mut fsync_thread = true;
    let mut preallocate = true;
    loop {
        if let Some(rest) = wal.strip_suffix("-inline") {
            (wal, fsync_thread) = (rest, false);
        } else if let Some(rest) = wal.strip_suffix("-grow") {
            (wal, preallocate) = (rest, false);
        } else {
            break;
        }
    }
    let wal = match wal {
        "unsynced" => RocksWalMode::Unsynced,
        "disabled" => RocksWalMode::Disabled,
        other => {
            panic!("unknown CKPT_BENCH_MODES entry {other:?} (unsynced|disabled[-inline][-grow])")
        }
    };
    (wal, fsync_thread, preallocate)
}

fn run_ckpt(dir: &Path, mode_name: &str, writers: usize, seconds: f64) -> RunResult {
    let mut config = StoreConfig::new(dir);
    let (wal_mode, fsync_thread, preallocate) = mode_of(mode_name);
    config.fsync_thread = fsync_thread;
    config.preallocate_segments = preallocate;
    config.db = DbOptions {
        wal_mode,
        ..DbOptions::default()
    };
    if let Ok(mb) = std::env::var("CKPT_BENCH_CF_MB") {
        config.db.write_buffer_bytes_per_cf = mb.parse::<usize>().expect("CKPT_BENCH_CF_MB") << 20;
    }
    let store = Store::open(config).expect("open store");

    let max_sections = (writers + 1) as u32;
    let attributes = CreationAttributes {
        creation_flags: CreationFlags::WR_ACTIVE_REPLICA,
        checkpoint_size: u64::from(max_sections) * 4096,
        retention_duration_ns: TIME_END,
        max_sections,
        max_section_size: 4096,
        max_section_id_size: 16,
    };
    let name = CheckpointName::new("group-commit-bench").expect("name");
    let instance: InstanceId = match store
        .execute_with(
            Op::CreateCheckpoint {
                name,
                attributes,
                instance: None,
                epoch: ckpt_storage::Epoch(1),
            },
            Durability::Durable,
            now_ns(),
        )
        .expect("create checkpoint")
    {
        Outcome::Opened { instance, .. } => instance,
        other => panic!("unexpected outcome {other:?}"),
    };
    let sections: Vec<SectionId> = (0..writers)
        .map(|i| SectionId::new(format!("s{i}")))
        .collect();
    for section_id in &sections {
        store
            .execute_with(
                Op::CreateSection {
                    instance,
                    attributes: SectionCreationAttributes {
                        section_id: Some(section_id.clone()),
                        expiration_time: TIME_END,
                    },
                    data: vec![0u8; PAYLOAD],
                },
                Durability::Durable,
                now_ns(),
            )
            .expect("create section");
    }

    let stats = store.stats();
    let (logs, seconds, fsyncs, records) = drive(
        writers,
        seconds,
        |writer, counter| {
            let op = Op::Write {
                instance,
                elements: vec![WriteElement {
                    section_id: sections[writer].clone(),
                    offset: 0,
                    data: payload(writer, counter),
                }],
            };
            store
                .execute_with(op, Durability::Durable, now_ns())
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
        || {
            (
                stats.fsyncs.load(Ordering::Relaxed),
                stats.records.load(Ordering::Relaxed),
            )
        },
    );
    store.close().expect("close store");
    summarize(
        writers,
        &format!("ckpt-{mode_name}"),
        logs,
        seconds,
        fsyncs,
        records,
    )
}

fn main() {
    let seconds: f64 = env_or("CKPT_BENCH_SECONDS", "5")
        .trim()
        .parse()
        .expect("CKPT_BENCH_SECONDS");
    let writers: Vec<usize> = env_or("CKPT_BENCH_WRITERS", "1,8,64")
        .split(',')
        .map(|w| w.trim().parse().expect("CKPT_BENCH_WRITERS"))
        .collect();
    let modes: Vec<String> = env_or("CKPT_BENCH_MODES", "unsynced,disabled")
        .split(',')
        .map(|m| m.trim().to_lowercase())
        .filter(|m| !m.is_empty())
        .collect();
    for mode in modes.iter().filter(|m| *m != "raw-zeroed") {
        mode_of(mode);
    }
    let rounds: usize = env_or("CKPT_BENCH_ROUNDS", "1")
        .trim()
        .parse::<usize>()
        .expect("CKPT_BENCH_ROUNDS")
        .max(1);
    let base = tempfile::tempdir().expect("temp dir");
    println!(
        "group_commit: {seconds} s per run after {} s warm-up, writers {writers:?}, modes {modes:?}, rounds {rounds}, payload {PAYLOAD} B, dir {}",
        WARMUP.as_secs(),
        base.path().display()
    );
    println!("(fsyncs = fdatasync calls in the measured window; avg_batch = records / fsyncs)");
    println!("load average at start: {}", loadavg());

    // results[k] = (round, result); within a round raw runs first, then
    // each mode, back to back, so that they see the same disk.
    let mut results: Vec<(usize, RunResult)> = Vec::new();
    for &n in &writers {
        for round in 0..rounds {
            if rounds > 1 {
                println!(
                    "-- writers={n} round {}/{rounds} (load {})",
                    round + 1,
                    loadavg()
                );
            }
            let raw_dir = tempfile::tempdir_in(base.path()).expect("temp dir");
            let raw = run_raw(raw_dir.path(), n, seconds, false);
            raw.print();
            drop(raw_dir);
            let mut ckpt = Vec::new();
            for mode in &modes {
                let dir = tempfile::tempdir_in(base.path()).expect("temp dir");
                let result = if mode == "raw-zeroed" {
                    run_raw(dir.path(), n, seconds, true)
                } else {
                    run_ckpt(dir.path(), mode, n, seconds)
                };
                result.print();
                drop(dir);
                ckpt.push(result);
            }
            for result in &ckpt {
                println!(
                    "ratio {}/raw = {:.2}",
                    result.system,
                    result.ops_per_s() / raw.ops_per_s()
                );
            }
            results.push((round, raw));
            results.extend(ckpt.into_iter().map(|r| (round, r)));
        }
    }

    println!();
    println!("| writers | round | system | ops/s | p50 µs | p99 µs | max µs | fsyncs | avg batch | ops/s vs raw | errors |");
    println!("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let raw_of = |writers: usize, round: usize| {
        results
            .iter()
            .find(|(r, x)| x.writers == writers && *r == round && x.system == "raw")
            .map_or(f64::NAN, |(_, x)| x.ops_per_s())
    };
    for (round, result) in &results {
        println!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {:.2} | {:.2} | {} |",
            result.writers,
            round + 1,
            result.system,
            result.ops_per_s(),
            result.p50_us,
            result.p99_us,
            result.max_us,
            result.fsyncs,
            result.avg_batch(),
            result.ops_per_s() / raw_of(result.writers, *round),
            result.errors
        );
    }
    if rounds > 1 {
        println!();
        println!("Median over {rounds} rounds (ratio = median of the per-round ratios):");
        println!();
        println!("| writers | system | median ops/s | median p50 µs | median p99 µs | median ratio vs raw | ratios per round |");
        println!("|---:|---|---:|---:|---:|---:|---|");
        let mut systems: Vec<String> = vec!["raw".to_string()];
        systems.extend(modes.iter().map(|m| {
            if m == "raw-zeroed" {
                m.clone()
            } else {
                format!("ckpt-{m}")
            }
        }));
        for &n in &writers {
            for system in &systems {
                let runs: Vec<&(usize, RunResult)> = results
                    .iter()
                    .filter(|(_, x)| x.writers == n && &x.system == system)
                    .collect();
                let ratios: Vec<f64> = runs
                    .iter()
                    .map(|(r, x)| x.ops_per_s() / raw_of(n, *r))
                    .collect();
                println!(
                    "| {n} | {system} | {:.0} | {:.0} | {:.0} | {:.2} | {} |",
                    median(runs.iter().map(|(_, x)| x.ops_per_s()).collect()),
                    median(runs.iter().map(|(_, x)| x.p50_us).collect()),
                    median(runs.iter().map(|(_, x)| x.p99_us).collect()),
                    median(ratios.clone()),
                    ratios
                        .iter()
                        .map(|r| format!("{r:.2}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
