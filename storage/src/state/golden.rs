//! Golden (scripted) tests of the checkpoint state machine.
//!
//! Each `golden/*.txt` file is a script: lines starting with `> ` are
//! operations, the lines after each are what the state machine answered —
//! the outcome or error, and the records it logged. The test runs every
//! script's operations through [`StateMachine::plan`] and
//! [`StateMachine::apply`] (with an in-memory [`Backing`] that applies the
//! effects) and compares the whole text with the file. With
//! `UPDATE_GOLDEN=1` it rewrites the files instead, so a change of behaviour
//! shows up as a diff to review.
//!
//! Operations (`NAME` is a checkpoint name; the script remembers the
//! instance each name was last created as):
//!
//! ```text
//! now NS                                   set the clock (starts at 1000)
//! create NAME sections=N section_size=N size=N id_size=N [retention=NS|end] [mode=active|weak|all]
//! unlink NAME | destroy NAME | retention NAME NS
//! section NAME ID|* [exp=NS|end] [DATA]    create a section (* = generated id)
//! delete NAME ID | expiration NAME ID NS|end | overwrite NAME ID DATA
//! write NAME ID@OFFSET=DATA ...             one atomic multi-element write
//! expire                                   delete every section due now
//! show NAME                                the instance and its sections
//! ```
//!
//! `ID` `default` is the default section. Numbers may be written `2^K`,
//! `2^K+N` or `2^K-N`. `DATA` is `"text"` (with `\0` and `\n`), `x*N` (N
//! bytes of x) or `-` (empty).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ckpt_proto::{
    CheckpointName, CkptResult, CreationAttributes, CreationFlags, SectionCreationAttributes,
    SectionId, WriteElement, TIME_END,
};

use super::{Backing, Effect, Op, Outcome, SectionMeta, StateMachine};
use crate::wal::record::{Entry, Epoch, InstanceId, RecordBody, Seq, WriteOp};

/// What storage holds, kept by applying the effects: section metadata, the
/// expiry index and the data (sparse: byte offset → byte).
#[derive(Default)]
struct MemBacking {
    sections: RefCell<BTreeMap<(InstanceId, SectionId), SectionMeta>>,
    expiry: RefCell<BTreeSet<(i64, InstanceId, SectionId)>>,
    data: RefCell<HashMap<(InstanceId, SectionId), BTreeMap<u64, u8>>>,
}

impl Backing for MemBacking {
    fn load_sections(&self, instance: InstanceId) -> CkptResult<BTreeMap<SectionId, SectionMeta>> {
        Ok(self
            .sections
            .borrow()
            .iter()
            .filter(|((i, _), _)| *i == instance)
            .map(|((_, id), meta)| (id.clone(), *meta))
            .collect())
    }

    fn take_column_family(&self, instance: InstanceId) -> CkptResult<u32> {
        Ok((instance.0 % 4) as u32)
    }

    fn expiry_candidates(&self, now: i64) -> CkptResult<Vec<(InstanceId, SectionId)>> {
        Ok(self
            .expiry
            .borrow()
            .iter()
            .filter(|(at, _, _)| *at <= now)
            .map(|(_, instance, id)| (*instance, id.clone()))
            .collect())
    }
}

