//! The C structures of `clCkptApi.h` / `saCkpt.h` (the two APIs share every
//! layout), and checked reads of what C hands us.
//!
//! Every pointer from C is checked for NULL before use, every length is
//! bounded by the field that holds it (a `ClNameT` never yields more than
//! its 256 bytes, whatever its `length` says) and by the protocol's limits
//! before anything is copied, and sums of C sizes use checked arithmetic.

use std::ffi::c_void;

use ckpt_client::ClientError;
use ckpt_proto::{
    CheckpointName, CreationAttributes, CreationFlags, ErrorCode, SectionId, NAME_BYTES_MAX,
};

/// `ClNameT` / `SaNameT`.
#[repr(C)]
pub struct NameC {
    pub length: u16,
    pub value: [u8; NAME_BYTES_MAX],
}

/// `ClVersionT` / `SaVersionT`.
#[repr(C)]
pub struct VersionC {
    pub release_code: u8,
    pub major_version: u8,
    pub minor_version: u8,
}

/// `ClCkptCheckpointCreationAttributesT` / `SaCkptCheckpointCreationAttributesT`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CreationAttributesC {
    pub creation_flags: u32,
    pub checkpoint_size: u64,
    pub retention_duration: i64,
    pub max_sections: u32,
    pub max_section_size: u64,
    pub max_section_id_size: u64,
}

/// `ClCkptSectionIdT` / `SaCkptSectionIdT`.
#[repr(C)]
pub struct SectionIdC {
    pub id_len: u16,
    pub id: *mut u8,
}

/// `ClCkptSectionCreationAttributesT` / `SaCkptSectionCreationAttributesT`.
#[repr(C)]
pub struct SectionCreationAttributesC {
    pub section_id: *mut SectionIdC,
    pub expiration_time: i64,
}

/// `ClCkptSectionDescriptorT` / `SaCkptSectionDescriptorT`.
#[repr(C)]
pub struct SectionDescriptorC {
    pub section_id: SectionIdC,
    pub expiration_time: i64,
    pub section_size: u64,
    pub section_state: u32,
    pub last_update: i64,
}

/// `ClCkptIOVectorElementT` / `SaCkptIOVectorElementT`. `data_offset` is
/// a signed `ClOffsetT` in the OpenClovis API and an unsigned `SaOffsetT`
/// in the SA Forum one: the same bits.
#[repr(C)]
pub struct IoVectorElementC {
    pub section_id: SectionIdC,
    pub data_buffer: *mut c_void,
    pub data_size: u64,
    pub data_offset: u64,
    pub read_size: u64,
}

/// `ClCkptCheckpointDescriptorT` / `SaCkptCheckpointDescriptorT`.
#[repr(C)]
pub struct CheckpointDescriptorC {
    pub checkpoint_creation_attributes: CreationAttributesC,
    pub number_of_sections: u32,
    pub memory_used: u32,
}

/// `ClCkptCheckpointOpenCallbackT` / `SaCkptCheckpointOpenCallbackT`.
pub type OpenCallbackC = unsafe extern "C" fn(invocation: u64, handle: u64, error: u32);
/// `ClCkptCheckpointSynchronizeCallbackT` / `SaCkptCheckpointSynchronizeCallbackT`.
pub type SynchronizeCallbackC = unsafe extern "C" fn(invocation: u64, error: u32);
/// `ClCkptNotificationCallbackT`.
pub type NotificationCallbackC = unsafe extern "C" fn(
    handle: u64,
    name: *mut NameC,
    io_vector: *mut IoVectorElementC,
    number: u32,
    cookie: *mut c_void,
) -> u32;

/// `ClCkptCallbacksT` / `SaCkptCallbacksT`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct CallbacksC {
    pub open: Option<OpenCallbackC>,
    pub synchronize: Option<SynchronizeCallbackC>,
}

pub fn null(what: &str) -> ClientError {
    ClientError::new(ErrorCode::NullPointer, format!("{what} is NULL"))
}

pub fn invalid(detail: impl Into<String>) -> ClientError {
    ClientError::new(ErrorCode::InvalidParameter, detail)
}

/// A checkpoint name from C.
///
/// # Errors
/// `NULL_POINTER` for NULL, `NAME_TOO_LONG` when `length` exceeds the 256
/// bytes the structure holds, `INVALID_PARAMETER` for an empty name.
///
/// # Safety
/// `name` is NULL or points to a readable `ClNameT`.
pub unsafe fn read_name(name: *const NameC) -> Result<CheckpointName, ClientError> {
    // SAFETY: the caller promises a readable ClNameT or NULL.
    let Some(name) = (unsafe { name.as_ref() }) else {
        return Err(null("the checkpoint name"));
    };
    let length = usize::from(name.length);
    if length > NAME_BYTES_MAX {
        return Err(ClientError::new(
            ErrorCode::NameTooLong,
            format!("name length {length} exceeds the {NAME_BYTES_MAX} bytes of ClNameT/SaNameT"),
        ));
    }
    Ok(CheckpointName::new(name.value[..length].to_vec())?)
}

