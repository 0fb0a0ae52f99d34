//! FHIR Bulk Data Access (IG v2) `$export`: system (`/$export`), all
//! patients (`/Patient/$export`) and a group's members (`/Group/{id}/$export`).
//!
//! DESIGN: the asynchronous request pattern. A kick-off checks the request,
//! starts a job and answers 202 with `Content-Location` at once; the job
//! writes NDJSON files under `{data}/bulk/{job}/` from one store snapshot
//! ([`hale_store::export::Snapshot`], so every file shows the same moment,
//! the manifest's `transactionTime`), on a blocking thread of its own. The
//! status URL answers 202 with `X-Progress` and `Retry-After` while it runs,
//! then 200 with the manifest; the files are served behind the same bearer
//! tokens, to the user who started the job (or an administrator), and `DELETE`
//! on the status URL cancels the job and removes its files.
//!
//! Jobs are node-local and not replicated: they are reads, and a job's files
//! sit on the node that wrote them. A restart forgets its jobs and removes
//! their files. Everything is bounded: jobs running at once, jobs kept, how
//! long a finished job is kept, resources per file, a group's members.
//!
//! What `_since` means: resources whose `meta.lastUpdated` is after it. A
//! write is stamped when its node accepts it and applied when the cluster
//! commits it, so a write in flight at `transactionTime` can carry an earlier
//! stamp than that yet not be in the snapshot; a client syncing by `_since`
//! should pass a time a little before the last `transactionTime` (the
//! overlap is harmless: every resource carries its id).
//!
//! Architecture Invariant: this module knows jobs, files and the wire; which
//! resources an export holds is the store's (`hale_store::export`), and it
//! never writes the store.

use crate::auth::Principal;
use crate::config::Role;
use crate::rest::{query_pairs, Ctx};
use crate::wire::{self, json_response, FhirError};
use crate::{now_ms, App};
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hale_fhir::{IssueCode, ResourceType};
use hale_store::export::{Flow, Members, Snapshot};
use hale_store::query::Current;
use hale_store::AuditAction;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Export jobs running at once; a kick-off beyond it gets 429.
pub const JOBS_RUNNING_MAX: usize = 2;
/// Jobs (running or finished) kept at once; the oldest finished one goes first.
pub const JOBS_KEPT_MAX: usize = 16;
/// How long a finished job's files are kept.
pub const JOB_KEEP_MS: i64 = 24 * 3600 * 1000;
/// Resources per NDJSON file.
pub const FILE_RESOURCES_MAX: u64 = 100_000;
/// Members of a group exported at once.
pub const GROUP_MEMBERS_MAX: usize = 1_000_000;
/// What a client is told to wait between polls, seconds.
const POLL_RETRY_AFTER_S: u64 = 2;
/// What a client is told to wait when too many exports run, seconds.
const BUSY_RETRY_AFTER_S: u64 = 30;
/// Bytes per chunk when serving a file.
const FILE_CHUNK_BYTES: usize = 256 * 1024;

const NDJSON: &str = "application/fhir+ndjson";
const OUTPUT_FORMATS: &[&str] = &["application/fhir+ndjson", "application/ndjson", "ndjson"];

/// The export jobs of this node.
pub struct BulkJobs {
    dir: PathBuf,
    jobs: Mutex<HashMap<String, Arc<Job>>>,
}

struct Job {
    id: String,
    owner: Principal,
    /// The kick-off request URL, for the manifest.
    request: String,
    created_ms: i64,
    cancelled: AtomicBool,
    /// Resources written so far.
    written: AtomicU64,
    state: Mutex<JobState>,
}

enum JobState {
    Running {
        rtype: Option<ResourceType>,
    },
    Done {
        manifest: Value,
        files: BTreeSet<String>,
        finished_ms: i64,
    },
    Failed {
        why: String,
        finished_ms: i64,
    },
}

/// What one job exports.
struct Plan {
    types: Vec<ResourceType>,
    members: Level,
    since_ms: Option<i64>,
}

enum Level {
    System,
    AllPatients,
    Group(String),
}

