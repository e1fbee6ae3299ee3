//! The thread backend: worker threads taking jobs from one channel.
//!
//! The hot path takes no pool-wide lock: a submitter sends the job on a
//! crossbeam channel (lock-free, and it parks and wakes idle workers
//! itself); a worker receives it and records it in its own [`Cell`], where
//! the timer and `terminate` can find and fail it. The pool's `State` mutex
//! is only for what is rare: threads starting and leaving, closing,
//! terminating, a broken initializer, the timer.
//!
//! A thread cannot be killed, so a task over its timeout is *abandoned*:
//! its result gets `TimedOut`, a replacement thread starts at once, and the
//! abandoned thread exits when its task returns.
//!
//! Every job sent is completed exactly once: by the worker that ran it;
//! by the timer or `terminate`, which take it out of the worker's cell
//! (the worker then finds the cell empty and drops its result); or, once
//! the pool is halted (terminated, or broken by a failed initializer),
//! failed by whoever receives it — `terminate` draining the channel, or a
//! worker that looks at the halt flag after receiving.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::result::TaskError;
use super::{Completion, Events, Job, JobResult, PoolError, TaskEvent, Work};
use crate::PanicReport;

/// The thread backend's settings.
pub(crate) struct Config {
    pub(crate) size: usize,
    pub(crate) init: Option<Arc<dyn Fn() + Send + Sync>>,
    pub(crate) max_jobs: u64,
    pub(crate) events: Events,
}

/// A job a thread is running.
struct Running {
    id: u64,
    done: Completion,
    deadline: Option<Instant>,
    timeout: Duration,
}

/// One worker thread's job in progress.
#[derive(Default)]
struct Cell {
    running: Mutex<Option<Running>>,
    /// The timer or `terminate` took its job: the thread leaves after it
    /// (it no longer counts towards the pool's size).
    abandoned: AtomicBool,
}

impl Cell {
    fn lock(&self) -> MutexGuard<'_, Option<Running>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct State {
    /// Threads that count towards the pool's size (not abandoned).
    threads: usize,
    /// Every live thread's cell, by thread number (abandoned ones too,
    /// until they leave).
    cells: Vec<(u64, Arc<Cell>)>,
    next_thread: u64,
    closed: bool,
    terminated: bool,
    broken: Option<TaskError>,
    timer: bool,
    /// Jobs taken by the timer or `terminate` whose completions have not
    /// run yet (for `join`).
    completing: usize,
}

struct Shared {
    state: Mutex<State>,
    /// A thread left (for `join`).
    changed: Condvar,
    /// A job with a deadline started, or the pool closed (for the timer).
    timer: Condvar,
    /// The jobs' way in; `None` once closed, so the workers see the end of
    /// the channel when it is empty.
    tx: RwLock<Option<Sender<Job>>>,
    rx: Receiver<Job>,
    cfg: Config,
    pid: u32,
    /// Terminated or broken: a received job is failed, not run.
    halted: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Why a job cannot run on a halted pool.
    fn halt_error(&self) -> TaskError {
        let st = self.lock();
        if st.terminated {
            TaskError::Terminated
        } else {
            st.broken.clone().unwrap_or(TaskError::Terminated)
        }
    }

    /// Completes a job that will not run, with `error`.
    fn fail(&self, id: u64, done: Completion, error: TaskError) {
        self.cfg.events.emit(|| TaskEvent::Failed {
            id,
            worker_pid: None,
            error: error.clone(),
        });
        complete(done, JobResult::Failed(error));
    }

