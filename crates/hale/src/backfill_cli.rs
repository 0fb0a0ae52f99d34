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
    /// The incident the entries were tagged with (`POST /$backfill?incident=ID`); without it, every backfilled entry.
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

pub async fn run(a: BackfillArgs) -> Result<()> {
    let tag = match &a.incident {
        Some(id) => format!("{TAG_SYSTEM}|incident-{id}"),
        None => format!("{TAG_SYSTEM}|downtime-backfill"),
    };
    let mut c = Client::new(&a.url, a.token.as_deref())?;
    let mut rows = Vec::new();
    for t in TYPES {
        let r = c
            .send("GET", &format!("/{t}?_tag={}&_count={PAGE_MAX}", enc(&tag)), None)
            .await?;
        if r.status != 200 {
            bail!("searching {t}: HTTP {}: {}", r.status, String::from_utf8_lossy(&r.body));
        }
        for e in r.json()?["entry"].as_array().into_iter().flatten() {
            if e["search"]["mode"] != "match" {
                continue;
            }
            let res = &e["resource"];
            rows.push((
                t.to_string(),
                res["id"].as_str().unwrap_or("?").to_string(),
                patient_of(res).unwrap_or_else(|| "-".into()),
                clinical_time(res),
                res["meta"]["lastUpdated"].as_str().unwrap_or("-").to_string(),
            ));
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
