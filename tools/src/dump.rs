//! The portable dump format (docs/dump-format.md): a streaming writer, a
//! streaming reader, and the structure checker that `verify` and `restore`
//! run over a dump before trusting it.
//!
//! ```text
//! header   0  8 magic "CKPTDUMP"
//!          8  4 format version (u32 LE, 1)
//!         12  4 crc32 of bytes 0..12
//! record   0  4 length: bytes after the crc field (kind + payload), u32 LE
//!          4  4 crc32 of those bytes
//!          8  1 kind: 1 Info, 2 Checkpoint, 3 Section, 4 Data, 5 End
//!          9  … payload (fixed-width little-endian; byte strings = u32 length + bytes)
//! ```
//!
//! Order: Info; then per checkpoint one Checkpoint record followed by its
//! sections, each a Section record followed by its Data records (strictly
//! increasing, non-overlapping offsets; bytes not covered read as zeros);
//! then End, then nothing. Neither side holds more than one record in
//! memory, so a dump of any size streams in constant memory.

use std::io::{Read, Write};

use ckpt_proto::{
    CheckpointName, CreationAttributes, CreationFlags, SectionId, SectionState,
    SECTION_ID_BYTES_MAX,
};

/// First bytes of a dump file.
pub const DUMP_MAGIC: [u8; 8] = *b"CKPTDUMP";
/// The format version this build writes and reads.
pub const DUMP_VERSION: u32 = 1;
/// Size of the file header.
pub const HEADER_BYTES: u64 = 16;
/// Most section bytes in one Data record.
pub const DATA_CHUNK_BYTES: usize = 4 * 1024 * 1024;
/// Largest `length` field a reader accepts (a full Data record).
pub const RECORD_LENGTH_MAX: u32 = (DATA_CHUNK_BYTES + 1 + 8) as u32;

/// Record kinds.
pub mod kind {
    /// Dump-wide facts, first record.
    pub const INFO: u8 = 1;
    /// A checkpoint's attributes and counters.
    pub const CHECKPOINT: u8 = 2;
    /// A section's descriptor.
    pub const SECTION: u8 = 3;
    /// Bytes of the current section.
    pub const DATA: u8 = 4;
    /// Record count and whole-file checksum, last record.
    pub const END: u8 = 5;
}

/// Dump-wide facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpInfo {
    /// When the dump was taken, ns since the Unix epoch.
    pub created_at_ns: i64,
    /// How many Checkpoint records follow.
    pub checkpoints: u32,
    /// Where it was taken from (`server 127.0.0.1:7400`, `data-dir /var/…`).
    pub source: String,
    /// The tool that wrote it.
    pub tool: String,
}

/// One checkpoint as dumped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointHeader {
    /// Its name.
    pub name: CheckpointName,
    /// Creation attributes (retention as last set).
    pub attributes: CreationAttributes,
    /// The generated-id counter.
    pub generated_next: u64,
    /// Its update sequence number when dumped.
    pub seq: u64,
    /// How many Section records follow.
    pub sections: u32,
    /// Sum of the section sizes.
    pub data_bytes: u64,
}

/// One section as dumped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionHeader {
    /// Its id (empty: the default section).
    pub id: SectionId,
    /// Absolute expiration time, ns, or `TIME_END`.
    pub expiration_time: i64,
    /// Valid or corrupted.
    pub state: SectionState,
    /// When it last changed, ns.
    pub last_update: i64,
    /// Size in bytes.
    pub size: u64,
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DumpRecord {
    /// Kind 1.
    Info(DumpInfo),
    /// Kind 2.
    Checkpoint(CheckpointHeader),
    /// Kind 3.
    Section(SectionHeader),
    /// Kind 4: `data` at `offset` of the current section.
    Data { offset: u64, data: Vec<u8> },
    /// Kind 5.
    End { records: u64, file_crc: u32 },
}

