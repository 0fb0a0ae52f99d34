//! Properties of generated boards.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use chrono::{Datelike, NaiveDate, NaiveDateTime};
use hale_demo::{generate, Board, DemoConfig};
use hale_fhir::codes;
use serde_json::Value;

fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 23).unwrap()
}

fn config(patients: usize) -> DemoConfig {
    DemoConfig {
        seed: 2013,
        patients,
        today: today(),
    }
}

/// A small board: every resource is schema-validated.
fn small() -> &'static Board {
    static B: OnceLock<Board> = OnceLock::new();
    B.get_or_init(|| generate(&config(200)))
}

/// A medium board for statistics.
fn medium() -> &'static Board {
    static B: OnceLock<Board> = OnceLock::new();
    B.get_or_init(|| generate(&config(3000)))
}

fn of_type<'a>(board: &'a Board, t: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    board.resources.iter().filter(move |r| r["resourceType"] == t)
}

fn by_ref(board: &Board) -> BTreeMap<String, &Value> {
    board
        .resources
        .iter()
        .map(|r| {
            (
                format!("{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap()),
                r,
            )
        })
        .collect()
}

fn instant(v: &Value) -> NaiveDateTime {
    let s = v.as_str().unwrap_or_else(|| panic!("not a string: {v}"));
    assert!(s.ends_with('Z'), "instant without Z: {s}");
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%SZ").unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn date(v: &Value) -> NaiveDate {
    NaiveDate::parse_from_str(v.as_str().unwrap(), "%Y-%m-%d").unwrap()
}

fn ext<'a>(r: &'a Value, url: &str) -> Option<&'a Value> {
    r["extension"].as_array()?.iter().find(|e| e["url"] == url)
}

fn nhs_valid(s: &str) -> bool {
    let d: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if d.len() != 10 || s.len() != 10 {
        return false;
    }
    let sum: u32 = (0..9).map(|i| d[i] * (10 - i as u32)).sum();
    let check = match 11 - sum % 11 {
        11 => 0,
        10 => return false,
        c => c,
    };
    check == d[9]
}

/// Walk every JSON object inside `v`.
fn walk<'a>(v: &'a Value, f: &mut dyn FnMut(&'a serde_json::Map<String, Value>)) {
    match v {
        Value::Object(m) => {
            f(m);
            for x in m.values() {
                walk(x, f);
            }
        }
        Value::Array(a) => {
            for x in a {
                walk(x, f);
            }
        }
        _ => {}
    }
}

#[test]
fn default_config() {
    let c = DemoConfig::default();
    assert_eq!(c.seed, 2013);
    assert_eq!(c.patients, 10_000);
    assert_eq!(c.today, today());
}

#[test]
fn validates_against_fhir_r4_json_schema() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fhir/fhir.schema.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let schema: Value = serde_json::from_str(&text).unwrap();
    let definitions = &schema["definitions"];
    let board = small();
    let mut validators = BTreeMap::new();
    let mut failures = Vec::new();
    let mut checked = 0;
    for r in &board.resources {
        let t = r["resourceType"].as_str().unwrap().to_string();
        let validator = validators.entry(t.clone()).or_insert_with(|| {
            assert!(definitions.get(&t).is_some(), "no schema definition for {t}");
            let wrapper = serde_json::json!({
                "$schema": "http://json-schema.org/draft-06/schema#",
                "$ref": format!("#/definitions/{t}"),
                "definitions": definitions,
            });
            jsonschema::validator_for(&wrapper).unwrap_or_else(|e| panic!("schema for {t}: {e}"))
        });
        for e in validator.iter_errors(r) {
            if failures.len() < 20 {
                failures.push(format!("{t}/{}: {} at {}", r["id"], e, e.instance_path()));
            }
        }
        checked += 1;
    }
    assert!(
        failures.is_empty(),
        "{} schema failures, e.g.:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(checked, board.resources.len());
    assert!(
        validators.len() >= 15,
        "types validated: {:?}",
        validators.keys().collect::<Vec<_>>()
    );
}

