//! Deterministic apply: `(state, command) -> (state', outcome)`.
//!
//! Architecture invariant: nothing in this module reads the clock, randomness,
//! the environment or the network. Every input is in the command or the
//! database. Replaying a log therefore reproduces the state byte for byte.
//!
//! Each op runs inside a SQLite savepoint, so a rejected op leaves nothing
//! behind; a transaction wraps all its ops in one more savepoint.
//!
//! A command split into parts ([`crate::split`]) is staged part by part and
//! applied whole when its last part applies, at that part's log index.

use crate::command::{Actor, AuditAction, AuditRecord, Command, CommandKind, CommandPart, References, WriteOp};
use crate::query;
use crate::split::{PARTS_PER_COMMAND_MAX, SPLIT_COMMAND_BYTES_MAX, STAGED_PART_TTL_MS};
use crate::{RejectKind, Rejection, WriteStatus, Written};
use hale_fhir::codes::{CANCELLED_BY_SYSTEM, NHS_NUMBER_SYSTEM};
use hale_fhir::search::extract_index;
use hale_fhir::{Issue, IssueCode, ResourceType};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Map, Value};

#[path = "apply_replay.rs"]
mod replay;

/// Appointment statuses that hold their slot.
pub const HOLDING_STATUSES: &[&str] = &["pending", "booked", "arrived", "checked-in", "fulfilled"];

/// Ops in one command. Bounded so a single command cannot stall the log.
pub const OPS_PER_COMMAND_MAX: usize = 10_000;
/// Audit records in one command (position is packed into 20 bits of the audit seq).
pub const AUDITS_PER_COMMAND_MAX: usize = 1 << 20;

/// The result of applying one command.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Applied {
    /// Write: one entry. Batch: one per op. Transaction: one per op, all Ok.
    Ops(Vec<Result<Written, Rejection>>),
    /// A transaction that was rolled back as a whole.
    TransactionFailed(Rejection),
    /// Audit records stored.
    Audited(usize),
    /// A part of a split command was staged; nothing took effect yet. The
    /// outcome of the whole command is the outcome of its last part.
    Staged { group: String, seq: u32, count: u32 },
    /// Site-journal entries replayed: one receipt each, in order.
    Replayed(Vec<crate::sync::Receipt>),
    /// An account change: done, or refused with a message saying what to do
    /// ([`crate::accounts::rejection_kind`] classifies it).
    Account(Result<(), String>),
}

/// Apply one command at log position `index` on `conn`, inside the caller's transaction.
pub fn apply_command(conn: &Connection, index: u64, cmd: &Command) -> Result<Applied, rusqlite::Error> {
    let mut cx = Cx {
        conn,
        index,
        time_ms: cmd.time_ms,
        actor: &cmd.actor,
        references: cmd.references,
        audit_pos: 0,
        deferred_refs: Vec::new(),
        replay_site: None,
    };
    let applied = match &cmd.kind {
        CommandKind::Write(op) => Applied::Ops(vec![cx.apply_one(op, 0)?]),
        CommandKind::Batch(ops) => {
            assert!(
                ops.len() <= OPS_PER_COMMAND_MAX,
                "batch of {} ops exceeds the limit",
                ops.len()
            );
            let mut out = Vec::with_capacity(ops.len());
            for (i, op) in ops.iter().enumerate() {
                out.push(cx.apply_one(op, i)?);
            }
            Applied::Ops(out)
        }
        CommandKind::Transaction(ops) => {
            assert!(
                ops.len() <= OPS_PER_COMMAND_MAX,
                "transaction of {} ops exceeds the limit",
                ops.len()
            );
            cx.apply_transaction(ops)?
        }
        CommandKind::Audit(records) => {
            assert!(records.len() < AUDITS_PER_COMMAND_MAX);
            cx.audit_many(records)?;
            Applied::Audited(records.len())
        }
        CommandKind::Part(part) => apply_part(conn, index, cmd.time_ms, part)?,
        CommandKind::Replay(entries) => {
            assert!(
                entries.len() <= crate::sync::REPLAY_BATCH_ENTRIES_MAX,
                "replay of {} entries exceeds the limit",
                entries.len()
            );
            let mut out = Vec::with_capacity(entries.len());
            for e in entries {
                out.push(cx.replay(e)?);
            }
            Applied::Replayed(out)
        }
        CommandKind::AuditOnce { node, seq, records } => {
            assert!(records.len() < AUDITS_PER_COMMAND_MAX);
            let last: Option<i64> = conn
                .prepare_cached("SELECT seq FROM audit_heads WHERE node = ?1")?
                .query_row([*node as i64], |r| r.get(0))
                .optional()?;
            if last.is_some_and(|l| *seq as i64 <= l) {
                // Applied before: an ambiguous send that did commit, re-sent.
                Applied::Audited(0)
            } else {
                cx.audit_many(records)?;
                conn.prepare_cached("INSERT OR REPLACE INTO audit_heads(node, seq) VALUES (?1, ?2)")?
                    .execute(params![*node as i64, *seq as i64])?;
                Applied::Audited(records.len())
            }
        }
        CommandKind::Account(op) => Applied::Account(crate::accounts::apply(conn, op, cmd.time_ms, &cmd.actor.user)?),
    };
    Ok(applied)
}

