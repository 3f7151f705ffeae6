//! ckpt-tool's command-line conventions against a real server (issue #12
//! point 8): the default section without an ID, durations with units,
//! `restore -` / `verify -` from stdin, `--json` on every command and for
//! errors, distinct exit codes, "not a ckpt server", `--addr HOST` without
//! a port, a warning for replication flags on a single node, and which
//! attributes differ when a checkpoint exists.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::{bin, text, tool, Server};

fn ok(args: &[&str]) -> String {
    let output = tool(args);
    assert!(output.status.success(), "{args:?}: {}", text(&output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs ckpt-tool with `input` on stdin.
fn tool_with_stdin(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(bin("ckpt-tool"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ckpt-tool runs");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let output = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    output
}

fn code(output: &Output) -> Option<i32> {
    output.status.code()
}

fn stdout_json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(output)))
}

#[test]
fn the_default_section_needs_no_id() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let addr = server.addr.as_str();
    ok(&["--addr", addr, "create", "single"]);
    let input = dir.path().join("in");
    std::fs::write(&input, b"hello").unwrap();
    ok(&[
        "--addr",
        addr,
        "write",
        "single",
        "--file",
        input.to_str().unwrap(),
    ]);
    assert_eq!(ok(&["--addr", addr, "read", "single"]), "hello");
    // The old spelling still works.
    assert_eq!(
        ok(&["--addr", addr, "read", "single", "--default-section"]),
        "hello"
    );

    // A checkpoint of several sections: the ID is required, said clearly,
    // as a usage error.
    ok(&["--addr", addr, "create", "multi", "--max-sections", "3"]);
    let output = tool(&["--addr", addr, "read", "multi"]);
    assert_eq!(code(&output), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains("--max-sections 1") && text(&output).contains("section ID"),
        "{}",
        text(&output)
    );
}

#[test]
fn durations_take_units_and_print_human_readable() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let addr = server.addr.as_str();
    ok(&[
        "--addr",
        addr,
        "create",
        "r",
        "--max-sections",
        "3",
        "--retention",
        "5m",
    ]);
    let stat = ok(&["--addr", addr, "stat", "r"]);
    assert!(stat.contains("retention: 5m\n"), "{stat}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["--addr", addr, "stat", "r", "--json"])).unwrap();
    assert_eq!(json["retention_duration_ns"], 300_000_000_000u64);

    // The old flag (nanoseconds) still works for scripts.
    ok(&[
        "--addr",
        addr,
        "create",
        "r2",
        "--retention-ns",
        "90000000000",
    ]);
    assert!(ok(&["--addr", addr, "stat", "r2"]).contains("retention: 1m30s\n"));
    ok(&["--addr", addr, "create", "r3", "--retention", "forever"]);
    assert!(ok(&["--addr", addr, "stat", "r3"]).contains("retention: forever\n"));

    ok(&[
        "--addr",
        addr,
        "section-create",
        "r",
        "s",
        "--expires-in",
        "1h",
    ]);
    ok(&[
        "--addr",
        addr,
        "section-create",
        "r",
        "t",
        "--expires-in-s",
        "60",
    ]);
    ok(&["--addr", addr, "section-create", "r", "u"]);
    let sections = ok(&["--addr", addr, "sections", "r"]);
    let line = |id: &str| {
        sections
            .lines()
            .find(|l| l.starts_with(&format!("{id}\t")))
            .unwrap_or_else(|| panic!("{id} in {sections}"))
            .to_string()
    };
    // An absolute time (RFC 3339, UTC) and how far away it is.
    assert!(
        line("s").contains("Z (in 59m") || line("s").contains("Z (in 1h"),
        "{sections}"
    );
    assert!(line("t").contains("Z (in "), "{sections}");
    assert!(line("u").contains("\tforever\t"), "{sections}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["--addr", addr, "sections", "r", "--json"])).unwrap();
    let s = json
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "s")
        .unwrap();
    assert!(s["expiration_time"].as_i64().unwrap() > 1_000_000_000_000_000_000);

    for bad in ["5 parsecs", "-1s", "1y", ""] {
        let output = tool(&["--addr", addr, "create", "bad", "--retention", bad]);
        assert_eq!(code(&output), Some(2), "{bad:?}: {}", text(&output));
    }
}

#[test]
fn restore_and_verify_read_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let addr = server.addr.as_str();
    ok(&["--addr", addr, "create", "src", "--max-sections", "2"]);
    let input = dir.path().join("in");
    std::fs::write(&input, b"payload").unwrap();
    ok(&[
        "--addr",
        addr,
        "section-create",
        "src",
        "a",
        "--file",
        input.to_str().unwrap(),
    ]);
    let dump = dir.path().join("src.ckd");
    ok(&["--addr", addr, "dump", "src", "-o", dump.to_str().unwrap()]);
    let bytes = std::fs::read(&dump).unwrap();

    let output = tool_with_stdin(&["verify", "-"], &bytes);
    assert_eq!(code(&output), Some(0), "{}", text(&output));
    assert!(
        text(&output).contains("ok: 1 checkpoints"),
        "{}",
        text(&output)
    );
    let mut damaged = bytes.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    let output = tool_with_stdin(&["verify", "-"], &damaged);
    assert_eq!(code(&output), Some(1), "{}", text(&output));

    let output = tool_with_stdin(
        &["--addr", addr, "restore", "-", "--rename", "src=copy"],
        &bytes,
    );
    assert_eq!(code(&output), Some(0), "{}", text(&output));
    assert_eq!(ok(&["--addr", addr, "read", "copy", "a"]), "payload");
}

