//! The audit trail, kept as compact rows and rendered as FHIR AuditEvent.
//!
//! Why not store AuditEvents as ordinary resources? Every read of patient
//! data writes one; at tens of thousands of reads a second a full resource
//! (history row, index rows) per read would cost more than the read itself.
//! One narrow row with three indexes keeps auditing cheap enough to be always on.
//!
//! The rows form a hash chain ([`chain_hash`]), computed in apply so every
//! replica holds the same chain and the same head (`audit_chain`); [`verify`]
//! recomputes it and names the first row that does not match.

use crate::query::{Current, Found, SearchPage};
use hale_fhir::search::{DateOp, Predicate, SearchQuery};
use rusqlite::types::Value as SqlValue;
use rusqlite::{params_from_iter, Connection, OptionalExtension, Row};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Identifier system for Hale user names in `AuditEvent.agent.who`.
pub const USER_SYSTEM: &str = "https://hale.health/fhir/Id/user";

/// Code system of `AuditEvent.purposeOfEvent` (and the `purpose` search).
pub const PURPOSE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";

const COLS: &str = "seq, time_ms, user, role, action, rtype, res_id, patient, outcome, detail, purpose";

/// The `prev_hash` of the first audit row.
pub const GENESIS: [u8; 32] = [0; 32];

/// One audit row's fields, as hashed into the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainRow {
    pub seq: i64,
    pub time_ms: i64,
    pub user: String,
    pub role: String,
    pub action: String,
    pub rtype: String,
    pub res_id: Option<String>,
    pub patient: Option<String>,
    pub outcome: i64,
    pub detail: String,
    pub purpose: Option<String>,
}

impl ChainRow {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<ChainRow> {
        Ok(ChainRow {
            seq: r.get(0)?,
            time_ms: r.get(1)?,
            user: r.get(2)?,
            role: r.get(3)?,
            action: r.get(4)?,
            rtype: r.get(5)?,
            res_id: r.get(6)?,
            patient: r.get(7)?,
            outcome: r.get(8)?,
            detail: r.get(9)?,
            purpose: r.get(10)?,
        })
    }
}

/// `SHA-256(prev ‖ canonical(row))`. The canonical bytes are the fields in
/// column order, each tagged (0 NULL, 1 integer as 8 bytes big-endian, 3 text
/// as its length in 8 bytes big-endian then UTF-8), after a version label, so
/// no two different rows encode alike. Changing this changes every hash: a
/// new label and a schema migration would be needed.
pub fn chain_hash(prev: &[u8; 32], row: &ChainRow) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"hale-audit-chain-v1\0");
    h.update(prev);
    let int = |h: &mut Sha256, v: i64| {
        h.update([1u8]);
        h.update(v.to_be_bytes());
    };
    let text = |h: &mut Sha256, v: Option<&str>| match v {
        None => h.update([0u8]),
        Some(t) => {
            h.update([3u8]);
            h.update((t.len() as u64).to_be_bytes());
            h.update(t.as_bytes());
        }
    };
    int(&mut h, row.seq);
    int(&mut h, row.time_ms);
    text(&mut h, Some(&row.user));
    text(&mut h, Some(&row.role));
    text(&mut h, Some(&row.action));
    text(&mut h, Some(&row.rtype));
    text(&mut h, row.res_id.as_deref());
    text(&mut h, row.patient.as_deref());
    int(&mut h, row.outcome);
    text(&mut h, Some(&row.detail));
    text(&mut h, row.purpose.as_deref());
    h.finalize().into()
}

/// Lower-case hex of a hash.
pub fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(DIGITS[(x >> 4) as usize] as char);
        s.push(DIGITS[(x & 0xf) as usize] as char);
    }
    s
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The head of the audit chain: the last row's `seq` and hash (hex).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChainHead {
    pub seq: i64,
    pub hash: String,
}

/// The stored head (None while there are no audit rows).
pub fn head(conn: &Connection) -> rusqlite::Result<Option<ChainHead>> {
    conn.prepare_cached("SELECT seq, hash FROM audit_chain WHERE id = 1")?
        .query_row([], |r| {
            Ok(ChainHead {
                seq: r.get(0)?,
                hash: r.get(1)?,
            })
        })
        .optional()
}

