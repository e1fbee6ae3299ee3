//! `herd ps`: the herd processes of this user that are running (the ones
//! the [registry](crate::registry) names), and every descendant of each —
//! the jobs and whatever they started — as a tree, read from `/proc`.
//!
//! ```text
//!     PID    PPID STATE      CPU(s)  %CPU RSS(MiB) TASK
//!    4100    3900 sleeping      0.1   0.4      4.2 herd run: gzip -k {}
//!    4107    4100 running       2.3  98.0      1.9  \_ job 1: gzip -k a.log
//!    4108    4100 running       2.2  97.5      1.9  \_ job 2: gzip -k b.log
//! ```
//!
//! A job's number comes from the `HERD_SEQ` variable the run engine puts
//! in its environment. Every piece of `/proc` parsing herd's command line
//! needs lives here.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;

use crate::CliError;
use crate::registry::{self, Entry};

/// The widest a TASK is printed when stdout is not a terminal.
const TASK_WIDTH: usize = 120;

/// The fields of `/proc/<pid>/stat` herd uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stat {
    /// Field 1.
    pub(crate) pid: u32,
    /// Field 2, without its parentheses (it may contain any byte but NUL).
    pub(crate) comm: String,
    /// Field 3: `R`, `S`, `D`, `T`, `t`, `Z`, `X`, `I`, ...
    pub(crate) state: char,
    /// Field 4.
    pub(crate) ppid: u32,
    /// Field 14: user CPU time, in clock ticks.
    pub(crate) utime: u64,
    /// Field 15: system CPU time, in clock ticks.
    pub(crate) stime: u64,
    /// Field 22: start time, in clock ticks after boot.
    pub(crate) start: u64,
    /// Field 24: resident set size, in pages.
    pub(crate) rss_pages: u64,
}

/// Parses one `/proc/<pid>/stat` line. The command name is between the
/// first `(` and the *last* `)`: it may itself contain spaces and
/// parentheses.
pub(crate) fn parse_stat(line: &str) -> Option<Stat> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    if close < open {
        return None;
    }
    let pid = line[..open].trim().parse().ok()?;
    let comm = line[open + 1..close].to_owned();
    // Field 3 is index 0 from here on: field n is index n - 3.
    let rest: Vec<&str> = line[close + 1..].split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { rest.get(n - 3)?.parse().ok() };
    let mut state = rest.first()?.chars();
    let (Some(state_char), None) = (state.next(), state.next()) else {
        return None;
    };
    Some(Stat {
        pid,
        comm,
        state: state_char,
        ppid: u32::try_from(field(4)?).ok()?,
        utime: field(14)?,
        stime: field(15)?,
        start: field(22)?,
        rss_pages: field(24)?,
    })
}

/// Reads and parses `/proc/<pid>/stat`; `NotFound` when the process does
/// not exist.
pub(crate) fn read_stat(pid: u32) -> io::Result<Stat> {
    // The command name may be any bytes, not only UTF-8.
    let bytes = fs::read(format!("/proc/{pid}/stat")).map_err(vanished)?;
    parse_stat(&String::from_utf8_lossy(&bytes))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc stat"))
}

/// The start time of `pid` (field 22 of `/proc/<pid>/stat`, clock ticks
/// after boot); `NotFound` when there is no such process.
pub(crate) fn start_time(pid: u32) -> io::Result<u64> {
    read_stat(pid).map(|s| s.start)
}

/// A read of a process that has just exited can fail with `ESRCH` as well
/// as `ENOENT`: both mean the process is gone.
fn vanished(e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::ESRCH) {
        io::Error::new(io::ErrorKind::NotFound, e)
    } else {
        e
    }
}

/// The seed's name for a `/proc` state letter.
pub(crate) fn state_name(letter: char) -> &'static str {
    match letter {
        'R' => "running",
        'S' => "sleeping",
        'D' => "disk-sleep",
        'T' | 't' => "stopped",
        'Z' => "zombie",
        'X' | 'x' => "dead",
        'I' => "idle",
        'P' => "parked",
        'W' => "waking",
        'K' => "wakekill",
        _ => "unknown",
    }
}

