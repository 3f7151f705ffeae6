//! The SA Forum API (AIS B.02.02): the `saCkpt*` functions of `saCkpt.h`.
//! Each is [`crate::ops`] with `SaAisErrorT` return codes, behind the
//! panic guard.
#![allow(non_snake_case)]

use std::ffi::c_void;

use crate::ctypes::{
    CallbacksC, CheckpointDescriptorC, CreationAttributesC, IoVectorElementC, NameC,
    SectionCreationAttributesC, SectionDescriptorC, SectionIdC, VersionC,
};
use crate::errors::Api;
use crate::ops;
use crate::runtime::guard;

const API: Api = Api::Sa;

/// `saCkptInitialize`: Initializes the library and connects to `CKPT_SERVERS`.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn saCkptInitialize(
    handle: *mut u64,
    callbacks: *const CallbacksC,
    version: *mut VersionC,
) -> u32 {
    guard(API, || {
        API.result(&unsafe { ops::initialize(API, handle, callbacks, version) })
    })
}

/// `saCkptSelectionObjectGet`: The eventfd that is readable while callbacks are pending.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn saCkptSelectionObjectGet(handle: u64, selection_object: *mut u64) -> u32 {
    guard(API, || {
        API.result(&unsafe { ops::selection_object_get(API, handle, selection_object) })
    })
}

/// `saCkptDispatch`: Runs pending callbacks on the caller's thread.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn saCkptDispatch(handle: u64, flags: u32) -> u32 {
    guard(API, || API.result(&ops::dispatch(API, handle, flags)))
}

/// `saCkptFinalize`: Closes the service, its checkpoints and its selection object.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn saCkptFinalize(handle: u64) -> u32 {
    guard(API, || API.result(&ops::finalize(API, handle)))
}

/// `saCkptCheckpointOpen`: Opens (and creates) a checkpoint.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn saCkptCheckpointOpen(
    handle: u64,
    name: *const NameC,
    attributes: *const CreationAttributesC,
    flags: u32,
    timeout: i64,
    checkpoint: *mut u64,
) -> u32 {
    guard(API, || {
        API.result(&unsafe { ops::open(API, handle, name, attributes, flags, timeout, checkpoint) })
    })
}

/// `saCkptCheckpointOpenAsync`: Opens a checkpoint; the open callback tells the outcome.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn saCkptCheckpointOpenAsync(
    handle: u64,
    invocation: u64,
    name: *const NameC,
    attributes: *const CreationAttributesC,
    flags: u32,
) -> u32 {
    guard(API, || {
        API.result(&unsafe { ops::open_async(API, handle, invocation, name, attributes, flags) })
    })
}

/// `saCkptCheckpointClose`: Closes a checkpoint handle.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn saCkptCheckpointClose(checkpoint: u64) -> u32 {
    guard(API, || API.result(&ops::close(API, checkpoint)))
}

/// `saCkptCheckpointUnlink`: Deletes a checkpoint's name.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn saCkptCheckpointUnlink(handle: u64, name: *const NameC) -> u32 {
    guard(API, || {
        API.result(&unsafe { ops::delete(API, handle, name) })
    })
}

/// `saCkptCheckpointRetentionDurationSet`: Sets the retention duration.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn saCkptCheckpointRetentionDurationSet(
    checkpoint: u64,
    retention: i64,
) -> u32 {
    guard(API, || {
        API.result(&ops::retention_duration_set(API, checkpoint, retention))
    })
}

/// `saCkptActiveReplicaSet`: Makes this node's replica the active one.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn saCkptActiveReplicaSet(checkpoint: u64) -> u32 {
    guard(API, || {
        API.result(&ops::active_replica_set(API, checkpoint))
    })
}

/// `saCkptCheckpointStatusGet`: Attributes and usage of a checkpoint.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn saCkptCheckpointStatusGet(
    checkpoint: u64,
    status: *mut CheckpointDescriptorC,
) -> u32 {
    guard(API, || {
        API.result(&unsafe { ops::status_get(API, checkpoint, status) })
    })
}

