//! Seed example S8: a thread named `LoopThread` loops five times printing
//! its own name (`current_thread().name`); the main thread — named
//! `MainThread`, as in Python — starts it, joins it, and prints its name
//! before and after. Run: `cargo run --example s8_thread_loop`.

mod common;

use herd::thread::{self, current_thread};

fn loop_body() {
    println!("thread {} is running...", current_thread().name());
    for n in 1..=5 {
        println!("thread {} >>> {n}", current_thread().name());
        common::sleep_secs(1.0);
    }
    println!("thread {} ended.", current_thread().name());
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    herd::init();
    println!("thread {} is running...", current_thread().name());
    let t = thread::Builder::new().name("LoopThread").spawn(loop_body)?;
    t.join()?;
    println!("thread {} ended.", current_thread().name());
    Ok(())
}
