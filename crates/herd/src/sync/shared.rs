//! A typed region of shared memory: the common ground of every shared
//! object (header, creation, passing to a child as a task argument).
//!
//! ```text
//! 0   magic "HERD"  kind  version  (pad)   param (u64)   id (u64)
//! 64  the object's own state
//! ```

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ipc::{self, Segment};

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
    seg: Arc<Segment>,
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
            seg,
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
    /// mapping outlives a forgotten guard); `exclusive` for single-lock
    /// objects.
    #[inline]
    pub(crate) fn pin(&self, exclusive: bool) {
        self.seg.pin(exclusive);
    }

    /// Whether this is the process's last handle on the mapping (nothing
    /// else in the process can reach it after this one is dropped).
    pub(crate) fn last_in_process(&self) -> bool {
        Arc::strong_count(&self.seg) == 1
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
            seg,
            kind,
            param,
            id,
        })
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
