//! Offline commands on a data directory's log and RocksDB: `wal` (print
//! records), `verify --data-dir` (every checksum and invariant) and
//! `salvage` (cut the log back to its sound prefix after corruption).
//! Reading and judging is the store's own code (`ckpt_storage::inspect`:
//! the WAL reader recovery's rule decides, `verify`, recovery replayed
//! read-only), so the tool cannot judge the data differently from
//! recovery. `wal` and `verify` change nothing and take no lock (a server
//! may be running); `salvage` takes the directory's lock.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use ckpt_client::ClientError;
use ckpt_proto::ErrorCode;
use ckpt_storage::inspect::{
    self, rocksdb_facts, tail_reason, torn_from, walk_with_resync, Finding, Gap, SegmentFile,
    VerifyProgress, VerifyReport, WalReader,
};
use ckpt_storage::wal::segment::{SegmentEnd, SEGMENT_HEADER_BYTES};
use ckpt_storage::{Lsn, Record, RecordBody};
use serde::Serialize;

use crate::cli::{SalvageArgs, WalArgs};
use crate::datadir::{io_error, library, lock, require_data_dir, wal_dir};
use crate::progress::{human_bytes, Progress};
use crate::walscan::{record_json, record_line};

/// RocksDB's applied position and instance names, read-only.
fn db_facts(dir: &Path) -> Result<(u64, BTreeMap<u64, String>), ClientError> {
    let facts = rocksdb_facts(dir).map_err(ClientError::from)?;
    let names = facts
        .names
        .into_iter()
        .map(|(id, name)| (id.0, name.to_string()))
        .collect();
    Ok((facts.applied.0, names))
}

/// `wal`: every record of the log, read-only.
///
/// # Errors
/// `NOT_EXIST` for a missing directory; `FAILED_OPERATION` when the log
/// holds damage (after printing everything decodable).
pub fn wal(args: &WalArgs) -> Result<(), ClientError> {
    let dir = &args.data_dir;
    require_data_dir(dir)?;
    crate::datadir::note_if_live(dir);
    let mut names = match db_facts(dir) {
        Ok((_, names)) => names,
        Err(error) => {
            eprintln!("warning: names from RocksDB unavailable ({error}); using the log's create records only");
            BTreeMap::new()
        }
    };
    let wanted = args.checkpoint.as_ref().map(|n| n.to_string());
    let log = WalReader::open(&wal_dir(dir)).map_err(ClientError::from)?;
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    let mut problems = 0usize;
    let mut shown = 0u64;
    for (position, segment) in log.segments().iter().enumerate() {
        let bytes = log.read(position).map_err(ClientError::from)?;
        let judged = log.judge(position, &bytes);
        if judged.first_lsn.is_none() {
            let torn = matches!(judged.end, SegmentEnd::Torn { .. });
            eprintln!(
                "{}: {} offset 0: {}",
                if torn { "note" } else { "problem" },
                segment.name,
                tail_reason(&judged.end)
            );
            if !torn {
                problems += 1;
            }
        }
        let mut failed: Option<std::io::Error> = None;
        let mut print = |offset: u64, _len: u64, record: Record| {
            if let RecordBody::CheckpointCreate { name, .. } = &record.entry.body {
                names.insert(record.entry.instance.0, name.to_string());
            }
            let name = names.get(&record.entry.instance.0).map(String::as_str);
            if let Some(wanted) = &wanted {
                if name != Some(wanted.as_str()) {
                    return;
                }
            }
            if args.from.is_some_and(|from| record.entry.seq.0 < from)
                || args.from_lsn.is_some_and(|from| record.lsn.0 < from)
            {
                return;
            }
            shown += 1;
            let line = if args.json {
                record_json(&segment.name, offset, &record, name).to_string()
            } else {
                record_line(&segment.name, offset, &record, name)
            };
            if failed.is_none() {
                if let Err(e) = writeln!(stdout, "{line}") {
                    failed = Some(e);
                }
            }
        };
        let mut gaps: Vec<Gap> = Vec::new();
        walk_with_resync(
            &segment.name,
            &bytes,
            SEGMENT_HEADER_BYTES.min(bytes.len()),
            segment.first_lsn.saturating_sub(1),
            &mut print,
            |gap| gaps.push(gap),
        );
        if let Some(e) = failed {
            return Err(library(format!("writing to stdout: {e}")));
        }
        for gap in gaps {
            let torn = torn_from(&judged.end, gap.start);
            let level = if torn { "note" } else { "problem" };
            if !torn {
                problems += 1;
            }
            eprintln!(
                "{level}: {} offset {}..{} ({} bytes) not decodable: {}{}",
                gap.segment,
                gap.start,
                gap.end,
                gap.end - gap.start,
                gap.reason,
                if torn {
                    " (a torn final record; the server cuts it off at start)"
                } else {
                    ""
                }
            );
        }
    }
    stdout
        .flush()
        .map_err(|e| library(format!("writing to stdout: {e}")))?;
    if problems > 0 {
        return Err(ClientError::new(
            ErrorCode::FailedOperation,
            format!(
                "the log holds {problems} damaged stretch{}; {shown} records shown; see `ckpt-tool verify --data-dir` and `ckpt-tool salvage`",
                if problems == 1 { "" } else { "es" }
            ),
        ));
    }
    Ok(())
}

