//! Properties of command encoding and apply: a command survives its log
//! encoding (serde_json, as the raft log and split parts store it), corrupt
//! encodings never panic the decoder, and applying one generated command
//! sequence to two fresh stores gives the same outcomes and content hash.

use hale_store::accounts::AccountOp;
use hale_store::apply::Applied;
use hale_store::command::{Command, References};
use hale_store::split::{split_command, PART_BYTES_MIN};
use hale_store::{
    Actor, AuditAction, AuditRecord, Base, CommandKind, CommandPart, Durability, Policy, Replay, StateMachine, WriteOp,
};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn encode(c: &Command) -> Vec<u8> {
    serde_json::to_vec(c).expect("a command always encodes")
}

fn decode(b: &[u8]) -> Result<Command, serde_json::Error> {
    serde_json::from_slice(b)
}

// ---------------------------------------------------------------------------
// Arbitrary commands (for the encoding): every variant, any strings.

fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof![4 => "[a-zA-Z0-9 ._-]{0,12}", 1 => "\\PC{0,12}", 1 => "[\"\\\\/\\x00-\\x1f\u{7f}\u{2028}]{0,4}"]
}

fn arb_actor() -> impl Strategy<Value = Actor> {
    (
        arb_text(),
        prop::sample::select(vec!["clinician", "clerk", "admin", "service", "privacy-officer"]),
    )
        .prop_map(|(user, role)| Actor {
            user,
            role: role.into(),
        })
}

/// JSON of any shape: numbers as integers and as finite floats.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        arb_text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-zA-Z]{1,8}", inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<String, Value>>())),
        ]
    })
}

/// A small FHIR resource: `resourceType`, `id` and a few generated elements.
fn arb_resource() -> impl Strategy<Value = (String, String, Value)> {
    (
        prop::sample::select(vec!["Patient", "Observation", "Organization", "Encounter", "Nope"]),
        "[A-Za-z0-9.-]{1,16}",
        prop::collection::vec(("[a-z][a-zA-Z]{0,10}", arb_json()), 0..4),
    )
        .prop_map(|(rtype, id, elements)| {
            let mut m = Map::new();
            m.insert("resourceType".into(), json!(rtype));
            m.insert("id".into(), json!(id));
            for (k, v) in elements {
                m.insert(k, v);
            }
            (rtype.to_string(), id, Value::Object(m))
        })
}

fn arb_op() -> impl Strategy<Value = WriteOp> {
    prop_oneof![
        (
            arb_resource(),
            prop::option::of(prop::collection::vec((arb_text(), arb_text()), 0..3))
        )
            .prop_map(|((rtype, id, resource), if_none_exist)| WriteOp::Create {
                rtype,
                id,
                resource,
                if_none_exist
            }),
        (arb_resource(), prop::option::of(any::<u64>())).prop_map(|((rtype, id, resource), if_match)| {
            WriteOp::Update {
                rtype,
                id,
                resource,
                if_match,
            }
        }),
        (arb_text(), arb_text()).prop_map(|(rtype, id)| WriteOp::Delete { rtype, id }),
    ]
}

fn arb_audit() -> impl Strategy<Value = AuditRecord> {
    (
        any::<i64>(),
        arb_actor(),
        prop::sample::select(vec![
            AuditAction::Create,
            AuditAction::Read,
            AuditAction::Update,
            AuditAction::Delete,
            AuditAction::Execute,
        ]),
        arb_text(),
        prop::option::of(arb_text()),
        prop::option::of(arb_text()),
        any::<u8>(),
        arb_text(),
        prop::option::of(arb_text()),
    )
        .prop_map(
            |(time_ms, actor, action, rtype, id, patient, outcome, detail, purpose)| AuditRecord {
                time_ms,
                actor,
                action,
                rtype,
                id,
                patient,
                outcome,
                detail,
                purpose,
            },
        )
}

