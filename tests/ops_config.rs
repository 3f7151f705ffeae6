//! One config reference (issue #12, point 3): every key has its `CKPT_*`
//! variable, invalid values are refused at start naming the key, enum
//! values are lowercase (old spellings still accepted), and the effective
//! configuration is logged and served at `/config`.

mod common;
mod ops_support;

use ops_support::{field, http_get, Process};

#[test]
fn invalid_values_from_the_environment_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_text = data.to_str().unwrap();
    for (variable, value, says) in [
        (
            "CKPT_CONNECTIONS_MAX",
            "0",
            "connections_max 0 is not in 1..=",
        ),
        (
            "CKPT_ROCKSDB_WAL_MODE",
            "bogus",
            "rocksdb_wal_mode \"bogus\" is not one of: disabled, unsynced",
        ),
        (
            "CKPT_EXPIRY_INTERVAL_MS",
            "0",
            "expiry_interval_ms 0 is not in",
        ),
        (
            "CKPT_SEGMENT_BYTES_MAX",
            "12",
            "segment_bytes_max 12 is not in",
        ),
        ("CKPT_RESERVE_BYTES", "lots", "--reserve-bytes"),
    ] {
        let mut server = Process::start(
            &[
                "--data-dir",
                data_text,
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ],
            &[(variable, value)],
        );
        let (status, log) = server.wait_exit();
        assert_eq!(status.code(), Some(2), "{variable}={value}: {log}");
        assert!(log.contains(says), "{variable}={value}: {log}");
        if !log.contains("error: configuration") {
            // A value clap could not parse: the variable is named too.
            assert!(
                log.contains(&format!("(the value comes from {variable})")),
                "{variable}={value}: {log}"
            );
        }
        assert!(
            !data.exists(),
            "{variable}={value}: the data directory was touched"
        );
    }
}

#[test]
fn the_effective_configuration_is_logged_and_served_on_the_admin_port() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("ckpt.toml");
    // The capitalized spelling of earlier versions.
    std::fs::write(
        &file,
        "connections_max = 5\nexpiry_interval_ms = 50\nrocksdb_wal_mode = \"Unsynced\"\nin_flight_max = 3\n",
    )
    .unwrap();
    let mut server = Process::start(
        &[
            "--config",
            file.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--in-flight-max",
            "9",
        ],
        // The environment overrides the file, the flag the environment.
        &[
            ("CKPT_EXPIRY_INTERVAL_MS", "70"),
            ("CKPT_IN_FLIGHT_MAX", "8"),
            ("CKPT_CONECTIONS_MAX", "3"),
        ],
    );
    let ready = server.wait_line("ckpt-server ready");
    let admin = field(&ready, "admin=");
    let logged = server.wait_line("effective configuration");
    assert!(logged.contains("\"expiry_interval_ms\":70"), "{logged}");
    let warned = server.wait_line("CKPT_CONECTIONS_MAX");
    assert!(
        warned.contains("WARN") && warned.contains("names no ckpt-server setting"),
        "{warned}"
    );

    let (status, body) = http_get(&admin, "/config").expect("/config answers");
    assert_eq!(status, 200, "{body}");
    let config: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(config["connections_max"], 5);
    assert_eq!(config["expiry_interval_ms"], 70);
    assert_eq!(config["in_flight_max"], 9);
    assert_eq!(config["rocksdb_wal_mode"], "unsynced");
    assert_eq!(config["data_dir"], data.to_str().unwrap());
    assert_eq!(config["config"], file.to_str().unwrap());
    assert_eq!(config["node_id"], serde_json::Value::Null);
    // Defaults are there too.
    assert_eq!(config["shutdown_drain_ms"], 10000);
    // What is logged is what is served.
    let logged_json: serde_json::Value =
        serde_json::from_str(&logged[logged.find("config=").unwrap() + 7..]).unwrap();
    assert_eq!(logged_json, config);
}
