//! Integration tests for `herd::sync` with real child processes: robust
//! locks whose holders die, mutual exclusion across processes, deadlocks.
//! `harness = false`: `main` calls `herd::init()` first.

use std::time::{Duration, Instant};

use herd::sync::{
    Array, Barrier, BarrierError, BoundedSemaphore, Condition, Event, Lock, LockError, PoisonCause,
    RLock, Semaphore, Value,
};
use herd::{Process, StartMethod};
use herd_testkit::{GUARD, HeldElsewhere, both, check, eventually};
use libtest_mimic::{Arguments, Failed, Trial};

#[herd::task]
fn hold_forever(lock: Lock, held: Value<u8>) {
    let _g = lock.acquire().expect("acquire");
    held.set(1);
    loop {
        std::thread::park();
    }
}

#[herd::task]
fn hold_and_panic(lock: Lock) {
    let _g = lock.acquire().expect("acquire");
    panic!("holder panics");
}

#[herd::task]
fn hold_and_exit(lock: Lock) {
    let _g = lock.acquire().expect("acquire");
    std::process::exit(0);
}

/// Non-atomic read-modify-write of `balance` under `lock`, `n` times.
#[herd::task]
fn deposit(lock: Lock, balance: Value<i64>, n: u32) {
    for _ in 0..n {
        let _g = lock.acquire().expect("acquire");
        let b = balance.get();
        std::hint::black_box(());
        balance.set(b + 1);
    }
}

#[herd::task]
fn hold_one_want_other(first: Lock, second: Lock, held: Value<u8>) -> String {
    let _a = first.acquire().expect("first");
    held.set(1);
    match second.acquire_timeout(Duration::from_secs(20)) {
        Ok(_) => "acquired".to_owned(),
        Err(e) => format!("{e}"),
    }
}

#[herd::task]
fn crowd(sem: Semaphore, inside: Value<u32>, most: Value<u32>, rounds: u32) {
    for _ in 0..rounds {
        let _p = sem.acquire().expect("permit");
        let now = inside.fetch_add(1) + 1;
        let mut seen = most.load();
        while now > seen {
            match most.compare_exchange(seen, now) {
                Ok(_) => break,
                Err(actual) => seen = actual,
            }
        }
        std::thread::yield_now();
        inside.fetch_sub(1);
    }
}

#[herd::task]
fn hold_permit_forever(sem: BoundedSemaphore, held: Value<u8>) {
    let _p = sem.acquire().expect("permit");
    held.set(1);
    loop {
        std::thread::park();
    }
}

#[herd::task]
fn wait_event(ev: Event, ready: Value<u32>) -> bool {
    ready.fetch_add(1);
    ev.wait_timeout(GUARD)
}

#[herd::task]
fn wait_condition(cond: Condition, go: Value<u32>, waiting: Value<u32>, woke: Value<u32>) {
    let g = cond.acquire().expect("lock");
    waiting.fetch_add(1);
    let _g = cond.wait_while(g, || go.load() == 0).expect("wait");
    woke.fetch_add(1);
}

#[herd::task]
fn at_barrier(b: Barrier) -> Result<bool, String> {
    b.wait_timeout(GUARD).map_err(|e| e.to_string())
}

#[herd::task]
fn register_then_die(b: Barrier, registered: Value<u8>) {
    let _party = b.party().expect("party");
    registered.set(1);
    std::process::exit(0);
}

#[herd::task]
fn fill_array(a: Array<u64>, from: usize, n: usize) {
    for i in from..from + n {
        a.lock()
            .expect("lock")
            .set(i, i as u64 * 2)
            .expect("in range");
    }
}

#[herd::task]
fn wait_for_lock(lock: Lock, got: Value<u32>) {
    let _g = lock.acquire_timeout(GUARD);
    got.fetch_add(1);
}

