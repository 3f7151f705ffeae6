//! Safe defaults at start (issue #12, point 4): a mistyped data directory
//! does not start an empty node, port 0 works and the bound ports are
//! logged and written to `DATA_DIR/ports`, and a port that cannot be bound
//! is named as the admin or the client port.

mod common;
mod ops_support;

use ops_support::{field, http_get, read, Process};

fn args<'a>(data: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--data-dir",
        data,
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn a_data_dir_whose_parent_is_missing_is_refused_unless_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("vra").join("lib").join("ckpt");
    let typo_text = typo.to_str().unwrap();
    let mut server = Process::start(&args(typo_text, &[]), &[]);
    let (status, log) = server.wait_exit();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("does not exist, and neither does its parent")
            && log.contains("--create-data-dir"),
        "{log}"
    );
    assert!(!dir.path().join("vra").exists(), "something was created");

    // Asked for: created with its parents.
    let mut server = Process::start(&args(typo_text, &["--create-data-dir"]), &[]);
    server.wait_line("ckpt-server ready");
    assert!(typo.join("wal").is_dir());
    drop(server);

    // A missing directory below an existing parent is created as before.
    let fresh = dir.path().join("fresh");
    let mut server = Process::start(&args(fresh.to_str().unwrap(), &[]), &[]);
    server.wait_line("created the data directory");
    server.wait_line("ckpt-server ready");
    assert!(fresh.join("wal").is_dir());
}

#[test]
fn port_zero_binds_free_ports_that_are_logged_and_written_to_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Process::start(&args(data.to_str().unwrap(), &[]), &[]);
    let ready = server.wait_line("ckpt-server ready");
    let (listen, admin) = (field(&ready, "listen="), field(&ready, "admin="));
    assert!(!listen.ends_with(":0") && !admin.ends_with(":0"), "{ready}");
    let ports = read(&data.join("ports"));
    assert_eq!(ports, format!("listen={listen}\nadmin_listen={admin}\n"));
    let (status, _) = http_get(&admin, "/health").expect("the admin port answers");
    assert_eq!(status, 200);
    std::net::TcpStream::connect(&listen).expect("the client port accepts");

    server.signal(libc::SIGTERM);
    let (status, log) = server.wait_exit();
    assert!(status.success(), "{log}");
    assert!(
        !data.join("ports").exists(),
        "a stopped server's ports remain"
    );
}

#[test]
fn a_port_in_use_is_named_as_the_admin_or_the_client_port() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    for (flag, says) in [
        ("--admin-listen", "binding the admin port (admin_listen) at"),
        ("--listen", "binding the client API port (listen) at"),
    ] {
        let mut all = args(data.to_str().unwrap(), &[]);
        let at = all.iter().position(|a| *a == flag).unwrap();
        all[at + 1] = &taken_addr;
        let mut server = Process::start(&all, &[]);
        let (status, log) = server.wait_exit();
        assert!(!status.success(), "{flag}: {log}");
        assert!(
            log.contains(&format!("{says} {taken_addr}")),
            "{flag}: {log}"
        );
    }
}
