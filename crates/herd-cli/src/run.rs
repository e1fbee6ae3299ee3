//! `herd run`: the local engine, and the bookkeeping (order, retries,
//! halting, the joblog, the progress bar, the exit status) that the
//! distributed run shares.
//!
//! One thread does everything: it starts jobs up to the limit, then waits
//! in one `poll` on every running job's pidfd (and, line-buffered, its
//! pipes), the signal pipe, and the nearest deadline. No thread per job,
//! no `SIGCHLD` handler, no busy wait.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rustix::event::{PollFd, PollFlags};
use rustix::process::{Pid, Signal};

use crate::guard::Guardian;
use crate::input::{Inputs, Next, Tuple};
use crate::joblog::{self, Entry, JobLog};
use crate::output::{self, FilePair, FilePool, LinePipe};
use crate::template::{Prepared, Template};
use crate::{CliError, JobArgs, cmdline, registry};

/// How long a job told to stop (SIGTERM) has before SIGKILL.
const GRACE: Duration = Duration::from_millis(200);

/// Finished jobs held back for `-k` before no new job starts (each holds
/// two temporary files).
const MAX_HELD: usize = 512;

/// Where the jobs' output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutputMode {
    Group,
    Line,
    Ungroup,
}

/// `--timeout`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Timeout {
    Fixed(Duration),
    /// A percentage of the median run time of the jobs finished so far
    /// (from the third on).
    Median(f64),
}

/// When `--halt` acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum When {
    /// Kill the running jobs.
    Now,
    /// Let the running jobs finish; start no more.
    Soon,
}

/// What `--halt` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counted {
    Fail,
    Success,
    Done,
}

/// `--halt`: none, or when to stop after how many of what.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Halt {
    pub(crate) when: When,
    pub(crate) counted: Counted,
    /// A count, or a percentage of all jobs.
    pub(crate) count: Threshold,
}

/// A `--halt` threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Threshold {
    Jobs(u64),
    Percent(f64),
}

/// Everything `herd run` and `herd submit` were asked, checked.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) template: Template,
    pub(crate) inputs: Inputs,
    pub(crate) jobs: usize,
    pub(crate) keep_order: bool,
    pub(crate) output: OutputMode,
    pub(crate) retries: u32,
    pub(crate) timeout: Option<Timeout>,
    pub(crate) halt: Option<Halt>,
    pub(crate) bar: bool,
    pub(crate) dry_run: bool,
    pub(crate) joblog: Option<JobLog>,
    /// From `--resume`/`--resume-failed`: job numbers not to run again.
    pub(crate) skip: std::collections::HashSet<u64>,
    /// The command as given, for `herd ps`.
    pub(crate) describe: String,
}

impl Plan {
    /// Checks the arguments and opens the inputs and the joblog.
    pub(crate) fn new(args: JobArgs) -> Result<Self, CliError> {
        let split = cmdline::split(&args.command, &args.arg_files)?;
        let arity = split.sources.len().max(1);
        let template = Template::parse(&split.command, arity)?;
        let jobs = parse_jobs(args.jobs.as_deref())?;
        let timeout = args.timeout.as_deref().map(parse_timeout).transpose()?;
        let halt = parse_halt(&args.halt)?;
        if args.keep_order && args.line_buffer {
            return Err(CliError::Usage(
                "--line-buffer passes lines on as they come; with -k, use the default grouped output"
                    .into(),
            ));
        }
        if args.retries == 0 {
            return Err(CliError::Usage(
                "--retries counts runs in all: at least 1".into(),
            ));
        }
        let mut inputs = Inputs::open(&split.sources, if args.null { b'\0' } else { b'\n' })?;
        if args.bar
            || matches!(
                halt,
                Some(Halt {
                    count: Threshold::Percent(_),
                    ..
                })
            )
        {
            inputs.materialize()?;
        }
        let mut skip = std::collections::HashSet::new();
        let resuming = args.resume || args.resume_failed;
        if let Some(path) = &args.joblog
            && resuming
        {
            // Read with --dry-run too: it shows the jobs that would run.
            for (seq, ok) in joblog::read(path)? {
                if args.resume || ok {
                    skip.insert(seq);
                }
            }
        }
        let joblog = match &args.joblog {
            Some(path) if !args.dry_run => Some(JobLog::open(path, resuming)?),
            _ => None,
        };
        Ok(Self {
            describe: split.command.join(" "),
            template,
            inputs,
            jobs,
            keep_order: args.keep_order,
            output: if args.ungroup {
                OutputMode::Ungroup
            } else if args.line_buffer {
                OutputMode::Line
            } else {
                OutputMode::Group
            },
            retries: args.retries,
            timeout,
            halt,
            bar: args.bar,
            dry_run: args.dry_run,
            joblog,
            skip,
        })
    }
}

/// The most jobs at once: a larger `-j` is taken as this (and a run
/// lowers it further to fit the open-file limit, [`fd_budget`]).
const MAX_JOBS: usize = 1 << 16;

/// `-j`: `N`, `N%` of the CPUs, `+N`/`-N` CPUs, or `0` (as many as
/// possible: 256). At most [`MAX_JOBS`].
pub(crate) fn parse_jobs(spec: Option<&str>) -> Result<usize, CliError> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let Some(spec) = spec else {
        return Ok(cpus);
    };
    let bad = || CliError::Usage(format!("-j {spec}: expected N, N%, +N or -N"));
    let n = if let Some(pct) = spec.strip_suffix('%') {
        let p: f64 = pct.parse().map_err(|_| bad())?;
        if !(p > 0.0 && p.is_finite()) {
            return Err(bad());
        }
        ((cpus as f64 * p / 100.0).floor() as usize).max(1)
    } else if let Some(plus) = spec.strip_prefix('+') {
        cpus.saturating_add(plus.parse::<usize>().map_err(|_| bad())?)
    } else if let Some(minus) = spec.strip_prefix('-') {
        cpus.saturating_sub(minus.parse::<usize>().map_err(|_| bad())?)
            .max(1)
    } else {
        match spec.parse::<usize>().map_err(|_| bad())? {
            0 => 256,
            n => n,
        }
    };
    Ok(n.min(MAX_JOBS))
}

