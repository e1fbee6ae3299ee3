//! [`Condition`]: wait for a change made under a lock, across processes.

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::lock::{LOCK_BODY, LockCore, LockError, LockResult};
use super::shared::{Kind, Region};
use crate::os;

/// A condition variable with its own robust lock, shared by threads and
/// processes: Python's `multiprocessing.Condition` (with a non-reentrant
/// lock). Wake-ups may be spurious; wait in a loop on the condition (or use
/// [`wait_while`](Self::wait_while)).
///
/// ```
/// use herd::sync::{Condition, Value};
///
/// #[herd::task]
/// fn produce(cond: Condition, ready: Value<u8>) {
///     let _g = cond.acquire().unwrap();
///     ready.set(1);
///     cond.notify_all();
/// }
///
/// fn main() {
///     herd::init();
///     let (cond, ready) = (Condition::new().unwrap(), Value::new(0u8).unwrap());
///     let guard = cond.acquire().unwrap();
///     let mut child = herd::spawn(produce, (cond.clone(), ready.clone())).unwrap();
///     let _guard = cond.wait_while(guard, || ready.get() == 0).unwrap();
///     child.join().unwrap();
/// }
/// ```
#[derive(Clone)]
pub struct Condition {
    core: Arc<LockCore>,
}

/// Holds a [`Condition`]'s lock.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ConditionGuard<'a> {
    cond: &'a Condition,
    _not_send: PhantomData<*const ()>,
}

impl Drop for ConditionGuard<'_> {
    fn drop(&mut self) {
        self.cond.core.release();
    }
}

impl fmt::Debug for ConditionGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConditionGuard").finish_non_exhaustive()
    }
}

impl Condition {
    /// A new condition with its lock free.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            core: LockCore::new(Kind::Condition, false, 0, 64)?,
        })
    }

    fn seq(&self) -> &AtomicU32 {
        // SAFETY: 64 bytes after the lock are reserved for the sequence
        // word, 64-byte aligned, living as long as the region.
        unsafe { AtomicU32::from_ptr(self.core.extra().cast()) }
    }

    fn guard(&self) -> ConditionGuard<'_> {
        ConditionGuard {
            cond: self,
            _not_send: PhantomData,
        }
    }

    fn take(&self, deadline: Option<Instant>, wait: bool) -> LockResult<ConditionGuard<'_>> {
        self.core
            .acquire(deadline, wait)
            .map(|()| self.guard())
            .map_err(|e| e.map_guard(|()| self.guard()))
    }

    /// Takes the lock.
    pub fn acquire(&self) -> LockResult<ConditionGuard<'_>> {
        self.take(None, true)
    }

    /// Takes the lock, waiting at most `timeout`.
    pub fn acquire_timeout(&self, timeout: Duration) -> LockResult<ConditionGuard<'_>> {
        self.take(Instant::now().checked_add(timeout), true)
    }

    /// Releases the lock, waits for a notification, and takes the lock
    /// again. (The wait is on the condition the guard belongs to.)
    pub fn wait<'a>(&'a self, guard: ConditionGuard<'a>) -> LockResult<ConditionGuard<'a>> {
        self.wait_deadline(guard, None)
            .map(|(g, _)| g)
            .map_err(|e| e.map_guard(|(g, _)| g))
    }

    /// As [`wait`](Self::wait), for at most `timeout`; the flag says
    /// whether the wait timed out.
    pub fn wait_timeout<'a>(
        &'a self,
        guard: ConditionGuard<'a>,
        timeout: Duration,
    ) -> LockResult<(ConditionGuard<'a>, bool)> {
        self.wait_deadline(guard, Instant::now().checked_add(timeout))
    }

    /// Waits while `condition` holds (checked under the lock).
    pub fn wait_while<'a>(
        &'a self,
        mut guard: ConditionGuard<'a>,
        mut condition: impl FnMut() -> bool,
    ) -> LockResult<ConditionGuard<'a>> {
        while condition() {
            guard = self.wait(guard)?;
        }
        Ok(guard)
    }

    fn wait_deadline<'a>(
        &'a self,
        guard: ConditionGuard<'a>,
        deadline: Option<Instant>,
    ) -> LockResult<(ConditionGuard<'a>, bool)> {
        // Wait on the condition whose lock the guard holds, whichever
        // `self` was used to call.
        let this = guard.cond;
        if !std::ptr::eq(this, self) {
            return this.wait_deadline(guard, deadline);
        }
        let seen = self.seq().load(Ordering::Acquire);
        drop(guard);
        os::futex_wait(self.seq(), seen, deadline);
        let timed_out = self.seq().load(Ordering::Acquire) == seen
            && deadline.is_some_and(|d| Instant::now() >= d);
        match self.core.acquire(None, true) {
            Ok(()) => Ok((self.guard(), timed_out)),
            Err(e) => Err(e.map_guard(|()| (self.guard(), timed_out))),
        }
    }

    /// Wakes up to `n` waiters.
    pub fn notify(&self, n: u32) {
        self.seq().fetch_add(1, Ordering::Release);
        os::futex_wake(self.seq(), n);
    }

    /// Wakes one waiter.
    pub fn notify_one(&self) {
        self.notify(1);
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) {
        self.notify(os::WAKE_ALL);
    }
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condition")
            .field("id", &self.core.id())
            .finish()
    }
}

impl Serialize for Condition {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.core.region().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let region = Region::deserialize(d, Kind::Condition, |_| Some(LOCK_BODY + 64))?;
        Ok(Self {
            core: LockCore::from_region(region, false),
        })
    }
}

impl<G> LockError<G> {
    /// Whether this is [`LockError::TimedOut`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::TimedOut)
    }
}
