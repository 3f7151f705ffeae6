//! The C library (issue #10): C programs compiled with `cc` against
//! `capi/include` and `libckpt.so`, run against real `ckpt-server`
//! processes.
//!
//! - `capi/tests/c/cl_api.c` and `sa_api.c` call every function of
//!   `clCkptApi.h` and `saCkpt.h` with valid and invalid arguments, driving
//!   the callbacks through `poll()` on the selection object (acceptance 1);
//!   `timeout.c` checks timeouts against a server behind a slow proxy.
//! - `hot_standby.c` and `sa_sample.c`, the sample applications, are built
//!   with `pkg-config` against a `make install`ed prefix (acceptance 2).
//! - The exported symbols are the list in `docs/c-api.md`; the headers
//!   compile as strict C99 and C++17 (acceptance 3).
//! - The error tables of `docs/c-api.md` agree with the headers and with
//!   `ckpt_proto::ErrorCode`, in both directions (acceptance 4).
//!
//! The library is built by `cargo build --release -p ckpt-capi` into this
//! test binary's own target directory (a no-op when it is up to date).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ckpt_proto::ErrorCode;
use common::proxy::Proxy;
use common::{Cluster, Server};

/// The workspace root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// target/release, where this test binary's deps/ directory is.
fn release_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/release")
        .to_path_buf()
}

/// Builds libckpt.so and libckpt.a once per test process; returns
/// target/release.
fn library() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let release = release_dir();
        let target = release.parent().expect("target dir").to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "-p", "ckpt-capi"])
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(root())
            .status()
            .expect("cargo runs");
        assert!(status.success(), "cargo build -p ckpt-capi failed");
        assert!(release.join("libckpt.so").exists());
        release
    })
}

/// A directory holding libckpt.so under its soname too (libckpt.so.0, what
/// programs linked against it load), for linking the test programs.
fn link_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = library().join("capi-test-lib");
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["libckpt.so", "libckpt.so.0"] {
            let link = dir.join(name);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(library().join("libckpt.so"), &link).unwrap();
        }
        dir
    })
}

fn run(command: &mut Command) -> Output {
    let output = command.output().expect("command runs");
    assert!(
        output.status.success(),
        "{command:?} failed with {}:\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Compiles `capi/tests/c/<name>.c` against the headers and libckpt.so in
/// the target directory.
fn compile(name: &str, dir: &Path) -> PathBuf {
    let lib = link_dir();
    let out = dir.join(name);
    run(Command::new("cc")
        .args([
            "-std=gnu11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pthread",
            "-g",
        ])
        .arg("-I")
        .arg(root().join("capi/include"))
        .arg(root().join("capi/tests/c").join(format!("{name}.c")))
        .arg("-o")
        .arg(&out)
        .arg("-L")
        .arg(lib)
        .arg("-lckpt")
        .arg(format!("-Wl,-rpath,{}", lib.display())));
    out
}

/// Runs a test program that prints "PASS" at its end.
fn expect_pass(program: &Path, servers: &str, args: &[&str]) {
    let output = run(Command::new(program)
        .args(args)
        .env("CKPT_SERVERS", servers));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.trim_end().ends_with("PASS"),
        "{} did not reach its end:\n{stdout}",
        program.display()
    );
}

#[test]
fn openclovis_api_every_function_with_valid_and_invalid_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let program = compile("cl_api", dir.path());
    expect_pass(&program, &server.addr, &[]);
}

#[test]
fn sa_forum_api_every_function_with_valid_and_invalid_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let program = compile("sa_api", dir.path());
    expect_pass(&program, &server.addr, &[]);
}

#[test]
fn timeouts_expire_with_timeout_and_no_limit_waits() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let slow = Proxy::start(server.addr.parse().unwrap());
    let delay_ms = 600;
    slow.delay(delay_ms);
    let program = compile("timeout", dir.path());
    expect_pass(&program, &slow.addr.to_string(), &[&delay_ms.to_string()]);
}

#[test]
fn a_dead_node_in_ckpt_servers_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let dead = format!("127.0.0.1:{}", common::free_port());
    let program = compile("sa_api", dir.path());
    expect_pass(&program, &format!("{dead},{}", server.addr), &[]);
}

