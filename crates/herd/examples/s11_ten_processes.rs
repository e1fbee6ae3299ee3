//! Seed example S11: ten processes each sleep one second, then print their
//! number. All ten run at once, so the whole takes about one second, and the
//! numbers come out in whatever order the children finish.
//!
//! The seed writes `args=(i)`, which is not a tuple and fails in Python only
//! when the child runs. In herd the arguments are a typed tuple: passing `i`
//! instead of `(i,)` does not compile.

mod common;

#[herd::task]
fn run(i: u32) {
    common::sleep_secs(1.0);
    println!("{i}");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    herd::init();
    let start = std::time::Instant::now();
    let mut children = Vec::new();
    for i in 0..10 {
        children.push(herd::Process::builder(run, (i,)).start()?);
    }
    for p in &mut children {
        p.join()?;
    }
    eprintln!("10 processes in {:.2?}", start.elapsed());
    Ok(())
}
