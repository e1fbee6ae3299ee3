//! Where jobs' output goes.
//!
//! Grouped (the default): each job writes its stdout and stderr straight
//! into two unnamed temporary files (`O_TMPFILE` in `$TMPDIR`), and herd
//! copies them to its own stdout and stderr when the job ends, with
//! `sendfile` — the bytes never pass through herd's memory, so a job's
//! gigabyte of output costs herd no more memory than a byte of it, and
//! nothing of one job lands inside another's group. The files are emptied
//! and used again by the next job.
//!
//! Line-buffered: pipes, read as data comes; each complete line goes out at
//! once (a line longer than [`MAX_LINE`] goes out in pieces).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use rustix::fs::{Mode, OFlags};

/// A line-buffered job's longest line held back before it goes out in
/// pieces.
pub(crate) const MAX_LINE: usize = 1 << 20;

/// Past this size a recycled output file is emptied; below it, the next
/// job's output is appended after the last one's (an `ftruncate` per job
/// costs the file system more than the bytes do).
const RECYCLE_AT: u64 = 16 << 20;

/// A job's stdout and stderr files (opened `O_APPEND`, so a job's writes
/// land at the end whatever it does to its file offset). A recycled pair
/// may hold earlier jobs' output: this job's starts at `*_base`.
#[derive(Debug)]
pub(crate) struct FilePair {
    pub(crate) out: File,
    pub(crate) err: File,
    out_base: u64,
    err_base: u64,
    /// A process outside the finished job (its background child) may
    /// still write to the files: never give them to another job.
    shared: bool,
}

impl FilePair {
    /// The files stay open elsewhere (a job's leftover process): not to be
    /// recycled, or its late output would land in another job's group.
    pub(crate) fn keep_from_reuse(&mut self) {
        self.shared = true;
    }

    /// Copies this job's stdout to `dst`.
    pub(crate) fn copy_out(&self, dst: BorrowedFd<'_>) -> io::Result<()> {
        copy_range(&self.out, self.out_base, dst)
    }

    /// Copies this job's stderr to `dst`.
    pub(crate) fn copy_err(&self, dst: BorrowedFd<'_>) -> io::Result<()> {
        copy_range(&self.err, self.err_base, dst)
    }

    /// This job's stdout, at most `max` bytes, and whether it was cut.
    pub(crate) fn read_out(&self, max: u64) -> (Vec<u8>, bool) {
        read_capped(&self.out, self.out_base, max)
    }

    /// This job's stderr, at most `max` bytes, and whether it was cut.
    pub(crate) fn read_err(&self, max: u64) -> (Vec<u8>, bool) {
        read_capped(&self.err, self.err_base, max)
    }
}

/// Makes and recycles [`FilePair`]s.
#[derive(Debug)]
pub(crate) struct FilePool {
    dir: PathBuf,
    free: Vec<FilePair>,
}

impl FilePool {
    pub(crate) fn new() -> Self {
        Self {
            dir: std::env::temp_dir(),
            free: Vec::new(),
        }
    }

    /// A pair for a new job.
    pub(crate) fn take(&mut self) -> io::Result<FilePair> {
        if let Some(pair) = self.free.pop() {
            return Ok(pair);
        }
        Ok(FilePair {
            out: tmpfile(&self.dir)?,
            err: tmpfile(&self.dir)?,
            out_base: 0,
            err_base: 0,
            shared: false,
        })
    }

    /// Keeps a pair for the next job: its output goes after this job's,
    /// or from the start once the file is large.
    pub(crate) fn give_back(&mut self, mut pair: FilePair) {
        if pair.shared {
            return; // closed: a late writer writes to a file no one reads
        }
        let next_base = |f: &File| -> io::Result<u64> {
            let len = rustix::fs::fstat(f)?.st_size as u64;
            if len < RECYCLE_AT {
                return Ok(len);
            }
            rustix::fs::ftruncate(f, 0)?;
            Ok(0)
        };
        // A pair that cannot be measured or emptied is dropped, not reused.
        if let (Ok(o), Ok(e)) = (next_base(&pair.out), next_base(&pair.err))
            && self.free.len() < 64
        {
            pair.out_base = o;
            pair.err_base = e;
            self.free.push(pair);
        }
    }
}

