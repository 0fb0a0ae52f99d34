//! Search: parameters, prefixes, paging, sorting, includes, lenient and strict handling.

use crate::common::*;
use std::collections::{BTreeMap, BTreeSet};

/// Run `query`, expect 200 and exactly the matches named in `expect` (keys of `names`).
async fn check(c: &Client, names: &BTreeMap<&str, String>, query: &str, expect: &[&str]) {
    let r = c.get(query, CLIN).await;
    assert_eq!(r.status, 200, "{query}: {}", r.text);
    assert_eq!(r.body()["type"], "searchset", "{query}");
    let got: BTreeSet<String> = r.match_ids().into_iter().collect();
    let want: BTreeSet<String> = expect.iter().map(|k| names[k].clone()).collect();
    let label = |s: &BTreeSet<String>| {
        s.iter()
            .map(|id| {
                names
                    .iter()
                    .find(|(_, v)| *v == id)
                    .map(|(k, _)| k.to_string())
                    .unwrap_or_else(|| id.clone())
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(label(&got), label(&want), "{query}");
    assert_eq!(r.match_ids().len(), got.len(), "{query}: duplicate matches");
    if !r.body()["total"].is_null() {
        assert_eq!(r.body()["total"].as_u64(), Some(got.len() as u64), "{query}: total");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patient_search_parameters() {
    let srv = TestServer::start().await;
    let c = srv.client;
    let n1 = nhs();
    let n2 = nhs();
    let n3 = nhs();
    let n4 = nhs();
    let mut names = BTreeMap::new();
    names.insert(
        "p1",
        c.create_id(
            CLIN,
            &patient_with_phone(&n1, "Smith", &["Anna"], "1980-05-17", "07700 900123"),
        )
        .await,
    );
    names.insert(
        "p2",
        c.create_id(
            CLIN,
            &patient_with_phone(&n2, "Smithson", &["Bob"], "1990-01-02", "+44 7700 900456"),
        )
        .await,
    );
    names.insert(
        "p3",
        c.create_id(CLIN, &patient(&n3, "Jones", &["Anna", "Maria"], "2001-12-31"))
            .await,
    );
    names.insert(
        "p4",
        c.create_id(CLIN, &patient(&n4, "Élodie-Brontë", &["Zoë"], "1990-06"))
            .await,
    );

    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            format!("/Patient?identifier={}", urlencode(&format!("{NHS_SYSTEM}|{n1}"))),
            vec!["p1"],
        ),
        (format!("/Patient?identifier={NHS_SYSTEM}|{n2}"), vec!["p2"]),
        (format!("/Patient?identifier={n3}"), vec!["p3"]),
        (format!("/Patient?identifier=http://other.example/ids|{n3}"), vec![]),
        (format!("/Patient?identifier={n1},{n2}"), vec!["p1", "p2"]),
        ("/Patient?name=anna".into(), vec!["p1", "p3"]),
        ("/Patient?name=SMITH".into(), vec!["p1", "p2"]),
        ("/Patient?name=maria".into(), vec!["p3"]),
        ("/Patient?name=nobody".into(), vec![]),
        ("/Patient?family=smi".into(), vec!["p1", "p2"]),
        ("/Patient?family=SMITHSON".into(), vec!["p2"]),
        ("/Patient?family:exact=Smith".into(), vec!["p1"]),
        // :exact is case-sensitive.
        ("/Patient?family:exact=smith".into(), vec![]),
        ("/Patient?family=jo".into(), vec!["p3"]),
        (format!("/Patient?family={}", urlencode("élodie")), vec!["p4"]),
        ("/Patient?family=elodie".into(), vec!["p4"]),
        ("/Patient?given=anna".into(), vec!["p1", "p3"]),
        ("/Patient?given=MAR".into(), vec!["p3"]),
        ("/Patient?given=zoe".into(), vec!["p4"]),
        ("/Patient?given=anna&family=jones".into(), vec!["p3"]),
        ("/Patient?birthdate=1980-05-17".into(), vec!["p1"]),
        ("/Patient?birthdate=eq1980-05-17".into(), vec!["p1"]),
        ("/Patient?birthdate=1990".into(), vec!["p2", "p4"]),
        ("/Patient?birthdate=ge1990-01-01".into(), vec!["p2", "p3", "p4"]),
        ("/Patient?birthdate=le1990-01-02".into(), vec!["p1", "p2"]),
        ("/Patient?birthdate=lt1990-01-02".into(), vec!["p1"]),
        ("/Patient?birthdate=gt2001-12-30".into(), vec!["p3"]),
        ("/Patient?birthdate=ge1985&birthdate=le1995".into(), vec!["p2", "p4"]),
        ("/Patient?phone=07700900123".into(), vec!["p1"]),
        (format!("/Patient?phone={}", urlencode("07700 900123")), vec!["p1"]),
        (format!("/Patient?phone={}", urlencode("+447700900456")), vec!["p2"]),
        ("/Patient?phone=0000".into(), vec![]),
        (format!("/Patient?_id={}", names["p3"]), vec!["p3"]),
        ("/Patient?gender=female".into(), vec!["p1", "p2", "p3", "p4"]),
        ("/Patient".into(), vec!["p1", "p2", "p3", "p4"]),
    ];
    for (q, want) in &cases {
        check(&c, &names, q, want).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appointment_and_slot_search() {
    let srv = TestServer::start().await;
    let c = srv.client;
    let sched = make_schedule(&c).await;
    let p1 = c.create_id(CLIN, &any_patient("One")).await;
    let p2 = c.create_id(CLIN, &any_patient("Two")).await;
    let mut names: BTreeMap<&str, String> = BTreeMap::new();
    let mut slots = Vec::new();
    for day in 1..=4 {
        let (id, s, e) = make_slot(&c, &sched, day, 9).await;
        slots.push((id, s, e));
    }
    for (i, (id, _, _)) in slots.iter().enumerate() {
        names.insert(["s1", "s2", "s3", "s4"][i], id.clone());
    }
    let mk = |pid: &str, i: usize, cat: &str| {
        let (sid, s, e) = &slots[i];
        let mut a = appointment_cat(pid, sid, s, e, cat);
        a["serviceType"] = serde_json::json!([{"coding": [{"system": SNOMED, "code": format!("30{i}")}]}]);
        a
    };
    names.insert("a1", c.create_id(CLERK, &mk(&p1, 0, "outpatient")).await);
    names.insert("a2", c.create_id(CLERK, &mk(&p1, 1, "day-case")).await);
    names.insert("a3", c.create_id(CLERK, &mk(&p2, 2, "outpatient")).await);
    let a4 = c.create(CLERK, &mk(&p2, 3, "chemotherapy")).await;
    names.insert("a4", a4["id"].as_str().unwrap().to_string());
    // Cancel a4: its slot becomes free again.
    let r = c
        .put(
            &format!("/Appointment/{}", names["a4"]),
            CLERK,
            &cancelled(a4, Some("patient")),
        )
        .await;
    r.expect(200);

    let s = |k: &str| names[k].clone();
    let cases: Vec<(String, Vec<&str>)> = vec![
        (format!("/Appointment?patient=Patient/{p1}"), vec!["a1", "a2"]),
        (format!("/Appointment?patient={p2}"), vec!["a3", "a4"]),
        (format!("/Appointment?patient={p1},{p2}"), vec!["a1", "a2", "a3", "a4"]),
        ("/Appointment?date=2031-03-01".into(), vec!["a1"]),
        (
            "/Appointment?date=ge2031-03-02&date=lt2031-03-04".into(),
            vec!["a2", "a3"],
        ),
        ("/Appointment?date=ge2031-03-03".into(), vec!["a3", "a4"]),
        ("/Appointment?date=lt2031-03-02".into(), vec!["a1"]),
        ("/Appointment?date=2031-03".into(), vec!["a1", "a2", "a3", "a4"]),
        ("/Appointment?date=2030".into(), vec![]),
        ("/Appointment?status=booked".into(), vec!["a1", "a2", "a3"]),
        ("/Appointment?status=cancelled".into(), vec!["a4"]),
        (
            "/Appointment?status=booked,cancelled".into(),
            vec!["a1", "a2", "a3", "a4"],
        ),
        (format!("/Appointment?slot=Slot/{}", s("s3")), vec!["a3"]),
        (format!("/Appointment?slot={}", s("s1")), vec!["a1"]),
        (
            format!("/Appointment?service-category={CATEGORY_SYSTEM}|day-case"),
            vec!["a2"],
        ),
        ("/Appointment?service-category=outpatient".into(), vec!["a1", "a3"]),
        (
            format!("/Appointment?service-category={CATEGORY_SYSTEM}|"),
            vec!["a1", "a2", "a3", "a4"],
        ),
        (format!("/Appointment?service-type={SNOMED}|301"), vec!["a2"]),
        ("/Appointment?service-type=302".into(), vec!["a3"]),
        (
            format!("/Appointment?patient={p1}&status=booked&date=2031-03-02"),
            vec!["a2"],
        ),
        (format!("/Slot?schedule=Schedule/{sched}"), vec!["s1", "s2", "s3", "s4"]),
        (format!("/Slot?schedule={sched}&status=free"), vec!["s4"]),
        ("/Slot?status=busy".into(), vec!["s1", "s2", "s3"]),
        ("/Slot?start=ge2031-03-03".into(), vec!["s3", "s4"]),
        ("/Slot?start=2031-03-02".into(), vec!["s2"]),
        ("/Slot?start=lt2031-03-02T09:00:00Z".into(), vec!["s1"]),
        ("/Slot?status=free&start=le2031-03-03".into(), vec![]),
        (
            "/Slot?start=ge2031-03-02T10:00:00%2B01:00".into(),
            vec!["s2", "s3", "s4"],
        ),
        ("/Slot?start=lt2031-03-02T10:00:00%2B01:00".into(), vec!["s1"]),
    ];
    for (q, want) in &cases {
        check(&c, &names, q, want).await;
    }

    // _sort by date, both ways.
    let order = |r: &Resp| r.match_ids();
    let r = c.search(CLIN, "/Appointment?_sort=date").await;
    assert_eq!(order(&r), vec![s("a1"), s("a2"), s("a3"), s("a4")], "_sort=date");
    let r = c.search(CLIN, "/Appointment?_sort=-date").await;
    assert_eq!(order(&r), vec![s("a4"), s("a3"), s("a2"), s("a1")], "_sort=-date");
    let r = c.search(CLIN, "/Slot?_sort=-start&status=busy").await;
    assert_eq!(order(&r), vec![s("s3"), s("s2"), s("s1")], "_sort=-start");

    // _include=Appointment:patient
    let r = c
        .search(CLIN, &format!("/Appointment?patient={p1}&_include=Appointment:patient"))
        .await;
    assert_eq!(set(&r.match_ids()), set(&[s("a1"), s("a2")]));
    assert_eq!(
        r.ids("include", None),
        vec![p1.clone()],
        "include patient once: {}",
        r.text
    );
    assert_eq!(r.ids("include", Some("Patient")), vec![p1.clone()]);
    // _include=Appointment:slot
    let r = c
        .search(CLIN, &format!("/Appointment?patient={p1}&_include=Appointment:slot"))
        .await;
    assert_eq!(
        set(&r.ids("include", Some("Slot"))),
        set(&[s("s1"), s("s2")]),
        "{}",
        r.text
    );
    assert_eq!(r.ids("include", None).len(), 2);
    // Both.
    let r = c
        .search(
            CLIN,
            &format!("/Appointment?patient={p2}&_include=Appointment:slot&_include=Appointment:patient"),
        )
        .await;
    assert_eq!(
        set(&r.ids("include", None)),
        set(&[s("s3"), s("s4"), p2.clone()]),
        "{}",
        r.text
    );
    // With a target type.
    let r = c
        .search(
            CLIN,
            &format!("/Appointment?patient={p2}&_include=Appointment:patient:Patient"),
        )
        .await;
    assert_eq!(r.ids("include", None), vec![p2.clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_with_count_and_next_links() {
    let srv = TestServer::start().await;
    let mut all = BTreeSet::new();
    for i in 0..7 {
        all.insert(srv.create_id(CLIN, &any_patient(&format!("Page{i}"))).await);
    }
    let mut seen = Vec::new();
    let mut next = Some("/Patient?family=page&_count=3".to_string());
    let mut pages = 0;
    while let Some(q) = next.take() {
        let r = srv.search(CLIN, &q).await;
        pages += 1;
        let ids = r.match_ids();
        assert!(ids.len() <= 3, "page larger than _count: {}", r.text);
        seen.extend(ids);
        assert!(r.link("self").is_some(), "no self link");
        next = r.link("next").map(|u| path_of(&u, &srv.base()));
        if next.is_none() {
            assert_eq!(r.body()["total"], 7, "total on the last page: {}", r.text);
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(pages, 3);
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "duplicates across pages: {seen:?}");
    assert_eq!(unique, all);

    // previous link on page 2.
    let r = srv.search(CLIN, "/Patient?family=page&_count=3&_offset=3").await;
    assert!(r.link("previous").is_some());
    // _count=0 style / bad _count.
    srv.get("/Patient?_count=abc", CLIN)
        .await
        .expect(400)
        .outcome_at("_count");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_parameters_lenient_and_strict() {
    let srv = TestServer::start().await;
    let id = srv.create_id(CLIN, &any_patient("Lenient")).await;

    // Lenient: 200, the match, and an outcome entry naming the parameter.
    let r = srv.search(CLIN, "/Patient?foo=bar&family=lenient").await;
    assert_eq!(r.match_ids(), vec![id.clone()]);
    let outcomes: Vec<_> = r
        .entries()
        .into_iter()
        .filter(|e| e["search"]["mode"] == "outcome")
        .collect();
    assert_eq!(outcomes.len(), 1, "{}", r.text);
    assert_eq!(outcomes[0]["resource"]["resourceType"], "OperationOutcome");
    let text = outcomes[0]["resource"].to_string();
    assert!(text.contains("foo"), "outcome must name the ignored parameter: {text}");

    // Strict: 400 naming the parameter.
    let r = srv
        .req("GET", "/Patient?foo=bar&family=lenient")
        .token(CLIN)
        .header("Prefer", "handling=strict")
        .send()
        .await;
    r.expect(400);
    r.outcome_at("foo");
    assert!(r.diagnostics().contains("foo"));

    // Strict with only known parameters is fine.
    let r = srv
        .req("GET", "/Patient?family=lenient")
        .token(CLIN)
        .header("Prefer", "handling=strict")
        .send()
        .await;
    r.expect(200);
    assert_eq!(r.match_ids(), vec![id]);

    // An unknown modifier is a 400 under either handling: ignoring it would widen the search.
    srv.req("GET", "/Patient?family:fuzzy=len")
        .token(CLIN)
        .send()
        .await
        .expect(400);
    srv.req("GET", "/Patient?family:fuzzy=len")
        .token(CLIN)
        .header("Prefer", "handling=strict")
        .send()
        .await
        .expect(400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_search_values_are_400() {
    let srv = TestServer::start().await;
    for q in [
        "/Patient?birthdate=1980-13-01",
        "/Patient?birthdate=notadate",
        "/Patient?birthdate=ge1980-02-30",
        "/Appointment?date=xx2031",
        "/Appointment?date=2031-03-01T25:00:00Z",
        "/Patient?_count=-1",
        "/Appointment?patient=Patient/",
        "/Appointment?_include=Appointment",
    ] {
        let r = srv.get(q, CLIN).await;
        assert_eq!(r.status, 400, "{q}: {}", r.text);
        r.outcome();
    }
    // The parameter is named.
    srv.get("/Patient?birthdate=1980-13-01", CLIN)
        .await
        .expect(400)
        .outcome_at("birthdate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_search_equals_get_search() {
    let srv = TestServer::start().await;
    let id = srv.create_id(CLIN, &any_patient("Posted")).await;
    srv.create_id(CLIN, &any_patient("Other")).await;
    let r = srv
        .req("POST", "/Patient/_search")
        .token(CLIN)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .raw("family=posted")
        .send()
        .await;
    r.expect(200);
    assert_eq!(r.match_ids(), vec![id]);
}

/// `_count=0` asks for no entries; following `next` links must still end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_zero_does_not_page_forever() {
    let srv = TestServer::start().await;
    for i in 0..3 {
        srv.create_id(CLIN, &any_patient(&format!("Zero{i}"))).await;
    }
    for q in ["/Patient?_count=0", "/Patient/_history?_count=0"] {
        let r = srv.search(CLIN, q).await;
        if !q.contains("_history") {
            assert!(r.match_ids().is_empty(), "{q}: entries despite _count=0: {}", r.text);
        }
        if let (Some(next), Some(me)) = (r.link("next"), r.link("self")) {
            assert_ne!(
                next, me,
                "{q}: the next link repeats the same page, so a client following it never stops"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_updated_id_and_tag() {
    let srv = TestServer::start().await;
    let mut names = BTreeMap::new();
    let mut tagged = any_patient("Tagged");
    tagged["meta"] = serde_json::json!({"tag": [{"system": "https://hale.health/fhir/CodeSystem/tag", "code": "downtime-backfill"}]});
    names.insert("t", srv.create_id(CLIN, &tagged).await);
    names.insert("u", srv.create_id(CLIN, &any_patient("Untagged")).await);
    let c = srv.client;
    let cases: Vec<(String, Vec<&str>)> = vec![
        ("/Patient?_lastUpdated=ge2000-01-01".into(), vec!["t", "u"]),
        ("/Patient?_lastUpdated=lt2000-01-01".into(), vec![]),
        (format!("/Patient?_id={},{}", names["t"], names["u"]), vec!["t", "u"]),
        ("/Patient?_tag=downtime-backfill".into(), vec!["t"]),
        (
            "/Patient?_tag=https://hale.health/fhir/CodeSystem/tag|downtime-backfill".into(),
            vec!["t"],
        ),
        ("/Patient?_sort=-_lastUpdated&_count=1".into(), vec!["u"]),
    ];
    for (q, want) in &cases {
        check(&c, &names, q, want).await;
    }
}

/// Chained parameters, `_has`, `_revinclude` and `_include:iterate` against
/// stored data: each finds exactly what it says and nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_reverse_chains_and_revincludes() {
    let srv = TestServer::start().await;
    let org = srv
        .create_id(
            ADMIN,
            &serde_json::json!({"resourceType": "Organization", "name": "Royal Infirmary"}),
        )
        .await;
    let mut peter = any_patient("Peterson");
    peter["managingOrganization"] = serde_json::json!({"reference": format!("Organization/{org}")});
    let peter = srv.create_id(CLIN, &peter).await;
    let other = srv.create_id(CLIN, &any_patient("Otherly")).await;
    let obs = |p: &str, code: &str| {
        serde_json::json!({
            "resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": format!("Patient/{p}")}
        })
    };
    let o1 = srv.create_id(CLIN, &obs(&peter, "8480-6")).await;
    let o2 = srv.create_id(CLIN, &obs(&other, "8310-5")).await;

    let ids = |r: &Resp| r.match_ids();
    let r = srv.search(CLIN, "/Observation?subject:Patient.name=peters").await;
    assert_eq!(ids(&r), vec![o1.clone()]);
    let r = srv.search(CLIN, "/Observation?subject.family=otherl").await;
    assert_eq!(ids(&r), vec![o2.clone()]);
    let r = srv
        .search(CLIN, "/Observation?subject:Patient.organization.name=royal")
        .await;
    assert_eq!(ids(&r), vec![o1.clone()]);
    let r = srv
        .search(CLIN, "/Observation?subject:Patient.organization.name=general")
        .await;
    assert!(ids(&r).is_empty());
    // _has: patients with a systolic blood pressure recorded.
    let r = srv
        .search(CLIN, "/Patient?_has:Observation:subject:code=http://loinc.org|8480-6")
        .await;
    assert_eq!(ids(&r), vec![peter.clone()]);
    let r = srv.search(CLIN, "/Patient?_has:Observation:subject:code=nothing").await;
    assert!(ids(&r).is_empty());
    // _revinclude: the patient and the observations about them.
    let r = srv
        .search(CLIN, &format!("/Patient?_id={peter}&_revinclude=Observation:subject"))
        .await;
    assert_eq!(ids(&r), vec![peter.clone()]);
    assert_eq!(r.ids("include", Some("Observation")), vec![o1.clone()]);
    // _include:iterate follows from what was included.
    let r = srv
        .search(
            CLIN,
            &format!("/Observation?_id={o1}&_include=Observation:subject&_include:iterate=Patient:organization"),
        )
        .await;
    assert_eq!(r.ids("include", Some("Patient")), vec![peter.clone()]);
    assert_eq!(r.ids("include", Some("Organization")), vec![org.clone()]);
    // A clerk may not search clinical data through a chain.
    srv.get("/Patient?_has:Observation:subject:code=8480-6", CLERK)
        .await
        .expect(403)
        .outcome();
}
