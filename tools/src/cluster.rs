//! `ckpt-tool cluster status|verify`: a cluster seen through its nodes'
//! admin HTTP ports, plus the small HTTP/1.1 client they (and `bench
//! --target etcd`) use.
//!
//! - `status`: `GET /cluster` from the first node that answers, printed as
//!   text or passed through as JSON.
//! - `verify`: `GET /checksums` from every node; per checkpoint instance,
//!   every node holding it must report the same (epoch, seq, checksum), and
//!   (when a node's `/cluster` answers) every listed replica must hold it.
//!   Any difference or unreachable node makes the command fail.
//!
//! The HTTP client speaks just enough HTTP/1.1 for JSON over keep-alive
//! connections: `Content-Length` or chunked bodies (or a body to EOF), with
//! bounded header and body sizes and a timeout per request.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use ckpt_client::ClientError;
use ckpt_proto::ErrorCode;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::admin::{emit, emit_json};
use crate::cli::{
    AdminTarget, ClusterAddNodeArgs, ClusterRemoveNodeArgs, ClusterStatusArgs, ClusterVerifyArgs,
    ListedCheckpoints,
};

/// How long one admin request may take (connect, send, answer).
pub const ADMIN_TIMEOUT_MS: u64 = 5_000;
/// Largest response head accepted.
const HEAD_BYTES_MAX: usize = 64 * 1024;
/// Largest response body accepted.
const BODY_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Splits `h1:p1,h2:p2,...` into its addresses (spaces around commas are
/// ignored).
///
/// # Errors
/// `INVALID_PARAMETER` for an empty list or an empty entry.
pub fn split_addrs(text: &str) -> Result<Vec<String>, ClientError> {
    let addrs: Vec<String> = text.split(',').map(|a| a.trim().to_string()).collect();
    if addrs.iter().any(String::is_empty) {
        return Err(ClientError::new(
            ErrorCode::InvalidParameter,
            format!("`{text}`: expected host:port[,host:port...] without empty entries"),
        ));
    }
    Ok(addrs)
}

/// The admin addresses of `--admin LIST` or `--config FILE`.
///
/// # Errors
/// `INVALID_PARAMETER` for a bad list or a config without nodes;
/// `LIBRARY` when the file cannot be read or is not TOML.
pub fn admin_addrs(target: &AdminTarget) -> Result<Vec<String>, ClientError> {
    match (&target.admin, &target.config) {
        (Some(list), _) => split_addrs(list),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ClientError::new(
                    ErrorCode::Library,
                    format!("reading {}: {e}", path.display()),
                )
            })?;
            admin_addrs_from_config(&text, path)
        }
        (None, None) => Err(ClientError::new(
            ErrorCode::InvalidParameter,
            "cluster commands need --admin LIST or --config FILE",
        )),
    }
}

/// The `admin_addr` of every `[[nodes]]` entry of a cluster.toml, in order.
///
/// # Errors
/// `LIBRARY` when the text is not TOML or an entry lacks `admin_addr`;
/// `INVALID_PARAMETER` when there are no nodes.
pub fn admin_addrs_from_config(text: &str, path: &Path) -> Result<Vec<String>, ClientError> {
    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        nodes: Vec<Node>,
    }
    #[derive(Deserialize)]
    struct Node {
        admin_addr: String,
    }
    let file: File = toml::from_str(text).map_err(|e| {
        ClientError::new(
            ErrorCode::Library,
            format!("{}: not a cluster config: {e}", path.display()),
        )
    })?;
    if file.nodes.is_empty() {
        return Err(ClientError::new(
            ErrorCode::InvalidParameter,
            format!("{}: no [[nodes]] entries", path.display()),
        ));
    }
    Ok(file.nodes.into_iter().map(|n| n.admin_addr).collect())
}

/// An HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Body bytes (chunked encoding removed).
    pub body: Vec<u8>,
}

fn http_error(addr: &str, what: impl std::fmt::Display) -> ClientError {
    ClientError::new(ErrorCode::MessageError, format!("{addr}: {what}"))
}

/// One HTTP/1.1 keep-alive connection.
pub struct HttpConnection {
    addr: String,
    stream: TcpStream,
    /// Bytes read past the previous response.
    buffer: Vec<u8>,
    /// The server said `Connection: close` or ended a body at EOF.
    closed: bool,
}