#[test]
fn schema_rejects_broken_resources() {
    // Guard against a validator that accepts anything.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fhir/fhir.schema.json");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let validator = |t: &str| {
        let wrapper = serde_json::json!({
            "$schema": "http://json-schema.org/draft-06/schema#",
            "$ref": format!("#/definitions/{t}"),
            "definitions": schema["definitions"],
        });
        jsonschema::validator_for(&wrapper).unwrap()
    };
    let broken = |t: &str, edit: &dyn Fn(&mut Value)| {
        let v = validator(t);
        let mut r = of_type(small(), t).next().unwrap().clone();
        assert!(v.is_valid(&r), "{t} should be valid");
        edit(&mut r);
        assert!(!v.is_valid(&r), "broken {t} accepted: {r}");
    };
    broken("Slot", &|r| r["start"] = Value::from("23/11/2026 09:00"));
    broken("Slot", &|r| r["bogus"] = Value::from(1));
    broken("Patient", &|r| r["gender"] = Value::from("M"));
    broken("Patient", &|r| r["name"][0]["surname"] = Value::from("Smith"));
    broken("Appointment", &|r| r["priority"] = Value::from("1"));
    broken("Appointment", &|r| {
        r["participant"][0]["actor"]["reference"] = Value::from(7)
    });
    broken("Observation", &|r| r["valueQuantity"]["value"] = Value::from("4.2"));
}

#[test]
fn deterministic() {
    let a = serde_json::to_string(&generate(&config(300)).resources).unwrap();
    let b = serde_json::to_string(&generate(&config(300)).resources).unwrap();
    assert!(a == b, "same config gave different output");
    let c = serde_json::to_string(&generate(&DemoConfig { seed: 7, ..config(300) }).resources).unwrap();
    assert!(a != c, "different seed gave the same output");
}

#[test]
fn ids_unique_no_meta_and_well_formed() {
    let board = medium();
    let mut seen = BTreeSet::new();
    for r in &board.resources {
        let t = r["resourceType"].as_str().expect("resourceType");
        let id = r["id"].as_str().expect("id");
        assert!(
            !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'),
            "bad id {id}"
        );
        assert!(r.get("meta").is_none(), "{t}/{id} has meta");
        assert!(
            t.parse::<hale_fhir::ResourceType>().is_ok(),
            "type {t} not served by Hale"
        );
        assert!(seen.insert(format!("{t}/{id}")), "duplicate {t}/{id}");
    }
}

#[test]
fn references_point_backwards() {
    for board in [small(), medium()] {
        let mut seen = BTreeSet::new();
        let mut count = 0;
        for r in &board.resources {
            walk(r, &mut |m| {
                if let Some(reference) = m.get("reference") {
                    let reference = reference.as_str().expect("reference is a string");
                    let (t, id) = reference.split_once('/').expect("Type/id");
                    assert!(
                        !t.is_empty() && !id.is_empty() && !id.contains('/'),
                        "bad reference {reference}"
                    );
                    assert!(
                        seen.contains(reference),
                        "{reference} in {}/{} is not earlier",
                        r["resourceType"],
                        r["id"]
                    );
                    count += 1;
                }
            });
            seen.insert(format!(
                "{}/{}",
                r["resourceType"].as_str().unwrap(),
                r["id"].as_str().unwrap()
            ));
        }
        assert!(count > board.resources.len());
    }
}

#[test]
fn nhs_numbers_valid_unique_in_test_range() {
    let board = medium();
    let mut numbers = BTreeSet::new();
    for p in of_type(board, "Patient") {
        let ids = p["identifier"].as_array().unwrap();
        let nhs: Vec<&str> = ids
            .iter()
            .filter(|i| i["system"] == codes::NHS_NUMBER_SYSTEM)
            .map(|i| i["value"].as_str().unwrap())
            .collect();
        assert_eq!(nhs.len(), 1);
        let n = nhs[0];
        assert!(nhs_valid(n), "invalid NHS number {n}");
        let v: u64 = n.parse().unwrap();
        assert!(
            (9_980_000_000..=9_999_999_999).contains(&v),
            "{n} outside the test range"
        );
        assert!(numbers.insert(n.to_string()), "duplicate NHS number {n}");
    }
    assert_eq!(numbers.len(), 3000);
}

fn drama_number(s: &str) -> bool {
    let tail = |prefix: &str| {
        s.strip_prefix(prefix)
            .is_some_and(|rest| rest.len() == 3 && rest.chars().all(|c| c.is_ascii_digit()))
    };
    // 07700 900000-900999, 0141/0131 496 0000-0999, 020 7946 0000-0999
    tail("07700 900") || tail("0141 496 0") || tail("0131 496 0") || tail("020 7946 0")
}

