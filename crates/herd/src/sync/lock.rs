//! [`Lock`] and [`RLock`]: robust mutual exclusion across threads and
//! processes, with RAII guards.

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::deadlock::{self, Deadlock};
use super::robust::{Acquired, NotAcquired, RawMutex};
use super::shared::{Kind, Region};

/// Why the previous holder did not release the lock normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoisonCause {
    /// Its thread or process ended while holding it (SIGKILL, a crash,
    /// `exit`, a thread that ended without dropping its guard).
    OwnerDied,
    /// It panicked while holding it (the guard was dropped while unwinding).
    Panicked,
}

/// Why an acquisition did not give a clean guard.
pub enum LockError<G> {
    /// The lock is yours now, but its previous holder did not finish: the
    /// state it protects may be half-updated. Reported once, to the first
    /// acquirer after the failure; the lock is usable again afterwards.
    Poisoned {
        /// The guard: you hold the lock.
        guard: G,
        /// What happened to the previous holder.
        cause: PoisonCause,
    },
    /// `try_acquire`: another thread holds it.
    WouldBlock,
    /// The timeout passed.
    TimedOut,
    /// Waiting would never end: this thread already holds this `Lock`, or
    /// the deadlock detector found a cycle.
    Deadlock(Deadlock),
}

impl<G> LockError<G> {
    /// The guard, for a poisoned lock (which you hold); `None` otherwise.
    pub fn into_guard(self) -> Option<G> {
        match self {
            Self::Poisoned { guard, .. } => Some(guard),
            _ => None,
        }
    }

    pub(crate) fn map_guard<H>(self, f: impl FnOnce(G) -> H) -> LockError<H> {
        match self {
            Self::Poisoned { guard, cause } => LockError::Poisoned {
                guard: f(guard),
                cause,
            },
            Self::WouldBlock => LockError::WouldBlock,
            Self::TimedOut => LockError::TimedOut,
            Self::Deadlock(d) => LockError::Deadlock(d),
        }
    }
}

impl<G> fmt::Debug for LockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Poisoned { cause, .. } => f
                .debug_struct("Poisoned")
                .field("cause", cause)
                .finish_non_exhaustive(),
            Self::WouldBlock => f.write_str("WouldBlock"),
            Self::TimedOut => f.write_str("TimedOut"),
            Self::Deadlock(d) => f.debug_tuple("Deadlock").field(d).finish(),
        }
    }
}

impl<G> fmt::Display for LockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Poisoned {
                cause: PoisonCause::OwnerDied,
                ..
            } => f.write_str("the previous holder died holding the lock"),
            Self::Poisoned {
                cause: PoisonCause::Panicked,
                ..
            } => f.write_str("the previous holder panicked holding the lock"),
            Self::WouldBlock => f.write_str("the lock is held"),
            Self::TimedOut => f.write_str("timed out waiting for the lock"),
            Self::Deadlock(d) => write!(f, "{d}"),
        }
    }
}

impl<G> std::error::Error for LockError<G> {}

/// What acquiring returns.
pub type LockResult<G> = Result<G, LockError<G>>;

/// The shared state of a lock: its region and its raw mutex (plus the
/// waiters table the deadlock detector reads).
#[derive(Debug)]
pub(crate) struct LockCore {
    region: Region,
    reentrant: bool,
}

/// Body layout: the raw mutex, then the waiters table.
pub(crate) const LOCK_BODY: usize = 64 + deadlock::WAITERS_LEN;

