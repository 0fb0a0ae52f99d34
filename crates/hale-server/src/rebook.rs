//! `Appointment/$rebook`: a new slot for every appointment an incident postponed,
//! and a durable outbox record (Communication) to tell each patient in time.
//!
//! The handler builds a `hale_sched::Instance` from the store, with "now" fixed from
//! the clock before solving:
//! - the incident's postponed appointments that were not rebooked yet (RTT,
//!   decision-to-treat and regimen extensions, priority, the cancelled-on-the-day flag);
//! - free slots from now to `horizon_days` ahead in the schedules of the services needed;
//! - each patient's other holding appointments (no clashes).
//!
//! A slot suits an appointment when it has the same category and service type and,
//! unless `anySite`, is at the same hospital site. The instance expresses that through
//! the solver's location constraint: a slot's "location" is the key
//! `<service type>@<Location id>` of its clinic, and an appointment lists the keys
//! that suit it. The practitioner is not constrained (any clinician of the clinic).
//!
//! `hale_sched::solve` plans, `hale_sched::violations` re-checks every hard rule, and
//! with `commit=true` one `Transaction` command creates each new Appointment (linked to
//! the one it replaces by the `rebooked-from` extension; the slot becomes busy in apply)
//! and its Communication in status `preparation`. Both creates are conditional
//! (`rebooked-from=Appointment/<old>`, `about=Appointment/<old>`), so a rerun, even one
//! racing another, never rebooks or notifies twice. Without `commit=true` nothing is written.

use crate::auth::authorize;
use crate::outage::{
    add_tag, barrier, category_of, date_of, drop_exts, ext, incident_state, incident_tag, instant_ms, load_incident,
    param, parameters, part, participants, propose_at, reference, require_admin, search_all, search_by_refs,
    service_types, set_ext, Clinic, OpParams, Places,
};
use crate::rest::Ctx;
use crate::wire::{instant, FhirError};
use crate::{now_ms, App};
use axum::http::StatusCode;
use axum::response::Response;
use hale_fhir::codes;
use hale_fhir::{IssueCode, ResourceType};
use hale_sched::uktime::{to_uk_local, DAY_MS, MINUTE_MS};
use hale_sched::{
    choose_channel, Calendar, Category, Channel, Contact, ContactPolicy, DateWindow, FreeSlot, Instance, Interval,
    Params, Postage, Postponed, Rules, Solution,
};
use hale_store::apply::Applied;
use hale_store::{AuditAction, CommandKind, WriteOp, WriteStatus};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};

const REBOOK_PARAMS: &[&str] = &["incident", "commit", "category", "noticeDays", "anySite"];
/// Ops per placement: the new Appointment and its Communication.
const OPS_PER_PLACEMENT: usize = 2;
/// Placements one committed `$rebook` may hold (one transaction).
pub const PLACEMENTS_PER_COMMIT_MAX: usize = hale_store::apply::OPS_PER_COMMAND_MAX / OPS_PER_PLACEMENT;
/// Holding statuses of a patient's other appointments (fulfilled ones are in the past).
const BUSY_STATUSES: &str = "pending,booked,arrived,checked-in";

/// A rebooking problem built from the store, with what is needed to write the result.
struct Plan {
    instance: Instance,
    /// Postponed appointment id -> its stored JSON.
    appointments: HashMap<String, Value>,
    /// Free slot id -> (stored JSON, clinic).
    slots: HashMap<String, (Value, Clinic)>,
    postponed: usize,
    already: usize,
    /// Postponed appointments with no Hale category (their own or their
    /// clinic's): not rebooked automatically, listed for staff (id, priority).
    uncategorised: Vec<(String, u64)>,
}

/// Suitability keys of free slots: `<service type>@<Location id>` -> (site, categories).
type Keys = BTreeMap<String, (Option<String>, BTreeSet<Category>)>;

/// What a `$rebook` run considers, besides the incident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebookOptions {
    /// Only appointments of this category.
    pub category: Option<Category>,
    /// Reasonable notice in days (soft): 21 in England, 10 in Scotland.
    pub notice_days: i64,
    /// Any site's clinic of the same service, not only the original site's.
    pub any_site: bool,
}

