//! Linux implementation of the platform seam: pidfds, `waitid(P_PIDFD)`,
//! process groups, `/proc/<pid>/stat`, unix sockets with fd passing, `fork`.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::Instant;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use rustix::process::{Pid, PidfdFlags, WaitId, WaitIdOptions};

use crate::process::{ExitStatus, Signal};

/// Most file descriptors passed in one message (the kernel's `SCM_MAX_FD`).
pub(crate) const MAX_FDS: usize = 253;

fn pid_of(pid: u32) -> io::Result<Pid> {
    i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "invalid pid"))
}

fn rustix_signal(sig: Signal) -> io::Result<rustix::process::Signal> {
    let raw = sig.as_raw();
    if !(1..=64).contains(&raw) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "invalid signal number",
        ));
    }
    // SAFETY: `raw` is a non-zero signal number in the kernel's range; herd only
    // sends it (it never blocks or handles libc-reserved real-time signals).
    Ok(unsafe { rustix::process::Signal::from_raw_unchecked(raw) })
}

/// Opens a pidfd for `pid`. Race-free only while `pid` cannot be reaped by
/// anyone else: our own unreaped child, or the calling process itself.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    Ok(rustix::process::pidfd_open(
        pid_of(pid)?,
        PidfdFlags::empty(),
    )?)
}

/// A pidfd for the calling process.
pub(crate) fn pidfd_self() -> io::Result<OwnedFd> {
    pidfd_open(std::process::id())
}

/// Sends `sig` to the process behind `pidfd` (never to a reused pid).
pub(crate) fn pidfd_signal(pidfd: BorrowedFd<'_>, sig: Signal) -> io::Result<()> {
    match rustix::process::pidfd_send_signal(pidfd, rustix_signal(sig)?) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// SIGKILLs and reaps our own child `pid`, for the one moment before its
/// pidfd exists. Sound because an unreaped child's pid cannot be reused.
pub(crate) fn kill_and_reap_raw(pid: u32) {
    if let Ok(p) = pid_of(pid) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        let _ = rustix::process::waitpid(Some(p), rustix::process::WaitOptions::empty());
    }
}

/// Sends `sig` to process group `pgid`. Returns `Ok(false)` when the group no
/// longer exists.
pub(crate) fn signal_group(pgid: u32, sig: Signal) -> io::Result<bool> {
    match rustix::process::kill_process_group(pid_of(pgid)?, rustix_signal(sig)?) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::SRCH) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Sends `sig` to the caller's own process group.
pub(crate) fn signal_own_group(sig: Signal) {
    if let Ok(s) = rustix_signal(sig) {
        let _ = rustix::process::kill_current_process_group(s);
    }
}

/// Reaps the child behind `pidfd` if it has exited (`WNOHANG`).
pub(crate) fn reap_nohang(pidfd: BorrowedFd<'_>) -> io::Result<Option<ExitStatus>> {
    let status = rustix::process::waitid(
        WaitId::PidFd(pidfd),
        WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
    )?;
    Ok(status.and_then(|s| {
        if let Some(sig) = s.terminating_signal() {
            Some(ExitStatus::Signaled(Signal::from_raw(sig)))
        } else {
            s.exit_status().map(ExitStatus::Exited)
        }
    }))
}

