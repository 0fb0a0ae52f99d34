//! `hale backfill --incident ID`: what was entered from paper for an incident.

use crate::http::Client;
use anyhow::{bail, Result};
use clap::Args;
use serde_json::Value;
use std::collections::BTreeMap;

const TAG_SYSTEM: &str = "https://hale.health/fhir/CodeSystem/tag";
const TYPES: &[&str] = &["Encounter", "Observation", "DocumentReference", "Appointment"];
/// Entries listed per type.
const PAGE_MAX: usize = 1_000;

#[derive(Args)]
pub struct BackfillArgs {
    /// An incident (its Basic id): entries tagged with it (`POST /$backfill?incident=ID`) and every
    /// backfilled entry whose clinical time falls in its period. Without it, every backfilled entry.
    #[arg(long)]
    incident: Option<String>,
    /// API URL of any node.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "HALE_URL")]
    url: String,
    /// Bearer token (an admin token also shows who entered each entry, from the audit trail).
    #[arg(long, env = "HALE_TOKEN")]
    token: Option<String>,
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn clinical_time(r: &Value) -> String {
    let pick = [
        &r["effectiveDateTime"],
        &r["effectiveInstant"],
        &r["effectivePeriod"]["start"],
        &r["context"]["period"]["start"],
        &r["date"],
        &r["period"]["start"],
        &r["start"],
    ];
    pick.iter().find_map(|v| v.as_str()).unwrap_or("-").to_string()
}

fn patient_of(r: &Value) -> Option<String> {
    let s = r["subject"]["reference"].as_str().map(str::to_string);
    s.or_else(|| {
        r["participant"].as_array()?.iter().find_map(|p| {
            p["actor"]["reference"]
                .as_str()
                .filter(|s| s.starts_with("Patient/"))
                .map(str::to_string)
        })
    })
}

/// The incident's period (`incident-period` extension on its Basic resource), as
/// RFC 3339 strings; the end is open while the incident is.
async fn incident_window(c: &mut Client, id: &str) -> Result<(String, Option<String>)> {
    let r = c.send("GET", &format!("/Basic/{}", enc(id)), None).await?;
    if r.status != 200 {
        bail!("incident {id}: HTTP {}: {}", r.status, String::from_utf8_lossy(&r.body));
    }
    let v = r.json()?;
    let period = v["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["url"] == hale_fhir::codes::EXT_INCIDENT_PERIOD)
        .map(|e| e["valuePeriod"].clone())
        .unwrap_or_default();
    let Some(start) = period["start"].as_str() else {
        bail!("Basic/{id} is not an incident with a period");
    };
    Ok((start.to_string(), period["end"].as_str().map(str::to_string)))
}

fn in_window(clinical: &str, window: &(String, Option<String>)) -> bool {
    let ms = |s: &str| hale_fhir::date::parse_range_ms(s).map(|r| r.0);
    let (Some(t), Some(start)) = (ms(clinical), ms(&window.0)) else {
        return false;
    };
    let end = window
        .1
        .as_deref()
        .and_then(|e| hale_fhir::date::parse_range_ms(e).map(|r| r.1));
    t >= start && end.is_none_or(|e| t <= e)
}

pub async fn run(a: BackfillArgs) -> Result<()> {
    let mut c = Client::new(&a.url, a.token.as_deref())?;
    // With an incident: entries tagged with it, and every backfilled entry whose
    // clinical time falls in the incident's period.
    let window = match &a.incident {
        Some(id) => Some(incident_window(&mut c, id).await?),
        None => None,
    };
    let mut tags = vec![format!("{TAG_SYSTEM}|downtime-backfill")];
    if let Some(id) = &a.incident {
        tags.push(format!("{TAG_SYSTEM}|incident-{id}"));
    }
    let mut rows = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for t in TYPES {
        for (k, tag) in tags.iter().enumerate() {
            let r = c
                .send("GET", &format!("/{t}?_tag={}&_count={PAGE_MAX}", enc(tag)), None)
                .await?;
            if r.status != 200 {
                bail!("searching {t}: HTTP {}: {}", r.status, String::from_utf8_lossy(&r.body));
            }
            for e in r.json()?["entry"].as_array().into_iter().flatten() {
                if e["search"]["mode"] != "match" {
                    continue;
                }
                let res = &e["resource"];
                let id = res["id"].as_str().unwrap_or("?").to_string();
                let clinical = clinical_time(res);
                let tagged_with_incident = k == 1;
                let wanted = match &window {
                    None => true,
                    Some(w) => tagged_with_incident || in_window(&clinical, w),
                };
                if !wanted || !seen.insert((t.to_string(), id.clone())) {
                    continue;
                }
                rows.push((
                    t.to_string(),
                    id,
                    patient_of(res).unwrap_or_else(|| "-".into()),
                    clinical,
                    res["meta"]["lastUpdated"].as_str().unwrap_or("-").to_string(),
                ));
            }
        }
    }
    // Who entered each entry: the audit trail (admins only; otherwise left blank).
    let mut who: BTreeMap<String, String> = BTreeMap::new();
    let patients: std::collections::BTreeSet<&String> = rows.iter().map(|r| &r.2).filter(|p| *p != "-").collect();
    for p in patients {
        let r = c
            .send("GET", &format!("/AuditEvent?patient={}&_count=1000", enc(p)), None)
            .await?;
        if r.status != 200 {
            break;
        }
        for e in r.json()?["entry"].as_array().into_iter().flatten() {
            let ev = &e["resource"];
            if !matches!(ev["action"].as_str(), Some("C") | Some("U")) {
                continue;
            }
            let user = ev["agent"][0]["who"]["identifier"]["value"].as_str().unwrap_or("?");
            for ent in ev["entity"].as_array().into_iter().flatten() {
                if let Some(what) = ent["what"]["reference"].as_str() {
                    who.insert(
                        what.to_string(),
                        format!("{user} at {}", ev["recorded"].as_str().unwrap_or("?")),
                    );
                }
            }
        }
    }
    println!(
        "{:<18} {:<38} {:<46} {:<26} {:<26} entered by",
        "type", "id", "patient", "clinical time", "entered at"
    );
    for (t, id, p, clinical, entered) in &rows {
        let by = who.get(&format!("{t}/{id}")).map(String::as_str).unwrap_or("-");
        println!("{t:<18} {id:<38} {p:<46} {clinical:<26} {entered:<26} {by}");
    }
    println!(
        "{} entries{}",
        rows.len(),
        a.incident
            .as_deref()
            .map(|i| format!(" for incident {i}"))
            .unwrap_or_default()
    );
    Ok(())
}
