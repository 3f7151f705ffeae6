//! The shell commands of the README and docs/operations.md, run as written
//! against real servers (issue #12, acceptance 2), so that the docs cannot
//! drift from the behaviour.
//!
//! Every ```sh block of those files carries a marker on the line before
//! its fence, an HTML comment that does not show when the markdown is
//! rendered:
//!
//! ```text
//! <!-- docs-test: setup NAME; replace TEXT => REPLACEMENT; skip-line PREFIX (REASON) -->
//! <!-- docs-test: skip (REASON) -->
//! ```
//!
//! * `setup NAME` prepares the state the block talks about (the fixtures
//!   are [`setup`]'s arms: checkpoints that exist, a stopped node's data
//!   directory, a second server);
//! * `replace A => B` turns a placeholder of the docs (`/backup`,
//!   `node1:7400`) into a path or address of the test, usually an
//!   environment variable the test sets (`$WORK`, `$CKPT_ADDR`, `$NEW_ADDR`);
//! * `skip-line PREFIX (REASON)` leaves out the line starting with PREFIX;
//!   `skip (REASON)` the whole block.
//!
//! A ```text block whose marker says `transcript` (with the same
//! `setup` and `replace`) is a terminal session: each `$ ` line runs, and
//! what it prints (stderr and stdout) must match the lines after it up to
//! whitespace and the values of numbers; a shown `error: ` line means a
//! non-zero exit.
//!
//! A ```sh block without a marker fails the test, and so does a skip that
//! is not in [`SKIPPED`]: nothing is left out silently. Each remaining line
//! runs with `sh -c` in a temporary directory ($WORK) with the built
//! binaries first on PATH and CKPT_ADDR / CKPT_ADMIN naming the test's
//! server; it must exit 0, and a line whose comment says `# prints X` must
//! print exactly X.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{bin, text, tool, Cluster, Server};

/// Every block or line the docs skip, as (file, the first command of the
/// block or the skipped line): a new skip must be added here too.
const SKIPPED: &[(&str, &str)] = &[
    ("README.md", "make run"),
    ("README.md", "ckpt-server --config cluster.toml"),
    ("README.md", "ckpt-tool cluster remove-node"),
    ("README.md", "ckpt-tool cluster add-node"),
    ("README.md", "ckpt-server [--config FILE]"),
    ("docs/operations.md", "scp orders.ckd new-host:"),
];

/// One fenced shell block (or marked transcript) and its marker.
#[derive(Debug)]
struct Block {
    file: &'static str,
    /// 1-based line of the opening fence.
    line: usize,
    marker: Option<String>,
    /// A ```text block marked `transcript`: `$ ` lines and their output.
    transcript: bool,
    /// Shell blocks: the command lines (not comments), with line numbers.
    commands: Vec<(usize, String)>,
    /// Every line of the block, with line numbers.
    lines: Vec<(usize, String)>,
}

