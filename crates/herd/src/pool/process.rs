//! The process backend: worker processes fed through per-worker shared-memory
//! queues, one results queue back, and a manager thread that watches
//! results, deaths and deadlines.
//!
//! The parent knows exactly which jobs it sent to which worker (a FIFO per
//! worker), so when a worker dies it can tell what the worker had taken from
//! what it had not: the untaken jobs are still in the dead worker's queue
//! (shared memory the parent maps too) and are taken back and sent
//! elsewhere; a job the worker had taken without reporting is the one it
//! died running. See `DESIGN.md`, "Pools".

use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::result::TaskError;
use super::{Completion, Events, Job, JobResult, PoolError, TaskEvent, Work};
use crate::backoff::poll_briefly;
use crate::queue::{GetError, PutError, Queue, RawPut};
use crate::task::{PreparedTask, RunFailure, TaskEntry, encode, find_by_name};
use crate::{ExitStatus, Process, ProcessError, Signal, StartMethod, os};

/// Jobs sent ahead to one worker: enough that a worker never waits for the
/// manager between two tiny tasks; an idle worker takes back jobs still
/// queued elsewhere, so a long task never holds others hostage.
const DEPTH: usize = 8;
/// How often the manager looks for dead workers and expired deadlines while
/// results keep coming (and how long it sleeps without any).
const CHECK: Duration = Duration::from_millis(20);
/// How long a worker waits for its status after its pidfd said it ended.
const REAP: Duration = Duration::from_secs(2);
/// A worker enforces its job's timeout itself; the parent kills it only if
/// it is this much past the deadline without a word (a stopped worker).
const BACKSTOP: Duration = Duration::from_secs(1);
/// Workers that die before they are ready, in a row, before the pool gives
/// up on starting more (SIGKILLs, which may come from outside — an
/// operator, the OOM killer — count a quarter).
const EARLY_DEATHS: u32 = 3;
/// A worker silent this long while holding an untaken job gives it up to an
/// idle worker.
const SILENT: Duration = Duration::from_millis(100);

/// A job as it travels to a worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WireJob {
    id: u64,
    task: String,
    /// Report the start (for events and the parent's timeout backstop).
    notify: bool,
    /// The job's timeout, enforced by the worker.
    timeout: Option<Duration>,
    /// The encoded list of argument tuples.
    batch: ByteBuf,
}

impl WireJob {
    /// Back to a job the parent can send again (after a death or a steal).
    fn into_work(self) -> Work {
        match encode(&self) {
            Ok(bytes) => Work::Wire(bytes),
            // It decoded, so it encodes; keep the pieces if not.
            Err(_) => Work::Encoded {
                task: self.task,
                batch: self.batch.into_vec(),
            },
        }
    }
}

/// A message from a worker (or the parent itself) to the manager.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Msg {
    /// The worker ran its initializer (if any) and takes jobs now.
    Ready {
        pid: u32,
    },
    Started {
        pid: u32,
        id: u64,
    },
    Done {
        pid: u32,
        id: u64,
        outcome: Outcome,
    },
    /// The job ran past its timeout; the worker kills itself next.
    TimedOut {
        pid: u32,
        id: u64,
    },
    InitFailed {
        pid: u32,
        reason: String,
    },
    Wake,
}

/// How a job went, as a worker reports it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Outcome {
    /// Each item's encoded `Result<R, ItemFailure>`, and how many failed.
    Ran { results: ByteBuf, failed: u32 },
    /// The worker could not run the job (unknown task, undecodable arguments).
    Refused(String),
    /// The results were too large for one message.
    TooLarge(String),
}

/// What a worker process is started with.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WorkerArgs {
    tasks: Queue<WireJob>,
    results: Queue<Msg>,
    init: Option<InitCall>,
    max_jobs: u64,
}

/// Encodes an initializer's arguments.
pub(crate) type EncodeFn = Arc<dyn Fn() -> Result<Vec<u8>, String> + Send + Sync>;

/// The initializer call. In the parent: its name and an encoder, run while
/// the worker's own arguments are encoded, so that shared objects among
/// its arguments travel as file descriptors with them. In the worker: a
/// marker; the call itself was decoded while those descriptors were at hand
/// and waits in [`DECODED_INIT`] on the thread that decoded it (the worker's
/// main thread, which then runs it).
#[derive(Clone)]
pub(crate) enum InitCall {
    Outgoing {
        name: &'static str,
        encode: EncodeFn,
    },
    Incoming,
}

