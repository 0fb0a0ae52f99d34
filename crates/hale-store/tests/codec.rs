//! The command encoding against stored fixtures: old logs stay readable.
//!
//! `tests/fixtures/commands-json.jsonl` holds one command per line as Hale
//! logged them before the binary encoding (serde_json text);
//! `tests/fixtures/commands-v1.hex` holds the same commands in binary version 1.
//! Both must decode to the commands built below, and encoding them again must
//! give the version-1 bytes exactly: a change that alters the bytes needs a new
//! version, and the old one must still decode.
//!
//! To write the fixtures again after adding a sample (never after changing
//! one): `HALE_BLESS_FIXTURES=1 cargo test -p hale-store --test codec`.

use hale_store::accounts::AccountOp;
use hale_store::codec::{decode, encode, MAGIC, VERSION};
use hale_store::command::{
    Actor, AuditAction, AuditRecord, Base, Command, CommandKind, CommandPart, Policy, References, Replay, WriteOp,
};
use serde_json::json;
use std::path::PathBuf;

fn actor(user: &str) -> Actor {
    Actor {
        user: user.into(),
        role: "clinician".into(),
    }
}

fn patient() -> serde_json::Value {
    serde_json::from_str(
        r#"{"resourceType":"Patient","id":"p1","identifier":[{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"9434765919"}],
            "name":[{"family":"Ó Briain","given":["Siobhán"]}],"birthDate":"1961-02-28","multipleBirthInteger":2,
            "extension":[{"url":"http://example.org/weight","valueDecimal":71.50}],"active":true,"photo":null}"#,
    )
    .unwrap()
}

fn cmd(time_ms: i64, kind: CommandKind) -> Command {
    Command {
        time_ms,
        actor: actor("dr.who"),
        kind,
        references: References::Enforce,
    }
}

fn samples() -> Vec<Command> {
    let create = WriteOp::Create {
        rtype: "Patient".into(),
        id: "p1".into(),
        resource: patient(),
        if_none_exist: Some(vec![(
            "identifier".into(),
            "https://fhir.nhs.uk/Id/nhs-number|9434765919".into(),
        )]),
    };
    let update = WriteOp::Update {
        rtype: "Observation".into(),
        id: "o1".into(),
        resource: json!({"resourceType":"Observation","id":"o1","status":"final","valueQuantity":{"value":-0.001,"unit":"mmol/L"}}),
        if_match: Some(3),
    };
    let delete = WriteOp::Delete {
        rtype: "Appointment".into(),
        id: "a1".into(),
    };
    let audit = AuditRecord {
        time_ms: 1_764_000_000_123,
        actor: actor("clerk.one"),
        action: AuditAction::Read,
        rtype: "Patient".into(),
        id: Some("p1".into()),
        patient: Some("p1".into()),
        outcome: 0,
        detail: "GET /Patient/p1".into(),
        purpose: None,
    };
    let btg = AuditRecord {
        purpose: Some("BTG".into()),
        id: None,
        ..audit.clone()
    };
    let replay = |policy, base| Replay {
        node: 4,
        site: "Royal Alexandra".into(),
        seq: 17,
        prev_hash: "ab".repeat(32),
        hash: "cd".repeat(32),
        recorded_ms: 1_764_000_001_000,
        actor: actor("nurse.site"),
        policy,
        base,
        op: update.clone(),
    };
    let mut off = cmd(5, CommandKind::Write(delete.clone()));
    off.references = References::Off;
    vec![
        cmd(1_764_000_000_000, CommandKind::Write(create.clone())),
        cmd(1_764_000_000_001, CommandKind::Write(update.clone())),
        off,
        cmd(
            2,
            CommandKind::Transaction(vec![create.clone(), update.clone(), delete.clone()]),
        ),
        cmd(3, CommandKind::Batch(vec![update.clone()])),
        cmd(4, CommandKind::Audit(vec![audit.clone(), btg.clone()])),
        cmd(
            6,
            CommandKind::Part(CommandPart {
                group: "9f1c2d3e-0000-4000-8000-000000000001".into(),
                seq: 1,
                count: 3,
                chunk: "{\"time_ms\":6,\"actor\"".into(),
            }),
        ),
        cmd(
            7,
            CommandKind::Replay(vec![
                replay(Policy::Amend, Base::default()),
                replay(
                    Policy::Demographics,
                    Base {
                        version: Some(2),
                        pending_seq: Some(16),
                        seen: Some(patient()),
                    },
                ),
            ]),
        ),
        cmd(
            8,
            CommandKind::AuditOnce {
                node: 2,
                seq: 99,
                records: vec![audit],
            },
        ),
        cmd(
            9,
            CommandKind::Account(AccountOp::Add {
                user: "new.clerk".into(),
                role: "clerk".into(),
                name: "New Clerk".into(),
                password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
            }),
        ),
        cmd(
            10,
            CommandKind::Account(AccountOp::Disable {
                user: "old.clerk".into(),
            }),
        ),
    ]
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn old_encodings_decode_to_the_same_commands() {
    let samples = samples();
    if std::env::var_os("HALE_BLESS_FIXTURES").is_some() {
        std::fs::create_dir_all(fixture("")).unwrap();
        let json: Vec<String> = samples.iter().map(|c| serde_json::to_string(c).unwrap()).collect();
        let v1: Vec<String> = samples.iter().map(|c| hex(&encode(c))).collect();
        std::fs::write(fixture("commands-json.jsonl"), json.join("\n") + "\n").unwrap();
        std::fs::write(fixture("commands-v1.hex"), v1.join("\n") + "\n").unwrap();
    }
    let json = std::fs::read_to_string(fixture("commands-json.jsonl")).unwrap();
    let v1 = std::fs::read_to_string(fixture("commands-v1.hex")).unwrap();
    let json: Vec<&str> = json.lines().collect();
    let v1: Vec<&str> = v1.lines().collect();
    assert_eq!(json.len(), samples.len(), "one JSON fixture per sample");
    assert_eq!(v1.len(), samples.len(), "one version-1 fixture per sample");
    for (i, c) in samples.iter().enumerate() {
        assert_eq!(&decode(json[i].as_bytes()).unwrap(), c, "JSON fixture {i}");
        let bytes = unhex(v1[i]);
        assert_eq!(&decode(&bytes).unwrap(), c, "version-1 fixture {i}");
        assert_eq!(
            hex(&encode(c)),
            v1[i],
            "sample {i} no longer encodes to its version-1 fixture"
        );
        // The JSON form is what hashes and site journals are computed over.
        assert_eq!(serde_json::to_string(c).unwrap(), json[i], "sample {i}'s JSON changed");
    }
}

#[test]
fn the_binary_form_is_versioned_and_smaller_than_json() {
    for c in samples() {
        let b = encode(&c);
        assert_eq!(&b[..2], &[MAGIC, VERSION]);
        let j = serde_json::to_vec(&c).unwrap();
        assert!(
            b.len() <= j.len(),
            "{} binary bytes vs {} JSON: {c:?}",
            b.len(),
            j.len()
        );
    }
}

#[test]
fn every_byte_flip_and_truncation_is_an_error_or_a_command_never_a_panic() {
    for c in samples() {
        let b = encode(&c);
        for n in 0..b.len() {
            let _ = decode(&b[..n]);
        }
        for i in 0..b.len() {
            let mut x = b.clone();
            x[i] ^= 0x5a;
            let _ = decode(&x);
        }
    }
}
