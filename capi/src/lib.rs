//! ckpt-capi: the C library of ckpt (`libckpt.so`, `libckpt.a`), so that
//! applications written against the OpenClovis (`clCkpt*`) or SA Forum
//! (`saCkpt*`, AIS B.02.02) checkpoint API build against ckpt unchanged.
//!
//! # Layout
//!
//! - `include/`: the headers (`clCkptApi.h`, `clCkptErrors.h`,
//!   `clCommon.h`, `clCommonErrors.h`, `clHeapApi.h`, `saCkpt.h`,
//!   `saAis.h`).
//! - [`cl`], [`sa`], [`heap`]: the exported functions, one line of glue
//!   each around [`ops`].
//! - [`ops`]: the API once for both: checks what C hands in, runs the Rust
//!   client ([`ckpt_client`]), writes the outputs.
//! - [`state`]: handle tables, selection objects (eventfds), callbacks
//!   waiting for C.
//! - [`ctypes`]: the C structures and checked reads of C memory.
//! - [`errors`]: `ClRcT` and `SaAisErrorT` from [`ckpt_proto::ErrorCode`].
//! - [`runtime`]: the process-wide tokio runtime, the panic guard, timeouts.
//!
//! # Invariants
//!
//! - No panic crosses into C: every exported function runs behind
//!   `catch_unwind` and returns `CL_ERR_LIBRARY` / `SA_AIS_ERR_LIBRARY`.
//! - Bad input from C gets its documented code, never undefined behaviour
//!   the library could have checked: NULL pointers, names and ids longer
//!   than their fields, unknown flags, stale or foreign handles, lengths
//!   beyond the protocol's bounds (checked before anything is copied).
//! - C callbacks run only inside the application's Dispatch, on its
//!   thread, with no lock of the library held.
//! - Memory handed to C comes from `malloc` and is freed by the call the
//!   references document (`clHeapFree`, `saCkptSectionIdFree`,
//!   `saCkptIOVectorElementDataFree`).
//!
//! `docs/c-api.md` in the repository says how to port an application, what
//! differs from SAFplus and OpenSAF, and lists the exported symbols.

/// One exported C function of `cl.rs` or `sa.rs` (each has its `API`): the
/// call of `ops::$op` with the same arguments, its result in that API's
/// return codes, behind the panic guard. The two APIs' functions differ in
/// name and return codes only; this is their one body.
macro_rules! export {
    ($(#[doc = $doc:literal])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $op:ident;) => {
        $(#[doc = $doc])*
        ///
        /// # Safety
        /// Pointer arguments are NULL or valid for their C types (checked for NULL).
        #[no_mangle]
        #[allow(unused_unsafe)]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> u32 {
            guard(API, || API.result(&unsafe { ops::$op(API, $($arg),*) }))
        }
    };
}

pub mod cl;
pub mod ctypes;
pub mod errors;
pub mod heap;
pub mod ops;
pub mod runtime;
pub mod sa;
pub mod state;