/// Fills a C name from a checkpoint name (at most 256 bytes by construction).
pub fn write_name(name: &CheckpointName) -> NameC {
    let bytes = name.as_bytes();
    let length = bytes.len().min(NAME_BYTES_MAX);
    let mut value = [0u8; NAME_BYTES_MAX];
    value[..length].copy_from_slice(&bytes[..length]);
    NameC {
        length: length as u16,
        value,
    }
}

/// The bytes of a section id structure.
///
/// # Errors
/// `NULL_POINTER` for a non-empty id without bytes.
///
/// # Safety
/// `id.id` is NULL or points to `id.id_len` readable bytes.
pub unsafe fn section_id_value(id: &SectionIdC) -> Result<SectionId, ClientError> {
    if id.id_len == 0 {
        return Ok(SectionId::DEFAULT);
    }
    if id.id.is_null() {
        return Err(null("a section id's bytes (idLen > 0)"));
    }
    // SAFETY: the caller promises id_len readable bytes at id.
    let bytes = unsafe { std::slice::from_raw_parts(id.id, usize::from(id.id_len)) };
    Ok(SectionId::new(bytes.to_vec()))
}

/// A section id from a pointer to its structure.
///
/// # Errors
/// `NULL_POINTER` for NULL or for a non-empty id without bytes.
///
/// # Safety
/// `id` is NULL or points to a readable section id whose bytes are readable.
pub unsafe fn read_section_id(id: *const SectionIdC) -> Result<SectionId, ClientError> {
    // SAFETY: the caller's promise.
    match unsafe { id.as_ref() } {
        None => Err(null("the section id")),
        // SAFETY: the caller's promise.
        Some(id) => unsafe { section_id_value(id) },
    }
}

/// Creation attributes from C; NULL is "none".
///
/// # Safety
/// `attributes` is NULL or points to readable attributes.
pub unsafe fn read_attributes(
    attributes: *const CreationAttributesC,
) -> Option<CreationAttributes> {
    // SAFETY: the caller's promise.
    let attributes = unsafe { attributes.as_ref() }?;
    Some(CreationAttributes {
        creation_flags: CreationFlags(attributes.creation_flags),
        checkpoint_size: attributes.checkpoint_size,
        retention_duration_ns: attributes.retention_duration,
        max_sections: attributes.max_sections,
        max_section_size: attributes.max_section_size,
        max_section_id_size: attributes.max_section_id_size,
    })
}

/// The C form of creation attributes.
pub fn write_attributes(attributes: &CreationAttributes) -> CreationAttributesC {
    CreationAttributesC {
        creation_flags: attributes.creation_flags.0,
        checkpoint_size: attributes.checkpoint_size,
        retention_duration: attributes.retention_duration_ns,
        max_sections: attributes.max_sections,
        max_section_size: attributes.max_section_size,
        max_section_id_size: attributes.max_section_id_size,
    }
}

