//! The patient compartment: `Patient/{id}/{type}` searches and
//! `Patient/{id}/$everything` (with `_since`, `_type`, `start`, `end`).
//!
//! DESIGN: which resources belong to a patient is the official
//! CompartmentDefinition (generated into hale-fhir), evaluated by the store as
//! one more condition on an ordinary search (`SearchQuery::compartment`: the
//! resource refers to the patient through any of the type's compartment
//! parameters). So `$everything` is a search per compartment type, with the
//! same index, role rules and audit as any search, not a separate walk of the
//! reference graph; the resources those refer to (practitioners, locations,
//! medications) follow, as includes, so that a downtime pack or a receiving
//! system has names and not bare ids.

use crate::auth::authorize;
use crate::rest::{query_pairs, Ctx};
use crate::wire::{self, json_response, BundleWriter, FhirError};
use axum::http::StatusCode;
use axum::response::Response;
use hale_fhir::search::{find_param, parse_query, Compartment, ParamKind, COUNT_MAX};
use hale_fhir::{Issue, IssueCode, ResourceType};
use hale_store::query::{self, Current, Found, EVERYTHING_MAX};
use hale_store::AuditAction;
use serde_json::json;
use std::collections::BTreeSet;

impl Ctx<'_> {
    /// `GET Patient/{id}/$everything`.
    pub(crate) async fn everything(&self, id: &str, q: &str) -> Result<Response, FhirError> {
        self.allow(ResourceType::Patient, false, AuditAction::Read, Some(id))
            .await?;
        let mut since = None;
        let mut start = None;
        let mut end = None;
        let mut types: Option<BTreeSet<ResourceType>> = None;
        for (k, v) in query_pairs(q) {
            let date = |v: &str| {
                hale_fhir::date::parse_range_ms(v)
                    .map(|_| v.to_string())
                    .ok_or_else(|| {
                        FhirError::bad_request(format!("{k} '{v}' is not a FHIR date or instant")).at(k.as_str())
                    })
            };
            match k.as_str() {
                "_since" => since = Some(date(&v)?),
                "start" => start = Some(date(&v)?),
                "end" => end = Some(date(&v)?),
                "_type" => {
                    let mut set = BTreeSet::new();
                    for t in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                        let rt: ResourceType = t.parse().map_err(|_| {
                            FhirError::bad_request(format!("_type: '{t}' is not a resource type")).at("_type")
                        })?;
                        set.insert(rt);
                    }
                    types = Some(set);
                }
                "_count" | "_format" => {}
                other => {
                    return Err(FhirError::bad_request(format!(
                        "$everything takes _since, _type, start, end and _count; '{other}' is not one"
                    ))
                    .at(other))
                }
            }
        }
        let patient = self.app.reader.with(|c| query::read(c, "Patient", id))?;
        let Some(Current::Live(patient)) = patient else {
            return Err(FhirError::not_found(format!("Patient/{id} does not exist")));
        };
        // The whole record: a clinician needs a legitimate relationship (or
        // break-glass), a patient-context token must be this patient's.
        self.check_record(ResourceType::Patient, id).await?;
        // Only types that hold something referring to this patient can be in
        // its compartment (every compartment parameter is a reference).
        let referring: BTreeSet<String> = self
            .app
            .reader
            .with(|c| query::types_referring_to(c, "Patient", id))?
            .into_iter()
            .collect();
        let mut found: Vec<Found> = vec![patient];
        let mut withheld = Vec::new();
        let mut truncated = false;
        for &rt in ResourceType::ALL {
            // The audit trail is about the record, not part of it.
            if matches!(rt, ResourceType::Patient | ResourceType::AuditEvent) {
                continue;
            }
            if types.as_ref().is_some_and(|t| !t.contains(&rt)) || !referring.contains(rt.as_str()) {
                continue;
            }
            let Some(compartment) = Compartment::patient(rt, id) else {
                continue;
            };
            let mut pairs = Vec::new();
            if let Some(s) = &since {
                pairs.push(("_lastUpdated".to_string(), format!("ge{s}")));
            }
            // Care dates: the type's own `date` parameter when it has one.
            if find_param(rt, "date").is_some_and(|d| d.kind == ParamKind::Date) {
                if let Some(s) = &start {
                    pairs.push(("date".to_string(), format!("ge{s}")));
                }
                if let Some(e) = &end {
                    pairs.push(("date".to_string(), format!("le{e}")));
                }
            }
            let mut sq = parse_query(rt, &pairs, true).map_err(|i| FhirError::invalid(vec![i]))?;
            sq.compartment = Some(compartment);
            let room = EVERYTHING_MAX.saturating_sub(found.len());
            if room == 0 {
                truncated = true;
                break;
            }
            sq.count = room.min(COUNT_MAX);
            let page = self.app.reader.with(|c| query::search(c, &sq))?;
            if page.matches.is_empty() {
                continue;
            }
            if authorize(self.principal, rt, false).is_err() {
                withheld.push(rt.to_string());
                continue;
            }
            truncated |= page.has_more;
            found.extend(page.matches);
        }
        // What they refer to, so names come with ids.
        let mut seen: BTreeSet<(String, String)> = found.iter().map(|f| (f.rtype.clone(), f.id.clone())).collect();
        let mut included = Vec::new();
        for f in &found {
            let targets = self.app.reader.with(|c| query::references_of(c, &f.rtype, &f.id))?;
            for (t, tid) in targets {
                if found.len() + included.len() >= EVERYTHING_MAX {
                    truncated = true;
                    break;
                }
                let allowed = t
                    .parse::<ResourceType>()
                    .is_ok_and(|rt| authorize(self.principal, rt, false).is_ok());
                if !allowed || !seen.insert((t.clone(), tid.clone())) {
                    continue;
                }
                if let Some(Current::Live(x)) = self.app.reader.with(|c| query::read(c, &t, &tid))? {
                    included.push(x);
                }
            }
        }
        // Resources that also belong to other patients, and what they refer
        // to, follow patient-level access too.
        let mut suppressed = self.filter_shown(&mut found, false);
        for p in self.filter_shown(&mut included, false) {
            if !suppressed.contains(&p) {
                suppressed.push(p);
            }
        }
        let mut b = BundleWriter::new(json!({
            "resourceType": "Bundle",
            "type": "searchset",
            "total": found.len(),
            "link": [{"relation": "self", "url": format!("{}/Patient/{id}/$everything{}", self.base, if q.is_empty() { String::new() } else { format!("?{q}") })}],
        }));
        for (f, mode) in found
            .iter()
            .map(|f| (f, "match"))
            .chain(included.iter().map(|f| (f, "include")))
        {
            b.entry(
                json!({"fullUrl": wire::full_url(&self.base, f), "search": {"mode": mode}}),
                f.json.as_deref(),
            );
        }
        let mut notes = Vec::new();
        if !withheld.is_empty() {
            notes.push(Issue::warning(
                IssueCode::Forbidden,
                format!(
                    "not shown to role '{}': {} (this patient has some)",
                    self.principal.role.as_str(),
                    withheld.join(", ")
                ),
            ));
        }
        if !suppressed.is_empty() {
            notes.push(self.withheld_issue(&suppressed));
        }
        if truncated {
            notes.push(Issue::warning(
                IssueCode::TooCostly,
                format!(
                    "the record holds more than {EVERYTHING_MAX} resources; narrow it with _type, _since, start or end"
                ),
            ));
        }
        if !notes.is_empty() {
            let oo = hale_fhir::outcome::operation_outcome(&notes).to_string();
            b.entry(json!({"search": {"mode": "outcome"}}), Some(&oo));
        }
        self.audit(
            AuditAction::Read,
            ResourceType::Patient,
            Some(id),
            Some(id.into()),
            0,
            format!(
                "GET Patient/{id}/$everything ({} resources)",
                found.len() + included.len()
            ),
        )
        .await;
        Ok(json_response(StatusCode::OK, b.finish()))
    }
}
