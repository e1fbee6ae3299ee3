//! [`Value`] and [`Array`]: plain data in shared memory, each with its own
//! robust lock — Python's `multiprocessing.Value` and `Array`.

use std::any::type_name;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytemuck::Pod;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::lock::{LOCK_BODY, LockCore, LockResult};
use super::shared::{Kind, Region};

mod sealed {
    pub trait Sealed {}
}

/// A plain type whose values can be loaded and stored atomically in shared
/// memory: the integer types. Sealed. (`bool` is not plain data — another
/// process could leave any byte there — so a flag is a `Value<u8>`.)
pub trait AtomicPlain: Pod + Send + Sync + fmt::Debug + sealed::Sealed {
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

/// An [`AtomicPlain`] integer: `fetch_add` and `fetch_sub`.
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

macro_rules! atomic_integer {
    ($($t:ty => $a:ty),* $(,)?) => {$(
        impl sealed::Sealed for $t {}
        impl AtomicPlain for $t {
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
                unsafe { <$a>::from_ptr(p.cast()) }.compare_exchange(current, new, Ordering::SeqCst, Ordering::SeqCst)
            }
        }
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
    )*};
}

use std::sync::atomic as a;
atomic_integer!(
    u8 => a::AtomicU8, i8 => a::AtomicI8, u16 => a::AtomicU16, i16 => a::AtomicI16,
    u32 => a::AtomicU32, i32 => a::AtomicI32, u64 => a::AtomicU64, i64 => a::AtomicI64,
    usize => a::AtomicUsize, isize => a::AtomicIsize,
);

/// Reads a `T` from shared memory byte by byte with relaxed atomic loads:
/// other threads and processes may write it at the same time (a torn value
/// is possible without the lock, as in Python; undefined behaviour is not).
///
/// # Safety
/// `p` is valid for `size_of::<T>()` bytes for the call.
unsafe fn load_bytes<T: Pod>(p: *const T) -> T {
    let mut out = T::zeroed();
    let dst = bytemuck::bytes_of_mut(&mut out);
    for (i, b) in dst.iter_mut().enumerate() {
        // SAFETY: byte `i` of the value is in bounds (caller's contract);
        // an AtomicU8 may alias any byte.
        *b = unsafe { a::AtomicU8::from_ptr(p.cast::<u8>().cast_mut().add(i)) }
            .load(Ordering::Relaxed);
    }
    out
}

/// Writes a `T` to shared memory byte by byte with relaxed atomic stores.
///
/// # Safety
/// As for [`load_bytes`].
unsafe fn store_bytes<T: Pod>(p: *mut T, v: T) {
    for (i, b) in bytemuck::bytes_of(&v).iter().enumerate() {
        // SAFETY: as in `load_bytes`.
        unsafe { a::AtomicU8::from_ptr(p.cast::<u8>().add(i)) }.store(*b, Ordering::Relaxed);
    }
}

