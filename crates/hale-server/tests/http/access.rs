//! Patient-level access: the legitimate relationship (LR), the `patient/`
//! context, and break-glass (BTG). A BOLA matrix drives every path a
//! resource can leave the server by, for principals that must not see
//! patient B, and the same paths for principals that may.

use crate::common::*;
use hale_server::config::{Config, Role, TokenEntry};
use serde_json::{json, Value};

/// Clinician at QEH: LR with A (booked at QEH), none with B.
const QEH: &str = "t-dr-qeh";
/// Clinician at SRI: LR with B (booked at SRI).
const SRI: &str = "t-dr-sri";
/// Clinician with no site, on B's care team.
const TEAM: &str = "t-dr-team";
/// A `patient/` context token for patient A.
const PAT_A: &str = "t-pat-a";
const EXT_SITE: &str = "https://hale.health/fhir/StructureDefinition/site";
const USER_SYSTEM: &str = "https://hale.health/fhir/Id/user";

fn token(token: &str, user: &str, role: Role, site: Option<&str>, patient: Option<&str>) -> TokenEntry {
    TokenEntry {
        token: token.into(),
        user: user.into(),
        role,
        site: site.map(str::to_string),
        patient: patient.map(str::to_string),
    }
}

fn with_access(cfg: &mut Config) {
    cfg.access.legitimate_relationship = true;
    cfg.auth.tokens.extend([
        token(QEH, "dr.qeh", Role::Clinician, Some("QEH"), None),
        token(SRI, "dr.sri", Role::Clinician, Some("SRI"), None),
        token(TEAM, "dr.team", Role::Clinician, None, None),
        token(PAT_A, "pat.a", Role::Clinician, None, Some("pat-a")),
    ]);
}

fn obs(id: &str, patient: &str) -> Value {
    json!({"resourceType": "Observation", "id": id, "status": "final",
        "code": {"text": "heart rate"}, "subject": {"reference": format!("Patient/{patient}")},
        "valueQuantity": {"value": 72, "unit": "/min"}})
}

/// Start of an hour `days` from now, as a FHIR instant.
fn hour_from_now(days: i64, plus_minutes: i64) -> String {
    let t = chrono::Utc::now() + chrono::Duration::days(days);
    let t = t.date_naive().and_hms_opt(10, 0, 0).expect("10:00") + chrono::Duration::minutes(plus_minutes);
    t.format("%Y-%m-%dT%H:%M:00Z").to_string()
}

async fn put(s: &TestServer, path: &str, body: &Value) {
    let r = s.put(path, ADMIN, body).await;
    assert!(
        r.status == 200 || r.status == 201,
        "PUT {path}: {} {}",
        r.status,
        r.body()
    );
}

/// Two sites, patients A (booked at QEH in 2 days) and B (booked at SRI,
/// care team with dr.team), an Observation each, one of A's derived from B's.
async fn board(s: &TestServer) {
    for (id, site) in [("loc-qeh", "QEH"), ("loc-sri", "SRI")] {
        put(
            s,
            &format!("/Location/{id}"),
            &json!({"resourceType": "Location", "id": id, "status": "active", "name": id,
                "extension": [{"url": EXT_SITE, "valueCode": site}]}),
        )
        .await;
    }
    for (id, family) in [("pat-a", "Alpha"), ("pat-b", "Bravo")] {
        let mut p = patient(&nhs(), family, &["Test"], "1970-01-01");
        p["id"] = json!(id);
        put(s, &format!("/Patient/{id}"), &p).await;
    }
    for (pid, loc) in [("pat-a", "loc-qeh"), ("pat-b", "loc-sri")] {
        let sched = s.create_id(ADMIN, &schedule(loc)).await;
        let (start, end) = (hour_from_now(2, 0), hour_from_now(2, 30));
        let slot_id = s.create_id(ADMIN, &slot(&sched, &start, &end)).await;
        let mut a = appointment(pid, &slot_id, &start, &end);
        a["participant"]
            .as_array_mut()
            .expect("participants")
            .push(json!({"actor": {"reference": format!("Location/{loc}")}, "status": "accepted"}));
        s.create(ADMIN, &a).await;
    }
    put(
        s,
        "/CareTeam/team-b",
        &json!({"resourceType": "CareTeam", "id": "team-b", "status": "active",
            "subject": {"reference": "Patient/pat-b"},
            "participant": [{"member": {"identifier": {"system": USER_SYSTEM, "value": "dr.team"}, "display": "Dr Team"}}]}),
    )
    .await;
    put(s, "/Observation/obs-a", &obs("obs-a", "pat-a")).await;
    put(s, "/Observation/obs-b", &obs("obs-b", "pat-b")).await;
    let mut derived = obs("obs-a2", "pat-a");
    derived["derivedFrom"] = json!([{"reference": "Observation/obs-b"}]);
    put(s, "/Observation/obs-a2", &derived).await;
}

