//! Suite `scaling`: one CPU-bound function on 1..N threads and on 1..N
//! processes (N = this machine's CPU count), reporting the speedup — the
//! seed's GIL point (C8): Python's threads do not scale on CPU-bound work,
//! its processes do; in Rust, threads scale like processes.
//!
//! Each of W workers runs the same fixed amount of work, so perfect scaling
//! keeps the wall time constant: speedup(W) = W × time(1) / time(W). The
//! pools are started before timing. The Python baseline (threads and
//! `multiprocessing.Pool`) runs the same loop in pure Python with fewer
//! steps; only its speedup is comparable.

use std::time::Instant;

use crate::report::{note, run_python};

const SUITE: &str = "scaling";

/// A CPU-bound loop (xorshift), `iters` steps.
#[herd::task]
fn burn(iters: u64) -> u64 {
    let mut x: u64 = 88_172_645_463_325_252;
    for _ in 0..iters {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x = std::hint::black_box(x);
    }
    x
}

fn record(case: &str, implementation: &str, metric: &str, value: f64, unit: &str) {
    crate::report::record(SUITE, case, implementation, metric, value, unit);
}

fn threads(w: usize, iters: u64) -> f64 {
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..w {
            s.spawn(|| burn(iters));
        }
    });
    t.elapsed().as_secs_f64()
}

fn processes(pool: &herd::Pool, w: usize, iters: u64) -> Option<f64> {
    let t = Instant::now();
    match pool.map_chunked(burn, vec![iters; w], 1) {
        Ok(_) => Some(t.elapsed().as_secs_f64()),
        Err(e) => {
            note(SUITE, &format!("process run failed: {e}"));
            None
        }
    }
}

/// The best (least) of three timings.
fn best(mut f: impl FnMut() -> Option<f64>) -> Option<f64> {
    (0..3).filter_map(|_| f()).reduce(f64::min)
}

/// Runs the suite.
pub(crate) fn run(quick: bool) {
    let n = std::thread::available_parallelism().map_or(2, |n| n.get());
    let iters: u64 = if quick { 30_000_000 } else { 150_000_000 };
    let py_iters: u64 = if quick { 300_000 } else { 1_500_000 };
    note(
        SUITE,
        &format!("{n} CPUs; each worker runs {iters} steps (Python: {py_iters})"),
    );
    let mut base: Vec<(&str, f64)> = Vec::new();
    for w in 1..=n {
        let case = format!("workers_{w}");
        let mut results: Vec<(&str, Option<f64>)> =
            vec![("herd-threads", best(|| Some(threads(w, iters))))];
        match herd::Pool::new(w) {
            Ok(pool) => results.push(("herd-processes", best(|| processes(&pool, w, iters)))),
            Err(e) => note(SUITE, &format!("herd pool of {w} unavailable: {e}")),
        }
        if let Some(py) = run_python(SUITE, "gil.py", &[w.to_string(), py_iters.to_string()]) {
            results.push(("python-threads", py["threads_s"].as_f64()));
            results.push(("python-processes", py["processes_s"].as_f64()));
        }
        for (name, secs) in results {
            let Some(secs) = secs else { continue };
            record(&case, name, "elapsed_ms", secs * 1e3, "ms");
            if w == 1 {
                base.push((name, secs));
            }
            if let Some((_, t1)) = base.iter().find(|(b, _)| *b == name) {
                record(&case, name, "speedup", w as f64 * t1 / secs, "x");
            }
        }
    }
}
