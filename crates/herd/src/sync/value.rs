//! [`Value`]: one plain value in shared memory, visible to every process
//! it is passed to — Python's `multiprocessing.Value` without the lock.

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ipc::{self, Segment};

const MAGIC: u32 = u32::from_le_bytes(*b"HRDV");
const VERSION: u32 = 1;
/// The value lives one cache line after the header.
const VALUE_OFFSET: usize = 64;

mod sealed {
    pub trait Sealed {}
}

/// A plain type whose values [`Value`] can load and store atomically: the
/// integer types and `bool`. Sealed: herd implements it for exactly those.
pub trait AtomicPlain: Copy + Send + Sync + fmt::Debug + 'static + sealed::Sealed {
    #[doc(hidden)]
    fn tag() -> u64;
    #[doc(hidden)]
    /// # Safety
    /// `p` is valid, aligned for `Self`, and only accessed atomically.
    unsafe fn load(p: *mut u8) -> Self;
    #[doc(hidden)]
    /// # Safety
    /// As for `load`.
    unsafe fn store(p: *mut u8, v: Self);
    #[doc(hidden)]
    /// # Safety
    /// As for `load`.
    unsafe fn swap(p: *mut u8, v: Self) -> Self;
    #[doc(hidden)]
    /// # Safety
    /// As for `load`.
    unsafe fn compare_exchange(p: *mut u8, current: Self, new: Self) -> Result<Self, Self>;
}

/// An [`AtomicPlain`] integer: [`Value::fetch_add`] and [`Value::fetch_sub`].
pub trait AtomicInteger: AtomicPlain {
    #[doc(hidden)]
    /// # Safety
    /// As for [`AtomicPlain::load`].
    unsafe fn fetch_add(p: *mut u8, v: Self) -> Self;
    #[doc(hidden)]
    /// # Safety
    /// As for [`AtomicPlain::load`].
    unsafe fn fetch_sub(p: *mut u8, v: Self) -> Self;
}

macro_rules! atomic_plain {
    ($t:ty, $a:ty, $tag:literal) => {
        impl sealed::Sealed for $t {}
        impl AtomicPlain for $t {
            fn tag() -> u64 {
                $tag
            }
            unsafe fn load(p: *mut u8) -> Self {
                // SAFETY: forwarded to the caller's contract.
                unsafe { <$a>::from_ptr(p.cast()) }.load(Ordering::SeqCst)
            }
            unsafe fn store(p: *mut u8, v: Self) {
                // SAFETY: forwarded to the caller's contract.
                unsafe { <$a>::from_ptr(p.cast()) }.store(v, Ordering::SeqCst)
            }
            unsafe fn swap(p: *mut u8, v: Self) -> Self {
                // SAFETY: forwarded to the caller's contract.
                unsafe { <$a>::from_ptr(p.cast()) }.swap(v, Ordering::SeqCst)
            }
            unsafe fn compare_exchange(p: *mut u8, current: Self, new: Self) -> Result<Self, Self> {
                // SAFETY: forwarded to the caller's contract.
                unsafe { <$a>::from_ptr(p.cast()) }.compare_exchange(
                    current,
                    new,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                )
            }
        }
    };
}

macro_rules! atomic_integer {
    ($t:ty, $a:ty, $tag:literal) => {
        atomic_plain!($t, $a, $tag);
        impl AtomicInteger for $t {
            unsafe fn fetch_add(p: *mut u8, v: Self) -> Self {
                // SAFETY: forwarded to the caller's contract.
                unsafe { <$a>::from_ptr(p.cast()) }.fetch_add(v, Ordering::SeqCst)
            }
            unsafe fn fetch_sub(p: *mut u8, v: Self) -> Self {
                // SAFETY: forwarded to the caller's contract.
                unsafe { <$a>::from_ptr(p.cast()) }.fetch_sub(v, Ordering::SeqCst)
            }
        }
    };
}

use std::sync::atomic as a;
atomic_plain!(bool, a::AtomicBool, 1);
atomic_integer!(u8, a::AtomicU8, 2);
atomic_integer!(i8, a::AtomicI8, 3);
atomic_integer!(u16, a::AtomicU16, 4);
atomic_integer!(i16, a::AtomicI16, 5);
atomic_integer!(u32, a::AtomicU32, 6);
atomic_integer!(i32, a::AtomicI32, 7);
atomic_integer!(u64, a::AtomicU64, 8);
atomic_integer!(i64, a::AtomicI64, 9);
atomic_integer!(usize, a::AtomicUsize, 10);
atomic_integer!(isize, a::AtomicIsize, 11);

