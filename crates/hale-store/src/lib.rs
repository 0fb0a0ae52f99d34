//! Hale's state machine over SQLite.
//!
//! - [`StateMachine`] owns the one write connection and applies commands.
//! - [`Reader`] is a small pool of read-only connections (WAL lets them run
//!   beside the writer).
//! - [`propose::Proposer`] is how the server reaches the log (the raft log in
//!   `hale-raft`, which calls [`StateMachine::apply_entries`] for committed entries).
//!
//! This crate knows FHIR resources as JSON documents and search indexes, but
//! not HTTP, raft internals or the wall clock.

pub mod accounts;
pub mod apply;
pub mod audit;
pub mod codec;
pub mod command;
pub mod db;
pub mod export;
pub mod hash;
pub mod overlay;
pub mod propose;
pub mod query;
pub mod schema;
pub mod split;
pub mod sync;

use crate::apply::Applied;
use crate::command::Command;
use hale_fhir::Issue;
use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

pub use rusqlite;

pub use command::{
    Actor, AuditAction, AuditRecord, Base, CommandKind, CommandPart, Policy, Replay, WriteOp, COMMAND_BYTES_MAX,
};
pub use split::{split_command, SplitError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Open(#[from] db::OpenError),
    #[error("the data directory {path} was written by schema version {found}, this build reads version {expected}; use a matching Hale build or export and re-import")]
    SchemaVersion { path: PathBuf, found: i64, expected: i64 },
    #[error("log index {got} does not follow the last applied index {last}: entries must be applied in order")]
    OutOfOrder { last: u64, got: u64 },
}

/// What a successful op wrote.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Written {
    pub rtype: String,
    pub id: String,
    pub version: u64,
    pub updated_ms: i64,
    pub status: WriteStatus,
    /// The stored JSON (None for deletes).
    pub json: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum WriteStatus {
    Created,
    Updated,
    Deleted,
    /// Conditional create matched an existing resource; nothing written.
    Existing,
    /// Delete of something that does not exist; nothing written.
    NotFound,
}

/// Why an op was refused. `kind` maps to an HTTP status in the server.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rejection {
    pub kind: RejectKind,
    pub issues: Vec<Issue>,
    /// The op's position in a batch or transaction.
    pub op: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RejectKind {
    Invalid,
    Forbidden,
    NotFound,
    Conflict,
    PreconditionFailed,
    Unprocessable,
}

/// Connection settings shared by every connection.
fn configure(conn: &Connection, cache_kib: i64) -> rusqlite::Result<()> {
    // The bundled SQLite is built with STAT4, which re-prepares a statement
    // whenever a newly bound value might change its plan: a full SQL compile
    // per search. The query planner stability guarantee keeps one plan per
    // statement; our plans are chosen by the SQL's shape anyway.
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    conn.pragma_update(None, "cache_size", -cache_kib)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_MAX);
    Ok(())
}

pub const BUSY_TIMEOUT_MS: u64 = 5_000;
pub const STATEMENT_CACHE_MAX: usize = 256;
pub const WRITER_CACHE_KIB: i64 = 32 * 1024;
/// Page cache of each read connection. The index holds every official search
/// parameter (about 17 rows per resource on the demo board), so at 8 MiB a
/// search mostly read pages back from the OS: 20% of search throughput on the
/// 100,000-patient board. `READERS_MAX` of these is 384 MiB at most.
pub const READER_CACHE_KIB: i64 = 64 * 1024;
pub const DB_FILE: &str = "hale.db";

/// The write side: applies commands in log order.
pub struct StateMachine {
    conn: Connection,
    path: PathBuf,
    /// The last applied log index; `None` before anything was applied (a raft
    /// log starts at index 0, so 0 cannot mean "nothing").
    last_applied: Option<u64>,
}

impl StateMachine {
    /// Open (or create) the store in `dir`; every commit is fsynced.
    pub fn open(dir: &Path) -> Result<StateMachine, StoreError> {
        StateMachine::open_with(dir, Durability::Fsync)
    }

