//! The seed's distributed processes (C10), `task_worker.py` in Rust:
//! connects to the master's manager with the key, takes tasks from the
//! task queue, computes `n * n`, puts the result on the result queue and
//! acknowledges the task — only then is the task done; a worker that dies
//! before its ack leaves the task to be delivered again.
//!
//! Run after `task_master` (same `HERD_MANAGER_ADDR`/`HERD_MANAGER_KEY`).
//! `-- --die-after-get` takes one task and exits without finishing it (to
//! watch another worker do it instead).

use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    herd::init();
    let addr = std::env::var("HERD_MANAGER_ADDR").unwrap_or_else(|_| "127.0.0.1:5000".to_owned());
    let key = std::env::var("HERD_MANAGER_KEY").unwrap_or_else(|_| "abc".to_owned());
    let die = std::env::args().any(|a| a == "--die-after-get");
    println!("Connect to server {addr}...");
    let client = herd::manager::connect(addr.as_str(), key.as_bytes())?;
    let tasks = client.queue::<u64>("task");
    let results = client.queue::<String>("result");
    loop {
        let task = match tasks.get_timeout(Duration::from_secs(1)) {
            Ok(Some(task)) => task,
            Ok(None) => {
                println!("task queue is empty.");
                break;
            }
            Err(e) => {
                // The master is done and its manager stopped (or is gone).
                println!("the manager is gone: {e}");
                break;
            }
        };
        let n = task.value;
        if die {
            println!("took task {n}, and dies without finishing it");
            std::process::exit(3);
        }
        println!("run task {n} * {n}...");
        results.put(&format!("{n} * {n} = {}", n * n))?;
        task.ack()?;
    }
    println!("worker exit.");
    Ok(())
}