/// Append rows to the audit table in `seq` order, each chained onto the one
/// before and the first onto the stored head, then store the new head once
/// (inside apply's transaction). Deterministic: the hashes depend only on the
/// rows and the head, which the log decides. The state is the same as
/// appending the rows one at a time; a batch only saves re-reading and
/// re-writing the head per row.
pub(crate) fn append_many(conn: &Connection, rows: &[ChainRow]) -> rusqlite::Result<()> {
    let Some(last) = rows.last() else { return Ok(()) };
    let (mut prev, mut after) = match head(conn)? {
        None => (GENESIS, None),
        Some(h) => (
            unhex(&h.hash).expect("the audit chain head is 64 hex digits"),
            Some(h.seq),
        ),
    };
    let mut ins = conn.prepare_cached(
        "INSERT INTO audit(seq, time_ms, user, role, action, rtype, res_id, patient, outcome, detail, purpose, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?;
    for row in rows {
        // seq comes from (log index, position): apply only moves forward.
        if let Some(a) = after {
            assert!(row.seq > a, "audit seq {} does not follow the chain head {a}", row.seq);
        }
        let hash = chain_hash(&prev, row);
        ins.execute(rusqlite::params![
            row.seq,
            row.time_ms,
            row.user,
            row.role,
            row.action,
            row.rtype,
            row.res_id,
            row.patient,
            row.outcome,
            row.detail,
            row.purpose,
            &prev[..],
            &hash[..]
        ])?;
        prev = hash;
        after = Some(row.seq);
    }
    conn.prepare_cached("INSERT OR REPLACE INTO audit_chain(id, seq, hash) VALUES (1, ?1, ?2)")?
        .execute(rusqlite::params![last.seq, hex(&prev)])?;
    Ok(())
}

/// Rows handled per step by [`rechain`] and [`verify`].
const CHAIN_STEP_ROWS: usize = 10_000;

/// Compute the chain over every audit row in `seq` order and store it with its
/// head (the migration to schema version 3; inside the caller's transaction).
/// The same rows give the same chain on every replica, whenever it runs.
pub(crate) fn rechain(conn: &Connection) -> rusqlite::Result<u64> {
    let mut prev = GENESIS;
    let mut after = i64::MIN;
    let mut n = 0u64;
    loop {
        let rows: Vec<ChainRow> = conn
            .prepare_cached(&format!(
                "SELECT {COLS} FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2"
            ))?
            .query_map(rusqlite::params![after, CHAIN_STEP_ROWS as i64], ChainRow::from_row)?
            .collect::<rusqlite::Result<_>>()?;
        let Some(last) = rows.last() else { break };
        after = last.seq;
        for row in &rows {
            let hash = chain_hash(&prev, row);
            conn.prepare_cached("UPDATE audit SET prev_hash = ?1, hash = ?2 WHERE seq = ?3")?
                .execute(rusqlite::params![&prev[..], &hash[..], row.seq])?;
            prev = hash;
            n += 1;
        }
    }
    if n > 0 {
        conn.execute(
            "INSERT OR REPLACE INTO audit_chain(id, seq, hash) VALUES (1, ?1, ?2)",
            rusqlite::params![after, hex(&prev)],
        )?;
    }
    Ok(n)
}

/// The first thing [`verify`] found wrong.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ChainFault {
    /// The row's fields no longer give its stored hash: the row (or its hash)
    /// was edited after it was recorded.
    RowEdited { seq: i64, stored: String, computed: String },
    /// The row's `prev_hash` is not the hash of the row before it: a row
    /// before it was deleted, inserted or moved, or its `prev_hash` edited.
    LinkBroken { seq: i64, stored: String, expected: String },
    /// The row has no hash at all (written outside apply).
    Unhashed { seq: i64 },
    /// The stored head is not the last row: rows at the end were deleted, or
    /// the head was edited.
    HeadMismatch {
        head: Option<ChainHead>,
        last: Option<ChainHead>,
    },
}

