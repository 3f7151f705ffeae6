//! `ckpt-tool bench`: a load generator for whole-system runs.
//!
//! N clients, each on its own connection, own one section `c<i>` of one
//! checkpoint and overwrite it in a closed loop (one write in flight per
//! client). Every value starts with a u64 LE counter that increases by one
//! per acknowledged write, starting after the value already stored, and the
//! rest of its bytes derive from the checkpoint, section, counter and size
//! ([`crate::record::fill_value`]), so the record of acknowledged writes
//! (`--record`) can later be checked byte for byte against the server
//! (`check-acked`) even across reruns.
//!
//! The bench is a guest on the server: each run writes checkpoints of its
//! own, `bench-<run>` unless `--checkpoint` names one, and removes them at
//! the end unless `--keep` or `--record` (whose file `check-acked` compares
//! with them later). A checkpoint it creates holds an empty section
//! [`MARKER_SECTION`] from its creation on, and a run writes into an
//! existing checkpoint only when that marker is there: a user's checkpoint
//! is refused, whatever its shape.
//!
//! Phases: set up the checkpoint (create and mark it, or check that the
//! existing one is a bench's and fits), set up every client (connect, open,
//! find or create its section), then run the timed loop, then remove what
//! the run created. On a terminal a status line shows the last second's
//! ops/s, p99 and errors while it runs. A client stops at the deadline, on Ctrl-C, or on
//! its first error other than `TRY_AGAIN` (retried after
//! [`TRY_AGAIN_PAUSE_MS`]); the summary covers what was acknowledged.
//! Latency is measured around each call only (the record write is outside
//! it).
//!
//! `--op open` measures the control path instead: each client creates a
//! checkpoint of its own, closes it and deletes it, in a closed loop; an op
//! is one creation, its latency the whole cycle's.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ckpt_client::{Checkpoint, Client, ClientError, ClientOptions};
use ckpt_proto::{
    CheckpointName, CreationAttributes, CreationFlags, ErrorCode, OpenFlags, ReadElement,
    SectionCreationAttributes, SectionId, TIME_END,
};
use serde::Serialize;
use tokio::sync::watch;

use crate::cli::{BenchArgs, BenchOp, BenchTarget};
use crate::histogram::{Histogram, LiveHistogram};
use crate::progress::StatusLine;
use crate::record::{decode_counter, fill_value, valid_field, Recorder};

/// Pause before retrying a write the server answered with `TRY_AGAIN`.
pub const TRY_AGAIN_PAUSE_MS: u64 = 1;
/// `--target etcd`: pause between reconnection attempts.
pub const RECONNECT_PAUSE_MS: u64 = 100;
/// `--reconnect-s` when --addr lists several nodes and the flag is absent.
pub const RECONNECT_S_DEFAULT_CLUSTER: f64 = 10.0;
/// Longest section id the bench's checkpoint allows (`c<i>` needs 5).
const SECTION_ID_BYTES_MAX: u64 = 64;
/// The empty section that marks a checkpoint as created by the bench.
pub const MARKER_SECTION: &str = "ckpt-tool-bench";
/// How often the live status line is redrawn, ms.
pub const STATUS_INTERVAL_MS: u64 = 1000;

/// What a bench run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BenchReport {
    /// The checkpoint written (`<name>-0..<name>-<K-1>` with --checkpoints K).
    pub checkpoint: String,
    /// How many checkpoints the clients were spread over.
    pub checkpoints: u32,
    /// `ckpt` or `etcd`.
    pub target: String,
    /// Clients asked for.
    pub clients: u32,
    /// Clients that got through setup and ran.
    pub clients_running: u32,
    /// Planned duration, s.
    pub duration_s: f64,
    /// Measured duration of the write phase, s.
    pub elapsed_s: f64,
    /// Bytes per value.
    pub value_size: u64,
    /// `--mode`.
    pub mode: String,
    /// `--all-safe`.
    pub all_safe: bool,
    /// What the clients did: `write`, `read`, `mix R:W`, `open`.
    pub op: String,
    /// Acknowledged operations (reads and writes; creations for `open`).
    pub ops: u64,
    /// Acknowledged operations per second of the timed phase.
    pub ops_per_s: f64,
    /// Of `ops`, the reads (each checked against the last write).
    pub reads: u64,
    /// Of `ops`, the writes.
    pub writes: u64,
    /// 99th percentile of the reads alone, µs (when there were reads).
    pub read_p99_us: Option<f64>,
    /// 99th percentile of the writes alone, µs (when the run mixed them).
    pub write_p99_us: Option<f64>,
    /// CPU time (user + system) of the `--server-pid` processes during
    /// the timed phase, s.
    pub server_cpu_s: Option<f64>,
    /// `server_cpu_s` per acknowledged operation, µs.
    pub server_cpu_us_per_op: Option<f64>,
    /// With `--server-metrics`: the server's hops during the timed phase,
    /// in the order a request passes them.
    pub server_stages: Vec<StageMean>,
    /// Writes answered `TRY_AGAIN` and retried.
    pub retries: u64,
    /// Failed attempts by error name (`CL_ERR_TRY_AGAIN`, ...; for etcd
    /// `HTTP_<status>` or the connection failure), retried ones included.
    pub errors: BTreeMap<String, u64>,
    /// Times a client reconnected after losing its connection.
    pub reconnects: u64,
    /// Latency quantiles of acknowledged operations, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
    /// Slowest acknowledged write, µs.
    pub max_us: f64,
    /// Whether any client stopped before the deadline (error or Ctrl-C).
    pub stopped_early: bool,
    /// Why clients stopped early: `c<i>: CL_ERR_...: message`.
    pub client_errors: Vec<String>,
    /// The record file, if any.
    pub record: Option<String>,
    /// Checkpoints this run created and removed at its end.
    pub removed: Vec<String>,
    /// Checkpoints the run wrote that are still on the server: created
    /// with --keep or --record, or kept by an earlier run.
    pub kept: Vec<String>,
}

impl BenchReport {
    /// The human summary.
    pub fn text(&self) -> String {
        let errors = if self.errors.is_empty() {
            "none".to_string()
        } else {
            let errors: Vec<String> = self
                .errors
                .iter()
                .map(|(name, count)| format!("{name} {count}"))
                .collect();
            errors.join(", ")
        };
        let done = match self.op.as_str() {
            "write" => format!("acknowledged {} writes", self.ops),
            "read" => format!("read back {} values", self.ops),
            "open" => format!("created {} checkpoints", self.ops),
            "fill" => format!(
                "created {} checkpoints ({} sections, p99 {:.1} us each)",
                self.ops,
                self.writes,
                self.write_p99_us.unwrap_or(0.0)
            ),
            _ => format!(
                "completed {} ops ({} reads, {} writes)",
                self.ops, self.reads, self.writes
            ),
        };
        let mut split = String::new();
        if let (Some(read), Some(write)) = (self.read_p99_us, self.write_p99_us) {
            split = format!("  (reads p99 {read:.1}, writes p99 {write:.1})");
        }
        let mut cpu = match (self.server_cpu_s, self.server_cpu_us_per_op) {
            (Some(total), Some(per_op)) => {
                format!("server CPU: {total:.2} s, {per_op:.1} us per op\n")
            }
            _ => String::new(),
        };
        if !self.server_stages.is_empty() {
            let hops: Vec<String> = self
                .server_stages
                .iter()
                .map(|s| format!("{} {:.1}", s.stage, s.mean_us))
                .collect();
            cpu.push_str(&format!(
                "server hops, mean us per request: {}\n",
                hops.join("  ")
            ));
        }
        format!(
            "bench: {} clients ({} ran), {:.1} s, {}-byte values, mode {}{}, {} {}{}\n\
             {done} in {:.2} s: {:.1} ops/s ({} retried after TRY_AGAIN)\n\
             latency us: p50 {:.1}  p99 {:.1}  p999 {:.1}  max {:.1}{split}\n\
             {cpu}errors: {errors}; {} reconnects\n{}",
            self.clients,
            self.clients_running,
            self.duration_s,
            self.value_size,
            self.mode,
            if self.all_safe { " + all-safe" } else { "" },
            if self.target == "etcd" {
                "etcd keys"
            } else {
                "checkpoint"
            },
            self.checkpoint,
            if self.checkpoints > 1 {
                format!(" ({} checkpoints)", self.checkpoints)
            } else {
                String::new()
            },
            self.elapsed_s,
            self.ops_per_s,
            self.retries,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            self.reconnects,
            self.cleanup_text(),
        )
    }

    /// What was removed and what is left, one line each (none for etcd).
    fn cleanup_text(&self) -> String {
        let mut text = String::new();
        if !self.removed.is_empty() {
            text.push_str(&format!("removed: {}\n", self.removed.join(" ")));
        }
        if !self.kept.is_empty() {
            text.push_str(&format!("kept: {}\n", self.kept.join(" ")));
        }
        text
    }
}

/// The checkpoint name of a run: `--checkpoint`, or `bench-<s>-<pid>`
/// (the start in seconds since the epoch and the process id), which no
/// earlier run used.
pub fn run_name(args: &BenchArgs) -> CheckpointName {
    if let Some(name) = &args.checkpoint {
        return name.clone();
    }
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let pid = std::process::id();
    CheckpointName::new(format!("bench-{seconds}-{pid}"))
        .unwrap_or_else(|_| unreachable!("a short ASCII name is valid"))
}

/// The checkpoint names of a run: `<base>` alone, or `<base>-0` ..
/// `<base>-<K-1>` for `--checkpoints K`.
///
/// # Errors
/// `INVALID_PARAMETER` when a suffixed name is too long.
pub fn checkpoint_names(
    base: &CheckpointName,
    checkpoints: u32,
) -> Result<Vec<CheckpointName>, ClientError> {
    if checkpoints == 1 {
        return Ok(vec![base.clone()]);
    }
    (0..checkpoints)
        .map(|j| {
            let mut name = base.as_bytes().to_vec();
            name.extend_from_slice(format!("-{j}").as_bytes());
            CheckpointName::new(name).map_err(|e| {
                ClientError::new(
                    ErrorCode::InvalidParameter,
                    format!("--checkpoint with --checkpoints: {}", e.detail),
                )
            })
        })
        .collect()
}

/// How many clients write checkpoint `j` of `k` (client i writes i % k).
pub fn clients_of(clients: u32, k: u32, j: u32) -> u32 {
    clients / k + u32::from(j < clients % k)
}

