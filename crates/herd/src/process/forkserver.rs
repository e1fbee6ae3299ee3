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
use std::sync::{Arc, Mutex, MutexGuard};

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
    SignalFailed {
        errno: i32,
    },
}

/// A connection to this process's forkserver.
#[derive(Debug)]
pub(crate) struct ForkServer {
    conn: Mutex<OwnedFd>,
    pid: u32,
    _pidfd: OwnedFd,
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

/// Starts a child through the forkserver (starting the server if needed).
/// `first` is written to our end of the socket before the fork, as far as
/// the socket buffer takes it; returns the child and the bytes written.
pub(crate) fn spawn_child(stdio: &[Stdio; 3], first: &[u8]) -> io::Result<(ServedChild, usize)> {
    let fds = [
        stdio[0].as_fd_for(0)?,
        stdio[1].as_fd_for(1)?,
        stdio[2].as_fd_for(2)?,
    ];
    let (ours, theirs) = os::stream_pair()?;
    let mut ours = UnixStream::from(ours);
    ours.set_nonblocking(true)?;
    let written = super::protocol::write_some(&mut ours, first)?;
    for attempt in 0..2 {
        let server = current_server()?;
        match server.request_spawn(&theirs, &fds) {
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
            Err(e) if attempt == 0 && is_dead_server(&e) => {
                // The forkserver died (killed from outside?): start a new one.
                let mut slot = lock(&SERVER);
                if slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, &server)) {
                    *slot = None;
                }
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("the forkserver keeps dying"))
}

fn is_dead_server(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof
    )
}

fn current_server() -> io::Result<Arc<ForkServer>> {
    let mut slot = lock(&SERVER);
    if let Some(s) = slot.as_ref() {
        return Ok(Arc::clone(s));
    }
    let (started, _) = spawn::spawn(
        &os::self_exe(),
        Role::ForkServer,
        &[Stdio::Null, Stdio::Inherit, Stdio::Inherit],
        &[],
    )?;
    // The server only speaks SEQPACKET; the stream pair from `spawn` carries
    // one message: the server's end of a fresh SEQPACKET pair.
    let (ours, theirs) = os::seqpacket_pair()?;
    os::send_with_fds(started.sock.as_fd(), b"S", &[theirs.as_fd()])?;
    let server = Arc::new(ForkServer {
        conn: Mutex::new(ours),
        pid: started.pid,
        _pidfd: started.pidfd,
    });
    *slot = Some(Arc::clone(&server));
    Ok(server)
}

