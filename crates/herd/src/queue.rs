//! [`Queue`]: a typed, bounded, multi-producer multi-consumer queue in
//! shared memory, across threads and processes — Python's
//! `multiprocessing.Queue` without its silent losses.
//!
//! The queue is a byte ring in a sealed memfd with two robust locks (see
//! [`sync::Lock`](crate::sync::Lock)): producers take the tail lock,
//! consumers the head lock, so a put and a get never wait for each other,
//! and each end keeps its own cache line (tail and count of puts; head and
//! count of gets), reading the other's only when its last copy says the
//! ring is full or empty. A message is its length (4 bytes) and its
//! MessagePack bytes. Every operation publishes last: `put` writes the
//! message, then advances the tail, then the count; `get` takes the
//! message, then advances the head, then the count. So a process killed at
//! any instant — its lock is then released by the kernel and the next user
//! sees "owner died", and recounts under both locks — leaves the queue
//! consistent:
//!
//! * a producer killed inside `put` before it published: its item was never
//!   in the queue (its `put` never returned); nothing else is touched;
//! * a consumer killed inside `get` before it advanced the head: the item
//!   stays in the queue for the next consumer (it was never returned);
//! * a consumer killed after its `get` returned: that one item is gone with
//!   it, like any value a process holds when it dies.
//!
//! Nothing is ever delivered twice. When `put` returns `Ok` the item is in
//! shared memory: no feeder thread can lose it at exit. Waiting uses futex
//! sequence words beside the ring; a waiter rechecks at least every 100 ms.

use std::fmt;
use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
use std::task::Poll;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use crate::backoff::poll_briefly;
use crate::os;
use crate::sync::{Acquired, Kind, LOCK_BODY, LockCore, LockError, RawMutex, Region};

/// Bytes of the ring for an "unbounded" queue: 1 GiB of address space,
/// of which only the pages used are ever allocated.
const UNBOUNDED_BYTES: u64 = 1 << 30;
/// Bytes of the ring for a bounded queue.
const BOUNDED_BYTES: u64 = 64 << 20;
/// The state after the tail lock (the lock core's own), then the ring:
///
/// ```text
///   0  producers' line: tail, puts, head_seen, gets_seen, pending (u64)
///  64  the head lock (a robust mutex of its own line)
/// 128  consumers' line: head, gets, tail_seen (u64)
/// 192  shared line: closed, not_empty, not_full, sleeping_getters,
///      sleeping_putters, unfinished, joinable (u32)
/// ```
const STATE: usize = 256;
/// The count of unfinished items, in the `unfinished` word.
const UNFINISHED: u32 = !PENDING;
/// In the `unfinished` word: a put counted its item and has not published it.
const PENDING: u32 = 1 << 31;
/// A ring that empties past this position starts over at 0 (if the
/// producers are idle).
const REWIND_AT: u64 = 256 << 10;
/// The longest a waiter sleeps before it looks again.
const RECHECK: Duration = Duration::from_millis(100);

/// Why a `put` did not happen. The value comes back in every case.
#[derive(Error)]
pub enum PutError<T> {
    /// The queue is full (`try_put`).
    #[error("the queue is full")]
    Full(T),
    /// The timeout passed while the queue stayed full.
    #[error("timed out waiting for room in the queue")]
    Timeout(T),
    /// The queue was closed.
    #[error("the queue is closed")]
    Closed(T),
    /// The encoded value is larger than the queue's message limit.
    #[error("a message of {size} bytes exceeds the queue's {limit}-byte limit")]
    TooLarge {
        /// The value.
        value: T,
        /// Its encoded size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The value did not serialize.
    #[error("the value did not serialize: {reason}")]
    Encode {
        /// The value.
        value: T,
        /// What the encoder said.
        reason: String,
    },
}

impl<T> PutError<T> {
    /// The value that was not put.
    pub fn into_inner(self) -> T {
        match self {
            Self::Full(v) | Self::Timeout(v) | Self::Closed(v) => v,
            Self::TooLarge { value, .. } | Self::Encode { value, .. } => value,
        }
    }
}

impl<T> fmt::Debug for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full(_) => f.write_str("Full(..)"),
            Self::Timeout(_) => f.write_str("Timeout(..)"),
            Self::Closed(_) => f.write_str("Closed(..)"),
            Self::TooLarge { size, limit, .. } => {
                write!(f, "TooLarge {{ size: {size}, limit: {limit}, .. }}")
            }
            Self::Encode { reason, .. } => write!(f, "Encode {{ reason: {reason:?}, .. }}"),
        }
    }
}

/// Why a `get` returned no value.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum GetError {
    /// The queue is empty (`try_get`).
    #[error("the queue is empty")]
    Empty,
    /// The timeout passed while the queue stayed empty.
    #[error("timed out waiting for an item")]
    Timeout,
    /// The queue is closed and empty.
    #[error("the queue is closed")]
    Closed,
    /// The message did not deserialize into the queue's type (it was taken
    /// off the queue; the next one is unaffected).
    #[error("a message did not deserialize: {0}")]
    Decode(String),
}

/// Configures a [`Queue`].
#[derive(Debug, Clone)]
pub struct QueueBuilder {
    maxsize: u32,
    bytes: u64,
    max_message: Option<usize>,
}

impl QueueBuilder {
    /// At most this many items (0: no limit, the default).
    pub fn maxsize(mut self, n: u32) -> Self {
        self.maxsize = n;
        self
    }

    /// The ring's size in bytes (rounded up to a power of two; default
    /// 1 GiB for an unbounded queue, 64 MiB for a bounded one). Memory is
    /// used only as far as the queue fills.
    pub fn capacity_bytes(mut self, n: u64) -> Self {
        self.bytes = n;
        self
    }

    /// The largest encoded message accepted (default: a quarter of the ring).
    pub fn max_message(mut self, n: usize) -> Self {
        self.max_message = Some(n);
        self
    }

