//! Integration tests for `herd::Pool` with real worker processes and threads.
//! `harness = false`: `main` calls `herd::init()` first.

use std::collections::HashSet;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use herd::pool::{Backend, TaskError, TaskEvent};
use herd::sync::{Event, Value};
use herd::{Pool, PoolError, Signal};
use herd_testkit::{GUARD, check, eventually, pidfd_of, wait_fd};
use libtest_mimic::{Arguments, Failed, Trial};
use serde::{Serialize, Serializer};

#[herd::task]
fn square(x: u64) -> u64 {
    x * x
}

#[herd::task]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

#[herd::task]
fn my_pid() -> u32 {
    std::process::id()
}

#[herd::task]
fn pid_of_item(_x: u32) -> u32 {
    std::process::id()
}

#[herd::task]
fn die_by(signal: i32) -> u32 {
    // Twice: Rust's runtime handles the first SIGSEGV (its stack-overflow
    // check), restores the default action and returns; the second kills.
    for _ in 0..2 {
        // SAFETY: raise only sends a signal to this process.
        unsafe {
            libc::raise(signal);
        }
    }
    0
}

#[herd::task]
fn exit_with(code: i32) -> u32 {
    std::process::exit(code)
}

#[herd::task]
fn boom(x: u32) -> u32 {
    if x == 3 {
        panic!("item {x} is cursed");
    }
    x
}

#[herd::task]
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

static CHANNELS: OnceLock<(herd::Queue<u32>, Event)> = OnceLock::new();

/// Shared objects reach pool workers through the initializer (as in Python).
#[herd::task]
fn hold_channels(started: herd::Queue<u32>, go: Event) {
    let _ = CHANNELS.set((started, go));
}

/// Waits on `go` (so the test decides when the task ends), reporting its pid first.
#[herd::task]
fn wait_for_go() -> u32 {
    let (started, go) = CHANNELS.get().expect("initializer ran");
    started.put(std::process::id()).expect("put");
    go.wait_timeout(GUARD);
    7
}

#[herd::task]
fn takes_queue(q: herd::Queue<u32>) -> usize {
    q.len()
}

/// A value whose serialization always fails.
#[derive(Debug, serde::Deserialize)]
struct Unserializable;

impl Serialize for Unserializable {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("this value refuses to serialize"))
    }
}

#[herd::task]
fn unserializable() -> Unserializable {
    Unserializable
}

thread_local! {
    /// Set by the initializer on the worker's thread (a process worker runs
    /// its tasks on the thread that ran its initializer).
    static INIT_TAG: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

#[herd::task]
fn init_worker(counter: Value<u32>, tag: String) {
    counter.fetch_add(1);
    let before = INIT_TAG.with(|t| t.borrow_mut().replace(tag));
    assert!(before.is_none(), "initializer ran twice in one worker");
}

#[herd::task]
fn read_tag() -> String {
    INIT_TAG.with(|t| t.borrow().clone()).unwrap_or_default()
}

#[herd::task]
fn failing_init() {
    panic!("no database");
}

#[herd::task]
fn slow_init(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

#[herd::task]
fn crashing_init() {
    std::process::abort();
}

/// Deserializes by panicking (in the parent, which decodes results).
#[derive(Debug, Serialize)]
struct PanicsOnDecode(u8);

impl<'de> serde::Deserialize<'de> for PanicsOnDecode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u8::deserialize(d)?;
        if v == 13 {
            panic!("unlucky {v}");
        }
        Ok(Self(v))
    }
}

#[herd::task]
fn unlucky(v: u8) -> PanicsOnDecode {
    PanicsOnDecode(v)
}

/// Caps this process's address space just above what it uses, then asks
/// for far more: the allocation fails and Rust aborts, as a task that runs
/// out of memory does.
#[herd::task]
fn exhaust_memory() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let cap = (kib + 64 * 1024) * 1024;
    let limit = libc::rlimit {
        rlim_cur: cap,
        rlim_max: cap,
    };
    // SAFETY: setrlimit reads the struct; it only lowers this process's limit.
    unsafe {
        libc::setrlimit(libc::RLIMIT_AS, &limit);
    }
    let v: Vec<u8> = vec![1; 512 << 20];
    v.len()
}

/// An iterator whose size hint claims `claim` items while it yields `real`.
struct Liar {
    left: u64,
    claim: usize,
}

impl Iterator for Liar {
    type Item = u64;
    fn next(&mut self) -> Option<u64> {
        self.left = self.left.checked_sub(1)?;
        Some(self.left)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.claim, Some(self.claim))
    }
}

fn pool(backend: Backend, size: usize) -> Pool {
    Pool::builder()
        .backend(backend)
        .size(size)
        .build()
        .expect("pool")
}

