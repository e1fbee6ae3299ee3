//! The lock's plain-store unlock against a waiter that marks the word in
//! the instant between the unlock's look at the word and its store (the
//! store then erases the mark). `harness = false`: `main` calls
//! `herd::init()` first.
//!
//! * `traced_*` (x86-64 Linux, skipped where ptrace is refused): a child
//!   holding the lock is stopped by a hardware watchpoint right after its
//!   unlock read the word and the sleeper count, a waiter in this process marks the word and
//!   goes to sleep, then the child goes on (or is SIGKILLed). The waiter
//!   must get the lock at once, not when its sleep times out (100 ms).
//!   Without the `sleepers` count read after the plain store,
//!   `traced_waiter_marks_between_an_unlocks_look_and_store` fails on
//!   every run (the waiter wakes about 100 ms later).
//! * `mutual_exclusion_*`: two processes of two threads each increment a
//!   shared counter with a non-atomic read-modify-write under the lock;
//!   not one increment may be lost.
//!
//! The lock's word is found through the robust list: right after a thread
//! takes a herd lock, the list's first entry lies 32 bytes past the word.
//! Every wait is bounded by `GUARD`; nothing sleeps.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use herd::sync::{Barrier, Lock, LockError, PoisonCause, Value};
use herd::{Queue, StartMethod};
use herd_testkit::trace::{
    self, Access, Stop, Tracee, await_tracer, first_robust_entry, marker, region_in, region_of,
};
use herd_testkit::{GUARD, check, eventually};
use libtest_mimic::{Arguments, Failed, Trial};

/// How late a prompt wake may be: far below the 100 ms a waiter sleeps
/// before it looks again on its own, far above a wake-up on a busy machine.
const PROMPT: Duration = Duration::from_millis(50);

/// The robust-futex owner bits, and the "someone sleeps" mark.
const TID_MASK: u32 = 0x3fff_ffff;
const WAITERS: u32 = 0x8000_0000;
/// Offset of the lock's sleeper count from its word (src/sync/robust.rs).
const SLEEPERS: usize = 12;

/// The address of `lock`'s futex word in this process.
fn word_of(lock: &Lock) -> Result<usize, Failed> {
    let guard = lock.acquire().map_err(|e| format!("acquire: {e}"))?;
    let word = first_robust_entry() - 32;
    drop(guard);
    Ok(word)
}

fn load(word: usize) -> u32 {
    // SAFETY: `word` is the 4-aligned futex word of a lock this test holds
    // a handle on (so it stays mapped); it is only accessed atomically.
    unsafe { AtomicU32::from_ptr(word as *mut u32).load(Ordering::SeqCst) }
}

/// Whether thread `tid` of this process is blocked in `futex` on `word`.
fn asleep_on(tid: u32, word: usize) -> bool {
    let Ok(sys) = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")) else {
        return false;
    };
    let mut it = sys.split_whitespace();
    it.next() == Some(&libc::SYS_futex.to_string()) && it.next() == Some(&format!("{word:#x}"))
}

#[herd::task]
fn tr_hold(lock: Lock, hello: Queue<u32>) {
    let guard = lock.acquire().expect("acquire");
    await_tracer(&hello);
    drop(guard);
    marker();
}

/// A child holding `lock`, stopped right after its unlock read the word
/// (and before it wrote it), with a waiter of this process asleep on the
/// word it marked. Returns the tracee, the child, the word here, the
/// child's thread id and the waiter's outcome channel.
struct Window {
    tr: Tracee,
    proc: herd::Process<()>,
    word: usize,
    waiter: std::thread::JoinHandle<()>,
    got: mpsc::Receiver<(Result<(), String>, Instant)>,
}

fn stop_in_window(lock: &Lock) -> Result<Window, Failed> {
    let word = word_of(lock)?;
    let (lo, inode) = region_of(word)?;
    let hello = Queue::<u32>::new()?;
    // A forkserver child is not ours: no wait of herd's here can take the
    // tracee's stops.
    let proc = herd::Process::builder(tr_hold, (lock.clone(), hello.clone()))
        .start_method(StartMethod::ForkServer)
        .start()?;
    let tid = hello.get_timeout(GUARD)?;
    let mut tr = Tracee::seize(proc.pid(), tid)?;
    check(tr.wait()? == Stop::Signal(libc::SIGUSR1), "first stop")?;
    check(load(word) == tid, "the child holds the lock, unmarked")?;
    let there = region_in(proc.pid(), inode)? + (word - lo);
    // The unlock reads the word, then the sleeper count, then stores: stop
    // it right after it read the count.
    tr.watch(&[(there + SLEEPERS, 4, Access::ReadWrite)])?;
    check(tr.cont()? == Stop::Trap, "stopped at the unlock's look")?;
    check(load(word) == tid, "stopped before the unlock's store")?;

    let (tid_tx, tid_rx) = mpsc::channel();
    let (got_tx, got) = mpsc::channel();
    let l = lock.clone();
    let waiter = std::thread::spawn(move || {
        let _ = tid_tx.send(rustix::thread::gettid().as_raw_nonzero().get() as u32);
        let r = match l.acquire_timeout(GUARD) {
            Ok(_) => Ok(()),
            Err(LockError::Poisoned {
                cause: PoisonCause::OwnerDied,
                ..
            }) => Err("owner died".to_owned()),
            Err(e) => Err(e.to_string()),
        };
        let _ = got_tx.send((r, Instant::now()));
    });
    let wtid = tid_rx.recv_timeout(GUARD)?;
    check(
        eventually(|| load(word) == tid | WAITERS && asleep_on(wtid, word)),
        "the waiter marked the word and sleeps on it",
    )?;
    Ok(Window {
        tr,
        proc,
        word,
        waiter,
        got,
    })
}

