//! The user-facing error code: one enum, mapped 1:1 to the OpenClovis
//! `CL_ERR_*` values of `clCommonErrors.h` plus the checkpoint service's own
//! `CL_CKPT_ERR_NO_SECTIONS`.
//!
//! A return code on the wire and in the C API is `(component << 16) | code`
//! with the checkpoint service's component id [`CKPT_COMPONENT_ID`] (0x16);
//! `CL_OK` is 0 with no component. The matching SA Forum `SaAisErrorT` is
//! given for each code so operators coming from OpenSAF can read our logs.

use serde::{Deserialize, Serialize};

/// The component id of the checkpoint service in OpenClovis return codes.
pub const CKPT_COMPONENT_ID: u32 = 0x16;

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident = $value:literal, $cl:literal, $sa:literal, $msg:literal; )*) => {
        /// A failure a caller can see. Every variant has a stable numeric
        /// value (the OpenClovis code) and a message.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[repr(u32)]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant = $value, )*
        }

        impl ErrorCode {
            /// Every code, in numeric order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The OpenClovis code without the component id (`CL_ERR_*`).
            pub fn code(self) -> u32 {
                self as u32
            }

            /// The OpenClovis macro name, e.g. `CL_ERR_NO_SPACE`.
            pub fn cl_name(self) -> &'static str {
                match self { $( ErrorCode::$variant => $cl, )* }
            }

            /// The closest SA Forum `SaAisErrorT` name.
            pub fn sa_ais_name(self) -> &'static str {
                match self { $( ErrorCode::$variant => $sa, )* }
            }

            /// A one-line explanation for humans.
            pub fn message(self) -> &'static str {
                match self { $( ErrorCode::$variant => $msg, )* }
            }

            /// The code from its OpenClovis value, with or without the
            /// component id in the upper 16 bits.
            pub fn from_code(value: u32) -> Option<ErrorCode> {
                match value & 0xffff {
                    $( $value => Some(ErrorCode::$variant), )*
                    _ => None,
                }
            }
        }
    };
}

