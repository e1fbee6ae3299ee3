//! Distributed processes (the seed's C10): a [`Manager`] serves named
//! queues and a result store on a TCP address to clients that know its
//! key; workers on other machines [`connect`], take tasks and put results —
//! Python's `BaseManager` (`task_master.py`/`task_worker.py`) without its
//! failures.
//!
//! * **Authentication**: mutual challenge-response with HMAC-SHA256 over
//!   fresh nonces from both sides, compared in constant time. The key never
//!   travels. Only typed, length-prefixed MessagePack frames of plain data
//!   cross the wire: nothing a client sends can name code to run (Python's
//!   manager unpickles, CVE-2020-10796).
//! * **At least once**: a worker takes a task under a lease and
//!   acknowledges it ([`Delivery::ack`]). If the worker dies, disconnects,
//!   or lets the lease lapse without a [`Delivery::heartbeat`], the task is
//!   delivered again; a task delivered too often (5 times by default) moves
//!   to the dead letters, the queue `<name>.dead`. Python's worker that dies
//!   after `get()` loses its task for good.
//! * **Results** are stored under a key; a submitter waits for one with
//!   [`Client::wait_result`].
//! * **Reconnection**: one connection per client, `TCP_NODELAY` on; a
//!   client whose connection breaks reconnects (for up to
//!   [`ClientBuilder::reconnect_for`]) and retries — a retried put is
//!   recognised and not added twice; a lease held by the broken connection
//!   was given back, so its ack reports [`ManagerError::LeaseLost`] and the
//!   task runs again elsewhere.
//! * **Admin**: `shutdown` needs a client authenticated with the manager's
//!   separate admin key ([`ManagerBuilder::admin_key`], off by default);
//!   the workers' key cannot open an admin connection (the role is part of
//!   the authenticated handshake).
//! * **Limits**: at most 1 024 connections (64 still authenticating); the
//!   whole handshake, TLS included, has one deadline; a frame must complete
//!   within 30 s however slowly it trickles; an answer never exceeds the
//!   frame limit (a `get_many` returns fewer items instead); an item too
//!   large for any answer is refused at `put`.
//! * **One request at a time per client**: calls on one `Client` (and its
//!   deliveries' acks and heartbeats) wait for each other, so a heartbeat
//!   sent while another thread waits in `get_timeout` waits too; use a
//!   second `Client` for heartbeats in that case.
//!
//! * **Persistence** (optional, [`ManagerBuilder::persist`]): accepted items
//!   and results in an embedded database (redb), committed before the
//!   answer; a restarted manager has them all.
//! * **TLS** (optional, [`ManagerBuilder::tls`], [`ClientBuilder::tls`]):
//!   rustls, with the HMAC handshake inside it.
//! * **Batches**: [`RemoteQueue::put_many`], [`RemoteQueue::get_many`],
//!   [`Client::ack_many`] — one round trip each.
//! * **Statistics**: [`Client::stats`] (any client, one round trip) and
//!   [`Manager::stats`] give a [`ManagerStats`]: uptime, open connections,
//!   stored results, and per queue the items waiting, leased and dead, with
//!   cumulative put, ack, delivery and redelivery counters — sample twice
//!   for throughput (`herd status` does).
//!
//! * **NATS JetStream** for scale-out: the same API with a `nats://`
//!   address ([`connect`]), the key being the NATS token. A work-queue
//!   stream and a durable pull consumer per queue; the consumer's AckWait is
//!   the lease ([`ClientBuilder::lease`], one per queue rather than per
//!   delivery), AckProgress the heartbeat; past the delivery cap
//!   ([`ClientBuilder::max_deliveries`]) a message is copied to `<name>.dead`
//!   and terminated; puts carry a `Nats-Msg-Id` (JetStream drops a retried
//!   one); results live in the KV bucket `herd_results`. A wait
//!   for the first item is at least 100 ms there (a shorter pull expiry
//!   stalls nats-server 2.9). One conformance
//!   suite runs against both backends.

mod nats;
mod server;
mod store;
mod tls;
mod wire;

use std::io;
use std::marker::PhantomData;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use thiserror::Error;