impl BulkJobs {
    /// The jobs of a node whose data directory is `data`. Files left by jobs
    /// of an earlier run are removed: jobs do not outlive their process.
    pub fn new(data: &Path) -> BulkJobs {
        let dir = data.join("bulk");
        if dir.exists() {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => tracing::info!(dir = %dir.display(), "removed bulk export files left by an earlier run"),
                Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot remove old bulk export files"),
            }
        }
        BulkJobs {
            dir,
            jobs: Mutex::new(HashMap::new()),
        }
    }

    fn job_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Forget finished jobs past [`JOB_KEEP_MS`] and remove their files.
    fn expire(&self, now: i64) {
        let gone: Vec<String> = {
            let mut jobs = self.jobs.lock();
            let old: Vec<String> = jobs
                .values()
                .filter(|j| j.finished_ms().is_some_and(|f| now - f > JOB_KEEP_MS))
                .map(|j| j.id.clone())
                .collect();
            for id in &old {
                jobs.remove(id);
            }
            old
        };
        for id in gone {
            let _ = std::fs::remove_dir_all(self.job_dir(&id));
        }
    }
}

impl Job {
    fn finished_ms(&self) -> Option<i64> {
        match &*self.state.lock() {
            JobState::Running { .. } => None,
            JobState::Done { finished_ms, .. } | JobState::Failed { finished_ms, .. } => Some(*finished_ms),
        }
    }
}

fn forbidden(msg: impl Into<String>) -> FhirError {
    FhirError::new(StatusCode::FORBIDDEN, IssueCode::Forbidden, msg)
}

/// Who may start an export: every record of every patient leaves the
/// server, so only systems (service) and administrators.
fn may_export(p: &Principal) -> Result<(), FhirError> {
    // A patient-context token sees one patient's compartment; a bulk export
    // is many patients' records (access.rs), whatever its role.
    if let Some(own) = &p.patient {
        return Err(forbidden(format!(
            "this token is for Patient/{own} and may not start a bulk export: that needs a service or admin token without a patient context"
        )));
    }
    match p.role {
        Role::Admin | Role::Service => Ok(()),
        _ => Err(forbidden(format!(
            "user '{}' with role '{}' may not start a bulk export: that needs a service or admin token",
            p.user,
            p.role.as_str()
        ))),
    }
}

/// Who may poll, download or cancel a job: whoever started it, or an administrator.
fn may_see(p: &Principal, job: &Job) -> Result<(), FhirError> {
    if p.user == job.owner.user || p.role == Role::Admin {
        return Ok(());
    }
    Err(forbidden(format!(
        "export job {} belongs to user '{}'; only they or an administrator may see it",
        job.id, job.owner.user
    )))
}

