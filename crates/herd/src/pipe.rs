//! [`pipe`]: two connected [`Connection`]s, Python's
//! `multiprocessing.Pipe`, over a unix stream socket with length-prefixed
//! frames. A connection is a task argument like any other (its socket
//! travels beside the bytes).

use std::fmt;
use std::io::{self, Read, Write};
use std::marker::PhantomData;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde::de::{DeserializeOwned, Error as _};
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use crate::{ipc, os};

/// The largest frame a connection accepts by default (64 MiB).
pub const DEFAULT_MAX_MESSAGE: usize = 64 << 20;

/// Why a `send` failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SendError {
    /// The other end is closed.
    #[error("the other end of the pipe is closed")]
    Disconnected,
    /// This end only receives (a one-way pipe).
    #[error("this end of the pipe only receives")]
    NotWritable,
    /// The message is larger than the connection's limit.
    #[error("a message of {size} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The value did not serialize.
    #[error("the value did not serialize: {0}")]
    Encode(String),
    /// The socket failed.
    #[error("the pipe failed")]
    Io(#[source] io::Error),
}

/// Why a `recv` returned nothing.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RecvError {
    /// The other end is closed and everything it sent was received.
    #[error("the other end of the pipe is closed")]
    Disconnected,
    /// This end only sends (a one-way pipe).
    #[error("this end of the pipe only sends")]
    NotReadable,
    /// The timeout passed with no complete message.
    #[error("timed out waiting for a message")]
    Timeout,
    /// A frame announced more bytes than the limit: the stream cannot be
    /// trusted any more (the connection is closed for reading).
    #[error("a frame of {size} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// The announced size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The message did not deserialize (it was consumed; the next one is
    /// unaffected).
    #[error("a message did not deserialize: {0}")]
    Decode(String),
    /// The socket failed.
    #[error("the pipe failed")]
    Io(#[source] io::Error),
}

/// One end of a [`pipe`]. `send`/`recv` take `&mut self`: a stream must not
/// be written by two threads at once.
pub struct Connection<T> {
    stream: UnixStream,
    can_send: bool,
    can_recv: bool,
    buf: Vec<u8>,
    eof: bool,
    broken: bool,
    max_message: usize,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> fmt::Debug for Connection<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("send", &self.can_send)
            .field("recv", &self.can_recv)
            .finish()
    }
}

/// Two connected ends. With `duplex`, both send and receive; without, the
/// first only receives and the second only sends (as in Python).
///
/// ```
/// #[herd::task]
/// fn echo(mut conn: herd::Connection<String>) {
///     let msg = conn.recv().unwrap();
///     conn.send(&format!("{msg}!")).unwrap();
/// }
///
/// fn main() {
///     herd::init();
///     let (mut here, there) = herd::pipe(true).unwrap();
///     let mut child = herd::spawn(echo, (there,)).unwrap();
///     here.send(&"hello".to_owned()).unwrap();
///     assert_eq!(here.recv().unwrap(), "hello!");
///     child.join().unwrap();
/// }
/// ```
pub fn pipe<T>(duplex: bool) -> io::Result<(Connection<T>, Connection<T>)> {
    let (a, b) = os::stream_pair()?;
    let a = Connection::new(a, duplex, true)?;
    let b = Connection::new(b, true, duplex)?;
    Ok((a, b))
}

impl<T> Connection<T> {
    fn new(fd: OwnedFd, can_send: bool, can_recv: bool) -> io::Result<Self> {
        let stream = UnixStream::from(fd);
        stream.set_nonblocking(true)?;
        Ok(Self {
            stream,
            can_send,
            can_recv,
            buf: Vec::new(),
            eof: false,
            broken: false,
            max_message: DEFAULT_MAX_MESSAGE,
            _t: PhantomData,
        })
    }

    /// Sets the largest message this end sends or accepts.
    pub fn set_max_message(&mut self, limit: usize) {
        self.max_message = limit.min(u32::MAX as usize);
    }

