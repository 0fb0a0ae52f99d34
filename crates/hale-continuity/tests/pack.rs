//! Downtime packs generated from the demo board: what the PDFs say (read back
//! with `pdftotext`), the CSVs, the manifest's hashes, age decryption, and the
//! never-half-written guarantee of `write_pack`.

mod common;

use common::*;
use hale_continuity::{
    current_pack, generate, verify_pack, write_pack, write_pack_interrupted, ContinuityError, Pack, PackOptions,
    Protection, Recipients, WriteStage, MANIFEST_FILE,
};
use hale_fhir::codes;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};

const SITE: &str = "SRI";
/// Tomorrow, as printed and as FHIR dates start.
const TOMORROW_PRINTED: &str = "Tue 24 Nov 2026";
const TOMORROW: &str = "2026-11-24";

fn identity() -> &'static age::x25519::Identity {
    static ID: std::sync::OnceLock<age::x25519::Identity> = std::sync::OnceLock::new();
    ID.get_or_init(age::x25519::Identity::generate)
}

fn age_protection() -> Protection {
    Protection::Age(Recipients::parse(&[identity().to_public().to_string()]).unwrap())
}

fn pack_at(now_ms: i64, protection: Protection) -> Pack {
    let store = demo_store();
    let conn = open_reader(&store.dir);
    generate(&conn, &PackOptions::new(SITE, now_ms, protection)).expect("generate")
}

/// The encrypted pack every read-back test looks at, generated once.
fn encrypted_pack() -> &'static Pack {
    static PACK: std::sync::OnceLock<Pack> = std::sync::OnceLock::new();
    PACK.get_or_init(|| pack_at(now_ms(), age_protection()))
}

fn plaintext_of(pack: &Pack, name: &str) -> Vec<u8> {
    let f = pack.file(name).unwrap_or_else(|| panic!("pack has no {name}"));
    assert!(f.encrypted, "{name} is encrypted");
    decrypt(identity(), &f.bytes)
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn ref_id(v: &Value) -> &str {
    s(v, "reference").split_once('/').map_or("", |(_, id)| id)
}

struct ExpectedRow {
    appointment_id: String,
    family: String,
    nhs: String,
    phones: Vec<String>,
}

/// Appointment order within a session: (start, slot comment, appointment id).
type RowKey<'a> = (&'a str, &'a str, &'a str);

struct ExpectedSession {
    clinic: String,
    rows: Vec<ExpectedRow>,
}

