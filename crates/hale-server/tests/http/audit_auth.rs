//! Authentication, role checks, the CapabilityStatement and the audit trail.

use crate::common::*;
use hale_server::config::{Role, TokenEntry};
use serde_json::Value;
use std::collections::BTreeSet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_and_roles() {
    let srv = TestServer::start().await;
    let pid = srv.create_id(CLIN, &any_patient("Auth")).await;

    // (method, path, token, status)
    let cases: Vec<(&str, String, &str, u16)> = vec![
        ("GET", format!("/Patient/{pid}"), "", 401),
        ("GET", "/Patient".into(), "", 401),
        ("GET", format!("/Patient/{pid}"), "not-a-token", 401),
        ("GET", "/Observation".into(), "", 401),
        ("GET", "/Observation".into(), CLERK, 403),
        ("GET", "/Observation/abc".into(), CLERK, 403),
        ("GET", "/Encounter".into(), CLERK, 403),
        ("GET", "/DocumentReference".into(), CLERK, 403),
        ("GET", "/AuditEvent".into(), CLERK, 403),
        ("GET", "/AuditEvent".into(), CLIN, 403),
        ("GET", format!("/AuditEvent?patient={pid}"), CLIN, 403),
        ("GET", "/Observation".into(), CLIN, 200),
        ("GET", format!("/Patient/{pid}"), CLERK, 200),
        ("GET", format!("/Patient/{pid}"), CLIN, 200),
        ("GET", "/Patient".into(), CLERK, 200),
        ("GET", "/AuditEvent".into(), ADMIN, 200),
        ("GET", "/Appointment".into(), CLERK, 200),
    ];
    for (method, path, token, status) in &cases {
        let r = srv.req(method, path).token(token).send().await;
        assert_eq!(r.status, *status, "{method} {path} as {token:?}: {}", r.text);
        if *status >= 400 {
            r.outcome();
        }
        if *status == 401 {
            assert!(
                r.header("www-authenticate").is_some_and(|h| h.starts_with("Bearer")),
                "401 without WWW-Authenticate"
            );
        }
    }
    // Malformed Authorization header.
    let r = srv
        .req("GET", "/Patient")
        .header("Authorization", "Basic dXNlcjpwYXNz")
        .send()
        .await;
    r.expect(401);
    r.outcome();
    // A clerk may not write clinical data either.
    let obs = serde_json::json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "Heart rate"},
        "subject": {"reference": format!("Patient/{pid}")},
    });
    let before = srv.snapshot();
    srv.post("/Observation", CLERK, &obs).await.expect(403).outcome();
    assert_eq!(srv.snapshot(), before);
    srv.post("/Observation", CLIN, &obs).await.expect(201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capability_statement_lists_types_and_search_params() {
    let srv = TestServer::start().await;
    let r = srv.get("/metadata", "").await;
    r.expect(200);
    let cs = r.body();
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(cs["fhirVersion"], "4.0.1");
    let resources = cs["rest"][0]["resource"].as_array().expect("rest[0].resource");
    let types: Vec<&str> = resources.iter().map(|x| x["type"].as_str().unwrap()).collect();
    let got: BTreeSet<&str> = types.iter().copied().collect();
    let all = all_types();
    let want: BTreeSet<&str> = all.iter().map(String::as_str).collect();
    assert_eq!(types.len(), 145, "{types:?}");
    assert_eq!(got, want);
    let params = |t: &str| -> BTreeSet<String> {
        let r = resources.iter().find(|x| x["type"] == t).unwrap();
        r["searchParam"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["name"].as_str().map(str::to_string))
            .collect()
    };
    for t in &all {
        assert!(params(t).contains("_id"), "{t} lacks _id");
    }
    let expect: &[(&str, &[&str])] = &[
        (
            "Patient",
            &["identifier", "name", "family", "given", "birthdate", "phone"],
        ),
        (
            "Appointment",
            &["patient", "date", "status", "slot", "service-category", "service-type"],
        ),
        ("Slot", &["schedule", "status", "start"]),
        ("AuditEvent", &["patient", "agent", "action", "date"]),
    ];
    for (t, names) in expect {
        let have = params(t);
        for n in *names {
            assert!(have.contains(*n), "{t} lacks search parameter {n}: {have:?}");
        }
    }
    // Every declared parameter really is accepted by a strict search, with a
    // value of its declared type.
    for t in [
        "Patient",
        "Appointment",
        "Slot",
        "Observation",
        "MedicationRequest",
        "Condition",
        "AuditEvent",
    ] {
        let r = resources.iter().find(|x| x["type"] == t).unwrap();
        for p in r["searchParam"].as_array().unwrap() {
            let name = p["name"].as_str().unwrap();
            let value = match p["type"].as_str().unwrap() {
                "date" => "2020-01-01",
                "reference" => "x1",
                "number" | "quantity" => "ge1",
                "composite" if name.ends_with("date") => "x$2020",
                "composite" if name.ends_with("quantity") => "x$ge1",
                "composite" => "x$x",
                "uri" => "http://example.org/x",
                _ => "x",
            };
            let r = srv
                .req("GET", &format!("/{t}?{name}={value}"))
                .token(ADMIN)
                .header("Prefer", "handling=strict")
                .send()
                .await;
            assert_eq!(r.status, 200, "{t}?{name}={value}: declared but refused: {}", r.text);
        }
    }
}

/// AuditEvents about `patient` recorded so far (as admin).
async fn audit_events(c: &Client, patient: &str) -> Vec<Value> {
    let r = c
        .get(&format!("/AuditEvent?patient={patient}&_count=1000"), ADMIN)
        .await;
    r.expect(200);
    r.entries()
        .into_iter()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| e["resource"].clone())
        .collect()
}

