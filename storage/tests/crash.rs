//! Randomized crash test: random operations against the power-losing file
//! layer and a `BTreeMap` model; the power goes at a random write or fsync;
//! after every restart each acknowledged operation is present and the one
//! in flight is either whole or absent.
//!
//! Seeded: set `CKPT_CRASH_SEED` to replay a failure (the seed is printed),
//! `CKPT_CRASH_CYCLES` to run longer.

mod common;

use std::collections::BTreeMap;

use ckpt_proto::{SectionCreationAttributes, SectionId, WriteElement, TIME_END};
use ckpt_storage::{FaultFs, InstanceId, Op, RocksWalMode, Store};
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const NAMES: [&str; 4] = ["alpha", "beta", "gamma", "delta"];
const IDS: [&str; 5] = ["a", "b", "c", "d", "e"];
const MAX_SECTIONS: u32 = 4;
const MAX_SECTION_SIZE: u64 = 256;
const CHECKPOINT_SIZE: u64 = 700;

/// name -> section id -> data
type Model = BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>;

fn model_digest(model: &Model) -> Digest {
    model
        .iter()
        .map(|(name, sections)| {
            let memory_used = sections.values().map(|d| d.len() as u64).sum();
            let sections = sections
                .iter()
                .map(|(id, data)| (id.clone(), (TIME_END, data.clone())))
                .collect();
            (
                name.as_bytes().to_vec(),
                (sections_len(&sections), memory_used, sections),
            )
        })
        .collect()
}

fn sections_len(sections: &BTreeMap<Vec<u8>, (i64, Vec<u8>)>) -> u32 {
    sections.len() as u32
}

/// One step of the workload: the store operation(s) and the model after it.
struct Step {
    ops: Vec<Op>,
    after: Model,
}

