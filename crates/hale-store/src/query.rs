//! Reads: current versions, history, search, `$everything`, audit.
//!
//! Everything here takes a `&Connection` so that the same code serves the
//! read pool and `apply` (conditional create runs a search inside the write
//! transaction).

use crate::audit;
use hale_fhir::search::{Clause, DateOp, IndexValue, ParamKind, Predicate, SearchQuery, Total};
use hale_fhir::ResourceType;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};

/// One stored resource version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub rtype: String,
    pub id: String,
    pub version: u64,
    pub updated_ms: i64,
    /// None for a deleted version (history only).
    pub json: Option<String>,
    /// `POST`, `PUT` or `DELETE` (history only; `GET` for current reads).
    pub method: &'static str,
}

/// The current state of one resource id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Current {
    Live(Found),
    Deleted { version: u64, updated_ms: i64 },
}

#[derive(Debug, Clone, Default)]
pub struct SearchPage {
    pub matches: Vec<Found>,
    pub included: Vec<Found>,
    pub has_more: bool,
    /// Exact total when it is known without an extra count (the last page).
    pub total: Option<u64>,
}

/// Limit on `$everything` and history pages.
pub const EVERYTHING_MAX: usize = 5_000;
pub const HISTORY_PAGE_MAX: usize = 1_000;

fn method_of(m: &str) -> &'static str {
    match m {
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        _ => "GET",
    }
}

pub fn read(conn: &Connection, rtype: &str, id: &str) -> rusqlite::Result<Option<Current>> {
    if rtype == "AuditEvent" {
        return audit::read(conn, id);
    }
    conn.prepare_cached("SELECT version, updated_ms, deleted, json FROM resources WHERE rtype = ?1 AND id = ?2")?
        .query_row(params![rtype, id], |r| {
            let version = r.get::<_, i64>(0)? as u64;
            let updated_ms: i64 = r.get(1)?;
            Ok(if r.get::<_, i64>(2)? != 0 {
                Current::Deleted { version, updated_ms }
            } else {
                Current::Live(Found {
                    rtype: rtype.to_string(),
                    id: id.to_string(),
                    version,
                    updated_ms,
                    json: Some(r.get(3)?),
                    method: "GET",
                })
            })
        })
        .optional()
}

pub fn vread(conn: &Connection, rtype: &str, id: &str, version: u64) -> rusqlite::Result<Option<Found>> {
    if rtype == "AuditEvent" {
        return Ok(match audit::read(conn, id)? {
            Some(Current::Live(f)) if version == 1 => Some(f),
            _ => None,
        });
    }
    conn.prepare_cached(&format!(
        "SELECT h.updated_ms, h.method, {HISTORY_JSON} FROM resources r CROSS JOIN history h ON h.rid = r.rid
         WHERE r.rtype = ?1 AND r.id = ?2 AND h.version = ?3"
    ))?
    .query_row(params![rtype, id, version as i64], |r| {
        Ok(Found {
            rtype: rtype.to_string(),
            id: id.to_string(),
            version,
            updated_ms: r.get(0)?,
            method: method_of(&r.get::<_, String>(1)?),
            json: r.get(2)?,
        })
    })
    .optional()
}

/// A history row's JSON (`h`, joined to its resource `r`): its own copy, or,
/// for the version whose JSON lives only in `resources` (the current one, or
/// the last live one of a deleted resource), the resource's. Deletes have none.
const HISTORY_JSON: &str = "CASE WHEN h.method = 'DELETE' THEN NULL ELSE COALESCE(h.json, r.json) END";

fn history_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Found> {
    Ok(Found {
        rtype: r.get(0)?,
        id: r.get(1)?,
        version: r.get::<_, i64>(2)? as u64,
        updated_ms: r.get(3)?,
        method: method_of(&r.get::<_, String>(4)?),
        json: r.get(5)?,
    })
}

