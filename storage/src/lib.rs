//! ckpt-storage: one node's durable checkpoint store.
//!
//! Layout:
//! - [`io`]: the file trait every WAL access goes through, the real
//!   implementation and a fault-injecting one (power loss, failed writes and
//!   fsyncs, full disk).
//! - [`wal`]: record format, segment files, the appending writer.
//! - [`state`]: the checkpoint state machine — validation of operations into
//!   records and their application — with no IO.
//! - [`db`]: RocksDB layout: a fixed set of data column families keyed by
//!   instance id, the metadata column family, chunked section data.
//! - [`store`]: group commit, recovery, reads.
//! - [`inspect`]: the same store read-only — recovery replayed in memory
//!   over a read-only RocksDB, a WAL reader and `verify` — for offline
//!   inspection that changes no byte.
//! - [`reserve`]: space kept back so deletes and recovery work on a full disk.
//!
//! Invariants:
//! - a record is logged only after validation, so a rejected operation
//!   leaves no trace;
//! - an operation answered as durable has its record fsynced in the log;
//! - RocksDB holds exactly the effects of the log's records up to its
//!   applied position, written in the same batch as that position;
//! - the log keeps every record above RocksDB's *durable* applied position.
//!
//! The `engine` feature (on by default) brings RocksDB and the store; the
//! log format, the file layer and the state machine compile without it, so
//! the fuzz targets build in seconds instead of rebuilding RocksDB.

#[cfg(feature = "engine")]
pub mod db;
#[cfg(feature = "engine")]
pub mod inspect;
pub mod io;
pub mod lock;
#[cfg(feature = "engine")]
pub mod read_cache;
pub mod reserve;
pub mod snapshot;
pub mod state;
#[cfg(feature = "engine")]
pub mod store;
pub mod wal;

#[cfg(feature = "engine")]
pub use db::{memory_only, DbOptions, RocksWalMode, CHUNK_BYTES};
#[cfg(feature = "engine")]
pub use inspect::{ReadOnlyStore, WalReader};
pub use io::{FaultFs, OsFs, WalFile, WalFs};
pub use lock::DataDirLock;
#[cfg(feature = "engine")]
pub use read_cache::ReadCacheStats;
pub use snapshot::{
    decode_entries, encode_entries, EntriesAfter, SnapshotPart, SNAPSHOT_PART_BYTES,
};
pub use state::{Committed, InstanceMeta, Op, Outcome, SectionMeta, Totals};
#[cfg(feature = "engine")]
pub use store::{
    AppendListener, CommitListener, Durability, DurableListener, ReadAfter, RecoveryReport, Store,
    StoreConfig, StoreSnapshot, StoreStats, Submission, WriteStages,
};
pub use wal::history::InstanceHistory;
pub use wal::{Entry, Epoch, InstanceId, Lsn, Origin, Position, Record, RecordBody, Seq};
