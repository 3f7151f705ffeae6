//! Every check of a data directory, read-only: each WAL segment's header
//! and records (judged by recovery's rule, walking past damage to list
//! every damaged stretch), the lsn sequence against RocksDB's applied
//! position, RocksDB's metadata invariants, every section read back — and
//! recovery's own verdict, from replaying the log in memory.

use std::cell::Cell;
use std::path::Path;

use ckpt_proto::{CkptError, SectionId};
use serde::Serialize;

use super::{
    held_by_another_process, require_data_dir, ReadOnlyFs, SecondaryDir, WalReader, LIVE_ATTEMPTS,
};
use crate::db::{Db, Loaded, View, CHUNK_BYTES};
use crate::state::StateMachine;
use crate::store::{replay_log, ReplayError};
use crate::wal::mark::MARK_FILE;
use crate::wal::record::{InstanceId, Lsn};
use crate::wal::segment::{check_durable_end, SegmentEnd, SEGMENT_HEADER_BYTES};

use super::wal::{tail_reason, torn_from, walk_with_resync, Gap};

/// One finding of [`verify`].
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// `wal/wal-….log offset 4096`, `rocksdb checkpoint "x" (instance 7) section "s"`.
    pub location: String,
    /// What is wrong.
    pub message: String,
}

/// What [`verify`] found.
#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
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
    /// Problems: the directory needs an operator.
    pub problems: Vec<Finding>,
    /// Things worth knowing that need no action.
    pub warnings: Vec<Finding>,
}

/// Told how [`verify`] goes (a progress bar); every method has a default
/// that does nothing.
pub trait VerifyProgress {
    /// The bytes the whole check reads (log and section data).
    fn total(&mut self, _bytes: u64) {}
    /// What is being checked now.
    fn step(&mut self, _what: String) {}
    /// `bytes` more were read.
    fn advance(&mut self, _bytes: u64) {}
    /// A problem was found (to print it at once).
    fn problem(&mut self, _finding: &Finding) {}
}

impl VerifyProgress for () {}

/// Checks the data directory `dir` without changing it (see the module
/// documentation). Problems are what would stop recovery or were damaged;
/// a directory recovery refuses always has at least one, at the place
/// recovery names. On a running server's directory a check that found
/// problems is repeated (up to three times in all) before they are
/// reported.
///
/// # Errors
/// `NOT_EXIST` for a path that is not a data directory; IO errors listing
/// the log. Damage is reported as findings, not errors.
pub fn verify(dir: &Path, progress: &mut dyn VerifyProgress) -> Result<VerifyReport, CkptError> {
    require_data_dir(dir)?;
    let live = held_by_another_process(dir);
    let mut attempt = 1;
    loop {
        let report = verify_once(dir, progress)?;
        // On a live directory a problem may be the server trimming the log
        // between the RocksDB open and the log scan: look again.
        if report.problems.is_empty() || !live || attempt == LIVE_ATTEMPTS {
            return Ok(report);
        }
        attempt += 1;
    }
}

fn verify_once(dir: &Path, progress: &mut dyn VerifyProgress) -> Result<VerifyReport, CkptError> {
    let mut report = VerifyReport {
        data_dir: dir.display().to_string(),
        ..Default::default()
    };
    let secondary = SecondaryDir::new()?;
    let db = match Db::open_read_only(&dir.join("db"), secondary.path()) {
        Ok(db) => Some(db),
        Err(error) => {
            report.problems.push(Finding {
                location: "db/".into(),
                message: format!("RocksDB does not open: {}", error.detail),
            });
            None
        }
    };
    let applied = db.as_ref().map(|(_, loaded)| loaded.applied.0);
    report.applied_lsn = applied;
    let wal = WalReader::open(&dir.join("wal"))?;
    let data_total: u64 = db
        .as_ref()
        .map(|(_, loaded)| loaded.instances.values().map(|m| m.memory_used).sum())
        .unwrap_or(0);
    progress.total(wal.footprint().0 + data_total);
    for other in wal.other_files() {
        if other.ends_with(".damaged") || other.contains(".damaged.") {
            report.warnings.push(Finding {
                location: format!("wal/{other}"),
                message: "a segment moved aside by salvage; not part of the log (keep it for analysis or delete it)".into(),
            });
        }
    }
    verify_wal(&wal, applied, &mut report, progress)?;
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
    if let Some((db, loaded)) = db {
        verify_rocksdb(&db, &loaded, &mut report, progress);
        recovery_verdict(dir, &db, loaded, &mut report, progress);
    }
    Ok(report)
}

