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

export! {
    /// `clCkptInitialize`: Initializes the library and connects to `CKPT_SERVERS`.
    fn clCkptInitialize(handle: *mut u64, callbacks: *const CallbacksC, version: *mut VersionC) => initialize;
}

export! {
    /// `clCkptFinalize`: Closes the service, its checkpoints and its selection object.
    fn clCkptFinalize(handle: u64) => finalize;
}

export! {
    /// `clCkptSelectionObjectGet`: The eventfd that is readable while callbacks are pending.
    fn clCkptSelectionObjectGet(handle: u64, selection_object: *mut u64) => selection_object_get;
}

export! {
    /// `clCkptDispatch`: Runs pending callbacks on the caller's thread.
    fn clCkptDispatch(handle: u64, flags: u32) => dispatch;
}

export! {
    /// `clCkptCheckpointOpen`: Opens (and creates) a checkpoint.
    fn clCkptCheckpointOpen(handle: u64, name: *const NameC, attributes: *const CreationAttributesC, flags: u32, timeout: i64, checkpoint: *mut u64) => open;
}

export! {
    /// `clCkptCheckpointOpenAsync`: Opens a checkpoint; the open callback tells the outcome.
    fn clCkptCheckpointOpenAsync(handle: u64, invocation: u64, name: *const NameC, attributes: *const CreationAttributesC, flags: u32) => open_async;
}

export! {
    /// `clCkptCheckpointClose`: Closes a checkpoint handle.
    fn clCkptCheckpointClose(checkpoint: u64) => close;
}

export! {
    /// `clCkptCheckpointDelete`: Deletes a checkpoint's name.
    fn clCkptCheckpointDelete(handle: u64, name: *const NameC) => delete;
}

export! {
    /// `clCkptCheckpointRetentionDurationSet`: Sets the retention duration.
    fn clCkptCheckpointRetentionDurationSet(checkpoint: u64, retention: i64) => retention_duration_set;
}

export! {
    /// `clCkptActiveReplicaSet`: Makes this node's replica the active one.
    fn clCkptActiveReplicaSet(checkpoint: u64) => active_replica_set;
}

export! {
    /// `clCkptCheckpointStatusGet`: Attributes and usage of a checkpoint.
    fn clCkptCheckpointStatusGet(checkpoint: u64, status: *mut CheckpointDescriptorC) => status_get;
}

export! {
    /// `clCkptSectionCreate`: Creates a section.
    fn clCkptSectionCreate(checkpoint: u64, attributes: *mut SectionCreationAttributesC, data: *const u8, size: u64) => section_create;
}

export! {
    /// `clCkptSectionDelete`: Deletes a section.
    fn clCkptSectionDelete(checkpoint: u64, section_id: *const SectionIdC) => section_delete;
}

export! {
    /// `clCkptSectionExpirationTimeSet`: Sets a section's expiration time.
    fn clCkptSectionExpirationTimeSet(checkpoint: u64, section_id: *const SectionIdC, expiration_time: i64) => section_expiration_time_set;
}

export! {
    /// `clCkptSectionIterationInitialize`: Starts an iteration over sections.
    fn clCkptSectionIterationInitialize(checkpoint: u64, chosen: u32, expiration_time: i64, iteration: *mut u64) => iteration_initialize;
}

export! {
    /// `clCkptSectionIterationNext`: The next section of an iteration.
    fn clCkptSectionIterationNext(iteration: u64, descriptor: *mut SectionDescriptorC) => iteration_next;
}

export! {
    /// `clCkptSectionIterationFinalize`: Ends an iteration.
    fn clCkptSectionIterationFinalize(iteration: u64) => iteration_finalize;
}

export! {
    /// `clCkptCheckpointWrite`: Writes several elements atomically.
    fn clCkptCheckpointWrite(checkpoint: u64, vector: *const IoVectorElementC, count: u32, erroneous: *mut u32) => write;
}

export! {
    /// `clCkptSectionOverwrite`: Replaces a section's data.
    fn clCkptSectionOverwrite(checkpoint: u64, section_id: *const SectionIdC, data: *const c_void, size: u64) => overwrite;
}

export! {
    /// `clCkptCheckpointRead`: Reads several elements.
    fn clCkptCheckpointRead(checkpoint: u64, vector: *mut IoVectorElementC, count: u32, erroneous: *mut u32) => read;
}

export! {
    /// `clCkptCheckpointSynchronize`: Waits until every replica has every update.
    fn clCkptCheckpointSynchronize(checkpoint: u64, timeout: i64) => synchronize;
}

export! {
    /// `clCkptCheckpointSynchronizeAsync`: Synchronizes; the synchronize callback tells the outcome.
    fn clCkptCheckpointSynchronizeAsync(checkpoint: u64, invocation: u64) => synchronize_async;
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