/// `--reconnect-s`, or its default for `addr` (0 for one address, a
/// cluster's default for a list).
pub fn reconnect_window(args: &BenchArgs, addr: &str) -> Duration {
    let seconds = args.reconnect_s.unwrap_or(if addr.contains(',') {
        RECONNECT_S_DEFAULT_CLUSTER
    } else {
        0.0
    });
    Duration::from_secs_f64(seconds)
}

/// The attributes the bench creates its checkpoint with.
pub fn bench_attributes(args: &BenchArgs) -> CreationAttributes {
    let mut creation_flags = args.mode.flag();
    if args.all_safe {
        creation_flags = creation_flags | CreationFlags::WR_ALL_SAFE;
    }
    // One section per client plus the (empty) marker: two at least, so
    // there is no default section.
    let writers = clients_of(args.clients, args.checkpoints, 0);
    let max_sections = writers.saturating_add(1);
    CreationAttributes {
        creation_flags,
        checkpoint_size: u64::from(writers).saturating_mul(args.value_size),
        retention_duration_ns: TIME_END,
        max_sections,
        max_section_size: args.value_size,
        max_section_id_size: SECTION_ID_BYTES_MAX,
    }
}

/// Why an existing checkpoint cannot host this bench, if it cannot.
pub fn unfit_reason(
    existing: &CreationAttributes,
    wanted: &CreationAttributes,
    clients: u32,
) -> Option<String> {
    let mode_bits = CreationFlags::WR_ALL_REPLICAS.0
        | CreationFlags::WR_ACTIVE_REPLICA.0
        | CreationFlags::WR_ACTIVE_REPLICA_WEAK.0
        | CreationFlags::WR_ALL_SAFE.0;
    if existing.creation_flags.0 & mode_bits != wanted.creation_flags.0 & mode_bits {
        return Some(format!(
            "it has creation flags 0x{:x}, the bench asks for 0x{:x}",
            existing.creation_flags.0, wanted.creation_flags.0
        ));
    }
    let sections = clients.saturating_add(1);
    if existing.max_sections < sections {
        return Some(format!(
            "maxSections is {}, {clients} clients and the marker need {sections}",
            existing.max_sections,
        ));
    }
    if existing.max_section_size < wanted.max_section_size {
        return Some(format!(
            "maxSectionSize is {}, values are {} bytes",
            existing.max_section_size, wanted.max_section_size
        ));
    }
    let needed = u64::from(clients).saturating_mul(wanted.max_section_size);
    if existing.checkpoint_size < needed {
        return Some(format!(
            "checkpointSize is {}, {clients} sections of {} bytes need {needed}",
            existing.checkpoint_size, wanted.max_section_size
        ));
    }
    if existing.max_section_id_size < 5 {
        return Some(format!(
            "maxSectionIdSize is {}, too short for section ids c<i>",
            existing.max_section_id_size
        ));
    }
    None
}

/// Whether `checkpoint` holds the bench's [`MARKER_SECTION`].
async fn has_marker(checkpoint: &Checkpoint) -> Result<bool, ClientError> {
    let marker = vec![ReadElement {
        section_id: SectionId::new(MARKER_SECTION.as_bytes()),
        offset: 0,
        size: None,
    }];
    match checkpoint.read(marker).await {
        Ok(_) => Ok(true),
        Err(error) if error.code == ErrorCode::NotExist => Ok(false),
        Err(error) => Err(error),
    }
}

/// Opens an existing checkpoint for the bench: only one a bench created
/// (it holds the marker) and that fits this run.
async fn reuse_bench_checkpoint(
    checkpoint: Checkpoint,
    name: &CheckpointName,
    wanted: &CreationAttributes,
    writers: u32,
) -> Result<Checkpoint, ClientError> {
    let refusal = match has_marker(&checkpoint).await {
        Err(error) => Some(error),
        Ok(false) => Some(ClientError::new(
            ErrorCode::AlreadyExist,
            format!(
                "checkpoint {name} exists and was not created by ckpt-tool bench (it has no {MARKER_SECTION} section): the bench writes only checkpoints of its own; leave out --checkpoint or name another"
            ),
        )),
        Ok(true) => match checkpoint.status().await {
            Err(error) => Some(error),
            Ok(status) => unfit_reason(&status.attributes, wanted, writers).map(|reason| {
                ClientError::new(
                    ErrorCode::AlreadyExist,
                    format!(
                        "checkpoint {name}, kept by an earlier bench, does not fit this one: {reason} (leave out --checkpoint, or ckpt-tool rm it)"
                    ),
                )
            }),
        },
    };
    match refusal {
        Some(error) => {
            let _ = checkpoint.close().await;
            Err(error)
        }
        None => Ok(checkpoint),
    }
}

/// Creates the bench checkpoint `name` and marks it, or opens an existing
/// one an earlier bench created and kept; the flag says whether this run
/// created it (and so removes it at the end).
async fn open_bench_checkpoint(
    client: &Client,
    args: &BenchArgs,
    name: &CheckpointName,
) -> Result<(Checkpoint, bool), ClientError> {
    let wanted = bench_attributes(args);
    let writers = clients_of(args.clients, args.checkpoints, 0);
    let read_write = OpenFlags::READ | OpenFlags::WRITE;
    // Opened without CREATE first: with CREATE, a user's checkpoint of the
    // same attributes would open as if the bench had made it.
    match client.open(name, None, read_write).await {
        Ok(checkpoint) => {
            return reuse_bench_checkpoint(checkpoint, name, &wanted, writers)
                .await
                .map(|checkpoint| (checkpoint, false))
        }
        Err(error) if error.code == ErrorCode::NotExist => {}
        Err(error) => return Err(error),
    }
    let checkpoint = client
        .open(name, Some(wanted.clone()), OpenFlags::CREATE | read_write)
        .await?;
    let marker = SectionCreationAttributes {
        section_id: Some(SectionId::new(MARKER_SECTION.as_bytes())),
        expiration_time: TIME_END,
    };
    match checkpoint.section_create(marker, Vec::new()).await {
        Ok(_) => Ok((checkpoint, true)),
        // Another bench created and marked it since the first open.
        Err(error) if error.code == ErrorCode::AlreadyExist => {
            reuse_bench_checkpoint(checkpoint, name, &wanted, writers)
                .await
                .map(|checkpoint| (checkpoint, false))
        }
        Err(error) => {
            let _ = checkpoint.close().await;
            let _ = client.delete(name).await;
            Err(error)
        }
    }
}

/// Counters every client adds to as it goes; the status line reads them
/// each second.
#[derive(Default)]
pub struct LiveStats {
    ops: AtomicU64,
    errors: AtomicU64,
    latency_ns: LiveHistogram,
}

impl LiveStats {
    fn acked(&self, latency_ns: u64) {
        self.ops.fetch_add(1, Ordering::Relaxed);
        self.latency_ns.record(latency_ns);
    }

    fn failed(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// The status line's text for one interval.
pub fn status_text(ops: u64, interval_s: f64, p99_ns: u64, total_ops: u64, errors: u64) -> String {
    format!(
        "{:.0} ops/s  p99 {:.1} ms  errors {errors}  acknowledged {total_ops}",
        per_second(ops, interval_s),
        p99_ns as f64 / 1e6,
    )
}

/// Redraws `line` every [`STATUS_INTERVAL_MS`] from `stats` until aborted.
fn spawn_status(stats: Arc<LiveStats>, line: Arc<StatusLine>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let interval = Duration::from_millis(STATUS_INTERVAL_MS);
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        let (mut last_ops, mut last_at) = (0, Instant::now());
        loop {
            tick.tick().await;
            let ops = stats.ops.load(Ordering::Relaxed);
            let (p99_ns, _) = stats.latency_ns.take_quantile(0.99);
            let interval_s = last_at.elapsed().as_secs_f64();
            line.set(status_text(
                ops - last_ops,
                interval_s,
                p99_ns,
                ops,
                stats.errors.load(Ordering::Relaxed),
            ));
            (last_ops, last_at) = (ops, Instant::now());
        }
    })
}

/// The live status of a run: counters, and the line drawn from them on a
/// terminal (none elsewhere: no counting either).
struct Live {
    stats: Option<Arc<LiveStats>>,
    line: Arc<StatusLine>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Live {
    fn start() -> Live {
        let line = Arc::new(StatusLine::new("bench"));
        if !line.is_drawn() {
            return Live {
                stats: None,
                line,
                task: None,
            };
        }
        let stats = Arc::new(LiveStats::default());
        let task = spawn_status(stats.clone(), line.clone());
        Live {
            stats: Some(stats),
            line,
            task: Some(task),
        }
    }

    fn finish(self) {
        if let Some(task) = self.task {
            task.abort();
        }
        self.line.finish();
    }
}

/// One client, ready to write.
struct Worker {
    /// Kept for its reconnection count.
    client: Client,
    checkpoint_text: Arc<str>,
    section_text: String,
    section: SectionId,
    checkpoint: Checkpoint,
    /// The next counter to write.
    counter: u64,
    /// The last value this client wrote and had acknowledged (empty until
    /// it wrote one): what its reads must return.
    value: Vec<u8>,
}

/// The counter after `stored`, or 1 for a section without one.
fn next_counter(stored: Option<&Vec<u8>>) -> Result<u64, ClientError> {
    match stored.and_then(|value| decode_counter(value)) {
        None => Ok(1),
        Some(value) => value.checked_add(1).ok_or_else(|| {
            ClientError::new(ErrorCode::OutOfRange, "the stored counter is u64::MAX")
        }),
    }
}

/// A client for the bench: it reconnects (to any node of `addr`) and
/// resends unanswered writes with their request ids for up to `window`.
async fn connect_client(addr: &str, window: Duration) -> Result<Client, ClientError> {
    crate::cluster::split_addrs(addr)?;
    match Client::connect_with_options(addr, ClientOptions::new().reconnect_timeout(window)).await {
        Ok(client) => Ok(client),
        Err(error) => Err(crate::explain_connect_error(addr, error).await),
    }
}

/// The node list for client `index`: `addr` rotated to start at node
/// `index % count`, so the clients' connections spread over the nodes
/// (each still fails over to all of them).
pub fn rotated_addrs(addr: &str, index: u32) -> String {
    let mut nodes: Vec<&str> = addr.split(',').map(str::trim).collect();
    if nodes.len() > 1 {
        let first = index as usize % nodes.len();
        nodes.rotate_left(first);
    }
    nodes.join(",")
}

async fn set_up_worker(
    addr: &str,
    window: Duration,
    name: &CheckpointName,
    index: u32,
) -> Result<Worker, ClientError> {
    let client = connect_client(&rotated_addrs(addr, index), window).await?;
    let checkpoint = client
        .open(name, None, OpenFlags::READ | OpenFlags::WRITE)
        .await?;
    let section_text = format!("c{index}");
    let section = SectionId::new(section_text.as_bytes());
    let read = || {
        checkpoint.read(vec![ReadElement {
            section_id: section.clone(),
            offset: 0,
            size: Some(8),
        }])
    };
    let counter = match read().await {
        Ok(data) => next_counter(data.first())?,
        Err(error) if error.code == ErrorCode::NotExist => {
            let attributes = SectionCreationAttributes {
                section_id: Some(section.clone()),
                expiration_time: TIME_END,
            };
            match checkpoint.section_create(attributes, Vec::new()).await {
                Ok(_) => 1,
                // Created meanwhile by another run: read what it holds.
                Err(error) if error.code == ErrorCode::AlreadyExist => {
                    next_counter(read().await?.first())?
                }
                Err(error) => return Err(error),
            }
        }
        Err(error) => return Err(error),
    };
    Ok(Worker {
        client,
        checkpoint_text: String::from_utf8_lossy(name.as_bytes()).into(),
        section_text,
        section,
        checkpoint,
        counter,
        value: Vec::new(),
    })
}

/// What one client did in the write phase.
#[derive(Default)]
struct WorkerOutcome {
    latency_ns: Histogram,
    read_latency_ns: Histogram,
    write_latency_ns: Histogram,
    ops: u64,
    reads: u64,
    retries: u64,
    reconnects: u64,
    /// Failed attempts by error name.
    errors: BTreeMap<String, u64>,
    error: Option<ClientError>,
    /// A record write failed: the record is incomplete.
    record_failed: bool,
}

/// What the loop does after a failed write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterError {
    /// Pause and send the same value again (the server refused it).
    Retry,
    /// Stop this client.
    Stop,
}