/// Stage one part of a split command, or, for its last part, reassemble the
/// command and apply it at `index`. Bad parts are refused, never a panic: the
/// refusal drops every staged part of the group, so nothing of it applies.
fn apply_part(conn: &Connection, index: u64, time_ms: i64, part: &CommandPart) -> rusqlite::Result<Applied> {
    // Parts a dead proposer left behind. Only command data decides what goes.
    conn.prepare_cached("DELETE FROM command_parts WHERE time_ms < ?1")?
        .execute([time_ms.saturating_sub(STAGED_PART_TTL_MS)])?;

    let CommandPart {
        group,
        seq,
        count,
        chunk,
    } = part;
    let (seq, count) = (*seq, *count);
    if count == 0 || count > PARTS_PER_COMMAND_MAX || seq >= count {
        return refuse_parts(
            conn,
            group,
            format!("part {seq} of {count} is out of range (at most {PARTS_PER_COMMAND_MAX} parts)"),
        );
    }
    let other_count: Option<i64> = conn
        .prepare_cached(r#"SELECT count FROM command_parts WHERE "group" = ?1 AND count != ?2 LIMIT 1"#)?
        .query_row(params![group, count], |r| r.get(0))
        .optional()?;
    if let Some(other) = other_count {
        return refuse_parts(
            conn,
            group,
            format!("part {seq} says the command has {count} parts, an earlier part said {other}"),
        );
    }

    if seq + 1 < count {
        let inserted = conn
            .prepare_cached(
                r#"INSERT OR IGNORE INTO command_parts("group", seq, count, time_ms, chunk) VALUES (?1, ?2, ?3, ?4, ?5)"#,
            )?
            .execute(params![group, seq, count, time_ms, chunk])?;
        if inserted == 0 {
            return refuse_parts(conn, group, format!("part {seq} of {count} arrived twice"));
        }
        return Ok(Applied::Staged {
            group: group.clone(),
            seq,
            count,
        });
    }

    // The last part: every earlier part must be staged, exactly once each.
    let mut staged: Vec<(i64, String)> = Vec::new();
    let mut bytes = chunk.len();
    {
        let mut stmt =
            conn.prepare_cached(r#"SELECT seq, chunk FROM command_parts WHERE "group" = ?1 ORDER BY seq"#)?;
        let mut rows = stmt.query([group])?;
        while let Some(r) = rows.next()? {
            let c: String = r.get(1)?;
            bytes += c.len();
            if bytes > SPLIT_COMMAND_BYTES_MAX {
                drop(rows);
                return refuse_parts(
                    conn,
                    group,
                    format!("the parts hold more than {SPLIT_COMMAND_BYTES_MAX} bytes"),
                );
            }
            staged.push((r.get(0)?, c));
        }
    }
    let complete = staged.len() + 1 == count as usize && staged.iter().enumerate().all(|(i, (s, _))| *s == i as i64);
    if !complete {
        let have: std::collections::BTreeSet<i64> = staged.iter().map(|(s, _)| *s).collect();
        let missing: Vec<String> = (0..i64::from(count) - 1)
            .filter(|s| !have.contains(s))
            .take(10)
            .map(|s| s.to_string())
            .collect();
        let why = if missing.is_empty() {
            "its staged parts do not match its count".to_string()
        } else {
            format!(
                "part(s) {}{} of {count} never arrived or were purged after {} minutes",
                missing.join(", "),
                if missing.len() == 10 { ", ..." } else { "" },
                STAGED_PART_TTL_MS / 60_000
            )
        };
        return refuse_parts(conn, group, why);
    }
    let mut encoded = String::with_capacity(bytes);
    for (_, c) in &staged {
        encoded.push_str(c);
    }
    encoded.push_str(chunk);
    drop(staged);
    let whole: Command = match serde_json::from_str(&encoded) {
        Ok(c) => c,
        Err(e) => return refuse_parts(conn, group, format!("the reassembled command does not decode: {e}")),
    };
    if matches!(whole.kind, CommandKind::Part(_)) {
        return refuse_parts(
            conn,
            group,
            "the reassembled command is itself a part; parts do not nest".into(),
        );
    }
    // apply_command asserts these limits; a command from parts is refused instead.
    let (items, max) = match &whole.kind {
        CommandKind::Batch(ops) | CommandKind::Transaction(ops) => (ops.len(), OPS_PER_COMMAND_MAX),
        CommandKind::Audit(records) | CommandKind::AuditOnce { records, .. } => {
            (records.len(), AUDITS_PER_COMMAND_MAX - 1)
        }
        CommandKind::Replay(entries) => (entries.len(), crate::sync::REPLAY_BATCH_ENTRIES_MAX),
        CommandKind::Write(_) | CommandKind::Part(_) | CommandKind::Account(_) => (0, 0),
    };
    if items > max {
        return refuse_parts(
            conn,
            group,
            format!("the reassembled command has {items} entries, more than {max}"),
        );
    }
    delete_parts(conn, group)?;
    apply_command(conn, index, &whole)
}

fn delete_parts(conn: &Connection, group: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(r#"DELETE FROM command_parts WHERE "group" = ?1"#)?
        .execute([group])?;
    Ok(())
}

/// Drop the group's staged parts and refuse the whole command.
fn refuse_parts(conn: &Connection, group: &str, why: String) -> rusqlite::Result<Applied> {
    delete_parts(conn, group)?;
    Ok(Applied::TransactionFailed(Rejection {
        kind: RejectKind::Invalid,
        issues: vec![Issue::error(
            IssueCode::Processing,
            format!("split command {group} was refused and nothing of it applied: {why}"),
        )],
        op: None,
    }))
}

struct Cx<'a> {
    conn: &'a Connection,
    index: u64,
    time_ms: i64,
    actor: &'a Actor,
    references: References,
    audit_pos: u64,
    /// References to check once all ops of the current unit have been applied:
    /// (op index, FHIRPath of the reference, target type, target id).
    deferred_refs: Vec<(usize, String, String, String)>,
    /// While a site-journal entry is replayed: the site that wrote it (it may
    /// book the slots reserved for its offline use).
    replay_site: Option<&'a str>,
}

/// Errors inside an op: either a rejection of the op or a storage failure.
enum OpError {
    Reject(Rejection),
    Sql(rusqlite::Error),
}

impl From<rusqlite::Error> for OpError {
    fn from(e: rusqlite::Error) -> Self {
        OpError::Sql(e)
    }
}

impl From<Rejection> for OpError {
    fn from(r: Rejection) -> Self {
        OpError::Reject(r)
    }
}

fn reject(kind: RejectKind, code: IssueCode, msg: impl Into<String>, at: Option<String>) -> OpError {
    let mut issue = Issue::error(code, msg);
    issue.expression = at;
    OpError::Reject(Rejection {
        kind,
        issues: vec![issue],
        op: None,
    })
}

/// The current row of a resource.
pub(crate) struct Current {
    pub rid: i64,
    pub version: u64,
    pub deleted: bool,
    pub json: String,
}

pub(crate) fn load_current(conn: &Connection, rtype: &str, id: &str) -> rusqlite::Result<Option<Current>> {
    conn.prepare_cached("SELECT rid, version, deleted, json FROM resources WHERE rtype = ?1 AND id = ?2")?
        .query_row(params![rtype, id], |r| {
            Ok(Current {
                rid: r.get(0)?,
                version: r.get::<_, i64>(1)? as u64,
                deleted: r.get::<_, i64>(2)? != 0,
                json: r.get(3)?,
            })
        })
        .optional()
}

impl<'a> Cx<'a> {
    fn savepoint(&self, name: &str) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(&format!("SAVEPOINT {name}"))?
            .execute([])
            .map(|_| ())
    }

    fn release(&self, name: &str) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(&format!("RELEASE {name}"))?
            .execute([])
            .map(|_| ())
    }

    fn rollback_to(&self, name: &str) -> rusqlite::Result<()> {
        self.conn.prepare_cached(&format!("ROLLBACK TO {name}"))?.execute([])?;
        self.release(name)
    }

    /// One op in its own savepoint; reference checks run at its end.
    fn apply_one(&mut self, op: &WriteOp, op_index: usize) -> rusqlite::Result<Result<Written, Rejection>> {
        self.savepoint("op")?;
        self.deferred_refs.clear();
        let result = self.write_op(op, op_index).and_then(|w| {
            self.check_deferred_refs()?;
            Ok(w)
        });
        match result {
            Ok(w) => {
                self.release("op")?;
                Ok(Ok(w))
            }
            Err(OpError::Reject(mut r)) => {
                self.rollback_to("op")?;
                r.op = Some(op_index);
                self.audit_rejected(op, &r)?;
                Ok(Err(r))
            }
            Err(OpError::Sql(e)) => {
                self.rollback_to("op")?;
                Err(e)
            }
        }
    }

    fn apply_transaction(&mut self, ops: &[WriteOp]) -> rusqlite::Result<Applied> {
        self.savepoint("tx")?;
        self.deferred_refs.clear();
        let mut out = Vec::with_capacity(ops.len());
        let mut failed: Option<(usize, OpError)> = None;
        // Later ops may need their references redirected (see below), so work on a copy.
        let mut ops: Vec<WriteOp> = ops.to_vec();
        for i in 0..ops.len() {
            match self.write_op(&ops[i], i) {
                Ok(w) => {
                    // A conditional create that matched an existing resource: entries that
                    // referred to the planned id now refer to the match. Derived from the
                    // command and state only, so replay does the same.
                    if w.status == WriteStatus::Existing && w.id != ops[i].id() {
                        let from = format!("{}/{}", w.rtype, ops[i].id());
                        let to = format!("{}/{}", w.rtype, w.id);
                        for later in &mut ops[i + 1..] {
                            if let WriteOp::Create { resource, .. } | WriteOp::Update { resource, .. } = later {
                                redirect_refs(resource, &from, &to);
                            }
                        }
                    }
                    out.push(Ok(w))
                }
                Err(e) => {
                    failed = Some((i, e));
                    break;
                }
            }
        }
        if failed.is_none() {
            if let Err(e) = self.check_deferred_refs() {
                failed = Some((usize::MAX, e));
            }
        }
        match failed {
            None => {
                self.release("tx")?;
                Ok(Applied::Ops(out))
            }
            Some((i, OpError::Reject(mut r))) => {
                self.rollback_to("tx")?;
                if r.op.is_none() && i != usize::MAX {
                    r.op = Some(i);
                }
                let failed_op = r.op.and_then(|i| ops.get(i)).unwrap_or(&ops[0]).clone();
                self.audit_rejected(&failed_op, &r)?;
                Ok(Applied::TransactionFailed(r))
            }
            Some((_, OpError::Sql(e))) => {
                self.rollback_to("tx")?;
                Err(e)
            }
        }
    }

    fn check_deferred_refs(&mut self) -> Result<(), OpError> {
        let refs = std::mem::take(&mut self.deferred_refs);
        for (op, path, rtype, id) in refs {
            let live = load_current(self.conn, &rtype, &id)?
                .map(|c| !c.deleted)
                .unwrap_or(false);
            if !live {
                let mut r = Rejection {
                    kind: RejectKind::Unprocessable,
                    issues: vec![Issue::error(
                        IssueCode::NotFound,
                        format!("{path} refers to {rtype}/{id}, which does not exist on this server"),
                    )
                    .at(path)],
                    op: None,
                };
                r.op = Some(op);
                return Err(OpError::Reject(r));
            }
        }
        Ok(())
    }

    fn write_op(&mut self, op: &WriteOp, op_index: usize) -> Result<Written, OpError> {
        let rt: ResourceType = op.rtype().parse().map_err(|_| {
            reject(
                RejectKind::Invalid,
                IssueCode::NotSupported,
                format!("resource type '{}' is not supported", op.rtype()),
                None,
            )
        })?;
        if !rt.client_writable() {
            return Err(reject(
                RejectKind::Forbidden,
                IssueCode::NotSupported,
                format!("{rt} is written by the server only; it can be read and searched"),
                None,
            ));
        }
        match op {
            WriteOp::Create {
                id,
                resource,
                if_none_exist,
                ..
            } => {
                if let Some(pairs) = if_none_exist {
                    let q = hale_fhir::search::parse_query(rt, pairs, true).map_err(|i| {
                        OpError::Reject(Rejection {
                            kind: RejectKind::Invalid,
                            issues: vec![i],
                            op: None,
                        })
                    })?;
                    let found = query::search_rids(self.conn, &q, 2)?;
                    match found.len() {
                        0 => {}
                        1 => {
                            let cur = query::load_by_rid(self.conn, found[0])?;
                            // The client is shown the existing resource: that is a read.
                            let patient = self.patient_of(rt, &cur.1, cur.0)?;
                            self.audit(&AuditRecord {
                                purpose: None,
                                time_ms: self.time_ms,
                                actor: self.actor.clone(),
                                action: AuditAction::Read,
                                rtype: rt.as_str().into(),
                                id: Some(cur.1.clone()),
                                patient,
                                outcome: 0,
                                detail: format!("POST {rt} with If-None-Exist matched {rt}/{}", cur.1),
                            })?;
                            return Ok(Written {
                                rtype: rt.as_str().to_string(),
                                id: cur.1,
                                version: cur.2,
                                updated_ms: cur.3,
                                status: WriteStatus::Existing,
                                json: Some(cur.4),
                            });
                        }
                        _ => {
                            return Err(reject(
                                RejectKind::PreconditionFailed,
                                IssueCode::Duplicate,
                                "If-None-Exist matched more than one resource",
                                None,
                            ))
                        }
                    }
                }
                let cur = load_current(self.conn, rt.as_str(), id)?;
                if let Some(c) = &cur {
                    if !c.deleted {
                        return Err(reject(
                            RejectKind::Conflict,
                            IssueCode::Duplicate,
                            format!("{rt}/{id} already exists"),
                            None,
                        ));
                    }
                }
                self.put(rt, id, resource.clone(), cur, "POST", AuditAction::Create, op_index)
            }
            WriteOp::Update {
                id, resource, if_match, ..
            } => {
                let cur = load_current(self.conn, rt.as_str(), id)?;
                if let Some(expected) = if_match {
                    let actual = cur.as_ref().filter(|c| !c.deleted).map(|c| c.version);
                    if actual != Some(*expected) {
                        let actual = actual
                            .map(|v| format!("version {v}"))
                            .unwrap_or_else(|| "no current version".into());
                        return Err(reject(
                            RejectKind::PreconditionFailed,
                            IssueCode::Conflict,
                            format!("If-Match expected version {expected} of {rt}/{id}, but the server has {actual}"),
                            None,
                        ));
                    }
                }
                let action = if cur.as_ref().is_some_and(|c| !c.deleted) {
                    AuditAction::Update
                } else {
                    AuditAction::Create
                };
                self.put(rt, id, resource.clone(), cur, "PUT", action, op_index)
            }
            WriteOp::Delete { id, .. } => self.delete(rt, id),
        }
    }

    /// Write a new version of `rt/id`.
    #[allow(clippy::too_many_arguments)]
    fn put(
        &mut self,
        rt: ResourceType,
        id: &str,
        mut resource: Value,
        cur: Option<Current>,
        method: &str,
        action: AuditAction,
        op_index: usize,
    ) -> Result<Written, OpError> {
        let old: Option<Value> = match &cur {
            Some(c) if !c.deleted => Some(serde_json::from_str(&c.json).expect("stored JSON is valid")),
            _ => None,
        };
        let version = cur.as_ref().map(|c| c.version + 1).unwrap_or(1);
        stamp(&mut resource, id, version, self.time_ms);

        match rt {
            ResourceType::Patient => self.check_nhs_unique(id, &resource)?,
            ResourceType::Appointment => self.check_booking(id, old.as_ref(), &resource)?,
            ResourceType::Slot => self.check_slot_change(id, old.as_ref(), &resource)?,
            _ => {}
        }

        let json = serde_json::to_string(&resource).expect("a JSON value always serialises");
        let rid = self.store_version(rt, id, version, method, &json, cur.as_ref().map(|c| c.rid))?;
        self.reindex(rt, rid, &resource)?;
        if rt == ResourceType::Task {
            self.after_task_write(&resource)?;
        }
        let patient = self.patient_of(rt, id, rid)?;
        self.audit(&AuditRecord {
            purpose: None,
            time_ms: self.time_ms,
            actor: self.actor.clone(),
            action,
            rtype: rt.as_str().into(),
            id: Some(id.into()),
            patient,
            outcome: 0,
            detail: format!("{method} {rt}/{id}"),
        })?;
        // References of this version must resolve once the unit is complete.
        for (path, t, i) in local_references(rt, &resource) {
            if self.references.is_enforce() && !(t == rt.as_str() && i == id) {
                self.deferred_refs.push((op_index, path, t, i));
            }
        }
        Ok(Written {
            rtype: rt.as_str().into(),
            id: id.into(),
            version,
            updated_ms: self.time_ms,
            status: if action == AuditAction::Create {
                WriteStatus::Created
            } else {
                WriteStatus::Updated
            },
            json: Some(json),
        })
    }

    fn store_version(
        &self,
        rt: ResourceType,
        id: &str,
        version: u64,
        method: &str,
        json: &str,
        rid: Option<i64>,
    ) -> rusqlite::Result<i64> {
        let rid = match rid {
            Some(rid) => {
                // The version whose JSON lives only in `resources` (the live
                // one, or the last live one of a deleted resource) gets its
                // own copy in history before `resources` moves on.
                self.conn
                    .prepare_cached(
                        "UPDATE history SET json = (SELECT json FROM resources WHERE rid = ?1)
                         WHERE rid = ?1 AND json IS NULL AND method != 'DELETE'",
                    )?
                    .execute([rid])?;
                self.conn
                    .prepare_cached(
                        "UPDATE resources SET version = ?2, updated_ms = ?3, deleted = 0, json = ?4 WHERE rid = ?1",
                    )?
                    .execute(params![rid, version as i64, self.time_ms, json])?;
                rid
            }
            None => {
                self.conn
                    .prepare_cached(
                        "INSERT INTO resources(rtype, id, version, updated_ms, deleted, json) VALUES (?1, ?2, ?3, ?4, 0, ?5)",
                    )?
                    .execute(params![rt.as_str(), id, version as i64, self.time_ms, json])?;
                self.conn.last_insert_rowid()
            }
        };
        // The new version's JSON is in `resources` only (see schema.rs).
        self.conn
            .prepare_cached(
                "INSERT INTO history(rid, rtype, id, version, updated_ms, method, json) VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL)",
            )?
            .execute(params![rid, rt.as_str(), id, version as i64, self.time_ms, method])?;
        Ok(rid)
    }

    fn reindex(&self, rt: ResourceType, rid: i64, resource: &Value) -> rusqlite::Result<()> {
        index_resource(self.conn, rt, rid, resource)
    }

    fn delete(&mut self, rt: ResourceType, id: &str) -> Result<Written, OpError> {
        let Some(cur) = load_current(self.conn, rt.as_str(), id)?.filter(|c| !c.deleted) else {
            return Ok(Written {
                rtype: rt.as_str().into(),
                id: id.into(),
                version: 0,
                updated_ms: self.time_ms,
                status: WriteStatus::NotFound,
                json: None,
            });
        };
        let old: Value = serde_json::from_str(&cur.json).expect("stored JSON is valid");
        if rt == ResourceType::Appointment {
            // Releasing the slots first removes this appointment's own hold.
            self.release_slots(id, &old, None)?;
        }
        // Refuse to orphan live resources that point here.
        let referrer: Option<(String, String)> = if !self.references.is_enforce() {
            None
        } else {
            self.conn
                .prepare_cached(
                    "SELECT r.rtype, r.id FROM refs f JOIN resources r ON r.rid = f.rid
                 WHERE f.dst_type = ?1 AND f.dst_id = ?2 AND r.deleted = 0 AND f.rid != ?3 LIMIT 1",
                )?
                .query_row(params![rt.as_str(), id, cur.rid], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?
        };
        if let Some((t, i)) = referrer {
            return Err(reject(
                RejectKind::Conflict,
                IssueCode::Conflict,
                format!("{rt}/{id} cannot be deleted: {t}/{i} refers to it. Delete or change that resource first"),
                None,
            ));
        }
        let patient = self.patient_of(rt, id, cur.rid)?;
        let version = cur.version + 1;
        self.conn
            .prepare_cached("UPDATE resources SET version = ?2, updated_ms = ?3, deleted = 1 WHERE rid = ?1")?
            .execute(params![cur.rid, version as i64, self.time_ms])?;
        self.conn
            .prepare_cached(
                "INSERT INTO history(rid, rtype, id, version, updated_ms, method, json) VALUES (?1, ?2, ?3, ?4, ?5, 'DELETE', NULL)",
            )?
            .execute(params![cur.rid, rt.as_str(), id, version as i64, self.time_ms])?;
        self.conn
            .prepare_cached("DELETE FROM idx WHERE rid = ?1")?
            .execute([cur.rid])?;
        self.conn
            .prepare_cached("DELETE FROM refs WHERE rid = ?1")?
            .execute([cur.rid])?;
        self.audit(&AuditRecord {
            purpose: None,
            time_ms: self.time_ms,
            actor: self.actor.clone(),
            action: AuditAction::Delete,
            rtype: rt.as_str().into(),
            id: Some(id.into()),
            patient,
            outcome: 0,
            detail: format!("DELETE {rt}/{id}"),
        })?;
        Ok(Written {
            rtype: rt.as_str().into(),
            id: id.into(),
            version,
            updated_ms: self.time_ms,
            status: WriteStatus::Deleted,
            json: None,
        })
    }

    /// Two Patients may not share one NHS number.
    fn check_nhs_unique(&self, id: &str, patient: &Value) -> Result<(), OpError> {
        let Some(ids) = patient.get("identifier").and_then(Value::as_array) else {
            return Ok(());
        };
        for (i, ident) in ids.iter().enumerate() {
            if ident.get("system").and_then(Value::as_str) != Some(NHS_NUMBER_SYSTEM) {
                continue;
            }
            let Some(value) = ident.get("value").and_then(Value::as_str) else {
                continue;
            };
            let value = hale_fhir::nhs::normalise(value);
            let other: Option<String> = self
                .conn
                .prepare_cached(
                    "SELECT r.id FROM idx x JOIN resources r ON r.rid = x.rid
                     WHERE x.rtype = 'Patient' AND x.param = 'identifier' AND x.v = ?1 AND x.s = ?2
                       AND r.id != ?3 AND r.deleted = 0 LIMIT 1",
                )?
                .query_row(params![value, NHS_NUMBER_SYSTEM, id], |r| r.get(0))
                .optional()?;
            if let Some(other) = other {
                return Err(reject(
                    RejectKind::Conflict,
                    IssueCode::Duplicate,
                    format!("NHS number {value} already belongs to Patient/{other}"),
                    Some(format!("Patient.identifier[{i}].value")),
                ));
            }
        }
        Ok(())
    }

    /// Booking rules for a new Appointment version.
    fn check_booking(&mut self, id: &str, old: Option<&Value>, new: &Value) -> Result<(), OpError> {
        let new_status = new.get("status").and_then(Value::as_str).unwrap_or("");
        if let Some(old) = old {
            let old_status = old.get("status").and_then(Value::as_str).unwrap_or("");
            if !transition_allowed(old_status, new_status) {
                return Err(reject(
                    RejectKind::Unprocessable,
                    IssueCode::BusinessRule,
                    format!(
                        "an Appointment cannot go from '{old_status}' to '{new_status}'; allowed next statuses: {}",
                        allowed_next(old_status).join(", ")
                    ),
                    Some("Appointment.status".into()),
                ));
            }
        }
        if new_status == "cancelled" && old.is_none_or(|o| o.get("status").and_then(Value::as_str) != Some("cancelled"))
        {
            let who = new
                .pointer("/cancelationReason/coding")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|c| c.get("system").and_then(Value::as_str) == Some(CANCELLED_BY_SYSTEM))
                .and_then(|c| c.get("code").and_then(Value::as_str));
            if !matches!(who, Some("patient" | "provider")) {
                return Err(reject(
                    RejectKind::Unprocessable,
                    IssueCode::Required,
                    format!(
                        "a cancellation must say who cancelled: add a coding with system {CANCELLED_BY_SYSTEM} and code 'patient' or 'provider' to cancelationReason (put the reason in cancelationReason.text)"
                    ),
                    Some("Appointment.cancelationReason".into()),
                ));
            }
        }
        let holds = HOLDING_STATUSES.contains(&new_status);
        let new_slots = slot_refs(new);
        // Slots this appointment held before and no longer holds are released.
        self.release_slots(
            id,
            old.unwrap_or(&Value::Null),
            if holds { Some(&new_slots) } else { None },
        )?;
        if !holds {
            return Ok(());
        }
        let old_held: Vec<String> = match old {
            Some(o) if HOLDING_STATUSES.contains(&o.get("status").and_then(Value::as_str).unwrap_or("")) => {
                slot_refs(o).into_iter().map(|(_, s)| s).collect()
            }
            _ => Vec::new(),
        };
        for (i, slot_id) in &new_slots {
            let at = format!("Appointment.slot[{i}]");
            let Some(slot) = load_current(self.conn, "Slot", slot_id)?.filter(|c| !c.deleted) else {
                return Err(reject(
                    RejectKind::Unprocessable,
                    IssueCode::NotFound,
                    format!("{at} refers to Slot/{slot_id}, which does not exist on this server"),
                    Some(at),
                ));
            };
            if let Some(holder) = self.slot_holder(slot_id, id)? {
                return Err(reject(
                    RejectKind::Conflict,
                    IssueCode::Conflict,
                    format!("Slot/{slot_id} is already booked by Appointment/{holder}"),
                    Some(at),
                ));
            }
            let mut slot_json: Value = serde_json::from_str(&slot.json).expect("stored JSON is valid");
            if let Some(site) = crate::sync::offline_reserve(&slot_json) {
                if self.replay_site != Some(site) && !old_held.contains(slot_id) {
                    return Err(reject(
                        RejectKind::Conflict,
                        IssueCode::BusinessRule,
                        format!("Slot/{slot_id} is reserved for bookings made at {site} while it is cut off; book another slot, or release the reserve by removing its offline-reserve extension"),
                        Some(at),
                    ));
                }
            }
            let slot_status = slot_json
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if old_held.contains(slot_id) && slot_status == "busy" {
                continue; // already ours
            }
            if slot_status != "free" {
                return Err(reject(
                    RejectKind::Conflict,
                    IssueCode::Conflict,
                    format!("Slot/{slot_id} is not free (its status is '{slot_status}')"),
                    Some(at),
                ));
            }
            slot_json["status"] = json!("busy");
            self.system_put(ResourceType::Slot, slot_id, slot_json, slot)?;
        }
        Ok(())
    }

    /// Mark free the slots that `appointment` (an old version, or Null) held and
    /// that are not in `keep`.
    fn release_slots(&mut self, id: &str, old: &Value, keep: Option<&Vec<(usize, String)>>) -> Result<(), OpError> {
        if !HOLDING_STATUSES.contains(&old.get("status").and_then(Value::as_str).unwrap_or("")) {
            return Ok(());
        }
        for (_, slot_id) in slot_refs(old) {
            if keep.is_some_and(|k| k.iter().any(|(_, s)| *s == slot_id)) {
                continue;
            }
            if self.slot_holder(&slot_id, id)?.is_some() {
                continue;
            }
            let Some(slot) = load_current(self.conn, "Slot", &slot_id)?.filter(|c| !c.deleted) else {
                continue;
            };
            let mut slot_json: Value = serde_json::from_str(&slot.json).expect("stored JSON is valid");
            if slot_json.get("status").and_then(Value::as_str) == Some("busy") {
                slot_json["status"] = json!("free");
                self.system_put(ResourceType::Slot, &slot_id, slot_json, slot)?;
            }
        }
        Ok(())
    }

    /// Another appointment (not `except`) that holds `slot_id`.
    fn slot_holder(&self, slot_id: &str, except: &str) -> rusqlite::Result<Option<String>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT r.id FROM idx s JOIN resources r ON r.rid = s.rid
             WHERE s.rtype = 'Appointment' AND s.param = 'slot' AND s.v = ?1 AND s.s = 'Slot'
               AND r.deleted = 0 AND r.id != ?2
               AND EXISTS (SELECT 1 FROM idx st WHERE st.rid = r.rid AND st.param = 'status'
                           AND st.v IN ('pending', 'booked', 'arrived', 'checked-in', 'fulfilled'))
             LIMIT 1",
        )?;
        stmt.query_row(params![slot_id, except], |r| r.get(0)).optional()
    }

    /// A Slot may not be freed or blocked by a client while an appointment holds it.
    fn check_slot_change(&self, id: &str, old: Option<&Value>, new: &Value) -> Result<(), OpError> {
        let Some(old) = old else { return Ok(()) };
        let (o, n) = (
            old.get("status").and_then(Value::as_str),
            new.get("status").and_then(Value::as_str),
        );
        if o == Some("busy") && n != Some("busy") {
            if let Some(holder) = self.slot_holder(id, "")? {
                return Err(reject(
                    RejectKind::Conflict,
                    IssueCode::Conflict,
                    format!("Slot/{id} is held by Appointment/{holder}; cancel that appointment to free the slot"),
                    Some("Slot.status".into()),
                ));
            }
        }
        Ok(())
    }

    /// A server-side change to another resource (a slot becoming busy or free).
    fn system_put(&mut self, rt: ResourceType, id: &str, mut resource: Value, cur: Current) -> Result<(), OpError> {
        let version = cur.version + 1;
        stamp(&mut resource, id, version, self.time_ms);
        let json = serde_json::to_string(&resource).expect("a JSON value always serialises");
        let rid = self.store_version(rt, id, version, "PUT", &json, Some(cur.rid))?;
        self.reindex(rt, rid, &resource)?;
        self.audit(&AuditRecord {
            purpose: None,
            time_ms: self.time_ms,
            actor: self.actor.clone(),
            action: AuditAction::Update,
            rtype: rt.as_str().into(),
            id: Some(id.into()),
            patient: None,
            outcome: 0,
            detail: format!("PUT {rt}/{id} (booking rule)"),
        })?;
        Ok(())
    }

    /// The patient whose record a resource belongs to.
    fn patient_of(&self, rt: ResourceType, id: &str, rid: i64) -> rusqlite::Result<Option<String>> {
        if rt == ResourceType::Patient {
            return Ok(Some(id.to_string()));
        }
        self.conn
            .prepare_cached("SELECT dst_id FROM refs INDEXED BY refs_rid WHERE rid = ?1 AND dst_type = 'Patient' ORDER BY dst_id LIMIT 1")?
            .query_row([rid], |r| r.get(0))
            .optional()
    }

    fn audit_rejected(&mut self, op: &WriteOp, r: &Rejection) -> rusqlite::Result<()> {
        let action = match op {
            WriteOp::Create { .. } => AuditAction::Create,
            WriteOp::Update { .. } => AuditAction::Update,
            WriteOp::Delete { .. } => AuditAction::Delete,
        };
        let patient = (op.rtype() == "Patient")
            .then(|| op.id().to_string())
            .or_else(|| match op {
                WriteOp::Create { resource, .. } | WriteOp::Update { resource, .. } => first_patient_ref(resource),
                WriteOp::Delete { .. } => None,
            });
        let why = r.issues.first().map(|i| i.diagnostics.as_str()).unwrap_or("rejected");
        self.audit(&AuditRecord {
            purpose: None,
            time_ms: self.time_ms,
            actor: self.actor.clone(),
            action,
            rtype: op.rtype().into(),
            id: Some(op.id().into()),
            patient,
            outcome: 4,
            detail: format!("rejected: {why}"),
        })
    }

    fn audit(&mut self, r: &AuditRecord) -> rusqlite::Result<()> {
        self.audit_many(std::slice::from_ref(r))
    }

    /// Audit rows for `rs`, in order, at this command's next audit positions.
    fn audit_many(&mut self, rs: &[AuditRecord]) -> rusqlite::Result<()> {
        assert!(self.index < (1u64 << 43), "log index too large for the audit sequence");
        let mut rows = Vec::with_capacity(rs.len());
        for r in rs {
            assert!(
                self.audit_pos < AUDITS_PER_COMMAND_MAX as u64,
                "too many audit rows in one command"
            );
            let seq = ((self.index << 20) | self.audit_pos) as i64;
            self.audit_pos += 1;
            rows.push(crate::audit::ChainRow {
                seq,
                time_ms: r.time_ms,
                user: r.actor.user.clone(),
                role: r.actor.role.clone(),
                action: r.action.code().to_string(),
                rtype: r.rtype.clone(),
                res_id: r.id.clone(),
                patient: r.patient.clone(),
                outcome: r.outcome as i64,
                detail: r.detail.clone(),
                purpose: r.purpose.clone(),
            });
        }
        crate::audit::append_many(self.conn, &rows)
    }
}

