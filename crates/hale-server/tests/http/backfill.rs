//! `POST /$backfill`: paper records entered after downtime keep their
//! clinical time, get the entry time from the server, are tagged and audited.

use crate::common::*;
use serde_json::{json, Value};

const TAG: &str = "https://hale.health/fhir/CodeSystem/tag";

fn tags(r: &Value) -> Vec<String> {
    r["meta"]["tag"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| format!("{}|{}", t["system"].as_str().unwrap(), t["code"].as_str().unwrap()))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn paper_entries_keep_both_times_and_the_tag() {
    let srv = TestServer::start().await;
    let c = &srv.client;
    let sched = make_schedule(c).await;
    let (slot, s, e) = make_slot(c, &sched, 2, 10).await;
    let pid = c.create_id(CLIN, &any_patient("Paper")).await;
    let appt_id = c.create_id(CLERK, &appointment(&pid, &slot, &s, &e)).await;
    // During the outage the system marked her as a non-attender.
    let mut appt = c.read(CLERK, &format!("/Appointment/{appt_id}")).await;
    appt["status"] = json!("noshow");
    c.put(&format!("/Appointment/{appt_id}"), CLERK, &appt)
        .await
        .expect(200);
    // The paper notes say she came, had her bloods and a consultation.
    appt["status"] = json!("fulfilled");
    let clinical_time = "2031-03-02T10:05:00Z";
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:9d0b6a4e-0000-4000-8000-000000000001",
         "resource": {"resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": format!("Patient/{pid}")},
            "period": {"start": clinical_time, "end": "2031-03-02T10:40:00Z"}},
         "request": {"method": "POST", "url": "Encounter"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "Haemoglobin"},
            "subject": {"reference": format!("Patient/{pid}")},
            "encounter": {"reference": "urn:uuid:9d0b6a4e-0000-4000-8000-000000000001"},
            "effectiveDateTime": clinical_time,
            "valueQuantity": {"value": 131, "unit": "g/L"}},
         "request": {"method": "POST", "url": "Observation"}},
        {"resource": {"resourceType": "DocumentReference", "status": "current",
            "subject": {"reference": format!("Patient/{pid}")},
            "context": {"period": {"start": clinical_time}},
            "content": [{"attachment": {"contentType": "text/plain", "data": "U2VlbiBpbiBjbGluaWMuIFdlbGwu"}}]},
         "request": {"method": "POST", "url": "DocumentReference"}},
        {"resource": {"resourceType": "MedicationAdministration", "status": "completed",
            "medicationCodeableConcept": {"text": "Enoxaparin 40 mg/0.4 mL injection"},
            "subject": {"reference": format!("Patient/{pid}")},
            "effectiveDateTime": "2031-03-02T18:05:00Z",
            "dosage": {"dose": {"value": 40, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}}},
         "request": {"method": "POST", "url": "MedicationAdministration"}},
        {"resource": appt, "request": {"method": "PUT", "url": format!("Appointment/{appt_id}")}},
    ]});
    let r = c.post("/$backfill?incident=inc-2031-03-02", CLIN, &bundle).await;
    r.expect(200);
    assert_eq!(r.body()["type"], "transaction-response");
    let locations: Vec<String> = r
        .entries()
        .iter()
        .map(|e| e["response"]["location"].as_str().unwrap().to_string())
        .collect();
    let obs_path = locations
        .iter()
        .find(|l| l.contains("Observation/"))
        .map(|l| path_of(l, &c.base()))
        .unwrap();
    let obs_path = obs_path.split("/_history").next().unwrap().to_string();
    let obs = c.read(CLIN, &obs_path).await;
    // The clinical time is as written on paper; the entry time is now, and differs.
    assert_eq!(obs["effectiveDateTime"], clinical_time);
    assert_ne!(obs["meta"]["lastUpdated"], clinical_time);
    let t = tags(&obs);
    assert!(t.contains(&format!("{TAG}|downtime-backfill")), "{t:?}");
    assert!(t.contains(&format!("{TAG}|incident-inc-2031-03-02")), "{t:?}");
    // The dose from the paper drug chart keeps the time it was given.
    let ma_path = locations
        .iter()
        .find(|l| l.contains("MedicationAdministration/"))
        .map(|l| path_of(l, &c.base()))
        .unwrap();
    let ma = c.read(CLIN, ma_path.split("/_history").next().unwrap()).await;
    assert_eq!(ma["effectiveDateTime"], "2031-03-02T18:05:00Z");
    assert_ne!(ma["meta"]["lastUpdated"], "2031-03-02T18:05:00Z");
    assert!(
        tags(&ma).contains(&format!("{TAG}|downtime-backfill")),
        "{:?}",
        tags(&ma)
    );
    assert!(tags(&ma).contains(&format!("{TAG}|incident-inc-2031-03-02")));
    // The non-attendance is corrected, and tagged too.
    let appt = c.read(CLERK, &format!("/Appointment/{appt_id}")).await;
    assert_eq!(appt["status"], "fulfilled");
    assert!(tags(&appt).contains(&format!("{TAG}|downtime-backfill")));
    // _tag finds every backfilled entry.
    for (rtype, n) in [
        ("Observation", 1),
        ("Encounter", 1),
        ("DocumentReference", 1),
        ("MedicationAdministration", 1),
        ("Appointment", 1),
    ] {
        let r = c
            .search(
                CLIN,
                &format!("/{rtype}?_tag={}", urlencode(&format!("{TAG}|downtime-backfill"))),
            )
            .await;
        assert_eq!(r.match_ids().len(), n, "{rtype}");
    }
    let r = c
        .search(
            CLIN,
            &format!(
                "/Observation?_tag={}",
                urlencode(&format!("{TAG}|incident-inc-2031-03-02"))
            ),
        )
        .await;
    assert_eq!(r.match_ids().len(), 1);
    // The audit trail says who entered it.
    let id = obs["id"].as_str().unwrap();
    let r = c
        .search(ADMIN, &format!("/AuditEvent?patient={pid}&action=C&_count=100"))
        .await;
    assert!(
        r.entries().iter().any(|e| {
            e["resource"]["entity"]
                .to_string()
                .contains(&format!("Observation/{id}"))
                && e["resource"]["agent"][0]["who"]["identifier"]["value"] == "dr.who"
        }),
        "no audit of the backfilled observation's entry"
    );
}

