//! Search parameter tables, extraction and query parsing (implementation).
//!
//! Each parameter is declared once, in [`params!`], together with where its
//! values come from ([`Src`]): the public [`SearchParamDef`] table and the
//! extraction table are generated side by side from that one list.

use crate::date;
use crate::outcome::{Issue, IssueCode};
use crate::resource_type::ResourceType;
use crate::search::*;
use serde_json::Value;

/// How the JSON found at a [`Src`] path becomes index values.
#[derive(Debug, Clone, Copy)]
enum As {
    /// Each `coding` -> Token(system, code).
    CodeableConcept,
    /// Token(system, code).
    Coding,
    /// Token(system, value).
    Identifier,
    /// A `code` primitive -> Token("", value).
    Code,
    /// A `boolean` primitive -> Token("", "true" | "false").
    Boolean,
    /// A ContactPoint whose `system` is the given one -> Token(use, normalised value).
    Telecom(&'static str),
    /// A string primitive -> Str(normalised).
    Str,
    /// Every part of a HumanName (family, given, prefix, suffix, text) -> Str.
    HumanName,
    /// date / dateTime / instant string, or a Period object -> Date.
    Date,
    /// The resource's own `start`..`end` (Appointment) -> Date.
    StartEnd,
    /// A Reference with a local `Type/id` -> Reference; only to that type when given.
    Ref(Option<ResourceType>),
    /// An `extension` element with this `url`: its `valueReference` -> Reference,
    /// `valueCode` / `valueBoolean` -> Token, `valueDate` / `valueDateTime` / `valuePeriod` -> Date.
    Extension(&'static str),
}

/// A dotted element path below the resource (arrays are walked through at
/// every step) and how to read what is found there.
#[derive(Debug, Clone, Copy)]
struct Src {
    path: &'static str,
    read: As,
}

const fn cc(path: &'static str) -> Src {
    Src {
        path,
        read: As::CodeableConcept,
    }
}
const fn coding(path: &'static str) -> Src {
    Src { path, read: As::Coding }
}
const fn ident(path: &'static str) -> Src {
    Src {
        path,
        read: As::Identifier,
    }
}
const fn code(path: &'static str) -> Src {
    Src { path, read: As::Code }
}
const fn boolean(path: &'static str) -> Src {
    Src {
        path,
        read: As::Boolean,
    }
}
const fn telecom(path: &'static str, system: &'static str) -> Src {
    Src {
        path,
        read: As::Telecom(system),
    }
}
const fn string(path: &'static str) -> Src {
    Src { path, read: As::Str }
}
const fn human_name(path: &'static str) -> Src {
    Src {
        path,
        read: As::HumanName,
    }
}
const fn date(path: &'static str) -> Src {
    Src { path, read: As::Date }
}
const fn reference(path: &'static str) -> Src {
    Src {
        path,
        read: As::Ref(None),
    }
}
const fn extension(url: &'static str) -> Src {
    Src {
        path: "extension",
        read: As::Extension(url),
    }
}
const fn reference_to(path: &'static str, target: ResourceType) -> Src {
    Src {
        path,
        read: As::Ref(Some(target)),
    }
}

macro_rules! params {
    ($defs:ident, $srcs:ident; $( $name:literal : $kind:ident, $path:literal, [$($t:ident),*] => [$($src:expr),* $(,)?] ;)+) => {
        static $defs: &[SearchParamDef] = &[$(
            SearchParamDef { name: $name, kind: ParamKind::$kind, path: $path, targets: &[$(ResourceType::$t),*] }
        ),+];
        static $srcs: &[&[Src]] = &[$(&[$($src),*]),+];
    };
}

use ResourceType::{Location as LocationT, Patient as PatientT, Practitioner as PractitionerT};

params! { COMMON, COMMON_SRC;
    "_id": Token, "Resource.id", [] => [];
    "_lastUpdated": Date, "Resource.meta.lastUpdated", [] => [date("meta.lastUpdated")];
    "_tag": Token, "Resource.meta.tag", [] => [coding("meta.tag")];
}

params! { PATIENT, PATIENT_SRC;
    "identifier": Token, "Patient.identifier", [] => [ident("identifier")];
    "name": String, "Patient.name (family, given, prefix, suffix, text)", [] => [human_name("name")];
    "family": String, "Patient.name.family", [] => [string("name.family")];
    "given": String, "Patient.name.given", [] => [string("name.given")];
    "birthdate": Date, "Patient.birthDate", [] => [date("birthDate")];
    "phone": Token, "Patient.telecom.where(system='phone')", [] => [telecom("telecom", "phone")];
    "email": Token, "Patient.telecom.where(system='email')", [] => [telecom("telecom", "email")];
    "gender": Token, "Patient.gender", [] => [code("gender")];
    "address-postalcode": String, "Patient.address.postalCode", [] => [string("address.postalCode")];
}

params! { PRACTITIONER, PRACTITIONER_SRC;
    "identifier": Token, "Practitioner.identifier", [] => [ident("identifier")];
    "name": String, "Practitioner.name (family, given, prefix, suffix, text)", [] => [human_name("name")];
    "family": String, "Practitioner.name.family", [] => [string("name.family")];
    "given": String, "Practitioner.name.given", [] => [string("name.given")];
}

params! { PRACTITIONER_ROLE, PRACTITIONER_ROLE_SRC;
    "practitioner": Reference, "PractitionerRole.practitioner", [Practitioner] => [reference("practitioner")];
    "organization": Reference, "PractitionerRole.organization", [Organization] => [reference("organization")];
    "location": Reference, "PractitionerRole.location", [Location] => [reference("location")];
    "service": Reference, "PractitionerRole.healthcareService", [HealthcareService] => [reference("healthcareService")];
    "specialty": Token, "PractitionerRole.specialty", [] => [cc("specialty")];
}

params! { ORGANIZATION, ORGANIZATION_SRC;
    "identifier": Token, "Organization.identifier", [] => [ident("identifier")];
    "name": String, "Organization.name | Organization.alias", [] => [string("name"), string("alias")];
}

params! { LOCATION, LOCATION_SRC;
    "identifier": Token, "Location.identifier", [] => [ident("identifier")];
    "name": String, "Location.name | Location.alias", [] => [string("name"), string("alias")];
    "organization": Reference, "Location.managingOrganization", [Organization] => [reference("managingOrganization")];
    "type": Token, "Location.type", [] => [cc("type")];
}

params! { HEALTHCARE_SERVICE, HEALTHCARE_SERVICE_SRC;
    "identifier": Token, "HealthcareService.identifier", [] => [ident("identifier")];
    "name": String, "HealthcareService.name", [] => [string("name")];
    "organization": Reference, "HealthcareService.providedBy", [Organization] => [reference("providedBy")];
    "location": Reference, "HealthcareService.location", [Location] => [reference("location")];
    "service-type": Token, "HealthcareService.type", [] => [cc("type")];
    "service-category": Token, "HealthcareService.category", [] => [cc("category")];
}

params! { SCHEDULE, SCHEDULE_SRC;
    "actor": Reference, "Schedule.actor", [Patient, Practitioner, PractitionerRole, Location, HealthcareService] => [reference("actor")];
    "active": Token, "Schedule.active", [] => [boolean("active")];
    "date": Date, "Schedule.planningHorizon", [] => [date("planningHorizon")];
}

params! { SLOT, SLOT_SRC;
    "schedule": Reference, "Slot.schedule", [Schedule] => [reference("schedule")];
    "start": Date, "Slot.start", [] => [date("start")];
    "status": Token, "Slot.status", [] => [code("status")];
    "service-type": Token, "Slot.serviceType", [] => [cc("serviceType")];
}

params! { APPOINTMENT, APPOINTMENT_SRC;
    "identifier": Token, "Appointment.identifier", [] => [ident("identifier")];
    "patient": Reference, "Appointment.participant.actor.where(resolve() is Patient)", [Patient] => [reference_to("participant.actor", PatientT)];
    "date": Date, "Appointment.start .. Appointment.end", [] => [Src { path: "", read: As::StartEnd }];
    "status": Token, "Appointment.status", [] => [code("status")];
    "location": Reference, "Appointment.participant.actor.where(resolve() is Location)", [Location] => [reference_to("participant.actor", LocationT)];
    "practitioner": Reference, "Appointment.participant.actor.where(resolve() is Practitioner)", [Practitioner] => [reference_to("participant.actor", PractitionerT)];
    "actor": Reference, "Appointment.participant.actor", [Patient, Practitioner, PractitionerRole, Location, HealthcareService] => [reference("participant.actor")];
    "service-type": Token, "Appointment.serviceType", [] => [cc("serviceType")];
    "service-category": Token, "Appointment.serviceCategory", [] => [cc("serviceCategory")];
    "appointment-type": Token, "Appointment.appointmentType", [] => [cc("appointmentType")];
    "slot": Reference, "Appointment.slot", [Slot] => [reference("slot")];
    "incident": Reference, "Appointment.extension('https://hale.health/fhir/StructureDefinition/outage-incident')", [Basic] => [extension(crate::codes::EXT_OUTAGE_INCIDENT)];
    "rebooked-from": Reference, "Appointment.extension('https://hale.health/fhir/StructureDefinition/rebooked-from')", [Appointment] => [extension(crate::codes::EXT_REBOOKED_FROM)];
}

params! { ENCOUNTER, ENCOUNTER_SRC;
    "patient": Reference, "Encounter.subject.where(resolve() is Patient)", [Patient] => [reference_to("subject", PatientT)];
    "subject": Reference, "Encounter.subject", [Patient] => [reference("subject")];
    "date": Date, "Encounter.period", [] => [date("period")];
    "status": Token, "Encounter.status", [] => [code("status")];
    "class": Token, "Encounter.class", [] => [coding("class")];
    "location": Reference, "Encounter.location.location", [Location] => [reference("location.location")];
    "appointment": Reference, "Encounter.appointment", [Appointment] => [reference("appointment")];
}

params! { OBSERVATION, OBSERVATION_SRC;
    "patient": Reference, "Observation.subject.where(resolve() is Patient)", [Patient] => [reference_to("subject", PatientT)];
    "subject": Reference, "Observation.subject", [Patient, Location] => [reference("subject")];
    "code": Token, "Observation.code", [] => [cc("code")];
    "date": Date, "Observation.effective[x] (dateTime, Period, instant)", [] => [date("effectiveDateTime"), date("effectivePeriod"), date("effectiveInstant")];
    "category": Token, "Observation.category", [] => [cc("category")];
    "status": Token, "Observation.status", [] => [code("status")];
    "encounter": Reference, "Observation.encounter", [Encounter] => [reference("encounter")];
}

params! { DIAGNOSTIC_REPORT, DIAGNOSTIC_REPORT_SRC;
    "patient": Reference, "DiagnosticReport.subject.where(resolve() is Patient)", [Patient] => [reference_to("subject", PatientT)];
    "subject": Reference, "DiagnosticReport.subject", [Patient, Location] => [reference("subject")];
    "code": Token, "DiagnosticReport.code", [] => [cc("code")];
    "date": Date, "DiagnosticReport.effective[x] (dateTime, Period)", [] => [date("effectiveDateTime"), date("effectivePeriod")];
    "status": Token, "DiagnosticReport.status", [] => [code("status")];
    "category": Token, "DiagnosticReport.category", [] => [cc("category")];
    "result": Reference, "DiagnosticReport.result", [Observation] => [reference("result")];
}

params! { IMAGING_STUDY, IMAGING_STUDY_SRC;
    "patient": Reference, "ImagingStudy.subject.where(resolve() is Patient)", [Patient] => [reference_to("subject", PatientT)];
    "subject": Reference, "ImagingStudy.subject", [Patient] => [reference("subject")];
    "started": Date, "ImagingStudy.started", [] => [date("started")];
    "status": Token, "ImagingStudy.status", [] => [code("status")];
    "modality": Token, "ImagingStudy.series.modality", [] => [coding("series.modality")];
}

params! { DOCUMENT_REFERENCE, DOCUMENT_REFERENCE_SRC;
    "patient": Reference, "DocumentReference.subject.where(resolve() is Patient)", [Patient] => [reference_to("subject", PatientT)];
    "subject": Reference, "DocumentReference.subject", [Patient, Practitioner] => [reference("subject")];
    "date": Date, "DocumentReference.date", [] => [date("date")];
    "type": Token, "DocumentReference.type", [] => [cc("type")];
    "status": Token, "DocumentReference.status", [] => [code("status")];
    "category": Token, "DocumentReference.category", [] => [cc("category")];
}

params! { ALLERGY_INTOLERANCE, ALLERGY_INTOLERANCE_SRC;
    "patient": Reference, "AllergyIntolerance.patient", [Patient] => [reference("patient")];
    "code": Token, "AllergyIntolerance.code", [] => [cc("code")];
    "clinical-status": Token, "AllergyIntolerance.clinicalStatus", [] => [cc("clinicalStatus")];
}

params! { AUDIT_EVENT, AUDIT_EVENT_SRC;
    "patient": Reference, "AuditEvent.entity.what.where(resolve() is Patient)", [Patient] => [reference_to("entity.what", PatientT)];
    "agent": Reference, "AuditEvent.agent.who", [Practitioner, PractitionerRole, Organization, Patient] => [reference("agent.who")];
    "date": Date, "AuditEvent.recorded", [] => [date("recorded")];
    "action": Token, "AuditEvent.action", [] => [code("action")];
    "entity": Reference, "AuditEvent.entity.what", [
        Patient, Practitioner, PractitionerRole, Organization, Location, HealthcareService, Schedule, Slot,
        Appointment, Encounter, Observation, DiagnosticReport, ImagingStudy, DocumentReference, AllergyIntolerance, AuditEvent,
        Basic, Communication
    ] => [reference("entity.what")];
    "outcome": Token, "AuditEvent.outcome", [] => [code("outcome")];
}

params! { BASIC, BASIC_SRC;
    "identifier": Token, "Basic.identifier", [] => [ident("identifier")];
    "code": Token, "Basic.code", [] => [cc("code")];
    "created": Date, "Basic.created", [] => [date("created")];
    "subject": Reference, "Basic.subject", [Patient, Organization, Location] => [reference("subject")];
    "author": Reference, "Basic.author", [Practitioner, PractitionerRole, Organization, Patient] => [reference("author")];
}

params! { COMMUNICATION, COMMUNICATION_SRC;
    "identifier": Token, "Communication.identifier", [] => [ident("identifier")];
    "status": Token, "Communication.status", [] => [code("status")];
    "category": Token, "Communication.category", [] => [cc("category")];
    "medium": Token, "Communication.medium", [] => [cc("medium")];
    "subject": Reference, "Communication.subject", [Patient] => [reference("subject")];
    "patient": Reference, "Communication.subject.where(resolve() is Patient)", [Patient] => [reference_to("subject", PatientT)];
    "recipient": Reference, "Communication.recipient", [Patient, Practitioner, PractitionerRole, Organization] => [reference("recipient")];
    "about": Reference, "Communication.about", [Appointment, Encounter, Patient, Basic] => [reference("about")];
    "sent": Date, "Communication.sent", [] => [date("sent")];
    "received": Date, "Communication.received", [] => [date("received")];
}

fn table(rtype: ResourceType) -> (&'static [SearchParamDef], &'static [&'static [Src]]) {
    use ResourceType::*;
    match rtype {
        Patient => (PATIENT, PATIENT_SRC),
        Practitioner => (PRACTITIONER, PRACTITIONER_SRC),
        PractitionerRole => (PRACTITIONER_ROLE, PRACTITIONER_ROLE_SRC),
        Organization => (ORGANIZATION, ORGANIZATION_SRC),
        Location => (LOCATION, LOCATION_SRC),
        HealthcareService => (HEALTHCARE_SERVICE, HEALTHCARE_SERVICE_SRC),
        Schedule => (SCHEDULE, SCHEDULE_SRC),
        Slot => (SLOT, SLOT_SRC),
        Appointment => (APPOINTMENT, APPOINTMENT_SRC),
        Encounter => (ENCOUNTER, ENCOUNTER_SRC),
        Observation => (OBSERVATION, OBSERVATION_SRC),
        DiagnosticReport => (DIAGNOSTIC_REPORT, DIAGNOSTIC_REPORT_SRC),
        ImagingStudy => (IMAGING_STUDY, IMAGING_STUDY_SRC),
        DocumentReference => (DOCUMENT_REFERENCE, DOCUMENT_REFERENCE_SRC),
        AllergyIntolerance => (ALLERGY_INTOLERANCE, ALLERGY_INTOLERANCE_SRC),
        AuditEvent => (AUDIT_EVENT, AUDIT_EVENT_SRC),
        Basic => (BASIC, BASIC_SRC),
        Communication => (COMMUNICATION, COMMUNICATION_SRC),
    }
}

pub(crate) fn params_for(rtype: ResourceType) -> &'static [SearchParamDef] {
    table(rtype).0
}

/// The definition and value sources of `name` on `rtype` (its own or a common one).
fn lookup(rtype: ResourceType, name: &str) -> Option<(&'static SearchParamDef, &'static [Src])> {
    let (defs, srcs) = table(rtype);
    [(defs, srcs), (COMMON, COMMON_SRC)]
        .into_iter()
        .find_map(|(d, s)| d.iter().position(|p| p.name == name).map(|i| (&d[i], s[i])))
}

pub(crate) fn find(rtype: ResourceType, name: &str) -> Option<&'static SearchParamDef> {
    lookup(rtype, name).map(|(d, _)| d)
}

// ---------------------------------------------------------------------------
// Extraction

pub(crate) fn extract(rtype: ResourceType, resource: &Value) -> Vec<IndexEntry> {
    let (defs, srcs) = table(rtype);
    let mut out = Vec::new();
    for (d, s) in [(defs, srcs), (COMMON, COMMON_SRC)] {
        for (def, sources) in d.iter().zip(s.iter()) {
            for src in *sources {
                walk(resource, src.path, &mut |v| read(def.name, src.read, v, &mut out));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Call `f` on every value at the dotted `path` below `v`, flattening arrays.
fn walk<'a>(v: &'a Value, path: &str, f: &mut impl FnMut(&'a Value)) {
    match v {
        Value::Array(items) => items.iter().for_each(|item| walk(item, path, f)),
        _ if path.is_empty() => f(v),
        Value::Object(obj) => {
            let (head, rest) = path.split_once('.').unwrap_or((path, ""));
            if let Some(child) = obj.get(head) {
                walk(child, rest, f);
            }
        }
        _ => {}
    }
}

fn read(param: &'static str, how: As, v: &Value, out: &mut Vec<IndexEntry>) {
    let mut push = |value| out.push(IndexEntry { param, value });
    let text = |key: &str| v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty());
    let token = |system: Option<&str>, code: &str| IndexValue::Token {
        system: system.unwrap_or("").to_string(),
        code: code.to_string(),
    };
    match how {
        As::CodeableConcept => {
            for c in v.get("coding").and_then(Value::as_array).into_iter().flatten() {
                if let Some(code) = c.get("code").and_then(Value::as_str).filter(|s| !s.is_empty()) {
                    push(token(c.get("system").and_then(Value::as_str), code));
                }
            }
        }
        As::Coding => {
            if let Some(code) = text("code") {
                push(token(text("system"), code));
            }
        }
        As::Identifier => {
            if let Some(value) = text("value") {
                // NHS numbers are indexed without the spaces of the "943 476 5919" layout.
                if text("system") == Some(crate::codes::NHS_NUMBER_SYSTEM) {
                    push(token(text("system"), &crate::nhs::normalise(value)));
                } else {
                    push(token(text("system"), value));
                }
            }
        }
        As::Code => {
            if let Some(s) = v.as_str().filter(|s| !s.is_empty()) {
                push(token(None, s));
            }
        }
        As::Boolean => {
            if let Some(b) = v.as_bool() {
                push(token(None, if b { "true" } else { "false" }));
            }
        }
        As::Telecom(system) => {
            if text("system") == Some(system) {
                if let Some(code) = text("value")
                    .map(|s| normalise_token(system, s))
                    .filter(|s| !s.is_empty())
                {
                    push(IndexValue::Token {
                        system: text("use").unwrap_or("").to_string(),
                        code,
                    });
                }
            }
        }
        As::Str => {
            if let Some(s) = v.as_str().map(normalise_string).filter(|s| !s.is_empty()) {
                push(IndexValue::Str(s));
            }
        }
        As::HumanName => {
            for key in ["family", "given", "prefix", "suffix", "text"] {
                walk(v, key, &mut |part| {
                    if let Some(s) = part.as_str().map(normalise_string).filter(|s| !s.is_empty()) {
                        push(IndexValue::Str(s));
                    }
                });
            }
        }
        As::Date => {
            let range = match v {
                Value::String(s) => date::parse_range_ms(s),
                Value::Object(_) => period_range(v),
                _ => None,
            };
            if let Some((start_ms, end_ms)) = range {
                push(IndexValue::Date { start_ms, end_ms });
            }
        }
        As::StartEnd => {
            let start = text("start").and_then(date::parse_range_ms);
            let end = text("end").and_then(date::parse_range_ms);
            // An appointment with only a start is indexed as that instant's own range;
            // one with only an end breaks R4 invariant app-2 and is not indexed.
            let range = match (start, end) {
                (Some(s), Some(e)) => Some((s.0, e.1)),
                (Some(s), None) => Some(s),
                _ => None,
            };
            if let Some((start_ms, end_ms)) = range {
                push(IndexValue::Date { start_ms, end_ms });
            }
        }
        As::Ref(target) => {
            if let Some((rtype, id)) = text("reference").and_then(local_reference) {
                if target.is_none_or(|t| t.as_str() == rtype) {
                    push(IndexValue::Reference {
                        rtype: rtype.to_string(),
                        id: id.to_string(),
                    });
                }
            }
        }
        As::Extension(url) => {
            if text("url") != Some(url) {
                return;
            }
            if let Some(r) = v.get("valueReference") {
                read(param, As::Ref(None), r, out);
            } else if let Some(c) = v.get("valueCode") {
                read(param, As::Code, c, out);
            } else if let Some(b) = v.get("valueBoolean") {
                read(param, As::Boolean, b, out);
            } else if let Some(d) = ["valueDate", "valueDateTime", "valuePeriod"]
                .iter()
                .find_map(|k| v.get(*k))
            {
                read(param, As::Date, d, out);
            }
        }
    }
}

/// A Period as an inclusive range: a missing start is open (`i64::MIN`), a
/// missing end is open (`i64::MAX`). Unparseable bounds make the Period unindexed.
fn period_range(p: &Value) -> Option<(i64, i64)> {
    let bound = |key: &str| match p.get(key).and_then(Value::as_str) {
        None => Some(None),
        Some(s) => date::parse_range_ms(s).map(Some),
    };
    let (start, end) = (bound("start")?, bound("end")?);
    if start.is_none() && end.is_none() {
        return None;
    }
    Some((start.map_or(i64::MIN, |r| r.0), end.map_or(i64::MAX, |r| r.1)))
}

/// `Type/id` (optionally with `/_history/n`) as (type, id). Absolute URLs,
/// `urn:` references and contained `#x` references are not local: None.
pub(crate) fn local_reference(r: &str) -> Option<(&str, &str)> {
    if r.starts_with('#') || r.contains(':') {
        return None;
    }
    let r = strip_history(r);
    let (rtype, id) = r.split_once('/')?;
    (is_type_name(rtype) && is_id(id)).then_some((rtype, id))
}

fn strip_history(r: &str) -> &str {
    r.find("/_history/").map_or(r, |i| &r[..i])
}

fn is_type_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_uppercase()) && s.bytes().all(|b| b.is_ascii_alphabetic())
}

/// The FHIR `id` format: 1..=64 of `[A-Za-z0-9-.]`.
fn is_id(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Normalise a string for indexing and searching: surrounding whitespace
/// trimmed, inner runs of whitespace collapsed to one space, lower case, common
/// Latin accents and ligatures folded (é -> e, ß -> ss, æ -> ae, ł -> l, …) and
/// combining marks dropped.
pub(crate) fn normalise_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    for c in s.trim().chars().flat_map(char::to_lowercase) {
        if c.is_whitespace() {
            space = true;
            continue;
        }
        if ('\u{300}'..='\u{36f}').contains(&c) {
            continue; // combining diacritical marks
        }
        if space {
            out.push(' ');
            space = false;
        }
        match fold(c) {
            Some(f) => out.push_str(f),
            None => out.push(c),
        }
    }
    out
}

fn fold(c: char) -> Option<&'static str> {
    Some(match c {
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' | 'ă' | 'ą' => "a",
        'æ' => "ae",
        'ç' | 'ć' | 'ĉ' | 'ċ' | 'č' => "c",
        'ď' | 'đ' | 'ð' => "d",
        'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ĕ' | 'ė' | 'ę' | 'ě' => "e",
        'ĝ' | 'ğ' | 'ġ' | 'ģ' => "g",
        'ĥ' | 'ħ' => "h",
        'ì' | 'í' | 'î' | 'ï' | 'ĩ' | 'ī' | 'ĭ' | 'į' | 'ı' => "i",
        'ĳ' => "ij",
        'ĵ' => "j",
        'ķ' => "k",
        'ĺ' | 'ļ' | 'ľ' | 'ŀ' | 'ł' => "l",
        'ñ' | 'ń' | 'ņ' | 'ň' | 'ŉ' => "n",
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' | 'ŏ' | 'ő' => "o",
        'œ' => "oe",
        'ŕ' | 'ŗ' | 'ř' => "r",
        'ś' | 'ŝ' | 'ş' | 'š' | 'ș' => "s",
        'ß' => "ss",
        'ţ' | 'ť' | 'ŧ' | 'ț' => "t",
        'þ' => "th",
        'ù' | 'ú' | 'û' | 'ü' | 'ũ' | 'ū' | 'ŭ' | 'ů' | 'ű' | 'ų' => "u",
        'ŵ' => "w",
        'ý' | 'ÿ' | 'ŷ' => "y",
        'ź' | 'ż' | 'ž' => "z",
        _ => return None,
    })
}

/// A phone number as indexed and searched: its digits only, keeping a leading `+`.
pub(crate) fn normalise_phone(s: &str) -> String {
    let s = s.trim();
    let plus = s.starts_with('+');
    let digits = s.chars().filter(char::is_ascii_digit);
    if plus {
        std::iter::once('+').chain(digits).collect()
    } else {
        digits.collect()
    }
}

/// Token codes of ContactPoints are normalised per system: phones to digits,
/// emails to trimmed lower case; other codes are kept as they are.
fn normalise_token(system: &str, code: &str) -> String {
    match system {
        "phone" => normalise_phone(code),
        "email" => code.trim().to_lowercase(),
        _ => code.to_string(),
    }
}

// ---------------------------------------------------------------------------
// Query parsing

/// At most this many notes are kept in `SearchQuery::ignored` (plus one saying so).
const IGNORED_MAX: usize = 32;

/// Result parameters accepted and ignored without a note.
const SILENTLY_IGNORED: &[&str] = &["_format", "_pretty"];

pub(crate) fn parse(rtype: ResourceType, pairs: &[(String, String)], strict: bool) -> Result<SearchQuery, Issue> {
    let mut q = SearchQuery {
        rtype,
        clauses: Vec::new(),
        count: COUNT_DEFAULT,
        offset: 0,
        sort: Vec::new(),
        includes: Vec::new(),
        ignored: Vec::new(),
    };
    let mut p = Parser {
        rtype,
        strict,
        ignored: Vec::new(),
    };
    for (key, value) in pairs {
        let (name, modifier) = match key.split_once(':') {
            Some((n, m)) => (n, Some(m)),
            None => (key.as_str(), None),
        };
        match (name, modifier) {
            (n, _) if SILENTLY_IGNORED.contains(&n) => {}
            ("_count", None) => q.count = parse_number(key, value)?.min(COUNT_MAX),
            ("_offset", None) => q.offset = parse_number(key, value)?.min(OFFSET_MAX),
            ("_sort", None) => p.sort(key, value, &mut q.sort)?,
            ("_include", None) => {
                if let Some(inc) = p.include(key, value)? {
                    if !q.includes.contains(&inc) {
                        q.includes.push(inc);
                    }
                }
            }
            _ => {
                if let Some(clause) = p.clause(key, name, modifier, value)? {
                    if q.clauses.len() == CLAUSES_MAX {
                        return Err(Issue::error(
                            IssueCode::TooCostly,
                            format!("too many search criteria: at most {CLAUSES_MAX} are allowed"),
                        )
                        .at(key.as_str()));
                    }
                    q.clauses.push(clause);
                }
            }
        }
    }
    q.ignored = p.ignored;
    Ok(q)
}

struct Parser {
    rtype: ResourceType,
    strict: bool,
    ignored: Vec<String>,
}

fn value_error(key: &str, msg: String) -> Issue {
    Issue::error(IssueCode::Value, msg).at(key)
}

fn parse_number(key: &str, value: &str) -> Result<usize, Issue> {
    let v = value.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(value_error(
            key,
            format!("{key} must be a non-negative whole number, found '{value}'"),
        ));
    }
    // All digits: only overflow can fail, and a huge number is clamped anyway.
    Ok(v.parse::<usize>().unwrap_or(usize::MAX))
}

