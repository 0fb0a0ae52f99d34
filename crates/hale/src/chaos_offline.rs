//! The offline-writes phase of `hale chaos`: a site learner is cut off and
//! keeps writing (`X-Hale-Offline: accept`) while the data centres change the
//! same records; the learner is SIGKILLed mid-outage and again mid-drain, and
//! the leader drops its answer to one replay batch. Afterwards every journal
//! entry must have exactly one receipt, exactly the expected conflict Tasks
//! must exist, no slot may be held twice, re-sending the whole journal must
//! create nothing, and every read made at the site must be audited once.

use crate::chaos::Rng;
use crate::http::Client;
use crate::local::{LocalCluster, ADMIN_TOKEN};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const CLINICIAN: &str = "demo-clinician";
const CLERK: &str = "demo-clerk";
const SYNC_CONFLICT: &str = "https://hale.health/fhir/CodeSystem/sync-conflict";
const NHS: &str = "https://fhir.nhs.uk/Id/nhs-number";
/// Phone edits at the site; the first half also edited centrally on the same field.
const PHONE_EDITS: usize = 10;
/// Reads of one patient at the site, each of which must be audited once.
const SITE_READS: usize = 40;
const WAIT: Duration = Duration::from_secs(120);

struct Api {
    url: String,
}

impl Api {
    async fn send(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<&Value>,
        offline: bool,
    ) -> Result<(u16, Value)> {
        let mut c = Client::new(&self.url, Some(token))?.with_timeout(Duration::from_secs(30));
        let mut extra = vec![];
        if offline {
            extra.push(("x-hale-offline", "accept"));
        }
        let r = c
            .send_with(method, path, body.map(|b| b.to_string().into_bytes()), &extra)
            .await
            .with_context(|| format!("{method} {}{path}", self.url))?;
        let v = r.json().unwrap_or(Value::Null);
        Ok((r.status, v))
    }

    async fn must(&self, token: &str, method: &str, path: &str, body: Option<&Value>, want: u16) -> Result<Value> {
        let (status, v) = self.send(token, method, path, body, false).await?;
        if status != want {
            bail!("{method} {path}: HTTP {status} (wanted {want}): {v}");
        }
        Ok(v)
    }

    async fn offline(&self, method: &str, path: &str, body: &Value) -> Result<Value> {
        let (status, v) = self.send(CLINICIAN, method, path, Some(body), true).await?;
        if status != 202 {
            bail!("offline {method} {path}: HTTP {status} (wanted 202): {v}");
        }
        Ok(v)
    }
}

fn nhs_number(k: u64) -> String {
    let mut n = 999_200_000 + k * 7;
    loop {
        let s = format!("{n:09}");
        let d: Vec<u8> = s.bytes().map(|b| b - b'0').collect();
        let first: [u8; 9] = d.try_into().expect("nine digits");
        if let Some(c) = hale_fhir::nhs::check_digit(&first) {
            return format!("{s}{c}");
        }
        n += 1;
    }
}

fn patient(family: &str, phone: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "name": [{"family": family, "given": ["Offline"]}],
        "birthDate": "1975-05-05",
        "telecom": [{"system": "phone", "use": "home", "value": phone}, {"system": "email", "value": format!("{family}@example.org")}]
    })
}

fn slot(schedule: &str, n: u32, reserve: Option<&str>) -> Value {
    let mut s = json!({
        "resourceType": "Slot", "schedule": {"reference": format!("Schedule/{schedule}")}, "status": "free",
        "start": format!("2032-03-01T{:02}:00:00Z", 8 + n), "end": format!("2032-03-01T{:02}:30:00Z", 8 + n)
    });
    if let Some(site) = reserve {
        s["extension"] =
            json!([{"url": "https://hale.health/fhir/StructureDefinition/offline-reserve", "valueString": site}]);
    }
    s
}

fn appointment(patient: &str, slot: &str) -> Value {
    json!({
        "resourceType": "Appointment", "status": "booked",
        "serviceCategory": [{"coding": [{"system": "https://hale.health/fhir/CodeSystem/appointment-category", "code": "outpatient"}]}],
        "priority": 4,
        "slot": [{"reference": format!("Slot/{slot}")}],
        "participant": [{"actor": {"reference": format!("Patient/{patient}")}, "status": "accepted"}]
    })
}

fn id_of(v: &Value) -> Result<String> {
    v["id"].as_str().map(str::to_string).context("an answer without an id")
}

