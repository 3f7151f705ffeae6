//! The wire protocol: fixed-header frames with postcard bodies.
//!
//! ```text
//! offset size field
//!      0    4 magic        b"CKPW"
//!      4    1 version      protocol version (PROTOCOL_VERSION = 1)
//!      5    1 kind         FrameKind
//!      6    2 reserved     zero
//!      8    8 request_id   u64 LE; echoed in the answer; 0 for pushed frames
//!     16    4 body_len     u32 LE, at most the negotiated frame bound
//!     20    4 body_crc     crc32 (IEEE) of the body
//!     24    … body         postcard encoding of the kind's message type
//! ```
//!
//! Every connection opens with `Hello` → `HelloReply` (the clCkptInitialize
//! version negotiation). After it, the client sends `Request` frames, many
//! in flight, each answered by one `Response` frame with the same request
//! id, in any order. The server pushes `Notification` frames (request id 0).
//!
//! Exactly once: with a non-zero [`Hello::session`], a request frame's
//! `request_id` is the session's request number — monotonic per client
//! across all its connections (a reconnect does not restart it), and a
//! request retried after a lost connection or a `TRY_AGAIN` reuses its
//! ORIGINAL `request_id`. The server deduplicates writes by
//! `(session, request_id)`: a write it already applied is answered with its
//! first outcome instead of being applied again. With session 0 request ids
//! only route answers on one connection.
//! A frame that cannot be decoded (bad magic, version, crc, oversize) is
//! answered with a `Goodbye` frame naming the problem and the connection is
//! closed; a request that decodes but cannot be served gets an error
//! `Response` and the connection stays open.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio_util::codec::{Decoder, Encoder};

use crate::error::{CkptError, ErrorCode};
use crate::types::{
    CheckpointName, CheckpointStatus, CreationAttributes, OpenFlags, ReadElement,
    SectionCreationAttributes, SectionDescriptor, SectionId, WriteElement,
};

/// First bytes of every frame.
pub const FRAME_MAGIC: [u8; 4] = *b"CKPW";
/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u8 = 1;
/// Size of the frame header.
pub const FRAME_HEADER_BYTES: usize = 24;
/// Default bound on a frame body.
pub const FRAME_BODY_BYTES_MAX: u32 = 300 * 1024 * 1024;
/// Bound on a frame body before the handshake: a `Hello` is a version and a
/// client name, so a peer that has not said hello cannot make the server
/// buffer a large body.
pub const HELLO_BODY_BYTES_MAX: u32 = 64 * 1024;
/// Most bytes the decoder reserves ahead of a body it is waiting for: the
/// buffer then grows with the bytes that actually arrive, not with what a
/// header claims.
pub const DECODE_RESERVE_BYTES_MAX: usize = 64 * 1024;
/// Default bound on requests in flight per connection.
pub const IN_FLIGHT_MAX: u32 = 1024;

/// The API version this server implements (`ClVersionT`).
pub const API_VERSION: ApiVersion = ApiVersion {
    release_code: b'B',
    major: 1,
    minor: 1,
};

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// Client → server: [`Hello`].
    Hello = 1,
    /// Server → client: [`HelloReply`].
    HelloReply = 2,
    /// Client → server: [`Request`].
    Request = 3,
    /// Server → client: [`Response`].
    Response = 4,
    /// Server → client, unsolicited: [`Notification`].
    Notification = 5,
    /// Either way, before closing: [`Goodbye`].
    Goodbye = 6,
}

impl FrameKind {
    fn from_u8(value: u8) -> Option<FrameKind> {
        Some(match value {
            1 => FrameKind::Hello,
            2 => FrameKind::HelloReply,
            3 => FrameKind::Request,
            4 => FrameKind::Response,
            5 => FrameKind::Notification,
            6 => FrameKind::Goodbye,
            _ => return None,
        })
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the body is.
    pub kind: FrameKind,
    /// Request id (0 for pushed frames).
    pub request_id: u64,
    /// Postcard-encoded body.
    pub body: Bytes,
}

impl Frame {
    /// A frame carrying `message`.
    ///
    /// # Errors
    /// Serialization failure (not expected for our types).
    pub fn new<T: Serialize>(
        kind: FrameKind,
        request_id: u64,
        message: &T,
    ) -> Result<Frame, CkptError> {
        let mut body = postcard::to_stdvec(message).map_err(|e| {
            CkptError::new(ErrorCode::InvalidBuffer, format!("encoding a message: {e}"))
        })?;
        // The encoder grows its buffer by doubling; a frame may wait in a
        // queue, so it should hold only its own bytes.
        body.shrink_to_fit();
        Ok(Frame {
            kind,
            request_id,
            body: Bytes::from(body),
        })
    }

