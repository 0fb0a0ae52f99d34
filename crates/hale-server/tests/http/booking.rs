//! Booking rules: one appointment per slot under concurrency, cancellation,
//! the status lifecycle and Hale's Appointment profile.

use crate::common::*;
use serde_json::{json, Value};

const CLIENTS: usize = 12;
const ROUNDS: u32 = 5;

async fn slot_status(c: &Client, slot_id: &str) -> String {
    c.read(CLERK, &format!("/Slot/{slot_id}")).await["status"]
        .as_str()
        .expect("slot status")
        .to_string()
}

/// Booked appointments that reference the slot.
async fn holders(c: &Client, slot_id: &str) -> Vec<String> {
    c.search(CLERK, &format!("/Appointment?slot=Slot/{slot_id}&status=booked"))
        .await
        .match_ids()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_double_booking_has_one_winner() {
    let srv = TestServer::start().await;
    let c = srv.client;
    let sched = make_schedule(&c).await;
    let mut patients = Vec::new();
    for i in 0..CLIENTS {
        patients.push(c.create_id(CLERK, &any_patient(&format!("Racer{i}"))).await);
    }
    for round in 0..ROUNDS {
        let (slot_id, s, e) = make_slot(&c, &sched, round + 1, 10).await;
        let mut tasks = Vec::new();
        for pid in &patients {
            let body = appointment(pid, &slot_id, &s, &e);
            tasks.push(tokio::spawn(async move { c.post("/Appointment", CLERK, &body).await }));
        }
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.expect("request task"));
        }
        let won: Vec<&Resp> = results.iter().filter(|r| r.status == 201).collect();
        let lost: Vec<&Resp> = results.iter().filter(|r| r.status == 409).collect();
        let statuses: Vec<u16> = results.iter().map(|r| r.status).collect();
        assert_eq!(
            won.len(),
            1,
            "round {round}: exactly one booking must win: {statuses:?}"
        );
        assert_eq!(
            lost.len(),
            CLIENTS - 1,
            "round {round}: the others must get 409: {statuses:?}"
        );
        for r in &lost {
            r.outcome_at("Appointment.slot[0]");
        }
        let winner = won[0].id();
        assert_eq!(slot_status(&c, &slot_id).await, "busy", "round {round}");
        assert_eq!(holders(&c, &slot_id).await, vec![winner.clone()], "round {round}");
        // Nothing else references the slot (the losers were not stored).
        let any = c
            .search(CLERK, &format!("/Appointment?slot={slot_id}"))
            .await
            .match_ids();
        assert_eq!(any, vec![winner], "round {round}: losers must not be stored");
    }
    assert_eq!(srv.live_count("Appointment"), ROUNDS as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_frees_the_slot_for_a_new_booking() {
    let srv = TestServer::start().await;
    let c = srv.client;
    let sched = make_schedule(&c).await;
    let (slot_id, s, e) = make_slot(&c, &sched, 3, 9).await;
    let p1 = c.create_id(CLERK, &any_patient("First")).await;
    let p2 = c.create_id(CLERK, &any_patient("Second")).await;

    let a1 = c.create(CLERK, &appointment(&p1, &slot_id, &s, &e)).await;
    let a1_id = a1["id"].as_str().unwrap().to_string();
    assert_eq!(slot_status(&c, &slot_id).await, "busy");

    // A second booking of the busy slot, sequentially: 409, nothing stored.
    let before = srv.snapshot();
    let r = c.post("/Appointment", CLERK, &appointment(&p2, &slot_id, &s, &e)).await;
    r.expect(409);
    r.outcome_at("Appointment.slot[0]");
    assert_eq!(srv.snapshot(), before, "a refused booking changed the store");

    // Cancelling without saying who cancelled: 422, nothing changes.
    let r = c
        .put(&format!("/Appointment/{a1_id}"), CLERK, &cancelled(a1.clone(), None))
        .await;
    r.expect(422);
    r.outcome_at("Appointment.cancelationReason");
    assert_eq!(srv.snapshot(), before, "a refused cancellation changed the store");
    // Nor with an unknown code.
    let r = c
        .put(
            &format!("/Appointment/{a1_id}"),
            CLERK,
            &cancelled(a1.clone(), Some("weather")),
        )
        .await;
    r.expect(422);
    assert_eq!(srv.snapshot(), before);

    // Cancel properly: the slot is free.
    let r = c
        .put(
            &format!("/Appointment/{a1_id}"),
            CLERK,
            &cancelled(a1.clone(), Some("patient")),
        )
        .await;
    r.expect(200);
    assert_eq!(r.body()["status"], "cancelled");
    assert_eq!(r.body()["cancelationReason"]["text"], "patient is on holiday");
    assert_eq!(slot_status(&c, &slot_id).await, "free");
    assert!(holders(&c, &slot_id).await.is_empty());

    // Now the other patient can book it.
    let r = c.post("/Appointment", CLERK, &appointment(&p2, &slot_id, &s, &e)).await;
    r.expect(201);
    let a2_id = r.id();
    assert_eq!(slot_status(&c, &slot_id).await, "busy");
    assert_eq!(holders(&c, &slot_id).await, vec![a2_id]);

    // The cancelled appointment cannot come back to booked.
    let mut back = c.read(CLERK, &format!("/Appointment/{a1_id}")).await;
    back["status"] = json!("booked");
    let before = srv.snapshot();
    c.put(&format!("/Appointment/{a1_id}"), CLERK, &back)
        .await
        .expect(422)
        .outcome_at("Appointment.status");
    assert_eq!(srv.snapshot(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_transitions_are_refused() {
    let srv = TestServer::start().await;
    let c = srv.client;
    let sched = make_schedule(&c).await;
    let (slot_id, s, e) = make_slot(&c, &sched, 5, 11).await;
    let p = c.create_id(CLERK, &any_patient("Life")).await;
    let a = c.create(CLERK, &appointment(&p, &slot_id, &s, &e)).await;
    let id = a["id"].as_str().unwrap().to_string();

    let mut fulfilled = a.clone();
    fulfilled["status"] = json!("fulfilled");
    let r = c.put(&format!("/Appointment/{id}"), CLIN, &fulfilled).await;
    r.expect(200);
    let current = r.body().clone();
    // A fulfilled appointment still holds its slot.
    assert_eq!(slot_status(&c, &slot_id).await, "busy");

    let before = srv.snapshot();
    for (to, by) in [
        ("booked", None),
        ("cancelled", Some("provider")),
        ("arrived", None),
        ("noshow", None),
    ] {
        let mut next = current.clone();
        next["status"] = json!(to);
        if let Some(by) = by {
            next = cancelled(next, Some(by));
        }
        let r = c.put(&format!("/Appointment/{id}"), CLIN, &next).await;
        assert_eq!(r.status, 422, "fulfilled -> {to}: {}", r.text);
        r.outcome_at("Appointment.status");
        assert_eq!(
            srv.snapshot(),
            before,
            "refused transition fulfilled -> {to} changed the store"
        );
    }
    let now = c.read(CLIN, &format!("/Appointment/{id}")).await;
    assert_eq!(now["status"], "fulfilled");
    assert_eq!(now["meta"]["versionId"], "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appointment_profile_rules() {
    let srv = TestServer::start().await;
    let c = srv.client;
    let sched = make_schedule(&c).await;
    let (slot_id, s, e) = make_slot(&c, &sched, 6, 9).await;
    let p = c.create_id(CLERK, &any_patient("Profile")).await;
    let good = appointment(&p, &slot_id, &s, &e);

    type Mutator = fn(&mut Value);
    let cases: Vec<(&str, Mutator, u16, &str)> = vec![
        (
            "unknown category",
            |a| a["serviceCategory"][0]["coding"][0]["code"] = json!("spa-day"),
            400,
            "Appointment.serviceCategory",
        ),
        (
            "priority out of R4's range",
            |a| a["priority"] = json!(10),
            400,
            "Appointment.priority",
        ),
        (
            "no status",
            |a| drop(a.as_object_mut().unwrap().remove("status")),
            400,
            "Appointment.status",
        ),
        (
            "bad status",
            |a| a["status"] = json!("maybe"),
            400,
            "Appointment.status",
        ),
        (
            "no patient participant",
            |a| a["participant"] = json!([{"actor": {"reference": "Location/x"}, "status": "accepted"}]),
            400,
            "Appointment.participant",
        ),
        (
            "missing slot",
            |a| a["slot"] = json!([{"reference": "Slot/no-such-slot"}]),
            422,
            "Appointment.slot[0]",
        ),
        (
            "missing patient",
            |a| a["participant"][0]["actor"]["reference"] = json!("Patient/nobody"),
            422,
            "Appointment.participant[0].actor",
        ),
    ];
    let before = srv.snapshot();
    for (name, mutate, status, at) in cases {
        let mut body = good.clone();
        mutate(&mut body);
        let r = c.post("/Appointment", CLERK, &body).await;
        assert_eq!(r.status, status, "{name}: {}", r.text);
        r.outcome_at(at);
        assert_eq!(
            srv.snapshot(),
            before,
            "{name}: a refused Appointment changed the store"
        );
    }
    // The unmodified one books.
    c.post("/Appointment", CLERK, &good).await.expect(201);
}

/// Appointments from other systems: no Hale category, their own category
/// codes, R4 priorities outside Hale's 1-4, or none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appointments_from_other_systems_are_accepted() {
    let srv = TestServer::start().await;
    let c = &srv.client;
    let sched = make_schedule(c).await;
    let p = c.create_id(CLERK, &any_patient("Visitor")).await;
    for (i, mutate) in [
        (|a: &mut Value| drop(a.as_object_mut().unwrap().remove("serviceCategory"))) as fn(&mut Value),
        |a| a["serviceCategory"] = json!([{"coding": [{"system": "http://example.org/cats", "code": "gp"}]}]),
        |a| a["priority"] = json!(5),
        |a| a["priority"] = json!(0),
        |a| drop(a.as_object_mut().unwrap().remove("priority")),
    ]
    .into_iter()
    .enumerate()
    {
        let (slot_id, s, e) = make_slot(c, &sched, 7 + i as u32, 9).await;
        let mut a = appointment(&p, &slot_id, &s, &e);
        mutate(&mut a);
        c.post("/Appointment", CLERK, &a).await.expect(201);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_slots_cannot_be_freed_or_deleted_directly() {
    let srv = TestServer::start().await;
    let c = srv.client;
    let sched = make_schedule(&c).await;
    let (slot_id, s, e) = make_slot(&c, &sched, 7, 9).await;
    let p = c.create_id(CLERK, &any_patient("Holder")).await;
    let appt = c.create_id(CLERK, &appointment(&p, &slot_id, &s, &e)).await;

    let before = srv.snapshot();
    let mut free = c.read(ADMIN, &format!("/Slot/{slot_id}")).await;
    free["status"] = json!("free");
    c.put(&format!("/Slot/{slot_id}"), ADMIN, &free)
        .await
        .expect(409)
        .outcome_at("Slot.status");
    c.delete(&format!("/Slot/{slot_id}"), ADMIN).await.expect(409).outcome();
    c.delete(&format!("/Patient/{p}"), ADMIN).await.expect(409).outcome();
    assert_eq!(srv.snapshot(), before);

    // Deleting the appointment releases the slot.
    c.delete(&format!("/Appointment/{appt}"), CLERK).await.expect(204);
    assert_eq!(slot_status(&c, &slot_id).await, "free");
    c.post("/Appointment", CLERK, &appointment(&p, &slot_id, &s, &e))
        .await
        .expect(201);
}
