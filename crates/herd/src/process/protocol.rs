//! The bootstrap conversation between a parent and one child, over a unix
//! stream socket: length-prefixed postcard frames.
//!
//! ```text
//! parent → child   Request { task, fingerprint, build id, args, identity }
//! child  → parent  Accepted | Refused(reason)
//! child  → parent  Returned(result) | Panicked(report) | ResultEncode(reason)
//! ```

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::error::Refusal;
use crate::os;
use crate::task::PanicReport;

/// Largest frame accepted (1 GiB): a corrupt length never makes us allocate
/// without bound.
pub(crate) const MAX_FRAME: usize = 1 << 30;

/// What the parent asks of a child.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Request {
    pub(crate) task: String,
    pub(crate) fingerprint: u64,
    pub(crate) build_id: u64,
    pub(crate) args: Vec<u8>,
    pub(crate) name: String,
    pub(crate) daemon: bool,
    pub(crate) identity: Vec<u32>,
    pub(crate) parent_pid: u32,
}

/// What a child tells its parent.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    Accepted,
    Refused(Refusal),
    Returned(Vec<u8>),
    Panicked(PanicReport),
    ResultEncode(String),
}

/// Encodes one frame: a little-endian `u32` length, then the body.
pub(crate) fn frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, String> {
    let body = crate::task::encode(msg)?;
    if body.len() > MAX_FRAME {
        return Err(format!(
            "message of {} bytes exceeds the {MAX_FRAME}-byte limit",
            body.len()
        ));
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Blocking: reads one frame body and the fds sent with it (the child side).
pub(crate) fn read_frame_blocking(stream: &mut UnixStream) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    // The fds ride on the first bytes of the frame, so read the header with
    // recvmsg; the body is plain bytes.
    let mut len = [0u8; 4];
    let mut got = 0;
    let mut fds = Vec::new();
    while got < 4 {
        let (n, more) = os::recv_with_fds(stream.as_fd(), &mut len[got..])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
        fds.extend(more);
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "frame too large",
        ));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    Ok((body, fds))
}

/// Writes all of `bytes` to a non-blocking stream before `deadline`.
/// `Ok(false)` means the deadline passed first.
pub(crate) fn write_all_deadline(
    stream: &mut UnixStream,
    mut bytes: &[u8],
    deadline: Option<Instant>,
) -> io::Result<bool> {
    while !bytes.is_empty() {
        match stream.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !os::wait_writable(stream.as_fd(), deadline)? {
                    return Ok(false);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Writes what a non-blocking stream takes now, with `fds` attached to the
/// first byte; returns the byte count. A fresh socket always takes the first
/// byte, so the fds always go.
pub(crate) fn write_some(
    stream: &mut UnixStream,
    bytes: &[u8],
    fds: &[OwnedFd],
) -> io::Result<usize> {
    let mut done = 0;
    if !fds.is_empty() {
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
        done = os::send_some_with_fds(stream.as_fd(), bytes, &borrowed)?;
    }
    while done < bytes.len() {
        match stream.write(&bytes[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Incremental reader of frames from a non-blocking stream.
#[derive(Debug, Default)]
pub(crate) struct FrameReader {
    buf: Vec<u8>,
    /// The peer closed its end.
    pub(crate) eof: bool,
}

impl FrameReader {
    /// Reads whatever is available without blocking.
    pub(crate) fn fill(&mut self, stream: &mut UnixStream) -> io::Result<()> {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    self.eof = true;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes the next complete frame body, if one is buffered.
    pub(crate) fn next_frame(&mut self) -> Result<Option<Vec<u8>>, String> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > MAX_FRAME {
            return Err(format!("frame length {len} exceeds the limit"));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let body = self.buf[4..4 + len].to_vec();
        self.buf.drain(..4 + len);
        Ok(Some(body))
    }

    /// Bytes of an incomplete frame left over.
    pub(crate) fn leftover(&self) -> usize {
        self.buf.len()
    }
}
