//! The site journal: writes a node accepted while it could not reach a quorum.
//!
//! Architecture invariant: the journal is a separate SQLite file
//! (`<data>/journal.db`) that nothing in the replicated store reads, so
//! `hale.db` stays a pure function of the raft log. This crate knows nothing
//! of HTTP or raft: it appends entries, shows the pending ones, hands out
//! batches to replay and records how each ended.
//!
//! Each entry is a [`Replay`]: `(node, seq)` with `seq` contiguous from 1, a
//! SHA-256 chain over the entries, the write with its id, actor and site time
//! fixed, and the dependency check (what the user saw). An entry is fsynced
//! (`synchronous=FULL`) before `append` returns, so an accepted write
//! survives `kill -9` and power loss.
//!
//! Entries are never deleted: a settled entry keeps its receipt (log index and
//! outcome) for `hale sync verify`. The limits bound what is pending.

use hale_store::command::{Actor, Base, Policy, Replay, WriteOp};
use hale_store::sync::{Outcome, Receipt};
use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use serde_json::{json, Value};
use std::path::Path;

pub const JOURNAL_FILE: &str = "journal.db";
/// Default bound on pending entries.
pub const ENTRIES_MAX_DEFAULT: u64 = 100_000;
/// Default bound on the bytes of pending entries.
pub const BYTES_MAX_DEFAULT: u64 = 256 * 1024 * 1024;
/// Largest single entry, so one write cannot fill the journal.
pub const ENTRY_BYTES_MAX: usize = 4 * 1024 * 1024;

const DDL: &str = r#"
CREATE TABLE IF NOT EXISTS meta(
    key   TEXT PRIMARY KEY,
    value ANY
) WITHOUT ROWID;
-- status: pending | committed | task | refused.
CREATE TABLE IF NOT EXISTS entries(
    seq         INTEGER PRIMARY KEY,
    prev_hash   TEXT    NOT NULL,
    hash        TEXT    NOT NULL,
    recorded_ms INTEGER NOT NULL,
    policy      TEXT    NOT NULL,
    rtype       TEXT    NOT NULL,
    res_id      TEXT    NOT NULL,
    patient     TEXT,
    user        TEXT    NOT NULL,
    entry       TEXT    NOT NULL,
    view        TEXT,
    bytes       INTEGER NOT NULL,
    status      TEXT    NOT NULL DEFAULT 'pending',
    log_index   INTEGER,
    outcome     TEXT,
    settled_ms  INTEGER
);
CREATE INDEX IF NOT EXISTS entries_res ON entries(rtype, res_id, seq);
CREATE INDEX IF NOT EXISTS entries_status ON entries(status, seq);
CREATE INDEX IF NOT EXISTS entries_patient ON entries(patient, seq);
"#;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("the site journal is full ({pending} entries, {bytes} bytes pending; limits {entries_max} entries, {bytes_max} bytes). Nothing more can be saved at this site until the data centres are reachable and the journal drains")]
    Full {
        pending: u64,
        bytes: u64,
        entries_max: u64,
        bytes_max: u64,
    },
    #[error("this write is {0} bytes, more than the {ENTRY_BYTES_MAX} a journal entry may hold")]
    TooLarge(usize),
    #[error("the journal in {path} belongs to node {found}, not to this node ({expected}); it must be replayed by the node that wrote it")]
    WrongNode { path: String, found: u64, expected: u64 },
    #[error("site journal storage: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error(transparent)]
    Open(#[from] hale_store::db::OpenError),
    /// A storage failure reported to every write of a group commit.
    #[error("site journal storage: {0}; the write was not saved")]
    Failed(String),
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub entries_max: u64,
    pub bytes_max: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            entries_max: ENTRIES_MAX_DEFAULT,
            bytes_max: BYTES_MAX_DEFAULT,
        }
    }
}

/// A write to journal.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub actor: Actor,
    /// Site time it was accepted (information only; order is by seq).
    pub recorded_ms: i64,
    pub policy: Policy,
    pub base: Base,
    pub op: WriteOp,
    /// The patient it concerns, for `GET /sync/journal?patient=`.
    pub patient: Option<String>,
}