/// A progress bar (created once the total is known) for the store's
/// `verify`.
struct VerifyBar(Option<Progress>);

impl VerifyProgress for VerifyBar {
    fn total(&mut self, bytes: u64) {
        self.0 = Some(Progress::new("verify", bytes));
    }
    fn step(&mut self, what: String) {
        if let Some(bar) = &mut self.0 {
            bar.step(what);
        }
    }
    fn advance(&mut self, bytes: u64) {
        if let Some(bar) = &mut self.0 {
            bar.inc(bytes);
        }
    }
    fn problem(&mut self, finding: &Finding) {
        if let Some(bar) = &self.0 {
            bar.println(&format!(
                "problem: {}: {}",
                finding.location, finding.message
            ));
        }
    }
}

/// `verify --data-dir DIR`: the store's own checks, read-only.
///
/// # Errors
/// `NOT_EXIST` for a missing directory; `FAILED_OPERATION` when problems
/// were found (each printed).
pub fn verify_data_dir(dir: &Path, json: bool) -> Result<(), ClientError> {
    require_data_dir(dir)?;
    crate::datadir::note_if_live(dir);
    let mut bar = VerifyBar(None);
    let report = inspect::verify(dir, &mut bar).map_err(ClientError::from)?;
    if let Some(bar) = bar.0 {
        bar.finish();
    }
    print_findings(&report, json)?;
    if !report.problems.is_empty() {
        return Err(ClientError::new(
            ErrorCode::FailedOperation,
            format!(
                "{} problem{} found in {}",
                report.problems.len(),
                if report.problems.len() == 1 { "" } else { "s" },
                dir.display()
            ),
        ));
    }
    Ok(())
}

fn print_findings(report: &VerifyReport, json: bool) -> Result<(), ClientError> {
    if json {
        return crate::admin::emit_json(report);
    }
    let mut text = String::new();
    for f in &report.problems {
        text.push_str(&format!("problem: {}: {}\n", f.location, f.message));
    }
    for f in &report.warnings {
        text.push_str(&format!("warning: {}: {}\n", f.location, f.message));
    }
    let lsns = match (report.first_lsn, report.last_lsn) {
        (Some(a), Some(b)) => format!("lsn {a}..{b}"),
        _ => "no records".into(),
    };
    let applied = report
        .applied_lsn
        .map_or_else(|| "unknown".to_string(), |a| a.to_string());
    text.push_str(&format!(
        "{}: WAL {} segments, {} records ({lsns}); RocksDB applied lsn {applied}, {} checkpoints, {} sections, {} read back; {} problems, {} warnings\n",
        report.data_dir,
        report.segments,
        report.records,
        report.checkpoints,
        report.sections,
        human_bytes(report.data_bytes),
        report.problems.len(),
        report.warnings.len()
    ));
    crate::admin::emit(text.as_bytes())
}

/// Records of one checkpoint instance that a salvage drops.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DroppedRange {
    /// Records.
    pub records: u64,
    /// Lowest and highest seq.
    pub seq_first: u64,
    /// Highest seq.
    pub seq_last: u64,
    /// Lowest lsn.
    pub lsn_first: u64,
    /// Highest lsn.
    pub lsn_last: u64,
}

