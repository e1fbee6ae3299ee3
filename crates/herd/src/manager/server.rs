//! The embedded manager: named queues with leases, dead letters and a
//! result store, served over TCP to authenticated clients.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_bytes::ByteBuf;

use super::store::{Change, Store};
use super::tls::{self, Stream};
use super::wire::{
    CLIENT_LABEL, ClientProof, FrameError, Request, Response, SERVER_LABEL, ServerHello,
    ServerProof, VERSION, nonce, proof, read_frame, verify, write_frame,
};
use super::{ManagerError, readable_now};
use crate::backoff::poll_briefly;

/// How often idle connection threads and the lease reaper look around.
const TICK: Duration = Duration::from_millis(100);
/// Put ids remembered per manager, to make retried puts harmless.
const REMEMBERED_PUTS: usize = 100_000;

/// Configures a [`Manager`]: Python's `BaseManager(address, authkey)`.
#[derive(Clone)]
#[must_use]
pub struct ManagerBuilder {
    key: Vec<u8>,
    max_deliveries: u32,
    max_frame: usize,
    handshake_timeout: Duration,
    allow_shutdown: bool,
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
            .field("allow_shutdown", &self.allow_shutdown)
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

    /// Lets clients connected with admin rights ([`super::connect_admin`])
    /// stop the manager. Off by default.
    pub fn allow_shutdown(mut self, allow: bool) -> Self {
        self.allow_shutdown = allow;
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
                Some(store)
            }
        };
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
            stop: AtomicBool::new(false),
            next_conn: AtomicU64::new(1),
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

#[derive(Debug, Default)]
struct State {
    queues: HashMap<String, VecDeque<Item>>,
    leases: HashMap<u64, Lease>,
    results: HashMap<String, Vec<u8>>,
    puts_seen: HashSet<(u64, u64)>,
    puts_order: VecDeque<(u64, u64)>,
    next_id: u64,
}

impl State {
    fn next(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
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
    stop: AtomicBool,
    next_conn: AtomicU64,
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
            if let Err(e) = moved {
                eprintln!("herd manager: moving item {} to {dead}: {e}", lease.item.id);
            }
            dead
        } else {
            lease.queue
        };
        st.queues.entry(target).or_default().push_front(lease.item);
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
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
            allow_shutdown: false,
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
                let shared = Arc::clone(shared);
                let spawned = std::thread::Builder::new()
                    .name("herd-manager-conn".to_owned())
                    .spawn(move || serve(&shared, stream, peer));
                if let Ok(h) = spawned {
                    conns.push(h);
                }
                conns.retain(|h| !h.is_finished());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let _ = crate::os::wait_readable(
                    &[std::os::fd::AsFd::as_fd(listener)],
                    Some(Instant::now() + TICK),
                );
            }
            Err(_) => {
                // A connection that failed before we took it (reset): next.
            }
        }
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
    if let Err(why) = serve_conn(shared, sock, conn)
        && !matches!(why, FrameError::Closed)
        && !shared.stopping()
    {
        log(peer, &why.to_string());
    }
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

