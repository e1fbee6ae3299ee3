//! The thread pool's `map` engine (shares of indices, stealing, one buffer or two):
//! every input and every value dropped exactly once, each index run once,
//! shares stolen, jobs that never start, `terminate` mid-map, panicking
//! items, panicking drops and panic payloads, zero-sized types.
//!
//! Only the public API. No test sleeps to synchronise: items wait on a
//! gate or a condition the test controls, and every wait has a timeout.
//! Each test has its own [`Ledger`] (leaked, so that `Copy + 'static`
//! task functions reach it through their argument), except the ZST tests,
//! which use statics of their own.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

use herd::Pool;
use herd::pool::{Backend, TaskError};
use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest any wait may take.
const GUARD: Duration = Duration::from_secs(30);
/// How long a result that should be ready at once is given.
const PROMPT: Duration = Duration::from_secs(10);

const IN_MAGIC: u64 = 0x1A1A_1A1A_1A1A_1A1A;
const OUT_MAGIC: u64 = 0x0B0B_0B0B_0B0B_0B0B;

fn threads(n: usize) -> Pool {
    Pool::builder()
        .backend(Backend::Threads)
        .size(n)
        .build()
        .expect("thread pool")
}

/// What the items of one map do.
#[derive(Default)]
struct Plan {
    /// These items panic (with a string).
    panic_at: Vec<usize>,
    /// This item panics with a payload whose `Drop` panics.
    payload_bomb_at: Option<usize>,
    /// This item's value panics the first time it is dropped.
    drop_bomb_at: Option<usize>,
    /// Every item waits for the gate.
    gated: bool,
    /// This item (the first of a chunk of the given size) waits until
    /// every item outside its chunk has been called.
    wait_for_others_at: Option<(usize, usize)>,
}

/// Counts, per index, calls, input drops, values made and value drops.
struct Ledger {
    n: usize,
    plan: Plan,
    calls: Vec<AtomicU32>,
    in_drops: Vec<AtomicU32>,
    out_made: Vec<AtomicU32>,
    out_drops: Vec<AtomicU32>,
    /// Drops of something that was not what its type says (an input
    /// dropped as a value, say).
    bogus: AtomicUsize,
    bomb_armed: AtomicBool,
    /// The gate (open or not); also the lock every change notifies under.
    open: Mutex<bool>,
    cv: Condvar,
}

fn zeros(n: usize) -> Vec<AtomicU32> {
    (0..n).map(|_| AtomicU32::new(0)).collect()
}

fn total(v: &[AtomicU32]) -> usize {
    v.iter().map(|c| c.load(SeqCst) as usize).sum()
}

