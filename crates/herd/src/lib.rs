//! # herd
//!
//! Python's `multiprocessing` model for Rust — run a function in a child
//! process, get its typed result back — without Python's failures: no
//! orphans, no zombies, no hangs when a child dies, no pickle.
//!
//! ```
//! #[herd::task]
//! fn fib(n: u64) -> u64 {
//!     if n < 2 { n } else { fib(n - 1) + fib(n - 2) }
//! }
//!
//! fn main() {
//!     herd::init(); // first line of main: a child runs its task here and exits
//!     let mut p = herd::spawn(fib, (20,)).unwrap();
//!     assert_eq!(p.join().unwrap(), 6765);
//! }
//! ```
//!
//! ## The one line a program needs
//!
//! `herd::init()` must be the **first line of `main`**. A child is this same
//! program, re-executed (or forked from a forkserver that was re-executed);
//! `init()` recognises a child by an environment variable, runs the requested
//! task and exits, so the child never runs the rest of `main`. In the program
//! you run, it returns at once. If it was not called, [`ProcessBuilder::start`]
//! fails with [`StartError::NotInitialized`] rather than starting a child that
//! would run `main`.
//!
//! ## Tasks
//!
//! A task is a plain, non-generic function whose arguments and result are
//! serde types, marked with [`#[herd::task]`](macro@task). The attribute adds
//! the function to a link-time registry under a stable name
//! (`module_path!()::name`) with a fingerprint of its argument and return
//! types. The child finds the function by that name, checks the fingerprint
//! and the build id, and only then decodes the arguments: a child that is not
//! the same build refuses with [`Refusal::BuildMismatch`]; nothing is found by
//! raw function-pointer offsets. Arguments are a tuple, so a wrong argument
//! type is a compile error.
//!
//! ## Failures are values
//!
//! * a panic in the child → [`ProcessError::Panicked`] with message,
//!   location and backtrace;
//! * a child killed by a signal → [`ProcessError::Signaled`] naming it;
//! * arguments that do not deserialize in the child → [`StartError::Refused`]
//!   from `start`; a result that does not serialize →
//!   [`ProcessError::ResultEncode`];
//! * a child that does not accept its task within the bootstrap deadline is
//!   killed and `start` returns [`StartError::BootstrapTimeout`].
//!
//! ## Shared state
//!
//! [`sync`] has the seed's locks and Python's other synchronisation objects
//! (`Lock`, `RLock`, `Semaphore`, `Event`, `Condition`, `Barrier`) and
//! `Value`/`Array` in shared memory. They are task arguments like any other,
//! and robust: a holder that dies is reported to the next acquirer, never a
//! lock held forever.
//!
//! ## Queues and pipes
//!
//! [`Queue`], [`JoinableQueue`] and [`SimpleQueue`] carry typed items
//! between processes through shared memory; [`pipe`] gives two
//! [`Connection`]s. Like everything shared, they are task arguments. A
//! `put` that returned `Ok` has the item in shared memory, and a producer or
//! consumer killed at any instant leaves the queue consistent (see
//! [`queue`] for exactly what happens to the one item it was handling).
//!
//! ## Pools
//!
//! [`Pool`] is Python's `Pool` over worker processes ([`Pool::new`]) or
//! threads ([`Pool::threads`]), with the same task functions. A worker
//! killed mid-task fails that task alone, with the signal's name, and is
//! replaced; see [`pool`] for every failure and what it does.
//!
//! ```
//! #[herd::task]
//! fn cube(x: i64) -> i64 {
//!     x * x * x
//! }
//!
//! fn main() {
//!     herd::init();
//!     let pool = herd::Pool::new(2).unwrap();
//!     assert_eq!(pool.map(cube, [1, 2, 3]).unwrap(), vec![1, 8, 27]);
//! }
//! ```
//!
//! ## Exit and parent death
//!
//! When this program exits normally (returning from `main`, or
//! `std::process::exit`), herd terminates its **daemon** children and then
//! **waits for the non-daemon ones**, in that order — as Python does. When
//! this program dies abnormally (SIGKILL, abort, a crash), every child it
//! started is SIGKILLed within milliseconds, daemon or not, together with its
//! process group (whatever the child started itself); Python leaves all of
//! them running. Each child runs in its own process group, so
//! [`Process::terminate`] also reaches the child's own children, and Ctrl-C
//! in a terminal reaches only the parent (whose death then ends the
//! children).
//!
//! ## Testing code that spawns processes under `cargo test`
//!
//! The default test harness owns `main`, so a test binary cannot call
//! `herd::init()` first. Declare the test target with `harness = false` and
//! a `main` that calls `herd::init()` and then runs the tests, for instance
//! with [`libtest-mimic`](https://docs.rs/libtest-mimic) (herd's own tests do
//! this; see `crates/herd/tests/process.rs`):
//!
//! ```toml
//! [[test]]
//! name = "spawning"
//! harness = false
//! ```
//!
//! Doctests need nothing special: write the `fn main` with `herd::init()`
//! first, as the examples on this page do.
//!
//! # Caveats
//!
//! * Linux only for now (pidfds, `waitid(P_PIDFD)`, `/proc`); the system
//!   calls live behind one module so other platforms can follow.
//! * Children started through the forkserver see the environment and working
//!   directory the forkserver started with, not later changes (Python's
//!   forkserver has the same rule); use [`StartMethod::Spawn`] when they matter.
//! * A child that exited stays a zombie until it is joined, or until the next
//!   `start`/[`active_children`] call reaps it after its handle was dropped.
//! * `herd::init()` must run before any thread starts: the forkserver refuses
//!   to fork from a multi-threaded process. With an async runtime, call it
//!   first in a plain `fn main` and build the runtime after it, rather than
//!   using the runtime's `#[main]` attribute.
//! * A child runs in its own process group, so one given the terminal as
//!   stdin ([`Stdio::inherit`]) is stopped (SIGTTIN) if it reads from it;
//!   the default stdin is `/dev/null`, as in Python.

