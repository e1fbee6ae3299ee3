//! `herd status ADDR`: a manager's queues, leases, connections and
//! throughput, from two samples of its statistics (`Client::stats`) taken
//! `--interval` milliseconds apart.
//!
//! ```text
//! manager 10.0.0.5:7878  up 2h03m04s  connections 5  results 1200
//! QUEUE      WAITING LEASED DEAD PUT/S ACKED/S  PUT ACKED DELIVERED REDELIVERED
//! jobs            40      8    1  12.0    11.5 1250  1201      1215          14
//! jobs.dead        1      0    0   0.0     0.0    1     0         0           0
//! ```
//!
//! The rates are the counters' growth between the two samples over the
//! time between them (the manager's own clock when it reports an uptime).
//! A rate is `-` (`null` in JSON) when it cannot be known: one sample
//! (`--interval 0`), or a manager that restarted in between. On a NATS
//! address the uptime and connections are not known (`-`, `null`).

use std::io::{self, BufWriter, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use herd::manager::{Client, ManagerStats, QueueStats};
use serde::Serialize;

use crate::{CliError, KeyArgs};

/// How long to keep trying to reach the manager: a status that waits the
/// default half minute for a manager that is down would look hung.
const RECONNECT_FOR: Duration = Duration::from_secs(5);

/// `herd status`: samples the manager at `addr` twice, `interval_ms`
/// apart, and prints a table (or one JSON object with `json`) to stdout.
pub(crate) fn run(
    addr: &str,
    key: &KeyArgs,
    interval_ms: u64,
    json: bool,
) -> Result<ExitCode, CliError> {
    let key = key.resolve()?;
    let client = Client::builder(addr, &key)
        .reconnect_for(RECONNECT_FOR)
        .connect()?;
    let first = client.stats()?;
    let taken = Instant::now();
    let (second, elapsed) = if interval_ms == 0 {
        (None, Duration::ZERO)
    } else {
        std::thread::sleep(Duration::from_millis(interval_ms));
        let second = client.stats()?;
        (Some(second), taken.elapsed())
    };
    let nats = addr.starts_with("nats://");
    let report = Report::new(addr, &first, second.as_ref(), elapsed, nats);

    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let written = if json {
        serde_json::to_writer(&mut out, &report)
            .map_err(io::Error::other)
            .and_then(|()| writeln!(out))
    } else {
        out.write_all(report.table().as_bytes())
    }
    .and_then(|()| out.flush());
    match written {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // `herd status | head -1`: the reader has what it wanted.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(CliError::io("writing to stdout", e)),
    }
}

/// What `herd status` prints: the latest sample, and rates from two.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct Report {
    addr: String,
    /// Seconds; `None` where the backend does not know it (NATS).
    uptime_secs: Option<f64>,
    /// `None` where the backend does not know it (NATS).
    connections: Option<u64>,
    results: u64,
    /// Seconds between the two samples the rates come from; `None` with
    /// one sample.
    interval_secs: Option<f64>,
    queues: Vec<QueueReport>,
}

/// One queue's line.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct QueueReport {
    name: String,
    waiting: u64,
    leased: u64,
    dead: u64,
    put_per_sec: Option<f64>,
    acked_per_sec: Option<f64>,
    delivered_per_sec: Option<f64>,
    put_total: u64,
    acked_total: u64,
    delivered_total: u64,
    redelivered_total: u64,
}

impl Report {
    /// The report of `second` (or `first` alone), with rates over the time
    /// between the samples: the manager's uptimes' difference when it
    /// reports one, else `elapsed` as measured here.
    fn new(
        addr: &str,
        first: &ManagerStats,
        second: Option<&ManagerStats>,
        elapsed: Duration,
        nats: bool,
    ) -> Self {
        let last = second.unwrap_or(first);
        // A smaller uptime the second time: the manager restarted, and its
        // counters with it.
        let restarted = !nats && last.uptime < first.uptime;
        let interval = match second {
            None => None,
            Some(_) if restarted => None,
            Some(s) if !nats && s.uptime > first.uptime => Some(s.uptime - first.uptime),
            Some(_) => Some(elapsed),
        }
        .map(|d| d.as_secs_f64())
        .filter(|secs| *secs > 0.0);
        let queues = last
            .queues
            .iter()
            .map(|q| {
                // A queue that first appeared between the samples started
                // from zero.
                let before = first.queue(&q.name);
                let rate = |total: fn(&QueueStats) -> u64| -> Option<f64> {
                    let secs = interval?;
                    let from = before.map_or(0, total);
                    let grew = total(q).checked_sub(from)?;
                    Some(grew as f64 / secs)
                };
                QueueReport {
                    name: q.name.clone(),
                    waiting: q.waiting,
                    leased: q.leased,
                    dead: q.dead,
                    put_per_sec: rate(|q| q.put_total),
                    acked_per_sec: rate(|q| q.acked_total),
                    delivered_per_sec: rate(|q| q.delivered_total),
                    put_total: q.put_total,
                    acked_total: q.acked_total,
                    delivered_total: q.delivered_total,
                    redelivered_total: q.redelivered_total,
                }
            })
            .collect();
        Self {
            addr: addr.to_owned(),
            uptime_secs: (!nats).then_some(last.uptime.as_secs_f64()),
            connections: (!nats).then_some(last.connections),
            results: last.results,
            interval_secs: interval,
            queues,
        }
    }

