//! Data-driven tests for search: extraction (resource -> index rows) and query
//! parsing (pairs -> SearchQuery), each rendered as compact text.

use super::*;
use crate::date::format_instant_ms;
use ResourceType::*;

fn ms(v: i64) -> String {
    match v {
        i64::MIN => "-inf".into(),
        i64::MAX => "+inf".into(),
        v => format_instant_ms(v),
    }
}

fn render_value(v: &IndexValue) -> String {
    match v {
        IndexValue::Token { system, code } => format!("token {system}|{code}"),
        IndexValue::Str(s) => format!("str {s}"),
        IndexValue::Date { start_ms, end_ms } => format!("date {}..{}", ms(*start_ms), ms(*end_ms)),
        IndexValue::Reference { rtype, id } => format!("ref {rtype}/{id}"),
    }
}

#[track_caller]
fn check_extract(rtype: ResourceType, input: &str, expect: &str) {
    let v: Value = serde_json::from_str(input).unwrap_or_else(|e| panic!("bad test JSON {input}: {e}"));
    let entries = extract(rtype, &v);
    let got: Vec<String> = entries
        .iter()
        .map(|e| format!("{} {}", e.param, render_value(&e.value)))
        .collect();
    let want: Vec<&str> = expect.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    assert_eq!(got, want, "\ninput: {input}");
    assert_eq!(extract(rtype, &v), entries, "extraction must be deterministic");
}

#[test]
fn extract_patient() {
    check_extract(
        Patient,
        r#"{"resourceType":"Patient","id":"p1",
            "meta":{"lastUpdated":"2024-05-01T09:30:00.000Z","tag":[{"system":"https://hale.health/fhir/CodeSystem/tag","code":"downtime-backfill"},{"code":"vip"}]},
            "identifier":[{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"9434765919"},{"value":"LOCAL1"},{"system":"urn:x"}],
            "name":[{"use":"official","family":"  Brontë ","given":["Anne","Élise"],"prefix":["Ms"],"text":"Ms  Anne BRONTË"},
                    {"family":"Brontë"}],
            "telecom":[{"system":"phone","value":"+44 (0)113 243-2799","use":"mobile"},{"system":"phone","value":"0113 000 0000"},
                       {"system":"email","value":" Anne@Example.ORG "},{"system":"fax","value":"0113 999"}],
            "gender":"female","birthDate":"1990-01-17",
            "address":[{"postalCode":"LS1 5AB"},{"postalCode":"ls1  5ab"}]}"#,
        "
        _lastUpdated date 2024-05-01T09:30:00.000Z..2024-05-01T09:30:00.000Z
        _tag token |vip
        _tag token https://hale.health/fhir/CodeSystem/tag|downtime-backfill
        address-postalcode str ls1 5ab
        birthdate date 1990-01-17T00:00:00.000Z..1990-01-17T23:59:59.999Z
        email token |anne@example.org
        family str bronte
        gender token |female
        given str anne
        given str elise
        identifier token |LOCAL1
        identifier token https://fhir.nhs.uk/Id/nhs-number|9434765919
        name str anne
        name str bronte
        name str elise
        name str ms
        name str ms anne bronte
        phone token |01130000000
        phone token mobile|+4401132432799
        ",
    );
    check_extract(Patient, r#"{"resourceType":"Patient"}"#, "");
    // Wrong shapes are skipped, not indexed.
    check_extract(
        Patient,
        r#"{"resourceType":"Patient","birthDate":"17/01/1990","gender":5,"name":"Smith","identifier":[{"system":"s","value":""}]}"#,
        "",
    );
}

