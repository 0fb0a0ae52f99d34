//! Sign-in sessions: in this node's own SQLite file (`<data>/ui-sessions.db`),
//! never replicated, so signing in and out needs no quorum and works on a
//! cut-off site.
//!
//! Architecture invariant: only the SHA-256 of a session id is stored; the id
//! itself exists in the browser's cookie alone. A copied file opens no session,
//! and holds no usable access token: a session signed in through the identity
//! provider keeps its access token sealed (ChaCha20-Poly1305) under a key
//! derived from the session id.
//!
//! The same file holds the sign-ins in flight through the provider (state,
//! nonce, PKCE verifier), each usable once and for [`PENDING_MS`].

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

/// A sign-in through the provider must come back within this long.
pub const PENDING_MS: i64 = 10 * 60 * 1000;
/// Sign-ins in flight kept per node; past it the oldest are dropped.
pub const PENDING_MAX: i64 = 10_000;

/// How the session was signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A local account (password checked against the replicated accounts).
    Local,
    /// The trust's identity provider: the session holds the user's access
    /// token, and ends when it expires.
    Oidc { access_token: String, token_exp_ms: i64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    pub role: String,
    pub csrf: String,
    pub created_ms: i64,
    pub seen_ms: i64,
    pub kind: Kind,
}

/// A sign-in through the provider, between the redirect out and the callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// SHA-256 of the browser-binding cookie set with the redirect.
    pub binder_sha256: String,
    pub nonce: String,
    pub verifier: String,
    pub created_ms: i64,
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

/// SHA-256 of a secret as hex: what the file stores instead of it.
pub fn digest(id: &str) -> String {
    hex(&Sha256::digest(id.as_bytes()))
}

/// The key sealing a session's access token: derived from the session id,
/// which only the browser holds (the file has its SHA-256, a different hash).
fn token_key(id: &str) -> ring::aead::LessSafeKey {
    let mut h = Sha256::new();
    h.update(b"hale-ui session access token v1\0");
    h.update(id.as_bytes());
    let k: [u8; 32] = h.finalize().into();
    ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &k).expect("a 32-byte ChaCha20-Poly1305 key"),
    )
}

/// Seal `token` for the session `id`: a random nonce, then the ciphertext and tag.
fn seal(id: &str, token: &str) -> Result<Vec<u8>, rusqlite::Error> {
    use ring::rand::SecureRandom;
    // Reported as a failure to convert the value for storage, which it is.
    let fail = |why: &str| {
        rusqlite::Error::ToSqlConversionFailure(Box::new(std::io::Error::other(format!(
            "sealing the access token: {why}"
        ))))
    };
    let mut nonce = [0u8; 12];
    ring::rand::SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| fail("the operating system gave no random bytes"))?;
    let mut sealed = token.as_bytes().to_vec();
    token_key(id)
        .seal_in_place_append_tag(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            ring::aead::Aad::from(digest(id).as_bytes()),
            &mut sealed,
        )
        .map_err(|_| fail("the token is too long"))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    Ok(out)
}