    /// Creates the queue.
    pub fn build<T>(self) -> io::Result<Queue<T>> {
        let bytes = if self.bytes == 0 {
            if self.maxsize == 0 {
                UNBOUNDED_BYTES
            } else {
                BOUNDED_BYTES
            }
        } else {
            self.bytes.clamp(4096, 1 << 34).next_power_of_two()
        };
        let shift = bytes.trailing_zeros();
        let param = (u64::from(self.maxsize) << 8) | u64::from(shift);
        let core = LockCore::new(Kind::Queue, false, param, STATE + bytes as usize)?;
        Ok(Queue::from_core(core, param, self.max_message))
    }
}

/// A multi-producer, multi-consumer queue of `T` shared by threads and
/// processes. Clones, and copies passed to children as task arguments, are
/// the same queue.
///
/// ```
/// use herd::Queue;
///
/// #[herd::task]
/// fn produce(q: Queue<String>) {
///     for w in ["A", "B", "C"] {
///         q.put(w.to_owned()).unwrap();
///     }
/// }
///
/// fn main() {
///     herd::init();
///     let q = Queue::new().unwrap();
///     herd::spawn(produce, (q.clone(),)).unwrap().join().unwrap();
///     let got: Vec<String> = (0..3).map(|_| q.get().unwrap()).collect();
///     assert_eq!(got, ["A", "B", "C"]);
/// }
/// ```
pub struct Queue<T> {
    core: Arc<LockCore>,
    cap: u64,
    maxsize: u32,
    max_message: usize,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Self {
            core: Arc::clone(&self.core),
            cap: self.cap,
            maxsize: self.maxsize,
            max_message: self.max_message,
            _t: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("len", &self.len())
            .field("maxsize", &self.maxsize)
            .finish()
    }
}

impl Queue<()> {
    /// Configures a queue (its item type comes from `build`).
    pub fn builder() -> QueueBuilder {
        QueueBuilder {
            maxsize: 0,
            bytes: 0,
            max_message: None,
        }
    }
}

impl<T> Queue<T> {
    /// An unbounded queue.
    pub fn new() -> io::Result<Self> {
        Queue::builder().build()
    }

    /// A queue of at most `maxsize` items: `put` waits while it is full.
    pub fn bounded(maxsize: u32) -> io::Result<Self> {
        Queue::builder().maxsize(maxsize).build()
    }

    fn from_core(core: Arc<LockCore>, param: u64, max_message: Option<usize>) -> Self {
        let cap = 1u64 << (param & 0xff);
        let limit = max_message
            .unwrap_or((cap / 4) as usize)
            .min((cap / 2) as usize);
        Self {
            core,
            cap,
            maxsize: (param >> 8) as u32,
            max_message: limit,
            _t: PhantomData,
        }
    }

    fn state(&self) -> *mut u8 {
        self.core.extra()
    }

    fn word64(&self, off: usize) -> &AtomicU64 {
        // SAFETY: the state lines are 64-byte aligned, after the lock;
        // `off` is one of the u64 offsets laid out in `STATE`'s doc.
        unsafe { AtomicU64::from_ptr(self.state().add(off).cast()) }
    }

    fn word32(&self, off: usize) -> &AtomicU32 {
        // SAFETY: as in `word64`, for the u32 offsets of the shared line.
        unsafe { AtomicU32::from_ptr(self.state().add(off).cast()) }
    }

    // The producers' line (written under the tail lock).
    fn tail(&self) -> &AtomicU64 {
        self.word64(0)
    }
    /// Items published, ever.
    fn puts(&self) -> &AtomicU64 {
        self.word64(8)
    }
    /// A value `head` had (never above it): room is counted from it, and
    /// `head` is read again only when it says the ring is short.
    fn head_seen(&self) -> &AtomicU64 {
        self.word64(16)
    }
    /// Likewise for `gets`.
    fn gets_seen(&self) -> &AtomicU64 {
        self.word64(24)
    }
    /// The tail a put that counted its item unfinished is publishing at
    /// (meaningful while `unfinished` has `PENDING`); for the repair of a
    /// `JoinableQueue`.
    fn pending(&self) -> &AtomicU64 {
        self.word64(32)
    }

    /// The consumers' lock, in its own line.
    fn head_lock(&self) -> &RawMutex {
        // SAFETY: 64 bytes at offset 64 of the state, 64-byte aligned,
        // used only as this mutex, living as long as the region.
        unsafe { RawMutex::at(self.state().add(64)) }
    }

    // The consumers' line (written under the head lock).
    fn head(&self) -> &AtomicU64 {
        self.word64(128)
    }
    /// Items taken, ever.
    fn gets(&self) -> &AtomicU64 {
        self.word64(136)
    }
    /// A value `tail` had (never above it): frames below it are there to
    /// take without reading the producers' line.
    fn tail_seen(&self) -> &AtomicU64 {
        self.word64(144)
    }

    // The shared line: rarely written.
    fn closed(&self) -> &AtomicU32 {
        self.word32(192)
    }
    fn not_empty(&self) -> &AtomicU32 {
        self.word32(196)
    }
    fn not_full(&self) -> &AtomicU32 {
        self.word32(200)
    }
    fn sleeping_getters(&self) -> &AtomicU32 {
        self.word32(204)
    }
    fn sleeping_putters(&self) -> &AtomicU32 {
        self.word32(208)
    }
    /// Items put and not yet marked done (`JoinableQueue`; the low 31
    /// bits), and `PENDING` while a put that counted one has not published
    /// it.
    fn unfinished(&self) -> &AtomicU32 {
        self.word32(212)
    }
    /// 1 for a `JoinableQueue`: only then does `put` count unfinished items.
    fn joinable(&self) -> &AtomicU32 {
        self.word32(216)
    }

    fn ring(&self) -> *mut u8 {
        // SAFETY: the ring follows the state lines (size checked at open).
        unsafe { self.state().add(STATE) }
    }

