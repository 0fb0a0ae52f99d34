//! Data from another system: real Synthea R4 output (tests/data/synthea),
//! loaded as a FHIR client would. The support batches first (with
//! `ifNoneExist`), then each patient's transaction, whose `urn:uuid:` and
//! conditional references (`Practitioner?identifier=…`) must resolve.

use crate::common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/synthea")
}

fn load(prefix: &str) -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data_dir())
        .expect("tests/data/synthea")
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with(prefix) && name.ends_with(".json")
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no {prefix}*.json in tests/data/synthea");
    files
        .iter()
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect()
}

fn patients() -> Vec<Value> {
    let mut out = Vec::new();
    for p in load("") {
        let name = p["entry"][0]["resource"]["resourceType"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if p["type"] == "transaction" && name == "Patient" {
            out.push(p);
        }
    }
    assert_eq!(out.len(), 3, "three patient bundles");
    out
}

fn statuses(r: &Resp) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for e in r.body()["entry"].as_array().unwrap() {
        *m.entry(e["response"]["status"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    m
}

async fn total(srv: &TestServer, query: &str) -> u64 {
    let sep = if query.contains('?') { '&' } else { '?' };
    let r = srv.get(&format!("/{query}{sep}_summary=count"), ADMIN).await;
    r.expect(200);
    r.body()["total"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synthea_bundles_load_with_their_conditional_references() {
    let srv = TestServer::start().await;
    for support in ["hospitalInformation", "practitionerInformation"] {
        let b = &load(support)[0];
        let n = b["entry"].as_array().unwrap().len();
        let r = srv.post("/", ADMIN, b).await;
        r.expect(200);
        assert_eq!(
            statuses(&r),
            BTreeMap::from([("201 Created".to_string(), n)]),
            "{support}: {}",
            r.text
        );
    }
    let orgs = total(&srv, "Organization").await;
    assert_eq!(orgs, 134);
    // Posting the hospitals again matches each by ifNoneExist: nothing new.
    let r = srv.post("/", ADMIN, &load("hospitalInformation")[0]).await;
    r.expect(200);
    assert_eq!(
        statuses(&r),
        BTreeMap::from([("200 OK".to_string(), 268)]),
        "{}",
        r.text
    );
    assert_eq!(total(&srv, "Organization").await, orgs);

    for b in patients() {
        let entries = b["entry"].as_array().unwrap();
        let r = srv.post("/", ADMIN, &b).await;
        assert_eq!(r.status, 200, "{}", r.text.chars().take(2000).collect::<String>());
        assert_eq!(
            statuses(&r),
            BTreeMap::from([("201 Created".to_string(), entries.len())])
        );
        // Each entry's resource is stored, its references rewritten to the
        // server's ids, and every other element as sent (decimals included).
        for (sent, got) in entries.iter().zip(r.body()["entry"].as_array().unwrap()) {
            let loc = got["response"]["location"].as_str().unwrap();
            let path = loc.split("/_history").next().unwrap();
            let path = &path[path.find(sent["resource"]["resourceType"].as_str().unwrap()).unwrap() - 1..];
            let stored = srv.get(path, ADMIN).await;
            stored.expect(200);
            assert_same_but_references(&sent["resource"], stored.body(), path);
        }
        let pid = r.body()["entry"][0]["response"]["location"]
            .as_str()
            .unwrap()
            .split('/')
            .rev()
            .nth(2)
            .unwrap()
            .to_string();
        let conditions = entries
            .iter()
            .filter(|e| e["resource"]["resourceType"] == "Condition")
            .count() as u64;
        assert_eq!(
            total(&srv, &format!("Condition?patient=Patient/{pid}")).await,
            conditions
        );
        let meds = entries
            .iter()
            .filter(|e| e["resource"]["resourceType"] == "MedicationRequest")
            .count() as u64;
        assert_eq!(
            total(&srv, &format!("MedicationRequest?patient=Patient/{pid}")).await,
            meds
        );
        // Encounters name their practitioner through the resolved reference.
        let enc = srv
            .get(
                &format!("/Encounter?patient=Patient/{pid}&_count=1&_include=Encounter:practitioner"),
                ADMIN,
            )
            .await;
        enc.expect(200);
        let kinds: Vec<&str> = enc.body()["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["resource"]["resourceType"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["Encounter", "Practitioner"], "{}", enc.text);
    }
}

/// Everything equal except reference strings, which the server rewrites
/// (`urn:uuid:…` and `Type?identifier=…` become `Type/id`), and server meta.
fn assert_same_but_references(sent: &Value, got: &Value, at: &str) {
    match (sent, got) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                if k == "id" || (k == "meta" && at.matches('/').count() == 2) {
                    continue;
                }
                let w = b.get(k).unwrap_or_else(|| panic!("{at}: {k} missing"));
                if k == "reference"
                    && v.as_str()
                        .is_some_and(|s| s.starts_with("urn:uuid:") || s.contains('?'))
                {
                    let s = w.as_str().unwrap();
                    assert!(
                        s.split('/').count() == 2 && !s.contains('?'),
                        "{at}.reference not resolved: {s}"
                    );
                    continue;
                }
                assert_same_but_references(v, w, &format!("{at}.{k}"));
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{at}");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_same_but_references(x, y, &format!("{at}[{i}]"));
            }
        }
        _ => assert_eq!(sent, got, "{at}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conditional_reference_that_matches_none_or_several_fails_the_transaction() {
    let srv = TestServer::start().await;
    let org = |name: &str| json!({"resourceType": "Organization", "name": name, "identifier": [{"system": "urn:test", "value": "dup"}]});
    let enc = json!({"resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "serviceProvider": {"reference": "Organization?identifier=urn:test|dup"}});
    let tx = |e: &Value| {
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:2c1b0e4e-5d0c-4f6e-9d2a-000000000001", "resource": e, "request": {"method": "POST", "url": "Encounter"}}]})
    };
    // None.
    let r = srv.post("/", ADMIN, &tx(&enc)).await;
    r.expect(412);
    let issue = &r.body()["issue"][0];
    assert_eq!(issue["code"], "not-found", "{}", r.text);
    assert_eq!(
        issue["expression"][0], "Bundle.entry[0].resource.serviceProvider.reference",
        "{}",
        r.text
    );
    assert_eq!(total(&srv, "Encounter").await, 0);
    // One: resolved.
    srv.post("/Organization", ADMIN, &org("A")).await.expect(201);
    let r = srv.post("/", ADMIN, &tx(&enc)).await;
    r.expect(200);
    // Several: refused, nothing written.
    srv.post("/Organization", ADMIN, &org("B")).await.expect(201);
    let r = srv.post("/", ADMIN, &tx(&enc)).await;
    r.expect(412);
    assert_eq!(r.body()["issue"][0]["code"], "multiple-matches", "{}", r.text);
    assert_eq!(total(&srv, "Encounter").await, 1);
    // An unknown search parameter in a conditional reference is an error, not a wider match.
    let mut bad = enc.clone();
    bad["serviceProvider"]["reference"] = json!("Organization?no-such-param=x");
    let r = srv.post("/", ADMIN, &tx(&bad)).await;
    assert_eq!(r.status, 400, "{}", r.text);
}