impl DumpRecord {
    /// The record's kind name.
    pub fn kind_name(&self) -> &'static str {
        match self {
            DumpRecord::Info(_) => "Info",
            DumpRecord::Checkpoint(_) => "Checkpoint",
            DumpRecord::Section(_) => "Section",
            DumpRecord::Data { .. } => "Data",
            DumpRecord::End { .. } => "End",
        }
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// The encoded file header.
pub fn encode_header() -> [u8; HEADER_BYTES as usize] {
    let mut header = [0u8; HEADER_BYTES as usize];
    header[0..8].copy_from_slice(&DUMP_MAGIC);
    header[8..12].copy_from_slice(&DUMP_VERSION.to_le_bytes());
    let crc = crc32fast::hash(&header[0..12]);
    header[12..16].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Kind byte and payload of a record other than Data.
fn encode_body(record: &DumpRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    match record {
        DumpRecord::Info(info) => {
            out.push(kind::INFO);
            out.extend_from_slice(&info.created_at_ns.to_le_bytes());
            out.extend_from_slice(&info.checkpoints.to_le_bytes());
            put_bytes(&mut out, info.source.as_bytes());
            put_bytes(&mut out, info.tool.as_bytes());
        }
        DumpRecord::Checkpoint(c) => {
            out.push(kind::CHECKPOINT);
            put_bytes(&mut out, c.name.as_bytes());
            c.attributes.encode_le(&mut out);
            out.extend_from_slice(&c.generated_next.to_le_bytes());
            out.extend_from_slice(&c.seq.to_le_bytes());
            out.extend_from_slice(&c.sections.to_le_bytes());
            out.extend_from_slice(&c.data_bytes.to_le_bytes());
        }
        DumpRecord::Section(s) => {
            out.push(kind::SECTION);
            put_bytes(&mut out, s.id.as_bytes());
            out.extend_from_slice(&s.expiration_time.to_le_bytes());
            out.push(s.state as u8);
            out.extend_from_slice(&s.last_update.to_le_bytes());
            out.extend_from_slice(&s.size.to_le_bytes());
        }
        DumpRecord::Data { offset, data } => {
            out.push(kind::DATA);
            out.extend_from_slice(&offset.to_le_bytes());
            out.extend_from_slice(data);
        }
        DumpRecord::End { records, file_crc } => {
            out.push(kind::END);
            out.extend_from_slice(&records.to_le_bytes());
            out.extend_from_slice(&file_crc.to_le_bytes());
        }
    }
    out
}

/// Writes a dump record by record; tracks the record count and the
/// whole-file checksum for the End record.
pub struct DumpWriter<W: Write> {
    out: W,
    file_crc: crc32fast::Hasher,
    bytes: u64,
    records: u64,
}

impl<W: Write> DumpWriter<W> {
    /// Writes the header.
    ///
    /// # Errors
    /// IO errors.
    pub fn new(mut out: W) -> std::io::Result<Self> {
        let header = encode_header();
        out.write_all(&header)?;
        let mut file_crc = crc32fast::Hasher::new();
        file_crc.update(&header);
        Ok(DumpWriter {
            out,
            file_crc,
            bytes: HEADER_BYTES,
            records: 0,
        })
    }

    fn emit(&mut self, parts: &[&[u8]]) -> std::io::Result<()> {
        let length: usize = parts.iter().map(|p| p.len()).sum();
        let mut crc = crc32fast::Hasher::new();
        for part in parts {
            crc.update(part);
        }
        let mut prefix = [0u8; 8];
        prefix[0..4].copy_from_slice(&(length as u32).to_le_bytes());
        prefix[4..8].copy_from_slice(&crc.finalize().to_le_bytes());
        self.out.write_all(&prefix)?;
        self.file_crc.update(&prefix);
        for part in parts {
            self.out.write_all(part)?;
            self.file_crc.update(part);
        }
        self.bytes += 8 + length as u64;
        self.records += 1;
        Ok(())
    }

    /// Writes an Info, Checkpoint or Section record.
    ///
    /// # Errors
    /// IO errors.
    pub fn write(&mut self, record: &DumpRecord) -> std::io::Result<()> {
        match record {
            DumpRecord::Data { offset, data } => self.write_data(*offset, data),
            DumpRecord::End { .. } => Err(std::io::Error::other(
                "the End record is written by finish()",
            )),
            other => {
                let body = encode_body(other);
                self.emit(&[&body])
            }
        }
    }

    /// Writes one Data record (at most [`DATA_CHUNK_BYTES`]) without copying.
    ///
    /// # Errors
    /// IO errors; `data` over the bound.
    pub fn write_data(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        if data.is_empty() || data.len() > DATA_CHUNK_BYTES {
            return Err(std::io::Error::other(format!(
                "a Data record holds 1..={DATA_CHUNK_BYTES} bytes, not {}",
                data.len()
            )));
        }
        let mut head = [0u8; 9];
        head[0] = kind::DATA;
        head[1..9].copy_from_slice(&offset.to_le_bytes());
        self.emit(&[&head, data])
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Writes the End record and flushes; returns the output, the total
    /// size and the record count (End included).
    ///
    /// # Errors
    /// IO errors.
    pub fn finish(mut self) -> std::io::Result<(W, u64, u64)> {
        let file_crc = self.file_crc.clone().finalize();
        let body = encode_body(&DumpRecord::End {
            records: self.records,
            file_crc,
        });
        self.emit(&[&body])?;
        self.out.flush()?;
        Ok((self.out, self.bytes, self.records))
    }
}

/// Why a dump is not readable, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpError {
    /// Byte offset in the file of the record (or header) at fault.
    pub offset: u64,
    /// What is wrong.
    pub reason: String,
    /// False when the record's bytes were consumed and reading can go on
    /// (a checksum mismatch); true when the framing is lost.
    pub fatal: bool,
}

impl std::fmt::Display for DumpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at byte {}: {}", self.offset, self.reason)
    }
}

