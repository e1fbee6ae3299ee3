//! Seed example S7: processes talk through a queue. A writer process puts
//! A, B, C with random pauses; a reader process loops on `get`; the parent
//! joins the writer, then terminates the reader, which is blocked in `get`
//! (its loop never ends).
//!
//! `cargo run --example s7_queue`

mod common;

use herd::Queue;

#[herd::task]
fn write(q: Queue<String>) {
    println!("Process to write: {}", std::process::id());
    for value in ["A", "B", "C"] {
        println!("Put {value} to queue...");
        q.put(value.to_owned()).expect("put");
        // A pseudo-random pause in [0, 1) seed seconds, from the clock.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        common::sleep_secs(f64::from(nanos % 1000) / 1000.0);
    }
}

#[herd::task]
fn read(q: Queue<String>) {
    println!("Process to read: {}", std::process::id());
    loop {
        match q.get() {
            Ok(value) => println!("Get {value} from queue."),
            Err(e) => println!("queue error: {e}"),
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    herd::init();
    let q = Queue::new()?;
    let mut pw = herd::spawn(write, (q.clone(),))?;
    let mut pr = herd::spawn(read, (q.clone(),))?;
    pw.join()?;
    // The reader loops forever: wait until it has drained the queue, then
    // terminate it while it is blocked in `get`.
    while !q.is_empty() {
        std::thread::yield_now();
    }
    let status = pr.terminate()?;
    eprintln!("reader: {status}");
    Ok(())
}
