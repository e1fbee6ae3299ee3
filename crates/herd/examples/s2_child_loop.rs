//! Seed example S2: a child process loops printing its pid and ppid while
//! the parent loops too — two "infinite" loops both run, because they are in
//! two processes. (S1, the motivation, is the same two loops in one process:
//! the second never runs.)
//!
//! The seed loops forever; here the parent stops after `HERD_EXAMPLE_ROUNDS`
//! rounds (default 5) and terminates the child, which would otherwise loop
//! on forever. Run: `cargo run --example s2_child_loop`.

mod common;

#[herd::task]
fn func(_name: String) {
    let me = herd::current_process();
    loop {
        println!("child process running: pid={}, ppid={}", me.pid, me.ppid);
        common::sleep_secs(1.0);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    herd::init();
    let me = herd::current_process();
    println!("main process starts: pid={}, ppid={}", me.pid, me.ppid);
    let mut p = herd::Process::builder(func, ("son".to_owned(),)).start()?;
    let rounds: u32 = std::env::var("HERD_EXAMPLE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    for _ in 0..rounds {
        println!("main process running, pid={}, ppid={}", me.pid, me.ppid);
        common::sleep_secs(1.0);
    }
    // The seed's loop never ends, so its last line never prints; ours ends,
    // and stops the child, which never would.
    p.terminate()?;
    println!("main process ends.");
    Ok(())
}
