//! The FHIR RESTful interactions.

use crate::auth::{authorize, authorize_op, Principal};
use crate::capability::capability_statement;
use crate::wire::{self, json_response, version_headers, BundleWriter, FhirError};
use crate::{bundle, now_ms, App};
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use hale_auth::Op;
use hale_fhir::search::{parse_query, SearchQuery};
use hale_fhir::subset::Subset;
use hale_fhir::validate::validate_resource;
use hale_fhir::{Issue, IssueCode, ResourceType};
use hale_store::apply::Applied;
use hale_store::command::Command;
use hale_store::propose::ProposeError;
use hale_store::query::{self, Current, Found};
use hale_store::{AuditAction, AuditRecord, CommandKind, WriteOp, WriteStatus, Written};
use serde_json::{json, Value};

pub type Handled = (&'static str, Result<Response, FhirError>);

/// Route a request by its path segments.
pub async fn dispatch(app: &App, req: Request) -> Handled {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().trim_matches('/').to_string();
    let segs: Vec<&str> = if path.is_empty() {
        Vec::new()
    } else {
        path.split('/').collect()
    };
    let query = parts.uri.query().unwrap_or("").to_string();
    let method = parts.method.clone();
    let headers = parts.headers;

    // An export's files are NDJSON, and asked for as such.
    let export_file = segs.first() == Some(&"$export-file");
    if let Some(e) = wire::not_acceptable(&headers, &query).filter(|_| !export_file) {
        return ("other", Err(e));
    }
    if segs == ["metadata"] && method == Method::GET {
        let base = base_url(app, &headers);
        let security = crate::smart::capability_security(app).await;
        let cs = capability_statement(&base, &wire::instant(now_ms()), security);
        return ("metadata", Ok(json_response(StatusCode::OK, cs.to_string())));
    }
    // Admission control may have authenticated the request already.
    let authenticated = match parts.extensions.get::<crate::admission::Authenticated>() {
        Some(a) => a.0.clone(),
        None => app.auth.authenticate(&headers).await,
    };
    let principal = match authenticated {
        Ok(p) => p,
        Err(e) => return ("other", Err(e)),
    };
    if let Err(e) = purpose_of_use(&headers) {
        return ("other", Err(e));
    }
    let cx = Ctx {
        app,
        headers: &headers,
        principal: &principal,
        base: base_url(app, &headers),
        gate: Default::default(),
    };

    match (method.clone(), segs.as_slice()) {
        (Method::POST, []) => {
            let body = match read_body(app, body).await {
                Ok(b) => b,
                Err(e) => return ("batch", Err(e)),
            };
            bundle::handle(&cx, body).await
        }
        (Method::POST, ["$backfill"]) => {
            let body = match read_body(app, body).await {
                Ok(b) => b,
                Err(e) => return ("backfill", Err(e)),
            };
            let bundle = match parse_json(&body) {
                Ok(v) => v,
                Err(e) => return ("backfill", Err(e)),
            };
            ("backfill", crate::backfill::handle(&cx, bundle, &query).await)
        }
        (Method::POST, ["Appointment", op @ ("$postpone" | "$rebook")]) => {
            let route = if *op == "$postpone" { "postpone" } else { "rebook" };
            let body = match read_body(app, body).await {
                Ok(b) => b,
                Err(e) => return (route, Err(e)),
            };
            let r = if *op == "$postpone" {
                crate::outage::postpone(&cx, &body, &query).await
            } else {
                crate::rebook::rebook(&cx, &body, &query).await
            };
            (route, r)
        }
        (Method::GET, ["$export"]) => ("bulk-export", cx.export_kickoff(None, false, "$export", &query).await),
        (Method::GET, ["$export-status", id]) => ("bulk-status", cx.export_status(id)),
        (Method::DELETE, ["$export-status", id]) => ("bulk-status", cx.export_cancel(id).await),
        (Method::GET, ["$export-file", id, file]) => ("bulk-file", cx.export_file(id, file).await),
        (m, ["$export" | "$export-status" | "$export-file", ..]) => (
            "other",
            Err(FhirError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                IssueCode::NotSupported,
                format!(
                    "{m} is not allowed on {}: a bulk export is started with GET, its status read with GET and cancelled with DELETE, and its files read with GET",
                    parts.uri.path()
                ),
            )),
        ),
        (Method::GET, ["Basic", id, "$report"]) => ("outage-report", crate::outage::report(&cx, id).await),
        (m, [t, rest @ ..]) => {
            let rt = match resource_type(t) {
                Ok(rt) => rt,
                Err(e) => return ("other", Err(e)),
            };
            if rt == ResourceType::AuditEvent && audit_event_write(m.as_str(), rest) {
                let id = rest.first().copied().filter(|_| rest.len() == 1);
                let action = match m {
                    Method::POST => AuditAction::Create,
                    Method::DELETE => AuditAction::Delete,
                    _ => AuditAction::Update,
                };
                // An attempt on the audit trail is itself worth a row.
                let detail = format!("refused: {m} {}", parts.uri.path());
                cx.audit(action, rt, id, None, 4, detail).await;
                return ("other", Err(audit_events_append_only(m.as_str(), parts.uri.path())));
            }
            match (m, rest) {
                (Method::GET, []) => ("search-type", cx.search(rt, &query).await),
                (Method::POST, ["_search"]) => {
                    let body = match read_body(app, body).await {
                        Ok(b) => b,
                        Err(e) => return ("search-type", Err(e)),
                    };
                    let q = String::from_utf8_lossy(&body).to_string();
                    let q = if query.is_empty() { q } else { format!("{query}&{q}") };
                    ("search-type", cx.search(rt, &q).await)
                }
                (Method::POST, []) => {
                    let body = match read_body(app, body).await {
                        Ok(b) => b,
                        Err(e) => return ("create", Err(e)),
                    };
                    ("create", cx.create(rt, &body).await)
                }
                (Method::PUT, []) if !query.is_empty() => {
                    let body = match read_body(app, body).await {
                        Ok(b) => b,
                        Err(e) => return ("conditional-update", Err(e)),
                    };
                    ("conditional-update", cx.conditional_update(rt, &query, &body).await)
                }
                (Method::DELETE, []) if !query.is_empty() => {
                    ("conditional-delete", cx.conditional_delete(rt, &query).await)
                }
                (Method::PATCH, [id]) if !id.starts_with('$') => {
                    let body = match read_body(app, body).await {
                        Ok(b) => b,
                        Err(e) => return ("patch", Err(e)),
                    };
                    ("patch", cx.patch(rt, id, &body).await)
                }
                (Method::POST, ["$validate"]) | (Method::POST, [_, "$validate"]) => {
                    let id = match rest {
                        [id, _] => Some(*id),
                        _ => None,
                    };
                    let body = match read_body(app, body).await {
                        Ok(b) => b,
                        Err(e) => return ("validate", Err(e)),
                    };
                    ("validate", cx.validate_op(rt, id, &body).await)
                }
                (Method::POST, [id, "$break-glass"]) if rt == ResourceType::Patient => {
                    let body = match read_body(app, body).await {
                        Ok(b) => b,
                        Err(e) => return ("break-glass", Err(e)),
                    };
                    ("break-glass", cx.break_glass(id, &body).await)
                }
                (Method::GET, ["$break-glass"]) if rt == ResourceType::AuditEvent => {
                    ("break-glass-review", cx.break_glass_review(&query).await)
                }
                (Method::POST, [id, "$break-glass-close"]) if rt == ResourceType::AuditEvent => {
                    let body = match read_body(app, body).await {
                        Ok(b) => b,
                        Err(e) => return ("break-glass-review", Err(e)),
                    };
                    ("break-glass-review", cx.break_glass_close(id, &body).await)
                }
                (Method::GET, ["_history"]) => ("history-type", cx.history(rt, None, &query).await),
                (Method::GET, [id]) if !id.starts_with('$') => ("read", cx.read(rt, id, &query).await),
                (Method::PUT, [id]) if !id.starts_with('$') => {
                    let body = match read_body(app, body).await {
                        Ok(b) => b,
                        Err(e) => return ("update", Err(e)),
                    };
                    ("update", cx.update(rt, id, &body).await)
                }
                (Method::DELETE, [id]) if !id.starts_with('$') => ("delete", cx.delete(rt, id).await),
                (Method::GET, [id, "_history"]) => ("history-instance", cx.history(rt, Some(id), &query).await),
                (Method::GET, [id, "_history", vid]) => ("vread", cx.vread(rt, id, vid).await),
                (Method::GET, ["$export"]) if rt == ResourceType::Patient => (
                    "bulk-export",
                    cx.export_kickoff(None, true, "Patient/$export", &query).await,
                ),
                (Method::GET, [id, "$export"]) if rt == ResourceType::Group => (
                    "bulk-export",
                    cx.export_kickoff(Some(id), false, &format!("Group/{id}/$export"), &query)
                        .await,
                ),
                (Method::GET, [id, "$everything"]) if rt == ResourceType::Patient => {
                    ("everything", cx.everything(id, &query).await)
                }
                (Method::GET, [id, t]) if rt == ResourceType::Patient && t.parse::<ResourceType>().is_ok() => {
                    let target: ResourceType = t.parse().expect("checked");
                    ("search-compartment", cx.search_in(target, &query, Some(id)).await)
                }
                // A path this server knows, with a method it does not take there.
                (m, [] | [_] | [_, "_history"] | [_, "_history", _] | [_, "$everything"] | [_, "$validate"]) => {
                    let allowed = match rest {
                        [] => "GET, POST; PUT and DELETE with search parameters (conditional)",
                        ["_history"] | [_, "_history"] | [_, "_history", _] | [_, "$everything"] => "GET",
                        ["$validate"] | [_, "$validate"] => "POST",
                        _ => "GET, PUT, PATCH, DELETE",
                    };
                    (
                        "other",
                        Err(FhirError::new(
                            StatusCode::METHOD_NOT_ALLOWED,
                            IssueCode::NotSupported,
                            format!("{m} is not allowed on {}: use {allowed}", parts.uri.path()),
                        )),
                    )
                }
                (m, _) => (
                    "other",
                    Err(FhirError::new(
                        StatusCode::NOT_FOUND,
                        IssueCode::NotSupported,
                        format!(
                            "{m} {} is not an interaction this server supports; see /metadata",
                            parts.uri.path()
                        ),
                    )),
                ),
            }
        }
        (m, []) => (
            "other",
            Err(FhirError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                IssueCode::NotSupported,
                format!("{m} on the base URL is not supported; POST a batch or transaction Bundle"),
            )),
        ),
    }
}

