//! Commands split into parts (`hale_store::split`): every part within the
//! bound, and applying the parts in order has exactly the effect of applying
//! the whole command at the last part's index; bad part sequences are refused
//! with nothing applied.

mod common;

use common::{actor, put};
use hale_store::apply::Applied;
use hale_store::command::Command;
use hale_store::split::{
    split_command, SplitError, PARTS_PER_COMMAND_MAX, PART_BYTES_MIN, SPLIT_COMMAND_BYTES_MAX, STAGED_PART_TTL_MS,
};
use hale_store::{Actor, CommandKind, CommandPart, Durability, RejectKind, StateMachine, WriteOp, COMMAND_BYTES_MAX};
use serde_json::{json, Value};

const T0: i64 = 1_700_000_000_000;

fn cmd_at(time_ms: i64, kind: CommandKind) -> Command {
    Command {
        references: Default::default(),
        time_ms,
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
        put("Patient", "p1", json!({"name": [{"family": "One"}]})),
    ]
}

fn appt(patient: &str) -> Value {
    json!({
        "status": "booked",
        "serviceCategory": [{"coding": [{"system": "https://hale.health/fhir/CodeSystem/appointment-category", "code": "outpatient"}]}],
        "priority": 4,
        "slot": [{"reference": "Slot/s1"}],
        "participant": [{"actor": {"reference": format!("Patient/{patient}")}, "status": "accepted"}]
    })
}

/// A fresh store (no fsync per commit: these tests apply thousands of entries).
fn store() -> (StateMachine, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let sm = StateMachine::open_with(dir.path(), Durability::LogIsDurable).unwrap();
    (sm, dir)
}

fn count(sm: &StateMachine, sql: &str) -> i64 {
    sm.conn().query_row(sql, [], |r| r.get(0)).unwrap()
}

fn staged(sm: &StateMachine) -> i64 {
    count(sm, "SELECT COUNT(*) FROM command_parts")
}

fn versions(sm: &StateMachine) -> i64 {
    count(sm, "SELECT COUNT(*) FROM history")
}

fn as_json(a: &Applied) -> Value {
    serde_json::to_value(a).unwrap()
}

fn part_of(c: &Command) -> &CommandPart {
    match &c.kind {
        CommandKind::Part(p) => p,
        other => panic!("not a part: {other:?}"),
    }
}

