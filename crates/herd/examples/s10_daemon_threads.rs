//! Seed example S10: fifteen threads each print `i`, sleep a second and
//! print `i` again; `main` then simply ends. The program still waits for
//! every thread — unless they are daemons, which end with the program.
//!
//! Run: `cargo run --example s10_daemon_threads` (non-daemon: both lines of
//! every thread appear, after "main ends"), or with `-- daemon` (daemons: the
//! second lines never appear). How herd arranges the wait at exit is in the
//! docs of `herd::thread`.

mod common;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    herd::init();
    let daemon = std::env::args().nth(1).as_deref() == Some("daemon");
    for i in 0..15 {
        herd::thread::Builder::new()
            .name(format!("worker-{i}"))
            .daemon(daemon)
            .spawn(move || {
                println!("start {i}");
                common::sleep_secs(1.0);
                println!("end {i}");
            })?;
    }
    println!("main ends (daemon threads: {daemon})");
    Ok(())
}
