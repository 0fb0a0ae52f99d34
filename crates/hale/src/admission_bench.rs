//! `hale bench admission`: per-class figures of admission control at 1x and
//! 3x the rate a node serves. Starts its own `hale serve` on loopback (a
//! fresh data directory, two classes: clinicians first, everyone else after),
//! seeds it, measures its capacity on the heavy requests, then offers:
//! the clinicians' rate alone (their unloaded figure), 1x and 3x of the mix
//! (20% clinician reads of a Patient, 80% clerk searches that scan 2,000
//! Locations and return 1,000). The load generator shares the machine.

use crate::http::Client;
use anyhow::{bail, Context, Result};
use hale_bench::admission::{capacity, run_mix, table, ClassFigures, ClassLoad};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

const CLIN_TOKEN: &str = "bench-clinician";
const CLERK_TOKEN: &str = "bench-clerk";
/// Share of the offered load that is class 1.
const TOP_SHARE: f64 = 0.2;
/// The node's in-flight budget, and the back office's share of it.
const INFLIGHT_MAX: usize = 32;
const BACK_OFFICE_PERCENT: u64 = 3;

fn config(listen: &str, data: &Path) -> String {
    format!(
        r#"listen = "{listen}"
data = "{data}"

[limits]
requests_inflight_max = {INFLIGHT_MAX}

[auth]
tokens = [
  {{ token = "{CLIN_TOKEN}", user = "dr.bench", role = "clinician" }},
  {{ token = "{CLERK_TOKEN}", user = "clerk.bench", role = "clerk" }},
]

[access]
legitimate_relationship = false

[admission]
[[admission.classes]]
name = "clinical"
[[admission.classes]]
name = "back-office"
inflight_percent = {BACK_OFFICE_PERCENT}
[[admission.rules]]
class = "clinical"
roles = ["clinician"]
"#,
        data = data.display()
    )
}

fn nhs_number(n: u32) -> Option<String> {
    let nine = format!("{:09}", 999_000_000 + n);
    let digits: [u8; 9] = nine
        .as_bytes()
        .iter()
        .map(|b| b - b'0')
        .collect::<Vec<_>>()
        .try_into()
        .ok()?;
    hale_fhir::nhs::check_digit(&digits).map(|c| format!("{nine}{c}"))
}

