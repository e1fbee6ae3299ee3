//! A thread pool's `map` without a job per chunk.
//!
//! The input vector is taken over as it is (no copy), and the results go
//! into one preallocated vector of the same length (or the input's own
//! buffer, when the types allow). Each of (at most) `size` jobs owns a
//! share of the indices, a contiguous range under a mutex of its own cache
//! line: it claims the next `chunk` indices from its share, runs those items
//! (a panic is that item's error) and writes each value in its place; when
//! its share is empty it steals the upper half of another's (all of it,
//! if at most a chunk is left). The job that finishes last hands the
//! results over as a `Vec` (again no copy) — or, if any item failed, the
//! first error by position. The chunk size keeps its meaning: how many
//! items a worker takes at a time.
//!
//! Claiming from one's own share touches a line no other job writes until
//! it steals, so `map_chunked(f, items, 1)` costs an uncontended lock per
//! item. A single shared counter (one atomic add per chunk) made every
//! claim move that counter's line between the cores: 0.49–0.52× rayon's
//! `with_max_len(1)` for trivial items.
//!
//! An index is claimed when it leaves every share; a claimed range is
//! always run to its end (panics are caught per item). Once every job has
//! finished, no range is in flight between two shares, so the indices
//! still in a share are exactly those whose input was not taken; every
//! other index holds a value unless it is in `errors`.
//!
//! "Finished" means the job's work has stopped touching the buffers, which
//! is not when the pool calls its completion: `terminate` completes a
//! running job (with `Terminated`) while its thread, abandoned, still runs
//! it, and a job the pool completed first may still be started by its
//! thread. Each job therefore has a [`JobState`]: whichever of its work and
//! its completion comes last counts it as finished, and work that starts
//! after its completion does nothing. A failed completion also stops every
//! job from claiming more.

use std::cell::UnsafeCell;
use std::marker::PhantomData;
use std::mem::{ManuallyDrop, MaybeUninit};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use super::result::TaskError;
use crate::PanicReport;
use crate::task::TaskFn;

/// A vector's buffer, owned as raw parts so that threads can move
/// elements in and out of their own indices.
struct Buffer<T> {
    ptr: *mut MaybeUninit<T>,
    cap: usize,
}

impl<T> Buffer<T> {
    fn from_vec(v: Vec<T>) -> Self {
        let mut v = ManuallyDrop::new(v);
        Self {
            ptr: v.as_mut_ptr().cast(),
            cap: v.capacity(),
        }
    }

    fn with_capacity(n: usize) -> Self {
        Self::from_vec(Vec::with_capacity(n))
    }
}

/// One `map` in progress. The function is not kept here: each job has
/// its own copy (`F` is `Send`, not necessarily `Sync`).
pub(crate) struct Claim<F, A, R> {
    f: PhantomData<fn(F)>,
    len: usize,
    /// The inputs; index `i` is moved out by the job that claimed it.
    inputs: Buffer<A>,
    /// The values; index `i` is written by the job that claimed it.
    outputs: Buffer<R>,
    /// `outputs` is `inputs`' own buffer: `A` and `R` have the same size
    /// and alignment, so each value is written where its input was (read
    /// out first). One allocation, and no fresh pages to fault in: for a
    /// million `u64`s, 8 MB fewer.
    shared: bool,
    /// Each job's unclaimed indices, `start..end`.
    shares: Box<[Share]>,
    chunk: usize,
    /// A job failed (the pool terminated, say): claim nothing more.
    stop: AtomicBool,
    /// Jobs not finished (run, or failed to run).
    left: AtomicUsize,
    /// Items that failed, by index (their output cell stays empty).
    errors: Mutex<Vec<(usize, TaskError)>>,
    /// Why a job could not run (the pool terminated first, say).
    failure: Mutex<Option<TaskError>>,
    /// What `finish` did (under `left` reaching zero): nothing yet, handed
    /// the values over, or released everything.
    settled: UnsafeCell<Settled>,
}

/// See [`Claim::settled`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Settled {
    No,
    HandedOver,
    Released,
}