impl RebookOptions {
    pub fn from_settings(s: &crate::outage::OutageSettings) -> RebookOptions {
        RebookOptions {
            category: None,
            notice_days: s.notice_days,
            any_site: s.any_site,
        }
    }
}

/// The solver's parameters for a run at `now_ms`.
fn solver_params(settings: &crate::outage::OutageSettings, opts: &RebookOptions, now_ms: i64) -> Params {
    let mut params = Params::new(now_ms);
    params.min_lead_minutes = settings.min_lead_hours.max(0) * 60;
    params.rules = Rules {
        notice_days: opts.notice_days,
        ..Rules::england()
    };
    params
}

/// The rebooking problem of incident `incident_id` as the store holds it, as a run at
/// `now_ms` with `opts` would see it, and the heuristic's plan for it. Reads only:
/// `$rebook` without `commit=true` answers exactly this.
pub fn plan(
    app: &App,
    incident_id: &str,
    opts: &RebookOptions,
    now_ms: i64,
) -> Result<(Instance, Solution), FhirError> {
    let incident = load_incident(app, incident_id, "incident")?;
    let plan = gather(app, &incident, opts, solver_params(&app.cfg.outage, opts, now_ms))?;
    let sol = hale_sched::solve(&plan.instance);
    Ok((plan.instance, sol))
}

