//! Patient-level access: the legitimate relationship (LR) a clinician needs to
//! see a patient's clinical record, break-glass (BTG) when there is none, and
//! the `patient/` launch context that limits a SMART patient token to one
//! patient's compartment.
//!
//! DESIGN (see ARCHITECTURE.md "Patient-level access"):
//! - **Who is gated.** A principal with a patient context (`Principal.patient`)
//!   sees that patient's compartment and its own Patient, nothing else. A
//!   clinician (when `[access] legitimate_relationship` is on, the default)
//!   sees a clinical resource (a type [`ResourceType::is_clinical`]: what a
//!   clerk may never see) only for patients with whom they have an LR or a
//!   running break-glass episode. Demographics, bookings and messages stay
//!   open to clinicians as they are to clerks: finding a patient and booking
//!   are not reading the record. Admin, service (system integrations, bulk
//!   export) and privacy-officer roles are not gated: their type rules already
//!   keep them to what their job needs, and everything they read is audited.
//! - **LR.** An Appointment (not cancelled or entered in error) or an
//!   Encounter of the patient, dated within `relationship_days` before or
//!   after now, at a Location (or Organization) of the user's site; or a
//!   CareTeam of the patient (not inactive or entered in error) whose
//!   `participant.member` names the user: by identifier (system
//!   `https://hale.health/fhir/Id/user`, value the user name) on the
//!   reference itself or on the Practitioner it points at. A place is at a
//!   site when its id is the site or its `site` extension has the site code.
//!   The user's site: the token's, else `[access] site`, else the node's own
//!   `--site` (so a UI session at a hospital's replica works at that
//!   hospital).
//! - **Every path.** A resource is checked where it leaves the server: read,
//!   vread, history, search matches and includes, `$everything`, batch and
//!   transaction entries, and before every write (the resource written and
//!   the version it replaces). A search bound to one patient the user may not
//!   see is refused (403); any other search drops what the user may not see
//!   and says so in an OperationOutcome entry (`suppressed`, details
//!   v3-ActReason#BTG), without a total. A search that filters by clinical
//!   content (a chain or `_has` into a clinical type) is gated on its results'
//!   patients as if they were clinical.
//! - **Break-glass** is an audit row (see `hale_store::audit` "Break-glass
//!   episodes"): written through the read-audit sink, so it is committed
//!   through the log, or at a cut-off site spooled to disk and committed
//!   exactly once after healing. This node also keeps the episodes it started
//!   in memory until they end, so one started while cut off works at once.
//!   Each access it allows is audited with purpose BTG and the reason.

use crate::auth::Principal;
use crate::config::Role;
use crate::rest::{query_pairs, Ctx};
use crate::wire::{self, json_response, BundleWriter, FhirError};
use crate::{now_ms, App};
use axum::http::StatusCode;
use axum::response::Response;
use hale_fhir::search::{parse_query, patient_compartment, Facet, IndexValue, Predicate, SearchQuery};
use hale_fhir::{Issue, IssueCode, ResourceType};
use hale_store::audit::{self as store_audit, BreakGlass, BTG};
use hale_store::query::{self, Current, Found};
use hale_store::{AuditAction, AuditRecord, CommandKind, WriteOp};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Mutex;

/// A break-glass reason has at least this many characters (trimmed)...
pub const REASON_CHARS_MIN: usize = 10;
/// ...and at most this many.
pub const REASON_CHARS_MAX: usize = 500;
/// Appointments (and Encounters, and CareTeams) looked at per patient when
/// deciding an LR; the newest first.
pub const RELATIONSHIP_SCAN_MAX: usize = 200;
/// A break-glass episode lasts at most this long, whatever the config says.
pub const BREAK_GLASS_HOURS_MAX: u32 = 72;
/// Episodes this node started and keeps in memory at most.
pub const LOCAL_EPISODES_MAX: usize = 10_000;
const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;

/// `[access]`: patient-level access.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessSettings {
    /// Clinicians read a patient's clinical record only with a legitimate
    /// relationship or by breaking the glass. On by default.
    pub legitimate_relationship: bool,
    /// An appointment or encounter this many days before or after now makes an LR.
    pub relationship_days: u32,
    /// How long a break-glass episode lasts.
    pub break_glass_hours: u32,
    /// The site assumed for users whose token or account names none (web UI
    /// sessions, static tokens without `site`); default: the node's `--site`.
    pub site: Option<String>,
}

impl Default for AccessSettings {
    fn default() -> Self {
        AccessSettings {
            legitimate_relationship: true,
            relationship_days: 30,
            break_glass_hours: 4,
            site: None,
        }
    }
}