/// Newest first. Returns up to `count` versions after skipping `offset`.
pub fn history_instance(
    conn: &Connection,
    rtype: &str,
    id: &str,
    count: usize,
    offset: usize,
) -> rusqlite::Result<Vec<Found>> {
    let count = count.min(HISTORY_PAGE_MAX);
    // By the resource's rid: the (rid, version) index, not a walk of the type's history.
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT h.rtype, h.id, h.version, h.updated_ms, h.method, {HISTORY_JSON}
         FROM resources r CROSS JOIN history h ON h.rid = r.rid
         WHERE r.rtype = ?1 AND r.id = ?2 ORDER BY h.version DESC LIMIT ?3 OFFSET ?4"
    ))?;
    let rows = stmt.query_map(params![rtype, id, count as i64, offset as i64], history_row)?;
    rows.collect()
}

/// Newest first across one type.
pub fn history_type(conn: &Connection, rtype: &str, count: usize, offset: usize) -> rusqlite::Result<Vec<Found>> {
    let count = count.min(HISTORY_PAGE_MAX);
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT h.rtype, h.id, h.version, h.updated_ms, h.method, {HISTORY_JSON}
         FROM history h CROSS JOIN resources r ON r.rid = h.rid
         WHERE h.rtype = ?1 ORDER BY h.hid DESC LIMIT ?2 OFFSET ?3"
    ))?;
    let rows = stmt.query_map(params![rtype, count as i64, offset as i64], history_row)?;
    rows.collect()
}

/// (rid, id, version, updated_ms, json) of a live resource.
pub(crate) fn load_by_rid(conn: &Connection, rid: i64) -> rusqlite::Result<(i64, String, u64, i64, String)> {
    conn.prepare_cached("SELECT rid, id, version, updated_ms, json FROM resources WHERE rid = ?1")?
        .query_row([rid], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64, r.get(3)?, r.get(4)?))
        })
}

/// SQL for one search: WHERE conditions and their parameters.
struct Sql {
    conds: Vec<String>,
    args: Vec<SqlValue>,
    /// Numbers the aliases of nested (chained) subqueries.
    aliases: usize,
}

impl Sql {
    fn alias(&mut self, prefix: &str) -> String {
        self.aliases += 1;
        format!("{prefix}{}", self.aliases)
    }

    fn arg(&mut self, v: impl Into<SqlValue>) -> String {
        self.args.push(v.into());
        format!("?{}", self.args.len())
    }
}

fn text(s: &str) -> SqlValue {
    SqlValue::Text(s.to_string())
}

/// Upper bound for a prefix range on BINARY-collated UTF-8 text.
fn prefix_end(p: &str) -> String {
    format!("{p}\u{10FFFF}")
}

/// How an index value is stored in an `idx` row.
///
/// | value | s | v | lo, hi |
/// |---|---|---|---|
/// | token | system | code | |
/// | string | as written | normalised | |
/// | date | | | ms range (INTEGER) |
/// | reference | target type | target id | |
/// | uri (and references by URL) | NULL | the URI | |
/// | number | | | range (REAL) |
/// | quantity | unit system | unit code | range (REAL) |
/// | composite a$b | b's key | a's key | b's range |
///
/// A composite's key of a token is `code \u{1} system`, so that a search with or
/// without the system is an index range; of a string its normalised text; of a
/// reference `Type/id`; of a quantity its unit key.
pub(crate) struct IndexRow {
    pub s: Option<String>,
    pub v: Option<String>,
    pub lo: Option<SqlValue>,
    pub hi: Option<SqlValue>,
}

pub(crate) fn index_row(value: &IndexValue) -> IndexRow {
    let row = |s: Option<&str>, v: Option<&str>, lo: Option<SqlValue>, hi: Option<SqlValue>| IndexRow {
        s: s.map(str::to_string),
        v: v.map(str::to_string),
        lo,
        hi,
    };
    match value {
        IndexValue::Token { system, code } => row(Some(system), Some(code), None, None),
        IndexValue::Str { norm, exact } => row(Some(exact), Some(norm), None, None),
        IndexValue::Date { start_ms, end_ms } => row(
            None,
            None,
            Some(SqlValue::Integer(*start_ms)),
            Some(SqlValue::Integer(*end_ms)),
        ),
        IndexValue::Reference { rtype, id } => row(Some(rtype), Some(id), None, None),
        IndexValue::Uri(u) => row(None, Some(u), None, None),
        IndexValue::Number { lo, hi } => row(None, None, Some(SqlValue::Real(lo.0)), Some(SqlValue::Real(hi.0))),
        IndexValue::Quantity { lo, hi, system, code } => row(
            Some(system),
            Some(code),
            Some(SqlValue::Real(lo.0)),
            Some(SqlValue::Real(hi.0)),
        ),
        IndexValue::Composite(a, b) => {
            let b_row = index_row(b);
            IndexRow {
                s: Some(composite_key(b)),
                v: Some(composite_key(a)),
                lo: b_row.lo,
                hi: b_row.hi,
            }
        }
    }
}

