//! The [`Process`] handle: join, wait, signal, observe.

use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::children::ChildRecord;
use super::error::ProcessError;
use super::protocol::{FrameReader, Reply};
use super::status::{ExitStatus, ProcessState, Signal};
use crate::os;
use crate::task;

/// A started child process that runs one task returning `T`.
///
/// Dropping the handle does not stop the child: a non-daemon child is
/// waited for when this program exits, a daemon child is terminated then
/// (see the crate docs, "Exit and parent death").
#[derive(Debug)]
pub struct Process<T> {
    record: Arc<ChildRecord>,
    stream: UnixStream,
    reader: FrameReader,
    /// The child's final message, once read.
    outcome: Option<Reply>,
    joined: bool,
    grace: Duration,
    _result: PhantomData<fn() -> T>,
}

impl<T> Process<T> {
    pub(crate) fn new(
        record: Arc<ChildRecord>,
        stream: UnixStream,
        reader: FrameReader,
        grace: Duration,
    ) -> Self {
        Self {
            record,
            stream,
            reader,
            outcome: None,
            joined: false,
            grace,
            _result: PhantomData,
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.record.pid
    }

    /// The child's name.
    pub fn name(&self) -> &str {
        &self.record.name
    }

    /// Whether the child is a daemon.
    pub fn daemon(&self) -> bool {
        self.record.daemon
    }

    /// The child's pidfd: readable once the child has exited. Useful to wait
    /// on many children at once, or from an event loop.
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.record.pidfd()
    }

    /// Whether the child is still running. Reaps it if it has exited.
    pub fn is_alive(&self) -> bool {
        matches!(self.record.poll_exit(), Ok(None))
    }

    /// Python's `exitcode`: `None` while running, then the exit code, or
    /// minus the number of the signal that killed it. Reaps the child if it
    /// has exited.
    pub fn exitcode(&self) -> Option<i32> {
        self.record.poll_exit().ok().flatten().map(ExitStatus::code)
    }

    /// How the child ended, once it has (reaping it); never blocks.
    pub fn exit_status(&self) -> io::Result<Option<ExitStatus>> {
        self.record.poll_exit()
    }

    /// The child's state as the OS reports it now (running, sleeping,
    /// disk-sleep, stopped, zombie), or how it ended once reaped. Never reaps.
    pub fn state(&self) -> io::Result<ProcessState> {
        self.record.state()
    }

    /// SIGTERM to the child's process group (and SIGCONT, so a stopped child
    /// acts on it), up to the grace period for it to exit, then SIGKILL.
    /// Always returns, with how the child ended.
    pub fn terminate(&mut self) -> io::Result<ExitStatus> {
        self.record.terminate(self.grace)
    }

    /// SIGKILL to the child's process group; returns once it is reaped.
    pub fn kill(&mut self) -> io::Result<ExitStatus> {
        self.record.kill()
    }

    /// Sends `signal` to the child process alone (through its pidfd).
    pub fn signal(&self, signal: Signal) -> io::Result<()> {
        self.record.signal(signal)
    }
}

impl<T: DeserializeOwned> Process<T> {
    /// Waits for the child to finish and returns the task's value.
    ///
    /// Reads the result while waiting, so a child with a large result
    /// never deadlocks against its parent.
    pub fn join(&mut self) -> Result<T, ProcessError> {
        match self.join_until(None)? {
            Some(v) => Ok(v),
            None => Err(ProcessError::Io {
                pid: self.pid(),
                source: io::Error::other("wait without deadline returned early"),
            }),
        }
    }

    /// Waits at most `timeout`; `Ok(None)` if the child is still running.
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<Option<T>, ProcessError> {
        // A timeout too large to represent is no timeout.
        self.join_until(Instant::now().checked_add(timeout))
    }

    /// Waits until `deadline`; `Ok(None)` if the child is still running.
    pub fn join_deadline(&mut self, deadline: Instant) -> Result<Option<T>, ProcessError> {
        self.join_until(Some(deadline))
    }

    /// [`join`](Self::join) for async code, on any runtime (tokio, smol,
    /// ...): reads the result as it comes, resolves when the child ended.
    /// See [`aio`](crate::aio) for how it waits.
    pub fn join_async(&mut self) -> impl std::future::Future<Output = Result<T, ProcessError>> + '_
    where
        T: Send,
    {
        let fds: Arc<std::sync::Mutex<Vec<OwnedFd>>> = Arc::default();
        let for_wait = Arc::clone(&fds);
        crate::aio::Retry::new(
            move || match self.try_join() {
                Ok(Some(v)) => std::task::Poll::Ready(Ok(v)),
                Err(e) => std::task::Poll::Ready(Err(e)),
                Ok(None) => match self.ready_fds() {
                    Ok(now) => {
                        *fds.lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = now;
                        std::task::Poll::Pending
                    }
                    Err(source) => std::task::Poll::Ready(Err(ProcessError::Io {
                        pid: self.pid(),
                        source,
                    })),
                },
            },
            move |deadline| {
                let fds = for_wait
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
                os::wait_readable(&borrowed, Some(deadline)).map_or(true, |r| r.contains(&true))
            },
        )
    }

