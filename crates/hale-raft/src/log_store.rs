//! The raft log, durable in its own SQLite file (`raft.db`).
//!
//! Why SQLite and not a hand-written segment file: the node already trusts
//! SQLite for its state, WAL mode gives crash-atomic appends with one fsync per
//! batch (`synchronous=FULL`), truncation and purging are single statements
//! that cannot leave a hole, and the file can be inspected with the `sqlite3`
//! shell during an incident. openraft hands the log whole batches of entries,
//! so one transaction (one fsync) covers every entry the leader gathered while
//! the previous append was flushing: group commit comes for free.
//!
//! A separate file from the state machine keeps the two writers from
//! contending for one SQLite write lock, and lets the state machine commit
//! without fsync (the log replays anything a power cut undoes).

use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig, Vote};
use hale_store::rusqlite::{self, params, Connection, OptionalExtension};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, RaftLogReader, StorageIOError};
use parking_lot::Mutex;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const LOG_FILE: &str = "raft.db";

/// Entries returned by one read, so a lagging follower is fed in bounded steps.
pub const READ_ENTRIES_MAX: u64 = 4_096;

const DDL: &str = "
CREATE TABLE IF NOT EXISTS log(idx INTEGER PRIMARY KEY, entry BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS kv(key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
";

fn open_conn(path: &Path, write: bool) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_millis(hale_store::BUSY_TIMEOUT_MS))?;
    if write {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: the WAL is fsynced at every commit; an appended entry survives power loss.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(DDL)?;
    }
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

fn io_err(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageError::IO {
        source: StorageIOError::new(subject, verb, AnyError::error(e.to_string())),
    }
}

fn read_err(e: impl std::fmt::Display) -> StorageError {
    io_err(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn write_err(e: impl std::fmt::Display) -> StorageError {
    io_err(ErrorSubject::Logs, ErrorVerb::Write, e)
}

fn decode(idx: i64, bytes: &[u8]) -> Result<Entry, StorageError> {
    serde_json::from_slice(bytes).map_err(|e| io_err(ErrorSubject::LogIndex(idx as u64), ErrorVerb::Read, e))
}

/// The raft log store. Cloning shares the one write connection.
#[derive(Clone)]
pub struct LogStore {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

impl LogStore {
    pub fn open(dir: &Path) -> Result<LogStore, StorageError> {
        std::fs::create_dir_all(dir).map_err(write_err)?;
        let path = dir.join(LOG_FILE);
        let conn = open_conn(&path, true).map_err(write_err)?;
        Ok(LogStore {
            path,
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn kv_get<T: serde::de::DeserializeOwned>(conn: &Connection, key: &str) -> Result<Option<T>, StorageError> {
        let v: Option<Vec<u8>> = conn
            .query_row("SELECT value FROM kv WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(read_err)?;
        match v {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b).map(Some).map_err(read_err),
        }
    }

    /// Run a write on the connection off the async threads (it fsyncs).
    async fn blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<R, StorageError> + Send + 'static,
    ) -> Result<R, StorageError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || f(&mut conn.lock()))
            .await
            .map_err(|e| write_err(std::io::Error::other(e.to_string())))?
    }

    /// Every entry in the log, for tools that replay it (tests, `hale` diagnostics).
    pub fn read_all(dir: &Path) -> Result<Vec<Entry>, StorageError> {
        let conn = open_conn(&dir.join(LOG_FILE), false).map_err(read_err)?;
        let mut stmt = conn
            .prepare("SELECT idx, entry FROM log ORDER BY idx")
            .map_err(read_err)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
            .map_err(read_err)?;
        let mut out = Vec::new();
        for row in rows {
            let (idx, bytes) = row.map_err(read_err)?;
            out.push(decode(idx, &bytes)?);
        }
        Ok(out)
    }
}

fn range_to_sql<RB: RangeBounds<u64>>(range: &RB) -> (i64, i64) {
    let lo = match range.start_bound() {
        Bound::Included(x) => *x as i64,
        Bound::Excluded(x) => *x as i64 + 1,
        Bound::Unbounded => 0,
    };
    let hi = match range.end_bound() {
        Bound::Included(x) => (*x).min(i64::MAX as u64) as i64,
        Bound::Excluded(x) => (*x as i64).saturating_sub(1),
        Bound::Unbounded => i64::MAX,
    };
    (lo, hi)
}

fn read_range(conn: &Connection, lo: i64, hi: i64) -> Result<Vec<Entry>, StorageError> {
    let hi = hi.min(lo.saturating_add(READ_ENTRIES_MAX as i64 - 1));
    let mut stmt = conn
        .prepare_cached("SELECT idx, entry FROM log WHERE idx >= ?1 AND idx <= ?2 ORDER BY idx")
        .map_err(read_err)?;
    let rows = stmt
        .query_map(params![lo, hi], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
        .map_err(read_err)?;
    let mut out = Vec::new();
    for row in rows {
        let (idx, bytes) = row.map_err(read_err)?;
        let e = decode(idx, &bytes)?;
        assert_eq!(
            e.log_id.index, idx as u64,
            "raft log row {idx} holds entry {}",
            e.log_id
        );
        out.push(e);
    }
    Ok(out)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (lo, hi) = range_to_sql(&range);
        read_range(&self.conn.lock(), lo, hi)
    }
}

/// A read handle for replication streams: its own connection, so reads run
/// beside appends (WAL readers never block the writer).
pub struct LogReader {
    conn: Mutex<Connection>,
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (lo, hi) = range_to_sql(&range);
        read_range(&self.conn.lock(), lo, hi)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let conn = self.conn.lock();
        let last: Option<Vec<u8>> = conn
            .query_row("SELECT entry FROM log ORDER BY idx DESC LIMIT 1", [], |r| r.get(0))
            .optional()
            .map_err(read_err)?;
        let purged: Option<LogId> = Self::kv_get(&conn, "purged")?;
        let last_log_id = match last {
            Some(b) => Some(decode(-1, &b)?.log_id),
            None => purged,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        let conn = match open_conn(&self.path, false) {
            Ok(c) => c,
            Err(e) => panic!("cannot open a read connection to {}: {e}", self.path.display()),
        };
        LogReader { conn: Mutex::new(conn) }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(vote).map_err(write_err)?;
        self.blocking(move |c| {
            c.execute("INSERT OR REPLACE INTO kv(key, value) VALUES ('vote', ?1)", [bytes])
                .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
            Ok(())
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Self::kv_get(&self.conn.lock(), "vote")
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut rows = Vec::new();
        for e in entries {
            rows.push((e.log_id.index as i64, serde_json::to_vec(&e).map_err(write_err)?));
        }
        if rows.is_empty() {
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        let res = self
            .blocking(move |c| {
                let tx = c.transaction().map_err(write_err)?;
                {
                    // The log must stay gap-free: the first new entry follows the last one.
                    let last: Option<i64> = tx
                        .query_row("SELECT MAX(idx) FROM log", [], |r| r.get(0))
                        .map_err(write_err)?;
                    if let Some(last) = last {
                        assert_eq!(rows[0].0, last + 1, "raft log append would leave a hole after {last}");
                    }
                    let mut stmt = tx
                        .prepare_cached("INSERT OR REPLACE INTO log(idx, entry) VALUES (?1, ?2)")
                        .map_err(write_err)?;
                    for (idx, bytes) in &rows {
                        stmt.execute(params![idx, bytes]).map_err(write_err)?;
                    }
                }
                tx.commit().map_err(write_err)?;
                Ok(())
            })
            .await;
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let idx = log_id.index as i64;
        self.blocking(move |c| {
            c.execute("DELETE FROM log WHERE idx >= ?1", [idx]).map_err(write_err)?;
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(&log_id).map_err(write_err)?;
        let idx = log_id.index as i64;
        self.blocking(move |c| {
            let tx = c.transaction().map_err(write_err)?;
            if let Some(prev) = Self::kv_get::<LogId>(&tx, "purged")? {
                assert!(prev <= log_id, "purge moves backwards: {prev} then {log_id}");
            }
            tx.execute("INSERT OR REPLACE INTO kv(key, value) VALUES ('purged', ?1)", [bytes])
                .map_err(write_err)?;
            tx.execute("DELETE FROM log WHERE idx <= ?1", [idx])
                .map_err(write_err)?;
            tx.commit().map_err(write_err)?;
            Ok(())
        })
        .await
    }
}
