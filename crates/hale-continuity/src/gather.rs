//! Reading a pack's data out of the store, through `hale_store::query`
//! (searches built with `hale_fhir::search::parse_query`), plus the store's
//! `meta` row `last_applied`.
//!
//! Which clinics belong to a site is read from the data: a Location carries
//! the site extension itself, or inherits it from its managing Organization
//! or the Location it is `partOf`; a Schedule belongs to the site when one of
//! its actors is such a Location. Ids are never parsed.

use crate::model::*;
use crate::time::{fhir_date, fhir_start_ms, rfc3339_utc, Zone};
use crate::{
    ContinuityError, PackOptions, ALERTS_PER_PATIENT_MAX, ALLERGIES_PER_PATIENT_MAX, APPOINTMENTS_PER_PACK_MAX,
    CHART_DOSES_PER_PATIENT_MAX, CONTACTS_PER_PATIENT_MAX, IMAGING_REPORTS_PER_PATIENT_MAX, LOCATIONS_MAX,
    MEDICINES_PER_PATIENT_MAX, MEDICINES_READ_PER_PATIENT_MAX, NOTES_PER_PATIENT_MAX, NOTE_CHARS_MAX,
    PATIENTS_PER_PACK_MAX, PROBLEMS_PER_PATIENT_MAX, RESULTS_PER_PATIENT_MAX, RESULTS_READ_PER_PATIENT_MAX,
    SCHEDULES_PER_SITE_MAX, SLOTS_PER_PACK_MAX, UPCOMING_PER_PATIENT_MAX,
};
use chrono::NaiveDate;
use hale_fhir::search::{parse_query, ALTERNATIVES_MAX, COUNT_MAX, OFFSET_MAX};
use hale_fhir::{codes, ResourceType};
use hale_store::query::{self, Current};
use hale_store::rusqlite::{Connection, OptionalExtension};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Appointment statuses that hold a place on a clinic list.
const LISTED_STATUSES: &[&str] = &["pending", "booked", "arrived", "checked-in", "fulfilled"];

/// HL7 v2 table 0131, contact role; code `N` is next of kin.
const CONTACT_ROLE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v2-0131";

/// How deep `Location.partOf` chains are followed to find a site.
const PART_OF_DEPTH_MAX: usize = 8;

/// A read transaction around generation, so that every query sees the same
/// state. Rolled back (it writes nothing) when dropped. When the caller
/// already holds a transaction, that one is used.
pub(crate) struct Snapshot<'c> {
    conn: &'c Connection,
    owned: bool,
}

impl<'c> Snapshot<'c> {
    pub(crate) fn begin(conn: &'c Connection) -> Result<Snapshot<'c>, ContinuityError> {
        let owned = conn.is_autocommit();
        if owned {
            conn.execute_batch("BEGIN DEFERRED")?;
        }
        Ok(Snapshot { conn, owned })
    }
}

impl Drop for Snapshot<'_> {
    fn drop(&mut self) {
        if self.owned {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

// ---- JSON helpers -----------------------------------------------------------

fn s<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|t| !t.trim().is_empty())
}

fn arr<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key).and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// CodeableConcept as words: its text, else the first coding's display, else its code.
fn concept_text(c: &Value) -> Option<String> {
    if let Some(t) = s(c, "text") {
        return Some(t.to_string());
    }
    let codings = arr(c, "coding");
    codings
        .iter()
        .find_map(|cd| s(cd, "display"))
        .or_else(|| codings.iter().find_map(|cd| s(cd, "code")))
        .map(str::to_string)
}

fn first_code(c: &Value) -> Option<&str> {
    arr(c, "coding").iter().find_map(|cd| s(cd, "code"))
}

fn reference(v: &Value) -> Option<(&str, &str)> {
    v.get("reference")
        .and_then(Value::as_str)
        .and_then(hale_fhir::search::parse_local_reference)
}

fn site_code(v: &Value) -> Option<String> {
    arr(v, "extension")
        .iter()
        .filter(|e| s(e, "url") == Some(codes::EXT_SITE))
        .find_map(|e| s(e, "valueCode").or_else(|| s(e, "valueString")))
        .map(|c| c.trim().to_ascii_uppercase())
}

fn json_number_text(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        Value::String(t) => Some(t.clone()),
        _ => None,
    }
}

/// Decode standard base64 (padding optional, whitespace ignored).
pub(crate) fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            b' ' | b'\n' | b'\r' | b'\t' => continue,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn person_name(v: &Value) -> PersonName {
    let names = arr(v, "name");
    let pick = names
        .iter()
        .find(|n| s(n, "use") == Some("official"))
        .or_else(|| names.iter().find(|n| s(n, "use") == Some("usual")))
        .or_else(|| names.iter().find(|n| !matches!(s(n, "use"), Some("old" | "maiden"))))
        .or(names.first());
    match pick {
        Some(n) => name_of(n),
        None => PersonName::default(),
    }
}

fn name_of(n: &Value) -> PersonName {
    let join = |key: &str| {
        arr(n, key)
            .iter()
            .filter_map(Value::as_str)
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    };
    PersonName {
        family: s(n, "family").unwrap_or_default().trim().to_string(),
        given: join("given"),
        prefix: join("prefix"),
        text: s(n, "text").unwrap_or_default().to_string(),
    }
}

fn contact_points(v: &Value, system: &str) -> Vec<ContactPoint> {
    arr(v, "telecom")
        .iter()
        .filter(|t| s(t, "system") == Some(system) && s(t, "use") != Some("old"))
        .filter_map(|t| {
            s(t, "value").map(|value| ContactPoint {
                value: value.trim().to_string(),
                usage: s(t, "use").map(str::to_string),
            })
        })
        .collect()
}

fn address_text(a: &Value) -> Option<String> {
    if let Some(t) = s(a, "text") {
        return Some(t.to_string());
    }
    let mut parts: Vec<&str> = arr(a, "line").iter().filter_map(Value::as_str).collect();
    for key in ["city", "district", "state", "postalCode"] {
        if let Some(p) = s(a, key) {
            parts.push(p);
        }
    }
    let parts: Vec<&str> = parts.into_iter().map(str::trim).filter(|p| !p.is_empty()).collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

// ---- Store access -------------------------------------------------------------

struct Store<'c> {
    conn: &'c Connection,
    /// Reads by "Type/id"; None when absent or deleted.
    cache: HashMap<String, Option<Value>>,
}