    /// The table: a line for the manager, then a header and a line per
    /// queue, columns aligned (names left, numbers right).
    fn table(&self) -> String {
        let dash = || "-".to_owned();
        let mut out = format!(
            "manager {}  up {}  connections {}  results {}\n",
            printable(&self.addr),
            self.uptime_secs
                .map_or_else(dash, |s| human_duration(Duration::from_secs_f64(s))),
            self.connections.map_or_else(dash, |c| c.to_string()),
            self.results,
        );
        let header = [
            "QUEUE",
            "WAITING",
            "LEASED",
            "DEAD",
            "PUT/S",
            "ACKED/S",
            "PUT",
            "ACKED",
            "DELIVERED",
            "REDELIVERED",
        ];
        let rate = |r: Option<f64>| r.map_or_else(dash, |r| format!("{r:.1}"));
        let rows: Vec<[String; 10]> = self
            .queues
            .iter()
            .map(|q| {
                [
                    printable(&q.name),
                    q.waiting.to_string(),
                    q.leased.to_string(),
                    q.dead.to_string(),
                    rate(q.put_per_sec),
                    rate(q.acked_per_sec),
                    q.put_total.to_string(),
                    q.acked_total.to_string(),
                    q.delivered_total.to_string(),
                    q.redelivered_total.to_string(),
                ]
            })
            .collect();
        let mut widths = header.map(|h| h.chars().count());
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut line = |cells: &[&str]| {
            let mut l = String::new();
            for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
                if i == 0 {
                    l.push_str(&format!("{cell:<w$}"));
                } else {
                    l.push_str(&format!(" {cell:>w$}"));
                }
            }
            out.push_str(l.trim_end());
            out.push('\n');
        };
        line(&header);
        for row in &rows {
            line(&row.each_ref().map(String::as_str));
        }
        out
    }
}

