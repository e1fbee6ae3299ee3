//! Integration tests for `herd::Process` with real child processes.
//!
//! This target has `harness = false`: `main` calls `herd::init()` first (a
//! child re-executes this binary) and then runs the tests with
//! libtest-mimic. The same binary also plays helper programs (a parent to be
//! SIGKILLed, a program that exits with children) when `HERD_TEST_ROLE` is
//! set. No test sleeps to wait for another process: each waits on the event
//! (a pidfd, a pipe, a join) with a generous deadline as a failure guard.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::process::{Command, Stdio as StdStdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use herd::{
    ExitStatus, Process, ProcessError, ProcessState, Refusal, Signal, StartError, StartMethod,
};
use herd_testkit::{GUARD, both, check, end_role, eventually, pidfd_of, wait_fd};
use libtest_mimic::{Arguments, Failed, Trial};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

// ---------------------------------------------------------------- tasks

#[herd::task]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[herd::task]
fn describe() -> (String, u32, u32, bool, bool) {
    let me = herd::current_process();
    (me.name, me.pid, me.ppid, me.is_child, me.daemon)
}

#[herd::task]
fn panics(msg: String) -> u32 {
    panic!("task failed: {msg}")
}

#[herd::task]
fn block_forever() {
    loop {
        std::thread::park();
    }
}

#[herd::task]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[herd::task]
fn sleep_then_print(ms: u64, s: String) {
    std::thread::sleep(Duration::from_millis(ms));
    println!("{s}");
}

#[herd::task]
fn exit_with(code: i32) -> u32 {
    std::process::exit(code)
}

#[herd::task]
fn echo_bytes(v: Vec<u8>) -> Vec<u8> {
    v
}

#[herd::task]
fn quick() -> u8 {
    7
}

#[herd::task]
fn print_line(s: String) {
    println!("{s}");
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

#[herd::task]
fn bump_global(by: u64) -> u64 {
    COUNTER.fetch_add(by, Ordering::SeqCst) + by
}

/// Starts a plain OS process (in this child's process group), prints its
/// pid, then blocks: `terminate` must reach the grandchild too.
#[herd::task]
#[expect(clippy::zombie_processes, reason = "the group is killed by the test")]
fn spawn_grandchild_then_block() -> u32 {
    let child = Command::new("sleep")
        .arg("1000")
        .spawn()
        .expect("spawn sleep");
    println!("{}", child.id());
    std::io::stdout().flush().expect("flush");
    // Blocked in a sleep, as the seed's children are.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Starts a herd child (blocking forever) and prints its pid, then blocks.
#[herd::task]
fn nested_then_block(method: u8) {
    let p = Process::builder(block_forever, ())
        .start_method(if method == 0 {
            StartMethod::Spawn
        } else {
            StartMethod::ForkServer
        })
        .start()
        .expect("nested start");
    println!("{}", p.pid());
    std::io::stdout().flush().expect("flush");
    loop {
        std::thread::park();
    }
}

/// Deserializes only even numbers: arguments that fail in the child.
#[derive(Debug, Serialize)]
struct EvenOnly(u32);

impl<'de> Deserialize<'de> for EvenOnly {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u32::deserialize(d)?;
        if v % 2 == 0 {
            Ok(Self(v))
        } else {
            Err(serde::de::Error::custom(format!("{v} is odd")))
        }
    }
}

#[herd::task]
fn take_even(v: EvenOnly) -> u32 {
    v.0
}

/// Never serializes.
#[derive(Debug, Deserialize)]
struct Unserializable;

impl Serialize for Unserializable {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("this value refuses to serialize"))
    }
}

#[herd::task]
fn return_unserializable() -> Unserializable {
    Unserializable
}

#[herd::task]
fn take_unserializable(_v: Unserializable) -> u8 {
    0
}

#[herd::task]
fn add_to_shared(total: herd::sync::Value<u64>, n: u64) -> u64 {
    for _ in 0..n {
        total.fetch_add(1);
    }
    total.get()
}

#[herd::task]
fn set_flag(flag: herd::sync::Value<u8>, counter: herd::sync::Value<i32>) {
    counter.set(-7);
    flag.set(1);
}

/// Panics while being deserialized.
#[derive(Debug, Serialize)]
struct PanicsOnDecode;

impl<'de> Deserialize<'de> for PanicsOnDecode {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        panic!("no decoding today")
    }
}

#[herd::task]
fn take_panicky(_v: PanicsOnDecode) -> u8 {
    0
}

#[herd::task]
fn fd_is_open(fd: i32) -> bool {
    // SAFETY: F_GETFD only inspects the fd table.
    unsafe { libc_fcntl_getfd(fd) }
}