fn each_backend(f: impl Fn(Backend) -> Result<(), Failed>) -> Result<(), Failed> {
    f(Backend::Processes)?;
    f(Backend::Threads)
}

fn the_api_works_on_both_backends() -> Result<(), Failed> {
    each_backend(|b| {
        let p = pool(b, 2);
        check(p.apply(square, (9,)) == Ok(81), "apply")?;
        let r = p.apply_async(add, (40, 2));
        check(r.get() == Ok(42), "apply_async")?;
        check(
            p.map(square, 0..10)? == (0..10).map(|x| x * x).collect::<Vec<_>>(),
            "map",
        )?;
        check(
            p.starmap(add, vec![(1, 2), (3, 4)])? == vec![3, 7],
            "starmap",
        )?;
        let got: Vec<u64> = p.imap(square, 0..50u64).map(Result::unwrap).collect();
        check(
            got == (0..50).map(|x| x * x).collect::<Vec<_>>(),
            "imap order",
        )?;
        let mut un: Vec<u64> = p
            .imap_unordered(square, 0..50u64)
            .map(Result::unwrap)
            .collect();
        un.sort_unstable();
        check(un == got, "imap_unordered has every item")?;
        let mut r = p.apply_async(nap, (1,));
        check(r.get_timeout(GUARD) == Ok(1), "get_timeout")?;
        check(
            r.get_timeout(GUARD) == Err(TaskError::AlreadyTaken),
            "taken once",
        )?;
        let m = p.map_async(square, vec![2, 3]);
        check(
            m.wait_timeout(GUARD) && m.successful() == Some(true),
            "map_async",
        )?;
        check(m.get() == Ok(vec![4, 9]), "map_async value")?;
        p.close();
        p.join_timeout(GUARD)?;
        Ok(())
    })
}

/// A thread pool's map claims items from a shared counter: a closed pool
/// refuses it, and a pool terminated mid-map ends it with an error, not a
/// hang (the items never claimed get the pool's reason).
fn thread_maps_end_on_close_and_terminate() -> Result<(), Failed> {
    let p = pool(Backend::Threads, 2);
    p.close();
    check(
        p.map(square, 0..10u64) == Err(TaskError::Closed),
        "a closed pool refuses a map",
    )?;
    let p = pool(Backend::Threads, 1);
    // One worker busy for a while, the map's jobs queued behind it.
    let busy = p.apply_async(nap, (200,));
    let m = p.map_async_chunked(square, 0..100u64, 1);
    p.terminate();
    check(m.wait_timeout(GUARD), "the map ends")?;
    check(
        m.get() == Err(TaskError::Terminated),
        "with the pool's reason",
    )?;
    let _ = busy.wait_timeout(GUARD);
    Ok(())
}

/// Item 0 of `gated_map_item` waits here until the test opens the gate.
static GATE: (std::sync::Mutex<(bool, bool)>, std::sync::Condvar) = (
    std::sync::Mutex::new((false, false)),
    std::sync::Condvar::new(),
);

/// Heap values, so that a result slot read or freed too early shows.
fn gated_map_item(n: u64) -> String {
    if n == 0 {
        let (m, cv) = &GATE;
        let mut g = m.lock().unwrap();
        g.0 = true;
        cv.notify_all();
        let deadline = Instant::now() + GUARD;
        while !g.1 && Instant::now() < deadline {
            g = cv.wait_timeout(g, GUARD).unwrap().0;
        }
    }
    format!("item {n} {}", "x".repeat(64))
}

/// A thread pool terminated while its map's job is running: the map ends
/// with `Terminated` at once, and the running job (abandoned, still
/// writing results) neither hands out unwritten values nor writes into a
/// buffer already handed over or freed.
fn thread_map_terminated_while_running() -> Result<(), Failed> {
    let p = pool(Backend::Threads, 1);
    let m = p.map_async_chunked(gated_map_item, 0..64u64, 64);
    {
        let (lock, cv) = &GATE;
        let mut g = lock.lock().unwrap();
        let deadline = Instant::now() + GUARD;
        while !g.0 && Instant::now() < deadline {
            g = cv.wait_timeout(g, GUARD).unwrap().0;
        }
        check(g.0, "item 0 started")?;
    }
    p.terminate();
    check(m.wait_timeout(GUARD), "the map ends at terminate")?;
    let got = m.get();
    // Let the abandoned job go on: it must not touch what the map handed out.
    {
        let (lock, cv) = &GATE;
        lock.lock().unwrap().1 = true;
        cv.notify_all();
    }
    check(
        got == Err(TaskError::Terminated),
        format!("terminated, got {:?}", got.as_ref().map(Vec::len)),
    )?;
    // The abandoned job runs its chunk to the end; a second map on a fresh
    // pool proves the process is still sound.
    let q = pool(Backend::Threads, 2);
    check(
        q.map(gated_map_item, 1..4u64).map(|v| v.len()) == Ok(3),
        "a later map works",
    )?;
    Ok(())
}

