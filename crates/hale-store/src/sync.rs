//! Offline writes, the replicated half: what a site journal entry becomes when
//! it is replayed ([`crate::command::Replay`]), and how staff see conflicts.
//!
//! Architecture invariant: this module knows nothing of the journal file, of
//! HTTP or of raft. It holds the pure rules (which writes a cut-off site may
//! accept, the three-way merge, the shape of conflict Tasks) and the queries
//! over the receipts that apply keeps. Apply itself is in `apply_replay.rs`.
//!
//! Exactly once: apply keeps, per journal (one per node), the head `(seq,
//! hash)` and a receipt for every entry. An entry at or below the head returns
//! its stored receipt; an entry that skips a number or does not chain onto the
//! head's hash is refused and changes nothing. Every entry that is applied
//! ends as a committed write or as a `Task` for staff, never as nothing.

use crate::command::{Policy, WriteOp};
use hale_fhir::ResourceType;
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// Hale's CodeSystem for sync conflicts (Task.code) and the review Flag.
pub const SYNC_CONFLICT_SYSTEM: &str = "https://hale.health/fhir/CodeSystem/sync-conflict";
/// Flag.code for "this record has unreviewed offline changes".
pub const UNREVIEWED_OFFLINE_CHANGES: &str = "unreviewed-offline-changes";
/// An NHS number written offline that turned out to belong to another
/// Patient: kept, under this system, until a person decides.
pub const UNVERIFIED_NHS_NUMBER_SYSTEM: &str = "https://hale.health/fhir/Id/unverified-nhs-number";
/// meta.tag code (system `hale_fhir::codes::TAG_SYSTEM`) on everything written at a cut-off site.
pub const TAG_OFFLINE_WRITE: &str = "offline-write";
/// meta.tag code prefix naming the site that wrote it: `site-<site>`.
pub const TAG_SITE_PREFIX: &str = "site-";
/// Slot extension (valueString: a site) reserving the slot for bookings that
/// site makes while cut off: it cannot be booked centrally, so an offline
/// booking of it always commits as made.
pub const EXT_OFFLINE_RESERVE: &str = "https://hale.health/fhir/StructureDefinition/offline-reserve";

/// The site a Slot is reserved for, if any.
pub fn offline_reserve(slot: &Value) -> Option<&str> {
    slot.get("extension")?
        .as_array()?
        .iter()
        .find(|x| x.get("url").and_then(Value::as_str) == Some(EXT_OFFLINE_RESERVE))?
        .get("valueString")?
        .as_str()
}

/// Journal entries in one `Replay` command.
pub const REPLAY_BATCH_ENTRIES_MAX: usize = 128;
/// Appointment statuses a site records as an observed fact.
pub const SITE_STATUSES: &[&str] = &["arrived", "checked-in", "fulfilled", "noshow"];
/// Types whose creation at a cut-off site is a new clinical fact (no uniqueness
/// to break, references to what exists): accepted offline and committed at replay.
pub const APPEND_TYPES: &[ResourceType] = &[
    ResourceType::DocumentReference,
    ResourceType::Observation,
    ResourceType::Condition,
    ResourceType::Procedure,
    ResourceType::AllergyIntolerance,
    ResourceType::MedicationAdministration,
    ResourceType::Immunization,
    ResourceType::QuestionnaireResponse,
    ResourceType::Encounter,
    ResourceType::ClinicalImpression,
];

/// Why an offline write became a Task (Task.code in [`SYNC_CONFLICT_SYSTEM`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConflictKind {
    /// The same field was changed centrally and at the site.
    FieldConflict,
    /// The slot booked at the site was taken centrally meanwhile.
    SlotTaken,
    /// A Patient created at the site has an NHS number registered centrally.
    PossibleDuplicate,
    /// A status recorded at the site met a central change (a cancellation, a move).
    StatusDiverged,
    /// What the offline write refers to no longer exists.
    ReferenceMissing,
    /// The server refused the write for another reason (a business rule).
    Rejected,
}

impl ConflictKind {
    pub const ALL: [ConflictKind; 6] = [
        ConflictKind::FieldConflict,
        ConflictKind::SlotTaken,
        ConflictKind::PossibleDuplicate,
        ConflictKind::StatusDiverged,
        ConflictKind::ReferenceMissing,
        ConflictKind::Rejected,
    ];

