//! Book or rebook: free slots for a clinic, a "check your answers" page,
//! then one FHIR create. The store refuses a slot taken meanwhile, and the
//! page says so plainly. A rebooking links the new appointment to the
//! postponed one (`rebooked-from`).

use super::record::Banner;
use super::{q, render};
use crate::chrome::Chrome;
use crate::{check_post, error_page, read_form, signed_in, view, UiState};
use askama::Template;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::{json, Value};
use std::collections::HashMap;

/// Free slots listed at once.
pub const SLOTS_MAX: usize = 30;

pub struct SlotRow {
    pub id: String,
    pub when: String,
    pub minutes: i64,
}

#[derive(Template)]
#[template(path = "book.html")]
struct Book {
    c: Chrome,
    b: Banner,
    id: String,
    rebook: Option<String>,
    clinics: Vec<(String, String)>,
    clinic: String,
    from: String,
    slots: Vec<SlotRow>,
    message: Option<String>,
}

#[derive(Template)]
#[template(path = "book_check.html")]
struct Check {
    c: Chrome,
    b: Banner,
    id: String,
    rebook: Option<String>,
    slot: String,
    schedule: String,
    clinic: String,
    when: String,
    minutes: i64,
}

fn minutes(slot: &Value) -> i64 {
    let t = |k: &str| {
        slot[k]
            .as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|d| d.timestamp())
    };
    match (t("start"), t("end")) {
        (Some(a), Some(b)) => (b - a) / 60,
        _ => 0,
    }
}

fn clinic_label(schedule: &Value) -> String {
    let svc = schedule["serviceType"].get(0).map(view::concept).unwrap_or_default();
    let loc = schedule["actor"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| view::ref_id(a, "Location").is_some())
        .and_then(|a| {
            a["display"].as_str().map(str::to_string).or_else(|| {
                // Demo and Hale ids: `loc-<site>-<service>`.
                view::ref_id(a, "Location").map(|l| l.split('-').nth(1).unwrap_or(l).to_uppercase())
            })
        })
        .unwrap_or_default();
    match (svc.is_empty(), loc.is_empty()) {
        (false, false) => format!("{svc} – {loc}"),
        (false, true) => svc,
        _ => loc,
    }
}

fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

