//! Outage recovery: incidents, `Appointment/$postpone`, the incident report
//! (`Basic/<id>/$report`) and, in [`crate::rebook`], `Appointment/$rebook`.
//!
//! An incident is a FHIR `Basic` whose `code` is Hale's `it-outage` coding, with
//! extensions for its period, status, affected sites and services and a
//! description (`hale_fhir::codes::EXT_INCIDENT_*`, checked by `hale_fhir::validate`).
//! It is written through the ordinary REST interactions (admins only), so it is
//! replicated and every change is audited in the same commit.
//!
//! `$postpone` cancels every booked appointment in scope in one `Transaction`
//! command, each with `If-Match` on the version it read: a concurrent change
//! makes the whole command fail cleanly, and a rerun finds nothing left to do.
//! The command's time is fixed before the command exists, and "cancelled on the
//! day" is decided from it (UK local dates), so apply stays deterministic.

use crate::auth::authorize;
use crate::config::Role;
use crate::rest::{parse_json, valid_id, Ctx};
use crate::wire::{json_response, FhirError};
use crate::{now_ms, App};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::NaiveDate;
use hale_fhir::codes;
use hale_fhir::search::parse_query;
use hale_fhir::{IssueCode, ResourceType};
use hale_sched::uktime::{uk_date, uk_midnight};
use hale_sched::Category;
use hale_store::apply::Applied;
use hale_store::command::Command;
use hale_store::propose::ProposeError;
use hale_store::query::{self, Current};
use hale_store::{AuditAction, CommandKind, WriteOp};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Resources one internal search may return (postponed appointments, free slots...).
pub const SCAN_RESOURCES_MAX: usize = 100_000;
/// Alternatives per internal search clause (`patient=a,b,...`), as `hale_fhir::search::ALTERNATIVES_MAX`.
pub const CHUNK_IDS_MAX: usize = hale_fhir::search::ALTERNATIVES_MAX;
/// Longest incident id accepted.
pub const INCIDENT_ID_BYTES_MAX: usize = 64;

/// Outage recovery settings (`[outage]` in the configuration file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutageSettings {
    /// Reasonable notice in days, a soft rule the patient can waive: 21 in England, 10 in Scotland.
    pub notice_days: i64,
    /// No rebooked appointment starts sooner than this after the rebooking run.
    pub min_lead_hours: i64,
    /// Free slots are looked for this many days ahead.
    pub horizon_days: i64,
    /// A letter must arrive at least this many days before the appointment date.
    pub letter_margin_days: i64,
    /// UK bank holidays for letter timing (dates); empty means the built-in England and Wales list (2025-2027).
    pub bank_holidays: Vec<NaiveDate>,
    /// Rebook into any site's clinic of the same service, not only the original site's.
    pub any_site: bool,
}

impl Default for OutageSettings {
    fn default() -> Self {
        OutageSettings {
            notice_days: 21,
            min_lead_hours: 24,
            horizon_days: 84,
            letter_margin_days: 2,
            bank_holidays: Vec::new(),
            any_site: false,
        }
    }
}

// ---------------------------------------------------------------------------
// Operation parameters

/// One input parameter of an operation, from a `Parameters` body or the query string.
#[derive(Debug, Clone)]
pub(crate) struct OpParam {
    pub name: String,
    pub value: String,
    /// FHIRPath of the value, for error messages (`Parameters.parameter[2].valueDateTime`).
    pub at: String,
    /// FHIRPath of the name (`Parameters.parameter[2].name`).
    pub name_at: String,
}

/// The parameters of an operation call. `allowed` lists the names it takes.
pub(crate) struct OpParams(Vec<OpParam>);

