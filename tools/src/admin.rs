//! The administrative commands: one short function per command, each
//! opening what it needs, doing one thing and closing.

use std::io::{Read, Write};
use std::path::Path;

use ckpt_client::{Checkpoint, Client, ClientError};
use ckpt_proto::wire::{CheckpointInfo, Reply, Request, ServerStatus};
use ckpt_proto::{
    now_ns, CheckpointName, CreationAttributes, CreationFlags, ErrorCode, OpenFlags, ReadElement,
    SectionCreationAttributes, SectionDescriptor, SectionId, SectionState, SectionsChosen,
    WriteElement, TIME_END,
};
use serde::Serialize;

use crate::cli::{
    CreateArgs, LsArgs, ReadArgs, RmArgs, SectionCreateArgs, SectionRmArgs, SectionsArgs, StatArgs,
    WriteArgs,
};

/// Writes `bytes` to stdout.
///
/// # Errors
/// `LIBRARY` when stdout is closed or full.
pub fn emit(bytes: &[u8]) -> Result<(), ClientError> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .map_err(|e| ClientError::new(ErrorCode::Library, format!("writing to stdout: {e}")))
}

/// Writes `value` as pretty JSON to stdout.
///
/// # Errors
/// `LIBRARY` when stdout is closed or full.
pub fn emit_json<T: Serialize>(value: &T) -> Result<(), ClientError> {
    emit_json_to_stdout_or_stderr(value, false)
}

/// Writes `value` as pretty JSON to stdout, or to stderr when stdout
/// carries data (a dump written to `-`).
///
/// # Errors
/// `LIBRARY` when the stream is closed or full.
pub fn emit_json_to_stdout_or_stderr<T: Serialize>(
    value: &T,
    to_stderr: bool,
) -> Result<(), ClientError> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| ClientError::new(ErrorCode::Library, format!("encoding JSON: {e}")))?;
    text.push('\n');
    if to_stderr {
        eprint!("{text}");
        return Ok(());
    }
    emit(text.as_bytes())
}

/// Reads a file, or stdin for `None` and `-`.
fn read_input(file: Option<&Path>) -> Result<Vec<u8>, ClientError> {
    let mut data = Vec::new();
    match file {
        Some(path) if path != Path::new("-") => {
            data = std::fs::read(path).map_err(|e| {
                ClientError::new(
                    ErrorCode::Library,
                    format!("reading {}: {e}", path.display()),
                )
            })?;
        }
        _ => {
            std::io::stdin()
                .lock()
                .read_to_end(&mut data)
                .map_err(|e| ClientError::new(ErrorCode::Library, format!("reading stdin: {e}")))?;
        }
    }
    Ok(data)
}

/// The names of the flags set in `flags` (`WR_ACTIVE_REPLICA`, ...).
pub fn creation_flag_names(flags: CreationFlags) -> Vec<String> {
    let known = [
        (CreationFlags::WR_ALL_REPLICAS, "WR_ALL_REPLICAS"),
        (CreationFlags::WR_ACTIVE_REPLICA, "WR_ACTIVE_REPLICA"),
        (
            CreationFlags::WR_ACTIVE_REPLICA_WEAK,
            "WR_ACTIVE_REPLICA_WEAK",
        ),
        (
            CreationFlags::CHECKPOINT_COLLOCATED,
            "CHECKPOINT_COLLOCATED",
        ),
        (CreationFlags::DISTRIBUTED, "DISTRIBUTED"),
        (CreationFlags::WR_ALL_SAFE, "WR_ALL_SAFE"),
        (
            CreationFlags::ALL_OPEN_ARE_REPLICAS,
            "ALL_OPEN_ARE_REPLICAS",
        ),
        (CreationFlags::PEER_TO_PEER_REPLICA, "PEER_TO_PEER_REPLICA"),
        (
            CreationFlags::PEER_TO_PEER_CACHE_DISABLE,
            "PEER_TO_PEER_CACHE_DISABLE",
        ),
    ];
    let mut names: Vec<String> = known
        .iter()
        .filter(|(flag, _)| flags.contains(*flag))
        .map(|(_, name)| (*name).to_string())
        .collect();
    if flags.unknown_bits() != 0 {
        names.push(format!("0x{:x}", flags.unknown_bits()));
    }
    names
}

