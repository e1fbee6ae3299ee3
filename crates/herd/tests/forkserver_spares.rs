//! The forkserver's two spares: replaced when killed while idle, gone with
//! a SIGKILLed parent, and no busy loop when a spare cannot be forked.
//!
//! `harness = false`, like `process.rs`: `main` calls `herd::init()` first
//! and the binary also plays helper programs when `HERD_TEST_ROLE` is set
//! (anything that starves or kills forkserver processes runs in a helper,
//! with a forkserver of its own, so that no other test's child is killed).
//!
//! `forkserver_one_spare_fork_failure_does_not_spin` failed at 1938c30 (found
//! in review): with no children and a second spare that could not be
//! forked, the server retried the fork in a busy loop (0.5 s of CPU in
//! 0.5 s).

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use herd::{Process, StartMethod};
use herd_testkit::{
    GUARD, ROLE_ENV, check, end_role, eventually, eventually_within, helper, helper_says, pidfd_of,
    wait_fd,
};
use libtest_mimic::{Arguments, Failed, Trial};

#[herd::task]
fn quick() -> u8 {
    7
}

/// The children of `parent` and their states (from /proc/*/stat).
fn children_of(parent: u32) -> Vec<(u32, char)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let mut rest = stat.rsplit_once(')')?.1.split_whitespace();
        let state = rest.next()?.chars().next()?;
        let ppid: u32 = rest.next()?.parse().ok()?;
        (ppid == parent).then_some((pid, state))
    })
    .collect()
}

