//! The acknowledgement record of `bench --record` and its check
//! (`check-acked`).
//!
//! Format: UTF-8 text, one line per acknowledged write, in the order the
//! acknowledgements arrived:
//!
//! ```text
//! CHECKPOINT SECTION COUNTER SIZE\n
//! ```
//!
//! four fields separated by one space: the checkpoint name, the section id
//! (neither may contain whitespace), the counter the write stored in the
//! section's first 8 bytes (u64 little-endian) and the value's size in
//! bytes, both in decimal. Each line is written with a single `write(2)` on
//! a file opened for appending before the client sends its next write, so
//! every acknowledged write is in the file even if the tool is killed right
//! after. Only a line cut short by a full disk could be torn, and only the
//! last: the reader skips an unterminated last line it cannot parse and says
//! so.
//!
//! # The value
//!
//! [`fill_value`]: the counter, then bytes derived from the checkpoint, the
//! section (the client), the counter and the size — so every byte of a
//! stored value can be checked, not only its counter.
//!
//! # The check
//!
//! For each (checkpoint, section), with A the highest counter acknowledged,
//! the value stored now must hold a counter S with A ≤ S ≤ A + 1 (S = A + 1:
//! the one write a client had in flight was applied but its
//! acknowledgement was lost with the connection; the bench never has more
//! than one write in flight per section, and one bench at a time writes a
//! checkpoint), be exactly the acknowledged size when S = A, and match
//! [`fill_value`] for S and its size byte for byte. A missing or lower value
//! is *lost*; anything else that fails is *wrong*.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use ckpt_client::ClientError;
use ckpt_proto::{CheckpointName, ErrorCode, OpenFlags, ReadElement, SectionId};

/// One acknowledged write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckRecord {
    /// Checkpoint name.
    pub checkpoint: String,
    /// Section id.
    pub section: String,
    /// The counter the write stored.
    pub counter: u64,
    /// The value's size, bytes.
    pub size: u64,
}

/// Whether `field` can be a field of a record line.
pub fn valid_field(field: &str) -> bool {
    !field.is_empty() && !field.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The line for one acknowledged write, newline included.
pub fn format_line(checkpoint: &str, section: &str, counter: u64, size: u64) -> String {
    format!("{checkpoint} {section} {counter} {size}\n")
}

/// Parses one line (without its newline).
///
/// # Errors
/// A message saying what is wrong with the line.
pub fn parse_line(line: &str) -> Result<AckRecord, String> {
    let fields: Vec<&str> = line.split(' ').collect();
    let [checkpoint, section, counter, size] = fields[..] else {
        return Err(format!(
            "expected `CHECKPOINT SECTION COUNTER SIZE`, found {} fields",
            fields.len()
        ));
    };
    if !valid_field(checkpoint) || !valid_field(section) {
        return Err("empty field or whitespace inside a field".to_string());
    }
    let counter = counter
        .parse::<u64>()
        .map_err(|e| format!("counter `{counter}`: {e}"))?;
    let size = size
        .parse::<u64>()
        .map_err(|e| format!("size `{size}`: {e}"))?;
    if size < COUNTER_BYTES {
        return Err(format!("size {size} is shorter than the counter"));
    }
    Ok(AckRecord {
        checkpoint: checkpoint.to_string(),
        section: section.to_string(),
        counter,
        size,
    })
}

/// What a record file says was acknowledged.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Acked {
    /// Acknowledged writes (lines).
    pub writes: u64,
    /// The acknowledged write with the highest counter per (checkpoint,
    /// section): (counter, size).
    pub highest: BTreeMap<(String, String), (u64, u64)>,
    /// Whether an unterminated, unparsable last line was skipped.
    pub torn_tail: bool,
}

/// Parses a whole record file.
///
/// # Errors
/// `INVALID_PARAMETER` naming the first malformed line (other than a torn last one).
pub fn parse_records(text: &str) -> Result<Acked, ClientError> {
    let mut acked = Acked::default();
    let terminated = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    for (number, line) in lines.iter().enumerate() {
        let is_last = number + 1 == lines.len();
        let record = match parse_line(line) {
            Ok(record) => record,
            Err(_) if is_last && !terminated => {
                acked.torn_tail = true;
                continue;
            }
            Err(e) => {
                return Err(ClientError::new(
                    ErrorCode::InvalidParameter,
                    format!("record line {}: {e}", number + 1),
                ))
            }
        };
        acked.writes += 1;
        let highest = acked
            .highest
            .entry((record.checkpoint, record.section))
            .or_insert((record.counter, record.size));
        if record.counter > highest.0 {
            *highest = (record.counter, record.size);
        }
    }
    Ok(acked)
}

