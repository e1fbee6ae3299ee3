//! The thread backend: worker threads sharing one job list.
//!
//! A thread cannot be killed, so a task over its timeout is *abandoned*:
//! its result slot gets `TimedOut`, a replacement thread starts at once,
//! and the abandoned thread exits when its task returns.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::result::TaskError;
use super::{Completion, Events, Job, JobResult, PoolError, TaskEvent, Work};
use crate::PanicReport;
use crate::backoff::poll_briefly;

/// The thread backend's settings.
pub(crate) struct Config {
    pub(crate) size: usize,
    pub(crate) init: Option<Arc<dyn Fn() + Send + Sync>>,
    pub(crate) max_jobs: u64,
    pub(crate) events: Events,
}

/// Hashes the pool's own ids (job and thread numbers, unique and
/// sequential) as themselves: SipHash's protection against chosen keys is
/// not needed here and cost a measurable share of a tiny task.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        // Spread sequential ids over the table's buckets.
        self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A job a thread is running.
struct Running {
    done: Completion,
    deadline: Option<Instant>,
    timeout: Duration,
    thread: u64,
}

struct State {
    queue: VecDeque<Job>,
    running: HashMap<u64, Running, BuildHasherDefault<IdHasher>>,
    /// Threads that count towards the pool's size (not abandoned).
    threads: usize,
    abandoned: HashSet<u64, BuildHasherDefault<IdHasher>>,
    /// Threads waiting on `work`.
    sleepers: usize,
    /// Threads waiting on `changed` (in `join`).
    joiners: usize,
    next_thread: u64,
    outstanding: usize,
    closed: bool,
    terminated: bool,
    broken: Option<TaskError>,
    timer: bool,
    /// Completions to run once the lock is released.
    deferred: Vec<(Completion, JobResult)>,
}

