//! `dump` and `restore`, online (through the server) and offline (on a data
//! directory no server holds).
//!
//! A dump is one point in time: online, the server's `DumpBegin` takes a
//! RocksDB snapshot and every `DumpRead` reads from it while writers go on;
//! offline, the store is opened (recovering from the log) and read through
//! `Store::snapshot`. Data streams in 4 MiB records, so memory stays flat.
//!
//! A restore reads the whole dump once to check every checksum and the
//! structure, and only then writes anything.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use ckpt_client::{Client, ClientError};
use ckpt_proto::wire::{DumpCheckpoint, Reply, Request};
use ckpt_proto::{now_ns, CheckpointName, ErrorCode, SectionDescriptor, SectionId, WriteElement};
use ckpt_storage::{InstanceId, Op, Outcome, Store};
use futures::StreamExt;
use serde::Serialize;

use crate::cli::{DumpArgs, RestoreArgs};
use crate::datadir::{io_error, library};
use crate::dump::{
    check_dump, CheckpointHeader, DumpInfo, DumpReader, DumpRecord, DumpWriter, SectionHeader,
    StructureChecker, DATA_CHUNK_BYTES,
};
use crate::progress::{human_bytes, Progress};

/// DumpRead calls kept in flight per section.
const READS_IN_FLIGHT: usize = 4;

fn tool_name() -> String {
    format!("ckpt-tool {}", env!("CARGO_PKG_VERSION"))
}

/// Where a dump goes: a file written beside its final name and renamed
/// into place once complete and synced, or stdout.
enum Sink {
    File(BufWriter<File>),
    Stdout(BufWriter<std::io::Stdout>),
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::File(f) => f.write(buf),
            Sink::Stdout(s) => s.write(buf),
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::File(f) => f.write_all(buf),
            Sink::Stdout(s) => s.write_all(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::File(f) => f.flush(),
            Sink::Stdout(s) => s.flush(),
        }
    }
}

fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    dest.with_file_name(name)
}

fn open_sink(dest: &Path) -> Result<Sink, ClientError> {
    if dest == Path::new("-") {
        return Ok(Sink::Stdout(BufWriter::with_capacity(
            1 << 20,
            std::io::stdout(),
        )));
    }
    let partial = partial_path(dest);
    let file = File::create(&partial).map_err(|e| io_error("creating", &partial, &e))?;
    Ok(Sink::File(BufWriter::with_capacity(1 << 20, file)))
}

/// Makes a finished dump durable and gives it its name.
fn close_sink(sink: Sink, dest: &Path) -> Result<(), ClientError> {
    match sink {
        Sink::Stdout(mut s) => s
            .flush()
            .map_err(|e| library(format!("writing to stdout: {e}"))),
        Sink::File(f) => {
            let partial = partial_path(dest);
            let file = f
                .into_inner()
                .map_err(|e| io_error("writing", &partial, e.error()))?;
            file.sync_all()
                .map_err(|e| io_error("syncing", &partial, &e))?;
            drop(file);
            std::fs::rename(&partial, dest).map_err(|e| io_error("renaming to", dest, &e))?;
            if let Some(parent) = dest.parent() {
                let parent = if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                };
                if let Ok(dir) = File::open(parent) {
                    let _ = dir.sync_all();
                }
            }
            Ok(())
        }
    }
}

fn discard_sink(dest: &Path) {
    if dest != Path::new("-") {
        let _ = std::fs::remove_file(partial_path(dest));
    }
}

/// What `dump` reports.
#[derive(Debug, Serialize)]
pub struct DumpReport {
    /// The file written (`-` = stdout).
    pub file: String,
    /// Checkpoints dumped, in file order.
    pub checkpoints: Vec<String>,
    /// Sections dumped.
    pub sections: u64,
    /// Section bytes (holes included).
    pub data_bytes: u64,
    /// Size of the dump file.
    pub bytes: u64,
    /// Records in the file, End included.
    pub records: u64,
    /// Where the dump was taken from.
    pub source: String,
}