pub mod aio;
mod backoff;
mod ipc;
pub mod manager;
mod os;
mod pipe;
pub mod pool;
mod process;
pub mod queue;
pub mod sync;
mod task;
pub mod thread;

pub use pipe::{Connection, DEFAULT_MAX_MESSAGE, RecvError, SendError, pipe};
pub use pool::{AsyncResult, Backend, Pool, PoolBuilder, PoolError, TaskError, TaskEvent};
pub use process::{
    ChildInfo, CurrentProcess, ExitStatus, Process, ProcessBuilder, ProcessError, ProcessState,
    Refusal, Signal, StartError, StartMethod, Stdio, active_children, current_process,
    forkserver_pid, init, set_start_method, spawn, start_method,
};
pub use queue::{GetError, JoinableQueue, PutError, Queue, QueueBuilder, SimpleQueue};
pub use task::{BatchRun, ItemFailure, PanicReport, PreparedTask, RunFailure, TaskEntry, TaskFn};

/// Registers a function as a herd task. See the [crate docs](crate#tasks).
///
/// ```
/// #[herd::task]
/// fn shout(s: String) -> String {
///     s.to_uppercase()
/// }
/// # fn main() {}
/// ```
///
/// Generic functions cannot be tasks (a child must find exactly one function
/// by name):
///
/// ```compile_fail
/// #[herd::task]
/// fn id<T>(x: T) -> T { x }
/// # fn main() {}
/// ```
pub use herd_macros::task;

/// Registers an existing function as a task — what `#[herd::task]` expands
/// to, for functions you cannot annotate (write it in the module that names
/// the function).
///
/// ```
/// fn triple(x: u32) -> u32 {
///     x * 3
/// }
/// herd::register_task!(triple);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! register_task {
    ($f:ident) => {
        const _: () = {
            #[$crate::__private::linkme::distributed_slice($crate::__private::TASKS)]
            #[linkme(crate = $crate::__private::linkme)]
            static ENTRY: $crate::TaskEntry = $crate::TaskEntry {
                name: ::core::concat!(::core::module_path!(), "::", ::core::stringify!($f)),
                type_id: || $crate::__private::type_id_of_val(&$f),
                fingerprint: || $crate::__private::fingerprint_of($f),
                prepare: |input| $crate::__private::prepare($f, input),
                run_batch: |input| $crate::__private::run_batch($f, input),
            };
        };
    };
}

#[doc(hidden)]
pub use task::__private;
