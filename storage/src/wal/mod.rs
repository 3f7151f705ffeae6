//! The write-ahead log: records, segment files, the group-commit writer.
//!
//! - [`record`]: the byte format of one state change.
//! - [`segment`]: segment files (header, naming) and scanning with torn-tail
//!   versus corruption classification, shared by recovery and `ckpt-tool`.
//! - [`mark`]: the durable mark, the lsn through which the log was synced.
//! - [`history`]: reading one checkpoint's recent records back (resuming
//!   subscribers).
//! - [`writer`]: appends batches of records to the current segment, rotates
//!   segments, deletes segments below the durable applied position.

pub mod history;
pub mod mark;
pub mod record;
pub mod segment;
pub mod writer;

pub use record::{
    Entry, Epoch, InstanceId, Lsn, Origin, Position, Record, RecordBody, Seq, WriteOp,
};
