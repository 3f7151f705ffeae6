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
//! Phases: set up the checkpoint (create it, or check that the existing one
//! fits), set up every client (connect, open, find or create its section),
//! then run the timed loop. A client stops at the deadline, on Ctrl-C, or on
//! its first error other than `TRY_AGAIN` (retried after
//! [`TRY_AGAIN_PAUSE_MS`]); the summary covers what was acknowledged.
//! Latency is measured around each call only (the record write is outside
//! it).
//!
//! `--op open` measures the control path instead: each client creates a
//! checkpoint of its own, closes it and deletes it, in a closed loop; an op
//! is one creation, its latency the whole cycle's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ckpt_client::{Checkpoint, Client, ClientError};
use ckpt_proto::{
    CheckpointName, CreationAttributes, CreationFlags, ErrorCode, OpenFlags, ReadElement,
    SectionCreationAttributes, SectionId, TIME_END,
};
use serde::Serialize;
use tokio::sync::watch;

use crate::cli::{BenchArgs, BenchOp};
use crate::histogram::Histogram;
use crate::record::{decode_counter, fill_value, valid_field, Recorder};

/// Pause before retrying a write the server answered with `TRY_AGAIN`.
pub const TRY_AGAIN_PAUSE_MS: u64 = 1;
/// Longest section id the bench's checkpoint allows (`c<i>` needs 5).
const SECTION_ID_BYTES_MAX: u64 = 64;

/// What a bench run did.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The checkpoint written.
    pub checkpoint: String,
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
    /// Acknowledged writes.
    pub ops: u64,
    /// Acknowledged writes per second of the write phase.
    pub ops_per_s: f64,
    /// Writes answered `TRY_AGAIN` and retried.
    pub retries: u64,
    /// Latency quantiles of acknowledged writes, µs.
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
}

impl BenchReport {
    /// The human summary.
    pub fn text(&self) -> String {
        format!(
            "bench: {} clients ({} ran), {:.1} s, {}-byte values, mode {}{}, checkpoint {}\n\
             acknowledged {} writes in {:.2} s: {:.1} ops/s ({} retried after TRY_AGAIN)\n\
             latency us: p50 {:.1}  p99 {:.1}  p999 {:.1}  max {:.1}\n",
            self.clients,
            self.clients_running,
            self.duration_s,
            self.value_size,
            self.mode,
            if self.all_safe { " + all-safe" } else { "" },
            self.checkpoint,
            self.ops,
            self.elapsed_s,
            self.ops_per_s,
            self.retries,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
        )
    }
}

