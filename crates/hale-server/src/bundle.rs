//! Batch and transaction Bundles (`POST /`).
//!
//! A transaction becomes one `Transaction` command: it commits entirely or
//! not at all. `urn:uuid:` fullUrls are given server ids before the command
//! is built and every reference to them is rewritten, so apply sees only
//! ordinary `Type/id` references. So are conditional references
//! (`Practitioner?identifier=sys|val`, as Synthea writes them): each is
//! resolved by a strict search on this node to its one match; none or several
//! fail the entry (412). Apply then re-checks that the target still exists.

use crate::auth::{authorize, authorize_op};
use crate::rest::{parse_json, resource_type, valid_id, Ctx, Handled};
use crate::wire::{self, json_response, BundleWriter, FhirError};
use axum::body::Bytes;
use axum::http::StatusCode;
use hale_auth::Op;
use hale_fhir::validate::{validate_bundle_shell, validate_resource};
use hale_fhir::{IssueCode, ResourceType};
use hale_store::apply::Applied;
use hale_store::query::{self, Current};
use hale_store::{AuditAction, CommandKind, Rejection, WriteOp, WriteStatus, Written};
use serde_json::{json, Value};
use std::collections::HashMap;

enum Planned {
    Write(WriteOp),
    Read(ResourceType, String),
    /// A search (`GET Type?params`): answered after the writes, as a searchset Bundle.
    Search(ResourceType, String),
    Invalid(FhirError),
}

pub async fn handle(cx: &Ctx<'_>, body: Bytes) -> Handled {
    let bundle = match parse_json(&body) {
        Ok(v) => v,
        Err(e) => return ("batch", Err(e)),
    };
    let kind = bundle.get("type").and_then(Value::as_str).unwrap_or("").to_string();
    let route = if kind == "transaction" { "transaction" } else { "batch" };
    (route, run(cx, bundle, &kind).await)
}

fn entry_err(i: usize, e: FhirError) -> FhirError {
    let issues = e
        .issues
        .into_iter()
        .map(|mut issue| {
            issue.expression = Some(match issue.expression.take() {
                Some(x) => {
                    // `Patient.name[0]` inside entry i becomes `Bundle.entry[i].resource.name[0]`.
                    let tail = x.split_once('.').map(|(_, t)| format!(".{t}")).unwrap_or_default();
                    format!("Bundle.entry[{i}].resource{tail}")
                }
                None => format!("Bundle.entry[{i}]"),
            });
            issue
        })
        .collect();
    FhirError {
        status: e.status,
        issues,
    }
}

