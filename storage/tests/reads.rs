//! The read path: chunked section data read back by point lookups (short
//! reads) and by scans (long ones) against a model, and reads that answer
//! only from memory (`memory_only`) telling when they would need the disk.

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

    let store = open(dir.path(), &fs, RocksWalMode::Unsynced);
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