/// Whether `method` on `AuditEvent/{rest}` would create, change or delete an
/// audit record (reads, searches and `$validate` are not).
pub(crate) fn audit_event_write(method: &str, rest: &[&str]) -> bool {
    match method {
        "PUT" | "PATCH" | "DELETE" => true,
        "POST" => rest.is_empty(),
        _ => false,
    }
}

/// The answer to any write of an AuditEvent: 405. The audit trail is
/// append-only and written by the server alone, for every role: a client's
/// own AuditEvent would sit in the trail beside the server's as if the server
/// had seen it, so POST is refused too.
pub(crate) fn audit_events_append_only(method: &str, path: &str) -> FhirError {
    FhirError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        IssueCode::NotSupported,
        format!(
            "{method} is not allowed on {path}: audit events cannot be changed or deleted, and only the server records them; the audit trail can be read and searched (GET)"
        ),
    )
}

/// Header naming the purpose of use of a request (a v3 PurposeOfUse code such
/// as `TREAT`, or `ETREAT` for emergency access); recorded on its audit rows.
pub const PURPOSE_HEADER: &str = "x-hale-purpose-of-use";

/// The request's stated purpose of use: None when the header is absent, 400
/// when it is not a code (letters, digits and '-', at most 32).
pub fn purpose_of_use(headers: &HeaderMap) -> Result<Option<String>, FhirError> {
    let Some(v) = headers.get(PURPOSE_HEADER) else {
        return Ok(None);
    };
    let s = v.to_str().unwrap_or("").trim();
    let ok = !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !ok {
        return Err(FhirError::bad_request(format!(
            "X-Hale-Purpose-Of-Use must be a purpose-of-use code such as TREAT or ETREAT (letters, digits and '-', at most 32), not '{}'",
            s.chars().take(40).collect::<String>()
        )));
    }
    Ok(Some(s.to_string()))
}

