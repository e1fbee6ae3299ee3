//! [`Barrier`]: parties wait for each other; a dead party breaks it.

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::robust::{Acquired, RawMutex, robust_supported};
use super::shared::{Kind, Region};
use crate::os;

/// How often a waiting party checks for dead parties.
const CHECK: Duration = Duration::from_millis(100);
/// Most parties one barrier can have.
const MAX_PARTIES: u32 = 4096;

/// Why [`Barrier::wait`] did not pass the barrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarrierError {
    /// A party died (while waiting, or while registered with
    /// [`Barrier::party`]), a wait timed out, or [`Barrier::abort`] was
    /// called: the barrier stays broken until [`Barrier::reset`].
    Broken,
    /// This wait's timeout passed; the barrier is now broken for the others
    /// too, as in Python.
    TimedOut,
}

impl fmt::Display for BarrierError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Broken => f.write_str("the barrier is broken"),
            Self::TimedOut => f.write_str("timed out waiting at the barrier (it is now broken)"),
        }
    }
}

impl std::error::Error for BarrierError {}

/// Parties wait until all have arrived: Python's `multiprocessing.Barrier`,
/// shared by threads and processes. A party that dies while waiting — or,
/// if it registered with [`party`](Self::party), at any time — breaks the
/// barrier for the others within 100 ms instead of leaving them hung.
///
/// ```
/// use herd::sync::Barrier;
///
/// #[herd::task]
/// fn meet(b: Barrier) -> bool {
///     b.wait().unwrap()
/// }
///
/// fn main() {
///     herd::init();
///     let b = Barrier::new(2).unwrap();
///     let mut child = herd::spawn(meet, (b.clone(),)).unwrap();
///     let leader_here = b.wait().unwrap();
///     let leader_there = child.join().unwrap();
///     assert!(leader_here ^ leader_there); // exactly one leader
/// }
/// ```
#[derive(Clone)]
pub struct Barrier {
    region: Arc<Region>,
    parties: u32,
}

thread_local! {
    /// Barriers this thread is registered with, and its slot in each.
    static REGISTERED: RefCell<Vec<(u64, u32)>> = const { RefCell::new(Vec::new()) };
}

