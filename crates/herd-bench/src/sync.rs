//! Suite `sync`: lock acquire+release throughput.
//!
//! Uncontended, in one thread: herd `Lock` (robust, cross-process) against
//! Python's `multiprocessing.Lock` (raw `acquire()`/`release()` and `with`),
//! `std::sync::Mutex` and `parking_lot::Mutex` (the ceiling; threads only).
//! Contended, two processes hammering one lock: herd against Python; and two
//! threads for std and parking_lot.

use std::time::Instant;

use herd::sync::{Barrier, Lock};

use crate::report::{Record, emit, note, run_python};

const SUITE: &str = "sync";

fn record(case: &str, implementation: &str, ops_s: f64) {
    emit(&Record {
        suite: SUITE,
        case,
        implementation,
        metric: "ops_per_s",
        value: ops_s,
        unit: "ops/s",
    });
}

/// Best of `reps` runs of `n` iterations of `f`, in ops/s.
fn best(reps: usize, n: u64, mut f: impl FnMut(u64)) -> f64 {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f(n);
            n as f64 / t.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

#[herd::task]
fn hammer(lock: Lock, start: Barrier, n: u64) {
    let _ = start.wait();
    for _ in 0..n {
        drop(lock.acquire());
    }
}

fn python(mode: &str, n: u64) -> Option<serde_json::Value> {
    run_python(SUITE, "sync.py", &[mode.to_owned(), n.to_string()])
}

/// Runs the suite.
pub(crate) fn run(quick: bool) {
    let n: u64 = if quick { 2_000_000 } else { 20_000_000 };
    let reps = if quick { 3 } else { 5 };
    let lock = match Lock::new() {
        Ok(l) => l,
        Err(e) => return note(SUITE, &format!("herd Lock unavailable: {e}")),
    };
    let herd_un = best(reps, n, |n| {
        for _ in 0..n {
            drop(std::hint::black_box(lock.acquire()));
        }
    });
    record("uncontended", "herd-lock", herd_un);
    let m = std::sync::Mutex::new(0u64);
    record(
        "uncontended",
        "std-mutex",
        best(reps, n, |n| {
            for _ in 0..n {
                drop(std::hint::black_box(m.lock()));
            }
        }),
    );
    let p = parking_lot::Mutex::new(0u64);
    let pl = best(reps, n, |n| {
        for _ in 0..n {
            drop(std::hint::black_box(p.lock()));
        }
    });
    record("uncontended", "parking_lot", pl);
    let py_n = if quick { 300_000 } else { 2_000_000 };
    let mut py_raw = None;
    if let Some(v) = python("uncontended", py_n) {
        if let Some(raw) = v.get("raw_ops_s").and_then(serde_json::Value::as_f64) {
            record("uncontended", "python-mp-lock-raw", raw);
            py_raw = Some(raw);
        }
        if let Some(with) = v.get("with_ops_s").and_then(serde_json::Value::as_f64) {
            record("uncontended", "python-mp-lock-with", with);
        }
    }

    // Contended: two processes (herd, Python) or two threads (std, parking_lot).
    let cn: u64 = if quick { 200_000 } else { 2_000_000 };
    let herd_con = (|| -> Result<f64, String> {
        let start = Barrier::new(3).map_err(|e| e.to_string())?;
        let mut kids = Vec::new();
        for _ in 0..2 {
            kids.push(
                herd::spawn(hammer, (lock.clone(), start.clone(), cn))
                    .map_err(|e| e.to_string())?,
            );
        }
        start.wait().map_err(|e| e.to_string())?;
        let t = Instant::now();
        for k in &mut kids {
            k.join().map_err(|e| e.to_string())?;
        }
        Ok(2.0 * cn as f64 / t.elapsed().as_secs_f64())
    })();
    match herd_con {
        Ok(v) => record("contended-2", "herd-lock-2-processes", v),
        Err(e) => note(SUITE, &format!("herd contended failed: {e}")),
    }
    let threads = |f: &(dyn Fn() + Sync)| {
        let t = Instant::now();
        std::thread::scope(|s| {
            s.spawn(f);
            s.spawn(f);
        });
        2.0 * cn as f64 / t.elapsed().as_secs_f64()
    };
    record(
        "contended-2",
        "std-mutex-2-threads",
        threads(&|| {
            for _ in 0..cn {
                drop(std::hint::black_box(m.lock()));
            }
        }),
    );
    record(
        "contended-2",
        "parking_lot-2-threads",
        threads(&|| {
            for _ in 0..cn {
                drop(std::hint::black_box(p.lock()));
            }
        }),
    );
    if let Some(v) =
        python("contended", cn / 4).and_then(|v| v.get("ops_s").and_then(serde_json::Value::as_f64))
    {
        record("contended-2", "python-mp-lock-2-processes", v);
    }
    let ratio = |case: &str, implementation: &str, value: f64| {
        emit(&Record {
            suite: SUITE,
            case,
            implementation,
            metric: "ratio",
            value,
            unit: "x",
        });
    };
    if let Some(raw) = py_raw {
        ratio("uncontended-vs-python-raw", "herd-lock", herd_un / raw);
    }
    ratio(
        "uncontended-parking_lot-over-herd",
        "herd-lock",
        pl / herd_un,
    );
}
