//! Offline writes on the wire: a node that cannot reach a quorum keeps
//! accepting the writes a cut-off site needs, into its site journal
//! (`hale-journal`), and replays them through the leader when it can.
//!
//! Architecture invariant: this module decides *whether* a write goes to the
//! journal and how it looks on the wire (202, `X-Hale-Sync`, the tentative
//! version); the journal file is `hale-journal`'s and the rules at replay are
//! `hale_store::sync`'s. Nothing here touches the replicated store except by
//! proposing `CommandKind::Replay`.
//!
//! - Only clients that send `X-Hale-Offline: accept` get this; others keep the
//!   503, so no third-party system mistakes "saved at the site" for "committed".
//! - A write is journalled when the node is cut off (`RaftNode::cut_off`), when
//!   anything is already pending (strict order per site), or when the cluster
//!   answered 503 (including "may still commit": replay is idempotent).
//! - One drainer per node replays the journal in order, in batches of at most
//!   `REPLAY_BATCH_ENTRIES_MAX` entries, one batch in flight, with a pause
//!   between batches so live traffic is not starved.

use crate::rest::Ctx;
use crate::wire::{json_response, FhirError};
use crate::App;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hale_fhir::{Issue, IssueCode};
use hale_journal::{Journal, JournalError};
use hale_store::apply::Applied;
use hale_store::command::{Base, Command, CommandKind, Policy, WriteOp};
use hale_store::query::{self, Current};
use hale_store::sync::{self, Outcome, REPLAY_BATCH_ENTRIES_MAX};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const OFFLINE_HEADER: &str = "x-hale-offline";
/// Bytes of journal entries in one replay command (below the log entry bound).
pub const DRAIN_BATCH_BYTES_MAX: usize = 192 * 1024;
/// How often an idle drainer looks for work.
pub const DRAIN_IDLE_MS: u64 = 200;
/// Pause between replay batches, so live writes get the leader too.
pub const DRAIN_PAUSE_MS: u64 = 5;
/// Pause after a failed replay before trying again.
pub const DRAIN_RETRY_MS: u64 = 500;
/// Entries `GET /sync/journal` lists at most.
pub const LIST_ENTRIES_MAX: usize = 1_000;

/// Writes waiting for the journal's group commit; past it, 503.
pub const APPEND_QUEUE_MAX: usize = 4_096;
/// Writes committed together in one journal transaction (one fsync).
pub const APPEND_GROUP_MAX: usize = 256;

type AppendReply = tokio::sync::oneshot::Sender<Result<hale_journal::Accepted, JournalError>>;

/// This node's journal and what the hot paths need to know about it cheaply.
pub struct Offline {
    pub journal: Arc<Journal>,
    /// To the group-commit thread: writes that arrive together share one fsync.
    writer: std::sync::mpsc::SyncSender<(hale_journal::NewEntry, AppendReply)>,
    /// Highest log index at which a replayed entry committed: until this node
    /// has applied it, the entry's tentative version is still what it shows.
    settled_index: AtomicU64,
    /// Writes saved in the journal since start.
    pub accepted: AtomicU64,
    /// Entries replayed (committed or task) since start.
    pub drained: AtomicU64,
    /// Entries the leader refused (a gap or a broken chain): an alarm.
    pub refused: AtomicU64,
}

