//! What a task's caller holds: [`AsyncResult`], and why a task produced no
//! value: [`TaskError`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::backoff::poll_briefly;

use crate::{PanicReport, Signal};

/// Why a pool task produced no value.
///
/// Every way a task can fail is one of these, and each is delivered to the
/// task's own [`AsyncResult`] (or its place in a `map`): a failure never
/// hangs the caller and never takes other tasks down with it.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskError {
    /// The task panicked.
    #[error("the task {0}")]
    Panicked(PanicReport),
    /// The worker process running the task was killed by a signal
    /// (SIGKILL, SIGSEGV, SIGABRT, the OOM killer, ...). The pool replaced it.
    #[error("worker process {pid} was killed by {signal} while running the task")]
    WorkerKilled {
        /// The worker's pid.
        pid: u32,
        /// The signal.
        signal: Signal,
    },
    /// The worker process exited while running the task (the task called
    /// `std::process::exit`, for instance). The pool replaced it.
    #[error("worker process {pid} exited with code {code} while running the task")]
    WorkerExited {
        /// The worker's pid.
        pid: u32,
        /// Its exit code.
        code: i32,
    },
    /// The task ran longer than its timeout. A process worker was killed
    /// with its process group and replaced; a thread worker was abandoned
    /// (see the [pool docs](crate::pool#timeouts-and-panics-on-the-thread-backend)).
    #[error("the task timed out after {0:?}")]
    TimedOut(Duration),
    /// The arguments could not be serialized (in the caller).
    #[error("the arguments could not be serialized: {0}")]
    ArgsEncode(String),
    /// The worker refused the task: its arguments did not deserialize there.
    #[error("the worker refused the task: {0}")]
    Refused(String),
    /// The task's result could not be serialized in the worker.
    #[error("the result could not be serialized: {0}")]
    ResultEncode(String),
    /// The task's result could not be deserialized in the caller.
    #[error("the result could not be deserialized: {0}")]
    ResultDecode(String),
    /// The function is not a registered task (`#[herd::task]`), which the
    /// process backend needs to find it in the worker.
    #[error("{0} is not a registered task: mark it #[herd::task]")]
    NotRegistered(&'static str),
    /// The pool was closed (or terminated) before the task was submitted.
    #[error("the pool is closed")]
    Closed,
    /// The pool was terminated before the task finished.
    #[error("the pool was terminated before the task finished")]
    Terminated,
    /// A worker's initializer failed, so the pool cannot run tasks.
    #[error("a worker's initializer failed: {0}")]
    Initializer(String),
    /// A worker could not be started.
    #[error("a worker could not be started: {0}")]
    WorkerStart(String),
    /// The pool broke down internally (a bug in herd): every unfinished
    /// task gets this, rather than hang.
    #[error("internal pool error: {0}")]
    Internal(String),
    /// [`AsyncResult::get_timeout`] gave up waiting; the task goes on and
    /// its result can still be collected.
    #[error("the result was not ready in time")]
    NotReady,
    /// The result was already taken from this [`AsyncResult`].
    #[error("the result was already taken")]
    AlreadyTaken,
}

/// The shared cell a worker fills and an [`AsyncResult`] reads.
pub(crate) struct Slot<R> {
    ready: AtomicBool,
    state: Mutex<SlotState<R>>,
    cv: Condvar,
}

struct SlotState<R> {
    value: Option<Result<R, TaskError>>,
    taken: bool,
    waker: Option<Waker>,
    /// Threads waiting on the condition variable.
    waiters: usize,
}

/// What an [`AsyncResult`] reads through: a [`Slot`] of its own, or a
/// thread task's cell that holds the slot beside the function and its
/// arguments (one allocation per task).
pub(crate) trait HasSlot<R>: Send + Sync {
    fn slot(&self) -> &Slot<R>;
}

impl<R: Send> HasSlot<R> for Slot<R> {
    fn slot(&self) -> &Slot<R> {
        self
    }
}

