//! Suite `cli`: the `herd run` command against `xargs -P2`, GNU parallel
//! and rust-parallel, all at two jobs at once, in one invocation.
//!
//! Cases:
//! * `true-N`, `echo-N` (N = 1000, and 5000 outside `--quick`): N jobs of
//!   `true`, or of `echo {}` (herd and GNU parallel substitute `{}`;
//!   `xargs -n1` and rust-parallel append the input, which is the same
//!   command line). Inputs are the lines `1`..`N` of a file given to every
//!   tool as its stdin. Metrics: `wall_per_job_us` (elapsed / N),
//!   `cpu_per_job_us` (user + system CPU of the tool's own process only, not
//!   of its jobs, / N) and `total_cpu_per_job_us` (the tool and everything
//!   it started and reaped, / N). Median of 3 runs (1 with `--quick`), the
//!   tools taking turns.
//! * `startup`: one `true` job from a one-line stdin; `startup_ms`, the
//!   median of 15 runs (5 with `--quick`).
//! * `grouped-2x256MiB` (`grouped-2x32MiB` with `--quick`): two jobs each
//!   writing 256 MiB (32 MiB) to stdout, `head -c BYTES /dev/zero` (the
//!   input is `/dev/zero`, appended by every tool), with each tool's default
//!   output mode, which groups a job's output (herd, GNU parallel,
//!   rust-parallel); `xargs` does not group, so it is reported as
//!   `xargs-ungrouped`, a reference only. Metric `peak_rss_mib`: the tool
//!   process's own peak resident memory.
//!
//! Every run is checked: exit status 0, and the output the bench drains
//! from the tool's stdout through a pipe (no lines for `true`, the lines
//! `1`..`N` for `echo`, 2 x BYTES bytes for `head`); a run that fails the
//! check prints a note and no value. `ratio` records give the issue's
//! targets, each met at a value of at most 1: `herd/xargs-wall` (wall per
//! job against xargs's in the same run), `herd-cpu/0.3ms` (herd's own CPU
//! per job), `herd/10ms-startup`, `herd/32MiB-grouped`; plus herd's wall
//! per job over GNU parallel's and rust-parallel's.
//!
//! How the figures are taken: the bench waits for the tool's exit without
//! reaping it (`waitid(WNOWAIT)`), stops the clock, reads the zombie's
//! `/proc/<pid>/stat` (`utime + stime` is the tool's own CPU, in clock
//! ticks of 10 ms, so the CPU per job of N jobs is good to 20 ms / N), then
//! reaps it with `wait4`, whose rusage covers the tool plus its reaped
//! descendants (the total). `wait4`'s `ru_maxrss` is not used for memory:
//! it is the largest of the tool, its jobs and the memory of the bench
//! itself that the tool was spawned from (Linux carries the pre-`exec`
//! high-water mark over), so `peak_rss_mib` is the tool's `VmHWM` in
//! `/proc/<pid>/status`, read every millisecond until it exits (`VmHWM`
//! only grows; growth in the last millisecond before exit would be missed).
//!
//! The `herd` binary is looked for next to this bench's own executable
//! (`target/release/herd` for `cargo run --release -p herd-bench`). If it
//! is not there, the bench builds it with `$CARGO build [--release] -p
//! herd-cli` (`CARGO` is set by `cargo run`; else `cargo` from `PATH`),
//! with a note. A binary that is there is used as it is: run `cargo build
//! --release -p herd-cli` first after changing herd-cli. GNU parallel
//! (`parallel`, Debian's package) and rust-parallel (`cargo install
//! rust-parallel`; looked for in `PATH`, then `~/.cargo/bin`) are skipped
//! with a note when missing.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::report::{median, note};

const SUITE: &str = "cli";
const JOBS: &str = "2";

/// One tool under test and how to give it a job's command line.
#[derive(Debug)]
struct Tool {
    name: &'static str,
    program: PathBuf,
    /// Arguments before the job's command (`-j2` and the like).
    prefix: &'static [&'static str],
    /// Whether `echo {}` is written with `{}` (else the input is appended).
    braces: bool,
}