/// The thread that ran `first_then_wait`, and whether `record_run` ran.
static FIRST_TID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
static RAN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static GATE2: (std::sync::Mutex<bool>, std::sync::Condvar) =
    (std::sync::Mutex::new(false), std::sync::Condvar::new());

fn first_then_wait(x: u64) -> u64 {
    // SAFETY: gettid has no preconditions.
    FIRST_TID.store(unsafe { libc::gettid() }, Ordering::SeqCst);
    let (m, cv) = &GATE2;
    let mut open = m.lock().unwrap();
    let deadline = Instant::now() + GUARD;
    while !*open && Instant::now() < deadline {
        open = cv.wait_timeout(open, GUARD).unwrap().0;
    }
    x
}

fn record_run(x: u32) -> u32 {
    RAN.store(true, Ordering::SeqCst);
    x
}

/// Terminates its pool when woken.
struct TerminateOnWake(Arc<Pool>);

impl Wake for TerminateOnWake {
    fn wake(self: Arc<Self>) {
        self.0.terminate();
    }
}

/// A job a thread took while finishing the one before, and that the pool
/// terminated before the thread got to it, is not run: it was reported
/// `Terminated`, so its side effects must not happen.
fn thread_job_taken_then_terminated_does_not_run() -> Result<(), Failed> {
    // Events on: the map goes through chunk jobs, whose completion fills
    // the result (and wakes its waker) after the next job was taken.
    let p = Arc::new(
        Pool::builder()
            .backend(Backend::Threads)
            .size(1)
            .events(true)
            .build()?,
    );
    let mut first = pin!(p.map_async(first_then_wait, [7u64]));
    check(
        eventually(|| FIRST_TID.load(Ordering::SeqCst) != 0),
        "the first job started",
    )?;
    let tid = FIRST_TID.load(Ordering::SeqCst);
    let second = p.apply_async(record_run, (1u32,));
    let waker = Waker::from(Arc::new(TerminateOnWake(Arc::clone(&p))));
    check(
        first
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending(),
        "the first job is still running",
    )?;
    {
        let (m, cv) = &GATE2;
        *m.lock().unwrap() = true;
        cv.notify_all();
    }
    // The worker thread exits once it is done with whatever it runs.
    check(
        eventually(|| !std::path::Path::new(&format!("/proc/self/task/{tid}")).exists()),
        "the worker thread exits",
    )?;
    check(
        second.get() == Err(TaskError::Terminated),
        "the second job was terminated",
    )?;
    check(!RAN.load(Ordering::SeqCst), "and did not run")
}

fn chunking_is_correct() -> Result<(), Failed> {
    each_backend(|b| {
        let p = pool(b, 2);
        let want: Vec<u64> = (0..1000).map(|x| x * x).collect();
        for chunk in [1, 3, 7, 999, 1000, 5000] {
            check(
                p.map_chunked(square, 0..1000u64, chunk)? == want,
                format!("chunk {chunk}"),
            )?;
            let got: Vec<u64> = p
                .imap_chunked(square, 0..1000u64, chunk)
                .map(Result::unwrap)
                .collect();
            check(got == want, format!("imap chunk {chunk}"))?;
        }
        check(p.map(square, Vec::<u64>::new())?.is_empty(), "empty map")?;
        check(p.map(square, 0..1000u64)? == want, "auto chunk")?;
        // A failure is reported by its position; the other items are fine.
        let err = p.map_chunked(boom, 0..10u32, 4).unwrap_err();
        check(
            matches!(&err, TaskError::Panicked(r) if r.message.contains("item 3 is cursed")),
            format!("map error: {err}"),
        )?;
        let items: Vec<_> = p.imap_chunked(boom, 0..6u32, 2).collect();
        check(items.len() == 6 && items[3].is_err(), "imap error in place")?;
        check(
            items
                .iter()
                .enumerate()
                .all(|(i, r)| i == 3 || *r == Ok(i as u32)),
            "imap others fine",
        )?;
        Ok(())
    })
}

fn imap_is_lazy_and_bounded() -> Result<(), Failed> {
    each_backend(|b| {
        let p = pool(b, 2);
        let pulled = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&pulled);
        let input = (0u64..).inspect(move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
        });
        let mut it = p.imap(square, input);
        for i in 0..100u64 {
            check(it.next() == Some(Ok(i * i)), "imap over an endless input")?;
            check(it.in_flight() <= 8, format!("in flight {}", it.in_flight()))?;
        }
        let taken = pulled.load(Ordering::Relaxed);
        check(
            taken <= 100 + 8,
            format!("pulled {taken} items for 100 results"),
        )?;
        Ok(())
    })
}