impl MemBacking {
    fn apply(&self, effect: &Effect) {
        let mut data = self.data.borrow_mut();
        match effect {
            Effect::PutInstance { .. } | Effect::PutName { .. } | Effect::DeleteName { .. } => {}
            Effect::DeleteInstance { instance } => {
                self.sections.borrow_mut().retain(|(i, _), _| i != instance);
            }
            Effect::PutSection {
                instance,
                section_id,
                meta,
            } => {
                self.sections
                    .borrow_mut()
                    .insert((*instance, section_id.clone()), *meta);
            }
            Effect::DeleteSection {
                instance,
                section_id,
            } => {
                self.sections
                    .borrow_mut()
                    .remove(&(*instance, section_id.clone()));
            }
            Effect::PutExpiry {
                expiration_time,
                instance,
                section_id,
            } => {
                self.expiry
                    .borrow_mut()
                    .insert((*expiration_time, *instance, section_id.clone()));
            }
            Effect::DeleteExpiry {
                expiration_time,
                instance,
                section_id,
            } => {
                self.expiry
                    .borrow_mut()
                    .remove(&(*expiration_time, *instance, section_id.clone()));
            }
            Effect::WriteData {
                instance,
                section_id,
                offset,
                data: bytes,
                ..
            } => {
                let section = data.entry((*instance, section_id.clone())).or_default();
                for (at, byte) in bytes.iter().enumerate() {
                    section.insert(offset + at as u64, *byte);
                }
            }
            Effect::ReplaceData {
                instance,
                section_id,
                data: bytes,
                ..
            } => {
                let section = (0..).zip(bytes.iter().copied()).collect();
                data.insert((*instance, section_id.clone()), section);
            }
            Effect::RemoveData {
                instance,
                section_id,
                ..
            } => {
                data.remove(&(*instance, section_id.clone()));
            }
            Effect::ClearInstance { instance, .. } => {
                data.retain(|(i, _), _| i != instance);
            }
        }
    }

    /// The first `len` bytes of a section's data (gaps read as zeros).
    fn read(&self, instance: InstanceId, id: &SectionId, len: u64) -> Vec<u8> {
        let data = self.data.borrow();
        let section = data.get(&(instance, id.clone()));
        (0..len)
            .map(|at| section.and_then(|s| s.get(&at)).copied().unwrap_or(0))
            .collect()
    }
}

struct Script {
    state: StateMachine,
    backing: MemBacking,
    names: HashMap<String, InstanceId>,
    now: i64,
    out: String,
}

fn number(text: &str) -> Result<i64, String> {
    let bad = || format!("bad number {text:?}");
    if text == "end" {
        return Ok(TIME_END);
    }
    if let Some(rest) = text.strip_prefix("2^") {
        let (exponent, delta) = match rest.find(['+', '-']) {
            Some(at) => (&rest[..at], rest[at..].parse::<i128>().map_err(|_| bad())?),
            None => (rest, 0),
        };
        let exponent: u32 = exponent.parse().map_err(|_| bad())?;
        let value = (1i128 << exponent) + delta;
        return i64::try_from(value)
            .or_else(|_| u64::try_from(value).map(|v| v as i64))
            .map_err(|_| bad());
    }
    text.parse::<i64>()
        .or_else(|_| text.parse::<u64>().map(|v| v as i64))
        .map_err(|_| bad())
}

fn unsigned(text: &str) -> Result<u64, String> {
    number(text).map(|v| v as u64)
}

fn data(text: &str) -> Result<Vec<u8>, String> {
    if text == "-" {
        return Ok(Vec::new());
    }
    if let Some(quoted) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        let mut out = Vec::new();
        let mut chars = quoted.chars();
        while let Some(c) = chars.next() {
            match (c, c == '\\') {
                (_, true) => match chars.next() {
                    Some('0') => out.push(0),
                    Some('n') => out.push(b'\n'),
                    Some(other) => out.extend(other.to_string().bytes()),
                    None => return Err("dangling escape".into()),
                },
                (c, false) => out.extend(c.to_string().bytes()),
            }
        }
        return Ok(out);
    }
    if let Some((byte, count)) = text.split_once('*') {
        let [byte] = byte.as_bytes() else {
            return Err(format!("bad data {text:?}"));
        };
        return Ok(vec![*byte; unsigned(count)? as usize]);
    }
    Err(format!("bad data {text:?}"))
}

fn section_id(text: &str) -> SectionId {
    if text == "default" {
        SectionId::DEFAULT
    } else {
        SectionId::new(text)
    }
}

