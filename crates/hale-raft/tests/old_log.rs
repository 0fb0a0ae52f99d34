//! A raft log written before the binary encoding (every entry serde_json
//! text) still opens, decodes and replays to the same record.
//!
//! `tests/fixtures/raft-json-entries.db` is the `raft.db` of a single node run
//! by the release before the binary encoding (commit 1b027ee): a Patient PUT
//! with a decimal extension and non-ASCII names, a Patient POST, an Observation
//! POST, a transaction Bundle, an update, a PUT and a DELETE. Its WAL was
//! checkpointed into the file. That release's `hale record-hash` of the node's
//! own store printed `RECORD_HASH`.

use hale_raft::log_store::LogStore;
use hale_raft::state_machine::StateMachineStore;
use hale_raft::types::{Entry, LogId};
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{EntryPayload, RaftLogReader};
use std::path::PathBuf;

const RECORD_HASH: &str = "dae03dc08af5bc76c3c806eea15b238444bbdf433fd2e93e1a805e64bf29a0cf";

fn fixture_dir() -> tempfile::TempDir {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/raft-json-entries.db");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src, dir.path().join(hale_raft::log_store::LOG_FILE)).unwrap();
    dir
}

#[tokio::test]
async fn a_log_of_json_entries_replays_to_the_record_its_release_wrote() {
    let old = fixture_dir();
    let entries = LogStore::read_all(old.path()).unwrap();
    assert_eq!(entries.len(), 10, "the fixture holds entries 0..=9");
    let commands = entries
        .iter()
        .filter_map(|e| match &e.payload {
            EntryPayload::Normal(p) => Some(p.decode().expect("every old command decodes")),
            _ => None,
        })
        .count();
    assert!(commands >= 7, "{commands} commands");

    // Replay into a new store, as a node catching up from this log would.
    let fresh = tempfile::tempdir().unwrap();
    let mut sm = StateMachineStore::open(fresh.path()).unwrap();
    sm.apply(entries.clone()).await.unwrap();
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(entries[9].log_id));
    drop(sm);
    let hash = hale_store::export::record_hash_at(fresh.path()).unwrap();
    assert_eq!(
        hash, RECORD_HASH,
        "the replayed record differs from the one the old release held"
    );
}

#[tokio::test]
async fn an_old_log_opens_and_new_entries_follow_its_json_ones() {
    let dir = fixture_dir();
    let mut log = LogStore::open(dir.path()).unwrap();
    let state = log.get_log_state().await.unwrap();
    let last: LogId = state.last_log_id.expect("the fixture is not empty");
    assert_eq!(last.index, 9);
    let old = log.try_get_log_entries(0..10).await.unwrap();
    assert_eq!(old.len(), 10);

    // Append one entry in the new frame after the JSON ones, then read the
    // mixed log back from disk.
    let EntryPayload::Normal(p) = old
        .iter()
        .rev()
        .find(|e| matches!(e.payload, EntryPayload::Normal(_)))
        .unwrap()
        .payload
        .clone()
    else {
        unreachable!()
    };
    let next = Entry {
        log_id: LogId::new(last.leader_id, 10),
        payload: EntryPayload::Normal(p.clone()),
    };
    drop(log);
    // As the writer thread stores a new entry: its frame in the next row.
    let conn = hale_store::rusqlite::Connection::open(dir.path().join(hale_raft::log_store::LOG_FILE)).unwrap();
    conn.execute(
        "INSERT INTO log(idx, entry) VALUES (10, ?1)",
        [hale_raft::frame::encode_entry(&next)],
    )
    .unwrap();
    drop(conn);
    let all = LogStore::read_all(dir.path()).unwrap();
    assert_eq!(all.len(), 11);
    let EntryPayload::Normal(back) = &all[10].payload else {
        panic!("entry 10 is a command")
    };
    assert_eq!(back.decode().unwrap(), p.decode().unwrap());
}