#[test]
fn extract_appointment() {
    check_extract(
        Appointment,
        r##"{"resourceType":"Appointment","status":"booked",
            "identifier":[{"system":"https://hospital.example/appt","value":"A-1"}],
            "serviceCategory":[{"coding":[{"system":"https://hale.health/fhir/CodeSystem/appointment-category","code":"outpatient"}]}],
            "serviceType":[{"coding":[{"system":"http://snomed.info/sct","code":"11429006"},{"system":"local","code":"CONS"}],"text":"Consultation"}],
            "appointmentType":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v2-0276","code":"ROUTINE"}]},
            "start":"2024-05-01T09:00:00Z","end":"2024-05-01T09:30:00Z",
            "slot":[{"reference":"Slot/s1"},{"reference":"Slot/s2/_history/3"}],
            "participant":[
                {"actor":{"reference":"Patient/p1"},"status":"accepted"},
                {"actor":{"reference":"Practitioner/d1"},"status":"accepted"},
                {"actor":{"reference":"Location/l1"},"status":"accepted"},
                {"actor":{"reference":"https://other.example/fhir/Patient/p9"},"status":"accepted"},
                {"actor":{"reference":"#contained"},"status":"accepted"},
                {"actor":{"reference":"urn:uuid:4b1f0b38-5c4f-4d2a-9c3e-1f2a3b4c5d6e"},"status":"accepted"},
                {"actor":{"display":"Someone"},"status":"accepted"}]}"##,
        "
        actor ref Location/l1
        actor ref Patient/p1
        actor ref Practitioner/d1
        appointment-type token http://terminology.hl7.org/CodeSystem/v2-0276|ROUTINE
        date date 2024-05-01T09:00:00.000Z..2024-05-01T09:30:00.999Z
        identifier token https://hospital.example/appt|A-1
        location ref Location/l1
        patient ref Patient/p1
        practitioner ref Practitioner/d1
        service-category token https://hale.health/fhir/CodeSystem/appointment-category|outpatient
        service-type token http://snomed.info/sct|11429006
        service-type token local|CONS
        slot ref Slot/s1
        slot ref Slot/s2
        status token |booked
        ",
    );
    // Proposed appointments have no times; start alone is its own range.
    check_extract(Appointment, r#"{"status":"proposed"}"#, "status token |proposed");
    check_extract(
        Appointment,
        r#"{"start":"2024-05-01T09:00:00Z"}"#,
        "date date 2024-05-01T09:00:00.000Z..2024-05-01T09:00:00.999Z",
    );
    check_extract(Appointment, r#"{"end":"2024-05-01T09:00:00Z"}"#, "");
}

#[test]
fn extract_dates_and_periods() {
    check_extract(
        Observation,
        r#"{"effectivePeriod":{"start":"2024-05-01T09:00:00Z"},"subject":{"reference":"Patient/p1"},"encounter":{"reference":"Encounter/e1"}}"#,
        "
        date date 2024-05-01T09:00:00.000Z..+inf
        encounter ref Encounter/e1
        patient ref Patient/p1
        subject ref Patient/p1
        ",
    );
    check_extract(
        Observation,
        r#"{"effectivePeriod":{"end":"2024-05"}}"#,
        "date date -inf..2024-05-31T23:59:59.999Z",
    );
    check_extract(
        Observation,
        r#"{"effectiveInstant":"2024-05-01T09:00:00.250+01:00"}"#,
        "date date 2024-05-01T08:00:00.250Z..2024-05-01T08:00:00.250Z",
    );
    check_extract(
        Observation,
        r#"{"effectiveDateTime":"2024"}"#,
        "date date 2024-01-01T00:00:00.000Z..2024-12-31T23:59:59.999Z",
    );
    check_extract(Observation, r#"{"effectivePeriod":{}}"#, "");
    check_extract(Observation, r#"{"effectivePeriod":{"start":"bad"}}"#, "");
    check_extract(
        Observation,
        r#"{"subject":{"reference":"Location/l1"},"code":{"coding":[{"system":"http://loinc.org","code":"85354-9"},{"system":"http://loinc.org"}]},
            "category":[{"coding":[{"code":"vital-signs"}]},{"text":"no codes"}],"status":"final"}"#,
        "
        category token |vital-signs
        code token http://loinc.org|85354-9
        status token |final
        subject ref Location/l1
        ",
    );
    check_extract(
        Schedule,
        r#"{"active":false,"actor":[{"reference":"Practitioner/d1"},{"reference":"Location/l1"}],
            "planningHorizon":{"start":"2024-05-01","end":"2024-05-31"}}"#,
        "
        active token |false
        actor ref Location/l1
        actor ref Practitioner/d1
        date date 2024-05-01T00:00:00.000Z..2024-05-31T23:59:59.999Z
        ",
    );
    check_extract(
        Encounter,
        r#"{"status":"finished","class":{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"AMB"},
            "subject":{"reference":"Patient/p1"},"period":{"start":"2024-05-01T09:00:00Z","end":"2024-05-01T10:00:00Z"},
            "location":[{"location":{"reference":"Location/l1"}}],"appointment":[{"reference":"Appointment/a1"}]}"#,
        "
        appointment ref Appointment/a1
        class token http://terminology.hl7.org/CodeSystem/v3-ActCode|AMB
        date date 2024-05-01T09:00:00.000Z..2024-05-01T10:00:00.999Z
        location ref Location/l1
        patient ref Patient/p1
        status token |finished
        subject ref Patient/p1
        ",
    );
}

