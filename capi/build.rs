//! Gives libckpt.so its soname, so `make install` can install it as
//! libckpt.so.0.1.0 with the usual libckpt.so.0 and libckpt.so links, and
//! applications record the ABI version they were linked against.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libckpt.so.0");
    println!("cargo:rerun-if-changed=build.rs");
}
