//! Seed example S1 (the motivation): two infinite loops one after the other
//! in one process — the second never runs, because the first never ends.
//! S2 (`s2_child_loop`) is the cure: the same loops in two processes.
//!
//! The seed's first loop runs forever; `HERD_EXAMPLE_ROUNDS` (unset: forever,
//! as in the seed) stops it after that many rounds so a test can watch it,
//! and the program says so rather than pretend the second loop ran by design.
//! Run: `cargo run --example s1_two_loops` (Ctrl-C to stop).

mod common;

fn main() {
    herd::init();
    let rounds: Option<u64> = std::env::var("HERD_EXAMPLE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok());
    let mut i = 0u64;
    // while True: print("first loop"); time.sleep(1)
    loop {
        if rounds.is_some_and(|r| i >= r) {
            println!(
                "(first loop stopped after {i} rounds by HERD_EXAMPLE_ROUNDS; in the seed it never ends)"
            );
            return;
        }
        println!("first loop: round {i}");
        common::sleep_secs(1.0);
        i += 1;
    }
    // The seed's second loop would be here; the compiler agrees that it is
    // unreachable, so it is not written.
}