/// Replace the search index and reference rows of resource `rid`.
pub(crate) fn index_resource(conn: &Connection, rt: ResourceType, rid: i64, resource: &Value) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM idx WHERE rid = ?1")?.execute([rid])?;
    conn.prepare_cached("DELETE FROM refs WHERE rid = ?1")?.execute([rid])?;
    let mut ins =
        conn.prepare_cached("INSERT INTO idx(rid, rtype, param, s, v, lo, hi) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")?;
    for e in extract_index(rt, resource) {
        let row = crate::query::index_row(&e.value);
        let param = format!("{}{}", e.param, e.facet.suffix());
        ins.execute(params![rid, rt.as_str(), param, row.s, row.v, row.lo, row.hi])?;
    }
    let mut ins = conn.prepare_cached("INSERT INTO refs(rid, dst_type, dst_id) VALUES (?1, ?2, ?3)")?;
    let mut seen = std::collections::BTreeSet::new();
    for (_, t, i) in local_references(rt, resource) {
        if seen.insert((t.clone(), i.clone())) {
            ins.execute(params![rid, t, i])?;
        }
    }
    Ok(())
}

/// Set `id`, `meta.versionId` and `meta.lastUpdated`, keeping the rest of `meta`.
fn stamp(resource: &mut Value, id: &str, version: u64, time_ms: i64) {
    let obj = resource.as_object_mut().expect("validated resources are objects");
    obj.insert("id".into(), Value::String(id.into()));
    let meta = obj.entry("meta").or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    let meta = meta.as_object_mut().expect("meta is an object");
    meta.insert("versionId".into(), Value::String(version.to_string()));
    meta.insert(
        "lastUpdated".into(),
        Value::String(hale_fhir::date::format_instant_ms(time_ms)),
    );
    // Keep `resourceType` and `id` first for readability: move them to the front.
    let rt = obj.shift_remove("resourceType");
    let idv = obj.shift_remove("id");
    let metav = obj.shift_remove("meta");
    let rest = std::mem::take(obj);
    if let Some(v) = rt {
        obj.insert("resourceType".into(), v);
    }
    if let Some(v) = idv {
        obj.insert("id".into(), v);
    }
    if let Some(v) = metav {
        obj.insert("meta".into(), v);
    }
    obj.extend(rest);
}

