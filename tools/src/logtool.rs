//! Offline commands on a data directory's log and RocksDB: `wal` (print
//! records), `verify --data-dir` (every checksum and invariant) and
//! `salvage` (cut the log back to its sound prefix after corruption).
//! Each takes the directory's lock first and refuses a directory in use.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use ckpt_client::ClientError;
use ckpt_proto::{ErrorCode, SectionId};
use ckpt_storage::db::Loaded;
use ckpt_storage::wal::segment::SEGMENT_HEADER_BYTES;
use ckpt_storage::{Record, RecordBody};
use serde::Serialize;

use crate::cli::{SalvageArgs, WalArgs};
use crate::datadir::{io_error, library, lock, open_db, wal_dir};
use crate::progress::{human_bytes, Progress};
use crate::walscan::{
    judge_segment, list_segments, read_mark, record_json, record_line, walk_with_resync, Gap,
    SegmentFile, Tail,
};
use ckpt_storage::wal::segment::check_durable_end;
use ckpt_storage::Lsn;

fn read_segment(segment: &SegmentFile) -> Result<Vec<u8>, ClientError> {
    std::fs::read(&segment.path).map_err(|e| io_error("reading", &segment.path, &e))
}

/// Instance ids to names, from RocksDB's metadata (as on disk).
fn names_from_db(loaded: &Loaded) -> BTreeMap<u64, String> {
    loaded
        .instances
        .iter()
        .map(|(id, meta)| (id.0, meta.name.to_string()))
        .collect()
}

/// RocksDB's applied position and instance names, if RocksDB opens.
fn db_facts(dir: &Path) -> Result<(u64, BTreeMap<u64, String>), ClientError> {
    let (db, loaded) = open_db(dir)?;
    let facts = (loaded.applied.0, names_from_db(&loaded));
    drop(db);
    Ok(facts)
}

