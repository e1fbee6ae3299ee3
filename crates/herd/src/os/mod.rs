//! The one platform seam. Every system call herd makes goes through the file
//! chosen here; the rest of the crate is platform-free. Linux is the platform
//! we build and test; a macOS port adds `macos.rs` with the same functions.

#[cfg(target_os = "linux")]
#[path = "linux.rs"]
mod imp;

pub(crate) use imp::*;
