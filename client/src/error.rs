//! [`ClientError`]: what every call of the client library fails with.
//!
//! A server-side failure arrives as a [`CkptError`] and keeps its code,
//! detail and failing element index. Failures of the connection itself (the
//! server closed it, sent a frame we cannot decode, or the socket broke) are
//! all `CL_ERR_MESSAGE_ERROR`, so a caller can tell "the server said no"
//! from "we do not know what happened" with [`ClientError::is_connection_lost`].

use ckpt_proto::wire::ApiVersion;
use ckpt_proto::{CkptError, ErrorCode};

/// A failed call: the OpenClovis code, a message naming what went wrong and,
/// for multi-element writes and reads, the index of the first failing element
/// (`erroneousVectorIndex`).
///
/// Displays as `CL_ERR_NAME: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.cl_name())]
pub struct ClientError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// What exactly went wrong.
    pub message: String,
    /// The first failing element of a write or read, when the server named one.
    pub index: Option<u32>,
    /// On `VERSION_MISMATCH` from [`crate::Client::connect_with_version`] or
    /// [`crate::CkptService::initialize`]: the version the server supports,
    /// the INOUT `version` of clCkptInitialize. `None` on every other error.
    pub supported_version: Option<ApiVersion>,
}

impl ClientError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ClientError {
            code,
            message: message.into(),
            index: None,
            supported_version: None,
        }
    }

    /// The connection is gone (closed by the server, broken, or finalized):
    /// code `CL_ERR_MESSAGE_ERROR`.
    pub fn connection_lost(message: impl Into<String>) -> Self {
        ClientError::new(ErrorCode::MessageError, message)
    }

    /// Whether the call failed because the connection is gone, so its outcome
    /// on the server is unknown (a write may or may not have been applied).
    pub fn is_connection_lost(&self) -> bool {
        self.code == ErrorCode::MessageError
    }

    /// The server answered with a reply of the wrong kind: a protocol bug.
    pub(crate) fn unexpected_reply(request: &str, reply: &ckpt_proto::wire::Reply) -> Self {
        ClientError::new(
            ErrorCode::InvalidBuffer,
            format!("protocol error: the server answered {request} with {reply:?}"),
        )
    }
}

impl From<CkptError> for ClientError {
    fn from(error: CkptError) -> Self {
        ClientError {
            code: error.code,
            message: error.detail,
            index: error.index,
            supported_version: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_code_detail_and_index() {
        let error: ClientError =
            CkptError::new(ErrorCode::NoSpace, "section c1 would exceed 10 bytes")
                .at_index(3)
                .into();
        assert_eq!(error.code, ErrorCode::NoSpace);
        assert_eq!(error.index, Some(3));
        assert_eq!(
            error.to_string(),
            "CL_ERR_NO_SPACE: section c1 would exceed 10 bytes"
        );
        assert!(!error.is_connection_lost());
        assert!(ClientError::connection_lost("gone").is_connection_lost());
    }
}
