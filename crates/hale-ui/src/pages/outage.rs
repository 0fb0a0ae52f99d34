//! The outage console (admin): a step list through the recovery, each step
//! the FHIR operation the CLI uses, called in-process as the signed-in admin.

use super::{q, render};
use crate::chrome::Chrome;
use crate::{check_post, error_page, read_form, signed_in, view, Signed, Ui, UiState};
use askama::Template;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use hale_fhir::codes;
use hale_server::config::Role;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// Rows a flattened report shows.
pub const REPORT_ROWS_MAX: usize = 200;

pub struct Postponed {
    pub id: String,
    pub patient: String,
    pub when: String,
    pub clinic: String,
    pub rebooked: bool,
}

/// Postponed appointments looked up per search for a rebooking made by hand.
pub const REBOOK_LOOKUP_IDS: usize = 50;

/// Rows of each staff list shown on the console.
pub const CALLS_SHOWN_MAX: usize = 200;

pub struct CallRow {
    pub list: String,
    pub who: String,
    pub phone: String,
    pub appointment: String,
    pub why: String,
}

pub struct Conflict {
    pub kind: String,
    pub description: String,
    pub site: String,
    pub patient: String,
}

#[derive(Template)]
#[template(path = "outage.html")]
struct Console {
    c: Chrome,
    message: Option<String>,
    incidents: Vec<(String, String)>,
    incident: String,
    today: String,
    report: Vec<(String, String)>,
    postponed: Vec<Postponed>,
    plan: Vec<(String, String)>,
    calls_summary: String,
    calls: Vec<CallRow>,
    packs: Vec<(String, String)>,
    conflicts: Vec<Conflict>,
}

/// Parameters as rows, one per top-level parameter: its value, or its
/// parts as `name value · name value` (a placement, a count by site, ...).
pub fn flatten(params: &Value) -> Vec<(String, String)> {
    fn value_of(p: &Value) -> Option<String> {
        p.as_object()
            .into_iter()
            .flatten()
            .find(|(k, _)| k.starts_with("value"))
            .map(|(_, v)| match v {
                Value::String(s) => s.clone(),
                Value::Object(o) if o.contains_key("reference") => o["reference"].as_str().unwrap_or("").to_string(),
                other => other.to_string(),
            })
    }
    let mut out = Vec::new();
    for p in params["parameter"]
        .as_array()
        .into_iter()
        .flatten()
        .take(REPORT_ROWS_MAX)
    {
        let name = p["name"].as_str().unwrap_or("?").to_string();
        if let Some(v) = value_of(p) {
            out.push((name, v));
        } else if let Some(parts) = p["part"].as_array() {
            let text = parts
                .iter()
                .map(|q| {
                    let n = q["name"].as_str().unwrap_or("?");
                    match value_of(q) {
                        Some(v) => format!("{n} {v}"),
                        None => n.to_string(),
                    }
                })
                .collect::<Vec<_>>()
                .join(" · ");
            out.push((name, text));
        }
    }
    out
}

fn admin(ui: &Ui, headers: &HeaderMap) -> Result<Signed, Response> {
    let s = signed_in(ui, headers)?;
    if s.principal.role != Role::Admin {
        return Err(error_page(
            ui,
            StatusCode::FORBIDDEN,
            "The outage console needs the admin role. Ask IT if you need it.",
        ));
    }
    Ok(s)
}

