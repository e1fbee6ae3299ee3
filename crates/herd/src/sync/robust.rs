//! The robust mutex under `Lock`, `RLock` and `Condition`: a futex word in
//! shared memory, tracked by the kernel's robust-futex list so that the
//! death of its owner — however it dies — is noticed at once.
//!
//! The kernel keeps, per thread, a pointer to a list of held robust futexes
//! (`set_robust_list`); when the thread dies it walks the list and, for every
//! word still holding the dead thread's id, sets `OWNER_DIED` and wakes a
//! waiter. glibc registers that list for every thread and links its own
//! robust `pthread_mutex_t`s into it; herd links its locks into the same list
//! with the same entry layout (`prev` at +24, `next` at +32 from the futex
//! word; the kernel was told the futex is at entry - 32), so both coexist.
//! The list is only ever touched by its own thread. The layout is checked at
//! run time (`os::robust_list_head`); where it differs, locks still work but
//! an owner's death is not detected (documented).
//!
//! A pthread robust mutex would give the same guarantee, but measured here it
//! costs 26 ns per uncontended lock+unlock against 6.7 ns for a plain one;
//! this protocol keeps the uncontended path to one CAS and a few plain
//! loads and stores: an unlock releases with a plain store, and the rare
//! waiter pays for it with a `membarrier` (an asymmetric fence) before it
//! sleeps. See DESIGN.md, "The lock's plain-store unlock".

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering, compiler_fence};
use std::time::{Duration, Instant};

use crate::os::{self, robust};

/// The longest a lock waiter sleeps before it looks again.
const RECHECK: Duration = Duration::from_millis(100);

/// A robust mutex's state: the first 64 bytes of its slot in shared memory.
/// All-zero is the unlocked state.
#[repr(C, align(64))]
pub(crate) struct RawMutex {
    /// Owner tid | WAITERS | OWNER_DIED.
    word: AtomicU32,
    /// Re-entries beyond the first (RLock only; touched by the owner only).
    depth: AtomicU32,
    /// 1 when a holder panicked; reported once, to the next acquirer.
    poisoned: AtomicU32,
    _r0: u32,
    /// When a waiter last counted itself (coarse monotonic milliseconds,
    /// only ever moved forward): every live waiter does at least every
    /// `RECHECK`, so a count with no heartbeat for `STALE_MS` belongs to
    /// waiters that died.
    heartbeat: AtomicU32,
    /// Releases that took the swap path for a count (touched by the owner
    /// only): the stale-count check runs every `STALE_CHECK_EVERY` of them
    /// that find no mark.
    unmarked: AtomicU32,
    /// Robust-list links, in the owner's address space.
    prev: AtomicUsize,
    next: AtomicUsize,
    /// Waiters between announcing themselves and leaving their sleep (see
    /// `unlock`'s plain-store release), low 32 bits, and the generation of
    /// that count, high 32 bits: clearing a stale count starts a new
    /// generation, and a waiter uncounts itself only from the generation
    /// it counted itself in.
    sleepers: AtomicU64,
    _r2: [u64; 2],
}

/// The count part of `sleepers`.
const COUNT: u64 = 0xffff_ffff;

const _: () = assert!(std::mem::size_of::<RawMutex>() == 64);
const _: () = assert!(std::mem::offset_of!(RawMutex, next) as isize == -robust::FUTEX_OFFSET);

/// How an acquisition went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acquired {
    /// Cleanly.
    Clean,
    /// The previous owner died holding it (its thread or process ended).
    OwnerDied,
    /// The previous holder panicked while holding it.
    Poisoned,
    /// Re-entered by its owner (RLock).
    Reentered,
}

/// Why an acquisition did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotAcquired {
    /// The deadline passed.
    TimedOut,
    /// The calling thread already holds this (non-reentrant) lock.
    SelfDeadlock,
    /// The deadlock check (run once per `slice`) found a cycle.
    Deadlock,
}

