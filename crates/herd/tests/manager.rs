//! The embedded manager over real sockets, with real worker processes.
//! `harness = false`: `main` calls `herd::init()` first.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use herd::manager::{self, Manager, ManagerError};
use herd::sync::Event;
use herd_testkit::{GUARD, check};
use libtest_mimic::{Arguments, Failed, Trial};

const KEY: &[u8] = b"a long random key for the tests, 0x5eed";

fn start() -> Result<Manager, Failed> {
    Ok(Manager::builder(KEY).start("127.0.0.1:0")?)
}

/// A worker process: takes one task and holds it until killed.
#[herd::task]
fn take_and_hang(addr: String, got: Event) {
    let client = manager::connect(addr, KEY).expect("connect");
    let task = client
        .queue::<u32>("tasks")
        .get_timeout(GUARD)
        .expect("get")
        .expect("a task");
    got.set();
    // The behaviour under test: a worker that hangs holding its task until
    // it is killed (the parent waits on `got`, not on this sleep).
    std::thread::sleep(GUARD);
    drop(task);
}

fn put_get_ack_and_results() -> Result<(), Failed> {
    let m = start()?;
    let master = manager::connect(m.addr(), KEY)?;
    let worker = manager::connect(m.addr(), KEY)?;
    let tasks = master.queue::<(u64, String)>("tasks");
    for i in 0..10 {
        tasks.put(&(i, format!("task {i}")))?;
    }
    check(tasks.len()? == 10, "ten waiting")?;
    let wq = worker.queue::<(u64, String)>("tasks");
    for i in 0..10 {
        let d = wq.get_timeout(GUARD)?.ok_or("a task")?;
        check(
            d.value == (i, format!("task {i}")) && d.deliveries == 1,
            "in order",
        )?;
        worker.set_result(&d.value.0.to_string(), &(d.value.0 * d.value.0))?;
        d.ack()?;
    }
    for i in 0..10u64 {
        let r: Option<u64> = master.wait_result(&i.to_string(), GUARD)?;
        check(r == Some(i * i), format!("result {i}"))?;
    }
    check(
        wq.get_timeout(Duration::from_millis(10))?.is_none(),
        "empty",
    )?;
    check(m.leased() == 0, "nothing leased")
}

fn wrong_key_and_bad_input_are_refused_and_the_manager_stays_up() -> Result<(), Failed> {
    let m = Manager::builder(KEY)
        .handshake_timeout(Duration::from_millis(300))
        .max_frame(1 << 20)
        .start("127.0.0.1:0")?;
    let good = manager::connect(m.addr(), KEY)?;
    let q = good.queue::<u8>("q");
    q.put(&1)?;
    // A wrong key: refused, not retried.
    let wrong = manager::Client::builder(m.addr(), b"not the key")
        .reconnect_for(Duration::ZERO)
        .connect();
    check(
        matches!(wrong, Err(ManagerError::Auth(_))),
        format!("{wrong:?}"),
    )?;
    // Raw sockets: garbage, a truncated frame, an oversize frame, silence.
    let raw = |bytes: &[u8]| -> Result<(), Failed> {
        let mut s = TcpStream::connect(m.addr())?;
        s.set_read_timeout(Some(GUARD))?;
        s.write_all(bytes)?;
        // The manager hangs up on us.
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
        Ok(())
    };
    raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
    raw(&[0, 0, 0, 40, 1, 2, 3])?;
    raw(&[0x7f, 0xff, 0xff, 0xff])?;
    let t = Instant::now();
    raw(&[])?;
    check(
        t.elapsed() < Duration::from_secs(10),
        "a silent client is dropped",
    )?;
    // Everyone else is still served, and nothing was lost.
    check(q.len()? == 1, "the item is still there")?;
    check(q.get_timeout(GUARD)?.ok_or("item")?.value == 1, "served")?;
    Ok(())
}

fn a_killed_worker_s_task_is_delivered_again() -> Result<(), Failed> {
    let m = start()?;
    let master = manager::connect(m.addr(), KEY)?;
    master.queue::<u32>("tasks").put(&42)?;
    let got = Event::new()?;
    let mut worker = herd::spawn(take_and_hang, (m.addr().to_string(), got.clone()))?;
    check(got.wait_timeout(GUARD), "the worker took the task")?;
    check(m.len("tasks") == 0 && m.leased() == 1, "leased")?;
    worker.kill()?;
    // Its connection ended: the task is back, marked as delivered once.
    let again = master
        .queue::<u32>("tasks")
        .get_timeout(GUARD)?
        .ok_or("redelivered")?;
    check(
        again.value == 42 && again.deliveries == 2,
        format!("{again:?}"),
    )?;
    again.ack()?;
    Ok(())
}