fn gather(
    app: &App,
    incident: &crate::outage::Incident,
    opts: &RebookOptions,
    params: Params,
) -> Result<Plan, FhirError> {
    let (category, any_site) = (opts.category, opts.any_site);
    let settings = &app.cfg.outage;
    let state = incident_state(app, incident, false)?;
    let postponed = state.postponed.len();
    let already = state
        .postponed
        .iter()
        .filter(|a| a["id"].as_str().is_some_and(|id| state.rebooked.contains_key(id)))
        .count();
    let mut places = Places::new(app);
    let mut todo: Vec<(Value, Option<String>, Option<Category>)> = Vec::new();
    for a in state.postponed {
        let id = a["id"].as_str().unwrap_or("");
        if state.rebooked.contains_key(id) || a["status"] != "cancelled" {
            continue;
        }
        let cat = places.category_of_appointment(&a)?;
        if category.is_some_and(|c| cat != Some(c)) {
            continue;
        }
        let site = places.site_of_appointment(&a)?;
        todo.push((a, site, cat));
    }
    let needed: BTreeSet<Category> = todo.iter().filter_map(|(_, _, c)| *c).collect();

    // Free slots of the services needed, from the earliest rebooking time to the horizon.
    let from_ms = params.earliest_rebook_ms();
    let until_ms = params.now_ms + settings.horizon_days.max(1) * DAY_MS;
    let mut schedules = Vec::new();
    let mut clinics: HashMap<String, Clinic> = HashMap::new();
    if !todo.is_empty() {
        for s in search_all(app, ResourceType::Schedule, &[])? {
            let Some(id) = s["id"].as_str() else { continue };
            if s["active"] == false {
                continue;
            }
            let Some(clinic) = places.clinic(id)? else { continue };
            if clinic.category.is_none_or(|c| needed.contains(&c)) {
                schedules.push(format!("Schedule/{id}"));
                clinics.insert(id.to_string(), clinic);
            }
        }
    }
    let found = search_by_refs(
        app,
        ResourceType::Slot,
        "schedule",
        &schedules,
        &[
            ("status", "free".into()),
            ("start", format!("ge{}", instant(from_ms))),
            ("start", format!("lt{}", instant(until_ms))),
        ],
    )?;
    let mut keys: Keys = BTreeMap::new();
    let mut slots = Vec::new();
    let mut slot_data = HashMap::new();
    for s in found {
        let (Some(id), Some(start_ms), Some(end_ms)) =
            (s["id"].as_str(), instant_ms(&s["start"]), instant_ms(&s["end"]))
        else {
            continue;
        };
        let Some(sched) = s["schedule"]["reference"]
            .as_str()
            .and_then(|r| r.strip_prefix("Schedule/"))
        else {
            continue;
        };
        let Some(clinic) = clinics.get(sched) else { continue };
        let Some(cat) = category_of(&s).or(clinic.category) else {
            continue;
        };
        if !needed.contains(&cat) {
            continue;
        }
        let mut types = service_types(&s);
        if types.is_empty() {
            types = clinic.service_types.clone();
        }
        let key = format!(
            "{}@{}",
            types.first().map(String::as_str).unwrap_or(""),
            clinic.location.as_deref().unwrap_or(sched)
        );
        keys.entry(key.clone())
            .or_insert_with(|| (clinic.site.clone(), BTreeSet::new()))
            .1
            .insert(cat);
        slots.push(FreeSlot {
            id: id.to_string(),
            schedule: sched.to_string(),
            category: cat,
            start_ms,
            end_ms,
            practitioner: clinic.practitioner.clone(),
            location: Some(key),
        });
        slot_data.insert(id.to_string(), (s.clone(), clinic.clone()));
    }
    slots.sort_by(|a, b| (a.start_ms, &a.id).cmp(&(b.start_ms, &b.id)));

    // Each patient's other holding appointments.
    let patients: BTreeSet<String> = todo
        .iter()
        .filter_map(|(a, _, _)| participants(a, "Patient").first().map(|p| format!("Patient/{p}")))
        .collect();
    let patients: Vec<String> = patients.into_iter().collect();
    let mut busy: HashMap<String, Vec<Interval>> = HashMap::new();
    for a in search_by_refs(
        app,
        ResourceType::Appointment,
        "patient",
        &patients,
        &[
            ("status", BUSY_STATUSES.into()),
            ("date", format!("ge{}", instant(params.now_ms - DAY_MS))),
        ],
    )? {
        let (Some(s), Some(e)) = (instant_ms(&a["start"]), instant_ms(&a["end"])) else {
            continue;
        };
        for p in participants(&a, "Patient") {
            busy.entry(p.to_string()).or_default().push(Interval::new(s, e));
        }
    }

    let mut appointments = HashMap::new();
    let mut list = Vec::new();
    let mut uncategorised = Vec::new();
    for (a, site, cat) in todo {
        let id = a["id"].as_str().unwrap_or("").to_string();
        let patient = participants(&a, "Patient")
            .first()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let Some(cat) = cat else {
            uncategorised.push((id, a["priority"].as_u64().unwrap_or(0)));
            continue;
        };
        let start = instant_ms(&a["start"]).unwrap_or(0);
        let duration = match instant_ms(&a["end"]) {
            Some(end) if end > start => (end - start) / MINUTE_MS,
            _ => a["minutesDuration"].as_i64().unwrap_or(0),
        };
        let types = service_types(&a);
        let mut locations: Vec<String> = keys
            .iter()
            .filter(|(k, (key_site, cats))| {
                let svc = k.split('@').next().unwrap_or("");
                cats.contains(&cat)
                    && (types.is_empty() || types.iter().any(|t| t == svc))
                    && (any_site || site.is_none() || key_site == &site)
            })
            .map(|(k, _)| k.clone())
            .collect();
        if locations.is_empty() {
            // No clinic of this service (at this site): nothing suits, and the solver says so.
            locations.push(format!(
                "no clinic of {} at {}",
                types.join("/"),
                site.as_deref().unwrap_or("any site")
            ));
        }
        let date = |url: &str| ext(&a, url).and_then(|e| date_of(&e["valueDate"]));
        let regimen = ext(&a, codes::EXT_REGIMEN_WINDOW).and_then(|e| {
            Some(DateWindow {
                earliest: date_of(&e["valuePeriod"]["start"])?,
                latest: date_of(&e["valuePeriod"]["end"])?,
            })
        });
        let flag = |url: &str| ext(&a, url).and_then(|e| e["valueBoolean"].as_bool()).unwrap_or(false);
        list.push(Postponed {
            id: id.clone(),
            patient: patient.clone(),
            category: cat,
            // Other systems' priorities (0 undefined, 5-9 lower than routine) are routine here.
            priority: match a["priority"].as_u64() {
                Some(p @ 1..=4) => p as u8,
                _ => 4,
            },
            duration_minutes: duration,
            original_start_ms: start,
            cancelled_on_the_day: flag(codes::EXT_CANCELLED_ON_THE_DAY),
            // The referral itself (ServiceRequest.authoredOn) where the
            // appointment is based on one, and Hale's extension; the earlier
            // when both are there, so no breach is reported late.
            rtt_referral: [date(codes::EXT_RTT_REFERRAL_DATE), referral_date(app, &a)?]
                .into_iter()
                .flatten()
                .min(),
            decision_to_treat: date(codes::EXT_DECISION_TO_TREAT_DATE),
            regimen_window: regimen,
            practitioners: Vec::new(),
            locations,
            busy: busy.get(&patient).cloned().unwrap_or_default(),
            notice_waived: flag(codes::EXT_NOTICE_WAIVED),
        });
        appointments.insert(id, a);
    }
    list.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Plan {
        instance: Instance {
            params,
            appointments: list,
            slots,
        },
        appointments,
        slots: slot_data,
        postponed,
        already,
        uncategorised,
    })
}