/// Waits until one of `fds` is readable (or hung up), or `deadline` passes.
/// Returns, for each fd, whether it is ready; all `false` means the deadline
/// passed. `None` waits forever.
pub(crate) fn wait_readable(
    fds: &[BorrowedFd<'_>],
    deadline: Option<Instant>,
) -> io::Result<Vec<bool>> {
    loop {
        let mut pfds: Vec<PollFd<'_>> = fds
            .iter()
            .map(|fd| PollFd::from_borrowed_fd(*fd, PollFlags::IN))
            .collect();
        let timeout = deadline.map(|d| {
            let left = d.saturating_duration_since(Instant::now());
            Timespec {
                tv_sec: left.as_secs() as i64,
                tv_nsec: i64::from(left.subsec_nanos()),
            }
        });
        match rustix::event::poll(&mut pfds, timeout.as_ref()) {
            Ok(_) => {
                return Ok(pfds
                    .iter()
                    .map(|p| {
                        p.revents()
                            .intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR)
                    })
                    .collect());
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits until `fd` is writable or `deadline` passes; `Ok(false)` on timeout.
pub(crate) fn wait_writable(fd: BorrowedFd<'_>, deadline: Option<Instant>) -> io::Result<bool> {
    loop {
        let mut pfds = [PollFd::from_borrowed_fd(fd, PollFlags::OUT)];
        let timeout = deadline.map(|d| {
            let left = d.saturating_duration_since(Instant::now());
            Timespec {
                tv_sec: left.as_secs() as i64,
                tv_nsec: i64::from(left.subsec_nanos()),
            }
        });
        match rustix::event::poll(&mut pfds, timeout.as_ref()) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The state letter of `/proc/<pid>/stat` (`R`, `S`, `D`, `T`, `t`, `Z`, `X`, `I`).
pub(crate) fn proc_state_letter(pid: u32) -> io::Result<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name is in parentheses and may itself contain ") ".
    let after = stat
        .rfind(')')
        .and_then(|i| stat.get(i + 1..))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc stat"))?;
    after
        .split_whitespace()
        .next()
        .and_then(|s| s.chars().next())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc stat"))
}

/// A connected pair of `SOCK_STREAM` unix sockets, close-on-exec.
pub(crate) fn stream_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// A connected pair of `SOCK_SEQPACKET` unix sockets, close-on-exec.
pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// A close-on-exec pipe: (read end, write end).
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

/// Sends one message with `fds` attached (`SCM_RIGHTS`), blocking.
pub(crate) fn send_with_fds(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    match send_fds_once(sock, bytes, fds, SendFlags::NOSIGNAL)? {
        n if n == bytes.len() => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short message send",
        )),
    }
}

/// Sends as much of `bytes` as the socket takes now, with `fds` attached to
/// the first byte; returns the byte count (`WouldBlock` if none fit).
pub(crate) fn send_some_with_fds(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    send_fds_once(sock, bytes, fds, SendFlags::NOSIGNAL | SendFlags::DONTWAIT)
}

fn send_fds_once(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    flags: SendFlags,
) -> io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many fds for one message",
        ));
    }
    loop {
        match rustix::net::sendmsg(sock, &[IoSlice::new(bytes)], &mut control, flags) {
            Ok(n) => return Ok(n),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one message and the fds attached to it. Zero bytes means the peer
/// closed the socket.
pub(crate) fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    loop {
        let mut control = RecvAncillaryBuffer::new(&mut space);
        match rustix::net::recvmsg(
            sock,
            &mut [IoSliceMut::new(buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                let mut fds = Vec::new();
                for m in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(rights) = m {
                        fds.extend(rights);
                    }
                }
                if msg.flags.contains(rustix::net::ReturnFlags::TRUNC) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "message truncated",
                    ));
                }
                return Ok((msg.bytes, fds));
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sets `O_NONBLOCK` on an fd (and on every fd sharing its description).
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(fd)?;
    rustix::fs::fcntl_setfl(fd, flags | rustix::fs::OFlags::NONBLOCK)?;
    Ok(())
}

/// One non-blocking read of up to `max` bytes: `None` if nothing is there
/// yet, an empty vector at end of file.
pub(crate) fn read_nonblocking(fd: BorrowedFd<'_>, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; max];
    loop {
        match rustix::io::read(fd, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(rustix::io::Errno::AGAIN) => return Ok(None),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Clears close-on-exec on a raw fd. Async-signal-safe: one raw system call,
/// so it may run between `fork` and `exec`.
pub(crate) fn clear_cloexec_raw(fd: RawFd) -> io::Result<()> {
    // SAFETY: the caller passes an fd that is open in this process for the
    // duration of the call (it is owned by the parent and duplicated by fork).
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
    Ok(())
}

/// Takes ownership of an fd number inherited across `exec`.
///
/// # Safety
/// `fd` must be open, inherited for this purpose, and owned by nobody else.
pub(crate) unsafe fn adopt_inherited(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: a quick validity probe; `fd` is only borrowed for the call.
    let probe = unsafe { BorrowedFd::borrow_raw(fd) };
    rustix::io::fcntl_getfd(probe)?;
    rustix::io::fcntl_setfd(probe, rustix::io::FdFlags::CLOEXEC)?;
    // SAFETY: the caller guarantees this fd is ours alone to own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Forks the calling process. Returns `Some(pid)` in the parent and `None` in
/// the child.
///
/// # Safety
/// The caller must be single-threaded (the forkserver is), or the child must
/// only call async-signal-safe functions before `exec` or `_exit`.
pub(crate) unsafe fn fork() -> io::Result<Option<u32>> {
    // SAFETY: forwarded to the caller's contract.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        p => Ok(Some(p as u32)),
    }
}

/// Puts the calling process in a new process group (not a new session).
pub(crate) fn new_process_group() -> io::Result<()> {
    rustix::process::setpgid(None, None)?;
    Ok(())
}

/// The signal the kernel sends a herd child when its parent dies: a
/// real-time signal above glibc's reserved ones, whose handler SIGKILLs the
/// child's whole process group (the child and whatever it started itself).
/// Should the handler ever be replaced by the default action, that action
/// still terminates the child.
fn parent_death_signal() -> i32 {
    libc::SIGRTMIN() + 7
}

extern "C" fn kill_own_group(_: libc::c_int) {
    // SAFETY: `kill` is async-signal-safe; 0 means our own process group.
    unsafe { libc::kill(0, libc::SIGKILL) };
}

/// Arms the kernel's parent-death signal (`PR_SET_PDEATHSIG`): when the
/// thread that started this process exits, this process's group is
/// SIGKILLed. Sound when that thread lives as long as the parent (its main
/// thread, or a single-threaded forkserver).
pub(crate) fn kill_group_on_parent_death() -> io::Result<()> {
    let sig = parent_death_signal();
    // SAFETY: a zeroed sigaction with a plain handler that only calls an
    // async-signal-safe function; installed before any thread exists.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = kill_own_group as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut act.sa_mask);
        if libc::sigaction(sig, &act, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether the calling thread is the process's main thread.
pub(crate) fn on_main_thread() -> bool {
    rustix::thread::gettid() == rustix::process::getpid()
}

/// The parent's pid, if any.
pub(crate) fn getppid() -> u32 {
    rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32)
}

/// `dup2(fd, target)`, leaving `target` inheritable.
pub(crate) fn dup_onto(fd: BorrowedFd<'_>, target: RawFd) -> io::Result<()> {
    if fd.as_raw_fd() == target {
        return clear_cloexec_raw(target);
    }
    // SAFETY: `target` is one of the standard stream numbers, which this
    // process owns; dup2 replaces it atomically.
    let rc = unsafe { libc::dup2(fd.as_raw_fd(), target) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Duplicates `fd` (close-on-exec).
pub(crate) fn dup(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    Ok(rustix::io::fcntl_dupfd_cloexec(fd, 3)?)
}

/// Closes every fd from `from` upward except those in `keep`, with
/// `close_range` where the kernel has it (5.9+), else one `close` per fd up
/// to the fd limit. Meant for a freshly forked or exec'd child that owns
/// nothing in that range yet.
pub(crate) fn close_fds_except(from: RawFd, keep: &[RawFd]) {
    let mut keep: Vec<u32> = keep
        .iter()
        .copied()
        .filter(|&f| f >= from)
        .map(|f| f as u32)
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut ranges = Vec::with_capacity(keep.len() + 1);
    let mut lo = from as u32;
    for k in keep {
        if k > lo {
            ranges.push((lo, k - 1));
        }
        lo = k + 1;
    }
    ranges.push((lo, u32::MAX));
    for (first, last) in ranges {
        // SAFETY: closes fds this child does not use; nothing in this
        // process holds them (the caller's contract).
        let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) };
        if rc != 0 {
            let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
                .current
                .unwrap_or(1 << 20)
                .min(1 << 20) as u32;
            for fd in first..=last.min(limit) {
                // SAFETY: as above, one fd at a time (EBADF for closed ones).
                unsafe { libc::close(fd as RawFd) };
            }
        }
    }
}

/// The path to exec for the Spawn start method: the very file this process
/// runs, even if it has since been replaced or deleted on disk.
pub(crate) fn self_exe() -> PathBuf {
    let proc = PathBuf::from("/proc/self/exe");
    if proc.exists() {
        proc
    } else {
        std::env::current_exe().unwrap_or(proc)
    }
}

/// A cheap identity of an executable file: its size (the same build has the
/// same size; a rebuild almost always changes it).
pub(crate) fn exe_size(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Registers `f` to run in the child after every `fork()`.
pub(crate) fn at_fork_child(f: extern "C" fn()) {
    // SAFETY: a plain `extern "C" fn()` with no captured state, kept by libc
    // for the process's life.
    unsafe { libc::pthread_atfork(None, None, Some(f)) };
}

/// Registers `f` to run at normal process exit (`exit()` or return from main).
pub(crate) fn at_exit(f: extern "C" fn()) -> io::Result<()> {
    // SAFETY: `f` is a plain `extern "C" fn()` with no captured state; libc
    // keeps the pointer until exit.
    let rc = unsafe { libc::atexit(f) };
    if rc != 0 {
        return Err(io::Error::other("atexit registration failed"));
    }
    Ok(())
}

/// Leaves immediately without running exit handlers (the forked child on a
/// setup failure must not run the forkserver's state).
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` is async-signal-safe and never returns.
    unsafe { libc::_exit(code) }
}

/// Names of the common signals.
pub(crate) fn signal_name(sig: i32) -> Option<&'static str> {
    Some(match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGCONT => "SIGCONT",
        libc::SIGSTOP => "SIGSTOP",
        libc::SIGTSTP => "SIGTSTP",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return None,
    })
}

/// Signal numbers herd uses by name.
pub(crate) mod signals {
    pub(crate) const TERM: i32 = libc::SIGTERM;
    pub(crate) const KILL: i32 = libc::SIGKILL;
    pub(crate) const STOP: i32 = libc::SIGSTOP;
    pub(crate) const CONT: i32 = libc::SIGCONT;
    pub(crate) const SEGV: i32 = libc::SIGSEGV;
    pub(crate) const ABRT: i32 = libc::SIGABRT;
}

/// What [`spawn_program`] gives a child for each standard stream.
#[derive(Debug, Clone, Copy)]
pub(crate) enum StreamFd<'a> {
    /// Keep the parent's stream.
    Inherit,
    /// Make this fd the stream.
    Use(BorrowedFd<'a>),
}

/// Starts `exe` with `posix_spawn` (a `vfork`-style clone: no copy of the
/// parent's page tables, so its cost does not grow with the parent's
/// memory), in a new process group, with `env` added to this process's
/// environment, the three streams wired, and the `keep` fds inherited.
pub(crate) fn spawn_program(
    exe: &std::path::Path,
    argv0: &std::ffi::OsStr,
    env: (&str, &str),
    streams: [StreamFd<'_>; 3],
    keep: &[BorrowedFd<'_>],
) -> io::Result<u32> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;

    let cstr = |b: &[u8]| {
        CString::new(b).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "nul byte in a spawn argument")
        })
    };
    let path = cstr(exe.as_os_str().as_bytes())?;
    let arg0 = cstr(argv0.as_bytes())?;
    let mut envs: Vec<CString> = Vec::new();
    for (k, v) in std::env::vars_os() {
        if k.as_bytes() == env.0.as_bytes() {
            continue;
        }
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        if let Ok(c) = CString::new(kv) {
            envs.push(c);
        }
    }
    envs.push(cstr(format!("{}={}", env.0, env.1).as_bytes())?);
    let argv: [*mut libc::c_char; 2] = [arg0.as_ptr().cast_mut(), std::ptr::null_mut()];
    let mut envp: Vec<*mut libc::c_char> = envs.iter().map(|c| c.as_ptr().cast_mut()).collect();
    envp.push(std::ptr::null_mut());

    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(rc))
        }
    };
    let mut actions = MaybeUninit::<libc::posix_spawn_file_actions_t>::uninit();
    let mut attr = MaybeUninit::<libc::posix_spawnattr_t>::uninit();
    // SAFETY: init functions fill the out-pointers; on success they are
    // destroyed exactly once below.
    unsafe {
        check(libc::posix_spawn_file_actions_init(actions.as_mut_ptr()))?;
        if let Err(e) = check(libc::posix_spawnattr_init(attr.as_mut_ptr())) {
            libc::posix_spawn_file_actions_destroy(actions.as_mut_ptr());
            return Err(e);
        }
    }
    let result = (|| -> io::Result<u32> {
        let actions = actions.as_mut_ptr();
        let attr = attr.as_mut_ptr();
        // SAFETY: `actions` and `attr` were initialised above; every fd
        // passed is open for the duration of the call; `path`, `argv` and
        // `envp` are nul-terminated and outlive `posix_spawn`.
        unsafe {
            for (target, stream) in streams.iter().enumerate() {
                if let StreamFd::Use(fd) = stream {
                    check(libc::posix_spawn_file_actions_adddup2(
                        actions,
                        fd.as_raw_fd(),
                        target as i32,
                    ))?;
                }
            }
            // dup2 of an fd onto itself clears close-on-exec (glibc >= 2.29).
            for fd in keep {
                check(libc::posix_spawn_file_actions_adddup2(
                    actions,
                    fd.as_raw_fd(),
                    fd.as_raw_fd(),
                ))?;
            }
            let mut empty = MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(empty.as_mut_ptr());
            let mut pipe_only = MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(pipe_only.as_mut_ptr());
            libc::sigaddset(pipe_only.as_mut_ptr(), libc::SIGPIPE);
            check(libc::posix_spawnattr_setsigmask(attr, empty.as_ptr()))?;
            check(libc::posix_spawnattr_setsigdefault(
                attr,
                pipe_only.as_ptr(),
            ))?;
            check(libc::posix_spawnattr_setpgroup(attr, 0))?;
            let flags = libc::POSIX_SPAWN_SETPGROUP
                | libc::POSIX_SPAWN_SETSIGMASK
                | libc::POSIX_SPAWN_SETSIGDEF;
            check(libc::posix_spawnattr_setflags(attr, flags as libc::c_short))?;
            let mut pid: libc::pid_t = 0;
            check(libc::posix_spawn(
                &mut pid,
                path.as_ptr(),
                actions,
                attr,
                argv.as_ptr(),
                envp.as_ptr(),
            ))?;
            Ok(pid as u32)
        }
    })();
    // SAFETY: both were initialised above and are destroyed once.
    unsafe {
        libc::posix_spawn_file_actions_destroy(actions.as_mut_ptr());
        libc::posix_spawnattr_destroy(attr.as_mut_ptr());
    }
    result
}

/// Errno values herd reports across the forkserver conversation.
pub(crate) mod errno {
    pub(crate) const EIO: i32 = libc::EIO;
    pub(crate) const EINVAL: i32 = libc::EINVAL;
}

/// Writes all of `bytes` with one `write` (a pipe write of at most
/// `PIPE_BUF` bytes is atomic).
pub(crate) fn write_once(fd: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<usize> {
    Ok(rustix::io::write(fd, bytes)?)
}

/// A zero-filled anonymous shared-memory file of `len` bytes whose size is
/// sealed (it can neither shrink nor grow).
pub(crate) fn memfd_sealed(name: &str, len: usize) -> io::Result<OwnedFd> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    rustix::fs::ftruncate(&fd, len as u64)?;
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
    Ok(fd)
}

/// The size of a sealed memfd; an error if `fd` is not one.
pub(crate) fn sealed_memfd_len(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let seals = rustix::fs::fcntl_get_seals(fd).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "not a herd shared-memory segment",
        )
    })?;
    if !seals.contains(rustix::fs::SealFlags::SHRINK) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "shared-memory segment is not sealed",
        ));
    }
    usize::try_from(rustix::fs::fstat(fd)?.st_size)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad segment size"))
}

/// The (device, inode) pair naming the file behind `fd`.
pub(crate) fn file_identity(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let st = rustix::fs::fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

/// Maps `len` bytes of `fd` shared, readable and writable.
pub(crate) fn map_shared(fd: BorrowedFd<'_>, len: usize) -> io::Result<std::ptr::NonNull<u8>> {
    use rustix::mm::{MapFlags, ProtFlags};
    // SAFETY: a fresh shared mapping at an address the kernel chooses;
    // nothing else aliases it in this process.
    let ptr = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
            fd,
            0,
        )?
    };
    // Shared memory stays out of core dumps: a queue's ring is 1 GiB of
    // mostly untouched address space, and dumping it made a crashing pool
    // worker take 8-20 s to die with core dumps on (a dump is written
    // before the process counts as dead). Best effort: a kernel that
    // refuses the advice only makes dumps larger.
    // SAFETY: advice on the mapping just made; it changes no contents.
    let _ = unsafe { rustix::mm::madvise(ptr, len, rustix::mm::Advice::LinuxDontDump) };
    std::ptr::NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))
}

/// Unmaps a mapping made by [`map_shared`].
///
/// # Safety
/// `ptr`/`len` must be exactly one mapping from [`map_shared`], and nothing
/// may use it afterwards.
pub(crate) unsafe fn unmap(ptr: std::ptr::NonNull<u8>, len: usize) {
    // SAFETY: forwarded to the caller's contract.
    let _ = unsafe { rustix::mm::munmap(ptr.as_ptr().cast(), len) };
}

/// Whether a thread with this id exists (in any process).
pub(crate) fn thread_exists(tid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{tid}")).exists()
}

/// Whether `tid` may be a live thread of this process: false only when
/// the kernel says there is no such thread here (`ESRCH`), so that an
/// error of any other kind (a seccomp filter, say) errs on the side of
/// "alive".
pub(crate) fn thread_in_process(tid: u32) -> bool {
    // SAFETY: tgkill with signal 0 only checks that the thread exists in
    // our thread group and that we may signal it; it sends nothing.
    let rc = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid as libc::pid_t, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// The calling thread's kernel thread id.
pub(crate) fn gettid() -> u32 {
    rustix::thread::gettid().as_raw_nonzero().get() as u32
}

/// Sleeps while `word` holds `expected`, until woken or `deadline`. A shared
/// (not process-private) futex, so it works across processes on shared
/// memory. Returns on a wake, a changed value, a signal or the deadline; the
/// caller re-checks its condition.
pub(crate) fn futex_wait(
    word: &std::sync::atomic::AtomicU32,
    expected: u32,
    deadline: Option<Instant>,
) {
    let timeout = deadline.map(|d| {
        let left = d.saturating_duration_since(Instant::now());
        Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: i64::from(left.subsec_nanos()),
        }
    });
    let _ = rustix::thread::futex::wait(
        word,
        rustix::thread::futex::Flags::empty(),
        expected,
        timeout.as_ref(),
    );
}

/// "Every waiter" for [`futex_wake`] (the kernel reads the count as an
/// `int`: `u32::MAX` would be -1 and wake only one).
pub(crate) const WAKE_ALL: u32 = i32::MAX as u32;

/// Wakes up to `n` waiters of `word` (in any process); `n` is capped at
/// [`WAKE_ALL`].
pub(crate) fn futex_wake(word: &std::sync::atomic::AtomicU32, n: u32) {
    let _ =
        rustix::thread::futex::wake(word, rustix::thread::futex::Flags::empty(), n.min(WAKE_ALL));
}

/// Registers this process for [`heavy_fence`]s, once per process (a
/// `fork()` child inherits the registration; it is asked again all the
/// same, at the cost of one syscall). `false` where the kernel has no
/// `membarrier` or refuses it.
pub(crate) fn register_heavy_fence() -> bool {
    static REGISTERED: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
    let pid = rustix::process::getpid().as_raw_nonzero().get();
    if REGISTERED.load(std::sync::atomic::Ordering::Relaxed) == pid {
        return true;
    }
    let ok = rustix::thread::membarrier(rustix::thread::MembarrierCommand::RegisterGlobalExpedited)
        .is_ok();
    if ok {
        REGISTERED.store(pid, std::sync::atomic::Ordering::Relaxed);
    }
    ok
}

/// The monotonic clock in milliseconds, truncated to 32 bits (wraps every
/// 49 days: compare with `wrapping_sub`). The same clock in every process.
pub(crate) fn coarse_ms() -> u32 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid out-pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    (t.tv_sec as u64)
        .wrapping_mul(1000)
        .wrapping_add(t.tv_nsec as u64 / 1_000_000) as u32
}

/// How a [`heavy_fence`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fence {
    /// Done: every CPU running a registered process has fenced.
    Done,
    /// This kernel has no such command (`ENOSYS`, `EINVAL`): no process
    /// here can have registered, so none needs the fence.
    Unsupported,
    /// Refused for this process (a seccomp filter, say): others may have
    /// registered, and no barrier happened.
    Refused,
}

/// A full memory barrier on every CPU now running a thread of any process
/// registered by [`register_heavy_fence`] (`membarrier`'s global expedited
/// command): the heavy side of an asymmetric fence whose light side is a
/// compiler fence.
pub(crate) fn heavy_fence() -> Fence {
    match rustix::thread::membarrier(rustix::thread::MembarrierCommand::GlobalExpedited) {
        Ok(()) => Fence::Done,
        Err(e) if e == rustix::io::Errno::NOSYS || e == rustix::io::Errno::INVAL => {
            Fence::Unsupported
        }
        Err(_) => Fence::Refused,
    }
}

/// Bits of a robust futex word, as the kernel reads them.
pub(crate) mod robust {
    /// Some thread sleeps on the word.
    pub(crate) const WAITERS: u32 = 0x8000_0000;
    /// The owner died holding it (set by the kernel).
    pub(crate) const OWNER_DIED: u32 = 0x4000_0000;
    /// The owner's thread id.
    pub(crate) const TID_MASK: u32 = 0x3fff_ffff;
    /// Offset of the futex word from a list entry (glibc's layout, which the
    /// kernel is told through `set_robust_list`).
    pub(crate) const FUTEX_OFFSET: isize = -32;
}

/// The calling thread's robust-list head, as registered with the kernel by
/// the C library (`get_robust_list`); `None` if there is none or it does not
/// have the layout herd relies on (glibc's: 24 bytes, futex offset -32,
/// a `prev` pointer just before the head).
pub(crate) fn robust_list_head() -> Option<*mut usize> {
    let mut head: *mut usize = std::ptr::null_mut();
    let mut len: libc::size_t = 0;
    // SAFETY: `get_robust_list(0, ..)` writes the calling thread's head
    // pointer and its length into the two out-pointers.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            0,
            &mut head as *mut *mut usize,
            &mut len as *mut libc::size_t,
        )
    };
    if rc != 0 || head.is_null() || len != 24 {
        return None;
    }
    // SAFETY: the kernel says `head` is this thread's 24-byte robust list
    // head; its second word is the futex offset.
    let offset = unsafe { head.add(1).cast::<isize>().read() };
    (offset == robust::FUTEX_OFFSET).then_some(head)
}
