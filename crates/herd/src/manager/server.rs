//! The embedded manager: named queues with leases, dead letters and a
//! result store, served over TCP to authenticated clients.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_bytes::ByteBuf;

use super::store::{Change, Store};
use super::tls::{self, Stream};
use super::wire::{
    ADMIN_CLIENT_LABEL, ADMIN_SERVER_LABEL, CLIENT_LABEL, ClientProof, FrameError, Request,
    Response, SERVER_LABEL, ServerHello, ServerProof, VERSION, nonce, proof, read_frame, verify,
    write_frame,
};
use super::{ManagerError, ManagerStats, QueueStats, readable_now};
use crate::backoff::poll_briefly;

/// How often idle connection threads and the lease reaper look around.
const TICK: Duration = Duration::from_millis(100);
/// Acknowledged leases remembered, to answer a retried ack.
const REMEMBERED_ACKS: usize = 100_000;
/// Room kept in a frame for everything around an item's body.
const FRAME_SLACK: usize = 4096;
/// Connections served at once, and of those still authenticating.
const MAX_CONNECTIONS: usize = 1024;
const MAX_HANDSHAKING: usize = 64;
/// How long a write to a peer may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Configures a [`Manager`]: Python's `BaseManager(address, authkey)`.
#[derive(Clone)]
#[must_use]
pub struct ManagerBuilder {
    key: Vec<u8>,
    max_deliveries: u32,
    max_frame: usize,
    handshake_timeout: Duration,
    admin_key: Option<Vec<u8>>,
    persist: Option<std::path::PathBuf>,
    tls: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for ManagerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ManagerBuilder")
            .field("max_deliveries", &self.max_deliveries)
            .field("max_frame", &self.max_frame)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("admin", &self.admin_key.is_some())
            .field("persist", &self.persist)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl ManagerBuilder {
    /// A task delivered this many times without an ack moves to the queue's
    /// dead letters (`<name>.dead`) instead of being delivered again.
    /// Default 5.
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.max_deliveries = n.max(1);
        self
    }

    /// The largest frame accepted, in bytes (default 64 MiB).
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// How long a new connection has to authenticate (default 5 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Enables admin connections ([`super::connect_admin`] with this key,
    /// which must differ from the workers' key): only they may stop the
    /// manager. Without it (the default) no client can.
    pub fn admin_key(mut self, key: &[u8]) -> Self {
        self.admin_key = Some(key.to_vec());
        self
    }

    /// Keeps every accepted item and stored result in a database file at
    /// `path` (redb), committed before the manager answers: a manager
    /// restarted on the same file has every item that was put and not
    /// acknowledged waiting again, and every result. Each put, ack and
    /// result then costs a durable commit.
    pub fn persist(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.persist = Some(path.into());
        self
    }

    /// Serves over TLS (rustls) with this PEM certificate chain and PEM
    /// private key; clients connect with [`super::ClientBuilder::tls`].
    /// The HMAC handshake still runs inside it: TLS hides the traffic,
    /// the key decides who may use the manager.
    pub fn tls(mut self, cert_chain_pem: &[u8], key_pem: &[u8]) -> Self {
        self.tls = Some((cert_chain_pem.to_vec(), key_pem.to_vec()));
        self
    }