/// The commands `ckpt-tool --help` lists.
fn commands() -> Vec<String> {
    let help = ok(&["--help"]);
    let mut commands = Vec::new();
    let mut in_commands = false;
    for line in help.lines() {
        if line.starts_with("Commands:") {
            in_commands = true;
            continue;
        }
        if in_commands {
            if line.trim().is_empty() {
                break;
            }
            if let Some(name) = line
                .strip_prefix("  ")
                .and_then(|l| l.split_whitespace().next())
            {
                if !line.starts_with("   ") && name != "help" {
                    commands.push(name.to_string());
                }
            }
        }
    }
    assert!(commands.len() > 15, "{help}");
    commands
}

#[test]
fn every_command_takes_json_and_errors_are_json_too() {
    for command in commands() {
        let mut path = vec![command.clone()];
        if command == "cluster" {
            for sub in ["status", "verify", "add-node", "remove-node"] {
                let help = ok(&["cluster", sub, "--help"]);
                assert!(help.contains("--json"), "cluster {sub}: {help}");
            }
            continue;
        }
        path.push("--help".into());
        let args: Vec<&str> = path.iter().map(String::as_str).collect();
        let help = ok(&args);
        assert!(help.contains("--json"), "{command}: {help}");
    }

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let addr = server.addr.as_str();
    // Not found: exit 3, the error as JSON on stdout.
    let output = tool(&["--addr", addr, "stat", "nope", "--json"]);
    assert_eq!(code(&output), Some(3), "{}", text(&output));
    let json = stdout_json(&output);
    assert_eq!(json["error"]["name"], "CL_ERR_NOT_EXIST", "{json}");
    assert_eq!(json["error"]["code"], 0x04, "{json}");
    assert!(json["error"]["message"].as_str().unwrap().contains("nope"));
    let output = tool(&["--addr", addr, "rm", "nope", "--json"]);
    assert_eq!(code(&output), Some(3), "{}", text(&output));
    assert_eq!(stdout_json(&output)["error"]["name"], "CL_ERR_NOT_EXIST");
    // A usage error with --json: JSON too, exit 2.
    let output = tool(&["--addr", addr, "ls", "--bogus", "--json"]);
    assert_eq!(code(&output), Some(2), "{}", text(&output));
    let json = stdout_json(&output);
    assert_eq!(json["error"]["name"], "CL_ERR_INVALID_PARAMETER", "{json}");
    assert!(json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--bogus"));
    // Commands without output of their own say what they did.
    let json = stdout_json(&tool(&["--addr", addr, "create", "j", "--json"]));
    assert_eq!(
        (json["name"].as_str(), json["created"].as_bool()),
        (Some("j"), Some(true))
    );
    let input = dir.path().join("in");
    std::fs::write(&input, b"xyz").unwrap();
    let json = stdout_json(&tool(&[
        "--addr",
        addr,
        "write",
        "j",
        "--file",
        input.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(json["bytes"], 3, "{json}");
    let json = stdout_json(&tool(&["--addr", addr, "read", "j", "--json"]));
    assert_eq!(json["data"], "xyz", "{json}");
    let json = stdout_json(&tool(&["--addr", addr, "rm", "j", "--json"]));
    assert_eq!(json["removed"], "j", "{json}");
}

#[test]
fn exit_codes_are_distinct_and_documented() {
    let help = ok(&["--help"]);
    for expected in [
        "  0  success",
        "  1  failure",
        "  2  usage",
        "  3  not found",
        "  4  server unreachable",
    ] {
        assert!(help.contains(expected), "{expected:?} in {help}");
    }
    assert!(help.contains("Exit status"), "{help}");

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let addr = server.addr.as_str();
    // usage
    assert_eq!(code(&tool(&["--addr", addr, "ls", "--bogus"])), Some(2));
    // not found
    assert_eq!(code(&tool(&["--addr", addr, "stat", "nope"])), Some(3));
    assert_eq!(code(&tool(&["--addr", addr, "rm", "nope"])), Some(3));
    // other failure: a checkpoint that exists with other attributes
    ok(&["--addr", addr, "create", "x", "--max-sections", "2"]);
    let output = tool(&["--addr", addr, "create", "x", "--max-sections", "3"]);
    assert_eq!(code(&output), Some(1), "{}", text(&output));
    // unreachable: nothing listens
    let dead = format!("127.0.0.1:{}", common::free_port());
    let output = tool(&["--addr", &dead, "ls"]);
    assert_eq!(code(&output), Some(4), "{}", text(&output));
    let output = tool(&["status", "--admin", &dead]);
    assert_eq!(code(&output), Some(4), "{}", text(&output));
}

/// A reader that went away (`ckpt-tool ... --json | head -c0`, a script
/// that failed) is not a crash: the error still goes to stderr, with the
/// command's exit status, and nothing panics.
#[test]
fn a_closed_stdout_is_an_error_not_a_panic() {
    let dead = format!("127.0.0.1:{}", common::free_port());
    for args in [
        vec!["--addr", dead.as_str(), "ls", "--json"],
        vec!["--addr", dead.as_str(), "ls", "--bogus", "--json"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let output = Command::new(bin("ckpt-tool"))
            .args(&args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(
            matches!(code(&output), Some(2 | 4)),
            "{args:?}: {:?} {stderr}",
            output.status
        );
    }
}

#[test]
fn an_http_port_is_named_as_not_a_ckpt_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let output = tool(&["--addr", &server.admin, "ls"]);
    assert_eq!(code(&output), Some(4), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("is not a ckpt server (got HTTP)") && stderr.contains(&server.admin),
        "{stderr}"
    );
    assert!(stderr.contains("admin port"), "{stderr}");
    // The bench's own clients say the same.
    let output = tool(&["--addr", &server.admin, "bench", "--duration", "1s"]);
    assert_eq!(code(&output), Some(4), "{}", text(&output));
    assert!(
        text(&output).contains("is not a ckpt server (got HTTP)"),
        "{}",
        text(&output)
    );
}

#[test]
fn an_address_without_a_port_gets_the_default_port() {
    // Whatever runs on this machine's port 7400, the tool must have tried
    // that port: it either worked or the error names it.
    let output = tool(&["--addr", "127.0.0.1", "ls"]);
    assert!(
        output.status.success() || text(&output).contains("127.0.0.1:7400"),
        "{}",
        text(&output)
    );
    assert!(
        !text(&output).contains("invalid socket address"),
        "{}",
        text(&output)
    );
    let output = tool(&["status", "--admin", "127.0.0.1"]);
    assert!(
        output.status.success() || text(&output).contains("127.0.0.1:7401"),
        "{}",
        text(&output)
    );

    // A real server on a port given with the host works as before, and a
    // bad port is a usage error.
    let output = tool(&["--addr", "127.0.0.1:notaport", "ls"]);
    assert_eq!(code(&output), Some(2), "{}", text(&output));
}

#[test]
fn replication_flags_on_a_single_node_warn() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let addr = server.addr.as_str();
    let output = tool(&["--addr", addr, "create", "safe", "--all-safe"]);
    assert!(output.status.success(), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("warning:")
            && stderr.contains("--all-safe")
            && stderr.contains("1 replica"),
        "{stderr}"
    );
    let output = tool(&["--addr", addr, "create", "plain"]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        !String::from_utf8_lossy(&output.stderr).contains("warning"),
        "{}",
        text(&output)
    );
}

#[test]
fn exists_with_different_attributes_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let addr = server.addr.as_str();
    ok(&["--addr", addr, "create", "x", "--max-sections", "2"]);
    // Same attributes: fine.
    assert!(ok(&["--addr", addr, "create", "x", "--max-sections", "2"]).contains("exists"));
    let output = tool(&[
        "--addr",
        addr,
        "create",
        "x",
        "--max-sections",
        "3",
        "--mode",
        "active-weak",
    ]);
    assert_eq!(code(&output), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("CL_ERR_ALREADY_EXIST"), "{stderr}");
    assert!(
        stderr.contains("max-sections 2 (asked 3)")
            && stderr.contains("mode active (asked active-weak)"),
        "{stderr}"
    );
    // Attributes asked for that match are not named.
    assert!(!stderr.contains("max-section-size"), "{stderr}");
}
