//! Loading the synthetic health board into an empty store, through the
//! ordinary write path (batch commands), so demo data obeys every rule
//! that real data does: validation, references, booking.

use crate::App;
use hale_store::apply::Applied;
use hale_store::command::Command;
use hale_store::{Actor, CommandKind, WriteOp};
use std::sync::atomic::Ordering;

/// Resources per batch command while loading.
pub const LOAD_BATCH_OPS: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo resource {index} ({rtype}/{id}) is invalid: {why}")]
    Invalid {
        index: usize,
        rtype: String,
        id: String,
        why: String,
    },
    #[error("demo resource {rtype}/{id} was refused by the store: {why}")]
    Rejected { rtype: String, id: String, why: String },
    #[error("the write path failed while loading demo data: {0}")]
    Propose(#[from] hale_store::propose::ProposeError),
    #[error("store error: {0}")]
    Store(#[from] hale_store::StoreError),
}

/// File in the data directory that says the whole board was loaded.
pub const COMPLETE_MARKER: &str = "demo-complete";
/// A resource every board starts with: its presence without the marker means
/// an earlier load was interrupted.
const FIRST_DEMO_RESOURCE: (&str, &str) = ("Organization", "org-board");

/// Load the board into an empty store, or finish a load that was interrupted.
/// Returns the number of resources written.
///
/// The board is streamed from the generator and written in batches of
/// [`LOAD_BATCH_OPS`] resources, so only one batch is held in memory at a time
/// whatever the number of patients. Loading stops early when the server shuts down.
pub async fn load_if_empty(
    app: &App,
    patients: usize,
    seed: u64,
    today: chrono::NaiveDate,
) -> Result<usize, DemoError> {
    let marker = app.cfg.data.join(COMPLETE_MARKER);
    if marker.exists() {
        tracing::info!("the demo health board is already loaded");
        return Ok(0);
    }
    let existing: u64 = app
        .reader
        .with(hale_store::query::counts)
        .map_err(hale_store::StoreError::from)?
        .iter()
        .map(|(_, n)| n)
        .sum();
    let resuming = existing > 0;
    if resuming {
        let (t, id) = FIRST_DEMO_RESOURCE;
        let partial = app
            .reader
            .with(|c| hale_store::query::read(c, t, id))
            .map_err(hale_store::StoreError::from)?
            .is_some();
        if !partial {
            tracing::info!(existing, "store holds other data; demo data not loaded");
            return Ok(0);
        }
        tracing::warn!(existing, "an earlier demo load was interrupted; loading the rest");
    }
    app.ready.store(false, Ordering::Release);
    let started = std::time::Instant::now();
    let board = hale_demo::stream(&hale_demo::DemoConfig { seed, patients, today });
    tracing::info!(patients, "generating and loading the demo health board");
    let mut ops = Vec::with_capacity(LOAD_BATCH_OPS);
    let mut loaded = 0;
    for (index, r) in board.enumerate() {
        let rtype = r.get("resourceType").and_then(|v| v.as_str()).unwrap_or("").to_string();
        let id = r.get("id").and_then(|v| v.as_str()).unwrap_or("").to_string();
        if let Err(issues) = hale_fhir::validate::validate_resource(&r, None) {
            let why = issues
                .iter()
                .map(|i| format!("{} at {}", i.diagnostics, i.expression.as_deref().unwrap_or("?")))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(DemoError::Invalid { index, rtype, id, why });
        }
        ops.push(WriteOp::Update {
            rtype,
            id,
            resource: r,
            if_match: None,
        });
        if ops.len() == LOAD_BATCH_OPS {
            if app.stopping.load(Ordering::Acquire) {
                tracing::warn!(loaded, "shutting down: demo load stopped; it resumes at the next start");
                return Ok(loaded);
            }
            let mut batch = std::mem::replace(&mut ops, Vec::with_capacity(LOAD_BATCH_OPS));
            if resuming {
                batch = missing_only(app, batch)?;
            }
            let resource_type = batch.last().map(|op| op.rtype().to_string()).unwrap_or_default();
            loaded += submit(app, batch).await?;
            if loaded % 20_000 < LOAD_BATCH_OPS {
                tracing::info!(loaded, patients, resource_type, "loading demo data");
            }
        }
    }
    if resuming {
        ops = missing_only(app, ops)?;
    }
    loaded += submit(app, ops).await?;
    std::fs::write(&marker, format!("seed {seed}, {patients} patients, today {today}\n"))
        .map_err(hale_store::StoreError::from)?;
    app.ready.store(true, Ordering::Release);
    tracing::info!(
        loaded,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "demo health board loaded"
    );
    Ok(loaded)
}

/// Drop the ops whose resources an interrupted load already wrote.
fn missing_only(app: &App, ops: Vec<WriteOp>) -> Result<Vec<WriteOp>, DemoError> {
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        let exists = app
            .reader
            .with(|c| hale_store::query::read(c, op.rtype(), op.id()))
            .map_err(hale_store::StoreError::from)?
            .is_some();
        if !exists {
            out.push(op);
        }
    }
    Ok(out)
}

/// Apply one batch; on a refusal, name the resource refused.
async fn submit(app: &App, ops: Vec<WriteOp>) -> Result<usize, DemoError> {
    let n = ops.len();
    if n == 0 {
        return Ok(0);
    }
    // The command takes the ops; keep only what an error message needs.
    let keys: Vec<(String, String)> = ops
        .iter()
        .map(|op| (op.rtype().to_string(), op.id().to_string()))
        .collect();
    let cmd = Command {
        time_ms: crate::now_ms(),
        actor: Actor {
            user: "demo-loader".into(),
            role: "service".into(),
        },
        kind: CommandKind::Batch(ops),
    };
    let (_, applied) = app.proposer.propose(cmd).await?;
    if let Applied::Ops(results) = applied {
        for ((rtype, id), r) in keys.into_iter().zip(results) {
            if let Err(rej) = r {
                let why = rej
                    .issues
                    .iter()
                    .map(|i| i.diagnostics.clone())
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(DemoError::Rejected { rtype, id, why });
            }
        }
    }
    Ok(n)
}
