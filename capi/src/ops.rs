//! The checkpoint API once, for both C APIs: each function here is one
//! clCkpt*/saCkpt* pair, checks what C handed it, runs the Rust client and
//! writes the outputs. `cl.rs` and `sa.rs` only add the symbol names and
//! turn the outcome into `ClRcT` or `SaAisErrorT` (`errors.rs`).
//!
//! Order of checks, the same in every function: the handle
//! (`INVALID_HANDLE`), then NULL pointers (`NULL_POINTER`), then values
//! (`INVALID_PARAMETER`, `BAD_FLAG`, `NAME_TOO_LONG`), then the server.

use std::ffi::c_void;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use ckpt_client::dispatch::{check_open_parameters, NotificationCallback};
use ckpt_client::{Callbacks, Checkpoint, CkptService, ClientError, DispatchFlags};
use ckpt_proto::wire::{ApiVersion, API_VERSION};
use ckpt_proto::{
    ErrorCode, OpenFlags, ReadElement, SectionCreationAttributes, SectionsChosen, WriteElement,
    ELEMENTS_MAX, UPDATE_BYTES_MAX,
};

use crate::ctypes::{
    invalid, malloc_copy, null, read_attributes, read_name, read_section_id, section_id_value,
    write_attributes, CallbacksC, CheckpointDescriptorC, CreationAttributesC, IoVectorElementC,
    NameC, NotificationCallbackC, SectionCreationAttributesC, SectionDescriptorC, SectionIdC,
    VersionC,
};
use crate::errors::Api;
use crate::runtime::{block_on, limit, runtime, within};
use crate::state::{self, lock, CCall, SaBuffer, Service, Signal};

/// Where the servers are when `CKPT_SERVERS` is not set: the embedded
/// default of `ckpt-server`.
pub const DEFAULT_SERVERS: &str = "127.0.0.1:7400";

/// The SA Forum version this library implements (B.02.02).
pub const SA_VERSION: ApiVersion = ApiVersion {
    release_code: b'B',
    major: 2,
    minor: 2,
};

type Outcome = Result<(), ClientError>;

/// `CKPT_SERVERS`, or the default.
pub fn servers() -> String {
    match std::env::var("CKPT_SERVERS") {
        Ok(list) if !list.trim().is_empty() => list,
        _ => DEFAULT_SERVERS.to_string(),
    }
}

fn write_version(version: &mut VersionC, value: ApiVersion) {
    version.release_code = value.release_code;
    version.major_version = value.major;
    version.minor_version = value.minor;
}

/// clCkptInitialize / saCkptInitialize.
///
/// # Safety
/// Pointers are NULL or valid for their C types.
pub unsafe fn initialize(
    api: Api,
    handle_out: *mut u64,
    callbacks: *const CallbacksC,
    version: *mut VersionC,
) -> Outcome {
    // SAFETY: the caller's promise.
    let (Some(handle_out), Some(version)) =
        (unsafe { handle_out.as_mut() }, unsafe { version.as_mut() })
    else {
        return Err(null("the handle or the version pointer"));
    };
    // SAFETY: the caller's promise.
    let callbacks = unsafe { callbacks.as_ref() }.copied().unwrap_or_default();
    let requested = ApiVersion {
        release_code: version.release_code,
        major: version.major_version,
        minor: version.minor_version,
    };
    // The SA Forum API is versioned on its own (B.02.02); underneath it
    // speaks the server's version like the OpenClovis API does.
    let wire_version = match api {
        Api::Cl => requested,
        Api::Sa => {
            if requested.release_code != SA_VERSION.release_code
                || requested.major > SA_VERSION.major
            {
                write_version(version, SA_VERSION);
                return Err(ClientError::new(
                    ErrorCode::VersionMismatch,
                    "the SA Forum checkpoint API here is B.02.02",
                ));
            }
            API_VERSION
        }
    };
    let handle = state::new_handle();
    let rust_callbacks = Callbacks {
        open: callbacks.open.map(|callback| {
            Box::new(move |invocation, result: Result<Checkpoint, ClientError>| {
                let (opened, result) = match result {
                    Ok(checkpoint) => match state::add_checkpoint(api, handle, checkpoint) {
                        Some(opened) => (opened, Ok(())),
                        None => (
                            0,
                            Err(ClientError::new(
                                ErrorCode::InvalidHandle,
                                "finalized meanwhile",
                            )),
                        ),
                    },
                    Err(error) => (0, Err(error)),
                };
                state::collect(CCall::Open {
                    callback,
                    api,
                    invocation,
                    handle: opened,
                    result,
                });
            }) as ckpt_client::dispatch::OpenCallback
        }),
        synchronize: callbacks.synchronize.map(|callback| {
            Box::new(move |invocation, result: Result<(), ClientError>| {
                state::collect(CCall::Synchronize {
                    callback,
                    api,
                    invocation,
                    result,
                });
            }) as ckpt_client::dispatch::SynchronizeCallback
        }),
    };
    let signal = Signal::new()?;
    let addrs = servers();
    let service = match block_on(CkptService::initialize(
        &addrs,
        rust_callbacks,
        wire_version,
    )) {
        Ok(service) => service,
        Err(mut error) => {
            if let Some(supported) = error.supported_version {
                if api == Api::Cl {
                    write_version(version, supported);
                }
            }
            // No server answered: a transitory state the reference tells
            // callers to retry on.
            if error.code == ErrorCode::MessageError {
                error.code = ErrorCode::TryAgain;
            }
            return Err(error);
        }
    };
    write_version(
        version,
        match api {
            Api::Cl => service.version(),
            Api::Sa => SA_VERSION,
        },
    );
    let selection = service.selection_object();
    let watched = signal.clone();
    let watcher = runtime()?.spawn(async move {
        loop {
            selection.ready().await;
            if !watched.raise() {
                return;
            }
            watched.rearmed().await;
        }
    });
    let service = Arc::new(Service {
        api,
        service,
        signal,
        finalized: Default::default(),
        watcher: std::sync::Mutex::new(Some(watcher.abort_handle())),
    });
    state::add_service(handle, service);
    *handle_out = handle;
    Ok(())
}