thread_local! {
    /// This thread's view of the locks, 0 until looked up: its robust-list
    /// head's address (0 if unusable) | `LOOKED_UP` | `FAST`.
    static STATE: Cell<usize> = const { Cell::new(0) };
    static TID: Cell<u32> = const { Cell::new(0) };
}

/// In `STATE`: looked up.
const LOOKED_UP: usize = 1;
/// In `STATE`: this process is registered for heavy fences, so its
/// unlocks may release with a plain store.
const FAST: usize = 2;

#[inline]
fn state() -> usize {
    STATE.with(|s| {
        let v = s.get();
        if v != 0 { v } else { look_up(s) }
    })
}

#[cold]
fn look_up(s: &Cell<usize>) -> usize {
    forget_caches_on_fork();
    let head = os::robust_list_head().map_or(0, |p| p as usize);
    // The head is a pointer-aligned field; the two low bits are ours.
    let head = if head & 3 == 0 { head } else { 0 };
    let fast = if os::register_heavy_fence() { FAST } else { 0 };
    s.set(head | LOOKED_UP | fast);
    head | LOOKED_UP | fast
}

#[inline]
fn head_of(state: usize) -> Option<*mut usize> {
    let p = state & !3;
    (p != 0).then_some(p as *mut usize)
}

#[inline]
fn head() -> Option<*mut usize> {
    head_of(state())
}

/// How long without a heartbeat before counted sleepers are taken for dead.
const STALE_MS: u32 = 1000;
/// How many swap-path releases with a count between two looks at the clock.
const STALE_CHECK_EVERY: u32 = 1024;

/// The longest a waiter sleeps when this process is refused heavy fences
/// that other processes may run (an unlock's plain store may then go
/// unseen until it looks again). Where the kernel has none, no process
/// releases with a plain store, and waiters keep `RECHECK`.
const UNFENCED_RECHECK: Duration = Duration::from_millis(1);

/// In a child made by `fork()`, the forking thread's caches would name the
/// parent's thread: clear them there (glibc re-registers the child's robust
/// list itself). A guard held across `fork()` belongs to the parent; the
/// child must not drop it (documented on the lock types).
#[cold]
fn forget_caches_on_fork() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    extern "C" fn in_child() {
        STATE.with(|s| s.set(0));
        TID.with(|t| t.set(0));
    }
    ONCE.call_once(|| os::at_fork_child(in_child));
}

/// Whether this thread can have herd's locks tracked by the kernel.
pub(crate) fn robust_supported() -> bool {
    head().is_some()
}

#[inline]
fn tid() -> u32 {
    TID.with(|t| {
        if t.get() == 0 {
            t.set(os::gettid());
        }
        t.get()
    })
}

impl RawMutex {
    /// The mutex at `p`.
    ///
    /// # Safety
    /// `p` must point to 64 bytes of shared memory, 64-byte aligned, that
    /// live as long as `'a` and are only used as a `RawMutex`.
    pub(crate) unsafe fn at<'a>(p: *mut u8) -> &'a Self {
        // SAFETY: forwarded to the caller; every field is an atomic or
        // plain padding, valid for any bit pattern.
        unsafe { &*p.cast::<Self>() }
    }

    #[inline]
    fn entry(&self) -> usize {
        &self.next as *const AtomicUsize as usize
    }

    /// The owner's thread id, 0 if unlocked.
    pub(crate) fn owner(&self) -> u32 {
        self.word.load(Ordering::Relaxed) & robust::TID_MASK
    }

    /// Whether its last owner died holding it and nobody took it since.
    pub(crate) fn owner_died(&self) -> bool {
        let w = self.word.load(Ordering::Relaxed);
        w & robust::TID_MASK == 0 && w & robust::OWNER_DIED != 0
    }

    /// One attempt; never blocks.
    #[inline]
    pub(crate) fn try_lock(&self, reentrant: bool) -> Result<Acquired, NotAcquired> {
        match self.attempt(reentrant, false)? {
            Some(a) => Ok(a),
            None => Err(NotAcquired::TimedOut),
        }
    }