impl Ctx<'_> {
    /// `GET [base]/$export`, `GET [base]/Patient/$export`, `GET [base]/Group/{id}/$export`.
    pub(crate) async fn export_kickoff(
        &self,
        group: Option<&str>,
        patients: bool,
        path: &str,
        q: &str,
    ) -> Result<Response, FhirError> {
        may_export(self.principal)?;
        check_kickoff_headers(self.headers)?;
        let level = match (group, patients) {
            (Some(g), _) => Level::Group(g.to_string()),
            (None, true) => Level::AllPatients,
            (None, false) => Level::System,
        };
        let plan = parse_plan(level, q)?;
        if let Level::Group(g) = &plan.members {
            match self.app.reader.with(|c| hale_store::query::read(c, "Group", g))? {
                Some(Current::Live(_)) => {}
                _ => return Err(FhirError::not_found(format!("Group/{g} does not exist"))),
            }
        }
        let jobs = &self.app.bulk;
        let now = now_ms();
        jobs.expire(now);
        let id = uuid::Uuid::new_v4().simple().to_string();
        let job = {
            let mut all = jobs.jobs.lock();
            let running = all.values().filter(|j| j.finished_ms().is_none()).count();
            if running >= JOBS_RUNNING_MAX {
                let mut resp = FhirError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    IssueCode::Transient,
                    format!("{running} exports are running, the most this server runs at once; try again when one has finished"),
                )
                .into_response();
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(BUSY_RETRY_AFTER_S));
                return Ok(resp);
            }
            if all.len() >= JOBS_KEPT_MAX {
                // Make room: the oldest finished job goes.
                let oldest = all
                    .values()
                    .filter_map(|j| j.finished_ms().map(|f| (f, j.id.clone())))
                    .min();
                match oldest {
                    Some((_, old)) => {
                        all.remove(&old);
                        let _ = std::fs::remove_dir_all(jobs.job_dir(&old));
                    }
                    None => {
                        return Err(FhirError::new(
                            StatusCode::TOO_MANY_REQUESTS,
                            IssueCode::Transient,
                            "too many exports are kept; delete finished ones (DELETE on their status URL) first",
                        ))
                    }
                }
            }
            let job = Arc::new(Job {
                id: id.clone(),
                owner: self.principal.clone(),
                request: if q.is_empty() {
                    format!("{}/{path}", self.base)
                } else {
                    format!("{}/{path}?{q}", self.base)
                },
                created_ms: now,
                cancelled: AtomicBool::new(false),
                written: AtomicU64::new(0),
                state: Mutex::new(JobState::Running { rtype: None }),
            });
            all.insert(id.clone(), job.clone());
            job
        };
        let (audit_rt, audit_id) = match &plan.members {
            Level::Group(g) => (ResourceType::Group, Some(g.clone())),
            _ => (ResourceType::Patient, None),
        };
        self.audit(
            AuditAction::Read,
            audit_rt,
            audit_id.as_deref(),
            None,
            0,
            format!(
                "bulk export {id} started: GET /{path}{}{q}",
                if q.is_empty() { "" } else { "?" }
            ),
        )
        .await;
        spawn_job(self.app, job, plan, self.base.clone(), audit_rt, audit_id);
        let status_url = format!("{}/$export-status/{id}", self.base);
        let oo = hale_fhir::outcome::operation_outcome(&[hale_fhir::Issue::information(format!(
            "export {id} started; poll {status_url}"
        ))]);
        let mut resp = json_response(StatusCode::ACCEPTED, oo.to_string());
        if let Ok(v) = HeaderValue::from_str(&status_url) {
            resp.headers_mut().insert(header::CONTENT_LOCATION, v);
        }
        Ok(resp)
    }

    /// `GET [base]/$export-status/{job}`.
    pub(crate) fn export_status(&self, id: &str) -> Result<Response, FhirError> {
        let app = self.app;
        app.bulk.expire(now_ms());
        let job = find_job(app, id)?;
        may_see(self.principal, &job)?;
        let state = job.state.lock();
        match &*state {
            JobState::Running { rtype } => {
                let written = job.written.load(Ordering::Relaxed);
                let progress = match rtype {
                    Some(t) => format!("{written} resources written; now {t}"),
                    None => format!("{written} resources written"),
                };
                let mut resp = Response::new(Body::empty());
                *resp.status_mut() = StatusCode::ACCEPTED;
                let h = resp.headers_mut();
                if let Ok(v) = HeaderValue::from_str(&progress) {
                    h.insert("x-progress", v);
                }
                h.insert(header::RETRY_AFTER, HeaderValue::from(POLL_RETRY_AFTER_S));
                Ok(resp)
            }
            JobState::Done {
                manifest, finished_ms, ..
            } => {
                let mut resp = Response::new(Body::from(manifest.to_string()));
                let h = resp.headers_mut();
                h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                if let Ok(v) = HeaderValue::from_str(&wire::http_date(finished_ms + JOB_KEEP_MS)) {
                    h.insert(header::EXPIRES, v);
                }
                Ok(resp)
            }
            JobState::Failed { why, .. } => Err(FhirError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                IssueCode::Exception,
                format!("export {id} failed: {why}"),
            )),
        }
    }

    /// `DELETE [base]/$export-status/{job}`: cancel the job and remove its files.
    pub(crate) async fn export_cancel(&self, id: &str) -> Result<Response, FhirError> {
        let app = self.app;
        let job = find_job(app, id)?;
        may_see(self.principal, &job)?;
        job.cancelled.store(true, Ordering::Release);
        app.bulk.jobs.lock().remove(id);
        if job.finished_ms().is_some() {
            // A running job removes its own directory when it sees the flag.
            let dir = app.bulk.job_dir(id);
            tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir))
                .await
                .map_err(|e| FhirError::internal(format!("removing export {id}: {e}")))?
                .or_else(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .map_err(|e| FhirError::internal(format!("cannot remove the files of export {id}: {e}")))?;
        }
        let oo = hale_fhir::outcome::operation_outcome(&[hale_fhir::Issue::information(format!(
            "export {id} cancelled and its files removed"
        ))]);
        Ok(json_response(StatusCode::ACCEPTED, oo.to_string()))
    }

    /// `GET [base]/$export-file/{job}/{file}`: one NDJSON file of a finished job.
    pub(crate) async fn export_file(&self, id: &str, file: &str) -> Result<Response, FhirError> {
        let app = self.app;
        let job = find_job(app, id)?;
        may_see(self.principal, &job)?;
        let known = match &*job.state.lock() {
            JobState::Done { files, .. } => files.contains(file),
            _ => false,
        };
        if !known {
            return Err(FhirError::not_found(format!("export {id} has no file '{file}'")));
        }
        let path = app.bulk.job_dir(id).join(file);
        let f = tokio::fs::File::open(&path)
            .await
            .map_err(|e| FhirError::not_found(format!("export {id}: file '{file}' cannot be read: {e}")))?;
        let len = f.metadata().await.map(|m| m.len()).ok();
        let stream = futures::stream::unfold(f, |mut f| async move {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; FILE_CHUNK_BYTES];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), f))
                }
                Err(e) => Some((Err(e), f)),
            }
        });
        let mut resp = Response::new(Body::from_stream(stream));
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
        if let Some(len) = len {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        Ok(resp)
    }
}

