//! [`Semaphore`] and [`BoundedSemaphore`]: permits that come back when
//! their holder dies.
//!
//! Each permit is a slot holding a robust futex word, locked by the thread
//! that holds the permit and linked into its robust list like a lock. If the
//! holder dies, the kernel marks the slot `OWNER_DIED`; the next acquirer
//! that finds it takes the permit (and is told). Waiters sleep on a
//! generation word that every release bumps, and rescan every 100 ms, which
//! bounds how long a dead holder's permit can go unnoticed.

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::lock::{LockError, LockResult, PoisonCause};
use super::robust::{Acquired, RawMutex, robust_supported};
use super::shared::{Kind, Region};
use crate::os;

/// A slot that is not (yet) a permit: `Semaphore::release` enables it.
const DISABLED: u32 = 0x3fff_fffe;
/// How often a waiter rescans for permits of dead holders.
const RESCAN: Duration = Duration::from_millis(100);
/// Most permits one semaphore can have.
pub(crate) const MAX_PERMITS: u32 = 4096;

#[derive(Debug)]
struct Core {
    region: Region,
    slots: u32,
}

impl Core {
    fn new(kind: Kind, slots: u32, enabled: u32) -> io::Result<Self> {
        if !robust_supported() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "herd semaphores need the robust-futex list",
            ));
        }
        if enabled > MAX_PERMITS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("at most {MAX_PERMITS} permits"),
            ));
        }
        // A semaphore of 0 permits still has one (disabled) slot.
        let slots = slots.clamp(1, MAX_PERMITS);
        let region = Region::create(kind, u64::from(slots), 64 + 64 * slots as usize)?;
        let core = Self { region, slots };
        for i in enabled..slots {
            core.word(i).store(DISABLED, Ordering::Relaxed);
        }
        Ok(core)
    }

    fn generation(&self) -> &AtomicU32 {
        // SAFETY: the first 64 bytes of the body hold the generation word.
        unsafe { AtomicU32::from_ptr(self.region.body().cast()) }
    }

    fn slot(&self, i: u32) -> &RawMutex {
        // SAFETY: slot `i < slots` is 64 bytes, 64-byte aligned, after the
        // generation line; the region lives as long as `self`.
        unsafe { RawMutex::at(self.region.body().add(64 + 64 * i as usize)) }
    }

    fn word(&self, i: u32) -> &AtomicU32 {
        // SAFETY: the slot's first word (see `slot`).
        unsafe { AtomicU32::from_ptr(self.region.body().add(64 + 64 * i as usize).cast()) }
    }

    fn take(&self, deadline: Option<Instant>, wait: bool) -> LockResult<u32> {
        let start = os::gettid() % self.slots;
        loop {
            let seen = self.generation().load(Ordering::Acquire);
            for k in 0..self.slots {
                let i = (start + k) % self.slots;
                match self.slot(i).try_lock(false) {
                    Ok(Acquired::OwnerDied) => {
                        self.region.pin(false);
                        return Err(LockError::Poisoned {
                            guard: i,
                            cause: PoisonCause::OwnerDied,
                        });
                    }
                    Ok(_) => {
                        self.region.pin(false);
                        return Ok(i);
                    }
                    Err(_) => {}
                }
            }
            if !wait {
                return Err(LockError::WouldBlock);
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Err(LockError::TimedOut);
            }
            let rescan = now + RESCAN;
            os::futex_wait(
                self.generation(),
                seen,
                Some(deadline.map_or(rescan, |d| d.min(rescan))),
            );
        }
    }

    fn give_back(&self, i: u32) {
        self.region.unpin(false);
        self.slot(i).unlock(false);
        self.generation().fetch_add(1, Ordering::Release);
        os::futex_wake(self.generation(), 1);
    }

    fn free(&self) -> u32 {
        (0..self.slots)
            .filter(|&i| {
                let w = self.word(i).load(Ordering::Relaxed);
                w & os::robust::TID_MASK == 0
            })
            .count() as u32
    }
}

/// Holds one permit; dropping it gives the permit back.
#[must_use = "the permit is given back as soon as it is dropped"]
pub struct Permit<'a> {
    core: &'a Core,
    slot: u32,
    _not_send: PhantomData<*const ()>,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.core.give_back(self.slot);
    }
}