fn composite_key(v: &IndexValue) -> String {
    match v {
        IndexValue::Token { system, code } | IndexValue::Quantity { system, code, .. } => {
            format!("{code}\u{1}{system}")
        }
        IndexValue::Str { norm, .. } => norm.clone(),
        IndexValue::Reference { rtype, id } => format!("{rtype}/{id}"),
        IndexValue::Uri(u) => u.clone(),
        IndexValue::Date { .. } | IndexValue::Number { .. } | IndexValue::Composite(..) => String::new(),
    }
}

/// Interval comparison of a stored range `lo..hi` with a search range `s..e`
/// (FHIR's date semantics, also used for numbers' precision ranges).
fn range_sql(sql: &mut Sql, op: DateOp, s: SqlValue, e: SqlValue, exact: SqlValue) -> String {
    match op {
        DateOp::Eq | DateOp::Ap => format!("lo >= {} AND hi <= {}", sql.arg(s), sql.arg(e)),
        DateOp::Ne => format!("NOT (lo >= {} AND hi <= {})", sql.arg(s), sql.arg(e)),
        DateOp::Gt => format!("hi > {}", sql.arg(exact)),
        DateOp::Lt => format!("lo < {}", sql.arg(exact)),
        DateOp::Ge => format!("hi >= {}", sql.arg(exact)),
        DateOp::Le => format!("lo <= {}", sql.arg(exact)),
        DateOp::Sa => format!("lo > {}", sql.arg(e)),
        DateOp::Eb => format!("hi < {}", sql.arg(s)),
    }
}

fn predicate_sql(sql: &mut Sql, kind: ParamKind, p: &Predicate) -> String {
    match p {
        Predicate::Token { system, code } => {
            let mut parts = Vec::new();
            if let Some(c) = code {
                parts.push(format!("v = {}", sql.arg(text(c))));
            } else {
                parts.push("v IS NOT NULL".to_string());
            }
            match system {
                Some(s) => parts.push(format!("s = {}", sql.arg(text(s)))),
                None => parts.push("s IS NOT NULL".to_string()),
            }
            parts.join(" AND ")
        }
        Predicate::StrPrefix(t) => {
            let lo = sql.arg(text(t));
            let hi = sql.arg(text(&prefix_end(t)));
            format!("v >= {lo} AND v < {hi}")
        }
        Predicate::StrExact(t) => {
            let norm = hale_fhir::search::normalise_string(t);
            format!("v = {} AND s = {}", sql.arg(text(&norm)), sql.arg(text(t)))
        }
        Predicate::StrContains(t) => {
            let escaped = t.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
            format!("v LIKE {} ESCAPE '\\'", sql.arg(text(&format!("%{escaped}%"))))
        }
        Predicate::Date { op, start_ms, end_ms } => {
            let (s, e) = (SqlValue::Integer(*start_ms), SqlValue::Integer(*end_ms));
            // `lo IS NOT NULL` lets SQLite use the partial date index.
            let exact = match op {
                DateOp::Gt | DateOp::Le => e.clone(),
                _ => s.clone(),
            };
            format!("lo IS NOT NULL AND {}", range_sql(sql, *op, s, e, exact))
        }
        Predicate::Reference { rtype, id } => {
            let mut c = format!("v = {}", sql.arg(text(id)));
            match rtype {
                Some(t) => c.push_str(&format!(" AND s = {}", sql.arg(text(t)))),
                None => c.push_str(" AND s IS NOT NULL"),
            }
            c
        }
        Predicate::Uri(u) => format!("v = {} AND s IS NULL", sql.arg(text(u))),
        Predicate::UriBelow(u) => {
            let lo = sql.arg(text(u));
            let hi = sql.arg(text(&prefix_end(u)));
            format!("v >= {lo} AND v < {hi} AND s IS NULL")
        }
        Predicate::UriAbove(candidates) => {
            let list: Vec<String> = candidates.iter().map(|c| sql.arg(text(c))).collect();
            format!("v IN ({}) AND s IS NULL", list.join(", "))
        }
        Predicate::Number { op, value, lo, hi } => format!(
            "lo IS NOT NULL AND {}",
            range_sql(
                sql,
                *op,
                SqlValue::Real(lo.0),
                SqlValue::Real(hi.0),
                SqlValue::Real(value.0)
            )
        ),
        Predicate::Quantity {
            op,
            value,
            lo,
            hi,
            system,
            code,
        } => {
            let mut c = format!(
                "lo IS NOT NULL AND {}",
                range_sql(
                    sql,
                    *op,
                    SqlValue::Real(lo.0),
                    SqlValue::Real(hi.0),
                    SqlValue::Real(value.0)
                )
            );
            if let Some(code) = code {
                c.push_str(&format!(" AND v = {}", sql.arg(text(code))));
            }
            if let Some(system) = system {
                c.push_str(&format!(" AND s = {}", sql.arg(text(system))));
            }
            c
        }
        Predicate::Chain { target, inner } => {
            let a = sql.alias("c");
            let t = sql.arg(text(target.as_str()));
            // The inner clause drives its subquery when it can list its
            // matches (as in `where_sql`): without that SQLite walks every
            // resource of the target type (200 ms for 100k patients).
            let drives = can_drive(inner);
            let cond = clause_sql(sql, target.as_str(), inner, drives, &a);
            let plus = if drives { "+" } else { "" };
            format!(
                "s = {t} AND v IN (SELECT {a}.id FROM resources {a} WHERE {plus}{a}.rtype = {t} AND {plus}{a}.deleted = 0 AND {cond})"
            )
        }
        Predicate::Has { .. } => "0".to_string(), // handled by clause_sql
        Predicate::Composite(a, b) => {
            let mut parts = vec![composite_part_sql(sql, "v", a)];
            let second = composite_part_sql(sql, "s", b);
            parts.push(second);
            let _ = kind;
            parts.join(" AND ")
        }
    }
}