impl DumpReport {
    fn text(&self) -> String {
        format!(
            "dumped {} checkpoints ({} sections, {} of data) from {} to {} ({} bytes, {} records)\n",
            self.checkpoints.len(),
            self.sections,
            human_bytes(self.data_bytes),
            self.source,
            self.file,
            self.bytes,
            self.records
        )
    }
}

fn header_of(c: &DumpCheckpoint) -> CheckpointHeader {
    CheckpointHeader {
        name: c.name.clone(),
        attributes: c.attributes.clone(),
        generated_next: c.generated_next,
        seq: c.seq,
        sections: c.sections.len() as u32,
        data_bytes: c.sections.iter().map(|s| s.section_size).sum(),
    }
}

fn section_header(s: &SectionDescriptor) -> SectionHeader {
    SectionHeader {
        id: s.section_id.clone(),
        expiration_time: s.expiration_time,
        state: s.state,
        last_update: s.last_update,
        size: s.section_size,
    }
}

/// Writes one chunk of section data; all-zero chunks are left out (they
/// read back as zeros: a hole).
fn put_chunk<W: Write>(
    writer: &mut DumpWriter<W>,
    progress: &mut Progress,
    offset: u64,
    data: &[u8],
) -> Result<(), ClientError> {
    if data.iter().any(|&b| b != 0) {
        writer
            .write_data(offset, data)
            .map_err(|e| library(format!("writing the dump: {e}")))?;
    }
    progress.inc(data.len() as u64);
    Ok(())
}

fn write_err(e: std::io::Error) -> ClientError {
    library(format!("writing the dump: {e}"))
}

fn chunk_offsets(size: u64) -> Vec<u64> {
    (0..size.div_ceil(DATA_CHUNK_BYTES as u64))
        .map(|i| i * DATA_CHUNK_BYTES as u64)
        .collect()
}

/// `dump`: chooses online or offline.
///
/// # Errors
/// Connection, storage and IO errors; the partial file is removed.
pub async fn dump(addr: &str, args: &DumpArgs) -> Result<(), ClientError> {
    let mut sink = open_sink(&args.output)?;
    let result = match &args.data_dir {
        Some(dir) => dump_offline(dir, args, &mut sink),
        None => dump_online(addr, args, &mut sink).await,
    };
    let report = match result {
        Ok(report) => {
            if let Err(error) = close_sink(sink, &args.output) {
                discard_sink(&args.output);
                return Err(error);
            }
            report
        }
        Err(error) => {
            drop(sink);
            discard_sink(&args.output);
            return Err(error);
        }
    };
    if args.json {
        return crate::admin::emit_json_to_stdout_or_stderr(&report, args.output == Path::new("-"));
    }
    let text = report.text();
    if args.output == Path::new("-") {
        eprint!("{text}");
        Ok(())
    } else {
        crate::admin::emit(text.as_bytes())
    }
}

async fn dump_online(
    addr: &str,
    args: &DumpArgs,
    sink: &mut Sink,
) -> Result<DumpReport, ClientError> {
    let client = crate::connect(addr).await?;
    let names = if args.all {
        Vec::new()
    } else {
        args.names.clone()
    };
    let (dump, checkpoints) = match client.request(Request::DumpBegin { names }).await? {
        Reply::Dump { dump, checkpoints } => (dump, checkpoints),
        other => {
            return Err(library(format!(
                "protocol error: DumpBegin answered with {other:?}"
            )))
        }
    };
    let file = args.output.display().to_string();
    let result = dump_online_body(&client, dump, &checkpoints, addr, file, sink).await;
    let ended = client.request(Request::DumpEnd { dump }).await;
    let _ = client.finalize().await;
    let report = result?;
    ended?;
    Ok(report)
}

