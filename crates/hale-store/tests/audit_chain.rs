//! The audit hash chain: computed in apply, the same after a replay, after
//! the migration from schema version 2, and `verify` names what was changed.

mod common;

use common::{actor, put};
use hale_store::audit::{self, ChainFault};
use hale_store::command::Command;
use hale_store::{AuditAction, AuditRecord, CommandKind, StateMachine};
use serde_json::json;

fn cmd(i: i64, kind: CommandKind) -> Command {
    Command {
        references: Default::default(),
        time_ms: 1_700_000_000_000 + i * 1000,
        actor: actor(),
        kind,
    }
}

fn read(user: &str, patient: &str, purpose: Option<&str>) -> AuditRecord {
    AuditRecord {
        time_ms: 1_700_000_000_000,
        actor: hale_store::Actor {
            user: user.into(),
            role: "clinician".into(),
        },
        action: AuditAction::Read,
        rtype: "Patient".into(),
        id: Some(patient.into()),
        patient: Some(patient.into()),
        outcome: 0,
        detail: format!("GET Patient/{patient}"),
        purpose: purpose.map(str::to_string),
    }
}

/// Writes (audited in apply), read batches, and a batch applied once only.
fn log() -> Vec<(u64, Command)> {
    let mut log = Vec::new();
    let mut push = |kind| {
        let i = log.len() as u64 + 1;
        log.push((i, cmd(i as i64, kind)));
    };
    push(CommandKind::Write(put("Patient", "p1", json!({"gender": "female"}))));
    push(CommandKind::Write(put("Patient", "p2", json!({"gender": "male"}))));
    push(CommandKind::Audit(vec![
        read("dr.a", "p1", Some("TREAT")),
        read("dr.b", "p2", None),
    ]));
    push(CommandKind::AuditOnce {
        node: 1,
        seq: 1,
        records: vec![read("dr.c", "p1", Some("ETREAT"))],
    });
    push(CommandKind::AuditOnce {
        node: 1,
        seq: 1,
        records: vec![read("dr.c", "p1", Some("ETREAT"))],
    });
    push(CommandKind::Write(put("Patient", "p1", json!({"gender": "other"}))));
    log
}

fn applied(dir: &std::path::Path) -> StateMachine {
    let mut sm = StateMachine::open(dir).unwrap();
    for (i, c) in &log() {
        sm.apply(&[(*i, c)]).unwrap();
    }
    sm
}