/// `bytes` in a buffer from `malloc` (so `free`, `clHeapFree` and the SA
/// Forum free calls release it); never NULL, even for no bytes.
///
/// # Errors
/// `NO_MEMORY` when malloc fails.
pub fn malloc_copy(bytes: &[u8]) -> Result<*mut u8, ClientError> {
    // SAFETY: malloc of at least one byte; checked for NULL below.
    let buffer = unsafe { libc::malloc(bytes.len().max(1)) }.cast::<u8>();
    if buffer.is_null() {
        return Err(ClientError::new(
            ErrorCode::NoMemory,
            format!("cannot allocate {} bytes", bytes.len()),
        ));
    }
    // SAFETY: the buffer holds at least bytes.len() bytes and is fresh.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), buffer, bytes.len()) };
    Ok(buffer)
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};
    use std::process::Command;

    use super::*;

    /// The C compiler's sizes and offsets of every structure in the headers,
    /// for both APIs, are those of the Rust mirrors here.
    #[test]
    fn layouts_match_the_headers() {
        let checks: Vec<(&str, usize)> = vec![
            ("sizeof(ClNameT)", size_of::<NameC>()),
            ("sizeof(SaNameT)", size_of::<NameC>()),
            ("offsetof(ClNameT, value)", offset_of!(NameC, value)),
            ("sizeof(ClVersionT)", size_of::<VersionC>()),
            ("sizeof(SaVersionT)", size_of::<VersionC>()),
            (
                "sizeof(ClCkptCheckpointCreationAttributesT)",
                size_of::<CreationAttributesC>(),
            ),
            (
                "sizeof(SaCkptCheckpointCreationAttributesT)",
                size_of::<CreationAttributesC>(),
            ),
            (
                "offsetof(ClCkptCheckpointCreationAttributesT, checkpointSize)",
                offset_of!(CreationAttributesC, checkpoint_size),
            ),
            (
                "offsetof(ClCkptCheckpointCreationAttributesT, retentionDuration)",
                offset_of!(CreationAttributesC, retention_duration),
            ),
            (
                "offsetof(ClCkptCheckpointCreationAttributesT, maxSections)",
                offset_of!(CreationAttributesC, max_sections),
            ),
            (
                "offsetof(ClCkptCheckpointCreationAttributesT, maxSectionSize)",
                offset_of!(CreationAttributesC, max_section_size),
            ),
            (
                "offsetof(SaCkptCheckpointCreationAttributesT, maxSectionIdSize)",
                offset_of!(CreationAttributesC, max_section_id_size),
            ),
            ("sizeof(ClCkptSectionIdT)", size_of::<SectionIdC>()),
            ("offsetof(SaCkptSectionIdT, id)", offset_of!(SectionIdC, id)),
            (
                "sizeof(ClCkptSectionCreationAttributesT)",
                size_of::<SectionCreationAttributesC>(),
            ),
            (
                "offsetof(SaCkptSectionCreationAttributesT, expirationTime)",
                offset_of!(SectionCreationAttributesC, expiration_time),
            ),
            (
                "sizeof(ClCkptSectionDescriptorT)",
                size_of::<SectionDescriptorC>(),
            ),
            (
                "sizeof(SaCkptSectionDescriptorT)",
                size_of::<SectionDescriptorC>(),
            ),
            (
                "offsetof(ClCkptSectionDescriptorT, expirationTime)",
                offset_of!(SectionDescriptorC, expiration_time),
            ),
            (
                "offsetof(ClCkptSectionDescriptorT, sectionSize)",
                offset_of!(SectionDescriptorC, section_size),
            ),
            (
                "offsetof(SaCkptSectionDescriptorT, sectionState)",
                offset_of!(SectionDescriptorC, section_state),
            ),
            (
                "offsetof(ClCkptSectionDescriptorT, lastUpdate)",
                offset_of!(SectionDescriptorC, last_update),
            ),
            (
                "sizeof(ClCkptIOVectorElementT)",
                size_of::<IoVectorElementC>(),
            ),
            (
                "sizeof(SaCkptIOVectorElementT)",
                size_of::<IoVectorElementC>(),
            ),
            (
                "offsetof(ClCkptIOVectorElementT, dataBuffer)",
                offset_of!(IoVectorElementC, data_buffer),
            ),
            (
                "offsetof(SaCkptIOVectorElementT, dataSize)",
                offset_of!(IoVectorElementC, data_size),
            ),
            (
                "offsetof(ClCkptIOVectorElementT, dataOffset)",
                offset_of!(IoVectorElementC, data_offset),
            ),
            (
                "offsetof(SaCkptIOVectorElementT, readSize)",
                offset_of!(IoVectorElementC, read_size),
            ),
            (
                "sizeof(ClCkptCheckpointDescriptorT)",
                size_of::<CheckpointDescriptorC>(),
            ),
            (
                "sizeof(SaCkptCheckpointDescriptorT)",
                size_of::<CheckpointDescriptorC>(),
            ),
            (
                "offsetof(ClCkptCheckpointDescriptorT, numberOfSections)",
                offset_of!(CheckpointDescriptorC, number_of_sections),
            ),
            (
                "offsetof(SaCkptCheckpointDescriptorT, memoryUsed)",
                offset_of!(CheckpointDescriptorC, memory_used),
            ),
            ("sizeof(ClCkptCallbacksT)", size_of::<CallbacksC>()),
            ("sizeof(SaCkptCallbacksT)", size_of::<CallbacksC>()),
            ("sizeof(ClCkptSectionsChosenT)", 4),
            ("sizeof(SaAisErrorT)", 4),
            ("sizeof(ClDispatchFlagsT)", 4),
            ("sizeof(ClSelectionObjectT)", 8),
            ("sizeof(ClTimeT)", 8),
            ("sizeof(ClHandleT)", 8),
        ];
        let dir = std::env::temp_dir().join(format!("ckpt-capi-layout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut source = String::from(
            "#include <stddef.h>\n#include <stdio.h>\n#include <clCkptApi.h>\n#include <saCkpt.h>\nint main(void) {\n",
        );
        for (expression, _) in &checks {
            source.push_str(&format!(
                "    printf(\"%zu\\n\", (size_t)({expression}));\n"
            ));
        }
        source.push_str("    return 0;\n}\n");
        std::fs::write(dir.join("layout.c"), source).unwrap();
        let built = Command::new("cc")
            .arg("-I")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/include"))
            .arg(dir.join("layout.c"))
            .arg("-o")
            .arg(dir.join("layout"))
            .status()
            .expect("cc runs");
        assert!(built.success());
        let output = Command::new(dir.join("layout")).output().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let sizes: Vec<usize> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        assert_eq!(sizes.len(), checks.len());
        for ((expression, rust), c) in checks.iter().zip(sizes) {
            assert_eq!(*rust, c, "{expression}: Rust {rust}, C {c}");
        }
    }
}
