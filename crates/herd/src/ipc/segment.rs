//! Anonymous shared memory: a `memfd` mapped `MAP_SHARED`.
//!
//! A memfd has no name in `/dev/shm`, so a crash can never leak one: the
//! kernel frees the memory when the last process holding the fd or a mapping
//! is gone. Its size is sealed after creation, so no peer can shrink it under
//! another's mapping (which would turn accesses into SIGBUS).

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::os;

/// A shared-memory segment mapped into this process. One mapping per memfd
/// per process: receiving the same object twice shares the mapping, so a
/// lock held through one copy cannot be unmapped by dropping the other.
#[derive(Debug)]
pub(crate) struct Segment {
    fd: OwnedFd,
    ptr: NonNull<u8>,
    len: usize,
    /// Robust words in this segment held by threads of this process (see
    /// `pin`; for a lock, set once when its last handle finds it held).
    /// While any is held, the kernel's robust list may point into the
    /// mapping, so it must never be unmapped.
    pins: AtomicUsize,
}

/// Every segment mapped in this process, by (device, inode) of its memfd.
type Mapped = HashMap<(u64, u64), Weak<Segment>>;
static MAPPED: Mutex<Option<Mapped>> = Mutex::new(None);

fn mapped() -> std::sync::MutexGuard<'static, Option<Mapped>> {
    MAPPED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn remember(key: (u64, u64), seg: &Arc<Segment>) {
    let mut m = mapped();
    let map = m.get_or_insert_with(HashMap::new);
    if map.len() >= 64 && map.len().is_power_of_two() {
        map.retain(|_, w| w.strong_count() > 0);
    }
    map.insert(key, Arc::downgrade(seg));
}

// SAFETY: the mapping is plain shared memory; the segment only hands out a
// raw pointer, and every primitive built on it synchronises its accesses
// with atomics, as it must across processes anyway.
unsafe impl Send for Segment {}
// SAFETY: as above: `&Segment` gives no unsynchronised access by itself.
unsafe impl Sync for Segment {}

impl Segment {
    /// Creates a zero-filled segment of `len` bytes.
    pub(crate) fn create(name: &str, len: usize) -> io::Result<Arc<Self>> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty segment"));
        }
        let fd = os::memfd_sealed(name, len)?;
        let key = os::file_identity(fd.as_fd())?;
        let ptr = os::map_shared(fd.as_fd(), len)?;
        let seg = Arc::new(Self {
            fd,
            ptr,
            len,
            pins: AtomicUsize::new(0),
        });
        remember(key, &seg);
        Ok(seg)
    }

    /// Maps a segment received from another process, checking that it is a
    /// sealed memfd of at least `min_len` bytes. A segment already mapped
    /// here is shared, not mapped twice.
    pub(crate) fn open(fd: OwnedFd, min_len: usize) -> io::Result<Arc<Self>> {
        let len = os::sealed_memfd_len(fd.as_fd())?;
        if len < min_len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("shared-memory segment of {len} bytes, expected at least {min_len}"),
            ));
        }
        let key = os::file_identity(fd.as_fd())?;
        if let Some(seg) = mapped()
            .as_ref()
            .and_then(|m| m.get(&key))
            .and_then(Weak::upgrade)
        {
            // Already mapped here: share it (the new fd is closed).
            return Ok(seg);
        }
        let ptr = os::map_shared(fd.as_fd(), len)?;
        let seg = Arc::new(Self {
            fd,
            ptr,
            len,
            pins: AtomicUsize::new(0),
        });
        remember(key, &seg);
        Ok(seg)
    }

    /// Records that a thread of this process took (or, for a lock found
    /// held at its last handle's drop, holds) a robust word here.
    /// `exclusive`: the caller is ordered with every other pinner, so a
    /// plain update suffices.
    #[inline]
    pub(crate) fn pin(&self, exclusive: bool) {
        if exclusive {
            self.pins
                .store(self.pins.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        } else {
            self.pins.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Undoes one `pin`.
    #[inline]
    pub(crate) fn unpin(&self, exclusive: bool) {
        if exclusive {
            self.pins.store(
                self.pins.load(Ordering::Relaxed).saturating_sub(1),
                Ordering::Relaxed,
            );
        } else {
            self.pins.fetch_sub(1, Ordering::Relaxed);
        }
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
        if self.pins.load(Ordering::Relaxed) != 0 {
            // A guard was forgotten (`mem::forget`): its lock stays on the
            // thread's robust list, which the kernel and glibc may still
            // walk. Keep the mapping for the process's life.
            return;
        }
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
        assert!(Arc::ptr_eq(&a, &b), "one mapping per memfd per process");
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