pub async fn page(State(ui): UiState, Query(qs): Query<HashMap<String, String>>, headers: HeaderMap) -> Response {
    let s = match admin(&ui, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    console(
        &ui,
        &s,
        qs.get("incident").cloned().unwrap_or_default(),
        qs.get("msg").cloned(),
        vec![],
    )
    .await
}

async fn console(
    ui: &Arc<Ui>,
    s: &Signed,
    incident: String,
    message: Option<String>,
    plan: Vec<(String, String)>,
) -> Response {
    let fhir = s.client(ui);
    let list = fhir
        .get(&format!(
            "/Basic?code={}&_count=20&_sort=-_lastUpdated",
            q(&format!(
                "{}|{}",
                codes::INCIDENT_TYPE_SYSTEM,
                codes::INCIDENT_IT_OUTAGE
            ))
        ))
        .await;
    let incidents: Vec<(String, String)> = list
        .entries()
        .iter()
        .map(|b| {
            let ext = |url: &str| {
                b["extension"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|e| e["url"] == url)
                    .cloned()
                    .collect::<Vec<Value>>()
            };
            let period = ext(codes::EXT_INCIDENT_PERIOD);
            let start = period
                .first()
                .and_then(|p| p["valuePeriod"]["start"].as_str())
                .map(view::date)
                .unwrap_or_default();
            let status = ext(codes::EXT_INCIDENT_STATUS)
                .first()
                .and_then(|e| e["valueCode"].as_str().map(str::to_string))
                .unwrap_or_default();
            let desc = ext(codes::EXT_INCIDENT_DESCRIPTION)
                .first()
                .and_then(|e| e["valueString"].as_str().map(str::to_string))
                .unwrap_or_default();
            let sites: Vec<String> = ext(codes::EXT_INCIDENT_SITE)
                .iter()
                .filter_map(|e| e["valueCode"].as_str().map(str::to_string))
                .collect();
            (
                b["id"].as_str().unwrap_or("").to_string(),
                format!(
                    "{start} · {status} · {} · {desc}",
                    if sites.is_empty() {
                        "all sites".into()
                    } else {
                        sites.join(", ")
                    }
                ),
            )
        })
        .collect();
    let mut report = vec![];
    let mut postponed = vec![];
    if !incident.is_empty() {
        let r = fhir.get(&format!("/Basic/{}/$report", q(&incident))).await;
        if r.ok() {
            report = flatten(&r.body);
        } else {
            report.push(("Report".into(), r.problem()));
        }
        let a = fhir
            .get(&format!(
                "/Appointment?incident=Basic/{}&_count=500&_sort=date",
                q(&incident)
            ))
            .await;
        // The search finds the postponed (cancelled) appointments and their
        // rebookings, which point back with `rebooked-from`.
        let entries = a.entries();
        let rebooked: std::collections::HashSet<&str> = entries
            .iter()
            .flat_map(|r| r["extension"].as_array().into_iter().flatten())
            .filter(|e| e["url"] == codes::EXT_REBOOKED_FROM)
            .filter_map(|e| view::ref_id(&e["valueReference"], "Appointment"))
            .collect();
        for r in entries.iter().filter(|r| r["status"] == "cancelled") {
            let id = r["id"].as_str().unwrap_or("").to_string();
            postponed.push(Postponed {
                patient: r["participant"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find_map(|p| view::ref_id(&p["actor"], "Patient"))
                    .unwrap_or("")
                    .to_string(),
                when: r["start"].as_str().map(view::date_time).unwrap_or_default(),
                clinic: r["serviceType"].get(0).map(view::concept).unwrap_or_default(),
                rebooked: rebooked.contains(id.as_str()),
                id,
            });
        }
        // Rebooked by hand from this console carry `rebooked-from` but no incident tag.
        let open: Vec<String> = postponed.iter().filter(|p| !p.rebooked).map(|p| p.id.clone()).collect();
        for chunk in open.chunks(REBOOK_LOOKUP_IDS) {
            let refs: Vec<String> = chunk.iter().map(|id| format!("Appointment/{id}")).collect();
            let found = fhir
                .get(&format!(
                    "/Appointment?rebooked-from={}&_count={}&_elements=extension",
                    q(&refs.join(",")),
                    REBOOK_LOOKUP_IDS * 2
                ))
                .await;
            let done: std::collections::HashSet<String> = found
                .entries()
                .iter()
                .flat_map(|r| r["extension"].as_array().cloned().unwrap_or_default())
                .filter(|e| e["url"] == codes::EXT_REBOOKED_FROM)
                .filter_map(|e| view::ref_id(&e["valueReference"], "Appointment").map(str::to_string))
                .collect();
            for p in postponed.iter_mut().filter(|p| done.contains(&p.id)) {
                p.rebooked = true;
            }
        }
    }
    // Staff call lists and downtime packs: the same handlers the API serves.
    let h = s.fhir_headers(&ui.app);
    let lists_q = if incident.is_empty() {
        "_format=json".to_string()
    } else {
        format!("_format=json&incident={}", q(&incident))
    };
    let lists =
        hale_server::outbox::staff_lists(State(ui.app.clone()), h.clone(), axum::extract::RawQuery(Some(lists_q)))
            .await;
    let lists = body_json(lists).await;
    let mut calls = vec![];
    let mut counts = vec![];
    if let Some(obj) = lists.as_object() {
        for (name, v) in obj {
            if let Some(rows) = v.as_array() {
                counts.push(format!("{}: {}", name.replace('_', " "), rows.len()));
                for r in rows.iter().take(CALLS_SHOWN_MAX) {
                    let nhs = r["nhs_number"].as_str().map(view::nhs_334).unwrap_or_default();
                    calls.push(CallRow {
                        list: name.replace('_', " "),
                        who: format!("{} {}", r["name"].as_str().unwrap_or(""), nhs)
                            .trim()
                            .to_string(),
                        phone: r["phones"]
                            .as_array()
                            .map(|p| p.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
                            .unwrap_or_default(),
                        appointment: format!(
                            "{} {}",
                            r["appointment"].as_str().unwrap_or(""),
                            r["clinic"].as_str().unwrap_or("")
                        )
                        .trim()
                        .to_string(),
                        why: r["reason"].as_str().unwrap_or("").to_string(),
                    });
                }
            }
        }
    }
    let calls_summary = if counts.is_empty() {
        "No staff lists are available.".to_string()
    } else {
        counts.join(" · ")
    };
    let packs_resp = hale_server::downtime::status(State(ui.app.clone()), h).await;
    let packs_json = body_json(packs_resp).await;
    let packs = packs_json["sites"]
        .as_array()
        .or_else(|| packs_json.as_array())
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["site"].as_str().unwrap_or("?").to_string(),
                p.as_object()
                    .map(|o| {
                        o.iter()
                            .filter(|(k, _)| *k != "site")
                            .map(|(k, v)| {
                                format!(
                                    "{k}: {}",
                                    v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())
                                )
                            })
                            .collect::<Vec<_>>()
                            .join(" · ")
                    })
                    .unwrap_or_default(),
            )
        })
        .collect();
    let t = fhir
        .get(&format!(
            "/Task?code={}&status=requested&_count=100",
            q(&format!("{}|", hale_store::sync::SYNC_CONFLICT_SYSTEM))
        ))
        .await;
    let conflicts = t
        .entries()
        .iter()
        .map(|r| Conflict {
            kind: r["code"]["coding"][0]["display"].as_str().unwrap_or("").to_string(),
            description: r["description"].as_str().unwrap_or("").to_string(),
            site: r["owner"]["display"].as_str().unwrap_or("").to_string(),
            patient: view::ref_id(&r["for"], "Patient").unwrap_or("").to_string(),
        })
        .collect();
    render(&Console {
        c: Chrome::new(ui, s, "Outage console", "outage"),
        message,
        incidents,
        incident,
        today: hale_sched::uktime::uk_date(hale_server::now_ms()).to_string(),
        report,
        postponed,
        plan,
        calls_summary,
        calls,
        packs,
        conflicts,
    })
}

