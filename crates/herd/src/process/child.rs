//! The child's side: `herd::init()`, the bootstrap, the parent watchdog, and
//! what [`current_process`] reports.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use super::error::Refusal;
use super::protocol::{self, Reply, Request};
use super::spawn::{self, BOOTSTRAP_ENV, Role};
use super::status::Signal;
use crate::task::{self, RunFailure};
use crate::{ipc, os};

/// Who this process is, in herd's terms.
#[derive(Debug)]
struct Identity {
    name: String,
    daemon: bool,
    /// Python's `_identity`: `[]` for the main process, `[2]` for its second
    /// child, `[2, 1]` for that child's first child.
    path: Vec<u32>,
    parent_pid: Option<u32>,
}

static IDENTITY: OnceLock<Identity> = OnceLock::new();
static INITIALIZED: AtomicBool = AtomicBool::new(false);
static NEXT_CHILD: AtomicU32 = AtomicU32::new(1);

/// Prepares herd in this program. **Make it the first line of `main`.**
///
/// In the program you run, it records that this is the main process and
/// returns at once. In a child that herd started by re-executing the
/// program, it never returns: it runs the requested task and exits, so the
/// child never runs the rest of `main`. Calling it again is harmless.
///
/// ```
/// #[herd::task]
/// fn add(a: u64, b: u64) -> u64 {
///     a + b
/// }
///
/// fn main() {
///     herd::init();
///     let mut p = herd::Process::builder(add, (2, 3)).start().unwrap();
///     assert_eq!(p.join().unwrap(), 5);
/// }
/// ```
pub fn init() {
    if INITIALIZED.swap(true, Ordering::SeqCst) {
        return;
    }
    let Some(value) = std::env::var_os(BOOTSTRAP_ENV) else {
        let _ = IDENTITY.set(Identity {
            name: "MainProcess".to_owned(),
            daemon: false,
            path: Vec::new(),
            parent_pid: None,
        });
        return;
    };
    // SAFETY: init() is documented to run first in main, before this program
    // starts any thread, so no other thread reads the environment now. The
    // variable must not leak into this child's own children.
    unsafe { std::env::remove_var(BOOTSTRAP_ENV) };
    let Some((role, sock, parent, pdeathsig)) = value.to_str().and_then(spawn::parse_env) else {
        eprintln!("herd: malformed {BOOTSTRAP_ENV} variable; exiting");
        std::process::exit(3);
    };
    // SAFETY: the parent passed these two fd numbers for us to own; nothing
    // else in this freshly exec'd process knows them.
    let fds = unsafe { (os::adopt_inherited(sock), os::adopt_inherited(parent)) };
    let (Ok(sock), Ok(parent)) = fds else {
        eprintln!("herd: the bootstrap fds were not inherited; exiting");
        std::process::exit(3);
    };
    // Nothing else the parent had open belongs to us (a pipe end held here
    // would keep its reader from ever seeing end of file).
    os::close_fds_except(3, &[sock.as_raw_fd(), parent.as_raw_fd()]);
    // Whatever happens below, never unwind back into `main`: its body must
    // not run in a child.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || match role {
        Role::Child if pdeathsig => {
            // The parent started us from its main thread, which lives as long
            // as the parent: the kernel's parent-death signal is exact, and
            // cheaper than a watchdog thread. Armed, then checked, so a parent
            // that died before the arming is noticed too.
            let armed = os::kill_group_on_parent_death().is_ok()
                && os::wait_readable(&[parent.as_fd()], Some(std::time::Instant::now()))
                    .is_ok_and(|r| !r[0]);
            if armed {
                drop(parent);
                child_main(sock, None, None)
            } else {
                child_main(sock, Some(parent), None)
            }
        }
        Role::Child => child_main(sock, Some(parent), None),
        Role::ForkServer => super::forkserver::serve(sock, parent),
    }));
    let _ = outcome;
    std::process::exit(3)
}

/// Whether `init()` has run in this process.
pub(crate) fn initialized() -> bool {
    INITIALIZED.load(Ordering::SeqCst)
}