/// clCkptFinalize / saCkptFinalize: closes everything opened through the
/// service, cancels its callbacks, invalidates its selection object.
pub fn finalize(api: Api, handle: u64) -> Outcome {
    let service = state::remove_service(api, handle)?;
    service.finalized.store(true, Ordering::SeqCst);
    service.signal.close();
    if let Some(watcher) = lock(&service.watcher).take() {
        watcher.abort();
    }
    // The service is released whatever the server says (it may be gone):
    // a failure here would only leave the caller with a dead handle.
    let _ = block_on(service.service.finalize());
    Ok(())
}

/// clCkptSelectionObjectGet / saCkptSelectionObjectGet.
///
/// # Safety
/// `out` is NULL or valid.
pub unsafe fn selection_object_get(api: Api, handle: u64, out: *mut u64) -> Outcome {
    let service = state::service(api, handle)?;
    // SAFETY: the caller's promise.
    let out = unsafe { out.as_mut() }.ok_or_else(|| null("the selection object pointer"))?;
    let fd = service
        .signal
        .raw_fd()
        .ok_or_else(|| ClientError::new(ErrorCode::InvalidHandle, "finalized"))?;
    *out = fd as u64;
    Ok(())
}

/// clCkptDispatch / saCkptDispatch.
pub fn dispatch(api: Api, handle: u64, flags: u32) -> Outcome {
    let service = state::service(api, handle)?;
    let flags = match flags {
        1 => DispatchFlags::One,
        2 => DispatchFlags::All,
        3 => DispatchFlags::Blocking,
        other => {
            return Err(ClientError::new(
                ErrorCode::InvalidParameter,
                format!("dispatch flags {other} are not ONE (1), ALL (2) or BLOCKING (3)"),
            ))
        }
    };
    if flags != DispatchFlags::Blocking {
        return dispatch_once(&service, flags).map(|_| ());
    }
    loop {
        match dispatch_once(&service, DispatchFlags::All) {
            Ok(_) => {}
            // Finalize (here or on another thread) ends a blocking dispatch.
            Err(_) if service.finalized.load(Ordering::SeqCst) => return Ok(()),
            Err(error) => return Err(error),
        }
        if service.finalized.load(Ordering::SeqCst) {
            return Ok(());
        }
        let selection = service.service.selection_object();
        block_on(async move {
            selection.ready().await;
            Ok(())
        })?;
    }
}

