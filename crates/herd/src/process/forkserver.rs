//! The `ForkServer` start method.
//!
//! On first use the parent re-executes itself as a forkserver: a small,
//! single-threaded loop that forks a child per request. Forking from it is
//! cheap (its memory is small) and sound (it has one thread), which forking a
//! large multi-threaded parent is not. The forkserver:
//!
//! * receives, per request, the child's bootstrap socket and its three stdio
//!   fds (`SCM_RIGHTS`), forks, and answers with the child's pid, a pidfd and
//!   the read end of a status pipe;
//! * watches every child's pidfd, reaps it, and writes its exit status to the
//!   status pipe, so the parent learns statuses it cannot `waitid` itself;
//! * signals a child's process group on request, only while it has not reaped
//!   that child (so a reused pid is never signalled);
//! * kills every child and exits when the parent dies or closes the socket.
//!
//! Its children also get `PR_SET_PDEATHSIG` (sound here: the forkserver has a
//! single thread) and the inherited pidfd of the real parent to watch.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::builder::Stdio;
use super::spawn::{self, Role};
use super::status::{ExitStatus, Signal};
use crate::os;

#[derive(Debug, Serialize, Deserialize)]
enum ServerRequest {
    /// Fork a child; fds: bootstrap socket, stdin, stdout, stderr.
    Spawn,
    /// Signal the group of an unreaped child.
    SignalGroup { pid: u32, signal: i32 },
    /// Reap the child now if it has exited, and report its status on its
    /// pipe (the parent wants it and would wait out the settle window).
    Reap { pid: u32 },
}

#[derive(Debug, Serialize, Deserialize)]
enum ServerReply {
    /// Forked; fds: pidfd, status pipe.
    Spawned {
        pid: u32,
    },
    SpawnFailed {
        errno: i32,
    },
    Signalled {
        delivered: bool,
    },
    Reaped,
    SignalFailed {
        errno: i32,
    },
}

/// How long a request to the forkserver may take before the server is
/// declared dead (it answers in microseconds when healthy).
const SERVER_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to this process's forkserver.
#[derive(Debug)]
pub(crate) struct ForkServer {
    conn: Mutex<OwnedFd>,
    pid: u32,
    pidfd: OwnedFd,
    /// Set once a request failed in transport: the server is killed and
    /// replaced, never trusted again.
    dead: AtomicBool,
}

/// The forkserver of this process, started on first use and restarted if it
/// died.
static SERVER: Mutex<Option<Arc<ForkServer>>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A child forked by the forkserver.
#[derive(Debug)]
pub(crate) struct ServedChild {
    pub(crate) pid: u32,
    pub(crate) pidfd: OwnedFd,
    pub(crate) status: OwnedFd,
    pub(crate) sock: UnixStream,
    pub(crate) server: Arc<ForkServer>,
}

/// Why a request to the forkserver failed.
#[derive(Debug)]
enum CallError {
    /// The conversation failed (the server died, hung or answered
    /// nonsense); the server has been killed.
    Transport(io::Error),
    /// The server answered: it could not do it.
    Refused(io::Error),
}

impl From<CallError> for io::Error {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Transport(e) | CallError::Refused(e) => e,
        }
    }
}

/// Starts a child through the forkserver (starting the server if needed).
/// `first` (with `passed` attached) is written to our end of the child's
/// socket before the fork, as far as the socket buffer takes it; returns the
/// child and the bytes written.
pub(crate) fn spawn_child(
    stdio: &[Stdio; 3],
    first: &[u8],
    passed: &[OwnedFd],
    deadline: Option<Instant>,
) -> io::Result<(ServedChild, usize)> {
    let fds = [
        stdio[0].as_fd_for(0)?,
        stdio[1].as_fd_for(1)?,
        stdio[2].as_fd_for(2)?,
    ];
    let mut last = None;
    for _ in 0..2 {
        // A fresh socket per attempt: a child of a server that died may have
        // read part of the request already.
        let (ours, theirs) = os::stream_pair()?;
        let mut ours = UnixStream::from(ours);
        ours.set_nonblocking(true)?;
        let written = super::protocol::write_some(&mut ours, first, passed)?;
        let server = current_server()?;
        let sent = server.request_spawn(&theirs, &fds);
        // The server (or the child it hands it to) owns the other end now.
        drop(theirs);
        match sent.and_then(|()| read_hello(&ours, &server, deadline)) {
            Ok((pid, pidfd, status)) => {
                let child = ServedChild {
                    pid,
                    pidfd,
                    status,
                    sock: ours,
                    server,
                };
                return Ok((child, written));
            }
            // The server died or hung (and is now killed): start a new one.
            Err(CallError::Transport(e)) => last = Some(e),
            Err(CallError::Refused(e)) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("the forkserver keeps failing")))
}