pub(crate) async fn run(cx: &Ctx<'_>, bundle: Value, kind: &str) -> Result<axum::response::Response, FhirError> {
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(
            FhirError::bad_request("POST to the base URL takes a Bundle of type batch or transaction")
                .at("resourceType"),
        );
    }
    validate_bundle_shell(&bundle).map_err(FhirError::invalid)?;
    if kind != "batch" && kind != "transaction" {
        return Err(FhirError::new(
            StatusCode::BAD_REQUEST,
            IssueCode::Value,
            format!("a Bundle posted to the base URL must have type 'batch' or 'transaction', not '{kind}'"),
        )
        .at("Bundle.type"));
    }
    let transaction = kind == "transaction";
    let entries = bundle
        .get("entry")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let max = cx.app.cfg.limits.bundle_entries_max;
    if entries.len() > max {
        return Err(FhirError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            IssueCode::TooCostly,
            format!("the Bundle has {} entries; the limit is {max}. Split it", entries.len()),
        )
        .at("Bundle.entry"));
    }

    // Give every new resource its id first, so that references between
    // entries can be rewritten before each resource is validated.
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut new_ids: Vec<Option<String>> = Vec::with_capacity(entries.len());
    for e in &entries {
        new_ids.push(assign_id(e, &mut ids));
    }
    let mut plans: Vec<Planned> = Vec::with_capacity(entries.len());
    let mut resolved: HashMap<String, Result<String, FhirError>> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        let mut e = e.clone();
        let mut conditional = Ok(());
        if let Some(r) = e.get_mut("resource") {
            if !ids.is_empty() {
                rewrite_refs(r, &ids);
            }
            let rt = r
                .get("resourceType")
                .and_then(Value::as_str)
                .unwrap_or("Resource")
                .to_string();
            conditional = resolve_conditional_refs(cx, r, &mut rt.clone(), &mut resolved);
        }
        let plan = conditional
            .and_then(|()| plan_entry(cx, &e, new_ids[i].take()))
            .and_then(|plan| match &plan {
                // Patient-level access for each write, before anything is
                // proposed: a transaction with one refused entry writes nothing.
                Planned::Write(op) => cx.check_write(op).map(|()| plan),
                _ => Ok(plan),
            })
            .unwrap_or_else(|err| Planned::Invalid(entry_err(i, err)));
        if transaction {
            if let Planned::Invalid(err) = plan {
                return Err(err);
            }
        }
        plans.push(plan);
    }

    let mut op_entry: Vec<usize> = Vec::new();
    let mut ops: Vec<WriteOp> = Vec::new();
    for (i, p) in plans.iter_mut().enumerate() {
        if let Planned::Write(op) = p {
            let placeholder = WriteOp::Delete {
                rtype: String::new(),
                id: String::new(),
            };
            ops.push(std::mem::replace(op, placeholder));
            op_entry.push(i);
        }
    }
    if transaction {
        // FHIR processing order: deletes, then creates and updates with every
        // resource before the entries that refer to it.
        let order = processing_order(&ops);
        let mut taken: Vec<Option<WriteOp>> = ops.into_iter().map(Some).collect();
        ops = order.iter().map(|&k| taken[k].take().expect("each op once")).collect();
        op_entry = order.iter().map(|&k| op_entry[k]).collect();
    }
    let mut results: HashMap<usize, Result<Written, Rejection>> = HashMap::new();
    if !ops.is_empty() {
        let applied = if transaction {
            cx.propose(CommandKind::Transaction(ops)).await?
        } else {
            cx.propose(CommandKind::Batch(ops)).await?
        };
        match applied {
            Applied::Ops(v) => {
                for (k, r) in v.into_iter().enumerate() {
                    results.insert(op_entry[k], r);
                }
            }
            Applied::TransactionFailed(r) => {
                let i = r.op.map(|k| op_entry[k]).unwrap_or(0);
                return Err(entry_err(i, FhirError::from_rejection(r)));
            }
            Applied::Audited(_) | Applied::Staged { .. } | Applied::Replayed(_) | Applied::Account(_) => {
                return Err(FhirError::internal("unexpected apply result"))
            }
        }
    }

    let resp_type = if transaction {
        "transaction-response"
    } else {
        "batch-response"
    };
    let mut b = BundleWriter::new(json!({"resourceType": "Bundle", "type": resp_type}));
    for (i, p) in plans.into_iter().enumerate() {
        match p {
            Planned::Invalid(err) => error_entry(&mut b, &err),
            Planned::Read(rt, id) => {
                let cur = cx.app.reader.with(|c| query::read(c, rt.as_str(), &id))?;
                match cur {
                    Some(Current::Live(f)) => {
                        if let Err(e) = cx.check_shown(rt, &id, f.json.as_deref().unwrap_or("{}")).await {
                            error_entry(&mut b, &entry_err(i, e));
                            continue;
                        }
                        cx.audit(
                            AuditAction::Read,
                            rt,
                            Some(&id),
                            (rt == ResourceType::Patient).then(|| id.clone()),
                            0,
                            format!("GET {rt}/{id} (bundle)"),
                        )
                        .await;
                        b.entry(
                            json!({
                                "fullUrl": wire::full_url(&cx.base, &f),
                                "response": {"status": "200 OK", "etag": format!("W/\"{}\"", f.version), "lastModified": wire::instant(f.updated_ms)}
                            }),
                            f.json.as_deref(),
                        )
                    }
                    Some(Current::Deleted { .. }) => error_entry(
                        &mut b,
                        &FhirError::new(StatusCode::GONE, IssueCode::Deleted, format!("{rt}/{id} was deleted")),
                    ),
                    None => error_entry(&mut b, &FhirError::not_found(format!("{rt}/{id} does not exist"))),
                }
            }
            Planned::Search(rt, q) => match cx.search_in(rt, &q, None).await {
                Ok(resp) => match axum::body::to_bytes(resp.into_body(), usize::MAX).await {
                    Ok(body) => b.entry(
                        json!({"response": {"status": "200 OK"}}),
                        Some(&String::from_utf8_lossy(&body)),
                    ),
                    Err(e) => error_entry(&mut b, &FhirError::internal(format!("search result: {e}"))),
                },
                Err(e) => error_entry(&mut b, &entry_err(i, e)),
            },
            Planned::Write(_) => match results.remove(&i) {
                // A conditional create that matched: its answer shows the
                // match, which must be one the user may see.
                Some(Ok(w)) if w.status == WriteStatus::Existing => {
                    let rt = w.rtype.parse().unwrap_or(ResourceType::Patient);
                    match cx.check_shown(rt, &w.id, w.json.as_deref().unwrap_or("{}")).await {
                        Ok(()) => written_entry(cx, &mut b, &w),
                        Err(e) => error_entry(&mut b, &entry_err(i, e)),
                    }
                }
                Some(Ok(w)) => written_entry(cx, &mut b, &w),
                Some(Err(r)) => error_entry(&mut b, &entry_err(i, FhirError::from_rejection(r))),
                None => error_entry(&mut b, &FhirError::internal("entry was not processed")),
            },
        }
    }
    Ok(json_response(StatusCode::OK, b.finish()))
}

