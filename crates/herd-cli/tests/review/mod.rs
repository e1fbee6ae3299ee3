//! Regression tests from a review of `herd run` (a module of the `cli`
//! test binary, sharing its helpers): each one failed (or hung)
//! before its fix. Every wait has a deadline; nothing sleeps to
//! synchronize (the jobs' own `sleep`s are the work being run, or a job
//! waiting for an event it polls for).

use std::io::{BufRead, BufReader, Write};

use super::{GUARD, code, herd, run, stdout, tmpdir};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

/// Waits for a child whose pipes the test handles itself.
fn wait_status(mut child: Child, limit: Duration) -> ExitStatus {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(limit) {
        Ok(status) => status.expect("wait"),
        Err(_) => {
            kill(pid, Signal::KILL);
            panic!("herd did not finish within {limit:?}");
        }
    }
}

fn kill(pid: u32, sig: Signal) {
    if let Some(pid) = Pid::from_raw(pid as i32) {
        let _ = kill_process(pid, sig);
    }
}

/// The next line of a child's stdout, or a panic at [`GUARD`].
fn next_line(lines: &mpsc::Receiver<String>) -> String {
    lines
        .recv_timeout(GUARD)
        .expect("a line of output within the guard")
}

/// Reads a child's stdout line by line on a thread.
fn line_reader(out: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Whether process `pid` is gone (or a zombie).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z')),
    }
}

#[test]
fn seq_and_slot_are_replacement_strings_too() {
    // GNU: `parallel echo {#} ::: A B C` prints 1 2 3 (no input appended).
    let o = run(
        herd().args(["run", "-k", "echo", "{#}", ":::", "A", "B", "C"]),
        b"",
    );
    assert_eq!(stdout(&o), "1\n2\n3\n", "{o:?}");
    let o = run(
        herd().args(["run", "-k", "-j1", "echo", "slot{%}", ":::", "A", "B"]),
        b"",
    );
    assert_eq!(stdout(&o), "slot1\nslot1\n", "{o:?}");
}

#[test]
fn halt_exit_status_as_gnu_defines_it() {
    // fail=N (N > 1): the number of failed jobs, not the last one's status.
    let o = run(
        herd().args([
            "run",
            "-j1",
            "--halt",
            "soon,fail=2",
            "exit {}",
            ":::",
            "3",
            "4",
            "0",
        ]),
        b"",
    );
    assert_eq!(code(&o), 2, "{o:?}");
    // done=1: the halting job's own status.
    let o = run(
        herd().args([
            "run",
            "-j1",
            "--halt",
            "now,done=1",
            "exit {}",
            ":::",
            "3",
            "2",
        ]),
        b"",
    );
    assert_eq!(code(&o), 3, "{o:?}");
    // fail=Y%: the percentage of the jobs that failed.
    let o = run(
        herd().args([
            "run",
            "-j1",
            "--halt",
            "now,fail=50%",
            "exit {}",
            ":::",
            "0",
            "3",
            "4",
            "0",
        ]),
        b"",
    );
    assert_eq!(code(&o), 50, "{o:?}");
}