impl Parser {
    /// Something we do not support: an error under strict handling, else a note.
    fn unsupported(&mut self, key: &str, note: String) -> Result<(), Issue> {
        if self.strict {
            return Err(Issue::error(IssueCode::NotSupported, note).at(key));
        }
        self.note(note);
        Ok(())
    }

    /// Record a note in `ignored`, keeping at most [`IGNORED_MAX`] of them.
    fn note(&mut self, note: String) {
        match self.ignored.len() {
            n if n < IGNORED_MAX => self.ignored.push(note),
            IGNORED_MAX => self
                .ignored
                .push("further ignored parameters are not listed".to_string()),
            _ => {}
        }
    }

    fn sort(&mut self, key: &str, value: &str, out: &mut Vec<SortKey>) -> Result<(), Issue> {
        for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, descending) = match item.strip_prefix('-') {
                Some(n) => (n, true),
                None => (item, false),
            };
            match find(self.rtype, name).filter(|d| d.kind == ParamKind::Date || d.name == "_id") {
                Some(def) => {
                    if !out.iter().any(|k| k.param == def.name) {
                        out.push(SortKey {
                            param: def.name,
                            descending,
                        });
                    }
                }
                None => self.unsupported(
                    key,
                    format!(
                        "sorting {} by '{name}' is not supported (only date parameters, _lastUpdated and _id)",
                        self.rtype
                    ),
                )?,
            }
        }
        Ok(())
    }

    fn include(&mut self, key: &str, value: &str) -> Result<Option<Include>, Issue> {
        let mut parts = value.split(':');
        let (Some(source), Some(param)) = (parts.next(), parts.next()) else {
            return Err(value_error(
                key,
                format!("_include must be Source:parameter[:Target], found '{value}'"),
            ));
        };
        let target = parts.next();
        if parts.next().is_some() {
            return Err(value_error(
                key,
                format!("_include must be Source:parameter[:Target], found '{value}'"),
            ));
        }
        if source == "*" || param == "*" || target == Some("*") {
            self.unsupported(key, format!("_include={value}: wildcard includes are not supported"))?;
            return Ok(None);
        }
        if source != self.rtype.as_str() {
            let note = format!(
                "_include={value}: only includes from the searched type {} are supported",
                self.rtype
            );
            self.unsupported(key, note)?;
            return Ok(None);
        }
        let Some(def) = find(self.rtype, param).filter(|d| d.kind == ParamKind::Reference) else {
            let note = format!(
                "_include={value}: '{param}' is not a reference parameter of {}",
                self.rtype
            );
            self.unsupported(key, note)?;
            return Ok(None);
        };
        let target = match target {
            None => None,
            Some(t) => match t.parse::<ResourceType>().ok().filter(|t| def.targets.contains(t)) {
                Some(t) => Some(t),
                None => {
                    self.unsupported(key, format!("_include={value}: '{param}' does not refer to '{t}'"))?;
                    return Ok(None);
                }
            },
        };
        Ok(Some(Include {
            source: self.rtype,
            param: def.name,
            target,
        }))
    }

    fn clause(&mut self, key: &str, name: &str, modifier: Option<&str>, value: &str) -> Result<Option<Clause>, Issue> {
        let Some((def, srcs)) = lookup(self.rtype, name) else {
            let note = if name.contains('.') {
                format!("chained parameter '{key}' is not supported")
            } else if name.starts_with('_') {
                format!("parameter '{key}' is not supported")
            } else {
                format!("unknown parameter '{key}' for {}", self.rtype)
            };
            self.unsupported(key, note)?;
            return Ok(None);
        };
        let mut clause = Clause {
            param: def.name,
            kind: def.kind,
            missing: None,
            alternatives: Vec::new(),
        };
        if modifier == Some("missing") {
            clause.missing = Some(match value {
                "true" => true,
                "false" => false,
                _ => {
                    return Err(value_error(
                        key,
                        format!("{key} must be 'true' or 'false', found '{value}'"),
                    ))
                }
            });
            return Ok(Some(clause));
        }
        // What the modifier means for this kind of parameter.
        let mut type_modifier = None;
        let string_mode = match (def.kind, modifier) {
            (_, None) => StrMode::Prefix,
            (ParamKind::String, Some("exact")) => StrMode::Exact,
            (ParamKind::String, Some("contains")) => StrMode::Contains,
            (ParamKind::Reference, Some(m)) if is_type_name(m) => {
                match m
                    .parse::<ResourceType>()
                    .ok()
                    .filter(|t| def.targets.is_empty() || def.targets.contains(t))
                {
                    Some(t) => type_modifier = Some(t),
                    None => return Err(value_error(key, format!("'{}' does not refer to {m}", def.name))),
                }
                StrMode::Prefix
            }
            (_, Some(m)) => {
                let note = format!(
                    "modifier ':{m}' is not supported on {} parameter '{}'",
                    def.kind.as_str(),
                    def.name
                );
                self.unsupported(key, note)?;
                return Ok(None);
            }
        };
        let pieces = split_unescaped(value, ',');
        if pieces.len() > ALTERNATIVES_MAX {
            return Err(Issue::error(
                IssueCode::TooCostly,
                format!("too many values for '{key}': at most {ALTERNATIVES_MAX} are allowed"),
            )
            .at(key));
        }
        for piece in pieces.into_iter().filter(|p| !p.is_empty()) {
            let pred = match def.kind {
                ParamKind::Token if def.name == "_id" => Predicate::Token {
                    system: None,
                    code: Some(unescape(piece)),
                },
                ParamKind::Token => token_predicate(key, piece, telecom_system(srcs))?,
                ParamKind::String => {
                    let s = normalise_string(&unescape(piece));
                    if s.is_empty() {
                        continue;
                    }
                    match string_mode {
                        StrMode::Prefix => Predicate::StrPrefix(s),
                        StrMode::Exact => Predicate::StrExact(s),
                        StrMode::Contains => Predicate::StrContains(s),
                    }
                }
                ParamKind::Date => date_predicate(key, &unescape(piece))?,
                ParamKind::Reference => reference_predicate(key, &unescape(piece), type_modifier)?,
            };
            clause.alternatives.push(pred);
        }
        if clause.alternatives.is_empty() {
            self.note(format!("parameter '{key}' has no value and was ignored"));
            return Ok(None);
        }
        Ok(Some(clause))
    }
}

