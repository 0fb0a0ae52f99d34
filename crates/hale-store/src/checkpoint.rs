//! The WAL checkpointer: copies the write-ahead log into the database file on
//! a thread of its own, off the apply path.
//!
//! DESIGN: SQLite's automatic checkpoint runs inside the commit that crosses
//! its threshold (1,000 pages), on the writer's thread. With
//! `synchronous=NORMAL` a checkpoint also fsyncs the WAL and the database
//! file, so every few batches one apply stalled for the copy and two fsyncs,
//! and every committed write behind it waited (12% of the leader's CPU sat in
//! the checkpoint inside `commit` under 64 writers). Here the writer only
//! signals after each commit; this thread runs a PASSIVE checkpoint at most
//! every [`CHECKPOINT_INTERVAL_MS`], which copies without taking the writer's
//! lock, so applies continue while it runs, and a page written many times in
//! the interval is copied once.
//!
//! A PASSIVE checkpoint that races the writer cannot finish, and the WAL only
//! starts again from its beginning after one that did, so under steady writes
//! the WAL would grow without end. The writer's own automatic checkpoint
//! stays as the bound, at [`WRITER_AUTOCHECKPOINT_PAGES`] instead of 1,000:
//! run on the writer's thread, it finishes, and the next commit rewinds the
//! WAL; by then this thread has copied all but the last interval's frames, so
//! that stall is short and rare. This thread never takes the write lock (a
//! RESTART checkpoint here held it while it waited for readers, up to the busy
//! timeout, and stalled apply). `journal_size_limit` trims the file.
//!
//! Architecture Invariant: the checkpointer changes where pages live, never
//! what they hold: it runs no statement that reads or writes a table.

use crate::StoreError;
use rusqlite::Connection;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The least time between two checkpoints while writes keep coming.
pub const CHECKPOINT_INTERVAL_MS: u64 = 200;
/// The writer's own automatic checkpoint, which bounds the WAL (SQLite's
/// default is 1,000 pages; 4 KiB pages: 64 MiB).
pub const WRITER_AUTOCHECKPOINT_PAGES: i64 = 16_384;
/// The WAL file is truncated to this size when it starts again.
pub const JOURNAL_SIZE_LIMIT_BYTES: i64 = 64 * 1024 * 1024;

