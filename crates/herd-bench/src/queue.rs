//! Suite `queue`: messages per second and MB/s from one producer process
//! to one consumer (the parent): herd `Queue` and `pipe` against Python's
//! `multiprocessing.Queue` and `Pipe`, ipc-channel (the Rust peer between
//! processes), with `crossbeam-channel` between two
//! threads as the in-process ceiling; 8-byte and 64 KiB messages; and herd
//! `Queue` with two producer and two consumer processes.

use std::time::Instant;

use herd::Queue;
use serde_bytes::ByteBuf;

use crate::report::{Record, emit, note, run_python};

const SUITE: &str = "queue";

fn record(case: &str, implementation: &str, msgs_s: f64, size: usize) {
    emit(&Record {
        suite: SUITE,
        case,
        implementation,
        metric: "msgs_per_s",
        value: msgs_s,
        unit: "msgs/s",
    });
    let mb = msgs_s * size as f64 / 1e6;
    emit(&Record {
        suite: SUITE,
        case,
        implementation,
        metric: "mb_per_s",
        value: mb,
        unit: "MB/s",
    });
}

#[herd::task]
fn produce(q: Queue<ByteBuf>, size: usize, n: u64) {
    let payload = ByteBuf::from(vec![7u8; size]);
    for _ in 0..n {
        if q.put(payload.clone()).is_err() {
            return;
        }
    }
}

fn herd_case(size: usize, n: u64) -> Result<f64, String> {
    let q: Queue<ByteBuf> = Queue::bounded(1024).map_err(|e| e.to_string())?;
    let t = Instant::now();
    let mut p = herd::spawn(produce, (q.clone(), size, n)).map_err(|e| e.to_string())?;
    for _ in 0..n {
        q.get().map_err(|e| e.to_string())?;
    }
    let dt = t.elapsed().as_secs_f64();
    p.join().map_err(|e| e.to_string())?;
    Ok(n as f64 / dt)
}

#[herd::task]
fn drain(q: Queue<ByteBuf>, n: u64) {
    for _ in 0..n {
        if q.get().is_err() {
            return;
        }
    }
}

/// Two producer processes and two consumer processes; total msgs/s.
fn herd_2to2(size: usize, n: u64) -> Result<f64, String> {
    let q: Queue<ByteBuf> = Queue::bounded(1024).map_err(|e| e.to_string())?;
    let t = Instant::now();
    let mut kids = Vec::new();
    for _ in 0..2 {
        kids.push(herd::spawn(produce, (q.clone(), size, n)).map_err(|e| e.to_string())?);
    }
    let mut drains = Vec::new();
    for _ in 0..2 {
        drains.push(herd::spawn(drain, (q.clone(), n)).map_err(|e| e.to_string())?);
    }
    for k in kids.iter_mut().chain(drains.iter_mut()) {
        k.join().map_err(|e| e.to_string())?;
    }
    Ok(2.0 * n as f64 / t.elapsed().as_secs_f64())
}

#[herd::task]
fn pipe_producer(mut conn: herd::Connection<ByteBuf>, size: usize, n: u64) {
    let payload = ByteBuf::from(vec![7u8; size]);
    for _ in 0..n {
        if conn.send(&payload).is_err() {
            return;
        }
    }
}

fn herd_pipe(size: usize, n: u64) -> Result<f64, String> {
    let (mut rx, tx) = herd::pipe::<ByteBuf>(false).map_err(|e| e.to_string())?;
    let t = Instant::now();
    let mut p = herd::spawn(pipe_producer, (tx, size, n)).map_err(|e| e.to_string())?;
    for _ in 0..n {
        rx.recv().map_err(|e| e.to_string())?;
    }
    let dt = t.elapsed().as_secs_f64();
    p.join().map_err(|e| e.to_string())?;
    Ok(n as f64 / dt)
}

/// ipc-channel's producer: connects to the parent's one-shot server by
/// name and sends `n` messages.
#[herd::task]
fn ipc_producer(name: String, size: usize, n: u64) {
    let Ok(tx) = ipc_channel::ipc::IpcSender::<ByteBuf>::connect(name) else {
        return;
    };
    let payload = ByteBuf::from(vec![7u8; size]);
    for _ in 0..n {
        if tx.send(payload.clone()).is_err() {
            return;
        }
    }
}

