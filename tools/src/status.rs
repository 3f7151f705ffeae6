//! `status` (one server at a glance, from its admin port) and `watch` (a
//! checkpoint's updates as they commit).

use std::time::Duration;

use ckpt_client::{Client, ClientError};
use ckpt_proto::wire::{Change, Notification};
use ckpt_proto::ErrorCode;
use ckpt_proto::OpenFlags;
use futures::StreamExt;
use serde::Serialize;

use crate::admin::{emit, emit_json};
use crate::cli::{StatusArgs, WatchArgs};
use crate::cluster::HttpConnection;

/// How long each admin request may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What `status` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerStatus {
    /// The admin address asked.
    pub admin: String,
    /// `ckpt_build_info`'s version.
    pub version: Option<String>,
    /// Seconds since the process started.
    pub uptime_s: Option<u64>,
    /// The data directory (`/config`).
    pub data_dir: Option<String>,
    /// `/readyz` answered 200.
    pub ready: bool,
    /// `/readyz`'s text (`ready`, `recovering: N of M records`, ...).
    pub readiness: String,
    /// `ckpt_store_poisoned`.
    pub poisoned: Option<bool>,
    /// `ckpt_wal_disk_bytes`.
    pub wal_bytes: Option<u64>,
    /// `ckpt_wal_segments`.
    pub wal_segments: Option<u64>,
    /// `ckpt_wal_applied_lsn`.
    pub applied_lsn: Option<u64>,
    /// `ckpt_rocksdb_sst_bytes`.
    pub sst_bytes: Option<u64>,
    /// `ckpt_checkpoints`.
    pub checkpoints: Option<u64>,
    /// `ckpt_sections`.
    pub sections: Option<u64>,
    /// `ckpt_section_bytes`.
    pub section_bytes: Option<u64>,
    /// `ckpt_connections`.
    pub connections: Option<u64>,
    /// `ckpt_connections_rejected_total`.
    pub connections_rejected: Option<u64>,
}

/// `GET path` on the admin connection: (status, body as text).
async fn get(connection: &mut HttpConnection, path: &str) -> Result<(u16, String), ClientError> {
    let response = connection.request("GET", path, None, ADMIN_TIMEOUT).await?;
    Ok((
        response.status,
        String::from_utf8_lossy(&response.body).into_owned(),
    ))
}

/// The value of the first sample of `name` in a Prometheus text page (any
/// labels), and its labels' text.
fn sample<'a>(page: &'a str, name: &str) -> Option<(&'a str, f64)> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(labelled) => {
                    let (labels, value) = labelled.split_once('}')?;
                    (labels, value)
                }
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
            Some((labels, value.trim().parse().ok()?))
        })
}

fn count(page: &str, name: &str) -> Option<u64> {
    sample(page, name).map(|(_, v)| v.max(0.0) as u64)
}

/// Reads `status` from the pages of a server's admin port.
pub fn server_status(
    admin: &str,
    metrics: &str,
    config: &str,
    readyz: (u16, &str),
) -> ServerStatus {
    let version = sample(metrics, "ckpt_build_info").and_then(|(labels, _)| {
        let start = labels.find("version=\"")? + "version=\"".len();
        let end = labels[start..].find('"')? + start;
        Some(labels[start..end].to_string())
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let uptime_s = sample(metrics, "process_start_time_seconds")
        .map(|(_, started)| (now - started).max(0.0) as u64);
    let data_dir = serde_json::from_str::<serde_json::Value>(config)
        .ok()
        .and_then(|c| c["data_dir"].as_str().map(str::to_string));
    ServerStatus {
        admin: admin.to_string(),
        version,
        uptime_s,
        data_dir,
        ready: readyz.0 == 200,
        readiness: readyz.1.trim().to_string(),
        poisoned: count(metrics, "ckpt_store_poisoned").map(|p| p > 0),
        wal_bytes: count(metrics, "ckpt_wal_disk_bytes"),
        wal_segments: count(metrics, "ckpt_wal_segments"),
        applied_lsn: count(metrics, "ckpt_wal_applied_lsn"),
        sst_bytes: count(metrics, "ckpt_rocksdb_sst_bytes"),
        checkpoints: count(metrics, "ckpt_checkpoints"),
        sections: count(metrics, "ckpt_sections"),
        section_bytes: count(metrics, "ckpt_section_bytes"),
        connections: count(metrics, "ckpt_connections"),
        connections_rejected: count(metrics, "ckpt_connections_rejected_total"),
    }
}

fn or_unknown<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "unknown".to_string(), |v| v.to_string())
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or_else(
        || "unknown".to_string(),
        |b| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
    )
}

/// The text `status` prints.
pub fn status_text(s: &ServerStatus) -> String {
    let uptime = s
        .uptime_s
        .map(|t| format!("{}h{:02}m{:02}s", t / 3600, (t / 60) % 60, t % 60));
    format!(
        "server       ckpt-server {} at {} (admin)\n\
         uptime       {}\n\
         data dir     {}\n\
         ready        {} ({})\n\
         poisoned     {}\n\
         wal          {} in {} segments, applied lsn {}\n\
         rocksdb      {} of SST files\n\
         checkpoints  {} ({} sections, {} of data)\n\
         connections  {} ({} refused at connections_max)\n",
        or_unknown(s.version.as_deref()),
        s.admin,
        or_unknown(uptime),
        or_unknown(s.data_dir.as_deref()),
        if s.ready { "yes" } else { "NO" },
        s.readiness,
        s.poisoned
            .map_or("unknown", |p| if p { "YES" } else { "no" }),
        mib(s.wal_bytes),
        or_unknown(s.wal_segments),
        or_unknown(s.applied_lsn),
        mib(s.sst_bytes),
        or_unknown(s.checkpoints),
        or_unknown(s.sections),
        mib(s.section_bytes),
        or_unknown(s.connections),
        or_unknown(s.connections_rejected),
    )
}

