//! Suite `spawn`: median start+join latency of a trivial task.
//!
//! herd with each start method; Python multiprocessing with fork,
//! forkserver and spawn (the script beside this crate, run as a server
//! that does one start+join per request); procspawn; and raw `fork` +
//! `waitpid` as the floor. Every case runs in the same rounds, in a fresh
//! order each round, so the ratios compare like with like on a noisy
//! machine: Python's rounds share the machine's state with herd's instead
//! of running alone afterwards in a quiet loop of their own.

use std::cell::RefCell;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::rc::Rc;
use std::time::Instant;

use crate::report::{Record, emit, median, note, python_script};

const SUITE: &str = "spawn";
const CASE: &str = "trivial";

#[herd::task]
fn trivial() -> u8 {
    1
}

fn record(implementation: &str, value: f64) {
    emit(&Record {
        suite: SUITE,
        case: CASE,
        implementation,
        metric: "median_us",
        value,
        unit: "us",
    });
}

/// One measured implementation: a name, how often it runs (every `n`-th
/// round: Python's slow methods run less often) and one start+join round,
/// which may report its own time in microseconds (Python measures its
/// round itself, without the request's trip through a pipe).
struct Case<'a> {
    name: &'static str,
    every: usize,
    round: Box<dyn FnMut() -> Result<Option<f64>, String> + 'a>,
}

impl<'a> Case<'a> {
    fn new(name: &'static str, mut round: impl FnMut() -> Result<(), String> + 'a) -> Self {
        Self {
            name,
            every: 1,
            round: Box::new(move || round().map(|()| None)),
        }
    }
}

/// Runs every case `reps` times in rounds (one run of each, then the next
/// round), so drift on a shared machine hits all of them alike; each round
/// takes the cases in a fresh order (a fixed-seed shuffle), so that the
/// work one case leaves behind (a forkserver forking its next spare, a
/// child's teardown) falls on every other case alike rather than always on
/// the one listed after it. Returns each case's median in microseconds, or
/// its first error.
fn interleaved(reps: usize, cases: &mut [Case<'_>]) -> Vec<(&'static str, Result<f64, String>)> {
    // Warm-up rounds: the first three runs of each case (a forkserver
    // starts on first use).
    let warm = 3;
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(reps); cases.len()];
    let mut errors: Vec<Option<String>> = vec![None; cases.len()];
    let mut order: Vec<usize> = (0..cases.len()).collect();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut runs = vec![0usize; cases.len()];
    for round in 0..reps + warm {
        // Fisher-Yates with xorshift64: reproducible from run to run.
        for k in (1..order.len()).rev() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            order.swap(k, (seed % (k as u64 + 1)) as usize);
        }
        for &i in &order {
            if errors[i].is_some() || !round.is_multiple_of(cases[i].every) {
                continue;
            }
            let t = Instant::now();
            let r = (cases[i].round)();
            let us = t.elapsed().as_secs_f64() * 1e6;
            runs[i] += 1;
            match r {
                Err(e) => errors[i] = Some(e),
                Ok(own) if runs[i] > warm => samples[i].push(own.unwrap_or(us)),
                Ok(_) => {}
            }
        }
    }
    cases
        .iter()
        .zip(samples.iter_mut().zip(errors))
        .map(|(case, (s, err))| (case.name, err.map_or_else(|| Ok(median(s)), Err)))
        .collect()
}