fn serve_conn(shared: &Arc<Shared>, sock: TcpStream, conn: u64) -> Result<(), FrameError> {
    let io = FrameError::Io;
    sock.set_nodelay(true).map_err(io)?;
    sock.set_nonblocking(false).map_err(io)?;
    sock.set_read_timeout(Some(TICK)).map_err(io)?;
    let max = shared.cfg.max_frame;
    let mut stream = match &shared.tls {
        None => Stream::Plain(sock),
        Some(config) => tls::accept(config, sock).map_err(io)?,
    };

    // Handshake: our nonce; their nonce and proof; our proof.
    let ours = nonce().map_err(io)?;
    write_frame(
        &mut stream,
        &ServerHello {
            version: VERSION,
            nonce: ours,
        },
        max,
    )
    .map_err(io)?;
    let started = Instant::now();
    let limit = shared.cfg.handshake_timeout;
    let mut in_time = || started.elapsed() < limit && !shared.stopping();
    let hello: ClientProof =
        read_frame(&mut stream, 4096, limit, &mut in_time).map_err(|e| match e {
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
    if !verify(
        &shared.cfg.key,
        CLIENT_LABEL,
        &ours,
        &hello.nonce,
        &hello.mac,
    ) {
        let _ = write_frame(
            &mut stream,
            &ServerProof::Refused("wrong key".to_owned()),
            max,
        );
        return Err(FrameError::Malformed("refused: wrong key".to_owned()));
    }
    let Some(mac) = proof(&shared.cfg.key, SERVER_LABEL, &hello.nonce, &ours) else {
        return Err(FrameError::Malformed("cannot compute a proof".to_owned()));
    };
    write_frame(&mut stream, &ServerProof::Accepted { mac }, max).map_err(io)?;
    let admin = hello.admin;

    loop {
        // The next request usually follows within microseconds.
        if stream.is_plain() {
            poll_briefly(|| readable_now(stream.tcp()));
        }
        let mut keep = || !shared.stopping();
        let req: Request = read_frame(&mut stream, max, Duration::from_secs(30), &mut keep)?;
        let (resp, stop) = handle(shared, conn, admin, req);
        write_frame(&mut stream, &resp, max).map_err(io)?;
        if stop {
            shared.stop.store(true, Ordering::Release);
            shared.changed.notify_all();
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
    let mut st = shared.lock();
    let mut fresh = Vec::with_capacity(bodies.len());
    for (i, body) in bodies.into_iter().enumerate() {
        let key = (client, msg.wrapping_add(i as u64));
        if !st.puts_seen.contains(&key) {
            let id = st.next();
            fresh.push((key, id, body.into_vec()));
        }
    }
    let changes: Vec<Change<'_>> = fresh
        .iter()
        .map(|(_, id, body)| Change::Put {
            queue: &queue,
            id: *id,
            body,
            deliveries: 0,
        })
        .collect();
    if let Err(e) = shared.persist(&changes) {
        return Response::Error(format!("not accepted: {e}"));
    }
    drop(changes);
    for (key, id, body) in fresh {
        st.puts_seen.insert(key);
        st.puts_order.push_back(key);
        if st.puts_order.len() > REMEMBERED_PUTS
            && let Some(old) = st.puts_order.pop_front()
        {
            st.puts_seen.remove(&old);
        }
        st.queues.entry(queue.clone()).or_default().push_back(Item {
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

fn handle(shared: &Shared, conn: u64, admin: bool, req: Request) -> (Response, bool) {
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
        Request::GetMany {
            queue,
            max,
            wait_ms,
            lease_ms,
        } => {
            let deadline = Instant::now() + Duration::from_millis(wait_ms.min(86_400_000));
            let lease_for = Duration::from_millis(lease_ms.clamp(1, 86_400_000));
            let mut st = shared.lock();
            loop {
                let ready = st.queues.get(&queue).is_some_and(|q| !q.is_empty());
                if ready {
                    let mut out = Vec::new();
                    while out.len() < max.max(1) as usize {
                        let Some(mut item) =
                            st.queues.get_mut(&queue).and_then(VecDeque::pop_front)
                        else {
                            break;
                        };
                        item.deliveries += 1;
                        let lease = st.next();
                        out.push((
                            lease,
                            item.id,
                            ByteBuf::from(item.body.clone()),
                            item.deliveries,
                        ));
                        st.leases.insert(
                            lease,
                            Lease {
                                queue: queue.clone(),
                                item,
                                conn,
                                deadline: Instant::now() + lease_for,
                            },
                        );
                    }
                    break Response::Deliveries(out);
                }
                if shared.stopping() {
                    break Response::Error("the manager is shutting down".to_owned());
                }
                if Instant::now() >= deadline {
                    break Response::Deliveries(Vec::new());
                }
                st = shared.wait(st, deadline);
            }
        }
        Request::AckMany { leases } => {
            let mut st = shared.lock();
            let mut unknown = Vec::new();
            let mut done = Vec::new();
            for l in leases {
                match st.leases.remove(&l) {
                    Some(lease) => done.push((lease.queue, lease.item.id)),
                    None => unknown.push(l),
                }
            }
            forget(shared, &done);
            Response::Unknown(unknown)
        }
        Request::Get {
            queue,
            wait_ms,
            lease_ms,
        } => {
            let deadline = Instant::now() + Duration::from_millis(wait_ms.min(86_400_000));
            let lease_for = Duration::from_millis(lease_ms.clamp(1, 86_400_000));
            let mut st = shared.lock();
            loop {
                if let Some(mut item) = st.queues.get_mut(&queue).and_then(VecDeque::pop_front) {
                    item.deliveries += 1;
                    let lease = st.next();
                    let resp = Response::Delivery {
                        lease,
                        id: item.id,
                        body: ByteBuf::from(item.body.clone()),
                        deliveries: item.deliveries,
                    };
                    st.leases.insert(
                        lease,
                        Lease {
                            queue,
                            item,
                            conn,
                            deadline: Instant::now() + lease_for,
                        },
                    );
                    break resp;
                }
                if shared.stopping() {
                    break Response::Error("the manager is shutting down".to_owned());
                }
                if Instant::now() >= deadline {
                    break Response::Empty;
                }
                st = shared.wait(st, deadline);
            }
        }
        Request::Ack { lease } => match shared.lock().leases.remove(&lease) {
            Some(l) => {
                forget(shared, &[(l.queue, l.item.id)]);
                Response::Done
            }
            None => Response::Error(format!(
                "lease {lease} is unknown: it lapsed or its connection ended, and the task was given back"
            )),
        },
        Request::Nack { lease } => {
            let mut st = shared.lock();
            match st.leases.remove(&lease) {
                Some(l) => {
                    shared.release(&mut st, l);
                    drop(st);
                    shared.changed.notify_all();
                    Response::Done
                }
                None => Response::Error(format!("lease {lease} is unknown")),
            }
        }
        Request::Heartbeat { lease, lease_ms } => {
            let mut st = shared.lock();
            match st.leases.get_mut(&lease) {
                Some(l) => {
                    l.deadline =
                        Instant::now() + Duration::from_millis(lease_ms.clamp(1, 86_400_000));
                    Response::Done
                }
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
            let deadline = Instant::now() + Duration::from_millis(wait_ms.min(86_400_000));
            let mut st = shared.lock();
            loop {
                if let Some(r) = st.results.get(&key) {
                    break Response::Result(Some(ByteBuf::from(r.clone())));
                }
                if shared.stopping() || Instant::now() >= deadline {
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
        Request::Shutdown => {
            if !shared.cfg.allow_shutdown {
                Response::Error("this manager does not allow shutdown by clients".to_owned())
            } else if !admin {
                Response::Error("shutdown needs a client connected with admin rights".to_owned())
            } else {
                return (Response::Done, true);
            }
        }
    };
    (resp, false)
}