/// Bytes of the counter at the start of every bench value.
pub const COUNTER_BYTES: u64 = 8;

/// The counter at the start of a bench value, if it has 8 bytes.
pub fn decode_counter(value: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = value.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// Where the bytes after the counter start from: FNV-1a of the checkpoint
/// and section, mixed with the counter and the size, so a value of another
/// client, write or length does not match.
fn body_seed(checkpoint: &str, section: &str, counter: u64, size: u64) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for byte in checkpoint.bytes().chain([0]).chain(section.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^ counter.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ size.rotate_left(32)
}

/// splitmix64: a fast generator whose every output depends on the seed.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fills `value` (at least 8 bytes) with what `bench` writes to `section`
/// of `checkpoint` for `counter`: the counter (u64 LE), then bytes derived
/// from all four (the size is `value.len()`).
pub fn fill_value(checkpoint: &str, section: &str, counter: u64, value: &mut [u8]) {
    let size = value.len() as u64;
    let Some((head, body)) = value.split_first_chunk_mut::<8>() else {
        return;
    };
    *head = counter.to_le_bytes();
    let mut state = body_seed(checkpoint, section, counter, size);
    for chunk in body.chunks_mut(8) {
        let word = splitmix64(&mut state).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}

/// What is wrong with one (checkpoint, section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProblemKind {
    /// The section or its checkpoint is gone. Lost.
    Missing,
    /// The stored counter is below the last acknowledged one. Lost.
    Behind,
    /// The stored counter is more than one past the last acknowledged one:
    /// a value the bench never had in flight.
    Ahead,
    /// The stored value is too short for a counter, or is not the size of
    /// the acknowledged write that holds its counter.
    WrongSize {
        /// The size stored.
        stored: u64,
        /// The size acknowledged (0 when the stored value has no counter).
        acked: u64,
    },
    /// The bytes after the counter differ from what the bench wrote.
    WrongBody {
        /// The first differing byte.
        offset: u64,
    },
}

/// A section whose stored value is not what the record allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Checkpoint name.
    pub checkpoint: String,
    /// Section id.
    pub section: String,
    /// The highest counter acknowledged.
    pub acked: u64,
    /// The counter stored: `None` when the section, its checkpoint or its
    /// counter is missing.
    pub stored: Option<u64>,
    /// What is wrong.
    pub kind: ProblemKind,
}

impl Problem {
    /// Whether an acknowledged write is gone (rather than the value being wrong).
    pub fn is_lost(&self) -> bool {
        matches!(self.kind, ProblemKind::Missing | ProblemKind::Behind)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stored = self
            .stored
            .map_or_else(|| "missing".to_string(), |value| value.to_string());
        let (verdict, why) = match &self.kind {
            ProblemKind::Missing => ("lost", "the section is missing".to_string()),
            ProblemKind::Behind => ("lost", "the stored counter is lower".to_string()),
            ProblemKind::Ahead => (
                "wrong",
                "the stored counter is more than one past the last acknowledged write".to_string(),
            ),
            ProblemKind::WrongSize { stored, acked } => (
                "wrong",
                format!("the stored value is {stored} bytes, the acknowledged write {acked}"),
            ),
            ProblemKind::WrongBody { offset } => (
                "wrong",
                format!("byte {offset} differs from what the bench wrote"),
            ),
        };
        write!(
            f,
            "{verdict}: {} {}: acknowledged {}, stored {stored}: {why}",
            self.checkpoint, self.section, self.acked
        )
    }
}