/// A write the journal took.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub seq: u64,
    pub hash: String,
    /// The tentative version, as the site shows it (`meta.versionId` = `p<seq>`).
    pub view: Value,
}

/// The latest tentative version of a resource.
#[derive(Debug, Clone)]
pub struct Pending {
    pub seq: u64,
    pub recorded_ms: i64,
    pub json: String,
}

/// One entry as operators see it.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub seq: u64,
    pub hash: String,
    pub prev_hash: String,
    pub recorded_ms: i64,
    pub policy: String,
    pub rtype: String,
    pub id: String,
    pub patient: Option<String>,
    pub user: String,
    pub status: String,
    pub log_index: Option<u64>,
    pub outcome: Option<Value>,
}

/// Counts for `/sync/status` and the metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub pending: u64,
    pub pending_bytes: u64,
    pub oldest_pending_ms: Option<i64>,
    pub committed: u64,
    pub tasks: u64,
    pub refused: u64,
    pub head_seq: u64,
    pub head_hash: String,
    /// Highest seq with a receipt.
    pub settled_head: u64,
}

pub struct Journal {
    /// Appends and settles.
    conn: Mutex<Connection>,
    /// Reads (WAL: they do not wait for an append's fsync).
    rconn: Mutex<Connection>,
    /// (entries, bytes) pending, kept in step with the file by append and settle.
    pending_totals: Mutex<(u64, u64)>,
    node: u64,
    site: String,
    limits: Limits,
}

/// What `verify` found, comparing the journal with the receipts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verify {
    pub entries: u64,
    /// Entries settled locally with no receipt in the replicated store.
    pub missing: Vec<u64>,
    /// Receipts for entries this journal does not hold.
    pub unknown: Vec<u64>,
    /// Receipts whose outcome differs from the journal's record of it.
    pub mismatched: Vec<u64>,
    /// Entries still pending (not yet replayed).
    pub pending: u64,
    /// First entry whose hash or link is wrong, if any.
    pub chain_broken_at: Option<u64>,
    pub chain_ok: bool,
}