impl Barrier {
    /// A barrier for `parties` parties.
    pub fn new(parties: u32) -> io::Result<Self> {
        if !robust_supported() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "herd barriers need the robust-futex list",
            ));
        }
        if parties == 0 || parties > MAX_PARTIES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("between 1 and {MAX_PARTIES} parties"),
            ));
        }
        let region = Region::create(Kind::Barrier, u64::from(parties), body_len(parties))?;
        Ok(Self {
            region: Arc::new(region),
            parties,
        })
    }

    /// The number of parties.
    pub fn parties(&self) -> u32 {
        self.parties
    }

    fn state(&self) -> &RawMutex {
        // SAFETY: the body's first 64 bytes are the state lock.
        unsafe { RawMutex::at(self.region.body()) }
    }

    fn word(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: offsets 64, 68, 72 of the body are the barrier's counters.
        unsafe { AtomicU32::from_ptr(self.region.body().add(offset).cast()) }
    }

    fn generation(&self) -> &AtomicU32 {
        self.word(64)
    }

    fn arrived(&self) -> &AtomicU32 {
        self.word(68)
    }

    fn broken(&self) -> &AtomicU32 {
        self.word(72)
    }

    /// Bumped by every `reset`: a waiter whose round ended by a reset gets
    /// `Broken`, as in Python.
    fn resets(&self) -> &AtomicU32 {
        self.word(76)
    }

    fn slot(&self, i: u32) -> &RawMutex {
        // SAFETY: party slot `i < parties`, 64 bytes each after byte 128.
        unsafe { RawMutex::at(self.region.body().add(128 + 64 * i as usize)) }
    }

    /// Whether the barrier is broken.
    pub fn is_broken(&self) -> bool {
        self.broken().load(Ordering::Acquire) != 0
    }

    /// Breaks the barrier: every waiter, now and later, gets
    /// [`BarrierError::Broken`] until [`reset`](Self::reset). Waiters
    /// notice within 100 ms.
    pub fn abort(&self) {
        let locked = self.state().lock(false, None, None, || false).is_ok();
        self.broken().store(1, Ordering::Release);
        if locked {
            self.state().unlock(false);
        }
        os::futex_wake(self.generation(), os::WAKE_ALL);
    }

    /// Returns the barrier to its empty state: parties waiting now get
    /// [`BarrierError::Broken`] (as in Python), later ones start a fresh
    /// round; slots left by dead parties are freed.
    pub fn reset(&self) {
        let locked = self.state().lock(false, None, None, || false).is_ok();
        for i in 0..self.parties {
            // SAFETY: the slot's first word (see `slot`).
            let w = unsafe {
                AtomicU32::from_ptr(self.region.body().add(128 + 64 * i as usize).cast())
            };
            let cur = w.load(Ordering::Acquire);
            if cur & os::robust::OWNER_DIED != 0 && cur & os::robust::TID_MASK == 0 {
                let _ = w.compare_exchange(cur, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
        self.arrived().store(0, Ordering::Release);
        self.broken().store(0, Ordering::Release);
        self.resets().fetch_add(1, Ordering::Release);
        self.generation().fetch_add(1, Ordering::Release);
        if locked {
            self.state().unlock(false);
        }
        os::futex_wake(self.generation(), os::WAKE_ALL);
    }

    /// Registers the calling thread as a party until the returned guard is
    /// dropped: if the thread (or its process) dies before then, the
    /// barrier breaks, even if it never reached [`wait`](Self::wait).
    pub fn party(&self) -> Result<Party<'_>, BarrierError> {
        let slot = self.claim()?;
        REGISTERED.with(|r| r.borrow_mut().push((self.region.id(), slot)));
        Ok(Party {
            barrier: self,
            slot,
            _not_send: PhantomData,
        })
    }

    /// Claims a free party slot; a slot left by a dead party breaks the
    /// barrier.
    fn claim(&self) -> Result<u32, BarrierError> {
        for i in 0..self.parties {
            match self.slot(i).try_lock(false) {
                Ok(Acquired::OwnerDied) => {
                    self.slot(i).unlock(false);
                    self.abort();
                    return Err(BarrierError::Broken);
                }
                Ok(_) => {
                    self.region.pin(false);
                    return Ok(i);
                }
                Err(_) => {}
            }
        }
        // More waiters than parties: wait untracked.
        Ok(u32::MAX)
    }

    fn dead_party(&self) -> bool {
        (0..self.parties).any(|i| {
            // SAFETY: the slot's first word (see `slot`).
            let w = unsafe {
                AtomicU32::from_ptr(self.region.body().add(128 + 64 * i as usize).cast())
            }
            .load(Ordering::Acquire);
            w & os::robust::OWNER_DIED != 0 && w & os::robust::TID_MASK == 0
        })
    }

    /// Waits until all parties have arrived; `Ok(true)` for exactly one of
    /// them (the leader).
    pub fn wait(&self) -> Result<bool, BarrierError> {
        self.wait_until(None)
    }

    /// Waits at most `timeout`; on timeout the barrier breaks.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool, BarrierError> {
        self.wait_until(Instant::now().checked_add(timeout))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> Result<bool, BarrierError> {
        let registered =
            REGISTERED.with(|r| r.borrow().iter().any(|(id, _)| *id == self.region.id()));
        let slot = if registered {
            None
        } else {
            Some(self.claim()?)
        };
        let result = self.arrive_and_wait(deadline);
        if let Some(s) = slot.filter(|s| *s != u32::MAX) {
            self.region.unpin(false);
            self.slot(s).unlock(false);
        }
        result
    }

    fn arrive_and_wait(&self, deadline: Option<Instant>) -> Result<bool, BarrierError> {
        match self.state().lock(false, None, None, || false) {
            Ok(Acquired::OwnerDied) => {
                // A party died updating the counters.
                self.state().unlock(false);
                self.abort();
                return Err(BarrierError::Broken);
            }
            Ok(_) => {}
            Err(_) => return Err(BarrierError::Broken),
        }
        if self.is_broken() {
            self.state().unlock(false);
            return Err(BarrierError::Broken);
        }
        let my_gen = self.generation().load(Ordering::Acquire);
        let my_resets = self.resets().load(Ordering::Acquire);
        let arrived = self.arrived().fetch_add(1, Ordering::AcqRel) + 1;
        if arrived >= self.parties {
            self.arrived().store(0, Ordering::Release);
            self.generation().fetch_add(1, Ordering::Release);
            self.state().unlock(false);
            os::futex_wake(self.generation(), os::WAKE_ALL);
            return Ok(true);
        }
        self.state().unlock(false);
        loop {
            let now = Instant::now();
            let check_at = now + CHECK;
            os::futex_wait(
                self.generation(),
                my_gen,
                Some(deadline.map_or(check_at, |d| d.min(check_at))),
            );
            if self.generation().load(Ordering::Acquire) != my_gen {
                return if self.resets().load(Ordering::Acquire) == my_resets {
                    Ok(false)
                } else {
                    Err(BarrierError::Broken)
                };
            }
            if self.is_broken() {
                return Err(BarrierError::Broken);
            }
            if self.dead_party() {
                return self.break_unless_passed(my_gen, BarrierError::Broken);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return self.break_unless_passed(my_gen, BarrierError::TimedOut);
            }
        }
    }

    /// Breaks the barrier under its state lock, unless the round this
    /// waiter joined has completed meanwhile (then the wait succeeded).
    fn break_unless_passed(&self, my_gen: u32, why: BarrierError) -> Result<bool, BarrierError> {
        let locked = self.state().lock(false, None, None, || false).is_ok();
        let passed = self.generation().load(Ordering::Acquire) != my_gen;
        if !passed {
            self.broken().store(1, Ordering::Release);
        }
        if locked {
            self.state().unlock(false);
        }
        if passed {
            return Ok(false);
        }
        os::futex_wake(self.generation(), os::WAKE_ALL);
        Err(why)
    }
}

fn body_len(parties: u32) -> usize {
    128 + 64 * parties as usize
}

/// A registered party of a [`Barrier`] (see [`Barrier::party`]).
#[must_use = "the registration ends when the guard is dropped"]
pub struct Party<'a> {
    barrier: &'a Barrier,
    slot: u32,
    _not_send: PhantomData<*const ()>,
}