/// A stable tag for `T`, so a child refuses a region holding another type.
fn tag<T>() -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in type_name::<T>()
        .bytes()
        .chain((std::mem::size_of::<T>() as u64).to_le_bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Bytes for `n` values of `T`, rounded up to a cache line.
fn bytes_for<T>(n: usize) -> Option<usize> {
    n.checked_mul(std::mem::size_of::<T>())?
        .checked_add(63)
        .map(|b| b & !63)
        .map(|b| b.max(64))
}

const fn check_align<T>() {
    assert!(
        std::mem::align_of::<T>() <= 64,
        "herd shared data must be aligned to at most 64 bytes"
    );
}

/// One plain value of type `T` in shared memory, with its own robust lock.
/// Clones, and copies passed to child processes as task arguments, all see
/// the same value.
///
/// Three ways in, as in Python:
/// * [`get`](Self::get) / [`set`](Self::set) without the lock
///   (`lock=False`): each is one copy (of relaxed atomic bytes, so a
///   concurrent write may tear a multi-byte value, but is never undefined
///   behaviour), and `v.set(v.get() + 1)` from two processes loses updates
///   — the seed's S9 race;
/// * [`lock`](Self::lock): a guard to read and update the value under the
///   lock (`get_lock()`), robust like [`Lock`](super::Lock);
/// * for integers, atomic helpers (`fetch_add`, `compare_exchange`…).
///
/// `T` is any [`bytemuck::Pod`] type (derive it with `bytemuck`'s derive
/// macros for your own `#[repr(C)]` structs). The memory is an anonymous
/// memfd: nothing is left in `/dev/shm`, even after a crash.
///
/// ```
/// use herd::sync::Value;
///
/// #[herd::task]
/// fn add_many(total: Value<u64>, n: u64) {
///     for _ in 0..n {
///         total.lock().unwrap().update(|v| v + 1);
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
pub struct Value<T: Pod> {
    core: Arc<LockCore>,
    _t: PhantomData<T>,
}

impl<T: Pod> Value<T> {
    /// A new shared value.
    pub fn new(initial: T) -> io::Result<Self> {
        const { check_align::<T>() };
        let len = bytes_for::<T>(1)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "value too large"))?;
        let v = Self {
            core: LockCore::new(Kind::Value, false, tag::<T>(), len)?,
            _t: PhantomData,
        };
        v.set(initial);
        Ok(v)
    }

    fn ptr(&self) -> *mut T {
        self.core.extra().cast()
    }

    /// The value, read without the lock.
    pub fn get(&self) -> T {
        // SAFETY: the data area holds one `T` (checked at creation/open);
        // `T: Pod` has no invalid bits.
        unsafe { load_bytes(self.ptr()) }
    }

    /// Replaces the value without the lock.
    pub fn set(&self, v: T) {
        // SAFETY: as in `get`.
        unsafe { store_bytes(self.ptr(), v) }
    }

    /// Takes the value's lock.
    pub fn lock(&self) -> LockResult<ValueGuard<'_, T>> {
        self.take(None)
    }

    /// Takes the value's lock, waiting at most `timeout`.
    pub fn lock_timeout(&self, timeout: Duration) -> LockResult<ValueGuard<'_, T>> {
        self.take(Instant::now().checked_add(timeout))
    }

    fn take(&self, deadline: Option<Instant>) -> LockResult<ValueGuard<'_, T>> {
        let guard = || ValueGuard {
            value: self,
            _not_send: PhantomData,
        };
        self.core
            .acquire(deadline, true)
            .map(|()| guard())
            .map_err(|e| e.map_guard(|()| guard()))
    }
}

impl<T: AtomicPlain> Value<T> {
    /// Atomically reads the value.
    pub fn load(&self) -> T {
        // SAFETY: the slot holds one aligned `T`, accessed atomically here.
        unsafe { T::load(self.ptr().cast()) }
    }

    /// Atomically replaces the value.
    pub fn store(&self, v: T) {
        // SAFETY: as in `load`.
        unsafe { T::store(self.ptr().cast(), v) }
    }

    /// Atomically replaces the value, returning the old one.
    pub fn swap(&self, v: T) -> T {
        // SAFETY: as in `load`.
        unsafe { T::swap(self.ptr().cast(), v) }
    }

    /// Stores `new` if the value is `current`; returns the previous value,
    /// as `Ok` if it was `current` and `Err` if not.
    pub fn compare_exchange(&self, current: T, new: T) -> Result<T, T> {
        // SAFETY: as in `load`.
        unsafe { T::compare_exchange(self.ptr().cast(), current, new) }
    }
}

impl<T: AtomicInteger> Value<T> {
    /// Atomically adds `v` (wrapping), returning the previous value.
    pub fn fetch_add(&self, v: T) -> T {
        // SAFETY: as in `load`.
        unsafe { T::fetch_add(self.ptr().cast(), v) }
    }

    /// Atomically subtracts `v` (wrapping), returning the previous value.
    pub fn fetch_sub(&self, v: T) -> T {
        // SAFETY: as in `load`.
        unsafe { T::fetch_sub(self.ptr().cast(), v) }
    }
}

impl<T: Pod> Clone for Value<T> {
    fn clone(&self) -> Self {
        Self {
            core: Arc::clone(&self.core),
            _t: PhantomData,
        }
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for Value<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Value").field(&self.get()).finish()
    }
}

impl<T: Pod> Serialize for Value<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.core.region().serialize(s)
    }
}