fn arb_replay() -> impl Strategy<Value = Replay> {
    (
        (
            any::<u64>(),
            arb_text(),
            any::<u64>(),
            "[0-9a-f]{0,64}",
            "[0-9a-f]{0,64}",
            any::<i64>(),
        ),
        arb_actor(),
        prop::sample::select(vec![
            Policy::Append,
            Policy::SiteStatus,
            Policy::Demographics,
            Policy::NewPatient,
            Policy::Booking,
            Policy::Amend,
        ]),
        (
            prop::option::of(any::<u64>()),
            prop::option::of(any::<u64>()),
            prop::option::of(arb_resource().prop_map(|r| r.2)),
        ),
        arb_op(),
    )
        .prop_map(
            |((node, site, seq, prev_hash, hash, recorded_ms), actor, policy, (version, pending_seq, seen), op)| {
                Replay {
                    node,
                    site,
                    seq,
                    prev_hash,
                    hash,
                    recorded_ms,
                    actor,
                    policy,
                    base: Base {
                        version,
                        pending_seq,
                        seen,
                    },
                    op,
                }
            },
        )
}

fn arb_account() -> impl Strategy<Value = AccountOp> {
    prop_oneof![
        (arb_text(), arb_text(), arb_text(), arb_text()).prop_map(|(user, role, name, password_hash)| AccountOp::Add {
            user,
            role,
            name,
            password_hash
        }),
        (arb_text(), arb_text()).prop_map(|(user, password_hash)| AccountOp::Passwd { user, password_hash }),
        arb_text().prop_map(|user| AccountOp::Disable { user }),
        arb_text().prop_map(|user| AccountOp::Enable { user }),
    ]
}

fn arb_kind() -> impl Strategy<Value = CommandKind> {
    prop_oneof![
        3 => arb_op().prop_map(CommandKind::Write),
        1 => prop::collection::vec(arb_op(), 0..4).prop_map(CommandKind::Transaction),
        1 => prop::collection::vec(arb_op(), 0..4).prop_map(CommandKind::Batch),
        1 => prop::collection::vec(arb_audit(), 0..3).prop_map(CommandKind::Audit),
        1 => ("[0-9a-f-]{0,36}", any::<u32>(), any::<u32>(), "\\PC{0,40}")
            .prop_map(|(group, seq, count, chunk)| CommandKind::Part(CommandPart { group, seq, count, chunk })),
        1 => prop::collection::vec(arb_replay(), 0..3).prop_map(CommandKind::Replay),
        1 => (any::<u64>(), any::<u64>(), prop::collection::vec(arb_audit(), 0..3))
            .prop_map(|(node, seq, records)| CommandKind::AuditOnce { node, seq, records }),
        1 => arb_account().prop_map(CommandKind::Account),
    ]
}

fn arb_command() -> impl Strategy<Value = Command> {
    (
        any::<i64>(),
        arb_actor(),
        arb_kind(),
        prop::sample::select(vec![References::Enforce, References::Off]),
    )
        .prop_map(|(time_ms, actor, kind, references)| Command {
            time_ms,
            actor,
            kind,
            references,
        })
}

/// A corruption of an encoding: cut short, one byte flipped, one byte set,
/// one byte inserted or removed.
#[derive(Debug, Clone)]
enum Damage {
    Truncate(prop::sample::Index),
    Flip(prop::sample::Index, u8),
    Set(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Remove(prop::sample::Index),
}

fn arb_damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Damage::Truncate),
        (any::<prop::sample::Index>(), 1u8..=255).prop_map(|(i, m)| Damage::Flip(i, m)),
        (
            any::<prop::sample::Index>(),
            prop::sample::select(b"\"\\{}[],:0123456789-.eEnulltrfas \x00\xff".to_vec())
        )
            .prop_map(|(i, b)| Damage::Set(i, b)),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Damage::Insert(i, b)),
        any::<prop::sample::Index>().prop_map(Damage::Remove),
    ]
}

