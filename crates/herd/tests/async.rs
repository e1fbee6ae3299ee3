//! herd's futures on tokio (current-thread and multi-thread) and on smol:
//! `AsyncResult`, `Queue::get_async`/`put_async`, `Lock::acquire_async`,
//! `Process::join_async`. `harness = false`: `main` calls `herd::init()`
//! first, before any runtime starts a thread.

use std::future::Future;
use std::time::Duration;

use herd::sync::{Event, Lock, LockError};
use herd::{GetError, Pool, Queue};
use herd_testkit::{GUARD, check};
use libtest_mimic::{Arguments, Failed, Trial};

#[herd::task]
fn fib(n: u64) -> u64 {
    if n < 2 { n } else { fib(n - 1) + fib(n - 2) }
}

#[herd::task]
fn produce(q: Queue<u32>, n: u32) {
    for i in 0..n {
        q.put(i).expect("put");
    }
}

#[herd::task]
fn hold(lock: Lock, held: Event, release: Event) {
    let _g = lock.acquire().expect("acquire");
    held.set();
    release.wait_timeout(GUARD);
}

#[herd::task]
fn hold_and_die(lock: Lock, held: Event) {
    let g = lock.acquire().expect("acquire");
    held.set();
    std::mem::forget(g);
    // SAFETY: raise only signals this process.
    unsafe {
        libc::raise(libc::SIGKILL);
    }
}

