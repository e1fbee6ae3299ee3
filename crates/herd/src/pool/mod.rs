//! [`Pool`]: Python's `multiprocessing.Pool` API over worker processes or
//! threads, without its hangs.
//!
//! ```
//! #[herd::task]
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! fn main() {
//!     herd::init();
//!     let pool = herd::Pool::new(2).unwrap();
//!     assert_eq!(pool.map(square, 1..=4).unwrap(), vec![1, 4, 9, 16]);
//!     let r = pool.apply_async(square, (5,));
//!     assert_eq!(r.get().unwrap(), 25);
//!     pool.close();
//!     pool.join().unwrap();
//! }
//! ```
//!
//! One API, two backends ([`Backend::Processes`], the default, and
//! [`Backend::Threads`]); the task is the same `#[herd::task]` function
//! either way. The default size is the number of CPUs.
//!
//! # What happens when a task fails
//!
//! Each failure reaches the one task it concerns, as a [`TaskError`]:
//!
//! * a panic → [`TaskError::Panicked`] with message, location and
//!   backtrace; the worker goes on;
//! * a worker process killed while running the task (SIGKILL, a segfault,
//!   `abort`, the OOM killer) → [`TaskError::WorkerKilled`] naming the
//!   signal, within milliseconds (the pool watches every worker's pidfd);
//!   the worker is replaced and the tasks that were queued for it run
//!   elsewhere. A worker killed while idle is replaced and nothing fails;
//! * a task over its timeout ([`PoolBuilder::task_timeout`],
//!   [`Pool::apply_async_timeout`]) → [`TaskError::TimedOut`]; its worker
//!   is killed with its process group and replaced, so nothing stays pinned;
//! * a result that does not serialize → [`TaskError::ResultEncode`];
//! * [`Pool::terminate`] → [`TaskError::Terminated`] for everything
//!   unfinished. `terminate` always returns.
//!
//! A task that a worker had taken when it died is never run again
//! (at-most-once, as in Python); tasks it had not taken yet are.
//!
//! # Chunks
//!
//! `map`, `starmap` and `imap` send items in chunks, one message per chunk.
//! The automatic chunk size is Python's: the item count divided by four
//! times the pool size, rounded up — for tiny tasks this is what makes a
//! pool fast. A chunk is one task for timeouts, `max_tasks_per_child` and
//! crashes: a worker killed mid-chunk fails the items of that chunk.
//! `*_chunked` variants take an explicit size; `imap` defaults to the
//! automatic size when the input's length is known, and 1 otherwise.
//!
//! # Timeouts and panics on the thread backend
//!
//! A thread cannot be killed. On [`Backend::Threads`] a task over its
//! timeout gets [`TaskError::TimedOut`] at its deadline and its thread is
//! *abandoned*: the pool starts a replacement at once (so the pool is never
//! pinned), and the abandoned thread exits when its task returns, its
//! result discarded. A panic is caught and reported as on the process
//! backend; the thread goes on. `terminate` fails every unfinished task at
//! once and returns; threads still running a task finish it in the
//! background, unobserved. `max_tasks_per_child` replaces the thread (its
//! thread-locals are dropped).
//!
//! # Observing a pool
//!
//! [`PoolBuilder::events`] turns on a stream of [`TaskEvent`]s (submitted,
//! started with the worker's pid, finished, failed) from [`Pool::events`];
//! [`PoolBuilder::progress_bar`] draws a progress bar with an ETA on stderr
//! for `map` and `imap` (when stderr is a terminal).
//!
//! # Dropping a pool
//!
//! Dropping a pool that was not joined terminates it, as Python's
//! `with Pool() as p:` does on leaving the block; call
//! [`close`](Pool::close) and [`join`](Pool::join) to let the work finish.

mod claim;
mod process;
mod result;
mod thread;

use std::any::{Any, TypeId, type_name};
use std::cell::UnsafeCell;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

pub use result::{AsyncResult, TaskError};

use crate::task::{ItemFailure, PanicReport, TaskFn, decode, encode, find_by_type};
use crate::{StartMethod, task};
use result::{HasSlot, Slot};

/// Which workers a [`Pool`] runs tasks on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// Worker processes (the default): CPU-bound work, isolation, crash
    /// recovery.
    #[default]
    Processes,
    /// Worker threads in this process: no serialization, shared memory for
    /// free, but a crash takes the whole program.
    Threads,
}

/// Why a pool could not be built or joined.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PoolError {
    /// A worker process could not be started.
    #[error("a pool worker could not be started: {0}")]
    WorkerStart(String),
    /// A pool needs at least one worker.
    #[error("a pool needs at least one worker")]
    ZeroSize,
    /// The initializer is not a registered task (process backend).
    #[error("the initializer {0} is not a registered task: mark it #[herd::task]")]
    NotRegistered(&'static str),
    /// The initializer's arguments did not serialize.
    #[error("the initializer's arguments could not be serialized: {0}")]
    InitializerArgs(String),
    /// `join` was called on a pool that was neither closed nor terminated
    /// (Python raises `ValueError` here).
    #[error("join needs a closed or terminated pool")]
    NotClosed,
    /// `join_timeout` gave up.
    #[error("the pool's work did not finish in time")]
    Timeout,
}

/// One event in a pool's life, from [`Pool::events`].
///
/// `id` is the task's id ([`AsyncResult::id`]); a chunk of a `map` is one
/// task.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskEvent {
    /// The task was accepted by the pool.
    Submitted {
        /// Task id.
        id: u64,
        /// Items in it (1 for `apply`, the chunk's length for `map`).
        items: usize,
    },
    /// A worker began the task.
    Started {
        /// Task id.
        id: u64,
        /// The worker's pid (this process's, on the thread backend).
        worker_pid: u32,
    },
    /// The task finished; `failed` of its items failed (panicked, ...).
    Finished {
        /// Task id.
        id: u64,
        /// The worker's pid.
        worker_pid: u32,
        /// Items that produced a value.
        ok: usize,
        /// Items that failed.
        failed: usize,
    },
    /// The task as a whole failed: its worker died, it timed out, or the
    /// pool was terminated.
    Failed {
        /// Task id.
        id: u64,
        /// The worker's pid, when one had it.
        worker_pid: Option<u32>,
        /// Why.
        error: TaskError,
    },
}