/// `status`.
///
/// # Errors
/// `MESSAGE_ERROR` when the admin port does not answer HTTP (naming it).
pub async fn status(args: &StatusArgs) -> Result<(), ClientError> {
    let admin = args.admin.as_str();
    // One connection for the three pages (the admin port keeps it alive).
    let mut connection = HttpConnection::connect(admin, ADMIN_TIMEOUT).await?;
    let readyz = get(&mut connection, "/readyz").await?;
    let (metrics_status, metrics) = get(&mut connection, "/metrics").await?;
    if metrics_status != 200 {
        return Err(ClientError::new(
            ErrorCode::MessageError,
            format!("{admin}: GET /metrics answered {metrics_status}"),
        ));
    }
    let (_, config) = get(&mut connection, "/config").await?;
    let status = server_status(admin, &metrics, &config, (readyz.0, &readyz.1));
    if args.json {
        emit_json(&status)
    } else {
        emit(status_text(&status).as_bytes())
    }
}

/// One update as `watch` prints it: the sequence number, what changed and
/// (text only) up to 64 bytes of data.
fn change_line(seq: u64, change: &Change) -> String {
    let shown = |data: &[u8]| {
        let text = String::from_utf8_lossy(&data[..data.len().min(64)]).into_owned();
        let more = if data.len() > 64 { "…" } else { "" };
        format!("{} bytes {:?}{more}", data.len(), text)
    };
    match change {
        Change::SectionCreated { section_id, data } => {
            format!("{seq}\tcreated\t{section_id}\t{}", shown(data))
        }
        Change::Overwritten { section_id, data } => {
            format!("{seq}\toverwritten\t{section_id}\t{}", shown(data))
        }
        Change::Written { elements } => {
            let parts: Vec<String> = elements
                .iter()
                .map(|e| format!("{}@{}: {}", e.section_id, e.offset, shown(&e.data)))
                .collect();
            format!("{seq}\twritten\t{}", parts.join(", "))
        }
        Change::SectionDeleted {
            section_id,
            expired,
        } => format!(
            "{seq}\t{}\t{section_id}",
            if *expired { "expired" } else { "deleted" }
        ),
        Change::ExpirationSet {
            section_id,
            expiration_time,
        } => format!("{seq}\texpiration\t{section_id}\t{expiration_time}"),
        Change::RetentionSet {
            retention_duration_ns,
        } => format!("{seq}\tretention\t{retention_duration_ns} ns"),
        Change::Deleted => format!("{seq}\tcheckpoint deleted"),
    }
}

/// `watch`.
///
/// # Errors
/// The checkpoint cannot be opened; the connection ends (the error says
/// which `--from` resumes).
pub async fn watch(client: &Client, args: &WatchArgs) -> Result<(), ClientError> {
    let checkpoint = client.open(&args.name.name, None, OpenFlags::READ).await?;
    let mut updates = checkpoint.subscribe(args.from).await?;
    let mut seen = 0u64;
    while args.count.is_none_or(|n| seen < n) {
        let Some(notification) = updates.next().await else {
            let resume = updates
                .resume_point()
                .map_or_else(String::new, |s| format!("; --from {s} resumes"));
            let _ = checkpoint.close().await;
            return Err(ClientError::new(
                ErrorCode::TryAgain,
                format!("the update stream ended{resume}"),
            ));
        };
        let line = match &notification {
            Notification::Update { seq, change, .. } if args.json => {
                serde_json::json!({"seq": seq, "change": change}).to_string()
            }
            Notification::Update { seq, change, .. } => change_line(*seq, change),
            Notification::Resync {
                after_seq,
                next_seq,
                ..
            } if args.json => {
                serde_json::json!({"resync": {"after_seq": after_seq, "next_seq": next_seq}})
                    .to_string()
            }
            Notification::Resync {
                after_seq,
                next_seq,
                ..
            } => format!(
                "resync\tupdates {} to {} are no longer held: re-read the checkpoint",
                after_seq + 1,
                next_seq.saturating_sub(1)
            ),
        };
        emit(format!("{line}\n").as_bytes())?;
        seen += 1;
    }
    checkpoint.close().await
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "# HELP ckpt_build_info Build\n\
        ckpt_build_info{version=\"0.1.0\"} 1\n\
        ckpt_checkpoints 12\n\
        ckpt_checkpoints_total_wrong 99\n\
        ckpt_wal_disk_bytes 2097152\n\
        ckpt_store_poisoned 0\n\
        process_start_time_seconds 100\n";

    #[test]
    fn status_reads_the_pages_and_names_what_is_missing() {
        let s = server_status(
            "127.0.0.1:7401",
            METRICS,
            r#"{"data_dir": "/var/lib/ckpt"}"#,
            (503, "recovering: 10 of 20 records\n"),
        );
        assert_eq!(s.version.as_deref(), Some("0.1.0"));
        assert_eq!(s.checkpoints, Some(12), "not the sample of a longer name");
        assert_eq!(s.wal_bytes, Some(2 << 20));
        assert_eq!(s.poisoned, Some(false));
        assert_eq!(s.data_dir.as_deref(), Some("/var/lib/ckpt"));
        assert!(!s.ready);
        assert_eq!(s.sections, None);
        let text = status_text(&s);
        assert!(
            text.contains("ready        NO (recovering: 10 of 20 records)"),
            "{text}"
        );
        assert!(text.contains("wal          2.0 MiB"), "{text}");
        assert!(text.contains("checkpoints  12 (unknown sections"), "{text}");
    }
}