impl Journal {
    pub fn open(dir: &Path, node: u64, site: &str, limits: Limits) -> Result<Journal, JournalError> {
        std::fs::create_dir_all(dir).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        let path = dir.join(JOURNAL_FILE);
        // Through the store's opener: the journal holds patient data, so it carries the node's key.
        let conn = hale_store::db::open_rw(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: the WAL is fsynced at every commit: an accepted write is on disk.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(DDL)?;
        let found: Option<i64> = conn
            .query_row("SELECT value FROM meta WHERE key = 'node'", [], |r| r.get(0))
            .optional()?;
        match found {
            None => {
                conn.execute("INSERT INTO meta(key, value) VALUES ('node', ?1)", [node as i64])?;
            }
            Some(f) if f as u64 != node => {
                return Err(JournalError::WrongNode {
                    path: path.display().to_string(),
                    found: f as u64,
                    expected: node,
                })
            }
            Some(_) => {}
        }
        let rconn = hale_store::db::open_rw(&path)?;
        let totals = pending_totals(&conn)?;
        Ok(Journal {
            pending_totals: Mutex::new(totals),
            conn: Mutex::new(conn),
            rconn: Mutex::new(rconn),
            node,
            site: site.to_string(),
            limits,
        })
    }

    /// Entries not yet replayed (kept in memory: cheap on every request).
    pub fn pending_count(&self) -> u64 {
        self.pending_totals.lock().0
    }

    pub fn node(&self) -> u64 {
        self.node
    }

    pub fn site(&self) -> &str {
        &self.site
    }

    /// Journal a write, durably, and return its sequence number and tentative version.
    pub fn append(
        &self,
        actor: Actor,
        recorded_ms: i64,
        policy: Policy,
        base: Base,
        op: WriteOp,
        patient: Option<String>,
    ) -> Result<Accepted, JournalError> {
        let e = NewEntry {
            actor,
            recorded_ms,
            policy,
            base,
            op,
            patient,
        };
        self.append_batch(vec![e])?.pop().expect("one result per entry")
    }

    /// Journal several writes in one transaction (one fsync): group commit
    /// for writes that arrive together. Each gets its own answer (an entry
    /// past the limits is refused alone); the outer error is a storage failure,
    /// in which case none was journalled.
    pub fn append_batch(&self, entries: Vec<NewEntry>) -> Result<Vec<Result<Accepted, JournalError>>, JournalError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        let (mut pending, mut bytes) = *self.pending_totals.lock();
        let (mut head_seq, mut head_hash): (u64, String) = tx
            .query_row("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1", [], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))
            })
            .optional()?
            .unwrap_or((0, String::new()));
        let mut out = Vec::with_capacity(entries.len());
        for n in entries {
            let mut op = n.op;
            if let WriteOp::Create { resource, .. } | WriteOp::Update { resource, .. } = &mut op {
                hale_store::sync::tag_offline(resource, &self.site);
            }
            let seq = head_seq + 1;
            let mut e = Replay {
                node: self.node,
                site: self.site.clone(),
                seq,
                prev_hash: head_hash.clone(),
                hash: String::new(),
                recorded_ms: n.recorded_ms,
                actor: n.actor,
                policy: n.policy,
                base: n.base,
                op,
            };
            e.hash = e.compute_hash();
            let entry = serde_json::to_string(&e).expect("an entry always serialises");
            if entry.len() > ENTRY_BYTES_MAX {
                out.push(Err(JournalError::TooLarge(entry.len())));
                continue;
            }
            if pending >= self.limits.entries_max || bytes + entry.len() as u64 > self.limits.bytes_max {
                out.push(Err(JournalError::Full {
                    pending,
                    bytes,
                    entries_max: self.limits.entries_max,
                    bytes_max: self.limits.bytes_max,
                }));
                continue;
            }
            let view = match &e.op {
                WriteOp::Create { id, resource, .. } | WriteOp::Update { id, resource, .. } => {
                    Some(tentative(resource, id, seq, n.recorded_ms))
                }
                WriteOp::Delete { .. } => None,
            };
            let view_text = view.as_ref().map(|v| v.to_string());
            tx.prepare_cached(
                "INSERT INTO entries(seq, prev_hash, hash, recorded_ms, policy, rtype, res_id, patient, user, entry, view, bytes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?
            .execute(params![
                seq as i64,
                e.prev_hash,
                e.hash,
                n.recorded_ms,
                e.policy.as_str(),
                e.op.rtype(),
                e.op.id(),
                n.patient,
                e.actor.user,
                entry,
                view_text,
                entry.len() as i64
            ])?;
            pending += 1;
            bytes += entry.len() as u64;
            head_seq = seq;
            head_hash = e.hash.clone();
            out.push(Ok(Accepted {
                seq,
                hash: e.hash,
                view: view.unwrap_or(Value::Null),
            }));
        }
        tx.commit()?;
        *self.pending_totals.lock() = (pending, bytes);
        Ok(out)
    }

    /// The latest tentative version of `rtype/id`: an entry still pending, or
    /// settled at a log index this node has not applied yet.
    pub fn pending(&self, rtype: &str, id: &str, applied: u64) -> Result<Option<Pending>, JournalError> {
        let conn = self.rconn.lock();
        let row = conn
            .prepare_cached(
                "SELECT seq, recorded_ms, view FROM entries
                 WHERE rtype = ?1 AND res_id = ?2 AND view IS NOT NULL
                   AND (status = 'pending' OR (status = 'committed' AND log_index > ?3))
                 ORDER BY seq DESC LIMIT 1",
            )?
            .query_row(params![rtype, id, applied as i64], |r| {
                Ok(Pending {
                    seq: r.get::<_, i64>(0)? as u64,
                    recorded_ms: r.get(1)?,
                    json: r.get(2)?,
                })
            })
            .optional()?;
        Ok(row)
    }

    /// The tentative version entry `seq` wrote, if it wrote `rtype/id`.
    pub fn view(&self, seq: u64, rtype: &str, id: &str) -> Result<Option<Pending>, JournalError> {
        let conn = self.rconn.lock();
        let row = conn
            .prepare_cached(
                "SELECT seq, recorded_ms, view FROM entries WHERE seq = ?1 AND rtype = ?2 AND res_id = ?3 AND view IS NOT NULL",
            )?
            .query_row(params![seq as i64, rtype, id], |r| {
                Ok(Pending {
                    seq: r.get::<_, i64>(0)? as u64,
                    recorded_ms: r.get(1)?,
                    json: r.get(2)?,
                })
            })
            .optional()?;
        Ok(row)
    }

    /// Every resource of `rtype` with a tentative version (latest per id).
    pub fn pending_of_type(&self, rtype: &str, applied: u64) -> Result<Vec<(String, Pending)>, JournalError> {
        let conn = self.rconn.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT res_id, seq, recorded_ms, view FROM entries e
             WHERE rtype = ?1 AND view IS NOT NULL
               AND (status = 'pending' OR (status = 'committed' AND log_index > ?2))
               AND seq = (SELECT MAX(seq) FROM entries x WHERE x.rtype = e.rtype AND x.res_id = e.res_id
                          AND x.view IS NOT NULL
                          AND (x.status = 'pending' OR (x.status = 'committed' AND x.log_index > ?2)))
             ORDER BY seq",
        )?;
        let rows = stmt.query_map(params![rtype, applied as i64], |r| {
            Ok((
                r.get::<_, String>(0)?,
                Pending {
                    seq: r.get::<_, i64>(1)? as u64,
                    recorded_ms: r.get(2)?,
                    json: r.get(3)?,
                },
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The oldest pending entries, in order: at most `entries_max` and
    /// `bytes_max` bytes (always at least one, when any is pending).
    pub fn next_batch(&self, entries_max: usize, bytes_max: usize) -> Result<Vec<Replay>, JournalError> {
        let conn = self.rconn.lock();
        let mut stmt =
            conn.prepare_cached("SELECT entry, bytes FROM entries WHERE status = 'pending' ORDER BY seq LIMIT ?1")?;
        let rows = stmt.query_map([entries_max as i64], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?;
        let mut out = Vec::new();
        let mut total = 0usize;
        for row in rows {
            let (entry, bytes) = row?;
            if !out.is_empty() && total + bytes as usize > bytes_max {
                break;
            }
            total += bytes as usize;
            let e: Replay = serde_json::from_str(&entry)
                .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))?;
            out.push(e);
        }
        Ok(out)
    }

    /// Entries from `from_seq` on, whatever their status: for re-sending
    /// (replay is idempotent) and for inspection.
    pub fn replays(&self, from_seq: u64, limit: usize) -> Result<Vec<Replay>, JournalError> {
        let conn = self.rconn.lock();
        let mut stmt = conn.prepare_cached("SELECT entry FROM entries WHERE seq >= ?1 ORDER BY seq LIMIT ?2")?;
        let rows = stmt.query_map(params![from_seq as i64, limit as i64], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(
                serde_json::from_str(&row?).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
                })?,
            );
        }
        Ok(out)
    }

    /// Record how replayed entries ended. A refused entry stays pending: it
    /// is an alarm for an operator, never skipped.
    pub fn settle(&self, receipts: &[Receipt], now_ms: i64) -> Result<(), JournalError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        for r in receipts {
            assert_eq!(r.node, self.node, "a receipt for another node's journal");
            let status = match &r.outcome {
                Outcome::Committed { .. } => "committed",
                Outcome::Task { .. } => "task",
                Outcome::Refused { .. } => continue,
            };
            let outcome = serde_json::to_string(&r.outcome).expect("an outcome serialises");
            tx.prepare_cached(
                "UPDATE entries SET status = ?2, log_index = ?3, outcome = ?4, settled_ms = ?5 WHERE seq = ?1",
            )?
            .execute(params![r.seq as i64, status, r.index as i64, outcome, now_ms])?;
        }
        tx.commit()?;
        *self.pending_totals.lock() = pending_totals(&conn)?;
        Ok(())
    }

    pub fn stats(&self) -> Result<Stats, JournalError> {
        let conn = self.rconn.lock();
        let mut s = Stats::default();
        let mut stmt = conn.prepare_cached(
            "SELECT status, COUNT(*), COALESCE(SUM(bytes), 0), MIN(recorded_ms), MAX(seq) FROM entries GROUP BY status",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, i64>(2)? as u64,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, Option<i64>>(4)?,
            ))
        })?;
        for row in rows {
            let (status, n, bytes, oldest, max_seq) = row?;
            match status.as_str() {
                "pending" => {
                    s.pending = n;
                    s.pending_bytes = bytes;
                    s.oldest_pending_ms = oldest;
                }
                "committed" => s.committed = n,
                "task" => s.tasks = n,
                _ => s.refused += n,
            }
            if status != "pending" {
                s.settled_head = s.settled_head.max(max_seq.unwrap_or(0) as u64);
            }
        }
        drop(stmt);
        if let Some((seq, hash)) = conn
            .query_row("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1", [], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
            })
            .optional()?
        {
            s.head_seq = seq;
            s.head_hash = hash;
        }
        Ok(s)
    }

    /// Entries, newest first, filtered by status and patient.
    pub fn list(&self, status: Option<&str>, patient: Option<&str>, limit: usize) -> Result<Vec<Row>, JournalError> {
        let conn = self.rconn.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT seq, hash, prev_hash, recorded_ms, policy, rtype, res_id, patient, user, status, log_index, outcome
             FROM entries WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR patient = ?2)
             ORDER BY seq DESC LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![status, patient, limit as i64], |r| {
            Ok(Row {
                seq: r.get::<_, i64>(0)? as u64,
                hash: r.get(1)?,
                prev_hash: r.get(2)?,
                recorded_ms: r.get(3)?,
                policy: r.get(4)?,
                rtype: r.get(5)?,
                id: r.get(6)?,
                patient: r.get(7)?,
                user: r.get(8)?,
                status: r.get(9)?,
                log_index: r.get::<_, Option<i64>>(10)?.map(|v| v as u64),
                outcome: r
                    .get::<_, Option<String>>(11)?
                    .and_then(|s| serde_json::from_str(&s).ok()),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every entry, re-read and re-hashed: the chain check and, against the
    /// receipts the replicated store holds for this node, missing and unknown.
    pub fn verify(&self, receipts: &[Receipt]) -> Result<Verify, JournalError> {
        let conn = self.rconn.lock();
        let mut v = Verify {
            chain_ok: true,
            ..Verify::default()
        };
        let mut stmt = conn.prepare("SELECT seq, entry, status, outcome FROM entries ORDER BY seq")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })?;
        let by_seq: std::collections::BTreeMap<u64, &Receipt> = receipts.iter().map(|r| (r.seq, r)).collect();
        let mut prev = String::new();
        let mut expect_seq = 1;
        let mut seen = std::collections::BTreeSet::new();
        for row in rows {
            let (seq, entry, status, outcome) = row?;
            v.entries += 1;
            seen.insert(seq);
            let ok = match serde_json::from_str::<Replay>(&entry) {
                Ok(e) => {
                    e.seq == seq && seq == expect_seq && e.prev_hash == prev && e.compute_hash() == e.hash && {
                        prev = e.hash.clone();
                        true
                    }
                }
                Err(_) => false,
            };
            if !ok && v.chain_broken_at.is_none() {
                v.chain_broken_at = Some(seq);
                v.chain_ok = false;
            }
            expect_seq = seq + 1;
            match (status.as_str(), by_seq.get(&seq)) {
                ("pending", None) => v.pending += 1,
                // Replayed, but this node has not been told (an ambiguous answer): not missing.
                ("pending", Some(_)) => v.pending += 1,
                (_, None) => v.missing.push(seq),
                (_, Some(r)) => {
                    let stored: Option<Outcome> = outcome.and_then(|o| serde_json::from_str(&o).ok());
                    if stored.as_ref() != Some(&r.outcome) {
                        v.mismatched.push(seq);
                    }
                }
            }
        }
        v.unknown = by_seq.keys().filter(|s| !seen.contains(s)).copied().collect();
        Ok(v)
    }
}

