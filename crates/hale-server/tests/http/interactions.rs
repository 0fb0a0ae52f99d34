//! Conditional update and delete, JSON Patch, $validate, 405 and 406, and
//! decimals kept exactly as sent.

use crate::common::*;
use serde_json::json;

const LOCAL: &str = "https://hospital.example/mrn";

fn with_mrn(family: &str, mrn: &str) -> serde_json::Value {
    let mut p = any_patient(family);
    p["identifier"] = json!([{"system": LOCAL, "value": mrn}]);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_update_and_delete() {
    let srv = TestServer::start().await;
    let q = format!("/Patient?identifier={LOCAL}|M1");

    // No match: created, with a server id.
    let r = srv.put(&q, CLERK, &with_mrn("First", "M1")).await;
    r.expect(201);
    let id = r.id();
    // One match: that one is updated.
    let r = srv.put(&q, CLERK, &with_mrn("Second", "M1")).await;
    r.expect(200);
    assert_eq!(r.id(), id);
    assert_eq!(r.body()["meta"]["versionId"], "2");
    assert_eq!(r.body()["name"][0]["family"], "Second");
    // The body may not name another resource.
    let mut other = with_mrn("Third", "M1");
    other["id"] = json!("someone-else");
    srv.put(&q, CLERK, &other).await.expect(400).outcome_at("Patient.id");
    // Several matches: 412, nothing written.
    srv.create(CLERK, &with_mrn("Twin", "M2")).await;
    srv.create(CLERK, &with_mrn("Twin", "M2")).await;
    let before = srv.snapshot();
    srv.put(
        &format!("/Patient?identifier={LOCAL}|M2"),
        CLERK,
        &with_mrn("Who", "M2"),
    )
    .await
    .expect(412)
    .outcome();
    // An unknown parameter would widen the match: 400, even without Prefer: handling=strict.
    srv.put("/Patient?colour=blue", CLERK, &with_mrn("X", "M9"))
        .await
        .expect(400)
        .outcome();
    assert_eq!(srv.snapshot(), before);

    // Conditional delete.
    srv.delete(&format!("/Patient?identifier={LOCAL}|M2"), ADMIN)
        .await
        .expect(412)
        .outcome();
    srv.delete(&q, ADMIN).await.expect(204);
    srv.get(&format!("/Patient/{id}"), CLERK).await.expect(410);
    srv.delete(&q, ADMIN).await.expect(204);
    // Without a search, PUT and DELETE on the type are not allowed.
    srv.req("DELETE", "/Patient")
        .token(ADMIN)
        .send()
        .await
        .expect(405)
        .outcome();
    srv.put("/Patient", CLERK, &with_mrn("Y", "M3"))
        .await
        .expect(405)
        .outcome();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_patch() {
    let srv = TestServer::start().await;
    let id = srv.create_id(CLERK, &with_mrn("Patchy", "P1")).await;
    let path = format!("/Patient/{id}");
    let patch = |ops: serde_json::Value| {
        srv.req("PATCH", &path)
            .token(CLERK)
            .header("content-type", "application/json-patch+json")
            .raw(serde_json::to_vec(&ops).unwrap())
    };
    let r = patch(json!([
        {"op": "replace", "path": "/name/0/family", "value": "Patched"},
        {"op": "add", "path": "/birthDate", "value": "1970-01-02"}
    ]))
    .send()
    .await;
    r.expect(200);
    assert_eq!(r.body()["name"][0]["family"], "Patched");
    assert_eq!(r.body()["birthDate"], "1970-01-02");
    assert_eq!(r.body()["meta"]["versionId"], "2");
    // The result must still be a valid Patient.
    let before = srv.snapshot();
    patch(json!([{"op": "replace", "path": "/gender", "value": "sometimes"}]))
        .send()
        .await
        .expect(400)
        .outcome_at("Patient.gender");
    // A failed test or a bad path changes nothing.
    patch(json!([{"op": "test", "path": "/birthDate", "value": "1999-01-01"}]))
        .send()
        .await
        .expect(422)
        .outcome();
    patch(json!([{"op": "replace", "path": "/id", "value": "other"}]))
        .send()
        .await
        .expect(422)
        .outcome();
    // If-Match on an old version.
    patch(json!([{"op": "remove", "path": "/birthDate"}]))
        .header("if-match", "W/\"1\"")
        .send()
        .await
        .expect(412)
        .outcome();
    // A merge patch or FHIRPath Patch is not taken.
    srv.req("PATCH", &path)
        .token(CLERK)
        .json(&json!({"gender": "male"}))
        .send()
        .await
        .expect(415)
        .outcome();
    assert_eq!(srv.snapshot(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_operation_writes_nothing() {
    let srv = TestServer::start().await;
    let before = srv.snapshot();
    let r = srv.post("/Patient/$validate", CLERK, &any_patient("Valid")).await;
    r.expect(200);
    assert_eq!(r.body()["issue"][0]["severity"], "information");
    let mut bad = any_patient("Invalid");
    bad["gender"] = json!("sometimes");
    bad["birthDate"] = json!("1970-13-01");
    let r = srv.post("/Patient/$validate", CLERK, &bad).await;
    r.expect(200);
    let errors: Vec<&str> = r.body()["issue"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["severity"] == "error")
        .map(|i| i["expression"][0].as_str().unwrap())
        .collect();
    assert!(
        errors.contains(&"Patient.gender") && errors.contains(&"Patient.birthDate"),
        "{}",
        r.text
    );
    // In a Parameters, as the operation defines it.
    let params = json!({"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": bad}]});
    let r = srv.post("/Patient/$validate", CLERK, &params).await;
    r.expect(200);
    assert!(r.text.contains("Patient.gender"), "{}", r.text);
    assert_eq!(srv.snapshot(), before);
    srv.get("/Patient/$validate", CLERK).await.expect(405).outcome();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_methods_and_xml_are_refused_clearly() {
    let srv = TestServer::start().await;
    let id = srv.create_id(CLERK, &any_patient("Method")).await;
    srv.post(&format!("/Patient/{id}"), CLERK, &any_patient("x"))
        .await
        .expect(405)
        .outcome();
    srv.put(&format!("/Patient/{id}/_history"), CLERK, &any_patient("x"))
        .await
        .expect(405)
        .outcome();
    srv.req("DELETE", &format!("/Patient/{id}/_history/1"))
        .token(ADMIN)
        .send()
        .await
        .expect(405)
        .outcome();
    // An unknown path is still 404.
    srv.get(&format!("/Patient/{id}/colour"), CLERK)
        .await
        .expect(404)
        .outcome();
    for accept in ["application/fhir+xml", "application/xml", "text/xml"] {
        srv.req("GET", &format!("/Patient/{id}"))
            .token(CLERK)
            .header("accept", accept)
            .send()
            .await
            .expect(406)
            .outcome();
    }
    srv.get(&format!("/Patient/{id}?_format=xml"), CLERK)
        .await
        .expect(406)
        .outcome();
    // JSON, or anything, is fine.
    for accept in [
        "application/fhir+json",
        "application/fhir+xml, application/fhir+json;q=0.9",
        "*/*",
    ] {
        srv.req("GET", &format!("/Patient/{id}"))
            .token(CLERK)
            .header("accept", accept)
            .send()
            .await
            .expect(200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decimals_read_back_exactly_as_sent() {
    let srv = TestServer::start().await;
    let p = srv.create_id(CLIN, &any_patient("Decimal")).await;
    let body = format!(
        r#"{{"resourceType":"Observation","status":"final","code":{{"text":"weight"}},
            "subject":{{"reference":"Patient/{p}"}},
            "valueQuantity":{{"value":1.50,"unit":"kg"}},
            "component":[{{"code":{{"text":"x"}},"valueQuantity":{{"value":42.256500}}}}]}}"#
    );
    let r = srv
        .req("POST", "/Observation")
        .token(CLIN)
        .header("content-type", "application/fhir+json")
        .raw(body.into_bytes())
        .send()
        .await;
    r.expect(201);
    let id = r.id();
    let read = srv.get(&format!("/Observation/{id}"), CLIN).await;
    read.expect(200);
    assert!(read.text.contains("\"value\":1.50"), "{}", read.text);
    assert!(read.text.contains("\"value\":42.256500"), "{}", read.text);
    // And they are searchable as numbers.
    let s = srv.search(CLIN, "/Observation?value-quantity=1.5").await;
    assert_eq!(s.match_ids(), vec![id.clone()]);
    let s = srv.search(CLIN, "/Observation?value-quantity=gt2").await;
    assert!(s.match_ids().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summary_elements_total_and_the_self_link() {
    let srv = TestServer::start().await;
    let mut p = any_patient("Summary");
    p["maritalStatus"] = json!({"text": "Married"});
    p["text"] = json!({"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Summary</div>"});
    let id = srv.create_id(CLERK, &p).await;
    srv.create_id(CLERK, &any_patient("Other")).await;

    // _summary=true: the summary elements of the official Patient definition, tagged.
    let r = srv.search(CLERK, &format!("/Patient?_id={id}&_summary=true")).await;
    let got = &r.body()["entry"][0]["resource"];
    assert!(
        got["name"].is_array() && got.get("maritalStatus").is_none() && got.get("text").is_none(),
        "{got}"
    );
    assert!(got["meta"]["tag"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["code"] == "SUBSETTED"));
    // _elements on a read.
    let r = srv.get(&format!("/Patient/{id}?_elements=maritalStatus"), CLERK).await;
    r.expect(200);
    let b = r.body();
    assert_eq!(b["maritalStatus"]["text"], "Married");
    assert!(b.get("name").is_none() && b.get("birthDate").is_none(), "{b}");
    // _summary=count: the number alone.
    let r = srv.search(CLERK, "/Patient?_summary=count").await;
    assert_eq!(r.body()["total"], 2);
    assert!(r.body().get("entry").is_none());
    // _total=accurate on a page that is not the last; none leaves it out.
    let r = srv.search(CLERK, "/Patient?_count=1&_total=accurate").await;
    assert_eq!(r.body()["total"], 2);
    let r = srv.search(CLERK, "/Patient?_total=none").await;
    assert!(r.body().get("total").is_none());
    // The self link lists what was applied, not what was ignored.
    let r = srv.search(CLERK, "/Patient?family=summ&colour=blue").await;
    let self_link = r.body()["link"][0]["url"].as_str().unwrap();
    assert!(
        self_link.contains("family=summ") && !self_link.contains("colour"),
        "{self_link}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_inside_a_batch() {
    let srv = TestServer::start().await;
    let id = srv.create_id(CLERK, &with_mrn("Batchley", "B1")).await;
    let batch = json!({
        "resourceType": "Bundle", "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": format!("Patient?identifier={LOCAL}|B1")}},
            {"request": {"method": "GET", "url": "Patient?family:fuzzy=x"}},
            {"request": {"method": "GET", "url": format!("Patient/{id}")}}
        ]
    });
    let r = srv.post("/", CLERK, &batch).await;
    r.expect(200);
    let e = r.entries();
    assert_eq!(e[0]["response"]["status"], "200 OK", "{}", r.text);
    assert_eq!(e[0]["resource"]["type"], "searchset");
    assert_eq!(e[0]["resource"]["entry"][0]["resource"]["id"], id.as_str());
    assert!(
        e[1]["response"]["status"].as_str().unwrap().starts_with("400"),
        "{}",
        r.text
    );
    assert_eq!(e[2]["resource"]["id"], id.as_str());
}
