//! The `herd` command end to end: the real binary, real jobs, real
//! servers on loopback. Every wait has a deadline; nothing sleeps to
//! synchronize (the jobs' own `sleep`s are the work being run).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod review;

const GUARD: Duration = Duration::from_secs(60);

fn herd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_herd"));
    c.env_remove("HERD_KEY");
    c
}

/// Runs to completion (killed at [`GUARD`]) with `stdin` fed in.
fn run(cmd: &mut Command, stdin: &[u8]) -> Output {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("herd starts");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    wait_output(child, GUARD)
}

fn wait_output(child: Child, limit: Duration) -> Output {
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            // SAFETY: kill with a pid we started and have not reaped.
            unsafe { libc_kill(pid, 9) };
            panic!("herd did not finish within {limit:?}");
        }
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn tmpdir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn replacement_strings() {
    let o = run(
        herd().args([
            "run",
            "-j1",
            "-k",
            "echo",
            "{}",
            "{.}",
            "{/}",
            "{//}",
            "{/.}",
            "{#}",
            "{%}",
            ":::",
            "dir/sub/a.tar.gz",
            "b",
        ]),
        b"",
    );
    assert_eq!(code(&o), 0, "{o:?}");
    assert_eq!(
        stdout(&o),
        "dir/sub/a.tar.gz dir/sub/a.tar a.tar.gz dir/sub a.tar 1 1\nb b b . b 2 1\n"
    );
    let o = run(
        herd().args([
            "run", "-k", "echo", "{2}-{1}", "{1/}", ":::", "x/a", "y/b", ":::", "1", "2",
        ]),
        b"",
    );
    assert_eq!(stdout(&o), "1-x/a a\n2-x/a a\n1-y/b b\n2-y/b b\n");
    // Linked sources pair up instead of combining.
    let o = run(
        herd().args([
            "run", "-k", "echo", "{1}{2}", ":::", "a", "b", ":::+", "1", "2",
        ]),
        b"",
    );
    assert_eq!(stdout(&o), "a1\nb2\n");
    // No replacement string: the input is appended.
    let o = run(herd().args(["run", "-k", "echo", "x"]), b"1\n2\n");
    assert_eq!(stdout(&o), "x 1\nx 2\n");
}

#[test]
fn awkward_inputs_are_passed_exactly() {
    let inputs: [&[u8]; 7] = [
        b"a b",
        b"it's",
        b"say \"hi\"",
        b"-n",
        b"--help",
        b"line\nbreak",
        b"$HOME `x` *",
    ];
    let mut stdin = Vec::new();
    for i in inputs {
        stdin.extend_from_slice(i);
        stdin.push(0);
    }
    let mut want = Vec::new();
    for i in inputs {
        want.extend_from_slice(b"+");
        want.extend_from_slice(i);
        want.extend_from_slice(b"+");
    }
    // Direct (no shell) and through the shell (the pipe forces it): the
    // same bytes arrive either way.
    let direct = run(
        herd().args(["run", "-k", "-0", "printf", "+%s+", "{}"]),
        &stdin,
    );
    assert_eq!(code(&direct), 0, "{direct:?}");
    assert_eq!(direct.stdout, want);
    let shell = run(
        herd().args(["run", "-k", "-0", "printf '+%s+' {} | cat"]),
        &stdin,
    );
    assert_eq!(code(&shell), 0, "{shell:?}");
    assert_eq!(shell.stdout, want);
    // The dry run prints the quoted command lines.
    let dry = run(
        herd().args(["run", "--dry-run", "echo", ":::", "it's"]),
        b"",
    );
    assert_eq!(stdout(&dry), "echo 'it'\\''s'\n");
}