pub use server::{Manager, ManagerBuilder};
use tls::Stream;
use wire::{
    ADMIN_CLIENT_LABEL, ADMIN_SERVER_LABEL, CLIENT_LABEL, ClientProof, FrameError, Request,
    Response, SERVER_LABEL, ServerHello, ServerProof, VERSION, nonce, proof, read_frame, verify,
    write_frame,
};

use crate::task::{decode, encode};

/// Why a manager operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ManagerError {
    /// A network or OS error.
    #[error("manager connection: {0}")]
    Io(#[source] io::Error),
    /// The manager refused this client's key (or this client refused the
    /// manager's proof: a manager without the key).
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The peer sent something that is not a valid frame.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The manager answered with an error.
    #[error("the manager said: {0}")]
    Remote(String),
    /// The lease is gone (lapsed, or its connection broke): the task was
    /// given back and will run again.
    #[error("the lease was lost and the task given back: {0}")]
    LeaseLost(String),
    /// A value did not (de)serialize.
    #[error("a value did not (de)serialize: {0}")]
    Codec(String),
    /// No manager answered within the reconnection window.
    #[error("no manager at {addr} for {waited:?}: {last}")]
    Unreachable {
        /// The address.
        addr: String,
        /// How long reconnection was tried.
        waited: Duration,
        /// The last error.
        last: String,
    },
    /// The manager speaks another version of the protocol (one side is a
    /// different release of herd). Reported at once, not retried.
    #[error("the manager speaks protocol version {manager}, this client {client}")]
    Version {
        /// The manager's version.
        manager: u32,
        /// This client's version.
        client: u32,
    },
}

/// A manager's statistics ([`Client::stats`], [`Manager::stats`]): what is
/// there now, and counters that only grow, kept since the manager started
/// (not across restarts, even with [`ManagerBuilder::persist`]). Sample
/// twice to get throughput: `(b.put_total - a.put_total) / interval`.
///
/// On the NATS backend, see [`Client::stats`] for what each field means
/// there.
///
/// ```
/// # fn main() {
/// herd::init();
/// let manager = herd::manager::Manager::builder(b"secret").start("127.0.0.1:0").unwrap();
/// let client = herd::manager::connect(manager.addr(), b"secret").unwrap();
/// let tasks = client.queue::<u32>("tasks");
/// tasks.put_many(&[1, 2, 3]).unwrap();
/// tasks.get_timeout(std::time::Duration::from_secs(5)).unwrap().unwrap().ack().unwrap();
///
/// let stats = client.stats().unwrap();
/// assert_eq!(stats.connections, 1);
/// let q = stats.queue("tasks").unwrap();
/// assert_eq!((q.waiting, q.leased, q.dead), (2, 0, 0));
/// assert_eq!((q.put_total, q.delivered_total, q.acked_total), (3, 1, 1));
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ManagerStats {
    /// How long the manager has been running.
    pub uptime: Duration,
    /// Open, authenticated client connections (the asking one included).
    pub connections: u64,
    /// Every queue that has held an item since the manager started (or
    /// that it loaded from its database), `<name>.dead` ones included,
    /// sorted by name.
    pub queues: Vec<QueueStats>,
    /// Results stored ([`Client::set_result`]).
    pub results: u64,
}

impl ManagerStats {
    /// The statistics of the queue `name`, if the manager knows it.
    pub fn queue(&self, name: &str) -> Option<&QueueStats> {
        self.queues.iter().find(|q| q.name == name)
    }
}

/// One queue's statistics, in a [`ManagerStats`]. The `_total` counters
/// only grow; the others are what is there now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct QueueStats {
    /// The queue's name.
    pub name: String,
    /// Items waiting to be delivered ([`RemoteQueue::len`]).
    pub waiting: u64,
    /// Items delivered under a lease and not yet acknowledged.
    pub leased: u64,
    /// Items in its dead letters, the queue `<name>.dead` (waiting or
    /// leased); 0 if there is none.
    pub dead: u64,
    /// Items added: puts (a retried put counts once), and for a
    /// `<name>.dead` queue the dead letters moved in.
    pub put_total: u64,
    /// Items acknowledged (a retried ack counts once).
    pub acked_total: u64,
    /// Deliveries, redeliveries included.
    pub delivered_total: u64,
    /// Deliveries of an item delivered before (its lease lapsed, it was
    /// given back, or its connection ended).
    pub redelivered_total: u64,
}

