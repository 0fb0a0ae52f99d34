//! A deterministic synthetic NHS health board for Hale: FHIR R4 resources for
//! demos, tests and benchmarks.
//!
//! [`generate`] builds a fictional board, *NHS Clydebank and Strathmore Health
//! Board*, with four hospital sites (QEH, SRI, KGH, BMH), thirty clinics across
//! the four Hale appointment categories, their schedules and slots, a
//! population of patients with UK-style demographics, booked / attended /
//! cancelled appointments and some clinical data. Every name, place and
//! number is invented: NHS numbers are in the 999 and 998 test ranges and phone numbers
//! are in Ofcom's drama ranges.
//!
//! # Output
//!
//! [`Board::resources`] is a list of complete FHIR R4 JSON resources, each with
//! `resourceType` and `id` and **no** `meta` (the server assigns versions).
//! The same [`DemoConfig`] always gives byte-identical output: there is no
//! clock and no hash-map iteration; all dates are relative to
//! [`DemoConfig::today`].
//!
//! A [`Board`] holds every resource as a `serde_json::Value`, several
//! kilobytes each (about 3 GB for 100 000 patients). To load or write a large
//! board, use [`stream`] (an iterator) or [`generate_each`] (a callback)
//! instead, with [`sites`] for the site list: they produce exactly the same
//! resources in the same order, one at a time, in a few megabytes whatever
//! the population.
//!
//! Resources come grouped by type, in this order, so that every reference
//! points to a resource earlier in the list (load them in order):
//!
//! | type | ids |
//! |---|---|
//! | Organization | `org-board` (the board), `org-qeh`, `org-sri`, `org-kgh`, `org-bmh` (sites, `partOf` the board, with the [`EXT_SITE`](hale_fhir::codes::EXT_SITE) extension), `org-gp-01`..`org-gp-08` (GP practices) |
//! | Location | `loc-qeh` … (one per site, with `EXT_SITE`), then one per clinic `loc-<site>-<service>` (e.g. `loc-qeh-cardiology`, `partOf` the site location, also with `EXT_SITE`) |
//! | Practitioner | `prac-001` … (about 60; GMC-style identifier) |
//! | HealthcareService | `hs-<site>-<service>`, e.g. `hs-sri-cataract-surgery` (30) |
//! | PractitionerRole | `role-001` … |
//! | Schedule | `sched-<site>-<service>`, one per clinic |
//! | Slot | `slot-000001` … |
//! | Patient | `pat-000001` … (`cfg.patients` of them) |
//! | AllergyIntolerance | `alg-000001` … |
//! | Observation | `obs-000001` … |
//! | ImagingStudy | `img-000001` … |
//! | DiagnosticReport | `dr-000001` … (lab panels and radiology reports) |
//! | DocumentReference | `doc-000001` … |
//! | Appointment | `appt-000001` … |
//! | Encounter | `enc-000001` … |
//!
//! Numeric ids are zero-padded to six digits (more digits only beyond 999 999).
//!
//! # Slots and appointments
//!
//! Each clinic has one Schedule (actors: the clinic's Location and its lead
//! Practitioner) and Slots on the clinic's working days (Monday to Friday
//! only) from `today - 14` to `today + 28` days inclusive. Clinic times are
//! written as UTC instants (`2026-11-23T09:00:00Z`): outpatient clinics
//! 09:00–12:30 and 13:30–17:00 in 20 or 30 minute slots, day-case lists
//! 08:30–12:30 and 13:30–17:30, theatre lists 08:30–17:30 with 60–180 minute
//! cases, and chemotherapy / haematology day units 08:30–17:30 with three or
//! four chairs of 60–120 minute treatments. **Chair slots in one Schedule
//! overlap in time** (one slot per chair; `Slot.comment` says which chair).
//!
//! Most slots get exactly one Appointment (never more than one, whatever its
//! status); the rest stay unbooked. Appointments on days before `today` are
//! `fulfilled`, `noshow` or `cancelled` (with a `cancelationReason` coded with
//! [`CANCELLED_BY_SYSTEM`](hale_fhir::codes::CANCELLED_BY_SYSTEM));
//! appointments on `today` or later are `booked`. An Appointment copies its
//! slot's `start`/`end`, references it in `slot`, and has the clinic's
//! `serviceCategory` / `serviceType`, a `priority` 1..=4, an
//! `appointmentType`, and participants Patient, Practitioner (the schedule's)
//! and Location (the clinic's), all `accepted`.
//!
//! **All Slots are emitted with status `free`**, including those an
//! Appointment refers to: the server is expected to mark a slot `busy` when it
//! applies the booking, exactly as it would for a client's booking. Loading
//! the board therefore means: load the slots, then apply the appointments.
//! No patient has two non-cancelled appointments that overlap in time, and no
//! patient has more than eight non-cancelled appointments (so a small board
//! leaves many slots free).

mod data;
mod record;
mod rng;
mod util;

use std::collections::{BTreeMap, VecDeque};

use chrono::{Datelike, NaiveDate};
use hale_fhir::codes;
use serde_json::{Map, Value};

use data::{Layout, Service};
use rng::Rng;
use util::{arr, coded, coding, concept, fmt_date, fmt_instant, obj, reference};

/// How to build the board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoConfig {
    /// PRNG seed; the same config always gives the same board.
    pub seed: u64,
    /// Number of patients (at most [`MAX_PATIENTS`]).
    pub patients: usize,
    /// "Today": slots run from 14 days before to 28 days after, and past
    /// appointments and clinical data are dated before it.
    pub today: NaiveDate,
}

impl Default for DemoConfig {
    /// Seed 2013, 10 000 patients, today 2026-11-23 (callers usually set `today`).
    fn default() -> Self {
        DemoConfig {
            seed: 2013,
            patients: 10_000,
            today: NaiveDate::from_ymd_opt(2026, 11, 23).expect("valid date"),
        }
    }
}

/// The largest supported population. NHS numbers come from the 999 test
/// range, then the 998 range (nine-digit prefixes 999 000 000.. and
/// 998 000 000..; about nine in ten have a valid check digit): neither is in
/// any range allocated to patients (England and Wales 4, 6 and 7, Scotland's
/// CHI 0 to 3, Northern Ireland 3), so a demo number can never be a real one.
pub const MAX_PATIENTS: usize = 1_800_000;

/// Nine-digit prefix blocks the demo's NHS numbers are taken from, in order.
const NHS_PREFIX_BLOCKS: [u64; 2] = [999_000_000, 998_000_000];

/// A hospital site of the board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// Site code, e.g. `QEH`; also the `valueCode` of the `EXT_SITE` extension.
    pub code: String,
    /// e.g. "Queen Eleanor Hospital".
    pub name: String,
    /// Id of the site's Location (e.g. `loc-qeh`).
    pub location_id: String,
    /// Id of the site's Organization (e.g. `org-qeh`).
    pub organization_id: String,
}

/// A generated board.
#[derive(Debug, Clone, PartialEq)]
pub struct Board {
    pub sites: Vec<Site>,
    /// FHIR R4 resources, ordered so that references only point backwards.
    pub resources: Vec<Value>,
}

impl Board {
    /// How many resources of `resource_type` the board holds.
    pub fn count(&self, resource_type: &str) -> usize {
        self.resources
            .iter()
            .filter(|r| r["resourceType"] == resource_type)
            .count()
    }

    /// (resource type, count) in the order the types first appear.
    pub fn counts(&self) -> Vec<(String, usize)> {
        let mut out: Vec<(String, usize)> = Vec::new();
        for r in &self.resources {
            let t = r["resourceType"].as_str().unwrap_or_default();
            match out.last_mut() {
                Some((last, n)) if last == t => *n += 1,
                _ => match out.iter_mut().find(|(name, _)| name == t) {
                    Some((_, n)) => *n += 1,
                    None => out.push((t.to_string(), 1)),
                },
            }
        }
        out
    }
}

