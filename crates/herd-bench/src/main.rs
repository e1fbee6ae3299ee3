//! herd-bench: herd against its peers, in one invocation.
//!
//! `cargo run --release -p herd-bench -- <suite> [--quick]` prints one JSON
//! object per line:
//! `{"suite":"spawn","case":"trivial","impl":"herd-forkserver","metric":"median_us","value":412.0,"unit":"us"}`.
//! Suites: `spawn`, `sync`, `queue`, `pool`, `scaling`, `io`, `distributed`, `cli` (or `all`). `--quick` keeps each suite under 30 seconds.

mod cli;
mod distributed;
mod io;
mod pool;
mod queue;
mod report;
mod scaling;
mod spawn;
mod sync;

use std::process::ExitCode;

const SUITES: &[&str] = &[
    "spawn",
    "sync",
    "queue",
    "pool",
    "scaling",
    "io",
    "distributed",
    "cli",
];

fn main() -> ExitCode {
    // Both are no-ops in the benchmark itself; in a child they run its task.
    herd::init();
    procspawn::init();
    let mut suite = None;
    let mut quick = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--quick" => quick = true,
            "-h" | "--help" => {
                eprintln!("usage: herd-bench <{}|all> [--quick]", SUITES.join("|"));
                return ExitCode::SUCCESS;
            }
            s if suite.is_none() => suite = Some(s.to_owned()),
            other => {
                eprintln!("herd-bench: unexpected argument {other:?}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(suite) = suite else {
        eprintln!("usage: herd-bench <{}|all> [--quick]", SUITES.join("|"));
        return ExitCode::from(2);
    };
    match suite.as_str() {
        "spawn" => spawn::run(quick),
        "sync" => sync::run(quick),
        "queue" => queue::run(quick),
        "pool" => pool::run(quick),
        "scaling" => scaling::run(quick),
        "io" => io::run(quick),
        "distributed" => distributed::run(quick),
        "cli" => cli::run(quick),
        "all" => {
            spawn::run(quick);
            sync::run(quick);
            queue::run(quick);
            pool::run(quick);
            scaling::run(quick);
            io::run(quick);
            distributed::run(quick);
            cli::run(quick);
        }
        other => {
            eprintln!(
                "herd-bench: unknown suite {other:?}; known: {}",
                SUITES.join(", ")
            );
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