/// `ppid → children` (each list in pid order) from `(pid, ppid)` pairs.
pub(crate) fn children_map(pairs: impl IntoIterator<Item = (u32, u32)>) -> HashMap<u32, Vec<u32>> {
    let mut map: HashMap<u32, Vec<u32>> = HashMap::new();
    for (pid, ppid) in pairs {
        if pid != ppid {
            map.entry(ppid).or_default().push(pid);
        }
    }
    for kids in map.values_mut() {
        kids.sort_unstable();
    }
    map
}

/// One line of the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Node {
    /// The process.
    pub(crate) pid: u32,
    /// 0 for a herd process at the top, 1 for its children, ...
    pub(crate) depth: usize,
    /// The herd process at the top of this tree.
    pub(crate) root: u32,
}

/// The trees under `roots`, depth first, children in pid order, in the
/// order `ps f` prints them. A root that is a descendant of another root
/// (a herd started by a herd job) is shown once, inside that tree; every
/// pid appears at most once, whatever `children` holds.
pub(crate) fn tree(roots: &[u32], children: &HashMap<u32, Vec<u32>>) -> Vec<Node> {
    let root_set: HashSet<u32> = roots.iter().copied().collect();
    // Roots found below another root are not tops of their own.
    let mut nested = HashSet::new();
    for &root in roots {
        let mut seen = HashSet::from([root]);
        let mut stack = vec![root];
        while let Some(pid) = stack.pop() {
            for &kid in children.get(&pid).into_iter().flatten() {
                if seen.insert(kid) {
                    if root_set.contains(&kid) && kid != root {
                        nested.insert(kid);
                    }
                    stack.push(kid);
                }
            }
        }
    }
    let mut tops: Vec<u32> = root_set.difference(&nested).copied().collect();
    if tops.is_empty() && !roots.is_empty() {
        // Roots that are each other's descendants: only a corrupt map
        // does that; show the lowest pid's tree.
        tops.extend(roots.iter().min().copied());
    }
    tops.sort_unstable();

    let mut out = Vec::new();
    let mut shown = HashSet::new();
    for top in tops {
        let mut stack = vec![(top, 0)];
        while let Some((pid, depth)) = stack.pop() {
            if !shown.insert(pid) {
                continue;
            }
            out.push(Node {
                pid,
                depth,
                root: top,
            });
            for &kid in children.get(&pid).into_iter().flatten().rev() {
                if !shown.contains(&kid) {
                    stack.push((kid, depth + 1));
                }
            }
        }
    }
    out
}

/// One process as `herd ps` reports it (one JSON line with `--json`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    /// The process.
    pub(crate) pid: u32,
    /// Its parent.
    pub(crate) ppid: u32,
    /// How deep in the tree: 0 for a registered herd process at the top.
    pub(crate) depth: usize,
    /// The pid of the herd process whose tree this is.
    pub(crate) root: u32,
    /// The start time (clock ticks after boot): with the pid, it names
    /// the process even after the pid is reused.
    pub(crate) start: u64,
    /// The state's name: running, sleeping, disk-sleep, stopped, zombie, ...
    pub(crate) state: &'static str,
    /// User plus system CPU time, in seconds.
    pub(crate) cpu_s: f64,
    /// CPU time over the process's lifetime, in percent of one CPU.
    pub(crate) cpu_pct: f64,
    /// Resident memory, in bytes.
    pub(crate) rss_bytes: u64,
    /// For a registered herd process: its role (`run`, `worker`, ...).
    pub(crate) role: Option<String>,
    /// For a registered herd process: what it is doing.
    pub(crate) detail: Option<String>,
    /// The job number (`HERD_SEQ` in the environment), if any.
    pub(crate) seq: Option<u64>,
    /// The pid of the herd that started the job (`HERD_RUN`), if any.
    pub(crate) run: Option<u32>,
    /// The command line, arguments separated by spaces (`[comm]` when
    /// there is none: a zombie).
    pub(crate) cmdline: String,
    /// The kernel's short name for the process.
    pub(crate) comm: String,
    /// What the table's TASK column shows, untruncated.
    pub(crate) task: String,
}

