//! The cost of encryption at rest: one store workload, timed, to run once in
//! a plain build and once with `--features sqlcipher` (README, "Encryption at
//! rest"):
//!
//! ```sh
//! cargo run --release -p hale-store --example store_cost -- 5000
//! cargo run --release -p hale-store --example store_cost --features sqlcipher -- 5000
//! ```
//!
//! Workload, on a store in a temporary directory: N Patients created, one
//! command and one commit each, as raft applies them (`LogIsDurable`: no
//! fsync per commit, so this is the CPU cost); a snapshot copy (`backup_to`);
//! N reads by id on a fresh read pool (pages decrypted as they are loaded),
//! then N more on the same pool (its page cache warm); 1,000 searches by NHS
//! number and 200 by family-name prefix; opening a read connection.

use hale_fhir::search::parse_query;
use hale_store::command::{Actor, Command, CommandKind, WriteOp};
use hale_store::query::{self, Current};
use hale_store::{db, Durability, Reader, StateMachine};
use serde_json::json;
use std::time::Instant;

const NHS_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";
const FAMILIES: [&str; 8] = [
    "Okafor",
    "Smith",
    "Jones",
    "Patel",
    "Williams",
    "Nowak",
    "Evans",
    "Quillfeather",
];

fn nhs_number(i: usize) -> String {
    let mut stem = 900_000_000 + (i as u64) * 11;
    loop {
        let digits: Vec<u8> = stem.to_string().bytes().map(|b| b - b'0').collect();
        if let Some(c) = hale_fhir::nhs::check_digit(&digits.try_into().unwrap()) {
            return format!("{stem}{c}");
        }
        stem += 1;
    }
}

fn patient(i: usize) -> Command {
    Command {
        references: Default::default(),
        time_ms: 1_700_000_000_000 + i as i64,
        actor: Actor {
            user: "bench".into(),
            role: "clinician".into(),
        },
        kind: CommandKind::Batch(vec![WriteOp::Update {
            rtype: "Patient".into(),
            id: format!("p{i}"),
            resource: json!({
                "resourceType": "Patient", "id": format!("p{i}"),
                "identifier": [{"system": NHS_SYSTEM, "value": nhs_number(i)}],
                "name": [{"family": FAMILIES[i % FAMILIES.len()], "given": ["Ada", "Grace"]}],
                "gender": if i.is_multiple_of(2) { "female" } else { "male" },
                "birthDate": format!("19{:02}-{:02}-{:02}", 30 + i % 70, 1 + i % 12, 1 + i % 28),
                "telecom": [{"system": "phone", "value": format!("07700 9{:05}", i % 100_000)}],
                "address": [{"line": [format!("{} High Street", 1 + i % 200)], "city": "Kings Lynn", "postalCode": "PE30 4ET"}]
            }),
            if_match: None,
        }]),
    }
}

fn line(what: &str, n: usize, secs: f64) {
    println!(
        "{what:<40} {n:>7} in {:>8.1} ms  {:>9.1} us/op  {:>9.0} ops/s",
        secs * 1e3,
        secs * 1e6 / n as f64,
        n as f64 / secs
    );
}

fn main() {
    let n: usize = std::env::args().nth(1).map(|a| a.parse().expect("N")).unwrap_or(5_000);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    if db::ENCRYPTION_AVAILABLE {
        db::set_key(Some(
            db::Key::from_hex("8b1f0c6e2d9a47f3b5c1e0a9d8f7e6c5b4a3928170f6e5d4c3b2a1908f7e6d5c").unwrap(),
        ))
        .unwrap();
    }
    println!(
        "store_cost: {n} patients, SQLCipher {}",
        if db::key_set() {
            "on (raw 256-bit key)"
        } else {
            "off (plain SQLite)"
        }
    );

    let mut sm = StateMachine::open_with(dir, Durability::LogIsDurable).unwrap();
    let cmds: Vec<Command> = (0..n).map(patient).collect();
    let t = Instant::now();
    for c in &cmds {
        let next = sm.last_applied() + 1;
        sm.apply(&[(next, c)]).unwrap();
    }
    line("create (one command, one commit each)", n, t.elapsed().as_secs_f64());
    sm.checkpoint().unwrap();

    let t = Instant::now();
    StateMachine::backup_to(dir, &tmp.path().join("snapshot.db")).unwrap();
    line("snapshot copy (backup_to)", 1, t.elapsed().as_secs_f64());

    let reader = Reader::open(dir, 1).unwrap();
    let order: Vec<usize> = (0..n).map(|i| (i * 7919) % n).collect();
    for pass in ["read by id, fresh pool", "read by id, warm pool"] {
        let t = Instant::now();
        reader.with(|c| {
            for &i in &order {
                match query::read(c, "Patient", &format!("p{i}")).unwrap() {
                    Some(Current::Live(_)) => {}
                    other => panic!("p{i}: {other:?}"),
                }
            }
        });
        line(pass, n, t.elapsed().as_secs_f64());
    }

    let searches = 1_000.min(n);
    let rt = hale_fhir::resource_type::ResourceType::Patient;
    let t = Instant::now();
    reader.with(|c| {
        for &i in order.iter().take(searches) {
            let q = parse_query(
                rt,
                &[("identifier".into(), format!("{NHS_SYSTEM}|{}", nhs_number(i)))],
                true,
            )
            .unwrap();
            assert_eq!(query::search(c, &q).unwrap().matches.len(), 1);
        }
    });
    line("search identifier=<NHS number>", searches, t.elapsed().as_secs_f64());

    let t = Instant::now();
    reader.with(|c| {
        for i in 0..200 {
            let q = parse_query(
                rt,
                &[
                    ("family".into(), FAMILIES[i % FAMILIES.len()][..3].to_lowercase()),
                    ("_count".into(), "50".into()),
                ],
                true,
            )
            .unwrap();
            assert!(!query::search(c, &q).unwrap().matches.is_empty());
        }
    });
    line("search family=<prefix>, 50 a page", 200, t.elapsed().as_secs_f64());

    let t = Instant::now();
    for _ in 0..100 {
        drop(
            db::open(
                &dir.join(hale_store::DB_FILE),
                hale_store::rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .unwrap(),
        );
    }
    line("open a connection (key checked)", 100, t.elapsed().as_secs_f64());

    let size = std::fs::metadata(dir.join(hale_store::DB_FILE)).unwrap().len();
    println!(
        "store file after checkpoint: {:.1} MiB",
        size as f64 / (1024.0 * 1024.0)
    );
}
