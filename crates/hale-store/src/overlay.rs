//! Searching writes that are not in the store yet: the tentative versions a
//! cut-off site holds in its journal.
//!
//! Architecture invariant: nothing here touches the node's database. The
//! tentative versions are indexed into a scratch in-memory database with the
//! store's own schema and index extraction, and the search runs there with the
//! same SQL, so a filter means the same thing on both sides. What a query
//! reaches through other resources (chains, `_has`) matches only within the
//! scratch set.

use crate::apply::index_resource;
use crate::schema;
use hale_fhir::search::SearchQuery;
use rusqlite::{params, Connection};

/// Tentative versions searched at most per query; past it the caller says so.
pub const OVERLAY_SEARCH_MAX: usize = 5_000;

/// Of `resources` (id, JSON) of the query's type, the ids that match `q`, in
/// the query's order.
pub fn matching_ids(q: &SearchQuery, resources: &[(String, String)]) -> rusqlite::Result<Vec<String>> {
    assert!(resources.len() <= OVERLAY_SEARCH_MAX, "overlay search over its limit");
    let conn = Connection::open_in_memory()?;
    conn.execute_batch(schema::DDL)?;
    let tx = conn.unchecked_transaction()?;
    for (id, json) in resources {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
            continue;
        };
        tx.execute(
            "INSERT INTO resources(rtype, id, version, updated_ms, deleted, json) VALUES (?1, ?2, 1, 0, 0, ?3)",
            params![q.rtype.as_str(), id, json],
        )?;
        index_resource(&tx, q.rtype, tx.last_insert_rowid(), &v)?;
    }
    tx.commit()?;
    let mut all = q.clone();
    all.offset = 0;
    let rids = crate::query::search_rids(&conn, &all, resources.len().max(1))?;
    let mut out = Vec::with_capacity(rids.len());
    for rid in rids {
        out.push(conn.query_row("SELECT id FROM resources WHERE rid = ?1", [rid], |r| r.get(0))?);
    }
    Ok(out)
}