/// `saCkptSectionCreate`: Creates a section.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn saCkptSectionCreate(
    checkpoint: u64,
    attributes: *mut SectionCreationAttributesC,
    data: *const u8,
    size: u64,
) -> u32 {
    guard(API, || {
        API.result(&unsafe { ops::section_create(API, checkpoint, attributes, data, size) })
    })
}

/// `saCkptSectionDelete`: Deletes a section.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn saCkptSectionDelete(
    checkpoint: u64,
    section_id: *const SectionIdC,
) -> u32 {
    guard(API, || {
        API.result(&unsafe { ops::section_delete(API, checkpoint, section_id) })
    })
}

/// `saCkptSectionExpirationTimeSet`: Sets a section's expiration time.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn saCkptSectionExpirationTimeSet(
    checkpoint: u64,
    section_id: *const SectionIdC,
    expiration_time: i64,
) -> u32 {
    guard(API, || {
        API.result(&unsafe {
            ops::section_expiration_time_set(API, checkpoint, section_id, expiration_time)
        })
    })
}

/// `saCkptSectionIterationInitialize`: Starts an iteration over sections.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn saCkptSectionIterationInitialize(
    checkpoint: u64,
    chosen: u32,
    expiration_time: i64,
    iteration: *mut u64,
) -> u32 {
    guard(API, || {
        API.result(&unsafe {
            ops::iteration_initialize(API, checkpoint, chosen, expiration_time, iteration)
        })
    })
}

/// `saCkptSectionIterationNext`: The next section of an iteration; its id is the library's until the next call.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn saCkptSectionIterationNext(
    iteration: u64,
    descriptor: *mut SectionDescriptorC,
) -> u32 {
    guard(API, || {
        API.result(&unsafe { ops::iteration_next(API, iteration, descriptor) })
    })
}

/// `saCkptSectionIterationFinalize`: Ends an iteration.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn saCkptSectionIterationFinalize(iteration: u64) -> u32 {
    guard(API, || API.result(&ops::iteration_finalize(API, iteration)))
}

/// `saCkptCheckpointWrite`: Writes several elements atomically.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn saCkptCheckpointWrite(
    checkpoint: u64,
    vector: *const IoVectorElementC,
    count: u32,
    erroneous: *mut u32,
) -> u32 {
    guard(API, || {
        API.result(&unsafe { ops::write(API, checkpoint, vector, count, erroneous) })
    })
}

/// `saCkptSectionOverwrite`: Replaces a section's data.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn saCkptSectionOverwrite(
    checkpoint: u64,
    section_id: *const SectionIdC,
    data: *const c_void,
    size: u64,
) -> u32 {
    guard(API, || {
        API.result(&unsafe { ops::overwrite(API, checkpoint, section_id, data, size) })
    })
}

/// `saCkptCheckpointRead`: Reads several elements.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn saCkptCheckpointRead(
    checkpoint: u64,
    vector: *mut IoVectorElementC,
    count: u32,
    erroneous: *mut u32,
) -> u32 {
    guard(API, || {
        API.result(&unsafe { ops::read(API, checkpoint, vector, count, erroneous) })
    })
}

/// `saCkptCheckpointSynchronize`: Waits until every replica has every update.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn saCkptCheckpointSynchronize(checkpoint: u64, timeout: i64) -> u32 {
    guard(API, || {
        API.result(&ops::synchronize(API, checkpoint, timeout))
    })
}

/// `saCkptCheckpointSynchronizeAsync`: Synchronizes; the synchronize callback tells the outcome.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn saCkptCheckpointSynchronizeAsync(checkpoint: u64, invocation: u64) -> u32 {
    guard(API, || {
        API.result(&ops::synchronize_async(API, checkpoint, invocation))
    })
}

/// `saCkptSectionIdFree`: Frees a generated section id.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn saCkptSectionIdFree(checkpoint: u64, id: *mut u8) -> u32 {
    guard(API, || API.result(&ops::free_buffer(checkpoint, id.cast())))
}

/// `saCkptIOVectorElementDataFree`: Frees a read buffer the library allocated.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn saCkptIOVectorElementDataFree(checkpoint: u64, data: *mut c_void) -> u32 {
    guard(API, || API.result(&ops::free_buffer(checkpoint, data)))
}