/// Runs what is queued (ONE or ALL), then the C callbacks it produced.
fn dispatch_once(service: &Service, flags: DispatchFlags) -> Result<u32, ClientError> {
    let outcome = block_on(service.service.dispatch(flags));
    let selection = service.service.selection_object();
    service.signal.after_dispatch(|| selection.pending());
    state::run_collected();
    outcome.map_err(|error| {
        if service.finalized.load(Ordering::SeqCst) {
            ClientError::new(ErrorCode::InvalidHandle, "the service was finalized")
        } else {
            error
        }
    })
}

/// clCkptCheckpointOpen / saCkptCheckpointOpen.
///
/// # Safety
/// Pointers are NULL or valid for their C types.
pub unsafe fn open(
    api: Api,
    handle: u64,
    name: *const NameC,
    attributes: *const CreationAttributesC,
    flags: u32,
    timeout_ns: i64,
    out: *mut u64,
) -> Outcome {
    let service = state::service(api, handle)?;
    // SAFETY: the caller's promise.
    let out = unsafe { out.as_mut() }.ok_or_else(|| null("the checkpoint handle pointer"))?;
    // SAFETY: the caller's promise.
    let name = unsafe { read_name(name) }?;
    // SAFETY: the caller's promise.
    let attributes = unsafe { read_attributes(attributes) };
    let flags = OpenFlags(flags);
    check_open_parameters(&name, attributes.as_ref(), flags)?;
    let limit = limit(api, timeout_ns)?;
    let client = service.service.client().clone();
    let checkpoint = block_on(within(limit, async move {
        client.open(&name, attributes, flags).await
    }))?;
    *out = state::add_checkpoint(api, handle, checkpoint)
        .ok_or_else(|| ClientError::new(ErrorCode::InvalidHandle, "finalized meanwhile"))?;
    Ok(())
}

/// clCkptCheckpointOpenAsync / saCkptCheckpointOpenAsync.
///
/// # Safety
/// Pointers are NULL or valid for their C types.
pub unsafe fn open_async(
    api: Api,
    handle: u64,
    invocation: u64,
    name: *const NameC,
    attributes: *const CreationAttributesC,
    flags: u32,
) -> Outcome {
    let service = state::service(api, handle)?;
    // SAFETY: the caller's promise.
    let name = unsafe { read_name(name) }?;
    // SAFETY: the caller's promise.
    let attributes = unsafe { read_attributes(attributes) };
    let _runtime = runtime()?.enter();
    service
        .service
        .open_async(invocation, &name, attributes, OpenFlags(flags))
}

/// clCkptCheckpointClose / saCkptCheckpointClose.
pub fn close(api: Api, handle: u64) -> Outcome {
    let checkpoint = state::remove_checkpoint(api, handle)?;
    let outcome = block_on(checkpoint.checkpoint.alias().close());
    // The close dropped the handle's pending callbacks: if none are left,
    // the selection object stops being readable.
    if let Ok(service) = state::service(api, checkpoint.service) {
        let selection = service.service.selection_object();
        service.signal.after_dispatch(|| selection.pending());
    }
    outcome
}

/// clCkptCheckpointDelete / saCkptCheckpointUnlink.
///
/// # Safety
/// `name` is NULL or valid.
pub unsafe fn delete(api: Api, handle: u64, name: *const NameC) -> Outcome {
    let service = state::service(api, handle)?;
    // SAFETY: the caller's promise.
    let name = unsafe { read_name(name) }?;
    block_on(service.service.client().delete(&name))
}

/// clCkptCheckpointRetentionDurationSet / saCkptCheckpointRetentionDurationSet.
pub fn retention_duration_set(api: Api, handle: u64, retention_ns: i64) -> Outcome {
    let checkpoint = state::checkpoint(api, handle)?;
    block_on(checkpoint.checkpoint.retention_duration_set(retention_ns))
}

/// clCkptActiveReplicaSet / saCkptActiveReplicaSet.
pub fn active_replica_set(api: Api, handle: u64) -> Outcome {
    let checkpoint = state::checkpoint(api, handle)?;
    block_on(checkpoint.checkpoint.active_replica_set())
}

/// clCkptCheckpointStatusGet / saCkptCheckpointStatusGet.
///
/// # Safety
/// `out` is NULL or valid.
pub unsafe fn status_get(api: Api, handle: u64, out: *mut CheckpointDescriptorC) -> Outcome {
    let checkpoint = state::checkpoint(api, handle)?;
    // SAFETY: the caller's promise.
    let out = unsafe { out.as_mut() }.ok_or_else(|| null("the status pointer"))?;
    let status = block_on(checkpoint.checkpoint.status())?;
    *out = CheckpointDescriptorC {
        checkpoint_creation_attributes: write_attributes(&status.attributes),
        number_of_sections: status.number_of_sections,
        // The C field is 32 bits; ckpt checkpoints may hold more.
        memory_used: u32::try_from(status.memory_used).unwrap_or(u32::MAX),
    };
    Ok(())
}