#[test]
fn phone_numbers_only_in_drama_ranges() {
    assert!(drama_number("07700 900123") && drama_number("0141 496 0999") && drama_number("020 7946 0000"));
    assert!(!drama_number("07700 901123") && !drama_number("0141 496 1000") && !drama_number("0141 496 012"));
    let board = medium();
    let (mut phones, mut emails) = (0, 0);
    for r in &board.resources {
        walk(r, &mut |m| match m.get("system").and_then(Value::as_str) {
            Some("phone") => {
                let v = m["value"].as_str().unwrap();
                assert!(drama_number(v), "phone {v} outside Ofcom drama ranges");
                phones += 1;
            }
            Some("email") => {
                let v = m["value"].as_str().unwrap();
                assert!(
                    v.ends_with("@example.com") && v.is_ascii() && v.matches('@').count() == 1,
                    "email {v}"
                );
                emails += 1;
            }
            Some("fax" | "pager" | "url" | "sms" | "other") => panic!("unexpected telecom {m:?}"),
            _ => {}
        });
    }
    assert!(phones > 3000 && emails > 100, "phones {phones}, emails {emails}");
    let without = of_type(board, "Patient").filter(|p| p.get("telecom").is_none()).count();
    assert!(
        (30..=180).contains(&without),
        "{without} of 3000 patients without telecom"
    );
}

#[test]
fn patients_look_plausible() {
    let board = medium();
    let mut genders = BTreeMap::new();
    let mut families = BTreeSet::new();
    let mut contacts = 0;
    for p in of_type(board, "Patient") {
        *genders.entry(p["gender"].as_str().unwrap().to_string()).or_insert(0) += 1;
        let birth = date(&p["birthDate"]);
        let age = today().year() - birth.year();
        assert!(birth <= today() && (0..=101).contains(&age), "birthDate {birth}");
        let name = &p["name"][0];
        families.insert(name["family"].as_str().unwrap().to_string());
        assert!(!name["given"].as_array().unwrap().is_empty());
        let addr = &p["address"][0];
        assert_eq!(addr["country"], "GB");
        let pc = addr["postalCode"].as_str().unwrap();
        let (out, inw) = pc.split_once(' ').expect("postcode with space");
        assert!((2..=4).contains(&out.len()) && inw.len() == 3, "postcode {pc}");
        if let Some(c) = p.get("contact") {
            contacts += 1;
            assert!(c[0]["name"]["family"].is_string() && c[0]["relationship"].is_array());
        }
    }
    for g in ["male", "female"] {
        assert!(genders[g] > 1200, "{genders:?}");
    }
    assert!(genders
        .keys()
        .all(|g| ["male", "female", "other", "unknown"].contains(&g.as_str())));
    assert!(families.len() > 100, "only {} surnames", families.len());
    assert!(contacts > 1500, "{contacts} patients with a next of kin");
}

#[test]
fn slots_are_weekdays_in_window_with_plausible_lengths() {
    let board = small();
    let refs = by_ref(board);
    let first = today() - chrono::Duration::days(14);
    let last = today() + chrono::Duration::days(28);
    let mut n = 0;
    for s in of_type(board, "Slot") {
        assert_eq!(s["status"], "free");
        let (start, end) = (instant(&s["start"]), instant(&s["end"]));
        assert!(
            start.date() >= first && start.date() <= last,
            "slot {start} outside window"
        );
        assert!(start.weekday().num_days_from_monday() < 5, "weekend slot {start}");
        let minutes = (end - start).num_minutes();
        let sched = refs[s["schedule"]["reference"].as_str().unwrap()];
        assert_eq!(sched["serviceCategory"], s["serviceCategory"]);
        assert_eq!(sched["serviceType"], s["serviceType"]);
        let cat = s["serviceCategory"][0]["coding"][0]["code"].as_str().unwrap();
        let ok = match cat {
            "outpatient" => (20..=30).contains(&minutes),
            "inpatient-procedure" => (60..=180).contains(&minutes),
            "day-case" => (30..=60).contains(&minutes),
            "chemotherapy" => (60..=120).contains(&minutes),
            other => panic!("unknown category {other}"),
        };
        assert!(ok, "{cat} slot of {minutes} min");
        assert!(start.time() >= chrono::NaiveTime::from_hms_opt(8, 30, 0).unwrap());
        assert!(end.time() <= chrono::NaiveTime::from_hms_opt(17, 30, 0).unwrap());
        n += 1;
    }
    assert!(n > 3000, "{n} slots");
}