const SERVICE_SYSTEM: &str = "https://hale.health/fhir/CodeSystem/service";
const GMC_SYSTEM: &str = "https://fhir.hl7.org.uk/Id/gmc-number";
const ODS_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-organization-code";
const LOINC: &str = "http://loinc.org";
const UCUM: &str = "http://unitsofmeasure.org";
const SNOMED: &str = "http://snomed.info/sct";
const DICOM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const OBS_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const OBS_INTERPRETATION: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation";
const DIAGNOSTIC_SERVICE: &str = "http://terminology.hl7.org/CodeSystem/v2-0074";
const APPOINTMENT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v2-0276";
const CONTACT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/v2-0131";
const ROLE_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-RoleCode";
const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
const ALLERGY_CLINICAL: &str = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical";
const ALLERGY_VERIFICATION: &str = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification";
const ORG_TYPE: &str = "http://terminology.hl7.org/CodeSystem/organization-type";
const PHYSICAL_TYPE: &str = "http://terminology.hl7.org/CodeSystem/location-physical-type";
const PRACTITIONER_ROLE: &str = "http://terminology.hl7.org/CodeSystem/practitioner-role";

/// Slots run from `today + FIRST_DAY` to `today + LAST_DAY` inclusive.
const FIRST_DAY: i64 = -14;
const LAST_DAY: i64 = 28;
/// No patient gets more non-cancelled appointments than this.
const MAX_ACTIVE_APPOINTMENTS: usize = 8;

// PRNG stream numbers: one per concern so they do not disturb each other.
const S_NHS: u64 = 1;
const S_PRACTITIONER: u64 = 2;
const S_PATIENT: u64 = 3;
const S_CLINICAL: u64 = 4;
const S_BOOKING: u64 = 5;
const S_RECORD: u64 = 6;
const S_TREATMENT: u64 = 7;

fn nid(prefix: &str, n: usize) -> String {
    format!("{prefix}-{n:06}")
}

/// Whole years from `birth` to `on`.
fn age_on(birth: NaiveDate, on: NaiveDate) -> i32 {
    let mut years = on.year() - birth.year();
    if (on.month(), on.day()) < (birth.month(), birth.day()) {
        years -= 1;
    }
    years
}

fn category_coding(category: usize) -> Value {
    let (code, display) = codes::APPOINTMENT_CATEGORIES[category];
    coded(codes::APPOINTMENT_CATEGORY_SYSTEM, code, display)
}

fn service_concept(svc: &Service) -> Value {
    concept(SERVICE_SYSTEM, svc.code, svc.display)
}

fn site_extension(code: &str) -> Value {
    arr![obj! { "url": codes::EXT_SITE, "valueCode": code }]
}

/// A practitioner, planned before any resource is written: names are picked
/// from the static tables, the id is derived from the index (`prac-001` …).
struct Practitioner {
    site: usize,
    female: bool,
    given: &'static str,
    family: &'static str,
    prefix: &'static str,
    gmc: u64,
}

fn prac_id(index: usize) -> String {
    format!("prac-{:03}", index + 1)
}

struct Clinic {
    site: usize,
    svc: &'static Service,
    days: u8,
    sessions: u8,
    loc_id: String,
    hs_id: String,
    sched_id: String,
    /// Index into the practitioners: the lead (schedule actor).
    lead: usize,
    /// Optional second consultant.
    second: Option<usize>,
}

/// Slot `slot-<index + 1>`.
struct Slot {
    clinic: usize,
    /// Minutes relative to `today` 00:00Z.
    start: i64,
    end: i64,
    /// Treatment chair (1-based) in a chemotherapy unit.
    chair: Option<u8>,
}

/// What booking and the clinical generators need to know about a patient.
#[derive(Clone, Copy)]
struct PatientInfo {
    birth: NaiveDate,
    /// Female reference ranges apply.
    female: bool,
    /// Index into the GP practices, when the patient has a GP.
    gp: Option<u16>,
}

/// An Encounter to write after the appointments: `enc-<index + 1>`, for
/// `appt-<appointment>` in slot index `slot` of patient index `patient`.
struct EncounterPlan {
    slot: u32,
    patient: u32,
    appointment: u32,
}

/// Build the board described by `cfg`. See the crate documentation for the
/// shape of the output.
///
/// This holds every resource in memory (several kilobytes each); to load or
/// write a large board use [`stream`] or [`generate_each`], which produce the
/// same resources in the same order.
///
/// # Panics
///
/// When `cfg.patients` exceeds [`MAX_PATIENTS`].
pub fn generate(cfg: &DemoConfig) -> Board {
    let stream = stream(cfg);
    let sites = stream.sites().to_vec();
    let mut resources = Vec::with_capacity(20_000 + cfg.patients * 6);
    resources.extend(stream);
    Board { sites, resources }
}

/// Pass each resource of the board described by `cfg` to `sink`, in order:
/// exactly the resources of [`generate`]`(cfg).resources`, without holding
/// them all in memory.
///
/// # Panics
///
/// When `cfg.patients` exceeds [`MAX_PATIENTS`].
pub fn generate_each(cfg: &DemoConfig, sink: impl FnMut(Value)) {
    stream(cfg).for_each(sink);
}

/// The board's resources as an iterator: exactly the resources of
/// [`generate`]`(cfg).resources`, in the same order, generated on demand.
///
/// Memory stays small whatever the population: the stream keeps the fixed
/// part of the board (sites, clinics, practitioners, slot times) and a few
/// bytes per patient, and writes each resource only when it is asked for.
/// The clinical resources come grouped by type, so the stream walks the
/// patients once per clinical type, regenerating each patient's clinical
/// data from its own PRNG stream and keeping only that type.
///
/// # Panics
///
/// When `cfg.patients` exceeds [`MAX_PATIENTS`].
pub fn stream(cfg: &DemoConfig) -> BoardStream {
    assert!(
        cfg.patients <= MAX_PATIENTS,
        "at most {MAX_PATIENTS} patients are supported"
    );
    let mut nrng = Rng::stream(cfg.seed, S_NHS, 0);
    BoardStream {
        plan: Plan::new(cfg),
        step: Step::Organizations,
        pending: VecDeque::new(),
        nhs: NhsNumbers {
            next: 0,
            offset: nrng.below(1_000_000),
        },
        patients: Vec::with_capacity(cfg.patients),
        counters: Counters::default(),
        booking: Booking {
            rng: Rng::stream(cfg.seed, S_BOOKING, 0),
            busy: BTreeMap::new(),
            next_slot: 0,
            appointments: 0,
            referral: None,
            treated: BTreeMap::new(),
        },
        encounters: Vec::new(),
        record_counters: record::RecordCounters::default(),
        treated: Vec::new(),
    }
}

/// The hospital sites of the board described by `cfg` (the same as
/// [`Board::sites`]).
pub fn sites(_cfg: &DemoConfig) -> Vec<Site> {
    data::SITES
        .iter()
        .map(|s| {
            let lower = s.code.to_ascii_lowercase();
            Site {
                code: s.code.to_string(),
                name: s.name.to_string(),
                location_id: format!("loc-{lower}"),
                organization_id: format!("org-{lower}"),
            }
        })
        .collect()
}

/// The resources of a board, generated on demand; see [`stream`].
pub struct BoardStream {
    plan: Plan,
    step: Step,
    /// Resources made but not yet handed out (at most one small group).
    pending: VecDeque<Value>,
    nhs: NhsNumbers,
    /// Filled while the Patients are written; used by every later step.
    patients: Vec<PatientInfo>,
    /// Resource numbering within the current clinical pass.
    counters: Counters,
    booking: Booking,
    encounters: Vec<EncounterPlan>,
    /// Numbering of the rest of the record (problems, medicines, ...).
    record_counters: record::RecordCounters,
    /// Chemotherapy and inpatient appointments by patient, once booking is done.
    treated: Vec<(usize, Vec<record::Treated>)>,
}

impl BoardStream {
    /// The board's hospital sites.
    pub fn sites(&self) -> &[Site] {
        &self.plan.sites
    }
}

impl std::fmt::Debug for BoardStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoardStream")
            .field("seed", &self.plan.seed)
            .field("patients", &self.plan.patients)
            .field("today", &self.plan.today)
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

impl Iterator for BoardStream {
    type Item = Value;

    fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(r) = self.pending.pop_front() {
                return Some(r);
            }
            if !self.advance() {
                return None;
            }
        }
    }
}

impl std::iter::FusedIterator for BoardStream {}

