//! Threads in the seed's model (S8, S10): a name, a daemon flag, `join`
//! with a timeout, `is_alive`, and [`current_thread`] with the main thread
//! named `MainThread` — a thin layer over [`std::thread`], which has the
//! rest.
//!
//! ```
//! # fn main() {
//! herd::init();
//! let t = herd::thread::Builder::new()
//!     .name("LoopThread")
//!     .spawn(|| herd::thread::current_thread().name().to_owned())
//!     .unwrap();
//! assert_eq!(t.join().unwrap(), "LoopThread");
//! assert_eq!(herd::thread::current_thread().name(), "MainThread");
//! # }
//! ```
//!
//! # Daemon threads and the end of `main`
//!
//! As in Python, a program waits at exit for its **non-daemon** threads
//! and not for its daemon ones. Rust alone ends every thread when `main`
//! returns; herd arranges Python's rule with its exit handler (`atexit`),
//! armed when the first non-daemon thread or child process starts: when
//! `main` returns or [`std::process::exit`] is called, the handler waits
//! until every non-daemon thread started through [`Builder`] or [`spawn`]
//! has finished (threads they start meanwhile included), and only then
//! deals with child processes (daemons terminated, others waited for) —
//! Python's order. A non-daemon thread that itself calls `exit` is not
//! waited for by the handler it runs.
//!
//! One case cannot be helped: a non-daemon thread that calls
//! `std::process::exit` *while* the program is already exiting blocks
//! forever (Rust lets one thread run `exit`), so the handler waiting for it
//! never finishes. Make such threads daemons, or have them return.
//! Daemon threads are not waited for and end with the process. (Threads
//! started with plain `std::thread::spawn` are not herd's to wait for: Rust
//! ends them at exit, as before.) A non-daemon thread that never ends keeps
//! the program from exiting, exactly as in Python; a program that must end
//! regardless makes such threads daemons.

use std::fmt;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::{PanicReport, os};

/// Why a thread produced no value.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ThreadError {
    /// The thread's function panicked.
    #[error("thread {name:?} {report}")]
    Panicked {
        /// The thread's name.
        name: String,
        /// Message, location and backtrace.
        report: PanicReport,
    },
    /// The value was already taken by an earlier join.
    #[error("thread {0:?} was already joined")]
    AlreadyJoined(String),
}

/// When a thread finished, for joiners and for the exit handler.
#[derive(Debug, Default)]
struct Finish {
    done: Mutex<bool>,
    cv: Condvar,
}

impl Finish {
    fn set(&self) {
        *self.done.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.cv.notify_all();
    }