impl std::fmt::Display for ChainFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChainFault::RowEdited { seq, stored, computed } => write!(
                f,
                "audit row {seq} was changed after it was recorded: its fields hash to {computed}, its stored hash is {stored}"
            ),
            ChainFault::LinkBroken { seq, stored, expected } => write!(
                f,
                "audit row {seq} does not follow the row before it: its prev_hash is {stored}, the row before hashes to {expected} (a row before it was deleted, inserted or moved)"
            ),
            ChainFault::Unhashed { seq } => write!(f, "audit row {seq} has no hash: it was not written by apply"),
            ChainFault::HeadMismatch { head, last } => {
                let show = |h: &Option<ChainHead>| match h {
                    Some(h) => format!("row {} ({})", h.seq, h.hash),
                    None => "none".to_string(),
                };
                write!(
                    f,
                    "the chain head is {}, but the last audit row is {}: rows at the end were deleted or the head was edited",
                    show(head),
                    show(last)
                )
            }
        }
    }
}

/// What [`verify`] found: the rows checked, the head recomputed, and the
/// first fault (None: the chain is intact).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChainReport {
    pub rows: u64,
    pub head: Option<ChainHead>,
    pub fault: Option<ChainFault>,
}

/// A row as stored: its fields, `prev_hash` and `hash`.
type StoredRow = (ChainRow, Option<Vec<u8>>, Option<Vec<u8>>);