/// ipc-channel (the Rust peer for typed messages between processes): one
/// producer process to the parent, timed from the producer's start.
fn ipc_channel_case(size: usize, n: u64) -> Result<f64, String> {
    let (server, name) =
        ipc_channel::ipc::IpcOneShotServer::<ByteBuf>::new().map_err(|e| e.to_string())?;
    let t = Instant::now();
    let mut p = herd::spawn(ipc_producer, (name, size, n)).map_err(|e| e.to_string())?;
    let (rx, _first) = server.accept().map_err(|e| e.to_string())?;
    for _ in 1..n {
        rx.recv().map_err(|e| format!("{e:?}"))?;
    }
    let dt = t.elapsed().as_secs_f64();
    p.join().map_err(|e| e.to_string())?;
    Ok(n as f64 / dt)
}

fn crossbeam_case(size: usize, n: u64) -> f64 {
    let (tx, rx) = crossbeam_channel::bounded::<Vec<u8>>(1024);
    let t = Instant::now();
    let producer = std::thread::spawn(move || {
        let payload = vec![7u8; size];
        for _ in 0..n {
            if tx.send(payload.clone()).is_err() {
                return;
            }
        }
    });
    for _ in 0..n {
        let _ = rx.recv();
    }
    let dt = t.elapsed().as_secs_f64();
    let _ = producer.join();
    n as f64 / dt
}

fn python_case(kind: &str, size: usize, n: u64) -> Option<f64> {
    run_python(
        SUITE,
        "mp_queue.py",
        &[kind.to_owned(), size.to_string(), n.to_string()],
    )?
    .get("msgs_s")?
    .as_f64()
}

/// Runs the suite.
pub(crate) fn run(quick: bool) {
    let n22 = if quick { 100_000 } else { 1_000_000 };
    match herd_2to2(8, n22) {
        Ok(v) => record("8B-2to2", "herd-queue", v, 8),
        Err(e) => note(SUITE, &format!("herd 2to2 failed: {e}")),
    }
    for (case, size, n, py_n) in [
        (
            "8B-1to1",
            8usize,
            if quick { 200_000u64 } else { 2_000_000 },
            if quick { 20_000u64 } else { 100_000 },
        ),
        (
            "64KiB-1to1",
            64 * 1024,
            // Quick still moves 1.3 GB: with 5 000 messages the start of a
            // process and the first touch of the ring's pages were a third
            // of the time measured.
            if quick { 20_000 } else { 40_000 },
            if quick { 5_000 } else { 10_000 },
        ),
    ] {
        let herd = herd_case(size, n);
        match &herd {
            Ok(v) => record(case, "herd-queue", *v, size),
            Err(e) => note(SUITE, &format!("herd {case} failed: {e}")),
        }
        record(
            case,
            "crossbeam-channel-threads",
            crossbeam_case(size, n),
            size,
        );
        match herd_pipe(size, n) {
            Ok(v) => record(case, "herd-pipe", v, size),
            Err(e) => note(SUITE, &format!("herd pipe {case} failed: {e}")),
        }
        match ipc_channel_case(size, n) {
            Ok(v) => {
                record(case, "ipc-channel", v, size);
                if let Ok(h) = herd {
                    emit(&Record {
                        suite: SUITE,
                        case,
                        implementation: "herd-queue",
                        metric: "speedup_vs_ipc_channel",
                        value: h / v,
                        unit: "x",
                    });
                }
            }
            Err(e) => note(SUITE, &format!("ipc-channel {case} failed: {e}")),
        }
        if let Some(py) = python_case("pipe", size, py_n) {
            record(case, "python-mp-pipe", py, size);
        }
        if let Some(py) = python_case("queue", size, py_n) {
            record(case, "python-mp-queue", py, size);
            if let Ok(h) = herd {
                emit(&Record {
                    suite: SUITE,
                    case,
                    implementation: "herd-queue",
                    metric: "speedup_vs_python",
                    value: h / py,
                    unit: "x",
                });
            }
        }
    }
}
