//! FHIR Bulk Data `$export` over HTTP: the async pattern (202 and
//! Content-Location, polling with Retry-After, the manifest), `_type` and
//! `_since` giving exactly the resources expected, patient and group level,
//! who may start and read an export, and cancelling one.

use crate::common::*;
use hale_server::config::{Role, TokenEntry};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const SVC: &str = "t-svc";
const SVC2: &str = "t-svc2";

async fn server() -> TestServer {
    TestServer::start_with(|cfg| {
        for (token, user) in [(SVC, "svc.bulk"), (SVC2, "svc.other")] {
            cfg.auth.tokens.push(TokenEntry {
                token: token.into(),
                user: user.into(),
                role: Role::Service,
                site: None,
                patient: None,
            });
        }
    })
    .await
}

/// Kick off, expecting 202; returns the status path.
async fn kickoff(s: &TestServer, path: &str, token: &str) -> String {
    let r = s
        .req("GET", path)
        .token(token)
        .header("accept", "application/fhir+json")
        .header("prefer", "respond-async")
        .send()
        .await;
    r.expect(202);
    let loc = r.header("content-location").expect("Content-Location").to_string();
    let base = s.base();
    assert!(loc.starts_with(&base), "{loc} is on this server");
    loc[base.len()..].to_string()
}

/// Poll until the manifest comes; every 202 on the way has Retry-After.
async fn manifest(s: &TestServer, status: &str, token: &str) -> Value {
    for _ in 0..600 {
        let r = s.get(status, token).await;
        match r.status {
            200 => {
                assert!(r.header("content-type").unwrap().starts_with("application/json"));
                assert!(r.header("expires").is_some(), "a finished export says when it expires");
                return serde_json::from_str(&r.text).expect("manifest JSON");
            }
            202 => {
                assert!(r.header("retry-after").is_some(), "202 without Retry-After");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("status {other}: {}", r.text),
        }
    }
    panic!("the export did not finish");
}

/// Every file of a manifest, read with `token`: type -> ids.
async fn contents(s: &TestServer, m: &Value, token: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for o in m["output"].as_array().expect("output") {
        let url = o["url"].as_str().unwrap();
        let path = &url[s.base().len()..];
        let r = s.get(path, token).await;
        r.expect(200);
        assert_eq!(r.header("content-type"), Some("application/fhir+ndjson"));
        let lines: Vec<&str> = r.text.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len() as u64, o["count"].as_u64().unwrap(), "count of {url}");
        for l in lines {
            let v: Value = serde_json::from_str(l).expect("one resource per line");
            assert_eq!(v["resourceType"], o["type"], "{url} holds one type");
            out.entry(o["type"].as_str().unwrap().to_string())
                .or_default()
                .insert(v["id"].as_str().unwrap().to_string());
        }
    }
    out
}

async fn export(s: &TestServer, path: &str) -> BTreeMap<String, BTreeSet<String>> {
    let status = kickoff(s, path, SVC).await;
    let m = manifest(s, &status, SVC).await;
    assert_eq!(m["requiresAccessToken"], true);
    assert!(m["request"].as_str().unwrap().ends_with(path), "{m}");
    assert!(m["transactionTime"].as_str().is_some());
    contents(s, &m, SVC).await
}

fn observation(patient: &str) -> Value {
    json!({"resourceType": "Observation", "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
           "subject": {"reference": format!("Patient/{patient}")},
           "valueQuantity": {"value": 72, "unit": "/min"}})
}