impl<'de, T: Pod> Deserialize<'de> for Value<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let len = bytes_for::<T>(1).ok_or_else(|| D::Error::custom("value too large"))?;
        let region = Region::deserialize(d, Kind::Value, |_| LOCK_BODY.checked_add(len))?;
        if region.param() != tag::<T>() {
            return Err(D::Error::custom(format!(
                "the shared Value does not hold a {}",
                type_name::<T>()
            )));
        }
        Ok(Self {
            core: LockCore::from_region(region, false),
            _t: PhantomData,
        })
    }
}

/// Holds a [`Value`]'s lock. It copies the value in and out rather than
/// lending a reference: memory other processes (or unlocked `set`s) can
/// write is never behind a Rust reference.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ValueGuard<'a, T: Pod> {
    value: &'a Value<T>,
    _not_send: PhantomData<*const ()>,
}

impl<T: Pod> ValueGuard<'_, T> {
    /// The value.
    pub fn get(&self) -> T {
        self.value.get()
    }

    /// Replaces the value.
    pub fn set(&mut self, v: T) {
        self.value.set(v);
    }

    /// Replaces the value with `f(value)`; returns the new value.
    pub fn update(&mut self, f: impl FnOnce(T) -> T) -> T {
        let v = f(self.get());
        self.set(v);
        v
    }
}

impl<T: Pod> Drop for ValueGuard<'_, T> {
    fn drop(&mut self) {
        self.value.core.release();
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for ValueGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ValueGuard").field(&self.get()).finish()
    }
}

/// A fixed-length array of plain `T` in shared memory, with its own robust
/// lock: Python's `multiprocessing.Array`. Like [`Value`], elements can be
/// read and written without the lock (`get`/`set`), under it (`lock`), or
/// atomically for integers (`fetch_add`).
///
/// ```
/// # fn main() {
/// herd::init();
/// let a = herd::sync::Array::from_slice(&[1u32, 2, 3]).unwrap();
/// a.lock().unwrap().set(0, 10).unwrap();
/// assert_eq!(a.to_vec(), vec![10, 2, 3]);
/// assert_eq!(a.get(5), None);
/// # }
/// ```
pub struct Array<T: Pod> {
    core: Arc<LockCore>,
    len: usize,
    _t: PhantomData<T>,
}

/// The array's data starts one cache line after the lock (the first line
/// holds the element type's tag).
const ARRAY_DATA: usize = 64;

impl<T: Pod> Array<T> {
    /// A zero-filled array of `len` elements.
    pub fn new(len: usize) -> io::Result<Self> {
        const { check_align::<T>() };
        let bytes = bytes_for::<T>(len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "array too large"))?;
        let extra = ARRAY_DATA
            .checked_add(bytes)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "array too large"))?;
        let core = LockCore::new(Kind::Array, false, len as u64, extra)?;
        // SAFETY: the first 8 bytes after the lock hold the element tag;
        // the region is not shared yet.
        unsafe { core.extra().cast::<u64>().write(tag::<T>()) };
        Ok(Self {
            core,
            len,
            _t: PhantomData,
        })
    }

    /// An array holding a copy of `items`.
    pub fn from_slice(items: &[T]) -> io::Result<Self> {
        let a = Self::new(items.len())?;
        for (i, v) in items.iter().enumerate() {
            a.set(i, *v).map_err(io::Error::other)?;
        }
        Ok(a)
    }

    fn ptr(&self) -> *mut T {
        // SAFETY: the data area follows the tag line.
        unsafe { self.core.extra().add(ARRAY_DATA).cast() }
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Element `i`, read without the lock; `None` out of range.
    pub fn get(&self, i: usize) -> Option<T> {
        // SAFETY: `i < len` elements fit the data area; see `Value::get`.
        (i < self.len).then(|| unsafe { load_bytes(self.ptr().add(i)) })
    }

    /// Writes element `i` without the lock.
    pub fn set(&self, i: usize, v: T) -> Result<(), IndexOutOfRange> {
        if i >= self.len {
            return Err(IndexOutOfRange {
                index: i,
                len: self.len,
            });
        }
        // SAFETY: as in `get`.
        unsafe { store_bytes(self.ptr().add(i), v) };
        Ok(())
    }

    /// A copy of every element, read without the lock.
    pub fn to_vec(&self) -> Vec<T> {
        (0..self.len).filter_map(|i| self.get(i)).collect()
    }

    /// Takes the array's lock.
    pub fn lock(&self) -> LockResult<ArrayGuard<'_, T>> {
        self.take(None)
    }

    /// Takes the array's lock, waiting at most `timeout`.
    pub fn lock_timeout(&self, timeout: Duration) -> LockResult<ArrayGuard<'_, T>> {
        self.take(Instant::now().checked_add(timeout))
    }

    fn take(&self, deadline: Option<Instant>) -> LockResult<ArrayGuard<'_, T>> {
        let guard = || ArrayGuard {
            array: self,
            _not_send: PhantomData,
        };
        self.core
            .acquire(deadline, true)
            .map(|()| guard())
            .map_err(|e| e.map_guard(|()| guard()))
    }
}

