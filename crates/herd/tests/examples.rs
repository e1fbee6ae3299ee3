//! Runs the seed examples (built by `cargo test` into `target/*/examples/`)
//! with shortened sleeps and checks what INVENTORY.md says they show: the
//! order of lines, pid/ppid relations, counts.

use std::path::PathBuf;
use std::process::Command;

fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test`, which builds the examples",
        path.display()
    );
    path
}

fn run(name: &str, args: &[&str]) -> Vec<String> {
    let mut cmd = Command::new(example(name));
    cmd.args(args)
        .env("HERD_EXAMPLE_SLEEP_MS", "40")
        .env("HERD_EXAMPLE_ROUNDS", "3");
    let (status, out) = herd_testkit::run_guarded(cmd).expect("run example");
    assert!(status.success(), "{name} {args:?} failed: {status:?}");
    out.lines().map(str::to_owned).collect()
}

fn pos(lines: &[String], needle: &str) -> usize {
    lines
        .iter()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line {needle:?} in {lines:#?}"))
}

fn last_pos(lines: &[String], needle: &str) -> usize {
    lines
        .iter()
        .rposition(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line {needle:?} in {lines:#?}"))
}

fn field(line: &str, key: &str) -> u32 {
    let start = line.find(key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len();
    line[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .expect("number")
}

#[test]
fn s2_child_and_parent_both_run() {
    let lines = run("s2_child_loop", &[]);
    let main_pid = field(&lines[0], "pid=");
    let child_lines: Vec<_> = lines
        .iter()
        .filter(|l| l.starts_with("child process running"))
        .collect();
    assert!(!child_lines.is_empty(), "{lines:#?}");
    for l in &child_lines {
        assert_eq!(
            field(l, "ppid="),
            main_pid,
            "the child's ppid is the parent's pid"
        );
        assert_ne!(field(l, "pid="), main_pid);
    }
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("main process running"))
            .count(),
        3
    );
    assert_eq!(lines.last().map(String::as_str), Some("main process ends."));
}

#[test]
fn s3_no_join_waits_for_children_at_exit() {
    let lines = run("s3_join_order", &["none"]);
    pos(&lines, "main process ends.");
    pos(&lines, "child process 1 ends.");
    pos(&lines, "child process 2 ends.");
    assert_eq!(
        lines.iter().filter(|l| l.contains("running")).count(),
        9,
        "{lines:#?}"
    );
}

#[test]
fn s3_join_first_runs_child_one_alone() {
    let lines = run("s3_join_order", &["first"]);
    let one_ends = pos(&lines, "child process 1 ends.");
    assert!(one_ends < pos(&lines, "child process 2 running"));
    assert!(one_ends < pos(&lines, "main process running"));
}

#[test]
fn s3_join_second_runs_children_then_parent() {
    let lines = run("s3_join_order", &["second"]);
    let two_ends = pos(&lines, "child process 2 ends.");
    assert!(two_ends < pos(&lines, "main process running"));
}

#[test]
fn s3_join_both_runs_one_then_two_then_parent() {
    let lines = run("s3_join_order", &["both"]);
    assert!(last_pos(&lines, "child process 1") < pos(&lines, "child process 2"));
    assert!(last_pos(&lines, "child process 2") < pos(&lines, "main process running"));
}

#[test]
fn s3_join_timeout_returns_while_child_runs() {
    let lines = run("s3_join_order", &["timeout"]);
    let timed_out = pos(&lines, "still running after join_timeout");
    assert!(timed_out < pos(&lines, "child process 1 ends."));
}

#[test]
fn s4_globals_are_not_shared() {
    let lines = run("s4_globals", &[]);
    assert_eq!(
        lines.first().map(String::as_str),
        Some("parent: COUNTER = 100")
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("child A changed its COUNTER by 1: it is now 101")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("child B changed its COUNTER by 10: it is now 110")),
        "{lines:#?}"
    );
    assert_eq!(
        lines.last().map(String::as_str),
        Some("parent: COUNTER = 100 (child A saw 101, child B saw 110)")
    );
}

#[test]
fn s11_ten_processes_each_print_their_number() {
    let lines = run("s11_ten_processes", &[]);
    let mut got: Vec<u32> = lines
        .iter()
        .map(|l| l.trim().parse().expect("a number"))
        .collect();
    got.sort_unstable();
    assert_eq!(got, (0..10).collect::<Vec<_>>());
}

#[test]
fn tour_runs() {
    let lines = run("tour", &[]);
    assert!(
        lines.iter().any(|l| l.contains("fib(30) = 832040")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("after SIGSTOP: stopped")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("not yet joined: zombie")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("killed by SIGKILL")),
        "{lines:#?}"
    );
}

#[test]
fn s9_threads_right_with_the_lock() {
    let lines = run("s9_balance_threads", &["20000"]);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("without a lock: balance = ")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l == "with a lock:    balance = 0"),
        "{lines:#?}"
    );
}

#[test]
fn s9_processes_right_with_the_lock_and_deadlock_reported() {
    let lines = run("s9_balance_processes", &["20000"]);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("without a lock: balance = ")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l == "with a lock:    balance = 0"),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("deadlock: ") && l.ends_with("held by this thread")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l == "the child got both locks"),
        "{lines:#?}"
    );
}

#[test]
fn s7_queue_reader_gets_everything_then_is_terminated() {
    let lines = run("s7_queue", &[]);
    let puts: Vec<_> = lines.iter().filter(|l| l.starts_with("Put ")).collect();
    assert_eq!(puts.len(), 3, "{lines:#?}");
    for v in ["A", "B", "C"] {
        let put = pos(&lines, &format!("Put {v} to queue"));
        let got = pos(&lines, &format!("Get {v} from queue."));
        assert!(put < got, "{lines:#?}");
    }
}

/// Like [`run`], with one seed second lasting `sleep_ms` milliseconds.
fn run_scaled(name: &str, sleep_ms: u32) -> Vec<String> {
    let mut cmd = Command::new(example(name));
    cmd.env("HERD_EXAMPLE_SLEEP_MS", sleep_ms.to_string());
    let (status, out) = herd_testkit::run_guarded(cmd).expect("run example");
    assert!(status.success(), "{name} failed: {status:?}");
    out.lines().map(str::to_owned).collect()
}

#[test]
fn s5_pool_runs_four_at_once_then_the_fifth() {
    // A task sleeps one to three seed seconds: at 100 ms a second, the four
    // first tasks overlap by far more than the workers' start-up skew.
    let lines = run_scaled("s5_pool", 100);
    let parent = field(&lines[0], "Parent process ");
    assert!(lines[0].starts_with("Parent process "), "{lines:#?}");
    let starts: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("Run task "))
        .collect();
    let ends: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("Task ") && lines[i].ends_with(" seconds."))
        .collect();
    assert_eq!(starts.len(), 5, "{lines:#?}");
    assert_eq!(ends.len(), 5, "{lines:#?}");
    // Four start before any ends: they run at once.
    assert!(starts[3] < ends[0], "{lines:#?}");
    // The fifth waits for a free worker.
    let fifth = pos(&lines, "Run task 4 (");
    assert!(fifth > ends[0], "{lines:#?}");
    assert!(
        pos(&lines, "Waiting for all subprocesses done...") < pos(&lines, "All subprocesses done.")
    );
    let done = pos(&lines, "All subprocesses done.");
    assert!(ends.iter().all(|&e| e < done), "{lines:#?}");
    // Results: four distinct workers, none the parent; the fifth task ran
    // on one of them.
    let mut pids = Vec::new();
    for n in 0..5 {
        let at = pos(&lines, &format!("Result of task {n}: "));
        assert!(at > done, "{lines:#?}");
        let line = &lines[at];
        let pid = field(line, "worker ");
        assert_eq!(
            pid,
            field(&lines[pos(&lines, &format!("Run task {n} ("))], "(")
        );
        assert_ne!(pid, parent);
        pids.push(pid);
    }
    let mut first_four = pids[..4].to_vec();
    first_four.sort_unstable();
    first_four.dedup();
    assert_eq!(first_four.len(), 4, "{lines:#?}");
    assert!(first_four.contains(&pids[4]), "{lines:#?}");
}

#[test]
fn s6_copy_files_times_both_ways_and_verifies() {
    let lines = run("s6_copy_files", &[]);
    for n in [4, 400] {
        let head = pos(&lines, &format!("{n} files of "));
        let one = lines[head..]
            .iter()
            .position(|l| l.trim_start().starts_with("1 process:") && l.ends_with(" ms"))
            .unwrap_or_else(|| panic!("no 1-process timing for {n}: {lines:#?}"));
        let pool = lines[head..]
            .iter()
            .position(|l| l.trim_start().starts_with("pool of ") && l.contains(" ms ("))
            .unwrap_or_else(|| panic!("no pool timing for {n}: {lines:#?}"));
        let verified = pos(&lines, &format!("{n} files: copies verified"));
        assert!(
            head + one < verified && head + pool < verified,
            "{lines:#?}"
        );
    }
    // The temporary folders are gone.
    let dirs: Vec<_> = lines
        .iter()
        .filter_map(|l| l.trim_start().strip_prefix("files in "))
        .collect();
    assert_eq!(dirs.len(), 2, "{lines:#?}");
    for d in dirs {
        assert!(!std::path::Path::new(d).exists(), "{d} is left over");
    }
}

#[test]
fn s1_the_second_loop_never_runs() {
    let lines = run("s1_two_loops", &[]);
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert!(lines[..3].iter().all(|l| l.starts_with("first loop")));
    assert!(lines[3].contains("never ends"), "{lines:#?}");
}

#[test]
fn s8_thread_names_and_join() {
    let lines = run("s8_thread_loop", &[]);
    assert_eq!(
        lines.first().map(String::as_str),
        Some("thread MainThread is running...")
    );
    assert_eq!(
        lines.last().map(String::as_str),
        Some("thread MainThread ended.")
    );
    let counts: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("LoopThread >>>"))
        .collect();
    assert_eq!(counts.len(), 5, "{lines:#?}");
    // The main thread waited for LoopThread (join) before its last line.
    assert!(pos(&lines, "LoopThread ended.") < pos(&lines, "MainThread ended."));
}

#[test]
fn s10_non_daemon_threads_are_waited_for_daemons_are_not() {
    let lines = run("s10_daemon_threads", &[]);
    let main_end = pos(&lines, "main ends");
    for i in 0..15 {
        let end = pos(&lines, &format!("end {i}"));
        assert!(
            end > main_end,
            "thread {i} ended after main returned: {lines:#?}"
        );
    }
    let lines = run("s10_daemon_threads", &["daemon"]);
    assert!(lines.iter().any(|l| l.contains("main ends")));
    assert!(
        !lines.iter().any(|l| l.starts_with("end ")),
        "daemon threads outlived the program: {lines:#?}"
    );
}

#[test]
fn io_bound_coroutines_threads_and_offloaded_cpu_work() {
    let mut cmd = Command::new(example("io_bound"));
    cmd.env("HERD_EXAMPLE_SLEEP_MS", "40")
        .env("HERD_EXAMPLE_WAITS", "2000");
    let (status, out) = herd_testkit::run_guarded(cmd).expect("run example");
    assert!(status.success(), "io_bound failed: {status:?}\n{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("2000 coroutines waited"), "{out}");
    assert!(lines[1].starts_with("2000 threads waited"), "{out}");
    // crunch(2_000_000) computed in a worker process, checked here.
    let want: u64 = (1..=2_000_000u64).map(|i| i * i % 1_000_007).sum();
    assert!(lines[2].contains(&format!(": {want} ")), "{out}");
}

#[test]
fn task_master_and_workers_lose_no_task_when_a_worker_dies() {
    use std::process::Stdio;
    // A free port for this run.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut master = Command::new(example("task_master"))
        .env("HERD_MANAGER_ADDR", &addr)
        .env("HERD_MANAGER_KEY", "k3y-for-the-test")
        .stdout(Stdio::piped())
        .spawn()
        .expect("master");
    let worker = |args: &[&str]| {
        let mut cmd = Command::new(example("task_worker"));
        cmd.args(args)
            .env("HERD_MANAGER_ADDR", &addr)
            .env("HERD_MANAGER_KEY", "k3y-for-the-test");
        herd_testkit::run_guarded(cmd).expect("worker")
    };
    // The first worker takes a task and dies without finishing it.
    let (status, out) = worker(&["--die-after-get"]);
    assert_eq!(status.code(), Some(3), "{out}");
    let (status, out) = worker(&[]);
    assert!(status.success(), "{out}");
    let mut text = String::new();
    std::io::Read::read_to_string(master.stdout.as_mut().expect("stdout"), &mut text)
        .expect("read");
    assert!(master.wait().expect("wait").success(), "{text}");
    let results: Vec<&str> = text.lines().filter(|l| l.starts_with("Result: ")).collect();
    assert_eq!(results.len(), 10, "{text}");
    for r in results {
        let (lhs, rhs) = r["Result: ".len()..].split_once(" = ").expect("n * n = r");
        let n: u64 = lhs
            .split(" * ")
            .next()
            .and_then(|x| x.parse().ok())
            .expect("n");
        assert_eq!(rhs.parse::<u64>().ok(), Some(n * n), "{r}");
    }
}
