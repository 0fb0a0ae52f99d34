//! Sign-in sessions: in this node's own SQLite file (`<data>/ui-sessions.db`),
//! never replicated, so signing in and out needs no quorum and works on a
//! cut-off site.
//!
//! Architecture invariant: only the SHA-256 of a session id is stored; the id
//! itself exists in the browser's cookie alone. A copied file opens no session.

use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};
use std::path::Path;

/// A session ends after this long without a request.
pub const IDLE_MS: i64 = 15 * 60 * 1000;
/// A session ends this long after sign-in, whatever happens.
pub const ABSOLUTE_MS: i64 = 12 * 60 * 60 * 1000;
/// Live sessions kept per node; past it the oldest is ended.
pub const SESSIONS_MAX: i64 = 10_000;

pub const FILE: &str = "ui-sessions.db";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    pub role: String,
    pub csrf: String,
    pub created_ms: i64,
    pub seen_ms: i64,
}

pub struct Sessions {
    conn: Mutex<Connection>,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the session store ({FILE}): {0}")]
    Sql(#[from] rusqlite::Error),
    #[error(transparent)]
    Open(#[from] hale_store::db::OpenError),
}

/// 256 random bits as hex (two v4 UUIDs' random parts come from the OS).
pub fn random_token() -> String {
    let a = uuid::Uuid::new_v4();
    let b = uuid::Uuid::new_v4();
    let c = uuid::Uuid::new_v4();
    let mut h = Sha256::new();
    h.update(a.as_bytes());
    h.update(b.as_bytes());
    h.update(c.as_bytes());
    hex(&h.finalize())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn digest(id: &str) -> String {
    hex(&Sha256::digest(id.as_bytes()))
}

/// Compare two secrets without an early exit.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Sessions {
    pub fn open(data: &Path) -> Result<Sessions, SessionError> {
        // Through the store's opener, so the file carries the node's key.
        let conn = hale_store::db::open_rw(&data.join(FILE))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
             CREATE TABLE IF NOT EXISTS sessions(
                 id_sha256  TEXT PRIMARY KEY,
                 user       TEXT NOT NULL,
                 role       TEXT NOT NULL,
                 csrf       TEXT NOT NULL,
                 created_ms INTEGER NOT NULL,
                 seen_ms    INTEGER NOT NULL
             ) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS sessions_seen ON sessions(seen_ms);",
        )?;
        Ok(Sessions { conn: Mutex::new(conn) })
    }

    /// Start a session; returns the id for the cookie.
    pub fn create(&self, user: &str, role: &str, now_ms: i64) -> Result<String, SessionError> {
        let id = random_token();
        let conn = self.conn.lock();
        conn.execute(
            "INSERT INTO sessions(id_sha256, user, role, csrf, created_ms, seen_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            params![digest(&id), user, role, random_token(), now_ms],
        )?;
        conn.execute(
            "DELETE FROM sessions WHERE seen_ms < ?1 OR created_ms < ?2",
            params![now_ms - IDLE_MS, now_ms - ABSOLUTE_MS],
        )?;
        let n: i64 = conn.query_row("SELECT count(*) FROM sessions", [], |r| r.get(0))?;
        if n > SESSIONS_MAX {
            conn.execute(
                "DELETE FROM sessions WHERE id_sha256 IN (SELECT id_sha256 FROM sessions ORDER BY seen_ms LIMIT ?1)",
                [n - SESSIONS_MAX],
            )?;
        }
        Ok(id)
    }

    /// The live session for `id`, touched; an expired one is ended and `None`.
    pub fn touch(&self, id: &str, now_ms: i64) -> Result<Option<Session>, SessionError> {
        let key = digest(id);
        let conn = self.conn.lock();
        let s = conn
            .query_row(
                "SELECT user, role, csrf, created_ms, seen_ms FROM sessions WHERE id_sha256 = ?1",
                [&key],
                |r| {
                    Ok(Session {
                        user: r.get(0)?,
                        role: r.get(1)?,
                        csrf: r.get(2)?,
                        created_ms: r.get(3)?,
                        seen_ms: r.get(4)?,
                    })
                },
            )
            .optional()?;
        let Some(mut s) = s else { return Ok(None) };
        if now_ms - s.seen_ms > IDLE_MS || now_ms - s.created_ms > ABSOLUTE_MS {
            conn.execute("DELETE FROM sessions WHERE id_sha256 = ?1", [&key])?;
            return Ok(None);
        }
        // Touch at most every 10 s: a busy page set does not write per request.
        if now_ms - s.seen_ms > 10_000 {
            conn.execute(
                "UPDATE sessions SET seen_ms = ?2 WHERE id_sha256 = ?1",
                params![key, now_ms],
            )?;
            s.seen_ms = now_ms;
        }
        Ok(Some(s))
    }

    pub fn end(&self, id: &str) -> Result<(), SessionError> {
        self.conn
            .lock()
            .execute("DELETE FROM sessions WHERE id_sha256 = ?1", [digest(id)])?;
        Ok(())
    }

    /// End every session of `user` (disabled account, password changed).
    pub fn end_user(&self, user: &str) -> Result<usize, SessionError> {
        Ok(self
            .conn
            .lock()
            .execute("DELETE FROM sessions WHERE user = ?1", [user])?)
    }

    pub fn live(&self, now_ms: i64) -> Result<i64, SessionError> {
        Ok(self.conn.lock().query_row(
            "SELECT count(*) FROM sessions WHERE seen_ms >= ?1 AND created_ms >= ?2",
            params![now_ms - IDLE_MS, now_ms - ABSOLUTE_MS],
            |r| r.get(0),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_and_absolute_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sessions::open(dir.path()).unwrap();
        let t0 = 1_000_000_000;
        let id = s.create("dr.a", "clinician", t0).unwrap();
        assert_eq!(s.touch(&id, t0 + 60_000).unwrap().unwrap().user, "dr.a");
        assert!(s.touch("not-an-id", t0).unwrap().is_none());
        // Idle: 15 minutes since the last request.
        assert!(s.touch(&id, t0 + 60_000 + IDLE_MS + 1).unwrap().is_none());
        // Absolute: kept alive every 10 minutes, still ends at 12 h.
        let id = s.create("dr.b", "clinician", t0).unwrap();
        let mut t = t0;
        while t < t0 + ABSOLUTE_MS - 600_000 {
            t += 600_000;
            assert!(s.touch(&id, t).unwrap().is_some(), "alive at {t}");
        }
        assert!(s.touch(&id, t0 + ABSOLUTE_MS + 1).unwrap().is_none());
    }

    #[test]
    fn the_file_holds_no_usable_id() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sessions::open(dir.path()).unwrap();
        let id = s.create("dr.a", "clinician", 5).unwrap();
        let conn = Connection::open(dir.path().join(FILE)).unwrap();
        let stored: String = conn
            .query_row("SELECT id_sha256 FROM sessions", [], |r| r.get(0))
            .unwrap();
        assert_ne!(stored, id);
        assert!(
            s.touch(&stored, 6).unwrap().is_none(),
            "the stored digest is not a session id"
        );
        s.end_user("dr.a").unwrap();
        assert!(s.touch(&id, 6).unwrap().is_none());
    }
}