pub async fn slots(State(ui): UiState, Query(qs): Query<HashMap<String, String>>, headers: HeaderMap) -> Response {
    let s = match signed_in(&ui, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let id = qs.get("patient").cloned().unwrap_or_default();
    let rebook = qs.get("rebook").filter(|r| valid_id(r)).cloned();
    if !valid_id(&id) {
        return error_page(
            &ui,
            StatusCode::BAD_REQUEST,
            "Choose a patient first: find them, then book from their record.",
        );
    }
    let fhir = s.client(&ui);
    let p = fhir.get(&format!("/Patient/{}", q(&id))).await;
    if !p.ok() {
        return error_page(&ui, p.status, &p.problem());
    }
    let scheds = fhir.get("/Schedule?_count=1000&active=true").await;
    let mut clinics: Vec<(String, String)> = scheds
        .entries()
        .iter()
        .map(|r| (r["id"].as_str().unwrap_or("").to_string(), clinic_label(r)))
        .collect();
    clinics.sort_by(|a, b| a.1.cmp(&b.1));
    let mut clinic = qs.get("clinic").filter(|c| valid_id(c)).cloned().unwrap_or_default();
    let today = hale_sched::uktime::uk_date(hale_server::now_ms());
    let from = qs
        .get("from")
        .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
        .unwrap_or(today)
        .max(today);
    // A rebooking starts at the postponed appointment's clinic.
    if clinic.is_empty() {
        if let Some(r) = &rebook {
            let old = fhir.get(&format!("/Appointment/{}", q(r))).await;
            if let Some(slot) = old.body["slot"][0]["reference"].as_str() {
                let sl = fhir.get(&format!("/{slot}")).await;
                if let Some(sc) = view::ref_id(&sl.body["schedule"], "Schedule") {
                    clinic = sc.to_string();
                }
            }
        }
    }
    let mut slots = Vec::new();
    let mut message = None;
    if !clinic.is_empty() {
        let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
        let start = format!("{from}T00:00:00Z").max(now);
        let end = from + chrono::Duration::days(56);
        let a = fhir
            .get(&format!(
                "/Slot?schedule=Schedule/{}&status=free&start=ge{}&start=lt{end}&_sort=start&_count={SLOTS_MAX}",
                q(&clinic),
                q(&start)
            ))
            .await;
        if !a.ok() {
            message = Some(a.problem());
        }
        slots = a
            .entries()
            .iter()
            .map(|r| SlotRow {
                id: r["id"].as_str().unwrap_or("").to_string(),
                when: r["start"].as_str().map(view::date_time).unwrap_or_default(),
                minutes: minutes(r),
            })
            .collect();
    }
    render(&Book {
        c: Chrome::new(&ui, &s, "Book an appointment", "find"),
        b: Banner::of(&p.body, ""),
        id,
        rebook,
        clinics,
        clinic,
        from: from.to_string(),
        slots,
        message,
    })
}

pub async fn check(State(ui): UiState, Query(qs): Query<HashMap<String, String>>, headers: HeaderMap) -> Response {
    let s = match signed_in(&ui, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let id = qs.get("patient").cloned().unwrap_or_default();
    let slot = qs.get("slot").cloned().unwrap_or_default();
    if !valid_id(&id) || !valid_id(&slot) {
        return error_page(&ui, StatusCode::BAD_REQUEST, "Choose a patient and a free slot first.");
    }
    let fhir = s.client(&ui);
    let (pu, su) = (format!("/Patient/{}", q(&id)), format!("/Slot/{}", q(&slot)));
    let (p, sl) = tokio::join!(fhir.get(&pu), fhir.get(&su));
    if !p.ok() {
        return error_page(&ui, p.status, &p.problem());
    }
    if !sl.ok() {
        return error_page(&ui, sl.status, &sl.problem());
    }
    let schedule = view::ref_id(&sl.body["schedule"], "Schedule").unwrap_or("").to_string();
    let sc = fhir.get(&format!("/Schedule/{}", q(&schedule))).await;
    render(&Check {
        c: Chrome::new(&ui, &s, "Check the booking", "find"),
        b: Banner::of(&p.body, ""),
        id,
        rebook: qs.get("rebook").filter(|r| valid_id(r)).cloned(),
        slot,
        clinic: clinic_label(&sc.body),
        schedule,
        when: sl.body["start"].as_str().map(view::date_time).unwrap_or_default(),
        minutes: minutes(&sl.body),
    })
}

pub async fn confirm(State(ui): UiState, req: Request) -> Response {
    let (headers, form) = match read_form(req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let s = match check_post(&ui, &headers, &form) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let id = form.text("patient");
    let slot = form.text("slot");
    let rebook = Some(form.text("rebook")).filter(|r| valid_id(r));
    if !valid_id(&id) || !valid_id(&slot) {
        return error_page(&ui, StatusCode::BAD_REQUEST, "Choose a patient and a free slot first.");
    }
    let fhir = s.client(&ui);
    let sl = fhir.get(&format!("/Slot/{}", q(&slot))).await;
    if !sl.ok() {
        return error_page(&ui, sl.status, &sl.problem());
    }
    let again = format!(
        "/ui/book?patient={}&clinic={}{}",
        q(&id),
        q(view::ref_id(&sl.body["schedule"], "Schedule").unwrap_or("")),
        rebook.as_ref().map(|r| format!("&rebook={}", q(r))).unwrap_or_default()
    );
    if sl.body["status"] != "free" {
        return taken(&ui, &again);
    }
    let schedule = view::ref_id(&sl.body["schedule"], "Schedule").unwrap_or("").to_string();
    let sc = fhir.get(&format!("/Schedule/{}", q(&schedule))).await;
    let mut participant = vec![json!({"actor": {"reference": format!("Patient/{id}")}, "status": "accepted"})];
    for a in sc.body["actor"].as_array().into_iter().flatten() {
        participant.push(json!({"actor": a, "status": "accepted"}));
    }
    let mut appt = json!({
        "resourceType": "Appointment",
        "status": "booked",
        "slot": [{"reference": format!("Slot/{slot}")}],
        "start": sl.body["start"],
        "end": sl.body["end"],
        "participant": participant,
        "created": chrono::Utc::now().format("%Y-%m-%d").to_string(),
    });
    for k in ["serviceType", "serviceCategory", "specialty"] {
        if sc.body[k].is_array() {
            appt[k] = sc.body[k].clone();
        }
    }
    if let Some(r) = &rebook {
        appt["extension"] = json!([{"url": hale_fhir::codes::EXT_REBOOKED_FROM, "valueReference": {"reference": format!("Appointment/{r}")}}]);
    }
    let w = fhir.write(Method::POST, "/Appointment", &appt, None).await;
    if w.status == StatusCode::CONFLICT || w.status == StatusCode::PRECONDITION_FAILED {
        return taken(&ui, &again);
    }
    if !w.ok() {
        return error_page(
            &ui,
            w.status,
            &format!("The appointment was not booked: {}", w.problem()),
        );
    }
    let saved = if w.pending() { "pending" } else { "ok" };
    Redirect::to(&format!("/ui/patient/{}?saved={saved}#section-upcoming", q(&id))).into_response()
}

fn taken(ui: &crate::Ui, again: &str) -> Response {
    let msg =
        "That slot was taken by someone else a moment ago, so this appointment was not booked. Choose another slot.";
    let mut r = crate::html(
        crate::chrome::render_error(Some(ui), StatusCode::CONFLICT, msg).replace(
            "<a href=\"/ui/\">Go to find a patient</a>",
            &format!("<a href=\"{}\">Choose another slot</a>", again.replace('&', "&amp;")),
        ),
    );
    *r.status_mut() = StatusCode::CONFLICT;
    r.into_response()
}