/// File descriptors herd keeps for itself: the standard streams, the
/// signal, input and guardian pipes, the joblog, input files, and a job
/// being started.
const FD_RESERVE: u64 = 32;

/// How many jobs may run at once and how many finished jobs `-k` may
/// hold, within the open-file limit (`ulimit -n`), so that no job fails
/// for want of a descriptor: a running job needs up to five (its two
/// output files or pipes, its pidfd, and the files of a job just finished
/// whose output is still to be copied), a held job two (its files).
pub(crate) fn fd_budget(jobs: usize) -> (usize, usize) {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    let budget = limit.saturating_sub(FD_RESERVE);
    let jobs = jobs.min((budget / 6).max(1) as usize);
    let held = (budget.saturating_sub(5 * jobs as u64) / 2).clamp(1, MAX_HELD as u64);
    (jobs, held as usize)
}

/// `--timeout`: seconds (fractions allowed) or `N%` of the median.
pub(crate) fn parse_timeout(spec: &str) -> Result<Timeout, CliError> {
    let bad = || CliError::Usage(format!("--timeout {spec}: expected seconds or N%"));
    if let Some(pct) = spec.strip_suffix('%') {
        let p: f64 = pct.parse().map_err(|_| bad())?;
        if !(p > 0.0 && p.is_finite()) {
            return Err(bad());
        }
        return Ok(Timeout::Median(p));
    }
    let secs: f64 = spec.parse().map_err(|_| bad())?;
    if !(secs > 0.0 && secs.is_finite() && secs < 1e9) {
        return Err(bad());
    }
    Ok(Timeout::Fixed(Duration::from_secs_f64(secs)))
}

/// `--halt`: `never`, `0` (never), `1` (`soon,fail=1`), `2`
/// (`now,fail=1`), or `now|soon,fail|success|done=N[%]`.
pub(crate) fn parse_halt(spec: &str) -> Result<Option<Halt>, CliError> {
    let bad = || {
        CliError::Usage(format!(
            "--halt {spec}: expected never, now|soon,fail|success|done=N or N%"
        ))
    };
    let (when, rest) = match spec {
        "never" | "0" => return Ok(None),
        "1" => (When::Soon, "fail=1"),
        "2" => (When::Now, "fail=1"),
        _ => {
            let (w, r) = spec.split_once(',').ok_or_else(bad)?;
            let when = match w {
                "now" => When::Now,
                "soon" => When::Soon,
                _ => return Err(bad()),
            };
            (when, r)
        }
    };
    let (what, n) = rest.split_once('=').ok_or_else(bad)?;
    let counted = match what {
        "fail" => Counted::Fail,
        "success" => Counted::Success,
        "done" => Counted::Done,
        _ => return Err(bad()),
    };
    let count = match n.strip_suffix('%') {
        Some(p) => {
            let p: f64 = p.parse().map_err(|_| bad())?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(bad());
            }
            Threshold::Percent(p)
        }
        None => match n.parse::<u64>().map_err(|_| bad())? {
            0 => return Err(bad()),
            n => Threshold::Jobs(n),
        },
    };
    Ok(Some(Halt {
        when,
        counted,
        count,
    }))
}

/// What a finished job left to print.
#[derive(Debug)]
pub(crate) enum Captured {
    Nothing,
    Files(FilePair),
    Bytes { out: Vec<u8>, err: Vec<u8> },
}

/// A job that ran (or could not start).
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) seq: u64,
    pub(crate) command: Vec<u8>,
    pub(crate) host: String,
    pub(crate) start: SystemTime,
    pub(crate) runtime: Duration,
    pub(crate) send: u64,
    pub(crate) receive: u64,
    /// The exit code (0 when killed by a signal, as GNU records it).
    pub(crate) exitval: i32,
    pub(crate) signal: i32,
    pub(crate) captured: Captured,
    /// herd's own message about the job, printed on stderr in its group.
    pub(crate) note: Option<String>,
}

impl Outcome {
    pub(crate) fn succeeded(&self) -> bool {
        self.exitval == 0 && self.signal == 0
    }

    fn status_code(&self) -> u8 {
        if self.signal != 0 {
            (128 + self.signal).clamp(0, 255) as u8
        } else {
            // -1: killed by --timeout; still a failure.
            if self.exitval < 0 {
                1
            } else {
                self.exitval.min(255) as u8
            }
        }
    }
}

/// What to do with a job after an outcome.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Run it again (`--retries`).
    Retry,
    /// It is done.
    Final,
}

/// The bookkeeping of a run, wherever its jobs execute.
#[derive(Debug)]
pub(crate) struct Books {
    keep_order: bool,
    retries: u32,
    halt: Option<Halt>,
    joblog: Option<JobLog>,
    bar: Option<ProgressBar>,
    total: Option<u64>,
    held: BTreeMap<u64, Outcome>,
    next_print: u64,
    skipped: std::collections::BTreeSet<u64>,
    failed: u64,
    succeeded: u64,
    /// Run times, for `--timeout N%` only.
    runtimes: Option<Median>,
    /// The most finished jobs `-k` holds back ([`MAX_HELD`], or fewer to
    /// fit the open-file limit).
    max_held: usize,
    /// Set once `--halt` fired: how, and the exit status it sets.
    pub(crate) halted: Option<(When, u8)>,
    /// herd's stdout is gone (a closed pipe): stop, quietly.
    pub(crate) stdout_gone: bool,
    pool: FilePool,
}

