//! Suite `pool`: tasks per second for a trivial task.
//!
//! Cases (one pool per implementation, started before timing, sized to the
//! CPU count; the best of three runs):
//! * `apply_async_all`: submit every task, then gather every result;
//! * `apply_async_one_at_a_time`: submit, wait, repeat (the round trip);
//! * `map_chunk1`: `map` with chunk size 1;
//! * `map_auto`: `map` with the automatic chunk size;
//! * `copy_files_4`, `copy_files_400`: the seed's S6, copying 64 KiB files
//!   in one process and with the pool (files/s): where a pool starts to pay.
//!
//! Implementations: herd's process pool and thread pool, Python's
//! `multiprocessing.Pool` (the script beside this crate), procspawn's `Pool`
//! (its unit is one task: no map, no chunking), and rayon (the thread
//! ceiling, on a pool of the same size: `scope`+`spawn` for `apply_async_all`,
//! `install` per task for one at a time, `par_iter` for `map`).
//! `ratio` records give the targets: herd-process over Python and
//! procspawn, herd-thread over rayon.

use std::time::Instant;

use rayon::prelude::*;

use crate::report::{Record, emit, note, run_python};

const SUITE: &str = "pool";

#[herd::task]
fn noop(x: u64) -> u64 {
    x + 1
}

fn record(case: &str, implementation: &str, tasks_s: f64) {
    emit(&Record {
        suite: SUITE,
        case,
        implementation,
        metric: "tasks_per_s",
        value: tasks_s,
        unit: "tasks/s",
    });
}

fn ratio(case: &str, what: &str, value: f64) {
    emit(&Record {
        suite: SUITE,
        case,
        implementation: what,
        metric: "ratio",
        value,
        unit: "x",
    });
}

/// Best of three runs of `f(n)`, in tasks/s, after one untimed warm-up
/// run (the first run of a case pays for fresh memory: page faults on
/// the output, an allocator growing its heap); `None` if a run failed.
fn best(n: u64, mut f: impl FnMut(u64) -> Result<(), String>) -> Option<f64> {
    if let Err(e) = f(n) {
        note(SUITE, &e);
        return None;
    }
    let mut top: f64 = 0.0;
    for _ in 0..3 {
        let t = Instant::now();
        if let Err(e) = f(n) {
            note(SUITE, &e);
            return None;
        }
        top = top.max(n as f64 / t.elapsed().as_secs_f64());
    }
    Some(top)
}

fn check(v: Vec<u64>, n: u64) -> Result<(), String> {
    if v.len() as u64 == n && v.iter().enumerate().all(|(i, x)| *x == i as u64 + 1) {
        Ok(())
    } else {
        Err(format!("wrong results: {} of {n}", v.len()))
    }
}

fn herd_case(pool: &herd::Pool, case: &str, n: u64) -> Result<(), String> {
    let s = |e: herd::TaskError| e.to_string();
    match case {
        "apply_async_all" => {
            let rs: Vec<_> = (0..n).map(|i| pool.apply_async(noop, (i,))).collect();
            let v = rs
                .into_iter()
                .map(|r| r.get())
                .collect::<Result<Vec<_>, _>>()
                .map_err(s)?;
            check(v, n)
        }
        "apply_async_one_at_a_time" => {
            for i in 0..n {
                if pool.apply_async(noop, (i,)).get().map_err(s)? != i + 1 {
                    return Err("wrong result".to_owned());
                }
            }
            Ok(())
        }
        "map_chunk1" => check(pool.map_chunked(noop, 0..n, 1).map_err(s)?, n),
        _ => check(pool.map(noop, 0..n).map_err(s)?, n),
    }
}

fn rayon_case(tp: &rayon::ThreadPool, case: &str, n: u64) -> Result<(), String> {
    match case {
        // Chunk size 1: rayon may not merge items either.
        "map_chunk1" => check(
            tp.install(|| {
                (0..n as usize)
                    .into_par_iter()
                    .with_max_len(1)
                    .map(|i| noop(i as u64))
                    .collect()
            }),
            n,
        ),
        "map_auto" => check(tp.install(|| (0..n).into_par_iter().map(noop).collect()), n),
        // A round trip: run one task on the pool, wait, repeat.
        "apply_async_one_at_a_time" => check((0..n).map(|i| tp.install(|| noop(i))).collect(), n),
        _ => {
            let mut out = vec![0u64; n as usize];
            tp.scope(|s| {
                for (i, slot) in out.iter_mut().enumerate() {
                    s.spawn(move |_| *slot = noop(i as u64));
                }
            });
            check(out, n)
        }
    }
}