/// The ```sh (```bash, ```shell) blocks of `text`, and the ```text blocks
/// whose marker says `transcript`.
fn shell_blocks(file: &'static str, text: &str) -> Vec<Block> {
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let fence = lines[i].trim();
        if !fence.starts_with("```") {
            i += 1;
            continue;
        }
        let language = fence.trim_start_matches('`').trim();
        // The marker: an HTML comment ending on the line before the fence.
        let mut marker = None;
        if i > 0 && lines[i - 1].trim_end().ends_with("-->") {
            let mut start = i - 1;
            while !lines[start].contains("<!--") && start > 0 {
                start -= 1;
            }
            let comment = lines[start..i].join(" ");
            if let Some(body) = comment
                .split_once("<!-- docs-test:")
                .map(|(_, body)| body.trim_end().trim_end_matches("-->").trim().to_string())
            {
                marker = Some(body);
            }
        }
        let open = i;
        i += 1;
        let mut body = Vec::new();
        while i < lines.len() && !lines[i].trim_start().starts_with("```") {
            body.push((i + 1, lines[i].to_string()));
            i += 1;
        }
        // Past the closing fence.
        i += 1;
        let shell = matches!(language, "sh" | "bash" | "shell");
        let transcript = language == "text"
            && marker
                .as_deref()
                .is_some_and(|m| m.split(';').any(|c| c.trim() == "transcript"));
        if !shell && !transcript {
            continue;
        }
        let commands = body
            .iter()
            .map(|(n, l)| (*n, l.trim().to_string()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
            .collect();
        blocks.push(Block {
            file,
            line: open + 1,
            marker,
            transcript,
            commands,
            lines: body,
        });
    }
    blocks
}

/// Whether `actual` is `expected` up to runs of whitespace and the values
/// of numbers: a run of digits in `expected` stands for any run of digits
/// (sizes, pids, sequence numbers differ from run to run).
fn same_shape(expected: &str, actual: &str) -> bool {
    let squeeze = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let (expected, actual) = (squeeze(expected), squeeze(actual));
    let (mut e, mut a) = (expected.chars().peekable(), actual.chars().peekable());
    loop {
        match (e.peek().copied(), a.peek().copied()) {
            (None, None) => return true,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                while e.peek().is_some_and(char::is_ascii_digit) {
                    e.next();
                }
                while a.peek().is_some_and(char::is_ascii_digit) {
                    a.next();
                }
            }
            (Some(x), Some(y)) if x == y => {
                e.next();
                a.next();
            }
            _ => return false,
        }
    }
}

/// What a marker says.
#[derive(Debug, Default)]
struct Marker {
    skip: Option<String>,
    setup: Option<String>,
    replace: Vec<(String, String)>,
    skip_lines: Vec<(String, String)>,
}

/// `PREFIX (REASON)` → (PREFIX, REASON); the reason is required.
fn with_reason(clause: &str, what: &str) -> (String, String) {
    let (head, reason) = clause
        .rsplit_once('(')
        .unwrap_or_else(|| panic!("{what} without a (reason): {clause:?}"));
    let reason = reason.trim_end().trim_end_matches(')').trim();
    assert!(
        !reason.is_empty(),
        "{what} with an empty reason: {clause:?}"
    );
    (head.trim().to_string(), reason.to_string())
}

fn parse_marker(text: &str) -> Marker {
    let mut marker = Marker::default();
    for clause in text.split(';').map(str::trim).filter(|c| !c.is_empty()) {
        if let Some(rest) = clause.strip_prefix("skip-line ") {
            marker.skip_lines.push(with_reason(rest, "skip-line"));
        } else if clause == "skip" || clause.starts_with("skip ") {
            marker.skip = Some(with_reason(clause, "skip").1);
        } else if let Some(name) = clause.strip_prefix("setup ") {
            marker.setup = Some(name.trim().to_string());
        } else if let Some(rest) = clause.strip_prefix("replace ") {
            let (from, to) = rest
                .split_once(" => ")
                .unwrap_or_else(|| panic!("replace without ` => `: {clause:?}"));
            marker
                .replace
                .push((from.trim().to_string(), to.trim().to_string()));
        } else if clause != "run" && clause != "transcript" {
            panic!("unknown docs-test clause {clause:?}");
        }
    }
    marker
}

/// The test's world: servers, the working directory, the environment the
/// commands see.
struct World {
    work: tempfile::TempDir,
    server: Server,
    others: Vec<Server>,
    clusters: Vec<Cluster>,
    env: BTreeMap<String, String>,
}