impl QueueStats {
    /// An empty entry for the queue `name` (the backends fill it in).
    pub(crate) fn new(name: String) -> Self {
        Self {
            name,
            waiting: 0,
            leased: 0,
            dead: 0,
            put_total: 0,
            acked_total: 0,
            delivered_total: 0,
            redelivered_total: 0,
        }
    }

    /// Sorts by name, and sets each queue's `dead` from its `<name>.dead`
    /// queue's entry.
    pub(crate) fn sort_and_count_dead(queues: &mut [QueueStats]) {
        queues.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        for i in 0..queues.len() {
            let dead = format!("{}.dead", queues[i].name);
            queues[i].dead = queues
                .binary_search_by(|q| q.name.as_str().cmp(&dead))
                .map_or(0, |j| queues[j].waiting + queues[j].leased);
        }
    }
}

/// Connects to the manager at `addr` with `key` (as a worker or
/// submitter: no admin rights). A `nats://host:port` address uses NATS
/// JetStream instead, with `key` as the NATS token.
pub fn connect(addr: impl ToString, key: &[u8]) -> Result<Client, ManagerError> {
    Client::builder(addr, key).connect()
}

/// Connects with admin rights (for [`Client::shutdown`]), with the
/// manager's *admin* key ([`ManagerBuilder::admin_key`]).
pub fn connect_admin(addr: impl ToString, admin_key: &[u8]) -> Result<Client, ManagerError> {
    Client::builder(addr, admin_key).admin(true).connect()
}

/// Configures a [`Client`].
#[derive(Clone)]
#[must_use]
pub struct ClientBuilder {
    addr: String,
    key: Vec<u8>,
    admin: bool,
    reconnect_for: Duration,
    max_frame: usize,
    tls: Option<(Arc<rustls::ClientConfig>, String)>,
    tls_error: Option<String>,
    lease: Duration,
    max_deliveries: u32,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ClientBuilder")
            .field("addr", &self.addr)
            .field("admin", &self.admin)
            .field("reconnect_for", &self.reconnect_for)
            .field("tls", &self.tls.as_ref().map(|(_, name)| name))
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// Ask for admin rights (the key is then the manager's admin key).
    pub fn admin(mut self, admin: bool) -> Self {
        self.admin = admin;
        self
    }

    /// How long to keep trying to reach the manager when the connection
    /// breaks (default 30 s; zero: one attempt).
    pub fn reconnect_for(mut self, window: Duration) -> Self {
        self.reconnect_for = window;
        self
    }

    /// The lease of a delivery on the NATS backend (the consumer's
    /// AckWait; default 30 s). The embedded manager takes a lease per get.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// On the NATS backend, deliveries before a task moves to the dead
    /// letters (default 5; the embedded manager sets its own).
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.max_deliveries = n.max(1);
        self
    }

    /// Connects over TLS, trusting the PEM certificates in `ca_pem` and
    /// checking that the manager's certificate is for `server_name`.
    pub fn tls(mut self, ca_pem: &[u8], server_name: &str) -> Self {
        match tls::client_config(ca_pem) {
            Ok(config) => self.tls = Some((config, server_name.to_owned())),
            Err(e) => self.tls_error = Some(e.to_string()),
        }
        self
    }

    /// Connects and authenticates.
    pub fn connect(self) -> Result<Client, ManagerError> {
        if let Some(e) = &self.tls_error {
            return Err(ManagerError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                e.clone(),
            )));
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&nonce().map_err(ManagerError::Io)?[..8]);
        let client_id = u64::from_le_bytes(id);
        let frame_limit = self.max_frame;
        let nats = if self.addr.starts_with("nats://") {
            Some(Arc::new(nats::Nats::connect(
                &self.addr,
                &self.key,
                self.lease,
                self.max_deliveries,
                client_id,
            )?))
        } else {
            None
        };
        let inner = Arc::new(Inner {
            cfg: self,
            conn: Mutex::new(None),
            client_id,
            next_msg: AtomicU64::new(1),
            frame_limit: std::sync::atomic::AtomicUsize::new(frame_limit),
        });
        if nats.is_none() {
            let mut conn = inner.conn.lock().unwrap_or_else(PoisonError::into_inner);
            *conn = Some(inner.dial(server::deadline_after(inner.cfg.reconnect_for))?);
        }
        Ok(Client { inner, nats })
    }
}

