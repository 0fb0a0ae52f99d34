//! The `search-mix` workload: a fixed cycle of realistic clinical searches
//! ("any search" latency), the data their parameters are drawn from, and the
//! untimed discovery of that data on the server.
//!
//! Every connection walks the same fixed list of search kinds in order
//! (connection `i` starts at kind `i`), drawing the parameters of each search
//! (patient, NHS number, name, clinic, schedule, slot, LOINC code) from its
//! seeded PRNG. A 200 counts as ok; the body is not checked.
//!
//! Discovery works against a server loaded with the demo health board
//! (`hale serve --demo`: patients `pat-000001`…, slots `slot-000001`…) and
//! against any other server: without demo patients the workload falls back to
//! the bench's seeded patients, and search kinds with nothing to search for
//! (no Location, Schedule or Slot on the server) are left out of the cycle.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::Method;
use serde_json::Value;

use crate::client::{failure_error, status_error, Client, Response, Target};
use crate::data::{self, Rng};
use crate::engine::{Class, Job, Req};
use crate::error::BenchError;
use crate::hist::Histogram;
use crate::report::{Latency, SearchKindFigures};

/// LOINC codes of the demo board's laboratory Observations (Hb, WBC,
/// platelets, sodium, potassium, creatinine, eGFR, CRP, HbA1c).
pub(crate) const LOINC_CODES: [&str; 9] = [
    "718-7", "6690-2", "777-3", "2951-2", "2823-3", "14682-9", "62238-1", "1988-5", "59261-8",
];

/// Demo patients read (untimed) to learn real NHS numbers and names.
pub(crate) const SAMPLE_PATIENTS: usize = 64;

/// Page size of the setup listings (`GET /Location?_count=100`, …).
const LIST_COUNT: usize = 100;

/// Upper bound for the numbered-id search when the server gives no total.
const NUMBERED_MAX: u64 = 999_999;

/// One kind of search in the cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MixKind {
    PatientIdentifier,
    PatientFamily,
    PatientNameBirthdate,
    PatientPhone,
    AppointmentPatient,
    AppointmentClinicDay,
    AppointmentSlot,
    SlotFree,
    ObservationCode,
    DiagnosticReport,
    AllergyIntolerance,
    DocumentReference,
    Everything,
    ConditionActive,
    MedicationRequestActive,
    FlagActive,
    ProcedurePatient,
    ImmunizationPatient,
    AppointmentChainNhs,
    PatientHasAppointment,
}

/// What a search kind needs from [`MixData`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Needs {
    PatientIds,
    NhsNumbers,
    Families,
    Givens,
    Nothing,
    Locations,
    Schedules,
    Slots,
}

impl MixKind {
    /// The fixed cycle, in order.
    pub(crate) const ALL: [MixKind; 20] = [
        MixKind::PatientIdentifier,
        MixKind::AppointmentPatient,
        MixKind::ObservationCode,
        MixKind::PatientFamily,
        MixKind::AppointmentClinicDay,
        MixKind::DiagnosticReport,
        MixKind::PatientNameBirthdate,
        MixKind::SlotFree,
        MixKind::AllergyIntolerance,
        MixKind::PatientPhone,
        MixKind::AppointmentSlot,
        MixKind::DocumentReference,
        MixKind::Everything,
        // The record types served since every R4 type is (issue 9), and the
        // search forms that came with them: a chain and a reverse chain.
        MixKind::ConditionActive,
        MixKind::AppointmentChainNhs,
        MixKind::MedicationRequestActive,
        MixKind::FlagActive,
        MixKind::PatientHasAppointment,
        MixKind::ProcedurePatient,
        MixKind::ImmunizationPatient,
    ];