    /// Copies `data` into the ring at logical position `pos`, wrapping.
    fn write_at(&self, pos: u64, data: &[u8]) {
        let off = (pos & (self.cap - 1)) as usize;
        let first = data.len().min(self.cap as usize - off);
        // SAFETY: both pieces lie inside the ring (`off < cap`, lengths
        // bounded by the space checked under the end's lock, which we
        // hold).
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ring().add(off), first);
            std::ptr::copy_nonoverlapping(
                data.as_ptr().add(first),
                self.ring(),
                data.len() - first,
            );
        }
    }

    /// Copies `out.len()` bytes from logical position `pos`, wrapping.
    fn read_at(&self, pos: u64, out: &mut [u8]) {
        let off = (pos & (self.cap - 1)) as usize;
        let first = out.len().min(self.cap as usize - off);
        // SAFETY: as in `write_at`.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ring().add(off), out.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(
                self.ring(),
                out.as_mut_ptr().add(first),
                out.len() - first,
            );
        }
    }

    /// `len` bytes from `pos`, into a new vector (not zeroed first: a
    /// 64 KiB item would otherwise be written twice).
    fn read_vec(&self, pos: u64, len: usize) -> Vec<u8> {
        let mut out: Vec<u8> = Vec::with_capacity(len);
        let off = (pos & (self.cap - 1)) as usize;
        let first = len.min(self.cap as usize - off);
        // SAFETY: as in `write_at` for the ring; `out` has capacity `len`,
        // both copies together write exactly its first `len` bytes, after
        // which they are initialised.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ring().add(off), out.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(self.ring(), out.as_mut_ptr().add(first), len - first);
            out.set_len(len);
        }
        out
    }

    /// Takes one end's lock. A dead previous holder left the positions
    /// consistent (each side publishes last), but perhaps not the counts:
    /// they are recounted before this returns, the lock never released in
    /// between (another user of this end would otherwise work on the dead
    /// holder's state before the repair).
    fn lock(&self, end: End, deadline: Option<Instant>) -> bool {
        let clean = match end {
            End::Put => match self.core.acquire(deadline, true) {
                Ok(()) => true,
                Err(LockError::Poisoned { .. }) => false,
                Err(_) => return false,
            },
            End::Get => {
                let raw = self.head_lock();
                let got = match raw.try_free() {
                    Some(a) => Ok(a),
                    None => raw.lock(false, deadline, None, || false),
                };
                match got {
                    Ok(Acquired::Clean | Acquired::Reentered) => true,
                    Ok(Acquired::OwnerDied | Acquired::Poisoned) => false,
                    Err(_) => return false,
                }
            }
        };
        if !clean && !self.repair_holding(end) {
            return false;
        }
        true
    }

    fn unlock(&self, end: End) {
        match end {
            End::Put => self.core.release(),
            End::Get => self.head_lock().unlock(false),
        }
    }

    /// Holding `end`'s lock: takes the other one too and recounts. The
    /// producers' end may wait for the head lock (tail, then head: the
    /// order `repair` uses); the consumers' end only tries the tail lock,
    /// and if a producer holds it, lets go of the head lock, repairs with
    /// both and takes the head lock again (a dead consumer's leftovers are
    /// harmless to other consumers meanwhile: positions are consistent or
    /// visibly insane). Returns whether `end`'s lock is held.
    #[cold]
    fn repair_holding(&self, end: End) -> bool {
        match end {
            End::Put => {
                let raw = self.head_lock();
                // Poisoned or not, it is ours.
                if raw
                    .try_free()
                    .map_or_else(|| raw.lock(false, None, None, || false), Ok)
                    .is_ok()
                {
                    self.recount();
                    raw.unlock(false);
                }
                true
            }
            End::Get => match self.core.acquire(None, false) {
                Ok(()) | Err(LockError::Poisoned { .. }) => {
                    self.recount();
                    self.core.release();
                    true
                }
                Err(_) => {
                    self.unlock(End::Get);
                    self.repair();
                    self.lock(End::Get, None)
                }
            },
        }
    }

    /// Takes both locks (tail first), recounts, and releases them. Called
    /// holding neither.
    #[cold]
    fn repair(&self) {
        // A poisoned outcome still holds the lock, which is all this needs.
        let tail = matches!(
            self.core.acquire(None, true),
            Ok(()) | Err(LockError::Poisoned { .. })
        );
        let raw = self.head_lock();
        let head = raw
            .try_free()
            .map_or_else(|| raw.lock(false, None, None, || false), Ok)
            .is_ok();
        if tail && head {
            self.recount();
        }
        if head {
            raw.unlock(false);
        }
        if tail {
            self.core.release();
        }
    }

    /// Repairs if a holder of either lock died and nobody has taken that
    /// lock since: a producer that died before publishing may otherwise
    /// keep its item counted unfinished (and `join` waiting) or the counts
    /// off, for as long as no producer comes — consumers never take the
    /// tail lock on their own. Called where a stale count would show:
    /// `len`, a getter that finds the queue empty, a putter that finds it
    /// full, `join`'s recheck.
    fn heal(&self) {
        if self.core.raw().owner_died() || self.head_lock().owner_died() {
            self.repair();
        }
    }

    /// With both locks held: makes the counts agree with the frames between
    /// head and tail (a producer or consumer died between its two
    /// publishing stores), or empties an insane queue (only a foreign
    /// writer, or a consumer that died mid-rewind, makes one), and wakes
    /// everyone to look again.
    fn recount(&self) {
        let head = self.head().load(Ordering::Relaxed);
        let tail = self.tail().load(Ordering::Relaxed);
        let gets = self.gets().load(Ordering::Relaxed);
        let mut n: u64 = 0;
        let mut pos = head;
        let sane = tail.checked_sub(head).is_some_and(|u| u <= self.cap)
            && loop {
                if pos == tail {
                    break true;
                }
                match self.frame_at(pos, tail) {
                    Some(len) => {
                        pos += 4 + len;
                        n += 1;
                    }
                    None => break false,
                }
            };
        let (head, gets) = if sane {
            self.puts().store(gets + n, Ordering::Release);
            (head, gets)
        } else {
            let puts = self.puts().load(Ordering::Relaxed).max(gets);
            self.head().store(tail, Ordering::Release);
            self.gets().store(puts, Ordering::Release);
            self.puts().store(puts, Ordering::Release);
            (tail, puts)
        };
        self.tail_seen().store(head, Ordering::Relaxed);
        self.head_seen().store(head, Ordering::Relaxed);
        self.gets_seen().store(gets, Ordering::Relaxed);
        // A put that counted its item unfinished and died before
        // publishing it: uncount it, or `join` would wait for ever. One
        // that died after publishing: only clear the mark.
        if self.unfinished().load(Ordering::Acquire) & PENDING != 0 {
            let unpublished = self.pending().load(Ordering::Relaxed) == tail;
            let _ = self
                .unfinished()
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    let count = n & UNFINISHED;
                    Some(if unpublished {
                        count.saturating_sub(1)
                    } else {
                        count
                    })
                });
            os::futex_wake(self.unfinished(), os::WAKE_ALL);
        }
        for word in [self.not_empty(), self.not_full()] {
            word.fetch_add(1, Ordering::SeqCst);
            os::futex_wake(word, os::WAKE_ALL);
        }
    }

    /// The length of the frame at `pos`, if it is a sane frame ending by
    /// `tail`.
    fn frame_at(&self, pos: u64, tail: u64) -> Option<u64> {
        let mut len = [0u8; 4];
        self.read_at(pos, &mut len);
        let len = u64::from(u32::from_le_bytes(len));
        (len <= self.cap / 2 && pos.checked_add(4 + len)? <= tail).then_some(len)
    }

    /// Whether a frame of `need` bytes fits at `tail` (after `puts`
    /// items) given the consumers' `head` and `gets`; `None` if they make
    /// no sense.
    fn fits(&self, tail: u64, puts: u64, head: u64, gets: u64, need: u64) -> Option<bool> {
        let used = tail.checked_sub(head).filter(|u| *u <= self.cap)?;
        let count = puts.checked_sub(gets)?;
        Some(
            (self.maxsize == 0 || count < u64::from(self.maxsize))
                && count < u64::from(u32::MAX)
                && used + need <= self.cap,
        )
    }

    /// Room for a frame of `need` bytes at `tail`, with the tail lock held:
    /// from the consumers' values seen last, and read again only if those
    /// say no. `None`: insane.
    fn room(&self, tail: u64, need: u64) -> Option<bool> {
        let puts = self.puts().load(Ordering::Relaxed);
        let (head, gets) = (
            self.head_seen().load(Ordering::Relaxed),
            self.gets_seen().load(Ordering::Relaxed),
        );
        if self.fits(tail, puts, head, gets, need) == Some(true) {
            return Some(true);
        }
        // `gets` before `head`: a consumer publishes `head` first, so this
        // pair never counts fewer items than there are.
        let gets = self.gets().load(Ordering::Acquire);
        let head = self.head().load(Ordering::Acquire);
        self.head_seen().store(head, Ordering::Relaxed);
        self.gets_seen().store(gets, Ordering::Relaxed);
        self.fits(tail, puts, head, gets, need)
    }

    /// Sleeps on `end`'s word, which read `seen` before the caller last
    /// looked, with `end`'s lock released around the sleep: announces itself
    /// first, then looks once more (`ready`), so that the other end, which
    /// publishes and then looks for sleepers, cannot miss it. Returns with
    /// the lock held again, or `false` if it could not be retaken.
    fn sleep(
        &self,
        end: End,
        seen: u32,
        deadline: Option<Instant>,
        ready: impl Fn() -> bool,
    ) -> bool {
        let (word, sleepers) = match end {
            End::Put => (self.not_full(), self.sleeping_putters()),
            End::Get => (self.not_empty(), self.sleeping_getters()),
        };
        sleepers.fetch_add(1, Ordering::SeqCst);
        // Pairs with the publisher's fence in `signal`, whatever orderings
        // `ready` loads with.
        fence(Ordering::SeqCst);
        if ready() || self.is_closed() {
            sleepers.fetch_sub(1, Ordering::SeqCst);
            return true;
        }
        self.unlock(end);
        let recheck = Instant::now() + RECHECK;
        os::futex_wait(
            word,
            seen,
            Some(deadline.map_or(recheck, |d| d.min(recheck))),
        );
        sleepers.fetch_sub(1, Ordering::SeqCst);
        self.lock(end, None)
    }

    /// After publishing (and releasing the lock): wakes sleepers of the
    /// other end, if any. The fence pairs with the sleeper's announcement.
    fn signal(&self, end: End) {
        fence(Ordering::SeqCst);
        let (word, sleepers, all) = match end {
            End::Put => (self.not_full(), self.sleeping_putters(), true),
            End::Get => (self.not_empty(), self.sleeping_getters(), false),
        };
        if sleepers.load(Ordering::Relaxed) != 0 {
            word.fetch_add(1, Ordering::SeqCst);
            os::futex_wake(word, if all { os::WAKE_ALL } else { 1 });
        }
    }

    /// The number of items in the queue now.
    pub fn len(&self) -> usize {
        self.heal();
        let n = usize::try_from(self.items()).unwrap_or(usize::MAX);
        if self.maxsize == 0 {
            n
        } else {
            n.min(self.maxsize as usize)
        }
    }

    /// Items now, from the counts (no repair: the hot path's look).
    fn items(&self) -> u64 {
        // A snapshot: `gets` before and after `puts` agree (both only grow,
        // so it never goes below zero), or it is read again.
        loop {
            let gets = self.gets().load(Ordering::Acquire);
            let puts = self.puts().load(Ordering::Acquire);
            if self.gets().load(Ordering::Acquire) == gets {
                return puts.saturating_sub(gets);
            }
        }
    }

    /// Whether the counts say empty, without looking for a dead holder to
    /// repair after (for herd's own polling before a `get`, which repairs).
    pub(crate) fn looks_empty(&self) -> bool {
        self.items() == 0
    }

    /// Whether the queue is empty now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the queue is full now (never, for an unbounded queue whose
    /// ring has room).
    pub fn is_full(&self) -> bool {
        self.maxsize != 0 && self.len() >= self.maxsize as usize
    }

    /// Whether the queue was closed.
    pub fn is_closed(&self) -> bool {
        self.closed().load(Ordering::SeqCst) != 0
    }

    /// Closes the queue: every `put` fails from now on, `get` drains what
    /// is left and then fails; blocked callers wake with `Closed`.
    pub fn close(&self) {
        self.closed().store(1, Ordering::SeqCst);
        for word in [self.not_empty(), self.not_full()] {
            word.fetch_add(1, Ordering::SeqCst);
            os::futex_wake(word, os::WAKE_ALL);
        }
    }
}

