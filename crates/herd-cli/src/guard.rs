//! The guardian: a small process forked when a run starts, which kills
//! every running job's process group if herd dies — even by SIGKILL, when
//! herd can do nothing itself.
//!
//! The table of groups to kill is a small shared mapping (made before the
//! fork, so both processes see it): herd stores a job's process group in
//! the job's slot when it starts and clears it when the job is reaped —
//! a plain atomic store, no system call, no wake-up. The guardian only
//! sleeps in `read` on a pipe whose write end herd holds (close-on-exec,
//! so no job holds it). When herd exits, however it exits, the kernel
//! closes that end; the guardian reads end of file, sends SIGKILL to every
//! group still in the table, and exits. After a normal run the table is
//! empty.
//!
//! Why not `PR_SET_PDEATHSIG` in each job: setting it needs code between
//! fork and exec, which makes std `fork` instead of using `posix_spawn`'s
//! `vfork`-style clone (about 50 µs more of herd's CPU per job, and the
//! parent waits while the copied child faults its way to `exec`), and it
//! reaches only the job's first process, not a shell job's children. A
//! first guardian told it through the pipe, one 4-byte record per job
//! start and end: each record woke the guardian (about 20 µs of system
//! time per write on this 2-core machine). The shared table costs nothing
//! per job.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, Ordering};

use rustix::mm::{MapFlags, ProtFlags};

/// herd's side of the guardian: the shared table and the pipe.
#[derive(Debug)]
pub(crate) struct Guardian {
    table: NonNull<AtomicI32>,
    slots: usize,
    _pipe: OwnedFd,
}

// SAFETY: the table is a fixed shared mapping of atomics, alive as long
// as the `Guardian`; every access is an atomic operation.
unsafe impl Send for Guardian {}
// SAFETY: as above: only atomic operations touch the table.
unsafe impl Sync for Guardian {}

impl Guardian {
    /// Forks the guardian. Call it while the process has one thread
    /// (before any thread starts), so the child inherits no lock held by
    /// another thread. `slots` is the number of jobs at once: a job is
    /// recorded in its slot, `0..slots`.
    pub(crate) fn start(slots: usize) -> io::Result<Self> {
        let slots = slots.max(1);
        let len = slots * std::mem::size_of::<AtomicI32>();
        // SAFETY: a fresh anonymous mapping, not aliased; zero-filled,
        // which is a valid `AtomicI32` array (all slots empty).
        let ptr = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
            )?
        };
        let table = NonNull::new(ptr.cast::<AtomicI32>())
            .ok_or_else(|| io::Error::other("mmap returned null"))?;
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        // SAFETY: the process is single-threaded here (the caller's
        // contract); the child calls only async-signal-safe functions and
        // `_exit`s, never returning into the parent's code.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            drop(write);
            // SAFETY: `table` points to `slots` atomics in the shared
            // mapping, which the child keeps until it exits.
            let table = unsafe { std::slice::from_raw_parts(table.as_ptr(), slots) };
            guard(read.as_raw_fd(), table);
        }
        drop(read);
        Ok(Self {
            table,
            slots,
            _pipe: write,
        })
    }

    fn slot(&self, slot: usize) -> Option<&AtomicI32> {
        // SAFETY: `table` holds `slots` atomics for the life of `self`.
        let table = unsafe { std::slice::from_raw_parts(self.table.as_ptr(), self.slots) };
        table.get(slot)
    }

    /// The job in `slot` leads process group `pgid`: kill it if herd dies.
    pub(crate) fn watch(&self, slot: usize, pgid: u32) {
        if let Some(s) = self.slot(slot) {
            s.store(pgid as i32, Ordering::SeqCst);
        }
    }

    /// The job in `slot` was reaped.
    pub(crate) fn release(&self, slot: usize) {
        if let Some(s) = self.slot(slot) {
            s.store(0, Ordering::SeqCst);
        }
    }
}

impl Drop for Guardian {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `start`, unmapped once; no reference
        // into it outlives `self`.
        unsafe {
            let _ = rustix::mm::munmap(
                self.table.as_ptr().cast(),
                self.slots * std::mem::size_of::<AtomicI32>(),
            );
        }
    }
}

/// The guardian's life: wait for the end of the pipe, then kill what the
/// table holds, and exit.
fn guard(read: i32, table: &[AtomicI32]) -> ! {
    // SAFETY: plain syscalls on fds and values owned here; `_exit` never
    // returns.
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
        for other in 3..1024 {
            if other != read {
                libc::close(other);
            }
        }
        let mut buf = [0u8; 64];
        loop {
            let n = libc::read(read, buf.as_mut_ptr().cast(), buf.len());
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            if n <= 0 {
                break;
            }
        }
        for slot in table {
            let g = slot.load(Ordering::SeqCst);
            if g > 0 {
                libc::kill(-g, libc::SIGKILL);
            }
        }
        libc::_exit(0)
    }
}