/// `wal`.
///
/// # Errors
/// `IN_USE` for a held directory; `FAILED_OPERATION` when the log holds
/// damage (after printing everything decodable).
pub fn wal(args: &WalArgs) -> Result<(), ClientError> {
    let dir = &args.data_dir;
    let _lock = lock(dir)?;
    let mut names = match db_facts(dir) {
        Ok((_, names)) => names,
        Err(error) => {
            eprintln!("warning: names from RocksDB unavailable ({error}); using the log's create records only");
            BTreeMap::new()
        }
    };
    let wanted = args.checkpoint.as_ref().map(|n| n.to_string());
    let (segments, _) = list_segments(&wal_dir(dir))?;
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    let mut problems = 0usize;
    let mut shown = 0u64;
    let count = segments.len();
    let durable_mark = read_mark(&wal_dir(dir))?;
    for (position, segment) in segments.iter().enumerate() {
        let bytes = read_segment(segment)?;
        let judged = judge_segment(&bytes, segment, position, count, durable_mark);
        if judged.first_lsn.is_none() {
            let torn = matches!(judged.end, Tail::Torn { .. });
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

fn tail_reason(tail: &Tail) -> String {
    match tail {
        Tail::Clean => "clean".into(),
        Tail::Torn { reason, .. } => format!("torn: {reason}"),
        Tail::Corrupt { reason, .. } => reason.clone(),
    }
}

/// Whether recovery cuts the segment judged `end` off as torn at or before
/// `offset`: everything from a torn tail on is cut, decodable or not.
fn torn_from(end: &Tail, offset: u64) -> bool {
    matches!(end, Tail::Torn { offset: torn, .. } if *torn <= offset)
}

/// One finding of `verify --data-dir`.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// `wal/wal-….log offset 4096`, `rocksdb checkpoint "x" (instance 7) section "s"`.
    pub location: String,
    /// What is wrong.
    pub message: String,
}

/// What `verify --data-dir` found.
#[derive(Debug, Default, Serialize)]
pub struct DataDirReport {
    /// The directory.
    pub data_dir: String,
    /// WAL segments read.
    pub segments: u64,
    /// Records decoded.
    pub records: u64,
    /// Lowest lsn in the log.
    pub first_lsn: Option<u64>,
    /// Highest lsn in the log.
    pub last_lsn: Option<u64>,
    /// RocksDB's applied position.
    pub applied_lsn: Option<u64>,
    /// Checkpoint instances in RocksDB.
    pub checkpoints: u64,
    /// Sections in RocksDB.
    pub sections: u64,
    /// Section bytes read back.
    pub data_bytes: u64,
    /// Problems (exit status 1).
    pub problems: Vec<Finding>,
    /// Things worth knowing that need no action.
    pub warnings: Vec<Finding>,
}

/// `verify --data-dir DIR`.
///
/// # Errors
/// `IN_USE` for a held directory; `FAILED_OPERATION` when problems were
/// found (each printed).
pub fn verify_data_dir(dir: &Path, json: bool) -> Result<(), ClientError> {
    let _lock = lock(dir)?;
    let mut report = DataDirReport {
        data_dir: dir.display().to_string(),
        ..Default::default()
    };
    let db = match open_db(dir) {
        Ok(db) => Some(db),
        Err(error) => {
            report.problems.push(Finding {
                location: "db/".into(),
                message: format!("RocksDB does not open: {}", error.message),
            });
            None
        }
    };
    let applied = db.as_ref().map(|(_, loaded)| loaded.applied.0);
    report.applied_lsn = applied;
    let (segments, others) = list_segments(&wal_dir(dir))?;
    let wal_total: u64 = segments.iter().map(|s| s.len).sum();
    let data_total: u64 = db
        .as_ref()
        .map(|(_, loaded)| loaded.instances.values().map(|m| m.memory_used).sum())
        .unwrap_or(0);
    let mut progress = Progress::new("verify", wal_total + data_total);
    for other in &others {
        if other.ends_with(".damaged") || other.contains(".damaged.") {
            report.warnings.push(Finding {
                location: format!("wal/{other}"),
                message: "a segment moved aside by salvage; not part of the log (keep it for analysis or delete it)".into(),
            });
        }
    }
    verify_wal(
        &wal_dir(dir),
        &segments,
        applied,
        &mut report,
        &mut progress,
    )?;
    if let (Some(applied), Some(last)) = (applied, report.last_lsn) {
        if last > applied {
            report.warnings.push(Finding {
                location: "db/".into(),
                message: format!(
                    "RocksDB is {} records behind the log (applied lsn {applied}, the log ends at {last}); the server replays them at start; the RocksDB checks cover the state at lsn {applied}",
                    last - applied
                ),
            });
        }
    }
    if let Some((db, loaded)) = &db {
        verify_rocksdb(db, loaded, &mut report, &mut progress);
    }
    progress.finish();
    drop(db);
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

fn print_findings(report: &DataDirReport, json: bool) -> Result<(), ClientError> {
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

fn verify_wal(
    wal: &Path,
    segments: &[SegmentFile],
    applied: Option<u64>,
    report: &mut DataDirReport,
    progress: &mut Progress,
) -> Result<(), ClientError> {
    let applied_or_zero = applied.unwrap_or(0);
    let previous: std::cell::Cell<Option<u64>> = std::cell::Cell::new(None);
    let after_gap = std::cell::Cell::new(false);
    let count = segments.len();
    let durable_mark = read_mark(wal)?;
    // The highest lsn recovery would keep in the log.
    let mut kept_last: Option<u64> = None;
    for (position, segment) in segments.iter().enumerate() {
        progress.step(format!("WAL {}", segment.name));
        report.segments += 1;
        let bytes = read_segment(segment)?;
        let at = |offset: u64| format!("wal/{} offset {offset}", segment.name);
        let judged = judge_segment(&bytes, segment, position, count, durable_mark);
        if let Some((_, record)) = judged.records.last() {
            kept_last = Some(kept_last.map_or(record.lsn.0, |k| k.max(record.lsn.0)));
        }
        let mut problems: Vec<Finding> = Vec::new();
        let mut warnings: Vec<Finding> = Vec::new();
        match (&judged.end, judged.first_lsn) {
            (problem, None) => {
                let finding = Finding {
                    location: at(0),
                    message: tail_reason(problem),
                };
                if matches!(problem, Tail::Torn { .. }) {
                    warnings.push(finding);
                } else {
                    problems.push(finding);
                }
            }
            (_, Some(lsn)) if lsn.0 != segment.first_lsn => problems.push(Finding {
                location: at(16),
                message: format!(
                    "the header names first lsn {}, the file name {}",
                    lsn.0, segment.first_lsn
                ),
            }),
            _ => {}
        }
        let mut first_in_segment = true;
        let mut gaps: Vec<Gap> = Vec::new();
        walk_with_resync(
            &segment.name,
            &bytes,
            SEGMENT_HEADER_BYTES.min(bytes.len()),
            segment.first_lsn.saturating_sub(1),
            |offset, _, record| {
                if torn_from(&judged.end, offset) {
                    // In the torn tail recovery cuts off: written but never
                    // acknowledged as durable (pages written back out of
                    // order can leave whole records there).
                    return;
                }
                let lsn = record.lsn.0;
                report.records += 1;
                report.first_lsn = Some(report.first_lsn.map_or(lsn, |f| f.min(lsn)));
                report.last_lsn = Some(report.last_lsn.map_or(lsn, |l| l.max(lsn)));
                if first_in_segment && lsn != segment.first_lsn {
                    problems.push(Finding {
                        location: at(offset),
                        message: format!(
                            "the segment's first record has lsn {lsn}, its header says {}",
                            segment.first_lsn
                        ),
                    });
                }
                first_in_segment = false;
                let expected = match previous.get() {
                    // Right after an undecodable stretch: whatever follows
                    // is not compared with what preceded it.
                    _ if after_gap.replace(false) => lsn,
                    Some(p) => p + 1,
                    // The log may start anywhere at or below the applied
                    // position; above it recovery needs applied + 1.
                    None if lsn <= applied_or_zero + 1 => lsn,
                    None => applied_or_zero + 1,
                };
                if lsn != expected {
                    if lsn > expected && lsn - 1 <= applied_or_zero {
                        warnings.push(Finding {
                            location: at(offset),
                            message: format!(
                                "records {expected}..{} are not in the log; RocksDB already holds them (applied lsn {applied_or_zero})",
                                lsn - 1
                            ),
                        });
                    } else if lsn > expected {
                        problems.push(Finding {
                            location: at(offset),
                            message: format!(
                                "lsn {lsn} follows lsn {}: records {expected}..{} are missing (RocksDB applied lsn {applied_or_zero})",
                                expected - 1,
                                lsn - 1
                            ),
                        });
                    } else {
                        problems.push(Finding {
                            location: at(offset),
                            message: format!(
                                "lsn {lsn} where {expected} was expected (lsns go backwards)"
                            ),
                        });
                    }
                }
                previous.set(Some(lsn));
            },
            |gap| {
                if !torn_from(&judged.end, gap.start) {
                    after_gap.set(true);
                }
                gaps.push(gap);
            },
        );
        for gap in gaps {
            let torn = torn_from(&judged.end, gap.start);
            let finding = Finding {
                location: at(gap.start),
                message: if torn {
                    format!(
                        "torn tail ({} bytes: {}); the server cuts it off at start — normal after a crash or power loss",
                        gap.end - gap.start,
                        gap.reason
                    )
                } else {
                    format!(
                        "{} bytes do not decode ({}); records there are unreadable — run `ckpt-tool salvage` to recover the log's prefix",
                        gap.end - gap.start,
                        gap.reason
                    )
                },
            };
            if torn {
                warnings.push(finding);
            } else {
                problems.push(finding);
            }
        }
        for p in &problems {
            progress.println(&format!("problem: {}: {}", p.location, p.message));
        }
        report.problems.extend(problems);
        report.warnings.extend(warnings);
        progress.inc(segment.len);
    }
    if let Err(reason) = check_durable_end(durable_mark, kept_last.map(Lsn), Lsn(applied_or_zero)) {
        // Where recovery names it: the end of the last segment.
        let location = segments.last().map_or_else(
            || format!("wal/{}", ckpt_storage::wal::mark::MARK_FILE),
            |last| format!("wal/{} offset {}", last.name, last.len),
        );
        report.problems.push(Finding {
            location,
            message: reason,
        });
    }
    Ok(())
}

fn verify_rocksdb(
    db: &ckpt_storage::db::Db,
    loaded: &Loaded,
    report: &mut DataDirReport,
    progress: &mut Progress,
) {
    let view = db.snapshot();
    let instances = match view.instances() {
        Ok(instances) => instances,
        Err(error) => {
            report.problems.push(Finding {
                location: "rocksdb metadata".into(),
                message: format!("cannot list checkpoints: {}", error.detail),
            });
            return;
        }
    };
    for (instance, meta) in &instances {
        report.checkpoints += 1;
        let place = format!(
            "rocksdb checkpoint \"{}\" (instance {})",
            meta.name, instance.0
        );
        progress.step(format!("RocksDB checkpoint \"{}\"", meta.name));
        let mut found: Vec<Finding> = Vec::new();
        let mut all_zero: Vec<Finding> = Vec::new();
        let mut problem = |location: String, message: String| {
            found.push(Finding { location, message });
        };
        if instance.0 >= loaded.next_instance {
            problem(
                place.clone(),
                format!(
                    "instance id {} is not below the next instance id {}",
                    instance.0, loaded.next_instance
                ),
            );
        }
        if !meta.unlinked && loaded.names.get(&meta.name) != Some(instance) {
            problem(
                place.clone(),
                format!(
                    "the name index points {} at {:?}, not at this instance",
                    meta.name,
                    loaded.names.get(&meta.name).map(|i| i.0)
                ),
            );
        }
        let sections = match view.sections(*instance) {
            Ok(sections) => sections,
            Err(error) => {
                problem(
                    place.clone(),
                    format!("cannot list sections: {}", error.detail),
                );
                for f in found {
                    progress.println(&format!("problem: {}: {}", f.location, f.message));
                    report.problems.push(f);
                }
                continue;
            }
        };
        let a = &meta.attributes;
        let used: u64 = sections.iter().map(|(_, s)| s.size).sum();
        if sections.len() as u64 != u64::from(meta.section_count) {
            problem(
                place.clone(),
                format!(
                    "metadata counts {} sections, {} are stored",
                    meta.section_count,
                    sections.len()
                ),
            );
        }
        if used != meta.memory_used {
            problem(
                place.clone(),
                format!(
                    "metadata says {} bytes used, the sections' sizes sum to {used}",
                    meta.memory_used
                ),
            );
        }
        if sections.len() as u64 > u64::from(a.max_sections) {
            problem(
                place.clone(),
                format!(
                    "{} sections, maxSections is {}",
                    sections.len(),
                    a.max_sections
                ),
            );
        }
        if used > a.checkpoint_size {
            problem(
                place.clone(),
                format!("{used} bytes used, checkpointSize is {}", a.checkpoint_size),
            );
        }
        for (id, section) in &sections {
            report.sections += 1;
            let at = format!("{place} section \"{id}\"");
            if section.size > a.max_section_size {
                problem(
                    at.clone(),
                    format!(
                        "{} bytes, maxSectionSize is {}",
                        section.size, a.max_section_size
                    ),
                );
            }
            if !id.is_default() && id.as_bytes().len() as u64 > a.max_section_id_size {
                problem(
                    at.clone(),
                    format!(
                        "id of {} bytes, maxSectionIdSize is {}",
                        id.as_bytes().len(),
                        a.max_section_id_size
                    ),
                );
            }
            match read_back(
                &view,
                meta.column_family,
                *instance,
                id,
                section.size,
                progress,
            ) {
                Ok(false) => {}
                Ok(true) => all_zero.push(Finding {
                    location: at.clone(),
                    message: format!(
                        "all {} bytes read as zeros: a section never written, or its data chunks are missing",
                        section.size
                    ),
                }),
                Err(message) => problem(at.clone(), message),
            }
            report.data_bytes += section.size;
        }
        for f in found {
            progress.println(&format!("problem: {}: {}", f.location, f.message));
            report.problems.push(f);
        }
        // Every stored chunk belongs to a section and lies below its size
        // (this scan also reads, and so checksums, every data block).
        let chunks_max: u64 = sections
            .iter()
            .map(|(_, s)| s.size.div_ceil(ckpt_storage::CHUNK_BYTES))
            .sum();
        match db.count_data_keys(meta.column_family, *instance) {
            Ok(stored) if stored > chunks_max => {
                let location = place.clone();
                let message = format!(
                    "{stored} data chunks are stored, the sections' sizes allow at most {chunks_max}: data past a section's end or of deleted sections"
                );
                progress.println(&format!("problem: {location}: {message}"));
                report.problems.push(Finding { location, message });
            }
            Ok(_) => {}
            Err(error) => {
                let location = place.clone();
                let message = format!("data unreadable: {}", error.detail);
                progress.println(&format!("problem: {location}: {message}"));
                report.problems.push(Finding { location, message });
            }
        }
        report.warnings.extend(all_zero);
    }
    for (name, instance) in &loaded.names {
        let target = instances.iter().find(|(i, _)| i == instance);
        match target {
            None => {
                let location = format!("rocksdb name index \"{name}\"");
                let message = format!("points at instance {}, which does not exist", instance.0);
                progress.println(&format!("problem: {location}: {message}"));
                report.problems.push(Finding { location, message });
            }
            Some((_, meta)) if meta.unlinked || &meta.name != name => {
                let location = format!("rocksdb name index \"{name}\"");
                let message = format!(
                    "points at instance {} named \"{}\"{}",
                    instance.0,
                    meta.name,
                    if meta.unlinked { " (unlinked)" } else { "" }
                );
                progress.println(&format!("problem: {location}: {message}"));
                report.problems.push(Finding { location, message });
            }
            Some(_) => {}
        }
    }
}

/// Reads a whole section back (RocksDB checks its block checksums on
/// read); says whether a non-empty section read as nothing but zeros
/// (possible, but also what missing data chunks look like).
fn read_back(
    view: &ckpt_storage::db::View<'_>,
    column_family: u32,
    instance: ckpt_storage::InstanceId,
    id: &SectionId,
    size: u64,
    progress: &mut Progress,
) -> Result<bool, String> {
    const STEP: u64 = 4 * 1024 * 1024;
    let mut offset = 0;
    let mut nonzero = false;
    while offset < size {
        let len = (size - offset).min(STEP);
        match view.read_data(column_family, instance, id, offset, len) {
            Ok(data) if data.len() as u64 == len => {
                nonzero = nonzero || data.iter().any(|&b| b != 0);
            }
            Ok(data) => {
                return Err(format!(
                    "reading {len} bytes at offset {offset} returned {}",
                    data.len()
                ))
            }
            Err(error) => {
                return Err(format!(
                    "data unreadable at offset {offset}: {}",
                    error.detail
                ))
            }
        }
        progress.inc(len);
        offset += len;
    }
    Ok(size > 0 && !nonzero)
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

/// Where recovery would stop, scanning as the store does.
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

/// Scans segments from `from` like recovery: each judged by
/// [`judge_segment`] (recovery's own rule, under the durable mark); records
/// above `applied` must follow each other; damage stops it.
fn scan_like_recovery(
    segments: &[SegmentFile],
    from: usize,
    applied: u64,
    durable_mark: Option<Lsn>,
    names: &mut BTreeMap<u64, String>,
) -> Result<Scan, ClientError> {
    let mut expected = applied + 1;
    let mut kept_last_lsn = None;
    let mut torn_tail = None;
    let count = segments.len();
    for (index, segment) in segments.iter().enumerate().skip(from) {
        let covered = segments
            .get(index + 1)
            .is_some_and(|next| next.first_lsn <= applied + 1);
        let bytes = read_segment(segment)?;
        let fatal = |offset: u64, reason: String| Fatal {
            segment: index,
            offset,
            reason,
            covered,
            durable_end: false,
        };
        let judged = judge_segment(&bytes, segment, index, count, durable_mark);
        if let Some(lsn) = judged.first_lsn {
            if lsn.0 != segment.first_lsn {
                return Ok(Scan {
                    fatal: Some(fatal(
                        0,
                        format!(
                            "the header names first lsn {}, the file name {}",
                            lsn.0, segment.first_lsn
                        ),
                    )),
                    kept_last_lsn,
                    torn_tail,
                    names: std::mem::take(names),
                });
            }
        }
        for (offset, record) in &judged.records {
            let lsn = record.lsn.0;
            if lsn > applied {
                if lsn != expected {
                    return Ok(Scan {
                        fatal: Some(fatal(
                            *offset,
                            format!("expected lsn {expected}, found {lsn} (records are missing)"),
                        )),
                        kept_last_lsn,
                        torn_tail,
                        names: std::mem::take(names),
                    });
                }
                expected += 1;
            }
            if let RecordBody::CheckpointCreate { name, .. } = &record.entry.body {
                names.insert(record.entry.instance.0, name.to_string());
            }
            kept_last_lsn = Some(kept_last_lsn.map_or(lsn, |k: u64| k.max(lsn)));
        }
        match judged.end {
            Tail::Clean => {}
            Tail::Torn { offset, reason } => {
                torn_tail = Some(Finding {
                    location: format!("wal/{} offset {offset}", segment.name),
                    message: reason,
                });
            }
            Tail::Corrupt { offset, reason } => {
                return Ok(Scan {
                    fatal: Some(fatal(offset, reason)),
                    kept_last_lsn,
                    torn_tail,
                    names: std::mem::take(names),
                })
            }
        }
    }
    if let Err(reason) = check_durable_end(durable_mark, kept_last_lsn.map(Lsn), Lsn(applied)) {
        let last = count.saturating_sub(1);
        return Ok(Scan {
            fatal: Some(Fatal {
                segment: last,
                offset: segments.get(last).map_or(0, |s| s.len),
                reason,
                covered: false,
                durable_end: true,
            }),
            kept_last_lsn,
            torn_tail,
            names: std::mem::take(names),
        });
    }
    Ok(Scan {
        fatal: None,
        kept_last_lsn,
        torn_tail,
        names: std::mem::take(names),
    })
}

/// Replaces the durable mark by one stating `lsn`, durably (a fresh file
/// renamed over the old one): after salvage dropped records the old mark
/// may claim more than the log holds.
fn reset_mark(wal: &Path, lsn: u64) -> Result<(), ClientError> {
    let path = wal.join(ckpt_storage::wal::mark::MARK_FILE);
    let temporary = wal.join(format!("{}.salvage", ckpt_storage::wal::mark::MARK_FILE));
    let mut bytes = vec![0u8; ckpt_storage::wal::mark::BASELINE_BYTES as usize];
    bytes[..ckpt_storage::wal::mark::MARK_SLOT_BYTES]
        .copy_from_slice(&ckpt_storage::wal::mark::encode_slot(Lsn(lsn)));
    let mut file = File::create(&temporary).map_err(|e| io_error("creating", &temporary, &e))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error("writing", &temporary, &e))?;
    drop(file);
    std::fs::rename(&temporary, &path).map_err(|e| io_error("renaming to", &path, &e))?;
    sync_dir(wal)
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
    let (applied, mut names) = match db_facts(dir) {
        Ok(facts) => facts,
        Err(error) => {
            eprintln!(
                "warning: RocksDB's applied position is unknown ({error}); every record is treated as needed"
            );
            (0, BTreeMap::new())
        }
    };
    report.applied_lsn = applied;
    let (mut segments, _) = list_segments(&wal)?;
    let durable_mark = read_mark(&wal)?;
    let total: u64 = segments.iter().map(|s| s.len).sum();
    let mut progress = Progress::new("salvage", total);
    progress.step(format!("scanning {} segments", segments.len()));
    let mut dropped: BTreeMap<u64, DroppedCheckpoint> = BTreeMap::new();
    let undecodable: std::cell::RefCell<Vec<Undecodable>> = Default::default();
    let pending: std::cell::RefCell<Vec<usize>> = Default::default();
    let mut from = 0usize;
    loop {
        let scan = scan_like_recovery(&segments, from, applied, durable_mark, &mut names)?;
        names = scan.names;
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
            // Nothing changes: go on after the segment that would be set aside.
            from = fatal.segment + 1;
            continue;
        }
        let (relisted, _) = list_segments(&wal)?;
        segments = relisted;
        from = segments
            .iter()
            .position(|s| s.first_lsn > segment.first_lsn)
            .unwrap_or(segments.len());
        if !fatal.covered {
            break;
        }
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
        let (segments, _) = list_segments(&wal)?;
        let mut scratch = BTreeMap::new();
        scan_like_recovery(&segments, 0, applied, read_mark(&wal)?, &mut scratch)?.fatal
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