    /// Open (or create) the store in `dir` with the given commit durability.
    pub fn open_with(dir: &Path, durability: Durability) -> Result<StateMachine, StoreError> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(DB_FILE);
        let conn = db::open_rw(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let sync = match durability {
            // FULL: the WAL is fsynced at every commit, so an acknowledged write survives power loss.
            Durability::Fsync => "FULL",
            // NORMAL: a commit survives a process crash; power loss may undo the last
            // commits, which the caller's durable log re-applies.
            Durability::LogIsDurable => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync)?;
        configure(&conn, WRITER_CACHE_KIB)?;
        conn.execute_batch(schema::DDL)?;
        let found: Option<i64> = conn
            .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0))
            .optional()?;
        match found {
            None => {
                conn.execute(
                    "INSERT INTO meta(key, value) VALUES ('schema_version', ?1)",
                    [schema::SCHEMA_VERSION],
                )?;
            }
            Some(v @ (1 | 2)) => migrate(&conn, v)?,
            Some(v) if v != schema::SCHEMA_VERSION => {
                return Err(StoreError::SchemaVersion {
                    path,
                    found: v,
                    expected: schema::SCHEMA_VERSION,
                })
            }
            Some(_) => {}
        }
        conn.execute_batch(schema::INDEXES_AFTER_MIGRATION)?;
        let last_applied: Option<i64> = conn
            .query_row("SELECT value FROM meta WHERE key = 'last_applied'", [], |r| r.get(0))
            .optional()?;
        Ok(StateMachine {
            conn,
            path,
            last_applied: last_applied.map(|v| v as u64),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn last_applied(&self) -> u64 {
        self.last_applied.unwrap_or(0)
    }

    /// Apply commands at consecutive log indexes after `last_applied` (the
    /// first is 1 on an empty store) in one SQLite transaction: replay, tools
    /// and tests. The raft state machine uses [`Self::apply_entries`].
    pub fn apply(&mut self, entries: &[(u64, &Command)]) -> Result<Vec<Applied>, StoreError> {
        let mut next = self.last_applied();
        for (index, _) in entries {
            if *index != next + 1 {
                return Err(StoreError::OutOfOrder {
                    last: next,
                    got: *index,
                });
            }
            next = *index;
        }
        let entries: Vec<(u64, Option<&Command>)> = entries.iter().map(|(i, c)| (*i, Some(*c))).collect();
        Ok(self
            .apply_entries(&entries, |_| Ok(()))?
            .into_iter()
            .map(|o| o.expect("every entry carries a command"))
            .collect())
    }

    /// Apply log entries of a replicated log in one SQLite transaction.
    /// Entries without a command (a raft leader's blank entry, a membership
    /// change) advance the applied index and change no state. Indexes must
    /// increase and come after `last_applied` (the raft log decides what is
    /// consecutive; its storage test suite applies sparse indexes). A store
    /// that has applied nothing accepts any first index (a raft log starts at 0).
    pub fn apply_entries(
        &mut self,
        entries: &[(u64, Option<&Command>)],
        before_commit: impl FnOnce(&Connection) -> rusqlite::Result<()>,
    ) -> Result<Vec<Option<Applied>>, StoreError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut prev = self.last_applied;
        for (index, _) in entries {
            if prev.is_some_and(|p| *index <= p) {
                return Err(StoreError::OutOfOrder {
                    last: self.last_applied(),
                    got: *index,
                });
            }
            prev = Some(*index);
        }
        let last = prev.expect("entries is not empty");
        let tx = self.conn.unchecked_transaction()?;
        let mut out = Vec::with_capacity(entries.len());
        for (index, cmd) in entries {
            out.push(match cmd {
                Some(cmd) => Some(apply::apply_command(&tx, *index, cmd)?),
                None => None,
            });
        }
        tx.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('last_applied', ?1)",
            [last as i64],
        )?;
        before_commit(&tx)?;
        tx.commit()?;
        self.last_applied = Some(last);
        Ok(out)
    }

    /// Whether any log entry has been applied (a raft log's first index is 0,
    /// so `last_applied() == 0` alone cannot tell).
    pub fn applied_any(&self) -> bool {
        self.last_applied.is_some()
    }

    /// Copy a consistent image of the store into `dest` (a new file) with the
    /// SQLite online backup API. Runs on its own read connection, in one read
    /// transaction, so writers keep going while it copies.
    pub fn backup_to(dir: &Path, dest: &Path) -> Result<(), StoreError> {
        // Both ends carry the node's key: the copy is as encrypted as the store.
        let src = db::open(&dir.join(DB_FILE), OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let mut dst = db::open_rw(dest)?;
        {
            let backup = rusqlite::backup::Backup::new(&src, &mut dst)?;
            // -1: every page in one step, which is one read transaction: a consistent image.
            backup.step(-1)?;
        }
        dst.pragma_update(None, "journal_mode", "DELETE")?;
        drop(dst);
        std::fs::File::open(dest)?.sync_all()?;
        Ok(())
    }

    /// Replace the whole state with the image in `src` (made by [`Self::backup_to`]).
    /// Readers keep their connections: the copy is one write transaction, so they
    /// see either the old state or the new one.
    pub fn restore_from(&mut self, src: &Path) -> Result<(), StoreError> {
        let src_conn = db::open(src, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        {
            let backup = rusqlite::backup::Backup::new(&src_conn, &mut self.conn)?;
            backup.step(-1)?;
        }
        let found: Option<i64> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0))
            .optional()?;
        if let Some(v @ (1 | 2)) = found {
            // Version 2 lacks the audit chain's table, which the migration fills.
            self.conn.execute_batch(schema::DDL)?;
            migrate(&self.conn, v)?;
        } else if found != Some(schema::SCHEMA_VERSION) {
            return Err(StoreError::SchemaVersion {
                path: src.to_path_buf(),
                found: found.unwrap_or(0),
                expected: schema::SCHEMA_VERSION,
            });
        }
        // A snapshot made by an older build of the same schema version may lack
        // tables added since (`command_parts`); every statement of the DDL is
        // idempotent, so this only adds what is missing.
        self.conn.execute_batch(schema::DDL)?;
        self.conn.execute_batch(schema::INDEXES_AFTER_MIGRATION)?;
        self.last_applied = meta_get(&self.conn, "last_applied")?
            .and_then(|v| v.as_i64())
            .map(|v| v as u64);
        Ok(())
    }

    /// Make everything committed so far durable in the main database file
    /// (used before a snapshot lets the replicated log be compacted).
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.conn.query_row("PRAGMA wal_checkpoint(FULL)", [], |_| Ok(()))?;
        Ok(())
    }

    /// Read through the write connection (tests, conditional logic).
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// SHA-256 over every state table in a fixed order.
    pub fn content_hash(&self) -> Result<String, StoreError> {
        Ok(hash::content_hash(&self.conn)?)
    }
}

