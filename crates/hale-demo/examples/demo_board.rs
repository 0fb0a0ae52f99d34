//! Generate a board and print resource counts and timing.
//!
//! `cargo run --release -p hale-demo --example demo_board -- [patients] [out.ndjson]`
//!
//! With an output path, writes one resource per line (in load order). The
//! board is streamed ([`hale_demo::stream`]), so memory stays small even for
//! hundreds of thousands of patients.

use std::io::Write;
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut cfg = hale_demo::DemoConfig::default();
    if let Some(n) = args.next() {
        cfg.patients = n.parse().expect("patients must be a number");
    }
    let path = args.next();
    let mut out = path.as_ref().map(|path| {
        let file = std::fs::File::create(path).expect("create output file");
        std::io::BufWriter::new(file)
    });
    let started = Instant::now();
    // (resource type, count), in the order the types first appear.
    let mut counts: Vec<(String, usize)> = Vec::new();
    for r in hale_demo::stream(&cfg) {
        let t = r["resourceType"].as_str().unwrap_or_default();
        match counts.iter_mut().find(|(name, _)| name == t) {
            Some((_, n)) => *n += 1,
            None => counts.push((t.to_string(), 1)),
        }
        if let Some(w) = out.as_mut() {
            serde_json::to_writer(&mut *w, &r).expect("write");
            w.write_all(b"\n").expect("write");
        }
    }
    if let Some(mut w) = out {
        w.flush().expect("flush");
    }
    let elapsed = started.elapsed();
    for (t, n) in &counts {
        println!("{t:<20} {n:>8}");
    }
    println!("{:<20} {:>8}", "total", counts.iter().map(|(_, n)| n).sum::<usize>());
    match &path {
        Some(path) => println!(
            "generated {} patients and wrote {path} in {:.3} s",
            cfg.patients,
            elapsed.as_secs_f64()
        ),
        None => println!("generated {} patients in {:.3} s", cfg.patients, elapsed.as_secs_f64()),
    }
}