/// Reads a dump record by record, checking each record's checksum and, at
/// the End record, the whole file's.
pub struct DumpReader<R: Read> {
    input: R,
    file_crc: crc32fast::Hasher,
    offset: u64,
    records: u64,
    ended: bool,
    broken: bool,
}

fn read_full<R: Read>(input: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

impl<R: Read> DumpReader<R> {
    /// Reads and checks the header.
    ///
    /// # Errors
    /// A missing or damaged header, an unsupported version.
    pub fn new(mut input: R) -> Result<Self, DumpError> {
        let fatal = |reason: String| DumpError {
            offset: 0,
            reason,
            fatal: true,
        };
        let mut header = [0u8; HEADER_BYTES as usize];
        let got = read_full(&mut input, &mut header).map_err(|e| fatal(format!("reading: {e}")))?;
        if got < header.len() {
            return Err(fatal(format!(
                "file is {got} bytes, shorter than the {HEADER_BYTES}-byte header"
            )));
        }
        if header[0..8] != DUMP_MAGIC {
            return Err(fatal(format!(
                "bad magic {:02x?}: not a ckpt dump (expected \"CKPTDUMP\")",
                &header[0..8]
            )));
        }
        let stored = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
        let computed = crc32fast::hash(&header[0..12]);
        if stored != computed {
            return Err(fatal(format!(
                "header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
            )));
        }
        let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        if version != DUMP_VERSION {
            return Err(fatal(format!(
                "dump format version {version}; this ckpt-tool reads version {DUMP_VERSION}"
            )));
        }
        let mut file_crc = crc32fast::Hasher::new();
        file_crc.update(&header);
        Ok(DumpReader {
            input,
            file_crc,
            offset: HEADER_BYTES,
            records: 0,
            ended: false,
            broken: false,
        })
    }

    /// Byte offset of the next record.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next record with its byte offset; `None` after the End record
    /// when the file ends there.
    ///
    /// # Errors
    /// A checksum mismatch (not fatal: the next call reads the following
    /// record), or a fatal framing problem: truncation, an impossible
    /// length, bytes after End, a record that does not decode.
    pub fn next_record(&mut self) -> Result<Option<(u64, DumpRecord)>, DumpError> {
        let at = self.offset;
        let fatal = |reason: String| DumpError {
            offset: at,
            reason,
            fatal: true,
        };
        if self.broken {
            return Err(fatal("reading stopped at an earlier error".into()));
        }
        let result = self.read_one(at);
        if let Err(error) = &result {
            if error.fatal {
                self.broken = true;
            }
        }
        result
    }

    fn read_one(&mut self, at: u64) -> Result<Option<(u64, DumpRecord)>, DumpError> {
        let fatal = |reason: String| DumpError {
            offset: at,
            reason,
            fatal: true,
        };
        let mut prefix = [0u8; 8];
        let got =
            read_full(&mut self.input, &mut prefix).map_err(|e| fatal(format!("reading: {e}")))?;
        if self.ended {
            if got == 0 {
                return Ok(None);
            }
            return Err(fatal(format!(
                "{got}+ bytes follow the End record (a dump ends with its End record)"
            )));
        }
        if got == 0 {
            return Err(fatal(
                "the file ends without an End record (truncated dump)".into(),
            ));
        }
        if got < 8 {
            return Err(fatal(format!(
                "the file ends inside a record header ({got} of 8 bytes; truncated dump)"
            )));
        }
        let length = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        let stored = u32::from_le_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]);
        if length == 0 || length > RECORD_LENGTH_MAX {
            return Err(fatal(format!(
                "record length {length} is outside 1..={RECORD_LENGTH_MAX} (damaged length field)"
            )));
        }
        let mut body = vec![0u8; length as usize];
        let got =
            read_full(&mut self.input, &mut body).map_err(|e| fatal(format!("reading: {e}")))?;
        if got < body.len() {
            return Err(fatal(format!(
                "the file ends inside a record ({got} of {length} bytes; truncated dump)"
            )));
        }
        let before = self.file_crc.clone();
        self.file_crc.update(&prefix);
        self.file_crc.update(&body);
        self.offset += 8 + u64::from(length);
        let computed = crc32fast::hash(&body);
        if computed != stored {
            self.records += 1;
            let kind = match body[0] {
                kind::INFO => "Info",
                kind::CHECKPOINT => "Checkpoint",
                kind::SECTION => "Section",
                kind::DATA => "Data",
                kind::END => "End",
                _ => "unknown-kind",
            };
            return Err(DumpError {
                offset: at,
                reason: format!(
                    "record checksum mismatch ({kind} record of {length} bytes?): stored {stored:#010x}, computed {computed:#010x}"
                ),
                fatal: false,
            });
        }
        let record =
            decode_body(&body).map_err(|reason| fatal(format!("malformed record: {reason}")))?;
        if let DumpRecord::End { records, file_crc } = &record {
            let expected = before.finalize();
            if *file_crc != expected {
                return Err(fatal(format!(
                    "whole-file checksum mismatch: the End record says {file_crc:#010x}, the bytes before it hash to {expected:#010x}"
                )));
            }
            if *records != self.records {
                return Err(fatal(format!(
                    "the End record counts {records} records, the file holds {}",
                    self.records
                )));
            }
            self.ended = true;
        }
        self.records += 1;
        Ok(Some((at, record)))
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.bytes.len() < n {
            return Err(format!("needs {n} more bytes, {} left", self.bytes.len()));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn i64(&mut self) -> Result<i64, String> {
        Ok(self.u64()? as i64)
    }
    fn bytes(&mut self, max: usize, what: &str) -> Result<&'a [u8], String> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(format!("{what} is {len} bytes, at most {max}"));
        }
        self.take(len)
    }
    fn done(&self) -> Result<(), String> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(format!("{} unexpected bytes at the end", self.bytes.len()))
        }
    }
}