/// How a write error is handled. A lost connection was already retried by
/// the client for `--reconnect-s` (same request id, so applied at most
/// once); what reaches the bench is final. The same counter is always
/// rewritten after an error, so at most one value beyond the last
/// acknowledged one can be stored: the invariant `check-acked` relies on.
pub fn after_error(error: &ClientError) -> AfterError {
    match error.code {
        ErrorCode::TryAgain => AfterError::Retry,
        _ => AfterError::Stop,
    }
}

/// Writes the worker's section once with its next counter (untimed), so
/// that its reads have a value to read back.
async fn prime(
    worker: &mut Worker,
    value_size: usize,
    recorder: Option<&Recorder>,
) -> Result<(), ClientError> {
    let mut value = vec![0u8; value_size];
    fill_value(
        &worker.checkpoint_text,
        &worker.section_text,
        worker.counter,
        &mut value,
    );
    worker
        .checkpoint
        .section_overwrite(&worker.section, value.clone())
        .await?;
    if let Some(recorder) = recorder {
        recorder.append(
            &worker.checkpoint_text,
            &worker.section_text,
            worker.counter,
            value.len() as u64,
        )?;
    }
    worker.counter = worker
        .counter
        .checked_add(1)
        .ok_or_else(|| ClientError::new(ErrorCode::OutOfRange, "the counter reached u64::MAX"))?;
    worker.value = value;
    Ok(())
}

/// Whether op `index` of a client's loop is a read under `mix` (R reads,
/// then W writes, over and over).
pub fn is_read(mix: (u32, u32), index: u64) -> bool {
    let period = u64::from(mix.0) + u64::from(mix.1);
    index % period < u64::from(mix.0)
}

/// One client's timed loop: reads and writes of its own section per `mix`.
async fn op_loop(
    mut worker: Worker,
    mix: (u32, u32),
    value_size: usize,
    deadline: Instant,
    stop: watch::Sender<bool>,
    recorder: Option<Arc<Recorder>>,
    live: Option<Arc<LiveStats>>,
) -> WorkerOutcome {
    let mut outcome = WorkerOutcome::default();
    // Every byte derives from the checkpoint, section, counter and size, so
    // `check-acked` can tell a wrong body from the right one. `worker.value`
    // is the last acknowledged write, what a read must return.
    let mut value = vec![0u8; value_size];
    let whole = vec![ReadElement {
        section_id: worker.section.clone(),
        offset: 0,
        size: None,
    }];
    let stopped = stop.subscribe();
    let mut index = 0u64;
    while Instant::now() < deadline && !*stopped.borrow() {
        let reading = is_read(mix, index);
        let started = Instant::now();
        let result = if reading {
            match worker.checkpoint.read(whole.clone()).await {
                Ok(data) if data.len() == 1 && data[0] == worker.value => Ok(()),
                Ok(data) => {
                    outcome.error = Some(ClientError::new(
                        ErrorCode::FailedOperation,
                        format!(
                            "a read of section {} returned {} bytes that are not its last acknowledged write ({} bytes, counter {})",
                            worker.section_text,
                            data.first().map_or(0, Vec::len),
                            worker.value.len(),
                            worker.counter.saturating_sub(1),
                        ),
                    ));
                    raise_stop(&stop);
                    break;
                }
                Err(error) => Err(error),
            }
        } else {
            fill_value(
                &worker.checkpoint_text,
                &worker.section_text,
                worker.counter,
                &mut value,
            );
            worker
                .checkpoint
                .section_overwrite(&worker.section, value.clone())
                .await
        };
        let latency_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let error = match result {
            Ok(()) => {
                outcome.latency_ns.record(latency_ns);
                outcome.ops += 1;
                index += 1;
                if let Some(live) = &live {
                    live.acked(latency_ns);
                }
                if reading {
                    outcome.reads += 1;
                    outcome.read_latency_ns.record(latency_ns);
                    continue;
                }
                outcome.write_latency_ns.record(latency_ns);
                // Recorded only now that the server acknowledged it: a
                // failed write, or one whose outcome is unknown, never is.
                if let Some(recorder) = &recorder {
                    let appended = recorder.append(
                        &worker.checkpoint_text,
                        &worker.section_text,
                        worker.counter,
                        value.len() as u64,
                    );
                    if let Err(error) = appended {
                        outcome.error = Some(error);
                        outcome.record_failed = true;
                        raise_stop(&stop);
                        break;
                    }
                }
                std::mem::swap(&mut worker.value, &mut value);
                let Some(next) = worker.counter.checked_add(1) else {
                    outcome.error = Some(ClientError::new(
                        ErrorCode::OutOfRange,
                        "the counter reached u64::MAX",
                    ));
                    break;
                };
                worker.counter = next;
                if value.len() != value_size {
                    value = vec![0u8; value_size];
                }
                continue;
            }
            Err(error) => error,
        };
        *outcome
            .errors
            .entry(error.code.cl_name().to_string())
            .or_default() += 1;
        if let Some(live) = &live {
            live.failed();
        }
        match after_error(&error) {
            AfterError::Retry => {
                outcome.retries += 1;
                tokio::time::sleep(Duration::from_millis(TRY_AGAIN_PAUSE_MS)).await;
            }
            AfterError::Stop => {
                outcome.error = Some(error);
                break;
            }
        }
    }
    outcome.reconnects = worker.client.reconnects();
    if outcome
        .error
        .as_ref()
        .is_none_or(|e| !e.is_connection_lost())
    {
        let _ = worker.checkpoint.close().await;
    }
    outcome
}

/// Raises the run's stop flag. `watch::Sender::send` drops the value when
/// no receiver exists yet — a Ctrl-C after the clients' sections were made
/// but before their loops subscribed was lost that way, and the run went on
/// for its whole `--duration-s` — so the value is always stored.
fn raise_stop(stop: &watch::Sender<bool>) {
    stop.send_replace(true);
}

/// Waits for Ctrl-C and raises `stop` (a second Ctrl-C exits at once).
///
/// The SIGINT handler is installed here, before the caller goes on, not at
/// the spawned task's first poll: a Ctrl-C between the two would otherwise
/// be lost (or kill the run without removing its checkpoints). CI saw it
/// lost: the run went on for its whole `--duration-s`.
fn spawn_interrupt(stop: &watch::Sender<bool>) -> tokio::task::JoinHandle<()> {
    let stop = stop.clone();
    let interrupts = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
    tokio::spawn(async move {
        let Ok(mut interrupts) = interrupts else {
            // No signal driver: Ctrl-C keeps its default action.
            return;
        };
        if interrupts.recv().await.is_some() {
            eprintln!("interrupted: stopping the clients (Ctrl-C again to quit at once, leaving the bench's checkpoints)");
            raise_stop(&stop);
            // Every acknowledged write is already in the record file.
            if interrupts.recv().await.is_some() {
                std::process::exit(130);
            }
        }
    })
}