/// `fcntl(fd, F_GETFD) != -1` without a libc dependency.
unsafe fn libc_fcntl_getfd(fd: i32) -> bool {
    // SAFETY: the number is only probed, never used.
    let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    rustix::io::fcntl_getfd(b).is_ok()
}

#[herd::task]
fn big_result(n: usize) -> Vec<u64> {
    vec![7; n]
}

fn not_registered(x: u8) -> u8 {
    x
}

// ---------------------------------------------------------------- helpers

/// Whether `fd` is readable right now.
fn wait_fd_now(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    let mut pfd = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    let ts = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(rustix::event::poll(&mut pfd, Some(&ts)), Ok(n) if n > 0)
}

fn helper(role: &str) -> Command {
    let mut c = Command::new(std::env::current_exe().expect("current_exe"));
    c.env("HERD_TEST_ROLE", role)
        .stdin(StdStdio::piped())
        .stdout(StdStdio::piped());
    c
}

fn run_helper(role: &str) -> Result<(std::process::ExitStatus, String), Failed> {
    Ok(herd_testkit::run_guarded(helper(role))?)
}

/// Reads `n` lines from a helper within the guard, on a thread.
fn read_lines(stdout: std::process::ChildStdout, n: usize) -> Result<Vec<String>, Failed> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().take(n) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + GUARD;
    let mut lines = Vec::new();
    for _ in 0..n {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line?),
            Err(_) => {
                return Err(format!("helper gave {} of {n} lines: {lines:?}", lines.len()).into());
            }
        }
    }
    Ok(lines)
}

// ---------------------------------------------------------------- tests

fn typed_result() -> Result<(), Failed> {
    both(|m| {
        let mut p = Process::builder(add, (40, 2)).start_method(m).start()?;
        check(p.join()? == 42, "40 + 2")?;
        check(p.exitcode() == Some(0), "exit code 0")?;
        check(
            matches!(p.join(), Err(ProcessError::AlreadyJoined { .. })),
            "second join",
        )
    })
}

fn large_payloads_do_not_deadlock() -> Result<(), Failed> {
    both(|m| {
        // 1 MiB: several times a unix socket's buffer, so both sides must
        // stream (a debug-build serde walks a Vec<u8> byte by byte, hence
        // not more).
        let data: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        let mut p = Process::builder(echo_bytes, (data.clone(),))
            .start_method(m)
            .start()?;
        check(p.join()? == data, "1 MiB round trip")
    })
}

fn current_process_in_child() -> Result<(), Failed> {
    both(|m| {
        let mut p = Process::builder(describe, ())
            .name("worker-7")
            .daemon(true)
            .start_method(m)
            .start()?;
        let (name, pid, ppid, is_child, daemon) = p.join()?;
        check(name == "worker-7", format!("name {name}"))?;
        check(pid == p.pid(), "pid")?;
        check(ppid == std::process::id(), format!("ppid {ppid}"))?;
        check(is_child && daemon, "is_child and daemon")?;
        let me = herd::current_process();
        check(
            me.name == "MainProcess" && !me.is_child,
            "main process identity",
        )
    })
}

fn default_names_count_up() -> Result<(), Failed> {
    let mut a = herd::spawn(describe, ())?;
    let mut b = herd::spawn(describe, ())?;
    let (na, nb) = (a.join()?.0, b.join()?.0);
    check(
        na.starts_with("Process-") && nb.starts_with("Process-") && na != nb,
        format!("{na} {nb}"),
    )
}

fn panic_is_reported() -> Result<(), Failed> {
    both(|m| {
        let mut p = Process::builder(panics, ("boom".to_owned(),))
            .start_method(m)
            .stderr(herd::Stdio::null())
            .start()?;
        match p.join() {
            Err(ProcessError::Panicked { report, pid }) => {
                check(pid == p.pid(), "pid in error")?;
                check(
                    report.message == "task failed: boom",
                    format!("message {}", report.message),
                )?;
                let loc = report.location.clone().unwrap_or_default();
                check(loc.contains("tests/process.rs"), format!("location {loc}"))?;
                check(
                    report.backtrace.contains("panics"),
                    "backtrace names the task",
                )?;
                check(p.exitcode() == Some(101), "exit code 101")
            }
            other => Err(format!("expected a panic, got {other:?}").into()),
        }
    })
}

fn sigkill_is_reported() -> Result<(), Failed> {
    both(|m| {
        let mut p = Process::builder(block_forever, ())
            .start_method(m)
            .start()?;
        p.signal(Signal::KILL)?;
        match p.join() {
            Err(
                e @ ProcessError::Signaled {
                    signal: Signal::KILL,
                    ..
                },
            ) => {
                check(
                    e.to_string().contains("SIGKILL"),
                    "message names the signal",
                )?;
                check(p.exitcode() == Some(-9), "exitcode -9")
            }
            other => Err(format!("expected SIGKILL, got {other:?}").into()),
        }
    })
}