/// A waiter woken by an unlock and killed before it takes the lock must not
/// strand the other waiters.
fn killed_waiter_does_not_strand_others() -> Result<(), Failed> {
    for _ in 0..5 {
        let (lock, got) = (Lock::new()?, Value::new(0u32)?);
        let held = lock.acquire()?;
        let mut w1 = herd::spawn(wait_for_lock, (lock.clone(), got.clone()))?;
        let mut w2 = herd::spawn(wait_for_lock, (lock.clone(), got.clone()))?;
        let asleep = |p: &Process<()>| p.state().is_ok_and(|s| s == herd::ProcessState::Sleeping);
        check(eventually(|| asleep(&w1) && asleep(&w2)), "both waiting")?;
        drop(held);
        let _ = w1.kill();
        let t = Instant::now();
        w2.join()?;
        check(
            t.elapsed() < Duration::from_secs(1),
            format!("the other waiter took {:?}", t.elapsed()),
        )?;
    }
    Ok(())
}

fn event_set_then_clear_wakes_waiters() -> Result<(), Failed> {
    let ev = Event::new()?;
    let (tx, rx) = std::sync::mpsc::channel();
    let e2 = ev.clone();
    let t = std::thread::spawn(move || {
        tx.send(rustix::thread::gettid().as_raw_nonzero().get())
            .ok();
        e2.wait_timeout(GUARD)
    });
    let tid = rx.recv_timeout(GUARD)?;
    // Wait until the waiter sleeps in the futex: a set+clear must still
    // wake it.
    let wchan = format!("/proc/self/task/{tid}/wchan");
    check(
        eventually(|| std::fs::read_to_string(&wchan).is_ok_and(|w| w.contains("futex"))),
        "waiter asleep",
    )?;
    ev.set();
    ev.clear();
    check(t.join().map_err(|_| "thread")?, "the waiter saw the set")
}

#[herd::task]
fn two_copies_of_one_lock(a: RLock, b: RLock) -> bool {
    let outer = b.acquire().expect("outer");
    let inner = a.acquire().expect("inner");
    drop(outer);
    drop(b);
    // The copies share one mapping, so the lock `inner` holds is still
    // mapped; taking another lock in this thread walks the robust list.
    let other = Lock::new().expect("lock");
    let ok = other.acquire().is_ok();
    drop(inner);
    ok && !a.is_locked()
}

/// A forgotten guard keeps its lock on the thread's robust list; dropping
/// the lock must not unmap memory the kernel and glibc will still walk.
fn forgotten_guard_keeps_the_mapping() -> Result<(), Failed> {
    let ok = std::thread::spawn(|| {
        let lock = Lock::new().expect("lock");
        std::mem::forget(lock.acquire());
        drop(lock);
        let other = Lock::new().expect("lock");
        // When the thread ends, the kernel walks its robust list.
        other.acquire().is_ok()
    })
    .join()
    .map_err(|_| "thread crashed")?;
    check(ok, "another lock in the same thread")?;
    let r = RLock::new()?;
    let mut p = herd::spawn(two_copies_of_one_lock, (r.clone(), r.clone()))?;
    check(p.join()?, "two copies of one lock in a child")
}

fn absurd_sizes_are_errors() -> Result<(), Failed> {
    check(
        Array::<u8>::new(usize::MAX - 190).is_err(),
        "array length that overflows",
    )?;
    check(
        Array::<u64>::new(usize::MAX / 4).is_err(),
        "array too large",
    )?;
    check(Semaphore::new(100_000).is_err(), "too many permits")?;
    check(
        BoundedSemaphore::new(0).is_ok_and(|s| s.try_acquire().is_err()),
        "a zero semaphore",
    )
}

fn semaphore_never_over_admits() -> Result<(), Failed> {
    let (sem, inside, most) = (Semaphore::new(2)?, Value::new(0u32)?, Value::new(0u32)?);
    let mut kids = Vec::new();
    for _ in 0..4 {
        kids.push(herd::spawn(
            crowd,
            (sem.clone(), inside.clone(), most.clone(), 300),
        )?);
    }
    for k in &mut kids {
        k.join()?;
    }
    check(
        most.load() <= 2 && most.load() >= 1,
        format!("at most 2 inside, saw {}", most.load()),
    )?;
    check(
        sem.value() == 2,
        format!("all permits back: {}", sem.value()),
    )
}