async fn dump_online_body(
    client: &Client,
    dump: u64,
    checkpoints: &[DumpCheckpoint],
    addr: &str,
    file: String,
    sink: &mut Sink,
) -> Result<DumpReport, ClientError> {
    let source = format!("server {addr}");
    let total: u64 = checkpoints
        .iter()
        .flat_map(|c| c.sections.iter())
        .map(|s| s.section_size)
        .sum();
    let mut progress = Progress::new("dump", total);
    let mut writer = DumpWriter::new(&mut *sink).map_err(write_err)?;
    writer
        .write(&DumpRecord::Info(DumpInfo {
            created_at_ns: now_ns(),
            checkpoints: checkpoints.len() as u32,
            source: source.clone(),
            tool: tool_name(),
        }))
        .map_err(write_err)?;
    let mut sections = 0u64;
    for (index, checkpoint) in checkpoints.iter().enumerate() {
        let header = header_of(checkpoint);
        progress.step(format!(
            "checkpoint {}/{} \"{}\" ({} sections, {})",
            index + 1,
            checkpoints.len(),
            checkpoint.name,
            header.sections,
            human_bytes(header.data_bytes)
        ));
        writer
            .write(&DumpRecord::Checkpoint(header))
            .map_err(write_err)?;
        for section in &checkpoint.sections {
            sections += 1;
            writer
                .write(&DumpRecord::Section(section_header(section)))
                .map_err(write_err)?;
            let size = section.section_size;
            let reads = futures::stream::iter(chunk_offsets(size))
                .map(|offset| {
                    let len = (size - offset).min(DATA_CHUNK_BYTES as u64);
                    let request = Request::DumpRead {
                        dump,
                        checkpoint: index as u32,
                        section_id: section.section_id.clone(),
                        offset,
                        size: len,
                    };
                    async move { (offset, len, client.request(request).await) }
                })
                .buffered(READS_IN_FLIGHT);
            futures::pin_mut!(reads);
            while let Some((offset, len, reply)) = reads.next().await {
                let data = match reply? {
                    Reply::Data(mut parts) if parts.len() == 1 => parts.pop().unwrap_or_default(),
                    other => {
                        return Err(library(format!(
                            "protocol error: DumpRead answered with {other:?}"
                        )))
                    }
                };
                if data.len() as u64 != len {
                    return Err(library(format!(
                        "checkpoint \"{}\" section \"{}\": the server returned {} bytes at offset {offset}, expected {len}",
                        checkpoint.name,
                        section.section_id,
                        data.len()
                    )));
                }
                put_chunk(&mut writer, &mut progress, offset, &data)?;
            }
        }
    }
    let (_, bytes, records) = writer.finish().map_err(write_err)?;
    progress.finish();
    Ok(DumpReport {
        file,
        checkpoints: checkpoints.iter().map(|c| c.name.to_string()).collect(),
        sections,
        data_bytes: total,
        bytes,
        records,
        source,
    })
}

fn dump_offline(dir: &Path, args: &DumpArgs, sink: &mut Sink) -> Result<DumpReport, ClientError> {
    let store = crate::datadir::open_read_only(dir)?;
    let result = dump_store(&store, dir, args, sink);
    let report = result?;
    // The dump is complete and was read from one snapshot; a failure to
    // flush what recovery replayed does not make it wrong.
    if let Err(error) = store.close() {
        eprintln!(
            "warning: closing the store after the dump failed: {}: {}",
            error.code.cl_name(),
            error.detail
        );
    }
    Ok(report)
}