impl HttpConnection {
    /// Connects to `addr` (host:port).
    ///
    /// # Errors
    /// `MESSAGE_ERROR` naming the address when it cannot be reached in time.
    pub async fn connect(addr: &str, timeout: Duration) -> Result<HttpConnection, ClientError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| http_error(addr, "connecting timed out"))?
            .map_err(|e| http_error(addr, format!("cannot connect: {e}")))?;
        let _ = stream.set_nodelay(true);
        Ok(HttpConnection {
            addr: addr.to_string(),
            stream,
            buffer: Vec::new(),
            closed: false,
        })
    }

    /// Whether the connection can carry another request.
    pub fn is_open(&self) -> bool {
        !self.closed
    }

    /// Sends one request and reads its response.
    ///
    /// # Errors
    /// `MESSAGE_ERROR` when the connection breaks, times out or the
    /// response is not HTTP/1.x this client understands.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
        timeout: Duration,
    ) -> Result<HttpResponse, ClientError> {
        if self.closed {
            return Err(http_error(&self.addr, "the server closed the connection"));
        }
        let result = tokio::time::timeout(timeout, self.exchange(method, path, body)).await;
        match result {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => {
                self.closed = true;
                Err(error)
            }
            Err(_) => {
                self.closed = true;
                Err(http_error(
                    &self.addr,
                    format!(
                        "{method} {path}: no answer within {} ms",
                        timeout.as_millis()
                    ),
                ))
            }
        }
    }

    async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
    ) -> Result<HttpResponse, ClientError> {
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: keep-alive\r\n",
            self.addr
        )
        .into_bytes();
        if let Some((content_type, bytes)) = body {
            request.extend_from_slice(
                format!(
                    "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
                    bytes.len()
                )
                .as_bytes(),
            );
        }
        request.extend_from_slice(b"\r\n");
        if let Some((_, bytes)) = body {
            request.extend_from_slice(bytes);
        }
        self.stream
            .write_all(&request)
            .await
            .map_err(|e| http_error(&self.addr, format!("sending {method} {path}: {e}")))?;
        self.read_response(method, path).await
    }

    /// Reads more bytes into the buffer; false at EOF.
    async fn fill(&mut self) -> Result<bool, ClientError> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self
            .stream
            .read(&mut chunk)
            .await
            .map_err(|e| http_error(&self.addr, format!("reading the response: {e}")))?;
        self.buffer.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// Takes `n` bytes from the buffer, reading until they are there.
    async fn take(&mut self, n: usize) -> Result<Vec<u8>, ClientError> {
        while self.buffer.len() < n {
            if !self.fill().await? {
                return Err(http_error(&self.addr, "the response body was cut short"));
            }
        }
        let rest = self.buffer.split_off(n);
        Ok(std::mem::replace(&mut self.buffer, rest))
    }

    /// Takes one CRLF-terminated line (without the CRLF).
    async fn line(&mut self) -> Result<Vec<u8>, ClientError> {
        loop {
            if let Some(at) = find(&self.buffer, b"\r\n") {
                let line = self.take(at + 2).await?;
                return Ok(line[..at].to_vec());
            }
            if self.buffer.len() > HEAD_BYTES_MAX {
                return Err(http_error(&self.addr, "a chunk line is too long"));
            }
            if !self.fill().await? {
                return Err(http_error(&self.addr, "the response was cut short"));
            }
        }
    }

    async fn read_response(
        &mut self,
        method: &str,
        path: &str,
    ) -> Result<HttpResponse, ClientError> {
        let head_end = loop {
            if let Some(at) = find(&self.buffer, b"\r\n\r\n") {
                break at;
            }
            if self.buffer.len() > HEAD_BYTES_MAX {
                return Err(http_error(&self.addr, "the response head is too long"));
            }
            if !self.fill().await? {
                return Err(http_error(
                    &self.addr,
                    format!("{method} {path}: the connection closed before an answer"),
                ));
            }
        };
        let head = self.take(head_end + 4).await?;
        let head = String::from_utf8_lossy(&head[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let (version, status) = (parts.next().unwrap_or_default(), parts.next());
        let status = match (
            version.starts_with("HTTP/1."),
            status.map(str::parse::<u16>),
        ) {
            (true, Some(Ok(status))) => status,
            _ => {
                return Err(http_error(
                    &self.addr,
                    format!("not an HTTP/1.x status line: `{status_line}`"),
                ))
            }
        };
        let (mut length, mut chunked) = (None, false);
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => {
                    let n = value.parse::<usize>().map_err(|_| {
                        http_error(&self.addr, format!("bad Content-Length `{value}`"))
                    })?;
                    length = Some(n);
                }
                "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
                "connection" if value.eq_ignore_ascii_case("close") => self.closed = true,
                _ => {}
            }
        }
        let addr = self.addr.clone();
        let too_big = |n: usize| {
            http_error(
                &addr,
                format!("a response body of {n} bytes is over the limit of {BODY_BYTES_MAX}"),
            )
        };
        let body = if status == 204 || status == 304 || (100..200).contains(&status) {
            Vec::new()
        } else if chunked {
            let mut body = Vec::new();
            loop {
                let line = self.line().await?;
                let text = String::from_utf8_lossy(&line);
                let size_text = text.split(';').next().unwrap_or_default().trim();
                let size = usize::from_str_radix(size_text, 16)
                    .map_err(|_| http_error(&self.addr, format!("bad chunk size `{text}`")))?;
                if size == 0 {
                    // Trailers, then the empty line.
                    while !self.line().await?.is_empty() {}
                    break;
                }
                if body.len().saturating_add(size) > BODY_BYTES_MAX {
                    return Err(too_big(body.len().saturating_add(size)));
                }
                body.extend_from_slice(&self.take(size).await?);
                if !self.take(2).await?.eq(b"\r\n") {
                    return Err(http_error(&self.addr, "a chunk does not end with CRLF"));
                }
            }
            body
        } else if let Some(n) = length {
            if n > BODY_BYTES_MAX {
                return Err(too_big(n));
            }
            self.take(n).await?
        } else {
            // No length: the body runs to EOF.
            while self.fill().await? {
                if self.buffer.len() > BODY_BYTES_MAX {
                    return Err(too_big(self.buffer.len()));
                }
            }
            self.closed = true;
            std::mem::take(&mut self.buffer)
        };
        Ok(HttpResponse { status, body })
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `GET path` from `addr` on a fresh connection; the body of a 200 answer.
///
/// # Errors
/// `MESSAGE_ERROR` when unreachable, on a broken answer or a status other
/// than 200 (the message carries the status and the start of the body).
pub async fn http_get(addr: &str, path: &str) -> Result<Vec<u8>, ClientError> {
    let timeout = Duration::from_millis(ADMIN_TIMEOUT_MS);
    let mut connection = HttpConnection::connect(addr, timeout).await?;
    let response = connection.request("GET", path, None, timeout).await?;
    if response.status != 200 {
        let text = String::from_utf8_lossy(&response.body);
        let text: String = text.chars().take(200).collect();
        return Err(http_error(
            addr,
            format!("GET {path} answered {}: {}", response.status, text.trim()),
        ));
    }
    Ok(response.body)
}

/// `GET path` as JSON of type `T`.
async fn get_json<T: for<'de> Deserialize<'de>>(addr: &str, path: &str) -> Result<T, ClientError> {
    let body = http_get(addr, path).await?;
    serde_json::from_slice(&body)
        .map_err(|e| http_error(addr, format!("GET {path}: unexpected JSON: {e}")))
}

/// A node as `/cluster` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// Node id.
    pub id: u64,
    /// Where clients connect.
    #[serde(default)]
    pub client_addr: String,
    /// The admin HTTP address.
    #[serde(default)]
    pub admin_addr: String,
    /// Whether the leader counts it alive (holding a lease).
    pub alive: bool,
}

