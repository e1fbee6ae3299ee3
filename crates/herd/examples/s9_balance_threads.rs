//! Seed example S9, with threads: many threads change a shared `balance`
//! 100 000 times each. Without a lock the read-modify-write races and the
//! balance goes wrong; with `lock.acquire()` (a guard, Rust's answer to the
//! seed's `try ... finally: lock.release()`) it stays right.
//!
//! `cargo run --release --example s9_balance_threads [-- ROUNDS]`

use herd::sync::{Lock, Value};

/// The seed's `change_it`: deposit then withdraw the same amount. Done as
/// two separate, non-atomic read-modify-writes, so another thread can slip
/// in between the read and the write.
fn change_it(balance: &Value<i64>, n: i64) {
    let b = balance.get();
    balance.set(std::hint::black_box(b + n));
    let b = balance.get();
    balance.set(std::hint::black_box(b - n));
}

fn run(balance: &Value<i64>, lock: Option<&Lock>, rounds: u32) {
    std::thread::scope(|s| {
        for n in [5, 8] {
            s.spawn(move || {
                for _ in 0..rounds {
                    match lock {
                        Some(l) => {
                            let _guard = l.acquire().expect("lock");
                            change_it(balance, n);
                        }
                        None => change_it(balance, n),
                    }
                }
            });
        }
    });
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    herd::init();
    let rounds = std::env::args()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let balance = Value::new(0i64)?;
    run(&balance, None, rounds);
    println!("without a lock: balance = {}", balance.get());
    balance.set(0);
    let lock = Lock::new()?;
    run(&balance, Some(&lock), rounds);
    println!("with a lock:    balance = {}", balance.get());
    Ok(())
}
