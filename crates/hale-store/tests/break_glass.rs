//! Break-glass episodes are audit rows: the start row is the episode, a
//! privacy officer's row closes its review, and the queries that find them
//! use their own partial indexes rather than scanning the trail.

mod common;

use common::{actor, put};
use hale_store::audit::{self, BTG};
use hale_store::command::Command;
use hale_store::{AuditAction, AuditRecord, CommandKind, StateMachine};
use serde_json::json;

const T0: i64 = 1_700_000_000_000;
const HOUR: i64 = 3_600_000;

fn cmd(i: i64, kind: CommandKind) -> Command {
    Command {
        references: Default::default(),
        time_ms: T0 + i * 1000,
        actor: actor(),
        kind,
    }
}

fn row(
    user: &str,
    role: &str,
    rtype: &str,
    id: &str,
    patient: &str,
    detail: String,
    purpose: Option<&str>,
) -> AuditRecord {
    AuditRecord {
        time_ms: T0,
        actor: hale_store::Actor {
            user: user.into(),
            role: role.into(),
        },
        action: AuditAction::Execute,
        rtype: rtype.into(),
        id: Some(id.into()),
        patient: Some(patient.into()),
        outcome: 0,
        detail,
        purpose: purpose.map(str::to_string),
    }
}

#[test]
fn episodes_their_window_and_their_review() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path()).unwrap();
    sm.apply(&[(
        1,
        &cmd(1, CommandKind::Write(put("Patient", "b", json!({"gender": "female"})))),
    )])
    .unwrap();
    let start = row(
        "dr.x",
        "clinician",
        "Patient",
        "b",
        "b",
        audit::break_glass_detail(T0 + 4 * HOUR, "unconscious in ED"),
        Some(BTG),
    );
    let mut read = start.clone();
    read.action = AuditAction::Read;
    read.detail = "GET Observation/o [break-glass: unconscious in ED]".into();
    sm.apply(&[(2, &cmd(2, CommandKind::Audit(vec![start, read])))])
        .unwrap();
    let c = sm.conn();
    let list = audit::break_glass_list(c, Some(true), None, None, 10).unwrap();
    assert_eq!(list.len(), 1);
    let e = &list[0];
    assert_eq!(
        (e.user.as_str(), e.patient.as_str(), e.reason.as_str()),
        ("dr.x", "b", "unconscious in ED")
    );
    assert_eq!(e.until_ms, T0 + 4 * HOUR);
    assert_eq!(
        audit::break_glass_accesses(c, e, 100).unwrap().len(),
        2,
        "the start and one read"
    );
    // Running inside its window, for its user and patient only.
    let active = |user: &str, patient: &str, at: i64| {
        audit::break_glass_active(c, user, patient, at, 72 * HOUR)
            .unwrap()
            .is_some()
    };
    assert!(active("dr.x", "b", T0 + HOUR));
    assert!(!active("dr.x", "b", T0 + 4 * HOUR), "ended");
    assert!(!active("dr.x", "b", T0 - 1), "not before it began");
    assert!(!active("dr.y", "b", T0 + HOUR), "another user");
    assert!(!active("dr.x", "c", T0 + HOUR), "another patient");
    // The rendered start event: DCM security alert, emergency override started.
    let ev = audit::event(c, e.seq).unwrap().unwrap();
    let v: serde_json::Value = serde_json::from_str(ev.json.as_deref().unwrap()).unwrap();
    assert_eq!(v["type"]["code"], "110113");
    assert_eq!(v["subtype"][0]["code"], "110127");
    assert_eq!(v["purposeOfEvent"][0]["coding"][0]["code"], "BTG");
    // Closing the review.
    let close = row(
        "po.p",
        "privacy-officer",
        "AuditEvent",
        &e.seq.to_string(),
        "b",
        format!("{}: justified", audit::BREAK_GLASS_CLOSE),
        None,
    );
    sm.apply(&[(3, &cmd(3, CommandKind::Audit(vec![close])))]).unwrap();
    let c = sm.conn();
    assert!(audit::break_glass_list(c, Some(true), None, None, 10)
        .unwrap()
        .is_empty());
    let closed = audit::break_glass_list(c, Some(false), None, None, 10).unwrap();
    let by = closed[0].closed.as_ref().expect("closed");
    assert_eq!((by.user.as_str(), by.note.as_str()), ("po.p", "justified"));
    // The review queries use the partial indexes.
    let plan = |sql: &str| -> String {
        let mut st = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows: Vec<String> = st
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        rows.join("; ")
    };
    let p = plan("SELECT seq FROM audit WHERE action = 'E' AND rtype = 'Patient' AND purpose = 'BTG' AND detail LIKE '$break-glass %' ORDER BY seq DESC");
    assert!(p.contains("audit_btg_start"), "{p}");
    let p = plan("SELECT seq FROM audit WHERE action = 'E' AND rtype = 'AuditEvent' AND res_id = '5' AND detail LIKE '$break-glass-close%'");
    assert!(p.contains("audit_btg_close"), "{p}");
}