#[test]
fn appointments_match_their_slots_and_never_double_book() {
    for board in [small(), medium()] {
        let refs = by_ref(board);
        let mut per_slot: BTreeMap<&str, usize> = BTreeMap::new();
        let mut per_patient: BTreeMap<&str, Vec<(NaiveDateTime, NaiveDateTime)>> = BTreeMap::new();
        let mut statuses = BTreeMap::new();
        for a in of_type(board, "Appointment") {
            let slots = a["slot"].as_array().unwrap();
            assert_eq!(slots.len(), 1);
            let slot_ref = slots[0]["reference"].as_str().unwrap();
            *per_slot.entry(slot_ref).or_default() += 1;
            let slot = refs[slot_ref];
            assert_eq!(a["start"], slot["start"]);
            assert_eq!(a["end"], slot["end"]);
            assert_eq!(a["serviceCategory"], slot["serviceCategory"]);
            assert_eq!(a["serviceType"], slot["serviceType"]);
            let (start, end) = (instant(&a["start"]), instant(&a["end"]));
            let status = a["status"].as_str().unwrap();
            *statuses.entry(status).or_insert(0) += 1;
            if start.date() >= today() {
                assert_eq!(status, "booked");
            } else {
                assert!(["fulfilled", "noshow", "cancelled"].contains(&status), "{status}");
            }
            assert_eq!(a.get("cancelationReason").is_some(), status == "cancelled");
            if status == "cancelled" {
                let by = &a["cancelationReason"]["coding"][0];
                assert_eq!(by["system"], codes::CANCELLED_BY_SYSTEM);
                assert!(by["code"] == "patient" || by["code"] == "provider");
            }
            let priority = a["priority"].as_u64().expect("priority is an unsigned integer");
            assert!((codes::PRIORITY_MIN..=codes::PRIORITY_MAX).contains(&priority));
            assert!(instant(&a["created"]) < start);
            assert!(instant(&a["created"]).date() < today());
            let participants = a["participant"].as_array().unwrap();
            assert_eq!(participants.len(), 3);
            let mut patient = None;
            for p in participants {
                assert_eq!(p["status"], "accepted");
                let r = p["actor"]["reference"].as_str().unwrap();
                if r.starts_with("Patient/") {
                    patient = Some(r);
                }
            }
            let patient = patient.expect("a patient participant");
            let birth = date(&refs[patient]["birthDate"]);
            assert!(birth < start.date());
            // The schedule's actors are the appointment's practitioner and location.
            let sched = refs[slot["schedule"]["reference"].as_str().unwrap()];
            for actor in sched["actor"].as_array().unwrap() {
                assert!(
                    participants.iter().any(|p| p["actor"] == *actor),
                    "schedule actor {actor} missing"
                );
            }
            if status != "cancelled" {
                per_patient.entry(patient).or_default().push((start, end));
            }
        }
        assert!(
            per_slot.values().all(|&n| n == 1),
            "a slot has more than one appointment"
        );
        for (patient, mut times) in per_patient {
            times.sort();
            for w in times.windows(2) {
                assert!(
                    w[0].1 <= w[1].0,
                    "{patient} has overlapping appointments {:?} and {:?}",
                    w[0],
                    w[1]
                );
            }
        }
        for s in ["booked", "fulfilled", "noshow", "cancelled"] {
            assert!(
                statuses.get(s).copied().unwrap_or(0) > 0,
                "no {s} appointments: {statuses:?}"
            );
        }
    }
}