fn pick<'a>(rng: &mut StdRng, items: &'a [&'a str]) -> &'a str {
    items[rng.random_range(0..items.len())]
}

fn data(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let len = rng.random_range(0..=max);
    let byte: u8 = rng.random();
    (0..len).map(|i| byte.wrapping_add(i as u8)).collect()
}

/// A random operation that the model predicts to succeed.
fn next_step(rng: &mut StdRng, store: &Store, model: &Model) -> Step {
    loop {
        let name = pick(rng, &NAMES).to_string();
        let exists = model.contains_key(&name);
        let choice = rng.random_range(0..100);
        let mut after = model.clone();
        if !exists || choice < 4 {
            if exists {
                // Delete: unlink (the name goes) and destroy (the data goes).
                let instance = store
                    .lookup(&common::name(&name))
                    .expect("model says it exists");
                after.remove(&name);
                return Step {
                    ops: vec![
                        Op::Unlink {
                            name: common::name(&name),
                        },
                        Op::Destroy { instance },
                    ],
                    after,
                };
            }
            after.insert(name.clone(), BTreeMap::new());
            let attributes = attrs(MAX_SECTIONS, MAX_SECTION_SIZE, CHECKPOINT_SIZE);
            return Step {
                ops: vec![Op::CreateCheckpoint {
                    name: common::name(&name),
                    attributes,
                }],
                after,
            };
        }
        let instance: InstanceId = store
            .lookup(&common::name(&name))
            .expect("model says it exists");
        let sections = after.get_mut(&name).expect("exists");
        let used: u64 = sections.values().map(|d| d.len() as u64).sum();
        let id = pick(rng, &IDS).as_bytes().to_vec();
        let section_id = SectionId::new(id.clone());
        match choice {
            4..=24 => {
                if sections.contains_key(&id) || sections.len() as u32 >= MAX_SECTIONS {
                    continue;
                }
                let initial = data(rng, 100);
                if used + initial.len() as u64 > CHECKPOINT_SIZE {
                    continue;
                }
                sections.insert(id, initial.clone());
                let attributes = SectionCreationAttributes {
                    section_id: Some(section_id),
                    expiration_time: TIME_END,
                };
                return Step {
                    ops: vec![Op::CreateSection {
                        instance,
                        attributes,
                        data: initial,
                    }],
                    after,
                };
            }
            25..=34 => {
                if sections.remove(&id).is_none() {
                    continue;
                }
                return Step {
                    ops: vec![Op::DeleteSection {
                        instance,
                        section_id,
                    }],
                    after,
                };
            }
            35..=49 => {
                let Some(old) = sections.get(&id) else {
                    continue;
                };
                let new = data(rng, 120);
                if used - old.len() as u64 + new.len() as u64 > CHECKPOINT_SIZE {
                    continue;
                }
                sections.insert(id, new.clone());
                return Step {
                    ops: vec![Op::Overwrite {
                        instance,
                        section_id,
                        data: new,
                    }],
                    after,
                };
            }
            _ => {
                // A write of 1..=3 elements, possibly past the end.
                let count = rng.random_range(1..=3);
                let mut elements = Vec::new();
                let mut used = used;
                for _ in 0..count {
                    let id = pick(rng, &IDS).as_bytes().to_vec();
                    let Some(current) = sections.get_mut(&id) else {
                        continue;
                    };
                    let offset = rng.random_range(0..=current.len() as u64 + 20);
                    let bytes = data(rng, 40);
                    let end = offset + bytes.len() as u64;
                    let growth = end.saturating_sub(current.len() as u64);
                    if end > MAX_SECTION_SIZE || used + growth > CHECKPOINT_SIZE {
                        continue;
                    }
                    used += growth;
                    if (current.len() as u64) < end {
                        current.resize(end as usize, 0);
                    }
                    current[offset as usize..end as usize].copy_from_slice(&bytes);
                    elements.push(WriteElement {
                        section_id: SectionId::new(id),
                        offset,
                        data: bytes,
                    });
                }
                if elements.is_empty() {
                    continue;
                }
                return Step {
                    ops: vec![Op::Write { instance, elements }],
                    after,
                };
            }
        }
    }
}

fn crash_cycles(mode: RocksWalMode, default_cycles: u64, salt: u64) {
    let seed = std::env::var("CKPT_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::random::<u64>() ^ salt);
    let cycles = std::env::var("CKPT_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_cycles);
    println!(
        "crash test {mode:?}: seed {seed}, {cycles} cycles (CKPT_CRASH_SEED={seed} to replay)"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let mut model = Model::new();
    let mut store = open(dir.path(), &fs, mode);
    let mut acknowledged = 0u64;
    let mut in_doubt_applied = 0u64;
    for cycle in 0..cycles {
        // Each operation costs one write and one fsync of the log.
        fs.crash_after(rng.random_range(0..30));
        let mut in_doubt: Option<Model> = None;
        for _ in 0..40 {
            let step = next_step(&mut rng, &store, &model);
            let mut failed = None;
            for op in &step.ops {
                if let Err(error) = run(&store, op.clone()) {
                    failed = Some(error);
                    break;
                }
            }
            match failed {
                None => {
                    model = step.after;
                    acknowledged += 1;
                }
                Some(error) => {
                    assert!(
                        fs.crashed(),
                        "seed {seed} cycle {cycle}: an op the model allows failed: {error}"
                    );
                    in_doubt = Some(step.after);
                    break;
                }
            }
        }
        drop(store);
        fs.power_loss();
        store = open(dir.path(), &fs, mode);
        let recovered = digest(&store);
        if recovered == model_digest(&model) {
            continue;
        }
        match in_doubt {
            Some(after) if recovered == model_digest(&after) => {
                // The operation in flight reached the disk before the power went.
                model = after;
                in_doubt_applied += 1;
            }
            _ => panic!(
                "seed {seed} cycle {cycle}: recovered state is neither the acknowledged state nor it plus the \
                 operation in flight\nrecovered: {recovered:?}\nexpected:  {:?}",
                model_digest(&model)
            ),
        }
    }
    println!("{acknowledged} operations acknowledged, {in_doubt_applied} in-flight operations found whole");
    assert!(
        acknowledged > cycles,
        "the workload did too little: {acknowledged} ops"
    );
}

#[test]
fn random_crashes_lose_nothing_acknowledged_rocksdb_wal_disabled() {
    crash_cycles(RocksWalMode::Disabled, 500, 1);
}

#[test]
fn random_crashes_lose_nothing_acknowledged_rocksdb_wal_unsynced() {
    crash_cycles(RocksWalMode::Unsynced, 500, 2);
}