struct Shared {
    state: Mutex<State>,
    /// Work arrived, or the pool is closing.
    work: Condvar,
    /// A job finished or a thread exited (for `join`).
    changed: Condvar,
    /// A job with a deadline started (for the timer thread).
    timer: Condvar,
    cfg: Config,
    pid: u32,
    /// The length of `queue`, readable without the lock.
    queued: AtomicUsize,
    /// Closed, terminated or broken: idle threads must look.
    stop: AtomicBool,
    /// Terminated: a job taken ahead may have been failed meanwhile.
    terminated: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Starts one worker thread (the caller counted it in `threads`).
fn start_thread(shared: &Arc<Shared>, st: &mut State) {
    let id = st.next_thread;
    st.next_thread += 1;
    let for_thread = Arc::clone(shared);
    let started = std::thread::Builder::new()
        .name(format!("herd-pool-thread-{id}"))
        .spawn(move || worker(&for_thread, id));
    if started.is_err() {
        st.threads = st.threads.saturating_sub(1);
        if st.threads == 0 {
            st.broken = Some(TaskError::WorkerStart(
                "no thread could be started".to_owned(),
            ));
            fail_queue(shared, st, |b| b);
        }
    }
}

/// Fails every queued job with the pool's broken error (or `Terminated`).
/// The completions run at the next [`release`], outside the lock.
fn fail_queue(shared: &Shared, st: &mut State, pick: impl Fn(TaskError) -> TaskError) {
    let error = pick(st.broken.clone().unwrap_or(TaskError::Terminated));
    let jobs: Vec<Job> = st.queue.drain(..).collect();
    shared.queued.store(0, Ordering::Release);
    shared.stop.store(true, Ordering::Release);
    for job in jobs {
        st.outstanding = st.outstanding.saturating_sub(1);
        let id = job.id;
        shared.cfg.events.emit(|| TaskEvent::Failed {
            id,
            worker_pid: None,
            error: error.clone(),
        });
        st.deferred
            .push((job.done, JobResult::Failed(error.clone())));
    }
}

/// Unlocks, then runs the completions deferred under the lock (they run
/// the caller's code: wakers, `Drop`s).
fn release(st: MutexGuard<'_, State>) {
    let mut st = st;
    let deferred = std::mem::take(&mut st.deferred);
    drop(st);
    for (done, result) in deferred {
        done.call(result);
    }
}

/// A job taken from the queue and registered as running (its completion
/// is in `State::running`).
struct Taken {
    id: u64,
    items: usize,
    work: Work,
    /// Whether it has a deadline (the timer must look again).
    timed: bool,
}

/// Registers `job` as running on thread `me` (under the lock).
fn take(shared: &Arc<Shared>, st: &mut State, job: Job, me: u64) -> Taken {
    let Job {
        id,
        items,
        work,
        timeout,
        done,
    } = job;
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    st.running.insert(
        id,
        Running {
            done,
            deadline,
            timeout: timeout.unwrap_or_default(),
            thread: me,
        },
    );
    if deadline.is_some() && !st.timer {
        st.timer = true;
        let for_timer = Arc::clone(shared);
        if std::thread::Builder::new()
            .name("herd-pool-timer".to_owned())
            .spawn(move || timer(&for_timer))
            .is_err()
        {
            st.timer = false;
        }
    }
    Taken {
        id,
        items,
        work,
        timed: deadline.is_some(),
    }
}

fn worker(shared: &Arc<Shared>, me: u64) {
    if let Some(init) = &shared.cfg.init
        && let Err(p) = catch_unwind(AssertUnwindSafe(|| init()))
    {
        let report = PanicReport::from_payload(&*p);
        let mut st = shared.lock();
        st.broken = Some(TaskError::Initializer(report.to_string()));
        st.threads = st.threads.saturating_sub(1);
        fail_queue(shared, &mut st, |b| b);
        release(st);
        shared.changed.notify_all();
        shared.work.notify_all();
        return;
    }
    let mut jobs = 0u64;
    // The next job, taken while finishing the last one (one trip through
    // the lock for both when the queue is busy).
    let mut next: Option<Taken> = None;
    loop {
        let taken = match next.take() {
            // Taken ahead, while the last job was finishing: since then
            // the pool may have terminated, or the timer may have timed it
            // out, failing it and abandoning this thread. Then it must not
            // run (it was reported failed; no side effects after that).
            Some(t) if t.timed || shared.terminated.load(Ordering::Acquire) => {
                let mut st = shared.lock();
                if st.running.contains_key(&t.id) {
                    release(st);
                    t
                } else {
                    st.abandoned.remove(&me);
                    let joiners = st.joiners > 0;
                    release(st);
                    drop(t);
                    if joiners {
                        shared.changed.notify_all();
                    }
                    return;
                }
            }
            Some(t) => t,
            None => {
                // Work usually arrives within microseconds of the last job:
                // look before sleeping, so the submitter need not wake this
                // thread.
                poll_briefly(|| {
                    shared.queued.load(Ordering::Acquire) != 0
                        || shared.stop.load(Ordering::Acquire)
                });
                let mut st = shared.lock();
                let job = loop {
                    if st.terminated || st.broken.is_some() {
                        break None;
                    }
                    if let Some(job) = st.queue.pop_front() {
                        shared.queued.store(st.queue.len(), Ordering::Release);
                        break Some(job);
                    }
                    if st.closed {
                        break None;
                    }
                    st.sleepers += 1;
                    st = shared.work.wait(st).unwrap_or_else(PoisonError::into_inner);
                    st.sleepers -= 1;
                };
                let Some(job) = job else {
                    st.threads = st.threads.saturating_sub(1);
                    release(st);
                    shared.changed.notify_all();
                    return;
                };
                let taken = take(shared, &mut st, job, me);
                release(st);
                if taken.timed {
                    shared.timer.notify_all();
                }
                taken
            }
        };
        let Taken {
            id, items, work, ..
        } = taken;
        shared.cfg.events.emit(|| TaskEvent::Started {
            id,
            worker_pid: shared.pid,
        });
        let result = match work {
            Work::Local(run) => match catch_unwind(AssertUnwindSafe(run)) {
                Ok((values, failed)) => JobResult::Local {
                    values,
                    items,
                    failed,
                },
                Err(p) => JobResult::Failed(TaskError::Panicked(PanicReport::from_payload(&*p))),
            },
            Work::Task(task) => JobResult::Local {
                values: Box::new(()),
                items,
                failed: usize::from(task.run()),
            },
            Work::Encoded { .. } | Work::Wire(_) => JobResult::Failed(TaskError::Refused(
                "internal: a process job reached a thread pool".to_owned(),
            )),
        };
        let mut st = shared.lock();
        let running = st.running.remove(&id);
        if running.is_some() {
            st.outstanding = st.outstanding.saturating_sub(1);
        }
        let abandoned = !st.abandoned.is_empty() && st.abandoned.remove(&me);
        jobs += 1;
        let retire = !abandoned && shared.cfg.max_jobs != 0 && jobs >= shared.cfg.max_jobs;
        if retire {
            // Replace this thread (fresh thread-locals) and leave.
            start_thread(shared, &mut st);
        }
        let mut timed = false;
        if !abandoned
            && !retire
            && !st.terminated
            && st.broken.is_none()
            && let Some(job) = st.queue.pop_front()
        {
            shared.queued.store(st.queue.len(), Ordering::Release);
            let taken = take(shared, &mut st, job, me);
            timed = taken.timed;
            next = Some(taken);
        }
        // std's notify makes a system call even with nobody waiting.
        let joiners = st.joiners > 0;
        release(st);
        if timed {
            shared.timer.notify_all();
        }
        if let Some(r) = running {
            shared.cfg.events.finished(id, shared.pid, &result);
            r.done.call(result);
        }
        if joiners {
            shared.changed.notify_all();
        }
        if abandoned || retire {
            return;
        }
    }
}

/// Fails tasks past their deadline and replaces their threads.
fn timer(shared: &Arc<Shared>) {
    let mut st = shared.lock();
    loop {
        if st.terminated || (st.closed && st.outstanding == 0) {
            st.timer = false;
            release(st);
            return;
        }
        let now = Instant::now();
        let expired: Vec<u64> = st
            .running
            .iter()
            .filter(|(_, r)| r.deadline.is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        if !expired.is_empty() {
            let mut fired = Vec::new();
            for id in expired {
                if let Some(r) = st.running.remove(&id) {
                    st.outstanding = st.outstanding.saturating_sub(1);
                    st.abandoned.insert(r.thread);
                    // The abandoned thread no longer counts; its replacement does.
                    start_thread(shared, &mut st);
                    fired.push((id, r));
                }
            }
            release(st);
            for (id, r) in fired {
                let error = TaskError::TimedOut(r.timeout);
                shared.cfg.events.emit(|| TaskEvent::Failed {
                    id,
                    worker_pid: Some(shared.pid),
                    error: error.clone(),
                });
                r.done.call(JobResult::Failed(error));
            }
            shared.changed.notify_all();
            st = shared.lock();
            continue;
        }
        let next = st.running.values().filter_map(|r| r.deadline).min();
        let wait = next.map_or(Duration::from_millis(100), |d| {
            d.saturating_duration_since(now)
        });
        st = shared
            .timer
            .wait_timeout(st, wait)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

/// The thread backend.
pub(crate) struct Engine {
    shared: Arc<Shared>,
}

impl Engine {
    pub(crate) fn new(cfg: Config) -> Self {
        let size = cfg.size;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                running: HashMap::default(),
                threads: size,
                abandoned: HashSet::default(),
                sleepers: 0,
                joiners: 0,
                next_thread: 0,
                outstanding: 0,
                closed: false,
                terminated: false,
                broken: None,
                timer: false,
                deferred: Vec::new(),
            }),
            work: Condvar::new(),
            changed: Condvar::new(),
            timer: Condvar::new(),
            cfg,
            pid: std::process::id(),
            queued: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            terminated: AtomicBool::new(false),
        });
        {
            let mut st = shared.lock();
            for _ in 0..size {
                start_thread(&shared, &mut st);
            }
            release(st);
        }
        Self { shared }
    }