#[test]
fn keep_order_and_grouping_under_interleaving() {
    // Later inputs finish first; -k prints in input order.
    let o = run(
        herd().args([
            "run",
            "-k",
            "-j4",
            "sleep 0.{}; echo {}",
            ":::",
            "3",
            "2",
            "1",
            "0",
        ]),
        b"",
    );
    assert_eq!(stdout(&o), "3\n2\n1\n0\n");
    // Four jobs write 3000 lines each at once: each job's lines arrive
    // together, in order, never inside another job's group.
    let o = run(
        herd().args([
            "run",
            "-j4",
            "i=0; while [ $i -lt 3000 ]; do echo {}-$i; i=$((i+1)); done; echo {}-err >&2",
            ":::",
            "a",
            "b",
            "c",
            "d",
        ]),
        b"",
    );
    assert_eq!(code(&o), 0);
    let text = stdout(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4 * 3000);
    for block in lines.chunks(3000) {
        let job = block[0].split('-').next().unwrap();
        for (i, l) in block.iter().enumerate() {
            assert_eq!(*l, format!("{job}-{i}"));
        }
    }
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 4, "{err}");
    // Line-buffered: lines may interleave between jobs but never split.
    let o = run(
        herd().args([
            "run",
            "--line-buffer",
            "-j4",
            "i=0; while [ $i -lt 2000 ]; do echo {}-$i-xxxxxxxxxxxxxxxxxxxxxxxx; i=$((i+1)); done",
            ":::",
            "a",
            "b",
            "c",
        ]),
        b"",
    );
    let text = stdout(&o);
    assert_eq!(text.lines().count(), 6000);
    for l in text.lines() {
        assert!(
            l.ends_with("-xxxxxxxxxxxxxxxxxxxxxxxx") && l.matches('-').count() == 2,
            "{l}"
        );
    }
}

