//! Integration tests for `herd::Queue` with real child processes.
//! `harness = false`: `main` calls `herd::init()` first.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use herd::{GetError, ProcessState, PutError, Queue, StartMethod};
use herd_testkit::{GUARD, check, eventually};
use libtest_mimic::{Arguments, Failed, Trial};
use serde::{Deserialize, Deserializer, Serialize};

#[herd::task]
fn produce(q: Queue<(u32, u32)>, id: u32, n: u32) {
    for i in 0..n {
        q.put((id, i)).expect("put");
    }
}

#[herd::task]
fn consume(q: Queue<(u32, u32)>) -> Vec<(u32, u32)> {
    let mut got = Vec::new();
    loop {
        match q.get_timeout(GUARD) {
            Ok(item) => got.push(item),
            Err(GetError::Closed) => return got,
            Err(e) => panic!("consumer: {e}"),
        }
    }
}

#[herd::task]
fn produce_forever(q: Queue<u64>) {
    let mut i = 0u64;
    loop {
        let _ = q.put_timeout(i, GUARD);
        i += 1;
    }
}

#[herd::task]
fn consume_forever(q: Queue<u64>) {
    loop {
        let _ = q.get_timeout(GUARD);
    }
}

/// Deserializes only even numbers.
#[derive(Debug, Serialize)]
struct EvenOnly(u32);

impl<'de> Deserialize<'de> for EvenOnly {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u32::deserialize(d)?;
        if v % 2 == 0 {
            Ok(Self(v))
        } else {
            Err(serde::de::Error::custom(format!("{v} is odd")))
        }
    }
}