#[test]
fn the_openclovis_program_is_clean_under_valgrind() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let program = compile("cl_api", dir.path());
    let output = run(Command::new("valgrind")
        .args([
            "--error-exitcode=99",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite,possible",
        ])
        .arg(&program)
        .env("CKPT_SERVERS", &server.addr));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("ERROR SUMMARY: 0 errors"),
        "valgrind found errors:\n{stderr}"
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("PASS"));
}

#[test]
fn headers_compile_as_strict_c99_and_cpp17() {
    let dir = tempfile::tempdir().unwrap();
    let headers = [
        "clCommon.h",
        "clCommonErrors.h",
        "clHeapApi.h",
        "clCkptErrors.h",
        "clCkptApi.h",
        "saAis.h",
        "saCkpt.h",
    ];
    // Each header on its own (it includes what it needs), then all together,
    // with the macros applications use.
    let mut sources: Vec<(String, String)> = headers
        .iter()
        .map(|h| {
            (
                h.replace('.', "_"),
                format!("#include <{h}>\nint main(void) {{ return 0; }}\n"),
            )
        })
        .collect();
    let mut all: String = headers
        .iter()
        .map(|h| format!("#include <{h}>\n"))
        .collect();
    all.push_str(
        "int main(void) {\n\
         ClRcT rc = CL_RC(CL_CID_CKPT, CL_CKPT_ERR_NO_SECTIONS);\n\
         ClCkptSectionIdT id = CL_CKPT_DEFAULT_SECTION_ID;\n\
         SaCkptSectionIdT sa = SA_CKPT_GENERATED_SECTION_ID;\n\
         ClTimeT end = (ClTimeT)CL_TIME_END;\n\
         ClDispatchFlagsT flags[3] = {CL_DISPATCH_ONE, CL_DISPATCH_ALL, CL_DISPATCH_BLOCKING};\n\
         (void)id; (void)sa; (void)end; (void)flags;\n\
         return CL_GET_ERROR_CODE(rc) == CL_CKPT_ERR_NO_SECTIONS && rc != CL_OK ? 0 : 1;\n\
         }\n",
    );
    sources.push(("all".into(), all));
    for (name, source) in sources {
        let c = dir.path().join(format!("{name}.c"));
        let cpp = dir.path().join(format!("{name}.cpp"));
        std::fs::write(&c, &source).unwrap();
        std::fs::write(&cpp, &source).unwrap();
        let include = root().join("capi/include");
        run(Command::new("cc")
            .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-I"])
            .arg(&include)
            .arg(&c)
            .arg("-o")
            .arg(dir.path().join(format!("{name}-c"))));
        run(Command::new("c++")
            .args([
                "-std=c++17",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-pedantic",
                "-I",
            ])
            .arg(&include)
            .arg(&cpp)
            .arg("-o")
            .arg(dir.path().join(format!("{name}-cpp"))));
    }
    let all = run(&mut Command::new(dir.path().join("all-c")));
    assert!(all.status.success());
}

/// The lines of the first fenced block after `heading` in docs/c-api.md.
fn doc_block(heading: &str) -> Vec<String> {
    let text = std::fs::read_to_string(root().join("docs/c-api.md")).unwrap();
    let after = text
        .split_once(heading)
        .unwrap_or_else(|| panic!("docs/c-api.md has no {heading:?}"))
        .1;
    let block = after.split("```").nth(1).expect("a fenced block");
    block
        .lines()
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The rows of the first table after `heading` in docs/c-api.md, cells trimmed
/// and backticks removed.
fn doc_table(heading: &str) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(root().join("docs/c-api.md")).unwrap();
    let after = text
        .split_once(heading)
        .unwrap_or_else(|| panic!("docs/c-api.md has no {heading:?}"))
        .1;
    after
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|cell| cell.trim().replace('`', ""))
                .collect()
        })
        .collect()
}

#[test]
fn libckpt_exports_exactly_the_documented_symbols() {
    let lib = library().join("libckpt.so");
    let output = run(Command::new("nm").args(["-D", "--defined-only"]).arg(&lib));
    let exported: BTreeSet<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_string))
        .collect();
    let documented: BTreeSet<String> = doc_block("## Exported symbols").into_iter().collect();
    assert_eq!(
        documented.len(),
        23 + 24 + 4,
        "23 clCkpt*, 24 saCkpt*, 4 clHeap*"
    );
    assert_eq!(exported, documented);
    // Every documented function is declared by the headers.
    let headers: String = ["clCkptApi.h", "clHeapApi.h", "saCkpt.h"]
        .iter()
        .map(|h| std::fs::read_to_string(root().join("capi/include").join(h)).unwrap())
        .collect();
    for symbol in &documented {
        assert!(
            headers.contains(&format!("{symbol}(")),
            "{symbol} is not declared"
        );
    }
}

