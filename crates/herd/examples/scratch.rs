//! scratch
#[herd::task]
fn trivial() -> u8 {
    1
}
fn main() {
    herd::init();
    let m = if std::env::args().nth(1).as_deref() == Some("spawn") {
        herd::StartMethod::Spawn
    } else {
        herd::StartMethod::ForkServer
    };
    for _ in 0..5 {
        herd::Process::builder(trivial, ())
            .start_method(m)
            .start()
            .unwrap()
            .join()
            .unwrap();
    }
    let mut v = vec![];
    for _ in 0..400 {
        let t = std::time::Instant::now();
        herd::Process::builder(trivial, ())
            .start_method(m)
            .start()
            .unwrap()
            .join()
            .unwrap();
        v.push(t.elapsed().as_micros());
    }
    v.sort();
    println!("median {} p10 {} p90 {}", v[200], v[40], v[360]);
}