impl<T: AtomicInteger> Array<T> {
    /// Atomically adds `v` to element `i`, returning its previous value.
    pub fn fetch_add(&self, i: usize, v: T) -> Result<T, IndexOutOfRange> {
        if i >= self.len {
            return Err(IndexOutOfRange {
                index: i,
                len: self.len,
            });
        }
        // SAFETY: element `i` is in range and aligned.
        Ok(unsafe { T::fetch_add(self.ptr().add(i).cast(), v) })
    }
}

/// An index past the end of an [`Array`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexOutOfRange {
    /// The index asked for.
    pub index: usize,
    /// The array's length.
    pub len: usize,
}

impl fmt::Display for IndexOutOfRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "index {} out of range for a shared array of {}",
            self.index, self.len
        )
    }
}

impl std::error::Error for IndexOutOfRange {}

impl<T: Pod> Clone for Array<T> {
    fn clone(&self) -> Self {
        Self {
            core: Arc::clone(&self.core),
            len: self.len,
            _t: PhantomData,
        }
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for Array<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Array").field(&self.to_vec()).finish()
    }
}

impl<T: Pod> Serialize for Array<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.core.region().serialize(s)
    }
}

impl<'de, T: Pod> Deserialize<'de> for Array<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let region = Region::deserialize(d, Kind::Array, |len| {
            (LOCK_BODY + ARRAY_DATA).checked_add(bytes_for::<T>(usize::try_from(len).ok()?)?)
        })?;
        let len = region.param() as usize;
        let core = LockCore::from_region(region, false);
        // SAFETY: the tag line follows the lock (size checked above).
        if unsafe { core.extra().cast::<u64>().read() } != tag::<T>() {
            return Err(D::Error::custom(format!(
                "the shared Array does not hold {}",
                type_name::<T>()
            )));
        }
        Ok(Self {
            core,
            len,
            _t: PhantomData,
        })
    }
}

/// Holds an [`Array`]'s lock; elements are copied in and out (see
/// [`ValueGuard`]).
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ArrayGuard<'a, T: Pod> {
    array: &'a Array<T>,
    _not_send: PhantomData<*const ()>,
}

impl<T: Pod> ArrayGuard<'_, T> {
    /// The number of elements.
    pub fn len(&self) -> usize {
        self.array.len()
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.array.is_empty()
    }

    /// Element `i`; `None` out of range.
    pub fn get(&self, i: usize) -> Option<T> {
        self.array.get(i)
    }

    /// Writes element `i`.
    pub fn set(&mut self, i: usize, v: T) -> Result<(), IndexOutOfRange> {
        self.array.set(i, v)
    }

    /// A copy of every element.
    pub fn to_vec(&self) -> Vec<T> {
        self.array.to_vec()
    }

    /// Overwrites the elements with `items` (which must be as long).
    pub fn copy_from_slice(&mut self, items: &[T]) -> Result<(), IndexOutOfRange> {
        if items.len() != self.array.len() {
            return Err(IndexOutOfRange {
                index: items.len(),
                len: self.array.len(),
            });
        }
        for (i, v) in items.iter().enumerate() {
            self.array.set(i, *v)?;
        }
        Ok(())
    }
}

impl<T: Pod> Drop for ArrayGuard<'_, T> {
    fn drop(&mut self) {
        self.array.core.release();
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for ArrayGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ArrayGuard").field(&self.to_vec()).finish()
    }
}
