//! The jobs' inputs: every combination of the sources (the last varying
//! fastest), linked sources paired. The first group of sources is read as
//! the jobs start (a million lines on stdin need not sit in memory before
//! the first job runs); the others are read up front, since each of their
//! inputs is used once per input of the groups before them.
//!
//! `herd run` reads the first group on a thread of its own
//! ([`Inputs::read_in_background`]) and takes its inputs without blocking
//! ([`Inputs::try_next`]): a slow input (a pipe, a terminal) never holds
//! up the jobs' output, their timeouts, or a signal to herd.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::CliError;
use crate::cmdline::{Source, SourceKind};

/// One job's inputs: the values of `{1}`, `{2}`, ...
pub(crate) type Tuple = Vec<Vec<u8>>;

type TupleIter = Box<dyn Iterator<Item = io::Result<Tuple>> + Send>;

/// Tuples the input thread read ahead, at most [`FEED_AHEAD`].
const FEED_AHEAD: usize = 4096;

/// The queue between the input thread and the run loop. The thread is
/// woken only when the queue has drained to half (not per tuple), and the
/// loop only when it said it waits (a byte on the pipe), so a fast input
/// costs no wake-up per job.
#[derive(Default)]
struct Feed {
    state: std::sync::Mutex<FeedState>,
    room: std::sync::Condvar,
}

#[derive(Default)]
struct FeedState {
    items: std::collections::VecDeque<io::Result<Tuple>>,
    /// The thread read everything (or failed).
    ended: bool,
    /// The loop is gone: the thread stops.
    dropped: bool,
    /// The loop found the queue empty and polls the pipe.
    loop_waiting: bool,
    /// The thread waits for room.
    thread_waiting: bool,
}

impl Feed {
    fn lock(&self) -> std::sync::MutexGuard<'_, FeedState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Where the first group's tuples come from.
enum First {
    /// Read here, when asked (blocking).
    Here(TupleIter),
    /// Read by a thread into `feed`; `wake` (the read end of a pipe)
    /// becomes readable when a tuple arrives for a waiting loop, and at
    /// the end.
    Thread { feed: FeedHandle, wake: OwnedFd },
}

/// The loop's hold on the feed: dropping it stops the thread.
struct FeedHandle(std::sync::Arc<Feed>);

impl Drop for FeedHandle {
    fn drop(&mut self) {
        self.0.lock().dropped = true;
        self.0.room.notify_all();
    }
}

/// One step of the first group.
enum Fetch {
    Tuple(io::Result<Tuple>),
    End,
    /// Nothing there yet (only without blocking).
    NotYet,
}

impl First {
    fn fetch(&mut self, block: bool) -> Fetch {
        match self {
            Self::Here(iter) => iter.next().map_or(Fetch::End, Fetch::Tuple),
            Self::Thread { feed, wake } => loop {
                let feed = &feed.0;
                let mut st = feed.lock();
                if let Some(t) = st.items.pop_front() {
                    if st.thread_waiting && st.items.len() <= FEED_AHEAD / 2 {
                        st.thread_waiting = false;
                        drop(st);
                        feed.room.notify_one();
                    }
                    return Fetch::Tuple(t);
                }
                if st.ended {
                    return Fetch::End;
                }
                // Empty: say so under the lock; the thread's next tuple
                // then writes a byte to the pipe. Empty the pipe of older
                // bytes first, so a poll on it waits for that one.
                st.loop_waiting = true;
                drop(st);
                let mut buf = [0u8; 64];
                while matches!(rustix::io::read(&*wake, &mut buf), Ok(n) if n > 0) {}
                let st = feed.lock();
                if !st.items.is_empty() || st.ended {
                    continue;
                }
                drop(st);
                if !block {
                    return Fetch::NotYet;
                }
                let mut fds = [rustix::event::PollFd::new(
                    &*wake,
                    rustix::event::PollFlags::IN,
                )];
                let _ = rustix::event::poll(&mut fds, None);
            },
        }
    }
}

/// The result of [`Inputs::try_next`].
#[derive(Debug)]
pub(crate) enum Next {
    Tuple(Result<Tuple, CliError>),
    End,
    /// No input yet: poll [`Inputs::wake_fd`], then ask again.
    NotYet,
}

/// The jobs' inputs, in order.
pub(crate) struct Inputs {
    first: First,
    rest: Vec<Vec<Tuple>>,
    current: Option<Tuple>,
    /// The odometer wrapped (or nothing was taken yet): the next tuple
    /// needs the first group's next one.
    need_first: bool,
    odometer: Vec<usize>,
    total: Option<u64>,
    done: bool,
}

impl std::fmt::Debug for Inputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inputs")
            .field("total", &self.total)
            .finish()
    }
}