/// Every request a principal could use to reach B's record, and whether it
/// is refused outright (403/404) or answered without B's clinical data.
fn vectors_on_b() -> Vec<(&'static str, &'static str, Option<Value>, Expect)> {
    use Expect::*;
    vec![
        ("GET", "/Observation/obs-b", None, Refused),
        ("GET", "/Observation/obs-b/_history/1", None, Refused),
        ("GET", "/Observation/obs-b/_history", None, Refused),
        ("GET", "/Observation?subject=Patient/pat-b", None, Refused),
        ("GET", "/Observation?patient=pat-b", None, Refused),
        ("GET", "/Observation", None, WithoutB),
        ("GET", "/Observation/_history", None, WithoutB),
        ("GET", "/Observation?subject:Patient.family=bravo", None, WithoutB),
        (
            "GET",
            "/Observation?_id=obs-a2&_include=Observation:derived-from",
            None,
            WithoutB,
        ),
        (
            "GET",
            "/Patient?_has:Observation:subject:code:text=heart",
            None,
            WithoutB,
        ),
        ("GET", "/Patient/pat-b/Observation", None, Refused),
        ("GET", "/Patient/pat-b/$everything", None, Refused),
        (
            "POST",
            "/",
            Some(json!({"resourceType": "Bundle", "type": "batch", "entry": [
                {"request": {"method": "GET", "url": "Observation/obs-b"}},
                {"request": {"method": "GET", "url": "Observation?subject=Patient/pat-b"}}]})),
            WithoutB,
        ),
        ("POST", "/Observation", Some(obs("x", "pat-b")), Refused),
        ("PUT", "/Observation/obs-b", Some(obs("obs-b", "pat-b")), Refused),
        (
            "PUT",
            "/Observation/obs-new-b",
            Some(obs("obs-new-b", "pat-b")),
            Refused,
        ),
        ("DELETE", "/Observation/obs-b", None, Refused),
        ("GET", "/Patient/$export", None, Refused),
    ]
}

/// The issues of a searchset's outcome entry.
fn outcome_issues(bundle: &Value) -> Vec<Value> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == "outcome")
        .flat_map(|e| e["resource"]["issue"].as_array().cloned().unwrap_or_default())
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Refused,
    WithoutB,
}

/// Any resource in the body that belongs to patient B's clinical record.
fn shows_b(body: &Value) -> bool {
    let text = body.to_string();
    text.contains("\"id\":\"obs-b\"") || text.contains("Observation/obs-b\",\"resource")
}

async fn send(s: &TestServer, tok: &str, method: &str, path: &str, body: Option<&Value>) -> Resp {
    let mut r = s.req(method, path).token(tok);
    if let Some(b) = body {
        r = r.json(b);
    }
    r.send().await
}

