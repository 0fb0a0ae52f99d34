//! Apply for replayed site-journal entries (`CommandKind::Replay`): exactly
//! once per `(node, seq)`, in chain order, each ending as a committed write or
//! a Task. The rules are in [`crate::sync`]; this is where they meet the store.
//!
//! Like the rest of apply it reads nothing but the command and the database.

use super::{load_current, Cx, Written};
use crate::command::{Policy, Replay, WriteOp};
use crate::query;
use crate::sync::{self, Committed, ConflictKind, Outcome, Receipt, SYNC_CONFLICT_SYSTEM};
use hale_fhir::codes::{NHS_NUMBER_SYSTEM, TAG_SYSTEM};
use hale_fhir::date::format_instant_ms;
use hale_fhir::IssueCode;
use rusqlite::params;
use serde_json::{json, Value};

/// Task statuses that end a piece of work.
const TASK_DONE: &[&str] = &["completed", "cancelled", "rejected", "failed"];

fn committed(w: &Written) -> Committed {
    Committed {
        rtype: w.rtype.clone(),
        id: w.id.clone(),
        version: w.version,
    }
}

fn parse(json: &str) -> Value {
    serde_json::from_str(json).expect("stored JSON is valid")
}

impl<'a> Cx<'a> {
    /// One journal entry, at most once.
    pub(super) fn replay(&mut self, e: &'a Replay) -> rusqlite::Result<Receipt> {
        let refused = |reason: String| Receipt {
            node: e.node,
            seq: e.seq,
            index: 0,
            outcome: Outcome::Refused { reason },
            duplicate: false,
        };
        let (head_seq, head_hash) = sync::head(self.conn, e.node)?;
        if e.seq <= head_seq {
            return Ok(match sync::receipt(self.conn, e.node, e.seq)? {
                Some(r) => r,
                None => refused(format!(
                    "entry {} of node {} is at or below the applied head {head_seq} but has no receipt",
                    e.seq, e.node
                )),
            });
        }
        if e.seq != head_seq + 1 {
            return Ok(refused(format!(
                "gap: node {} sent entry {} but the last applied is {head_seq}; entries {}..{} are missing",
                e.node,
                e.seq,
                head_seq + 1,
                e.seq - 1
            )));
        }
        if e.prev_hash != head_hash {
            return Ok(refused(format!(
                "broken chain: entry {} of node {} follows hash '{}' but the applied head's hash is '{head_hash}'",
                e.seq, e.node, e.prev_hash
            )));
        }
        if e.compute_hash() != e.hash {
            return Ok(refused(format!(
                "entry {} of node {} does not match its own hash: it was changed after it was journalled",
                e.seq, e.node
            )));
        }
        let outer = self.actor;
        self.actor = &e.actor;
        self.replay_site = Some(&e.site);
        self.savepoint("replay")?;
        let decided = self.decide(e);
        self.actor = outer;
        self.replay_site = None;
        let outcome = match decided {
            Ok(o) => o,
            Err(err) => {
                self.rollback_to("replay")?;
                return Err(err);
            }
        };
        let text = serde_json::to_string(&outcome).expect("an outcome always serialises");
        self.conn
            .prepare_cached("INSERT INTO sync_receipts(node, seq, log_index, outcome) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![e.node as i64, e.seq as i64, self.index as i64, text])?;
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO sync_heads(node, site, seq, hash) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![e.node as i64, e.site, e.seq as i64, e.hash])?;
        self.release("replay")?;
        Ok(Receipt {
            node: e.node,
            seq: e.seq,
            index: self.index,
            outcome,
            duplicate: false,
        })
    }