/// `1d02h03m`, `2h03m04s`, `3m04s`, `5.2s`.
fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins, secs) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}d{hours:02}h{mins:02}m")
    } else if hours > 0 {
        format!("{hours}h{mins:02}m{secs:02}s")
    } else if mins > 0 {
        format!("{mins}m{secs:02}s")
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// `s` with control characters escaped (a queue name is any string: it
/// must not move the terminal's cursor).
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `ManagerStats` (its fields are not constructible outside herd:
    /// it is `#[non_exhaustive]`), from JSON.
    fn stats(uptime_ms: u64, connections: u64, queues: &[(&str, [u64; 7])]) -> ManagerStats {
        let queues: Vec<serde_json::Value> = queues
            .iter()
            .map(|(name, [w, l, d, p, a, dl, r])| {
                serde_json::json!({
                    "name": name, "waiting": w, "leased": l, "dead": d,
                    "put_total": p, "acked_total": a,
                    "delivered_total": dl, "redelivered_total": r,
                })
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "uptime": { "secs": uptime_ms / 1000, "nanos": (uptime_ms % 1000) * 1_000_000 },
            "connections": connections,
            "queues": queues,
            "results": 7,
        }))
        .expect("a ManagerStats")
    }

    #[test]
    fn rates_use_the_manager_s_clock() {
        let a = stats(10_000, 2, &[("jobs", [5, 1, 0, 100, 90, 95, 2])]);
        let b = stats(12_000, 3, &[("jobs", [3, 2, 1, 130, 110, 120, 4])]);
        // Measured here: 5 s (a slow network); the manager says 2 s.
        let r = Report::new("h:1", &a, Some(&b), Duration::from_secs(5), false);
        assert_eq!(r.interval_secs, Some(2.0));
        assert_eq!(r.connections, Some(3));
        assert_eq!(r.uptime_secs, Some(12.0));
        let q = &r.queues[0];
        assert_eq!(q.put_per_sec, Some(15.0));
        assert_eq!(q.acked_per_sec, Some(10.0));
        assert_eq!(q.delivered_per_sec, Some(12.5));
        assert_eq!((q.waiting, q.leased, q.dead, q.put_total), (3, 2, 1, 130));
    }

    #[test]
    fn a_new_queue_counts_from_zero_and_a_restart_has_no_rates() {
        let a = stats(10_000, 1, &[]);
        let b = stats(11_000, 1, &[("new", [0, 0, 0, 4, 2, 2, 0])]);
        let r = Report::new("h:1", &a, Some(&b), Duration::from_secs(1), false);
        assert_eq!(r.queues[0].put_per_sec, Some(4.0));
        // The manager restarted between the samples: its counters too.
        let c = stats(500, 1, &[("new", [0, 0, 0, 1, 0, 0, 0])]);
        let r = Report::new("h:1", &b, Some(&c), Duration::from_secs(1), false);
        assert_eq!(r.interval_secs, None);
        assert_eq!(r.queues[0].put_per_sec, None);
        // One sample: no rates either.
        let r = Report::new("h:1", &b, None, Duration::ZERO, false);
        assert_eq!((r.interval_secs, r.queues[0].acked_per_sec), (None, None));
    }

    #[test]
    fn on_nats_the_local_clock_times_the_rates() {
        let a = stats(0, 0, &[("q", [1, 0, 0, 10, 9, 9, 0])]);
        let b = stats(0, 0, &[("q", [1, 0, 0, 20, 19, 19, 0])]);
        let r = Report::new("nats://h:4222", &a, Some(&b), Duration::from_secs(2), true);
        assert_eq!(r.interval_secs, Some(2.0));
        assert_eq!(r.queues[0].put_per_sec, Some(5.0));
        assert_eq!((r.uptime_secs, r.connections), (None, None));
        assert!(
            r.table()
                .starts_with("manager nats://h:4222  up -  connections -  results 7\n")
        );
    }

    #[test]
    fn the_table_aligns_its_columns() {
        let a = stats(3_723_000, 2, &[("jobs", [5, 1, 0, 100, 90, 95, 2])]);
        let b = stats(
            3_724_000,
            2,
            &[
                ("jobs", [12, 4, 1, 135, 123, 130, 3]),
                ("jobs.dead", [1, 0, 0, 1, 0, 0, 0]),
            ],
        );
        let r = Report::new("10.0.0.5:7878", &a, Some(&b), Duration::from_secs(1), false);
        let table = r.table();
        let expected = "\
manager 10.0.0.5:7878  up 1h02m04s  connections 2  results 7
QUEUE     WAITING LEASED DEAD PUT/S ACKED/S PUT ACKED DELIVERED REDELIVERED
jobs           12      4    1  35.0    33.0 135   123       130           3
jobs.dead       1      0    0   1.0     0.0   1     0         0           0
";
        assert_eq!(table, expected, "\n{table}");
    }

    #[test]
    fn json_is_one_object_with_nulls_for_the_unknown() {
        let a = stats(1_000, 1, &[("q", [0, 0, 0, 0, 0, 0, 0])]);
        let r = Report::new("h:1", &a, None, Duration::ZERO, false);
        let v = serde_json::to_value(&r).expect("json");
        assert_eq!(v["connections"], 1);
        assert_eq!(v["results"], 7);
        assert!(v["interval_secs"].is_null());
        assert!(v["queues"][0]["put_per_sec"].is_null());
        assert_eq!(v["queues"][0]["name"], "q");
    }

    #[test]
    fn durations_and_names_print_plainly() {
        assert_eq!(human_duration(Duration::from_millis(5_240)), "5.2s");
        assert_eq!(human_duration(Duration::from_secs(184)), "3m04s");
        assert_eq!(human_duration(Duration::from_secs(7_384)), "2h03m04s");
        assert_eq!(human_duration(Duration::from_secs(93_780)), "1d02h03m");
        assert_eq!(printable("a\x1b[2Jb\n"), "a\\u{1b}[2Jb\\n");
    }
}
