//! Outage recovery over real HTTP on the synthetic health board: declare an
//! incident, postpone one day at two sites, report, rebook (dry run and commit),
//! and rerun everything. Every response is checked against the FHIR R4 schema
//! by the harness; the stored results are checked independently of the solver.

mod common;

use chrono::{Datelike, Duration, NaiveDate, Weekday};
use common::*;
use hale_fhir::codes;
use hale_sched::uktime::{uk_date, uk_midnight};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};

const SITES: [&str; 2] = ["QEH", "SRI"];

fn incident(start: &str, end: Option<&str>, sites: &[&str], status: &str) -> Value {
    let mut period = json!({"start": start});
    if let Some(e) = end {
        period["end"] = json!(e);
    }
    let mut ext = vec![
        json!({"url": codes::EXT_INCIDENT_PERIOD, "valuePeriod": period}),
        json!({"url": codes::EXT_INCIDENT_STATUS, "valueCode": status}),
        json!({"url": codes::EXT_INCIDENT_DESCRIPTION, "valueString": "PAS and theatre systems down"}),
    ];
    for s in sites {
        ext.push(json!({"url": codes::EXT_INCIDENT_SITE, "valueCode": s}));
    }
    json!({
        "resourceType": "Basic",
        "identifier": [{"system": codes::INCIDENT_ID_SYSTEM, "value": "INC-0042"}],
        "code": {"coding": [{"system": codes::INCIDENT_TYPE_SYSTEM, "code": codes::INCIDENT_IT_OUTAGE}]},
        "created": start.get(..10).unwrap_or(start),
        "extension": ext,
    })
}

fn params(items: &[(&str, &str, Value)]) -> Value {
    let list: Vec<Value> = items
        .iter()
        .map(|(name, key, value)| {
            let mut p = json!({"name": name});
            p[*key] = value.clone();
            p
        })
        .collect();
    json!({"resourceType": "Parameters", "parameter": list})
}

/// The value of the first parameter `name` (any value[x]).
fn value<'v>(p: &'v Value, name: &str) -> &'v Value {
    let list = p["parameter"].as_array().or_else(|| p["part"].as_array());
    let item = list
        .into_iter()
        .flatten()
        .find(|x| x["name"] == name)
        .unwrap_or_else(|| panic!("no parameter {name} in {p}"));
    item.as_object()
        .and_then(|o| o.iter().find(|(k, _)| k.starts_with("value")).map(|(_, v)| v))
        .unwrap_or(&Value::Null)
}

fn int(p: &Value, name: &str) -> i64 {
    value(p, name)
        .as_i64()
        .unwrap_or_else(|| panic!("{name} is not an integer in {p}"))
}

/// The groups named `name`.
fn groups<'v>(p: &'v Value, name: &str) -> Vec<&'v Value> {
    p["parameter"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|x| x["name"] == name)
        .collect()
}

fn ms(v: &Value) -> i64 {
    hale_fhir::date::parse_range_ms(v.as_str().unwrap_or_else(|| panic!("not a time: {v}")))
        .expect("time")
        .0
}

fn ext<'v>(v: &'v Value, url: &str) -> Option<&'v Value> {
    v["extension"].as_array()?.iter().find(|e| e["url"] == url)
}

fn refs(v: &Value, rt: &str) -> Vec<String> {
    let prefix = format!("{rt}/");
    let mut out = Vec::new();
    for p in v["participant"].as_array().into_iter().flatten() {
        if let Some(r) = p["actor"]["reference"].as_str().and_then(|r| r.strip_prefix(&prefix)) {
            out.push(r.to_string());
        }
    }
    for r in v["slot"].as_array().into_iter().flatten() {
        if let Some(r) = r["reference"].as_str().and_then(|r| r.strip_prefix(&prefix)) {
            out.push(r.to_string());
        }
    }
    out
}

fn category(v: &Value) -> String {
    v["serviceCategory"][0]["coding"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["system"] == codes::APPOINTMENT_CATEGORY_SYSTEM)
        .and_then(|c| c["code"].as_str())
        .unwrap_or("?")
        .to_string()
}

fn service(v: &Value) -> String {
    let st = if v["serviceType"].is_array() {
        &v["serviceType"][0]
    } else {
        &v["serviceType"]
    };
    st["coding"][0]["code"].as_str().unwrap_or("").to_string()
}