fn refusal(a: &Applied) -> String {
    match a {
        Applied::TransactionFailed(r) if r.kind == RejectKind::Invalid => r.issues[0].diagnostics.clone(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// xorshift64*: a seeded generator, so a failing case reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }
}

const PIECES: &[&str] = &[
    "a", "b", "x", " ", "Zoë", "\u{a0}", "\"", "\\", "é", "€", "😀", "\n", "\t", "\u{1}", "<", "&", "'", "/",
    "\u{2028}",
];

fn random_text(rng: &mut Rng, max_pieces: usize) -> String {
    let n = rng.below(max_pieces + 1);
    (0..n).map(|_| rng.pick(PIECES)).collect()
}

/// A Batch or Transaction of Patient creates of random sizes; some reuse an
/// earlier id, so some ops (and whole transactions) are refused.
fn random_command(rng: &mut Rng, case: usize) -> Command {
    let n = 1 + rng.below(16);
    let mut ops: Vec<WriteOp> = Vec::with_capacity(n);
    for k in 0..n {
        let id = if k > 0 && rng.below(8) == 0 {
            ops[rng.below(k)].id().to_string()
        } else {
            format!("p{case}-{k}")
        };
        let size = rng.below(8000);
        ops.push(WriteOp::Create {
            rtype: "Patient".into(),
            id: id.clone(),
            resource: json!({
                "resourceType": "Patient",
                "id": id,
                "name": [{"family": random_text(rng, size), "given": [random_text(rng, 20)]}],
                "address": [{"text": random_text(rng, size / 4)}]
            }),
            if_none_exist: None,
        });
    }
    let kind = if rng.below(2) == 0 {
        CommandKind::Batch(ops)
    } else {
        CommandKind::Transaction(ops)
    };
    Command {
        references: Default::default(),
        time_ms: T0 + case as i64 * 1000,
        actor: Actor {
            user: rng.pick(&["tester", "o\"brien", "zoë\\admin"]).into(),
            role: "clinician".into(),
        },
        kind,
    }
}

/// Apply `log` (indexes from 1) in random consecutive batches; one outcome per entry.
fn apply_in_batches(sm: &mut StateMachine, log: &[Command], rng: &mut Rng) -> Vec<Applied> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < log.len() {
        let n = (1 + rng.below(8)).min(log.len() - i);
        let entries: Vec<(u64, &Command)> = (i..i + n).map(|k| (k as u64 + 1, &log[k])).collect();
        out.extend(sm.apply(&entries).unwrap());
        i += n;
    }
    out
}

/// A store that applied `whole` at index `at` after `at - 1` entries without a command.
fn apply_whole_at(whole: &Command, at: u64) -> (StateMachine, tempfile::TempDir, Applied) {
    let (mut sm, dir) = store();
    let mut entries: Vec<(u64, Option<&Command>)> = (1..at).map(|i| (i, None)).collect();
    entries.push((at, Some(whole)));
    let out = sm.apply_entries(&entries, |_| Ok(())).unwrap();
    (sm, dir, out.into_iter().last().flatten().unwrap())
}

#[test]
fn parts_apply_exactly_like_the_whole_command() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut split_cases, mut refused_tx, mut refused_ops, mut parts_max) = (0, 0, 0, 0);
    for case in 0..300 {
        let bytes_max = PART_BYTES_MIN + rng.below(63 * 1024 + 1);
        let whole = random_command(&mut rng, case);
        let group = format!("00000000-0000-4000-8000-{case:012}");
        let parts = split_command(&whole, bytes_max, &group).unwrap();
        let encoded = serde_json::to_string(&whole).unwrap();
        let ctx = format!("case {case}: {} bytes, bound {bytes_max}", encoded.len());

        for p in &parts {
            let n = serde_json::to_vec(p).unwrap().len();
            assert!(n <= bytes_max, "{ctx}: a part of {n} bytes");
        }
        if encoded.len() <= bytes_max {
            assert_eq!(parts, vec![whole.clone()], "{ctx}: a command that fits is not split");
            continue;
        }
        split_cases += 1;
        let count = parts.len() as u32;
        assert!(count >= 2, "{ctx}");
        let mut joined = String::new();
        for (seq, p) in parts.iter().enumerate() {
            assert_eq!((p.time_ms, &p.actor), (whole.time_ms, &whole.actor), "{ctx}");
            let part = part_of(p);
            assert_eq!(
                (part.group.as_str(), part.seq, part.count),
                (group.as_str(), seq as u32, count)
            );
            joined.push_str(&part.chunk);
        }
        assert_eq!(joined, encoded, "{ctx}: the chunks are the encoding");

        let (mut split_sm, _d1) = store();
        let outcomes = apply_in_batches(&mut split_sm, &parts, &mut rng);
        for (seq, o) in outcomes[..outcomes.len() - 1].iter().enumerate() {
            assert_eq!(
                as_json(o),
                as_json(&Applied::Staged {
                    group: group.clone(),
                    seq: seq as u32,
                    count
                }),
                "{ctx}"
            );
        }
        let (whole_sm, _d2, expected) = apply_whole_at(&whole, parts.len() as u64);
        match &expected {
            Applied::TransactionFailed(_) => refused_tx += 1,
            Applied::Ops(v) if v.iter().any(|r| r.is_err()) => refused_ops += 1,
            _ => {}
        }
        parts_max = parts_max.max(parts.len());
        assert_eq!(as_json(outcomes.last().unwrap()), as_json(&expected), "{ctx}");
        assert_eq!(staged(&split_sm), 0, "{ctx}: staged parts are dropped once applied");
        assert_eq!(
            split_sm.content_hash().unwrap(),
            whole_sm.content_hash().unwrap(),
            "{ctx}"
        );
    }
    // The cases cover what they are meant to.
    assert!(split_cases >= 150, "only {split_cases} of 300 cases were split");
    assert!(
        refused_tx > 0 && refused_ops > 0,
        "{refused_tx} refused transactions, {refused_ops} batches with refusals"
    );
    assert!(parts_max >= 50, "at most {parts_max} parts");
    eprintln!("{split_cases} split, {refused_tx} refused transactions, {refused_ops} batches with refusals, at most {parts_max} parts");
}

/// (case, command, bytes_max, group, expected number of commands or error)
type SplitCase = (&'static str, Command, usize, &'static str, Result<usize, SplitError>);