    /// Binds `addr` and starts serving.
    pub fn start(self, addr: impl ToSocketAddrs) -> Result<Manager, ManagerError> {
        let mut state = State::default();
        let store = match &self.persist {
            None => None,
            Some(path) => {
                let (store, loaded) =
                    Store::open(path).map_err(|e| ManagerError::Io(io::Error::other(e)))?;
                for (queue, id, body, deliveries) in loaded.items {
                    state.next_id = state.next_id.max(id);
                    state.queues.entry(queue).or_default().push_back(Item {
                        id,
                        body,
                        deliveries,
                    });
                }
                state.results.extend(loaded.results);
                state.last_msg.extend(loaded.clients);
                Some(store)
            }
        };
        let mut seed = [0u8; 8];
        seed.copy_from_slice(&nonce().map_err(ManagerError::Io)?[..8]);
        state.next_lease = u64::from_le_bytes(seed);
        let tls = match &self.tls {
            None => None,
            Some((cert, key)) => Some(tls::server_config(cert, key).map_err(ManagerError::Io)?),
        };
        let listener = TcpListener::bind(addr).map_err(ManagerError::Io)?;
        let local = listener.local_addr().map_err(ManagerError::Io)?;
        listener.set_nonblocking(true).map_err(ManagerError::Io)?;
        let shared = Arc::new(Shared {
            cfg: self,
            state: Mutex::new(state),
            store,
            changed: Condvar::new(),
            reaper: Condvar::new(),
            tls,
            handshaking: AtomicUsize::new(0),
            sockets: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
            next_conn: AtomicU64::new(1),
            started: Instant::now(),
            connections: AtomicUsize::new(0),
        });
        let for_accept = Arc::clone(&shared);
        let accept = std::thread::Builder::new()
            .name("herd-manager-accept".to_owned())
            .spawn(move || accept_loop(&for_accept, &listener))
            .map_err(ManagerError::Io)?;
        let for_reaper = Arc::clone(&shared);
        let reaper = std::thread::Builder::new()
            .name("herd-manager-leases".to_owned())
            .spawn(move || reap_leases(&for_reaper))
            .map_err(ManagerError::Io)?;
        Ok(Manager {
            addr: local,
            shared,
            threads: Mutex::new(vec![accept, reaper]),
        })
    }
}

/// An item waiting in a queue.
#[derive(Debug)]
struct Item {
    id: u64,
    body: Vec<u8>,
    deliveries: u32,
}

/// An item delivered under a lease.
#[derive(Debug)]
struct Lease {
    queue: String,
    item: Item,
    conn: u64,
    deadline: Instant,
}

/// A queue's counters, since the manager started (for [`QueueStats`]).
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    put: u64,
    acked: u64,
    delivered: u64,
    redelivered: u64,
}

#[derive(Debug, Default)]
struct State {
    queues: HashMap<String, VecDeque<Item>>,
    /// Per queue, what happened to it since the start.
    counters: HashMap<String, Counters>,
    leases: HashMap<u64, Lease>,
    results: HashMap<String, Vec<u8>>,
    /// Per client, the highest put message id accepted (a client sends one
    /// request at a time with rising ids, so anything at or below it is a
    /// retry).
    last_msg: HashMap<u64, u64>,
    /// Leases acknowledged lately (a retried ack whose answer was lost).
    acked: HashSet<u64>,
    acked_order: VecDeque<u64>,
    next_id: u64,
    /// Lease ids start at a random point each run, so a lease from before
    /// a restart cannot name one handed out after it.
    next_lease: u64,
}

