//! The interactions FHIR clients use beyond plain CRUD: conditional update
//! and delete, JSON Patch, and `$validate`.
//!
//! DESIGN: none of these needs a new kind of command. The handler searches or
//! reads on its node, then writes an ordinary `Update` with `If-Match` on the
//! version it saw, or a `Create` with `If-None-Exist` on the same search, so
//! apply re-checks the condition in log order on every replica: a write that
//! raced in between makes the command fail (409/412) instead of updating the
//! wrong resource or creating a duplicate.

use crate::rest::{check_content_type, parse_json, query_pairs, single, Ctx};
use crate::wire::{json_response, FhirError};
use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::Response;
use hale_fhir::search::parse_query;
use hale_fhir::validate::validate_resource;
use hale_fhir::{Issue, IssueCode, ResourceType};
use hale_store::query::{self, Current};
use hale_store::{AuditAction, CommandKind, WriteOp};
use serde_json::Value;

/// At most this many operations in one JSON Patch.
pub const PATCH_OPS_MAX: usize = 1_000;

impl Ctx<'_> {
    /// The ids (and versions) of what a conditional interaction's search finds,
    /// at most two (enough to tell "several").
    pub(crate) fn matches(&self, rt: ResourceType, q: &str) -> Result<Vec<(String, u64)>, FhirError> {
        let pairs = query_pairs(q);
        if pairs.is_empty() {
            return Err(FhirError::bad_request(
                "a conditional interaction needs search parameters in the URL, such as ?identifier=system|value",
            ));
        }
        // Strict: an ignored parameter would widen the match.
        let mut parsed = parse_query(rt, &pairs, true).map_err(|i| FhirError::invalid(vec![i]))?;
        parsed.count = 2;
        parsed.offset = 0;
        let page = self.app.reader.with(|c| query::search(c, &parsed))?;
        Ok(page.matches.into_iter().map(|f| (f.id, f.version)).collect())
    }

    /// `PUT [type]?search`: update the one match, create when there is none,
    /// 412 when there are several.
    pub(crate) async fn conditional_update(
        &self,
        rt: ResourceType,
        q: &str,
        body: &[u8],
    ) -> Result<Response, FhirError> {
        self.allow(rt, true, AuditAction::Update, None).await?;
        check_content_type(self.headers)?;
        let mut resource = parse_json(body)?;
        validate_resource(&resource, Some(rt)).map_err(FhirError::invalid)?;
        let found = self.matches(rt, q)?;
        let body_id = resource.get("id").and_then(Value::as_str).map(str::to_string);
        let op = match found.as_slice() {
            [] => {
                // No match: a create that apply refuses if a match appeared meanwhile.
                let if_none_exist = Some(query_pairs(q));
                match body_id {
                    Some(id) => {
                        if !crate::rest::valid_id(&id) {
                            return Err(
                                FhirError::bad_request(format!("'{id}' is not a valid FHIR id")).at(format!("{rt}.id"))
                            );
                        }
                        // R4: the client's id is kept (update as create), still conditional.
                        WriteOp::Create {
                            rtype: rt.as_str().into(),
                            id,
                            resource,
                            if_none_exist,
                        }
                    }
                    None => WriteOp::Create {
                        rtype: rt.as_str().into(),
                        id: uuid::Uuid::new_v4().to_string(),
                        resource,
                        if_none_exist,
                    },
                }
            }
            [(id, version)] => {
                if let Some(b) = &body_id {
                    if b != id {
                        return Err(FhirError::bad_request(format!(
                            "the resource id '{b}' is not the id of the resource the search found ({id})"
                        ))
                        .at(format!("{rt}.id")));
                    }
                }
                resource["id"] = Value::String(id.clone());
                WriteOp::Update {
                    rtype: rt.as_str().into(),
                    id: id.clone(),
                    resource,
                    if_match: Some(*version),
                }
            }
            _ => {
                return Err(FhirError::new(
                    StatusCode::PRECONDITION_FAILED,
                    IssueCode::MultipleMatches,
                    format!("the search '{q}' matches more than one {rt}: make it specific enough to find one"),
                ))
            }
        };
        let written = single(self.propose(CommandKind::Write(op)).await?)?;
        Ok(self.write_response(&written))
    }

    /// `DELETE [type]?search`: delete the one match (204 when there is none),
    /// 412 when there are several.
    pub(crate) async fn conditional_delete(&self, rt: ResourceType, q: &str) -> Result<Response, FhirError> {
        self.allow(rt, true, AuditAction::Delete, None).await?;
        let found = self.matches(rt, q)?;
        match found.as_slice() {
            [] => {
                let mut resp = Response::new(Body::empty());
                *resp.status_mut() = StatusCode::NO_CONTENT;
                Ok(resp)
            }
            [(id, _)] => self.delete(rt, id).await,
            _ => Err(FhirError::new(
                StatusCode::PRECONDITION_FAILED,
                IssueCode::MultipleMatches,
                format!("the search '{q}' matches more than one {rt}; Hale deletes one resource at a time"),
            )),
        }
    }

    /// `PATCH [type]/[id]` with a JSON Patch (RFC 6902) body.
    pub(crate) async fn patch(&self, rt: ResourceType, id: &str, body: &[u8]) -> Result<Response, FhirError> {
        self.allow(rt, true, AuditAction::Update, Some(id)).await?;
        let ct = self
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if mime != "application/json-patch+json" {
            return Err(FhirError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                IssueCode::NotSupported,
                format!("PATCH takes a JSON Patch (Content-Type: application/json-patch+json), not '{mime}'; FHIRPath Patch is not supported"),
            ));
        }
        let ops = parse_json(body)?;
        let cur = self.app.reader.with(|c| query::read(c, rt.as_str(), id))?;
        let (mut resource, version) = match cur {
            Some(Current::Live(f)) => (
                serde_json::from_str::<Value>(f.json.as_deref().unwrap_or("{}")).expect("stored JSON is valid"),
                f.version,
            ),
            Some(Current::Deleted { .. }) => {
                return Err(FhirError::new(
                    StatusCode::GONE,
                    IssueCode::Deleted,
                    format!("{rt}/{id} was deleted"),
                ))
            }
            None => return Err(FhirError::not_found(format!("{rt}/{id} does not exist"))),
        };
        if let Some(want) = self.headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()) {
            let want = crate::wire::parse_etag(want)
                .ok_or_else(|| FhirError::bad_request(format!("If-Match '{want}' is not an ETag like W/\"3\"")))?;
            if want != version {
                return Err(FhirError::new(
                    StatusCode::PRECONDITION_FAILED,
                    IssueCode::Conflict,
                    format!("{rt}/{id} is at version {version}, not {want}"),
                ));
            }
        }
        json_patch(&mut resource, &ops)
            .map_err(|(at, msg)| FhirError::new(StatusCode::UNPROCESSABLE_ENTITY, IssueCode::Processing, msg).at(at))?;
        if let Some(m) = resource.get_mut("meta").and_then(Value::as_object_mut) {
            // The server sets these; a patch cannot.
            m.remove("versionId");
            m.remove("lastUpdated");
            if m.is_empty() {
                resource
                    .as_object_mut()
                    .expect("a resource is an object")
                    .remove("meta");
            }
        }
        if resource.get("id").and_then(Value::as_str) != Some(id)
            || resource.get("resourceType").and_then(Value::as_str) != Some(rt.as_str())
        {
            return Err(FhirError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                IssueCode::Processing,
                "a patch may not change the resource's id or type",
            ));
        }
        validate_resource(&resource, Some(rt)).map_err(FhirError::invalid)?;
        let op = WriteOp::Update {
            rtype: rt.as_str().into(),
            id: id.into(),
            resource,
            if_match: Some(version),
        };
        let written = single(self.propose(CommandKind::Write(op)).await?)?;
        Ok(self.write_response(&written))
    }

    /// `POST [type]/$validate` and `POST [type]/[id]/$validate`: the body is
    /// the resource, or a Parameters with it in `resource`. Answers 200 with an
    /// OperationOutcome listing the problems (or saying there are none); writes
    /// nothing.
    pub(crate) async fn validate_op(
        &self,
        rt: ResourceType,
        id: Option<&str>,
        body: &[u8],
    ) -> Result<Response, FhirError> {
        self.allow(rt, false, AuditAction::Execute, id).await?;
        check_content_type(self.headers)?;
        let v = parse_json(body)?;
        let resource = if v.get("resourceType").and_then(Value::as_str) == Some("Parameters") {
            v.get("parameter")
                .and_then(Value::as_array)
                .and_then(|ps| {
                    ps.iter()
                        .find(|p| p.get("name").and_then(Value::as_str) == Some("resource"))
                })
                .and_then(|p| p.get("resource"))
                .cloned()
                .ok_or_else(|| {
                    FhirError::new(
                        StatusCode::BAD_REQUEST,
                        IssueCode::Required,
                        "a Parameters body for $validate needs a 'resource' parameter",
                    )
                })?
        } else {
            v
        };
        let mut issues = match validate_resource(&resource, Some(rt)) {
            Ok(_) => Vec::new(),
            Err(issues) => issues,
        };
        if let (Some(id), Some(body_id)) = (id, resource.get("id").and_then(Value::as_str)) {
            if id != body_id {
                issues.push(
                    Issue::error(IssueCode::Invalid, format!("the resource id '{body_id}' is not '{id}'"))
                        .at(format!("{rt}.id")),
                );
            }
        }
        if issues.is_empty() {
            issues.push(Issue::information(format!("the {rt} is valid")));
        }
        Ok(json_response(
            StatusCode::OK,
            hale_fhir::outcome::operation_outcome(&issues).to_string(),
        ))
    }
}

