//! Anonymous shared memory: a `memfd` mapped `MAP_SHARED`.
//!
//! A memfd has no name in `/dev/shm`, so a crash can never leak one: the
//! kernel frees the memory when the last process holding the fd or a mapping
//! is gone. Its size is sealed after creation, so no peer can shrink it under
//! another's mapping (which would turn accesses into SIGBUS).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};

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
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        rustix::fs::ftruncate(&fd, len as u64)?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
        Self::map(fd, len)
    }

    /// Maps a segment received from another process, checking that it is a
    /// sealed memfd of at least `min_len` bytes.
    pub(crate) fn open(fd: OwnedFd, min_len: usize) -> io::Result<Self> {
        let seals = rustix::fs::fcntl_get_seals(&fd).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "not a herd shared-memory segment",
            )
        })?;
        if !seals.contains(SealFlags::SHRINK) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "shared-memory segment is not sealed",
            ));
        }
        let len = usize::try_from(rustix::fs::fstat(&fd)?.st_size)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad segment size"))?;
        if len < min_len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("shared-memory segment of {len} bytes, expected at least {min_len}"),
            ));
        }
        Self::map(fd, len)
    }

    fn map(fd: OwnedFd, len: usize) -> io::Result<Self> {
        // SAFETY: a fresh shared mapping of the whole memfd, at an address
        // the kernel chooses; nothing else aliases it in this process.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )?
        };
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Self { fd, ptr, len })
    }

    /// The start of the mapping (page-aligned).
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
        // SAFETY: `ptr`/`len` are exactly the mapping made in `map`, and the
        // segment is being dropped, so no reference into it outlives this.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
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
            rustix::fs::ftruncate(a.fd(), 100).is_err(),
            "size is sealed"
        );
    }
}