#[test]
fn appointment_extensions() {
    let board = medium();
    let (mut rtt, mut chemo) = (0, 0);
    for a in of_type(board, "Appointment") {
        let start = instant(&a["start"]).date();
        let cat = a["serviceCategory"][0]["coding"][0]["code"].as_str().unwrap();
        let dtt = ext(a, codes::EXT_DECISION_TO_TREAT_DATE);
        let window = ext(a, codes::EXT_REGIMEN_WINDOW);
        let referral = ext(a, codes::EXT_RTT_REFERRAL_DATE);
        if cat == "chemotherapy" {
            chemo += 1;
            let dtt = date(&dtt.expect("decision-to-treat date")["valueDate"]);
            assert!(dtt < start && dtt < today());
            let w = &window.expect("regimen window")["valuePeriod"];
            assert!(date(&w["start"]) <= start && start <= date(&w["end"]));
            assert!(referral.is_none());
        } else {
            assert!(dtt.is_none() && window.is_none());
            if let Some(r) = referral {
                rtt += 1;
                let days = (start - date(&r["valueDate"])).num_days();
                assert!((14..=140).contains(&days), "referral {days} days before");
                assert!(date(&r["valueDate"]) < today());
            }
        }
        let t = &a["appointmentType"]["coding"][0];
        assert_eq!(t["system"], "http://terminology.hl7.org/CodeSystem/v2-0276");
        assert!(["ROUTINE", "FOLLOWUP", "CHECKUP"].contains(&t["code"].as_str().unwrap()));
    }
    assert!(rtt > 500 && chemo > 100, "rtt {rtt}, chemo {chemo}");
}

#[test]
fn counts_in_the_expected_ballpark() {
    let board = medium();
    let n = |t| board.count(t);
    let per_patient = |t| n(t) as f64 / 3000.0;
    assert_eq!(n("Patient"), 3000);
    assert_eq!(n("Organization"), 1 + 4 + 8);
    assert_eq!(n("HealthcareService"), 30);
    assert_eq!(n("Schedule"), 30);
    assert_eq!(n("Location"), 4 + 30);
    assert!((55..=70).contains(&n("Practitioner")));
    assert!(n("PractitionerRole") >= n("Practitioner"));
    assert!((4000..=10_000).contains(&n("Slot")), "{} slots", n("Slot"));
    assert!(
        n("Appointment") * 10 > n("Slot") * 6,
        "{} appointments",
        n("Appointment")
    );
    assert!(n("Appointment") < n("Slot"));
    assert!(
        (1.2..=2.2).contains(&per_patient("Observation")),
        "{}",
        per_patient("Observation")
    );
    assert!((0.10..=0.22).contains(&per_patient("AllergyIntolerance")));
    assert!((0.07..=0.15).contains(&per_patient("ImagingStudy")));
    assert!((0.3..=0.55).contains(&per_patient("DocumentReference")));
    assert!(n("DiagnosticReport") > n("ImagingStudy") * 3);
    assert!(n("Encounter") > 100);
    assert_eq!(
        board.counts().iter().map(|(_, c)| c).sum::<usize>(),
        board.resources.len()
    );
    // The directory and the older clinical types come in contiguous groups;
    // the rest of the record comes patient by patient (a problem before the
    // medicines that treat it), and each referral just before its appointment.
    let interleaved = [
        "Condition",
        "MedicationRequest",
        "MedicationStatement",
        "Flag",
        "Immunization",
        "Procedure",
        "ServiceRequest",
        "Appointment",
        "CarePlan",
        "MedicationAdministration",
    ];
    let mut order: Vec<&str> = Vec::new();
    for r in &board.resources {
        let t = r["resourceType"].as_str().unwrap();
        if interleaved.contains(&t) {
            continue;
        }
        if order.last() != Some(&t) {
            assert!(!order.contains(&t), "{t} is not contiguous");
            order.push(t);
        }
    }
}