impl Offline {
    pub fn open(journal: Journal) -> Result<Offline, JournalError> {
        let journal = Arc::new(journal);
        let writer = spawn_writer(journal.clone())?;
        Ok(Offline {
            journal,
            writer,
            settled_index: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            drained: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    pub fn pending(&self) -> u64 {
        self.journal.pending_count()
    }

    /// Whether a read may have to show a tentative version.
    fn overlay_active(&self, applied: u64) -> bool {
        self.pending() > 0 || self.settled_index.load(Ordering::Acquire) > applied
    }
}

/// The group-commit thread: takes every write queued at the moment, appends
/// them in one transaction, answers each. Ends when the node drops `Offline`.
fn spawn_writer(
    journal: Arc<Journal>,
) -> Result<std::sync::mpsc::SyncSender<(hale_journal::NewEntry, AppendReply)>, JournalError> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<(hale_journal::NewEntry, AppendReply)>(APPEND_QUEUE_MAX);
    std::thread::Builder::new()
        .name("hale-journal".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                while batch.len() < APPEND_GROUP_MAX {
                    match rx.try_recv() {
                        Ok(x) => batch.push(x),
                        Err(_) => break,
                    }
                }
                let (entries, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                match journal.append_batch(entries) {
                    Ok(results) => {
                        for (r, reply) in results.into_iter().zip(replies) {
                            let _ = reply.send(r);
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "the site journal could not be written");
                        let msg = e.to_string();
                        for reply in replies {
                            let _ = reply.send(Err(JournalError::Failed(msg.clone())));
                        }
                    }
                }
            }
        })
        .map_err(|e| JournalError::Failed(format!("cannot start the journal writer: {e}")))?;
    Ok(tx)
}

/// `X-Hale-Offline: accept`, or nothing.
pub fn opted_in(headers: &HeaderMap) -> Result<bool, FhirError> {
    let Some(v) = headers.get(OFFLINE_HEADER) else {
        return Ok(false);
    };
    match v.to_str().unwrap_or("").trim().to_ascii_lowercase().as_str() {
        "accept" => Ok(true),
        "" | "refuse" => Ok(false),
        other => Err(FhirError::bad_request(format!(
            "X-Hale-Offline '{other}' is not understood; send 'accept' to let a cut-off node save the write in its site journal"
        ))
        .at("X-Hale-Offline")),
    }
}

/// The version a client edited, from `If-Match`: committed (`W/"3"`) or
/// tentative at this site (`W/"p12"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Version(u64),
    Pending(u64),
}

pub fn if_match(headers: &HeaderMap) -> Result<Option<Seen>, FhirError> {
    let Some(s) = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let t = s.trim();
    let t = t.strip_prefix("W/").unwrap_or(t).trim_matches('"');
    if let Some(p) = t.strip_prefix('p') {
        if let Ok(seq) = p.parse() {
            return Ok(Some(Seen::Pending(seq)));
        }
    }
    crate::wire::parse_etag(s)
        .map(|v| Some(Seen::Version(v)))
        .ok_or_else(|| FhirError::bad_request(format!("If-Match '{s}' is not an ETag like W/\"3\"")).at("If-Match"))
}

fn precondition(msg: String) -> FhirError {
    FhirError::new(StatusCode::PRECONDITION_FAILED, IssueCode::Conflict, msg)
}