/// Where a [`BoardStream`] is; the index is the next one to write.
#[derive(Debug, Clone, Copy)]
enum Step {
    Organizations,
    Locations,
    Practitioners,
    Services,
    Roles,
    Schedules,
    Slots(usize),
    Patients(usize),
    Clinical(Kind, usize),
    Record(usize),
    Appointments,
    Treatment(usize),
    Encounters(usize),
    Done,
}

impl BoardStream {
    /// Make the next resource or group of resources (at most one patient's
    /// worth, or one of the fixed groups of at most a few dozen) and move on.
    /// False when the board is complete.
    fn advance(&mut self) -> bool {
        let plan = &self.plan;
        let out = &mut self.pending;
        self.step = match self.step {
            Step::Organizations => {
                organizations(plan, out);
                Step::Locations
            }
            Step::Locations => {
                locations(plan, out);
                Step::Practitioners
            }
            Step::Practitioners => {
                practitioners(plan, out);
                Step::Services
            }
            Step::Services => {
                services(plan, out);
                Step::Roles
            }
            Step::Roles => {
                roles(plan, out);
                Step::Schedules
            }
            Step::Schedules => {
                schedules(plan, out);
                Step::Slots(0)
            }
            Step::Slots(i) if i < plan.slots.len() => {
                out.push_back(slot_resource(plan, i));
                Step::Slots(i + 1)
            }
            Step::Slots(_) => Step::Patients(0),
            Step::Patients(i) if i < plan.patients => {
                let mut rng = Rng::stream(plan.seed, S_PATIENT, i as u64);
                let pid = nid("pat", i + 1);
                let (resource, info) = patient(&mut rng, &pid, &self.nhs.next_number(), plan.today, &plan.gp_ids);
                out.push_back(resource);
                self.patients.push(info);
                Step::Patients(i + 1)
            }
            Step::Patients(_) => {
                self.counters = Counters::default();
                Step::Clinical(Kind::Allergy, 0)
            }
            Step::Clinical(kind, i) if i < self.patients.len() => {
                let mut rng = Rng::stream(plan.seed, S_CLINICAL, i as u64);
                clinical(plan, &mut rng, i, self.patients[i], kind, &mut self.counters, out);
                Step::Clinical(kind, i + 1)
            }
            Step::Clinical(kind, _) => {
                self.counters = Counters::default();
                match kind.next() {
                    Some(next) => Step::Clinical(next, 0),
                    None => Step::Record(0),
                }
            }
            Step::Record(i) if i < self.patients.len() => {
                let mut rng = Rng::stream(plan.seed, S_RECORD, i as u64);
                let info = self.patients[i];
                let gp = info.gp.map(|g| plan.gp_ids[g as usize].as_str());
                record::record(&mut rng, plan.today, i, info.birth, gp, &mut self.record_counters, out);
                Step::Record(i + 1)
            }
            Step::Record(_) => Step::Appointments,
            Step::Appointments => match self.booking.next(plan, &self.patients, &mut self.encounters) {
                Some(appointment) => {
                    if let Some(referral) = self.booking.referral.take() {
                        out.push_back(referral);
                    }
                    out.push_back(appointment);
                    Step::Appointments
                }
                None => {
                    self.treated = std::mem::take(&mut self.booking.treated).into_iter().collect();
                    Step::Treatment(0)
                }
            },
            Step::Treatment(k) if k < self.treated.len() => {
                let (p, items) = &mut self.treated[k];
                items.sort_by_key(|t| t.start);
                let mut rng = Rng::stream(plan.seed, S_TREATMENT, *p as u64);
                let birth = self.patients[*p].birth;
                record::treatment(&mut rng, plan.today, birth, items, &mut self.record_counters, out);
                Step::Treatment(k + 1)
            }
            Step::Treatment(_) => Step::Encounters(0),
            Step::Encounters(i) if i < self.encounters.len() => {
                out.push_back(encounter_resource(plan, i, &self.encounters[i]));
                Step::Encounters(i + 1)
            }
            Step::Encounters(_) | Step::Done => Step::Done,
        };
        !matches!(self.step, Step::Done)
    }
}

/// The fixed part of a board, decided before the first resource is written.
/// Its size does not depend on the number of patients.
struct Plan {
    seed: u64,
    today: NaiveDate,
    patients: usize,
    sites: Vec<Site>,
    gp_ids: Vec<String>,
    clinics: Vec<Clinic>,
    practitioners: Vec<Practitioner>,
    radiologists: Vec<usize>,
    slots: Vec<Slot>,
}

impl Plan {
    fn new(cfg: &DemoConfig) -> Plan {
        let gp_ids: Vec<String> = (1..=data::GP_PRACTICES.len())
            .map(|i| format!("org-gp-{i:02}"))
            .collect();
        let mut clinics: Vec<Clinic> = Vec::with_capacity(data::CLINICS.len());
        for &(site, svc_code, days, sessions) in data::CLINICS {
            let svc = data::service(svc_code);
            let key = format!("{}-{}", data::SITES[site].code.to_ascii_lowercase(), svc.code);
            clinics.push(Clinic {
                site,
                svc,
                days,
                sessions,
                loc_id: format!("loc-{key}"),
                hs_id: format!("hs-{key}"),
                sched_id: format!("sched-{key}"),
                lead: 0,
                second: None,
            });
        }

        let mut practitioners: Vec<Practitioner> = Vec::new();
        let mut prng = Rng::stream(cfg.seed, S_PRACTITIONER, 0);
        let gmc_offset = prng.below(1_000_000);
        let mut add_practitioner = |prng: &mut Rng, site: usize, surgical: bool| {
            let n = practitioners.len();
            let female = prng.chance(0.5);
            let given = *prng.pick(if female { data::FEMALE_NAMES } else { data::MALE_NAMES });
            let family = *prng.pick(data::SURNAMES);
            let prefix = match (surgical, female) {
                (false, _) => "Dr",
                (true, false) => "Mr",
                (true, true) => *prng.pick(&["Ms", "Miss", "Mrs"]),
            };
            // Seven-digit GMC-style numbers, unique by construction.
            let gmc = 6_000_000 + (gmc_offset + n as u64 * 293_003) % 1_000_000;
            practitioners.push(Practitioner {
                site,
                female,
                given,
                family,
                prefix,
                gmc,
            });
            n
        };
        for (i, c) in clinics.iter_mut().enumerate() {
            c.lead = add_practitioner(&mut prng, c.site, c.svc.surgical);
            if i % 7 != 6 {
                c.second = Some(add_practitioner(&mut prng, c.site, c.svc.surgical));
            }
        }
        let radiologists: Vec<usize> = (0..6)
            .map(|i| add_practitioner(&mut prng, i % data::SITES.len(), false))
            .collect();

        let mut slots: Vec<Slot> = Vec::new();
        for (ci, c) in clinics.iter().enumerate() {
            for d in FIRST_DAY..=LAST_DAY {
                let weekday = util::day(cfg.today, d).weekday().num_days_from_monday();
                if weekday >= 5 || c.days & (1 << weekday) == 0 {
                    continue;
                }
                for (start, end, chair) in day_slots(c) {
                    slots.push(Slot {
                        clinic: ci,
                        start: d * 1440 + start,
                        end: d * 1440 + end,
                        chair,
                    });
                }
            }
        }

        Plan {
            seed: cfg.seed,
            today: cfg.today,
            patients: cfg.patients,
            sites: sites(cfg),
            gp_ids,
            clinics,
            practitioners,
            radiologists,
            slots,
        }
    }
}

// ---- The fixed resources, group by group ----------------------------------

