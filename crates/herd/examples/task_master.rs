//! The seed's distributed processes (C10), `task_master.py` in Rust: a
//! master serves a task queue and a result queue on the network with a key,
//! puts ten random numbers as tasks, and collects the ten results that
//! workers on other machines (`task_worker`) put back.
//!
//! Unlike Python's, a worker that dies after taking a task does not lose it
//! (the task is delivered again), the key is never sent and nothing on the
//! wire can run code in the master.
//!
//! Run: `cargo run --example task_master` and, in other terminals (or on
//! other machines, with `HERD_MANAGER_ADDR`), `cargo run --example
//! task_worker`. The address defaults to 127.0.0.1:5000 (the seed's port);
//! `HERD_MANAGER_KEY` sets the key.

use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    herd::init();
    let addr = std::env::var("HERD_MANAGER_ADDR").unwrap_or_else(|_| "127.0.0.1:5000".to_owned());
    let key = std::env::var("HERD_MANAGER_KEY").unwrap_or_else(|_| "abc".to_owned());
    let manager = herd::manager::Manager::builder(key.as_bytes()).start(addr.as_str())?;
    println!("Manager listening on {}", manager.addr());
    let client = herd::manager::connect(manager.addr(), key.as_bytes())?;
    let tasks = client.queue::<u64>("task");
    let results = client.queue::<String>("result");
    let mut seed = std::process::id() as u64 | 1;
    for _ in 0..10 {
        // xorshift: the seed's random.randint(0, 10000)
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let n = seed % 10_001;
        println!("Put task {n}...");
        tasks.put(&n)?;
    }
    println!("Try get results...");
    for _ in 0..10 {
        match results.get_timeout(Duration::from_secs(60))? {
            Some(r) => {
                println!("Result: {}", r.value);
                r.ack()?;
            }
            None => {
                println!("No result in 60 s: are workers running?");
                break;
            }
        }
    }
    manager.shutdown();
    println!("master exit.");
    Ok(())
}
