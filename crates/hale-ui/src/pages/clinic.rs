//! Today's clinic list per clinic: one click to mark a patient arrived,
//! checked in, did not attend or seen, with an undo instead of a confirm
//! dialog, and a print view. Status changes are FHIR updates with the
//! version the clerk saw; a cut-off site saves them in its journal.

use super::record::{as_of, status_text};
use super::{q, render};
use crate::chrome::Chrome;
use crate::{check_post, error_page, read_form, signed_in, view, UiState};
use askama::Template;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::NaiveDate;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// Appointments one clinic list shows.
pub const APPOINTMENTS_MAX: usize = 500;

/// The desk's actions: (FHIR status, button text).
pub const ACTIONS: &[(&str, &str)] = &[
    ("arrived", "Arrived"),
    ("checked-in", "Check in"),
    ("noshow", "Did not attend"),
    ("fulfilled", "Seen"),
];

/// The one-click actions offered from a status: what can come next at the desk.
pub fn actions_for(status: &str) -> Vec<(&'static str, &'static str)> {
    let next: &[&str] = match status {
        "booked" | "pending" | "proposed" => &["arrived", "checked-in", "noshow"],
        "arrived" => &["checked-in", "noshow"],
        "checked-in" => &["fulfilled"],
        _ => &[],
    };
    ACTIONS.iter().copied().filter(|(st, _)| next.contains(st)).collect()
}

fn day_of(q: &HashMap<String, String>) -> NaiveDate {
    q.get("date")
        .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
        .unwrap_or_else(|| hale_sched::uktime::uk_date(hale_server::now_ms()))
}

#[derive(Template)]
#[template(path = "clinics.html")]
struct Clinics {
    c: Chrome,
    date: String,
    sites: Vec<(String, Vec<(String, String)>)>,
    error: Option<String>,
}