fn decode_body(body: &[u8]) -> Result<DumpRecord, String> {
    let mut c = Cursor { bytes: &body[1..] };
    let record = match body[0] {
        kind::INFO => {
            let created_at_ns = c.i64()?;
            let checkpoints = c.u32()?;
            let source = String::from_utf8_lossy(c.bytes(64 * 1024, "source")?).into_owned();
            let tool = String::from_utf8_lossy(c.bytes(1024, "tool")?).into_owned();
            DumpRecord::Info(DumpInfo {
                created_at_ns,
                checkpoints,
                source,
                tool,
            })
        }
        kind::CHECKPOINT => {
            let name = c.bytes(ckpt_proto::NAME_BYTES_MAX, "checkpoint name")?;
            let name = CheckpointName::new(name.to_vec()).map_err(|e| e.detail)?;
            let attributes = CreationAttributes {
                creation_flags: CreationFlags(c.u32()?),
                checkpoint_size: c.u64()?,
                retention_duration_ns: c.i64()?,
                max_sections: c.u32()?,
                max_section_size: c.u64()?,
                max_section_id_size: c.u64()?,
            };
            DumpRecord::Checkpoint(CheckpointHeader {
                name,
                attributes,
                generated_next: c.u64()?,
                seq: c.u64()?,
                sections: c.u32()?,
                data_bytes: c.u64()?,
            })
        }
        kind::SECTION => {
            let id = SectionId::new(
                c.bytes(SECTION_ID_BYTES_MAX as usize, "section id")?
                    .to_vec(),
            );
            let expiration_time = c.i64()?;
            let state = match c.u8()? {
                1 => SectionState::Valid,
                2 => SectionState::Corrupted,
                other => return Err(format!("section state {other} is neither 1 nor 2")),
            };
            DumpRecord::Section(SectionHeader {
                id,
                expiration_time,
                state,
                last_update: c.i64()?,
                size: c.u64()?,
            })
        }
        kind::DATA => {
            let offset = c.u64()?;
            if c.bytes.is_empty() {
                return Err("a Data record without data".into());
            }
            let data = c.bytes.to_vec();
            c.bytes = &[];
            DumpRecord::Data { offset, data }
        }
        kind::END => DumpRecord::End {
            records: c.u64()?,
            file_crc: c.u32()?,
        },
        other => return Err(format!("unknown record kind {other}")),
    };
    c.done()?;
    Ok(record)
}