fn find_job(app: &App, id: &str) -> Result<Arc<Job>, FhirError> {
    app.bulk.jobs.lock().get(id).cloned().ok_or_else(|| {
        FhirError::not_found(format!(
            "there is no export {id} on this node (it finished more than a day ago, was cancelled, or the node restarted)"
        ))
    })
}

/// The kick-off headers the IG requires: `Prefer: respond-async`, and an
/// `Accept` that allows FHIR JSON (for the OperationOutcome of an error).
fn check_kickoff_headers(h: &HeaderMap) -> Result<(), FhirError> {
    let prefer = h
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("respond-async"));
    if !prefer {
        return Err(FhirError::bad_request(
            "a bulk export runs asynchronously: send the header 'Prefer: respond-async'",
        )
        .at("Prefer"));
    }
    if let Some(accept) = h.get(header::ACCEPT).and_then(|v| v.to_str().ok()) {
        let ok = accept.split(',').any(|t| {
            let t = t.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            t.is_empty()
                || matches!(
                    t.as_str(),
                    "application/fhir+json" | "application/json" | "*/*" | "application/*"
                )
        });
        if !ok {
            return Err(FhirError::new(
                StatusCode::NOT_ACCEPTABLE,
                IssueCode::NotSupported,
                format!("Accept '{accept}': a bulk export kick-off answers application/fhir+json"),
            ));
        }
    }
    Ok(())
}

/// The kick-off's parameters: `_outputFormat`, `_since`, `_type`. Anything
/// else is refused by name rather than ignored.
fn parse_plan(members: Level, q: &str) -> Result<Plan, FhirError> {
    let mut types: Option<Vec<ResourceType>> = None;
    let mut since_ms = None;
    for (k, v) in query_pairs(q) {
        match k.as_str() {
            "_outputFormat" => {
                if !OUTPUT_FORMATS.contains(&v.as_str()) {
                    return Err(FhirError::bad_request(format!(
                        "_outputFormat '{v}' is not supported; this server writes {}",
                        OUTPUT_FORMATS.join(", ")
                    ))
                    .at("_outputFormat"));
                }
            }
            "_since" => {
                let (lo, _) = hale_fhir::date::parse_range_ms(&v).ok_or_else(|| {
                    FhirError::bad_request(format!(
                        "_since '{v}' is not a FHIR instant (for example 2026-12-01T09:30:00Z)"
                    ))
                    .at("_since")
                })?;
                since_ms = Some(lo);
            }
            "_type" => {
                let list = types.get_or_insert_with(Vec::new);
                for t in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    let rt: ResourceType = t.parse().map_err(|_| {
                        FhirError::bad_request(format!("_type: '{t}' is not a FHIR R4 resource type")).at("_type")
                    })?;
                    if !list.contains(&rt) {
                        list.push(rt);
                    }
                }
            }
            "_typeFilter" | "_elements" | "patient" | "includeAssociatedData" => {
                return Err(FhirError::new(
                    StatusCode::BAD_REQUEST,
                    IssueCode::NotSupported,
                    format!("this server does not support the $export parameter '{k}'; it supports _outputFormat, _since and _type"),
                )
                .at(k.as_str()))
            }
            other => {
                return Err(FhirError::bad_request(format!(
                    "'{other}' is not a parameter of $export; this server supports _outputFormat, _since and _type"
                ))
                .at(other))
            }
        }
    }
    let types = match types {
        Some(t) if t.is_empty() => return Err(FhirError::bad_request("_type names no resource type").at("_type")),
        Some(t) => t,
        // The audit trail is the server's record of who saw what, not part of
        // the data; it is exported when asked for by name.
        None => ResourceType::ALL
            .iter()
            .copied()
            .filter(|t| *t != ResourceType::AuditEvent)
            .filter(|t| match members {
                Level::System => true,
                _ => *t == ResourceType::Patient || !hale_fhir::search::patient_compartment(*t).is_empty(),
            })
            .collect(),
    };
    Ok(Plan {
        types,
        members,
        since_ms,
    })
}

