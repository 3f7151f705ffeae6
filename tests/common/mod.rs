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
        let mut child = Command::new(bin("ckpt-server"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(extra)
            .env("CKPT_LOG", "info")
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
                    session: 0,
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
