//! Passing file descriptors inside task arguments.
//!
//! A shared primitive (a lock, a queue) is a serde type, so it can be a task
//! argument like any other. Its `Serialize` impl cannot put a file
//! descriptor into bytes, so it hands the fd to [`export_fd`], which keeps a
//! duplicate aside and writes only its index; herd sends the kept fds with
//! the bootstrap request (`SCM_RIGHTS`), and in the child [`import_fd`]
//! gives each primitive's `Deserialize` impl its fd back by index.
//!
//! Outside herd's own encoding (say, `serde_json::to_string(&lock)`) there
//! is nowhere to put the fd, and serialization fails with a clear error
//! rather than producing bytes that cannot work.

use std::cell::RefCell;
use std::os::fd::{BorrowedFd, OwnedFd};

thread_local! {
    static SINK: RefCell<Option<Vec<OwnedFd>>> = const { RefCell::new(None) };
    static SOURCE: RefCell<Option<Vec<Option<OwnedFd>>>> = const { RefCell::new(None) };
}

/// Most fds one message can carry (the kernel's `SCM_MAX_FD` is 253).
pub(crate) const MAX_PASSED_FDS: usize = 250;

/// Runs `f` (an encode) and returns what it returned with the fds it exported.
pub(crate) fn collect_fds<R>(f: impl FnOnce() -> R) -> (R, Vec<OwnedFd>) {
    let outer = SINK.with(|s| s.borrow_mut().replace(Vec::new()));
    let r = f();
    let fds = SINK
        .with(|s| std::mem::replace(&mut *s.borrow_mut(), outer))
        .unwrap_or_default();
    (r, fds)
}

/// Runs `f` (a decode) with `fds` available to [`import_fd`].
pub(crate) fn provide_fds<R>(fds: Vec<OwnedFd>, f: impl FnOnce() -> R) -> R {
    let outer = SOURCE.with(|s| s.borrow_mut().replace(fds.into_iter().map(Some).collect()));
    let r = f();
    SOURCE.with(|s| *s.borrow_mut() = outer);
    r
}

/// Keeps a duplicate of `fd` for the message being encoded; returns its index.
pub(crate) fn export_fd(fd: BorrowedFd<'_>) -> Result<u32, String> {
    SINK.with(|s| {
        let mut s = s.borrow_mut();
        let Some(sink) = s.as_mut() else {
            return Err(
                "a herd shared object can only be serialized as an argument of a herd task"
                    .to_owned(),
            );
        };
        if sink.len() >= MAX_PASSED_FDS {
            return Err(format!(
                "more than {MAX_PASSED_FDS} shared objects in one message"
            ));
        }
        let dup = crate::os::dup(fd)
            .map_err(|e| format!("cannot duplicate a shared object's fd: {e}"))?;
        sink.push(dup);
        Ok((sink.len() - 1) as u32)
    })
}

/// Takes the fd with `index` from the message being decoded.
pub(crate) fn import_fd(index: u32) -> Result<OwnedFd, String> {
    SOURCE.with(|s| {
        let mut s = s.borrow_mut();
        let Some(source) = s.as_mut() else {
            return Err(
                "a herd shared object can only be deserialized as an argument of a herd task"
                    .to_owned(),
            );
        };
        source
            .get_mut(index as usize)
            .and_then(Option::take)
            .ok_or_else(|| {
                format!("shared object refers to fd #{index}, which the message did not carry")
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn round_trip_and_misuse() {
        let file: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        assert!(
            export_fd(file.as_fd()).is_err(),
            "no sink outside an encode"
        );
        let (idx, fds) = collect_fds(|| export_fd(file.as_fd()).unwrap());
        assert_eq!((idx, fds.len()), (0, 1));
        let got = provide_fds(fds, || (import_fd(0), import_fd(0), import_fd(7)));
        assert!(got.0.is_ok());
        assert!(got.1.is_err(), "an fd is taken once");
        assert!(got.2.is_err(), "an index the message did not carry");
        assert!(import_fd(0).is_err(), "no source outside a decode");
    }
}
