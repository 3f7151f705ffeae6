//! The read path: chunked section data read back by point lookups (short
//! reads) and by scans (long ones) against a model, reads that answer only
//! from memory (`memory_only`) telling when they would need the disk, and
//! the read cache of small sections never answering with changed bytes.

mod common;

use ckpt_proto::{ReadElement, SectionId};
use ckpt_storage::{memory_only, FaultFs, RocksWalMode, CHUNK_BYTES};
use common::*;

/// A deterministic generator (xorshift), so a failure replays.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn read(
    store: &ckpt_storage::Store,
    instance: ckpt_storage::InstanceId,
    offset: u64,
    size: u64,
) -> Vec<u8> {
    let element = ReadElement {
        section_id: SectionId::new("s"),
        offset,
        size: Some(size),
    };
    store.read(instance, &[element]).expect("read").remove(0)
}

/// Sparse writes over 20 chunks, each followed by reads of random ranges
/// (one chunk, a few, most of the section; gaps read as zeros), every one
/// compared with a model of the section's bytes. Overwrites leave older
/// versions of each chunk in the memtable, which a lookup must skip.
#[test]
fn short_and_long_reads_agree_with_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let store = open(dir.path(), &fs, RocksWalMode::Unsynced);
    let max = 20 * CHUNK_BYTES;
    let instance = create(&store, "r", attrs(2, max, max));
    section(&store, instance, "s", b"");
    let mut model: Vec<u8> = Vec::new();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..60u64 {
        // Writes land in a few chunks far apart, so the section has holes.
        let offset = rng.below(20) * CHUNK_BYTES + rng.below(CHUNK_BYTES);
        let len = (1 + rng.below(3 * CHUNK_BYTES)).min(max - offset);
        let data: Vec<u8> = (0..len).map(|i| (i as u8) ^ (round as u8) | 1).collect();
        run(&store, write(instance, "s", offset, &data)).expect("write");
        let end = (offset + len) as usize;
        if model.len() < end {
            model.resize(end, 0);
        }
        model[offset as usize..end].copy_from_slice(&data);

        for _ in 0..8 {
            let size_class = rng.below(3);
            let size = match size_class {
                0 => 1 + rng.below(CHUNK_BYTES),
                1 => 1 + rng.below(8 * CHUNK_BYTES),
                _ => 1 + rng.below(max),
            };
            let from = rng.below(model.len() as u64 + 10);
            let got = read(&store, instance, from, size);
            let expected: &[u8] = if (from as usize) < model.len() {
                &model[from as usize..model.len().min((from + size) as usize)]
            } else {
                &[]
            };
            assert_eq!(
                got.len(),
                expected.len(),
                "round {round}: read {from}+{size}"
            );
            assert!(got == expected, "round {round}: read {from}+{size} differs");
        }
    }
    assert_eq!(read_all(&store, instance, "s"), model);
}

/// Right after a restart nothing is in RocksDB's memtables or block cache:
/// a memory-only read says it needs the disk (the server then reads on its
/// blocking pool) rather than failing or blocking; once a normal read has
/// brought the block in, the memory-only read answers, with the same bytes.
#[test]
fn memory_only_reads_say_when_they_need_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let store = open(dir.path(), &fs, RocksWalMode::Unsynced);
    let instance = create(&store, "m", attrs(2, 4096, 4096));
    section(&store, instance, "s", &[7u8; 1000]);
    // Still in the memtable: memory suffices.
    let hot = memory_only(|| read(&store, instance, 0, 1000)).expect("in the memtable");
    assert_eq!(hot, vec![7u8; 1000]);
    store.close().expect("close flushes the memtables");

    // Without the read cache, which would answer the warm read below
    // before RocksDB's block cache is asked.
    let mut uncached = config(dir.path(), RocksWalMode::Unsynced);
    uncached.db.read_cache_bytes = 0;
    let store = ckpt_storage::Store::open_with_fs(uncached, std::sync::Arc::new(fs.clone()))
        .expect("store opens");
    let element = [ReadElement {
        section_id: SectionId::new("s"),
        offset: 0,
        size: None,
    }];
    assert!(
        memory_only(|| store.read(instance, &element)).is_none(),
        "a cold read must report that it needs the disk"
    );
    // Outside memory_only the same read goes to the disk and answers.
    assert_eq!(read_all(&store, instance, "s"), vec![7u8; 1000]);
    let warm = memory_only(|| store.read(instance, &element))
        .expect("the block is cached now")
        .expect("read");
    assert_eq!(warm, vec![vec![7u8; 1000]]);
    // Errors that are not about the disk come back as they are.
    let missing = [ReadElement {
        section_id: SectionId::new("nope"),
        offset: 0,
        size: None,
    }];
    let error = memory_only(|| store.read(instance, &missing))
        .expect("a missing section is known from memory")
        .expect_err("no such section");
    assert_eq!(error.code, ckpt_proto::ErrorCode::NotExist);
}

fn element(id: &str, offset: u64, size: Option<u64>) -> ReadElement {
    ReadElement {
        section_id: SectionId::new(id),
        offset,
        size,
    }
}