type Pairs<'a> = &'a [(&'a str, String)];

impl<'c> Store<'c> {
    fn parse(rtype: &str, id: &str, json: Option<String>) -> Result<Value, ContinuityError> {
        let json = json.unwrap_or_default();
        serde_json::from_str(&json).map_err(|e| ContinuityError::CorruptResource {
            rtype: rtype.to_string(),
            id: id.to_string(),
            detail: e.to_string(),
        })
    }

    fn read(&mut self, rtype: &str, id: &str) -> Result<Option<Value>, ContinuityError> {
        let key = format!("{rtype}/{id}");
        if let Some(v) = self.cache.get(&key) {
            return Ok(v.clone());
        }
        let v = match query::read(self.conn, rtype, id)? {
            Some(Current::Live(f)) => Some(Self::parse(rtype, id, f.json)?),
            _ => None,
        };
        self.cache.insert(key, v.clone());
        Ok(v)
    }

    fn read_ref(&mut self, r: &Value) -> Result<Option<Value>, ContinuityError> {
        match reference(r) {
            Some((t, id)) => self.read(t, id),
            None => Ok(None),
        }
    }

    fn query(
        &self,
        rtype: ResourceType,
        params: Pairs<'_>,
        count: usize,
        offset: usize,
    ) -> Result<query::SearchPage, ContinuityError> {
        let mut pairs: Vec<(String, String)> = params.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        pairs.push(("_count".into(), count.to_string()));
        if offset > 0 {
            pairs.push(("_offset".into(), offset.to_string()));
        }
        let q = parse_query(rtype, &pairs, true).map_err(|issue| ContinuityError::Query {
            rtype: rtype.as_str(),
            detail: issue.diagnostics,
        })?;
        Ok(query::search(self.conn, &q)?)
    }

    /// Every match, page by page; more than `max` is an error naming `what`.
    fn search_all(
        &self,
        rtype: ResourceType,
        params: Pairs<'_>,
        max: usize,
        what: &'static str,
    ) -> Result<Vec<Value>, ContinuityError> {
        let mut out = Vec::new();
        loop {
            if out.len() > OFFSET_MAX {
                return Err(ContinuityError::LimitExceeded {
                    what,
                    limit: OFFSET_MAX,
                });
            }
            let page = self.query(rtype, params, COUNT_MAX, out.len())?;
            let n = page.matches.len();
            for f in page.matches {
                out.push(Self::parse(rtype.as_str(), &f.id, f.json)?);
            }
            if out.len() > max {
                return Err(ContinuityError::LimitExceeded { what, limit: max });
            }
            if !page.has_more || n == 0 {
                return Ok(out);
            }
        }
    }

    /// The first `n` matches in the query's order.
    fn search_first(&self, rtype: ResourceType, params: Pairs<'_>, n: usize) -> Result<Vec<Value>, ContinuityError> {
        let page = self.query(rtype, params, n.clamp(1, COUNT_MAX), 0)?;
        page.matches
            .into_iter()
            .map(|f| Self::parse(rtype.as_str(), &f.id, f.json))
            .collect()
    }

    /// Number of matches.
    fn count(&self, rtype: ResourceType, params: Pairs<'_>) -> Result<usize, ContinuityError> {
        Ok(self.query(rtype, params, 0, 0)?.total.unwrap_or(0) as usize)
    }

    /// A Practitioner (or PractitionerRole's practitioner) as "Dr Ada Okafor".
    fn clinician_name(&mut self, r: &Value) -> Result<Option<String>, ContinuityError> {
        let Some((t, id)) = reference(r) else {
            return Ok(s(r, "display").map(str::to_string));
        };
        let found = match t {
            "Practitioner" => self.read(t, id)?,
            "PractitionerRole" => match self.read(t, id)? {
                Some(role) => match role.get("practitioner") {
                    Some(p) => self.read_ref(p)?,
                    None => None,
                },
                None => None,
            },
            _ => None,
        };
        Ok(found
            .map(|p| person_name(&p).natural_form())
            .filter(|n| !n.is_empty())
            .or_else(|| s(r, "display").map(str::to_string)))
    }

    /// A Location's name (or the reference's display).
    fn place_name(&mut self, r: &Value) -> Result<Option<String>, ContinuityError> {
        Ok(self
            .read_ref(r)?
            .and_then(|l| s(&l, "name").map(str::to_string))
            .or_else(|| s(r, "display").map(str::to_string)))
    }
}

fn last_applied(conn: &Connection) -> Result<u64, ContinuityError> {
    let v: Option<i64> = conn
        .query_row("SELECT value FROM meta WHERE key = 'last_applied'", [], |r| r.get(0))
        .optional()?;
    Ok(v.unwrap_or(0).max(0) as u64)
}

/// When the store last changed: the newest resource version or audit row.
/// Best effort (None if the store records neither).
fn last_change_ms(conn: &Connection) -> Option<i64> {
    let one = |sql: &str| -> Option<i64> { conn.query_row(sql, [], |r| r.get(0)).optional().ok().flatten() };
    let h = one("SELECT updated_ms FROM history ORDER BY hid DESC LIMIT 1");
    let a = one("SELECT time_ms FROM audit ORDER BY seq DESC LIMIT 1");
    h.max(a)
}

// ---- The site -------------------------------------------------------------------

struct SiteInfo {
    name: String,
    /// Location ids at the site, in id order.
    locations: BTreeSet<String>,
}

/// The site of a Location: its own extension, its managing Organization's,
/// or (up to [`PART_OF_DEPTH_MAX`] levels) the Location it is part of.
fn site_of<'a>(mut l: &'a Value, by_id: &HashMap<&str, &'a Value>, org_site: &HashMap<&str, String>) -> Option<String> {
    for _ in 0..PART_OF_DEPTH_MAX {
        if let Some(c) = site_code(l) {
            return Some(c);
        }
        if let Some(c) = l
            .get("managingOrganization")
            .and_then(reference)
            .and_then(|(_, id)| org_site.get(id))
        {
            return Some(c.clone());
        }
        l = l
            .get("partOf")
            .and_then(reference)
            .and_then(|(_, id)| by_id.get(id).copied())?;
    }
    None
}

fn find_site(store: &Store<'_>, site: &str) -> Result<SiteInfo, ContinuityError> {
    let orgs = store.search_all(ResourceType::Organization, &[], LOCATIONS_MAX, "Organizations")?;
    let locations = store.search_all(ResourceType::Location, &[], LOCATIONS_MAX, "Locations")?;
    let org_site: HashMap<&str, String> = orgs.iter().filter_map(|o| Some((s(o, "id")?, site_code(o)?))).collect();
    let by_id: HashMap<&str, &Value> = locations.iter().filter_map(|l| Some((s(l, "id")?, l))).collect();
    let site_of = |l: &Value| site_of(l, &by_id, &org_site);
    let mut known = BTreeSet::new();
    let mut at_site = BTreeSet::new();
    let mut building_name = None;
    for l in &locations {
        let Some(code) = site_of(l) else { continue };
        if code == site {
            if let Some(id) = s(l, "id") {
                at_site.insert(id.to_string());
            }
            if l.get("partOf").is_none() && site_code(l).is_some() {
                building_name = building_name.or_else(|| s(l, "name").map(str::to_string));
            }
        }
        known.insert(code);
    }
    if at_site.is_empty() {
        let known: Vec<String> = known.into_iter().collect();
        return Err(ContinuityError::UnknownSite {
            site: site.to_string(),
            known: if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            },
        });
    }
    let org_name = orgs
        .iter()
        .find(|o| site_code(o).as_deref() == Some(site))
        .and_then(|o| s(o, "name"))
        .map(str::to_string);
    Ok(SiteInfo {
        name: org_name.or(building_name).unwrap_or_else(|| site.to_string()),
        locations: at_site,
    })
}