#[test]
fn extract_other_types() {
    check_extract(
        AuditEvent,
        r#"{"recorded":"2024-05-01T09:30:00.000Z","action":"R","outcome":"0",
            "agent":[{"who":{"reference":"Practitioner/d1"},"requestor":true}],
            "entity":[{"what":{"reference":"Patient/p1"}},{"what":{"reference":"Appointment/a1/_history/2"}}]}"#,
        "
        action token |R
        agent ref Practitioner/d1
        date date 2024-05-01T09:30:00.000Z..2024-05-01T09:30:00.000Z
        entity ref Appointment/a1
        entity ref Patient/p1
        outcome token |0
        patient ref Patient/p1
        ",
    );
    check_extract(
        ImagingStudy,
        r#"{"status":"available","subject":{"reference":"Patient/p1"},"started":"2024-05-01T09:30:00Z",
            "series":[{"uid":"1.2","modality":{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"CT"}},
                      {"uid":"1.3","modality":{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"CT"}}]}"#,
        "
        modality token http://dicom.nema.org/resources/ontology/DCM|CT
        patient ref Patient/p1
        started date 2024-05-01T09:30:00.000Z..2024-05-01T09:30:00.999Z
        status token |available
        subject ref Patient/p1
        ",
    );
    check_extract(
        Location,
        r#"{"name":"Ward 5","alias":["Ash Ward"],"managingOrganization":{"reference":"Organization/o1"},
            "type":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-RoleCode","code":"HOSP"}]}]}"#,
        "
        name str ash ward
        name str ward 5
        organization ref Organization/o1
        type token http://terminology.hl7.org/CodeSystem/v3-RoleCode|HOSP
        ",
    );
    check_extract(
        DocumentReference,
        r#"{"status":"current","date":"2024-05-01T09:30:00Z","subject":{"reference":"Patient/p1"},
            "type":{"coding":[{"system":"http://loinc.org","code":"34108-1"}]}}"#,
        "
        date date 2024-05-01T09:30:00.000Z..2024-05-01T09:30:00.999Z
        patient ref Patient/p1
        status token |current
        subject ref Patient/p1
        type token http://loinc.org|34108-1
        ",
    );
}

#[test]
fn every_type_has_its_parameters() {
    let expect: &[(ResourceType, &str)] = &[
        (Patient, "identifier name family given birthdate phone email gender address-postalcode"),
        (Practitioner, "identifier name family given"),
        (PractitionerRole, "practitioner organization location service specialty"),
        (Organization, "identifier name"),
        (Location, "identifier name organization type"),
        (HealthcareService, "identifier name organization location service-type service-category"),
        (Schedule, "actor active date"),
        (Slot, "schedule start status service-type"),
        (
            Appointment,
            "identifier patient date status location practitioner actor service-type service-category appointment-type slot incident rebooked-from",
        ),
        (Encounter, "patient subject date status class location appointment"),
        (Observation, "patient subject code date category status encounter"),
        (DiagnosticReport, "patient subject code date status category result"),
        (ImagingStudy, "patient subject started status modality"),
        (DocumentReference, "patient subject date type status category"),
        (AllergyIntolerance, "patient code clinical-status"),
        (AuditEvent, "patient agent date action entity outcome"),
        (Basic, "identifier code created subject author"),
        (
            Communication,
            "identifier status category medium subject patient recipient about sent received",
        ),
    ];
    assert_eq!(expect.len(), ResourceType::ALL.len());
    for (rtype, names) in expect {
        let got: Vec<&str> = params_for(*rtype).iter().map(|d| d.name).collect();
        assert_eq!(got.join(" "), *names, "{rtype}");
        let (defs, srcs) = table(*rtype);
        assert_eq!(defs.len(), srcs.len());
        for (d, s) in defs.iter().zip(srcs.iter()) {
            assert!(!s.is_empty(), "{rtype}.{} has no value source", d.name);
            assert_eq!(
                d.kind == ParamKind::Reference,
                !d.targets.is_empty(),
                "{rtype}.{}: targets",
                d.name
            );
        }
        for common in ["_id", "_lastUpdated", "_tag"] {
            assert_eq!(find(*rtype, common).map(|d| d.name), Some(common));
        }
        assert!(find(*rtype, "nonsense").is_none());
    }
}

