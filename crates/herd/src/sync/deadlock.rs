//! The opt-in deadlock detector for herd locks.
//!
//! Every lock carries, in its shared memory, a small table of the threads
//! waiting for it; a thread that has to wait claims a slot (whether or not
//! its process detects). A thread that has waited for a
//! lock for one slice (100 ms) follows the wait-for graph: the lock's owner,
//! the lock that owner waits for (found in the tables of the locks mapped in
//! this process), that lock's owner, and so on. Coming back to itself is a
//! cycle. Because the graph lives in shared memory and thread ids are
//! system-wide, a cycle through threads of several processes is found too,
//! as long as its locks are mapped in the detecting process — true when the
//! processes share the same locks, the usual case.
//!
//! A cycle is reported only if the same cycle is seen on two consecutive
//! checks, so a graph caught mid-change does not raise a false alarm. The
//! thread that finds it stops waiting and gets [`LockError::Deadlock`]
//! naming the cycle; the others keep waiting (they are released when it
//! backs off and drops what it holds).
//!
//! Limits: a waiter killed while waiting leaves its thread id in the table
//! until the table fills and dead ids are swept; if the kernel reuses that
//! id meanwhile for a thread that is itself part of a wait chain, a false
//! cycle could be seen — the two-sightings rule makes that unlikely, not
//! impossible. Cycles through locks not mapped in the detecting process are
//! not seen.
//!
//! Cost: an uncontended acquisition pays nothing. A thread that must wait
//! claims a slot in the lock's table (one CAS, beside a futex sleep that
//! costs microseconds). With detection on, every 100 ms of waiting also
//! scans the locks mapped in this process. Detection is off by default.
//!
//! [`LockError::Deadlock`]: super::LockError::Deadlock

use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::lock::LockCore;
use super::robust::{Acquired, NotAcquired};
use crate::os;

/// Bytes of the waiters table in a lock's body.
pub(crate) const WAITERS_LEN: usize = 64;
const SLOTS: usize = WAITERS_LEN / 4;
/// How long a thread waits before it looks for a cycle.
const SLICE: Duration = Duration::from_millis(100);

static DETECT: AtomicBool = AtomicBool::new(false);
static LOCKS: Mutex<Vec<Weak<LockCore>>> = Mutex::new(Vec::new());

thread_local! {
    static LAST: RefCell<Option<Deadlock>> = const { RefCell::new(None) };
}

/// Turns the deadlock detector on or off for this process (default off).
///
/// ```
/// # fn main() {
/// herd::init();
/// herd::sync::detect_deadlocks(true);
/// let a = herd::sync::Lock::new().unwrap();
/// let _held = a.acquire().unwrap();
/// // Re-acquiring a held Lock is always reported, detector or not:
/// assert!(matches!(a.acquire(), Err(herd::sync::LockError::Deadlock(_))));
/// # }
/// ```
pub fn detect_deadlocks(on: bool) {
    DETECT.store(on, Ordering::SeqCst);
}

/// The threads waiting for one lock, in its shared memory.
#[repr(C)]
pub(crate) struct Waiters {
    slots: [AtomicU32; SLOTS],
}

impl Waiters {
    /// # Safety
    /// `p` points to `WAITERS_LEN` bytes of shared memory, 4-byte aligned,
    /// living as long as `'a`.
    pub(crate) unsafe fn at<'a>(p: *mut u8) -> &'a Self {
        // SAFETY: forwarded to the caller; atomics are valid for any bits.
        unsafe { &*p.cast::<Self>() }
    }