#[derive(Debug)]
struct Inner {
    cfg: ClientBuilder,
    conn: Mutex<Option<Stream>>,
    client_id: u64,
    next_msg: AtomicU64,
    /// The smaller of this client's and the manager's frame limits.
    frame_limit: std::sync::atomic::AtomicUsize,
}

impl Inner {
    /// Connects and authenticates, retrying until `until`.
    fn dial(&self, until: Instant) -> Result<Stream, ManagerError> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(10);
        loop {
            match self.dial_once() {
                Ok(s) => return Ok(s),
                // A wrong key or another protocol version is not going to
                // get better by retrying.
                Err(e @ (ManagerError::Auth(_) | ManagerError::Version { .. })) => return Err(e),
                Err(e) if Instant::now() >= until => {
                    return Err(ManagerError::Unreachable {
                        addr: self.cfg.addr.clone(),
                        waited: started.elapsed(),
                        last: e.to_string(),
                    });
                }
                Err(_) => {
                    std::thread::sleep(pause.min(until.saturating_duration_since(Instant::now())));
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
            }
        }
    }

    fn dial_once(&self) -> Result<Stream, ManagerError> {
        let addr = self
            .cfg
            .addr
            .to_socket_addrs()
            .map_err(ManagerError::Io)?
            .next()
            .ok_or_else(|| {
                ManagerError::Io(io::Error::new(io::ErrorKind::InvalidInput, "no address"))
            })?;
        let stream =
            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(ManagerError::Io)?;
        stream.set_nodelay(true).map_err(ManagerError::Io)?;
        stream
            .set_write_timeout(Some(Duration::from_secs(30)))
            .map_err(ManagerError::Io)?;
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(ManagerError::Io)?;
        let max = self.cfg.max_frame;
        let mut stream = match &self.cfg.tls {
            None => Stream::Plain(stream),
            Some((config, name)) => {
                let mut s = tls::connect(config, name, stream).map_err(ManagerError::Io)?;
                s.complete_handshake(Instant::now() + Duration::from_secs(10))
                    .map_err(|e| ManagerError::Auth(format!("TLS: {e}")))?;
                s
            }
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut in_time = || Instant::now() < deadline;
        let hello: ServerHello =
            read_frame(&mut stream, 4096, Duration::from_secs(10), &mut in_time)
                .map_err(frame_err)?;
        if hello.version != VERSION {
            return Err(ManagerError::Version {
                manager: hello.version,
                client: VERSION,
            });
        }
        let limit = usize::try_from(hello.max_frame).unwrap_or(usize::MAX);
        self.frame_limit
            .store(limit.min(self.cfg.max_frame), Ordering::Relaxed);
        let ours = nonce().map_err(ManagerError::Io)?;
        let (client_label, server_label) = if self.cfg.admin {
            (ADMIN_CLIENT_LABEL, ADMIN_SERVER_LABEL)
        } else {
            (CLIENT_LABEL, SERVER_LABEL)
        };
        let mac = proof(&self.cfg.key, client_label, &hello.nonce, &ours)
            .ok_or_else(|| ManagerError::Auth("cannot compute a proof".to_owned()))?;
        write_frame(
            &mut stream,
            &ClientProof {
                nonce: ours,
                mac,
                admin: self.cfg.admin,
            },
            max,
        )
        .map_err(ManagerError::Io)?;
        let answer: ServerProof =
            read_frame(&mut stream, 4096, Duration::from_secs(10), &mut in_time).map_err(|e| {
                match e {
                    FrameError::Closed => {
                        ManagerError::Auth("the manager closed the connection".to_owned())
                    }
                    e => frame_err(e),
                }
            })?;
        match answer {
            ServerProof::Refused(why) => Err(ManagerError::Auth(why)),
            ServerProof::Accepted { mac } => {
                if verify(&self.cfg.key, server_label, &ours, &hello.nonce, &mac) {
                    Ok(stream)
                } else {
                    Err(ManagerError::Auth(
                        "the manager could not prove it has the key".to_owned(),
                    ))
                }
            }
        }
    }

    /// Sends `req` and reads the answer, reconnecting (and retrying) when
    /// the connection breaks.
    fn call(&self, req: &Request, wait: Duration) -> Result<Response, ManagerError> {
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let give_up = server::deadline_after(self.cfg.reconnect_for);
        let mut pause = Duration::from_millis(10);
        let mut failed = false;
        loop {
            let mut stream = match conn.take() {
                Some(s) => s,
                None => self.dial(give_up)?,
            };
            match self.exchange(&mut stream, req, wait) {
                Ok(resp) => {
                    *conn = Some(stream);
                    return Ok(resp);
                }
                Err(e @ (ManagerError::Protocol(_) | ManagerError::Codec(_))) => {
                    // The stream may be out of step: start afresh next time.
                    return Err(e);
                }
                Err(e) => {
                    // The connection broke: a new one, and the request again
                    // (pausing if it breaks again at once).
                    if Instant::now() >= give_up {
                        return Err(e);
                    }
                    if failed {
                        std::thread::sleep(
                            pause.min(give_up.saturating_duration_since(Instant::now())),
                        );
                        pause = (pause * 2).min(Duration::from_millis(500));
                    }
                    failed = true;
                }
            }
        }
    }

    fn exchange(
        &self,
        stream: &mut Stream,
        req: &Request,
        wait: Duration,
    ) -> Result<Response, ManagerError> {
        let limit = self.frame_limit.load(Ordering::Relaxed);
        write_frame(stream, req, limit).map_err(|e| {
            if e.kind() == io::ErrorKind::InvalidInput {
                // Over the limit: refused here, before anything was sent.
                ManagerError::Codec(e.to_string())
            } else {
                ManagerError::Io(e)
            }
        })?;
        // A manager's answer usually comes within microseconds.
        if stream.is_plain() {
            crate::backoff::poll_briefly(|| readable_now(stream.tcp()));
        }
        // The manager answers a waiting request when it is done waiting.
        let deadline = server::deadline_after(wait.saturating_add(Duration::from_secs(30)));
        let mut in_time = || Instant::now() < deadline;
        read_frame(
            stream,
            self.cfg.max_frame,
            Duration::from_secs(30),
            &mut in_time,
        )
        .map_err(frame_err)
    }
}

/// Whether `stream` has data (or a hang-up) to read now.
pub(crate) fn readable_now(stream: &TcpStream) -> bool {
    crate::os::wait_readable(&[std::os::fd::AsFd::as_fd(stream)], Some(Instant::now()))
        .map_or(true, |r| r.contains(&true))
}

fn frame_err(e: FrameError) -> ManagerError {
    match e {
        FrameError::Io(e) => ManagerError::Io(e),
        FrameError::Closed => ManagerError::Io(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "the manager closed the connection",
        )),
        FrameError::Oversize(n) => {
            ManagerError::Protocol(format!("a frame of {n} bytes is over the limit"))
        }
        FrameError::Malformed(e) => ManagerError::Protocol(e),
    }
}