#[tokio::test]
async fn bola_matrix_unrelated_clinician_and_patient_context_never_see_b() {
    let mut s = TestServer::start_with(with_access).await;
    board(&s).await;
    let obs_before = s.live_count("Observation");
    for tok in [QEH, PAT_A] {
        for (method, path, body, expect) in vectors_on_b() {
            let r = send(&s, tok, method, path, body.as_ref()).await;
            let what = format!("{tok} {method} {path}: {} {}", r.status, r.body());
            match expect {
                Expect::Refused => assert!(r.status == 403 || r.status == 404, "refused: {what}"),
                Expect::WithoutB => {
                    assert!(r.status == 200 || r.status == 403, "{what}");
                    assert!(!shows_b(r.body()), "B's data shown: {what}");
                }
            }
        }
    }
    // The batch entry reading B is itself a 403.
    let r = send(&s, QEH, "POST", "/", vectors_on_b()[12].2.as_ref()).await;
    r.expect(200);
    assert!(r.body()["entry"][0]["response"]["status"]
        .as_str()
        .is_some_and(|st| st.starts_with("403")));
    // A transaction with one entry for B is refused whole and writes nothing.
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "POST", "url": "Observation"}, "resource": obs("t1", "pat-a")},
        {"request": {"method": "POST", "url": "Observation"}, "resource": obs("t2", "pat-b")}]});
    let r = send(&s, QEH, "POST", "/", Some(&tx)).await;
    assert_eq!(r.status, 403, "{}", r.body());
    // Moving A's Observation to B is a write on B's record.
    let r = send(&s, QEH, "PUT", "/Observation/obs-a", Some(&obs("obs-a", "pat-b"))).await;
    assert_eq!(r.status, 403, "{}", r.body());
    assert_eq!(s.live_count("Observation"), obs_before, "nothing was written");
    // A conditional create for A whose If-None-Exist matches B's resource
    // would answer with B's: refused.
    for tok in [QEH, PAT_A] {
        let r = s
            .req("POST", "/Observation")
            .token(tok)
            .header("if-none-exist", "_id=obs-b")
            .json(&obs("x", "pat-a"))
            .send()
            .await;
        assert_eq!(r.status, 403, "{tok}: {}", r.body());
        assert!(!shows_b(r.body()));
        let tx = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "POST", "url": "Observation", "ifNoneExist": "_id=obs-b"}, "resource": obs("y", "pat-a")}]});
        let r = send(&s, tok, "POST", "/", Some(&tx)).await;
        assert!(!shows_b(r.body()), "{tok}: {}", r.body());
    }
    // The patient-context token sees nothing outside A: B's Patient, Practitioners.
    for path in ["/Patient/pat-b", "/Patient?_id=pat-b", "/Location/loc-qeh"] {
        let r = s.get(path, PAT_A).await;
        assert!(r.status == 403 || r.status == 404, "{path}: {}", r.status);
    }
    s.stop().await;
}

#[tokio::test]
async fn clinicians_with_a_relationship_and_patient_context_see_their_patient() {
    let mut s = TestServer::start_with(with_access).await;
    board(&s).await;
    // A booked at QEH: dr.qeh and A's own token read A's record on every path.
    for tok in [QEH, PAT_A] {
        for path in [
            "/Observation/obs-a",
            "/Observation/obs-a/_history/1",
            "/Observation/obs-a/_history",
            "/Observation?subject=Patient/pat-a",
            "/Patient/pat-a/Observation",
            "/Patient/pat-a/$everything",
            "/Patient/pat-a",
        ] {
            let r = s.get(path, tok).await;
            assert_eq!(r.status, 200, "{tok} {path}: {}", r.body());
            assert!(!shows_b(r.body()), "{tok} {path}: B's data shown");
        }
        let r = s.get("/Patient/pat-a/$everything", tok).await;
        assert!(r.body().to_string().contains("\"id\":\"obs-a\""));
        let r = s.get("/Observation", tok).await;
        let ids = r.match_ids();
        assert!(
            ids.contains(&"obs-a".to_string()) && !ids.contains(&"obs-b".to_string()),
            "{ids:?}"
        );
    }
    // dr.qeh's Bundle says something was withheld, and how to break the
    // glass (A's token searches A's compartment only, so nothing is withheld).
    let r = s.get("/Observation", QEH).await;
    let oo = outcome_issues(r.body());
    assert!(
        oo.iter()
            .any(|i| i["code"] == "suppressed" && i["details"]["coding"][0]["code"] == "BTG"),
        "{oo:?}"
    );
    // A write for A by dr.qeh is allowed.
    s.create(
        QEH,
        &json!({"resourceType": "Observation", "status": "final", "code": {"text": "bp"},
        "subject": {"reference": "Patient/pat-a"}}),
    )
    .await;
    // B booked at SRI: dr.sri reads B; dr.team reads B as a care team member.
    for tok in [SRI, TEAM] {
        for path in [
            "/Observation/obs-b",
            "/Patient/pat-b/$everything",
            "/Observation?patient=pat-b",
        ] {
            let r = s.get(path, tok).await;
            assert_eq!(r.status, 200, "{tok} {path}: {}", r.body());
        }
    }
    // Demographics stay open to clinicians for finding patients.
    s.get("/Patient/pat-b", QEH).await.expect(200);
    s.get("/Patient?family=bravo", QEH).await.expect(200);
    s.stop().await;
}

#[tokio::test]
async fn clerks_never_receive_clinical_resources() {
    let mut s = TestServer::start_with(with_access).await;
    board(&s).await;
    for path in [
        "/Patient/pat-a/$everything",
        "/Patient?_id=pat-a&_revinclude=Observation:subject",
        "/Patient?_id=pat-a&_revinclude=*",
        "/Appointment?patient=pat-a&_include=*&_revinclude=*",
        "/Observation?_id=obs-a2&_include=Observation:derived-from",
    ] {
        let r = s.get(path, CLERK).await;
        let text = r.body().to_string();
        assert!(
            !text.contains("\"resourceType\":\"Observation\"") && !text.contains("\"resourceType\":\"CareTeam\""),
            "{path}: {} {text}",
            r.status
        );
    }
    s.stop().await;
}