/// Recompute the audit chain from the first row and compare it with the
/// stored hashes and head. Read-only; stops at the first fault. It detects
/// edited, deleted, inserted and reordered rows and a head that does not
/// match; it cannot detect the tail and the head cut back together, which
/// needs a head kept elsewhere (another replica's, or one written down).
pub fn verify(conn: &Connection) -> rusqlite::Result<ChainReport> {
    let mut prev = GENESIS;
    let mut after = i64::MIN;
    let mut n = 0u64;
    let mut last: Option<ChainHead> = None;
    loop {
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLS}, prev_hash, hash FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2"
        ))?;
        let rows: Vec<StoredRow> = stmt
            .query_map(rusqlite::params![after, CHAIN_STEP_ROWS as i64], |r| {
                Ok((ChainRow::from_row(r)?, r.get(11)?, r.get(12)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        if rows.is_empty() {
            break;
        }
        for (row, stored_prev, stored_hash) in rows {
            after = row.seq;
            let fault = |f| ChainReport {
                rows: n,
                head: last.clone(),
                fault: Some(f),
            };
            let (Some(stored_prev), Some(stored_hash)) = (stored_prev, stored_hash) else {
                return Ok(fault(ChainFault::Unhashed { seq: row.seq }));
            };
            if stored_prev != prev {
                return Ok(fault(ChainFault::LinkBroken {
                    seq: row.seq,
                    stored: hex(&stored_prev),
                    expected: hex(&prev),
                }));
            }
            let computed = chain_hash(&prev, &row);
            if stored_hash != computed {
                return Ok(fault(ChainFault::RowEdited {
                    seq: row.seq,
                    stored: hex(&stored_hash),
                    computed: hex(&computed),
                }));
            }
            prev = computed;
            n += 1;
            last = Some(ChainHead {
                seq: row.seq,
                hash: hex(&prev),
            });
        }
    }
    let stored = head(conn)?;
    let fault = (stored != last).then(|| ChainFault::HeadMismatch {
        head: stored,
        last: last.clone(),
    });
    Ok(ChainReport {
        rows: n,
        head: last,
        fault,
    })
}

fn subtype(action: &str) -> (&'static str, &'static str) {
    match action {
        "C" => ("create", "create"),
        "R" => ("read", "read"),
        "U" => ("update", "update"),
        "D" => ("delete", "delete"),
        _ => ("search-type", "search-type"),
    }
}

fn render(r: &Row<'_>) -> rusqlite::Result<Found> {
    let seq: i64 = r.get(0)?;
    let time_ms: i64 = r.get(1)?;
    let user: String = r.get(2)?;
    let role: String = r.get(3)?;
    let action: String = r.get(4)?;
    let rtype: String = r.get(5)?;
    let res_id: Option<String> = r.get(6)?;
    let patient: Option<String> = r.get(7)?;
    let outcome: i64 = r.get(8)?;
    let detail: String = r.get(9)?;
    let purpose: Option<String> = r.get(10)?;
    let when = hale_fhir::date::format_instant_ms(time_ms);
    let (code, display) = subtype(&action);
    let mut entity = Vec::new();
    if let Some(p) = &patient {
        entity.push(json!({
            "what": {"reference": format!("Patient/{p}")},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"}
        }));
    }
    match &res_id {
        Some(id) if !(rtype == "Patient" && patient.as_deref() == Some(id.as_str())) => {
            entity.push(json!({"what": {"reference": format!("{rtype}/{id}")}, "description": detail}));
        }
        Some(_) => {}
        None => entity.push(json!({"description": detail})),
    }
    let id = seq.to_string();
    // A break-glass start is a DICOM "Emergency Override Started" security
    // alert (the HL7 break-glass AuditEvent example); a review closing one is
    // a security alert with Hale's subtype.
    let (event_type, event_subtype) = match break_glass_kind(&action, &rtype, &detail) {
        Some(BreakGlassRow::Start) => (
            json!({"system": DCM_SYSTEM, "code": "110113", "display": "Security Alert"}),
            json!([{"system": DCM_SYSTEM, "code": "110127", "display": "Emergency Override Started"}]),
        ),
        Some(BreakGlassRow::Close) => (
            json!({"system": DCM_SYSTEM, "code": "110113", "display": "Security Alert"}),
            json!([{"system": BREAK_GLASS_EVENT_SYSTEM, "code": "review-closed", "display": "Break-glass review closed"}]),
        ),
        None => (
            json!({"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"}),
            json!([{"system": "http://hl7.org/fhir/restful-interaction", "code": code, "display": display}]),
        ),
    };
    let mut v = json!({
        "resourceType": "AuditEvent",
        "id": id,
        "meta": {"versionId": "1", "lastUpdated": when},
        "type": event_type,
        "subtype": event_subtype,
        "action": action,
        "recorded": when,
        "outcome": outcome.to_string(),
        "outcomeDesc": detail,
        "agent": [{
            "type": {"text": role},
            "who": {"identifier": {"system": USER_SYSTEM, "value": user}, "display": user},
            "requestor": true
        }],
        "source": {"observer": {"display": "Hale"}, "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}]},
    });
    if !entity.is_empty() {
        v["entity"] = Value::Array(entity);
    }
    if let Some(p) = purpose {
        v["purposeOfEvent"] = json!([{"coding": [{"system": PURPOSE_SYSTEM, "code": p}]}]);
    }
    Ok(Found {
        rtype: "AuditEvent".into(),
        id,
        version: 1,
        updated_ms: time_ms,
        json: Some(v.to_string()),
        method: "GET",
    })
}

pub(crate) fn read(conn: &Connection, id: &str) -> rusqlite::Result<Option<Current>> {
    let Ok(seq) = id.parse::<i64>() else { return Ok(None) };
    conn.prepare_cached(&format!("SELECT {COLS} FROM audit WHERE seq = ?1"))?
        .query_row([seq], render)
        .optional()
        .map(|o| o.map(Current::Live))
}

/// AuditEvent search over the audit table: `patient`, `agent`, `date`,
/// `action`, `outcome`, `purpose` (Hale's), `_id`. Other parameters match
/// nothing. Sorted by time (`date`, `_lastUpdated`) or `_id`, newest first
/// unless the first sort key says otherwise.
pub(crate) fn search(conn: &Connection, q: &SearchQuery) -> rusqlite::Result<SearchPage> {
    let mut conds: Vec<String> = Vec::new();
    let mut args: Vec<SqlValue> = Vec::new();
    let arg = |args: &mut Vec<SqlValue>, v: SqlValue| {
        args.push(v);
        format!("?{}", args.len())
    };
    for c in &q.clauses {
        let col = match c.param {
            "patient" => "patient",
            "agent" => "user",
            "date" | "_lastUpdated" => "time_ms",
            "action" => "action",
            "outcome" => "outcome",
            "purpose" => "purpose",
            "_id" => "seq",
            _ => {
                conds.push("0".into());
                continue;
            }
        };
        if let Some(missing) = c.missing {
            conds.push(format!("{col} IS {}NULL", if missing { "" } else { "NOT " }));
            continue;
        }
        let mut alts = Vec::new();
        for p in &c.alternatives {
            let cond = match p {
                Predicate::Reference { id, .. } | Predicate::Token { code: Some(id), .. } => {
                    let v = if col == "seq" || col == "outcome" {
                        id.parse::<i64>().map(SqlValue::Integer).unwrap_or(SqlValue::Null)
                    } else {
                        SqlValue::Text(id.clone())
                    };
                    format!("{col} = {}", arg(&mut args, v))
                }
                Predicate::Date { op, start_ms, end_ms } => {
                    let (s, e) = (SqlValue::Integer(*start_ms), SqlValue::Integer(*end_ms));
                    match op {
                        DateOp::Eq | DateOp::Ap => {
                            format!("{col} BETWEEN {} AND {}", arg(&mut args, s), arg(&mut args, e))
                        }
                        DateOp::Ne => format!("{col} NOT BETWEEN {} AND {}", arg(&mut args, s), arg(&mut args, e)),
                        DateOp::Gt | DateOp::Sa => format!("{col} > {}", arg(&mut args, e)),
                        DateOp::Lt | DateOp::Eb => format!("{col} < {}", arg(&mut args, s)),
                        DateOp::Ge => format!("{col} >= {}", arg(&mut args, s)),
                        DateOp::Le => format!("{col} <= {}", arg(&mut args, e)),
                    }
                }
                _ => "0".into(),
            };
            alts.push(format!("({cond})"));
        }
        if alts.is_empty() {
            alts.push("0".into());
        }
        conds.push(format!("({})", alts.join(" OR ")));
    }
    if conds.is_empty() {
        conds.push("1".into());
    }
    let desc = q.sort.first().map(|k| k.descending).unwrap_or(true);
    let dir = if desc { "DESC" } else { "ASC" };
    let by_seq = q.sort.first().is_some_and(|k| k.param == "_id");
    let limit = arg(&mut args, SqlValue::Integer((q.count + 1) as i64));
    let offset = arg(&mut args, SqlValue::Integer(q.offset as i64));
    let sql = format!(
        "SELECT {COLS} FROM audit WHERE {} ORDER BY {}seq {dir} LIMIT {limit} OFFSET {offset}",
        conds.join(" AND "),
        if by_seq {
            String::new()
        } else {
            format!("time_ms {dir}, ")
        }
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut matches: Vec<Found> = stmt
        .query_map(params_from_iter(args.iter()), render)?
        .collect::<rusqlite::Result<_>>()?;
    let has_more = matches.len() > q.count;
    matches.truncate(q.count);
    let total = (!has_more).then(|| (q.offset + matches.len()) as u64);
    Ok(SearchPage {
        matches,
        included: Vec::new(),
        has_more,
        total,
    })
}

pub(crate) fn for_each(
    conn: &Connection,
    mut f: impl FnMut(&str) -> std::io::Result<()>,
) -> Result<u64, crate::StoreError> {
    for_each_since(conn, None, |json| {
        f(json)?;
        Ok(crate::export::Flow::Continue)
    })
}

/// Every audit row recorded after `since_ms` (all when None), as AuditEvent
/// JSON in the order recorded, until `f` answers Stop.
pub(crate) fn for_each_since(
    conn: &Connection,
    since_ms: Option<i64>,
    mut f: impl FnMut(&str) -> std::io::Result<crate::export::Flow>,
) -> Result<u64, crate::StoreError> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {COLS} FROM audit WHERE time_ms > ?1 ORDER BY seq"))?;
    let mut rows = stmt.query([since_ms.unwrap_or(i64::MIN)])?;
    let mut n = 0;
    while let Some(r) = rows.next()? {
        let found = render(r)?;
        n += 1;
        if f(found.json.as_deref().unwrap_or("{}"))? == crate::export::Flow::Stop {
            break;
        }
    }
    Ok(n)
}

/// Number of audit rows (for metrics and tests).
pub fn count(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row("SELECT COUNT(*) FROM audit", [], |r| r.get::<_, i64>(0))
        .map(|n| n as u64)
}

// ---------------------------------------------------------------------------
// Break-glass episodes
//
// DESIGN: an episode is not a table of its own but rows of the audit trail,
// which is already replicated through the log, hash-chained, spooled to disk
// at a cut-off site and committed there exactly once (`AuditOnce`). The start
// row (action E, type Patient, purpose BTG, detail `$break-glass <until_ms>:
// <reason>`) is the episode; each access under it is an ordinary audit row by
// the same user on the same patient with purpose BTG inside its window; a
// privacy officer's review closes it with a row (action E, type AuditEvent,
// res_id = the start row's seq, detail `$break-glass-close: <note>`). So the
// review state is derived from append-only rows and needs no schema change.

/// DICOM code system (AuditEvent type and subtype of break-glass rows).
pub const DCM_SYSTEM: &str = "http://dicom.nema.org/resources/ontology/DCM";
/// Hale's subtype system for break-glass review events.
pub const BREAK_GLASS_EVENT_SYSTEM: &str = "https://hale.health/fhir/CodeSystem/break-glass-event";
/// `purpose` of a break-glass start and of every access under one.
pub const BTG: &str = "BTG";
/// Detail prefix of a break-glass start row.
pub const BREAK_GLASS_START: &str = "$break-glass ";
/// Detail prefix of a row closing an episode's review.
pub const BREAK_GLASS_CLOSE: &str = "$break-glass-close";
/// Episodes listed at most per review page.
pub const BREAK_GLASS_LIST_MAX: usize = 500;
/// Accesses shown at most per episode.
pub const BREAK_GLASS_ACCESSES_MAX: usize = 1_000;

enum BreakGlassRow {
    Start,
    Close,
}

fn break_glass_kind(action: &str, rtype: &str, detail: &str) -> Option<BreakGlassRow> {
    if action != "E" {
        return None;
    }
    if rtype == "Patient" && detail.starts_with(BREAK_GLASS_START) {
        Some(BreakGlassRow::Start)
    } else if rtype == "AuditEvent" && detail.starts_with(BREAK_GLASS_CLOSE) {
        Some(BreakGlassRow::Close)
    } else {
        None
    }
}

/// The detail of a break-glass start row.
pub fn break_glass_detail(until_ms: i64, reason: &str) -> String {
    format!("{BREAK_GLASS_START}{until_ms}: {reason}")
}

/// `(until_ms, reason)` from a start row's detail.
fn parse_start(detail: &str) -> Option<(i64, String)> {
    let rest = detail.strip_prefix(BREAK_GLASS_START)?;
    let (until, reason) = rest.split_once(": ")?;
    Some((until.parse().ok()?, reason.to_string()))
}

/// The review that closed an episode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakGlassClose {
    pub seq: i64,
    pub time_ms: i64,
    pub user: String,
    pub note: String,
}

/// One break-glass episode, from its start row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakGlass {
    /// The start row's seq: the episode's id (`AuditEvent/<seq>`).
    pub seq: i64,
    pub time_ms: i64,
    pub until_ms: i64,
    pub user: String,
    pub role: String,
    pub patient: String,
    pub reason: String,
    pub closed: Option<BreakGlassClose>,
}

const START_WHERE: &str = "action = 'E' AND rtype = 'Patient' AND purpose = 'BTG' AND detail LIKE '$break-glass %'";

fn episode_row(r: &Row<'_>) -> rusqlite::Result<Option<BreakGlass>> {
    let detail: String = r.get(5)?;
    let Some((until_ms, reason)) = parse_start(&detail) else {
        return Ok(None);
    };
    let patient: Option<String> = r.get(4)?;
    Ok(Some(BreakGlass {
        seq: r.get(0)?,
        time_ms: r.get(1)?,
        until_ms,
        user: r.get(2)?,
        role: r.get(3)?,
        patient: patient.unwrap_or_default(),
        reason,
        closed: None,
    }))
}

fn close_of(conn: &Connection, seq: i64) -> rusqlite::Result<Option<BreakGlassClose>> {
    conn.prepare_cached(
        "SELECT seq, time_ms, user, detail FROM audit WHERE action = 'E' AND rtype = 'AuditEvent' AND res_id = ?1 AND detail LIKE '$break-glass-close%' ORDER BY seq LIMIT 1",
    )?
    .query_row([seq.to_string()], |r| {
        let detail: String = r.get(3)?;
        Ok(BreakGlassClose {
            seq: r.get(0)?,
            time_ms: r.get(1)?,
            user: r.get(2)?,
            note: detail
                .strip_prefix(BREAK_GLASS_CLOSE)
                .unwrap_or("")
                .trim_start_matches(':')
                .trim()
                .to_string(),
        })
    })
    .optional()
}

/// The episode started by row `seq`, with its review state.
pub fn break_glass(conn: &Connection, seq: i64) -> rusqlite::Result<Option<BreakGlass>> {
    let e = conn
        .prepare_cached(&format!(
            "SELECT seq, time_ms, user, role, patient, detail FROM audit WHERE seq = ?1 AND {START_WHERE}"
        ))?
        .query_row([seq], episode_row)
        .optional()?
        .flatten();
    match e {
        Some(mut e) => {
            e.closed = close_of(conn, e.seq)?;
            Ok(Some(e))
        }
        None => Ok(None),
    }
}

/// Episodes newest first, with their review state; `open` None lists all,
/// Some(true) only those no review has closed, Some(false) only closed ones.
/// `patient`/`user` narrow the list.
pub fn break_glass_list(
    conn: &Connection,
    open: Option<bool>,
    patient: Option<&str>,
    user: Option<&str>,
    limit: usize,
) -> rusqlite::Result<Vec<BreakGlass>> {
    let mut sql = format!("SELECT seq, time_ms, user, role, patient, detail FROM audit WHERE {START_WHERE}");
    let mut args: Vec<SqlValue> = Vec::new();
    if let Some(p) = patient {
        args.push(SqlValue::Text(p.into()));
        sql.push_str(&format!(" AND patient = ?{}", args.len()));
    }
    if let Some(u) = user {
        args.push(SqlValue::Text(u.into()));
        sql.push_str(&format!(" AND user = ?{}", args.len()));
    }
    sql.push_str(" ORDER BY seq DESC");
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows: Vec<BreakGlass> = stmt
        .query_map(params_from_iter(args.iter()), episode_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
    let mut out = Vec::new();
    for mut e in rows {
        e.closed = close_of(conn, e.seq)?;
        let keep = match open {
            None => true,
            Some(true) => e.closed.is_none(),
            Some(false) => e.closed.is_some(),
        };
        if keep {
            out.push(e);
            if out.len() >= limit {
                break;
            }
        }
    }
    Ok(out)
}

/// The newest episode of `user` on `patient` still running at `now_ms`
/// (started at most `window_ms` ago).
pub fn break_glass_active(
    conn: &Connection,
    user: &str,
    patient: &str,
    now_ms: i64,
    window_ms: i64,
) -> rusqlite::Result<Option<BreakGlass>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT seq, time_ms, user, role, patient, detail FROM audit WHERE patient = ?1 AND time_ms >= ?2 AND user = ?3 AND {START_WHERE} ORDER BY time_ms DESC LIMIT 20"
    ))?;
    let rows = stmt
        .query_map(
            rusqlite::params![patient, now_ms.saturating_sub(window_ms), user],
            episode_row,
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows
        .into_iter()
        .flatten()
        .find(|e| e.time_ms <= now_ms && now_ms < e.until_ms))
}