impl<T: Serialize> Queue<T> {
    /// Puts `value`, waiting while the queue is full.
    ///
    /// The value is serialized twice: once to size it, then straight into
    /// the queue's shared memory while holding the producers' lock (one
    /// copy of its bytes, no allocation). A `Serialize` implementation
    /// should therefore be plain: one that blocks holds up every other
    /// producer of the queue (and a consumer that must repair it after a
    /// crash), and one that puts to this same queue deadlocks. One that
    /// panics leaves the queue unchanged and unlocked.
    pub fn put(&self, value: T) -> Result<(), PutError<T>> {
        self.put_until(value, None, true)
    }

    /// Puts `value` if there is room now.
    pub fn try_put(&self, value: T) -> Result<(), PutError<T>> {
        self.put_until(value, None, false)
    }

    /// Puts `value`, waiting at most `timeout` for room.
    pub fn put_timeout(&self, value: T, timeout: Duration) -> Result<(), PutError<T>> {
        self.put_until(value, Instant::now().checked_add(timeout), true)
    }

    fn put_until(
        &self,
        value: T,
        deadline: Option<Instant>,
        wait: bool,
    ) -> Result<(), PutError<T>> {
        // The size first, by a counting pass (a byte string is counted, not
        // copied); then, under the lock, the value is encoded straight into
        // the ring: one copy of the bytes instead of two (into a vector,
        // then into the ring), and no allocation.
        let mut counter = Counter(0);
        if let Err(e) = rmp_serde::encode::write(&mut counter, &value) {
            return Err(PutError::Encode {
                value,
                reason: e.to_string(),
            });
        }
        let size = counter.0;
        if size > self.max_message {
            return Err(PutError::TooLarge {
                value,
                size,
                limit: self.max_message,
            });
        }
        let need = 4 + size as u64;
        let tail = match self.reserve(need, deadline, wait) {
            Ok(tail) => tail,
            Err(e) => return Err(self.put_error(e, value, size)),
        };
        self.write_at(tail, &(size as u32).to_le_bytes());
        let mut ring = RingWriter {
            queue: self,
            pos: tail + 4,
            end: tail + need,
        };
        let wrote = catch_unwind(AssertUnwindSafe(|| {
            rmp_serde::encode::write(&mut ring, &value)
        }));
        match wrote {
            Ok(Ok(())) if ring.pos == ring.end => {
                self.commit(tail, need);
                Ok(())
            }
            // A `Serialize` that wrote another size the second time (or
            // failed only now): nothing was published; take the slow path,
            // which encodes once.
            Ok(_) => {
                self.unlock(End::Put);
                let bytes = match crate::task::encode(&value) {
                    Ok(b) => b,
                    Err(reason) => return Err(PutError::Encode { value, reason }),
                };
                let size = bytes.len();
                self.put_bytes_until(&bytes, deadline, wait)
                    .map_err(|e| self.put_error(e, value, size))
            }
            Err(panic) => {
                self.unlock(End::Put);
                std::panic::resume_unwind(panic)
            }
        }
    }