/// A break-glass episode this node started (kept until it ends, so it works
/// before its audit row is applied here, e.g. at a cut-off site).
#[derive(Debug, Clone)]
pub struct Episode {
    pub user: String,
    pub patient: String,
    pub start_ms: i64,
    pub until_ms: i64,
    pub reason: String,
}

/// Node-wide patient-level access state.
#[derive(Default)]
pub struct Access {
    local: Mutex<Vec<Episode>>,
}

impl Access {
    fn remember(&self, e: Episode) {
        let mut l = self.local.lock().expect("episodes lock");
        let now = now_ms();
        l.retain(|x| x.until_ms > now);
        if l.len() >= LOCAL_EPISODES_MAX {
            l.remove(0);
        }
        l.push(e);
    }

    fn running(&self, user: &str, patient: &str, now: i64) -> Option<Episode> {
        self.local
            .lock()
            .expect("episodes lock")
            .iter()
            .rev()
            .find(|e| e.user == user && e.patient == patient && e.start_ms <= now && now < e.until_ms)
            .cloned()
    }
}

/// Why a principal may see a patient's clinical record.
#[derive(Debug, Clone)]
enum Grant {
    Relationship,
    BreakGlass { reason: String },
    No,
}

/// Per-request decisions (each patient is decided once per request) and the
/// patients whose data this request showed under break-glass.
#[derive(Default)]
pub struct Gate {
    decided: Mutex<HashMap<String, Grant>>,
    places: Mutex<HashMap<String, bool>>,
    btg_shown: Mutex<Vec<(String, String)>>,
}

/// How the request's principal is gated.
enum Mode<'p> {
    Open,
    PatientContext(&'p str),
    Clinician,
}