    /// Locks, waiting until `deadline` (`None`: forever). Every `slice`,
    /// `check` runs (the deadlock detector); `true` from it ends the wait.
    pub(crate) fn lock(
        &self,
        reentrant: bool,
        deadline: Option<Instant>,
        slice: Option<Duration>,
        mut check: impl FnMut() -> bool,
    ) -> Result<Acquired, NotAcquired> {
        let mut waited = false;
        loop {
            if let Some(a) = self.attempt(reentrant, waited)? {
                return Ok(a);
            }
            // Contended: make sure the owner will wake us, then sleep.
            let cur = self.word.load(Ordering::Relaxed);
            if cur & robust::TID_MASK == 0 {
                continue;
            }
            // Count ourselves, mark the word (the kernel wakes a marked
            // word's sleeper when its owner dies), then fence every CPU:
            // an unlock that read the word before our mark releases with a
            // plain store and then reads `sleepers`, so after the fence
            // either its store is visible to the look below or our count
            // is visible to it (see `unlock`).
            self.beat();
            let generation = self.sleepers.fetch_add(1, Ordering::SeqCst) >> 32;
            let marked = cur & robust::WAITERS != 0
                || self
                    .word
                    .compare_exchange(
                        cur,
                        cur | robust::WAITERS,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    )
                    .is_ok();
            // Where the fence was refused to this process alone, an unlock
            // elsewhere may still release with a plain store: look often.
            let fenced = marked && os::heavy_fence() != os::Fence::Refused;
            if !marked || self.word.load(Ordering::Relaxed) != cur | robust::WAITERS {
                self.leave(generation);
                continue;
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                self.leave(generation);
                self.pass_on_wake();
                return Err(NotAcquired::TimedOut);
            }
            // Never sleep longer than RECHECK: a waiter woken by an unlock
            // and killed before it took the lock swallows that wake, and
            // the others must not sleep on for ever.
            let most = if fenced { RECHECK } else { UNFENCED_RECHECK };
            let slice_end = now + slice.unwrap_or(most).min(most);
            let wake_at = Some(deadline.map_or(slice_end, |d| d.min(slice_end)));
            os::futex_wait(&self.word, cur | robust::WAITERS, wake_at);
            self.leave(generation);
            waited = true;
            if slice.is_some()
                && self.owner() != 0
                && wake_at.is_some_and(|w| Instant::now() >= w)
                && check()
            {
                self.pass_on_wake();
                return Err(NotAcquired::Deadlock);
            }
        }
    }