/// Tomorrow's sessions at SITE, computed from the board itself (not through
/// the library): Locations with the site extension, their Schedules, those
/// Schedules' slots tomorrow, the booked Appointments in them; sessions in
/// order of their first slot, then clinic name; rows in time order.
fn expected_tomorrow() -> Vec<ExpectedSession> {
    let board = &demo_store().board;
    let of = |t: &'static str| board.resources.iter().filter(move |r| r["resourceType"] == t);
    let site_locations: HashMap<&str, &str> = of("Location")
        .filter(|l| {
            l["extension"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["url"] == codes::EXT_SITE && e["valueCode"] == SITE)
        })
        .map(|l| (s(l, "id"), s(l, "name")))
        .collect();
    let schedules: HashMap<&str, &str> = of("Schedule")
        .filter_map(|sc| {
            let loc = sc["actor"]
                .as_array()?
                .iter()
                .map(ref_id)
                .find(|id| site_locations.contains_key(id))?;
            Some((s(sc, "id"), site_locations[loc]))
        })
        .collect();
    // slot id -> (schedule, start, comment)
    let slots: HashMap<&str, (&str, &str, &str)> = of("Slot")
        .filter(|sl| s(sl, "start").starts_with(TOMORROW))
        .filter_map(|sl| {
            let sched = ref_id(&sl["schedule"]);
            schedules
                .contains_key(sched)
                .then(|| (s(sl, "id"), (sched, s(sl, "start"), s(sl, "comment"))))
        })
        .collect();
    let mut first_slot: HashMap<&str, &str> = HashMap::new();
    for (sched, start, _) in slots.values() {
        let e = first_slot.entry(sched).or_insert(start);
        if start < e {
            *e = start;
        }
    }
    let patients: HashMap<&str, &Value> = of("Patient").map(|p| (s(p, "id"), p)).collect();
    let mut by_schedule: BTreeMap<&str, Vec<(RowKey<'_>, ExpectedRow)>> = BTreeMap::new();
    for a in of("Appointment").filter(|a| a["status"] == "booked") {
        let Some(slot) = a["slot"].as_array().and_then(|v| v.first()).map(ref_id) else {
            continue;
        };
        let Some(&(sched, start, comment)) = slots.get(slot) else {
            continue;
        };
        let pid = a["participant"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| s(&p["actor"], "reference"))
            .find_map(|r| r.strip_prefix("Patient/"))
            .expect("a patient");
        let p = patients[pid];
        let row = ExpectedRow {
            appointment_id: s(a, "id").to_string(),
            family: s(&p["name"][0], "family").to_uppercase(),
            nhs: {
                let n = s(&p["identifier"][0], "value");
                format!("{} {} {}", &n[..3], &n[3..6], &n[6..])
            },
            phones: p["telecom"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|t| t["system"] == "phone")
                .map(|t| s(t, "value").to_string())
                .collect(),
        };
        by_schedule
            .entry(sched)
            .or_default()
            .push(((start, comment, s(a, "id")), row));
    }
    let mut sessions: Vec<(&str, &str, ExpectedSession)> = by_schedule
        .into_iter()
        .map(|(sched, mut rows)| {
            rows.sort_by(|a, b| a.0.cmp(&b.0));
            let clinic = schedules[sched];
            (
                first_slot[sched],
                clinic,
                ExpectedSession {
                    clinic: clinic.to_string(),
                    rows: rows.into_iter().map(|(_, r)| r).collect(),
                },
            )
        })
        .collect();
    sessions.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    sessions.into_iter().map(|(_, _, e)| e).collect()
}

fn line_at(text: &str, pos: usize) -> &str {
    let start = text[..pos].rfind('\n').map_or(0, |i| i + 1);
    let end = text[pos..].find('\n').map_or(text.len(), |i| pos + i);
    &text[start..end]
}

/// The text from the line holding `pos` through `extra` more lines.
fn lines_from(text: &str, pos: usize, extra: usize) -> &str {
    let start = text[..pos].rfind('\n').map_or(0, |i| i + 1);
    let mut end = pos;
    for _ in 0..=extra {
        match text[end..].find('\n') {
            Some(i) => end += i + 1,
            None => return &text[start..],
        }
    }
    &text[start..end]
}

#[test]
fn clinic_list_has_tomorrows_patients_in_clinic_and_time_order() {
    let pack = encrypted_pack();
    let pages = pdf_pages(&plaintext_of(pack, "clinic-list.pdf.age"));
    let text = pages.join("\n");
    let expected = expected_tomorrow();
    let rows: usize = expected.iter().map(|s| s.rows.len()).sum();
    assert!(
        expected.len() >= 3 && rows >= 20,
        "the demo site has clinics tomorrow ({rows} rows)"
    );

    let mut cursor = text.find(TOMORROW_PRINTED).expect("tomorrow's sessions are listed");
    for session in &expected {
        let title = format!("— {}", session.clinic);
        let at = text[cursor..]
            .find(&title)
            .map(|i| cursor + i)
            .unwrap_or_else(|| panic!("session {:?} missing after byte {cursor}", session.clinic));
        assert!(
            line_at(&text, at).contains(TOMORROW_PRINTED),
            "the next {:?} title is tomorrow's: {:?}",
            session.clinic,
            line_at(&text, at)
        );
        cursor = at;
        for row in &session.rows {
            let at = text[cursor..].find(&row.nhs).map(|i| cursor + i).unwrap_or_else(|| {
                panic!(
                    "{} (NHS {}) missing or out of order in {:?}",
                    row.family, row.nhs, session.clinic
                )
            });
            let line = line_at(&text, at);
            assert!(
                line.contains(&row.family),
                "{} on the row of NHS {}: {line:?}",
                row.family,
                row.nhs
            );
            let block = lines_from(&text, at, 3);
            for phone in &row.phones {
                assert!(block.contains(phone), "phone {phone} of {} in {block:?}", row.nhs);
            }
            cursor = at;
        }
    }

    // Every page: the header and "page X of Y".
    let n = pages.len();
    for (i, page) in pages.iter().enumerate() {
        assert!(
            page.contains(&format!(
                "DOWNTIME COPY — data as of Mon 23 Nov 2026 07:00 GMT — {SITE}"
            )),
            "header on page {}",
            i + 1
        );
        assert!(
            page.contains(&format!("page {} of {n}", i + 1)),
            "page number on page {}",
            i + 1
        );
    }
    assert_eq!(pack.file("clinic-list.pdf.age").unwrap().pages, Some(n));
}

#[test]
fn clinic_list_csv_has_every_appointment_tomorrow() {
    let pack = encrypted_pack();
    let csv = String::from_utf8(plaintext_of(pack, "clinic-list.csv.age")).unwrap();
    assert!(csv.starts_with('\u{FEFF}'), "UTF-8 BOM");
    let lines: Vec<&str> = csv.trim_start_matches('\u{FEFF}').split("\r\n").collect();
    assert!(lines[0].starts_with("session_date,clinic,"));
    let tomorrow: Vec<&str> = lines.iter().copied().filter(|l| l.starts_with(TOMORROW)).collect();
    let expected = expected_tomorrow();
    let ids: BTreeSet<&str> = expected
        .iter()
        .flat_map(|s| s.rows.iter().map(|r| r.appointment_id.as_str()))
        .collect();
    let listed = tomorrow.iter().filter(|l| !l.contains(",,,,,,,,,,,,,,")).count();
    assert_eq!(listed, ids.len(), "one CSV row per appointment tomorrow");
    for id in ids {
        assert!(
            tomorrow.iter().any(|l| l.contains(&format!(",{id},"))),
            "{id} in the CSV"
        );
    }
}

#[test]
fn patient_summary_has_a_section_per_patient_with_their_clinical_data() {
    let pack = encrypted_pack();
    let pages = pdf_pages(&plaintext_of(pack, "patient-summary.pdf.age"));
    let board = &demo_store().board;
    let sections = summary_sections(&pages);
    let expected = expected_tomorrow();
    let patients: HashMap<&str, &Value> = board
        .resources
        .iter()
        .filter(|r| r["resourceType"] == "Patient")
        .map(|p| (s(p, "id"), p))
        .collect();
    let by_nhs: HashMap<String, &Value> = patients
        .values()
        .map(|p| {
            let n = s(&p["identifier"][0], "value");
            (format!("{} {} {}", &n[..3], &n[3..6], &n[6..]), *p)
        })
        .collect();
    let mut checked_allergy = 0;
    let mut checked_kin = 0;
    let mut checked_note = 0;
    for row in expected.iter().flat_map(|s| &s.rows) {
        let section = sections
            .get(&row.nhs)
            .unwrap_or_else(|| panic!("no summary section for NHS {}", row.nhs));
        assert!(section.contains(&row.family), "{} named in their section", row.family);
        for phone in &row.phones {
            assert!(
                section.contains(phone.as_str()),
                "phone {phone} in {}'s section",
                row.nhs
            );
        }
        let p = by_nhs[&row.nhs];
        let pid = s(p, "id");
        let about = |t: &'static str, field: &'static str| {
            board
                .resources
                .iter()
                .filter(move |r| r["resourceType"] == t)
                .filter(move |r| ref_id(&r[field]) == pid)
        };
        for a in about("AllergyIntolerance", "patient") {
            let substance = s(&a["code"], "text");
            let substance = if substance.is_empty() {
                s(&a["code"]["coding"][0], "display")
            } else {
                substance
            };
            assert!(section.contains(substance), "allergy {substance} for {}", row.nhs);
            checked_allergy += 1;
        }
        if let Some(kin) = p["contact"].as_array().and_then(|c| c.first()) {
            let given = kin["name"]["given"][0].as_str().unwrap();
            assert!(section.contains(given), "next of kin {given} for {}", row.nhs);
            let phone = s(&kin["telecom"][0], "value");
            assert!(section.contains(phone), "next of kin phone {phone} for {}", row.nhs);
            checked_kin += 1;
        }
        if about("DocumentReference", "subject").next().is_some() {
            assert!(section.contains("progress note"), "a clinical note for {}", row.nhs);
            checked_note += 1;
        }
        assert!(
            section.contains("On this pack's clinic lists"),
            "cross-reference for {}",
            row.nhs
        );
    }
    assert!(
        checked_allergy > 0 && checked_kin > 0 && checked_note > 0,
        "the board exercised every section"
    );

    for (i, page) in pages.iter().enumerate() {
        assert!(
            page.contains("DOWNTIME COPY — data as of"),
            "header on summary page {}",
            i + 1
        );
        assert!(page.contains(&format!("page {} of {}", i + 1, pages.len())));
    }
}

/// Patient summary sections by NHS number ("999 123 4567"): the page with the
/// title band and its continuation pages.
fn summary_sections(pages: &[String]) -> HashMap<String, String> {
    let mut sections: HashMap<String, String> = HashMap::new();
    let mut current: Option<String> = None;
    for page in pages {
        let title = page
            .lines()
            .find(|l| l.contains("NHS 999 ") && !l.contains("(continued)"))
            .and_then(|l| l.split("NHS ").nth(1))
            .map(|n| n.trim().chars().take(12).collect::<String>());
        if let Some(nhs) = title {
            current = Some(nhs.clone());
            sections.insert(nhs, page.clone());
        } else if let Some(nhs) = &current {
            assert!(
                page.contains(&format!("NHS {nhs} (continued)")),
                "continuation page names its patient"
            );
            sections.get_mut(nhs).unwrap().push_str(page);
        }
    }
    sections
}

/// The rest of the record on paper: alerts first in their box, active
/// problems, current medicines with dose, route and frequency, and for
/// chemotherapy and inpatients a drug chart row for every scheduled dose in
/// the pack's days. The CSV carries the same.
#[test]
fn patient_summary_has_alerts_problems_medicines_and_the_drug_chart() {
    let pack = encrypted_pack();
    let pages = pdf_pages(&plaintext_of(pack, "patient-summary.pdf.age"));
    let sections = summary_sections(&pages);
    let csv = String::from_utf8(plaintext_of(pack, "patient-summary.csv.age")).unwrap();
    let board = &demo_store().board;
    let nhs_of: HashMap<&str, String> = board
        .resources
        .iter()
        .filter(|r| r["resourceType"] == "Patient")
        .map(|p| {
            let n = s(&p["identifier"][0], "value");
            (s(p, "id"), format!("{} {} {}", &n[..3], &n[3..6], &n[6..]))
        })
        .collect();
    let subject = |r: &Value| ref_id(r.get("subject").or_else(|| r.get("patient")).unwrap()).to_string();
    let last_day = today() + chrono::Duration::days(i64::from(hale_continuity::DAYS_DEFAULT));
    let (mut alerts, mut problems, mut medicines, mut chart_doses) = (0, 0, 0, 0);
    for r in &board.resources {
        let Some(section) = nhs_of.get(subject_or_none(r).as_str()).and_then(|n| sections.get(n)) else {
            continue;
        };
        let pid = subject(r);
        match r["resourceType"].as_str().unwrap() {
            "Flag" => {
                let text = s(&r["code"], "text");
                let at = section
                    .find(&text[..text.len().min(40)])
                    .unwrap_or_else(|| panic!("alert {text} for {pid}"));
                let box_at = section.find("ALERTS").expect("the alerts box");
                let problems_at = section.find("Active problems").expect("problems heading");
                assert!(
                    box_at < at && at < problems_at,
                    "alert {text} in the box, before the problems"
                );
                assert!(
                    csv.lines().any(|l| l.contains(",alert,") && l.contains(text)),
                    "alert {text} in the CSV"
                );
                alerts += 1;
            }
            "Condition" => {
                let text = s(&r["code"], "text");
                assert!(section.contains(text), "problem {text} for {pid}");
                problems += 1;
            }
            "MedicationRequest" if r["status"] == "active" => {
                let name = s(&r["medicationCodeableConcept"], "text");
                assert!(section.contains(name), "medicine {name} for {pid}");
                let q = &r["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"];
                let dose = format!("{} {}", q["value"], s(q, "unit"));
                assert!(section.contains(&dose), "dose {dose} of {name} for {pid}");
                let route = s(&r["dosageInstruction"][0]["route"], "text");
                assert!(section.contains(route), "route {route} of {name} for {pid}");
                assert!(csv.contains(name), "{name} in the CSV");
                medicines += 1;
                let bounds = &r["dosageInstruction"][0]["timing"]["repeat"]["boundsPeriod"];
                if let (Some(a), Some(b)) = (bounds["start"].as_str(), bounds["end"].as_str()) {
                    let (a, b): (chrono::NaiveDate, chrono::NaiveDate) = (a.parse().unwrap(), b.parse().unwrap());
                    let times = r["dosageInstruction"][0]["timing"]["repeat"]["timeOfDay"]
                        .as_array()
                        .unwrap();
                    let mut day = a.max(today());
                    while day <= b.min(last_day) {
                        for t in times {
                            let hhmm = &t.as_str().unwrap()[..5];
                            let printed = day.format("%a %d/%m").to_string();
                            assert!(
                                section
                                    .lines()
                                    .any(|l| l.contains(&printed) && l.contains(hhmm) && l.contains(name)),
                                "drug chart row {printed} {hhmm} {name} for {pid}:\n{section}"
                            );
                            assert!(
                                csv.contains(&format!("{} {hhmm},{name}", day.format("%Y-%m-%d"))),
                                "drug chart row {day} {hhmm} {name} in the CSV"
                            );
                            chart_doses += 1;
                        }
                        day = day.succ_opt().unwrap();
                    }
                }
            }
            _ => {}
        }
    }
    assert!(
        alerts > 0 && problems > 0 && medicines > 0 && chart_doses > 0,
        "the board exercised every part: {alerts} alerts, {problems} problems, {medicines} medicines, {chart_doses} doses"
    );
}

/// The patient id a record resource is about, or "".
fn subject_or_none(r: &Value) -> String {
    match r["resourceType"].as_str() {
        Some("Flag" | "Condition" | "MedicationRequest") => {
            ref_id(r.get("subject").unwrap_or(&Value::Null)).to_string()
        }
        _ => String::new(),
    }
}

#[test]
fn manifest_hashes_match_the_files_written() {
    let pack = encrypted_pack();
    let out = tempfile::tempdir().unwrap();
    let written = write_pack(out.path(), pack, 3).unwrap();
    let m = verify_pack(&written.dir).expect("every hash matches");
    assert_eq!(m, pack.manifest);
    assert_eq!(m.site, SITE);
    assert_eq!(m.protection, "age-x25519");
    assert_eq!(m.recipients, vec![identity().to_public().to_string()]);
    assert_eq!(
        (m.range.first_day.as_str(), m.range.last_day.as_str()),
        ("2026-11-23", "2026-11-26")
    );
    assert!(m.store_index > 0);
    let names: BTreeSet<&str> = m.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "clinic-list.csv.age",
            "clinic-list.pdf.age",
            "patient-summary.csv.age",
            "patient-summary.pdf.age"
        ])
    );
    // Independently of verify_pack: hash the bytes on disk, and the plaintext.
    use sha2::Digest;
    let hex = |b: &[u8]| {
        sha2::Sha256::digest(b)
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
    };
    for f in &m.files {
        let bytes = std::fs::read(written.dir.join(&f.name)).unwrap();
        assert_eq!(hex(&bytes), f.sha256, "{} as written", f.name);
        assert_eq!(
            hex(&decrypt(identity(), &bytes)),
            f.plaintext_sha256,
            "{} decrypted",
            f.name
        );
        assert!(
            bytes.starts_with(b"age-encryption.org/v1\n"),
            "{} is an age file",
            f.name
        );
    }
    let manifest = std::fs::read(written.dir.join(MANIFEST_FILE)).unwrap();
    assert!(
        serde_json::from_slice::<Value>(&manifest).is_ok(),
        "the manifest is plaintext JSON"
    );

    // A damaged file is caught.
    let victim = written.dir.join("clinic-list.pdf.age");
    let mut bytes = std::fs::read(&victim).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&victim, bytes).unwrap();
    assert!(matches!(
        verify_pack(&written.dir),
        Err(ContinuityError::InvalidPack { .. })
    ));
}