error_codes! {
    /// Memory could not be allocated.
    NoMemory = 0x01, "CL_ERR_NO_MEMORY", "SA_AIS_ERR_NO_MEMORY", "out of memory";
    /// A parameter is out of its allowed range or inconsistent.
    InvalidParameter = 0x02, "CL_ERR_INVALID_PARAMETER", "SA_AIS_ERR_INVALID_PARAM", "invalid parameter";
    /// A required parameter is missing.
    NullPointer = 0x03, "CL_ERR_NULL_POINTER", "SA_AIS_ERR_INVALID_PARAM", "a required parameter is missing";
    /// The named checkpoint or section does not exist.
    NotExist = 0x04, "CL_ERR_NOT_EXIST", "SA_AIS_ERR_NOT_EXIST", "does not exist";
    /// The handle is not open or was never valid.
    InvalidHandle = 0x05, "CL_ERR_INVALID_HANDLE", "SA_AIS_ERR_BAD_HANDLE", "invalid handle";
    /// A buffer is malformed.
    InvalidBuffer = 0x06, "CL_ERR_INVALID_BUFFER", "SA_AIS_ERR_INVALID_PARAM", "invalid buffer";
    /// The operation is not available in this build.
    NotImplemented = 0x07, "CL_ERR_NOT_IMPLEMENTED", "SA_AIS_ERR_NOT_SUPPORTED", "not implemented";
    /// A duplicate entry.
    Duplicate = 0x08, "CL_ERR_DUPLICATE", "SA_AIS_ERR_EXIST", "duplicate entry";
    /// A destination queue is not available.
    QueueNotAvailable = 0x09, "CL_ERR_QUEUE_NOT_AVAILABLE", "SA_AIS_ERR_UNAVAILABLE", "queue not available";
    /// A value is out of range.
    OutOfRange = 0x0a, "CL_ERR_OUT_OF_RANGE", "SA_AIS_ERR_INVALID_PARAM", "out of range";
    /// A resource other than memory is exhausted.
    NoResource = 0x0b, "CL_ERR_NO_RESOURCE", "SA_AIS_ERR_NO_RESOURCES", "out of resources";
    /// Already initialized.
    Initialized = 0x0c, "CL_ERR_INITIALIZED", "SA_AIS_ERR_EXIST", "already initialized";
    /// A buffer is too small for the result.
    BufferOverrun = 0x0d, "CL_ERR_BUFFER_OVERRUN", "SA_AIS_ERR_NO_SPACE", "buffer overrun";
    /// The service or library is not initialized (or the store is poisoned).
    NotInitialized = 0x0e, "CL_ERR_NOT_INITIALIZED", "SA_AIS_ERR_LIBRARY", "not initialized";
    /// The requested version is not supported.
    VersionMismatch = 0x0f, "CL_ERR_VERSION_MISMATCH", "SA_AIS_ERR_VERSION", "version mismatch";
    /// The checkpoint or section already exists (with other attributes).
    AlreadyExist = 0x10, "CL_ERR_ALREADY_EXIST", "SA_AIS_ERR_EXIST", "already exists";
    /// An error without a more precise code.
    Unspecified = 0x11, "CL_ERR_UNSPECIFIED", "SA_AIS_ERR_LIBRARY", "unspecified error";
    /// The object is in a state that does not allow the operation.
    InvalidState = 0x12, "CL_ERR_INVALID_STATE", "SA_AIS_ERR_BAD_OPERATION", "invalid state";
    /// The entry does not exist.
    DoesntExist = 0x13, "CL_ERR_DOESNT_EXIST", "SA_AIS_ERR_NOT_EXIST", "entry does not exist";
    /// The call did not complete within its timeout.
    Timeout = 0x14, "CL_ERR_TIMEOUT", "SA_AIS_ERR_TIMEOUT", "timed out";
    /// The resource is in use (e.g. a data directory held by another process).
    InUse = 0x15, "CL_ERR_INUSE", "SA_AIS_ERR_BUSY", "in use";
    /// Transient condition; retry later.
    TryAgain = 0x16, "CL_ERR_TRY_AGAIN", "SA_AIS_ERR_TRY_AGAIN", "try again later";
    /// No callback is registered for the request.
    NoCallback = 0x17, "CL_ERR_NO_CALLBACK", "SA_AIS_ERR_INIT", "no callback registered";
    /// A mutex failed.
    MutexError = 0x18, "CL_ERR_MUTEX_ERROR", "SA_AIS_ERR_LIBRARY", "mutex error";
    /// Nothing to do.
    NoOp = 0x19, "CL_ERR_NO_OP", "SA_AIS_ERR_NO_OP", "no operation";
    /// A name is longer than allowed.
    NameTooLong = 0x1a, "CL_ERR_NAME_TOO_LONG", "SA_AIS_ERR_NAME_TOO_LONG", "name too long";
    /// The name cannot be found.
    NameNotFound = 0x1b, "CL_ERR_NAME_NOT_FOUND", "SA_AIS_ERR_NAME_NOT_FOUND", "name not found";
    /// A communication error occurred.
    MessageError = 0x1c, "CL_ERR_MESSAGE_ERROR", "SA_AIS_ERR_MESSAGE_ERROR", "communication error";
    /// A value is larger than permitted.
    TooBig = 0x1d, "CL_ERR_TOO_BIG", "SA_AIS_ERR_TOO_BIG", "value too big";
    /// No (more) sections match (common code; the iterator returns [`ErrorCode::NoSections`]).
    CommonNoSections = 0x1e, "CL_ERR_NO_SECTIONS", "SA_AIS_ERR_NO_SECTIONS", "no sections";
    /// The operation failed.
    FailedOperation = 0x1f, "CL_ERR_FAILED_OPERATION", "SA_AIS_ERR_FAILED_OPERATION", "operation failed";
    /// The handle's access mode does not allow the operation.
    OpNotPermitted = 0x20, "CL_ERR_OP_NOT_PERMITTED", "SA_AIS_ERR_ACCESS", "operation not permitted";
    /// A size limit would be exceeded, or the disk is full.
    NoSpace = 0x21, "CL_ERR_NO_SPACE", "SA_AIS_ERR_NO_SPACE", "no space";
    /// A flag is unknown or not allowed here.
    BadFlag = 0x22, "CL_ERR_BAD_FLAG", "SA_AIS_ERR_BAD_FLAGS", "bad flag";
    /// The operation is not valid on this object.
    BadOperation = 0x23, "CL_ERR_BAD_OPERATION", "SA_AIS_ERR_BAD_OPERATION", "bad operation";
    /// A system call failed (IO error, poisoned store).
    Library = 0x24, "CL_ERR_LIBRARY", "SA_AIS_ERR_LIBRARY", "system or library failure";
    /// The feature is not supported.
    NotSupported = 0x25, "CL_ERR_NOT_SUPPORTED", "SA_AIS_ERR_NOT_SUPPORTED", "not supported";
    /// The operation was interrupted.
    Interrupt = 0x26, "CL_ERR_INTERRUPT", "SA_AIS_ERR_INTERRUPT", "interrupted";
    /// Continue.
    Continue = 0x27, "CL_ERR_CONTINUE", "SA_AIS_ERR_TRY_AGAIN", "continue";
    /// The section iterator has no more sections (`CL_CKPT_ERR_NO_SECTIONS`).
    NoSections = 0x101, "CL_CKPT_ERR_NO_SECTIONS", "SA_AIS_ERR_NO_SECTIONS", "no more sections";
}

