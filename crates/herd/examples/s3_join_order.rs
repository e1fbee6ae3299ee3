//! Seed example S3: two children and the parent each loop three times with
//! one-second pauses. Without `join` the parent finishes first and the
//! children go on; `join` makes the parent wait.
//!
//! `cargo run --example s3_join_order -- MODE`, where MODE is
//! * `none` (default): no join; the parent's loop ends first. Like Python,
//!   herd waits for non-daemon children when the program exits;
//! * `first`: `p1.join()` right after `p1.start()`: child 1 runs alone, then
//!   child 2 and the parent run side by side;
//! * `second`: `p2.join()` after `p2.start()`: children 1 and 2 run side by
//!   side, then the parent;
//! * `both`: child 1, then child 2, then the parent;
//! * `timeout`: `p1.join_timeout(1.5 s)` returns while child 1 still runs.

mod common;

#[herd::task]
fn func(name: String) {
    let me = herd::current_process();
    for _ in 0..3 {
        println!(
            "child process {name} running: pid={}, ppid={}",
            me.pid, me.ppid
        );
        common::sleep_secs(1.0);
    }
    println!("child process {name} ends.");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    herd::init();
    let mode = std::env::args().nth(1).unwrap_or_else(|| "none".to_owned());
    let pid = std::process::id();
    println!("main process starts: pid={pid}");
    let mut p1 = herd::Process::builder(func, ("1".to_owned(),)).start()?;
    if mode == "first" || mode == "both" {
        p1.join()?;
    }
    if mode == "timeout" {
        match p1.join_timeout(common::scaled(1.5))? {
            Some(()) => println!("child process 1 finished within the timeout"),
            None => println!("child process 1 still running after join_timeout"),
        }
    }
    let mut p2 = herd::Process::builder(func, ("2".to_owned(),)).start()?;
    if mode == "second" || mode == "both" {
        p2.join()?;
    }
    for _ in 0..3 {
        println!("main process running, pid={pid}");
        common::sleep_secs(1.0);
    }
    println!("main process ends.");
    // No join here in `none` mode: the handles are dropped and herd waits for
    // these non-daemon children at exit, as Python does.
    Ok(())
}
