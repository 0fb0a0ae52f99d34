//! Generate a board and print resource counts and timing.
//!
//! `cargo run --release -p hale-demo --example demo_board -- [patients] [out.ndjson]`
//!
//! With an output path, writes one resource per line (in load order).

use std::io::Write;
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut cfg = hale_demo::DemoConfig::default();
    if let Some(n) = args.next() {
        cfg.patients = n.parse().expect("patients must be a number");
    }
    let started = Instant::now();
    let board = hale_demo::generate(&cfg);
    let elapsed = started.elapsed();
    for (t, n) in board.counts() {
        println!("{t:<20} {n:>8}");
    }
    println!("{:<20} {:>8}", "total", board.resources.len());
    println!("generated {} patients in {:.3} s", cfg.patients, elapsed.as_secs_f64());
    if let Some(path) = args.next() {
        let file = std::fs::File::create(&path).expect("create output file");
        let mut w = std::io::BufWriter::new(file);
        for r in &board.resources {
            serde_json::to_writer(&mut w, r).expect("write");
            w.write_all(b"\n").expect("write");
        }
        w.flush().expect("flush");
        println!("wrote {path}");
    }
}
