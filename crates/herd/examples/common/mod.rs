//! Shared by the seed examples: the seed's one-second pauses, shortened by
//! `HERD_EXAMPLE_SLEEP_MS` (the length of one seed second in milliseconds) so
//! tests can run the examples quickly.

use std::time::Duration;

/// The seed's `time.sleep(secs)`, scaled.
pub(crate) fn sleep_secs(secs: f64) {
    std::thread::sleep(scaled(secs));
}

/// `secs` seed seconds, scaled.
pub(crate) fn scaled(secs: f64) -> Duration {
    let second_ms: f64 = std::env::var("HERD_EXAMPLE_SLEEP_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000.0);
    Duration::from_secs_f64(secs * second_ms / 1000.0)
}