/// The attributes `create` asks for.
///
/// # Errors
/// `INVALID_PARAMETER` when the default size overflows.
pub fn create_attributes(args: &CreateArgs) -> Result<CreationAttributes, ClientError> {
    let mut creation_flags = args.mode.flag();
    for (set, flag) in [
        (args.all_safe, CreationFlags::WR_ALL_SAFE),
        (args.collocated, CreationFlags::CHECKPOINT_COLLOCATED),
        (args.distributed, CreationFlags::DISTRIBUTED),
    ] {
        if set {
            creation_flags = creation_flags | flag;
        }
    }
    let checkpoint_size = match args.size {
        Some(size) => size,
        None => u64::from(args.max_sections)
            .checked_mul(args.max_section_size)
            .ok_or_else(|| {
                ClientError::new(
                    ErrorCode::InvalidParameter,
                    "max-sections x max-section-size overflows; pass --size",
                )
            })?,
    };
    Ok(CreationAttributes {
        creation_flags,
        checkpoint_size,
        retention_duration_ns: args.retention_duration_ns(),
        max_sections: args.max_sections,
        max_section_size: args.max_section_size,
        max_section_id_size: args.max_section_id_size,
    })
}

/// A checkpoint as `ls --json` and `stat --json` print it.
#[derive(Debug, Serialize)]
pub struct CheckpointJson {
    /// Name (lossy UTF-8).
    pub name: String,
    /// Creation flags, numeric.
    pub creation_flags: u32,
    /// Creation flags, by name.
    pub flags: Vec<String>,
    /// checkpointSize, bytes.
    pub checkpoint_size: u64,
    /// Retention in ns; null = forever.
    pub retention_duration_ns: Option<i64>,
    /// maxSections.
    pub max_sections: u32,
    /// maxSectionSize, bytes.
    pub max_section_size: u64,
    /// maxSectionIdSize, bytes.
    pub max_section_id_size: u64,
    /// Sections now.
    pub number_of_sections: u32,
    /// Sum of section sizes, bytes.
    pub memory_used: u64,
    /// Open handles across the cluster.
    pub open_count: u32,
    /// Current update sequence number.
    pub seq: u64,
    /// Bytes its data takes in RocksDB (SST files and memtables, estimated).
    pub footprint_bytes: u64,
    /// Nodes holding a replica.
    pub replicas: u32,
}

impl From<&CheckpointInfo> for CheckpointJson {
    fn from(info: &CheckpointInfo) -> Self {
        let attributes = &info.status.attributes;
        CheckpointJson {
            name: info.name.to_string(),
            creation_flags: attributes.creation_flags.0,
            flags: creation_flag_names(attributes.creation_flags),
            checkpoint_size: attributes.checkpoint_size,
            retention_duration_ns: (attributes.retention_duration_ns != TIME_END)
                .then_some(attributes.retention_duration_ns),
            max_sections: attributes.max_sections,
            max_section_size: attributes.max_section_size,
            max_section_id_size: attributes.max_section_id_size,
            number_of_sections: info.status.number_of_sections,
            memory_used: info.status.memory_used,
            open_count: info.open_count,
            seq: info.seq,
            footprint_bytes: info.footprint_bytes,
            replicas: info.replicas,
        }
    }
}