fn expect_done(resp: Response) -> Result<(), ManagerError> {
    match resp {
        Response::Done => Ok(()),
        Response::Error(e) => Err(ManagerError::Remote(e)),
        other => Err(ManagerError::Protocol(format!(
            "unexpected answer {other:?}"
        ))),
    }
}

/// A connection to a [`Manager`]: typed queues and the result store.
/// Cloning shares the connection.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
    /// Set when the address was `nats://...`: JetStream does the work.
    nats: Option<Arc<nats::Nats>>,
}

impl Client {
    /// A builder, for admin rights and the reconnection window.
    pub fn builder(addr: impl ToString, key: &[u8]) -> ClientBuilder {
        ClientBuilder {
            addr: addr.to_string(),
            key: key.to_vec(),
            admin: false,
            reconnect_for: Duration::from_secs(30),
            max_frame: 64 << 20,
            tls: None,
            tls_error: None,
            lease: Duration::from_secs(30),
            max_deliveries: 5,
        }
    }

    /// The queue named `name`, for items of type `T`.
    pub fn queue<T>(&self, name: &str) -> RemoteQueue<T> {
        RemoteQueue {
            client: self.clone(),
            name: name.to_owned(),
            _t: PhantomData,
        }
    }

    /// Stores `value` under `key` (a task's result).
    pub fn set_result<R: Serialize>(&self, key: &str, value: &R) -> Result<(), ManagerError> {
        let body = ByteBuf::from(encode(value).map_err(ManagerError::Codec)?);
        if let Some(n) = &self.nats {
            return n.set_result(key, body.into_vec());
        }
        let req = Request::SetResult {
            key: key.to_owned(),
            body,
        };
        expect_done(self.inner.call(&req, Duration::ZERO)?)
    }