#[test]
fn string_normalisation() {
    let cases = [
        ("Brontë", "bronte"),
        ("  ÉLODIE   Müller ", "elodie muller"),
        ("Straße", "strasse"),
        ("Æthelflæd", "aethelflaed"),
        ("Łukasz Øster Œuvre", "lukasz oster oeuvre"),
        ("Siân Dafydd-Ŵyn", "sian dafydd-wyn"),
        ("e\u{301}", "e"), // decomposed é
        ("O'Brien", "o'brien"),
        ("", ""),
        ("\t\n", ""),
    ];
    for (input, expect) in cases {
        assert_eq!(normalise_string(input), expect, "{input:?}");
    }
    assert_eq!(normalise_phone("+44 (0)113 243-2799"), "+4401132432799");
    assert_eq!(normalise_phone(" 0113 243 2799 "), "01132432799");
    assert_eq!(normalise_phone("tel: 07700 900123"), "07700900123");
}

fn render_query(r: Result<SearchQuery, Issue>) -> String {
    let q = match r {
        Ok(q) => q,
        Err(e) => {
            return format!(
                "error {} {}: {}",
                e.code.as_str(),
                e.expression.as_deref().unwrap_or("-"),
                e.diagnostics
            );
        }
    };
    let mut out = Vec::new();
    for c in &q.clauses {
        let alts: Vec<String> = c
            .alternatives
            .iter()
            .map(|p| match p {
                Predicate::Token { system, code } => {
                    format!(
                        "{}|{}",
                        system.as_deref().unwrap_or("*"),
                        code.as_deref().unwrap_or("*")
                    )
                }
                Predicate::StrPrefix(s) => format!("prefix '{s}'"),
                Predicate::StrExact(s) => format!("exact '{s}'"),
                Predicate::StrContains(s) => format!("contains '{s}'"),
                Predicate::Date { op, start_ms, end_ms } => format!("{op:?} {}..{}", ms(*start_ms), ms(*end_ms)),
                Predicate::Reference { rtype, id } => format!("{}/{id}", rtype.as_deref().unwrap_or("?")),
            })
            .collect();
        let missing = c.missing.map(|m| format!(" missing={m}")).unwrap_or_default();
        out.push(
            format!("{} {}{missing}: {}", c.param, c.kind.as_str(), alts.join(" OR "))
                .trim_end()
                .to_string(),
        );
    }
    if q.count != COUNT_DEFAULT {
        out.push(format!("count {}", q.count));
    }
    if q.offset != 0 {
        out.push(format!("offset {}", q.offset));
    }
    for s in &q.sort {
        out.push(format!("sort {}{}", if s.descending { "-" } else { "" }, s.param));
    }
    for i in &q.includes {
        let target = i.target.map(|t| format!(":{t}")).unwrap_or_default();
        out.push(format!("include {}:{}{target}", i.source, i.param));
    }
    for n in &q.ignored {
        out.push(format!("ignored: {n}"));
    }
    out.join("\n")
}