fn panic_is_an_error_with_location() -> Result<(), Failed> {
    each_backend(|b| {
        let p = pool(b, 1);
        match p.apply(boom, (3,)) {
            Err(TaskError::Panicked(r)) => {
                check(r.message == "item 3 is cursed", r.message.clone())?;
                check(
                    r.location.as_deref().is_some_and(|l| l.contains("pool.rs")),
                    format!("location {:?}", r.location),
                )?;
            }
            other => return Err(format!("{other:?}").into()),
        }
        check(p.apply(boom, (4,)) == Ok(4), "the worker goes on")?;
        Ok(())
    })
}

fn unserializable_result_is_an_error() -> Result<(), Failed> {
    let p = pool(Backend::Processes, 1);
    let r = p.apply(unserializable, ());
    check(
        matches!(&r, Err(TaskError::ResultEncode(m)) if m.contains("refuses")),
        format!("{r:?}"),
    )?;
    check(p.apply(square, (3,)) == Ok(9), "the pool goes on")
}

fn unregistered_task_is_an_error() -> Result<(), Failed> {
    fn not_a_task(x: u32) -> u32 {
        x
    }
    let p = pool(Backend::Processes, 1);
    let r = p.apply(not_a_task, (1,));
    check(
        matches!(r, Err(TaskError::NotRegistered(_))),
        format!("{r:?}"),
    )?;
    // The thread backend needs no registration.
    let t = pool(Backend::Threads, 1);
    check(t.apply(not_a_task, (1,)) == Ok(1), "threads run any fn")?;
    // A shared object as a task argument: a clear error naming the way.
    let r = p.apply(takes_queue, (herd::Queue::new()?,));
    check(
        matches!(&r, Err(TaskError::ArgsEncode(m)) if m.contains("initializer")),
        format!("{r:?}"),
    )?;
    check(
        t.apply(takes_queue, (herd::Queue::new()?,)) == Ok(0),
        "threads take it",
    )
}

fn worker_killed_mid_task() -> Result<(), Failed> {
    let p = pool(Backend::Processes, 2);
    let before: HashSet<u32> = p.worker_pids().into_iter().collect();
    for (sig, name) in [
        (libc::SIGKILL, "SIGKILL"),
        (libc::SIGSEGV, "SIGSEGV"),
        (libc::SIGABRT, "SIGABRT"),
    ] {
        let others: Vec<_> = (0..20u64).map(|i| p.apply_async(square, (i,))).collect();
        let t = Instant::now();
        let r = p.apply_async(die_by, (sig,));
        match r.get() {
            Err(TaskError::WorkerKilled { signal, .. }) if signal == Signal::from_raw(sig) => {}
            other => return Err(format!("{name}: {other:?}").into()),
        }
        check(
            t.elapsed() < Duration::from_secs(1),
            format!("{name} took {:?}", t.elapsed()),
        )?;
        for (i, o) in others.into_iter().enumerate() {
            check(
                o.get() == Ok((i * i) as u64),
                format!("{name}: task {i} unaffected"),
            )?;
        }
    }
    let r = p.apply(exit_with, (3,));
    check(
        matches!(r, Err(TaskError::WorkerExited { code: 3, .. })),
        format!("{r:?}"),
    )?;
    check(
        p.map(square, 0..100u64)?.len() == 100,
        "replaced workers work",
    )?;
    check(p.worker_pids().len() == 2, "back to full size")?;
    let after: HashSet<u32> = p.worker_pids().into_iter().collect();
    check(before != after, "workers were replaced")?;
    p.close();
    p.join_timeout(GUARD)?;
    Ok(())
}

fn worker_killed_from_outside_while_busy() -> Result<(), Failed> {
    let started = herd::Queue::new()?;
    let go = Event::new()?;
    let p = Pool::builder()
        .size(2)
        .initializer(hold_channels, (started.clone(), go.clone()))
        .build()?;
    let r = p.apply_async(wait_for_go, ());
    let pid = started.get_timeout(GUARD)?;
    let t = Instant::now();
    // SAFETY: kill sends a signal to our own worker.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    let got = r.get();
    check(
        matches!(got, Err(TaskError::WorkerKilled { pid: p2, signal }) if p2 == pid && signal == Signal::KILL),
        format!("{got:?}"),
    )?;
    check(
        t.elapsed() < Duration::from_secs(1),
        format!("took {:?}", t.elapsed()),
    )?;
    // A task that was waiting behind it is not lost.
    let r2 = p.apply_async(wait_for_go, ());
    started.get_timeout(GUARD)?;
    go.set();
    check(r2.get() == Ok(7), "next task runs")?;
    Ok(())
}