fn organizations(plan: &Plan, out: &mut VecDeque<Value>) {
    out.push_back(obj! {
        "resourceType": "Organization",
        "id": "org-board",
        "identifier": arr![obj! { "system": ODS_SYSTEM, "value": "ZCS00" }],
        "active": true,
        "type": arr![concept(ORG_TYPE, "prov", "Healthcare Provider")],
        "name": data::BOARD_NAME,
        "telecom": arr![obj! { "system": "phone", "value": "0141 496 0000", "use": "work" }],
        "address": arr![
            obj! {
                "use": "work",
                "line": arr!["Board Headquarters", "1 Kilbowie Road"],
                "city": "Clydebank",
                "postalCode": "G81 1AA",
                "country": "GB",
            },
        ],
    });
    for (s, site) in data::SITES.iter().zip(&plan.sites) {
        out.push_back(obj! {
            "resourceType": "Organization",
            "id": &site.organization_id,
            "extension": site_extension(s.code),
            "identifier": arr![obj! { "system": ODS_SYSTEM, "value": s.ods }],
            "active": true,
            "type": arr![concept(ORG_TYPE, "prov", "Healthcare Provider")],
            "name": s.name,
            "telecom": arr![obj! { "system": "phone", "value": s.phone, "use": "work" }],
            "address": arr![
                obj! {
                    "use": "work",
                    "line": arr![s.line],
                    "city": s.town,
                    "postalCode": s.postcode,
                    "country": "GB",
                },
            ],
            "partOf": reference("Organization", "org-board"),
        });
    }
    for (gp, id) in data::GP_PRACTICES.iter().zip(&plan.gp_ids) {
        let (name, town, line, postcode, ods) = *gp;
        out.push_back(obj! {
            "resourceType": "Organization",
            "id": id,
            "identifier": arr![obj! { "system": ODS_SYSTEM, "value": ods }],
            "active": true,
            "type": arr![concept(ORG_TYPE, "prov", "Healthcare Provider")],
            "name": name,
            "address": arr![
                obj! { "use": "work", "line": arr![line], "city": town, "postalCode": postcode, "country": "GB" },
            ],
        });
    }
}

fn locations(plan: &Plan, out: &mut VecDeque<Value>) {
    let sites = &plan.sites;
    for (s, site) in data::SITES.iter().zip(sites) {
        out.push_back(obj! {
            "resourceType": "Location",
            "id": &site.location_id,
            "extension": site_extension(s.code),
            "status": "active",
            "name": s.name,
            "mode": "instance",
            "telecom": arr![obj! { "system": "phone", "value": s.phone, "use": "work" }],
            "address": obj! {
                "use": "work",
                "line": arr![s.line],
                "city": s.town,
                "postalCode": s.postcode,
                "country": "GB",
            },
            "physicalType": concept(PHYSICAL_TYPE, "bu", "Building"),
            "managingOrganization": reference("Organization", &site.organization_id),
        });
    }
    for c in &plan.clinics {
        let s = &data::SITES[c.site];
        let (name, physical) = match c.svc.category {
            data::OUTPATIENT => (format!("{} Outpatient Clinic", c.svc.display), ("ro", "Room")),
            data::INPATIENT => (format!("{} Theatre", c.svc.display), ("ro", "Room")),
            data::DAY_CASE => (format!("{} Day Case Unit", c.svc.display), ("wa", "Ward")),
            _ => (c.svc.display.to_string(), ("wa", "Ward")),
        };
        out.push_back(obj! {
            "resourceType": "Location",
            "id": &c.loc_id,
            "extension": site_extension(s.code),
            "status": "active",
            "name": format!("{name}, {}", s.name),
            "mode": "instance",
            "physicalType": concept(PHYSICAL_TYPE, physical.0, physical.1),
            "managingOrganization": reference("Organization", &sites[c.site].organization_id),
            "partOf": reference("Location", &sites[c.site].location_id),
        });
    }
}

fn practitioners(plan: &Plan, out: &mut VecDeque<Value>) {
    for (n, p) in plan.practitioners.iter().enumerate() {
        out.push_back(obj! {
            "resourceType": "Practitioner",
            "id": prac_id(n),
            "identifier": arr![obj! { "system": GMC_SYSTEM, "value": p.gmc.to_string() }],
            "active": true,
            "name": arr![obj! { "use": "official", "family": p.family, "given": arr![p.given], "prefix": arr![p.prefix] }],
            "telecom": arr![obj! { "system": "phone", "value": data::SITES[p.site].phone, "use": "work" }],
            "gender": if p.female { "female" } else { "male" },
        });
    }
}

fn services(plan: &Plan, out: &mut VecDeque<Value>) {
    for c in &plan.clinics {
        let s = &data::SITES[c.site];
        let day_codes: Vec<&str> = ["mon", "tue", "wed", "thu", "fri"]
            .iter()
            .enumerate()
            .filter(|(i, _)| c.days & (1 << i) != 0)
            .map(|(_, d)| *d)
            .collect();
        let (open, close) = day_hours(c);
        out.push_back(obj! {
            "resourceType": "HealthcareService",
            "id": &c.hs_id,
            "active": true,
            "providedBy": reference("Organization", &plan.sites[c.site].organization_id),
            "category": arr![category_coding(c.svc.category)],
            "type": arr![service_concept(c.svc)],
            "location": arr![reference("Location", &c.loc_id)],
            "name": format!("{}, {}", c.svc.display, s.name),
            "telecom": arr![obj! { "system": "phone", "value": s.phone, "use": "work" }],
            "appointmentRequired": true,
            "availableTime": arr![
                obj! {
                    "daysOfWeek": day_codes,
                    "availableStartTime": format!("{:02}:{:02}:00", open / 60, open % 60),
                    "availableEndTime": format!("{:02}:{:02}:00", close / 60, close % 60),
                },
            ],
        });
    }
}

fn roles(plan: &Plan, out: &mut VecDeque<Value>) {
    let sites = &plan.sites;
    let mut role_n = 0;
    let mut role = |out: &mut VecDeque<Value>, prac: usize, c: Option<&Clinic>, specialty: &str| {
        role_n += 1;
        let p = &plan.practitioners[prac];
        let mut r = obj! {
            "resourceType": "PractitionerRole",
            "id": format!("role-{role_n:03}"),
            "active": true,
            "practitioner": reference("Practitioner", &prac_id(prac)),
            "organization": reference("Organization", &sites[p.site].organization_id),
            "code": arr![concept(PRACTITIONER_ROLE, "doctor", "Doctor")],
            "specialty": arr![obj! { "text": specialty }],
        };
        let m = r.as_object_mut().expect("object");
        match c {
            Some(c) => {
                m.insert("location".into(), arr![reference("Location", &c.loc_id)]);
                m.insert(
                    "healthcareService".into(),
                    arr![reference("HealthcareService", &c.hs_id)],
                );
            }
            None => {
                m.insert(
                    "location".into(),
                    arr![reference("Location", &sites[p.site].location_id)],
                );
            }
        }
        out.push_back(r);
    };
    for c in &plan.clinics {
        role(out, c.lead, Some(c), c.svc.specialty);
        if let Some(second) = c.second {
            role(out, second, Some(c), c.svc.specialty);
        }
    }
    for &r in &plan.radiologists {
        role(out, r, None, "Clinical radiology");
    }
}

fn schedules(plan: &Plan, out: &mut VecDeque<Value>) {
    let today = plan.today;
    for c in &plan.clinics {
        let mut sched = obj! {
            "resourceType": "Schedule",
            "id": &c.sched_id,
            "active": true,
            "serviceCategory": arr![category_coding(c.svc.category)],
            "serviceType": arr![service_concept(c.svc)],
            "actor": arr![reference("Location", &c.loc_id), reference("Practitioner", &prac_id(c.lead))],
            "planningHorizon": obj! {
                "start": fmt_instant(today, FIRST_DAY * 1440),
                "end": fmt_instant(today, (LAST_DAY + 1) * 1440),
            },
        };
        if let Layout::Chairs { chairs } = c.svc.layout {
            sched.as_object_mut().expect("object").insert(
                "comment".into(),
                Value::from(format!(
                    "{chairs} treatment chairs: slots overlap in time, one slot per chair."
                )),
            );
        }
        out.push_back(sched);
    }
}

/// Slot `slot-<index + 1>`.
fn slot_resource(plan: &Plan, index: usize) -> Value {
    let s = &plan.slots[index];
    let c = &plan.clinics[s.clinic];
    let mut slot = obj! {
        "resourceType": "Slot",
        "id": nid("slot", index + 1),
        "serviceCategory": arr![category_coding(c.svc.category)],
        "serviceType": arr![service_concept(c.svc)],
        "schedule": reference("Schedule", &c.sched_id),
        "status": "free",
        "start": fmt_instant(plan.today, s.start),
        "end": fmt_instant(plan.today, s.end),
    };
    if let Some(chair) = s.chair {
        slot.as_object_mut()
            .expect("object")
            .insert("comment".into(), Value::from(format!("Chair {chair}")));
    }
    slot
}