async fn body_json(r: Response) -> Value {
    let bytes = axum::body::to_bytes(r.into_body(), crate::fhir::RESPONSE_BYTES_MAX)
        .await
        .unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

async fn admin_post(ui: &Ui, req: Request) -> Result<(Signed, crate::Form), Response> {
    let (headers, form) = read_form(req).await?;
    let s = check_post(ui, &headers, &form)?;
    if s.principal.role != Role::Admin {
        return Err(error_page(
            ui,
            StatusCode::FORBIDDEN,
            "The outage console needs the admin role.",
        ));
    }
    Ok((s, form))
}

fn back(incident: &str, msg: &str) -> Response {
    Redirect::to(&format!("/ui/outage?incident={}&msg={}", q(incident), q(msg))).into_response()
}

pub async fn declare(State(ui): UiState, req: Request) -> Response {
    let (s, form) = match admin_post(&ui, req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let day = |k: &str| chrono::NaiveDate::parse_from_str(&form.text(k), "%Y-%m-%d").ok();
    let Some(start) = day("start") else {
        return error_page(
            &ui,
            StatusCode::BAD_REQUEST,
            "Enter the first day affected, like 2026-12-02.",
        );
    };
    let end = day("end");
    let start_i = hale_sched::uktime::uk_midnight(start);
    let mut period = json!({"start": iso(start_i)});
    let mut status = "open";
    if let Some(e) = end {
        if e < start {
            return error_page(
                &ui,
                StatusCode::BAD_REQUEST,
                "The last day must be on or after the first day.",
            );
        }
        let end_i = hale_sched::uktime::uk_midnight(e.succ_opt().unwrap_or(e)) - 1000;
        if end_i <= hale_server::now_ms() {
            status = "closed";
        }
        period["end"] = json!(iso(end_i));
    }
    let mut exts = vec![
        json!({"url": codes::EXT_INCIDENT_PERIOD, "valuePeriod": period}),
        json!({"url": codes::EXT_INCIDENT_STATUS, "valueCode": status}),
    ];
    for site in form.text("sites").split(',').map(str::trim).filter(|s| !s.is_empty()) {
        exts.push(json!({"url": codes::EXT_INCIDENT_SITE, "valueCode": site.to_uppercase()}));
    }
    let d = form.text("description");
    if !d.is_empty() {
        exts.push(json!({"url": codes::EXT_INCIDENT_DESCRIPTION, "valueString": d}));
    }
    let mut b = json!({
        "resourceType": "Basic",
        "code": {"coding": [{"system": codes::INCIDENT_TYPE_SYSTEM, "code": codes::INCIDENT_IT_OUTAGE, "display": "IT outage"}], "text": "IT outage"},
        "created": start.to_string(),
        "extension": exts,
    });
    let r = form.text("reference");
    if !r.is_empty() {
        b["identifier"] = json!([{"system": codes::INCIDENT_ID_SYSTEM, "value": r}]);
    }
    let fhir = s.client(&ui);
    let w = fhir.write(Method::POST, "/Basic", &b, None).await;
    if !w.ok() {
        return error_page(
            &ui,
            w.status,
            &format!("The incident was not declared: {}", w.problem()),
        );
    }
    back(w.body["id"].as_str().unwrap_or(""), "Incident declared.")
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

pub async fn postpone(State(ui): UiState, req: Request) -> Response {
    let (s, form) = match admin_post(&ui, req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let incident = form.text("incident");
    let runs = form.text("clinic_runs") == "true";
    let fhir = s.client(&ui);
    let body = json!({"resourceType": "Parameters", "parameter": [
        {"name": "incident", "valueString": incident},
        {"name": "clinicRuns", "valueBoolean": runs}
    ]});
    let w = fhir.write(Method::POST, "/Appointment/$postpone", &body, None).await;
    if !w.ok() {
        return error_page(&ui, w.status, &format!("Nothing was postponed: {}", w.problem()));
    }
    let n = w.body["parameter"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "postponed" || p["name"] == "total")
        .and_then(|p| p["valueInteger"].as_i64().or_else(|| p["valueUnsignedInt"].as_i64()));
    let msg = match n {
        Some(n) => format!("Postponed {n} appointments."),
        None => "Postponed the appointments in scope.".to_string(),
    };
    back(&incident, &msg)
}

pub async fn rebook(State(ui): UiState, req: Request) -> Response {
    let (s, form) = match admin_post(&ui, req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let incident = form.text("incident");
    let commit = form.text("commit") == "true";
    let fhir = s.client(&ui);
    let body = json!({"resourceType": "Parameters", "parameter": [
        {"name": "incident", "valueString": incident},
        {"name": "commit", "valueBoolean": commit}
    ]});
    let w = fhir.write(Method::POST, "/Appointment/$rebook", &body, None).await;
    if !w.ok() {
        return error_page(&ui, w.status, &format!("The rebooking did not run: {}", w.problem()));
    }
    let plan = flatten(&w.body);
    let msg = if commit {
        "The rebooking plan was committed."
    } else {
        "This is the plan: nothing has changed yet."
    };
    console(&ui, &s, incident, Some(msg.into()), plan).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_flatten_to_rows() {
        let p = json!({"resourceType": "Parameters", "parameter": [
            {"name": "total", "valueInteger": 3},
            {"name": "byCategory", "part": [{"name": "outpatient", "valueInteger": 2}, {"name": "ref", "valueReference": {"reference": "Basic/1"}}]}
        ]});
        assert_eq!(
            flatten(&p),
            vec![
                ("total".to_string(), "3".to_string()),
                ("byCategory".to_string(), "outpatient 2 · ref Basic/1".to_string()),
            ]
        );
    }
}