fn killing_an_idle_worker_never_wedges() -> Result<(), Failed> {
    let p = pool(Backend::Processes, 2);
    let victim = p.worker_pids()[0];
    let fd = pidfd_of(victim).ok_or("pidfd")?;
    // SAFETY: kill sends a signal to our own worker.
    unsafe {
        libc::kill(victim as i32, libc::SIGKILL);
    }
    check(wait_fd(std::os::fd::AsFd::as_fd(&fd), GUARD), "victim died")?;
    check(
        p.map_chunked(square, 0..200u64, 1)?.len() == 200,
        "map after an idle kill",
    )?;
    check(
        eventually(|| p.worker_pids().len() == 2 && !p.worker_pids().contains(&victim)),
        "replaced",
    )?;
    // Kill one more idle worker, then terminate: terminate returns.
    let v2 = p.worker_pids()[1];
    // SAFETY: as above.
    unsafe {
        libc::kill(v2 as i32, libc::SIGKILL);
    }
    let t = Instant::now();
    p.terminate();
    check(t.elapsed() < Duration::from_secs(5), "terminate returned")?;
    Ok(())
}

fn timeout_then_more_work() -> Result<(), Failed> {
    each_backend(|b| {
        let p = pool(b, 1);
        let t = Instant::now();
        let slow = p.apply_async_timeout(nap, (30_000,), Duration::from_millis(100));
        let queued = p.apply_async(square, (5,));
        let got = slow.get();
        check(
            got == Err(TaskError::TimedOut(Duration::from_millis(100))),
            format!("{b:?}: {got:?}"),
        )?;
        check(
            t.elapsed() < Duration::from_secs(5),
            format!("took {:?}", t.elapsed()),
        )?;
        check(queued.get() == Ok(25), "the task queued behind it runs")?;
        check(p.apply(square, (6,)) == Ok(36), "the pool goes on")?;
        // A pool-wide timeout.
        let q = Pool::builder()
            .backend(b)
            .size(1)
            .task_timeout(Duration::from_millis(100))
            .build()?;
        check(
            matches!(q.apply(nap, (30_000,)), Err(TaskError::TimedOut(_))),
            "pool-wide timeout",
        )?;
        check(q.apply(nap, (1,)) == Ok(1), "fast task within it")?;
        Ok(())
    })
}

fn max_tasks_per_child_recycles() -> Result<(), Failed> {
    each_backend(|b| {
        let p = Pool::builder()
            .backend(b)
            .size(1)
            .max_tasks_per_child(2)
            .build()?;
        let pids: Vec<u32> = (0..6)
            .map(|_| p.apply(my_pid, ()))
            .collect::<Result<_, _>>()?;
        if b == Backend::Processes {
            let distinct: HashSet<_> = pids.iter().collect();
            check(distinct.len() == 3, format!("pids {pids:?}"))?;
            check(
                pids[0] == pids[1] && pids[1] != pids[2],
                format!("pids {pids:?}"),
            )?;
        }
        p.close();
        p.join_timeout(GUARD)?;
        Ok(())
    })
}

fn initializer_runs_once_per_worker() -> Result<(), Failed> {
    each_backend(|b| {
        let counter = Value::new(0u32)?;
        let p = Pool::builder()
            .backend(b)
            .size(2)
            .initializer(init_worker, (counter.clone(), "ready".to_owned()))
            .build()?;
        if b == Backend::Processes {
            let tags = p.map_chunked(|_: u32| read_tag(), 0..4u32, 1);
            // Closures are not tasks on the process backend.
            check(
                matches!(tags, Err(TaskError::NotRegistered(_))),
                "closure refused",
            )?;
            check(p.apply(read_tag, ())? == "ready", "worker state set")?;
        }
        check(p.map(square, 0..100u64)?.len() == 100, "work")?;
        check(
            p.starmap(read_tag, vec![(); 8])?
                .iter()
                .all(|t| t == "ready"),
            "every worker initialized",
        )?;
        p.close();
        p.join_timeout(GUARD)?;
        let n = counter.get();
        check(
            match b {
                Backend::Processes => n == 2,
                // Threads share the process: the counter counts threads.
                Backend::Threads => n == 2,
            },
            format!("{b:?}: initializer ran {n} times"),
        )?;
        Ok(())
    })
}

fn failing_initializer_fails_tasks_not_hangs() -> Result<(), Failed> {
    each_backend(|b| {
        let p = Pool::builder()
            .backend(b)
            .size(2)
            .initializer(failing_init, ())
            .build()?;
        let r = p.apply_async(square, (2,));
        check(r.wait_timeout(GUARD), "resolved")?;
        let got = r.get();
        check(
            matches!(&got, Err(TaskError::Initializer(m)) if m.contains("no database")),
            format!("{b:?}: {got:?}"),
        )?;
        Ok(())
    })
}

