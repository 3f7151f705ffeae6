//! Helpers for end-to-end tests that use the `ckpt-client` library against a
//! real `ckpt-server` process: a lazily started server shared by every test
//! of a test binary (killed at process exit), unique checkpoint names,
//! attribute builders, error assertions and deadline-bounded polling.
//!
//! Include with `mod common; #[path = "common/client.rs"] mod client_helpers;`.
#![allow(dead_code)]

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use ckpt_client::{Checkpoint, Client, ClientError, Subscription};
use ckpt_proto::wire::{Change, Frame, FrameKind, Notification, Reply, Request, Response};
use ckpt_proto::{
    CheckpointName, CreationAttributes, CreationFlags, ErrorCode, OpenFlags, ReadElement,
    SectionCreationAttributes, SectionDescriptor, SectionId, SectionsChosen, WriteElement,
    TIME_END,
};
use futures::StreamExt;

use crate::common::{RawClient, Server};

/// How long any poll waits for something that must happen eventually.
pub const DEADLINE: Duration = Duration::from_secs(20);

struct SharedServer {
    _server: Option<Server>,
    _cluster: Option<crate::common::Cluster>,
    _dir: tempfile::TempDir,
}

static SHARED: Mutex<Option<SharedServer>> = Mutex::new(None);
static SHARED_ADDR: OnceLock<String> = OnceLock::new();

extern "C" fn stop_shared_server() {
    // Runs at process exit: kill the shared server and remove its data.
    let taken = match SHARED.lock() {
        Ok(mut guard) => guard.take(),
        Err(poisoned) => poisoned.into_inner().take(),
    };
    drop(taken);
}

/// The address of the server shared by every test of this binary, started on
/// first use and killed when the test process exits.
///
/// With `CKPT_TEST_CLUSTER=N` (N ≥ 2) it is a cluster of N nodes instead,
/// placing new checkpoints' active replicas away from their creator, and the
/// address is node 1's: every checkpoint a test creates through it is
/// active on another node, so every request is routed (issue #8,
/// acceptance 1).
pub fn shared_addr() -> String {
    SHARED_ADDR
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("temp dir");
            let nodes: usize = std::env::var("CKPT_TEST_CLUSTER")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(1);
            let (server, cluster, addr) = if nodes >= 2 {
                let cluster =
                    crate::common::Cluster::start(nodes, "placement_avoid_creator = true");
                let addr = cluster.client_addrs[0].clone();
                (None, Some(cluster), addr)
            } else {
                let server = Server::start(dir.path());
                let addr = server.addr.clone();
                (Some(server), None, addr)
            };
            *SHARED.lock().unwrap_or_else(|p| p.into_inner()) = Some(SharedServer {
                _server: server,
                _cluster: cluster,
                _dir: dir,
            });
            // SAFETY: registering a plain extern "C" function with atexit(3).
            unsafe { libc::atexit(stop_shared_server) };
            addr
        })
        .clone()
}

/// A new connection to the shared server.
pub async fn connect() -> Client {
    connect_to(&shared_addr()).await
}