/// The types a search's chains and reverse chains look into.
fn chained_types(clauses: &[hale_fhir::search::Clause], out: &mut Vec<ResourceType>) {
    use hale_fhir::search::Predicate;
    for c in clauses {
        for p in &c.alternatives {
            match p {
                Predicate::Chain { target, inner } => {
                    out.push(*target);
                    chained_types(std::slice::from_ref(inner.as_ref()), out);
                }
                Predicate::Has { source, inner, .. } => {
                    out.push(*source);
                    chained_types(std::slice::from_ref(inner.as_ref()), out);
                }
                _ => {}
            }
        }
    }
}

/// A stored resource cut to `_summary`/`_elements`, when a subset is asked for.
fn subset_json(f: &Found, subset: Option<Subset<'_>>) -> Option<String> {
    let (subset, json) = (subset?, f.json.as_deref()?);
    let rt: ResourceType = f.rtype.parse().ok()?;
    let mut v: Value = serde_json::from_str(json).ok()?;
    hale_fhir::subset::apply(rt, &mut v, subset);
    Some(v.to_string())
}

pub fn resource_type(t: &str) -> Result<ResourceType, FhirError> {
    t.parse::<ResourceType>().map_err(|_| {
        FhirError::new(
            StatusCode::NOT_FOUND,
            IssueCode::NotSupported,
            format!("resource type '{t}' is not supported by this server; see /metadata for the list"),
        )
    })
}

fn base_url(app: &App, headers: &HeaderMap) -> String {
    if let Some(b) = &app.cfg.base_url {
        return b.trim_end_matches('/').to_string();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}")
}

pub async fn read_body(app: &App, body: Body) -> Result<Bytes, FhirError> {
    let max = app.cfg.limits.body_bytes_max;
    axum::body::to_bytes(body, max).await.map_err(|_| {
        FhirError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            IssueCode::TooLong,
            format!("the request body is larger than the limit of {max} bytes; split it into smaller requests"),
        )
    })
}

/// Parse a JSON body, saying where it is malformed.
pub fn parse_json(body: &[u8]) -> Result<Value, FhirError> {
    if body.is_empty() {
        return Err(FhirError::new(
            StatusCode::BAD_REQUEST,
            IssueCode::Required,
            "the request has no body; send a FHIR JSON resource",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        FhirError::new(
            StatusCode::BAD_REQUEST,
            IssueCode::Structure,
            format!(
                "the body is not valid JSON: {e} (line {}, column {})",
                e.line(),
                e.column()
            ),
        )
    })
}

pub(crate) fn check_content_type(headers: &HeaderMap) -> Result<(), FhirError> {
    let Some(ct) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if matches!(
        mime.as_str(),
        "application/fhir+json" | "application/json" | "application/json+fhir"
    ) {
        Ok(())
    } else {
        Err(FhirError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IssueCode::NotSupported,
            format!("content type '{mime}' is not supported; send application/fhir+json"),
        ))
    }
}

/// Decode a query string into ordered pairs.
pub fn query_pairs(q: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(q.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The search in an `If-None-Exist` header or `ifNoneExist` element:
/// `identifier=x`, `?identifier=x` or `Patient?identifier=x`.
pub fn if_none_exist_pairs(rt: ResourceType, q: &str) -> Vec<(String, String)> {
    let q = q.trim();
    let q = q.strip_prefix(rt.as_str()).unwrap_or(q);
    query_pairs(q.trim_start_matches('?'))
}

/// What the client asked for in `Prefer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Return {
    Representation,
    Minimal,
    OperationOutcome,
}

pub fn prefer_return(headers: &HeaderMap) -> Return {
    let p = headers.get("prefer").and_then(|v| v.to_str().ok()).unwrap_or("");
    if p.contains("return=minimal") {
        Return::Minimal
    } else if p.contains("return=OperationOutcome") {
        Return::OperationOutcome
    } else {
        Return::Representation
    }
}

pub fn prefer_strict(headers: &HeaderMap) -> bool {
    headers
        .get("prefer")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.contains("handling=strict"))
}

