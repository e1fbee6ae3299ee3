//! Seed example S4: global variables are not shared between processes. The
//! child changes its own copy; the parent's value is unchanged, and so is a
//! sibling's.

use std::sync::atomic::{AtomicI64, Ordering};

static COUNTER: AtomicI64 = AtomicI64::new(100);

#[herd::task]
fn change_global(by: i64) -> i64 {
    let now = COUNTER.fetch_add(by, Ordering::SeqCst) + by;
    println!(
        "child {} changed its COUNTER by {by}: it is now {now}",
        herd::current_process().name
    );
    now
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    herd::init();
    println!("parent: COUNTER = {}", COUNTER.load(Ordering::SeqCst));
    let mut a = herd::Process::builder(change_global, (1,))
        .name("A")
        .start()?;
    let in_a = a.join()?;
    let mut b = herd::Process::builder(change_global, (10,))
        .name("B")
        .start()?;
    let in_b = b.join()?;
    println!(
        "parent: COUNTER = {} (child A saw {in_a}, child B saw {in_b})",
        COUNTER.load(Ordering::SeqCst)
    );
    Ok(())
}