impl Inputs {
    /// Opens the sources (stdin when there are none). `sep` is `b'\n'` or
    /// `b'\0'`.
    pub(crate) fn open(sources: &[Source], sep: u8) -> Result<Self, CliError> {
        let stdin_only = [Source {
            kind: SourceKind::File("-".into()),
            linked: false,
        }];
        let sources = if sources.is_empty() {
            &stdin_only[..]
        } else {
            sources
        };
        let mut groups: Vec<Vec<&Source>> = Vec::new();
        for s in sources {
            match groups.last_mut() {
                Some(g) if s.linked => g.push(s),
                _ => groups.push(vec![s]),
            }
        }
        let mut rest = Vec::new();
        for g in &groups[1..] {
            rest.push(read_group(g, sep)?);
        }
        let head = &groups[0];
        let (first, first_len): (TupleIter, Option<u64>) =
            if head.len() == 1 && matches!(head[0].kind, SourceKind::File(_)) {
                let lines = open_lines(&head[0].kind, sep)?;
                (Box::new(lines.map(|r| r.map(|v| vec![v]))), None)
            } else {
                let tuples = read_group(head, sep)?;
                let n = tuples.len() as u64;
                (Box::new(tuples.into_iter().map(Ok)), Some(n))
            };
        let rest_len: u64 = rest.iter().map(|g| g.len() as u64).product();
        let odometer = vec![0; rest.len()];
        Ok(Self {
            first: First::Here(first),
            total: first_len.map(|n| n * rest_len),
            done: rest.iter().any(|g| g.is_empty()),
            rest,
            current: None,
            need_first: true,
            odometer,
        })
    }

    /// The number of jobs, when known without reading further.
    pub(crate) fn total(&self) -> Option<u64> {
        self.total
    }

    /// Reads every input now, so the number of jobs is known (for `--bar`
    /// and percentages of all jobs).
    pub(crate) fn materialize(&mut self) -> Result<u64, CliError> {
        if let Some(n) = self.total {
            return Ok(n);
        }
        let mut first = Vec::new();
        while let Fetch::Tuple(t) = self.first.fetch(true) {
            first.push(t.map_err(|e| CliError::io("reading the inputs", e))?);
        }
        let rest_len: u64 = self.rest.iter().map(|g| g.len() as u64).product();
        let n = first.len() as u64 * rest_len;
        self.first = First::Here(Box::new(first.into_iter().map(Ok)));
        self.total = Some(n);
        Ok(n)
    }

    /// Reads the first group on a thread from now on (when it is read
    /// from a file or stdin, which may block), for [`Self::try_next`].
    /// Start no thread before this where a fork must see one thread only.
    pub(crate) fn read_in_background(&mut self) -> Result<(), CliError> {
        if self.total.is_some() || self.done || !matches!(self.first, First::Here(_)) {
            return Ok(()); // in memory already, or nothing to read
        }
        let First::Here(iter) =
            std::mem::replace(&mut self.first, First::Here(Box::new(std::iter::empty())))
        else {
            unreachable!("matched above")
        };
        let (wake, wake_w) = rustix::pipe::pipe_with(
            rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
        )
        .map_err(|e| CliError::io("creating the input pipe", e.into()))?;
        let feed = std::sync::Arc::new(Feed::default());
        let theirs = std::sync::Arc::clone(&feed);
        std::thread::Builder::new()
            .name("herd-input".into())
            .spawn(move || {
                let feed = theirs;
                // Wakes the loop if it waits; the byte is its signal.
                let wake = |st: &mut FeedState| {
                    if std::mem::take(&mut st.loop_waiting) {
                        let _ = rustix::io::write(&wake_w, &[1]);
                    }
                };
                for item in iter {
                    let failed = item.is_err();
                    let mut st = feed.lock();
                    while st.items.len() >= FEED_AHEAD && !st.dropped {
                        st.thread_waiting = true;
                        st = feed
                            .room
                            .wait(st)
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                    }
                    if st.dropped {
                        return; // herd is done with its inputs
                    }
                    st.items.push_back(item);
                    wake(&mut st);
                    if failed {
                        st.ended = true;
                        return;
                    }
                }
                let mut st = feed.lock();
                st.ended = true;
                wake(&mut st);
            })
            .map_err(|e| CliError::io("starting the input thread", e))?;
        self.first = First::Thread {
            feed: FeedHandle(feed),
            wake,
        };
        Ok(())
    }