/// Runs the bench and reports. Clients that stop on errors (the server went
/// away) do not make it fail: the report covers what was acknowledged.
///
/// # Errors
/// Setup failures (no report); "no write was acknowledged" and a failed
/// record write (with the report of what was done).
pub async fn run(
    addr: &str,
    args: &BenchArgs,
) -> Result<BenchReport, (Option<BenchReport>, ClientError)> {
    // A --server-pid that names no process is refused before anything runs.
    CpuMeter::start(args).map_err(|e| (None, e))?;
    if args.target == BenchTarget::Etcd {
        return run_etcd(args).await;
    }
    if args.op == BenchOp::Open {
        return run_opens(addr, args).await;
    }
    if args.op == BenchOp::Fill {
        return run_fill(addr, args).await;
    }
    let fail = |error: ClientError| (None, error);
    if args.checkpoints > args.clients {
        return Err(fail(ClientError::new(
            ErrorCode::InvalidParameter,
            format!(
                "--checkpoints {} is more than --clients {}: some checkpoints would get no writer",
                args.checkpoints, args.clients
            ),
        )));
    }
    let base = run_name(args);
    let names = checkpoint_names(&base, args.checkpoints).map_err(fail)?;
    let recorder = match &args.record {
        Some(path) => {
            if !valid_field(&String::from_utf8_lossy(base.as_bytes())) {
                return Err(fail(ClientError::new(
                    ErrorCode::InvalidParameter,
                    "with --record the checkpoint name must not contain whitespace",
                )));
            }
            Some(Arc::new(Recorder::open(path).map_err(fail)?))
        }
        None => None,
    };
    let value_size = usize::try_from(args.value_size).map_err(|_| {
        fail(ClientError::new(
            ErrorCode::InvalidParameter,
            "--value-size does not fit in memory",
        ))
    })?;
    let reconnect_window = reconnect_window(args, addr);

    // From here on Ctrl-C stops the run and the checkpoints made so far
    // are still removed.
    let (stop, _) = watch::channel(false);
    let interrupt = spawn_interrupt(&stop);

    // Checkpoint k is created through node k of the list (rotated), and a
    // cluster makes its creator the active replica: the checkpoints' active
    // replicas, and so the load, spread over every node.
    let mut setups = Vec::new();
    let mut setup_error = None;
    for (k, name) in names.iter().enumerate() {
        if *stop.borrow() {
            setup_error = Some(ClientError::new(
                ErrorCode::FailedOperation,
                "interrupted while setting up",
            ));
            break;
        }
        let index = u32::try_from(k).unwrap_or(u32::MAX);
        let client = match connect_client(&rotated_addrs(addr, index), reconnect_window).await {
            Ok(client) => client,
            Err(error) => {
                setup_error = Some(error);
                break;
            }
        };
        match open_bench_checkpoint(&client, args, name).await {
            Ok((checkpoint, created)) => setups.push((name, client, checkpoint, created)),
            Err(error) => {
                setup_error = Some(error);
                break;
            }
        }
    }
    let mut result = match setup_error {
        Some(error) => Err((None, error)),
        None => write_phase(addr, args, &base, &names, value_size, recorder, &stop).await,
    };

    // The guest leaves: what this run created goes, unless it is wanted
    // later (--keep, or --record for check-acked).
    let keep = args.keep || args.record.is_some();
    let (mut removed, mut kept) = (Vec::new(), Vec::new());
    for (name, client, checkpoint, created) in setups {
        let _ = checkpoint.close().await;
        let text = name.to_string();
        if !created || keep {
            kept.push(text);
            continue;
        }
        match client.delete(name).await {
            Ok(()) => removed.push(text),
            Err(error) => {
                eprintln!("warning: could not remove checkpoint {text} ({error}); remove it with ckpt-tool rm {text}");
                kept.push(text);
            }
        }
    }
    let report = match &mut result {
        Ok(report) | Err((Some(report), _)) => Some(report),
        Err((None, _)) => None,
    };
    if let Some(report) = report {
        report.removed = removed;
        report.kept = kept;
    }
    interrupt.abort();
    result
}

/// The reads and writes of a client's loop: `--mix`, else `--op`.
pub fn loop_mix(args: &BenchArgs) -> (u32, u32) {
    match (args.mix, args.op) {
        (Some(mix), _) => mix,
        (None, BenchOp::Read) => (1, 0),
        (None, _) => (0, 1),
    }
}

/// The report's name for what the clients did.
pub fn op_name(args: &BenchArgs) -> String {
    match (args.mix, args.op) {
        (Some((0, _)), _) => "write".to_string(),
        (Some((_, 0)), _) => "read".to_string(),
        (Some((r, w)), _) => format!("mix {r}:{w}"),
        (None, BenchOp::Read) => "read".to_string(),
        (None, BenchOp::Write) => "write".to_string(),
        (None, BenchOp::Open) => "open".to_string(),
        (None, BenchOp::Fill) => "fill".to_string(),
    }
}

/// Sets up the clients of a run on its checkpoints `names`, runs the timed
/// loop and reports.
async fn write_phase(
    addr: &str,
    args: &BenchArgs,
    base: &CheckpointName,
    names: &[CheckpointName],
    value_size: usize,
    recorder: Option<Arc<Recorder>>,
    stop: &watch::Sender<bool>,
) -> Result<BenchReport, (Option<BenchReport>, ClientError)> {
    let fail = |error: ClientError| (None, error);
    let reconnect_window = reconnect_window(args, addr);
    let setups = (0..args.clients).map(|index| {
        let name = &names[(index % args.checkpoints) as usize];
        set_up_worker(addr, reconnect_window, name, index)
    });
    let setups = futures::future::join_all(setups).await;
    let mut workers = Vec::new();
    let mut client_errors = Vec::new();
    for (index, setup) in setups.into_iter().enumerate() {
        match setup {
            Ok(worker) => workers.push(worker),
            Err(error) => client_errors.push(format!("c{index}: setup: {error}")),
        }
    }
    if workers.is_empty() {
        let first = client_errors.first().cloned().unwrap_or_default();
        return Err(fail(ClientError::new(
            ErrorCode::FailedOperation,
            format!("no client could start ({first})"),
        )));
    }
    let mix = loop_mix(args);
    if mix.0 > 0 {
        // Something to read back: one write per client before the clock.
        let primed = futures::future::join_all(
            workers
                .iter_mut()
                .map(|worker| prime(worker, value_size, recorder.as_deref())),
        )
        .await;
        let mut kept = Vec::new();
        for (worker, primed) in workers.into_iter().zip(primed) {
            match primed {
                Ok(()) => kept.push(worker),
                Err(error) => {
                    client_errors.push(format!("{}: first write: {error}", worker.section_text))
                }
            }
        }
        workers = kept;
        if workers.is_empty() {
            let first = client_errors.first().cloned().unwrap_or_default();
            return Err(fail(ClientError::new(
                ErrorCode::FailedOperation,
                format!("no client could write its first value ({first})"),
            )));
        }
    }
    let clients_running = workers.len() as u32;

    let live = Live::start();

    let cpu = CpuMeter::start(args).map_err(fail)?;
    let stages = StageMeter::start(args).await.map_err(fail)?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.duration_s);
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|worker| {
            let section = worker.section_text.clone();
            let task = tokio::spawn(op_loop(
                worker,
                mix,
                value_size,
                deadline,
                stop.clone(),
                recorder.clone(),
                live.stats.clone(),
            ));
            (section, task)
        })
        .collect();
    let mut latency_ns = Histogram::default();
    let mut read_latency_ns = Histogram::default();
    let mut write_latency_ns = Histogram::default();
    let (mut ops, mut reads, mut retries, mut reconnects) = (0, 0, 0, 0);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut record_error = None;
    for (section, task) in tasks {
        let outcome = match task.await {
            Ok(outcome) => outcome,
            Err(error) => {
                client_errors.push(format!("{section}: the client task failed: {error}"));
                continue;
            }
        };
        latency_ns.merge(&outcome.latency_ns);
        read_latency_ns.merge(&outcome.read_latency_ns);
        write_latency_ns.merge(&outcome.write_latency_ns);
        ops += outcome.ops;
        reads += outcome.reads;
        retries += outcome.retries;
        reconnects += outcome.reconnects;
        for (name, count) in outcome.errors {
            *errors.entry(name).or_default() += count;
        }
        if let Some(error) = outcome.error {
            client_errors.push(format!("{section}: {error}"));
            if outcome.record_failed && record_error.is_none() {
                record_error = Some(error);
            }
        }
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    live.finish();
    let interrupted = *stop.borrow();

    let checkpoint_text = base.to_string();
    let report = BenchReport {
        checkpoint: if args.checkpoints > 1 {
            format!(
                "{checkpoint_text}-0..{checkpoint_text}-{}",
                args.checkpoints - 1
            )
        } else {
            checkpoint_text
        },
        checkpoints: args.checkpoints,
        target: "ckpt".to_string(),
        clients: args.clients,
        clients_running,
        duration_s: args.duration_s,
        elapsed_s,
        value_size: args.value_size,
        mode: args.mode.name().to_string(),
        all_safe: args.all_safe,
        op: op_name(args),
        ops,
        ops_per_s: per_second(ops, elapsed_s),
        reads,
        writes: ops - reads,
        read_p99_us: (reads > 0).then(|| us(read_latency_ns.quantile(0.99))),
        write_p99_us: (reads > 0 && reads < ops).then(|| us(write_latency_ns.quantile(0.99))),
        retries,
        errors,
        reconnects,
        p50_us: us(latency_ns.quantile(0.5)),
        p99_us: us(latency_ns.quantile(0.99)),
        p999_us: us(latency_ns.quantile(0.999)),
        max_us: us(latency_ns.max()),
        stopped_early: interrupted || !client_errors.is_empty(),
        client_errors,
        record: args.record.as_ref().map(|path| path.display().to_string()),
        ..BenchReport::default()
    };
    let mut report = report;
    add_cpu(&mut report, cpu.as_ref());
    if let Some(stages) = &stages {
        report.server_stages = stages.finish().await;
    }
    if let Some(error) = record_error {
        return Err((Some(report), error));
    }
    if let Some(error) = nothing_done(&report, interrupted, "no operation was acknowledged") {
        return Err((Some(report), error));
    }
    Ok(report)
}

/// The error of a run that did nothing (`ops` 0): its clients failed, or
/// it ran out of time without an answer. `None` when it did something, or
/// when Ctrl-C stopped it before any client finished an operation and
/// none failed: it stopped as asked, and the report says so
/// (`stopped_early`, no operations).
fn nothing_done(report: &BenchReport, interrupted: bool, what: &str) -> Option<ClientError> {
    if report.ops > 0 || (interrupted && report.client_errors.is_empty()) {
        return None;
    }
    let first = report.client_errors.first().map_or("none", String::as_str);
    Some(ClientError::new(
        ErrorCode::FailedOperation,
        format!("{what} (first error: {first})"),
    ))
}

/// Nanoseconds as microseconds.
pub fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// Clock ticks per second of `/proc/<pid>/stat`'s CPU times (USER_HZ,
/// 100 on Linux whatever the kernel's own tick rate).
const PROC_TICKS_PER_S: f64 = 100.0;

/// The CPU time (user + system) a process has used, from `/proc`, s.
///
/// # Errors
/// `NOT_EXIST` when the process is gone or `/proc` is unreadable.
pub fn process_cpu_s(pid: u32) -> Result<f64, ClientError> {
    let path = format!("/proc/{pid}/stat");
    let gone =
        |why: String| ClientError::new(ErrorCode::NotExist, format!("--server-pid {pid}: {why}"));
    let stat = std::fs::read_to_string(&path).map_err(|e| gone(format!("{path}: {e}")))?;
    // The command name (field 2) is in parentheses and may hold spaces:
    // count fields after its closing one. utime and stime are fields 14
    // and 15, so the 12th and 13th after it.
    let after = stat
        .rfind(')')
        .map(|at| &stat[at + 1..])
        .ok_or_else(|| gone(format!("{path} has no command name")))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64, ClientError> {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .ok_or_else(|| gone(format!("{path} has no CPU times")))
    };
    Ok(ticks(11)?.saturating_add(ticks(12)?) as f64 / PROC_TICKS_PER_S)
}

/// Server CPU over a timed phase: `--server-pid`'s processes, read at the
/// start and at the end.
pub struct CpuMeter {
    pids: Vec<u32>,
    start_s: f64,
}