fn close_join_terminate_in_every_state() -> Result<(), Failed> {
    each_backend(|b| {
        // join on an open pool.
        let p = pool(b, 2);
        check(
            matches!(p.join(), Err(PoolError::NotClosed)),
            "join needs close",
        )?;
        // close, then submit.
        p.close();
        check(
            p.apply(square, (2,)) == Err(TaskError::Closed),
            "closed pool refuses",
        )?;
        p.join_timeout(GUARD)?;
        p.terminate();
        // close with work queued: join waits for all of it.
        let p = pool(b, 2);
        let rs: Vec<_> = (0..10u64).map(|i| p.apply_async(nap, (i,))).collect();
        p.close();
        p.join_timeout(GUARD)?;
        for (i, r) in rs.into_iter().enumerate() {
            check(r.ready() && r.get() == Ok(i as u64), "work done at join")?;
        }
        // terminate with tasks running and queued.
        let p = pool(b, 1);
        let running = p.apply_async(nap, (30_000,));
        let queued = p.apply_async(square, (3,));
        let t = Instant::now();
        p.terminate();
        check(t.elapsed() < Duration::from_secs(5), "terminate returned")?;
        check(
            running.get() == Err(TaskError::Terminated),
            "running terminated",
        )?;
        check(
            queued.get() == Err(TaskError::Terminated),
            "queued terminated",
        )?;
        p.join_timeout(GUARD)?;
        check(
            p.apply(square, (1,)) == Err(TaskError::Closed),
            "terminated refuses",
        )?;
        p.terminate();
        // drop an open, busy pool.
        let p = pool(b, 1);
        let r = p.apply_async(nap, (30_000,));
        drop(p);
        check(r.get() == Err(TaskError::Terminated), "drop terminates")?;
        Ok(())
    })
}

fn events_report_the_task_life() -> Result<(), Failed> {
    each_backend(|b| {
        let p = Pool::builder().backend(b).size(1).events(true).build()?;
        let rx = p.events().ok_or("events on")?;
        let ok = p.apply_async(square, (2,));
        let id = ok.id();
        check(ok.get() == Ok(4), "value")?;
        let bad = p.apply_async(boom, (3,));
        let bad_id = bad.id();
        check(bad.get().is_err(), "failure")?;
        let mut seen = Vec::new();
        while seen.len() < 6 {
            seen.push(rx.recv_timeout(GUARD)?);
        }
        let want_pid = match b {
            Backend::Processes => p.worker_pids()[0],
            Backend::Threads => std::process::id(),
        };
        check(
            seen[0] == TaskEvent::Submitted { id, items: 1 },
            format!("{seen:?}"),
        )?;
        check(
            seen.contains(&TaskEvent::Started {
                id,
                worker_pid: want_pid,
            }),
            format!("started: {seen:?}"),
        )?;
        check(
            seen.contains(&TaskEvent::Finished {
                id,
                worker_pid: want_pid,
                ok: 1,
                failed: 0,
            }) || seen
                .iter()
                .any(|e| matches!(e, TaskEvent::Finished { id: i, .. } if *i == id)),
            format!("finished: {seen:?}"),
        )?;
        check(
            seen.iter().any(|e| matches!(e, TaskEvent::Failed { id: i, .. } | TaskEvent::Finished { id: i, failed: 1, .. } if *i == bad_id)),
            format!("failed: {seen:?}"),
        )?;
        Ok(())
    })
}

/// A minimal executor: polls `fut`, parking until woken.
fn block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    let end = Instant::now() + GUARD;
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        assert!(Instant::now() < end, "future never finished");
        std::thread::park_timeout(GUARD);
    }
}

fn async_result_is_a_future() -> Result<(), Failed> {
    each_backend(|b| {
        let p = pool(b, 2);
        check(
            block_on(p.apply_async(square, (12,))) == Ok(144),
            "await apply",
        )?;
        check(
            block_on(p.map_async(square, 0..4u64)) == Ok(vec![0, 1, 4, 9]),
            "await map",
        )?;
        Ok(())
    })
}

fn slow_worker_start_does_not_count_against_a_timeout() -> Result<(), Failed> {
    // The initializer takes longer than the timeout: the clock starts when
    // the worker takes the task, not when the pool sends it.
    let p = Pool::builder()
        .size(1)
        .initializer(slow_init, (300,))
        .task_timeout(Duration::from_millis(100))
        .build()?;
    check(p.apply(nap, (1,)) == Ok(1), "task after a slow initializer")?;
    let q = Pool::builder()
        .size(1)
        .initializer(slow_init, (300,))
        .build()?;
    let r = q.apply_async_timeout(nap, (1,), Duration::from_millis(100));
    check(
        r.get() == Ok(1),
        "per-task timeout after a slow initializer",
    )
}

