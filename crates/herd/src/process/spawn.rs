//! The `Spawn` start method: re-execute this program (`/proc/self/exe`) with
//! the bootstrap socket and a pidfd of the parent inherited, named in one
//! environment variable that `herd::init()` reads.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use super::builder::Stdio;
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
    pub(crate) sock: OwnedFd,
}

/// Re-executes `exe` as a herd child (or forkserver) in its own process group.
pub(crate) fn spawn(exe: &Path, role: Role, stdio: [Stdio; 3]) -> io::Result<Started> {
    let parent_pidfd = self_pidfd()?;
    let (ours, theirs) = os::stream_pair()?;
    let child_sock = theirs.as_raw_fd();
    let parent_fd = parent_pidfd.as_raw_fd();
    let mut cmd = Command::new(exe);
    if let Some(arg0) = std::env::args_os().next() {
        cmd.arg0(arg0);
    }
    cmd.env(
        BOOTSTRAP_ENV,
        format!("{}:{child_sock}:{parent_fd}", role.tag()),
    );
    cmd.process_group(0);
    let [stdin, stdout, stderr] = stdio;
    cmd.stdin(stdin.into_std()?);
    cmd.stdout(stdout.into_std()?);
    cmd.stderr(stderr.into_std()?);
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe raw fcntl calls on fds that are open in the child.
    unsafe {
        cmd.pre_exec(move || {
            os::clear_cloexec_raw(child_sock)?;
            os::clear_cloexec_raw(parent_fd)?;
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(theirs);
    // Our own unreaped child: its pid cannot be reused before we reap it.
    let pidfd = os::pidfd_open(child.id())?;
    Ok(Started {
        pid: child.id(),
        pidfd,
        sock: ours,
    })
}

/// Parses the bootstrap variable: the role and the two inherited fds.
pub(crate) fn parse_env(value: &str) -> Option<(Role, i32, i32)> {
    let mut parts = value.split(':');
    let role = match parts.next()? {
        "child" => Role::Child,
        "forkserver" => Role::ForkServer,
        _ => return None,
    };
    let sock = parts.next()?.parse().ok()?;
    let parent = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some((role, sock, parent))
}