    /// Decodes the body as `T`.
    ///
    /// # Errors
    /// `INVALID_BUFFER` when the body is not a valid `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, CkptError> {
        postcard::from_bytes(&self.body).map_err(|e| {
            CkptError::new(
                ErrorCode::InvalidBuffer,
                format!("malformed {:?} body: {e}", self.kind),
            )
        })
    }
}

/// Why bytes are not a frame. Any of these ends the connection.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The first bytes are not [`FRAME_MAGIC`].
    #[error("bad frame magic {0:02x?}")]
    BadMagic([u8; 4]),
    /// A frame of another protocol version.
    #[error("unsupported protocol version {0} (this build speaks {PROTOCOL_VERSION})")]
    Version(u8),
    /// An unknown frame kind.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The reserved header bytes are not zero (a newer peer's extension).
    #[error("reserved header bytes are {0:#06x}, not zero")]
    Reserved(u16),
    /// The body is larger than allowed.
    #[error("frame body of {len} bytes exceeds the bound of {max}")]
    TooLarge { len: u32, max: u32 },
    /// The body's checksum does not match.
    #[error("frame body checksum mismatch")]
    Checksum,
    /// Socket error.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// The code a peer is told before the connection closes.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::BadMagic(_)
            | FrameError::UnknownKind(_)
            | FrameError::Reserved(_)
            | FrameError::Checksum => ErrorCode::InvalidBuffer,
            FrameError::Version(_) => ErrorCode::VersionMismatch,
            FrameError::TooLarge { .. } => ErrorCode::TooBig,
            FrameError::Io(_) => ErrorCode::MessageError,
        }
    }
}

/// tokio-util codec for [`Frame`]s with a body bound.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    body_bytes_max: u32,
}

impl FrameCodec {
    /// A codec refusing bodies over `body_bytes_max`.
    pub fn new(body_bytes_max: u32) -> Self {
        FrameCodec { body_bytes_max }
    }

    /// Changes the bound (after the handshake, for example).
    pub fn set_body_bytes_max(&mut self, body_bytes_max: u32) {
        self.body_bytes_max = body_bytes_max;
    }

    /// The bound on bodies.
    pub fn body_bytes_max(&self) -> u32 {
        self.body_bytes_max
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(FRAME_BODY_BYTES_MAX)
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if src.len() < FRAME_HEADER_BYTES {
            // Reject garbage as soon as its first bytes show it.
            let seen = src.len().min(4);
            if src[..seen] != FRAME_MAGIC[..seen] {
                let mut magic = [0u8; 4];
                magic[..seen].copy_from_slice(&src[..seen]);
                return Err(FrameError::BadMagic(magic));
            }
            return Ok(None);
        }
        let mut magic = [0u8; 4];
        magic.copy_from_slice(&src[0..4]);
        if magic != FRAME_MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        if src[4] != PROTOCOL_VERSION {
            return Err(FrameError::Version(src[4]));
        }
        let kind = FrameKind::from_u8(src[5]).ok_or(FrameError::UnknownKind(src[5]))?;
        let reserved = u16::from_le_bytes([src[6], src[7]]);
        if reserved != 0 {
            return Err(FrameError::Reserved(reserved));
        }
        let mut header = &src[8..FRAME_HEADER_BYTES];
        let request_id = header.get_u64_le();
        let body_len = header.get_u32_le();
        let body_crc = header.get_u32_le();
        if body_len > self.body_bytes_max {
            return Err(FrameError::TooLarge {
                len: body_len,
                max: self.body_bytes_max,
            });
        }
        let total = FRAME_HEADER_BYTES + body_len as usize;
        if src.len() < total {
            src.reserve((total - src.len()).min(DECODE_RESERVE_BYTES_MAX));
            return Ok(None);
        }
        src.advance(FRAME_HEADER_BYTES);
        let body = src.split_to(body_len as usize).freeze();
        if crc32fast::hash(&body) != body_crc {
            return Err(FrameError::Checksum);
        }
        Ok(Some(Frame {
            kind,
            request_id,
            body,
        }))
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        let len = u32::try_from(frame.body.len()).unwrap_or(u32::MAX);
        if len > self.body_bytes_max {
            return Err(FrameError::TooLarge {
                len,
                max: self.body_bytes_max,
            });
        }
        dst.reserve(FRAME_HEADER_BYTES + frame.body.len());
        dst.put_slice(&FRAME_MAGIC);
        dst.put_u8(PROTOCOL_VERSION);
        dst.put_u8(frame.kind as u8);
        dst.put_u16_le(0);
        dst.put_u64_le(frame.request_id);
        dst.put_u32_le(len);
        dst.put_u32_le(crc32fast::hash(&frame.body));
        dst.put_slice(&frame.body);
        Ok(())
    }
}

