//! Exit statuses, signals and process states.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::os;

/// A signal number, printed by name (`SIGKILL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Signal(i32);

impl Signal {
    /// `SIGTERM`: ask to terminate.
    pub const TERM: Self = Self(os::signals::TERM);
    /// `SIGKILL`: terminate now.
    pub const KILL: Self = Self(os::signals::KILL);
    /// `SIGSTOP`: stop (pause) the process.
    pub const STOP: Self = Self(os::signals::STOP);
    /// `SIGCONT`: continue a stopped process.
    pub const CONT: Self = Self(os::signals::CONT);
    /// `SIGSEGV`: invalid memory access.
    pub const SEGV: Self = Self(os::signals::SEGV);
    /// `SIGABRT`: abort.
    pub const ABRT: Self = Self(os::signals::ABRT);

    /// Wraps a raw signal number.
    pub const fn from_raw(raw: i32) -> Self {
        Self(raw)
    }

    /// The raw signal number.
    pub const fn as_raw(self) -> i32 {
        self.0
    }

    /// The conventional name (`"SIGKILL"`), when the number is a common one.
    pub fn name(self) -> Option<&'static str> {
        os::signal_name(self.0)
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "signal {}", self.0),
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitStatus {
    /// It exited with this code.
    Exited(i32),
    /// A signal terminated it.
    Signaled(Signal),
}

impl ExitStatus {
    /// Python's `exitcode` convention: the exit code, or minus the signal.
    pub fn code(self) -> i32 {
        match self {
            Self::Exited(c) => c,
            Self::Signaled(s) => -s.as_raw(),
        }
    }

    /// Whether it exited with code 0.
    pub fn success(self) -> bool {
        self == Self::Exited(0)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exited(c) => write!(f, "exit code {c}"),
            Self::Signaled(s) => write!(f, "killed by {s}"),
        }
    }
}

/// A child's state as the OS reports it: the seed's process-state diagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProcessState {
    /// Running or runnable (ready): `R`.
    Running,
    /// Waiting for an event, interruptible: `S` (and idle `I`).
    Sleeping,
    /// Waiting in uninterruptible (usually disk) sleep: `D`.
    DiskSleep,
    /// Stopped by a signal or a tracer: `T`/`t`.
    Stopped,
    /// Exited but not yet reaped by its parent: `Z`.
    Zombie,
    /// Exited and reaped, with this exit code.
    Exited(i32),
    /// Killed by this signal and reaped.
    Signaled(Signal),
}

impl ProcessState {
    pub(crate) fn from_letter(c: char) -> Self {
        match c {
            'R' => Self::Running,
            'D' => Self::DiskSleep,
            'T' | 't' => Self::Stopped,
            'Z' | 'X' | 'x' => Self::Zombie,
            _ => Self::Sleeping,
        }
    }

    pub(crate) fn from_exit(status: ExitStatus) -> Self {
        match status {
            ExitStatus::Exited(c) => Self::Exited(c),
            ExitStatus::Signaled(s) => Self::Signaled(s),
        }
    }

    /// Whether the process still exists and has not exited.
    pub fn is_alive(self) -> bool {
        matches!(
            self,
            Self::Running | Self::Sleeping | Self::DiskSleep | Self::Stopped
        )
    }
}

impl fmt::Display for ProcessState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Running => f.write_str("running"),
            Self::Sleeping => f.write_str("sleeping"),
            Self::DiskSleep => f.write_str("disk-sleep"),
            Self::Stopped => f.write_str("stopped"),
            Self::Zombie => f.write_str("zombie"),
            Self::Exited(c) => write!(f, "exited({c})"),
            Self::Signaled(s) => write!(f, "signaled({s})"),
        }
    }
}