/// Copies `size` bytes from C, bounded first by the largest update.
///
/// # Safety
/// `data` is NULL or points to `size` readable bytes.
unsafe fn read_bytes(data: *const u8, size: u64, what: &str) -> Result<Vec<u8>, ClientError> {
    if size > UPDATE_BYTES_MAX {
        return Err(ClientError::new(
            ErrorCode::TooBig,
            format!("{what} is {size} bytes, at most {UPDATE_BYTES_MAX} per call"),
        ));
    }
    if size == 0 {
        return Ok(Vec::new());
    }
    if data.is_null() {
        return Err(null(what));
    }
    let size = usize::try_from(size).map_err(|_| invalid(format!("{what} is too large")))?;
    // SAFETY: the caller promises `size` readable bytes.
    Ok(unsafe { std::slice::from_raw_parts(data, size) }.to_vec())
}

/// Hands out a section id: for OpenClovis the application frees it with
/// clHeapFree; for SA Forum with saCkptSectionIdFree (recorded).
fn hand_out_id(api: Api, checkpoint: u64, bytes: &[u8]) -> Result<SectionIdC, ClientError> {
    if bytes.is_empty() {
        return Ok(SectionIdC {
            id_len: 0,
            id: std::ptr::null_mut(),
        });
    }
    let id_len = u16::try_from(bytes.len())
        .map_err(|_| invalid(format!("a section id of {} bytes", bytes.len())))?;
    let id = malloc_copy(bytes)?;
    if api == Api::Sa {
        state::add_sa_buffer(id, checkpoint);
    }
    Ok(SectionIdC { id_len, id })
}

/// clCkptSectionCreate / saCkptSectionCreate. A generated id is handed out
/// in `attributes->sectionId`.
///
/// # Safety
/// Pointers are NULL or valid for their C types.
pub unsafe fn section_create(
    api: Api,
    handle: u64,
    attributes: *mut SectionCreationAttributesC,
    data: *const u8,
    size: u64,
) -> Outcome {
    let checkpoint = state::checkpoint(api, handle)?;
    // SAFETY: the caller's promise.
    let attributes =
        unsafe { attributes.as_mut() }.ok_or_else(|| null("the section creation attributes"))?;
    // SAFETY: the caller's promise.
    let id = unsafe { attributes.section_id.as_mut() }
        .ok_or_else(|| null("the section creation attributes' sectionId"))?;
    if api == Api::Cl && data.is_null() {
        return Err(null("initialData"));
    }
    // SAFETY: the caller's promise.
    let section_id = unsafe { section_id_value(id) }?;
    let generated = section_id.is_default();
    // SAFETY: the caller's promise.
    let data = unsafe { read_bytes(data, size, "initialData") }?;
    let request = SectionCreationAttributes {
        section_id: (!generated).then_some(section_id),
        expiration_time: attributes.expiration_time,
    };
    let created = block_on(checkpoint.checkpoint.section_create(request, data))?;
    if generated && !created.is_default() {
        *id = hand_out_id(api, handle, created.as_bytes())?;
    }
    Ok(())
}

/// clCkptSectionDelete / saCkptSectionDelete.
///
/// # Safety
/// `id` is NULL or valid.
pub unsafe fn section_delete(api: Api, handle: u64, id: *const SectionIdC) -> Outcome {
    let checkpoint = state::checkpoint(api, handle)?;
    // SAFETY: the caller's promise.
    let id = unsafe { read_section_id(id) }?;
    block_on(checkpoint.checkpoint.section_delete(&id))
}

/// clCkptSectionExpirationTimeSet / saCkptSectionExpirationTimeSet.
///
/// # Safety
/// `id` is NULL or valid.
pub unsafe fn section_expiration_time_set(
    api: Api,
    handle: u64,
    id: *const SectionIdC,
    expiration_time: i64,
) -> Outcome {
    let checkpoint = state::checkpoint(api, handle)?;
    // SAFETY: the caller's promise.
    let id = unsafe { read_section_id(id) }?;
    block_on(
        checkpoint
            .checkpoint
            .section_expiration_time_set(&id, expiration_time),
    )
}

