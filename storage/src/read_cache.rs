//! Whole small sections kept in memory for reads, so that a read of a hot
//! section costs a hash lookup and a copy instead of a RocksDB snapshot and
//! three lookups through memtables full of overwritten versions (issue #11:
//! that was most of a read's CPU outside the kernel).
//!
//! # Why a cached answer is never stale
//!
//! Instances are spread over [`STRIPES`] stripes, each with two counters:
//! `started` and `finished`. Every change to the database goes through
//! [`crate::db::Db::apply_with`], which holds a [`Writing`] for the
//! instances it touches: `started` is raised before the batch is written,
//! `finished` after it was (or failed). Then:
//!
//! - an entry is filled only from a read whose snapshot was taken after
//!   the reader saw `started == finished == tag` on the instance's stripe:
//!   every change begun before that point was complete and is in the
//!   snapshot;
//! - an entry answers only while `started` still equals its tag: from the
//!   moment a change to any instance of its stripe *begins* (before RocksDB
//!   holds it, so before any reader could have seen it) the entry is dead.
//!
//! So a cached read returns what a read of RocksDB at that moment would,
//! and reads stay monotonic: once one reader has seen a change, no other
//! can get the older bytes from here. Writes are never slowed by readers:
//! the writer only raises two atomics per stripe it touches.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ckpt_proto::SectionId;

use crate::wal::InstanceId;

/// Stripes of change counters; instances share a stripe by id modulo this.
const STRIPES: usize = 1024;
/// Independently locked parts of the cache (readers on different sections
/// rarely wait for each other).
const SHARDS: usize = 16;
/// The largest section kept (one data chunk: its fill costs one lookup).
pub const ENTRY_BYTES_MAX: u64 = crate::db::CHUNK_BYTES;
/// Bytes counted per entry beyond its data and section id (map slot,
/// `Arc` header, bookkeeping): keeps the budget honest for tiny sections.
const ENTRY_OVERHEAD_BYTES: usize = 96;

/// The cache (see the module documentation).
pub struct ReadCache {
    started: Box<[AtomicU64]>,
    finished: Box<[AtomicU64]>,
    shards: Box<[Mutex<Shard>]>,
    shard_bytes_max: usize,
    hasher: std::collections::hash_map::RandomState,
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Default)]
struct Shard {
    /// By hash of (instance, section id). Two sections whose hashes
    /// collide take turns in the one slot (each fill replaces the other).
    entries: HashMap<u64, Entry>,
    bytes: usize,
}

struct Entry {
    instance: InstanceId,
    section_id: SectionId,
    tag: u64,
    max_section_size: u64,
    data: Arc<[u8]>,
}

impl Entry {
    fn is(&self, instance: InstanceId, section_id: &SectionId) -> bool {
        self.instance == instance && &self.section_id == section_id
    }

    fn bytes(&self) -> usize {
        self.data.len() + self.section_id.as_bytes().len() + ENTRY_OVERHEAD_BYTES
    }
}

/// A cached section: its whole data and its instance's `maxSectionSize`.
#[derive(Debug, Clone)]
pub struct Cached {
    /// The moment it is from (equal tags: the same moment, for reads of
    /// several sections of one instance).
    pub tag: u64,
    /// The instance's maxSectionSize when the entry was filled.
    pub max_section_size: u64,
    /// The section's whole data (its size is the length).
    pub data: Arc<[u8]>,
}

