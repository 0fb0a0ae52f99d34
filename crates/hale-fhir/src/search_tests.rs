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
        IndexValue::Str { norm, exact } if norm == exact => format!("str {norm}"),
        IndexValue::Str { norm, exact } => format!("str {norm} ({exact})"),
        IndexValue::Date { start_ms, end_ms } => format!("date {}..{}", ms(*start_ms), ms(*end_ms)),
        IndexValue::Reference { rtype, id } => format!("ref {rtype}/{id}"),
        IndexValue::Uri(u) => format!("uri {u}"),
        IndexValue::Number { lo, hi } if lo == hi => format!("number {}", lo.0),
        IndexValue::Number { lo, hi } => format!("number {}..{}", lo.0, hi.0),
        IndexValue::Quantity { lo, hi, system, code } if lo == hi => format!("quantity {} {system}|{code}", lo.0),
        IndexValue::Quantity { lo, hi, system, code } => format!("quantity {}..{} {system}|{code}", lo.0, hi.0),
        IndexValue::Composite(a, b) => format!("composite {} $ {}", render_value(a), render_value(b)),
    }
}

#[track_caller]
fn check_extract(rtype: ResourceType, input: &str, expect: &str) {
    let v: Value = serde_json::from_str(input).unwrap_or_else(|e| panic!("bad test JSON {input}: {e}"));
    let entries = extract(rtype, &v);
    let got: Vec<String> = entries
        .iter()
        .map(|e| format!("{}{} {}", e.param, e.facet.suffix(), render_value(&e.value)))
        .collect();
    let want: Vec<&str> = expect.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if got != want {
        if let Ok(dir) = std::env::var("HALE_BLESS_DIR") {
            let n = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
            let _ = std::fs::write(
                format!("{dir}/{n}.json"),
                serde_json::json!({"input": input, "got": got}).to_string(),
            );
        }
    }
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
        _tag token |vip
        _tag token https://hale.health/fhir/CodeSystem/tag|downtime-backfill
        address str ls1 5ab (LS1 5AB)
        address str ls1 5ab (ls1  5ab)
        address-postalcode str ls1 5ab (LS1 5AB)
        address-postalcode str ls1 5ab (ls1  5ab)
        birthdate date 1990-01-17T00:00:00.000Z..1990-01-17T23:59:59.999Z
        deceased token |false
        email token |anne@example.org
        family str bronte (Brontë)
        gender token |female
        given str anne (Anne)
        given str elise (Élise)
        identifier token |LOCAL1
        identifier token https://fhir.nhs.uk/Id/nhs-number|9434765919
        name str anne (Anne)
        name str bronte (Brontë)
        name str elise (Élise)
        name str ms (Ms)
        name str ms anne bronte (Ms  Anne BRONTË)
        phone token |01130000000
        phone token mobile|+4401132432799
        phonetic str anne (Anne)
        phonetic str bronte (Brontë)
        phonetic str elise (Élise)
        phonetic str ms (Ms)
        phonetic str ms anne bronte (Ms  Anne BRONTË)
        telecom token |0113 999
        telecom token |01130000000
        telecom token |anne@example.org
        telecom token mobile|+4401132432799
        ",
    );
    // R4's `deceased` is `exists() and != false`: a patient with no deceased element is false.
    check_extract(Patient, r#"{"resourceType":"Patient"}"#, "deceased token |false");
    // Wrong shapes are skipped, not indexed.
    check_extract(
        Patient,
        r#"{"resourceType":"Patient","birthDate":"17/01/1990","gender":5,"name":"Smith","identifier":[{"system":"s","value":""}]}"#,
        "deceased token |false",
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
        actor uri https://other.example/fhir/Patient/p9
        actor uri urn:uuid:4b1f0b38-5c4f-4d2a-9c3e-1f2a3b4c5d6e
        appointment-type token http://terminology.hl7.org/CodeSystem/v2-0276|ROUTINE
        date date 2024-05-01T09:00:00.000Z..2024-05-01T09:00:00.999Z
        identifier token https://hospital.example/appt|A-1
        location ref Location/l1
        part-status token |accepted
        patient ref Patient/p1
        patient uri https://other.example/fhir/Patient/p9
        practitioner ref Practitioner/d1
        service-category token https://hale.health/fhir/CodeSystem/appointment-category|outpatient
        service-type token http://snomed.info/sct|11429006
        service-type token local|CONS
        service-type:text str consultation (Consultation)
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
        category:text str no codes
        code token http://loinc.org|85354-9
        combo-code token http://loinc.org|85354-9
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
        series token |1.2
        series token |1.3
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
        name str ash ward (Ash Ward)
        name str ward 5 (Ward 5)
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
fn every_type_has_its_official_parameters() {
    // Counts of the official R4 parameters per type (from search-parameters.json),
    // plus Hale's own on Appointment and Communication.
    let expect: &[(ResourceType, usize)] = &[
        (Patient, 23),
        (Observation, 38),
        (Appointment, 19),
        (Communication, 16),
        (MedicationRequest, 16),
        (Condition, 21),
        (Account, 8),
    ];
    for (rtype, n) in expect {
        assert_eq!(params_for(*rtype).len(), *n, "{rtype}");
    }
    let mut unsupported = Vec::new();
    for rtype in ResourceType::ALL {
        for common in ["_id", "_lastUpdated", "_tag", "_profile", "_security", "_source"] {
            assert_eq!(find(*rtype, common).map(|d| d.name), Some(common));
            assert!(supported(*rtype, common) || *rtype == AuditEvent, "{rtype}.{common}");
        }
        assert!(find(*rtype, "nonsense").is_none());
        for d in params_for(*rtype) {
            if d.kind == ParamKind::Reference {
                assert!(!d.url.is_empty());
            }
            if !supported(*rtype, d.name) {
                unsupported.push(format!("{rtype}.{}", d.name));
            }
        }
    }
    // What cannot be searched, and why, is known and small: Location's `near`
    // (special), the four three-part MolecularSequence composites, and AuditEvent
    // parameters other than those the audit table answers.
    unsupported.retain(|u| !u.starts_with("AuditEvent."));
    unsupported.sort();
    assert_eq!(
        unsupported,
        [
            "Location.near",
            "MolecularSequence.chromosome-variant-coordinate",
            "MolecularSequence.chromosome-window-coordinate",
            "MolecularSequence.referenceseqid-variant-coordinate",
            "MolecularSequence.referenceseqid-window-coordinate",
        ]
    );
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

fn render_predicate(p: &Predicate) -> String {
    match p {
        Predicate::Reference { rtype, id } => format!("{}/{id}", rtype.as_deref().unwrap_or("?")),
        Predicate::Uri(u) => format!("uri {u}"),
        Predicate::UriBelow(u) => format!("below {u}"),
        Predicate::UriAbove(u) => format!("above {}", u.join(" ")),
        Predicate::Number { op, value, lo, hi } => format!("{op:?} {} ({}..{})", value.0, lo.0, hi.0),
        Predicate::Quantity {
            op,
            value,
            lo,
            hi,
            system,
            code,
        } => format!(
            "{op:?} {} ({}..{}) {}|{}",
            value.0,
            lo.0,
            hi.0,
            system.as_deref().unwrap_or("*"),
            code.as_deref().unwrap_or("*")
        ),
        Predicate::Composite(a, b) => format!("[{}] $ [{}]", render_predicate(a), render_predicate(b)),
        Predicate::Chain { target, inner } => format!("{target}.({})", render_clause(inner)),
        Predicate::Has { source, param, inner } => format!("has {source}.{param} ({})", render_clause(inner)),
        Predicate::Token { system, code } => format!(
            "{}|{}",
            system.as_deref().unwrap_or("*"),
            code.as_deref().unwrap_or("*")
        ),
        Predicate::StrPrefix(s) => format!("prefix '{s}'"),
        Predicate::StrExact(s) => format!("exact '{s}'"),
        Predicate::StrContains(s) => format!("contains '{s}'"),
        Predicate::Date { op, start_ms, end_ms } => format!("{op:?} {}..{}", ms(*start_ms), ms(*end_ms)),
    }
}

fn render_clause(c: &Clause) -> String {
    let alts: Vec<String> = c.alternatives.iter().map(render_predicate).collect();
    format!("{} {}: {}", c.param, c.kind.as_str(), alts.join(" OR "))
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
                other => render_predicate(other),
            })
            .collect();
        let mut missing = c.missing.map(|m| format!(" missing={m}")).unwrap_or_default();
        if c.not {
            missing.push_str(" not");
        }
        if c.facet != Facet::Value {
            missing.push_str(&format!(" facet{}", c.facet.suffix()));
        }
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
    for i in &q.revincludes {
        out.push(format!("revinclude {}:{}", i.source, i.param));
    }
    if q.iterate {
        out.push("iterate".to_string());
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
        "family string: exact 'SMITH'\ngiven string: contains 'nn'",
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
        "patient reference: uri https://hale.example/fhir/Patient/p1 OR Patient/p1",
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
    check_query(Appointment, "_sort=status", "sort status");
    check_query(Patient, "_sort=family,-birthdate", "sort family\nsort -birthdate");
    // Sorting by something that is not a parameter is an error: ignoring it
    // would return an order the client did not ask for.
    check_query(
        Appointment,
        "_sort=colour",
        "error not-supported _sort: Appointment cannot be sorted by 'colour': it is not a searchable parameter of the type",
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
        "include Appointment:actor\ninclude Appointment:based-on\ninclude Appointment:location\ninclude Appointment:patient\ninclude Appointment:practitioner\ninclude Appointment:reason-reference\ninclude Appointment:slot\ninclude Appointment:supporting-info\ninclude Appointment:incident\ninclude Appointment:rebooked-from",
    );
    check_query(
        Appointment,
        "_include=Slot:schedule",
        "ignored: _include=Slot:schedule: only includes from the searched type Appointment are supported without :iterate",
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
        "include Appointment:patient\niterate",
    );
}

#[test]
fn query_unsupported() {
    check_query(
        Patient,
        "foo=1&_revinclude=Appointment:patient&name.family=x",
        "
        revinclude Appointment:patient
        ignored: unknown parameter 'foo' for Patient
        ignored: chained parameter 'name.family': 'name' is not a reference parameter of Patient
        ",
    );
    // An unsupported modifier is always an error, under lenient handling too:
    // ignoring it would widen the search (`gender:not=male` returning males).
    check_query(
        Patient,
        "name:text=x",
        "error not-supported name:text: modifier ':text' is not supported on string parameter 'name'",
    );
    check_query(
        Patient,
        "gender:below=m",
        "error not-supported gender:below: modifier ':below' is not supported on token parameter 'gender'",
    );
    check_query(
        Patient,
        "birthdate:exact=2000",
        "error not-supported birthdate:exact: modifier ':exact' is not supported on date parameter 'birthdate'",
    );
    check_query(
        Location,
        "near=1|2|3|km",
        "error not-supported near: search parameter 'near' is not supported on Location: special parameters (such as Location near) are not supported",
    );
    check_query(
        AuditEvent,
        "entity=Patient/1",
        "error not-supported entity: search parameter 'entity' is not supported on AuditEvent: AuditEvent are searched by _id, _lastUpdated, patient, agent, date, action, outcome, purpose only",
    );
    check_strict(
        Patient,
        "foo=1",
        "error not-supported foo: unknown parameter 'foo' for Patient",
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
fn query_modifiers_and_kinds() {
    check_query(Patient, "gender:not=male", "gender token not: *|male");
    check_query(
        Observation,
        "code:text=blood pressure",
        "code token facet:text: prefix 'blood pressure'",
    );
    check_query(
        Patient,
        "identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|446053",
        "identifier token facet:of-type: http://terminology.hl7.org/CodeSystem/v2-0203|MR|446053",
    );
    check_query(
        Patient,
        "identifier:of-type=MR|446053",
        "error value identifier:of-type: 'MR|446053' is not an :of-type value: use type-system|type-code|identifier-value",
    );
    check_query(
        Observation,
        "subject:identifier=https://fhir.nhs.uk/Id/nhs-number|9434765919",
        "subject token facet:identifier: https://fhir.nhs.uk/Id/nhs-number|9434765919",
    );
    check_query(
        ValueSet,
        "url:below=http://hl7.org/fhir/ValueSet",
        "url uri: below http://hl7.org/fhir/ValueSet",
    );
    check_query(
        ValueSet,
        "url:above=http://hl7.org/fhir/ValueSet/x",
        "url uri: above http://hl7.org/fhir/ValueSet/x http://hl7.org/fhir/ValueSet http://hl7.org/fhir http://hl7.org",
    );
    check_query(
        RiskAssessment,
        "probability=gt0.8",
        "probability number: Gt 0.8 (0.75..0.8500000000000001)",
    );
    check_query(
        RiskAssessment,
        "probability=100",
        "probability number: Eq 100 (99.5..100.5)",
    );
    check_query(
        RiskAssessment,
        "probability=abc",
        "error value probability: 'abc' is not a number: use [prefix]number, such as 100, ge4.5 or 1e3",
    );
    check_query(
        Observation,
        "value-quantity=le5.40|http://unitsofmeasure.org|mg",
        "value-quantity quantity: Le 5.4 (5.3950000000000005..5.405) http://unitsofmeasure.org|mg",
    );
    check_query(
        Observation,
        "value-quantity=5.4||mg",
        "value-quantity quantity: Eq 5.4 (5.3500000000000005..5.45) *|mg",
    );
    check_query(
        Observation,
        "code-value-quantity=http://loinc.org|8480-6$gt150",
        "code-value-quantity composite: [http://loinc.org|8480-6] $ [Gt 150 (149.5..150.5) *|*]",
    );
    check_query(
        Observation,
        "code-value-quantity=8480-6",
        "error value code-value-quantity: '8480-6' is not a value of the composite 'code-value-quantity': use first$second",
    );
    check_query(Patient, "deceased=true", "deceased token: *|true");
}

#[test]
fn query_chains_and_reverse_chains() {
    check_query(
        Observation,
        "subject:Patient.name=peter",
        "subject reference: Patient.(name string: prefix 'peter')",
    );
    check_query(
        Observation,
        "subject:Patient.organization.name=royal",
        "subject reference: Patient.(organization reference: Organization.(name string: prefix 'royal'))",
    );
    check_query(
        Encounter,
        "subject.birthdate=1970",
        "subject reference: Patient.(birthdate date: Eq 1970-01-01T00:00:00.000Z..1970-12-31T23:59:59.999Z)",
    );
    check_query(
        Patient,
        "_has:Observation:patient:code=1234-5",
        "_has special: has Observation.patient (code token: *|1234-5)",
    );
    check_query(
        Observation,
        "subject:Patient.organization.partof.name=x",
        "error too-costly subject:Patient.organization.partof.name: 'partof.name' chains too deep: at most 2 levels",
    );
    check_query(
        Patient,
        "_has:Observation:subject:colour=blue",
        "error not-supported _has:Observation:subject:colour: unknown parameter 'colour' for Observation",
    );
    check_query(
        Observation,
        "subject:Practitioner.name=x",
        "error value subject:Practitioner.name: 'subject' does not refer to Practitioner",
    );
    check_query(
        Patient,
        "_revinclude=Observation:subject&_include=Patient:*&_include:iterate=Observation:performer",
        "include Patient:general-practitioner\ninclude Patient:link\ninclude Patient:organization\ninclude Observation:performer\nrevinclude Observation:subject\niterate",
    );
}

#[test]
fn query_result_parameter_values() {
    let q = parse(
        Patient,
        &[
            ("_summary".into(), "count".into()),
            ("_total".into(), "accurate".into()),
            ("_elements".into(), "name,Patient.birthDate".into()),
        ],
        false,
    )
    .unwrap();
    assert_eq!(q.summary, Summary::Count);
    assert_eq!(q.total, Total::Accurate);
    assert_eq!(q.elements, ["name", "birthDate"]);
    check_query(
        Patient,
        "_summary=maybe",
        "error value _summary: _summary must be true, false, count, data or text, found 'maybe'",
    );
    check_query(
        Patient,
        "_total=lots",
        "error value _total: _total must be none, estimate or accurate, found 'lots'",
    );
    check_query(
        Patient,
        "_elements=name.family",
        "error value _elements: _elements lists element names, such as name,birthDate; 'name.family' is not one",
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