fn semaphore_permit_of_dead_holder_recovered() -> Result<(), Failed> {
    both(|m| {
        let (sem, held) = (BoundedSemaphore::new(1)?, Value::new(0u8)?);
        let mut p = Process::builder(hold_permit_forever, (sem.clone(), held.clone()))
            .start_method(m)
            .start()?;
        check(eventually(|| held.get() == 1), "child holds the permit")?;
        check(
            matches!(sem.try_acquire(), Err(LockError::WouldBlock)),
            "no permit free",
        )?;
        let t = Instant::now();
        p.kill()?;
        match sem.acquire_timeout(GUARD) {
            Err(LockError::Poisoned {
                cause: PoisonCause::OwnerDied,
                guard,
            }) => drop(guard),
            other => return Err(format!("expected the dead holder's permit, got {other:?}").into()),
        }
        check(
            t.elapsed() < Duration::from_secs(1),
            format!("recovered after {:?}", t.elapsed()),
        )?;
        check(sem.value() == 1, "the permit is free again")
    })
}

fn semaphore_release_adds_permits() -> Result<(), Failed> {
    let sem = Semaphore::new(0)?;
    check(
        matches!(sem.try_acquire(), Err(LockError::WouldBlock)),
        "none at first",
    )?;
    sem.release()?;
    let p = sem.try_acquire();
    check(p.is_ok(), "one after release")?;
    drop(p);
    check(sem.value() == 1, "one free")
}

fn event_across_processes() -> Result<(), Failed> {
    let (ev, ready) = (Event::new()?, Value::new(0u32)?);
    let mut kids = Vec::new();
    for m in [
        StartMethod::Spawn,
        StartMethod::ForkServer,
        StartMethod::ForkServer,
    ] {
        kids.push(
            Process::builder(wait_event, (ev.clone(), ready.clone()))
                .start_method(m)
                .start()?,
        );
    }
    check(eventually(|| ready.load() == 3), "all three started")?;
    // Asleep in the wait, so that one `set` must wake them all.
    check(
        eventually(|| {
            kids.iter()
                .all(|k| k.state().is_ok_and(|s| s == herd::ProcessState::Sleeping))
        }),
        "all three asleep",
    )?;
    check(!ev.is_set(), "not set yet")?;
    ev.set();
    for k in &mut kids {
        check(k.join()?, "woken by the event")?;
    }
    ev.clear();
    check(!ev.wait_timeout(Duration::from_millis(20)), "cleared")
}

fn condition_across_processes() -> Result<(), Failed> {
    let (cond, go, waiting, woke) = (
        Condition::new()?,
        Value::new(0u32)?,
        Value::new(0u32)?,
        Value::new(0u32)?,
    );
    let mut kids = Vec::new();
    for m in [
        StartMethod::Spawn,
        StartMethod::ForkServer,
        StartMethod::ForkServer,
    ] {
        kids.push(
            Process::builder(
                wait_condition,
                (cond.clone(), go.clone(), waiting.clone(), woke.clone()),
            )
            .start_method(m)
            .start()?,
        );
    }
    check(eventually(|| waiting.load() == 3), "all three waiting")?;
    {
        let _g = cond.acquire()?;
        go.store(1);
        cond.notify_one();
    }
    check(eventually(|| woke.load() >= 1), "notify_one woke one")?;
    {
        let _g = cond.acquire()?;
        cond.notify_all();
    }
    for k in &mut kids {
        k.join()?;
    }
    check(woke.load() == 3, "notify_all woke the rest")
}

