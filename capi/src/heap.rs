//! The OpenClovis heap calls of `clHeapApi.h`: malloc and free, so memory
//! the library hands out can be released with clHeapFree (or free).
#![allow(non_snake_case)]

use std::ffi::c_void;

/// `clHeapAllocate`: `malloc(size)`.
#[no_mangle]
pub extern "C" fn clHeapAllocate(size: u32) -> *mut c_void {
    // SAFETY: malloc with any size is defined; NULL is returned on failure.
    unsafe { libc::malloc(size as usize) }
}

/// `clHeapCalloc`: `calloc(chunks, chunk_size)` (calloc checks the product).
#[no_mangle]
pub extern "C" fn clHeapCalloc(chunks: u32, chunk_size: u32) -> *mut c_void {
    // SAFETY: as malloc.
    unsafe { libc::calloc(chunks as usize, chunk_size as usize) }
}

/// `clHeapRealloc`: `realloc(address, size)`.
///
/// # Safety
/// `address` is NULL or from this allocator and not freed.
#[no_mangle]
pub unsafe extern "C" fn clHeapRealloc(address: *mut c_void, size: u32) -> *mut c_void {
    // SAFETY: the caller's promise.
    unsafe { libc::realloc(address, size as usize) }
}

/// `clHeapFree`: `free(address)`.
///
/// # Safety
/// `address` is NULL or from this allocator and not freed.
#[no_mangle]
pub unsafe extern "C" fn clHeapFree(address: *mut c_void) {
    // SAFETY: the caller's promise.
    unsafe { libc::free(address) }
}
