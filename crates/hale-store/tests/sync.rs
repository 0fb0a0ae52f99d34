//! Replayed site-journal entries (`CommandKind::Replay`): every policy branch,
//! exactly-once, the chain checks, and a seeded property test over random
//! interleavings of offline and central writes.

mod common;

use common::{actor, put};
use hale_store::apply::Applied;
use hale_store::command::Command;
use hale_store::sync::{ConflictKind, Outcome, Receipt};
use hale_store::{Base, CommandKind, Policy, Replay, StateMachine, WriteOp};
use serde_json::{json, Value};

const NHS: &str = "https://fhir.nhs.uk/Id/nhs-number";

struct Store {
    sm: StateMachine,
    _dir: tempfile::TempDir,
    index: u64,
    /// Every command applied, to replay into an empty store.
    log: Vec<(u64, Command)>,
}

impl Store {
    fn new() -> Store {
        let dir = tempfile::tempdir().unwrap();
        let sm = StateMachine::open(dir.path()).unwrap();
        let mut s = Store {
            sm,
            _dir: dir,
            index: 0,
            log: Vec::new(),
        };
        s.central(put("Location", "loc", json!({"name": "Clinic"})));
        s.central(put(
            "Schedule",
            "sch",
            json!({"actor": [{"reference": "Location/loc"}]}),
        ));
        for slot in ["s1", "s2"] {
            s.central(put(
                "Slot",
                slot,
                json!({"schedule": {"reference": "Schedule/sch"}, "status": "free",
                       "start": "2030-01-01T09:00:00Z", "end": "2030-01-01T09:20:00Z"}),
            ));
        }
        s.central(put(
            "Patient",
            "p1",
            json!({"identifier": [{"system": NHS, "value": "9434765919"}],
                   "telecom": [{"system": "phone", "use": "home", "value": "0141 000 0001"},
                               {"system": "email", "value": "p1@example.org"}]}),
        ));
        s
    }

    fn apply(&mut self, kind: CommandKind) -> Applied {
        self.index += 1;
        let c = Command {
            references: Default::default(),
            time_ms: 1_700_000_000_000 + self.index as i64 * 1000,
            actor: actor(),
            kind,
        };
        let out = self.sm.apply(&[(self.index, &c)]).unwrap().pop().unwrap();
        self.log.push((self.index, c));
        out
    }

    fn central(&mut self, op: WriteOp) {
        match self.apply(CommandKind::Write(op)) {
            Applied::Ops(v) => {
                v.into_iter().next().unwrap().expect("central write");
            }
            other => panic!("{other:?}"),
        }
    }