/// `ClVersionT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiVersion {
    /// Release code letter, `'B'`.
    pub release_code: u8,
    /// Major version.
    pub major: u8,
    /// Minor version.
    pub minor: u8,
}

impl ApiVersion {
    /// The SA Forum negotiation: same release code and a major version the
    /// server has. The answer always carries the version the server supports.
    pub fn negotiate(requested: ApiVersion) -> Result<ApiVersion, ApiVersion> {
        if requested.release_code == API_VERSION.release_code
            && requested.major <= API_VERSION.major
        {
            Ok(API_VERSION)
        } else {
            Err(API_VERSION)
        }
    }
}

/// The first frame of a connection (clCkptInitialize).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The API version the client asks for.
    pub version: ApiVersion,
    /// Free text for logs.
    pub client_name: String,
    /// The client's session for exactly-once writes: random and non-zero,
    /// chosen once per client and sent again on every reconnect, so a
    /// request retried on another connection (or node) is recognised by
    /// `(session, request_id)`. `0` means no session: requests are not
    /// deduplicated.
    pub session: u64,
}

/// The server's answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    /// `None` on success; `VERSION_MISMATCH` otherwise (then the server closes).
    pub error: Option<CkptError>,
    /// The version granted; with `VERSION_MISMATCH`, the version the server
    /// supports, which the client hands back to its caller as data (the INOUT
    /// `version` of clCkptInitialize).
    pub version: ApiVersion,
    /// Largest frame body the server accepts.
    pub frame_body_bytes_max: u32,
    /// Most requests the server lets one connection have in flight.
    pub in_flight_max: u32,
}

/// A checkpoint handle on a connection.
pub type Handle = u64;
/// A section iterator on a connection.
pub type IteratorHandle = u64;