#[test]
fn the_chain_is_computed_in_apply_and_replays_alike() {
    let dir = tempfile::tempdir().unwrap();
    let sm = applied(dir.path());
    let report = audit::verify(sm.conn()).unwrap();
    assert_eq!(report.fault, None);
    assert_eq!(report.rows, audit::count(sm.conn()).unwrap());
    assert_eq!(report.rows, 6, "three writes, three reads (the repeated batch once)");
    let head = audit::head(sm.conn()).unwrap().expect("a head");
    assert_eq!(report.head.as_ref(), Some(&head));
    // The head is the last row, and its prev_hash is the row before's hash.
    let (last, prev): (i64, Vec<u8>) = sm
        .conn()
        .query_row("SELECT seq, prev_hash FROM audit ORDER BY seq DESC LIMIT 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(last, head.seq);
    let before: Vec<u8> = sm
        .conn()
        .query_row(
            "SELECT hash FROM audit WHERE seq < ?1 ORDER BY seq DESC LIMIT 1",
            [last],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(prev, before);

    let other = tempfile::tempdir().unwrap();
    let replayed = hale_store::propose::replay(other.path(), &log()).unwrap();
    assert_eq!(audit::head(replayed.conn()).unwrap(), Some(head));
    assert_eq!(sm.content_hash().unwrap(), replayed.content_hash().unwrap());
}

#[test]
fn verify_names_an_edited_a_deleted_and_a_cut_row() {
    let seqs = |sm: &StateMachine| -> Vec<i64> {
        let mut st = sm.conn().prepare("SELECT seq FROM audit ORDER BY seq").unwrap();
        st.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    };
    // An edited user.
    let dir = tempfile::tempdir().unwrap();
    let sm = applied(dir.path());
    let s = seqs(&sm);
    let hash_before = sm.content_hash().unwrap();
    sm.conn()
        .execute("UPDATE audit SET user = 'someone.else' WHERE seq = ?1", [s[3]])
        .unwrap();
    assert_ne!(sm.content_hash().unwrap(), hash_before, "the content hash sees it too");
    let f = audit::verify(sm.conn()).unwrap().fault.expect("a fault");
    assert!(matches!(f, ChainFault::RowEdited { seq, .. } if seq == s[3]), "{f:?}");
    assert!(f.to_string().contains(&format!("audit row {}", s[3])), "{f}");

    // A deleted row in the middle: the next one no longer links.
    let dir = tempfile::tempdir().unwrap();
    let sm = applied(dir.path());
    sm.conn().execute("DELETE FROM audit WHERE seq = ?1", [s[2]]).unwrap();
    let f = audit::verify(sm.conn()).unwrap().fault.expect("a fault");
    assert!(matches!(f, ChainFault::LinkBroken { seq, .. } if seq == s[3]), "{f:?}");

    // Two rows swapped in content: the first of them no longer hashes.
    let dir = tempfile::tempdir().unwrap();
    let sm = applied(dir.path());
    sm.conn()
        .execute_batch(&format!(
            "UPDATE audit SET seq = -1 WHERE seq = {a}; UPDATE audit SET seq = {a} WHERE seq = {b}; UPDATE audit SET seq = {b} WHERE seq = -1;",
            a = s[1],
            b = s[2]
        ))
        .unwrap();
    assert!(audit::verify(sm.conn()).unwrap().fault.is_some());

    // The last row deleted: the stored head no longer matches.
    let dir = tempfile::tempdir().unwrap();
    let sm = applied(dir.path());
    sm.conn().execute("DELETE FROM audit WHERE seq = ?1", [s[5]]).unwrap();
    let f = audit::verify(sm.conn()).unwrap().fault.expect("a fault");
    assert!(matches!(f, ChainFault::HeadMismatch { .. }), "{f:?}");
}

#[test]
fn a_version_2_store_gets_the_chain_apply_would_have_written() {
    let dir = tempfile::tempdir().unwrap();
    let (want_hash, want_head) = {
        let sm = applied(dir.path());
        let want = (sm.content_hash().unwrap(), audit::head(sm.conn()).unwrap());
        // Make it what schema version 2 wrote: no purpose, no chain (and so
        // no index over purpose).
        sm.conn()
            .execute_batch(
                "DROP INDEX audit_btg_start;
                 ALTER TABLE audit DROP COLUMN hash;
                 ALTER TABLE audit DROP COLUMN prev_hash;
                 ALTER TABLE audit DROP COLUMN purpose;
                 DROP TABLE audit_chain;
                 UPDATE meta SET value = 2 WHERE key = 'schema_version';",
            )
            .unwrap();
        want
    };
    // The version-2 rows had no purpose; compare with a store whose reads had none.
    let sm = StateMachine::open(dir.path()).unwrap();
    let v: i64 = sm
        .conn()
        .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, hale_store::schema::SCHEMA_VERSION);
    let report = audit::verify(sm.conn()).unwrap();
    assert_eq!(report.fault, None);
    assert_eq!(report.rows, 6);
    // Purposes were dropped with the column, so the chain differs from the
    // original; put them back and recompute to compare like with like.
    sm.conn()
        .execute_batch(
            "UPDATE audit SET purpose = 'TREAT' WHERE user = 'dr.a';
             UPDATE audit SET purpose = 'ETREAT' WHERE user = 'dr.c';",
        )
        .unwrap();
    drop(sm);
    let conn = hale_store::rusqlite::Connection::open(dir.path().join("hale.db")).unwrap();
    conn.execute("UPDATE meta SET value = 2 WHERE key = 'schema_version'", [])
        .unwrap();
    drop(conn);
    let sm = StateMachine::open(dir.path()).unwrap();
    assert_eq!(audit::head(sm.conn()).unwrap(), want_head);
    assert_eq!(sm.content_hash().unwrap(), want_hash);
}
