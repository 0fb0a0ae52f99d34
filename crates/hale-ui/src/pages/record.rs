//! The patient record: the NHS patient banner, then alerts, allergies,
//! problems, medicines, results, imaging, notes and appointments. Each
//! section is its own FHIR search (audited as the user) and says how
//! current its data is.

use super::render;
use crate::chrome::{uk_hm, Chrome};
use crate::fhir::Answer;
use crate::{error_page, signed_in, view, UiState};
use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::Value;
use std::collections::HashMap;

pub struct Banner {
    pub name: String,
    pub born: String,
    pub gender: String,
    pub nhs: String,
    pub address: String,
    pub phone: Option<String>,
    pub allergy_label: String,
    pub pending: bool,
}

impl Banner {
    pub fn of(p: &Value, allergy_label: &str) -> Banner {
        let today = chrono::Utc::now().date_naive();
        Banner {
            name: view::banner_name(p),
            born: match p["birthDate"].as_str() {
                Some(b) => match view::age(b, today) {
                    Some(a) => format!("{} ({a})", view::date(b)),
                    None => view::date(b),
                },
                None => "Not known".into(),
            },
            gender: view::gender(p),
            nhs: view::nhs_number(p)
                .map(|n| view::nhs_334(&n))
                .unwrap_or_else(|| "Not known".into()),
            address: view::address(p),
            phone: view::phone(p),
            allergy_label: allergy_label.into(),
            pending: view::is_pending(p),
        }
    }
}