impl DroppedRange {
    fn add(&mut self, record: &Record) {
        if self.records == 0 {
            self.seq_first = record.entry.seq.0;
            self.seq_last = record.entry.seq.0;
            self.lsn_first = record.lsn.0;
            self.lsn_last = record.lsn.0;
        }
        self.records += 1;
        self.seq_first = self.seq_first.min(record.entry.seq.0);
        self.seq_last = self.seq_last.max(record.entry.seq.0);
        self.lsn_first = self.lsn_first.min(record.lsn.0);
        self.lsn_last = self.lsn_last.max(record.lsn.0);
    }
}

/// One checkpoint instance touched by dropped records.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DroppedCheckpoint {
    /// Instance id.
    pub instance: u64,
    /// Name, where known (RocksDB metadata or a create record).
    pub name: Option<String>,
    /// Dropped records RocksDB already holds (lsn at or below its applied
    /// position): nothing of them is lost.
    pub already_applied: Option<DroppedRange>,
    /// Dropped records RocksDB does not hold: lost.
    pub lost: Option<DroppedRange>,
}

/// Bytes of the log that hold no readable record.
#[derive(Debug, Clone, Serialize)]
pub struct Undecodable {
    /// Where.
    #[serde(flatten)]
    pub gap: Gap,
    /// Whether the records there are known to be at or below RocksDB's
    /// applied position (the next readable record's lsn says so): then
    /// nothing of them is lost.
    pub already_applied: bool,
}

/// What `salvage` found and did.
#[derive(Debug, Default, Serialize)]
pub struct SalvageReport {
    /// The directory.
    pub data_dir: String,
    /// Whether anything needed doing.
    pub needed: bool,
    /// Whether changes were made (false with --dry-run).
    pub applied_changes: bool,
    /// Each damage that stopped recovery: segment, offset, reason.
    pub damage: Vec<Finding>,
    /// RocksDB's applied position (0 when unknown).
    pub applied_lsn: u64,
    /// Highest lsn kept in the log.
    pub kept_last_lsn: Option<u64>,
    /// Renames done (or planned): from, to.
    pub moved_aside: Vec<(String, String)>,
    /// Segments rewritten with their sound prefix: name, bytes kept.
    pub rewritten: Vec<(String, u64)>,
    /// Checkpoints whose records were dropped.
    pub dropped: Vec<DroppedCheckpoint>,
    /// Stretches that could not be decoded at all.
    pub undecodable: Vec<Undecodable>,
    /// A torn tail the server will cut at start, if any.
    pub torn_tail: Option<Finding>,
}

/// Where recovery would stop, in the listing salvage works on.
struct Fatal {
    segment: usize,
    offset: u64,
    reason: String,
    /// Every record of the segment is at or below the applied position.
    covered: bool,
    /// The log is whole but ends below the durable mark: nothing to move
    /// aside; salvage lowers the mark to what the log holds.
    durable_end: bool,
}

struct Scan {
    fatal: Option<Fatal>,
    kept_last_lsn: Option<u64>,
    torn_tail: Option<Finding>,
    names: BTreeMap<u64, String>,
}

/// Recovery's own verdict on the directory (`inspect::recovery_verdict`:
/// recovery replayed read-only, with `set_aside` treated as moved away),
/// placed in `segments` (the listing without `set_aside`).
fn recovery_scan(
    dir: &Path,
    segments: &[SegmentFile],
    set_aside: &[String],
) -> Result<Scan, ClientError> {
    let verdict = inspect::recovery_verdict(dir, set_aside).map_err(ClientError::from)?;
    let applied = verdict.applied.0;
    let fatal = verdict.refusal.map(|refusal| {
        let segment = segments
            .iter()
            .position(|s| s.name == refusal.segment)
            .unwrap_or(segments.len().saturating_sub(1));
        Fatal {
            segment,
            offset: refusal.offset,
            reason: refusal.reason,
            covered: !refusal.durable_end
                && segments
                    .get(segment + 1)
                    .is_some_and(|next| next.first_lsn <= applied + 1),
            durable_end: refusal.durable_end,
        }
    });
    Ok(Scan {
        fatal,
        kept_last_lsn: verdict.kept_last,
        torn_tail: verdict.torn_tail.map(|(segment, offset, reason)| Finding {
            location: format!("wal/{segment} offset {offset}"),
            message: reason,
        }),
        names: verdict
            .names
            .into_iter()
            .map(|(id, name)| (id.0, name.to_string()))
            .collect(),
    })
}