/// Checks one stored value (`None`: missing) against the last acknowledged
/// write (`counter`, `size`) of `section` in `checkpoint`.
pub fn check_value(
    checkpoint: &str,
    section: &str,
    (acked, acked_size): (u64, u64),
    stored: Option<&[u8]>,
) -> Option<Problem> {
    let problem = |stored: Option<u64>, kind| {
        Some(Problem {
            checkpoint: checkpoint.to_string(),
            section: section.to_string(),
            acked,
            stored,
            kind,
        })
    };
    let Some(value) = stored else {
        return problem(None, ProblemKind::Missing);
    };
    let Some(counter) = decode_counter(value) else {
        let kind = ProblemKind::WrongSize {
            stored: value.len() as u64,
            acked: acked_size,
        };
        return problem(None, kind);
    };
    if counter < acked {
        return problem(Some(counter), ProblemKind::Behind);
    }
    if counter - acked > 1 {
        return problem(Some(counter), ProblemKind::Ahead);
    }
    if counter == acked && value.len() as u64 != acked_size {
        let kind = ProblemKind::WrongSize {
            stored: value.len() as u64,
            acked: acked_size,
        };
        return problem(Some(counter), kind);
    }
    let mut expected = vec![0u8; value.len()];
    fill_value(checkpoint, section, counter, &mut expected);
    let differs = value.iter().zip(&expected).position(|(a, b)| a != b)?;
    problem(
        Some(counter),
        ProblemKind::WrongBody {
            offset: differs as u64,
        },
    )
}

/// Checks every section named in `acked` against what is stored
/// (`None`: missing), in (checkpoint, section) order.
pub fn find_problems(
    acked: &Acked,
    stored: &BTreeMap<(String, String), Option<Vec<u8>>>,
) -> Vec<Problem> {
    acked
        .highest
        .iter()
        .filter_map(|(key, &last)| {
            let value = stored.get(key).and_then(|v| v.as_deref());
            check_value(&key.0, &key.1, last, value)
        })
        .collect()
}

/// Appends acknowledgements to a record file, each line written through
/// (one `write(2)`, no user-space buffer) before [`Recorder::append`] returns.
#[derive(Debug)]
pub struct Recorder {
    file: Mutex<File>,
}

impl Recorder {
    /// Opens `path` for appending, creating it if missing.
    ///
    /// # Errors
    /// `LIBRARY` with the IO error.
    pub fn open(path: &Path) -> Result<Recorder, ClientError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| {
                ClientError::new(
                    ErrorCode::Library,
                    format!("opening record file {}: {e}", path.display()),
                )
            })?;
        Ok(Recorder {
            file: Mutex::new(file),
        })
    }

    /// Records one acknowledged write.
    ///
    /// # Errors
    /// `LIBRARY` when the line cannot be written (the record is then incomplete).
    pub fn append(
        &self,
        checkpoint: &str,
        section: &str,
        counter: u64,
        size: u64,
    ) -> Result<(), ClientError> {
        let line = format_line(checkpoint, section, counter, size);
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        file.write_all(line.as_bytes()).map_err(|e| {
            ClientError::new(ErrorCode::Library, format!("writing the record file: {e}"))
        })
    }
}

/// The outcome of `check-acked`.
#[derive(Debug)]
pub struct CheckReport {
    /// What the file says.
    pub acked: Acked,
    /// The sections whose value is lost or wrong.
    pub problems: Vec<Problem>,
}

impl CheckReport {
    /// Sections that lost acknowledged writes.
    pub fn lost(&self) -> usize {
        self.problems.iter().filter(|p| p.is_lost()).count()
    }

    /// Sections that hold a value the bench did not write as acknowledged.
    pub fn wrong(&self) -> usize {
        self.problems.len() - self.lost()
    }
}

/// Reads the whole stored value of every section named in `acked` and
/// checks it ([`find_problems`]).
///
/// # Errors
/// Connection errors, or a server error other than "does not exist".
pub async fn check_against_server(addr: &str, acked: Acked) -> Result<CheckReport, ClientError> {
    let client = crate::connect(addr).await?;
    let mut by_checkpoint: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (checkpoint, section) in acked.highest.keys() {
        by_checkpoint.entry(checkpoint).or_default().push(section);
    }
    let mut stored = BTreeMap::new();
    for (checkpoint_text, sections) in by_checkpoint {
        let name = CheckpointName::new(checkpoint_text.as_bytes())?;
        let checkpoint = match client.open(&name, None, OpenFlags::READ).await {
            Ok(checkpoint) => Some(checkpoint),
            Err(e) if is_missing(&e) => None,
            Err(e) => return Err(e),
        };
        let Some(checkpoint) = checkpoint else {
            for section in sections {
                stored.insert((checkpoint_text.to_string(), section.to_string()), None);
            }
            continue;
        };
        // Pipelined: the client bounds how many are in flight.
        let reads = sections.iter().map(|section| {
            let element = ReadElement {
                section_id: SectionId::new(section.as_bytes()),
                offset: 0,
                size: None,
            };
            checkpoint.read(vec![element])
        });
        let results = futures::future::join_all(reads).await;
        for (section, result) in sections.iter().zip(results) {
            let value = match result {
                Ok(mut data) => data.pop(),
                Err(e) if is_missing(&e) => None,
                Err(e) => return Err(e),
            };
            stored.insert((checkpoint_text.to_string(), section.to_string()), value);
        }
        checkpoint.close().await?;
    }
    let problems = find_problems(&acked, &stored);
    Ok(CheckReport { acked, problems })
}

