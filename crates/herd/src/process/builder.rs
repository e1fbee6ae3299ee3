//! The [`ProcessBuilder`]: what to run, and how.

use std::any::{TypeId, type_name};
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::children::{self, ChildRecord, Link};
use super::error::StartError;
use super::handle::Process;
use super::protocol::{self, FrameReader, Reply, Request};
use super::spawn::{self, Role};
use super::{child, forkserver};
use crate::task::{self, TaskFn};
use crate::{ipc, os};

/// How a child process is started.
///
/// The default is [`StartMethod::ForkServer`]: measured on a 2-core Linux VM
/// (`herd-bench spawn`), a start+join of a trivial task takes about 0.5 ms
/// through the forkserver against about 2 ms for `Spawn`, and the forkserver
/// forks from a small single-threaded process, so it is also safe in a
/// multi-threaded parent (the reason Python 3.14 made it its default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum StartMethod {
    /// Re-execute this program (`/proc/self/exe`) for every child: the
    /// child starts from a clean slate and sees the parent's current
    /// environment and working directory.
    Spawn,
    /// Fork each child from a forkserver: a single-threaded copy of this
    /// program started (by re-execution) on first use. Children see the
    /// environment and working directory the forkserver started with.
    #[default]
    ForkServer,
}

static DEFAULT_METHOD: AtomicU8 = AtomicU8::new(0);

/// Sets the start method used when a builder does not choose one (Python's
/// `multiprocessing.set_start_method`).
pub fn set_start_method(method: StartMethod) {
    DEFAULT_METHOD.store(
        match method {
            StartMethod::ForkServer => 0,
            StartMethod::Spawn => 1,
        },
        Ordering::Relaxed,
    );
}

/// The start method used when a builder does not choose one.
pub fn start_method() -> StartMethod {
    match DEFAULT_METHOD.load(Ordering::Relaxed) {
        1 => StartMethod::Spawn,
        _ => StartMethod::ForkServer,
    }
}

/// Where a child's standard stream goes.
#[derive(Debug, Default)]
#[non_exhaustive]
pub enum Stdio {
    /// The parent's own stream (the default for stdout and stderr).
    #[default]
    Inherit,
    /// `/dev/null` (the default for stdin, as in Python).
    Null,
    /// This file descriptor: a file, a pipe end, a socket.
    Fd(OwnedFd),
}

impl Stdio {
    /// The parent's own stream.
    pub fn inherit() -> Self {
        Self::Inherit
    }

    /// `/dev/null`.
    pub fn null() -> Self {
        Self::Null
    }

    /// How a spawned program gets stream `which` (0, 1 or 2).
    pub(crate) fn stream_fd(&self, which: i32) -> io::Result<os::StreamFd<'_>> {
        Ok(match self {
            Self::Inherit => os::StreamFd::Inherit,
            _ => os::StreamFd::Use(self.as_fd_for(which)?),
        })
    }

    /// The fd a forkserver child gets as stream `which` (0, 1 or 2).
    pub(crate) fn as_fd_for(&self, which: i32) -> io::Result<BorrowedFd<'_>> {
        match self {
            // SAFETY: the standard streams stay open for the process's life.
            Self::Inherit => Ok(unsafe { BorrowedFd::borrow_raw(which) }),
            Self::Null => dev_null(),
            Self::Fd(fd) => Ok(fd.as_fd()),
        }
    }
}

/// `/dev/null`, opened once for reading and writing.
fn dev_null() -> io::Result<BorrowedFd<'static>> {
    static NULL: OnceLock<OwnedFd> = OnceLock::new();
    if let Some(fd) = NULL.get() {
        return Ok(fd.as_fd());
    }
    let f: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?
        .into();
    Ok(NULL.get_or_init(|| f).as_fd())
}

impl From<OwnedFd> for Stdio {
    fn from(fd: OwnedFd) -> Self {
        Self::Fd(fd)
    }
}

impl From<std::fs::File> for Stdio {
    fn from(f: std::fs::File) -> Self {
        Self::Fd(f.into())
    }
}

impl From<std::io::PipeWriter> for Stdio {
    fn from(p: std::io::PipeWriter) -> Self {
        Self::Fd(p.into())
    }
}

impl From<std::io::PipeReader> for Stdio {
    fn from(p: std::io::PipeReader) -> Self {
        Self::Fd(p.into())
    }
}