/// Where events go, when they are on.
#[derive(Clone, Debug)]
pub(crate) struct Events(Option<Sender<TaskEvent>>);

impl Events {
    pub(crate) fn emit(&self, event: impl FnOnce() -> TaskEvent) {
        if let Some(tx) = &self.0 {
            // No receiver left is not an error: nobody is watching.
            let _ = tx.send(event());
        }
    }

    /// The event for a job that produced a result.
    pub(crate) fn finished(&self, id: u64, pid: u32, result: &JobResult) {
        self.emit(|| match result {
            JobResult::Failed(error) => TaskEvent::Failed {
                id,
                worker_pid: Some(pid),
                error: error.clone(),
            },
            JobResult::Encoded { failed, items, .. } | JobResult::Local { failed, items, .. } => {
                TaskEvent::Finished {
                    id,
                    worker_pid: pid,
                    ok: items - failed,
                    failed: *failed,
                }
            }
        });
    }
}

/// What a worker runs for one job.
pub(crate) enum Work {
    /// A registered task by name and the encoded list of every item's
    /// argument tuple (process backend).
    Encoded { task: String, batch: Vec<u8> },
    /// The same, encoded as the message a worker reads (the process
    /// backend encodes before it takes its lock).
    Wire(Vec<u8>),
    /// A closure running every item (thread backend); it returns a boxed
    /// `Vec<Result<R, TaskError>>` and how many items failed.
    Local(Box<dyn FnOnce() -> (Box<dyn Any + Send>, usize) + Send>),
    /// One task with its arguments and result slot (thread backend's
    /// `apply_async`): it fills its slot itself.
    Task(Arc<dyn LocalTask>),
}

/// A thread-pool task that carries its arguments and fills its own result
/// slot: one allocation per `apply_async`, where a boxed closure, a boxed
/// completion and a separate slot took three (and the allocator, fed on
/// one thread and drained on another, was a third of the cost).
pub(crate) trait LocalTask: Send + Sync {
    /// Runs the task (the first call only, and not after `fail`) and
    /// fills the slot; true if it failed (panicked).
    fn run(&self) -> bool;
    /// Fills the slot with `error`, unless it already has an outcome.
    fn fail(&self, error: TaskError);
}

/// The [`LocalTask`] of `f(args)`.
struct TaskCell<F, A, R> {
    slot: Slot<R>,
    started: AtomicBool,
    input: UnsafeCell<Option<(F, A)>>,
}

// SAFETY: `input` is touched only by the one `run` that wins the swap of
// `started` (and by `Drop`, which has `&mut`); `F` and `A` are `Send`, so
// moving them out on that thread is fine. The slot is `Sync` for `R: Send`.
unsafe impl<F: Send, A: Send, R: Send> Sync for TaskCell<F, A, R> {}

impl<F, A> LocalTask for TaskCell<F, A, F::Output>
where
    F: TaskFn<A>,
    A: Send + 'static,
    F::Output: Send + 'static,
{
    fn run(&self) -> bool {
        if self.started.swap(true, Ordering::Acquire) {
            return false;
        }
        // SAFETY: the swap above made this call the only one past it.
        let Some((f, args)) = (unsafe { (*self.input.get()).take() }) else {
            return false;
        };
        let r = catch_unwind(AssertUnwindSafe(move || f.call(args)))
            .map_err(|p| TaskError::Panicked(PanicReport::from_payload(&*p)));
        let failed = r.is_err();
        // The fill wakes the caller's waker, which may panic: not the
        // worker's business.
        let _ = catch_unwind(AssertUnwindSafe(|| self.slot.fill(r)));
        failed
    }

    fn fail(&self, error: TaskError) {
        // Failed before it started: it never runs (no side effects after
        // its failure was reported).
        if !self.started.swap(true, Ordering::AcqRel) {
            // SAFETY: the swap made this call the only one past it.
            drop(unsafe { (*self.input.get()).take() });
        }
        self.slot.fill(Err(error));
    }
}

impl<F, A, R> HasSlot<R> for TaskCell<F, A, R>
where
    F: Send,
    A: Send,
    R: Send,
{
    fn slot(&self) -> &Slot<R> {
        &self.slot
    }
}

/// How a job ended.
pub(crate) enum JobResult {
    /// Each item's encoded result or error (process backend).
    Encoded {
        bytes: Vec<u8>,
        items: usize,
        failed: usize,
    },
    /// The boxed `Vec<Result<R, TaskError>>` (thread backend).
    Local {
        values: Box<dyn Any + Send>,
        items: usize,
        failed: usize,
    },
    /// The whole job failed.
    Failed(TaskError),
}

/// What runs when a job ends: fills the caller's slot or collector.
pub(crate) enum Completion {
    /// A closure given the outcome.
    Call(Box<dyn FnOnce(JobResult) + Send>),
    /// A [`LocalTask`], which filled its slot itself if it ran: only a
    /// failure to run is reported to it.
    Task(Arc<dyn LocalTask>),
}

impl Completion {
    /// Reports how the job ended.
    pub(crate) fn call(self, result: JobResult) {
        match self {
            Self::Call(f) => f(result),
            Self::Task(task) => {
                if let JobResult::Failed(e) = result {
                    task.fail(e);
                }
            }
        }
    }
}

/// One unit of work: a task with one item (`apply`) or a chunk (`map`).
pub(crate) struct Job {
    pub(crate) id: u64,
    pub(crate) items: usize,
    pub(crate) work: Work,
    pub(crate) timeout: Option<Duration>,
    pub(crate) done: Completion,
}