impl Books {
    pub(crate) fn new(plan: &mut Plan) -> Self {
        let mut books = Self::with(
            plan.keep_order,
            plan.retries,
            plan.halt,
            plan.joblog.take(),
            plan.bar,
            plan.inputs.total(),
        );
        if matches!(plan.timeout, Some(Timeout::Median(_))) {
            books.runtimes = Some(Median::default());
        }
        books
    }

    /// Holds back at most `n` finished jobs for `-k`.
    pub(crate) fn set_max_held(&mut self, n: usize) {
        self.max_held = n.max(1);
    }

    /// Bookkeeping with these settings (`total`: the number of jobs, when
    /// known).
    pub(crate) fn with(
        keep_order: bool,
        retries: u32,
        halt: Option<Halt>,
        joblog: Option<JobLog>,
        bar: bool,
        total: Option<u64>,
    ) -> Self {
        let bar = bar.then(|| {
            let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(
                "{wide_bar} {pos}/{len} {percent}% {elapsed_precise} ETA {eta_precise}",
            ) {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Self {
            keep_order,
            retries,
            halt,
            joblog,
            bar,
            total,
            held: BTreeMap::new(),
            next_print: 1,
            skipped: Default::default(),
            failed: 0,
            succeeded: 0,
            runtimes: None,
            max_held: MAX_HELD,
            halted: None,
            stdout_gone: false,
            pool: FilePool::new(),
        }
    }

    /// Files for a grouped job's output.
    pub(crate) fn files(&mut self) -> std::io::Result<FilePair> {
        self.pool.take()
    }

    /// Returns unused output files.
    pub(crate) fn pool_back(&mut self, pair: FilePair) {
        self.pool.give_back(pair);
    }

    /// A job the joblog says not to run again.
    pub(crate) fn skip(&mut self, seq: u64) {
        if self.keep_order {
            self.skipped.insert(seq);
            self.print_ready();
        }
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    /// Whether too many finished jobs wait for an earlier one (`-k`).
    pub(crate) fn holding_too_many(&self) -> bool {
        self.held.len() >= self.max_held
    }

    /// Whether new jobs may start.
    pub(crate) fn may_start(&self) -> bool {
        self.halted.is_none() && !self.stdout_gone
    }

    /// The median run time so far, once three jobs finished (kept only
    /// for `--timeout N%`).
    pub(crate) fn median(&self) -> Option<Duration> {
        self.runtimes.as_ref().and_then(Median::get)
    }

    /// Takes an outcome: a retry, or logs, counts, prints (now, or in
    /// order) and checks `--halt`.
    pub(crate) fn finish(&mut self, outcome: Outcome, attempt: u32) -> Verdict {
        if let Some(m) = &mut self.runtimes {
            m.push(outcome.runtime);
        }
        if !outcome.succeeded() && attempt < self.retries && self.may_start() {
            self.discard(outcome);
            return Verdict::Retry;
        }
        if let Some(log) = &mut self.joblog {
            let entry = Entry {
                seq: outcome.seq,
                host: &outcome.host,
                start: outcome.start,
                runtime: outcome.runtime,
                send: outcome.send,
                receive: outcome.receive,
                exitval: outcome.exitval,
                signal: outcome.signal,
                command: &outcome.command,
            };
            if let Err(e) = log.record(&entry) {
                output::note(&format!("writing the joblog: {e}"));
            }
        }
        if outcome.succeeded() {
            self.succeeded += 1;
        } else {
            self.failed += 1;
        }
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
        let ok = outcome.succeeded();
        let code = outcome.status_code();
        let seq = outcome.seq;
        let cmd = outcome.command.clone();
        if self.keep_order {
            self.held.insert(outcome.seq, outcome);
            self.print_ready();
        } else {
            self.print(outcome);
        }
        self.check_halt(ok, code, seq, &cmd);
        Verdict::Final
    }

    fn check_halt(&mut self, ok: bool, code: u8, seq: u64, cmd: &[u8]) {
        let Some(halt) = self.halt else { return };
        if self.halted.is_some() {
            return;
        }
        let count = match halt.counted {
            Counted::Fail if !ok => self.failed,
            Counted::Success if ok => self.succeeded,
            Counted::Done => self.failed + self.succeeded,
            _ => return,
        };
        let reached = match halt.count {
            Threshold::Jobs(n) => count >= n,
            Threshold::Percent(p) => {
                let total = self.total.unwrap_or(u64::MAX) as f64;
                count as f64 * 100.0 >= p * total
            }
        };
        if !reached {
            return;
        }
        // GNU's: the halting job's own status when one job was enough,
        // else the failed jobs (as a percentage for N%); 0 for success.
        let status = match (halt.counted, halt.count) {
            (Counted::Success, _) => 0,
            (_, Threshold::Jobs(1)) => code,
            (_, Threshold::Jobs(_)) => self.failed.min(101) as u8,
            (_, Threshold::Percent(_)) => self.failed_percent(self.total),
        };
        self.halted = Some((halt.when, status));
        if !ok {
            output::note(&format!(
                "job {seq} failed: {}",
                String::from_utf8_lossy(cmd)
            ));
        }
        output::note(match halt.when {
            When::Now => "halting now: killing the running jobs",
            When::Soon => "halting soon: starting no more jobs, waiting for the running ones",
        });
    }

    fn discard(&mut self, outcome: Outcome) {
        if let Captured::Files(pair) = outcome.captured {
            self.pool.give_back(pair);
        }
    }

    fn print_ready(&mut self) {
        loop {
            if self.skipped.remove(&self.next_print) {
                self.next_print += 1;
                continue;
            }
            match self.held.remove(&self.next_print) {
                Some(outcome) => {
                    self.print(outcome);
                    self.next_print += 1;
                }
                None => break,
            }
        }
    }

    fn print(&mut self, outcome: Outcome) {
        let bar = self.bar.clone();
        let write = || -> std::io::Result<()> {
            match &outcome.captured {
                Captured::Nothing => {}
                Captured::Files(pair) => {
                    pair.copy_out(output::stdout_fd())?;
                    if let Some(note) = &outcome.note {
                        output::note(note);
                    }
                    pair.copy_err(output::stderr_fd())?;
                    return Ok(());
                }
                Captured::Bytes { out, err } => {
                    output::write_all_fd(output::stdout_fd(), out)?;
                    if let Some(note) = &outcome.note {
                        output::note(note);
                    }
                    output::write_all_fd(output::stderr_fd(), err)?;
                    return Ok(());
                }
            }
            if let Some(note) = &outcome.note {
                output::note(note);
            }
            Ok(())
        };
        let result = match &bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        };
        if let Err(e) = result {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                self.stdout_gone = true;
            } else if !self.stdout_gone {
                output::note(&format!("writing job {}'s output: {e}", outcome.seq));
            }
        }
        self.discard(outcome);
    }

    /// Prints what `-k` still holds (after a halt, in order, gaps
    /// skipped) and ends the progress bar.
    pub(crate) fn close(&mut self) {
        let held = std::mem::take(&mut self.held);
        for (_, outcome) in held {
            self.print(outcome);
        }
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    /// GNU parallel's exit status: the halting job's, or the number of
    /// failed jobs (101 for more than 100).
    pub(crate) fn exit_code(&self) -> ExitCode {
        if let Some((_, code)) = self.halted {
            return ExitCode::from(code);
        }
        // With `--halt ...=N%` that never fired, GNU still gives the
        // failed jobs as a percentage (of those that ran).
        if let Some(Halt {
            count: Threshold::Percent(_),
            ..
        }) = self.halt
        {
            return ExitCode::from(self.failed_percent(None));
        }
        ExitCode::from(self.failed.min(101) as u8)
    }

    /// The failed jobs as a percentage (rounded up) of `total`, or of the
    /// jobs finished when it is unknown.
    fn failed_percent(&self, total: Option<u64>) -> u8 {
        let total = total.unwrap_or(self.failed + self.succeeded).max(1);
        (self.failed.saturating_mul(100).div_ceil(total)).min(100) as u8
    }
}

/// A running median: the lower half of the values in a max-heap, the
/// upper half (as large or one larger) in a min-heap.
#[derive(Debug, Default)]
pub(crate) struct Median {
    low: std::collections::BinaryHeap<Duration>,
    high: std::collections::BinaryHeap<std::cmp::Reverse<Duration>>,
}

impl Median {
    fn push(&mut self, d: Duration) {
        match self.high.peek() {
            Some(std::cmp::Reverse(min_high)) if d < *min_high => self.low.push(d),
            _ => self.high.push(std::cmp::Reverse(d)),
        }
        if self.low.len() > self.high.len() {
            if let Some(d) = self.low.pop() {
                self.high.push(std::cmp::Reverse(d));
            }
        } else if self.high.len() > self.low.len() + 1
            && let Some(std::cmp::Reverse(d)) = self.high.pop()
        {
            self.low.push(d);
        }
    }

    /// The value at index `len / 2` in sorted order, once there are three.
    fn get(&self) -> Option<Duration> {
        (self.low.len() + self.high.len() >= 3)
            .then(|| self.high.peek().map(|r| r.0))
            .flatten()
    }
}

/// Which signals stop a run, and the pipe that wakes the loop for them.
#[derive(Debug)]
pub(crate) struct Signals {
    pipe: OwnedFd,
    last: Arc<AtomicUsize>,
}

impl Signals {
    pub(crate) fn install() -> Result<Self, CliError> {
        let (read, write) = rustix::pipe::pipe_with(
            rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
        )
        .map_err(|e| CliError::io("creating the signal pipe", e.into()))?;
        let last = Arc::new(AtomicUsize::new(0));
        // A second signal ends herd at once, from the handler: even while
        // herd is blocked writing to a stdout nobody reads. Its jobs die
        // with it (the guardian).
        let seen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            let w = write
                .try_clone()
                .map_err(|e| CliError::io("creating the signal pipe", e))?;
            signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, Arc::clone(&seen))
                .and_then(|_| signal_hook::flag::register(sig, Arc::clone(&seen)))
                .and_then(|_| {
                    signal_hook::flag::register_usize(sig, Arc::clone(&last), sig as usize)
                })
                .and_then(|_| signal_hook::low_level::pipe::register(sig, w))
                .map_err(|e| CliError::io("installing the signal handlers", e))?;
        }
        Ok(Self { pipe: read, last })
    }

    /// The last signal received, if any since the last call; empties the
    /// pipe.
    pub(crate) fn take(&self) -> Option<i32> {
        let mut buf = [0u8; 64];
        while matches!(rustix::io::read(&self.pipe, &mut buf), Ok(n) if n > 0) {}
        match self.last.swap(0, Ordering::SeqCst) {
            0 => None,
            s => Some(s as i32),
        }
    }

    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.pipe.as_fd()
    }
}