/// A client request. Each is one function of the API reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// clCkptCheckpointOpen / OpenAsync.
    Open {
        name: CheckpointName,
        attributes: Option<CreationAttributes>,
        flags: OpenFlags,
    },
    /// clCkptCheckpointClose.
    Close { handle: Handle },
    /// clCkptCheckpointDelete.
    Delete { name: CheckpointName },
    /// clCkptCheckpointRetentionDurationSet.
    RetentionDurationSet {
        handle: Handle,
        retention_duration_ns: i64,
    },
    /// clCkptActiveReplicaSet.
    ActiveReplicaSet { handle: Handle },
    /// clCkptCheckpointStatusGet.
    StatusGet { handle: Handle },
    /// clCkptSectionCreate.
    SectionCreate {
        handle: Handle,
        attributes: SectionCreationAttributes,
        #[serde(with = "serde_bytes")]
        initial_data: Vec<u8>,
    },
    /// clCkptSectionDelete.
    SectionDelete {
        handle: Handle,
        section_id: SectionId,
    },
    /// clCkptSectionExpirationTimeSet.
    SectionExpirationTimeSet {
        handle: Handle,
        section_id: SectionId,
        expiration_time: i64,
    },
    /// clCkptSectionOverwrite.
    SectionOverwrite {
        handle: Handle,
        section_id: SectionId,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// clCkptCheckpointWrite.
    Write {
        handle: Handle,
        elements: Vec<WriteElement>,
    },
    /// clCkptCheckpointRead.
    Read {
        handle: Handle,
        elements: Vec<ReadElement>,
    },
    /// clCkptCheckpointSynchronize / SynchronizeAsync.
    Synchronize { handle: Handle },
    /// clCkptSectionIterationInitialize.
    IterationInitialize {
        handle: Handle,
        sections_chosen: u32,
        expiration_time: i64,
    },
    /// clCkptSectionIterationNext.
    IterationNext { iterator: IteratorHandle },
    /// clCkptSectionIterationFinalize.
    IterationFinalize { iterator: IteratorHandle },
    /// clCkptImmediateConsumptionRegister; `resume_after` is the last
    /// sequence number the subscriber saw, to resume without gaps.
    ImmediateConsumptionRegister {
        handle: Handle,
        resume_after: Option<u64>,
    },
    /// Every checkpoint name with its status (ckpt-tool ls).
    List,
    /// One checkpoint's status by name (ckpt-tool stat).
    Stat { name: CheckpointName },
    /// clCkptFinalize: closes every handle of the connection.
    Finalize,
    /// Starts a consistent point-in-time dump of the named checkpoints (all
    /// when empty): their attributes and section lists, from one snapshot.
    DumpBegin { names: Vec<CheckpointName> },
    /// Reads section data from a dump's snapshot (at most 16 MiB per call).
    DumpRead {
        dump: u64,
        checkpoint: u32,
        section_id: SectionId,
        offset: u64,
        size: u64,
    },
    /// Releases a dump's snapshot.
    DumpEnd { dump: u64 },
    /// Recreates a checkpoint from a dump (exact attributes and generated-id
    /// counter) and opens it for writing; with `replace` an existing one of
    /// that name is deleted first.
    Restore {
        name: CheckpointName,
        attributes: CreationAttributes,
        generated_next: u64,
        replace: bool,
    },
    /// Recreates a section from a dump, expiration time included.
    RestoreSection {
        handle: Handle,
        section_id: SectionId,
        expiration_time: i64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Node-wide figures (log footprint, checkpoint count).
    ServerStatus,
}

impl Request {
    /// Checks what decoding cannot: every checkpoint name's bounds.
    ///
    /// # Errors
    /// `INVALID_PARAMETER` for an empty name, `NAME_TOO_LONG` for one over
    /// 256 bytes.
    pub fn validate(&self) -> Result<(), CkptError> {
        match self {
            Request::Open { name, .. }
            | Request::Delete { name }
            | Request::Stat { name }
            | Request::Restore { name, .. } => name.validate(),
            Request::DumpBegin { names } => names.iter().try_for_each(CheckpointName::validate),
            _ => Ok(()),
        }
    }
}

/// One checkpoint as `List`/`Stat` report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// Its name.
    pub name: CheckpointName,
    /// Attributes and usage.
    pub status: CheckpointStatus,
    /// Handles open on it across the cluster.
    pub open_count: u32,
    /// Its current update sequence number.
    pub seq: u64,
    /// Bytes its data takes in RocksDB (SST files and memtables, estimated).
    pub footprint_bytes: u64,
    /// Nodes holding a replica (1 on a single node).
    pub replicas: u32,
}

/// One checkpoint in a dump, as of the dump's snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpCheckpoint {
    /// Its name.
    pub name: CheckpointName,
    /// Creation attributes (retention as last set).
    pub attributes: CreationAttributes,
    /// The generated-id counter.
    pub generated_next: u64,
    /// Its update sequence number at the snapshot.
    pub seq: u64,
    /// Every section, in id order.
    pub sections: Vec<SectionDescriptor>,
}

/// Node-wide figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    /// Named checkpoints.
    pub checkpoints: u64,
    /// Bytes of write-ahead log segments on disk.
    pub wal_bytes: u64,
    /// Write-ahead log segment files.
    pub wal_segments: u64,
}

/// The successful answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Nothing to return.
    Done,
    /// `Open`: the new handle and whether the checkpoint was created.
    Opened { handle: Handle, created: bool },
    /// `SectionCreate`: the section's id (generated ids are chosen here).
    SectionCreated { section_id: SectionId },
    /// `StatusGet`.
    Status(CheckpointStatus),
    /// `Read`: the bytes read for each element.
    Data(#[serde(with = "crate::bytes_list")] Vec<Vec<u8>>),
    /// `IterationInitialize`.
    Iterator { iterator: IteratorHandle },
    /// `IterationNext`.
    Section(SectionDescriptor),
    /// `ImmediateConsumptionRegister`: the sequence number of the first
    /// notification that will follow.
    Registered { next_seq: u64 },
    /// `List`.
    Checkpoints(Vec<CheckpointInfo>),
    /// `Stat`.
    Checkpoint(CheckpointInfo),
    /// `DumpBegin`.
    Dump {
        dump: u64,
        checkpoints: Vec<DumpCheckpoint>,
    },
    /// `ServerStatus`.
    ServerStatus(ServerStatus),
}