fn a_lapsed_lease_is_delivered_again_and_heartbeats_keep_it() -> Result<(), Failed> {
    let m = start()?;
    let c = manager::connect(m.addr(), KEY)?;
    let q = c.queue::<u8>("q");
    q.put(&1)?;
    let first = q
        .get_leased(GUARD, Duration::from_millis(200))?
        .ok_or("first")?;
    // The lease lapses: the item comes back (on another get).
    let second = q
        .get_leased(GUARD, Duration::from_secs(30))?
        .ok_or("second")?;
    check(
        second.id == first.id && second.deliveries == 2,
        "same item again",
    )?;
    check(
        matches!(first.ack(), Err(ManagerError::LeaseLost(_))),
        "stale ack",
    )?;
    // Heartbeats keep a lease.
    second.heartbeat(Duration::from_secs(30))?;
    check(q.get_timeout(Duration::from_millis(500))?.is_none(), "kept")?;
    second.ack()?;
    Ok(())
}

fn a_task_that_keeps_failing_goes_to_the_dead_letters() -> Result<(), Failed> {
    let m = Manager::builder(KEY)
        .max_deliveries(2)
        .start("127.0.0.1:0")?;
    let c = manager::connect(m.addr(), KEY)?;
    let q = c.queue::<String>("q");
    q.put(&"poison".to_owned())?;
    for _ in 0..2 {
        q.get_timeout(GUARD)?.ok_or("delivered")?.nack()?;
    }
    check(
        q.get_timeout(Duration::from_millis(50))?.is_none(),
        "not delivered a third time",
    )?;
    let dead = c
        .queue::<String>("q.dead")
        .get_timeout(GUARD)?
        .ok_or("dead letter")?;
    check(dead.value == "poison", "the dead letter")?;
    Ok(())
}

fn a_client_reconnects_after_a_manager_restart() -> Result<(), Failed> {
    let m = start()?;
    let addr = m.addr();
    let c = manager::connect(addr, KEY)?;
    c.queue::<u8>("q").put(&1)?;
    m.shutdown();
    drop(m);
    let m2 = Manager::builder(KEY).start(addr)?;
    // The same client, a new manager: it reconnects and carries on.
    c.queue::<u8>("q").put(&2)?;
    check(m2.len("q") == 1, "the put after the restart landed")?;
    Ok(())
}

fn shutdown_needs_the_admin_key() -> Result<(), Failed> {
    const ADMIN: &[u8] = b"another long random key, for admins only";
    let m = start()?;
    let worker = manager::connect(m.addr(), KEY)?;
    check(
        matches!(worker.shutdown(), Err(ManagerError::Remote(_))),
        "worker refused",
    )?;
    // No admin key configured: no admin connection at all.
    let admin = manager::Client::builder(m.addr(), ADMIN)
        .admin(true)
        .reconnect_for(Duration::ZERO)
        .connect();
    check(
        matches!(admin, Err(ManagerError::Auth(_))),
        "no admin connections",
    )?;
    // The workers' key does not open an admin connection.
    let m2 = Manager::builder(KEY)
        .admin_key(ADMIN)
        .start("127.0.0.1:0")?;
    let posing = manager::Client::builder(m2.addr(), KEY)
        .admin(true)
        .reconnect_for(Duration::ZERO)
        .connect();
    check(
        matches!(posing, Err(ManagerError::Auth(_))),
        "worker key refused for admin",
    )?;
    check(!m2.is_stopped(), "still up")?;
    manager::connect_admin(m2.addr(), ADMIN)?.shutdown()?;
    check(m2.is_stopped(), "stopped by admin")
}

fn a_lease_from_before_a_restart_cannot_touch_a_new_one() -> Result<(), Failed> {
    let m = start()?;
    let addr = m.addr();
    let a = manager::connect(addr, KEY)?;
    let b = manager::connect(addr, KEY)?;
    a.queue::<u8>("q").put(&1)?;
    let held = a.queue::<u8>("q").get_timeout(GUARD)?.ok_or("a's task")?;
    m.shutdown();
    drop(m);
    let m2 = start_at(addr)?;
    b.queue::<u8>("q").put(&2)?;
    let b_task = b.queue::<u8>("q").get_timeout(GUARD)?.ok_or("b's task")?;
    // A's stale ack must not remove B's lease.
    check(
        matches!(held.ack(), Err(ManagerError::LeaseLost(_))),
        "stale ack refused",
    )?;
    check(m2.leased() == 1, "b's lease intact")?;
    b_task.ack()?;
    Ok(())
}