/// Opening and closing minute of a clinic's working day.
fn day_hours(c: &Clinic) -> (i64, i64) {
    match c.svc.layout {
        Layout::Clinic { .. } => (
            if c.sessions & data::AM != 0 {
                9 * 60
            } else {
                13 * 60 + 30
            },
            if c.sessions & data::PM != 0 {
                17 * 60
            } else {
                12 * 60 + 30
            },
        ),
        Layout::DayList { .. } => (
            if c.sessions & data::AM != 0 {
                8 * 60 + 30
            } else {
                13 * 60 + 30
            },
            if c.sessions & data::PM != 0 {
                17 * 60 + 30
            } else {
                12 * 60 + 30
            },
        ),
        Layout::Theatre { .. } | Layout::Chairs { .. } => (8 * 60 + 30, 17 * 60 + 30),
    }
}

/// One day's slots for a clinic: (start minute, end minute, chair).
fn day_slots(c: &Clinic) -> Vec<(i64, i64, Option<u8>)> {
    let mut v = Vec::new();
    let sessions = |v: &mut Vec<(i64, i64, Option<u8>)>, am: (i64, i64), pm: (i64, i64), len: i64| {
        for (bit, (from, to)) in [(data::AM, am), (data::PM, pm)] {
            if c.sessions & bit == 0 {
                continue;
            }
            let mut t = from;
            while t + len <= to {
                v.push((t, t + len, None));
                t += len;
            }
        }
    };
    match c.svc.layout {
        Layout::Clinic { len } => sessions(&mut v, (540, 750), (810, 1020), i64::from(len)),
        Layout::DayList { len } => sessions(&mut v, (510, 750), (810, 1050), i64::from(len)),
        Layout::Theatre { len } => {
            let len = i64::from(len);
            let mut t = 510;
            while t + len <= 1050 {
                v.push((t, t + len, None));
                t += len;
            }
        }
        Layout::Chairs { chairs } => {
            const DURATIONS: [i64; 3] = [60, 90, 120];
            for chair in 0..chairs {
                let mut t = 510;
                let mut k = usize::from(chair);
                loop {
                    let len = DURATIONS[k % 3];
                    if t + len > 1050 {
                        break;
                    }
                    v.push((t, t + len, Some(chair + 1)));
                    t += len;
                    k += 1;
                }
            }
            // Chronological within the day (stable: chair order breaks ties).
            v.sort_by_key(|&(start, _, chair)| (start, chair));
        }
    }
    v
}

/// NHS numbers in 999 000 0000 – 999 999 9999: walks the nine-digit prefixes
/// in a fixed permutation (stride coprime to 10^6), skipping prefixes whose
/// check digit would be 10, so numbers are unique without a set.
struct NhsNumbers {
    next: u64,
    offset: u64,
}

impl NhsNumbers {
    fn next_number(&mut self) -> String {
        loop {
            let block = (self.next / 1_000_000) as usize;
            assert!(block < NHS_PREFIX_BLOCKS.len(), "NHS test-range numbers exhausted");
            let within = self.next % 1_000_000;
            let prefix = NHS_PREFIX_BLOCKS[block] + (self.offset + within * 293_003) % 1_000_000;
            self.next += 1;
            if let Some(n) = util::nhs_number(prefix as u32) {
                return n;
            }
        }
    }
}

fn random_postcode(rng: &mut Rng, outward: &str) -> String {
    let l = data::POSTCODE_LETTERS;
    format!(
        "{outward} {}{}{}",
        rng.below(10),
        l[rng.below(l.len() as u64) as usize] as char,
        l[rng.below(l.len() as u64) as usize] as char
    )
}

fn drama_number(rng: &mut Rng, prefix: &str) -> String {
    format!("{prefix}{:03}", rng.below(1000))
}

/// One Patient resource.
fn patient(rng: &mut Rng, id: &str, nhs_number: &str, today: NaiveDate, gp_ids: &[String]) -> (Value, PatientInfo) {
    let gender = match rng.weighted(&[49, 49, 1, 1]) {
        0 => "male",
        1 => "female",
        2 => "other",
        _ => "unknown",
    };
    let female_names = match gender {
        "male" => false,
        "female" => true,
        _ => rng.chance(0.5),
    };
    let names = if female_names {
        data::FEMALE_NAMES
    } else {
        data::MALE_NAMES
    };
    let age = match rng.weighted(&[15, 25, 32, 23, 5]) {
        0 => rng.range(0, 17),
        1 => rng.range(18, 39),
        2 => rng.range(40, 64),
        3 => rng.range(65, 84),
        _ => rng.range(85, 99),
    };
    let birth = util::day(today, -(age * 365 + age / 4 + rng.range(1, 364)));
    let adult = age_on(birth, today) >= 18;

    let family = *rng.pick(data::SURNAMES);
    let given = *rng.pick(names);
    let mut given_names = vec![given];
    if rng.chance(0.3) {
        let middle = *rng.pick(names);
        if middle != given {
            given_names.push(middle);
        }
    }
    let mut name = obj! { "use": "official", "family": family, "given": given_names };
    if adult {
        let prefix = if rng.chance(0.02) {
            "Dr"
        } else {
            match gender {
                "male" => "Mr",
                "female" => *rng.pick(&["Mrs", "Ms", "Miss"]),
                "other" => "Mx",
                _ => "",
            }
        };
        if !prefix.is_empty() {
            name.as_object_mut()
                .expect("object")
                .insert("prefix".into(), arr![prefix]);
        }
    }

    let city = &data::CITIES[rng.weighted(&data::CITIES.iter().map(|c| c.weight).collect::<Vec<_>>())];
    let outward = *rng.pick(city.outward);
    let street = *rng.pick(data::STREETS);
    let number = rng.range(1, 180);
    let mut lines = Vec::new();
    if city.tenements && rng.chance(0.35) {
        lines.push(format!("Flat {}/{}", rng.range(0, 3), rng.range(1, 3)));
    }
    lines.push(format!("{number} {street}"));
    let address = obj! {
        "use": "home",
        "type": "physical",
        "line": lines,
        "city": city.name,
        "postalCode": random_postcode(rng, outward),
        "country": "GB",
    };

    let mut telecom = Vec::new();
    if !rng.chance(0.03) {
        let mobile = rng.chance(0.85);
        let landline = city.landline.filter(|_| rng.chance(0.45));
        if mobile || landline.is_none() {
            match (mobile, landline, city.landline) {
                (false, None, Some(prefix)) => telecom.push(obj! {
                    "system": "phone",
                    "value": drama_number(rng, prefix),
                    "use": "home",
                }),
                _ => telecom.push(obj! {
                    "system": "phone",
                    "value": drama_number(rng, data::MOBILE),
                    "use": "mobile",
                }),
            }
        }
        if let Some(prefix) = landline {
            telecom.push(obj! { "system": "phone", "value": drama_number(rng, prefix), "use": "home" });
        }
        if age >= 16 && rng.chance(0.3) {
            let email = format!(
                "{}.{}{}@example.com",
                util::ascii_fold(given),
                util::ascii_fold(family),
                rng.below(100)
            );
            telecom.push(obj! { "system": "email", "value": email, "use": "home" });
        }
    }

    let mut p = Map::with_capacity(12);
    p.insert("resourceType".into(), Value::from("Patient"));
    p.insert("id".into(), Value::from(id));
    p.insert(
        "identifier".into(),
        arr![obj! { "system": codes::NHS_NUMBER_SYSTEM, "value": nhs_number }],
    );
    p.insert("active".into(), Value::from(true));
    p.insert("name".into(), arr![name]);
    if !telecom.is_empty() {
        p.insert("telecom".into(), Value::Array(telecom));
    }
    p.insert("gender".into(), Value::from(gender));
    p.insert("birthDate".into(), Value::from(fmt_date(birth)));
    p.insert("address".into(), arr![address]);

    if rng.chance(if adult { 0.65 } else { 0.95 }) {
        let relation = *rng.pick(if adult { data::KIN_ADULT } else { data::KIN_CHILD });
        let (code, display, kin_female) = match relation {
            "Wife" => ("WIFE", "wife", Some(true)),
            "Husband" => ("HUSB", "husband", Some(false)),
            "Partner" => ("DOMPART", "domestic partner", None),
            "Daughter" => ("DAU", "natural daughter", Some(true)),
            "Son" => ("SON", "natural son", Some(false)),
            "Sister" => ("SIS", "sister", Some(true)),
            "Brother" => ("BRO", "brother", Some(false)),
            "Mother" => ("MTH", "mother", Some(true)),
            "Father" => ("FTH", "father", Some(false)),
            "Grandmother" => ("GRMTH", "grandmother", Some(true)),
            "Grandfather" => ("GRFTH", "grandfather", Some(false)),
            _ => ("FRND", "unrelated friend", None),
        };
        let kin_female = kin_female.unwrap_or_else(|| rng.chance(0.5));
        let kin_given = *rng.pick(if kin_female {
            data::FEMALE_NAMES
        } else {
            data::MALE_NAMES
        });
        let kin_family = if code != "FRND" && rng.chance(0.8) {
            family
        } else {
            *rng.pick(data::SURNAMES)
        };
        p.insert(
            "contact".into(),
            arr![obj! {
                "relationship": arr![
                    coded(CONTACT_ROLE, "N", "Next-of-Kin"),
                    obj! { "coding": arr![coding(ROLE_CODE, code, display)], "text": relation },
                ],
                "name": obj! { "use": "usual", "family": kin_family, "given": arr![kin_given] },
                "telecom": arr![
                    obj! { "system": "phone", "value": drama_number(rng, data::MOBILE), "use": "mobile" },
                ],
            },],
        );
    }
    let mut gp_index = None;
    if !city.gps.is_empty() && rng.chance(0.85) {
        let gp = *rng.pick(city.gps);
        gp_index = Some(gp as u16);
        p.insert(
            "generalPractitioner".into(),
            arr![reference("Organization", &gp_ids[gp])],
        );
    }
    (
        Value::Object(p),
        PatientInfo {
            birth,
            female: gender == "female",
            gp: gp_index,
        },
    )
}