/// The typed results of one job: the values of the items that succeeded,
/// in order, and each failed item's index (within the job) and error. Kept
/// apart so that the common case, no failure, is a plain `Vec<R>` that a
/// `map` uses as it is.
pub(crate) struct Chunk<R> {
    values: Vec<R>,
    errors: Vec<(usize, TaskError)>,
}

impl<R> Chunk<R> {
    fn failed(n: usize, error: &TaskError) -> Self {
        Self {
            values: Vec::new(),
            errors: (0..n).map(|i| (i, error.clone())).collect(),
        }
    }

    /// One `Result` per item, in order.
    fn into_results(self) -> Vec<Result<R, TaskError>> {
        let n = self.values.len() + self.errors.len();
        let mut values = self.values.into_iter();
        let mut errors = self.errors.into_iter().peekable();
        (0..n)
            .map(|i| match errors.next_if(|(at, _)| *at == i) {
                Some((_, e)) => Err(e),
                None => values.next().ok_or(TaskError::ResultDecode(
                    "internal: fewer values than items".to_owned(),
                )),
            })
            .collect()
    }
}

/// Turns a job's result into typed results.
fn typed<R: DeserializeOwned + 'static>(result: JobResult, n: usize) -> Chunk<R> {
    match result {
        JobResult::Encoded { bytes, .. } => {
            match decode::<(Vec<R>, Vec<(u32, ItemFailure)>)>(&bytes) {
                Ok((values, failures)) if values.len() + failures.len() == n => Chunk {
                    values,
                    errors: failures
                        .into_iter()
                        .map(|(i, f)| {
                            let e = match f {
                                ItemFailure::Panicked(p) => TaskError::Panicked(p),
                                ItemFailure::ResultEncode(e) => TaskError::ResultEncode(e),
                            };
                            (i as usize, e)
                        })
                        .collect(),
                },
                Ok((values, failures)) => Chunk::failed(
                    n,
                    &TaskError::ResultDecode(format!(
                        "{} results for {n} items",
                        values.len() + failures.len()
                    )),
                ),
                Err(e) => Chunk::failed(n, &TaskError::ResultDecode(e)),
            }
        }
        JobResult::Local { values, .. } => match values.downcast::<Chunk<R>>() {
            Ok(c) => *c,
            Err(_) => Chunk::failed(
                n,
                &TaskError::ResultDecode("internal: result of an unexpected type".to_owned()),
            ),
        },
        JobResult::Failed(e) => Chunk::failed(n, &e),
    }
}

/// Runs every item of a thread-backend job. A panic fails its own item
/// only: the run resumes with the next one under a new `catch_unwind`.
fn run_local<F, A>(f: F, items: Vec<A>) -> (Box<dyn Any + Send>, usize)
where
    F: TaskFn<A>,
    F::Output: Send + 'static,
{
    let mut values = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    let mut rest = items.into_iter();
    loop {
        let run = catch_unwind(AssertUnwindSafe(|| {
            for a in rest.by_ref() {
                values.push(f.call(a));
            }
        }));
        match run {
            Ok(()) => break,
            Err(p) => errors.push((
                values.len() + errors.len(),
                TaskError::Panicked(PanicReport::from_payload(&*p)),
            )),
        }
    }
    let failed = errors.len();
    (Box::new(Chunk { values, errors }), failed)
}

/// The backend doing the work.
enum Engine {
    Processes(process::Engine),
    Threads(thread::Engine),
}

/// An initializer, in both forms.
struct Init {
    /// Registered name and the encoder of its arguments (process backend).
    encoded: Result<process::InitCall, PoolError>,
    /// The call itself (thread backend).
    local: Arc<dyn Fn() + Send + Sync>,
}

impl fmt::Debug for Init {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Init")
            .field("encoded", &self.encoded)
            .finish_non_exhaustive()
    }
}

/// Configures a [`Pool`]: Python's `Pool(processes, initializer, initargs,
/// maxtasksperchild)` and herd's additions.
///
/// ```
/// #[herd::task]
/// fn setup(tag: String) {
///     let _ = tag; // open a connection, seed a cache, ...
/// }
/// #[herd::task]
/// fn double(x: i32) -> i32 {
///     x * 2
/// }
///
/// fn main() {
///     herd::init();
///     let pool = herd::Pool::builder()
///         .size(2)
///         .initializer(setup, ("db".to_owned(),))
///         .max_tasks_per_child(100)
///         .task_timeout(std::time::Duration::from_secs(30))
///         .build()
///         .unwrap();
///     assert_eq!(pool.apply(double, (21,)).unwrap(), 42);
/// }
/// ```
#[derive(Debug, Default)]
#[must_use]
pub struct PoolBuilder {
    backend: Backend,
    size: Option<usize>,
    init: Option<Init>,
    max_tasks_per_child: Option<u64>,
    task_timeout: Option<Duration>,
    events: bool,
    progress: bool,
    start_method: Option<StartMethod>,
}

impl PoolBuilder {
    /// Process or thread workers (default: processes).
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// The number of workers (default: the number of CPUs).
    pub fn size(mut self, n: usize) -> Self {
        self.size = Some(n);
        self
    }

    /// A task each worker runs once when it starts (`initializer` and
    /// `initargs`). If it fails (panics), the pool stops taking work: every
    /// task not yet running fails with [`TaskError::Initializer`] — Python
    /// restarts such workers forever instead.
    pub fn initializer<F, A>(mut self, f: F, args: A) -> Self
    where
        F: TaskFn<A, Output = ()> + Sync,
        A: Serialize + Clone + Send + Sync + 'static,
    {
        let encoded = match find_by_type(TypeId::of::<F>()) {
            None => Err(PoolError::NotRegistered(type_name::<F>())),
            // Shared objects (queues, locks) in the arguments travel as
            // file descriptors beside the bytes, so the arguments are
            // encoded anew for each worker as part of its start; this
            // first encoding only checks that they can be.
            Some(entry) => match crate::ipc::collect_fds(|| encode(&args)).0 {
                Err(e) => Err(PoolError::InitializerArgs(e)),
                Ok(_) => {
                    let args = args.clone();
                    Ok(process::InitCall::new(
                        entry.name,
                        Arc::new(move || encode(&args)),
                    ))
                }
            },
        };
        self.init = Some(Init {
            encoded,
            local: Arc::new(move || f.call(args.clone())),
        });
        self
    }

