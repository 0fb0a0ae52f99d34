//! Local staff accounts: applied from commands like any replicated state,
//! refused with a message that says what to do, and part of the content hash.

use hale_store::accounts::{self, rejection_kind, AccountOp, AccountRejection};
use hale_store::apply::Applied;
use hale_store::command::Command;
use hale_store::{Actor, CommandKind, StateMachine};

const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$0123456789abcdefghijklmnopqrstuvwxyzABCDE";

fn admin() -> Actor {
    Actor {
        user: "admin.one".into(),
        role: "admin".into(),
    }
}

fn cmd(i: i64, op: AccountOp) -> Command {
    Command {
        references: Default::default(),
        time_ms: 1_700_000_000_000 + i * 1000,
        actor: admin(),
        kind: CommandKind::Account(op),
    }
}

fn run(sm: &mut StateMachine, c: &Command) -> Result<(), String> {
    let next = sm.last_applied() + 1;
    match sm.apply(&[(next, c)]).unwrap().pop().unwrap() {
        Applied::Account(r) => r,
        other => panic!("an account command answered {other:?}"),
    }
}

fn add(user: &str, role: &str) -> AccountOp {
    AccountOp::Add {
        user: user.into(),
        role: role.into(),
        name: format!("Name of {user}"),
        password_hash: HASH.into(),
    }
}

fn script() -> Vec<Command> {
    vec![
        cmd(0, add("j.smith", "clinician")),
        cmd(1, add("a.clerk", "clerk")),
        cmd(2, add("j.smith", "admin")),
        cmd(
            3,
            AccountOp::Passwd {
                user: "j.smith".into(),
                password_hash: format!("{HASH}x"),
            },
        ),
        cmd(4, AccountOp::Disable { user: "a.clerk".into() }),
        cmd(5, AccountOp::Enable { user: "nobody".into() }),
    ]
}

#[test]
fn accounts_add_get_list() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path()).unwrap();
    run(&mut sm, &cmd(0, add("j.smith", "clinician"))).unwrap();
    run(&mut sm, &cmd(1, add("a.clerk", "clerk"))).unwrap();
    let a = accounts::get(sm.conn(), "j.smith").unwrap().expect("added");
    assert_eq!(a.role, "clinician");
    assert_eq!(a.name, "Name of j.smith");
    assert_eq!(a.password_hash, HASH);
    assert!(!a.disabled);
    assert_eq!(a.updated_ms, 1_700_000_000_000);
    assert_eq!(a.updated_by, "admin.one");
    assert!(accounts::get(sm.conn(), "nobody").unwrap().is_none());
    let users: Vec<String> = accounts::list(sm.conn()).unwrap().into_iter().map(|a| a.user).collect();
    assert_eq!(users, ["a.clerk", "j.smith"]);
}

#[test]
fn accounts_duplicate_add_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path()).unwrap();
    run(&mut sm, &cmd(0, add("j.smith", "clinician"))).unwrap();
    let before = sm.content_hash().unwrap();
    let e = run(&mut sm, &cmd(1, add("j.smith", "admin"))).unwrap_err();
    assert!(e.contains("already exists") && e.contains("hale user passwd"), "{e}");
    assert_eq!(rejection_kind(&e), AccountRejection::Exists);
    assert_eq!(sm.content_hash().unwrap(), before);
    assert_eq!(accounts::get(sm.conn(), "j.smith").unwrap().unwrap().role, "clinician");
}