/// Prints the value of every macro or enumerator `names` lists, compiled
/// against the headers: `NAME VALUE` per line.
fn header_values(names: &[String], dir: &Path) -> BTreeMap<String, u64> {
    let mut source = String::from(
        "#include <stdio.h>\n#include <clCkptApi.h>\n#include <saCkpt.h>\nint main(void) {\n",
    );
    for name in names {
        source.push_str(&format!(
            "    printf(\"%s %llu\\n\", \"{name}\", (unsigned long long)({name}));\n"
        ));
    }
    source.push_str("    return 0;\n}\n");
    let c = dir.join("values.c");
    std::fs::write(&c, source).unwrap();
    let program = dir.join("values");
    run(Command::new("cc")
        .arg("-I")
        .arg(root().join("capi/include"))
        .arg(&c)
        .arg("-o")
        .arg(&program));
    let output = run(&mut Command::new(&program));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| {
            let (name, value) = l.split_once(' ').unwrap();
            (name.to_string(), value.parse().unwrap())
        })
        .collect()
}

fn parse_number(text: &str) -> u64 {
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).unwrap(),
        None => text.parse().unwrap(),
    }
}

#[test]
fn the_error_tables_agree_with_the_headers_and_the_codes_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    // ErrorCode -> ClRcT -> SaAisErrorT.
    let forward = doc_table("### ckpt ErrorCode → ClRcT → SaAisErrorT");
    let mut names = Vec::new();
    for row in &forward {
        names.push(row[1].clone());
        names.push(row[3].clone());
    }
    let values = header_values(&names, dir.path());
    let mut seen = BTreeSet::new();
    for row in &forward {
        let [variant, cl, rc, sa, sa_value] = &row[..] else {
            panic!("a row of 5 cells: {row:?}")
        };
        let rc = parse_number(rc);
        let code = ErrorCode::from_code(rc as u32).unwrap_or_else(|| panic!("{rc:#x}"));
        assert_eq!(format!("{code:?}"), *variant, "row {row:?}");
        assert_eq!(code.rc() as u64, rc, "row {row:?}");
        assert_eq!(code.cl_name(), cl, "row {row:?}");
        assert_eq!(code.sa_ais_name(), sa, "row {row:?}");
        // The headers say the same: CL_RC(CL_CID_CKPT, macro) is the return
        // code, the enumerator has the value.
        assert_eq!(values[cl] | 0x16_0000, rc, "{cl} in the headers");
        assert_eq!(values[sa], parse_number(sa_value), "{sa} in saAis.h");
        assert!(seen.insert(code.code()), "{code:?} twice");
    }
    // Every code is in the table.
    assert_eq!(seen.len(), ErrorCode::ALL.len());

    // SaAisErrorT -> the codes that become it: exactly the forward table's
    // rows grouped by SA code, and every SA code the library returns.
    let reverse = doc_table("### SaAisErrorT → ClRcT");
    let mut grouped: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for &code in ErrorCode::ALL {
        grouped
            .entry(code.sa_ais_name().to_string())
            .or_default()
            .insert(code.cl_name().to_string());
    }
    let mut listed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for row in &reverse {
        let [sa, sa_value, codes] = &row[..] else {
            panic!("a row of 3 cells: {row:?}")
        };
        assert_eq!(values[sa], parse_number(sa_value), "{sa} in saAis.h");
        let codes: BTreeSet<String> = codes.split(", ").map(str::to_string).collect();
        assert!(listed.insert(sa.clone(), codes).is_none(), "{sa} twice");
    }
    assert_eq!(listed, grouped);
}

/// The lines a child prints, as they come.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Receives lines until `done` holds for one, collecting every line.
fn wait_line(
    rx: &mpsc::Receiver<String>,
    seen: &mut Vec<String>,
    what: &str,
    done: impl Fn(&str) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                let finished = done(&line);
                seen.push(line);
                if finished {
                    return;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    panic!(
        "timed out waiting for {what}; last lines: {:?}",
        &seen[seen.len().saturating_sub(5)..]
    );
}

/// Kills a child when dropped (a failing test leaves no process behind).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn acks(lines: &[String]) -> BTreeSet<u64> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("ack "))
        .map(|n| n.parse().unwrap())
        .collect()
}