impl Ledger {
    fn new(n: usize, plan: Plan) -> &'static Self {
        Box::leak(Box::new(Self {
            n,
            plan,
            calls: zeros(n),
            in_drops: zeros(n),
            out_made: zeros(n),
            out_drops: zeros(n),
            bogus: AtomicUsize::new(0),
            bomb_armed: AtomicBool::new(true),
            open: Mutex::new(false),
            cv: Condvar::new(),
        }))
    }

    fn inputs(&'static self) -> Vec<In> {
        (0..self.n)
            .map(|id| In {
                magic: IN_MAGIC,
                id,
                ledger: self,
            })
            .collect()
    }

    /// Wakes every waiter (after a counter changed).
    fn bump(&self) {
        let _g = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        self.cv.notify_all();
    }

    /// Waits (at most [`GUARD`]) until `cond`; true if it held.
    fn wait(&self, cond: impl Fn(&Self) -> bool) -> bool {
        let g = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let (_g, r) = self
            .cv
            .wait_timeout_while(g, GUARD, |_| !cond(self))
            .unwrap_or_else(PoisonError::into_inner);
        !r.timed_out() || cond(self)
    }

    fn open_gate(&self) {
        *self.open.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.cv.notify_all();
    }

    fn wait_gate(&self) -> bool {
        let g = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        *self
            .cv
            .wait_timeout_while(g, GUARD, |o| !*o)
            .unwrap_or_else(PoisonError::into_inner)
            .0
    }

    /// Every input dropped once, every value made dropped once, nothing
    /// dropped as what it is not.
    fn all_settled(&self) -> bool {
        (0..self.n).all(|i| {
            self.in_drops[i].load(SeqCst) >= 1
                && self.out_drops[i].load(SeqCst) >= self.out_made[i].load(SeqCst)
        })
    }

    /// What is wrong with the counts, as lines (empty: nothing).
    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        for i in 0..self.n {
            let (c, d, m, od) = (
                self.calls[i].load(SeqCst),
                self.in_drops[i].load(SeqCst),
                self.out_made[i].load(SeqCst),
                self.out_drops[i].load(SeqCst),
            );
            if c > 1 {
                p.push(format!("index {i} was run {c} times"));
            }
            if d != 1 {
                p.push(format!("input {i} was dropped {d} times"));
            }
            if od != m {
                p.push(format!("value {i}: made {m}, dropped {od} times"));
            }
        }
        let bogus = self.bogus.load(SeqCst);
        if bogus != 0 {
            p.push(format!(
                "{bogus} drops of a value whose bits were not a value (an input dropped as a value)"
            ));
        }
        p
    }
}

/// An input; same size and alignment as [`Out`], so a map `In -> Out`
/// writes its values into the input buffer ("shared" mode).
#[repr(C)]
struct In {
    magic: u64,
    id: usize,
    ledger: &'static Ledger,
}

impl Drop for In {
    fn drop(&mut self) {
        if self.magic == IN_MAGIC {
            self.ledger.in_drops[self.id].fetch_add(1, SeqCst);
        } else {
            self.ledger.bogus.fetch_add(1, SeqCst);
        }
        self.ledger.bump();
    }
}

/// A value.
#[repr(C)]
struct Out {
    magic: u64,
    id: usize,
    ledger: &'static Ledger,
}

impl Out {
    fn new(id: usize, ledger: &'static Ledger) -> Self {
        ledger.out_made[id].fetch_add(1, SeqCst);
        Self {
            magic: OUT_MAGIC,
            id,
            ledger,
        }
    }
}

impl Drop for Out {
    fn drop(&mut self) {
        let l = self.ledger;
        if self.magic != OUT_MAGIC {
            l.bogus.fetch_add(1, SeqCst);
            l.bump();
            return;
        }
        l.out_drops[self.id].fetch_add(1, SeqCst);
        l.bump();
        if l.plan.drop_bomb_at == Some(self.id) && l.bomb_armed.swap(false, SeqCst) {
            panic!("value {} panics as it is dropped", self.id);
        }
    }
}

// The thread backend never encodes; `map` only asks for the traits.
impl Serialize for In {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(S::Error::custom("thread pool only"))
    }
}

impl<'de> Deserialize<'de> for Out {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(D::Error::custom("thread pool only"))
    }
}

/// A panic payload that panics when dropped.
struct PayloadBomb;

impl Drop for PayloadBomb {
    fn drop(&mut self) {
        panic!("the panic payload panics as it is dropped");
    }
}

fn work(x: In) -> Out {
    let (l, id) = (x.ledger, x.id);
    l.calls[id].fetch_add(1, SeqCst);
    l.bump();
    if l.plan.gated {
        assert!(l.wait_gate(), "the gate never opened");
    }
    if let Some((at, chunk)) = l.plan.wait_for_others_at
        && at == id
    {
        // The rest of its own chunk waits behind it.
        assert!(
            l.wait(|l| total(&l.calls) + chunk > l.n),
            "item {id}'s share was never stolen"
        );
    }
    if l.plan.panic_at.contains(&id) {
        drop(x);
        panic!("item {id} fails");
    }
    if l.plan.payload_bomb_at == Some(id) {
        drop(x);
        std::panic::panic_any(PayloadBomb);
    }
    // The value is counted before the input's drop: once every input is
    // dropped, every value that will ever be made is counted.
    let o = Out::new(id, l);
    drop(x);
    o
}