fn damage(mut bytes: Vec<u8>, d: &Damage) -> Vec<u8> {
    if bytes.is_empty() {
        return bytes;
    }
    match d {
        Damage::Truncate(i) => bytes.truncate(i.index(bytes.len())),
        Damage::Flip(i, m) => {
            let i = i.index(bytes.len());
            bytes[i] ^= m;
        }
        Damage::Set(i, b) => {
            let i = i.index(bytes.len());
            bytes[i] = *b;
        }
        Damage::Insert(i, b) => {
            let i = i.index(bytes.len() + 1);
            bytes.insert(i, *b);
        }
        Damage::Remove(i) => {
            let i = i.index(bytes.len());
            bytes.remove(i);
        }
    }
    bytes
}

/// Whatever decodes is a command that encodes and decodes to itself.
fn check_decoded(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(c) = decode(bytes) {
        let again = encode(&c);
        let back =
            decode(&again).map_err(|e| TestCaseError::fail(format!("a re-encoded command does not decode: {e}")))?;
        prop_assert_eq!(&back, &c);
        prop_assert_eq!(encode(&back), again);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Command sequences for apply: a small world of ids, so creates, updates,
// deletes, references, If-Match, If-None-Exist and NHS numbers collide.

const T0: i64 = 1_700_000_000_000;
const NHS: &[&str] = &["9434765919", "9434765870", "4010232137"];

fn w_actor() -> impl Strategy<Value = Actor> {
    (
        prop::sample::select(vec!["alice", "bob", "hale"]),
        prop::sample::select(vec!["clinician", "clerk", "admin", "service"]),
    )
        .prop_map(|(u, r)| Actor {
            user: u.into(),
            role: r.into(),
        })
}

fn w_patient() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["Smith", "Jones", "Brontë", "O'Neil"]),
        prop::option::of(prop::sample::select(NHS.to_vec())),
        prop::sample::select(vec!["male", "female", "unknown"]),
        1930i32..2020,
    )
        .prop_map(|(family, nhs, gender, year)| {
            let mut p = json!({
                "resourceType": "Patient",
                "name": [{"family": family, "given": ["Ann"]}],
                "gender": gender,
                "birthDate": format!("{year}-02-03"),
            });
            if let Some(n) = nhs {
                p["identifier"] = json!([{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": n}]);
            }
            p
        })
}

fn w_observation() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["p1", "p2", "p3"]),
        prop::sample::select(vec!["8480-6", "8462-4", "29463-7"]),
        -1000i64..100_000,
        0u32..3,
        prop::option::of(prop::sample::select(vec!["org1", "org2"])),
    )
        .prop_map(|(patient, code, value, scale, org)| {
            let mut o = json!({
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "subject": {"reference": format!("Patient/{patient}")},
                "valueQuantity": {"value": value as f64 / 10f64.powi(scale as i32), "unit": "mmHg",
                                  "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
                "effectiveDateTime": "2024-05-01T09:30:00Z",
            });
            if let Some(org) = org {
                o["performer"] = json!([{"reference": format!("Organization/{org}")}]);
            }
            o
        })
}

fn w_resource() -> impl Strategy<Value = (String, String, Value)> {
    prop_oneof![
        (prop::sample::select(vec!["p1", "p2", "p3"]), w_patient()).prop_map(|(id, r)| (
            "Patient".into(),
            id.into(),
            r
        )),
        (prop::sample::select(vec!["o1", "o2", "o3"]), w_observation()).prop_map(|(id, r)| (
            "Observation".into(),
            id.into(),
            r
        )),
        (
            prop::sample::select(vec!["org1", "org2"]),
            "[A-Z][a-z]{2,8} (Trust|Clinic)"
        )
            .prop_map(|(id, name)| (
                "Organization".into(),
                id.into(),
                json!({"resourceType": "Organization", "name": name})
            )),
    ]
    .prop_map(|(rtype, id, mut r)| {
        r["id"] = json!(id);
        (rtype, id, r)
    })
}