/// The identity path and default name for the next child of this process.
pub(crate) fn next_child_identity() -> (Vec<u32>, String) {
    let n = NEXT_CHILD.fetch_add(1, Ordering::Relaxed);
    let mut path = IDENTITY.get().map(|i| i.path.clone()).unwrap_or_default();
    path.push(n);
    let name = format!(
        "Process-{}",
        path.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(":")
    );
    (path, name)
}

/// Runs one task for the parent on `sock`, then exits. Never returns.
///
/// `watch` is the parent's pidfd, for a watchdog thread; `None` when the
/// kernel already guarantees our death with the parent: a forkserver child
/// (its single-threaded forkserver forked it, so `PR_SET_PDEATHSIG` is
/// exact, and the forkserver kills its children's groups when the parent
/// dies), or a child spawned from the parent's main thread. Skipping the
/// thread saves its start-up and tear-down on every child.
pub(crate) fn child_main(sock: OwnedFd, watch: Option<OwnedFd>, gate: Option<OwnedFd>) -> ! {
    task::install_panic_hook();
    if let Some(parent) = watch {
        start_watchdog(parent);
    }
    let mut stream = UnixStream::from(sock);
    let code = serve_one(&mut stream, true, gate);
    drop(stream);
    std::process::exit(code)
}

/// The conversation of one child: reads the request, checks it, answers
/// `Accepted` or a refusal, runs the task and sends its outcome. Returns
/// the exit code. `real` is false for a rehearsal, which leaves this
/// process's identity alone. With a `gate` (a forkserver child's control
/// socket), nothing is written before a byte arrives on it: the server
/// writes the parent's hello on our socket after it woke us, and says so
/// there.
fn serve_one(stream: &mut UnixStream, real: bool, gate: Option<OwnedFd>) -> i32 {
    let Ok((body, passed)) = protocol::read_frame_blocking(stream) else {
        // The parent went away during the bootstrap.
        return 3;
    };
    let decided = decide(&body, passed);
    if let Some(gate) = gate {
        let mut one = [0u8; 1];
        if !matches!(os::recv_with_fds(gate.as_fd(), &mut one), Ok((1, _))) {
            // The server died before it wrote the hello: any word from us
            // would come first and be misread.
            if let Ok((call, _)) = decided {
                std::mem::forget(call);
            }
            return 3;
        }
    }
    let (call, request) = match decided {
        Ok(ready) => ready,
        Err(refusal) => return refuse(stream, refusal),
    };
    if real {
        let _ = IDENTITY.set(Identity {
            name: request.name,
            daemon: request.daemon,
            path: request.identity,
            parent_pid: Some(request.parent_pid),
        });
    }
    if send(stream, &Reply::Accepted).is_err() {
        // The parent is gone: leave without running the arguments' drops
        // (as an exit here always did).
        std::mem::forget(call);
        return 3;
    }
    let (reply, code) = match call() {
        Ok(bytes) => (Reply::Returned(bytes), 0),
        Err(RunFailure::Panicked(report)) => (Reply::Panicked(report), 101),
        Err(RunFailure::ResultEncode(reason)) => (Reply::ResultEncode(reason), 1),
    };
    // If the parent is gone nobody wants the result; exit all the same.
    let _ = send(stream, &reply);
    code
}

/// Checks a request and decodes its arguments: the task to run, or why
/// not.
fn decide(body: &[u8], passed: Vec<OwnedFd>) -> Result<(task::PreparedTask, Request), Refusal> {
    let request: Request = task::decode(body).map_err(|reason| Refusal::Malformed { reason })?;
    let child_build = task::build_id();
    if request.build_id != child_build {
        return Err(Refusal::BuildMismatch {
            parent: request.build_id,
            child: child_build,
        });
    }
    let entry = match task::find_by_name(&request.task) {
        Ok(Some(e)) => e,
        Ok(None) => return Err(Refusal::UnknownTask { name: request.task }),
        Err(()) => return Err(Refusal::AmbiguousTask { name: request.task }),
    };
    if (entry.fingerprint)() != request.fingerprint {
        return Err(Refusal::FingerprintMismatch { name: request.task });
    }
    // A `Deserialize` impl may panic; that is a refusal, not a crash.
    let prepared = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ipc::provide_fds(passed, || (entry.prepare)(&request.args))
    }));
    match prepared {
        Ok(Ok(call)) => Ok((call, request)),
        Ok(Err(reason)) => Err(Refusal::ArgsDecode { reason }),
        Err(payload) => {
            let report = task::PanicReport::from_payload(&*payload);
            Err(Refusal::ArgsDecode {
                reason: format!("deserializing the arguments {report}"),
            })
        }
    }
}

