//! Suite `distributed`: herd's embedded manager on loopback against
//! Python's `BaseManager` (the script beside this crate), in one run.
//!
//! * `sequential`: calls per second when each waits for the manager's
//!   answer — herd: `put`, `get`, `ack` (three acknowledged calls per
//!   item); Python: `put`, `get` (two). Reported per call.
//! * `pipelined_puts`: items per second, herd's `put_many` in batches of
//!   1 000 (one round trip each) — Python has no pipelining; its sequential
//!   puts stand beside it.
//! * `master_2_workers`: end-to-end tasks per second: a master puts N
//!   tasks, two worker processes take them, compute `n * n`, put results
//!   and acknowledge; the master collects every result. herd batches (up to
//!   256 per `get_many`, results with `put_many`, acks with `ack_many`).

use std::time::{Duration, Instant};

use herd::manager::{self, Manager};

use crate::report::{note, run_python};

const SUITE: &str = "distributed";
const KEY: &[u8] = b"herd-bench distributed key 8f3a";

fn record(case: &str, implementation: &str, metric: &str, value: f64, unit: &str) {
    crate::report::record(SUITE, case, implementation, metric, value, unit);
}

/// A worker process: batches of tasks in, batches of results out.
#[herd::task]
fn bench_worker(addr: String) -> u64 {
    let Ok(client) = manager::connect(addr, KEY) else {
        return 0;
    };
    let (tasks, results) = (client.queue::<u64>("task"), client.queue::<u64>("result"));
    let mut done = 0;
    loop {
        let Ok(batch) = tasks.get_many(256, Duration::from_secs(10), Duration::from_secs(30))
        else {
            return done;
        };
        if batch.is_empty() {
            return done;
        }
        // One stop sign (u64::MAX) per worker: take one, give the others back.
        let (stops, work): (Vec<_>, Vec<_>) = batch.into_iter().partition(|d| d.value == u64::MAX);
        let out: Vec<u64> = work.iter().map(|d| d.value * d.value).collect();
        if !out.is_empty() && (results.put_many(&out).is_err() || client.ack_many(work).is_err()) {
            return done;
        }
        done += out.len() as u64;
        let mut stops = stops.into_iter();
        if let Some(mine) = stops.next() {
            for other in stops {
                let _ = other.nack();
            }
            let _ = mine.ack();
            return done;
        }
    }
}

/// A nats-server for the JetStream runs (killed on drop).
struct NatsServer {
    child: std::process::Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl NatsServer {
    fn start() -> Result<Self, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let dir = std::env::temp_dir().join(format!("herd-bench-nats-{}", std::process::id()));
        let child = std::process::Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "--auth"])
            .arg(String::from_utf8_lossy(KEY).as_ref())
            .arg("-sd")
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("nats-server: {e}"))?;
        let server = Self { child, port, dir };
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > until {
                return Err("nats-server did not start".to_owned());
            }
            std::thread::yield_now();
        }
        Ok(server)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn herd_runs(quick: bool) -> Result<(), String> {
    let e = |e: herd::manager::ManagerError| e.to_string();
    let m = Manager::builder(KEY).start("127.0.0.1:0").map_err(e)?;
    runs("herd-manager", &m.addr().to_string(), quick)
}

fn runs(name: &str, addr: &str, quick: bool) -> Result<(), String> {
    let e = |e: herd::manager::ManagerError| e.to_string();
    let client = manager::connect(addr, KEY).map_err(e)?;
    let q = client.queue::<u64>("seq");
    let n: u64 = if quick { 2_000 } else { 10_000 };
    let t = Instant::now();
    for i in 0..n {
        q.put(&i).map_err(e)?;
        let d = q
            .get_timeout(Duration::from_secs(10))
            .map_err(e)?
            .ok_or("lost")?;
        d.ack().map_err(e)?;
    }
    record(
        "sequential",
        name,
        "calls_per_s",
        3.0 * n as f64 / t.elapsed().as_secs_f64(),
        "calls/s",
    );

    let batches = if quick { 20 } else { 100 };
    let items: Vec<u64> = (0..1_000).collect();
    let p = client.queue::<u64>("pipelined");
    let t = Instant::now();
    for _ in 0..batches {
        p.put_many(&items).map_err(e)?;
    }
    record(
        "pipelined_puts",
        name,
        "items_per_s",
        (batches * 1_000) as f64 / t.elapsed().as_secs_f64(),
        "items/s",
    );

    let n: u64 = if quick { 20_000 } else { 100_000 };
    let workers: Vec<_> = (0..2)
        .map(|_| herd::spawn(bench_worker, (addr.to_owned(),)))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let tasks = client.queue::<u64>("task");
    let results = client.queue::<u64>("result");
    let t = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1_000) {
        tasks.put_many(chunk).map_err(e)?;
    }
    let mut got = 0u64;
    while got < n {
        let batch = results
            .get_many(1_024, Duration::from_secs(30), Duration::from_secs(30))
            .map_err(e)?;
        if batch.is_empty() {
            return Err(format!("results stopped at {got} of {n}"));
        }
        got += batch.len() as u64;
        client.ack_many(batch).map_err(e)?;
    }
    record(
        "master_2_workers",
        name,
        "tasks_per_s",
        n as f64 / t.elapsed().as_secs_f64(),
        "tasks/s",
    );
    tasks.put_many(&[u64::MAX, u64::MAX]).map_err(e)?;
    for mut w in workers {
        let _ = w.join_timeout(Duration::from_secs(30));
    }
    Ok(())
}

/// Runs the suite.
pub(crate) fn run(quick: bool) {
    if let Err(e) = herd_runs(quick) {
        note(SUITE, &format!("herd manager run failed: {e}"));
    }
    match NatsServer::start() {
        Ok(server) => {
            let addr = format!("nats://127.0.0.1:{}", server.port);
            if let Err(e) = runs("herd-jetstream", &addr, quick) {
                note(SUITE, &format!("herd on JetStream failed: {e}"));
            }
        }
        Err(e) => note(SUITE, &format!("JetStream skipped: {e}")),
    }
    let n = if quick { 2_000 } else { 10_000 };
    if let Some(ops) = run_python(SUITE, "mp_manager.py", &["seq".to_owned(), n.to_string()])
        .and_then(|v| v["ops_s"].as_f64())
    {
        record(
            "sequential",
            "python-basemanager",
            "calls_per_s",
            ops,
            "calls/s",
        );
        record(
            "pipelined_puts",
            "python-basemanager",
            "items_per_s",
            ops,
            "items/s",
        );
    }
    if let Some(t) = run_python(SUITE, "mp_manager.py", &["e2e".to_owned(), n.to_string()])
        .and_then(|v| v["tasks_s"].as_f64())
    {
        record(
            "master_2_workers",
            "python-basemanager",
            "tasks_per_s",
            t,
            "tasks/s",
        );
    }
}