fn pending_totals(conn: &Connection) -> rusqlite::Result<(u64, u64)> {
    conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM entries WHERE status = 'pending'",
        [],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
    )
}

/// A write's resource as the site shows it before it commits.
fn tentative(resource: &Value, id: &str, seq: u64, recorded_ms: i64) -> Value {
    let mut v = resource.clone();
    if let Some(o) = v.as_object_mut() {
        o.insert("id".into(), json!(id));
        let meta = o.entry("meta").or_insert_with(|| json!({}));
        if let Some(m) = meta.as_object_mut() {
            m.insert("versionId".into(), json!(format!("p{seq}")));
            m.insert(
                "lastUpdated".into(),
                json!(hale_fhir::date::format_instant_ms(recorded_ms)),
            );
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor() -> Actor {
        Actor {
            user: "nurse".into(),
            role: "clinician".into(),
        }
    }

    fn obs(id: &str) -> WriteOp {
        WriteOp::Create {
            rtype: "Observation".into(),
            id: id.into(),
            resource: json!({"resourceType": "Observation", "status": "final", "code": {"text": "pulse"}}),
            if_none_exist: None,
        }
    }

    #[test]
    fn entries_chain_survive_reopen_and_respect_the_limits() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            entries_max: 3,
            bytes_max: 1 << 20,
        };
        {
            let j = Journal::open(dir.path(), 9, "east", limits).unwrap();
            for i in 0..3 {
                let a = j
                    .append(
                        actor(),
                        1000 + i,
                        Policy::Append,
                        Base::default(),
                        obs(&format!("o{i}")),
                        None,
                    )
                    .unwrap();
                assert_eq!(a.seq, i as u64 + 1);
                assert_eq!(a.view["meta"]["versionId"], format!("p{}", i + 1));
            }
            let full = j.append(actor(), 2000, Policy::Append, Base::default(), obs("o9"), None);
            assert!(matches!(full, Err(JournalError::Full { .. })), "{full:?}");
        }
        let j = Journal::open(dir.path(), 9, "east", limits).unwrap();
        let batch = j.next_batch(2, 1 << 20).unwrap();
        assert_eq!(batch.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(batch[1].prev_hash, batch[0].hash);
        assert!(j.pending("Observation", "o0", 0).unwrap().is_some());
        let v = j.verify(&[]).unwrap();
        assert!(v.chain_ok && v.missing.is_empty() && v.pending == 3, "{v:?}");
        // Another node may not open it.
        assert!(matches!(
            Journal::open(dir.path(), 10, "east", limits),
            Err(JournalError::WrongNode { .. })
        ));
    }

    #[test]
    fn settled_entries_leave_the_overlay_once_applied_and_verify_finds_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), 9, "east", Limits::default()).unwrap();
        for i in 0..2 {
            j.append(
                actor(),
                1000,
                Policy::Append,
                Base::default(),
                obs(&format!("o{i}")),
                None,
            )
            .unwrap();
        }
        let receipt = |seq: u64| Receipt {
            node: 9,
            seq,
            index: 40 + seq,
            outcome: Outcome::Committed {
                write: hale_store::sync::Committed {
                    rtype: "Observation".into(),
                    id: format!("o{}", seq - 1),
                    version: 1,
                },
            },
            duplicate: false,
        };
        j.settle(&[receipt(1), receipt(2)], 5000).unwrap();
        // Still shown until this node has applied index 41.
        assert!(j.pending("Observation", "o0", 40).unwrap().is_some());
        assert!(j.pending("Observation", "o0", 41).unwrap().is_none());
        let s = j.stats().unwrap();
        assert_eq!((s.pending, s.committed, s.head_seq, s.settled_head), (0, 2, 2, 2));
        let v = j.verify(&[receipt(1)]).unwrap();
        assert_eq!(v.missing, [2]);
        let v = j.verify(&[receipt(1), receipt(2), receipt(3)]).unwrap();
        assert_eq!(v.unknown, [3]);
        assert!(v.missing.is_empty() && v.chain_ok);
    }
}