/// First patient a stored resource refers to (cheap scan of the JSON text).
fn patient_in(json: &str) -> Option<String> {
    let at = json.find("\"reference\":\"Patient/")? + "\"reference\":\"Patient/".len();
    let rest = &json[at..];
    let end = rest.find(['"', '/'])?;
    Some(rest[..end].to_string())
}

/// The patients whose data a response shows: the one patient when there is
/// exactly one, and up to 20 ids, comma-separated, for the audit detail.
fn patients_shown<'f>(found: impl Iterator<Item = &'f Found>) -> (Option<String>, String) {
    let mut patients: Vec<String> = found
        .filter_map(|f| {
            if f.rtype == "Patient" {
                Some(f.id.clone())
            } else {
                f.json.as_deref().and_then(patient_in)
            }
        })
        .collect();
    patients.sort();
    patients.dedup();
    let one = (patients.len() == 1).then(|| patients[0].clone());
    let shown = patients
        .iter()
        .take(20)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(",");
    (one, shown)
}

pub struct Ctx<'a> {
    pub app: &'a App,
    pub headers: &'a HeaderMap,
    pub principal: &'a Principal,
    pub base: String,
    /// Patient-level access decisions made for this request (access.rs).
    pub gate: crate::access::Gate,
}

impl Ctx<'_> {
    pub fn command(&self, kind: CommandKind) -> Command {
        Command {
            references: self.app.cfg.references,
            time_ms: now_ms(),
            actor: self.principal.actor(),
            kind,
        }
    }

    /// Authorise, auditing a refusal.
    pub(crate) async fn allow(
        &self,
        rt: ResourceType,
        write: bool,
        action: AuditAction,
        id: Option<&str>,
    ) -> Result<(), FhirError> {
        let op = match action {
            AuditAction::Create => Op::Create,
            AuditAction::Read => Op::Read,
            AuditAction::Update => Op::Update,
            AuditAction::Delete => Op::Delete,
            AuditAction::Execute if write => Op::Update,
            AuditAction::Execute => Op::Search,
        };
        if let Err(e) = authorize_op(self.principal, rt, op) {
            self.audit(action, rt, id, None, 4, "forbidden".into()).await;
            return Err(e);
        }
        Ok(())
    }

    pub async fn audit(
        &self,
        action: AuditAction,
        rt: ResourceType,
        id: Option<&str>,
        patient: Option<String>,
        outcome: u8,
        detail: String,
    ) {
        if !rt.is_patient_data() && outcome == 0 {
            return;
        }
        // What this request showed under break-glass is audited with purpose
        // BTG and the episode's reason: on this row when it names the
        // patient, else on a row of its own per patient.
        let (btg, others) = if outcome == 0 {
            self.btg_for_audit(patient.as_deref())
        } else {
            (None, Vec::new())
        };
        let time_ms = now_ms();
        let (purpose, detail_here) = match &btg {
            Some(reason) => (
                Some(hale_store::audit::BTG.to_string()),
                format!("{detail} [break-glass: {reason}]"),
            ),
            None => (purpose_of_use(self.headers).ok().flatten(), detail.clone()),
        };
        self.app
            .audit
            .record(AuditRecord {
                purpose,
                time_ms,
                actor: self.principal.actor(),
                action,
                rtype: rt.as_str().into(),
                id: id.map(str::to_string),
                patient,
                outcome,
                detail: detail_here,
            })
            .await;
        for (p, reason) in others {
            self.app
                .audit
                .record(AuditRecord {
                    purpose: Some(hale_store::audit::BTG.to_string()),
                    time_ms,
                    actor: self.principal.actor(),
                    action,
                    rtype: rt.as_str().into(),
                    id: None,
                    patient: Some(p),
                    outcome,
                    detail: format!("{detail} [break-glass: {reason}]"),
                })
                .await;
        }
    }

    pub async fn propose(&self, kind: CommandKind) -> Result<Applied, FhirError> {
        // Every single write is checked against patient-level access here
        // (Bundles check each entry before they get this far).
        let single = matches!(kind, CommandKind::Write(_));
        if let CommandKind::Write(op) = &kind {
            self.check_write_audited(op).await?;
        }
        let cmd = self.command(kind);
        match self.app.proposer.propose(cmd).await {
            Ok((_, applied)) => {
                // A conditional create that matched an existing resource
                // answers with it: that must be one the user may see
                // (Bundles check their entries' answers themselves).
                if let (true, Applied::Ops(v)) = (single, &applied) {
                    for w in v.iter().flatten() {
                        if let (WriteStatus::Existing, Some(json)) = (w.status, w.json.as_deref()) {
                            let rt = w.rtype.parse().unwrap_or(ResourceType::Patient);
                            self.check_shown(rt, &w.id, json).await?;
                        }
                    }
                }
                Ok(applied)
            }
            Err(ProposeError::Unavailable(why)) => Err(FhirError::unavailable(why)),
            Err(e) => Err(FhirError::unavailable(format!(
                "the write was not committed: {e}. It is safe to retry"
            ))),
        }
    }

    async fn read(&self, rt: ResourceType, id: &str, q: &str) -> Result<Response, FhirError> {
        // `_summary` and `_elements` apply to a read too.
        let pairs: Vec<(String, String)> = query_pairs(q)
            .into_iter()
            .filter(|(k, _)| matches!(k.as_str(), "_summary" | "_elements"))
            .collect();
        let shape = parse_query(rt, &pairs, true).map_err(|i| FhirError::invalid(vec![i]))?;
        self.allow(rt, false, AuditAction::Read, Some(id)).await?;
        // A version saved at this site while it was cut off is what it shows.
        if let Some(p) = self.pending_version(rt.as_str(), id)? {
            return self
                .pending_response(rt, id, p, format!("GET {rt}/{id} (pending at this site)"))
                .await;
        }
        let cur = self.app.reader.with(|c| query::read(c, rt.as_str(), id))?;
        match cur {
            Some(Current::Live(f)) => {
                let json = f.json.as_deref().unwrap_or("{}");
                self.check_shown(rt, id, json).await?;
                let patient = if rt == ResourceType::Patient {
                    Some(id.to_string())
                } else {
                    patient_in(json)
                };
                self.audit(AuditAction::Read, rt, Some(id), patient, 0, format!("GET {rt}/{id}"))
                    .await;
                let f = match subset_json(&f, Subset::of(shape.summary, &shape.elements)) {
                    Some(json) => Found { json: Some(json), ..f },
                    None => f,
                };
                Ok(resource_response(StatusCode::OK, &f, None))
            }
            Some(Current::Deleted { version, updated_ms }) => {
                let mut r = FhirError::new(
                    StatusCode::GONE,
                    IssueCode::Deleted,
                    format!("{rt}/{id} was deleted (version {version})"),
                )
                .into_response_with_headers();
                version_headers(r.headers_mut(), version, updated_ms);
                Ok(r)
            }
            None => Err(FhirError::not_found(format!("{rt}/{id} does not exist"))),
        }
    }

    /// A tentative version from the site journal, audited as a read.
    async fn pending_response(
        &self,
        rt: ResourceType,
        id: &str,
        p: hale_journal::Pending,
        detail: String,
    ) -> Result<Response, FhirError> {
        self.check_shown(rt, id, &p.json).await?;
        let patient = if rt == ResourceType::Patient {
            Some(id.to_string())
        } else {
            patient_in(&p.json)
        };
        self.audit(AuditAction::Read, rt, Some(id), patient, 0, detail).await;
        let mut resp = json_response(StatusCode::OK, p.json);
        crate::offline::pending_headers(resp.headers_mut(), p.seq);
        Ok(resp)
    }

    async fn vread(&self, rt: ResourceType, id: &str, vid: &str) -> Result<Response, FhirError> {
        self.allow(rt, false, AuditAction::Read, Some(id)).await?;
        // `p<seq>`: a version saved in this node's site journal (the Location of a 202).
        if let Some(seq) = vid.strip_prefix('p').and_then(|s| s.parse::<u64>().ok()) {
            let Some(p) = self
                .app
                .offline
                .journal
                .view(seq, rt.as_str(), id)
                .map_err(|e| FhirError::unavailable(e.to_string()))?
            else {
                return Err(FhirError::not_found(format!(
                    "{rt}/{id} has no version p{seq} saved at this node"
                )));
            };
            return self
                .pending_response(rt, id, p, format!("GET {rt}/{id}/_history/p{seq}"))
                .await;
        }
        let version: u64 = vid
            .parse()
            .map_err(|_| FhirError::bad_request(format!("version '{vid}' is not a number")).at("_history"))?;
        let found = self.app.reader.with(|c| query::vread(c, rt.as_str(), id, version))?;
        match found {
            Some(f) if f.json.is_some() => {
                self.check_shown(rt, id, f.json.as_deref().unwrap_or("{}")).await?;
                let patient = if rt == ResourceType::Patient {
                    Some(id.to_string())
                } else {
                    f.json.as_deref().and_then(patient_in)
                };
                self.audit(
                    AuditAction::Read,
                    rt,
                    Some(id),
                    patient,
                    0,
                    format!("GET {rt}/{id}/_history/{version}"),
                )
                .await;
                Ok(resource_response(StatusCode::OK, &f, None))
            }
            Some(f) => Err(FhirError::new(
                StatusCode::GONE,
                IssueCode::Deleted,
                format!("version {} of {rt}/{id} is a deletion", f.version),
            )),
            None => Err(FhirError::not_found(format!("{rt}/{id} has no version {version}"))),
        }
    }

    async fn create(&self, rt: ResourceType, body: &[u8]) -> Result<Response, FhirError> {
        self.allow(rt, true, AuditAction::Create, None).await?;
        check_content_type(self.headers)?;
        let resource = parse_json(body)?;
        if let Err(issues) = validate_resource(&resource, Some(rt)) {
            self.audit(
                AuditAction::Create,
                rt,
                None,
                None,
                4,
                format!("rejected: {}", issues[0].diagnostics),
            )
            .await;
            return Err(FhirError::invalid(issues));
        }
        let if_none_exist = self
            .headers
            .get("if-none-exist")
            .and_then(|v| v.to_str().ok())
            .map(|q| if_none_exist_pairs(rt, q));
        if let Some(pairs) = &if_none_exist {
            // Check the query now so a bad one is a 400, not a rejected command.
            parse_query(rt, pairs, true).map_err(|i| FhirError::invalid(vec![i]))?;
        }
        let id = uuid::Uuid::new_v4().to_string();
        let op = WriteOp::Create {
            rtype: rt.as_str().into(),
            id,
            resource,
            if_none_exist,
        };
        self.write_one(op, None).await
    }

    async fn update(&self, rt: ResourceType, id: &str, body: &[u8]) -> Result<Response, FhirError> {
        self.allow(rt, true, AuditAction::Update, Some(id)).await?;
        check_content_type(self.headers)?;
        let resource = parse_json(body)?;
        if let Err(issues) = validate_resource(&resource, Some(rt)) {
            self.audit(
                AuditAction::Update,
                rt,
                Some(id),
                None,
                4,
                format!("rejected: {}", issues[0].diagnostics),
            )
            .await;
            return Err(FhirError::invalid(issues));
        }
        match resource.get("id").and_then(Value::as_str) {
            Some(body_id) if body_id == id => {}
            Some(body_id) => {
                return Err(FhirError::bad_request(format!(
                    "the resource id '{body_id}' does not match the id '{id}' in the URL"
                ))
                .at(format!("{rt}.id")))
            }
            None => {
                return Err(FhirError::new(
                    StatusCode::BAD_REQUEST,
                    IssueCode::Required,
                    "an update must carry the resource id in the body",
                )
                .at(format!("{rt}.id")))
            }
        }
        if !valid_id(id) {
            return Err(FhirError::bad_request(format!(
                "'{id}' is not a valid FHIR id (1-64 of A-Z a-z 0-9 - .)"
            )));
        }
        let seen = crate::offline::if_match(self.headers)?;
        let op = WriteOp::Update {
            rtype: rt.as_str().into(),
            id: id.into(),
            resource,
            if_match: None,
        };
        self.write_one(op, seen).await
    }

    pub(crate) async fn delete(&self, rt: ResourceType, id: &str) -> Result<Response, FhirError> {
        self.allow(rt, true, AuditAction::Delete, Some(id)).await?;
        let op = WriteOp::Delete {
            rtype: rt.as_str().into(),
            id: id.into(),
        };
        self.check_write_audited(&op).await?;
        let written = single(self.propose(CommandKind::Write(op)).await?)?;
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        if written.status == WriteStatus::Deleted {
            resp.headers_mut().insert(header::ETAG, wire::etag(written.version));
        }
        Ok(resp)
    }

    pub(crate) fn write_response(&self, w: &Written) -> Response {
        let status = match w.status {
            WriteStatus::Created => StatusCode::CREATED,
            _ => StatusCode::OK,
        };
        let found = Found {
            rtype: w.rtype.clone(),
            id: w.id.clone(),
            version: w.version,
            updated_ms: w.updated_ms,
            json: w.json.clone(),
            method: "GET",
        };
        let location = format!("{}/{}/{}/_history/{}", self.base, w.rtype, w.id, w.version);
        let mut resp = match prefer_return(self.headers) {
            Return::Representation => resource_response(status, &found, None),
            Return::Minimal => {
                let mut r = Response::new(Body::empty());
                *r.status_mut() = status;
                r
            }
            Return::OperationOutcome => {
                let msg = match w.status {
                    WriteStatus::Created => format!("created {}/{}", w.rtype, w.id),
                    WriteStatus::Existing => format!(
                        "{}/{} already matched If-None-Exist; nothing was created",
                        w.rtype, w.id
                    ),
                    _ => format!("updated {}/{} to version {}", w.rtype, w.id, w.version),
                };
                json_response(
                    status,
                    hale_fhir::outcome::operation_outcome(&[Issue::information(msg)]).to_string(),
                )
            }
        };
        version_headers(resp.headers_mut(), w.version, w.updated_ms);
        if let Ok(v) = HeaderValue::from_str(&location) {
            resp.headers_mut().insert(header::LOCATION, v.clone());
            if w.status == WriteStatus::Created {
                resp.headers_mut().insert(header::CONTENT_LOCATION, v);
            }
        }
        resp
    }

    fn paging(&self, q: &str) -> (usize, usize) {
        let pairs = query_pairs(q);
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| n == k)
                .and_then(|(_, v)| v.parse::<usize>().ok())
        };
        let count = get("_count")
            .unwrap_or(hale_fhir::search::COUNT_DEFAULT)
            .clamp(1, query::HISTORY_PAGE_MAX);
        let offset = get("_offset").unwrap_or(0).min(hale_fhir::search::OFFSET_MAX);
        (count, offset)
    }

    async fn history(&self, rt: ResourceType, id: Option<&str>, q: &str) -> Result<Response, FhirError> {
        self.allow(rt, false, AuditAction::Read, id).await?;
        if !rt.client_writable() {
            return Err(FhirError::new(
                StatusCode::NOT_FOUND,
                IssueCode::NotSupported,
                format!("{rt} has no history: its records never change"),
            ));
        }
        let (count, offset) = self.paging(q);
        let rows = self.app.reader.with(|c| match id {
            Some(id) => query::history_instance(c, rt.as_str(), id, count + 1, offset),
            None => query::history_type(c, rt.as_str(), count + 1, offset),
        })?;
        if id.is_some() && rows.is_empty() && offset == 0 {
            return Err(FhirError::not_found(format!(
                "{rt}/{} does not exist",
                id.unwrap_or("")
            )));
        }
        let has_more = rows.len() > count;
        let mut rows = rows;
        match id {
            // An instance's history: every version it had must be one the
            // user may see (a version may have named another patient).
            Some(id) => {
                for f in rows.iter().take(count) {
                    if let Some(json) = f.json.as_deref() {
                        self.check_shown(rt, id, json).await?;
                    }
                }
            }
            // A type's history: what the user may not see is left out.
            None => {
                self.filter_shown(&mut rows, false);
            }
        }
        if rt.is_patient_data() {
            let (patient, shown) = patients_shown(rows.iter().take(count));
            let what = id.map(|i| format!("{rt}/{i}")).unwrap_or_else(|| rt.to_string());
            let detail = format!(
                "GET {what}/_history -> {} version(s); patients: {}",
                rows.len().min(count),
                shown
            );
            self.audit(AuditAction::Read, rt, id, patient, 0, detail).await;
        }
        let path = match id {
            Some(id) => format!("{}/{rt}/{id}/_history", self.base),
            None => format!("{}/{rt}/_history", self.base),
        };
        let mut links = vec![json!({"relation": "self", "url": format!("{path}?_count={count}&_offset={offset}")})];
        if has_more {
            links.push(json!({"relation": "next", "url": format!("{path}?_count={count}&_offset={}", offset + count)}));
        }
        let mut head = json!({"resourceType": "Bundle", "type": "history", "link": links});
        if !has_more {
            head["total"] = json!(offset + rows.len());
        }
        let mut b = BundleWriter::new(head);
        for f in rows.iter().take(count) {
            b.entry(wire::history_entry(&self.base, f), f.json.as_deref());
        }
        Ok(json_response(StatusCode::OK, b.finish()))
    }

    async fn search(&self, rt: ResourceType, q: &str) -> Result<Response, FhirError> {
        self.search_in(rt, q, None).await
    }

    /// A search, or with `patient` a search in that patient's compartment
    /// (`Patient/{id}/{type}`).
    pub(crate) async fn search_in(
        &self,
        rt: ResourceType,
        q: &str,
        patient: Option<&str>,
    ) -> Result<Response, FhirError> {
        self.allow(rt, false, AuditAction::Execute, None).await?;
        let pairs = query_pairs(q);
        let strict = prefer_strict(self.headers);
        let mut parsed: SearchQuery = parse_query(rt, &pairs, strict).map_err(|i| FhirError::invalid(vec![i]))?;
        let path = match patient {
            Some(pid) => {
                self.allow(ResourceType::Patient, false, AuditAction::Read, Some(pid))
                    .await?;
                parsed.compartment = Some(hale_fhir::search::Compartment::patient(rt, pid).ok_or_else(|| {
                    FhirError::new(
                        StatusCode::NOT_FOUND,
                        IssueCode::NotSupported,
                        format!("{rt} is not in the patient compartment (the official CompartmentDefinition), so Patient/{pid}/{rt} holds nothing"),
                    )
                })?);
                format!("{}/Patient/{pid}/{rt}", self.base)
            }
            None => format!("{}/{rt}", self.base),
        };
        for inc in &parsed.includes {
            if let Some(t) = inc.target {
                authorize(self.principal, t, false)?;
            }
        }
        // Searching by another type's content (a chain or `_has`) reads it:
        // the role must be allowed to read that type.
        let mut crossed = Vec::new();
        chained_types(&parsed.clauses, &mut crossed);
        for &t in &crossed {
            authorize(self.principal, t, false)?;
        }
        // Patient-level access: a compartment or a search bound to one
        // patient is checked first (403); a patient-context token searches
        // its own compartment only.
        if let Some(pid) = patient {
            self.check_record(rt, pid).await?;
        }
        let gated = self.check_search(&parsed, &crossed).await?;
        if let (Some(own), None) = (self.principal.patient.as_deref(), &parsed.compartment) {
            parsed.compartment = hale_fhir::search::Compartment::patient(rt, own);
        }
        let mut page = self.app.reader.with(|c| query::search(c, &parsed))?;
        let pending_note = self.merge_pending(&parsed, &mut page)?;
        let mut suppressed = self.filter_shown(&mut page.matches, gated);
        for p in self.filter_shown(&mut page.included, false) {
            if !suppressed.contains(&p) {
                suppressed.push(p);
            }
        }
        if !suppressed.is_empty() {
            // A total would count what is not shown.
            page.total = None;
        }
        // Included resources follow the role rules of their own types.
        let mut withheld: Vec<String> = Vec::new();
        page.included.retain(|f| {
            let ok = f
                .rtype
                .parse::<ResourceType>()
                .is_ok_and(|t| authorize(self.principal, t, false).is_ok());
            if !ok && !withheld.contains(&f.rtype) {
                withheld.push(f.rtype.clone());
            }
            ok
        });
        // Audit: one record per search, naming the patient when the results concern one.
        if rt.is_patient_data() {
            let (patient, shown) = patients_shown(page.matches.iter().chain(&page.included));
            let detail = format!("GET {rt}?{q} -> {} match(es); patients: {}", page.matches.len(), shown);
            self.audit(AuditAction::Execute, rt, None, patient, 0, detail).await;
        }
        // The links name only the parameters that were applied.
        let pairs: Vec<(String, String)> = pairs
            .into_iter()
            .filter(|(k, _)| !parsed.ignored_keys.contains(k))
            .collect();
        let self_q = canonical_query(&pairs, parsed.offset, parsed.count);
        let mut links = vec![json!({"relation": "self", "url": format!("{path}?{self_q}")})];
        if page.has_more {
            links.push(json!({"relation": "next", "url": format!("{path}?{}", canonical_query(&pairs, parsed.offset + parsed.count, parsed.count))}));
        }
        if parsed.offset > 0 {
            let prev = parsed.offset.saturating_sub(parsed.count);
            links.push(json!({"relation": "previous", "url": format!("{path}?{}", canonical_query(&pairs, prev, parsed.count))}));
        }
        let mut head = json!({"resourceType": "Bundle", "type": "searchset", "link": links});
        if let Some(t) = page.total {
            head["total"] = json!(t);
        }
        let mut b = BundleWriter::new(head);
        let subset = Subset::of(parsed.summary, &parsed.elements);
        for (f, mode) in page
            .matches
            .iter()
            .map(|f| (f, "match"))
            .chain(page.included.iter().map(|f| (f, "include")))
        {
            let json = subset_json(f, subset);
            b.entry(
                json!({"fullUrl": wire::full_url(&self.base, f), "search": {"mode": mode}}),
                json.as_deref().or(f.json.as_deref()),
            );
        }
        if !parsed.ignored.is_empty() || !withheld.is_empty() || pending_note.is_some() || !suppressed.is_empty() {
            let mut issues: Vec<Issue> = parsed
                .ignored
                .iter()
                .map(|n| Issue::warning(IssueCode::NotSupported, format!("{n}: ignored")))
                .collect();
            if let Some(note) = &pending_note {
                issues.push(Issue::warning(IssueCode::Informational, note.clone()));
            }
            if !withheld.is_empty() {
                issues.push(Issue::warning(
                    IssueCode::Forbidden,
                    format!(
                        "included resources not shown to role '{}': {}",
                        self.principal.role.as_str(),
                        withheld.join(", ")
                    ),
                ));
            }
            if !suppressed.is_empty() {
                issues.push(self.withheld_issue(&suppressed));
            }
            let oo = hale_fhir::outcome::operation_outcome(&issues).to_string();
            b.entry(json!({"search": {"mode": "outcome"}}), Some(&oo));
        }
        let mut resp = json_response(StatusCode::OK, b.finish());
        if pending_note.is_some() {
            resp.headers_mut()
                .insert("x-hale-sync", HeaderValue::from_static("pending"));
        }
        Ok(resp)
    }

    /// Writes saved at this site and not yet synced take part in a search: a
    /// match whose tentative version no longer matches drops out, one that does
    /// shows the tentative version, and new ones lead the first page. Says so
    /// in a note when anything was pending for the type.
    fn merge_pending(
        &self,
        parsed: &SearchQuery,
        page: &mut hale_store::query::SearchPage,
    ) -> Result<Option<String>, FhirError> {
        let pending = self.pending_of_type(parsed.rtype.as_str())?;
        if pending.is_empty() {
            return Ok(None);
        }
        if pending.len() > hale_store::overlay::OVERLAY_SEARCH_MAX {
            return Ok(Some(format!(
                "{} {} writes saved at this site while it is cut off are not searched (more than {}); read them by id",
                pending.len(),
                parsed.rtype,
                hale_store::overlay::OVERLAY_SEARCH_MAX
            )));
        }
        let docs: Vec<(String, String)> = pending.iter().map(|(id, p)| (id.clone(), p.json.clone())).collect();
        let matched = hale_store::overlay::matching_ids(parsed, &docs)?;
        let view = |id: &str| pending.iter().find(|(i, _)| i == id).map(|(_, p)| p);
        let before = page.matches.len();
        page.matches
            .retain(|f| view(&f.id).is_none() || matched.contains(&f.id));
        let dropped = before - page.matches.len();
        for f in page.matches.iter_mut() {
            if let Some(p) = view(&f.id) {
                f.json = Some(p.json.clone());
                f.updated_ms = p.recorded_ms;
            }
        }
        let mut added = 0;
        if parsed.offset == 0 && parsed.count > 0 {
            let fresh: Vec<hale_store::query::Found> = matched
                .iter()
                .filter(|id| !page.matches.iter().any(|f| &f.id == *id))
                .filter_map(|id| {
                    view(id).map(|p| hale_store::query::Found {
                        rtype: parsed.rtype.as_str().to_string(),
                        id: id.clone(),
                        version: 0,
                        updated_ms: p.recorded_ms,
                        json: Some(p.json.clone()),
                        method: "GET",
                    })
                })
                .collect();
            added = fresh.len();
            page.matches.splice(0..0, fresh);
        }
        if let Some(t) = page.total.as_mut() {
            *t = (*t + added as u64).saturating_sub(dropped as u64);
        }
        let shown = page.matches.iter().filter(|f| view(&f.id).is_some()).count();
        Ok(Some(format!(
            "this node is showing {shown} {} saved at this site while cut off and not yet synced (versions p<n>); they may still change when they reach the data centres",
            parsed.rtype
        )))
    }
}