// SAFETY: an input and its output cell are touched by the single job
// that took that index out of the shares (under their locks), and all cells (and `settled`) by
// the last job to finish, after every other job's decrement of `left`
// (`AcqRel`, which orders their writes before its reads), or by `Drop`,
// which has `&mut`. A job counts as finished only once its work has ended
// or can no longer start (`JobState`). Values cross threads, hence
// `A: Send`, `R: Send`; no `F` is stored.
unsafe impl<F, A: Send, R: Send> Sync for Claim<F, A, R> {}
// SAFETY: as above; the raw buffers are owned like a `Vec`'s.
unsafe impl<F, A: Send, R: Send> Send for Claim<F, A, R> {}

/// Where one job is: its work and its completion may come in either order
/// (and on different threads); the one that comes last finishes the job.
pub(crate) struct JobState(AtomicU8);

/// Neither the work nor the completion came yet.
const IDLE: u8 = 0;
/// The work is running.
const RUNNING: u8 = 1;
/// The work ran to its end.
const ENDED: u8 = 2;
/// The completion came.
const COMPLETED: u8 = 3;

impl JobState {
    pub(crate) fn new() -> Self {
        Self(AtomicU8::new(IDLE))
    }
}

impl<F, A, R> Claim<F, A, R>
where
    F: TaskFn<A, Output = R>,
{
    /// `items` shared by `jobs` jobs taking `chunk` at a time.
    pub(crate) fn new(items: Vec<A>, chunk: usize, jobs: usize) -> Self {
        debug_assert!(jobs > 0, "a map has at least one job");
        let len = items.len();
        let shared = std::mem::size_of::<A>() == std::mem::size_of::<R>()
            && std::mem::align_of::<A>() == std::mem::align_of::<R>()
            && std::mem::size_of::<A>() != 0;
        // The output first: if it cannot be allocated, `items` is still a
        // plain vector and is dropped as one.
        let own_outputs = (!shared).then(|| Buffer::<R>::with_capacity(len));
        let inputs = Buffer::from_vec(items);
        let outputs = own_outputs.unwrap_or(Buffer {
            ptr: inputs.ptr.cast(),
            cap: inputs.cap,
        });
        Self {
            f: PhantomData,
            len,
            inputs,
            outputs,
            shared,
            shares: (0..jobs.max(1))
                .map(|j| {
                    let jobs = jobs.max(1);
                    // `len * j / jobs` without overflow.
                    let at = |j: usize| (len / jobs) * j + (len % jobs) * j / jobs;
                    Share(Mutex::new((at(j), at(j + 1))))
                })
                .collect(),
            chunk: chunk.clamp(1, len.max(1)),
            stop: AtomicBool::new(false),
            left: AtomicUsize::new(jobs),
            errors: Mutex::new(Vec::new()),
            failure: Mutex::new(None),
            settled: UnsafeCell::new(Settled::No),
        }
    }

    /// One job's work (`job` is its state): claim and run chunks until
    /// none are left, unless its completion came first. Returns every
    /// result if this finished the last job.
    pub(crate) fn run_job(
        &self,
        f: F,
        job: &JobState,
        me: usize,
    ) -> Option<Result<Vec<R>, TaskError>> {
        if job
            .0
            .compare_exchange(IDLE, RUNNING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // Completed (failed) before it started: the completion counted
            // it, and the buffers may already be gone.
            return None;
        }
        self.run(f, me);
        if job
            .0
            .compare_exchange(RUNNING, ENDED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return None;
        }
        // The completion came while this ran (the pool terminated): it
        // left the finishing to the work.
        self.finish()
    }

    /// One job's completion (`failure`: it failed, or could not run).
    /// Returns every result if this finished the last job.
    pub(crate) fn complete_job(
        &self,
        job: &JobState,
        failure: Option<TaskError>,
    ) -> Option<Result<Vec<R>, TaskError>> {
        if let Some(e) = failure {
            // Before the job can count as finished, so the last finisher
            // sees it.
            self.failure
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_or_insert(e);
            self.stop.store(true, Ordering::Relaxed);
        }
        match job.0.swap(COMPLETED, Ordering::AcqRel) {
            // Still running: the work finishes the job when it ends.
            RUNNING => None,
            _ => self.finish(),
        }
    }

    /// The next chunk of share `me`, or of another's (stolen), or `None`
    /// when every share is empty.
    fn claim(&self, me: usize) -> Option<(usize, usize)> {
        let n = self.shares.len();
        let me = me % n;
        {
            let mut own = self.shares[me].lock();
            if own.0 < own.1 {
                let start = own.0;
                own.0 = start + self.chunk.min(own.1 - start);
                return Some((start, own.0));
            }
        }
        for k in 1..n {
            let stolen = {
                let mut victim = self.shares[(me + k) % n].lock();
                let left = victim.1 - victim.0;
                if left == 0 {
                    continue;
                }
                if left > self.chunk {
                    let mid = victim.0 + left / 2;
                    let upper = (mid, victim.1);
                    victim.1 = mid;
                    upper
                } else {
                    let all = *victim;
                    victim.0 = victim.1;
                    all
                }
            };
            // The first chunk now, the rest into our own (empty) share,
            // where others may steal from it in turn.
            let end = stolen.0 + self.chunk.min(stolen.1 - stolen.0);
            *self.shares[me].lock() = (end, stolen.1);
            return Some((stolen.0, end));
        }
        None
    }

    /// Claims and runs chunks until none are left (or a job failed).
    fn run(&self, f: F, me: usize) {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            let Some((start, end)) = self.claim(me) else {
                return;
            };
            let (inputs, outputs) = (self.inputs.ptr, self.outputs.ptr);
            let mut i = start;
            // One unwinding guard per stretch of items, not per item: the
            // loop inside is a plain loop the compiler can optimise. After
            // a panic, item `i - 1` is the one that failed; go on after it.
            while i < end {
                let run = catch_unwind(AssertUnwindSafe(|| {
                    while i < end {
                        // SAFETY: `claim` took `start..end` out of the shares
                        // under their locks, for this job alone, each index
                        // once; `i < len <= capacity`; input `i` was
                        // initialised by the caller's vector and is read
                        // once (`i` advances before the call, so a panic
                        // does not retry it).
                        let a = unsafe { (*inputs.add(i)).assume_init_read() };
                        i += 1;
                        let v = f.call(a);
                        // SAFETY: index `i - 1` is this job's alone.
                        unsafe { (*outputs.add(i - 1)).write(v) };
                    }
                }));
                if let Err(p) = run {
                    let report = PanicReport::from_payload(&*p);
                    self.errors
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((i - 1, TaskError::Panicked(report)));
                    discard(p);
                }
            }
        }
    }

    /// A job is done: its work ended or will never start. The last one
    /// returns every result in order, or the error: a job's failure (the
    /// pool terminated, say), else the first item's by position.
    fn finish(&self) -> Option<Result<Vec<R>, TaskError>> {
        if self.left.fetch_sub(1, Ordering::AcqRel) != 1 {
            return None;
        }
        // Every job has finished: this thread alone touches the buffers.
        let unclaimed = self.unclaimed();
        let mut errors =
            std::mem::take(&mut *self.errors.lock().unwrap_or_else(PoisonError::into_inner));
        let failure = self
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if unclaimed.is_empty() && errors.is_empty() && failure.is_none() {
            // SAFETY: only the last finisher gets here, once.
            unsafe { *self.settled.get() = Settled::HandedOver };
            // SAFETY: all `len` values were written (every index was
            // claimed and holds one, no error); the buffer came from a
            // `Vec<R>` with capacity `outputs.cap` — or, shared, from a
            // `Vec<A>` of that capacity, whose allocation has the same
            // layout (same size and alignment); `settled` keeps `Drop`
            // from touching it again.
            let values = unsafe {
                Vec::from_raw_parts(self.outputs.ptr.cast::<R>(), self.len, self.outputs.cap)
            };
            return Some(Ok(values));
        }
        errors.sort_unstable_by_key(|(i, _)| *i);
        // SAFETY: as above, this thread is alone with the buffers, once
        // (marked first: a value's `Drop` that panics is caught in
        // `release`, but nothing must release twice).
        unsafe {
            *self.settled.get() = Settled::Released;
            self.release(&unclaimed, &errors);
        }
        // Items go unclaimed only after a job failed, which set `failure`.
        let first = failure
            .or_else(|| errors.into_iter().next().map(|(_, e)| e))
            .unwrap_or(TaskError::Terminated);
        Some(Err(first))
    }
}