    /// Replace a worker after it has run this many tasks (Python's
    /// `maxtasksperchild`; a `map` chunk is one task).
    pub fn max_tasks_per_child(mut self, n: u64) -> Self {
        self.max_tasks_per_child = Some(n.max(1));
        self
    }

    /// A timeout for every task (a `map` chunk is one task); see the
    /// [module docs](self#what-happens-when-a-task-fails).
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = Some(timeout);
        self
    }

    /// Records [`TaskEvent`]s for [`Pool::events`]. Consume them: the
    /// stream is unbounded.
    pub fn events(mut self, on: bool) -> Self {
        self.events = on;
        self
    }

    /// Draws a progress bar with an ETA on stderr for `map`, `starmap` and
    /// `imap` (only when stderr is a terminal).
    pub fn progress_bar(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }

    /// How worker processes are started (default: the program's
    /// [`start_method`](crate::start_method)).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.start_method = Some(method);
        self
    }

    /// Starts the workers.
    pub fn build(self) -> Result<Pool, PoolError> {
        let size = match self.size {
            Some(0) => return Err(PoolError::ZeroSize),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let (encoded_init, local_init) = match self.init {
            None => (None, None),
            Some(Init { encoded, local }) => match self.backend {
                Backend::Processes => (Some(encoded?), None),
                Backend::Threads => (None, Some(local)),
            },
        };
        task::install_panic_hook();
        let (events, receiver) = if self.events {
            let (tx, rx) = crossbeam_channel::unbounded();
            (Events(Some(tx)), Some(rx))
        } else {
            (Events(None), None)
        };
        let max_jobs = self.max_tasks_per_child.unwrap_or(0);
        let engine = match self.backend {
            Backend::Processes => Engine::Processes(process::Engine::new(process::Config {
                size,
                init: encoded_init,
                max_jobs,
                notify: self.events || self.task_timeout.is_some(),
                events,
                start_method: self.start_method,
            })?),
            Backend::Threads => Engine::Threads(thread::Engine::new(thread::Config {
                size,
                init: local_init,
                max_jobs,
                events,
            })),
        };
        Ok(Pool {
            claim: self.backend == Backend::Threads
                && !self.events
                && self.max_tasks_per_child.is_none()
                && self.task_timeout.is_none(),
            engine,
            backend: self.backend,
            size,
            timeout: self.task_timeout,
            progress: self.progress,
            receiver,
            next_id: AtomicU64::new(1),
        })
    }
}

/// A pool of workers running tasks: Python's `multiprocessing.Pool`
/// (and `ThreadPool`), crash-proof. See the [module docs](self).
pub struct Pool {
    /// Thread maps claim items from a shared counter (see [`claim`]):
    /// threads, and nothing that needs a job per chunk (events, a timeout,
    /// a job limit per worker).
    claim: bool,
    engine: Engine,
    backend: Backend,
    size: usize,
    timeout: Option<Duration>,
    progress: bool,
    receiver: Option<Receiver<TaskEvent>>,
    next_id: AtomicU64,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("backend", &self.backend)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// Waits on `cv` until `done` holds for the guarded state, or `deadline`
/// passes (`false`). Shared by both engines' `join`.
pub(crate) fn wait_for<T>(
    cv: &Condvar,
    mut guard: std::sync::MutexGuard<'_, T>,
    deadline: Option<Instant>,
    done: impl Fn(&T) -> bool,
) -> bool {
    while !done(&guard) {
        guard = match deadline {
            None => cv.wait(guard).unwrap_or_else(PoisonError::into_inner),
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return false;
                }
                cv.wait_timeout(guard, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
        };
    }
    true
}

/// Python's default chunk size: items / (4 × workers), rounded up.
fn auto_chunk(n: usize, size: usize) -> usize {
    n.div_ceil(size * 4).max(1)
}

impl Pool {
    /// A process pool of `size` workers.
    pub fn new(size: usize) -> Result<Self, PoolError> {
        Self::builder().size(size).build()
    }

    /// A thread pool of `size` workers (Python's `ThreadPool`).
    pub fn threads(size: usize) -> Result<Self, PoolError> {
        Self::builder().backend(Backend::Threads).size(size).build()
    }

    /// A builder, for the initializer, `max_tasks_per_child`, timeouts,
    /// events and the thread backend.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// The number of workers.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Which backend runs the tasks.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pids of the live worker processes (empty on the thread backend).
    pub fn worker_pids(&self) -> Vec<u32> {
        match &self.engine {
            Engine::Processes(e) => e.worker_pids(),
            Engine::Threads(_) => Vec::new(),
        }
    }