/// Every kind of change to cached sections, each followed by reads that
/// fill and then hit the cache, compared with a model: writes, overwrites,
/// a section deleted and created again, partial and past-the-end reads,
/// two-section reads, and the checkpoint destroyed.
#[test]
fn cached_reads_follow_every_change() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let store = open(dir.path(), &fs, RocksWalMode::Unsynced);
    let max = CHUNK_BYTES;
    let instance = create(&store, "c", attrs(4, max, 4 * max));
    section(&store, instance, "a", b"first");
    section(&store, instance, "b", b"");
    let mut model: [Vec<u8>; 2] = [b"first".to_vec(), Vec::new()];
    let ids = ["a", "b"];
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for round in 0..400u64 {
        let which = rng.below(2) as usize;
        let id = ids[which];
        match rng.below(6) {
            0 | 1 => {
                let offset = rng.below(max);
                let len = (1 + rng.below(2048)).min(max - offset);
                let data = vec![(round as u8) | 1; len as usize];
                run(&store, write(instance, id, offset, &data)).expect("write");
                let end = (offset + len) as usize;
                if model[which].len() < end {
                    model[which].resize(end, 0);
                }
                model[which][offset as usize..end].copy_from_slice(&data);
            }
            2 => {
                let data = vec![round as u8; rng.below(3000) as usize];
                run(
                    &store,
                    ckpt_storage::Op::Overwrite {
                        instance,
                        section_id: SectionId::new(id),
                        data: data.clone(),
                    },
                )
                .expect("overwrite");
                model[which] = data;
            }
            3 => {
                run(
                    &store,
                    ckpt_storage::Op::DeleteSection {
                        instance,
                        section_id: SectionId::new(id),
                    },
                )
                .expect("delete");
                let gone = store
                    .read(instance, &[element(id, 0, None)])
                    .expect_err("deleted");
                assert_eq!(gone.code, ckpt_proto::ErrorCode::NotExist, "round {round}");
                section(&store, instance, id, b"again");
                model[which] = b"again".to_vec();
            }
            _ => {}
        }
        // Twice: the first may fill, the second may hit.
        for _ in 0..2 {
            assert_eq!(
                read_all(&store, instance, id),
                model[which],
                "round {round}"
            );
            let both = store
                .read(instance, &[element("a", 0, None), element("b", 0, None)])
                .expect("read both");
            assert_eq!(both, model.to_vec(), "round {round}");
            let from = rng.below(model[which].len() as u64 + 100);
            let size = rng.below(500);
            let got = store
                .read(instance, &[element(id, from, Some(size))])
                .expect("read part")
                .remove(0);
            let len = model[which].len();
            let expected =
                &model[which][(from as usize).min(len)..((from + size) as usize).min(len)];
            assert_eq!(got, expected, "round {round}: {from}+{size}");
        }
    }
    let stats = store.read_cache_stats();
    assert!(
        stats.hits > 1000 && stats.misses > 100,
        "the cache must have been used and invalidated: {stats:?}"
    );
    // Errors come from the full read, as before: past maxSectionSize, and
    // a destroyed checkpoint.
    let past = store
        .read(instance, &[element("a", max + 1, Some(1))])
        .expect_err("past maxSectionSize");
    assert_eq!(past.code, ckpt_proto::ErrorCode::InvalidParameter);
    run(&store, ckpt_storage::Op::Destroy { instance }).expect("destroy");
    let gone = store
        .read(instance, &[element("a", 0, None)])
        .expect_err("destroyed");
    assert_eq!(gone.code, ckpt_proto::ErrorCode::NotExist);
}

/// One thread overwrites two sections with the same counter in one write
/// while readers read both in one read: a reader never sees the two
/// differ (one point in time), never goes back, and never sees less than
/// what was acknowledged before its read began. Every 100 writes the
/// writer waits for a few reads, so that reads fill the cache and hit it
/// between writes as well as miss it during them.
#[test]
fn cached_reads_are_current_and_consistent_under_concurrent_writes() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};
    const WAIT_MAX: Duration = Duration::from_secs(60);
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let store = std::sync::Arc::new(open(dir.path(), &fs, RocksWalMode::Unsynced));
    let instance = create(&store, "k", attrs(2, 64, 128));
    section(&store, instance, "x", &0u64.to_le_bytes());
    section(&store, instance, "y", &0u64.to_le_bytes());
    let acked = std::sync::Arc::new(AtomicU64::new(0));
    let reads = std::sync::Arc::new(AtomicU64::new(0));
    const WRITES: u64 = 3000;
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (store, acked, reads) = (store.clone(), acked.clone(), reads.clone());
            std::thread::spawn(move || {
                let mut last = 0u64;
                while last < WRITES {
                    let floor = acked.load(Ordering::SeqCst);
                    let got = store
                        .read(instance, &[element("x", 0, None), element("y", 0, None)])
                        .expect("read");
                    let counter = |d: &[u8]| u64::from_le_bytes(d.try_into().unwrap());
                    let (x, y) = (counter(&got[0]), counter(&got[1]));
                    assert_eq!(x, y, "one point in time");
                    assert!(x >= floor, "read {x} after {floor} was acknowledged");
                    assert!(x >= last, "went back from {last} to {x}");
                    last = x;
                    reads.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for n in 1..=WRITES {
        if n % 100 == 0 {
            // A quiet moment: the first read in it fills, the rest hit.
            let (from, deadline) = (reads.load(Ordering::SeqCst), Instant::now() + WAIT_MAX);
            while reads.load(Ordering::SeqCst) < from + 6 {
                assert!(Instant::now() < deadline, "the readers stopped reading");
                std::thread::yield_now();
            }
        }
        let bytes = n.to_le_bytes();
        let op = ckpt_storage::Op::Write {
            instance,
            elements: ["x", "y"]
                .iter()
                .map(|id| ckpt_proto::WriteElement {
                    section_id: SectionId::new(*id),
                    offset: 0,
                    data: bytes.to_vec(),
                })
                .collect(),
        };
        store
            .execute_with(op, ckpt_storage::Durability::Written, NOW)
            .expect("write");
        acked.store(n, Ordering::SeqCst);
    }
    for reader in readers {
        reader.join().expect("reader");
    }
    let stats = store.read_cache_stats();
    assert!(stats.hits >= 5 * (WRITES / 100), "{stats:?}");
}