#[test]
fn sites_and_categories() {
    let board = small();
    let refs = by_ref(board);
    assert_eq!(board.sites.len(), 4);
    let codes_: BTreeSet<&str> = board.sites.iter().map(|s| s.code.as_str()).collect();
    assert_eq!(codes_.len(), 4);
    for s in &board.sites {
        let loc = refs[&format!("Location/{}", s.location_id)];
        assert_eq!(ext(loc, codes::EXT_SITE).unwrap()["valueCode"], s.code.as_str());
        assert_eq!(
            loc["managingOrganization"]["reference"],
            format!("Organization/{}", s.organization_id)
        );
        let org = refs[&format!("Organization/{}", s.organization_id)];
        assert_eq!(org["name"], s.name.as_str());
        assert!(org["partOf"]["reference"].is_string());
    }
    // Every clinic belongs to a site; all four categories are offered; every site offers several.
    let mut by_site: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for hs in of_type(board, "HealthcareService") {
        let org = refs[hs["providedBy"]["reference"].as_str().unwrap()];
        let site = ext(org, codes::EXT_SITE).unwrap()["valueCode"]
            .as_str()
            .unwrap()
            .to_string();
        let cat = &hs["category"][0]["coding"][0];
        assert_eq!(cat["system"], codes::APPOINTMENT_CATEGORY_SYSTEM);
        let ty = &hs["type"][0]["coding"][0];
        assert_eq!(ty["system"], "https://hale.health/fhir/CodeSystem/service");
        let loc = refs[hs["location"][0]["reference"].as_str().unwrap()];
        assert_eq!(ext(loc, codes::EXT_SITE).unwrap()["valueCode"], site.as_str());
        by_site
            .entry(site)
            .or_default()
            .insert(cat["code"].as_str().unwrap().to_string());
    }
    assert_eq!(by_site.len(), 4);
    let all: BTreeSet<&String> = by_site.values().flatten().collect();
    for (code, display) in codes::APPOINTMENT_CATEGORIES {
        assert!(all.iter().any(|c| c == code), "category {code} missing");
        // And it is booked somewhere, with the coding exactly as Hale expects.
        assert!(of_type(board, "Appointment").any(|a| a["serviceCategory"]
            == serde_json::json!([{ "coding": [{
                "system": codes::APPOINTMENT_CATEGORY_SYSTEM, "code": code, "display": display
            }] }])));
    }
    assert!(by_site.values().all(|c| c.len() >= 2), "{by_site:?}");
}

#[test]
fn clinical_data_is_coded_and_dated() {
    let board = medium();
    let refs = by_ref(board);
    let past = today() - chrono::Duration::days(91);
    for o in of_type(board, "Observation") {
        assert_eq!(o["status"], "final");
        assert_eq!(o["code"]["coding"][0]["system"], "http://loinc.org");
        assert_eq!(o["valueQuantity"]["system"], "http://unitsofmeasure.org");
        assert!(o["valueQuantity"]["value"].is_number());
        let d = instant(&o["effectiveDateTime"]).date();
        assert!(d >= past && d < today());
    }
    for dr in of_type(board, "DiagnosticReport") {
        let cat = dr["category"][0]["coding"][0]["code"].as_str().unwrap();
        match cat {
            "LAB" => {
                let results = dr["result"].as_array().unwrap();
                assert!(!results.is_empty());
                for r in results {
                    let o = refs[r["reference"].as_str().unwrap()];
                    assert_eq!(o["subject"], dr["subject"]);
                }
            }
            "RAD" => {
                let study = refs[dr["imagingStudy"][0]["reference"].as_str().unwrap()];
                assert_eq!(study["subject"], dr["subject"]);
                assert!(dr["conclusion"].is_string());
            }
            other => panic!("category {other}"),
        }
    }
    for s in of_type(board, "ImagingStudy") {
        let series = s["series"].as_array().unwrap();
        assert_eq!(s["numberOfSeries"].as_u64().unwrap() as usize, series.len());
        for se in series {
            let uid = se["uid"].as_str().unwrap();
            assert!(uid.starts_with("2.25.") && uid.len() <= 64 && uid[5..].chars().all(|c| c.is_ascii_digit()));
        }
    }
    for d in of_type(board, "DocumentReference") {
        let data = d["content"][0]["attachment"]["data"].as_str().unwrap();
        assert!(data.len() % 4 == 0 && data.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)));
        assert_eq!(d["type"]["coding"][0]["code"], "11506-3");
    }
    for a in of_type(board, "AllergyIntolerance") {
        assert_eq!(a["code"]["coding"][0]["system"], "http://snomed.info/sct");
        assert!(a["patient"]["reference"].as_str().unwrap().starts_with("Patient/"));
    }
    for e in of_type(board, "Encounter") {
        let appt = refs[e["appointment"][0]["reference"].as_str().unwrap()];
        assert_eq!(appt["status"], "fulfilled");
        assert_eq!(e["period"]["start"], appt["start"]);
    }
}

