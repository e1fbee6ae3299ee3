//! The distributed commands: `herd serve` (the embedded manager),
//! `herd submit` / `herd run --workers` (queue jobs, collect results) and
//! `herd worker` (take jobs, run them, send results back).
//!
//! Jobs go to the manager's queue `herd.jobs`; each batch's results come
//! back on its own queue `herd.results.<batch>`. A worker takes a job
//! under a lease it renews while the job runs; a worker that dies (or
//! loses its connection) gives the lease back and the job runs again on
//! another worker — nothing is lost. A job whose workers died three times
//! is reported as failed rather than tried forever. The submitter counts
//! each job once (a late duplicate of a job that ran twice is dropped)
//! and does the run's bookkeeping — order, retries (on any worker), the
//! joblog with each job's host, `--halt`, the exit status — as `herd run`
//! does locally.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use herd::manager::{Client, Delivery, Manager};
use rustix::event::{PollFd, PollFlags};
use rustix::process::{Pid, Signal};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::guard::Guardian;
use crate::output::{FilePool, note};
use crate::run::{self, Books, Captured, Outcome, Plan, Signals, Timeout, Verdict, When};
use crate::template::Prepared;
use crate::{CliError, JobArgs, KeyArgs, registry};

/// The queue jobs wait on.
const JOBS: &str = "herd.jobs";
/// A worker's lease on a job, renewed every [`TICK`] while it runs.
const LEASE: Duration = Duration::from_secs(30);
/// How often a worker renews its lease and looks for a halt.
const TICK: Duration = Duration::from_secs(1);
/// A job delivered this often had its workers die each time: it is
/// reported as failed instead of run again.
const MAX_DELIVERIES: u32 = 3;
/// The most of a job's output (stdout and stderr together) a worker sends
/// back; the rest is cut, with a note.
const MAX_OUTPUT: u64 = 16 << 20;
/// Jobs per `put_many`.
const BATCH_PUT: usize = 256;

fn results_queue(batch: &str) -> String {
    format!("herd.results.{batch}")
}

fn halt_key(batch: &str) -> String {
    format!("herd.halt.{batch}")
}

fn meta_key(batch: &str) -> String {
    format!("herd.batch.{batch}")
}

/// A command as it crosses the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum WireCommand {
    Direct(Vec<ByteBuf>),
    Shell(ByteBuf),
}

impl From<&Prepared> for WireCommand {
    fn from(p: &Prepared) -> Self {
        match p {
            Prepared::Direct(argv) => {
                Self::Direct(argv.iter().cloned().map(ByteBuf::from).collect())
            }
            Prepared::Shell(line) => Self::Shell(ByteBuf::from(line.clone())),
        }
    }
}

impl WireCommand {
    fn prepared(&self) -> Prepared {
        match self {
            Self::Direct(argv) => Prepared::Direct(argv.iter().map(|a| a.to_vec()).collect()),
            Self::Shell(line) => Prepared::Shell(line.to_vec()),
        }
    }
}

/// One job on the queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct JobMsg {
    batch: String,
    seq: u64,
    attempt: u32,
    command: WireCommand,
    timeout_ms: Option<u64>,
}

/// A job's result, on its batch's results queue.
#[derive(Debug, Serialize, Deserialize)]
struct ResultMsg {
    seq: u64,
    attempt: u32,
    host: String,
    command: WireCommand,
    timeout_ms: Option<u64>,
    start_ms: u64,
    runtime_us: u64,
    exitval: i32,
    signal: i32,
    stdout: ByteBuf,
    stderr: ByteBuf,
    note: Option<String>,
    /// Not run: its batch halted first.
    cancelled: bool,
}

/// What a batch's submitter leaves for a later `--collect`.
#[derive(Debug, Serialize, Deserialize)]
struct BatchMeta {
    jobs: u64,
}

/// Whether `submit` waits for the results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    Yes,
    No,
}

fn connect(addr: &str, key: &KeyArgs) -> Result<Client, CliError> {
    let key = key.resolve()?;
    Ok(Client::builder(addr, &key)
        .reconnect_for(Duration::from_secs(60))
        .lease(LEASE)
        .connect()?)
}