/// A job not yet started (or to start again).
#[derive(Debug)]
struct Pending {
    seq: u64,
    inputs: Tuple,
    attempt: u32,
}

enum Capture {
    Files(FilePair),
    Lines(LinePipe, LinePipe),
    Inherit,
}

struct Running {
    job: Pending,
    slot: usize,
    child: Child,
    pidfd: OwnedFd,
    prepared: Prepared,
    capture: Capture,
    start: Instant,
    start_wall: SystemTime,
    /// When `--timeout` fires.
    deadline: Option<Instant>,
    /// SIGTERM was sent (timeout, halt, signal): SIGKILL at this time.
    kill_at: Option<Instant>,
    timed_out: bool,
    exited: Option<ExitStatus>,
}

/// The `std::process::Command` for a job: the program itself, or
/// `/bin/sh -c LINE`; its own process group, so a timeout or a halt stops
/// everything it started; stdin `/dev/null`.
pub(crate) fn command(prepared: &Prepared) -> Command {
    let mut cmd = match prepared {
        Prepared::Direct(argv) => {
            let mut c = Command::new(OsStr::from_bytes(argv.first().map_or(&[][..], |a| a)));
            c.args(argv.iter().skip(1).map(|a| OsStr::from_bytes(a)));
            c
        }
        Prepared::Shell(line) => {
            let mut c = Command::new("/bin/sh");
            c.arg("-c").arg(OsStr::from_bytes(line));
            c
        }
    };
    cmd.process_group(0).stdin(Stdio::null());
    cmd
}