    /// What to poll (readable) after [`Self::try_next`] said
    /// [`Next::NotYet`].
    pub(crate) fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.first {
            First::Thread { wake, .. } => Some(wake.as_fd()),
            First::Here(_) => None,
        }
    }

    /// The next tuple without blocking (after [`Self::read_in_background`];
    /// before it, this blocks like [`Iterator::next`]).
    pub(crate) fn try_next(&mut self) -> Next {
        self.step(false)
    }

    fn step(&mut self, block: bool) -> Next {
        if self.done {
            return Next::End;
        }
        // Advance the odometer over the later groups; when it wraps (or
        // at the start) take the next tuple of the first group.
        if !self.need_first {
            let mut wrapped = true;
            for i in (0..self.rest.len()).rev() {
                self.odometer[i] += 1;
                if self.odometer[i] < self.rest[i].len() {
                    wrapped = false;
                    break;
                }
                self.odometer[i] = 0;
            }
            self.need_first = wrapped;
        }
        if self.need_first {
            match self.first.fetch(block) {
                Fetch::NotYet => return Next::NotYet,
                Fetch::End => {
                    self.done = true;
                    return Next::End;
                }
                Fetch::Tuple(Err(e)) => {
                    self.done = true;
                    return Next::Tuple(Err(CliError::io("reading the inputs", e)));
                }
                Fetch::Tuple(Ok(t)) => {
                    self.current = Some(t);
                    self.need_first = false;
                }
            }
        }
        let mut tuple = self.current.clone().unwrap_or_default();
        for (g, &i) in self.rest.iter().zip(&self.odometer) {
            tuple.extend(g[i].iter().cloned());
        }
        Next::Tuple(Ok(tuple))
    }
}

impl Iterator for Inputs {
    type Item = Result<Tuple, CliError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.step(true) {
            Next::Tuple(t) => Some(t),
            Next::End | Next::NotYet => None,
        }
    }
}

/// A group's tuples: its sources paired element by element, a shorter
/// source wrapping around (GNU parallel's `--link`).
fn read_group(group: &[&Source], sep: u8) -> Result<Vec<Tuple>, CliError> {
    let mut columns = Vec::new();
    for s in group {
        let values: Vec<Vec<u8>> = match &s.kind {
            SourceKind::Args(a) => a.clone(),
            kind => open_lines(kind, sep)?
                .collect::<io::Result<_>>()
                .map_err(|e| CliError::io("reading the inputs", e))?,
        };
        columns.push(values);
    }
    if columns.iter().any(|c| c.is_empty()) {
        return Ok(Vec::new());
    }
    let len = columns.iter().map(Vec::len).max().unwrap_or(0);
    Ok((0..len)
        .map(|i| columns.iter().map(|c| c[i % c.len()].clone()).collect())
        .collect())
}

fn open_lines(kind: &SourceKind, sep: u8) -> Result<Lines, CliError> {
    let SourceKind::File(path) = kind else {
        unreachable!("only files are read line by line")
    };
    let reader: Box<dyn Read + Send> = if path.as_os_str() == "-" {
        Box::new(io::stdin())
    } else {
        Box::new(
            File::open(path).map_err(|e| CliError::io(format!("opening {}", path.display()), e))?,
        )
    };
    Ok(Lines {
        reader: BufReader::with_capacity(64 * 1024, reader),
        sep,
    })
}

