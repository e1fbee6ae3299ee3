//! One JSON object per line, as every suite prints its results.

use serde::Serialize;

/// One measured figure.
#[derive(Debug, Serialize)]
pub(crate) struct Record<'a> {
    pub(crate) suite: &'a str,
    pub(crate) case: &'a str,
    #[serde(rename = "impl")]
    pub(crate) implementation: &'a str,
    pub(crate) metric: &'a str,
    pub(crate) value: f64,
    pub(crate) unit: &'a str,
}

/// Prints `record` as one JSON line on stdout.
pub(crate) fn emit(record: &Record<'_>) {
    match serde_json::to_string(record) {
        Ok(line) => println!("{line}"),
        Err(e) => eprintln!("herd-bench: cannot encode a record: {e}"),
    }
}

/// Prints a note (a skipped peer, a caveat) as a JSON line.
pub(crate) fn note(suite: &str, text: &str) {
    println!("{}", serde_json::json!({ "suite": suite, "note": text }));
}

/// The median of `samples` (sorted in place).
pub(crate) fn median(samples: &mut [f64]) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    if n % 2 == 1 {
        samples[n / 2]
    } else {
        (samples[n / 2 - 1] + samples[n / 2]) / 2.0
    }
}
