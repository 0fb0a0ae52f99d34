//! Store-level tests of deterministic apply: each case is a list of commands
//! and the outcome expected for the last one.

mod common;

use common::{actor, put};
use hale_store::apply::Applied;
use hale_store::command::{Command, References};
use hale_store::{CommandKind, RejectKind, StateMachine, WriteOp, WriteStatus};
use serde_json::{json, Value};

fn cmd(i: i64, kind: CommandKind) -> Command {
    Command {
        references: Default::default(),
        time_ms: 1_700_000_000_000 + i * 1000,
        actor: actor(),
        kind,
    }
}

fn base() -> Vec<WriteOp> {
    vec![
        put("Location", "loc", json!({"name": "Clinic"})),
        put("Schedule", "sch", json!({"actor": [{"reference": "Location/loc"}]})),
        put(
            "Slot",
            "s1",
            json!({"schedule": {"reference": "Schedule/sch"}, "status": "free",
                   "start": "2030-01-01T09:00:00Z", "end": "2030-01-01T09:20:00Z"}),
        ),
        put(
            "Patient",
            "p1",
            json!({"identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"}]}),
        ),
        put("Patient", "p2", json!({"name": [{"family": "Two"}]})),
    ]
}

fn appt(patient: &str, status: &str) -> Value {
    json!({
        "status": status,
        "serviceCategory": [{"coding": [{"system": "https://hale.health/fhir/CodeSystem/appointment-category", "code": "outpatient"}]}],
        "priority": 4,
        "slot": [{"reference": "Slot/s1"}],
        "participant": [{"actor": {"reference": format!("Patient/{patient}")}, "status": "accepted"}]
    })
}

fn cancelled(patient: &str) -> Value {
    let mut a = appt(patient, "cancelled");
    a["cancelationReason"] = json!({"coding": [{"system": "https://hale.health/fhir/CodeSystem/cancelled-by", "code": "patient"}], "text": "moved away"});
    a
}

/// Apply `base()` then `ops` one command each; return the store and the last outcome.
fn run(ops: Vec<WriteOp>) -> (StateMachine, tempfile::TempDir, Result<WriteStatus, RejectKind>) {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path()).unwrap();
    let mut last = None;
    let mut i = 0;
    for op in base().into_iter().chain(ops) {
        i += 1;
        let c = cmd(i, CommandKind::Write(op));
        let out = sm.apply(&[(i as u64, &c)]).unwrap();
        last = Some(match out.into_iter().next().unwrap() {
            Applied::Ops(mut v) => v.pop().unwrap().map(|w| w.status).map_err(|r| r.kind),
            other => panic!("unexpected {other:?}"),
        });
    }
    (sm, dir, last.unwrap())
}

fn slot_status(sm: &StateMachine) -> String {
    let json: String = sm
        .conn()
        .query_row("SELECT json FROM resources WHERE rtype='Slot' AND id='s1'", [], |r| {
            r.get(0)
        })
        .unwrap();
    serde_json::from_str::<Value>(&json).unwrap()["status"]
        .as_str()
        .unwrap()
        .to_string()
}

fn check(ops: Vec<WriteOp>, expect: Result<WriteStatus, RejectKind>, expect_slot: &str) {
    let (sm, _dir, last) = run(ops);
    assert_eq!(last, expect);
    assert_eq!(slot_status(&sm), expect_slot);
}