fn dump_store(
    store: &ckpt_storage::ReadOnlyStore,
    dir: &Path,
    args: &DumpArgs,
    sink: &mut Sink,
) -> Result<DumpReport, ClientError> {
    let snapshot = store.snapshot();
    let all: Vec<_> = snapshot
        .instances()?
        .into_iter()
        .filter(|(_, meta)| !meta.unlinked)
        .collect();
    let chosen: Vec<_> = if args.all {
        all
    } else {
        let mut chosen = Vec::new();
        for name in &args.names {
            let found = all.iter().find(|(_, meta)| &meta.name == name).cloned();
            chosen.push(found.ok_or_else(|| {
                ClientError::new(
                    ErrorCode::NotExist,
                    format!("checkpoint {name} does not exist"),
                )
            })?);
        }
        chosen
    };
    let mut checkpoints = Vec::with_capacity(chosen.len());
    for (instance, meta) in &chosen {
        checkpoints.push((
            *instance,
            DumpCheckpoint {
                name: meta.name.clone(),
                attributes: meta.attributes.clone(),
                generated_next: meta.generated_next,
                seq: meta.seq.0,
                sections: snapshot.sections(*instance)?,
            },
        ));
    }
    let source = format!("data-dir {}", dir.display());
    let total: u64 = checkpoints
        .iter()
        .flat_map(|(_, c)| c.sections.iter())
        .map(|s| s.section_size)
        .sum();
    let mut progress = Progress::new("dump", total);
    let mut writer = DumpWriter::new(&mut *sink).map_err(write_err)?;
    writer
        .write(&DumpRecord::Info(DumpInfo {
            created_at_ns: now_ns(),
            checkpoints: checkpoints.len() as u32,
            source: source.clone(),
            tool: tool_name(),
        }))
        .map_err(write_err)?;
    let mut sections = 0u64;
    for (index, (instance, checkpoint)) in checkpoints.iter().enumerate() {
        let header = header_of(checkpoint);
        progress.step(format!(
            "checkpoint {}/{} \"{}\" ({} sections, {})",
            index + 1,
            checkpoints.len(),
            checkpoint.name,
            header.sections,
            human_bytes(header.data_bytes)
        ));
        writer
            .write(&DumpRecord::Checkpoint(header))
            .map_err(write_err)?;
        for section in &checkpoint.sections {
            sections += 1;
            writer
                .write(&DumpRecord::Section(section_header(section)))
                .map_err(write_err)?;
            let size = section.section_size;
            for offset in chunk_offsets(size) {
                let len = (size - offset).min(DATA_CHUNK_BYTES as u64);
                let data = snapshot.read(*instance, &section.section_id, offset, len)?;
                if data.len() as u64 != len {
                    return Err(library(format!(
                        "checkpoint \"{}\" section \"{}\": read {} bytes at offset {offset}, expected {len}",
                        checkpoint.name,
                        section.section_id,
                        data.len()
                    )));
                }
                put_chunk(&mut writer, &mut progress, offset, &data)?;
            }
        }
    }
    let (_, bytes, records) = writer.finish().map_err(write_err)?;
    progress.finish();
    Ok(DumpReport {
        file: args.output.display().to_string(),
        checkpoints: checkpoints
            .iter()
            .map(|(_, c)| c.name.to_string())
            .collect(),
        sections,
        data_bytes: total,
        bytes,
        records,
        source,
    })
}

/// What `restore` reports.
#[derive(Debug, Serialize)]
pub struct RestoreReport {
    /// The dump read.
    pub file: String,
    /// Checkpoints recreated.
    pub restored: Vec<RestoredJson>,
}

/// One restored checkpoint.
#[derive(Debug, Serialize)]
pub struct RestoredJson {
    /// Name in the dump.
    pub from: String,
    /// Name it was restored under.
    pub name: String,
    /// Sections recreated.
    pub sections: u32,
    /// Section bytes.
    pub data_bytes: u64,
    /// Whether an existing checkpoint of that name was replaced.
    pub replaced: bool,
}