impl OpParams {
    pub fn parse(op: &str, body: &[u8], query: &str, allowed: &[&str]) -> Result<OpParams, FhirError> {
        let mut out = Vec::new();
        if !body.iter().all(u8::is_ascii_whitespace) {
            let v = parse_json(body)?;
            if v["resourceType"] != "Parameters" {
                return Err(
                    FhirError::bad_request(format!("{op} takes a Parameters resource")).at("Parameters.resourceType")
                );
            }
            for (i, p) in v["parameter"].as_array().into_iter().flatten().enumerate() {
                let at = format!("Parameters.parameter[{i}]");
                let Some(name) = p["name"].as_str() else {
                    return Err(FhirError::new(
                        StatusCode::BAD_REQUEST,
                        IssueCode::Required,
                        "a parameter needs a name",
                    )
                    .at(format!("{at}.name")));
                };
                let Some((key, value)) = p
                    .as_object()
                    .and_then(|o| o.iter().find(|(k, _)| k.starts_with("value")))
                else {
                    return Err(FhirError::new(
                        StatusCode::BAD_REQUEST,
                        IssueCode::Required,
                        format!("parameter '{name}' has no value[x]"),
                    )
                    .at(at));
                };
                let text = match value {
                    Value::String(s) => s.clone(),
                    Value::Bool(b) => b.to_string(),
                    Value::Number(n) => n.to_string(),
                    Value::Object(o) if key == "valueReference" => {
                        o.get("reference").and_then(Value::as_str).unwrap_or("").to_string()
                    }
                    _ => {
                        return Err(FhirError::bad_request(format!(
                            "parameter '{name}': {key} is not a value this operation understands"
                        ))
                        .at(format!("{at}.{key}")))
                    }
                };
                let at = if key == "valueReference" {
                    format!("{at}.valueReference.reference")
                } else {
                    format!("{at}.{key}")
                };
                let at = &at;
                out.push(OpParam {
                    name: name.to_string(),
                    value: text,
                    at: at.clone(),
                    name_at: format!("Parameters.parameter[{i}].name"),
                });
            }
        }
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            out.push(OpParam {
                name: k.to_string(),
                at: k.to_string(),
                name_at: k.to_string(),
                value: v.into_owned(),
            });
        }
        for p in &out {
            if !allowed.contains(&p.name.as_str()) {
                return Err(FhirError::bad_request(format!(
                    "{op} does not take a parameter '{}'; it takes {}",
                    p.name,
                    allowed.join(", ")
                ))
                .at(p.name_at.clone()));
            }
        }
        Ok(OpParams(out))
    }

    pub fn one(&self, name: &str) -> Result<Option<&OpParam>, FhirError> {
        let mut found = self.0.iter().filter(|p| p.name == name);
        let first = found.next();
        if let Some(second) = found.next() {
            return Err(FhirError::bad_request(format!("'{name}' may be given only once")).at(second.at.clone()));
        }
        Ok(first)
    }

    pub fn all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s OpParam> + 's {
        self.0.iter().filter(move |p| p.name == name)
    }

    pub fn bool(&self, name: &str) -> Result<Option<bool>, FhirError> {
        match self.one(name)? {
            None => Ok(None),
            Some(p) => match p.value.as_str() {
                "true" => Ok(Some(true)),
                "false" => Ok(Some(false)),
                other => Err(
                    FhirError::bad_request(format!("'{name}' must be true or false, not '{other}'")).at(p.at.clone()),
                ),
            },
        }
    }

    pub fn int(&self, name: &str, range: std::ops::RangeInclusive<i64>) -> Result<Option<i64>, FhirError> {
        match self.one(name)? {
            None => Ok(None),
            Some(p) => match p.value.parse::<i64>() {
                Ok(n) if range.contains(&n) => Ok(Some(n)),
                _ => Err(FhirError::bad_request(format!(
                    "'{name}' must be a whole number from {} to {}, not '{}'",
                    range.start(),
                    range.end(),
                    p.value
                ))
                .at(p.at.clone())),
            },
        }
    }

    /// The `incident` parameter: `ID` or `Basic/ID`.
    pub fn incident(&self) -> Result<(String, String), FhirError> {
        let Some(p) = self.one("incident")? else {
            return Err(FhirError::new(
                StatusCode::BAD_REQUEST,
                IssueCode::Required,
                "'incident' is required: the id of the outage incident (Basic/<id>, from `hale outage declare`)",
            )
            .at("incident"));
        };
        let id = p.value.strip_prefix("Basic/").unwrap_or(&p.value);
        if !valid_id(id) || id.len() > INCIDENT_ID_BYTES_MAX {
            return Err(FhirError::bad_request(format!("'{}' is not an incident id", p.value)).at(p.at.clone()));
        }
        Ok((id.to_string(), p.at.clone()))
    }

    /// A category code.
    pub fn category(&self) -> Result<Option<Category>, FhirError> {
        match self.one("category")? {
            None => Ok(None),
            Some(p) => Category::from_code(&p.value).map(Some).ok_or_else(|| {
                FhirError::new(
                    StatusCode::BAD_REQUEST,
                    IssueCode::Value,
                    format!(
                        "'{}' is not an appointment category: use one of {}",
                        p.value,
                        Category::ALL.map(|c| c.code()).join(", ")
                    ),
                )
                .at(p.at.clone())
            }),
        }
    }
}

/// A bound given as a FHIR date (a UK local day: its start, or with `end` the start of
/// the next day) or a dateTime/instant.
pub(crate) fn parse_bound(text: &str, end: bool) -> Option<i64> {
    if text.len() == 10 {
        let d = NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
        return Some(if end {
            uk_midnight(d.succ_opt()?)
        } else {
            uk_midnight(d)
        });
    }
    if !text.contains('T') {
        return None;
    }
    hale_fhir::date::parse_range_ms(text).map(|r| r.0)
}

// ---------------------------------------------------------------------------
// Reading the store

/// Every current resource matching a search (decoded pairs), up to [`SCAN_RESOURCES_MAX`].
pub(crate) fn search_all(app: &App, rt: ResourceType, pairs: &[(&str, String)]) -> Result<Vec<Value>, FhirError> {
    let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let mut q = parse_query(rt, &pairs, true)
        .map_err(|i| FhirError::internal(format!("internal search: {}", i.diagnostics)))?;
    q.count = SCAN_RESOURCES_MAX;
    q.offset = 0;
    let page = app.reader.with(|c| query::search(c, &q))?;
    if page.has_more {
        return Err(FhirError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            IssueCode::TooCostly,
            format!("more than {SCAN_RESOURCES_MAX} {rt} resources are in scope; narrow it (site, category, dates)"),
        ));
    }
    page.matches
        .iter()
        .map(|f| {
            serde_json::from_str(f.json.as_deref().unwrap_or("{}"))
                .map_err(|e| FhirError::internal(format!("stored {rt}/{} is not JSON: {e}", f.id)))
        })
        .collect()
}

/// [`search_all`] with one clause `param=id1,id2,...` over many references, in chunks.
pub(crate) fn search_by_refs(
    app: &App,
    rt: ResourceType,
    param: &str,
    refs: &[String],
    rest: &[(&str, String)],
) -> Result<Vec<Value>, FhirError> {
    let mut out = Vec::new();
    for chunk in refs.chunks(CHUNK_IDS_MAX) {
        let mut pairs: Vec<(&str, String)> = vec![(param, chunk.join(","))];
        pairs.extend(rest.iter().cloned());
        out.extend(search_all(app, rt, &pairs)?);
    }
    Ok(out)
}