impl World {
    fn new() -> World {
        let work = tempfile::tempdir().unwrap();
        let server = Server::start(&work.path().join("server-data"));
        let bin_dir = bin("ckpt-tool").parent().unwrap().to_path_buf();
        let mut env = BTreeMap::new();
        env.insert(
            "PATH".to_string(),
            format!(
                "{}:{}",
                bin_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        );
        env.insert("CKPT_ADDR".to_string(), server.addr.clone());
        env.insert("CKPT_ADMIN".to_string(), server.admin.clone());
        env.insert("WORK".to_string(), work.path().display().to_string());
        World {
            work,
            server,
            others: Vec::new(),
            clusters: Vec::new(),
            env,
        }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.work.path().join(relative)
    }

    /// ckpt-tool against the test's server; must succeed.
    fn tool(&self, args: &[&str]) -> String {
        let mut all = vec!["--addr", self.server.addr.as_str()];
        all.extend_from_slice(args);
        let output = tool(&all);
        assert!(output.status.success(), "{all:?}: {}", text(&output));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn exists(&self, name: &str) -> bool {
        tool(&["--addr", &self.server.addr, "stat", name])
            .status
            .success()
    }

    fn ensure(&self, name: &str) {
        if !self.exists(name) {
            self.tool(&["create", name, "--max-sections", "4"]);
            let data = self.path(&format!("{name}.data"));
            std::fs::write(&data, format!("{name} data")).unwrap();
            self.tool(&[
                "section-create",
                name,
                "s1",
                "--file",
                data.to_str().unwrap(),
            ]);
        }
    }
}

/// Prepares what a block's `setup NAME` promises.
fn setup(world: &mut World, name: &str) {
    match name {
        // The checkpoints the backup examples name exist; /backup is a
        // directory; a stopped node's data directory holds a checkpoint.
        "backup" => {
            world.ensure("orders");
            world.ensure("invoices");
            std::fs::create_dir_all(world.path("backup")).unwrap();
            let stopped = world.path("var/lib/ckpt");
            std::fs::create_dir_all(stopped.parent().unwrap()).unwrap();
            let mut node = Server::start(&stopped);
            let output = tool(&["--addr", &node.addr, "create", "on-the-stopped-node"]);
            assert!(output.status.success(), "{}", text(&output));
            assert!(node.terminate().success());
        }
        // /backup/orders.ckd holds orders, /backup/all.ckd every
        // checkpoint; the server then holds neither orders nor invoices.
        "restore" => {
            world.ensure("orders");
            world.ensure("invoices");
            std::fs::create_dir_all(world.path("backup")).unwrap();
            let orders = world.path("backup/orders.ckd");
            let all = world.path("backup/all.ckd");
            world.tool(&["dump", "orders", "-o", orders.to_str().unwrap()]);
            world.tool(&["dump", "--all", "-o", all.to_str().unwrap()]);
            world.tool(&["rm", "orders"]);
            world.tool(&["rm", "invoices"]);
            std::fs::create_dir_all(world.path("var/lib")).unwrap();
        }
        // orders exists on the test's server (the "old cluster"); a second
        // server is the "new cluster", at $NEW_ADDR.
        "move" => {
            world.ensure("orders");
            let new = Server::start(&world.path("new-cluster-data"));
            world.env.insert("NEW_ADDR".to_string(), new.addr.clone());
            world.others.push(new);
        }
        // A formed 3-node cluster; $CLUSTER_CONFIG is its file.
        "cluster" => {
            let cluster = Cluster::start(3, "");
            world.env.insert(
                "CLUSTER_CONFIG".to_string(),
                cluster.config.display().to_string(),
            );
            world.clusters.push(cluster);
        }
        // $WORK/wal-node: a stopped node's data directory whose log holds
        // orders' creation (seq 1), the creation of its section s1 (seq 2)
        // and one write to it (seq 3).
        "wal-node" => {
            let mut node = Server::start(&world.path("wal-node"));
            let data = world.path("wal-node.data");
            std::fs::write(&data, b"hello").unwrap();
            for args in [
                &["create", "orders", "--max-sections", "4"][..],
                &["section-create", "orders", "s1"],
                &["write", "orders", "s1", "--file", data.to_str().unwrap()],
            ] {
                let mut all = vec!["--addr", node.addr.as_str()];
                all.extend_from_slice(args);
                let output = tool(&all);
                assert!(output.status.success(), "{all:?}: {}", text(&output));
            }
            assert!(node.terminate().success());
        }
        // The README's first steps on a fresh server.
        "fresh" => {}
        // A checkpoint orders exists (created by ckpt-tool create, not by a
        // bench), with --max-sections 4 and the default section size.
        "orders" => world.ensure("orders"),
        // orders is the server's only checkpoint.
        "only-orders" => {
            let listed: serde_json::Value =
                serde_json::from_str(&world.tool(&["ls", "--json"])).unwrap();
            for checkpoint in listed.as_array().unwrap() {
                let name = checkpoint["name"].as_str().unwrap();
                if name != "orders" {
                    world.tool(&["rm", name]);
                }
            }
            world.ensure("orders");
        }
        other => panic!("unknown docs-test setup {other:?}"),
    }
}

/// Runs the blocks of `file` in order; returns what was skipped.
fn run_file(file: &'static str) -> Vec<(String, String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let markdown = std::fs::read_to_string(root.join(file)).unwrap();
    let blocks = shell_blocks(file, &markdown);
    assert!(!blocks.is_empty(), "no ```sh blocks in {file}");
    let mut world = World::new();
    let mut skipped = Vec::new();
    for block in &blocks {
        let Some(marker) = &block.marker else {
            panic!(
                "{}:{}: a ```sh block without a `<!-- docs-test: … -->` marker on the line \
                 before it: say how the test runs it (or skips it, and why)",
                block.file, block.line
            );
        };
        let marker = parse_marker(marker);
        let first = block
            .commands
            .first()
            .map(|(_, c)| c.clone())
            .unwrap_or_default();
        if let Some(reason) = &marker.skip {
            eprintln!("skipped {}:{}: `{first}`: {reason}", block.file, block.line);
            skipped.push((file.to_string(), first, reason.clone()));
            continue;
        }
        if let Some(name) = &marker.setup {
            setup(&mut world, name);
        }
        if block.transcript {
            run_transcript(&world, block, &marker);
            continue;
        }
        let mut used = vec![false; marker.skip_lines.len()];
        for (line_no, command) in &block.commands {
            if let Some(i) = marker
                .skip_lines
                .iter()
                .position(|(prefix, _)| command.starts_with(prefix.as_str()))
            {
                used[i] = true;
                let reason = &marker.skip_lines[i].1;
                eprintln!("skipped {file}:{line_no}: `{command}`: {reason}");
                skipped.push((
                    file.to_string(),
                    marker.skip_lines[i].0.clone(),
                    reason.clone(),
                ));
                continue;
            }
            let mut shell = command.clone();
            for (from, to) in &marker.replace {
                shell = shell.replace(from.as_str(), to.as_str());
            }
            let output = Command::new("sh")
                .arg("-c")
                .arg(&shell)
                .current_dir(world.work.path())
                .env_clear()
                .envs(&world.env)
                .env("HOME", world.work.path())
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{file}:{line_no}: `{command}` (run as `{shell}`) exited {:?}:\n{}\nserver log:\n{}",
                output.status.code(),
                text(&output),
                world.server.drain_log().join("\n")
            );
            if let Some((_, expected)) = command.split_once("# prints ") {
                assert_eq!(
                    String::from_utf8_lossy(&output.stdout).trim_end(),
                    expected.trim(),
                    "{file}:{line_no}: `{command}`"
                );
            }
            eprintln!("ran {file}:{line_no}: `{shell}`");
        }
        for (i, used) in used.iter().enumerate() {
            assert!(
                used,
                "{}:{}: skip-line {:?} matches no line",
                block.file, block.line, marker.skip_lines[i].0
            );
        }
    }
    skipped
}

/// Runs the `$ ` lines of a transcript (stderr and stdout together, as a
/// terminal shows them) and compares what they print with the lines that
/// follow them in the docs ([`same_shape`]). Replacements apply to both,
/// with the environment's values.
fn run_transcript(world: &World, block: &Block, marker: &Marker) {
    let expand = |text: &str| {
        let mut text = text.to_string();
        for (from, to) in &marker.replace {
            let mut to = to.clone();
            for (name, value) in &world.env {
                to = to.replace(&format!("${name}"), value);
            }
            text = text.replace(from.as_str(), &to);
        }
        text
    };
    let mut steps: Vec<(usize, String, Vec<String>)> = Vec::new();
    for (line_no, line) in &block.lines {
        if let Some(command) = line.trim_start().strip_prefix("$ ") {
            steps.push((*line_no, command.to_string(), Vec::new()));
        } else if let Some(step) = steps.last_mut() {
            step.2.push(line.clone());
        } else {
            panic!(
                "{}:{line_no}: transcript output before any `$ ` line",
                block.file
            );
        }
    }
    assert!(
        !steps.is_empty(),
        "{}:{}: a transcript without `$ ` lines",
        block.file,
        block.line
    );
    for (line_no, command, expected) in steps {
        let shell = expand(&command);
        let output = Command::new("sh")
            .arg("-c")
            .arg(format!("{shell} 2>&1"))
            .current_dir(world.work.path())
            .env_clear()
            .envs(&world.env)
            .env("HOME", world.work.path())
            .output()
            .unwrap();
        let actual = String::from_utf8_lossy(&output.stdout);
        let actual: Vec<&str> = actual.lines().collect();
        let expected: Vec<String> = expected.iter().map(|l| expand(l)).collect();
        let matches = actual.len() == expected.len()
            && expected.iter().zip(&actual).all(|(e, a)| same_shape(e, a));
        assert!(
            matches,
            "{}:{line_no}: `{command}` (run as `{shell}`) printed\n{}\nwhere the docs show\n{}",
            block.file,
            actual.join("\n"),
            expected.join("\n")
        );
        let failed = expected
            .iter()
            .any(|l| l.trim_start().starts_with("error: "));
        assert_eq!(
            !output.status.success(),
            failed,
            "{}:{line_no}: `{command}` exited {:?}",
            block.file,
            output.status.code()
        );
        eprintln!("ran {}:{line_no}: `{shell}` (transcript)", block.file);
    }
}

fn check_skips(file: &str, skipped: &[(String, String, String)]) {
    let listed: Vec<&str> = SKIPPED
        .iter()
        .filter(|(f, _)| *f == file)
        .map(|(_, c)| *c)
        .collect();
    for (_, command, reason) in skipped {
        assert!(
            listed.iter().any(|l| command.starts_with(l)),
            "{file}: `{command}` is skipped ({reason}) but not listed in SKIPPED"
        );
    }
    for listed in &listed {
        assert!(
            skipped.iter().any(|(_, c, _)| c.starts_with(listed)),
            "{file}: SKIPPED lists `{listed}`, which the docs no longer skip"
        );
    }
}

#[test]
fn readme_commands_run_as_written() {
    let skipped = run_file("README.md");
    check_skips("README.md", &skipped);
}

#[test]
fn operations_commands_run_as_written() {
    let skipped = run_file("docs/operations.md");
    check_skips("docs/operations.md", &skipped);
}

#[test]
fn blocks_and_markers_are_found() {
    let text = "a\n<!-- docs-test: setup x; replace /a => $B;\n skip-line scp (no host) -->\n```sh\n# c\nls /a\nscp f h:\n```\n```text\n$ no\n```\n```sh\necho\n```\n";
    let blocks = shell_blocks("t.md", text);
    assert_eq!(blocks.len(), 2);
    assert_eq!(blocks[0].line, 4);
    assert_eq!(
        blocks[0].commands,
        vec![(6, "ls /a".to_string()), (7, "scp f h:".to_string())]
    );
    let marker = parse_marker(blocks[0].marker.as_deref().unwrap());
    assert_eq!(marker.setup.as_deref(), Some("x"));
    assert_eq!(marker.replace, vec![("/a".to_string(), "$B".to_string())]);
    assert_eq!(
        marker.skip_lines,
        vec![("scp".to_string(), "no host".to_string())]
    );
    assert!(blocks[1].marker.is_none());
    assert!(same_shape("orders  2/4   5000  WR_X", "orders 0/4 12 WR_X"));
    assert!(same_shape("(pid 4242)", "(pid 7)"));
    assert!(!same_shape("2/4", "2-4"));
    assert!(!same_shape("pid 4242", "pid x"));
    assert!(!same_shape("a", "a b"));
    let skip = parse_marker("skip (make run serves until Ctrl-C)");
    assert_eq!(skip.skip.as_deref(), Some("make run serves until Ctrl-C"));
}