fn show_bytes(bytes: &[u8]) -> String {
    let mut out = String::from("\"");
    for &b in bytes {
        match b {
            0 => out.push_str("\\0"),
            b'\n' => out.push_str("\\n"),
            b'"' | b'\\' => {
                out.push('\\');
                out.push(b as char);
            }
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out.push('"');
    out
}

/// Data as shown in records: short data whole, long data by size.
fn show_data(bytes: &[u8]) -> String {
    if bytes.len() <= 32 {
        show_bytes(bytes)
    } else {
        format!("<{} bytes>", bytes.len())
    }
}

fn show_time(time: i64) -> String {
    if time == TIME_END {
        "end".into()
    } else {
        time.to_string()
    }
}

fn show_record(body: &RecordBody) -> String {
    match body {
        RecordBody::CheckpointCreate { name, attributes: a } => format!(
            "CheckpointCreate {name} flags=0x{:x} size={} sections={} section_size={} id_size={} retention={}",
            a.creation_flags.0,
            a.checkpoint_size,
            a.max_sections,
            a.max_section_size,
            a.max_section_id_size,
            show_time(a.retention_duration_ns)
        ),
        RecordBody::CheckpointUnlink => "CheckpointUnlink".into(),
        RecordBody::CheckpointDestroy => "CheckpointDestroy".into(),
        RecordBody::RetentionSet {
            retention_duration_ns,
        } => format!("RetentionSet {}", show_time(*retention_duration_ns)),
        RecordBody::SectionCreate {
            section_id,
            expiration_time,
            data,
            generated_next,
        } => format!(
            "SectionCreate {section_id} exp={} data={} generated_next={generated_next}",
            show_time(*expiration_time),
            show_data(data)
        ),
        RecordBody::SectionDelete {
            section_id,
            expired,
        } => format!("SectionDelete {section_id} expired={expired}"),
        RecordBody::SectionExpirationSet {
            section_id,
            expiration_time,
        } => format!(
            "SectionExpirationSet {section_id} exp={}",
            show_time(*expiration_time)
        ),
        RecordBody::Write { elements } => {
            let parts: Vec<String> = elements
                .iter()
                .map(|WriteOp { section_id, offset, data }| {
                    format!("{section_id}@{offset}={}", show_data(data))
                })
                .collect();
            format!("Write {}", parts.join(" "))
        }
        RecordBody::Overwrite { section_id, data } => {
            format!("Overwrite {section_id} data={}", show_data(data))
        }
        RecordBody::GeneratedIdSet { next } => format!("GeneratedIdSet {next}"),
        other => format!("{other:?}"),
    }
}

impl Script {
    fn new() -> Self {
        Script {
            state: StateMachine::new(HashMap::new(), HashMap::new(), 1),
            backing: MemBacking::default(),
            names: HashMap::new(),
            now: 1000,
            out: String::new(),
        }
    }

    fn instance(&self, name: &str) -> Result<InstanceId, String> {
        self.names
            .get(name)
            .copied()
            .ok_or_else(|| format!("script error: {name} was never created"))
    }

    fn parse(&self, words: &[&str]) -> Result<Option<Op>, String> {
        let arg = |i: usize| {
            words
                .get(i)
                .copied()
                .ok_or_else(|| format!("script error: {} needs argument {i}", words[0]))
        };
        let options: HashMap<&str, &str> = words
            .iter()
            .skip(1)
            .filter_map(|w| w.split_once('='))
            .filter(|(k, _)| !k.contains('@'))
            .collect();
        let option =
            |key: &str, default: &str| options.get(key).copied().unwrap_or(default).to_string();
        Ok(Some(match words[0] {
            "create" => {
                let mode = match option("mode", "active").as_str() {
                    "active" => CreationFlags::WR_ACTIVE_REPLICA,
                    "weak" => CreationFlags::WR_ACTIVE_REPLICA_WEAK,
                    "all" => CreationFlags::WR_ALL_REPLICAS,
                    other => CreationFlags(unsigned(other)? as u32),
                };
                Op::CreateCheckpoint {
                    name: CheckpointName::new(arg(1)?).map_err(|e| e.to_string())?,
                    attributes: CreationAttributes {
                        creation_flags: mode,
                        checkpoint_size: unsigned(&option("size", "0"))?,
                        retention_duration_ns: number(&option("retention", "end"))?,
                        max_sections: unsigned(&option("sections", "1"))? as u32,
                        max_section_size: unsigned(&option("section_size", "0"))?,
                        max_section_id_size: unsigned(&option("id_size", "0"))?,
                    },
                    instance: None,
                    epoch: Epoch(1),
                }
            }
            "unlink" => Op::Unlink {
                name: CheckpointName::new(arg(1)?).map_err(|e| e.to_string())?,
            },
            "destroy" => Op::Destroy {
                instance: self.instance(arg(1)?)?,
            },
            "retention" => Op::SetRetention {
                instance: self.instance(arg(1)?)?,
                retention_duration_ns: number(arg(2)?)?,
            },
            "section" => {
                let id = arg(2)?;
                let rest = words.get(3..).unwrap_or(&[]);
                let bytes = match rest.iter().find(|w| !w.starts_with("exp=")) {
                    Some(text) => data(text)?,
                    None => Vec::new(),
                };
                Op::CreateSection {
                    instance: self.instance(arg(1)?)?,
                    attributes: SectionCreationAttributes {
                        section_id: (id != "*").then(|| section_id(id)),
                        expiration_time: number(&option("exp", "end"))?,
                    },
                    data: bytes,
                }
            }
            "delete" => Op::DeleteSection {
                instance: self.instance(arg(1)?)?,
                section_id: section_id(arg(2)?),
            },
            "expiration" => Op::SetExpiration {
                instance: self.instance(arg(1)?)?,
                section_id: section_id(arg(2)?),
                expiration_time: number(arg(3)?)?,
            },
            "overwrite" => Op::Overwrite {
                instance: self.instance(arg(1)?)?,
                section_id: section_id(arg(2)?),
                data: data(arg(3)?)?,
            },
            "write" => {
                let mut elements = Vec::new();
                for word in &words[2..] {
                    let (target, text) = word
                        .split_once('=')
                        .ok_or_else(|| format!("script error: element {word:?}"))?;
                    let (id, offset) = target
                        .split_once('@')
                        .ok_or_else(|| format!("script error: element {word:?}"))?;
                    elements.push(WriteElement {
                        section_id: section_id(id),
                        offset: unsigned(offset)?,
                        data: data(text)?,
                    });
                }
                Op::Write {
                    instance: self.instance(arg(1)?)?,
                    elements,
                }
            }
            "expire" => Op::ExpireDue,
            "now" | "show" => return Ok(None),
            other => return Err(format!("script error: unknown operation {other:?}")),
        }))
    }

    fn run(&mut self, line: &str) {
        let words = split_words(line);
        let _ = writeln!(self.out, "> {line}");
        match words[0] {
            "now" => match number(words.get(1).copied().unwrap_or("")) {
                Ok(now) => self.now = now,
                Err(error) => self.out.push_str(&format!("script error: {error}\n")),
            },
            "show" => self.show(words.get(1).copied().unwrap_or("")),
            _ => match self.parse(&words) {
                Ok(Some(op)) => self.execute(words[1..].first().copied(), &op),
                Ok(None) => {}
                Err(error) => {
                    let _ = writeln!(self.out, "{error}");
                }
            },
        }
    }

    fn execute(&mut self, name: Option<&str>, op: &Op) {
        let planned = self.state.plan(&self.backing, op, self.now);
        let (records, outcome) = match planned {
            Ok(planned) => planned,
            Err(error) => {
                let at = error
                    .index
                    .map(|i| format!(" at element {i}"))
                    .unwrap_or_default();
                let _ = writeln!(self.out, "error {:?}{at}: {}", error.code, error.detail);
                return;
            }
        };
        let _ = writeln!(self.out, "ok {}", show_outcome(&outcome));
        if let (Outcome::Opened { instance, .. }, Some(name)) = (&outcome, name) {
            self.names.insert(name.to_string(), *instance);
        }
        for (instance, body) in records {
            let (epoch, seq) = match self.state.instance(instance) {
                Some(meta) => (meta.epoch, Seq(meta.seq.0 + 1)),
                None => (Epoch(1), Seq(1)),
            };
            let _ = writeln!(
                self.out,
                "  record instance={} seq={} {}",
                instance.0,
                seq.0,
                show_record(&body)
            );
            let entry = Entry {
                instance,
                epoch,
                seq,
                timestamp: self.now,
                origin: None,
                body,
            };
            match self.state.apply(&self.backing, &entry) {
                Ok(effects) => effects.iter().for_each(|e| self.backing.apply(e)),
                Err(error) => {
                    let _ = writeln!(
                        self.out,
                        "  apply failed: {:?}: {}",
                        error.code, error.detail
                    );
                }
            }
        }
    }

    fn show(&mut self, name: &str) {
        let Ok(instance) = self.instance(name) else {
            let _ = writeln!(self.out, "script error: {name} was never created");
            return;
        };
        let Some(meta) = self.state.instance(instance) else {
            let _ = writeln!(self.out, "  instance {} does not exist", instance.0);
            return;
        };
        let _ = writeln!(
            self.out,
            "  instance={} unlinked={} sections={} memory_used={} generated_next={} retention={}",
            instance.0,
            meta.unlinked,
            meta.section_count,
            meta.memory_used,
            meta.generated_next,
            show_time(meta.attributes.retention_duration_ns)
        );
        let sections = self.backing.load_sections(instance).unwrap_or_default();
        for (id, section) in sections {
            let shown = section.size.min(32);
            let bytes = self.backing.read(instance, &id, shown);
            let more = if section.size > shown { " …" } else { "" };
            let _ = writeln!(
                self.out,
                "  section {id} size={} exp={} data={}{more}",
                section.size,
                show_time(section.expiration_time),
                show_bytes(&bytes)
            );
        }
    }
}

fn show_outcome(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Opened { instance, existed } => {
            format!("opened instance={} existed={existed}", instance.0)
        }
        Outcome::SectionCreated { section_id } => format!("section {section_id}"),
        Outcome::Expired { count } => format!("expired {count}"),
        Outcome::Done => "done".into(),
    }
}

/// Splits on spaces, keeping quoted text (which may hold spaces) whole.
fn split_words(line: &str) -> Vec<&str> {
    let mut words = Vec::new();
    let mut start = None;
    let mut quoted = false;
    let mut escaped = false;
    for (at, c) in line.char_indices() {
        if quoted {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => quoted = false,
                _ => {}
            }
            continue;
        }
        match c {
            ' ' => {
                if let Some(from) = start.take() {
                    words.push(&line[from..at]);
                }
            }
            '"' => {
                quoted = true;
                start.get_or_insert(at);
            }
            _ => {
                start.get_or_insert(at);
            }
        }
    }
    if let Some(from) = start {
        words.push(&line[from..]);
    }
    words
}