/// Replays the log over the database in memory, as recovery would, and
/// makes sure its refusal is among the problems, at the place it names.
fn recovery_verdict(
    dir: &Path,
    db: &Db,
    loaded: Loaded,
    report: &mut VerifyReport,
    progress: &mut dyn VerifyProgress,
) {
    let applied = loaded.applied;
    let mut state = StateMachine::new(loaded.names, loaded.instances, loaded.next_instance);
    let fs = ReadOnlyFs::new(dir.join("wal"));
    let refusal = match replay_log(&fs, db, &mut state, applied, 1024, None, |_, scan, _| {
        Ok(scan.first_lsn.is_some())
    }) {
        Ok(_) => return,
        Err(ReplayError::Corrupt {
            segment,
            offset,
            reason,
            ..
        }) => Finding {
            location: format!("wal/{segment} offset {offset}"),
            message: format!(
                "{reason}; the server refuses to start here — run `ckpt-tool salvage`"
            ),
        },
        Err(ReplayError::Other(error)) => Finding {
            location: "wal/".into(),
            message: format!("recovery fails: {}", error.detail),
        },
    };
    if !report
        .problems
        .iter()
        .any(|p| p.location == refusal.location)
    {
        progress.problem(&refusal);
        report.problems.push(refusal);
    }
}

fn verify_wal(
    wal: &WalReader,
    applied: Option<u64>,
    report: &mut VerifyReport,
    progress: &mut dyn VerifyProgress,
) -> Result<(), CkptError> {
    let applied_or_zero = applied.unwrap_or(0);
    let previous: Cell<Option<u64>> = Cell::new(None);
    let after_gap = Cell::new(false);
    // The highest lsn recovery would keep in the log.
    let mut kept_last: Option<u64> = None;
    for (position, segment) in wal.segments().iter().enumerate() {
        progress.step(format!("WAL {}", segment.name));
        report.segments += 1;
        let bytes = wal.read(position)?;
        let at = |offset: u64| format!("wal/{} offset {offset}", segment.name);
        let judged = wal.judge(position, &bytes);
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
                if matches!(problem, SegmentEnd::Torn { .. }) {
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
            progress.problem(p);
        }
        report.problems.extend(problems);
        report.warnings.extend(warnings);
        progress.advance(segment.len);
    }
    if let Err(reason) =
        check_durable_end(wal.durable_mark(), kept_last.map(Lsn), Lsn(applied_or_zero))
    {
        // Where recovery names it: the end of the last segment.
        let location = wal.segments().last().map_or_else(
            || format!("wal/{MARK_FILE}"),
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
    db: &Db,
    loaded: &Loaded,
    report: &mut VerifyReport,
    progress: &mut dyn VerifyProgress,
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
                    progress.problem(&f);
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
            progress.problem(&f);
            report.problems.push(f);
        }
        // Every stored chunk belongs to a section and lies below its size
        // (this scan also reads, and so checksums, every data block).
        let chunks_max: u64 = sections
            .iter()
            .map(|(_, s)| s.size.div_ceil(CHUNK_BYTES))
            .sum();
        let chunks = match db.count_data_keys(meta.column_family, *instance) {
            Ok(stored) if stored > chunks_max => Some(format!(
                "{stored} data chunks are stored, the sections' sizes allow at most {chunks_max}: data past a section's end or of deleted sections"
            )),
            Ok(_) => None,
            Err(error) => Some(format!("data unreadable: {}", error.detail)),
        };
        if let Some(message) = chunks {
            let finding = Finding {
                location: place.clone(),
                message,
            };
            progress.problem(&finding);
            report.problems.push(finding);
        }
        report.warnings.extend(all_zero);
    }
    for (name, instance) in &loaded.names {
        let target = instances.iter().find(|(i, _)| i == instance);
        let message = match target {
            None => format!("points at instance {}, which does not exist", instance.0),
            Some((_, meta)) if meta.unlinked || &meta.name != name => format!(
                "points at instance {} named \"{}\"{}",
                instance.0,
                meta.name,
                if meta.unlinked { " (unlinked)" } else { "" }
            ),
            Some(_) => continue,
        };
        let finding = Finding {
            location: format!("rocksdb name index \"{name}\""),
            message,
        };
        progress.problem(&finding);
        report.problems.push(finding);
    }
}

/// Reads a whole section back (RocksDB checks its block checksums on
/// read); says whether a non-empty section read as nothing but zeros
/// (possible, but also what missing data chunks look like).
fn read_back(
    view: &View<'_>,
    column_family: u32,
    instance: InstanceId,
    id: &SectionId,
    size: u64,
    progress: &mut dyn VerifyProgress,
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
        progress.advance(len);
        offset += len;
    }
    Ok(size > 0 && !nonzero)
}
