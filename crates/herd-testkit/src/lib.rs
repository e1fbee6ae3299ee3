//! Helpers shared by herd's integration tests: every wait is on an event
//! (a pidfd, a state, a flag) with a generous guard, never a sleep.

use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use herd::StartMethod;
use libtest_mimic::Failed;

pub mod trace;

/// A failure guard for every wait: generous, because CI machines are slow.
pub const GUARD: Duration = Duration::from_secs(30);

/// `Ok` if `cond`, else a failure saying `what`.
pub fn check(cond: bool, what: impl Into<String>) -> Result<(), Failed> {
    if cond {
        Ok(())
    } else {
        Err(what.into().into())
    }
}

/// Runs `f` with each start method.
pub fn both<F: Fn(StartMethod) -> Result<(), Failed>>(f: F) -> Result<(), Failed> {
    f(StartMethod::Spawn)?;
    f(StartMethod::ForkServer)
}

/// Polls `f` (yielding the CPU, never sleeping) until it holds or the
/// guard passes; returns its last answer.
pub fn eventually(f: impl FnMut() -> bool) -> bool {
    eventually_within(GUARD, f)
}

/// As [`eventually`], with another limit.
pub fn eventually_within(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::yield_now();
    }
    f()
}

/// Waits until `fd` is readable (for a pidfd: the process exited), up to `limit`.
pub fn wait_fd(fd: BorrowedFd<'_>, limit: Duration) -> bool {
    let mut pfd = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    let ts = rustix::event::Timespec {
        tv_sec: limit.as_secs() as i64,
        tv_nsec: i64::from(limit.subsec_nanos()),
    };
    loop {
        match rustix::event::poll(&mut pfd, Some(&ts)) {
            Ok(n) => return n > 0,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return false,
        }
    }
}

/// A pidfd for `pid` (which must be alive, or the answer may be stale).
pub fn pidfd_of(pid: u32) -> Option<OwnedFd> {
    rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid as i32)?,
        rustix::process::PidfdFlags::empty(),
    )
    .ok()
}

/// Runs `cmd` to completion with its stdout captured, killing it if it
/// outlives the guard.
pub fn run_guarded(mut cmd: Command) -> Result<(ExitStatus, String), String> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let fd = pidfd_of(child.id()).ok_or("no pidfd")?;
    if !wait_fd(fd.as_fd(), GUARD) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("{cmd:?} hung"));
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    let out = reader.join().map_err(|_| "reader thread panicked")?;
    Ok((status, out))
}

/// The environment variable that makes a test binary play a helper role.
pub const ROLE_ENV: &str = "HERD_TEST_ROLE";

/// This test binary again, as helper `role` (stdin and stdout piped).
pub fn helper(role: &str) -> Command {
    let mut c = Command::new(std::env::current_exe().expect("current_exe"));
    c.env(ROLE_ENV, role)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    c
}

/// Runs helper `role` to its end (guarded) and checks that it succeeded
/// and said `word`.
pub fn helper_says(role: &str, word: &str) -> Result<(), Failed> {
    let (status, text) = run_guarded(helper(role))?;
    check(
        status.success() && text.contains(word),
        format!("helper {role} said {text:?}"),
    )
}

/// Ends a helper role: prints `word` and exits 0 if `outcome` is `Ok`,
/// prints the failure and exits 1 otherwise.
pub fn end_role(outcome: Result<(), Failed>, word: &str) -> ! {
    match outcome {
        Ok(()) => {
            println!("{word}");
            std::process::exit(0)
        }
        Err(e) => {
            println!("{e:?}");
            std::process::exit(1)
        }
    }
}

/// A lock held by another thread of this process until the holder is
/// dropped (or the guard passes).
#[derive(Debug)]
pub struct HeldElsewhere {
    release: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HeldElsewhere {
    /// Takes `lock` on a new thread and returns once that thread holds it.
    pub fn new(lock: &herd::sync::Lock) -> Result<Self, Failed> {
        let lock = lock.clone();
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let _guard = lock.acquire().expect("acquire");
            let _ = held_tx.send(());
            let _ = release_rx.recv_timeout(GUARD);
        });
        held_rx
            .recv_timeout(GUARD)
            .map_err(|e| format!("the holder never took the lock: {e}"))?;
        Ok(Self {
            release: Some(release),
            thread: Some(thread),
        })
    }

    /// Lets go of the lock and waits for the holder to end.
    pub fn release(mut self) -> Result<(), Failed> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), Failed> {
        if let Some(tx) = self.release.take() {
            let _ = tx.send(());
        }
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| Failed::from("the holder panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for HeldElsewhere {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
