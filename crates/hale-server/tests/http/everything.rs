//! `Patient/$everything`.

use crate::common::*;
use std::collections::BTreeSet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_includes_appointments_and_slots() {
    let srv = TestServer::start().await;
    let c = srv.client;
    let sched = make_schedule(&c).await;
    let (slot_id, s, e) = make_slot(&c, &sched, 14, 9).await;
    let pid = c.create_id(CLIN, &any_patient("Everything")).await;
    let other = c.create_id(CLIN, &any_patient("Nobody")).await;
    let appt = c.create_id(CLERK, &appointment(&pid, &slot_id, &s, &e)).await;
    let obs = c
        .create_id(
            CLIN,
            &serde_json::json!({
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "Pulse"},
                "subject": {"reference": format!("Patient/{pid}")},
            }),
        )
        .await;

    let r = c.get(&format!("/Patient/{pid}/$everything"), CLIN).await;
    r.expect(200);
    assert_eq!(r.body()["type"], "searchset");
    let got: BTreeSet<(String, String)> = r
        .entries()
        .iter()
        .map(|e| {
            (
                e["resource"]["resourceType"].as_str().unwrap().to_string(),
                e["resource"]["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for want in [
        ("Patient", &pid),
        ("Appointment", &appt),
        ("Slot", &slot_id),
        ("Observation", &obs),
    ] {
        assert!(
            got.contains(&(want.0.to_string(), want.1.clone())),
            "$everything lacks {want:?}: {got:?}"
        );
    }
    assert!(
        !got.iter().any(|(_, id)| *id == other),
        "another patient leaked into $everything"
    );
    assert_eq!(r.entries().len(), got.len(), "duplicate entries");

    // A clerk sees the booking side only.
    let r = c.get(&format!("/Patient/{pid}/$everything"), CLERK).await;
    r.expect(200);
    let types: BTreeSet<String> = r
        .entries()
        .iter()
        .map(|e| e["resource"]["resourceType"].as_str().unwrap().to_string())
        .collect();
    assert!(types.contains("Appointment") && types.contains("Slot"), "{types:?}");
    assert!(
        !types.contains("Observation"),
        "a clerk must not see Observations: {types:?}"
    );

    c.get("/Patient/nope/$everything", CLIN).await.expect(404).outcome();
}

/// A clerk's `$everything` leaves clinical resources out; `total` must count
/// what is in the Bundle, not what was hidden.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_total_matches_entries_for_a_clerk() {
    let srv = TestServer::start().await;
    let c = srv.client;
    let pid = c.create_id(CLIN, &any_patient("Hidden")).await;
    for code in ["Pulse", "Temp"] {
        c.create_id(
            CLIN,
            &serde_json::json!({
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": code},
                "subject": {"reference": format!("Patient/{pid}")},
            }),
        )
        .await;
    }
    let r = c.get(&format!("/Patient/{pid}/$everything"), CLIN).await;
    r.expect(200);
    assert_eq!(r.body()["total"].as_u64(), Some(r.entries().len() as u64));
    let r = c.get(&format!("/Patient/{pid}/$everything"), CLERK).await;
    r.expect(200);
    assert_eq!(r.ids("match", None).len(), 1, "{}", r.text);
    assert_eq!(
        r.body()["total"].as_u64(),
        Some(r.ids("match", None).len() as u64),
        "Bundle.total counts resources the clerk may not see: {}",
        r.text
    );
    // The clerk is told that something was left out, and what kind.
    assert!(r.text.contains("not shown to role 'clerk': Observation"), "{}", r.text);
}

/// `Patient/{id}/{type}` and `$everything` follow the official patient
/// compartment: a MedicationRequest and a Condition are there, another
/// patient's are not; `_type`, `_since` and `start`/`end` narrow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_patient_compartment() {
    let srv = TestServer::start().await;
    let c = srv.client;
    let pid = c.create_id(CLIN, &any_patient("Compartment")).await;
    let other = c.create_id(CLIN, &any_patient("Elsewhere")).await;
    let med = |p: &str| {
        serde_json::json!({
            "resourceType": "MedicationRequest", "status": "active", "intent": "order",
            "medicationCodeableConcept": {"text": "Amoxicillin 500mg capsules"},
            "subject": {"reference": format!("Patient/{p}")},
            "authoredOn": "2024-03-01"
        })
    };
    let mine = c.create_id(CLIN, &med(&pid)).await;
    c.create_id(CLIN, &med(&other)).await;
    let cond = c
        .create_id(
            CLIN,
            &serde_json::json!({
                "resourceType": "Condition",
                "subject": {"reference": format!("Patient/{pid}")},
                "code": {"text": "Asthma"},
                "recordedDate": "2010-05-01"
            }),
        )
        .await;
    let r = c.search(CLIN, &format!("/Patient/{pid}/MedicationRequest")).await;
    assert_eq!(r.match_ids(), vec![mine.clone()]);
    let link = r.body()["link"][0]["url"].as_str().unwrap().to_string();
    assert!(link.contains(&format!("/Patient/{pid}/MedicationRequest")), "{link}");
    let r = c
        .search(CLIN, &format!("/Patient/{pid}/MedicationRequest?status=stopped"))
        .await;
    assert!(r.match_ids().is_empty());
    // Practitioner is not in the patient compartment.
    c.get(&format!("/Patient/{pid}/Practitioner"), CLIN)
        .await
        .expect(404)
        .outcome();
    // $everything with _type.
    let r = c
        .get(&format!("/Patient/{pid}/$everything?_type=Condition"), CLIN)
        .await;
    r.expect(200);
    let ids = r.ids("match", None);
    assert!(
        ids.contains(&cond) && ids.contains(&pid) && !ids.contains(&mine),
        "{ids:?}"
    );
    // _since after everything was written: only the patient.
    let r = c
        .get(&format!("/Patient/{pid}/$everything?_since=2100-01-01"), CLIN)
        .await;
    r.expect(200);
    assert_eq!(r.ids("match", None), vec![pid.clone()]);
    c.get(&format!("/Patient/{pid}/$everything?_type=Goat"), CLIN)
        .await
        .expect(400)
        .outcome();
    c.get(&format!("/Patient/{pid}/$everything?colour=blue"), CLIN)
        .await
        .expect(400)
        .outcome();
}