/// The first 8 bytes on a forkserver child's bootstrap socket, written
/// there by the server before it hands the socket to the child: `HELO` and
/// the child's pid, with a pidfd of it and the read end of its status pipe
/// attached; or, when the server could not start the child, `FAIL` and an
/// errno.
const HELLO: &[u8; 4] = b"HELO";
const FAIL: &[u8; 4] = b"FAIL";

fn hello_bytes(tag: &[u8; 4], value: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(tag);
    b[4..].copy_from_slice(&value.to_le_bytes());
    b
}

/// Reads the child's hello (exactly 8 bytes: the frames after it stay in
/// the socket for the bootstrap).
fn read_hello(
    sock: &UnixStream,
    server: &ForkServer,
    deadline: Option<Instant>,
) -> Result<(u32, OwnedFd, OwnedFd), CallError> {
    let mut buf = [0u8; 8];
    let mut got = 0;
    let mut fds = Vec::new();
    while got < 8 {
        if !os::wait_readable(&[sock.as_fd()], deadline).map_err(CallError::Refused)?[0] {
            // Neither the server nor a child answered in time: the server
            // is hung or dead; never trust it again.
            server.kill();
            return Err(CallError::Refused(io::Error::new(
                io::ErrorKind::TimedOut,
                "the forkserver did not answer in time",
            )));
        }
        match os::recv_with_fds(sock.as_fd(), &mut buf[got..]) {
            // Nothing at all: the server never wrote the hello. Either it
            // died with our socket in its queue (a spare it was forking held
            // its end open a moment longer; the request we wrote unread
            // reads as a reset) — a new server may do better: retry — or,
            // alive, it could not take the request's descriptors (its table
            // full) and had nowhere to answer: refuse this start, and leave
            // the server and its children be.
            Ok((0, _)) if got == 0 => return Err(unanswered(server)),
            Err(e) if got == 0 && e.kind() == io::ErrorKind::ConnectionReset => {
                return Err(unanswered(server));
            }
            Ok((0, _)) => {
                return Err(CallError::Refused(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the forkserver's child ended before it started",
                )));
            }
            Ok((n, more)) => {
                got += n;
                fds.extend(more);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(CallError::Refused(e)),
        }
    }
    let value = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if &buf[..4] == FAIL {
        return Err(CallError::Refused(io::Error::from_raw_os_error(
            value as i32,
        )));
    }
    let mut fds = fds.into_iter();
    match (&buf[..4] == HELLO, fds.next(), fds.next()) {
        (true, Some(pidfd), Some(status)) => Ok((value, pidfd, status)),
        _ => Err(CallError::Refused(io::Error::new(
            io::ErrorKind::InvalidData,
            "malformed hello from the forkserver's child",
        ))),
    }
}

/// A start's socket closed without a byte of the hello: a transport
/// failure (retried on a new server) if the server is dead — its fds close
/// just before its pidfd says so, hence the short wait — else a refusal.
fn unanswered(server: &ForkServer) -> CallError {
    let dead = os::wait_readable(
        &[server.pidfd.as_fd()],
        Some(Instant::now() + Duration::from_millis(100)),
    )
    .is_ok_and(|r| r[0]);
    if dead {
        server.kill();
        CallError::Transport(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the forkserver went away before it answered",
        ))
    } else {
        CallError::Refused(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the forkserver could not take the request (out of descriptors?)",
        ))
    }
}