/// Checks that records come in the documented order and agree with each
/// other; names the checkpoint and section a problem is in.
#[derive(Debug, Default)]
pub struct StructureChecker {
    info: Option<DumpInfo>,
    checkpoints_seen: u32,
    checkpoint: Option<CheckpointState>,
    section: Option<SectionState2>,
    ended: bool,
    /// Set after a record could not be read: later order checks would only
    /// repeat that problem.
    pub desynced: bool,
}

#[derive(Debug)]
struct CheckpointState {
    header: CheckpointHeader,
    sections_seen: u32,
    bytes_seen: u64,
    last_id: Option<SectionId>,
}

#[derive(Debug)]
struct SectionState2 {
    header: SectionHeader,
    /// Lowest offset the next Data record may start at.
    next_offset: u64,
}

impl StructureChecker {
    /// Where the reader is: `checkpoint "x" section "y"`.
    pub fn context(&self) -> String {
        let mut text = String::new();
        if let Some(c) = &self.checkpoint {
            text.push_str(&format!("checkpoint \"{}\"", c.header.name));
            if let Some(s) = &self.section {
                text.push_str(&format!(" section \"{}\"", s.header.id));
            }
        }
        text
    }

    /// The Info record, once seen.
    pub fn info(&self) -> Option<&DumpInfo> {
        self.info.as_ref()
    }

    /// Whether the End record was accepted.
    pub fn ended(&self) -> bool {
        self.ended
    }

    fn close_section(&mut self) -> Result<(), String> {
        self.section = None;
        Ok(())
    }

    fn close_checkpoint(&mut self) -> Result<(), String> {
        self.close_section()?;
        if let Some(c) = self.checkpoint.take() {
            if c.sections_seen != c.header.sections {
                return Err(format!(
                    "checkpoint \"{}\" announces {} sections, {} follow",
                    c.header.name, c.header.sections, c.sections_seen
                ));
            }
            if c.bytes_seen != c.header.data_bytes {
                return Err(format!(
                    "checkpoint \"{}\" announces {} data bytes, its sections' sizes sum to {}",
                    c.header.name, c.header.data_bytes, c.bytes_seen
                ));
            }
        }
        Ok(())
    }