    fn put_error(&self, e: RawPut, value: T, size: usize) -> PutError<T> {
        match e {
            RawPut::Full => PutError::Full(value),
            RawPut::Timeout => PutError::Timeout(value),
            RawPut::Closed => PutError::Closed(value),
            RawPut::TooLarge => PutError::TooLarge {
                value,
                size,
                limit: self.max_message,
            },
        }
    }

    /// Puts a message already encoded as a `T` if there is room now (the
    /// pool encodes outside its own lock, then puts under it without ever
    /// blocking).
    pub(crate) fn try_put_encoded(&self, bytes: &[u8]) -> Result<(), RawPut> {
        self.put_bytes_until(bytes, None, false)
    }
}

/// Why a put of encoded bytes did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RawPut {
    Full,
    Timeout,
    Closed,
    TooLarge,
}

impl<T> Queue<T> {
    /// Waits (up to `deadline`) until an item is there or the queue is
    /// closed, taking nothing; true when either holds. For `get_async`.
    fn wait_item(&self, deadline: Instant) -> bool {
        let seen = self.wait_for(End::Get, deadline, |q| !q.is_empty());
        if seen {
            // A put wakes one sleeper; this helper may have been it, for a
            // future that is gone. Pass the wake on to any getter still
            // asleep (at worst it wakes, looks, and sleeps again).
            self.signal(End::Get);
        }
        seen
    }

    /// Waits (up to `deadline`) until there is room for a message of `len`
    /// encoded bytes, or the queue is closed. For `put_async`.
    fn wait_room(&self, deadline: Instant, len: u64) -> bool {
        self.wait_for(End::Put, deadline, |q| {
            let gets = q.gets().load(Ordering::Acquire);
            let head = q.head().load(Ordering::Acquire);
            q.fits(
                q.tail().load(Ordering::Acquire),
                q.puts().load(Ordering::Acquire),
                head,
                gets,
                4 + len,
            ) != Some(false)
        })
    }