#[test]
fn accounts_passwd_disable_enable() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path()).unwrap();
    run(&mut sm, &cmd(0, add("j.smith", "clinician"))).unwrap();
    let new_hash = format!("{HASH}2");
    run(
        &mut sm,
        &cmd(
            1,
            AccountOp::Passwd {
                user: "j.smith".into(),
                password_hash: new_hash.clone(),
            },
        ),
    )
    .unwrap();
    let a = accounts::get(sm.conn(), "j.smith").unwrap().unwrap();
    assert_eq!(a.password_hash, new_hash);
    assert_eq!(a.updated_ms, 1_700_000_001_000);
    run(&mut sm, &cmd(2, AccountOp::Disable { user: "j.smith".into() })).unwrap();
    assert!(accounts::get(sm.conn(), "j.smith").unwrap().unwrap().disabled);
    run(&mut sm, &cmd(3, AccountOp::Enable { user: "j.smith".into() })).unwrap();
    assert!(!accounts::get(sm.conn(), "j.smith").unwrap().unwrap().disabled);
    for op in [
        AccountOp::Passwd {
            user: "ghost".into(),
            password_hash: HASH.into(),
        },
        AccountOp::Disable { user: "ghost".into() },
        AccountOp::Enable { user: "ghost".into() },
    ] {
        let e = run(&mut sm, &cmd(4, op)).unwrap_err();
        assert_eq!(rejection_kind(&e), AccountRejection::Missing, "{e}");
        assert!(e.contains("hale user list"), "{e}");
    }
    // A hash that is not Argon2id is refused.
    let e = run(
        &mut sm,
        &cmd(
            5,
            AccountOp::Passwd {
                user: "j.smith".into(),
                password_hash: "plaintext-password".into(),
            },
        ),
    )
    .unwrap_err();
    assert_eq!(rejection_kind(&e), AccountRejection::Invalid, "{e}");
}

#[test]
fn accounts_bad_fields_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path()).unwrap();
    for user in ["", "J.Smith", ".dot", "has space", "ünï", &"a".repeat(65)] {
        let e = run(&mut sm, &cmd(0, add(user, "clinician"))).unwrap_err();
        assert!(e.contains("not valid"), "{user}: {e}");
        assert_eq!(rejection_kind(&e), AccountRejection::Invalid);
    }
    let e = run(&mut sm, &cmd(0, add("ok.user", "superuser"))).unwrap_err();
    assert!(e.contains("clinician, clerk, admin, service"), "{e}");
    let e = run(
        &mut sm,
        &cmd(
            0,
            AccountOp::Add {
                user: "ok.user".into(),
                role: "clerk".into(),
                name: "x".repeat(201),
                password_hash: HASH.into(),
            },
        ),
    )
    .unwrap_err();
    assert!(e.contains("200"), "{e}");
    let e = run(
        &mut sm,
        &cmd(
            0,
            AccountOp::Add {
                user: "ok.user".into(),
                role: "clerk".into(),
                name: "Ok".into(),
                password_hash: format!("{HASH}{}", "x".repeat(512)),
            },
        ),
    )
    .unwrap_err();
    assert!(e.contains("Argon2id"), "{e}");
    assert!(accounts::list(sm.conn()).unwrap().is_empty());
    // The longest valid name, digits first and every allowed punctuation.
    let long = format!("0a._-{}", "b".repeat(59));
    run(&mut sm, &cmd(1, add(&long, "service"))).unwrap();
}

#[test]
fn accounts_replay_gives_the_same_content_hash() {
    let mut hashes = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(dir.path()).unwrap();
        let empty = sm.content_hash().unwrap();
        let outcomes: Vec<bool> = script().iter().map(|c| run(&mut sm, c).is_ok()).collect();
        assert_eq!(outcomes, [true, true, false, true, true, false]);
        let h = sm.content_hash().unwrap();
        assert_ne!(h, empty, "accounts are part of the content hash");
        hashes.push(h);
    }
    assert_eq!(hashes[0], hashes[1]);
    // The encoding round-trips (it is what the raft log holds).
    for c in script() {
        let back: Command = serde_json::from_slice(&serde_json::to_vec(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
    let v = serde_json::to_value(AccountOp::Disable { user: "x".into() }).unwrap();
    assert_eq!(v, serde_json::json!({"op": "disable", "user": "x"}));
}