#[derive(Default)]
struct State {
    /// A commit happened since the last checkpoint began.
    dirty: bool,
    stop: bool,
    /// Checkpoints run (for tests).
    passes: u64,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

/// Owns the checkpoint thread; dropping it stops and joins the thread.
pub struct Checkpointer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Start the thread on a connection of its own to `path` (which the
    /// writer has already opened in WAL mode).
    pub fn start(path: &Path) -> Result<Checkpointer, StoreError> {
        let conn = crate::db::open_rw(path)?;
        conn.busy_timeout(Duration::from_millis(crate::BUSY_TIMEOUT_MS))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let thread = std::thread::Builder::new().name("hale-checkpoint".into()).spawn({
            let shared = shared.clone();
            move || run(&conn, &shared)
        })?;
        Ok(Checkpointer {
            shared,
            thread: Some(thread),
        })
    }

    /// Called by the writer after each commit: cheap (one uncontended lock).
    pub fn committed(&self) {
        let mut s = self.shared.state.lock().expect("checkpoint state lock");
        if !s.dirty {
            s.dirty = true;
            self.shared.wake.notify_one();
        }
    }

    /// Checkpoints run so far.
    pub fn passes(&self) -> u64 {
        self.shared.state.lock().expect("checkpoint state lock").passes
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.shared.state.lock().expect("checkpoint state lock").stop = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(conn: &Connection, shared: &Shared) {
    let interval = Duration::from_millis(CHECKPOINT_INTERVAL_MS);
    let mut last = Instant::now().checked_sub(interval).unwrap_or_else(Instant::now);
    loop {
        {
            let mut s = shared.state.lock().expect("checkpoint state lock");
            while !s.dirty && !s.stop {
                s = shared.wake.wait(s).expect("checkpoint state lock");
            }
            if s.stop {
                return;
            }
            // Let writes gather: a page changed many times is copied once.
            let since = last.elapsed();
            if since < interval {
                let (g, _) = shared
                    .wake
                    .wait_timeout_while(s, interval - since, |s| !s.stop)
                    .expect("checkpoint state lock");
                s = g;
                if s.stop {
                    return;
                }
            }
            s.dirty = false;
        }
        last = Instant::now();
        if let Err(e) = checkpoint(conn) {
            tracing::warn!(error = %e, "WAL checkpoint failed; the writer's own checkpoint bounds the WAL");
        }
        shared.state.lock().expect("checkpoint state lock").passes += 1;
    }
}

/// A PASSIVE checkpoint: copies what it can without waiting for anyone.
fn checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_are_checkpointed_by_the_thread_and_the_wal_starts_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = crate::db::open_rw(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "wal_autocheckpoint", WRITER_AUTOCHECKPOINT_PAGES)
            .unwrap();
        // A rewound WAL is cut to nothing, so its file size shows a rewind
        // without running a checkpoint of the test's own.
        conn.pragma_update(None, "journal_size_limit", 0).unwrap();
        conn.execute_batch("CREATE TABLE t(x BLOB)").unwrap();
        let wal = dir.path().join("t.db-wal");
        let ck = Checkpointer::start(&path).unwrap();
        for _ in 0..100 {
            conn.execute("INSERT INTO t VALUES (randomblob(8000))", []).unwrap();
            ck.committed();
        }
        // The writer never reaches its own threshold, so only the thread
        // can have moved the rows into the database file.
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::fs::metadata(&path).unwrap().len() < 50 * 8000 {
            assert!(
                Instant::now() < deadline,
                "the database file did not grow: no checkpoint ran"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // Once a pass has copied every frame, the next commit rewinds the WAL.
        let mut extra = 0;
        loop {
            conn.execute("INSERT INTO t VALUES (1)", []).unwrap();
            ck.committed();
            extra += 1;
            if std::fs::metadata(&wal).unwrap().len() < 100_000 {
                break;
            }
            assert!(Instant::now() < deadline, "the WAL never started again");
            std::thread::sleep(Duration::from_millis(CHECKPOINT_INTERVAL_MS));
        }
        assert!(ck.passes() >= 1);
        drop(ck);
        let n: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 100 + extra);
    }

    /// The apply path's shape: a transaction that reads, then writes, over
    /// and over, while the thread checkpoints beside it. The writer must never
    /// see "database is locked".
    #[test]
    fn a_writer_that_reads_first_is_never_refused_while_the_thread_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = crate::db::open_rw(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
        // A low bound, so the writer's own checkpoint runs beside the thread's.
        conn.pragma_update(None, "wal_autocheckpoint", 64).unwrap();
        conn.busy_timeout(Duration::from_millis(crate::BUSY_TIMEOUT_MS))
            .unwrap();
        conn.execute_batch("CREATE TABLE t(k INTEGER PRIMARY KEY, x BLOB)")
            .unwrap();
        let ck = Checkpointer::start(&path).unwrap();
        let until = Instant::now() + Duration::from_secs(3);
        // Readers beside it, as the API's read connections are.
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let r = crate::db::open(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
                    r.busy_timeout(Duration::from_millis(crate::BUSY_TIMEOUT_MS)).unwrap();
                    while Instant::now() < until {
                        let _: i64 = r.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
                    }
                })
            })
            .collect();
        let mut n = 0i64;
        while Instant::now() < until {
            let tx = crate::begin_write(&conn).unwrap();
            let have: i64 = tx.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
            assert_eq!(have, n);
            for _ in 0..20 {
                tx.execute("INSERT INTO t(x) VALUES (randomblob(600))", []).unwrap();
                n += 1;
            }
            tx.commit().unwrap();
            ck.committed();
        }
        for r in readers {
            r.join().unwrap();
        }
        assert!(ck.passes() >= 2, "{} checkpoints in 3 s", ck.passes());
    }
}