impl Tool {
    fn args(&self, job: &[&str]) -> Vec<String> {
        self.prefix
            .iter()
            .chain(job)
            .map(|s| (*s).to_owned())
            .collect()
    }

    fn echo(&self) -> Vec<String> {
        self.args(if self.braces {
            &["echo", "{}"]
        } else {
            &["echo"]
        })
    }
}

/// What the bench read from the tool's stdout.
#[derive(Debug, Default)]
struct Drained {
    bytes: u64,
    lines: u64,
    /// The sum of the lines read as numbers (when parsed).
    sum: u64,
    /// Every byte was a digit or a newline (when parsed).
    digits_only: bool,
}

/// Reads `r` to its end, counting; with `parse`, also sums its lines as
/// numbers.
fn drain(mut r: impl Read, parse: bool) -> Drained {
    let mut buf = vec![0u8; 1 << 16];
    let mut d = Drained {
        digits_only: true,
        ..Drained::default()
    };
    let mut cur: u64 = 0;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        d.bytes += n as u64;
        if !parse {
            continue;
        }
        for &b in &buf[..n] {
            match b {
                b'0'..=b'9' => cur = cur.wrapping_mul(10).wrapping_add(u64::from(b - b'0')),
                b'\n' => {
                    d.lines += 1;
                    d.sum = d.sum.wrapping_add(cur);
                    cur = 0;
                }
                _ => d.digits_only = false,
            }
        }
    }
    d
}

/// The first 2 KiB of `r`, read to its end.
fn stderr_head(mut r: impl Read) -> String {
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let room = 2048usize.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&kept).trim().to_owned()
}

/// `VmHWM` of a live process in KiB; `None` once it has exited.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Waits until `pid` has exited, leaving it unreaped (a zombie).
fn wait_exit_unreaped(pid: u32) -> Result<(), String> {
    loop {
        // SAFETY: an all-zero `siginfo_t` is a valid value for waitid to fill.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid, writable `siginfo_t`; `pid` is our own
        // unreaped child.
        let rc =
            unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if rc == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(format!("waitid: {e}"));
        }
    }
}

/// The tool's own CPU seconds (`utime + stime` of its `/proc/<pid>/stat`).
fn own_cpu_s(pid: u32) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("/proc/<pid>/stat without a command name")?;
    // Field 3 (state) is the first after the name: utime is field 14.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64, String> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("/proc/{pid}/stat: no field {}", i + 3))
    };
    let own = ticks(11)? + ticks(12)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Ok(own as f64 / hz)
}

/// Reaps `pid`: its exit status (`0` is success) and the CPU seconds of it
/// and its reaped descendants.
fn reap(pid: u32) -> Result<(i32, f64), String> {
    let mut status = 0;
    // SAFETY: an all-zero `rusage` is a valid value for wait4 to fill.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `ru` are valid and writable; `pid` is our own
        // child, exited and not yet reaped.
        let rc = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut ru) };
        if rc >= 0 {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(format!("wait4: {e}"));
        }
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        -libc::WTERMSIG(status)
    } else {
        -1
    };
    Ok((code, secs(ru.ru_utime) + secs(ru.ru_stime)))
}

/// One run of a tool.
#[derive(Debug)]
struct Run {
    wall: Duration,
    own_cpu_s: f64,
    total_cpu_s: f64,
    peak_kib: u64,
    out: Drained,
}