fn current_server() -> io::Result<Arc<ForkServer>> {
    let mut slot = lock(&SERVER);
    if let Some(s) = slot.as_ref().filter(|s| !s.dead.load(Ordering::SeqCst)) {
        return Ok(Arc::clone(s));
    }
    *slot = None;
    let (started, _) = spawn::spawn(
        &os::self_exe(),
        Role::ForkServer,
        &[Stdio::Null, Stdio::Inherit, Stdio::Inherit],
        &[],
        &[],
    )?;
    let server = ForkServer {
        conn: Mutex::new(started.sock.into()),
        pid: started.pid,
        pidfd: started.pidfd,
        dead: AtomicBool::new(false),
    };
    // The server speaks SEQPACKET; the stream from `spawn` carries one
    // message: the server's end of a fresh SEQPACKET pair. On failure,
    // dropping `server` kills and reaps the process just started.
    let (ours, theirs) = os::seqpacket_pair()?;
    os::send_with_fds(lock(&server.conn).as_fd(), b"S", &[theirs.as_fd()])?;
    *lock(&server.conn) = ours;
    let server = Arc::new(server);
    *slot = Some(Arc::clone(&server));
    Ok(server)
}

impl ForkServer {
    /// One request and its reply, before `deadline`. Any transport failure
    /// kills the server: a half-finished conversation cannot be resumed.
    fn call(
        &self,
        req: &ServerRequest,
        fds: &[BorrowedFd<'_>],
        deadline: Option<Instant>,
    ) -> Result<(ServerReply, Vec<OwnedFd>), CallError> {
        let body =
            crate::task::encode(req).map_err(|e| CallError::Transport(io::Error::other(e)))?;
        let conn = lock(&self.conn);
        if self.dead.load(Ordering::SeqCst) {
            return Err(CallError::Transport(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the forkserver died",
            )));
        }
        let result = (|| {
            os::send_with_fds(conn.as_fd(), &body, fds)?;
            if !os::wait_readable(&[conn.as_fd()], deadline)?[0] {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the forkserver did not answer in time",
                ));
            }
            let mut buf = [0u8; 256];
            let (n, got) = os::recv_with_fds(conn.as_fd(), &mut buf)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the forkserver died",
                ));
            }
            let reply = crate::task::decode(&buf[..n])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            Ok((reply, got))
        })();
        result.map_err(|e| {
            self.kill();
            CallError::Transport(e)
        })
    }

    /// Marks the server dead and kills it (it is reaped on drop).
    fn kill(&self) {
        self.dead.store(true, Ordering::SeqCst);
        let _ = os::pidfd_signal(self.pidfd.as_fd(), Signal::KILL);
    }

    /// Asks for a child: one message, no reply on this connection. The
    /// server answers on the child's bootstrap socket (`read_hello`), so
    /// concurrent starts never wait for each other's answers.
    fn request_spawn(&self, sock: &OwnedFd, stdio: &[BorrowedFd<'_>; 3]) -> Result<(), CallError> {
        let fds = [sock.as_fd(), stdio[0], stdio[1], stdio[2]];
        let body = crate::task::encode(&ServerRequest::Spawn)
            .map_err(|e| CallError::Transport(io::Error::other(e)))?;
        let conn = lock(&self.conn);
        if self.dead.load(Ordering::SeqCst) {
            return Err(CallError::Transport(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the forkserver died",
            )));
        }
        os::send_with_fds(conn.as_fd(), &body, &fds).map_err(|e| {
            self.kill();
            CallError::Transport(e)
        })
    }

    /// Asks the server to reap child `pid` now if it has exited (its status
    /// then comes on the child's pipe).
    pub(crate) fn reap(&self, pid: u32) -> io::Result<()> {
        let (reply, _) = self.call(
            &ServerRequest::Reap { pid },
            &[],
            Instant::now().checked_add(SERVER_TIMEOUT),
        )?;
        match reply {
            ServerReply::Reaped => Ok(()),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected forkserver reply {other:?}"),
            )),
        }
    }

    /// Signals the group of child `pid`, if the server has not reaped it.
    pub(crate) fn signal_group(&self, pid: u32, sig: Signal) -> io::Result<()> {
        let req = ServerRequest::SignalGroup {
            pid,
            signal: sig.as_raw(),
        };
        let (reply, _) = self.call(&req, &[], Instant::now().checked_add(SERVER_TIMEOUT))?;
        match reply {
            ServerReply::Signalled { .. } => Ok(()),
            ServerReply::SignalFailed { errno } => Err(io::Error::from_raw_os_error(errno)),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected forkserver reply {other:?}"),
            )),
        }
    }
}