/// Drops a panic's payload, whose own `Drop` may panic in turn (that
/// second payload is leaked rather than let unwind).
fn discard(p: Box<dyn std::any::Any + Send>) {
    if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(p))) {
        std::mem::forget(again);
    }
}

/// A job's share of the indices, alone on its cache line.
#[repr(align(64))]
struct Share(Mutex<(usize, usize)>);

impl Share {
    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, usize)> {
        // Every update is one assignment: a panic cannot leave it torn.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What an index holds once every job has finished.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Held {
    /// Never claimed: its input.
    Input,
    /// Claimed and run: its value.
    Value,
    /// Claimed, and its item failed: nothing.
    Nothing,
}

/// Calls `each(i, what i holds)` for every index below `len`, given the
/// unclaimed ranges and the failed indices, both sorted.
fn sweep(
    len: usize,
    unclaimed: &[(usize, usize)],
    errors: &[(usize, TaskError)],
    mut each: impl FnMut(usize, Held),
) {
    let mut ranges = unclaimed.iter().peekable();
    let mut failed = errors.iter().map(|(i, _)| *i).peekable();
    for i in 0..len {
        while ranges.peek().is_some_and(|r| r.1 <= i) {
            ranges.next();
        }
        while failed.peek().is_some_and(|f| *f < i) {
            failed.next();
        }
        let held = if ranges.peek().is_some_and(|r| r.0 <= i) {
            Held::Input
        } else if failed.peek() == Some(&i) {
            Held::Nothing
        } else {
            Held::Value
        };
        each(i, held);
    }
}