/// `stat --json`: the checkpoint and the node's log footprint.
#[derive(Debug, Serialize)]
pub struct StatJson {
    /// The checkpoint.
    #[serde(flatten)]
    pub checkpoint: CheckpointJson,
    /// Bytes of WAL segments on the node (shared by every checkpoint).
    pub wal_bytes: Option<u64>,
    /// WAL segment files on the node.
    pub wal_segments: Option<u64>,
}

/// A section as `sections --json` prints it.
#[derive(Debug, Serialize)]
pub struct SectionJson {
    /// Id (lossy UTF-8); empty for the default section.
    pub id: String,
    /// Whether this is the default section.
    pub default: bool,
    /// Size, bytes.
    pub size: u64,
    /// Absolute expiration, ns since the epoch; null = never.
    pub expiration_time: Option<i64>,
    /// `valid` or `corrupted`.
    pub state: &'static str,
    /// Last update, ns since the epoch.
    pub last_update: i64,
}

fn state_name(state: SectionState) -> &'static str {
    match state {
        SectionState::Valid => "valid",
        SectionState::Corrupted => "corrupted",
    }
}

fn expiration_text(expiration_time: i64) -> String {
    crate::duration::format_deadline(expiration_time, now_ns())
}

impl From<&SectionDescriptor> for SectionJson {
    fn from(section: &SectionDescriptor) -> Self {
        SectionJson {
            id: String::from_utf8_lossy(section.section_id.as_bytes()).into_owned(),
            default: section.section_id.is_default(),
            size: section.section_size,
            expiration_time: (section.expiration_time != TIME_END)
                .then_some(section.expiration_time),
            state: state_name(section.state),
            last_update: section.last_update,
        }
    }
}

/// The line `sections` prints for one section: id, size, expiration, state,
/// separated by tabs.
pub fn section_line(section: &SectionDescriptor) -> String {
    format!(
        "{}\t{}\t{}\t{}\n",
        section.section_id,
        section.section_size,
        expiration_text(section.expiration_time),
        state_name(section.state)
    )
}

async fn open(
    client: &Client,
    name: &CheckpointName,
    flags: OpenFlags,
) -> Result<Checkpoint, ClientError> {
    client.open(name, None, flags).await
}

/// Runs `f` on an open checkpoint, then closes it whatever `f` returned.
async fn with_checkpoint<T, F>(
    client: &Client,
    name: &CheckpointName,
    flags: OpenFlags,
    f: F,
) -> Result<T, ClientError>
where
    F: AsyncFnOnce(&Checkpoint) -> Result<T, ClientError>,
{
    let checkpoint = open(client, name, flags).await?;
    let result = f(&checkpoint).await;
    let closed = checkpoint.close().await;
    let value = result?;
    closed?;
    Ok(value)
}

/// The update mode of `flags`, as `--mode` names it (without ALL_SAFE).
fn mode_name(flags: CreationFlags) -> &'static str {
    if flags.contains(CreationFlags::WR_ALL_REPLICAS) {
        "all-replicas"
    } else if flags.contains(CreationFlags::WR_ACTIVE_REPLICA_WEAK) {
        "active-weak"
    } else {
        "active"
    }
}