/// The hot-standby scenario: the active writes, the standby follows through
/// ImmediateConsumption callbacks, the active is SIGKILLed, the standby
/// takes over and holds every acknowledged update. `disturb` runs while
/// both follow; the active must then acknowledge `acks_after` more updates
/// before it is killed.
fn hot_standby_pair(
    program: &Path,
    servers: &str,
    env: &[(&str, String)],
    disturb: impl FnOnce(),
    acks_after: usize,
) {
    let name = format!("hot-standby-{}", std::process::id());
    let spawn = |mode: &str| {
        let mut command = Command::new(program);
        command
            .args([mode, &name])
            .env("CKPT_SERVERS", servers)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (key, value) in env {
            command.env(key, value);
        }
        command.spawn().expect("hot_standby starts")
    };
    let mut active = Killed(spawn("active"));
    let active_lines = lines_of(&mut active.0);
    let mut written = Vec::new();
    wait_line(&active_lines, &mut written, "the first ack", |l| {
        l == "ack 1"
    });
    let mut standby = Killed(spawn("standby"));
    let standby_lines = lines_of(&mut standby.0);
    let mut followed = Vec::new();
    wait_line(&standby_lines, &mut followed, "the standby", |l| {
        l == "standby ready"
    });
    let ready_at = acks(&written).len();
    let acked_at_least = |n: usize| {
        move |l: &str| {
            l.strip_prefix("ack ")
                .and_then(|k| k.parse::<usize>().ok())
                .is_some_and(|k| k >= n)
        }
    };
    wait_line(
        &active_lines,
        &mut written,
        "acks while the standby follows",
        acked_at_least(ready_at + 200),
    );
    disturb();
    let disturbed_at = acks(&written).len();
    wait_line(
        &active_lines,
        &mut written,
        "acks after the disturbance",
        acked_at_least(disturbed_at + acks_after),
    );
    // The active dies mid-stream; every update it printed was acknowledged.
    active.0.kill().unwrap();
    active.0.wait().unwrap();
    while let Ok(line) = active_lines.recv_timeout(Duration::from_secs(5)) {
        written.push(line);
    }
    let acknowledged = acks(&written);
    // Standard input ends: the standby takes over.
    drop(standby.0.stdin.take());
    wait_line(&standby_lines, &mut followed, "the takeover", |l| {
        l.starts_with("active now")
    });
    let status = standby.0.wait().unwrap();
    assert!(status.success(), "the standby failed: {followed:?}");
    let have: BTreeSet<u64> = followed
        .iter()
        .find_map(|l| l.strip_prefix("have"))
        .expect("a have line")
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    let missing: Vec<&u64> = acknowledged.difference(&have).collect();
    assert!(
        missing.is_empty(),
        "acknowledged updates missing after the takeover: {missing:?}"
    );
    let notified = followed
        .iter()
        .find_map(|l| l.strip_prefix("notified "))
        .expect("a notified line");
    let (count, max) = notified.split_once(" max ").unwrap();
    let (count, max): (usize, usize) = (count.parse().unwrap(), max.parse().unwrap());
    // The callbacks ran, through poll and dispatch, for updates written
    // after the standby registered and after the disturbance. (Not for
    // every update: the standby counts what reached it before it took over.)
    assert!(count > 0, "no notifications");
    assert!(
        max > ready_at.max(disturbed_at),
        "notifications stopped at update {max} ({count} in all); the standby was ready at {ready_at}, the disturbance at {disturbed_at}"
    );
    let wrote = format!("active now, wrote {}", have.iter().max().unwrap() + 1);
    assert!(followed.contains(&wrote), "{followed:?}");
    assert!(have.iter().max() >= acknowledged.iter().max());
}