    /// Moves the heartbeat to now, never back (a waiter descheduled
    /// between reading the clock and storing it must not make another's
    /// fresh heartbeat look old).
    fn beat(&self) {
        let now = os::coarse_ms();
        let _ = self
            .heartbeat
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |old| {
                ((now.wrapping_sub(old) as i32) > 0).then_some(now)
            });
    }

    /// Uncounts a waiter counted in `generation`. A waiter whose count was
    /// cleared as stale (it was stopped for longer than `STALE_MS`) finds a
    /// newer generation and leaves the count alone: it must not uncount
    /// another.
    fn leave(&self, generation: u64) {
        let _ = self
            .sleepers
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                (v >> 32 == generation && v & COUNT != 0).then(|| v - 1)
            });
    }

    /// Clears a count no live waiter has refreshed for `STALE_MS`: waiters
    /// killed while counted (each live one refreshes the heartbeat before
    /// it counts itself, at least every `RECHECK`). Without this, a lock
    /// whose waiter was SIGKILLed kept taking the swap path for good.
    #[cold]
    fn forget_dead_sleepers(&self) {
        let v = self.sleepers.load(Ordering::SeqCst);
        let age = os::coarse_ms().wrapping_sub(self.heartbeat.load(Ordering::SeqCst));
        if v & COUNT != 0 && age > STALE_MS {
            // A waiter that counted itself since our look changed `v`.
            let next = ((v >> 32).wrapping_add(1) & COUNT) << 32;
            let _ = self
                .sleepers
                .compare_exchange(v, next, Ordering::SeqCst, Ordering::Relaxed);
        }
    }

    /// Leaving without the lock after sleeping on it, perhaps with a wake
    /// meant for us: hand it to the next sleeper so none is stranded.
    #[cold]
    fn pass_on_wake(&self) {
        if self.word.load(Ordering::Relaxed) & robust::WAITERS != 0
            || self.sleepers.load(Ordering::SeqCst) & COUNT != 0
        {
            os::futex_wake(&self.word, 1);
        }
    }

    /// Takes the lock if its word is 0 (free, no dead owner, no sleeper);
    /// `None` changes nothing, and the caller goes the full way.
    #[inline(always)]
    pub(crate) fn try_free(&self) -> Option<Acquired> {
        let head = head();
        self.announce(head);
        if self
            .word
            .compare_exchange(0, tid(), Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.settle(head);
            return None;
        }
        Some(self.won(head, 0))
    }

    /// `Ok(None)`: held by another thread.
    #[inline]
    fn attempt(&self, reentrant: bool, waited: bool) -> Result<Option<Acquired>, NotAcquired> {
        let me = tid();
        let head = head();
        // Once a thread has slept on the word it keeps WAITERS set, so the
        // unlock after it wakes the next sleeper too.
        let sticky = if waited { robust::WAITERS } else { 0 };
        // Optimistically expect a free, clean word: one CAS, no prior load.
        // The entry is announced first, so that dying between the CAS and
        // the link still releases the lock.
        self.announce(head);
        let cur =
            match self
                .word
                .compare_exchange(0, me | sticky, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return Ok(Some(self.won(head, 0))),
                Err(cur) => cur,
            };
        let owner = cur & robust::TID_MASK;
        if owner != 0 {
            self.settle(head);
            if owner == me {
                if reentrant {
                    self.depth.fetch_add(1, Ordering::Relaxed);
                    return Ok(Some(Acquired::Reentered));
                }
                return Err(NotAcquired::SelfDeadlock);
            }
            return Ok(None);
        }
        // Free, with WAITERS or OWNER_DIED set (or it changed meanwhile).
        let waiters = sticky | (cur & robust::WAITERS);
        match self
            .word
            .compare_exchange(cur, me | waiters, Ordering::Acquire, Ordering::Relaxed)
        {
            Ok(_) => Ok(Some(self.won(head, cur))),
            Err(_) => {
                self.settle(head);
                Ok(None)
            }
        }
    }

    /// Sets `list_op_pending` to this mutex.
    #[inline]
    fn announce(&self, head: Option<*mut usize>) {
        if let Some(h) = head {
            // SAFETY: `h` is this thread's robust head; its third word is
            // `list_op_pending`, written only by this thread.
            unsafe { h.add(2).write_volatile(self.entry()) };
            compiler_fence(Ordering::SeqCst);
        }
    }

    /// Clears `list_op_pending`.
    #[inline]
    fn settle(&self, head: Option<*mut usize>) {
        if let Some(h) = head {
            compiler_fence(Ordering::SeqCst);
            // SAFETY: as in `announce`.
            unsafe { h.add(2).write_volatile(0) };
        }
    }

    /// The lock was just taken from the word value `prev`: link it, settle,
    /// and report how it was left.
    #[inline]
    fn won(&self, head: Option<*mut usize>, prev: u32) -> Acquired {
        if let Some(h) = head {
            // SAFETY: `h` is this thread's robust head and we own the lock,
            // so its links are ours.
            unsafe { self.link(h) };
        }
        self.settle(head);
        if prev & robust::OWNER_DIED != 0 {
            self.depth.store(0, Ordering::Relaxed);
            self.poisoned.store(0, Ordering::Relaxed);
            return Acquired::OwnerDied;
        }
        // A plain load first: a locked swap on every acquisition would
        // double the cost of the uncontended path.
        if self.poisoned.load(Ordering::Relaxed) != 0
            && self.poisoned.swap(0, Ordering::Relaxed) != 0
        {
            return Acquired::Poisoned;
        }
        Acquired::Clean
    }

    /// Releases one level; the last one unlocks. `poison` marks that the
    /// holder is panicking.
    #[inline]
    pub(crate) fn unlock(&self, poison: bool) {
        if self.depth.load(Ordering::Relaxed) > 0 {
            self.depth.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        if poison {
            self.poisoned.store(1, Ordering::Relaxed);
        }
        let state = state();
        let head = head_of(state);
        if let Some(h) = head {
            // SAFETY: this thread's robust head, as in `attempt`; the lock
            // is ours, so are its links.
            unsafe {
                h.add(2).write_volatile(self.entry());
                self.unlink();
            }
        }
        if state & FAST != 0
            && self.word.load(Ordering::Relaxed) & robust::WAITERS == 0
            && self.sleepers.load(Ordering::Relaxed) & COUNT == 0
        {
            // Unmarked, no waiter about: release with a plain store, no
            // locked instruction. A waiter may still mark the word between
            // our look and our store (the store then erases the mark); it
            // counted itself in `sleepers` before marking and runs a heavy
            // fence before it looks again, which either makes our store
            // visible to that look (it does not sleep) or comes before our
            // store, and so before the load below, which then sees its
            // count.
            self.word.store(0, Ordering::Release);
            compiler_fence(Ordering::SeqCst);
            if self.sleepers.load(Ordering::Relaxed) & COUNT != 0 {
                os::futex_wake(&self.word, 1);
            }
        } else {
            // A waiter is about (or no heavy fences here): the locked swap
            // cannot erase a mark, and reports it. While a woken waiter is
            // on its way back, its count would otherwise make every plain
            // release wake for nothing. Still ours: count the releases that
            // find a count, for the stale-count check.
            let look = self.sleepers.load(Ordering::Relaxed) & COUNT != 0 && {
                let k = self.unmarked.load(Ordering::Relaxed).wrapping_add(1);
                self.unmarked.store(k, Ordering::Relaxed);
                k.is_multiple_of(STALE_CHECK_EVERY)
            };
            let old = self.word.swap(0, Ordering::Release);
            if old & robust::WAITERS != 0 {
                os::futex_wake(&self.word, 1);
            } else if look {
                self.forget_dead_sleepers();
            }
        }
        if let Some(h) = head {
            compiler_fence(Ordering::SeqCst);
            // SAFETY: as above.
            unsafe { h.add(2).write_volatile(0) };
        }
    }

    /// Links this mutex at the front of the thread's robust list (glibc's
    /// `ENQUEUE_MUTEX_BOTH`, with the same layout).
    ///
    /// # Safety
    /// `h` is the calling thread's robust head and the mutex is held by it.
    #[inline]
    unsafe fn link(&self, h: *mut usize) {
        // SAFETY: `h` and the entries reachable from it are this thread's
        // list (glibc's and herd's, both laid out as {prev, next}); only
        // this thread modifies it.
        unsafe {
            let first = h.read_volatile() & !1;
            // The first entry's `prev` (for the head itself: glibc's
            // `robust_prev`, just before it).
            ((first - 8) as *mut usize).write_volatile(self.entry());
            self.next.store(h.read_volatile(), Ordering::Relaxed);
            self.prev.store(h as usize, Ordering::Relaxed);
            compiler_fence(Ordering::SeqCst);
            h.write_volatile(self.entry());
        }
    }

    /// Unlinks this mutex from the thread's robust list (glibc's
    /// `DEQUEUE_MUTEX`).
    ///
    /// # Safety
    /// The mutex is held by the calling thread, which linked it.
    #[inline]
    unsafe fn unlink(&self) {
        let next = self.next.load(Ordering::Relaxed);
        let prev = self.prev.load(Ordering::Relaxed);
        if next == 0 || prev == 0 {
            return;
        }
        // SAFETY: `prev`/`next` point into this thread's list, as above.
        unsafe {
            (((next & !1) - 8) as *mut usize).write_volatile(prev);
            ((prev & !1) as *mut usize).write_volatile(next);
        }
        compiler_fence(Ordering::SeqCst);
        self.prev.store(0, Ordering::Relaxed);
        self.next.store(0, Ordering::Relaxed);
    }
}