impl<F, A, R> Claim<F, A, R> {
    /// The ranges still in the shares, sorted (meaningful once every job
    /// has finished: then none is in flight).
    fn unclaimed(&self) -> Vec<(usize, usize)> {
        let mut ranges: Vec<(usize, usize)> = self
            .shares
            .iter()
            .map(|s| *s.lock())
            .filter(|r| r.0 < r.1)
            .collect();
        ranges.sort_unstable();
        ranges
    }

    /// Drops what every index holds (inputs never claimed, values) and
    /// frees both buffers (the one, when shared).
    ///
    /// # Safety
    ///
    /// The caller is alone with the buffers, every job has finished,
    /// `unclaimed` and `errors` (sorted) say what each index holds, and
    /// the buffers are not used again.
    unsafe fn release(&self, unclaimed: &[(usize, usize)], errors: &[(usize, TaskError)]) {
        // Each element dropped on its own: one whose `Drop` panics does not
        // keep the others (or the buffers) from being freed, and the
        // panic goes no further (the map reports its error, and `Drop`
        // must not unwind).
        sweep(self.len, unclaimed, errors, |i, held| {
            let one = catch_unwind(AssertUnwindSafe(|| match held {
                // SAFETY: index `i` still holds its input (the caller's
                // contract).
                Held::Input => unsafe { (*self.inputs.ptr.add(i)).assume_init_drop() },
                // SAFETY: index `i` holds a value (the caller's contract).
                Held::Value => unsafe { (*self.outputs.ptr.add(i)).assume_init_drop() },
                Held::Nothing => {}
            }));
            if let Err(p) = one {
                discard(p);
            }
        });
        // SAFETY: each buffer came from a `Vec` of its capacity (the
        // shared one from the input's, whose layout is the output's); its
        // elements are dropped or moved out above; length 0 frees the
        // allocation only, once.
        unsafe {
            drop(Vec::from_raw_parts(
                self.outputs.ptr.cast::<R>(),
                0,
                self.outputs.cap,
            ));
            if !self.shared {
                drop(Vec::from_raw_parts(
                    self.inputs.ptr.cast::<A>(),
                    0,
                    self.inputs.cap,
                ));
            }
        }
    }
}