    pub fn code(self) -> &'static str {
        match self {
            ConflictKind::FieldConflict => "field-conflict",
            ConflictKind::SlotTaken => "slot-taken",
            ConflictKind::PossibleDuplicate => "possible-duplicate",
            ConflictKind::StatusDiverged => "status-diverged",
            ConflictKind::ReferenceMissing => "reference-missing",
            ConflictKind::Rejected => "rejected",
        }
    }

    pub fn display(self) -> &'static str {
        match self {
            ConflictKind::FieldConflict => "Offline change conflicts with a central change",
            ConflictKind::SlotTaken => "Slot booked offline was taken centrally",
            ConflictKind::PossibleDuplicate => "Patient registered offline may be a duplicate",
            ConflictKind::StatusDiverged => "Status recorded offline differs from a central change",
            ConflictKind::ReferenceMissing => "Offline entry refers to something that no longer exists",
            ConflictKind::Rejected => "Offline entry was refused by the server",
        }
    }
}

/// What a committed write produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub rtype: String,
    pub id: String,
    pub version: u64,
}

/// How one journal entry ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "outcome")]
pub enum Outcome {
    /// The write committed as sent (or merged, for demographics).
    Committed { write: Committed },
    /// A Task for staff; `write` is what was committed alongside, if anything
    /// (a status applied anyway, a Patient kept with an unverified number, an
    /// Appointment put on the waitlist).
    Task {
        kind: ConflictKind,
        task: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        write: Option<Committed>,
    },
    /// Not applied and no receipt: a gap in the sequence or a broken chain.
    /// The entry is left as it is; an operator must look (`hale sync verify`).
    Refused { reason: String },
}

/// The answer for one replayed entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub node: u64,
    pub seq: u64,
    /// The log index that applied it (the first time).
    pub index: u64,
    pub outcome: Outcome,
    /// True when this entry had been applied before and the stored receipt was returned.
    #[serde(default)]
    pub duplicate: bool,
}

/// Which policy a write gets at a cut-off site, or why it must wait for the
/// data centres. `current` is the version the site holds (committed or pending).
pub fn classify(op: &WriteOp, current: Option<&Value>) -> Result<Policy, String> {
    let rt: ResourceType = op
        .rtype()
        .parse()
        .map_err(|_| format!("'{}' is not a resource type", op.rtype()))?;
    match op {
        WriteOp::Delete { .. } => Err("a delete needs the data centres".into()),
        WriteOp::Create { resource, .. } => match rt {
            ResourceType::Patient => Ok(Policy::NewPatient),
            ResourceType::Appointment => {
                let status = resource.get("status").and_then(Value::as_str).unwrap_or("");
                if crate::apply::HOLDING_STATUSES.contains(&status) && resource.get("slot").is_some() {
                    Ok(Policy::Booking)
                } else if matches!(status, "proposed" | "waitlist") {
                    Ok(Policy::Append)
                } else {
                    Err(format!(
                        "an Appointment created with status '{status}' and no slot needs the data centres"
                    ))
                }
            }
            t if APPEND_TYPES.contains(&t) => Ok(Policy::Append),
            t => Err(format!("creating a {t} needs the data centres")),
        },
        WriteOp::Update { resource, .. } => {
            let Some(cur) = current else {
                return Err(format!(
                    "{rt}/{} is not held at this site; creating it with PUT needs the data centres",
                    op.id()
                ));
            };
            match rt {
                ResourceType::Patient => Ok(Policy::Demographics),
                ResourceType::Appointment | ResourceType::Encounter => {
                    let new_status = resource.get("status").and_then(Value::as_str).unwrap_or("");
                    let only_status = same_except(cur, resource, &["meta", "status", "text"]);
                    let observed = rt == ResourceType::Encounter || SITE_STATUSES.contains(&new_status);
                    if only_status && observed {
                        Ok(Policy::SiteStatus)
                    } else {
                        Ok(Policy::Amend)
                    }
                }
                t if APPEND_TYPES.contains(&t) => Ok(Policy::Amend),
                t => Err(format!("changing a {t} needs the data centres")),
            }
        }
    }
}

