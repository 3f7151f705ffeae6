//! Helpers shared by the storage integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use ckpt_proto::{
    CheckpointName, CreationAttributes, CreationFlags, ReadElement, SectionCreationAttributes,
    SectionId, WriteElement, TIME_END,
};
use ckpt_storage::{
    Durability, FaultFs, InstanceId, Op, Outcome, RocksWalMode, Store, StoreConfig,
};

/// A fixed clock for tests: 2023-11-14T22:13:20Z in ns.
pub const NOW: i64 = 1_700_000_000_000_000_000;

pub fn config(dir: &Path, mode: RocksWalMode) -> StoreConfig {
    let mut config = StoreConfig::new(dir);
    config.db.wal_mode = mode;
    config.db.write_buffer_bytes_total = 64 * 1024 * 1024;
    // One-shot injected faults (`fail_next_write`, `fail_next_sync`, a
    // panic, a byte budget) must land on the writer's own calls, not on the
    // spare-segment filler's, whose timing no test controls. Preallocated
    // segments are exercised by tests/crash.rs (a power cut at every call)
    // and the writer's unit tests.
    config.preallocate_segments = false;
    config
}

pub fn open(dir: &Path, fs: &FaultFs, mode: RocksWalMode) -> Store {
    Store::open_with_fs(config(dir, mode), Arc::new(fs.clone())).expect("store opens")
}

pub fn name(text: &str) -> CheckpointName {
    CheckpointName::new(text).unwrap()
}

pub fn attrs(max_sections: u32, max_section_size: u64, checkpoint_size: u64) -> CreationAttributes {
    CreationAttributes {
        creation_flags: CreationFlags::WR_ACTIVE_REPLICA,
        checkpoint_size,
        retention_duration_ns: TIME_END,
        max_sections,
        max_section_size,
        max_section_id_size: 16,
    }
}

pub fn run(store: &Store, op: Op) -> ckpt_proto::CkptResult<Outcome> {
    store.execute_with(op, Durability::Durable, NOW)
}

pub fn create(store: &Store, text: &str, attributes: CreationAttributes) -> InstanceId {
    match run(
        store,
        Op::CreateCheckpoint {
            name: name(text),
            attributes,
            instance: None,
            epoch: ckpt_storage::Epoch(1),
        },
    )
    .expect("create")
    {
        Outcome::Opened { instance, .. } => instance,
        other => panic!("unexpected outcome {other:?}"),
    }
}

pub fn section(store: &Store, instance: InstanceId, id: &str, data: &[u8]) {
    run(
        store,
        Op::CreateSection {
            instance,
            attributes: SectionCreationAttributes {
                section_id: Some(SectionId::new(id)),
                expiration_time: TIME_END,
            },
            data: data.to_vec(),
        },
    )
    .expect("section create");
}

pub fn write(instance: InstanceId, id: &str, offset: u64, data: &[u8]) -> Op {
    Op::Write {
        instance,
        elements: vec![WriteElement {
            section_id: SectionId::new(id),
            offset,
            data: data.to_vec(),
        }],
    }
}

pub fn read_all(store: &Store, instance: InstanceId, id: &str) -> Vec<u8> {
    let element = ReadElement {
        section_id: SectionId::new(id),
        offset: 0,
        size: None,
    };
    store.read(instance, &[element]).expect("read").remove(0)
}

/// Everything a user can observe about named checkpoints:
/// name -> (section id -> (expiration, data)), plus the counters.
pub type Digest = BTreeMap<Vec<u8>, (u32, u64, BTreeMap<Vec<u8>, (i64, Vec<u8>)>)>;

pub fn digest(store: &Store) -> Digest {
    let mut out = BTreeMap::new();
    for (instance, meta) in store.instances().expect("instances") {
        if meta.unlinked {
            continue;
        }
        let mut sections = BTreeMap::new();
        for descriptor in store.sections(instance).expect("sections") {
            let element = ReadElement {
                section_id: descriptor.section_id.clone(),
                offset: 0,
                size: None,
            };
            let data = store.read(instance, &[element]).expect("read").remove(0);
            assert_eq!(
                data.len() as u64,
                descriptor.section_size,
                "size matches data"
            );
            sections.insert(
                descriptor.section_id.as_bytes().to_vec(),
                (descriptor.expiration_time, data),
            );
        }
        let status = store.status(instance).expect("status");
        let total: u64 = sections.values().map(|(_, d)| d.len() as u64).sum();
        assert_eq!(
            status.memory_used, total,
            "memoryUsed is the sum of section sizes"
        );
        assert_eq!(status.number_of_sections as usize, sections.len());
        out.insert(
            meta.name.as_bytes().to_vec(),
            (status.number_of_sections, status.memory_used, sections),
        );
    }
    out
}