fn procspawn_case(pool: &procspawn::Pool, case: &str, n: u64) -> Result<(), String> {
    let one = |i: u64| pool.spawn(i, |i| i + 1);
    let v = if case == "apply_async_one_at_a_time" {
        (0..n)
            .map(|i| one(i).join().map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        let hs: Vec<_> = (0..n).map(one).collect();
        hs.into_iter()
            .map(|h| h.join().map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?
    };
    check(v, n)
}

/// Copies one file (the seed's S6 task); returns the bytes copied.
#[herd::task]
fn copy_file(from: String, to: String) -> u64 {
    std::fs::copy(&from, &to).unwrap_or(0)
}

/// The seed's S6: copying N files in one process and with the pool, for a
/// few and for many files — the crossover where a pool starts to pay.
fn copy_files(procs: &herd::Pool, workers: usize, quick: bool) {
    let size = 64 << 10;
    for n in [4usize, 400] {
        let case = format!("copy_files_{n}");
        let dir = std::env::temp_dir().join(format!("herd-bench-s6-{}-{n}", std::process::id()));
        let made = std::fs::create_dir_all(&dir).and_then(|()| {
            (0..n).try_for_each(|i| {
                std::fs::write(dir.join(format!("f{i:04}")), vec![(i % 251) as u8; size])
            })
        });
        if let Err(e) = made {
            note(SUITE, &format!("{case}: cannot make the files: {e}"));
            let _ = std::fs::remove_dir_all(&dir);
            continue;
        }
        let pairs: Vec<(String, String)> = (0..n)
            .map(|i| {
                let from = dir.join(format!("f{i:04}"));
                let to = dir.join(format!("f{i:04}.copy"));
                (from.display().to_string(), to.display().to_string())
            })
            .collect();
        let reps = if quick { 3 } else { 10 };
        let mut one = 0f64;
        let mut pooled = 0f64;
        for _ in 0..reps {
            let t = Instant::now();
            for (from, to) in &pairs {
                let _ = std::fs::copy(from, to);
            }
            one = one.max(n as f64 / t.elapsed().as_secs_f64());
            let t = Instant::now();
            match procs.starmap(copy_file, pairs.clone()) {
                Ok(v) if v.iter().all(|b| *b == size as u64) => {
                    pooled = pooled.max(n as f64 / t.elapsed().as_secs_f64());
                }
                other => note(SUITE, &format!("{case}: pool copy failed: {other:?}")),
            }
        }
        for (name, v) in [("herd-one-process", one), ("herd-process", pooled)] {
            emit(&Record {
                suite: SUITE,
                case: &case,
                implementation: name,
                metric: "files_per_s",
                value: v,
                unit: "files/s",
            });
        }
        ratio(&case, "herd-process/herd-one-process", pooled / one);
        for (_, to) in &pairs {
            let _ = std::fs::remove_file(to);
        }
        let py = run_python(
            SUITE,
            "mp_pool.py",
            &[
                "copy_files".to_owned(),
                dir.display().to_string(),
                workers.to_string(),
            ],
        );
        if let Some(py) = py {
            for (key, name) in [
                ("one_files_s", "python-one-process"),
                ("pool_files_s", "python-mp-pool"),
            ] {
                if let Some(v) = py[key].as_f64() {
                    emit(&Record {
                        suite: SUITE,
                        case: &case,
                        implementation: name,
                        metric: "files_per_s",
                        value: v,
                        unit: "files/s",
                    });
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Runs the suite.
pub(crate) fn run(quick: bool) {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let scale = if quick { 1 } else { 5 };
    let cases: [(&str, u64); 4] = [
        ("apply_async_all", 20_000 * scale),
        ("apply_async_one_at_a_time", 2_000 * scale),
        ("map_chunk1", 20_000 * scale),
        ("map_auto", 1_000_000 * scale),
    ];
    let procs = match herd::Pool::new(workers) {
        Ok(p) => p,
        Err(e) => return note(SUITE, &format!("herd process pool unavailable: {e}")),
    };
    let threads = match herd::Pool::threads(workers) {
        Ok(p) => p,
        Err(e) => return note(SUITE, &format!("herd thread pool unavailable: {e}")),
    };
    let tp = match rayon::ThreadPoolBuilder::new().num_threads(workers).build() {
        Ok(tp) => tp,
        Err(e) => return note(SUITE, &format!("rayon pool unavailable: {e}")),
    };
    let ps = procspawn::Pool::new(workers).ok();
    if ps.is_none() {
        note(SUITE, "procspawn pool unavailable");
    }
    for (case, n) in cases {
        let herd_p = best(n, |n| herd_case(&procs, case, n));
        let herd_t = best(n, |n| herd_case(&threads, case, n));
        let ray = best(n, |n| rayon_case(&tp, case, n));
        // procspawn has no map; its apply cases are its whole API. Its
        // tasks are slower, so it runs a tenth of the items, at most 2 000:
        // each of its pending tasks holds file descriptors, and beyond a
        // few thousand it panics inside ("Too many open files").
        let peer = match (&ps, case.starts_with("apply")) {
            (Some(ps), true) => best((n / 10).clamp(100, 2_000), |n| procspawn_case(ps, case, n)),
            _ => None,
        };
        let py_n = if case == "map_auto" {
            n
        } else {
            (n / 4).max(500)
        };
        let py = run_python(
            SUITE,
            "mp_pool.py",
            &[case.to_owned(), py_n.to_string(), workers.to_string()],
        )
        .and_then(|v| v["tasks_s"].as_f64());
        for (name, v) in [
            ("herd-process", herd_p),
            ("herd-thread", herd_t),
            ("rayon", ray),
            ("procspawn", peer),
            ("python-mp-pool", py),
        ] {
            if let Some(v) = v {
                record(case, name, v);
            }
        }
        if let (Some(h), Some(p)) = (herd_p, py) {
            ratio(case, "herd-process/python", h / p);
        }
        if let (Some(h), Some(p)) = (herd_p, peer) {
            ratio(case, "herd-process/procspawn", h / p);
        }
        if let (Some(h), Some(r)) = (herd_t, ray) {
            ratio(case, "herd-thread/rayon", h / r);
        }
    }
    copy_files(&procs, workers, quick);
}