pub(crate) fn read_json(app: &App, rt: &str, id: &str) -> Result<Option<(Value, u64)>, FhirError> {
    match app.reader.with(|c| query::read(c, rt, id))? {
        Some(Current::Live(f)) => {
            let v = serde_json::from_str(f.json.as_deref().unwrap_or("{}"))
                .map_err(|e| FhirError::internal(format!("stored {rt}/{id} is not JSON: {e}")))?;
            Ok(Some((v, f.version)))
        }
        _ => Ok(None),
    }
}

/// The extension with `url` on a resource or element.
pub(crate) fn ext<'v>(v: &'v Value, url: &str) -> Option<&'v Value> {
    v["extension"].as_array()?.iter().find(|e| e["url"] == url)
}

/// Every extension with `url`.
pub(crate) fn exts<'v>(v: &'v Value, url: &'v str) -> impl Iterator<Item = &'v Value> + 'v {
    v["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(move |e| e["url"] == url)
}

/// Replace the extensions with `url` by `new`.
pub(crate) fn set_ext(v: &mut Value, url: &str, new: Value) {
    let list = v
        .as_object_mut()
        .expect("resources are objects")
        .entry("extension")
        .or_insert_with(|| json!([]));
    if !list.is_array() {
        *list = json!([]);
    }
    let list = list.as_array_mut().expect("just made an array");
    list.retain(|e| e["url"] != url);
    list.push(new);
}

/// Remove the extensions with these urls (and an empty `extension`).
pub(crate) fn drop_exts(v: &mut Value, urls: &[&str]) {
    if let Some(list) = v["extension"].as_array_mut() {
        list.retain(|e| !urls.iter().any(|u| e["url"] == *u));
        if list.is_empty() {
            v.as_object_mut().expect("object").remove("extension");
        }
    }
}

/// Add a Hale `meta.tag`.
pub(crate) fn add_tag(v: &mut Value, code: &str, display: &str) {
    let obj = v.as_object_mut().expect("resources are objects");
    let meta = obj.entry("meta").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    let tags = meta
        .as_object_mut()
        .expect("object")
        .entry("tag")
        .or_insert_with(|| json!([]));
    if !tags.is_array() {
        *tags = json!([]);
    }
    let tags = tags.as_array_mut().expect("array");
    if !tags
        .iter()
        .any(|t| t["system"] == codes::TAG_SYSTEM && t["code"] == code)
    {
        tags.push(json!({"system": codes::TAG_SYSTEM, "code": code, "display": display}));
    }
}

pub(crate) fn incident_tag(id: &str) -> String {
    format!("{}{id}", codes::TAG_INCIDENT_PREFIX)
}

/// Ids of the `rt` references in an array of References (`Appointment.slot`, `Schedule.actor`, `Communication.about`).
pub(crate) fn refs_of<'v>(list: &'v Value, rt: &'v str) -> Vec<&'v str> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["reference"].as_str())
        .filter_map(|r| r.strip_prefix(rt).and_then(|r| r.strip_prefix('/')))
        .collect()
}

/// Ids of an Appointment's participants of type `rt`.
pub(crate) fn participants<'v>(a: &'v Value, rt: &'v str) -> Vec<&'v str> {
    a["participant"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["actor"]["reference"].as_str())
        .filter_map(|r| r.strip_prefix(rt).and_then(|r| r.strip_prefix('/')))
        .collect()
}

/// How reports name appointments with no Hale category (from other systems,
/// booked into clinics without one).
pub(crate) const UNCATEGORISED: &str = "uncategorised";

/// The Hale category of a resource's `serviceCategory`.
pub(crate) fn category_of(v: &Value) -> Option<Category> {
    v["serviceCategory"]
        .as_array()?
        .iter()
        .flat_map(|c| c["coding"].as_array().into_iter().flatten())
        .find(|c| c["system"] == codes::APPOINTMENT_CATEGORY_SYSTEM)
        .and_then(|c| c["code"].as_str())
        .and_then(Category::from_code)
}

/// The codes of a resource's `serviceType` codings.
pub(crate) fn service_types(v: &Value) -> Vec<String> {
    let types = match &v["serviceType"] {
        Value::Array(a) => a.iter().collect::<Vec<_>>(),
        o @ Value::Object(_) => vec![o],
        _ => Vec::new(),
    };
    types
        .into_iter()
        .flat_map(|c| c["coding"].as_array().into_iter().flatten())
        .filter_map(|c| c["code"].as_str().map(str::to_string))
        .collect()
}

pub(crate) fn instant_ms(v: &Value) -> Option<i64> {
    v.as_str().and_then(hale_fhir::date::parse_range_ms).map(|r| r.0)
}

pub(crate) fn date_of(v: &Value) -> Option<NaiveDate> {
    let s = v.as_str()?;
    NaiveDate::parse_from_str(s.get(..10)?, "%Y-%m-%d").ok()
}

/// Where things are: a Location's hospital site, a Schedule's clinic. Cached per request.
pub(crate) struct Places<'a> {
    app: &'a App,
    sites: HashMap<String, Option<String>>,
    schedules: HashMap<String, Option<Clinic>>,
    names: HashMap<String, String>,
}

/// What a Schedule offers.
#[derive(Debug, Clone)]
pub(crate) struct Clinic {
    pub category: Option<Category>,
    pub service_types: Vec<String>,
    pub location: Option<String>,
    pub practitioner: Option<String>,
    pub site: Option<String>,
}