fn barrier_across_processes() -> Result<(), Failed> {
    let b = Barrier::new(3)?;
    let mut kids = Vec::new();
    for m in [StartMethod::Spawn, StartMethod::ForkServer] {
        kids.push(
            Process::builder(at_barrier, (b.clone(),))
                .start_method(m)
                .start()?,
        );
    }
    let mut leaders = u32::from(b.wait_timeout(GUARD)?);
    for k in &mut kids {
        leaders += u32::from(k.join()?.map_err(|e| format!("child: {e}"))?);
    }
    check(leaders == 1, format!("{leaders} leaders"))
}

fn barrier_with_a_dying_party() -> Result<(), Failed> {
    // A registered party dies before reaching the barrier.
    let (b, registered) = (Barrier::new(2)?, Value::new(0u8)?);
    let mut p = herd::spawn(register_then_die, (b.clone(), registered.clone()))?;
    check(eventually(|| registered.get() == 1), "registered")?;
    let _ = p.join();
    let t = Instant::now();
    check(
        matches!(b.wait_timeout(GUARD), Err(BarrierError::Broken)),
        "broken, not hung",
    )?;
    check(
        t.elapsed() < Duration::from_secs(1),
        format!("after {:?}", t.elapsed()),
    )?;
    // A party dies while waiting: the other waiter is released.
    let b = Barrier::new(3)?;
    let mut waiter = herd::spawn(at_barrier, (b.clone(),))?;
    let mut victim = herd::spawn(at_barrier, (b.clone(),))?;
    check(
        eventually(|| {
            victim
                .state()
                .is_ok_and(|s| s == herd::ProcessState::Sleeping)
        }),
        "victim waits",
    )?;
    victim.kill()?;
    match waiter.join()? {
        Err(e) if e.contains("broken") => Ok(()),
        other => Err(format!("expected a broken barrier, got {other:?}").into()),
    }
}

fn barrier_reset_breaks_waiters_then_works() -> Result<(), Failed> {
    let b = Barrier::new(2)?;
    let mut waiter = herd::spawn(at_barrier, (b.clone(),))?;
    check(
        eventually(|| {
            waiter
                .state()
                .is_ok_and(|s| s == herd::ProcessState::Sleeping)
        }),
        "waiting",
    )?;
    b.reset();
    match waiter.join()? {
        Err(e) if e.contains("broken") => {}
        other => return Err(format!("expected Broken after reset, got {other:?}").into()),
    }
    let mut next = herd::spawn(at_barrier, (b.clone(),))?;
    let here = b.wait_timeout(GUARD)?;
    let there = next.join()?.map_err(|e| format!("child: {e}"))?;
    check(here ^ there, "a fresh round passes with one leader")
}

fn array_across_processes() -> Result<(), Failed> {
    let a = Array::<u64>::new(100)?;
    let mut x = herd::spawn(fill_array, (a.clone(), 0, 50))?;
    let mut y = herd::spawn(fill_array, (a.clone(), 50, 50))?;
    x.join()?;
    y.join()?;
    check(
        a.to_vec() == (0..100).map(|i| i * 2).collect::<Vec<u64>>(),
        "filled",
    )?;
    check(a.set(100, 1).is_err() && a.get(100).is_none(), "bounds")?;
    check(a.fetch_add(3, 1)? == 6 && a.get(3) == Some(7), "atomic add")
}

fn no_shared_memory_files() -> Result<(), Failed> {
    let before: Vec<_> = std::fs::read_dir("/dev/shm")
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    let _objects = (
        Lock::new()?,
        Semaphore::new(3)?,
        Barrier::new(2)?,
        Event::new()?,
        Array::<u8>::new(10)?,
    );
    let after: Vec<_> = std::fs::read_dir("/dev/shm")
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    check(
        after.iter().all(|f| before.contains(f)),
        format!("new files in /dev/shm: {after:?}"),
    )
}