#[test]
fn interrupted_generation_leaves_the_previous_pack_intact() {
    let out = tempfile::tempdir().unwrap();
    let first = pack_at(now_ms(), Protection::InsecurePlaintext);
    let first_dir = write_pack(out.path(), &first, 2).unwrap().dir;
    let later = pack_at(now_ms() + 15 * 60_000, Protection::InsecurePlaintext);
    for stage in [
        WriteStage::FileWritten(0),
        WriteStage::FileWritten(2),
        WriteStage::Staged,
        WriteStage::Published,
    ] {
        let err = write_pack_interrupted(out.path(), &later, 2, stage).unwrap_err();
        assert!(matches!(err, ContinuityError::Interrupted(s) if s == stage), "{err}");
        let current = current_pack(out.path()).unwrap().expect("a current pack");
        assert_eq!(
            std::fs::canonicalize(&current.dir).unwrap(),
            std::fs::canonicalize(&first_dir).unwrap(),
            "after stopping at {stage:?}, current still names the first pack"
        );
        assert_eq!(current.manifest, first.manifest, "{stage:?}");
        verify_pack(&current.dir).expect("the first pack is whole");
    }
    // The next complete write replaces it and cleans up after the crashed ones.
    let done = write_pack(out.path(), &later, 2).unwrap();
    let current = current_pack(out.path()).unwrap().unwrap();
    assert_eq!(current.manifest, later.manifest);
    verify_pack(&current.dir).unwrap();
    let leftovers: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "no staging directories left: {leftovers:?}");
    // keep = 2: the first pack, the published-but-never-current one and the new one → 2 kept.
    let kept: Vec<String> = std::fs::read_dir(out.path().join("packs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(done.dir.exists());
    assert!(!first_dir.exists(), "the oldest pack was pruned");

    // Another site's pack never becomes this directory's current pack.
    let store = demo_store();
    let conn = open_reader(&store.dir);
    let other = generate(&conn, &PackOptions::new("QEH", now_ms(), Protection::InsecurePlaintext)).unwrap();
    let err = write_pack(out.path(), &other, 2).unwrap_err();
    assert!(matches!(err, ContinuityError::InvalidOption(_)), "{err}");
    assert_eq!(current_pack(out.path()).unwrap().unwrap().manifest, later.manifest);
}

#[test]
fn plaintext_packs_are_named_and_marked_as_such() {
    let pack = pack_at(now_ms(), Protection::InsecurePlaintext);
    assert_eq!(pack.manifest.protection, "insecure-plaintext");
    let pdf = pack.file("clinic-list.pdf").expect("no .age suffix");
    assert!(!pdf.encrypted && pdf.bytes.starts_with(b"%PDF-1.4"));
    assert_eq!(pdf.sha256, pdf.plaintext_sha256);
    // Same data either way (the PDF bytes are deterministic for a given store and time).
    let encrypted = encrypted_pack();
    assert_eq!(
        pdf.plaintext_sha256,
        encrypted.file("clinic-list.pdf.age").unwrap().plaintext_sha256
    );
}

#[test]
fn bad_options_are_refused() {
    let store = demo_store();
    let conn = open_reader(&store.dir);
    let mut opts = PackOptions::new("NOPE", now_ms(), Protection::InsecurePlaintext);
    let err = generate(&conn, &opts).unwrap_err();
    assert!(
        matches!(&err, ContinuityError::UnknownSite { known, .. } if known.contains("QEH") && known.contains("SRI")),
        "{err}"
    );
    opts.site = "SRI".into();
    opts.days = hale_continuity::DAYS_MAX + 1;
    assert!(matches!(generate(&conn, &opts), Err(ContinuityError::InvalidOption(_))));
    opts.days = 0;
    opts.site = "S R I".into();
    assert!(matches!(generate(&conn, &opts), Err(ContinuityError::InvalidOption(_))));
    opts.site = "sri".into();
    let today_only = generate(&conn, &opts).expect("site codes are case-insensitive; 0 days is today only");
    assert_eq!(today_only.manifest.range.last_day, "2026-11-23");
}

#[test]
fn first_pages_rendered_for_review() {
    // Writes target/downtime-pack-page1.png (clinic list) and
    // target/downtime-pack-summary-page1.png (patient summary) for a reviewer to look at.
    let pack = encrypted_pack();
    let dir = review_dir();
    let clinic = dir.join("downtime-pack-page1.png");
    let summary = dir.join("downtime-pack-summary-page1.png");
    render_png(&plaintext_of(pack, "clinic-list.pdf.age"), 1, &clinic);
    render_png(&plaintext_of(pack, "patient-summary.pdf.age"), 1, &summary);
    for png in [&clinic, &summary] {
        let bytes = std::fs::read(png).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{} is a PNG", png.display());
    }
}