    /// Accepts the next record or says why it is out of place.
    ///
    /// # Errors
    /// A description of the inconsistency.
    pub fn accept(&mut self, record: &DumpRecord) -> Result<(), String> {
        if self.ended {
            return Err("a record after End".into());
        }
        match record {
            DumpRecord::Info(info) => {
                if self.info.is_some() || self.checkpoints_seen > 0 {
                    return Err("a second Info record".into());
                }
                self.info = Some(info.clone());
            }
            _ if self.info.is_none() => {
                return Err(format!(
                    "the first record is {}, not Info",
                    record.kind_name()
                ));
            }
            DumpRecord::Checkpoint(header) => {
                self.close_checkpoint()?;
                let announced = self.info.as_ref().map_or(0, |i| i.checkpoints);
                if self.checkpoints_seen >= announced {
                    return Err(format!(
                        "more Checkpoint records than the {announced} the Info record announces"
                    ));
                }
                header.attributes.validate().map_err(|e| {
                    format!(
                        "checkpoint \"{}\" has invalid attributes: {}",
                        header.name, e.detail
                    )
                })?;
                if header.sections > header.attributes.max_sections {
                    return Err(format!(
                        "checkpoint \"{}\" has {} sections, maxSections is {}",
                        header.name, header.sections, header.attributes.max_sections
                    ));
                }
                if header.data_bytes > header.attributes.checkpoint_size {
                    return Err(format!(
                        "checkpoint \"{}\" holds {} bytes, checkpointSize is {}",
                        header.name, header.data_bytes, header.attributes.checkpoint_size
                    ));
                }
                self.checkpoints_seen += 1;
                self.checkpoint = Some(CheckpointState {
                    header: header.clone(),
                    sections_seen: 0,
                    bytes_seen: 0,
                    last_id: None,
                });
            }
            DumpRecord::Section(header) => {
                self.close_section()?;
                let Some(c) = self.checkpoint.as_mut() else {
                    return Err("a Section record before any Checkpoint record".into());
                };
                let a = &c.header.attributes;
                if c.sections_seen >= c.header.sections {
                    return Err(format!(
                        "more Section records than the {} checkpoint \"{}\" announces",
                        c.header.sections, c.header.name
                    ));
                }
                if header.id.is_default() != a.has_default_section() {
                    return Err(format!(
                        "section \"{}\": the default section is the only section of a checkpoint with maxSections 1, and only there",
                        header.id
                    ));
                }
                if header.id.as_bytes().len() as u64 > a.max_section_id_size
                    && !header.id.is_default()
                {
                    return Err(format!(
                        "section id \"{}\" is {} bytes, maxSectionIdSize is {}",
                        header.id,
                        header.id.as_bytes().len(),
                        a.max_section_id_size
                    ));
                }
                if header.size > a.max_section_size {
                    return Err(format!(
                        "section \"{}\" is {} bytes, maxSectionSize is {}",
                        header.id, header.size, a.max_section_size
                    ));
                }
                if let Some(last) = &c.last_id {
                    if header.id <= *last {
                        return Err(format!(
                            "section \"{}\" follows \"{last}\": sections must be in strictly increasing id order",
                            header.id
                        ));
                    }
                }
                c.last_id = Some(header.id.clone());
                c.sections_seen += 1;
                c.bytes_seen += header.size;
                self.section = Some(SectionState2 {
                    header: header.clone(),
                    next_offset: 0,
                });
            }
            DumpRecord::Data { offset, data } => {
                let Some(s) = self.section.as_mut() else {
                    return Err("a Data record outside a section".into());
                };
                if data.len() > DATA_CHUNK_BYTES {
                    return Err(format!(
                        "a Data record of {} bytes, at most {DATA_CHUNK_BYTES}",
                        data.len()
                    ));
                }
                if *offset < s.next_offset {
                    return Err(format!(
                        "Data at offset {offset} overlaps or precedes earlier data (next allowed offset {})",
                        s.next_offset
                    ));
                }
                let end = offset.checked_add(data.len() as u64);
                match end {
                    Some(end) if end <= s.header.size => s.next_offset = end,
                    _ => {
                        return Err(format!(
                            "Data at offset {offset} + {} bytes runs past the section's size {}",
                            data.len(),
                            s.header.size
                        ))
                    }
                }
            }
            DumpRecord::End { .. } => {
                self.close_checkpoint()?;
                let announced = self.info.as_ref().map_or(0, |i| i.checkpoints);
                if self.checkpoints_seen != announced {
                    return Err(format!(
                        "the Info record announces {announced} checkpoints, {} follow",
                        self.checkpoints_seen
                    ));
                }
                self.ended = true;
            }
        }
        Ok(())
    }
}

/// One problem found in a dump.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DumpProblem {
    /// Byte offset of the record at fault.
    pub offset: u64,
    /// Checkpoint and section the record belongs to, if known.
    pub context: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for DumpProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.context.is_empty() {
            write!(f, "byte {}: {}", self.offset, self.message)
        } else {
            write!(
                f,
                "byte {} ({}): {}",
                self.offset, self.context, self.message
            )
        }
    }
}

/// What a dump holds, from a full read.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DumpSummary {
    /// Bytes in the file.
    pub bytes: u64,
    /// Records, End included.
    pub records: u64,
    /// Checkpoint names, in file order.
    pub checkpoints: Vec<String>,
    /// Sections over all checkpoints.
    pub sections: u64,
    /// Section bytes over all checkpoints.
    pub data_bytes: u64,
    /// When the dump was taken, ns.
    pub created_at_ns: i64,
    /// Where it was taken from.
    pub source: String,
}