async fn post_bundle(c: &mut Client, entries: Vec<Value>) -> Result<Value> {
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let r = c.send("POST", "/", Some(bundle.to_string().into_bytes())).await?;
    if r.status != 200 {
        bail!(
            "seeding the bench node failed: HTTP {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    r.json()
}

/// 40 Patients to read, 2,000 Locations to search.
async fn seed(url: &str) -> Result<(Vec<String>, Vec<String>)> {
    let mut c = Client::new(url, Some(CLIN_TOKEN))?;
    let patients: Vec<Value> = (0..400u32)
        .filter_map(nhs_number)
        .take(40)
        .map(|nhs| {
            json!({"resource": {
                "resourceType": "Patient",
                "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}],
                "name": [{"family": "Bench", "given": ["Read"]}],
                "birthDate": "1970-01-01"
            }, "request": {"method": "POST", "url": "Patient"}})
        })
        .collect();
    let done = post_bundle(&mut c, patients).await?;
    let reads: Vec<String> = done["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["response"]["location"].as_str())
        .filter_map(|l| l.split('/').nth(1).map(|id| format!("/Patient/{id}")))
        .collect();
    for batch in 0..5 {
        let locations = (0..400)
            .map(|i| {
                json!({"resource": {"resourceType": "Location", "status": "active", "name": format!("Ward {batch}-{i}")},
                       "request": {"method": "POST", "url": "Location"}})
            })
            .collect();
        post_bundle(&mut c, locations).await?;
    }
    let searches = (0..10)
        .map(|i| format!("/Location?name:contains=ard%20{}&_count=1000", i % 5))
        .collect();
    Ok((reads, searches))
}

fn figures_json(f: &ClassFigures, d: Duration) -> Value {
    json!({
        "class": f.name, "offered": f.offered, "notSent": f.not_sent, "ok": f.ok,
        "okPerS": f.ok_per_s(d), "shed": f.shed, "errors": f.errors,
        "p50Ms": f.latency.p50_ms, "p99Ms": f.latency.p99_ms, "maxMs": f.latency.max_ms,
    })
}

pub async fn run(duration_s: u64, warmup_s: u64, json_out: bool) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("hale-bench-admission-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let listen = format!("127.0.0.1:{port}");
    let url = format!("http://{listen}");
    let cfg = dir.join("hale.toml");
    std::fs::write(&cfg, config(&listen, &dir.join("data")))?;
    let log = std::fs::File::create(dir.join("serve.log"))?;
    let exe = std::env::current_exe().context("cannot find the hale executable")?;
    let mut child = tokio::process::Command::new(exe)
        .arg("serve")
        .arg("--config")
        .arg(&cfg)
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("cannot start hale serve for the bench")?;
    let result = measure(&url, duration_s.max(1), warmup_s, json_out).await;
    let _ = child.kill().await;
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("the bench node's data and log are in {}", dir.display());
    }
    result
}

async fn measure(url: &str, duration_s: u64, warmup_s: u64, json_out: bool) -> Result<()> {
    crate::local::wait_healthy(url).await?;
    let (reads, searches) = seed(url).await?;
    let rate = capacity(
        url,
        None,
        Some(CLIN_TOKEN),
        &searches,
        8,
        Duration::from_secs(warmup_s),
        Duration::from_secs(duration_s),
    )
    .await?;
    let top = |weight: f64| ClassLoad {
        name: "clinical".into(),
        token: Some(CLIN_TOKEN.into()),
        paths: reads.clone(),
        weight,
        connections: 32,
    };
    let bottom = ClassLoad {
        name: "back-office".into(),
        token: Some(CLERK_TOKEN.into()),
        paths: searches.clone(),
        weight: 1.0 - TOP_SHARE,
        connections: 32,
    };
    let d = Duration::from_secs(duration_s);
    println!(
        "node {url}: capacity {rate:.0} requests/s (closed loop, 8 connections, the clerks' search as a class-1 caller); \
         in-flight budget {INFLIGHT_MAX}, back office {BACK_OFFICE_PERCENT}% of it; {duration_s} s per run\n"
    );
    let alone = run_mix(url, None, &[top(1.0)], TOP_SHARE * 3.0 * rate, d).await?;
    println!(
        "{}",
        table(
            &format!("clinicians alone at {:.0}/s (their 3x rate):", TOP_SHARE * 3.0 * rate),
            &alone,
            d
        )
    );
    let one = run_mix(url, None, &[top(TOP_SHARE), bottom.clone()], rate, d).await?;
    println!("{}", table(&format!("1x: {rate:.0}/s offered:"), &one, d));
    let three = run_mix(url, None, &[top(TOP_SHARE), bottom], 3.0 * rate, d).await?;
    println!("{}", table(&format!("3x: {:.0}/s offered:", 3.0 * rate), &three, d));
    if let Some((retry, why)) = three.get(1).and_then(|f| f.shed_example.clone()) {
        println!("a shed answer: Retry-After {retry}: {why}");
    }
    if json_out {
        let j = json!({
            "capacityPerS": rate,
            "durationS": duration_s,
            "alone": alone.iter().map(|f| figures_json(f, d)).collect::<Vec<_>>(),
            "x1": one.iter().map(|f| figures_json(f, d)).collect::<Vec<_>>(),
            "x3": three.iter().map(|f| figures_json(f, d)).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bench_config_parses_and_its_numbers_are_valid() {
        let text = super::config("127.0.0.1:1", std::path::Path::new("/tmp/x"));
        let cfg: hale_server::config::Config = toml::from_str(&text).expect("config parses");
        hale_server::admission::Admission::new(&cfg.admission, cfg.limits.requests_inflight_max).expect("valid");
        let n = super::nhs_number(1).expect("a number");
        assert!(hale_fhir::nhs::is_valid(&n), "{n}");
    }
}
