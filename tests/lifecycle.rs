//! Graceful shutdown and the admin endpoint, against a real server process.

mod common;

use ckpt_proto::wire::{FrameKind, Reply, Request, Response};
use ckpt_proto::{
    CheckpointName, CreationAttributes, CreationFlags, OpenFlags, ReadElement,
    SectionCreationAttributes, SectionId, WriteElement, TIME_END,
};
use common::{http_get, RawClient, Server};

fn attributes() -> CreationAttributes {
    CreationAttributes {
        creation_flags: CreationFlags::WR_ACTIVE_REPLICA,
        checkpoint_size: 1 << 20,
        retention_duration_ns: TIME_END,
        max_sections: 16,
        max_section_size: 1 << 16,
        max_section_id_size: 16,
    }
}

fn open(client: &mut RawClient, name: &str) -> u64 {
    let request = Request::Open {
        name: CheckpointName::new(name).unwrap(),
        attributes: Some(attributes()),
        flags: OpenFlags::READ | OpenFlags::WRITE | OpenFlags::CREATE,
    };
    match client.call(&request) {
        Ok(Reply::Opened { handle, .. }) => handle,
        other => panic!("open: {other:?}"),
    }
}

#[test]
fn sigterm_finishes_requests_in_flight_then_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let mut client = RawClient::connect(&server.addr);
    let handle = open(&mut client, "inflight");
    let section = SectionCreationAttributes {
        section_id: Some(SectionId::new("s")),
        expiration_time: TIME_END,
    };
    let created = client.call(&Request::SectionCreate {
        handle,
        attributes: section,
        initial_data: vec![],
    });
    assert!(created.is_ok(), "{created:?}");
    // Pipeline a burst of writes, then a StatusGet as a marker. The server
    // reads a connection's frames in order, so once the marker is answered
    // it has read — and taken on — every write: each must then be answered,
    // and successfully, even though SIGTERM comes while they are in flight.
    const WRITES: u32 = 200;
    let mut offset_of = std::collections::HashMap::new();
    for i in 0..WRITES {
        let element = WriteElement {
            section_id: SectionId::new("s"),
            offset: u64::from(i) * 4,
            data: i.to_le_bytes().to_vec(),
        };
        let id = client.send(&Request::Write {
            handle,
            elements: vec![element],
        });
        offset_of.insert(id, i);
    }
    let marker = client.send(&Request::StatusGet { handle });
    let mut answered_writes = Vec::new();
    let mut record_answer = |frame: ckpt_proto::wire::Frame, answered: &mut Vec<u32>| {
        let write = offset_of
            .remove(&frame.request_id)
            .unwrap_or_else(|| panic!("unexpected or repeated id {}", frame.request_id));
        let response: Response = frame.decode().unwrap();
        assert!(response.is_ok(), "write {write}: {response:?}");
        answered.push(write);
    };
    loop {
        let frame = client.read_frame().expect("the marker's answer");
        if frame.kind != FrameKind::Response {
            continue;
        }
        if frame.request_id == marker {
            let response: Response = frame.decode().unwrap();
            assert!(response.is_ok(), "marker: {response:?}");
            break;
        }
        record_answer(frame, &mut answered_writes);
    }
    let in_flight_at_sigterm = WRITES as usize - answered_writes.len();
    let status = server.terminate();
    assert!(status.success(), "exit status {status}");
    while let Some(frame) = client.read_frame() {
        if frame.kind == FrameKind::Response {
            record_answer(frame, &mut answered_writes);
        }
    }
    println!("{in_flight_at_sigterm} of {WRITES} writes were unanswered at SIGTERM");
    let mut unanswered: Vec<u32> = offset_of.into_values().collect();
    unanswered.sort_unstable();
    assert!(
        unanswered.is_empty(),
        "writes the server had read were never answered: {unanswered:?}"
    );
    assert_eq!(answered_writes.len(), WRITES as usize);
    let log = server.drain_log().join("\n");
    assert!(log.contains("store closed cleanly"), "{log}");
    // Every answered write is there after a restart.
    let server = Server::start(dir.path());
    let mut client = RawClient::connect(&server.addr);
    let handle = match client.call(&Request::Open {
        name: CheckpointName::new("inflight").unwrap(),
        attributes: None,
        flags: OpenFlags::READ,
    }) {
        Ok(Reply::Opened { handle, .. }) => handle,
        other => panic!("{other:?}"),
    };
    let read = ReadElement {
        section_id: SectionId::new("s"),
        offset: 0,
        size: None,
    };
    let Ok(Reply::Data(data)) = client.call(&Request::Read {
        handle,
        elements: vec![read],
    }) else {
        panic!()
    };
    let data = &data[0];
    assert_eq!(data.len(), WRITES as usize * 4);
    for i in answered_writes {
        let at = i as usize * 4;
        assert!(data.len() >= at + 4, "answered write {i} is missing");
        assert_eq!(&data[at..at + 4], &i.to_le_bytes(), "answered write {i}");
    }
}

#[test]
fn sigterm_closes_the_store_cleanly_with_retention_timers_pending() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let mut client = RawClient::connect(&server.addr);
    let mut timed = attributes();
    timed.retention_duration_ns = 1_000_000_000_000;
    let request = Request::Open {
        name: CheckpointName::new("timed").unwrap(),
        attributes: Some(timed),
        flags: OpenFlags::READ | OpenFlags::WRITE | OpenFlags::CREATE,
    };
    let Ok(Reply::Opened { handle, .. }) = client.call(&request) else {
        panic!()
    };
    // The last close starts a 1000 s retention timer.
    assert!(client.call(&Request::Close { handle }).is_ok());
    assert!(server.terminate().success());
    let log = server.drain_log().join("\n");
    assert!(log.contains("store closed cleanly"), "{log}");
}

#[test]
fn metrics_and_health_report_the_work_done() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let (status, body) = http_get(&server.admin, "/health");
    assert_eq!((status, body.trim()), (200, "serving"));
    let mut client = RawClient::connect(&server.addr);
    let handle = open(&mut client, "metered");
    for _ in 0..5 {
        let missing = client.call(&Request::SectionDelete {
            handle,
            section_id: SectionId::new("nope"),
        });
        assert!(missing.is_err());
    }
    let (status, metrics) = http_get(&server.admin, "/metrics");
    assert_eq!(status, 200);
    let value = |prefix: &str| -> f64 {
        metrics
            .lines()
            .find(|line| line.starts_with(prefix))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
    };
    assert_eq!(
        value("ckpt_requests_total{op=\"section_delete\",result=\"CL_ERR_NOT_EXIST\"}"),
        5.0
    );
    assert_eq!(value("ckpt_requests_total{op=\"open\",result=\"ok\"}"), 1.0);
    assert!(value("ckpt_request_duration_seconds_count{op=\"open\"}") >= 1.0);
    assert!(
        value("ckpt_wal_records_total") >= 1.0,
        "the create was logged"
    );
    assert!(value("ckpt_wal_fsyncs_total") >= 1.0);
    assert!(value("ckpt_wal_bytes_total") > 0.0);
    assert!(value("ckpt_wal_batch_records_count") >= 1.0);
    assert_eq!(value("ckpt_connections"), 1.0);
    assert!(metrics.contains("ckpt_rocksdb_flushes_total"));
    assert!(server.terminate().success());
}