/// One input per line (or per NUL-terminated record).
struct Lines {
    reader: BufReader<Box<dyn Read + Send>>,
    sep: u8,
}

impl Iterator for Lines {
    type Item = io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut line = Vec::new();
        match self.reader.read_until(self.sep, &mut line) {
            Ok(0) => None,
            Ok(_) => {
                if line.last() == Some(&self.sep) {
                    line.pop();
                }
                Some(Ok(line))
            }
            Err(e) => Some(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str], linked: bool) -> Source {
        Source {
            kind: SourceKind::Args(v.iter().map(|s| s.as_bytes().to_vec()).collect()),
            linked,
        }
    }

    fn all(sources: &[Source]) -> Vec<Vec<String>> {
        Inputs::open(sources, b'\n')
            .unwrap()
            .map(|t| {
                t.unwrap()
                    .into_iter()
                    .map(|v| String::from_utf8(v).unwrap())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn combinations_last_fastest() {
        let got = all(&[args(&["a", "b"], false), args(&["1", "2", "3"], false)]);
        let want: Vec<Vec<String>> = [
            ["a", "1"],
            ["a", "2"],
            ["a", "3"],
            ["b", "1"],
            ["b", "2"],
            ["b", "3"],
        ]
        .iter()
        .map(|p| p.iter().map(|s| s.to_string()).collect())
        .collect();
        assert_eq!(got, want);
        let i = Inputs::open(&[args(&["a", "b"], false), args(&["1", "2"], false)], b'\n').unwrap();
        assert_eq!(i.total(), Some(4));
    }

    #[test]
    fn linked_sources_pair_and_wrap() {
        let got = all(&[args(&["a", "b", "c"], false), args(&["1", "2"], true)]);
        assert_eq!(got, vec![vec!["a", "1"], vec!["b", "2"], vec!["c", "1"]]);
    }

    #[test]
    fn an_empty_source_means_no_jobs() {
        assert!(all(&[args(&["a"], false), args(&[], false)]).is_empty());
        assert!(all(&[args(&[], false), args(&["a"], false)]).is_empty());
    }

    #[test]
    fn lines_from_a_file_nul_and_newline() {
        let dir = std::env::temp_dir().join(format!("herd-input-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("in");
        std::fs::write(&p, b"a b\n\nc\n").unwrap();
        let f = Source {
            kind: SourceKind::File(p.clone()),
            linked: false,
        };
        assert_eq!(
            all(std::slice::from_ref(&f)),
            vec![vec!["a b"], vec![""], vec!["c"]]
        );
        std::fs::write(&p, b"x\ny\0z").unwrap();
        let got: Vec<Tuple> = Inputs::open(&[f], b'\0')
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(got, vec![vec![b"x\ny".to_vec()], vec![b"z".to_vec()]]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn background_reading_never_blocks_and_misses_nothing() {
        let dir = std::env::temp_dir().join(format!("herd-input-bg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("in");
        let lines: Vec<String> = (0..2000).map(|i| format!("line {i}")).collect();
        std::fs::write(&p, lines.join("\n")).unwrap();
        let sources = [
            Source {
                kind: SourceKind::File(p.clone()),
                linked: false,
            },
            args(&["a", "b"], false),
        ];
        let mut inputs = Inputs::open(&sources, b'\n').unwrap();
        inputs.read_in_background().unwrap();
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            match inputs.try_next() {
                Next::Tuple(t) => got.push(t.unwrap()),
                Next::End => break,
                Next::NotYet => {
                    assert!(std::time::Instant::now() < deadline, "no end");
                    let fd = inputs.wake_fd().expect("read on a thread");
                    let mut fds = [rustix::event::PollFd::from_borrowed_fd(
                        fd,
                        rustix::event::PollFlags::IN,
                    )];
                    let ts = rustix::event::Timespec {
                        tv_sec: 60,
                        tv_nsec: 0,
                    };
                    rustix::event::poll(&mut fds, Some(&ts)).unwrap();
                }
            }
        }
        let want: Vec<Tuple> = lines
            .iter()
            .flat_map(|l| [b"a", b"b"].map(|x| vec![l.as_bytes().to_vec(), x.to_vec()]))
            .collect();
        assert_eq!(got, want);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