fn w_op() -> impl Strategy<Value = WriteOp> {
    prop_oneof![
        1 => (
            w_resource(),
            prop::option::of(prop::sample::select(vec![
                ("identifier", "https://fhir.nhs.uk/Id/nhs-number|9434765919"),
                ("family", "smith"),
                ("code", "http://loinc.org|8480-6"),
                ("_id", "p1"),
            ]))
        )
            .prop_map(|((rtype, id, resource), cond)| WriteOp::Create {
                rtype,
                id,
                resource,
                if_none_exist: cond.map(|(k, v)| vec![(k.to_string(), v.to_string())]),
            }),
        3 => (w_resource(), prop::option::of(1u64..4)).prop_map(|((rtype, id, resource), if_match)| WriteOp::Update {
            rtype,
            id,
            resource,
            if_match
        }),
        1 => w_resource().prop_map(|(rtype, id, _)| WriteOp::Delete { rtype, id }),
    ]
}

fn w_audit() -> impl Strategy<Value = AuditRecord> {
    (
        w_actor(),
        prop::sample::select(vec!["p1", "p2", "p4"]),
        0u8..3,
        prop::option::of(Just("ETREAT".to_string())),
    )
        .prop_map(|(actor, p, o, purpose)| AuditRecord {
            time_ms: T0,
            actor,
            action: AuditAction::Read,
            rtype: "Patient".into(),
            id: Some(p.into()),
            patient: Some(p.into()),
            outcome: o * 4,
            detail: format!("GET Patient/{p}"),
            purpose,
        })
}

fn w_account() -> impl Strategy<Value = AccountOp> {
    let user = prop::sample::select(vec!["u1", "u2", "u1", "u2", "Bad User"]).prop_map(String::from);
    let hash = prop_oneof![
        4 => Just("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_string()),
        1 => Just("plain".to_string()),
    ];
    prop_oneof![
        3 => (user.clone(), prop::sample::select(vec!["clinician", "clerk", "clinician", "wizard"]), hash.clone()).prop_map(
            |(user, role, password_hash)| AccountOp::Add {
                user,
                role: role.into(),
                name: "Dr Jane Smith".into(),
                password_hash
            }
        ),
        1 => (user.clone(), hash).prop_map(|(user, password_hash)| AccountOp::Passwd { user, password_hash }),
        1 => user.clone().prop_map(|user| AccountOp::Disable { user }),
        1 => user.prop_map(|user| AccountOp::Enable { user }),
    ]
}

/// One step of a generated log, before it is turned into commands.
#[derive(Debug, Clone)]
enum Step {
    Plain(CommandKind),
    /// A batch with a large element, proposed as parts; `drop` loses one.
    Split {
        ops: Vec<WriteOp>,
        drop: Option<prop::sample::Index>,
    },
    /// Site-journal entries of node 7, chained onto the node's earlier ones;
    /// `tamper` sends a changed copy of the first entry before it.
    Replay {
        ops: Vec<WriteOp>,
        tamper: bool,
    },
}

fn w_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => w_op().prop_map(|op| Step::Plain(CommandKind::Write(op))),
        1 => prop::collection::vec(w_op(), 1..4).prop_map(|ops| Step::Plain(CommandKind::Batch(ops))),
        1 => prop::collection::vec(w_op(), 1..4).prop_map(|ops| Step::Plain(CommandKind::Transaction(ops))),
        1 => prop::collection::vec(w_audit(), 1..3).prop_map(|r| Step::Plain(CommandKind::Audit(r))),
        1 => (1u64..3, 1u64..4, prop::collection::vec(w_audit(), 1..3))
            .prop_map(|(node, seq, records)| Step::Plain(CommandKind::AuditOnce { node, seq, records })),
        1 => w_account().prop_map(|op| Step::Plain(CommandKind::Account(op))),
        1 => (prop::collection::vec(w_op(), 1..3), prop::option::weighted(0.3, any::<prop::sample::Index>()))
            .prop_map(|(ops, drop)| Step::Split { ops, drop }),
        1 => (prop::collection::vec(w_op(), 1..3), prop::bool::weighted(0.2))
            .prop_map(|(ops, tamper)| Step::Replay { ops, tamper }),
    ]
}

