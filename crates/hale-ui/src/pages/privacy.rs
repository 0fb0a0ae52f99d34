//! Break-glass in the web UI: the clinician's form on a refused record
//! (`POST /ui/patient/{id}/break-glass`), and the privacy officer's pages:
//! the break-glass review list with its close form (`/ui/break-glass`) and
//! "who looked at this patient" (`/ui/who-looked`), both over the FHIR API
//! (`AuditEvent/$break-glass`, `AuditEvent?patient=&agent=&purpose=&date=`),
//! so the server's rules (privacy officer only, audit) apply unchanged.

use super::render;
use crate::chrome::Chrome;
use crate::fhir::Answer;
use crate::{check_post, error_page, read_form, signed_in, view, UiState};
use askama::Template;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use hale_server::config::Role;
use serde_json::{json, Value};
use std::collections::HashMap;

/// Whether a FHIR answer is the refusal that offers break-glass.
pub fn offers_break_glass(a: &Answer) -> bool {
    a.status == StatusCode::FORBIDDEN && a.body["issue"][0]["code"] == "suppressed"
}

/// `POST /ui/patient/{id}/break-glass`: the reason from the record page's form.
pub async fn break_glass(State(ui): UiState, Path(id): Path<String>, req: Request) -> Response {
    let (headers, form) = match read_form(req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let s = match check_post(&ui, &headers, &form) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let fhir = s.client(&ui);
    let reason = form.text("reason");
    let body = json!({"resourceType": "Parameters", "parameter": [{"name": "reason", "valueString": reason}]});
    let a = fhir
        .write(
            Method::POST,
            &format!("/Patient/{}/$break-glass", super::q(&id)),
            &body,
            None,
        )
        .await;
    if a.ok() {
        return Redirect::to(&format!("/ui/patient/{}?saved=break-glass", super::q(&id))).into_response();
    }
    if a.status == StatusCode::BAD_REQUEST {
        return Redirect::to(&format!("/ui/patient/{}?btg-error=reason", super::q(&id))).into_response();
    }
    error_page(&ui, a.status, &a.problem())
}

pub struct Episode {
    pub id: String,
    pub when: String,
    pub until: String,
    pub user: String,
    pub patient: String,
    pub patient_id: String,
    pub reason: String,
    pub accesses: u64,
    pub status: String,
    pub closed: String,
}

#[derive(Template)]
#[template(path = "break_glass.html")]
struct Review {
    c: Chrome,
    status: String,
    episodes: Vec<Episode>,
    error: Option<String>,
    flash: Option<String>,
}

fn ext<'a>(r: &'a Value, suffix: &str) -> &'a Value {
    r["extension"]
        .as_array()
        .and_then(|es| {
            es.iter()
                .find(|e| e["url"].as_str().is_some_and(|u| u.ends_with(suffix)))
        })
        .unwrap_or(&Value::Null)
}

fn privacy_only(s: &crate::Signed) -> Option<&'static str> {
    (s.principal.role != Role::PrivacyOfficer).then_some("Only a privacy officer can review break-glass access.")
}