impl Party<'_> {
    /// [`Barrier::wait`], as this party.
    pub fn wait(&self) -> Result<bool, BarrierError> {
        self.barrier.wait()
    }

    /// [`Barrier::wait_timeout`], as this party.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool, BarrierError> {
        self.barrier.wait_timeout(timeout)
    }
}

impl Drop for Party<'_> {
    fn drop(&mut self) {
        let id = self.barrier.region.id();
        REGISTERED.with(|r| r.borrow_mut().retain(|(b, _)| *b != id));
        if self.slot != u32::MAX {
            self.barrier.region.unpin(false);
            self.barrier.slot(self.slot).unlock(false);
        }
    }
}

impl fmt::Debug for Party<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Party").field("slot", &self.slot).finish()
    }
}

impl fmt::Debug for Barrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Barrier")
            .field("parties", &self.parties)
            .field("broken", &self.is_broken())
            .finish()
    }
}

impl Serialize for Barrier {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.region.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Barrier {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let region = Region::deserialize(d, Kind::Barrier, |p| {
            (p >= 1 && p <= u64::from(MAX_PARTIES)).then(|| body_len(p as u32))
        })?;
        let parties = region.param() as u32;
        Ok(Self {
            region: Arc::new(region),
            parties,
        })
    }
}
