//! A lock's short path for a free word, and what keeps a lock's mapping
//! alive (a forgotten guard, however many handles are dropped at once).
//! `harness = false`: `main` calls `herd::init()` first.
//!
//! * `fast_path_*`: the short path reports what the full path did
//!   (poison, a dead owner, re-entry, self-deadlock, try vs wait).
//! * `forgotten_guard_*`: a guard that was `mem::forget`-ten keeps its
//!   lock's mapping (the lock stays on the thread's robust list, which the
//!   kernel and glibc walk), whichever handle goes last; a lock whose owner
//!   thread ended is unmapped (nothing walks it any more).
//! * `concurrent_drop_of_two_copies_keeps_the_mapping`: FAILS at 0cf091a.
//!   Two copies of one lock received by one process (two `LockCore`s on one
//!   `Segment`) dropped at the same moment by two threads both see
//!   `Arc::strong_count(seg) == 2` in `LockCore::drop`, neither pins, and the
//!   segment is unmapped while a live thread's robust list still points
//!   into it. Statistical (a race), but hit within a few children here.
//!
//! Mappings are looked up in /proc/self/maps (a `memfd:herd` mapping at the
//! lock's address); the lock's address is the first entry of the holding
//! thread's robust list right after it took the lock (herd links at the
//! front). Every wait is bounded by `GUARD`; nothing sleeps.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use herd::sync::{Lock, LockError, PoisonCause, RLock, Value};
use herd_testkit::trace::{first_robust_entry, robust_head};
use herd_testkit::{GUARD, HeldElsewhere, check};
use libtest_mimic::{Arguments, Failed, Trial};

// ---------------------------------------------------------------------------
// Helpers

/// Empties the calling thread's robust list, so that the kernel does not
/// walk it when the thread ends (a list this test left pointing into
/// unmapped memory). Only for a thread that holds nothing it needs released.
fn forget_robust_list() {
    let h = robust_head();
    // SAFETY: the head is this thread's; an empty list points to itself,
    // and only this thread touches it.
    unsafe { h.write_volatile(h as usize) };
}

/// Whether a herd segment is mapped at `addr` in this process.
fn herd_mapping_at(addr: usize) -> bool {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
    maps.lines().any(|l| {
        let mut it = l.split_whitespace();
        let Some((lo, hi)) = it.next().and_then(|r| r.split_once('-')) else {
            return false;
        };
        let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        else {
            return false;
        };
        (lo..hi).contains(&addr) && l.contains("memfd:herd")
    })
}

/// Spins until `f` holds or `GUARD` passes; returns whether it held.
fn spin_until(mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + GUARD;
    let mut n = 0u32;
    loop {
        if f() {
            return true;
        }
        n = n.wrapping_add(1);
        if n.is_multiple_of(1024) {
            if Instant::now() >= end {
                return f();
            }
            std::thread::yield_now();
        }
        std::hint::spin_loop();
    }
}

// ---------------------------------------------------------------------------
// The short path reports what the full path did

fn fast_path_reports_a_panicked_holder_once() -> Result<(), Failed> {
    for wait in [true, false] {
        let lock = Lock::new()?;
        let l2 = lock.clone();
        let r = std::thread::spawn(move || {
            let _g = l2.acquire().expect("acquire");
            panic!("holder panics (expected)");
        })
        .join();
        check(r.is_err(), "the holder panicked")?;
        check(!lock.is_locked(), "the word is 0 again (fast path)")?;
        let got = if wait {
            lock.acquire()
        } else {
            lock.try_acquire()
        };
        check(
            matches!(
                &got,
                Err(LockError::Poisoned {
                    cause: PoisonCause::Panicked,
                    ..
                })
            ),
            format!("wait={wait}: poisoned by the panic, got {got:?}"),
        )?;
        let guard = got.err().and_then(LockError::into_guard);
        check(guard.is_some() && lock.is_locked(), "the guard holds it")?;
        drop(guard);
        check(!lock.is_locked(), "released")?;
        check(lock.acquire().is_ok(), "reported once")?;
        check(lock.try_acquire().is_ok(), "and clean after")?;
    }
    Ok(())
}