    /// The stream of [`TaskEvent`]s, when [`PoolBuilder::events`] turned it on.
    pub fn events(&self) -> Option<Receiver<TaskEvent>> {
        self.receiver.clone()
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn submit(&self, job: Job) {
        match &self.engine {
            Engine::Processes(e) => e.submit(job),
            Engine::Threads(e) => e.submit(job),
        }
    }

    /// Builds the work for `items` of task `f`.
    fn work<F, A>(&self, f: F, items: Vec<A>) -> Result<Work, TaskError>
    where
        F: TaskFn<A>,
        A: Serialize + Send + 'static,
        F::Output: Send + 'static,
    {
        match self.backend {
            Backend::Threads => Ok(Work::Local(Box::new(move || run_local(f, items)))),
            Backend::Processes => {
                let entry = find_by_type(TypeId::of::<F>())
                    .ok_or(TaskError::NotRegistered(type_name::<F>()))?;
                let batch = encode(&items).map_err(|e| {
                    TaskError::ArgsEncode(if e.contains("shared object") {
                        format!(
                            "{e}; pass queues, locks and other shared objects to \
                             pool workers through PoolBuilder::initializer"
                        )
                    } else {
                        e
                    })
                })?;
                Ok(Work::Encoded {
                    task: entry.name.to_owned(),
                    batch,
                })
            }
        }
    }

    /// Submits one chunk; `done` receives its typed results.
    fn submit_chunk<F, A>(
        &self,
        f: F,
        items: Vec<A>,
        timeout: Option<Duration>,
        done: impl FnOnce(Chunk<F::Output>) + Send + 'static,
    ) -> u64
    where
        F: TaskFn<A>,
        A: Serialize + Send + 'static,
        F::Output: DeserializeOwned + Send + 'static,
    {
        let id = self.next_id();
        let n = items.len();
        let completion = Completion::Call(Box::new(move |r| {
            // Decoding runs the caller's `Deserialize`, which may panic: that
            // is this job's failure, not the pool's.
            let chunk = catch_unwind(AssertUnwindSafe(|| typed(r, n))).unwrap_or_else(|p| {
                let report = PanicReport::from_payload(&*p);
                Chunk::failed(
                    n,
                    &TaskError::ResultDecode(format!("decoding the result {report}")),
                )
            });
            done(chunk);
        }));
        match self.work(f, items) {
            Ok(work) => self.submit(Job {
                id,
                items: n,
                work,
                timeout,
                done: completion,
            }),
            Err(e) => completion.call(JobResult::Failed(e)),
        }
        id
    }

    /// Runs `f(args)` on a worker and waits for its value (Python's `apply`).
    pub fn apply<F, A>(&self, f: F, args: A) -> Result<F::Output, TaskError>
    where
        F: TaskFn<A>,
        A: Serialize + Send + 'static,
        F::Output: DeserializeOwned + Send + 'static,
    {
        self.apply_async(f, args).get()
    }

    /// Submits `f(args)`; the [`AsyncResult`] delivers its value.
    pub fn apply_async<F, A>(&self, f: F, args: A) -> AsyncResult<F::Output>
    where
        F: TaskFn<A>,
        A: Serialize + Send + 'static,
        F::Output: DeserializeOwned + Send + 'static,
    {
        self.apply_async_with(f, args, self.timeout)
    }

    /// [`apply_async`](Self::apply_async) with this task's own timeout.
    ///
    /// ```
    /// #[herd::task]
    /// fn nap(ms: u64) -> u64 {
    ///     std::thread::sleep(std::time::Duration::from_millis(ms));
    ///     ms
    /// }
    ///
    /// fn main() {
    ///     herd::init();
    ///     let pool = herd::Pool::new(1).unwrap();
    ///     let slow = pool.apply_async_timeout(nap, (60_000,), std::time::Duration::from_millis(50));
    ///     assert!(matches!(slow.get(), Err(herd::pool::TaskError::TimedOut(_))));
    ///     // The worker was replaced: the pool goes on.
    ///     assert_eq!(pool.apply(nap, (1,)).unwrap(), 1);
    /// }
    /// ```
    pub fn apply_async_timeout<F, A>(
        &self,
        f: F,
        args: A,
        timeout: Duration,
    ) -> AsyncResult<F::Output>
    where
        F: TaskFn<A>,
        A: Serialize + Send + 'static,
        F::Output: DeserializeOwned + Send + 'static,
    {
        self.apply_async_with(f, args, Some(timeout))
    }

    fn apply_async_with<F, A>(
        &self,
        f: F,
        args: A,
        timeout: Option<Duration>,
    ) -> AsyncResult<F::Output>
    where
        F: TaskFn<A>,
        A: Serialize + Send + 'static,
        F::Output: DeserializeOwned + Send + 'static,
    {
        if self.backend == Backend::Threads {
            // The task, its arguments and its slot in one allocation; the
            // worker fills the slot itself, and the completion only reports
            // a job that did not run (closed, terminated, timed out): the
            // slot keeps the first outcome.
            let id = self.next_id();
            let cell = Arc::new(TaskCell {
                slot: Slot::bare(),
                started: AtomicBool::new(false),
                input: UnsafeCell::new(Some((f, args))),
            });
            let task: Arc<dyn LocalTask> = cell.clone();
            self.submit(Job {
                id,
                items: 1,
                work: Work::Task(Arc::clone(&task)),
                timeout,
                done: Completion::Task(task),
            });
            return AsyncResult::held(cell, id);
        }
        let slot = Slot::new();
        let filler = Arc::clone(&slot);
        let id = self.submit_chunk(f, vec![args], timeout, move |chunk| {
            filler.fill(
                chunk
                    .into_results()
                    .pop()
                    .unwrap_or(Err(TaskError::ResultDecode(
                        "internal: no result".to_owned(),
                    ))),
            );
        });
        AsyncResult::new(slot, id)
    }

    /// `f(x)` for every item, in order, with the automatic chunk size
    /// (Python's `map`). The first failure (by position) is the error.
    pub fn map<F, A, I>(&self, f: F, items: I) -> Result<Vec<F::Output>, TaskError>
    where
        F: TaskFn<(A,)>,
        I: IntoIterator<Item = A>,
        A: Serialize + Send + 'static,
        F::Output: DeserializeOwned + Send + 'static,
    {
        self.map_async(f, items).get()
    }

    /// [`map`](Self::map) with an explicit chunk size.
    pub fn map_chunked<F, A, I>(
        &self,
        f: F,
        items: I,
        chunksize: usize,
    ) -> Result<Vec<F::Output>, TaskError>
    where
        F: TaskFn<(A,)>,
        I: IntoIterator<Item = A>,
        A: Serialize + Send + 'static,
        F::Output: DeserializeOwned + Send + 'static,
    {
        self.map_async_chunked(f, items, chunksize).get()
    }

    /// [`map`](Self::map) without waiting: one [`AsyncResult`] for the
    /// whole list.
    pub fn map_async<F, A, I>(&self, f: F, items: I) -> AsyncResult<Vec<F::Output>>
    where
        F: TaskFn<(A,)>,
        I: IntoIterator<Item = A>,
        A: Serialize + Send + 'static,
        F::Output: DeserializeOwned + Send + 'static,
    {
        self.starmap_impl(f, items.into_iter().map(|a| (a,)), None)
    }

    /// [`map_async`](Self::map_async) with an explicit chunk size.
    pub fn map_async_chunked<F, A, I>(
        &self,
        f: F,
        items: I,
        chunksize: usize,
    ) -> AsyncResult<Vec<F::Output>>
    where
        F: TaskFn<(A,)>,
        I: IntoIterator<Item = A>,
        A: Serialize + Send + 'static,
        F::Output: DeserializeOwned + Send + 'static,
    {
        self.starmap_impl(f, items.into_iter().map(|a| (a,)), Some(chunksize))
    }

    /// `f(a, b, ...)` for every argument tuple, in order (Python's `starmap`).
    pub fn starmap<F, A, I>(&self, f: F, items: I) -> Result<Vec<F::Output>, TaskError>
    where
        F: TaskFn<A>,
        I: IntoIterator<Item = A>,
        A: Serialize + Send + 'static,
        F::Output: DeserializeOwned + Send + 'static,
    {
        self.starmap_async(f, items).get()
    }

    /// [`starmap`](Self::starmap) without waiting.
    pub fn starmap_async<F, A, I>(&self, f: F, items: I) -> AsyncResult<Vec<F::Output>>
    where
        F: TaskFn<A>,
        I: IntoIterator<Item = A>,
        A: Serialize + Send + 'static,
        F::Output: DeserializeOwned + Send + 'static,
    {
        self.starmap_impl(f, items.into_iter(), None)
    }

    fn starmap_impl<F, A, I>(
        &self,
        f: F,
        items: I,
        chunksize: Option<usize>,
    ) -> AsyncResult<Vec<F::Output>>
    where
        F: TaskFn<A>,
        I: Iterator<Item = A>,
        A: Serialize + Send + 'static,
        F::Output: DeserializeOwned + Send + 'static,
    {
        let (lo, hi) = items.size_hint();
        if chunksize.is_none() && Some(lo) != hi {
            // The length sizes the chunks: learn it (Python does the same).
            let all: Vec<A> = items.collect();
            return self.starmap_impl(f, all.into_iter(), chunksize);
        }
        // A known length: chunks are cut from the input as it is read, with
        // no copy of the whole input first. The count is only a hint (an
        // iterator may misreport it), so the collector learns the real
        // number of chunks when the input ends.
        let chunk = chunksize
            .unwrap_or_else(|| auto_chunk(lo, self.size))
            .max(1);
        if self.claim && !self.progress {
            return self.claim_map(f, items.collect(), chunk);
        }
        let slot = Slot::new();
        let progress = self.progress_bar(lo as u64);
        let collector = Arc::new(Mutex::new(MapState {
            parts: Vec::with_capacity(lo.div_ceil(chunk)),
            done: 0,
            expected: None,
            items: 0,
            error: None,
        }));
        let finish = {
            let slot = Arc::clone(&slot);
            let progress = progress.clone();
            move |result| {
                if let Some(p) = &progress {
                    p.finish_and_clear();
                }
                slot.fill(result);
            }
        };
        let mut first_id = 0;
        let mut items = items;
        let mut index = 0;
        loop {
            let part: Vec<A> = items.by_ref().take(chunk).collect();
            if part.is_empty() {
                break;
            }
            let len = part.len();
            {
                let mut st = collector.lock().unwrap_or_else(PoisonError::into_inner);
                st.parts.push(None);
                st.items += len;
            }
            let collector = Arc::clone(&collector);
            let progress = progress.clone();
            let finish = finish.clone();
            let id = self.submit_chunk(f, part, self.timeout, move |results| {
                if let Some(p) = &progress {
                    p.inc(len as u64);
                }
                let finished = {
                    let mut st = collector.lock().unwrap_or_else(PoisonError::into_inner);
                    st.add(index, chunk, results);
                    st.finish()
                };
                if let Some(result) = finished {
                    finish(result);
                }
            });
            if index == 0 {
                first_id = id;
            }
            index += 1;
        }
        let finished = {
            let mut st = collector.lock().unwrap_or_else(PoisonError::into_inner);
            st.expected = Some(index);
            st.finish()
        };
        if let Some(result) = finished {
            finish(result);
        }
        AsyncResult::new(slot, first_id)
    }

    /// A thread pool's `map`: one job per worker (not per chunk), each
    /// claiming the next `chunk` items from a shared counter until none
    /// are left, writing each result in its place. A chunk costs one
    /// atomic add instead of a job, its allocations and the pool's lock.
    fn claim_map<F, A>(&self, f: F, items: Vec<A>, chunk: usize) -> AsyncResult<Vec<F::Output>>
    where
        F: TaskFn<A>,
        A: Send + 'static,
        F::Output: Send + 'static,
    {
        let slot = Slot::new();
        let id = self.next_id();
        let n = items.len();
        if n == 0 {
            slot.fill(Ok(Vec::new()));
            return AsyncResult::new(slot, id);
        }
        let workers = self.size.min(n.div_ceil(chunk));
        let claim = Arc::new(claim::Claim::<F, A, F::Output>::new(items, chunk, workers));
        for i in 0..workers {
            // The work and the completion may come in either order: a
            // terminated pool completes a job its thread still runs.
            let state = Arc::new(claim::JobState::new());
            let (run, run_state, run_slot) =
                (Arc::clone(&claim), Arc::clone(&state), Arc::clone(&slot));
            let (done, slot) = (Arc::clone(&claim), Arc::clone(&slot));
            self.submit(Job {
                id: if i == 0 { id } else { self.next_id() },
                items: 0,
                work: Work::Local(Box::new(move || {
                    if let Some(all) = run.run_job(f, &run_state, i) {
                        run_slot.fill(all);
                    }
                    (Box::new(()), 0)
                })),
                timeout: None,
                done: Completion::Call(Box::new(move |result| {
                    let failure = match result {
                        JobResult::Failed(e) => {
                            // The map fails now, not when an abandoned
                            // job's thread gets round to ending it.
                            slot.fill(Err(e.clone()));
                            Some(e)
                        }
                        _ => None,
                    };
                    if let Some(all) = done.complete_job(&state, failure) {
                        slot.fill(all);
                    }
                })),
            });
        }
        AsyncResult::new(slot, id)
    }

    fn progress_bar(&self, len: u64) -> Option<indicatif::ProgressBar> {
        self.progress.then(|| {
            let bar = indicatif::ProgressBar::new(len);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} tasks, {elapsed} elapsed, ETA {eta}",
            ) {
                bar.set_style(style);
            }
            bar
        })
    }

