//! Encryption at rest (`--features sqlcipher`): with a key, no NHS number
//! or family name of a patient written to the store appears in any file
//! under the data directory — the store, its WAL while the writer is open,
//! a snapshot copy, and another file opened through `db::open` as the raft
//! log and the site journal are — and the store opens only with its key.
//! The same workload written without a key is scanned too, and there the
//! numbers must be found: the scan and the workload can see plaintext.
//!
//! One test function: the key is process-wide (`db::set_key`).
#![cfg(feature = "sqlcipher")]

mod common;

use common::{actor, put};
use hale_store::command::Command;
use hale_store::db::{self, Key};
use hale_store::query::Current;
use hale_store::rusqlite::OpenFlags;
use hale_store::{CommandKind, Durability, Reader, StateMachine, StoreError};
use serde_json::json;
use std::path::{Path, PathBuf};

const KEY_HEX: &str = "8b1f0c6e2d9a47f3b5c1e0a9d8f7e6c5b4a3928170f6e5d4c3b2a1908f7e6d5c";
const WRONG_HEX: &str = "0000000000000000000000000000000000000000000000000000000000000001";
const FAMILY: &str = "Quillfeather";
const PATIENTS: usize = 40;

/// Valid (modulus 11) test NHS numbers in the 999 range, which NHS England
/// keeps for testing.
fn nhs_numbers(n: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut stem: u64 = 999_000_001;
    while out.len() < n {
        let digits: Vec<u8> = stem.to_string().bytes().map(|b| b - b'0').collect();
        let nine: [u8; 9] = digits.try_into().unwrap();
        if let Some(check) = hale_fhir::nhs::check_digit(&nine) {
            let s = format!("{stem}{check}");
            assert!(hale_fhir::nhs::is_valid(&s), "{s}");
            out.push(s);
        }
        stem += 7;
    }
    out
}

