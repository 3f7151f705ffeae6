//! ckpt-proto: the shared vocabulary of ckpt.
//!
//! Layout:
//! - [`error`]: [`ErrorCode`], mapped 1:1 to OpenClovis `CL_ERR_*` values,
//!   and [`CkptError`], a code with a detail message and a failing index.
//! - [`types`]: names, section ids, creation and open flags with the API
//!   reference's numeric values, attributes, descriptors, and the
//!   value-only validation rules of DESIGN.md §2.
//!
//! Invariants: every user-visible failure is an [`ErrorCode`]; every numeric
//! value here equals the one in `clCkptApi.h` / `clCommonErrors.h`.

pub mod bytes_list;
pub mod error;
pub mod types;
pub mod wire;

pub use error::{CkptError, CkptResult, ErrorCode, CKPT_COMPONENT_ID};
pub use types::*;
