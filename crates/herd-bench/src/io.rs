//! Suite `io`: the seed's rule of thumb for IO-bound work (C6, C7, C9),
//! measured. N concurrent simulated IO waits (a 100 ms sleep each): 10 000
//! as coroutines (tokio tasks), 10 000 as threads (64 KiB stacks), and a
//! thousand as processes (herd children) — the most this 2-core, 24 GiB
//! machine sensibly takes: starting a process costs ~0.4 ms here, so a
//! thousand already take longer to start than the wait itself lasts, and
//! each holds ~1 MiB of its own memory; 10 000 would spend ~4 s starting and
//! ~10 GiB of memory to wait 100 ms. Python's asyncio and threads run the
//! same waits beside them.
//!
//! Threads and processes are all started first and then released at once
//! (so all are alive when memory is measured; the wall time includes
//! starting them). Reported: the wall time until every wait is done, and
//! the memory added while all of them are in flight (resident memory of this process over its
//! own before; for processes, plus the proportional set size of every child,
//! so shared pages count once).

use std::time::{Duration, Instant};

use crate::report::{Record, emit, note, run_python};

const SUITE: &str = "io";
const WAIT: Duration = Duration::from_millis(100);

/// Waits for the start signal (so every child is alive when memory is
/// measured), then for the simulated IO.
#[herd::task]
fn wait_io(go: herd::sync::Event, ms: u64) {
    go.wait_timeout(Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(ms));
}

fn record(case: &str, implementation: &str, elapsed: Duration, extra_mb: f64) {
    emit(&Record {
        suite: SUITE,
        case,
        implementation,
        metric: "elapsed_ms",
        value: elapsed.as_secs_f64() * 1e3,
        unit: "ms",
    });
    emit(&Record {
        suite: SUITE,
        case,
        implementation,
        metric: "extra_mb",
        value: extra_mb,
        unit: "MiB",
    });
}

/// A `/proc/<pid>/...` field in KiB, as MiB.
fn proc_kib(path: &str, field: &str) -> f64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn rss_mb() -> f64 {
    proc_kib("/proc/self/status", "VmRSS:")
}

fn coroutines(n: usize) -> Result<(Duration, f64), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .map_err(|e| e.to_string())?;
    let base = rss_mb();
    let t = Instant::now();
    let peak = rt.block_on(async {
        let tasks: Vec<_> = (0..n)
            .map(|_| tokio::spawn(tokio::time::sleep(WAIT)))
            .collect();
        tokio::task::yield_now().await;
        let peak = rss_mb();
        for task in tasks {
            let _ = task.await;
        }
        peak
    });
    Ok((t.elapsed(), peak - base))
}

fn threads(n: usize) -> Result<(Duration, f64), String> {
    let base = rss_mb();
    let t = Instant::now();
    let go = std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let mut handles = Vec::with_capacity(n);
    for _ in 0..n {
        let go = std::sync::Arc::clone(&go);
        let h = std::thread::Builder::new()
            .stack_size(64 << 10)
            .spawn(move || {
                let (lock, cv) = &*go;
                let mut started = lock
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                while !*started {
                    started = cv
                        .wait(started)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                drop(started);
                std::thread::sleep(WAIT);
            })
            .map_err(|e| format!("thread {} of {n}: {e}", handles.len()))?;
        handles.push(h);
    }
    // Every thread is alive (waiting for the start) now.
    let peak = rss_mb();
    *go.0
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = true;
    go.1.notify_all();
    for h in handles {
        let _ = h.join();
    }
    Ok((t.elapsed(), peak - base))
}

fn processes(n: usize) -> Result<(Duration, f64), String> {
    let go = herd::sync::Event::new().map_err(|e| e.to_string())?;
    let base = rss_mb();
    let t = Instant::now();
    let mut children = Vec::with_capacity(n);
    for _ in 0..n {
        let p = herd::spawn(wait_io, (go.clone(), WAIT.as_millis() as u64))
            .map_err(|e| format!("process {} of {n}: {e}", children.len()))?;
        children.push(p);
    }
    // Every child is alive (waiting for the start) now.
    let pss: f64 = children
        .iter()
        .map(|c| proc_kib(&format!("/proc/{}/smaps_rollup", c.pid()), "Pss:"))
        .sum();
    let peak = rss_mb() - base + pss;
    go.set();
    for mut c in children {
        c.join().map_err(|e| e.to_string())?;
    }
    Ok((t.elapsed(), peak))
}

/// One way to wait: N waits, wall time and extra MiB.
type Run = fn(usize) -> Result<(Duration, f64), String>;

/// Runs the suite.
pub(crate) fn run(quick: bool) {
    let many = 10_000;
    let procs = if quick { 200 } else { 1_000 };
    let cases: [(&str, usize, Run); 3] = [
        ("tokio-coroutines", many, coroutines),
        ("std-threads", many, threads),
        ("herd-processes", procs, processes),
    ];
    for (name, n, f) in cases {
        let case = format!("waits_{n}");
        match f(n) {
            Ok((elapsed, mb)) => record(&case, name, elapsed, mb),
            Err(e) => note(SUITE, &format!("{name} x{n}: {e}")),
        }
    }
    // Python's threads take minutes to start and release 10 000 on two
    // CPUs (the GIL); the quick run gives them a thousand.
    let py_threads = if quick { 1_000 } else { many };
    for (kind, n) in [("asyncio", many), ("threads", py_threads)] {
        let py = run_python(
            SUITE,
            "io_waits.py",
            &[kind.to_owned(), n.to_string(), WAIT.as_millis().to_string()],
        );
        if let Some(py) = py {
            let (Some(ms), Some(mb)) = (py["elapsed_ms"].as_f64(), py["extra_mb"].as_f64()) else {
                continue;
            };
            let name = format!("python-{kind}");
            record(
                &format!("waits_{n}"),
                &name,
                Duration::from_secs_f64(ms / 1e3),
                mb,
            );
        }
    }
}