/// Runs `program args` with `input` as its stdin, draining its stdout
/// (summing its lines with `parse`; sampling its `VmHWM` with `poll_rss`).
/// A non-zero exit is an error.
fn run_once(
    program: &Path,
    args: &[String],
    input: &Path,
    parse: bool,
    poll_rss: bool,
) -> Result<Run, String> {
    let stdin = File::open(input).map_err(|e| format!("{}: {e}", input.display()))?;
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", program.display()))?;
    let pid = child.id();
    let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
        return Err("no pipes to the tool".to_owned());
    };
    let out = std::thread::spawn(move || drain(out, parse));
    let err = std::thread::spawn(move || stderr_head(err));
    let done = Arc::new(AtomicBool::new(false));
    let poller = poll_rss.then(|| {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                match vm_hwm_kib(pid) {
                    Some(k) => peak = peak.max(k),
                    None => break,
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            peak
        })
    });
    let exited = wait_exit_unreaped(pid);
    let wall = start.elapsed();
    done.store(true, Ordering::Relaxed);
    let peak_kib = poller.map_or(0, |p| p.join().unwrap_or(0));
    let own = own_cpu_s(pid);
    let reaped = reap(pid);
    // Reaped by hand: `child` is dropped without a second wait.
    drop(child);
    let out = out.join().map_err(|_| "the stdout reader panicked")?;
    let err = err.join().unwrap_or_default();
    exited?;
    let (code, total_cpu_s) = reaped?;
    if code != 0 {
        return Err(format!("exit status {code}; stderr: {err:?}"));
    }
    Ok(Run {
        wall,
        own_cpu_s: own?,
        total_cpu_s,
        peak_kib,
        out,
    })
}

fn record(case: &str, implementation: &str, metric: &str, value: f64, unit: &str) {
    crate::report::record(SUITE, case, implementation, metric, value, unit);
}

fn ratio(case: &str, what: &str, value: f64) {
    record(case, what, "ratio", value, "x");
}