fn patient_command(i: usize, nhs: &str) -> Command {
    Command {
        references: Default::default(),
        time_ms: 1_700_000_000_000 + i as i64 * 1000,
        actor: actor(),
        kind: CommandKind::Batch(vec![put(
            "Patient",
            &format!("p{i}"),
            json!({
                "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}],
                "name": [{"family": FAMILY, "given": ["Ada"]}],
                "birthDate": "1980-02-01"
            }),
        )]),
    }
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// What each needle would look like on disk: plain ASCII, as a JSON string,
/// as the JSON member the resource holds, and the name in the search index's
/// lower case.
fn needles(numbers: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for n in numbers {
        out.push(n.clone());
        out.push(format!("\"{n}\""));
        out.push(format!("\"value\":\"{n}\""));
    }
    out.push(FAMILY.to_string());
    out.push(FAMILY.to_lowercase());
    out
}

/// (file, needle) pairs found.
fn scan(dir: &Path, numbers: &[String]) -> Vec<(PathBuf, String)> {
    let needles = needles(numbers);
    let mut found = Vec::new();
    let mut first = [false; 256];
    for n in &needles {
        first[n.as_bytes()[0] as usize] = true;
    }
    for f in files(dir) {
        let bytes = std::fs::read(&f).unwrap();
        // Byte by byte; the needles are compared only where one could start.
        let mut hits = std::collections::BTreeSet::new();
        for i in (0..bytes.len()).filter(|&i| first[bytes[i] as usize]) {
            for n in &needles {
                if n.as_bytes()[0] == bytes[i] && bytes[i..].starts_with(n.as_bytes()) {
                    hits.insert(n.clone());
                }
            }
        }
        found.extend(hits.into_iter().map(|n| (f.clone(), n)));
    }
    found
}

/// Write the workload into `data` and, with the writer still open (so the WAL
/// holds the last commits), make a snapshot copy and a raft-log-like file;
/// returns the scan of every file and the names of the files present.
fn write_and_scan(data: &Path, numbers: &[String]) -> (Vec<(PathBuf, String)>, Vec<String>) {
    let mut sm = StateMachine::open_with(data, Durability::LogIsDurable).unwrap();
    for (i, nhs) in numbers.iter().enumerate() {
        let cmd = patient_command(i, nhs);
        let next = sm.last_applied() + 1;
        sm.apply(&[(next, &cmd)]).unwrap();
    }
    // A snapshot as the raft state machine makes one (backup_to), while the writer runs.
    std::fs::create_dir_all(data.join("snapshots")).unwrap();
    StateMachine::backup_to(data, &data.join("snapshots/snap.db")).unwrap();
    // A file opened as the raft log and the journal open theirs, holding a
    // command's bytes (the raft log stores each command as JSON).
    let log = db::open_rw(&data.join("raft.db")).unwrap();
    log.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE log(idx INTEGER PRIMARY KEY, entry BLOB NOT NULL);")
        .unwrap();
    for (i, nhs) in numbers.iter().enumerate() {
        let entry = serde_json::to_vec(&patient_command(i, nhs)).unwrap();
        log.execute("INSERT INTO log(idx, entry) VALUES (?1, ?2)", (i as i64, entry))
            .unwrap();
    }
    // Reads through the pool see the data.
    let reader = Reader::open(data, 2).unwrap();
    let read = reader.with(|c| hale_store::query::read(c, "Patient", "p0").unwrap());
    assert!(live_json(read).contains(&numbers[0]));
    let wal = std::fs::metadata(data.join("hale.db-wal"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(
        wal > 0,
        "the store's WAL holds the last commits while the writer is open"
    );
    let names = files(data)
        .iter()
        .map(|f| f.strip_prefix(data).unwrap().display().to_string())
        .collect();
    let found = scan(data, numbers);
    drop((sm, log, reader));
    (found, names)
}

/// The JSON of a live resource read back.
fn live_json(c: Option<Current>) -> String {
    match c {
        Some(Current::Live(found)) => found.json.expect("a live resource has its JSON"),
        other => panic!("not a live resource: {other:?}"),
    }
}

/// The store's bytes: its file and its WAL (if any).
fn sha(store: &Path) -> Vec<u8> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(std::fs::read(store).unwrap());
    h.update(std::fs::read(store.with_extension("db-wal")).unwrap_or_default());
    h.finalize().to_vec()
}

fn open_error(data: &Path) -> String {
    match StateMachine::open(data) {
        Ok(_) => panic!("the store at {} opened", data.display()),
        Err(e @ StoreError::Open(_)) => e.to_string(),
        Err(e) => panic!("not an open error: {e}"),
    }
}

#[test]
fn no_patient_data_in_any_file_and_only_the_key_opens_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let numbers = nhs_numbers(PATIENTS);

    // Control: without a key, the scan finds the numbers in the store's files.
    db::set_key(None).unwrap();
    let plain = tmp.path().join("plain");
    let (found, _) = write_and_scan(&plain, &numbers);
    for f in ["hale.db-wal", "snapshots/snap.db", "raft.db-wal"] {
        assert!(
            found.iter().any(|(p, _)| p.ends_with(f)),
            "the plaintext control must show patient data in {f}: {found:?}"
        );
    }

    // With the key (read from a file, as `[store] key_file`): nothing.
    let key_file = tmp.path().join("store.key");
    std::fs::write(&key_file, format!("{KEY_HEX}\n")).unwrap();
    db::use_key_file(&key_file).unwrap();
    assert!(db::key_set());
    let data = tmp.path().join("data");
    let (found, names) = write_and_scan(&data, &numbers);
    assert!(found.is_empty(), "patient data in plaintext on disk: {found:?}");
    for f in ["hale.db", "hale.db-wal", "snapshots/snap.db", "raft.db", "raft.db-wal"] {
        assert!(names.iter().any(|n| n == f), "{f} was written and scanned: {names:?}");
    }
    let after_close = scan(&data, &numbers);
    assert!(after_close.is_empty(), "after the writer closed: {after_close:?}");

    let store = data.join(hale_store::DB_FILE);
    let before = sha(&store);

    // A wrong key: a clear error naming the file; the store is untouched.
    db::set_key(Some(Key::from_hex(WRONG_HEX).unwrap())).unwrap();
    let e = open_error(&data);
    assert!(
        e.contains("cannot be opened with this key: wrong key, or the store is not encrypted"),
        "{e}"
    );
    assert!(e.contains(&store.display().to_string()), "{e}");
    assert!(Reader::open(&data, 1).is_err());
    let e = db::check_dir(&data).unwrap_err().to_string();
    assert!(
        e.contains(&store.display().to_string()) && e.contains("wrong key"),
        "{e}"
    );
    assert!(hale_store::export::Snapshot::open(&data).is_err());
    let snap = data.join("snapshots/snap.db");
    let e = db::open(&snap, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap_err()
        .to_string();
    assert!(e.contains("wrong key"), "{e}");
    assert_eq!(sha(&store), before, "a failed open changed the store");

    // No key: refused too, saying a key is needed.
    db::set_key(None).unwrap();
    let e = open_error(&data);
    assert!(e.contains("cannot be opened without a key"), "{e}");
    assert!(e.contains(&store.display().to_string()), "{e}");
    assert_eq!(sha(&store), before, "a failed open changed the store");

    assert!(db::check_dir(&data).is_err());

    // A key on a store written without one: refused, not silently read or replaced.
    db::set_key(Some(Key::from_hex(KEY_HEX).unwrap())).unwrap();
    let e = open_error(&plain);
    assert!(e.contains("wrong key, or the store is not encrypted"), "{e}");

    // The right key reads everything back, and the snapshot restores into a new store.
    db::check_dir(&data).unwrap();
    let sm = StateMachine::open(&data).unwrap();
    assert_eq!(sm.last_applied(), PATIENTS as u64);
    for (i, nhs) in numbers.iter().enumerate() {
        let p = live_json(hale_store::query::read(sm.conn(), "Patient", &format!("p{i}")).unwrap());
        assert!(p.contains(nhs.as_str()) && p.contains(FAMILY), "{p}");
    }
    let hash = sm.content_hash().unwrap();
    drop(sm);
    let restored_dir = tmp.path().join("restored");
    let mut restored = StateMachine::open(&restored_dir).unwrap();
    restored.restore_from(&snap).unwrap();
    assert_eq!(restored.content_hash().unwrap(), hash);
    drop(restored);
    let found = scan(&restored_dir, &numbers);
    assert!(
        found.is_empty(),
        "patient data in plaintext in the restored store: {found:?}"
    );

    // A key file that is not a key is refused before anything opens.
    std::fs::write(&key_file, "correct horse battery staple\n").unwrap();
    let e = db::use_key_file(&key_file).unwrap_err().to_string();
    assert!(e.contains("64 hexadecimal characters"), "{e}");
    db::set_key(None).unwrap();
}
