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
/// Emits one line of `suite`.
pub(crate) fn record(
    suite: &str,
    case: &str,
    implementation: &str,
    metric: &str,
    value: f64,
    unit: &str,
) {
    emit(&Record {
        suite,
        case,
        implementation,
        metric,
        value,
        unit,
    });
}

pub(crate) fn emit(record: &Record<'_>) {
    match serde_json::to_string(record) {
        Ok(line) => line_out(&line),
        Err(e) => eprintln!("herd-bench: cannot encode a record: {e}"),
    }
}

/// Prints a note (a skipped peer, a caveat) as a JSON line.
pub(crate) fn note(suite: &str, text: &str) {
    line_out(&serde_json::json!({ "suite": suite, "note": text }).to_string());
}

/// Writes one line; a closed stdout (`| head`) ends the program quietly.
fn line_out(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(0);
    }
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

/// Runs the Python baseline `script` (shipped in `python/`) with `args` and
/// parses the one JSON object it prints. A missing `python3` or a failed run
/// becomes a note on `suite`, and `None`.
/// The path of a Python baseline script shipped beside this crate.
pub(crate) fn python_script(script: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(script)
}

pub(crate) fn run_python(suite: &str, script: &str, args: &[String]) -> Option<serde_json::Value> {
    let path = python_script(script);
    match std::process::Command::new("python3")
        .arg(&path)
        .args(args)
        .output()
    {
        Ok(o) if o.status.success() => serde_json::from_slice(&o.stdout).ok(),
        Ok(o) => {
            note(
                suite,
                &format!(
                    "python {script} {args:?} failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
            );
            None
        }
        Err(e) => {
            note(
                suite,
                &format!("python3 not available ({e}); Python baselines skipped"),
            );
            None
        }
    }
}