/// How a patient can be reached, from `Patient.telecom` and `Patient.address`.
pub(crate) fn contact_of(p: &Value) -> Contact {
    let mut c = Contact::default();
    for t in p["telecom"].as_array().into_iter().flatten() {
        let value = t["value"].as_str().unwrap_or("").trim();
        if value.is_empty() || t["period"]["end"].is_string() {
            continue;
        }
        match t["system"].as_str() {
            Some("phone") | Some("sms") => {
                c.phone = true;
                let digits: String = value.chars().filter(|ch| ch.is_ascii_digit() || *ch == '+').collect();
                if t["use"] == "mobile"
                    || t["system"] == "sms"
                    || digits.starts_with("07")
                    || digits.starts_with("+447")
                {
                    c.mobile = true;
                }
            }
            Some("email") => c.email = true,
            _ => {}
        }
    }
    c.address = p["address"].as_array().into_iter().flatten().any(|a| {
        a["use"] != "old"
            && (a["postalCode"].as_str().is_some_and(|s| !s.trim().is_empty())
                || a["line"].as_array().is_some_and(|l| !l.is_empty()))
    });
    c
}

pub(crate) fn channel_code(ch: &Channel) -> &'static str {
    match ch {
        Channel::Letter { .. } => "letter",
        Channel::Sms => "sms",
        Channel::Email => "email",
        Channel::PhoneCall => "phone-call",
        Channel::StaffList => "staff-list",
    }
}

/// HL7 v3 ParticipationMode for the channels that have one.
fn participation_mode(ch: &Channel) -> Option<(&'static str, &'static str)> {
    match ch {
        Channel::Letter { .. } => Some(("MAILWRIT", "mail")),
        Channel::Email => Some(("EMAILWRIT", "email")),
        Channel::PhoneCall => Some(("PHONE", "telephone")),
        _ => None,
    }
}

fn uk_text(ms: i64) -> String {
    to_uk_local(ms).format("%A %-d %B %Y at %H:%M").to_string()
}

/// The new booked Appointment replacing `old` in `slot`.
fn new_appointment(
    old: &Value,
    incident: &str,
    slot: (&str, &Value, &Clinic),
    start_ms: i64,
    end_ms: i64,
    now: i64,
) -> Value {
    let (slot_id, _, clinic) = slot;
    let old_id = old["id"].as_str().unwrap_or("");
    let patient = participants(old, "Patient")
        .first()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let mut a = old.clone();
    let o = a.as_object_mut().expect("object");
    for k in [
        "id",
        "meta",
        "cancelationReason",
        "participant",
        "slot",
        "comment",
        "requestedPeriod",
    ] {
        o.remove(k);
    }
    a["status"] = json!("booked");
    a["start"] = json!(instant(start_ms));
    a["end"] = json!(instant(end_ms));
    a["minutesDuration"] = json!((end_ms - start_ms) / MINUTE_MS);
    a["created"] = json!(instant(now));
    a["slot"] = json!([reference(&format!("Slot/{slot_id}"))]);
    let mut parts = vec![
        json!({"actor": reference(&format!("Patient/{patient}")), "required": "required", "status": "needs-action"}),
    ];
    if let Some(p) = &clinic.practitioner {
        parts.push(
            json!({"actor": reference(&format!("Practitioner/{p}")), "required": "required", "status": "accepted"}),
        );
    }
    if let Some(l) = &clinic.location {
        parts.push(json!({"actor": reference(&format!("Location/{l}")), "required": "required", "status": "accepted"}));
    }
    a["participant"] = Value::Array(parts);
    a["comment"] = json!(format!(
        "Rebooked after an IT outage (incident Basic/{incident}); replaces Appointment/{old_id}"
    ));
    drop_exts(&mut a, &[codes::EXT_CANCELLED_ON_THE_DAY]);
    set_ext(
        &mut a,
        codes::EXT_REBOOKED_FROM,
        json!({"url": codes::EXT_REBOOKED_FROM, "valueReference": reference(&format!("Appointment/{old_id}"))}),
    );
    set_ext(
        &mut a,
        codes::EXT_OUTAGE_INCIDENT,
        json!({"url": codes::EXT_OUTAGE_INCIDENT, "valueReference": reference(&format!("Basic/{incident}"))}),
    );
    add_tag(&mut a, &incident_tag(incident), "Outage incident");
    add_tag(&mut a, codes::TAG_OUTAGE_REBOOKED, "Rebooked after an IT outage");
    a
}