/// Replace every `reference` equal to `from` with `to`.
fn redirect_refs(v: &mut Value, from: &str, to: &str) {
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                if k == "reference" && child.as_str() == Some(from) {
                    *child = Value::String(to.to_string());
                } else {
                    redirect_refs(child, from, to);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|c| redirect_refs(c, from, to)),
        _ => {}
    }
}

/// `(index in Appointment.slot, slot id)` for each local `Slot/x` reference.
fn slot_refs(appt: &Value) -> Vec<(usize, String)> {
    appt.get("slot")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, r)| {
            let s = r.get("reference")?.as_str()?;
            let (t, id) = split_local_ref(s)?;
            (t == "Slot").then(|| (i, id.to_string()))
        })
        .collect()
}

fn first_patient_ref(resource: &Value) -> Option<String> {
    let mut out = Vec::new();
    collect_refs(resource, &mut String::new(), &mut out);
    out.into_iter().find(|(_, t, _)| t == "Patient").map(|(_, _, i)| i)
}

/// Split `Type/id` (optionally `/_history/n`) into its parts; None for
/// absolute URLs, fragments and anything that is not a supported type.
pub fn split_local_ref(s: &str) -> Option<(&str, &str)> {
    let mut parts = s.split('/');
    let t = parts.next()?;
    let id = parts.next()?;
    match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) => {}
        (Some("_history"), Some(_), None) => {}
        _ => return None,
    }
    if t.parse::<ResourceType>().is_err() || id.is_empty() {
        return None;
    }
    Some((t, id))
}