/// Values of another layout than the inputs: two buffers.
fn work_wide(x: In) -> (Out, u64) {
    let o = work(x);
    let id = o.id as u64;
    (o, id)
}

fn check_values(got: &[Out], n: usize) {
    assert_eq!(got.len(), n);
    for (i, o) in got.iter().enumerate() {
        assert_eq!(o.id, i, "value in the wrong place");
    }
}

#[test]
fn empty_input() {
    let pool = threads(4);
    let l = Ledger::new(0, Plan::default());
    assert_eq!(pool.map(work, l.inputs()).map(|v| v.len()), Ok(0));
    assert_eq!(pool.map(work_wide, l.inputs()).map(|v| v.len()), Ok(0));
}

/// Every index runs once and lands in its place, for pools larger and
/// smaller than the input, chunks of 1 to "more than everything"; both
/// buffer modes.
#[test]
fn every_index_runs_once_across_shapes() {
    for size in [1, 2, 3, 8] {
        let pool = threads(size);
        for n in [1, 2, 3, 5, 17, 100, 1000] {
            for chunk in [1, 2, 3, 7, 64, usize::MAX] {
                let l = Ledger::new(n, Plan::default());
                let got = pool.map_chunked(work, l.inputs(), chunk).expect("map");
                check_values(&got, n);
                drop(got);
                let p = l.problems();
                assert!(p.is_empty(), "size {size} n {n} chunk {chunk}: {p:?}");
                assert_eq!(total(&l.calls), n);

                let l = Ledger::new(n, Plan::default());
                let got = pool.map_chunked(work_wide, l.inputs(), chunk).expect("map");
                assert!(
                    got.iter()
                        .enumerate()
                        .all(|(i, (o, k))| o.id == i && *k == i as u64)
                );
                drop(got);
                let p = l.problems();
                assert!(p.is_empty(), "wide: size {size} n {n} chunk {chunk}: {p:?}");
            }
        }
        // The automatic chunk too, many times (races between thieves).
        for _ in 0..50 {
            let l = Ledger::new(5000, Plan::default());
            let got = pool.map(work, l.inputs()).expect("map");
            check_values(&got, 5000);
            drop(got);
            let p = l.problems();
            assert!(p.is_empty(), "size {size}: {p:?}");
        }
    }
}

/// Item 0 blocks until every other item has run: the rest of its share
/// must be stolen by the other jobs.
#[test]
fn a_blocked_share_is_stolen() {
    let pool = threads(4);
    for chunk in [1, 5] {
        let l = Ledger::new(
            400,
            Plan {
                wait_for_others_at: Some((0, chunk)),
                ..Plan::default()
            },
        );
        let mut r = pool.map_async_chunked(work, l.inputs(), chunk);
        let got = r.get_timeout(GUARD + PROMPT).expect("map");
        check_values(&got, 400);
        drop(got);
        let p = l.problems();
        assert!(p.is_empty(), "{p:?}");
    }
}

/// Failed items: the first by position is the error; every other value
/// and every input is dropped once.
#[test]
fn panicking_items() {
    let pool = threads(4);
    for chunk in [1, 3, 50] {
        let plan = || Plan {
            panic_at: vec![300, 5, 77],
            ..Plan::default()
        };
        let l = Ledger::new(400, plan());
        match pool.map_chunked(work, l.inputs(), chunk) {
            Err(TaskError::Panicked(r)) => assert!(r.message.contains("item 5 "), "{r:?}"),
            other => panic!("{:?}", other.map(|v| v.len())),
        }
        let p = l.problems();
        assert!(p.is_empty(), "chunk {chunk}: {p:?}");

        let l = Ledger::new(400, plan());
        match pool.map_chunked(work_wide, l.inputs(), chunk) {
            Err(TaskError::Panicked(r)) => assert!(r.message.contains("item 5 "), "{r:?}"),
            other => panic!("{:?}", other.map(|v| v.len())),
        }
        let p = l.problems();
        assert!(p.is_empty(), "wide, chunk {chunk}: {p:?}");
    }
}

