//! Formatting the log's records for people and scripts (`ckpt-tool wal`).
//! Reading and judging the segments is the store's own code:
//! `ckpt_storage::inspect::WalReader`, the reader recovery's rule decides.

use ckpt_proto::TIME_END;
use ckpt_storage::{Record, RecordBody};
use serde_json::{json, Map, Value};

/// `2026-11-24T21:15:53.123456789Z` for ns since the Unix epoch.
pub fn rfc3339(ns: i64) -> String {
    let nanos = ns.rem_euclid(1_000_000_000);
    let (y, m, d, hour, minute, second) = crate::duration::civil_utc(ns.div_euclid(1_000_000_000));
    format!("{y:04}-{m:02}-{d:02}T{hour:02}:{minute:02}:{second:02}.{nanos:09}Z")
}

/// The name of a record's kind (the store's own table).
pub fn kind_name(body: &RecordBody) -> &'static str {
    body.kind().name()
}

fn time_text(t: i64) -> String {
    if t == TIME_END {
        "forever".into()
    } else {
        t.to_string()
    }
}

fn quoted(text: impl std::fmt::Display) -> String {
    format!("{:?}", text.to_string())
}

/// One line for people: `key=value` pairs, never the data itself.
pub fn record_line(segment: &str, offset: u64, record: &Record, name: Option<&str>) -> String {
    let mut line = format!(
        "lsn={} seg={segment} off={offset} time={} ckpt={} inst={} epoch={} seq={} {}",
        record.lsn.0,
        rfc3339(record.entry.timestamp),
        name.map_or_else(|| "?".to_string(), quoted),
        record.entry.instance.0,
        record.entry.epoch.0,
        record.entry.seq.0,
        kind_name(&record.entry.body)
    );
    let details = match &record.entry.body {
        RecordBody::CheckpointCreate { name, attributes: a } => format!(
            " name={} flags={} size={} retention={} max_sections={} max_section_size={} max_section_id_size={}",
            quoted(name),
            crate::admin::creation_flag_names(a.creation_flags).join("|"),
            a.checkpoint_size,
            time_text(a.retention_duration_ns),
            a.max_sections,
            a.max_section_size,
            a.max_section_id_size
        ),
        RecordBody::CheckpointUnlink | RecordBody::CheckpointDestroy => String::new(),
        RecordBody::RetentionSet {
            retention_duration_ns,
        } => format!(" retention={}", time_text(*retention_duration_ns)),
        RecordBody::SectionCreate {
            section_id,
            expiration_time,
            data,
            generated_next,
        } => format!(
            " id={} expiration={} generated_next={generated_next} len={}",
            quoted(section_id),
            time_text(*expiration_time),
            data.len()
        ),
        RecordBody::SectionDelete {
            section_id,
            expired,
        } => format!(" id={} expired={expired}", quoted(section_id)),
        RecordBody::SectionExpirationSet {
            section_id,
            expiration_time,
        } => format!(
            " id={} expiration={}",
            quoted(section_id),
            time_text(*expiration_time)
        ),
        RecordBody::Write { elements } => {
            let mut text = format!(" elements={}", elements.len());
            for e in elements {
                text.push_str(&format!(
                    " [id={} off={} len={}]",
                    quoted(&e.section_id),
                    e.offset,
                    e.data.len()
                ));
            }
            text
        }
        RecordBody::Overwrite { section_id, data } => {
            format!(" id={} len={}", quoted(section_id), data.len())
        }
        RecordBody::GeneratedIdSet { next } => format!(" next={next}"),
        RecordBody::EpochStart { epoch } => format!(" epoch={}", epoch.0),
        RecordBody::SnapshotBegin {
            name,
            unlinked,
            generated_next,
            ..
        } => format!(
            " name={} unlinked={unlinked} generated_next={generated_next}",
            quoted(name)
        ),
        RecordBody::SnapshotSection {
            section_id,
            expiration_time,
            offset,
            data,
            ..
        } => format!(
            " id={} expiration={} off={offset} len={}",
            quoted(section_id),
            time_text(*expiration_time),
            data.len()
        ),
        RecordBody::SnapshotEnd | RecordBody::SuffixDiscard => String::new(),
    };
    if let Some(origin) = record.entry.origin {
        line.push_str(&format!(" origin={}:{}", origin.session, origin.request));
    }
    line.push_str(&details);
    line
}