impl Ctx<'_> {
    /// One create or update: committed through the cluster, or, for a client
    /// that opted in, saved in the site journal when the cluster cannot commit.
    pub(crate) async fn write_one(&self, mut op: WriteOp, seen: Option<Seen>) -> Result<Response, FhirError> {
        let opt_in = opted_in(self.headers)?;
        // Patient-level access before the journal too (access.rs).
        self.check_write_audited(&op).await?;
        let off = &self.app.offline;
        if opt_in && (off.pending() > 0 || self.app.raft.cut_off().is_some()) {
            return self.journal_write(op, seen).await;
        }
        if let WriteOp::Update {
            if_match, rtype, id, ..
        } = &mut op
        {
            match seen {
                Some(Seen::Version(v)) => *if_match = Some(v),
                Some(Seen::Pending(p)) => {
                    return Err(precondition(format!(
                        "If-Match W/\"p{p}\" names a version saved at this site while it was cut off; it has been synced since. Read {rtype}/{id} again and edit the current version"
                    )))
                }
                None => {}
            }
        }
        match self.propose(CommandKind::Write(op.clone())).await {
            Ok(applied) => Ok(self.write_response(&crate::rest::single(applied)?)),
            Err(e) if opt_in && e.status == StatusCode::SERVICE_UNAVAILABLE => {
                tracing::warn!(reason = %e.issues.first().map(|i| i.diagnostics.as_str()).unwrap_or(""), "the cluster cannot commit; saving the write in the site journal");
                self.journal_write(op, seen).await
            }
            Err(e) => Err(e),
        }
    }

    async fn journal_write(&self, op: WriteOp, seen: Option<Seen>) -> Result<Response, FhirError> {
        let app = self.app;
        let off = &app.offline;
        let applied = app.proposer.last_applied();
        let (rtype, id) = (op.rtype().to_string(), op.id().to_string());
        let pending = off.journal.pending(&rtype, &id, applied).map_err(journal_error)?;
        let committed: Option<(u64, Value)> = match app.reader.with(|c| query::read(c, &rtype, &id))? {
            Some(Current::Live(f)) => Some((
                f.version,
                serde_json::from_str(f.json.as_deref().unwrap_or("{}")).expect("stored JSON is valid"),
            )),
            _ => None,
        };
        let current: Option<Value> = match &pending {
            Some(p) => Some(serde_json::from_str(&p.json).expect("journal views are JSON")),
            None => committed.as_ref().map(|(_, v)| v.clone()),
        };
        let why_cut_off = app
            .raft
            .cut_off()
            .unwrap_or_else(|| "the data centres did not confirm the write".into());
        let policy = sync::classify(&op, current.as_ref()).map_err(|why| {
            FhirError::unavailable(format!(
                "{why}, and this node cannot reach them ({why_cut_off}). It was not saved; the site journal takes notes, results, observations, arrivals and check-ins, demographic changes, new patients and bookings"
            ))
        })?;
        let base = match &op {
            WriteOp::Create { .. } | WriteOp::Delete { .. } => Base::default(),
            WriteOp::Update { .. } => match (seen, &pending, &committed) {
                (Some(Seen::Pending(s)), Some(p), _) if s == p.seq => Base {
                    version: None,
                    pending_seq: Some(s),
                    seen: current.clone(),
                },
                (Some(Seen::Pending(s)), Some(p), _) => {
                    return Err(precondition(format!(
                        "{rtype}/{id} was changed at this site since version p{s} (now p{})",
                        p.seq
                    )))
                }
                (Some(Seen::Pending(s)), None, _) => {
                    return Err(precondition(format!(
                        "version p{s} of {rtype}/{id} has been synced; read it again and edit the current version"
                    )))
                }
                (Some(Seen::Version(v)), Some(p), _) => {
                    return Err(precondition(format!(
                        "{rtype}/{id} was changed at this site since version {v} (now p{})",
                        p.seq
                    )))
                }
                (Some(Seen::Version(v)), None, Some((cv, _))) if *cv != v => {
                    return Err(precondition(format!("{rtype}/{id} is at version {cv}, not {v}")))
                }
                (_, Some(p), _) => Base {
                    version: None,
                    pending_seq: Some(p.seq),
                    seen: current.clone(),
                },
                (_, None, Some((cv, _))) => Base {
                    version: Some(*cv),
                    pending_seq: None,
                    seen: current.clone(),
                },
                (_, None, None) => Base::default(),
            },
        };
        let resource = match &op {
            WriteOp::Create { resource, .. } | WriteOp::Update { resource, .. } => resource.clone(),
            WriteOp::Delete { .. } => Value::Null,
        };
        // What it refers to must be here (committed or saved at this site).
        let rt: hale_fhir::ResourceType = rtype.parse().map_err(|_| FhirError::bad_request("unknown type"))?;
        for (path, t, rid) in hale_store::apply::local_references(rt, &resource) {
            if t == rtype && rid == id {
                continue;
            }
            let here = matches!(app.reader.with(|c| query::read(c, &t, &rid))?, Some(Current::Live(_)))
                || off.journal.pending(&t, &rid, applied).map_err(journal_error)?.is_some();
            if !here {
                return Err(FhirError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    IssueCode::NotFound,
                    format!("{path} refers to {t}/{rid}, which this site does not hold"),
                )
                .at(path));
            }
        }
        if policy == Policy::Booking {
            self.check_slots_here(rt, &id, &resource, applied)?;
        }
        let patient = if rtype == "Patient" {
            Some(id.clone())
        } else {
            hale_store::apply::local_references(rt, &resource)
                .into_iter()
                .find(|(_, t, _)| t == "Patient")
                .map(|(_, _, i)| i)
        };
        let entry = hale_journal::NewEntry {
            actor: self.principal.actor(),
            recorded_ms: crate::now_ms(),
            policy,
            base,
            op,
            patient,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        off.writer.try_send((entry, tx)).map_err(|_| {
            FhirError::unavailable(format!(
                "the site journal has {APPEND_QUEUE_MAX} writes waiting to be saved; retry in a moment"
            ))
        })?;
        let accepted = rx
            .await
            .map_err(|_| FhirError::internal("the site journal writer stopped"))?
            .map_err(journal_error)?;
        off.accepted.fetch_add(1, Ordering::Relaxed);
        let location = format!("{}/{rtype}/{id}/_history/p{}", self.base, accepted.seq);
        let mut resp = match crate::rest::prefer_return(self.headers) {
            crate::rest::Return::Minimal => Response::new(axum::body::Body::empty()),
            crate::rest::Return::OperationOutcome => json_response(
                StatusCode::ACCEPTED,
                hale_fhir::outcome::operation_outcome(&[Issue::information(format!(
                    "saved at this site as entry {} of its journal; it will be sent to the data centres when they can be reached",
                    accepted.seq
                ))])
                .to_string(),
            ),
            crate::rest::Return::Representation => json_response(StatusCode::ACCEPTED, accepted.view.to_string()),
        };
        *resp.status_mut() = StatusCode::ACCEPTED;
        pending_headers(resp.headers_mut(), accepted.seq);
        if let Ok(v) = HeaderValue::from_str(&location) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        Ok(resp)
    }

    /// A booking made at a cut-off site must not take a slot this site
    /// already sees as taken, here or by another booking saved here.
    fn check_slots_here(
        &self,
        rt: hale_fhir::ResourceType,
        id: &str,
        resource: &Value,
        applied: u64,
    ) -> Result<(), FhirError> {
        let off = &self.app.offline;
        let pending = off
            .journal
            .pending_of_type("Appointment", applied)
            .map_err(journal_error)?;
        for (path, t, slot) in hale_store::apply::local_references(rt, resource) {
            if t != "Slot" {
                continue;
            }
            let busy = match self.app.reader.with(|c| query::read(c, "Slot", &slot))? {
                Some(Current::Live(f)) => {
                    let v: Value = serde_json::from_str(f.json.as_deref().unwrap_or("{}")).expect("stored JSON");
                    v["status"] != "free"
                }
                _ => false,
            };
            let here = pending.iter().any(|(aid, p)| {
                let v: Value = serde_json::from_str(&p.json).unwrap_or_default();
                aid != id
                    && hale_store::apply::HOLDING_STATUSES.contains(&v["status"].as_str().unwrap_or(""))
                    && v["slot"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|r| r["reference"] == format!("Slot/{slot}")))
            });
            if busy || here {
                return Err(FhirError::new(
                    StatusCode::CONFLICT,
                    IssueCode::Conflict,
                    format!("Slot/{slot} is already booked as far as this site knows; choose another slot"),
                )
                .at(path));
            }
        }
        Ok(())
    }

    /// The tentative version of `rtype/id` saved at this site, if any.
    pub(crate) fn pending_version(&self, rtype: &str, id: &str) -> Result<Option<hale_journal::Pending>, FhirError> {
        let off = &self.app.offline;
        let applied = self.app.proposer.last_applied();
        if !off.overlay_active(applied) {
            return Ok(None);
        }
        off.journal.pending(rtype, id, applied).map_err(journal_error)
    }

    /// Tentative versions of `rtype` at this site (latest per id).
    pub(crate) fn pending_of_type(&self, rtype: &str) -> Result<Vec<(String, hale_journal::Pending)>, FhirError> {
        let off = &self.app.offline;
        let applied = self.app.proposer.last_applied();
        if !off.overlay_active(applied) {
            return Ok(Vec::new());
        }
        off.journal.pending_of_type(rtype, applied).map_err(journal_error)
    }
}