/// Apply a JSON Patch (RFC 6902). Errors name the operation (`[i].path`).
pub fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), (String, String)> {
    let ops = ops
        .as_array()
        .ok_or_else(|| ("$".to_string(), "a JSON Patch is an array of operations".to_string()))?;
    if ops.len() > PATCH_OPS_MAX {
        return Err((
            "$".into(),
            format!("a patch may hold at most {PATCH_OPS_MAX} operations"),
        ));
    }
    for (i, op) in ops.iter().enumerate() {
        let at = |field: &str| format!("[{i}].{field}");
        let text = |field: &str| -> Result<&str, (String, String)> {
            op.get(field)
                .and_then(Value::as_str)
                .ok_or_else(|| (at(field), format!("operation {i} needs a string '{field}'")))
        };
        let path = text("path")?;
        let kind = text("op")?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| (at("value"), format!("operation {i} ({kind}) needs a 'value'")))
        };
        let res = match kind {
            "add" => add(doc, path, value()?),
            "remove" => remove(doc, path).map(|_| ()),
            "replace" => {
                let v = value()?;
                pointer_mut(doc, path)
                    .map(|slot| *slot = v)
                    .ok_or_else(|| format!("nothing at '{path}' to replace"))
            }
            "move" => {
                let from = text("from")?;
                remove(doc, from).and_then(|v| add(doc, path, v))
            }
            "copy" => {
                let from = text("from")?;
                doc.pointer(from)
                    .cloned()
                    .ok_or_else(|| format!("nothing at '{from}' to copy"))
                    .and_then(|v| add(doc, path, v))
            }
            "test" => {
                let v = value()?;
                if doc.pointer(path) == Some(&v) {
                    Ok(())
                } else {
                    Err(format!("test failed: '{path}' is not {v}"))
                }
            }
            other => Err(format!(
                "'{other}' is not a JSON Patch operation (add, remove, replace, move, copy, test)"
            )),
        };
        res.map_err(|msg| (at("path"), format!("operation {i}: {msg}")))?;
    }
    Ok(())
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn split_parent(path: &str) -> Result<(&str, String), String> {
    let i = path
        .rfind('/')
        .ok_or_else(|| format!("'{path}' is not a JSON Pointer"))?;
    Ok((&path[..i], unescape(&path[i + 1..])))
}