#[test]
fn joblog_resume_and_resume_failed() {
    let dir = tmpdir("joblog");
    let log = dir.join("log");
    let logs = log.to_str().unwrap();
    let job = ["echo ran {}; exit {}", ":::", "0", "1", "0", "2"];
    let o = run(herd().args(["run", "-k", "--joblog", logs]).args(job), b"");
    assert_eq!(code(&o), 2, "two jobs failed: {o:?}");
    assert_eq!(stdout(&o), "ran 0\nran 1\nran 0\nran 2\n");
    let text = std::fs::read_to_string(&log).unwrap();
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(
        rows[0],
        [
            "Seq",
            "Host",
            "Starttime",
            "JobRuntime",
            "Send",
            "Receive",
            "Exitval",
            "Signal",
            "Command"
        ]
    );
    assert_eq!(rows.len(), 5);
    let mut exits: Vec<(u64, i32)> = rows[1..]
        .iter()
        .map(|r| (r[0].parse().unwrap(), r[6].parse().unwrap()))
        .collect();
    exits.sort();
    assert_eq!(exits, [(1, 0), (2, 1), (3, 0), (4, 2)]);
    assert!(
        rows[1..]
            .iter()
            .all(|r| r[1] == ":" && r[8].starts_with("echo ran"))
    );
    // --resume: every job is in the log; nothing runs.
    let o = run(
        herd()
            .args(["run", "-k", "--resume", "--joblog", logs])
            .args(job),
        b"",
    );
    assert_eq!((code(&o), stdout(&o).as_str()), (0, ""));
    // --resume-failed: only the failed ones run again.
    let o = run(
        herd()
            .args(["run", "-k", "--resume-failed", "--joblog", logs])
            .args(job),
        b"",
    );
    assert_eq!(stdout(&o), "ran 1\nran 2\n");
    assert_eq!(code(&o), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn retries_run_a_failing_job_again() {
    let dir = tmpdir("retries");
    let counter = dir.join("n");
    // Fails on its first two runs, succeeds on the third.
    let job = format!(
        "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; [ $n -ge 3 ] && echo {{}}",
        c = counter.display()
    );
    let o = run(
        herd().args(["run", "--retries", "2", &job, ":::", "x"]),
        b"",
    );
    assert_eq!(code(&o), 1, "two runs are not enough");
    std::fs::remove_file(&counter).unwrap();
    let o = run(
        herd().args(["run", "--retries", "3", &job, ":::", "x"]),
        b"",
    );
    assert_eq!(code(&o), 0, "{o:?}");
    assert_eq!(std::fs::read_to_string(&counter).unwrap().trim(), "3");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn timeouts_kill_the_job_and_its_children() {
    let dir = tmpdir("timeout");
    let log = dir.join("log");
    let started = Instant::now();
    let o = run(
        herd().args([
            "run",
            "-k",
            "--timeout",
            "0.5",
            "--joblog",
            log.to_str().unwrap(),
            // The shell's child `sleep` is in the job's process group.
            "sleep {} ; echo done {}",
            ":::",
            "30",
            "0",
        ]),
        b"",
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(code(&o), 1, "{o:?}");
    assert_eq!(stdout(&o), "done 0\n");
    assert!(String::from_utf8_lossy(&o.stderr).contains("timed out"));
    let text = std::fs::read_to_string(&log).unwrap();
    let killed = text.lines().find(|l| l.starts_with("1\t")).unwrap();
    assert_eq!(killed.split('\t').nth(7), Some("15"), "{killed}");
    assert_eq!(
        killed.split('\t').nth(6),
        Some("-1"),
        "GNU's mark: {killed}"
    );
    // A percentage of the median: three quick jobs, then one far slower.
    let o = run(
        herd().args([
            "run",
            "-j1",
            "--timeout",
            "400%",
            "sleep",
            ":::",
            "0.05",
            "0.05",
            "0.05",
            "30",
        ]),
        b"",
    );
    assert_eq!(code(&o), 1, "{o:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn halt_stops_the_run() {
    let o = run(
        herd().args([
            "run",
            "-j1",
            "--halt",
            "now,fail=1",
            "echo {}; exit {}",
            ":::",
            "0",
            "3",
            "0",
            "0",
        ]),
        b"",
    );
    assert_eq!(code(&o), 3, "the failing job's status: {o:?}");
    assert_eq!(stdout(&o), "0\n3\n");
    // now: the running job is killed, not waited for.
    let started = Instant::now();
    let o = run(
        herd().args([
            "run",
            "-j2",
            "--halt",
            "now,fail=1",
            "sleep {}; exit 1",
            ":::",
            "30",
            "0.1",
        ]),
        b"",
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(code(&o), 1);
    // soon: the running job finishes, no new one starts.
    let o = run(
        herd().args([
            "run",
            "-j2",
            "-k",
            "--halt",
            "soon,fail=1",
            "sleep {1}; echo {1}; exit {2}",
            ":::",
            "0.5",
            "0",
            "0",
            "0",
            ":::+",
            "0",
            "1",
            "0",
            "0",
        ]),
        b"",
    );
    // Job 2 fails at once; job 1 still finishes and prints; 3 and 4
    // never start.
    assert_eq!(stdout(&o), "0.5\n0\n", "{o:?}");
    assert_eq!(code(&o), 1);
    // success=1: stop at the first success, status 0.
    let o = run(
        herd().args([
            "run",
            "-j1",
            "--halt",
            "now,success=1",
            "exit {}",
            ":::",
            "1",
            "0",
            "1",
        ]),
        b"",
    );
    assert_eq!(code(&o), 0);
}

#[test]
fn exit_status_counts_failures() {
    let o = run(herd().args(["run", "-j2", "true"]), b"1\n2\n3\n");
    assert_eq!(code(&o), 0);
    let o = run(herd().args(["run", "-j2", "exit {}"]), b"0\n1\n2\n");
    assert_eq!(code(&o), 2);
    let many: String = (1..=102).map(|i| format!("{i}\n")).collect();
    let o = run(herd().args(["run", "-j2", "false"]), many.as_bytes());
    assert_eq!(code(&o), 101, "more than 100 failed");
    // A command that does not exist: 127 in the joblog, one failure.
    let o = run(
        herd().args(["run", "no-such-command-herd", ":::", "x"]),
        b"",
    );
    assert_eq!(code(&o), 1);
    assert!(String::from_utf8_lossy(&o.stderr).contains("command not found"));
    // herd's own errors: 255, message on stderr, nothing on stdout.
    let o = run(
        herd().args(["run", "--halt", "bogus", "true", ":::", "x"]),
        b"",
    );
    assert_eq!(code(&o), 255);
    assert!(o.stdout.is_empty());
    let o = run(herd().args(["run", "true", "::::", "/no/such/file"]), b"");
    assert_eq!(code(&o), 255);
}

#[test]
fn inputs_from_files_and_ungrouped_output() {
    let dir = tmpdir("files");
    let f = dir.join("in");
    std::fs::write(&f, "a\nb\n").unwrap();
    let o = run(
        herd().args([
            "run",
            "-k",
            "-u",
            "-j1",
            "echo",
            "{1}{2}",
            "::::",
            f.to_str().unwrap(),
            ":::",
            "1",
            "2",
        ]),
        b"",
    );
    assert_eq!(stdout(&o), "a1\na2\nb1\nb2\n");
    let o = run(
        herd().args(["run", "-k", "-a", f.to_str().unwrap(), "echo"]),
        b"",
    );
    assert_eq!(stdout(&o), "a\nb\n");
    // Inputs as commands when there is no command.
    let o = run(
        herd().args(["run", "-k", ":::", "echo x; echo y", "echo z"]),
        b"",
    );
    assert_eq!(stdout(&o), "x\ny\nz\n");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A served manager: its address from the line it prints on stderr.
struct Served {
    child: Child,
    addr: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(key: &Path) -> Served {
    let mut child = herd()
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--key-file",
            key.to_str().unwrap(),
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if let Some(a) = line.strip_prefix("herd: serving on ") {
                let _ = tx.send(a.to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(GUARD)
        .expect("the manager announces its address");
    Served { child, addr }
}

struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn distributed_run_survives_a_killed_worker() {
    let dir = tmpdir("distributed");
    let key = dir.join("key");
    std::fs::write(&key, "a shared secret\n").unwrap();
    let served = serve(&key);
    let worker = |name: &str| {
        Reaped(
            herd()
                .args(["worker", "--connect", &served.addr, "-j1", "--name", name])
                .arg("--key-file")
                .arg(&key)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let mut w1 = worker("w1");
    let _w2 = worker("w2");
    let log = dir.join("log");
    // Each job records which worker process runs it, then works a while.
    let job = format!(
        "echo $PPID > {d}/started.{{}}; sleep 1; echo out {{}}; echo err {{}} >&2; exit {{}}",
        d = dir.display()
    );
    let submit = herd()
        .args(["run", "--workers", &served.addr, "-k", "--joblog"])
        .arg(&log)
        .arg("--key-file")
        .arg(&key)
        .args([&job, ":::", "0", "0", "0", "0", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for w1 to be running a job, then kill it mid-job.
    let w1_pid = w1.0.id();
    let deadline = Instant::now() + GUARD;
    let killed_job = loop {
        assert!(Instant::now() < deadline, "w1 never started a job");
        let found = (1..=5).find(|i| {
            std::fs::read_to_string(dir.join(format!("started.{}", [0, 0, 0, 0, 3][i - 1])))
                .ok()
                .is_some_and(|s| s.trim() == w1_pid.to_string())
        });
        if found.is_some() {
            break found;
        }
        std::thread::yield_now();
    };
    assert!(killed_job.is_some());
    w1.0.kill().unwrap();
    w1.0.wait().unwrap();
    let o = wait_output(submit, GUARD);
    assert_eq!(code(&o), 1, "one job failed: {o:?}");
    assert_eq!(stdout(&o), "out 0\nout 0\nout 0\nout 0\nout 3\n");
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).matches("err ").count(),
        5
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip(1)
        .map(|l| l.split('\t').collect())
        .collect();
    assert_eq!(rows.len(), 5, "{text}");
    assert!(rows.iter().all(|r| r[1] == "w1" || r[1] == "w2"));
    // `herd status` sees the manager's queues.
    let o = run(
        herd().args([
            "status",
            &served.addr,
            "--interval",
            "10",
            "--key-file",
            key.to_str().unwrap(),
        ]),
        b"",
    );
    assert_eq!(code(&o), 0, "{o:?}");
    assert!(stdout(&o).contains("herd.jobs"), "{}", stdout(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn submit_without_waiting_then_collect() {
    let dir = tmpdir("collect");
    let key = dir.join("key");
    std::fs::write(&key, "k2").unwrap();
    let served = serve(&key);
    let keyf = key.to_str().unwrap();
    let o = run(
        herd().args([
            "submit",
            "--connect",
            &served.addr,
            "--key-file",
            keyf,
            "--no-wait",
            "echo",
            ":::",
            "a",
            "b",
        ]),
        b"",
    );
    assert_eq!(code(&o), 0, "{o:?}");
    let batch = stdout(&o).trim().to_owned();
    assert_eq!(batch.len(), 16);
    let _w = Reaped(
        herd()
            .args([
                "worker",
                "--connect",
                &served.addr,
                "--key-file",
                keyf,
                "-j2",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let o = run(
        herd().args([
            "submit",
            "--connect",
            &served.addr,
            "--key-file",
            keyf,
            "-k",
            "--collect",
            &batch,
        ]),
        b"",
    );
    assert_eq!(code(&o), 0, "{o:?}");
    assert_eq!(stdout(&o), "a\nb\n");
    // A wrong key is refused with a clear error, not a hang.
    let o = run(
        herd().args([
            "submit",
            "--connect",
            &served.addr,
            "--key",
            "wrong",
            "echo",
            ":::",
            "x",
        ]),
        b"",
    );
    assert_eq!(code(&o), 255);
    assert!(!o.stderr.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn jobs_die_with_a_killed_herd() {
    let dir = tmpdir("orphans");
    let pidfile = dir.join("pid");
    let mut h = herd()
        .args(["run", "-u"])
        // The job's shell and its child in the background: both die.
        .arg(format!(
            "sleep {{}} & echo $$ $! > {}.tmp && mv {0}.tmp {0}; wait",
            pidfile.display()
        ))
        .args([":::", "300"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + GUARD;
    let pids: Vec<u32> = loop {
        assert!(Instant::now() < deadline, "the job never started");
        if let Ok(s) = std::fs::read_to_string(&pidfile) {
            break s.split_whitespace().map(|p| p.parse().unwrap()).collect();
        }
        std::thread::yield_now();
    };
    assert_eq!(pids.len(), 2);
    h.kill().unwrap(); // SIGKILL: herd gets no chance to clean up
    h.wait().unwrap();
    for job in pids {
        let proc = PathBuf::from(format!("/proc/{job}"));
        while proc.exists() {
            // A zombie waiting for init to reap it is dead too.
            let stat = std::fs::read_to_string(proc.join("stat")).unwrap_or_default();
            if stat
                .rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
            {
                break;
            }
            assert!(Instant::now() < deadline, "the job outlived herd");
            std::thread::yield_now();
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn distributed_run_on_nats_jetstream() {
    let installed = Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        eprintln!("nats-server is not installed: the NATS run is skipped (.ci/run installs it)");
        return;
    }
    let dir = tmpdir("nats");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let token = "cli-nats-token";
    let _server = Reaped(
        Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "--auth",
                token,
                "-sd",
            ])
            .arg(dir.join("js"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + GUARD;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nats-server never listened");
        std::thread::yield_now();
    }
    let addr = format!("nats://127.0.0.1:{port}");
    let _workers: Vec<Reaped> = ["n1", "n2"]
        .iter()
        .map(|name| {
            Reaped(
                herd()
                    .args([
                        "worker",
                        "--connect",
                        &addr,
                        "--key",
                        token,
                        "-j1",
                        "--name",
                        name,
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    let log = dir.join("log");
    let o = run(
        herd()
            .args(["run", "--workers", &addr, "--key", token, "-k", "--joblog"])
            .arg(&log)
            .args(["echo {}; exit {}", ":::", "0", "0", "4"]),
        b"",
    );
    assert_eq!(code(&o), 1, "{o:?}");
    assert_eq!(stdout(&o), "0\n0\n4\n");
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(text.lines().skip(1).all(|l| {
        let host = l.split('\t').nth(1).unwrap();
        host == "n1" || host == "n2"
    }));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_second_signal_ends_herd_stuck_on_a_full_stdout() {
    // herd's stdout is a pipe nobody reads: copying a job's megabyte of
    // output out blocks. The first SIGTERM cannot be handled there; the
    // second ends herd at once.
    let mut h = herd()
        .args([
            "run",
            "-j1",
            "head",
            "-c",
            "4000000",
            "/dev/zero",
            ":::",
            "a",
            "b",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = h.id();
    let deadline = Instant::now() + GUARD;
    // Blocked in sendfile (40) or write (1) on the full pipe.
    loop {
        assert!(
            Instant::now() < deadline,
            "herd never blocked on its stdout"
        );
        let sc = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        if sc.starts_with("40 ") || sc.starts_with("1 ") {
            break;
        }
        std::thread::yield_now();
    }
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(h.wait());
    });
    // Two signals may merge into one if sent while the first is pending:
    // send until herd is gone.
    let status = loop {
        assert!(Instant::now() < deadline, "herd ignored repeated SIGTERMs");
        // SAFETY: a signal to a child not yet reaped (the waiting thread
        // reaps it only once it exits, and then we stop sending).
        unsafe { libc_kill(pid as i32, 15) };
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(s) => break s.unwrap(),
            Err(_) => continue,
        }
    };
    assert_eq!(status.code(), Some(143));
}

#[test]
fn progress_bar_keeps_stdout_clean() {
    // --bar reads every input first (to know the total) and draws on
    // stderr only; the jobs' output is untouched.
    let o = run(herd().args(["run", "--bar", "-k", "echo"]), b"a\nb\nc\n");
    assert_eq!(code(&o), 0, "{o:?}");
    assert_eq!(stdout(&o), "a\nb\nc\n");
    let o = run(
        herd().args(["run", "--bar", "-j2", "true", ":::", "1", "2", "3"]),
        b"",
    );
    assert_eq!((code(&o), o.stdout.len()), (0, 0));
}
