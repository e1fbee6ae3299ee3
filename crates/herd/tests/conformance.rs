//! One conformance suite for both backends of `herd::manager`: the embedded
//! manager and NATS JetStream (a real `nats-server`, started per test with
//! JetStream on, 127.0.0.1 only, a token, and its own store directory).
//! Where `nats-server` is not installed the NATS half is skipped with a
//! note (`.ci/run` installs it). `harness = false`: `main` calls
//! `herd::init()` first.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use herd::manager::{Client, Manager};
use herd::sync::Event;
use herd_testkit::{GUARD, check, eventually};
use libtest_mimic::{Arguments, Failed, Trial};

const KEY: &str = "conformance-key-5d1c9a";
const LEASE: Duration = Duration::from_secs(1);

/// A backend under test: a way to connect, and to restart the server.
trait Server {
    fn addr(&self) -> String;
    fn restart(&mut self) -> Result<(), Failed>;
}

struct Embedded {
    manager: Option<Manager>,
    addr: std::net::SocketAddr,
    store: PathBuf,
}

impl Embedded {
    fn start(tag: &str) -> Result<Self, Failed> {
        let store =
            std::env::temp_dir().join(format!("herd-conf-{}-{tag}.redb", std::process::id()));
        let _ = std::fs::remove_file(&store);
        let m = Manager::builder(KEY.as_bytes())
            .max_deliveries(2)
            .persist(&store)
            .start("127.0.0.1:0")?;
        Ok(Self {
            addr: m.addr(),
            manager: Some(m),
            store,
        })
    }
}

impl Server for Embedded {
    fn addr(&self) -> String {
        self.addr.to_string()
    }
    fn restart(&mut self) -> Result<(), Failed> {
        if let Some(m) = self.manager.take() {
            m.shutdown();
        }
        self.manager = Some(
            Manager::builder(KEY.as_bytes())
                .max_deliveries(2)
                .persist(&self.store)
                .start(self.addr)?,
        );
        Ok(())
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        self.manager.take();
        let _ = std::fs::remove_file(&self.store);
    }
}

