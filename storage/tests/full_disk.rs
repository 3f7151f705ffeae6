//! A real full disk (a small tmpfs mounted for the test): deletes still
//! work, and a crashed store restarts on the still-full disk. FaultFs can
//! only fill the log; RocksDB's own files (its MANIFEST at open) need a real
//! file system. Mounting needs root, which CI has; elsewhere the test says
//! it was skipped.

mod common;

use std::path::{Path, PathBuf};

use ckpt_proto::ErrorCode;
use ckpt_storage::{Op, RocksWalMode, Store, StoreConfig};
use common::*;

/// A tmpfs of `bytes` at `dir`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, bytes: u64) -> Option<Tmpfs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .status()
            .ok()?;
        status.success().then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn small_disk_config(dir: &Path) -> StoreConfig {
    let mut config = StoreConfig::new(dir);
    config.db.wal_mode = RocksWalMode::Disabled;
    // Memtables big enough that RocksDB writes nothing to disk while the
    // log fills it: the log is what hits ENOSPC first, as on a real node
    // whose log grows with every write.
    config.db.write_buffer_bytes_total = 128 << 20;
    config.db.write_buffer_bytes_per_cf = 64 << 20;
    config.reserve_bytes = 4 << 20;
    config
}

/// Bytes that do not compress (RocksDB compresses with LZ4).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn on_a_real_full_disk_deletes_and_a_restart_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_disk) = Tmpfs::mount(dir.path(), 40 << 20) else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let config = small_disk_config(dir.path());
    let store = Store::open(config.clone()).expect("store opens");
    let keep = create(&store, "keep", attrs(2, 1 << 20, 2 << 20));
    section(&store, keep, "k", b"acknowledged");
    let filler = create(&store, "filler", attrs(4096, 1 << 20, 1 << 30));
    // Fill the disk with ever smaller sections, so that what is left at the
    // end is less than one more record: the disk is full to the byte, as a
    // store that fills it itself leaves it.
    let mut sections = 0u64;
    let mut full = None;
    for size in [1 << 20, 64 << 10, 4 << 10, 256, 16] {
        loop {
            assert!(sections < 4000, "40 MiB never filled");
            let created = run(
                &store,
                Op::CreateSection {
                    instance: filler,
                    attributes: ckpt_proto::SectionCreationAttributes {
                        section_id: Some(ckpt_proto::SectionId::new(format!("s{sections}"))),
                        expiration_time: ckpt_proto::TIME_END,
                    },
                    data: noise(sections, size),
                },
            );
            match created {
                Ok(_) => sections += 1,
                Err(error) => {
                    full = Some(error);
                    break;
                }
            }
        }
    }
    let full = full.expect("the disk filled");
    assert_eq!(full.code, ErrorCode::NoSpace, "{full}");
    assert!(sections > 20, "only {sections} sections fitted");
    assert!(store.disk_full());
    assert!(store.poisoned().is_none(), "a full disk does not poison");
    // Writes are refused; deleting frees space through the API.
    let refused = run(&store, write(keep, "k", 0, b"more")).unwrap_err();
    assert_eq!(refused.code, ErrorCode::NoSpace, "{refused}");
    run(
        &store,
        Op::DeleteSection {
            instance: filler,
            section_id: ckpt_proto::SectionId::new("s0"),
        },
    )
    .expect("a section delete on a full disk");
    run(
        &store,
        Op::Unlink {
            name: name("filler"),
        },
    )
    .expect("a checkpoint delete on a full disk");
    run(&store, Op::Destroy { instance: filler }).expect("destroying on a full disk");
    assert_eq!(read_all(&store, keep, "k"), b"acknowledged");
    // A crash, and a restart on the still-full disk (the log still holds
    // every record: nothing was flushed).
    drop(store);
    let store = Store::open(config).expect("recovery on a full disk");
    assert_eq!(read_all(&store, keep, "k"), b"acknowledged");
    assert!(
        store.lookup(&name("filler")).is_err(),
        "the delete made on the full disk survived"
    );
}