/// One part of a composite search over its key column (`v` for the first
/// part, `s` for the second) and, for quantities and dates, the range.
fn composite_part_sql(sql: &mut Sql, col: &str, p: &Predicate) -> String {
    let key_prefix = |sql: &mut Sql, code: &str, system: &Option<String>| match system {
        Some(s) => format!("{col} = {}", sql.arg(text(&format!("{code}\u{1}{s}")))),
        None => {
            let lo = format!("{code}\u{1}");
            let hi = format!("{code}\u{2}");
            format!("{col} >= {} AND {col} < {}", sql.arg(text(&lo)), sql.arg(text(&hi)))
        }
    };
    match p {
        Predicate::Token {
            system,
            code: Some(code),
        } => key_prefix(sql, code, system),
        Predicate::Token { code: None, .. } => format!("{col} IS NOT NULL"),
        Predicate::StrPrefix(t) => format!(
            "{col} >= {} AND {col} < {}",
            sql.arg(text(t)),
            sql.arg(text(&prefix_end(t)))
        ),
        Predicate::Reference { rtype: Some(t), id } => format!("{col} = {}", sql.arg(text(&format!("{t}/{id}")))),
        Predicate::Reference { rtype: None, id } => {
            format!("{col} LIKE {}", sql.arg(text(&format!("%/{id}"))))
        }
        Predicate::Uri(u) => format!("{col} = {}", sql.arg(text(u))),
        Predicate::Quantity {
            op,
            value,
            lo,
            hi,
            system,
            code,
        } => {
            let mut c = range_sql(
                sql,
                *op,
                SqlValue::Real(lo.0),
                SqlValue::Real(hi.0),
                SqlValue::Real(value.0),
            );
            if let Some(code) = code {
                c = format!("{c} AND {}", key_prefix(sql, code, system));
            }
            c
        }
        Predicate::Date { .. } | Predicate::Number { .. } => {
            // The same range columns as a plain date or number.
            let c = predicate_sql(sql, ParamKind::Date, p);
            c.replace("lo IS NOT NULL AND ", "")
        }
        _ => "0".to_string(),
    }
}

