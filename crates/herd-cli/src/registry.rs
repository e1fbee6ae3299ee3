//! The small registry `herd ps` reads: every long-lived herd process (a
//! `herd run`, `herd worker`, `herd serve`, `herd submit`) leaves one file
//! naming itself in a per-user runtime directory while it runs.
//!
//! The directory is `$XDG_RUNTIME_DIR/herd/ps/` when that variable is set
//! and the directory is usable, else `<temp dir>/herd-<uid>/ps/`, created
//! with mode 0700; a `herd-<uid>` owned by someone else (or a symlink) is
//! refused. Each file is one JSON object (role, pid, start time, detail),
//! written to a temporary name and renamed, so a reader never sees half of
//! one. The pid's start time (field 22 of `/proc/<pid>/stat`) tells a live
//! registration from a stale one whose pid the kernel has reused: `herd ps`
//! removes stale files as it finds them (a herd killed by SIGKILL leaves
//! one).
//!
//! Registering never fails a run: when no directory is usable, the
//! [`Registration`] does nothing.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// The environment variable the run engine sets in each job to the job's
/// number (`{#}`), so `herd ps` can label the job's processes.
pub(crate) const SEQ_ENV: &str = "HERD_SEQ";

/// The environment variable the run engine sets in each job to the pid of
/// the `herd` process that started it.
pub(crate) const RUN_ENV: &str = "HERD_RUN";

/// The extension of a registration file.
const EXT: &str = "json";

/// One registered herd process, as stored in its file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// What the process is: `run`, `worker`, `serve`, `submit`.
    pub(crate) role: String,
    /// Its pid.
    pub(crate) pid: u32,
    /// Its start time: field 22 of `/proc/<pid>/stat` (clock ticks after
    /// boot), which tells it from a later process given the same pid.
    pub(crate) start: u64,
    /// What it is doing: the command template, the address served, ...
    pub(crate) detail: String,
}

/// A registration file found in a registry directory.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    /// The file.
    pub(crate) path: PathBuf,
    /// What it says.
    pub(crate) entry: Entry,
}

/// This process's registration: its file is removed when this is dropped.
/// Keep it alive for as long as the process does its work.
#[derive(Debug)]
#[must_use = "the registration is removed when this is dropped"]
pub(crate) struct Registration {
    /// The file, and the pid that wrote it (a forked copy of this value
    /// must not remove its parent's file); `None` when registering failed.
    file: Option<(PathBuf, u32)>,
}

impl Registration {
    /// A registration that registered nothing.
    fn none() -> Self {
        Self { file: None }
    }

    /// The registration file, if there is one.
    #[cfg(test)]
    pub(crate) fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(|(p, _)| p.as_path())
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some((path, pid)) = self.file.take()
            && pid == std::process::id()
        {
            let _ = fs::remove_file(path);
        }
    }
}

/// Registers this process as a herd `role` (`run`, `worker`, `serve`,
/// `submit`) doing `detail`, so `herd ps` lists it and its descendants.
/// Never fails: if no registry directory is usable, the registration does
/// nothing, silently.
pub(crate) fn register(role: &str, detail: &str) -> Registration {
    for dir in candidate_dirs() {
        if let Some(dir) = prepare(&dir)
            && let Some(reg) = try_register_in(&dir, role, detail)
        {
            return reg;
        }
    }
    Registration::none()
}

/// Registers this process in `dir` (which must exist); a registration that
/// does nothing if the file cannot be written.
#[cfg(test)]
pub(crate) fn register_in(dir: &Path, role: &str, detail: &str) -> Registration {
    try_register_in(dir, role, detail).unwrap_or_else(Registration::none)
}

fn try_register_in(dir: &Path, role: &str, detail: &str) -> Option<Registration> {
    let pid = std::process::id();
    let start = crate::ps::start_time(pid).ok()?;
    let entry = Entry {
        role: role.to_owned(),
        pid,
        start,
        detail: detail.to_owned(),
    };
    let path = write_entry(dir, &entry).ok()?;
    Some(Registration {
        file: Some((path, pid)),
    })
}

/// Writes `entry` into `dir` atomically (a temporary file, then a rename);
/// returns the file's path. The name holds the pid, its start time and a
/// counter, so a stale file never shares a name with a live one and one
/// process may register more than once.
pub(crate) fn write_entry(dir: &Path, entry: &Entry) -> io::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("{}-{}-{n}.{EXT}", entry.pid, entry.start);
    let path = dir.join(&name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let json = serde_json::to_vec(entry).map_err(io::Error::other)?;
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&json)?;
        drop(f);
        fs::rename(&tmp, &path)
    })();
    match written {
        Ok(()) => Ok(path),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Every registration file in `dir` that parses; unreadable or foreign
/// files are skipped (a missing directory is an empty registry).
pub(crate) fn read_dir(dir: &Path) -> Vec<Found> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for dirent in entries.flatten() {
        let path = dirent.path();
        let name = dirent.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || path.extension().is_none_or(|e| e != EXT) {
            continue;
        }
        let Ok(bytes) = fs::read(&path) else {
            continue;
        };
        if let Ok(entry) = serde_json::from_slice::<Entry>(&bytes) {
            found.push(Found { path, entry });
        }
    }
    found.sort_by_key(|f| (f.entry.pid, f.path.clone()));
    found
}