#[test]
fn booking_rules() {
    // Booking marks the slot busy.
    check(
        vec![put("Appointment", "a1", appt("p1", "booked"))],
        Ok(WriteStatus::Created),
        "busy",
    );
    // A second booking of the slot is a conflict.
    check(
        vec![
            put("Appointment", "a1", appt("p1", "booked")),
            put("Appointment", "a2", appt("p2", "booked")),
        ],
        Err(RejectKind::Conflict),
        "busy",
    );
    // Cancelling (with who cancelled) frees it, and then it can be booked again.
    check(
        vec![
            put("Appointment", "a1", appt("p1", "booked")),
            put("Appointment", "a1", cancelled("p1")),
        ],
        Ok(WriteStatus::Updated),
        "free",
    );
    check(
        vec![
            put("Appointment", "a1", appt("p1", "booked")),
            put("Appointment", "a1", cancelled("p1")),
            put("Appointment", "a2", appt("p2", "booked")),
        ],
        Ok(WriteStatus::Created),
        "busy",
    );
    // Cancelling without saying who cancelled is refused; the slot stays busy.
    check(
        vec![
            put("Appointment", "a1", appt("p1", "booked")),
            put("Appointment", "a1", appt("p1", "cancelled")),
        ],
        Err(RejectKind::Unprocessable),
        "busy",
    );
    // fulfilled -> booked is not a lifecycle transition.
    check(
        vec![
            put("Appointment", "a1", appt("p1", "fulfilled")),
            put("Appointment", "a1", appt("p1", "booked")),
        ],
        Err(RejectKind::Unprocessable),
        "busy",
    );
    // A check-in clicked in error is undone back to booked; the slot stays held.
    check(
        vec![
            put("Appointment", "a1", appt("p1", "checked-in")),
            put("Appointment", "a1", appt("p1", "booked")),
        ],
        Ok(WriteStatus::Updated),
        "busy",
    );
    // "Seen" clicked in error goes back to checked in, not to booked.
    check(
        vec![
            put("Appointment", "a1", appt("p1", "fulfilled")),
            put("Appointment", "a1", appt("p1", "checked-in")),
        ],
        Ok(WriteStatus::Updated),
        "busy",
    );
    // A proposed appointment does not hold the slot.
    check(
        vec![put("Appointment", "a1", appt("p1", "proposed"))],
        Ok(WriteStatus::Created),
        "free",
    );
    // Deleting the booked appointment frees the slot.
    check(
        vec![
            put("Appointment", "a1", appt("p1", "booked")),
            WriteOp::Delete {
                rtype: "Appointment".into(),
                id: "a1".into(),
            },
        ],
        Ok(WriteStatus::Deleted),
        "free",
    );
    // A client may not free a slot an appointment holds.
    check(
        vec![
            put("Appointment", "a1", appt("p1", "booked")),
            put(
                "Slot",
                "s1",
                json!({"schedule": {"reference": "Schedule/sch"}, "status": "free",
                       "start": "2030-01-01T09:00:00Z", "end": "2030-01-01T09:20:00Z"}),
            ),
        ],
        Err(RejectKind::Conflict),
        "busy",
    );
}

#[test]
fn integrity_rules() {
    // Reference to a missing resource.
    check(
        vec![put("Appointment", "a1", appt("nobody", "booked"))],
        Err(RejectKind::Unprocessable),
        "free",
    );
    // Duplicate NHS number.
    check(
        vec![put(
            "Patient",
            "p3",
            json!({"identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"}]}),
        )],
        Err(RejectKind::Conflict),
        "free",
    );
    // Deleting a referenced resource.
    check(
        vec![WriteOp::Delete {
            rtype: "Schedule".into(),
            id: "sch".into(),
        }],
        Err(RejectKind::Conflict),
        "free",
    );
    // If-Match with a stale version.
    check(
        vec![WriteOp::Update {
            rtype: "Patient".into(),
            id: "p2".into(),
            resource: json!({"resourceType": "Patient", "id": "p2"}),
            if_match: Some(7),
        }],
        Err(RejectKind::PreconditionFailed),
        "free",
    );
    // Delete of something missing is a no-op, not an error.
    check(
        vec![WriteOp::Delete {
            rtype: "Patient".into(),
            id: "ghost".into(),
        }],
        Ok(WriteStatus::NotFound),
        "free",
    );
}

/// `References::Off` (travelling in the command) lets a write point at what the
/// store does not hold and a delete leave references behind; a Slot that does
/// not exist still cannot be booked. `Enforce` is left out of the encoding.
#[test]
fn referential_integrity_off_travels_in_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path()).unwrap();
    let mut i = 0u64;
    let mut apply = |op: WriteOp, references: References| {
        i += 1;
        let c = Command {
            references,
            ..cmd(i as i64, CommandKind::Write(op))
        };
        match sm.apply(&[(i, &c)]).unwrap().into_iter().next().unwrap() {
            Applied::Ops(mut v) => v.pop().unwrap().map(|w| w.status).map_err(|r| r.kind),
            other => panic!("unexpected {other:?}"),
        }
    };
    for op in base() {
        apply(op, References::Enforce).unwrap();
    }
    let obs = || {
        put(
            "Observation",
            "o1",
            json!({"status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/elsewhere"}}),
        )
    };
    assert_eq!(apply(obs(), References::Enforce), Err(RejectKind::Unprocessable));
    assert_eq!(apply(obs(), References::Off), Ok(WriteStatus::Created));
    let del = || WriteOp::Delete {
        rtype: "Schedule".into(),
        id: "sch".into(),
    };
    assert_eq!(apply(del(), References::Enforce), Err(RejectKind::Conflict));
    assert_eq!(apply(del(), References::Off), Ok(WriteStatus::Deleted));
    let mut a = appt("p1", "booked");
    a["slot"] = json!([{"reference": "Slot/none"}]);
    assert_eq!(
        apply(put("Appointment", "a1", a), References::Off),
        Err(RejectKind::Unprocessable)
    );

    let enc = |r| {
        serde_json::to_string(&Command {
            references: r,
            ..cmd(1, CommandKind::Audit(vec![]))
        })
        .unwrap()
    };
    assert!(
        !enc(References::Enforce).contains("references"),
        "{}",
        enc(References::Enforce)
    );
    assert!(
        enc(References::Off).contains(r#""references":"off""#),
        "{}",
        enc(References::Off)
    );
}