pub fn pending_headers(headers: &mut HeaderMap, seq: u64) {
    if let Ok(v) = HeaderValue::from_str(&format!("W/\"p{seq}\"")) {
        headers.insert(header::ETAG, v);
    }
    headers.insert("x-hale-sync", HeaderValue::from_static("pending"));
    if let Ok(v) = HeaderValue::from_str(&seq.to_string()) {
        headers.insert("x-hale-journal-seq", v);
    }
}

fn journal_error(e: JournalError) -> FhirError {
    match e {
        JournalError::TooLarge(_) => FhirError::new(StatusCode::PAYLOAD_TOO_LARGE, IssueCode::TooCostly, e.to_string()),
        e => {
            let mut r = FhirError::unavailable(e.to_string());
            r.issues[0].code = IssueCode::Transient;
            r
        }
    }
}

// ------------------------------------------------------------------ drainer

/// Replay the journal through the leader, in order, while anything is
/// pending. Stops when the node stops.
pub fn spawn_drainer(app: Arc<App>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if app.stopping.load(Ordering::Acquire) {
                return;
            }
            if app.offline.pending() == 0 || app.raft.cut_off().is_some() {
                tokio::time::sleep(Duration::from_millis(DRAIN_IDLE_MS)).await;
                continue;
            }
            match drain_once(&app).await {
                Ok(0) => tokio::time::sleep(Duration::from_millis(DRAIN_IDLE_MS)).await,
                Ok(_) => tokio::time::sleep(Duration::from_millis(DRAIN_PAUSE_MS)).await,
                Err(why) => {
                    tracing::warn!(reason = %why, "site journal replay failed; retrying");
                    tokio::time::sleep(Duration::from_millis(DRAIN_RETRY_MS)).await;
                }
            }
        }
    })
}