#[test]
fn empty_and_tiny_boards() {
    let empty = generate(&config(0));
    assert_eq!(empty.count("Patient"), 0);
    assert_eq!(empty.count("Appointment"), 0);
    assert!(empty.count("Slot") > 0);
    let tiny = generate(&config(3));
    assert_eq!(tiny.count("Patient"), 3);
    // Three patients can hold at most eight active appointments each.
    let active = of_type(&tiny, "Appointment")
        .filter(|a| a["status"] != "cancelled")
        .count();
    assert!(
        active > 0 && active <= 3 * 8,
        "{active} active appointments for 3 patients"
    );
}

/// The rest of the record makes clinical sense: every community medicine
/// treats a problem of the same patient, no child is prescribed an adult dose, every chemotherapy patient has a cancer and a regimen, doses
/// given were given on the day of a chemotherapy or inpatient appointment of
/// that patient, and each referral is the basis of its appointment.
#[test]
fn the_rest_of_the_record_makes_clinical_sense() {
    let board = medium();
    let refs = by_ref(board);
    let patient_of = |r: &Value| -> String {
        r.get("subject")
            .or_else(|| r.get("patient"))
            .and_then(|s| s["reference"].as_str())
            .unwrap()
            .to_string()
    };
    let born = |pid: &str| date(&refs[pid]["birthDate"]);
    let n = |t: &str| of_type(board, t).count();
    for t in [
        "Condition",
        "MedicationRequest",
        "MedicationStatement",
        "MedicationAdministration",
        "Flag",
        "Immunization",
        "Procedure",
        "ServiceRequest",
        "CarePlan",
    ] {
        assert!(n(t) > 30, "{t}: only {}", n(t));
    }
    for rx in of_type(board, "MedicationRequest") {
        let pid = patient_of(rx);
        let dosage = &rx["dosageInstruction"][0];
        assert!(dosage["route"]["coding"][0]["code"].is_string(), "{rx}");
        assert!(dosage["doseAndRate"][0]["doseQuantity"]["value"].is_number(), "{rx}");
        assert!(dosage["timing"]["repeat"]["frequency"].is_u64(), "{rx}");
        if rx["category"][0]["coding"][0]["code"] == "community" {
            let reason = rx["reasonReference"][0]["reference"].as_str().unwrap();
            let cond = refs[reason];
            assert_eq!(patient_of(cond), pid);
            assert_eq!(cond["clinicalStatus"]["coding"][0]["code"], "active");
            let age = (today() - born(&pid)).num_days() / 365;
            assert!(age >= 16, "{pid} aged {age} prescribed an adult dose");
        }
    }
    // Appointments by patient and day, for the doses given.
    let mut treated_days: BTreeSet<(String, NaiveDate)> = BTreeSet::new();
    for a in of_type(board, "Appointment") {
        let cat = a["serviceCategory"][0]["coding"][0]["code"].as_str().unwrap();
        if matches!(cat, "chemotherapy" | "inpatient-procedure") {
            let pid = a["participant"][0]["actor"]["reference"].as_str().unwrap().to_string();
            let d = instant(&a["start"]).date();
            for k in 0..3 {
                treated_days.insert((pid.clone(), d + chrono::Duration::days(k)));
            }
        }
        if let Some(b) = a["basedOn"][0]["reference"].as_str() {
            let sr = refs[b];
            assert_eq!(sr["subject"]["reference"], a["participant"][0]["actor"]["reference"]);
            let rtt = ext(a, codes::EXT_RTT_REFERRAL_DATE).unwrap();
            assert_eq!(
                sr["authoredOn"], rtt["valueDate"],
                "the referral date is the RTT clock start"
            );
        }
    }
    for ma in of_type(board, "MedicationAdministration") {
        let pid = patient_of(ma);
        let when = instant(&ma["effectiveDateTime"]);
        assert!(when.date() < today() + chrono::Duration::days(1));
        assert!(
            treated_days.contains(&(pid.clone(), when.date())),
            "{pid} given a dose on {when} without a chemotherapy or inpatient appointment"
        );
        let rx = refs[ma["request"]["reference"].as_str().unwrap()];
        assert_eq!(patient_of(rx), pid);
    }
    for cp in of_type(board, "CarePlan") {
        let cond = refs[cp["addresses"][0]["reference"].as_str().unwrap()];
        assert_eq!(patient_of(cond), patient_of(cp));
    }
}