#[test]
fn split_command_refusals() {
    let small = cmd_at(
        T0,
        CommandKind::Write(put("Patient", "p1", json!({"name": [{"family": "Zoë"}]}))),
    );
    let big = |chars: usize| {
        cmd_at(
            T0,
            CommandKind::Write(put("Patient", "p1", json!({"name": [{"family": "x".repeat(chars)}]}))),
        )
    };
    let part = |chars: usize| {
        cmd_at(
            T0,
            CommandKind::Part(CommandPart {
                group: "g".into(),
                seq: 0,
                count: 2,
                chunk: "x".repeat(chars),
            }),
        )
    };
    let mut long_actor = big(4000);
    long_actor.actor.user = "u".repeat(2000);

    let cases: Vec<SplitCase> = vec![
        ("small command", small.clone(), COMMAND_BYTES_MAX, "g", Ok(1)),
        (
            "small command, smallest bound",
            small.clone(),
            PART_BYTES_MIN,
            "g",
            Ok(1),
        ),
        (
            "bound too small",
            small.clone(),
            PART_BYTES_MIN - 1,
            "g",
            Err(SplitError::BytesMaxTooSmall {
                bytes_max: PART_BYTES_MIN - 1,
            }),
        ),
        ("a part that fits is kept", part(100), PART_BYTES_MIN, "g", Ok(1)),
        (
            "a part is never split again",
            part(5000),
            PART_BYTES_MIN,
            "g",
            Err(SplitError::NestedPart {
                bytes: serde_json::to_vec(&part(5000)).unwrap().len(),
                bytes_max: PART_BYTES_MIN,
            }),
        ),
        (
            "empty group",
            big(5000),
            PART_BYTES_MIN,
            "",
            Err(SplitError::EmptyGroup),
        ),
        (
            "envelope leaves no room",
            long_actor.clone(),
            2100,
            "g",
            Err(SplitError::EnvelopeTooLarge {
                envelope_bytes: 0,
                bytes_max: 2100,
            }),
        ),
        (
            "too many parts",
            big(PARTS_PER_COMMAND_MAX as usize * PART_BYTES_MIN),
            PART_BYTES_MIN,
            "g",
            Err(SplitError::TooManyParts {
                bytes_max: PART_BYTES_MIN,
            }),
        ),
        (
            "too large",
            big(SPLIT_COMMAND_BYTES_MAX),
            COMMAND_BYTES_MAX,
            "g",
            Err(SplitError::TooLarge { bytes: 0 }),
        ),
    ];
    for (name, cmd, bytes_max, group, expect) in cases {
        let got = split_command(&cmd, bytes_max, group);
        match (&got, &expect) {
            (Ok(parts), Ok(n)) => {
                assert_eq!(parts.len(), *n, "{name}");
                if *n == 1 {
                    assert_eq!(parts[0], cmd, "{name}: returned unchanged");
                }
            }
            // Sizes that depend on the encoding are not compared.
            (
                Err(SplitError::EnvelopeTooLarge { bytes_max: a, .. }),
                Err(SplitError::EnvelopeTooLarge { bytes_max: b, .. }),
            ) => {
                assert_eq!(a, b, "{name}")
            }
            (Err(SplitError::TooLarge { .. }), Err(SplitError::TooLarge { .. })) => {}
            (got, expect) => assert_eq!(got.clone().map(|v| v.len()), expect.clone(), "{name}"),
        }
    }
}

/// Setup (index 1), then `parts` one per entry; returns the store and the outcomes of the parts.
fn setup_then(parts: &[Command]) -> (StateMachine, tempfile::TempDir, Vec<Applied>) {
    let (mut sm, dir) = store();
    sm.apply(&[(1, &cmd_at(T0, CommandKind::Batch(base())))]).unwrap();
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        out.extend(sm.apply(&[(i as u64 + 2, p)]).unwrap());
    }
    (sm, dir, out)
}

/// A transaction that books slot s1 twice: its last op is refused.
fn double_booking() -> Command {
    let padding = "Zoë \"quoted\" \\ ".repeat(300);
    cmd_at(
        T0 + 1000,
        CommandKind::Transaction(vec![
            put("Patient", "p9", json!({"name": [{"family": "Nine", "text": padding}]})),
            put("Appointment", "a1", appt("p9")),
            put("Appointment", "a2", appt("p1")),
        ]),
    )
}