/// Send one batch; returns how many entries settled.
pub async fn drain_once(app: &App) -> Result<usize, String> {
    let journal = app.offline.journal.clone();
    let batch =
        tokio::task::spawn_blocking(move || journal.next_batch(REPLAY_BATCH_ENTRIES_MAX, DRAIN_BATCH_BYTES_MAX))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    if batch.is_empty() {
        return Ok(0);
    }
    let n = batch.len();
    let cmd = Command {
        references: app.cfg.references,
        time_ms: crate::now_ms(),
        actor: hale_store::Actor::system(),
        kind: CommandKind::Replay(batch),
    };
    let (index, applied) = app.proposer.propose(cmd).await.map_err(|e| e.to_string())?;
    let Applied::Replayed(receipts) = applied else {
        return Err(format!("the leader answered a replay with {applied:?}"));
    };
    assert_eq!(receipts.len(), n, "one receipt per replayed entry");
    let refused: Vec<String> = receipts
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Refused { reason } => Some(format!("entry {}: {reason}", r.seq)),
            _ => None,
        })
        .collect();
    let settled = receipts
        .iter()
        .filter(|r| !matches!(r.outcome, Outcome::Refused { .. }))
        .count();
    let journal = app.offline.journal.clone();
    let now = crate::now_ms();
    tokio::task::spawn_blocking(move || journal.settle(&receipts, now))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    app.offline.settled_index.fetch_max(index, Ordering::AcqRel);
    app.offline.drained.fetch_add(settled as u64, Ordering::Relaxed);
    if !refused.is_empty() {
        app.offline.refused.store(refused.len() as u64, Ordering::Release);
        tracing::error!(refused = ?refused, "the leader refused site journal entries; replay stops here until an operator looks (hale sync verify)");
        return Err(format!("refused: {}", refused.join("; ")));
    }
    Ok(settled)
}

// ------------------------------------------------------------------ status

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/sync/status", get(status))
        .route("/sync/journal", get(list))
        .route("/sync/verify", get(verify))
        .route("/sync/resend", axum::routing::post(resend))
}