/// The clinical resource types, in the order the board lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Allergy,
    Observation,
    Imaging,
    Report,
    Document,
}

impl Kind {
    fn next(self) -> Option<Kind> {
        match self {
            Kind::Allergy => Some(Kind::Observation),
            Kind::Observation => Some(Kind::Imaging),
            Kind::Imaging => Some(Kind::Report),
            Kind::Report => Some(Kind::Document),
            Kind::Document => None,
        }
    }
}

/// How many clinical resources of each type the patients so far have: the
/// last id given out (numbering runs across patients).
#[derive(Debug, Default)]
struct Counters {
    allergies: usize,
    observations: usize,
    imaging: usize,
    reports: usize,
    documents: usize,
}

/// The clinical data of patient `index`, drawn from its own PRNG stream;
/// only the resources of type `want` are built (onto `out`), but every draw
/// and every id is the same whatever `want` is, so that walking the patients
/// once per type gives each type's resources exactly as if they had all been
/// made together.
fn clinical(
    plan: &Plan,
    rng: &mut Rng,
    index: usize,
    info: PatientInfo,
    want: Kind,
    n: &mut Counters,
    out: &mut VecDeque<Value>,
) {
    let today = plan.today;
    let age_days = (today - info.birth).num_days();
    let subject = reference("Patient", &nid("pat", index + 1));

    // Allergies (~15%).
    if age_days > 60 && rng.chance(0.15) {
        let count = if rng.chance(0.8) { 1 } else { 2 };
        let weights: Vec<u32> = data::ALLERGENS.iter().map(|a| a.weight).collect();
        let first = rng.weighted(&weights);
        let mut chosen = vec![first];
        if count == 2 {
            let second = rng.weighted(&weights);
            if second != first {
                chosen.push(second);
            }
        }
        for a in chosen.into_iter().map(|k| &data::ALLERGENS[k]) {
            let manifestation = if a.kind == "intolerance" {
                *rng.pick(&data::MANIFESTATIONS[2..4])
            } else {
                *rng.pick(data::MANIFESTATIONS)
            };
            let severe = manifestation.0 == "39579001" || manifestation.0 == "267036007";
            let confirmed = rng.chance(0.8);
            let recorded = util::day(today, -rng.range(30, age_days.min(5000)));
            let severity = if severe {
                "severe"
            } else {
                *rng.pick(&["mild", "moderate"])
            };
            n.allergies += 1;
            if want != Kind::Allergy {
                continue;
            }
            let verification = if confirmed {
                coded(ALLERGY_VERIFICATION, "confirmed", "Confirmed")
            } else {
                coded(ALLERGY_VERIFICATION, "unconfirmed", "Unconfirmed")
            };
            out.push_back(obj! {
                "resourceType": "AllergyIntolerance",
                "id": nid("alg", n.allergies),
                "clinicalStatus": coded(ALLERGY_CLINICAL, "active", "Active"),
                "verificationStatus": verification,
                "type": a.kind,
                "category": arr![a.category],
                "criticality": if severe { "high" } else { "low" },
                "code": concept(SNOMED, a.code, a.display),
                "patient": &subject,
                "recordedDate": fmt_date(recorded),
                "reaction": arr![
                    obj! {
                        "manifestation": arr![concept(SNOMED, manifestation.0, manifestation.1)],
                        "severity": severity,
                    },
                ],
            });
        }
    }

    // Laboratory results (~50% of patients, 1-3 panels each).
    if rng.chance(0.5) {
        let panels = match rng.weighted(&[80, 17, 3]) {
            0 => 1,
            1 => 2,
            _ => 3,
        };
        let weights: Vec<u32> = data::PANELS.iter().map(|p| p.weight).collect();
        let (build_obs, build_report) = (want == Kind::Observation, want == Kind::Report);
        for _ in 0..panels {
            let panel = &data::PANELS[rng.weighted(&weights)];
            let effective = -rng.range(2, 90) * 1440 + rng.range(8 * 60, 16 * 60 + 59);
            let issued = effective + rng.range(120, 480);
            let (eff, iss) = (fmt_instant(today, effective), fmt_instant(today, issued));
            let mut results = Vec::new();
            for analyte in panel.analytes {
                let v = lab_value(rng, analyte);
                n.observations += 1;
                if build_obs {
                    let id = nid("obs", n.observations);
                    out.push_back(observation(&id, analyte, v, info.female, &subject, &eff, &iss));
                }
                if build_report {
                    results.push(reference("Observation", &nid("obs", n.observations)));
                }
            }
            let site = rng.below(plan.sites.len() as u64) as usize;
            n.reports += 1;
            if build_report {
                out.push_back(obj! {
                    "resourceType": "DiagnosticReport",
                    "id": nid("dr", n.reports),
                    "status": "final",
                    "category": arr![coded(DIAGNOSTIC_SERVICE, "LAB", "Laboratory")],
                    "code": obj! { "coding": arr![coding(LOINC, panel.loinc, panel.display)], "text": panel.text },
                    "subject": &subject,
                    "effectiveDateTime": eff,
                    "issued": iss,
                    "performer": arr![reference("Organization", &plan.sites[site].organization_id)],
                    "result": results,
                });
            }
        }
    }

    // Imaging (~10%), each study with a radiology report.
    if rng.chance(0.10) {
        let studies = if rng.chance(0.85) { 1 } else { 2 };
        let (build_study, build_report) = (want == Kind::Imaging, want == Kind::Report);
        for _ in 0..studies {
            let t = rng.pick(data::IMAGING);
            let started = -rng.range(2, 90) * 1440 + rng.range(8 * 60, 19 * 60 + 59);
            let study_uid = rng.u128_wide();
            let n_series = rng.range(t.series.0, t.series.1);
            let modality = coding(DICOM, t.modality, t.modality_display);
            let body = coding(SNOMED, t.body_code, t.body_display);
            let mut total = 0;
            let mut series = Vec::new();
            for s in 1..=n_series {
                let n_inst = rng.range(t.instances_per_series.0, t.instances_per_series.1);
                total += n_inst;
                let uid = rng.u128_wide();
                // Small series list their instances.
                let instance_uids: Vec<u128> = if n_inst <= 3 {
                    (0..n_inst).map(|_| rng.u128_wide()).collect()
                } else {
                    Vec::new()
                };
                if !build_study {
                    continue;
                }
                let mut se = obj! {
                    "uid": format!("2.25.{uid}"),
                    "number": s,
                    "modality": &modality,
                    "description": format!("{} series {s}", t.description),
                    "numberOfInstances": n_inst,
                    "bodySite": &body,
                    "started": fmt_instant(today, started + (s - 1) * 3),
                };
                if n_inst <= 3 {
                    let instances: Vec<Value> = (1..)
                        .zip(instance_uids)
                        .map(|(k, uid): (i64, u128)| {
                            obj! {
                                "uid": format!("2.25.{uid}"),
                                "sopClass": obj! {
                                    "system": "urn:ietf:rfc:3986",
                                    "code": format!("urn:oid:{}", t.sop_class),
                                },
                                "number": k,
                            }
                        })
                        .collect();
                    se.as_object_mut()
                        .expect("object")
                        .insert("instance".into(), Value::from(instances));
                }
                series.push(se);
            }
            n.imaging += 1;
            let img_id = nid("img", n.imaging);
            if build_study {
                out.push_back(obj! {
                    "resourceType": "ImagingStudy",
                    "id": &img_id,
                    "identifier": arr![obj! { "system": "urn:dicom:uid", "value": format!("urn:oid:2.25.{study_uid}") }],
                    "status": "available",
                    "modality": arr![&modality],
                    "subject": &subject,
                    "started": fmt_instant(today, started),
                    "numberOfSeries": n_series,
                    "numberOfInstances": total,
                    "description": t.description,
                    "series": series,
                });
            }
            let radiologist = *rng.pick(&plan.radiologists);
            let issued = started + rng.range(60, 1440);
            let conclusion = *rng.pick(t.conclusions);
            n.reports += 1;
            if build_report {
                out.push_back(obj! {
                    "resourceType": "DiagnosticReport",
                    "id": nid("dr", n.reports),
                    "status": "final",
                    "category": arr![coded(DIAGNOSTIC_SERVICE, "RAD", "Radiology")],
                    "code": obj! {
                        "coding": arr![coding(LOINC, "18748-4", "Diagnostic imaging study")],
                        "text": t.description,
                    },
                    "subject": &subject,
                    "effectiveDateTime": fmt_instant(today, started),
                    "issued": fmt_instant(today, issued),
                    "resultsInterpreter": arr![reference("Practitioner", &prac_id(radiologist))],
                    "imagingStudy": arr![reference("ImagingStudy", &img_id)],
                    "conclusion": conclusion,
                });
            }
        }
    }

    // Clinical notes (~30%).
    if rng.chance(0.30) {
        let count = match rng.weighted(&[75, 20, 5]) {
            0 => 1,
            1 => 2,
            _ => 3,
        };
        for _ in 0..count {
            let c = rng.pick(&plan.clinics);
            let author = match c.second {
                Some(second) if rng.chance(0.4) => second,
                _ => c.lead,
            };
            let text = *rng.pick(data::notes(c.svc.notes));
            let when = -rng.range(1, 180) * 1440 + rng.range(9 * 60, 17 * 60 + 30);
            n.documents += 1;
            if want != Kind::Document {
                continue;
            }
            let when = fmt_instant(today, when);
            let title = format!("{} progress note", c.svc.specialty);
            out.push_back(obj! {
                "resourceType": "DocumentReference",
                "id": nid("doc", n.documents),
                "status": "current",
                "docStatus": "final",
                "type": obj! {
                    "coding": arr![coding(LOINC, "11506-3", "Progress note")],
                    "text": "Progress note",
                },
                "subject": &subject,
                "date": &when,
                "author": arr![reference("Practitioner", &prac_id(author))],
                "description": &title,
                "content": arr![
                    obj! {
                        "attachment": obj! {
                            "contentType": "text/plain",
                            "language": "en-GB",
                            "data": util::base64(text.as_bytes()),
                            "title": title,
                            "creation": &when,
                        },
                    },
                ],
            });
        }
    }
}