/// Runs a script's operations and returns the text with fresh answers.
fn run_script(text: &str) -> String {
    let mut script = Script::new();
    for line in text.lines() {
        if let Some(operation) = line.strip_prefix("> ") {
            script.run(operation.trim());
        } else if line.starts_with('#') || line.trim().is_empty() {
            script.out.push_str(line);
            script.out.push('\n');
        }
        // Anything else is a previous answer: regenerated above.
    }
    script.out
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/state/golden")
}

#[test]
fn golden_scripts() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .expect("golden directory")
        .map(|entry| entry.expect("golden entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "txt"))
        .collect();
    paths.sort();
    assert!(
        !paths.is_empty(),
        "no golden scripts in {}",
        golden_dir().display()
    );
    let mut failed = Vec::new();
    for path in paths {
        let expected = std::fs::read_to_string(&path).expect("golden script");
        let actual = run_script(&expected);
        if update {
            std::fs::write(&path, &actual).expect("rewriting a golden script");
        } else if actual != expected {
            let first = expected
                .lines()
                .zip(actual.lines())
                .position(|(e, a)| e != a)
                .unwrap_or(expected.lines().count().min(actual.lines().count()));
            failed.push(format!(
                "{}: first difference at line {}:\n  expected: {:?}\n  actual:   {:?}",
                path.display(),
                first + 1,
                expected.lines().nth(first),
                actual.lines().nth(first)
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "golden scripts differ (rerun with UPDATE_GOLDEN=1 and review the diff):\n{}",
        failed.join("\n")
    );
}

/// A checkpoint whose attributes were stored before the bounds existed
/// (maxSectionSize and checkpointSize of 2^64-1) gets them anyway, and its
/// sizes cannot wrap: before the bounds, a write past 2^48 wrapped the
/// chunk index and a sum of sizes wrapped memoryUsed past checkpointSize.
#[test]
fn stored_attributes_past_the_bounds_are_bounded_anyway() {
    use super::InstanceMeta;
    let instance = InstanceId(7);
    let name = CheckpointName::new("legacy").unwrap();
    let meta = InstanceMeta {
        name: name.clone(),
        attributes: CreationAttributes {
            creation_flags: CreationFlags::WR_ACTIVE_REPLICA,
            checkpoint_size: u64::MAX,
            retention_duration_ns: TIME_END,
            max_sections: u32::MAX,
            max_section_size: u64::MAX,
            max_section_id_size: 8,
        },
        column_family: 0,
        unlinked: false,
        epoch: Epoch(1),
        seq: Seq(3),
        generated_next: 1,
        section_count: 2,
        memory_used: u64::MAX - 5,
        created_at: 0,
        stale: false,
    };
    let backing = MemBacking::default();
    for (id, size) in [("a", u64::MAX - 5), ("b", 0)] {
        let section = SectionMeta {
            size,
            expiration_time: TIME_END,
            state: ckpt_proto::SectionState::Valid,
            last_update: 0,
        };
        backing
            .sections
            .borrow_mut()
            .insert((instance, SectionId::new(id)), section);
    }
    let mut state = StateMachine::new(
        HashMap::from([(name, instance)]),
        HashMap::from([(instance, meta)]),
        8,
    );
    let write = |id: &str, offset: u64, data: &[u8]| Op::Write {
        instance,
        elements: vec![WriteElement {
            section_id: SectionId::new(id),
            offset,
            data: data.to_vec(),
        }],
    };
    let code = |result: CkptResult<_>| result.map(|_| ()).unwrap_err().code;
    use ckpt_proto::ErrorCode;
    assert_eq!(
        code(state.plan(&backing, &write("b", 0, b"0123456789"), 0)),
        ErrorCode::NoSpace,
        "memoryUsed + 10 would wrap"
    );
    assert_eq!(
        code(state.plan(&backing, &write("b", 1 << 48, b"X"), 0)),
        ErrorCode::InvalidParameter,
        "offset 2^48 is past SECTION_BYTES_MAX"
    );
    assert_eq!(
        code(state.plan(&backing, &write("b", u64::MAX, b"X"), 0)),
        ErrorCode::InvalidParameter,
        "offset + size overflows"
    );
    let overwrite = Op::Overwrite {
        instance,
        section_id: SectionId::new("b"),
        data: b"x".to_vec(),
    };
    assert_eq!(
        code(state.plan(&backing, &overwrite, 0)),
        ErrorCode::NoSpace
    );
}

#[test]
fn words_keep_quoted_spaces() {
    assert_eq!(
        split_words(r#"write c a@0="x y" b@2=z*3"#),
        vec!["write", "c", r#"a@0="x y""#, "b@2=z*3"]
    );
    assert_eq!(number("2^48").unwrap(), 1 << 48);
    assert_eq!(number("2^40-1").unwrap(), (1 << 40) - 1);
    assert_eq!(data(r#""a\0b""#).unwrap(), b"a\0b");
}