    /// Waits up to `timeout` for the result stored under `key`.
    pub fn wait_result<R: DeserializeOwned>(
        &self,
        key: &str,
        timeout: Duration,
    ) -> Result<Option<R>, ManagerError> {
        if let Some(n) = &self.nats {
            return n
                .wait_result(key, timeout)?
                .map(|b| decode(&b).map_err(ManagerError::Codec))
                .transpose();
        }
        let req = Request::WaitResult {
            key: key.to_owned(),
            wait_ms: millis(timeout),
        };
        match self.inner.call(&req, timeout)? {
            Response::Result(None) => Ok(None),
            Response::Result(Some(b)) => decode(&b).map(Some).map_err(ManagerError::Codec),
            Response::Error(e) => Err(ManagerError::Remote(e)),
            other => Err(ManagerError::Protocol(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    /// Acknowledges several deliveries in one round trip; the error lists
    /// the leases that were lost (their tasks were given back).
    pub fn ack_many<T>(&self, deliveries: Vec<Delivery<T>>) -> Result<(), ManagerError> {
        if let Some(n) = &self.nats {
            let taken: Vec<nats::Taken> = deliveries.into_iter().filter_map(|d| d.taken).collect();
            return n.ack_all(&taken);
        }
        let leases = deliveries.iter().map(|d| d.lease).collect();
        match self
            .inner
            .call(&Request::AckMany { leases }, Duration::ZERO)?
        {
            Response::Unknown(lost) if lost.is_empty() => Ok(()),
            Response::Unknown(lost) => Err(ManagerError::LeaseLost(format!(
                "{} of the leases ({lost:?}) were unknown",
                lost.len()
            ))),
            Response::Error(e) => Err(ManagerError::Remote(e)),
            other => Err(ManagerError::Protocol(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    /// The manager's statistics: uptime, connections, results, and per
    /// queue what is waiting, leased and dead, with cumulative counters
    /// (see [`ManagerStats`]). Any client may ask; it changes nothing.
    ///
    /// On the NATS backend they come from JetStream's stream and consumer
    /// information, for every herd queue (stream `HERD_<hex name>`) on the
    /// server, and the counters run since each stream was created rather
    /// than since a start: `waiting` is the stream's messages less the
    /// consumer's unacknowledged ones, `leased` those (`num_ack_pending`),
    /// `put_total` the stream's last sequence number, `acked_total` the
    /// messages gone from it (acknowledged, or moved to the dead letters),
    /// `delivered_total` the consumer's delivery sequence and
    /// `redelivered_total` that less the stream sequence delivered up to;
    /// `results` counts the entries in the `herd_results` bucket (deletions
    /// included). `uptime` and `connections` are not known there: zero.
    pub fn stats(&self) -> Result<ManagerStats, ManagerError> {
        if let Some(n) = &self.nats {
            return n.stats();
        }
        match self.inner.call(&Request::Stats, Duration::ZERO)? {
            Response::Stats(stats) => Ok(stats),
            Response::Error(e) => Err(ManagerError::Remote(e)),
            other => Err(ManagerError::Protocol(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    /// Stops the manager (needs admin rights and a manager that allows it).
    pub fn shutdown(&self) -> Result<(), ManagerError> {
        if self.nats.is_some() {
            return Err(ManagerError::Remote(
                "a NATS server is not stopped by herd clients".to_owned(),
            ));
        }
        expect_done(self.inner.call(&Request::Shutdown, Duration::ZERO)?)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A named queue on a manager, for items of type `T`.
#[derive(Debug, Clone)]
pub struct RemoteQueue<T> {
    client: Client,
    name: String,
    _t: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> RemoteQueue<T> {
    /// Adds `value`; returns once the manager has it.
    pub fn put(&self, value: &T) -> Result<(), ManagerError> {
        let body = ByteBuf::from(encode(value).map_err(ManagerError::Codec)?);
        if let Some(n) = &self.client.nats {
            return n.put_many(&self.name, vec![body.into_vec()]);
        }
        let req = Request::Put {
            queue: self.name.clone(),
            body,
            client: self.client.inner.client_id,
            msg: self.client.inner.next_msg.fetch_add(1, Ordering::Relaxed),
        };
        expect_done(self.client.inner.call(&req, Duration::ZERO)?)
    }

    /// Adds every value in one message (one round trip): pipelined puts.
    pub fn put_many(&self, values: &[T]) -> Result<(), ManagerError> {
        let bodies = values
            .iter()
            .map(|v| encode(v).map(ByteBuf::from).map_err(ManagerError::Codec))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(n) = &self.client.nats {
            return n.put_many(
                &self.name,
                bodies.into_iter().map(ByteBuf::into_vec).collect(),
            );
        }
        let n = bodies.len() as u64;
        let req = Request::PutMany {
            queue: self.name.clone(),
            bodies,
            client: self.client.inner.client_id,
            msg: self
                .client
                .inner
                .next_msg
                .fetch_add(n.max(1), Ordering::Relaxed),
        };
        expect_done(self.client.inner.call(&req, Duration::ZERO)?)
    }

    /// Takes up to `max` items in one round trip, each under a lease of
    /// `lease`, waiting up to `timeout` for the first; empty if none came.
    pub fn get_many(
        &self,
        max: u32,
        timeout: Duration,
        lease: Duration,
    ) -> Result<Vec<Delivery<T>>, ManagerError> {
        if let Some(n) = &self.client.nats {
            let mut out = Vec::new();
            for t in n.get_many(&self.name, max as usize, timeout)? {
                match decode(&t.msg.payload) {
                    Ok(value) => out.push(Delivery {
                        value,
                        id: t.id,
                        deliveries: t.deliveries,
                        lease: 0,
                        taken: Some(t),
                        client: self.client.clone(),
                    }),
                    Err(_) => {
                        let _ = n.nack(&t);
                    }
                }
            }
            return Ok(out);
        }
        let req = Request::GetMany {
            queue: self.name.clone(),
            max,
            wait_ms: millis(timeout),
            lease_ms: millis(lease).max(1),
        };
        match self.client.inner.call(&req, timeout)? {
            Response::Deliveries(items) => {
                let mut out = Vec::with_capacity(items.len());
                let mut bad = Vec::new();
                for (lease, id, body, deliveries) in items {
                    match decode(&body) {
                        Ok(value) => out.push(Delivery {
                            value,
                            id,
                            deliveries,
                            lease,
                            taken: None,
                            client: self.client.clone(),
                        }),
                        Err(_) => bad.push(lease),
                    }
                }
                for lease in bad {
                    let _ = self
                        .client
                        .inner
                        .call(&Request::Nack { lease }, Duration::ZERO);
                }
                Ok(out)
            }
            Response::Error(e) => Err(ManagerError::Remote(e)),
            other => Err(ManagerError::Protocol(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    /// Takes the next item under a 30-second lease, waiting up to
    /// `timeout`; `None` if none came.
    pub fn get_timeout(&self, timeout: Duration) -> Result<Option<Delivery<T>>, ManagerError> {
        self.get_leased(timeout, Duration::from_secs(30))
    }

    /// Takes the next item under a lease of `lease`, waiting up to `timeout`.
    pub fn get_leased(
        &self,
        timeout: Duration,
        lease: Duration,
    ) -> Result<Option<Delivery<T>>, ManagerError> {
        if self.client.nats.is_some() {
            // JetStream leases are the consumer's AckWait
            // (`ClientBuilder::lease`).
            return Ok(self.get_many(1, timeout, lease)?.into_iter().next());
        }
        let req = Request::Get {
            queue: self.name.clone(),
            wait_ms: millis(timeout),
            lease_ms: millis(lease).max(1),
        };
        match self.client.inner.call(&req, timeout)? {
            Response::Empty => Ok(None),
            Response::Delivery {
                lease,
                id,
                body,
                deliveries,
            } => match decode(&body) {
                Ok(value) => Ok(Some(Delivery {
                    value,
                    id,
                    deliveries,
                    lease,
                    taken: None,
                    client: self.client.clone(),
                })),
                Err(e) => {
                    // Undecodable for this type: give it back for a worker
                    // that can read it (the delivery cap ends the loop).
                    let _ = self
                        .client
                        .inner
                        .call(&Request::Nack { lease }, Duration::ZERO);
                    Err(ManagerError::Codec(e))
                }
            },
            Response::Error(e) => Err(ManagerError::Remote(e)),
            other => Err(ManagerError::Protocol(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    /// Whether no item is waiting (leased ones do not count).
    pub fn is_empty(&self) -> Result<bool, ManagerError> {
        self.len().map(|n| n == 0)
    }

    /// Items waiting (not counting leased ones).
    pub fn len(&self) -> Result<u64, ManagerError> {
        if let Some(n) = &self.client.nats {
            return n.len(&self.name);
        }
        match self.client.inner.call(
            &Request::Len {
                queue: self.name.clone(),
            },
            Duration::ZERO,
        )? {
            Response::Len(n) => Ok(n),
            Response::Error(e) => Err(ManagerError::Remote(e)),
            other => Err(ManagerError::Protocol(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }
}

/// An item taken under a lease. [`ack`](Self::ack) it when done; dropping
/// it without an ack leaves the lease to lapse (and the item to come back).
#[derive(Debug)]
pub struct Delivery<T> {
    /// The item.
    pub value: T,
    /// The item's id (the same on every delivery of it).
    pub id: u64,
    /// How many times it has been delivered, this time included.
    pub deliveries: u32,
    lease: u64,
    /// The JetStream message, on the NATS backend.
    taken: Option<nats::Taken>,
    client: Client,
}

impl<T> Delivery<T> {
    /// Done: the item is gone for good.
    pub fn ack(self) -> Result<(), ManagerError> {
        if let (Some(n), Some(t)) = (&self.client.nats, &self.taken) {
            return n.ack(t);
        }
        match self
            .client
            .inner
            .call(&Request::Ack { lease: self.lease }, Duration::ZERO)?
        {
            Response::Done => Ok(()),
            Response::Error(e) => Err(ManagerError::LeaseLost(e)),
            other => Err(ManagerError::Protocol(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    /// Not done: the item goes back now (or to the dead letters at the cap).
    pub fn nack(self) -> Result<(), ManagerError> {
        if let (Some(n), Some(t)) = (&self.client.nats, &self.taken) {
            return n.nack(t);
        }
        expect_done(
            self.client
                .inner
                .call(&Request::Nack { lease: self.lease }, Duration::ZERO)?,
        )
    }

    /// Extends the lease to `lease` from now.
    pub fn heartbeat(&self, lease: Duration) -> Result<(), ManagerError> {
        if let (Some(n), Some(t)) = (&self.client.nats, &self.taken) {
            // JetStream extends by the consumer's AckWait.
            let _ = lease;
            return n.progress(t);
        }
        let req = Request::Heartbeat {
            lease: self.lease,
            lease_ms: millis(lease).max(1),
        };
        match self.client.inner.call(&req, Duration::ZERO)? {
            Response::Done => Ok(()),
            Response::Error(e) => Err(ManagerError::LeaseLost(e)),
            other => Err(ManagerError::Protocol(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }
}
