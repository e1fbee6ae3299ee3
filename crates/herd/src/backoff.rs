//! Waiting briefly before sleeping.

use std::time::{Duration, Instant};

/// How long a waiter polls before it sleeps.
const SPIN: Duration = Duration::from_micros(100);

/// Polls `ready` for up to [`SPIN`], yielding the CPU between bursts; true
/// once it holds. A round trip between processes (a pool's submit, run and
/// reply; a queue's put and get) takes microseconds to tens of
/// microseconds, far less than a futex sleep and wake-up on a loaded
/// machine, so a waiter that polls briefly usually never sleeps, and the
/// other side never pays for a wake-up call. Yielding
/// is what makes it pay on few CPUs: a waiter that only spun would take the
/// CPU from the very thread it waits for (measured on 2 vCPUs: one task at
/// a time, 7 k/s spinning without yielding, 110–137 k/s yielding).
pub(crate) fn poll_briefly(ready: impl Fn() -> bool) -> bool {
    let until = Instant::now() + SPIN;
    loop {
        for _ in 0..32 {
            if ready() {
                return true;
            }
            std::hint::spin_loop();
        }
        if Instant::now() >= until {
            return ready();
        }
        std::thread::yield_now();
    }
}
