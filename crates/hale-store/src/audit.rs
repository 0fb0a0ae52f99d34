//! The audit trail, kept as compact rows and rendered as FHIR AuditEvent.
//!
//! Why not store AuditEvents as ordinary resources? Every read of patient
//! data writes one; at tens of thousands of reads a second a full resource
//! (history row, index rows) per read would cost more than the read itself.
//! One narrow row with three indexes keeps auditing cheap enough to be always on.

use crate::query::{Current, Found, SearchPage};
use hale_fhir::search::{DateOp, Predicate, SearchQuery};
use rusqlite::types::Value as SqlValue;
use rusqlite::{params_from_iter, Connection, OptionalExtension, Row};
use serde_json::{json, Value};

/// Identifier system for Hale user names in `AuditEvent.agent.who`.
pub const USER_SYSTEM: &str = "https://hale.health/fhir/Id/user";

const COLS: &str = "seq, time_ms, user, role, action, rtype, res_id, patient, outcome, detail";

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
    let mut v = json!({
        "resourceType": "AuditEvent",
        "id": id,
        "meta": {"versionId": "1", "lastUpdated": when},
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": code, "display": display}],
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
/// `action`, `outcome`, `_id`. Other parameters match nothing.
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
    let limit = arg(&mut args, SqlValue::Integer((q.count + 1) as i64));
    let offset = arg(&mut args, SqlValue::Integer(q.offset as i64));
    let sql = format!(
        "SELECT {COLS} FROM audit WHERE {} ORDER BY time_ms {dir}, seq {dir} LIMIT {limit} OFFSET {offset}",
        conds.join(" AND ")
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