/// A new connection to `addr`.
pub async fn connect_to(addr: &str) -> Client {
    Client::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// A checkpoint name unique in this test process.
pub fn unique(tag: &str) -> CheckpointName {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    CheckpointName::new(format!("conf-{tag}-{}-{n}", std::process::id())).expect("valid name")
}

/// Attributes: WR_ACTIVE_REPLICA, 16 sections of at most 64 KiB, 1 MiB in
/// total, ids up to 16 bytes, kept forever.
pub fn attrs() -> CreationAttributes {
    CreationAttributes {
        creation_flags: CreationFlags::WR_ACTIVE_REPLICA,
        checkpoint_size: 1 << 20,
        retention_duration_ns: TIME_END,
        max_sections: 16,
        max_section_size: 1 << 16,
        max_section_id_size: 16,
    }
}

/// Attributes of a checkpoint with only the default section.
pub fn default_section_attrs() -> CreationAttributes {
    CreationAttributes {
        creation_flags: CreationFlags::WR_ACTIVE_REPLICA,
        checkpoint_size: 4096,
        retention_duration_ns: TIME_END,
        max_sections: 1,
        max_section_size: 4096,
        max_section_id_size: 0,
    }
}

/// READ | WRITE | CREATE.
pub fn rwc() -> OpenFlags {
    OpenFlags::READ | OpenFlags::WRITE | OpenFlags::CREATE
}

/// READ | WRITE.
pub fn rw() -> OpenFlags {
    OpenFlags::READ | OpenFlags::WRITE
}

/// Creates (or opens) `name` with `attributes` for reading and writing.
pub async fn create(
    client: &Client,
    name: &CheckpointName,
    attributes: CreationAttributes,
) -> Checkpoint {
    client
        .open(name, Some(attributes), rwc())
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"))
}

/// Opens an existing checkpoint with `flags`.
pub async fn open(client: &Client, name: &CheckpointName, flags: OpenFlags) -> Checkpoint {
    client
        .open(name, None, flags)
        .await
        .unwrap_or_else(|e| panic!("open {name}: {e}"))
}

/// A section id from a string.
pub fn sid(id: &str) -> SectionId {
    SectionId::new(id.as_bytes().to_vec())
}

/// Creation attributes of section `id` that never expires.
pub fn forever(id: &str) -> SectionCreationAttributes {
    SectionCreationAttributes {
        section_id: Some(sid(id)),
        expiration_time: TIME_END,
    }
}

/// Creation attributes of section `id` expiring at `at`.
pub fn expiring(id: &str, at: i64) -> SectionCreationAttributes {
    SectionCreationAttributes {
        section_id: Some(sid(id)),
        expiration_time: at,
    }
}

/// Creation attributes asking for a generated id.
pub fn generated() -> SectionCreationAttributes {
    SectionCreationAttributes {
        section_id: None,
        expiration_time: TIME_END,
    }
}

/// One write element.
pub fn we(id: &str, offset: u64, data: &[u8]) -> WriteElement {
    WriteElement {
        section_id: sid(id),
        offset,
        data: data.to_vec(),
    }
}

/// One read element.
pub fn re(id: &str, offset: u64, size: Option<u64>) -> ReadElement {
    ReadElement {
        section_id: sid(id),
        offset,
        size,
    }
}

/// Creates section `id` holding `data`, never expiring.
pub async fn section(checkpoint: &Checkpoint, id: &str, data: &[u8]) {
    let created = checkpoint
        .section_create(forever(id), data.to_vec())
        .await
        .unwrap_or_else(|e| panic!("create section {id}: {e}"));
    assert_eq!(created, sid(id));
}

/// The whole content of section `id`.
pub async fn read_all(checkpoint: &Checkpoint, id: &SectionId) -> Vec<u8> {
    let element = ReadElement {
        section_id: id.clone(),
        offset: 0,
        size: None,
    };
    let mut data = checkpoint
        .read(vec![element])
        .await
        .unwrap_or_else(|e| panic!("read section {id}: {e}"));
    assert_eq!(data.len(), 1, "one buffer per element");
    data.pop().unwrap()
}

/// The whole content of section `id` (by string).
pub async fn read_str(checkpoint: &Checkpoint, id: &str) -> Vec<u8> {
    read_all(checkpoint, &sid(id)).await
}

/// Asserts that `result` failed with `code`; returns the error.
#[track_caller]
pub fn expect_code<T: Debug>(result: Result<T, ClientError>, code: ErrorCode) -> ClientError {
    match result {
        Ok(value) => panic!(
            "expected {} but the call succeeded with {value:?}",
            code.cl_name()
        ),
        Err(error) => {
            assert_eq!(error.code, code, "expected {} got {error}", code.cl_name());
            error
        }
    }
}

/// Asserts that `result` failed with `code` at element `index`.
#[track_caller]
pub fn expect_code_at<T: Debug>(
    result: Result<T, ClientError>,
    code: ErrorCode,
    index: u32,
) -> ClientError {
    let error = expect_code(result, code);
    assert_eq!(
        error.index,
        Some(index),
        "erroneous vector index of {error}"
    );
    error
}

/// Whether `name` exists (via Stat).
pub async fn exists(client: &Client, name: &CheckpointName) -> bool {
    match client.stat(name).await {
        Ok(info) => {
            assert_eq!(&info.name, name);
            true
        }
        Err(error) if error.code == ErrorCode::NotExist => false,
        Err(error) => panic!("stat {name}: {error}"),
    }
}

/// Polls `condition` every 50 ms until it holds; panics after [`DEADLINE`].
pub async fn eventually(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if condition().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: did not happen within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `name` no longer exists.
pub async fn eventually_gone(client: &Client, name: &CheckpointName) {
    eventually(&format!("checkpoint {name} is deleted"), async || {
        !exists(client, name).await
    })
    .await;
}

/// The next notification, which must come within [`DEADLINE`].
pub async fn next_notification(subscription: &mut Subscription) -> Notification {
    match tokio::time::timeout(DEADLINE, subscription.next()).await {
        Ok(Some(notification)) => notification,
        Ok(None) => panic!("the subscription ended"),
        Err(_) => panic!("no notification within {DEADLINE:?}"),
    }
}

/// The next notification, which must be an update: (seq, change).
pub async fn next_update(subscription: &mut Subscription) -> (u64, Change) {
    match next_notification(subscription).await {
        Notification::Update { seq, change, .. } => (seq, change),
        other => panic!("expected an update, got {other:?}"),
    }
}

/// Every descriptor an iteration returns, in order, until NO_SECTIONS.
pub async fn iterate_all(
    checkpoint: &Checkpoint,
    chosen: SectionsChosen,
    time: i64,
) -> Vec<SectionDescriptor> {
    let mut iterator = checkpoint
        .iterate(chosen, time)
        .await
        .expect("iteration initialize");
    let mut out = Vec::new();
    while let Some(descriptor) = iterator.next().await.expect("iteration next") {
        out.push(descriptor);
        assert!(out.len() <= 10_000, "the iteration does not end");
    }
    iterator.finalize().await.expect("iteration finalize");
    out
}

/// Sorted section ids of descriptors, as strings.
pub fn ids_of(descriptors: &[SectionDescriptor]) -> Vec<String> {
    let mut ids: Vec<String> = descriptors
        .iter()
        .map(|d| String::from_utf8_lossy(d.section_id.as_bytes()).into_owned())
        .collect();
    ids.sort();
    ids
}

/// Now plus `ms` milliseconds, in ns since the epoch.
pub fn in_ms(ms: i64) -> i64 {
    ckpt_proto::now_ns() + ms * 1_000_000
}

/// Sends an Open request whose name is `name_bytes` as-is, bypassing the
/// client-side length check (for the server's own validation), and returns
/// the server's response.
pub fn raw_open_with_name(
    addr: &str,
    name_bytes: &[u8],
    attributes: Option<CreationAttributes>,
    flags: OpenFlags,
) -> Response {
    // Encode a valid request with a placeholder name, then splice the name
    // in: postcard writes the variant index (Open = 0), then the name as a
    // varint length and its bytes, then the remaining fields.
    let placeholder = vec![b'p'; 10];
    let request = Request::Open {
        name: CheckpointName::new(placeholder.clone()).unwrap(),
        attributes,
        flags,
    };
    let frame = Frame::new(FrameKind::Request, 0, &request).unwrap();
    let body = frame.body.to_vec();
    assert_eq!(&body[..2], &[0u8, 10u8], "postcard layout of Request::Open");
    assert_eq!(&body[2..12], &placeholder[..]);
    let mut spliced = vec![0u8];
    let mut len = name_bytes.len() as u64;
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            spliced.push(byte);
            break;
        }
        spliced.push(byte | 0x80);
    }
    spliced.extend_from_slice(name_bytes);
    spliced.extend_from_slice(&body[12..]);
    // A session of its own, and TRY_AGAIN retried with the same request
    // number, as the client library does: in a cluster on a loaded
    // machine a create can answer TRY_AGAIN, and its retry is then still
    // answered "created".
    let session = rand::random::<u64>() | 1;
    let mut raw = RawClient::connect_session(addr, session);
    let request_id = 4242;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let spliced = bytes::Bytes::from(spliced);
    loop {
        raw.send_frame(Frame {
            kind: FrameKind::Request,
            request_id,
            body: spliced.clone(),
        });
        let response: Response = loop {
            let frame = raw.read_frame().expect("a response to the spliced Open");
            if frame.kind == FrameKind::Response && frame.request_id == request_id {
                break frame.decode().expect("response body");
            }
            assert_ne!(
                frame.kind,
                FrameKind::Goodbye,
                "the server closed the connection instead of answering"
            );
        };
        match response {
            Err(error)
                if error.code == ErrorCode::TryAgain && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            response => return response,
        }
    }
}