fn start_at(addr: std::net::SocketAddr) -> Result<Manager, Failed> {
    Ok(Manager::builder(KEY).start(addr)?)
}

fn answers_stay_within_the_frame_limit() -> Result<(), Failed> {
    let m = Manager::builder(KEY)
        .max_frame(1 << 20)
        .start("127.0.0.1:0")?;
    let c = manager::connect(m.addr(), KEY)?;
    let q = c.queue::<serde_bytes::ByteBuf>("q");
    for _ in 0..5 {
        q.put(&serde_bytes::ByteBuf::from(vec![7u8; 300 << 10]))?;
    }
    let mut got = 0;
    while got < 5 {
        let batch = q.get_many(10, GUARD, Duration::from_secs(30))?;
        check(
            !batch.is_empty() && batch.len() <= 3,
            format!("{} in one answer", batch.len()),
        )?;
        check(batch.iter().all(|d| d.deliveries == 1), "delivered once")?;
        got += batch.len();
        c.ack_many(batch)?;
    }
    check(m.len("q.dead") == 0, "nothing dead")?;
    // An item too large for any answer is refused at put.
    let too_big = q.put(&serde_bytes::ByteBuf::from(vec![0u8; (1 << 20) - 100]));
    check(too_big.is_err(), "oversize item refused")?;
    // A huge wait is no wait at all to overflow.
    q.put(&serde_bytes::ByteBuf::from(vec![1u8]))?;
    check(q.get_timeout(Duration::MAX)?.is_some(), "Duration::MAX")
}