    fn replay(&mut self, entries: Vec<Replay>) -> Vec<Receipt> {
        match self.apply(CommandKind::Replay(entries)) {
            Applied::Replayed(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn json(&self, rtype: &str, id: &str) -> Option<Value> {
        self.sm
            .conn()
            .query_row(
                "SELECT json FROM resources WHERE rtype = ?1 AND id = ?2 AND deleted = 0",
                [rtype, id],
                |r| r.get::<_, String>(0),
            )
            .ok()
            .map(|j| serde_json::from_str(&j).unwrap())
    }

    fn version(&self, rtype: &str, id: &str) -> u64 {
        self.json(rtype, id).unwrap()["meta"]["versionId"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    fn count(&self, rtype: &str) -> i64 {
        self.sm
            .conn()
            .query_row(
                "SELECT COUNT(*) FROM resources WHERE rtype = ?1 AND deleted = 0",
                [rtype],
                |r| r.get(0),
            )
            .unwrap()
    }
}

/// A journal: entries chained per node.
struct Journal {
    node: u64,
    seq: u64,
    hash: String,
}

impl Journal {
    fn new(node: u64) -> Journal {
        Journal {
            node,
            seq: 0,
            hash: String::new(),
        }
    }

    fn entry(&mut self, policy: Policy, base: Base, op: WriteOp) -> Replay {
        self.seq += 1;
        let mut e = Replay {
            node: self.node,
            site: "east".into(),
            seq: self.seq,
            prev_hash: self.hash.clone(),
            hash: String::new(),
            recorded_ms: 1_600_000_000_000 + self.seq as i64,
            actor: actor(),
            policy,
            base,
            op,
        };
        e.hash = e.compute_hash();
        self.hash = e.hash.clone();
        e
    }
}

fn create(rtype: &str, id: &str, mut r: Value) -> WriteOp {
    r["resourceType"] = json!(rtype);
    WriteOp::Create {
        rtype: rtype.into(),
        id: id.into(),
        resource: r,
        if_none_exist: None,
    }
}

fn base(v: u64) -> Base {
    Base {
        version: Some(v),
        pending_seq: None,
        seen: None,
    }
}

fn obs(patient: &str) -> Value {
    json!({"status": "final", "code": {"text": "pulse"}, "subject": {"reference": format!("Patient/{patient}")}})
}

fn appt(patient: &str, slot: &str, status: &str) -> Value {
    json!({
        "status": status,
        "slot": [{"reference": format!("Slot/{slot}")}],
        "participant": [{"actor": {"reference": format!("Patient/{patient}")}, "status": "accepted"}]
    })
}

fn task_kind(r: &Receipt) -> Option<ConflictKind> {
    match &r.outcome {
        Outcome::Task { kind, .. } => Some(*kind),
        _ => None,
    }
}

fn committed(r: &Receipt) -> bool {
    matches!(r.outcome, Outcome::Committed { .. })
}

fn patient_with_phone(phone: &str, email: &str) -> Value {
    let mut p = Store::new().json("Patient", "p1").unwrap();
    p["telecom"] = json!([{"system": "phone", "use": "home", "value": phone}, {"system": "email", "value": email}]);
    p
}

#[test]
fn a_clinical_fact_commits_with_provenance_and_tags_from_the_site() {
    let mut s = Store::new();
    let mut j = Journal::new(4);
    let r = s.replay(vec![j.entry(
        Policy::Append,
        Base::default(),
        create("Observation", "o1", obs("p1")),
    )]);
    assert!(committed(&r[0]), "{r:?}");
    let prov = s
        .json("Provenance", "sync-4-1")
        .expect("a Provenance for the replayed write");
    assert_eq!(prov["target"][0]["reference"], "Observation/o1/_history/1");
    assert_eq!(prov["recorded"], "2020-09-13T12:26:40.001Z");
    assert_eq!(s.count("Task"), 0);
}

#[test]
fn a_fact_about_a_patient_who_is_gone_becomes_a_reference_missing_task() {
    let mut s = Store::new();
    let mut j = Journal::new(4);
    let r = s.replay(vec![j.entry(
        Policy::Append,
        Base::default(),
        create("Observation", "o1", obs("nobody")),
    )]);
    assert_eq!(task_kind(&r[0]), Some(ConflictKind::ReferenceMissing), "{r:?}");
    assert!(s.json("Observation", "o1").is_none());
    let task = s.json("Task", "sync-4-1").unwrap();
    assert_eq!(task["status"], "requested");
    assert!(task["input"][0]["valueString"].as_str().unwrap().contains("pulse"));
}

#[test]
fn demographics_merge_different_fields_and_raise_a_task_on_the_same_field() {
    // Different fields: the site's phone and the centre's email both stay.
    let mut s = Store::new();
    s.central(put(
        "Patient",
        "p1",
        patient_with_phone("0141 000 0001", "new@example.org"),
    ));
    let mut j = Journal::new(4);
    let ours = patient_with_phone("07700 900001", "p1@example.org");
    let r = s.replay(vec![j.entry(
        Policy::Demographics,
        base(1),
        put("Patient", "p1", ours).clone(),
    )]);
    assert!(committed(&r[0]), "{r:?}");
    let p = s.json("Patient", "p1").unwrap();
    assert_eq!(p["telecom"][0]["value"], "07700 900001");
    assert_eq!(p["telecom"][1]["value"], "new@example.org");

    // The same field: the central value stays and a Task holds the site's.
    let mut s = Store::new();
    s.central(put(
        "Patient",
        "p1",
        patient_with_phone("0141 999 9999", "p1@example.org"),
    ));
    let mut j = Journal::new(4);
    let ours = patient_with_phone("07700 900001", "p1@example.org");
    let r = s.replay(vec![j.entry(Policy::Demographics, base(1), put("Patient", "p1", ours))]);
    assert_eq!(task_kind(&r[0]), Some(ConflictKind::FieldConflict), "{r:?}");
    assert_eq!(s.json("Patient", "p1").unwrap()["telecom"][0]["value"], "0141 999 9999");
    let flag = s.json("Flag", "sync-review-p1").expect("the review flag");
    assert_eq!(flag["status"], "active");

    // Completing the Task clears the flag.
    let mut task = s.json("Task", "sync-4-1").unwrap();
    task["status"] = json!("completed");
    s.central(put("Task", "sync-4-1", task));
    assert_eq!(s.json("Flag", "sync-review-p1").unwrap()["status"], "inactive");
}

#[test]
fn a_new_patient_with_a_registered_nhs_number_is_kept_as_a_possible_duplicate() {
    let mut s = Store::new();
    let mut j = Journal::new(4);
    let p = json!({"identifier": [{"system": NHS, "value": "9434765919"}], "name": [{"family": "Twin"}]});
    let r = s.replay(vec![j.entry(
        Policy::NewPatient,
        Base::default(),
        create("Patient", "new", p),
    )]);
    assert_eq!(task_kind(&r[0]), Some(ConflictKind::PossibleDuplicate), "{r:?}");
    let kept = s.json("Patient", "new").unwrap();
    assert_eq!(
        kept["identifier"][0]["system"],
        hale_store::sync::UNVERIFIED_NHS_NUMBER_SYSTEM
    );
    assert!(s.json("Task", "sync-4-1").unwrap()["description"]
        .as_str()
        .unwrap()
        .contains("Patient/p1"));
}

#[test]
fn a_slot_taken_centrally_puts_the_offline_booking_on_the_waitlist_never_a_double_booking() {
    let mut s = Store::new();
    s.central(create("Appointment", "central", appt("p1", "s1", "booked")));
    let mut j = Journal::new(4);
    let r = s.replay(vec![
        j.entry(
            Policy::Booking,
            Base::default(),
            create("Appointment", "site", appt("p1", "s1", "booked")),
        ),
        j.entry(
            Policy::Booking,
            Base::default(),
            create("Appointment", "free", appt("p1", "s2", "booked")),
        ),
    ]);
    assert_eq!(task_kind(&r[0]), Some(ConflictKind::SlotTaken), "{r:?}");
    assert!(committed(&r[1]), "{r:?}");
    let site = s.json("Appointment", "site").unwrap();
    assert_eq!(site["status"], "waitlist");
    assert!(site.get("slot").is_none());
    assert_eq!(s.json("Slot", "s2").unwrap()["status"], "busy");
}

#[test]
fn an_arrival_after_a_central_cancel_is_applied_and_raised_and_a_cancel_after_a_move_is_held() {
    let mut s = Store::new();
    s.central(create("Appointment", "a", appt("p1", "s1", "booked")));
    let mut cancelled = s.json("Appointment", "a").unwrap();
    cancelled["status"] = json!("cancelled");
    cancelled["cancelationReason"] =
        json!({"coding": [{"system": "https://hale.health/fhir/CodeSystem/cancelled-by", "code": "provider"}]});
    s.central(put("Appointment", "a", cancelled));
    let mut j = Journal::new(4);
    let arrived = appt("p1", "s1", "arrived");
    let mut arrived_a = arrived.clone();
    arrived_a["resourceType"] = json!("Appointment");
    arrived_a["id"] = json!("a");
    let r = s.replay(vec![j.entry(
        Policy::SiteStatus,
        base(1),
        put("Appointment", "a", arrived_a),
    )]);
    assert_eq!(task_kind(&r[0]), Some(ConflictKind::StatusDiverged), "{r:?}");
    // cancelled -> arrived is not a transition Hale allows, so nothing was applied.
    assert_eq!(s.json("Appointment", "a").unwrap()["status"], "cancelled");

    // A cancel made at the site of an appointment moved centrally: held as a Task.
    let mut s = Store::new();
    s.central(create("Appointment", "b", appt("p1", "s1", "booked")));
    let mut moved = s.json("Appointment", "b").unwrap();
    moved["slot"] = json!([{"reference": "Slot/s2"}]);
    s.central(put("Appointment", "b", moved));
    let mut site_cancel = s.json("Appointment", "b").unwrap();
    site_cancel["slot"] = json!([{"reference": "Slot/s1"}]);
    site_cancel["status"] = json!("cancelled");
    let mut j = Journal::new(4);
    let r = s.replay(vec![j.entry(
        Policy::Amend,
        base(1),
        put("Appointment", "b", site_cancel),
    )]);
    assert_eq!(task_kind(&r[0]), Some(ConflictKind::StatusDiverged), "{r:?}");
    assert_eq!(s.json("Appointment", "b").unwrap()["status"], "booked");
}

#[test]
fn an_arrival_on_an_unchanged_appointment_commits() {
    let mut s = Store::new();
    s.central(create("Appointment", "a", appt("p1", "s1", "booked")));
    let mut arrived = s.json("Appointment", "a").unwrap();
    arrived["status"] = json!("arrived");
    let mut j = Journal::new(4);
    let r = s.replay(vec![j.entry(
        Policy::SiteStatus,
        base(1),
        put("Appointment", "a", arrived),
    )]);
    assert!(committed(&r[0]), "{r:?}");
    assert_eq!(s.version("Appointment", "a"), 2);
}

#[test]
fn every_entry_applies_once_and_gaps_and_broken_chains_are_refused() {
    let mut s = Store::new();
    let mut j = Journal::new(4);
    let e1 = j.entry(Policy::Append, Base::default(), create("Observation", "o1", obs("p1")));
    let e2 = j.entry(Policy::Append, Base::default(), create("Observation", "o2", obs("p1")));
    let e3 = j.entry(Policy::Append, Base::default(), create("Observation", "o3", obs("p1")));
    // A gap: entry 2 before 1.
    let r = s.replay(vec![e2.clone()]);
    assert!(matches!(r[0].outcome, Outcome::Refused { .. }), "{r:?}");
    assert_eq!(s.count("Observation"), 0);
    let first = s.replay(vec![e1.clone(), e2.clone()]);
    assert!(first.iter().all(committed));
    // The whole journal again: stored receipts, nothing new.
    let again = s.replay(vec![e1.clone(), e2.clone(), e3.clone()]);
    assert!(again[0].duplicate && again[1].duplicate && !again[2].duplicate);
    assert_eq!(again[0].outcome, first[0].outcome);
    assert_eq!(s.count("Observation"), 3);
    assert_eq!(s.version("Observation", "o1"), 1);
    // A changed entry does not match its hash.
    let mut j2 = Journal::new(5);
    let mut bad = j2.entry(Policy::Append, Base::default(), create("Observation", "o9", obs("p1")));
    bad.op = create("Observation", "o9", obs("someone-else"));
    let r = s.replay(vec![bad]);
    assert!(
        matches!(&r[0].outcome, Outcome::Refused { reason } if reason.contains("hash")),
        "{r:?}"
    );
    // A chain that does not follow the head.
    let mut j3 = Journal::new(4);
    j3.seq = 3;
    j3.hash = "not-the-head".into();
    let e4 = j3.entry(Policy::Append, Base::default(), create("Observation", "o4", obs("p1")));
    let r = s.replay(vec![e4]);
    assert!(
        matches!(&r[0].outcome, Outcome::Refused { reason } if reason.contains("chain")),
        "{r:?}"
    );
}

#[test]
fn an_edit_built_on_a_pending_edit_follows_its_fate() {
    let mut s = Store::new();
    let mut j = Journal::new(4);
    let e1 = j.entry(Policy::Append, Base::default(), create("Observation", "o1", obs("p1")));
    let mut amended = obs("p1");
    amended["resourceType"] = json!("Observation");
    amended["id"] = json!("o1");
    amended["status"] = json!("amended");
    let e2 = j.entry(
        Policy::Amend,
        Base {
            version: None,
            pending_seq: Some(1),
            seen: None,
        },
        put("Observation", "o1", amended),
    );
    let r = s.replay(vec![e1, e2]);
    assert!(r.iter().all(committed), "{r:?}");
    assert_eq!(s.json("Observation", "o1").unwrap()["status"], "amended");

    // Behind a conflict: held as a Task that is part of the first one.
    let mut s = Store::new();
    s.central(put(
        "Patient",
        "p1",
        patient_with_phone("0141 999 9999", "p1@example.org"),
    ));
    let mut j = Journal::new(4);
    let e1 = j.entry(
        Policy::Demographics,
        base(1),
        put("Patient", "p1", patient_with_phone("07700 900001", "p1@example.org")),
    );
    let e2 = j.entry(
        Policy::Demographics,
        Base {
            version: None,
            pending_seq: Some(1),
            seen: None,
        },
        put("Patient", "p1", patient_with_phone("07700 900002", "p1@example.org")),
    );
    let r = s.replay(vec![e1, e2]);
    assert_eq!(task_kind(&r[1]), Some(ConflictKind::FieldConflict), "{r:?}");
    assert_eq!(
        s.json("Task", "sync-4-2").unwrap()["partOf"][0]["reference"],
        "Task/sync-4-1"
    );
}

/// Random interleavings of central writes and one site's journal: whatever
/// the order, every entry gets exactly one receipt, committed + tasks = all,
/// no slot is held twice, and replaying everything again changes nothing.
#[test]
fn seeded_interleavings_keep_every_invariant() {
    for seed in 0..40u64 {
        let mut rng = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut s = Store::new();
        let mut j = Journal::new(7);
        let mut entries = Vec::new();
        for k in 0..12 {
            let e = match next(4) {
                0 => j.entry(
                    Policy::Append,
                    Base::default(),
                    create("Observation", &format!("o{k}"), obs("p1")),
                ),
                1 => j.entry(
                    Policy::Demographics,
                    base(1),
                    put(
                        "Patient",
                        "p1",
                        patient_with_phone(&format!("07700 90000{k}"), "p1@example.org"),
                    ),
                ),
                2 => j.entry(
                    Policy::Booking,
                    Base::default(),
                    create(
                        "Appointment",
                        &format!("a{k}"),
                        appt("p1", if next(2) == 0 { "s1" } else { "s2" }, "booked"),
                    ),
                ),
                _ => j.entry(
                    Policy::Append,
                    Base::default(),
                    create("Observation", &format!("x{k}"), obs("ghost")),
                ),
            };
            entries.push(e);
        }
        // Central writes land at random points of the replay.
        let mut i = 0;
        while i < entries.len() {
            match next(3) {
                0 => {
                    let p = patient_with_phone(&format!("0141 {}", next(1000)), "c@example.org");
                    s.central(put("Patient", "p1", p));
                }
                1 => {
                    let id = format!("c{i}");
                    let slot = if next(2) == 0 { "s1" } else { "s2" };
                    // The central booking may be refused (slot taken): that is fine.
                    let _ = s.apply(CommandKind::Write(create(
                        "Appointment",
                        &id,
                        appt("p1", slot, "booked"),
                    )));
                }
                _ => {}
            }
            let n = (1 + next(3) as usize).min(entries.len() - i);
            let r = s.replay(entries[i..i + n].to_vec());
            assert!(
                r.iter().all(|r| !matches!(r.outcome, Outcome::Refused { .. })),
                "seed {seed}: {r:?}"
            );
            i += n;
        }
        let receipts = hale_store::sync::receipts(s.sm.conn(), 7).unwrap();
        assert_eq!(receipts.len(), entries.len(), "seed {seed}");
        let tasks = receipts.iter().filter(|r| task_kind(r).is_some()).count() as i64;
        assert_eq!(s.count("Task"), tasks, "seed {seed}: one Task per task receipt");
        for slot in ["s1", "s2"] {
            let holders: i64 =
                s.sm.conn()
                    .query_row(
                        "SELECT COUNT(*) FROM resources WHERE rtype = 'Appointment' AND deleted = 0
                       AND json_extract(json, '$.status') = 'booked'
                       AND json_extract(json, '$.slot[0].reference') = ?1",
                        [format!("Slot/{slot}")],
                        |r| r.get(0),
                    )
                    .unwrap();
            assert!(holders <= 1, "seed {seed}: Slot/{slot} held by {holders}");
        }
        let before = s.sm.content_hash().unwrap();
        let again = s.replay(entries.clone().into_iter().take(128).collect());
        assert!(again.iter().all(|r| r.duplicate), "seed {seed}");
        // The replay command itself is applied at a new index but writes nothing.
        assert_eq!(
            s.sm.content_hash().unwrap(),
            before,
            "seed {seed}: a re-send changed state"
        );
        // And the whole log, replayed into an empty store, gives the same state.
        let fresh = tempfile::tempdir().unwrap();
        let replayed = hale_store::propose::replay(fresh.path(), &s.log).unwrap();
        assert_eq!(
            replayed.content_hash().unwrap(),
            before,
            "seed {seed}: replay from empty differs"
        );
    }
}

#[test]
fn a_second_offline_demographic_edit_keeps_what_the_first_merged_in() {
    let mut s = Store::new();
    let v1 = s.json("Patient", "p1").unwrap();
    // Centrally, the email changes.
    s.central(put(
        "Patient",
        "p1",
        patient_with_phone("0141 000 0001", "central@example.org"),
    ));
    // At the site: a new phone, then, on top of that pending edit, a gender.
    let first = patient_with_phone("07700 900001", "p1@example.org");
    let mut second = first.clone();
    second["gender"] = json!("female");
    let mut j = Journal::new(4);
    let e1 = j.entry(
        Policy::Demographics,
        Base {
            version: Some(1),
            pending_seq: None,
            seen: Some(v1),
        },
        put("Patient", "p1", first.clone()),
    );
    let e2 = j.entry(
        Policy::Demographics,
        Base {
            version: None,
            pending_seq: Some(1),
            seen: Some(first),
        },
        put("Patient", "p1", second),
    );
    let r = s.replay(vec![e1, e2]);
    assert!(r.iter().all(committed), "{r:?}");
    let p = s.json("Patient", "p1").unwrap();
    assert_eq!(p["telecom"][0]["value"], "07700 900001");
    assert_eq!(
        p["telecom"][1]["value"], "central@example.org",
        "the central email must survive"
    );
    assert_eq!(p["gender"], "female");
}

#[test]
fn a_slot_reserved_for_a_site_is_booked_only_by_that_site_s_offline_writes() {
    let mut s = Store::new();
    s.central(put(
        "Slot",
        "r1",
        json!({"schedule": {"reference": "Schedule/sch"}, "status": "free",
               "start": "2030-01-01T10:00:00Z", "end": "2030-01-01T10:20:00Z",
               "extension": [{"url": hale_store::sync::EXT_OFFLINE_RESERVE, "valueString": "east"}]}),
    ));
    // Centrally: refused.
    match s.apply(CommandKind::Write(create(
        "Appointment",
        "c",
        appt("p1", "r1", "booked"),
    ))) {
        Applied::Ops(v) => assert!(v[0].is_err(), "{v:?}"),
        other => panic!("{other:?}"),
    }
    // From the site it is reserved for: committed as made.
    let mut j = Journal::new(4);
    let r = s.replay(vec![j.entry(
        Policy::Booking,
        Base::default(),
        create("Appointment", "e", appt("p1", "r1", "booked")),
    )]);
    assert!(committed(&r[0]), "{r:?}");
    assert_eq!(s.json("Slot", "r1").unwrap()["status"], "busy");
}