/// clCkptSectionIterationInitialize / saCkptSectionIterationInitialize.
///
/// # Safety
/// `out` is NULL or valid.
pub unsafe fn iteration_initialize(
    api: Api,
    handle: u64,
    chosen: u32,
    expiration_time: i64,
    out: *mut u64,
) -> Outcome {
    let checkpoint = state::checkpoint(api, handle)?;
    // SAFETY: the caller's promise.
    let out = unsafe { out.as_mut() }.ok_or_else(|| null("the iteration handle pointer"))?;
    let chosen = SectionsChosen::from_u32(chosen)?;
    let iterator = block_on(checkpoint.checkpoint.iterate(chosen, expiration_time))?;
    *out = state::add_iterator(api, handle, iterator)
        .ok_or_else(|| ClientError::new(ErrorCode::InvalidHandle, "closed meanwhile"))?;
    Ok(())
}

/// clCkptSectionIterationNext / saCkptSectionIterationNext.
///
/// # Safety
/// `out` is NULL or valid.
pub unsafe fn iteration_next(api: Api, handle: u64, out: *mut SectionDescriptorC) -> Outcome {
    let iterator = state::iterator(api, handle)?;
    // SAFETY: the caller's promise.
    let out = unsafe { out.as_mut() }.ok_or_else(|| null("the section descriptor pointer"))?;
    let next = block_on(async {
        let mut guard = iterator.iterator.lock().await;
        match guard.as_mut() {
            Some(sections) => sections.next().await,
            None => Err(ClientError::new(
                ErrorCode::InvalidHandle,
                "the iteration was finalized",
            )),
        }
    })?;
    // SA Forum: the previous id is the library's, and goes now.
    lock(&iterator.last_id).take();
    let descriptor = next.ok_or_else(|| {
        ClientError::new(ErrorCode::NoSections, "no more sections in this iteration")
    })?;
    let bytes = descriptor.section_id.as_bytes();
    let section_id = if bytes.is_empty() {
        SectionIdC {
            id_len: 0,
            id: std::ptr::null_mut(),
        }
    } else {
        let id_len = u16::try_from(bytes.len())
            .map_err(|_| invalid(format!("a section id of {} bytes", bytes.len())))?;
        let id = malloc_copy(bytes)?;
        if api == Api::Sa {
            *lock(&iterator.last_id) = Some(SaBuffer(id));
        }
        SectionIdC { id_len, id }
    };
    *out = SectionDescriptorC {
        section_id,
        expiration_time: descriptor.expiration_time,
        section_size: descriptor.section_size,
        section_state: descriptor.state as u32,
        last_update: descriptor.last_update,
    };
    Ok(())
}

/// clCkptSectionIterationFinalize / saCkptSectionIterationFinalize.
pub fn iteration_finalize(api: Api, handle: u64) -> Outcome {
    let iterator = state::remove_iterator(api, handle)?;
    lock(&iterator.last_id).take();
    block_on(async {
        let sections = iterator.iterator.lock().await.take();
        match sections {
            Some(sections) => sections.finalize().await,
            None => Ok(()),
        }
    })
}

/// The elements of a C IO vector, `None` when `count` is 0.
///
/// # Safety
/// `vector` is NULL or points to `count` elements.
unsafe fn elements<'a>(
    vector: *const IoVectorElementC,
    count: u32,
) -> Result<&'a [IoVectorElementC], ClientError> {
    if count == 0 {
        return Ok(&[]);
    }
    if vector.is_null() {
        return Err(null("the IO vector"));
    }
    if count as usize > ELEMENTS_MAX {
        return Err(invalid(format!(
            "{count} elements, at most {ELEMENTS_MAX} per call"
        )));
    }
    // SAFETY: the caller promises `count` elements.
    Ok(unsafe { std::slice::from_raw_parts(vector, count as usize) })
}

/// The offset of an element: a `ClOffsetT` is signed, and negative is invalid.
fn offset(api: Api, raw: u64) -> Result<u64, ClientError> {
    if api == Api::Cl && (raw as i64) < 0 {
        return Err(invalid(format!("dataOffset {} is negative", raw as i64)));
    }
    Ok(raw)
}

fn at(index: usize, mut error: ClientError) -> ClientError {
    error.index = Some(u32::try_from(index).unwrap_or(u32::MAX));
    error
}