/// Conditions over the updated time or id columns of `resources` (alias r).
fn column_predicate(sql: &mut Sql, clause: &Clause, p: &Predicate, r: &str) -> String {
    match (clause.param, p) {
        ("_id", Predicate::Token { code: Some(c), .. }) => format!("{r}.id = {}", sql.arg(text(c))),
        ("_id", Predicate::Reference { id, .. }) => format!("{r}.id = {}", sql.arg(text(id))),
        ("_lastUpdated", Predicate::Date { .. }) => {
            let cond = predicate_sql(sql, ParamKind::Date, p);
            cond.replace("lo", &format!("{r}.updated_ms"))
                .replace("hi", &format!("{r}.updated_ms"))
        }
        _ => "0".to_string(),
    }
}

/// One clause as SQL. The driving clause is `r.rid IN (...)` over the value
/// index; the others are `EXISTS` probes by rid, so a clause that matches half
/// the table (a status, a date range) is checked per candidate row instead of
/// being materialised in full.
fn clause_sql(sql: &mut Sql, rtype: &str, clause: &Clause, drive: bool, r: &str) -> String {
    if matches!(clause.param, "_id" | "_lastUpdated") {
        if let Some(missing) = clause.missing {
            return if missing { "0".into() } else { "1".into() };
        }
        let alts: Vec<String> = clause
            .alternatives
            .iter()
            .map(|p| column_predicate(sql, clause, p, r))
            .collect();
        return format!("({})", alts.join(" OR "));
    }
    if clause.param == "_has" {
        // Some resource of another type refers to this one and matches.
        let alts: Vec<String> = clause
            .alternatives
            .iter()
            .filter_map(|p| match p {
                Predicate::Has { source, param, inner } => {
                    let (h, o) = (sql.alias("h"), sql.alias("o"));
                    let st = sql.arg(text(source.as_str()));
                    let pp = sql.arg(text(param));
                    let me = sql.arg(text(rtype));
                    let cond = clause_sql(sql, source.as_str(), inner, false, &o);
                    Some(format!(
                        "EXISTS (SELECT 1 FROM idx {h} JOIN resources {o} ON {o}.rid = {h}.rid \
                         WHERE {h}.rtype = {st} AND {h}.param = {pp} AND {h}.s = {me} AND {h}.v = {r}.id \
                         AND {o}.deleted = 0 AND {cond})"
                    ))
                }
                _ => None,
            })
            .collect();
        return format!("({})", alts.join(" OR "));
    }
    let column = format!("{}{}", clause.param, clause.facet.suffix());
    let p = sql.arg(text(&column));
    if let Some(missing) = clause.missing {
        let neg = if missing { "NOT " } else { "" };
        return format!("{neg}EXISTS (SELECT 1 FROM idx WHERE rid = {r}.rid AND param = {p})");
    }
    let alts: Vec<String> = clause
        .alternatives
        .iter()
        .map(|a| format!("({})", predicate_sql(sql, clause.kind, a)))
        .collect();
    if clause.not {
        // `:not`: no value of the parameter matches (resources without one included).
        return format!(
            "NOT EXISTS (SELECT 1 FROM idx WHERE rid = {r}.rid AND param = {p} AND ({}))",
            alts.join(" OR ")
        );
    }
    if drive {
        let t = sql.arg(text(rtype));
        format!(
            "{r}.rid IN (SELECT rid FROM idx WHERE rtype = {t} AND param = {p} AND ({}))",
            alts.join(" OR ")
        )
    } else {
        format!(
            "EXISTS (SELECT 1 FROM idx WHERE rid = {r}.rid AND param = {p} AND ({}))",
            alts.join(" OR ")
        )
    }
}

/// How selective a clause usually is: lower drives the query.
fn selectivity_rank(c: &Clause) -> u8 {
    match (c.kind, c.param) {
        (
            _,
            "status" | "category" | "service-category" | "active" | "gender" | "_tag" | "class" | "clinical-status",
        ) => 4,
        (ParamKind::Date, _) => 3,
        (ParamKind::String, _) => 2,
        _ => 0,
    }
}

/// Whether a clause can list its matches from the index (`rid IN (...)`), and
/// so drive a query.
fn can_drive(c: &Clause) -> bool {
    !matches!(c.param, "_id" | "_lastUpdated" | "_has") && c.missing.is_none() && !c.not
}

