//! Futures for herd's blocking operations, on any async runtime.
//!
//! herd's waits are futexes in shared memory and pidfds, which no runtime's
//! reactor knows. So each future here does the operation itself,
//! non-blocking, on the task's own thread when polled; when it cannot
//! complete yet, a helper thread *waits for readiness* (the queue has an
//! item, the lock looks free, the child wrote or exited) without taking
//! anything, and wakes the task, which tries again. Nothing is ever taken
//! on the helper's behalf, so dropping a future at any point loses nothing
//! (cancel-safe), a lock's guard belongs to the task's own thread, and a
//! dead holder's "owner died" report goes to the task, not to a helper.
//!
//! Helper threads come from a small elastic set shared by the process:
//! started on demand, reused, and gone after ten idle seconds. A dropped
//! future's helper notices within 25 ms and returns to the set. Each
//! pending wait holds one helper: this suits tens to hundreds of concurrent
//! waits on herd objects, not tens of thousands (an async runtime's own
//! timers and sockets, which coroutines use for IO, are unaffected). A loop
//! that keeps dropping a wait and starting a new one (a `select!` against a
//! 1 ms timer) keeps up to one helper per 1 ms busy for those 25 ms.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How long a helper waits before it checks whether its future is gone.
const SLICE: Duration = Duration::from_millis(25);
/// How long an idle helper thread stays.
const IDLE: Duration = Duration::from_secs(10);

type Job = Box<dyn FnOnce() + Send>;

struct Helpers {
    jobs: VecDeque<Job>,
    idle: usize,
}

static HELPERS: Mutex<Helpers> = Mutex::new(Helpers {
    jobs: VecDeque::new(),
    idle: 0,
});
static WORK: Condvar = Condvar::new();

/// Runs `job` on a helper thread; false if no thread could be started (the
/// job then waits for a later helper).
fn unblock(job: Job) -> bool {
    let mut h = HELPERS.lock().unwrap_or_else(PoisonError::into_inner);
    h.jobs.push_back(job);
    // Every queued job needs a helper of its own (a wait may last long):
    // start one unless enough are idle.
    if h.jobs.len() <= h.idle {
        drop(h);
        WORK.notify_one();
        return true;
    }
    drop(h);
    let started = std::thread::Builder::new()
        .name("herd-async-helper".to_owned())
        .spawn(helper);
    // On failure the job stays queued for a later helper; the caller
    // cancels it and retries without one.
    started.is_ok()
}

fn helper() {
    let mut h = HELPERS.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        if let Some(job) = h.jobs.pop_front() {
            drop(h);
            job();
            h = HELPERS.lock().unwrap_or_else(PoisonError::into_inner);
            continue;
        }
        h.idle += 1;
        let (next, timeout) = WORK
            .wait_timeout(h, IDLE)
            .unwrap_or_else(PoisonError::into_inner);
        h = next;
        h.idle -= 1;
        if timeout.timed_out() && h.jobs.is_empty() {
            return;
        }
    }
}

/// One pending wait: the task's waker, and whether the wait ended.
struct Pending {
    waker: Mutex<(Option<Waker>, bool)>,
    cancelled: AtomicBool,
}

/// A future that retries `attempt` on the polling thread and, between
/// attempts, has a helper run `wait` (blocking, up to a deadline; true when
/// the operation may now succeed).
pub(crate) struct Retry<A, W> {
    attempt: A,
    wait: Arc<W>,
    pending: Option<Arc<Pending>>,
}

impl<A, W> Retry<A, W> {
    pub(crate) fn new(attempt: A, wait: W) -> Self {
        Self {
            attempt,
            wait: Arc::new(wait),
            pending: None,
        }
    }
}

// The attempt is only ever called through `&mut`, never pinned: moving a
// `Retry` is fine whatever it holds.
impl<A, W> Unpin for Retry<A, W> {}

impl<A, W> Drop for Retry<A, W> {
    fn drop(&mut self) {
        if let Some(p) = &self.pending {
            p.cancelled.store(true, Ordering::Release);
        }
    }
}

impl<T, A, W> Future for Retry<A, W>
where
    A: FnMut() -> Poll<T>,
    W: Fn(Instant) -> bool + Send + Sync + 'static,
{
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = self.get_mut();
        if let Some(p) = &this.pending {
            let mut w = p.waker.lock().unwrap_or_else(PoisonError::into_inner);
            if !w.1 {
                // Still waiting: keep the newest waker.
                match &mut w.0 {
                    Some(old) if old.will_wake(cx.waker()) => {}
                    slot => *slot = Some(cx.waker().clone()),
                }
                return Poll::Pending;
            }
            drop(w);
            this.pending = None;
        }
        if let Poll::Ready(v) = (this.attempt)() {
            return Poll::Ready(v);
        }
        let pending = Arc::new(Pending {
            waker: Mutex::new((Some(cx.waker().clone()), false)),
            cancelled: AtomicBool::new(false),
        });
        this.pending = Some(Arc::clone(&pending));
        let wait = Arc::clone(&this.wait);
        let helped = unblock(Box::new(move || {
            loop {
                if pending.cancelled.load(Ordering::Acquire) {
                    return;
                }
                if wait(Instant::now() + SLICE) {
                    break;
                }
            }
            let waker = {
                let mut w = pending.waker.lock().unwrap_or_else(PoisonError::into_inner);
                w.1 = true;
                w.0.take()
            };
            if let Some(w) = waker {
                w.wake();
            }
        }));
        if !helped {
            // No thread to wait on: try again at the executor's next turn
            // (busy, but never blocked and never lost).
            if let Some(p) = this.pending.take() {
                p.cancelled.store(true, Ordering::Release);
            }
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}