    fn add(&self, tid: u32) -> Option<usize> {
        let claim = || {
            self.slots.iter().position(|s| {
                s.compare_exchange(0, tid, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            })
        };
        claim().or_else(|| {
            // Full: free the slots of waiters that were killed while waiting.
            for s in &self.slots {
                let t = s.load(Ordering::Acquire);
                if t != 0 && !os::thread_exists(t) {
                    let _ = s.compare_exchange(t, 0, Ordering::AcqRel, Ordering::Relaxed);
                }
            }
            claim()
        })
    }

    fn remove(&self, slot: usize) {
        self.slots[slot].store(0, Ordering::Release);
    }

    fn contains(&self, tid: u32) -> bool {
        self.slots.iter().any(|s| s.load(Ordering::Acquire) == tid)
    }
}

pub(crate) fn register(core: &Arc<LockCore>) {
    let mut locks = LOCKS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if locks.len() >= 64 && locks.len().is_power_of_two() {
        locks.retain(|w| w.strong_count() > 0);
    }
    locks.push(Arc::downgrade(core));
}

/// Waits for `core`'s lock, checking for cycles when detection is on.
#[inline(always)]
pub(crate) fn wait_for(
    core: &Arc<LockCore>,
    deadline: Option<Instant>,
) -> Result<Acquired, NotAcquired> {
    let raw = core.raw();
    let reentrant = core_reentrant(core);
    // The uncontended path pays nothing.
    match raw.try_lock(reentrant) {
        Err(NotAcquired::TimedOut) => wait_slow(core, deadline),
        other => other,
    }
}

/// The contended path of [`wait_for`].
#[inline(never)]
fn wait_slow(core: &Arc<LockCore>, deadline: Option<Instant>) -> Result<Acquired, NotAcquired> {
    let raw = core.raw();
    let reentrant = core_reentrant(core);
    // A waiter always announces itself (one CAS, only when it must wait
    // anyway), so that a detecting process sees it even if the waiter's own
    // process does not detect.
    let me = os::gettid();
    let slot = core.waiters().add(me);
    let detect = DETECT.load(Ordering::Relaxed);
    let mut previous: Option<Vec<Link>> = None;
    let result = raw.lock(reentrant, deadline, detect.then_some(SLICE), || {
        let found = find_cycle(core, me);
        let confirmed = found.is_some() && found == previous;
        previous = found;
        if confirmed && let Some(cycle) = previous.take() {
            LAST.with(|l| *l.borrow_mut() = Some(Deadlock { cycle }));
            return true;
        }
        false
    });
    if let Some(s) = slot {
        core.waiters().remove(s);
    }
    result
}

fn core_reentrant(core: &LockCore) -> bool {
    core.is_reentrant()
}

/// Follows owner → awaited lock → owner from `start`; `Some` if it comes
/// back to `me`.
fn find_cycle(start: &Arc<LockCore>, me: u32) -> Option<Vec<Link>> {
    let locks: Vec<Arc<LockCore>> = LOCKS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    let mut path = Vec::new();
    let mut lock = Arc::clone(start);
    for _ in 0..=locks.len() {
        let owner = lock.raw().owner();
        if owner == 0 {
            return None;
        }
        path.push(Link {
            lock: lock.id(),
            owner_tid: owner,
        });
        if owner == me {
            return Some(path);
        }
        lock = Arc::clone(locks.iter().find(|l| l.waiters().contains(owner))?);
    }
    None
}

/// The cycle the last detection on this thread found.
pub(crate) fn last_cycle() -> Deadlock {
    LAST.with(|l| l.borrow_mut().take())
        .unwrap_or(Deadlock { cycle: Vec::new() })
}

/// One edge of a wait-for cycle: a lock and the thread holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The lock's id (the same in every process).
    pub lock: u64,
    /// The thread holding it (a system-wide thread id).
    pub owner_tid: u32,
}

/// A deadlock: each lock in the cycle is held by a thread that waits for
/// the next one, and the last one's holder is the thread that was told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deadlock {
    /// The cycle, starting with the lock the reporting thread waited for.
    pub cycle: Vec<Link>,
}

impl Deadlock {
    pub(crate) fn self_deadlock(lock: u64) -> Self {
        Self {
            cycle: vec![Link {
                lock,
                owner_tid: os::gettid(),
            }],
        }
    }
}

impl fmt::Display for Deadlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.cycle.len() == 1 {
            return write!(
                f,
                "deadlock: this thread already holds lock {:#x}",
                self.cycle[0].lock
            );
        }
        f.write_str("deadlock: this thread waits for")?;
        for (i, link) in self.cycle.iter().enumerate() {
            let who = match thread_pid(link.owner_tid) {
                Some(pid) => format!("thread {} (pid {pid})", link.owner_tid),
                None => format!("thread {}", link.owner_tid),
            };
            if i + 1 == self.cycle.len() {
                write!(f, " lock {:#x}, held by this thread", link.lock)?;
            } else {
                write!(f, " lock {:#x}, held by {who}, which waits for", link.lock)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for Deadlock {}

/// The process a thread belongs to, from `/proc/<tid>/status`.
fn thread_pid(tid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}
