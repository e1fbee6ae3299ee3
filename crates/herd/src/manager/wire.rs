//! The manager's wire: length-prefixed MessagePack frames of plain data
//! (nothing on the wire can name code to run), and the authentication
//! handshake.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sha2::Sha256;

use super::ManagerStats;
use crate::task::{decode, encode};

/// The protocol version both sides must speak: a client refuses a manager
/// that speaks another (at once, without retrying). Version 3 added
/// [`Request::Stats`]; a version-2 manager would take it for a malformed
/// frame and hang up, and the client would retry it until its reconnection
/// window closed.
pub(crate) const VERSION: u32 = 3;

/// The handshake's first frame, from the manager.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ServerHello {
    pub(crate) version: u32,
    pub(crate) nonce: [u8; 32],
    /// The largest frame the manager accepts.
    pub(crate) max_frame: u64,
}

/// The client's answer: its own nonce and its proof of the key.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ClientProof {
    pub(crate) nonce: [u8; 32],
    pub(crate) mac: [u8; 32],
    /// Asks for admin rights (shutdown).
    pub(crate) admin: bool,
}

/// The manager's proof of the key (or why the client was refused).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ServerProof {
    Accepted { mac: [u8; 32] },
    Refused(String),
}

/// What a client asks.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    /// Adds an item; `msg` (unique per client) makes a retried put harmless.
    Put {
        queue: String,
        body: ByteBuf,
        client: u64,
        msg: u64,
    },
    /// Adds several items in one frame (ids `msg`, `msg + 1`, ...).
    PutMany {
        queue: String,
        bodies: Vec<ByteBuf>,
        client: u64,
        msg: u64,
    },
    /// Takes up to `max` items (at least one, waiting up to `wait_ms`).
    GetMany {
        queue: String,
        max: u32,
        wait_ms: u64,
        lease_ms: u64,
    },
    /// Acknowledges several leases; answers with those that were unknown.
    AckMany { leases: Vec<u64> },
    /// Takes an item under a lease, waiting up to `wait_ms`.
    Get {
        queue: String,
        wait_ms: u64,
        lease_ms: u64,
    },
    /// The leased item is done: gone for good.
    Ack { lease: u64 },
    /// The leased item goes back (or to the dead letters at the cap).
    Nack { lease: u64 },
    /// Extends a lease.
    Heartbeat { lease: u64, lease_ms: u64 },
    /// Stores a result under a key.
    SetResult { key: String, body: ByteBuf },
    /// Waits up to `wait_ms` for the result under `key`.
    WaitResult { key: String, wait_ms: u64 },
    /// Items waiting in a queue.
    Len { queue: String },
    /// Stops the manager (admin only, and only if the manager allows it).
    Shutdown,
    /// The manager's statistics (any client). New variants go last: a
    /// variant's index is its tag on the wire.
    Stats,
}

/// What the manager answers.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Response {
    Done,
    Delivery {
        lease: u64,
        id: u64,
        body: ByteBuf,
        deliveries: u32,
    },
    Empty,
    Deliveries(Vec<(u64, u64, ByteBuf, u32)>),
    Unknown(Vec<u64>),
    Result(Option<ByteBuf>),
    Len(u64),
    Error(String),
    Stats(ManagerStats),
}

/// Why a frame could not be read.
#[derive(Debug)]
pub(crate) enum FrameError {
    Io(io::Error),
    /// The peer closed the connection between frames.
    Closed,
    Oversize(usize),
    Malformed(String),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "{e}"),
            Self::Closed => f.write_str("the connection was closed"),
            Self::Oversize(n) => write!(f, "a frame of {n} bytes is over the limit"),
            Self::Malformed(e) => write!(f, "a malformed frame: {e}"),
        }
    }
}

/// Writes one frame: a big-endian u32 length and the encoded value.
pub(crate) fn write_frame<W: Write, T: Serialize>(
    w: &mut W,
    value: &T,
    max: usize,
) -> io::Result<()> {
    let bytes = encode(value).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    if bytes.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a frame of {} bytes is over the {max}-byte limit",
                bytes.len()
            ),
        ));
    }
    let mut frame = Vec::with_capacity(4 + bytes.len());
    frame.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    frame.extend_from_slice(&bytes);
    w.write_all(&frame)?;
    w.flush()
}

/// Reads one frame of at most `max` bytes. `idle` is consulted whenever a
/// read times out between frames (true: keep waiting); a frame that has
/// begun must complete by `frame_deadline` from its first byte.
pub(crate) fn read_frame<R: Read, T: DeserializeOwned>(
    r: &mut R,
    max: usize,
    frame_deadline: Duration,
    idle: &mut dyn FnMut() -> bool,
) -> Result<T, FrameError> {
    let mut len = [0u8; 4];
    read_full(r, &mut len, true, frame_deadline, idle)?;
    let n = u32::from_be_bytes(len) as usize;
    if n > max {
        return Err(FrameError::Oversize(n));
    }
    let mut body = vec![0u8; n];
    read_full(r, &mut body, false, frame_deadline, idle)?;
    decode(&body).map_err(FrameError::Malformed)
}