/// The attributes the bench creates its checkpoint with.
pub fn bench_attributes(args: &BenchArgs) -> CreationAttributes {
    let mut creation_flags = args.mode.flag();
    if args.all_safe {
        creation_flags = creation_flags | CreationFlags::WR_ALL_SAFE;
    }
    // Two at least: one section means only the default section exists.
    let max_sections = args.clients.max(2);
    CreationAttributes {
        creation_flags,
        checkpoint_size: u64::from(max_sections).saturating_mul(args.value_size),
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
    if existing.max_sections < clients.max(2) {
        return Some(format!(
            "maxSections is {}, {} clients need {}",
            existing.max_sections,
            clients,
            clients.max(2)
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

/// Creates the bench checkpoint, or opens the existing one after checking it fits.
async fn open_bench_checkpoint(
    client: &Client,
    args: &BenchArgs,
) -> Result<Checkpoint, ClientError> {
    let wanted = bench_attributes(args);
    let flags = OpenFlags::CREATE | OpenFlags::READ | OpenFlags::WRITE;
    match client
        .open(&args.checkpoint, Some(wanted.clone()), flags)
        .await
    {
        Ok(checkpoint) => Ok(checkpoint),
        Err(error) if error.code == ErrorCode::AlreadyExist => {
            let checkpoint = client
                .open(&args.checkpoint, None, OpenFlags::READ | OpenFlags::WRITE)
                .await?;
            let existing = checkpoint.status().await?.attributes;
            if let Some(reason) = unfit_reason(&existing, &wanted, args.clients) {
                let _ = checkpoint.close().await;
                return Err(ClientError::new(
                    ErrorCode::AlreadyExist,
                    format!(
                        "checkpoint {} exists but does not fit this bench: {reason} (use another --checkpoint, or ckpt-tool rm it)",
                        args.checkpoint
                    ),
                ));
            }
            Ok(checkpoint)
        }
        Err(error) => Err(error),
    }
}

/// One client, ready to write.
struct Worker {
    section_text: String,
    section: SectionId,
    checkpoint: Checkpoint,
    /// The next counter to write.
    counter: u64,
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

async fn set_up_worker(
    addr: &str,
    name: &CheckpointName,
    index: u32,
) -> Result<Worker, ClientError> {
    let client = Client::connect(addr).await?;
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
        section_text,
        section,
        checkpoint,
        counter,
    })
}

/// What one client did in the write phase.
struct WorkerOutcome {
    latency_ns: Histogram,
    ops: u64,
    retries: u64,
    error: Option<ClientError>,
    /// A record write failed: the record is incomplete.
    record_failed: bool,
}

async fn write_loop(
    mut worker: Worker,
    value_size: usize,
    deadline: Instant,
    stop: watch::Sender<bool>,
    recorder: Option<Arc<Recorder>>,
    checkpoint_text: Arc<str>,
) -> WorkerOutcome {
    let mut outcome = WorkerOutcome {
        latency_ns: Histogram::default(),
        ops: 0,
        retries: 0,
        error: None,
        record_failed: false,
    };
    // Every byte derives from the checkpoint, section, counter and size, so
    // `check-acked` can tell a wrong body from the right one.
    let mut value = vec![0u8; value_size];
    let stopped = stop.subscribe();
    while Instant::now() < deadline && !*stopped.borrow() {
        fill_value(
            &checkpoint_text,
            &worker.section_text,
            worker.counter,
            &mut value,
        );
        let started = Instant::now();
        let result = worker
            .checkpoint
            .section_overwrite(&worker.section, value.clone())
            .await;
        let latency_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        match result {
            Ok(()) => {
                outcome.latency_ns.record(latency_ns);
                outcome.ops += 1;
                if let Some(recorder) = &recorder {
                    let appended = recorder.append(
                        &checkpoint_text,
                        &worker.section_text,
                        worker.counter,
                        value.len() as u64,
                    );
                    if let Err(error) = appended {
                        outcome.error = Some(error);
                        outcome.record_failed = true;
                        let _ = stop.send(true);
                        break;
                    }
                }
                let Some(next) = worker.counter.checked_add(1) else {
                    outcome.error = Some(ClientError::new(
                        ErrorCode::OutOfRange,
                        "the counter reached u64::MAX",
                    ));
                    break;
                };
                worker.counter = next;
            }
            Err(error) if error.code == ErrorCode::TryAgain => {
                outcome.retries += 1;
                tokio::time::sleep(Duration::from_millis(TRY_AGAIN_PAUSE_MS)).await;
            }
            Err(error) => {
                outcome.error = Some(error);
                break;
            }
        }
    }
    if outcome
        .error
        .as_ref()
        .is_none_or(|e| !e.is_connection_lost())
    {
        let _ = worker.checkpoint.close().await;
    }
    outcome
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
    if args.op == BenchOp::Open {
        return run_opens(addr, args).await;
    }
    let fail = |error: ClientError| (None, error);
    let checkpoint_text: Arc<str> = String::from_utf8_lossy(args.checkpoint.as_bytes()).into();
    let recorder = match &args.record {
        Some(path) => {
            if !valid_field(&checkpoint_text) {
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

    let setup_client = Client::connect(addr).await.map_err(fail)?;
    let setup_checkpoint = open_bench_checkpoint(&setup_client, args)
        .await
        .map_err(fail)?;

    let setups = (0..args.clients).map(|index| set_up_worker(addr, &args.checkpoint, index));
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
    let clients_running = workers.len() as u32;

    let (stop, _) = watch::channel(false);
    let interrupt = {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("interrupted: stopping the clients (Ctrl-C again to quit at once)");
                let _ = stop.send(true);
                // Every acknowledged write is already in the record file.
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        })
    };

    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.duration_s);
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|worker| {
            let section = worker.section_text.clone();
            let task = tokio::spawn(write_loop(
                worker,
                value_size,
                deadline,
                stop.clone(),
                recorder.clone(),
                checkpoint_text.clone(),
            ));
            (section, task)
        })
        .collect();
    let mut latency_ns = Histogram::default();
    let (mut ops, mut retries) = (0, 0);
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
        ops += outcome.ops;
        retries += outcome.retries;
        if let Some(error) = outcome.error {
            client_errors.push(format!("{section}: {error}"));
            if outcome.record_failed && record_error.is_none() {
                record_error = Some(error);
            }
        }
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    interrupt.abort();
    let interrupted = *stop.borrow();
    let _ = setup_checkpoint.close().await;

    let us = |ns: u64| ns as f64 / 1000.0;
    let report = BenchReport {
        checkpoint: checkpoint_text.to_string(),
        clients: args.clients,
        clients_running,
        duration_s: args.duration_s,
        elapsed_s,
        value_size: args.value_size,
        mode: args.mode.name().to_string(),
        all_safe: args.all_safe,
        ops,
        ops_per_s: if elapsed_s > 0.0 {
            ops as f64 / elapsed_s
        } else {
            0.0
        },
        retries,
        p50_us: us(latency_ns.quantile(0.5)),
        p99_us: us(latency_ns.quantile(0.99)),
        p999_us: us(latency_ns.quantile(0.999)),
        max_us: us(latency_ns.max()),
        stopped_early: interrupted || !client_errors.is_empty(),
        client_errors,
        record: args.record.as_ref().map(|path| path.display().to_string()),
    };
    if let Some(error) = record_error {
        return Err((Some(report), error));
    }
    if ops == 0 {
        let first = report
            .client_errors
            .first()
            .cloned()
            .unwrap_or_else(|| "none".to_string());
        let error = ClientError::new(
            ErrorCode::FailedOperation,
            format!("no write was acknowledged (first error: {first})"),
        );
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
            outcome.error = Some(error);
            break;
        }
        outcome
            .latency_ns
            .record(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
        outcome.ops += 1;
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
    let checkpoint_text = String::from_utf8_lossy(args.checkpoint.as_bytes()).into_owned();
    let attributes = bench_attributes(args);
    let mut clients = Vec::new();
    for _ in 0..args.clients {
        clients.push(Client::connect(addr).await.map_err(fail)?);
    }
    let (stop, _) = watch::channel(false);
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
            ))
        })
        .collect();
    let mut latency_ns = Histogram::default();
    let mut ops = 0;
    let mut client_errors = Vec::new();
    for (index, task) in tasks.into_iter().enumerate() {
        match task.await {
            Ok(outcome) => {
                latency_ns.merge(&outcome.latency_ns);
                ops += outcome.ops;
                if let Some(error) = outcome.error {
                    client_errors.push(format!("c{index}: {error}"));
                }
            }
            Err(error) => client_errors.push(format!("c{index}: the client task failed: {error}")),
        }
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    let us = |ns: u64| ns as f64 / 1000.0;
    let report = BenchReport {
        checkpoint: format!("{checkpoint_text}-o{run_id}-*"),
        clients: args.clients,
        clients_running: args.clients,
        duration_s: args.duration_s,
        elapsed_s,
        value_size: args.value_size,
        mode: format!("{} (op open)", args.mode.name()),
        all_safe: args.all_safe,
        ops,
        ops_per_s: if elapsed_s > 0.0 {
            ops as f64 / elapsed_s
        } else {
            0.0
        },
        retries: 0,
        p50_us: us(latency_ns.quantile(0.5)),
        p99_us: us(latency_ns.quantile(0.99)),
        p999_us: us(latency_ns.quantile(0.999)),
        max_us: us(latency_ns.max()),
        stopped_early: !client_errors.is_empty(),
        client_errors,
        record: None,
    };
    if ops == 0 {
        let first = report.client_errors.first().cloned().unwrap_or_default();
        let error = ClientError::new(
            ErrorCode::FailedOperation,
            format!("no checkpoint was created (first error: {first})"),
        );
        return Err((Some(report), error));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
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
        assert_eq!(wanted.max_sections, 4);
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
        few.max_sections = 3;
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
}