    fn wait_for(&self, end: End, deadline: Instant, ready: impl Fn(&Self) -> bool) -> bool {
        if !self.lock(end, Some(deadline)) {
            return false;
        }
        let word = match end {
            End::Put => self.not_full(),
            End::Get => self.not_empty(),
        };
        loop {
            let seen = word.load(Ordering::SeqCst);
            if self.is_closed() || ready(self) {
                self.unlock(end);
                return true;
            }
            if Instant::now() >= deadline {
                self.unlock(end);
                return false;
            }
            if !self.sleep(end, seen, Some(deadline), || ready(self)) {
                return false;
            }
        }
    }

    fn put_bytes_until(
        &self,
        bytes: &[u8],
        deadline: Option<Instant>,
        wait: bool,
    ) -> Result<(), RawPut> {
        if bytes.len() > self.max_message {
            return Err(RawPut::TooLarge);
        }
        let need = 4 + bytes.len() as u64;
        let tail = self.reserve(need, deadline, wait)?;
        self.write_at(tail, &(bytes.len() as u32).to_le_bytes());
        self.write_at(tail + 4, bytes);
        self.commit(tail, need);
        Ok(())
    }

    /// Takes the tail lock and waits (if `wait`, up to `deadline`) until a
    /// frame of `need` bytes fits; returns where it goes, with the lock
    /// held. On an error the lock is released.
    fn reserve(&self, need: u64, deadline: Option<Instant>, wait: bool) -> Result<u64, RawPut> {
        if !self.lock(End::Put, deadline) {
            return Err(RawPut::Timeout);
        }
        loop {
            // Read before looking, for `sleep`: a get after the look
            // changes it, so the sleep cannot miss that get.
            let seen = self.not_full().load(Ordering::SeqCst);
            if self.is_closed() {
                self.unlock(End::Put);
                return Err(RawPut::Closed);
            }
            let tail = self.tail().load(Ordering::Relaxed);
            match self.room(tail, need) {
                Some(true) => return Ok(tail),
                Some(false) if self.head_lock().owner_died() => {
                    // Full, but a consumer died: its count may be stale.
                    self.repair_holding(End::Put);
                    continue;
                }
                Some(false) => {}
                None => {
                    self.repair_holding(End::Put);
                    continue;
                }
            }
            if !wait {
                self.unlock(End::Put);
                return Err(RawPut::Full);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                self.unlock(End::Put);
                return Err(RawPut::Timeout);
            }
            let ready = || self.room(tail, need) != Some(false);
            if !self.sleep(End::Put, seen, deadline, ready) {
                return Err(RawPut::Timeout);
            }
        }
    }

    /// Publishes the frame of `need` bytes written at `tail`, releases the
    /// tail lock and wakes a getter.
    fn commit(&self, tail: u64, need: u64) {
        let joinable = self.joinable().load(Ordering::Relaxed) != 0;
        if joinable {
            // Counted before it can be taken (a `task_done` for it must
            // not come first), and marked pending in the same atomic step:
            // a repair uncounts it if this producer dies before publishing
            // at `pending`, and only then.
            self.pending().store(tail, Ordering::Relaxed);
            let _ = self
                .unfinished()
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    Some(((n & UNFINISHED) + 1) | PENDING)
                });
        }
        // Publish last: a producer that dies before this line left nothing.
        self.tail().store(tail + need, Ordering::Release);
        // Under the tail lock, a plain update (atomic for the consumers).
        self.puts()
            .store(self.puts().load(Ordering::Relaxed) + 1, Ordering::Release);
        if joinable {
            self.unfinished().fetch_and(!PENDING, Ordering::AcqRel);
        }
        self.unlock(End::Put);
        self.signal(End::Get);
    }

    /// With the head lock held, after the ring emptied at `at`: if the
    /// producers are idle too, start the ring over at 0, so that a queue
    /// that keeps draining reuses the first pages of its ring instead of
    /// touching fresh pages all the way round (for the 1 GiB ring of an
    /// unbounded queue: a page fault per 4 KiB that flows, and up to 1 GiB
    /// of shared memory kept). Only tries the tail lock.
    #[cold]
    fn rewind(&self, at: u64) {
        match self.core.acquire(None, false) {
            Ok(()) => {}
            // Ours, with both locks: recount now (releasing it would hide
            // the dead producer from the next one).
            Err(LockError::Poisoned { .. }) => {
                self.recount();
                self.core.release();
                return;
            }
            Err(_) => return,
        }
        if self.tail().load(Ordering::Relaxed) == at {
            // In an order that a consumer dying between any two stores
            // leaves either consistent or insane (tail < head, or a seen
            // value above the real one), which the next locker repairs.
            self.tail_seen().store(0, Ordering::Relaxed);
            self.tail().store(0, Ordering::Release);
            self.head().store(0, Ordering::Release);
            self.head_seen().store(0, Ordering::Relaxed);
        }
        self.core.release();
    }
}

/// A message taken under the head lock: decoded where it lay (or the
/// decoder's panic), or its bytes copied out to decode after the lock.
enum Decoded<T> {
    Now(std::thread::Result<Result<T, String>>),
    Later(Vec<u8>),
}

/// A queue's two ends, each with its own lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The producers: tail, puts.
    Put,
    /// The consumers: head, gets.
    Get,
}

/// Counts the bytes an encoding would take, storing none.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes an encoding into the ring space reserved for it (the lock
/// held); refuses to write past it.
struct RingWriter<'a, T> {
    queue: &'a Queue<T>,
    pos: u64,
    end: u64,
}

impl<T> std::io::Write for RingWriter<'_, T> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.pos + buf.len() as u64 > self.end {
            return Err(std::io::Error::other(
                "the encoding grew between two passes",
            ));
        }
        self.queue.write_at(self.pos, buf);
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<T: DeserializeOwned + 'static> Queue<T> {
    /// [`get`](Self::get) for async code, on any runtime (tokio, smol, ...):
    /// cancel-safe — dropping the future never takes an item. See
    /// [`aio`](crate::aio) for how it waits.
    ///
    /// ```
    /// # fn main() {
    /// herd::init();
    /// let q = herd::Queue::new().unwrap();
    /// q.put(5u8).unwrap();
    /// let got = futures_lite::future::block_on(q.get_async());
    /// assert_eq!(got.unwrap(), 5);
    /// # }
    /// ```
    pub fn get_async(&self) -> impl Future<Output = Result<T, GetError>> + Send + '_
    where
        T: Send,
    {
        let q = self.clone();
        crate::aio::Retry::new(
            move || match self.try_get() {
                Err(GetError::Empty) => Poll::Pending,
                r => Poll::Ready(r),
            },
            move |deadline| q.wait_item(deadline),
        )
    }
}