/// The code of a raw response that must be an error.
#[track_caller]
pub fn raw_code(response: &Response) -> ErrorCode {
    match response {
        Ok(reply) => panic!("expected an error, got {reply:?}"),
        Err(error) => error.code,
    }
}

/// Unwraps a reply that must be `Done`.
#[track_caller]
pub fn done(result: Result<Reply, ClientError>) {
    match result {
        Ok(Reply::Done) => {}
        other => panic!("expected Done, got {other:?}"),
    }
}

/// How one try of a timed scenario went (see [`with_growing_window`]).
pub enum Window {
    /// The scenario ran and every assertion held.
    Done,
    /// The machine was too slow to set the scenario up within its window
    /// (e.g. a section meant to expire later had expired before the test
    /// could look at it): nothing was wrong, try again with a larger one.
    TooSlow(String),
}

/// Runs a scenario that needs the test to act within a window of time
/// (before an expiry or a retention fires), with a window of `first_ms`,
/// then 4 and 16 times that while the scenario reports [`Window::TooSlow`].
/// A loaded machine thus costs time, never a false failure, and a fast one
/// still gets the short window. Panics if even the largest was too small.
pub async fn with_growing_window(
    what: &str,
    first_ms: i64,
    mut scenario: impl AsyncFnMut(i64) -> Window,
) {
    let mut why = Vec::new();
    for window_ms in [first_ms, first_ms * 4, first_ms * 16] {
        match scenario(window_ms).await {
            Window::Done => return,
            Window::TooSlow(reason) => {
                println!("{what}: the {window_ms} ms window was too short ({reason}); retrying");
                why.push(format!("{window_ms} ms: {reason}"));
            }
        }
    }
    panic!("{what}: the machine was too slow for every window: {why:?}");
}

/// Whether `at` (ns since the epoch) has passed.
pub fn passed(at: i64) -> bool {
    ckpt_proto::now_ns() >= at
}
