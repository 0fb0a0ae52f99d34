//! Loading the synthetic health board into an empty store, through the
//! ordinary write path (batch commands), so demo data obeys every rule
//! that real data does: validation, references, booking.

use crate::App;
use hale_fhir::IssueCode;
use hale_store::apply::Applied;
use hale_store::command::Command;
use hale_store::propose::ProposeError;
use hale_store::{Actor, CommandKind, RejectKind, WriteOp};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Resources per batch command while loading (at most).
pub const LOAD_BATCH_OPS: usize = 500;
/// Encoded JSON bytes of the ops of one batch command (at most, unless one op
/// alone is larger): a batch stays one raft log entry of a size that
/// replicates quickly, under the store's bound on an entry
/// ([`hale_store::COMMAND_BYTES_MAX`]), leaving room for the command's envelope.
pub const LOAD_BATCH_BYTES_MAX: usize = hale_store::COMMAND_BYTES_MAX - 4 * 1024;
const _: () = assert!(LOAD_BATCH_BYTES_MAX > 64 * 1024, "room for a batch of demo resources");
/// How long one batch may keep being retried while the cluster cannot commit
/// (no leader, no quorum, leadership moving) before the load gives up.
pub const LOAD_RETRY_DEADLINE: Duration = Duration::from_secs(300);
const LOAD_RETRY_WAIT_FIRST: Duration = Duration::from_millis(500);
const LOAD_RETRY_WAIT_MAX: Duration = Duration::from_secs(15);

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
    #[error("the demo board generator stopped before the end of the board: {0}")]
    Generator(String),
    #[error("the write path failed while loading demo data: {0}")]
    Propose(#[from] ProposeError),
    #[error("the cluster could not commit a batch of demo data in {attempts} attempts over {secs} s (last: {why}); the load stopped and resumes when this node restarts")]
    GaveUp { attempts: u32, secs: u64, why: String },
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
/// The board is streamed from the generator and written in batches of at most
/// [`LOAD_BATCH_OPS`] resources and [`LOAD_BATCH_BYTES_MAX`] bytes, so only one
/// batch is held in memory at a time whatever the number of patients. A batch
/// the cluster cannot commit now is retried (see `write_batch`); loading
/// stops early when the server shuts down, and the next start carries on.
pub async fn load_if_empty(
    app: &App,
    patients: usize,
    seed: u64,
    today: chrono::NaiveDate,
) -> Result<usize, DemoError> {
    let marker = app.cfg.data.join(COMPLETE_MARKER);
    if marker.exists() {
        tracing::info!("the demo health board is already loaded");
        // A store loaded by an older build has no demo accounts yet; a cut-off
        // replica that has them does not wait for a leader.
        if !missing_demo_users(app)?.is_empty() && wait_for_leader(app).await {
            add_demo_users(app).await?;
        }
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
    if !wait_for_leader(app).await {
        tracing::warn!("shutting down: demo load not started; it starts at the next start");
        return Ok(0);
    }
    add_demo_users(app).await?;
    let started = std::time::Instant::now();
    tracing::info!(patients, "generating and loading the demo health board");
    // Generating and validating the board is CPU work; on the runtime's
    // workers it starved this node's raft tasks (a leader that loads must keep
    // sending heartbeats). A blocking thread makes the batches, one ahead.
    let (batches_tx, mut batches) = tokio::sync::mpsc::channel::<Result<Vec<WriteOp>, DemoError>>(1);
    let config = hale_demo::DemoConfig { seed, patients, today };
    let generator = tokio::task::spawn_blocking(move || make_batches(&config, &batches_tx));
    let mut loaded = 0;
    let mut report_at = 20_000;
    while let Some(batch) = batches.recv().await {
        let batch = batch?;
        let resource_type = batch.last().map(|op| op.rtype().to_string()).unwrap_or_default();
        match write_batch(app, batch, resuming).await? {
            Some(n) => loaded += n,
            None => {
                tracing::warn!(loaded, "shutting down: demo load stopped; it resumes at the next start");
                return Ok(loaded);
            }
        }
        if loaded >= report_at {
            tracing::info!(loaded, patients, resource_type, "loading demo data");
            report_at = loaded + 20_000;
        }
    }
    // The channel also closes if the generator panicked: never mark that complete.
    generator.await.map_err(|e| DemoError::Generator(e.to_string()))?;
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

/// Demo staff accounts for the web UI: (user, role, full name, password).
/// Their users match the demo bearer tokens (`config::demo_tokens`). Added
/// through the log with the demo board, so they exist on every node once
/// `/readyz` answers 200. Never use them with real patient data.
pub const DEMO_USERS: &[(&str, &str, &str, &str)] = &[
    ("dr.demo", "clinician", "Dr Demo Clinician", "demo-clinician-pw"),
    ("clerk.demo", "clerk", "Demo Booking Clerk", "demo-clerk-pw1"),
    ("admin.demo", "admin", "Demo IT Admin", "demo-admin-pw12"),
];

/// The demo accounts this node's store does not hold.
fn missing_demo_users(
    app: &App,
) -> Result<Vec<&'static (&'static str, &'static str, &'static str, &'static str)>, DemoError> {
    let mut out = Vec::new();
    for u in DEMO_USERS {
        let have = app
            .reader
            .with(|c| hale_store::accounts::get(c, u.0))
            .map_err(hale_store::StoreError::from)?;
        if have.is_none() {
            out.push(u);
        }
    }
    Ok(out)
}

/// Add the demo accounts the store lacks, retrying while the cluster cannot
/// commit (like a batch of the board). An account another node added
/// meanwhile counts as added.
async fn add_demo_users(app: &App) -> Result<(), DemoError> {
    for &(user, role, name, password) in missing_demo_users(app)? {
        let pw = password.to_string();
        let password_hash = tokio::task::spawn_blocking(move || crate::accounts::hash_password(&pw))
            .await
            .map_err(|e| DemoError::Rejected {
                rtype: "account".into(),
                id: user.into(),
                why: e.to_string(),
            })?
            .map_err(|why| DemoError::Rejected {
                rtype: "account".into(),
                id: user.into(),
                why,
            })?;
        let started = Instant::now();
        let mut wait = LOAD_RETRY_WAIT_FIRST;
        let mut attempts = 0;
        loop {
            if app.stopping.load(Ordering::Acquire) {
                return Ok(());
            }
            attempts += 1;
            let op = hale_store::accounts::AccountOp::Add {
                user: user.into(),
                role: role.into(),
                name: name.into(),
                password_hash: password_hash.clone(),
            };
            let why = match crate::accounts::propose(app, Actor::system(), op).await {
                Ok(Ok(())) => break,
                Ok(Err(msg))
                    if hale_store::accounts::rejection_kind(&msg) == hale_store::accounts::AccountRejection::Exists =>
                {
                    break
                }
                Ok(Err(why)) => {
                    return Err(DemoError::Rejected {
                        rtype: "account".into(),
                        id: user.into(),
                        why,
                    })
                }
                Err(ProposeError::Unavailable(why)) => why,
                Err(ProposeError::Stopped) if app.stopping.load(Ordering::Acquire) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            if started.elapsed() + wait > LOAD_RETRY_DEADLINE {
                return Err(DemoError::GaveUp {
                    attempts,
                    secs: started.elapsed().as_secs(),
                    why,
                });
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(LOAD_RETRY_WAIT_MAX);
        }
        tracing::info!(user, role, "demo account added");
    }
    Ok(())
}

/// Encoded size of one op, as it counts towards [`LOAD_BATCH_BYTES_MAX`].
fn op_bytes(op: &WriteOp) -> usize {
    serde_json::to_vec(op).map(|v| v.len()).unwrap_or(0) + 1
}

/// Wait until this node knows a leader (a node of a cluster not formed yet
/// cannot write). False if the server shuts down first.
async fn wait_for_leader(app: &App) -> bool {
    let mut said = false;
    loop {
        if app.stopping.load(Ordering::Acquire) {
            return false;
        }
        if app.raft.metrics().current_leader.is_some() {
            return true;
        }
        if !said {
            tracing::info!("the demo load waits for this node's cluster to elect a leader (`hale cluster init`)");
            said = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Generate and validate the board in batches of at most [`LOAD_BATCH_OPS`]
/// resources and [`LOAD_BATCH_BYTES_MAX`] bytes, sending each to the loader
/// (on a blocking thread; stops when the loader stops receiving). The last
/// batch is sent even when empty, so an empty board still completes.
fn make_batches(config: &hale_demo::DemoConfig, out: &tokio::sync::mpsc::Sender<Result<Vec<WriteOp>, DemoError>>) {
    let mut ops: Vec<WriteOp> = Vec::with_capacity(LOAD_BATCH_OPS);
    let mut bytes = 0;
    for (index, r) in hale_demo::stream(config).enumerate() {
        let rtype = r.get("resourceType").and_then(|v| v.as_str()).unwrap_or("").to_string();
        let id = r.get("id").and_then(|v| v.as_str()).unwrap_or("").to_string();
        if let Err(issues) = hale_fhir::validate::validate_resource(&r, None) {
            let why = issues
                .iter()
                .map(|i| format!("{} at {}", i.diagnostics, i.expression.as_deref().unwrap_or("?")))
                .collect::<Vec<_>>()
                .join("; ");
            let _ = out.blocking_send(Err(DemoError::Invalid { index, rtype, id, why }));
            return;
        }
        let op = WriteOp::Update {
            rtype,
            id,
            resource: r,
            if_match: None,
        };
        let op_bytes = op_bytes(&op);
        if !ops.is_empty() && (ops.len() >= LOAD_BATCH_OPS || bytes + op_bytes > LOAD_BATCH_BYTES_MAX) {
            let batch = std::mem::replace(&mut ops, Vec::with_capacity(LOAD_BATCH_OPS));
            bytes = 0;
            if out.blocking_send(Ok(batch)).is_err() {
                return;
            }
        }
        ops.push(op);
        bytes += op_bytes;
    }
    let _ = out.blocking_send(Ok(ops));
}

/// Write one batch, retrying with backoff while the cluster cannot commit it
/// ([`ProposeError::Unavailable`]: no leader, no quorum, not committed in time)
/// until [`LOAD_RETRY_DEADLINE`]. A failed attempt may still have committed,
/// so a retry (like a resumed load) sends only what this node does not hold
/// yet, as creates: a resource the earlier attempt did write after all is
/// refused as already there, which counts as written, so nothing is written
/// twice. Returns the number of resources written, or None if the server is
/// shutting down.
async fn write_batch(app: &App, ops: Vec<WriteOp>, resuming: bool) -> Result<Option<usize>, DemoError> {
    let started = Instant::now();
    let mut wait = LOAD_RETRY_WAIT_FIRST;
    let mut attempts = 0;
    let mut again = resuming;
    loop {
        if app.stopping.load(Ordering::Acquire) {
            return Ok(None);
        }
        attempts += 1;
        let batch = if again {
            missing_only(app, ops.clone())?.into_iter().map(as_create).collect()
        } else {
            ops.clone()
        };
        let why = match submit(app, batch, again).await {
            Ok(n) => return Ok(Some(n)),
            Err(DemoError::Propose(ProposeError::Unavailable(why))) => why,
            Err(DemoError::Propose(ProposeError::Stopped)) if app.stopping.load(Ordering::Acquire) => return Ok(None),
            Err(e) => return Err(e),
        };
        if started.elapsed() + wait > LOAD_RETRY_DEADLINE {
            return Err(DemoError::GaveUp {
                attempts,
                secs: started.elapsed().as_secs(),
                why,
            });
        }
        tracing::warn!(
            attempt = attempts,
            resources = ops.len(),
            retry_in_ms = wait.as_millis() as u64,
            reason = %why,
            "demo load: a batch was not committed; retrying it (what it did write is not written twice)"
        );
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if app.stopping.load(Ordering::Acquire) {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(100).min(until - Instant::now())).await;
        }
        wait = (wait * 2).min(LOAD_RETRY_WAIT_MAX);
        again = true;
    }
}

/// The op as a create of the same resource at the same id, which the store
/// refuses if the resource exists (where an update would write a new version).
fn as_create(op: WriteOp) -> WriteOp {
    match op {
        WriteOp::Update {
            rtype, id, resource, ..
        } => WriteOp::Create {
            rtype,
            id,
            resource,
            if_none_exist: None,
        },
        other => other,
    }
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

/// Apply one batch and return how many resources it wrote; on a refusal,
/// name the resource refused. With `existing_ok`, a create refused because
/// its resource exists is not an error (an earlier attempt wrote it).
async fn submit(app: &App, ops: Vec<WriteOp>, existing_ok: bool) -> Result<usize, DemoError> {
    let mut n = ops.len();
    if n == 0 {
        return Ok(0);
    }
    // The command takes the ops; keep only what an error message needs.
    let keys: Vec<(String, String)> = ops
        .iter()
        .map(|op| (op.rtype().to_string(), op.id().to_string()))
        .collect();
    let cmd = Command {
        references: Default::default(),
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
                if existing_ok && already_exists(&rej, &rtype, &id) {
                    n -= 1;
                    continue;
                }
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

/// The store's refusal of a create whose resource exists.
fn already_exists(rej: &hale_store::Rejection, rtype: &str, id: &str) -> bool {
    let text = format!("{rtype}/{id} already exists");
    rej.kind == RejectKind::Conflict
        && rej
            .issues
            .iter()
            .any(|i| i.code == IssueCode::Duplicate && i.diagnostics == text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(ops: Vec<WriteOp>) -> Command {
        Command {
            references: Default::default(),
            time_ms: 1,
            actor: Actor {
                user: "demo-loader".into(),
                role: "service".into(),
            },
            kind: CommandKind::Batch(ops),
        }
    }

    fn org(id: &str) -> WriteOp {
        WriteOp::Update {
            rtype: "Organization".into(),
            id: id.into(),
            resource: serde_json::json!({"resourceType": "Organization", "id": id, "name": "Test Board"}),
            if_match: None,
        }
    }

    /// A retried batch (creates) of what an earlier attempt wrote is refused as
    /// "already exists", which the loader recognises; anything else is not.
    #[test]
    fn a_retried_create_of_a_written_resource_is_recognised_as_already_there() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = hale_store::StateMachine::open(dir.path()).unwrap();
        let first = command(vec![org("org-a")]);
        sm.apply(&[(1, &first)]).unwrap();
        let retry = command(vec![as_create(org("org-a")), as_create(org("org-b"))]);
        let applied = sm.apply(&[(2, &retry)]).unwrap();
        let Applied::Ops(results) = &applied[0] else {
            panic!("a batch applies as ops: {applied:?}")
        };
        let rej = results[0].as_ref().expect_err("org-a exists");
        assert!(already_exists(rej, "Organization", "org-a"), "{rej:?}");
        assert!(!already_exists(rej, "Organization", "org-b"));
        assert!(results[1].is_ok(), "org-b is new: {:?}", results[1]);
    }

    #[test]
    fn an_op_counts_its_encoded_bytes_towards_the_batch_bound() {
        let op = org("org-a");
        assert_eq!(op_bytes(&op), serde_json::to_vec(&op).unwrap().len() + 1);
    }
}