fn a_timeout_never_hits_the_next_task() -> Result<(), Failed> {
    // Tasks that end right at their deadline, with untimed tasks queued
    // behind them on the same worker: only a timed task may ever time out.
    let p = pool(Backend::Processes, 1);
    for round in 0..30u64 {
        let timed = p.apply_async_timeout(nap, (20,), Duration::from_millis(20));
        let others: Vec<_> = (0..3u64).map(|i| p.apply_async(square, (i,))).collect();
        let t = timed.get();
        check(
            t == Ok(20) || matches!(t, Err(TaskError::TimedOut(_))),
            format!("round {round}: timed task {t:?}"),
        )?;
        for (i, o) in others.into_iter().enumerate() {
            let got = o.get();
            check(
                got == Ok((i * i) as u64),
                format!("round {round}: task {i} {got:?}"),
            )?;
        }
    }
    Ok(())
}

fn huge_timeout_is_no_timeout() -> Result<(), Failed> {
    each_backend(|b| {
        let p = Pool::builder()
            .backend(b)
            .size(1)
            .task_timeout(Duration::MAX)
            .build()?;
        check(p.apply(square, (4,)) == Ok(16), "Duration::MAX")?;
        p.close();
        p.join_timeout(GUARD)?;
        Ok(())
    })
}

fn crashing_initializer_stops_respawning() -> Result<(), Failed> {
    let p = Pool::builder()
        .size(2)
        .initializer(crashing_init, ())
        .build()?;
    let r = p.apply_async(square, (2,));
    check(r.wait_timeout(GUARD), "resolved")?;
    let got = r.get();
    check(
        matches!(&got, Err(TaskError::Initializer(m)) if m.contains("SIGABRT")),
        format!("{got:?}"),
    )?;
    let t = Instant::now();
    p.terminate();
    check(t.elapsed() < Duration::from_secs(5), "terminate returned")
}

fn panicking_result_decode_fails_that_task_only() -> Result<(), Failed> {
    each_backend(|b| {
        let p = pool(b, 1);
        if b == Backend::Processes {
            let r = p.apply(unlucky, (13,));
            check(
                matches!(&r, Err(TaskError::ResultDecode(m)) if m.contains("unlucky 13")),
                format!("{r:?}"),
            )?;
        }
        check(
            matches!(p.apply(unlucky, (7,)), Ok(PanicsOnDecode(7))),
            "the pool goes on",
        )?;
        Ok(())
    })
}

fn imap_on_a_closed_pool_ends() -> Result<(), Failed> {
    each_backend(|b| {
        let p = pool(b, 1);
        p.close();
        let got: Vec<_> = p.imap(square, 0u64..).take(5).collect();
        check(got == vec![Err(TaskError::Closed)], format!("{got:?}"))
    })
}

fn out_of_memory_is_an_error() -> Result<(), Failed> {
    let p = pool(Backend::Processes, 1);
    let r = p.apply(exhaust_memory, ());
    check(
        matches!(r, Err(TaskError::WorkerKilled { signal, .. }) if signal == Signal::ABRT),
        format!("{r:?}"),
    )?;
    check(p.apply(square, (3,)) == Ok(9), "the pool goes on")
}

fn a_lying_size_hint_is_harmless() -> Result<(), Failed> {
    each_backend(|b| {
        let p = pool(b, 2);
        for (real, claim) in [(10, 1000), (1000, 10), (0, 50), (7, 0)] {
            let got = p.map(square, Liar { left: real, claim })?;
            let want: Vec<u64> = (0..real).rev().map(|x| x * x).collect();
            check(got == want, format!("{real} items claiming {claim}"))?;
        }
        Ok(())
    })
}

fn progress_bar_and_events_on_a_map() -> Result<(), Failed> {
    each_backend(|b| {
        let p = Pool::builder()
            .backend(b)
            .size(2)
            .progress_bar(true)
            .events(true)
            .build()?;
        check(p.map_chunked(square, 0..100u64, 10)?.len() == 100, "map")?;
        let rx = p.events().ok_or("events")?;
        let mut finished = 0;
        while finished < 10 {
            if let TaskEvent::Finished { ok, failed, .. } = rx.recv_timeout(GUARD)? {
                check(ok == 10 && failed == 0, "chunk of 10")?;
                finished += 1;
            }
        }
        let got: Vec<u64> = p.imap(square, 0..20u64).map(Result::unwrap).collect();
        check(got.len() == 20, "imap with a bar")
    })
}

