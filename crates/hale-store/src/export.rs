//! Bulk reads for FHIR Bulk Data `$export` and for comparing two stores'
//! records: every live resource of a type, optionally only those changed
//! since a time and only those in some patients' compartments, all read from
//! one point in time.
//!
//! DESIGN: an export of a health board runs for minutes, so it reads on a
//! connection of its own inside one read transaction ([`Snapshot`]). The
//! store is in WAL mode, so the writer goes on meanwhile, every file of one
//! export shows the same moment, and the shared read pool keeps all its
//! connections for interactive reads. Which resources belong to a patient is
//! the official CompartmentDefinition (as for `$everything`), evaluated on
//! the search index: a resource is in the compartment when one of its
//! compartment parameters refers to a Patient.
//!
//! Architecture Invariant: this module reads; it never writes the store and
//! knows nothing of HTTP, jobs or files (the server's `bulk` module does).

use crate::query::{self, Current};
use crate::{audit, configure, StoreError, DB_FILE, READER_CACHE_KIB};
use hale_fhir::ResourceType;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::Path;

/// Which resources of a type an export takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Members {
    /// Every resource of the type (system-level export).
    All,
    /// Every Patient, and every resource in some patient's compartment
    /// (`Patient/$export`).
    AnyPatient,
    /// These patients and the resources in their compartments (`Group/{id}/$export`).
    Patients(Vec<String>),
}

/// Whether an export callback wants more rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// One read transaction on a connection of its own: everything read through
/// it shows the store as it was when it was opened.
pub struct Snapshot {
    conn: Connection,
    last_applied: u64,
}

impl Snapshot {
    /// Open the store in `dir` read-only and fix the moment it shows.
    /// Blocking: run it off the async threads.
    pub fn open(dir: &Path) -> Result<Snapshot, StoreError> {
        let conn = crate::db::open(
            &dir.join(DB_FILE),
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
        )?;
        configure(&conn, READER_CACHE_KIB)?;
        conn.execute_batch("BEGIN")?;
        // The first read starts the snapshot.
        let applied: Option<i64> = conn
            .query_row("SELECT value FROM meta WHERE key = 'last_applied'", [], |r| r.get(0))
            .optional()?;
        Ok(Snapshot {
            conn,
            last_applied: applied.unwrap_or(0) as u64,
        })
    }

    /// The log index the snapshot reflects.
    pub fn last_applied(&self) -> u64 {
        self.last_applied
    }

    pub fn read(&self, rtype: &str, id: &str) -> rusqlite::Result<Option<Current>> {
        query::read(&self.conn, rtype, id)
    }