    fn is_set(&self) -> bool {
        *self.done.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until finished or `deadline`; true when finished.
    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        let mut done = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        while !*done {
            done = match deadline {
                None => self.cv.wait(done).unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    self.cv
                        .wait_timeout(done, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
        true
    }
}

/// One non-daemon thread to wait for at exit.
struct Waited {
    finish: Arc<Finish>,
    id: std::thread::ThreadId,
}

/// Non-daemon threads still to wait for at exit, and the pid they belong
/// to (a process forked from this one inherits the list, not the threads).
static NON_DAEMON: Mutex<(u32, Vec<Waited>)> = Mutex::new((0, Vec::new()));

/// Called by herd's exit handler: waits for every non-daemon thread of this
/// process, including those started while waiting, except the thread that
/// is exiting (it would wait for itself).
pub(crate) fn wait_non_daemon_at_exit() {
    let me = std::thread::current().id();
    let pid = std::process::id();
    loop {
        let batch = {
            let mut list = NON_DAEMON.lock().unwrap_or_else(PoisonError::into_inner);
            if list.0 != pid {
                return;
            }
            std::mem::take(&mut list.1)
        };
        let batch: Vec<Waited> = batch.into_iter().filter(|w| w.id != me).collect();
        if batch.is_empty() {
            return;
        }
        for w in batch {
            w.finish.wait_until(None);
        }
    }
}

fn register_non_daemon(finish: &Arc<Finish>, id: std::thread::ThreadId) {
    crate::process::arm_exit_handler();
    let pid = std::process::id();
    let mut list = NON_DAEMON.lock().unwrap_or_else(PoisonError::into_inner);
    if list.0 != pid {
        // First use in this process (or a fork of one that used it).
        *list = (pid, Vec::new());
    }
    list.1.retain(|w| !w.finish.is_set());
    list.1.push(Waited {
        finish: Arc::clone(finish),
        id,
    });
}

/// Configures a thread: Python's `Thread(name=..., daemon=...)`.
#[derive(Debug, Default, Clone)]
#[must_use]
pub struct Builder {
    name: Option<String>,
    daemon: bool,
    stack_size: Option<usize>,
}

impl Builder {
    /// A builder for an unnamed, non-daemon thread (named `Thread-N`).
    pub fn new() -> Self {
        Self::default()
    }

    /// The thread's name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// A daemon thread is not waited for at exit.
    pub fn daemon(mut self, daemon: bool) -> Self {
        self.daemon = daemon;
        self
    }

    /// The stack size, in bytes (std's default otherwise).
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.stack_size = Some(bytes);
        self
    }

    /// Starts the thread running `f`.
    pub fn spawn<F, T>(self, f: F) -> io::Result<JoinHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        crate::task::install_panic_hook();
        let name = self
            .name
            .unwrap_or_else(|| format!("Thread-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
        let result: Arc<Mutex<Option<Result<T, PanicReport>>>> = Arc::new(Mutex::new(None));
        let finish = Arc::new(Finish::default());
        let mut std_builder = std::thread::Builder::new().name(name.clone());
        if let Some(bytes) = self.stack_size {
            std_builder = std_builder.stack_size(bytes);
        }
        if name.contains('\0') {
            // std would panic on it.
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a thread name cannot contain a NUL byte",
            ));
        }
        let (slot, fin) = (Arc::clone(&result), Arc::clone(&finish));
        let spawned = std_builder.spawn(move || {
            let out = catch_unwind(AssertUnwindSafe(f)).map_err(|p| PanicReport::from_payload(&*p));
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(out);
            fin.set();
        });
        match spawned {
            Ok(inner) => {
                if !self.daemon {
                    // Registered by the spawning thread before `spawn`
                    // returns: the exit it could race is its own.
                    register_non_daemon(&finish, inner.thread().id());
                }
                Ok(JoinHandle {
                    result,
                    finish,
                    name,
                    daemon: self.daemon,
                    thread: inner.thread().clone(),
                    joined: false,
                })
            }
            Err(e) => Err(e),
        }
    }
}

/// Starts an unnamed, non-daemon thread (`Thread-N`).
pub fn spawn<F, T>(f: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    Builder::new().spawn(f)
}

/// A started thread: Python's `Thread` after `start()`.
///
/// Dropping the handle detaches the thread (a non-daemon one is still
/// waited for at exit).
pub struct JoinHandle<T> {
    result: Arc<Mutex<Option<Result<T, PanicReport>>>>,
    finish: Arc<Finish>,
    name: String,
    daemon: bool,
    thread: std::thread::Thread,
    joined: bool,
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle")
            .field("name", &self.name)
            .field("daemon", &self.daemon)
            .field("alive", &self.is_alive())
            .finish()
    }
}

impl<T> JoinHandle<T> {
    /// The thread's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it is a daemon thread.
    pub fn daemon(&self) -> bool {
        self.daemon
    }

    /// The std handle of the thread (for `unpark`, its id).
    pub fn thread(&self) -> &std::thread::Thread {
        &self.thread
    }

    /// Whether the thread's function is still running.
    pub fn is_alive(&self) -> bool {
        !self.finish.is_set()
    }

    /// Waits for the thread and returns its value.
    pub fn join(mut self) -> Result<T, ThreadError> {
        self.finish.wait_until(None);
        self.take()
    }

    /// Waits at most `timeout`: `Ok(None)` if the thread is still running
    /// (Python's `join(timeout)` followed by `is_alive()`).
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<Option<T>, ThreadError> {
        if !self.finish.wait_until(Instant::now().checked_add(timeout)) {
            return Ok(None);
        }
        self.take().map(Some)
    }

    fn take(&mut self) -> Result<T, ThreadError> {
        if self.joined {
            return Err(ThreadError::AlreadyJoined(self.name.clone()));
        }
        self.joined = true;
        match self
            .result
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            Some(Ok(v)) => Ok(v),
            Some(Err(report)) => Err(ThreadError::Panicked {
                name: self.name.clone(),
                report,
            }),
            None => Err(ThreadError::AlreadyJoined(self.name.clone())),
        }
    }
}

/// The calling thread, as Python's `threading.current_thread()` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentThread {
    name: String,
    id: std::thread::ThreadId,
    main: bool,
}

impl CurrentThread {
    /// The thread's name: `MainThread` for the main thread, the name given
    /// to [`Builder::name`] (or std's), else `Thread-<id>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// std's id of the thread.
    pub fn id(&self) -> std::thread::ThreadId {
        self.id
    }

    /// Whether it is the process's main thread.
    pub fn is_main(&self) -> bool {
        self.main
    }
}

/// The calling thread: its name (the main thread is `MainThread`), id, and
/// whether it is the main thread.
pub fn current_thread() -> CurrentThread {
    let t = std::thread::current();
    let main = os::on_main_thread();
    let name = if main {
        "MainThread".to_owned()
    } else {
        t.name()
            .map_or_else(|| format!("Thread-{:?}", t.id()), str::to_owned)
    };
    CurrentThread {
        name,
        id: t.id(),
        main,
    }
}