/// Equal once `ignore`d top-level keys are left out.
pub fn same_except(a: &Value, b: &Value, ignore: &[&str]) -> bool {
    let strip = |v: &Value| -> Map<String, Value> {
        v.as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| !ignore.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (a, b) = (strip(a), strip(b));
    a.len() == b.len() && a.iter().all(|(k, v)| b.get(k) == Some(v))
}

/// Same content, leaving out `meta` (versions, times, tags) and `id`.
pub fn same_content(a: &Value, b: &Value) -> bool {
    same_except(a, b, &["meta", "id"])
}

/// The fields a three-way merge compares: every top-level element except
/// `id`, `meta` and `text`, with `telecom` split by (system, use), so that a
/// new mobile number and a new email are different fields.
fn fields(v: &Value) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = Vec::new();
    let Some(m) = v.as_object() else { return out };
    for (k, val) in m {
        if matches!(k.as_str(), "id" | "meta" | "text" | "resourceType") {
            continue;
        }
        if k == "telecom" {
            for t in val.as_array().into_iter().flatten() {
                let key = telecom_key(t);
                match out.iter_mut().find(|(f, _)| *f == key) {
                    Some((_, Value::Array(a))) => a.push(t.clone()),
                    _ => out.push((key, Value::Array(vec![t.clone()]))),
                }
            }
            continue;
        }
        out.push((k.clone(), val.clone()));
    }
    out
}

fn telecom_key(t: &Value) -> String {
    let s = t.get("system").and_then(Value::as_str).unwrap_or("");
    let u = t.get("use").and_then(Value::as_str).unwrap_or("");
    format!("telecom({s},{u})")
}

fn get<'v>(f: &'v [(String, Value)], k: &str) -> Option<&'v Value> {
    f.iter().find(|(n, _)| n == k).map(|(_, v)| v)
}

/// Three-way merge of a resource edited at a site (`ours`) and centrally
/// (`theirs`) from the same `base`. Fields only one side changed are taken
/// from that side; a field both changed to different values is a conflict,
/// and the names of all such fields are returned. Never last-writer-wins.
pub fn merge3(base: &Value, ours: &Value, theirs: &Value) -> Result<Value, Vec<String>> {
    let (fb, fo, ft) = (fields(base), fields(ours), fields(theirs));
    let mut keys: Vec<String> = Vec::new();
    for (k, _) in fb.iter().chain(fo.iter()).chain(ft.iter()) {
        if !keys.contains(k) {
            keys.push(k.clone());
        }
    }
    let mut conflicts = Vec::new();
    let mut ours_changed: Vec<&str> = Vec::new();
    for k in &keys {
        let (b, o, t) = (get(&fb, k), get(&fo, k), get(&ft, k));
        let o_changed = o != b;
        let t_changed = t != b;
        if o_changed && t_changed && o != t {
            conflicts.push(k.clone());
        } else if o_changed && !t_changed {
            ours_changed.push(k);
        }
    }
    if !conflicts.is_empty() {
        return Err(conflicts);
    }
    let mut merged = theirs.as_object().cloned().unwrap_or_default();
    let mut telecom_changed = false;
    for k in &ours_changed {
        if k.starts_with("telecom(") {
            telecom_changed = true;
            continue;
        }
        match get(&fo, k) {
            Some(v) => {
                merged.insert((*k).to_string(), v.clone());
            }
            None => {
                merged.shift_remove(*k);
            }
        }
    }
    if telecom_changed {
        // Theirs' order, each changed (system, use) group replaced in place by
        // ours; groups only ours has go at the end.
        let mut out: Vec<Value> = Vec::new();
        let mut emitted: Vec<String> = Vec::new();
        let theirs_tel = theirs
            .get("telecom")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for t in &theirs_tel {
            let key = telecom_key(t);
            if ours_changed.contains(&key.as_str()) {
                if !emitted.contains(&key) {
                    emitted.push(key.clone());
                    if let Some(Value::Array(a)) = get(&fo, &key) {
                        out.extend(a.iter().cloned());
                    }
                }
            } else {
                out.push(t.clone());
            }
        }
        for k in &ours_changed {
            if k.starts_with("telecom(") && !emitted.iter().any(|e| e == k) {
                if let Some(Value::Array(a)) = get(&fo, k) {
                    out.extend(a.iter().cloned());
                }
            }
        }
        if out.is_empty() {
            merged.shift_remove("telecom");
        } else {
            merged.insert("telecom".into(), Value::Array(out));
        }
    }
    Ok(Value::Object(merged))
}

