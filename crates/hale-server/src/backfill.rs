//! `POST /$backfill`: entering what was written on paper during downtime.
//!
//! The body is a FHIR Bundle (`transaction`: all or nothing, or `batch`) of
//! Observations, clinical notes (DocumentReference), Encounters, doses given
//! from the paper drug chart (MedicationAdministration) and Appointment
//! attendance updates. Each entry must carry its original clinical time
//! (`Observation.effective[x]`, `DocumentReference.context.period.start` or
//! `date`, `Encounter.period.start`, `MedicationAdministration.effective[x]`,
//! the time the dose was given, `Appointment.start`); the time it was
//! entered is the server's `meta.lastUpdated`, and the AuditEvent of the write
//! records who entered it. Every entry is tagged `downtime-backfill` (and,
//! with `?incident=ID`, `incident-ID`) in `meta.tag`, so `_tag` finds them.

use crate::rest::Ctx;
use crate::wire::FhirError;
use axum::response::Response;
use hale_fhir::codes::TAG_SYSTEM;
use hale_fhir::{Issue, IssueCode};
use serde_json::{json, Value};

pub const BACKFILL_TAG: &str = "downtime-backfill";
/// Longest incident id accepted in `?incident=`.
pub const INCIDENT_ID_BYTES_MAX: usize = 64;

/// Attendance statuses a backfilled Appointment may carry.
const ATTENDANCE: &[&str] = &["arrived", "checked-in", "fulfilled", "noshow"];

fn has_time(resource: &Value, rtype: &str) -> Result<(), &'static str> {
    let present = |v: &Value| v.as_str().is_some_and(|s| !s.is_empty());
    let ok = match rtype {
        "Observation" => {
            present(&resource["effectiveDateTime"])
                || present(&resource["effectiveInstant"])
                || present(&resource["effectivePeriod"]["start"])
        }
        "DocumentReference" => present(&resource["context"]["period"]["start"]) || present(&resource["date"]),
        "Encounter" => present(&resource["period"]["start"]),
        "MedicationAdministration" => {
            present(&resource["effectiveDateTime"]) || present(&resource["effectivePeriod"]["start"])
        }
        "Appointment" => present(&resource["start"]),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(match rtype {
            "Observation" | "MedicationAdministration" => "effective[x]",
            "DocumentReference" => "context.period.start",
            "Encounter" => "period.start",
            _ => "start",
        })
    }
}

fn tag(resource: &mut Value, code: &str, display: &str) {
    let meta = resource
        .as_object_mut()
        .expect("checked to be an object")
        .entry("meta")
        .or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    let tags = meta
        .as_object_mut()
        .expect("just made an object")
        .entry("tag")
        .or_insert_with(|| json!([]));
    if !tags.is_array() {
        *tags = json!([]);
    }
    let tags = tags.as_array_mut().expect("just made an array");
    if !tags.iter().any(|t| t["system"] == TAG_SYSTEM && t["code"] == code) {
        tags.push(json!({"system": TAG_SYSTEM, "code": code, "display": display}));
    }
}

pub async fn handle(cx: &Ctx<'_>, mut bundle: Value, query: &str) -> Result<Response, FhirError> {
    let mut incident = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "incident" => {
                let ok = !v.is_empty()
                    && v.len() <= INCIDENT_ID_BYTES_MAX
                    && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
                if !ok {
                    return Err(FhirError::bad_request(format!(
                        "incident '{v}' is not an incident id (letters, digits, '-' and '.', at most {INCIDENT_ID_BYTES_MAX})"
                    ))
                    .at("incident"));
                }
                incident = Some(v.into_owned());
            }
            other => {
                return Err(FhirError::bad_request(format!("$backfill takes only 'incident', not '{other}'")).at(other))
            }
        }
    }
    if bundle["resourceType"] != "Bundle" {
        return Err(FhirError::bad_request("$backfill takes a Bundle (type transaction or batch)").at("Bundle"));
    }
    let kind = bundle["type"].as_str().unwrap_or("").to_string();
    if kind != "transaction" && kind != "batch" {
        return Err(
            FhirError::bad_request(format!("$backfill takes a transaction or batch Bundle, not '{kind}'"))
                .at("Bundle.type"),
        );
    }
    let mut issues = Vec::new();
    if let Some(entries) = bundle["entry"].as_array_mut() {
        for (i, entry) in entries.iter_mut().enumerate() {
            let method = entry["request"]["method"].as_str().unwrap_or("").to_string();
            let resource = &mut entry["resource"];
            let rtype = resource["resourceType"].as_str().unwrap_or("").to_string();
            let at = format!("Bundle.entry[{i}].resource");
            match rtype.as_str() {
                "Observation" | "DocumentReference" | "Encounter" | "MedicationAdministration" => {}
                "Appointment" => {
                    let status = resource["status"].as_str().unwrap_or("");
                    if method != "PUT" || !ATTENDANCE.contains(&status) {
                        issues.push(
                            Issue::error(
                                IssueCode::Invalid,
                                format!(
                                    "a backfilled Appointment records attendance: PUT the existing appointment with status {}",
                                    ATTENDANCE.join(", ")
                                ),
                            )
                            .at(format!("{at}.status")),
                        );
                        continue;
                    }
                }
                _ => {
                    issues.push(
                        Issue::error(
                            IssueCode::NotSupported,
                            format!("$backfill takes Observation, DocumentReference (notes), Encounter, MedicationAdministration (doses given) and Appointment (attendance), not '{rtype}'"),
                        )
                        .at(format!("{at}.resourceType")),
                    );
                    continue;
                }
            }
            if !resource.is_object() {
                continue;
            }
            if let Err(field) = has_time(resource, &rtype) {
                issues.push(
                    Issue::error(
                        IssueCode::Required,
                        format!("a backfilled {rtype} must carry its original clinical time in {field}"),
                    )
                    .at(format!("{at}.{field}")),
                );
                continue;
            }
            tag(resource, BACKFILL_TAG, "Entered after downtime from paper records");
            if let Some(id) = &incident {
                tag(resource, &format!("incident-{id}"), "Downtime incident");
            }
        }
    }
    if !issues.is_empty() {
        return Err(FhirError::invalid(issues));
    }
    crate::bundle::run(cx, bundle, &kind).await
}