/// `query` is `a=b&c=d` (already decoded; `&` and the first `=` split).
#[track_caller]
fn check_query_mode(rtype: ResourceType, query: &str, strict: bool, expect: &str) {
    let pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (p.to_string(), String::new()),
        })
        .collect();
    let got = render_query(parse(rtype, &pairs, strict));
    let want: Vec<&str> = expect.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    assert_eq!(got, want.join("\n"), "\nquery: {query} (strict: {strict})");
}

#[track_caller]
fn check_query(rtype: ResourceType, query: &str, expect: &str) {
    check_query_mode(rtype, query, false, expect);
}

#[track_caller]
fn check_strict(rtype: ResourceType, query: &str, expect: &str) {
    check_query_mode(rtype, query, true, expect);
}

#[test]
fn query_strings() {
    check_query(Patient, "", "");
    check_query(Patient, "name=Brontë", "name string: prefix 'bronte'");
    check_query(
        Patient,
        "family:exact=SMITH&given:contains=nn",
        "family string: exact 'smith'\ngiven string: contains 'nn'",
    );
    check_query(
        Patient,
        "name=smith,jones",
        "name string: prefix 'smith' OR prefix 'jones'",
    );
    check_query(Patient, r"name=smith\,jones", "name string: prefix 'smith,jones'");
    check_query(
        Patient,
        "name=smith&name=ann",
        "name string: prefix 'smith'\nname string: prefix 'ann'",
    );
    check_query(
        Patient,
        "address-postalcode=LS1",
        "address-postalcode string: prefix 'ls1'",
    );
    check_query(
        Patient,
        "name=",
        "ignored: parameter 'name' has no value and was ignored",
    );
    check_query(
        Patient,
        "name=,,",
        "ignored: parameter 'name' has no value and was ignored",
    );
}

#[test]
fn query_tokens() {
    check_query(
        Patient,
        "identifier=https://fhir.nhs.uk/Id/nhs-number|9434765919",
        "identifier token: https://fhir.nhs.uk/Id/nhs-number|9434765919",
    );
    check_query(Patient, "identifier=|LOCAL1", "identifier token: |LOCAL1");
    check_query(Patient, "identifier=urn:x|", "identifier token: urn:x|*");
    check_query(Patient, "gender=female,other", "gender token: *|female OR *|other");
    check_query(Patient, r"identifier=a\|b|c", "identifier token: a|b|c");
    check_query(
        Patient,
        "identifier=|",
        "error value identifier: '|' has neither a system nor a code",
    );
    check_query(
        Patient,
        "identifier=a|b|c",
        "error value identifier: 'a|b|c' is not a token: use system|code, |code, system| or code",
    );
    check_query(Patient, "phone=+44 113 243 2799", "phone token: *|+441132432799");
    check_query(Patient, "phone=mobile|0113-243-2799", "phone token: mobile|01132432799");
    check_query(Patient, "email=Anne@Example.org", "email token: *|anne@example.org");
    check_query(Schedule, "active=true", "active token: *|true");
    check_query(Patient, "_id=p1,p2", "_id token: *|p1 OR *|p2");
    check_query(Patient, "_id=a|b", "_id token: *|a|b");
    check_query(
        Patient,
        "_tag=https://hale.health/fhir/CodeSystem/tag|downtime-backfill",
        "_tag token: https://hale.health/fhir/CodeSystem/tag|downtime-backfill",
    );
    check_query(
        Appointment,
        "service-category=https://hale.health/fhir/CodeSystem/appointment-category|chemotherapy&status=booked,arrived",
        "service-category token: https://hale.health/fhir/CodeSystem/appointment-category|chemotherapy\n\
         status token: *|booked OR *|arrived",
    );
}