#[derive(Clone, Copy)]
enum StrMode {
    Prefix,
    Exact,
    Contains,
}

/// The ContactPoint system a token parameter reads, if any (`phone`, `email`).
fn telecom_system(srcs: &[Src]) -> Option<&'static str> {
    srcs.iter().find_map(|s| match s.read {
        As::Telecom(system) => Some(system),
        _ => None,
    })
}

fn token_predicate(key: &str, piece: &str, telecom: Option<&str>) -> Result<Predicate, Issue> {
    let norm = |code: String| match telecom {
        Some(system) => normalise_token(system, &code),
        None => code,
    };
    let parts = split_unescaped(piece, '|');
    match parts.as_slice() {
        [code] => Ok(Predicate::Token {
            system: None,
            code: Some(norm(unescape(code))),
        }),
        [system, code] => {
            if system.is_empty() && code.is_empty() {
                return Err(value_error(key, format!("'{piece}' has neither a system nor a code")));
            }
            let mut code = (!code.is_empty()).then(|| norm(unescape(code)));
            if unescape(system) == crate::codes::NHS_NUMBER_SYSTEM {
                code = code.map(|c| crate::nhs::normalise(&c));
            }
            Ok(Predicate::Token {
                system: Some(unescape(system)),
                code,
            })
        }
        _ => Err(value_error(
            key,
            format!("'{piece}' is not a token: use system|code, |code, system| or code"),
        )),
    }
}