fn terminate_blocked_child_and_its_group() -> Result<(), Failed> {
    both(|m| {
        let (reader, writer) = std::io::pipe()?;
        let mut p = Process::builder(spawn_grandchild_then_block, ())
            .start_method(m)
            .stdout(writer)
            .terminate_grace(Duration::from_secs(5))
            .start()?;
        let mut line = String::new();
        BufReader::new(reader).read_line(&mut line)?;
        let grandchild: u32 = line.trim().parse()?;
        let gfd = pidfd_of(grandchild).ok_or("grandchild pidfd")?;
        let status = p.terminate()?;
        check(
            status == ExitStatus::Signaled(Signal::TERM),
            format!("status {status}"),
        )?;
        check(
            wait_fd(gfd.as_fd(), GUARD),
            "the grandchild in the group died too",
        )?;
        check(!p.is_alive(), "not alive")?;
        match p.join() {
            Err(ProcessError::Signaled {
                signal: Signal::TERM,
                ..
            }) => Ok(()),
            other => Err(format!("expected SIGTERM, got {other:?}").into()),
        }
    })
}

fn join_timeout_and_try_join() -> Result<(), Failed> {
    both(|m| {
        let mut p = Process::builder(block_forever, ())
            .start_method(m)
            .start()?;
        check(p.try_join()?.is_none(), "try_join while running")?;
        let t = Instant::now();
        check(
            p.join_timeout(Duration::from_millis(50))?.is_none(),
            "join_timeout while running",
        )?;
        check(
            t.elapsed() >= Duration::from_millis(50),
            "join_timeout waited",
        )?;
        check(p.is_alive() && p.exitcode().is_none(), "still alive")?;
        p.kill()?;
        let mut q = Process::builder(sleep_ms, (10,)).start_method(m).start()?;
        check(
            q.join_timeout(GUARD)? == Some(10),
            "join_timeout gets the value",
        )
    })
}

fn state_of_stopped_and_zombie() -> Result<(), Failed> {
    both(|m| {
        let mut p = Process::builder(block_forever, ())
            .start_method(m)
            .start()?;
        check(
            eventually(|| p.state().is_ok_and(|s| s == ProcessState::Sleeping)),
            "sleeping while parked",
        )?;
        p.signal(Signal::STOP)?;
        check(
            eventually(|| p.state().is_ok_and(|s| s == ProcessState::Stopped)),
            format!("stopped, got {:?}", p.state()),
        )?;
        p.signal(Signal::CONT)?;
        check(
            eventually(|| p.state().is_ok_and(|s| s != ProcessState::Stopped)),
            "continued",
        )?;
        p.kill()?;
        check(
            p.state()? == ProcessState::Signaled(Signal::KILL),
            "signaled after reaping",
        )?;

        let mut q = Process::builder(quick, ()).start_method(m).start()?;
        check(wait_fd(q.pidfd(), GUARD), "child exited")?;
        check(
            q.state()? == ProcessState::Zombie,
            format!("zombie, got {:?}", q.state()),
        )?;
        check(q.join()? == 7, "value after zombie")?;
        check(
            q.state()? == ProcessState::Exited(0),
            "exited(0) after join",
        )
    })
}

fn exit_without_result() -> Result<(), Failed> {
    both(|m| {
        let mut p = Process::builder(exit_with, (3,)).start_method(m).start()?;
        match p.join() {
            Err(ProcessError::ExitedWithoutResult { code: 3, .. }) => Ok(()),
            other => Err(format!("expected exit 3, got {other:?}").into()),
        }
    })
}

fn args_that_do_not_deserialize() -> Result<(), Failed> {
    both(|m| {
        let mut ok = Process::builder(take_even, (EvenOnly(4),))
            .start_method(m)
            .start()?;
        check(ok.join()? == 4, "even passes")?;
        match Process::builder(take_even, (EvenOnly(3),))
            .start_method(m)
            .start()
        {
            Err(StartError::Refused {
                refusal: Refusal::ArgsDecode { reason },
                ..
            }) => check(reason.contains("3 is odd"), format!("reason {reason}")),
            other => Err(format!("expected ArgsDecode, got {other:?}").into()),
        }
    })
}