/// The answer to a request: a reply or an error with its code.
pub type Response = Result<Reply, CkptError>;

/// What changed in a checkpoint, as pushed to subscribers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// A section was created with this data.
    SectionCreated {
        section_id: SectionId,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Bytes were written.
    Written { elements: Vec<WriteElement> },
    /// A section's data was replaced.
    Overwritten {
        section_id: SectionId,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// A section was deleted (or expired).
    SectionDeleted {
        section_id: SectionId,
        expired: bool,
    },
    /// A section's expiration time changed.
    ExpirationSet {
        section_id: SectionId,
        expiration_time: i64,
    },
    /// The retention duration changed.
    RetentionSet { retention_duration_ns: i64 },
    /// The checkpoint was deleted (its name removed).
    Deleted,
}

/// A server push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Notification {
    /// A committed update, in log order; `seq` increases by one per update
    /// of the checkpoint.
    Update {
        handle: Handle,
        name: CheckpointName,
        seq: u64,
        change: Change,
    },
    /// Updates after `after_seq` are no longer held: re-read the checkpoint,
    /// then updates continue from `next_seq`.
    Resync {
        handle: Handle,
        after_seq: u64,
        next_seq: u64,
    },
}

/// Sent before a side closes the connection on purpose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Goodbye {
    /// Why.
    pub error: CkptError,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(frame: Frame) -> BytesMut {
        let mut buf = BytesMut::new();
        FrameCodec::default().encode(frame, &mut buf).unwrap();
        buf
    }

    #[test]
    fn frames_round_trip_byte_by_byte() {
        let request = Request::Delete {
            name: CheckpointName::new("x").unwrap(),
        };
        let frame = Frame::new(FrameKind::Request, 7, &request).unwrap();
        let bytes = encode(frame.clone());
        assert_eq!(&bytes[0..4], b"CKPW");
        assert_eq!(bytes[4], 1);
        assert_eq!(bytes[5], FrameKind::Request as u8);
        assert_eq!(&bytes[8..16], &7u64.to_le_bytes());
        assert_eq!(&bytes[16..20], &(frame.body.len() as u32).to_le_bytes());
        // Fed one byte at a time, the decoder waits, then yields the frame.
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        for (i, byte) in bytes.iter().enumerate() {
            buf.put_u8(*byte);
            let out = codec.decode(&mut buf).unwrap();
            if i + 1 < bytes.len() {
                assert!(out.is_none());
            } else {
                let got = out.unwrap();
                assert_eq!(got, frame);
                assert_eq!(got.decode::<Request>().unwrap(), request);
            }
        }
    }

    #[test]
    fn bad_frames_are_refused() {
        let frame = Frame::new(FrameKind::Request, 1, &Request::List).unwrap();
        let good = encode(frame);
        let mut bad_magic = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        assert!(matches!(
            FrameCodec::default().decode(&mut bad_magic),
            Err(FrameError::BadMagic(_))
        ));
        let mut version = good.clone();
        version[4] = 9;
        assert_eq!(
            FrameCodec::default()
                .decode(&mut version)
                .unwrap_err()
                .code(),
            ErrorCode::VersionMismatch
        );
        let mut kind = good.clone();
        kind[5] = 99;
        assert!(matches!(
            FrameCodec::default().decode(&mut kind),
            Err(FrameError::UnknownKind(99))
        ));
        let mut crc = good.clone();
        let last = crc.len() - 1;
        crc[last] ^= 1;
        crc[20] ^= 0; // body crc unchanged, body changed
        assert!(matches!(
            FrameCodec::default().decode(&mut crc),
            Err(FrameError::Checksum)
        ));
        let mut reserved = good.clone();
        reserved[7] = 1;
        assert!(matches!(
            FrameCodec::default().decode(&mut reserved),
            Err(FrameError::Reserved(0x100))
        ));
        let mut huge = good.clone();
        huge[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            FrameCodec::new(1024).decode(&mut huge),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_claimed_length_reserves_at_most_a_bounded_amount() {
        let frame = Frame::new(FrameKind::Hello, 0, &Request::List).unwrap();
        let mut header = encode(frame);
        header.truncate(FRAME_HEADER_BYTES);
        header[16..20].copy_from_slice(&(200u32 << 20).to_le_bytes());
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&header);
        let mut codec = FrameCodec::default();
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(
            buf.capacity() <= FRAME_HEADER_BYTES + 2 * DECODE_RESERVE_BYTES_MAX,
            "reserved {} bytes for a claimed 200 MiB body",
            buf.capacity()
        );
        // Before the handshake the bound is small: the claim is refused.
        codec.set_body_bytes_max(HELLO_BODY_BYTES_MAX);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn hello_carries_its_session() {
        for session in [0, 1, 0x8000_0000_0000_0001, u64::MAX] {
            let hello = Hello {
                version: API_VERSION,
                client_name: "test".to_string(),
                session,
            };
            let frame = Frame::new(FrameKind::Hello, 0, &hello).unwrap();
            let mut buf = encode(frame);
            let got = FrameCodec::default().decode(&mut buf).unwrap().unwrap();
            assert_eq!(got.kind, FrameKind::Hello);
            let decoded: Hello = got.decode().unwrap();
            assert_eq!(decoded, hello);
            assert_eq!(decoded.session, session);
        }
        // A Hello without the session (an older client) is refused as
        // malformed rather than read with a made-up session.
        let old = postcard::to_stdvec(&(API_VERSION, "old".to_string())).unwrap();
        let frame = Frame {
            kind: FrameKind::Hello,
            request_id: 0,
            body: Bytes::from(old),
        };
        assert_eq!(
            frame.decode::<Hello>().unwrap_err().code,
            ErrorCode::InvalidBuffer
        );
    }

    #[test]
    fn version_negotiation() {
        assert_eq!(
            ApiVersion::negotiate(ApiVersion {
                release_code: b'B',
                major: 1,
                minor: 0
            }),
            Ok(API_VERSION)
        );
        assert_eq!(
            ApiVersion::negotiate(ApiVersion {
                release_code: b'B',
                major: 2,
                minor: 0
            }),
            Err(API_VERSION)
        );
        assert_eq!(
            ApiVersion::negotiate(ApiVersion {
                release_code: b'A',
                major: 1,
                minor: 1
            }),
            Err(API_VERSION)
        );
    }

    #[test]
    fn responses_carry_codes_and_indices() {
        let response: Response = Err(CkptError::new(ErrorCode::NotExist, "no").at_index(2));
        let frame = Frame::new(FrameKind::Response, 3, &response).unwrap();
        assert_eq!(frame.decode::<Response>().unwrap(), response);
        let garbage = Frame {
            kind: FrameKind::Response,
            request_id: 3,
            body: Bytes::from_static(&[0xff, 0xff]),
        };
        assert_eq!(
            garbage.decode::<Response>().unwrap_err().code,
            ErrorCode::InvalidBuffer
        );
    }
}

#[cfg(test)]
mod golden {
    use super::*;

    /// The example frame of docs/protocol.md, byte for byte.
    #[test]
    fn documented_example_frame() {
        let mut buf = BytesMut::new();
        FrameCodec::default()
            .encode(
                Frame::new(FrameKind::Request, 7, &Request::List).unwrap(),
                &mut buf,
            )
            .unwrap();
        let expected: Vec<u8> = vec![
            0x43, 0x4b, 0x50, 0x57, 0x01, 0x03, 0x00, 0x00, 0x07, 0, 0, 0, 0, 0, 0, 0, 0x01, 0, 0,
            0, 0x7f, 0xcf, 0xb2, 0xb8, 0x11,
        ];
        assert_eq!(buf.to_vec(), expected);
    }
}

#[cfg(test)]
mod byte_strings {
    use super::*;

    /// Byte strings are encoded as a varint length and the raw bytes, the
    /// same bytes postcard gives a sequence of u8 (docs/protocol.md).
    #[test]
    fn byte_strings_are_length_and_bytes() {
        let request = Request::SectionOverwrite {
            handle: 1,
            section_id: SectionId::new("ab"),
            data: vec![7, 8, 9],
        };
        let body = postcard::to_stdvec(&request).unwrap();
        assert_eq!(body, vec![9, 1, 2, b'a', b'b', 3, 7, 8, 9]);
        let as_seq = postcard::to_stdvec(&(9u8, 1u8, vec![b'a', b'b'], vec![7u8, 8, 9])).unwrap();
        assert_eq!(body, as_seq);
    }
}