    /// Kebab-case name used in reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            MixKind::PatientIdentifier => "patient-identifier",
            MixKind::PatientFamily => "patient-family",
            MixKind::PatientNameBirthdate => "patient-name-birthdate",
            MixKind::PatientPhone => "patient-phone",
            MixKind::AppointmentPatient => "appointment-patient",
            MixKind::AppointmentClinicDay => "appointment-clinic-day",
            MixKind::AppointmentSlot => "appointment-slot",
            MixKind::SlotFree => "slot-free",
            MixKind::ObservationCode => "observation-code",
            MixKind::DiagnosticReport => "diagnostic-report",
            MixKind::AllergyIntolerance => "allergy-intolerance",
            MixKind::DocumentReference => "document-reference",
            MixKind::Everything => "patient-everything",
            MixKind::ConditionActive => "condition-active",
            MixKind::MedicationRequestActive => "medication-request-active",
            MixKind::FlagActive => "flag-active",
            MixKind::ProcedurePatient => "procedure-patient",
            MixKind::ImmunizationPatient => "immunization-patient",
            MixKind::AppointmentChainNhs => "appointment-chain-nhs",
            MixKind::PatientHasAppointment => "patient-has-appointment",
        }
    }

    /// The request, with its varying parameters in angle brackets.
    pub(crate) fn template(self) -> &'static str {
        match self {
            MixKind::PatientIdentifier => "Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|<nhs>",
            MixKind::PatientFamily => "Patient?family=<3 letters>&_count=10",
            MixKind::PatientNameBirthdate => "Patient?name=<given>&birthdate=ge<year>-01-01&_count=10",
            MixKind::PatientPhone => "Patient?phone=07700900<3 digits>",
            MixKind::AppointmentPatient => "Appointment?patient=Patient/<id>&_sort=date",
            MixKind::AppointmentClinicDay => {
                "Appointment?date=ge<today>&date=lt<tomorrow>&location=Location/<clinic>&_count=50"
            }
            MixKind::AppointmentSlot => "Appointment?slot=Slot/<id>&_include=Appointment:patient",
            MixKind::SlotFree => "Slot?schedule=Schedule/<id>&status=free&start=ge<today>&_count=20",
            MixKind::ObservationCode => "Observation?patient=Patient/<id>&code=http://loinc.org|<code>&_sort=-date",
            MixKind::DiagnosticReport => "DiagnosticReport?patient=Patient/<id>",
            MixKind::AllergyIntolerance => "AllergyIntolerance?patient=Patient/<id>",
            MixKind::DocumentReference => "DocumentReference?patient=Patient/<id>&_sort=-date",
            MixKind::Everything => "Patient/<id>/$everything",
            MixKind::ConditionActive => "Condition?patient=Patient/<id>&clinical-status=active",
            MixKind::MedicationRequestActive => "MedicationRequest?patient=Patient/<id>&status=active",
            MixKind::FlagActive => "Flag?patient=Patient/<id>&status=active",
            MixKind::ProcedurePatient => "Procedure?patient=Patient/<id>&_sort=-date",
            MixKind::ImmunizationPatient => "Immunization?patient=Patient/<id>",
            MixKind::AppointmentChainNhs => {
                "Appointment?patient.identifier=https://fhir.nhs.uk/Id/nhs-number|<nhs>&_sort=date"
            }
            MixKind::PatientHasAppointment => {
                "Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|<nhs>&_has:Appointment:patient:status=booked"
            }
        }
    }

    pub(crate) fn needs(self) -> Needs {
        match self {
            MixKind::PatientIdentifier | MixKind::AppointmentChainNhs | MixKind::PatientHasAppointment => {
                Needs::NhsNumbers
            }
            MixKind::PatientFamily => Needs::Families,
            MixKind::PatientNameBirthdate => Needs::Givens,
            MixKind::PatientPhone => Needs::Nothing,
            MixKind::AppointmentClinicDay => Needs::Locations,
            MixKind::AppointmentSlot => Needs::Slots,
            MixKind::SlotFree => Needs::Schedules,
            MixKind::AppointmentPatient
            | MixKind::ObservationCode
            | MixKind::DiagnosticReport
            | MixKind::AllergyIntolerance
            | MixKind::DocumentReference
            | MixKind::Everything
            | MixKind::ConditionActive
            | MixKind::MedicationRequestActive
            | MixKind::FlagActive
            | MixKind::ProcedurePatient
            | MixKind::ImmunizationPatient => Needs::PatientIds,
        }
    }
}

/// Ids to pick from: `<prefix>-000001` … `<prefix>-<count>` (the demo
/// board's numbering), or a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ids {
    Numbered { prefix: &'static str, count: u64 },
    Listed(Vec<String>),
}