/// Configures a child process that runs one task; [`start`](Self::start)
/// launches it. Made by [`Process::builder`].
///
/// ```
/// use std::time::Duration;
///
/// #[herd::task]
/// fn greet(who: String) -> String {
///     format!("hello, {who}")
/// }
///
/// fn main() {
///     herd::init();
///     let mut p = herd::Process::builder(greet, ("herd".to_owned(),))
///         .name("greeter")
///         .daemon(true)
///         .start_method(herd::StartMethod::Spawn)
///         .bootstrap_timeout(Duration::from_secs(30))
///         .start()
///         .unwrap();
///     assert_eq!(p.name(), "greeter");
///     assert_eq!(p.join().unwrap(), "hello, herd");
/// }
/// ```
#[derive(Debug)]
#[must_use = "a builder does nothing until start() is called"]
pub struct ProcessBuilder<R> {
    task_type: TypeId,
    task_type_name: &'static str,
    args: Result<Vec<u8>, String>,
    /// File descriptors of shared objects among the arguments.
    passed: Vec<OwnedFd>,
    name: Option<String>,
    daemon: bool,
    method: Option<StartMethod>,
    stdio: [Stdio; 3],
    executable: Option<PathBuf>,
    bootstrap_timeout: Duration,
    terminate_grace: Duration,
    _result: PhantomData<fn() -> R>,
}

impl Process<()> {
    /// Starts configuring a child process that will run `task(args...)`.
    ///
    /// `task` is a plain function registered with `#[herd::task]`; `args` is
    /// the tuple of its arguments (`()` for none, `(x,)` for one), so a wrong
    /// argument type is a compile error.
    pub fn builder<F, A>(task: F, args: A) -> ProcessBuilder<F::Output>
    where
        F: TaskFn<A>,
        A: Serialize,
        F::Output: Serialize + DeserializeOwned,
    {
        let _ = task;
        let (args, passed) = ipc::collect_fds(|| task::encode(&args));
        ProcessBuilder {
            task_type: TypeId::of::<F>(),
            task_type_name: type_name::<F>(),
            args,
            passed,
            name: None,
            daemon: false,
            method: None,
            stdio: [Stdio::Null, Stdio::Inherit, Stdio::Inherit],
            executable: None,
            bootstrap_timeout: Duration::from_secs(20),
            terminate_grace: Duration::from_secs(2),
            _result: PhantomData,
        }
    }
}

/// Starts `task(args...)` in a child process with the default settings.
///
/// ```
/// #[herd::task]
/// fn square(x: i64) -> i64 {
///     x * x
/// }
///
/// fn main() {
///     herd::init();
///     let mut p = herd::spawn(square, (12,)).unwrap();
///     assert_eq!(p.join().unwrap(), 144);
/// }
/// ```
pub fn spawn<F, A>(task: F, args: A) -> Result<Process<F::Output>, StartError>
where
    F: TaskFn<A>,
    A: Serialize,
    F::Output: Serialize + DeserializeOwned,
{
    Process::builder(task, args).start()
}

impl<R: DeserializeOwned> ProcessBuilder<R> {
    /// The child's name (default `Process-N`, as in Python).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Whether the child is a daemon: terminated when this process exits,
    /// where a non-daemon child is waited for.
    pub fn daemon(mut self, daemon: bool) -> Self {
        self.daemon = daemon;
        self
    }

    /// How to start the child (default: [`start_method()`]).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// The child's standard input (default: `/dev/null`, as in Python).
    pub fn stdin(mut self, s: impl Into<Stdio>) -> Self {
        self.stdio[0] = s.into();
        self
    }

    /// The child's standard output (default: inherited).
    pub fn stdout(mut self, s: impl Into<Stdio>) -> Self {
        self.stdio[1] = s.into();
        self
    }

    /// The child's standard error (default: inherited).
    pub fn stderr(mut self, s: impl Into<Stdio>) -> Self {
        self.stdio[2] = s.into();
        self
    }

    /// The program to execute (Python's `set_executable`); default: this
    /// very program. Setting it implies [`StartMethod::Spawn`]. It must be the
    /// same build, or the child refuses the task.
    pub fn executable(mut self, path: impl Into<PathBuf>) -> Self {
        self.executable = Some(path.into());
        self
    }

    /// How long the child has to accept the task (default 20 s). A child
    /// that does not answer in time is killed and `start` fails.
    pub fn bootstrap_timeout(mut self, timeout: Duration) -> Self {
        self.bootstrap_timeout = timeout;
        self
    }

    /// How long [`Process::terminate`] waits after SIGTERM before SIGKILL
    /// (default 2 s).
    pub fn terminate_grace(mut self, grace: Duration) -> Self {
        self.terminate_grace = grace;
        self
    }