/// The patients a resource belongs to: itself for a Patient, else the
/// Patients its compartment parameters refer to (the official definition).
pub fn patients_of(rt: ResourceType, id: &str, resource: &Value) -> Vec<String> {
    if rt == ResourceType::Patient {
        return vec![id.to_string()];
    }
    let params = patient_compartment(rt);
    if params.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<String> = hale_fhir::search::extract_index(rt, resource)
        .into_iter()
        .filter(|e| e.facet == Facet::Value && params.contains(&e.param))
        .filter_map(|e| match e.value {
            IndexValue::Reference { rtype, id } if rtype == "Patient" => Some(id),
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

fn patients_of_found(f: &Found) -> Vec<String> {
    let Ok(rt) = f.rtype.parse::<ResourceType>() else {
        return Vec::new();
    };
    if rt == ResourceType::Patient {
        return vec![f.id.clone()];
    }
    match f.json.as_deref().map(serde_json::from_str::<Value>) {
        Some(Ok(v)) => patients_of(rt, &f.id, &v),
        _ => Vec::new(),
    }
}

/// The 403 that offers break-glass.
fn refusal(p: &Principal, patient: &str, site: Option<&str>, days: u32) -> FhirError {
    let place = match site {
        Some(s) => format!("no appointment or encounter at site {s} within {days} days"),
        None => "no site is known for this user, so no appointment or encounter counts".to_string(),
    };
    FhirError::new(
        StatusCode::FORBIDDEN,
        IssueCode::Suppressed,
        format!(
            "user '{}' has no legitimate relationship with Patient/{patient} ({place}, and not a member of the patient's care team). \
             To open the record in an emergency, break the glass: POST Patient/{patient}/$break-glass with a Parameters resource \
             whose 'reason' (at least {REASON_CHARS_MIN} characters) says why. Every access is then audited and reviewed by a privacy officer",
            p.user
        ),
    )
}

fn context_refusal(own: &str, what: &str) -> FhirError {
    FhirError::new(
        StatusCode::FORBIDDEN,
        IssueCode::Forbidden,
        format!("this token is for Patient/{own} and may not see {what}"),
    )
}

impl Ctx<'_> {
    fn mode(&self) -> Mode<'_> {
        if let Some(own) = self.principal.patient.as_deref() {
            return Mode::PatientContext(own);
        }
        if self.principal.role == Role::Clinician && self.app.cfg.access.legitimate_relationship {
            Mode::Clinician
        } else {
            Mode::Open
        }
    }

    /// The user's site: the principal's, else `[access] site`, else the node's.
    pub(crate) fn user_site(&self) -> Option<String> {
        site_of(self.app, self.principal)
    }

    /// May the principal see `patient`'s clinical record? Err is the refusal.
    pub(crate) fn patient_allowed(&self, patient: &str) -> Result<(), FhirError> {
        match self.mode() {
            Mode::Open => Ok(()),
            Mode::PatientContext(own) if own == patient => Ok(()),
            Mode::PatientContext(own) => Err(context_refusal(own, &format!("Patient/{patient}'s record"))),
            Mode::Clinician => match self.grant(patient)? {
                Grant::Relationship => Ok(()),
                Grant::BreakGlass { reason } => {
                    let mut shown = self.gate.btg_shown.lock().expect("gate lock");
                    if !shown.iter().any(|(p, _)| p == patient) {
                        shown.push((patient.to_string(), reason));
                    }
                    Ok(())
                }
                Grant::No => Err(refusal(
                    self.principal,
                    patient,
                    self.user_site().as_deref(),
                    self.app.cfg.access.relationship_days,
                )),
            },
        }
    }

    /// May the principal see this resource (type `rt`, belonging to `patients`)?
    fn resource_allowed(&self, rt: ResourceType, id: &str, patients: &[String], gated: bool) -> Result<(), FhirError> {
        match self.mode() {
            Mode::Open => Ok(()),
            Mode::PatientContext(own) => {
                let ok = if rt == ResourceType::Patient {
                    id == own
                } else {
                    !patients.is_empty() && patients.iter().all(|p| p == own)
                };
                if ok {
                    Ok(())
                } else {
                    Err(context_refusal(own, &format!("{rt}/{id}")))
                }
            }
            Mode::Clinician => {
                if !(gated || rt.is_clinical()) {
                    return Ok(());
                }
                for p in patients {
                    self.patient_allowed(p)?;
                }
                Ok(())
            }
        }
    }

    /// Check one stored resource about to be shown; audits a refusal.
    pub(crate) async fn check_shown(&self, rt: ResourceType, id: &str, json: &str) -> Result<(), FhirError> {
        if matches!(self.mode(), Mode::Open) {
            return Ok(());
        }
        let patients = if rt == ResourceType::Patient {
            vec![id.to_string()]
        } else {
            match serde_json::from_str::<Value>(json) {
                Ok(v) => patients_of(rt, id, &v),
                Err(_) => Vec::new(),
            }
        };
        self.check_patients(rt, Some(id), &patients, false).await
    }

    async fn check_patients(
        &self,
        rt: ResourceType,
        id: Option<&str>,
        patients: &[String],
        gated: bool,
    ) -> Result<(), FhirError> {
        if let Err(e) = self.resource_allowed(rt, id.unwrap_or(""), patients, gated) {
            self.refused(rt, id, patients.first().cloned()).await;
            return Err(e);
        }
        Ok(())
    }

    /// Check a whole patient's record (compartment search, `$everything`);
    /// `rt` is the type asked for. Audits a refusal.
    pub(crate) async fn check_record(&self, rt: ResourceType, patient: &str) -> Result<(), FhirError> {
        let gated = match self.mode() {
            Mode::Open => false,
            Mode::PatientContext(_) => true,
            Mode::Clinician => rt.is_clinical() || rt == ResourceType::Patient,
        };
        if !gated {
            return Ok(());
        }
        if let Err(e) = self.patient_allowed(patient) {
            self.refused(ResourceType::Patient, Some(patient), Some(patient.to_string()))
                .await;
            return Err(e);
        }
        Ok(())
    }

    async fn refused(&self, rt: ResourceType, id: Option<&str>, patient: Option<String>) {
        self.audit(
            AuditAction::Read,
            rt,
            id,
            patient,
            4,
            "refused: no legitimate relationship or break-glass for this patient".into(),
        )
        .await;
    }

    /// Drop what the principal may not see; returns the patients withheld.
    /// `gated` treats every resource as clinical (the search looked into
    /// clinical content).
    pub(crate) fn filter_shown(&self, found: &mut Vec<Found>, gated: bool) -> Vec<String> {
        if matches!(self.mode(), Mode::Open) {
            return Vec::new();
        }
        let mut withheld: Vec<String> = Vec::new();
        found.retain(|f| {
            let Ok(rt) = f.rtype.parse::<ResourceType>() else {
                return false;
            };
            if f.json.is_none() {
                return true; // a deletion shows nothing
            }
            let patients = patients_of_found(f);
            match self.resource_allowed(rt, &f.id, &patients, gated) {
                Ok(()) => true,
                Err(_) => {
                    for p in patients {
                        if !withheld.contains(&p) {
                            withheld.push(p);
                        }
                    }
                    false
                }
            }
        });
        withheld
    }

    /// The OperationOutcome issue for a Bundle that left patients out.
    pub(crate) fn withheld_issue(&self, withheld: &[String]) -> Issue {
        let list: Vec<String> = withheld.iter().take(20).map(|p| format!("Patient/{p}")).collect();
        let more = if withheld.len() > 20 { ", ..." } else { "" };
        match self.mode() {
            Mode::PatientContext(own) => Issue::warning(
                IssueCode::Forbidden,
                format!("resources outside Patient/{own}'s record are not shown to this token"),
            ),
            _ => Issue::warning(
                IssueCode::Suppressed,
                format!(
                    "resources of patients this user has no legitimate relationship with are not shown ({}{more}); \
                     to see one patient's record in an emergency, POST Patient/<id>/$break-glass with a 'reason'",
                    list.join(", ")
                ),
            ),
        }
    }

    /// A search bound to one patient (a compartment parameter with one
    /// Patient reference): that patient is checked first, so the answer is
    /// a 403 rather than an empty page.
    pub(crate) async fn check_search(&self, parsed: &SearchQuery, crossed: &[ResourceType]) -> Result<bool, FhirError> {
        let rt = parsed.rtype;
        let gated = match self.mode() {
            Mode::Open => return Ok(false),
            Mode::PatientContext(own) => {
                if rt != ResourceType::Patient && patient_compartment(rt).is_empty() {
                    self.refused(rt, None, None).await;
                    return Err(context_refusal(own, &format!("{rt} resources")));
                }
                true
            }
            Mode::Clinician => rt.is_clinical() || crossed.iter().any(|t| t.is_clinical()),
        };
        if !gated {
            return Ok(false);
        }
        let params = patient_compartment(rt);
        for c in &parsed.clauses {
            let bound = (params.contains(&c.param)
                || matches!(c.param, "patient" | "subject")
                || (rt == ResourceType::Patient && c.param == "_id"))
                && !c.not
                && c.missing.is_none()
                && c.alternatives.len() == 1;
            if !bound {
                continue;
            }
            let pid = match &c.alternatives[0] {
                Predicate::Reference { rtype, id } if rtype.as_deref().is_none_or(|t| t == "Patient") => id,
                Predicate::Token { code: Some(id), .. } if c.param == "_id" => id,
                _ => continue,
            };
            if let Err(e) = self.patient_allowed(pid) {
                self.refused(rt, None, Some(pid.clone())).await;
                return Err(e);
            }
        }
        Ok(gated)
    }

    /// Before a write: the resource written and the version it replaces must
    /// both belong to patients the principal may see.
    pub(crate) fn check_write(&self, op: &WriteOp) -> Result<(), FhirError> {
        if matches!(self.mode(), Mode::Open) {
            return Ok(());
        }
        let Ok(rt) = op.rtype().parse::<ResourceType>() else {
            return Ok(());
        };
        if let WriteOp::Create { id, resource, .. } | WriteOp::Update { id, resource, .. } = op {
            self.resource_allowed(rt, id, &patients_of(rt, id, resource), false)?;
        }
        if let WriteOp::Update { id, .. } | WriteOp::Delete { id, .. } = op {
            if let Some(Current::Live(f)) = self.app.reader.with(|c| query::read(c, rt.as_str(), id))? {
                self.resource_allowed(rt, id, &patients_of_found(&f), false)?;
            }
        }
        Ok(())
    }

    /// Before a single write is proposed or journalled; audits a refusal.
    pub(crate) async fn check_write_audited(&self, op: &WriteOp) -> Result<(), FhirError> {
        if let Err(e) = self.check_write(op) {
            let action = match op {
                WriteOp::Create { .. } => AuditAction::Create,
                WriteOp::Update { .. } => AuditAction::Update,
                WriteOp::Delete { .. } => AuditAction::Delete,
            };
            let rt = op.rtype().parse().unwrap_or(ResourceType::Patient);
            self.audit(
                action,
                rt,
                Some(op.id()),
                None,
                4,
                "refused: no legitimate relationship or break-glass for this patient".into(),
            )
            .await;
            return Err(e);
        }
        Ok(())
    }

    /// The purpose and detail suffix of an audit row: BTG and the reason when
    /// the row concerns a patient this request showed under break-glass.
    /// Returns the break-glass patients the row does not name, for rows of their own.
    pub(crate) fn btg_for_audit(&self, patient: Option<&str>) -> (Option<String>, Vec<(String, String)>) {
        let shown = std::mem::take(&mut *self.gate.btg_shown.lock().expect("gate lock"));
        let mut mine = None;
        let mut others = Vec::new();
        for (p, reason) in shown {
            if Some(p.as_str()) == patient {
                mine = Some(reason);
            } else {
                others.push((p, reason));
            }
        }
        (mine, others)
    }

    fn grant(&self, patient: &str) -> Result<Grant, FhirError> {
        if let Some(g) = self.gate.decided.lock().expect("gate lock").get(patient) {
            return Ok(g.clone());
        }
        let g = if self.relationship(patient)? {
            Grant::Relationship
        } else {
            match self.episode(patient)? {
                Some(reason) => Grant::BreakGlass { reason },
                None => Grant::No,
            }
        };
        self.gate
            .decided
            .lock()
            .expect("gate lock")
            .insert(patient.to_string(), g.clone());
        Ok(g)
    }

    /// A running break-glass episode of this user on `patient`: its reason.
    fn episode(&self, patient: &str) -> Result<Option<String>, FhirError> {
        let now = now_ms();
        let user = &self.principal.user;
        if let Some(e) = self.app.access.running(user, patient, now) {
            return Ok(Some(e.reason));
        }
        let window = i64::from(BREAK_GLASS_HOURS_MAX) * HOUR_MS;
        let found = self
            .app
            .reader
            .with(|c| store_audit::break_glass_active(c, user, patient, now, window))?;
        Ok(found.map(|e| e.reason))
    }

    fn search_store(&self, rt: ResourceType, pairs: &[(&str, String)]) -> Result<Vec<Found>, FhirError> {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        let mut q = parse_query(rt, &pairs, true).map_err(|i| FhirError::internal(i.diagnostics))?;
        q.count = RELATIONSHIP_SCAN_MAX;
        Ok(self.app.reader.with(|c| query::search(c, &q))?.matches)
    }

    /// Whether the user has a legitimate relationship with `patient`.
    fn relationship(&self, patient: &str) -> Result<bool, FhirError> {
        let user = self.principal.user.clone();
        let pref = format!("Patient/{patient}");
        // Care team membership, by the user's identifier on the member
        // reference or on the Practitioner it points at.
        let ident = format!("{}|{user}", store_audit::USER_SYSTEM);
        let live_team = |f: &Found| {
            let v: Value = f
                .json
                .as_deref()
                .and_then(|j| serde_json::from_str(j).ok())
                .unwrap_or(Value::Null);
            !matches!(v["status"].as_str(), Some("inactive" | "entered-in-error"))
        };
        for param in ["participant:identifier", "participant:Practitioner.identifier"] {
            let teams = self.search_store(
                ResourceType::CareTeam,
                &[("patient", pref.clone()), (param, ident.clone())],
            )?;
            if teams.iter().any(live_team) {
                return Ok(true);
            }
        }
        let Some(site) = self.user_site() else {
            return Ok(false);
        };
        let days = i64::from(self.app.cfg.access.relationship_days);
        let now = now_ms();
        let from = wire::instant(now - days * DAY_MS);
        let to = wire::instant(now + days * DAY_MS);
        for rt in [ResourceType::Appointment, ResourceType::Encounter] {
            let found = self.search_store(
                rt,
                &[
                    ("patient", pref.clone()),
                    ("date", format!("ge{from}")),
                    ("date", format!("le{to}")),
                ],
            )?;
            for f in found {
                let v: Value = f
                    .json
                    .as_deref()
                    .and_then(|j| serde_json::from_str(j).ok())
                    .unwrap_or(Value::Null);
                if matches!(v["status"].as_str(), Some("cancelled" | "entered-in-error")) {
                    continue;
                }
                let mut places: Vec<&str> = Vec::new();
                if rt == ResourceType::Appointment {
                    if let Some(ps) = v["participant"].as_array() {
                        places.extend(ps.iter().filter_map(|p| p["actor"]["reference"].as_str()));
                    }
                } else {
                    if let Some(ls) = v["location"].as_array() {
                        places.extend(ls.iter().filter_map(|l| l["location"]["reference"].as_str()));
                    }
                    places.extend(v["serviceProvider"]["reference"].as_str());
                }
                for r in places {
                    if self.place_at_site(r, &site)? {
                        return Ok(true);
                    }
                }
            }
        }
        Ok(false)
    }

    /// Whether `Location/x` or `Organization/x` is at `site` (its id, or its
    /// `site` extension's code).
    fn place_at_site(&self, reference: &str, site: &str) -> Result<bool, FhirError> {
        let Some((t, id)) = hale_fhir::search::parse_local_reference(reference) else {
            return Ok(false);
        };
        if !matches!(t, "Location" | "Organization") {
            return Ok(false);
        }
        if id.eq_ignore_ascii_case(site) {
            return Ok(true);
        }
        if let Some(b) = self.gate.places.lock().expect("gate lock").get(reference) {
            return Ok(*b);
        }
        let at = match self.app.reader.with(|c| query::read(c, t, id))? {
            Some(Current::Live(f)) => {
                let v: Value = f
                    .json
                    .as_deref()
                    .and_then(|j| serde_json::from_str(j).ok())
                    .unwrap_or(Value::Null);
                v["extension"].as_array().is_some_and(|es| {
                    es.iter().any(|e| {
                        e["url"] == hale_fhir::codes::EXT_SITE
                            && e["valueCode"]
                                .as_str()
                                .is_some_and(|c| c.trim().eq_ignore_ascii_case(site))
                    })
                })
            }
            _ => false,
        };
        self.gate
            .places
            .lock()
            .expect("gate lock")
            .insert(reference.to_string(), at);
        Ok(at)
    }

    // -----------------------------------------------------------------------
    // Break-glass operations

    /// `POST Patient/{id}/$break-glass`: a Parameters with `reason`.
    pub(crate) async fn break_glass(&self, patient: &str, body: &[u8]) -> Result<Response, FhirError> {
        let p = self.principal;
        if p.role != Role::Clinician || p.patient.is_some() {
            self.audit(
                AuditAction::Execute,
                ResourceType::Patient,
                Some(patient),
                Some(patient.to_string()),
                4,
                "refused: $break-glass".into(),
            )
            .await;
            return Err(FhirError::new(
                StatusCode::FORBIDDEN,
                IssueCode::Forbidden,
                format!(
                    "only clinicians may break the glass; user '{}' has role '{}'",
                    p.user,
                    p.role.as_str()
                ),
            ));
        }
        let params = crate::rest::parse_json(body)?;
        let reason = reason_of(&params)?;
        match self.app.reader.with(|c| query::read(c, "Patient", patient))? {
            Some(Current::Live(_)) => {}
            Some(Current::Deleted { .. }) => {
                return Err(FhirError::new(
                    StatusCode::GONE,
                    IssueCode::Deleted,
                    format!("Patient/{patient} was deleted"),
                ))
            }
            None => return Err(FhirError::not_found(format!("Patient/{patient} does not exist"))),
        }
        let start = now_ms();
        let hours = self.app.cfg.access.break_glass_hours.clamp(1, BREAK_GLASS_HOURS_MAX);
        let until = start + i64::from(hours) * HOUR_MS;
        let episode = Episode {
            user: p.user.clone(),
            patient: patient.to_string(),
            start_ms: start,
            until_ms: until,
            reason: reason.clone(),
        };
        // The start row goes through the read-audit sink: committed through
        // the log, or spooled to disk at a cut-off site and committed once
        // after healing. It is the episode (hale_store::audit).
        self.app
            .audit
            .record(AuditRecord {
                time_ms: start,
                actor: p.actor(),
                action: AuditAction::Execute,
                rtype: "Patient".into(),
                id: Some(patient.to_string()),
                patient: Some(patient.to_string()),
                outcome: 0,
                detail: store_audit::break_glass_detail(until, &reason),
                purpose: Some(BTG.into()),
            })
            .await;
        self.app.access.remember(episode);
        self.gate.decided.lock().expect("gate lock").remove(patient);
        let out = json!({
            "resourceType": "Parameters",
            "parameter": [
                {"name": "patient", "valueReference": {"reference": format!("Patient/{patient}")}},
                {"name": "start", "valueInstant": wire::instant(start)},
                {"name": "end", "valueInstant": wire::instant(until)},
                {"name": "reason", "valueString": reason},
            ]
        });
        Ok(json_response(StatusCode::OK, out.to_string()))
    }

    fn privacy_officer_only(&self, what: &str) -> Result<(), FhirError> {
        let p = self.principal;
        if p.role == Role::PrivacyOfficer && p.patient.is_none() {
            return Ok(());
        }
        Err(FhirError::new(
            StatusCode::FORBIDDEN,
            IssueCode::Forbidden,
            format!(
                "only a privacy officer may {what}; user '{}' has role '{}'",
                p.user,
                p.role.as_str()
            ),
        ))
    }

    /// `GET AuditEvent/$break-glass?status=open|closed|all&patient=&agent=`:
    /// the review list. Each episode is its start AuditEvent, with Hale's
    /// review-status extension; what was seen follows as included AuditEvents.
    pub(crate) async fn break_glass_review(&self, q: &str) -> Result<Response, FhirError> {
        if let Err(e) = self.privacy_officer_only("list break-glass episodes") {
            self.audit(
                AuditAction::Execute,
                ResourceType::AuditEvent,
                None,
                None,
                4,
                "refused: $break-glass review".into(),
            )
            .await;
            return Err(e);
        }
        let mut open = Some(true);
        let mut patient = None;
        let mut user = None;
        for (k, v) in query_pairs(q) {
            match k.as_str() {
                "status" => {
                    open = match v.as_str() {
                        "open" => Some(true),
                        "closed" => Some(false),
                        "all" => None,
                        _ => {
                            return Err(
                                FhirError::bad_request(format!("status is open, closed or all, not '{v}'"))
                                    .at("status"),
                            )
                        }
                    }
                }
                "patient" => patient = Some(v.trim_start_matches("Patient/").to_string()),
                "agent" => user = Some(v),
                "_format" => {}
                other => {
                    return Err(FhirError::bad_request(format!(
                        "$break-glass takes status, patient and agent; '{other}' is not one"
                    ))
                    .at(other))
                }
            }
        }
        let (episodes, seen) = self.app.reader.with(|c| {
            let list = store_audit::break_glass_list(
                c,
                open,
                patient.as_deref(),
                user.as_deref(),
                store_audit::BREAK_GLASS_LIST_MAX,
            )?;
            let mut seen = Vec::new();
            for e in &list {
                seen.push(store_audit::break_glass_accesses(
                    c,
                    e,
                    store_audit::BREAK_GLASS_ACCESSES_MAX,
                )?);
            }
            Ok::<_, hale_store::rusqlite::Error>((list, seen))
        })?;
        let mut b = BundleWriter::new(json!({
            "resourceType": "Bundle",
            "type": "searchset",
            "total": episodes.len(),
            "link": [{"relation": "self", "url": format!("{}/AuditEvent/$break-glass{}", self.base, if q.is_empty() { String::new() } else { format!("?{q}") })}],
        }));
        let mut included = Vec::new();
        for (e, accesses) in episodes.iter().zip(seen) {
            let json = episode_json(self.app, e, accesses.len().saturating_sub(1))?;
            b.entry(
                json!({"fullUrl": format!("{}/AuditEvent/{}", self.base, e.seq), "search": {"mode": "match"}}),
                Some(&json),
            );
            included.extend(accesses.into_iter().filter(|f| f.id != e.seq.to_string()));
            if let Some(c) = &e.closed {
                if let Some(f) = self.app.reader.with(|conn| store_audit::event(conn, c.seq))? {
                    included.push(f);
                }
            }
        }
        for f in &included {
            b.entry(
                json!({"fullUrl": wire::full_url(&self.base, f), "search": {"mode": "include"}}),
                f.json.as_deref(),
            );
        }
        self.audit(
            AuditAction::Execute,
            ResourceType::AuditEvent,
            None,
            patient.clone(),
            0,
            format!("GET AuditEvent/$break-glass?{q} -> {} episode(s)", episodes.len()),
        )
        .await;
        Ok(json_response(StatusCode::OK, b.finish()))
    }

    /// `POST AuditEvent/{id}/$break-glass-close` (a Parameters with an
    /// optional `note`): a privacy officer closes an episode's review. The
    /// closing row is committed through the log before the answer.
    pub(crate) async fn break_glass_close(&self, id: &str, body: &[u8]) -> Result<Response, FhirError> {
        if let Err(e) = self.privacy_officer_only("close a break-glass review") {
            self.audit(
                AuditAction::Execute,
                ResourceType::AuditEvent,
                Some(id),
                None,
                4,
                "refused: $break-glass-close".into(),
            )
            .await;
            return Err(e);
        }
        let note = if body.is_empty() {
            String::new()
        } else {
            let v = crate::rest::parse_json(body)?;
            param_string(&v, "note").unwrap_or_default()
        };
        if note.chars().count() > REASON_CHARS_MAX {
            return Err(
                FhirError::bad_request(format!("the note is longer than {REASON_CHARS_MAX} characters")).at("note"),
            );
        }
        let seq: i64 = id
            .parse()
            .map_err(|_| FhirError::not_found(format!("AuditEvent/{id} is not a break-glass episode")))?;
        let Some(e) = self.app.reader.with(|c| store_audit::break_glass(c, seq))? else {
            return Err(FhirError::not_found(format!(
                "AuditEvent/{id} is not a break-glass episode"
            )));
        };
        if let Some(c) = &e.closed {
            return Err(FhirError::new(
                StatusCode::CONFLICT,
                IssueCode::Conflict,
                format!(
                    "the review of AuditEvent/{id} was closed by {} (AuditEvent/{})",
                    c.user, c.seq
                ),
            ));
        }
        let record = AuditRecord {
            time_ms: now_ms(),
            actor: self.principal.actor(),
            action: AuditAction::Execute,
            rtype: "AuditEvent".into(),
            id: Some(id.to_string()),
            patient: Some(e.patient.clone()),
            outcome: 0,
            detail: format!("{}: {note}", store_audit::BREAK_GLASS_CLOSE),
            purpose: None,
        };
        self.propose(CommandKind::Audit(vec![record])).await?;
        let e = self
            .app
            .reader
            .with(|c| store_audit::break_glass(c, seq))?
            .ok_or_else(|| FhirError::internal("the episode vanished"))?;
        let accesses = self
            .app
            .reader
            .with(|c| store_audit::break_glass_accesses(c, &e, store_audit::BREAK_GLASS_ACCESSES_MAX))?;
        let json = episode_json(self.app, &e, accesses.len().saturating_sub(1))?;
        Ok(json_response(StatusCode::OK, json))
    }
}

fn site_of(app: &App, p: &Principal) -> Option<String> {
    p.site.clone().or_else(|| app.cfg.access.site.clone()).or_else(|| {
        let s = app.cfg.cluster.site.trim();
        (!s.is_empty() && s != "local").then(|| s.to_string())
    })
}

/// Extension on a break-glass start AuditEvent in the review list.
pub const EXT_REVIEW_STATUS: &str = "https://hale.health/fhir/StructureDefinition/break-glass-review-status";
/// Its end (when the episode stops granting access).
pub const EXT_EPISODE_END: &str = "https://hale.health/fhir/StructureDefinition/break-glass-end";
/// How many accesses were audited under it.
pub const EXT_ACCESSES: &str = "https://hale.health/fhir/StructureDefinition/break-glass-accesses";
/// The AuditEvent that closed its review.
pub const EXT_CLOSED_BY: &str = "https://hale.health/fhir/StructureDefinition/break-glass-closed-by";

fn episode_json(app: &App, e: &BreakGlass, accesses: usize) -> Result<String, FhirError> {
    let Some(f) = app.reader.with(|c| store_audit::event(c, e.seq))? else {
        return Err(FhirError::internal("a break-glass start row vanished"));
    };
    let mut v: Value = serde_json::from_str(f.json.as_deref().unwrap_or("{}")).unwrap_or(Value::Null);
    let mut ext = vec![
        json!({"url": EXT_REVIEW_STATUS, "valueCode": if e.closed.is_some() { "closed" } else { "open" }}),
        json!({"url": EXT_EPISODE_END, "valueInstant": wire::instant(e.until_ms)}),
        json!({"url": EXT_ACCESSES, "valueUnsignedInt": accesses}),
    ];
    if let Some(c) = &e.closed {
        ext.push(json!({"url": EXT_CLOSED_BY, "valueReference": {"reference": format!("AuditEvent/{}", c.seq), "display": format!("{} at {}: {}", c.user, wire::instant(c.time_ms), c.note)}}));
    }
    v["extension"] = Value::Array(ext);
    Ok(v.to_string())
}

fn param_string(v: &Value, name: &str) -> Option<String> {
    v["parameter"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["valueString"].as_str())
        .map(|s| s.trim().to_string())
}

fn reason_of(params: &Value) -> Result<String, FhirError> {
    if params["resourceType"] != "Parameters" {
        return Err(
            FhirError::bad_request("$break-glass takes a Parameters resource with a 'reason' (valueString)")
                .at("resourceType"),
        );
    }
    let reason = param_string(params, "reason").unwrap_or_default();
    let n = reason.chars().count();
    if n < REASON_CHARS_MIN {
        return Err(FhirError::new(
            StatusCode::BAD_REQUEST,
            IssueCode::Required,
            format!("say why you need this record: the reason must have at least {REASON_CHARS_MIN} characters"),
        )
        .at("Parameters.parameter.where(name='reason')"));
    }
    if n > REASON_CHARS_MAX {
        return Err(
            FhirError::bad_request(format!("the reason is longer than {REASON_CHARS_MAX} characters"))
                .at("Parameters.parameter.where(name='reason')"),
        );
    }
    if reason.chars().any(char::is_control) {
        return Err(FhirError::bad_request("the reason may not contain control characters")
            .at("Parameters.parameter.where(name='reason')"));
    }
    Ok(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patients_of_observation_and_patient() {
        let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "Patient/a"}, "performer": [{"reference": "Practitioner/p"}]});
        assert_eq!(patients_of(ResourceType::Observation, "o", &obs), vec!["a".to_string()]);
        assert_eq!(
            patients_of(ResourceType::Patient, "b", &json!({})),
            vec!["b".to_string()]
        );
        assert!(patients_of(ResourceType::Practitioner, "p", &json!({})).is_empty());
    }

    #[test]
    fn reasons() {
        let p = |r: &str| json!({"resourceType": "Parameters", "parameter": [{"name": "reason", "valueString": r}]});
        assert!(reason_of(&p("short")).is_err());
        assert!(reason_of(&p("   padded    ")).is_err());
        assert_eq!(reason_of(&p(" unconscious in ED ")).unwrap(), "unconscious in ED");
        assert!(reason_of(&json!({"resourceType": "Patient"})).is_err());
        assert!(reason_of(&p("line\nbreak here")).is_err());
    }
}