/// Audit rows of one patient as AuditEvents (admin), waiting for the
/// read-audit batches to land.
async fn audit_until(s: &TestServer, query: &str, want: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = s.search(ADMIN, &format!("/AuditEvent?{query}&_count=200")).await;
        let events: Vec<Value> = r
            .entries()
            .into_iter()
            .filter(|e| e["resource"]["resourceType"] == "AuditEvent")
            .map(|e| e["resource"].clone())
            .collect();
        if want(&events) || std::time::Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn reason(r: &str) -> Value {
    json!({"resourceType": "Parameters", "parameter": [{"name": "reason", "valueString": r}]})
}

#[tokio::test]
async fn break_glass_opens_one_patient_audits_every_access_and_only_a_privacy_officer_closes_it() {
    let mut s = TestServer::start_with(with_access).await;
    board(&s).await;
    // Without it: 403 with the break-glass hint.
    let r = s.get("/Observation/obs-b", QEH).await;
    assert_eq!(r.status, 403);
    let issue = &r.body()["issue"][0];
    assert_eq!(issue["code"], "suppressed");
    assert_eq!(issue["details"]["coding"][0]["code"], "BTG");
    assert!(issue["diagnostics"].as_str().unwrap().contains("$break-glass"));
    // The CapabilityStatement lists the operation on Patient, so a client can find it.
    let meta = s.get("/metadata", QEH).await;
    let cs = meta.body();
    let patient_cs = cs["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Patient")
        .unwrap()
        .clone();
    assert!(
        patient_cs["operation"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["name"] == "break-glass"),
        "{}",
        patient_cs["operation"]
    );
    // A reason under 10 characters, a clerk, a patient token, an unknown patient.
    s.post("/Patient/pat-b/$break-glass", QEH, &reason("urgent"))
        .await
        .expect(400);
    s.post("/Patient/pat-b/$break-glass", CLERK, &reason("need to see the record"))
        .await
        .expect(403);
    s.post("/Patient/pat-b/$break-glass", PAT_A, &reason("need to see the record"))
        .await
        .expect(403);
    s.post("/Patient/nobody/$break-glass", QEH, &reason("need to see the record"))
        .await
        .expect(404);
    // Break the glass for B.
    let why = "unconscious in ED, no history available";
    let r = s.post("/Patient/pat-b/$break-glass", QEH, &reason(why)).await;
    r.expect(200);
    assert_eq!(r.body()["resourceType"], "Parameters");
    s.get("/Observation/obs-b", QEH).await.expect(200);
    let r = s.get("/Patient/pat-b/$everything", QEH).await;
    r.expect(200);
    assert!(shows_b(r.body()));
    s.get("/Observation?patient=pat-b", QEH).await.expect(200);
    // It covers one patient and one user.
    s.get("/Observation/obs-b", TEAM).await.expect(200); // care team, not BTG
    let other = {
        let mut p = patient(&nhs(), "Charlie", &["Test"], "1970-01-01");
        p["id"] = json!("pat-c");
        put(&s, "/Patient/pat-c", &p).await;
        put(&s, "/Observation/obs-c", &obs("obs-c", "pat-c")).await;
        s.get("/Observation/obs-c", QEH).await
    };
    assert_eq!(other.status, 403, "break-glass covers one patient only");
    // The audit: one start event (DCM 110113/110127), each access with BTG and the reason.
    let events = audit_until(&s, "patient=Patient/pat-b&purpose=BTG", |ev| ev.len() >= 4).await;
    let start: Vec<&Value> = events.iter().filter(|e| e["subtype"][0]["code"] == "110127").collect();
    assert_eq!(start.len(), 1, "{events:?}");
    assert_eq!(start[0]["type"]["code"], "110113");
    assert!(start[0]["outcomeDesc"].as_str().unwrap().contains(why));
    let accesses: Vec<&Value> = events.iter().filter(|e| e["subtype"][0]["code"] != "110127").collect();
    assert!(accesses.len() >= 3, "{events:?}");
    for a in &accesses {
        assert_eq!(a["purposeOfEvent"][0]["coding"][0]["code"], "BTG");
        assert!(a["outcomeDesc"].as_str().unwrap().contains(why), "{a}");
        assert_eq!(a["agent"][0]["who"]["identifier"]["value"], "dr.qeh");
    }
    // The review list: privacy officer only.
    for tok in [ADMIN, QEH, CLERK] {
        s.get("/AuditEvent/$break-glass", tok).await.expect(403);
    }
    let r = s.get("/AuditEvent/$break-glass", PRIVACY).await;
    r.expect(200);
    let episodes: Vec<Value> = r
        .entries()
        .into_iter()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| e["resource"].clone())
        .collect();
    assert_eq!(episodes.len(), 1, "{}", r.body());
    let ep = &episodes[0];
    let ext = |url: &str| {
        ep["extension"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["url"].as_str().unwrap().ends_with(url))
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(ext("break-glass-review-status")["valueCode"], "open");
    assert!(ext("break-glass-accesses")["valueUnsignedInt"].as_u64().unwrap() >= 3);
    let seen = r.ids("include", Some("AuditEvent"));
    assert!(seen.len() >= 3, "what was seen: {seen:?}");
    let id = ep["id"].as_str().unwrap().to_string();
    // Closing: others 403, the privacy officer 200, then it is closed.
    let close = format!("/AuditEvent/{id}/$break-glass-close");
    let note = json!({"resourceType": "Parameters", "parameter": [{"name": "note", "valueString": "justified: ED attendance confirmed"}]});
    for tok in [ADMIN, QEH, CLERK, SRI] {
        s.post(&close, tok, &note).await.expect(403);
    }
    let r = s.post(&close, PRIVACY, &note).await;
    r.expect(200);
    assert!(
        r.body().to_string().contains("\"valueCode\":\"closed\""),
        "{}",
        r.body()
    );
    s.post(&close, PRIVACY, &note).await.expect(409);
    s.post("/AuditEvent/1/$break-glass-close", PRIVACY, &note)
        .await
        .expect(404);
    let open = s.get("/AuditEvent/$break-glass?status=open", PRIVACY).await;
    assert!(open.match_ids().is_empty(), "{}", open.body());
    let closed = s.get("/AuditEvent/$break-glass?status=closed", PRIVACY).await;
    assert_eq!(closed.match_ids(), vec![id.clone()]);
    // Closing the review does not end the episode early; its end does.
    s.get("/Observation/obs-b", QEH).await.expect(200);
    s.stop().await;
}

#[tokio::test]
async fn break_glass_expires() {
    // An episode of the shortest length, seen from its end: the store's
    // rule, with the clock passed in.
    let mut s = TestServer::start_with(with_access).await;
    board(&s).await;
    s.post(
        "/Patient/pat-b/$break-glass",
        QEH,
        &reason("need the record for a transfer"),
    )
    .await
    .expect(200);
    audit_until(&s, "patient=Patient/pat-b&purpose=BTG", |ev| !ev.is_empty()).await;
    let conn = ro_conn(s.data_dir());
    let now = chrono::Utc::now().timestamp_millis();
    let window = 72 * 3_600_000;
    let running = hale_store::audit::break_glass_active(&conn, "dr.qeh", "pat-b", now, window).unwrap();
    let e = running.expect("running now");
    assert_eq!(e.until_ms - e.time_ms, 4 * 3_600_000, "four hours by default");
    assert!(
        hale_store::audit::break_glass_active(&conn, "dr.qeh", "pat-b", e.until_ms, window)
            .unwrap()
            .is_none()
    );
    assert!(
        hale_store::audit::break_glass_active(&conn, "dr.sri", "pat-b", now, window)
            .unwrap()
            .is_none()
    );
    drop(conn);
    s.stop().await;
}

#[tokio::test]
async fn off_switch_and_open_roles() {
    // With the switch off, a site-less clinician reads anyone (the old rule).
    let mut s = TestServer::start_with(|cfg| {
        with_access(cfg);
        cfg.access.legitimate_relationship = false;
    })
    .await;
    board(&s).await;
    s.get("/Observation/obs-b", QEH).await.expect(200);
    // The patient context holds whatever the switch says.
    s.get("/Observation/obs-b", PAT_A).await.expect(403);
    s.stop().await;
    // Admin reads everything with the switch on (audited as usual).
    let mut s = TestServer::start_with(with_access).await;
    board(&s).await;
    s.get("/Observation/obs-b", ADMIN).await.expect(200);
    s.get("/Patient/pat-b/$everything", ADMIN).await.expect(200);
    s.stop().await;
}