#[test]
fn sample_applications_build_with_pkg_config_against_an_installed_prefix() {
    library();
    // The prefix is staged beside the build, not in /tmp: the build's volume
    // is known to have room for binaries, and a CI machine's /tmp did not
    // (an install there failed with ENOSPC).
    let target = release_dir().parent().unwrap().to_path_buf();
    let dir = tempfile::Builder::new()
        .prefix("capi-install-")
        .tempdir_in(&target)
        .unwrap();
    let prefix = dir.path().join("prefix");
    let make = std::env::var("MAKE").unwrap_or_else(|_| "make".into());
    run(Command::new(make)
        .arg("-C")
        .arg(root())
        .arg("install")
        .arg(format!("PREFIX={}", prefix.display()))
        .arg(format!("CARGO_TARGET_DIR={}", target.display()))
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS"));
    // The binaries are installed without their debug info (the release
    // profile keeps line tables in target/), and run.
    for bin in ["ckpt-server", "ckpt-tool"] {
        let path = prefix.join("bin").join(bin);
        let bytes = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{bin} installed: {e}"))
            .len();
        assert!(bytes < 64 << 20, "{bin} installed with {bytes} bytes");
        let version = run(Command::new(&path).arg("--version"));
        assert!(String::from_utf8_lossy(&version.stdout).starts_with(bin));
    }
    let lib = prefix.join("lib");
    // The installed library is stripped and carries its soname.
    let symbols = run(Command::new("nm").arg(lib.join("libckpt.so.0.1.0")));
    assert!(String::from_utf8_lossy(&symbols.stderr).contains("no symbols"));
    let dynamic = run(Command::new("readelf")
        .arg("-d")
        .arg(lib.join("libckpt.so")));
    assert!(String::from_utf8_lossy(&dynamic.stdout).contains("[libckpt.so.0]"));

    let pkg_config = |args: &[&str]| -> Vec<String> {
        let output = run(Command::new("pkg-config")
            .args(args)
            .arg("ckpt")
            .env("PKG_CONFIG_PATH", lib.join("pkgconfig")));
        String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let flags = pkg_config(&["--cflags", "--libs"]);
    let build = |name: &str, extra: &[String]| {
        let out = dir.path().join(name);
        run(Command::new("cc")
            .arg(root().join("capi/tests/c").join(format!("{name}.c")))
            .arg("-o")
            .arg(&out)
            .args(extra));
        out
    };
    let hot_standby = build("hot_standby", &flags);
    let sa_sample = build("sa_sample", &flags);
    // Statically linked too, with pkg-config --static.
    let mut static_flags = pkg_config(&["--cflags", "--static", "--libs"]);
    static_flags.insert(0, "-Wl,-Bstatic".into());
    let at = static_flags.iter().position(|f| f == "-lckpt").unwrap();
    static_flags.insert(at + 1, "-Wl,-Bdynamic".into());
    let sa_static = dir.path().join("sa_sample_static");
    run(Command::new("cc")
        .arg(root().join("capi/tests/c/sa_sample.c"))
        .arg("-o")
        .arg(&sa_static)
        .args(&static_flags));

    // And from C++.
    let sa_cpp = dir.path().join("sa_sample_cpp");
    run(Command::new("c++")
        .args(["-std=c++17", "-Wall", "-Wextra", "-Werror", "-x", "c++"])
        .arg(root().join("capi/tests/c/sa_sample.c"))
        .args(["-x", "none", "-o"])
        .arg(&sa_cpp)
        .args(&flags));

    let server = Server::start(&dir.path().join("data"));
    let env = [("LD_LIBRARY_PATH", lib.display().to_string())];
    for program in [&sa_sample, &sa_static, &sa_cpp] {
        let output = run(Command::new(program)
            .env("CKPT_SERVERS", &server.addr)
            .envs(env.iter().cloned()));
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "PASS");
    }
    hot_standby_pair(&hot_standby, &server.addr, &env, || {}, 0);
}

#[test]
fn the_hot_standby_pair_moves_to_another_node_when_its_node_dies() {
    let dir = tempfile::tempdir().unwrap();
    let program = compile("hot_standby", dir.path());
    let mut cluster = Cluster::start(3, "");
    // Both processes connect to node 1, the first of CKPT_SERVERS; it dies
    // while they work, and both must go on through the other nodes.
    let servers = cluster.addrs();
    hot_standby_pair(&program, &servers, &[], || cluster.kill(1), 200);
}

#[test]
fn a_c_program_survives_its_callbacks_calling_the_library() {
    // cl_api's callbacks do not call back into the library; the hot standby
    // reads from its callbacks' thread right after dispatch. This program
    // writes from inside an open callback and finalizes from inside a
    // notification callback.
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let program = compile("reentrant", dir.path());
    expect_pass(&program, &server.addr, &[]);
}