#[derive(Default)]
pub struct Cell {
    pub text: String,
    pub strong: bool,
    /// (tag class, text)
    pub tag: Option<(&'static str, String)>,
}

impl Cell {
    fn new(text: impl Into<String>) -> Cell {
        Cell {
            text: text.into(),
            ..Default::default()
        }
    }
}

pub struct Section {
    pub id: &'static str,
    pub title: &'static str,
    pub headers: Vec<&'static str>,
    pub rows: Vec<Vec<Cell>>,
    pub empty: &'static str,
    pub as_of: String,
    pub error: Option<String>,
}

#[derive(Template)]
#[template(path = "record.html")]
struct Record {
    c: Chrome,
    id: String,
    b: Banner,
    sections: Vec<Section>,
    flash: Option<String>,
    /// Changes saved at a cut-off site that clashed with the record (open sync-conflict Tasks).
    review: Vec<String>,
    print: bool,
    printed: String,
    /// The server refused the clinical record for want of a legitimate
    /// relationship: its words, with the break-glass form.
    btg: Option<String>,
    btg_error: bool,
    btg_hours: u32,
}

/// Data at most this far behind the data centres still counts as current.
pub const CURRENT_WITHIN_MS: u64 = 5_000;

/// "How current": confirmed with the cluster now, a site copy that is
/// seconds behind, or this site's copy as of when it last heard.
/// `cut_off`: this node knows it cannot reach a majority, so nothing it
/// holds is called current, however recent its last contact.
pub fn as_of(a: &Answer, cut_off: bool) -> String {
    let now = hale_server::now_ms();
    let f = a.consistency();
    match (f.consistency.as_str(), f.staleness_ms) {
        ("linearizable", _) if !cut_off => format!("Up to date at {}.", uk_hm(now)),
        (_, Some(ms)) if ms <= CURRENT_WITHIN_MS && !cut_off => {
            format!(
                "Up to date at {} (this site's copy, at most {} s behind).",
                uk_hm(now),
                ms.div_ceil(1000)
            )
        }
        (_, Some(ms)) => format!(
            "This site's copy, as of {}: may be out of date.",
            uk_hm(now - ms as i64)
        ),
        (_, None) => "This site's copy; it has not heard from the data centres, so it may be out of date.".into(),
    }
}

/// A tag for a row saved at this site and not yet synced.
fn pending_tag(r: &Value) -> Option<(&'static str, String)> {
    view::is_pending(r).then(|| ("nhsuk-tag--yellow", "Saved here, waiting to sync".to_string()))
}

fn section(
    cut_off: bool,
    id: &'static str,
    title: &'static str,
    headers: &[&'static str],
    empty: &'static str,
    a: &Answer,
    row: impl Fn(&Value) -> Vec<Cell>,
) -> Section {
    let mut s = Section {
        id,
        title,
        headers: headers.to_vec(),
        rows: vec![],
        empty,
        as_of: as_of(a, cut_off),
        error: None,
    };
    if !a.ok() {
        s.error = Some(a.problem());
        return s;
    }
    s.rows = a.entries().into_iter().map(row).collect();
    s
}

fn first_date(r: &Value, keys: &[&str]) -> String {
    keys.iter()
        .find_map(|k| r[*k].as_str())
        .map(view::date)
        .unwrap_or_else(|| "Not recorded".into())
}

pub async fn page(
    State(ui): UiState,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    show(ui, id, q, headers, false).await
}

pub async fn print(
    State(ui): UiState,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    show(ui, id, q, headers, true).await
}

async fn show(
    ui: std::sync::Arc<crate::Ui>,
    id: String,
    q: HashMap<String, String>,
    headers: HeaderMap,
    print: bool,
) -> Response {
    let s = match signed_in(&ui, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let fhir = s.client(&ui);
    let c = Chrome::new(&ui, &s, "Patient record", "find");
    let pid = super::q(&id);
    let patient = fhir.get(&format!("/Patient/{pid}")).await;
    if !patient.ok() {
        let status = if patient.status == StatusCode::NOT_FOUND {
            StatusCode::NOT_FOUND
        } else {
            patient.status
        };
        return error_page(&ui, status, &patient.problem());
    }
    let p = &patient.body;
    let clinical = c.clinical();
    let cut_off = c.degraded.is_some();
    let subj = format!("patient=Patient/{pid}");
    let appts_url = format!("/Appointment?{subj}&_sort=date&_count=200");
    let appts = fhir.get(&appts_url);
    let (appts, flags, allergies, problems, meds, results, vitals, imaging, notes) = if clinical {
        let urls = [
            format!("/Flag?{subj}&_count=50"),
            format!("/AllergyIntolerance?{subj}&_count=50"),
            format!("/Condition?{subj}&_count=100"),
            format!("/MedicationRequest?{subj}&status=active&_count=100"),
            format!("/Observation?{subj}&category=laboratory&_sort=-date&_count=30"),
            format!("/Observation?{subj}&category=vital-signs&_sort=-date&_count=30"),
            format!("/DiagnosticReport?{subj}&category=RAD&_sort=-date&_count=20"),
            format!("/DocumentReference?{subj}&_sort=-date&_count=20"),
        ];
        let (a, f, al, pr, m, r, v, im, n) = tokio::join!(
            appts,
            fhir.get(&urls[0]),
            fhir.get(&urls[1]),
            fhir.get(&urls[2]),
            fhir.get(&urls[3]),
            fhir.get(&urls[4]),
            fhir.get(&urls[5]),
            fhir.get(&urls[6]),
            fhir.get(&urls[7]),
        );
        (
            a,
            Some(f),
            Some(al),
            Some(pr),
            Some(m),
            Some(r),
            Some(v),
            Some(im),
            Some(n),
        )
    } else {
        (appts.await, None, None, None, None, None, None, None, None)
    };
    // No legitimate relationship: the clinical sections are refused alike;
    // show the refusal and the break-glass form instead of nine errors.
    let btg = flags
        .as_ref()
        .filter(|a| super::privacy::offers_break_glass(a))
        .map(|a| a.problem().split(". To open").next().unwrap_or("").to_string() + ".");
    let (flags, allergies, problems, meds, results, vitals, imaging, notes) = if btg.is_some() {
        (None, None, None, None, None, None, None, None)
    } else {
        (flags, allergies, problems, meds, results, vitals, imaging, notes)
    };
    let allergy_label = match &allergies {
        None => "Allergies unavailable",
        Some(a) if !a.ok() => "Allergies unavailable",
        Some(a) => {
            let live: Vec<&Value> = a
                .entries()
                .into_iter()
                .filter(|r| r["verificationStatus"]["coding"][0]["code"] != "refuted")
                .collect();
            if live.is_empty() {
                "Allergies not recorded"
            } else if live.iter().all(|r| r["code"]["coding"][0]["code"] == "716186003") {
                "No known allergies"
            } else {
                "Known allergies"
            }
        }
    };
    let mut sections = Vec::new();
    if let Some(a) = &flags {
        let mut sec = section(
            cut_off,
            "alerts",
            "Alerts",
            &["Alert", "Category", "Since"],
            "No active alerts.",
            a,
            |r| {
                vec![
                    Cell {
                        text: view::concept(&r["code"]),
                        strong: true,
                        tag: pending_tag(r),
                    },
                    Cell::new(view::concept(&r["category"][0])),
                    Cell::new(r["period"]["start"].as_str().map(view::date).unwrap_or_default()),
                ]
            },
        );
        // Flag has no `status` search parameter in R4: keep the active ones here.
        if a.ok() {
            let active: Vec<bool> = a.entries().iter().map(|r| r["status"] == "active").collect();
            let mut i = 0;
            sec.rows.retain(|_| {
                i += 1;
                active[i - 1]
            });
        }
        sections.push(sec);
    }
    if let Some(a) = &allergies {
        sections.push(section(
            cut_off,
            "allergies",
            "Allergies",
            &["Substance", "Reaction", "Criticality", "Recorded"],
            "No allergies recorded.",
            a,
            |r| {
                vec![
                    Cell {
                        text: view::concept(&r["code"]),
                        strong: true,
                        tag: pending_tag(r),
                    },
                    Cell::new(
                        r["reaction"][0]["manifestation"]
                            .get(0)
                            .map(view::concept)
                            .unwrap_or_default(),
                    ),
                    Cell::new(r["criticality"].as_str().unwrap_or("")),
                    Cell::new(first_date(r, &["recordedDate", "onsetDateTime"])),
                ]
            },
        ));
    }
    if let Some(a) = &problems {
        sections.push(section(
            cut_off,
            "problems",
            "Problems",
            &["Problem", "Status", "Since"],
            "No problems recorded.",
            a,
            |r| {
                vec![
                    Cell {
                        text: view::concept(&r["code"]),
                        tag: pending_tag(r),
                        ..Default::default()
                    },
                    Cell::new(view::concept(&r["clinicalStatus"])),
                    Cell::new(first_date(r, &["onsetDateTime", "recordedDate"])),
                ]
            },
        ));
    }
    if let Some(a) = &meds {
        sections.push(section(
            cut_off,
            "medicines",
            "Current medicines",
            &["Medicine", "Dose", "Since"],
            "No current medicines recorded.",
            a,
            |r| {
                vec![
                    Cell {
                        text: view::concept(&r["medicationCodeableConcept"]),
                        tag: pending_tag(r),
                        ..Default::default()
                    },
                    Cell::new(r["dosageInstruction"][0]["text"].as_str().unwrap_or("")),
                    Cell::new(first_date(r, &["authoredOn"])),
                ]
            },
        ));
    }
    if let Some(a) = &results {
        sections.push(section(
            cut_off,
            "results",
            "Latest results",
            &["Test", "Result", "Flag", "Reference range", "Taken"],
            "No results.",
            a,
            |r| {
                let flag = r["interpretation"][0]["coding"][0]["code"].as_str().unwrap_or("");
                let value = if r["valueQuantity"].is_object() {
                    view::quantity(&r["valueQuantity"])
                } else {
                    r["valueString"].as_str().unwrap_or("").to_string()
                };
                let abnormal = matches!(flag, "H" | "L" | "HH" | "LL" | "A" | "AA");
                vec![
                    Cell {
                        text: view::concept(&r["code"]),
                        tag: pending_tag(r),
                        ..Default::default()
                    },
                    Cell {
                        text: value,
                        strong: abnormal,
                        tag: None,
                    },
                    Cell {
                        text: match flag {
                            "H" => "High".into(),
                            "L" => "Low".into(),
                            "HH" => "Critically high".into(),
                            "LL" => "Critically low".into(),
                            "N" => "Normal".into(),
                            other => other.to_string(),
                        },
                        strong: abnormal,
                        tag: None,
                    },
                    Cell::new(view::reference_range(r)),
                    Cell::new(first_date(r, &["effectiveDateTime", "issued"])),
                ]
            },
        ));
    }
    if let Some(a) = &vitals {
        sections.push(section(
            cut_off,
            "vitals",
            "Observations",
            &["Observation", "Value", "Taken", "By"],
            "No observations recorded.",
            a,
            |r| {
                vec![
                    Cell {
                        text: view::concept(&r["code"]),
                        tag: pending_tag(r),
                        ..Default::default()
                    },
                    Cell::new(view::quantity(&r["valueQuantity"])),
                    Cell::new(r["effectiveDateTime"].as_str().map(view::date_time).unwrap_or_default()),
                    Cell::new(r["performer"][0]["display"].as_str().unwrap_or("")),
                ]
            },
        ));
    }
    if let Some(a) = &imaging {
        sections.push(section(
            cut_off,
            "imaging",
            "Imaging reports",
            &["Study", "Report", "Date"],
            "No imaging reports.",
            a,
            |r| {
                vec![
                    Cell {
                        text: view::concept(&r["code"]),
                        tag: pending_tag(r),
                        ..Default::default()
                    },
                    Cell::new(r["conclusion"].as_str().unwrap_or("Report not yet issued")),
                    Cell::new(first_date(r, &["effectiveDateTime", "issued"])),
                ]
            },
        ));
    }
    if let Some(a) = &notes {
        sections.push(section(
            cut_off,
            "notes",
            "Notes",
            &["Note", "Date"],
            "No notes.",
            a,
            |r| {
                let att = &r["content"][0]["attachment"];
                let text = att["data"]
                    .as_str()
                    .and_then(view::base64_text)
                    .unwrap_or_else(|| r["description"].as_str().unwrap_or("").to_string());
                let title = r["description"]
                    .as_str()
                    .or_else(|| att["title"].as_str())
                    .unwrap_or("Note");
                vec![
                    Cell {
                        text: format!("{title}: {text}"),
                        tag: pending_tag(r),
                        ..Default::default()
                    },
                    Cell::new(first_date(r, &["date"])),
                ]
            },
        ));
    }
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let split = |upcoming: bool| {
        let today = today.clone();
        move |r: &&Value| {
            let start = r["start"].as_str().unwrap_or("");
            (start.get(..10).unwrap_or("") >= today.as_str()) == upcoming
        }
    };
    let appt_row = |r: &Value| {
        vec![
            Cell {
                text: r["start"].as_str().map(view::date_time).unwrap_or_default(),
                tag: pending_tag(r),
                ..Default::default()
            },
            Cell::new(
                r["serviceType"]
                    .get(0)
                    .map(view::concept)
                    .unwrap_or_else(|| "Appointment".into()),
            ),
            Cell::new(status_text(r["status"].as_str().unwrap_or(""))),
        ]
    };
    let mut upcoming = section(
        cut_off,
        "upcoming",
        "Upcoming appointments",
        &["When", "Clinic", "Status"],
        "No upcoming appointments.",
        &appts,
        appt_row,
    );
    let mut past = section(
        cut_off,
        "past",
        "Past appointments",
        &["When", "Clinic", "Status"],
        "No past appointments.",
        &appts,
        appt_row,
    );
    if appts.ok() {
        let all = appts.entries();
        upcoming.rows = all.iter().copied().filter(split(true)).map(appt_row).collect();
        past.rows = all.iter().rev().copied().filter(split(false)).map(appt_row).collect();
    }
    sections.push(upcoming);
    sections.push(past);
    let review = if clinical && btg.is_none() {
        let t = fhir
            .get(&format!(
                "/Task?{subj}&code={}&status=requested&_count=50",
                super::q(&format!("{}|", hale_store::sync::SYNC_CONFLICT_SYSTEM))
            ))
            .await;
        t.entries()
            .iter()
            .map(|r| {
                format!(
                    "{} ({})",
                    r["description"].as_str().unwrap_or("A change saved offline"),
                    r["owner"]["display"].as_str().unwrap_or("a site")
                )
            })
            .collect()
    } else {
        vec![]
    };
    let mut c = c;
    c.title = format!("{} – record", view::banner_name(p));
    render(&Record {
        b: Banner::of(p, allergy_label),
        c,
        id,
        sections,
        flash: q.get("saved").map(|k| match k.as_str() {
            "pending" => "Saved on this site. It is waiting to sync with the data centres.".to_string(),
            "break-glass" => {
                "You broke the glass for this record. Your access is recorded and will be reviewed.".to_string()
            }
            _ => "Saved.".to_string(),
        }),
        btg_error: q.contains_key("btg-error"),
        btg,
        btg_hours: ui.app.cfg.access.break_glass_hours,
        review,
        print,
        printed: chrono::Utc::now().format("%d-%b-%Y %H:%M").to_string(),
    })
}

/// An Appointment status as the desk says it.
pub fn status_text(s: &str) -> String {
    match s {
        "booked" => "Booked",
        "arrived" => "Arrived",
        "checked-in" => "Checked in",
        "fulfilled" => "Seen",
        "noshow" => "Did not attend",
        "cancelled" => "Cancelled",
        "pending" => "Pending",
        "proposed" => "Proposed",
        "waitlist" => "Waiting list",
        "entered-in-error" => "Entered in error",
        other => other,
    }
    .to_string()
}
