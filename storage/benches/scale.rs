//! Scale: many checkpoints in one store (one RocksDB column family each).
//!
//! ```text
//! cargo bench -p ckpt-storage --bench scale
//! ```
//!
//! Environment (defaults in brackets):
//! - `CKPT_SCALE_CHECKPOINTS` [10000]: checkpoints to create;
//! - `CKPT_SCALE_SECTIONS` [10]: sections of 100 bytes per checkpoint;
//! - `CKPT_SCALE_MODE` [unsynced]: RocksDB WAL mode (unsynced|disabled).
//!
//! 16 client threads create the checkpoints concurrently (a creation is one
//! `CreateCheckpoint` followed by its `CreateSection`s, all durable; the
//! latency reported is that of the `CreateCheckpoint` alone). Then the store
//! is closed and reopened (timed), a sample of checkpoints is read back, and
//! 100 checkpoints are deleted and 100 new ones created to show that column
//! families are recycled. A monitor thread watches the column family pool
//! and logs every top-up it sees: how long the pool stayed below its
//! low-water mark before the batch landed.
//!
//! Diagnostics: `CKPT_SCALE_KEEP=1` keeps the data directory;
//! `CKPT_SCALE_STOP_AFTER_CREATE=1` keeps it and stops after the creation
//! phase's close; `CKPT_SCALE_TRIM=1` returns freed heap to the OS before
//! the reopen; `CKPT_SCALE_REOPEN_ONLY=<data dir>` only opens (timed) and
//! closes an existing one.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ckpt_proto::{
    now_ns, CheckpointName, CreationAttributes, CreationFlags, ReadElement,
    SectionCreationAttributes, SectionId, TIME_END,
};
use ckpt_storage::{
    DbOptions, Durability, InstanceId, Op, Outcome, RocksWalMode, Store, StoreConfig,
};

const CLIENTS: usize = 16;
const SECTION_BYTES: usize = 100;
const MAX_SECTION_SIZE: u64 = 1024;
const VERIFY_EVERY: usize = 97;
const CHURN: usize = 100;
const LAST_WINDOW: usize = 1000;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_string())
}

fn proc_status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|line| line.starts_with(field))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn checkpoint_name(prefix: &str, i: usize) -> CheckpointName {
    CheckpointName::new(format!("{prefix}-{i:05}")).expect("name")
}

fn section_id(j: u32) -> SectionId {
    SectionId::new(format!("s{j}"))
}

fn section_data(name: &CheckpointName, j: u32) -> Vec<u8> {
    let stamp = format!("{name}/s{j}|");
    stamp
        .as_bytes()
        .iter()
        .copied()
        .cycle()
        .take(SECTION_BYTES)
        .collect()
}

fn attributes(sections: u32) -> CreationAttributes {
    CreationAttributes {
        creation_flags: CreationFlags::WR_ACTIVE_REPLICA,
        checkpoint_size: u64::from(sections) * MAX_SECTION_SIZE,
        retention_duration_ns: TIME_END,
        max_sections: sections,
        max_section_size: MAX_SECTION_SIZE,
        max_section_id_size: 16,
    }
}

fn percentile_ms(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1e6
}

/// Creates one checkpoint and its sections; returns the instance and the
/// latency of the `CreateCheckpoint` alone.
fn create_one(
    store: &Store,
    name: &CheckpointName,
    sections: u32,
    section_latencies: &mut Vec<u64>,
) -> Result<(InstanceId, u64), String> {
    let start = Instant::now();
    let outcome = store
        .execute_with(
            Op::CreateCheckpoint {
                name: name.clone(),
                attributes: attributes(sections),
            },
            Durability::Durable,
            now_ns(),
        )
        .map_err(|e| format!("create {name}: {e}"))?;
    let latency = start.elapsed().as_nanos() as u64;
    let instance = match outcome {
        Outcome::Opened {
            instance,
            existed: false,
        } => instance,
        other => return Err(format!("create {name}: unexpected outcome {other:?}")),
    };
    for j in 0..sections {
        let start = Instant::now();
        store
            .execute_with(
                Op::CreateSection {
                    instance,
                    attributes: SectionCreationAttributes {
                        section_id: Some(section_id(j)),
                        expiration_time: TIME_END,
                    },
                    data: section_data(name, j),
                },
                Durability::Durable,
                now_ns(),
            )
            .map_err(|e| format!("create section s{j} of {name}: {e}"))?;
        section_latencies.push(start.elapsed().as_nanos() as u64);
    }
    Ok((instance, latency))
}