impl Ids {
    pub(crate) fn len(&self) -> u64 {
        match self {
            Ids::Numbered { count, .. } => *count,
            Ids::Listed(v) => v.len() as u64,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A random id (the list must not be empty).
    pub(crate) fn pick(&self, rng: &mut Rng) -> String {
        match self {
            Ids::Numbered { prefix, count } => numbered_id(prefix, 1 + rng.below(*count as usize) as u64),
            Ids::Listed(v) => rng.pick(v).clone(),
        }
    }
}

/// The demo board's id for number `n`: zero-padded to six digits.
pub(crate) fn numbered_id(prefix: &str, n: u64) -> String {
    format!("{prefix}-{n:06}")
}

/// Everything the searches draw their parameters from.
#[derive(Debug, Clone)]
pub(crate) struct MixData {
    pub(crate) patients: Ids,
    pub(crate) nhs_numbers: Vec<String>,
    pub(crate) families: Vec<String>,
    pub(crate) givens: Vec<String>,
    /// Clinic Location ids.
    pub(crate) locations: Vec<String>,
    pub(crate) schedules: Vec<String>,
    pub(crate) slots: Ids,
    /// "YYYY-MM-DD" (UTC) for today and tomorrow.
    pub(crate) today: String,
    pub(crate) tomorrow: String,
}

impl MixData {
    pub(crate) fn has(&self, needs: Needs) -> bool {
        match needs {
            Needs::PatientIds => !self.patients.is_empty(),
            Needs::NhsNumbers => !self.nhs_numbers.is_empty(),
            Needs::Families => !self.families.is_empty(),
            Needs::Givens => !self.givens.is_empty(),
            Needs::Nothing => true,
            Needs::Locations => !self.locations.is_empty(),
            Needs::Schedules => !self.schedules.is_empty(),
            Needs::Slots => !self.slots.is_empty(),
        }
    }

    /// The kinds of [`MixKind::ALL`] this data can feed, in cycle order.
    pub(crate) fn cycle(&self) -> Vec<MixKind> {
        MixKind::ALL.into_iter().filter(|k| self.has(k.needs())).collect()
    }

    /// [`MixData::cycle`] restricted to the kinds named in `only` (all when
    /// empty); an unknown name is an error that lists the known ones.
    pub(crate) fn cycle_of(&self, only: &[String]) -> Result<Vec<MixKind>, String> {
        if let Some(bad) = only
            .iter()
            .find(|n| !MixKind::ALL.iter().any(|k| k.name() == n.as_str()))
        {
            let known: Vec<&str> = MixKind::ALL.iter().map(|k| k.name()).collect();
            return Err(format!(
                "unknown search-mix kind `{bad}`; the kinds are: {}",
                known.join(", ")
            ));
        }
        Ok(self
            .cycle()
            .into_iter()
            .filter(|k| only.is_empty() || only.iter().any(|n| n == k.name()))
            .collect())
    }

    /// A FHIR-relative request path ("/Patient?…") for one search of `kind`.
    /// `kind` must be in [`MixData::cycle`].
    pub(crate) fn path(&self, kind: MixKind, rng: &mut Rng) -> String {
        match kind {
            MixKind::PatientIdentifier => format!(
                "/Patient?identifier={}%7C{}",
                data::NHS_NUMBER_SYSTEM,
                encode(rng.pick(&self.nhs_numbers).as_str())
            ),
            MixKind::PatientFamily => {
                format!(
                    "/Patient?family={}&_count=10",
                    encode(&prefix(rng.pick(&self.families).as_str(), 3))
                )
            }
            MixKind::PatientNameBirthdate => format!(
                "/Patient?name={}&birthdate=ge{}-01-01&_count=10",
                encode(rng.pick(&self.givens).as_str()),
                1940 + rng.below(50)
            ),
            MixKind::PatientPhone => format!("/Patient?phone=07700900{:03}", rng.below(1000)),
            MixKind::AppointmentPatient => {
                format!(
                    "/Appointment?patient=Patient/{}&_sort=date",
                    encode(&self.patients.pick(rng))
                )
            }
            MixKind::AppointmentClinicDay => format!(
                "/Appointment?date=ge{}&date=lt{}&location=Location/{}&_count=50",
                self.today,
                self.tomorrow,
                encode(rng.pick(&self.locations).as_str())
            ),
            MixKind::AppointmentSlot => format!(
                "/Appointment?slot=Slot/{}&_include=Appointment:patient",
                encode(&self.slots.pick(rng))
            ),
            MixKind::SlotFree => format!(
                "/Slot?schedule=Schedule/{}&status=free&start=ge{}&_count=20",
                encode(rng.pick(&self.schedules).as_str()),
                self.today
            ),
            MixKind::ObservationCode => format!(
                "/Observation?patient=Patient/{}&code=http://loinc.org%7C{}&_sort=-date",
                encode(&self.patients.pick(rng)),
                rng.pick(&LOINC_CODES)
            ),
            MixKind::DiagnosticReport => {
                format!("/DiagnosticReport?patient=Patient/{}", encode(&self.patients.pick(rng)))
            }
            MixKind::AllergyIntolerance => {
                format!(
                    "/AllergyIntolerance?patient=Patient/{}",
                    encode(&self.patients.pick(rng))
                )
            }
            MixKind::DocumentReference => format!(
                "/DocumentReference?patient=Patient/{}&_sort=-date",
                encode(&self.patients.pick(rng))
            ),
            MixKind::Everything => format!("/Patient/{}/$everything", encode(&self.patients.pick(rng))),
            MixKind::ConditionActive => format!(
                "/Condition?patient=Patient/{}&clinical-status=active",
                encode(&self.patients.pick(rng))
            ),
            MixKind::MedicationRequestActive => format!(
                "/MedicationRequest?patient=Patient/{}&status=active",
                encode(&self.patients.pick(rng))
            ),
            MixKind::FlagActive => format!(
                "/Flag?patient=Patient/{}&status=active",
                encode(&self.patients.pick(rng))
            ),
            MixKind::ProcedurePatient => format!(
                "/Procedure?patient=Patient/{}&_sort=-date",
                encode(&self.patients.pick(rng))
            ),
            MixKind::ImmunizationPatient => {
                format!("/Immunization?patient=Patient/{}", encode(&self.patients.pick(rng)))
            }
            MixKind::AppointmentChainNhs => format!(
                "/Appointment?patient.identifier={}%7C{}&_sort=date",
                data::NHS_NUMBER_SYSTEM,
                encode(rng.pick(&self.nhs_numbers).as_str())
            ),
            MixKind::PatientHasAppointment => format!(
                "/Patient?identifier={}%7C{}&_has:Appointment:patient:status=booked",
                data::NHS_NUMBER_SYSTEM,
                encode(rng.pick(&self.nhs_numbers).as_str())
            ),
        }
    }
}

/// Percent-encode for a query value or path segment: everything but ASCII
/// letters, digits and `-._~`.
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The first `n` characters of `s` (whole characters, not bytes).
pub(crate) fn prefix(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// "YYYY-MM-DD" (UTC) for Unix seconds.
pub(crate) fn utc_date(secs: i64) -> String {
    data::format_utc(secs)[..10].to_string()
}

/// Binary search for the highest `n` in `1..=hi` for which a resource exists,
/// given that number 1 exists and the numbers in use are `1..=count` (the demo
/// board's numbering). Drive it with `probe` / `record` until `probe` is None.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bisect {
    /// Known to exist.
    lo: u64,
    /// Nothing above this exists.
    hi: u64,
}

impl Bisect {
    pub(crate) fn new(hi: u64) -> Bisect {
        Bisect { lo: 1, hi: hi.max(1) }
    }

    /// The next number to check, or None when the answer is known.
    pub(crate) fn probe(&self) -> Option<u64> {
        (self.lo < self.hi).then(|| self.lo + (self.hi - self.lo).div_ceil(2))
    }

    pub(crate) fn record(&mut self, n: u64, exists: bool) {
        if exists {
            self.lo = self.lo.max(n);
        } else {
            self.hi = self.hi.min(n.saturating_sub(1)).max(self.lo);
        }
    }

    pub(crate) fn result(&self) -> u64 {
        self.lo
    }
}

/// A searchset Bundle's `total`.
pub(crate) fn bundle_total(bundle: &Value) -> Option<u64> {
    bundle.get("total").and_then(Value::as_u64)
}

/// The resources of a Bundle's entries (outcome and include entries left out).
pub(crate) fn bundle_resources(bundle: &Value) -> impl Iterator<Item = &Value> {
    bundle
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"].as_str().is_none_or(|m| m == "match"))
        .filter_map(|e| e.get("resource"))
}

fn resource_id(r: &Value) -> Option<String> {
    r.get("id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Ids of the Bundle's resources.
pub(crate) fn bundle_ids(bundle: &Value) -> Vec<String> {
    bundle_resources(bundle).filter_map(resource_id).collect()
}

/// Clinic Locations of a Bundle: those that are `partOf` another (the demo
/// board's `loc-<site>-<service>`); if none is, every Location.
pub(crate) fn clinic_locations(bundle: &Value) -> Vec<String> {
    let part_of: Vec<String> = bundle_resources(bundle)
        .filter(|r| r.get("partOf").is_some())
        .filter_map(resource_id)
        .collect();
    if part_of.is_empty() {
        bundle_ids(bundle)
    } else {
        part_of
    }
}

/// What a Patient resource offers as search parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PatientFacts {
    pub(crate) nhs: Option<String>,
    pub(crate) family: Option<String>,
    pub(crate) given: Option<String>,
}

pub(crate) fn patient_facts(p: &Value) -> PatientFacts {
    let text = |v: &Value| v.as_str().filter(|s| !s.trim().is_empty()).map(str::to_string);
    let nhs = p["identifier"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["system"] == data::NHS_NUMBER_SYSTEM)
        .and_then(|i| text(&i["value"]));
    let name = &p["name"][0];
    PatientFacts {
        nhs,
        family: text(&name["family"]),
        given: text(&name["given"][0]),
    }
}

/// Per-kind figures for the timed phase.
#[derive(Debug, Default)]
struct KindTally {
    requests: u64,
    ok: u64,
    errors: u64,
    hist: Histogram,
}

/// Cycles through `cycle`; `Req::tag` is the index in it.
pub(crate) struct MixJob {
    prefix: String,
    cycle: Vec<MixKind>,
    data: MixData,
    tallies: Vec<Mutex<KindTally>>,
}

impl MixJob {
    /// `prefix` is the FHIR base's path prefix ("" or "/fhir"). `data` must
    /// feed at least one kind.
    pub(crate) fn new(target: &Target, data: MixData, cycle: Vec<MixKind>) -> MixJob {
        MixJob {
            prefix: target.path(""),
            tallies: cycle.iter().map(|_| Mutex::new(KindTally::default())).collect(),
            cycle,
            data,
        }
    }

    #[cfg(test)]
    pub(crate) fn cycle(&self) -> &[MixKind] {
        &self.cycle
    }

    /// Every kind the data could feed (the cycle before `--kinds`).
    pub(crate) fn fed(&self) -> Vec<MixKind> {
        self.data.cycle()
    }

    /// The figures per kind, in cycle order.
    pub(crate) fn figures(&self) -> Vec<SearchKindFigures> {
        self.cycle
            .iter()
            .zip(&self.tallies)
            .map(|(kind, t)| {
                let t = t.lock().unwrap_or_else(|p| p.into_inner());
                SearchKindFigures {
                    kind: kind.name().to_string(),
                    request: kind.template().to_string(),
                    requests: t.requests,
                    ok: t.ok,
                    errors: t.errors,
                    latency: Latency::from_histogram(&t.hist),
                }
            })
            .collect()
    }
}

impl Job for MixJob {
    fn next(&self, rng: &mut Rng) -> Option<Req> {
        let turn = rng.next_u64();
        self.next_on(0, turn, rng)
    }

    fn next_on(&self, conn: usize, turn: u64, rng: &mut Rng) -> Option<Req> {
        if self.cycle.is_empty() {
            return None;
        }
        let i = cycle_index(conn, turn, self.cycle.len());
        Some(Req {
            method: Method::GET,
            path: format!("{}{}", self.prefix, self.data.path(self.cycle[i], rng)),
            body: None,
            tag: i,
        })
    }

    fn classify(&self, _: &Req, resp: &Response) -> Class {
        if resp.status == 200 {
            Class::Ok
        } else {
            Class::Error
        }
    }

    fn observe(&self, req: &Req, response: Option<(Class, Duration)>) {
        let Some(t) = self.tallies.get(req.tag) else {
            return;
        };
        let mut t = t.lock().unwrap_or_else(|p| p.into_inner());
        t.requests += 1;
        match response {
            Some((class, latency)) => {
                t.hist.record(latency);
                if class == Class::Ok {
                    t.ok += 1;
                } else {
                    t.errors += 1;
                }
            }
            None => t.errors += 1,
        }
    }
}

/// Connection `conn` starts at kind `conn` and then walks the cycle in order.
pub(crate) fn cycle_index(conn: usize, turn: u64, len: usize) -> usize {
    debug_assert!(len > 0);
    ((conn as u64 % len as u64 + turn % len as u64) % len as u64) as usize
}

/// The slowest kind by p99 (ties: the first in cycle order), ignoring kinds
/// with no latency measured.
pub(crate) fn slowest(figures: &[SearchKindFigures]) -> Option<&SearchKindFigures> {
    figures
        .iter()
        .filter(|f| f.latency.p99_ms.is_some())
        .fold(None, |best: Option<&SearchKindFigures>, f| match best {
            Some(b) if b.latency.p99_ms >= f.latency.p99_ms => Some(b),
            _ => Some(f),
        })
}

// ---- untimed discovery ----

/// What discovery found on the server.
#[derive(Debug, Default)]
pub(crate) struct Found {
    /// Demo patients `pat-000001` … `pat-<n>` (0: no demo data).
    pub(crate) demo_patients: u64,
    /// Facts from a sample of the demo patients.
    pub(crate) sample: Vec<PatientFacts>,
    pub(crate) locations: Vec<String>,
    pub(crate) schedules: Vec<String>,
    pub(crate) slots: Option<Ids>,
    /// Listings the server refused (kept for the report's notes).
    pub(crate) notes: Vec<String>,
}

struct Setup<'a> {
    client: Client,
    target: &'a Target,
    timeout: Duration,
}

impl Setup<'_> {
    async fn get(&mut self, rel: &str) -> Result<(String, Response), BenchError> {
        let path = self.target.path(rel);
        let what = format!("setting up search-mix: GET {path}");
        let resp = self
            .client
            .send(Method::GET, &path, None, self.timeout)
            .await
            .map_err(|f| failure_error(self.target, &what, f, self.timeout))?;
        if resp.status == 401 {
            return Err(status_error(self.target, &what, &resp));
        }
        Ok((what, resp))
    }

    /// The JSON body of a 200, or None (with a note) for any other status.
    async fn json(&mut self, rel: &str, notes: &mut Vec<String>) -> Result<Option<Value>, BenchError> {
        let (_, resp) = self.get(rel).await?;
        if resp.status != 200 {
            notes.push(format!("setup: GET {rel} answered {}", resp.status));
            return Ok(None);
        }
        Ok(serde_json::from_slice(&resp.body).ok())
    }

    /// Does `/<rtype>/<id>` exist? 200 yes, 404 / 410 no, anything else fails.
    async fn exists(&mut self, rtype: &str, id: &str) -> Result<Option<Value>, BenchError> {
        let (what, resp) = self.get(&format!("/{rtype}/{}", encode(id))).await?;
        match resp.status {
            200 => Ok(Some(serde_json::from_slice(&resp.body).unwrap_or(Value::Null))),
            404 | 410 => Ok(None),
            _ => Err(status_error(self.target, &what, &resp)),
        }
    }

    /// How many of `<prefix>-000001`, `<prefix>-000002`, … exist (assuming
    /// they are numbered from 1 without gaps), at most `hi`.
    async fn numbered(&mut self, rtype: &str, prefix: &'static str, hi: u64) -> Result<u64, BenchError> {
        if hi == 0 || self.exists(rtype, &numbered_id(prefix, 1)).await?.is_none() {
            return Ok(0);
        }
        let mut b = Bisect::new(hi);
        while let Some(n) = b.probe() {
            let exists = self.exists(rtype, &numbered_id(prefix, n)).await?.is_some();
            b.record(n, exists);
        }
        Ok(b.result())
    }

    /// `GET /<rtype>?_count=0`'s total (or a generous bound if it has none).
    async fn total(&mut self, rtype: &str, notes: &mut Vec<String>) -> Result<u64, BenchError> {
        Ok(match self.json(&format!("/{rtype}?_count=0"), notes).await? {
            Some(b) => bundle_total(&b).unwrap_or(NUMBERED_MAX),
            None => 0,
        })
    }
}

/// Find demo patients (and sample some), clinic locations, schedules and
/// slots, over one connection. Fails only on connection trouble, rejected
/// credentials or an unexpected answer to a Patient read.
pub(crate) async fn discover(target: &Arc<Target>, timeout: Duration, rng: &mut Rng) -> Result<Found, BenchError> {
    let mut s = Setup {
        client: Client::new(target.clone()),
        target,
        timeout,
    };
    let mut found = Found::default();
    let notes = &mut found.notes;

    let total = s.total("Patient", notes).await?;
    found.demo_patients = s.numbered("Patient", "pat", total).await?;
    for _ in 0..SAMPLE_PATIENTS.min(found.demo_patients as usize) {
        let id = numbered_id("pat", 1 + rng.below(found.demo_patients as usize) as u64);
        if let Some(p) = s.exists("Patient", &id).await? {
            found.sample.push(patient_facts(&p));
        }
    }

    if let Some(b) = s.json(&format!("/Location?_count={LIST_COUNT}"), notes).await? {
        found.locations = clinic_locations(&b);
    }
    if let Some(b) = s.json(&format!("/Schedule?_count={LIST_COUNT}"), notes).await? {
        found.schedules = bundle_ids(&b);
        // Prefer the demo board's clinics (`sched-…`) to the bench's own booking-race
        // schedules, which hold thousands of back-to-back slots no clinic has.
        if found.schedules.iter().any(|id| id.starts_with("sched-")) {
            found.schedules.retain(|id| id.starts_with("sched-"));
        }
    }
    let total = s.total("Slot", notes).await?;
    let demo_slots = s.numbered("Slot", "slot", total).await?;
    found.slots = if demo_slots > 0 {
        Some(Ids::Numbered {
            prefix: "slot",
            count: demo_slots,
        })
    } else if total > 0 {
        s.json(&format!("/Slot?_count={LIST_COUNT}"), notes)
            .await?
            .map(|b| Ids::Listed(bundle_ids(&b)))
    } else {
        None
    };
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn data() -> MixData {
        MixData {
            patients: Ids::Numbered {
                prefix: "pat",
                count: 7,
            },
            nhs_numbers: vec!["9990000018".into()],
            families: vec!["O'Brien".into()],
            givens: vec!["Seán".into()],
            locations: vec!["loc-qeh-cardiology".into()],
            schedules: vec!["sched-qeh-cardiology".into()],
            slots: Ids::Listed(vec!["slot-000042".into()]),
            today: "2026-11-23".into(),
            tomorrow: "2026-11-24".into(),
        }
    }

    #[test]
    fn encode_cases() {
        fn check(input: &str, expected: &str) {
            assert_eq!(encode(input), expected, "{input:?}");
        }
        check("Smith", "Smith");
        check("pat-000001", "pat-000001");
        check("O'Brien", "O%27Brien");
        check("Seán", "Se%C3%A1n");
        check("a b&c=d|e+f", "a%20b%26c%3Dd%7Ce%2Bf");
        check("", "");
    }

    #[test]
    fn prefix_cases() {
        fn check(input: &str, n: usize, expected: &str) {
            assert_eq!(prefix(input, n), expected, "{input:?} {n}");
        }
        check("Smith", 3, "Smi");
        check("Li", 3, "Li");
        check("Siân", 4, "Siân");
        check("Róisín", 3, "Rói");
        check("", 3, "");
    }

    #[test]
    fn numbered_id_cases() {
        fn check(prefix: &str, n: u64, expected: &str) {
            assert_eq!(numbered_id(prefix, n), expected);
        }
        check("pat", 1, "pat-000001");
        check("slot", 123_456, "slot-123456");
        check("pat", 1_234_567, "pat-1234567");
    }

    #[test]
    fn utc_date_cases() {
        fn check(secs: i64, expected: &str) {
            assert_eq!(utc_date(secs), expected, "{secs}");
        }
        check(0, "1970-01-01");
        check(86_399, "1970-01-01");
        check(86_400, "1970-01-02");
        check(1_795_392_000, "2026-11-23");
    }

    #[test]
    fn bisect_finds_the_highest_number() {
        // (existing count, upper bound, expected)
        fn check(count: u64, hi: u64, expected: u64) {
            let mut b = Bisect::new(hi);
            let mut probes = 0;
            while let Some(n) = b.probe() {
                assert!((1..=hi.max(1)).contains(&n), "probe {n} out of 1..={hi}");
                b.record(n, n <= count);
                probes += 1;
                assert!(probes <= 64, "count {count} hi {hi}: no convergence");
            }
            assert_eq!(b.result(), expected, "count {count} hi {hi}");
        }
        check(1, 1, 1);
        check(1, 0, 1);
        check(1, 100, 1);
        check(100, 100, 100);
        check(10_000, 11_000, 10_000);
        check(10_000, 10_001, 10_000);
        check(37, 999_999, 37);
        check(999_999, 999_999, 999_999);
        // More exist than the bound says: capped at the bound.
        check(500, 400, 400);
    }

    #[test]
    fn cycle_index_walks_in_order_from_the_connection() {
        fn check(conn: usize, turn: u64, len: usize, expected: usize) {
            assert_eq!(cycle_index(conn, turn, len), expected, "{conn} {turn} {len}");
        }
        check(0, 0, 13, 0);
        check(0, 1, 13, 1);
        check(0, 13, 13, 0);
        check(2, 0, 13, 2);
        check(2, 11, 13, 0);
        check(20, 0, 13, 7);
        check(5, u64::MAX, 1, 0);
        check(
            usize::MAX,
            u64::MAX,
            13,
            ((usize::MAX as u64 % 13 + u64::MAX % 13) % 13) as usize,
        );
    }

    #[test]
    fn cycle_leaves_out_kinds_without_data() {
        fn check(d: MixData, missing: &[MixKind]) {
            let expected: Vec<MixKind> = MixKind::ALL.into_iter().filter(|k| !missing.contains(k)).collect();
            assert_eq!(d.cycle(), expected);
        }
        check(data(), &[]);
        check(
            MixData {
                locations: vec![],
                schedules: vec![],
                slots: Ids::Listed(vec![]),
                ..data()
            },
            &[
                MixKind::AppointmentClinicDay,
                MixKind::SlotFree,
                MixKind::AppointmentSlot,
            ],
        );
        check(
            MixData {
                patients: Ids::Listed(vec![]),
                nhs_numbers: vec![],
                families: vec![],
                givens: vec![],
                ..data()
            },
            &[
                MixKind::PatientIdentifier,
                MixKind::AppointmentPatient,
                MixKind::ObservationCode,
                MixKind::PatientFamily,
                MixKind::DiagnosticReport,
                MixKind::PatientNameBirthdate,
                MixKind::AllergyIntolerance,
                MixKind::DocumentReference,
                MixKind::Everything,
                MixKind::ConditionActive,
                MixKind::AppointmentChainNhs,
                MixKind::MedicationRequestActive,
                MixKind::FlagActive,
                MixKind::PatientHasAppointment,
                MixKind::ProcedurePatient,
                MixKind::ImmunizationPatient,
            ],
        );
    }

    #[test]
    fn kinds_can_be_chosen_by_name() {
        let d = data();
        assert_eq!(d.cycle_of(&[]).unwrap(), d.cycle());
        let only = vec!["patient-everything".to_string(), "patient-identifier".to_string()];
        assert_eq!(
            d.cycle_of(&only).unwrap(),
            [MixKind::PatientIdentifier, MixKind::Everything]
        );
        let err = d.cycle_of(&["patient-x".to_string()]).unwrap_err();
        assert!(
            err.contains("unknown search-mix kind `patient-x`") && err.contains("flag-active"),
            "{err}"
        );
    }

    #[test]
    fn kinds_have_unique_names_and_each_appears_once() {
        let mut names: Vec<&str> = MixKind::ALL.iter().map(|k| k.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), MixKind::ALL.len());
    }