fn herd_round(method: herd::StartMethod) -> Result<(), String> {
    match herd::Process::builder(trivial, ())
        .start_method(method)
        .start()
        .map(|mut p| p.join())
    {
        Ok(Ok(1)) => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

fn procspawn_round() -> Result<(), String> {
    procspawn::spawn((), |()| 1u8)
        .join()
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn fork_round() -> Result<(), String> {
    // SAFETY: the child only calls the async-signal-safe `_exit`.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: `_exit` never returns and is async-signal-safe.
        unsafe { libc::_exit(0) };
    }
    if pid < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    let mut status = 0;
    // SAFETY: `pid` is our child; `status` is a valid out-pointer.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    Ok(())
}

/// `spawn.py serve`: one start+join per method name written to its stdin,
/// answered with the microseconds it took, measured in Python.
struct PythonServer {
    child: Child,
    to: ChildStdin,
    from: BufReader<ChildStdout>,
}

impl PythonServer {
    fn start() -> Result<Self, String> {
        let mut child = Command::new("python3")
            .arg(python_script("spawn.py"))
            .arg("serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("python3 not available ({e}); Python baselines skipped"))?;
        let (Some(to), Some(from)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("python3's pipes".to_owned());
        };
        Ok(Self {
            child,
            to,
            from: BufReader::new(from),
        })
    }

    fn round(&mut self, method: &str) -> Result<Option<f64>, String> {
        writeln!(self.to, "{method}").map_err(|e| format!("python: {e}"))?;
        self.to.flush().map_err(|e| format!("python: {e}"))?;
        let mut line = String::new();
        self.from
            .read_line(&mut line)
            .map_err(|e| format!("python: {e}"))?;
        line.trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("python said {line:?}"))
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the suite.
pub(crate) fn run(quick: bool) {
    let reps = if quick { 60 } else { 400 };
    let mut cases: Vec<Case<'_>> = vec![
        Case::new("herd-forkserver", || {
            herd_round(herd::StartMethod::ForkServer)
        }),
        Case::new("herd-spawn", || herd_round(herd::StartMethod::Spawn)),
        Case::new("procspawn", procspawn_round),
        Case::new("fork+waitpid", fork_round),
    ];
    match PythonServer::start() {
        Ok(py) => {
            let py = Rc::new(RefCell::new(py));
            // Python's forkserver (~20 ms) and spawn (~100 ms) run every
            // 4th and 8th round, to keep the suite short.
            for (name, method, every) in [
                ("python-fork", "fork", 1),
                ("python-forkserver", "forkserver", 4),
                ("python-spawn", "spawn", 8),
            ] {
                let py = Rc::clone(&py);
                cases.push(Case {
                    name,
                    every,
                    round: Box::new(move || py.borrow_mut().round(method)),
                });
            }
        }
        Err(e) => note(SUITE, &e),
    }
    let mut medians = std::collections::HashMap::new();
    for (name, result) in interleaved(reps, &mut cases) {
        match result {
            Ok(v) => {
                record(name, v);
                medians.insert(name.to_owned(), v);
            }
            Err(e) => note(SUITE, &format!("{name} failed: {e}")),
        }
    }
    // For comparison with earlier runs: Python's fork in a loop of its own
    // after the rest, on a machine quiet but for it.
    let alone = if quick { 25 } else { 200 };
    if let Some(v) =
        crate::report::run_python(SUITE, "spawn.py", &["fork".to_owned(), alone.to_string()])
            .and_then(|j| j.get("median_us")?.as_f64())
    {
        record("python-fork-alone", v);
        medians.insert("python-fork-alone".to_owned(), v);
    }
    let ratio = |case: &str, implementation: &str, slow: &str, fast: &str| {
        if let (Some(s), Some(f)) = (medians.get(slow), medians.get(fast)) {
            emit(&Record {
                suite: SUITE,
                case,
                implementation,
                metric: "speedup",
                value: s / f,
                unit: "x",
            });
        }
    };
    ratio(
        "trivial-vs-python-fork",
        "herd-forkserver",
        "python-fork",
        "herd-forkserver",
    );
    ratio(
        "trivial-vs-python-fork-alone",
        "herd-forkserver",
        "python-fork-alone",
        "herd-forkserver",
    );
    ratio(
        "trivial-vs-procspawn",
        "herd-forkserver",
        "procspawn",
        "herd-forkserver",
    );
    ratio(
        "trivial-vs-procspawn",
        "herd-spawn",
        "procspawn",
        "herd-spawn",
    );
}