/// Add the offline-write and site tags to a resource written at a site.
pub fn tag_offline(resource: &mut Value, site: &str) {
    let Some(obj) = resource.as_object_mut() else { return };
    let meta = obj.entry("meta").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    let tags = meta
        .as_object_mut()
        .expect("meta is an object")
        .entry("tag")
        .or_insert_with(|| json!([]));
    if !tags.is_array() {
        *tags = json!([]);
    }
    let tags = tags.as_array_mut().expect("tag is an array");
    for code in [TAG_OFFLINE_WRITE.to_string(), format!("{TAG_SITE_PREFIX}{site}")] {
        let present = tags.iter().any(|t| {
            t.get("system").and_then(Value::as_str) == Some(hale_fhir::codes::TAG_SYSTEM)
                && t.get("code").and_then(Value::as_str) == Some(code.as_str())
        });
        if !present {
            tags.push(json!({"system": hale_fhir::codes::TAG_SYSTEM, "code": code}));
        }
    }
}

/// The receipts kept for `node`'s journal, in sequence order.
pub fn receipts(conn: &Connection, node: u64) -> rusqlite::Result<Vec<Receipt>> {
    let mut stmt = conn.prepare("SELECT seq, log_index, outcome FROM sync_receipts WHERE node = ?1 ORDER BY seq")?;
    let rows = stmt.query_map([node as i64], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, index, outcome) = row?;
        out.push(Receipt {
            node,
            seq: seq as u64,
            index: index as u64,
            outcome: serde_json::from_str(&outcome)
                .map_err(|e| rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, Box::new(e)))?,
            duplicate: false,
        });
    }
    Ok(out)
}

/// One stored receipt.
pub fn receipt(conn: &Connection, node: u64, seq: u64) -> rusqlite::Result<Option<Receipt>> {
    let row: Option<(i64, String)> = conn
        .prepare_cached("SELECT log_index, outcome FROM sync_receipts WHERE node = ?1 AND seq = ?2")?
        .query_row(params![node as i64, seq as i64], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(row.and_then(|(index, outcome)| {
        Some(Receipt {
            node,
            seq,
            index: index as u64,
            outcome: serde_json::from_str(&outcome).ok()?,
            duplicate: true,
        })
    }))
}

/// A journal's head as apply holds it: (seq, hash); (0, "") before the first entry.
pub fn head(conn: &Connection, node: u64) -> rusqlite::Result<(u64, String)> {
    Ok(conn
        .prepare_cached("SELECT seq, hash FROM sync_heads WHERE node = ?1")?
        .query_row([node as i64], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
        })
        .optional()?
        .unwrap_or((0, String::new())))
}

/// Every journal head: (node, site, seq, hash).
pub fn heads(conn: &Connection) -> rusqlite::Result<Vec<(u64, String, u64, String)>> {
    let mut stmt = conn.prepare("SELECT node, site, seq, hash FROM sync_heads ORDER BY node")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)? as u64,
            r.get(1)?,
            r.get::<_, i64>(2)? as u64,
            r.get(3)?,
        ))
    })?;
    rows.collect()
}

