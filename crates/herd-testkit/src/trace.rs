//! A minimal ptrace driver for tests that reproduce an exact interleaving:
//! seize a thread of a child, single-step it, stop it on hardware
//! watchpoints, kill it. Every wait is guarded (x86-64 Linux only; see
//! [`SUPPORTED`]).

use std::time::Instant;

use crate::GUARD;

/// Why a tracee stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// A single step, or a watchpoint, trapped.
    Trap,
    /// A signal-delivery stop (SIGUSR1: the child's marker).
    Signal(i32),
    /// The thread is gone.
    Gone,
}

/// What a hardware watchpoint fires on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Writes only.
    Write,
    /// Reads and writes.
    ReadWrite,
}

/// A seized thread of another process.
#[derive(Debug)]
pub struct Tracee {
    tid: i32,
    pid: i32,
    live: bool,
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Whether this platform has the watchpoints these tests use.
pub const SUPPORTED: bool = cfg!(all(target_os = "linux", target_arch = "x86_64"));

impl Tracee {
    /// Seizes thread `tid` of process `pid` (`PTRACE_SEIZE`: it keeps
    /// running until it stops).
    pub fn seize(pid: u32, tid: u32) -> Result<Self, String> {
        let tid = tid as i32;
        // SAFETY: a ptrace request on a thread id; no memory passed.
        let r = unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, 0usize, 0usize) };
        if r != 0 {
            return Err(format!("PTRACE_SEIZE {tid}: {}", errno()));
        }
        Ok(Self {
            tid,
            pid: pid as i32,
            live: true,
        })
    }

    /// The next stop (guarded).
    pub fn wait(&mut self) -> Result<Stop, String> {
        let end = Instant::now() + GUARD;
        loop {
            let mut status = 0;
            // SAFETY: `status` is a valid out-pointer.
            let r = unsafe { libc::waitpid(self.tid, &mut status, libc::__WALL | libc::WNOHANG) };
            if r == self.tid {
                if libc::WIFSTOPPED(status) {
                    let sig = libc::WSTOPSIG(status);
                    return Ok(if sig == libc::SIGTRAP {
                        Stop::Trap
                    } else {
                        Stop::Signal(sig)
                    });
                }
                self.live = false;
                return Ok(Stop::Gone);
            }
            if r < 0 {
                self.live = false;
                return Ok(Stop::Gone);
            }
            if Instant::now() > end {
                return Err(format!("tracee {} did not stop within the guard", self.tid));
            }
            std::thread::yield_now();
        }
    }

    fn request(&self, req: libc::c_uint, addr: usize, data: usize) -> Result<(), String> {
        // SAFETY: a ptrace request on our tracee; `addr` and `data` are
        // plain values for the requests used here (no pointers).
        let r = unsafe { libc::ptrace(req, self.tid, addr, data) };
        if r != 0 {
            return Err(format!("ptrace({req}) on {}: {}", self.tid, errno()));
        }
        Ok(())
    }

    /// Executes one instruction.
    pub fn step(&mut self) -> Result<Stop, String> {
        self.request(libc::PTRACE_SINGLESTEP, 0, 0)?;
        self.wait()
    }

    /// Runs to the next stop (a watchpoint, a marker, the end).
    pub fn cont(&mut self) -> Result<Stop, String> {
        self.request(libc::PTRACE_CONT, 0, 0)?;
        self.wait()
    }

    /// Sets hardware watchpoints (at most 4: address, length 4 or 8,
    /// access), replacing any; an empty list clears them.
    pub fn watch(&mut self, points: &[(usize, usize, Access)]) -> Result<(), String> {
        #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
        {
            let dr = std::mem::offset_of!(libc::user, u_debugreg);
            self.request(libc::PTRACE_POKEUSER, dr + 7 * 8, 0)?;
            let mut dr7 = 0usize;
            for (i, &(addr, len, access)) in points.iter().enumerate().take(4) {
                self.request(libc::PTRACE_POKEUSER, dr + i * 8, addr)?;
                let rw = match access {
                    Access::Write => 0b01,
                    Access::ReadWrite => 0b11,
                };
                let ln = if len == 8 { 0b10 } else { 0b11 };
                dr7 |= 1 << (2 * i);
                dr7 |= (rw | (ln << 2)) << (16 + 4 * i);
            }
            if dr7 != 0 {
                self.request(libc::PTRACE_POKEUSER, dr + 7 * 8, dr7)?;
            }
            Ok(())
        }
        #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
        {
            let _ = points;
            Err("watchpoints: x86-64 only".to_owned())
        }
    }

    /// Clears the watchpoints and lets the thread run on untraced.
    pub fn detach(mut self) -> Result<(), String> {
        let _ = self.watch(&[]);
        self.live = false;
        self.request(libc::PTRACE_DETACH, 0, 0)
    }

    /// SIGKILLs the whole process and collects the traced thread's end
    /// (so that its parent can reap it).
    pub fn kill(mut self) -> Result<(), String> {
        // SAFETY: a plain syscall.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        while self.live {
            if self.wait()? == Stop::Gone {
                break;
            }
        }
        Ok(())
    }
}

impl Drop for Tracee {
    fn drop(&mut self) {
        if self.live {
            // SAFETY: a plain syscall: never leave a tracee stopped.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            while self.live {
                if !matches!(self.wait(), Ok(Stop::Trap | Stop::Signal(_))) {
                    break;
                }
            }
        }
    }
}