fn closing_during_imap_keeps_the_work_in_flight() -> Result<(), Failed> {
    each_backend(|b| {
        let p = pool(b, 2);
        let mut it = p.imap_chunked(square, 0..40u64, 1);
        let first: Vec<_> = it.by_ref().take(3).collect();
        p.close();
        let rest: Vec<_> = it.collect();
        let all: Vec<_> = first.into_iter().chain(rest).collect();
        // Every chunk in flight at close finishes, in order; the input the
        // closed pool could not take is one error at the end.
        let oks = all.iter().take_while(|r| r.is_ok()).count();
        check(oks >= 3, format!("{b:?}: {all:?}"))?;
        check(
            all[..oks]
                .iter()
                .enumerate()
                .all(|(i, r)| *r == Ok((i * i) as u64)),
            "in order",
        )?;
        check(
            all.len() == 40 && oks == 40
                || all.len() == oks + 1 && all[oks] == Err(TaskError::Closed),
            format!("{b:?}: {} results, {oks} ok", all.len()),
        )?;
        Ok(())
    })
}

fn a_stopped_worker_gives_up_its_queued_jobs() -> Result<(), Failed> {
    let p = pool(Backend::Processes, 2);
    let stopped = p.worker_pids()[0];
    // SAFETY: kill sends a signal to our own worker.
    unsafe {
        libc::kill(stopped as i32, libc::SIGSTOP);
    }
    let rs: Vec<_> = (0..6u64).map(|i| p.apply_async(square, (i,))).collect();
    for (i, r) in rs.into_iter().enumerate() {
        check(r.get() == Ok((i * i) as u64), format!("task {i}"))?;
    }
    // SAFETY: as above.
    unsafe {
        libc::kill(stopped as i32, libc::SIGCONT);
    }
    Ok(())
}

fn main() {
    herd::init();
    let args = Arguments::from_args();
    let tests = vec![
        Trial::test(
            "the_api_works_on_both_backends",
            the_api_works_on_both_backends,
        ),
        Trial::test("chunking_is_correct", chunking_is_correct),
        Trial::test(
            "thread_job_taken_then_terminated_does_not_run",
            thread_job_taken_then_terminated_does_not_run,
        ),
        Trial::test(
            "thread_map_terminated_while_running",
            thread_map_terminated_while_running,
        ),
        Trial::test(
            "thread_maps_end_on_close_and_terminate",
            thread_maps_end_on_close_and_terminate,
        ),
        Trial::test("imap_is_lazy_and_bounded", imap_is_lazy_and_bounded),
        Trial::test(
            "panic_is_an_error_with_location",
            panic_is_an_error_with_location,
        ),
        Trial::test(
            "unserializable_result_is_an_error",
            unserializable_result_is_an_error,
        ),
        Trial::test(
            "unregistered_task_is_an_error",
            unregistered_task_is_an_error,
        ),
        Trial::test("worker_killed_mid_task", worker_killed_mid_task),
        Trial::test(
            "worker_killed_from_outside_while_busy",
            worker_killed_from_outside_while_busy,
        ),
        Trial::test(
            "killing_an_idle_worker_never_wedges",
            killing_an_idle_worker_never_wedges,
        ),
        Trial::test("timeout_then_more_work", timeout_then_more_work),
        Trial::test("max_tasks_per_child_recycles", max_tasks_per_child_recycles),
        Trial::test(
            "initializer_runs_once_per_worker",
            initializer_runs_once_per_worker,
        ),
        Trial::test(
            "failing_initializer_fails_tasks_not_hangs",
            failing_initializer_fails_tasks_not_hangs,
        ),
        Trial::test(
            "close_join_terminate_in_every_state",
            close_join_terminate_in_every_state,
        ),
        Trial::test("events_report_the_task_life", events_report_the_task_life),
        Trial::test("async_result_is_a_future", async_result_is_a_future),
        Trial::test(
            "slow_worker_start_does_not_count_against_a_timeout",
            slow_worker_start_does_not_count_against_a_timeout,
        ),
        Trial::test(
            "a_timeout_never_hits_the_next_task",
            a_timeout_never_hits_the_next_task,
        ),
        Trial::test("huge_timeout_is_no_timeout", huge_timeout_is_no_timeout),
        Trial::test(
            "crashing_initializer_stops_respawning",
            crashing_initializer_stops_respawning,
        ),
        Trial::test(
            "panicking_result_decode_fails_that_task_only",
            panicking_result_decode_fails_that_task_only,
        ),
        Trial::test("imap_on_a_closed_pool_ends", imap_on_a_closed_pool_ends),
        Trial::test("out_of_memory_is_an_error", out_of_memory_is_an_error),
        Trial::test(
            "closing_during_imap_keeps_the_work_in_flight",
            closing_during_imap_keeps_the_work_in_flight,
        ),
        Trial::test(
            "a_stopped_worker_gives_up_its_queued_jobs",
            a_stopped_worker_gives_up_its_queued_jobs,
        ),
        Trial::test(
            "a_lying_size_hint_is_harmless",
            a_lying_size_hint_is_harmless,
        ),
        Trial::test(
            "progress_bar_and_events_on_a_map",
            progress_bar_and_events_on_a_map,
        ),
    ];
    libtest_mimic::run(&args, tests).exit();
}
