//! Create, read, update, vread, history, delete, conditional create, update-as-create.

use crate::common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_lifecycle() {
    let srv = TestServer::start().await;
    let n = nhs();
    let body = patient(&n, "Lovelace", &["Ada"], "1815-12-10");

    // Create.
    let r = srv.post("/Patient", CLIN, &body).await;
    r.expect(201);
    let id = r.id();
    let created = r.body().clone();
    let b = r.body();
    assert_eq!(b["resourceType"], "Patient");
    assert_eq!(b["meta"]["versionId"], "1");
    assert!(
        b["meta"]["lastUpdated"].as_str().is_some_and(|s| s.ends_with('Z')),
        "lastUpdated: {}",
        r.text
    );
    assert_eq!(b["name"][0]["family"], "Lovelace");
    let loc = r.header("location").expect("Location header").to_string();
    assert_eq!(loc, format!("{}/Patient/{id}/_history/1", srv.base()), "Location");
    assert_eq!(r.header("etag"), Some("W/\"1\""));
    assert!(r.header("last-modified").is_some(), "Last-Modified missing");

    // Read.
    let r = srv.get(&format!("/Patient/{id}"), CLIN).await;
    r.expect(200);
    assert_eq!(r.header("etag"), Some("W/\"1\""));
    assert!(r.header("last-modified").is_some());
    assert_eq!(r.body()["id"], id.as_str());
    assert_eq!(r.body()["meta"]["versionId"], "1");
    assert_eq!(r.body()["identifier"][0]["value"], n.as_str());
    let v1 = r.body().clone();
    assert_eq!(v1, created, "a read must return exactly what the create returned");

    // Update with the right If-Match.
    let mut upd = v1.clone();
    upd["name"][0]["given"] = json!(["Augusta", "Ada"]);
    let r = srv
        .req("PUT", &format!("/Patient/{id}"))
        .token(CLIN)
        .header("If-Match", "W/\"1\"")
        .json(&upd)
        .send()
        .await;
    r.expect(200);
    assert_eq!(r.header("etag"), Some("W/\"2\""));
    assert_eq!(r.body()["meta"]["versionId"], "2");
    assert_eq!(r.body()["name"][0]["given"][0], "Augusta");

    // Update with a stale If-Match: 412 and nothing changes.
    let before = srv.snapshot();
    let r = srv
        .req("PUT", &format!("/Patient/{id}"))
        .token(CLIN)
        .header("If-Match", "W/\"1\"")
        .json(&upd)
        .send()
        .await;
    r.expect(412);
    r.outcome();
    assert_eq!(srv.snapshot(), before, "a 412 update changed the store");

    // vread both versions.
    let r = srv.get(&format!("/Patient/{id}/_history/1"), CLIN).await;
    r.expect(200);
    assert_eq!(r.body()["meta"]["versionId"], "1");
    assert_eq!(r.body()["name"][0]["given"], json!(["Ada"]));
    assert_eq!(r.header("etag"), Some("W/\"1\""));
    let r = srv.get(&format!("/Patient/{id}/_history/2"), CLIN).await;
    r.expect(200);
    assert_eq!(r.body()["meta"]["versionId"], "2");
    assert_eq!(r.body()["name"][0]["given"][0], "Augusta");
    srv.get(&format!("/Patient/{id}/_history/3"), CLIN)
        .await
        .expect(404)
        .outcome();
    srv.get(&format!("/Patient/{id}/_history/x"), CLIN)
        .await
        .expect(400)
        .outcome();

    // Instance history: newest first.
    let r = srv.get(&format!("/Patient/{id}/_history"), CLIN).await;
    r.expect(200);
    assert_eq!(r.body()["type"], "history");
    let e = r.entries();
    assert_eq!(e.len(), 2, "{}", r.text);
    assert_eq!(e[0]["resource"]["meta"]["versionId"], "2");
    assert_eq!(e[1]["resource"]["meta"]["versionId"], "1");
    assert_eq!(e[0]["request"]["method"], "PUT");
    assert_eq!(e[1]["request"]["method"], "POST");
    assert_eq!(e[1]["response"]["status"], "201 Created");
    assert_eq!(r.body()["total"], 2);

    // Another patient, then type history covers both.
    let other = srv.create_id(CLIN, &any_patient("Babbage")).await;
    let r = srv.get("/Patient/_history", CLIN).await;
    r.expect(200);
    assert_eq!(r.body()["type"], "history");
    let e = r.entries();
    assert_eq!(e.len(), 3, "{}", r.text);
    assert_eq!(e[0]["resource"]["id"], other.as_str(), "type history newest first");
    let ids: Vec<&str> = e.iter().filter_map(|x| x["resource"]["id"].as_str()).collect();
    assert_eq!(ids.iter().filter(|x| **x == id).count(), 2);

    // Delete, then read is 410 Gone.
    let r = srv.delete(&format!("/Patient/{id}"), CLIN).await;
    r.expect(204);
    assert!(r.text.is_empty());
    let r = srv.get(&format!("/Patient/{id}"), CLIN).await;
    r.expect(410);
    r.outcome();
    assert_eq!(r.header("etag"), Some("W/\"3\""));
    // History shows the deletion, newest first.
    let r = srv.get(&format!("/Patient/{id}/_history"), CLIN).await;
    r.expect(200);
    let e = r.entries();
    assert_eq!(e.len(), 3, "{}", r.text);
    assert_eq!(e[0]["request"]["method"], "DELETE");
    assert!(e[0].get("resource").is_none());
    // The deleted version cannot be vread.
    srv.get(&format!("/Patient/{id}/_history/3"), CLIN)
        .await
        .expect(410)
        .outcome();
    // Unknown id.
    srv.get("/Patient/does-not-exist", CLIN).await.expect(404).outcome();
    // Deleting again is still 204 (idempotent).
    srv.delete(&format!("/Patient/{id}"), CLIN).await.expect(204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_create_returns_existing() {
    let srv = TestServer::start().await;
    let n = nhs();
    let first = srv.create(CLIN, &patient(&n, "Hopper", &["Grace"], "1906-12-09")).await;
    let id = first["id"].as_str().unwrap().to_string();
    let before = srv.snapshot();
    let count = srv.live_count("Patient");

    let cond = format!("identifier={NHS_SYSTEM}|{n}");
    let r = srv
        .req("POST", "/Patient")
        .token(CLIN)
        .header("If-None-Exist", &cond)
        .json(&patient(&n, "Hopper", &["Grace", "Brewster"], "1906-12-09"))
        .send()
        .await;
    r.expect(200);
    assert_eq!(r.id(), id, "conditional create must return the existing resource");
    assert_eq!(r.body()["meta"]["versionId"], "1");
    assert_eq!(
        r.body()["name"][0]["given"],
        json!(["Grace"]),
        "existing resource must be returned unchanged"
    );
    assert_eq!(srv.live_count("Patient"), count, "no new Patient may be created");
    assert_eq!(srv.snapshot(), before, "conditional create that matched must not write");

    // A non-matching condition creates.
    let n2 = nhs();
    let r = srv
        .req("POST", "/Patient")
        .token(CLIN)
        .header("If-None-Exist", &format!("identifier={NHS_SYSTEM}|{n2}"))
        .json(&patient(&n2, "Hopper", &["Other"], "1950-01-01"))
        .send()
        .await;
    r.expect(201);
    assert_ne!(r.id(), id);
    assert_eq!(srv.live_count("Patient"), count + 1);

    // A bad condition is a 400.
    let r = srv
        .req("POST", "/Patient")
        .token(CLIN)
        .header("If-None-Exist", "nonsense-param=1")
        .json(&any_patient("X"))
        .send()
        .await;
    r.expect(400);
    r.outcome();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_as_create_with_client_id() {
    let srv = TestServer::start().await;
    let mut p = any_patient("Turing");
    p["id"] = json!("client-chosen-1");
    let r = srv.put("/Patient/client-chosen-1", CLIN, &p).await;
    r.expect(201);
    assert_eq!(r.id(), "client-chosen-1");
    assert_eq!(r.body()["meta"]["versionId"], "1");
    assert_eq!(r.header("etag"), Some("W/\"1\""));
    assert_eq!(
        r.header("location").map(str::to_string),
        Some(format!("{}/Patient/client-chosen-1/_history/1", srv.base()))
    );
    // And a second PUT updates it.
    let r = srv.put("/Patient/client-chosen-1", CLIN, &p).await;
    r.expect(200);
    assert_eq!(r.body()["meta"]["versionId"], "2");
    let got = srv.read(CLIN, "/Patient/client-chosen-1").await;
    assert_eq!(got["meta"]["versionId"], "2");
    // An invalid id is refused.
    let mut bad = any_patient("Turing");
    bad["id"] = json!("bad_id!");
    srv.put("/Patient/bad_id!", CLIN, &bad).await.expect(400).outcome();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_return_minimal_and_outcome() {
    let srv = TestServer::start().await;
    let r = srv
        .req("POST", "/Patient")
        .token(CLIN)
        .header("Prefer", "return=minimal")
        .json(&any_patient("Min"))
        .send()
        .await;
    r.expect(201);
    assert!(r.text.is_empty(), "return=minimal must have no body: {}", r.text);
    assert!(r.header("location").is_some());
    let r = srv
        .req("POST", "/Patient")
        .token(CLIN)
        .header("Prefer", "return=OperationOutcome")
        .json(&any_patient("Oo"))
        .send()
        .await;
    r.expect(201);
    r.outcome();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_if_match_updates_have_one_winner() {
    let srv = TestServer::start().await;
    let c = srv.client;
    let p = c.create(CLIN, &any_patient("Racing")).await;
    let id = p["id"].as_str().unwrap().to_string();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let mut body = p.clone();
        body["name"][0]["given"] = json!([format!("Writer{i}")]);
        let path = format!("/Patient/{id}");
        tasks.push(tokio::spawn(async move {
            c.req("PUT", &path)
                .token(CLIN)
                .header("If-Match", "W/\"1\"")
                .json(&body)
                .send()
                .await
        }));
    }
    let mut statuses = Vec::new();
    let mut winner = None;
    for t in tasks {
        let r = t.await.unwrap();
        statuses.push(r.status);
        if r.status == 200 {
            winner = Some(r.body()["name"][0]["given"][0].clone());
        } else {
            r.outcome();
        }
    }
    statuses.sort();
    assert_eq!(statuses, vec![200, 412, 412, 412, 412, 412, 412, 412]);
    let now = c.read(CLIN, &format!("/Patient/{id}")).await;
    assert_eq!(now["meta"]["versionId"], "2");
    assert_eq!(Some(now["name"][0]["given"][0].clone()), winner);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_conditional_creates_make_one_resource() {
    let srv = TestServer::start().await;
    let c = srv.client;
    let n = nhs();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let body = patient(&n, "Once", &["Only"], "1990-01-01");
        let cond = format!("identifier={NHS_SYSTEM}|{n}");
        tasks.push(tokio::spawn(async move {
            c.req("POST", "/Patient")
                .token(CLIN)
                .header("If-None-Exist", &cond)
                .json(&body)
                .send()
                .await
        }));
    }
    let mut created = 0;
    let mut ids = std::collections::BTreeSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            201 => created += 1,
            200 => {}
            s => panic!("conditional create answered {s}: {}", r.text),
        }
        ids.insert(r.id());
    }
    assert_eq!(created, 1);
    assert_eq!(ids.len(), 1, "all answers must name the same Patient");
    assert_eq!(srv.live_count("Patient"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_assigns_id_and_meta_on_create() {
    let srv = TestServer::start().await;
    let mut p = any_patient("Mine");
    p["id"] = json!("mine");
    p["meta"] = json!({"versionId": "7", "lastUpdated": "2001-01-01T00:00:00Z"});
    let r = srv
        .req("POST", "/Patient")
        .token(CLIN)
        .header("content-type", "application/json")
        .json(&p)
        .send()
        .await;
    r.expect(201);
    assert_ne!(r.id(), "mine", "the server must assign the id on create");
    assert_eq!(r.body()["meta"]["versionId"], "1");
    assert_ne!(r.body()["meta"]["lastUpdated"], "2001-01-01T00:00:00Z");
    srv.get("/Patient/mine", CLIN).await.expect(404);
}
