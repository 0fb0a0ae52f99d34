//! Transaction and batch Bundles.

use crate::common::*;
use serde_json::{json, Value};

fn post_entry(full_url: &str, resource: Value) -> Value {
    let rt = resource["resourceType"].as_str().unwrap().to_string();
    json!({"fullUrl": full_url, "resource": resource, "request": {"method": "POST", "url": rt}})
}

fn bundle(kind: &str, entries: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": kind, "entry": entries})
}

/// `Type/id` from a response entry's location (`.../Type/id/_history/n`).
fn located(entry: &Value) -> (String, String) {
    let loc = entry["response"]["location"]
        .as_str()
        .unwrap_or_else(|| panic!("no location in {entry}"));
    let parts: Vec<&str> = loc.rsplitn(4, '/').collect();
    // [n, "_history", id, ".../Type"]
    assert_eq!(parts[1], "_history", "{loc}");
    let rt = parts[3].rsplit('/').next().unwrap().to_string();
    (rt, parts[2].to_string())
}

/// A transaction creating a Patient, a Slot and an Appointment that refer to each
/// other through urn:uuid fullUrls, in the given entry order.
async fn transaction_with_refs(order: &[usize]) {
    let srv = TestServer::start().await;
    let c = srv.client;
    let sched = make_schedule(&c).await;
    let (s, e) = times(9, 14);
    let p_url = "urn:uuid:6c5bc2a4-1a52-4bbe-9b65-4d6e9ad1a001";
    let s_url = "urn:uuid:6c5bc2a4-1a52-4bbe-9b65-4d6e9ad1a002";
    let a_url = "urn:uuid:6c5bc2a4-1a52-4bbe-9b65-4d6e9ad1a003";
    let mut appt = appointment("x", "x", &s, &e);
    appt["slot"][0]["reference"] = json!(s_url);
    appt["participant"][0]["actor"]["reference"] = json!(p_url);
    // FHIR: within a transaction, an entry refers to another by its fullUrl.
    let all = [
        post_entry(p_url, patient(&nhs(), "Bundled", &["Tx"], "1999-09-09")),
        post_entry(s_url, slot(&sched, &s, &e)),
        post_entry(a_url, appt),
    ];
    let entries: Vec<Value> = order.iter().map(|i| all[*i].clone()).collect();
    let r = c.post("/", CLERK, &bundle("transaction", entries)).await;
    assert_eq!(r.status, 200, "order {order:?}: {}", r.text);
    assert_eq!(r.body()["type"], "transaction-response");
    let out = r.entries();
    assert_eq!(out.len(), 3);
    let mut ids = std::collections::HashMap::new();
    for (k, ent) in out.iter().enumerate() {
        assert_eq!(ent["response"]["status"], "201 Created", "{ent}");
        let (rt, id) = located(ent);
        assert_eq!(ent["resource"]["id"], id.as_str());
        ids.insert(order[k], (rt, id));
    }
    let (pt, pid) = &ids[&0];
    let (st, sid) = &ids[&1];
    let (at, aid) = &ids[&2];
    assert_eq!(
        (pt.as_str(), st.as_str(), at.as_str()),
        ("Patient", "Slot", "Appointment")
    );
    // References rewritten to the real ids.
    let a = c.read(CLERK, &format!("/Appointment/{aid}")).await;
    assert_eq!(a["participant"][0]["actor"]["reference"], format!("Patient/{pid}"));
    assert_eq!(a["slot"][0]["reference"], format!("Slot/{sid}"));
    assert!(
        !a.to_string().contains("urn:uuid"),
        "a urn:uuid reference survived: {a}"
    );
    // The slot is booked by it.
    assert_eq!(c.read(CLERK, &format!("/Slot/{sid}")).await["status"], "busy");
    let found = c
        .search(CLERK, &format!("/Appointment?patient={pid}"))
        .await
        .match_ids();
    assert_eq!(found, vec![aid.clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_resolves_urn_uuid_references() {
    transaction_with_refs(&[0, 1, 2]).await;
}

/// FHIR: references between entries of a transaction resolve whatever the entry order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_resolves_references_in_any_entry_order() {
    transaction_with_refs(&[2, 0, 1]).await;
}

/// Isolates the urn:uuid Slot reference (the Patient exists already): the
/// Appointment comes before the Slot it books.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_books_a_slot_created_later_in_the_bundle() {
    let srv = TestServer::start().await;
    let c = srv.client;
    let sched = make_schedule(&c).await;
    let pid = c.create_id(CLERK, &any_patient("Existing")).await;
    let (s, e) = times(12, 9);
    let s_url = "urn:uuid:3a3a3a3a-3a3a-4a3a-8a3a-3a3a3a3a3a3a";
    let mut appt = appointment(&pid, "x", &s, &e);
    appt["slot"][0]["reference"] = json!(s_url);
    for (name, entries) in [
        (
            "slot first",
            vec![
                post_entry(s_url, slot(&sched, &s, &e)),
                post_entry("urn:uuid:3a3a3a3a-3a3a-4a3a-8a3a-3a3a3a3a3a3b", appt.clone()),
            ],
        ),
        (
            "appointment first",
            vec![
                post_entry("urn:uuid:3a3a3a3a-3a3a-4a3a-8a3a-3a3a3a3a3a3b", appt.clone()),
                post_entry(s_url, slot(&sched, &s, &e)),
            ],
        ),
    ] {
        let r = c.post("/", CLERK, &bundle("transaction", entries)).await;
        assert_eq!(r.status, 200, "{name}: {}", r.text);
        // Free the patient's slot again for the next variant: cancel the appointment.
        let out = r.entries();
        let appt_entry = out
            .iter()
            .find(|x| x["resource"]["resourceType"] == "Appointment")
            .expect("appointment entry");
        let stored = appt_entry["resource"].clone();
        assert!(
            stored["slot"][0]["reference"]
                .as_str()
                .is_some_and(|r| r.starts_with("Slot/")),
            "{name}: {stored}"
        );
        let id = stored["id"].as_str().unwrap().to_string();
        c.put(
            &format!("/Appointment/{id}"),
            CLERK,
            &cancelled(stored, Some("provider")),
        )
        .await
        .expect(200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_transaction_stores_nothing() {
    let srv = TestServer::start().await;
    let c = srv.client;
    let sched = make_schedule(&c).await;
    let (busy_slot, s, e) = make_slot(&c, &sched, 10, 9).await;
    let holder = c.create_id(CLERK, &any_patient("Holder")).await;
    c.create_id(CLERK, &appointment(&holder, &busy_slot, &s, &e)).await;

    let p_url = "urn:uuid:0f4e7d1c-0000-4000-8000-000000000001";
    let (s2, e2) = times(11, 9);
    let s_url = "urn:uuid:0f4e7d1c-0000-4000-8000-000000000002";
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "last entry refers to a missing resource",
            {
                let mut gp = patient(&nhs(), "Second", &["Tx"], "1980-01-01");
                gp["generalPractitioner"] = json!([{"reference": "Practitioner/ghost"}]);
                json!([
                    post_entry(p_url, patient(&nhs(), "First", &["Tx"], "1980-01-01")),
                    post_entry(s_url, slot(&sched, &s2, &e2)),
                    post_entry("urn:uuid:0f4e7d1c-0000-4000-8000-000000000003", gp),
                ])
            },
            422,
            "Bundle.entry[2]",
        ),
        (
            "last entry double-books",
            {
                let appt = appointment(&holder, &busy_slot, &s, &e);
                json!([
                    post_entry(p_url, patient(&nhs(), "Third", &["Tx"], "1980-01-01")),
                    post_entry(s_url, slot(&sched, &s2, &e2)),
                    post_entry("urn:uuid:0f4e7d1c-0000-4000-8000-000000000004", appt),
                ])
            },
            409,
            "Bundle.entry[2]",
        ),
        (
            "last entry invalid",
            {
                let mut bad = any_patient("Invalid");
                bad["birthDate"] = json!("not-a-date");
                json!([
                    post_entry(p_url, patient(&nhs(), "Fourth", &["Tx"], "1980-01-01")),
                    post_entry(s_url, slot(&sched, &s2, &e2)),
                    post_entry("urn:uuid:0f4e7d1c-0000-4000-8000-000000000005", bad),
                ])
            },
            400,
            "Bundle.entry[2]",
        ),
        (
            "two patients with one NHS number",
            {
                let n = nhs();
                json!([
                    post_entry(p_url, patient(&n, "Fifth", &["Tx"], "1980-01-01")),
                    post_entry(s_url, patient(&n, "Sixth", &["Tx"], "1980-01-01")),
                ])
            },
            409,
            "Bundle.entry[1]",
        ),
    ];
    for (name, entries, status, at) in cases {
        let before = srv.snapshot();
        let patients = srv.live_count("Patient");
        let slots = srv.live_count("Slot");
        let b = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
        let r = c.post("/", CLERK, &b).await;
        assert_eq!(r.status, status, "{name}: {}", r.text);
        r.outcome_at(at);
        assert_eq!(
            srv.live_count("Patient"),
            patients,
            "{name}: a Patient from the failed bundle was stored"
        );
        assert_eq!(
            srv.live_count("Slot"),
            slots,
            "{name}: a Slot from the failed bundle was stored"
        );
        assert_eq!(
            srv.snapshot(),
            before,
            "{name}: the failed transaction changed the store"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_reports_each_entry() {
    let srv = TestServer::start().await;
    let c = srv.client;
    let existing = c.create_id(CLERK, &any_patient("Existing")).await;
    let mut bad = any_patient("Bad");
    bad["gender"] = json!("dragon");
    let mut dangling = any_patient("Dangling");
    dangling["generalPractitioner"] = json!([{"reference": "Practitioner/ghost"}]);
    let b = bundle(
        "batch",
        vec![
            post_entry("urn:uuid:11111111-1111-4111-8111-111111111111", any_patient("Good1")),
            post_entry("urn:uuid:11111111-1111-4111-8111-111111111112", bad),
            post_entry("urn:uuid:11111111-1111-4111-8111-111111111113", any_patient("Good2")),
            post_entry("urn:uuid:11111111-1111-4111-8111-111111111114", dangling),
            json!({"request": {"method": "GET", "url": format!("Patient/{existing}")}}),
            json!({"request": {"method": "GET", "url": "Patient/nope"}}),
        ],
    );
    let before_count = srv.live_count("Patient");
    let r = c.post("/", CLERK, &b).await;
    r.expect(200);
    assert_eq!(r.body()["type"], "batch-response");
    let out = r.entries();
    assert_eq!(out.len(), 6, "{}", r.text);
    let status = |i: usize| out[i]["response"]["status"].as_str().unwrap_or("").to_string();
    assert_eq!(status(0), "201 Created");
    assert!(status(1).starts_with("400"), "{}", status(1));
    assert_eq!(status(2), "201 Created");
    assert!(status(3).starts_with("422"), "{}", status(3));
    assert!(status(4).starts_with("200"), "{}", status(4));
    assert!(status(5).starts_with("404"), "{}", status(5));
    for i in [1, 3, 5] {
        let oo = &out[i]["response"]["outcome"];
        assert_eq!(oo["resourceType"], "OperationOutcome", "entry {i}: {}", out[i]);
        assert!(oo["issue"][0]["diagnostics"].as_str().is_some_and(|d| !d.is_empty()));
    }
    assert_eq!(out[4]["resource"]["id"], existing.as_str());
    let exprs = out[1]["response"]["outcome"].to_string();
    assert!(exprs.contains("Bundle.entry[1]"), "entry expression: {exprs}");
    assert_eq!(srv.live_count("Patient"), before_count + 2);
    for i in [0, 2] {
        let (rt, id) = located(&out[i]);
        assert_eq!(rt, "Patient");
        c.read(CLERK, &format!("/Patient/{id}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_update_and_delete_entries() {
    let srv = TestServer::start().await;
    let c = srv.client;
    let keep = c.create(CLERK, &any_patient("Keep")).await;
    let gone = c.create_id(CLERK, &any_patient("Gone")).await;
    let keep_id = keep["id"].as_str().unwrap().to_string();
    let mut upd = keep.clone();
    upd["gender"] = json!("other");
    let b = bundle(
        "transaction",
        vec![
            json!({"resource": upd, "request": {"method": "PUT", "url": format!("Patient/{keep_id}"), "ifMatch": "W/\"1\""}}),
            json!({"request": {"method": "DELETE", "url": format!("Patient/{gone}")}}),
        ],
    );
    let r = c.post("/", CLERK, &b).await;
    r.expect(200);
    let out = r.entries();
    assert_eq!(out[0]["response"]["status"], "200 OK");
    assert_eq!(out[1]["response"]["status"], "204 No Content");
    assert_eq!(c.read(CLERK, &format!("/Patient/{keep_id}")).await["gender"], "other");
    c.get(&format!("/Patient/{gone}"), CLERK).await.expect(410);

    // A stale ifMatch fails the whole transaction.
    let before = srv.snapshot();
    let b = bundle(
        "transaction",
        vec![
            post_entry("urn:uuid:22222222-2222-4222-8222-222222222222", any_patient("New")),
            json!({"resource": keep, "request": {"method": "PUT", "url": format!("Patient/{keep_id}"), "ifMatch": "W/\"1\""}}),
        ],
    );
    let r = c.post("/", CLERK, &b).await;
    r.expect(412);
    r.outcome_at("Bundle.entry[1]");
    assert_eq!(srv.snapshot(), before);
}

/// A conditional create (ifNoneExist) that matches an existing resource: other
/// entries that refer to its fullUrl must end up pointing at the existing one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_conditional_create_rewrites_references_to_the_match() {
    let srv = TestServer::start().await;
    let c = srv.client;
    let n = nhs();
    let existing = c.create_id(CLIN, &patient(&n, "Known", &["K"], "1950-05-05")).await;
    let p_url = "urn:uuid:44444444-4444-4444-8444-444444444444";
    let obs = json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "Weight"},
        "subject": {"reference": p_url},
    });
    let b = bundle(
        "transaction",
        vec![
            json!({
                "fullUrl": p_url,
                "resource": patient(&n, "Known", &["K"], "1950-05-05"),
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": format!("identifier={NHS_SYSTEM}|{n}")},
            }),
            post_entry("urn:uuid:44444444-4444-4444-8444-444444444445", obs),
        ],
    );
    let r = c.post("/", CLIN, &b).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let out = r.entries();
    assert_eq!(out[0]["response"]["status"], "200 OK");
    assert_eq!(out[0]["resource"]["id"], existing.as_str());
    assert_eq!(
        out[1]["resource"]["subject"]["reference"],
        format!("Patient/{existing}")
    );
    assert_eq!(srv.live_count("Patient"), 1);
}
