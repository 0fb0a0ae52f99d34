//! Replaying the command log reproduces the store byte for byte.

use crate::common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_log_reproduces_the_store() {
    let mut srv = TestServer::start().await;
    let c = srv.client;
    let sched = make_schedule(&c).await;
    let mut patients = Vec::new();
    for i in 0..6 {
        patients.push(c.create_id(CLIN, &any_patient(&format!("Replay{i}"))).await);
    }
    // Updates, including one with If-Match and one refused (stale).
    let mut p0 = c.read(CLIN, &format!("/Patient/{}", patients[0])).await;
    p0["gender"] = json!("male");
    c.req("PUT", &format!("/Patient/{}", patients[0]))
        .token(CLIN)
        .header("If-Match", "W/\"1\"")
        .json(&p0)
        .send()
        .await
        .expect(200);
    c.req("PUT", &format!("/Patient/{}", patients[0]))
        .token(CLIN)
        .header("If-Match", "W/\"1\"")
        .json(&p0)
        .send()
        .await
        .expect(412);
    // Update-as-create and a delete.
    let mut fixed = any_patient("Fixed");
    fixed["id"] = json!("replay-fixed");
    c.put("/Patient/replay-fixed", CLIN, &fixed).await.expect(201);
    c.delete(&format!("/Patient/{}", patients[5]), CLIN).await.expect(204);
    // Bookings, a concurrent race with refusals, a cancellation and a rebooking.
    let mut slots = Vec::new();
    for day in 1..=3 {
        slots.push(make_slot(&c, &sched, day, 8).await);
    }
    let (s0, st0, en0) = slots[0].clone();
    let mut tasks = Vec::new();
    for pid in patients.iter().take(4) {
        let body = appointment(pid, &s0, &st0, &en0);
        tasks.push(tokio::spawn(async move { c.post("/Appointment", CLERK, &body).await }));
    }
    let mut winner = None;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            201 => winner = Some(r.body().clone()),
            409 => {}
            s => panic!("unexpected booking status {s}: {}", r.text),
        }
    }
    let winner = winner.expect("one booking wins");
    let wid = winner["id"].as_str().unwrap().to_string();
    c.put(
        &format!("/Appointment/{wid}"),
        CLERK,
        &cancelled(winner, Some("provider")),
    )
    .await
    .expect(200);
    c.post("/Appointment", CLERK, &appointment(&patients[4], &s0, &st0, &en0))
        .await
        .expect(201);
    let (s1, st1, en1) = slots[1].clone();
    let a1 = c.create(CLERK, &appointment(&patients[1], &s1, &st1, &en1)).await;
    let mut f = a1.clone();
    f["status"] = json!("fulfilled");
    c.put(&format!("/Appointment/{}", a1["id"].as_str().unwrap()), CLIN, &f)
        .await
        .expect(200);
    c.put(&format!("/Appointment/{}", a1["id"].as_str().unwrap()), CLIN, &a1)
        .await
        .expect(422);
    // Invalid input and a failed transaction (audited rejections).
    let mut bad = any_patient("Bad");
    bad["identifier"][0]["value"] = json!(invalid_nhs());
    c.post("/Patient", CLIN, &bad).await.expect(400);
    let p2 = c.read(CLIN, &format!("/Patient/{}", patients[2])).await;
    let dup = patient(
        p2["identifier"][0]["value"].as_str().unwrap(),
        "Dup",
        &["D"],
        "1970-01-01",
    );
    c.post("/Patient", CLIN, &dup).await.expect(409);
    // A successful transaction and a failed one.
    let (st2, en2) = times(20, 8);
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:aaaaaaaa-0000-4000-8000-000000000001", "resource": any_patient("Tx"), "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:aaaaaaaa-0000-4000-8000-000000000002", "resource": slot(&sched, &st2, &en2), "request": {"method": "POST", "url": "Slot"}},
    ]});
    c.post("/", CLERK, &tx).await.expect(200);
    let (s2, st, en) = slots[2].clone();
    let bad_tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": appointment(&patients[3], &s2, &st, &en), "request": {"method": "POST", "url": "Appointment"}},
        {"resource": appointment(&patients[2], &s2, &st, &en), "request": {"method": "POST", "url": "Appointment"}},
    ]});
    c.post("/", CLERK, &bad_tx).await.expect(409);
    // A batch.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": any_patient("B1"), "request": {"method": "POST", "url": "Patient"}},
        {"resource": bad, "request": {"method": "POST", "url": "Patient"}},
    ]});
    c.post("/", CLERK, &batch).await.expect(200);
    // Reads and searches, to fill the audit trail.
    for pid in &patients[..5] {
        c.read(CLIN, &format!("/Patient/{pid}")).await;
        c.search(CLERK, &format!("/Appointment?patient={pid}&_include=Appointment:slot"))
            .await;
        c.get(&format!("/Patient/{pid}/$everything"), CLIN).await.expect(200);
    }
    c.get("/Observation", CLERK).await.expect(403);

    srv.stop().await;
    let original = srv.content_hash();
    // The raft log, replayed from scratch into a fresh store.
    let entries = hale_raft::log_store::LogStore::read_all(srv.data_dir()).expect("read raft log");
    assert!(!entries.is_empty());
    assert_eq!(
        entries[0].log_id.index, 0,
        "the log was never compacted, so it starts at 0"
    );
    let log: Vec<(u64, Option<hale_store::command::Command>)> = entries
        .into_iter()
        .map(|e| match e.payload {
            openraft::EntryPayload::Normal(p) => (e.log_id.index, Some(p.decode().expect("a logged command decodes"))),
            _ => (e.log_id.index, None),
        })
        .collect();
    let has_audit = log.iter().any(|(_, cmd)| {
        matches!(
            cmd.as_ref().map(|c| &c.kind),
            Some(hale_store::CommandKind::Audit(_) | hale_store::CommandKind::AuditOnce { .. })
        )
    });
    assert!(has_audit, "read audits must be in the log");
    let fresh = tempfile::tempdir().unwrap();
    let mut replayed = hale_store::StateMachine::open(fresh.path()).expect("open fresh store");
    for chunk in log.chunks(100) {
        let refs: Vec<(u64, Option<&hale_store::command::Command>)> =
            chunk.iter().map(|(i, c)| (*i, c.as_ref())).collect();
        replayed.apply_entries(&refs, |_| Ok(())).expect("replay");
    }
    assert_eq!(replayed.last_applied(), log.last().unwrap().0);
    assert_eq!(
        replayed.content_hash().unwrap(),
        original,
        "replayed store differs from the original"
    );
    // And the original snapshot matches table by table (easier to read on failure).
    drop(replayed);
    assert_eq!(snapshot(fresh.path()), snapshot(srv.data_dir()));
}