impl CpuMeter {
    /// Reads the processes' CPU times now; `None` without `--server-pid`.
    ///
    /// # Errors
    /// A process that does not exist.
    pub fn start(args: &BenchArgs) -> Result<Option<CpuMeter>, ClientError> {
        let Some(pids) = &args.server_pid else {
            return Ok(None);
        };
        let mut start_s = 0.0;
        for &pid in &pids.0 {
            start_s += process_cpu_s(pid)?;
        }
        Ok(Some(CpuMeter {
            pids: pids.0.clone(),
            start_s,
        }))
    }

    /// `(CPU seconds since start, µs per op)`; a process gone meanwhile
    /// counts what it had used at the start only.
    pub fn finish(&self, ops: u64) -> (f64, Option<f64>) {
        let mut now_s = 0.0;
        for &pid in &self.pids {
            now_s += process_cpu_s(pid).unwrap_or(0.0);
        }
        let used = (now_s - self.start_s).max(0.0);
        (used, (ops > 0).then(|| used * 1e6 / ops as f64))
    }
}

/// One hop of the server's `ckpt_request_stage_seconds` over a timed phase.
#[derive(Debug, Clone, Serialize)]
pub struct StageMean {
    /// `spawn`, `queue`, `commit`, `sync_wait`, `fsync`, `answer`, `wake`, `out`.
    pub stage: String,
    /// Requests that passed it.
    pub count: u64,
    /// Their mean time in it, µs.
    pub mean_us: f64,
}

/// `(stage, count, sum in s)` of every `ckpt_request_stage_seconds`
/// stage in a `/metrics` text, in the order it lists them.
pub fn parse_stages(text: &str) -> Vec<(String, f64, f64)> {
    let mut stages: Vec<(String, f64, f64)> = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("ckpt_request_stage_seconds_") else {
            continue;
        };
        let (is_count, rest) = match (rest.strip_prefix("count{"), rest.strip_prefix("sum{")) {
            (Some(rest), _) => (true, rest),
            (_, Some(rest)) => (false, rest),
            _ => continue,
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let Some(stage) = labels
            .strip_prefix("stage=\"")
            .and_then(|l| l.strip_suffix('"'))
        else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let at = match stages.iter().position(|(name, _, _)| name == stage) {
            Some(at) => at,
            None => {
                stages.push((stage.to_string(), 0.0, 0.0));
                stages.len() - 1
            }
        };
        if is_count {
            stages[at].1 = value;
        } else {
            stages[at].2 = value;
        }
    }
    stages
}

/// The server's hop histograms over a timed phase (`--server-metrics`).
pub struct StageMeter {
    addr: String,
    start: Vec<(String, f64, f64)>,
}

impl StageMeter {
    /// Reads the server's stages now; `None` without `--server-metrics`.
    ///
    /// # Errors
    /// The address does not answer `/metrics`, or its answer has no stages.
    pub async fn start(args: &BenchArgs) -> Result<Option<StageMeter>, ClientError> {
        let Some(addr) = &args.server_metrics else {
            return Ok(None);
        };
        let start = Self::read(addr).await?;
        if start.is_empty() {
            return Err(ClientError::new(
                ErrorCode::InvalidParameter,
                format!(
                    "--server-metrics {addr}: its /metrics lists no ckpt_request_stage_seconds \
                     (is it a ckpt-server's --admin-listen address?)"
                ),
            ));
        }
        Ok(Some(StageMeter {
            addr: addr.clone(),
            start,
        }))
    }

    async fn read(addr: &str) -> Result<Vec<(String, f64, f64)>, ClientError> {
        let body = crate::cluster::http_get(addr, "/metrics").await?;
        Ok(parse_stages(&String::from_utf8_lossy(&body)))
    }

    /// Each stage's requests and mean since the start (stages no request
    /// passed are left out); empty if the server cannot be read now.
    pub async fn finish(&self) -> Vec<StageMean> {
        match Self::read(&self.addr).await {
            Ok(end) => stage_means(&self.start, &end),
            Err(_) => Vec::new(),
        }
    }
}

/// What passed each stage between two readings, and its mean.
pub fn stage_means(start: &[(String, f64, f64)], end: &[(String, f64, f64)]) -> Vec<StageMean> {
    end.iter()
        .filter_map(|(stage, count, sum)| {
            let (count0, sum0) = start
                .iter()
                .find(|(name, _, _)| name == stage)
                .map_or((0.0, 0.0), |(_, c, s)| (*c, *s));
            let count = (count - count0).max(0.0);
            (count >= 1.0).then(|| StageMean {
                stage: stage.clone(),
                count: count as u64,
                mean_us: (sum - sum0).max(0.0) * 1e6 / count,
            })
        })
        .collect()
}

/// Fills a report's CPU fields from `meter`.
fn add_cpu(report: &mut BenchReport, meter: Option<&CpuMeter>) {
    if let Some(meter) = meter {
        let (used, per_op) = meter.finish(report.ops);
        report.server_cpu_s = Some(used);
        report.server_cpu_us_per_op = per_op;
    }
}

/// Operations per second, 0 for an empty interval.
pub fn per_second(ops: u64, elapsed_s: f64) -> f64 {
    if elapsed_s > 0.0 {
        ops as f64 / elapsed_s
    } else {
        0.0
    }
}

/// Standard base64 (RFC 4648, with padding), for etcd's JSON gateway.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The JSON body of an etcd v3 gateway put.
pub fn etcd_put_body(key: &str, value: &[u8]) -> Vec<u8> {
    format!(
        "{{\"key\":\"{}\",\"value\":\"{}\"}}",
        base64(key.as_bytes()),
        base64(value)
    )
    .into_bytes()
}

/// How an etcd put went wrong, as the `errors` key: `HTTP_<status>`
/// (with the gRPC code when the body has one) or the connection failure.
fn etcd_error_name(response: &crate::cluster::HttpResponse) -> String {
    let code = serde_json::from_slice::<serde_json::Value>(&response.body)
        .ok()
        .and_then(|v| v.get("code").and_then(serde_json::Value::as_u64));
    match code {
        Some(code) => format!("HTTP_{} grpc {code}", response.status),
        None => format!("HTTP_{}", response.status),
    }
}

/// One etcd client: puts its own key in a closed loop.
async fn etcd_loop(
    endpoint: String,
    key: String,
    value_size: usize,
    deadline: Instant,
    reconnect_window: Duration,
    stopped: watch::Receiver<bool>,
    live: Option<Arc<LiveStats>>,
) -> WorkerOutcome {
    use crate::cluster::HttpConnection;
    let timeout = Duration::from_millis(crate::cluster::ADMIN_TIMEOUT_MS);
    let mut outcome = WorkerOutcome::default();
    let (prefix, section) = key.split_once('/').unwrap_or(("", key.as_str()));
    let mut value = vec![0u8; value_size];
    let mut counter: u64 = 1;
    let mut connection: Option<HttpConnection> = None;
    let mut lost_at: Option<Instant> = None;
    while Instant::now() < deadline && !*stopped.borrow() {
        let mut current = match connection.take() {
            Some(current) if current.is_open() => current,
            _ => match HttpConnection::connect(&endpoint, timeout).await {
                Ok(fresh) => {
                    if lost_at.take().is_some() {
                        outcome.reconnects += 1;
                    }
                    fresh
                }
                Err(error) => {
                    *outcome
                        .errors
                        .entry("connect failed".to_string())
                        .or_default() += 1;
                    let since = *lost_at.get_or_insert_with(Instant::now);
                    if since.elapsed() >= reconnect_window {
                        outcome.error = Some(error);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(RECONNECT_PAUSE_MS)).await;
                    continue;
                }
            },
        };
        fill_value(prefix, section, counter, &mut value);
        let body = etcd_put_body(&key, &value);
        let started = Instant::now();
        let result = current
            .request(
                "POST",
                "/v3/kv/put",
                Some(("application/json", &body)),
                timeout,
            )
            .await;
        let latency_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        match result {
            Ok(response) if response.status == 200 => {
                outcome.latency_ns.record(latency_ns);
                outcome.ops += 1;
                if let Some(live) = &live {
                    live.acked(latency_ns);
                }
                counter = counter.saturating_add(1);
                connection = Some(current);
            }
            Ok(response) => {
                *outcome
                    .errors
                    .entry(etcd_error_name(&response))
                    .or_default() += 1;
                if let Some(live) = &live {
                    live.failed();
                }
                outcome.retries += 1;
                connection = Some(current);
                tokio::time::sleep(Duration::from_millis(TRY_AGAIN_PAUSE_MS)).await;
            }
            Err(error) => {
                *outcome
                    .errors
                    .entry(error.code.cl_name().to_string())
                    .or_default() += 1;
                if reconnect_window.is_zero() {
                    outcome.error = Some(error);
                    break;
                }
                lost_at.get_or_insert_with(Instant::now);
            }
        }
    }
    outcome
}

