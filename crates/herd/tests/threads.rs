//! `herd::thread`: names, daemon flag, join with timeout, panics as errors.

use std::sync::mpsc;
use std::time::Duration;

use herd::thread::{self, Builder, ThreadError, current_thread};

const GUARD: Duration = Duration::from_secs(30);

#[test]
fn names_join_and_is_alive() {
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let mut t = Builder::new()
        .name("LoopThread")
        .spawn(move || {
            go_rx.recv_timeout(GUARD).expect("go");
            current_thread().name().to_owned()
        })
        .expect("spawn");
    assert_eq!(t.name(), "LoopThread");
    assert!(t.is_alive());
    assert_eq!(t.join_timeout(Duration::from_millis(10)), Ok(None));
    go_tx.send(()).expect("send");
    assert_eq!(t.join_timeout(GUARD), Ok(Some("LoopThread".to_owned())));
    assert!(!t.is_alive());
    assert_eq!(
        t.join_timeout(GUARD),
        Err(ThreadError::AlreadyJoined("LoopThread".to_owned()))
    );
}

#[test]
fn unnamed_threads_get_python_style_names() {
    let t = thread::spawn(|| current_thread().name().to_owned()).expect("spawn");
    let name = t.name().to_owned();
    assert!(name.starts_with("Thread-"), "{name}");
    assert_eq!(t.join(), Ok(name));
    // The test harness runs this on a worker thread, not the main one.
    assert!(!current_thread().is_main());
}

#[test]
fn a_panic_is_an_error_with_its_location() {
    let t = Builder::new()
        .name("doomed")
        .daemon(true)
        .spawn(|| -> u8 { panic!("boom {}", 7) })
        .expect("spawn");
    assert!(t.daemon());
    match t.join() {
        Err(ThreadError::Panicked { name, report }) => {
            assert_eq!(name, "doomed");
            assert_eq!(report.message, "boom 7");
            assert!(report.location.is_some_and(|l| l.contains("threads.rs")));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_nul_in_a_name_is_an_error_not_a_panic() {
    let r = Builder::new().name("bad\0name").spawn(|| 1);
    assert_eq!(
        r.map(|_| ()).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::InvalidInput)
    );
}