fn plan_entry(cx: &Ctx<'_>, e: &Value, new_id: Option<String>) -> Result<Planned, FhirError> {
    let req = e.get("request").ok_or_else(|| {
        FhirError::new(StatusCode::BAD_REQUEST, IssueCode::Required, "entry has no request").at("request")
    })?;
    let method = req.get("method").and_then(Value::as_str).unwrap_or("");
    let url = req.get("url").and_then(Value::as_str).unwrap_or("");
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let segs: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let rt = resource_type(segs.first().copied().unwrap_or(""))?;
    if rt == ResourceType::AuditEvent && crate::rest::audit_event_write(method, &segs[1..]) {
        return Err(crate::rest::audit_events_append_only(method, url));
    }
    let resource = e.get("resource");
    let check = |op: Op| authorize_op(cx.principal, rt, op);
    match (method, segs.as_slice()) {
        ("POST", [_]) => {
            check(Op::Create)?;
            let resource = resource.ok_or_else(|| FhirError::new(StatusCode::BAD_REQUEST, IssueCode::Required, "a POST entry needs a resource"))?;
            validate_resource(resource, Some(rt)).map_err(FhirError::invalid)?;
            let id = new_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            let if_none_exist = req
                .get("ifNoneExist")
                .and_then(Value::as_str)
                .map(|q| crate::rest::if_none_exist_pairs(rt, q));
            if let Some(pairs) = &if_none_exist {
                hale_fhir::search::parse_query(rt, pairs, true).map_err(|i| FhirError::invalid(vec![i]))?;
            }
            Ok(Planned::Write(WriteOp::Create { rtype: rt.as_str().into(), id, resource: resource.clone(), if_none_exist }))
        }
        ("PUT", [_, id]) if query.is_empty() => {
            check(Op::Update)?;
            let resource = resource.ok_or_else(|| FhirError::new(StatusCode::BAD_REQUEST, IssueCode::Required, "a PUT entry needs a resource"))?;
            validate_resource(resource, Some(rt)).map_err(FhirError::invalid)?;
            if !valid_id(id) {
                return Err(FhirError::bad_request(format!("'{id}' is not a valid FHIR id")));
            }
            if resource.get("id").and_then(Value::as_str).is_some_and(|b| b != *id) {
                return Err(FhirError::bad_request(format!("the resource id does not match '{id}' in request.url")).at(format!("{rt}.id")));
            }
            let mut resource = resource.clone();
            resource["id"] = json!(id);
            let if_match = match req.get("ifMatch").and_then(Value::as_str) {
                Some(s) => Some(wire::parse_etag(s).ok_or_else(|| FhirError::bad_request(format!("ifMatch '{s}' is not an ETag")))?),
                None => None,
            };
            Ok(Planned::Write(WriteOp::Update { rtype: rt.as_str().into(), id: id.to_string(), resource, if_match }))
        }
        ("DELETE", [_, id]) if query.is_empty() => {
            check(Op::Delete)?;
            Ok(Planned::Write(WriteOp::Delete { rtype: rt.as_str().into(), id: id.to_string() }))
        }
        ("GET", [_, id]) if query.is_empty() => {
            check(Op::Read)?;
            Ok(Planned::Read(rt, id.to_string()))
        }
        ("GET", [_]) => {
            check(Op::Search)?;
            // Parse now, so that a bad search fails this entry (and a transaction) up front.
            let pairs = crate::rest::query_pairs(query);
            hale_fhir::search::parse_query(rt, &pairs, crate::rest::prefer_strict(cx.headers))
                .map_err(|i| FhirError::invalid(vec![i]))?;
            Ok(Planned::Search(rt, query.to_string()))
        }
        _ => Err(FhirError::new(
            StatusCode::BAD_REQUEST,
            IssueCode::NotSupported,
            format!("'{method} {url}' is not supported in a Bundle: use POST Type, PUT Type/id, DELETE Type/id, GET Type/id or GET Type?search"),
        )
        .at("request")),
    }
}

