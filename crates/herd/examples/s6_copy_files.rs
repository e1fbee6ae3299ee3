//! Seed example S6: copying files with one process or with several. The seed
//! says that with many files several processes are faster, and with few files
//! they are slower: starting workers and handing them work costs more than
//! the copying it spreads out.
//!
//! For each file count this example creates that many files in a temporary
//! folder (under `std::env::temp_dir()`, removed at the end), copies them
//! once in this process, one after the other, and once with a `Pool` whose
//! workers each copy one file per item of `pool.map` (`std::fs::copy`,
//! returning the bytes copied). It prints both timings (the pool's with the
//! time it took to start), then checks every copy against its original.
//!
//! Settings, from the environment:
//!
//! * `HERD_S6_COUNTS`: the file counts, comma-separated (default `4,400`);
//! * `HERD_S6_FILE_KB`: the size of each file in KiB (default 64);
//! * `HERD_S6_WORKERS`: the pool size (default: the number of CPUs, at
//!   most 8).
//!
//! The defaults run in a fraction of a second. Copying small files from the
//! page cache is mostly system-call overhead, so the pool wins only with
//! enough work to spread: try
//! `HERD_S6_COUNTS=4,400,4000 HERD_S6_FILE_KB=256 cargo run --release --example s6_copy_files`.
//!
//! `cargo run --example s6_copy_files`

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where a file of the `src` folder is copied to: the same name in the
/// `dst` folder beside it.
fn dst_of(src: &Path) -> PathBuf {
    let name = src.file_name().unwrap_or_default();
    src.parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| Path::new("."))
        .join("dst")
        .join(name)
}

/// Copies one file to its place in `dst`; the bytes copied.
fn copy_one(src: &str) -> std::io::Result<u64> {
    let src = Path::new(src);
    fs::copy(src, dst_of(src))
}

/// The pool's task: `copy_one` in a worker. An I/O error panics, which the
/// pool reports to the parent as this item's failure.
#[herd::task]
fn copy_file(src: String) -> u64 {
    match copy_one(&src) {
        Ok(n) => n,
        Err(e) => panic!("copying {src}: {e}"),
    }
}

/// A temporary folder, removed when dropped (also on an error or a panic).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> std::io::Result<Self> {
        let path = std::env::temp_dir().join(format!("herd-s6-{}-{tag}", std::process::id()));
        // A leftover of an earlier run with the same pid.
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(path.join("src"))?;
        Ok(Self(path))
    }

    /// Empties the `dst` folder for the next round of copies.
    fn fresh_dst(&self) -> std::io::Result<()> {
        let dst = self.0.join("dst");
        if dst.exists() {
            fs::remove_dir_all(&dst)?;
        }
        fs::create_dir(&dst)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `n` files of `size` bytes each, each with its own contents (so a copy
/// that lands on the wrong name is caught).
fn make_files(dir: &TempDir, n: usize, size: usize) -> std::io::Result<Vec<String>> {
    (0..n)
        .map(|i| {
            let path = dir.0.join("src").join(format!("file-{i:05}.bin"));
            let seed = i.to_le_bytes();
            let data: Vec<u8> = (0..size)
                .map(|j| seed[j % seed.len()] ^ (j % 251) as u8)
                .collect();
            fs::write(&path, data)?;
            Ok(path.to_string_lossy().into_owned())
        })
        .collect()
}

/// Checks every copy: its size is the original's and what the copy
/// reported, and its bytes are the original's. The total bytes.
fn verify(files: &[String], copied: &[u64]) -> Result<u64, String> {
    if files.len() != copied.len() {
        return Err(format!(
            "{} files but {} results",
            files.len(),
            copied.len()
        ));
    }
    let mut total = 0;
    for (src, &n) in files.iter().zip(copied) {
        let src = Path::new(src);
        let dst = dst_of(src);
        let original = fs::read(src).map_err(|e| format!("{}: {e}", src.display()))?;
        let copy = fs::read(&dst).map_err(|e| format!("{}: {e}", dst.display()))?;
        let len = original.len() as u64;
        if copy.len() as u64 != len || n != len {
            return Err(format!(
                "{}: {len} bytes, copy has {}, reported {n}",
                src.display(),
                copy.len()
            ));
        }
        if copy != original {
            return Err(format!("{}: the copy's bytes differ", dst.display()));
        }
        total += len;
    }
    Ok(total)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    herd::init();
    let counts: Vec<usize> = std::env::var("HERD_S6_COUNTS")
        .unwrap_or_else(|_| "4,400".to_owned())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let kib: usize = env_or("HERD_S6_FILE_KB", 64);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers: usize = env_or("HERD_S6_WORKERS", cpus.min(8)).max(1);

    for n in counts {
        let dir = TempDir::new(&n.to_string())?;
        let files = make_files(&dir, n, kib * 1024)?;
        println!("{n} files of {kib} KiB:");
        println!("  files in {}", dir.0.display());

        // One process: this one, one file after the other.
        dir.fresh_dst()?;
        let start = Instant::now();
        let copied = files
            .iter()
            .map(|f| copy_one(f))
            .collect::<std::io::Result<Vec<u64>>>()?;
        let one = start.elapsed();
        verify(&files, &copied)?;
        println!("  {:<24}{}", "1 process:", ms(one));

        // Several: a pool started for the job, one file per `map` item.
        dir.fresh_dst()?;
        let start = Instant::now();
        let pool = herd::Pool::builder().size(workers).build()?;
        let started = start.elapsed();
        let copied = pool.map(copy_file, files.iter().cloned())?;
        pool.close();
        pool.join()?;
        let several = start.elapsed();
        let total = verify(&files, &copied)?;
        println!(
            "  {:<24}{} ({} of it starting the pool)",
            format!("pool of {workers} processes:"),
            ms(several),
            ms(started)
        );
        let verdict = if several < one { "faster" } else { "slower" };
        println!(
            "  {n} files: copies verified ({total} bytes); the pool was {verdict} \
             ({:.2}x the speed of 1 process)",
            one.as_secs_f64() / several.as_secs_f64().max(1e-9)
        );
    }
    Ok(())
}