/// Bring a store of schema version 1 or 2 to the current version, in one
/// transaction (after the DDL has run, so every table exists). Version 1
/// differs in history holding a copy of the current JSON; version 2 in audit
/// rows without `purpose` and the hash chain, which is computed here over the
/// rows in `seq` order: the same rows give the same chain on every replica.
fn migrate(conn: &Connection, from: i64) -> Result<(), StoreError> {
    let tx = conn.unchecked_transaction()?;
    if from < 2 {
        tx.execute_batch(schema::MIGRATE_1_TO_2)?;
    }
    if from < 3 {
        let has_chain: bool = tx.query_row(
            "SELECT COUNT(*) > 0 FROM pragma_table_info('audit') WHERE name = 'hash'",
            [],
            |r| r.get(0),
        )?;
        if !has_chain {
            tx.execute_batch(schema::MIGRATE_2_TO_3)?;
        }
        audit::rechain(&tx)?;
    }
    tx.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'schema_version'",
        [schema::SCHEMA_VERSION],
    )?;
    tx.commit()?;
    Ok(())
}

/// How a [`StateMachine`] commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync every commit: the store is its own record (tools, tests).
    Fsync,
    /// A durable log elsewhere (the raft log) can replay anything lost, so
    /// commits skip the fsync; [`StateMachine::checkpoint`] makes them durable.
    LogIsDurable,
}