/// A pool top-up as seen from outside: when the pool was first seen below
/// the low-water mark and when it grew again.
struct TopUp {
    at_s: f64,
    created_before: usize,
    waited_ms: f64,
    free_before: usize,
    free_after: usize,
    min_free: usize,
}

/// Polls `pool_free` every 2 ms until `stop`.
fn monitor_pool(
    store: &Store,
    created: &AtomicUsize,
    stop: &AtomicBool,
    begin: Instant,
    low_water: usize,
) -> Vec<TopUp> {
    let mut events = Vec::new();
    let mut previous = store.pool_free();
    let mut below_since: Option<Instant> = None;
    let mut min_free = previous;
    while !stop.load(Ordering::Relaxed) {
        let free = store.pool_free();
        let now = Instant::now();
        if free < low_water && below_since.is_none() {
            below_since = Some(now);
            min_free = free;
        }
        min_free = min_free.min(free);
        if free > previous + 1 {
            events.push(TopUp {
                at_s: (now - begin).as_secs_f64(),
                created_before: created.load(Ordering::Relaxed),
                waited_ms: below_since.map_or(f64::NAN, |t| (now - t).as_secs_f64() * 1e3),
                free_before: previous,
                free_after: free,
                min_free,
            });
            below_since = None;
            min_free = free;
        }
        previous = free;
        std::thread::sleep(Duration::from_millis(2));
    }
    events
}

fn open_store(dir: &Path, mode: RocksWalMode) -> (Store, f64) {
    let mut config = StoreConfig::new(dir);
    config.db = DbOptions {
        wal_mode: mode,
        ..DbOptions::default()
    };
    let start = Instant::now();
    let store = Store::open(config).expect("open store");
    (store, start.elapsed().as_secs_f64())
}

fn count_column_families(dir: &Path) -> usize {
    rocksdb::DB::list_cf(&rocksdb::Options::default(), dir.join("db"))
        .map_or(0, |names| names.len())
}

fn dir_bytes(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                total += dir_bytes(&entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

/// What RocksDB keeps on disk: OPTIONS file size, SST and WAL files.
fn print_db_files(dir: &Path) {
    let mut options = (0usize, 0u64);
    let mut ssts = (0usize, 0u64);
    let mut logs = (0usize, 0u64);
    let mut manifest = (0usize, 0u64);
    if let Ok(entries) = std::fs::read_dir(dir.join("db")) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let len = entry.metadata().map_or(0, |m| m.len());
            let slot = if name.starts_with("OPTIONS-") {
                &mut options
            } else if name.ends_with(".sst") {
                &mut ssts
            } else if name.ends_with(".log") {
                &mut logs
            } else if name.starts_with("MANIFEST-") {
                &mut manifest
            } else {
                continue;
            };
            slot.0 += 1;
            slot.1 += len;
        }
    }
    let m = |b: u64| b as f64 / 1048576.0;
    println!(
        "  rocksdb files: OPTIONS {} ({:.1} MiB), MANIFEST {} ({:.1} MiB), SST {} ({:.1} MiB), WAL {} ({:.1} MiB)",
        options.0,
        m(options.1),
        manifest.0,
        m(manifest.1),
        ssts.0,
        m(ssts.1),
        logs.0,
        m(logs.1)
    );
}