/// One JSON object for scripts.
pub fn record_json(segment: &str, offset: u64, record: &Record, name: Option<&str>) -> Value {
    let mut object = Map::new();
    let mut put = |key: &str, value: Value| {
        object.insert(key.to_string(), value);
    };
    put("segment", json!(segment));
    put("offset", json!(offset));
    put("lsn", json!(record.lsn.0));
    put("instance", json!(record.entry.instance.0));
    put("checkpoint", json!(name));
    put("epoch", json!(record.entry.epoch.0));
    put("seq", json!(record.entry.seq.0));
    put("timestamp_ns", json!(record.entry.timestamp));
    put("time", json!(rfc3339(record.entry.timestamp)));
    put("kind", json!(kind_name(&record.entry.body)));
    let time = |t: i64| if t == TIME_END { Value::Null } else { json!(t) };
    let id = |s: &ckpt_proto::SectionId| json!(String::from_utf8_lossy(s.as_bytes()));
    match &record.entry.body {
        RecordBody::CheckpointCreate {
            name,
            attributes: a,
        } => {
            put("name", json!(name.to_string()));
            put("creation_flags", json!(a.creation_flags.0));
            put(
                "flags",
                json!(crate::admin::creation_flag_names(a.creation_flags)),
            );
            put("checkpoint_size", json!(a.checkpoint_size));
            put("retention_duration_ns", time(a.retention_duration_ns));
            put("max_sections", json!(a.max_sections));
            put("max_section_size", json!(a.max_section_size));
            put("max_section_id_size", json!(a.max_section_id_size));
        }
        RecordBody::CheckpointUnlink | RecordBody::CheckpointDestroy => {}
        RecordBody::RetentionSet {
            retention_duration_ns,
        } => put("retention_duration_ns", time(*retention_duration_ns)),
        RecordBody::SectionCreate {
            section_id,
            expiration_time,
            data,
            generated_next,
        } => {
            put("section_id", id(section_id));
            put("expiration_time", time(*expiration_time));
            put("generated_next", json!(generated_next));
            put("size", json!(data.len()));
        }
        RecordBody::SectionDelete {
            section_id,
            expired,
        } => {
            put("section_id", id(section_id));
            put("expired", json!(expired));
        }
        RecordBody::SectionExpirationSet {
            section_id,
            expiration_time,
        } => {
            put("section_id", id(section_id));
            put("expiration_time", time(*expiration_time));
        }
        RecordBody::Write { elements } => {
            let elements: Vec<Value> = elements
                .iter()
                .map(|e| json!({"section_id": id(&e.section_id), "offset": e.offset, "size": e.data.len()}))
                .collect();
            put("elements", Value::Array(elements));
        }
        RecordBody::Overwrite { section_id, data } => {
            put("section_id", id(section_id));
            put("size", json!(data.len()));
        }
        RecordBody::GeneratedIdSet { next } => put("generated_next", json!(next)),
        RecordBody::EpochStart { epoch } => put("started_epoch", json!(epoch.0)),
        RecordBody::SnapshotBegin {
            name,
            unlinked,
            generated_next,
            ..
        } => {
            put("name", json!(name.to_string()));
            put("unlinked", json!(unlinked));
            put("generated_next", json!(generated_next));
        }
        RecordBody::SnapshotSection {
            section_id,
            expiration_time,
            offset,
            data,
            ..
        } => {
            put("section_id", id(section_id));
            put("expiration_time", time(*expiration_time));
            put("offset", json!(offset));
            put("size", json!(data.len()));
        }
        RecordBody::SnapshotEnd | RecordBody::SuffixDiscard => {}
    }
    if let Some(origin) = record.entry.origin {
        put(
            "origin",
            json!({"session": origin.session, "request": origin.request}),
        );
    }
    Value::Object(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339(1_700_000_000_123_456_789),
            "2023-11-14T22:13:20.123456789Z"
        );
        assert_eq!(
            rfc3339(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000000Z"
        );
    }

    #[test]
    fn kinds_are_named_as_the_format_names_them() {
        assert_eq!(kind_name(&RecordBody::CheckpointUnlink), "CheckpointUnlink");
        assert_eq!(kind_name(&RecordBody::SuffixDiscard), "SuffixDiscard");
    }
}