/// Open sync-conflict Tasks by kind (status not completed, cancelled, rejected or failed).
pub fn open_tasks(conn: &Connection) -> rusqlite::Result<Vec<(String, u64)>> {
    let mut stmt = conn.prepare(
        "SELECT c.v, COUNT(*) FROM idx c JOIN resources r ON r.rid = c.rid
         WHERE c.rtype = 'Task' AND c.param = 'code' AND c.s = ?1 AND r.deleted = 0
           AND NOT EXISTS (SELECT 1 FROM idx st WHERE st.rid = r.rid AND st.param = 'status'
                           AND st.v IN ('completed', 'cancelled', 'rejected', 'failed'))
         GROUP BY c.v ORDER BY c.v",
    )?;
    let rows = stmt.query_map([SYNC_CONFLICT_SYSTEM], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(base: Value, ours: Value, theirs: Value, expect: Result<Value, Vec<&str>>) {
        let got = merge3(&base, &ours, &theirs);
        let expect = expect.map_err(|v| v.into_iter().map(String::from).collect::<Vec<_>>());
        assert_eq!(got, expect);
    }

    fn p(telecom: Value, extra: Value) -> Value {
        let mut v = json!({"resourceType": "Patient", "id": "a", "meta": {"versionId": "1"}, "telecom": telecom});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    }

    #[test]
    fn merge_takes_each_side_s_own_fields_and_refuses_the_same_field() {
        let phone = |n: &str| json!({"system": "phone", "use": "home", "value": n});
        let mobile = |n: &str| json!({"system": "phone", "use": "mobile", "value": n});
        let email = |n: &str| json!({"system": "email", "value": n});
        // Only ours changed: ours wins.
        check(
            p(json!([phone("1")]), json!({})),
            p(json!([phone("2")]), json!({})),
            p(json!([phone("1")]), json!({})),
            Ok(p(json!([phone("2")]), json!({}))),
        );
        // Different telecom groups: both kept, theirs' order.
        check(
            p(json!([phone("1"), email("a@x")]), json!({})),
            p(json!([phone("2"), email("a@x")]), json!({})),
            p(json!([phone("1"), email("b@x")]), json!({})),
            Ok(p(json!([phone("2"), email("b@x")]), json!({}))),
        );
        // A new group only ours added goes at the end.
        check(
            p(json!([phone("1")]), json!({})),
            p(json!([phone("1"), mobile("7")]), json!({})),
            p(json!([phone("1")]), json!({"gender": "female"})),
            Ok(p(json!([phone("1"), mobile("7")]), json!({"gender": "female"}))),
        );
        // The same field changed to different values: a conflict, named.
        check(
            p(json!([phone("1")]), json!({})),
            p(json!([phone("2")]), json!({})),
            p(json!([phone("3")]), json!({})),
            Err(vec!["telecom(phone,home)"]),
        );
        // The same change on both sides is no conflict.
        check(
            p(json!([phone("1")]), json!({})),
            p(json!([phone("2")]), json!({})),
            p(json!([phone("2")]), json!({})),
            Ok(p(json!([phone("2")]), json!({}))),
        );
        // Ours removed a field theirs did not touch.
        check(
            p(json!([phone("1")]), json!({"gender": "male"})),
            p(json!([phone("1")]), json!({})),
            p(
                json!([phone("1")]),
                json!({"gender": "male", "birthDate": "2000-01-01"}),
            ),
            Ok(p(json!([phone("1")]), json!({"birthDate": "2000-01-01"}))),
        );
    }

    #[test]
    fn classify_by_write() {
        let create = |rt: &str, r: Value| WriteOp::Create {
            rtype: rt.into(),
            id: "x".into(),
            resource: r,
            if_none_exist: None,
        };
        let update = |rt: &str, r: Value| WriteOp::Update {
            rtype: rt.into(),
            id: "x".into(),
            resource: r,
            if_match: None,
        };
        let appt = |s: &str| json!({"resourceType": "Appointment", "status": s, "slot": [{"reference": "Slot/1"}]});
        let cases: Vec<(WriteOp, Option<Value>, Result<Policy, ()>)> = vec![
            (create("Observation", json!({})), None, Ok(Policy::Append)),
            (create("DocumentReference", json!({})), None, Ok(Policy::Append)),
            (create("Patient", json!({})), None, Ok(Policy::NewPatient)),
            (create("Appointment", appt("booked")), None, Ok(Policy::Booking)),
            (create("Slot", json!({})), None, Err(())),
            (create("Communication", json!({})), None, Err(())),
            (
                WriteOp::Delete {
                    rtype: "Observation".into(),
                    id: "x".into(),
                },
                None,
                Err(()),
            ),
            (update("Patient", json!({})), Some(json!({})), Ok(Policy::Demographics)),
            (update("Patient", json!({})), None, Err(())),
            (
                update("Appointment", appt("arrived")),
                Some(appt("booked")),
                Ok(Policy::SiteStatus),
            ),
            (
                update("Appointment", appt("cancelled")),
                Some(appt("booked")),
                Ok(Policy::Amend),
            ),
            (update("Schedule", json!({})), Some(json!({})), Err(())),
        ];
        for (op, cur, expect) in cases {
            let got = classify(&op, cur.as_ref()).map_err(|_| ());
            assert_eq!(got, expect, "{op:?}");
        }
    }
}