/// Opens an existing data directory once, timed, reports, closes.
fn reopen_only(dir: &Path, mode: RocksWalMode) {
    println!("reopen only: {}", dir.display());
    print_db_files(dir);
    let start = Instant::now();
    let cfs = count_column_families(dir);
    println!(
        "  list_cf: {cfs} column families in {:.3} s",
        start.elapsed().as_secs_f64()
    );
    let (store, reopen_s) = open_store(dir, mode);
    let report = store.recovery_report().clone();
    println!(
        "  Store::open: {reopen_s:.3} s (replayed {}, segments {}); pool_free {}; rss {:.0} MiB hwm {:.0} MiB",
        report.replayed,
        report.segments,
        store.pool_free(),
        mib(proc_status_kib("VmRSS:")),
        mib(proc_status_kib("VmHWM:"))
    );
    let start = Instant::now();
    store.close().expect("close");
    println!("  close: {:.3} s", start.elapsed().as_secs_f64());
    print_db_files(dir);
}

fn main() {
    let checkpoints: usize = env_or("CKPT_SCALE_CHECKPOINTS", "10000")
        .trim()
        .parse()
        .expect("CKPT_SCALE_CHECKPOINTS");
    let sections: u32 = env_or("CKPT_SCALE_SECTIONS", "10")
        .trim()
        .parse()
        .expect("CKPT_SCALE_SECTIONS");
    let mode_name = env_or("CKPT_SCALE_MODE", "unsynced").trim().to_lowercase();
    let mode = match mode_name.as_str() {
        "unsynced" => RocksWalMode::Unsynced,
        "disabled" => RocksWalMode::Disabled,
        other => panic!("unknown CKPT_SCALE_MODE {other:?} (unsynced|disabled)"),
    };
    let defaults = DbOptions::default();
    if let Ok(existing) = std::env::var("CKPT_SCALE_REOPEN_ONLY") {
        reopen_only(Path::new(&existing), mode);
        return;
    }
    let base = tempfile::tempdir().expect("temp dir");
    let dir = base.path().join("data");
    let keep = std::env::var("CKPT_SCALE_KEEP").is_ok_and(|v| v == "1");
    println!(
        "scale: {checkpoints} checkpoints x {sections} sections of {SECTION_BYTES} B, {CLIENTS} clients, mode {mode_name}, \
         pool low water {} batch {}, dir {}",
        defaults.pool_low_water,
        defaults.pool_batch,
        dir.display()
    );

    // ------------------------------------------------------------ create --
    let (store, first_open_s) = open_store(&dir, mode);
    println!("first open: {first_open_s:.3} s");
    let next = AtomicUsize::new(0);
    let created = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let begin = Instant::now();
    let mut samples: Vec<(Instant, u64)> = Vec::with_capacity(checkpoints);
    let mut section_samples: Vec<u64> = Vec::new();
    let mut topups = Vec::new();
    std::thread::scope(|scope| {
        let monitor =
            scope.spawn(|| monitor_pool(&store, &created, &stop, begin, defaults.pool_low_water));
        let progress = scope.spawn(|| {
            let mut last = (Instant::now(), 0usize);
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if last.0.elapsed() >= Duration::from_secs(10) {
                    let done = created.load(Ordering::Relaxed);
                    let rate = (done - last.1) as f64 / last.0.elapsed().as_secs_f64();
                    println!(
                        "  [{:7.1} s] created {done:6} ({rate:7.1}/s over last 10 s) pool_free {:4} rss {:.0} MiB wal_segments {}",
                        begin.elapsed().as_secs_f64(),
                        store.pool_free(),
                        mib(proc_status_kib("VmRSS:")),
                        store.wal_segments()
                    );
                    last = (Instant::now(), done);
                }
            }
        });
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (store, next, created, failures) = (&store, &next, &created, &failures);
                scope.spawn(move || {
                    let mut mine = Vec::new();
                    let mut section_latencies = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= checkpoints {
                            break;
                        }
                        match create_one(
                            store,
                            &checkpoint_name("ckpt", i),
                            sections,
                            &mut section_latencies,
                        ) {
                            Ok((_, latency)) => mine.push((Instant::now(), latency)),
                            Err(error) => failures.lock().unwrap().push(error),
                        }
                        created.fetch_add(1, Ordering::Relaxed);
                    }
                    (mine, section_latencies)
                })
            })
            .collect();
        for client in clients {
            let (mine, section_latencies) = client.join().expect("client panicked");
            samples.extend(mine);
            section_samples.extend(section_latencies);
        }
        stop.store(true, Ordering::Relaxed);
        topups = monitor.join().expect("monitor panicked");
        progress.join().expect("progress panicked");
    });
    let create_wall_s = begin.elapsed().as_secs_f64();
    let failures = failures.into_inner().unwrap();
    samples.sort_by_key(|(finished, _)| *finished);
    let last_window: Vec<u64> = {
        let mut v: Vec<u64> = samples
            .iter()
            .rev()
            .take(LAST_WINDOW)
            .map(|(_, l)| *l)
            .collect();
        v.sort_unstable();
        v
    };
    let mut all: Vec<u64> = samples.iter().map(|(_, l)| *l).collect();
    all.sort_unstable();
    let over_10ms = all.iter().filter(|l| **l > 10_000_000).count();
    let over_10ms_last = last_window.iter().filter(|l| **l > 10_000_000).count();
    let p50 = percentile_ms(&all, 50.0);
    let p99 = percentile_ms(&all, 99.0);
    let max = all.last().map_or(f64::NAN, |v| *v as f64 / 1e6);
    let p99_last = percentile_ms(&last_window, 99.0);
    let creations_per_s = samples.len() as f64 / create_wall_s;
    let stats = store.stats();
    let records = stats.records.load(Ordering::Relaxed);
    let batches = stats.batches.load(Ordering::Relaxed);
    let fsyncs = stats.fsyncs.load(Ordering::Relaxed);
    let rss_after_create = proc_status_kib("VmRSS:");
    println!(
        "created {} checkpoints in {create_wall_s:.2} s ({creations_per_s:.1}/s), {} failures; \
         records {records} batches {batches} fsyncs {fsyncs} (avg batch {:.2}); pool_free {}; rss {:.0} MiB hwm {:.0} MiB",
        samples.len(),
        failures.len(),
        records as f64 / batches.max(1) as f64,
        store.pool_free(),
        mib(rss_after_create),
        mib(proc_status_kib("VmHWM:"))
    );
    for failure in failures.iter().take(5) {
        println!("  failure: {failure}");
    }
    println!(
        "CreateCheckpoint latency: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms, p99 last {LAST_WINDOW} {p99_last:.2} ms, \
         {over_10ms} over 10 ms ({over_10ms_last} of the last {LAST_WINDOW})"
    );
    section_samples.sort_unstable();
    let section_p99 = percentile_ms(&section_samples, 99.0);
    let section_max = section_samples.last().map_or(f64::NAN, |v| *v as f64 / 1e6);
    let section_over_10ms = section_samples.iter().filter(|l| **l > 10_000_000).count();
    println!(
        "CreateSection latency (same writer queue): p50 {:.2} ms, p99 {section_p99:.2} ms, max {section_max:.2} ms, \
         {section_over_10ms} of {} over 10 ms",
        percentile_ms(&section_samples, 50.0),
        section_samples.len()
    );
    println!("pool top-ups observed ({}):", topups.len());
    println!("  at_s    created_before  waited_ms  free_before  min_free  free_after");
    for t in &topups {
        println!(
            "  {:7.2} {:14} {:10.1} {:12} {:9} {:11}",
            t.at_s, t.created_before, t.waited_ms, t.free_before, t.min_free, t.free_after
        );
    }
    // The ten slowest creations, with how many creations preceded them.
    let mut slowest: Vec<(usize, u64)> = samples
        .iter()
        .enumerate()
        .map(|(k, (_, l))| (k, *l))
        .collect();
    slowest.sort_by_key(|entry| std::cmp::Reverse(entry.1));
    println!(
        "slowest creations (completion rank: ms): {}",
        slowest
            .iter()
            .take(10)
            .map(|(k, l)| format!("{k}: {:.1}", *l as f64 / 1e6))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let close_start = Instant::now();
    store.close().expect("close");
    let close_s = close_start.elapsed().as_secs_f64();
    print_db_files(&dir);
    let cfs_after_create = count_column_families(&dir);
    println!(
        "close: {close_s:.3} s; column families on disk: {cfs_after_create}; data dir {:.1} MiB (db {:.1} MiB, wal {:.1} MiB)",
        dir_bytes(&dir) as f64 / 1048576.0,
        dir_bytes(&dir.join("db")) as f64 / 1048576.0,
        dir_bytes(&dir.join("wal")) as f64 / 1048576.0
    );

    if std::env::var("CKPT_SCALE_STOP_AFTER_CREATE").is_ok_and(|v| v == "1") {
        let kept = base.keep();
        println!(
            "stopping after creation; data directory kept: {}",
            kept.join("data").display()
        );
        return;
    }

    // ------------------------------------------------------------ reopen --
    println!("rss after close: {:.0} MiB", mib(proc_status_kib("VmRSS:")));
    if std::env::var("CKPT_SCALE_TRIM").is_ok_and(|v| v == "1") {
        // SAFETY: malloc_trim only returns free heap memory to the OS.
        unsafe { libc::malloc_trim(0) };
        println!(
            "rss after malloc_trim: {:.0} MiB",
            mib(proc_status_kib("VmRSS:"))
        );
    }
    let hwm_before_reopen = proc_status_kib("VmHWM:");
    let (store, reopen_s) = open_store(&dir, mode);
    let report = store.recovery_report().clone();
    println!(
        "reopen: {reopen_s:.3} s (applied_at_open {}, replayed {}, segments {}, next_lsn {}); pool_free {}; rss {:.0} MiB hwm {:.0} MiB",
        report.applied_at_open,
        report.replayed,
        report.segments,
        report.next_lsn,
        store.pool_free(),
        mib(proc_status_kib("VmRSS:")),
        mib(proc_status_kib("VmHWM:"))
    );

    // ------------------------------------------------------------ verify --
    let verify_start = Instant::now();
    let mut verified = 0usize;
    let mut bad = Vec::new();
    for i in (0..samples.len().min(checkpoints)).step_by(VERIFY_EVERY) {
        let name = checkpoint_name("ckpt", i);
        let j = (i as u32) % sections;
        let result = store.lookup(&name).and_then(|instance| {
            store.read(
                instance,
                &[ReadElement {
                    section_id: section_id(j),
                    offset: 0,
                    size: None,
                }],
            )
        });
        match result {
            Ok(data) if data.len() == 1 && data[0] == section_data(&name, j) => verified += 1,
            Ok(data) => bad.push(format!(
                "{name} s{j}: wrong data ({} bytes)",
                data.first().map_or(0, Vec::len)
            )),
            Err(error) => bad.push(format!("{name} s{j}: {error}")),
        }
    }
    println!(
        "verify: {verified} checkpoints read back correctly, {} bad, in {:.3} s",
        bad.len(),
        verify_start.elapsed().as_secs_f64()
    );
    for b in bad.iter().take(5) {
        println!("  bad: {b}");
    }

    // ------------------------------------------------------------- churn --
    let churn = CHURN.min(checkpoints);
    let pool_before = store.pool_free();
    let churn_start = Instant::now();
    let mut churn_errors = Vec::new();
    for i in 0..churn {
        let name = checkpoint_name("ckpt", i);
        let result = store.lookup(&name).and_then(|instance| {
            store.execute(Op::Unlink { name: name.clone() })?;
            store.execute(Op::Destroy { instance })
        });
        if let Err(error) = result {
            churn_errors.push(format!("delete {name}: {error}"));
        }
    }
    let pool_after_delete = store.pool_free();
    for i in 0..churn {
        if let Err(error) = create_one(
            &store,
            &checkpoint_name("new", i),
            sections,
            &mut Vec::new(),
        ) {
            churn_errors.push(error);
        }
    }
    let pool_after_recreate = store.pool_free();
    let churn_s = churn_start.elapsed().as_secs_f64();
    println!(
        "churn: deleted {churn} then created {churn} in {churn_s:.2} s; pool_free before {pool_before}, after delete {pool_after_delete}, \
         after recreate {pool_after_recreate}; {} errors",
        churn_errors.len()
    );
    for e in churn_errors.iter().take(5) {
        println!("  churn error: {e}");
    }
    store.close().expect("close");
    let cfs_final = count_column_families(&dir);
    let hwm = proc_status_kib("VmHWM:");
    println!("column families on disk: after creation {cfs_after_create}, after churn {cfs_final}");
    print_db_files(&dir);
    if keep {
        let kept = base.keep();
        println!("data directory kept: {}", kept.join("data").display());
    }

    // ------------------------------------------------------------ report --
    let ok = |pass: bool| if pass { "yes" } else { "NO" };
    println!();
    println!("| metric | value | target | met |");
    println!("|---|---:|---|---|");
    println!(
        "| checkpoints created ({sections} sections each, {CLIENTS} clients, {mode_name}) | {} | | |",
        samples.len()
    );
    println!(
        "| creation failures | {} | 0 | {} |",
        failures.len(),
        ok(failures.is_empty())
    );
    println!("| creation wall time | {create_wall_s:.2} s | | |");
    println!("| creations/s | {creations_per_s:.1} | | |");
    println!("| CreateCheckpoint p50 | {p50:.2} ms | | |");
    println!(
        "| CreateCheckpoint p99 (all) | {p99:.2} ms | < 10 ms | {} |",
        ok(p99 < 10.0)
    );
    println!(
        "| CreateCheckpoint p99 (last {LAST_WINDOW}) | {p99_last:.2} ms | < 10 ms | {} |",
        ok(p99_last < 10.0)
    );
    println!("| CreateCheckpoint max | {max:.2} ms | | |");
    println!(
        "| creations over 10 ms (all / last {LAST_WINDOW}) | {over_10ms} / {over_10ms_last} | | |"
    );
    println!(
        "| CreateSection p99 / max (other writes, same queue) | {section_p99:.2} ms / {section_max:.2} ms | | |"
    );
    println!("| pool top-ups observed | {} | | |", topups.len());
    println!("| close | {close_s:.3} s | | |");
    println!(
        "| reopen (`Store::open`) | {reopen_s:.3} s | < 5 s | {} |",
        ok(reopen_s < 5.0)
    );
    println!(
        "| verified (every {VERIFY_EVERY}th) | {verified} ok / {} bad | 0 bad | {} |",
        bad.len(),
        ok(bad.is_empty())
    );
    println!(
        "| pool_free before delete / after delete / after recreate | {pool_before} / {pool_after_delete} / {pool_after_recreate} | recycled | {} |",
        ok(pool_after_delete == pool_before + churn && pool_after_recreate == pool_before)
    );
    println!(
        "| column families on disk after creation / after churn | {cfs_after_create} / {cfs_final} | unchanged | {} |",
        ok(cfs_after_create == cfs_final)
    );
    println!(
        "| peak RSS before reopen (VmHWM) | {:.0} MiB | | |",
        mib(hwm_before_reopen)
    );
    println!(
        "| peak RSS (VmHWM) | {:.0} MiB | < 2048 MiB | {} |",
        mib(hwm),
        ok(mib(hwm) < 2048.0)
    );
}