fn a_trickling_peer_is_dropped_at_the_handshake_deadline() -> Result<(), Failed> {
    let m = Manager::builder(KEY)
        .handshake_timeout(Duration::from_millis(300))
        .start("127.0.0.1:0")?;
    let mut s = TcpStream::connect(m.addr())?;
    s.set_read_timeout(Some(Duration::from_millis(10)))?;
    let t = Instant::now();
    let mut dropped = false;
    // One byte of a frame every 50 ms: each read on the manager's side
    // succeeds, so only a deadline checked after every read stops it.
    for b in [0u8, 0, 0, 100].iter().chain([1u8; 100].iter()) {
        if s.write_all(&[*b]).is_err() {
            dropped = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        let mut buf = [0u8; 256];
        if let Ok(0) = s.read(&mut buf) {
            dropped = true;
            break;
        }
    }
    check(dropped, "the trickler was dropped")?;
    check(
        t.elapsed() < Duration::from_secs(3),
        format!("after {:?}", t.elapsed()),
    )
}

fn batches_put_get_and_ack_many() -> Result<(), Failed> {
    let m = start()?;
    let c = manager::connect(m.addr(), KEY)?;
    let q = c.queue::<u32>("q");
    q.put_many(&(0..100).collect::<Vec<_>>())?;
    check(q.len()? == 100, "a hundred in one put")?;
    let mut got = Vec::new();
    while got.len() < 100 {
        let batch = q.get_many(32, GUARD, Duration::from_secs(30))?;
        check(!batch.is_empty() && batch.len() <= 32, "a batch")?;
        got.extend(batch.iter().map(|d| d.value));
        c.ack_many(batch)?;
    }
    check(got == (0..100).collect::<Vec<_>>(), "in order")?;
    check(m.leased() == 0 && q.is_empty()?, "all acknowledged")?;
    check(
        q.get_many(8, Duration::from_millis(10), Duration::from_secs(1))?
            .is_empty(),
        "nothing left",
    )
}

fn a_persistent_manager_restarts_with_everything_accepted() -> Result<(), Failed> {
    let path = std::env::temp_dir().join(format!("herd-manager-test-{}.redb", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let m = Manager::builder(KEY).persist(&path).start("127.0.0.1:0")?;
    let addr = m.addr();
    let c = manager::connect(addr, KEY)?;
    let q = c.queue::<String>("q");
    q.put_many(&["a".to_owned(), "b".to_owned(), "c".to_owned()])?;
    q.get_timeout(GUARD)?.ok_or("a")?.ack()?;
    let leased = q.get_timeout(GUARD)?.ok_or("b")?;
    check(leased.value == "b", "b leased")?;
    c.set_result("b", &"B".to_owned())?;
    // A restart (the lease on b is not acknowledged).
    m.shutdown();
    drop((m, leased));
    let m2 = Manager::builder(KEY).persist(&path).start(addr)?;
    check(
        m2.len("q") == 2,
        format!("{} waiting after the restart", m2.len("q")),
    )?;
    let q = c.queue::<String>("q");
    q.put(&"d".to_owned())?;
    let order: Vec<String> = (0..3)
        .map(|_| q.get_timeout(GUARD).map(|d| d.map(|d| d.value)))
        .collect::<Result<Option<Vec<_>>, _>>()?
        .ok_or("three items")?;
    check(order == ["b", "c", "d"], format!("{order:?}"))?;
    check(
        c.wait_result::<String>("b", GUARD)?.as_deref() == Some("B"),
        "result kept",
    )?;
    drop(m2);
    let _ = std::fs::remove_file(&path);
    Ok(())
}

fn tls_round_trip_and_refusals() -> Result<(), Failed> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let (cert_pem, key_pem) = (cert.cert.pem(), cert.signing_key.serialize_pem());
    let m = Manager::builder(KEY)
        .tls(cert_pem.as_bytes(), key_pem.as_bytes())
        .handshake_timeout(Duration::from_millis(500))
        .start("127.0.0.1:0")?;
    let c = manager::Client::builder(m.addr(), KEY)
        .tls(cert_pem.as_bytes(), "localhost")
        .connect()?;
    let q = c.queue::<String>("q");
    q.put(&"over TLS".to_owned())?;
    let d = q.get_timeout(GUARD)?.ok_or("item")?;
    check(d.value == "over TLS", "round trip")?;
    d.ack()?;
    // A plain client, and a client expecting another name: refused.
    let plain = manager::Client::builder(m.addr(), KEY)
        .reconnect_for(Duration::ZERO)
        .connect();
    check(plain.is_err(), "plain client refused")?;
    let wrong_name = manager::Client::builder(m.addr(), KEY)
        .tls(cert_pem.as_bytes(), "example.org")
        .reconnect_for(Duration::ZERO)
        .connect();
    check(wrong_name.is_err(), "wrong server name refused")?;
    // The manager still serves the good client.
    q.put(&"still up".to_owned())?;
    check(q.len()? == 1, "still up")
}

fn stats_count_items_leases_acks_and_connections() -> Result<(), Failed> {
    let m = Manager::builder(KEY)
        .max_deliveries(2)
        .start("127.0.0.1:0")?;
    let a = manager::connect(m.addr(), KEY)?;
    let q = a.queue::<u32>("q");
    for i in 0..3 {
        q.put(&i)?;
    }
    let first = q.get_timeout(GUARD)?.ok_or("first")?;
    let held = q.get_timeout(GUARD)?.ok_or("second")?;
    first.ack()?;
    let s = a.stats()?;
    check(s.connections == 1, format!("one connection: {s:?}"))?;
    let qs = s.queue("q").ok_or("q in the stats")?;
    check(
        (qs.waiting, qs.leased, qs.dead) == (1, 1, 0),
        format!("waiting, leased, dead: {qs:?}"),
    )?;
    check(
        (
            qs.put_total,
            qs.acked_total,
            qs.delivered_total,
            qs.redelivered_total,
        ) == (3, 1, 2, 0),
        format!("counters: {qs:?}"),
    )?;
    check(s.queues.len() == 1 && s.results == 0, format!("{s:?}"))?;
    // The in-process view agrees.
    let local = m.stats();
    check(
        local.queues == s.queues && local.connections == 1,
        format!("{local:?}"),
    )?;

    // A second client is counted before its connect returns.
    let b = manager::connect(m.addr(), KEY)?;
    let s = b.stats()?;
    check(s.connections == 2, format!("two connections: {s:?}"))?;

    // Given back and delivered again: a redelivery. Given back once more,
    // at the cap: a dead letter, counted as a put on `q.dead`.
    held.nack()?;
    let again = q.get_timeout(GUARD)?.ok_or("again")?;
    check(again.deliveries == 2, "delivered twice")?;
    again.nack()?;
    b.set_result("r", &1u8)?;
    let s = b.stats()?;
    let qs = s.queue("q").ok_or("q")?;
    check(
        (qs.waiting, qs.leased, qs.dead) == (1, 0, 1),
        format!("after the dead letter: {qs:?}"),
    )?;
    check(
        (qs.delivered_total, qs.redelivered_total, qs.acked_total) == (3, 1, 1),
        format!("after the redelivery: {qs:?}"),
    )?;
    let dead = s.queue("q.dead").ok_or("q.dead")?;
    check(
        (dead.waiting, dead.put_total) == (1, 1),
        format!("{dead:?}"),
    )?;
    check(s.results == 1, "one result")?;
    check(s.uptime <= m.stats().uptime, "the uptime only grows")?;
    // Any client may ask, admin or not; an admin connection counts too.
    const ADMIN: &[u8] = b"another long random key, for admins only";
    let m2 = Manager::builder(KEY)
        .admin_key(ADMIN)
        .start("127.0.0.1:0")?;
    let admin = manager::connect_admin(m2.addr(), ADMIN)?;
    check(admin.stats()?.connections == 1, "admin stats")
}

fn a_manager_of_another_protocol_version_is_refused_at_once() -> Result<(), Failed> {
    // A manager that says hello in version 2 (before statistics), then
    // waits for the client to hang up.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let fake = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        // MessagePack [2, [0; 32], 1 MiB]: a ServerHello.
        let mut hello = vec![0x93, 0x02, 0xdc, 0x00, 0x20];
        hello.extend_from_slice(&[0u8; 32]);
        hello.extend_from_slice(&[0xce, 0x00, 0x10, 0x00, 0x00]);
        let mut frame = (hello.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&hello);
        s.write_all(&frame)?;
        s.set_read_timeout(Some(GUARD))?;
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
        Ok(())
    });
    let t = Instant::now();
    // The default reconnection window is 30 s: a retried mismatch would
    // take that long.
    let got = manager::connect(addr, KEY);
    check(
        matches!(
            got,
            Err(ManagerError::Version {
                manager: 2,
                client: 3,
                ..
            })
        ),
        format!("{got:?}"),
    )?;
    check(
        t.elapsed() < Duration::from_secs(10),
        format!("refused after {:?}", t.elapsed()),
    )?;
    drop(got);
    fake.join().map_err(|_| "the fake manager panicked")??;
    Ok(())
}

