//! The NATS JetStream backend, selected by a `nats://` address: the same
//! queues, leases, dead letters and results, for scale-out.
//!
//! A queue is a work-queue stream (`HERD_<hex name>`, subject
//! `herd.q.<hex name>`, file storage) with one durable pull consumer
//! (`herd`, explicit acks). The consumer's AckWait is the lease and
//! AckProgress the heartbeat; a message delivered more than the cap is
//! copied to the `<name>.dead` queue and terminated; a put carries a
//! `Nats-Msg-Id`, so a retried put is dropped by JetStream's duplicate
//! window; results live in the key-value bucket `herd_results`. The key is
//! the NATS token (`nats-server --auth`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::{self, AckKind, kv, stream};
use futures_lite::StreamExt;

use super::{ManagerError, ManagerStats, QueueStats};

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The name that [`hex`] encoded, if `s` is one.
fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let bytes = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

/// The stream behind the results bucket.
const RESULTS_STREAM: &str = "KV_herd_results";

/// The shortest expiry herd gives a pull request (see `get_many`): a
/// wait for the first message shorter than this waits this long.
const PULL_MIN_EXPIRY: Duration = Duration::from_millis(100);

/// JetStream's "nothing to give" statuses (404 No Messages, 408 Request
/// Timeout) end a fetch; this client version reports them as errors.
fn nothing_there(e: &str) -> bool {
    e.contains("No Messages") || e.contains("404") || e.contains("408") || e.contains("Timeout")
}

/// Collects a pull's messages until it ends (its "nothing there" status
/// included).
async fn drain(
    batch: &mut async_nats::jetstream::consumer::pull::Batch,
    into: &mut Vec<jetstream::Message>,
) -> Result<(), ManagerError> {
    while let Some(m) = batch.next().await {
        match m {
            Ok(m) => into.push(m),
            Err(e) if nothing_there(&e.to_string()) => break,
            Err(e) => return Err(remote(e)),
        }
    }
    Ok(())
}

fn remote(e: impl std::fmt::Display) -> ManagerError {
    ManagerError::Remote(format!("NATS: {e}"))
}

/// One message taken from a stream.
pub(crate) struct Taken {
    pub(crate) msg: jetstream::Message,
    pub(crate) id: u64,
    pub(crate) deliveries: u32,
}

impl std::fmt::Debug for Taken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Taken")
            .field("id", &self.id)
            .field("deliveries", &self.deliveries)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Nats {
    rt: tokio::runtime::Runtime,
    nc: async_nats::Client,
    js: jetstream::Context,
    results: kv::Store,
    consumers: Mutex<HashMap<String, PullConsumer>>,
    lease: Duration,
    max_deliveries: u32,
    client: u64,
    next_msg: AtomicU64,
}

impl std::fmt::Debug for Nats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nats")
            .field("lease", &self.lease)
            .field("max_deliveries", &self.max_deliveries)
            .finish_non_exhaustive()
    }
}

impl Nats {
    pub(crate) fn connect(
        url: &str,
        key: &[u8],
        lease: Duration,
        max_deliveries: u32,
        client: u64,
    ) -> Result<Self, ManagerError> {
        // Its own runtime, one worker thread: the connection's background
        // tasks run between calls too.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("herd-nats")
            .enable_all()
            .build()
            .map_err(ManagerError::Io)?;
        let token = String::from_utf8_lossy(key).into_owned();
        let (nc, js, results) = rt.block_on(async {
            let nc = async_nats::ConnectOptions::with_token(token)
                .connection_timeout(Duration::from_secs(5))
                .connect(url)
                .await
                .map_err(|e| ManagerError::Auth(format!("NATS: {e}")))?;
            let js = jetstream::new(nc.clone());
            let results = match js.get_key_value("herd_results").await {
                Ok(kv) => kv,
                Err(_) => js
                    .create_key_value(kv::Config {
                        bucket: "herd_results".to_owned(),
                        history: 1,
                        storage: stream::StorageType::File,
                        ..Default::default()
                    })
                    .await
                    .map_err(remote)?,
            };
            Ok::<_, ManagerError>((nc, js, results))
        })?;
        Ok(Self {
            rt,
            nc,
            js,
            results,
            consumers: Mutex::new(HashMap::new()),
            lease,
            max_deliveries,
            client,
            next_msg: AtomicU64::new(1),
        })
    }