// ---- Clinic lists ------------------------------------------------------------------

struct ScheduleInfo {
    location_id: Option<String>,
    clinic: String,
    lead: Option<String>,
    service: Option<String>,
}

struct SlotInfo {
    schedule_id: String,
    comment: Option<String>,
}

type SessionKey = (NaiveDate, String);

fn new_session(day: NaiveDate, key: &str, schedules: &BTreeMap<String, ScheduleInfo>) -> Session {
    match schedules.get(key) {
        Some(info) => Session {
            day,
            schedule_id: Some(key.to_string()),
            location_id: info.location_id.clone(),
            clinic: info.clinic.clone(),
            lead: info.lead.clone(),
            service: info.service.clone(),
            start_ms: None,
            end_ms: None,
            slots: 0,
            entries: Vec::new(),
        },
        None => Session {
            day,
            schedule_id: None,
            location_id: key.strip_prefix("location:").map(str::to_string),
            clinic: key.to_string(),
            lead: None,
            service: None,
            start_ms: None,
            end_ms: None,
            slots: 0,
            entries: Vec::new(),
        },
    }
}

fn category_text(appt: &Value) -> String {
    for c in arr(appt, "serviceCategory") {
        for cd in arr(c, "coding") {
            if s(cd, "system") == Some(codes::APPOINTMENT_CATEGORY_SYSTEM) {
                if let Some(code) = s(cd, "code") {
                    if let Some((_, display)) = codes::APPOINTMENT_CATEGORIES.iter().find(|(c, _)| *c == code) {
                        return display.to_string();
                    }
                }
            }
        }
        if let Some(t) = concept_text(c) {
            return t;
        }
    }
    String::new()
}

fn participants<'a>(appt: &'a Value, rtype: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    arr(appt, "participant")
        .iter()
        .filter_map(|p| p.get("actor"))
        .filter(move |a| reference(a).is_some_and(|(t, _)| t == rtype))
}

