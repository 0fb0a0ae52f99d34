//! `hale bench offline`: a site cut off for "two days", then healed.
//!
//! Starts 3 voters and 1 learner (a hospital site) on loopback with fault
//! injection, cuts the learner off, and has `--connections` clients save
//! `--offline-entries` clinical notes (Observations) at the site with
//! `X-Hale-Offline: accept`, timing each 202. Then it heals the cut and times
//! how long the site's journal takes to drain through the leader, and checks
//! with `/sync/verify` that every entry has exactly one receipt.

use crate::failover::percentile;
use crate::http::Client;
use crate::local::{LocalCluster, Spec, ADMIN_TOKEN};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CLINICIAN_TOKEN: &str = "demo-clinician";
const VOTERS: usize = 3;
/// Patients the notes are written about.
const PATIENTS: usize = 50;
/// A drain that has not finished in this long fails the run.
const DRAIN_LIMIT: Duration = Duration::from_secs(600);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn get_json(url: &str, path: &str) -> Result<Value> {
    let mut c = Client::new(url, Some(ADMIN_TOKEN))?;
    let r = c.send("GET", path, None).await?;
    if r.status != 200 {
        bail!("GET {path}: HTTP {}", r.status);
    }
    r.json()
}

pub async fn run(entries: usize, connections: usize, json_out: bool) -> Result<()> {
    if entries == 0 || connections == 0 {
        bail!("--offline-entries and --connections must be at least 1");
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let data = std::env::temp_dir().join(format!("hale-offline-{}-{stamp}", std::process::id()));
    let spec = Spec {
        voters: VOTERS,
        learners: 1,
        data: data.clone(),
        fault_injection: true,
        mtls: true,
        // Clinicians write on the bench's own patients, who have no bookings.
        extra_toml: crate::chaos::NO_RELATIONSHIP_TOML.into(),
        demo_patients: 0,
        log: "warn".into(),
    };
    eprintln!(
        "offline: starting {VOTERS} voters and 1 site learner under {} ...",
        data.display()
    );
    let mut cluster = LocalCluster::start(spec).await?;
    let result = measure(&mut cluster, entries, connections).await;
    cluster.stop_all().await;
    drop(cluster);
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("node logs kept in {} (node-N.log)", data.display());
            return Err(e);
        }
    };
    let _ = std::fs::remove_dir_all(&data);
    let w = &report["write_ms"];
    println!(
        "offline: {} notes saved at a cut-off site by {} clients, then the cut healed (3 voters + 1 learner on loopback)",
        report["accepted"], connections
    );
    println!(
        "  offline writes (202):  {:.0}/s; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms   (target p99 <= 50 ms)",
        report["write_per_s"].as_f64().unwrap_or(0.0),
        w["p50"].as_f64().unwrap_or(0.0),
        w["p99"].as_f64().unwrap_or(0.0),
        w["max"].as_f64().unwrap_or(0.0)
    );
    println!(
        "  drain after heal:      {:.1} s for {} entries ({:.0}/s)   (target <= 30 s for 10,000)",
        report["drain_s"].as_f64().unwrap_or(0.0),
        report["accepted"],
        report["drain_per_s"].as_f64().unwrap_or(0.0)
    );
    println!(
        "  verify:                {} receipts for {} entries, missing {}, duplicate {}, chain ok {}",
        report["verify"]["receipts"],
        report["verify"]["entries"],
        report["verify"]["missing"].as_array().map(Vec::len).unwrap_or(0),
        report["verify"]["duplicate"],
        report["verify"]["chainOk"]
    );
    println!("  conflict tasks:        {}", report["tasks"]);
    if json_out {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

async fn measure(c: &mut LocalCluster, entries: usize, connections: usize) -> Result<Value> {
    let leader = c.leader().await.context("no leader")?;
    let leader_url = c.proc(leader).api_url();
    let site = c.procs.iter().find(|p| !p.voter).context("no learner")?;
    let (site_id, site_url) = (site.id, site.api_url());
    let mut admin = Client::new(&leader_url, Some(ADMIN_TOKEN))?;
    let mut patients = Vec::new();
    for i in 0..PATIENTS {
        let body =
            json!({"resourceType": "Patient", "name": [{"family": format!("Offline{i}")}], "birthDate": "1970-01-01"});
        let r = admin
            .send("POST", "/Patient", Some(body.to_string().into_bytes()))
            .await?;
        if r.status != 201 {
            bail!("set-up: POST /Patient gave HTTP {}", r.status);
        }
        patients.push(r.json()?["id"].as_str().context("an id")?.to_string());
    }
    // The site has the patients before it is cut off.
    let target = c.node_status(leader, false).await?["applied_index"]
        .as_u64()
        .unwrap_or(0);
    let start = Instant::now();
    while c.node_status(site_id, false).await?["applied_index"]
        .as_u64()
        .unwrap_or(0)
        < target
    {
        if start.elapsed() > Duration::from_secs(60) {
            bail!("the site did not catch up before the cut");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.isolate(site_id, true).await?;
    let start = Instant::now();
    loop {
        let s = get_json(&site_url, "/sync/status").await?;
        if !s["cutOff"].is_null() {
            break;
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("the site did not notice the cut within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("offline: site node {site_id} cut off; saving {entries} notes with {connections} clients ...");
    let next = Arc::new(AtomicUsize::new(0));
    let lat: Arc<Mutex<Vec<f64>>> = Arc::default();
    let patients = Arc::new(patients);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (next, lat, patients, url) = (next.clone(), lat.clone(), patients.clone(), site_url.clone());
        tasks.push(tokio::spawn(async move {
            let mut cl = Client::new(&url, Some(CLINICIAN_TOKEN))?.with_timeout(REQUEST_TIMEOUT);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= entries {
                    return Ok::<(), anyhow::Error>(());
                }
                let p = &patients[i % patients.len()];
                let body = json!({
                    "resourceType": "Observation", "status": "final",
                    "code": {"text": "pulse"},
                    "subject": {"reference": format!("Patient/{p}")},
                    "valueQuantity": {"value": 60 + (i % 40), "unit": "/min"},
                    "note": [{"text": format!("taken at the site while cut off, note {i}")}]
                });
                let t = Instant::now();
                let r = cl
                    .send_with(
                        "POST",
                        "/Observation",
                        Some(body.to_string().into_bytes()),
                        &[("x-hale-offline", "accept")],
                    )
                    .await?;
                let took = t.elapsed();
                if r.status != 202 {
                    bail!(
                        "an offline write got HTTP {} instead of 202: {}",
                        r.status,
                        String::from_utf8_lossy(&r.body)
                    );
                }
                lat.lock().expect("lat").push(ms(took));
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let write_elapsed = t0.elapsed();
    let mut sorted = std::mem::take(&mut *lat.lock().expect("lat"));
    sorted.sort_by(f64::total_cmp);
    let s = get_json(&site_url, "/sync/status").await?;
    let pending = s["pending"].as_u64().unwrap_or(0);
    if pending != entries as u64 {
        bail!("{entries} writes were accepted but the journal holds {pending} pending");
    }
    eprintln!("offline: healing the cut; draining {pending} entries ...");
    c.isolate(site_id, false).await?;
    let t1 = Instant::now();
    loop {
        let s = get_json(&site_url, "/sync/status").await?;
        if s["pending"] == 0 {
            break;
        }
        if t1.elapsed() > DRAIN_LIMIT {
            bail!("the journal did not drain within {DRAIN_LIMIT:?}: {s}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drain = t1.elapsed();
    let verify = get_json(&site_url, "/sync/verify").await?;
    let status = get_json(&site_url, "/sync/status").await?;
    Ok(json!({
        "accepted": sorted.len(),
        "connections": connections,
        "write_per_s": sorted.len() as f64 / write_elapsed.as_secs_f64(),
        "write_ms": {
            "p50": percentile(&sorted, 50.0),
            "p99": percentile(&sorted, 99.0),
            "max": sorted.last().copied().unwrap_or(0.0),
        },
        "drain_s": drain.as_secs_f64(),
        "drain_per_s": sorted.len() as f64 / drain.as_secs_f64().max(1e-9),
        "verify": verify,
        "tasks": status["tasks"],
    }))
}