impl ForkServer {
    fn call(
        &self,
        req: &ServerRequest,
        fds: &[BorrowedFd<'_>],
    ) -> io::Result<(ServerReply, Vec<OwnedFd>)> {
        let body = crate::task::encode(req).map_err(io::Error::other)?;
        let conn = lock(&self.conn);
        os::send_with_fds(conn.as_fd(), &body, fds)?;
        let mut buf = [0u8; 256];
        let (n, got) = os::recv_with_fds(conn.as_fd(), &mut buf)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let reply = crate::task::decode(&buf[..n])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok((reply, got))
    }

    fn request_spawn(
        &self,
        sock: &OwnedFd,
        stdio: &[BorrowedFd<'_>; 3],
    ) -> io::Result<(u32, OwnedFd, OwnedFd)> {
        let fds = [sock.as_fd(), stdio[0], stdio[1], stdio[2]];
        let (reply, got) = self.call(&ServerRequest::Spawn, &fds)?;
        match reply {
            ServerReply::Spawned { pid } => {
                let mut got = got.into_iter();
                match (got.next(), got.next()) {
                    (Some(pidfd), Some(status)) => Ok((pid, pidfd, status)),
                    _ => Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "forkserver reply lacks fds",
                    )),
                }
            }
            ServerReply::SpawnFailed { errno } => Err(io::Error::from_raw_os_error(errno)),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected forkserver reply {other:?}"),
            )),
        }
    }

    /// Signals the group of child `pid`, if the server has not reaped it.
    pub(crate) fn signal_group(&self, pid: u32, sig: Signal) -> io::Result<()> {
        let (reply, _) = self.call(
            &ServerRequest::SignalGroup {
                pid,
                signal: sig.as_raw(),
            },
            &[],
        )?;
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

/// The pid of this process's forkserver, if one is running (for diagnostics:
/// `ps`, or a test that kills it to check that herd starts a new one).
pub fn forkserver_pid() -> Option<u32> {
    lock(&SERVER).as_ref().map(|s| s.pid)
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

struct Served {
    pid: u32,
    pidfd: OwnedFd,
    status: OwnedFd,
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
    // Work every child would repeat, done once before any fork.
    crate::task::install_panic_hook();
    let _ = crate::task::build_id();
    let me = std::process::id();
    let mut children: Vec<Served> = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let mut fds: Vec<BorrowedFd<'_>> = vec![conn.as_fd(), parent_pidfd.as_fd()];
        fds.extend(children.iter().map(|c| c.pidfd.as_fd()));
        let ready = match os::wait_readable(&fds, None) {
            Ok(r) => r,
            Err(_) => shutdown(&children),
        };
        if ready[1] {
            shutdown(&children);
        }
        // Reap the children that exited and report their status.
        let exited: Vec<usize> = ready[2..]
            .iter()
            .enumerate()
            .filter(|(_, r)| **r)
            .map(|(i, _)| i)
            .collect();
        for i in exited.into_iter().rev() {
            if let Ok(Some(st)) = os::reap_nohang(children[i].pidfd.as_fd()) {
                let c = children.swap_remove(i);
                let _ = rustix::io::write(&c.status, &encode_status(st));
            }
        }
        if !ready[0] {
            continue;
        }
        let (n, got) = match os::recv_with_fds(conn.as_fd(), &mut buf) {
            Ok((0, _)) | Err(_) => shutdown(&children),
            Ok(x) => x,
        };
        let reply = match crate::task::decode::<ServerRequest>(&buf[..n]) {
            Ok(ServerRequest::Spawn) if got.len() == 4 => {
                match fork_child(me, &conn, &parent_pidfd, &children, got) {
                    Ok((served, pidfd, status_r)) => {
                        let reply = ServerReply::Spawned { pid: served.pid };
                        let body = crate::task::encode(&reply).unwrap_or_default();
                        let _ = os::send_with_fds(
                            conn.as_fd(),
                            &body,
                            &[pidfd.as_fd(), status_r.as_fd()],
                        );
                        children.push(served);
                        continue;
                    }
                    Err(e) => ServerReply::SpawnFailed {
                        errno: e.raw_os_error().unwrap_or(libc::EIO),
                    },
                }
            }
            Ok(ServerRequest::Spawn) => ServerReply::SpawnFailed {
                errno: libc::EINVAL,
            },
            Ok(ServerRequest::SignalGroup { pid, signal }) => {
                if children.iter().any(|c| c.pid == pid) {
                    match os::signal_group(pid, Signal::from_raw(signal)) {
                        Ok(delivered) => ServerReply::Signalled { delivered },
                        Err(e) => ServerReply::SignalFailed {
                            errno: e.raw_os_error().unwrap_or(libc::EIO),
                        },
                    }
                } else {
                    ServerReply::Signalled { delivered: false }
                }
            }
            Err(_) => ServerReply::SignalFailed {
                errno: libc::EINVAL,
            },
        };
        let body = crate::task::encode(&reply).unwrap_or_default();
        if os::send_with_fds(conn.as_fd(), &body, &[]).is_err() {
            shutdown(&children);
        }
    }
}

/// Kills every child's group and exits.
fn shutdown(children: &[Served]) -> ! {
    for c in children {
        let _ = os::signal_group(c.pid, Signal::KILL);
    }
    os::exit_now(0)
}

fn fork_child(
    me: u32,
    conn: &OwnedFd,
    parent_pidfd: &OwnedFd,
    children: &[Served],
    got: Vec<OwnedFd>,
) -> io::Result<(Served, OwnedFd, OwnedFd)> {
    let (status_r, status_w) = os::pipe()?;
    // SAFETY: the forkserver is single-threaded, so the child may run
    // arbitrary code after fork.
    match unsafe { os::fork() }? {
        None => {
            // In the child: drop the server's state, wire stdio, run.
            let mut got = got.into_iter();
            let (Some(sock), Some(i), Some(o), Some(e)) =
                (got.next(), got.next(), got.next(), got.next())
            else {
                os::exit_now(3)
            };
            let ok = os::new_process_group().is_ok()
                && os::kill_on_parent_death().is_ok()
                && os::getppid() == me
                && os::dup_onto(i.as_fd(), 0).is_ok()
                && os::dup_onto(o.as_fd(), 1).is_ok()
                && os::dup_onto(e.as_fd(), 2).is_ok();
            if !ok {
                os::exit_now(3);
            }
            let _ = (conn, children, parent_pidfd, status_r, status_w);
            os::close_fds_except(3, &[sock.as_raw_fd()]);
            // Everything else was closed above; forget the owners so their
            // destructors do not close numbers now reused.
            std::mem::forget((i, o, e));
            super::child::child_main(sock, None)
        }
        Some(pid) => {
            drop(got);
            // Our own unreaped child: the pid is stable until we reap it.
            let pidfd = os::pidfd_open(pid)?;
            let for_parent = os::dup(pidfd.as_fd())?;
            Ok((
                Served {
                    pid,
                    pidfd,
                    status: status_w,
                },
                for_parent,
                status_r,
            ))
        }
    }
}