/// Every local reference in a resource: (FHIRPath, type, id). Contained
/// resources' own references are included; `#frag` references are not.
pub fn local_references(rt: ResourceType, resource: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut path = rt.as_str().to_string();
    collect_refs(resource, &mut path, &mut out);
    out
}

fn collect_refs(v: &Value, path: &mut String, out: &mut Vec<(String, String, String)>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("reference") {
                if let Some((t, id)) = split_local_ref(r) {
                    out.push((format!("{path}.reference"), t.to_string(), id.to_string()));
                }
            }
            for (k, child) in m {
                if k == "reference" || !(child.is_object() || child.is_array()) {
                    continue;
                }
                let len = path.len();
                path.push('.');
                path.push_str(k);
                collect_refs(child, path, out);
                path.truncate(len);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                collect_refs(child, path, out);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// The FHIR Appointment lifecycle as Hale enforces it.
pub fn allowed_next(from: &str) -> &'static [&'static str] {
    match from {
        "proposed" => &[
            "proposed",
            "pending",
            "booked",
            "waitlist",
            "cancelled",
            "entered-in-error",
        ],
        "pending" => &["pending", "booked", "waitlist", "cancelled", "entered-in-error"],
        "waitlist" => &[
            "waitlist",
            "proposed",
            "pending",
            "booked",
            "cancelled",
            "entered-in-error",
        ],
        "booked" => &[
            "booked",
            "arrived",
            "checked-in",
            "fulfilled",
            "noshow",
            "cancelled",
            "entered-in-error",
        ],
        // Arrival and check-in set in error are undone at the desk (back to booked);
        // the slot stays held throughout, so no capacity changes hands.
        "checked-in" => &[
            "checked-in",
            "arrived",
            "booked",
            "fulfilled",
            "noshow",
            "cancelled",
            "entered-in-error",
        ],
        "arrived" => &[
            "arrived",
            "checked-in",
            "booked",
            "fulfilled",
            "noshow",
            "cancelled",
            "entered-in-error",
        ],
        // "Seen" clicked on the wrong row is undone to checked in (the desk
        // marks "seen" only from checked in).
        "fulfilled" => &["fulfilled", "checked-in", "entered-in-error"],
        // A non-attendance recorded in error (paper shows the patient came) is corrected directly.
        "noshow" => &[
            "noshow",
            "booked",
            "arrived",
            "checked-in",
            "fulfilled",
            "entered-in-error",
        ],
        "cancelled" => &["cancelled", "entered-in-error"],
        "entered-in-error" => &["entered-in-error"],
        _ => &[],
    }
}

pub fn transition_allowed(from: &str, to: &str) -> bool {
    allowed_next(from).contains(&to)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_transition(from: &str, to: &str, expect: bool) {
        assert_eq!(transition_allowed(from, to), expect, "{from} -> {to}");
    }

    #[test]
    fn lifecycle() {
        for (from, to, ok) in [
            ("booked", "arrived", true),
            ("booked", "cancelled", true),
            ("booked", "fulfilled", true),
            ("fulfilled", "booked", false),
            ("cancelled", "booked", false),
            ("noshow", "booked", true),
            ("noshow", "fulfilled", true),
            ("noshow", "cancelled", false),
            ("entered-in-error", "booked", false),
            ("arrived", "fulfilled", true),
            ("proposed", "booked", true),
            ("fulfilled", "cancelled", false),
        ] {
            check_transition(from, to, ok);
        }
    }

    #[test]
    fn local_refs() {
        for (s, expect) in [
            ("Patient/1", Some(("Patient", "1"))),
            ("Patient/1/_history/2", Some(("Patient", "1"))),
            ("http://x/Patient/1", None),
            ("#c1", None),
            ("Foo/1", None),
            ("Patient/", None),
        ] {
            assert_eq!(split_local_ref(s), expect, "{s}");
        }
    }
}
