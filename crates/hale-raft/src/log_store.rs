//! The raft log, durable in its own SQLite file (`raft.db`).
//!
//! Why SQLite and not a hand-written segment file: the node already trusts
//! SQLite for its state, WAL mode gives crash-atomic appends with one fsync per
//! batch (`synchronous=FULL`), truncation and purging are single statements
//! that cannot leave a hole, and the file can be inspected with the `sqlite3`
//! shell during an incident.
//!
//! `append` does not wait for the disk: it puts the entries in an in-memory
//! cache (so they are readable at once, as openraft requires) and queues them
//! for a writer thread, which commits every queued append in one transaction
//! (one fsync) and then calls openraft back. So raft's core keeps replicating
//! and committing while the disk syncs, and appends that arrive during a sync
//! share the next one. Truncate, purge and vote go through the same queue, so
//! they happen in order with the appends.
//!
//! A separate file from the state machine keeps the two writers from
//! contending for one SQLite write lock, and lets the state machine commit
//! without fsync (the log replays anything a power cut undoes).

use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig, Vote};
use hale_store::rusqlite::{params, Connection, OptionalExtension};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, RaftLogReader, StorageIOError};
use parking_lot::Mutex;
use std::collections::BTreeMap;
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

fn open_conn(path: &Path, write: bool) -> Result<Connection, hale_store::StoreError> {
    // Through the store's opener: the log holds every command, so it carries the node's key.
    let conn = hale_store::db::open_rw(path)?;
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

/// Decode one stored log entry (as [`LogStore::read_raw`] returns it), in
/// the binary frame ([`crate::frame`]) or the JSON older releases wrote.
pub fn decode_entry(idx: u64, bytes: &[u8]) -> Result<Entry, StorageError> {
    decode(idx as i64, bytes.to_vec())
}

fn decode(idx: i64, bytes: Vec<u8>) -> Result<Entry, StorageError> {
    crate::frame::decode_entry(bytes::Bytes::from(bytes))
        .map_err(|e| io_err(ErrorSubject::LogIndex(idx as u64), ErrorVerb::Read, e))
}

/// Appended entries that may not be on disk yet, so that they are readable
/// the moment `append` returns (openraft requires it) while the fsync runs in
/// the background. An entry leaves the cache once its batch is durable.
/// Each entry is kept with its encoded size, so reads can stop at a byte bound.
type Cache = Arc<Mutex<BTreeMap<u64, (Entry, usize)>>>;

/// Most entry bytes one replication read returns (at least one entry): the
/// network sends a link-sized prefix of them, so reading far more would only
/// be decoded and dropped.
pub const REPLICATION_READ_BYTES_MAX: usize = 2 * 1024 * 1024;

/// Work run on the writer's connection (truncate, purge, vote).
type Work = Box<dyn FnOnce(&mut Connection) -> Result<(), StorageError> + Send>;
/// Rows of one append: index, log id, encoded entry.
type AppendRows = Vec<(u64, LogId, Vec<u8>)>;

/// Work for the writer thread, done in order.
enum Job {
    Append {
        rows: AppendRows,
        callback: LogFlushed<TypeConfig>,
    },
    Exec {
        work: Work,
        reply: tokio::sync::oneshot::Sender<Result<(), StorageError>>,
    },
}

/// Append jobs gathered into one transaction (one fsync).
pub const APPEND_JOBS_PER_COMMIT_MAX: usize = 256;
/// Jobs waiting for the writer; a full queue makes `append` wait.
pub const WRITER_QUEUE_JOBS_MAX: usize = 1_024;

/// The raft log store. Cloning shares the writer thread and the cache.
#[derive(Clone)]
pub struct LogStore {
    path: PathBuf,
    /// Read connection (the writer thread owns the write connection).
    conn: Arc<Mutex<Connection>>,
    cache: Cache,
    tx: std::sync::mpsc::SyncSender<Job>,
}

impl LogStore {
    pub fn open(dir: &Path) -> Result<LogStore, StorageError> {
        std::fs::create_dir_all(dir).map_err(write_err)?;
        let path = dir.join(LOG_FILE);
        let writer = open_conn(&path, true).map_err(write_err)?;
        let conn = open_conn(&path, false).map_err(read_err)?;
        let cache: Cache = Arc::new(Mutex::new(BTreeMap::new()));
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(WRITER_QUEUE_JOBS_MAX);
        let cache2 = cache.clone();
        std::thread::Builder::new()
            .name("hale-raft-log".into())
            .spawn(move || {
                // A panic here means an invariant of the log failed: stop the process
                // rather than acknowledge entries that are not on disk.
                let outcome =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| writer_loop(writer, rx, cache2)));
                if outcome.is_err() {
                    tracing::error!("the raft log writer panicked; aborting so the node restarts from its durable log");
                    std::process::abort();
                }
            })
            .map_err(write_err)?;
        Ok(LogStore {
            path,
            conn: Arc::new(Mutex::new(conn)),
            cache,
            tx,
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

    async fn send(&self, job: Job) -> Result<(), StorageError> {
        let tx = self.tx.clone();
        match tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(std::sync::mpsc::TrySendError::Full(job)) => tokio::task::spawn_blocking(move || tx.send(job))
                .await
                .map_err(write_err)?
                .map_err(|_| write_err("the raft log writer has stopped")),
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => Err(write_err("the raft log writer has stopped")),
        }
    }

    /// Run `work` on the write connection after every job queued before it.
    async fn exec(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<(), StorageError> + Send + 'static,
    ) -> Result<(), StorageError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.send(Job::Exec {
            work: Box::new(work),
            reply,
        })
        .await?;
        rx.await.map_err(|_| write_err("the raft log writer has stopped"))?
    }

    /// The newest entry's id, flushed or not (purged entries aside): what a
    /// pre-vote compares.
    pub fn last_log_id(&self) -> Result<Option<LogId>, StorageError> {
        let conn = self.conn.lock();
        match self.last_appended(&conn)? {
            Some(l) => Ok(Some(l)),
            None => Self::kv_get(&conn, "purged"),
        }
    }

    fn last_appended(&self, conn: &Connection) -> Result<Option<LogId>, StorageError> {
        if let Some(l) = self.cache.lock().values().next_back().map(|(e, _)| e.log_id) {
            return Ok(Some(l));
        }
        let last: Option<Vec<u8>> = conn
            .query_row("SELECT entry FROM log ORDER BY idx DESC LIMIT 1", [], |r| r.get(0))
            .optional()
            .map_err(read_err)?;
        match last {
            Some(b) => Ok(Some(decode(-1, b)?.log_id)),
            None => Ok(None),
        }
    }

    /// Entries `from..` as stored (index and encoded bytes), in index order
    /// and without gaps, at most `entries_max` of them and stopping once
    /// `bytes_max` is passed (always at least one when `from` is present), and
    /// none above `to_max`. On its own read connection, so a running node's
    /// writer is not held up: what the log archive copies. Bytes, not
    /// entries, so the archive keeps exactly what the log holds and decodes
    /// with [`decode_entry`] whatever version wrote it.
    pub fn read_raw(
        dir: &Path,
        from: u64,
        to_max: u64,
        entries_max: u64,
        bytes_max: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        let conn = open_conn(&dir.join(LOG_FILE), false).map_err(read_err)?;
        let mut stmt = conn
            .prepare_cached("SELECT idx, entry FROM log WHERE idx >= ?1 AND idx <= ?2 ORDER BY idx LIMIT ?3")
            .map_err(read_err)?;
        let rows = stmt
            .query_map(params![from as i64, to_max as i64, entries_max as i64], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(read_err)?;
        let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut bytes = 0usize;
        let mut next = from;
        for row in rows {
            let (idx, entry) = row.map_err(read_err)?;
            if idx != next || bytes >= bytes_max {
                break;
            }
            bytes += entry.len();
            next = idx + 1;
            out.push((idx, entry));
        }
        Ok(out)
    }

    /// The lowest index the log still holds (`None` when it is empty): entries
    /// below it were purged after a snapshot.
    pub fn first_index(dir: &Path) -> Result<Option<u64>, StorageError> {
        let conn = open_conn(&dir.join(LOG_FILE), false).map_err(read_err)?;
        conn.query_row("SELECT MIN(idx) FROM log", [], |r| r.get::<_, Option<i64>>(0))
            .map(|v| v.map(|v| v as u64))
            .map_err(read_err)
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
            out.push(decode(idx, bytes)?);
        }
        Ok(out)
    }
}