fn live_children(parent: u32) -> Vec<u32> {
    children_of(parent)
        .into_iter()
        .filter(|&(_, st)| st != 'Z')
        .map(|(pid, _)| pid)
        .collect()
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

fn open_fds(pid: u32) -> Vec<u32> {
    let mut v: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// Lowers process `pid`'s soft limit on open descriptors to `limit`.
fn limit_fds(pid: u32, limit: u64) -> Result<(), Failed> {
    let target = rustix::process::Pid::from_raw(pid as i32).ok_or("pid")?;
    rustix::process::prlimit(
        Some(target),
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(limit),
            maximum: rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum,
        },
    )?;
    Ok(())
}

/// Starts one child through the forkserver and waits until the server
/// holds two live spares; returns the server's pid.
fn server_with_two_spares() -> Result<u32, Failed> {
    let mut p = Process::builder(quick, ())
        .start_method(StartMethod::ForkServer)
        .start()?;
    check(p.join()? == 7, "first child")?;
    let server = herd::forkserver_pid().ok_or("no forkserver")?;
    check(
        eventually(|| live_children(server).len() == 2),
        format!("two spares: {:?}", children_of(server)),
    )?;
    Ok(server)
}

/// The server can fork one spare but not a second one (its fd limit lets
/// `pipe` + `socketpair` succeed once), and it has no children: it must
/// back off between attempts, not retry in a busy loop.
fn one_spare_spin() -> Result<(), Failed> {
    let server = server_with_two_spares()?;
    let fds = open_fds(server);
    // Two spares hold 8 fds in the server (pidfd, status_w, ctl, status_r
    // each); with them gone `fds.len() - 8` remain. Allow 5 free slots:
    // one spare (4 at once) fits, a second does not.
    let limit = (fds.len() - 8 + 5) as u64;
    limit_fds(server, limit)?;
    let before = cpu_ticks(server);
    kill_spares_then_await(server, 1).map_err(|e| format!("{e:?} (fds {fds:?}, limit {limit})"))?;
    // An idle server takes no CPU; a spinning one takes a whole CPU.
    // Spinning, 50 ticks (at 100 Hz) take half a second.
    let spun = eventually_within(Duration::from_secs(2), || cpu_ticks(server) >= before + 50);
    let after = cpu_ticks(server);
    println!(
        "server cpu ticks {before} -> {after}, spares now {:?}, fds {fds:?}, limit {limit}",
        children_of(server)
    );
    check(
        !spun,
        "the server with one spare and no children spins at 100% CPU",
    )
}

/// Runs in a helper process (killing spares under the other tests could
/// kill one just handed their task): the forkserver keeps two spares, reaps
/// those killed while idle and forks new ones, and starts work after.
fn forkserver_spares_killed_are_replaced() -> Result<(), Failed> {
    helper_says("forkserver-spares", "spares replaced")
}

/// SIGKILLs the server's children (its idle spares), then waits until the
/// dead are reaped and `expect` new live ones stand in their place.
fn kill_spares_then_await(server: u32, expect: usize) -> Result<(), Failed> {
    let killed: Vec<u32> = children_of(server).iter().map(|&(pid, _)| pid).collect();
    for &pid in &killed {
        let fd = pidfd_of(pid).ok_or("spare pidfd")?;
        rustix::process::pidfd_send_signal(&fd, rustix::process::Signal::KILL)?;
        check(wait_fd(fd.as_fd(), GUARD), "spare died")?;
    }
    check(
        eventually(|| {
            let kids = children_of(server);
            kids.len() == expect
                && kids
                    .iter()
                    .all(|&(pid, st)| st != 'Z' && !killed.contains(&pid))
        }),
        format!(
            "dead spares reaped, {expect} new: {:?}",
            children_of(server)
        ),
    )
}

fn forkserver_spares() -> Result<(), Failed> {
    let server = server_with_two_spares()?;
    check(
        children_of(server).len() == 2,
        format!("no zombie among the spares: {:?}", children_of(server)),
    )?;
    kill_spares_then_await(server, 2)?;
    let mut q = Process::builder(quick, ())
        .start_method(StartMethod::ForkServer)
        .start()?;
    check(q.join()? == 7, "a child after the spares died")?;
    check(
        herd::forkserver_pid() == Some(server),
        "the same forkserver",
    )
}

fn marker() -> u32 {
    std::thread::spawn(|| rustix::thread::gettid().as_raw_nonzero().get() as u32)
        .join()
        .expect("marker thread")
}

fn start_join() -> Result<Process<u8>, Failed> {
    let mut p = Process::builder(quick, ())
        .start_method(StartMethod::ForkServer)
        .start()?;
    check(p.join()? == 7, "result")?;
    Ok(p)
}

/// In a helper (its own forkserver: other tests' starts would take
/// spares too): back-to-back starts, each well under the 2 ms settle
/// window, still find a spare forked ahead. A thread's tid comes from the
/// same counter as a process's pid, so a marker tid taken just before each
/// start is below the child's pid iff the child was forked after it, on
/// demand. (From a review: with the window restarted by every start, from
/// the third start on every child was forked on demand.)
fn back_to_back() -> Result<(), Failed> {
    drop(start_join()?);
    let server = herd::forkserver_pid().ok_or("no forkserver")?;
    check(
        eventually(|| live_children(server).len() == 2),
        "two spares before the loop",
    )?;
    let rounds = 30;
    let mut on_demand = Vec::new();
    let t0 = Instant::now();
    for k in 0..rounds {
        let m = marker();
        let p = start_join()?;
        // Pid wrap-around aside, a pid above the marker was allocated after it.
        if p.pid() > m && p.pid() - m < 1 << 20 {
            on_demand.push(k);
        }
    }
    let per_round = t0.elapsed().as_micros() / rounds as u128;
    // Second, separate: how long exitcode() takes right after join.
    let mut exitcode_us = Vec::new();
    for _ in 0..10 {
        let p = start_join()?;
        let t = Instant::now();
        let code = p.exitcode();
        exitcode_us.push(t.elapsed().as_micros());
        check(code == Some(0), format!("exitcode {code:?}"))?;
    }
    exitcode_us.sort_unstable();
    eprintln!(
        "rounds {rounds}, {per_round} us each; children forked on demand in rounds \
         {on_demand:?}; exitcode() right after join: median {} us, max {} us",
        exitcode_us[exitcode_us.len() / 2],
        exitcode_us[exitcode_us.len() - 1]
    );
    // A spare the server forked late (descheduled right after a hand-off)
    // also counts: a few are normal on a busy machine; the defect forked
    // nearly every child on demand (28 of 30).
    check(
        on_demand.len() <= rounds / 2,
        format!(
            "{} of {rounds} back-to-back starts forked their child on demand \
             (rounds {on_demand:?}): the spares are never replaced while starts \
             come faster than the 2 ms window",
            on_demand.len()
        ),
    )
}

fn back_to_back_starts_use_spares() -> Result<(), Failed> {
    helper_says("back-to-back", "spares used")
}

#[herd::task]
fn forever() -> u8 {
    loop {
        std::thread::park();
    }
}

/// In a helper: a healthy forkserver that cannot take a start's fds (its
/// descriptor table full) refuses that start and is not taken for dead —
/// killing it would kill every child it serves. (From a review: the
/// answerless close was read as the server's death.)
fn full_server() -> Result<(), Failed> {
    let mut first = Process::builder(quick, ())
        .start_method(StartMethod::ForkServer)
        .start()?;
    check(first.join()? == 7, "first child")?;
    let bystander = Process::builder(forever, ())
        .start_method(StartMethod::ForkServer)
        .daemon(true)
        .start()?;
    let server = herd::forkserver_pid().ok_or("no forkserver")?;
    // The bystander and two spares.
    check(
        eventually(|| live_children(server).len() == 3),
        format!("bystander + two spares: {:?}", children_of(server)),
    )?;
    // Fill the server's descriptor table: the lowest free fd becomes the limit.
    let fds = open_fds(server);
    let limit = (0..).find(|n| !fds.contains(n)).unwrap_or(0) as u64;
    limit_fds(server, limit)?;
    let second = Process::builder(quick, ())
        .start_method(StartMethod::ForkServer)
        .start();
    let after = herd::forkserver_pid();
    eprintln!(
        "server {server} fds {fds:?} limit {limit}: start {:?}, server now {after:?}",
        second.as_ref().map(|p| p.pid()),
    );
    check(second.is_err(), "the start was refused")?;
    check(
        after == Some(server) && bystander.is_alive(),
        format!(
            "a healthy forkserver ({server}) that could not take a start's fds was killed \
             ({after:?}), bystander alive: {}",
            bystander.is_alive()
        ),
    )
}

fn a_full_forkserver_is_not_taken_for_dead() -> Result<(), Failed> {
    helper_says("full-server", "server kept")
}

fn forkserver_one_spare_fork_failure_does_not_spin() -> Result<(), Failed> {
    helper_says("one-spare-spin", "no spin")
}

/// The helper (the parent) is SIGKILLed with a forkserver holding two idle
/// spares: the server and both spares must die.
fn parent_sigkill_kills_both_spares() -> Result<(), Failed> {
    use std::io::BufRead;
    let mut child = helper("spares-then-block").spawn()?;
    let out = child.stdout.take().ok_or("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(GUARD)?;
    let pids: Vec<u32> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    check(pids.len() == 3, format!("helper said {line:?}"))?;
    let fds: Vec<_> = pids.iter().map(|&p| pidfd_of(p)).collect();
    child.kill()?;
    let _ = child.wait();
    for (pid, fd) in pids.iter().zip(&fds) {
        let fd = fd.as_ref().ok_or("pidfd")?;
        check(
            wait_fd(fd.as_fd(), GUARD),
            format!("{pid} outlived the parent"),
        )?;
    }
    Ok(())
}

fn spares_then_block() -> Result<(), Failed> {
    let server = server_with_two_spares()?;
    let spares = live_children(server);
    println!("{server} {} {}", spares[0], spares[1]);
    loop {
        std::thread::park();
    }
}

fn role(name: &str) -> ! {
    match name {
        "spares-then-block" => {
            let e = spares_then_block();
            println!("{e:?}");
            std::process::exit(1)
        }
        "forkserver-spares" => end_role(forkserver_spares(), "spares replaced"),
        "back-to-back" => end_role(back_to_back(), "spares used"),
        "one-spare-spin" => end_role(one_spare_spin(), "no spin"),
        "full-server" => end_role(full_server(), "server kept"),
        other => {
            eprintln!("unknown role {other}");
            std::process::exit(2)
        }
    }
}

fn main() {
    herd::init();
    if let Ok(r) = std::env::var(ROLE_ENV) {
        role(&r);
    }
    let args = Arguments::from_args();
    let tests = vec![
        Trial::test(
            "forkserver_spares_killed_are_replaced",
            forkserver_spares_killed_are_replaced,
        ),
        Trial::test(
            "back_to_back_starts_use_spares",
            back_to_back_starts_use_spares,
        ),
        Trial::test(
            "a_full_forkserver_is_not_taken_for_dead",
            a_full_forkserver_is_not_taken_for_dead,
        ),
        Trial::test(
            "forkserver_one_spare_fork_failure_does_not_spin",
            forkserver_one_spare_fork_failure_does_not_spin,
        ),
        Trial::test(
            "parent_sigkill_kills_both_spares",
            parent_sigkill_kills_both_spares,
        ),
    ];
    libtest_mimic::run(&args, tests).exit();
}