impl fmt::Debug for Permit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit").field("slot", &self.slot).finish()
    }
}

macro_rules! semaphore_common {
    ($name:ident, $kind:expr) => {
        impl $name {
            fn permit(&self, slot: u32) -> Permit<'_> {
                Permit {
                    core: &self.core,
                    slot,
                    _not_send: PhantomData,
                }
            }

            fn grab(&self, deadline: Option<Instant>, wait: bool) -> LockResult<Permit<'_>> {
                self.core
                    .take(deadline, wait)
                    .map(|s| self.permit(s))
                    .map_err(|e| e.map_guard(|s| self.permit(s)))
            }

            /// Waits for a permit. [`LockError::Poisoned`] means the permit
            /// you got was left by a holder that died.
            pub fn acquire(&self) -> LockResult<Permit<'_>> {
                self.grab(None, true)
            }

            /// Waits at most `timeout` for a permit.
            pub fn acquire_timeout(&self, timeout: Duration) -> LockResult<Permit<'_>> {
                self.grab(Instant::now().checked_add(timeout), true)
            }

            /// Takes a permit if one is free now.
            pub fn try_acquire(&self) -> LockResult<Permit<'_>> {
                self.grab(None, false)
            }

            /// How many permits are free now (including those of dead holders).
            pub fn value(&self) -> u32 {
                self.core.free()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("free", &self.value())
                    .finish()
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.core.region.serialize(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let region = Region::deserialize(d, $kind, |slots| {
                    (slots >= 1 && slots <= u64::from(MAX_PERMITS))
                        .then(|| 64 + 64 * slots as usize)
                })?;
                let slots = region.param() as u32;
                Ok(Self {
                    core: Arc::new(Core { region, slots }),
                })
            }
        }
    };
}

/// A counting semaphore shared by threads and processes: Python's
/// `multiprocessing.Semaphore`. A permit whose holder dies is recovered
/// (within 100 ms for a waiter already sleeping), never lost. Like Python's,
/// [`release`](Self::release) may add permits beyond the initial value (up
/// to `initial + 64`, and 4096 in all). One thread should hold at most 2048
/// permits at once: the kernel stops releasing a dead thread's robust words
/// after 2048.
///
/// ```
/// use herd::sync::Semaphore;
///
/// # fn main() {
/// herd::init();
/// let sem = Semaphore::new(2).unwrap();
/// let a = sem.acquire().unwrap();
/// let _b = sem.acquire().unwrap();
/// assert!(sem.try_acquire().is_err());
/// drop(a);
/// assert!(sem.try_acquire().is_ok());
/// # }
/// ```
#[derive(Clone)]
pub struct Semaphore {
    core: Arc<Core>,
}

/// Permits `release` may add beyond the initial value.
const HEADROOM: u32 = 64;

impl Semaphore {
    /// A semaphore with `value` free permits.
    pub fn new(value: u32) -> io::Result<Self> {
        let slots = value.saturating_add(HEADROOM).min(MAX_PERMITS);
        Ok(Self {
            core: Arc::new(Core::new(Kind::Semaphore, slots, value)?),
        })
    }

    /// Adds one free permit (Python's `release()` without a matching
    /// `acquire`); fails once `initial + 64` permits exist.
    pub fn release(&self) -> io::Result<()> {
        for i in 0..self.core.slots {
            if self
                .core
                .word(i)
                .compare_exchange(DISABLED, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                self.core.generation().fetch_add(1, Ordering::Release);
                os::futex_wake(self.core.generation(), 1);
                return Ok(());
            }
        }
        Err(io::Error::other(
            "the semaphore has no room for another permit",
        ))
    }
}

semaphore_common!(Semaphore, Kind::Semaphore);

/// A semaphore whose permits can never exceed the initial value: Python's
/// `BoundedSemaphore`. Permits are given back only by dropping them, so an
/// over-release cannot happen at all. Robust like [`Semaphore`].
#[derive(Clone)]
pub struct BoundedSemaphore {
    core: Arc<Core>,
}

impl BoundedSemaphore {
    /// A semaphore with `value` permits, all free.
    pub fn new(value: u32) -> io::Result<Self> {
        Ok(Self {
            core: Arc::new(Core::new(Kind::BoundedSemaphore, value, value)?),
        })
    }
}

semaphore_common!(BoundedSemaphore, Kind::BoundedSemaphore);