impl LockCore {
    /// A new lock region of `kind`, with `extra` bytes after the lock
    /// (the state it guards, for `Value`, `Array`, `Condition`).
    pub(crate) fn new(
        kind: Kind,
        reentrant: bool,
        param: u64,
        extra: usize,
    ) -> io::Result<Arc<Self>> {
        if !super::robust::robust_supported() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "herd locks need the C library's robust-futex list (glibc on Linux)",
            ));
        }
        let core = Arc::new(Self {
            region: Region::create(
                kind,
                param,
                LOCK_BODY.checked_add(extra).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "shared object too large")
                })?,
            )?,
            reentrant,
        });
        deadlock::register(&core);
        Ok(core)
    }

    /// The bytes after the lock (64-byte aligned).
    pub(crate) fn extra(&self) -> *mut u8 {
        // SAFETY: the region's body is at least LOCK_BODY bytes.
        unsafe { self.region.body().add(LOCK_BODY) }
    }

    pub(crate) fn from_region(region: Region, reentrant: bool) -> Arc<Self> {
        let core = Arc::new(Self { region, reentrant });
        deadlock::register(&core);
        core
    }

    pub(crate) fn is_reentrant(&self) -> bool {
        self.reentrant
    }

    pub(crate) fn region(&self) -> &Region {
        &self.region
    }

    /// Releases one level held by this thread (a guard's drop).
    #[inline]
    pub(crate) fn release(&self) {
        self.raw().unlock(std::thread::panicking());
    }

    #[inline]
    pub(crate) fn raw(&self) -> &RawMutex {
        // SAFETY: the body starts 64-byte aligned with 64 bytes reserved for
        // the raw mutex, and lives as long as `self.region`.
        unsafe { RawMutex::at(self.region.body()) }
    }

    pub(crate) fn waiters(&self) -> &deadlock::Waiters {
        // SAFETY: the waiters table follows the raw mutex in the body.
        unsafe { deadlock::Waiters::at(self.region.body().add(64)) }
    }

    pub(crate) fn id(&self) -> u64 {
        self.region.id()
    }

    /// Acquires, mapping the raw outcome to the public one.
    #[inline(always)]
    pub(crate) fn acquire(
        self: &Arc<Self>,
        deadline: Option<Instant>,
        wait: bool,
    ) -> LockResult<()> {
        // The common case, a free word, without the deadlock detector's
        // entry and the full outcome mapping.
        match self.raw().try_free() {
            Some(Acquired::Clean) => Ok(()),
            Some(other) => self.report(Ok(other), wait),
            None => self.acquire_slow(deadline, wait),
        }
    }

    /// [`acquire`](Self::acquire) past a free word.
    #[inline(never)]
    fn acquire_slow(self: &Arc<Self>, deadline: Option<Instant>, wait: bool) -> LockResult<()> {
        let outcome = if wait {
            deadlock::wait_for(self, deadline)
        } else {
            self.raw().try_lock(self.reentrant)
        };
        self.report(outcome, wait)
    }

    /// The public outcome of a raw one.
    #[cold]
    fn report(&self, outcome: Result<Acquired, NotAcquired>, wait: bool) -> LockResult<()> {
        match outcome {
            Ok(Acquired::Clean | Acquired::Reentered) => Ok(()),
            Ok(Acquired::OwnerDied) => Err(LockError::Poisoned {
                guard: (),
                cause: PoisonCause::OwnerDied,
            }),
            Ok(Acquired::Poisoned) => Err(LockError::Poisoned {
                guard: (),
                cause: PoisonCause::Panicked,
            }),
            Err(NotAcquired::TimedOut) if !wait => Err(LockError::WouldBlock),
            Err(NotAcquired::TimedOut) => Err(LockError::TimedOut),
            Err(NotAcquired::SelfDeadlock) => {
                Err(LockError::Deadlock(Deadlock::self_deadlock(self.id())))
            }
            Err(NotAcquired::Deadlock) => Err(LockError::Deadlock(deadlock::last_cycle())),
        }
    }
}