fn date_predicate(key: &str, piece: &str) -> Result<Predicate, Issue> {
    let (op, rest) = match piece.get(..2) {
        Some(p) if piece.as_bytes()[0].is_ascii_alphabetic() => {
            let op = match p {
                "eq" => DateOp::Eq,
                "ne" => DateOp::Ne,
                "gt" => DateOp::Gt,
                "lt" => DateOp::Lt,
                "ge" => DateOp::Ge,
                "le" => DateOp::Le,
                "sa" => DateOp::Sa,
                "eb" => DateOp::Eb,
                "ap" => {
                    return Err(Issue::error(
                        IssueCode::NotSupported,
                        "the date prefix 'ap' (approximately) is not supported",
                    )
                    .at(key))
                }
                _ => return Err(value_error(key, format!("'{piece}' is not a date search value"))),
            };
            (op, &piece[2..])
        }
        _ => (DateOp::Eq, piece),
    };
    let Some((start_ms, end_ms)) = date::parse_range_ms(rest) else {
        return Err(value_error(
            key,
            format!("'{piece}' is not a valid date: use [prefix]YYYY[-MM[-DD[Thh:mm[:ss[.sss]][Z|±hh:mm]]]]"),
        ));
    };
    Ok(Predicate::Date { op, start_ms, end_ms })
}