fn traced_waiter_marks_between_an_unlocks_look_and_store() -> Result<(), Failed> {
    traced(|| {
        let lock = Lock::new()?;
        let w = stop_in_window(&lock)?;
        let go = Instant::now();
        w.tr.detach()?;
        let (r, at) = w.got.recv_timeout(GUARD)?;
        check(r == Ok(()), format!("the waiter's acquire: {r:?}"))?;
        let late = at.saturating_duration_since(go);
        check(
            late < PROMPT,
            format!("the waiter got the lock {late:?} after the unlock went on"),
        )?;
        w.waiter.join().map_err(|_| "waiter panicked")?;
        let mut proc = w.proc;
        proc.join_timeout(GUARD)?;
        check(load(w.word) & TID_MASK == 0, "released")?;
        check(lock.try_acquire().is_ok(), "usable after")
    })
}

fn traced_owner_killed_between_an_unlocks_look_and_store() -> Result<(), Failed> {
    traced(|| {
        let lock = Lock::new()?;
        let w = stop_in_window(&lock)?;
        let go = Instant::now();
        w.tr.kill()?;
        let (r, at) = w.got.recv_timeout(GUARD)?;
        check(
            r == Err("owner died".to_owned()),
            format!("the waiter's acquire: {r:?}"),
        )?;
        let late = at.saturating_duration_since(go);
        check(
            late < PROMPT,
            format!("the waiter learnt of the death {late:?} after the kill"),
        )?;
        w.waiter.join().map_err(|_| "waiter panicked")?;
        let mut proc = w.proc;
        check(proc.join_timeout(GUARD).is_err(), "the child was killed")?;
        check(lock.try_acquire().is_ok(), "usable after")
    })
}

#[herd::task]
fn tr_probe(hello: Queue<u32>) {
    await_tracer(&hello);
}

/// Whether ptrace-driven tests can run here (x86-64 Linux, ptrace allowed).
fn traced_supported() -> bool {
    if !trace::SUPPORTED {
        return false;
    }
    let Ok(hello) = Queue::<u32>::new() else {
        return false;
    };
    let Ok(mut p) = herd::Process::builder(tr_probe, (hello.clone(),))
        .start_method(StartMethod::ForkServer)
        .start()
    else {
        return false;
    };
    let ok = hello.get_timeout(GUARD).ok().is_some_and(|tid| {
        Tracee::seize(p.pid(), tid)
            .and_then(|mut t| {
                t.wait()?;
                t.detach()
            })
            .is_ok()
    });
    if !ok {
        let _ = p.kill();
    }
    let _ = p.join_timeout(GUARD);
    ok
}

/// Runs `f` if ptrace-driven tests can run here; otherwise passes, saying so.
fn traced(f: impl FnOnce() -> Result<(), Failed>) -> Result<(), Failed> {
    if traced_supported() {
        f()
    } else {
        println!("skipped: needs ptrace and x86-64 debug registers");
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Mutual exclusion across processes with the plain-store unlock

const ROUNDS: u64 = 100_000;

/// Two threads, each adding 1 to `count` `ROUNDS` times with a load and a
/// store under `lock` (a race without it).
#[herd::task]
fn add_under_lock(lock: Lock, count: Value<u64>, start: Barrier) {
    let _ = start.wait_timeout(GUARD);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..ROUNDS {
                    let _g = lock.acquire().expect("acquire");
                    count.store(count.load() + 1);
                }
            });
        }
    });
}

fn mutual_exclusion_two_processes_two_threads_each() -> Result<(), Failed> {
    let lock = Lock::new()?;
    let count = Value::<u64>::new(0)?;
    let start = Barrier::new(2)?;
    let mut a =
        herd::Process::builder(add_under_lock, (lock.clone(), count.clone(), start.clone()))
            .start()?;
    let mut b =
        herd::Process::builder(add_under_lock, (lock.clone(), count.clone(), start)).start()?;
    a.join_timeout(GUARD)?;
    b.join_timeout(GUARD)?;
    let got = count.load();
    check(
        got == 4 * ROUNDS,
        format!("{got} increments counted of {}", 4 * ROUNDS),
    )
}

fn main() {
    herd::init();
    let args = Arguments::from_args();
    let tests = vec![
        Trial::test(
            "traced_waiter_marks_between_an_unlocks_look_and_store",
            traced_waiter_marks_between_an_unlocks_look_and_store,
        ),
        Trial::test(
            "traced_owner_killed_between_an_unlocks_look_and_store",
            traced_owner_killed_between_an_unlocks_look_and_store,
        ),
        Trial::test(
            "mutual_exclusion_two_processes_two_threads_each",
            mutual_exclusion_two_processes_two_threads_each,
        ),
    ];
    libtest_mimic::run(&args, tests).exit();
}