/// What differs between an existing checkpoint's attributes and the ones
/// asked for, as `create`'s flags name them: `max-sections 2 (asked 3)`.
/// Retention is not compared (a re-open may ask for another one).
pub fn attribute_differences(
    existing: &CreationAttributes,
    asked: &CreationAttributes,
) -> Vec<String> {
    let mut differences = Vec::new();
    let (old, new) = (existing.creation_flags, asked.creation_flags);
    if mode_name(old) != mode_name(new) {
        differences.push(format!(
            "mode {} (asked {})",
            mode_name(old),
            mode_name(new)
        ));
    }
    let yes_no = |set: bool| if set { "yes" } else { "no" };
    for (flag, name) in [
        (CreationFlags::WR_ALL_SAFE, "all-safe"),
        (CreationFlags::CHECKPOINT_COLLOCATED, "collocated"),
        (CreationFlags::DISTRIBUTED, "distributed"),
    ] {
        if old.contains(flag) != new.contains(flag) {
            differences.push(format!(
                "{name} {} (asked {})",
                yes_no(old.contains(flag)),
                yes_no(new.contains(flag))
            ));
        }
    }
    let mode_bits = CreationFlags::WR_ALL_REPLICAS
        | CreationFlags::WR_ACTIVE_REPLICA
        | CreationFlags::WR_ACTIVE_REPLICA_WEAK
        | CreationFlags::WR_ALL_SAFE
        | CreationFlags::CHECKPOINT_COLLOCATED
        | CreationFlags::DISTRIBUTED;
    let (old_rest, new_rest) = (old.0 & !mode_bits.0, new.0 & !mode_bits.0);
    if old_rest != new_rest {
        differences.push(format!(
            "other creation flags 0x{old_rest:x} (asked 0x{new_rest:x})"
        ));
    }
    for (name, old, new) in [
        (
            "max-sections",
            u64::from(existing.max_sections),
            u64::from(asked.max_sections),
        ),
        (
            "max-section-size",
            existing.max_section_size,
            asked.max_section_size,
        ),
        ("size", existing.checkpoint_size, asked.checkpoint_size),
        (
            "max-section-id-size",
            existing.max_section_id_size,
            asked.max_section_id_size,
        ),
    ] {
        if old != new {
            differences.push(format!("{name} {old} (asked {new})"));
        }
    }
    differences
}

/// The flags of `create` that only mean something with more than one
/// replica.
fn replication_flags(args: &CreateArgs) -> Vec<&'static str> {
    let mut flags = Vec::new();
    match args.mode {
        crate::cli::Mode::AllReplicas => flags.push("--mode all-replicas"),
        crate::cli::Mode::AllSafe => flags.push("--mode all-safe"),
        crate::cli::Mode::Active | crate::cli::Mode::ActiveWeak => {}
    }
    for (set, name) in [
        (args.all_safe, "--all-safe"),
        (args.collocated, "--collocated"),
        (args.distributed, "--distributed"),
    ] {
        if set {
            flags.push(name);
        }
    }
    flags
}

/// `create --json`.
#[derive(Debug, Serialize)]
struct CreatedJson {
    name: String,
    /// False: it existed with the same attributes.
    created: bool,
    /// Nodes holding a replica.
    replicas: Option<u32>,
    /// Warnings also printed on stderr.
    warnings: Vec<String>,
}

/// `create`.
pub async fn create(client: &Client, args: &CreateArgs) -> Result<(), ClientError> {
    let attributes = create_attributes(args)?;
    let flags = OpenFlags::CREATE | OpenFlags::READ | OpenFlags::WRITE;
    let name = &args.name.name;
    let checkpoint = match client.open(name, Some(attributes.clone()), flags).await {
        Ok(checkpoint) => checkpoint,
        Err(error) if error.code == ErrorCode::AlreadyExist => {
            // Name what differs in create's own flag names (the server
            // names the API's attributes: creationFlags, maxSections, ...).
            let Ok(info) = client.stat(name).await else {
                return Err(error);
            };
            let differences = attribute_differences(&info.status.attributes, &attributes);
            if differences.is_empty() {
                return Err(error);
            }
            return Err(ClientError::new(
                ErrorCode::AlreadyExist,
                format!(
                    "checkpoint {name} exists with different attributes: {}",
                    differences.join(", ")
                ),
            ));
        }
        Err(error) => return Err(error),
    };
    let created = checkpoint.created();
    checkpoint.close().await?;
    let mut warnings = Vec::new();
    let mut replicas = None;
    let replication = replication_flags(args);
    if !replication.is_empty() {
        if let Ok(info) = client.stat(name).await {
            replicas = Some(info.replicas);
            if info.replicas <= 1 {
                warnings.push(format!(
                    "{}: checkpoint {name} has 1 replica (a single node, or a cluster's \
                     replication_factor 1): replication flags change nothing for it",
                    replication.join(", ")
                ));
            }
        }
    }
    for warning in &warnings {
        eprintln!("warning: {warning}");
    }
    if args.json {
        return emit_json(&CreatedJson {
            name: name.to_string(),
            created,
            replicas,
            warnings,
        });
    }
    let what = if created {
        "created"
    } else {
        "exists with the same attributes:"
    };
    emit(format!("{what} {name}\n").as_bytes())
}