    /// Starts the child and waits until it has accepted the task (its
    /// arguments decoded). Every failure to start is returned here.
    pub fn start(self) -> Result<Process<R>, StartError> {
        if !child::initialized() || std::env::var_os(spawn::BOOTSTRAP_ENV).is_some() {
            return Err(StartError::NotInitialized);
        }
        let entry = task::find_by_type(self.task_type).ok_or(StartError::UnregisteredTask {
            task: self.task_type_name,
        })?;
        if task::find_by_name(entry.name).is_err() {
            return Err(StartError::AmbiguousTask { name: entry.name });
        }
        let args = self.args.map_err(|reason| StartError::ArgsEncode {
            task: entry.name,
            reason,
        })?;
        let (identity, default_name) = child::next_child_identity();
        let name = self.name.unwrap_or(default_name);
        let request = Request {
            task: entry.name.to_owned(),
            fingerprint: (entry.fingerprint)(),
            build_id: task::build_id(),
            args,
            name: name.clone(),
            daemon: self.daemon,
            identity,
            parent_pid: std::process::id(),
        };
        let frame = protocol::frame(&request).map_err(|reason| StartError::ArgsEncode {
            task: entry.name,
            reason,
        })?;
        let method = if self.executable.is_some() {
            StartMethod::Spawn
        } else {
            self.method.unwrap_or_else(start_method)
        };
        let (pid, link, mut stream, written) = match method {
            StartMethod::Spawn => {
                let exe = self.executable.unwrap_or_else(os::self_exe);
                let (s, written) =
                    spawn::spawn(&exe, Role::Child, &self.stdio, &frame, &self.passed)
                        .map_err(StartError::Spawn)?;
                (s.pid, Link::Direct { pidfd: s.pidfd }, s.sock, written)
            }
            StartMethod::ForkServer => {
                let (s, written) = forkserver::spawn_child(
                    &self.stdio,
                    &frame,
                    &self.passed,
                    Instant::now().checked_add(self.bootstrap_timeout),
                )
                .map_err(StartError::ForkServer)?;
                (
                    s.pid,
                    Link::Served {
                        pidfd: s.pidfd,
                        status: s.status,
                        server: s.server,
                    },
                    s.sock,
                    written,
                )
            }
        };
        drop(self.stdio);
        // Without the duplicate (fd exhaustion) the exit handler cannot
        // drain this child's socket; everything else still works.
        let sock_dup = os::dup(stream.as_fd()).ok();
        let record = Arc::new(ChildRecord::new(pid, name, self.daemon, link, sock_dup));
        let mut reader = FrameReader::default();
        match bootstrap(
            &record,
            &mut stream,
            &mut reader,
            &frame[written..],
            self.bootstrap_timeout,
        ) {
            Ok(()) => {
                children::register(Arc::clone(&record));
                Ok(Process::new(record, stream, reader, self.terminate_grace))
            }
            Err(e) => {
                let _ = record.kill();
                Err(e)
            }
        }
    }
}

/// Sends the request and waits for `Accepted`, all before the deadline.
fn bootstrap(
    record: &ChildRecord,
    stream: &mut UnixStream,
    reader: &mut FrameReader,
    frame: &[u8],
    timeout: Duration,
) -> Result<(), StartError> {
    let pid = record.pid;
    let io_err = |source: io::Error| StartError::Bootstrap { pid, source };
    // `None`: no deadline (a timeout too large to represent).
    let deadline = Instant::now().checked_add(timeout);
    let timed_out = StartError::BootstrapTimeout { pid, timeout };
    match protocol::write_all_deadline(stream, frame, deadline) {
        Ok(true) => {}
        Ok(false) => return Err(timed_out),
        // The child closed its end: it died or refused; its answer says which.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        Err(e) => return Err(io_err(e)),
    }
    loop {
        reader.fill(stream).map_err(io_err)?;
        match reader.next_frame() {
            Ok(Some(body)) => {
                return match task::decode::<Reply>(&body) {
                    Ok(Reply::Accepted) => Ok(()),
                    Ok(Reply::Refused(refusal)) => Err(StartError::Refused { pid, refusal }),
                    Ok(other) => Err(io_err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unexpected bootstrap reply {other:?}"),
                    ))),
                    Err(e) => Err(io_err(io::Error::new(io::ErrorKind::InvalidData, e))),
                };
            }
            Ok(None) => {}
            Err(e) => return Err(io_err(io::Error::new(io::ErrorKind::InvalidData, e))),
        }
        if reader.eof {
            let status = record
                .wait_exit(Some(Instant::now() + Duration::from_secs(5)))
                .map_err(io_err)?;
            return match status {
                Some(status) => Err(StartError::DiedDuringStartup { pid, status }),
                None => Err(io_err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the child closed the bootstrap socket",
                ))),
            };
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(timed_out);
        }
        let ready =
            os::wait_readable(&[stream.as_fd(), record.pidfd()], deadline).map_err(io_err)?;
        if ready[1] && !ready[0] {
            // Exited without a word: drain once more, then report the death.
            reader.fill(stream).map_err(io_err)?;
            if reader.leftover() == 0 {
                let status = record
                    .wait_exit(Some(Instant::now() + Duration::from_secs(5)))
                    .map_err(io_err)?;
                if let Some(status) = status {
                    return Err(StartError::DiedDuringStartup { pid, status });
                }
            }
        }
    }
}