/// Up to `max` bytes of `file` from `from`, and whether it was cut.
fn read_capped(file: &File, from: u64, max: u64) -> (Vec<u8>, bool) {
    use std::os::unix::fs::FileExt;
    let len = file.metadata().map_or(0, |m| m.len()).saturating_sub(from);
    let take = len.min(max) as usize;
    let mut buf = vec![0u8; take];
    let mut got = 0;
    while got < take {
        match file.read_at(&mut buf[got..], from + got as u64) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    buf.truncate(got);
    (buf, len > max)
}

/// An unnamed file in `dir`: `O_TMPFILE` where the file system has it,
/// else a fresh name unlinked at once.
fn tmpfile(dir: &std::path::Path) -> io::Result<File> {
    let flags = OFlags::RDWR | OFlags::APPEND | OFlags::CLOEXEC;
    match rustix::fs::open(dir, flags | OFlags::TMPFILE, Mode::RUSR | Mode::WUSR) {
        Ok(fd) => return Ok(File::from(fd)),
        Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::ISDIR => {}
        Err(e) => return Err(e.into()),
    }
    for attempt in 0u32..100 {
        let name = dir.join(format!(
            ".herd-{}-{}-{attempt}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        ));
        match rustix::fs::open(
            &name,
            flags | OFlags::CREATE | OFlags::EXCL,
            Mode::RUSR | Mode::WUSR,
        ) {
            Ok(fd) => {
                let _ = std::fs::remove_file(&name);
                return Ok(File::from(fd));
            }
            Err(e) if e == rustix::io::Errno::EXIST => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::other("no free temporary file name"))
}

/// Copies `file` from `from` to its end to `dst`.
fn copy_range(file: &File, from: u64, dst: BorrowedFd<'_>) -> io::Result<()> {
    let len = rustix::fs::fstat(file)?.st_size as u64;
    if len <= from {
        return Ok(());
    }
    let mut offset = from;
    while offset < len {
        let want = (len - offset).min(1 << 30) as usize;
        match rustix::fs::sendfile(dst, file, Some(&mut offset), want) {
            Ok(0) => break,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => {
                wait_writable(dst)?;
            }
            // An O_APPEND destination or one sendfile cannot write to:
            // copy through a buffer.
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
                return copy_buffered(file, offset, len, dst);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn copy_buffered(file: &File, mut offset: u64, len: u64, dst: BorrowedFd<'_>) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 64 * 1024];
    while offset < len {
        let n = file.read_at(&mut buf, offset)?;
        if n == 0 {
            break;
        }
        write_all_fd(dst, &buf[..n])?;
        offset += n as u64;
    }
    Ok(())
}

/// Writes all of `bytes` to `fd` (which may be non-blocking).
pub(crate) fn write_all_fd(fd: BorrowedFd<'_>, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match rustix::io::write(fd, bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => wait_writable(fd)?,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn wait_writable(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut fds = [rustix::event::PollFd::from_borrowed_fd(
        fd,
        rustix::event::PollFlags::OUT,
    )];
    match rustix::event::poll(&mut fds, None) {
        Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// herd's stdout and stderr, as fds.
pub(crate) fn stdout_fd() -> BorrowedFd<'static> {
    rustix::stdio::stdout()
}

/// herd's stderr.
pub(crate) fn stderr_fd() -> BorrowedFd<'static> {
    rustix::stdio::stderr()
}

/// One line-buffered stream of a running job: the read end of its pipe
/// and the part of a line not yet complete.
#[derive(Debug)]
pub(crate) struct LinePipe {
    pub(crate) pipe: Option<File>,
    partial: Vec<u8>,
    to_stderr: bool,
}

impl LinePipe {
    /// A pipe whose write end goes to the job; the read end is
    /// non-blocking.
    pub(crate) fn new(to_stderr: bool) -> io::Result<(Self, OwnedFd)> {
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        rustix::io::ioctl_fionbio(&read, true)?;
        Ok((
            Self {
                pipe: Some(File::from(read)),
                partial: Vec::new(),
                to_stderr,
            },
            write,
        ))
    }

    /// Reads what is there and passes on complete lines; at end of file,
    /// passes on the rest and closes the pipe. Returns false at end of
    /// file.
    pub(crate) fn pump(&mut self) -> io::Result<bool> {
        let Some(pipe) = self.pipe.as_mut() else {
            return Ok(false);
        };
        let mut buf = [0u8; 64 * 1024];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => {
                    let rest = std::mem::take(&mut self.partial);
                    emit(self.to_stderr, &rest)?;
                    self.pipe = None;
                    return Ok(false);
                }
                Ok(n) => {
                    let chunk = &buf[..n];
                    match chunk.iter().rposition(|&c| c == b'\n') {
                        Some(last) => {
                            let mut lines = std::mem::take(&mut self.partial);
                            lines.extend_from_slice(&chunk[..=last]);
                            emit(self.to_stderr, &lines)?;
                            self.partial.extend_from_slice(&chunk[last + 1..]);
                        }
                        None => self.partial.extend_from_slice(chunk),
                    }
                    if self.partial.len() >= MAX_LINE {
                        let long = std::mem::take(&mut self.partial);
                        emit(self.to_stderr, &long)?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Passes on what is there now, the incomplete last line included,
    /// and closes the pipe (whoever still holds its other end).
    pub(crate) fn abandon(&mut self) {
        let _ = self.pump();
        let rest = std::mem::take(&mut self.partial);
        let _ = emit(self.to_stderr, &rest);
        self.pipe = None;
    }

    /// The read end, while open.
    pub(crate) fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.pipe.as_ref().map(AsFd::as_fd)
    }
}

fn emit(to_stderr: bool, bytes: &[u8]) -> io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    write_all_fd(if to_stderr { stderr_fd() } else { stdout_fd() }, bytes)
}

/// herd's own message about a job (a command not found, a timeout), on
/// stderr, in the job's place.
pub(crate) fn note(msg: &str) {
    let _ = writeln!(io::stderr(), "herd: {msg}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Seek;

    #[test]
    fn recycled_pairs_show_each_job_only_its_own_output() {
        let read_all = |pair: &FilePair| {
            let (r, w) = rustix::pipe::pipe().unwrap();
            pair.copy_out(w.as_fd()).unwrap();
            drop(w);
            let mut got = String::new();
            File::from(r).read_to_string(&mut got).unwrap();
            got
        };
        let mut pool = FilePool::new();
        let mut pair = pool.take().unwrap();
        pair.out.write_all(b"hello").unwrap();
        assert_eq!(read_all(&pair), "hello");
        pool.give_back(pair);
        let mut again = pool.take().unwrap();
        assert_eq!(read_all(&again), "");
        // A job that moves its offset still appends.
        again.out.seek(std::io::SeekFrom::Start(0)).unwrap();
        again.out.write_all(b"next").unwrap();
        assert_eq!(read_all(&again), "next");
        assert_eq!(again.read_out(2), (b"ne".to_vec(), true));
        assert_eq!(again.read_err(10), (Vec::new(), false));
    }
}
