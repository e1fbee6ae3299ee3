//! The job log, in GNU parallel's format: a header line, then one line per
//! finished job, tab-separated: `Seq Host Starttime JobRuntime Send
//! Receive Exitval Signal Command`. Start time is seconds since the epoch
//! and run time seconds, both with three decimals; the host is `:` for a
//! job run here (GNU's name for the local machine). A newline in a command
//! is written as `\n` so each job stays one line.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::CliError;

const HEADER: &str = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n";

/// One finished job, as the log records it.
#[derive(Debug, Clone)]
pub(crate) struct Entry<'a> {
    pub(crate) seq: u64,
    pub(crate) host: &'a str,
    pub(crate) start: SystemTime,
    pub(crate) runtime: Duration,
    pub(crate) send: u64,
    pub(crate) receive: u64,
    pub(crate) exitval: i32,
    pub(crate) signal: i32,
    pub(crate) command: &'a [u8],
}

/// An open job log.
#[derive(Debug)]
pub(crate) struct JobLog {
    file: File,
}

impl JobLog {
    /// Opens the log: appended to when resuming (the header written only
    /// if the file is new or empty), else started afresh.
    pub(crate) fn open(path: &Path, resume: bool) -> Result<Self, CliError> {
        let ctx = || format!("opening the joblog {}", path.display());
        let mut file = if resume {
            OpenOptions::new().create(true).append(true).open(path)
        } else {
            File::create(path)
        }
        .map_err(|e| CliError::io(ctx(), e))?;
        let empty = file.metadata().map_err(|e| CliError::io(ctx(), e))?.len() == 0;
        if empty {
            file.write_all(HEADER.as_bytes())
                .map_err(|e| CliError::io(ctx(), e))?;
        }
        Ok(Self { file })
    }

    /// Appends one line (one `write`, so a crash leaves whole lines).
    pub(crate) fn record(&mut self, e: &Entry<'_>) -> io::Result<()> {
        let start = e
            .start
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let mut line = format!(
            "{}\t{}\t{:.3}\t{:>10.3}\t{}\t{}\t{}\t{}\t",
            e.seq,
            e.host,
            start,
            e.runtime.as_secs_f64(),
            e.send,
            e.receive,
            e.exitval,
            e.signal
        )
        .into_bytes();
        for &c in e.command {
            match c {
                b'\n' => line.extend_from_slice(b"\\n"),
                c => line.push(c),
            }
        }
        line.push(b'\n');
        self.file.write_all(&line)
    }
}

/// What an earlier log says about each job number: whether it succeeded
/// (exit value 0, no signal). A later line for the same job wins.
pub(crate) fn read(path: &Path) -> Result<HashMap<u64, bool>, CliError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => {
            return Err(CliError::io(
                format!("reading the joblog {}", path.display()),
                e,
            ));
        }
    };
    let mut done = HashMap::new();
    for line in BufReader::new(file).split(b'\n') {
        let line =
            line.map_err(|e| CliError::io(format!("reading the joblog {}", path.display()), e))?;
        let cols: Vec<&[u8]> = line.splitn(9, |&c| c == b'\t').collect();
        if cols.len() < 8 {
            continue;
        }
        let num = |b: &[u8]| std::str::from_utf8(b).ok()?.trim().parse::<i64>().ok();
        let (Some(seq), Some(exit), Some(sig)) = (num(cols[0]), num(cols[6]), num(cols[7])) else {
            continue; // the header, or a torn line
        };
        if seq > 0 {
            done.insert(seq as u64, exit == 0 && sig == 0);
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_resume_reading() {
        let dir = std::env::temp_dir().join(format!("herd-joblog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let mut log = JobLog::open(&path, false).unwrap();
        let entry = |seq, exitval, signal| Entry {
            seq,
            host: ":",
            start: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            runtime: Duration::from_millis(4),
            send: 0,
            receive: 0,
            exitval,
            signal,
            command: b"echo 'a\nb'",
        };
        log.record(&entry(1, 0, 0)).unwrap();
        log.record(&entry(2, 1, 0)).unwrap();
        log.record(&entry(3, -1, 15)).unwrap();
        drop(log);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], HEADER.trim_end());
        assert_eq!(
            lines[1],
            "1\t:\t1700000000.123\t     0.004\t0\t0\t0\t0\techo 'a\\nb'"
        );
        let done = read(&path).unwrap();
        assert_eq!(done.get(&1), Some(&true));
        assert_eq!(done.get(&2), Some(&false));
        assert_eq!(done.get(&3), Some(&false));
        // Resuming appends, without a second header.
        let mut log = JobLog::open(&path, true).unwrap();
        log.record(&entry(2, 0, 0)).unwrap();
        drop(log);
        assert_eq!(read(&path).unwrap().get(&2), Some(&true));
        assert_eq!(
            std::fs::read_to_string(&path)
                .unwrap()
                .matches("Seq")
                .count(),
            1
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