thread_local! {
    static DECODED_INIT: std::cell::RefCell<Option<Result<PreparedTask, String>>> =
        const { std::cell::RefCell::new(None) };
}

impl InitCall {
    pub(crate) fn new(name: &'static str, encode: EncodeFn) -> Self {
        Self::Outgoing { name, encode }
    }

    /// Runs the call decoded on this thread (in the worker).
    fn run() -> Result<(), String> {
        match DECODED_INIT.with(|d| d.borrow_mut().take()) {
            None => Err("internal: the initializer was not decoded on this thread".to_owned()),
            Some(Err(e)) => Err(e),
            Some(Ok(run)) => match run() {
                Ok(_) => Ok(()),
                Err(RunFailure::Panicked(r)) => Err(r.to_string()),
                Err(RunFailure::ResultEncode(e)) => Err(e),
            },
        }
    }
}

impl std::fmt::Debug for InitCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Outgoing { name, .. } => write!(f, "InitCall({name})"),
            Self::Incoming => f.write_str("InitCall(decoded)"),
        }
    }
}

impl Serialize for InitCall {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Outgoing { name, encode } => {
                let bytes = encode().map_err(serde::ser::Error::custom)?;
                (name, ByteBuf::from(bytes)).serialize(s)
            }
            Self::Incoming => Err(serde::ser::Error::custom(
                "a decoded initializer cannot travel",
            )),
        }
    }
}

impl<'de> Deserialize<'de> for InitCall {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (name, bytes) = <(String, ByteBuf)>::deserialize(d)?;
        let call = match find_by_name(&name) {
            Ok(Some(entry)) => (entry.prepare)(&bytes)
                .map_err(|e| format!("the initializer's arguments did not deserialize: {e}")),
            Ok(None) => Err(format!("no task named {name} in this build")),
            Err(()) => Err(format!("two tasks are named {name}")),
        };
        DECODED_INIT.with(|d| *d.borrow_mut() = Some(call));
        Ok(Self::Incoming)
    }
}

/// Runs one job in the worker.
fn run_job(cache: &mut HashMap<String, &'static TaskEntry>, task: &str, batch: &[u8]) -> Outcome {
    let entry = match cache.get(task) {
        Some(e) => *e,
        None => match find_by_name(task) {
            Ok(Some(e)) => {
                cache.insert(task.to_owned(), e);
                e
            }
            Ok(None) => return Outcome::Refused(format!("no task named {task} in this build")),
            Err(()) => return Outcome::Refused(format!("two tasks are named {task}")),
        },
    };
    match (entry.run_batch)(batch) {
        Err(reason) => Outcome::Refused(format!("arguments did not deserialize: {reason}")),
        Ok(run) => Outcome::Ran {
            results: ByteBuf::from(run.results),
            failed: u32::try_from(run.failed).unwrap_or(u32::MAX),
        },
    }
}

/// The worker's timeout watchdog: the job it runs and that job's deadline.
/// The watchdog thread reports an expired job and kills the worker's
/// process group while holding the lock, and the main thread disarms it
/// under the same lock before it reports a result, so a timeout can only
/// ever be charged to the job that overran, never to the next one.
struct Watchdog {
    armed: Mutex<Option<(u64, Instant)>>,
    cv: Condvar,
}

fn watch(dog: &Watchdog, results: &Queue<Msg>, pid: u32) {
    let mut armed = dog.armed.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        match *armed {
            None => armed = dog.cv.wait(armed).unwrap_or_else(PoisonError::into_inner),
            Some((id, deadline)) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    let _ = results.try_put(Msg::TimedOut { pid, id });
                    os::signal_own_group(Signal::KILL);
                    // Never disarm (a failed kill must not let the job's
                    // result through); the parent's backstop ends us.
                    loop {
                        std::thread::park();
                    }
                }
                armed = dog
                    .cv
                    .wait_timeout(armed, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
    }
}