/// The query with `_offset`/`_count` set, for paging links.
fn canonical_query(pairs: &[(String, String)], offset: usize, count: usize) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if k != "_offset" && k != "_count" {
            s.append_pair(k, v);
        }
    }
    s.append_pair("_count", &count.to_string());
    s.append_pair("_offset", &offset.to_string());
    s.finish()
}

pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// The one result of a single-op command.
pub(crate) fn single(applied: Applied) -> Result<Written, FhirError> {
    match applied {
        Applied::Ops(mut v) if v.len() == 1 => v.pop().expect("one").map_err(FhirError::from_rejection),
        Applied::TransactionFailed(r) => Err(FhirError::from_rejection(r)),
        other => Err(FhirError::internal(format!("unexpected apply result {other:?}"))),
    }
}

/// A resource body with ETag and Last-Modified.
pub fn resource_response(status: StatusCode, f: &Found, location: Option<&str>) -> Response {
    let mut resp = json_response(status, f.json.clone().unwrap_or_default());
    version_headers(resp.headers_mut(), f.version, f.updated_ms);
    if let Some(l) = location.and_then(|l| HeaderValue::from_str(l).ok()) {
        resp.headers_mut().insert(header::LOCATION, l);
    }
    resp
}

impl FhirError {
    fn into_response_with_headers(self) -> Response {
        axum::response::IntoResponse::into_response(self)
    }
}