    /// Closes the way in (under `st`, so no submitter sends after it).
    fn close_channel(&self) {
        *self.tx.write().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Fails every job still in the channel.
    fn drain(&self, error: &TaskError) {
        while let Ok(job) = self.rx.try_recv() {
            self.fail(job.id, job.done, error.clone());
        }
    }
}

/// Runs a job's completion. It fills a result slot, whose waker is the
/// caller's code and may panic: that must not unwind through a worker (a
/// dead worker that still counts), the timer or `terminate`.
fn complete(done: Completion, result: JobResult) {
    let _ = catch_unwind(AssertUnwindSafe(move || done.call(result)));
}

/// Starts one worker thread (the caller counted it in `threads`).
fn start_thread(shared: &Arc<Shared>, st: &mut State) {
    let id = st.next_thread;
    st.next_thread += 1;
    let cell = Arc::new(Cell::default());
    st.cells.push((id, Arc::clone(&cell)));
    let for_thread = Arc::clone(shared);
    let started = std::thread::Builder::new()
        .name(format!("herd-pool-thread-{id}"))
        .spawn(move || worker(&for_thread, id, &cell));
    if started.is_err() {
        st.cells.retain(|(t, _)| *t != id);
        st.threads = st.threads.saturating_sub(1);
        if st.threads == 0 && st.broken.is_none() {
            st.broken = Some(TaskError::WorkerStart(
                "no thread could be started".to_owned(),
            ));
            shared.halted.store(true, Ordering::SeqCst);
            shared.close_channel();
        }
    }
}

/// After [`start_thread`] (outside the lock): if no thread could be
/// started, nobody would ever receive the queued jobs; fail them.
fn drain_if_halted(shared: &Shared) {
    if shared.halted.load(Ordering::SeqCst) {
        let error = shared.halt_error();
        shared.drain(&error);
    }
}

/// The pool cannot run tasks (an initializer failed): refuse new jobs and
/// fail the queued ones.
fn break_pool(shared: &Shared, error: TaskError) {
    {
        let mut st = shared.lock();
        st.broken.get_or_insert(error);
        shared.halted.store(true, Ordering::SeqCst);
        shared.close_channel();
    }
    let error = shared.halt_error();
    shared.drain(&error);
}

/// A thread leaves: it no longer counts (unless it was abandoned, which
/// already uncounted it) and its cell goes.
fn leave(shared: &Shared, me: u64, counted: bool) {
    let mut st = shared.lock();
    if counted {
        st.threads = st.threads.saturating_sub(1);
    }
    st.cells.retain(|(t, _)| *t != me);
    drop(st);
    shared.changed.notify_all();
    shared.timer.notify_all();
}

fn worker(shared: &Arc<Shared>, me: u64, cell: &Cell) {
    if let Some(init) = &shared.cfg.init
        && let Err(p) = catch_unwind(AssertUnwindSafe(|| init()))
    {
        let report = PanicReport::from_payload(&*p);
        break_pool(shared, TaskError::Initializer(report.to_string()));
        leave(shared, me, true);
        return;
    }
    let mut jobs = 0u64;
    // Ends when the pool is closed (or halted) and the channel is empty.
    while let Ok(job) = shared.rx.recv() {
        let Job {
            id,
            items,
            work,
            timeout,
            done,
        } = job;
        if shared.halted.load(Ordering::SeqCst) {
            shared.fail(id, done, shared.halt_error());
            continue;
        }
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        {
            let mut running = cell.lock();
            // Under the cell's lock, which `terminate` takes after it sets
            // the flag: either it sees this job here, or this sees the flag.
            if shared.halted.load(Ordering::SeqCst) {
                drop(running);
                shared.fail(id, done, shared.halt_error());
                continue;
            }
            *running = Some(Running {
                id,
                done,
                deadline,
                timeout: timeout.unwrap_or_default(),
            });
        }
        if deadline.is_some() && !watch_deadline(shared) {
            // No timer can enforce the deadline: fail the job before it runs.
            if let Some(r) = cell.lock().take() {
                shared.fail(
                    id,
                    r.done,
                    TaskError::WorkerStart(
                        "the pool's timer thread could not be started".to_owned(),
                    ),
                );
                continue;
            }
        }
        shared.cfg.events.emit(|| TaskEvent::Started {
            id,
            worker_pid: shared.pid,
        });
        let result = match work {
            Work::Task(task) => JobResult::Local {
                values: Box::new(()),
                items,
                failed: usize::from(task.run()),
            },
            Work::Local(run) => match catch_unwind(AssertUnwindSafe(run)) {
                Ok((values, failed)) => JobResult::Local {
                    values,
                    items,
                    failed,
                },
                Err(p) => JobResult::Failed(TaskError::Panicked(PanicReport::from_payload(&*p))),
            },
            Work::Encoded { .. } | Work::Wire(_) => JobResult::Failed(TaskError::Refused(
                "internal: a process job reached a thread pool".to_owned(),
            )),
        };
        // Still ours unless the timer or `terminate` completed it (and
        // abandoned this thread).
        let mine = cell.lock().take();
        if let Some(r) = mine {
            shared.cfg.events.finished(id, shared.pid, &result);
            complete(r.done, result);
        }
        if cell.abandoned.load(Ordering::SeqCst) {
            leave(shared, me, false);
            return;
        }
        jobs += 1;
        if shared.cfg.max_jobs != 0 && jobs >= shared.cfg.max_jobs {
            // Replace this thread (fresh thread-locals) and leave; the
            // replacement takes over this one's place in the count.
            let mut st = shared.lock();
            let counted = st.terminated;
            if !st.terminated {
                start_thread(shared, &mut st);
            }
            drop(st);
            drain_if_halted(shared);
            leave(shared, me, counted);
            return;
        }
    }
    leave(shared, me, true);
}

/// A job with a deadline started: make sure the timer runs and looks.
#[cold]
fn watch_deadline(shared: &Arc<Shared>) -> bool {
    let mut st = shared.lock();
    if !st.timer {
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
    // Notified under the lock the timer holds from its scan to its wait,
    // so the wake cannot fall between them.
    shared.timer.notify_all();
    st.timer
}

/// Fails tasks past their deadline and replaces their threads.
fn timer(shared: &Arc<Shared>) {
    let mut st = shared.lock();
    loop {
        if st.terminated || (st.closed && st.threads == 0) {
            st.timer = false;
            return;
        }
        let now = Instant::now();
        let mut fired = Vec::new();
        let mut next: Option<Instant> = None;
        for (_, cell) in &st.cells {
            let mut running = cell.lock();
            match running.as_ref().and_then(|r| r.deadline) {
                Some(d) if d <= now => {
                    cell.abandoned.store(true, Ordering::SeqCst);
                    fired.extend(running.take());
                }
                Some(d) => next = Some(next.map_or(d, |n| n.min(d))),
                None => {}
            }
        }
        if !fired.is_empty() {
            st.completing += fired.len();
            let n = fired.len();
            for _ in &fired {
                // The abandoned thread no longer counts; its replacement
                // does (after `close` too: jobs may still be queued).
                start_thread(shared, &mut st);
            }
            drop(st);
            drain_if_halted(shared);
            for r in fired {
                let error = TaskError::TimedOut(r.timeout);
                shared.cfg.events.emit(|| TaskEvent::Failed {
                    id: r.id,
                    worker_pid: Some(shared.pid),
                    error: error.clone(),
                });
                complete(r.done, JobResult::Failed(error));
            }
            st = shared.lock();
            st.completing -= n;
            shared.changed.notify_all();
            continue;
        }
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
        let (tx, rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                threads: size,
                cells: Vec::with_capacity(size),
                next_thread: 0,
                closed: false,
                terminated: false,
                broken: None,
                timer: false,
                completing: 0,
            }),
            changed: Condvar::new(),
            timer: Condvar::new(),
            tx: RwLock::new(Some(tx)),
            rx,
            cfg,
            pid: std::process::id(),
            halted: AtomicBool::new(false),
        });
        {
            let mut st = shared.lock();
            for _ in 0..size {
                start_thread(&shared, &mut st);
            }
        }
        drain_if_halted(&shared);
        Self { shared }
    }

    pub(crate) fn submit(&self, job: Job) {
        let shared = &self.shared;
        let id = job.id;
        shared.cfg.events.emit(|| TaskEvent::Submitted {
            id,
            items: job.items,
        });
        let refused = {
            let tx = shared.tx.read().unwrap_or_else(PoisonError::into_inner);
            match &*tx {
                // The pool holds a receiver, so a send cannot fail.
                Some(tx) => tx.send(job).err().map(|e| e.0),
                None => Some(job),
            }
        };
        let Some(job) = refused else { return };
        let error = {
            let st = shared.lock();
            if st.closed {
                TaskError::Closed
            } else {
                st.broken.clone().unwrap_or(TaskError::Closed)
            }
        };
        shared.fail(id, job.done, error);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }

    pub(crate) fn close(&self) {
        {
            let mut st = self.shared.lock();
            st.closed = true;
            self.shared.close_channel();
        }
        self.shared.timer.notify_all();
    }

    pub(crate) fn join(&self, deadline: Option<Instant>) -> Result<(), PoolError> {
        let st = self.shared.lock();
        if !st.closed {
            return Err(PoolError::NotClosed);
        }
        // Every job sent is completed before the last counted thread
        // leaves (a closed channel ends only when empty), or was failed
        // by the timer or `terminate` already.
        if super::wait_for(&self.shared.changed, st, deadline, |st| {
            st.threads == 0 && st.completing == 0
        }) {
            Ok(())
        } else {
            Err(PoolError::Timeout)
        }
    }

    pub(crate) fn terminate(&self) {
        let shared = &self.shared;
        let mut taken = Vec::new();
        {
            let mut st = shared.lock();
            if st.terminated {
                return;
            }
            st.terminated = true;
            st.closed = true;
            shared.halted.store(true, Ordering::SeqCst);
            shared.close_channel();
            let mut abandoned = 0;
            for (_, cell) in &st.cells {
                if let Some(r) = cell.lock().take() {
                    cell.abandoned.store(true, Ordering::SeqCst);
                    abandoned += 1;
                    taken.push(r);
                }
            }
            st.threads = st.threads.saturating_sub(abandoned);
            st.completing += taken.len();
        }
        let n = taken.len();
        shared.drain(&TaskError::Terminated);
        for r in taken {
            shared.cfg.events.emit(|| TaskEvent::Failed {
                id: r.id,
                worker_pid: Some(shared.pid),
                error: TaskError::Terminated,
            });
            complete(r.done, JobResult::Failed(TaskError::Terminated));
        }
        shared.lock().completing -= n;
        shared.timer.notify_all();
        shared.changed.notify_all();
    }
}