/// The worker process's main loop.
fn pool_worker(args: WorkerArgs) {
    let pid = std::process::id();
    let mut cache = HashMap::new();
    if args.init.is_some()
        && let Err(reason) = InitCall::run()
    {
        let _ = args.results.put(Msg::InitFailed { pid, reason });
        return;
    }
    if args.results.put(Msg::Ready { pid }).is_err() {
        return;
    }
    let dog = Arc::new(Watchdog {
        armed: Mutex::new(None),
        cv: Condvar::new(),
    });
    let mut watching = false;
    let mut jobs = 0u64;
    loop {
        poll_briefly(|| !args.tasks.looks_empty() || args.tasks.is_closed());
        let job = match args.tasks.get() {
            Ok(j) => j,
            Err(GetError::Closed) => return,
            // A message that did not decode was taken off the queue; the
            // parent sees its job taken and unanswered when this worker
            // ends, which cannot happen with the parent's own encoder.
            Err(_) => continue,
        };
        if job.notify && args.results.put(Msg::Started { pid, id: job.id }).is_err() {
            return;
        }
        let deadline = job.timeout.and_then(|t| Instant::now().checked_add(t));
        if let Some(d) = deadline {
            if !watching {
                let (dog, results) = (Arc::clone(&dog), args.results.clone());
                watching = std::thread::Builder::new()
                    .name("herd-pool-watchdog".to_owned())
                    .spawn(move || watch(&dog, &results, pid))
                    .is_ok();
            }
            *dog.armed.lock().unwrap_or_else(PoisonError::into_inner) = Some((job.id, d));
            dog.cv.notify_all();
        }
        let outcome = run_job(&mut cache, &job.task, &job.batch);
        if deadline.is_some() {
            // Blocks if the watchdog is firing: this process dies then.
            *dog.armed.lock().unwrap_or_else(PoisonError::into_inner) = None;
        }
        let reply = Msg::Done {
            pid,
            id: job.id,
            outcome,
        };
        match args.results.put(reply) {
            Ok(()) => {}
            Err(PutError::TooLarge { size, limit, .. }) => {
                // Report it rather than lose the job.
                let reason =
                    format!("the results ({size} bytes) exceed the {limit}-byte message limit");
                let outcome = Outcome::TooLarge(reason);
                if args
                    .results
                    .put(Msg::Done {
                        pid,
                        id: job.id,
                        outcome,
                    })
                    .is_err()
                {
                    return;
                }
            }
            Err(_) => return,
        }
        jobs += 1;
        if args.max_jobs != 0 && jobs >= args.max_jobs {
            return;
        }
    }
}
crate::register_task!(pool_worker);

/// The process backend's settings.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) size: usize,
    pub(crate) init: Option<InitCall>,
    pub(crate) max_jobs: u64,
    pub(crate) notify: bool,
    pub(crate) events: Events,
    pub(crate) start_method: Option<StartMethod>,
}

/// A job sent to a worker, awaiting its result.
struct Flight {
    id: u64,
    items: usize,
    timeout: Option<Duration>,
    done: Completion,
}

/// One live worker process.
struct Worker {
    proc: Process<()>,
    pid: u32,
    tasks: Queue<WireJob>,
    inflight: VecDeque<Flight>,
    /// Jobs sent over its life (for `max_tasks_per_child`).
    sent: u64,
    /// The job it reported starting, and when.
    started: Option<(u64, Instant)>,
    /// It sent `Ready`.
    ready: bool,
    /// The job its watchdog reported over time.
    timed_out: Option<u64>,
    /// When it last sent a message (or was started).
    heard: Instant,
}

struct State {
    workers: Vec<Worker>,
    pending: VecDeque<Job>,
    /// Jobs submitted and not yet completed.
    outstanding: usize,
    closed: bool,
    terminated: bool,
    broken: Option<TaskError>,
    /// Workers that died before they were ready, in a row.
    early_deaths: u32,
    /// Workers being started (outside the lock).
    starting: usize,
    /// Threads waiting on `changed` (in `join`).
    joiners: usize,
    /// The manager has exited and every worker is gone.
    finished: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    results: Queue<Msg>,
    cfg: Config,
}

/// Completions to run once the state lock is released. Dropped with some
/// left (the manager unwinding), it fails them rather than leave their
/// callers waiting forever.
#[derive(Default)]
struct Ready(Vec<(Completion, JobResult)>);

impl Ready {
    fn new() -> Self {
        Self::default()
    }

    fn push(&mut self, item: (Completion, JobResult)) {
        self.0.push(item);
    }
}

impl Drop for Ready {
    fn drop(&mut self) {
        for (done, _) in self.0.drain(..) {
            let error = TaskError::Internal("the pool's manager failed".to_owned());
            let _ = catch_unwind(AssertUnwindSafe(move || {
                done.call(JobResult::Failed(error))
            }));
        }
    }
}