impl Drop for ForkServer {
    /// The server is our own child: make sure it is gone, then reap it, so a
    /// replaced server never lingers as a zombie.
    fn drop(&mut self) {
        let _ = os::pidfd_signal(self.pidfd.as_fd(), Signal::KILL);
        if os::wait_readable(
            &[self.pidfd.as_fd()],
            Some(Instant::now() + Duration::from_secs(5)),
        )
        .is_ok()
        {
            let _ = os::reap_nohang(self.pidfd.as_fd());
        }
    }
}

/// The pid of this process's forkserver, if one is running (for diagnostics:
/// `ps`, or a test that kills it to check that herd starts a new one).
pub fn forkserver_pid() -> Option<u32> {
    lock(&SERVER)
        .as_ref()
        .filter(|s| !s.dead.load(Ordering::SeqCst))
        .map(|s| s.pid)
}

/// Status pipe encoding: kind (0 exited, 1 signalled) and value.
fn encode_status(st: ExitStatus) -> [u8; 8] {
    let (kind, val) = match st {
        ExitStatus::Exited(c) => (0i32, c),
        ExitStatus::Signaled(s) => (1i32, s.as_raw()),
    };
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&kind.to_le_bytes());
    b[4..].copy_from_slice(&val.to_le_bytes());
    b
}

pub(crate) fn decode_status(b: [u8; 8]) -> ExitStatus {
    let kind = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let val = i32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    if kind == 1 {
        ExitStatus::Signaled(Signal::from_raw(val))
    } else {
        ExitStatus::Exited(val)
    }
}

/// A child of the forkserver that runs (or will run) a task.
struct Served {
    pid: u32,
    pidfd: OwnedFd,
    status: OwnedFd,
    /// The server's end of the child's control socket, kept until the
    /// child is reaped: closing a unix socket while another is in flight
    /// (the hand-off's, on its way to the child) queues the kernel's
    /// unix-socket garbage collector on a worker thread, which took a CPU
    /// from the child just as it woke.
    ctl: OwnedFd,
}

/// Why `start_child` failed: before or after the hello went to the parent.
enum Unstarted {
    Before(io::Error),
    After,
}

/// A child forked ahead of the next request, waiting on `ctl` for its
/// bootstrap socket and stdio. Forking ahead takes the fork (and the
/// child's copy-on-write faults) off the critical path of `start`.
struct Spare {
    served: Served,
    /// The read end of its status pipe, for the parent.
    status_r: OwnedFd,
}

/// The forkserver's main loop. Never returns.
pub(crate) fn serve(boot: OwnedFd, parent_pidfd: OwnedFd) -> ! {
    // First message on the bootstrap stream: the SEQPACKET end to serve on.
    let mut one = [0u8; 1];
    let conn = match os::recv_with_fds(boot.as_fd(), &mut one) {
        Ok((1, mut fds)) if fds.len() == 1 => fds.remove(0),
        _ => os::exit_now(3),
    };
    drop(boot);
    // Forking is sound only with one thread. There is more than one if
    // something started threads before `herd::init()` (an async runtime's
    // `#[main]` attribute does): refuse rather than fork unsoundly.
    let threads = std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(1);
    if threads != 1 {
        eprintln!(
            "herd: the forkserver has {threads} threads: herd::init() must run before any thread \
             starts (call it first in a plain `fn main`, before starting an async runtime)"
        );
        os::exit_now(4);
    }
    // Work every child would repeat, done once before any fork.
    crate::task::install_panic_hook();
    let _ = crate::task::build_id();
    let mut server = Server {
        me: std::process::id(),
        conn,
        parent_pidfd,
        children: Vec::new(),
        spares: Vec::new(),
        fresh: None,
        refill_at: None,
        retry_at: None,
    };
    server.run()
}

