//! The `Spawn` start method: re-execute this program (`/proc/self/exe`) with
//! the bootstrap socket and a pidfd of the parent inherited, named in one
//! environment variable that `herd::init()` reads.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::OnceLock;

use super::builder::Stdio;
use super::protocol;
use crate::os;

/// The environment variable that tells `herd::init()` it runs in a child.
pub(crate) const BOOTSTRAP_ENV: &str = "HERD_BOOTSTRAP";

/// What the re-executed program becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Child,
    ForkServer,
}

impl Role {
    fn tag(self) -> &'static str {
        match self {
            Self::Child => "child",
            Self::ForkServer => "forkserver",
        }
    }
}

/// A pidfd for this very process, opened once and inherited by children so
/// they can watch for our death without trusting a pid.
pub(crate) fn self_pidfd() -> io::Result<&'static OwnedFd> {
    static FD: OnceLock<OwnedFd> = OnceLock::new();
    if let Some(fd) = FD.get() {
        return Ok(fd);
    }
    let fd = os::pidfd_self()?;
    Ok(FD.get_or_init(|| fd))
}

/// A started child before the bootstrap: its pid, pidfd and our socket end.
#[derive(Debug)]
pub(crate) struct Started {
    pub(crate) pid: u32,
    pub(crate) pidfd: OwnedFd,
    pub(crate) sock: UnixStream,
}

/// Re-executes `exe` as a herd child (or forkserver) in its own process
/// group. `first` is written to the parent's end of the socket before the
/// child starts (as much as the socket buffer takes), so the child finds its
/// request waiting (with `fds`, the shared objects among the arguments,
/// attached); returns how many bytes of it were written.
pub(crate) fn spawn(
    exe: &Path,
    role: Role,
    stdio: &[Stdio; 3],
    first: &[u8],
    fds: &[OwnedFd],
) -> io::Result<(Started, usize)> {
    let parent_pidfd = self_pidfd()?;
    let (ours, theirs) = os::stream_pair()?;
    let mut ours = UnixStream::from(ours);
    ours.set_nonblocking(true)?;
    let written = protocol::write_some(&mut ours, first, fds)?;
    // From the main thread, the child may rely on PR_SET_PDEATHSIG, which
    // fires when the *thread* that started it exits; from another thread it
    // must watch our pidfd instead.
    let pdeathsig = u8::from(os::on_main_thread());
    let value = format!(
        "{}:{}:{}:{pdeathsig}",
        role.tag(),
        theirs.as_raw_fd(),
        parent_pidfd.as_raw_fd()
    );
    let mut streams = [os::StreamFd::Inherit; 3];
    for (i, s) in stdio.iter().enumerate() {
        streams[i] = s.stream_fd(i as i32)?;
    }
    let argv0 = std::env::args_os()
        .next()
        .unwrap_or_else(|| exe.as_os_str().to_owned());
    let pid = os::spawn_program(
        exe,
        &argv0,
        (BOOTSTRAP_ENV, &value),
        streams,
        &[theirs.as_fd(), parent_pidfd.as_fd()],
    )?;
    drop(theirs);
    // Our own unreaped child: its pid cannot be reused before we reap it.
    let pidfd = match os::pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) => {
            // Out of fds, say: do not leave an untracked child behind.
            os::kill_and_reap_raw(pid);
            return Err(e);
        }
    };
    Ok((
        Started {
            pid,
            pidfd,
            sock: ours,
        },
        written,
    ))
}

/// Parses the bootstrap variable: the role, the two inherited fds, and
/// whether the parent-death signal may be used.
pub(crate) fn parse_env(value: &str) -> Option<(Role, i32, i32, bool)> {
    let mut parts = value.split(':');
    let role = match parts.next()? {
        "child" => Role::Child,
        "forkserver" => Role::ForkServer,
        _ => return None,
    };
    let sock = parts.next()?.parse().ok()?;
    let parent = parts.next()?.parse().ok()?;
    let pdeathsig = parts.next()? == "1";
    if parts.next().is_some() {
        return None;
    }
    Some((role, sock, parent, pdeathsig))
}