impl<R> Slot<R> {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::bare())
    }

    /// An empty slot, to embed.
    pub(crate) fn bare() -> Self {
        Self {
            ready: AtomicBool::new(false),
            state: Mutex::new(SlotState {
                value: None,
                taken: false,
                waker: None,
                waiters: 0,
            }),
            cv: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SlotState<R>> {
        // A panic while holding this lock cannot leave it inconsistent
        // (every update is a single assignment).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores the outcome (the first one wins) and wakes every waiter.
    pub(crate) fn fill(&self, value: Result<R, TaskError>) {
        let waker = {
            let mut st = self.lock();
            if st.value.is_some() || st.taken {
                return;
            }
            st.value = Some(value);
            self.ready.store(true, Ordering::Release);
            (st.waker.take(), st.waiters > 0)
        };
        let (waker, waiters) = waker;
        // std's notify makes a system call even with nobody waiting.
        if waiters {
            self.cv.notify_all();
        }
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Waits until filled or `deadline`; true when filled.
    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        if self.is_ready() {
            return true;
        }
        if poll_briefly(|| self.is_ready()) {
            return true;
        }
        let mut st = self.lock();
        st.waiters += 1;
        let done = loop {
            if st.value.is_some() || st.taken {
                break true;
            }
            match deadline {
                None => st = self.cv.wait(st).unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break false;
                    }
                    st = self
                        .cv
                        .wait_timeout(st, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        };
        st.waiters -= 1;
        done
    }

    fn take(&self) -> Result<R, TaskError> {
        let mut st = self.lock();
        match st.value.take() {
            Some(v) => {
                st.taken = true;
                v
            }
            None if st.taken => Err(TaskError::AlreadyTaken),
            None => Err(TaskError::NotReady),
        }
    }

    fn successful(&self) -> Option<bool> {
        let st = self.lock();
        st.value.as_ref().map(Result::is_ok)
    }
}

/// The pending result of a task submitted to a [`Pool`](crate::Pool):
/// Python's `AsyncResult`, and a [`Future`] for async code.
///
/// ```
/// #[herd::task]
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// fn main() {
///     herd::init();
///     let pool = herd::Pool::new(2).unwrap();
///     let r = pool.apply_async(square, (7,));
///     r.wait();
///     assert!(r.ready());
///     assert_eq!(r.successful(), Some(true));
///     assert_eq!(r.get().unwrap(), 49);
/// }
/// ```
pub struct AsyncResult<R> {
    holder: Arc<dyn HasSlot<R>>,
    id: u64,
}

impl<R> fmt::Debug for AsyncResult<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncResult")
            .field("id", &self.id)
            .field("ready", &self.ready())
            .finish()
    }
}

impl<R> AsyncResult<R> {
    pub(crate) fn new(slot: Arc<Slot<R>>, id: u64) -> Self
    where
        R: Send + 'static,
    {
        Self { holder: slot, id }
    }

    /// The result of a task whose slot lives in `holder`.
    pub(crate) fn held(holder: Arc<dyn HasSlot<R>>, id: u64) -> Self {
        Self { holder, id }
    }

    fn slot(&self) -> &Slot<R> {
        self.holder.slot()
    }

    /// The task's id, as it appears in the pool's [`TaskEvent`](crate::pool::TaskEvent)s
    /// (for a `map_async`, the id of its first chunk).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether the task has finished (successfully or not).
    pub fn ready(&self) -> bool {
        self.slot().is_ready()
    }

    /// `Some(true)` if the task finished with a value, `Some(false)` if it
    /// failed, `None` while it is not finished (where Python raises).
    pub fn successful(&self) -> Option<bool> {
        self.slot().successful()
    }

    /// Waits until the task has finished.
    pub fn wait(&self) {
        self.slot().wait_until(None);
    }

    /// Waits at most `timeout`; true if the task has finished.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.slot().wait_until(Instant::now().checked_add(timeout))
    }

    /// Waits for the task and returns its value or why there is none.
    pub fn get(self) -> Result<R, TaskError> {
        self.slot().wait_until(None);
        self.slot().take()
    }

    /// Waits at most `timeout` for the value. [`TaskError::NotReady`] when
    /// the task has not finished by then: the task goes on, and a later call
    /// can still collect it.
    pub fn get_timeout(&mut self, timeout: Duration) -> Result<R, TaskError> {
        if !self.slot().wait_until(Instant::now().checked_add(timeout)) {
            return Err(TaskError::NotReady);
        }
        self.slot().take()
    }
}

impl<R> Future for AsyncResult<R> {
    type Output = Result<R, TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = self.slot().lock();
        if let Some(v) = st.value.take() {
            st.taken = true;
            return Poll::Ready(v);
        }
        if st.taken {
            return Poll::Ready(Err(TaskError::AlreadyTaken));
        }
        match &mut st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            w => *w = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}