    /// Sends raw bytes as one message.
    pub fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), SendError> {
        if !self.can_send {
            return Err(SendError::NotWritable);
        }
        if bytes.len() > self.max_message {
            return Err(SendError::TooLarge {
                size: bytes.len(),
                limit: self.max_message,
            });
        }
        let mut frame = Vec::with_capacity(4 + bytes.len());
        frame.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        frame.extend_from_slice(bytes);
        let mut rest = &frame[..];
        while !rest.is_empty() {
            match self.stream.write(rest) {
                Ok(0) => return Err(SendError::Disconnected),
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    os::wait_writable(self.stream.as_fd(), None).map_err(SendError::Io)?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    return Err(SendError::Disconnected);
                }
                Err(e) => return Err(SendError::Io(e)),
            }
        }
        Ok(())
    }

    /// Receives one message's raw bytes, waiting until one arrives.
    pub fn recv_bytes(&mut self) -> Result<Vec<u8>, RecvError> {
        self.recv_bytes_until(None)
    }

    /// Whether a message (or the end of the stream) is ready within
    /// `timeout`.
    pub fn poll(&mut self, timeout: Duration) -> Result<bool, RecvError> {
        if !self.can_recv {
            return Err(RecvError::NotReadable);
        }
        let deadline = Instant::now().checked_add(timeout);
        // One look at the socket first, so a zero timeout still sees data
        // that has arrived.
        self.fill(Some(Instant::now()))?;
        loop {
            if self.frame_len()?.is_some() || self.eof {
                return Ok(true);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
            self.fill(deadline)?;
        }
    }

    /// The length of the complete frame at the front of the buffer, if any.
    fn frame_len(&mut self) -> Result<Option<usize>, RecvError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > self.max_message {
            self.broken = true;
            return Err(RecvError::TooLarge {
                size: len,
                limit: self.max_message,
            });
        }
        Ok((self.buf.len() >= 4 + len).then_some(len))
    }

    /// Reads what is there; if nothing is, waits (until `deadline`) for
    /// bytes first. (Reading before polling saves a system call per
    /// message while messages are flowing.)
    fn fill(&mut self, deadline: Option<Instant>) -> Result<(), RecvError> {
        let mut chunk = [0u8; 64 * 1024];
        let mut polled = false;
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    if n < chunk.len() {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if polled {
                        return Ok(());
                    }
                    polled = true;
                    if !os::wait_readable(&[self.stream.as_fd()], deadline)
                        .map_err(RecvError::Io)?[0]
                    {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    self.eof = true;
                    return Ok(());
                }
                Err(e) => return Err(RecvError::Io(e)),
            }
        }
    }

    fn recv_bytes_until(&mut self, deadline: Option<Instant>) -> Result<Vec<u8>, RecvError> {
        if !self.can_recv {
            return Err(RecvError::NotReadable);
        }
        if self.broken {
            return Err(RecvError::Disconnected);
        }
        let mut looked = false;
        loop {
            if let Some(len) = self.frame_len()? {
                let body = self.buf[4..4 + len].to_vec();
                self.buf.drain(..4 + len);
                return Ok(body);
            }
            if self.eof {
                return Err(RecvError::Disconnected);
            }
            // Past the deadline only after one look at the socket, so a
            // zero timeout still receives what has arrived.
            if looked && deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(RecvError::Timeout);
            }
            looked = true;
            self.fill(deadline)?;
        }
    }
}

impl<T: Serialize> Connection<T> {
    /// Sends `value`.
    pub fn send(&mut self, value: &T) -> Result<(), SendError> {
        let bytes = crate::task::encode(value).map_err(SendError::Encode)?;
        self.send_bytes(&bytes)
    }
}

impl<T: DeserializeOwned> Connection<T> {
    /// Receives the next value, waiting until one arrives.
    pub fn recv(&mut self) -> Result<T, RecvError> {
        let bytes = self.recv_bytes_until(None)?;
        crate::task::decode(&bytes).map_err(RecvError::Decode)
    }

    /// Receives the next value, waiting at most `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<T, RecvError> {
        let bytes = self.recv_bytes_until(Instant::now().checked_add(timeout))?;
        crate::task::decode(&bytes).map_err(RecvError::Decode)
    }
}

/// What crosses the process boundary for a connection.
#[derive(Serialize, Deserialize)]
struct Wire {
    fd: u32,
    send: bool,
    recv: bool,
    max: u64,
}

impl<T> Serialize for Connection<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !self.buf.is_empty() {
            return Err(S::Error::custom(
                "a connection with received, unread bytes cannot be passed on",
            ));
        }
        let fd = ipc::export_fd(self.stream.as_fd()).map_err(S::Error::custom)?;
        Wire {
            fd,
            send: self.can_send,
            recv: self.can_recv,
            max: self.max_message as u64,
        }
        .serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for Connection<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = Wire::deserialize(d)?;
        let fd = ipc::import_fd(w.fd).map_err(D::Error::custom)?;
        let mut c = Self::new(fd, w.send, w.recv).map_err(D::Error::custom)?;
        c.max_message = usize::try_from(w.max)
            .unwrap_or(DEFAULT_MAX_MESSAGE)
            .min(u32::MAX as usize);
        Ok(c)
    }
}