/// The WHERE conditions of a search. When an index clause can drive the
/// query, the `resources` columns are written `+r.rtype` so that SQLite looks
/// rows up by rid from the most selective clause instead of scanning the type.
fn where_sql(q: &SearchQuery) -> Sql {
    let mut sql = Sql {
        conds: Vec::new(),
        args: Vec::new(),
        aliases: 0,
    };
    let mut clauses: Vec<&Clause> = q.clauses.iter().collect();
    clauses.sort_by_key(|c| selectivity_rank(c));
    let by_id = clauses.iter().any(|c| c.param == "_id");
    // A compartment (one patient) is the most selective of all: it drives.
    let compartment_drives = q.compartment.as_ref().is_some_and(|c| !c.include_self) && !by_id;
    // The first index clause that can list its matches drives the query.
    let driver = if by_id || compartment_drives {
        None
    } else {
        clauses.iter().position(|c| can_drive(c))
    };
    let plus = if driver.is_some() || compartment_drives {
        "+"
    } else {
        ""
    };
    let t = sql.arg(text(q.rtype.as_str()));
    sql.conds.push(format!("{plus}r.rtype = {t} AND {plus}r.deleted = 0"));
    if let Some(c) = &q.compartment {
        let pid = sql.arg(text(&c.patient));
        let params: Vec<String> = c.params.iter().map(|p| sql.arg(text(p))).collect();
        let refers = if params.is_empty() {
            "0".to_string()
        } else {
            format!(
                "r.rid IN (SELECT rid FROM idx WHERE rtype = {t} AND param IN ({}) AND v = {pid} AND s = 'Patient')",
                params.join(", ")
            )
        };
        if c.include_self {
            sql.conds.push(format!("(r.id = {pid} OR {refers})"));
        } else {
            sql.conds.push(refers);
        }
    }
    for (i, c) in clauses.into_iter().enumerate() {
        let cond = clause_sql(&mut sql, q.rtype.as_str(), c, driver == Some(i), "r");
        sql.conds.push(cond);
    }
    sql
}

fn order_sql(sql: &mut Sql, q: &SearchQuery) -> String {
    let mut keys = Vec::new();
    for k in &q.sort {
        let dir = if k.descending { "DESC" } else { "ASC" };
        match k.param {
            "_lastUpdated" => keys.push(format!("r.updated_ms {dir}")),
            "_id" => keys.push(format!("r.id {dir}")),
            param => {
                let p = sql.arg(text(param));
                let agg = match (k.kind, k.descending) {
                    (ParamKind::Date | ParamKind::Number | ParamKind::Quantity, true) => "MAX(hi)",
                    (ParamKind::Date | ParamKind::Number | ParamKind::Quantity, false) => "MIN(lo)",
                    (_, true) => "MAX(v)",
                    (_, false) => "MIN(v)",
                };
                keys.push(format!(
                    "(SELECT {agg} FROM idx WHERE rid = r.rid AND param = {p}) {dir}"
                ));
            }
        }
    }
    keys.push("r.rid ASC".into());
    keys.join(", ")
}

/// Matching rids, in result order, at most `limit` of them (from offset 0).
pub(crate) fn search_rids(conn: &Connection, q: &SearchQuery, limit: usize) -> rusqlite::Result<Vec<i64>> {
    let mut sql = where_sql(q);
    let order = order_sql(&mut sql, q);
    let text_sql = format!(
        "SELECT r.rid FROM resources r WHERE {} ORDER BY {order} LIMIT {limit}",
        sql.conds.join(" AND ")
    );
    let mut stmt = conn.prepare_cached(&text_sql)?;
    let rows = stmt.query_map(params_from_iter(sql.args.iter()), |r| r.get(0))?;
    rows.collect()
}

