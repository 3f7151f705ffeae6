//! Helpers of the `ops_*` tests: a `ckpt-server` started with any flags and
//! environment, whose log lines the test can wait for, and a one-request
//! HTTP client for the admin port.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a test waits for a condition before it fails: long enough for
/// a loaded 2-core machine.
pub const WAIT: Duration = Duration::from_secs(60);

/// A `ckpt-server` process and what it logged; killed on drop.
pub struct Process {
    pub child: Option<Child>,
    log: mpsc::Receiver<String>,
    pub lines: Vec<String>,
}

impl Process {
    /// Starts `ckpt-server` with `args` and `env` (added to the test's own
    /// environment), stderr captured.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Process {
        let mut command = Command::new(super::common::bin("ckpt-server"));
        command
            .args(args)
            .env("CKPT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("ckpt-server starts");
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
        Process {
            child: Some(child),
            log: rx,
            lines: Vec::new(),
        }
    }

    /// Waits for a logged line containing `text`; panics with the log if
    /// the process exits first or [`WAIT`] passes.
    pub fn wait_line(&mut self, text: &str) -> String {
        let deadline = Instant::now() + WAIT;
        if let Some(line) = self.lines.iter().find(|l| l.contains(text)) {
            return line.clone();
        }
        while Instant::now() < deadline {
            match self.log.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => {
                    self.lines.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!(
            "no log line with {text:?} (status {:?}):\n{}",
            self.child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten()),
            self.lines.join("\n")
        );
    }

    /// Waits until `count` logged lines contain `text`.
    pub fn wait_lines(&mut self, text: &str, count: usize) {
        let deadline = Instant::now() + WAIT;
        while self.lines.iter().filter(|l| l.contains(text)).count() < count {
            match self.log.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => self.lines.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            assert!(
                Instant::now() < deadline,
                "fewer than {count} log lines with {text:?}:\n{}",
                self.lines.join("\n")
            );
        }
        assert!(
            self.lines.iter().filter(|l| l.contains(text)).count() >= count,
            "the log ended with fewer than {count} lines with {text:?}:\n{}",
            self.lines.join("\n")
        );
    }

    /// Waits for the process to exit (at most [`WAIT`]); its status and
    /// everything it logged.
    pub fn wait_exit(&mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("ckpt-server did not exit:\n{}", self.lines.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        while let Ok(line) = self.log.recv_timeout(Duration::from_secs(5)) {
            self.lines.push(line);
        }
        (status, self.lines.join("\n"))
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().expect("running").id();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid as i32, signal) };
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The value of `key=` in a tracing line (`listen=127.0.0.1:1234`).
pub fn field(line: &str, key: &str) -> String {
    let start = line
        .find(key)
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        + key.len();
    line[start..]
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .trim_matches('"')
        .to_string()
}

/// `GET path` on `addr`: the status code and the body; `None` when the
/// connection fails.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Waits until `condition` holds, checking every 20 ms; panics naming
/// `what` after [`WAIT`].
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A file's text, or "" when it does not exist.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