/// Poll the AuditEvent search `query` (as admin) for up to ~5 s until an event matches.
async fn wait_audit(c: &Client, query: &str, pred: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..100 {
        let r = c.get(query, ADMIN).await;
        r.expect(200);
        if let Some(e) = r
            .entries()
            .into_iter()
            .map(|e| e["resource"].clone())
            .find(|e| e["resourceType"] == "AuditEvent" && pred(e))
        {
            return e;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no matching AuditEvent for {query} after polling");
}

fn by(e: &Value, user: &str, action: &str) -> bool {
    e["action"] == action
        && e["agent"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["who"]["identifier"]["value"] == user)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_writes_are_audited() {
    let srv = TestServer::start().await;
    let c = srv.client;
    let pid = c.create_id(CLIN, &any_patient("Audited")).await;
    let other = c.create_id(CLERK, &any_patient("Other")).await;

    // The create was audited as dr.who, action C.
    let events = audit_events(&c, &pid).await;
    assert!(
        events.iter().any(|e| by(e, "dr.who", "C")),
        "no create audit for Patient/{pid}: {events:?}"
    );

    // A read by dr.who shows up (the audit queue flushes asynchronously).
    c.read(CLIN, &format!("/Patient/{pid}")).await;
    let q = format!("/AuditEvent?patient={pid}&_count=1000");
    let ev = wait_audit(&c, &q, |e| by(e, "dr.who", "R")).await;
    assert_eq!(ev["resourceType"], "AuditEvent");
    assert!(ev["entity"].to_string().contains(&format!("Patient/{pid}")), "{ev}");
    // Read AuditEvent by id as admin.
    let id = ev["id"].as_str().unwrap();
    let got = c.read(ADMIN, &format!("/AuditEvent/{id}")).await;
    assert_eq!(got["id"], id);

    // Filter by agent and action too.
    let r = c.search(ADMIN, &format!("/AuditEvent?patient={pid}&action=R")).await;
    assert!(r
        .entries()
        .iter()
        .all(|e| e["search"]["mode"] != "match" || e["resource"]["action"] == "R"));

    // An update is audited with U; a search by the clerk with E naming the patient.
    let mut p = c.read(CLIN, &format!("/Patient/{pid}")).await;
    p["gender"] = serde_json::json!("male");
    c.put(&format!("/Patient/{pid}"), CLIN, &p).await.expect(200);
    c.search(CLERK, &format!("/Patient?_id={pid}")).await;
    wait_audit(&c, &q, |e| by(e, "dr.who", "U")).await;
    wait_audit(&c, &q, |e| by(e, "clerk.kent", "E")).await;

    // Events for the other patient are not mixed in.
    let events = audit_events(&c, &pid).await;
    assert!(
        events
            .iter()
            .all(|e| !e["entity"].to_string().contains(&format!("Patient/{other}"))),
        "events of another patient returned"
    );

    // The clinician may not search the audit trail, and the refusal is itself audited.
    c.get(&format!("/AuditEvent?patient={pid}"), CLIN).await.expect(403);
    wait_audit(&c, "/AuditEvent?outcome=4&_count=1000", |e| by(e, "dr.who", "E")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_is_drained_on_shutdown() {
    let mut srv = TestServer::start().await;
    let pid = srv.create_id(CLIN, &any_patient("Drained")).await;
    for _ in 0..25 {
        srv.read(CLIN, &format!("/Patient/{pid}")).await;
    }
    srv.stop().await;
    let conn = ro_conn(srv.data_dir());
    let reads: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM audit WHERE action = 'R' AND patient = ?1 AND user = 'dr.who'",
            [&pid],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(reads, 25, "every read must be audited by the time shutdown completes");
}

/// Every way of getting a patient's data out of the server leaves an audit row
/// naming the user and the patient. Each access runs as its own user so the
/// rows can be told apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_path_is_audited() {
    let accesses: &[&str] = &[
        "read",
        "vread",
        "history-instance",
        "history-type",
        "search",
        "search-post",
        "search-include",
        "everything",
        "batch-get",
        "conditional-create-match",
    ];
    let mut srv = TestServer::start_with(|cfg| {
        for (i, _) in accesses.iter().enumerate() {
            cfg.auth.tokens.push(TokenEntry {
                token: format!("t-u{i}"),
                user: format!("user{i}"),
                role: Role::Clinician,
                site: None,
                patient: None,
            });
        }
    })
    .await;
    let c = srv.client;
    let n = nhs();
    let pid = c.create_id(ADMIN, &patient(&n, "Watched", &["W"], "1944-04-04")).await;
    let sched = make_schedule(&c).await;
    let (slot_id, s, e) = make_slot(&c, &sched, 2, 9).await;
    c.create_id(ADMIN, &appointment(&pid, &slot_id, &s, &e)).await;

    for (i, access) in accesses.iter().enumerate() {
        let token = format!("t-u{i}");
        let t = token.as_str();
        let r = match *access {
            "read" => c.get(&format!("/Patient/{pid}"), t).await,
            "vread" => c.get(&format!("/Patient/{pid}/_history/1"), t).await,
            "history-instance" => c.get(&format!("/Patient/{pid}/_history"), t).await,
            "history-type" => c.get("/Patient/_history", t).await,
            "search" => c.get(&format!("/Patient?_id={pid}"), t).await,
            "search-post" => {
                c.req("POST", "/Patient/_search")
                    .token(t)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .raw(format!("_id={pid}"))
                    .send()
                    .await
            }
            "search-include" => {
                c.get(&format!("/Appointment?patient={pid}&_include=Appointment:patient"), t)
                    .await
            }
            "everything" => c.get(&format!("/Patient/{pid}/$everything"), t).await,
            "batch-get" => {
                let b = serde_json::json!({"resourceType": "Bundle", "type": "batch", "entry": [
                    {"request": {"method": "GET", "url": format!("Patient/{pid}")}}
                ]});
                c.post("/", t, &b).await
            }
            "conditional-create-match" => {
                c.req("POST", "/Patient")
                    .token(t)
                    .header("If-None-Exist", &format!("identifier={NHS_SYSTEM}|{n}"))
                    .json(&patient(&n, "Watched", &["W"], "1944-04-04"))
                    .send()
                    .await
            }
            other => unreachable!("{other}"),
        };
        assert_eq!(r.status, 200, "{access}: {}", r.text);
        assert!(
            r.text.contains(&pid),
            "{access}: the response does not carry the patient's data"
        );
    }
    srv.stop().await;
    let conn = ro_conn(srv.data_dir());
    let mut missing = Vec::new();
    for (i, access) in accesses.iter().enumerate() {
        let n: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM audit WHERE user = ?1 AND patient = ?2 AND outcome = 0",
                [format!("user{i}"), pid.clone()],
                |r| r.get(0),
            )
            .unwrap();
        if n == 0 {
            missing.push(*access);
        }
    }
    assert!(
        missing.is_empty(),
        "patient data was served without an audit row naming the patient via: {missing:?}"
    );
}