/// `section-create`.
pub async fn section_create(client: &Client, args: &SectionCreateArgs) -> Result<(), ClientError> {
    let initial_data = match &args.file {
        Some(path) => read_input(Some(path))?,
        None => Vec::new(),
    };
    let expiration_time = match args.expires_in_ns {
        None => TIME_END,
        Some(ns) => now_ns()
            .checked_add(ns)
            .filter(|&at| at != TIME_END)
            .ok_or_else(|| {
                ClientError::new(ErrorCode::InvalidParameter, "--expires-in is too large")
            })?,
    };
    let section_id = args
        .id
        .as_ref()
        .map(|id| ckpt_proto::SectionId::new(id.as_bytes()));
    let attributes = SectionCreationAttributes {
        section_id,
        expiration_time,
    };
    let id = with_checkpoint(
        client,
        &args.name.name,
        OpenFlags::WRITE,
        async |checkpoint: &Checkpoint| checkpoint.section_create(attributes, initial_data).await,
    )
    .await?;
    if args.json {
        return emit_json(&serde_json::json!({
            "name": args.name.name.to_string(),
            "id": id.to_string(),
            "expiration_time": (expiration_time != TIME_END).then_some(expiration_time),
        }));
    }
    emit(format!("{id}\n").as_bytes())
}

/// `write` (to `section_id`: the ID given, or the default section).
pub async fn write(
    client: &Client,
    args: &WriteArgs,
    section_id: SectionId,
) -> Result<(), ClientError> {
    let data = read_input(args.file.as_deref())?;
    let bytes = data.len();
    let section_json = String::from_utf8_lossy(section_id.as_bytes()).into_owned();
    with_checkpoint(
        client,
        &args.name.name,
        OpenFlags::WRITE,
        async |checkpoint: &Checkpoint| {
            if args.overwrite {
                checkpoint.section_overwrite(&section_id, data).await
            } else {
                checkpoint
                    .write(vec![WriteElement {
                        section_id,
                        offset: args.offset,
                        data,
                    }])
                    .await
            }
        },
    )
    .await?;
    if args.json {
        return emit_json(&serde_json::json!({
            "name": args.name.name.to_string(),
            "section": section_json,
            "offset": args.offset,
            "bytes": bytes,
            "overwrite": args.overwrite,
        }));
    }
    Ok(())
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                text.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                text.push('=');
            }
        }
    }
    text
}

/// `read` (from `section_id`: the ID given, or the default section).
pub async fn read(
    client: &Client,
    args: &ReadArgs,
    section_id: SectionId,
) -> Result<(), ClientError> {
    let section_json = String::from_utf8_lossy(section_id.as_bytes()).into_owned();
    let element = ReadElement {
        section_id,
        offset: args.offset,
        size: args.size,
    };
    let data = with_checkpoint(
        client,
        &args.name.name,
        OpenFlags::READ,
        async |checkpoint: &Checkpoint| checkpoint.read(vec![element]).await,
    )
    .await?;
    let data = data.concat();
    if args.json {
        let mut json = serde_json::json!({
            "name": args.name.name.to_string(),
            "section": section_json,
            "offset": args.offset,
            "bytes": data.len(),
        });
        match std::str::from_utf8(&data) {
            Ok(text) => json["data"] = text.into(),
            Err(_) => json["data_base64"] = base64(&data).into(),
        }
        return emit_json(&json);
    }
    emit(&data)
}