impl<'a> Places<'a> {
    pub fn new(app: &'a App) -> Places<'a> {
        Places {
            app,
            sites: HashMap::new(),
            schedules: HashMap::new(),
            names: HashMap::new(),
        }
    }

    /// The site code of a Location (its own site extension, or its `partOf`'s, up to 4 levels).
    pub fn site_of_location(&mut self, id: &str) -> Result<Option<String>, FhirError> {
        if let Some(s) = self.sites.get(id) {
            return Ok(s.clone());
        }
        let mut site = None;
        let mut cur = id.to_string();
        for _ in 0..4 {
            let Some((loc, _)) = read_json(self.app, "Location", &cur)? else {
                break;
            };
            if let Some(name) = loc["name"].as_str() {
                self.names.entry(cur.clone()).or_insert_with(|| name.to_string());
            }
            if let Some(code) = ext(&loc, codes::EXT_SITE).and_then(|e| e["valueCode"].as_str()) {
                site = Some(code.to_string());
                break;
            }
            match loc["partOf"]["reference"]
                .as_str()
                .and_then(|r| r.strip_prefix("Location/"))
            {
                Some(parent) => cur = parent.to_string(),
                None => break,
            }
        }
        self.sites.insert(id.to_string(), site.clone());
        Ok(site)
    }

    /// A Location's name, for letters.
    pub fn location_name(&mut self, id: &str) -> Result<Option<String>, FhirError> {
        if !self.names.contains_key(id) {
            if let Some((loc, _)) = read_json(self.app, "Location", id)? {
                let name = loc["name"].as_str().unwrap_or(id).to_string();
                self.names.insert(id.to_string(), name);
            }
        }
        Ok(self.names.get(id).cloned())
    }

    pub fn clinic(&mut self, schedule_id: &str) -> Result<Option<Clinic>, FhirError> {
        if let Some(c) = self.schedules.get(schedule_id) {
            return Ok(c.clone());
        }
        let clinic = match read_json(self.app, "Schedule", schedule_id)? {
            None => None,
            Some((s, _)) => {
                let location = refs_of(&s["actor"], "Location").first().map(|s| s.to_string());
                let site = match &location {
                    Some(l) => self.site_of_location(l)?,
                    None => None,
                };
                Some(Clinic {
                    category: category_of(&s),
                    service_types: service_types(&s),
                    practitioner: refs_of(&s["actor"], "Practitioner").first().map(|s| s.to_string()),
                    location,
                    site,
                })
            }
        };
        self.schedules.insert(schedule_id.to_string(), clinic.clone());
        Ok(clinic)
    }

    /// The site of an appointment: its Location participant's, or its slot's clinic's.
    pub fn site_of_appointment(&mut self, a: &Value) -> Result<Option<String>, FhirError> {
        for l in participants(a, "Location") {
            if let Some(s) = self.site_of_location(l)? {
                return Ok(Some(s));
            }
        }
        for slot in refs_of(&a["slot"], "Slot") {
            if let Some((s, _)) = read_json(self.app, "Slot", slot)? {
                if let Some(sched) = s["schedule"]["reference"]
                    .as_str()
                    .and_then(|r| r.strip_prefix("Schedule/"))
                {
                    if let Some(site) = self.clinic(sched)?.and_then(|c| c.site) {
                        return Ok(Some(site));
                    }
                }
            }
        }
        Ok(None)
    }

    /// An Appointment's Hale category: its own `serviceCategory` coding, or,
    /// for appointments from other systems that carry none, the category of the
    /// Schedule its Slot belongs to. None: uncategorised (reports list these;
    /// nothing drops them).
    pub fn category_of_appointment(&mut self, a: &Value) -> Result<Option<Category>, FhirError> {
        if let Some(c) = category_of(a) {
            return Ok(Some(c));
        }
        for slot in refs_of(&a["slot"], "Slot") {
            if let Some((s, _)) = read_json(self.app, "Slot", slot)? {
                if let Some(c) = category_of(&s) {
                    return Ok(Some(c));
                }
                if let Some(sched) = s["schedule"]["reference"]
                    .as_str()
                    .and_then(|r| r.strip_prefix("Schedule/"))
                {
                    if let Some(c) = self.clinic(sched)?.and_then(|c| c.category) {
                        return Ok(Some(c));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Every site code that some Location carries.
    pub fn known_sites(&self) -> Result<BTreeSet<String>, FhirError> {
        let locs = search_all(self.app, ResourceType::Location, &[])?;
        Ok(locs
            .iter()
            .filter_map(|l| {
                ext(l, codes::EXT_SITE)
                    .and_then(|e| e["valueCode"].as_str())
                    .map(str::to_string)
            })
            .collect())
    }
}

// ---------------------------------------------------------------------------
// Incidents

/// An incident as stored (`Basic` with the incident profile).
#[derive(Debug, Clone)]
pub(crate) struct Incident {
    pub id: String,
    pub start_ms: i64,
    pub end_ms: Option<i64>,
    pub status: String,
    pub sites: Vec<String>,
    pub services: Vec<String>,
    pub description: Option<String>,
}

impl Incident {
    pub fn reference(&self) -> String {
        format!("Basic/{}", self.id)
    }
}

/// Load incident `id`; `at` is where the id came from, for the error.
pub(crate) fn load_incident(app: &App, id: &str, at: &str) -> Result<Incident, FhirError> {
    let Some((b, _)) = read_json(app, "Basic", id)? else {
        return Err(FhirError::not_found(format!(
            "incident Basic/{id} does not exist; `hale outage list` shows the incidents"
        ))
        .at(at.to_string()));
    };
    let Some(obj) = b.as_object() else {
        return Err(FhirError::internal("stored Basic is not an object"));
    };
    if !hale_fhir::validate::is_incident(obj) {
        return Err(FhirError::bad_request(format!(
            "Basic/{id} is not an IT outage incident (its code is not {}|{})",
            codes::INCIDENT_TYPE_SYSTEM,
            codes::INCIDENT_IT_OUTAGE
        ))
        .at(at.to_string()));
    }
    // A date is a whole UK day; a dateTime is an instant (the end is the last instant it covers).
    let period = ext(&b, codes::EXT_INCIDENT_PERIOD).map(|e| &e["valuePeriod"]);
    let bound = |key: &str| period.and_then(|p| p[key].as_str());
    let start_ms = bound("start")
        .and_then(|s| parse_bound(s, false))
        .ok_or_else(|| FhirError::internal(format!("incident Basic/{id} has no start")))?;
    let end_ms = bound("end").and_then(|s| {
        if s.len() == 10 {
            parse_bound(s, true)
        } else {
            hale_fhir::date::parse_range_ms(s).map(|r| r.1 + 1)
        }
    });
    let code = |url: &str| -> Vec<String> {
        exts(&b, url)
            .filter_map(|e| e["valueCode"].as_str().map(str::to_string))
            .collect()
    };
    Ok(Incident {
        id: id.to_string(),
        start_ms,
        end_ms,
        status: code(codes::EXT_INCIDENT_STATUS).into_iter().next().unwrap_or_default(),
        sites: code(codes::EXT_INCIDENT_SITE),
        services: code(codes::EXT_INCIDENT_SERVICE),
        description: ext(&b, codes::EXT_INCIDENT_DESCRIPTION)
            .and_then(|e| e["valueString"].as_str())
            .map(str::to_string),
    })
}

/// Whether a service code of an incident (a category or a service type code) covers
/// something with this category and these service types.
fn service_matches(services: &[String], category: Option<Category>, types: &[String]) -> bool {
    services.is_empty()
        || services
            .iter()
            .any(|s| category.is_some_and(|c| c.code() == s) || types.iter().any(|t| t == s))
}

// ---------------------------------------------------------------------------
// Writing

/// Propose a command whose time was fixed by the caller.
pub(crate) async fn propose_at(cx: &Ctx<'_>, time_ms: i64, kind: CommandKind) -> Result<Applied, FhirError> {
    let cmd = Command {
        references: Default::default(),
        time_ms,
        actor: cx.principal.actor(),
        kind,
    };
    match cx.app.proposer.propose(cmd).await {
        Ok((_, applied)) => Ok(applied),
        Err(ProposeError::Unavailable(why)) => Err(FhirError::unavailable(why)),
        Err(e) => Err(FhirError::unavailable(format!(
            "the write was not committed: {e}. It is safe to retry"
        ))),
    }
}

/// Read with a linearizable barrier first, so a write planned from what was read
/// sees every write acknowledged before the request.
pub(crate) async fn barrier(app: &App) -> Result<(), FhirError> {
    app.raft
        .read_barrier(hale_raft::ReadLevel::Linearizable)
        .await
        .map(|_| ())
        .map_err(FhirError::unavailable)
}

pub(crate) fn require_admin(cx: &Ctx<'_>, what: &str) -> Result<(), FhirError> {
    if cx.principal.role == Role::Admin {
        Ok(())
    } else {
        Err(FhirError::new(
            StatusCode::FORBIDDEN,
            IssueCode::Forbidden,
            format!(
                "user '{}' with role '{}' may not {what}; it needs the admin role",
                cx.principal.user,
                cx.principal.role.as_str()
            ),
        ))
    }
}

pub(crate) fn param(name: &str, value_key: &str, value: Value) -> Value {
    let mut p = json!({"name": name});
    p[value_key] = value;
    p
}

pub(crate) fn part(name: &str, parts: Vec<Value>) -> Value {
    json!({"name": name, "part": parts})
}

pub(crate) fn reference(r: &str) -> Value {
    json!({"reference": r})
}

pub(crate) fn parameters(params: Vec<Value>) -> Response {
    let body = if params.is_empty() {
        json!({"resourceType": "Parameters"})
    } else {
        json!({"resourceType": "Parameters", "parameter": params})
    };
    json_response(StatusCode::OK, body.to_string())
}

/// Rows of a count table as Parameters parts: `name` groups with `key` and counts.
fn count_rows(name: &str, key_name: &str, key_type: &str, rows: &BTreeMap<String, [u32; 3]>) -> Vec<Value> {
    rows.iter()
        .map(|(k, [postponed, rebooked, notified])| {
            part(
                name,
                vec![
                    param(key_name, key_type, json!(k)),
                    param("postponed", "valueInteger", json!(postponed)),
                    param("rebooked", "valueInteger", json!(rebooked)),
                    param("notified", "valueInteger", json!(notified)),
                ],
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------
// $postpone

const POSTPONE_PARAMS: &[&str] = &["incident", "from", "to", "site", "category", "clinicRuns"];

/// What one `$postpone` covers.
struct Scope {
    from_ms: i64,
    to_ms: i64,
    sites: Vec<String>,
    category: Option<Category>,
    services: Vec<String>,
}

impl Scope {
    fn covers(&self, site: Option<&str>, category: Option<Category>, types: &[String]) -> bool {
        (self.sites.is_empty() || site.is_some_and(|s| self.sites.iter().any(|x| x == s)))
            && self.category.is_none_or(|c| category == Some(c))
            && service_matches(&self.services, category, types)
    }
}

pub async fn postpone(cx: &Ctx<'_>, body: &[u8], query: &str) -> Result<Response, FhirError> {
    require_admin(cx, "postpone appointments")?;
    let p = OpParams::parse("$postpone", body, query, POSTPONE_PARAMS)?;
    let (incident_id, incident_at) = p.incident()?;
    let category = p.category()?;
    let clinic_runs = match p.bool("clinicRuns")? {
        Some(b) => b,
        None => {
            return Err(FhirError::new(
                StatusCode::BAD_REQUEST,
                IssueCode::Required,
                "'clinicRuns' is required: true if the clinics still run (their slots are released for rebooking), false if they are closed (their slots are blocked)",
            )
            .at("clinicRuns"))
        }
    };
    let bound = |name: &str, end: bool| -> Result<Option<i64>, FhirError> {
        match p.one(name)? {
            None => Ok(None),
            Some(q) => parse_bound(&q.value, end).map(Some).ok_or_else(|| {
                FhirError::new(
                    StatusCode::BAD_REQUEST,
                    IssueCode::Value,
                    format!(
                        "'{name}' must be a date (2026-10-01, a whole UK day) or a dateTime with a zone (2026-10-01T09:00:00Z), not '{}'",
                        q.value
                    ),
                )
                .at(q.at.clone())
            }),
        }
    };
    let from = bound("from", false)?;
    let to = bound("to", true)?;
    barrier(cx.app).await?;
    let incident = load_incident(cx.app, &incident_id, &incident_at)?;
    let from_ms = from.unwrap_or(incident.start_ms);
    let to_ms = match to.or(incident.end_ms) {
        Some(t) => t,
        None => {
            return Err(FhirError::new(
                StatusCode::BAD_REQUEST,
                IssueCode::Required,
                format!(
                    "incident Basic/{} is still open (no end): give 'to', the end of the time to postpone",
                    incident.id
                ),
            )
            .at("to"))
        }
    };
    if to_ms <= from_ms {
        let at = p
            .one("to")?
            .or(p.one("from")?)
            .map(|q| q.at.clone())
            .unwrap_or_else(|| "to".into());
        return Err(FhirError::bad_request(format!(
            "nothing to postpone: 'to' ({}) is not after 'from' ({})",
            crate::wire::instant(to_ms),
            crate::wire::instant(from_ms)
        ))
        .at(at));
    }
    let mut places = Places::new(cx.app);
    let mut sites: Vec<String> = Vec::new();
    let given: Vec<&OpParam> = p.all("site").collect();
    if !given.is_empty() {
        let known = places.known_sites()?;
        for q in given {
            if !known.contains(&q.value) {
                return Err(FhirError::new(
                    StatusCode::BAD_REQUEST,
                    IssueCode::Value,
                    format!(
                        "'{}' is not a site code of this board; known sites: {}",
                        q.value,
                        known.iter().cloned().collect::<Vec<_>>().join(", ")
                    ),
                )
                .at(q.at.clone()));
            }
            if !incident.sites.is_empty() && !incident.sites.contains(&q.value) {
                return Err(FhirError::bad_request(format!(
                    "site '{}' is not affected by incident Basic/{} (it affects {})",
                    q.value,
                    incident.id,
                    incident.sites.join(", ")
                ))
                .at(q.at.clone()));
            }
            sites.push(q.value.clone());
        }
    } else {
        sites = incident.sites.clone();
    }
    let scope = Scope {
        from_ms,
        to_ms,
        sites,
        category,
        services: incident.services.clone(),
    };

    // The time of the command, fixed now: "on the day" is decided from it.
    let time_ms = now_ms();
    let today = uk_date(time_ms);
    let booked = search_all(
        cx.app,
        ResourceType::Appointment,
        &[
            ("status", "booked".into()),
            ("date", format!("ge{}", crate::wire::instant(from_ms))),
            ("date", format!("lt{}", crate::wire::instant(to_ms))),
        ],
    )?;
    let mut ops = Vec::new();
    let mut postponed: Vec<String> = Vec::new();
    let mut by_category: BTreeMap<String, u32> = BTreeMap::new();
    let mut by_site: BTreeMap<String, u32> = BTreeMap::new();
    let mut blocked: BTreeSet<String> = BTreeSet::new();
    let mut slot_ops = Vec::new();
    let note = format!("Closed: IT outage (incident Basic/{})", incident.id);
    let mut block = |places: &mut Places, slot_id: &str, freed_by_cancel: bool| -> Result<(), FhirError> {
        if blocked.contains(slot_id) {
            return Ok(());
        }
        let Some((mut s, version)) = read_json(places.app, "Slot", slot_id)? else {
            return Ok(());
        };
        let status = s["status"].as_str().unwrap_or("").to_string();
        // Cancelling the appointment first frees a busy slot (one more version).
        let expect = match (status.as_str(), freed_by_cancel) {
            ("busy", true) => version + 1,
            ("free", _) => version,
            _ => return Ok(()),
        };
        s["status"] = json!("busy-unavailable");
        s["comment"] = json!(note);
        set_ext(
            &mut s,
            codes::EXT_OUTAGE_INCIDENT,
            json!({"url": codes::EXT_OUTAGE_INCIDENT, "valueReference": reference(&incident.reference())}),
        );
        blocked.insert(slot_id.to_string());
        slot_ops.push(WriteOp::Update {
            rtype: "Slot".into(),
            id: slot_id.to_string(),
            resource: s,
            if_match: Some(expect),
        });
        Ok(())
    };
    for a in booked {
        let Some(start) = instant_ms(&a["start"]) else { continue };
        if start < scope.from_ms || start >= scope.to_ms {
            continue;
        }
        let cat = places.category_of_appointment(&a)?;
        let types = service_types(&a);
        let site = places.site_of_appointment(&a)?;
        if !scope.covers(site.as_deref(), cat, &types) {
            continue;
        }
        let id = a["id"].as_str().unwrap_or("").to_string();
        let version: u64 = a["meta"]["versionId"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut new = a.clone();
        new["status"] = json!("cancelled");
        new["cancelationReason"] = json!({
            "coding": [{"system": codes::CANCELLED_BY_SYSTEM, "code": "provider", "display": "Cancelled by the provider"}],
            "text": codes::OUTAGE_CANCEL_TEXT,
        });
        set_ext(
            &mut new,
            codes::EXT_CANCELLED_ON_THE_DAY,
            json!({"url": codes::EXT_CANCELLED_ON_THE_DAY, "valueBoolean": uk_date(start) == today}),
        );
        set_ext(
            &mut new,
            codes::EXT_OUTAGE_INCIDENT,
            json!({"url": codes::EXT_OUTAGE_INCIDENT, "valueReference": reference(&incident.reference())}),
        );
        add_tag(&mut new, &incident_tag(&incident.id), "Outage incident");
        add_tag(&mut new, codes::TAG_OUTAGE_POSTPONED, "Postponed by an IT outage");
        ops.push(WriteOp::Update {
            rtype: "Appointment".into(),
            id: id.clone(),
            resource: new,
            if_match: Some(version),
        });
        if !clinic_runs {
            for s in refs_of(&a["slot"], "Slot") {
                block(&mut places, s, true)?;
            }
        }
        *by_category
            .entry(cat.map_or(UNCATEGORISED, |c| c.code()).to_string())
            .or_default() += 1;
        *by_site.entry(site.unwrap_or_else(|| "unknown".into())).or_default() += 1;
        postponed.push(id);
    }
    if !clinic_runs {
        // Free slots in the closed clinics, so that rebooking does not use them.
        let free = search_all(
            cx.app,
            ResourceType::Slot,
            &[
                ("status", "free".into()),
                ("start", format!("ge{}", crate::wire::instant(from_ms))),
                ("start", format!("lt{}", crate::wire::instant(to_ms))),
            ],
        )?;
        for s in free {
            let Some(sched) = s["schedule"]["reference"]
                .as_str()
                .and_then(|r| r.strip_prefix("Schedule/"))
            else {
                continue;
            };
            let Some(clinic) = places.clinic(sched)? else { continue };
            let cat = category_of(&s).or(clinic.category);
            let mut types = service_types(&s);
            if types.is_empty() {
                types = clinic.service_types.clone();
            }
            if scope.covers(clinic.site.as_deref(), cat, &types) {
                let id = s["id"].as_str().unwrap_or("").to_string();
                block(&mut places, &id, false)?;
            }
        }
    }
    ops.extend(slot_ops);
    let max = hale_store::apply::OPS_PER_COMMAND_MAX;
    if ops.len() > max {
        return Err(FhirError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            IssueCode::TooCostly,
            format!(
                "{} appointments and slots are in scope, more than the {max} changes one transaction may hold; postpone in parts with 'site', 'category' or 'from'/'to'",
                ops.len()
            ),
        ));
    }
    if !ops.is_empty() {
        match propose_at(cx, time_ms, CommandKind::Transaction(ops)).await? {
            Applied::Ops(_) => {}
            Applied::TransactionFailed(r) => {
                let mut e = FhirError::from_rejection(r);
                e.issues.push(hale_fhir::Issue::information(
                    "nothing was postponed: an appointment or slot changed while $postpone ran. Run it again",
                ));
                return Err(e);
            }
            Applied::Audited(_) | Applied::Staged { .. } | Applied::Replayed(_) | Applied::Account(_) => {
                return Err(FhirError::internal("unexpected apply result"))
            }
        }
    }
    let mut out = vec![
        param("incident", "valueReference", reference(&incident.reference())),
        param("from", "valueInstant", json!(crate::wire::instant(from_ms))),
        param("to", "valueInstant", json!(crate::wire::instant(to_ms))),
        param("clinicRuns", "valueBoolean", json!(clinic_runs)),
        param("postponed", "valueInteger", json!(postponed.len())),
        param("slotsBlocked", "valueInteger", json!(blocked.len())),
    ];
    for (c, n) in &by_category {
        out.push(part(
            "byCategory",
            vec![
                param("category", "valueCode", json!(c)),
                param("count", "valueInteger", json!(n)),
            ],
        ));
    }
    for (s, n) in &by_site {
        out.push(part(
            "bySite",
            vec![
                param("site", "valueCode", json!(s)),
                param("count", "valueInteger", json!(n)),
            ],
        ));
    }
    for id in &postponed {
        out.push(param(
            "appointment",
            "valueReference",
            reference(&format!("Appointment/{id}")),
        ));
    }
    Ok(parameters(out))
}

// ---------------------------------------------------------------------------
// The report

/// What the store holds for one incident: postponed appointments, their rebookings and
/// the outbox records about those.
pub(crate) struct IncidentState {
    /// Postponed (cancelled by `$postpone`) appointments.
    pub postponed: Vec<Value>,
    /// Old appointment id -> the appointment that replaced it.
    pub rebooked: HashMap<String, Value>,
    /// New appointment id -> outbox records about it.
    pub outbox: HashMap<String, Vec<Value>>,
}

pub(crate) fn incident_state(app: &App, incident: &Incident, with_outbox: bool) -> Result<IncidentState, FhirError> {
    let all = search_all(app, ResourceType::Appointment, &[("incident", incident.reference())])?;
    let mut postponed = Vec::new();
    let mut rebooked = HashMap::new();
    for a in all {
        match ext(&a, codes::EXT_REBOOKED_FROM)
            .and_then(|e| e["valueReference"]["reference"].as_str())
            .and_then(|r| r.strip_prefix("Appointment/"))
        {
            Some(old) => {
                rebooked.insert(old.to_string(), a);
            }
            None => postponed.push(a),
        }
    }
    let mut outbox: HashMap<String, Vec<Value>> = HashMap::new();
    if with_outbox {
        for c in search_all(app, ResourceType::Communication, &[("about", incident.reference())])? {
            if let Some(appt) = refs_of(&c["about"], "Appointment").first() {
                outbox.entry(appt.to_string()).or_default().push(c);
            }
        }
    }
    Ok(IncidentState {
        postponed,
        rebooked,
        outbox,
    })
}

/// The code of a Communication's Hale channel.
pub(crate) fn channel_of(c: &Value) -> Option<&str> {
    c["medium"]
        .as_array()?
        .iter()
        .flat_map(|m| m["coding"].as_array().into_iter().flatten())
        .find(|m| m["system"] == codes::NOTIFICATION_CHANNEL_SYSTEM)
        .and_then(|m| m["code"].as_str())
}

pub async fn report(cx: &Ctx<'_>, id: &str) -> Result<Response, FhirError> {
    authorize(cx.principal, ResourceType::Appointment, false)?;
    let incident = load_incident(cx.app, id, "Basic.id")?;
    let state = incident_state(cx.app, &incident, true)?;
    let mut places = Places::new(cx.app);
    let mut total = [0u32; 3];
    let mut by_category: BTreeMap<String, [u32; 3]> = BTreeMap::new();
    let mut by_site: BTreeMap<String, [u32; 3]> = BTreeMap::new();
    let mut by_day: BTreeMap<String, [u32; 3]> = BTreeMap::new();
    let mut channels: BTreeMap<(String, String), u32> = BTreeMap::new();
    for a in &state.postponed {
        let old = a["id"].as_str().unwrap_or("");
        let new = state.rebooked.get(old);
        let comms: &[Value] = new
            .and_then(|n| n["id"].as_str())
            .and_then(|n| state.outbox.get(n))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for c in comms {
            *channels
                .entry((
                    channel_of(c).unwrap_or("unknown").to_string(),
                    c["status"].as_str().unwrap_or("unknown").to_string(),
                ))
                .or_default() += 1;
        }
        let row = [
            1,
            u32::from(new.is_some()),
            u32::from(comms.iter().any(|c| c["status"] == "completed")),
        ];
        let cat = places
            .category_of_appointment(a)?
            .map_or(UNCATEGORISED, |c| c.code())
            .to_string();
        let site = places.site_of_appointment(a)?.unwrap_or_else(|| "unknown".into());
        let day = instant_ms(&a["start"]).map_or_else(|| "unknown".into(), |t| uk_date(t).to_string());
        for (map, key) in [(&mut by_category, cat), (&mut by_site, site), (&mut by_day, day)] {
            let r = map.entry(key).or_default();
            for i in 0..3 {
                r[i] += row[i];
            }
        }
        for i in 0..3 {
            total[i] += row[i];
        }
    }
    // "459 outpatient appointments, 14 inpatient procedures, ..."
    let words: Vec<String> = Category::ALL
        .iter()
        .filter_map(|c| {
            let n = by_category.get(c.code()).map_or(0, |r| r[0]);
            (n > 0).then(|| {
                let (one, many) = match c {
                    Category::Outpatient => ("outpatient appointment", "outpatient appointments"),
                    Category::InpatientProcedure => ("inpatient procedure", "inpatient procedures"),
                    Category::DayCase => ("day case", "day cases"),
                    Category::Chemotherapy => ("chemotherapy treatment", "chemotherapy treatments"),
                };
                format!("{n} {}", if n == 1 { one } else { many })
            })
        })
        .collect();
    let mut words = words;
    if let Some(r) = by_category.get(UNCATEGORISED) {
        let n = r[0];
        words.push(format!(
            "{n} uncategorised appointment{} (no Hale category on it or its clinic)",
            if n == 1 { "" } else { "s" }
        ));
    }
    let summary = format!(
        "Postponed: {}. Rebooked: {}. Notified: {}.",
        match words.len() {
            0 => "nothing".to_string(),
            1 => words[0].clone(),
            n => format!("{} and {}", words[..n - 1].join(", "), words[n - 1]),
        },
        total[1],
        total[2]
    );
    cx.audit(
        AuditAction::Execute,
        ResourceType::Appointment,
        None,
        None,
        0,
        format!("GET Basic/{id}/$report -> {} postponed appointment(s)", total[0]),
    )
    .await;
    let mut out = vec![
        param("incident", "valueReference", reference(&incident.reference())),
        param("status", "valueCode", json!(incident.status)),
        param("start", "valueInstant", json!(crate::wire::instant(incident.start_ms))),
    ];
    if let Some(end) = incident.end_ms {
        out.push(param("end", "valueInstant", json!(crate::wire::instant(end - 1))));
    }
    if let Some(d) = &incident.description {
        out.push(param("description", "valueString", json!(d)));
    }
    out.push(param("summary", "valueString", json!(summary)));
    out.push(part(
        "total",
        vec![
            param("postponed", "valueInteger", json!(total[0])),
            param("rebooked", "valueInteger", json!(total[1])),
            param("notified", "valueInteger", json!(total[2])),
        ],
    ));
    out.extend(count_rows("byCategory", "category", "valueCode", &by_category));
    out.extend(count_rows("bySite", "site", "valueCode", &by_site));
    out.extend(count_rows("byDay", "day", "valueDate", &by_day));
    for ((channel, status), n) in &channels {
        out.push(part(
            "notifications",
            vec![
                param("channel", "valueCode", json!(channel)),
                param("status", "valueCode", json!(status)),
                param("count", "valueInteger", json!(n)),
            ],
        ));
    }
    Ok(parameters(out))
}