/// Why a job could not start, as the shell would report it: 127 for a
/// command not found, 126 for one that cannot run.
pub(crate) fn spawn_failure(prepared: &Prepared, e: &std::io::Error) -> (i32, String) {
    let name = match prepared {
        Prepared::Direct(argv) => {
            String::from_utf8_lossy(argv.first().map_or(&[][..], |a| a)).into_owned()
        }
        Prepared::Shell(_) => "/bin/sh".into(),
    };
    match e.kind() {
        std::io::ErrorKind::NotFound => (127, format!("{name}: command not found")),
        std::io::ErrorKind::PermissionDenied => (126, format!("{name}: permission denied")),
        _ => (127, format!("{name}: {e}")),
    }
}

/// Splits an exit status into GNU's exit value and signal.
pub(crate) fn exit_parts(status: ExitStatus) -> (i32, i32) {
    match (status.code(), status.signal()) {
        (Some(code), _) => (code, 0),
        (None, Some(sig)) => (0, sig),
        (None, None) => (0, 0),
    }
}

/// `herd run` without `--workers`.
pub(crate) fn run_local(args: JobArgs) -> Result<ExitCode, CliError> {
    let mut plan = Plan::new(args)?;
    if plan.dry_run {
        return dry_run(plan);
    }
    let detail = plan.describe.clone();
    let _registration = registry::register("run", &detail);
    let (jobs, max_held) = fd_budget(plan.jobs);
    if jobs < plan.jobs {
        output::note(&format!(
            "-j {}: the open-file limit (ulimit -n) allows {jobs} jobs at once",
            plan.jobs
        ));
        plan.jobs = jobs;
    }
    // First, while herd has one thread: the guardian is forked.
    let guardian =
        Guardian::start(plan.jobs).map_err(|e| CliError::io("starting the guardian process", e))?;
    let signals = Signals::install()?;
    // Then the input thread: a slow input must not stall the loop.
    plan.inputs.read_in_background()?;
    let mut books = Books::new(&mut plan);
    books.set_max_held(max_held);
    let mut engine = Engine {
        input_waiting: false,
        guardian,
        books,
        slots: vec![false; plan.jobs],
        running: Vec::with_capacity(plan.jobs),
        retry: VecDeque::new(),
        next_seq: 1,
        inputs_done: false,
        input_error: None,
        signal: None,
        run_id: std::process::id().to_string(),
        plan,
    };
    engine.run(&signals);
    engine.books.close();
    if let Some(e) = engine.input_error {
        output::note(&e.to_string());
        return Ok(ExitCode::from(255));
    }
    if let Some(sig) = engine.signal {
        return Ok(ExitCode::from((128 + sig).clamp(0, 255) as u8));
    }
    Ok(engine.books.exit_code())
}

pub(crate) fn dry_run(mut plan: Plan) -> Result<ExitCode, CliError> {
    let mut seq = 0u64;
    let mut out = Vec::new();
    for tuple in plan.inputs.by_ref() {
        let tuple = tuple?;
        seq += 1;
        if plan.skip.contains(&seq) {
            continue;
        }
        let slot = ((seq - 1) % plan.jobs as u64) as usize + 1;
        out.extend(plan.template.render(&tuple, seq, slot).display());
        out.push(b'\n');
        if out.len() > 64 * 1024 {
            flush_dry(&mut out)?;
        }
    }
    flush_dry(&mut out)?;
    Ok(ExitCode::SUCCESS)
}

fn flush_dry(out: &mut Vec<u8>) -> Result<(), CliError> {
    match output::write_all_fd(output::stdout_fd(), out) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => return Err(CliError::io("writing to stdout", e)),
    }
    out.clear();
    Ok(())
}

struct Engine {
    plan: Plan,
    books: Books,
    slots: Vec<bool>,
    running: Vec<Running>,
    retry: VecDeque<Pending>,
    next_seq: u64,
    inputs_done: bool,
    /// The last try for an input found none yet: poll for one.
    input_waiting: bool,
    input_error: Option<CliError>,
    signal: Option<i32>,
    run_id: String,
    guardian: Guardian,
}

impl Engine {
    fn run(&mut self, signals: &Signals) {
        loop {
            self.start_jobs();
            if self.running.is_empty()
                && (self.stopping() || (self.inputs_done && self.retry.is_empty()))
            {
                return;
            }
            // Jobs to watch, or an input to wait for (`-k`'s hold never
            // stops the job it waits for, retries included).
            self.wait(signals);
        }
    }

    fn stopping(&self) -> bool {
        self.signal.is_some() || !self.books.may_start() || self.input_error.is_some()
    }

    fn next_job(&mut self) -> Option<Pending> {
        if let Some(job) = self.retry.pop_front() {
            return Some(job);
        }
        while !self.inputs_done {
            match self.plan.inputs.try_next() {
                Next::NotYet => {
                    self.input_waiting = true;
                    return None;
                }
                Next::End => self.inputs_done = true,
                Next::Tuple(Err(e)) => {
                    self.inputs_done = true;
                    self.input_error = Some(e);
                }
                Next::Tuple(Ok(inputs)) => {
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    if self.plan.skip.contains(&seq) {
                        self.books.skip(seq);
                        continue;
                    }
                    return Some(Pending {
                        seq,
                        inputs,
                        attempt: 1,
                    });
                }
            }
        }
        None
    }

