//! The acknowledgement record of `bench --record` and its check
//! (`check-acked`).
//!
//! Format: UTF-8 text, one line per acknowledged write, in the order the
//! acknowledgements arrived:
//!
//! ```text
//! CHECKPOINT SECTION COUNTER\n
//! ```
//!
//! three fields separated by one space: the checkpoint name, the section id
//! (neither may contain whitespace) and the counter the write stored in the
//! section's first 8 bytes (u64 little-endian), in decimal. Each line is
//! written with a single `write(2)` on a file opened for appending before the
//! client sends its next write, so every acknowledged write is in the file
//! even if the tool is killed right after. Only a line cut short by a full
//! disk could be torn, and only the last: the reader skips an unterminated
//! last line it cannot parse and says so.
//!
//! The check: for each (checkpoint, section), the highest counter
//! acknowledged must be at most the counter the server now stores there
//! (it may be higher: a write can be applied and its acknowledgement lost
//! with the connection).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use ckpt_client::{Client, ClientError};
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
}

/// Whether `field` can be a field of a record line.
pub fn valid_field(field: &str) -> bool {
    !field.is_empty() && !field.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The line for one acknowledged write, newline included.
pub fn format_line(checkpoint: &str, section: &str, counter: u64) -> String {
    format!("{checkpoint} {section} {counter}\n")
}

/// Parses one line (without its newline).
///
/// # Errors
/// A message saying what is wrong with the line.
pub fn parse_line(line: &str) -> Result<AckRecord, String> {
    let fields: Vec<&str> = line.split(' ').collect();
    let [checkpoint, section, counter] = fields[..] else {
        return Err(format!(
            "expected `CHECKPOINT SECTION COUNTER`, found {} fields",
            fields.len()
        ));
    };
    if !valid_field(checkpoint) || !valid_field(section) {
        return Err("empty field or whitespace inside a field".to_string());
    }
    let counter = counter
        .parse::<u64>()
        .map_err(|e| format!("counter `{counter}`: {e}"))?;
    Ok(AckRecord {
        checkpoint: checkpoint.to_string(),
        section: section.to_string(),
        counter,
    })
}

/// What a record file says was acknowledged.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Acked {
    /// Acknowledged writes (lines).
    pub writes: u64,
    /// Highest counter acknowledged per (checkpoint, section).
    pub highest: BTreeMap<(String, String), u64>,
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
            .or_insert(record.counter);
        *highest = (*highest).max(record.counter);
    }
    Ok(acked)
}

/// The counter at the start of a bench value, if it has 8 bytes.
pub fn decode_counter(value: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = value.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// A section whose stored counter is below its last acknowledged one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    /// Checkpoint name.
    pub checkpoint: String,
    /// Section id.
    pub section: String,
    /// The highest counter acknowledged.
    pub acked: u64,
    /// What the server stores: `None` when the section, its checkpoint or
    /// its counter is missing.
    pub stored: Option<u64>,
}

/// Compares what was acknowledged with what is stored (`None`: missing).
pub fn find_lost(acked: &Acked, stored: &BTreeMap<(String, String), Option<u64>>) -> Vec<Lost> {
    acked
        .highest
        .iter()
        .filter_map(|(key, &acked_counter)| {
            let stored = stored.get(key).copied().flatten();
            (stored.is_none_or(|value| value < acked_counter)).then(|| Lost {
                checkpoint: key.0.clone(),
                section: key.1.clone(),
                acked: acked_counter,
                stored,
            })
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
    pub fn append(&self, checkpoint: &str, section: &str, counter: u64) -> Result<(), ClientError> {
        let line = format_line(checkpoint, section, counter);
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
    /// The sections that lost acknowledged writes.
    pub lost: Vec<Lost>,
}

/// Reads the stored counter of every section named in `acked`.
///
/// # Errors
/// Connection errors, or a server error other than "does not exist".
pub async fn check_against_server(addr: &str, acked: Acked) -> Result<CheckReport, ClientError> {
    let client = Client::connect(addr).await?;
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
                size: Some(8),
            };
            checkpoint.read(vec![element])
        });
        let results = futures::future::join_all(reads).await;
        for (section, result) in sections.iter().zip(results) {
            let counter = match result {
                Ok(data) => data.first().and_then(|value| decode_counter(value)),
                Err(e) if is_missing(&e) => None,
                Err(e) => return Err(e),
            };
            stored.insert((checkpoint_text.to_string(), section.to_string()), counter);
        }
        checkpoint.close().await?;
    }
    let lost = find_lost(&acked, &stored);
    Ok(CheckReport { acked, lost })
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
        let line = format_line("bench", "c3", 42);
        assert_eq!(line, "bench c3 42\n");
        let record = parse_line(line.trim_end_matches('\n')).unwrap();
        assert_eq!(
            record,
            AckRecord {
                checkpoint: "bench".into(),
                section: "c3".into(),
                counter: 42
            }
        );
        assert!(parse_line("bench c3").is_err());
        assert!(parse_line("bench c3 x").is_err());
        assert!(parse_line("bench c3 -1").is_err());
        assert!(parse_line("bench  c3 1").is_err());
        assert!(parse_line("a b c 1").is_err());
        assert!(!valid_field("two words") && !valid_field("") && valid_field("c0"));
    }

    #[test]
    fn file_keeps_the_highest_counter_per_section() {
        let text = "b c0 1\nb c1 5\nb c0 2\nb c1 4\nother c0 9\n";
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
            [("b", "c0", 2), ("b", "c1", 5), ("other", "c0", 9)]
        );
    }

    #[test]
    fn a_torn_last_line_is_skipped_but_garbage_elsewhere_is_an_error() {
        let acked = parse_records("b c0 1\nb c0 2\nb c").unwrap();
        assert_eq!(acked.writes, 2);
        assert!(acked.torn_tail);
        // An unterminated last line that parses counts.
        assert_eq!(parse_records("b c0 1\nb c0 2").unwrap().writes, 2);
        let error = parse_records("b c0 1\nnonsense\nb c0 2\n").unwrap_err();
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

    #[test]
    fn lost_means_stored_below_acked_or_missing() {
        let acked = parse_records("b c0 5\nb c1 5\nb c2 5\nb c3 5\n").unwrap();
        let key = |s: &str| ("b".to_string(), s.to_string());
        let stored = BTreeMap::from([
            (key("c0"), Some(5)),
            (key("c1"), Some(6)),
            (key("c2"), Some(4)),
            (key("c3"), None),
        ]);
        let lost = find_lost(&acked, &stored);
        let names: Vec<_> = lost
            .iter()
            .map(|l| (l.section.as_str(), l.stored))
            .collect();
        assert_eq!(names, [("c2", Some(4)), ("c3", None)]);
    }

    #[test]
    fn recorder_appends_lines_that_parse_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acked");
        let recorder = Recorder::open(&path).unwrap();
        recorder.append("b", "c0", 1).unwrap();
        recorder.append("b", "c0", 2).unwrap();
        drop(recorder);
        // Reopening appends rather than truncates.
        Recorder::open(&path).unwrap().append("b", "c1", 9).unwrap();
        let acked = parse_records(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(acked.writes, 3);
        assert_eq!(acked.highest.len(), 2);
    }
}