/// The log: each step at its own time (which may go backwards), as the
/// accepting nodes stamped it.
fn build_log(steps: &[(Step, i64, Actor, bool)]) -> Vec<Command> {
    let mut log = Vec::new();
    let (mut seq, mut head) = (0u64, String::new());
    for (n, (step, dt, actor, refs_off)) in steps.iter().enumerate() {
        let cmd = |kind| Command {
            time_ms: T0 + dt,
            actor: actor.clone(),
            kind,
            references: if *refs_off {
                References::Off
            } else {
                References::Enforce
            },
        };
        match step {
            Step::Plain(kind) => log.push(cmd(kind.clone())),
            Step::Split { ops, drop } => {
                // A large Organization first, so the batch needs parts.
                let mut ops = ops.clone();
                let div = format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{}</div>", "é".repeat(800));
                ops.insert(
                    0,
                    WriteOp::Update {
                        rtype: "Organization".into(),
                        id: format!("big{n}"),
                        resource: json!({"resourceType": "Organization", "id": format!("big{n}"), "name": "Big",
                                         "text": {"status": "generated", "div": div}}),
                        if_match: None,
                    },
                );
                let whole = cmd(CommandKind::Batch(ops));
                let mut parts = split_command(&whole, PART_BYTES_MIN, &format!("group-{n}")).expect("splits");
                assert!(parts.len() > 1, "a split batch has parts");
                if let Some(i) = drop {
                    parts.remove(i.index(parts.len()));
                }
                log.extend(parts);
            }
            Step::Replay { ops, tamper } => {
                let mut entries = Vec::new();
                for (k, op) in ops.iter().enumerate() {
                    seq += 1;
                    let mut e = Replay {
                        node: 7,
                        site: "QEH".into(),
                        seq,
                        prev_hash: head.clone(),
                        hash: String::new(),
                        recorded_ms: T0 + dt - 1000,
                        actor: actor.clone(),
                        policy: match op {
                            WriteOp::Create { rtype, .. } if rtype == "Patient" => Policy::NewPatient,
                            WriteOp::Create { .. } => Policy::Append,
                            WriteOp::Update { rtype, .. } if rtype == "Patient" => Policy::Demographics,
                            _ => Policy::Amend,
                        },
                        base: Base {
                            version: match op {
                                WriteOp::Create { .. } => None,
                                _ => Some(1),
                            },
                            pending_seq: None,
                            seen: None,
                        },
                        op: op.clone(),
                    };
                    e.hash = e.compute_hash();
                    head = e.hash.clone();
                    if *tamper && k == 0 {
                        // A changed copy sent first: refused, the chain goes on.
                        let mut bad = e.clone();
                        bad.recorded_ms += 1;
                        entries.push(bad);
                    }
                    entries.push(e);
                }
                log.push(cmd(CommandKind::Replay(entries)));
            }
        }
    }
    log
}

fn w_log() -> impl Strategy<Value = Vec<Command>> {
    prop::collection::vec(
        (w_step(), -3_600_000i64..7_200_000, w_actor(), prop::bool::weighted(0.2)),
        1..14,
    )
    .prop_map(|steps| build_log(&steps))
}

fn store() -> (StateMachine, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let sm = StateMachine::open_with(dir.path(), Durability::LogIsDurable).unwrap();
    (sm, dir)
}