    fn start_jobs(&mut self) {
        self.input_waiting = false;
        // A retry may start whatever `-k` holds: the held jobs may be
        // waiting for it.
        while self.running.len() < self.plan.jobs
            && !self.stopping()
            && (!self.books.holding_too_many() || !self.retry.is_empty())
        {
            let Some(job) = self.next_job() else { return };
            self.start(job);
        }
    }

    fn start(&mut self, job: Pending) {
        let slot = self.slots.iter().position(|busy| !busy).unwrap_or(0);
        let prepared = self.plan.template.render(&job.inputs, job.seq, slot + 1);
        let start_wall = SystemTime::now();
        let start = Instant::now();
        let mut cmd = command(&prepared);
        let seq = job.seq.to_string();
        let slot_s = (slot + 1).to_string();
        cmd.env(registry::SEQ_ENV, &seq)
            .env(registry::RUN_ENV, &self.run_id)
            .env("HERD_SLOT", &slot_s)
            .env("PARALLEL_SEQ", &seq)
            .env("PARALLEL_JOBSLOT", &slot_s);
        let capture = match self.capture_for(&mut cmd) {
            Ok(c) => c,
            Err(e) => {
                self.not_started(job, &prepared, start_wall, 255, format!("job {seq}: {e}"));
                return;
            }
        };
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                if let Capture::Files(pair) = capture {
                    self.books.pool_back(pair);
                }
                let (code, note) = spawn_failure(&prepared, &e);
                self.not_started(job, &prepared, start_wall, code, note);
                return;
            }
        };
        drop(cmd); // closes the parent's copies of the job's pipe ends
        self.guardian.watch(slot, child.id());
        let pidfd = match rustix::process::pidfd_open(
            Pid::from_child(&child),
            rustix::process::PidfdFlags::empty(),
        ) {
            Ok(fd) => fd,
            Err(e) => {
                // Cannot watch it: stop it and report.
                let mut child = child;
                let _ = child.kill();
                let _ = child.wait();
                self.guardian.release(slot);
                if let Capture::Files(pair) = capture {
                    self.books.pool_back(pair);
                }
                self.not_started(
                    job,
                    &prepared,
                    start_wall,
                    255,
                    format!("watching job {seq}: {e}"),
                );
                return;
            }
        };
        let deadline = match self.plan.timeout {
            Some(Timeout::Fixed(d)) => Some(start + d),
            Some(Timeout::Median(p)) => self.books.median().map(|m| start + m.mul_f64(p / 100.0)),
            None => None,
        };
        self.slots[slot] = true;
        self.running.push(Running {
            job,
            slot,
            child,
            pidfd,
            prepared,
            capture,
            start,
            start_wall,
            deadline,
            kill_at: None,
            timed_out: false,
            exited: None,
        });
    }

    fn capture_for(&mut self, cmd: &mut Command) -> std::io::Result<Capture> {
        Ok(match self.plan.output {
            OutputMode::Ungroup => Capture::Inherit,
            OutputMode::Group => {
                let pair = self.books.files()?;
                cmd.stdout(Stdio::from(pair.out.try_clone()?))
                    .stderr(Stdio::from(pair.err.try_clone()?));
                Capture::Files(pair)
            }
            OutputMode::Line => {
                let (out, out_w) = LinePipe::new(false)?;
                let (err, err_w) = LinePipe::new(true)?;
                cmd.stdout(Stdio::from(out_w)).stderr(Stdio::from(err_w));
                Capture::Lines(out, err)
            }
        })
    }

    fn not_started(
        &mut self,
        job: Pending,
        prepared: &Prepared,
        start: SystemTime,
        code: i32,
        note: String,
    ) {
        let outcome = Outcome {
            seq: job.seq,
            command: prepared.display(),
            host: ":".into(),
            start,
            runtime: Duration::ZERO,
            send: 0,
            receive: 0,
            exitval: code,
            signal: 0,
            captured: Captured::Nothing,
            note: Some(note),
        };
        self.conclude(job, outcome);
    }

    fn conclude(&mut self, job: Pending, outcome: Outcome) {
        if self.books.finish(outcome, job.attempt) == Verdict::Retry {
            self.retry.push_front(Pending {
                attempt: job.attempt + 1,
                ..job
            });
        }
        if let Some((When::Now, _)) = self.books.halted {
            self.stop_all();
        }
        if self.books.stdout_gone {
            self.stop_all();
        }
    }

    /// SIGTERM to every running job's group (SIGKILL after [`GRACE`]).
    fn stop_all(&mut self) {
        let now = Instant::now();
        for r in &mut self.running {
            if r.live() && r.kill_at.is_none() {
                signal_group(&r.child, Signal::TERM);
                r.kill_at = Some(now + GRACE);
            }
        }
    }

    fn wait(&mut self, signals: &Signals) {
        if let Some(Timeout::Median(p)) = self.plan.timeout
            && let Some(m) = self.books.median()
        {
            // As the median moves, so do the running jobs' deadlines
            // (those started before there was one included).
            for r in &mut self.running {
                r.deadline = Some(r.start + m.mul_f64(p / 100.0));
            }
        }
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for r in &self.running {
            for t in [r.deadline.filter(|_| !r.timed_out), r.kill_at]
                .into_iter()
                .flatten()
            {
                next = Some(next.map_or(t, |n: Instant| n.min(t)));
            }
        }
        // Indices: 0 the signal pipe; then per job its pidfd and pipes.
        let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(1 + self.running.len() * 3);
        let mut owners: Vec<(usize, u8)> = Vec::with_capacity(self.running.len() * 3);
        fds.push(PollFd::from_borrowed_fd(signals.fd(), PollFlags::IN));
        for (i, r) in self.running.iter().enumerate() {
            if r.exited.is_none() {
                fds.push(PollFd::from_borrowed_fd(r.pidfd.as_fd(), PollFlags::IN));
                owners.push((i, 0));
            }
            if let Capture::Lines(out, err) = &r.capture {
                for (k, p) in [(1u8, out), (2u8, err)] {
                    if let Some(fd) = p.fd() {
                        fds.push(PollFd::from_borrowed_fd(fd, PollFlags::IN));
                        owners.push((i, k));
                    }
                }
            }
        }
        // Last, past the jobs' entries: the input, when it is awaited.
        if self.input_waiting
            && !self.stopping()
            && let Some(fd) = self.plan.inputs.wake_fd()
        {
            fds.push(PollFd::from_borrowed_fd(fd, PollFlags::IN));
        }
        let timeout = next.map(|t| {
            let d = t.saturating_duration_since(now);
            rustix::event::Timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: d.subsec_nanos() as i64,
            }
        });
        let ready = match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(_) => fds
                .iter()
                .map(|f| !f.revents().is_empty())
                .collect::<Vec<bool>>(),
            Err(_) => vec![true; fds.len()], // EINTR: look at everything
        };
        drop(fds);
        if ready[0]
            && let Some(sig) = signals.take()
        {
            self.on_signal(sig);
        }
        for (&(i, k), _) in owners.iter().zip(&ready[1..]).filter(|(_, r)| **r) {
            let r = &mut self.running[i];
            match (k, &mut r.capture) {
                (0, _) => {
                    if let Ok(Some(status)) = r.child.try_wait() {
                        r.exited = Some(status);
                    }
                }
                (1, Capture::Lines(out, _)) => {
                    if let Err(e) = out.pump() {
                        self.books.stdout_gone |= e.kind() == std::io::ErrorKind::BrokenPipe;
                    }
                }
                (2, Capture::Lines(_, err)) => {
                    let _ = err.pump();
                }
                _ => {}
            }
        }
        if self.books.stdout_gone {
            self.stop_all();
        }
        self.check_deadlines();
        self.collect_finished();
    }

    fn on_signal(&mut self, sig: i32) {
        if self.signal.is_some() {
            // A second signal: no more grace.
            for r in &mut self.running {
                if r.live() {
                    signal_group(&r.child, Signal::KILL);
                }
            }
            return;
        }
        self.signal = Some(sig);
        let fwd = Signal::from_named_raw(sig).unwrap_or(Signal::TERM);
        let now = Instant::now();
        for r in &mut self.running {
            if r.live() {
                signal_group(&r.child, fwd);
                r.kill_at = Some(now + GRACE * 10);
            }
        }
    }

    fn check_deadlines(&mut self) {
        let now = Instant::now();
        for r in &mut self.running {
            // A job whose first process ended may have left one holding
            // its pipes (line-buffered): time it out, kill it too.
            if !r.live() {
                continue;
            }
            if let Some(d) = r.deadline
                && !r.timed_out
                && now >= d
            {
                r.timed_out = true;
                signal_group(&r.child, Signal::TERM);
                r.kill_at = Some(now + GRACE);
            } else if let Some(k) = r.kill_at
                && now >= k
            {
                signal_group(&r.child, Signal::KILL);
                r.kill_at = None;
                if r.exited.is_some() {
                    // What holds the pipes now is not the job's (or it
                    // escaped its group): take what is there, stop
                    // waiting for more.
                    if let Capture::Lines(out, err) = &mut r.capture {
                        out.abandon();
                        err.abandon();
                    }
                }
            }
        }
    }

    fn collect_finished(&mut self) {
        let mut finished = Vec::new();
        let mut i = 0;
        while i < self.running.len() {
            let r = &self.running[i];
            let pipes_open =
                matches!(&r.capture, Capture::Lines(o, e) if o.fd().is_some() || e.fd().is_some());
            if r.exited.is_none() || pipes_open {
                i += 1;
                continue;
            }
            let mut r = self.running.swap_remove(i);
            // A process left in the job's group (a background child) may
            // still write to the job's files: they must not be recycled.
            if let Capture::Files(pair) = &mut r.capture
                && rustix::process::test_kill_process_group(Pid::from_child(&r.child)).is_ok()
            {
                pair.keep_from_reuse();
            }
            self.guardian.release(r.slot);
            self.slots[r.slot] = false;
            let status = r.exited.unwrap_or_else(|| ExitStatus::from_raw(0));
            let (mut exitval, signal) = exit_parts(status);
            if r.timed_out {
                // GNU parallel's joblog marks a job its timeout killed so.
                exitval = -1;
            }
            let runtime = r.start.elapsed();
            let note = r.timed_out.then(|| {
                format!(
                    "job {} timed out after {:.3} s: {}",
                    r.job.seq,
                    runtime.as_secs_f64(),
                    String::from_utf8_lossy(&r.prepared.display())
                )
            });
            let outcome = Outcome {
                seq: r.job.seq,
                command: r.prepared.display(),
                host: ":".into(),
                start: r.start_wall,
                runtime,
                send: 0,
                receive: 0,
                exitval,
                signal,
                captured: match r.capture {
                    Capture::Files(pair) => Captured::Files(pair),
                    _ => Captured::Nothing,
                },
                note,
            };
            finished.push((r.job, outcome));
        }
        if finished.is_empty() {
            return;
        }
        // The freed slots get their next jobs before the finished jobs'
        // output is copied out: the copy then overlaps the new jobs'
        // start instead of delaying it. Not with --halt, which may forbid
        // those starts, nor --timeout N%, whose median needs these jobs.
        if self.plan.halt.is_none() && !matches!(self.plan.timeout, Some(Timeout::Median(_))) {
            self.start_jobs();
        }
        for (job, outcome) in finished {
            self.conclude(job, outcome);
        }
    }
}