/// Does nothing: what a spare runs in its rehearsal.
fn rehearsal() {}
crate::register_task!(rehearsal);

/// Runs a child's whole conversation once, for the no-op task above, on a
/// socket pair of its own: a spare does this while it waits for work, so
/// that the pages of code and data every child touches (decoding, the task
/// registry, encoding, the socket path; the stack and heap pages it
/// writes) are mapped and copied by then, not faulted in one by one on
/// the critical path of a start. Failures are ignored: it only warms up.
pub(crate) fn rehearse() {
    let Ok(Some(entry)) = task::find_by_name(REHEARSAL) else {
        return;
    };
    let Ok(args) = task::encode(&()) else {
        return;
    };
    let request = Request {
        task: entry.name.to_owned(),
        fingerprint: (entry.fingerprint)(),
        build_id: task::build_id(),
        args,
        name: String::new(),
        daemon: false,
        identity: Vec::new(),
        parent_pid: 0,
    };
    let Ok(frame) = protocol::frame(&request) else {
        return;
    };
    let Ok((ours, theirs)) = UnixStream::pair() else {
        return;
    };
    let mut ours = ours;
    if ours.write_all(&frame).is_err() {
        return;
    }
    let mut theirs = theirs;
    serve_one(&mut theirs, false, None);
    // The parent's side: read the two replies back.
    drop(theirs);
    let mut sink = Vec::new();
    let _ = ours.read_to_end(&mut sink);
}

/// The rehearsal task's registered name.
const REHEARSAL: &str = concat!(module_path!(), "::rehearsal");

fn send(stream: &mut UnixStream, reply: &Reply) -> std::io::Result<()> {
    let bytes = protocol::frame(reply).map_err(std::io::Error::other)?;
    stream.write_all(&bytes)
}

/// Tells the parent why the task will not run; returns the exit code.
fn refuse(stream: &mut UnixStream, refusal: Refusal) -> i32 {
    let _ = send(stream, &Reply::Refused(refusal));
    2
}

/// Watches the parent's pidfd on a thread of its own: when the parent dies,
/// however it dies, SIGKILL this child's process group.
fn start_watchdog(parent: OwnedFd) {
    let spawned = std::thread::Builder::new()
        .name("herd-watchdog".to_owned())
        .stack_size(64 * 1024)
        .spawn(move || {
            loop {
                match os::wait_readable(&[parent.as_fd()], None) {
                    Ok(r) if r[0] => break,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            // The parent is gone: the whole group goes, this child included
            // (a SIGTERM first would end this thread with the child and
            // leave the rest of the group running).
            os::signal_own_group(Signal::KILL);
        });
    if spawned.is_err() {
        // Without a watchdog we could outlive the parent: refuse to run.
        std::process::exit(3);
    }
}

/// What [`current_process`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentProcess {
    /// `"MainProcess"` in the program you ran; the child's name in a child.
    pub name: String,
    /// This process's pid.
    pub pid: u32,
    /// The pid of the process that started this one. For a child started
    /// through the forkserver this is the logical parent (the process that
    /// called `start`), not the forkserver that forked it.
    pub ppid: u32,
    /// Whether this process is a child started by herd.
    pub is_child: bool,
    /// Whether this process is a daemon child.
    pub daemon: bool,
}

/// Describes the current process; works in every process.
///
/// ```
/// # fn main() {
/// herd::init();
/// let me = herd::current_process();
/// assert_eq!(me.name, "MainProcess");
/// assert_eq!(me.pid, std::process::id());
/// assert!(!me.is_child);
/// # }
/// ```
pub fn current_process() -> CurrentProcess {
    let id = IDENTITY.get();
    CurrentProcess {
        name: id.map_or_else(|| "MainProcess".to_owned(), |i| i.name.clone()),
        pid: std::process::id(),
        ppid: id.and_then(|i| i.parent_pid).unwrap_or_else(os::getppid),
        is_child: id.is_some_and(|i| i.parent_pid.is_some()),
        daemon: id.is_some_and(|i| i.daemon),
    }
}