/// `GET /ui/break-glass?status=open|closed|all`.
pub async fn review(State(ui): UiState, Query(q): Query<HashMap<String, String>>, headers: HeaderMap) -> Response {
    let s = match signed_in(&ui, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Some(m) = privacy_only(&s) {
        return error_page(&ui, StatusCode::FORBIDDEN, m);
    }
    let fhir = s.client(&ui);
    let status = match q.get("status").map(String::as_str) {
        Some("closed") => "closed",
        Some("all") => "all",
        _ => "open",
    };
    let a = fhir.get(&format!("/AuditEvent/$break-glass?status={status}")).await;
    let mut episodes = Vec::new();
    let error = (!a.ok()).then(|| a.problem());
    if a.ok() {
        for e in a.body["entry"].as_array().into_iter().flatten() {
            if e["search"]["mode"] != "match" {
                continue;
            }
            let r = &e["resource"];
            let patient_ref = r["entity"][0]["what"]["reference"].as_str().unwrap_or("");
            let patient_id = patient_ref.trim_start_matches("Patient/").to_string();
            let desc = r["outcomeDesc"].as_str().unwrap_or("");
            let reason = desc.split_once(": ").map(|(_, r)| r).unwrap_or(desc).to_string();
            episodes.push(Episode {
                id: r["id"].as_str().unwrap_or("").to_string(),
                when: r["recorded"].as_str().map(view::date_time).unwrap_or_default(),
                until: ext(r, "break-glass-end")["valueInstant"]
                    .as_str()
                    .map(view::date_time)
                    .unwrap_or_default(),
                user: r["agent"][0]["who"]["display"].as_str().unwrap_or("").to_string(),
                patient: patient_ref.to_string(),
                patient_id,
                reason,
                accesses: ext(r, "break-glass-accesses")["valueUnsignedInt"].as_u64().unwrap_or(0),
                status: ext(r, "break-glass-review-status")["valueCode"]
                    .as_str()
                    .unwrap_or("open")
                    .to_string(),
                closed: ext(r, "break-glass-closed-by")["valueReference"]["display"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            });
        }
    }
    render(&Review {
        c: Chrome::new(&ui, &s, "Break-glass review", "break-glass"),
        status: status.to_string(),
        episodes,
        error,
        flash: q.get("closed").map(|id| format!("Review of episode {id} closed.")),
    })
}

/// `POST /ui/break-glass/{id}/close` with an optional note.
pub async fn close(State(ui): UiState, Path(id): Path<String>, req: Request) -> Response {
    let (headers, form) = match read_form(req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let s = match check_post(&ui, &headers, &form) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let fhir = s.client(&ui);
    let body = json!({"resourceType": "Parameters", "parameter": [{"name": "note", "valueString": form.text("note")}]});
    let a = fhir
        .write(
            Method::POST,
            &format!("/AuditEvent/{}/$break-glass-close", super::q(&id)),
            &body,
            None,
        )
        .await;
    if a.ok() {
        return Redirect::to(&format!("/ui/break-glass?closed={}", super::q(&id))).into_response();
    }
    error_page(&ui, a.status, &a.problem())
}

pub struct Look {
    pub when: String,
    pub user: String,
    pub role: String,
    pub action: String,
    pub purpose: String,
    pub patient: String,
    pub what: String,
}

#[derive(Template)]
#[template(path = "who_looked.html")]
struct WhoLooked {
    c: Chrome,
    patient: String,
    agent: String,
    purpose: String,
    from: String,
    to: String,
    rows: Vec<Look>,
    error: Option<String>,
    searched: bool,
}

/// `GET /ui/who-looked?patient=&agent=&purpose=&from=&to=`: the audit trail.
pub async fn who_looked(State(ui): UiState, Query(q): Query<HashMap<String, String>>, headers: HeaderMap) -> Response {
    let s = match signed_in(&ui, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    if s.principal.role != Role::PrivacyOfficer {
        return error_page(
            &ui,
            StatusCode::FORBIDDEN,
            "Only a privacy officer can see who looked at a record.",
        );
    }
    let fhir = s.client(&ui);
    let get = |k: &str| q.get(k).map(|v| v.trim().to_string()).unwrap_or_default();
    let (patient, agent, purpose, from, to) = (get("patient"), get("agent"), get("purpose"), get("from"), get("to"));
    let mut params: Vec<(String, String)> = Vec::new();
    if !patient.is_empty() {
        params.push((
            "patient".into(),
            format!("Patient/{}", patient.trim_start_matches("Patient/")),
        ));
    }
    if !agent.is_empty() {
        params.push(("agent".into(), agent.clone()));
    }
    if !purpose.is_empty() {
        params.push(("purpose".into(), purpose.clone()));
    }
    if !from.is_empty() {
        params.push(("date".into(), format!("ge{from}")));
    }
    if !to.is_empty() {
        params.push(("date".into(), format!("le{to}")));
    }
    let searched = !params.is_empty();
    let mut rows = Vec::new();
    let mut error = None;
    if searched {
        let query = audit_query(&params);
        let a = fhir.get(&format!("/AuditEvent?{query}")).await;
        if a.ok() {
            for r in a.entries() {
                rows.push(Look {
                    when: r["recorded"].as_str().map(view::date_time).unwrap_or_default(),
                    user: r["agent"][0]["who"]["display"].as_str().unwrap_or("").to_string(),
                    role: r["agent"][0]["type"]["text"].as_str().unwrap_or("").to_string(),
                    action: r["subtype"][0]["display"].as_str().unwrap_or("").to_string(),
                    purpose: r["purposeOfEvent"][0]["coding"][0]["code"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                    patient: r["entity"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|e| e["what"]["reference"].as_str())
                        .find(|x| x.starts_with("Patient/"))
                        .unwrap_or("")
                        .to_string(),
                    what: r["outcomeDesc"].as_str().unwrap_or("").to_string(),
                });
            }
        } else {
            error = Some(a.problem());
        }
    }
    render(&WhoLooked {
        c: Chrome::new(&ui, &s, "Who looked at a record", "who-looked"),
        patient,
        agent,
        purpose,
        from,
        to,
        rows,
        error,
        searched,
    })
}

fn audit_query(params: &[(String, String)]) -> String {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        ser.append_pair(k, v);
    }
    ser.append_pair("_sort", "-date");
    ser.append_pair("_count", "200");
    ser.finish()
}