/// The log's segments, without those in `set_aside`.
fn list_segments(wal: &Path, set_aside: &[String]) -> Result<Vec<SegmentFile>, ClientError> {
    let log = WalReader::open(wal).map_err(ClientError::from)?;
    Ok(log
        .segments()
        .iter()
        .filter(|s| !set_aside.contains(&s.name))
        .cloned()
        .collect())
}

fn read_segment(segment: &SegmentFile) -> Result<Vec<u8>, ClientError> {
    std::fs::read(&segment.path).map_err(|e| io_error("reading", &segment.path, &e))
}

/// Replaces the durable mark by one stating `lsn` (the store's
/// `mark::replace_file`): after salvage dropped records the old mark may
/// claim more than the log holds.
fn reset_mark(wal: &Path, lsn: u64) -> Result<(), ClientError> {
    ckpt_storage::wal::mark::replace_file(wal, Lsn(lsn)).map_err(|e| {
        let code = if e.raw_os_error() == Some(28) {
            ErrorCode::NoSpace
        } else {
            ErrorCode::Library
        };
        ClientError::new(code, format!("resetting the durable mark: {e}"))
    })
}

fn damaged_name(wal: &Path, name: &str) -> PathBuf {
    let first = wal.join(format!("{name}.damaged"));
    if !first.exists() {
        return first;
    }
    (2..)
        .map(|n| wal.join(format!("{name}.damaged.{n}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

fn sync_dir(dir: &Path) -> Result<(), ClientError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("syncing", dir, &e))
}

/// `salvage`.
///
/// # Errors
/// `IN_USE` for a held directory; IO errors; `FAILED_OPERATION` if the log
/// still does not recover afterwards.
pub fn salvage(args: &SalvageArgs) -> Result<(), ClientError> {
    let dir = &args.data_dir;
    let _lock = lock(dir)?;
    let wal = wal_dir(dir);
    let mut report = SalvageReport {
        data_dir: dir.display().to_string(),
        ..Default::default()
    };
    let (applied, mut names) = db_facts(dir).map_err(|error| {
        ClientError::new(
            error.code,
            format!(
                "RocksDB does not open ({}): the server cannot start whatever the log holds, and salvage repairs only the log; restore from a dump",
                error.message
            ),
        )
    })?;
    report.applied_lsn = applied;
    // Segments a dry run plans to move aside (it moves nothing).
    let mut set_aside: Vec<String> = Vec::new();
    let mut segments = list_segments(&wal, &set_aside)?;
    let total: u64 = segments.iter().map(|s| s.len).sum();
    let mut progress = Progress::new("salvage", total);
    progress.step(format!("scanning {} segments", segments.len()));
    let mut dropped: BTreeMap<u64, DroppedCheckpoint> = BTreeMap::new();
    let undecodable: std::cell::RefCell<Vec<Undecodable>> = Default::default();
    let pending: std::cell::RefCell<Vec<usize>> = Default::default();
    loop {
        let scan = recovery_scan(dir, &segments, &set_aside)?;
        for (id, name) in scan.names {
            names.insert(id, name);
        }
        report.kept_last_lsn = scan.kept_last_lsn.or(report.kept_last_lsn);
        report.torn_tail = scan.torn_tail;
        let Some(fatal) = scan.fatal else { break };
        report.needed = true;
        if fatal.durable_end {
            // The log is whole as far as it goes but shorter than the mark
            // says: nothing to set aside; the lost records are reported and
            // the mark lowered to what the log holds.
            report.damage.push(Finding {
                location: segments.get(fatal.segment).map_or_else(
                    || format!("wal/{}", ckpt_storage::wal::mark::MARK_FILE),
                    |s| format!("wal/{} offset {}", s.name, fatal.offset),
                ),
                message: fatal.reason.clone(),
            });
            if !args.dry_run {
                reset_mark(&wal, report.kept_last_lsn.unwrap_or(0).max(applied))?;
                report.applied_changes = true;
            }
            break;
        }
        let segment = segments[fatal.segment].clone();
        report.damage.push(Finding {
            location: format!("wal/{} offset {}", segment.name, fatal.offset),
            message: fatal.reason.clone(),
        });
        progress.println(&format!(
            "damage: wal/{} offset {}: {}",
            segment.name, fatal.offset, fatal.reason
        ));
        // Everything from the damage on is dropped: decode what can be.
        let last = if fatal.covered {
            fatal.segment
        } else {
            segments.len() - 1
        };
        let mut after_lsn = report
            .kept_last_lsn
            .unwrap_or(segment.first_lsn.saturating_sub(1));
        for (index, s) in segments
            .iter()
            .enumerate()
            .take(last + 1)
            .skip(fatal.segment)
        {
            let bytes = read_segment(s)?;
            let start = if index == fatal.segment {
                (fatal.offset as usize).max(SEGMENT_HEADER_BYTES.min(bytes.len()))
            } else {
                SEGMENT_HEADER_BYTES.min(bytes.len())
            };
            walk_with_resync(
                &s.name,
                &bytes,
                start,
                after_lsn,
                |_, _, record| {
                    after_lsn = after_lsn.max(record.lsn.0);
                    for gap in pending.borrow_mut().drain(..) {
                        undecodable.borrow_mut()[gap].already_applied =
                            record.lsn.0.saturating_sub(1) <= applied;
                    }
                    if let RecordBody::CheckpointCreate { name, .. } = &record.entry.body {
                        names
                            .entry(record.entry.instance.0)
                            .or_insert_with(|| name.to_string());
                    }
                    let entry = dropped.entry(record.entry.instance.0).or_insert_with(|| {
                        DroppedCheckpoint {
                            instance: record.entry.instance.0,
                            ..Default::default()
                        }
                    });
                    let range = if record.lsn.0 <= applied {
                        entry.already_applied.get_or_insert_with(Default::default)
                    } else {
                        entry.lost.get_or_insert_with(Default::default)
                    };
                    range.add(&record);
                },
                |gap| {
                    let mut undecodable = undecodable.borrow_mut();
                    pending.borrow_mut().push(undecodable.len());
                    undecodable.push(Undecodable {
                        gap,
                        already_applied: fatal.covered,
                    });
                },
            );
            progress.inc(s.len);
        }
        // A stretch no readable record follows may hold anything.
        for gap in pending.borrow_mut().drain(..) {
            undecodable.borrow_mut()[gap].already_applied = fatal.covered;
        }
        // Plan: later segments aside (last first), then the damaged one,
        // then its sound prefix written back under its name.
        let mut moves: Vec<(PathBuf, PathBuf)> = Vec::new();
        for s in segments[fatal.segment + 1..=last].iter().rev() {
            moves.push((s.path.clone(), damaged_name(&wal, &s.name)));
        }
        moves.push((segment.path.clone(), damaged_name(&wal, &segment.name)));
        let keep = if fatal.offset >= SEGMENT_HEADER_BYTES as u64 {
            Some(fatal.offset)
        } else {
            None
        };
        for (from_path, to_path) in &moves {
            report.moved_aside.push((
                from_path.display().to_string(),
                to_path.display().to_string(),
            ));
        }
        if let Some(keep) = keep {
            report.rewritten.push((segment.name.clone(), keep));
        }
        if !args.dry_run {
            for (from_path, to_path) in &moves {
                std::fs::rename(from_path, to_path)
                    .map_err(|e| io_error("moving aside", from_path, &e))?;
            }
            sync_dir(&wal)?;
            if let Some(keep) = keep {
                let source = &moves.last().map(|(_, to)| to.clone()).unwrap_or_default();
                let bytes = std::fs::read(source).map_err(|e| io_error("reading", source, &e))?;
                let temporary = wal.join(format!("{}.salvage", segment.name));
                let mut file =
                    File::create(&temporary).map_err(|e| io_error("creating", &temporary, &e))?;
                file.write_all(&bytes[..keep as usize])
                    .and_then(|()| file.sync_all())
                    .map_err(|e| io_error("writing", &temporary, &e))?;
                drop(file);
                std::fs::rename(&temporary, &segment.path)
                    .map_err(|e| io_error("renaming to", &segment.path, &e))?;
                sync_dir(&wal)?;
            }
            report.applied_changes = true;
        }
        if args.dry_run {
            if !fatal.covered {
                break;
            }
            // Nothing changes: go on as if the segment were set aside.
            set_aside.push(segment.name.clone());
            segments = list_segments(&wal, &set_aside)?;
            continue;
        }
        if !fatal.covered {
            break;
        }
        segments = list_segments(&wal, &set_aside)?;
    }
    progress.finish();
    report.undecodable = undecodable.into_inner();
    for (instance, mut entry) in dropped {
        entry.name = names.get(&instance).cloned();
        report.dropped.push(entry);
    }
    let still = if report.needed && !args.dry_run {
        if report.applied_changes {
            // Records the mark vouched for may have been set aside.
            reset_mark(&wal, report.kept_last_lsn.unwrap_or(0).max(applied))?;
        }
        let segments = list_segments(&wal, &[])?;
        recovery_scan(dir, &segments, &[])?.fatal
    } else {
        None
    };
    print_salvage(&report, args.json, args.dry_run)?;
    if let Some(fatal) = still {
        return Err(ClientError::new(
            ErrorCode::FailedOperation,
            format!(
                "the log still does not recover (segment {} offset {}: {}); run salvage again or restore from a dump",
                fatal.segment, fatal.offset, fatal.reason
            ),
        ));
    }
    Ok(())
}

fn range_text(r: &DroppedRange) -> String {
    format!(
        "seq {}..{} ({} records, lsn {}..{})",
        r.seq_first, r.seq_last, r.records, r.lsn_first, r.lsn_last
    )
}

fn print_salvage(report: &SalvageReport, json: bool, dry_run: bool) -> Result<(), ClientError> {
    if json {
        return crate::admin::emit_json(report);
    }
    let mut text = String::new();
    if !report.needed {
        text.push_str(&format!(
            "{}: the log recovers as it is; nothing to salvage\n",
            report.data_dir
        ));
        if let Some(torn) = &report.torn_tail {
            text.push_str(&format!(
                "note: {}: torn final record ({}); the server cuts it off at start\n",
                torn.location, torn.message
            ));
        }
        return crate::admin::emit(text.as_bytes());
    }
    let verb = if dry_run { "would " } else { "" };
    for damage in &report.damage {
        text.push_str(&format!(
            "damage: {}: {}\n",
            damage.location, damage.message
        ));
    }
    text.push_str(&format!(
        "kept: every readable record before the damage; the log now ends at lsn {} (RocksDB applied lsn {})\n",
        report
            .kept_last_lsn
            .map_or_else(|| "none".to_string(), |l| l.to_string()),
        report.applied_lsn
    ));
    for (from, to) in &report.moved_aside {
        text.push_str(&format!("{verb}move aside: {from} -> {to}\n"));
    }
    for (name, bytes) in &report.rewritten {
        text.push_str(&format!(
            "{verb}rewrite: wal/{name} with its first {bytes} bytes (the records before the damage)\n"
        ));
    }
    if report.dropped.is_empty() {
        text.push_str("dropped: no decodable record\n");
    }
    for d in &report.dropped {
        let name = d
            .name
            .as_ref()
            .map_or_else(|| "(name unknown)".to_string(), |n| format!("\"{n}\""));
        let mut parts = Vec::new();
        if let Some(lost) = &d.lost {
            parts.push(format!("LOST {}", range_text(lost)));
        }
        if let Some(applied) = &d.already_applied {
            parts.push(format!(
                "already in RocksDB, not lost: {}",
                range_text(applied)
            ));
        }
        text.push_str(&format!(
            "dropped: checkpoint {name} (instance {}): {}\n",
            d.instance,
            parts.join("; ")
        ));
    }
    for u in &report.undecodable {
        let gap = &u.gap;
        let fate = if u.already_applied {
            "the records there are already in RocksDB, not lost"
        } else {
            "any records there are lost, whatever checkpoint they belonged to"
        };
        text.push_str(&format!(
            "undecodable: wal/{} bytes {}..{} ({} bytes, {}): {fate}\n",
            gap.segment,
            gap.start,
            gap.end,
            gap.end - gap.start,
            gap.reason
        ));
    }
    if dry_run {
        text.push_str("dry run: nothing was changed\n");
    } else {
        text.push_str(
            "the log now recovers: start the server; the moved-aside files are kept for analysis\n",
        );
    }
    crate::admin::emit(text.as_bytes())
}