fn is_missing(error: &ClientError) -> bool {
    matches!(
        error.code,
        ErrorCode::NotExist | ErrorCode::DoesntExist | ErrorCode::NameNotFound
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        let line = format_line("bench", "c3", 42, 512);
        assert_eq!(line, "bench c3 42 512\n");
        let record = parse_line(line.trim_end_matches('\n')).unwrap();
        assert_eq!(
            record,
            AckRecord {
                checkpoint: "bench".into(),
                section: "c3".into(),
                counter: 42,
                size: 512,
            }
        );
        assert!(parse_line("bench c3 1").is_err(), "the size is required");
        assert!(parse_line("bench c3 x 8").is_err());
        assert!(parse_line("bench c3 -1 8").is_err());
        assert!(
            parse_line("bench c3 1 7").is_err(),
            "shorter than the counter"
        );
        assert!(parse_line("bench  c3 1 8").is_err());
        assert!(parse_line("a b c 1 8").is_err());
        assert!(!valid_field("two words") && !valid_field("") && valid_field("c0"));
    }

    #[test]
    fn file_keeps_the_highest_counter_per_section_with_its_size() {
        let text = "b c0 1 8\nb c1 5 16\nb c0 2 9\nb c1 4 8\nother c0 9 8\n";
        let acked = parse_records(text).unwrap();
        assert_eq!(acked.writes, 5);
        assert!(!acked.torn_tail);
        let highest: Vec<_> = acked
            .highest
            .iter()
            .map(|((c, s), n)| (c.as_str(), s.as_str(), *n))
            .collect();
        assert_eq!(
            highest,
            [
                ("b", "c0", (2, 9)),
                ("b", "c1", (5, 16)),
                ("other", "c0", (9, 8))
            ]
        );
    }

    #[test]
    fn a_torn_last_line_is_skipped_but_garbage_elsewhere_is_an_error() {
        let acked = parse_records("b c0 1 8\nb c0 2 8\nb c").unwrap();
        assert_eq!(acked.writes, 2);
        assert!(acked.torn_tail);
        // An unterminated last line that parses counts.
        assert_eq!(parse_records("b c0 1 8\nb c0 2 8").unwrap().writes, 2);
        let error = parse_records("b c0 1 8\nnonsense\nb c0 2 8\n").unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidParameter);
        assert!(error.message.contains("line 2"), "{error}");
        assert_eq!(parse_records("").unwrap(), Acked::default());
    }

    #[test]
    fn counters_decode_from_the_first_eight_bytes() {
        let mut value = 7u64.to_le_bytes().to_vec();
        value.extend_from_slice(&[0xff; 100]);
        assert_eq!(decode_counter(&value), Some(7));
        assert_eq!(decode_counter(&[1, 2, 3]), None);
    }

    fn value(section: &str, counter: u64, size: usize) -> Vec<u8> {
        let mut value = vec![0u8; size];
        fill_value("b", section, counter, &mut value);
        value
    }

    #[test]
    fn values_depend_on_section_counter_and_size() {
        let v = value("c0", 5, 64);
        assert_eq!(decode_counter(&v), Some(5));
        assert_ne!(v[8..], value("c1", 5, 64)[8..], "another client");
        assert_ne!(v[8..], value("c0", 6, 64)[8..], "another write");
        assert_ne!(v[8..40], value("c0", 5, 40)[8..], "another size");
        assert_eq!(v, value("c0", 5, 64), "deterministic");
        // Odd sizes fill the tail, and the counter alone is a whole value.
        assert_eq!(value("c0", 5, 13).len(), 13);
        assert_eq!(value("c0", 5, 8), 5u64.to_le_bytes());
    }

    #[test]
    fn the_right_value_or_the_one_in_flight_passes() {
        let acked = (5, 64);
        assert_eq!(
            check_value("b", "c0", acked, Some(&value("c0", 5, 64))),
            None
        );
        // The write in flight at a crash was applied, its ack lost; it may
        // have had another size (a rerun with another --value-size).
        assert_eq!(
            check_value("b", "c0", acked, Some(&value("c0", 6, 64))),
            None
        );
        assert_eq!(
            check_value("b", "c0", acked, Some(&value("c0", 6, 32))),
            None
        );
    }

    #[test]
    fn a_wrong_body_is_reported() {
        let acked = (5, 64);
        let mut corrupt = value("c0", 5, 64);
        corrupt[40] ^= 1;
        let problem = check_value("b", "c0", acked, Some(&corrupt)).unwrap();
        assert_eq!(problem.kind, ProblemKind::WrongBody { offset: 40 });
        assert!(!problem.is_lost());
        assert_eq!(
            problem.to_string(),
            "wrong: b c0: acknowledged 5, stored 5: byte 40 differs from what the bench wrote"
        );
        // Another client's value with the right counter.
        let other = check_value("b", "c0", acked, Some(&value("c1", 5, 64))).unwrap();
        assert_eq!(other.kind, ProblemKind::WrongBody { offset: 8 });
        // The old body under the new counter (a torn overwrite).
        let mut torn = value("c0", 4, 64);
        torn[..8].copy_from_slice(&5u64.to_le_bytes());
        assert!(matches!(
            check_value("b", "c0", acked, Some(&torn)).unwrap().kind,
            ProblemKind::WrongBody { .. }
        ));
    }

    #[test]
    fn wrong_sizes_and_counters_are_reported() {
        let acked = (5, 64);
        let kind = |stored: &[u8]| check_value("b", "c0", acked, Some(stored)).map(|p| p.kind);
        // Cut short, even to just the counter.
        assert_eq!(
            kind(&value("c0", 5, 64)[..32]),
            Some(ProblemKind::WrongSize {
                stored: 32,
                acked: 64
            })
        );
        assert_eq!(
            kind(&5u64.to_le_bytes()),
            Some(ProblemKind::WrongSize {
                stored: 8,
                acked: 64
            })
        );
        assert_eq!(
            kind(&[5, 0, 0]),
            Some(ProblemKind::WrongSize {
                stored: 3,
                acked: 64
            })
        );
        assert_eq!(kind(&value("c0", 4, 64)), Some(ProblemKind::Behind));
        assert_eq!(kind(&value("c0", 7, 64)), Some(ProblemKind::Ahead));
        assert_eq!(
            check_value("b", "c0", acked, None).map(|p| p.kind),
            Some(ProblemKind::Missing)
        );
    }

    #[test]
    fn problems_are_found_per_section() {
        let acked = parse_records("b c0 5 16\nb c1 5 16\nb c2 5 16\nb c3 5 16\n").unwrap();
        let key = |s: &str| ("b".to_string(), s.to_string());
        let mut wrong = value("c1", 5, 16);
        wrong[15] ^= 0x80;
        let stored = BTreeMap::from([
            (key("c0"), Some(value("c0", 5, 16))),
            (key("c1"), Some(wrong)),
            (key("c2"), Some(value("c2", 4, 16))),
            (key("c3"), None),
        ]);
        let problems = find_problems(&acked, &stored);
        let found: Vec<_> = problems
            .iter()
            .map(|p| (p.section.as_str(), p.is_lost()))
            .collect();
        assert_eq!(found, [("c1", false), ("c2", true), ("c3", true)]);
        let report = CheckReport { acked, problems };
        assert_eq!((report.lost(), report.wrong()), (2, 1));
    }

    #[test]
    fn recorder_appends_lines_that_parse_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acked");
        let recorder = Recorder::open(&path).unwrap();
        recorder.append("b", "c0", 1, 8).unwrap();
        recorder.append("b", "c0", 2, 8).unwrap();
        drop(recorder);
        // Reopening appends rather than truncates.
        Recorder::open(&path)
            .unwrap()
            .append("b", "c1", 9, 8)
            .unwrap();
        let acked = parse_records(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(acked.writes, 3);
        assert_eq!(acked.highest.len(), 2);
    }
}