/// `--target etcd`: the same closed loop of 1-value puts against an etcd
/// cluster's v3 JSON gateway, one keep-alive HTTP/1.1 connection per
/// client; client i puts key `<checkpoint>-<i % K>/c<i>` through endpoint
/// i % count.
async fn run_etcd(args: &BenchArgs) -> Result<BenchReport, (Option<BenchReport>, ClientError)> {
    let fail = |error: ClientError| (None, error);
    let invalid = |text: &str| fail(ClientError::new(ErrorCode::InvalidParameter, text));
    if args.record.is_some() {
        return Err(invalid("--record applies to --target ckpt only"));
    }
    if args.op != BenchOp::Write || loop_mix(args).0 > 0 {
        return Err(invalid(
            "--target etcd runs writes only (--op write, no reads in --mix)",
        ));
    }
    let endpoints = crate::cluster::split_addrs(
        args.endpoints
            .as_deref()
            .ok_or_else(|| invalid("--target etcd needs --endpoints LIST"))?,
    )
    .map_err(fail)?;
    let value_size = usize::try_from(args.value_size)
        .map_err(|_| invalid("--value-size does not fit in memory"))?;
    let reconnect_window = Duration::from_secs_f64(args.reconnect_s.unwrap_or(0.0));
    let prefix = run_name(args).to_string();
    let (stop, _) = watch::channel(false);
    let interrupt = spawn_interrupt(&stop);
    let live = Live::start();
    let cpu = CpuMeter::start(args).map_err(fail)?;
    let stages = StageMeter::start(args).await.map_err(fail)?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.duration_s);
    let tasks: Vec<_> = (0..args.clients)
        .map(|i| {
            let endpoint = endpoints[i as usize % endpoints.len()].clone();
            let key = format!("{prefix}-{}/c{i}", i % args.checkpoints);
            tokio::spawn(etcd_loop(
                endpoint,
                key,
                value_size,
                deadline,
                reconnect_window,
                stop.subscribe(),
                live.stats.clone(),
            ))
        })
        .collect();
    let mut latency_ns = Histogram::default();
    let (mut ops, mut retries, mut reconnects) = (0, 0, 0);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut client_errors = Vec::new();
    let mut running = 0;
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await {
            Ok(outcome) => {
                latency_ns.merge(&outcome.latency_ns);
                ops += outcome.ops;
                retries += outcome.retries;
                reconnects += outcome.reconnects;
                if outcome.ops > 0 {
                    running += 1;
                }
                for (name, count) in outcome.errors {
                    *errors.entry(name).or_default() += count;
                }
                if let Some(error) = outcome.error {
                    client_errors.push(format!("c{i}: {error}"));
                }
            }
            Err(error) => client_errors.push(format!("c{i}: the client task failed: {error}")),
        }
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    live.finish();
    interrupt.abort();
    let interrupted = *stop.borrow();
    let report = BenchReport {
        checkpoint: format!("{prefix}-*/c*"),
        checkpoints: args.checkpoints,
        target: "etcd".to_string(),
        clients: args.clients,
        clients_running: running,
        duration_s: args.duration_s,
        elapsed_s,
        value_size: args.value_size,
        mode: "etcd put".to_string(),
        op: "write".to_string(),
        ops,
        ops_per_s: per_second(ops, elapsed_s),
        writes: ops,
        retries,
        errors,
        reconnects,
        p50_us: us(latency_ns.quantile(0.5)),
        p99_us: us(latency_ns.quantile(0.99)),
        p999_us: us(latency_ns.quantile(0.999)),
        max_us: us(latency_ns.max()),
        stopped_early: interrupted || !client_errors.is_empty(),
        client_errors,
        ..BenchReport::default()
    };
    let mut report = report;
    add_cpu(&mut report, cpu.as_ref());
    if let Some(stages) = &stages {
        report.server_stages = stages.finish().await;
    }
    if let Some(error) = nothing_done(&report, interrupted, "no etcd put succeeded") {
        return Err((Some(report), error));
    }
    Ok(report)
}

/// What one `--op fill` client did.
struct FillOutcome {
    /// Checkpoints created, with all their sections.
    ops: u64,
    /// Creation (open with CREATE) latencies.
    latency_ns: Histogram,
    /// Section creation latencies.
    section_latency_ns: Histogram,
    error: Option<ClientError>,
}

/// One `--op fill` client: claims the next checkpoint number from `next`
/// until `total` (or the deadline), creates it, fills its sections and
/// closes it.
#[allow(clippy::too_many_arguments)]
async fn fill_loop(
    client: Client,
    prefix: String,
    attributes: CreationAttributes,
    sections: u32,
    value: Vec<u8>,
    next: Arc<AtomicU64>,
    total: u64,
    deadline: Instant,
    stop: watch::Receiver<bool>,
    live: Option<Arc<LiveStats>>,
) -> FillOutcome {
    let mut outcome = FillOutcome {
        ops: 0,
        latency_ns: Histogram::default(),
        section_latency_ns: Histogram::default(),
        error: None,
    };
    let flags = OpenFlags::READ | OpenFlags::WRITE | OpenFlags::CREATE;
    while Instant::now() < deadline && !*stop.borrow() {
        let n = next.fetch_add(1, Ordering::Relaxed);
        if n >= total {
            break;
        }
        let name = match CheckpointName::new(format!("{prefix}-{n}")) {
            Ok(name) => name,
            Err(error) => {
                outcome.error = Some(ClientError::new(error.code, error.detail));
                break;
            }
        };
        let started = Instant::now();
        let checkpoint = match client.open(&name, Some(attributes.clone()), flags).await {
            Ok(checkpoint) => checkpoint,
            Err(error) => {
                outcome.error = Some(error);
                break;
            }
        };
        let latency_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        outcome.latency_ns.record(latency_ns);
        if let Some(live) = &live {
            live.acked(latency_ns);
        }
        for s in 0..sections {
            let started = Instant::now();
            let created = checkpoint
                .section_create(
                    SectionCreationAttributes {
                        section_id: Some(SectionId::new(format!("s{s}"))),
                        expiration_time: TIME_END,
                    },
                    value.clone(),
                )
                .await;
            if let Err(error) = created {
                outcome.error = Some(error);
                break;
            }
            let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            outcome.section_latency_ns.record(ns);
        }
        let closed = checkpoint.close().await;
        if outcome.error.is_some() {
            break;
        }
        if let Err(error) = closed {
            outcome.error = Some(error);
            break;
        }
        outcome.ops += 1;
    }
    if outcome.error.is_some() {
        if let Some(live) = &live {
            live.failed();
        }
    }
    outcome
}

/// `--op fill`: checkpoints of `--sections` sections created by
/// `--clients` connections and kept, for scale tests.
async fn run_fill(
    addr: &str,
    args: &BenchArgs,
) -> Result<BenchReport, (Option<BenchReport>, ClientError)> {
    let fail = |error: ClientError| (None, error);
    let invalid = |text: &str| fail(ClientError::new(ErrorCode::InvalidParameter, text));
    if args.record.is_some() {
        return Err(invalid("--record applies to --op write only"));
    }
    if !args.keep {
        return Err(invalid(
            "--op fill leaves the checkpoints it creates, for a scale test to use: add --keep (and remove them afterwards with ckpt-tool rm)",
        ));
    }
    let value_size = usize::try_from(args.value_size)
        .map_err(|_| invalid("--value-size does not fit in memory"))?;
    let prefix = run_name(args).to_string();
    let mut attributes = bench_attributes(args);
    // s0..s<S-1>; two sections at least, so there is no default section.
    attributes.max_sections = args.sections.max(2);
    attributes.max_section_size = args.value_size;
    attributes.checkpoint_size = u64::from(args.sections).saturating_mul(args.value_size);
    let mut clients = Vec::new();
    for _ in 0..args.clients {
        clients.push(
            connect_client(addr, reconnect_window(args, addr))
                .await
                .map_err(fail)?,
        );
    }
    let (stop, _) = watch::channel(false);
    let interrupt = spawn_interrupt(&stop);
    let live = Live::start();
    let cpu = CpuMeter::start(args).map_err(fail)?;
    let stages = StageMeter::start(args).await.map_err(fail)?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.duration_s);
    let next = Arc::new(AtomicU64::new(0));
    let total = args.total.unwrap_or(u64::MAX);
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|client| {
            tokio::spawn(fill_loop(
                client,
                prefix.clone(),
                attributes.clone(),
                args.sections,
                vec![0x5a; value_size],
                next.clone(),
                total,
                deadline,
                stop.subscribe(),
                live.stats.clone(),
            ))
        })
        .collect();
    let mut latency_ns = Histogram::default();
    let mut section_latency_ns = Histogram::default();
    let mut ops = 0;
    let mut client_errors = Vec::new();
    for (index, task) in tasks.into_iter().enumerate() {
        match task.await {
            Ok(outcome) => {
                latency_ns.merge(&outcome.latency_ns);
                section_latency_ns.merge(&outcome.section_latency_ns);
                ops += outcome.ops;
                if let Some(error) = outcome.error {
                    client_errors.push(format!("c{index}: {error}"));
                }
            }
            Err(error) => client_errors.push(format!("c{index}: the client task failed: {error}")),
        }
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    live.finish();
    interrupt.abort();
    let interrupted = *stop.borrow();
    // Claimed numbers past the last created one may be missing (a client
    // that failed); the range names what exists at most.
    let claimed = next.load(Ordering::Relaxed).min(total);
    let mut report = BenchReport {
        checkpoint: format!("{prefix}-0..{prefix}-{}", claimed.saturating_sub(1)),
        checkpoints: u32::try_from(ops).unwrap_or(u32::MAX),
        target: "ckpt".to_string(),
        clients: args.clients,
        clients_running: args.clients,
        duration_s: args.duration_s,
        elapsed_s,
        value_size: args.value_size,
        mode: format!("{} (op fill)", args.mode.name()),
        all_safe: args.all_safe,
        op: "fill".to_string(),
        ops,
        ops_per_s: per_second(ops, elapsed_s),
        writes: ops.saturating_mul(u64::from(args.sections)),
        write_p99_us: Some(us(section_latency_ns.quantile(0.99))),
        p50_us: us(latency_ns.quantile(0.5)),
        p99_us: us(latency_ns.quantile(0.99)),
        p999_us: us(latency_ns.quantile(0.999)),
        max_us: us(latency_ns.max()),
        stopped_early: interrupted || !client_errors.is_empty(),
        client_errors,
        kept: vec![format!(
            "{prefix}-0..{prefix}-{}",
            claimed.saturating_sub(1)
        )],
        ..BenchReport::default()
    };
    add_cpu(&mut report, cpu.as_ref());
    if let Some(stages) = &stages {
        report.server_stages = stages.finish().await;
    }
    if let Some(error) = nothing_done(&report, interrupted, "no checkpoint was created") {
        return Err((Some(report), error));
    }
    Ok(report)
}

/// What one `--op open` client did.
struct OpenOutcome {
    ops: u64,
    latency_ns: Histogram,
    error: Option<ClientError>,
}

/// One `--op open` client: create, close, delete until the deadline.
async fn open_loop(
    client: Client,
    prefix: String,
    attributes: CreationAttributes,
    deadline: Instant,
    stop: watch::Receiver<bool>,
    live: Option<Arc<LiveStats>>,
) -> OpenOutcome {
    let mut outcome = OpenOutcome {
        ops: 0,
        latency_ns: Histogram::default(),
        error: None,
    };
    let flags = OpenFlags::READ | OpenFlags::WRITE | OpenFlags::CREATE;
    while Instant::now() < deadline && !*stop.borrow() {
        let name = match CheckpointName::new(format!("{prefix}-{}", outcome.ops)) {
            Ok(name) => name,
            Err(error) => {
                outcome.error = Some(ClientError::new(error.code, error.detail));
                break;
            }
        };
        let started = Instant::now();
        let cycle = async {
            let checkpoint = client.open(&name, Some(attributes.clone()), flags).await?;
            checkpoint.close().await?;
            client.delete(&name).await
        };
        if let Err(error) = cycle.await {
            if let Some(live) = &live {
                live.failed();
            }
            outcome.error = Some(error);
            break;
        }
        let latency_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        outcome.latency_ns.record(latency_ns);
        outcome.ops += 1;
        if let Some(live) = &live {
            live.acked(latency_ns);
        }
    }
    outcome
}