/// The stripes a batch of changes touches, marked as being written until
/// this is dropped (also when the write fails or panics).
pub struct Writing<'a> {
    cache: &'a ReadCache,
    stripes: Vec<usize>,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        for &stripe in &self.stripes {
            self.cache.finished[stripe].fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Hit and miss counts, and the bytes held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadCacheStats {
    /// Section lookups the cache answered (a read of several sections
    /// looks them up in order and stops at the first miss).
    pub hits: u64,
    /// Section lookups it could not answer (none while it is off).
    pub misses: u64,
    /// Bytes held (data, ids and per-entry overhead).
    pub bytes: u64,
}

fn stripe(instance: InstanceId) -> usize {
    (instance.0 % STRIPES as u64) as usize
}

impl ReadCache {
    /// A cache holding at most about `bytes_max` bytes (0: nothing is
    /// cached; the counters still run, at the cost of two atomics).
    pub fn new(bytes_max: u64) -> ReadCache {
        let counters = || (0..STRIPES).map(|_| AtomicU64::new(0)).collect();
        ReadCache {
            started: counters(),
            finished: counters(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            shard_bytes_max: usize::try_from(bytes_max / SHARDS as u64).unwrap_or(usize::MAX),
            hasher: std::collections::hash_map::RandomState::new(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Marks the stripes of `instances` as being written until the
    /// returned guard drops. Call before the change can become visible.
    pub fn writing(&self, instances: impl IntoIterator<Item = InstanceId>) -> Writing<'_> {
        let mut stripes: Vec<usize> = instances.into_iter().map(stripe).collect();
        stripes.sort_unstable();
        stripes.dedup();
        for &stripe in &stripes {
            self.started[stripe].fetch_add(1, Ordering::SeqCst);
        }
        Writing {
            cache: self,
            stripes,
        }
    }

    /// The tag a fill of `instance` must carry, taken before the snapshot
    /// it reads from; None while a change to its stripe is being written
    /// (then the read is not cached).
    pub fn tag(&self, instance: InstanceId) -> Option<u64> {
        let stripe = stripe(instance);
        let started = self.started[stripe].load(Ordering::SeqCst);
        let finished = self.finished[stripe].load(Ordering::SeqCst);
        (started == finished).then_some(started)
    }

    fn key(&self, instance: InstanceId, section_id: &SectionId) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        instance.hash(&mut hasher);
        section_id.hash(&mut hasher);
        hasher.finish()
    }

    fn shard(&self, key: u64) -> MutexGuard<'_, Shard> {
        self.shards[(key % SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The section, if cached and unchanged since.
    pub fn get(&self, instance: InstanceId, section_id: &SectionId) -> Option<Cached> {
        if self.shard_bytes_max == 0 {
            return None;
        }
        let key = self.key(instance, section_id);
        let current = self.started[stripe(instance)].load(Ordering::SeqCst);
        let mut shard = self.shard(key);
        let answer = match shard.entries.get(&key) {
            Some(entry) if entry.is(instance, section_id) && entry.tag == current => Some(Cached {
                tag: entry.tag,
                max_section_size: entry.max_section_size,
                data: entry.data.clone(),
            }),
            // Changed since: drop it now rather than when evicted.
            Some(entry) if entry.is(instance, section_id) => {
                if let Some(gone) = shard.entries.remove(&key) {
                    shard.bytes -= gone.bytes();
                }
                None
            }
            _ => None,
        };
        drop(shard);
        let counter = if answer.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        answer
    }

    /// Keeps a section read from a snapshot taken after `tag` was (see
    /// [`ReadCache::tag`]); ignored if too large, or if a change to its
    /// stripe has begun since the tag.
    pub fn insert(
        &self,
        instance: InstanceId,
        section_id: &SectionId,
        tag: u64,
        max_section_size: u64,
        data: &[u8],
    ) {
        if self.shard_bytes_max == 0
            || data.len() as u64 > ENTRY_BYTES_MAX
            || self.started[stripe(instance)].load(Ordering::SeqCst) != tag
        {
            return;
        }
        let entry = Entry {
            instance,
            section_id: section_id.clone(),
            tag,
            max_section_size,
            data: Arc::from(data),
        };
        let bytes = entry.bytes();
        if bytes > self.shard_bytes_max {
            return;
        }
        let key = self.key(instance, section_id);
        let mut shard = self.shard(key);
        // A fill of this section that took its tag later got here first:
        // keep it.
        if let Some(held) = shard.entries.get(&key) {
            if held.is(instance, section_id) && held.tag > tag {
                return;
            }
        }
        let replaced = shard.entries.insert(key, entry).map_or(0, |e| e.bytes());
        shard.bytes = shard.bytes - replaced + bytes;
        // Over budget: drop entries in the map's (arbitrary) order, never
        // the one just filled (which fits: checked above).
        while shard.bytes > self.shard_bytes_max {
            let Some(victim) = shard.entries.keys().copied().find(|k| *k != key) else {
                break;
            };
            if let Some(gone) = shard.entries.remove(&victim) {
                shard.bytes -= gone.bytes();
            }
        }
    }

    /// Hits, misses and bytes held so far.
    pub fn stats(&self) -> ReadCacheStats {
        let bytes = self
            .shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).bytes as u64)
            .sum();
        ReadCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> SectionId {
        SectionId::new(text.as_bytes())
    }

    #[test]
    fn a_fill_answers_until_a_change_to_its_stripe_begins() {
        let cache = ReadCache::new(1 << 20);
        let (a, b) = (InstanceId(7), InstanceId(7 + STRIPES as u64));
        let tag = cache.tag(a).expect("nothing is being written");
        cache.insert(a, &id("s"), tag, 100, b"old");
        assert_eq!(&*cache.get(a, &id("s")).unwrap().data, b"old");
        assert!(cache.get(a, &id("t")).is_none(), "another section");
        let writing = cache.writing([b]);
        // A change has begun (not yet visible anywhere): the entry is dead
        // already, and no fill can be tagged while it is in progress.
        assert!(cache.get(a, &id("s")).is_none());
        assert!(cache.tag(a).is_none());
        drop(writing);
        let tag = cache.tag(a).expect("the change finished");
        cache.insert(a, &id("s"), tag, 100, b"new");
        assert_eq!(&*cache.get(a, &id("s")).unwrap().data, b"new");
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses), (2, 2));
    }

    #[test]
    fn a_fill_tagged_before_a_change_began_is_not_kept() {
        let cache = ReadCache::new(1 << 20);
        let a = InstanceId(3);
        let tag = cache.tag(a).unwrap();
        // The reader took its tag (and snapshot); a change begins and
        // completes before the reader gets to insert what it read.
        drop(cache.writing([a]));
        cache.insert(a, &id("s"), tag, 100, b"read before the change");
        assert!(cache.get(a, &id("s")).is_none());
        assert_eq!(cache.stats().bytes, 0);
    }

    #[test]
    fn the_budget_holds_and_large_sections_are_not_kept() {
        let cache = ReadCache::new(SHARDS as u64 * 4096);
        let a = InstanceId(1);
        let tag = cache.tag(a).unwrap();
        for n in 0..1000 {
            cache.insert(a, &id(&format!("s{n}")), tag, 1 << 20, &[n as u8; 512]);
        }
        let held = cache.stats().bytes;
        assert!(
            held > 0 && held <= SHARDS as u64 * 4096,
            "{held} bytes held"
        );
        let big = vec![0u8; ENTRY_BYTES_MAX as usize + 1];
        cache.insert(a, &id("big"), tag, 1 << 30, &big);
        assert!(cache.get(a, &id("big")).is_none());
        let off = ReadCache::new(0);
        off.insert(a, &id("s"), off.tag(a).unwrap(), 100, b"x");
        assert!(off.get(a, &id("s")).is_none());
    }
}