    fn decide(&mut self, e: &'a Replay) -> rusqlite::Result<Outcome> {
        let mut base_version = e.base.version;
        if let Some(p) = e.base.pending_seq {
            match sync::receipt(self.conn, e.node, p)?.map(|r| r.outcome) {
                Some(Outcome::Committed { write }) if write.rtype == e.op.rtype() && write.id == e.op.id() => {
                    base_version = Some(write.version)
                }
                Some(Outcome::Task { task, kind, write }) => {
                    // Built on an offline change that is waiting for review: it waits too.
                    let built_on_write = write.filter(|w| w.rtype == e.op.rtype() && w.id == e.op.id());
                    if let (Policy::Demographics, Some(w)) = (e.policy, &built_on_write) {
                        base_version = Some(w.version);
                    } else {
                        return self.raise(
                            e,
                            kind,
                            None,
                            Some(&task),
                            format!(
                                "Held: this offline change was made on top of another offline change that is waiting for review (Task/{task})"
                            ),
                        );
                    }
                }
                _ => {}
            }
        }
        match e.policy {
            Policy::Append | Policy::NewPatient | Policy::Booking => self.replay_create(e),
            Policy::Demographics | Policy::SiteStatus | Policy::Amend => self.replay_update(e, base_version),
        }
    }