#[test]
fn rejected_transaction_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path()).unwrap();
    let setup = cmd(1, CommandKind::Batch(base()));
    sm.apply(&[(1, &setup)]).unwrap();
    let before = sm.content_hash().unwrap();
    let count = |sm: &StateMachine| -> i64 {
        sm.conn()
            .query_row("SELECT COUNT(*) FROM history", [], |r| r.get(0))
            .unwrap()
    };
    let history_before = count(&sm);
    let tx = cmd(
        2,
        CommandKind::Transaction(vec![
            put("Patient", "p9", json!({"name": [{"family": "Nine"}]})),
            put("Appointment", "a1", appt("p9", "booked")),
            put("Appointment", "a2", appt("p1", "booked")), // double-books s1
        ]),
    );
    let out = sm.apply(&[(2, &tx)]).unwrap();
    assert!(matches!(&out[0], Applied::TransactionFailed(r) if r.kind == RejectKind::Conflict && r.op == Some(2)));
    assert_eq!(count(&sm), history_before, "no version of any resource was written");
    assert_eq!(slot_status(&sm), "free");
    // The only change is the audit row recording the refusal.
    let audits: i64 = sm
        .conn()
        .query_row("SELECT COUNT(*) FROM audit WHERE outcome = 4", [], |r| r.get(0))
        .unwrap();
    assert_eq!(audits, 1);
    assert_ne!(before, sm.content_hash().unwrap());
}

#[test]
fn replay_gives_identical_hash() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path()).unwrap();
    let mut log = Vec::new();
    let mut ops = base();
    ops.push(put("Appointment", "a1", appt("p1", "booked")));
    ops.push(put("Appointment", "a2", appt("p2", "booked"))); // rejected: also replayed
    ops.push(put("Appointment", "a1", cancelled("p1")));
    ops.push(put("Appointment", "a2", appt("p2", "booked")));
    ops.push(WriteOp::Delete {
        rtype: "Patient".into(),
        id: "p2".into(),
    }); // refused: referenced
    for (i, op) in ops.into_iter().enumerate() {
        log.push(((i + 1) as u64, cmd(i as i64, CommandKind::Write(op))));
    }
    log.push((
        log.len() as u64 + 1,
        cmd(
            99,
            CommandKind::Audit(vec![hale_store::AuditRecord {
                purpose: None,
                time_ms: 5,
                actor: actor(),
                action: hale_store::AuditAction::Read,
                rtype: "Patient".into(),
                id: Some("p1".into()),
                patient: Some("p1".into()),
                outcome: 0,
                detail: "GET Patient/p1".into(),
            }]),
        ),
    ));
    for (i, c) in &log {
        sm.apply(&[(*i, c)]).unwrap();
    }
    let replayed_dir = tempfile::tempdir().unwrap();
    let replayed = hale_store::propose::replay(replayed_dir.path(), &log).unwrap();
    assert_eq!(sm.content_hash().unwrap(), replayed.content_hash().unwrap());
    assert_eq!(sm.last_applied(), replayed.last_applied());
}

#[test]
fn out_of_order_entries_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path()).unwrap();
    let c = cmd(1, CommandKind::Batch(base()));
    assert!(sm.apply(&[(2, &c)]).is_err());
    assert!(sm.apply(&[(1, &c)]).is_ok());
    assert!(sm.apply(&[(1, &c)]).is_err(), "an index cannot be applied twice");
}