/// `herd serve`: a manager on `bind` until SIGINT or SIGTERM.
pub(crate) fn serve(
    bind: &str,
    key: &KeyArgs,
    persist: Option<&std::path::Path>,
) -> Result<ExitCode, CliError> {
    let key = key.resolve()?;
    let signals = Signals::install()?;
    let mut builder = Manager::builder(&key);
    if let Some(path) = persist {
        builder = builder.persist(path);
    }
    let manager = builder.start(bind)?;
    let addr = manager.addr().to_string();
    let _registration = registry::register("serve", &addr);
    note(&format!("serving on {addr}"));
    let sig = wait_signal(&signals);
    manager.shutdown();
    Ok(ExitCode::from((128 + sig).clamp(0, 255) as u8))
}

/// Blocks until a signal arrives; returns it.
fn wait_signal(signals: &Signals) -> i32 {
    loop {
        let mut fds = [PollFd::from_borrowed_fd(signals.fd(), PollFlags::IN)];
        let _ = rustix::event::poll(&mut fds, None);
        if let Some(sig) = signals.take() {
            return sig;
        }
    }
}

fn new_batch() -> String {
    let mut bytes = [0u8; 8];
    if getrandom(&mut bytes).is_err() {
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        bytes = (t ^ (u64::from(std::process::id()) << 32)).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// `herd submit` and `herd run --workers`: queue the jobs, then (unless
/// `--no-wait`) collect their results.
pub(crate) fn run_remote(
    addr: &str,
    key: &KeyArgs,
    args: JobArgs,
    wait: Wait,
) -> Result<ExitCode, CliError> {
    let mut plan = Plan::new(args)?;
    if plan.dry_run {
        return run::dry_run(plan);
    }
    let timeout_ms = match plan.timeout {
        None => None,
        Some(Timeout::Fixed(d)) => Some(d.as_millis().max(1) as u64),
        Some(Timeout::Median(_)) => {
            return Err(CliError::Usage(
                "--timeout N% needs the run times of jobs run here; give seconds for workers"
                    .into(),
            ));
        }
    };
    let client = connect(addr, key)?;
    let signals = Signals::install()?;
    let batch = new_batch();
    let _registration = registry::register("submit", &format!("batch {batch} to {addr}"));
    let mut books = Books::new(&mut plan);
    let jobs = client.queue::<JobMsg>(JOBS);
    let mut outstanding: HashMap<u64, u32> = HashMap::new();
    let mut chunk = Vec::with_capacity(BATCH_PUT);
    let mut seq = 0u64;
    let mut submitted = 0u64;
    for tuple in plan.inputs.by_ref() {
        let tuple = tuple?;
        seq += 1;
        if plan.skip.contains(&seq) {
            books.skip(seq);
            continue;
        }
        let slot = ((seq - 1) % plan.jobs as u64) as usize + 1;
        chunk.push(JobMsg {
            batch: batch.clone(),
            seq,
            attempt: 1,
            command: WireCommand::from(&plan.template.render(&tuple, seq, slot)),
            timeout_ms,
        });
        outstanding.insert(seq, 1);
        submitted += 1;
        if chunk.len() == BATCH_PUT {
            jobs.put_many(&chunk)?;
            chunk.clear();
        }
    }
    if !chunk.is_empty() {
        jobs.put_many(&chunk)?;
    }
    client.set_result(&meta_key(&batch), &BatchMeta { jobs: submitted })?;
    if wait == Wait::No {
        println!("{batch}");
        return Ok(ExitCode::SUCCESS);
    }
    collect_into(&client, &batch, &mut books, outstanding, &signals)
}

/// `herd submit --collect BATCH`.
pub(crate) fn collect(
    addr: &str,
    key: &KeyArgs,
    batch: &str,
    args: JobArgs,
) -> Result<ExitCode, CliError> {
    let client = connect(addr, key)?;
    let signals = Signals::install()?;
    let meta: BatchMeta = client
        .wait_result(&meta_key(batch), Duration::ZERO)?
        .ok_or_else(|| CliError::Usage(format!("no batch {batch} on {addr}")))?;
    let halt = run::parse_halt(&args.halt)?;
    let joblog = match &args.joblog {
        Some(p) => Some(crate::joblog::JobLog::open(p, false)?),
        None => None,
    };
    let mut books = Books::with(
        args.keep_order,
        args.retries,
        halt,
        joblog,
        args.bar,
        Some(meta.jobs),
    );
    // Job numbers are 1..; any not yet final is outstanding (its attempt
    // unknown here: the first result of any attempt counts).
    let outstanding = (1..=meta.jobs).map(|s| (s, 0)).collect();
    collect_into(&client, batch, &mut books, outstanding, &signals)
}

fn collect_into(
    client: &Client,
    batch: &str,
    books: &mut Books,
    mut outstanding: HashMap<u64, u32>,
    signals: &Signals,
) -> Result<ExitCode, CliError> {
    let results = client.queue::<ResultMsg>(&results_queue(batch));
    let jobs = client.queue::<JobMsg>(JOBS);
    let mut halt_sent = false;
    while !outstanding.is_empty() {
        if let Some(sig) = signals.take() {
            client.set_result(&halt_key(batch), &"now")?;
            books.close();
            note(&format!(
                "stopped by signal {sig}; the batch's queued jobs are cancelled"
            ));
            return Ok(ExitCode::from((128 + sig).clamp(0, 255) as u8));
        }
        let got = results.get_many(256, Duration::from_millis(500), LEASE)?;
        let mut done = Vec::with_capacity(got.len());
        for d in got {
            let Delivery { .. } = &d;
            handle_result(&d.value, books, &mut outstanding, &jobs, batch)?;
            done.push(d);
        }
        if !done.is_empty() {
            client.ack_many(done)?;
        }
        if let Some((when, _)) = books.halted
            && !halt_sent
        {
            halt_sent = true;
            let how = if when == When::Now { "now" } else { "soon" };
            client.set_result(&halt_key(batch), &how)?;
        }
        if books.stdout_gone {
            client.set_result(&halt_key(batch), &"now")?;
            break;
        }
    }
    books.close();
    Ok(books.exit_code())
}

fn handle_result(
    r: &ResultMsg,
    books: &mut Books,
    outstanding: &mut HashMap<u64, u32>,
    jobs: &herd::manager::RemoteQueue<JobMsg>,
    batch: &str,
) -> Result<(), CliError> {
    match outstanding.get(&r.seq) {
        // A late duplicate of a job already counted, or of an attempt
        // already retried.
        None => return Ok(()),
        Some(&attempt) if attempt != 0 && attempt != r.attempt => return Ok(()),
        Some(_) => {}
    }
    if r.cancelled {
        outstanding.remove(&r.seq);
        return Ok(());
    }
    let outcome = Outcome {
        seq: r.seq,
        command: r.command.prepared().display(),
        host: r.host.clone(),
        start: SystemTime::UNIX_EPOCH + Duration::from_millis(r.start_ms),
        runtime: Duration::from_micros(r.runtime_us),
        send: 0,
        receive: (r.stdout.len() + r.stderr.len()) as u64,
        exitval: r.exitval,
        signal: r.signal,
        captured: Captured::Bytes {
            out: r.stdout.to_vec(),
            err: r.stderr.to_vec(),
        },
        note: r.note.clone(),
    };
    match books.finish(outcome, r.attempt.max(1)) {
        Verdict::Final => {
            outstanding.remove(&r.seq);
        }
        Verdict::Retry => {
            let attempt = r.attempt.max(1) + 1;
            outstanding.insert(r.seq, attempt);
            jobs.put(&JobMsg {
                batch: batch.to_owned(),
                seq: r.seq,
                attempt,
                command: r.command.clone(),
                timeout_ms: r.timeout_ms,
            })?;
        }
    }
    Ok(())
}

/// `herd worker`: `jobs` threads, each taking jobs from the manager and
/// running them, until killed (or `max_jobs` ran).
pub(crate) fn worker(
    addr: &str,
    key: &KeyArgs,
    jobs: Option<&str>,
    max_jobs: Option<u64>,
    name: Option<String>,
) -> Result<ExitCode, CliError> {
    let n = run::parse_jobs(jobs)?;
    // First, while the worker has one thread (a NATS client starts
    // several): the guardian, which kills the jobs if the worker dies.
    let guardian =
        Arc::new(Guardian::start(n).map_err(|e| CliError::io("starting the guardian process", e))?);
    let host = name.unwrap_or_else(hostname);
    let signals = Signals::install()?;
    let _registration = registry::register("worker", &format!("{host} for {addr}"));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::with_capacity(n);
    for slot in 0..n {
        let client = connect(addr, key)?;
        let ctx = WorkerCtx {
            client,
            host: host.clone(),
            stop: Arc::clone(&stop),
            started: Arc::clone(&started),
            guardian: Arc::clone(&guardian),
            slot,
            max_jobs,
        };
        threads.push(
            std::thread::Builder::new()
                .name("herd-worker".into())
                .spawn(move || ctx.serve())
                .map_err(|e| CliError::io("starting a worker thread", e))?,
        );
    }
    note(&format!("worker {host}: {n} at once, jobs from {addr}"));
    // The signal watcher: sets `stop`; the threads see it within a tick.
    let watcher_stop = Arc::clone(&stop);
    let signal_seen = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&signal_seen);
    std::thread::Builder::new()
        .name("herd-signals".into())
        .spawn(move || {
            let sig = wait_signal(&signals);
            seen.store(sig as u64, Ordering::SeqCst);
            watcher_stop.store(true, Ordering::SeqCst);
        })
        .map_err(|e| CliError::io("starting the signal thread", e))?;
    let mut first_error = None;
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                stop.store(true, Ordering::SeqCst);
                first_error.get_or_insert(e);
            }
            Err(_) => {
                first_error.get_or_insert(CliError::Usage("a worker thread panicked".into()));
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    match signal_seen.load(Ordering::SeqCst) {
        0 => Ok(ExitCode::SUCCESS),
        s => Ok(ExitCode::from((128 + s).min(255) as u8)),
    }
}

fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

struct WorkerCtx {
    client: Client,
    host: String,
    stop: Arc<AtomicBool>,
    started: Arc<AtomicU64>,
    max_jobs: Option<u64>,
    guardian: Arc<Guardian>,
    /// This thread's slot in the guardian's table.
    slot: usize,
}

impl WorkerCtx {
    fn serve(self) -> Result<(), CliError> {
        let jobs = self.client.queue::<JobMsg>(JOBS);
        let mut pool = FilePool::new();
        while !self.stop.load(Ordering::SeqCst) {
            if let Some(max) = self.max_jobs
                && self.started.load(Ordering::SeqCst) >= max
            {
                break;
            }
            let Some(d) = jobs.get_leased(Duration::from_millis(500), LEASE)? else {
                continue;
            };
            if let Some(max) = self.max_jobs
                && self.started.fetch_add(1, Ordering::SeqCst) >= max
            {
                d.nack()?;
                break;
            }
            let result = if d.deliveries > MAX_DELIVERIES {
                Some(self.gave_up(&d.value, d.deliveries))
            } else {
                self.execute(&d, &mut pool)?
            };
            match result {
                Some(r) => {
                    self.client
                        .queue::<ResultMsg>(&results_queue(&d.value.batch))
                        .put(&r)?;
                    match d.ack() {
                        Ok(()) | Err(herd::manager::ManagerError::LeaseLost(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                // Stopped, or the lease was lost: it runs elsewhere.
                None => {
                    let _ = d.nack();
                }
            }
        }
        Ok(())
    }

    /// A result for `job` from this worker, starting now, with nothing
    /// run yet.
    fn blank_result(&self, job: &JobMsg) -> ResultMsg {
        ResultMsg {
            seq: job.seq,
            attempt: job.attempt,
            host: self.host.clone(),
            command: job.command.clone(),
            timeout_ms: job.timeout_ms,
            start_ms: now_ms(),
            runtime_us: 0,
            exitval: 0,
            signal: 0,
            stdout: ByteBuf::new(),
            stderr: ByteBuf::new(),
            note: None,
            cancelled: false,
        }
    }

    fn gave_up(&self, job: &JobMsg, deliveries: u32) -> ResultMsg {
        ResultMsg {
            exitval: 255,
            note: Some(format!(
                "job {} was delivered {deliveries} times and its worker stopped each time; not run again",
                job.seq
            )),
            ..self.blank_result(job)
        }
    }

    fn halted(&self, batch: &str) -> Result<Option<String>, CliError> {
        Ok(self
            .client
            .wait_result::<String>(&halt_key(batch), Duration::ZERO)?)
    }

    /// Runs one job; `None` when it must run elsewhere (this worker is
    /// stopping, or lost the lease).
    fn execute(
        &self,
        d: &Delivery<JobMsg>,
        pool: &mut FilePool,
    ) -> Result<Option<ResultMsg>, CliError> {
        let job = &d.value;
        let mut result = self.blank_result(job);
        if self.halted(&job.batch)?.is_some() {
            result.cancelled = true;
            return Ok(Some(result));
        }
        let prepared = job.command.prepared();
        let mut cmd = run::command(&prepared);
        cmd.env(registry::SEQ_ENV, job.seq.to_string())
            .env(registry::RUN_ENV, std::process::id().to_string());
        let mut pair = pool
            .take()
            .map_err(|e| CliError::io("creating output files", e))?;
        let files = pair
            .out
            .try_clone()
            .and_then(|o| Ok((o, pair.err.try_clone()?)))
            .map_err(|e| CliError::io("creating output files", e))?;
        cmd.stdout(files.0).stderr(files.1);
        let start = Instant::now();
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let (code, msg) = run::spawn_failure(&prepared, &e);
                result.exitval = code;
                result.note = Some(msg);
                pool.give_back(pair);
                return Ok(Some(result));
            }
        };
        drop(cmd);
        self.guardian.watch(self.slot, child.id());
        let pidfd = match rustix::process::pidfd_open(
            Pid::from_child(&child),
            rustix::process::PidfdFlags::empty(),
        ) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = rustix::process::kill_process_group(Pid::from_child(&child), Signal::KILL);
                let _ = child.wait();
                self.guardian.release(self.slot);
                pool.give_back(pair);
                return Err(CliError::io("watching a job", e.into()));
            }
        };
        let deadline = job.timeout_ms.map(|ms| start + Duration::from_millis(ms));
        let mut kill_at: Option<Instant> = None;
        let mut timed_out = false;
        let mut next_tick = start + TICK;
        let mut abandon = false;
        let status = loop {
            let now = Instant::now();
            let wake = [Some(next_tick), deadline.filter(|_| !timed_out), kill_at]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(next_tick);
            let d_left = wake.saturating_duration_since(now);
            let ts = rustix::event::Timespec {
                tv_sec: d_left.as_secs() as i64,
                tv_nsec: d_left.subsec_nanos() as i64,
            };
            let mut fds = [PollFd::from_borrowed_fd(pidfd.as_fd(), PollFlags::IN)];
            let _ = rustix::event::poll(&mut fds, Some(&ts));
            if let Ok(Some(status)) = child.try_wait() {
                break status;
            }
            let now = Instant::now();
            let group = Pid::from_child(&child);
            if let Some(k) = kill_at
                && now >= k
            {
                let _ = rustix::process::kill_process_group(group, Signal::KILL);
                kill_at = None;
            }
            if let Some(dl) = deadline
                && !timed_out
                && now >= dl
            {
                timed_out = true;
                let _ = rustix::process::kill_process_group(group, Signal::TERM);
                kill_at = Some(now + Duration::from_millis(200));
            }
            if now >= next_tick {
                next_tick = now + TICK;
                let stopping = self.stop.load(Ordering::SeqCst);
                let lease_lost = matches!(
                    d.heartbeat(LEASE),
                    Err(herd::manager::ManagerError::LeaseLost(_))
                );
                // Not `?`: returning here would leave the job running,
                // unwatched and unreaped. A manager that stays away
                // fails the result's `put` once the job is done.
                let halted_now = matches!(self.halted(&job.batch), Ok(Some(h)) if h == "now");
                if (stopping || lease_lost || halted_now) && kill_at.is_none() {
                    abandon = stopping || lease_lost;
                    let _ = rustix::process::kill_process_group(group, Signal::TERM);
                    kill_at = Some(now + Duration::from_millis(200));
                }
            }
        };
        // A process left in the job's group may still write to its files:
        // not to be recycled into another job's output.
        if rustix::process::test_kill_process_group(Pid::from_child(&child)).is_ok() {
            pair.keep_from_reuse();
        }
        self.guardian.release(self.slot);
        result.runtime_us = start.elapsed().as_micros() as u64;
        let (exitval, signal) = run::exit_parts(status);
        result.exitval = exitval;
        result.signal = signal;
        if timed_out {
            result.note = Some(format!(
                "job {} timed out after {:.3} s on {}",
                job.seq,
                start.elapsed().as_secs_f64(),
                self.host
            ));
        }
        let (out, cut_out) = pair.read_out(MAX_OUTPUT);
        let (err, cut_err) = pair.read_err(MAX_OUTPUT.saturating_sub(out.len() as u64));
        pool.give_back(pair);
        if cut_out || cut_err {
            let msg = format!(
                "job {}'s output was cut at {} MiB",
                job.seq,
                MAX_OUTPUT >> 20
            );
            result.note = Some(match result.note.take() {
                Some(n) => format!("{n}; {msg}"),
                None => msg,
            });
        }
        result.stdout = ByteBuf::from(out);
        result.stderr = ByteBuf::from(err);
        if abandon {
            return Ok(None);
        }
        Ok(Some(result))
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
