//! Write a clinical note (a DocumentReference) and record observations
//! (vital-sign Observations) for a patient. Both go through the FHIR create
//! with `X-Hale-Offline: accept`, so a cut-off site saves them in its
//! journal and says so.

use super::record::Banner;
use super::{q, render, FieldError};
use crate::chrome::Chrome;
use crate::fhir::Client;
use crate::{check_post, error_page, read_form, signed_in, view, Signed, Ui, UiState};
use askama::Template;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::{json, Value};
use std::sync::Arc;

/// Longest note, in characters.
pub const NOTE_CHARS_MAX: usize = 10_000;

#[derive(Template)]
#[template(path = "note.html")]
struct Note {
    c: Chrome,
    id: String,
    b: Banner,
    errors: Vec<FieldError>,
    note_error: Option<String>,
    title: String,
    note: String,
    max: usize,
}

async fn patient(ui: &Arc<Ui>, s: &Signed, id: &str) -> Result<(Client, Value), Response> {
    let fhir = s.client(ui);
    let p = fhir.get(&format!("/Patient/{}", q(id))).await;
    if !p.ok() {
        return Err(error_page(ui, p.status, &p.problem()));
    }
    let body = p.body.clone();
    Ok((fhir, body))
}

pub async fn page(State(ui): UiState, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let s = match signed_in(&ui, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (_, p) = match patient(&ui, &s, &id).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    render(&Note {
        c: Chrome::new(&ui, &s, "Write a note", "find"),
        b: Banner::of(&p, ""),
        id,
        errors: vec![],
        note_error: None,
        title: String::new(),
        note: String::new(),
        max: NOTE_CHARS_MAX,
    })
}

pub async fn submit(State(ui): UiState, Path(id): Path<String>, req: Request) -> Response {
    let (headers, form) = match read_form(req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let s = match check_post(&ui, &headers, &form) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (fhir, p) = match patient(&ui, &s, &id).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let note = form.get("note").unwrap_or("").trim().to_string();
    let title = form.text("title");
    let problem = if note.is_empty() {
        Some("Enter the note".to_string())
    } else if note.chars().count() > NOTE_CHARS_MAX {
        Some(format!("The note must be {NOTE_CHARS_MAX} characters or fewer"))
    } else if title.chars().count() > 200 {
        Some("The title must be 200 characters or fewer".to_string())
    } else {
        None
    };
    let now = hale_server::now_ms();
    let when = chrono::DateTime::from_timestamp_millis(now)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let title = if title.is_empty() {
        "Clinical note".to_string()
    } else {
        title
    };
    let mut save_error = None;
    if problem.is_none() {
        let doc = json!({
            "resourceType": "DocumentReference",
            "status": "current",
            "docStatus": "final",
            "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3", "display": "Progress note"}], "text": "Progress note"},
            "subject": {"reference": format!("Patient/{id}")},
            "date": when,
            "author": [{"display": s.name}],
            "description": title,
            "content": [{"attachment": {"contentType": "text/plain; charset=utf-8", "language": "en-GB", "data": view::base64(note.as_bytes()), "title": title, "creation": when}}]
        });
        let w = fhir.write(Method::POST, "/DocumentReference", &doc, None).await;
        if w.ok() {
            let saved = if w.pending() { "pending" } else { "ok" };
            return Redirect::to(&format!("/ui/patient/{}?saved={saved}#section-notes", q(&id))).into_response();
        }
        save_error = Some(format!("The note was not saved: {}", w.problem()));
    }
    let message = problem.or(save_error).unwrap_or_default();
    let mut r = render(&Note {
        c: Chrome::new(&ui, &s, "Error: Write a note", "find"),
        b: Banner::of(&p, ""),
        id,
        errors: vec![FieldError::new("note", message.clone())],
        note_error: Some(message),
        title: form.text("title"),
        note,
        max: NOTE_CHARS_MAX,
    });
    *r.status_mut() = StatusCode::BAD_REQUEST;
    r
}

/// A vital sign the form takes: LOINC code, name, UCUM unit, plausible range.
pub struct Vital {
    pub key: &'static str,
    pub label: &'static str,
    pub loinc: &'static str,
    pub unit: &'static str,
    pub ucum: &'static str,
    pub min: f64,
    pub max: f64,
}