/// `section-rm` (of `section_id`: the ID given, or the default section).
pub async fn section_rm(
    client: &Client,
    args: &SectionRmArgs,
    section_id: SectionId,
) -> Result<(), ClientError> {
    let section_json = String::from_utf8_lossy(section_id.as_bytes()).into_owned();
    with_checkpoint(
        client,
        &args.name.name,
        OpenFlags::WRITE,
        async |checkpoint: &Checkpoint| checkpoint.section_delete(&section_id).await,
    )
    .await?;
    if args.json.json {
        return emit_json(&serde_json::json!({
            "name": args.name.name.to_string(),
            "removed_section": section_json,
        }));
    }
    Ok(())
}

/// `sections`.
pub async fn sections(client: &Client, args: &SectionsArgs) -> Result<(), ClientError> {
    let sections = with_checkpoint(
        client,
        &args.name.name,
        OpenFlags::READ,
        async |checkpoint: &Checkpoint| {
            let mut iterator = checkpoint.iterate(SectionsChosen::Any, 0).await?;
            let mut sections = Vec::new();
            let walked = async {
                while let Some(section) = iterator.next().await? {
                    sections.push(section);
                }
                Ok::<_, ClientError>(())
            }
            .await;
            let finalized = iterator.finalize().await;
            walked?;
            finalized?;
            Ok(sections)
        },
    )
    .await?;
    if args.json {
        let sections: Vec<SectionJson> = sections.iter().map(SectionJson::from).collect();
        return emit_json(&sections);
    }
    let text: String = sections.iter().map(section_line).collect();
    emit(text.as_bytes())
}