struct Server {
    me: u32,
    conn: OwnedFd,
    parent_pidfd: OwnedFd,
    children: Vec<Served>,
    /// Oldest first; at most `SPARES`.
    spares: Vec<Spare>,
    /// The child last handed off, and when.
    fresh: Option<(u32, Instant)>,
    /// When to replace the spares taken since the server last had them
    /// all: `SETTLE` after the first of them was taken.
    refill_at: Option<Instant>,
    /// After a failed fork of a spare: not before then.
    retry_at: Option<Instant>,
}

/// How long the server waits before it forks a spare again after a fork
/// failed (out of processes, memory or descriptors).
const FORK_RETRY: Duration = Duration::from_millis(50);

/// How long the server leaves the CPUs to a child it has just started
/// before it forks the next spare (unless that child exits sooner).
const SETTLE: Duration = Duration::from_millis(2);

/// Spares kept ready: two, so that a start right after another still finds
/// one while the server waits to replace the first.
const SPARES: usize = 2;

impl Server {
    fn run(&mut self) -> ! {
        let mut buf = vec![0u8; 4096];
        loop {
            // Short of spares, fork one `SETTLE` after the first was taken
            // (at once when none is left): a fork right after a hand-off
            // took a CPU from that child and from the parent just when both
            // woke (see DESIGN.md, "Where a forkserver start goes").
            let idle = (self.spares.len() < SPARES).then(|| {
                let due = match self.refill_at {
                    Some(at) if !self.spares.is_empty() => at,
                    _ => Instant::now(),
                };
                self.retry_at.map_or(due, |r| r.max(due))
            });
            // The child just handed off is not watched for `SETTLE` either:
            // its exit would wake the server (on another CPU, as likely as
            // not) at the moment the parent waits for that very exit. Its
            // status is reported when the window closes.
            let now = Instant::now();
            let quiet = self.fresh.filter(|&(_, at)| now < at + SETTLE);
            let watched: Vec<usize> = (0..self.children.len())
                .filter(|&i| quiet.is_none_or(|(pid, _)| self.children[i].pid != pid))
                .collect();
            let wake_at = match (idle, quiet) {
                (Some(i), Some((_, at))) => Some(i.min(at + SETTLE)),
                (i, q) => i.or(q.map(|(_, at)| at + SETTLE)),
            };
            let ready = {
                let mut fds: Vec<BorrowedFd<'_>> =
                    vec![self.conn.as_fd(), self.parent_pidfd.as_fd()];
                fds.extend(self.spares.iter().map(|s| s.served.pidfd.as_fd()));
                fds.extend(watched.iter().map(|&i| self.children[i].pidfd.as_fd()));
                match os::wait_readable(&fds, wake_at) {
                    Ok(r) => r,
                    Err(_) => self.shutdown(),
                }
            };
            if !ready.iter().any(|r| *r) {
                if idle.is_none_or(|i| Instant::now() < i) {
                    // Only the quiet window ended: look at every child.
                    continue;
                }
                match self.fork_spare(true) {
                    Ok(spare) => {
                        self.spares.push(spare);
                        self.retry_at = None;
                        if self.spares.len() == SPARES {
                            self.refill_at = None;
                        }
                    }
                    // Out of processes, memory or descriptors: back off
                    // rather than spin (a start still forks on demand).
                    Err(_) => self.retry_at = Some(Instant::now() + FORK_RETRY),
                }
                continue;
            }
            if ready[1] {
                self.shutdown();
            }
            let spare_slots = self.spares.len();
            for i in (0..spare_slots).rev() {
                if ready[2 + i] {
                    // A spare died while idle (killed from outside): reap
                    // it, or keep it with the children until it can be.
                    let spare = self.spares.remove(i);
                    if !matches!(os::reap_nohang(spare.served.pidfd.as_fd()), Ok(Some(_))) {
                        self.children.push(spare.served);
                    }
                }
            }
            // Reap the children that exited and report their status.
            let exited: Vec<usize> = ready[2 + spare_slots..]
                .iter()
                .enumerate()
                .filter(|(_, r)| **r)
                .map(|(k, _)| watched[k])
                .collect();
            for i in exited.into_iter().rev() {
                self.reap(i);
            }
            if ready[0] {
                self.handle_request(&mut buf);
            }
        }
    }

