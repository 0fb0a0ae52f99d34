//! How long one site's pack takes on a demo board, and how big it is.
//!
//! ```sh
//! cargo run --release -p hale-continuity --example downtime_bench -- [DIR] [PATIENTS] [SITE] [DAYS]
//! ```
//!
//! Loads the demo board (default 10,000 patients, seed 2013, today 2026-11-23)
//! into DIR once (default `target/downtime-bench-store`), then generates and
//! writes an age-encrypted pack for SITE (default QEH) and DAYS (default 3)
//! as of 07:00 that day, and prints the timings and sizes. Set
//! `DOWNTIME_RECIPIENT=age1...` to encrypt for your own key.

use hale_continuity::{generate, write_pack, PackOptions, Protection, Recipients};
use hale_store::command::Command;
use hale_store::{Actor, CommandKind, StateMachine, WriteOp};
use std::path::PathBuf;
use std::time::Instant;

const LOAD_BATCH_OPS: usize = 500;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = PathBuf::from(args.first().map_or("target/downtime-bench-store", String::as_str));
    let patients: usize = args.get(1).map_or(Ok(10_000), |p| p.parse())?;
    let site = args.get(2).map_or("QEH", String::as_str).to_string();
    let days: u32 = args.get(3).map_or(Ok(3), |d| d.parse())?;
    let today = chrono::NaiveDate::from_ymd_opt(2026, 11, 23).expect("date");
    let now_ms = hale_fhir::date::parse_range_ms("2026-11-23T07:00:00Z")
        .expect("instant")
        .0;

    let marker = dir.join(format!("bench-loaded-{patients}"));
    if !marker.exists() {
        let started = Instant::now();
        let _ = std::fs::remove_dir_all(&dir);
        let mut sm = StateMachine::open(&dir)?;
        let board = hale_demo::stream(&hale_demo::DemoConfig {
            seed: 2013,
            patients,
            today,
        });
        let mut ops = Vec::with_capacity(LOAD_BATCH_OPS);
        let mut index = 0;
        let mut flush = |ops: Vec<WriteOp>, sm: &mut StateMachine| -> Result<(), hale_store::StoreError> {
            index += 1;
            let cmd = Command {
                time_ms: now_ms - 3_600_000,
                actor: Actor::system(),
                kind: CommandKind::Batch(ops),
            };
            sm.apply(&[(index, &cmd)])?;
            Ok(())
        };
        let mut n = 0;
        for r in board {
            let rtype = r["resourceType"].as_str().unwrap_or_default().to_string();
            let id = r["id"].as_str().unwrap_or_default().to_string();
            ops.push(WriteOp::Update {
                rtype,
                id,
                resource: r,
                if_match: None,
            });
            n += 1;
            if ops.len() == LOAD_BATCH_OPS {
                flush(std::mem::take(&mut ops), &mut sm)?;
            }
        }
        if !ops.is_empty() {
            flush(ops, &mut sm)?;
        }
        std::fs::write(&marker, b"")?;
        println!(
            "loaded {n} resources ({patients} patients) in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }

    // Encrypt for $DOWNTIME_RECIPIENT (to decrypt by hand with `age -d -i key.txt`), else a throwaway key.
    let recipient = match std::env::var("DOWNTIME_RECIPIENT") {
        Ok(r) => r,
        Err(_) => age::x25519::Identity::generate().to_public().to_string(),
    };
    let protection = Protection::Age(Recipients::parse(&[recipient])?);
    let mut opts = PackOptions::new(site.clone(), now_ms, protection);
    opts.days = days;
    let conn = hale_store::rusqlite::Connection::open_with_flags(
        dir.join(hale_store::DB_FILE),
        hale_store::rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    let out = dir.join(format!("packs-{site}"));
    for run in 1..=3 {
        let started = Instant::now();
        let pack = generate(&conn, &opts)?;
        let generated = started.elapsed();
        let written = write_pack(&out, &pack, 2)?;
        let total = started.elapsed();
        let m = &pack.manifest;
        println!(
            "run {run}: {site}, {} days after today: {} sessions, {} appointments, {} patients; \
             generate {:.2} s, generate+write {:.2} s; {} bytes in {}",
            days,
            m.counts.sessions,
            m.counts.appointments,
            m.counts.patients,
            generated.as_secs_f64(),
            total.as_secs_f64(),
            pack.total_bytes(),
            written.dir.display()
        );
        if run == 1 {
            for f in &pack.files {
                println!(
                    "  {:>10}  {}{}",
                    f.bytes.len(),
                    f.name,
                    f.pages.map(|p| format!(" ({p} pages)")).unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}