fn fast_path_value_guard_poison() -> Result<(), Failed> {
    let v = Value::new(1u32)?;
    let v2 = v.clone();
    let r = std::thread::spawn(move || {
        let mut g = v2.lock().expect("lock");
        g.set(2);
        panic!("holder panics (expected)");
    })
    .join();
    check(r.is_err(), "the holder panicked")?;
    check(
        matches!(
            v.lock(),
            Err(LockError::Poisoned {
                cause: PoisonCause::Panicked,
                ..
            })
        ),
        "a Value's lock poisoned by the panic",
    )?;
    check(v.lock().is_ok_and(|g| g.get() == 2), "clean after")
}

fn fast_path_dead_owner_goes_the_full_way() -> Result<(), Failed> {
    for wait in [true, false] {
        let lock = Lock::new()?;
        let l2 = lock.clone();
        std::thread::spawn(move || std::mem::forget(l2.acquire().expect("acquire")))
            .join()
            .map_err(|_| "thread")?;
        let got = if wait {
            lock.acquire_timeout(GUARD)
        } else {
            lock.try_acquire()
        };
        check(
            matches!(
                &got,
                Err(LockError::Poisoned {
                    cause: PoisonCause::OwnerDied,
                    ..
                })
            ),
            format!("wait={wait}: the dead owner reported, got {got:?}"),
        )?;
        drop(got);
        check(lock.try_acquire().is_ok(), "clean after")?;
    }
    Ok(())
}

fn fast_path_reentry_and_self_deadlock() -> Result<(), Failed> {
    let r = RLock::new()?;
    let a = r.try_acquire()?;
    let b = r.try_acquire()?;
    let c = r.acquire()?;
    drop(c);
    drop(b);
    check(r.is_locked(), "held after two of three releases")?;
    drop(a);
    check(!r.is_locked(), "released")?;

    let l = Lock::new()?;
    let g = l.acquire()?;
    check(
        matches!(l.try_acquire(), Err(LockError::Deadlock(_))),
        "try_acquire of a Lock this thread holds",
    )?;
    check(
        matches!(l.acquire(), Err(LockError::Deadlock(_))),
        "acquire of a Lock this thread holds",
    )?;
    drop(g);
    check(
        l.acquire_timeout(Duration::ZERO).is_ok(),
        "a free word with a past deadline is taken",
    )?;
    let held = HeldElsewhere::new(&l)?;
    check(
        matches!(l.try_acquire(), Err(LockError::WouldBlock)),
        "try_acquire of a lock another thread holds",
    )?;
    check(
        matches!(
            l.acquire_timeout(Duration::from_millis(1)),
            Err(LockError::TimedOut)
        ),
        "acquire_timeout of a lock another thread holds",
    )?;
    held.release()?;
    check(l.try_acquire().is_ok(), "free again")
}

// ---------------------------------------------------------------------------
// Forgotten guards keep the mapping (sequential drops)

fn forgotten_guard_through_a_clone_keeps_the_mapping() -> Result<(), Failed> {
    let ok = std::thread::spawn(|| {
        let lock = Lock::new().expect("lock");
        let copy = lock.clone();
        std::mem::forget(copy.acquire());
        let at = first_robust_entry();
        drop(copy);
        drop(lock);
        let mapped = herd_mapping_at(at);
        // Linking another lock writes into the forgotten one's entry.
        let other = Lock::new().expect("lock");
        mapped && other.acquire().is_ok()
    })
    .join()
    .map_err(|_| "thread crashed")?;
    check(ok, "the mapping of a lock held through a forgotten guard")
}