/// The id a POST entry will get (and the fullUrl -> `Type/id` mapping for
/// entries with a fullUrl), decided before anything is validated.
fn assign_id(e: &Value, ids: &mut HashMap<String, String>) -> Option<String> {
    let method = e.pointer("/request/method").and_then(Value::as_str)?;
    let url = e.pointer("/request/url").and_then(Value::as_str)?;
    let path = url.split('?').next().unwrap_or("");
    let segs: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let (rt, id) = match (method, segs.as_slice()) {
        ("POST", [t]) => (*t, uuid::Uuid::new_v4().to_string()),
        ("PUT", [t, id]) => (*t, id.to_string()),
        _ => return None,
    };
    if let Some(full) = e.get("fullUrl").and_then(Value::as_str) {
        ids.insert(full.to_string(), format!("{rt}/{id}"));
    }
    (method == "POST").then_some(id)
}

/// Deletes first, then writes ordered so that a resource comes before the
/// entries that refer to it (original order otherwise; cycles keep it too).
fn processing_order(ops: &[WriteOp]) -> Vec<usize> {
    let key = |op: &WriteOp| format!("{}/{}", op.rtype(), op.id());
    let index: HashMap<String, usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, op)| !matches!(op, WriteOp::Delete { .. }))
        .map(|(i, op)| (key(op), i))
        .collect();
    let deps: Vec<Vec<usize>> = ops
        .iter()
        .map(|op| match op {
            WriteOp::Create { rtype, resource, .. } | WriteOp::Update { rtype, resource, .. } => {
                let rt: ResourceType = rtype.parse().unwrap_or(ResourceType::Patient);
                hale_store::apply::local_references(rt, resource)
                    .into_iter()
                    .filter_map(|(_, t, id)| index.get(&format!("{t}/{id}")).copied())
                    .collect()
            }
            WriteOp::Delete { .. } => Vec::new(),
        })
        .collect();
    let mut order: Vec<usize> = (0..ops.len())
        .filter(|&i| matches!(ops[i], WriteOp::Delete { .. }))
        .collect();
    // 0 = unvisited, 1 = in progress, 2 = done.
    let mut state = vec![0u8; ops.len()];
    fn visit(i: usize, deps: &[Vec<usize>], state: &mut [u8], order: &mut Vec<usize>) {
        if state[i] != 0 {
            return;
        }
        state[i] = 1;
        for &d in &deps[i] {
            if d != i {
                visit(d, deps, state, order);
            }
        }
        state[i] = 2;
        order.push(i);
    }
    for (i, op) in ops.iter().enumerate() {
        if !matches!(op, WriteOp::Delete { .. }) {
            visit(i, &deps, &mut state, &mut order);
        }
    }
    order
}

fn rewrite_refs(v: &mut Value, ids: &HashMap<String, String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                if k == "reference" {
                    if let Value::String(s) = child {
                        if let Some(new) = ids.get(s.as_str()) {
                            *s = new.clone();
                        }
                    }
                } else {
                    rewrite_refs(child, ids);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|c| rewrite_refs(c, ids)),
        _ => {}
    }
}