#[tokio::test]
async fn backfill_refuses_entries_without_clinical_time_or_of_other_kinds() {
    let srv = TestServer::start().await;
    let c = &srv.client;
    let pid = c.create_id(CLIN, &any_patient("NoTime")).await;
    let no_time = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "Pulse"},
            "subject": {"reference": format!("Patient/{pid}")}},
         "request": {"method": "POST", "url": "Observation"}},
        {"resource": any_patient("Sneaky"), "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "MedicationAdministration", "status": "completed",
            "medicationCodeableConcept": {"text": "Paracetamol 500 mg tablets"},
            "subject": {"reference": format!("Patient/{pid}")}},
         "request": {"method": "POST", "url": "MedicationAdministration"}},
    ]});
    let r = c.post("/$backfill", CLIN, &no_time).await;
    assert!(r.status == 400 || r.status == 422, "{}", r.status);
    assert!(
        !r.outcome_at("Bundle.entry[0].resource.effective[x]").is_empty(),
        "{}",
        r.diagnostics()
    );
    assert!(
        !r.outcome_at("Bundle.entry[1].resource.resourceType").is_empty(),
        "{}",
        r.diagnostics()
    );
    assert!(
        !r.outcome_at("Bundle.entry[2].resource.effective[x]").is_empty(),
        "a dose without the time it was given: {}",
        r.diagnostics()
    );
    let r = c
        .post(
            "/$backfill?incident=bad%20id",
            CLIN,
            &json!({"resourceType": "Bundle", "type": "batch"}),
        )
        .await;
    r.expect(400);
    assert!(!r.outcome_at("incident").is_empty());
    let r = c
        .post(
            "/$backfill",
            CLIN,
            &json!({"resourceType": "Bundle", "type": "searchset"}),
        )
        .await;
    r.expect(400);
    assert_eq!(
        srv.live_count("Observation"),
        0,
        "a refused backfill wrote an observation"
    );
    assert_eq!(srv.live_count("Patient"), 1, "a refused backfill wrote a patient");
}