/// `herd ps`: prints the tree of herd processes and their descendants
/// (a table, or JSON lines with `json`). Exit status 0, even when there
/// are none (the table is then its header alone).
pub(crate) fn run(json: bool) -> Result<ExitCode, CliError> {
    let rows = snapshot(&registry::dirs_to_read());
    let stdout = io::stdout();
    let width = if stdout.is_terminal() {
        terminal_width()
    } else {
        None
    };
    let mut out = BufWriter::new(stdout.lock());
    let written = if json {
        write_json(&mut out, &rows)
    } else {
        write_table(&mut out, &rows, width)
    }
    .and_then(|()| out.flush());
    match written {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // `herd ps | head`: the reader has what it wanted.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(CliError::io("writing to stdout", e)),
    }
}

/// The registrations in `dirs` whose process is alive (its pid exists and
/// started when the registration says). Files of processes that are gone,
/// or whose pid now names another process, are removed.
pub(crate) fn live_entries(dirs: &[PathBuf]) -> Vec<Entry> {
    let mut live: Vec<Entry> = Vec::new();
    for dir in dirs {
        for found in registry::read_dir(dir) {
            match start_time(found.entry.pid) {
                Ok(start) if start == found.entry.start => {
                    if !live.contains(&found.entry) {
                        live.push(found.entry);
                    }
                }
                Ok(_) => remove_stale(&found.path),
                Err(e) if e.kind() == io::ErrorKind::NotFound => remove_stale(&found.path),
                // Unreadable for another reason: neither shown nor removed.
                Err(_) => {}
            }
        }
    }
    live
}

fn remove_stale(path: &Path) {
    let _ = fs::remove_file(path);
}

/// Every process in `/proc` whose stat could be read (processes that exit
/// during the scan are skipped).
fn scan_proc() -> HashMap<u32, Stat> {
    let mut stats = HashMap::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return stats;
    };
    for dirent in dir.flatten() {
        let Some(pid) = dirent
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(stat) = read_stat(pid) {
            stats.insert(pid, stat);
        }
    }
    stats
}