/// `POST /sync/resend`: propose every journal entry again, from the first.
/// Replay is exactly-once, so this changes nothing that has been applied; it
/// is how an operator (or chaos) proves it. Answers how many were sent and
/// how many were new.
async fn resend(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(r) = admin(&app, &headers).await {
        return *r;
    }
    let (mut sent, mut new, mut from) = (0u64, 0u64, 1u64);
    loop {
        let journal = app.offline.journal.clone();
        let batch = match tokio::task::spawn_blocking(move || journal.replays(from, REPLAY_BATCH_ENTRIES_MAX)).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => return FhirError::internal(e.to_string()).into_response(),
            Err(e) => return FhirError::internal(e.to_string()).into_response(),
        };
        let Some(last) = batch.last().map(|e| e.seq) else { break };
        let n = batch.len() as u64;
        let cmd = Command {
            references: app.cfg.references,
            time_ms: crate::now_ms(),
            actor: hale_store::Actor::system(),
            kind: CommandKind::Replay(batch),
        };
        match app.proposer.propose(cmd).await {
            Ok((_, Applied::Replayed(r))) => {
                new += r.iter().filter(|r| !r.duplicate).count() as u64;
            }
            Ok((_, other)) => return FhirError::internal(format!("a replay answered {other:?}")).into_response(),
            Err(e) => return FhirError::unavailable(e.to_string()).into_response(),
        }
        sent += n;
        from = last + 1;
    }
    Json(json!({"node": app.raft.id, "sent": sent, "new": new})).into_response()
}

async fn admin(app: &App, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let p = app
        .auth
        .authenticate(headers)
        .await
        .map_err(|e| Box::new(e.into_response()))?;
    if p.role != crate::config::Role::Admin && p.role != crate::config::Role::Service {
        return Err(FhirError::new(
            StatusCode::FORBIDDEN,
            IssueCode::Forbidden,
            format!(
                "sync status is for the admin or service roles, not '{}'",
                p.role.as_str()
            ),
        )
        .into_response()
        .into());
    }
    Ok(())
}

/// The JSON of `GET /sync/status`.
pub fn status_json(app: &App) -> Result<Value, String> {
    let s = app.offline.journal.stats().map_err(|e| e.to_string())?;
    let now = crate::now_ms();
    let open = app.reader.with(sync::open_tasks).map_err(|e| e.to_string())?;
    let heads = app.reader.with(sync::heads).map_err(|e| e.to_string())?;
    let applied_head = heads
        .iter()
        .find(|(n, _, _, _)| *n == app.raft.id)
        .map(|(_, _, seq, hash)| json!({"seq": seq, "hash": hash}))
        .unwrap_or(json!({"seq": 0, "hash": ""}));
    let leader_contact = app.raft.node_status().millis_since_leader_contact;
    Ok(json!({
        "node": app.raft.id,
        "site": app.offline.journal.site(),
        "cutOff": app.raft.cut_off(),
        "pending": s.pending,
        "pendingBytes": s.pending_bytes,
        "oldestPendingAgeMs": s.oldest_pending_ms.map(|t| (now - t).max(0)),
        "drained": s.committed + s.tasks,
        "committed": s.committed,
        "tasks": s.tasks,
        "refused": app.offline.refused.load(Ordering::Acquire),
        "chainHead": {"seq": s.head_seq, "hash": s.head_hash},
        "committedHead": applied_head,
        "openTasks": open.into_iter().map(|(k, n)| (k, json!(n))).collect::<serde_json::Map<_, _>>(),
        "journals": heads.iter().map(|(n, site, seq, _)| json!({"node": n, "site": site, "seq": seq})).collect::<Vec<_>>(),
        // The site clock against the data centres': the last leader contact, and
        // entries are ordered by (node, seq) only, never by their site time.
        "clock": {"nowMs": now, "millisSinceLeaderContact": leader_contact}
    }))
}

async fn status(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(r) = admin(&app, &headers).await {
        return *r;
    }
    match status_json(&app) {
        Ok(v) => Json(v).into_response(),
        Err(e) => FhirError::internal(e).into_response(),
    }
}