impl State {
    fn next(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn lease_id(&mut self) -> u64 {
        self.next_lease = self.next_lease.wrapping_add(1);
        self.next_lease
    }

    /// The counters of `queue` (the name is copied only for a new one).
    fn count(&mut self, queue: &str) -> &mut Counters {
        if !self.counters.contains_key(queue) {
            self.counters.insert(queue.to_owned(), Counters::default());
        }
        match self.counters.get_mut(queue) {
            Some(c) => c,
            None => unreachable!("inserted above"),
        }
    }

    fn remember_ack(&mut self, lease: u64) {
        if self.acked.insert(lease) {
            self.acked_order.push_back(lease);
            if self.acked_order.len() > REMEMBERED_ACKS
                && let Some(old) = self.acked_order.pop_front()
            {
                self.acked.remove(&old);
            }
        }
    }
}

#[derive(Debug)]
struct Shared {
    cfg: ManagerBuilder,
    state: Mutex<State>,
    changed: Condvar,
    /// The lease reaper's own timer (woken only to stop).
    reaper: Condvar,
    store: Option<Store>,
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Connections still authenticating.
    handshaking: AtomicUsize,
    /// A copy of every connection's socket, to shut them all down on stop.
    sockets: Mutex<HashMap<u64, TcpStream>>,
    stop: AtomicBool,
    next_conn: AtomicU64,
    /// When the manager started (for the uptime).
    started: Instant,
    /// Connections authenticated and still open.
    connections: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies changes to the store, if there is one.
    fn persist(&self, changes: &[Change<'_>]) -> Result<(), String> {
        self.store.as_ref().map_or(Ok(()), |st| st.apply(changes))
    }

    /// Puts a leased item back, or into the dead letters at the cap.
    fn release(&self, st: &mut State, lease: Lease) {
        let target = if lease.item.deliveries >= self.cfg.max_deliveries {
            let dead = format!("{}.dead", lease.queue);
            let moved = self.persist(&[
                Change::Remove {
                    queue: &lease.queue,
                    id: lease.item.id,
                },
                Change::Put {
                    queue: &dead,
                    id: lease.item.id,
                    body: &lease.item.body,
                    deliveries: lease.item.deliveries,
                },
            ]);
            match moved {
                Ok(()) => {
                    st.count(&dead).put += 1;
                    dead
                }
                Err(e) => {
                    // Memory follows the disk: the item stays where it is.
                    eprintln!("herd manager: moving item {} to {dead}: {e}", lease.item.id);
                    lease.queue
                }
            }
        } else {
            lease.queue
        };
        st.queues.entry(target).or_default().push_front(lease.item);
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// What is there now, and the counters (one pass over the queues and
    /// the leases, under the lock).
    fn stats(&self) -> ManagerStats {
        let st = self.lock();
        let mut queues: HashMap<&str, QueueStats> = HashMap::new();
        fn entry<'a, 'b>(
            queues: &'b mut HashMap<&'a str, QueueStats>,
            name: &'a str,
        ) -> &'b mut QueueStats {
            queues
                .entry(name)
                .or_insert_with(|| QueueStats::new(name.to_owned()))
        }
        for (name, items) in &st.queues {
            entry(&mut queues, name).waiting = items.len() as u64;
        }
        for lease in st.leases.values() {
            entry(&mut queues, &lease.queue).leased += 1;
        }
        for (name, c) in &st.counters {
            let q = entry(&mut queues, name);
            q.put_total = c.put;
            q.acked_total = c.acked;
            q.delivered_total = c.delivered;
            q.redelivered_total = c.redelivered;
        }
        let mut queues: Vec<QueueStats> = queues.into_values().collect();
        QueueStats::sort_and_count_dead(&mut queues);
        ManagerStats {
            uptime: self.started.elapsed(),
            connections: self.connections.load(Ordering::Acquire) as u64,
            queues,
            results: st.results.len() as u64,
        }
    }

    /// Waits on the state until `deadline` (or a tick, to notice a stop).
    fn wait<'a>(&self, st: MutexGuard<'a, State>, deadline: Instant) -> MutexGuard<'a, State> {
        let left = deadline.saturating_duration_since(Instant::now()).min(TICK);
        self.changed
            .wait_timeout(st, left)
            .unwrap_or_else(PoisonError::into_inner)
            .0
    }
}

