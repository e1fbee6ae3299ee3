//! Suite `spawn`: median start+join latency of a trivial task.
//!
//! herd with each start method; Python multiprocessing with fork,
//! forkserver and spawn (the script beside this crate); procspawn; and raw
//! `fork` + `waitpid` as the floor. All in one invocation, so the ratios
//! compare like with like on a noisy machine.

use std::time::Instant;

use crate::report::{Record, emit, median, note, run_python};

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

/// One measured implementation: a name and one start+join round.
type Case<'a> = (&'static str, Box<dyn FnMut() -> Result<(), String> + 'a>);

/// Runs every case `reps` times in rounds (one run of each, then the next
/// round), so drift on a shared machine hits all of them alike; each round
/// takes the cases in a fresh order (a fixed-seed shuffle), so that the
/// work one case leaves behind (a forkserver forking its next spare, a
/// child's teardown) falls on every other case alike rather than always on
/// the one listed after it. Returns each case's median in microseconds, or
/// its first error.
fn interleaved(reps: usize, cases: &mut [Case<'_>]) -> Vec<(&'static str, Result<f64, String>)> {
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(reps); cases.len()];
    let mut errors: Vec<Option<String>> = vec![None; cases.len()];
    let mut order: Vec<usize> = (0..cases.len()).collect();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..reps + 3 {
        // Fisher-Yates with xorshift64: reproducible from run to run.
        for k in (1..order.len()).rev() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            order.swap(k, (seed % (k as u64 + 1)) as usize);
        }
        for &i in &order {
            if errors[i].is_some() {
                continue;
            }
            let f = &mut cases[i].1;
            let t = Instant::now();
            let r = f();
            let us = t.elapsed().as_secs_f64() * 1e6;
            match r {
                Err(e) => errors[i] = Some(e),
                // The first rounds warm up (the forkserver starts on first use).
                Ok(()) if round >= 3 => samples[i].push(us),
                Ok(()) => {}
            }
        }
    }
    cases
        .iter()
        .zip(samples.iter_mut().zip(errors))
        .map(|((name, _), (s, err))| (*name, err.map_or_else(|| Ok(median(s)), Err)))
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

fn python_case(method: &str, reps: usize) -> Option<f64> {
    run_python(SUITE, "spawn.py", &[method.to_owned(), reps.to_string()])?
        .get("median_us")?
        .as_f64()
}

/// Runs the suite.
pub(crate) fn run(quick: bool) {
    let reps = if quick { 60 } else { 400 };
    let mut cases: Vec<Case<'_>> = vec![
        (
            "herd-forkserver",
            Box::new(|| herd_round(herd::StartMethod::ForkServer)),
        ),
        (
            "herd-spawn",
            Box::new(|| herd_round(herd::StartMethod::Spawn)),
        ),
        ("procspawn", Box::new(procspawn_round)),
        ("fork+waitpid", Box::new(fork_round)),
    ];
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
    for (method, py_reps) in [("fork", 200), ("forkserver", 200), ("spawn", 50)] {
        let py_reps = if quick { py_reps / 8 } else { py_reps };
        if let Some(v) = python_case(method, py_reps) {
            let name = format!("python-{method}");
            record(&name, v);
            medians.insert(name, v);
        }
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