#[test]
fn query_dates() {
    check_query(
        Appointment,
        "date=ge2024-05-01&date=lt2024-06",
        "date date: Ge 2024-05-01T00:00:00.000Z..2024-05-01T23:59:59.999Z\n\
         date date: Lt 2024-06-01T00:00:00.000Z..2024-06-30T23:59:59.999Z",
    );
    check_query(
        Patient,
        "birthdate=1990",
        "birthdate date: Eq 1990-01-01T00:00:00.000Z..1990-12-31T23:59:59.999Z",
    );
    check_query(
        Patient,
        "birthdate=eq1990-01-17",
        "birthdate date: Eq 1990-01-17T00:00:00.000Z..1990-01-17T23:59:59.999Z",
    );
    check_query(
        Slot,
        "start=2024-05-01T10:00",
        "start date: Eq 2024-05-01T10:00:00.000Z..2024-05-01T10:00:59.999Z",
    );
    check_query(
        Slot,
        "start=gt2024-05-01T10:00:00+01:00,sa2024-05-02",
        "start date: Gt 2024-05-01T09:00:00.000Z..2024-05-01T09:00:00.999Z OR Sa 2024-05-02T00:00:00.000Z..2024-05-02T23:59:59.999Z",
    );
    for (prefix, op) in [("ne", "Ne"), ("le", "Le"), ("eb", "Eb")] {
        check_query(
            Patient,
            &format!("birthdate={prefix}2000"),
            &format!("birthdate date: {op} 2000-01-01T00:00:00.000Z..2000-12-31T23:59:59.999Z"),
        );
    }
    check_query(
        Patient,
        "_lastUpdated=gt2024-05-01T09:30:00.000Z",
        "_lastUpdated date: Gt 2024-05-01T09:30:00.000Z..2024-05-01T09:30:00.000Z",
    );
    check_query(
        Patient,
        "birthdate=ap2000",
        "error not-supported birthdate: the date prefix 'ap' (approximately) is not supported",
    );
    check_query(
        Patient,
        "birthdate=2023-02-29",
        "error value birthdate: '2023-02-29' is not a valid date: use [prefix]YYYY[-MM[-DD[Thh:mm[:ss[.sss]][Z|±hh:mm]]]]",
    );
    check_query(
        Patient,
        "birthdate=xx2000",
        "error value birthdate: 'xx2000' is not a date search value",
    );
    check_query(
        Patient,
        "birthdate=today",
        "error value birthdate: 'today' is not a date search value",
    );
    check_query(
        Patient,
        "birthdate=gt",
        "error value birthdate: 'gt' is not a valid date: use [prefix]YYYY[-MM[-DD[Thh:mm[:ss[.sss]][Z|±hh:mm]]]]",
    );
}

#[test]
fn query_references() {
    check_query(Appointment, "patient=Patient/p1", "patient reference: Patient/p1");
    check_query(Appointment, "patient=p1", "patient reference: ?/p1");
    check_query(Appointment, "patient:Patient=p1", "patient reference: Patient/p1");
    check_query(
        Appointment,
        "patient=https://hale.example/fhir/Patient/p1",
        "patient reference: Patient/p1",
    );
    check_query(
        Appointment,
        "patient=Patient/p1/_history/4",
        "patient reference: Patient/p1",
    );
    check_query(
        Appointment,
        "actor=Practitioner/d1,Location/l1",
        "actor reference: Practitioner/d1 OR Location/l1",
    );
    check_query(Observation, "subject:Location=l1", "subject reference: Location/l1");
    check_query(
        Appointment,
        "patient:Patient=Location/l1",
        "error value patient:Patient: 'Location/l1' is not a Patient reference, as the modifier :Patient requires",
    );
    check_query(
        Appointment,
        "patient:Location=l1",
        "error value patient:Location: 'patient' does not refer to Location",
    );
    check_query(
        Appointment,
        "patient=bad id",
        "error value patient: 'bad id' is not a reference: use Type/id, id, or a URL ending in Type/id",
    );
    check_query(
        Appointment,
        "patient=patient/p1",
        "error value patient: 'patient/p1' is not a reference: use Type/id, id, or a URL ending in Type/id",
    );
    check_query(Appointment, "slot=Slot/s1", "slot reference: Slot/s1");
}

#[test]
fn query_missing() {
    check_query(Appointment, "slot:missing=true", "slot reference missing=true:");
    check_query(
        Patient,
        "birthdate:missing=false&name:missing=true",
        "birthdate date missing=false:\nname string missing=true:",
    );
    check_query(
        Patient,
        "gender:missing=yes",
        "error value gender:missing: gender:missing must be 'true' or 'false', found 'yes'",
    );
}