macro_rules! lock_type {
    ($(#[$doc:meta])* $name:ident, $guard:ident, $kind:expr, $reentrant:expr) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name {
            core: Arc<LockCore>,
        }

        impl $name {
            /// A new, unlocked lock in shared memory.
            pub fn new() -> io::Result<Self> {
                Ok(Self { core: LockCore::new($kind, $reentrant, 0, 0)? })
            }

            /// Waits for the lock and takes it.
            #[inline(always)]
            pub fn acquire(&self) -> LockResult<$guard<'_>> {
                self.take(None, true)
            }

            /// Waits at most `timeout` for the lock.
            pub fn acquire_timeout(&self, timeout: Duration) -> LockResult<$guard<'_>> {
                self.take(Instant::now().checked_add(timeout), true)
            }

            /// Takes the lock if it is free now.
            pub fn try_acquire(&self) -> LockResult<$guard<'_>> {
                self.take(None, false)
            }

            /// [`acquire`](Self::acquire) for async code, on any runtime.
            /// The lock is taken on the polling thread (its guard is not
            /// `Send`: hold it across an `.await` only on a single-threaded
            /// executor, where other tasks then wait for it); it never
            /// re-enters, even an `RLock`. A dead holder is reported here as
            /// by `acquire`.
            /// Between attempts a helper watches the lock and wakes the
            /// task within about a millisecond of its release (see
            /// [`aio`](crate::aio)).
            pub fn acquire_async(&self) -> impl std::future::Future<Output = LockResult<$guard<'_>>> + '_ {
                let core = Arc::clone(&self.core);
                let mine = Arc::clone(&self.core);
                crate::aio::Retry::new(
                    move || {
                        // Held by this thread: on a single-threaded executor
                        // that is another task (or this one, re-entering), so
                        // wait like anyone else; never re-enter, never report
                        // a deadlock for a task that merely has to wait.
                        if mine.raw().owner() == crate::os::gettid() {
                            return std::task::Poll::Pending;
                        }
                        match self.try_acquire() {
                            Err(LockError::WouldBlock) => std::task::Poll::Pending,
                            r => std::task::Poll::Ready(r),
                        }
                    },
                    move |deadline| {
                        let free = || core.raw().owner() == 0;
                        if crate::backoff::poll_briefly(free) {
                            return true;
                        }
                        while Instant::now() < deadline {
                            if free() {
                                return true;
                            }
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        free()
                    },
                )
            }

            /// Whether some thread (in any process) holds it now.
            pub fn is_locked(&self) -> bool {
                self.core.raw().owner() != 0
            }

            #[inline(always)]
            fn take(&self, deadline: Option<Instant>, wait: bool) -> LockResult<$guard<'_>> {
                let guard = || $guard { lock: self, _not_send: PhantomData };
                self.core.acquire(deadline, wait).map(|()| guard()).map_err(|e| e.map_guard(|()| guard()))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("id", &self.core.id())
                    .field("locked", &self.is_locked())
                    .finish()
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.core.region().serialize(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let region = Region::deserialize(d, $kind, |_| Some(LOCK_BODY))?;
                Ok(Self { core: LockCore::from_region(region, $reentrant) })
            }
        }

        /// Holds the lock; dropping it releases it (one level, for `RLock`).
        /// Dropped while panicking, it marks the lock poisoned for the next
        /// acquirer. Not `Send`: the lock belongs to the thread that took it.
        #[must_use = "the lock is released as soon as the guard is dropped"]
        pub struct $guard<'a> {
            lock: &'a $name,
            _not_send: PhantomData<*const ()>,
        }

        impl Drop for $guard<'_> {
            #[inline]
            fn drop(&mut self) {
                self.lock.core.release();
            }
        }

        impl fmt::Debug for $guard<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($guard)).field("lock", &self.lock.core.id()).finish()
            }
        }
    };
}

lock_type!(
    /// A lock shared by threads and processes: Python's
    /// `multiprocessing.Lock`, robust and with an RAII guard.
    ///
    /// If its holder dies holding it — SIGKILL, a crash, `exit`, a panic —
    /// the next acquirer gets [`LockError::Poisoned`] (and the lock), at once
    /// rather than never. Acquiring a `Lock` the calling thread already holds
    /// is [`LockError::Deadlock`], not a hang. A guard held across a raw
    /// `fork()` belongs to the parent: the forked child must not drop it.
    ///
    /// ```
    /// use herd::sync::Lock;
    ///
    /// #[herd::task]
    /// fn hold_and_die(lock: Lock) {
    ///     let _guard = lock.acquire().unwrap();
    ///     std::process::exit(0); // dies holding the lock
    /// }
    ///
    /// fn main() {
    ///     herd::init();
    ///     let lock = Lock::new().unwrap();
    ///     herd::spawn(hold_and_die, (lock.clone(),)).unwrap().join().unwrap_err();
    ///     match lock.acquire() {
    ///         Err(herd::sync::LockError::Poisoned { cause, .. }) => {
    ///             assert_eq!(cause, herd::sync::PoisonCause::OwnerDied)
    ///         }
    ///         other => panic!("{other:?}"),
    ///     }
    ///     assert!(lock.acquire().is_ok()); // usable again
    /// }
    /// ```
    Lock,
    LockGuard,
    Kind::Lock,
    false
);

lock_type!(
    /// A re-entrant lock: its holder may acquire it again (each guard
    /// releases one level). Python's `multiprocessing.RLock`, robust like
    /// [`Lock`].
    ///
    /// ```
    /// # fn main() {
    /// herd::init();
    /// let lock = herd::sync::RLock::new().unwrap();
    /// let outer = lock.acquire().unwrap();
    /// let inner = lock.acquire().unwrap();
    /// drop(inner);
    /// assert!(lock.is_locked());
    /// drop(outer);
    /// assert!(!lock.is_locked());
    /// # }
    /// ```
    RLock,
    RLockGuard,
    Kind::RLock,
    true
);