/// The `ls` table.
pub fn ls_table(checkpoints: &[CheckpointInfo]) -> String {
    let header = [
        "NAME",
        "SECTIONS",
        "USED",
        "SIZE",
        "FLAGS",
        "OPEN",
        "SEQ",
        "REPLICAS",
        "FOOTPRINT",
    ]
    .map(str::to_string);
    let rows: Vec<[String; 9]> = checkpoints
        .iter()
        .map(|info| {
            let attributes = &info.status.attributes;
            [
                info.name.to_string(),
                format!(
                    "{}/{}",
                    info.status.number_of_sections, attributes.max_sections
                ),
                info.status.memory_used.to_string(),
                attributes.checkpoint_size.to_string(),
                creation_flag_names(attributes.creation_flags).join("|"),
                info.open_count.to_string(),
                info.seq.to_string(),
                info.replicas.to_string(),
                info.footprint_bytes.to_string(),
            ]
        })
        .collect();
    let mut widths = header.clone().map(|cell| cell.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut text = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text
}

/// The node's figures, if the server answers `ServerStatus`.
pub async fn server_status(client: &Client) -> Option<ServerStatus> {
    match client.request(Request::ServerStatus).await {
        Ok(Reply::ServerStatus(status)) => Some(status),
        _ => None,
    }
}

/// The line under `ls` and `stat` naming the node's log footprint.
pub fn wal_line(node: &ServerStatus) -> String {
    format!(
        "wal: {} bytes in {} segments (shared by all {} checkpoints)\n",
        node.wal_bytes, node.wal_segments, node.checkpoints
    )
}

/// Prints `ls` output.
///
/// # Errors
/// stdout errors.
pub fn print_ls(
    checkpoints: &[CheckpointInfo],
    node: Option<&ServerStatus>,
    json: bool,
) -> Result<(), ClientError> {
    if json {
        let checkpoints: Vec<CheckpointJson> =
            checkpoints.iter().map(CheckpointJson::from).collect();
        return emit_json(&checkpoints);
    }
    let mut text = ls_table(checkpoints);
    if let Some(node) = node {
        text.push_str(&wal_line(node));
    }
    emit(text.as_bytes())
}

/// `ls`.
pub async fn ls(client: &Client, args: &LsArgs) -> Result<(), ClientError> {
    let checkpoints = client.list().await?;
    let node = server_status(client).await;
    print_ls(&checkpoints, node.as_ref(), args.json)
}

/// The `stat` text.
pub fn stat_text(info: &CheckpointInfo) -> String {
    let attributes = &info.status.attributes;
    let retention = crate::duration::format_ns(attributes.retention_duration_ns);
    format!(
        "name: {}\nflags: {} (0x{:x})\ncheckpoint size: {} bytes\nmax sections: {}\nmax section size: {} bytes\n\
         max section id size: {} bytes\nretention: {}\nsections: {}\nmemory used: {} bytes\nopen handles: {}\nseq: {}\n\
         replicas: {}\nrocksdb footprint: {} bytes\n",
        info.name,
        creation_flag_names(attributes.creation_flags).join("|"),
        attributes.creation_flags.0,
        attributes.checkpoint_size,
        attributes.max_sections,
        attributes.max_section_size,
        attributes.max_section_id_size,
        retention,
        info.status.number_of_sections,
        info.status.memory_used,
        info.open_count,
        info.seq,
        info.replicas,
        info.footprint_bytes,
    )
}

/// Prints `stat` output.
///
/// # Errors
/// stdout errors.
pub fn print_stat(
    info: &CheckpointInfo,
    node: Option<&ServerStatus>,
    json: bool,
) -> Result<(), ClientError> {
    if json {
        return emit_json(&StatJson {
            checkpoint: CheckpointJson::from(info),
            wal_bytes: node.map(|n| n.wal_bytes),
            wal_segments: node.map(|n| n.wal_segments),
        });
    }
    let mut text = stat_text(info);
    if let Some(node) = node {
        text.push_str(&wal_line(node));
    }
    emit(text.as_bytes())
}

/// `stat`.
pub async fn stat(client: &Client, args: &StatArgs) -> Result<(), ClientError> {
    let info = client.stat(&args.name.name).await?;
    let node = server_status(client).await;
    print_stat(&info, node.as_ref(), args.json)
}

/// Every named checkpoint of a data directory, as `ls` shows them, and
/// the node's figures (opens the store read-only: recovery replayed in
/// memory, no byte changed, no lock).
///
/// # Errors
/// `IN_USE` for a held directory; storage errors.
pub fn offline_infos(dir: &Path) -> Result<(Vec<CheckpointInfo>, ServerStatus), ClientError> {
    let store = crate::datadir::open_read_only(dir)?;
    let result = (|| {
        let mut infos = Vec::new();
        for (instance, meta) in store.instances()? {
            if meta.unlinked {
                continue;
            }
            infos.push(CheckpointInfo {
                footprint_bytes: store.instance_footprint(instance).unwrap_or(0),
                replicas: 1,
                status: ckpt_proto::CheckpointStatus {
                    attributes: meta.attributes.clone(),
                    number_of_sections: meta.section_count,
                    memory_used: meta.memory_used,
                },
                name: meta.name,
                open_count: 0,
                seq: meta.seq.0,
            });
        }
        let (wal_bytes, wal_segments) = store.wal_footprint();
        Ok::<_, ClientError>((
            infos,
            ServerStatus {
                checkpoints: 0,
                wal_bytes,
                wal_segments,
            },
        ))
    })();
    let closed = store.close();
    let (infos, mut node) = result?;
    closed.map_err(ClientError::from)?;
    node.checkpoints = infos.len() as u64;
    Ok((infos, node))
}

/// `ls --data-dir`.
///
/// # Errors
/// See [`offline_infos`].
pub fn ls_offline(dir: &Path, args: &LsArgs) -> Result<(), ClientError> {
    let (infos, node) = offline_infos(dir)?;
    print_ls(&infos, Some(&node), args.json)
}

/// `stat --data-dir`.
///
/// # Errors
/// `NOT_EXIST` for an unknown name; see [`offline_infos`].
pub fn stat_offline(dir: &Path, args: &StatArgs) -> Result<(), ClientError> {
    let (infos, node) = offline_infos(dir)?;
    let info = infos
        .iter()
        .find(|i| i.name == args.name.name)
        .ok_or_else(|| {
            ClientError::new(
                ErrorCode::NotExist,
                format!("checkpoint {} does not exist", args.name.name),
            )
        })?;
    print_stat(info, Some(&node), args.json)
}

/// `rm`.
pub async fn rm(client: &Client, args: &RmArgs) -> Result<(), ClientError> {
    client.delete(&args.name.name).await?;
    if args.json.json {
        return emit_json(&serde_json::json!({ "removed": args.name.name.to_string() }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use ckpt_proto::{CheckpointStatus, SectionId};
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn info() -> CheckpointInfo {
        CheckpointInfo {
            footprint_bytes: 4096,
            replicas: 1,
            name: CheckpointName::new("orders").unwrap(),
            status: CheckpointStatus {
                attributes: CreationAttributes {
                    creation_flags: CreationFlags::WR_ACTIVE_REPLICA | CreationFlags::WR_ALL_SAFE,
                    checkpoint_size: 2048,
                    retention_duration_ns: TIME_END,
                    max_sections: 2,
                    max_section_size: 1024,
                    max_section_id_size: 64,
                },
                number_of_sections: 1,
                memory_used: 10,
            },
            open_count: 3,
            seq: 17,
        }
    }

    #[test]
    fn create_attributes_follow_the_flags() {
        let Command::Create(args) = Cli::try_parse_from([
            "ckpt-tool",
            "create",
            "x",
            "--max-sections",
            "3",
            "--max-section-size",
            "10",
            "--mode",
            "active-weak",
            "--collocated",
        ])
        .unwrap()
        .command
        else {
            panic!("not create")
        };
        let attributes = create_attributes(&args).unwrap();
        assert_eq!(attributes.checkpoint_size, 30);
        assert_eq!(
            attributes.creation_flags,
            CreationFlags::WR_ACTIVE_REPLICA_WEAK | CreationFlags::CHECKPOINT_COLLOCATED
        );
        attributes.validate().unwrap();
    }

    #[test]
    fn json_views() {
        let json = serde_json::to_value(CheckpointJson::from(&info())).unwrap();
        assert_eq!(json["name"], "orders");
        assert_eq!(
            json["flags"],
            serde_json::json!(["WR_ACTIVE_REPLICA", "WR_ALL_SAFE"])
        );
        assert_eq!(json["retention_duration_ns"], serde_json::Value::Null);
        assert_eq!(json["seq"], 17);
        let section = SectionDescriptor {
            section_id: SectionId::DEFAULT,
            expiration_time: 5,
            section_size: 9,
            state: SectionState::Valid,
            last_update: 4,
        };
        let json = serde_json::to_value(SectionJson::from(&section)).unwrap();
        assert_eq!(json["default"], true);
        assert_eq!(json["expiration_time"], 5);
        assert_eq!(json["state"], "valid");
    }

    #[test]
    fn text_views() {
        let table = ls_table(&[info()]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("NAME    SECTIONS"), "{table}");
        assert!(lines[1].starts_with("orders  1/2"), "{table}");
        assert!(
            lines[1].contains("WR_ACTIVE_REPLICA|WR_ALL_SAFE"),
            "{table}"
        );
        assert!(stat_text(&info()).contains("retention: forever\n"));
        let section = SectionDescriptor {
            section_id: SectionId::new("c1"),
            expiration_time: TIME_END,
            section_size: 9,
            state: SectionState::Corrupted,
            last_update: 4,
        };
        assert_eq!(section_line(&section), "c1\t9\tforever\tcorrupted\n");
    }
}