/// Every live resource of a type, straight from the store.
fn all(dir: &std::path::Path, rtype: &str) -> HashMap<String, Value> {
    let conn = ro_conn(dir);
    let mut stmt = conn
        .prepare("SELECT id, json FROM resources WHERE rtype = ?1 AND deleted = 0")
        .expect("prepare");
    let rows = stmt
        .query_map([rtype], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .expect("query");
    rows.map(|r| {
        let (id, json) = r.expect("row");
        (id, serde_json::from_str(&json).expect("json"))
    })
    .collect()
}

/// Location id -> site code.
fn sites_of(dir: &std::path::Path) -> HashMap<String, String> {
    all(dir, "Location")
        .into_iter()
        .filter_map(|(id, l)| {
            ext(&l, codes::EXT_SITE)
                .and_then(|e| e["valueCode"].as_str())
                .map(|s| (id, s.to_string()))
        })
        .collect()
}

const HOLDING: &[&str] = &["pending", "booked", "arrived", "checked-in", "fulfilled"];

fn next_weekday(mut d: NaiveDate) -> NaiveDate {
    while matches!(d.weekday(), Weekday::Sat | Weekday::Sun) {
        d += Duration::days(1);
    }
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_on_one_day_at_two_sites() {
    let today = uk_date(hale_server::now_ms());
    let (mut srv, app) = TestServer::start_demo(500, 7, today).await;
    let dir = srv.data_dir().to_path_buf();
    let day = next_weekday(today + Duration::days(2));
    let (day_start, day_end) = (uk_midnight(day), uk_midnight(day + Duration::days(1)));
    let site_of = sites_of(&dir);

    // What the store had booked in scope: that day, at the two sites.
    let appts_before = all(&dir, "Appointment");
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    let mut expected_ids = BTreeSet::new();
    for (id, a) in &appts_before {
        let start = ms(&a["start"]);
        let at_site = refs(a, "Location")
            .iter()
            .any(|l| site_of.get(l).is_some_and(|s| SITES.contains(&s.as_str())));
        if a["status"] == "booked" && start >= day_start && start < day_end && at_site {
            *expected.entry(category(a)).or_default() += 1;
            expected_ids.insert(id.clone());
        }
    }
    assert!(
        expected_ids.len() > 20,
        "the board should have appointments on {day}: {expected:?}"
    );

    // --- Declare: admins only, validated, audited, listed.
    let body = incident(
        &hale_fhir::date::format_instant_ms(day_start),
        Some(&hale_fhir::date::format_instant_ms(day_end - 1)),
        &SITES,
        "open",
    );
    srv.post("/Basic", CLERK, &body).await.expect(403).outcome();
    let mut bad = body.clone();
    bad["extension"].as_array_mut().unwrap().remove(0);
    srv.post("/Basic", ADMIN, &bad)
        .await
        .expect(400)
        .outcome_at("Basic.extension");
    let mut bad = body.clone();
    bad["extension"][1]["valueCode"] = json!("ended");
    srv.post("/Basic", ADMIN, &bad)
        .await
        .expect(400)
        .outcome_at("Basic.extension[1].valueCode");
    let inc = srv.create_id(ADMIN, &body).await;
    let listed = srv
        .search(
            ADMIN,
            &format!(
                "/Basic?code={}|{}",
                codes::INCIDENT_TYPE_SYSTEM,
                codes::INCIDENT_IT_OUTAGE
            ),
        )
        .await;
    assert_eq!(listed.match_ids(), vec![inc.clone()]);
    let audit = srv.search(ADMIN, "/AuditEvent?action=C&_count=1000").await;
    assert!(
        audit.entries().iter().any(|e| e["resource"]["entity"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|x| x["what"]["reference"] == format!("Basic/{inc}"))),
        "declaring the incident is audited"
    );

    // --- Bad input: an OperationOutcome that says where, and nothing changes.
    let before = srv.snapshot();
    let inc_param = ("incident", "valueString", json!(inc.clone()));
    let runs = ("clinicRuns", "valueBoolean", json!(false));
    for (body, status, at) in [
        (
            params(&[("incident", "valueString", json!("no-such-incident")), runs.clone()]),
            404,
            "parameter[0]",
        ),
        (
            params(&[
                inc_param.clone(),
                runs.clone(),
                ("from", "valueDate", json!("2026-13-01")),
            ]),
            400,
            "parameter[2].valueDate",
        ),
        (
            params(&[
                inc_param.clone(),
                runs.clone(),
                ("category", "valueCode", json!("surgery")),
            ]),
            400,
            "parameter[2].valueCode",
        ),
        (
            params(&[inc_param.clone(), runs.clone(), ("site", "valueCode", json!("XYZ"))]),
            400,
            "parameter[2]",
        ),
        (params(std::slice::from_ref(&inc_param)), 400, "clinicRuns"),
        (
            params(&[
                inc_param.clone(),
                runs.clone(),
                ("from", "valueDateTime", json!("2031-01-02T00:00:00Z")),
                ("to", "valueDateTime", json!("2031-01-01T00:00:00Z")),
            ]),
            400,
            "parameter[3]",
        ),
        (
            params(&[inc_param.clone(), runs.clone(), ("colour", "valueString", json!("red"))]),
            400,
            "parameter[2].name",
        ),
    ] {
        srv.post("/Appointment/$postpone", ADMIN, &body)
            .await
            .expect(status)
            .outcome_at(at);
    }
    srv.post(
        "/Appointment/$postpone",
        CLERK,
        &params(&[inc_param.clone(), runs.clone()]),
    )
    .await
    .expect(403);
    srv.post(
        "/Appointment/$rebook",
        ADMIN,
        &params(&[("incident", "valueString", json!("nope"))]),
    )
    .await
    .expect(404)
    .outcome_at("parameter[0]");
    srv.post(
        "/Appointment/$rebook",
        ADMIN,
        &params(&[inc_param.clone(), ("noticeDays", "valueInteger", json!(-3))]),
    )
    .await
    .expect(400)
    .outcome_at("parameter[1].valueInteger");
    srv.get("/Basic/nope/$report", ADMIN)
        .await
        .expect(404)
        .outcome_at("Basic.id");
    assert_eq!(srv.snapshot(), before, "refused operations change nothing");

    // --- Postpone (clinics closed): one transaction, counts as booked in scope.
    let r = srv
        .post(
            "/Appointment/$postpone",
            ADMIN,
            &params(&[inc_param.clone(), runs.clone()]),
        )
        .await;
    r.expect(200);
    let out = r.body();
    assert_eq!(int(out, "postponed") as usize, expected_ids.len(), "{}", r.text);
    let by_cat: BTreeMap<String, i64> = groups(out, "byCategory")
        .into_iter()
        .map(|g| (value(g, "category").as_str().unwrap().to_string(), int(g, "count")))
        .collect();
    assert_eq!(by_cat, expected);
    let appts = all(&dir, "Appointment");
    let slots = all(&dir, "Slot");
    for id in &expected_ids {
        let a = &appts[id];
        assert_eq!(a["status"], "cancelled");
        assert_eq!(a["cancelationReason"]["text"], codes::OUTAGE_CANCEL_TEXT);
        assert_eq!(
            a["cancelationReason"]["coding"][0]["system"],
            codes::CANCELLED_BY_SYSTEM
        );
        assert_eq!(a["cancelationReason"]["coding"][0]["code"], "provider");
        assert_eq!(ext(a, codes::EXT_CANCELLED_ON_THE_DAY).unwrap()["valueBoolean"], false);
        assert_eq!(
            ext(a, codes::EXT_OUTAGE_INCIDENT).unwrap()["valueReference"]["reference"],
            format!("Basic/{inc}")
        );
        for s in refs(a, "Slot") {
            assert_eq!(
                slots[&s]["status"], "busy-unavailable",
                "the clinic is closed: Slot/{s}"
            );
        }
    }
    // No slot of the closed clinics is left free that day.
    let scheds = all(&dir, "Schedule");
    for s in slots.values() {
        let start = ms(&s["start"]);
        let sched = &scheds[s["schedule"]["reference"]
            .as_str()
            .unwrap()
            .trim_start_matches("Schedule/")];
        let site = sched["actor"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["reference"].as_str()?.strip_prefix("Location/"))
            .find_map(|l| site_of.get(l).cloned());
        if start >= day_start && start < day_end && site.is_some_and(|s| SITES.contains(&s.as_str())) {
            assert_ne!(s["status"], "free", "free slot in a closed clinic: {}", s["id"]);
        }
    }
    // Rerun: nothing left to postpone, nothing changes.
    let before = srv.snapshot();
    let r = srv
        .post(
            "/Appointment/$postpone",
            ADMIN,
            &params(&[inc_param.clone(), runs.clone()]),
        )
        .await;
    r.expect(200);
    assert_eq!(int(r.body(), "postponed"), 0);
    assert_eq!(int(r.body(), "slotsBlocked"), 0);
    assert_eq!(srv.snapshot(), before);

    // --- Report.
    let r = srv.get(&format!("/Basic/{inc}/$report"), CLERK).await;
    r.expect(200);
    let rep = r.body().clone();
    let total = groups(&rep, "total")[0];
    assert_eq!(int(total, "postponed") as usize, expected_ids.len());
    assert_eq!(int(total, "rebooked"), 0);
    let rep_cat: BTreeMap<String, i64> = groups(&rep, "byCategory")
        .into_iter()
        .map(|g| (value(g, "category").as_str().unwrap().to_string(), int(g, "postponed")))
        .collect();
    assert_eq!(rep_cat, expected);
    let rep_day: Vec<String> = groups(&rep, "byDay")
        .into_iter()
        .map(|g| value(g, "day").as_str().unwrap().to_string())
        .collect();
    assert_eq!(rep_day, vec![day.to_string()]);
    let rep_sites: BTreeSet<String> = groups(&rep, "bySite")
        .into_iter()
        .map(|g| value(g, "site").as_str().unwrap().to_string())
        .collect();
    assert!(rep_sites.iter().all(|s| SITES.contains(&s.as_str())), "{rep_sites:?}");

    // --- Rebook, dry run: a plan, and nothing changes.
    let before = srv.snapshot();
    let r = srv
        .post("/Appointment/$rebook", CLERK, &params(std::slice::from_ref(&inc_param)))
        .await;
    r.expect(200);
    let dry = r.body().clone();
    assert_eq!(value(&dry, "commit"), false);
    assert_eq!(int(&dry, "considered") as usize, expected_ids.len());
    let placed = int(&dry, "placed") as usize;
    assert!(
        placed > expected_ids.len() / 2,
        "most appointments find a slot: {}",
        value(&dry, "objective")
    );
    assert_eq!(placed + int(&dry, "unplaced") as usize, expected_ids.len());
    assert_eq!(groups(&dry, "placement").len(), placed);
    for u in groups(&dry, "unplacedAppointment") {
        assert!(!value(u, "text").as_str().unwrap().is_empty());
    }
    for s in groups(&dry, "shortfall") {
        assert!(value(s, "text").as_str().unwrap().contains("week of"), "{s}");
    }
    assert_eq!(srv.snapshot(), before, "a dry run writes nothing");
    // The same run in-process: the plan obeys every hard rule, and is the one the dry run gave.
    let run_at = ms(value(&dry, "runAt"));
    let opts = hale_server::rebook::RebookOptions::from_settings(&app.cfg.outage);
    let (inst, sol) = hale_server::rebook::plan(&app, &inc, &opts, run_at).expect("plan");
    assert_eq!(hale_sched::violations(&inst, &sol), Vec::<String>::new());
    let in_process: BTreeMap<String, String> = sol
        .assignments
        .iter()
        .map(|x| (x.appointment.clone(), x.slot.clone()))
        .collect();
    let over_http: BTreeMap<String, String> = groups(&dry, "placement")
        .into_iter()
        .map(|g| {
            (
                value(g, "appointment")["reference"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("Appointment/")
                    .to_string(),
                value(g, "slot")["reference"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("Slot/")
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(in_process, over_http);
    drop(app);

    // --- Rebook for real: admins only; one transaction.
    srv.post(
        "/Appointment/$rebook",
        CLERK,
        &params(&[inc_param.clone(), ("commit", "valueBoolean", json!(true))]),
    )
    .await
    .expect(403);
    let free_before: BTreeSet<String> = all(&dir, "Slot")
        .into_iter()
        .filter(|(_, s)| s["status"] == "free")
        .map(|(id, _)| id)
        .collect();
    let r = srv
        .post(
            "/Appointment/$rebook",
            ADMIN,
            &params(&[inc_param.clone(), ("commit", "valueBoolean", json!(true))]),
        )
        .await;
    r.expect(200);
    let done = r.body().clone();
    let run_at = ms(value(&done, "runAt"));
    println!(
        "postponed {} on {day}; rebooked {}; {}",
        expected_ids.len(),
        int(&done, "committed"),
        value(&done, "objective")
    );
    for g in groups(&done, "shortfall") {
        println!("  shortfall: {}", value(g, "text"));
    }
    for g in groups(&done, "unplacedAppointment").iter().take(5) {
        println!("  unplaced: {}", value(g, "text"));
    }
    let committed = int(&done, "committed") as usize;
    assert_eq!(committed, int(&done, "placed") as usize);
    assert!(committed > 0);

    // Independent checks on what was stored.
    let appts = all(&dir, "Appointment");
    let slots = all(&dir, "Slot");
    let comms = all(&dir, "Communication");
    let mut rebooked: BTreeMap<String, String> = BTreeMap::new();
    for (id, a) in &appts {
        let Some(from) = ext(a, codes::EXT_REBOOKED_FROM) else {
            continue;
        };
        let old_id = from["valueReference"]["reference"]
            .as_str()
            .unwrap()
            .trim_start_matches("Appointment/");
        assert!(
            rebooked.insert(old_id.to_string(), id.clone()).is_none(),
            "{old_id} rebooked twice"
        );
        let old = &appts[old_id];
        assert!(expected_ids.contains(old_id));
        assert_eq!(a["status"], "booked");
        assert_eq!(refs(a, "Patient"), refs(old, "Patient"));
        // The slot was free, is now busy, and is the new appointment's time.
        let slot_id = &refs(a, "Slot")[0];
        let slot = &slots[slot_id];
        assert!(free_before.contains(slot_id), "Slot/{slot_id} was not free");
        assert_eq!(slot["status"], "busy");
        let (start, end) = (ms(&a["start"]), ms(&a["end"]));
        assert_eq!(start, ms(&slot["start"]));
        assert!(end <= ms(&slot["end"]), "slot long enough");
        assert_eq!(end - start, ms(&old["end"]) - ms(&old["start"]), "same duration");
        // Same service, same site.
        let sched = &scheds[slot["schedule"]["reference"]
            .as_str()
            .unwrap()
            .trim_start_matches("Schedule/")];
        assert_eq!(category(a), category(old));
        assert_eq!(service(sched), service(old), "same service");
        let old_site: Vec<&String> = refs(old, "Location")
            .iter()
            .filter_map(|l| site_of.get(l))
            .collect::<Vec<_>>();
        let new_site: Vec<&String> = refs(a, "Location")
            .iter()
            .filter_map(|l| site_of.get(l))
            .collect::<Vec<_>>();
        assert_eq!(old_site, new_site, "same site");
        // Time rules: not before the minimum lead, within every hard deadline still open.
        assert!(start >= run_at + 24 * 3_600_000, "at least 24 h after the run");
        let new_day = uk_date(start);
        let date = |url: &str| {
            ext(old, url)
                .and_then(|e| e["valueDate"].as_str())
                .map(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").unwrap())
        };
        // The earliest possible new date: the minimum lead, and a chemotherapy regimen
        // window's first day (a hard lower bound). A deadline before it cannot be met.
        let regimen_start = ext(old, codes::EXT_REGIMEN_WINDOW)
            .and_then(|w| w["valuePeriod"]["start"].as_str())
            .map(|s| NaiveDate::parse_from_str(&s[..10], "%Y-%m-%d").unwrap());
        let earliest = uk_date(run_at + 24 * 3_600_000).max(regimen_start.unwrap_or(NaiveDate::MIN));
        for (d, days) in [
            (date(codes::EXT_RTT_REFERRAL_DATE), 126),
            (date(codes::EXT_DECISION_TO_TREAT_DATE), 31),
        ] {
            if let Some(d) = d {
                let deadline = d + Duration::days(days);
                assert!(
                    new_day <= deadline || deadline < earliest,
                    "{id}: {new_day} after {deadline}"
                );
            }
        }
        if let Some(w) = ext(old, codes::EXT_REGIMEN_WINDOW) {
            let p =
                |k: &str| NaiveDate::parse_from_str(&w["valuePeriod"][k].as_str().unwrap()[..10], "%Y-%m-%d").unwrap();
            assert!(
                new_day >= p("start") && new_day <= p("end"),
                "{id}: outside the regimen window"
            );
        }
        // Its outbox record.
        let c: Vec<&Value> = comms
            .values()
            .filter(|c| c["about"][0]["reference"] == format!("Appointment/{id}"))
            .collect();
        assert_eq!(c.len(), 1, "one notification per rebooking");
        let c = c[0];
        assert_eq!(c["status"], "preparation");
        assert_eq!(
            c["subject"]["reference"],
            format!("Patient/{}", refs(old, "Patient")[0])
        );
        assert_eq!(c["identifier"][0]["value"], c["id"]);
        let ch = c["medium"][0]["coding"][0]["code"].as_str().unwrap();
        assert!(codes::NOTIFICATION_CHANNELS.iter().any(|(k, _)| *k == ch), "{ch}");
        if ch == "letter" {
            let d = ext(c, codes::EXT_LETTER_EXPECTED_DELIVERY).unwrap()["valueDate"]
                .as_str()
                .unwrap();
            let d = NaiveDate::parse_from_str(d, "%Y-%m-%d").unwrap();
            assert!(d + Duration::days(2) <= new_day, "the letter arrives in time");
        }
    }
    assert_eq!(rebooked.len(), committed);
    assert_eq!(comms.len(), committed);
    // No patient has two holding appointments that overlap.
    let mut by_patient: HashMap<String, Vec<(i64, i64, String)>> = HashMap::new();
    for (id, a) in &appts {
        if HOLDING.contains(&a["status"].as_str().unwrap_or("")) {
            for p in refs(a, "Patient") {
                by_patient
                    .entry(p)
                    .or_default()
                    .push((ms(&a["start"]), ms(&a["end"]), id.clone()));
            }
        }
    }
    for (p, mut v) in by_patient {
        v.sort();
        for w in v.windows(2) {
            assert!(w[0].1 <= w[1].0, "Patient/{p}: {} and {} overlap", w[0].2, w[1].2);
        }
    }

    // --- Rerun: nothing is rebooked twice; with nothing new to place, nothing changes.
    let before = srv.snapshot();
    let r = srv
        .post(
            "/Appointment/$rebook",
            ADMIN,
            &params(&[inc_param.clone(), ("commit", "valueBoolean", json!(true))]),
        )
        .await;
    r.expect(200);
    let again = r.body();
    assert_eq!(int(again, "alreadyRebooked") as usize, committed);
    assert_eq!(int(again, "considered"), int(&done, "unplaced"));
    if int(again, "placed") == 0 {
        assert_eq!(srv.snapshot(), before);
    }
    let r = srv
        .post(
            "/Appointment/$postpone",
            ADMIN,
            &params(&[inc_param.clone(), runs.clone()]),
        )
        .await;
    assert_eq!(int(r.expect(200).body(), "postponed"), 0);

    // --- Report: rebooked, and notified once the delivery worker completes a record.
    let some_comm = comms.values().next().unwrap().clone();
    let mut sent = some_comm.clone();
    sent["status"] = json!("completed");
    sent["sent"] = json!(hale_fhir::date::format_instant_ms(hale_server::now_ms()));
    let path = format!("/Communication/{}", some_comm["id"].as_str().unwrap());
    srv.put(&path, ADMIN, &sent).await.expect(200);
    let r = srv.get(&format!("/Basic/{inc}/$report"), ADMIN).await;
    let total = groups(r.expect(200).body(), "total")[0].clone();
    println!("report: {}", value(r.body(), "summary"));
    for g in groups(r.body(), "notifications") {
        println!(
            "  {} {}: {}",
            value(g, "channel"),
            value(g, "status"),
            value(g, "count")
        );
    }
    assert_eq!(int(&total, "rebooked") as usize, rebooked.len());
    assert_eq!(int(&total, "notified"), 1);
    let found = srv
        .search(
            ADMIN,
            &format!("/Communication?status=preparation&about=Basic/{inc}&_count=1000"),
        )
        .await;
    assert_eq!(found.match_ids().len(), committed - 1);

    // --- Close the incident: an update with the end and status closed.
    let mut closed = srv.read(ADMIN, &format!("/Basic/{inc}")).await;
    closed["extension"][1]["valueCode"] = json!("closed");
    srv.put(&format!("/Basic/{inc}"), ADMIN, &closed).await.expect(200);
    let mut open_ended = closed.clone();
    open_ended["extension"][0]["valuePeriod"] = json!({"start": hale_fhir::date::format_instant_ms(day_start)});
    srv.put(&format!("/Basic/{inc}"), ADMIN, &open_ended)
        .await
        .expect(400)
        .outcome_at("valuePeriod.end");

    // --- Today, clinics running: cancelled on the day, slots released.
    let today_inc = srv
        .create_id(
            ADMIN,
            &incident(
                &hale_fhir::date::format_instant_ms(uk_midnight(today)),
                None,
                &["KGH"],
                "open",
            ),
        )
        .await;
    let r = srv
        .post(
            "/Appointment/$postpone",
            ADMIN,
            &params(&[
                (
                    "incident",
                    "valueReference",
                    json!({"reference": format!("Basic/{today_inc}")}),
                ),
                ("clinicRuns", "valueBoolean", json!(true)),
                ("to", "valueDate", json!(today.to_string())),
            ]),
        )
        .await;
    r.expect(200);
    let ids: Vec<String> = groups(r.body(), "appointment")
        .into_iter()
        .map(|g| {
            g["valueReference"]["reference"]
                .as_str()
                .unwrap()
                .trim_start_matches("Appointment/")
                .to_string()
        })
        .collect();
    let appts = all(&dir, "Appointment");
    let slots = all(&dir, "Slot");
    for id in &ids {
        let a = &appts[id];
        assert_eq!(ext(a, codes::EXT_CANCELLED_ON_THE_DAY).unwrap()["valueBoolean"], true);
        for s in refs(a, "Slot") {
            assert_eq!(slots[&s]["status"], "free", "the clinic runs: the slot is released");
        }
    }
    if today.weekday().number_from_monday() <= 5 {
        assert!(!ids.is_empty(), "KGH has appointments today");
    }
    srv.stop().await;
}

/// Appointments from other systems carry no Hale category: one booked into a
/// clinic whose Schedule has one takes that category; one whose clinic has none
/// is postponed and reported as "uncategorised", and rebooking lists it for
/// staff instead of dropping it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appointments_without_a_hale_category_are_derived_or_reported_uncategorised() {
    let srv = TestServer::start().await;
    let c = &srv.client;
    let p = c.create_id(CLERK, &any_patient("Incoming")).await;
    // Clinic 1's Schedule says "outpatient"; clinic 2's says nothing.
    let loc1 = c.create_id(ADMIN, &location("Clinic One")).await;
    let mut sched1 = schedule(&loc1);
    sched1["serviceCategory"] = json!([{"coding": [{"system": CATEGORY_SYSTEM, "code": "outpatient"}]}]);
    let sched1 = c.create_id(ADMIN, &sched1).await;
    let sched2 = make_schedule(c).await;
    let mut ids = Vec::new();
    for (sched, day) in [(&sched1, 10), (&sched2, 11)] {
        let (slot, s, e) = make_slot(c, sched, day, 9).await;
        let mut a = appointment(&p, &slot, &s, &e);
        a["serviceCategory"] = json!([{"coding": [{"system": "http://example.org/cats", "code": "gp"}]}]);
        a["priority"] = json!(5);
        ids.push(c.create_id(CLERK, &a).await);
    }
    let inc = c
        .create_id(
            ADMIN,
            &incident("2031-03-09T00:00:00Z", Some("2031-03-12T00:00:00Z"), &[], "open"),
        )
        .await;
    let inc_param = ("incident", "valueString", json!(inc.clone()));
    let runs = ("clinicRuns", "valueBoolean", json!(true));

    // Postponing outpatients takes the first (its clinic's category) only.
    let r = c
        .post(
            "/Appointment/$postpone",
            ADMIN,
            &params(&[
                inc_param.clone(),
                runs.clone(),
                ("category", "valueCode", json!("outpatient")),
            ]),
        )
        .await;
    r.expect(200);
    assert_eq!(int(r.body(), "postponed"), 1, "{}", r.text);
    assert_eq!(
        c.read(ADMIN, &format!("/Appointment/{}", ids[0])).await["status"],
        "cancelled"
    );
    assert_eq!(
        c.read(ADMIN, &format!("/Appointment/{}", ids[1])).await["status"],
        "booked"
    );

    // Postponing everything takes the other, counted as uncategorised.
    let r = c
        .post(
            "/Appointment/$postpone",
            ADMIN,
            &params(&[inc_param.clone(), runs.clone()]),
        )
        .await;
    r.expect(200);
    let by_cat: BTreeMap<String, i64> = groups(r.body(), "byCategory")
        .into_iter()
        .map(|g| (value(g, "category").as_str().unwrap().to_string(), int(g, "count")))
        .collect();
    assert_eq!(by_cat, BTreeMap::from([("uncategorised".to_string(), 1)]), "{}", r.text);

    // The report lists both, by category, and says so in words.
    let r = c.get(&format!("/Basic/{inc}/$report"), CLERK).await;
    r.expect(200);
    let rep_cat: BTreeMap<String, i64> = groups(r.body(), "byCategory")
        .into_iter()
        .map(|g| (value(g, "category").as_str().unwrap().to_string(), int(g, "postponed")))
        .collect();
    assert_eq!(
        rep_cat,
        BTreeMap::from([("outpatient".to_string(), 1), ("uncategorised".to_string(), 1)])
    );
    assert!(r.text.contains("1 uncategorised appointment"), "{}", r.text);

    // Rebooking lists the uncategorised one for staff, with the reason.
    let r = c.post("/Appointment/$rebook", CLERK, &params(&[inc_param])).await;
    r.expect(200);
    let unplaced: Vec<(String, String)> = groups(r.body(), "unplacedAppointment")
        .into_iter()
        .map(|g| {
            (
                value(g, "appointment")["reference"].as_str().unwrap().to_string(),
                value(g, "reason").as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        unplaced.contains(&(format!("Appointment/{}", ids[1]), "uncategorised".to_string())),
        "{}",
        r.text
    );
}

/// An appointment based on a referral (ServiceRequest) takes its RTT clock
/// from the referral's `authoredOn`, without Hale's extension: the placement
/// carries the 18-week deadline from that date.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebooking_takes_the_rtt_date_from_the_referral() {
    let srv = TestServer::start().await;
    let c = &srv.client;
    let p = c.create_id(CLERK, &any_patient("Referred")).await;
    let loc = c.create_id(ADMIN, &location("Clinic Three")).await;
    let mut sched = schedule(&loc);
    sched["serviceCategory"] = json!([{"coding": [{"system": CATEGORY_SYSTEM, "code": "outpatient"}]}]);
    let sched = c.create_id(ADMIN, &sched).await;
    let (held, s, e) = make_slot(c, &sched, 10, 9).await;
    // Free slots a month from now (the rebooking horizon runs from the real clock).
    let now_ms = chrono::Utc::now().timestamp_millis();
    for k in [30, 33] {
        let day = next_weekday(uk_date(now_ms + k * 86_400_000));
        let (s, e) = (format!("{day}T09:00:00Z"), format!("{day}T09:30:00Z"));
        c.create_id(ADMIN, &slot(&sched, &s, &e)).await;
    }
    let sr = c
        .create_id(
            CLIN,
            &json!({"resourceType": "ServiceRequest", "status": "active", "intent": "order",
                    "subject": {"reference": format!("Patient/{p}")}, "authoredOn": "2030-11-20"}),
        )
        .await;
    let mut a = appointment(&p, &held, &s, &e);
    a["basedOn"] = json!([{"reference": format!("ServiceRequest/{sr}")}]);
    assert!(ext(&a, codes::EXT_RTT_REFERRAL_DATE).is_none());
    let id = c.create_id(CLERK, &a).await;
    let inc = c
        .create_id(
            ADMIN,
            &incident("2031-03-09T00:00:00Z", Some("2031-03-12T00:00:00Z"), &[], "open"),
        )
        .await;
    let inc_param = ("incident", "valueString", json!(inc));
    let r = c
        .post(
            "/Appointment/$postpone",
            ADMIN,
            &params(&[inc_param.clone(), ("clinicRuns", "valueBoolean", json!(true))]),
        )
        .await;
    r.expect(200);
    assert_eq!(int(r.body(), "postponed"), 1, "{}", r.text);
    let r = c.post("/Appointment/$rebook", CLERK, &params(&[inc_param])).await;
    r.expect(200);
    let placement = groups(r.body(), "placement")
        .into_iter()
        .find(|g| value(g, "appointment")["reference"] == format!("Appointment/{id}"))
        .unwrap_or_else(|| panic!("not placed: {}", r.text));
    // 2030-11-20 + 126 days.
    assert_eq!(value(placement, "deadline"), "2031-03-26", "{}", r.text);
}