    #[test]
    fn paths_per_kind() {
        // (kind, expected path with the one-element pools of `data()`; `*`
        // stands for the random part)
        fn check(kind: MixKind, expected: &str) {
            let d = data();
            let mut rng = Rng::new(9);
            for _ in 0..50 {
                let got = d.path(kind, &mut rng);
                let (head, tail) = expected.split_once('*').unwrap_or((expected, ""));
                assert!(
                    got.starts_with(head) && got.ends_with(tail) && got.len() >= head.len() + tail.len(),
                    "{kind:?}: {got} does not match {expected}"
                );
                assert!(got.bytes().all(|b| b.is_ascii_graphic()), "{got}");
            }
        }
        check(
            MixKind::PatientIdentifier,
            "/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number%7C9990000018",
        );
        check(MixKind::PatientFamily, "/Patient?family=O%27B&_count=10");
        check(
            MixKind::PatientNameBirthdate,
            "/Patient?name=Se%C3%A1n&birthdate=ge19*-01-01&_count=10",
        );
        check(MixKind::PatientPhone, "/Patient?phone=07700900*");
        check(
            MixKind::AppointmentPatient,
            "/Appointment?patient=Patient/pat-00000*&_sort=date",
        );
        check(
            MixKind::AppointmentClinicDay,
            "/Appointment?date=ge2026-11-23&date=lt2026-11-24&location=Location/loc-qeh-cardiology&_count=50",
        );
        check(
            MixKind::AppointmentSlot,
            "/Appointment?slot=Slot/slot-000042&_include=Appointment:patient",
        );
        check(
            MixKind::SlotFree,
            "/Slot?schedule=Schedule/sched-qeh-cardiology&status=free&start=ge2026-11-23&_count=20",
        );
        check(
            MixKind::ObservationCode,
            "/Observation?patient=Patient/pat-00000*&_sort=-date",
        );
        check(
            MixKind::DiagnosticReport,
            "/DiagnosticReport?patient=Patient/pat-00000*",
        );
        check(
            MixKind::AllergyIntolerance,
            "/AllergyIntolerance?patient=Patient/pat-00000*",
        );
        check(
            MixKind::DocumentReference,
            "/DocumentReference?patient=Patient/pat-00000*&_sort=-date",
        );
        check(MixKind::Everything, "/Patient/pat-00000*/$everything");
        check(
            MixKind::ConditionActive,
            "/Condition?patient=Patient/pat-00000*&clinical-status=active",
        );
        check(
            MixKind::MedicationRequestActive,
            "/MedicationRequest?patient=Patient/pat-00000*&status=active",
        );
        check(MixKind::FlagActive, "/Flag?patient=Patient/pat-00000*&status=active");
        check(
            MixKind::ProcedurePatient,
            "/Procedure?patient=Patient/pat-00000*&_sort=-date",
        );
        check(MixKind::ImmunizationPatient, "/Immunization?patient=Patient/pat-00000*");
        check(
            MixKind::AppointmentChainNhs,
            "/Appointment?patient.identifier=https://fhir.nhs.uk/Id/nhs-number%7C9990000018&_sort=date",
        );
        check(
            MixKind::PatientHasAppointment,
            "/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number%7C9990000018&_has:Appointment:patient:status=booked",
        );
    }