/// Tells C which element failed.
///
/// # Safety
/// `out` is NULL or valid.
unsafe fn report_index(out: *mut u32, error: &ClientError) {
    if let (Some(index), Some(out)) = (error.index, unsafe { out.as_mut() }) {
        *out = index;
    }
}

/// clCkptCheckpointWrite / saCkptCheckpointWrite.
///
/// # Safety
/// Pointers are NULL or valid for their C types.
pub unsafe fn write(
    api: Api,
    handle: u64,
    vector: *const IoVectorElementC,
    count: u32,
    erroneous: *mut u32,
) -> Outcome {
    // SAFETY: the caller's promise, for the whole body.
    let result = unsafe { write_inner(api, handle, vector, count) };
    if let Err(error) = &result {
        // SAFETY: the caller's promise.
        unsafe { report_index(erroneous, error) };
    }
    result
}

unsafe fn write_inner(
    api: Api,
    handle: u64,
    vector: *const IoVectorElementC,
    count: u32,
) -> Outcome {
    let checkpoint = state::checkpoint(api, handle)?;
    // SAFETY: the caller's promise.
    let vector = unsafe { elements(vector, count) }?;
    let mut total: u64 = 0;
    for (index, element) in vector.iter().enumerate() {
        total = total
            .checked_add(element.data_size)
            .filter(|&total| total <= UPDATE_BYTES_MAX)
            .ok_or_else(|| {
                at(
                    index,
                    ClientError::new(
                        ErrorCode::TooBig,
                        format!("the write carries more than {UPDATE_BYTES_MAX} bytes"),
                    ),
                )
            })?;
    }
    let mut write = Vec::with_capacity(vector.len());
    for (index, element) in vector.iter().enumerate() {
        let parsed = (|| {
            // SAFETY: the caller's promise.
            let section_id = unsafe { section_id_value(&element.section_id) }?;
            let offset = offset(api, element.data_offset)?;
            // SAFETY: the caller's promise.
            let data = unsafe {
                read_bytes(
                    element.data_buffer.cast::<u8>(),
                    element.data_size,
                    "dataBuffer",
                )
            }?;
            Ok::<_, ClientError>(WriteElement {
                section_id,
                offset,
                data,
            })
        })();
        write.push(parsed.map_err(|error| at(index, error))?);
    }
    block_on(checkpoint.checkpoint.write(write))
}

/// clCkptSectionOverwrite / saCkptSectionOverwrite.
///
/// # Safety
/// Pointers are NULL or valid for their C types.
pub unsafe fn overwrite(
    api: Api,
    handle: u64,
    id: *const SectionIdC,
    data: *const c_void,
    size: u64,
) -> Outcome {
    let checkpoint = state::checkpoint(api, handle)?;
    // SAFETY: the caller's promise.
    let id = unsafe { read_section_id(id) }?;
    if api == Api::Cl && data.is_null() {
        return Err(null("dataBuffer"));
    }
    // SAFETY: the caller's promise.
    let data = unsafe { read_bytes(data.cast(), size, "dataBuffer") }?;
    block_on(checkpoint.checkpoint.section_overwrite(&id, data))
}

/// clCkptCheckpointRead / saCkptCheckpointRead. An element with a NULL
/// `dataBuffer` reads to the end of the section into a buffer the library
/// allocates (freed with clHeapFree / saCkptIOVectorElementDataFree).
///
/// # Safety
/// Pointers are NULL or valid for their C types; each non-NULL
/// `dataBuffer` has `dataSize` writable bytes.
pub unsafe fn read(
    api: Api,
    handle: u64,
    vector: *mut IoVectorElementC,
    count: u32,
    erroneous: *mut u32,
) -> Outcome {
    // SAFETY: the caller's promise, for the whole body.
    let result = unsafe { read_inner(api, handle, vector, count) };
    if let Err(error) = &result {
        // SAFETY: the caller's promise.
        unsafe { report_index(erroneous, error) };
    }
    result
}

