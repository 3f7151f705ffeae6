//! ckpt-client: the async Rust client of the ckpt checkpoint service, with
//! the whole SA Forum / OpenClovis checkpoint API (`clCkpt*`).
//!
//! # Use
//!
//! ```no_run
//! # async fn example() -> Result<(), ckpt_client::ClientError> {
//! use ckpt_client::Client;
//! use ckpt_proto::{CheckpointName, CreationAttributes, CreationFlags, OpenFlags, SectionId, TIME_END};
//!
//! let client = Client::connect("127.0.0.1:7400").await?;
//! let name = CheckpointName::new("app-state")?;
//! let attributes = CreationAttributes {
//!     creation_flags: CreationFlags::WR_ACTIVE_REPLICA,
//!     checkpoint_size: 4096,
//!     retention_duration_ns: TIME_END,
//!     max_sections: 1,
//!     max_section_size: 4096,
//!     max_section_id_size: 0,
//! };
//! let flags = OpenFlags::CREATE | OpenFlags::READ | OpenFlags::WRITE;
//! let checkpoint = client.open(&name, Some(attributes), flags).await?;
//! checkpoint.section_overwrite(&SectionId::DEFAULT, b"hello".to_vec()).await?;
//! checkpoint.close().await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - [`connection`]: [`Client`] and [`ClientOptions`], a session over one
//!   pipelined TCP connection at a time: the handshake, request-id routing,
//!   the in-flight bound, reconnecting to another node of the list
//!   (reopening handles, resuming subscriptions, resending pending requests
//!   with their original request ids: exactly once with the server's help).
//! - `ids`: the client's handle, iterator and dump ids, translated to each
//!   connection's.
//! - [`checkpoint`]: [`Checkpoint`] (an open handle) and [`SectionIterator`].
//! - [`subscription`]: [`Subscription`], a checkpoint's updates as a stream.
//! - [`dispatch`]: [`CkptService`], callbacks run by `dispatch`, for code
//!   ported from C.
//! - [`error`]: the error type, [`ClientError`].
//!
//! `README.md` beside this crate maps every `clCkpt*` function to its method.
//!
//! # Invariants
//!
//! - Every call ends: with the server's answer, or with an error when the
//!   client gives up reconnecting (`CL_ERR_MESSAGE_ERROR`), never a hang.
//! - A request keeps its request id for life: sent again after a reconnect
//!   or a `TRY_AGAIN`, it carries the same `(session, request_id)`, so the
//!   server applies a write once.
//! - No more than the server's `in_flight_max` requests are outstanding on a
//!   connection, and no request body exceeds its `frame_body_bytes_max`.
//! - A subscription sees its checkpoint's updates in log order without gaps,
//!   or ends, telling where to resume.

pub mod checkpoint;
pub mod connection;
pub mod dispatch;
pub mod error;
mod ids;
pub mod subscription;

#[cfg(test)]
mod testing;

pub use checkpoint::{Checkpoint, SectionIterator};
pub use connection::{
    parse_nodes, version_string, Client, ClientOptions, NOTIFICATIONS_QUEUED_MAX,
};
pub use dispatch::{Callbacks, CkptService, DispatchFlags, Invocation, SelectionObject};
pub use error::ClientError;
pub use subscription::Subscription;
