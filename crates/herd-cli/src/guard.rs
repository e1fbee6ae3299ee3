//! The guardian: a small process forked when a run starts, which kills
//! every running job's process group if herd dies — even by SIGKILL, when
//! herd can do nothing itself.
//!
//! herd tells it, through a pipe, each job's process group when the job
//! starts and when it is reaped (4-byte records: `+pgid`, `-pgid`; a pipe
//! write of at most `PIPE_BUF` bytes is atomic, so records from several
//! threads never mix). When herd exits, however it exits, the kernel closes
//! the pipe's write end (it is close-on-exec, so no job holds it); the
//! guardian reads end of file, sends SIGKILL to every group still listed,
//! and exits. After a normal run the list is empty.
//!
//! Why not `PR_SET_PDEATHSIG` in each job: setting it needs code between
//! fork and exec, which makes std `fork` instead of using `posix_spawn`'s
//! `vfork`-style clone (about 50 µs more of herd's CPU per job, and the
//! parent waits while the copied child faults its way to `exec`), and it
//! reaches only the job's first process, not a shell job's children. The
//! guardian costs one fork per run and one small write per job start and
//! end, and kills whole groups.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// herd's end of the guardian's pipe.
#[derive(Debug)]
pub(crate) struct Guardian {
    pipe: Option<OwnedFd>,
}

impl Guardian {
    /// Forks the guardian. Call it while the process has one thread
    /// (before any thread starts): the child then runs with a consistent
    /// heap, and it allocates nothing anyway. `capacity` is the most
    /// groups alive at once (the number of jobs at once).
    pub(crate) fn start(capacity: usize) -> io::Result<Self> {
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        // Allocated before the fork: the child never grows it.
        let mut groups: Vec<i32> = Vec::with_capacity(capacity + 16);
        // SAFETY: the process is single-threaded here (the caller's
        // contract), so the child inherits no lock held by another thread;
        // the child calls only async-signal-safe functions and `_exit`s,
        // never returning into the parent's code.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            drop(write);
            guard(read, &mut groups);
        }
        drop(read);
        Ok(Self { pipe: Some(write) })
    }

    /// A job's process group to kill if herd dies.
    pub(crate) fn watch(&self, pgid: u32) {
        self.send(pgid as i32);
    }

    /// The job was reaped: its group is no longer the guardian's to kill.
    pub(crate) fn release(&self, pgid: u32) {
        self.send(-(pgid as i32));
    }

    fn send(&self, record: i32) {
        if let Some(pipe) = &self.pipe {
            // A guardian that died cannot be helped; the run goes on.
            let _ = rustix::io::write(pipe, &record.to_ne_bytes());
        }
    }
}

/// The guardian's life: read records until end of file, then kill what
/// is left, and exit.
fn guard(read: OwnedFd, groups: &mut Vec<i32>) -> ! {
    // SAFETY: plain syscalls on values owned here; `_exit` never returns.
    unsafe {
        // Only the end of the pipe stops the guardian: not the terminal's
        // Ctrl-C (herd forwards that itself), not a hang-up.
        for sig in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGPIPE,
            libc::SIGQUIT,
        ] {
            libc::signal(sig, libc::SIG_IGN);
        }
        libc::prctl(libc::PR_SET_NAME, c"herd-guard".as_ptr());
        // Hold no stream of herd's open (a pipe reader must see herd's
        // stdout close when herd exits), nor any other inherited fd.
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
        }
        let fd = libc::fcntl(read.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3);
        let keep = if fd >= 0 { fd } else { read.as_raw_fd() };
        for other in 3..1024 {
            if other != keep {
                libc::close(other);
            }
        }
        let mut buf = [0u8; 4096];
        let mut carry = [0u8; 4];
        let mut have = 0usize;
        loop {
            let n = libc::read(keep, buf.as_mut_ptr().cast(), buf.len());
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            if n <= 0 {
                break;
            }
            for &b in &buf[..n as usize] {
                carry[have] = b;
                have += 1;
                if have == 4 {
                    have = 0;
                    let rec = i32::from_ne_bytes(carry);
                    if rec > 0 {
                        if groups.len() < groups.capacity() {
                            groups.push(rec);
                        }
                    } else if let Some(i) = groups.iter().position(|g| *g == -rec) {
                        groups.swap_remove(i);
                    }
                }
            }
        }
        for &g in groups.iter() {
            libc::kill(-g, libc::SIGKILL);
        }
        let _ = read.as_fd();
        libc::_exit(0)
    }
}