/// Runs `make()`'s future to completion on each runtime, under a guard.
fn on_each_runtime<F, Fut>(make: F) -> Result<(), Failed>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), Failed>> + Send + 'static,
{
    let guard = |fut: Fut| async move {
        tokio::time::timeout(GUARD, fut)
            .await
            .unwrap_or_else(|_| Err("timed out".into()))
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(guard(make()))
        .map_err(|e| format!("tokio current-thread: {}", e.message().unwrap_or_default()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Spawned, so the task may move between worker threads.
    rt.block_on(async { tokio::spawn(guard(make())).await })
        .map_err(|e| format!("tokio join: {e}"))?
        .map_err(|e| format!("tokio multi-thread: {}", e.message().unwrap_or_default()))?;
    smol::block_on(async {
        futures_lite::future::or(make(), async {
            smol::Timer::after(GUARD).await;
            Err("timed out".into())
        })
        .await
    })
    .map_err(|e| format!("smol: {}", e.message().unwrap_or_default()))?;
    Ok(())
}

fn async_result_offloads_cpu_work() -> Result<(), Failed> {
    let pool = std::sync::Arc::new(Pool::new(2)?);
    on_each_runtime(|| {
        let pool = std::sync::Arc::clone(&pool);
        async move {
            // CPU-bound work from async code: one `.await`.
            let v = pool.apply_async(fib, (20,)).await?;
            check(v == 6765, "fib(20)")?;
            let all = pool.map_async(fib, 0..10u64).await?;
            check(all == vec![0, 1, 1, 2, 3, 5, 8, 13, 21, 34], "map_async")
        }
    })
}

fn queue_get_async_from_a_child() -> Result<(), Failed> {
    on_each_runtime(|| async {
        let q: Queue<u32> = Queue::new()?;
        let mut child = herd::spawn(produce, (q.clone(), 50))?;
        let mut got = Vec::new();
        for _ in 0..50 {
            got.push(q.get_async().await?);
        }
        check(got == (0..50).collect::<Vec<_>>(), "order")?;
        child.join_async().await?;
        Ok(())
    })
}

fn queue_put_async_waits_for_room() -> Result<(), Failed> {
    on_each_runtime(|| async {
        let q: Queue<u32> = Queue::bounded(1)?;
        q.put(1)?;
        let mut put = Box::pin(q.put_async(2));
        check(
            futures_lite::future::poll_once(&mut put).await.is_none(),
            "full: the put waits",
        )?;
        check(q.get_timeout(GUARD)? == 1, "first item")?;
        put.await.map_err(|e| format!("{e}"))?;
        check(q.get_async().await? == 2, "second item")
    })
}

fn dropped_get_async_loses_nothing() -> Result<(), Failed> {
    on_each_runtime(|| async {
        let q: Queue<u32> = Queue::new()?;
        let r = tokio_or_smol_timeout(Duration::from_millis(20), q.get_async()).await;
        check(r.is_none(), "nothing to get yet")?;
        q.put(7)?;
        check(q.get_async().await? == 7, "the item is still there")?;
        q.close();
        check(
            matches!(q.get_async().await, Err(GetError::Closed)),
            "closed",
        )
    })
}

/// A timeout that works on both runtimes (a plain thread sleeps, the future
/// races it).
async fn tokio_or_smol_timeout<T>(d: Duration, fut: impl Future<Output = T>) -> Option<T> {
    let (tx, rx) = async_channel_pair();
    std::thread::spawn(move || {
        std::thread::sleep(d);
        let _ = tx.send(());
    });
    futures_lite::future::or(async { Some(fut.await) }, async {
        let _ = rx.recv_async().await;
        None
    })
    .await
}

/// A one-shot channel usable from any runtime: a herd queue's own future.
fn async_channel_pair() -> (OneShot, OneShot) {
    let q: Queue<()> = Queue::new().expect("queue");
    (OneShot(q.clone()), OneShot(q))
}

struct OneShot(Queue<()>);

impl OneShot {
    fn send(&self, (): ()) -> Result<(), herd::PutError<()>> {
        self.0.put(())
    }
    async fn recv_async(&self) -> Result<(), GetError> {
        self.0.get_async().await
    }
}

fn lock_acquire_async_waits_and_reports_a_dead_holder() -> Result<(), Failed> {
    on_each_runtime(|| async {
        let lock = Lock::new()?;
        let (held, release) = (Event::new()?, Event::new()?);
        let mut child = herd::spawn(hold, (lock.clone(), held.clone(), release.clone()))?;
        check(held.wait_timeout(GUARD), "child holds the lock")?;
        check(lock.is_locked(), "locked")?;
        release.set();
        {
            let guard = lock.acquire_async().await;
            check(guard.is_ok(), "acquired after release")?;
        }
        child.join_async().await?;
        // A holder that dies: the next async acquirer hears of it.
        let held = Event::new()?;
        let mut child = herd::spawn(hold_and_die, (lock.clone(), held.clone()))?;
        check(held.wait_timeout(GUARD), "second child holds the lock")?;
        let _ = child.join_async().await;
        let r = lock.acquire_async().await;
        check(
            matches!(r, Err(LockError::Poisoned { .. })),
            "owner died reported",
        )?;
        drop(r);
        check(lock.acquire_async().await.is_ok(), "usable again")
    })
}

fn two_waits_at_once_both_wake() -> Result<(), Failed> {
    on_each_runtime(|| async {
        let (q1, q2): (Queue<u32>, Queue<u32>) = (Queue::new()?, Queue::new()?);
        let mut first = Box::pin(q1.get_async());
        let mut second = Box::pin(q2.get_async());
        check(
            futures_lite::future::poll_once(&mut first).await.is_none(),
            "first waits",
        )?;
        check(
            futures_lite::future::poll_once(&mut second).await.is_none(),
            "second waits",
        )?;
        // Only the second queue gets an item: its wait must not be stuck
        // behind the first's on one helper.
        q2.put(2)?;
        check(second.await? == 2, "second woke")?;
        q1.put(1)?;
        check(first.await? == 1, "first woke")
    })
}

fn put_async_waits_for_bytes_of_room() -> Result<(), Failed> {
    on_each_runtime(|| async {
        let q: Queue<Vec<u8>> = Queue::builder().capacity_bytes(4096).build()?;
        while q.try_put(vec![7u8; 1000]).is_ok() {}
        let mut put = Box::pin(q.put_async(vec![8u8; 1000]));
        check(
            futures_lite::future::poll_once(&mut put).await.is_none(),
            "the ring is full: the put waits",
        )?;
        check(q.get_timeout(GUARD)? == vec![7u8; 1000], "made room")?;
        put.await.map_err(|e| format!("{e}"))?;
        Ok(())
    })
}

/// On one thread, two tasks contend for a lock held across an `.await`:
/// the second waits (no `Deadlock`, no re-entry), then gets it.
fn acquire_async_on_a_single_threaded_executor() -> Result<(), Failed> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let lock = Lock::new()?;
    let rlock = herd::sync::RLock::new()?;
    let inside = std::cell::Cell::new(0u32);
    rt.block_on(async {
        let task = |name: &'static str| {
            let (lock, rlock, inside) = (&lock, &rlock, &inside);
            async move {
                let g = lock
                    .acquire_async()
                    .await
                    .map_err(|e| format!("{name}: {e}"))?;
                let r = rlock
                    .acquire_async()
                    .await
                    .map_err(|e| format!("{name}: {e}"))?;
                inside.set(inside.get() + 1);
                check(inside.get() == 1, format!("{name}: alone inside"))?;
                tokio::task::yield_now().await;
                inside.set(inside.get() - 1);
                drop(r);
                drop(g);
                Ok::<(), Failed>(())
            }
        };
        let (a, b) = tokio::join!(task("a"), task("b"));
        a?;
        b
    })
}

fn main() {
    herd::init();
    let args = Arguments::from_args();
    let tests = vec![
        Trial::test(
            "async_result_offloads_cpu_work",
            async_result_offloads_cpu_work,
        ),
        Trial::test("queue_get_async_from_a_child", queue_get_async_from_a_child),
        Trial::test(
            "queue_put_async_waits_for_room",
            queue_put_async_waits_for_room,
        ),
        Trial::test(
            "dropped_get_async_loses_nothing",
            dropped_get_async_loses_nothing,
        ),
        Trial::test(
            "lock_acquire_async_waits_and_reports_a_dead_holder",
            lock_acquire_async_waits_and_reports_a_dead_holder,
        ),
        Trial::test("two_waits_at_once_both_wake", two_waits_at_once_both_wake),
        Trial::test(
            "put_async_waits_for_bytes_of_room",
            put_async_waits_for_bytes_of_room,
        ),
        Trial::test(
            "acquire_async_on_a_single_threaded_executor",
            acquire_async_on_a_single_threaded_executor,
        ),
    ];
    libtest_mimic::run(&args, tests).exit();
}