#[test]
fn query_result_parameters() {
    check_query(Patient, "_count=10&_offset=20", "count 10\noffset 20");
    check_query(Patient, "_count=0", "count 0");
    check_query(
        Patient,
        "_count=5000&_offset=99999999999999999999999",
        "count 1000\noffset 100000",
    );
    check_query(
        Patient,
        "_count=ten",
        "error value _count: _count must be a non-negative whole number, found 'ten'",
    );
    check_query(
        Patient,
        "_count=-1",
        "error value _count: _count must be a non-negative whole number, found '-1'",
    );
    check_query(
        Patient,
        "_offset=",
        "error value _offset: _offset must be a non-negative whole number, found ''",
    );
    check_query(Patient, "_format=json&_pretty=true", "");
    check_query(Appointment, "_sort=-date,_id", "sort -date\nsort _id");
    check_query(
        Appointment,
        "_sort=_lastUpdated&_sort=-_lastUpdated",
        "sort _lastUpdated",
    );
    check_query(
        Appointment,
        "_sort=status",
        "ignored: sorting Appointment by 'status' is not supported (only date parameters, _lastUpdated and _id)",
    );
    check_strict(
        Appointment,
        "_sort=status",
        "error not-supported _sort: sorting Appointment by 'status' is not supported (only date parameters, _lastUpdated and _id)",
    );
    check_query(Patient, "_sort=birthdate", "sort birthdate");
}

#[test]
fn query_includes() {
    check_query(
        Appointment,
        "_include=Appointment:patient&_include=Appointment:slot&_include=Appointment:actor:Practitioner&_include=Appointment:patient",
        "include Appointment:patient\ninclude Appointment:slot\ninclude Appointment:actor:Practitioner",
    );
    check_query(Slot, "_include=Slot:schedule", "include Slot:schedule");
    check_query(
        Appointment,
        "_include=*",
        "error value _include: _include must be Source:parameter[:Target], found '*'",
    );
    check_query(
        Appointment,
        "_include=Appointment:*",
        "ignored: _include=Appointment:*: wildcard includes are not supported",
    );
    check_query(
        Appointment,
        "_include=Slot:schedule",
        "ignored: _include=Slot:schedule: only includes from the searched type Appointment are supported",
    );
    check_query(
        Appointment,
        "_include=Appointment:status",
        "ignored: _include=Appointment:status: 'status' is not a reference parameter of Appointment",
    );
    check_query(
        Appointment,
        "_include=Appointment:patient:Location",
        "ignored: _include=Appointment:patient:Location: 'patient' does not refer to 'Location'",
    );
    check_strict(
        Appointment,
        "_include=Appointment:status",
        "error not-supported _include: _include=Appointment:status: 'status' is not a reference parameter of Appointment",
    );
    check_query(
        Appointment,
        "_include:iterate=Appointment:patient",
        "ignored: parameter '_include:iterate' is not supported",
    );
}

#[test]
fn query_unsupported() {
    check_query(
        Patient,
        "foo=1&_summary=count&_elements=name&_total=accurate&_revinclude=Appointment:patient&name.family=x&name:text=x&gender:not=male",
        "
        ignored: unknown parameter 'foo' for Patient
        ignored: parameter '_summary' is not supported
        ignored: parameter '_elements' is not supported
        ignored: parameter '_total' is not supported
        ignored: parameter '_revinclude' is not supported
        ignored: chained parameter 'name.family' is not supported
        ignored: modifier ':text' is not supported on string parameter 'name'
        ignored: modifier ':not' is not supported on token parameter 'gender'
        ",
    );
    check_strict(
        Patient,
        "foo=1",
        "error not-supported foo: unknown parameter 'foo' for Patient",
    );
    check_strict(
        Patient,
        "_summary=count",
        "error not-supported _summary: parameter '_summary' is not supported",
    );
    check_strict(
        Patient,
        "name:text=x",
        "error not-supported name:text: modifier ':text' is not supported on string parameter 'name'",
    );
    check_strict(
        Patient,
        "birthdate:exact=2000",
        "error not-supported birthdate:exact: modifier ':exact' is not supported on date parameter 'birthdate'",
    );
    check_strict(Patient, "_format=json&name=x", "name string: prefix 'x'");
    // Strict mode does not turn supported parameters into errors.
    check_strict(
        Appointment,
        "patient=p1&date=ge2024&_count=5",
        "patient reference: ?/p1\ndate date: Ge 2024-01-01T00:00:00.000Z..2024-12-31T23:59:59.999Z\ncount 5",
    );
}

