//! Starting and stopping real `ckpt-server` processes for end-to-end tests.
//!
//! Servers listen on port 0 and the test reads the bound addresses from the
//! server's "ready" log line, so parallel tests never race for ports. Every
//! process is killed when its handle drops, and data lives in temp dirs.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Where the workspace's binaries are: `CKPT_BIN_DIR`, or next to the
/// test executable (target/release/deps/.. = target/release).
pub fn bin(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("CKPT_BIN_DIR") {
        return Path::new(&dir).join(name);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (cargo build --release --workspace --bins)",
        path.display()
    );
    path
}

/// A running server.
pub struct Server {
    child: Option<Child>,
    pub addr: String,
    pub admin: String,
    pub data_dir: PathBuf,
    /// Every line the server logged so far (filled by a reader thread).
    log: mpsc::Receiver<String>,
    pub lines: Vec<String>,
}

impl Server {
    /// Starts a server on `data_dir` and waits until it is ready.
    pub fn start(data_dir: &Path) -> Server {
        Server::start_with(data_dir, &[])
    }

    /// Like [`Server::start`] with extra arguments.
    pub fn start_with(data_dir: &Path, extra: &[&str]) -> Server {
        let mut args: Vec<String> = vec![
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--admin-listen".into(),
            "127.0.0.1:0".into(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        Server::spawn(data_dir, &args)
    }

    /// Starts node `node_id` of the cluster described by `config`, with
    /// `extra` flags.
    pub fn start_node_with(config: &Path, node_id: u64, data_dir: &Path, extra: &[&str]) -> Server {
        let mut args = vec![
            "--config".to_string(),
            config.display().to_string(),
            "--node-id".to_string(),
            node_id.to_string(),
            "--data-dir".to_string(),
            data_dir.display().to_string(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        Server::spawn(data_dir, &args)
    }

    /// Starts node `node_id` of the cluster described by `config`.
    pub fn start_node(config: &Path, node_id: u64, data_dir: &Path) -> Server {
        Server::start_node_with(config, node_id, data_dir, &[])
    }

    fn spawn(data_dir: &Path, args: &[String]) -> Server {
        let mut child = Command::new(bin("ckpt-server"))
            .args(args)
            .env(
                "CKPT_LOG",
                std::env::var("CKPT_TEST_SERVER_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ckpt-server starts");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Server {
            child: Some(child),
            addr: String::new(),
            admin: String::new(),
            data_dir: data_dir.to_path_buf(),
            log: rx,
            lines: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            match server.log.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    if line.contains("ckpt-server ready") {
                        server.addr = field(&line, "listen=");
                        server.admin = field(&line, "admin=");
                        server.lines.push(line);
                        return server;
                    }
                    server.lines.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(status) = server
                        .child
                        .as_mut()
                        .and_then(|c| c.try_wait().ok().flatten())
                    {
                        panic!(
                            "ckpt-server exited with {status} before it was ready:\n{}",
                            server.lines.join("\n")
                        );
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!(
            "ckpt-server was not ready in time:\n{}",
            server.lines.join("\n")
        );
    }

    /// Collects log lines logged so far.
    pub fn drain_log(&mut self) -> &[String] {
        while let Ok(line) = self.log.try_recv() {
            self.lines.push(line);
        }
        &self.lines
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for the exit status (at most 60 s).
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("ckpt-server did not stop within 60 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port free on loopback now (bound, then released): a cluster's file
/// names every node's addresses before any node starts.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `count` distinct ports free on loopback now, all bound at once, then
/// released. They are drawn below the kernel's ephemeral range: a port
/// taken from that range (`bind` to port 0) can be handed, before the
/// server that was given it binds it, to the local end of any outgoing
/// connection — another node connecting to its peers, say — and the
/// server then fails with "Address already in use".
pub fn free_ports(count: usize) -> Vec<u16> {
    use rand::Rng;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = if ephemeral_low > 12_000 {
        (10_000, ephemeral_low)
    } else {
        // An unusual range: any port the kernel picks.
        (0, 0)
    };
    let mut rng = rand::rng();
    let mut held = Vec::with_capacity(count);
    while held.len() < count {
        let port = if high > low {
            rng.random_range(low..high)
        } else {
            0
        };
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            held.push(listener);
        }
    }
    held.iter()
        .map(|l| l.local_addr().expect("bound").port())
        .collect()
}

/// A cluster of real `ckpt-server` processes on loopback, one data
/// directory each, all reading one `cluster.toml`.
pub struct Cluster {
    /// Running nodes (`None` while killed), index = node id - 1.
    pub nodes: Vec<Option<Server>>,
    /// The shared configuration file.
    pub config: PathBuf,
    /// Every node's client address, index = node id - 1.
    pub client_addrs: Vec<String>,
    /// Every node's admin address, index = node id - 1.
    pub admin_addrs: Vec<String>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` nodes with `extra` TOML keys (top level) in the file.
    pub fn start(n: usize, extra: &str) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut text = format!("{extra}\n");
        let mut client_addrs = Vec::new();
        let mut admin_addrs = Vec::new();
        let ports = free_ports(3 * n);
        for id in 1..=n {
            let (client, peer, admin) = (ports[3 * id - 3], ports[3 * id - 2], ports[3 * id - 1]);
            client_addrs.push(format!("127.0.0.1:{client}"));
            admin_addrs.push(format!("127.0.0.1:{admin}"));
            text.push_str(&format!(
                "[[nodes]]\nid = {id}\nclient_addr = \"127.0.0.1:{client}\"\npeer_addr = \"127.0.0.1:{peer}\"\nadmin_addr = \"127.0.0.1:{admin}\"\n"
            ));
        }
        let config = dir.path().join("cluster.toml");
        std::fs::write(&config, text).expect("write cluster.toml");
        let mut cluster = Cluster {
            nodes: (0..n).map(|_| None).collect(),
            config,
            client_addrs,
            admin_addrs,
            dir,
        };
        // Every node waits for its peers only after it is ready to serve,
        // so they can start one after the other.
        for id in 1..=n as u64 {
            cluster.restart(id);
        }
        cluster.wait_formed();
        cluster
    }

    /// Waits until every running node knows a Raft leader and sees every
    /// running node alive (leases granted): the cluster takes writes.
    pub fn wait_formed(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let running: Vec<u64> = (1..=self.nodes.len() as u64)
            .filter(|id| self.nodes[(*id - 1) as usize].is_some())
            .collect();
        let mut last = String::new();
        while Instant::now() < deadline {
            let formed = running.iter().all(|id| {
                let (code, body) = http_get(&self.admin_addrs[(*id - 1) as usize], "/cluster");
                let Ok(status) = serde_json::from_str::<serde_json::Value>(&body) else {
                    last = body;
                    return false;
                };
                let alive = status["nodes"].as_array().is_some_and(|nodes| {
                    nodes.iter().all(|n| {
                        !running.contains(&n["id"].as_u64().unwrap_or(0))
                            || n["alive"].as_bool() == Some(true)
                    })
                });
                let ok = code == 200 && status["leader"].as_u64().is_some() && alive;
                if !ok {
                    last = body;
                }
                ok
            });
            if formed {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the cluster did not form within 60 s; last /cluster: {last}");
    }

    /// The data directory of node `id`.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}"))
    }

    /// (Re)starts node `id` on its data directory (a node that joined
    /// with [`Cluster::start_joining`] on its own file, with `--join`).
    pub fn restart(&mut self, id: u64) {
        let data = self.data_dir(id);
        std::fs::create_dir_all(&data).expect("node data dir");
        let joined = self.dir.path().join(format!("cluster-{id}.toml"));
        let server = if joined.exists() {
            Server::start_node_with(&joined, id, &data, &["--join"])
        } else {
            Server::start_node(&self.config, id, &data)
        };
        self.nodes[(id - 1) as usize] = Some(server);
    }

    /// SIGKILLs node `id`.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut server) = self.nodes[(id - 1) as usize].take() {
            server.kill();
        }
    }

    /// Every node's client address, comma-separated (what clients and
    /// ckpt-tool take).
    pub fn addrs(&self) -> String {
        self.client_addrs.join(",")
    }

    /// The admin address of every running node, comma-separated.
    pub fn admins(&self) -> String {
        self.admin_addrs
            .iter()
            .zip(&self.nodes)
            .filter(|(_, node)| node.is_some())
            .map(|(addr, _)| addr.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts a new node with `ckpt-server --join` and an empty data
    /// directory, its cluster file the others' plus its own `[[nodes]]`
    /// entry: it waits for `ckpt-tool cluster add-node`. Returns its id and
    /// its client, peer and admin addresses.
    pub fn start_joining(&mut self) -> (u64, String, String, String) {
        let id = self.nodes.len() as u64 + 1;
        let held: Vec<std::net::TcpListener> = (0..3)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port"))
            .collect();
        let addrs: Vec<String> = held
            .iter()
            .map(|l| format!("127.0.0.1:{}", l.local_addr().expect("bound").port()))
            .collect();
        drop(held);
        let (client, peer, admin) = (addrs[0].clone(), addrs[1].clone(), addrs[2].clone());
        let mut text = std::fs::read_to_string(&self.config).expect("the cluster file");
        text.push_str(&format!(
            "[[nodes]]\nid = {id}\nclient_addr = \"{client}\"\npeer_addr = \"{peer}\"\nadmin_addr = \"{admin}\"\n"
        ));
        let config = self.dir.path().join(format!("cluster-{id}.toml"));
        std::fs::write(&config, text).expect("write the joining node's cluster file");
        let data = self.data_dir(id);
        std::fs::create_dir_all(&data).expect("node data dir");
        let server = Server::start_node_with(&config, id, &data, &["--join"]);
        self.nodes.push(Some(server));
        self.client_addrs.push(client.clone());
        self.admin_addrs.push(admin.clone());
        (id, client, peer, admin)
    }

    /// GET /cluster from the first live node that answers, as JSON text.
    pub fn status(&self) -> Option<String> {
        for (i, node) in self.nodes.iter().enumerate() {
            if node.is_some() {
                let (code, body) = http_get(&self.admin_addrs[i], "/cluster");
                if code == 200 {
                    return Some(body);
                }
            }
        }
        None
    }
}

fn field(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

/// A plain HTTP GET on the admin port: (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("admin port");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A minimal blocking client speaking the wire protocol directly, for tests
/// that need exact control over frames (pipelining, shutdown timing).
pub struct RawClient {
    stream: std::net::TcpStream,
    buf: bytes::BytesMut,
    next_id: u64,
}

impl RawClient {
    /// Connects and says hello.
    pub fn connect(addr: &str) -> RawClient {
        RawClient::connect_session(addr, 0)
    }

    /// Connects as client session `session` (0: none), as a client library
    /// reconnecting after a failure does.
    pub fn connect_session(addr: &str, session: u64) -> RawClient {
        use ckpt_proto::wire::{Frame, FrameKind, Hello, HelloReply, API_VERSION};
        let stream = std::net::TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut client = RawClient {
            stream,
            buf: bytes::BytesMut::new(),
            next_id: 1,
        };
        client.send_frame(
            Frame::new(
                FrameKind::Hello,
                0,
                &Hello {
                    version: API_VERSION,
                    client_name: "raw".into(),
                    session,
                },
            )
            .unwrap(),
        );
        let reply: HelloReply = client.read_frame().expect("hello reply").decode().unwrap();
        assert!(reply.error.is_none(), "{:?}", reply.error);
        client
    }

    pub fn send_frame(&mut self, frame: ckpt_proto::wire::Frame) {
        use std::io::Write;
        use tokio_util::codec::Encoder;
        let mut out = bytes::BytesMut::new();
        ckpt_proto::wire::FrameCodec::default()
            .encode(frame, &mut out)
            .unwrap();
        self.stream.write_all(&out).expect("send");
    }

    /// Sends a request without waiting; returns its id.
    pub fn send(&mut self, request: &ckpt_proto::wire::Request) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.send_frame(
            ckpt_proto::wire::Frame::new(ckpt_proto::wire::FrameKind::Request, id, request)
                .unwrap(),
        );
        id
    }

    /// The next frame, or None when the server closed.
    pub fn read_frame(&mut self) -> Option<ckpt_proto::wire::Frame> {
        use std::io::Read;
        use tokio_util::codec::Decoder;
        let mut codec = ckpt_proto::wire::FrameCodec::default();
        let mut chunk = [0u8; 65536];
        loop {
            if let Some(frame) = codec
                .decode(&mut self.buf)
                .expect("valid frames from the server")
            {
                return Some(frame);
            }
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Sends a request and waits for its response (skipping notifications).
    pub fn call(&mut self, request: &ckpt_proto::wire::Request) -> ckpt_proto::wire::Response {
        let id = self.send(request);
        self.answer(id)
    }

    /// Sends `request` as request number `id` (a retry reuses its number)
    /// and waits for its answer.
    pub fn call_as(
        &mut self,
        id: u64,
        request: &ckpt_proto::wire::Request,
    ) -> ckpt_proto::wire::Response {
        let frame = ckpt_proto::wire::Frame::new(ckpt_proto::wire::FrameKind::Request, id, request)
            .unwrap();
        self.send_frame(frame);
        self.next_id = self.next_id.max(id + 1);
        self.answer(id)
    }

    fn answer(&mut self, id: u64) -> ckpt_proto::wire::Response {
        loop {
            let frame = self.read_frame().expect("response");
            if frame.kind == ckpt_proto::wire::FrameKind::Response && frame.request_id == id {
                return frame.decode().expect("response body");
            }
        }
    }
}

/// Runs `ckpt-tool` with `args` and waits for it.
pub fn tool(args: &[&str]) -> std::process::Output {
    Command::new(bin("ckpt-tool"))
        .args(args)
        .output()
        .expect("ckpt-tool runs")
}

/// A finished command's stdout and stderr, for assertion messages.
pub fn text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A fault-injecting TCP proxy and a cluster whose peer links go through
/// proxies (partition tests).
pub mod proxy;