/// At most this many distinct conditional references in one Bundle (each is a search).
pub const CONDITIONAL_REFS_MAX: usize = 1_000;

/// Whether a reference is conditional: `Type?search` with a known type.
fn conditional_ref(s: &str) -> Option<(ResourceType, &str)> {
    let (t, q) = s.split_once('?')?;
    Some((t.parse().ok()?, q))
}

/// Replace every conditional reference under `v` (`path` is its FHIRPath) with
/// `Type/id` of its single match. Results are shared across the Bundle's entries.
fn resolve_conditional_refs(
    cx: &Ctx<'_>,
    v: &mut Value,
    path: &mut String,
    resolved: &mut HashMap<String, Result<String, FhirError>>,
) -> Result<(), FhirError> {
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                let len = path.len();
                path.push('.');
                path.push_str(k);
                let r = match child {
                    Value::String(s) if k == "reference" => match conditional_ref(s) {
                        Some((rt, q)) => {
                            if !resolved.contains_key(s.as_str()) {
                                if resolved.len() >= CONDITIONAL_REFS_MAX {
                                    return Err(FhirError::new(
                                        StatusCode::PAYLOAD_TOO_LARGE,
                                        IssueCode::TooCostly,
                                        format!("more than {CONDITIONAL_REFS_MAX} distinct conditional references in one Bundle; split it"),
                                    )
                                    .at(path.clone()));
                                }
                                let found = resolve_one(cx, rt, q, s);
                                resolved.insert(s.clone(), found);
                            }
                            match &resolved[s.as_str()] {
                                Ok(target) => {
                                    *s = target.clone();
                                    Ok(())
                                }
                                Err(e) => Err(FhirError {
                                    status: e.status,
                                    issues: e.issues.iter().cloned().map(|i| i.at(path.clone())).collect(),
                                }),
                            }
                        }
                        None => Ok(()),
                    },
                    _ => resolve_conditional_refs(cx, child, path, resolved),
                };
                path.truncate(len);
                r?;
            }
            Ok(())
        }
        Value::Array(a) => {
            for (i, c) in a.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                let r = resolve_conditional_refs(cx, c, path, resolved);
                path.truncate(len);
                r?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn resolve_one(cx: &Ctx<'_>, rt: ResourceType, q: &str, reference: &str) -> Result<String, FhirError> {
    authorize(cx.principal, rt, false)?;
    match cx.matches(rt, q)?.as_slice() {
        [(id, _)] => Ok(format!("{rt}/{id}")),
        [] => Err(FhirError::new(
            StatusCode::PRECONDITION_FAILED,
            IssueCode::NotFound,
            format!("the conditional reference {reference} matches no {rt} on this server; load it first"),
        )),
        _ => Err(FhirError::new(
            StatusCode::PRECONDITION_FAILED,
            IssueCode::MultipleMatches,
            format!("the conditional reference {reference} matches more than one {rt}; make the search specific"),
        )),
    }
}

fn written_entry(cx: &Ctx<'_>, b: &mut BundleWriter, w: &Written) {
    let status = match w.status {
        WriteStatus::Created => "201 Created",
        WriteStatus::Deleted | WriteStatus::NotFound => "204 No Content",
        _ => "200 OK",
    };
    let mut response = json!({"status": status});
    if w.status != WriteStatus::NotFound {
        response["etag"] = json!(format!("W/\"{}\"", w.version));
        response["lastModified"] = json!(wire::instant(w.updated_ms));
    }
    if matches!(
        w.status,
        WriteStatus::Created | WriteStatus::Updated | WriteStatus::Existing
    ) {
        response["location"] = json!(format!("{}/{}/{}/_history/{}", cx.base, w.rtype, w.id, w.version));
    }
    let mut fields = json!({"response": response});
    if w.json.is_some() {
        fields["fullUrl"] = json!(format!("{}/{}/{}", cx.base, w.rtype, w.id));
    }
    b.entry(fields, w.json.as_deref());
}

fn error_entry(b: &mut BundleWriter, e: &FhirError) {
    let status = format!("{} {}", e.status.as_u16(), e.status.canonical_reason().unwrap_or(""));
    b.entry(
        json!({"response": {"status": status.trim(), "outcome": e.outcome_json()}}),
        None,
    );
}