/// No job starts (the pool is closed): the inputs are dropped, once.
#[test]
fn closed_pool_releases_the_inputs() {
    let pool = threads(4);
    pool.close();
    let l = Ledger::new(100, Plan::default());
    assert_eq!(
        pool.map_chunked(work, l.inputs(), 3).map(|v| v.len()),
        Err(TaskError::Closed)
    );
    let p = l.problems();
    assert!(p.is_empty(), "{p:?}");
    assert_eq!(total(&l.calls), 0);
}

/// A map whose job is still queued when the pool terminates (it never
/// starts), beside one whose job is running (abandoned, finishes later).
#[test]
fn terminate_before_a_job_starts() {
    let pool = threads(1);
    let a = Ledger::new(
        4,
        Plan {
            gated: true,
            ..Plan::default()
        },
    );
    let mut ra = pool.map_async_chunked(work, a.inputs(), 4);
    assert!(
        a.wait(|a| total(&a.calls) == 1),
        "the first map never started"
    );
    let b = Ledger::new(50, Plan::default());
    let mut rb = pool.map_async_chunked(work_wide, b.inputs(), 3);
    pool.terminate();
    assert_eq!(
        rb.get_timeout(PROMPT).map(|v| v.len()),
        Err(TaskError::Terminated)
    );
    assert!(b.wait(Ledger::all_settled), "{:?}", b.problems());
    let p = b.problems();
    assert!(p.is_empty(), "{p:?}");
    assert_eq!(total(&b.calls), 0);

    assert_eq!(
        ra.get_timeout(PROMPT).map(|v| v.len()),
        Err(TaskError::Terminated)
    );
    a.open_gate();
    // The abandoned job runs its chunk to the end, then releases all.
    assert!(a.wait(Ledger::all_settled), "{:?}", a.problems());
    let p = a.problems();
    assert!(p.is_empty(), "{p:?}");
    assert_eq!(total(&a.out_made), 4);
}

/// `terminate` while every job is inside an item: the map fails at once;
/// once the items return, the jobs claim nothing more and the last one
/// releases every value and every unclaimed input, once.
#[test]
fn terminate_mid_map() {
    for wide in [false, true] {
        let pool = threads(4);
        let l = Ledger::new(
            200,
            Plan {
                gated: true,
                ..Plan::default()
            },
        );
        let r = if wide {
            let mut r = pool.map_async_chunked(work_wide, l.inputs(), 1);
            assert!(l.wait(|l| total(&l.calls) == 4), "the jobs never started");
            pool.terminate();
            r.get_timeout(PROMPT).map(|v| v.len())
        } else {
            let mut r = pool.map_async_chunked(work, l.inputs(), 1);
            assert!(l.wait(|l| total(&l.calls) == 4), "the jobs never started");
            pool.terminate();
            r.get_timeout(PROMPT).map(|v| v.len())
        };
        assert_eq!(r, Err(TaskError::Terminated));
        // Nothing released while the items still run.
        assert_eq!(total(&l.in_drops), 0);
        l.open_gate();
        assert!(l.wait(Ledger::all_settled), "{:?}", l.problems());
        let p = l.problems();
        assert!(p.is_empty(), "wide {wide}: {p:?}");
        assert_eq!(total(&l.calls), 4, "claimed after the terminate");
        assert_eq!(total(&l.out_made), 4);
    }
}