    /// Call `f` with the JSON of every live resource of `rtype` among
    /// `members` last changed after `since_ms`, in id order, until it answers
    /// [`Flow::Stop`]. Returns how many were passed. Id order is the order of
    /// the `(rtype, id)` key the scan walks: any other order would make SQLite
    /// sort the whole type in memory first (1.7 million Observations, over a
    /// gigabyte, on the million-patient board).
    /// AuditEvent (the audit trail, not part of any patient's record) is only
    /// exported whole: for `Members::All`.
    pub fn for_each(
        &self,
        rtype: ResourceType,
        members: &Members,
        since_ms: Option<i64>,
        mut f: impl FnMut(&str) -> std::io::Result<Flow>,
    ) -> Result<u64, StoreError> {
        if rtype == ResourceType::AuditEvent {
            return match members {
                Members::All => audit::for_each_since(&self.conn, since_ms, f),
                _ => Ok(0),
            };
        }
        let Some((cond, ids)) = member_sql(rtype, members) else {
            return Ok(0);
        };
        let sql = format!(
            "SELECT r.json FROM resources r WHERE r.rtype = ?1 AND r.deleted = 0 AND r.updated_ms > ?2 AND {cond} ORDER BY r.id"
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let mut rows = stmt.query(params![rtype.as_str(), since_ms.unwrap_or(i64::MIN), ids])?;
        let mut n = 0;
        while let Some(r) = rows.next()? {
            let json: String = r.get(0)?;
            debug_assert!(!json.contains('\n'), "stored JSON is one line");
            n += 1;
            if f(&json)? == Flow::Stop {
                break;
            }
        }
        Ok(n)
    }

    /// The head of the audit hash chain (see [`crate::audit::head`]).
    pub fn audit_head(&self) -> rusqlite::Result<Option<crate::audit::ChainHead>> {
        crate::audit::head(&self.conn)
    }

    /// The content hash of the snapshot (see [`crate::hash`]).
    pub fn content_hash(&self) -> Result<String, StoreError> {
        Ok(crate::hash::content_hash(&self.conn)?)
    }

    /// The record hash of the snapshot (see [`record_hash`]).
    pub fn record_hash(&self) -> Result<String, StoreError> {
        record_hash(&self.conn)
    }
}

/// The SQL condition (on `resources r`, with `?3` a JSON array of patient ids
/// or NULL) that picks `members` of `rtype`; None when no resource of the type
/// can be among them.
fn member_sql(rtype: ResourceType, members: &Members) -> Option<(String, Option<String>)> {
    let patient = rtype == ResourceType::Patient;
    let params = hale_fhir::search::patient_compartment(rtype);
    let in_params = || {
        params
            .iter()
            .map(|p| format!("'{}'", p.replace('\'', "''")))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match members {
        Members::All => Some(("?3 IS NULL".into(), None)),
        Members::AnyPatient if patient => Some(("?3 IS NULL".into(), None)),
        Members::AnyPatient if params.is_empty() => None,
        Members::AnyPatient => Some((
            format!(
                "?3 IS NULL AND r.rid IN (SELECT rid FROM idx WHERE rtype = ?1 AND param IN ({}) AND v IS NOT NULL AND s = 'Patient')",
                in_params()
            ),
            None,
        )),
        Members::Patients(ids) => {
            let ids = Some(Value::from(ids.clone()).to_string());
            if patient {
                Some(("r.id IN (SELECT value FROM json_each(?3))".into(), ids))
            } else if params.is_empty() {
                None
            } else {
                Some((
                    format!(
                        "r.rid IN (SELECT rid FROM idx WHERE rtype = ?1 AND param IN ({}) AND v IN (SELECT value FROM json_each(?3)) AND s = 'Patient')",
                        in_params()
                    ),
                    ids,
                ))
            }
        }
    }
}

/// SHA-256 over every live resource's type, id and content, leaving out
/// `meta.versionId` and `meta.lastUpdated` (the store's own bookkeeping) and
/// with object keys in sorted order, in type and id order. Two stores that
/// hold the same record have the same record hash however the record got
/// there: exported from one and imported into the other, the versions and
/// times differ but this does not. (The content hash, [`crate::hash`], covers
/// history, index and audit too, and is equal only for replicas of one log.)
pub fn record_hash(conn: &Connection) -> Result<String, StoreError> {
    let mut h = Sha256::new();
    let mut stmt = conn.prepare("SELECT rtype, id, json FROM resources WHERE deleted = 0 ORDER BY rtype, id")?;
    let mut rows = stmt.query([])?;
    let mut buf = Vec::new();
    while let Some(r) = rows.next()? {
        let rtype: String = r.get(0)?;
        let id: String = r.get(1)?;
        let json: String = r.get(2)?;
        let mut v: Value = serde_json::from_str(&json).map_err(|e| {
            StoreError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{rtype}/{id} holds JSON that does not parse: {e}"),
            ))
        })?;
        if let Some(meta) = v.get_mut("meta").and_then(Value::as_object_mut) {
            meta.remove("versionId");
            meta.remove("lastUpdated");
            if meta.is_empty() {
                v.as_object_mut().expect("a resource is an object").remove("meta");
            }
        }
        buf.clear();
        canonical(&v, &mut buf);
        for part in [rtype.as_bytes(), id.as_bytes(), &buf] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// JSON with every object's keys in sorted order.
fn canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(Value::String(k.clone()).to_string().as_bytes());
                out.push(b':');
                canonical(&m[k], out);
            }
            out.push(b'}');
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(x, out);
            }
            out.push(b']');
        }
        other => out.extend_from_slice(other.to_string().as_bytes()),
    }
}

/// The record hash of the store in `dir`, on a connection of its own (safe
/// while the node runs). Blocking.
pub fn record_hash_at(dir: &Path) -> Result<String, StoreError> {
    Snapshot::open(dir)?.record_hash()
}