pub const VITALS: &[Vital] = &[
    Vital {
        key: "systolic",
        label: "Systolic blood pressure",
        loinc: "8480-6",
        unit: "mmHg",
        ucum: "mm[Hg]",
        min: 40.0,
        max: 300.0,
    },
    Vital {
        key: "diastolic",
        label: "Diastolic blood pressure",
        loinc: "8462-4",
        unit: "mmHg",
        ucum: "mm[Hg]",
        min: 20.0,
        max: 200.0,
    },
    Vital {
        key: "pulse",
        label: "Heart rate",
        loinc: "8867-4",
        unit: "beats/minute",
        ucum: "/min",
        min: 20.0,
        max: 300.0,
    },
    Vital {
        key: "resp",
        label: "Respiratory rate",
        loinc: "9279-1",
        unit: "breaths/minute",
        ucum: "/min",
        min: 3.0,
        max: 80.0,
    },
    Vital {
        key: "spo2",
        label: "Oxygen saturation",
        loinc: "59408-5",
        unit: "%",
        ucum: "%",
        min: 50.0,
        max: 100.0,
    },
    Vital {
        key: "temp",
        label: "Temperature",
        loinc: "8310-5",
        unit: "°C",
        ucum: "Cel",
        min: 25.0,
        max: 45.0,
    },
    Vital {
        key: "weight",
        label: "Weight",
        loinc: "29463-7",
        unit: "kg",
        ucum: "kg",
        min: 0.3,
        max: 400.0,
    },
];

pub struct Field {
    pub key: &'static str,
    pub label: &'static str,
    pub unit: &'static str,
    pub value: String,
    pub error: Option<String>,
}

#[derive(Template)]
#[template(path = "observation.html")]
struct Obs {
    c: Chrome,
    id: String,
    b: Banner,
    errors: Vec<FieldError>,
    fields: Vec<Field>,
}

fn fields(form: Option<&crate::Form>) -> Vec<Field> {
    VITALS
        .iter()
        .map(|v| Field {
            key: v.key,
            label: v.label,
            unit: v.unit,
            value: form.map(|f| f.text(v.key)).unwrap_or_default(),
            error: None,
        })
        .collect()
}

pub async fn obs_page(State(ui): UiState, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let s = match signed_in(&ui, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (_, p) = match patient(&ui, &s, &id).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    render(&Obs {
        c: Chrome::new(&ui, &s, "Record observations", "find"),
        b: Banner::of(&p, ""),
        id,
        errors: vec![],
        fields: fields(None),
    })
}

/// Check each filled field: a number within its plausible range.
pub fn check_vitals(form: &crate::Form) -> (Vec<(&'static Vital, f64)>, Vec<FieldError>) {
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for v in VITALS {
        let raw = form.text(v.key);
        if raw.is_empty() {
            continue;
        }
        match raw.parse::<f64>() {
            Ok(x) if x.is_finite() && x >= v.min && x <= v.max => ok.push((v, x)),
            Ok(_) => errors.push(FieldError::new(
                v.key,
                format!("{} must be between {} and {} {}", v.label, v.min, v.max, v.unit),
            )),
            Err(_) => errors.push(FieldError::new(v.key, format!("{} must be a number, like 72", v.label))),
        }
    }
    if ok.is_empty() && errors.is_empty() {
        errors.push(FieldError::new(VITALS[0].key, "Enter at least one observation"));
    }
    (ok, errors)
}

pub async fn obs_submit(State(ui): UiState, Path(id): Path<String>, req: Request) -> Response {
    let (headers, form) = match read_form(req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let s = match check_post(&ui, &headers, &form) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (fhir, p) = match patient(&ui, &s, &id).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let (ok, mut errors) = check_vitals(&form);
    if errors.is_empty() {
        let when = chrono::DateTime::from_timestamp_millis(hale_server::now_ms())
            .unwrap_or_default()
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let mut any_pending = false;
        for (v, x) in &ok {
            let obs = json!({
                "resourceType": "Observation",
                "status": "final",
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs", "display": "Vital Signs"}]}],
                "code": {"coding": [{"system": "http://loinc.org", "code": v.loinc, "display": v.label}], "text": v.label},
                "subject": {"reference": format!("Patient/{id}")},
                "effectiveDateTime": when,
                "issued": when,
                "performer": [{"display": s.name}],
                "valueQuantity": {"value": if x.fract() == 0.0 && x.abs() < 1e9 { json!(*x as i64) } else { json!(x) }, "unit": v.unit, "system": "http://unitsofmeasure.org", "code": v.ucum}
            });
            let w = fhir.write(Method::POST, "/Observation", &obs, None).await;
            if !w.ok() {
                errors.push(FieldError::new(
                    v.key,
                    format!("{} was not saved: {}", v.label, w.problem()),
                ));
                break;
            }
            any_pending |= w.pending();
        }
        if errors.is_empty() {
            let saved = if any_pending { "pending" } else { "ok" };
            return Redirect::to(&format!("/ui/patient/{}?saved={saved}#section-vitals", q(&id))).into_response();
        }
    }
    let mut f = fields(Some(&form));
    for e in &errors {
        if let Some(x) = f.iter_mut().find(|x| x.key == e.field) {
            x.error = Some(e.message.clone());
        }
    }
    let mut r = render(&Obs {
        c: Chrome::new(&ui, &s, "Error: Record observations", "find"),
        b: Banner::of(&p, ""),
        id,
        errors,
        fields: f,
    });
    *r.status_mut() = StatusCode::BAD_REQUEST;
    r
}