    fn subject(queue: &str) -> String {
        format!("herd.q.{}", hex(queue))
    }

    async fn consumer(&self, queue: &str) -> Result<PullConsumer, ManagerError> {
        if let Some(c) = self
            .consumers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(queue)
        {
            return Ok(c.clone());
        }
        let stream = self
            .js
            .get_or_create_stream(stream::Config {
                name: format!("HERD_{}", hex(queue)),
                subjects: vec![Self::subject(queue)],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(remote)?;
        let consumer: PullConsumer = stream
            .get_or_create_consumer(
                "herd",
                pull::Config {
                    durable_name: Some("herd".to_owned()),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: self.lease,
                    max_deliver: -1,
                    // The default (1 000) stalls a pull for more (a
                    // master's `get_many(1024)`) until acks come back; the
                    // lease bounds what is outstanding anyway.
                    max_ack_pending: 1 << 20,
                    ..Default::default()
                },
            )
            .await
            .map_err(remote)?;
        self.consumers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(queue.to_owned(), consumer.clone());
        Ok(consumer)
    }

    async fn publish(
        &self,
        queue: &str,
        bodies: Vec<Vec<u8>>,
        id: &dyn Fn(usize) -> String,
    ) -> Result<(), ManagerError> {
        self.consumer(queue).await?;
        let subject = Self::subject(queue);
        let mut acks = Vec::with_capacity(bodies.len());
        for (i, body) in bodies.into_iter().enumerate() {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", id(i).as_str());
            let ack = self
                .js
                .publish_with_headers(subject.clone(), headers, body.into())
                .await
                .map_err(remote)?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await.map_err(remote)?;
        }
        Ok(())
    }

    pub(crate) fn put_many(&self, queue: &str, bodies: Vec<Vec<u8>>) -> Result<(), ManagerError> {
        let n = bodies.len() as u64;
        let first = self.next_msg.fetch_add(n.max(1), Ordering::Relaxed);
        let client = self.client;
        self.rt.block_on(self.publish(queue, bodies, &|i| {
            format!("{client:016x}-{}", first + i as u64)
        }))
    }

    /// Takes up to `max` messages, waiting up to `wait` for the first.
    pub(crate) fn get_many(
        &self,
        queue: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Taken>, ManagerError> {
        self.rt.block_on(async {
            let consumer = self.consumer(queue).await?;
            let mut msgs = Vec::new();
            // What is there now (`fetch` does not wait for messages). Its
            // expiry is kept at 100 ms: with 10 ms, nats-server (2.9) at
            // times sent no end-of-request status at all, and the client
            // then waited out its own timeout, expiry + 5 s — measured as
            // 5 s stalls that held a master and two workers to 1.9 k
            // tasks/s; with 100 ms, 28-30 k.
            let mut batch = consumer
                .fetch()
                .max_messages(max.max(1))
                .expires(PULL_MIN_EXPIRY)
                .messages()
                .await
                .map_err(remote)?;
            drain(&mut batch, &mut msgs).await?;
            if msgs.is_empty() && !wait.is_zero() {
                let mut batch = consumer
                    .batch()
                    .max_messages(1)
                    .expires(wait.max(PULL_MIN_EXPIRY))
                    .messages()
                    .await
                    .map_err(remote)?;
                drain(&mut batch, &mut msgs).await?;
            }
            let mut out = Vec::with_capacity(msgs.len());
            for msg in msgs {
                let (id, deliveries) = match msg.info() {
                    Ok(info) => (
                        info.stream_sequence,
                        u32::try_from(info.delivered).unwrap_or(u32::MAX),
                    ),
                    Err(e) => return Err(remote(e)),
                };
                if deliveries > self.max_deliveries {
                    // Over the cap: to the dead letters, and never again here.
                    let dead = format!("{queue}.dead");
                    self.publish(&dead, vec![msg.payload.to_vec()], &|_| {
                        format!("dead-{queue}-{id}")
                    })
                    .await?;
                    msg.ack_with(AckKind::Term).await.map_err(remote)?;
                    continue;
                }
                out.push(Taken {
                    msg,
                    id,
                    deliveries,
                });
            }
            Ok(out)
        })
    }

    pub(crate) fn ack(&self, t: &Taken) -> Result<(), ManagerError> {
        self.ack_all(std::slice::from_ref(t))
    }

    /// Acknowledges messages: the acks are sent together and flushed (a
    /// lost ack only means the task comes back: at least once).
    pub(crate) fn ack_all(&self, taken: &[Taken]) -> Result<(), ManagerError> {
        self.rt.block_on(async {
            for t in taken {
                t.msg
                    .ack()
                    .await
                    .map_err(|e| ManagerError::LeaseLost(format!("NATS: {e}")))?;
            }
            self.nc.flush().await.map_err(remote)
        })
    }

    pub(crate) fn nack(&self, t: &Taken) -> Result<(), ManagerError> {
        self.rt
            .block_on(t.msg.ack_with(AckKind::Nak(None)))
            .map_err(remote)
    }

    pub(crate) fn progress(&self, t: &Taken) -> Result<(), ManagerError> {
        self.rt
            .block_on(t.msg.ack_with(AckKind::Progress))
            .map_err(|e| ManagerError::LeaseLost(format!("NATS: {e}")))
    }

    pub(crate) fn len(&self, queue: &str) -> Result<u64, ManagerError> {
        self.rt.block_on(async {
            let mut consumer = self.consumer(queue).await?;
            let info = consumer.info().await.map_err(remote)?;
            Ok(info.num_pending)
        })
    }

    /// Statistics from JetStream's stream and consumer information (see
    /// `Client::stats` for what each field means here).
    pub(crate) fn stats(&self) -> Result<ManagerStats, ManagerError> {
        self.rt.block_on(async {
            let mut infos = Vec::new();
            let mut streams = self.js.streams();
            while let Some(info) = streams.next().await {
                infos.push(info.map_err(remote)?);
            }
            let mut results = 0;
            let mut queues = Vec::new();
            for info in infos {
                if info.config.name == RESULTS_STREAM {
                    results = info.state.messages;
                    continue;
                }
                let Some(name) = info.config.name.strip_prefix("HERD_").and_then(unhex) else {
                    continue;
                };
                let mut q = QueueStats::new(name);
                let stored = info.state.messages;
                // A work queue holds a message until it is acknowledged (or
                // terminated on its way to the dead letters).
                q.put_total = info.state.last_sequence;
                q.acked_total = info.state.last_sequence.saturating_sub(stored);
                let stream = self
                    .js
                    .get_stream(&info.config.name)
                    .await
                    .map_err(remote)?;
                // No consumer yet: nothing was delivered.
                if let Ok(c) = stream.consumer_info("herd").await {
                    q.leased = c.num_ack_pending as u64;
                    // Every delivery takes a consumer sequence number; the
                    // stream sequence is the last message delivered once.
                    q.delivered_total = c.delivered.consumer_sequence;
                    q.redelivered_total = c
                        .delivered
                        .consumer_sequence
                        .saturating_sub(c.delivered.stream_sequence);
                }
                q.waiting = stored.saturating_sub(q.leased);
                queues.push(q);
            }
            QueueStats::sort_and_count_dead(&mut queues);
            Ok(ManagerStats {
                uptime: Duration::ZERO,
                connections: 0,
                queues,
                results,
            })
        })
    }

    pub(crate) fn set_result(&self, key: &str, body: Vec<u8>) -> Result<(), ManagerError> {
        self.rt
            .block_on(self.results.put(hex(key), body.into()))
            .map(|_| ())
            .map_err(remote)
    }

    pub(crate) fn wait_result(
        &self,
        key: &str,
        wait: Duration,
    ) -> Result<Option<Vec<u8>>, ManagerError> {
        self.rt.block_on(async {
            let mut watch = self
                .results
                .watch_with_history(hex(key))
                .await
                .map_err(remote)?;
            let next = async {
                while let Some(entry) = watch.next().await {
                    let entry = entry.map_err(remote)?;
                    if entry.operation == kv::Operation::Put {
                        return Ok(Some(entry.value.to_vec()));
                    }
                }
                Ok(None)
            };
            match tokio::time::timeout(wait, next).await {
                Ok(r) => r,
                Err(_) => Ok(None),
            }
        })
    }
}