/// In a child to be traced: says its thread id, waits until it is traced,
/// then stops at its first marker. SIGUSR1 is ignored, so markers are
/// no-ops once the tracer detaches.
pub fn await_tracer(hello: &herd::Queue<u32>) {
    // SAFETY: sets a signal disposition to SIG_IGN.
    unsafe { libc::signal(libc::SIGUSR1, libc::SIG_IGN) };
    hello
        .put(rustix::thread::gettid().as_raw_nonzero().get() as u32)
        .expect("hello");
    let end = Instant::now() + GUARD;
    while Instant::now() < end {
        let st = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
        if st
            .lines()
            .any(|l| l.starts_with("TracerPid:") && l.split_whitespace().nth(1) != Some("0"))
        {
            marker();
            return;
        }
        std::thread::yield_now();
    }
    panic!("never traced");
}

/// Raises SIGUSR1: a stop for the tracer, a no-op once it detaches.
pub fn marker() {
    // SAFETY: raises a signal this thread ignores unless it is traced.
    unsafe { libc::raise(libc::SIGUSR1) };
}

/// The herd shared-memory mapping of this process that holds `addr`, as
/// (its first address, its inode).
pub fn region_of(addr: usize) -> Result<(usize, u64), String> {
    regions_in("self")
        .into_iter()
        .find(|&(lo, hi, _)| lo <= addr && addr < hi)
        .map(|(lo, _, inode)| (lo, inode))
        .ok_or_else(|| format!("{addr:#x} is in no herd region"))
}

/// (first address, end, inode) of every herd region mapped in `pid`
/// (from its first page).
fn regions_in(pid: &str) -> Vec<(usize, usize, u64)> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    maps.lines()
        .filter(|l| l.contains("memfd:herd"))
        .filter_map(maps_line)
        .filter(|&(_, _, offset, _)| offset == 0)
        .map(|(lo, hi, _, inode)| (lo, hi, inode))
        .collect()
}

/// A line of /proc/PID/maps: (first address, end, file offset, inode).
pub fn maps_line(line: &str) -> Option<(usize, usize, u64, u64)> {
    let mut it = line.split_whitespace();
    let (lo, hi) = it.next()?.split_once('-')?;
    let _perms = it.next()?;
    let offset = u64::from_str_radix(it.next()?, 16).ok()?;
    let _dev = it.next()?;
    let inode = it.next()?.parse().ok()?;
    Some((
        usize::from_str_radix(lo, 16).ok()?,
        usize::from_str_radix(hi, 16).ok()?,
        offset,
        inode,
    ))
}

/// Where the region with `inode` is mapped in process `pid`.
pub fn region_in(pid: u32, inode: u64) -> Result<usize, String> {
    regions_in(&pid.to_string())
        .into_iter()
        .find(|&(_, _, i)| i == inode)
        .map(|(lo, ..)| lo)
        .ok_or_else(|| format!("region {inode} not mapped in {pid}"))
}

/// The calling thread's robust-list head (glibc's, in its TCB).
pub fn robust_head() -> *mut usize {
    let mut head: *mut libc::c_void = std::ptr::null_mut();
    let mut len: libc::size_t = 0;
    // SAFETY: get_robust_list for the calling thread (pid 0) writes the two
    // out-parameters, which are valid.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            0,
            &mut head as *mut *mut libc::c_void,
            &mut len as *mut libc::size_t,
        )
    };
    assert_eq!(rc, 0, "get_robust_list");
    head.cast()
}

/// The first entry of the calling thread's robust list: right after this
/// thread took a herd lock, an address inside that lock's mapping.
pub fn first_robust_entry() -> usize {
    // SAFETY: the head is this thread's, alive while it runs; its first word
    // is the list's first entry (low bit: a PI flag).
    unsafe { robust_head().read_volatile() & !1 }
}

/// A child that only waits to be traced (for [`supported_here`]).
#[herd::task]
fn probe(hello: herd::Queue<u32>) {
    await_tracer(&hello);
}

/// Whether ptrace-driven tests can run here: x86-64 Linux, and a
/// forkserver child of this process can be seized (ptrace allowed). Tried
/// once per process.
pub fn supported_here() -> bool {
    use std::sync::OnceLock;
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        if !SUPPORTED {
            return false;
        }
        let Ok(hello) = herd::Queue::<u32>::new() else {
            return false;
        };
        let Ok(mut p) = herd::Process::builder(probe, (hello.clone(),))
            .start_method(herd::StartMethod::ForkServer)
            .start()
        else {
            return false;
        };
        let ok = hello.get_timeout(GUARD).ok().is_some_and(|tid| {
            Tracee::seize(p.pid(), tid)
                .and_then(|mut t| {
                    t.wait()?;
                    t.detach()
                })
                .is_ok()
        });
        if !ok {
            let _ = p.kill();
        }
        let _ = p.join_timeout(GUARD);
        ok
    })
}

/// Runs `f` if ptrace-driven tests can run here; otherwise passes, saying
/// so.
pub fn traced(
    f: impl FnOnce() -> Result<(), libtest_mimic::Failed>,
) -> Result<(), libtest_mimic::Failed> {
    if supported_here() {
        f()
    } else {
        println!("skipped: needs ptrace and x86-64 debug registers");
        Ok(())
    }
}