fn writer_loop(mut conn: Connection, rx: std::sync::mpsc::Receiver<Job>, cache: Cache) {
    let mut pending: Option<Job> = None;
    loop {
        let job = match pending.take() {
            Some(j) => j,
            None => match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            },
        };
        match job {
            Job::Exec { work, reply } => {
                let _ = reply.send(work(&mut conn));
            }
            Job::Append { rows, callback } => {
                // Group commit: every append already queued joins this transaction.
                let mut batch = vec![(rows, callback)];
                while batch.len() < APPEND_JOBS_PER_COMMIT_MAX {
                    match rx.try_recv() {
                        Ok(Job::Append { rows, callback }) => batch.push((rows, callback)),
                        Ok(other) => {
                            pending = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let res = write_batch(&mut conn, &batch);
                let flushed: Vec<(u64, LogId)> = batch
                    .iter()
                    .flat_map(|(rows, _)| rows.iter().map(|(i, l, _)| (*i, *l)))
                    .collect();
                match res {
                    Ok(()) => {
                        for (_, cb) in batch {
                            cb.log_io_completed(Ok(()));
                        }
                        let mut c = cache.lock();
                        for (i, l) in flushed {
                            if c.get(&i).is_some_and(|(e, _)| e.log_id == l) {
                                c.remove(&i);
                            }
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "raft log append failed");
                        for (_, cb) in batch {
                            cb.log_io_completed(Err(std::io::Error::other(e.to_string())));
                        }
                    }
                }
            }
        }
    }
}

fn write_batch(conn: &mut Connection, batch: &[(AppendRows, LogFlushed<TypeConfig>)]) -> Result<(), StorageError> {
    let tx = conn.transaction().map_err(write_err)?;
    {
        let mut last: Option<i64> = tx
            .query_row("SELECT MAX(idx) FROM log", [], |r| r.get(0))
            .map_err(write_err)?;
        let mut stmt = tx
            .prepare_cached("INSERT OR REPLACE INTO log(idx, entry) VALUES (?1, ?2)")
            .map_err(write_err)?;
        for (rows, _) in batch {
            for (idx, _, bytes) in rows {
                let idx = *idx as i64;
                // The log must stay gap-free: each new entry follows the last one.
                if let Some(l) = last {
                    assert_eq!(idx, l + 1, "raft log append would leave a hole after {l}");
                }
                stmt.execute(params![idx, bytes]).map_err(write_err)?;
                last = Some(idx);
            }
        }
    }
    tx.commit().map_err(write_err)
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

/// Entries `lo..=hi` (at most `READ_ENTRIES_MAX`), stopping once `bytes_max`
/// encoded bytes are read (always at least one entry).
fn read_range(
    conn: &Connection,
    cache: &Cache,
    lo: i64,
    hi: i64,
    bytes_max: usize,
) -> Result<Vec<Entry>, StorageError> {
    let hi = hi.min(lo.saturating_add(READ_ENTRIES_MAX as i64 - 1));
    if hi < lo {
        return Ok(Vec::new());
    }
    // Entries not yet flushed are in the cache; older ones only on disk.
    let cached: Vec<(Entry, usize)> = cache
        .lock()
        .range(lo.max(0) as u64..=hi as u64)
        .map(|(_, e)| e.clone())
        .collect();
    let disk_hi = match cached.first() {
        Some((e, _)) => (e.log_id.index as i64 - 1).min(hi),
        None => hi,
    };
    let mut out = Vec::new();
    let mut bytes = 0usize;
    if disk_hi >= lo {
        let mut stmt = conn
            .prepare_cached("SELECT idx, entry FROM log WHERE idx >= ?1 AND idx <= ?2 ORDER BY idx")
            .map_err(read_err)?;
        let rows = stmt
            .query_map(params![lo, disk_hi], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(read_err)?;
        for row in rows {
            let (idx, raw) = row.map_err(read_err)?;
            if !out.is_empty() && bytes + raw.len() > bytes_max {
                return Ok(out);
            }
            bytes += raw.len();
            let e = decode(idx, raw)?;
            assert_eq!(
                e.log_id.index, idx as u64,
                "raft log row {idx} holds entry {}",
                e.log_id
            );
            out.push(e);
        }
    }
    for (e, size) in cached {
        if !out.is_empty() && bytes + size > bytes_max {
            break;
        }
        bytes += size;
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
        read_range(&self.conn.lock(), &self.cache, lo, hi, usize::MAX)
    }
}

/// A read handle for replication streams: its own connection, so reads run
/// beside appends (WAL readers never block the writer), and the shared cache.
pub struct LogReader {
    conn: Mutex<Connection>,
    cache: Cache,
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (lo, hi) = range_to_sql(&range);
        read_range(&self.conn.lock(), &self.cache, lo, hi, usize::MAX)
    }

    /// What replication reads: a byte-bounded prefix of `start..end`.
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, StorageError> {
        if end <= start {
            return Ok(Vec::new());
        }
        read_range(
            &self.conn.lock(),
            &self.cache,
            start as i64,
            end as i64 - 1,
            REPLICATION_READ_BYTES_MAX,
        )
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let conn = self.conn.lock();
        let purged: Option<LogId> = Self::kv_get(&conn, "purged")?;
        let last_log_id = match self.last_appended(&conn)? {
            Some(l) => Some(l),
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
        LogReader {
            conn: Mutex::new(conn),
            cache: self.cache.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(vote).map_err(write_err)?;
        self.exec(move |c| {
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
        let mut fresh = Vec::new();
        for e in entries {
            let bytes = crate::frame::encode_entry(&e);
            let size = bytes.len();
            rows.push((e.log_id.index, e.log_id, bytes));
            fresh.push((e, size));
        }
        if rows.is_empty() {
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        // Readable at once; durable when the writer calls back.
        {
            let mut c = self.cache.lock();
            for (e, size) in fresh {
                c.insert(e.log_id.index, (e, size));
            }
        }
        self.send(Job::Append { rows, callback }).await
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let idx = log_id.index;
        self.cache.lock().split_off(&idx);
        self.exec(move |c| {
            c.execute("DELETE FROM log WHERE idx >= ?1", [idx as i64])
                .map_err(write_err)?;
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(&log_id).map_err(write_err)?;
        let idx = log_id.index;
        self.exec(move |c| {
            let tx = c.transaction().map_err(write_err)?;
            if let Some(prev) = Self::kv_get::<LogId>(&tx, "purged")? {
                assert!(prev <= log_id, "purge moves backwards: {prev} then {log_id}");
            }
            tx.execute("INSERT OR REPLACE INTO kv(key, value) VALUES ('purged', ?1)", [bytes])
                .map_err(write_err)?;
            tx.execute("DELETE FROM log WHERE idx <= ?1", [idx as i64])
                .map_err(write_err)?;
            tx.commit().map_err(write_err)?;
            Ok(())
        })
        .await?;
        // Flushed by now (the writer ran every earlier append first).
        let mut c = self.cache.lock();
        let keep = c.split_off(&(idx + 1));
        *c = keep;
        Ok(())
    }
}