fn open_sealed(id: &str, blob: &[u8]) -> Option<String> {
    if blob.len() < 12 {
        return None;
    }
    let (nonce, sealed) = blob.split_at(12);
    let mut buf = sealed.to_vec();
    let plain = token_key(id)
        .open_in_place(
            ring::aead::Nonce::try_assume_unique_for_key(nonce).ok()?,
            ring::aead::Aad::from(digest(id).as_bytes()),
            &mut buf,
        )
        .ok()?;
    String::from_utf8(plain.to_vec()).ok()
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
             CREATE INDEX IF NOT EXISTS sessions_seen ON sessions(seen_ms);
             CREATE TABLE IF NOT EXISTS oidc_pending(
                 state_sha256  TEXT PRIMARY KEY,
                 binder_sha256 TEXT NOT NULL,
                 nonce         TEXT NOT NULL,
                 verifier      TEXT NOT NULL,
                 created_ms    INTEGER NOT NULL
             ) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS oidc_pending_created ON oidc_pending(created_ms);",
        )?;
        // Sessions from the identity provider (added after the first release:
        // older files gain the columns; their rows are local sign-ins).
        let has_kind = conn
            .prepare("SELECT 1 FROM pragma_table_info('sessions') WHERE name = 'kind'")?
            .exists([])?;
        if !has_kind {
            conn.execute_batch(
                "ALTER TABLE sessions ADD COLUMN kind TEXT NOT NULL DEFAULT 'local';
                 ALTER TABLE sessions ADD COLUMN token BLOB;
                 ALTER TABLE sessions ADD COLUMN token_exp_ms INTEGER;",
            )?;
        }
        Ok(Sessions { conn: Mutex::new(conn) })
    }

    /// Start a session for a local account; returns the id for the cookie.
    pub fn create(&self, user: &str, role: &str, now_ms: i64) -> Result<String, SessionError> {
        self.insert(user, role, None, now_ms)
    }

    /// Start a session from the identity provider, holding the user's access
    /// token (sealed) until `token_exp_ms`, when the session ends.
    pub fn create_oidc(
        &self,
        user: &str,
        role: &str,
        access_token: &str,
        token_exp_ms: i64,
        now_ms: i64,
    ) -> Result<String, SessionError> {
        self.insert(user, role, Some((access_token, token_exp_ms)), now_ms)
    }

    fn insert(&self, user: &str, role: &str, token: Option<(&str, i64)>, now_ms: i64) -> Result<String, SessionError> {
        let id = random_token();
        let (kind, sealed, exp) = match token {
            Some((t, exp)) => ("oidc", Some(seal(&id, t)?), Some(exp)),
            None => ("local", None, None),
        };
        let conn = self.conn.lock();
        conn.execute(
            "INSERT INTO sessions(id_sha256, user, role, csrf, created_ms, seen_ms, kind, token, token_exp_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7, ?8)",
            params![digest(&id), user, role, random_token(), now_ms, kind, sealed, exp],
        )?;
        conn.execute(
            "DELETE FROM sessions WHERE seen_ms < ?1 OR created_ms < ?2 OR token_exp_ms <= ?3",
            params![now_ms - IDLE_MS, now_ms - ABSOLUTE_MS, now_ms],
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
        type Row = (Session, Option<Vec<u8>>, Option<i64>);
        let row: Option<Row> = conn
            .query_row(
                "SELECT user, role, csrf, created_ms, seen_ms, kind, token, token_exp_ms FROM sessions WHERE id_sha256 = ?1",
                [&key],
                |r| {
                    let kind: String = r.get(5)?;
                    Ok((
                        Session {
                            user: r.get(0)?,
                            role: r.get(1)?,
                            csrf: r.get(2)?,
                            created_ms: r.get(3)?,
                            seen_ms: r.get(4)?,
                            kind: if kind == "local" {
                                Kind::Local
                            } else {
                                // The token is opened below.
                                Kind::Oidc {
                                    access_token: String::new(),
                                    token_exp_ms: 0,
                                }
                            },
                        },
                        r.get(6)?,
                        r.get(7)?,
                    ))
                },
            )
            .optional()?;
        let Some((mut s, sealed, exp)) = row else {
            return Ok(None);
        };
        if let Kind::Oidc { .. } = s.kind {
            // The earlier of the usual rules and the access token's expiry;
            // a token that does not open under this id ends the session too.
            match (sealed.and_then(|b| open_sealed(id, &b)), exp) {
                (Some(access_token), Some(token_exp_ms)) if now_ms < token_exp_ms => {
                    s.kind = Kind::Oidc {
                        access_token,
                        token_exp_ms,
                    }
                }
                _ => {
                    conn.execute("DELETE FROM sessions WHERE id_sha256 = ?1", [&key])?;
                    return Ok(None);
                }
            }
        }
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

    /// End every local-account session of `user` (disabled account,
    /// password changed). Sessions from the identity provider are the
    /// provider's users, not the account's, and are left alone.
    pub fn end_user(&self, user: &str) -> Result<usize, SessionError> {
        Ok(self
            .conn
            .lock()
            .execute("DELETE FROM sessions WHERE user = ?1 AND kind = 'local'", [user])?)
    }

    /// Remember a sign-in sent to the provider: only digests of `state` and
    /// the browser binder are kept. Drops expired ones, and the oldest past
    /// [`PENDING_MAX`].
    pub fn put_pending(
        &self,
        state: &str,
        binder: &str,
        nonce: &str,
        verifier: &str,
        now_ms: i64,
    ) -> Result<(), SessionError> {
        let conn = self.conn.lock();
        conn.execute("DELETE FROM oidc_pending WHERE created_ms < ?1", [now_ms - PENDING_MS])?;
        conn.execute(
            "INSERT INTO oidc_pending(state_sha256, binder_sha256, nonce, verifier, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![digest(state), digest(binder), nonce, verifier, now_ms],
        )?;
        let n: i64 = conn.query_row("SELECT count(*) FROM oidc_pending", [], |r| r.get(0))?;
        if n > PENDING_MAX {
            conn.execute(
                "DELETE FROM oidc_pending WHERE state_sha256 IN (SELECT state_sha256 FROM oidc_pending ORDER BY created_ms LIMIT ?1)",
                [n - PENDING_MAX],
            )?;
        }
        Ok(())
    }

    /// Take the sign-in for `state` (once: it is deleted), if it has not expired.
    pub fn take_pending(&self, state: &str, now_ms: i64) -> Result<Option<Pending>, SessionError> {
        let conn = self.conn.lock();
        let p = conn
            .query_row(
                "DELETE FROM oidc_pending WHERE state_sha256 = ?1 RETURNING binder_sha256, nonce, verifier, created_ms",
                [digest(state)],
                |r| {
                    Ok(Pending {
                        binder_sha256: r.get(0)?,
                        nonce: r.get(1)?,
                        verifier: r.get(2)?,
                        created_ms: r.get(3)?,
                    })
                },
            )
            .optional()?;
        Ok(p.filter(|p| now_ms - p.created_ms <= PENDING_MS))
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
    fn oidc_sessions_end_with_their_token_and_keep_it_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sessions::open(dir.path()).unwrap();
        let t0 = 1_000_000_000;
        let token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJkci5hIn0.c2ln";
        let id = s.create_oidc("dr.a", "clinician", token, t0 + 120_000, t0).unwrap();
        let got = s.touch(&id, t0 + 60_000).unwrap().unwrap();
        assert_eq!(
            got.kind,
            Kind::Oidc {
                access_token: token.into(),
                token_exp_ms: t0 + 120_000
            }
        );
        // The file holds neither the id nor the token.
        let raw = std::fs::read(dir.path().join(FILE)).unwrap();
        let wal = std::fs::read(dir.path().join(format!("{FILE}-wal"))).unwrap_or_default();
        for bytes in [&raw, &wal] {
            assert!(
                !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
                "token in the file"
            );
            assert!(!bytes.windows(id.len()).any(|w| w == id.as_bytes()), "id in the file");
        }
        // A local account of the same name being disabled leaves it alone.
        s.end_user("dr.a").unwrap();
        assert!(s.touch(&id, t0 + 61_000).unwrap().is_some());
        // Ends with the token, well inside the idle and absolute limits.
        assert!(s.touch(&id, t0 + 120_000).unwrap().is_none());
        assert!(s.touch(&id, t0 + 1).unwrap().is_none(), "ended for good");
    }

    #[test]
    fn a_pending_sign_in_is_taken_once_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sessions::open(dir.path()).unwrap();
        let t0 = 1_000_000_000;
        s.put_pending("state-1", "binder", "nonce", "verifier", t0).unwrap();
        let p = s.take_pending("state-1", t0 + 1_000).unwrap().unwrap();
        assert_eq!((p.nonce.as_str(), p.verifier.as_str()), ("nonce", "verifier"));
        assert_eq!(p.binder_sha256, digest("binder"));
        assert!(s.take_pending("state-1", t0 + 2_000).unwrap().is_none(), "one use");
        s.put_pending("state-2", "b", "n", "v", t0).unwrap();
        assert!(
            s.take_pending("state-2", t0 + PENDING_MS + 1).unwrap().is_none(),
            "expired"
        );
        assert!(s.take_pending("state-2", t0).unwrap().is_none(), "and gone");
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