/// Also the stress test: `HERD_STRESS_ITEMS` sets the items per producer
/// (default 3000; try 1000000).
fn producers_and_consumers_lose_nothing() -> Result<(), Failed> {
    let q = Queue::bounded(64)?;
    let n: u32 = std::env::var("HERD_STRESS_ITEMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let mut producers = Vec::new();
    for (id, m) in [(0, StartMethod::Spawn), (1, StartMethod::ForkServer)] {
        producers.push(
            herd::Process::builder(produce, (q.clone(), id, n))
                .start_method(m)
                .start()?,
        );
    }
    let mut consumers = Vec::new();
    for m in [StartMethod::Spawn, StartMethod::ForkServer] {
        consumers.push(
            herd::Process::builder(consume, (q.clone(),))
                .start_method(m)
                .start()?,
        );
    }
    for p in &mut producers {
        p.join()?;
    }
    q.close();
    let mut seen: HashMap<(u32, u32), u32> = HashMap::new();
    for c in &mut consumers {
        let got = c.join()?;
        // Per producer, each consumer sees items in the order they were put.
        for id in 0..2 {
            let seq: Vec<u32> = got
                .iter()
                .filter(|(p, _)| *p == id)
                .map(|(_, i)| *i)
                .collect();
            check(
                seq.windows(2).all(|w| w[0] < w[1]),
                "order per producer kept",
            )?;
        }
        for item in got {
            *seen.entry(item).or_default() += 1;
        }
    }
    check(
        seen.len() == 2 * n as usize,
        format!("{} distinct items of {}", seen.len(), 2 * n),
    )?;
    check(seen.values().all(|&c| c == 1), "nothing duplicated")
}

fn bounded_backpressure_and_timeouts() -> Result<(), Failed> {
    let q: Queue<u8> = Queue::bounded(2)?;
    q.put(1)?;
    q.put(2)?;
    check(q.is_full() && q.len() == 2, "full")?;
    check(
        matches!(q.try_put(3), Err(PutError::Full(3))),
        "try_put hands the value back",
    )?;
    let t = Instant::now();
    check(
        matches!(
            q.put_timeout(3, Duration::from_millis(50)),
            Err(PutError::Timeout(3))
        ),
        "put_timeout",
    )?;
    check(t.elapsed() >= Duration::from_millis(50), "waited")?;
    check(q.get()? == 1 && q.get()? == 2, "fifo")?;
    check(matches!(q.try_get(), Err(GetError::Empty)), "empty")?;
    check(
        matches!(
            q.get_timeout(Duration::from_millis(20)),
            Err(GetError::Timeout)
        ),
        "get_timeout",
    )
}

fn close_wakes_blocked_callers() -> Result<(), Failed> {
    let q: Queue<u8> = Queue::bounded(1)?;
    let (tx, rx) = std::sync::mpsc::channel();
    let getter = {
        let q = q.clone();
        std::thread::spawn(move || {
            tx.send(rustix::thread::gettid().as_raw_nonzero().get())
                .ok();
            q.get_timeout(GUARD)
        })
    };
    let tid = rx.recv_timeout(GUARD)?;
    let wchan = format!("/proc/self/task/{tid}/wchan");
    check(
        eventually(|| std::fs::read_to_string(&wchan).is_ok_and(|w| w.contains("futex"))),
        "getter blocked",
    )?;
    q.close();
    check(
        matches!(getter.join().map_err(|_| "thread")?, Err(GetError::Closed)),
        "getter woke with Closed",
    )?;
    check(
        matches!(q.put(1), Err(PutError::Closed(1))),
        "put after close hands the value back",
    )
}

fn oversize_and_malformed() -> Result<(), Failed> {
    let q: Queue<Vec<u8>> = Queue::builder().max_message(100).build()?;
    match q.put(vec![0; 1000]) {
        Err(PutError::TooLarge { value, size, limit }) => check(
            value.len() == 1000 && size > 1000 && limit == 100,
            "value handed back with sizes",
        )?,
        other => return Err(format!("expected TooLarge, got {other:?}").into()),
    }
    let q: Queue<EvenOnly> = Queue::new()?;
    q.put(EvenOnly(3))?;
    q.put(EvenOnly(4))?;
    match q.get() {
        Err(GetError::Decode(reason)) => check(reason.contains("3 is odd"), reason)?,
        other => return Err(format!("expected a decode error, got {other:?}").into()),
    }
    check(q.get().is_ok_and(|v| v.0 == 4), "the next message is fine")
}

fn killed_producer_and_consumer_leave_the_queue_usable() -> Result<(), Failed> {
    let q: Queue<u64> = Queue::bounded(16)?;
    let mut producer = herd::spawn(produce_forever, (q.clone(),))?;
    let mut consumer = herd::spawn(consume_forever, (q.clone(),))?;
    // Let them run a little, then kill both mid-stream.
    let mut taken = 0;
    while taken < 200 {
        if q.get_timeout(GUARD).is_ok() {
            taken += 1;
        }
    }
    producer.kill()?;
    consumer.kill()?;
    // The queue still works: drain, then a fresh put/get round trip.
    while q.try_get().is_ok() {}
    q.put(42)?;
    check(q.get_timeout(GUARD)? == 42, "round trip after the kills")?;
    check(q.is_empty(), "empty")
}

#[herd::task]
fn worker(q: herd::JoinableQueue<u32>, done: Queue<u32>) {
    while let Ok(v) = q.get_timeout(GUARD) {
        done.put(v).expect("done");
        q.task_done().expect("task_done");
    }
}

fn joinable_queue_join_waits_for_task_done() -> Result<(), Failed> {
    let (q, done) = (herd::JoinableQueue::new()?, Queue::new()?);
    for i in 0..50u32 {
        q.put(i)?;
    }
    let mut workers = Vec::new();
    for _ in 0..2 {
        workers.push(
            herd::Process::builder(worker, (q.clone(), done.clone()))
                .daemon(true)
                .start()?,
        );
    }
    check(q.join_timeout(GUARD), "join returned")?;
    check(done.len() == 50, format!("{} done", done.len()))?;
    check(q.task_done().is_err(), "one task_done too many is an error")?;
    q.queue().close();
    for w in &mut workers {
        w.join()?;
    }
    Ok(())
}

#[herd::task]
fn pipe_peer(mut conn: herd::Connection<Vec<u32>>) -> usize {
    let mut n = 0;
    while let Ok(v) = conn.recv() {
        n += v.len();
        if conn.send(&v.iter().map(|x| x * 2).collect()).is_err() {
            break;
        }
    }
    n
}

fn pipe_round_trips_and_disconnects() -> Result<(), Failed> {
    let (mut here, there) = herd::pipe::<Vec<u32>>(true)?;
    let mut child = herd::spawn(pipe_peer, (there,))?;
    check(
        !here.poll(Duration::from_millis(10))?,
        "nothing to read yet",
    )?;
    for i in 0..100u32 {
        here.send(&vec![i; 10])?;
        check(here.recv_timeout(GUARD)? == vec![i * 2; 10], "doubled")?;
    }
    drop(here);
    check(
        child.join()? == 1000,
        "the child saw every element, then the end",
    )?;
    // One-way: the first end only receives, the second only sends.
    let (mut rx, mut tx) = herd::pipe::<u8>(false)?;
    check(
        matches!(rx.send(&1), Err(herd::SendError::NotWritable)),
        "receiver cannot send",
    )?;
    check(
        matches!(tx.recv(), Err(herd::RecvError::NotReadable)),
        "sender cannot receive",
    )?;
    tx.send(&7)?;
    check(rx.recv()? == 7, "one way")?;
    check(
        matches!(
            rx.recv_timeout(Duration::from_millis(20)),
            Err(herd::RecvError::Timeout)
        ),
        "timeout",
    )?;
    drop(tx);
    check(
        matches!(rx.recv(), Err(herd::RecvError::Disconnected)),
        "disconnected after the sender went",
    )
}

fn pipe_zero_timeouts_see_waiting_data() -> Result<(), Failed> {
    let (mut a, mut b) = herd::pipe::<u8>(true)?;
    a.send(&5)?;
    // The message is in the socket; a zero timeout must still see it.
    check(
        eventually(|| b.poll(Duration::ZERO).unwrap_or(false)),
        "poll(0) sees it",
    )?;
    check(
        b.recv_timeout(Duration::ZERO)? == 5,
        "recv_timeout(0) takes it",
    )?;
    check(!b.poll(Duration::ZERO)?, "then nothing")
}

fn pipe_oversize_frame_is_an_error() -> Result<(), Failed> {
    let (mut a, mut b) = herd::pipe::<u8>(true)?;
    b.set_max_message(16);
    a.send_bytes(&[0u8; 1000])?;
    check(
        matches!(
            b.recv(),
            Err(herd::RecvError::TooLarge {
                size: 1000,
                limit: 16
            })
        ),
        "refused",
    )?;
    a.set_max_message(8);
    check(
        matches!(
            a.send_bytes(&[0u8; 9]),
            Err(herd::SendError::TooLarge { .. })
        ),
        "sender limit",
    )
}

#[herd::task]
fn s7_writer(q: Queue<String>) {
    for v in ["A", "B", "C"] {
        q.put(v.to_owned()).expect("put");
    }
}

#[herd::task]
fn s7_reader(q: Queue<String>, seen: Queue<String>) {
    loop {
        if let Ok(v) = q.get() {
            seen.put(v).expect("echo");
        }
    }
}

/// S7: the parent joins the writer, then terminates the reader blocked in get.
fn s7_terminate_blocked_reader() -> Result<(), Failed> {
    let (q, seen) = (Queue::new()?, Queue::new()?);
    let mut w = herd::spawn(s7_writer, (q.clone(),))?;
    let mut r = herd::spawn(s7_reader, (q.clone(), seen.clone()))?;
    w.join()?;
    let got: Vec<String> = (0..3)
        .map(|_| seen.get_timeout(GUARD))
        .collect::<Result<_, _>>()?;
    check(got == ["A", "B", "C"], format!("{got:?}"))?;
    check(
        eventually(|| r.state().is_ok_and(|s| s == ProcessState::Sleeping)),
        "reader blocked in get",
    )?;
    r.terminate()?;
    check(!r.is_alive(), "reader terminated")
}

/// Items whose frames straddle the end of a small ring (decoded from a
/// copy) and items in one piece (decoded where they lie) come back intact
/// and in order, round after round, the queue never empty in between.
fn frames_across_the_ring_end_decode_intact() -> Result<(), Failed> {
    let q: Queue<Vec<u8>> = Queue::builder().capacity_bytes(4096).build()?;
    let item = |i: u32| -> Vec<u8> { (0..(300 + i % 97)).map(|k| (k ^ i) as u8).collect() };
    let (mut put, mut got) = (0u32, 0u32);
    // Keep a few items in flight so head and tail go all the way round.
    while got < 400 {
        while put < got + 5 {
            q.put(item(put)).map_err(|e| e.to_string())?;
            put += 1;
        }
        let v = q.get().map_err(|e| e.to_string())?;
        check(v == item(got), format!("item {got} intact"))?;
        got += 1;
    }
    Ok(())
}

fn main() {
    herd::init();
    let args = Arguments::from_args();
    let tests = vec![
        Trial::test(
            "producers_and_consumers_lose_nothing",
            producers_and_consumers_lose_nothing,
        ),
        Trial::test(
            "bounded_backpressure_and_timeouts",
            bounded_backpressure_and_timeouts,
        ),
        Trial::test("close_wakes_blocked_callers", close_wakes_blocked_callers),
        Trial::test(
            "frames_across_the_ring_end_decode_intact",
            frames_across_the_ring_end_decode_intact,
        ),
        Trial::test("oversize_and_malformed", oversize_and_malformed),
        Trial::test(
            "killed_producer_and_consumer_leave_the_queue_usable",
            killed_producer_and_consumer_leave_the_queue_usable,
        ),
        Trial::test("s7_terminate_blocked_reader", s7_terminate_blocked_reader),
        Trial::test(
            "joinable_queue_join_waits_for_task_done",
            joinable_queue_join_waits_for_task_done,
        ),
        Trial::test(
            "pipe_round_trips_and_disconnects",
            pipe_round_trips_and_disconnects,
        ),
        Trial::test(
            "pipe_oversize_frame_is_an_error",
            pipe_oversize_frame_is_an_error,
        ),
        Trial::test(
            "pipe_zero_timeouts_see_waiting_data",
            pipe_zero_timeouts_see_waiting_data,
        ),
    ];
    libtest_mimic::run(&args, tests).exit();
}