    /// `f(x)` for every item, streamed in order as results arrive (Python's
    /// `imap`). The input is read lazily: at most a window of chunks (four
    /// per worker) is in flight, so an endless input is fine.
    ///
    /// ```
    /// #[herd::task]
    /// fn inc(x: u32) -> u32 {
    ///     x + 1
    /// }
    ///
    /// fn main() {
    ///     herd::init();
    ///     let pool = herd::Pool::new(2).unwrap();
    ///     let firsts: Vec<u32> = pool.imap(inc, 0..).take(3).map(Result::unwrap).collect();
    ///     assert_eq!(firsts, vec![1, 2, 3]);
    /// }
    /// ```
    pub fn imap<F, A, I>(&self, f: F, items: I) -> Imap<'_, F, I::IntoIter>
    where
        F: TaskFn<(A,)>,
        I: IntoIterator<Item = A>,
        A: Serialize + Send + 'static,
        F::Output: DeserializeOwned + Send + 'static,
    {
        self.imap_impl(f, items.into_iter(), None, true)
    }

    /// [`imap`](Self::imap) with an explicit chunk size.
    pub fn imap_chunked<F, A, I>(
        &self,
        f: F,
        items: I,
        chunksize: usize,
    ) -> Imap<'_, F, I::IntoIter>
    where
        F: TaskFn<(A,)>,
        I: IntoIterator<Item = A>,
        A: Serialize + Send + 'static,
        F::Output: DeserializeOwned + Send + 'static,
    {
        self.imap_impl(f, items.into_iter(), Some(chunksize), true)
    }