fn values_that_do_not_serialize() -> Result<(), Failed> {
    both(|m| {
        match Process::builder(take_unserializable, (Unserializable,))
            .start_method(m)
            .start()
        {
            Err(StartError::ArgsEncode { reason, .. }) => check(reason.contains("refuses"), reason),
            other => Err(format!("expected ArgsEncode, got {other:?}").into()),
        }?;
        let mut p = Process::builder(return_unserializable, ())
            .start_method(m)
            .start()?;
        match p.join() {
            Err(ProcessError::ResultEncode { reason, .. }) => {
                check(reason.contains("refuses"), reason)
            }
            other => Err(format!("expected ResultEncode, got {other:?}").into()),
        }
    })
}

fn unregistered_task_is_refused() -> Result<(), Failed> {
    match Process::builder(not_registered, (1,)).start() {
        Err(StartError::UnregisteredTask { task }) => check(task.contains("not_registered"), task),
        other => Err(format!("expected UnregisteredTask, got {other:?}").into()),
    }
}

fn wrong_build_is_refused() -> Result<(), Failed> {
    // The same program, padded by one byte: for herd a different build.
    let dir = std::env::temp_dir().join(format!("herd-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let copy = dir.join("other-build");
    std::fs::copy(std::env::current_exe()?, &copy)?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&copy)?
        .write_all(b"\0")?;
    let result = Process::builder(add, (1, 2)).executable(&copy).start();
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Err(
            e @ StartError::Refused {
                refusal: Refusal::BuildMismatch { .. },
                ..
            },
        ) => check(e.to_string().contains("different build"), e.to_string()),
        other => Err(format!("expected BuildMismatch, got {other:?}").into()),
    }
}

fn other_program_is_refused() -> Result<(), Failed> {
    // A different herd program altogether (an example of this crate).
    let exe = std::env::current_exe()?;
    let example = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|d| d.join("examples").join("s4_globals"))
        .ok_or("no target dir")?;
    match Process::builder(add, (1, 2)).executable(&example).start() {
        Err(StartError::Refused {
            refusal: Refusal::BuildMismatch { .. },
            ..
        }) => Ok(()),
        other => Err(format!("expected BuildMismatch, got {other:?}").into()),
    }
}

fn child_that_dies_during_startup() -> Result<(), Failed> {
    // A program that is not a herd program at all: it exits at once.
    match Process::builder(add, (1, 2))
        .executable("/bin/true")
        .start()
    {
        Err(StartError::DiedDuringStartup { status, .. }) => {
            check(status.success(), status.to_string())
        }
        other => Err(format!("expected DiedDuringStartup, got {other:?}").into()),
    }
}

