//! `herd ps` sees a running `herd run` and its job, and stops seeing them
//! once the run is terminated.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use serde_json::Value;

const HERD: &str = env!("CARGO_BIN_EXE_herd");

/// How long anything may take before the test calls it a failure (a guard,
/// not a pace: every wait ends as soon as its event happens).
const GUARD: Duration = Duration::from_secs(20);

/// A private registry directory (as `XDG_RUNTIME_DIR`), so the test sees
/// only its own herd and leaves nothing behind.
struct Runtime(PathBuf);

impl Runtime {
    fn new() -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("herd-ps-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(HERD);
        cmd.args(args)
            .env("XDG_RUNTIME_DIR", &self.0)
            .stdin(Stdio::null());
        cmd
    }

    /// `herd ps --json`, parsed.
    fn ps(&self) -> Vec<Value> {
        let out = self.command(&["ps", "--json"]).output().unwrap();
        assert!(
            out.status.success(),
            "herd ps failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
            .collect()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The start time of `pid` (field 22 of its stat), if it exists and is
/// not a zombie.
fn live_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    let stat = String::from_utf8_lossy(&stat);
    let rest: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    if matches!(rest.first(), Some(&"Z" | &"X")) {
        return None;
    }
    rest.get(22 - 3)?.parse().ok()
}

/// Kills what the test started if it fails half-way: the run, and every
/// process whose environment names it as its run (its jobs, which a
/// SIGKILLed run may leave behind).
struct Cleanup {
    run: Option<Child>,
    herd_pid: u32,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut run) = self.run.take() {
            let _ = run.kill();
            let _ = run.wait();
        }
        let mark = format!("HERD_RUN={}", self.herd_pid);
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return;
        };
        for p in procs.flatten() {
            let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(env) = std::fs::read(p.path().join("environ")) else {
                continue;
            };
            if env.split(|b| *b == 0).any(|v| v == mark.as_bytes())
                && let Some(pid) = Pid::from_raw(pid)
            {
                let _ = kill_process(pid, Signal::KILL);
            }
        }
    }
}

#[test]
fn ps_shows_a_run_and_its_job_until_it_is_terminated() {
    let rt = Runtime::new();
    let run = rt
        .command(&["run", "-j1", "sleep", ":::", "30"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let herd_pid = run.id();
    let mut cleanup = Cleanup {
        run: Some(run),
        herd_pid,
    };

    // Wait until `herd ps` shows the run and its job 1, `sleep 30`.
    let deadline = Instant::now() + GUARD;
    let (rows, job) = loop {
        let run = cleanup.run.as_mut().unwrap();
        if let Some(status) = run.try_wait().unwrap() {
            let mut err = String::new();
            let _ = run.stderr.take().unwrap().read_to_string(&mut err);
            panic!("herd run exited early ({status}): {err}");
        }
        let rows = rt.ps();
        let job = rows
            .iter()
            .find(|r| r["root"] == herd_pid && r["seq"] == 1 && r["cmdline"] == "sleep 30");
        if let Some(job) = job {
            let job = job.clone();
            break (rows, job);
        }
        assert!(
            Instant::now() < deadline,
            "herd ps never showed job 1 of herd {herd_pid}; last: {rows:#?}"
        );
        std::thread::yield_now();
    };
    let job_pid = u32::try_from(job["pid"].as_u64().unwrap()).unwrap();
    let job_start = job["start"].as_u64().unwrap();

    // The run itself is the top of the tree, and the job is below it.
    let top = rows
        .iter()
        .find(|r| r["pid"] == herd_pid)
        .unwrap_or_else(|| panic!("herd {herd_pid} not listed: {rows:#?}"));
    assert_eq!(top["depth"], 0, "{top}");
    assert_eq!(top["role"], "run", "{top}");
    assert!(
        top["task"].as_str().unwrap().starts_with("herd run"),
        "{top}"
    );
    assert!(job["depth"].as_u64().unwrap() >= 1, "{job}");
    assert_eq!(job["run"], herd_pid, "{job}");
    assert!(
        job["task"] == "job 1: sleep 30" || job["task"] == "sleep 30",
        "{job}"
    );
    let mut ancestor = job["ppid"].clone();
    while ancestor != herd_pid {
        let parent = rows
            .iter()
            .find(|r| r["pid"] == ancestor)
            .unwrap_or_else(|| panic!("no parent {ancestor} of the job in {rows:#?}"));
        ancestor = parent["ppid"].clone();
    }

    // The table shows the same, with its header.
    let table = rt.command(&["ps"]).output().unwrap();
    assert!(table.status.success());
    let table = String::from_utf8(table.stdout).unwrap();
    let mut lines = table.lines();
    assert!(
        lines.next().unwrap().trim_start().starts_with("PID"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.trim_start().starts_with(&format!("{job_pid} ")) && l.contains("sleep 30")),
        "{table}"
    );

    // SIGTERM to the run: it ends its job and exits.
    let run = cleanup.run.take().unwrap();
    kill_process(Pid::from_child(&run), Signal::TERM).unwrap();
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let mut run = run;
        let status = run.wait();
        let _ = tx.send(());
        (run, status)
    });
    if rx.recv_timeout(GUARD).is_err() {
        let _ = kill_process(Pid::from_raw(herd_pid as i32).unwrap(), Signal::KILL);
        panic!("herd run did not exit within {GUARD:?} of SIGTERM");
    }
    let (_run, status) = waiter.join().unwrap();
    status.unwrap();

    // Its job is gone too (the run forwards the signal).
    let deadline = Instant::now() + GUARD;
    while live_start(job_pid) == Some(job_start) {
        assert!(
            Instant::now() < deadline,
            "job {job_pid} outlived its terminated herd run"
        );
        std::thread::yield_now();
    }

    // And `herd ps` no longer lists the run.
    let rows = rt.ps();
    assert!(
        rows.iter().all(|r| r["root"] != herd_pid),
        "still listed after exit: {rows:#?}"
    );
    let table = rt.command(&["ps"]).output().unwrap();
    assert!(table.status.success());
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(
        table.lines().next().is_some_and(|h| h.contains("TASK")),
        "{table}"
    );
    assert!(
        !table
            .lines()
            .any(|l| l.trim_start().starts_with(&format!("{herd_pid} "))),
        "{table}"
    );
}
