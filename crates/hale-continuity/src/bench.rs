//! `hale bench downtime-pack`: how long one site's pack takes on the demo
//! board, and how big it is. The board (seed 2013, "today" 2026-11-23) is
//! loaded once into a store directory and reused; the pack is generated as of
//! 07:00 that day and encrypted for a throwaway age key.

use crate::{generate, write_pack, ContinuityError, PackOptions, Protection, Recipients};
use hale_store::command::Command;
use hale_store::{Actor, CommandKind, StateMachine, WriteOp};
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

/// Resources per command while loading the board.
const LOAD_BATCH_OPS: usize = 500;

#[derive(Debug, Clone, Serialize)]
pub struct BenchRun {
    pub generate_ms: f64,
    pub generate_and_write_ms: f64,
    pub bytes: u64,
    pub sessions: usize,
    pub appointments: usize,
    pub patients: usize,
    pub pages: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub site: String,
    pub days: u32,
    pub board_patients: usize,
    pub load_s: Option<f64>,
    pub runs: Vec<BenchRun>,
}

fn load_err(e: hale_store::StoreError) -> ContinuityError {
    ContinuityError::InvalidOption(format!("loading the demo board failed: {e}"))
}

fn load_board(dir: &Path, patients: usize, today: chrono::NaiveDate, now_ms: i64) -> Result<(), ContinuityError> {
    let _ = std::fs::remove_dir_all(dir);
    let mut sm = StateMachine::open(dir).map_err(load_err)?;
    let board = hale_demo::stream(&hale_demo::DemoConfig {
        seed: 2013,
        patients,
        today,
    });
    let mut ops = Vec::with_capacity(LOAD_BATCH_OPS);
    let mut index = 0;
    let mut flush = |ops: Vec<WriteOp>, sm: &mut StateMachine| -> Result<(), ContinuityError> {
        index += 1;
        let cmd = Command {
            references: Default::default(),
            time_ms: now_ms - 3_600_000,
            actor: Actor::system(),
            kind: CommandKind::Batch(ops),
        };
        sm.apply(&[(index, &cmd)]).map_err(load_err)?;
        Ok(())
    };
    for r in board {
        let rtype = r["resourceType"].as_str().unwrap_or_default().to_string();
        let id = r["id"].as_str().unwrap_or_default().to_string();
        ops.push(WriteOp::Update {
            rtype,
            id,
            resource: r,
            if_match: None,
        });
        if ops.len() == LOAD_BATCH_OPS {
            flush(std::mem::take(&mut ops), &mut sm)?;
        }
    }
    if !ops.is_empty() {
        flush(ops, &mut sm)?;
    }
    Ok(())
}

/// Load (once) a `patients`-patient board into `dir`, then time `runs` packs for `site`.
pub fn bench(dir: &Path, patients: usize, site: &str, days: u32, runs: usize) -> Result<BenchReport, ContinuityError> {
    let today = chrono::NaiveDate::from_ymd_opt(2026, 11, 23).expect("a valid date");
    let now_ms = hale_fhir::date::parse_range_ms("2026-11-23T07:00:00Z")
        .expect("a valid instant")
        .0;
    let marker = dir.join(format!("bench-loaded-{patients}"));
    let mut load_s = None;
    if !marker.exists() {
        let started = Instant::now();
        load_board(dir, patients, today, now_ms)?;
        std::fs::write(&marker, b"").map_err(crate::io_err("writing", &marker))?;
        load_s = Some(started.elapsed().as_secs_f64());
    }
    let key = age::x25519::Identity::generate().to_public().to_string();
    let mut opts = PackOptions::new(site.to_string(), now_ms, Protection::Age(Recipients::parse(&[key])?));
    opts.days = days;
    let conn = hale_store::db::open(
        &dir.join(hale_store::DB_FILE),
        hale_store::rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    let out = dir.join(format!("packs-{site}"));
    let mut report = BenchReport {
        site: site.to_string(),
        days,
        board_patients: patients,
        load_s,
        runs: Vec::new(),
    };
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        let pack = generate(&conn, &opts)?;
        let generated = started.elapsed();
        write_pack(&out, &pack, 2)?;
        let total = started.elapsed();
        let m = &pack.manifest;
        report.runs.push(BenchRun {
            generate_ms: generated.as_secs_f64() * 1e3,
            generate_and_write_ms: total.as_secs_f64() * 1e3,
            bytes: pack.total_bytes(),
            sessions: m.counts.sessions,
            appointments: m.counts.appointments,
            patients: m.counts.patients,
            pages: pack.files.iter().filter_map(|f| f.pages).map(|p| p as u64).sum(),
        });
    }
    Ok(report)
}