    fn handle_request(&mut self, buf: &mut [u8]) {
        let (n, got) = match os::recv_with_fds(self.conn.as_fd(), buf) {
            Ok((0, _)) | Err(_) => self.shutdown(),
            Ok(x) => x,
        };
        let reply = match crate::task::decode::<ServerRequest>(&buf[..n]) {
            Ok(ServerRequest::Spawn) if got.len() == 4 => {
                // No reply: the child answers the parent itself. A failure
                // is written where the parent waits for that answer.
                let sock = got[0].try_clone();
                // A failure before the hello is written there; after it,
                // the parent learns of the child's death from its pidfd
                // and status (a FAIL would be misread as a frame).
                if let Err(Unstarted::Before(e)) = self.start_child(got)
                    && let Ok(sock) = sock
                {
                    let errno = e.raw_os_error().unwrap_or(os::errno::EIO) as u32;
                    let _ = os::write_once(sock.as_fd(), &hello_bytes(FAIL, errno));
                }
                return;
            }
            Ok(ServerRequest::Spawn) => {
                if let Some(sock) = got.first() {
                    let _ =
                        os::write_once(sock.as_fd(), &hello_bytes(FAIL, os::errno::EINVAL as u32));
                }
                return;
            }
            Ok(ServerRequest::Reap { pid }) => {
                if let Some(i) = self.children.iter().position(|c| c.pid == pid) {
                    self.reap(i);
                }
                ServerReply::Reaped
            }
            Ok(ServerRequest::SignalGroup { pid, signal }) => {
                if self.children.iter().any(|c| c.pid == pid) {
                    match os::signal_group(pid, Signal::from_raw(signal)) {
                        Ok(delivered) => ServerReply::Signalled { delivered },
                        Err(e) => ServerReply::SignalFailed {
                            errno: e.raw_os_error().unwrap_or(os::errno::EIO),
                        },
                    }
                } else {
                    ServerReply::Signalled { delivered: false }
                }
            }
            Err(_) => ServerReply::SignalFailed {
                errno: os::errno::EINVAL,
            },
        };
        let body = crate::task::encode(&reply).unwrap_or_default();
        if os::send_with_fds(self.conn.as_fd(), &body, &[]).is_err() {
            self.shutdown();
        }
    }

    /// Reaps child `i` if it has exited and reports its status on its pipe
    /// (`swap_remove`: indices above `i` move).
    fn reap(&mut self, i: usize) {
        if let Ok(Some(st)) = os::reap_nohang(self.children[i].pidfd.as_fd()) {
            let c = self.children.swap_remove(i);
            let _ = os::write_once(c.status.as_fd(), &encode_status(st));
        }
    }

    /// Hands `got` (socket, stdin, stdout, stderr) to the spare (forking
    /// one if there is none); returns its pid, a pidfd and the status pipe.
    fn start_child(&mut self, got: Vec<OwnedFd>) -> Result<(), Unstarted> {
        let fds: Vec<BorrowedFd<'_>> = got.iter().map(AsFd::as_fd).collect();
        // A spare that died since the last poll refuses `go`: then one
        // forked for this request (no rehearsal on its critical path).
        let spare = loop {
            let (spare, fresh_fork) = if self.spares.is_empty() {
                (self.fork_spare(false).map_err(Unstarted::Before)?, true)
            } else {
                (self.spares.remove(0), false)
            };
            if self.refill_at.is_none() {
                self.refill_at = Some(Instant::now() + SETTLE);
            }
            // Wake the spare first (it takes the server's CPU, which is
            // about to go idle, rather than an idle one).
            match os::send_with_fds(spare.served.ctl.as_fd(), b"go", &fds) {
                Ok(()) => break spare,
                Err(e) => {
                    let _ = os::pidfd_signal(spare.served.pidfd.as_fd(), Signal::KILL);
                    self.children.push(spare.served);
                    if fresh_fork {
                        return Err(Unstarted::Before(e));
                    }
                }
            }
        };
        // Then the hello on the child's socket (the parent learns the pid,
        // a pidfd and the status pipe from the server), then tell the
        // spare the hello is there: it writes nothing on its socket before
        // that, so the hello always comes first.
        let hello = hello_bytes(HELLO, spare.served.pid);
        let sent = os::send_with_fds(
            fds[0],
            &hello,
            &[spare.served.pidfd.as_fd(), spare.status_r.as_fd()],
        )
        .map_err(Unstarted::Before)
        .and_then(|()| {
            os::send_with_fds(spare.served.ctl.as_fd(), b"h", &[]).map_err(|_| Unstarted::After)
        });
        if let Err(e) = sent {
            let _ = os::pidfd_signal(spare.served.pidfd.as_fd(), Signal::KILL);
            self.children.push(spare.served);
            return Err(e);
        }
        drop(spare.status_r);
        self.fresh = Some((spare.served.pid, Instant::now()));
        self.children.push(spare.served);
        Ok(())
    }