fn holder_sigkilled() -> Result<(), Failed> {
    both(|m| {
        let (lock, held) = (Lock::new()?, Value::new(0u8)?);
        let mut p = Process::builder(hold_forever, (lock.clone(), held.clone()))
            .start_method(m)
            .start()?;
        check(eventually(|| held.get() == 1), "child took the lock")?;
        check(
            matches!(lock.try_acquire(), Err(LockError::WouldBlock)),
            "held by the child",
        )?;
        let t = Instant::now();
        p.kill()?;
        match lock.acquire_timeout(GUARD) {
            Err(LockError::Poisoned {
                cause: PoisonCause::OwnerDied,
                guard,
            }) => drop(guard),
            other => return Err(format!("expected OwnerDied, got {other:?}").into()),
        }
        check(
            t.elapsed() < Duration::from_secs(1),
            format!("learned after {:?}", t.elapsed()),
        )?;
        check(lock.acquire().is_ok(), "usable again, reported once")
    })
}

fn holder_panics() -> Result<(), Failed> {
    both(|m| {
        let lock = Lock::new()?;
        let mut p = Process::builder(hold_and_panic, (lock.clone(),))
            .start_method(m)
            .stderr(herd::Stdio::null())
            .start()?;
        check(p.join().is_err(), "the child panicked")?;
        match lock.acquire() {
            Err(LockError::Poisoned {
                cause: PoisonCause::Panicked,
                ..
            }) => {}
            other => return Err(format!("expected Panicked, got {other:?}").into()),
        }
        check(lock.acquire().is_ok(), "usable again")
    })
}

fn holder_exits() -> Result<(), Failed> {
    both(|m| {
        let lock = Lock::new()?;
        let mut p = Process::builder(hold_and_exit, (lock.clone(),))
            .start_method(m)
            .start()?;
        check(p.join().is_err(), "exited without a result")?;
        match lock.acquire() {
            Err(LockError::Poisoned {
                cause: PoisonCause::OwnerDied,
                ..
            }) => {}
            other => return Err(format!("expected OwnerDied, got {other:?}").into()),
        }
        check(lock.acquire().is_ok(), "usable again")
    })
}

fn thread_holder_panics() -> Result<(), Failed> {
    let lock = Lock::new()?;
    let l2 = lock.clone();
    let r = std::thread::spawn(move || {
        let _g = l2.acquire().expect("acquire");
        panic!("thread panics holding the lock");
    })
    .join();
    check(r.is_err(), "the thread panicked")?;
    check(
        matches!(
            lock.acquire(),
            Err(LockError::Poisoned {
                cause: PoisonCause::Panicked,
                ..
            })
        ),
        "poisoned by the panic",
    )
}

fn thread_ends_holding() -> Result<(), Failed> {
    let lock = Lock::new()?;
    let l2 = lock.clone();
    std::thread::spawn(move || std::mem::forget(l2.acquire().expect("acquire")))
        .join()
        .map_err(|_| "thread")?;
    check(
        matches!(
            lock.acquire_timeout(GUARD),
            Err(LockError::Poisoned {
                cause: PoisonCause::OwnerDied,
                ..
            })
        ),
        "the kernel released it when the thread ended",
    )
}

fn mutual_exclusion_across_processes() -> Result<(), Failed> {
    both(|m| {
        let (lock, balance) = (Lock::new()?, Value::new(0i64)?);
        let mut kids = Vec::new();
        for _ in 0..3 {
            kids.push(
                Process::builder(deposit, (lock.clone(), balance.clone(), 2000))
                    .start_method(m)
                    .start()?,
            );
        }
        for k in &mut kids {
            k.join()?;
        }
        check(balance.get() == 6000, format!("balance {}", balance.get()))
    })
}

fn timeouts_and_try() -> Result<(), Failed> {
    let lock = Lock::new()?;
    let held = HeldElsewhere::new(&lock)?;
    check(
        matches!(lock.try_acquire(), Err(LockError::WouldBlock)),
        "try_acquire",
    )?;
    let start = Instant::now();
    check(
        matches!(
            lock.acquire_timeout(Duration::from_millis(50)),
            Err(LockError::TimedOut)
        ),
        "timeout",
    )?;
    check(start.elapsed() >= Duration::from_millis(50), "waited")?;
    held.release()?;
    check(lock.acquire_timeout(GUARD).is_ok(), "free again")
}