/// What a dead worker's status says about the job it was running.
fn death_error(pid: u32, status: Option<ExitStatus>) -> TaskError {
    match status {
        Some(ExitStatus::Signaled(signal)) => TaskError::WorkerKilled { pid, signal },
        Some(ExitStatus::Exited(code)) => TaskError::WorkerExited { pid, code },
        // The status was lost (an OS error): the worker is gone all the same.
        None => TaskError::WorkerExited { pid, code: -1 },
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn spawn_worker(&self) -> Result<Worker, TaskError> {
        let start_err = |e: String| TaskError::WorkerStart(e);
        let tasks: Queue<WireJob> = Queue::new().map_err(|e| start_err(e.to_string()))?;
        let args = WorkerArgs {
            tasks: tasks.clone(),
            results: self.results.clone(),
            init: self.cfg.init.clone(),
            max_jobs: self.cfg.max_jobs,
        };
        let mut builder = Process::builder(pool_worker, (args,))
            .name("herd-pool-worker")
            .daemon(true);
        if let Some(m) = self.cfg.start_method {
            builder = builder.start_method(m);
        }
        let proc = builder.start().map_err(|e| start_err(e.to_string()))?;
        Ok(Worker {
            pid: proc.pid(),
            proc,
            tasks,
            inflight: VecDeque::new(),
            sent: 0,
            started: None,
            ready: false,
            timed_out: None,
            heard: Instant::now(),
        })
    }

    /// Encodes a job for the wire (outside the state lock: it copies the
    /// arguments once more).
    fn wire(&self, job: Job) -> Job {
        let Work::Encoded { task, batch } = job.work else {
            return job;
        };
        let wire = WireJob {
            id: job.id,
            task,
            notify: self.cfg.notify || job.timeout.is_some(),
            timeout: job.timeout,
            batch: ByteBuf::from(batch),
        };
        Job {
            work: wire.into_work(),
            ..job
        }
    }

    /// Fails a job now (it never reached a worker).
    fn fail(&self, st: &mut State, ready: &mut Ready, id: u64, done: Completion, error: TaskError) {
        st.outstanding = st.outstanding.saturating_sub(1);
        self.cfg.events.emit(|| TaskEvent::Failed {
            id,
            worker_pid: None,
            error: error.clone(),
        });
        ready.push((done, JobResult::Failed(error)));
    }

    /// Sends `job` to worker `w` without ever blocking (the state lock is
    /// held); gives the job back if the worker's queue has no room.
    fn send(&self, st: &mut State, ready: &mut Ready, w: usize, job: Job) -> Option<Job> {
        let Work::Wire(bytes) = &job.work else {
            let error =
                TaskError::Refused("internal: an unencoded job reached a worker".to_owned());
            self.fail(st, ready, job.id, job.done, error);
            return None;
        };
        let worker = &mut st.workers[w];
        match worker.tasks.try_put_encoded(bytes) {
            Ok(()) => {
                if worker.inflight.is_empty() {
                    // Busy from now: its silence counts from here.
                    worker.heard = Instant::now();
                }
                worker.sent += 1;
                worker.inflight.push_back(Flight {
                    id: job.id,
                    items: job.items,
                    timeout: job.timeout,
                    done: job.done,
                });
                None
            }
            Err(RawPut::TooLarge) => {
                let error = TaskError::ArgsEncode(format!(
                    "the arguments ({} bytes) exceed a worker queue's message limit",
                    bytes.len()
                ));
                self.fail(st, ready, job.id, job.done, error);
                None
            }
            Err(RawPut::Full | RawPut::Timeout | RawPut::Closed) => Some(job),
        }
    }

    /// Whether worker `w` can take another job.
    fn has_room(&self, w: &Worker) -> bool {
        w.ready
            && w.timed_out.is_none()
            && w.inflight.len() < DEPTH
            && (self.cfg.max_jobs == 0 || w.sent < self.cfg.max_jobs)
    }

    /// Hands pending jobs to the least-loaded workers; an idle worker takes
    /// back a job still queued (not taken) at a busy one.
    fn dispatch(&self, st: &mut State, ready: &mut Ready) {
        let mut full: HashSet<u32> = HashSet::new();
        while !st.pending.is_empty() {
            let best = (0..st.workers.len())
                .filter(|&i| self.has_room(&st.workers[i]) && !full.contains(&st.workers[i].pid))
                .min_by_key(|&i| st.workers[i].inflight.len());
            let Some(w) = best else { break };
            let Some(job) = st.pending.pop_front() else {
                break;
            };
            if let Some(back) = self.send(st, ready, w, job) {
                st.pending.push_front(back);
                full.insert(st.workers[w].pid);
            }
        }
        if !st.pending.is_empty() {
            return;
        }
        for idle in 0..st.workers.len() {
            if !st.workers[idle].inflight.is_empty() || !self.has_room(&st.workers[idle]) {
                continue;
            }
            // A worker holding two or more jobs, or one that has said
            // nothing for a while (stopped, frozen): its untaken jobs are
            // better off at an idle worker. The oldest such job first (the
            // donor's queue gives up its oldest), so that jobs start in the
            // order they were submitted when workers come up one by one
            // (the seed's pool example started its fifth task before its
            // fourth now and then).
            let donor = (0..st.workers.len())
                .filter(|&i| {
                    let w = &st.workers[i];
                    i != idle
                        && !w.tasks.looks_empty()
                        && (w.inflight.len() >= 2 || w.heard.elapsed() >= SILENT)
                })
                .min_by_key(|&i| {
                    let w = &st.workers[i];
                    // Its first untaken job: the second in flight, unless
                    // it is silent with only one.
                    let first = usize::from(w.inflight.len() >= 2);
                    w.inflight.get(first).map_or(u64::MAX, |f| f.id)
                });
            let Some(d) = donor else { break };
            let Ok(wire) = st.workers[d].tasks.try_get() else {
                continue;
            };
            let Some(pos) = st.workers[d].inflight.iter().position(|f| f.id == wire.id) else {
                continue;
            };
            let Some(flight) = st.workers[d].inflight.remove(pos) else {
                continue;
            };
            st.workers[d].sent = st.workers[d].sent.saturating_sub(1);
            let job = Job {
                id: flight.id,
                items: flight.items,
                timeout: flight.timeout,
                done: flight.done,
                work: wire.into_work(),
            };
            if let Some(back) = self.send(st, ready, idle, job) {
                st.pending.push_front(back);
            }
        }
    }

    /// Handles one message from the results queue.
    fn handle(&self, st: &mut State, ready: &mut Ready, msg: Msg) {
        let from = match &msg {
            Msg::Ready { pid }
            | Msg::Started { pid, .. }
            | Msg::Done { pid, .. }
            | Msg::TimedOut { pid, .. }
            | Msg::InitFailed { pid, .. } => Some(*pid),
            Msg::Wake => None,
        };
        if let Some(w) = from.and_then(|pid| st.workers.iter_mut().find(|w| w.pid == pid)) {
            w.heard = Instant::now();
        }
        match msg {
            Msg::Wake => {}
            Msg::Ready { pid } => {
                if let Some(w) = st.workers.iter_mut().find(|w| w.pid == pid) {
                    w.ready = true;
                    st.early_deaths = 0;
                }
            }
            Msg::Started { pid, id } => {
                if let Some(w) = st.workers.iter_mut().find(|w| w.pid == pid) {
                    w.started = Some((id, Instant::now()));
                    self.cfg.events.emit(|| TaskEvent::Started {
                        id,
                        worker_pid: pid,
                    });
                }
            }
            Msg::TimedOut { pid, id } => {
                if let Some(w) = st.workers.iter_mut().find(|w| w.pid == pid) {
                    w.timed_out = Some(id);
                }
            }
            Msg::Done { pid, id, outcome } => {
                let Some(w) = st.workers.iter_mut().find(|w| w.pid == pid) else {
                    return;
                };
                let Some(pos) = w.inflight.iter().position(|f| f.id == id) else {
                    return;
                };
                let Some(flight) = w.inflight.remove(pos) else {
                    return;
                };
                if w.started.is_some_and(|(s, _)| s == id) {
                    w.started = None;
                }
                st.outstanding = st.outstanding.saturating_sub(1);
                let result = match outcome {
                    Outcome::Ran { results, failed } => JobResult::Encoded {
                        bytes: results.into_vec(),
                        items: flight.items,
                        failed: failed as usize,
                    },
                    Outcome::Refused(reason) => JobResult::Failed(TaskError::Refused(reason)),
                    Outcome::TooLarge(reason) => JobResult::Failed(TaskError::ResultEncode(reason)),
                };
                self.cfg.events.finished(id, pid, &result);
                ready.push((flight.done, result));
            }
            Msg::InitFailed { pid, reason } => {
                let _ = pid;
                st.broken = Some(TaskError::Initializer(reason));
            }
        }
    }

    /// Takes every message waiting in the results queue.
    fn drain(&self, st: &mut State, ready: &mut Ready) {
        loop {
            match self.results.try_get() {
                Ok(m) => self.handle(st, ready, m),
                Err(GetError::Decode(_)) => {}
                Err(_) => break,
            }
        }
    }

    /// Worker `w` has ended (or was killed): settles its jobs and removes it.
    fn bury(&self, st: &mut State, ready: &mut Ready, w: usize) {
        // Everything it reported before dying is in the results queue,
        // ahead of anything sent after its death.
        self.drain(st, ready);
        let mut worker = st.workers.swap_remove(w);
        let pid = worker.pid;
        let status = match worker.proc.join_timeout(REAP) {
            Ok(Some(())) => Some(ExitStatus::Exited(0)),
            Ok(None) => worker.proc.kill().ok(),
            Err(ProcessError::Signaled { signal, .. }) => Some(ExitStatus::Signaled(signal)),
            Err(ProcessError::ExitedWithoutResult { code, .. }) => Some(ExitStatus::Exited(code)),
            Err(_) => None,
        };
        if !worker.ready && !st.terminated {
            // Counted in quarters: a SIGKILL may come from outside (an
            // operator, the OOM killer) and weighs a quarter.
            let killed = matches!(status, Some(ExitStatus::Signaled(s)) if s == Signal::KILL);
            st.early_deaths += if killed { 1 } else { 4 };
            if st.early_deaths >= 4 * EARLY_DEATHS && st.broken.is_none() {
                let how = status.map_or("ended".to_owned(), |s| s.to_string());
                let text = format!("workers keep dying before they are ready (the last: {how})");
                st.broken = Some(if self.cfg.init.is_some() && !killed {
                    TaskError::Initializer(format!("{text}; the initializer crashes?"))
                } else {
                    TaskError::WorkerStart(text)
                });
            }
        }
        // What it had not taken is still in its queue.
        let mut untaken = HashMap::new();
        loop {
            match worker.tasks.try_get() {
                Ok(j) => {
                    untaken.insert(j.id, j);
                }
                Err(GetError::Decode(_)) => {}
                Err(_) => break,
            }
        }
        let mut requeue = Vec::new();
        for flight in worker.inflight.drain(..) {
            if let Some(wire) = untaken.remove(&flight.id) {
                requeue.push(Job {
                    id: flight.id,
                    items: flight.items,
                    timeout: flight.timeout,
                    done: flight.done,
                    work: wire.into_work(),
                });
                continue;
            }
            // Taken and unanswered: the job it died running.
            let overran = |after: Duration| {
                worker
                    .started
                    .is_some_and(|(id, since)| id == flight.id && since.elapsed() >= after)
            };
            let error = match (worker.timed_out, flight.timeout) {
                (Some(id), Some(after)) if id == flight.id => TaskError::TimedOut(after),
                // Its report was lost, but it was killed past its deadline.
                (None, Some(after)) if overran(after) => TaskError::TimedOut(after),
                _ => death_error(pid, status),
            };
            st.outstanding = st.outstanding.saturating_sub(1);
            self.cfg.events.emit(|| TaskEvent::Failed {
                id: flight.id,
                worker_pid: Some(pid),
                error: error.clone(),
            });
            ready.push((flight.done, JobResult::Failed(error)));
        }
        for job in requeue.into_iter().rev() {
            st.pending.push_front(job);
        }
    }

    /// Buries every worker whose pidfd says it ended.
    fn check_deaths(&self, st: &mut State, ready: &mut Ready) {
        let dead: Vec<u32> = {
            let fds: Vec<_> = st.workers.iter().map(|w| w.proc.pidfd()).collect();
            match os::wait_readable(&fds, Some(Instant::now())) {
                Ok(flags) => st
                    .workers
                    .iter()
                    .zip(flags)
                    .filter(|(_, dead)| *dead)
                    .map(|(w, _)| w.pid)
                    .collect(),
                Err(_) => Vec::new(),
            }
        };
        for pid in dead {
            if let Some(i) = st.workers.iter().position(|w| w.pid == pid) {
                self.bury(st, ready, i);
            }
        }
    }

    /// The backstop for timeouts: kills a worker whose started job is well
    /// past its deadline without its watchdog having acted (a stopped or
    /// frozen worker). Returns the next moment to look.
    fn check_deadlines(&self, st: &mut State, ready: &mut Ready) -> Option<Instant> {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let mut expired = Vec::new();
        for w in &st.workers {
            let Some((id, since)) = w.started else {
                continue;
            };
            let Some(t) = w
                .inflight
                .iter()
                .find(|f| f.id == id)
                .and_then(|f| f.timeout)
            else {
                continue;
            };
            let Some(limit) = since.checked_add(t).and_then(|d| d.checked_add(BACKSTOP)) else {
                continue;
            };
            if limit <= now {
                expired.push((w.pid, id));
            } else {
                next = Some(next.map_or(limit, |n| n.min(limit)));
            }
        }
        for (pid, id) in expired {
            if let Some(i) = st.workers.iter().position(|w| w.pid == pid) {
                let _ = st.workers[i].proc.kill();
                st.workers[i].timed_out = Some(id);
                self.bury(st, ready, i);
            }
        }
        next
    }

    /// Starts workers up to the pool's size while there is work to do. A
    /// start takes milliseconds (longer with a large initializer argument),
    /// so it happens without the state lock: the slots are reserved under
    /// it, the workers started outside it.
    fn replenish(&self) -> Ready {
        let mut ready = Ready::new();
        let want = {
            let mut st = self.lock();
            if st.terminated {
                return ready;
            }
            if let Some(error) = st.broken.clone() {
                while let Some(job) = st.pending.pop_front() {
                    self.fail(&mut st, &mut ready, job.id, job.done, error.clone());
                }
                return ready;
            }
            if st.closed && st.pending.is_empty() {
                return ready;
            }
            let want = self.cfg.size.saturating_sub(st.workers.len() + st.starting);
            st.starting += want;
            want
        };
        let mut started = Vec::with_capacity(want);
        let mut failure = None;
        for _ in 0..want {
            match self.spawn_worker() {
                Ok(w) => started.push(w),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let mut st = self.lock();
        st.starting -= want;
        if st.terminated {
            for w in &mut started {
                let _ = w.proc.kill();
            }
            return ready;
        }
        st.workers.extend(started);
        if let Some(error) = failure
            && st.workers.is_empty()
        {
            while let Some(job) = st.pending.pop_front() {
                self.fail(&mut st, &mut ready, job.id, job.done, error.clone());
            }
        }
        self.dispatch(&mut st, &mut ready);
        ready
    }

    /// Fails everything and stops (the manager could not go on).
    fn abandon(&self, error: &TaskError) {
        let mut ready = Ready::new();
        {
            let mut st = self.lock();
            st.terminated = true;
            st.closed = true;
            let mut workers = std::mem::take(&mut st.workers);
            for w in &mut workers {
                let _ = w.proc.kill();
                for f in w.inflight.drain(..) {
                    self.fail(&mut st, &mut ready, f.id, f.done, error.clone());
                }
            }
            while let Some(job) = st.pending.pop_front() {
                self.fail(&mut st, &mut ready, job.id, job.done, error.clone());
            }
            st.finished = true;
        }
        run_ready(ready);
        self.changed.notify_all();
    }
}

fn run_ready(mut ready: Ready) {
    for (done, result) in ready.0.drain(..) {
        // A completion runs the caller's `Deserialize`; a panic there must
        // not take the manager down (the completion reports it itself).
        let _ = catch_unwind(AssertUnwindSafe(move || done.call(result)));
    }
}

/// The manager thread.
fn manage(shared: &Shared) {
    let run = catch_unwind(AssertUnwindSafe(|| manage_loop(shared)));
    if let Err(p) = run {
        let report = crate::PanicReport::from_payload(&*p);
        shared.abandon(&TaskError::Internal(format!("the pool's manager {report}")));
    }
}

fn manage_loop(shared: &Shared) {
    let mut last_check = Instant::now();
    let mut next_deadline: Option<Instant> = None;
    loop {
        let wait = next_deadline.map_or(CHECK, |d| {
            d.saturating_duration_since(Instant::now()).min(CHECK)
        });
        poll_briefly(|| !shared.results.looks_empty());
        let msg = shared.results.get_timeout(wait).ok();
        let idle = msg.is_none();
        let mut ready = Ready::new();
        let mut st = shared.lock();
        if st.terminated {
            break;
        }
        if let Some(m) = msg {
            shared.handle(&mut st, &mut ready, m);
            shared.drain(&mut st, &mut ready);
        }
        if idle
            || last_check.elapsed() >= CHECK
            || next_deadline.is_some_and(|d| d <= Instant::now())
            || st.workers.iter().any(|w| w.timed_out.is_some())
        {
            shared.check_deaths(&mut st, &mut ready);
            next_deadline = shared.check_deadlines(&mut st, &mut ready);
            last_check = Instant::now();
        }
        shared.dispatch(&mut st, &mut ready);
        let short = !st.closed && st.workers.len() + st.starting < shared.cfg.size
            || !st.pending.is_empty();
        let done = st.closed && st.outstanding == 0 && st.pending.is_empty();
        let leaving = if done {
            std::mem::take(&mut st.workers)
        } else {
            Vec::new()
        };
        // std's notify makes a system call even with nobody waiting.
        let joiners = st.joiners > 0;
        drop(st);
        run_ready(ready);
        if short {
            run_ready(shared.replenish());
        }
        if done {
            // Out of the lock: each may take a moment to exit.
            for mut w in leaving {
                w.tasks.close();
                if !matches!(w.proc.join_timeout(REAP), Ok(Some(()))) {
                    let _ = w.proc.kill();
                }
            }
            shared.lock().finished = true;
        }
        if joiners || done {
            shared.changed.notify_all();
        }
        if done {
            return;
        }
    }
}

/// The process backend.
pub(crate) struct Engine {
    shared: Arc<Shared>,
    manager: Mutex<Option<JoinHandle<()>>>,
}

impl Engine {
    pub(crate) fn new(cfg: Config) -> Result<Self, PoolError> {
        let results = Queue::new().map_err(|e| PoolError::WorkerStart(e.to_string()))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                workers: Vec::new(),
                pending: VecDeque::new(),
                outstanding: 0,
                closed: false,
                terminated: false,
                broken: None,
                early_deaths: 0,
                starting: 0,
                joiners: 0,
                finished: false,
            }),
            changed: Condvar::new(),
            results,
            cfg,
        });
        let kill_all = |shared: &Shared| {
            for w in &mut shared.lock().workers {
                let _ = w.proc.kill();
            }
        };
        for _ in 0..shared.cfg.size {
            match shared.spawn_worker() {
                Ok(w) => shared.lock().workers.push(w),
                Err(e) => {
                    kill_all(&shared);
                    return Err(PoolError::WorkerStart(e.to_string()));
                }
            }
        }
        let for_thread = Arc::clone(&shared);
        let manager = match std::thread::Builder::new()
            .name("herd-pool-manager".to_owned())
            .spawn(move || manage(&for_thread))
        {
            Ok(m) => m,
            Err(e) => {
                kill_all(&shared);
                return Err(PoolError::WorkerStart(e.to_string()));
            }
        };
        Ok(Self {
            shared,
            manager: Mutex::new(Some(manager)),
        })
    }

    pub(crate) fn worker_pids(&self) -> Vec<u32> {
        self.shared.lock().workers.iter().map(|w| w.pid).collect()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }

    pub(crate) fn submit(&self, job: Job) {
        let shared = &*self.shared;
        let job = shared.wire(job);
        let mut ready = Ready::new();
        let mut st = shared.lock();
        shared.cfg.events.emit(|| TaskEvent::Submitted {
            id: job.id,
            items: job.items,
        });
        st.outstanding += 1;
        if st.closed {
            shared.fail(&mut st, &mut ready, job.id, job.done, TaskError::Closed);
        } else if let Some(error) = st.broken.clone() {
            shared.fail(&mut st, &mut ready, job.id, job.done, error);
        } else {
            st.pending.push_back(job);
            shared.dispatch(&mut st, &mut ready);
            if !st.pending.is_empty() && st.workers.len() < shared.cfg.size {
                // The manager starts workers.
                let _ = shared.results.try_put(Msg::Wake);
            }
        }
        drop(st);
        run_ready(ready);
    }

    pub(crate) fn close(&self) {
        let mut st = self.shared.lock();
        st.closed = true;
        drop(st);
        let _ = self.shared.results.try_put(Msg::Wake);
    }

    pub(crate) fn join(&self, deadline: Option<Instant>) -> Result<(), PoolError> {
        {
            let mut st = self.shared.lock();
            if !st.closed {
                return Err(PoolError::NotClosed);
            }
            st.joiners += 1;
            let r = self.join_locked(st, deadline);
            self.shared.lock().joiners -= 1;
            r?;
        }
        if let Some(h) = self
            .manager
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = h.join();
        }
        Ok(())
    }

    fn join_locked(
        &self,
        st: MutexGuard<'_, State>,
        deadline: Option<Instant>,
    ) -> Result<(), PoolError> {
        if super::wait_for(&self.shared.changed, st, deadline, |st| st.finished) {
            Ok(())
        } else {
            Err(PoolError::Timeout)
        }
    }

    pub(crate) fn terminate(&self) {
        let shared = &*self.shared;
        if shared.lock().finished {
            return;
        }
        shared.abandon(&TaskError::Terminated);
        let _ = shared.results.try_put(Msg::Wake);
        if let Some(h) = self
            .manager
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = h.join();
        }
    }
}