/// `Type/id`, a bare `id`, or an absolute URL ending in `Type/id` (a version
/// suffix `/_history/n` is dropped).
fn reference_predicate(key: &str, piece: &str, type_modifier: Option<ResourceType>) -> Result<Predicate, Issue> {
    let bad = || {
        value_error(
            key,
            format!("'{piece}' is not a reference: use Type/id, id, or a URL ending in Type/id"),
        )
    };
    let r = strip_history(piece);
    let (rtype, id) = match r.rsplit_once('/') {
        Some((head, id)) => {
            let t = head.rsplit('/').next().unwrap_or(head);
            if !is_type_name(t) {
                return Err(bad());
            }
            (Some(t.to_string()), id)
        }
        None => (None, r),
    };
    if !is_id(id) {
        return Err(bad());
    }
    let rtype = match (rtype, type_modifier) {
        (Some(t), Some(m)) if t != m.as_str() => {
            return Err(value_error(
                key,
                format!("'{piece}' is not a {m} reference, as the modifier :{m} requires"),
            ))
        }
        (t, m) => t.or_else(|| m.map(|m| m.as_str().to_string())),
    };
    Ok(Predicate::Reference {
        rtype,
        id: id.to_string(),
    })
}

/// Split on `sep` where it is not escaped with a backslash. Pieces keep their escapes.
fn split_unescaped(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            c if c == sep => {
                out.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// Remove search escapes: `\,` `\|` `\$` `\\` become `,` `|` `$` `\`.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n @ (',' | '|' | '$' | '\\')) => out.push(n),
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
#[path = "search_tests.rs"]
mod tests;