/// `terminate` at an arbitrary moment of a fast map (no gate): whatever
/// the interleaving of claims, steals and the completions, every input and
/// value is dropped once.
#[test]
fn terminate_races_a_running_map() {
    for round in 0..200 {
        let pool = threads(4);
        let n = 20_000;
        let l = Ledger::new(n, Plan::default());
        let chunk = [1, 2, 16, 1000][round % 4];
        let r = if round % 2 == 0 {
            let mut r = pool.map_async_chunked(work, l.inputs(), chunk);
            assert!(l.wait(|l| total(&l.calls) >= (round * 37) % 5000));
            pool.terminate();
            r.get_timeout(PROMPT).map(drop)
        } else {
            let mut r = pool.map_async_chunked(work_wide, l.inputs(), chunk);
            assert!(l.wait(|l| total(&l.calls) >= (round * 37) % 5000));
            pool.terminate();
            r.get_timeout(PROMPT).map(drop)
        };
        assert!(
            matches!(r, Ok(()) | Err(TaskError::Terminated)),
            "round {round}: {r:?}"
        );
        assert!(
            l.wait(Ledger::all_settled),
            "round {round}: {:?}",
            l.problems()
        );
        let p = l.problems();
        assert!(p.is_empty(), "round {round}: {p:?}");
    }
}

/// A value panics as `finish` drops it (another item failed, so the
/// values are released). Vec's own drop keeps dropping the rest and drops
/// nothing twice; here `finish` unwinds before it records `Released`, so
/// `Drop` (seeing `Settled::No`) releases everything again: a double drop
/// of every value swept before the panicking one and of that one, and —
/// since `finish` had already taken `errors` out of its mutex — the failed
/// item's cell is swept as a value too (uninitialised with two buffers:
/// SIGSEGV; the moved-out input's bits with one). And no result ever comes
/// (`get` would wait for ever): the completion that ran `finish` unwound.
fn drop_panic_while_releasing(wide: bool) {
    let pool = threads(4);
    let l = Ledger::new(
        16,
        Plan {
            panic_at: vec![7],
            drop_bomb_at: Some(3),
            ..Plan::default()
        },
    );
    let got = if wide {
        pool.map_async_chunked(work_wide, l.inputs(), 1)
            .get_timeout(PROMPT)
            .map(|v| v.len())
    } else {
        pool.map_async_chunked(work, l.inputs(), 1)
            .get_timeout(PROMPT)
            .map(|v| v.len())
    };
    pool.close();
    pool.join_timeout(GUARD).expect("join");
    let mut p = Vec::new();
    if got == Err(TaskError::NotReady) {
        p.push(format!("no result within {PROMPT:?}"));
    }
    assert!(got.is_err(), "item 7 failed");
    // A leak after a panicking drop is tolerable; a second drop is not.
    let bogus = l.bogus.load(SeqCst);
    if bogus != 0 {
        p.push(format!(
            "{bogus} drops of a cell that held no value (the failed item's moved-out input)"
        ));
    }
    for i in 0..l.n {
        let d = l.out_drops[i].load(SeqCst);
        if d > 1 {
            p.push(format!("value {i} dropped {d} times"));
        }
        let d = l.in_drops[i].load(SeqCst);
        if d > 1 {
            p.push(format!("input {i} dropped {d} times"));
        }
    }
    assert!(p.is_empty(), "{p:#?}");
}

#[test]
fn drop_panic_while_releasing_shared_buffer() {
    drop_panic_while_releasing(false);
}

#[test]
fn drop_panic_while_releasing_two_buffers() {
    drop_panic_while_releasing(true);
}