/// How far a backup is behind the active replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LagView {
    /// The backup.
    pub node: u64,
    /// Records not yet acknowledged.
    pub records: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// A checkpoint as `/cluster` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointView {
    /// Name.
    pub name: String,
    /// Cluster-wide instance id.
    pub instance: u64,
    /// Nodes holding a replica.
    pub replicas: Vec<u64>,
    /// The active replica, if any.
    pub active: Option<u64>,
    /// Current epoch.
    pub epoch: u64,
    /// Replicas in sync.
    #[serde(default)]
    pub in_sync: Vec<u64>,
    /// Backup lag.
    #[serde(default)]
    pub lag: Vec<LagView>,
}

/// `GET /cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    /// The node that answered.
    pub node_id: u64,
    /// The Raft leader it knows, if any.
    pub leader: Option<u64>,
    /// The Raft term.
    pub term: u64,
    /// Checkpoints short of replicas or with replicas not in sync yet
    /// (after a node was removed or added); absent from older servers.
    #[serde(default)]
    pub under_replicated: u64,
    /// How many checkpoints there are; absent from older servers (then
    /// every one is listed).
    #[serde(default)]
    pub checkpoint_count: Option<u64>,
    /// Which are listed: all, none or unsettled (`?checkpoints=`).
    #[serde(default)]
    pub listed: Option<String>,
    /// Every member node.
    pub nodes: Vec<NodeView>,
    /// The checkpoints listed.
    pub checkpoints: Vec<CheckpointView>,
}

/// One instance in `GET /checksums`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChecksumView {
    /// Name.
    pub name: String,
    /// Instance id.
    pub instance: u64,
    /// Epoch of the last applied entry.
    pub epoch: u64,
    /// Its seq.
    pub seq: u64,
    /// Checksum over metadata and sections, hex.
    pub checksum: String,
}

/// `GET /checksums`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChecksumsView {
    /// The node that answered.
    pub node_id: u64,
    /// Every instance it holds.
    pub checkpoints: Vec<ChecksumView>,
}

fn id_list(ids: &[u64]) -> String {
    let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
    ids.join(",")
}

/// The text `cluster status` prints.
pub fn status_text(view: &ClusterView, from: &str) -> String {
    let mut text = format!(
        "cluster seen by node {} ({from}): leader {}, term {}\n",
        view.node_id,
        view.leader
            .map_or_else(|| "none".to_string(), |l| l.to_string()),
        view.term
    );
    text.push_str("nodes:\n");
    for node in &view.nodes {
        text.push_str(&format!(
            "  {}\t{}\tclient {}\tadmin {}{}\n",
            node.id,
            if node.alive { "alive" } else { "DOWN" },
            node.client_addr,
            node.admin_addr,
            if view.leader == Some(node.id) {
                "\tleader"
            } else {
                ""
            }
        ));
    }
    let count = view
        .checkpoint_count
        .unwrap_or(u64::try_from(view.checkpoints.len()).unwrap_or(u64::MAX));
    text.push_str(&format!(
        "checkpoints: {count} ({} fully replicated, {} filling)\n",
        count.saturating_sub(view.under_replicated),
        view.under_replicated
    ));
    if view.listed.as_deref() == Some("unsettled") {
        text.push_str(&format!(
            "needing attention (under-replicated, without an active replica or with a backup behind): {}\n",
            view.checkpoints.len()
        ));
    }
    for checkpoint in &view.checkpoints {
        let lag: Vec<String> = checkpoint
            .lag
            .iter()
            .map(|l| format!("{}:{}rec/{}B", l.node, l.records, l.bytes))
            .collect();
        text.push_str(&format!(
            "  {}\tinstance {}\tepoch {}\tactive {}\treplicas [{}]\tin-sync [{}]\tlag {}\n",
            checkpoint.name,
            checkpoint.instance,
            checkpoint.epoch,
            checkpoint
                .active
                .map_or_else(|| "none".to_string(), |a| a.to_string()),
            id_list(&checkpoint.replicas),
            id_list(&checkpoint.in_sync),
            if lag.is_empty() {
                "none".to_string()
            } else {
                lag.join(" ")
            }
        ));
    }
    text
}