fn forgotten_guard_of_another_live_thread_keeps_the_mapping() -> Result<(), Failed> {
    let lock = Lock::new()?;
    let l2 = lock.clone();
    let (tx, rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        std::mem::forget(l2.acquire().expect("acquire"));
        let at = first_robust_entry();
        drop(l2);
        tx.send(at).expect("send");
        let _ = done_rx.recv_timeout(GUARD);
        // Linking another lock writes into the forgotten one's entry.
        let other = Lock::new().expect("lock");
        other.acquire().is_ok()
    });
    let at = rx.recv_timeout(GUARD)?;
    // The last handle goes here, in another thread than the owner.
    drop(lock);
    let mapped = herd_mapping_at(at);
    done_tx.send(())?;
    let linked = holder.join().map_err(|_| "holder crashed")?;
    check(mapped, "kept mapped while its owner lives")?;
    check(linked, "the owner locks another lock afterwards")
}

fn lock_of_an_ended_thread_is_unmapped() -> Result<(), Failed> {
    let lock = Lock::new()?;
    let l2 = lock.clone();
    let at = std::thread::spawn(move || {
        std::mem::forget(l2.acquire().expect("acquire"));
        first_robust_entry()
    })
    .join()
    .map_err(|_| "thread")?;
    check(herd_mapping_at(at), "mapped while a handle lives")?;
    drop(lock);
    check(
        !herd_mapping_at(at),
        "the kernel released it when its owner ended: nothing walks it, it is unmapped",
    )
}

#[herd::task]
fn copies_dropped_in_turn(a: Lock, b: Lock) -> bool {
    std::mem::forget(b.acquire().expect("acquire"));
    let at = first_robust_entry();
    drop(b);
    drop(a);
    let mapped = herd_mapping_at(at);
    let other = Lock::new().expect("lock");
    let linked = other.acquire().is_ok();
    mapped && linked
}

fn forgotten_guard_through_a_received_copy_keeps_the_mapping() -> Result<(), Failed> {
    let lock = Lock::new()?;
    let mut p = herd::spawn(copies_dropped_in_turn, (lock.clone(), lock.clone()))?;
    let r = p.join_timeout(GUARD)?;
    check(r == Some(true), format!("in the child: {r:?}"))
}

// ---------------------------------------------------------------------------
// The bug: two copies dropped at once

/// Pairs per child: two fds each, under the 250 a message may carry.
const PAIRS: usize = 100;
/// Children tried before concluding the race was not hit.
const CHILDREN: usize = 20;

/// Holds every pair's lock through a forgotten guard on one live thread,
/// then drops each pair's two copies at the same moment on two threads and
/// counts the locks whose segment is no longer mapped.
#[herd::task]
fn drop_two_copies_at_once(pairs: Vec<(Lock, Lock)>) -> Result<(u32, u32), String> {
    // The holder: takes each lock, forgets the guard, says where it lies.
    let (to_holder, holder_rx) = mpsc::channel::<Lock>();
    let (addr_tx, addr_rx) = mpsc::channel::<usize>();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        while let Ok(lock) = holder_rx.recv_timeout(GUARD) {
            std::mem::forget(lock.acquire().expect("acquire"));
            addr_tx.send(first_robust_entry()).expect("send");
        }
        let _ = stop_rx.recv_timeout(GUARD);
        // Its list may now point into unmapped memory: the kernel must not
        // walk it when this thread ends.
        forget_robust_list();
    });
    let mut addrs = Vec::with_capacity(pairs.len());
    for (a, _) in &pairs {
        to_holder.send(a.clone()).map_err(|e| e.to_string())?;
        addrs.push(addr_rx.recv_timeout(GUARD).map_err(|e| e.to_string())?);
    }
    drop(to_holder);

    // Two droppers released together for each pair: this thread, and one
    // other (two running threads, so that two CPUs suffice).
    let ready = Arc::new(AtomicU32::new(0));
    let go = Arc::new(AtomicU32::new(0));
    let done = Arc::new(AtomicU32::new(0));
    let (to_dropper, dropper_rx) = mpsc::channel::<Lock>();
    let dropper = {
        let (ready, go, done) = (Arc::clone(&ready), Arc::clone(&go), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut i = 0u32;
            while let Ok(lock) = dropper_rx.recv_timeout(GUARD) {
                ready.fetch_add(1, Ordering::SeqCst);
                if !spin_until(|| go.load(Ordering::Acquire) > i) {
                    return false;
                }
                drop(lock);
                done.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
            true
        })
    };
    let mut unmapped = 0u32;
    let mut tried = 0u32;
    for ((a, b), at) in pairs.into_iter().zip(addrs) {
        let n = tried + 1;
        to_dropper.send(b).map_err(|e| e.to_string())?;
        if !spin_until(|| ready.load(Ordering::SeqCst) == n) {
            return Err("dropper not ready".to_owned());
        }
        go.store(n, Ordering::Release);
        drop(a);
        if !spin_until(|| done.load(Ordering::SeqCst) == n) {
            return Err("dropper did not finish".to_owned());
        }
        tried = n;
        if !herd_mapping_at(at) {
            unmapped += 1;
        }
    }
    drop(to_dropper);
    if !dropper.join().map_err(|_| "dropper crashed")? {
        return Err("the dropper timed out".to_owned());
    }
    stop_tx.send(()).map_err(|e| e.to_string())?;
    holder.join().map_err(|_| "holder crashed")?;
    Ok((tried, unmapped))
}