/// `--op open`: creations per second from `--clients` connections.
async fn run_opens(
    addr: &str,
    args: &BenchArgs,
) -> Result<BenchReport, (Option<BenchReport>, ClientError)> {
    let fail = |error: ClientError| (None, error);
    if args.record.is_some() {
        return Err(fail(ClientError::new(
            ErrorCode::InvalidParameter,
            "--record applies to --op write only",
        )));
    }
    let checkpoint_text = run_name(args).to_string();
    let attributes = bench_attributes(args);
    let mut clients = Vec::new();
    for _ in 0..args.clients {
        clients.push(
            connect_client(addr, reconnect_window(args, addr))
                .await
                .map_err(fail)?,
        );
    }
    let (stop, _) = watch::channel(false);
    let live = Live::start();
    let cpu = CpuMeter::start(args).map_err(|e| (None, e))?;
    let stages = StageMeter::start(args).await.map_err(|e| (None, e))?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.duration_s);
    let run_id = std::process::id();
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(index, client)| {
            tokio::spawn(open_loop(
                client,
                format!("{checkpoint_text}-o{run_id}-{index}"),
                attributes.clone(),
                deadline,
                stop.subscribe(),
                live.stats.clone(),
            ))
        })
        .collect();
    let mut latency_ns = Histogram::default();
    let mut ops = 0;
    let mut client_errors = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for (index, task) in tasks.into_iter().enumerate() {
        match task.await {
            Ok(outcome) => {
                latency_ns.merge(&outcome.latency_ns);
                ops += outcome.ops;
                if let Some(error) = outcome.error {
                    *errors.entry(error.code.cl_name().to_string()).or_default() += 1;
                    client_errors.push(format!("c{index}: {error}"));
                }
            }
            Err(error) => client_errors.push(format!("c{index}: the client task failed: {error}")),
        }
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    live.finish();
    let report = BenchReport {
        checkpoint: format!("{checkpoint_text}-o{run_id}-*"),
        checkpoints: 1,
        target: "ckpt".to_string(),
        clients: args.clients,
        clients_running: args.clients,
        duration_s: args.duration_s,
        elapsed_s,
        value_size: args.value_size,
        mode: format!("{} (op open)", args.mode.name()),
        all_safe: args.all_safe,
        ops,
        ops_per_s: per_second(ops, elapsed_s),
        op: "open".to_string(),
        writes: 0,
        errors,
        p50_us: us(latency_ns.quantile(0.5)),
        p99_us: us(latency_ns.quantile(0.99)),
        p999_us: us(latency_ns.quantile(0.999)),
        max_us: us(latency_ns.max()),
        stopped_early: !client_errors.is_empty(),
        client_errors,
        ..BenchReport::default()
    };
    let mut report = report;
    add_cpu(&mut report, cpu.as_ref());
    if let Some(stages) = &stages {
        report.server_stages = stages.finish().await;
    }
    if let Some(error) = nothing_done(&report, false, "no checkpoint was created") {
        return Err((Some(report), error));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// A run that did nothing is an error, except one the user stopped
    /// before any client finished an operation or failed.
    #[test]
    fn a_run_stopped_by_ctrl_c_before_its_first_answer_is_no_error() {
        let idle = BenchReport::default();
        assert!(nothing_done(&idle, true, "none done").is_none());
        let error = nothing_done(&idle, false, "none done").expect("not stopped: an error");
        assert!(
            error.message.contains("none done (first error: none)"),
            "{error}"
        );
        let failed = BenchReport {
            client_errors: vec!["c0: refused".to_string()],
            ..BenchReport::default()
        };
        let error = nothing_done(&failed, true, "none done").expect("a client failed");
        assert!(
            error.message.contains("first error: c0: refused"),
            "{error}"
        );
        let done = BenchReport {
            ops: 1,
            ..BenchReport::default()
        };
        assert!(nothing_done(&done, false, "none done").is_none());
    }

    #[test]
    fn a_stop_raised_before_any_client_subscribed_is_seen_by_them() {
        // Ctrl-C between the setup and the clients' loops: nobody listens
        // yet, and the clients that subscribe afterwards must still stop.
        let (stop, first) = watch::channel(false);
        drop(first);
        raise_stop(&stop);
        assert!(*stop.subscribe().borrow());
    }
    use crate::cli::{Cli, Command};

    fn args(extra: &[&str]) -> BenchArgs {
        let argv = ["ckpt-tool", "bench"]
            .into_iter()
            .chain(extra.iter().copied());
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Bench(args) => args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn attributes_fit_every_client() {
        let wanted = bench_attributes(&args(&[
            "--clients",
            "4",
            "--value-size",
            "100",
            "--all-safe",
        ]));
        // One section per client and the marker.
        assert_eq!(wanted.max_sections, 5);
        assert_eq!(wanted.max_section_size, 100);
        assert_eq!(wanted.checkpoint_size, 400);
        assert_eq!(
            wanted.creation_flags,
            CreationFlags::WR_ACTIVE_REPLICA | CreationFlags::WR_ALL_SAFE
        );
        wanted.validate().unwrap();
        // One client still gets a named section, not the default one.
        assert_eq!(bench_attributes(&args(&["--clients", "1"])).max_sections, 2);
    }

    #[test]
    fn existing_checkpoints_must_fit() {
        let wanted = bench_attributes(&args(&["--clients", "4", "--value-size", "100"]));
        assert_eq!(unfit_reason(&wanted, &wanted, 4), None);
        let mut bigger = wanted.clone();
        bigger.max_sections = 10;
        bigger.max_section_size = 1000;
        bigger.checkpoint_size = 10_000;
        assert_eq!(unfit_reason(&bigger, &wanted, 4), None);
        let mut few = wanted.clone();
        // Room for the clients but not the marker.
        few.max_sections = 4;
        assert!(unfit_reason(&few, &wanted, 4)
            .unwrap()
            .contains("maxSections"));
        let mut small = wanted.clone();
        small.max_section_size = 50;
        assert!(unfit_reason(&small, &wanted, 4)
            .unwrap()
            .contains("maxSectionSize"));
        let mut weak = wanted.clone();
        weak.creation_flags = CreationFlags::WR_ACTIVE_REPLICA_WEAK;
        assert!(unfit_reason(&weak, &wanted, 4)
            .unwrap()
            .contains("creation flags"));
        // Placement flags do not matter.
        let mut distributed = wanted.clone();
        distributed.creation_flags = wanted.creation_flags | CreationFlags::DISTRIBUTED;
        assert_eq!(unfit_reason(&distributed, &wanted, 4), None);
    }

    #[test]
    fn counters_continue_after_the_stored_value() {
        assert_eq!(next_counter(None).unwrap(), 1);
        assert_eq!(next_counter(Some(&Vec::new())).unwrap(), 1);
        assert_eq!(
            next_counter(Some(&41u64.to_le_bytes().to_vec())).unwrap(),
            42
        );
        assert!(next_counter(Some(&u64::MAX.to_le_bytes().to_vec())).is_err());
    }
    #[test]
    fn clients_spread_over_checkpoints() {
        assert_eq!(clients_of(64, 12, 0), 6);
        assert_eq!(clients_of(64, 12, 3), 6);
        assert_eq!(clients_of(64, 12, 4), 5);
        assert_eq!((0..12).map(|j| clients_of(64, 12, j)).sum::<u32>(), 64);
        assert_eq!(clients_of(5, 1, 0), 5);
        let spread = args(&["--clients", "64", "--checkpoints", "12", "--size", "1024"]);
        let base = CheckpointName::new("b").unwrap();
        let names = checkpoint_names(&base, spread.checkpoints).unwrap();
        assert_eq!(names.len(), 12);
        assert_eq!(names[0].as_bytes(), b"b-0");
        assert_eq!(names[11].as_bytes(), b"b-11");
        // Each checkpoint has room for its busiest share of the clients.
        let wanted = bench_attributes(&spread);
        assert_eq!(wanted.max_sections, 7);
        assert_eq!(wanted.checkpoint_size, 6 * 1024);
        assert_eq!(unfit_reason(&wanted, &wanted, clients_of(64, 12, 0)), None);
        assert_eq!(checkpoint_names(&base, 1).unwrap(), vec![base.clone()]);
        let long = CheckpointName::new("n".repeat(255)).unwrap();
        assert!(checkpoint_names(&long, 2).is_err());
    }

    #[test]
    fn every_run_has_a_checkpoint_of_its_own() {
        let name = run_name(&args(&[])).to_string();
        let parts: Vec<&str> = name.split('-').collect();
        assert_eq!(parts.len(), 3, "{name}");
        assert_eq!(parts[0], "bench");
        assert!(parts[1].parse::<u64>().unwrap() > 1_700_000_000, "{name}");
        assert_eq!(parts[2], std::process::id().to_string());
        assert_eq!(run_name(&args(&["--checkpoint", "x"])).as_bytes(), b"x");
    }

    #[test]
    fn the_status_line_shows_rate_p99_and_errors() {
        assert_eq!(
            status_text(2500, 0.5, 1_250_000, 10_000, 3),
            "5000 ops/s  p99 1.2 ms  errors 3  acknowledged 10000"
        );
        let stats = LiveStats::default();
        stats.acked(2_000_000);
        stats.failed();
        assert_eq!(stats.ops.load(Ordering::Relaxed), 1);
        assert_eq!(stats.errors.load(Ordering::Relaxed), 1);
        let (p99, count) = stats.latency_ns.take_quantile(0.99);
        assert_eq!(count, 1);
        assert!((1_875_000..=2_000_000).contains(&p99), "{p99}");
    }

    #[test]
    fn modes_set_the_creation_flags() {
        let flags = |mode: &str| bench_attributes(&args(&["--mode", mode])).creation_flags;
        assert_eq!(
            flags("all-safe"),
            CreationFlags::WR_ACTIVE_REPLICA | CreationFlags::WR_ALL_SAFE
        );
        assert_eq!(flags("active"), CreationFlags::WR_ACTIVE_REPLICA);
        assert_eq!(flags("weak"), CreationFlags::WR_ACTIVE_REPLICA_WEAK);
        assert_eq!(flags("active-weak"), CreationFlags::WR_ACTIVE_REPLICA_WEAK);
    }

    #[test]
    fn errors_retry_the_same_value_or_stop() {
        let error = |code| ClientError::new(code, "x");
        assert_eq!(after_error(&error(ErrorCode::TryAgain)), AfterError::Retry);
        // The client already reconnected for --reconnect-s: a lost
        // connection is final here, as is a refusal.
        assert_eq!(
            after_error(&ClientError::connection_lost("gone")),
            AfterError::Stop
        );
        assert_eq!(after_error(&error(ErrorCode::NoSpace)), AfterError::Stop);
        assert_eq!(after_error(&error(ErrorCode::NotExist)), AfterError::Stop);
    }

    #[test]
    fn clients_start_on_different_nodes() {
        assert_eq!(rotated_addrs("a:1,b:2,c:3", 0), "a:1,b:2,c:3");
        assert_eq!(rotated_addrs("a:1, b:2,c:3", 1), "b:2,c:3,a:1");
        assert_eq!(rotated_addrs("a:1,b:2,c:3", 5), "c:3,a:1,b:2");
        assert_eq!(rotated_addrs("a:1", 7), "a:1");
    }

    #[test]
    fn reconnection_window_defaults_by_address_count() {
        let none = args(&[]);
        assert_eq!(reconnect_window(&none, "a:1"), Duration::ZERO);
        assert_eq!(
            reconnect_window(&none, "a:1,b:2"),
            Duration::from_secs_f64(RECONNECT_S_DEFAULT_CLUSTER)
        );
        let set = args(&["--reconnect-s", "2.5"]);
        assert_eq!(reconnect_window(&set, "a:1"), Duration::from_millis(2500));
        let off = args(&["--reconnect-s", "0"]);
        assert_eq!(reconnect_window(&off, "a:1,b:2"), Duration::ZERO);
    }

    #[test]
    fn base64_matches_rfc_4648() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
        assert_eq!(
            etcd_put_body("k", b"v"),
            br#"{"key":"aw==","value":"dg=="}"#.to_vec()
        );
    }

    #[test]
    fn reports_show_errors_by_code() {
        let mut errors = BTreeMap::new();
        errors.insert("CL_ERR_TRY_AGAIN".to_string(), 3);
        let report = BenchReport {
            checkpoint: "bench-0..bench-11".into(),
            checkpoints: 12,
            target: "ckpt".into(),
            clients: 64,
            clients_running: 64,
            duration_s: 1.0,
            elapsed_s: 1.0,
            value_size: 1024,
            mode: "all-safe".into(),
            all_safe: false,
            op: "mix 9:1".into(),
            ops: 10,
            ops_per_s: 10.0,
            reads: 9,
            writes: 1,
            read_p99_us: Some(1.5),
            write_p99_us: Some(2.5),
            server_cpu_s: Some(0.25),
            server_cpu_us_per_op: Some(25000.0),
            server_stages: Vec::new(),
            retries: 3,
            errors,
            reconnects: 2,
            p50_us: 1.0,
            p99_us: 2.0,
            p999_us: 3.0,
            max_us: 4.0,
            stopped_early: false,
            client_errors: Vec::new(),
            record: None,
            removed: vec!["bench-0".into()],
            kept: Vec::new(),
        };
        let text = report.text();
        assert!(text.ends_with("removed: bench-0\n"), "{text}");
        assert!(
            text.contains("checkpoint bench-0..bench-11 (12 checkpoints)"),
            "{text}"
        );
        assert!(
            text.contains("errors: CL_ERR_TRY_AGAIN 3; 2 reconnects"),
            "{text}"
        );
        assert!(
            text.contains("completed 10 ops (9 reads, 1 writes) in 1.00 s"),
            "{text}"
        );
        assert!(text.contains("(reads p99 1.5, writes p99 2.5)"), "{text}");
        assert!(
            text.contains("server CPU: 0.25 s, 25000.0 us per op"),
            "{text}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["errors"]["CL_ERR_TRY_AGAIN"], 3);
        assert_eq!(json["p999_us"], 3.0);
        assert_eq!(json["server_cpu_us_per_op"], 25000.0);
    }

    #[test]
    fn mixes_alternate_reads_and_writes() {
        assert_eq!(loop_mix(&args(&[])), (0, 1));
        assert_eq!(loop_mix(&args(&["--op", "read"])), (1, 0));
        assert_eq!(loop_mix(&args(&["--mix", "9:1"])), (9, 1));
        assert_eq!(op_name(&args(&["--mix", "9:1"])), "mix 9:1");
        assert_eq!(op_name(&args(&["--mix", "0:3"])), "write");
        assert_eq!(op_name(&args(&["--mix", "2:0"])), "read");
        let pattern: Vec<bool> = (0..8).map(|i| is_read((3, 1), i)).collect();
        assert_eq!(pattern, [true, true, true, false, true, true, true, false]);
        assert!((0..5).all(|i| !is_read((0, 1), i)));
        assert!((0..5).all(|i| is_read((1, 0), i)));
        for bad in ["0:0", "1", "a:1", "1:-1", "4294967295:1", ""] {
            assert!(crate::cli::parse_mix(bad).is_err(), "{bad}");
        }
        let parse = |argv: &[&str]| {
            Cli::try_parse_from(
                ["ckpt-tool", "bench"]
                    .into_iter()
                    .chain(argv.iter().copied()),
            )
        };
        assert!(parse(&["--mix", "1:1", "--op", "open"]).is_err());
        assert!(parse(&["--server-pid", "0"]).is_err());
        assert!(parse(&["--server-pid", "1,x"]).is_err());
    }

    #[test]
    fn server_hops_are_the_stage_histograms_grown_over_the_phase() {
        let before = "# HELP ckpt_request_stage_seconds Where requests' time goes\n\
            ckpt_request_stage_seconds_bucket{stage=\"queue\",le=\"0.001\"} 3\n\
            ckpt_request_stage_seconds_sum{stage=\"queue\"} 0.0005\n\
            ckpt_request_stage_seconds_count{stage=\"queue\"} 3\n\
            ckpt_request_stage_seconds_sum{stage=\"fsync\"} 0.003\n\
            ckpt_request_stage_seconds_count{stage=\"fsync\"} 3\n\
            ckpt_request_stage_seconds_sum{stage=\"wake\"} 0\n\
            ckpt_request_stage_seconds_count{stage=\"wake\"} 0\n\
            ckpt_wal_fsync_duration_seconds_sum 0.003\n";
        let after = before
            .replace(
                "_sum{stage=\"queue\"} 0.0005",
                "_sum{stage=\"queue\"} 0.0025",
            )
            .replace("_count{stage=\"queue\"} 3", "_count{stage=\"queue\"} 7")
            .replace("_sum{stage=\"fsync\"} 0.003", "_sum{stage=\"fsync\"} 0.005")
            .replace("_count{stage=\"fsync\"} 3", "_count{stage=\"fsync\"} 7");
        let start = parse_stages(before);
        assert_eq!(start.len(), 3, "{start:?}");
        let means = stage_means(&start, &parse_stages(&after));
        // In the server's order; a stage nothing passed is left out.
        let got: Vec<(&str, u64, f64)> = means
            .iter()
            .map(|m| {
                (
                    m.stage.as_str(),
                    m.count,
                    (m.mean_us * 1000.0).round() / 1000.0,
                )
            })
            .collect();
        assert_eq!(got, vec![("queue", 4, 500.0), ("fsync", 4, 500.0)]);
        let report = BenchReport {
            server_stages: means,
            ..BenchReport::default()
        };
        assert!(
            report
                .text()
                .contains("server hops, mean us per request: queue 500.0  fsync 500.0\n"),
            "{}",
            report.text()
        );
    }

    #[test]
    fn server_cpu_is_read_from_proc() {
        let mine = process_cpu_s(std::process::id()).unwrap();
        // Burn a little CPU: the reading must not go down, and moves.
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(process_cpu_s(std::process::id()).unwrap() >= mine);
        let error = process_cpu_s(u32::MAX).unwrap_err();
        assert_eq!(error.code, ErrorCode::NotExist);
        assert!(
            error.message.contains("--server-pid 4294967295"),
            "{}",
            error.message
        );
    }

    #[tokio::test]
    async fn etcd_target_puts_through_the_json_gateway() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A fake gateway: answers every put 200 and keeps the bodies.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = listener.local_addr().unwrap().to_string();
        let (sender, mut bodies) = tokio::sync::mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let sender = sender.clone();
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 8192];
                    loop {
                        let text = String::from_utf8_lossy(&buffer).into_owned();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let length: usize = text[..end]
                                .lines()
                                .find_map(|l| l.strip_prefix("Content-Length: "))
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or(0);
                            if buffer.len() >= end + 4 + length {
                                assert!(text.starts_with("POST /v3/kv/put HTTP/1.1"));
                                let body =
                                    String::from_utf8_lossy(&buffer[end + 4..end + 4 + length]);
                                let _ = sender.send(body.into_owned());
                                buffer.drain(..end + 4 + length);
                                let reply = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
                                if stream.write_all(reply.as_bytes()).await.is_err() {
                                    return;
                                }
                                continue;
                            }
                        }
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        let args = args(&[
            "--target",
            "etcd",
            "--endpoints",
            &endpoint,
            "--clients",
            "3",
            "--checkpoints",
            "2",
            "--size",
            "16",
            "--duration-s",
            "0.2",
            "--checkpoint",
            "e",
        ]);
        let report = run("unused:1", &args).await.map_err(|(_, e)| e).unwrap();
        assert!(report.ops > 0);
        assert_eq!(report.clients_running, 3);
        assert_eq!(report.target, "etcd");
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let mut keys = std::collections::BTreeSet::new();
        while let Ok(body) = bodies.try_recv() {
            let value: serde_json::Value = serde_json::from_str(&body).unwrap();
            keys.insert(value["key"].as_str().unwrap().to_string());
            assert_eq!(value["value"].as_str().unwrap().len(), 24); // 16 bytes
        }
        let expected: std::collections::BTreeSet<String> = ["e-0/c0", "e-1/c1", "e-0/c2"]
            .iter()
            .map(|k| base64(k.as_bytes()))
            .collect();
        assert_eq!(keys, expected);
    }

    #[tokio::test]
    async fn etcd_target_stops_a_client_whose_endpoint_is_down() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = listener.local_addr().unwrap().to_string();
        drop(listener);
        let args = args(&[
            "--target",
            "etcd",
            "--endpoints",
            &dead,
            "--clients",
            "1",
            "--duration-s",
            "5",
        ]);
        let started = Instant::now();
        let (report, error) = run("unused:1", &args).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(4));
        assert_eq!(error.code, ErrorCode::FailedOperation);
        let report = report.unwrap();
        assert_eq!(report.errors.get("connect failed"), Some(&1));
        assert!(
            report.client_errors[0].contains(&dead),
            "{:?}",
            report.client_errors
        );
    }
}
