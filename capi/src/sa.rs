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

export! {
    /// `saCkptInitialize`: Initializes the library and connects to `CKPT_SERVERS`.
    fn saCkptInitialize(handle: *mut u64, callbacks: *const CallbacksC, version: *mut VersionC) => initialize;
}

export! {
    /// `saCkptSelectionObjectGet`: The eventfd that is readable while callbacks are pending.
    fn saCkptSelectionObjectGet(handle: u64, selection_object: *mut u64) => selection_object_get;
}

export! {
    /// `saCkptDispatch`: Runs pending callbacks on the caller's thread.
    fn saCkptDispatch(handle: u64, flags: u32) => dispatch;
}

export! {
    /// `saCkptFinalize`: Closes the service, its checkpoints and its selection object.
    fn saCkptFinalize(handle: u64) => finalize;
}

export! {
    /// `saCkptCheckpointOpen`: Opens (and creates) a checkpoint.
    fn saCkptCheckpointOpen(handle: u64, name: *const NameC, attributes: *const CreationAttributesC, flags: u32, timeout: i64, checkpoint: *mut u64) => open;
}

export! {
    /// `saCkptCheckpointOpenAsync`: Opens a checkpoint; the open callback tells the outcome.
    fn saCkptCheckpointOpenAsync(handle: u64, invocation: u64, name: *const NameC, attributes: *const CreationAttributesC, flags: u32) => open_async;
}

export! {
    /// `saCkptCheckpointClose`: Closes a checkpoint handle.
    fn saCkptCheckpointClose(checkpoint: u64) => close;
}

export! {
    /// `saCkptCheckpointUnlink`: Deletes a checkpoint's name.
    fn saCkptCheckpointUnlink(handle: u64, name: *const NameC) => delete;
}

export! {
    /// `saCkptCheckpointRetentionDurationSet`: Sets the retention duration.
    fn saCkptCheckpointRetentionDurationSet(checkpoint: u64, retention: i64) => retention_duration_set;
}

export! {
    /// `saCkptActiveReplicaSet`: Makes this node's replica the active one.
    fn saCkptActiveReplicaSet(checkpoint: u64) => active_replica_set;
}

export! {
    /// `saCkptCheckpointStatusGet`: Attributes and usage of a checkpoint.
    fn saCkptCheckpointStatusGet(checkpoint: u64, status: *mut CheckpointDescriptorC) => status_get;
}

export! {
    /// `saCkptSectionCreate`: Creates a section.
    fn saCkptSectionCreate(checkpoint: u64, attributes: *mut SectionCreationAttributesC, data: *const u8, size: u64) => section_create;
}

export! {
    /// `saCkptSectionDelete`: Deletes a section.
    fn saCkptSectionDelete(checkpoint: u64, section_id: *const SectionIdC) => section_delete;
}

export! {
    /// `saCkptSectionExpirationTimeSet`: Sets a section's expiration time.
    fn saCkptSectionExpirationTimeSet(checkpoint: u64, section_id: *const SectionIdC, expiration_time: i64) => section_expiration_time_set;
}

export! {
    /// `saCkptSectionIterationInitialize`: Starts an iteration over sections.
    fn saCkptSectionIterationInitialize(checkpoint: u64, chosen: u32, expiration_time: i64, iteration: *mut u64) => iteration_initialize;
}

export! {
    /// `saCkptSectionIterationNext`: The next section of an iteration; its id is the library's until the next call.
    fn saCkptSectionIterationNext(iteration: u64, descriptor: *mut SectionDescriptorC) => iteration_next;
}

export! {
    /// `saCkptSectionIterationFinalize`: Ends an iteration.
    fn saCkptSectionIterationFinalize(iteration: u64) => iteration_finalize;
}

export! {
    /// `saCkptCheckpointWrite`: Writes several elements atomically.
    fn saCkptCheckpointWrite(checkpoint: u64, vector: *const IoVectorElementC, count: u32, erroneous: *mut u32) => write;
}

export! {
    /// `saCkptSectionOverwrite`: Replaces a section's data.
    fn saCkptSectionOverwrite(checkpoint: u64, section_id: *const SectionIdC, data: *const c_void, size: u64) => overwrite;
}

export! {
    /// `saCkptCheckpointRead`: Reads several elements.
    fn saCkptCheckpointRead(checkpoint: u64, vector: *mut IoVectorElementC, count: u32, erroneous: *mut u32) => read;
}

export! {
    /// `saCkptCheckpointSynchronize`: Waits until every replica has every update.
    fn saCkptCheckpointSynchronize(checkpoint: u64, timeout: i64) => synchronize;
}

export! {
    /// `saCkptCheckpointSynchronizeAsync`: Synchronizes; the synchronize callback tells the outcome.
    fn saCkptCheckpointSynchronizeAsync(checkpoint: u64, invocation: u64) => synchronize_async;
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