impl ErrorCode {
    /// The full OpenClovis return code: `(0x16 << 16) | code`.
    pub fn rc(self) -> u32 {
        (CKPT_COMPONENT_ID << 16) | self.code()
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (0x{:x}): {}",
            self.cl_name(),
            self.rc(),
            self.message()
        )
    }
}

/// An [`ErrorCode`] with a message that says what exactly went wrong, and for
/// multi-element writes and reads the index of the first failing element.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct CkptError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// Human-readable detail naming the offending value.
    pub detail: String,
    /// For writes and reads of several elements: the index of the first
    /// element that failed (`erroneousVectorIndex`).
    pub index: Option<u32>,
}

impl CkptError {
    /// A new error with a detail message.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        CkptError {
            code,
            detail: detail.into(),
            index: None,
        }
    }

    /// The same error, tagged with the failing element's index.
    pub fn at_index(mut self, index: u32) -> Self {
        self.index = Some(index);
        self
    }
}

/// Shorthand for results carrying a [`CkptError`].
pub type CkptResult<T> = Result<T, CkptError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for &code in ErrorCode::ALL {
            assert!(seen.insert(code.code()), "duplicate value for {code:?}");
            assert_eq!(ErrorCode::from_code(code.code()), Some(code));
            assert_eq!(ErrorCode::from_code(code.rc()), Some(code));
            assert!(!code.message().is_empty());
        }
        assert_eq!(ErrorCode::from_code(0), None);
        assert_eq!(ErrorCode::from_code(0x28), None);
    }

    #[test]
    fn values_match_openclovis_headers() {
        assert_eq!(ErrorCode::NoSpace.code(), 0x21);
        assert_eq!(ErrorCode::BadFlag.code(), 0x22);
        assert_eq!(ErrorCode::AlreadyExist.code(), 0x10);
        assert_eq!(ErrorCode::NotExist.code(), 0x04);
        assert_eq!(ErrorCode::TryAgain.code(), 0x16);
        assert_eq!(ErrorCode::NoSections.rc(), 0x0016_0101);
        assert_eq!(ErrorCode::InvalidParameter.rc(), 0x0016_0002);
        assert_eq!(
            ErrorCode::NoSpace.to_string(),
            "CL_ERR_NO_SPACE (0x160021): no space"
        );
    }
}
