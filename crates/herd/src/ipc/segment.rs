//! Anonymous shared memory: a `memfd` mapped `MAP_SHARED`.
//!
//! A memfd has no name in `/dev/shm`, so a crash can never leak one: the
//! kernel frees the memory when the last process holding the fd or a mapping
//! is gone. Its size is sealed after creation, so no peer can shrink it under
//! another's mapping (which would turn accesses into SIGBUS).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use crate::os;

/// A shared-memory segment mapped into this process.
#[derive(Debug)]
pub(crate) struct Segment {
    fd: OwnedFd,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; the segment only hands out a
// raw pointer, and every primitive built on it synchronises its accesses
// with atomics, as it must across processes anyway.
unsafe impl Send for Segment {}
// SAFETY: as above: `&Segment` gives no unsynchronised access by itself.
unsafe impl Sync for Segment {}

impl Segment {
    /// Creates a zero-filled segment of `len` bytes.
    pub(crate) fn create(name: &str, len: usize) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty segment"));
        }
        let fd = os::memfd_sealed(name, len)?;
        let ptr = os::map_shared(fd.as_fd(), len)?;
        Ok(Self { fd, ptr, len })
    }

    /// Maps a segment received from another process, checking that it is a
    /// sealed memfd of at least `min_len` bytes.
    pub(crate) fn open(fd: OwnedFd, min_len: usize) -> io::Result<Self> {
        let len = os::sealed_memfd_len(fd.as_fd())?;
        if len < min_len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("shared-memory segment of {len} bytes, expected at least {min_len}"),
            ));
        }
        let ptr = os::map_shared(fd.as_fd(), len)?;
        Ok(Self { fd, ptr, len })
    }

    /// The start of the mapping (page-aligned).
    #[inline]
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The memfd, to pass to another process.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping made at creation or
        // open, and the segment is being dropped, so nothing uses it after.
        unsafe { os::unmap(self.ptr, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_share_and_refuse_impostors() {
        let a = Segment::create("herd-test", 4096).unwrap();
        // SAFETY: in bounds of the mapping; single-threaded test.
        unsafe { a.as_ptr().add(100).write(42) };
        let b = Segment::open(a.fd().try_clone_to_owned().unwrap(), 4096).unwrap();
        // SAFETY: in bounds; the write above is visible through the second
        // mapping of the same memory.
        assert_eq!(unsafe { b.as_ptr().add(100).read() }, 42);
        assert!(Segment::open(a.fd().try_clone_to_owned().unwrap(), 8192).is_err());
        let file: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        assert!(Segment::open(file, 1).is_err());
        assert!(
            std::fs::File::from(a.fd().try_clone_to_owned().unwrap())
                .set_len(100)
                .is_err(),
            "size is sealed"
        );
    }
}