    /// Like [`imap`](Self::imap), but results come in the order they finish
    /// (Python's `imap_unordered`).
    pub fn imap_unordered<F, A, I>(&self, f: F, items: I) -> Imap<'_, F, I::IntoIter>
    where
        F: TaskFn<(A,)>,
        I: IntoIterator<Item = A>,
        A: Serialize + Send + 'static,
        F::Output: DeserializeOwned + Send + 'static,
    {
        self.imap_impl(f, items.into_iter(), None, false)
    }

    fn imap_impl<F, A, I>(
        &self,
        f: F,
        input: I,
        chunksize: Option<usize>,
        ordered: bool,
    ) -> Imap<'_, F, I>
    where
        F: TaskFn<(A,)>,
        I: Iterator<Item = A>,
        A: Serialize + Send + 'static,
        F::Output: DeserializeOwned + Send + 'static,
    {
        let (lo, hi) = input.size_hint();
        let known = (Some(lo) == hi).then_some(lo);
        let chunk = chunksize
            .or_else(|| known.map(|n| auto_chunk(n, self.size)))
            .unwrap_or(1)
            .max(1);
        Imap {
            pool: self,
            f,
            input,
            chunk,
            window: (self.size * 4).max(8),
            ordered,
            submitted: 0,
            received: 0,
            exhausted: false,
            ready: VecDeque::new(),
            shared: Arc::new(ImapShared {
                done: Mutex::new(ImapDone {
                    chunks: HashMap::new(),
                    waiting: false,
                }),
                cv: Condvar::new(),
            }),
            progress: self.progress_bar(known.unwrap_or(0) as u64),
        }
    }

    /// Whether the pool was closed (or terminated).
    pub fn is_closed(&self) -> bool {
        match &self.engine {
            Engine::Processes(e) => e.is_closed(),
            Engine::Threads(e) => e.is_closed(),
        }
    }

    /// Stops taking tasks; the ones already submitted still run.
    pub fn close(&self) {
        match &self.engine {
            Engine::Processes(e) => e.close(),
            Engine::Threads(e) => e.close(),
        }
    }

    /// Waits until every submitted task has finished and the workers have
    /// exited. The pool must be closed (or terminated) first.
    pub fn join(&self) -> Result<(), PoolError> {
        self.join_until(None)
    }

    /// [`join`](Self::join) for at most `timeout`.
    pub fn join_timeout(&self, timeout: Duration) -> Result<(), PoolError> {
        self.join_until(Instant::now().checked_add(timeout))
    }

    fn join_until(&self, deadline: Option<Instant>) -> Result<(), PoolError> {
        match &self.engine {
            Engine::Processes(e) => e.join(deadline),
            Engine::Threads(e) => e.join(deadline),
        }
    }