/// `GET /cluster` from the first of `addrs` that answers: its address,
/// the body, and why the ones before it did not answer.
///
/// # Errors
/// `MESSAGE_ERROR` when no node answers (naming each failure).
pub async fn fetch_cluster(
    addrs: &[String],
    listed: ListedCheckpoints,
) -> Result<(String, Vec<u8>, Vec<String>), ClientError> {
    // Plain `/cluster` for all: what servers before `?checkpoints=` serve.
    let path = match listed {
        ListedCheckpoints::All => "/cluster".to_string(),
        other => format!(
            "/cluster?checkpoints={}",
            clap::ValueEnum::to_possible_value(&other)
                .expect("every value is named")
                .get_name()
        ),
    };
    let mut failures = Vec::new();
    for addr in addrs {
        match http_get(addr, &path).await {
            Ok(body) => return Ok((addr.clone(), body, failures)),
            Err(error) => failures.push(error.message),
        }
    }
    Err(ClientError::new(
        ErrorCode::MessageError,
        format!("no node answered GET /cluster: {}", failures.join("; ")),
    ))
}

/// `cluster status`.
///
/// # Errors
/// `MESSAGE_ERROR` when no node answers or the answer is not the JSON
/// expected.
pub async fn status(args: &ClusterStatusArgs) -> Result<(), ClientError> {
    let addrs = admin_addrs(&args.target)?;
    let (addr, body, failures) = fetch_cluster(&addrs, args.checkpoints).await?;
    for failure in &failures {
        eprintln!("warning: {failure}");
    }
    if args.json {
        let value: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| http_error(&addr, format!("GET /cluster: not JSON: {e}")))?;
        return emit_json(&value);
    }
    let view: ClusterView = serde_json::from_slice(&body)
        .map_err(|e| http_error(&addr, format!("GET /cluster: unexpected JSON: {e}")))?;
    emit(status_text(&view, &addr).as_bytes())
}

/// POSTs a membership change to the first node that answers: a node
/// that is not reachable is skipped, a refusal is final.
async fn post_member(target: &AdminTarget, path: &str, json: bool) -> Result<(), ClientError> {
    let addrs = admin_addrs(target)?;
    let timeout = Duration::from_millis(MEMBER_TIMEOUT_MS);
    let mut failures = Vec::new();
    for addr in &addrs {
        let mut connection = match HttpConnection::connect(addr, timeout).await {
            Ok(connection) => connection,
            Err(error) => {
                failures.push(error.message);
                continue;
            }
        };
        let response = match connection.request("POST", path, None, timeout).await {
            Ok(response) => response,
            Err(error) => {
                failures.push(error.message);
                continue;
            }
        };
        let text = String::from_utf8_lossy(&response.body).trim().to_string();
        return match response.status {
            200 if json => crate::admin::emit_json(&serde_json::json!({
                "result": text,
                "through": addr,
            })),
            200 => emit(format!("{text} (through {addr})\n").as_bytes()),
            // No leader yet, or the change did not commit in time.
            503 => {
                failures.push(format!("{addr}: {text}"));
                continue;
            }
            404 if text.starts_with("not a cluster node") => Err(http_error(addr, text)),
            status => Err(ClientError::new(
                ErrorCode::InvalidParameter,
                format!("{addr} refused ({status}): {text}"),
            )),
        };
    }
    Err(ClientError::new(
        ErrorCode::TryAgain,
        format!("no node made the change: {}", failures.join("; ")),
    ))
}

/// How long one membership change may take at one node.
const MEMBER_TIMEOUT_MS: u64 = 15_000;

/// `cluster add-node`.
///
/// # Errors
/// No node reachable or none with a leader (`TRY_AGAIN`); the cluster
/// refused (`INVALID_PARAMETER`, naming why).
pub async fn add_node(args: &ClusterAddNodeArgs) -> Result<(), ClientError> {
    let path = format!(
        "/cluster/add-node?id={}&client_addr={}&peer_addr={}&admin_addr={}",
        args.id, args.client_addr, args.peer_addr, args.admin_addr
    );
    post_member(&args.target, &path, args.json).await
}

/// `cluster remove-node`.
///
/// # Errors
/// As [`add_node`].
pub async fn remove_node(args: &ClusterRemoveNodeArgs) -> Result<(), ClientError> {
    post_member(
        &args.target,
        &format!("/cluster/remove-node?id={}", args.id),
        args.json,
    )
    .await
}

