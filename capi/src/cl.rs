//! The OpenClovis API: the 23 `clCkpt*` functions of `clCkptApi.h`. Each
//! is [`crate::ops`] with `ClRcT` return codes, behind the panic guard.
#![allow(non_snake_case)]

use std::ffi::c_void;

use crate::ctypes::{
    CallbacksC, CheckpointDescriptorC, CreationAttributesC, IoVectorElementC, NameC,
    NotificationCallbackC, SectionCreationAttributesC, SectionDescriptorC, SectionIdC, VersionC,
};
use crate::errors::Api;
use crate::ops;
use crate::runtime::guard;

const API: Api = Api::Cl;

/// `clCkptInitialize`: Initializes the library and connects to `CKPT_SERVERS`.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn clCkptInitialize(
    handle: *mut u64,
    callbacks: *const CallbacksC,
    version: *mut VersionC,
) -> u32 {
    guard(API, || {
        API.result(&unsafe { ops::initialize(API, handle, callbacks, version) })
    })
}

/// `clCkptFinalize`: Closes the service, its checkpoints and its selection object.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn clCkptFinalize(handle: u64) -> u32 {
    guard(API, || API.result(&ops::finalize(API, handle)))
}

/// `clCkptSelectionObjectGet`: The eventfd that is readable while callbacks are pending.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn clCkptSelectionObjectGet(handle: u64, selection_object: *mut u64) -> u32 {
    guard(API, || {
        API.result(&unsafe { ops::selection_object_get(API, handle, selection_object) })
    })
}

/// `clCkptDispatch`: Runs pending callbacks on the caller's thread.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn clCkptDispatch(handle: u64, flags: u32) -> u32 {
    guard(API, || API.result(&ops::dispatch(API, handle, flags)))
}

/// `clCkptCheckpointOpen`: Opens (and creates) a checkpoint.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn clCkptCheckpointOpen(
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

/// `clCkptCheckpointOpenAsync`: Opens a checkpoint; the open callback tells the outcome.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn clCkptCheckpointOpenAsync(
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

/// `clCkptCheckpointClose`: Closes a checkpoint handle.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn clCkptCheckpointClose(checkpoint: u64) -> u32 {
    guard(API, || API.result(&ops::close(API, checkpoint)))
}

/// `clCkptCheckpointDelete`: Deletes a checkpoint's name.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn clCkptCheckpointDelete(handle: u64, name: *const NameC) -> u32 {
    guard(API, || {
        API.result(&unsafe { ops::delete(API, handle, name) })
    })
}

/// `clCkptCheckpointRetentionDurationSet`: Sets the retention duration.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn clCkptCheckpointRetentionDurationSet(
    checkpoint: u64,
    retention: i64,
) -> u32 {
    guard(API, || {
        API.result(&ops::retention_duration_set(API, checkpoint, retention))
    })
}

/// `clCkptActiveReplicaSet`: Makes this node's replica the active one.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn clCkptActiveReplicaSet(checkpoint: u64) -> u32 {
    guard(API, || {
        API.result(&ops::active_replica_set(API, checkpoint))
    })
}

/// `clCkptCheckpointStatusGet`: Attributes and usage of a checkpoint.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn clCkptCheckpointStatusGet(
    checkpoint: u64,
    status: *mut CheckpointDescriptorC,
) -> u32 {
    guard(API, || {
        API.result(&unsafe { ops::status_get(API, checkpoint, status) })
    })
}

/// `clCkptSectionCreate`: Creates a section.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn clCkptSectionCreate(
    checkpoint: u64,
    attributes: *mut SectionCreationAttributesC,
    data: *const u8,
    size: u64,
) -> u32 {
    guard(API, || {
        API.result(&unsafe { ops::section_create(API, checkpoint, attributes, data, size) })
    })
}

/// `clCkptSectionDelete`: Deletes a section.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn clCkptSectionDelete(
    checkpoint: u64,
    section_id: *const SectionIdC,
) -> u32 {
    guard(API, || {
        API.result(&unsafe { ops::section_delete(API, checkpoint, section_id) })
    })
}

/// `clCkptSectionExpirationTimeSet`: Sets a section's expiration time.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn clCkptSectionExpirationTimeSet(
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

/// `clCkptSectionIterationInitialize`: Starts an iteration over sections.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn clCkptSectionIterationInitialize(
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

/// `clCkptSectionIterationNext`: The next section of an iteration.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn clCkptSectionIterationNext(
    iteration: u64,
    descriptor: *mut SectionDescriptorC,
) -> u32 {
    guard(API, || {
        API.result(&unsafe { ops::iteration_next(API, iteration, descriptor) })
    })
}

/// `clCkptSectionIterationFinalize`: Ends an iteration.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn clCkptSectionIterationFinalize(iteration: u64) -> u32 {
    guard(API, || API.result(&ops::iteration_finalize(API, iteration)))
}

/// `clCkptCheckpointWrite`: Writes several elements atomically.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn clCkptCheckpointWrite(
    checkpoint: u64,
    vector: *const IoVectorElementC,
    count: u32,
    erroneous: *mut u32,
) -> u32 {
    guard(API, || {
        API.result(&unsafe { ops::write(API, checkpoint, vector, count, erroneous) })
    })
}

/// `clCkptSectionOverwrite`: Replaces a section's data.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn clCkptSectionOverwrite(
    checkpoint: u64,
    section_id: *const SectionIdC,
    data: *const c_void,
    size: u64,
) -> u32 {
    guard(API, || {
        API.result(&unsafe { ops::overwrite(API, checkpoint, section_id, data, size) })
    })
}

/// `clCkptCheckpointRead`: Reads several elements.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn clCkptCheckpointRead(
    checkpoint: u64,
    vector: *mut IoVectorElementC,
    count: u32,
    erroneous: *mut u32,
) -> u32 {
    guard(API, || {
        API.result(&unsafe { ops::read(API, checkpoint, vector, count, erroneous) })
    })
}

/// `clCkptCheckpointSynchronize`: Waits until every replica has every update.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn clCkptCheckpointSynchronize(checkpoint: u64, timeout: i64) -> u32 {
    guard(API, || {
        API.result(&ops::synchronize(API, checkpoint, timeout))
    })
}

/// `clCkptCheckpointSynchronizeAsync`: Synchronizes; the synchronize callback tells the outcome.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn clCkptCheckpointSynchronizeAsync(checkpoint: u64, invocation: u64) -> u32 {
    guard(API, || {
        API.result(&ops::synchronize_async(API, checkpoint, invocation))
    })
}

/// `clCkptImmediateConsumptionRegister`: Registers a callback for every update of the checkpoint.
///
/// # Safety
/// Pointer arguments are NULL or valid for their C types (checked for NULL).
#[no_mangle]
pub unsafe extern "C" fn clCkptImmediateConsumptionRegister(
    checkpoint: u64,
    callback: Option<NotificationCallbackC>,
    cookie: *mut c_void,
) -> u32 {
    guard(API, || {
        API.result(&ops::immediate_consumption_register(
            API, checkpoint, callback, cookie,
        ))
    })
}