/// Where a restore writes.
trait Target {
    /// Names that exist now.
    async fn existing(&mut self) -> Result<BTreeSet<CheckpointName>, ClientError>;
    /// Recreates a checkpoint (deleting one of that name first with `replace`).
    async fn begin(
        &mut self,
        name: &CheckpointName,
        header: &CheckpointHeader,
        replace: bool,
    ) -> Result<(), ClientError>;
    /// Recreates a section with its first bytes.
    async fn section(
        &mut self,
        id: &SectionId,
        expiration_time: i64,
        data: Vec<u8>,
    ) -> Result<(), ClientError>;
    /// Writes more bytes into a section.
    async fn write(
        &mut self,
        id: &SectionId,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<(), ClientError>;
    /// The checkpoint is complete.
    async fn end(&mut self) -> Result<(), ClientError>;
    /// Best effort: removes a half-restored checkpoint.
    async fn abort(&mut self, name: &CheckpointName);
}

struct OnlineTarget {
    client: Client,
    handle: Option<u64>,
}

fn expect_done(what: &str, reply: Reply) -> Result<(), ClientError> {
    match reply {
        Reply::Done => Ok(()),
        other => Err(library(format!(
            "protocol error: {what} answered with {other:?}"
        ))),
    }
}

impl OnlineTarget {
    fn handle(&self) -> Result<u64, ClientError> {
        self.handle
            .ok_or_else(|| library("internal error: no checkpoint is being restored"))
    }
}

impl Target for OnlineTarget {
    async fn existing(&mut self) -> Result<BTreeSet<CheckpointName>, ClientError> {
        Ok(self
            .client
            .list()
            .await?
            .into_iter()
            .map(|info| info.name)
            .collect())
    }

    async fn begin(
        &mut self,
        name: &CheckpointName,
        header: &CheckpointHeader,
        replace: bool,
    ) -> Result<(), ClientError> {
        let request = Request::Restore {
            name: name.clone(),
            attributes: header.attributes.clone(),
            generated_next: header.generated_next,
            replace,
        };
        match self.client.request(request).await? {
            Reply::Opened { handle, .. } => {
                self.handle = Some(handle);
                Ok(())
            }
            other => Err(library(format!(
                "protocol error: Restore answered with {other:?}"
            ))),
        }
    }

    async fn section(
        &mut self,
        id: &SectionId,
        expiration_time: i64,
        data: Vec<u8>,
    ) -> Result<(), ClientError> {
        let handle = self.handle()?;
        let reply = self
            .client
            .request(Request::RestoreSection {
                handle,
                section_id: id.clone(),
                expiration_time,
                data,
            })
            .await?;
        expect_done("RestoreSection", reply)
    }

    async fn write(
        &mut self,
        id: &SectionId,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<(), ClientError> {
        let handle = self.handle()?;
        let reply = self
            .client
            .request(Request::Write {
                handle,
                elements: vec![WriteElement {
                    section_id: id.clone(),
                    offset,
                    data,
                }],
            })
            .await?;
        expect_done("Write", reply)
    }

    async fn end(&mut self) -> Result<(), ClientError> {
        let handle = self.handle()?;
        self.handle = None;
        let reply = self.client.request(Request::Close { handle }).await?;
        expect_done("Close", reply)
    }

    async fn abort(&mut self, name: &CheckpointName) {
        if let Some(handle) = self.handle.take() {
            let _ = self.client.request(Request::Close { handle }).await;
        }
        let _ = self.client.delete(name).await;
    }
}

struct OfflineTarget {
    store: Store,
    instance: Option<InstanceId>,
}

impl OfflineTarget {
    fn instance(&self) -> Result<InstanceId, ClientError> {
        self.instance
            .ok_or_else(|| library("internal error: no checkpoint is being restored"))
    }

    fn remove(&self, name: &CheckpointName) -> Result<(), ClientError> {
        let instance = self.store.lookup(name)?;
        self.store.execute(Op::Unlink { name: name.clone() })?;
        self.store.execute(Op::Destroy { instance })?;
        Ok(())
    }
}

impl Target for OfflineTarget {
    async fn existing(&mut self) -> Result<BTreeSet<CheckpointName>, ClientError> {
        Ok(self
            .store
            .instances()?
            .into_iter()
            .filter(|(_, meta)| !meta.unlinked)
            .map(|(_, meta)| meta.name)
            .collect())
    }