/// One node's view of one instance, in a verify report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicaState {
    /// The node.
    pub node: u64,
    /// Epoch of its last entry.
    pub epoch: u64,
    /// Its seq.
    pub seq: u64,
    /// Its checksum.
    pub checksum: String,
}

/// The verdict on one checkpoint instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceVerdict {
    /// Name.
    pub name: String,
    /// Instance id.
    pub instance: u64,
    /// Every node's (epoch, seq, checksum), by node id.
    pub replicas: Vec<ReplicaState>,
    /// Replicas listed by `/cluster` that did not report the instance.
    pub missing_on: Vec<u64>,
    /// Nodes whose state differs from the most common one (ties: the
    /// highest position's group is the reference).
    pub differing: Vec<u64>,
    /// Whether every replica holds the same.
    pub identical: bool,
}

/// What `cluster verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Per instance, by instance id.
    pub checkpoints: Vec<InstanceVerdict>,
    /// Admin addresses that did not answer, with why.
    pub unreachable: Vec<String>,
    /// Whether `/cluster` could be read to find missing replicas.
    pub replica_lists_checked: bool,
}

impl VerifyReport {
    /// Whether everything matched and every node answered.
    pub fn ok(&self) -> bool {
        self.unreachable.is_empty() && self.checkpoints.iter().all(|c| c.identical)
    }

    /// The text `cluster verify` prints.
    pub fn text(&self) -> String {
        let mut text = String::new();
        for unreachable in &self.unreachable {
            text.push_str(&format!("unreachable: {unreachable}\n"));
        }
        for verdict in &self.checkpoints {
            let state = |r: &ReplicaState| {
                format!(
                    "node {} epoch {} seq {} checksum {}",
                    r.node, r.epoch, r.seq, r.checksum
                )
            };
            if verdict.identical {
                let first = &verdict.replicas[0];
                let nodes: Vec<u64> = verdict.replicas.iter().map(|r| r.node).collect();
                text.push_str(&format!(
                    "{} (instance {}): identical on nodes {} (epoch {} seq {} checksum {})\n",
                    verdict.name,
                    verdict.instance,
                    id_list(&nodes),
                    first.epoch,
                    first.seq,
                    first.checksum
                ));
                continue;
            }
            let mut what = Vec::new();
            if !verdict.differing.is_empty() {
                what.push(format!("differs on nodes {}", id_list(&verdict.differing)));
            }
            if !verdict.missing_on.is_empty() {
                what.push(format!("missing on nodes {}", id_list(&verdict.missing_on)));
            }
            let states: Vec<String> = verdict.replicas.iter().map(state).collect();
            text.push_str(&format!(
                "{} (instance {}): DIFFERENT: {} [{}]\n",
                verdict.name,
                verdict.instance,
                what.join(", "),
                states.join("; ")
            ));
        }
        let differing = self.checkpoints.iter().filter(|c| !c.identical).count();
        text.push_str(&format!(
            "{} checkpoints, {} identical, {} different, {} nodes unreachable{}\n",
            self.checkpoints.len(),
            self.checkpoints.len() - differing,
            differing,
            self.unreachable.len(),
            if self.replica_lists_checked {
                ""
            } else {
                " (replica lists not checked: no /cluster answer)"
            }
        ));
        text
    }
}

/// Compares what every node reported. `replicas` (from `/cluster`, when
/// available) maps an instance to the nodes that should hold it.
pub fn compare(
    reports: &[ChecksumsView],
    replicas: Option<&BTreeMap<u64, Vec<u64>>>,
    unreachable: Vec<String>,
) -> VerifyReport {
    let mut by_instance: BTreeMap<u64, (String, Vec<ReplicaState>)> = BTreeMap::new();
    for report in reports {
        for checkpoint in &report.checkpoints {
            let entry = by_instance
                .entry(checkpoint.instance)
                .or_insert_with(|| (checkpoint.name.clone(), Vec::new()));
            entry.1.push(ReplicaState {
                node: report.node_id,
                epoch: checkpoint.epoch,
                seq: checkpoint.seq,
                checksum: checkpoint.checksum.to_ascii_lowercase(),
            });
        }
    }
    let mut checkpoints = Vec::new();
    for (instance, (name, mut states)) in by_instance {
        states.sort_by_key(|s| s.node);
        // The reference state: the most common; ties go to the furthest.
        let mut groups: BTreeMap<(u64, u64, &str), Vec<u64>> = BTreeMap::new();
        for state in &states {
            groups
                .entry((state.epoch, state.seq, state.checksum.as_str()))
                .or_default()
                .push(state.node);
        }
        let reference = groups
            .iter()
            .max_by(|a, b| a.1.len().cmp(&b.1.len()).then(a.0.cmp(b.0)))
            .map(|(key, _)| *key);
        let differing: Vec<u64> = states
            .iter()
            .filter(|s| Some((s.epoch, s.seq, s.checksum.as_str())) != reference)
            .map(|s| s.node)
            .collect();
        let missing_on: Vec<u64> = replicas
            .and_then(|map| map.get(&instance))
            .map(|nodes| {
                nodes
                    .iter()
                    .copied()
                    .filter(|n| !states.iter().any(|s| s.node == *n))
                    .collect()
            })
            .unwrap_or_default();
        checkpoints.push(InstanceVerdict {
            identical: differing.is_empty() && missing_on.is_empty(),
            name,
            instance,
            replicas: states,
            missing_on,
            differing,
        });
    }
    // Instances the cluster lists that no node reported at all.
    if let Some(map) = replicas {
        for (instance, nodes) in map {
            if !checkpoints.iter().any(|c| c.instance == *instance) && !nodes.is_empty() {
                checkpoints.push(InstanceVerdict {
                    name: format!("instance {instance}"),
                    instance: *instance,
                    replicas: Vec::new(),
                    missing_on: nodes.clone(),
                    differing: Vec::new(),
                    identical: false,
                });
            }
        }
        checkpoints.sort_by_key(|c| c.instance);
    }
    VerifyReport {
        checkpoints,
        unreachable,
        replica_lists_checked: replicas.is_some(),
    }
}