fn outcome_text(a: &Applied) -> String {
    serde_json::to_string(a).expect("an outcome encodes")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// decode(encode(cmd)) == cmd, and re-encoding gives the same bytes.
    #[test]
    fn commands_round_trip(cmd in arb_command()) {
        let bytes = encode(&cmd);
        let back = decode(&bytes).map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&bytes))))?;
        prop_assert_eq!(&back, &cmd);
        prop_assert_eq!(encode(&back), bytes);
    }

    /// The binary encoding the raft log and the wire carry (`codec`):
    /// decode(encode(cmd)) == cmd, and re-encoding gives the same bytes.
    #[test]
    fn commands_round_trip_the_binary_encoding(cmd in arb_command()) {
        let bytes = hale_store::codec::encode(&cmd);
        let back = hale_store::codec::decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&back, &cmd);
        prop_assert_eq!(hale_store::codec::encode(&back), bytes);
    }

    /// A damaged binary encoding never panics the decoder: it is refused, or
    /// it is a command that encodes and decodes to itself.
    #[test]
    fn damaged_binary_encodings_never_panic(cmd in arb_command(), damages in prop::collection::vec(arb_damage(), 1..3)) {
        let mut bytes = hale_store::codec::encode(&cmd);
        for d in &damages {
            bytes = damage(bytes, d);
        }
        if let Ok(c) = hale_store::codec::decode(&bytes) {
            let again = hale_store::codec::encode(&c);
            prop_assert_eq!(hale_store::codec::decode(&again).map_err(|e| TestCaseError::fail(e.to_string()))?, c);
        }
    }

    /// A damaged encoding (cut short, a byte flipped, set, inserted or
    /// removed) never panics the decoder: it is refused, or it is a command
    /// that encodes and decodes to itself.
    #[test]
    fn damaged_encodings_never_panic(cmd in arb_command(), damages in prop::collection::vec(arb_damage(), 1..3)) {
        let mut bytes = encode(&cmd);
        for d in &damages {
            bytes = damage(bytes, d);
        }
        check_decoded(&bytes)?;
    }

    /// Arbitrary bytes, and JSON-looking text, never panic the decoder.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        "[{}\\[\\]\":,0-9a-zA-Z_ -]{0,80}".prop_map(String::into_bytes),
        "[0-9-]{1,12}[,}]?[{}\\[\\]\":,0-9a-zA-Z_ -]{0,40}".prop_map(|t| format!("{{\"time_ms\":{t}").into_bytes()),
    ]) {
        check_decoded(&bytes)?;
    }

    /// A command split into parts for the log: every part within the bound,
    /// and the parts' chunks, joined, decode to the command.
    #[test]
    fn split_parts_reassemble(cmd in arb_command(), extra in 0usize..3000, bytes_max in PART_BYTES_MIN..4096) {
        let mut cmd = cmd;
        if let CommandKind::Write(WriteOp::Create { resource, .. } | WriteOp::Update { resource, .. }) = &mut cmd.kind {
            resource["text"] = json!("é\"\\".repeat(extra));
        }
        let Ok(parts) = split_command(&cmd, bytes_max, "g") else { return Ok(()) };
        let mut joined = String::new();
        for p in &parts {
            prop_assert!(encode(p).len() <= bytes_max);
            let back = decode(&encode(p)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&back, p);
            match &p.kind {
                CommandKind::Part(part) if parts.len() > 1 => joined.push_str(&part.chunk),
                _ => joined = String::from_utf8(encode(p)).unwrap(),
            }
        }
        prop_assert_eq!(decode(joined.as_bytes()).map_err(|e| TestCaseError::fail(e.to_string()))?, cmd);
    }
}

proptest! {
    // Each case opens two SQLite stores: few cases, still a few seconds.
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The same log applied to two fresh stores, one command per call and,
    /// after a round trip through the log encoding, all in one call, gives the
    /// same outcomes and the same content hash.
    #[test]
    fn apply_is_deterministic(log in w_log()) {
        let (mut a, _da) = store();
        let mut out_a = Vec::new();
        for (i, c) in log.iter().enumerate() {
            let o = a.apply(&[(i as u64 + 1, c)]).map_err(|e| TestCaseError::fail(e.to_string()))?;
            out_a.extend(o.iter().map(outcome_text));
        }
        let decoded: Vec<Command> = log.iter().map(|c| decode(&encode(c)).unwrap()).collect();
        let (mut b, _db) = store();
        let entries: Vec<(u64, &Command)> = decoded.iter().enumerate().map(|(i, c)| (i as u64 + 1, c)).collect();
        let out_b: Vec<String> = b.apply(&entries).map_err(|e| TestCaseError::fail(e.to_string()))?.iter().map(outcome_text).collect();
        prop_assert_eq!(out_a, out_b);
        prop_assert_eq!(a.content_hash().unwrap(), b.content_hash().unwrap());
        prop_assert_eq!(a.last_applied(), b.last_applied());
    }
}