fn self_deadlock_is_an_error() -> Result<(), Failed> {
    let lock = Lock::new()?;
    let _g = lock.acquire()?;
    check(
        matches!(lock.acquire(), Err(LockError::Deadlock(_))),
        "re-acquire",
    )?;
    let r = RLock::new()?;
    let a = r.acquire()?;
    let b = r.acquire()?;
    drop(b);
    check(r.is_locked(), "still held after one release")?;
    drop(a);
    check(!r.is_locked(), "released")
}

/// The seed's warning: two locks taken in opposite orders. With the
/// detector on, the hang becomes an error naming the cycle (here between
/// this process and a child).
fn deadlock_detector_two_lock_cycle() -> Result<(), Failed> {
    herd::sync::detect_deadlocks(true);
    let (a, b, held) = (Lock::new()?, Lock::new()?, Value::new(0u8)?);
    let _mine = b.acquire()?;
    let mut p =
        Process::builder(hold_one_want_other, (a.clone(), b.clone(), held.clone())).start()?;
    check(eventually(|| held.get() == 1), "child holds a")?;
    let result = a.acquire_timeout(GUARD);
    let err = match result {
        Err(LockError::Deadlock(d)) => d,
        other => return Err(format!("expected a deadlock, got {other:?}").into()),
    };
    eprintln!("detector said: {err}");
    check(err.cycle.len() == 2, format!("cycle {err}"))?;
    check(
        err.to_string().contains(&format!("pid {}", p.pid())),
        format!("names the child: {err}"),
    )?;
    drop(_mine);
    // Backing off releases the child.
    check(
        p.join()? == "acquired",
        "the child got b after we backed off",
    )
}

fn main() {
    herd::init();
    let args = Arguments::from_args();
    let tests = vec![
        Trial::test("holder_sigkilled", holder_sigkilled),
        Trial::test("holder_panics", holder_panics),
        Trial::test("holder_exits", holder_exits),
        Trial::test("thread_holder_panics", thread_holder_panics),
        Trial::test("thread_ends_holding", thread_ends_holding),
        Trial::test(
            "mutual_exclusion_across_processes",
            mutual_exclusion_across_processes,
        ),
        Trial::test("timeouts_and_try", timeouts_and_try),
        Trial::test("self_deadlock_is_an_error", self_deadlock_is_an_error),
        Trial::test(
            "deadlock_detector_two_lock_cycle",
            deadlock_detector_two_lock_cycle,
        ),
        Trial::test("semaphore_never_over_admits", semaphore_never_over_admits),
        Trial::test(
            "semaphore_permit_of_dead_holder_recovered",
            semaphore_permit_of_dead_holder_recovered,
        ),
        Trial::test(
            "semaphore_release_adds_permits",
            semaphore_release_adds_permits,
        ),
        Trial::test("event_across_processes", event_across_processes),
        Trial::test("condition_across_processes", condition_across_processes),
        Trial::test("barrier_across_processes", barrier_across_processes),
        Trial::test("barrier_with_a_dying_party", barrier_with_a_dying_party),
        Trial::test("array_across_processes", array_across_processes),
        Trial::test(
            "barrier_reset_breaks_waiters_then_works",
            barrier_reset_breaks_waiters_then_works,
        ),
        Trial::test("no_shared_memory_files", no_shared_memory_files),
        Trial::test(
            "killed_waiter_does_not_strand_others",
            killed_waiter_does_not_strand_others,
        ),
        Trial::test(
            "event_set_then_clear_wakes_waiters",
            event_set_then_clear_wakes_waiters,
        ),
        Trial::test("absurd_sizes_are_errors", absurd_sizes_are_errors),
        Trial::test(
            "forgotten_guard_keeps_the_mapping",
            forgotten_guard_keeps_the_mapping,
        ),
    ];
    libtest_mimic::run(&args, tests).exit();
}