impl<F, A, R> Drop for Claim<F, A, R> {
    fn drop(&mut self) {
        let unclaimed = self.unclaimed();
        match *self.settled.get_mut() {
            Settled::Released => return,
            Settled::HandedOver if self.shared => return,
            Settled::HandedOver => {}
            Settled::No => {
                // `finish` never ran to the end (a job was lost):
                // everything is dropped here.
                let mut errors = std::mem::take(
                    self.errors
                        .get_mut()
                        .unwrap_or_else(PoisonError::into_inner),
                );
                errors.sort_unstable_by_key(|(i, _)| *i);
                // SAFETY: `&mut self`: alone with the buffers, used no
                // more; no job runs, so no range is in flight.
                unsafe { self.release(&unclaimed, &errors) };
                return;
            }
        }
        // `finish` handed the values over (every index was claimed: no
        // input is left); the inputs' own buffer remains.
        // SAFETY: the buffer came from the caller's `Vec<A>`; every element
        // was moved out; length 0 frees it only.
        drop(unsafe { Vec::from_raw_parts(self.inputs.ptr.cast::<A>(), 0, self.inputs.cap) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicIsize;

    /// Counts live values: +1 made, -1 dropped.
    static LIVE: AtomicIsize = AtomicIsize::new(0);

    #[derive(Debug)]
    struct Tracked(u32);

    impl Tracked {
        fn new(v: u32) -> Self {
            LIVE.fetch_add(1, Ordering::SeqCst);
            Self(v)
        }
    }

    impl Drop for Tracked {
        fn drop(&mut self) {
            LIVE.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Calls of `double`.
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    fn double(t: Tracked) -> Tracked {
        CALLS.fetch_add(1, Ordering::SeqCst);
        assert!(t.0 != 13, "13 is cursed");
        Tracked::new(t.0 * 2)
    }

    fn widen(t: Tracked) -> (Tracked, u64) {
        let d = double(t);
        let n = u64::from(d.0) / 2;
        (d, n)
    }

    /// A claim whose values are wider than its inputs (two buffers).
    type Wide = Claim<fn(Tracked) -> (Tracked, u64), (Tracked,), (Tracked, u64)>;

    fn job_wide(c: &Wide) -> Option<Result<Vec<(Tracked, u64)>, TaskError>> {
        let s = JobState::new();
        assert!(c.run_job(widen, &s, 0).is_none());
        c.complete_job(&s, None)
    }

    fn inputs(n: u32) -> Vec<(Tracked,)> {
        (0..n).map(|i| (Tracked::new(i),)).collect()
    }

    type C = Claim<fn(Tracked) -> Tracked, (Tracked,), Tracked>;
    const F: fn(Tracked) -> Tracked = double;

    /// Runs a job to its end, then completes it.
    fn job(c: &C, failure: Option<TaskError>) -> Option<Result<Vec<Tracked>, TaskError>> {
        let s = JobState::new();
        assert!(c.run_job(F, &s, 0).is_none());
        c.complete_job(&s, failure)
    }

    // One test, so the live count is not shared between tests running at
    // once.
    #[test]
    fn every_value_is_dropped_exactly_once() {
        // All succeed, two jobs sharing chunks of 3 (inputs and values of
        // one layout: one buffer).
        let c = C::new(inputs(13), 3, 2);
        assert!(c.shared);
        let (s1, s2) = (JobState::new(), JobState::new());
        std::thread::scope(|s| {
            s.spawn(|| assert!(c.run_job(F, &s1, 0).is_none()));
            s.spawn(|| assert!(c.run_job(F, &s2, 1).is_none()));
        });
        assert!(c.complete_job(&s1, None).is_none());
        let got = c.complete_job(&s2, None).unwrap().unwrap();
        assert_eq!(
            got.iter().map(|t| t.0).collect::<Vec<_>>(),
            (0..13).map(|i| i * 2).collect::<Vec<_>>()
        );
        drop(c);
        assert_eq!(LIVE.load(Ordering::SeqCst), 13);
        drop(got);
        assert_eq!(LIVE.load(Ordering::SeqCst), 0);

        // Three shares, one job that runs: it steals the other two shares
        // (halves, then the rest) and every value is there.
        let c = C::new(inputs(12), 1, 3);
        let (s0, s1, s2) = (JobState::new(), JobState::new(), JobState::new());
        assert!(c.run_job(F, &s2, 2).is_none());
        assert!(c.unclaimed().is_empty(), "all stolen and run");
        assert!(c.complete_job(&s2, None).is_none());
        assert!(c.complete_job(&s0, None).is_none());
        let got = c.complete_job(&s1, None).unwrap().unwrap();
        assert_eq!(
            got.iter().map(|t| t.0).collect::<Vec<_>>(),
            (0..12).map(|i| i * 2).collect::<Vec<_>>()
        );
        drop((got, c));
        assert_eq!(LIVE.load(Ordering::SeqCst), 0);

        // Item 13 panics: the error by position, every other value dropped.
        let c = C::new(inputs(20), 1, 1);
        let err = job(&c, None).unwrap().unwrap_err();
        assert!(matches!(err, TaskError::Panicked(r) if r.message.contains("cursed")));
        drop(c);
        assert_eq!(LIVE.load(Ordering::SeqCst), 0);

        // The job never ran (the pool terminated): inputs dropped, the
        // pool's reason reported.
        let c = C::new(inputs(5), 2, 1);
        let s = JobState::new();
        assert_eq!(
            c.complete_job(&s, Some(TaskError::Terminated))
                .unwrap()
                .unwrap_err(),
            TaskError::Terminated
        );
        // Its thread starts it anyway: it touches nothing.
        assert!(c.run_job(F, &s, 0).is_none());
        drop(c);
        assert_eq!(LIVE.load(Ordering::SeqCst), 0);

        // Terminated while running: the completion comes first and leaves
        // the finishing to the work, which claims nothing more after the
        // chunk it is in.
        let c = C::new(inputs(10), 3, 2);
        let (s1, s2) = (JobState::new(), JobState::new());
        s1.0.store(RUNNING, Ordering::SeqCst); // as if `run_job` had begun
        assert!(c.complete_job(&s1, Some(TaskError::Terminated)).is_none());
        assert!(c.complete_job(&s2, Some(TaskError::Terminated)).is_none());
        c.run(F, 0);
        let left: usize = c.unclaimed().iter().map(|r| r.1 - r.0).sum();
        assert_eq!(left, 10, "stopped: nothing claimed");
        // What `run_job` does when its exchange to `ENDED` fails.
        assert_eq!(c.finish().unwrap().unwrap_err(), TaskError::Terminated);
        drop(c);
        assert_eq!(LIVE.load(Ordering::SeqCst), 0);

        // A chunk far larger than the input: no index is handed out twice
        // when `next` would wrap.
        let calls = CALLS.load(Ordering::SeqCst);
        let c = C::new(inputs(3), usize::MAX / 2 + 1, 3);
        let got: Vec<_> = (0..3).filter_map(|_| job(&c, None)).collect();
        assert_eq!(got.len(), 1);
        assert_eq!(CALLS.load(Ordering::SeqCst) - calls, 3, "each item once");
        drop(got);
        drop(c);
        assert_eq!(LIVE.load(Ordering::SeqCst), 0);

        // Inputs and values of different layouts (two buffers): a panic,
        // then a lost job.
        const W: fn(Tracked) -> (Tracked, u64) = widen;
        let c = Wide::new(inputs(20), 3, 1);
        assert!(!c.shared);
        let s = JobState::new();
        assert!(c.run_job(W, &s, 0).is_none());
        assert!(c.complete_job(&s, None).unwrap().is_err(), "13 is cursed");
        drop(c);
        assert_eq!(LIVE.load(Ordering::SeqCst), 0);
        let c = Wide::new(inputs(6), 2, 2);
        let s = JobState::new();
        assert!(c.run_job(W, &s, 0).is_none());
        drop(c);
        assert_eq!(LIVE.load(Ordering::SeqCst), 0);
        let c = Wide::new(inputs(6), 2, 1);
        let got = job_wide(&c).unwrap().unwrap();
        assert_eq!(got.iter().map(|t| t.1).sum::<u64>(), 15);
        drop((got, c));
        assert_eq!(LIVE.load(Ordering::SeqCst), 0);

        // Dropped without a finish (a lost job): values written so far and
        // unclaimed inputs are both dropped.
        let c = C::new(inputs(6), 2, 2);
        let s = JobState::new();
        assert!(c.run_job(F, &s, 0).is_none());
        drop(c);
        assert_eq!(LIVE.load(Ordering::SeqCst), 0);
    }
}