/// A scratch directory, removed on drop.
#[derive(Debug)]
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("herd-bench-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Self(dir))
    }

    /// Writes `lines`, one per line, to a file named `name`.
    fn file(&self, name: &str, lines: impl Iterator<Item = String>) -> Result<PathBuf, String> {
        let path = self.0.join(name);
        let mut text = String::new();
        for l in lines {
            text.push_str(&l);
            text.push('\n');
        }
        File::create(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// `program --version` succeeds and says `expect`.
fn probe(program: &Path, expect: &str) -> Result<(), String> {
    let o = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", program.display()))?;
    let text = String::from_utf8_lossy(&o.stdout);
    if o.status.success() && text.contains(expect) {
        Ok(())
    } else {
        Err(format!(
            "`{} --version` failed or is not {expect}: {}",
            program.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

/// The `herd` binary next to this bench's executable, built if missing.
fn herd_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let dir = exe
        .parent()
        .ok_or("the bench executable has no directory")?;
    let herd = dir.join("herd");
    if herd.is_file() {
        return Ok(herd);
    }
    let release = dir.file_name().is_none_or(|n| n != "debug");
    let mut args = vec!["build", "-p", "herd-cli"];
    if release {
        args.insert(1, "--release");
    }
    note(
        SUITE,
        &format!(
            "no herd binary at {}: building it with `cargo {}`",
            herd.display(),
            args.join(" ")
        ),
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let o = Command::new(cargo)
        .args(&args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cargo: {e}"))?;
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        let errors: Vec<&str> = err
            .lines()
            .filter(|l| l.starts_with("error"))
            .take(4)
            .collect();
        return Err(format!(
            "`cargo {}` failed: {}",
            args.join(" "),
            errors.join(" | ")
        ));
    }
    if herd.is_file() {
        Ok(herd)
    } else {
        Err(format!("built, but no herd binary at {}", herd.display()))
    }
}

/// The tools found; a missing one becomes a note.
fn tools() -> Vec<Tool> {
    let mut tools = Vec::new();
    match herd_binary() {
        Ok(program) => tools.push(Tool {
            name: "herd",
            program,
            prefix: &["run", "-j", JOBS],
            braces: true,
        }),
        Err(e) => note(SUITE, &format!("herd skipped: {e}")),
    }
    match in_path("xargs")
        .ok_or_else(|| "xargs not in PATH".to_owned())
        .and_then(|p| probe(&p, "xargs").map(|()| p))
    {
        Ok(program) => tools.push(Tool {
            name: "xargs",
            program,
            prefix: &["-P", JOBS, "-n1"],
            braces: false,
        }),
        Err(e) => note(SUITE, &format!("xargs skipped: {e}")),
    }
    match in_path("parallel")
        .ok_or_else(|| "parallel not in PATH".to_owned())
        .and_then(|p| probe(&p, "GNU parallel").map(|()| p))
    {
        Ok(program) => tools.push(Tool {
            name: "gnu-parallel",
            program,
            prefix: &["-j", JOBS],
            braces: true,
        }),
        Err(e) => note(SUITE, &format!("GNU parallel skipped: {e}")),
    }
    let cargo_bin = std::env::var_os("HOME")
        .map(|h| Path::new(&h).join(".cargo/bin/rust-parallel"))
        .filter(|p| p.is_file());
    match in_path("rust-parallel")
        .or(cargo_bin)
        .ok_or_else(|| "rust-parallel not in PATH nor ~/.cargo/bin".to_owned())
        .and_then(|p| probe(&p, "rust-parallel").map(|()| p))
    {
        Ok(program) => tools.push(Tool {
            name: "rust-parallel",
            program,
            prefix: &["-j", JOBS],
            braces: false,
        }),
        Err(e) => note(SUITE, &format!("rust-parallel skipped: {e}")),
    }
    tools
}

/// Per-tool samples of one case.
#[derive(Debug, Default)]
struct Samples {
    wall: Vec<f64>,
    own: Vec<f64>,
    total: Vec<f64>,
    failed: bool,
}

/// `true-N` or `echo-N`, `reps` runs per tool, the tools taking turns.
fn jobs_case(tools: &[Tool], scratch: &Scratch, echo: bool, n: u64, reps: usize) {
    let case = format!("{}-{n}", if echo { "echo" } else { "true" });
    let input = match scratch.file(&format!("inputs-{n}"), (1..=n).map(|i| i.to_string())) {
        Ok(p) => p,
        Err(e) => return note(SUITE, &format!("{case}: cannot write the inputs: {e}")),
    };
    let mut samples: Vec<Samples> = tools.iter().map(|_| Samples::default()).collect();
    for _ in 0..reps {
        for (tool, s) in tools.iter().zip(&mut samples) {
            if s.failed {
                continue;
            }
            let args = if echo {
                tool.echo()
            } else {
                tool.args(&["true"])
            };
            let checked = run_once(&tool.program, &args, &input, echo, false).and_then(|r| {
                let want_lines = if echo { n } else { 0 };
                let ok = r.out.lines == want_lines
                    && r.out.digits_only
                    && (!echo || r.out.sum == n * (n + 1) / 2)
                    && (echo || r.out.bytes == 0);
                if ok {
                    Ok(r)
                } else {
                    Err(format!(
                        "wrong output: {} lines ({} bytes, sum {}), expected {want_lines}",
                        r.out.lines, r.out.bytes, r.out.sum
                    ))
                }
            });
            match checked {
                Ok(r) => {
                    let per_job_us = |s: f64| s * 1e6 / n as f64;
                    s.wall.push(per_job_us(r.wall.as_secs_f64()));
                    s.own.push(per_job_us(r.own_cpu_s));
                    s.total.push(per_job_us(r.total_cpu_s));
                }
                Err(e) => {
                    s.failed = true;
                    note(SUITE, &format!("{} {case} failed: {e}", tool.name));
                }
            }
        }
    }
    let mut walls = std::collections::HashMap::new();
    for (tool, mut s) in tools.iter().zip(samples) {
        if s.failed || s.wall.is_empty() {
            continue;
        }
        let wall = median(&mut s.wall);
        let own = median(&mut s.own);
        record(&case, tool.name, "wall_per_job_us", wall, "us");
        record(&case, tool.name, "cpu_per_job_us", own, "us");
        let total = median(&mut s.total);
        record(&case, tool.name, "total_cpu_per_job_us", total, "us");
        walls.insert(tool.name, (wall, own));
    }
    if let Some(&(herd_wall, herd_own)) = walls.get("herd") {
        for (peer, what) in [
            ("xargs", "herd/xargs-wall"),
            ("gnu-parallel", "herd/gnu-parallel-wall"),
            ("rust-parallel", "herd/rust-parallel-wall"),
        ] {
            if let Some(&(w, _)) = walls.get(peer) {
                ratio(&case, what, herd_wall / w);
            }
        }
        ratio(&case, "herd-cpu/0.3ms", herd_own / 300.0);
    }
}

/// One `true` job, `reps` times per tool: the median wall time.
fn startup_case(tools: &[Tool], scratch: &Scratch, reps: usize) {
    let input = match scratch.file("inputs-1", std::iter::once("x".to_owned())) {
        Ok(p) => p,
        Err(e) => return note(SUITE, &format!("startup: cannot write the input: {e}")),
    };
    let mut samples: Vec<Option<Vec<f64>>> = tools.iter().map(|_| Some(Vec::new())).collect();
    for _ in 0..reps {
        for (tool, s) in tools.iter().zip(&mut samples) {
            let Some(v) = s else { continue };
            match run_once(&tool.program, &tool.args(&["true"]), &input, true, false) {
                Ok(r) if r.out.bytes == 0 => v.push(r.wall.as_secs_f64() * 1e3),
                Ok(r) => {
                    note(
                        SUITE,
                        &format!(
                            "{} startup failed: {} bytes of output",
                            tool.name, r.out.bytes
                        ),
                    );
                    *s = None;
                }
                Err(e) => {
                    note(SUITE, &format!("{} startup failed: {e}", tool.name));
                    *s = None;
                }
            }
        }
    }
    for (tool, s) in tools.iter().zip(samples) {
        if let Some(mut v) = s.filter(|v| !v.is_empty()) {
            let ms = median(&mut v);
            record("startup", tool.name, "startup_ms", ms, "ms");
            if tool.name == "herd" {
                ratio("startup", "herd/10ms-startup", ms / 10.0);
            }
        }
    }
}

/// Two jobs writing `mib` MiB each, grouped: the tool's peak RSS.
fn grouped_case(tools: &[Tool], scratch: &Scratch, mib: u64, reps: usize) {
    let case = format!("grouped-2x{mib}MiB");
    let input = match scratch.file(
        "inputs-zero",
        ["/dev/zero", "/dev/zero"].map(String::from).into_iter(),
    ) {
        Ok(p) => p,
        Err(e) => return note(SUITE, &format!("{case}: cannot write the inputs: {e}")),
    };
    let bytes = mib << 20;
    let size = bytes.to_string();
    for tool in tools {
        let name = if tool.name == "xargs" {
            note(
                SUITE,
                &format!(
                    "{case}: xargs does not group output; xargs-ungrouped is a reference only"
                ),
            );
            "xargs-ungrouped"
        } else {
            tool.name
        };
        let mut peaks = Vec::new();
        for _ in 0..reps {
            let args = tool.args(&["head", "-c", &size]);
            match run_once(&tool.program, &args, &input, false, true) {
                Ok(r) if r.out.bytes == 2 * bytes => peaks.push(r.peak_kib as f64 / 1024.0),
                Ok(r) => {
                    note(
                        SUITE,
                        &format!(
                            "{name} {case} failed: {} bytes of output, expected {}",
                            r.out.bytes,
                            2 * bytes
                        ),
                    );
                    peaks.clear();
                    break;
                }
                Err(e) => {
                    note(SUITE, &format!("{name} {case} failed: {e}"));
                    peaks.clear();
                    break;
                }
            }
        }
        if peaks.is_empty() {
            continue;
        }
        let peak = median(&mut peaks);
        record(&case, name, "peak_rss_mib", peak, "MiB");
        if name == "herd" {
            ratio(&case, "herd/32MiB-grouped", peak / 32.0);
        }
    }
}

/// Runs the suite.
pub(crate) fn run(quick: bool) {
    let tools = tools();
    if tools.is_empty() {
        return note(SUITE, "no tool to measure");
    }
    let scratch = match Scratch::new() {
        Ok(s) => s,
        Err(e) => return note(SUITE, &format!("cannot make a scratch directory: {e}")),
    };
    let (sizes, reps): (&[u64], usize) = if quick {
        (&[1_000], 1)
    } else {
        (&[1_000, 5_000], 3)
    };
    for &n in sizes {
        for echo in [false, true] {
            jobs_case(&tools, &scratch, echo, n, reps);
        }
    }
    startup_case(&tools, &scratch, if quick { 5 } else { 15 });
    grouped_case(
        &tools,
        &scratch,
        if quick { 32 } else { 256 },
        if quick { 1 } else { 3 },
    );
}