fn quantity(analyte: &data::Analyte, v: i32) -> Value {
    let value = if analyte.dp == 0 {
        Value::from(v)
    } else {
        Value::from(f64::from(v) / 10.0)
    };
    obj! { "value": value, "unit": analyte.unit, "system": UCUM, "code": analyte.ucum }
}

/// A laboratory value (in tenths when `analyte.dp` is 1): mostly normal,
/// sometimes in the analyte's low or high band.
fn lab_value(rng: &mut Rng, analyte: &data::Analyte) -> i32 {
    let band = match rng.weighted(&[80, 10, 10]) {
        1 => analyte.low_band,
        2 => analyte.high_band,
        _ => None,
    };
    let (lo, hi) = band.unwrap_or(analyte.normal);
    rng.range(i64::from(lo), i64::from(hi)) as i32
}

fn observation(
    id: &str,
    analyte: &data::Analyte,
    v: i32,
    female: bool,
    subject: &Value,
    effective: &str,
    issued: &str,
) -> Value {
    let (low, high) = if female { analyte.female } else { analyte.male };
    let interpretation = if low.is_some_and(|l| v < l) {
        ("L", "Low")
    } else if high.is_some_and(|h| v > h) {
        ("H", "High")
    } else {
        ("N", "Normal")
    };
    let mut range = Map::new();
    if let Some(l) = low {
        range.insert("low".into(), quantity(analyte, l));
    }
    if let Some(h) = high {
        range.insert("high".into(), quantity(analyte, h));
    }
    obj! {
        "resourceType": "Observation",
        "id": id,
        "status": "final",
        "category": arr![coded(OBS_CATEGORY, "laboratory", "Laboratory")],
        "code": obj! { "coding": arr![coding(LOINC, analyte.loinc, analyte.display)], "text": analyte.text },
        "subject": subject,
        "effectiveDateTime": effective,
        "issued": issued,
        "valueQuantity": quantity(analyte, v),
        "interpretation": arr![coded(OBS_INTERPRETATION, interpretation.0, interpretation.1)],
        "referenceRange": arr![Value::Object(range)],
    }
}

/// Booking walks the slots in order, booking each one (or not) for a
/// random patient, one Appointment at a time.
struct Booking {
    rng: Rng,
    /// (start, end) of each patient's non-cancelled appointments, by patient
    /// index; only patients with appointments have an entry.
    busy: BTreeMap<usize, Vec<(i64, i64)>>,
    /// Index of the next slot to consider.
    next_slot: usize,
    /// Appointments made so far (the last `appt-` number).
    appointments: usize,
    /// The referral (ServiceRequest) the appointment just made is based on,
    /// to be written before it.
    referral: Option<Value>,
    /// Chemotherapy and inpatient appointments, booked or fulfilled, by patient index.
    treated: BTreeMap<usize, Vec<record::Treated>>,
}

impl Booking {
    /// The next Appointment, or None when every slot has been considered.
    /// Fulfilled appointments may also plan an Encounter (written after all
    /// the appointments).
    fn next(&mut self, plan: &Plan, patients: &[PatientInfo], encounters: &mut Vec<EncounterPlan>) -> Option<Value> {
        if patients.is_empty() {
            return None;
        }
        while self.next_slot < plan.slots.len() {
            let si = self.next_slot;
            self.next_slot += 1;
            if let Some(appointment) = self.book(plan, patients, si, encounters) {
                return Some(appointment);
            }
        }
        None
    }