#[test]
fn keep_order_retry_while_holding_many_finished_jobs() {
    // Job 1 fails its first run only once 512 later jobs have finished
    // (and are held for -k): its retry must still start. It used to spin
    // at 100% CPU forever, deaf to signals.
    let dir = tmpdir("hold-retry");
    let log = dir.join("log");
    let marker = dir.join("ran-once");
    let job = format!(
        "if [ {{}} = 1 ]; then \
           [ -e {m} ] && {{ echo 1; exit 0; }}; \
           while [ $(wc -l < {l}) -lt 513 ]; do sleep 0.01; done; \
           touch {m}; exit 1; \
         fi; echo {{}}",
        m = marker.display(),
        l = log.display()
    );
    let n = 530;
    let inputs: String = (1..=n).map(|i| format!("{i}\n")).collect();
    let o = run(
        herd()
            .args(["run", "-k", "-j2", "--retries", "2", "--joblog"])
            .arg(&log)
            .arg(&job),
        inputs.as_bytes(),
    );
    assert_eq!(code(&o), 0, "{:?}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(stdout(&o), inputs);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn line_buffer_stops_when_stdout_closes() {
    // `herd run --line-buffer yes ::: 1 | head -1` used to run forever.
    let mut child = herd()
        .args(["run", "--line-buffer", "yes", ":::", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = line_reader(child.stdout.take().unwrap());
    assert_eq!(next_line(&lines), "1");
    drop(lines); // the reader thread ends at its next line: the pipe closes
    let status = wait_status(child, GUARD);
    assert!(!status.success(), "the job was stopped: {status:?}");
}

#[test]
fn line_buffer_timeout_reaches_a_background_child_holding_the_pipe() {
    // The job exits at once; its background child keeps the pipe open.
    // --timeout must still end it (it used to be skipped for a job whose
    // leader had exited, and herd spun until the child ended).
    let dir = tmpdir("lb-timeout");
    let pidfile = dir.join("pid");
    let started = Instant::now();
    let o = run(
        herd()
            .args(["run", "--line-buffer", "--timeout", "0.5"])
            .arg(format!(
                "sleep {{}} & echo $! > {p}; echo hi",
                p = pidfile.display()
            ))
            .args([":::", "300"]),
        b"",
    );
    assert!(started.elapsed() < Duration::from_secs(30), "{o:?}");
    assert_eq!(stdout(&o), "hi\n");
    let bg: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + GUARD;
    while !gone(bg) {
        assert!(Instant::now() < deadline, "the background child survived");
        std::thread::yield_now();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn line_buffer_sigterm_reaches_a_background_child_holding_the_pipe() {
    let dir = tmpdir("lb-signal");
    let pidfile = dir.join("pid");
    let mut child = herd()
        .args(["run", "--line-buffer"])
        .arg(format!(
            "sleep {{}} & echo $$ $! > {p}.tmp; mv {p}.tmp {p}; echo started",
            p = pidfile.display()
        ))
        .args([":::", "300"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = line_reader(child.stdout.take().unwrap());
    assert_eq!(next_line(&lines), "started");
    let pids: Vec<u32> = std::fs::read_to_string(&pidfile)
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let (shell, bg) = (pids[0], pids[1]);
    // The signal comes once herd has reaped the job's shell: only the
    // background child is left, holding the pipe.
    let deadline = Instant::now() + GUARD;
    while std::path::Path::new(&format!("/proc/{shell}")).exists() {
        assert!(
            Instant::now() < deadline,
            "the job's shell was never reaped"
        );
        std::thread::yield_now();
    }
    kill(child.id(), Signal::TERM);
    let status = wait_status(child, GUARD);
    assert_eq!(status.code(), Some(128 + 15));
    while !gone(bg) {
        assert!(Instant::now() < deadline, "the background child survived");
        std::thread::yield_now();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn timeout_percent_applies_to_jobs_started_before_the_median_was_known() {
    // All four start at once, before any median exists; the slow one
    // must still be killed once three have finished (GNU does).
    let started = Instant::now();
    let o = run(
        herd().args([
            "run",
            "-j4",
            "--timeout",
            "200%",
            "sleep",
            ":::",
            "0.1",
            "0.1",
            "0.1",
            "300",
        ]),
        b"",
    );
    assert!(started.elapsed() < Duration::from_secs(30), "{o:?}");
    assert_eq!(code(&o), 1, "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("timed out"));
}

#[test]
fn output_and_signals_are_not_held_up_by_slow_input() {
    // A job's output goes out while the next input line has not come yet
    // (it used to wait for the next line, or the end of the input).
    let mut child = herd()
        .args(["run", "-j2", "echo"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let lines = line_reader(child.stdout.take().unwrap());
    input.write_all(b"first\n").unwrap();
    input.flush().unwrap();
    assert_eq!(next_line(&lines), "first");
    input.write_all(b"second\n").unwrap();
    input.flush().unwrap();
    assert_eq!(next_line(&lines), "second");
    // SIGTERM while waiting for input: herd stops (it used to keep
    // reading until the input ended).
    kill(child.id(), Signal::TERM);
    let status = wait_status(child, GUARD);
    assert_eq!(status.code(), Some(128 + 15));
    drop(input);
}

/// `herd ARGS` under `ulimit -n limit`.
fn herd_with_fd_limit(limit: u32, args: &[&str]) -> Command {
    let mut c = Command::new("/bin/sh");
    c.arg("-c")
        .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_herd"))
        .args(args)
        .env_remove("HERD_KEY");
    c
}

#[test]
fn many_jobs_at_once_fit_the_file_descriptor_limit() {
    // -j 300 under `ulimit -n 128`: each job needs files for its output;
    // herd runs fewer at once instead of failing jobs with EMFILE.
    let inputs: String = (1..=300).map(|i| format!("{i}\n")).collect();
    let o = run(
        &mut herd_with_fd_limit(128, &["run", "-j300", "-k", "echo"]),
        inputs.as_bytes(),
    );
    assert_eq!(code(&o), 0, "{:?}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(stdout(&o), inputs);
    // -k holding finished jobs behind a slow first one: their files count
    // too.
    let o = run(
        &mut herd_with_fd_limit(
            128,
            &[
                "run",
                "-k",
                "-j2",
                "if [ {} = 1 ]; then sleep 1; fi; echo {}",
            ],
        ),
        inputs.as_bytes(),
    );
    assert_eq!(code(&o), 0, "{:?}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(stdout(&o), inputs);
}

#[test]
fn huge_job_counts_do_not_crash() {
    for j in ["100000000000", "+18446744073709551615", "1e12%"] {
        let o = run(herd().args(["run", "-j", j, "echo", ":::", "x"]), b"");
        assert_eq!(code(&o), 0, "-j {j}: {o:?}");
        assert_eq!(stdout(&o), "x\n");
    }
}

#[test]
fn inputs_after_triple_colon_may_be_any_bytes() {
    // `herd run gzip ::: *` with one file name in Latin-1 was refused
    // whole (clap's "invalid UTF-8").
    use std::os::unix::ffi::OsStrExt;
    let latin1 = std::ffi::OsStr::from_bytes(b"caf\xe9");
    let o = run(
        herd()
            .args(["run", "-k", "echo", ":::"])
            .arg(latin1)
            .arg("b"),
        b"",
    );
    assert_eq!(code(&o), 0, "{o:?}");
    assert_eq!(o.stdout, b"caf\xe9\nb\n");
}

#[test]
fn dry_run_with_resume_shows_only_the_jobs_that_would_run() {
    let dir = tmpdir("dry-resume");
    let log = dir.join("log");
    let o = run(
        herd()
            .args(["run", "--joblog"])
            .arg(&log)
            .args(["echo", ":::", "1", "2"]),
        b"",
    );
    assert_eq!(code(&o), 0);
    let o = run(
        herd()
            .args(["run", "--dry-run", "--resume", "--joblog"])
            .arg(&log)
            .args(["echo", ":::", "1", "2", "3"]),
        b"",
    );
    assert_eq!(stdout(&o), "echo 3\n", "{o:?}");
    // The dry run left the log as it was.
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 3);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_background_child_s_late_output_stays_out_of_other_jobs_groups() {
    // Job "a" leaves a child that writes once "a" has ended, while a
    // later job runs with a's recycled output files: the late line landed
    // inside that job's group. It must not (GNU loses it: the job's file
    // is gone).
    let dir = tmpdir("late");
    let fifo = dir.join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    // a's child opens the fifo (waiting for c to open it too), writes its
    // late line, and exits, closing the fifo: c's `cat` ends only after
    // the late line was written.
    let job = format!(
        "case {{}} in a) (exec 3>{f}; echo late-a) & echo a ;; \
         b) echo b ;; c) cat {f} > /dev/null; echo c ;; esac",
        f = fifo.display()
    );
    let o = run(
        herd().args(["run", "-j1", "-k", &job, ":::", "a", "b", "c"]),
        b"",
    );
    assert_eq!(code(&o), 0, "{o:?}");
    assert_eq!(stdout(&o), "a\nb\nc\n");
    let _ = std::fs::remove_dir_all(&dir);
}