    /// Forks a spare child that waits for its task's fds (after a
    /// rehearsal, if `rehearse` and no request is waiting yet).
    fn fork_spare(&self, rehearse: bool) -> io::Result<Spare> {
        let (status_r, status_w) = os::pipe()?;
        // The parent polls the status without blocking.
        os::set_nonblocking(status_r.as_fd())?;
        let (ctl, ctl_child) = os::seqpacket_pair()?;
        // SAFETY: the forkserver is single-threaded, so the child may run
        // arbitrary code after fork.
        match unsafe { os::fork() }? {
            None => {
                // In the child: nothing of the server's state is ours.
                os::close_fds_except(3, &[ctl_child.as_raw_fd(), status_r.as_raw_fd()]);
                std::mem::forget((ctl, status_w));
                spare_main(self.me, ctl_child, status_r, rehearse)
            }
            Some(pid) => {
                drop(ctl_child);
                // Our own unreaped child: the pid is stable until we reap it.
                let pidfd = os::pidfd_open(pid)?;
                Ok(Spare {
                    served: Served {
                        pid,
                        pidfd,
                        status: status_w,
                        ctl,
                    },
                    status_r,
                })
            }
        }
    }

    /// Kills every child's group (and the spares') and exits.
    fn shutdown(&self) -> ! {
        for c in self
            .children
            .iter()
            .chain(self.spares.iter().map(|s| &s.served))
        {
            let _ = os::signal_group(c.pid, Signal::KILL);
        }
        os::exit_now(0)
    }
}

/// A spare child: set up, then wait for the bootstrap socket and stdio.
fn spare_main(server: u32, ctl: OwnedFd, status_r: OwnedFd, rehearse: bool) -> ! {
    let ready = os::new_process_group().is_ok()
        && os::kill_group_on_parent_death().is_ok()
        && os::getppid() == server;
    if !ready {
        os::exit_now(3);
    }
    // While no request is waiting, take every child's page faults now.
    if rehearse && !os::wait_readable(&[ctl.as_fd()], Some(Instant::now())).is_ok_and(|r| r[0]) {
        super::child::rehearse();
    }
    // Exactly the 2 bytes of `go`: the server's `h` that follows is read
    // before the child's first reply.
    let mut buf = [0u8; 2];
    let got = match os::recv_with_fds(ctl.as_fd(), &mut buf) {
        Ok((2, got)) if buf == *b"go" && got.len() == 4 => got,
        // The server went away (or sent nonsense): nothing to run.
        _ => os::exit_now(0),
    };
    let mut got = got.into_iter();
    let (Some(sock), Some(i), Some(o), Some(e)) = (got.next(), got.next(), got.next(), got.next())
    else {
        os::exit_now(3)
    };
    let wired = os::dup_onto(i.as_fd(), 0).is_ok()
        && os::dup_onto(o.as_fd(), 1).is_ok()
        && os::dup_onto(e.as_fd(), 2).is_ok();
    if !wired {
        os::exit_now(3);
    }
    // The server writes the parent our hello (pid, pidfd, status pipe).
    drop((i, o, e, status_r));
    // Never unwind into the server's frames (their fds are closed here).
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        super::child::child_main(sock, None, Some(ctl))
    }));
    os::exit_now(3)
}