    /// Book slot index `si`, if it is to be booked and a patient can take it.
    fn book(
        &mut self,
        plan: &Plan,
        patients: &[PatientInfo],
        si: usize,
        encounters: &mut Vec<EncounterPlan>,
    ) -> Option<Value> {
        let today = plan.today;
        let rng = &mut self.rng;
        let slot = &plan.slots[si];
        let day = slot.start.div_euclid(1440);
        let p_book = if day < 0 {
            0.88
        } else {
            0.9 - 0.35 * day as f64 / LAST_DAY as f64
        };
        if !rng.chance(p_book) {
            return None;
        }
        let c = &plan.clinics[slot.clinic];
        let category = c.svc.category;
        let date = util::day(today, day);
        let mut chosen = None;
        for _ in 0..12 {
            let p = rng.below(patients.len() as u64) as usize;
            if category != data::OUTPATIENT && age_on(patients[p].birth, date) < 18 {
                continue;
            }
            if date < patients[p].birth {
                continue;
            }
            let b = self.busy.get(&p).map_or(&[][..], Vec::as_slice);
            if b.len() >= MAX_ACTIVE_APPOINTMENTS || b.iter().any(|&(s, e)| s < slot.end && slot.start < e) {
                continue;
            }
            chosen = Some(p);
            break;
        }
        let p = chosen?;

        let status = if day < 0 {
            match rng.weighted(&[85, 7, 8]) {
                0 => "fulfilled",
                1 => "noshow",
                _ => "cancelled",
            }
        } else {
            "booked"
        };
        if status != "cancelled" {
            self.busy.entry(p).or_default().push((slot.start, slot.end));
        }
        self.appointments += 1;
        let appt_id = nid("appt", self.appointments);
        let pid = nid("pat", p + 1);
        let latest = day.min(0) - 1;

        // Extensions and the date the booking was made.
        let mut extension = Vec::new();
        let created_day;
        let mut referral_day = None;
        if category == data::CHEMO {
            let min = 3.max(day + 1);
            let dtt = day - rng.range(min, 35.max(min));
            created_day = rng.range(dtt, latest);
            extension.push(obj! {
                "url": codes::EXT_DECISION_TO_TREAT_DATE,
                "valueDate": fmt_date(util::day(today, dtt)),
            });
            extension.push(obj! {
                "url": codes::EXT_REGIMEN_WINDOW,
                "valuePeriod": obj! {
                    "start": fmt_date(util::day(today, day - rng.range(0, 3))),
                    "end": fmt_date(util::day(today, day + rng.range(2, 7))),
                },
            });
        } else if rng.chance(0.75) {
            let min = 14.max(day + 1);
            let referral = day - rng.range(min, 140.max(min));
            created_day = rng.range(referral, latest);
            extension.push(obj! {
                "url": codes::EXT_RTT_REFERRAL_DATE,
                "valueDate": fmt_date(util::day(today, referral)),
            });
            referral_day = Some(referral);
        } else {
            created_day = latest - rng.range(0, 42);
        }
        let created = created_day * 1440 + rng.range(8 * 60, 17 * 60 + 59);

        let priority = 1 + rng.weighted(match category {
            data::OUTPATIENT => &[5, 15, 25, 55],
            data::INPATIENT => &[5, 25, 30, 40],
            data::DAY_CASE => &[15, 25, 25, 35],
            _ => &[45, 40, 10, 5],
        }) as u64;
        debug_assert!((codes::PRIORITY_MIN..=codes::PRIORITY_MAX).contains(&priority));
        let appointment_type = match rng.weighted(match category {
            data::OUTPATIENT => &[50, 40, 10],
            data::INPATIENT => &[90, 10, 0],
            data::DAY_CASE => &[80, 15, 5],
            _ => &[20, 80, 0],
        }) {
            0 => ("ROUTINE", "Routine appointment - default if not valued"),
            1 => ("FOLLOWUP", "A follow up visit from a previous appointment"),
            _ => ("CHECKUP", "A routine check-up, such as an annual physical"),
        };

        let practitioner = prac_id(c.lead);
        let mut a = Map::with_capacity(16);
        a.insert("resourceType".into(), Value::from("Appointment"));
        a.insert("id".into(), Value::from(appt_id));
        if !extension.is_empty() {
            a.insert("extension".into(), Value::Array(extension));
        }
        a.insert("status".into(), Value::from(status));
        if status == "cancelled" {
            let (code, display, reasons): (&str, &str, &[&str]) = if rng.chance(0.6) {
                (
                    "patient",
                    "Cancelled by patient",
                    &[
                        "Patient unwell",
                        "Patient on holiday",
                        "Transport unavailable",
                        "Patient asked for a later date",
                    ],
                )
            } else {
                (
                    "provider",
                    "Cancelled by hospital",
                    &[
                        "Clinician unavailable",
                        "Theatre list overran",
                        "Equipment failure",
                        "Clinic rescheduled",
                    ],
                )
            };
            a.insert(
                "cancelationReason".into(),
                obj! { "coding": arr![coding(codes::CANCELLED_BY_SYSTEM, code, display)], "text": *rng.pick(reasons) },
            );
        }
        a.insert("serviceCategory".into(), arr![category_coding(category)]);
        a.insert("serviceType".into(), arr![service_concept(c.svc)]);
        a.insert(
            "appointmentType".into(),
            coded(APPOINTMENT_REASON, appointment_type.0, appointment_type.1),
        );
        a.insert("priority".into(), Value::from(priority));
        a.insert(
            "description".into(),
            Value::from(format!(
                "{} ({})",
                c.svc.display,
                codes::APPOINTMENT_CATEGORIES[category].1
            )),
        );
        a.insert("start".into(), Value::from(fmt_instant(today, slot.start)));
        a.insert("end".into(), Value::from(fmt_instant(today, slot.end)));
        a.insert("minutesDuration".into(), Value::from(slot.end - slot.start));
        a.insert("slot".into(), arr![reference("Slot", &nid("slot", si + 1))]);
        if let Some(referral) = referral_day {
            // The referral the RTT clock starts from, written before the appointment.
            let sr_id = nid("sr", self.appointments);
            let mut sr = obj! {
                "resourceType": "ServiceRequest",
                "id": &sr_id,
                "status": if status == "fulfilled" { "completed" } else { "active" },
                "intent": "order",
                "category": arr![concept(SNOMED, "3457005", "Patient referral")],
                "priority": if priority <= 2 { "urgent" } else { "routine" },
                "code": service_concept(c.svc),
                "subject": reference("Patient", &pid),
                "authoredOn": fmt_date(util::day(today, referral)),
                "performer": arr![reference("Organization", &plan.sites[c.site].organization_id)],
            };
            if let Some(gp) = patients[p].gp {
                sr["requester"] = reference("Organization", &plan.gp_ids[gp as usize]);
            }
            self.referral = Some(sr);
            a.insert("basedOn".into(), arr![reference("ServiceRequest", &sr_id)]);
        }
        if (category == data::CHEMO || category == data::INPATIENT) && matches!(status, "booked" | "fulfilled") {
            self.treated.entry(p).or_default().push(record::Treated {
                patient: p as u32,
                start: slot.start,
                chemo: category == data::CHEMO,
                given: status == "fulfilled",
                prescriber: c.lead as u32,
            });
        }
        a.insert("created".into(), Value::from(fmt_instant(today, created)));
        a.insert(
            "participant".into(),
            arr![
                obj! { "actor": reference("Patient", &pid), "required": "required", "status": "accepted" },
                obj! {
                    "actor": reference("Practitioner", &practitioner),
                    "required": "required",
                    "status": "accepted",
                },
                obj! { "actor": reference("Location", &c.loc_id), "required": "required", "status": "accepted" },
            ],
        );

        if status == "fulfilled" && rng.chance(0.4) {
            encounters.push(EncounterPlan {
                slot: si as u32,
                patient: p as u32,
                appointment: self.appointments as u32,
            });
        }
        Some(Value::Object(a))
    }
}

/// Encounter `enc-<index + 1>`, for a fulfilled appointment.
fn encounter_resource(plan: &Plan, index: usize, e: &EncounterPlan) -> Value {
    let today = plan.today;
    let slot = &plan.slots[e.slot as usize];
    let c = &plan.clinics[slot.clinic];
    let (class, class_display) = if c.svc.category == data::INPATIENT {
        ("IMP", "inpatient encounter")
    } else {
        ("AMB", "ambulatory")
    };
    obj! {
        "resourceType": "Encounter",
        "id": nid("enc", index + 1),
        "status": "finished",
        "class": obj! { "system": ACT_CODE, "code": class, "display": class_display },
        "serviceType": service_concept(c.svc),
        "subject": reference("Patient", &nid("pat", e.patient as usize + 1)),
        "participant": arr![obj! { "individual": reference("Practitioner", &prac_id(c.lead)) }],
        "appointment": arr![reference("Appointment", &nid("appt", e.appointment as usize))],
        "period": obj! { "start": fmt_instant(today, slot.start), "end": fmt_instant(today, slot.end) },
        "location": arr![obj! { "location": reference("Location", &c.loc_id), "status": "completed" }],
        "serviceProvider": reference("Organization", &plan.sites[c.site].organization_id),
    }
}