pub fn search(conn: &Connection, q: &SearchQuery) -> rusqlite::Result<SearchPage> {
    if q.rtype == ResourceType::AuditEvent {
        return audit::search(conn, q);
    }
    let mut sql = where_sql(q);
    if q.count == 0 || q.summary == hale_fhir::search::Summary::Count {
        // `_count=0` or `_summary=count`: the number of matches only.
        let text_sql = format!("SELECT COUNT(*) FROM resources r WHERE {}", sql.conds.join(" AND "));
        let n: i64 = conn
            .prepare_cached(&text_sql)?
            .query_row(params_from_iter(sql.args.iter()), |r| r.get(0))?;
        return Ok(SearchPage {
            total: Some(n as u64),
            ..SearchPage::default()
        });
    }
    let order = order_sql(&mut sql, q);
    let limit = sql.arg((q.count + 1) as i64);
    let offset = sql.arg(q.offset as i64);
    let text_sql = format!(
        "SELECT r.rid, r.id, r.version, r.updated_ms, r.json FROM resources r WHERE {} ORDER BY {order} LIMIT {limit} OFFSET {offset}",
        sql.conds.join(" AND ")
    );
    let mut stmt = conn.prepare_cached(&text_sql)?;
    let rtype = q.rtype.as_str();
    let mut rows: Vec<(i64, Found)> = stmt
        .query_map(params_from_iter(sql.args.iter()), |r| {
            Ok((
                r.get(0)?,
                Found {
                    rtype: rtype.to_string(),
                    id: r.get(1)?,
                    version: r.get::<_, i64>(2)? as u64,
                    updated_ms: r.get(3)?,
                    json: Some(r.get(4)?),
                    method: "GET",
                },
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let has_more = rows.len() > q.count;
    rows.truncate(q.count);
    let total = match q.total {
        Total::None => None,
        Total::Default if has_more => None,
        _ if !has_more => Some((q.offset + rows.len()) as u64),
        // `_total=accurate|estimate` before the last page: count (exactly).
        _ => {
            let mut count_sql = where_sql(q);
            let text_sql = format!(
                "SELECT COUNT(*) FROM resources r WHERE {}",
                count_sql.conds.join(" AND ")
            );
            let _ = &mut count_sql;
            let n: i64 = conn
                .prepare_cached(&text_sql)?
                .query_row(params_from_iter(count_sql.args.iter()), |r| r.get(0))?;
            Some(n as u64)
        }
    };
    let included = includes(conn, q, &rows)?;
    Ok(SearchPage {
        matches: rows.into_iter().map(|(_, f)| f).collect(),
        included,
        has_more,
        total,
    })
}

/// At most this many resources are included in one search page.
pub const INCLUDED_MAX: usize = 1_000;
/// `_include:iterate` follows at most this many rounds.
pub const INCLUDE_ROUNDS_MAX: usize = 3;

fn live_row(conn: &Connection, rtype: &str, id: &str) -> rusqlite::Result<Option<(i64, Found)>> {
    conn.prepare_cached(
        "SELECT rid, version, updated_ms, json FROM resources WHERE rtype = ?1 AND id = ?2 AND deleted = 0",
    )?
    .query_row(params![rtype, id], |r| {
        Ok((
            r.get(0)?,
            Found {
                rtype: rtype.to_string(),
                id: id.to_string(),
                version: r.get::<_, i64>(1)? as u64,
                updated_ms: r.get(2)?,
                json: Some(r.get(3)?),
                method: "GET",
            },
        ))
    })
    .optional()
}

/// `_include` (followed from the matches, and with `:iterate` from what was
/// included, up to [`INCLUDE_ROUNDS_MAX`] rounds) and `_revinclude`, at most
/// [`INCLUDED_MAX`] resources, each once and never a match again.
fn includes(conn: &Connection, q: &SearchQuery, matches: &[(i64, Found)]) -> rusqlite::Result<Vec<Found>> {
    let mut out: Vec<Found> = Vec::new();
    let mut seen: std::collections::BTreeSet<(String, String)> =
        matches.iter().map(|(_, f)| (f.rtype.clone(), f.id.clone())).collect();
    let mut frontier: Vec<(i64, String)> = matches.iter().map(|(rid, f)| (*rid, f.rtype.clone())).collect();
    let rounds = if q.iterate { INCLUDE_ROUNDS_MAX } else { 1 };
    let mut stmt =
        conn.prepare_cached("SELECT s, v FROM idx WHERE rid = ?1 AND param = ?2 AND s IS NOT NULL AND v IS NOT NULL")?;
    for _ in 0..rounds {
        let mut next = Vec::new();
        for inc in &q.includes {
            for (rid, rtype) in &frontier {
                if rtype != inc.source.as_str() {
                    continue;
                }
                let targets: Vec<(String, String)> = stmt
                    .query_map(params![rid, inc.param], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()?;
                for (t, id) in targets {
                    if inc.target.is_some_and(|want| want.as_str() != t) || out.len() >= INCLUDED_MAX {
                        continue;
                    }
                    if !seen.insert((t.clone(), id.clone())) {
                        continue;
                    }
                    if let Some((trid, f)) = live_row(conn, &t, &id)? {
                        next.push((trid, t));
                        out.push(f);
                    }
                }
            }
        }
        if next.is_empty() {
            break;
        }
        frontier = next;
    }
    if !q.revincludes.is_empty() && !matches.is_empty() {
        let ids: Vec<&str> = matches.iter().map(|(_, f)| f.id.as_str()).collect();
        for inc in &q.revincludes {
            let mut args: Vec<SqlValue> = vec![text(inc.source.as_str()), text(inc.param), text(q.rtype.as_str())];
            let marks: Vec<String> = ids
                .iter()
                .map(|id| {
                    args.push(text(id));
                    format!("?{}", args.len())
                })
                .collect();
            let sql_text = format!(
                "SELECT DISTINCT r.rid, r.id, r.version, r.updated_ms, r.json FROM idx i JOIN resources r ON r.rid = i.rid \
                 WHERE i.rtype = ?1 AND i.param = ?2 AND i.s = ?3 AND i.v IN ({}) AND r.deleted = 0 ORDER BY r.rid LIMIT {}",
                marks.join(", "),
                INCLUDED_MAX
            );
            let mut st = conn.prepare(&sql_text)?;
            let rows: Vec<Found> = st
                .query_map(params_from_iter(args.iter()), |r| {
                    Ok(Found {
                        rtype: inc.source.as_str().to_string(),
                        id: r.get(1)?,
                        version: r.get::<_, i64>(2)? as u64,
                        updated_ms: r.get(3)?,
                        json: Some(r.get(4)?),
                        method: "GET",
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            for f in rows {
                if out.len() >= INCLUDED_MAX {
                    break;
                }
                if seen.insert((f.rtype.clone(), f.id.clone())) {
                    out.push(f);
                }
            }
        }
    }
    Ok(out)
}

/// The types of live resources that refer to `rtype/id` (so a compartment walk
/// need not search the types that hold nothing for this patient).
pub fn types_referring_to(conn: &Connection, rtype: &str, id: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT r.rtype FROM refs f JOIN resources r ON r.rid = f.rid
         WHERE f.dst_type = ?1 AND f.dst_id = ?2 AND r.deleted = 0",
    )?;
    let rows = stmt.query_map(params![rtype, id], |r| r.get(0))?;
    rows.collect()
}

/// The local references a live resource holds, as (type, id).
pub fn references_of(conn: &Connection, rtype: &str, id: &str) -> rusqlite::Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT f.dst_type, f.dst_id FROM refs f JOIN resources r ON r.rid = f.rid
         WHERE r.rtype = ?1 AND r.id = ?2 AND r.deleted = 0 ORDER BY f.dst_type, f.dst_id",
    )?;
    let rows = stmt.query_map(params![rtype, id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// Count of live resources per type.
pub fn counts(conn: &Connection) -> rusqlite::Result<Vec<(String, u64)>> {
    let mut stmt =
        conn.prepare_cached("SELECT rtype, COUNT(*) FROM resources WHERE deleted = 0 GROUP BY rtype ORDER BY rtype")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
    rows.collect()
}

/// Every live resource of a type, in id order, for export. Calls `f` for each JSON text.
pub fn for_each_current(
    conn: &Connection,
    rtype: &str,
    mut f: impl FnMut(&str) -> std::io::Result<()>,
) -> Result<u64, crate::StoreError> {
    if rtype == "AuditEvent" {
        return audit::for_each(conn, f);
    }
    // The (rtype, id) key's order: ordering by rid would sort the whole type in memory.
    let mut stmt = conn.prepare_cached("SELECT json FROM resources WHERE rtype = ?1 AND deleted = 0 ORDER BY id")?;
    let mut rows = stmt.query([rtype])?;
    let mut n = 0;
    while let Some(r) = rows.next()? {
        let json: String = r.get(0)?;
        f(&json)?;
        n += 1;
    }
    Ok(n)
}