unsafe fn read_inner(api: Api, handle: u64, vector: *mut IoVectorElementC, count: u32) -> Outcome {
    let checkpoint = state::checkpoint(api, handle)?;
    // SAFETY: the caller's promise.
    let elements_in = unsafe { elements(vector, count) }?;
    let mut request = Vec::with_capacity(elements_in.len());
    for (index, element) in elements_in.iter().enumerate() {
        let parsed = (|| {
            // SAFETY: the caller's promise.
            let section_id = unsafe { section_id_value(&element.section_id) }?;
            let offset = offset(api, element.data_offset)?;
            let size = (!element.data_buffer.is_null()).then_some(element.data_size);
            Ok::<_, ClientError>(ReadElement {
                section_id,
                offset,
                size,
            })
        })();
        request.push(parsed.map_err(|error| at(index, error))?);
    }
    let data = block_on(checkpoint.checkpoint.read(request))?;
    if data.len() != elements_in.len() {
        return Err(ClientError::new(
            ErrorCode::InvalidBuffer,
            format!(
                "the server answered {} elements for {}",
                data.len(),
                elements_in.len()
            ),
        ));
    }
    if count == 0 {
        return Ok(());
    }
    // SAFETY: checked non-NULL with `count` elements above; now written.
    let elements_out = unsafe { std::slice::from_raw_parts_mut(vector, count as usize) };
    // Allocate every library buffer first, so that a failing malloc leaves
    // the caller's vector untouched.
    let mut allocated: Vec<Option<*mut u8>> = Vec::with_capacity(data.len());
    for (element, bytes) in elements_out.iter().zip(&data) {
        if element.data_buffer.is_null() {
            match malloc_copy(bytes) {
                Ok(buffer) => allocated.push(Some(buffer)),
                Err(error) => {
                    for buffer in allocated.into_iter().flatten() {
                        drop(SaBuffer(buffer));
                    }
                    return Err(error);
                }
            }
        } else {
            allocated.push(None);
        }
    }
    for ((element, bytes), buffer) in elements_out.iter_mut().zip(&data).zip(allocated) {
        match buffer {
            Some(buffer) => {
                element.data_buffer = buffer.cast();
                element.data_size = bytes.len() as u64;
                if api == Api::Sa {
                    state::add_sa_buffer(buffer, handle);
                }
                element.read_size = bytes.len() as u64;
            }
            None => {
                let room = usize::try_from(element.data_size).unwrap_or(usize::MAX);
                let length = bytes.len().min(room);
                // SAFETY: the caller promises dataSize writable bytes.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        bytes.as_ptr(),
                        element.data_buffer.cast::<u8>(),
                        length,
                    )
                };
                element.read_size = length as u64;
            }
        }
    }
    Ok(())
}

/// clCkptCheckpointSynchronize / saCkptCheckpointSynchronize.
pub fn synchronize(api: Api, handle: u64, timeout_ns: i64) -> Outcome {
    let checkpoint = state::checkpoint(api, handle)?;
    let limit = limit(api, timeout_ns)?;
    block_on(within(limit, checkpoint.checkpoint.synchronize()))
}

/// clCkptCheckpointSynchronizeAsync / saCkptCheckpointSynchronizeAsync.
pub fn synchronize_async(api: Api, handle: u64, invocation: u64) -> Outcome {
    let checkpoint = state::checkpoint(api, handle)?;
    let service = state::service(api, checkpoint.service)?;
    let _runtime = runtime()?.enter();
    service
        .service
        .synchronize_async(invocation, &checkpoint.checkpoint)
}

/// clCkptImmediateConsumptionRegister.
pub fn immediate_consumption_register(
    api: Api,
    handle: u64,
    callback: Option<NotificationCallbackC>,
    cookie: *mut c_void,
) -> Outcome {
    let checkpoint = state::checkpoint(api, handle)?;
    let service = state::service(api, checkpoint.service)?;
    let callback = callback.ok_or_else(|| null("the notification callback"))?;
    let cookie = cookie as usize;
    let name = checkpoint.checkpoint.name().clone();
    let forward: NotificationCallback = Box::new(move |notification| {
        if let Some(elements) = state::notification_elements(notification) {
            state::collect(CCall::Notification {
                callback,
                cookie,
                handle,
                name: name.clone(),
                elements,
            });
        }
    });
    block_on(
        service
            .service
            .immediate_consumption_register(&checkpoint.checkpoint, forward),
    )
}

/// saCkptSectionIdFree / saCkptIOVectorElementDataFree.
pub fn free_buffer(handle: u64, buffer: *mut c_void) -> Outcome {
    if buffer.is_null() {
        return Err(invalid("the pointer to free is NULL"));
    }
    state::free_sa_buffer(handle, buffer)
}