/// The outbox record for one rebooking.
#[allow(clippy::too_many_arguments)]
fn communication(
    id: &str,
    incident: &str,
    old: &Value,
    new_id: &str,
    channel: &Channel,
    start_ms: i64,
    location_name: Option<&str>,
) -> Value {
    let old_id = old["id"].as_str().unwrap_or("");
    let patient = participants(old, "Patient")
        .first()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let code = channel_code(channel);
    let display = codes::NOTIFICATION_CHANNELS
        .iter()
        .find(|(c, _)| *c == code)
        .map_or(code, |(_, d)| *d);
    let mut medium = vec![json!({"system": codes::NOTIFICATION_CHANNEL_SYSTEM, "code": code, "display": display})];
    if let Some((mode, d)) = participation_mode(channel) {
        medium.push(
            json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationMode", "code": mode, "display": d}),
        );
    }
    let what = old["description"]
        .as_str()
        .map(|d| format!("{d} appointment"))
        .unwrap_or_else(|| "appointment".into());
    let was = instant_ms(&old["start"]).map(uk_text).unwrap_or_default();
    let text = format!(
        "Your {what} on {was} was cancelled because of an IT outage. It has been rebooked for {}{}. \
         If you cannot attend, please contact the hospital.",
        uk_text(start_ms),
        location_name.map(|l| format!(" at {l}")).unwrap_or_default()
    );
    let urgent = old["priority"].as_u64().is_some_and(|p| p <= 2);
    let mut c = json!({
        "resourceType": "Communication",
        "identifier": [{"system": codes::NOTIFICATION_ID_SYSTEM, "value": id}],
        "status": "preparation",
        "category": [{"coding": [{
            "system": codes::NOTIFICATION_CATEGORY_SYSTEM,
            "code": codes::NOTIFICATION_APPOINTMENT_REBOOKED,
            "display": "Appointment rebooked",
        }]}],
        "priority": if urgent { "urgent" } else { "routine" },
        "medium": [{"coding": medium, "text": display}],
        "subject": reference(&format!("Patient/{patient}")),
        "about": [
            reference(&format!("Appointment/{new_id}")),
            reference(&format!("Appointment/{old_id}")),
            reference(&format!("Basic/{incident}")),
        ],
        "recipient": [reference(&format!("Patient/{patient}"))],
        "payload": [{"contentString": text}],
    });
    set_ext(
        &mut c,
        codes::EXT_OUTAGE_INCIDENT,
        json!({"url": codes::EXT_OUTAGE_INCIDENT, "valueReference": reference(&format!("Basic/{incident}"))}),
    );
    if let Channel::Letter { postage, delivered } = channel {
        let postage = match postage {
            Postage::First => "first",
            Postage::Second => "second",
        };
        set_ext(
            &mut c,
            codes::EXT_LETTER_POSTAGE,
            json!({"url": codes::EXT_LETTER_POSTAGE, "valueCode": postage}),
        );
        set_ext(
            &mut c,
            codes::EXT_LETTER_EXPECTED_DELIVERY,
            json!({"url": codes::EXT_LETTER_EXPECTED_DELIVERY, "valueDate": delivered.to_string()}),
        );
    }
    add_tag(&mut c, &incident_tag(incident), "Outage incident");
    add_tag(&mut c, codes::TAG_OUTAGE_NOTIFICATION, "Outage notification");
    c
}

