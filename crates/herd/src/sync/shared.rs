//! A typed region of shared memory: the common ground of every shared
//! object (header, creation, passing to a child as a task argument).
//!
//! ```text
//! 0   magic "HERD"  kind  version  (pad)   param (u64)   id (u64)
//! 64  the object's own state
//! ```

use std::io;
use std::mem::ManuallyDrop;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{LOCK_BODY, RawMutex};
use crate::ipc::{self, Segment};
use crate::os;

const MAGIC: u32 = u32::from_le_bytes(*b"HERD");
const VERSION: u32 = 1;
/// Where an object's own state starts (one cache line after the header).
pub(crate) const BODY: usize = 64;

/// What a region holds; a child refuses a region of another kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Kind {
    Value = 1,
    Array = 2,
    Lock = 3,
    RLock = 4,
    Event = 5,
    Condition = 6,
    Semaphore = 7,
    Barrier = 8,
    BoundedSemaphore = 9,
    Queue = 10,
}

/// A mapped region holding one shared object.
#[derive(Debug)]
pub(crate) struct Region {
    /// Taken out only in `Drop`.
    seg: ManuallyDrop<Arc<Segment>>,
    kind: Kind,
    param: u64,
    id: u64,
}

impl Region {
    /// A new zero-filled region for an object of `kind` with a `body` of
    /// `body_len` bytes; `param` is kind-specific (a type tag, a capacity).
    pub(crate) fn create(kind: Kind, param: u64, body_len: usize) -> io::Result<Self> {
        let total = BODY.checked_add(body_len).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "shared object too large")
        })?;
        let seg = Segment::create("herd", total)?;
        let id = fresh_id();
        let p = seg.as_ptr();
        // SAFETY: the segment is fresh, page-aligned and at least BODY
        // bytes; nobody else can see it yet, so plain writes are race-free.
        unsafe {
            p.cast::<u32>().write(MAGIC);
            p.add(4).cast::<u32>().write(kind as u32);
            p.add(8).cast::<u32>().write(VERSION);
            p.add(16).cast::<u64>().write(param);
            p.add(24).cast::<u64>().write(id);
        }
        Ok(Self {
            seg: ManuallyDrop::new(seg),
            kind,
            param,
            id,
        })
    }

    /// The object's state (64-byte aligned).
    #[inline]
    pub(crate) fn body(&self) -> *mut u8 {
        // SAFETY: the segment is at least BODY bytes (checked at creation
        // and at open).
        unsafe { self.seg.as_ptr().add(BODY) }
    }

    /// Records that this process's thread took a robust word here (so the
    /// mapping outlives a forgotten guard): semaphores and barriers, on
    /// every acquisition; locks only when their last handle finds a
    /// forgotten guard (`Drop`). `exclusive`: the caller is ordered with
    /// every other pinner (a plain update suffices).
    #[inline]
    pub(crate) fn pin(&self, exclusive: bool) {
        self.seg.pin(exclusive);
    }

    /// Undoes one `pin`.
    #[inline]
    pub(crate) fn unpin(&self, exclusive: bool) {
        self.seg.unpin(exclusive);
    }

    /// The kind-specific parameter.
    pub(crate) fn param(&self) -> u64 {
        self.param
    }

    /// An id unique to this object (the same in every process).
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Writes the region as a task argument (its fd goes on the side).
    pub(crate) fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let fd = ipc::export_fd(self.seg.fd()).map_err(S::Error::custom)?;
        Wire {
            fd,
            kind: self.kind as u32,
            param: self.param,
        }
        .serialize(s)
    }

    /// Reads a region of `kind` whose body is at least `body_len(param)`
    /// bytes, checking its header.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
        kind: Kind,
        body_len: impl Fn(u64) -> Option<usize>,
    ) -> Result<Self, D::Error> {
        let wire = Wire::deserialize(d)?;
        if wire.kind != kind as u32 {
            return Err(D::Error::custom(format!(
                "expected a shared {kind:?}, got another kind of object"
            )));
        }
        let len = body_len(wire.param)
            .ok_or_else(|| D::Error::custom("shared object of an impossible size"))?;
        let fd = ipc::import_fd(wire.fd).map_err(D::Error::custom)?;
        let total = BODY
            .checked_add(len)
            .ok_or_else(|| D::Error::custom("shared object of an impossible size"))?;
        let seg = Segment::open(fd, total).map_err(D::Error::custom)?;
        let p = seg.as_ptr();
        // SAFETY: the segment is at least BODY bytes; the header was written
        // before the segment was ever shared.
        let (magic, k, version, param, id) = unsafe {
            (
                p.cast::<u32>().read(),
                p.add(4).cast::<u32>().read(),
                p.add(8).cast::<u32>().read(),
                p.add(16).cast::<u64>().read(),
                p.add(24).cast::<u64>().read(),
            )
        };
        if magic != MAGIC || version != VERSION || k != kind as u32 || param != wire.param {
            return Err(D::Error::custom(format!(
                "the shared memory is not a herd {kind:?}"
            )));
        }
        Ok(Self {
            seg: ManuallyDrop::new(seg),
            kind,
            param,
            id,
        })
    }

    /// Offsets in the body of the robust words this kind holds (those a
    /// lock guard links into its thread's robust list). Semaphores and
    /// barriers count theirs in the segment instead (`pin`).
    fn robust_words(&self) -> &'static [usize] {
        match self.kind {
            Kind::Lock | Kind::RLock | Kind::Value | Kind::Array | Kind::Condition => &[0],
            // The tail lock, and the head lock in the queue's state.
            Kind::Queue => &[0, LOCK_BODY + 64],
            Kind::Event | Kind::Semaphore | Kind::Barrier | Kind::BoundedSemaphore => &[],
        }
    }
}

impl Drop for Region {
    /// A guard can only outlive its lock through `mem::forget`, and then the
    /// lock stays linked into its thread's robust list, which the kernel and
    /// glibc walk: the mapping must then never be unmapped. The process's
    /// last handle on the segment checks, once (`Arc::into_inner` picks
    /// exactly one of any handles dropped at the same moment, and a
    /// concurrent lookup of the mapping either came first — its handle
    /// checks later — or finds it gone): is a robust word here held by a
    /// live thread of this process? Counting on every acquisition cost
    /// 1–2 ns of a 19–23 ns acquire+release.
    fn drop(&mut self) {
        // SAFETY: taken once, here; the field is not used after.
        let seg = unsafe { ManuallyDrop::take(&mut self.seg) };
        let Some(seg) = Arc::into_inner(seg) else {
            return;
        };
        for &off in self.robust_words() {
            // SAFETY: the body holds a robust mutex at each of this kind's
            // offsets (64-byte aligned, inside the mapping, checked at
            // creation and open); the mapping lives until `seg` drops.
            let owner = unsafe { RawMutex::at(seg.as_ptr().add(BODY + off)) }.owner();
            if owner != 0 && os::thread_in_process(owner) {
                seg.pin(true);
                break;
            }
        }
        drop(seg);
    }
}

/// What crosses the process boundary for a shared object.
#[derive(Serialize, Deserialize)]
struct Wire {
    fd: u32,
    kind: u32,
    param: u64,
}

/// A process-unique, practically globally unique object id.
fn fresh_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    (u64::from(std::process::id()) << 32) ^ n
}
