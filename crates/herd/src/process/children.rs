//! Supervision of the children this process started: how each is linked to
//! us (our own child, or a forkserver's), reaping, group signals, the table
//! behind [`active_children`], and the exit handler that terminates daemon
//! children and waits for the others.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use super::forkserver::ForkServer;
use super::status::{ExitStatus, ProcessState, Signal};
use crate::os;

/// How a child is tied to this process.
#[derive(Debug)]
pub(crate) enum Link {
    /// Our own child: we hold its pidfd and reap it with `waitid(P_PIDFD)`.
    Direct { pidfd: OwnedFd },
    /// A forkserver's child: it reaps it and writes the status to a pipe.
    Served {
        pidfd: OwnedFd,
        status: OwnedFd,
        server: Arc<ForkServer>,
    },
}

/// One child started by this process.
#[derive(Debug)]
pub(crate) struct ChildRecord {
    pub(crate) pid: u32,
    pub(crate) name: String,
    pub(crate) daemon: bool,
    link: Link,
    /// `Some` once reaped. Held while reaping or signalling, so a group
    /// signal never races the reap that would free the pid for reuse.
    status: Mutex<Option<ExitStatus>>,
    /// `join` has returned the outcome.
    joined: std::sync::atomic::AtomicBool,
    /// A duplicate of our end of the bootstrap socket (non-blocking), for
    /// the exit handler to drain.
    sock: Option<OwnedFd>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ChildRecord {
    pub(crate) fn new(
        pid: u32,
        name: String,
        daemon: bool,
        link: Link,
        sock: Option<OwnedFd>,
    ) -> Self {
        Self {
            sock,
            pid,
            name,
            daemon,
            link,
            status: Mutex::new(None),
            joined: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The fd that becomes readable when the child has exited and its
    /// status can be collected.
    pub(crate) fn exit_fd(&self) -> BorrowedFd<'_> {
        match &self.link {
            Link::Direct { pidfd } => pidfd.as_fd(),
            Link::Served { status, .. } => status.as_fd(),
        }
    }

    /// Whether this is our own child (not a forkserver's).
    pub(crate) fn is_direct(&self) -> bool {
        matches!(self.link, Link::Direct { .. })
    }

    /// The child's pidfd.
    pub(crate) fn pidfd(&self) -> BorrowedFd<'_> {
        match &self.link {
            Link::Direct { pidfd } | Link::Served { pidfd, .. } => pidfd.as_fd(),
        }
    }

    /// Whether the child is known to be reaped (no system call).
    fn reaped(&self) -> bool {
        lock(&self.status).is_some()
    }

    /// The exit status if the child has exited (reaping it). Blocks only for
    /// a forkserver child that has died, until the server has reported its
    /// status (asked to reap it at once).
    pub(crate) fn poll_exit(&self) -> io::Result<Option<ExitStatus>> {
        self.poll_exit_inner(true)
    }

    /// As [`poll_exit`](Self::poll_exit), but for a forkserver child that has
    /// died and whose status report has not arrived yet, `None` at once
    /// instead of waiting the moment it takes (`join`, which needs only the
    /// death, uses this).
    pub(crate) fn poll_exit_quick(&self) -> io::Result<Option<ExitStatus>> {
        self.poll_exit_inner(false)
    }

    fn poll_exit_inner(&self, wait_report: bool) -> io::Result<Option<ExitStatus>> {
        let mut st = lock(&self.status);
        if st.is_none() {
            *st = self.try_reap(wait_report)?;
        }
        Ok(*st)
    }

    fn try_reap(&self, wait_report: bool) -> io::Result<Option<ExitStatus>> {
        match &self.link {
            Link::Direct { pidfd } => os::reap_nohang(pidfd.as_fd()),
            // The pipe is non-blocking and the forkserver writes the 8
            // bytes in one `write` (atomic for a pipe), then closes it.
            Link::Served {
                status,
                pidfd,
                server,
            } => {
                let mut got = os::read_nonblocking(status.as_fd(), 8)?;
                if got.is_none()
                    && wait_report
                    && os::wait_readable(&[pidfd.as_fd()], Some(Instant::now()))?[0]
                {
                    // Dead: ask the forkserver to reap it now (it leaves a
                    // child it has just started alone for a moment); its
                    // report is then microseconds away, or the pipe hangs
                    // up if the server died.
                    let _ = server.reap(self.pid);
                    let guard = Instant::now() + Duration::from_secs(5);
                    if os::wait_readable(&[status.as_fd()], Some(guard))?[0] {
                        got = os::read_nonblocking(status.as_fd(), 8)?;
                    }
                }
                match got {
                    None => Ok(None),
                    Some(bytes) => match <[u8; 8]>::try_from(bytes.as_slice()) {
                        Ok(buf) => Ok(Some(super::forkserver::decode_status(buf))),
                        Err(_) => Err(io::Error::new(
                            io::ErrorKind::BrokenPipe,
                            "the forkserver died before reporting the exit status",
                        )),
                    },
                }
            }
        }
    }

    /// Records that `join` has consumed the child's outcome: from now on
    /// `state()` reports how it ended rather than `Zombie`.
    pub(crate) fn mark_joined(&self) {
        self.joined
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Waits for the child to exit, reading and discarding what it sends
    /// on the bootstrap socket meanwhile.
    fn wait_exit_draining(&self) -> io::Result<ExitStatus> {
        let mut sock = self.sock.as_ref().map(AsFd::as_fd);
        loop {
            if let Some(st) = self.poll_exit()? {
                return Ok(st);
            }
            let mut fds = vec![self.exit_fd()];
            fds.extend(sock);
            let ready = os::wait_readable(&fds, None)?;
            if ready.get(1).copied().unwrap_or(false)
                && let Some(s) = sock
            {
                match os::read_nonblocking(s, 64 * 1024) {
                    // Data discarded, or nothing yet: keep going.
                    Ok(Some(v)) if !v.is_empty() => {}
                    Ok(None) => {}
                    // End of file or an error: nothing more will come.
                    Ok(Some(_)) | Err(_) => sock = None,
                }
            }
        }
    }

    /// Waits for the child to exit, until `deadline` (`None`: forever).
    pub(crate) fn wait_exit(&self, deadline: Option<Instant>) -> io::Result<Option<ExitStatus>> {
        loop {
            if let Some(st) = self.poll_exit()? {
                return Ok(Some(st));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
            os::wait_readable(&[self.exit_fd()], deadline)?;
        }
    }

    /// Signals the child's whole process group, unless it was already reaped.
    pub(crate) fn signal_group(&self, sig: Signal) -> io::Result<()> {
        let st = lock(&self.status);
        if st.is_some() {
            return Ok(());
        }
        match &self.link {
            // Unreaped, so the pid (and the group id equal to it) is still
            // ours; the lock keeps a reap from racing the signal.
            Link::Direct { .. } => os::signal_group(self.pid, sig).map(|_| ()),
            // The forkserver signals only children it has not reaped, so no
            // lock is needed, and none is held across the request.
            Link::Served { server, pidfd, .. } => {
                drop(st);
                match server.signal_group(self.pid, sig) {
                    Ok(()) => Ok(()),
                    // The forkserver is gone: at least reach the child itself.
                    Err(_) => os::pidfd_signal(pidfd.as_fd(), sig),
                }
            }
        }
    }

    /// Signals the child itself through its pidfd.
    pub(crate) fn signal(&self, sig: Signal) -> io::Result<()> {
        let st = lock(&self.status);
        if st.is_some() {
            return Ok(());
        }
        os::pidfd_signal(self.pidfd(), sig)
    }

    /// The state as the OS reports it, without reaping.
    pub(crate) fn state(&self) -> io::Result<ProcessState> {
        let st = lock(&self.status);
        if let Some(s) = *st {
            return Ok(ProcessState::from_exit(s));
        }
        match &self.link {
            // Unreaped: /proc/<pid> is certainly our child, zombie or not.
            Link::Direct { .. } => Ok(ProcessState::from_letter(os::proc_state_letter(self.pid)?)),
            Link::Served { pidfd, .. } => {
                let letter = os::proc_state_letter(self.pid);
                // If the pidfd is not readable after the read, the child was
                // alive throughout, so the pid was not reused under us.
                if !os::wait_readable(&[pidfd.as_fd()], Some(Instant::now()))?[0] {
                    return Ok(ProcessState::from_letter(letter?));
                }
                // Dead. Until its outcome is collected it is, to us, a
                // zombie (the forkserver reaps it within its settle window,
                // or when asked; we have not looked).
                if !self.joined.load(std::sync::atomic::Ordering::Relaxed) {
                    return Ok(ProcessState::Zombie);
                }
                drop(st);
                Ok(self
                    .poll_exit()?
                    .map_or(ProcessState::Zombie, ProcessState::from_exit))
            }
        }
    }

    /// SIGTERM (and SIGCONT, so a stopped child sees it) to the group, wait up
    /// to `grace`, then SIGKILL. Always returns.
    pub(crate) fn terminate(&self, grace: Duration) -> io::Result<ExitStatus> {
        if let Some(st) = self.poll_exit()? {
            return Ok(st);
        }
        self.signal_group(Signal::TERM)?;
        self.signal_group(Signal::CONT)?;
        if let Some(st) = self.wait_exit(Instant::now().checked_add(grace))? {
            return Ok(st);
        }
        self.kill()
    }

    /// SIGKILL to the group, then reap. Always returns.
    pub(crate) fn kill(&self) -> io::Result<ExitStatus> {
        if let Some(st) = self.poll_exit()? {
            return Ok(st);
        }
        self.signal_group(Signal::KILL)?;
        // SIGKILL on the leader cannot be ignored; the bound only guards
        // against a process stuck in uninterruptible sleep.
        self.signal(Signal::KILL)?;
        self.wait_exit(Some(Instant::now() + Duration::from_secs(30)))?
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::TimedOut, "process did not die after SIGKILL")
            })
    }
}