    /// Copies of the descriptors `join` would wait on now.
    fn ready_fds(&self) -> io::Result<Vec<OwnedFd>> {
        let fds = if self.outcome.is_some() {
            vec![self.record.pidfd()]
        } else if self.reader.eof {
            vec![self.record.exit_fd()]
        } else {
            vec![self.stream.as_fd(), self.record.exit_fd()]
        };
        fds.into_iter().map(os::dup).collect()
    }

    /// Returns the value if the child has finished; `Ok(None)` otherwise.
    pub fn try_join(&mut self) -> Result<Option<T>, ProcessError> {
        self.join_until(Some(Instant::now()))
    }

    fn join_until(&mut self, deadline: Option<Instant>) -> Result<Option<T>, ProcessError> {
        let pid = self.pid();
        if self.joined {
            return Err(ProcessError::AlreadyJoined { pid });
        }
        let io_err = |source| ProcessError::Io { pid, source };
        loop {
            self.read_outcome()?;
            // Quick: a dead forkserver child's status report is not waited
            // for here; its death (the pidfd) is enough once its final
            // message is in.
            if let Some(status) = self.record.poll_exit_quick().map_err(|e| lost_or(pid, e))? {
                // Everything the child wrote is buffered by now.
                self.read_outcome()?;
                self.joined = true;
                self.record.mark_joined();
                return self.finish(Some(status)).map(Some);
            }
            // With the child's final message in hand, its death is all that
            // is left to wait for: the pidfd says so as soon as it exits,
            // before a forkserver has reaped it and reported the status
            // (which `exitcode()` collects later).
            let ended = self.outcome.is_some()
                && os::wait_readable(&[self.record.pidfd()], Some(Instant::now()))
                    .map_err(io_err)?[0];
            if ended {
                self.joined = true;
                self.record.mark_joined();
                // Our own child is reaped now (a forkserver's is reaped by
                // the forkserver; its status is collected on demand).
                if self.record.is_direct() {
                    let _ = self.record.poll_exit();
                }
                return self.finish(None).map(Some);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
            if self.outcome.is_some() {
                os::wait_readable(&[self.record.pidfd()], deadline)
            } else if self.reader.eof {
                os::wait_readable(&[self.record.exit_fd()], deadline)
            } else {
                os::wait_readable(&[self.stream.as_fd(), self.record.exit_fd()], deadline)
            }
            .map_err(io_err)?;
        }
    }

    /// Reads any buffered frames; keeps the child's final message.
    fn read_outcome(&mut self) -> Result<(), ProcessError> {
        let pid = self.pid();
        if self.outcome.is_some() {
            return Ok(());
        }
        if !self.reader.eof {
            self.reader
                .fill(&mut self.stream)
                .map_err(|source| ProcessError::Io { pid, source })?;
        }
        while let Some(body) = self
            .reader
            .next_frame()
            .map_err(|reason| ProcessError::Protocol { pid, reason })?
        {
            let reply: Reply =
                task::decode(&body).map_err(|reason| ProcessError::Protocol { pid, reason })?;
            if !matches!(reply, Reply::Accepted) {
                self.outcome = Some(reply);
                break;
            }
        }
        Ok(())
    }

    /// The join's answer: the child's final message, or, without one, how
    /// it ended (`status` is `Some` whenever `outcome` is `None`).
    fn finish(&mut self, status: Option<ExitStatus>) -> Result<T, ProcessError> {
        let pid = self.pid();
        match self.outcome.take() {
            Some(Reply::Returned(bytes)) => {
                task::decode(&bytes).map_err(|reason| ProcessError::ResultDecode { pid, reason })
            }
            Some(Reply::Panicked(report)) => Err(ProcessError::Panicked { pid, report }),
            Some(Reply::ResultEncode(reason)) => Err(ProcessError::ResultEncode { pid, reason }),
            Some(other) => Err(ProcessError::Protocol {
                pid,
                reason: format!("unexpected message {other:?}"),
            }),
            None => Err(match status {
                Some(ExitStatus::Signaled(signal)) => ProcessError::Signaled { pid, signal },
                Some(ExitStatus::Exited(code)) => ProcessError::ExitedWithoutResult { pid, code },
                None => ProcessError::StatusLost { pid },
            }),
        }
    }
}

impl<T> Drop for Process<T> {
    /// Nobody can receive the child's result any more: shut the socket, so
    /// a child blocked writing a large result fails its write and exits
    /// instead of waiting for a reader that will never come. The child
    /// itself runs on (see the type's docs).
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

fn lost_or(pid: u32, e: io::Error) -> ProcessError {
    if e.kind() == io::ErrorKind::BrokenPipe {
        ProcessError::StatusLost { pid }
    } else {
        ProcessError::Io { pid, source: e }
    }
}