    pub(crate) fn submit(&self, job: Job) {
        let shared = &self.shared;
        let mut st = shared.lock();
        let id = job.id;
        shared.cfg.events.emit(|| TaskEvent::Submitted {
            id,
            items: job.items,
        });
        let refused = if st.closed {
            Some(TaskError::Closed)
        } else {
            st.broken.clone()
        };
        if let Some(error) = refused {
            release(st);
            shared.cfg.events.emit(|| TaskEvent::Failed {
                id,
                worker_pid: None,
                error: error.clone(),
            });
            job.done.call(JobResult::Failed(error));
            return;
        }
        st.outstanding += 1;
        st.queue.push_back(job);
        shared.queued.store(st.queue.len(), Ordering::Release);
        // A sleeper counts itself under the lock before it waits, so with
        // none counted nobody can miss this job, and no wake-up call is made.
        let wake = st.sleepers > 0;
        release(st);
        if wake {
            shared.work.notify_one();
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }

    pub(crate) fn close(&self) {
        self.shared.lock().closed = true;
        self.shared.stop.store(true, Ordering::Release);
        self.shared.work.notify_all();
        self.shared.timer.notify_all();
    }

    pub(crate) fn join(&self, deadline: Option<Instant>) -> Result<(), PoolError> {
        let mut st = self.shared.lock();
        if !st.closed {
            return Err(PoolError::NotClosed);
        }
        st.joiners += 1;
        let r = self.join_locked(st, deadline);
        self.shared.lock().joiners -= 1;
        r
    }

    fn join_locked(
        &self,
        st: MutexGuard<'_, State>,
        deadline: Option<Instant>,
    ) -> Result<(), PoolError> {
        let done = |st: &State| st.threads == 0 && (st.outstanding == 0 || st.terminated);
        if super::wait_for(&self.shared.changed, st, deadline, done) {
            Ok(())
        } else {
            Err(PoolError::Timeout)
        }
    }

    pub(crate) fn terminate(&self) {
        let shared = &self.shared;
        let mut st = shared.lock();
        if st.terminated {
            return;
        }
        st.terminated = true;
        st.closed = true;
        shared.stop.store(true, Ordering::Release);
        shared.terminated.store(true, Ordering::Release);
        fail_queue(shared, &mut st, |_| TaskError::Terminated);
        let running: Vec<(u64, Running)> = st.running.drain().collect();
        for (_, r) in &running {
            st.abandoned.insert(r.thread);
            st.threads = st.threads.saturating_sub(1);
        }
        st.outstanding = 0;
        release(st);
        for (id, r) in running {
            shared.cfg.events.emit(|| TaskEvent::Failed {
                id,
                worker_pid: Some(shared.pid),
                error: TaskError::Terminated,
            });
            r.done.call(JobResult::Failed(TaskError::Terminated));
        }
        shared.work.notify_all();
        shared.timer.notify_all();
        shared.changed.notify_all();
    }
}