fn bootstrap_has_a_deadline() -> Result<(), Failed> {
    // A program that never answers (as a program without herd::init() in
    // main would not): start gives up at the deadline and kills it.
    let dir = std::env::temp_dir().join(format!("herd-test-silent-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let script = dir.join("silent");
    std::fs::write(&script, "#!/bin/sh\nexec sleep 3600\n")?;
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let t = Instant::now();
    let result = Process::builder(add, (1, 2))
        .executable(&script)
        .bootstrap_timeout(Duration::from_millis(300))
        .start();
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Err(StartError::BootstrapTimeout { pid, .. }) => {
            check(
                t.elapsed() >= Duration::from_millis(300),
                "waited the deadline",
            )?;
            check(
                !std::path::Path::new(&format!("/proc/{pid}")).exists(),
                "the silent child was killed and reaped",
            )
        }
        other => Err(format!("expected BootstrapTimeout, got {other:?}").into()),
    }
}

/// The child never runs the body of `main`: a helper prints a line from
/// `main` after `herd::init()`, then starts children that print their own.
fn child_never_runs_main_body() -> Result<(), Failed> {
    let (status, text) = run_helper("main-body")?;
    check(status.success(), format!("helper status {status:?}"))?;
    let mains = text.lines().filter(|l| *l == "main body").count();
    let tasks = text.lines().filter(|l| *l == "task ran").count();
    check(mains == 1 && tasks == 2, format!("helper said {text:?}"))
}

fn missing_executable_fails_at_start() -> Result<(), Failed> {
    match Process::builder(add, (1, 2))
        .executable("/nonexistent/herd-program")
        .start()
    {
        Err(StartError::Spawn(e)) => check(e.kind() == std::io::ErrorKind::NotFound, e.to_string()),
        other => Err(format!("expected Spawn error, got {other:?}").into()),
    }
}

/// A shared Value passed as a task argument (its memfd travels with the
/// request): children's updates are the parent's.
fn shared_value_crosses_processes() -> Result<(), Failed> {
    both(|m| {
        let total = herd::sync::Value::new(0u64)?;
        let mut a = Process::builder(add_to_shared, (total.clone(), 500))
            .start_method(m)
            .start()?;
        let mut b = Process::builder(add_to_shared, (total.clone(), 500))
            .start_method(m)
            .start()?;
        a.join()?;
        b.join()?;
        check(total.get() == 1000, format!("total {}", total.get()))?;
        let (flag, counter) = (herd::sync::Value::new(0u8)?, herd::sync::Value::new(0i32)?);
        let mut c = Process::builder(set_flag, (flag.clone(), counter.clone()))
            .start_method(m)
            .start()?;
        c.join()?;
        check(
            flag.get() == 1 && counter.get() == -7,
            "two values, both updated",
        )
    })
}

fn shared_value_outside_a_task_is_an_error() -> Result<(), Failed> {
    let v = herd::sync::Value::new(1u8)?;
    match serde_json::to_string(&v) {
        Err(e) => check(
            e.to_string().contains("argument of a herd task"),
            e.to_string(),
        ),
        Ok(s) => Err(format!("serialized to {s}").into()),
    }
}

fn panicking_deserialize_is_a_refusal() -> Result<(), Failed> {
    both(|m| {
        match Process::builder(take_panicky, (PanicsOnDecode,))
            .start_method(m)
            .stderr(herd::Stdio::null())
            .start()
        {
            Err(StartError::Refused {
                refusal: Refusal::ArgsDecode { reason },
                ..
            }) => check(reason.contains("no decoding today"), reason),
            other => Err(format!("expected ArgsDecode, got {other:?}").into()),
        }
    })
}

/// An fd the parent left inheritable (no close-on-exec) must not reach a
/// child.
fn no_fd_leaks_into_children() -> Result<(), Failed> {
    let (r, w) = rustix::pipe::pipe()?;
    rustix::io::fcntl_setfd(&w, rustix::io::FdFlags::empty())?;
    let raw = std::os::fd::AsRawFd::as_raw_fd(&w);
    both(|m| {
        let mut p = Process::builder(fd_is_open, (raw,))
            .start_method(m)
            .start()?;
        check(!p.join()?, format!("fd {raw} leaked into a {m:?} child"))
    })?;
    drop((r, w));
    Ok(())
}

fn huge_durations_mean_no_deadline() -> Result<(), Failed> {
    both(|m| {
        let mut p = Process::builder(quick, ())
            .start_method(m)
            .bootstrap_timeout(Duration::MAX)
            .terminate_grace(Duration::MAX)
            .start()?;
        check(p.join_timeout(Duration::MAX)? == Some(7), "value")
    })
}

/// Runs in a helper: a stopped forkserver must not hang `start`.
fn hung_forkserver_is_replaced() -> Result<(), Failed> {
    let (status, text) = run_helper("forkserver-hung")?;
    check(
        status.success() && text.contains("recovered"),
        format!("helper said {text:?}"),
    )
}

fn forkserver_hung() -> Result<(), Failed> {
    let mut p = Process::builder(quick, ())
        .start_method(StartMethod::ForkServer)
        .start()?;
    check(p.join()? == 7, "first child")?;
    let server = herd::forkserver_pid().ok_or("no forkserver")?;
    let fd = pidfd_of(server).ok_or("forkserver pidfd")?;
    rustix::process::pidfd_send_signal(&fd, rustix::process::Signal::STOP)?;
    let t = Instant::now();
    let r = Process::builder(quick, ())
        .start_method(StartMethod::ForkServer)
        .bootstrap_timeout(Duration::from_millis(500))
        .start();
    check(t.elapsed() < GUARD, "start returned")?;
    // Either the attempt failed with the forkserver error, or it went
    // through a replacement server; both are fine, a hang is not.
    if let Ok(mut p) = r {
        check(p.join()? == 7, "child via a new server")?;
    }
    let mut q = Process::builder(quick, ())
        .start_method(StartMethod::ForkServer)
        .start()?;
    check(q.join()? == 7, "a child through a new forkserver")?;
    check(
        herd::forkserver_pid().is_some_and(|p| p != server),
        "a new forkserver",
    )
}

/// Exit with a non-daemon child blocked writing a large result that
/// nobody joins: the exit must still finish.
fn exit_with_unjoined_big_result() -> Result<(), Failed> {
    let (status, _) = run_helper("exit-with-big-result")?;
    check(status.success(), format!("helper status {status:?}"))
}

/// Threads started before `herd::init()` make forking unsound: the
/// forkserver refuses, Spawn still works.
fn threads_before_init_refused_by_forkserver() -> Result<(), Failed> {
    let (_, text) = run_helper("threads-before-init")?;
    check(
        text.contains("forkserver refused") && text.contains("spawn ok"),
        format!("helper said {text:?}"),
    )
}

fn globals_are_not_shared() -> Result<(), Failed> {
    both(|m| {
        COUNTER.store(100, Ordering::SeqCst);
        let mut p = Process::builder(bump_global, (5,))
            .start_method(m)
            .start()?;
        let in_child = p.join()?;
        check(COUNTER.load(Ordering::SeqCst) == 100, "parent unchanged")?;
        // Spawn re-executes (fresh 0); the forkserver was forked before the
        // parent changed its copy (also 0): either way not the parent's 100.
        check(in_child == 5, format!("child saw its own copy: {in_child}"))
    })
}

fn stdout_redirected() -> Result<(), Failed> {
    both(|m| {
        let (mut reader, writer) = std::io::pipe()?;
        let mut p = Process::builder(print_line, ("hello from the child".to_owned(),))
            .start_method(m)
            .stdout(writer)
            .start()?;
        p.join()?;
        let mut out = String::new();
        reader.read_to_string(&mut out)?;
        check(out == "hello from the child\n", format!("{out:?}"))
    })
}

fn active_children_lists_live_ones() -> Result<(), Failed> {
    let mut p = Process::builder(block_forever, ())
        .name("listed")
        .daemon(true)
        .start()?;
    let listed = herd::active_children();
    check(
        listed
            .iter()
            .any(|c| c.pid == p.pid() && c.name == "listed"),
        format!("{listed:?}"),
    )?;
    p.kill()?;
    check(
        !herd::active_children().iter().any(|c| c.pid == p.pid()),
        "gone after kill",
    )
}

/// Runs in a helper process: killing the forkserver under the other tests
/// would kill their children too.
fn forkserver_killed_is_replaced() -> Result<(), Failed> {
    let (status, text) = run_helper("forkserver-restart")?;
    check(
        status.success() && text.contains("replaced"),
        format!("helper said {text:?}"),
    )
}

fn forkserver_restart() -> Result<(), Failed> {
    let mut p = Process::builder(quick, ())
        .start_method(StartMethod::ForkServer)
        .start()?;
    check(p.join()? == 7, "first child")?;
    let server = herd::forkserver_pid().ok_or("no forkserver")?;
    let fd = pidfd_of(server).ok_or("forkserver pidfd")?;
    rustix::process::pidfd_send_signal(&fd, rustix::process::Signal::KILL)?;
    check(wait_fd(fd.as_fd(), GUARD), "forkserver died")?;
    let mut q = Process::builder(quick, ())
        .start_method(StartMethod::ForkServer)
        .start()
        .map_err(|e| format!("{e:?}"))?;
    check(q.join()? == 7, "a child through a new forkserver")?;
    check(
        herd::forkserver_pid().is_some_and(|p| p != server),
        "a new forkserver",
    )
}

fn not_initialized_is_an_error() -> Result<(), Failed> {
    let (_, text) = run_helper("no-init")?;
    check(
        text.contains("NotInitialized"),
        format!("helper said {text:?}"),
    )
}

/// The parent is SIGKILLed: every child (both methods, and a nested one)
/// is gone within a second.
fn parent_sigkill_ends_children() -> Result<(), Failed> {
    let mut parent = helper("orphan-maker").spawn()?;
    let lines = read_lines(parent.stdout.take().ok_or("stdout")?, 9);
    let lines = match lines {
        Ok(l) => l,
        Err(e) => {
            let _ = parent.kill();
            let _ = parent.wait();
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    for line in lines {
        let pid: u32 = line.trim().parse()?;
        fds.push((pid, pidfd_of(pid).ok_or("pidfd of a child")?));
    }
    for (pid, fd) in &fds {
        check(
            !wait_fd_now(fd.as_fd()),
            format!("child {pid} died before its parent"),
        )?;
    }
    let killed = Instant::now();
    parent.kill()?;
    parent.wait()?;
    for (pid, fd) in &fds {
        check(
            wait_fd(fd.as_fd(), GUARD),
            format!("child {pid} still alive"),
        )?;
    }
    let took = killed.elapsed();
    check(
        took < Duration::from_secs(1),
        format!("children took {took:?} to die"),
    )
}

/// At normal exit, daemon children are terminated and others waited for.
fn exit_terminates_daemons_and_waits_for_others() -> Result<(), Failed> {
    let (status, text) = run_helper("exit-with-children")?;
    check(status.success(), format!("helper status {status:?}"))?;
    let mut lines = text.lines();
    let daemon: u32 = lines.next().ok_or("daemon pid")?.parse()?;
    check(
        text.contains("non-daemon finished"),
        format!("non-daemon was waited for: {text:?}"),
    )?;
    // The helper reaped the daemon before exiting, so no such process exists.
    check(
        !std::path::Path::new(&format!("/proc/{daemon}")).exists(),
        "daemon terminated",
    )
}

// ---------------------------------------------------------------- roles

fn role(name: &str) -> ! {
    match name {
        "orphan-maker" => {
            let out = std::io::stdout();
            let a = Process::builder(block_forever, ())
                .start_method(StartMethod::Spawn)
                .start()
                .expect("a");
            let b = Process::builder(block_forever, ())
                .start_method(StartMethod::ForkServer)
                .start()
                .expect("b");
            let (r, w) = std::io::pipe().expect("pipe");
            let c = Process::builder(nested_then_block, (0,))
                .start_method(StartMethod::ForkServer)
                .stdout(w)
                .start()
                .expect("c");
            let mut grandchild = String::new();
            BufReader::new(r)
                .read_line(&mut grandchild)
                .expect("grandchild pid");
            // Started from a thread that then exits: the child must outlive
            // the thread (no parent-death signal tied to it), not the process.
            let d = std::thread::spawn(|| {
                Process::builder(block_forever, ())
                    .start_method(StartMethod::Spawn)
                    .start()
                    .expect("d")
            })
            .join()
            .expect("thread");
            // Plain (non-herd) grandchildren in the group of a Spawn child
            // started from the main thread (parent-death signal path) and of
            // one started from another thread (watchdog path).
            let plain = |from_thread: bool| {
                let (r, w) = std::io::pipe().expect("pipe");
                let start = move || {
                    Process::builder(spawn_grandchild_then_block, ())
                        .start_method(StartMethod::Spawn)
                        .stdout(w)
                        .start()
                        .expect("e")
                };
                let p = if from_thread {
                    std::thread::spawn(start).join().expect("thread")
                } else {
                    start()
                };
                let mut line = String::new();
                BufReader::new(r)
                    .read_line(&mut line)
                    .expect("plain grandchild pid");
                (p, line.trim().parse::<u32>().expect("pid"))
            };
            let (e, e_grandchild) = plain(false);
            let (f, f_grandchild) = plain(true);
            let pids = [
                a.pid(),
                b.pid(),
                c.pid(),
                grandchild.trim().parse().expect("pid"),
                d.pid(),
                e.pid(),
                e_grandchild,
                f.pid(),
                f_grandchild,
            ];
            for pid in pids {
                writeln!(out.lock(), "{pid}").expect("write");
            }
            out.lock().flush().expect("flush");
            // Block until killed.
            let mut sink = String::new();
            let _ = std::io::stdin().read_line(&mut sink);
            std::process::exit(0)
        }
        "exit-with-children" => {
            let d = Process::builder(block_forever, ())
                .daemon(true)
                .start()
                .expect("daemon");
            println!("{}", d.pid());
            // A slow non-daemon child: if exit did not wait for it, the
            // watchdog would kill it when this helper died, before it printed.
            let n = Process::builder(sleep_then_print, (300, "non-daemon finished".to_owned()))
                .start()
                .expect("non-daemon");
            drop((d, n));
            std::process::exit(0)
        }
        "forkserver-hung" => end_role(forkserver_hung(), "recovered"),
        "exit-with-big-result" => {
            for m in [StartMethod::Spawn, StartMethod::ForkServer] {
                let p = Process::builder(big_result, (1 << 20,))
                    .start_method(m)
                    .start()
                    .expect("start");
                // Keep the handle alive (not dropped, not joined) to exit.
                std::mem::forget(p);
            }
            std::process::exit(0)
        }
        "threads-before-init" => {
            match Process::builder(quick, ())
                .start_method(StartMethod::ForkServer)
                .start()
            {
                Err(StartError::ForkServer(_)) => println!("forkserver refused"),
                other => println!("forkserver: {other:?}"),
            }
            match Process::builder(quick, ())
                .start_method(StartMethod::Spawn)
                .start()
                .map(|mut p| p.join())
            {
                Ok(Ok(7)) => println!("spawn ok"),
                other => println!("spawn: {other:?}"),
            }
            std::process::exit(0)
        }
        "main-body" => {
            println!("main body");
            for m in [StartMethod::Spawn, StartMethod::ForkServer] {
                let mut p = Process::builder(print_line, ("task ran".to_owned(),))
                    .start_method(m)
                    .start()
                    .expect("start");
                p.join().expect("join");
            }
            std::process::exit(0)
        }
        "forkserver-restart" => end_role(forkserver_restart(), "replaced"),
        other => panic!("unknown role {other}"),
    }
}

/// A non-daemon thread calls `exit` while its process's main task waits
/// for it: the exit handler must not wait for the exiting thread itself.
#[herd::task]
fn exit_from_a_thread(code: i32) {
    let t = herd::thread::Builder::new()
        .name("exiter")
        .spawn(move || std::process::exit(code))
        .expect("spawn");
    let _ = t.join();
}

fn a_thread_that_exits_does_not_hang_the_exit() -> Result<(), Failed> {
    let mut p = herd::spawn(exit_from_a_thread, (3,))?;
    match p.join_timeout(GUARD) {
        Err(ProcessError::ExitedWithoutResult { code: 3, .. }) => Ok(()),
        other => Err(format!("{other:?}").into()),
    }
}

fn main() {
    if std::env::var("HERD_TEST_ROLE").as_deref() == Ok("no-init") {
        // Deliberately no herd::init(): start must refuse.
        match Process::builder(add, (1, 1)).start() {
            Err(e) => println!("{e:?}"),
            Ok(_) => println!("started without init"),
        }
        return;
    }
    if std::env::var("HERD_TEST_ROLE").as_deref() == Ok("threads-before-init") {
        // Deliberately wrong: a thread before herd::init().
        std::thread::spawn(|| {
            loop {
                std::thread::park();
            }
        });
    }
    herd::init();
    if let Ok(r) = std::env::var("HERD_TEST_ROLE") {
        role(&r);
    }
    let args = Arguments::from_args();
    let other_program_exists = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.parent()?.join("examples").join("s4_globals")))
        .is_some_and(|p| p.exists());
    let tests = vec![
        Trial::test(
            "a_thread_that_exits_does_not_hang_the_exit",
            a_thread_that_exits_does_not_hang_the_exit,
        ),
        Trial::test("typed_result", typed_result),
        Trial::test(
            "large_payloads_do_not_deadlock",
            large_payloads_do_not_deadlock,
        ),
        Trial::test("current_process_in_child", current_process_in_child),
        Trial::test("default_names_count_up", default_names_count_up),
        Trial::test("panic_is_reported", panic_is_reported),
        Trial::test("sigkill_is_reported", sigkill_is_reported),
        Trial::test(
            "terminate_blocked_child_and_its_group",
            terminate_blocked_child_and_its_group,
        ),
        Trial::test("join_timeout_and_try_join", join_timeout_and_try_join),
        Trial::test("state_of_stopped_and_zombie", state_of_stopped_and_zombie),
        Trial::test("exit_without_result", exit_without_result),
        Trial::test("args_that_do_not_deserialize", args_that_do_not_deserialize),
        Trial::test("values_that_do_not_serialize", values_that_do_not_serialize),
        Trial::test("unregistered_task_is_refused", unregistered_task_is_refused),
        Trial::test("wrong_build_is_refused", wrong_build_is_refused),
        Trial::test("other_program_is_refused", other_program_is_refused)
            .with_ignored_flag(!other_program_exists),
        Trial::test(
            "child_that_dies_during_startup",
            child_that_dies_during_startup,
        ),
        Trial::test("bootstrap_has_a_deadline", bootstrap_has_a_deadline),
        Trial::test("child_never_runs_main_body", child_never_runs_main_body),
        Trial::test(
            "missing_executable_fails_at_start",
            missing_executable_fails_at_start,
        ),
        Trial::test("globals_are_not_shared", globals_are_not_shared),
        Trial::test(
            "panicking_deserialize_is_a_refusal",
            panicking_deserialize_is_a_refusal,
        ),
        Trial::test("no_fd_leaks_into_children", no_fd_leaks_into_children),
        Trial::test(
            "huge_durations_mean_no_deadline",
            huge_durations_mean_no_deadline,
        ),
        Trial::test("hung_forkserver_is_replaced", hung_forkserver_is_replaced),
        Trial::test(
            "exit_with_unjoined_big_result",
            exit_with_unjoined_big_result,
        ),
        Trial::test(
            "threads_before_init_refused_by_forkserver",
            threads_before_init_refused_by_forkserver,
        ),
        Trial::test(
            "shared_value_crosses_processes",
            shared_value_crosses_processes,
        ),
        Trial::test(
            "shared_value_outside_a_task_is_an_error",
            shared_value_outside_a_task_is_an_error,
        ),
        Trial::test("stdout_redirected", stdout_redirected),
        Trial::test(
            "active_children_lists_live_ones",
            active_children_lists_live_ones,
        ),
        Trial::test("not_initialized_is_an_error", not_initialized_is_an_error),
        Trial::test(
            "forkserver_killed_is_replaced",
            forkserver_killed_is_replaced,
        ),
        Trial::test("parent_sigkill_ends_children", parent_sigkill_ends_children),
        Trial::test(
            "exit_terminates_daemons_and_waits_for_others",
            exit_terminates_daemons_and_waits_for_others,
        ),
    ];
    libtest_mimic::run(&args, tests).exit();
}