/// Every child started by this process and not yet known to be reaped.
static CHILDREN: Mutex<Vec<Arc<ChildRecord>>> = Mutex::new(Vec::new());

/// Adds a started child to the table (and arms the exit handler).
pub(crate) fn register(record: Arc<ChildRecord>) {
    arm_exit_handler();
    ARMED_BY.store(std::process::id(), std::sync::atomic::Ordering::SeqCst);
    let mut children = lock(&CHILDREN);
    sweep(&mut children);
    children.push(record);
}

/// Drops reaped children from the table. Children whose handle was dropped
/// are reaped here if they exited (Python's `_cleanup`); the others are left
/// to their handle, so a start costs no system call per live child.
fn sweep(children: &mut Vec<Arc<ChildRecord>>) {
    children.retain(|c| {
        if c.reaped() {
            return false;
        }
        Arc::strong_count(c) > 1 || matches!(c.poll_exit(), Ok(None))
    });
}

/// A live child of the current process, as listed by [`active_children`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildInfo {
    /// Its pid.
    pub pid: u32,
    /// Its name.
    pub name: String,
    /// Whether it is a daemon child.
    pub daemon: bool,
}

/// The children of the current process that are still running. Like
/// Python's `active_children()`, it reaps any that have finished.
///
/// ```
/// # fn main() {
/// herd::init();
/// assert!(herd::active_children().is_empty());
/// # }
/// ```
pub fn active_children() -> Vec<ChildInfo> {
    let mut children = lock(&CHILDREN);
    sweep(&mut children);
    children.retain(|c| matches!(c.poll_exit(), Ok(None)));
    children
        .iter()
        .map(|c| ChildInfo {
            pid: c.pid,
            name: c.name.clone(),
            daemon: c.daemon,
        })
        .collect()
}