fn pointer_mut<'a>(doc: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    if path.is_empty() {
        return Some(doc);
    }
    doc.pointer_mut(path)
}

fn add(doc: &mut Value, path: &str, v: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = v;
        return Ok(());
    }
    let (parent, key) = split_parent(path)?;
    match pointer_mut(doc, parent) {
        Some(Value::Object(m)) => {
            m.insert(key, v);
            Ok(())
        }
        Some(Value::Array(a)) => {
            if key == "-" {
                a.push(v);
                return Ok(());
            }
            let i: usize = key.parse().map_err(|_| format!("'{key}' is not an array index"))?;
            if i > a.len() {
                return Err(format!("index {i} is past the end of '{parent}'"));
            }
            a.insert(i, v);
            Ok(())
        }
        _ => Err(format!("'{parent}' does not exist or holds no elements")),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, key) = split_parent(path)?;
    match pointer_mut(doc, parent) {
        Some(Value::Object(m)) => m
            .shift_remove(&key)
            .ok_or_else(|| format!("nothing at '{path}' to remove")),
        Some(Value::Array(a)) => {
            let i: usize = key.parse().map_err(|_| format!("'{key}' is not an array index"))?;
            if i >= a.len() {
                return Err(format!("nothing at '{path}' to remove"));
            }
            Ok(a.remove(i))
        }
        _ => Err(format!("nothing at '{path}' to remove")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(doc: Value, ops: Value, expect: Result<Value, &str>) {
        let mut d = doc.clone();
        match (json_patch(&mut d, &ops), expect) {
            (Ok(()), Ok(want)) => assert_eq!(d, want, "{ops}"),
            (Err((_, msg)), Err(want)) => assert!(msg.contains(want), "{msg} !~ {want}"),
            (got, want) => panic!("{ops}: got {got:?} (doc {d}), want {want:?}"),
        }
    }

    #[test]
    fn rfc6902() {
        let p = json!({"resourceType": "Patient", "id": "1", "name": [{"family": "Smith"}], "active": true});
        check(
            p.clone(),
            json!([{"op": "add", "path": "/name/0/given", "value": ["Ann"]}]),
            Ok(
                json!({"resourceType": "Patient", "id": "1", "name": [{"family": "Smith", "given": ["Ann"]}], "active": true}),
            ),
        );
        check(
            p.clone(),
            json!([{"op": "replace", "path": "/active", "value": false}, {"op": "remove", "path": "/name"}]),
            Ok(json!({"resourceType": "Patient", "id": "1", "active": false})),
        );
        check(
            p.clone(),
            json!([{"op": "add", "path": "/name/-", "value": {"family": "Jones"}}, {"op": "move", "from": "/name/0", "path": "/name/1"}]),
            Ok(
                json!({"resourceType": "Patient", "id": "1", "name": [{"family": "Jones"}, {"family": "Smith"}], "active": true}),
            ),
        );
        check(
            p.clone(),
            json!([{"op": "test", "path": "/active", "value": false}]),
            Err("test failed"),
        );
        check(
            p.clone(),
            json!([{"op": "remove", "path": "/birthDate"}]),
            Err("nothing at '/birthDate'"),
        );
        check(
            p.clone(),
            json!([{"op": "jump", "path": "/x"}]),
            Err("not a JSON Patch operation"),
        );
        check(p, json!({"op": "add"}), Err("array of operations"));
    }
}