fn main() {
    herd::init();
    let args = Arguments::from_args();
    let tests = vec![
        Trial::test("put_get_ack_and_results", put_get_ack_and_results),
        Trial::test("batches_put_get_and_ack_many", batches_put_get_and_ack_many),
        Trial::test("tls_round_trip_and_refusals", tls_round_trip_and_refusals),
        Trial::test(
            "a_persistent_manager_restarts_with_everything_accepted",
            a_persistent_manager_restarts_with_everything_accepted,
        ),
        Trial::test(
            "wrong_key_and_bad_input_are_refused_and_the_manager_stays_up",
            wrong_key_and_bad_input_are_refused_and_the_manager_stays_up,
        ),
        Trial::test(
            "a_killed_worker_s_task_is_delivered_again",
            a_killed_worker_s_task_is_delivered_again,
        ),
        Trial::test(
            "a_lapsed_lease_is_delivered_again_and_heartbeats_keep_it",
            a_lapsed_lease_is_delivered_again_and_heartbeats_keep_it,
        ),
        Trial::test(
            "a_task_that_keeps_failing_goes_to_the_dead_letters",
            a_task_that_keeps_failing_goes_to_the_dead_letters,
        ),
        Trial::test(
            "a_client_reconnects_after_a_manager_restart",
            a_client_reconnects_after_a_manager_restart,
        ),
        Trial::test("shutdown_needs_the_admin_key", shutdown_needs_the_admin_key),
        Trial::test(
            "a_lease_from_before_a_restart_cannot_touch_a_new_one",
            a_lease_from_before_a_restart_cannot_touch_a_new_one,
        ),
        Trial::test(
            "answers_stay_within_the_frame_limit",
            answers_stay_within_the_frame_limit,
        ),
        Trial::test(
            "a_trickling_peer_is_dropped_at_the_handshake_deadline",
            a_trickling_peer_is_dropped_at_the_handshake_deadline,
        ),
        Trial::test(
            "stats_count_items_leases_acks_and_connections",
            stats_count_items_leases_acks_and_connections,
        ),
        Trial::test(
            "a_manager_of_another_protocol_version_is_refused_at_once",
            a_manager_of_another_protocol_version_is_refused_at_once,
        ),
    ];
    libtest_mimic::run(&args, tests).exit();
}
