//! History holds one copy of each version's JSON: the version whose JSON is
//! in `resources` (the live one, or the last live one of a deleted resource)
//! has none of its own. Every version reads back as written through
//! create, update, delete and re-create, and a store written by schema
//! version 1 (which kept a second copy) is migrated on open to exactly the
//! state version 2 writes.

mod common;

use common::{actor, put};
use hale_store::command::Command;
use hale_store::query::{history_instance, vread};
use hale_store::{CommandKind, StateMachine, WriteOp};
use serde_json::{json, Value};

fn apply_all(sm: &mut StateMachine, ops: Vec<WriteOp>) {
    for (i, op) in ops.into_iter().enumerate() {
        let cmd = Command {
            references: Default::default(),
            time_ms: 1_700_000_000_000 + i as i64 * 1000,
            actor: actor(),
            kind: CommandKind::Batch(vec![op]),
        };
        let next = sm.last_applied() + 1;
        sm.apply(&[(next, &cmd)]).unwrap();
    }
}

fn family(json: &Option<String>) -> Option<String> {
    let v: Value = serde_json::from_str(json.as_deref()?).ok()?;
    v["name"][0]["family"].as_str().map(str::to_string)
}

fn ops() -> Vec<WriteOp> {
    let p = |f: &str| put("Patient", "p1", json!({"name": [{"family": f}]}));
    vec![
        p("One"),
        p("Two"),
        p("Three"),
        WriteOp::Delete {
            rtype: "Patient".into(),
            id: "p1".into(),
        },
        p("Five"),
        put("Patient", "p2", json!({"name": [{"family": "Other"}]})),
        WriteOp::Delete {
            rtype: "Patient".into(),
            id: "p2".into(),
        },
    ]
}

#[test]
fn every_version_reads_back_and_only_older_versions_have_their_own_copy() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path()).unwrap();
    apply_all(&mut sm, ops());
    let c = sm.conn();
    let want = [
        (1, Some("One")),
        (2, Some("Two")),
        (3, Some("Three")),
        (4, None),
        (5, Some("Five")),
    ];
    for (v, f) in want {
        let found = vread(c, "Patient", "p1", v).unwrap().expect("version exists");
        assert_eq!(family(&found.json).as_deref(), f, "p1 version {v}");
    }
    let newest_first: Vec<Option<String>> = history_instance(c, "Patient", "p1", 10, 0)
        .unwrap()
        .iter()
        .map(|f| family(&f.json))
        .collect();
    assert_eq!(
        newest_first,
        [Some("Five"), None, Some("Three"), Some("Two"), Some("One")].map(|f| f.map(str::to_string))
    );
    // p2 was deleted: its one live version still reads back.
    assert_eq!(
        family(&vread(c, "Patient", "p2", 1).unwrap().unwrap().json).as_deref(),
        Some("Other")
    );
    assert!(vread(c, "Patient", "p2", 2).unwrap().unwrap().json.is_none());
    // One copy each: the JSON in `resources` is not also in history.
    let own_copies: i64 = c
        .query_row("SELECT COUNT(*) FROM history WHERE json IS NOT NULL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        own_copies, 3,
        "p1 versions 1 to 3; p1 v5 and p2 v1 are in resources only"
    );
}

#[test]
fn a_version_1_store_is_migrated_to_what_version_2_writes() {
    let dir = tempfile::tempdir().unwrap();
    let want = {
        let mut sm = StateMachine::open(dir.path()).unwrap();
        apply_all(&mut sm, ops());
        let want = sm.content_hash().unwrap();
        // Make it what schema version 1 wrote: every live version's JSON in history too.
        sm.conn()
            .execute_batch(
                "UPDATE history SET json = (SELECT r.json FROM resources r WHERE r.rid = history.rid)
                 WHERE json IS NULL AND method != 'DELETE';
                 UPDATE meta SET value = 1 WHERE key = 'schema_version';",
            )
            .unwrap();
        assert_ne!(sm.content_hash().unwrap(), want, "the version-1 form differs");
        want
    };
    let sm = StateMachine::open(dir.path()).unwrap();
    assert_eq!(sm.content_hash().unwrap(), want);
    let v: i64 = sm
        .conn()
        .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, hale_store::schema::SCHEMA_VERSION);
}
