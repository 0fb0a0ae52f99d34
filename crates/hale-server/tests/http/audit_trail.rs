//! The audit trail is append-only (writes of AuditEvent are 405, also inside
//! Bundles), and a privacy officer can ask who looked at a patient: by
//! patient, user, date and purpose of use, newest first.

use crate::common::*;
use serde_json::{json, Value};

/// Poll `query` as the privacy officer until an event satisfies `pred`.
async fn wait_for(c: &Client, query: &str, pred: impl Fn(&Value) -> bool) -> Resp {
    for _ in 0..200 {
        let r = c.get(query, PRIVACY).await;
        r.expect(200);
        if r.entries().iter().any(|e| pred(&e["resource"])) {
            return r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no matching AuditEvent for {query} after polling");
}

fn user_of(e: &Value) -> &str {
    e["agent"][0]["who"]["identifier"]["value"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_privacy_officer_finds_who_looked_at_a_patient() {
    let srv = TestServer::start().await;
    let c = &srv.client;
    let pid = c.create_id(CLIN, &any_patient("Looked")).await;
    let today = &hale_fhir::date::format_instant_ms(hale_server::now_ms())[..10];

    // dr.who reads the record, once stating emergency access.
    c.read(CLIN, &format!("/Patient/{pid}")).await;
    c.req("GET", &format!("/Patient/{pid}"))
        .token(CLIN)
        .header("X-Hale-Purpose-Of-Use", "ETREAT")
        .send()
        .await
        .expect(200);

    let q = format!("/AuditEvent?patient=Patient/{pid}&agent=dr.who&date=ge{today}&_sort=-date&_count=100");
    let r = wait_for(c, &q, |e| e["action"] == "R" && e["purposeOfEvent"].is_array()).await;
    let events: Vec<Value> = r.entries().iter().map(|e| e["resource"].clone()).collect();
    assert!(events.iter().all(|e| user_of(e) == "dr.who"), "{events:?}");
    assert!(events.iter().any(|e| e["action"] == "C"), "the create is there too");
    let recorded: Vec<&str> = events.iter().map(|e| e["recorded"].as_str().unwrap()).collect();
    let mut sorted = recorded.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(recorded, sorted, "newest first");

    // By purpose: only the emergency read.
    let r = wait_for(c, &format!("/AuditEvent?patient=Patient/{pid}&purpose=ETREAT"), |e| {
        e["action"] == "R"
    })
    .await;
    let hits = r.entries();
    assert_eq!(hits.len(), 1, "{}", r.text);
    let ev = &hits[0]["resource"];
    assert_eq!(ev["purposeOfEvent"][0]["coding"][0]["code"], "ETREAT");
    assert_eq!(user_of(ev), "dr.who");

    // Someone else, and a date range before today, find nothing.
    let r = c
        .get(&format!("/AuditEvent?patient=Patient/{pid}&agent=clerk.kent"), PRIVACY)
        .await;
    r.expect(200);
    assert!(r.entries().is_empty(), "{}", r.text);
    let r = c
        .get(&format!("/AuditEvent?patient=Patient/{pid}&date=lt2001-01-01"), PRIVACY)
        .await;
    assert!(r.entries().is_empty(), "{}", r.text);

    // A bad purpose is refused, not recorded as something else.
    c.req("GET", &format!("/Patient/{pid}"))
        .token(CLIN)
        .header("X-Hale-Purpose-Of-Use", "not a code")
        .send()
        .await
        .expect(400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_and_privacy_officers_read_the_trail() {
    let srv = TestServer::start().await;
    let c = &srv.client;
    let pid = c.create_id(CLIN, &any_patient("Guarded")).await;
    let obs = json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "Heart rate"},
        "subject": {"reference": format!("Patient/{pid}")},
    });
    c.create_id(CLIN, &obs).await;
    for (method, path, token, status) in [
        ("GET", "/AuditEvent".to_string(), CLIN, 403),
        ("GET", format!("/AuditEvent?patient=Patient/{pid}"), CLIN, 403),
        ("GET", "/AuditEvent".to_string(), CLERK, 403),
        ("GET", "/AuditEvent".to_string(), PRIVACY, 200),
        ("GET", "/AuditEvent".to_string(), ADMIN, 200),
        ("GET", format!("/Patient/{pid}"), PRIVACY, 200),
        ("GET", "/Observation".to_string(), PRIVACY, 403),
        ("GET", format!("/Patient/{pid}/$everything"), PRIVACY, 200),
        ("GET", "/Appointment".to_string(), PRIVACY, 403),
    ] {
        let r = c.req(method, &path).token(token).send().await;
        assert_eq!(r.status, status, "{method} {path} as {token}: {}", r.text);
    }
    // $everything gives a privacy officer the Patient only.
    let r = c.get(&format!("/Patient/{pid}/$everything"), PRIVACY).await;
    assert!(
        r.entries()
            .iter()
            .all(|e| e["resource"]["resourceType"] != "Observation"),
        "{}",
        r.text
    );
    // And no writes at all.
    c.post("/Patient", PRIVACY, &any_patient("Nope")).await.expect(403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_events_cannot_be_changed() {
    let srv = TestServer::start().await;
    let c = &srv.client;
    let pid = c.create_id(CLIN, &any_patient("Fixed")).await;
    let r = wait_for(c, &format!("/AuditEvent?patient=Patient/{pid}"), |e| e["action"] == "C").await;
    let ev = r.entries()[0]["resource"].clone();
    let id = ev["id"].as_str().unwrap().to_string();
    let mut edited = ev.clone();
    edited["outcome"] = json!("0");
    let patch = json!([{"op": "replace", "path": "/outcome", "value": "0"}]);
    for (method, path, body) in [
        ("PUT", format!("/AuditEvent/{id}"), Some(&edited)),
        ("DELETE", format!("/AuditEvent/{id}"), None),
        ("PATCH", format!("/AuditEvent/{id}"), Some(&patch)),
        ("POST", "/AuditEvent".to_string(), Some(&edited)),
        ("PUT", format!("/AuditEvent?patient=Patient/{pid}"), Some(&edited)),
        ("DELETE", format!("/AuditEvent?patient=Patient/{pid}"), None),
    ] {
        for token in [ADMIN, CLIN, PRIVACY] {
            let mut req = c.req(method, &path).token(token);
            if let Some(b) = body {
                req = req.json(b);
            }
            if method == "PATCH" {
                req = req.header("Content-Type", "application/json-patch+json");
            }
            let r = req.send().await;
            assert_eq!(r.status, 405, "{method} {path} as {token}: {}", r.text);
            assert!(r.diagnostics().contains("cannot be changed"), "{}", r.text);
        }
    }
    // Inside a batch the entry fails with 405; a transaction fails whole.
    let entry = json!({"request": {"method": "DELETE", "url": format!("AuditEvent/{id}")}});
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [entry]});
    let r = c.post("/", ADMIN, &batch).await;
    r.expect(200);
    assert!(
        r.entries()[0]["response"]["status"]
            .as_str()
            .unwrap()
            .starts_with("405"),
        "{}",
        r.text
    );
    let put = json!({"request": {"method": "PUT", "url": format!("AuditEvent/{id}")}, "resource": edited});
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [put]});
    c.post("/", ADMIN, &tx).await.expect(405);

    // The record is unchanged, and the attempts are themselves in the trail.
    let got = c.read(ADMIN, &format!("/AuditEvent/{id}")).await;
    assert_eq!(got, ev);
    wait_for(c, "/AuditEvent?outcome=4&agent=po.pat&action=D", |e| {
        e["outcomeDesc"].as_str().unwrap_or("").contains("refused: DELETE")
    })
    .await;
}