/// A running manager: Python's `BaseManager` after `start()`, serving
/// named queues and a result store to clients that know the key.
///
/// ```
/// # fn main() {
/// herd::init();
/// let manager = herd::manager::Manager::builder(b"secret").start("127.0.0.1:0").unwrap();
/// let client = herd::manager::connect(manager.addr(), b"secret").unwrap();
/// let tasks = client.queue::<u32>("tasks");
/// tasks.put(&7).unwrap();
/// let task = tasks.get_timeout(std::time::Duration::from_secs(5)).unwrap().unwrap();
/// assert_eq!(task.value, 7);
/// task.ack().unwrap();
/// # }
/// ```
#[derive(Debug)]
pub struct Manager {
    addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Manager {
    /// A builder; `key` authenticates clients (Python's `authkey`). Use a
    /// long random key: the handshake never sends it, but a short one can be
    /// guessed offline from a recorded handshake.
    pub fn builder(key: &[u8]) -> ManagerBuilder {
        ManagerBuilder {
            key: key.to_vec(),
            max_deliveries: 5,
            max_frame: 64 << 20,
            handshake_timeout: Duration::from_secs(5),
            admin_key: None,
            persist: None,
            tls: None,
        }
    }

    /// The address it listens on (with the port chosen, for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Items waiting in `queue` (not counting leased ones).
    pub fn len(&self, queue: &str) -> usize {
        self.shared
            .lock()
            .queues
            .get(queue)
            .map_or(0, VecDeque::len)
    }

    /// Items delivered and not yet acknowledged.
    pub fn leased(&self) -> usize {
        self.shared.lock().leases.len()
    }

    /// Its statistics, as [`super::Client::stats`] gives them to clients.
    pub fn stats(&self) -> ManagerStats {
        self.shared.stats()
    }

    /// Whether it was asked to stop.
    pub fn is_stopped(&self) -> bool {
        self.shared.stopping()
    }

    /// Stops serving: connections close, waiting clients get an error.
    /// What was accepted and not acknowledged is lost (there is no
    /// persistence yet).
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.changed.notify_all();
        self.shared.reaper.notify_all();
        let threads =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !shared.stopping() {
        match listener.accept() {
            Ok((stream, peer)) => {
                conns.retain(|h| !h.is_finished());
                let handshaking = shared.handshaking.load(Ordering::Acquire);
                if conns.len() >= MAX_CONNECTIONS || handshaking >= MAX_HANDSHAKING {
                    log(peer, "refused: too many connections");
                    drop(stream);
                    continue;
                }
                shared.handshaking.fetch_add(1, Ordering::AcqRel);
                let shared = Arc::clone(shared);
                let spawned = std::thread::Builder::new()
                    .name("herd-manager-conn".to_owned())
                    .spawn(move || serve(&shared, stream, peer));
                if let Ok(h) = spawned {
                    conns.push(h);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let _ = crate::os::wait_readable(
                    &[std::os::fd::AsFd::as_fd(listener)],
                    Some(Instant::now() + TICK),
                );
            }
            Err(_) => {
                // Out of descriptors, or a connection reset before we took
                // it: wait a little rather than spin.
                std::thread::sleep(TICK);
            }
        }
    }
    // Unblock every connection, then wait for them (each exits at once).
    for tcp in shared
        .sockets
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .values()
    {
        let _ = tcp.shutdown(std::net::Shutdown::Both);
    }
    for h in conns {
        let _ = h.join();
    }
}

/// Leases past their deadline go back to their queue. It sleeps on its own
/// condition variable (only a stop wakes it early), so the many changes
/// that wake waiting clients do not wake it too.
fn reap_leases(shared: &Shared) {
    let mut st = shared.lock();
    while !shared.stopping() {
        let now = Instant::now();
        let expired: Vec<u64> = st
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        if !expired.is_empty() {
            for id in expired {
                if let Some(lease) = st.leases.remove(&id) {
                    shared.release(&mut st, lease);
                }
            }
            shared.changed.notify_all();
        }
        st = shared
            .reaper
            .wait_timeout(st, TICK)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

/// Logs a refused or failed connection (herd's messages go to stderr).
fn log(peer: SocketAddr, what: &str) {
    eprintln!("herd manager: {peer}: {what}");
}

fn serve(shared: &Arc<Shared>, sock: TcpStream, peer: SocketAddr) {
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let tcp = sock.try_clone();
    if let Ok(t) = &tcp
        && let Ok(t) = t.try_clone()
    {
        shared
            .sockets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(conn, t);
    }
    let mut authenticated = false;
    if let Err(why) = serve_conn(shared, sock, conn, &mut authenticated)
        && !matches!(why, FrameError::Closed)
        && !shared.stopping()
    {
        log(peer, &why.to_string());
    }
    if authenticated {
        shared.connections.fetch_sub(1, Ordering::AcqRel);
    } else {
        shared.handshaking.fetch_sub(1, Ordering::AcqRel);
    }
    shared
        .sockets
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&conn);
    // Whatever this client held goes back: at least once.
    let mut st = shared.lock();
    let held: Vec<u64> = st
        .leases
        .iter()
        .filter(|(_, l)| l.conn == conn)
        .map(|(id, _)| *id)
        .collect();
    for id in &held {
        if let Some(lease) = st.leases.remove(id) {
            shared.release(&mut st, lease);
        }
    }
    drop(st);
    if !held.is_empty() {
        shared.changed.notify_all();
    }
    if let Ok(tcp) = tcp {
        let _ = tcp.shutdown(std::net::Shutdown::Both);
    }
}

/// Whether the peer has hung up (a read would return end of file now).
fn hung_up(tcp: &TcpStream) -> bool {
    if !readable_now(tcp) {
        return false;
    }
    let mut b = [0u8; 1];
    matches!(tcp.peek(&mut b), Ok(0))
}

fn serve_conn(
    shared: &Arc<Shared>,
    sock: TcpStream,
    conn: u64,
    authenticated: &mut bool,
) -> Result<(), FrameError> {
    let io = FrameError::Io;
    sock.set_nodelay(true).map_err(io)?;
    sock.set_nonblocking(false).map_err(io)?;
    sock.set_read_timeout(Some(TICK)).map_err(io)?;
    sock.set_write_timeout(Some(WRITE_TIMEOUT)).map_err(io)?;
    let max = shared.cfg.max_frame;
    // The whole handshake (TLS included) has one deadline.
    let limit = shared.cfg.handshake_timeout;
    let handshake_ends = deadline_after(limit);
    let mut stream = match &shared.tls {
        None => Stream::Plain(sock),
        Some(config) => {
            let mut s = tls::accept(config, sock).map_err(io)?;
            s.complete_handshake(handshake_ends)
                .map_err(|e| match e.kind() {
                    io::ErrorKind::TimedOut => {
                        FrameError::Malformed(format!("no TLS handshake within {limit:?}"))
                    }
                    _ => FrameError::Io(e),
                })?;
            s
        }
    };

    // Our nonce; their nonce and proof; our proof.
    let ours = nonce().map_err(io)?;
    let hello = ServerHello {
        version: VERSION,
        nonce: ours,
        max_frame: max as u64,
    };
    write_frame(&mut stream, &hello, max).map_err(io)?;
    let mut in_time = || Instant::now() < handshake_ends && !shared.stopping();
    let left = handshake_ends.saturating_duration_since(Instant::now());
    let hello: ClientProof =
        read_frame(&mut stream, 4096, left, &mut in_time).map_err(|e| match e {
            FrameError::Io(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                FrameError::Malformed(format!("no handshake within {limit:?}"))
            }
            e => e,
        })?;
    let (key, client_label, server_label) = if hello.admin {
        match &shared.cfg.admin_key {
            Some(k) => (k.as_slice(), ADMIN_CLIENT_LABEL, ADMIN_SERVER_LABEL),
            None => {
                let _ = write_frame(
                    &mut stream,
                    &ServerProof::Refused("this manager takes no admin connections".to_owned()),
                    max,
                );
                return Err(FrameError::Malformed(
                    "refused: admin not enabled".to_owned(),
                ));
            }
        }
    } else {
        (shared.cfg.key.as_slice(), CLIENT_LABEL, SERVER_LABEL)
    };
    if !verify(key, client_label, &ours, &hello.nonce, &hello.mac) {
        let _ = write_frame(
            &mut stream,
            &ServerProof::Refused("wrong key".to_owned()),
            max,
        );
        return Err(FrameError::Malformed("refused: wrong key".to_owned()));
    }
    let Some(mac) = proof(key, server_label, &hello.nonce, &ours) else {
        return Err(FrameError::Malformed("cannot compute a proof".to_owned()));
    };
    // Counted before the client hears it is in, so that a client that
    // asks for the statistics right after connecting is in them.
    *authenticated = true;
    shared.handshaking.fetch_sub(1, Ordering::AcqRel);
    shared.connections.fetch_add(1, Ordering::AcqRel);
    write_frame(&mut stream, &ServerProof::Accepted { mac }, max).map_err(io)?;
    let admin = hello.admin;

    loop {
        // The next request usually follows within microseconds.
        if stream.is_plain() {
            poll_briefly(|| readable_now(stream.tcp()));
        }
        let mut keep = || !shared.stopping();
        let req: Request = read_frame(&mut stream, max, Duration::from_secs(30), &mut keep)?;
        let (resp, stop) = {
            let tcp = stream.tcp();
            let alive = || !hung_up(tcp);
            handle(shared, conn, admin, &alive, req)
        };
        if let Err(e) = write_frame(&mut stream, &resp, max) {
            undeliver(shared, conn, &resp);
            return Err(io(e));
        }
        if stop {
            shared.stop.store(true, Ordering::Release);
            shared.changed.notify_all();
            shared.reaper.notify_all();
            return Ok(());
        }
    }
}

/// Adds items (ids `msg`, `msg + 1`, ... for this client; ones already
/// seen are a retry and skipped), durably first when persisting.
fn put_items(
    shared: &Shared,
    queue: String,
    bodies: Vec<ByteBuf>,
    client: u64,
    msg: u64,
) -> Response {
    let budget = shared.cfg.max_frame.saturating_sub(FRAME_SLACK);
    if let Some(big) = bodies.iter().find(|b| b.len() > budget) {
        return Response::Error(format!(
            "an item of {} bytes is over this manager's {budget}-byte item limit",
            big.len()
        ));
    }
    let mut st = shared.lock();
    let seen = st.last_msg.get(&client).copied();
    let mut fresh = Vec::with_capacity(bodies.len());
    for (i, body) in bodies.into_iter().enumerate() {
        let m = msg.wrapping_add(i as u64);
        if seen.is_none_or(|last| m > last) {
            let id = st.next();
            fresh.push((id, body.into_vec()));
        }
    }
    let last = msg
        .wrapping_add(fresh.len().saturating_sub(1) as u64)
        .max(seen.unwrap_or(0));
    let mut changes: Vec<Change<'_>> = fresh
        .iter()
        .map(|(id, body)| Change::Put {
            queue: &queue,
            id: *id,
            body,
            deliveries: 0,
        })
        .collect();
    if !fresh.is_empty() {
        changes.push(Change::Client { client, last });
    }
    if let Err(e) = shared.persist(&changes) {
        return Response::Error(format!("not accepted: {e}"));
    }
    drop(changes);
    if !fresh.is_empty() {
        st.last_msg.insert(client, last);
        st.count(&queue).put += fresh.len() as u64;
    }
    let q = st.queues.entry(queue).or_default();
    for (id, body) in fresh {
        q.push_back(Item {
            id,
            body,
            deliveries: 0,
        });
    }
    drop(st);
    shared.changed.notify_all();
    Response::Done
}

/// Forgets acknowledged items in the store (a failure only means they may
/// come back after a restart: at least once).
fn forget(shared: &Shared, done: &[(String, u64)]) {
    let changes: Vec<Change<'_>> = done
        .iter()
        .map(|(queue, id)| Change::Remove { queue, id: *id })
        .collect();
    if let Err(e) = shared.persist(&changes) {
        eprintln!("herd manager: forgetting acknowledged items: {e}");
    }
}

/// Takes up to `max` items from `queue` under leases for `conn`, keeping
/// the answer's size within the frame limit (at least one item).
fn lease_items(
    shared: &Shared,
    st: &mut State,
    queue: &str,
    max: usize,
    conn: u64,
    lease_for: Duration,
) -> Vec<(u64, u64, ByteBuf, u32)> {
    let budget = shared.cfg.max_frame.saturating_sub(FRAME_SLACK);
    let mut size = 0;
    let mut out = Vec::new();
    while out.len() < max.max(1) {
        let fits = st
            .queues
            .get(queue)
            .and_then(VecDeque::front)
            .is_some_and(|item| out.is_empty() || size + item.body.len() + 64 <= budget);
        if !fits {
            break;
        }
        let Some(mut item) = st.queues.get_mut(queue).and_then(VecDeque::pop_front) else {
            break;
        };
        size += item.body.len() + 64;
        item.deliveries += 1;
        let counters = st.count(queue);
        counters.delivered += 1;
        if item.deliveries > 1 {
            counters.redelivered += 1;
        }
        let lease = st.lease_id();
        out.push((
            lease,
            item.id,
            ByteBuf::from(item.body.clone()),
            item.deliveries,
        ));
        st.leases.insert(
            lease,
            Lease {
                queue: queue.to_owned(),
                item,
                conn,
                deadline: deadline_after(lease_for),
            },
        );
    }
    out
}

/// `now + d`, or a century away when that overflows.
pub(super) fn deadline_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

/// Undoes the deliveries of an answer that could not be written: the
/// items go back, their delivery not counted (the client never saw them).
fn undeliver(shared: &Shared, conn: u64, resp: &Response) {
    let leases: Vec<u64> = match resp {
        Response::Delivery { lease, .. } => vec![*lease],
        Response::Deliveries(items) => items.iter().map(|(l, ..)| *l).collect(),
        _ => return,
    };
    let mut st = shared.lock();
    for l in leases.into_iter().rev() {
        if st.leases.get(&l).is_some_and(|x| x.conn == conn)
            && let Some(mut lease) = st.leases.remove(&l)
        {
            let counters = st.count(&lease.queue);
            counters.delivered = counters.delivered.saturating_sub(1);
            if lease.item.deliveries > 1 {
                counters.redelivered = counters.redelivered.saturating_sub(1);
            }
            lease.item.deliveries = lease.item.deliveries.saturating_sub(1);
            st.queues
                .entry(lease.queue)
                .or_default()
                .push_front(lease.item);
        }
    }
    drop(st);
    shared.changed.notify_all();
}

/// Takes a lease out of the table if `conn` holds it; an error naming why
/// not otherwise.
fn take_lease(st: &mut State, lease: u64, conn: u64) -> Result<Lease, String> {
    match st.leases.get(&lease) {
        Some(l) if l.conn == conn => st
            .leases
            .remove(&lease)
            .ok_or_else(|| "the lease vanished".to_owned()),
        Some(_) => Err(format!("lease {lease} belongs to another connection")),
        None => Err(format!(
            "lease {lease} is unknown: it lapsed or its connection ended, and the task was given back"
        )),
    }
}

fn handle(
    shared: &Shared,
    conn: u64,
    admin: bool,
    alive: &dyn Fn() -> bool,
    req: Request,
) -> (Response, bool) {
    let resp = match req {
        Request::Put {
            queue,
            body,
            client,
            msg,
        } => put_items(shared, queue, vec![body], client, msg),
        Request::PutMany {
            queue,
            bodies,
            client,
            msg,
        } => put_items(shared, queue, bodies, client, msg),
        Request::Get {
            queue,
            wait_ms,
            lease_ms,
        } => wait_for_items(shared, &queue, 1, wait_ms, lease_ms, conn, alive).map_or_else(
            Response::Error,
            |mut items| match items.pop() {
                Some((lease, id, body, deliveries)) => Response::Delivery {
                    lease,
                    id,
                    body,
                    deliveries,
                },
                None => Response::Empty,
            },
        ),
        Request::GetMany {
            queue,
            max,
            wait_ms,
            lease_ms,
        } => wait_for_items(shared, &queue, max as usize, wait_ms, lease_ms, conn, alive)
            .map_or_else(Response::Error, Response::Deliveries),
        Request::AckMany { leases } => {
            let mut st = shared.lock();
            let mut unknown = Vec::new();
            let mut done = Vec::new();
            for l in leases {
                match take_lease(&mut st, l, conn) {
                    Ok(lease) => {
                        st.remember_ack(l);
                        st.count(&lease.queue).acked += 1;
                        done.push((lease.queue, lease.item.id));
                    }
                    Err(_) if st.acked.contains(&l) => {}
                    Err(_) => unknown.push(l),
                }
            }
            forget(shared, &done);
            Response::Unknown(unknown)
        }
        Request::Ack { lease } => {
            let mut st = shared.lock();
            match take_lease(&mut st, lease, conn) {
                Ok(l) => {
                    st.remember_ack(lease);
                    st.count(&l.queue).acked += 1;
                    forget(shared, &[(l.queue, l.item.id)]);
                    Response::Done
                }
                // A retry of an ack whose answer was lost.
                Err(_) if st.acked.contains(&lease) => Response::Done,
                Err(e) => Response::Error(e),
            }
        }
        Request::Nack { lease } => {
            let mut st = shared.lock();
            match take_lease(&mut st, lease, conn) {
                Ok(l) => {
                    shared.release(&mut st, l);
                    drop(st);
                    shared.changed.notify_all();
                    Response::Done
                }
                Err(e) => Response::Error(e),
            }
        }
        Request::Heartbeat { lease, lease_ms } => {
            let mut st = shared.lock();
            match st.leases.get_mut(&lease) {
                Some(l) if l.conn == conn => {
                    l.deadline = deadline_after(Duration::from_millis(lease_ms.max(1)));
                    Response::Done
                }
                Some(_) => Response::Error(format!("lease {lease} belongs to another connection")),
                None => Response::Error(format!("lease {lease} is unknown")),
            }
        }
        Request::SetResult { key, body } => {
            let mut st = shared.lock();
            match shared.persist(&[Change::Result {
                key: &key,
                body: &body,
            }]) {
                Ok(()) => {
                    st.results.insert(key, body.into_vec());
                    drop(st);
                    shared.changed.notify_all();
                    Response::Done
                }
                Err(e) => Response::Error(format!("not stored: {e}")),
            }
        }
        Request::WaitResult { key, wait_ms } => {
            let deadline = deadline_after(Duration::from_millis(wait_ms));
            let mut st = shared.lock();
            loop {
                if let Some(r) = st.results.get(&key) {
                    break Response::Result(Some(ByteBuf::from(r.clone())));
                }
                if shared.stopping() || Instant::now() >= deadline || !alive() {
                    break Response::Result(None);
                }
                st = shared.wait(st, deadline);
            }
        }
        Request::Len { queue } => Response::Len(
            shared
                .lock()
                .queues
                .get(&queue)
                .map_or(0, |q| q.len() as u64),
        ),
        Request::Stats => stats_answer(shared),
        Request::Shutdown => {
            if admin {
                return (Response::Done, true);
            }
            Response::Error(
                "shutdown needs a client authenticated with the manager's admin key".to_owned(),
            )
        }
    };
    (resp, false)
}

/// The statistics, or an error if they would not fit in a frame (so many
/// queues that the answer would break the frame limit).
fn stats_answer(shared: &Shared) -> Response {
    let resp = Response::Stats(shared.stats());
    let budget = shared.cfg.max_frame.saturating_sub(FRAME_SLACK);
    match crate::task::encode(&resp) {
        Ok(bytes) if bytes.len() <= budget => resp,
        Ok(bytes) => Response::Error(format!(
            "the statistics ({} bytes) are over this manager's {budget}-byte frame limit",
            bytes.len()
        )),
        Err(e) => Response::Error(format!("the statistics did not encode: {e}")),
    }
}

/// Waits (up to `wait_ms`, while the client is there) for items, and
/// leases up to `max` of them.
fn wait_for_items(
    shared: &Shared,
    queue: &str,
    max: usize,
    wait_ms: u64,
    lease_ms: u64,
    conn: u64,
    alive: &dyn Fn() -> bool,
) -> Result<Vec<(u64, u64, ByteBuf, u32)>, String> {
    let deadline = deadline_after(Duration::from_millis(wait_ms));
    let lease_for = Duration::from_millis(lease_ms.max(1));
    let mut st = shared.lock();
    loop {
        if st.queues.get(queue).is_some_and(|q| !q.is_empty()) {
            return Ok(lease_items(shared, &mut st, queue, max, conn, lease_for));
        }
        if shared.stopping() {
            return Err("the manager is shutting down".to_owned());
        }
        if Instant::now() >= deadline {
            return Ok(Vec::new());
        }
        if !alive() {
            // Its client is gone: leasing it an item would only count a
            // delivery nobody received.
            return Err("the client went away".to_owned());
        }
        st = shared.wait(st, deadline);
    }
}