impl<T: Serialize + 'static> Queue<T> {
    /// [`put`](Self::put) for async code: waits while the queue is full.
    /// Dropping the future before it completes drops the value unsent.
    pub fn put_async(&self, value: T) -> impl Future<Output = Result<(), PutError<T>>> + Send + '_
    where
        T: Send,
    {
        let q = self.clone();
        let mut value = Some(value);
        // The encoded size, learned the first time the queue is full, so
        // the helper waits for room for this message, not for any room.
        let need = Arc::new(AtomicU64::new(0));
        let needed = Arc::clone(&need);
        crate::aio::Retry::new(
            move || match value.take().map(|v| self.try_put(v)) {
                Some(Err(PutError::Full(v))) => {
                    let len = crate::task::encode(&v).map_or(0, |b| b.len() as u64);
                    need.store(len, Ordering::Release);
                    value = Some(v);
                    Poll::Pending
                }
                Some(r) => Poll::Ready(r),
                // Polled again after it completed: nothing left to do.
                None => Poll::Ready(Ok(())),
            },
            move |deadline| q.wait_room(deadline, needed.load(Ordering::Acquire)),
        )
    }
}

impl<T: DeserializeOwned> Queue<T> {
    /// Takes the next item, waiting while the queue is empty.
    ///
    /// The item is usually decoded where it lies in shared memory, under
    /// the consumers' lock (one copy of its bytes): a `Deserialize` that
    /// blocks holds up the queue's other consumers (producers only while
    /// one repairs the queue after a crash), and one that uses this same
    /// queue may deadlock: decode plain data. One that panics takes the
    /// item off the queue, as one that fails to decode does, and leaves
    /// the queue unlocked.
    pub fn get(&self) -> Result<T, GetError> {
        self.get_until(None, true)
    }

    /// Takes the next item if there is one now.
    pub fn try_get(&self) -> Result<T, GetError> {
        self.get_until(None, false)
    }

    /// Takes the next item, waiting at most `timeout`.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, GetError> {
        self.get_until(Instant::now().checked_add(timeout), true)
    }

    fn get_until(&self, deadline: Option<Instant>, wait: bool) -> Result<T, GetError> {
        // Items known to this end (its own line) need no look at the
        // producers' line, which every put writes.
        let known = self.head().load(Ordering::Relaxed) < self.tail_seen().load(Ordering::Relaxed);
        if wait && !known && self.items() == 0 {
            // Empty: an item is usually microseconds away (see `backoff`).
            poll_briefly(|| self.items() != 0 || self.is_closed());
        }
        if !self.lock(End::Get, deadline) {
            return Err(GetError::Timeout);
        }
        let (head, tail) = loop {
            // Read before looking, for `sleep` (as in `reserve`).
            let seen = self.not_empty().load(Ordering::SeqCst);
            let head = self.head().load(Ordering::Relaxed);
            let mut tail = self.tail_seen().load(Ordering::Relaxed);
            if head >= tail {
                tail = self.tail().load(Ordering::Acquire);
                self.tail_seen().store(tail, Ordering::Relaxed);
            }
            if tail.checked_sub(head).is_none_or(|u| u > self.cap) {
                // Insane (a consumer died mid-rewind): repair, look again.
                if !self.repair_holding(End::Get) {
                    return Err(GetError::Timeout);
                }
                continue;
            }
            if head < tail {
                break (head, tail);
            }
            if self.core.raw().owner_died() {
                // Empty, but a producer died: repair (its item may be
                // counted unfinished), look again.
                if !self.repair_holding(End::Get) {
                    return Err(GetError::Timeout);
                }
                continue;
            }
            if self.is_closed() {
                // An item put before the close may have been published
                // since the tail was read: look once more.
                if self.tail().load(Ordering::SeqCst) != head {
                    continue;
                }
                self.unlock(End::Get);
                return Err(GetError::Closed);
            }
            if !wait {
                self.unlock(End::Get);
                return Err(GetError::Empty);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                self.unlock(End::Get);
                return Err(GetError::Timeout);
            }
            let ready = || self.tail().load(Ordering::SeqCst) != head;
            if !self.sleep(End::Get, seen, deadline, ready) {
                return Err(GetError::Timeout);
            }
        };
        let Some(len) = self.frame_at(head, tail) else {
            // Corrupt state (only a foreign writer could cause it): drop
            // everything rather than read out of bounds or garbage.
            if self.repair_holding(End::Get) {
                self.unlock(End::Get);
            }
            return Err(GetError::Decode(
                "corrupt queue state; the queue was reset".to_owned(),
            ));
        };
        // A frame in one piece is decoded where it lies, under the head
        // lock: one copy (into the value) instead of two. Producers do not
        // wait for it (they hold the other lock); only other consumers do,
        // as they would for the copy out. One that wraps the ring's end is
        // copied out, and decoded after the lock.
        let off = ((head + 4) & (self.cap - 1)) as usize;
        let decoded = if off + len as usize <= self.cap as usize {
            // SAFETY: `off + len <= cap`: inside the ring. The frame lies
            // between head and tail: producers write only past the tail,
            // and other consumers wait for the head lock we hold, so
            // nobody writes these bytes while the slice lives.
            let frame = unsafe { std::slice::from_raw_parts(self.ring().add(off), len as usize) };
            Decoded::Now(catch_unwind(AssertUnwindSafe(|| {
                crate::task::decode::<T>(frame)
            })))
        } else {
            Decoded::Later(self.read_vec(head + 4, len as usize))
        };
        let next = head + 4 + len;
        // Publish last: a consumer that dies before this line took nothing.
        self.head().store(next, Ordering::Release);
        self.gets()
            .store(self.gets().load(Ordering::Relaxed) + 1, Ordering::Release);
        if next == tail && next >= REWIND_AT && self.cap > REWIND_AT {
            self.rewind(next);
        }
        self.unlock(End::Get);
        // Every putter: each waits for its own amount of room.
        self.signal(End::Put);
        match decoded {
            Decoded::Now(Ok(r)) => r.map_err(GetError::Decode),
            // A `Deserialize` that panicked: the item was taken (as one
            // that fails to decode is), the lock released; the panic goes on.
            Decoded::Now(Err(panic)) => std::panic::resume_unwind(panic),
            Decoded::Later(bytes) => crate::task::decode(&bytes).map_err(GetError::Decode),
        }
    }
}