#[derive(serde::Deserialize)]
struct ListQuery {
    status: Option<String>,
    patient: Option<String>,
    limit: Option<usize>,
}

async fn list(State(app): State<Arc<App>>, headers: HeaderMap, Query(q): Query<ListQuery>) -> Response {
    if let Err(r) = admin(&app, &headers).await {
        return *r;
    }
    if let Some(s) = &q.status {
        if !matches!(s.as_str(), "pending" | "committed" | "task") {
            return FhirError::bad_request(format!("status '{s}' is not one of pending, committed, task"))
                .at("status")
                .into_response();
        }
    }
    let patient = q.patient.as_deref().map(|p| p.strip_prefix("Patient/").unwrap_or(p));
    let limit = q.limit.unwrap_or(100).clamp(1, LIST_ENTRIES_MAX);
    match app.offline.journal.list(q.status.as_deref(), patient, limit) {
        Ok(rows) => Json(json!({"node": app.raft.id, "entries": rows})).into_response(),
        Err(e) => FhirError::internal(e.to_string()).into_response(),
    }
}

/// `GET /sync/verify`: this node's journal against the receipts its store holds.
async fn verify(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(r) = admin(&app, &headers).await {
        return *r;
    }
    let node = app.raft.id;
    let receipts = match app.reader.with(|c| sync::receipts(c, node)) {
        Ok(r) => r,
        Err(e) => return FhirError::internal(e.to_string()).into_response(),
    };
    // Receipts for seqs applied more than once would be a primary-key violation
    // in the store; duplicates here can only be repeated versions, counted below.
    let duplicates = receipts.windows(2).filter(|w| w[0].seq == w[1].seq).count();
    match app.offline.journal.verify(&receipts) {
        Ok(v) => Json(json!({
            "node": node,
            "entries": v.entries,
            "receipts": receipts.len(),
            "pending": v.pending,
            "missing": v.missing,
            "duplicate": duplicates,
            "unknown": v.unknown,
            "mismatched": v.mismatched,
            "chainOk": v.chain_ok,
            "chainBrokenAt": v.chain_broken_at,
        }))
        .into_response(),
        Err(e) => FhirError::internal(e.to_string()).into_response(),
    }
}

/// Gauges for `/metrics`.
pub fn gauges(app: &App) -> Vec<(String, &'static str, f64)> {
    let mut out = Vec::new();
    let Ok(s) = app.offline.journal.stats() else { return out };
    let now = crate::now_ms();
    out.push((
        "hale_journal_pending".into(),
        "Writes saved in this node's site journal and not yet replayed.",
        s.pending as f64,
    ));
    out.push((
        "hale_journal_oldest_age_seconds".into(),
        "Age of the oldest write waiting in the site journal (0 when none).",
        s.oldest_pending_ms
            .map(|t| ((now - t).max(0) / 1000) as f64)
            .unwrap_or(0.0),
    ));
    out.push((
        "hale_journal_accepted_total".into(),
        "Writes saved in the site journal since start.",
        app.offline.accepted.load(Ordering::Relaxed) as f64,
    ));
    out.push((
        "hale_journal_drained_total".into(),
        "Site journal entries replayed through the leader since start.",
        app.offline.drained.load(Ordering::Relaxed) as f64,
    ));
    out.push((
        "hale_journal_refused".into(),
        "Site journal entries the leader refused (a gap or a broken chain): an alarm.",
        app.offline.refused.load(Ordering::Relaxed) as f64,
    ));
    if let Ok(open) = app.reader.with(sync::open_tasks) {
        for k in sync::ConflictKind::ALL {
            let n = open.iter().find(|(c, _)| c == k.code()).map(|(_, n)| *n).unwrap_or(0);
            out.push((
                format!("hale_sync_tasks_open{{kind=\"{}\"}}", k.code()),
                "Open sync-conflict Tasks by kind.",
                n as f64,
            ));
        }
    }
    out
}
