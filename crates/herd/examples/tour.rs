//! A guided tour of herd's process model, following the seed: a child
//! process runs a Rust function in its own address space, moves through the
//! states of the process-state diagram, and hands back a typed result — or
//! a typed error when it panics, is killed, or its parent dies.
//!
//! Run: `cargo run --release --example tour`

use std::time::{Duration, Instant};

use herd::{Process, ProcessError, ProcessState, Signal, StartMethod};

#[herd::task]
fn fib(n: u64) -> u64 {
    if n < 2 { n } else { fib(n - 1) + fib(n - 2) }
}

#[herd::task]
fn who_am_i() -> String {
    let me = herd::current_process();
    format!("{} (pid {}, started by {})", me.name, me.pid, me.ppid)
}

#[herd::task]
fn wait_forever() {
    loop {
        std::thread::park();
    }
}

#[herd::task]
fn fails(input: i32) -> i32 {
    if input < 0 {
        panic!("negative input: {input}");
    }
    input
}

fn step(title: &str) {
    println!("\n== {title}");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    herd::init();
    let me = herd::current_process();
    println!("herd tour — {} is pid {}", me.name, me.pid);

    step("A child runs a function and returns a typed value (C2)");
    for method in [StartMethod::Spawn, StartMethod::ForkServer] {
        let t = Instant::now();
        let mut p = Process::builder(fib, (30,)).start_method(method).start()?;
        let v = p.join()?;
        println!(
            "fib(30) = {v} in child {} via {method:?}: {:.2?} start to finish",
            p.pid(),
            t.elapsed()
        );
    }
    let mut p = herd::spawn(who_am_i, ())?;
    println!("the child says it is {}", p.join()?);

    step("States from the OS (C1: running, sleeping, stopped, zombie, ended)");
    let mut p = Process::builder(wait_forever, ()).name("sleeper").start()?;
    println!("{}: {}", p.name(), p.state()?);
    p.signal(Signal::STOP)?;
    while p.state()? != ProcessState::Stopped {
        std::thread::yield_now();
    }
    println!("after SIGSTOP: {}", p.state()?);
    p.signal(Signal::CONT)?;
    println!(
        "live children: {:?}",
        herd::active_children()
            .iter()
            .map(|c| &c.name)
            .collect::<Vec<_>>()
    );
    println!(
        "terminate → {}; state: {}; exitcode: {:?}",
        p.terminate()?,
        p.state()?,
        p.exitcode()
    );

    let mut q = herd::spawn(fib, (10,))?;
    while q.state()? != ProcessState::Zombie {
        std::thread::yield_now();
    }
    println!("a finished child not yet joined: {}", q.state()?);
    println!("joined: {} → state {}", q.join()?, q.state()?);

    step("Failures are values, never hangs");
    let mut p = Process::builder(fails, (-1,))
        .stderr(herd::Stdio::null())
        .start()?;
    match p.join() {
        Err(ProcessError::Panicked { report, .. }) => {
            println!(
                "panic: {:?} at {}",
                report.message,
                report.location.unwrap_or_default()
            );
        }
        other => println!("unexpected: {other:?}"),
    }
    let mut p = herd::spawn(wait_forever, ())?;
    p.kill()?;
    println!("killed: {}", p.join().unwrap_err());
    let mut p = herd::spawn(wait_forever, ())?;
    let t = Instant::now();
    let r = p.join_timeout(Duration::from_millis(100))?;
    println!(
        "join_timeout(100 ms) → {r:?} after {:.0?}; still alive: {}",
        t.elapsed(),
        p.is_alive()
    );
    p.terminate()?;

    step("Exit");
    println!("daemon children are terminated at exit; others are waited for.");
    println!("if this program were killed, every child would follow within a second.");
    Ok(())
}