/// The pid that armed the exit handler: a process forked from it without
/// exec (say, by `daemon()`) inherits the handler but not the children.
static ARMED_BY: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The exit handler: terminate daemon children, then wait for the others
/// (Python's order and behaviour). While waiting it discards whatever a
/// child still sends, so a child blocked writing a large result to a handle
/// nobody will join can finish instead of hanging the exit.
/// Arms herd's one exit handler (once per program). One handler, so the
/// order is fixed whoever armed it first: non-daemon threads are waited for
/// first (they may still be using children, as in Python, whose threading
/// shutdown runs before multiprocessing's), then children are handled.
pub(crate) fn arm_exit_handler() {
    static AT_EXIT: Once = Once::new();
    AT_EXIT.call_once(|| {
        // Without the handler, daemon children would still die with us
        // (their watchdog), only less politely, and threads would end with
        // the process as plain Rust threads do; nothing to do on failure.
        let _ = os::at_exit(on_exit);
    });
}

extern "C" fn on_exit() {
    crate::thread::wait_non_daemon_at_exit();
    if ARMED_BY.load(std::sync::atomic::Ordering::SeqCst) != std::process::id() {
        return;
    }
    let children: Vec<Arc<ChildRecord>> = std::mem::take(&mut *lock(&CHILDREN));
    for c in children.iter().filter(|c| c.daemon) {
        let _ = c.terminate(Duration::from_secs(1));
    }
    for c in children.iter().filter(|c| !c.daemon) {
        let _ = c.wait_exit_draining();
    }
}