/// One value of type `T` in shared memory. Clones, and copies passed to
/// child processes as task arguments, all see the same value.
///
/// Each [`get`](Self::get) and [`set`](Self::set) is atomic on its own, but
/// `v.set(v.get() + 1)` is a read-modify-write that races, exactly like
/// Python's `v.value += 1` without `get_lock()`; [`fetch_add`](Self::fetch_add)
/// and [`compare_exchange`](Self::compare_exchange) do not race.
///
/// The memory is an anonymous `memfd`: nothing is left in `/dev/shm`, even
/// after a crash.
///
/// ```
/// use herd::sync::Value;
///
/// #[herd::task]
/// fn add_many(total: Value<u64>, n: u64) {
///     for _ in 0..n {
///         total.fetch_add(1);
///     }
/// }
///
/// fn main() {
///     herd::init();
///     let total = Value::new(0u64).unwrap();
///     let mut a = herd::spawn(add_many, (total.clone(), 1000)).unwrap();
///     let mut b = herd::spawn(add_many, (total.clone(), 1000)).unwrap();
///     a.join().unwrap();
///     b.join().unwrap();
///     assert_eq!(total.get(), 2000);
/// }
/// ```
pub struct Value<T: AtomicPlain> {
    seg: Arc<Segment>,
    _t: PhantomData<T>,
}

impl<T: AtomicPlain> Value<T> {
    /// A new shared value.
    pub fn new(initial: T) -> io::Result<Self> {
        let seg = Segment::create("herd-value", VALUE_OFFSET + 64)?;
        let p = seg.as_ptr();
        // SAFETY: the segment is fresh, page-aligned, at least 128 bytes,
        // and not yet shared: plain writes of the header are race-free.
        unsafe {
            p.cast::<u32>().write(MAGIC);
            p.add(4).cast::<u32>().write(VERSION);
            p.add(8).cast::<u64>().write(T::tag());
        }
        let v = Self {
            seg: Arc::new(seg),
            _t: PhantomData,
        };
        v.set(initial);
        Ok(v)
    }

    fn slot(&self) -> *mut u8 {
        // SAFETY: VALUE_OFFSET + 64 <= len, checked at creation and open.
        unsafe { self.seg.as_ptr().add(VALUE_OFFSET) }
    }

    /// The current value.
    pub fn get(&self) -> T {
        // SAFETY: the slot is 64-byte aligned and only accessed atomically.
        unsafe { T::load(self.slot()) }
    }

    /// Replaces the value.
    pub fn set(&self, v: T) {
        // SAFETY: as in `get`.
        unsafe { T::store(self.slot(), v) }
    }

    /// Replaces the value, returning the old one.
    pub fn swap(&self, v: T) -> T {
        // SAFETY: as in `get`.
        unsafe { T::swap(self.slot(), v) }
    }

    /// Stores `new` if the value is `current`; returns the previous value,
    /// as `Ok` if it was `current` and `Err` if not.
    pub fn compare_exchange(&self, current: T, new: T) -> Result<T, T> {
        // SAFETY: as in `get`.
        unsafe { T::compare_exchange(self.slot(), current, new) }
    }
}

impl<T: AtomicInteger> Value<T> {
    /// Adds `v` (wrapping), returning the previous value.
    pub fn fetch_add(&self, v: T) -> T {
        // SAFETY: as in `get`.
        unsafe { T::fetch_add(self.slot(), v) }
    }

    /// Subtracts `v` (wrapping), returning the previous value.
    pub fn fetch_sub(&self, v: T) -> T {
        // SAFETY: as in `get`.
        unsafe { T::fetch_sub(self.slot(), v) }
    }
}

impl<T: AtomicPlain> Clone for Value<T> {
    fn clone(&self) -> Self {
        Self {
            seg: Arc::clone(&self.seg),
            _t: PhantomData,
        }
    }
}

impl<T: AtomicPlain> fmt::Debug for Value<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Value").field(&self.get()).finish()
    }
}

/// What crosses the process boundary: the index of the memfd in the
/// message's fd side channel, and the value's type tag.
#[derive(Serialize, Deserialize)]
struct Wire {
    fd: u32,
    tag: u64,
}

impl<T: AtomicPlain> Serialize for Value<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let fd = ipc::export_fd(self.seg.fd()).map_err(S::Error::custom)?;
        Wire { fd, tag: T::tag() }.serialize(s)
    }
}

impl<'de, T: AtomicPlain> Deserialize<'de> for Value<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = Wire::deserialize(d)?;
        if wire.tag != T::tag() {
            return Err(D::Error::custom("shared Value holds a different type"));
        }
        let fd = ipc::import_fd(wire.fd).map_err(D::Error::custom)?;
        let seg = Segment::open(fd, VALUE_OFFSET + 64).map_err(D::Error::custom)?;
        let p = seg.as_ptr();
        // SAFETY: the segment is at least VALUE_OFFSET + 64 bytes (checked by
        // `open`) and the header was written before the segment was shared.
        let (magic, version, tag) = unsafe {
            (
                p.cast::<u32>().read(),
                p.add(4).cast::<u32>().read(),
                p.add(8).cast::<u64>().read(),
            )
        };
        if magic != MAGIC || version != VERSION || tag != T::tag() {
            return Err(D::Error::custom(
                "the shared memory is not a herd Value of this type",
            ));
        }
        Ok(Self {
            seg: Arc::new(seg),
            _t: PhantomData,
        })
    }
}