fn code_of<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

pub async fn rebook(cx: &Ctx<'_>, body: &[u8], query: &str) -> Result<Response, FhirError> {
    authorize(cx.principal, ResourceType::Appointment, false)?;
    let p = OpParams::parse("$rebook", body, query, REBOOK_PARAMS)?;
    let (incident_id, incident_at) = p.incident()?;
    let commit = p.bool("commit")?.unwrap_or(false);
    let category = p.category()?;
    let settings = cx.app.cfg.outage.clone();
    let notice_days = p.int("noticeDays", 0..=365)?.unwrap_or(settings.notice_days);
    let any_site = p.bool("anySite")?.unwrap_or(settings.any_site);
    if commit {
        require_admin(cx, "commit a rebooking")?;
    }
    barrier(cx.app).await?;
    let incident = load_incident(cx.app, &incident_id, &incident_at)?;

    // "Now" is fixed here, once: the solver and the command both use it.
    let now = now_ms();
    let opts = RebookOptions {
        category,
        notice_days,
        any_site,
    };
    let plan = gather(cx.app, &incident, &opts, solver_params(&settings, &opts, now))?;
    let (plan, sol, problems): (Plan, Solution, Vec<String>) = tokio::task::spawn_blocking(move || {
        let sol = hale_sched::solve(&plan.instance);
        let problems = hale_sched::violations(&plan.instance, &sol);
        (plan, sol, problems)
    })
    .await
    .map_err(|e| FhirError::internal(format!("the solver failed: {e}")))?;
    if !problems.is_empty() {
        tracing::error!(?problems, "rebooking plan breaks hard rules");
        return Err(FhirError::internal(format!(
            "the rebooking plan breaks {} hard rule(s), so nothing was booked (this is a bug): {}",
            problems.len(),
            problems.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
        )));
    }

    if sol.assignments.len() > PLACEMENTS_PER_COMMIT_MAX && commit {
        return Err(FhirError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            IssueCode::TooCostly,
            format!(
                "{} placements are more than the {PLACEMENTS_PER_COMMIT_MAX} one transaction may hold; commit in parts with 'category'",
                sol.assignments.len()
            ),
        ));
    }
    // Contact details for the channel of each notification.
    let patient_ids: BTreeSet<String> = sol
        .assignments
        .iter()
        .filter_map(|x| plan.appointments.get(&x.appointment))
        .filter_map(|a| participants(a, "Patient").first().map(|p| p.to_string()))
        .collect();
    let mut contacts: HashMap<String, Contact> = HashMap::new();
    let ids: Vec<String> = patient_ids.into_iter().collect();
    for p in search_by_refs(cx.app, ResourceType::Patient, "_id", &ids, &[])? {
        if let Some(id) = p["id"].as_str() {
            contacts.insert(id.to_string(), contact_of(&p));
        }
    }
    let policy = ContactPolicy {
        margin_days: settings.letter_margin_days,
        calendar: if settings.bank_holidays.is_empty() {
            Calendar::england_and_wales()
        } else {
            Calendar::new(settings.bank_holidays.iter().copied())
        },
        ..ContactPolicy::default()
    };
    let mut places = Places::new(cx.app);

    struct Row {
        old: String,
        patient: String,
        channel: Channel,
        new_id: String,
        comm_id: String,
    }
    let mut rows = Vec::with_capacity(sol.assignments.len());
    let mut ops = Vec::new();
    for x in &sol.assignments {
        let old = &plan.appointments[&x.appointment];
        let patient = participants(old, "Patient")
            .first()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let contact = contacts.get(&patient).copied().unwrap_or_default();
        let channel = choose_channel(now, x.start_ms, &contact, &policy);
        let new_id = uuid::Uuid::new_v4().to_string();
        let comm_id = uuid::Uuid::new_v4().to_string();
        if commit {
            let (slot_json, clinic) = &plan.slots[&x.slot];
            let appt = new_appointment(
                old,
                &incident.id,
                (&x.slot, slot_json, clinic),
                x.start_ms,
                x.end_ms,
                now,
            );
            let name = match &clinic.location {
                Some(l) => places.location_name(l)?,
                None => None,
            };
            let comm = communication(
                &comm_id,
                &incident.id,
                old,
                &new_id,
                &channel,
                x.start_ms,
                name.as_deref(),
            );
            let old_ref = format!("Appointment/{}", x.appointment);
            ops.push(WriteOp::Create {
                rtype: "Appointment".into(),
                id: new_id.clone(),
                resource: appt,
                if_none_exist: Some(vec![("rebooked-from".into(), old_ref.clone())]),
            });
            ops.push(WriteOp::Create {
                rtype: "Communication".into(),
                id: comm_id.clone(),
                resource: comm,
                if_none_exist: Some(vec![
                    ("about".into(), old_ref),
                    (
                        "category".into(),
                        format!(
                            "{}|{}",
                            codes::NOTIFICATION_CATEGORY_SYSTEM,
                            codes::NOTIFICATION_APPOINTMENT_REBOOKED
                        ),
                    ),
                ]),
            });
        }
        rows.push(Row {
            old: x.appointment.clone(),
            patient,
            channel,
            new_id,
            comm_id,
        });
    }
    // Validate what is about to be written, as any client write would be.
    for op in &ops {
        if let WriteOp::Create { resource, rtype, .. } = op {
            if let Err(issues) = hale_fhir::validate::validate_resource(resource, rtype.parse().ok()) {
                return Err(FhirError::internal(format!(
                    "a generated {rtype} is invalid (this is a bug; nothing was booked): {}",
                    issues[0].diagnostics
                )));
            }
        }
    }
    // Created or already there (a racing run), per placement.
    let mut outcome: Vec<Option<WriteStatus>> = vec![None; rows.len()];
    if commit && !ops.is_empty() {
        match propose_at(cx, now, CommandKind::Transaction(ops)).await? {
            Applied::Ops(results) => {
                for (i, r) in results.into_iter().enumerate() {
                    if i % OPS_PER_PLACEMENT == 0 {
                        outcome[i / OPS_PER_PLACEMENT] = r.ok().map(|w| w.status);
                    }
                }
            }
            Applied::TransactionFailed(r) => {
                let mut e = FhirError::from_rejection(r);
                e.issues.push(hale_fhir::Issue::information(
                    "nothing was rebooked: a slot or appointment changed while $rebook ran. Run it again to plan with the current state",
                ));
                return Err(e);
            }
            Applied::Audited(_) | Applied::Staged { .. } | Applied::Replayed(_) | Applied::Account(_) => {
                return Err(FhirError::internal("unexpected apply result"))
            }
        }
    }

    let shown: Vec<&str> = rows.iter().take(20).map(|r| r.patient.as_str()).collect();
    cx.audit(
        AuditAction::Execute,
        ResourceType::Appointment,
        None,
        None,
        0,
        format!(
            "POST Appointment/$rebook incident Basic/{} ({}) -> {} placement(s); patients: {}",
            incident.id,
            if commit { "commit" } else { "dry run" },
            rows.len(),
            shown.join(",")
        ),
    )
    .await;
    let o = &sol.objective;
    let committed = outcome.iter().filter(|s| **s == Some(WriteStatus::Created)).count();
    let mut out = vec![
        param("incident", "valueReference", reference(&incident.reference())),
        param("commit", "valueBoolean", json!(commit)),
        param("runAt", "valueInstant", json!(instant(now))),
        param("noticeDays", "valueInteger", json!(notice_days)),
        param("postponed", "valueInteger", json!(plan.postponed)),
        param("alreadyRebooked", "valueInteger", json!(plan.already)),
        param("considered", "valueInteger", json!(plan.instance.appointments.len())),
        param("freeSlots", "valueInteger", json!(plan.instance.slots.len())),
        param("placed", "valueInteger", json!(o.placed_total())),
        param(
            "unplaced",
            "valueInteger",
            json!(o.unplaced_total() as usize + plan.uncategorised.len()),
        ),
        param("committed", "valueInteger", json!(committed)),
        param("objective", "valueString", json!(o.to_string())),
    ];
    for (i, (x, row)) in sol.assignments.iter().zip(&rows).enumerate() {
        let old = &plan.appointments[&x.appointment];
        let (_, clinic) = &plan.slots[&x.slot];
        let mut parts = vec![
            param(
                "appointment",
                "valueReference",
                reference(&format!("Appointment/{}", row.old)),
            ),
            param(
                "patient",
                "valueReference",
                reference(&format!("Patient/{}", row.patient)),
            ),
            param(
                "category",
                "valueCode",
                json!(category_of(old).map_or("unknown", |c| c.code())),
            ),
            param("priority", "valueInteger", json!(old["priority"].as_u64().unwrap_or(0))),
            param("slot", "valueReference", reference(&format!("Slot/{}", x.slot))),
            param("start", "valueInstant", json!(instant(x.start_ms))),
            param("end", "valueInstant", json!(instant(x.end_ms))),
            param("latenessDays", "valueInteger", json!(x.lateness_days)),
            param("shortNotice", "valueBoolean", json!(x.short_notice)),
        ];
        if let Some(site) = &clinic.site {
            parts.push(param("site", "valueCode", json!(site)));
        }
        if let Some(d) = x.deadline {
            parts.push(param("deadline", "valueDate", json!(d.to_string())));
        }
        for b in &x.breached {
            parts.push(param("breached", "valueCode", json!(code_of(b))));
        }
        parts.push(param("channel", "valueCode", json!(channel_code(&row.channel))));
        if let Channel::Letter { delivered, .. } = &row.channel {
            parts.push(param("letterDelivered", "valueDate", json!(delivered.to_string())));
        }
        match outcome[i] {
            Some(WriteStatus::Created) => {
                parts.push(param(
                    "newAppointment",
                    "valueReference",
                    reference(&format!("Appointment/{}", row.new_id)),
                ));
                parts.push(param(
                    "notification",
                    "valueReference",
                    reference(&format!("Communication/{}", row.comm_id)),
                ));
            }
            Some(_) => parts.push(param("alreadyRebooked", "valueBoolean", json!(true))),
            None => {}
        }
        out.push(part("placement", parts));
    }
    for u in &sol.unplaced {
        let mut text = u.reason.describe().to_string();
        if !u.detail.is_empty() {
            text = format!("{text}: {}", u.detail);
        }
        out.push(part(
            "unplacedAppointment",
            vec![
                param(
                    "appointment",
                    "valueReference",
                    reference(&format!("Appointment/{}", u.appointment)),
                ),
                param("category", "valueCode", json!(u.category.code())),
                param("priority", "valueInteger", json!(u.priority)),
                param("reason", "valueCode", json!(code_of(&u.reason))),
                param("text", "valueString", json!(text)),
            ],
        ));
    }
    for (id, priority) in &plan.uncategorised {
        out.push(part(
            "unplacedAppointment",
            vec![
                param("appointment", "valueReference", reference(&format!("Appointment/{id}"))),
                param("category", "valueCode", json!(crate::outage::UNCATEGORISED)),
                param("priority", "valueInteger", json!(priority)),
                param("reason", "valueCode", json!("uncategorised")),
                param(
                    "text",
                    "valueString",
                    json!("no Hale category on the appointment or its clinic, so the NHS waiting-time rules cannot be applied: rebook it by hand or give its clinic a category"),
                ),
            ],
        ));
    }
    for s in &sol.shortfall {
        out.push(part(
            "shortfall",
            vec![
                param("category", "valueCode", json!(s.category.code())),
                param("weekStart", "valueDate", json!(s.week_start.to_string())),
                param("hours", "valueInteger", json!(s.hours())),
                param("appointments", "valueInteger", json!(s.appointments)),
                param("text", "valueString", json!(s.describe())),
            ],
        ));
    }
    Ok(parameters(out))
}

/// When the referral an appointment is based on was made: `authoredOn` of the
/// first ServiceRequest in `basedOn` that has one.
fn referral_date(app: &App, appointment: &Value) -> Result<Option<chrono::NaiveDate>, FhirError> {
    for b in appointment["basedOn"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let Some(("ServiceRequest", id)) = b["reference"].as_str().and_then(|r| r.split_once('/')) else {
            continue;
        };
        if let Some((sr, _)) = crate::outage::read_json(app, "ServiceRequest", id)? {
            if let Some(d) = date_of(&sr["authoredOn"]) {
                return Ok(Some(d));
            }
        }
    }
    Ok(None)
}