#[test]
fn refused_last_part_rolls_back_the_whole_transaction() {
    let whole = double_booking();
    let parts = split_command(&whole, PART_BYTES_MIN, "tx-group").unwrap();
    assert!(parts.len() >= 4, "{} parts", parts.len());

    let (before, _d0, _) = setup_then(&[]);
    let (sm, _d1, out) = setup_then(&parts);
    for o in &out[..out.len() - 1] {
        assert!(matches!(o, Applied::Staged { .. }), "{o:?}");
    }
    match out.last().unwrap() {
        Applied::TransactionFailed(r) => assert_eq!((r.kind, r.op), (RejectKind::Conflict, Some(2))),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        versions(&sm),
        versions(&before),
        "no version of any resource was written"
    );
    assert_eq!(staged(&sm), 0);
    let slot: String = sm
        .conn()
        .query_row("SELECT json FROM resources WHERE id = 's1'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(serde_json::from_str::<Value>(&slot).unwrap()["status"], "free");

    // The same as the whole transaction applied at the last part's index.
    let (mut whole_sm, _d2) = store();
    let setup = cmd_at(T0, CommandKind::Batch(base()));
    let last = parts.len() as u64 + 1;
    let mut entries: Vec<(u64, Option<&Command>)> = vec![(1, Some(&setup))];
    entries.extend((2..last).map(|i| (i, None)));
    entries.push((last, Some(&whole)));
    whole_sm.apply_entries(&entries, |_| Ok(())).unwrap();
    assert_eq!(sm.content_hash().unwrap(), whole_sm.content_hash().unwrap());

    // Replaying the log of parts reproduces the state.
    let mut log = vec![(1, setup.clone())];
    log.extend(parts.iter().enumerate().map(|(i, p)| (i as u64 + 2, p.clone())));
    let replay_dir = tempfile::tempdir().unwrap();
    let replayed = hale_store::propose::replay(replay_dir.path(), &log).unwrap();
    assert_eq!(sm.content_hash().unwrap(), replayed.content_hash().unwrap());
}

fn hand_part(group: &str, seq: u32, count: u32, chunk: &str) -> Command {
    cmd_at(
        T0 + 1000,
        CommandKind::Part(CommandPart {
            group: group.into(),
            seq,
            count,
            chunk: chunk.into(),
        }),
    )
}

#[test]
fn bad_part_sequences_are_refused_and_apply_nothing() {
    // A good transaction that creates Patient p9 and books s1 for it.
    let mut good = double_booking();
    if let CommandKind::Transaction(ops) = &mut good.kind {
        ops.pop();
    }
    let p = split_command(&good, PART_BYTES_MIN, "g").unwrap();
    let n = p.len();
    assert!(n >= 4);
    let with = |f: &dyn Fn(&mut CommandPart)| -> Command {
        let mut c = p[1].clone();
        if let CommandKind::Part(part) = &mut c.kind {
            f(part)
        }
        c
    };
    let nested = serde_json::to_string(&hand_part("inner", 0, 2, "x")).unwrap();
    let delete = WriteOp::Delete {
        rtype: "Patient".into(),
        id: "none".into(),
    };
    let too_many_ops = serde_json::to_string(&cmd_at(
        T0,
        CommandKind::Batch(vec![delete; hale_store::apply::OPS_PER_COMMAND_MAX + 1]),
    ))
    .unwrap();
    let without = |skip: usize| -> Vec<Command> {
        p.iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .map(|(_, c)| c.clone())
            .collect()
    };

    // (case, parts applied, expected words in the last outcome's refusal, staged rows left)
    let cases: Vec<(&str, Vec<Command>, &str, i64)> = vec![
        ("missing middle part", without(1), "part(s) 1 of", 0),
        ("missing first part", without(0), "part(s) 0 of", 0),
        (
            "duplicated part",
            [vec![p[0].clone(), p[0].clone()], p[1..].to_vec()].concat(),
            "part(s) 0 of",
            0,
        ),
        (
            "count changes",
            [vec![p[0].clone(), with(&|q| q.count += 1)], p[2..].to_vec()].concat(),
            "part(s) 0, 1 of",
            0,
        ),
        ("seq out of range", vec![with(&|q| q.seq = q.count)], "out of range", 0),
        ("no parts", vec![with(&|q| q.count = 0)], "out of range", 0),
        (
            "too many parts",
            vec![with(&|q| q.count = PARTS_PER_COMMAND_MAX + 1)],
            "out of range",
            0,
        ),
        (
            "undecodable",
            vec![hand_part("u", 0, 2, "{\"time_ms\":"), hand_part("u", 1, 2, "oops}")],
            "does not decode",
            0,
        ),
        (
            "nested part",
            vec![hand_part("n", 0, 1, &nested)],
            "parts do not nest",
            0,
        ),
        (
            "over the op limit",
            vec![hand_part("o", 0, 1, &too_many_ops)],
            "more than 10000",
            0,
        ),
        // The last part first: refused; the others then wait as orphans until purged.
        (
            "last part first",
            [vec![p[n - 1].clone()], p[..n - 1].to_vec()].concat(),
            "",
            n as i64 - 1,
        ),
    ];
    let (before, _d0, _) = setup_then(&[]);
    for (name, parts, words, left) in cases {
        let (sm, _d, out) = setup_then(&parts);
        let refused: Vec<String> = out
            .iter()
            .filter(|o| matches!(o, Applied::TransactionFailed(_)))
            .map(refusal)
            .collect();
        assert!(!refused.is_empty(), "{name}: {out:?}");
        if !words.is_empty() {
            let last = refusal(out.last().unwrap());
            assert!(last.contains(words), "{name}: {last}");
        }
        assert!(
            refused.iter().all(|r| r.contains("nothing of it applied")),
            "{name}: {refused:?}"
        );
        assert_eq!(versions(&sm), versions(&before), "{name}: nothing was written");
        assert_eq!(
            count(&sm, "SELECT COUNT(*) FROM audit"),
            count(&before, "SELECT COUNT(*) FROM audit"),
            "{name}"
        );
        assert_eq!(staged(&sm), left, "{name}");
    }
    // And the parts in order do apply.
    let (sm, _d, out) = setup_then(&p);
    assert!(matches!(out.last().unwrap(), Applied::Ops(v) if v.len() == 2 && v.iter().all(|r| r.is_ok())));
    assert_eq!(staged(&sm), 0);
}

#[test]
fn orphaned_parts_are_purged_an_hour_of_command_time_later() {
    let whole = double_booking();
    let parts = split_command(&whole, PART_BYTES_MIN, "orphan").unwrap();
    let n = parts.len();
    let t = whole.time_ms;
    let (mut sm, _d, out) = setup_then(&parts[..n - 1]);
    assert!(out.iter().all(|o| matches!(o, Applied::Staged { .. })));
    assert_eq!(staged(&sm), n as i64 - 1);
    let mut index = n as u64;
    let mut apply = |sm: &mut StateMachine, c: Command| {
        index += 1;
        sm.apply(&[(index, &c)]).unwrap().pop().unwrap()
    };

    // Exactly an hour later the orphans stay; a millisecond more and they go.
    let mut other = hand_part("other", 0, 3, "{");
    other.time_ms = t + STAGED_PART_TTL_MS;
    assert!(matches!(apply(&mut sm, other), Applied::Staged { .. }));
    assert_eq!(staged(&sm), n as i64);
    let mut other = hand_part("other", 1, 3, "\"x\":");
    other.time_ms = t + STAGED_PART_TTL_MS + 1;
    assert!(matches!(apply(&mut sm, other), Applied::Staged { .. }));
    assert_eq!(staged(&sm), 2, "only the other group's parts remain");

    // The orphaned command's last part, late, finds its parts gone.
    let versions_before = versions(&sm);
    let why = refusal(&apply(&mut sm, parts[n - 1].clone()));
    assert!(
        why.contains("orphan") && why.contains("never arrived or were purged"),
        "{why}"
    );
    assert_eq!(versions(&sm), versions_before);
    assert_eq!(staged(&sm), 2);
}

#[test]
fn restoring_a_snapshot_without_the_parts_table_adds_it() {
    let (mut sm, dir) = store();
    sm.apply(&[(1, &cmd_at(T0, CommandKind::Batch(base())))]).unwrap();
    let hash = sm.content_hash().unwrap();
    // A snapshot taken by a build from before command parts.
    let image = dir.path().join("old-snapshot.db");
    StateMachine::backup_to(dir.path(), &image).unwrap();
    rusqlite::Connection::open(&image)
        .unwrap()
        .execute_batch("DROP TABLE command_parts")
        .unwrap();

    let (mut restored, _d) = store();
    restored.restore_from(&image).unwrap();
    assert_eq!(restored.content_hash().unwrap(), hash);
    let parts = split_command(&double_booking(), PART_BYTES_MIN, "after-restore").unwrap();
    let out = restored.apply(&[(2, &parts[0])]).unwrap();
    assert!(matches!(out[0], Applied::Staged { seq: 0, .. }), "{out:?}");
}
