//! The server's memory stays within its configured bounds whatever a client
//! does: a client that pipelines reads of large sections and never reads
//! its socket, and a subscriber that never reads while large updates flood
//! in, against real `ckpt-server` processes. Growth is measured as the
//! server's resident set (`VmRSS`/`VmHWM` in /proc/<pid>/status) and through
//! its own byte gauges on `/metrics`.

mod common;

use std::time::{Duration, Instant};

use ckpt_proto::wire::{FrameKind, Notification, Reply, Request, Response};
use ckpt_proto::{
    CheckpointName, CreationAttributes, CreationFlags, OpenFlags, ReadElement,
    SectionCreationAttributes, SectionId, TIME_END,
};
use common::{http_get, RawClient, Server};

const MIB: u64 = 1024 * 1024;
/// How long a test waits for the server to reach a steady state.
const DEADLINE: Duration = Duration::from_secs(120);

/// A /proc/<pid>/status field in bytes (`VmRSS`, `VmHWM`).
fn proc_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("server status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The value of an unlabelled metric, if the server exports it.
fn metric(admin: &str, name: &str) -> Option<f64> {
    let (status, body) = http_get(admin, "/metrics");
    assert_eq!(status, 200, "/metrics answers");
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn attributes(section_bytes: u64) -> CreationAttributes {
    CreationAttributes {
        creation_flags: CreationFlags::WR_ACTIVE_REPLICA,
        checkpoint_size: 2 * section_bytes,
        retention_duration_ns: TIME_END,
        max_sections: 2,
        max_section_size: section_bytes,
        max_section_id_size: 16,
    }
}

fn open(client: &mut RawClient, name: &str, section_bytes: u64, flags: OpenFlags) -> u64 {
    let create = flags.contains(OpenFlags::CREATE);
    let request = Request::Open {
        name: CheckpointName::new(name).unwrap(),
        attributes: create.then(|| attributes(section_bytes)),
        flags,
    };
    match client.call(&request) {
        Ok(Reply::Opened { handle, .. }) => handle,
        other => panic!("open {name}: {other:?}"),
    }
}

/// Creates section "s" of `handle` holding `data`.
fn create_section(client: &mut RawClient, handle: u64, data: Vec<u8>) {
    let created = client.call(&Request::SectionCreate {
        handle,
        attributes: SectionCreationAttributes {
            section_id: Some(SectionId::new("s")),
            expiration_time: TIME_END,
        },
        initial_data: data,
    });
    assert!(created.is_ok(), "{created:?}");
}

/// Bytes of a section's content: position-dependent so a wrong reply shows.
fn pattern(len: u64, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect()
}

#[test]
fn a_slow_reader_cannot_grow_the_server_past_its_reply_bound() {
    const SECTION_BYTES: u64 = 2 * MIB;
    const READS: u64 = 384; // 768 MiB of replies if nothing bounds them
    const GROWTH_LIMIT: u64 = 160 * MIB;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut client = RawClient::connect(&server.addr);
    let handle = open(
        &mut client,
        "big",
        SECTION_BYTES,
        OpenFlags::READ | OpenFlags::WRITE | OpenFlags::CREATE,
    );
    let data = pattern(SECTION_BYTES, 7);
    create_section(&mut client, handle, data.clone());
    let pid = server.pid();
    let baseline = proc_bytes(pid, "VmRSS");

    // Pipeline every read and do not read a byte of the answers.
    let read = Request::Read {
        handle,
        elements: vec![ReadElement {
            section_id: SectionId::new("s"),
            offset: 0,
            size: None,
        }],
    };
    let ids: Vec<u64> = (0..READS).map(|_| client.send(&read)).collect();

    // The server must come to rest at its bound (its reply gauge full),
    // never having grown past the limit on the way.
    let deadline = Instant::now() + DEADLINE;
    let reply_bound = loop {
        let grown = proc_bytes(pid, "VmRSS").saturating_sub(baseline);
        assert!(
            grown < GROWTH_LIMIT,
            "the server grew by {} MiB serving a client that does not read (limit {} MiB)",
            grown / MIB,
            GROWTH_LIMIT / MIB
        );
        let queued = metric(&server.admin, "ckpt_reply_queue_bytes");
        let bound = metric(&server.admin, "ckpt_reply_queue_bytes_max");
        if let (Some(queued), Some(bound)) = (queued, bound) {
            if queued + SECTION_BYTES as f64 > bound {
                break bound as u64;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the server did not fill its reply queue within {DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(reply_bound < GROWTH_LIMIT / 2, "reply bound {reply_bound}");

    // Every read is answered, correctly, once the client reads.
    let mut answered = 0;
    while answered < ids.len() {
        let frame = client.read_frame().expect("the server keeps answering");
        assert_eq!(frame.kind, FrameKind::Response, "{frame:?}");
        let response: Response = frame.decode().unwrap();
        match response {
            Ok(Reply::Data(got)) => {
                assert_eq!(got.len(), 1);
                assert!(
                    got[0] == data,
                    "read {} returned wrong bytes",
                    frame.request_id
                );
            }
            other => panic!("read {}: {other:?}", frame.request_id),
        }
        assert!(ids.contains(&frame.request_id));
        answered += 1;
    }
    let peak = proc_bytes(pid, "VmHWM").saturating_sub(baseline);
    eprintln!(
        "slow reader: {READS} reads of {} MiB; reply bound {} MiB; peak RSS growth {} MiB",
        SECTION_BYTES / MIB,
        reply_bound / MIB,
        peak / MIB
    );
    assert!(
        peak < GROWTH_LIMIT,
        "the server's peak grew by {} MiB (limit {} MiB)",
        peak / MIB,
        GROWTH_LIMIT / MIB
    );
    assert_eq!(metric(&server.admin, "ckpt_reply_queue_bytes"), Some(0.0));
}

#[test]
fn a_flood_of_large_notifications_cannot_grow_the_server_past_its_bounds() {
    const UPDATE_BYTES: u64 = MIB;
    const UPDATES: u64 = 400; // 400 MiB queued and as much kept as history if unbounded
    const GROWTH_LIMIT: u64 = 256 * MIB;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let pid = server.pid();
    let mut writer = RawClient::connect(&server.addr);
    let handle = open(
        &mut writer,
        "flood",
        UPDATE_BYTES,
        OpenFlags::READ | OpenFlags::WRITE | OpenFlags::CREATE,
    );
    create_section(&mut writer, handle, vec![]);

    let mut subscriber = RawClient::connect(&server.addr);
    let watched = open(&mut subscriber, "flood", UPDATE_BYTES, OpenFlags::READ);
    let first_seq = match subscriber.call(&Request::ImmediateConsumptionRegister {
        handle: watched,
        resume_after: None,
    }) {
        Ok(Reply::Registered { next_seq }) => next_seq,
        other => panic!("register: {other:?}"),
    };
    let baseline = proc_bytes(pid, "VmRSS");

    // The subscriber reads nothing while the writer floods; the writer is
    // never held up by it.
    for i in 0..UPDATES {
        let response = writer.call(&Request::SectionOverwrite {
            handle,
            section_id: SectionId::new("s"),
            data: pattern(UPDATE_BYTES, i as u8),
        });
        assert!(response.is_ok(), "overwrite {i}: {response:?}");
        let grown = proc_bytes(pid, "VmRSS").saturating_sub(baseline);
        assert!(
            grown < GROWTH_LIMIT,
            "after {} updates of {} MiB the server grew by {} MiB (limit {} MiB)",
            i + 1,
            UPDATE_BYTES / MIB,
            grown / MIB,
            GROWTH_LIMIT / MIB
        );
    }
    eprintln!(
        "notification flood: {UPDATES} updates of {} MiB; RSS growth after them {} MiB",
        UPDATE_BYTES / MIB,
        proc_bytes(pid, "VmRSS").saturating_sub(baseline) / MIB
    );
    for gauge in [
        "ckpt_notification_queue_bytes",
        "ckpt_notification_history_bytes",
    ] {
        let value = metric(&server.admin, gauge).unwrap_or_else(|| panic!("{gauge} exported"));
        let bound = metric(&server.admin, &format!("{gauge}_max"))
            .unwrap_or_else(|| panic!("{gauge}_max exported"));
        assert!(
            value <= bound + UPDATE_BYTES as f64 * 2.0,
            "{gauge} {value} is past its bound {bound}"
        );
    }

    // The subscriber gets a prefix of the updates in order, then a Resync
    // naming exactly what it missed, then live updates from there on.
    let mut expected = first_seq;
    let next_seq = loop {
        let frame = subscriber.read_frame().expect("notifications");
        assert_eq!(frame.kind, FrameKind::Notification, "{frame:?}");
        match frame.decode::<Notification>().unwrap() {
            Notification::Update { seq, .. } => {
                assert_eq!(seq, expected, "updates arrive in order without gaps");
                expected += 1;
            }
            Notification::Resync {
                after_seq,
                next_seq,
                ..
            } => {
                assert_eq!(
                    after_seq + 1,
                    expected,
                    "the resync starts where updates stopped"
                );
                assert_eq!(
                    next_seq,
                    first_seq + UPDATES,
                    "the resync names the next update"
                );
                break next_seq;
            }
        }
    };
    assert!(
        expected < first_seq + UPDATES,
        "a subscriber that never read got all {UPDATES} updates queued"
    );
    // /metrics counts the fall and the resync, and how many updates it
    // covered (the subscriber's lag when it was resynced).
    let missed = (next_seq - expected) as f64;
    for (name, value) in [
        ("ckpt_subscriber_fell_behind_total", 1.0),
        ("ckpt_subscriber_resyncs_total", 1.0),
        ("ckpt_subscriber_resync_missed_updates_total", missed),
    ] {
        assert_eq!(metric(&server.admin, name), Some(value), "{name}");
    }
    let response = writer.call(&Request::SectionOverwrite {
        handle,
        section_id: SectionId::new("s"),
        data: b"after".to_vec(),
    });
    assert!(response.is_ok(), "{response:?}");
    let frame = subscriber.read_frame().expect("the live update");
    match frame.decode::<Notification>().unwrap() {
        Notification::Update { seq, .. } => assert_eq!(seq, next_seq),
        other => panic!("expected the live update, got {other:?}"),
    }
}

#[test]
fn a_huge_frame_before_hello_is_refused_not_buffered() {
    use std::io::Write;
    const CONNECTIONS: usize = 4;
    const SENT_BYTES: u64 = 64 * MIB; // per connection, of a claimed 300 MiB body
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let pid = server.pid();
    let baseline = proc_bytes(pid, "VmHWM");
    let senders: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let addr = server.addr.clone();
            std::thread::spawn(move || {
                let mut stream = std::net::TcpStream::connect(&addr).unwrap();
                let mut header = Vec::new();
                header.extend_from_slice(b"CKPW");
                header.push(1);
                header.push(FrameKind::Hello as u8);
                header.extend_from_slice(&[0, 0]);
                header.extend_from_slice(&0u64.to_le_bytes());
                header.extend_from_slice(&(300 * MIB as u32).to_le_bytes());
                header.extend_from_slice(&0u32.to_le_bytes());
                stream.write_all(&header).unwrap();
                // Stream body bytes until the server hangs up (it should,
                // at once) or the 64 MiB are sent.
                let chunk = vec![0x5au8; 1 << 16];
                let mut sent = 0;
                while sent < SENT_BYTES && stream.write_all(&chunk).is_ok() {
                    sent += chunk.len() as u64;
                }
                sent
            })
        })
        .collect();
    for sender in senders {
        sender.join().unwrap();
    }
    let peak = proc_bytes(pid, "VmHWM").saturating_sub(baseline);
    eprintln!("claims before Hello: peak RSS growth {} MiB", peak / MIB);
    assert!(
        peak < 32 * MIB,
        "an unauthenticated 300 MiB claim grew the server by {} MiB",
        peak / MIB
    );
    // The server still serves.
    let mut client = RawClient::connect(&server.addr);
    assert!(client.call(&Request::List).is_ok());
}

#[test]
fn a_client_that_does_not_read_cannot_hold_up_shutdown() {
    const SECTION_BYTES: u64 = 2 * MIB;
    const READS: u64 = 64; // far more than the reply bound and the socket buffers
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_with(
        dir.path(),
        &[
            "--reply-queue-bytes-max",
            "8388608",
            "--shutdown-drain-ms",
            "1000",
        ],
    );
    let mut client = RawClient::connect(&server.addr);
    let handle = open(
        &mut client,
        "stuck",
        SECTION_BYTES,
        OpenFlags::READ | OpenFlags::WRITE | OpenFlags::CREATE,
    );
    create_section(&mut client, handle, pattern(SECTION_BYTES, 3));
    let read = Request::Read {
        handle,
        elements: vec![ReadElement {
            section_id: SectionId::new("s"),
            offset: 0,
            size: None,
        }],
    };
    for _ in 0..READS {
        client.send(&read);
    }
    // Wait until the server is stuck behind the client: its reply queue full.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let queued = metric(&server.admin, "ckpt_reply_queue_bytes").unwrap_or(0.0);
        if queued + SECTION_BYTES as f64 > 8.0 * MIB as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reply queue did not fill within {DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SIGTERM: the server must exit (terminate() fails the test after 60 s),
    // cleanly, although the client never reads its replies.
    let status = server.terminate();
    assert!(status.success(), "ckpt-server exited with {status}");
    drop(client);
}
