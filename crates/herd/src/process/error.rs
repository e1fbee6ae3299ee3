//! Errors of starting and of joining a child process.

use std::io;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::status::Signal;
use crate::task::PanicReport;

/// Why [`ProcessBuilder::start`](super::ProcessBuilder::start) failed. A
/// start error is always returned by `start`, never deferred to `join`.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StartError {
    /// `herd::init()` was not called at the top of `main`. The child re-runs
    /// this program and would run `main`'s body without it.
    #[error(
        "herd::init() was not called: make it the first line of main (a child re-executes this program)"
    )]
    NotInitialized,
    /// The function was not registered with `#[herd::task]`.
    #[error("task `{task}` is not registered: add #[herd::task] above the function")]
    UnregisteredTask {
        /// The function's type name.
        task: &'static str,
    },
    /// Two registered tasks share one name, so a child could not tell them apart.
    #[error("two registered tasks are named `{name}`: rename one")]
    AmbiguousTask {
        /// The shared name.
        name: &'static str,
    },
    /// The arguments could not be serialized.
    #[error("arguments of task `{task}` could not be serialized: {reason}")]
    ArgsEncode {
        /// The task's name.
        task: &'static str,
        /// What the encoder said.
        reason: String,
    },
    /// The operating system could not start the process.
    #[error("could not start a child process")]
    Spawn(#[source] io::Error),
    /// The forkserver could not be started or reached.
    #[error("the forkserver is unavailable")]
    ForkServer(#[source] io::Error),
    /// The child did not answer the bootstrap in time.
    #[error(
        "child {pid} did not answer within {timeout:?}; is herd::init() the first line of main?"
    )]
    BootstrapTimeout {
        /// The child's pid (it has been killed).
        pid: u32,
        /// The bootstrap deadline that passed.
        timeout: Duration,
    },
    /// The child refused the task.
    #[error("child {pid} refused the task: {refusal}")]
    Refused {
        /// The child's pid (it has exited).
        pid: u32,
        /// Why it refused.
        refusal: Refusal,
    },
    /// The child died during the bootstrap.
    #[error("child {pid} died during start-up ({status})")]
    DiedDuringStartup {
        /// The child's pid.
        pid: u32,
        /// How it ended.
        status: super::ExitStatus,
    },
    /// The bootstrap conversation failed.
    #[error("bootstrap with child {pid} failed")]
    Bootstrap {
        /// The child's pid.
        pid: u32,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Why a child refused a task.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Refusal {
    /// The child's program has no task by that name.
    #[error("no task named `{name}` in the child's program")]
    UnknownTask {
        /// The requested name.
        name: String,
    },
    /// The child has several tasks by that name.
    #[error("several tasks named `{name}` in the child's program")]
    AmbiguousTask {
        /// The requested name.
        name: String,
    },
    /// The task exists but its argument or return types differ.
    #[error("task `{name}` has different argument or return types in the child")]
    FingerprintMismatch {
        /// The task's name.
        name: String,
    },
    /// The child is not the same build as the parent.
    #[error(
        "the child is a different build of the program (build id {child:016x}, parent {parent:016x})"
    )]
    BuildMismatch {
        /// The parent's build id.
        parent: u64,
        /// The child's build id.
        child: u64,
    },
    /// The arguments did not deserialize in the child.
    #[error("arguments did not deserialize: {reason}")]
    ArgsDecode {
        /// What the decoder said.
        reason: String,
    },
    /// The request itself was malformed.
    #[error("malformed bootstrap request: {reason}")]
    Malformed {
        /// What the decoder said.
        reason: String,
    },
}

/// Why [`Process::join`](super::Process::join) produced no value.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// The task panicked in the child.
    #[error("process {pid} {report}")]
    Panicked {
        /// The child's pid.
        pid: u32,
        /// Message, location and backtrace of the panic.
        report: PanicReport,
    },
    /// A signal killed the child before it returned a result.
    #[error("process {pid} was killed by {signal}")]
    Signaled {
        /// The child's pid.
        pid: u32,
        /// The signal.
        signal: Signal,
    },
    /// The child exited before it returned a result (for example, the task
    /// called `std::process::exit`).
    #[error("process {pid} exited with code {code} before returning a result")]
    ExitedWithoutResult {
        /// The child's pid.
        pid: u32,
        /// Its exit code.
        code: i32,
    },
    /// The task's return value could not be serialized in the child.
    #[error("process {pid}: the result could not be serialized: {reason}")]
    ResultEncode {
        /// The child's pid.
        pid: u32,
        /// What the encoder said.
        reason: String,
    },
    /// The result could not be deserialized in the parent.
    #[error("process {pid}: the result could not be deserialized: {reason}")]
    ResultDecode {
        /// The child's pid.
        pid: u32,
        /// What the decoder said.
        reason: String,
    },
    /// The child sent something that is not a valid frame.
    #[error("process {pid} sent a malformed message: {reason}")]
    Protocol {
        /// The child's pid.
        pid: u32,
        /// What was wrong.
        reason: String,
    },
    /// The exit status could not be learned (the forkserver died).
    #[error("process {pid}: its exit status was lost")]
    StatusLost {
        /// The child's pid.
        pid: u32,
    },
    /// The result was already taken by an earlier join.
    #[error("process {pid} was already joined")]
    AlreadyJoined {
        /// The child's pid.
        pid: u32,
    },
    /// An operating-system error while waiting.
    #[error("waiting for process {pid} failed")]
    Io {
        /// The child's pid.
        pid: u32,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}