    #[test]
    fn random_parameters_stay_in_range() {
        let d = data();
        let mut rng = Rng::new(3);
        for _ in 0..500 {
            let p = d.path(MixKind::Everything, &mut rng);
            let n: u64 = p["/Patient/pat-".len().."/Patient/pat-".len() + 6].parse().unwrap();
            assert!((1..=7).contains(&n), "{p}");
            let p = d.path(MixKind::PatientPhone, &mut rng);
            assert_eq!(p.len(), "/Patient?phone=07700900123".len(), "{p}");
            let p = d.path(MixKind::ObservationCode, &mut rng);
            assert!(LOINC_CODES.iter().any(|c| p.contains(&format!("%7C{c}&"))), "{p}");
            let p = d.path(MixKind::PatientNameBirthdate, &mut rng);
            let year: u32 = p.split("ge").nth(1).unwrap()[..4].parse().unwrap();
            assert!((1940..1990).contains(&year), "{p}");
        }
    }

    #[test]
    fn same_seed_same_searches() {
        let d = data();
        let run = |seed| {
            let mut rng = Rng::new(seed);
            MixKind::ALL.map(|k| d.path(k, &mut rng))
        };
        assert_eq!(run(11), run(11));
    }

    #[test]
    fn bundle_parsing() {
        let b = json!({
            "resourceType": "Bundle",
            "total": 34,
            "entry": [
                {"resource": {"resourceType": "Location", "id": "loc-qeh"}, "search": {"mode": "match"}},
                {"resource": {"resourceType": "Location", "id": "loc-qeh-cardiology",
                              "partOf": {"reference": "Location/loc-qeh"}}, "search": {"mode": "match"}},
                {"resource": {"resourceType": "Location", "id": "loc-x", "partOf": {}}},
                {"resource": {"resourceType": "Patient", "id": "p1"}, "search": {"mode": "include"}},
                {"resource": {"resourceType": "OperationOutcome"}, "search": {"mode": "outcome"}},
                {"resource": {"resourceType": "Location", "id": ""}},
            ]
        });
        assert_eq!(bundle_total(&b), Some(34));
        assert_eq!(bundle_ids(&b), ["loc-qeh", "loc-qeh-cardiology", "loc-x"]);
        assert_eq!(clinic_locations(&b), ["loc-qeh-cardiology", "loc-x"]);
        let flat = json!({"entry": [{"resource": {"id": "a"}}, {"resource": {"id": "b"}}]});
        assert_eq!(clinic_locations(&flat), ["a", "b"]);
        assert_eq!(bundle_total(&flat), None);
        assert!(bundle_ids(&json!({})).is_empty());
    }