/// Read a node-local metadata value (`None` when absent).
pub fn meta_get(conn: &Connection, key: &str) -> rusqlite::Result<Option<serde_json::Value>> {
    let v: Option<rusqlite::types::Value> = conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?;
    Ok(v.map(|v| match v {
        rusqlite::types::Value::Integer(i) => serde_json::Value::from(i),
        rusqlite::types::Value::Text(t) => serde_json::from_str(&t).unwrap_or(serde_json::Value::String(t)),
        rusqlite::types::Value::Real(f) => serde_json::Value::from(f),
        rusqlite::types::Value::Blob(b) => serde_json::from_slice(&b).unwrap_or(serde_json::Value::Null),
        rusqlite::types::Value::Null => serde_json::Value::Null,
    }))
}

/// Store a node-local metadata value as JSON text (inside the caller's transaction).
pub fn meta_put(conn: &Connection, key: &str, value: &serde_json::Value) -> rusqlite::Result<()> {
    conn.prepare_cached("INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)")?
        .execute(rusqlite::params![key, value.to_string()])?;
    Ok(())
}

/// A bounded pool of read-only connections.
pub struct Reader {
    pool: Vec<Mutex<Connection>>,
    next: AtomicUsize,
}

/// Read connections per node. Reads run on the async worker threads (two on
/// this machine class) and in a few blocking tasks; more would only add memory.
pub const READERS_MAX: usize = 6;

impl Reader {
    pub fn open(dir: &Path, connections: usize) -> Result<Reader, StoreError> {
        let path = dir.join(DB_FILE);
        let n = connections.clamp(1, READERS_MAX);
        let mut pool = Vec::with_capacity(n);
        for _ in 0..n {
            let conn = db::open(
                &path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
            )?;
            configure(&conn, READER_CACHE_KIB)?;
            pool.push(Mutex::new(conn));
        }
        Ok(Reader {
            pool,
            next: AtomicUsize::new(0),
        })
    }

    /// Run `f` on a free connection (or wait for one).
    pub fn with<R>(&self, f: impl FnOnce(&Connection) -> R) -> R {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.pool.len();
        for i in 0..n {
            if let Some(conn) = self.pool[(start + i) % n].try_lock() {
                return f(&conn);
            }
        }
        let conn = self.pool[start % n].lock();
        f(&conn)
    }

    pub fn last_applied(&self) -> Result<u64, StoreError> {
        self.with(|c| {
            let v: Option<i64> = c
                .query_row("SELECT value FROM meta WHERE key = 'last_applied'", [], |r| r.get(0))
                .optional()?;
            Ok(v.unwrap_or(0) as u64)
        })
    }

    pub fn content_hash(&self) -> Result<String, StoreError> {
        self.with(|c| Ok(hash::content_hash(c)?))
    }
}

/// The content hash of the store in `dir` and the log index it reflects,
/// read in one read transaction on a connection of its own: it never takes
/// the writer's lock, so hashing a large store does not hold up applies (the
/// store is in WAL mode, so the writer goes on meanwhile). Blocking: run it off
/// the async threads.
pub fn content_hash_at(dir: &Path) -> Result<(u64, String), StoreError> {
    let snap = export::Snapshot::open(dir)?;
    Ok((snap.last_applied(), snap.content_hash()?))
}

/// Size of the database files in bytes (main file plus WAL).
pub fn disk_bytes(dir: &Path) -> u64 {
    ["hale.db", "hale.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}