#[test]
fn query_limits() {
    let many: Vec<String> = (0..=ALTERNATIVES_MAX).map(|i| format!("n{i}")).collect();
    check_query(
        Patient,
        &format!("name={}", many.join(",")),
        "error too-costly name: too many values for 'name': at most 100 are allowed",
    );
    let ok: Vec<String> = (0..ALTERNATIVES_MAX).map(|i| format!("n{i}")).collect();
    let q = parse(Patient, &[("name".into(), ok.join(","))], false).unwrap();
    assert_eq!(q.clauses[0].alternatives.len(), ALTERNATIVES_MAX);

    let clauses: Vec<String> = (0..=CLAUSES_MAX).map(|i| format!("name=n{i}")).collect();
    check_query(
        Patient,
        &clauses.join("&"),
        "error too-costly name: too many search criteria: at most 32 are allowed",
    );
    let q = parse(
        Patient,
        &vec![("name".to_string(), "x".to_string()); CLAUSES_MAX],
        false,
    )
    .unwrap();
    assert_eq!(q.clauses.len(), CLAUSES_MAX);

    let pairs: Vec<(String, String)> = (0..50).map(|i| (format!("x{i}"), "1".to_string())).collect();
    let q = parse(Patient, &pairs, false).unwrap();
    assert_eq!(q.ignored.len(), 33);
    assert_eq!(q.ignored[32], "further ignored parameters are not listed");
}

#[test]
fn extract_outage_extensions_and_communication() {
    check_extract(
        Appointment,
        r#"{"status":"booked","extension":[
            {"url":"https://hale.health/fhir/StructureDefinition/outage-incident","valueReference":{"reference":"Basic/inc1"}},
            {"url":"https://hale.health/fhir/StructureDefinition/rebooked-from","valueReference":{"reference":"Appointment/a1"}},
            {"url":"https://hale.health/fhir/StructureDefinition/rebooked-from","valueString":"not a reference"},
            {"url":"https://example.org/other","valueReference":{"reference":"Basic/x"}}]}"#,
        "
        incident ref Basic/inc1
        rebooked-from ref Appointment/a1
        status token |booked
        ",
    );
    check_extract(
        Communication,
        r#"{"status":"preparation","subject":{"reference":"Patient/p1"},"recipient":[{"reference":"Patient/p1"}],
            "about":[{"reference":"Appointment/a2"},{"reference":"Basic/inc1"}],
            "category":[{"coding":[{"system":"https://hale.health/fhir/CodeSystem/notification-category","code":"appointment-rebooked"}]}],
            "medium":[{"coding":[{"system":"https://hale.health/fhir/CodeSystem/notification-channel","code":"sms"}]}],
            "identifier":[{"system":"https://hale.health/fhir/Id/notification","value":"c1"}],
            "sent":"2026-10-05T08:00:00Z"}"#,
        "
        about ref Appointment/a2
        about ref Basic/inc1
        category token https://hale.health/fhir/CodeSystem/notification-category|appointment-rebooked
        identifier token https://hale.health/fhir/Id/notification|c1
        medium token https://hale.health/fhir/CodeSystem/notification-channel|sms
        patient ref Patient/p1
        recipient ref Patient/p1
        sent date 2026-10-05T08:00:00.000Z..2026-10-05T08:00:00.999Z
        status token |preparation
        subject ref Patient/p1
        ",
    );
    check_extract(
        Basic,
        r#"{"code":{"coding":[{"system":"https://hale.health/fhir/CodeSystem/incident-type","code":"it-outage"}]},"created":"2026-10-01"}"#,
        "
        code token https://hale.health/fhir/CodeSystem/incident-type|it-outage
        created date 2026-10-01T00:00:00.000Z..2026-10-01T23:59:59.999Z
        ",
    );
}