/// An item panics with a payload whose `Drop` panics: the second panic
/// escapes `run` in the middle of a claimed chunk, so the rest of that
/// chunk is claimed but never run, and the job never finishes. `Drop`
/// then sweeps those indices as values: here (one buffer) it drops the
/// inputs still there as values of the output type and never drops them
/// as inputs; with two buffers it would drop uninitialised memory.
#[test]
fn panic_payload_that_panics_on_drop() {
    let pool = threads(1);
    let l = Ledger::new(
        8,
        Plan {
            payload_bomb_at: Some(2),
            ..Plan::default()
        },
    );
    let got = pool
        .map_async_chunked(work, l.inputs(), 8)
        .get_timeout(PROMPT)
        .map(|v| v.len());
    assert!(matches!(got, Err(TaskError::Panicked(_))), "{got:?}");
    pool.close();
    pool.join_timeout(GUARD).expect("join");
    let p = l.problems();
    assert!(p.is_empty(), "{p:#?}");
}

/// Zero-sized inputs and values (never the shared buffer).
mod zst {
    use super::*;

    static MADE: AtomicUsize = AtomicUsize::new(0);
    static DROPPED: AtomicUsize = AtomicUsize::new(0);
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    /// A zero-sized value that counts its drops.
    #[derive(Serialize, Deserialize)]
    struct Z;

    impl Z {
        fn new() -> Self {
            MADE.fetch_add(1, SeqCst);
            Self
        }
    }

    impl Drop for Z {
        fn drop(&mut self) {
            DROPPED.fetch_add(1, SeqCst);
        }
    }

    fn zz(z: Z) -> Z {
        CALLS.fetch_add(1, SeqCst);
        drop(z);
        Z::new()
    }

    /// One call in 97 panics.
    fn zz_flaky(z: Z) -> Z {
        let k = CALLS.fetch_add(1, SeqCst);
        drop(z);
        assert!(k % 97 != 3, "call {k} fails");
        Z::new()
    }

    fn z_to_u64(z: Z) -> u64 {
        drop(z);
        CALLS.fetch_add(1, SeqCst) as u64
    }

    fn u64_to_z(x: u64) -> Z {
        let _ = x;
        Z::new()
    }

    fn unit(u: ()) -> u8 {
        let () = u;
        0
    }

    fn inputs(n: usize) -> Vec<Z> {
        (0..n).map(|_| Z::new()).collect()
    }

    fn balanced() -> bool {
        MADE.load(SeqCst) == DROPPED.load(SeqCst)
    }

    // One test: the statics are shared.
    #[test]
    fn zero_sized_inputs_and_values() {
        for size in [1, 3, 8] {
            let pool = threads(size);
            for n in [1, 2, 10, 1000, 100_000] {
                for chunk in [1, 7, usize::MAX] {
                    let calls = CALLS.load(SeqCst);
                    let got = pool.map_chunked(zz, inputs(n), chunk).expect("map");
                    assert_eq!(got.len(), n);
                    assert_eq!(CALLS.load(SeqCst) - calls, n, "each item once");
                    drop(got);
                    assert!(balanced(), "Z -> Z, n {n} chunk {chunk}");

                    let got = pool.map_chunked(z_to_u64, inputs(n), chunk).expect("map");
                    assert_eq!(got.len(), n);
                    drop(got);
                    assert!(balanced(), "Z -> u64, n {n} chunk {chunk}");

                    let got = pool
                        .map_chunked(u64_to_z, (0..n as u64).collect::<Vec<_>>(), chunk)
                        .expect("map");
                    assert_eq!(got.len(), n);
                    drop(got);
                    assert!(balanced(), "u64 -> Z, n {n} chunk {chunk}");

                    let got = pool.map_chunked(unit, vec![(); n], chunk).expect("map");
                    assert_eq!(got, vec![0; n]);

                    if n <= 1000 {
                        let got = pool.map_chunked(zz_flaky, inputs(n), chunk);
                        assert!(n < 97 || got.is_err(), "n {n}");
                        drop(got);
                        assert!(balanced(), "flaky Z -> Z, n {n} chunk {chunk}");
                    }
                }
            }
        }
    }
}