fn read_full<R: Read>(
    r: &mut R,
    buf: &mut [u8],
    between_frames: bool,
    frame_deadline: Duration,
    idle: &mut dyn FnMut() -> bool,
) -> Result<(), FrameError> {
    let mut got = 0;
    let mut started: Option<Instant> = (!between_frames).then(Instant::now);
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 && between_frames => return Err(FrameError::Closed),
            Ok(0) => {
                return Err(FrameError::Malformed(
                    "the connection ended inside a frame".to_owned(),
                ));
            }
            Ok(n) => {
                got += n;
                let t = *started.get_or_insert_with(Instant::now);
                // Checked after every read too: a peer trickling a byte at
                // a time never lets a read time out.
                if got < buf.len() && t.elapsed() >= frame_deadline {
                    return Err(FrameError::Malformed(
                        "a frame did not complete in time".to_owned(),
                    ));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                match started {
                    Some(t) if t.elapsed() >= frame_deadline => {
                        return Err(FrameError::Malformed(
                            "a frame did not complete in time".to_owned(),
                        ));
                    }
                    Some(_) => {}
                    None => {
                        if !idle() {
                            return Err(FrameError::Io(e));
                        }
                    }
                }
            }
            // TLS reports a peer that left without a close_notify this way.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && got == 0 && between_frames => {
                return Err(FrameError::Closed);
            }
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(())
}

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256 over a role label and the two nonces (`None` only if the
/// HMAC refused the key, which it never does: long keys are hashed).
pub(crate) fn proof(
    key: &[u8],
    label: &[u8],
    first: &[u8; 32],
    second: &[u8; 32],
) -> Option<[u8; 32]> {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).ok()?;
    mac.update(label);
    mac.update(first);
    mac.update(second);
    Some(mac.finalize().into_bytes().into())
}

/// Checks `mac` against the expected proof in constant time.
pub(crate) fn verify(
    key: &[u8],
    label: &[u8],
    first: &[u8; 32],
    second: &[u8; 32],
    mac: &[u8; 32],
) -> bool {
    let Ok(mut m) = <HmacSha256 as Mac>::new_from_slice(key) else {
        return false;
    };
    m.update(label);
    m.update(first);
    m.update(second);
    m.verify_slice(mac).is_ok()
}

/// 32 random bytes from the OS.
pub(crate) fn nonce() -> io::Result<[u8; 32]> {
    let mut n = [0u8; 32];
    getrandom::fill(&mut n).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(n)
}

/// Labels keep the client's proof from being replayed as the server's, and
/// a worker's from passing for an admin's.
pub(crate) const CLIENT_LABEL: &[u8] = b"herd-manager-client-v2";
pub(crate) const SERVER_LABEL: &[u8] = b"herd-manager-server-v2";
pub(crate) const ADMIN_CLIENT_LABEL: &[u8] = b"herd-manager-admin-client-v2";
pub(crate) const ADMIN_SERVER_LABEL: &[u8] = b"herd-manager-admin-server-v2";

#[cfg(test)]
mod tests {
    //! The frame decoder against arbitrary input (property tests, run with
    //! the unit tests): it returns an error or a value, never panics, never
    //! reads past a frame, and never allocates more than the limit.

    use super::*;
    use proptest::prelude::*;

    fn read_all(bytes: &[u8], max: usize) -> Vec<Result<Request, String>> {
        let mut r = bytes;
        let mut out = Vec::new();
        loop {
            let mut never = || false;
            match read_frame::<_, Request>(&mut r, max, Duration::from_secs(1), &mut never) {
                Err(FrameError::Closed) => return out,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    return out;
                }
                Ok(v) => out.push(Ok(v)),
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = read_all(&bytes, 256);
        }

        #[test]
        fn valid_frames_round_trip_and_truncations_fail(
            queue in "[a-z]{0,12}",
            body in proptest::collection::vec(any::<u8>(), 0..300),
            cut in 0usize..400,
        ) {
            let req = Request::Put { queue: queue.clone(), body: ByteBuf::from(body.clone()), client: 1, msg: 2 };
            let mut wire = Vec::new();
            write_frame(&mut wire, &req, 1 << 20).unwrap();
            match read_all(&wire, 1 << 20).as_slice() {
                [Ok(Request::Put { queue: q, body: b, client: 1, msg: 2 })] => {
                    prop_assert_eq!(q, &queue);
                    prop_assert_eq!(b.as_ref(), body.as_slice());
                }
                other => prop_assert!(false, "{:?}", other),
            }
            if cut < wire.len() {
                let got = read_all(&wire[..cut], 1 << 20);
                prop_assert!(got.iter().all(Result::is_err), "{:?}", got);
            }
            // Over the limit: refused before the body is read.
            if wire.len() > 8 {
                let got = read_all(&wire, wire.len() - 5);
                prop_assert!(matches!(got.as_slice(), [Err(_)]), "{:?}", got);
            }
        }
    }
}