impl Running {
    /// Whether the job, or something holding its output pipes, may still
    /// run.
    fn live(&self) -> bool {
        self.exited.is_none()
            || matches!(&self.capture, Capture::Lines(o, e) if o.fd().is_some() || e.fd().is_some())
    }
}

/// Sends `sig` to a job's process group (the job leads it).
fn signal_group(child: &Child, sig: Signal) {
    let _ = rustix::process::kill_process_group(Pid::from_child(child), sig);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_specs() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(parse_jobs(Some("3")).unwrap(), 3);
        assert_eq!(parse_jobs(Some("0")).unwrap(), 256);
        assert_eq!(parse_jobs(Some("100%")).unwrap(), cpus);
        assert_eq!(parse_jobs(Some("+1")).unwrap(), cpus + 1);
        assert_eq!(parse_jobs(None).unwrap(), cpus);
        assert!(parse_jobs(Some("x")).is_err());
        assert!(parse_jobs(Some("-5%")).is_err());
    }

    #[test]
    fn timeout_specs() {
        assert_eq!(
            parse_timeout("1.5").unwrap(),
            Timeout::Fixed(Duration::from_millis(1500))
        );
        assert_eq!(parse_timeout("200%").unwrap(), Timeout::Median(200.0));
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("-1").is_err());
        assert!(parse_timeout("abc").is_err());
    }

    #[test]
    fn halt_specs() {
        assert_eq!(parse_halt("never").unwrap(), None);
        let h = parse_halt("now,fail=2").unwrap().unwrap();
        assert_eq!(
            (h.when, h.counted, h.count),
            (When::Now, Counted::Fail, Threshold::Jobs(2))
        );
        let h = parse_halt("soon,success=50%").unwrap().unwrap();
        assert_eq!(h.count, Threshold::Percent(50.0));
        assert_eq!(parse_halt("2").unwrap().unwrap().when, When::Now);
        for bad in [
            "later,fail=1",
            "now,fail=0",
            "now,oops=1",
            "now",
            "soon,fail=101%",
        ] {
            assert!(parse_halt(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn huge_job_counts_are_clamped_not_overflowed() {
        assert_eq!(parse_jobs(Some("+18446744073709551615")).unwrap(), MAX_JOBS);
        assert_eq!(parse_jobs(Some("100000000000")).unwrap(), MAX_JOBS);
        assert_eq!(parse_jobs(Some("1e12%")).unwrap(), MAX_JOBS);
    }

    #[test]
    fn the_fd_budget_leaves_room_for_every_job_and_held_file() {
        let (jobs, held) = fd_budget(MAX_JOBS);
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX);
        assert!(jobs >= 1 && held >= 1);
        assert!(
            FD_RESERVE + 5 * jobs as u64 + 2 * held as u64 <= limit.max(FD_RESERVE + 7),
            "{jobs} jobs, {held} held within {limit}"
        );
        assert_eq!(fd_budget(1).0, 1);
    }

    #[test]
    fn running_median_matches_the_sorted_middle() {
        let mut m = Median::default();
        let mut all = Vec::new();
        for (i, ms) in [5u64, 1, 9, 9, 2, 7, 3, 3, 8, 0, 6, 4]
            .into_iter()
            .enumerate()
        {
            let d = Duration::from_millis(ms);
            m.push(d);
            all.push(d);
            all.sort();
            let want = (i >= 2).then(|| all[all.len() / 2]);
            assert_eq!(m.get(), want, "after {all:?}");
        }
    }

    fn outcome(seq: u64, exitval: i32) -> Outcome {
        Outcome {
            seq,
            command: b"job".to_vec(),
            host: ":".into(),
            start: SystemTime::UNIX_EPOCH,
            runtime: Duration::ZERO,
            send: 0,
            receive: 0,
            exitval,
            signal: 0,
            captured: Captured::Nothing,
            note: None,
        }
    }

    /// The exit status after these jobs' exit values, with `--halt halt`.
    fn status_after(halt: &str, exits: &[i32]) -> ExitCode {
        let mut books = Books::with(
            false,
            1,
            parse_halt(halt).unwrap(),
            None,
            false,
            Some(exits.len() as u64),
        );
        for (i, &e) in exits.iter().enumerate() {
            if !books.may_start() {
                break;
            }
            books.finish(outcome(i as u64 + 1, e), 1);
        }
        books.exit_code()
    }

    #[test]
    fn halt_exit_statuses_are_gnu_s() {
        // fail=1 and done=1: the halting job's own status.
        assert_eq!(status_after("now,fail=1", &[0, 3, 4]), ExitCode::from(3));
        assert_eq!(status_after("soon,done=1", &[3, 2]), ExitCode::from(3));
        // fail=N, done=N: the number of failed jobs.
        assert_eq!(status_after("now,fail=2", &[3, 4, 0]), ExitCode::from(2));
        assert_eq!(status_after("now,done=2", &[3, 0, 5]), ExitCode::from(1));
        // N%: the failed jobs' percentage of all jobs, rounded up.
        assert_eq!(
            status_after("now,fail=50%", &[0, 3, 4, 0]),
            ExitCode::from(50)
        );
        assert_eq!(
            status_after("now,done=50%", &[3, 4, 0, 0]),
            ExitCode::from(50)
        );
        // N% that never fired: still a percentage (of the jobs run).
        assert_eq!(
            status_after("soon,fail=50%", &[0, 1, 0, 5, 0, 0]),
            ExitCode::from(34)
        );
        // success: 0.
        assert_eq!(status_after("now,success=1", &[1, 0, 4]), ExitCode::from(0));
        assert_eq!(status_after("never", &[1, 0, 4]), ExitCode::from(2));
    }
}