    async fn begin(
        &mut self,
        name: &CheckpointName,
        header: &CheckpointHeader,
        replace: bool,
    ) -> Result<(), ClientError> {
        if replace {
            match self.remove(name) {
                Ok(()) => {}
                Err(error) if error.code == ErrorCode::NotExist => {}
                Err(error) => return Err(error),
            }
        }
        let op = Op::Restore {
            name: name.clone(),
            attributes: header.attributes.clone(),
            generated_next: header.generated_next,
            instance: None,
            epoch: ckpt_storage::Epoch(1),
        };
        match self.store.execute(op)? {
            Outcome::Opened { instance, .. } => {
                self.instance = Some(instance);
                Ok(())
            }
            other => Err(library(format!(
                "unexpected store outcome {other:?} restoring {name}"
            ))),
        }
    }

    async fn section(
        &mut self,
        id: &SectionId,
        expiration_time: i64,
        data: Vec<u8>,
    ) -> Result<(), ClientError> {
        let instance = self.instance()?;
        self.store.execute(Op::RestoreSection {
            instance,
            section_id: id.clone(),
            expiration_time,
            data,
        })?;
        Ok(())
    }

    async fn write(
        &mut self,
        id: &SectionId,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<(), ClientError> {
        let instance = self.instance()?;
        self.store.execute(Op::Write {
            instance,
            elements: vec![WriteElement {
                section_id: id.clone(),
                offset,
                data,
            }],
        })?;
        Ok(())
    }

    async fn end(&mut self) -> Result<(), ClientError> {
        self.instance = None;
        Ok(())
    }

    async fn abort(&mut self, name: &CheckpointName) {
        self.instance = None;
        let _ = self.remove(name);
    }
}

/// Checks a dump file fully; prints every problem; fails if there is one.
///
/// # Errors
/// `FAILED_OPERATION` when the dump is damaged (each problem is printed).
pub fn verify_dump_file(
    path: &Path,
    label: &'static str,
) -> Result<(crate::dump::DumpSummary, Vec<crate::dump::DumpProblem>), ClientError> {
    // `-`: the dump comes on stdin, read once.
    let (reader, size): (Box<dyn std::io::Read>, u64) = if path == Path::new("-") {
        (Box::new(std::io::stdin().lock()), 0)
    } else {
        let file = File::open(path).map_err(|e| io_error("opening", path, &e))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        (Box::new(file), size)
    };
    let mut progress = Progress::new(label, size);
    let mut last = 0u64;
    let (summary, problems) = check_dump(BufReader::with_capacity(1 << 20, reader), |offset, _| {
        progress.inc(offset - last);
        last = offset;
    });
    progress.inc(summary.bytes.saturating_sub(last));
    progress.finish();
    Ok((summary, problems))
}

/// `restore`: chooses online or offline.
///
/// # Errors
/// A damaged dump (nothing written), existing checkpoints without
/// `--replace` (nothing written), connection and storage errors.
pub async fn restore(addr: &str, args: &RestoreArgs) -> Result<(), ClientError> {
    // 1. The whole dump must be sound before anything is written.
    let (summary, problems) = verify_dump_file(&args.file, "verify")?;
    for problem in &problems {
        eprintln!("problem: {}: {problem}", args.file.display());
    }
    if !problems.is_empty() {
        return Err(ClientError::new(
            ErrorCode::FailedOperation,
            format!(
                "{} is damaged ({} problem{}); nothing was restored",
                args.file.display(),
                problems.len(),
                if problems.len() == 1 { "" } else { "s" }
            ),
        ));
    }
    // 2. Names: renames must name checkpoints of the dump; targets unique.
    let mut renames: BTreeMap<CheckpointName, CheckpointName> = BTreeMap::new();
    for (old, new) in &args.rename {
        if !summary
            .checkpoints
            .iter()
            .any(|n| n.as_bytes() == old.as_bytes())
        {
            return Err(ClientError::new(
                ErrorCode::NotExist,
                format!("--rename {old}={new}: the dump holds no checkpoint {old}"),
            ));
        }
        if renames.insert(old.clone(), new.clone()).is_some() {
            return Err(ClientError::new(
                ErrorCode::InvalidParameter,
                format!("--rename names {old} twice"),
            ));
        }
    }
    match &args.data_dir {
        Some(dir) => {
            let store = crate::datadir::open_store(dir, false)?;
            let mut target = OfflineTarget {
                store,
                instance: None,
            };
            let result = restore_into(&mut target, args, &summary, &renames).await;
            let closed = target.store.close();
            let report = result?;
            closed.map_err(ClientError::from)?;
            print_restore(&report, args.json)
        }
        None => {
            let client = crate::connect(addr).await?;
            let mut target = OnlineTarget {
                client: client.clone(),
                handle: None,
            };
            let result = restore_into(&mut target, args, &summary, &renames).await;
            let _ = client.finalize().await;
            print_restore(&result?, args.json)
        }
    }
}

fn print_restore(report: &RestoreReport, json: bool) -> Result<(), ClientError> {
    if json {
        return crate::admin::emit_json_to_stdout_or_stderr(report, false);
    }
    let mut text = String::new();
    for r in &report.restored {
        let renamed = if r.from == r.name {
            String::new()
        } else {
            format!(" (from {})", r.from)
        };
        let replaced = if r.replaced { ", replaced" } else { "" };
        text.push_str(&format!(
            "restored {}{renamed}: {} sections, {}{replaced}\n",
            r.name,
            r.sections,
            human_bytes(r.data_bytes)
        ));
    }
    text.push_str(&format!(
        "restored {} checkpoints from {}\n",
        report.restored.len(),
        report.file
    ));
    crate::admin::emit(text.as_bytes())
}

/// The section being restored: created on its first data (or at its end).
struct PendingSection {
    header: SectionHeader,
    created: bool,
    written_end: u64,
}

async fn finish_section<T: Target>(
    target: &mut T,
    section: PendingSection,
) -> Result<(), ClientError> {
    let PendingSection {
        header,
        created,
        written_end,
    } = section;
    if !created {
        target
            .section(&header.id, header.expiration_time, Vec::new())
            .await?;
    }
    if written_end < header.size {
        // A trailing hole: one zero byte at the end gives the section its size.
        target.write(&header.id, header.size - 1, vec![0]).await?;
    }
    Ok(())
}

async fn restore_into<T: Target>(
    target: &mut T,
    args: &RestoreArgs,
    summary: &crate::dump::DumpSummary,
    renames: &BTreeMap<CheckpointName, CheckpointName>,
) -> Result<RestoreReport, ClientError> {
    let rename = |name: &CheckpointName| renames.get(name).cloned().unwrap_or_else(|| name.clone());
    let selected = |name: &CheckpointName| args.names.is_empty() || args.names.contains(name);
    for name in &args.names {
        if !summary
            .checkpoints
            .iter()
            .any(|n| n.as_bytes() == name.as_bytes())
        {
            return Err(ClientError::new(
                ErrorCode::NotExist,
                format!("the dump holds no checkpoint {name}"),
            ));
        }
    }
    let mut targets: BTreeSet<CheckpointName> = BTreeSet::new();
    for name in &summary.checkpoints {
        let name = crate::cli::parse_name(name).map_err(library)?;
        if !selected(&name) {
            continue;
        }
        let new = rename(&name);
        if !targets.insert(new.clone()) {
            return Err(ClientError::new(
                ErrorCode::InvalidParameter,
                format!("two checkpoints of the dump would be restored as {new}; use --rename"),
            ));
        }
    }
    // 3. Refuse existing checkpoints before writing anything.
    let existing = target.existing().await?;
    let clashes: Vec<String> = targets
        .intersection(&existing)
        .map(|n| n.to_string())
        .collect();
    if !clashes.is_empty() && !args.replace {
        return Err(ClientError::new(
            ErrorCode::AlreadyExist,
            format!(
                "checkpoint{} {} already exist{}; pass --replace to overwrite, or --rename OLD=NEW; nothing was restored",
                if clashes.len() == 1 { "" } else { "s" },
                clashes.join(", "),
                if clashes.len() == 1 { "s" } else { "" }
            ),
        ));
    }
    // 4. Second pass: apply, checking everything again as it is read.
    let file = File::open(&args.file).map_err(|e| io_error("opening", &args.file, &e))?;
    let mut reader = DumpReader::new(BufReader::with_capacity(1 << 20, file))
        .map_err(|e| library(format!("{}: {e}", args.file.display())))?;
    let mut checker = StructureChecker::default();
    let mut progress = Progress::new("restore", summary.bytes);
    let mut report = RestoreReport {
        file: args.file.display().to_string(),
        restored: Vec::new(),
    };
    let mut current: Option<(CheckpointName, CheckpointHeader)> = None;
    let mut section: Option<PendingSection> = None;
    let mut last_offset = 0u64;
    // Inside a checkpoint that was not asked for: its records are read
    // (and checked) but not applied.
    let mut skipping = false;
    let result: Result<(), ClientError> = async {
        while let Some((offset, record)) = reader.next_record().map_err(|e| {
            library(format!(
                "{} changed while being restored: {e}",
                args.file.display()
            ))
        })? {
            checker.accept(&record).map_err(|e| {
                library(format!(
                    "{} changed while being restored: byte {offset}: {e}",
                    args.file.display()
                ))
            })?;
            progress.inc(offset - last_offset);
            last_offset = offset;
            if let DumpRecord::Checkpoint(header) = &record {
                skipping = !selected(&header.name);
            }
            if skipping && matches!(record, DumpRecord::Section(_) | DumpRecord::Data { .. }) {
                continue;
            }
            let closes_section = !matches!(record, DumpRecord::Data { .. });
            if closes_section {
                if let Some(done) = section.take() {
                    finish_section(target, done).await?;
                }
            }
            let closes_checkpoint =
                matches!(record, DumpRecord::Checkpoint(_) | DumpRecord::End { .. });
            if closes_checkpoint {
                if let Some((name, header)) = current.take() {
                    target.end().await?;
                    report.restored.push(RestoredJson {
                        from: header.name.to_string(),
                        name: name.to_string(),
                        sections: header.sections,
                        data_bytes: header.data_bytes,
                        replaced: existing.contains(&name),
                    });
                }
            }
            match record {
                DumpRecord::Checkpoint(_) if skipping => {}
                DumpRecord::Checkpoint(header) => {
                    let name = rename(&header.name);
                    progress.step(format!(
                        "checkpoint \"{name}\" ({} sections, {})",
                        header.sections,
                        human_bytes(header.data_bytes)
                    ));
                    target.begin(&name, &header, args.replace).await?;
                    current = Some((name, header));
                }
                DumpRecord::Section(header) => {
                    section = Some(PendingSection {
                        header,
                        created: false,
                        written_end: 0,
                    });
                }
                DumpRecord::Data { offset, data } => {
                    let Some(s) = section.as_mut() else {
                        return Err(library("internal error: data outside a section"));
                    };
                    let end = offset + data.len() as u64;
                    if !s.created {
                        s.created = true;
                        if offset == 0 {
                            target
                                .section(&s.header.id, s.header.expiration_time, data)
                                .await?;
                        } else {
                            target
                                .section(&s.header.id, s.header.expiration_time, Vec::new())
                                .await?;
                            target.write(&s.header.id, offset, data).await?;
                        }
                    } else {
                        target.write(&s.header.id, offset, data).await?;
                    }
                    s.written_end = end;
                }
                DumpRecord::Info(_) | DumpRecord::End { .. } => {}
            }
        }
        Ok(())
    }
    .await;
    progress.finish();
    if let Err(error) = result {
        if let Some((name, _)) = current.take() {
            eprintln!("restore of {name} failed; removing the partly restored checkpoint");
            target.abort(&name).await;
        }
        return Err(error);
    }
    Ok(report)
}