/// What was seen under an episode: the audit rows of its user on its patient
/// with purpose BTG from its start to its end (the start row included), as
/// AuditEvents in the order recorded.
pub fn break_glass_accesses(conn: &Connection, e: &BreakGlass, limit: usize) -> rusqlite::Result<Vec<Found>> {
    conn.prepare_cached(&format!(
        "SELECT {COLS} FROM audit WHERE patient = ?1 AND time_ms BETWEEN ?2 AND ?3 AND user = ?4 AND purpose = 'BTG' ORDER BY seq LIMIT ?5"
    ))?
    .query_map(
        rusqlite::params![e.patient, e.time_ms, e.until_ms, e.user, limit as i64],
        render,
    )?
    .collect()
}

/// An audit row as AuditEvent, by seq.
pub fn event(conn: &Connection, seq: i64) -> rusqlite::Result<Option<Found>> {
    conn.prepare_cached(&format!("SELECT {COLS} FROM audit WHERE seq = ?1"))?
        .query_row([seq], render)
        .optional()
}

#[cfg(test)]
mod hex_tests {
    #[test]
    fn hex_is_lower_case_two_digits_per_byte() {
        let all: Vec<u8> = (0..=255).collect();
        let expect: String = all.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(super::hex(&all), expect);
        assert_eq!(super::hex(&[]), "");
    }
}