    fn replay_create(&mut self, e: &'a Replay) -> rusqlite::Result<Outcome> {
        let WriteOp::Create {
            rtype, id, resource, ..
        } = &e.op
        else {
            return self.raise(e, ConflictKind::Rejected, None, None, "not a create".into());
        };
        // Already there: a forward whose answer was lost did commit.
        if let Some(cur) = load_current(self.conn, rtype, id)?.filter(|c| !c.deleted) {
            if sync::same_content(&parse(&cur.json), resource) {
                return Ok(Outcome::Committed {
                    write: Committed {
                        rtype: rtype.clone(),
                        id: id.clone(),
                        version: cur.version,
                    },
                });
            }
        }
        let rej = match self.apply_one(&e.op, 0)? {
            Ok(w) => {
                self.provenance(e, &w)?;
                return Ok(Outcome::Committed { write: committed(&w) });
            }
            Err(r) => r,
        };
        let code = rej.issues.first().map(|i| i.code);
        let why = rej.issues.first().map(|i| i.diagnostics.clone()).unwrap_or_default();
        match (e.policy, code) {
            (Policy::NewPatient, Some(IssueCode::Duplicate)) => {
                let holders = self.nhs_holders(id, resource)?;
                let mut r = resource.clone();
                for ident in r
                    .get_mut("identifier")
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    if ident.get("system").and_then(Value::as_str) == Some(NHS_NUMBER_SYSTEM) {
                        ident["system"] = json!(sync::UNVERIFIED_NHS_NUMBER_SYSTEM);
                    }
                }
                let op = WriteOp::Create {
                    rtype: rtype.clone(),
                    id: id.clone(),
                    resource: r,
                    if_none_exist: None,
                };
                match self.apply_one(&op, 0)? {
                    Ok(w) => {
                        self.provenance(e, &w)?;
                        let others = holders
                            .iter()
                            .map(|h| format!("Patient/{h}"))
                            .collect::<Vec<_>>()
                            .join(", ");
                        self.raise(
                            e,
                            ConflictKind::PossibleDuplicate,
                            Some(&w),
                            None,
                            format!(
                                "Registered at {} while cut off with an NHS number that {} also holds. The number is kept as unverified on Patient/{}; check whether they are the same person and merge or correct",
                                e.site, others, w.id
                            ),
                        )
                    }
                    Err(r2) => self.raise(e, ConflictKind::Rejected, None, None, first_diag(&r2)),
                }
            }
            (Policy::Booking, Some(IssueCode::Conflict)) => {
                let mut r = resource.clone();
                r["status"] = json!("waitlist");
                if let Some(o) = r.as_object_mut() {
                    o.shift_remove("slot");
                }
                let op = WriteOp::Create {
                    rtype: rtype.clone(),
                    id: id.clone(),
                    resource: r,
                    if_none_exist: None,
                };
                match self.apply_one(&op, 0)? {
                    Ok(w) => {
                        self.provenance(e, &w)?;
                        self.raise(
                            e,
                            ConflictKind::SlotTaken,
                            Some(&w),
                            None,
                            format!("Booked at {} while cut off, but {why}. The appointment is on the waitlist: offer the patient another slot", e.site),
                        )
                    }
                    Err(r2) => self.raise(e, ConflictKind::Rejected, None, None, first_diag(&r2)),
                }
            }
            (_, Some(IssueCode::NotFound)) => self.raise(
                e,
                ConflictKind::ReferenceMissing,
                None,
                None,
                format!("Written at {} while cut off, but not saved: {why}", e.site),
            ),
            _ => self.raise(
                e,
                ConflictKind::Rejected,
                None,
                None,
                format!("Written at {} while cut off, but refused: {why}", e.site),
            ),
        }
    }

    fn replay_update(&mut self, e: &'a Replay, base_version: Option<u64>) -> rusqlite::Result<Outcome> {
        let WriteOp::Update {
            rtype, id, resource, ..
        } = &e.op
        else {
            return self.raise(e, ConflictKind::Rejected, None, None, "not an update".into());
        };
        let Some(cur) = load_current(self.conn, rtype, id)?.filter(|c| !c.deleted) else {
            return self.raise(
                e,
                ConflictKind::ReferenceMissing,
                None,
                None,
                format!("Changed at {} while cut off, but {rtype}/{id} no longer exists", e.site),
            );
        };
        let cur_json = parse(&cur.json);
        if sync::same_content(&cur_json, resource) {
            return Ok(Outcome::Committed {
                write: Committed {
                    rtype: rtype.clone(),
                    id: id.clone(),
                    version: cur.version,
                },
            });
        }
        let update = |r: Value| WriteOp::Update {
            rtype: rtype.clone(),
            id: id.clone(),
            resource: r,
            if_match: Some(cur.version),
        };
        // Demographics always merge against what the user saw, so a change made
        // on top of an earlier offline change never undoes what that one merged in.
        let merge_always = e.policy == Policy::Demographics && e.base.seen.is_some();
        if base_version == Some(cur.version) && !merge_always {
            return match self.apply_one(&update(resource.clone()), 0)? {
                Ok(w) => {
                    self.provenance(e, &w)?;
                    Ok(Outcome::Committed { write: committed(&w) })
                }
                Err(r) => {
                    let kind = match r.issues.first().map(|i| i.code) {
                        Some(IssueCode::Conflict) if rtype == "Appointment" => ConflictKind::SlotTaken,
                        Some(IssueCode::NotFound) => ConflictKind::ReferenceMissing,
                        _ => ConflictKind::Rejected,
                    };
                    self.raise(
                        e,
                        kind,
                        None,
                        None,
                        format!("Changed at {} while cut off, but refused: {}", e.site, first_diag(&r)),
                    )
                }
            };
        }
        let seen = base_version
            .map(|v| format!("version {v}"))
            .unwrap_or_else(|| "an unknown version".into());
        match e.policy {
            Policy::Demographics => {
                let base_json = match (&e.base.seen, base_version) {
                    (Some(seen), _) => Some(seen.clone()),
                    (None, Some(v)) => query::vread(self.conn, rtype, id, v)?
                        .and_then(|f| f.json)
                        .map(|j| parse(&j)),
                    (None, None) => None,
                };
                let Some(base_json) = base_json else {
                    return self.raise(
                        e,
                        ConflictKind::FieldConflict,
                        None,
                        None,
                        format!(
                            "Changed at {} while cut off from {seen}, which cannot be found to merge against",
                            e.site
                        ),
                    );
                };
                match sync::merge3(&base_json, resource, &cur_json) {
                    Ok(merged) => match self.apply_one(&update(merged), 0)? {
                        Ok(w) => {
                            self.provenance(e, &w)?;
                            Ok(Outcome::Committed { write: committed(&w) })
                        }
                        Err(r) => self.raise(e, ConflictKind::Rejected, None, None, first_diag(&r)),
                    },
                    Err(fields) => self.raise(
                        e,
                        ConflictKind::FieldConflict,
                        None,
                        None,
                        format!(
                            "Changed at {} while cut off from {seen}, but {} changed centrally too (now version {}). The central value is kept; the offline version is attached: decide which is right",
                            e.site,
                            fields.join(", "),
                            cur.version
                        ),
                    ),
                }
            }
            Policy::SiteStatus => {
                let status = resource.get("status").cloned().unwrap_or(Value::Null);
                let was = cur_json.get("status").and_then(Value::as_str).unwrap_or("").to_string();
                let mut r = cur_json.clone();
                r["status"] = status.clone();
                match self.apply_one(&update(r), 0)? {
                    Ok(w) => {
                        self.provenance(e, &w)?;
                        self.raise(
                            e,
                            ConflictKind::StatusDiverged,
                            Some(&w),
                            None,
                            format!(
                                "{status} was recorded at {} while cut off, after {rtype}/{id} had changed centrally (it was '{was}'). The recorded status is applied; check the central change",
                                e.site
                            ),
                        )
                    }
                    Err(r) => self.raise(
                        e,
                        ConflictKind::StatusDiverged,
                        None,
                        None,
                        format!(
                            "{status} was recorded at {} while cut off, but {rtype}/{id} had changed centrally to '{was}' and the status cannot be applied: {}",
                            e.site,
                            first_diag(&r)
                        ),
                    ),
                }
            }
            _ => {
                let kind = if rtype == "Appointment" {
                    ConflictKind::StatusDiverged
                } else {
                    ConflictKind::FieldConflict
                };
                self.raise(
                    e,
                    kind,
                    None,
                    None,
                    format!(
                        "Changed at {} while cut off from {seen}, but {rtype}/{id} changed centrally meanwhile (now version {}). Nothing was applied; the offline version is attached",
                        e.site, cur.version
                    ),
                )
            }
        }
    }

    /// The other live Patients holding an NHS number of `patient`.
    fn nhs_holders(&self, id: &str, patient: &Value) -> rusqlite::Result<Vec<String>> {
        let mut out = Vec::new();
        for ident in patient
            .get("identifier")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if ident.get("system").and_then(Value::as_str) != Some(NHS_NUMBER_SYSTEM) {
                continue;
            }
            let Some(value) = ident.get("value").and_then(Value::as_str) else {
                continue;
            };
            let value = hale_fhir::nhs::normalise(value);
            let mut stmt = self.conn.prepare_cached(
                "SELECT r.id FROM idx x JOIN resources r ON r.rid = x.rid
                 WHERE x.rtype = 'Patient' AND x.param = 'identifier' AND x.v = ?1 AND x.s = ?2
                   AND r.id != ?3 AND r.deleted = 0 ORDER BY r.id",
            )?;
            let rows = stmt.query_map(params![value, NHS_NUMBER_SYSTEM, id], |r| r.get::<_, String>(0))?;
            for r in rows {
                out.push(r?);
            }
        }
        Ok(out)
    }

    fn live(&self, rtype: &str, id: &str) -> rusqlite::Result<bool> {
        Ok(load_current(self.conn, rtype, id)?.is_some_and(|c| !c.deleted))
    }

    /// A Provenance for a replayed write: when the site recorded it, who, on which node.
    fn provenance(&mut self, e: &Replay, w: &Written) -> rusqlite::Result<()> {
        let id = format!("sync-{}-{}", e.node, e.seq);
        let mut p = json!({
            "resourceType": "Provenance",
            "target": [{"reference": format!("{}/{}/_history/{}", w.rtype, w.id, w.version)}],
            "recorded": format_instant_ms(e.recorded_ms),
            "activity": {"text": format!("written at {} while cut off from the data centres; journal entry {} of node {}", e.site, e.seq, e.node)},
            "agent": [
                {
                    "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "author"}]},
                    "who": {"identifier": {"system": "https://hale.health/fhir/Id/user", "value": e.actor.user}, "display": e.actor.user}
                },
                {
                    "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "custodian"}]},
                    "who": {"identifier": {"system": "https://hale.health/fhir/Id/node", "value": e.node.to_string()}, "display": format!("Hale node {} at {}", e.node, e.site)}
                }
            ]
        });
        sync::tag_offline(&mut p, &e.site);
        let op = WriteOp::Create {
            rtype: "Provenance".into(),
            id,
            resource: p,
            if_none_exist: None,
        };
        // A Provenance that cannot be written (it never should) is no reason to lose the write.
        let _ = self.apply_one(&op, 0)?;
        Ok(())
    }

    /// Raise a Task for staff, and flag the patient's record.
    fn raise(
        &mut self,
        e: &Replay,
        kind: ConflictKind,
        write: Option<&Written>,
        part_of: Option<&str>,
        description: String,
    ) -> rusqlite::Result<Outcome> {
        let task_id = format!("sync-{}-{}", e.node, e.seq);
        let rtype = e.op.rtype();
        let resource = match &e.op {
            WriteOp::Create { resource, .. } | WriteOp::Update { resource, .. } => resource.clone(),
            WriteOp::Delete { .. } => Value::Null,
        };
        // Who it is about: the written resource, the Patient itself, or the one referred to.
        let mut patient = None;
        if rtype == "Patient" {
            let pid = write.map(|w| w.id.as_str()).unwrap_or(e.op.id());
            if self.live("Patient", pid)? {
                patient = Some(pid.to_string());
            }
        } else if let Some(r) = super::first_patient_ref(&resource) {
            if let Some((_, pid)) = super::split_local_ref(&r) {
                if self.live("Patient", pid)? {
                    patient = Some(pid.to_string());
                }
            }
        }
        let focus = match write {
            Some(w) => Some(format!("{}/{}", w.rtype, w.id)),
            None if self.live(rtype, e.op.id())? => Some(format!("{rtype}/{}", e.op.id())),
            None => None,
        };
        let mut offline = resource.clone();
        if let Some(o) = offline.as_object_mut() {
            o.shift_remove("meta");
        }
        let mut input = vec![json!({
            "type": {"text": "offline-version"},
            "valueString": serde_json::to_string(&offline).expect("JSON serialises")
        })];
        if let (Some(v), true) = (e.base.version, self.live(rtype, e.op.id())?) {
            input.push(json!({
                "type": {"text": "base-version"},
                "valueReference": {"reference": format!("{rtype}/{}/_history/{v}", e.op.id())}
            }));
        }
        input.push(json!({"type": {"text": "journal-entry"}, "valueString": format!("node {} seq {}", e.node, e.seq)}));
        let mut task = json!({
            "resourceType": "Task",
            "status": "requested",
            "intent": "order",
            "priority": "routine",
            "code": {"coding": [{"system": SYNC_CONFLICT_SYSTEM, "code": kind.code(), "display": kind.display()}]},
            "description": description,
            "authoredOn": format_instant_ms(self.time_ms),
            "owner": {"identifier": {"system": "https://hale.health/fhir/Id/site", "value": e.site}, "display": e.site},
            "input": input
        });
        if let Some(f) = &focus {
            task["focus"] = json!({"reference": f});
        }
        if let Some(p) = &patient {
            task["for"] = json!({"reference": format!("Patient/{p}")});
        }
        if let Some(parent) = part_of {
            task["partOf"] = json!([{"reference": format!("Task/{parent}")}]);
        }
        if let Some(w) = write {
            task["output"] = json!([{
                "type": {"text": "committed-version"},
                "valueReference": {"reference": format!("{}/{}/_history/{}", w.rtype, w.id, w.version)}
            }]);
        }
        sync::tag_offline(&mut task, &e.site);
        let op = WriteOp::Create {
            rtype: "Task".into(),
            id: task_id.clone(),
            resource: task,
            if_none_exist: None,
        };
        if let Err(r) = self.apply_one(&op, 0)? {
            // Every input above was checked to exist; a refusal here is a bug.
            panic!("the sync-conflict Task {task_id} was refused: {:?}", r.issues);
        }
        if let Some(p) = patient {
            self.flag_review(&p, &e.site)?;
        }
        Ok(Outcome::Task {
            kind,
            task: task_id,
            write: write.map(committed),
        })
    }

    /// The patient's "unreviewed offline changes" Flag, made active.
    fn flag_review(&mut self, patient: &str, site: &str) -> rusqlite::Result<()> {
        let id = format!("sync-review-{patient}");
        let cur = load_current(self.conn, "Flag", &id)?.filter(|c| !c.deleted);
        if cur.as_ref().is_some_and(|c| parse(&c.json)["status"] == "active") {
            return Ok(());
        }
        let mut flag = flag_json(&id, patient, "active");
        sync::tag_offline(&mut flag, site);
        let op = WriteOp::Update {
            rtype: "Flag".into(),
            id,
            resource: flag,
            if_match: None,
        };
        let _ = self.apply_one(&op, 0)?;
        Ok(())
    }

    /// After a Task is written: when it closes the last open sync conflict of
    /// its patient, the patient's review Flag becomes inactive.
    pub(super) fn after_task_write(&mut self, task: &Value) -> Result<(), super::OpError> {
        let is_sync = task
            .pointer("/code/coding")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|c| c.get("system").and_then(Value::as_str) == Some(SYNC_CONFLICT_SYSTEM));
        let done = TASK_DONE.contains(&task.get("status").and_then(Value::as_str).unwrap_or(""));
        if !is_sync || !done {
            return Ok(());
        }
        let Some(patient) = task
            .pointer("/for/reference")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("Patient/"))
        else {
            return Ok(());
        };
        let open: i64 = self
            .conn
            .prepare_cached(
                "SELECT COUNT(*) FROM refs f JOIN resources r ON r.rid = f.rid
                 WHERE f.dst_type = 'Patient' AND f.dst_id = ?1 AND r.rtype = 'Task' AND r.deleted = 0
                   AND EXISTS (SELECT 1 FROM idx c WHERE c.rid = r.rid AND c.param = 'code' AND c.s = ?2)
                   AND NOT EXISTS (SELECT 1 FROM idx st WHERE st.rid = r.rid AND st.param = 'status'
                                   AND st.v IN ('completed', 'cancelled', 'rejected', 'failed'))",
            )?
            .query_row(params![patient, SYNC_CONFLICT_SYSTEM], |r| r.get(0))?;
        if open > 0 {
            return Ok(());
        }
        let id = format!("sync-review-{patient}");
        let Some(cur) = load_current(self.conn, "Flag", &id)?.filter(|c| !c.deleted) else {
            return Ok(());
        };
        let mut flag = parse(&cur.json);
        if flag["status"] == "inactive" {
            return Ok(());
        }
        flag["status"] = json!("inactive");
        self.system_put(hale_fhir::ResourceType::Flag, &id, flag, cur)
    }
}

fn flag_json(id: &str, patient: &str, status: &str) -> Value {
    json!({
        "resourceType": "Flag",
        "id": id,
        "status": status,
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/flag-category", "code": "admin", "display": "Administrative"}]}],
        "code": {
            "coding": [{"system": SYNC_CONFLICT_SYSTEM, "code": sync::UNREVIEWED_OFFLINE_CHANGES, "display": "Record has unreviewed offline changes"}],
            "text": "Record has unreviewed offline changes: see the sync tasks"
        },
        "subject": {"reference": format!("Patient/{patient}")},
        "meta": {"tag": [{"system": TAG_SYSTEM, "code": sync::TAG_OFFLINE_WRITE}]}
    })
}

fn first_diag(r: &crate::Rejection) -> String {
    r.issues
        .first()
        .map(|i| i.diagnostics.clone())
        .unwrap_or_else(|| "refused".into())
}