/// Reads a whole dump, checking every checksum and the structure.
/// `on_record` sees each record with its offset (progress reporting).
/// Reading goes on past a checksum mismatch, so one pass reports every
/// damaged record until the framing itself is lost.
pub fn check_dump<R: Read>(
    input: R,
    mut on_record: impl FnMut(u64, &DumpRecord),
) -> (DumpSummary, Vec<DumpProblem>) {
    let mut summary = DumpSummary::default();
    let mut problems = Vec::new();
    let mut reader = match DumpReader::new(input) {
        Ok(reader) => reader,
        Err(error) => {
            problems.push(DumpProblem {
                offset: error.offset,
                context: String::new(),
                message: error.reason,
            });
            return (summary, problems);
        }
    };
    let mut checker = StructureChecker::default();
    loop {
        match reader.next_record() {
            Ok(None) => break,
            Ok(Some((offset, record))) => {
                on_record(offset, &record);
                summary.records += 1;
                match &record {
                    DumpRecord::Info(info) => {
                        summary.created_at_ns = info.created_at_ns;
                        summary.source = info.source.clone();
                    }
                    DumpRecord::Checkpoint(c) => summary.checkpoints.push(c.name.to_string()),
                    DumpRecord::Section(s) => {
                        summary.sections += 1;
                        summary.data_bytes += s.size;
                    }
                    _ => {}
                }
                if !checker.desynced {
                    if let Err(message) = checker.accept(&record) {
                        problems.push(DumpProblem {
                            offset,
                            context: checker.context(),
                            message,
                        });
                        checker.desynced = true;
                    }
                }
            }
            Err(error) => {
                problems.push(DumpProblem {
                    offset: error.offset,
                    context: checker.context(),
                    message: error.reason.clone(),
                });
                checker.desynced = true;
                if error.fatal {
                    break;
                }
            }
        }
    }
    summary.bytes = reader.offset();
    if problems.is_empty() && !checker.ended() {
        problems.push(DumpProblem {
            offset: reader.offset(),
            context: String::new(),
            message: "no End record".into(),
        });
    }
    (summary, problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ckpt_proto::TIME_END;

    fn attributes(max_sections: u32) -> CreationAttributes {
        CreationAttributes {
            creation_flags: CreationFlags::WR_ACTIVE_REPLICA,
            checkpoint_size: u64::from(max_sections) << 28,
            retention_duration_ns: TIME_END,
            max_sections,
            max_section_size: 1 << 28,
            max_section_id_size: 64,
        }
    }

    fn sample() -> Vec<u8> {
        let mut w = DumpWriter::new(Vec::new()).unwrap();
        w.write(&DumpRecord::Info(DumpInfo {
            created_at_ns: 7,
            checkpoints: 2,
            source: "test".into(),
            tool: "ckpt-tool test".into(),
        }))
        .unwrap();
        w.write(&DumpRecord::Checkpoint(CheckpointHeader {
            name: CheckpointName::new("a").unwrap(),
            attributes: attributes(4),
            generated_next: 3,
            seq: 9,
            sections: 2,
            data_bytes: 10 + 5,
        }))
        .unwrap();
        w.write(&DumpRecord::Section(SectionHeader {
            id: SectionId::new("s1"),
            expiration_time: 123,
            state: SectionState::Valid,
            last_update: 5,
            size: 10,
        }))
        .unwrap();
        w.write_data(0, b"0123").unwrap();
        w.write_data(6, b"6789").unwrap();
        w.write(&DumpRecord::Section(SectionHeader {
            id: SectionId::new("s2"),
            expiration_time: TIME_END,
            state: SectionState::Valid,
            last_update: 6,
            size: 5,
        }))
        .unwrap();
        w.write_data(0, b"hello").unwrap();
        w.write(&DumpRecord::Checkpoint(CheckpointHeader {
            name: CheckpointName::new("b").unwrap(),
            attributes: attributes(1),
            generated_next: 1,
            seq: 1,
            sections: 1,
            data_bytes: 0,
        }))
        .unwrap();
        w.write(&DumpRecord::Section(SectionHeader {
            id: SectionId::DEFAULT,
            expiration_time: TIME_END,
            state: SectionState::Valid,
            last_update: 1,
            size: 0,
        }))
        .unwrap();
        let (bytes, total, records) = w.finish().unwrap();
        assert_eq!(total, bytes.len() as u64);
        assert_eq!(records, 10);
        bytes
    }

    /// The example of docs/dump-format.md, byte for byte.
    #[test]
    fn documented_example() {
        let mut w = DumpWriter::new(Vec::new()).unwrap();
        w.write(&DumpRecord::Info(DumpInfo {
            created_at_ns: 7,
            checkpoints: 1,
            source: "x".into(),
            tool: "t".into(),
        }))
        .unwrap();
        w.write(&DumpRecord::Checkpoint(CheckpointHeader {
            name: CheckpointName::new("a").unwrap(),
            attributes: CreationAttributes {
                creation_flags: CreationFlags::WR_ACTIVE_REPLICA,
                checkpoint_size: 100,
                retention_duration_ns: TIME_END,
                max_sections: 2,
                max_section_size: 50,
                max_section_id_size: 8,
            },
            generated_next: 1,
            seq: 3,
            sections: 1,
            data_bytes: 2,
        }))
        .unwrap();
        w.write(&DumpRecord::Section(SectionHeader {
            id: SectionId::new("s"),
            expiration_time: TIME_END,
            state: SectionState::Valid,
            last_update: 5,
            size: 2,
        }))
        .unwrap();
        w.write_data(0, b"hi").unwrap();
        let (bytes, total, _) = w.finish().unwrap();
        let expected = concat!(
            "434b505444554d5001000000ed10b8b017000000a169be730107000000000000",
            "0001000000010000007801000000744a000000ad2f86e7020100000061020000",
            "006400000000000000ffffffffffffff7f020000003200000000000000080000",
            "0000000000010000000000000003000000000000000100000002000000000000",
            "001f000000742b31ec030100000073ffffffffffffff7f010500000000000000",
            "02000000000000000b0000003dfa144204000000000000000068690d000000e9",
            "f9882705040000000000000017e87cac",
        );
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, expected);
        assert_eq!(total, 208);
        assert!(check_dump(&bytes[..], |_, _| {}).1.is_empty());
    }

    #[test]
    fn round_trip_and_clean_check() {
        let bytes = sample();
        assert_eq!(&bytes[0..8], b"CKPTDUMP");
        let mut reader = DumpReader::new(&bytes[..]).unwrap();
        let mut kinds = Vec::new();
        while let Some((_, record)) = reader.next_record().unwrap() {
            kinds.push(record.kind_name());
        }
        assert_eq!(
            kinds,
            [
                "Info",
                "Checkpoint",
                "Section",
                "Data",
                "Data",
                "Section",
                "Data",
                "Checkpoint",
                "Section",
                "End"
            ]
        );
        let (summary, problems) = check_dump(&bytes[..], |_, _| {});
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(summary.checkpoints, ["a", "b"]);
        assert_eq!(summary.data_bytes, 15);
        assert_eq!(summary.bytes, bytes.len() as u64);
    }

    #[test]
    fn every_single_flip_is_found() {
        let bytes = sample();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            let (_, problems) = check_dump(&bad[..], |_, _| {});
            assert!(!problems.is_empty(), "flip at {i} not found");
        }
    }

    #[test]
    fn every_truncation_is_found() {
        let bytes = sample();
        for cut in 0..bytes.len() {
            let (_, problems) = check_dump(&bytes[..cut], |_, _| {});
            assert!(!problems.is_empty(), "cut at {cut} not found");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(!check_dump(&longer[..], |_, _| {}).1.is_empty());
    }

    #[test]
    fn a_data_flip_names_its_record_and_section() {
        let bytes = sample();
        let needle = b"6789";
        let at = bytes.windows(4).position(|w| w == needle).unwrap();
        let mut bad = bytes.clone();
        bad[at] ^= 1;
        let (_, problems) = check_dump(&bad[..], |_, _| {});
        assert!(
            problems[0].message.contains("checksum mismatch"),
            "{problems:?}"
        );
        assert!(
            problems[0].context.contains("section \"s1\""),
            "{problems:?}"
        );
        // The record starts 8 + 9 bytes before its data.
        assert_eq!(problems[0].offset, at as u64 - 17);
        // The whole-file checksum catches it too.
        assert!(problems.iter().any(|p| p.message.contains("whole-file")));
    }
}