fn spawn_job(app: &App, job: Arc<Job>, plan: Plan, base: String, audit_rt: ResourceType, audit_id: Option<String>) {
    let data = app.cfg.data.clone();
    let dir = app.bulk.job_dir(&job.id);
    let requires_token = !app.cfg.auth.open_access;
    let audit = app.audit.clone();
    tokio::spawn(async move {
        let j = job.clone();
        let d = dir.clone();
        let ran = tokio::task::spawn_blocking(move || run_job(&data, &d, &j, &plan, &base, requires_token)).await;
        let outcome = match ran {
            Ok(r) => r,
            Err(e) => Err(format!("the export task stopped: {e}")),
        };
        let finished_ms = now_ms();
        if job.cancelled.load(Ordering::Acquire) {
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
            tracing::info!(job = %job.id, "bulk export cancelled; its files are removed");
            return;
        }
        let written = job.written.load(Ordering::Relaxed);
        let (detail, code) = match &outcome {
            Ok(_) => (format!("bulk export {} finished: {written} resources", job.id), 0),
            Err(why) => (
                format!("bulk export {} failed after {written} resources: {why}", job.id),
                8,
            ),
        };
        audit
            .record(hale_store::AuditRecord {
                purpose: None,
                time_ms: finished_ms,
                actor: job.owner.actor(),
                action: AuditAction::Read,
                rtype: audit_rt.as_str().into(),
                id: audit_id,
                patient: None,
                outcome: code,
                detail,
            })
            .await;
        let mut state = job.state.lock();
        *state = match outcome {
            Ok((manifest, files)) => {
                tracing::info!(job = %job.id, resources = written, "bulk export finished");
                JobState::Done {
                    manifest,
                    files,
                    finished_ms,
                }
            }
            Err(why) => {
                tracing::warn!(job = %job.id, error = %why, "bulk export failed");
                JobState::Failed { why, finished_ms }
            }
        };
    });
}

/// Write the job's files; return the manifest and the file names.
fn run_job(
    data: &Path,
    dir: &Path,
    job: &Job,
    plan: &Plan,
    base: &str,
    requires_token: bool,
) -> Result<(Value, BTreeSet<String>), String> {
    let transaction_ms = now_ms();
    let snap = Snapshot::open(data).map_err(|e| format!("cannot read the store: {e}"))?;
    let members = match &plan.members {
        Level::System => Members::All,
        Level::AllPatients => Members::AnyPatient,
        Level::Group(g) => Members::Patients(group_patients(&snap, g)?),
    };
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut output = Vec::new();
    let mut files = BTreeSet::new();
    for &rt in &plan.types {
        if job.cancelled.load(Ordering::Acquire) {
            return Err("cancelled".into());
        }
        if let JobState::Running { rtype } = &mut *job.state.lock() {
            *rtype = Some(rt);
        }
        let mut part = 0u32;
        let mut in_file = 0u64;
        let mut out: Option<(String, std::io::BufWriter<std::fs::File>)> = None;
        let mut finished: Vec<(String, u64)> = Vec::new();
        let io = |e: std::io::Error| format!("writing the {rt} file: {e}");
        snap.for_each(rt, &members, plan.since_ms, |json| {
            if job.cancelled.load(Ordering::Relaxed) {
                return Ok(Flow::Stop);
            }
            if out.is_none() || in_file == FILE_RESOURCES_MAX {
                if let Some((name, mut w)) = out.take() {
                    w.flush()?;
                    finished.push((name, in_file));
                }
                part += 1;
                in_file = 0;
                let name = format!("{rt}-{part}.ndjson");
                let f = std::fs::File::create(dir.join(&name))?;
                out = Some((name, std::io::BufWriter::with_capacity(1 << 20, f)));
            }
            let (_, w) = out.as_mut().expect("opened above");
            w.write_all(json.as_bytes())?;
            w.write_all(b"\n")?;
            in_file += 1;
            job.written.fetch_add(1, Ordering::Relaxed);
            Ok(Flow::Continue)
        })
        .map_err(|e| match e {
            hale_store::StoreError::Io(e) => io(e),
            e => format!("reading {rt}: {e}"),
        })?;
        if let Some((name, mut w)) = out.take() {
            w.flush().map_err(io)?;
            w.into_inner().map_err(|e| io(e.into_error()))?.sync_all().map_err(io)?;
            finished.push((name, in_file));
        }
        for (name, count) in finished {
            output.push(json!({
                "type": rt.as_str(),
                "url": format!("{base}/$export-file/{}/{name}", job.id),
                "count": count,
            }));
            files.insert(name);
        }
    }
    if job.cancelled.load(Ordering::Acquire) {
        return Err("cancelled".into());
    }
    let manifest = json!({
        "transactionTime": wire::instant(transaction_ms),
        "request": job.request,
        "requiresAccessToken": requires_token,
        "output": output,
        "error": [],
    });
    debug_assert!(job.created_ms <= transaction_ms);
    Ok((manifest, files))
}