    #[test]
    fn patient_facts_cases() {
        fn check(p: Value, expected: (Option<&str>, Option<&str>, Option<&str>)) {
            let f = patient_facts(&p);
            let got = (f.nhs.as_deref(), f.family.as_deref(), f.given.as_deref());
            assert_eq!(got, expected, "{p}");
        }
        check(
            json!({"resourceType": "Patient",
                   "identifier": [{"system": "urn:other", "value": "x"},
                                  {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9990000018"}],
                   "name": [{"family": "Smith", "given": ["Ann", "Mary"]}]}),
            (Some("9990000018"), Some("Smith"), Some("Ann")),
        );
        check(json!({"name": [{"given": [" "]}]}), (None, None, None));
        check(json!({}), (None, None, None));
    }

    #[test]
    fn slowest_by_p99() {
        fn fig(kind: &str, p99: Option<f64>) -> SearchKindFigures {
            SearchKindFigures {
                kind: kind.into(),
                request: String::new(),
                requests: 1,
                ok: 1,
                errors: 0,
                latency: Latency {
                    p99_ms: p99,
                    ..Latency::default()
                },
            }
        }
        fn check(figs: &[SearchKindFigures], expected: Option<&str>) {
            assert_eq!(slowest(figs).map(|f| f.kind.as_str()), expected);
        }
        check(&[], None);
        check(&[fig("a", None)], None);
        check(
            &[fig("a", Some(1.0)), fig("b", Some(3.0)), fig("c", Some(2.0))],
            Some("b"),
        );
        check(&[fig("a", Some(3.0)), fig("b", Some(3.0))], Some("a"));
        check(&[fig("a", None), fig("b", Some(0.5))], Some("b"));
    }

    #[test]
    fn job_tallies_per_kind() {
        let target = Target::parse("http://127.0.0.1:1/fhir", None, None).unwrap();
        let job = MixJob::new(&target, data(), data().cycle());
        let n = job.cycle().len();
        let mut rng = Rng::new(1);
        for turn in 0..(3 * n as u64) {
            let req = job.next_on(1, turn, &mut rng).unwrap();
            assert!(req.path.starts_with("/fhir/"), "{}", req.path);
            assert_eq!(req.tag, (1 + turn as usize) % n);
            let response = match turn % 3 {
                0 => Some((Class::Ok, Duration::from_millis(2))),
                1 => Some((Class::Error, Duration::from_millis(5))),
                _ => None,
            };
            job.observe(&req, response);
        }
        let figs = job.figures();
        assert_eq!(figs.len(), n);
        assert_eq!(figs.iter().map(|f| f.requests).sum::<u64>(), 3 * n as u64);
        assert_eq!(figs.iter().map(|f| f.ok).sum::<u64>(), n as u64);
        assert_eq!(figs.iter().map(|f| f.errors).sum::<u64>(), 2 * n as u64);
        // 13 kinds, 3 turns each: every kind saw one of each outcome.
        for f in &figs {
            assert_eq!((f.requests, f.ok, f.errors), (3, 1, 2), "{f:?}");
            assert_eq!(f.latency.samples, 2, "timeouts have no latency: {f:?}");
        }
    }
}