fn ids(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn type_and_since_give_exactly_the_expected_resources() {
    let s = server().await;
    let p1 = s.create_id(ADMIN, &any_patient("Early")).await;
    let p2 = s.create_id(ADMIN, &any_patient("Early")).await;
    let o1 = s.create_id(ADMIN, &observation(&p1)).await;
    let pr = s
        .create_id(
            ADMIN,
            &json!({"resourceType": "Practitioner", "name": [{"family": "Grey"}]}),
        )
        .await;
    let last_early = s.read(ADMIN, &format!("/Practitioner/{pr}")).await;
    let since = last_early["meta"]["lastUpdated"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let p3 = s.create_id(ADMIN, &any_patient("Late")).await;
    let o2 = s.create_id(ADMIN, &observation(&p1)).await;
    let mut p1_now = s.read(ADMIN, &format!("/Patient/{p1}")).await;
    p1_now["gender"] = json!("male");
    s.put(&format!("/Patient/{p1}"), ADMIN, &p1_now).await.expect(200);
    // Deleted after the cut: not exported.
    let gone = s.create_id(ADMIN, &any_patient("Gone")).await;
    let r = s.delete(&format!("/Patient/{gone}"), ADMIN).await;
    assert!(matches!(r.status, 200 | 204), "{}", r.text);

    let all = export(&s, "/$export?_type=Patient,Observation,Practitioner").await;
    assert_eq!(all["Patient"], ids(&[&p1, &p2, &p3]));
    assert_eq!(all["Observation"], ids(&[&o1, &o2]));
    assert_eq!(all["Practitioner"], ids(&[&pr]));

    let since_q = form_urlencoded::byte_serialize(since.as_bytes()).collect::<String>();
    let late = export(&s, &format!("/$export?_type=Patient,Observation&_since={since_q}")).await;
    let want: BTreeMap<String, BTreeSet<String>> = [
        ("Observation".to_string(), ids(&[&o2])),
        ("Patient".to_string(), ids(&[&p1, &p3])),
    ]
    .into();
    assert_eq!(late, want, "changed after {since}: only these, and no Practitioner");

    // Without _type: every type the store holds (no audit trail).
    let everything = export(&s, "/$export").await;
    assert_eq!(
        everything.keys().cloned().collect::<Vec<_>>(),
        ["Observation", "Patient", "Practitioner"]
    );
}

#[tokio::test]
async fn patient_and_group_level_export_their_compartments() {
    let s = server().await;
    let p1 = s.create_id(ADMIN, &any_patient("Inside")).await;
    let p2 = s.create_id(ADMIN, &any_patient("Outside")).await;
    let o1 = s.create_id(ADMIN, &observation(&p1)).await;
    let o2 = s.create_id(ADMIN, &observation(&p2)).await;
    let org = s
        .create_id(ADMIN, &json!({"resourceType": "Organization", "name": "Board"}))
        .await;
    let g = s
        .create_id(
            ADMIN,
            &json!({"resourceType": "Group", "type": "person", "actual": true,
                    "member": [{"entity": {"reference": format!("Patient/{p1}")}}]}),
        )
        .await;

    let patients = export(&s, "/Patient/$export").await;
    assert_eq!(patients["Patient"], ids(&[&p1, &p2]));
    assert_eq!(patients["Observation"], ids(&[&o1, &o2]));
    assert!(
        !patients.contains_key("Organization"),
        "{org} is in no patient's compartment"
    );

    let group = export(&s, &format!("/Group/{g}/$export")).await;
    // The Group itself is in its member's compartment (Group.member, as the
    // official CompartmentDefinition has it).
    let want: BTreeMap<String, BTreeSet<String>> = [
        ("Group".to_string(), ids(&[&g])),
        ("Observation".to_string(), ids(&[&o1])),
        ("Patient".to_string(), ids(&[&p1])),
    ]
    .into();
    assert_eq!(group, want, "only the member's record");

    let r = s
        .req("GET", "/Group/nope/$export")
        .token(SVC)
        .header("prefer", "respond-async")
        .send()
        .await;
    r.expect(404);
}

#[tokio::test]
async fn only_authorised_callers_start_or_read_an_export() {
    let s = server().await;
    s.create_id(ADMIN, &any_patient("Private")).await;
    let ask = |token: &'static str| {
        s.req("GET", "/$export")
            .token(token)
            .header("prefer", "respond-async")
            .send()
    };
    ask("").await.expect(401);
    ask("nonsense").await.expect(401);
    let r = ask(CLIN).await;
    r.expect(403);
    assert!(r.diagnostics().contains("service or admin"), "{}", r.text);
    ask(CLERK).await.expect(403);

    let status = kickoff(&s, "/$export?_type=Patient", SVC).await;
    let m = manifest(&s, &status, SVC).await;
    let file = m["output"][0]["url"].as_str().unwrap()[s.base().len()..].to_string();
    // Another service, a clinician, or nobody: neither status nor files.
    for token in [SVC2, CLIN] {
        s.get(&status, token).await.expect(403);
        s.get(&file, token).await.expect(403);
        s.delete(&status, token).await.expect(403);
    }
    s.get(&status, "").await.expect(401);
    s.get(&file, "").await.expect(401);
    // The owner and an administrator may.
    s.get(&file, SVC).await.expect(200);
    s.get(&file, ADMIN).await.expect(200);
    s.get(&status, ADMIN).await.expect(200);
    // A file name that is not in the manifest is not served.
    let other = format!("{}/../../hale.db", &file[..file.rfind('/').unwrap()]);
    assert_ne!(s.get(&other, SVC).await.status, 200);
    s.get(&format!("{}x", file), SVC).await.expect(404);
}

#[tokio::test]
async fn bad_kickoffs_are_refused_saying_what_and_where() {
    let s = server().await;
    let check = |path: &'static str, prefer: bool, status: u16, needle: &'static str| {
        let s = &s;
        async move {
            let mut r = s.req("GET", path).token(SVC);
            if prefer {
                r = r.header("prefer", "respond-async");
            }
            let r = r.send().await;
            r.expect(status);
            assert!(r.diagnostics().contains(needle), "{path}: {}", r.text);
        }
    };
    check("/$export", false, 400, "respond-async").await;
    check("/$export?_type=Patiant", true, 400, "Patiant").await;
    check("/$export?_since=yesterday", true, 400, "_since").await;
    check("/$export?_outputFormat=text/csv", true, 400, "_outputFormat").await;
    check("/$export?_typeFilter=Patient%3Fgender%3Dmale", true, 400, "_typeFilter").await;
    check("/$export?_elements=id", true, 400, "_elements").await;
    check("/$export?colour=blue", true, 400, "colour").await;
    let r = s.req("POST", "/$export").token(SVC).send().await;
    r.expect(405);
    s.get("/$export-status/no-such-job", SVC).await.expect(404);
}

#[tokio::test]
async fn a_cancelled_export_is_gone_with_its_files() {
    let s = server().await;
    for _ in 0..2 {
        s.create_id(ADMIN, &any_patient("Cancel")).await;
    }
    let status = kickoff(&s, "/$export?_type=Patient", SVC).await;
    let m = manifest(&s, &status, SVC).await;
    let file = m["output"][0]["url"].as_str().unwrap()[s.base().len()..].to_string();
    let job = status.rsplit('/').next().unwrap().to_string();
    let job_dir = s.data_dir().join("bulk").join(&job);
    assert!(job_dir.join("Patient-1.ndjson").exists(), "the file is on disk");

    let r = s.delete(&status, SVC).await;
    r.expect(202);
    assert!(!job_dir.exists(), "DELETE removes the job's files");
    s.get(&status, SVC).await.expect(404);
    s.get(&file, SVC).await.expect(404);

    // A job cancelled while it runs removes what it wrote once it stops.
    let status = kickoff(&s, "/$export", SVC).await;
    let job = status.rsplit('/').next().unwrap().to_string();
    s.delete(&status, SVC).await.expect(202);
    s.get(&status, SVC).await.expect(404);
    let job_dir = s.data_dir().join("bulk").join(&job);
    for _ in 0..200 {
        if !job_dir.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(!job_dir.exists(), "a running job cancelled leaves no files");
}