struct Nats {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

fn nats_available() -> bool {
    Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Nats {
    fn start(tag: &str) -> Result<Self, Failed> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = std::env::temp_dir().join(format!("herd-conf-nats-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut n = Self {
            child: None,
            port,
            dir,
        };
        n.spawn()?;
        Ok(n)
    }

    fn spawn(&mut self) -> Result<(), Failed> {
        let child = Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "--auth",
                KEY,
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let port = self.port;
        check(
            eventually(|| TcpStream::connect(("127.0.0.1", port)).is_ok()),
            "nats-server listening",
        )
    }
}

impl Server for Nats {
    fn addr(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
    fn restart(&mut self) -> Result<(), Failed> {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.spawn()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn client(addr: &str) -> Result<Client, Failed> {
    Ok(Client::builder(addr, KEY.as_bytes())
        .lease(LEASE)
        .max_deliveries(2)
        .connect()?)
}

/// A worker process: takes one task and holds it until killed.
#[herd::task]
fn take_and_hang(addr: String, got: Event) {
    let c = Client::builder(addr.as_str(), KEY.as_bytes())
        .lease(LEASE)
        .max_deliveries(2)
        .connect()
        .expect("connect");
    let task = c
        .queue::<u32>("conf-tasks")
        .get_timeout(GUARD)
        .expect("get")
        .expect("a task");
    got.set();
    // The behaviour under test: a worker that hangs holding its task until
    // it is killed (the parent waits on `got`, not on this sleep).
    std::thread::sleep(GUARD);
    drop(task);
}

fn put_get_ack_results(s: &mut dyn Server) -> Result<(), Failed> {
    let c = client(&s.addr())?;
    let q = c.queue::<u64>("conf-q");
    q.put_many(&(0..20).collect::<Vec<_>>())?;
    q.put(&20)?;
    let mut got = Vec::new();
    while got.len() < 21 {
        let batch = q.get_many(8, GUARD, LEASE)?;
        check(!batch.is_empty(), "a batch")?;
        got.extend(batch.iter().map(|d| d.value));
        c.ack_many(batch)?;
    }
    got.sort_unstable();
    check(got == (0..=20).collect::<Vec<_>>(), format!("{got:?}"))?;
    c.set_result("answer", &42u32)?;
    check(c.wait_result::<u32>("answer", GUARD)? == Some(42), "result")?;
    check(
        q.get_timeout(Duration::from_millis(100))?.is_none(),
        "nothing left",
    )
}

fn killed_worker_task_is_delivered_again(s: &mut dyn Server) -> Result<(), Failed> {
    let c = client(&s.addr())?;
    c.queue::<u32>("conf-tasks").put(&7)?;
    let got = Event::new()?;
    let mut worker = herd::spawn(take_and_hang, (s.addr(), got.clone()))?;
    check(got.wait_timeout(GUARD), "the worker took the task")?;
    worker.kill()?;
    let again = c
        .queue::<u32>("conf-tasks")
        .get_timeout(GUARD)?
        .ok_or("redelivered")?;
    check(
        again.value == 7 && again.deliveries == 2,
        format!("{again:?}"),
    )?;
    again.ack()?;
    Ok(())
}

fn failing_task_goes_to_dead_letters(s: &mut dyn Server) -> Result<(), Failed> {
    let c = client(&s.addr())?;
    let q = c.queue::<String>("conf-poison");
    q.put(&"poison".to_owned())?;
    for _ in 0..2 {
        q.get_timeout(GUARD)?.ok_or("delivered")?.nack()?;
    }
    check(
        q.get_timeout(Duration::from_millis(300))?.is_none(),
        "not delivered a third time",
    )?;
    let dead = c
        .queue::<String>("conf-poison.dead")
        .get_timeout(GUARD)?
        .ok_or("dead letter")?;
    check(dead.value == "poison", "the dead letter")?;
    dead.ack()?;
    Ok(())
}

fn a_server_restart_loses_nothing_accepted(s: &mut dyn Server) -> Result<(), Failed> {
    let c = client(&s.addr())?;
    let q = c.queue::<u32>("conf-durable");
    q.put_many(&[1, 2, 3])?;
    s.restart()?;
    let mut got = Vec::new();
    while got.len() < 3 {
        let d = q.get_timeout(GUARD)?.ok_or("an item after the restart")?;
        got.push(d.value);
        d.ack()?;
    }
    got.sort_unstable();
    check(got == vec![1, 2, 3], format!("{got:?}"))
}

type Scenario = fn(&mut dyn Server) -> Result<(), Failed>;

fn main() {
    herd::init();
    let args = Arguments::from_args();
    let scenarios: [(&str, Scenario); 4] = [
        ("put_get_ack_results", put_get_ack_results),
        (
            "killed_worker_task_is_delivered_again",
            killed_worker_task_is_delivered_again,
        ),
        (
            "failing_task_goes_to_dead_letters",
            failing_task_goes_to_dead_letters,
        ),
        (
            "a_server_restart_loses_nothing_accepted",
            a_server_restart_loses_nothing_accepted,
        ),
    ];
    let nats = nats_available();
    if !nats {
        eprintln!(
            "conformance: nats-server is not installed; the NATS backend's tests are ignored"
        );
    }
    let mut tests = Vec::new();
    for (name, f) in scenarios {
        tests.push(Trial::test(format!("embedded::{name}"), move || {
            f(&mut Embedded::start(name)?)
        }));
        tests.push(
            Trial::test(format!("nats::{name}"), move || f(&mut Nats::start(name)?))
                .with_ignored_flag(!nats),
        );
    }
    libtest_mimic::run(&args, tests).exit();
}