/// The rows `herd ps` prints for the registries in `dirs`, in tree order.
pub(crate) fn snapshot(dirs: &[PathBuf]) -> Vec<Row> {
    let entries = live_entries(dirs);
    if entries.is_empty() {
        return Vec::new();
    }
    let stats = scan_proc();
    let mut roles: HashMap<u32, Vec<&Entry>> = HashMap::new();
    for e in &entries {
        // Still alive, and still the same process, at the scan.
        if stats.get(&e.pid).is_some_and(|s| s.start == e.start) {
            roles.entry(e.pid).or_default().push(e);
        }
    }
    let mut roots: Vec<u32> = roles.keys().copied().collect();
    roots.sort_unstable();
    let children = children_map(stats.values().map(|s| (s.pid, s.ppid)));
    let nodes = tree(&roots, &children);

    let clock = Clock::read();
    let mut rows = Vec::with_capacity(nodes.len());
    // The job number of the row shown at each depth above the current one.
    let mut seq_at_depth: Vec<Option<u64>> = Vec::new();
    // While set, nodes deeper than this are skipped: their ancestor
    // vanished during the scan (they have been reparented away since).
    let mut skip_below: Option<usize> = None;
    for node in nodes {
        if let Some(d) = skip_below {
            if node.depth > d {
                continue;
            }
            skip_below = None;
        }
        let (Some(stat), Some(cmdline)) = (stats.get(&node.pid), read_cmdline(node.pid)) else {
            skip_below = Some(node.depth);
            continue;
        };
        let env = read_herd_env(node.pid);
        seq_at_depth.truncate(node.depth);
        let parent_seq = seq_at_depth.last().copied().flatten();
        seq_at_depth.push(env.seq);

        let cmdline = if cmdline.is_empty() {
            format!("[{}]", stat.comm)
        } else {
            cmdline
        };
        let (role, detail, task) = match roles.get(&node.pid) {
            Some(regs) => {
                let task = regs
                    .iter()
                    .map(|e| {
                        if e.detail.is_empty() {
                            format!("herd {}", e.role)
                        } else {
                            format!("herd {}: {}", e.role, e.detail)
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                let role = regs.iter().map(|e| e.role.as_str()).collect::<Vec<_>>();
                let detail = regs.iter().map(|e| e.detail.as_str()).collect::<Vec<_>>();
                (Some(role.join("; ")), Some(detail.join("; ")), task)
            }
            None => {
                // A job's number labels the job's top process, not every
                // process the job started (they inherit HERD_SEQ).
                let task = match env.seq {
                    Some(seq) if node.depth <= 1 || parent_seq != Some(seq) => {
                        format!("job {seq}: {cmdline}")
                    }
                    _ => cmdline.clone(),
                };
                (None, None, task)
            }
        };
        let cpu_s = clock.seconds(stat.utime + stat.stime);
        let age = clock.uptime - clock.seconds(stat.start);
        let cpu_pct = if age > 0.0 {
            (cpu_s / age * 100.0).max(0.0)
        } else {
            0.0
        };
        rows.push(Row {
            pid: node.pid,
            ppid: stat.ppid,
            depth: node.depth,
            root: node.root,
            start: stat.start,
            state: state_name(stat.state),
            cpu_s,
            cpu_pct,
            rss_bytes: stat.rss_pages.saturating_mul(clock.page_size),
            role,
            detail,
            seq: env.seq,
            run: env.run,
            cmdline,
            comm: stat.comm.clone(),
            task,
        });
    }
    rows
}

/// The process's command line, arguments joined by spaces; `None` if the
/// process is gone (empty for a zombie).
fn read_cmdline(pid: u32) -> Option<String> {
    let bytes = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(cmdline_text(&bytes))
}

/// `/proc/<pid>/cmdline` bytes as text: NULs become spaces, the final
/// NUL goes.
pub(crate) fn cmdline_text(bytes: &[u8]) -> String {
    let bytes = bytes.strip_suffix(b"\0").unwrap_or(bytes);
    let text = String::from_utf8_lossy(bytes);
    text.replace('\0', " ")
}

/// `HERD_SEQ` and `HERD_RUN` from a process's environment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct HerdEnv {
    /// The job number.
    pub(crate) seq: Option<u64>,
    /// The pid of the herd that started the job.
    pub(crate) run: Option<u32>,
}

/// Reads `HERD_SEQ`/`HERD_RUN` from `/proc/<pid>/environ` (the environment
/// the process was started with); nothing when it is unreadable.
fn read_herd_env(pid: u32) -> HerdEnv {
    fs::read(format!("/proc/{pid}/environ"))
        .map(|b| parse_environ(&b))
        .unwrap_or_default()
}

/// `HERD_SEQ` and `HERD_RUN` from NUL-separated `NAME=value` pairs.
pub(crate) fn parse_environ(bytes: &[u8]) -> HerdEnv {
    let mut env = HerdEnv::default();
    for var in bytes.split(|b| *b == 0) {
        let Some(eq) = var.iter().position(|b| *b == b'=') else {
            continue;
        };
        let (name, value) = (&var[..eq], &var[eq + 1..]);
        let value = std::str::from_utf8(value).ok();
        if name == registry::SEQ_ENV.as_bytes() {
            env.seq = value.and_then(|v| v.trim().parse().ok());
        } else if name == registry::RUN_ENV.as_bytes() {
            env.run = value.and_then(|v| v.trim().parse().ok());
        }
    }
    env
}

/// The units `/proc` counts in, and the time since boot.
#[derive(Debug, Clone, Copy)]
struct Clock {
    /// Clock ticks per second (`USER_HZ`).
    ticks: u64,
    /// Bytes per page.
    page_size: u64,
    /// Seconds since boot.
    uptime: f64,
}

impl Clock {
    fn read() -> Self {
        let uptime = fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        Self {
            ticks: sysconf(libc::_SC_CLK_TCK, 100),
            page_size: sysconf(libc::_SC_PAGESIZE, 4096),
            uptime,
        }
    }

    fn seconds(&self, ticks: u64) -> f64 {
        ticks as f64 / self.ticks as f64
    }
}

fn sysconf(name: libc::c_int, default: u64) -> u64 {
    // SAFETY: sysconf reads a configuration value; it has no preconditions
    // and touches no memory of ours.
    let v = unsafe { libc::sysconf(name) };
    u64::try_from(v).ok().filter(|v| *v > 0).unwrap_or(default)
}

/// The width of the terminal on stdout, if it reports one.
fn terminal_width() -> Option<usize> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer, which
    // points to a live, writable `winsize` for the duration of the call.
    let r = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    if r == 0 && ws.ws_col > 0 {
        Some(usize::from(ws.ws_col))
    } else {
        std::env::var("COLUMNS").ok()?.trim().parse().ok()
    }
}

fn write_json(out: &mut impl Write, rows: &[Row]) -> io::Result<()> {
    for row in rows {
        serde_json::to_writer(&mut *out, row).map_err(io::Error::other)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// The table's header.
pub(crate) const HEADER: &str = "    PID    PPID STATE      CPU(s)  %CPU RSS(MiB) TASK";

/// Writes the table; with `width` (a terminal's), every line fits in it,
/// else each TASK is cut at [`TASK_WIDTH`] characters.
fn write_table(out: &mut impl Write, rows: &[Row], width: Option<usize>) -> io::Result<()> {
    writeln!(out, "{HEADER}")?;
    for row in rows {
        let prefix = format!(
            "{:>7} {:>7} {:<10} {:>6.1} {:>5.1} {:>8.1} ",
            row.pid,
            row.ppid,
            row.state,
            row.cpu_s,
            row.cpu_pct,
            row.rss_bytes as f64 / (1024.0 * 1024.0),
        );
        let indent = if row.depth == 0 {
            String::new()
        } else {
            format!("{} \\_ ", "    ".repeat(row.depth - 1))
        };
        let room = match width {
            Some(w) => w.saturating_sub(prefix.chars().count()).max(10),
            None => TASK_WIDTH,
        };
        let task = format!("{indent}{}", printable(&row.task));
        writeln!(out, "{prefix}{}", truncate(&task, room))?;
    }
    Ok(())
}

/// `s` with control characters (a newline in an argument) shown as `?`.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// The first `max` characters of `s`.
fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::tests::TestDir;
    use std::process::{Command, Stdio};

    /// A stat line as the kernel writes it, with `comm` and some numbers.
    fn stat_line(pid: u32, comm: &str) -> String {
        // Fields 3.. : state ppid pgrp session tty tpgid flags minflt
        // cminflt majflt cmajflt utime stime cutime cstime priority nice
        // threads itrealvalue starttime vsize rss ...
        format!(
            "{pid} ({comm}) S 77 {pid} {pid} 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 \
             987654 12345678 321 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 3 0 0 0 0 0\n"
        )
    }

    #[test]
    fn stat_parser_handles_awkward_names() {
        for comm in [
            "sleep",
            "my prog",
            "a) S 1 2 3 (b",
            ")",
            "(",
            "((()))",
            "",
            ") R 5 ",
            "tab\tname",
        ] {
            let s = parse_stat(&stat_line(4242, comm)).unwrap_or_else(|| panic!("{comm:?}"));
            assert_eq!(
                s,
                Stat {
                    pid: 4242,
                    comm: comm.to_owned(),
                    state: 'S',
                    ppid: 77,
                    utime: 250,
                    stime: 50,
                    start: 987654,
                    rss_pages: 321,
                },
                "{comm:?}"
            );
        }
    }

    #[test]
    fn stat_parser_rejects_garbage() {
        for line in [
            "",
            "1234",
            "1234 (x",
            "1234 x) S 1",
            ") 1234 (",
            "1234 (x) S",
            "1234 (x) SS 1 2 3",
            "abc (x) S 1 1 1 0 -1 0 0 0 0 0 1 1 0 0 20 0 1 0 5 1 1",
        ] {
            assert_eq!(parse_stat(line), None, "{line:?}");
        }
    }

    #[test]
    fn stat_of_this_process() {
        let me = std::process::id();
        let s = read_stat(me).unwrap();
        assert_eq!(s.pid, me);
        assert_eq!(s.ppid, std::os::unix::process::parent_id());
        assert!(s.start > 0);
        assert!(s.rss_pages > 0);
        // The main thread's state: the harness's main thread may wait.
        assert!(matches!(s.state, 'R' | 'S'), "{s:?}");
        assert!(s.comm.len() <= 15);
    }

    #[test]
    fn state_names() {
        let names: Vec<_> = "RSDTtZXI?".chars().map(state_name).collect();
        assert_eq!(
            names,
            [
                "running",
                "sleeping",
                "disk-sleep",
                "stopped",
                "stopped",
                "zombie",
                "dead",
                "idle",
                "unknown"
            ]
        );
    }

    #[test]
    fn tree_from_synthetic_map() {
        // 1 ─ 10 (herd) ─┬─ 11 ─ 13
        //                └─ 12 (herd, nested) ─ 14
        // 1 ─ 20 (herd)
        // 1 ─ 30 (not herd) ─ 31
        let children = children_map([
            (10, 1),
            (12, 10),
            (11, 10),
            (13, 11),
            (14, 12),
            (20, 1),
            (30, 1),
            (31, 30),
            (1, 0),
        ]);
        assert_eq!(children[&10], [11, 12]);
        let nodes = tree(&[20, 12, 10], &children);
        let got: Vec<(u32, usize, u32)> = nodes.iter().map(|n| (n.pid, n.depth, n.root)).collect();
        assert_eq!(
            got,
            [
                (10, 0, 10),
                (11, 1, 10),
                (13, 2, 10),
                (12, 1, 10),
                (14, 2, 10),
                (20, 0, 20),
            ]
        );
        assert!(tree(&[], &children).is_empty());
        // A root without children (or unknown to the map) is a tree of one.
        assert_eq!(
            tree(&[99], &children),
            [Node {
                pid: 99,
                depth: 0,
                root: 99
            }]
        );
    }

    #[test]
    fn tree_survives_a_cycle() {
        // Not possible in one consistent snapshot, but a racy scan must
        // not loop forever.
        let children = children_map([(5, 6), (6, 5), (7, 7)]);
        let nodes = tree(&[5], &children);
        let pids: Vec<u32> = nodes.iter().map(|n| n.pid).collect();
        assert_eq!(pids, [5, 6]);
        let nodes = tree(&[5, 6], &children);
        assert_eq!(nodes.len(), 2);
        assert_eq!(tree(&[7], &children).len(), 1);
    }

    #[test]
    fn cmdline_and_environ() {
        assert_eq!(cmdline_text(b"sleep\x0030\x00"), "sleep 30");
        assert_eq!(cmdline_text(b"sh\x00-c\x00echo a b\x00"), "sh -c echo a b");
        assert_eq!(cmdline_text(b""), "");
        assert_eq!(
            parse_environ(b"PATH=/bin\0HERD_SEQ=17\0HERD_RUN=4100\0X=HERD_SEQ=3\0"),
            HerdEnv {
                seq: Some(17),
                run: Some(4100)
            }
        );
        assert_eq!(parse_environ(b"HERD_SEQ=abc\0NOEQ\0"), HerdEnv::default());
    }

    #[test]
    fn truncation_and_control_characters() {
        assert_eq!(truncate("héllo", 2), "hé");
        assert_eq!(truncate("hi", 5), "hi");
        assert_eq!(printable("a\nb\tc"), "a?b?c");
        let row = |depth, task: &str| Row {
            pid: 2,
            ppid: 1,
            depth,
            root: 2,
            start: 1,
            state: "sleeping",
            cpu_s: 1.25,
            cpu_pct: 3.0,
            rss_bytes: 3 * 1024 * 1024,
            role: None,
            detail: None,
            seq: None,
            run: None,
            cmdline: String::new(),
            comm: String::new(),
            task: task.to_owned(),
        };
        let mut out = Vec::new();
        let long = "x".repeat(300);
        write_table(
            &mut out,
            &[row(0, "herd run: a"), row(1, "job 1: b"), row(2, &long)],
            None,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], HEADER);
        assert!(lines[1].ends_with(" herd run: a"), "{:?}", lines[1]);
        assert!(lines[2].ends_with("  \\_ job 1: b"), "{:?}", lines[2]);
        assert!(lines[2].contains(" sleeping "));
        assert!(lines[2].contains(" 1.2 ") || lines[2].contains(" 1.3 "));
        assert!(lines[2].contains(" 3.0 "));
        let task_start = HEADER.find("TASK").unwrap();
        assert_eq!(lines[3].chars().count(), task_start + TASK_WIDTH);
        assert!(lines[3][task_start..].starts_with("     \\_ xxx"));
        // On a terminal, lines fit its width.
        let mut out = Vec::new();
        write_table(&mut out, &[row(0, &long)], Some(80)).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.lines().skip(1).all(|l| l.chars().count() == 80));
    }

    #[test]
    fn stale_entries_are_removed() {
        let dir = TestDir::new("stale");
        let mut dead = Command::new("true").spawn().unwrap();
        let dead_pid = dead.id();
        dead.wait().unwrap();
        let me = std::process::id();
        let my_start = start_time(me).unwrap();
        let entry = |pid, start, detail: &str| Entry {
            role: "run".into(),
            pid,
            start,
            detail: detail.into(),
        };
        let gone = registry::write_entry(&dir.0, &entry(dead_pid, 1, "gone")).unwrap();
        // This pid, but an earlier start time: a reused pid.
        let reused = registry::write_entry(&dir.0, &entry(me, my_start - 1, "reused")).unwrap();
        let live = registry::write_entry(&dir.0, &entry(me, my_start, "live")).unwrap();
        let entries = live_entries(std::slice::from_ref(&dir.0));
        assert_eq!(entries, [entry(me, my_start, "live")]);
        assert!(!gone.exists());
        assert!(!reused.exists());
        assert!(live.exists());
    }

    #[test]
    fn snapshot_shows_a_registered_process_and_its_job() {
        let dir = TestDir::new("snapshot");
        let reg = registry::register_in(&dir.0, "run", "sleep {}");
        assert!(reg.path().is_some());
        let me = std::process::id();
        let mut job = Command::new("sleep")
            .arg("30")
            .env(registry::SEQ_ENV, "7")
            .env(registry::RUN_ENV, me.to_string())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let rows = snapshot(std::slice::from_ref(&dir.0));
        let _ = job.kill();
        let _ = job.wait();

        let top = &rows[0];
        assert_eq!((top.pid, top.depth, top.root), (me, 0, me));
        assert_eq!(top.role.as_deref(), Some("run"));
        assert_eq!(top.detail.as_deref(), Some("sleep {}"));
        assert_eq!(top.task, "herd run: sleep {}");
        let child = rows
            .iter()
            .find(|r| r.pid == job.id())
            .unwrap_or_else(|| panic!("job {} not in {rows:#?}", job.id()));
        assert_eq!((child.ppid, child.depth, child.root), (me, 1, me));
        assert_eq!(child.seq, Some(7));
        assert_eq!(child.run, Some(me));
        assert_eq!(child.cmdline, "sleep 30");
        assert_eq!(child.task, "job 7: sleep 30");
        assert_eq!(child.comm, "sleep");
        assert!(child.role.is_none());
        // Every row is in this tree, and parents come before children.
        for (i, r) in rows.iter().enumerate().skip(1) {
            assert_eq!(r.root, me);
            assert!(rows[..i].iter().any(|p| p.pid == r.ppid));
        }
        let json = serde_json::to_string(child).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["seq"], 7);
        assert_eq!(v["cmdline"], "sleep 30");
        // Just after its exec the job may still be reading its program in
        // (disk-sleep) on a loaded machine.
        assert!(
            ["sleeping", "running", "disk-sleep"].contains(&v["state"].as_str().unwrap_or("")),
            "{v}"
        );
        drop(reg);
        assert!(snapshot(std::slice::from_ref(&dir.0)).is_empty());
    }
}
