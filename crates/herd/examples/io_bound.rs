//! The seed's advice on IO-bound work (C5, C6, C7, C9), shown: many
//! simulated IO waits as coroutines (tokio tasks) and as threads, and
//! CPU-bound work offloaded from async code to a process pool with one
//! `.await`.
//!
//! Coroutines are scheduled by the program, not the OS: ten thousand wait
//! at once on two worker threads for a few MiB. Threads can do the same for
//! more memory and start-up time. CPU-bound work belongs in processes (or,
//! in Rust, threads: no GIL), and an async program hands it to a pool
//! without blocking its executor. The numbers, measured: `herd-bench io`.
//!
//! Run: `cargo run --release --example io_bound` (`HERD_EXAMPLE_SLEEP_MS`
//! scales the one-second seed wait; `HERD_EXAMPLE_WAITS` sets how many).

mod common;

use std::time::Instant;

#[herd::task]
fn crunch(n: u64) -> u64 {
    // A CPU-bound stand-in: sum of the first n squares, the slow way.
    (1..=n).map(|i| i * i % 1_000_007).sum()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    herd::init(); // before any runtime starts a thread
    let waits: usize = std::env::var("HERD_EXAMPLE_WAITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let wait = common::scaled(0.1);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    let t = Instant::now();
    rt.block_on(async {
        let tasks: Vec<_> = (0..waits)
            .map(|_| tokio::spawn(tokio::time::sleep(wait)))
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    });
    println!(
        "{waits} coroutines waited {wait:?} each: {:?} in all",
        t.elapsed()
    );

    let t = Instant::now();
    let threads: Vec<_> = (0..waits)
        .map(|_| {
            herd::thread::Builder::new()
                .stack_size(64 << 10)
                .spawn(|| common::sleep_secs(0.1))
        })
        .collect::<Result<_, _>>()?;
    for th in threads {
        th.join()?;
    }
    println!(
        "{waits} threads waited {wait:?} each: {:?} in all",
        t.elapsed()
    );

    let pool = herd::Pool::new(2)?;
    let t = Instant::now();
    let (sum, waited) = rt.block_on(async {
        // The CPU work runs in worker processes while this task awaits it;
        // the executor stays free for the IO meanwhile.
        let work = pool.apply_async(crunch, (2_000_000,));
        let io = tokio::time::sleep(wait);
        let (sum, ()) = tokio::join!(work, io);
        (sum, t.elapsed())
    });
    println!(
        "offloaded CPU work to a process pool with one .await: {} (with an IO wait beside it, {waited:?})",
        sum?
    );
    Ok(())
}