/// Serializes the queue's region (its memfd travels beside the bytes).
struct RegionRef<'a>(&'a Region);

impl Serialize for RegionRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// A queue region read back, its size checked against its parameter.
struct QueueRegion(Region);

impl<'de> Deserialize<'de> for QueueRegion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Region::deserialize(d, Kind::Queue, |param| {
            let shift = param & 0xff;
            (12..=34)
                .contains(&shift)
                .then(|| LOCK_BODY + STATE + (1usize << shift))
        })
        .map(Self)
    }
}

impl<T> Serialize for Queue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (RegionRef(self.core.region()), self.max_message as u64).serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for Queue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (QueueRegion(region), max_message) = <(QueueRegion, u64)>::deserialize(d)?;
        let param = region.param();
        let core = LockCore::from_region(region, false);
        Ok(Self::from_core(
            core,
            param,
            usize::try_from(max_message).ok(),
        ))
    }
}

/// Why [`JoinableQueue::task_done`] failed.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error("task_done called more times than items were put")]
pub struct TooManyTaskDone;

/// A [`Queue`] that also counts unfinished items: every `put` adds one,
/// every [`task_done`](Self::task_done) takes one away, and
/// [`join`](Self::join) waits until none is left — Python's
/// `multiprocessing.JoinableQueue`. (As in Python, a consumer that dies
/// between `get` and `task_done` leaves its item unfinished: use
/// [`join_timeout`](Self::join_timeout) where that can happen.)
///
/// ```
/// # fn main() {
/// herd::init();
/// let q = herd::queue::JoinableQueue::new().unwrap();
/// q.put(1u8).unwrap();
/// let _item = q.get().unwrap();
/// q.task_done().unwrap();
/// q.join();
/// # }
/// ```
#[derive(Debug)]
pub struct JoinableQueue<T> {
    queue: Queue<T>,
}

impl<T> Clone for JoinableQueue<T> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<T> JoinableQueue<T> {
    /// An unbounded joinable queue.
    pub fn new() -> io::Result<Self> {
        Ok(Self::from_queue(Queue::new()?))
    }

    /// A joinable queue of at most `maxsize` items.
    pub fn bounded(maxsize: u32) -> io::Result<Self> {
        Ok(Self::from_queue(Queue::bounded(maxsize)?))
    }

    fn from_queue(queue: Queue<T>) -> Self {
        // Set before the queue is shared: every process sees it.
        queue.joinable().store(1, Ordering::Release);
        Self { queue }
    }

    /// The underlying queue (for `try_get`, `len`, `close`…).
    pub fn queue(&self) -> &Queue<T> {
        &self.queue
    }

    /// Marks one item as finished.
    pub fn task_done(&self) -> Result<(), TooManyTaskDone> {
        let word = self.queue.unfinished();
        let prev = word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n & UNFINISHED)
                    .checked_sub(1)
                    .map(|count| count | (n & PENDING))
            })
            .map_err(|_| TooManyTaskDone)?;
        if prev & UNFINISHED == 1 {
            os::futex_wake(word, os::WAKE_ALL);
        }
        Ok(())
    }

    /// Waits until every item put has been marked done.
    pub fn join(&self) {
        self.join_until(None);
    }

    /// Waits at most `timeout`; returns whether every item was done.
    pub fn join_timeout(&self, timeout: Duration) -> bool {
        self.join_until(Instant::now().checked_add(timeout))
    }

    fn join_until(&self, deadline: Option<Instant>) -> bool {
        let word = self.queue.unfinished();
        loop {
            // A producer that died mid-put may hold a count no consumer
            // can take away.
            self.queue.heal();
            let n = word.load(Ordering::Acquire);
            if n & UNFINISHED == 0 {
                return true;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return false;
            }
            let recheck = Instant::now() + RECHECK;
            os::futex_wait(word, n, Some(deadline.map_or(recheck, |d| d.min(recheck))));
        }
    }
}

impl<T: Serialize> JoinableQueue<T> {
    /// Puts `value` (one more unfinished item), waiting while full.
    pub fn put(&self, value: T) -> Result<(), PutError<T>> {
        self.queue.put(value)
    }

    /// Puts `value`, waiting at most `timeout` for room.
    pub fn put_timeout(&self, value: T, timeout: Duration) -> Result<(), PutError<T>> {
        self.queue.put_timeout(value, timeout)
    }
}

impl<T: DeserializeOwned> JoinableQueue<T> {
    /// Takes the next item, waiting while empty.
    pub fn get(&self) -> Result<T, GetError> {
        self.queue.get()
    }

    /// Takes the next item, waiting at most `timeout`.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, GetError> {
        self.queue.get_timeout(timeout)
    }
}

impl<T> Serialize for JoinableQueue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.queue.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for JoinableQueue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self {
            queue: Queue::deserialize(d)?,
        })
    }
}

/// Python's `multiprocessing.SimpleQueue`: an unbounded queue with only
/// `put`, `get` and `is_empty`. It is a [`Queue`], with the same guarantees.
pub type SimpleQueue<T> = Queue<T>;