fn concurrent_drop_of_two_copies_keeps_the_mapping() -> Result<(), Failed> {
    let (mut tried, mut unmapped) = (0, 0);
    for _ in 0..CHILDREN {
        let mut pairs = Vec::with_capacity(PAIRS);
        for _ in 0..PAIRS {
            let l = Lock::new()?;
            pairs.push((l.clone(), l));
        }
        let mut p = herd::spawn(drop_two_copies_at_once, (pairs,))?;
        let (t, u) = p.join_timeout(GUARD)?.ok_or("the child did not finish")??;
        tried += t;
        unmapped += u;
        if unmapped > 0 {
            break;
        }
    }
    eprintln!("{unmapped} of {tried} pairs dropped at once left their lock unmapped");
    check(
        unmapped == 0,
        format!(
            "{unmapped} of {tried} segments were unmapped while their lock was held \
             (forgotten guard) by a live thread of the process: its robust list \
             points into unmapped memory"
        ),
    )
}

fn main() {
    herd::init();
    let args = Arguments::from_args();
    let tests = vec![
        Trial::test(
            "fast_path_reports_a_panicked_holder_once",
            fast_path_reports_a_panicked_holder_once,
        ),
        Trial::test("fast_path_value_guard_poison", fast_path_value_guard_poison),
        Trial::test(
            "fast_path_dead_owner_goes_the_full_way",
            fast_path_dead_owner_goes_the_full_way,
        ),
        Trial::test(
            "fast_path_reentry_and_self_deadlock",
            fast_path_reentry_and_self_deadlock,
        ),
        Trial::test(
            "forgotten_guard_through_a_clone_keeps_the_mapping",
            forgotten_guard_through_a_clone_keeps_the_mapping,
        ),
        Trial::test(
            "forgotten_guard_of_another_live_thread_keeps_the_mapping",
            forgotten_guard_of_another_live_thread_keeps_the_mapping,
        ),
        Trial::test(
            "lock_of_an_ended_thread_is_unmapped",
            lock_of_an_ended_thread_is_unmapped,
        ),
        Trial::test(
            "forgotten_guard_through_a_received_copy_keeps_the_mapping",
            forgotten_guard_through_a_received_copy_keeps_the_mapping,
        ),
        Trial::test(
            "concurrent_drop_of_two_copies_keeps_the_mapping",
            concurrent_drop_of_two_copies_keeps_the_mapping,
        ),
    ];
    libtest_mimic::run(&args, tests).exit();
}