/// A gauge from a node's `/metrics` (-1 when absent).
async fn gauge(url: &str, name: &str) -> Result<f64> {
    let mut cl = Client::new(url, None)?;
    let r = cl.send("GET", "/metrics", None).await?;
    let text = String::from_utf8_lossy(&r.body).to_string();
    Ok(text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(-1.0))
}

async fn applied(c: &LocalCluster, id: u64) -> u64 {
    c.node_status(id, false)
        .await
        .ok()
        .and_then(|s| s["applied_index"].as_u64())
        .unwrap_or(0)
}

async fn wait_for<F, Fut>(what: &str, mut f: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let start = Instant::now();
    while !f().await.unwrap_or(false) {
        if start.elapsed() > WAIT {
            bail!("gave up waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Run the phase; returns its report (with `failures`).
pub async fn run(c: &mut LocalCluster, rng: &mut Rng, notes: usize) -> Result<Value> {
    let leader = c.leader().await.context("no leader")?;
    let Some(site) = c.procs.iter().find(|p| !p.voter) else {
        bail!("the offline phase needs a learner (--learners 1)");
    };
    let (site_id, site_name) = (site.id, site.site.clone());
    let central = Api {
        url: c.proc(leader).api_url(),
    };
    let at_site = Api { url: site.api_url() };

    // Set-up, centrally.
    let loc = id_of(
        &central
            .must(
                CLERK,
                "POST",
                "/Location",
                Some(&json!({"resourceType": "Location", "status": "active", "name": "Offline clinic"})),
                201,
            )
            .await?,
    )?;
    let sch = id_of(
        &central
            .must(CLERK, "POST", "/Schedule", Some(&json!({"resourceType": "Schedule", "active": true, "actor": [{"reference": format!("Location/{loc}")}]})), 201)
            .await?,
    )?;
    let mut pats = Vec::new();
    for i in 0..PHONE_EDITS {
        pats.push(id_of(
            &central
                .must(
                    CLERK,
                    "POST",
                    "/Patient",
                    Some(&patient(&format!("Phone{i}"), "0141 000 0000")),
                    201,
                )
                .await?,
        )?);
    }
    let reader = id_of(
        &central
            .must(
                CLERK,
                "POST",
                "/Patient",
                Some(&patient("Reader", "0141 111 1111")),
                201,
            )
            .await?,
    )?;
    let mut slots = Vec::new();
    for n in 0..6u32 {
        let reserve = (n == 1).then_some(site_name.as_str());
        slots.push(id_of(
            &central
                .must(CLERK, "POST", "/Slot", Some(&slot(&sch, n, reserve)), 201)
                .await?,
        )?);
    }
    // slots: 0 contended, 1 reserved for the site, 2 arrival, 3 cancel, 4 cancel-after-move, 5 the move's target.
    let arrive = id_of(
        &central
            .must(
                CLERK,
                "POST",
                "/Appointment",
                Some(&appointment(&pats[0], &slots[2])),
                201,
            )
            .await?,
    )?;
    let cancel = id_of(
        &central
            .must(
                CLERK,
                "POST",
                "/Appointment",
                Some(&appointment(&pats[1], &slots[3])),
                201,
            )
            .await?,
    )?;
    let moved = id_of(
        &central
            .must(
                CLERK,
                "POST",
                "/Appointment",
                Some(&appointment(&pats[2], &slots[4])),
                201,
            )
            .await?,
    )?;
    let target = applied(c, leader).await;
    wait_for("the site to catch up before the cut", || async {
        Ok(applied(c, site_id).await >= target)
    })
    .await?;

    // Cut the site off.
    c.isolate(site_id, true).await?;
    wait_for("the site to see it is cut off", || async {
        let (_, s) = at_site.send(ADMIN_TOKEN, "GET", "/sync/status", None, false).await?;
        Ok(!s["cutOff"].is_null())
    })
    .await?;
    let mut offline_writes = 0usize;
    let note = |k: usize, p: &str| {
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "pulse"},
               "subject": {"reference": format!("Patient/{p}")}, "valueQuantity": {"value": 60 + (k % 40), "unit": "/min"}})
    };
    // Batch 1 at the site: notes, reads, an arrival, phone edits.
    for k in 0..notes / 2 {
        at_site
            .offline("POST", "/Observation", &note(k, &pats[k % pats.len()]))
            .await?;
        offline_writes += 1;
    }
    for _ in 0..SITE_READS / 2 {
        at_site
            .must(CLINICIAN, "GET", &format!("/Patient/{reader}"), None, 200)
            .await?;
    }
    let mut a = at_site
        .must(CLINICIAN, "GET", &format!("/Appointment/{arrive}"), None, 200)
        .await?;
    a["status"] = json!("arrived");
    at_site.offline("PUT", &format!("/Appointment/{arrive}"), &a).await?;
    offline_writes += 1;
    for (i, p) in pats.iter().enumerate() {
        let mut v = at_site
            .must(CLINICIAN, "GET", &format!("/Patient/{p}"), None, 200)
            .await?;
        v["telecom"][0]["value"] = json!(format!("07700 90{i:04}"));
        at_site.offline("PUT", &format!("/Patient/{p}"), &v).await?;
        offline_writes += 1;
    }

    // Meanwhile, centrally: half the phones (same field), the other half's
    // email (a different field), the twin's NHS number, the contended slot,
    // and one of the appointments the site will cancel is moved.
    for (i, p) in pats.iter().enumerate() {
        let mut v = central.must(CLERK, "GET", &format!("/Patient/{p}"), None, 200).await?;
        if i < PHONE_EDITS / 2 {
            v["telecom"][0]["value"] = json!(format!("0141 999 {i:04}"));
        } else {
            v["telecom"][1]["value"] = json!(format!("central{i}@example.org"));
        }
        central
            .must(CLERK, "PUT", &format!("/Patient/{p}"), Some(&v), 200)
            .await?;
    }
    let twin_nhs = nhs_number(rng.below(1_000));
    let mut twin = patient("Twin", "0141 222 2222");
    twin["identifier"] = json!([{"system": NHS, "value": twin_nhs}]);
    central.must(CLERK, "POST", "/Patient", Some(&twin), 201).await?;
    central
        .must(
            CLERK,
            "POST",
            "/Appointment",
            Some(&appointment(&pats[3], &slots[0])),
            201,
        )
        .await?;
    let mut m = central
        .must(CLERK, "GET", &format!("/Appointment/{moved}"), None, 200)
        .await?;
    m["slot"] = json!([{"reference": format!("Slot/{}", slots[5])}]);
    central
        .must(CLERK, "PUT", &format!("/Appointment/{moved}"), Some(&m), 200)
        .await?;

    // Batch 2 at the site: the twin, two bookings, two cancellations, more notes and reads.
    at_site.offline("POST", "/Patient", &twin).await?;
    at_site
        .offline("POST", "/Appointment", &appointment(&pats[4], &slots[0]))
        .await?;
    at_site
        .offline("POST", "/Appointment", &appointment(&pats[5], &slots[1]))
        .await?;
    offline_writes += 3;
    for appt in [&cancel, &moved] {
        let mut v = at_site
            .must(CLINICIAN, "GET", &format!("/Appointment/{appt}"), None, 200)
            .await?;
        v["status"] = json!("cancelled");
        v["cancelationReason"] =
            json!({"coding": [{"system": "https://hale.health/fhir/CodeSystem/cancelled-by", "code": "patient"}]});
        at_site.offline("PUT", &format!("/Appointment/{appt}"), &v).await?;
        offline_writes += 1;
    }
    for k in notes / 2..notes {
        at_site
            .offline("POST", "/Observation", &note(k, &pats[k % pats.len()]))
            .await?;
        offline_writes += 1;
    }
    for _ in SITE_READS / 2..SITE_READS {
        at_site
            .must(CLINICIAN, "GET", &format!("/Patient/{reader}"), None, 200)
            .await?;
    }
    // Not for the journal: a write without the opt-in, and a delete.
    let (s1, _) = at_site
        .send(CLINICIAN, "POST", "/Observation", Some(&note(0, &pats[0])), false)
        .await?;
    let (s2, _) = at_site
        .send(CLINICIAN, "DELETE", &format!("/Slot/{}", slots[5]), None, true)
        .await?;
    let mut failures = Vec::new();
    if s1 != 503 || s2 != 503 {
        failures.push(format!(
            "a write without the opt-in got {s1} and an offline delete got {s2}, not 503"
        ));
    }
    // The site's reads are audited from its spool: let it reach the disk before the kill.
    wait_for("the site's read audit to reach its spool", || async {
        Ok(gauge(&at_site.url, "hale_audit_queue_records").await? == 0.0
            && gauge(&at_site.url, "hale_audit_spooled_batches").await? >= 1.0)
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // kill -9 mid-outage; the leader will drop its answer to one replay batch;
    // the restarted site drains, and is killed again mid-drain.
    let leader = c.leader().await.context("no leader")?;
    c.fault(leader, json!({"drop_propose_replies": 1})).await?;
    c.kill(site_id).await?;
    c.restart(site_id).await?;
    tokio::time::sleep(rng.millis(50, 400)).await;
    c.kill(site_id).await?;
    c.restart(site_id).await?;
    let drain_start = Instant::now();
    wait_for("the site journal to drain", || async {
        let (_, s) = at_site.send(ADMIN_TOKEN, "GET", "/sync/status", None, false).await?;
        Ok(s["pending"] == 0)
    })
    .await?;
    let drain_s = drain_start.elapsed().as_secs_f64();
    let target = applied(c, c.leader().await.context("no leader")?).await;
    wait_for("the site to apply the replay", || async {
        Ok(applied(c, site_id).await >= target)
    })
    .await?;

    wait_for("the site's audit spool to drain", || async {
        Ok(gauge(&at_site.url, "hale_audit_spooled_batches").await? == 0.0
            && gauge(&at_site.url, "hale_audit_queue_records").await? == 0.0)
    })
    .await?;

    // Checks.
    let (_, v) = at_site.send(ADMIN_TOKEN, "GET", "/sync/verify", None, false).await?;
    let missing = v["missing"].as_array().map(Vec::len).unwrap_or(usize::MAX);
    if v["entries"] != offline_writes
        || v["receipts"] != offline_writes
        || missing != 0
        || v["duplicate"] != 0
        || v["chainOk"] != true
    {
        failures.push(format!("sync verify after {offline_writes} offline writes: {v}"));
    }
    let central = Api {
        url: c.proc(c.leader().await.context("no leader")?).api_url(),
    };
    let tasks = central
        .must(
            ADMIN_TOKEN,
            "GET",
            &format!("/Task?code={SYNC_CONFLICT}|&_count=500"),
            None,
            200,
        )
        .await?;
    let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
    for e in tasks["entry"].as_array().into_iter().flatten() {
        if let Some(k) = e.pointer("/resource/code/coding/0/code").and_then(Value::as_str) {
            *by_kind.entry(k.to_string()).or_default() += 1;
        }
    }
    let expected: BTreeMap<String, u64> = [
        ("field-conflict", (PHONE_EDITS / 2) as u64),
        ("possible-duplicate", 1),
        ("slot-taken", 1),
        ("status-diverged", 1),
    ]
    .into_iter()
    .map(|(k, n)| (k.to_string(), n))
    .collect();
    if by_kind != expected {
        failures.push(format!("conflict tasks {by_kind:?}, expected {expected:?}"));
    }
    let holders = central
        .must(
            CLERK,
            "GET",
            &format!(
                "/Appointment?slot=Slot/{}&status=booked,arrived,checked-in,fulfilled,pending",
                slots[0]
            ),
            None,
            200,
        )
        .await?;
    let held = holders["entry"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e.pointer("/search/mode").and_then(Value::as_str) == Some("match"))
                .count()
        })
        .unwrap_or(0);
    if held != 1 {
        failures.push(format!("the contended slot is held by {held} appointments"));
    }
    let (status, resent) = at_site
        .send(ADMIN_TOKEN, "POST", "/sync/resend", Some(&json!({})), false)
        .await?;
    if status != 200 || resent["new"] != 0 || resent["sent"] != offline_writes {
        failures.push(format!("re-sending the journal: HTTP {status} {resent}"));
    }
    let audits = central
        .must(
            ADMIN_TOKEN,
            "GET",
            &format!("/AuditEvent?patient=Patient/{reader}&_count=1000"),
            None,
            200,
        )
        .await?;
    let reads = audits["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e.pointer("/resource/action").and_then(Value::as_str) == Some("R"))
        .count();
    if reads != SITE_READS {
        failures.push(format!("{SITE_READS} reads at the site left {reads} audit records"));
    }
    let tasks_total: u64 = by_kind.values().sum();
    Ok(json!({
        "ok": failures.is_empty(),
        "failures": failures,
        "offline_writes": offline_writes,
        "site_reads": SITE_READS,
        "read_audits": reads,
        "drain_s": (drain_s * 10.0).round() / 10.0,
        "verify": v,
        "tasks": by_kind,
        "tasks_per_1000_writes": (tasks_total as f64 * 1000.0 / offline_writes.max(1) as f64).round(),
        "resend": resent,
    }))
}