/// Every clinic (Schedule), grouped by site.
pub async fn index(State(ui): UiState, Query(qs): Query<HashMap<String, String>>, headers: HeaderMap) -> Response {
    let s = match signed_in(&ui, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let fhir = s.client(&ui);
    let a = fhir.get("/Schedule?_count=1000&active=true").await;
    let mut sites: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for r in a.entries() {
        let id = r["id"].as_str().unwrap_or("").to_string();
        sites.entry(site_of(r)).or_default().push((id, clinic_name(r)));
    }
    for v in sites.values_mut() {
        v.sort_by(|a, b| a.1.cmp(&b.1));
    }
    render(&Clinics {
        c: Chrome::new(&ui, &s, "Clinic lists", "clinics"),
        date: day_of(&qs).to_string(),
        sites: sites.into_iter().collect(),
        error: (!a.ok()).then(|| a.problem()),
    })
}

/// The site code a Schedule's actors name (`Location/loc-qeh-...`), else "Other".
fn site_of(schedule: &Value) -> String {
    schedule["actor"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|a| a["display"].as_str().filter(|_| view::ref_id(a, "Location").is_some()))
        .map(|d| d.split(',').next_back().unwrap_or(d).trim().to_string())
        .or_else(|| {
            schedule["actor"]
                .as_array()?
                .iter()
                .find_map(|a| view::ref_id(a, "Location"))
                .and_then(|l| l.split('-').nth(1))
                .map(|s| s.to_uppercase())
        })
        .unwrap_or_else(|| "Other".into())
}

fn clinic_name(schedule: &Value) -> String {
    schedule["serviceType"]
        .get(0)
        .map(view::concept)
        .or_else(|| schedule["comment"].as_str().map(str::to_string))
        .or_else(|| schedule["actor"][0]["display"].as_str().map(str::to_string))
        .unwrap_or_else(|| schedule["id"].as_str().unwrap_or("Clinic").to_string())
}

pub struct Row {
    pub id: String,
    pub patient_id: String,
    pub time: String,
    pub name: String,
    pub nhs: String,
    pub born: String,
    pub status: String,
    pub pending: bool,
    pub actions: Vec<(&'static str, &'static str)>,
}

pub struct Flash {
    pub text: String,
    pub pending: bool,
    /// (appointment id, status to go back to)
    pub undo: Option<(String, String)>,
}

#[derive(Template)]
#[template(path = "clinic.html")]
struct ClinicList {
    c: Chrome,
    id: String,
    clinic: String,
    day: String,
    date: String,
    prev: String,
    next: String,
    back: String,
    rows: Vec<Row>,
    flash: Option<Flash>,
    error: Option<String>,
    print: bool,
    as_of: String,
    printed: String,
}

pub async fn list(
    State(ui): UiState,
    Path(id): Path<String>,
    Query(qs): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    show(ui, id, qs, headers, false).await
}

pub async fn print(
    State(ui): UiState,
    Path(id): Path<String>,
    Query(qs): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    show(ui, id, qs, headers, true).await
}

async fn show(
    ui: std::sync::Arc<crate::Ui>,
    id: String,
    qs: HashMap<String, String>,
    headers: HeaderMap,
    print: bool,
) -> Response {
    let s = match signed_in(&ui, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let fhir = s.client(&ui);
    let day = day_of(&qs);
    let sched = fhir.get(&format!("/Schedule/{}", q(&id))).await;
    if !sched.ok() {
        return error_page(&ui, sched.status, &sched.problem());
    }
    let Some(loc) = sched.body["actor"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|a| view::ref_id(a, "Location"))
    else {
        return error_page(
            &ui,
            StatusCode::NOT_FOUND,
            "This clinic's schedule names no location, so it has no clinic list.",
        );
    };
    let url = format!(
        "/Appointment?actor=Location/{}&date={day}&_include=Appointment:patient&_sort=date&_count={APPOINTMENTS_MAX}",
        q(loc)
    );
    let a = fhir.get(&url).await;
    let mut patients: HashMap<String, &Value> = HashMap::new();
    let mut appts = Vec::new();
    for r in a.entries() {
        match r["resourceType"].as_str() {
            Some("Patient") => {
                patients.insert(r["id"].as_str().unwrap_or("").to_string(), r);
            }
            Some("Appointment") => appts.push(r),
            _ => {}
        }
    }
    let today = chrono::Utc::now().date_naive();
    let rows: Vec<Row> = appts
        .iter()
        .filter(|r| r["status"] != "cancelled" && r["status"] != "entered-in-error")
        .map(|r| {
            let pid = r["participant"]
                .as_array()
                .into_iter()
                .flatten()
                .find_map(|p| view::ref_id(&p["actor"], "Patient"))
                .unwrap_or("")
                .to_string();
            let p = patients.get(&pid).copied().unwrap_or(&Value::Null);
            let status = r["status"].as_str().unwrap_or("");
            Row {
                id: r["id"].as_str().unwrap_or("").to_string(),
                time: r["start"].as_str().map(|t| view::time_of(&uk(t))).unwrap_or_default(),
                name: view::banner_name(p),
                nhs: view::nhs_number(p).map(|n| view::nhs_334(&n)).unwrap_or_default(),
                born: p["birthDate"]
                    .as_str()
                    .map(|b| format!("{} ({})", view::date(b), view::age(b, today).unwrap_or_default()))
                    .unwrap_or_default(),
                status: status_text(status),
                pending: view::is_pending(r),
                actions: actions_for(status),
                patient_id: pid,
            }
        })
        .collect();
    let flash = qs.get("done").map(|appt| {
        let to = qs.get("to").map(|s| status_text(s)).unwrap_or_default();
        let who = rows
            .iter()
            .find(|r: &&Row| &r.id == appt)
            .map(|r| format!("{}, {}", r.name, r.time))
            .unwrap_or_else(|| "the appointment".into());
        Flash {
            text: format!("{who}: {to}."),
            pending: qs.contains_key("pending"),
            undo: qs.get("from").map(|f| (appt.clone(), f.clone())),
        }
    });
    let clinic = clinic_name(&sched.body);
    render(&ClinicList {
        c: Chrome::new(&ui, &s, format!("{clinic} clinic list"), "clinics"),
        back: format!("/ui/clinic/{}?date={day}", q(&id)),
        id,
        clinic,
        day: day.format("%A %d %B %Y").to_string(),
        date: day.to_string(),
        prev: day.pred_opt().unwrap_or(day).to_string(),
        next: day.succ_opt().unwrap_or(day).to_string(),
        rows,
        flash,
        error: (!a.ok()).then(|| a.problem()),
        print,
        as_of: as_of(&a, ui.app.raft.cut_off().is_some()),
        printed: chrono::Utc::now().format("%d-%b-%Y %H:%M").to_string(),
    })
}

/// An instant shown in UK local time.
fn uk(instant: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(instant) {
        Ok(t) => {
            let local = hale_sched::uktime::to_uk_local(t.timestamp_millis());
            format!("{}Z", local.format("%Y-%m-%dT%H:%M:%S"))
        }
        Err(_) => instant.to_string(),
    }
}

/// One click: set an appointment's status, then back to the list with an undo.
pub async fn set_status(State(ui): UiState, Path(id): Path<String>, req: Request) -> Response {
    let (headers, form) = match read_form(req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let s = match check_post(&ui, &headers, &form) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let to = form.text("status");
    if !ACTIONS.iter().any(|(st, _)| *st == to) && to != "booked" {
        return error_page(
            &ui,
            StatusCode::BAD_REQUEST,
            &format!("'{to}' is not a status the clinic list sets."),
        );
    }
    let back = form.text("back");
    let back = if back.starts_with("/ui/clinic/") && !back.contains("//") {
        back
    } else {
        "/ui/clinics".to_string()
    };
    let fhir = s.client(&ui);
    let path = format!("/Appointment/{}", q(&id));
    let cur = fhir.get(&path).await;
    if !cur.ok() {
        return error_page(&ui, cur.status, &cur.problem());
    }
    let mut appt = cur.body.clone();
    let from = appt["status"].as_str().unwrap_or("booked").to_string();
    let version = appt["meta"]["versionId"].as_str().map(str::to_string);
    appt["status"] = Value::String(to.clone());
    let w = fhir.write(Method::PUT, &path, &appt, version.as_deref()).await;
    if !w.ok() {
        return error_page(
            &ui,
            if w.status == StatusCode::PRECONDITION_FAILED {
                StatusCode::CONFLICT
            } else {
                w.status
            },
            &format!(
                "The status was not changed: {} Go back and reload the clinic list.",
                w.problem()
            ),
        );
    }
    let sep = if back.contains('?') { '&' } else { '?' };
    let mut url = format!("{back}{sep}done={}&from={}&to={}", q(&id), q(&from), q(&to));
    if w.pending() {
        url.push_str("&pending=1");
    }
    url.push_str(&format!("#row-{id}"));
    Redirect::to(&url).into_response()
}