/// The patients a group holds (`Group.member.entity` references to Patient).
fn group_patients(snap: &Snapshot, id: &str) -> Result<Vec<String>, String> {
    let group = match snap.read("Group", id) {
        Ok(Some(Current::Live(f))) => f,
        Ok(_) => return Err(format!("Group/{id} no longer exists")),
        Err(e) => return Err(format!("cannot read Group/{id}: {e}")),
    };
    let v: Value = serde_json::from_str(group.json.as_deref().unwrap_or("{}"))
        .map_err(|e| format!("Group/{id} is not JSON: {e}"))?;
    let mut ids = BTreeSet::new();
    for m in v.get("member").and_then(Value::as_array).into_iter().flatten() {
        if m.get("inactive").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        if let Some(pid) = m
            .pointer("/entity/reference")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("Patient/"))
        {
            ids.insert(pid.to_string());
        }
    }
    if ids.len() > GROUP_MEMBERS_MAX {
        return Err(format!(
            "Group/{id} has {} patient members; an export takes at most {GROUP_MEMBERS_MAX}",
            ids.len()
        ));
    }
    Ok(ids.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(q: &str) -> Result<Vec<String>, String> {
        parse_plan(Level::System, q)
            .map(|p| p.types.iter().map(|t| t.to_string()).collect())
            .map_err(|e| {
                e.outcome_json()["issue"][0]["diagnostics"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
    }

    #[test]
    fn kickoff_parameters() {
        assert_eq!(plan("_type=Patient,Observation").unwrap(), ["Patient", "Observation"]);
        assert!(!plan("").unwrap().contains(&"AuditEvent".to_string()));
        assert_eq!(plan("_type=AuditEvent").unwrap(), ["AuditEvent"]);
        assert!(plan("_type=Patient&_outputFormat=application%2Ffhir%2Bndjson").is_ok());
        assert!(plan("_outputFormat=text%2Fcsv").unwrap_err().contains("_outputFormat"));
        assert!(plan("_type=Patiant").unwrap_err().contains("Patiant"));
        assert!(plan("_since=yesterday").unwrap_err().contains("_since"));
        assert!(plan("_typeFilter=Patient%3Fgender%3Dmale")
            .unwrap_err()
            .contains("_typeFilter"));
        assert!(plan("_elements=id").unwrap_err().contains("_elements"));
        assert!(plan("foo=bar").unwrap_err().contains("'foo'"));
    }

    #[test]
    fn patient_level_takes_compartment_types_only() {
        let p = parse_plan(Level::AllPatients, "").unwrap();
        assert!(p.types.contains(&ResourceType::Patient));
        assert!(p.types.contains(&ResourceType::Observation));
        assert!(!p.types.contains(&ResourceType::Organization));
        assert!(!p.types.contains(&ResourceType::AuditEvent));
    }
}
