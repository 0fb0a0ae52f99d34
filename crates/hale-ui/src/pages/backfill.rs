//! Paper backfill (admin, from the outage console): a note written on paper
//! during downtime, entered through `POST /$backfill` with its original
//! clinical time and author; the write's audit records who typed it in.

use super::note::Field;
use super::{q, render, FieldError};
use crate::chrome::Chrome;
use crate::{check_post, error_page, read_form, signed_in, view, Signed, UiState};
use askama::Template;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use hale_server::config::Role;
use serde_json::json;
use std::collections::HashMap;

#[derive(Template)]
#[template(path = "backfill.html")]
struct Backfill {
    c: Chrome,
    errors: Vec<FieldError>,
    fields: Vec<Field>,
    incident: String,
    done: Option<String>,
}

const FIELDS: &[(&str, &str, &str)] = &[
    (
        "nhs",
        "NHS number",
        "The patient's 10-digit NHS number, from the paper record",
    ),
    (
        "when",
        "When it was written",
        "Date and time, for example 03/12/2026 14:30",
    ),
    ("author", "Written by", "Name and role, as on the paper"),
    ("text", "The note", ""),
];

fn fields(form: Option<&crate::Form>, errors: &[FieldError]) -> Vec<Field> {
    FIELDS
        .iter()
        .map(|(k, label, hint)| Field {
            key: k,
            label,
            unit: hint,
            value: form.map(|f| f.text(k)).unwrap_or_default(),
            error: errors.iter().find(|e| e.field == *k).map(|e| e.message.clone()),
        })
        .collect()
}

fn admin(ui: &crate::Ui, s: &Signed) -> Option<Response> {
    (s.principal.role != Role::Admin)
        .then(|| error_page(ui, StatusCode::FORBIDDEN, "Paper backfill needs the admin role."))
}

pub async fn page(State(ui): UiState, Query(qs): Query<HashMap<String, String>>, headers: HeaderMap) -> Response {
    let s = match signed_in(&ui, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Some(r) = admin(&ui, &s) {
        return r;
    }
    render(&Backfill {
        c: Chrome::new(&ui, &s, "Enter a paper record", "outage"),
        errors: vec![],
        fields: fields(None, &[]),
        incident: qs.get("incident").cloned().unwrap_or_default(),
        done: qs.get("done").map(|_| "Entered. Type in the next one.".to_string()),
    })
}

/// `03/12/2026 14:30` (UK local time) as an instant.
pub fn parse_when(s: &str) -> Option<String> {
    let t = chrono::NaiveDateTime::parse_from_str(s.trim(), "%d/%m/%Y %H:%M")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(s.trim(), "%Y-%m-%d %H:%M"))
        .ok()?;
    let ms = hale_sched::uktime::from_uk_local(t);
    Some(
        chrono::DateTime::from_timestamp_millis(ms)?
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string(),
    )
}

pub async fn submit(State(ui): UiState, req: Request) -> Response {
    let (headers, form) = match read_form(req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let s = match check_post(&ui, &headers, &form) {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Some(r) = admin(&ui, &s) {
        return r;
    }
    let fhir = s.client(&ui);
    let incident = form.text("incident");
    let mut errors = Vec::new();
    let nhs = view::parse_nhs_number(&form.text("nhs"));
    if nhs.is_none() {
        errors.push(FieldError::new("nhs", "Enter a valid 10-digit NHS number"));
    }
    let when = parse_when(&form.text("when"));
    match &when {
        None => errors.push(FieldError::new("when", "Enter the date and time like 03/12/2026 14:30")),
        Some(w) if w.as_str() > chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string().as_str() => errors.push(
            FieldError::new("when", "The time it was written cannot be in the future"),
        ),
        _ => {}
    }
    let author = form.text("author");
    if author.is_empty() {
        errors.push(FieldError::new("author", "Enter who wrote it"));
    }
    let text = form.text("text");
    if text.is_empty() {
        errors.push(FieldError::new("text", "Enter the note"));
    } else if text.chars().count() > super::note::NOTE_CHARS_MAX {
        errors.push(FieldError::new("text", "The note is too long"));
    }
    let mut patient = None;
    if let Some(n) = &nhs {
        let a = fhir
            .get(&format!(
                "/Patient?identifier={}&_count=2",
                q(&format!("{}|{n}", hale_fhir::codes::NHS_NUMBER_SYSTEM))
            ))
            .await;
        match a.entries().as_slice() {
            [p] => patient = p["id"].as_str().map(|id| (id.to_string(), view::banner_name(p))),
            [] => errors.push(FieldError::new("nhs", "No patient has this NHS number")),
            _ => errors.push(FieldError::new(
                "nhs",
                "More than one patient has this NHS number; tell IT",
            )),
        }
    }
    if errors.is_empty() {
        let (pid, _name) = patient.clone().expect("checked");
        let when = when.clone().expect("checked");
        let doc = json!({
            "resourceType": "DocumentReference",
            "status": "current",
            "docStatus": "final",
            "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3", "display": "Progress note"}], "text": "Progress note (from paper)"},
            "subject": {"reference": format!("Patient/{pid}")},
            "date": when,
            "author": [{"display": author}],
            "description": "Paper note entered after downtime",
            "context": {"period": {"start": when}},
            "content": [{"attachment": {"contentType": "text/plain; charset=utf-8", "language": "en-GB", "data": view::base64(text.as_bytes()), "title": "Paper note", "creation": when}}]
        });
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": doc, "request": {"method": "POST", "url": "DocumentReference"}}
        ]});
        let path = if incident.is_empty() {
            "/$backfill".to_string()
        } else {
            format!("/$backfill?incident={}", q(&incident))
        };
        let w = fhir.write(Method::POST, &path, &bundle, None).await;
        if w.ok() {
            let to = format!("/ui/outage/backfill?done=1&incident={}", q(&incident));
            return axum::response::IntoResponse::into_response(axum::response::Redirect::to(&to));
        }
        errors.push(FieldError::new("text", format!("Not entered: {}", w.problem())));
    }
    let mut r = render(&Backfill {
        c: Chrome::new(&ui, &s, "Error: Enter a paper record", "outage"),
        fields: fields(Some(&form), &errors),
        errors,
        incident,
        done: None,
    });
    *r.status_mut() = StatusCode::BAD_REQUEST;
    r
}