fn sessions(
    store: &mut Store<'_>,
    site: &SiteInfo,
    zone: Zone,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<Session>, ContinuityError> {
    // The site's schedules: those with a Location actor at the site.
    let mut schedules: BTreeMap<String, ScheduleInfo> = BTreeMap::new();
    let mut by_location: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for loc in &site.locations {
        let found = store.search_all(
            ResourceType::Schedule,
            &[("actor", format!("Location/{loc}"))],
            SCHEDULES_PER_SITE_MAX,
            "Schedules at one Location",
        )?;
        for sched in found {
            let Some(id) = s(&sched, "id").map(str::to_string) else {
                continue;
            };
            if sched.get("active").and_then(Value::as_bool) == Some(false) || schedules.contains_key(&id) {
                continue;
            }
            if schedules.len() >= SCHEDULES_PER_SITE_MAX {
                return Err(ContinuityError::LimitExceeded {
                    what: "Schedules at the site",
                    limit: SCHEDULES_PER_SITE_MAX,
                });
            }
            let actors = arr(&sched, "actor");
            let location_id = actors
                .iter()
                .filter_map(reference)
                .find(|(t, id)| *t == "Location" && site.locations.contains(*id))
                .map(|(_, id)| id.to_string());
            let clinic = match &location_id {
                Some(l) => store
                    .read("Location", l)?
                    .and_then(|v| s(&v, "name").map(str::to_string)),
                None => None,
            }
            .unwrap_or_else(|| id.clone());
            let mut lead = None;
            for a in actors {
                if matches!(reference(a), Some(("Practitioner" | "PractitionerRole", _))) {
                    lead = store.clinician_name(a)?;
                    if lead.is_some() {
                        break;
                    }
                }
            }
            let service = arr(&sched, "serviceType").iter().find_map(concept_text);
            if let Some(l) = &location_id {
                by_location.entry(l.clone()).or_default().push(id.clone());
            }
            schedules.insert(
                id,
                ScheduleInfo {
                    location_id,
                    clinic,
                    lead,
                    service,
                },
            );
        }
    }

    let from = rfc3339_utc(from_ms);
    let to = rfc3339_utc(to_ms);
    let mut out: BTreeMap<SessionKey, Session> = BTreeMap::new();
    let mut slots: HashMap<String, SlotInfo> = HashMap::new();
    for sched_id in schedules.keys() {
        let found = store.search_all(
            ResourceType::Slot,
            &[
                ("schedule", format!("Schedule/{sched_id}")),
                ("start", format!("ge{from}")),
                ("start", format!("lt{to}")),
                ("_sort", "start".into()),
            ],
            SLOTS_PER_PACK_MAX,
            "Slots in the pack's days",
        )?;
        for slot in found {
            let (Some(id), Some(start)) = (s(&slot, "id"), s(&slot, "start").and_then(fhir_start_ms)) else {
                continue;
            };
            if slots.len() >= SLOTS_PER_PACK_MAX {
                return Err(ContinuityError::LimitExceeded {
                    what: "Slots in the pack's days",
                    limit: SLOTS_PER_PACK_MAX,
                });
            }
            let end = s(&slot, "end").and_then(fhir_start_ms);
            let day = zone.local(start).date();
            let session = out
                .entry((day, sched_id.clone()))
                .or_insert_with(|| new_session(day, sched_id, &schedules));
            session.slots += 1;
            session.start_ms = Some(session.start_ms.map_or(start, |t| t.min(start)));
            if let Some(e) = end {
                session.end_ms = Some(session.end_ms.map_or(e, |t| t.max(e)));
            }
            slots.insert(
                id.to_string(),
                SlotInfo {
                    schedule_id: sched_id.clone(),
                    comment: s(&slot, "comment").map(str::to_string),
                },
            );
        }
    }

    // Appointments: those in the site's slots, and those at the site's
    // locations in the window (bookings made without a slot).
    let mut appointments: BTreeMap<String, Value> = BTreeMap::new();
    let mut slot_ids: Vec<&String> = slots.keys().collect();
    slot_ids.sort();
    for chunk in slot_ids.chunks(ALTERNATIVES_MAX) {
        let list: Vec<String> = chunk.iter().map(|id| format!("Slot/{id}")).collect();
        let found = store.search_all(
            ResourceType::Appointment,
            &[("slot", list.join(","))],
            APPOINTMENTS_PER_PACK_MAX,
            "Appointments on the pack's clinic lists",
        )?;
        for a in found {
            if let Some(id) = s(&a, "id") {
                appointments.insert(id.to_string(), a);
            }
        }
    }
    for loc in &site.locations {
        let found = store.search_all(
            ResourceType::Appointment,
            &[
                ("location", format!("Location/{loc}")),
                ("date", format!("ge{from}")),
                ("date", format!("lt{to}")),
            ],
            APPOINTMENTS_PER_PACK_MAX,
            "Appointments on the pack's clinic lists",
        )?;
        for a in found {
            if let Some(id) = s(&a, "id") {
                appointments.entry(id.to_string()).or_insert(a);
            }
        }
        if appointments.len() > APPOINTMENTS_PER_PACK_MAX {
            return Err(ContinuityError::LimitExceeded {
                what: "Appointments on the pack's clinic lists",
                limit: APPOINTMENTS_PER_PACK_MAX,
            });
        }
    }

    for (id, appt) in &appointments {
        let status = s(appt, "status").unwrap_or_default();
        if !LISTED_STATUSES.contains(&status) {
            continue;
        }
        let Some(start) = s(appt, "start").and_then(fhir_start_ms) else {
            continue;
        };
        if start < from_ms || start >= to_ms {
            continue;
        }
        // Which session: the slot's schedule, else the only schedule at its location, else the location.
        let mut slot_note = None;
        let mut key = None;
        for r in arr(appt, "slot") {
            if let Some((_, slot_id)) = reference(r) {
                if let Some(info) = slots.get(slot_id) {
                    key = Some(info.schedule_id.clone());
                    slot_note = info.comment.clone();
                    break;
                }
                if let Some(slot) = store.read("Slot", slot_id)? {
                    let sched = slot.get("schedule").and_then(reference).map(|(_, i)| i.to_string());
                    if let Some(sched) = sched.filter(|i| schedules.contains_key(i)) {
                        key = Some(sched);
                        slot_note = s(&slot, "comment").map(str::to_string);
                        break;
                    }
                }
            }
        }
        if key.is_none() {
            let loc = participants(appt, "Location")
                .filter_map(reference)
                .map(|(_, l)| l)
                .find(|l| site.locations.contains(*l));
            key = match loc {
                Some(l) => match by_location.get(l).map(Vec::as_slice) {
                    Some([only]) => Some(only.clone()),
                    _ => Some(format!("location:{l}")),
                },
                None => None,
            };
        }
        let Some(key) = key else { continue };
        let day = zone.local(start).date();
        let session = out
            .entry((day, key.clone()))
            .or_insert_with(|| new_session(day, &key, &schedules));
        if session.schedule_id.is_none() && session.clinic.starts_with("location:") {
            if let Some(l) = session.location_id.clone() {
                session.clinic = store
                    .read("Location", &l)?
                    .and_then(|v| s(&v, "name").map(str::to_string))
                    .unwrap_or(l);
            }
        }
        let mut clinician = None;
        for p in arr(appt, "participant").iter().filter_map(|p| p.get("actor")) {
            if matches!(reference(p), Some(("Practitioner" | "PractitionerRole", _))) {
                clinician = store.clinician_name(p)?;
                if clinician.is_some() {
                    break;
                }
            }
        }
        session.entries.push(Entry {
            appointment_id: id.clone(),
            start_ms: start,
            end_ms: s(appt, "end").and_then(fhir_start_ms),
            status: status.to_string(),
            patient_id: participants(appt, "Patient")
                .find_map(reference)
                .map(|(_, p)| p.to_string()),
            slot_note,
            category: category_text(appt),
            priority: appt.get("priority").and_then(Value::as_u64),
            clinician: clinician.or_else(|| session.lead.clone()),
            description: s(appt, "description").map(str::to_string),
        });
    }

    let mut list: Vec<Session> = out.into_values().collect();
    for session in &mut list {
        session.entries.sort_by(|a, b| {
            (a.start_ms, &a.slot_note, &a.appointment_id).cmp(&(b.start_ms, &b.slot_note, &b.appointment_id))
        });
    }
    list.sort_by(|a, b| {
        (a.day, a.sort_start_ms(), &a.clinic, &a.schedule_id, &a.location_id).cmp(&(
            b.day,
            b.sort_start_ms(),
            &b.clinic,
            &b.schedule_id,
            &b.location_id,
        ))
    });
    Ok(list)
}

// ---- Patient summaries -------------------------------------------------------------

fn allergies(store: &Store<'_>, pid: &str) -> Result<(Vec<Allergy>, usize), ContinuityError> {
    let found = store.search_first(
        ResourceType::AllergyIntolerance,
        &[("patient", format!("Patient/{pid}"))],
        COUNT_MAX,
    )?;
    let mut list: Vec<Allergy> = found
        .iter()
        .filter(|a| {
            let clinical = a.get("clinicalStatus").and_then(first_code);
            let verification = a.get("verificationStatus").and_then(first_code);
            !matches!(clinical, Some("inactive" | "resolved"))
                && !matches!(verification, Some("entered-in-error" | "refuted"))
        })
        .map(|a| {
            let reaction = arr(a, "reaction").first();
            Allergy {
                substance: a
                    .get("code")
                    .and_then(concept_text)
                    .unwrap_or_else(|| "(substance not recorded)".into()),
                reaction: reaction
                    .map(|r| {
                        arr(r, "manifestation")
                            .iter()
                            .filter_map(concept_text)
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .filter(|t| !t.is_empty()),
                severity: reaction.and_then(|r| s(r, "severity")).map(str::to_string),
                criticality: s(a, "criticality").map(str::to_string),
                verification: a.get("verificationStatus").and_then(first_code).map(str::to_string),
                recorded: s(a, "recordedDate").map(str::to_string),
            }
        })
        .collect();
    list.sort_by(|a, b| {
        let high = |x: &Allergy| x.criticality.as_deref() != Some("high");
        (high(a), &a.substance).cmp(&(high(b), &b.substance))
    });
    let omitted = list.len().saturating_sub(ALLERGIES_PER_PATIENT_MAX);
    list.truncate(ALLERGIES_PER_PATIENT_MAX);
    Ok((list, omitted))
}

fn alerts(store: &Store<'_>, pid: &str) -> Result<(Vec<Alert>, usize), ContinuityError> {
    let found = store.search_first(ResourceType::Flag, &[("patient", format!("Patient/{pid}"))], COUNT_MAX)?;
    // R4 has no `status` search parameter on Flag: active ones are picked here.
    let mut list: Vec<Alert> = found
        .iter()
        .filter(|f| s(f, "status") == Some("active"))
        .map(|f| Alert {
            text: f
                .get("code")
                .and_then(concept_text)
                .unwrap_or_else(|| "(alert without text)".into()),
            category: arr(f, "category").first().and_then(concept_text),
            since: f
                .get("period")
                .and_then(|p| s(p, "start"))
                .map(|t| t.chars().take(10).collect()),
        })
        .collect();
    list.sort_by(|a, b| a.text.cmp(&b.text));
    let omitted = list.len().saturating_sub(ALERTS_PER_PATIENT_MAX);
    list.truncate(ALERTS_PER_PATIENT_MAX);
    Ok((list, omitted))
}

fn problems(store: &Store<'_>, pid: &str) -> Result<(Vec<Problem>, usize), ContinuityError> {
    let found = store.search_first(
        ResourceType::Condition,
        &[
            ("patient", format!("Patient/{pid}")),
            ("clinical-status", "active,recurrence,relapse".into()),
        ],
        COUNT_MAX,
    )?;
    let mut list: Vec<Problem> = found
        .iter()
        .filter(|c| {
            !matches!(
                c.get("verificationStatus").and_then(first_code),
                Some("entered-in-error" | "refuted")
            )
        })
        .map(|c| Problem {
            text: c
                .get("code")
                .and_then(concept_text)
                .unwrap_or_else(|| "(problem not named)".into()),
            onset: s(c, "onsetDateTime")
                .or_else(|| s(c, "recordedDate"))
                .map(|t| t.chars().take(10).collect()),
        })
        .collect();
    // Most recent first: a new diagnosis matters most in a downtime.
    list.sort_by(|a, b| (b.onset.as_deref(), &a.text).cmp(&(a.onset.as_deref(), &b.text)));
    let omitted = list.len().saturating_sub(PROBLEMS_PER_PATIENT_MAX);
    list.truncate(PROBLEMS_PER_PATIENT_MAX);
    Ok((list, omitted))
}

/// A dosage's scheduled times, `hh:mm` (`timing.repeat.timeOfDay`).
fn times_of_day(dosage: &Value) -> Vec<String> {
    dosage
        .get("timing")
        .and_then(|t| t.get("repeat"))
        .map(|r| {
            arr(r, "timeOfDay")
                .iter()
                .filter_map(Value::as_str)
                .map(|t| t.chars().take(5).collect())
                .collect()
        })
        .unwrap_or_default()
}

/// "once daily", "twice daily (08:00, 18:00)", "when required".
fn frequency_text(dosage: &Value) -> Option<String> {
    let repeat = dosage.get("timing").and_then(|t| t.get("repeat"));
    let times = times_of_day(dosage);
    let per = repeat.and_then(|r| {
        let f = r.get("frequency").and_then(Value::as_u64).unwrap_or(1);
        let period = r.get("period").and_then(json_number_text)?;
        let unit = s(r, "periodUnit")?;
        Some(match (f, period.as_str(), unit) {
            (1, "1", "d") => "once daily".to_string(),
            (2, "1", "d") => "twice daily".to_string(),
            (n, "1", "d") => format!("{n} times daily"),
            (1, n, "h") => format!("every {n} hours"),
            (1, "1", "wk") => "once weekly".to_string(),
            (n, p, u) => format!("{n} times every {p} {u}"),
        })
    });
    let prn = dosage.get("asNeededBoolean").and_then(Value::as_bool) == Some(true)
        || dosage.get("asNeededCodeableConcept").is_some();
    let mut t = match (prn, per) {
        (true, Some(p)) => format!("when required, up to {p}"),
        (true, None) => "when required".to_string(),
        (false, Some(p)) => p,
        (false, None) if times.is_empty() => return None,
        (false, None) => String::new(),
    };
    if !times.is_empty() {
        t = format!("{t} ({})", times.join(", ")).trim().to_string();
    }
    Some(t)
}

fn dose_text(dosage: &Value) -> Option<String> {
    let dr = arr(dosage, "doseAndRate").first()?;
    dr.get("doseQuantity").and_then(quantity_text).or_else(|| {
        dr.get("doseRange").and_then(|r| {
            Some(format!(
                "{}–{}",
                quantity_text(r.get("low")?)?,
                quantity_text(r.get("high")?)?
            ))
        })
    })
}

/// The dates of a bounded course (`timing.repeat.boundsPeriod`).
fn course_dates(dosage: &Value) -> Option<(NaiveDate, NaiveDate)> {
    let b = dosage.get("timing")?.get("repeat")?.get("boundsPeriod")?;
    let start = fhir_date(&s(b, "start")?.chars().take(10).collect::<String>())?;
    let end = s(b, "end")
        .and_then(|e| fhir_date(&e.chars().take(10).collect::<String>()))
        .unwrap_or(start);
    Some((start, end))
}

fn medicine_name(store: &mut Store<'_>, m: &Value) -> Result<String, ContinuityError> {
    if let Some(t) = m.get("medicationCodeableConcept").and_then(concept_text) {
        return Ok(t);
    }
    if let Some(r) = m.get("medicationReference") {
        if let Some(med) = store.read_ref(r)? {
            if let Some(t) = med.get("code").and_then(concept_text) {
                return Ok(t);
            }
        }
        if let Some(d) = s(r, "display") {
            return Ok(d.to_string());
        }
    }
    Ok("(medicine not named)".into())
}

/// Current medicines, and the drug chart for the pack's days `first..=last`.
#[allow(clippy::type_complexity)]
fn medicines(
    store: &mut Store<'_>,
    pid: &str,
    first: NaiveDate,
    last: NaiveDate,
) -> Result<((Vec<Medicine>, usize), (Vec<ChartDose>, usize)), ContinuityError> {
    let subject = format!("Patient/{pid}");
    let requests = store.search_first(
        ResourceType::MedicationRequest,
        &[("patient", subject.clone()), ("status", "active,on-hold".into())],
        MEDICINES_READ_PER_PATIENT_MAX,
    )?;
    let statements = store.search_first(
        ResourceType::MedicationStatement,
        &[("patient", subject), ("status", "active,intended".into())],
        MEDICINES_READ_PER_PATIENT_MAX,
    )?;
    let mut list = Vec::new();
    let mut chart = Vec::new();
    for (m, source) in requests
        .iter()
        .map(|m| (m, "prescribed"))
        .chain(statements.iter().map(|m| (m, "reported")))
    {
        let dosages = if source == "prescribed" {
            arr(m, "dosageInstruction")
        } else {
            arr(m, "dosage")
        };
        let dosage = dosages.first().cloned().unwrap_or(Value::Null);
        let course = course_dates(&dosage);
        if course.is_some_and(|(_, end)| end < first) {
            continue; // a finished course the status was not updated for
        }
        let inpatient = arr(m, "category")
            .iter()
            .any(|c| arr(c, "coding").iter().any(|k| s(k, "code") == Some("inpatient")));
        let name = medicine_name(store, m)?;
        let med = Medicine {
            name,
            dose: dose_text(&dosage),
            route: dosage.get("route").and_then(concept_text),
            frequency: frequency_text(&dosage),
            instructions: s(&dosage, "text").map(str::to_string),
            source,
            dates: course.map(|(a, b)| if a == b { a.to_string() } else { format!("{a} to {b}") }),
            inpatient,
        };
        if inpatient {
            // On the chart: each scheduled time of each pack day the course runs.
            let (from, to) = course.unwrap_or((first, last));
            let times = times_of_day(&dosage);
            let mut day = from.max(first);
            while day <= to.min(last) {
                let slots = if times.is_empty() {
                    vec!["when required".to_string()]
                } else {
                    times.clone()
                };
                for time in slots {
                    chart.push(ChartDose {
                        day,
                        time,
                        medicine: med.name.clone(),
                        dose: med.dose.clone().unwrap_or_default(),
                        route: med.route.clone().unwrap_or_default(),
                    });
                }
                day = day.succ_opt().expect("a date before the end of time");
            }
        }
        list.push(med);
    }
    list.sort_by(|a, b| (a.source, &a.name).cmp(&(b.source, &b.name)));
    chart.sort();
    let omitted = list.len().saturating_sub(MEDICINES_PER_PATIENT_MAX);
    list.truncate(MEDICINES_PER_PATIENT_MAX);
    let omitted_chart = chart.len().saturating_sub(CHART_DOSES_PER_PATIENT_MAX);
    chart.truncate(CHART_DOSES_PER_PATIENT_MAX);
    Ok(((list, omitted), (chart, omitted_chart)))
}

fn quantity_text(q: &Value) -> Option<String> {
    let value = q.get("value").and_then(json_number_text)?;
    let comparator = s(q, "comparator").unwrap_or_default();
    Some(match s(q, "unit").or_else(|| s(q, "code")) {
        Some(u) => format!("{comparator}{value} {u}"),
        None => format!("{comparator}{value}"),
    })
}

fn observation_value(o: &Value) -> String {
    if let Some(q) = o.get("valueQuantity") {
        if let Some(t) = quantity_text(q) {
            return t;
        }
    }
    if let Some(t) = s(o, "valueString") {
        return t.to_string();
    }
    if let Some(c) = o.get("valueCodeableConcept").and_then(concept_text) {
        return c;
    }
    for key in ["valueInteger", "valueBoolean"] {
        if let Some(v) = o.get(key) {
            return v.to_string();
        }
    }
    s(o, "dataAbsentReason")
        .map(str::to_string)
        .or_else(|| o.get("dataAbsentReason").and_then(concept_text))
        .unwrap_or_else(|| "(no value)".into())
}

fn reference_range(o: &Value) -> Option<String> {
    let r = arr(o, "referenceRange").first()?;
    if let Some(t) = s(r, "text") {
        return Some(t.to_string());
    }
    let low = r.get("low").and_then(|q| q.get("value")).and_then(json_number_text);
    let high = r.get("high").and_then(|q| q.get("value")).and_then(json_number_text);
    match (low, high) {
        (Some(l), Some(h)) => Some(format!("{l}–{h}")),
        (Some(l), None) => Some(format!("≥ {l}")),
        (None, Some(h)) => Some(format!("≤ {h}")),
        (None, None) => None,
    }
}

fn results(store: &Store<'_>, pid: &str) -> Result<(Vec<LabResult>, usize), ContinuityError> {
    let found = store.search_first(
        ResourceType::Observation,
        &[
            ("patient", format!("Patient/{pid}")),
            ("category", "laboratory".into()),
            ("_sort", "-date".into()),
        ],
        RESULTS_READ_PER_PATIENT_MAX,
    )?;
    let mut seen = BTreeSet::new();
    let mut list = Vec::new();
    for o in &found {
        if matches!(s(o, "status"), Some("entered-in-error" | "cancelled")) {
            continue;
        }
        let code = o.get("code");
        let key = code
            .and_then(|c| {
                arr(c, "coding")
                    .iter()
                    .find_map(|cd| Some(format!("{}|{}", s(cd, "system")?, s(cd, "code")?)))
            })
            .or_else(|| code.and_then(concept_text))
            .unwrap_or_default();
        if !seen.insert(key) {
            continue;
        }
        let flag = arr(o, "interpretation")
            .iter()
            .find_map(first_code)
            .filter(|c| *c != "N")
            .map(str::to_string);
        list.push(LabResult {
            test: code.and_then(concept_text).unwrap_or_else(|| "(test not named)".into()),
            value: observation_value(o),
            flag,
            range: reference_range(o),
            when_ms: s(o, "effectiveDateTime")
                .or_else(|| o.get("effectivePeriod").and_then(|p| s(p, "start")))
                .or_else(|| s(o, "issued"))
                .and_then(fhir_start_ms),
        });
    }
    let omitted = list.len().saturating_sub(RESULTS_PER_PATIENT_MAX);
    list.truncate(RESULTS_PER_PATIENT_MAX);
    Ok((list, omitted))
}

/// v2-0074 diagnostic service sections that are imaging.
const IMAGING_SECTIONS: &[&str] = &[
    "RAD", "RX", "CT", "MR", "NMR", "NMS", "US", "RUS", "VUS", "CUS", "OUS", "IMG",
];

fn imaging(store: &Store<'_>, pid: &str) -> Result<(Vec<ImagingReport>, usize), ContinuityError> {
    let found = store.search_first(
        ResourceType::DiagnosticReport,
        &[("patient", format!("Patient/{pid}")), ("_sort", "-date".into())],
        COUNT_MAX,
    )?;
    let mut list: Vec<ImagingReport> = found
        .iter()
        .filter(|r| !matches!(s(r, "status"), Some("entered-in-error" | "cancelled")))
        .filter(|r| {
            !arr(r, "imagingStudy").is_empty()
                || arr(r, "category")
                    .iter()
                    .flat_map(|c| arr(c, "coding"))
                    .any(|cd| s(cd, "code").is_some_and(|c| IMAGING_SECTIONS.contains(&c)))
        })
        .map(|r| ImagingReport {
            study: r
                .get("code")
                .and_then(concept_text)
                .unwrap_or_else(|| "Imaging report".into()),
            when_ms: s(r, "effectiveDateTime")
                .or_else(|| s(r, "issued"))
                .and_then(fhir_start_ms),
            conclusion: s(r, "conclusion")
                .map(str::to_string)
                .or_else(|| {
                    let codes: Vec<String> = arr(r, "conclusionCode").iter().filter_map(concept_text).collect();
                    (!codes.is_empty()).then(|| codes.join("; "))
                })
                .unwrap_or_else(|| "(no conclusion recorded)".into()),
            status: s(r, "status").unwrap_or_default().to_string(),
        })
        .collect();
    let omitted = list.len().saturating_sub(IMAGING_REPORTS_PER_PATIENT_MAX);
    list.truncate(IMAGING_REPORTS_PER_PATIENT_MAX);
    Ok((list, omitted))
}

/// A note's text: a plain-text attachment, else its description.
fn note_text(doc: &Value) -> String {
    for c in arr(doc, "content") {
        let Some(att) = c.get("attachment") else { continue };
        let plain = s(att, "contentType").is_none_or(|t| t.starts_with("text/plain"));
        if plain {
            if let Some(bytes) = s(att, "data").and_then(base64_decode) {
                return String::from_utf8_lossy(&bytes).into_owned();
            }
        }
    }
    s(doc, "description")
        .map(str::to_string)
        .unwrap_or_else(|| "(no text in the record; see the original document)".into())
}

fn cut_text(text: &str, max_chars: usize) -> (String, bool) {
    let text = text.trim();
    match text.char_indices().nth(max_chars) {
        Some((i, _)) => (text[..i].trim_end().to_string(), true),
        None => (text.to_string(), false),
    }
}

fn notes(store: &mut Store<'_>, pid: &str) -> Result<(Vec<Note>, usize), ContinuityError> {
    let params = [("patient", format!("Patient/{pid}")), ("status", "current".to_string())];
    let total = store.count(ResourceType::DocumentReference, &params)?;
    let mut sorted = params.to_vec();
    sorted.push(("_sort", "-date".into()));
    let found = store.search_first(ResourceType::DocumentReference, &sorted, NOTES_PER_PATIENT_MAX)?;
    let mut list = Vec::new();
    for d in found.iter().take(NOTES_PER_PATIENT_MAX) {
        let (text, cut) = cut_text(&note_text(d), NOTE_CHARS_MAX);
        let mut author = None;
        for a in arr(d, "author") {
            author = store.clinician_name(a)?;
            if author.is_some() {
                break;
            }
        }
        list.push(Note {
            title: s(d, "description")
                .map(str::to_string)
                .or_else(|| d.get("type").and_then(concept_text))
                .unwrap_or_else(|| "Clinical note".into()),
            when_ms: s(d, "date").and_then(fhir_start_ms),
            author,
            text,
            cut,
        });
    }
    Ok((list.clone(), total.saturating_sub(list.len())))
}

fn upcoming(store: &mut Store<'_>, pid: &str, now_ms: i64) -> Result<(Vec<Upcoming>, usize), ContinuityError> {
    let found = store.search_first(
        ResourceType::Appointment,
        &[
            ("patient", format!("Patient/{pid}")),
            ("date", format!("ge{}", rfc3339_utc(now_ms))),
            ("_sort", "date".into()),
        ],
        COUNT_MAX,
    )?;
    let mut list = Vec::new();
    let mut omitted = 0;
    for a in &found {
        let status = s(a, "status").unwrap_or_default();
        let Some(start) = s(a, "start").and_then(fhir_start_ms) else {
            continue;
        };
        if !LISTED_STATUSES.contains(&status) || start < now_ms {
            continue;
        }
        if list.len() >= UPCOMING_PER_PATIENT_MAX {
            omitted += 1;
            continue;
        }
        let mut place = None;
        for l in participants(a, "Location") {
            place = store.place_name(l)?;
            if place.is_some() {
                break;
            }
        }
        let mut clinician = None;
        for p in arr(a, "participant").iter().filter_map(|p| p.get("actor")) {
            if matches!(reference(p), Some(("Practitioner" | "PractitionerRole", _))) {
                clinician = store.clinician_name(p)?;
                if clinician.is_some() {
                    break;
                }
            }
        }
        list.push(Upcoming {
            start_ms: start,
            place: place.unwrap_or_else(|| "(place not recorded)".into()),
            clinician,
            status: status.to_string(),
            description: s(a, "description").map(str::to_string),
        });
    }
    Ok((list, omitted))
}

fn kin(p: &Value) -> (Vec<Kin>, usize) {
    let contacts = arr(p, "contact");
    let list = contacts
        .iter()
        .take(CONTACTS_PER_PATIENT_MAX)
        .map(|c| {
            let mut rel: Vec<String> = Vec::new();
            let mut next_of_kin = false;
            for r in arr(c, "relationship") {
                // v2-0131 "N" (Next-of-Kin) is a role, said once as a flag; the rest say who they are.
                let nok_code = arr(r, "coding")
                    .iter()
                    .any(|cd| s(cd, "system") == Some(CONTACT_ROLE_SYSTEM) && s(cd, "code") == Some("N"));
                let t = concept_text(r).unwrap_or_default();
                let nok_text = matches!(t.to_ascii_lowercase().as_str(), "next-of-kin" | "next of kin");
                if nok_code || nok_text {
                    next_of_kin = true;
                } else if !t.is_empty() && !rel.contains(&t) {
                    rel.push(t);
                }
            }
            Kin {
                relationship: if !rel.is_empty() {
                    rel.join(", ")
                } else if next_of_kin {
                    "Next of kin".into()
                } else {
                    "Contact".into()
                },
                next_of_kin,
                name: c.get("name").map(|n| name_of(n).natural_form()).unwrap_or_default(),
                phones: contact_points(c, "phone"),
                address: c.get("address").and_then(address_text),
            }
        })
        .collect();
    (list, contacts.len().saturating_sub(CONTACTS_PER_PATIENT_MAX))
}

fn patient_card(
    store: &mut Store<'_>,
    pid: &str,
    now_ms: i64,
    days: (NaiveDate, NaiveDate),
) -> Result<PatientCard, ContinuityError> {
    let p = store.read("Patient", pid)?.unwrap_or(Value::Null);
    let mut name = person_name(&p);
    if p.is_null() {
        name.text = format!("(patient record {pid} not found)");
    }
    let birth_text = s(&p, "birthDate").map(str::to_string);
    let birth_date = birth_text.as_deref().and_then(fhir_date);
    let addresses: Vec<String> = arr(&p, "address")
        .iter()
        .filter(|a| s(a, "use") != Some("old"))
        .filter_map(|a| {
            let t = address_text(a)?;
            Some(match s(a, "use") {
                Some(u) if u != "home" => format!("{t} ({u})"),
                _ => t,
            })
        })
        .collect();
    let mut gp = None;
    for g in arr(&p, "generalPractitioner") {
        gp = match reference(g) {
            Some(("Organization", _)) => store.place_name(g)?,
            _ => store.clinician_name(g)?,
        };
        if gp.is_some() {
            break;
        }
    }
    let deceased = match (p.get("deceasedBoolean"), s(&p, "deceasedDateTime")) {
        (_, Some(t)) => Some(format!("Deceased {t}")),
        (Some(Value::Bool(true)), _) => Some("Deceased".to_string()),
        _ => None,
    };
    let (kin, omitted_contacts) = kin(&p);
    let (alerts, omitted_alerts) = alerts(store, pid)?;
    let (problems, omitted_problems) = problems(store, pid)?;
    let ((medicines, omitted_medicines), (chart, omitted_chart)) = medicines(store, pid, days.0, days.1)?;
    let (allergies, omitted_allergies) = allergies(store, pid)?;
    let (results, omitted_results) = results(store, pid)?;
    let (imaging, omitted_imaging) = imaging(store, pid)?;
    let (notes, omitted_notes) = notes(store, pid)?;
    let (upcoming, omitted_upcoming) = upcoming(store, pid, now_ms)?;
    Ok(PatientCard {
        id: pid.to_string(),
        name,
        nhs_number: arr(&p, "identifier")
            .iter()
            .find(|i| s(i, "system") == Some(codes::NHS_NUMBER_SYSTEM))
            .and_then(|i| s(i, "value"))
            .map(str::to_string),
        birth_date,
        birth_text: if birth_date.is_none() { birth_text } else { None },
        gender: s(&p, "gender").map(str::to_string),
        deceased,
        phones: contact_points(&p, "phone"),
        emails: contact_points(&p, "email"),
        addresses,
        gp,
        kin,
        alerts,
        problems,
        medicines,
        chart,
        allergies,
        results,
        imaging,
        notes,
        upcoming,
        omitted: Omitted {
            alerts: omitted_alerts,
            problems: omitted_problems,
            medicines: omitted_medicines,
            chart: omitted_chart,
            allergies: omitted_allergies,
            results: omitted_results,
            imaging: omitted_imaging,
            notes: omitted_notes,
            upcoming: omitted_upcoming,
            contacts: omitted_contacts,
        },
    })
}

/// Read everything one pack shows.
pub(crate) fn gather(conn: &Connection, opts: &PackOptions, site: &str) -> Result<PackData, ContinuityError> {
    let store_index = last_applied(conn)?;
    let last_change_ms = last_change_ms(conn);
    let mut store = Store {
        conn,
        cache: HashMap::new(),
    };
    let info = find_site(&store, site)?;
    let zone = opts.zone;
    let first_day = zone.local(opts.now_ms).date();
    let last_day = first_day + chrono::Duration::days(i64::from(opts.days));
    let from_ms = zone.midnight_utc_ms(first_day);
    let to_ms = zone.midnight_utc_ms(last_day + chrono::Duration::days(1));
    let sessions = sessions(&mut store, &info, zone, from_ms, to_ms)?;

    let mut ids: Vec<&str> = sessions
        .iter()
        .flat_map(|s| s.entries.iter().filter_map(|e| e.patient_id.as_deref()))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.len() > PATIENTS_PER_PACK_MAX {
        return Err(ContinuityError::LimitExceeded {
            what: "Patients on the pack's clinic lists",
            limit: PATIENTS_PER_PACK_MAX,
        });
    }
    let mut patients = Vec::with_capacity(ids.len());
    for pid in ids {
        patients.push(patient_card(&mut store, pid, opts.now_ms, (first_day, last_day))?);
    }
    patients.sort_by(|a, b| {
        let key = |p: &PatientCard| {
            (
                p.name.family.to_uppercase(),
                p.name.given.to_uppercase(),
                p.nhs_number.clone(),
                p.id.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    Ok(PackData {
        site: site.to_string(),
        site_name: info.name,
        store_index,
        last_change_ms,
        now_ms: opts.now_ms,
        first_day,
        last_day,
        from_ms,
        to_ms,
        sessions,
        patients,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[track_caller]
    fn check_b64(input: &str, want: Option<&[u8]>) {
        assert_eq!(base64_decode(input).as_deref(), want, "base64_decode({input:?})");
    }

    #[test]
    fn base64_cases() {
        check_b64("", Some(b""));
        check_b64("TWFu", Some(b"Man"));
        check_b64("TWE=", Some(b"Ma"));
        check_b64("TQ==", Some(b"M"));
        check_b64("TWE", Some(b"Ma"));
        check_b64("SGVs\nbG8=", Some(b"Hello"));
        check_b64("wqM1", Some("£5".as_bytes()));
        check_b64("TW*u", None);
    }

    #[track_caller]
    fn check_cut(input: &str, max: usize, want: &str, want_cut: bool) {
        assert_eq!(
            cut_text(input, max),
            (want.to_string(), want_cut),
            "cut_text({input:?}, {max})"
        );
    }

    #[test]
    fn cut_cases() {
        check_cut("short", 10, "short", false);
        check_cut("exactly10!", 10, "exactly10!", false);
        check_cut("  padded  ", 6, "padded", false);
        check_cut("one two three", 8, "one two", true);
        check_cut("ééééé", 3, "ééé", true);
    }

    #[track_caller]
    fn check_value(obs: Value, want: &str, range: Option<&str>) {
        assert_eq!(observation_value(&obs), want, "value of {obs}");
        assert_eq!(reference_range(&obs).as_deref(), range, "range of {obs}");
    }

    #[test]
    fn observation_value_cases() {
        check_value(
            json!({"valueQuantity": {"value": 4.2, "unit": "mmol/L"},
                   "referenceRange": [{"low": {"value": 3.5}, "high": {"value": 5.3}}]}),
            "4.2 mmol/L",
            Some("3.5–5.3"),
        );
        check_value(
            json!({"valueQuantity": {"value": 90, "comparator": ">", "code": "mL/min"},
                   "referenceRange": [{"low": {"value": 60}}]}),
            ">90 mL/min",
            Some("≥ 60"),
        );
        check_value(json!({"valueString": "Haemolysed"}), "Haemolysed", None);
        check_value(
            json!({"valueCodeableConcept": {"coding": [{"code": "POS", "display": "Positive"}]},
                   "referenceRange": [{"text": "Negative"}]}),
            "Positive",
            Some("Negative"),
        );
        check_value(json!({}), "(no value)", None);
    }

    #[test]
    fn address_and_site_cases() {
        let a = json!({"line": ["Flat 2/1", "14 Dumbarton Road"], "city": "Clydebank", "postalCode": "G81 4AB"});
        assert_eq!(
            address_text(&a).as_deref(),
            Some("Flat 2/1, 14 Dumbarton Road, Clydebank, G81 4AB")
        );
        assert_eq!(
            address_text(&json!({"text": "c/o ward 5"})).as_deref(),
            Some("c/o ward 5")
        );
        assert_eq!(address_text(&json!({})), None);
        let l = json!({"extension": [{"url": codes::EXT_SITE, "valueCode": "qeh "}]});
        assert_eq!(site_code(&l).as_deref(), Some("QEH"));
    }
}