/// Fetches every node's checksums (and one node's replica lists) and
/// compares them.
pub async fn gather(addrs: &[String]) -> VerifyReport {
    let fetches = addrs
        .iter()
        .map(|addr| get_json::<ChecksumsView>(addr, "/checksums"));
    let results = futures::future::join_all(fetches).await;
    let mut reports = Vec::new();
    let mut unreachable = Vec::new();
    for (addr, result) in addrs.iter().zip(results) {
        match result {
            Ok(report) => reports.push(report),
            Err(error) => unreachable.push(format!("{addr}: {}", error.message)),
        }
    }
    let mut replicas = None;
    for addr in addrs {
        if let Ok(view) = get_json::<ClusterView>(addr, "/cluster").await {
            replicas = Some(
                view.checkpoints
                    .iter()
                    .map(|c| (c.instance, c.replicas.clone()))
                    .collect::<BTreeMap<_, _>>(),
            );
            break;
        }
    }
    compare(&reports, replicas.as_ref(), unreachable)
}

/// `cluster verify`.
///
/// # Errors
/// `FAILED_OPERATION` when any checkpoint differs or any node is unreachable.
pub async fn verify(args: &ClusterVerifyArgs) -> Result<(), ClientError> {
    let addrs = admin_addrs(&args.target)?;
    let report = gather(&addrs).await;
    if args.json {
        emit_json(&report)?;
    } else {
        emit(report.text().as_bytes())?;
    }
    if !report.ok() {
        let differing = report.checkpoints.iter().filter(|c| !c.identical).count();
        return Err(ClientError::new(
            ErrorCode::FailedOperation,
            format!(
                "{differing} of {} checkpoints differ between replicas, {} of {} nodes unreachable",
                report.checkpoints.len(),
                report.unreachable.len(),
                addrs.len()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::net::TcpListener;

    use super::*;

    /// A tiny HTTP/1.1 server on a free loopback port answering canned
    /// bodies by path (404 otherwise), keep-alive, Content-Length or
    /// chunked. Counts the connections it accepted.
    struct CannedServer {
        addr: String,
        connections: Arc<AtomicUsize>,
    }

    async fn serve(routes: &[(&str, &str)], chunked: bool) -> CannedServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let routes: Arc<HashMap<String, String>> = Arc::new(
            routes
                .iter()
                .map(|(p, b)| ((*p).to_string(), (*b).to_string()))
                .collect(),
        );
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let routes = routes.clone();
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    loop {
                        let Some(end) = find(&buffer, b"\r\n\r\n") else {
                            let mut chunk = [0u8; 4096];
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
                        buffer.drain(..end + 4);
                        let path = head.split(' ').nth(1).unwrap_or("").to_string();
                        let reply = match routes.get(&path) {
                            Some(body) if chunked => {
                                let (a, b) = body.split_at(body.len() / 2);
                                format!(
                                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x};ext=1\r\n{b}\r\n0\r\n\r\n",
                                    a.len(),
                                    b.len()
                                )
                            }
                            Some(body) => format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                                body.len()
                            ),
                            None => "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found"
                                .to_string(),
                        };
                        if stream.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        CannedServer { addr, connections }
    }

    /// An address where nothing listens.
    async fn dead_addr() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().to_string()
        // dropped: the port refuses connections
    }

    const CLUSTER: &str = r#"{"node_id":1,"leader":2,"term":5,
        "nodes":[{"id":1,"client_addr":"127.0.0.1:1","admin_addr":"127.0.0.1:11","alive":true},
                 {"id":2,"client_addr":"127.0.0.1:2","admin_addr":"127.0.0.1:12","alive":true},
                 {"id":3,"client_addr":"127.0.0.1:3","admin_addr":"127.0.0.1:13","alive":false}],
        "checkpoints":[{"name":"a","instance":7,"replicas":[1,2,3],"active":1,"epoch":2,
                        "in_sync":[1,2],"lag":[{"node":3,"records":12,"bytes":4096}]},
                       {"name":"b","instance":9,"replicas":[2,3],"active":null,"epoch":1,
                        "in_sync":[2],"lag":[]}]}"#;

    /// (name, instance, epoch, seq, checksum).
    type Entry = (&'static str, u64, u64, u64, &'static str);

    fn checksums(node: u64, entries: &[Entry]) -> String {
        let list: Vec<String> = entries
            .iter()
            .map(|(name, instance, epoch, seq, sum)| {
                format!(r#"{{"name":"{name}","instance":{instance},"epoch":{epoch},"seq":{seq},"checksum":"{sum}"}}"#)
            })
            .collect();
        format!(r#"{{"node_id":{node},"checkpoints":[{}]}}"#, list.join(","))
    }

    /// A cluster of three canned nodes: `entries[i]` is node i+1's checksums.
    async fn three_nodes(entries: [&[Entry]; 3]) -> Vec<String> {
        let cluster = r#"{"node_id":1,"leader":1,"term":3,"nodes":[],
            "checkpoints":[{"name":"a","instance":7,"replicas":[1,2,3],"active":1,"epoch":2,"in_sync":[1,2,3]},
                           {"name":"b","instance":9,"replicas":[1,2,3],"active":2,"epoch":1,"in_sync":[1,2,3]}]}"#;
        let mut addrs = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let body = checksums(i as u64 + 1, e);
            addrs.push(
                serve(&[("/checksums", &body), ("/cluster", cluster)], false)
                    .await
                    .addr,
            );
        }
        addrs
    }

    const A: Entry = ("a", 7, 2, 130, "00000000deadbeef");
    const B: Entry = ("b", 9, 1, 4, "0000000000000abc");

    #[tokio::test]
    async fn verify_identical_replicas() {
        let addrs = three_nodes([&[A, B], &[B, A], &[A, B]]).await;
        let report = gather(&addrs).await;
        assert!(report.ok(), "{report:?}");
        assert!(report.replica_lists_checked);
        assert_eq!(report.checkpoints.len(), 2);
        assert_eq!(report.checkpoints[0].replicas.len(), 3);
        let text = report.text();
        assert!(
            text.contains("a (instance 7): identical on nodes 1,2,3"),
            "{text}"
        );
        assert!(
            text.contains("2 checkpoints, 2 identical, 0 different, 0 nodes unreachable"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn verify_names_the_differing_node() {
        let bad_sum = ("a", 7, 2, 130, "00000000deadbeee");
        let behind = ("b", 9, 1, 3, "0000000000000abb");
        let addrs = three_nodes([&[A, B], &[A, behind], &[bad_sum, B]]).await;
        let report = gather(&addrs).await;
        assert!(!report.ok());
        let a = &report.checkpoints[0];
        assert_eq!((a.instance, a.identical), (7, false));
        assert_eq!(a.differing, vec![3]);
        let b = &report.checkpoints[1];
        assert_eq!(b.differing, vec![2]);
        let text = report.text();
        assert!(
            text.contains("a (instance 7): DIFFERENT: differs on nodes 3"),
            "{text}"
        );
        assert!(
            text.contains("b (instance 9): DIFFERENT: differs on nodes 2"),
            "{text}"
        );
        assert!(
            text.contains("node 2 epoch 1 seq 3 checksum 0000000000000abb"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn verify_reports_a_missing_replica() {
        // Node 3 lacks b although /cluster lists it as a replica.
        let addrs = three_nodes([&[A, B], &[A, B], &[A]]).await;
        let report = gather(&addrs).await;
        assert!(!report.ok());
        assert!(report.checkpoints[0].identical);
        assert_eq!(report.checkpoints[1].missing_on, vec![3]);
        assert!(report.checkpoints[1].differing.is_empty());
        assert!(report.text().contains("missing on nodes 3"));
    }

    #[tokio::test]
    async fn verify_fails_when_a_node_is_down() {
        let mut addrs = three_nodes([&[A, B], &[A, B], &[A, B]]).await;
        let dead = dead_addr().await;
        addrs[2] = dead.clone();
        let report = gather(&addrs).await;
        assert!(!report.ok());
        assert_eq!(report.unreachable.len(), 1);
        assert!(
            report.unreachable[0].starts_with(&dead),
            "{:?}",
            report.unreachable
        );
        // The two that answered agree, but /cluster lists node 3 as a replica.
        assert_eq!(report.checkpoints[0].missing_on, vec![3]);
        assert!(report.text().starts_with(&format!("unreachable: {dead}")));
    }

    #[tokio::test]
    async fn verify_without_cluster_lists_compares_what_answered() {
        let one = serve(&[("/checksums", &checksums(1, &[A]))], false).await;
        let two = serve(&[("/checksums", &checksums(2, &[A]))], false).await;
        let report = gather(&[one.addr, two.addr]).await;
        assert!(report.ok());
        assert!(!report.replica_lists_checked);
        assert!(report.text().contains("replica lists not checked"));
    }

    #[tokio::test]
    async fn status_uses_the_first_node_that_answers() {
        let dead = dead_addr().await;
        let live = serve(&[("/cluster", CLUSTER)], false).await;
        let (addr, body, failures) =
            fetch_cluster(&[dead.clone(), live.addr.clone()], ListedCheckpoints::All)
                .await
                .unwrap();
        assert_eq!(addr, live.addr);
        assert_eq!(failures.len(), 1);
        assert!(failures[0].starts_with(&dead));
        let view: ClusterView = serde_json::from_slice(&body).unwrap();
        assert_eq!((view.node_id, view.leader, view.term), (1, Some(2), 5));
        let text = status_text(&view, &addr);
        assert!(text.contains("leader 2, term 5"), "{text}");
        assert!(text.contains("3\tDOWN\tclient 127.0.0.1:3"), "{text}");
        assert!(
            text.contains("2\talive\tclient 127.0.0.1:2\tadmin 127.0.0.1:12\tleader"),
            "{text}"
        );
        assert!(
            text.contains("a\tinstance 7\tepoch 2\tactive 1\treplicas [1,2,3]\tin-sync [1,2]\tlag 3:12rec/4096B"),
            "{text}"
        );
        assert!(
            text.contains("b\tinstance 9\tepoch 1\tactive none"),
            "{text}"
        );

        let error = fetch_cluster(std::slice::from_ref(&dead), ListedCheckpoints::All)
            .await
            .unwrap_err();
        assert_eq!(error.code, ErrorCode::MessageError);
        assert!(error.message.contains(&dead), "{error}");
    }

    #[tokio::test]
    async fn http_keeps_the_connection_and_reads_chunked_bodies() {
        let server = serve(&[("/x", "hello chunked world")], true).await;
        let timeout = Duration::from_secs(5);
        let mut connection = HttpConnection::connect(&server.addr, timeout)
            .await
            .unwrap();
        for _ in 0..3 {
            let response = connection
                .request("GET", "/x", None, timeout)
                .await
                .unwrap();
            assert_eq!(response.status, 200);
            assert_eq!(response.body, b"hello chunked world");
        }
        let missing = connection
            .request("GET", "/y", None, timeout)
            .await
            .unwrap();
        assert_eq!(
            (missing.status, missing.body.as_slice()),
            (404, &b"not found"[..])
        );
        assert!(connection.is_open());
        assert_eq!(server.connections.load(Ordering::SeqCst), 1);
        let error = http_get(&server.addr, "/y").await.unwrap_err();
        assert!(error.message.contains("answered 404: not found"), "{error}");
    }

    #[tokio::test]
    async fn http_rejects_what_is_not_http() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            let _ = stream.write_all(b"SSH-2.0-OpenSSH\r\n\r\n").await;
        });
        let error = http_get(&addr, "/cluster").await.unwrap_err();
        assert!(
            error.message.contains("not an HTTP/1.x status line"),
            "{error}"
        );
    }

    #[test]
    fn admin_addresses_from_a_list_or_a_config() {
        assert_eq!(
            split_addrs("a:1, b:2,c:3").unwrap(),
            vec!["a:1".to_string(), "b:2".to_string(), "c:3".to_string()]
        );
        assert!(split_addrs("a:1,,b:2").is_err());
        assert!(split_addrs("").is_err());
        let config = r#"
            replication_factor = 3
            lease_timeout_ms = 1000
            [[nodes]]
            id = 1
            client_addr = "127.0.0.1:7401"
            peer_addr = "127.0.0.1:7501"
            admin_addr = "127.0.0.1:7601"
            [[nodes]]
            id = 2
            client_addr = "127.0.0.1:7402"
            peer_addr = "127.0.0.1:7502"
            admin_addr = "127.0.0.1:7602"
        "#;
        let path = Path::new("cluster.toml");
        assert_eq!(
            admin_addrs_from_config(config, path).unwrap(),
            vec!["127.0.0.1:7601".to_string(), "127.0.0.1:7602".to_string()]
        );
        let error = admin_addrs_from_config("[[nodes]]\nid = 1\n", path).unwrap_err();
        assert!(error.message.contains("admin_addr"), "{error}");
        let error = admin_addrs_from_config("replication_factor = 3\n", path).unwrap_err();
        assert!(error.message.contains("no [[nodes]]"), "{error}");
        assert!(admin_addrs_from_config("nodes = [", path).is_err());

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cluster.toml");
        std::fs::write(&file, config).unwrap();
        let target = AdminTarget {
            admin: None,
            config: Some(file),
        };
        assert_eq!(admin_addrs(&target).unwrap().len(), 2);
    }

    #[test]
    fn the_most_common_state_is_the_reference() {
        let node = |id, seq, sum: &str| ChecksumsView {
            node_id: id,
            checkpoints: vec![ChecksumView {
                name: "a".into(),
                instance: 1,
                epoch: 1,
                seq,
                checksum: sum.into(),
            }],
        };
        // Two agree on seq 5: the third differs even though it is further.
        let report = compare(
            &[node(1, 5, "aa"), node(2, 5, "AA"), node(3, 6, "bb")],
            None,
            vec![],
        );
        assert_eq!(report.checkpoints[0].differing, vec![3]);
        // A tie: the furthest state is the reference.
        let report = compare(&[node(1, 5, "aa"), node(2, 6, "bb")], None, vec![]);
        assert_eq!(report.checkpoints[0].differing, vec![1]);
    }
}
