//! Seed example S9 across processes: the shared `balance` lives in shared
//! memory, and two child processes change it a million times each. Without a
//! lock the balance goes wrong; with herd's cross-process `Lock` it stays
//! right. Then the seed's second warning: two locks taken in opposite
//! orders deadlock — with the detector on, the hang becomes an error naming
//! the cycle.
//!
//! `cargo run --release --example s9_balance_processes [-- ROUNDS]`

use std::time::Duration;

use herd::sync::{Barrier, Lock, LockError, Value};

#[herd::task]
fn change_it_many(balance: Value<i64>, lock: Option<Lock>, start: Barrier, n: i64, rounds: u32) {
    // Both children begin together, so their updates really overlap.
    start.wait().expect("barrier");
    for _ in 0..rounds {
        let _guard = lock.as_ref().map(|l| l.acquire().expect("lock"));
        let b = balance.get();
        balance.set(std::hint::black_box(b + n));
        let b = balance.get();
        balance.set(std::hint::black_box(b - n));
    }
}

#[herd::task]
fn take_both(first: Lock, second: Lock, ready: Value<u8>) -> String {
    let _a = first.acquire().expect("first");
    ready.set(1);
    match second.acquire_timeout(Duration::from_secs(10)) {
        Ok(_) => "the child got both locks".to_owned(),
        Err(e) => format!("the child gave up: {e}"),
    }
}

fn run(
    balance: &Value<i64>,
    lock: Option<&Lock>,
    rounds: u32,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut kids = Vec::new();
    let start = Barrier::new(2)?;
    for n in [5, 8] {
        let args = (balance.clone(), lock.cloned(), start.clone(), n, rounds);
        kids.push(herd::spawn(change_it_many, args)?);
    }
    for k in &mut kids {
        k.join()?;
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    herd::init();
    let rounds = std::env::args()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let balance = Value::new(0i64)?;
    run(&balance, None, rounds)?;
    println!("without a lock: balance = {}", balance.get());
    balance.set(0);
    let lock = Lock::new()?;
    run(&balance, Some(&lock), rounds)?;
    println!("with a lock:    balance = {}", balance.get());

    herd::sync::detect_deadlocks(true);
    let (a, b, ready) = (Lock::new()?, Lock::new()?, Value::new(0u8)?);
    let held = b.acquire().map_err(|e| e.to_string())?;
    let mut child = herd::spawn(take_both, (a.clone(), b.clone(), ready.clone()))?;
    while ready.get() == 0 {
        std::thread::yield_now();
    }
    match a.acquire() {
        Err(LockError::Deadlock(d)) => println!("{d}"),
        other => println!("no deadlock reported: {other:?}"),
    }
    drop(held);
    println!("{}", child.join()?);
    Ok(())
}