/// The registry directories `herd ps` reads: the ones that exist and are
/// ours, of the places [`register`] may write (a herd started without
/// `XDG_RUNTIME_DIR` is found by a `herd ps` started with it).
pub(crate) fn dirs_to_read() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for dir in candidate_dirs() {
        if dir.parent().is_some_and(is_ours) && is_ours(&dir) && !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs
}

/// Where the registry may be, in order of preference (not checked).
fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(xdg) = std::env::var_os("XDG_RUNTIME_DIR") {
        let xdg = PathBuf::from(xdg);
        if xdg.is_absolute() {
            dirs.push(xdg.join("herd").join("ps"));
        }
    }
    let uid = rustix::process::getuid().as_raw();
    dirs.push(std::env::temp_dir().join(format!("herd-{uid}")).join("ps"));
    dirs
}

/// Whether `path` is a real directory (not a symlink) owned by this user.
fn is_ours(path: &Path) -> bool {
    fs::symlink_metadata(path)
        .is_ok_and(|m| m.is_dir() && m.uid() == rustix::process::getuid().as_raw())
}

/// Creates `dir` (`.../herd/ps` or `.../herd-<uid>/ps`) and its parent with
/// mode 0700 if needed, and checks both are directories owned by this user
/// and closed to others; `None` if not.
fn prepare(dir: &Path) -> Option<PathBuf> {
    let parent = dir.parent()?;
    for d in [parent, dir] {
        match fs::DirBuilder::new().mode(0o700).create(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(_) => return None,
        }
        let meta = fs::symlink_metadata(d).ok()?;
        if !meta.is_dir() || meta.uid() != rustix::process::getuid().as_raw() {
            return None;
        }
        if meta.mode() & 0o077 != 0 {
            fs::set_permissions(d, fs::Permissions::from_mode(0o700)).ok()?;
        }
    }
    Some(dir.to_path_buf())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fresh directory under the temp dir, removed on drop.
    #[derive(Debug)]
    pub(crate) struct TestDir(pub(crate) PathBuf);

    impl TestDir {
        pub(crate) fn new(tag: &str) -> Self {
            static N: AtomicU64 = AtomicU64::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir()
                .join(format!("herd-cli-test-{tag}-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir(&path).unwrap();
            Self(path)
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn round_trip() {
        let dir = TestDir::new("roundtrip");
        let reg = register_in(&dir.0, "run", "gzip -k {}\nwith a newline");
        let path = reg.path().expect("registered").to_path_buf();
        assert!(path.exists());
        let found = read_dir(&dir.0);
        assert_eq!(found.len(), 1);
        let e = &found[0].entry;
        assert_eq!(e.role, "run");
        assert_eq!(e.pid, std::process::id());
        assert_eq!(e.start, crate::ps::start_time(std::process::id()).unwrap());
        assert_eq!(e.detail, "gzip -k {}\nwith a newline");
        assert_eq!(found[0].path, path);
        // No temporary file is left behind, and the file is private.
        let names: Vec<_> = fs::read_dir(&dir.0).unwrap().flatten().collect();
        assert_eq!(names.len(), 1);
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        drop(reg);
        assert!(!path.exists());
        assert!(read_dir(&dir.0).is_empty());
    }

    #[test]
    fn two_registrations_of_one_process() {
        let dir = TestDir::new("two");
        let a = register_in(&dir.0, "run", "a");
        let b = register_in(&dir.0, "submit", "b");
        assert_ne!(a.path(), b.path());
        assert_eq!(read_dir(&dir.0).len(), 2);
        drop(a);
        let left = read_dir(&dir.0);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].entry.detail, "b");
        drop(b);
    }

    #[test]
    fn unusable_directory_registers_nothing() {
        let dir = TestDir::new("missing");
        let reg = register_in(&dir.0.join("does-not-exist"), "run", "x");
        assert!(reg.path().is_none());
        drop(reg); // and dropping it does nothing
    }

    #[test]
    fn foreign_and_broken_files_are_skipped() {
        let dir = TestDir::new("foreign");
        fs::write(dir.0.join("notes.txt"), "hello").unwrap();
        fs::write(dir.0.join("1-2-3.json"), "{not json").unwrap();
        fs::write(dir.0.join(".4-5-6.json.tmp"), "{}").unwrap();
        assert!(read_dir(&dir.0).is_empty());
        assert!(read_dir(&dir.0.join("nope")).is_empty());
    }

    #[test]
    fn prepare_creates_private_directories_and_refuses_symlinks() {
        let dir = TestDir::new("prepare");
        let ps = dir.0.join("herd").join("ps");
        assert_eq!(prepare(&ps).as_deref(), Some(ps.as_path()));
        for d in [ps.parent().unwrap(), ps.as_path()] {
            assert_eq!(fs::metadata(d).unwrap().mode() & 0o777, 0o700);
        }
        // A parent opened to others is closed again.
        fs::set_permissions(ps.parent().unwrap(), fs::Permissions::from_mode(0o755)).unwrap();
        assert!(prepare(&ps).is_some());
        assert_eq!(
            fs::metadata(ps.parent().unwrap()).unwrap().mode() & 0o777,
            0o700
        );
        // A symlink in place of the directory is refused.
        let target = dir.0.join("elsewhere");
        fs::create_dir(&target).unwrap();
        let link = dir.0.join("linked");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(prepare(&link.join("ps")).is_none());
    }
}