    /// Stops at once: every unfinished task fails with
    /// [`TaskError::Terminated`]; worker processes are killed with their
    /// process groups. Always returns.
    pub fn terminate(&self) {
        match &self.engine {
            Engine::Processes(e) => e.terminate(),
            Engine::Threads(e) => e.terminate(),
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// The results of a `map` as chunks arrive.
struct MapState<R> {
    /// Each chunk's values, by chunk number.
    parts: Vec<Option<Vec<R>>>,
    /// Chunks finished.
    done: usize,
    /// Chunks submitted, once the input has ended.
    expected: Option<usize>,
    /// Items submitted.
    items: usize,
    /// The first failure by position.
    error: Option<(usize, TaskError)>,
}

impl<R> MapState<R> {
    fn add(&mut self, index: usize, chunk: usize, results: Chunk<R>) {
        if let Some((i, e)) = results.errors.into_iter().next() {
            let pos = index * chunk + i;
            if self.error.as_ref().is_none_or(|(p, _)| pos < *p) {
                self.error = Some((pos, e));
            }
        }
        if let Some(p) = self.parts.get_mut(index) {
            *p = Some(results.values);
        }
        self.done += 1;
    }

    /// The whole result, once the input has ended and every chunk is in
    /// (`None` before, and after it was taken).
    fn finish(&mut self) -> Option<Result<Vec<R>, TaskError>> {
        if self.expected != Some(self.done) {
            return None;
        }
        // Taken once: a later call finds nothing.
        self.expected = None;
        if let Some((_, e)) = self.error.take() {
            return Some(Err(e));
        }
        if self.parts.len() == 1 {
            return self.parts.pop().flatten().map(Ok);
        }
        let mut out = Vec::with_capacity(self.items);
        for part in self.parts.drain(..).flatten() {
            out.extend(part);
        }
        Some(Ok(out))
    }
}

/// Chunks of an `imap` that finished, by sequence number.
struct ImapShared<R> {
    done: Mutex<ImapDone<R>>,
    cv: Condvar,
}

struct ImapDone<R> {
    chunks: HashMap<usize, Vec<Result<R, TaskError>>>,
    /// The consumer waits on the condition variable.
    waiting: bool,
}

/// The iterator of [`Pool::imap`] and [`Pool::imap_unordered`]: yields
/// each item's result. Dropping it stops submitting; chunks already
/// submitted still run.
pub struct Imap<'p, F, I>
where
    I: Iterator,
    F: TaskFn<(I::Item,)>,
{
    pool: &'p Pool,
    f: F,
    input: I,
    chunk: usize,
    window: usize,
    ordered: bool,
    submitted: usize,
    received: usize,
    exhausted: bool,
    ready: VecDeque<Result<F::Output, TaskError>>,
    shared: Arc<ImapShared<F::Output>>,
    progress: Option<indicatif::ProgressBar>,
}

impl<F, I> fmt::Debug for Imap<'_, F, I>
where
    I: Iterator,
    F: TaskFn<(I::Item,)>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Imap")
            .field("chunk", &self.chunk)
            .field("in_flight", &(self.submitted - self.received))
            .field("ordered", &self.ordered)
            .finish_non_exhaustive()
    }
}

impl<F, A, I> Imap<'_, F, I>
where
    I: Iterator<Item = A>,
    F: TaskFn<(A,)>,
    A: Serialize + Send + 'static,
    F::Output: DeserializeOwned + Send + 'static,
{
    /// Chunks submitted and not yet yielded.
    pub fn in_flight(&self) -> usize {
        self.submitted - self.received
    }

    fn top_up(&mut self) {
        if !self.exhausted && self.pool.is_closed() {
            // Input left that the closed pool cannot take: one error, in
            // its place after the chunks already in flight, then the end
            // (rather than an endless input turned into endless errors).
            self.exhausted = true;
            if self.input.next().is_some() {
                let seq = self.submitted;
                self.submitted += 1;
                self.shared
                    .done
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .chunks
                    .insert(seq, vec![Err(TaskError::Closed)]);
            }
            return;
        }
        while !self.exhausted && self.submitted - self.received < self.window {
            let part: Vec<(A,)> = self.input.by_ref().take(self.chunk).map(|a| (a,)).collect();
            if part.is_empty() {
                self.exhausted = true;
                break;
            }
            let seq = self.submitted;
            self.submitted += 1;
            let shared = Arc::clone(&self.shared);
            let progress = self.progress.clone();
            let len = part.len();
            self.pool
                .submit_chunk(self.f, part, self.pool.timeout, move |results| {
                    if let Some(p) = &progress {
                        p.inc(len as u64);
                    }
                    let waiting = {
                        let mut done = shared.done.lock().unwrap_or_else(PoisonError::into_inner);
                        done.chunks.insert(seq, results.into_results());
                        done.waiting
                    };
                    // std's notify makes a system call even with nobody waiting.
                    if waiting {
                        shared.cv.notify_all();
                    }
                });
        }
    }
}

impl<F, A, I> Iterator for Imap<'_, F, I>
where
    I: Iterator<Item = A>,
    F: TaskFn<(A,)>,
    A: Serialize + Send + 'static,
    F::Output: DeserializeOwned + Send + 'static,
{
    type Item = Result<F::Output, TaskError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(r) = self.ready.pop_front() {
                return Some(r);
            }
            self.top_up();
            if let Some(r) = self.ready.pop_front() {
                return Some(r);
            }
            if self.received == self.submitted {
                if let Some(p) = &self.progress {
                    p.finish_and_clear();
                }
                return None;
            }
            let mut done = self
                .shared
                .done
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            loop {
                let key = if self.ordered {
                    done.chunks
                        .contains_key(&self.received)
                        .then_some(self.received)
                } else {
                    done.chunks.keys().next().copied()
                };
                if let Some(k) = key {
                    if let Some(v) = done.chunks.remove(&k) {
                        self.ready.extend(v);
                    }
                    self.received += 1;
                    done.waiting = false;
                    break;
                }
                done.waiting = true;
                done = self
                    .shared
                    .cv
                    .wait(done)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        }
    }
}
