//! Data-driven tests for validation: each case is a resource and the issues
//! expected, one `code expression` line per issue ("ok" when it is valid).

use super::*;
use serde_json::json;

fn render(result: Result<ResourceType, Vec<Issue>>) -> String {
    match result {
        Ok(_) => "ok".to_string(),
        Err(issues) => issues
            .iter()
            .map(|i| format!("{} {}", i.code.as_str(), i.expression.as_deref().unwrap_or("-")))
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

#[track_caller]
fn check(input: &str, expect: &str) {
    let v: Value = serde_json::from_str(input).unwrap_or_else(|e| panic!("bad test JSON {input}: {e}"));
    let got = render(validate_resource(&v, None));
    assert_eq!(got, expect.trim(), "\ninput: {input}");
}

/// Like `check`, but also the first issue's diagnostics.
#[track_caller]
fn check_msg(input: &str, expect: &str, diagnostics: &str) {
    check(input, expect);
    let v: Value = serde_json::from_str(input).unwrap();
    let issues = validate_resource(&v, None).unwrap_err();
    assert_eq!(issues[0].diagnostics, diagnostics, "\ninput: {input}");
}

const CAT: &str =
    r#"{"coding":[{"system":"https://hale.health/fhir/CodeSystem/appointment-category","code":"outpatient"}]}"#;

/// A valid Hale Appointment with `extra` members spliced in (no leading comma).
fn appointment(extra: &str) -> String {
    let sep = if extra.is_empty() { "" } else { "," };
    format!(
        r#"{{"resourceType":"Appointment","status":"booked","priority":4,"serviceCategory":[{CAT}],
            "participant":[{{"actor":{{"reference":"Patient/p1"}},"status":"accepted"}}]{sep}{extra}}}"#
    )
}

#[test]
fn minimal_resources_of_every_type_are_valid() {
    let cases = [
        r#"{"resourceType":"Patient"}"#,
        r#"{"resourceType":"Practitioner"}"#,
        r#"{"resourceType":"PractitionerRole"}"#,
        r#"{"resourceType":"Organization","name":"Leeds Teaching Hospitals"}"#,
        r#"{"resourceType":"Location","name":"Ward 5"}"#,
        r#"{"resourceType":"HealthcareService","name":"Cardiology"}"#,
        r#"{"resourceType":"Schedule","actor":[{"reference":"Practitioner/d1"}]}"#,
        r#"{"resourceType":"Slot","schedule":{"reference":"Schedule/s1"},"status":"free",
            "start":"2024-05-01T09:00:00Z","end":"2024-05-01T09:30:00Z"}"#,
        &appointment(""),
        r#"{"resourceType":"Encounter","status":"planned",
            "class":{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"AMB"}}"#,
        r#"{"resourceType":"Observation","status":"final","code":{"text":"Heart rate"}}"#,
        r#"{"resourceType":"DiagnosticReport","status":"final","code":{"text":"FBC"}}"#,
        r#"{"resourceType":"ImagingStudy","status":"available","subject":{"reference":"Patient/p1"}}"#,
        r#"{"resourceType":"DocumentReference","status":"current",
            "content":[{"attachment":{"contentType":"application/pdf","url":"Binary/b1"}}]}"#,
        r#"{"resourceType":"AllergyIntolerance","patient":{"reference":"Patient/p1"}}"#,
    ];
    for c in cases {
        check(c, "ok");
    }
    // AuditEvent is structurally fine but clients may not write it.
    let audit = json!({
        "resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110"},
        "recorded": "2024-05-01T09:30:00.000Z",
        "agent": [{"who": {"reference": "Practitioner/d1"}, "requestor": true}],
        "source": {"observer": {"reference": "Organization/o1"}}
    });
    assert!(check_structure("AuditEvent", &audit).is_empty());
    check(&audit.to_string(), "not-supported resourceType");
}

#[test]
fn typical_resources_are_valid() {
    check(
        r#"{"resourceType":"Patient","id":"p1","meta":{"versionId":"1","lastUpdated":"2024-05-01T09:30:00.000Z",
            "tag":[{"system":"https://hale.health/fhir/CodeSystem/tag","code":"downtime-backfill"}]},
            "text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">Ann</div>"},
            "identifier":[{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"9434765919"}],
            "active":true,
            "name":[{"use":"official","family":"Brontë","given":["Anne","Élise"],"prefix":["Ms"]}],
            "telecom":[{"system":"phone","value":"+44 113 243 2799","use":"mobile"},{"system":"email","value":"anne@example.org"}],
            "gender":"female","birthDate":"1990-01-17","deceasedBoolean":false,
            "address":[{"line":["1 Park Row"],"city":"Leeds","postalCode":"LS1 5AB","country":"GB"}],
            "maritalStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-MaritalStatus","code":"M"}]},
            "multipleBirthInteger":2,
            "contact":[{"name":{"family":"Brontë","given":["Emily"]},"telecom":[{"system":"phone","value":"0113 000 0000"}]}],
            "communication":[{"language":{"text":"English"},"preferred":true}],
            "generalPractitioner":[{"reference":"Practitioner/gp1","display":"Dr Bell"}],
            "managingOrganization":{"reference":"Organization/o1"},
            "extension":[{"url":"https://example.org/ext","valueDecimal":1.5}]}"#,
        "ok",
    );
    check(
        r#"{"resourceType":"Observation","status":"final",
            "category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs"}]}],
            "code":{"coding":[{"system":"http://loinc.org","code":"85354-9"}]},
            "subject":{"reference":"Patient/p1"},"effectiveDateTime":"2024-05-01T09:30:00+01:00",
            "component":[{"code":{"coding":[{"system":"http://loinc.org","code":"8480-6"}]},
                          "valueQuantity":{"value":107,"unit":"mmHg","system":"http://unitsofmeasure.org","code":"mm[Hg]"}}]}"#,
        "ok",
    );
    check(
        &appointment(
            r#""start":"2024-05-01T09:00:00Z","end":"2024-05-01T09:30:00Z","minutesDuration":30,
               "slot":[{"reference":"Slot/s1"}],
               "extension":[{"url":"https://hale.health/fhir/StructureDefinition/rtt-referral-date","valueDate":"2024-03-01"},
                            {"url":"https://hale.health/fhir/StructureDefinition/regimen-window",
                             "valuePeriod":{"start":"2024-05-01","end":"2024-06-01"}}]"#,
        ),
        "ok",
    );
}

#[test]
fn resource_type_checks() {
    check_msg("[]", "invalid -", "a resource must be a JSON object, found array");
    check(r#""Patient""#, "invalid -");
    check(r#"{"id":"x"}"#, "required resourceType");
    check(r#"{"resourceType":7}"#, "structure resourceType");
    check_msg(
        r#"{"resourceType":"Goat"}"#,
        "not-supported resourceType",
        "resource type 'Goat' is not supported by this server",
    );
    // Every R4 type is stored, Bundle included.
    check(r#"{"resourceType":"Bundle","type":"collection"}"#, "ok");
    check(
        r#"{"resourceType":"CarePlan","status":"active","intent":"plan","subject":{"reference":"Patient/p"}}"#,
        "ok",
    );
    // Required primitives (status, intent) come from the StructureDefinitions:
    // the JSON Schema lists only the complex `subject`.
    check(
        r#"{"resourceType":"CarePlan"}"#,
        "required CarePlan.status\nrequired CarePlan.intent\nrequired CarePlan.subject",
    );
    check(
        r#"{"resourceType":"MedicationRequest","intent":"order","subject":{"reference":"Patient/p"},
            "medicationCodeableConcept":{"text":"Paracetamol"}}"#,
        "required MedicationRequest.status",
    );
    check(
        r#"{"resourceType":"MedicationRequest","status":"active","intent":"order","subject":{"reference":"Patient/p"}}"#,
        "required MedicationRequest.medication",
    );
    check_msg(
        r#"{"resourceType":"Parameters"}"#,
        "not-supported resourceType",
        "resource type 'Parameters' is not supported by this server",
    );
    check(r#"{"resourceType":"AuditEvent"}"#, "not-supported resourceType");
    let v = json!({"resourceType": "Patient"});
    assert_eq!(
        validate_resource(&v, Some(ResourceType::Patient)),
        Ok(ResourceType::Patient)
    );
    let issues = validate_resource(&v, Some(ResourceType::Appointment)).unwrap_err();
    assert_eq!(render(Err(issues.clone())), "invalid resourceType");
    assert_eq!(
        issues[0].diagnostics,
        "resourceType 'Patient' does not match the expected type 'Appointment'"
    );
}

#[test]
fn unknown_elements() {
    check_msg(
        r#"{"resourceType":"Patient","foo":1}"#,
        "structure Patient.foo",
        "unknown element 'foo' in Patient",
    );
    check_msg(
        r#"{"resourceType":"Patient","name":[{"family":"Smith","surname":"x"}]}"#,
        "structure Patient.name[0].surname",
        "unknown element 'surname' in Patient.name",
    );
    // Element names are case-sensitive; choice types need their type suffix.
    check(
        r#"{"resourceType":"Patient","BirthDate":"2000-01-01"}"#,
        "structure Patient.BirthDate",
    );
    check(
        r#"{"resourceType":"Patient","deceased":true}"#,
        "structure Patient.deceased",
    );
    check(
        r#"{"resourceType":"Patient","deceasedString":"yes"}"#,
        "structure Patient.deceasedString",
    );
    // resourceType is only allowed on resources.
    check(
        r#"{"resourceType":"Patient","name":[{"resourceType":"HumanName","family":"X"}]}"#,
        "structure Patient.name[0].resourceType",
    );
}

#[test]
fn wrong_json_types() {
    check_msg(
        r#"{"resourceType":"Patient","gender":1}"#,
        "structure Patient.gender",
        "expected a string (code), found number",
    );
    check_msg(
        r#"{"resourceType":"Patient","birthDate":19900117}"#,
        "structure Patient.birthDate",
        "expected a string (date), found number",
    );
    check_msg(
        r#"{"resourceType":"Patient","active":"true"}"#,
        "structure Patient.active",
        "expected a boolean (boolean), found string",
    );
    check(
        r#"{"resourceType":"Patient","multipleBirthInteger":"2"}"#,
        "structure Patient.multipleBirthInteger",
    );
    check_msg(
        r#"{"resourceType":"Patient","maritalStatus":"M"}"#,
        "structure Patient.maritalStatus",
        "expected an object (CodeableConcept), found string",
    );
    check_msg(
        r#"{"resourceType":"Patient","contact":["x"]}"#,
        "structure Patient.contact[0]",
        "expected an object, found string",
    );
    check(
        r#"{"resourceType":"Patient","text":{"status":"generated","div":5}}"#,
        "structure Patient.text.div",
    );
}

#[test]
fn cardinality() {
    check_msg(
        r#"{"resourceType":"Patient","name":{"family":"Smith"}}"#,
        "structure Patient.name",
        "expected an array for Patient.name (0..*), found object",
    );
    check_msg(
        r#"{"resourceType":"Patient","gender":["male"]}"#,
        "structure Patient.gender",
        "expected a single value for Patient.gender (0..1), found an array",
    );
    check(
        r#"{"resourceType":"Patient","name":[{"given":"Ann"}]}"#,
        "structure Patient.name[0].given",
    );
    check(
        &appointment(r#""slot":{"reference":"Slot/s1"}"#),
        "structure Appointment.slot",
    );
}

#[test]
fn required_elements() {
    // Appointment.status is 1..1 in R4, but the JSON schema does not say so.
    check_msg(
        r#"{"resourceType":"Appointment","priority":4,"serviceCategory":[CAT],
            "participant":[{"actor":{"reference":"Patient/p1"},"status":"accepted"}]}"#
            .replace("CAT", CAT)
            .as_str(),
        "required Appointment.status",
        "Appointment.status is required",
    );
    // A primitive extension satisfies the requirement.
    check(
        r#"{"resourceType":"Appointment","_status":{"extension":[{"url":"http://hl7.org/fhir/StructureDefinition/data-absent-reason","valueCode":"unknown"}]},
            "priority":4,"serviceCategory":[CAT],"participant":[{"actor":{"reference":"Patient/p1"},"status":"accepted"}]}"#
            .replace("CAT", CAT)
            .as_str(),
        "ok",
    );
    check(
        &appointment(r#""participant":[{"actor":{"reference":"Patient/p1"}},{"actor":{"reference":"Location/l1"},"status":"accepted"}]"#)
            .replacen(r#","participant":[{"actor":{"reference":"Patient/p1"}},"status":"accepted"}]"#, "", 1),
        "required Appointment.participant[0].status",
    );
    check_msg(
        r#"{"resourceType":"Appointment","status":"booked","priority":4,"serviceCategory":[CAT],"participant":[]}"#
            .replace("CAT", CAT)
            .as_str(),
        "required Appointment.participant",
        "Appointment.participant requires at least one element (1..*)",
    );
    check(
        r#"{"resourceType":"Appointment","status":"booked","priority":4,"serviceCategory":[CAT]}"#
            .replace("CAT", CAT)
            .as_str(),
        "required Appointment.participant",
    );
    check(
        r#"{"resourceType":"Slot","schedule":{"reference":"Schedule/s1"}}"#,
        "required Slot.status\nrequired Slot.start\nrequired Slot.end",
    );
    check(
        r#"{"resourceType":"Slot","start":"2024-05-01T09:00:00Z","end":"2024-05-01T09:30:00Z","status":"free"}"#,
        "required Slot.schedule",
    );
    check(r#"{"resourceType":"Schedule"}"#, "required Schedule.actor");
    check(
        r#"{"resourceType":"Observation"}"#,
        "required Observation.status\nrequired Observation.code",
    );
    check(
        r#"{"resourceType":"Observation","status":"final","code":{"text":"BP"},"component":[{"valueString":"x"}]}"#,
        "required Observation.component[0].code",
    );
    check(
        r#"{"resourceType":"DiagnosticReport"}"#,
        "required DiagnosticReport.status\nrequired DiagnosticReport.code",
    );
    check(
        r#"{"resourceType":"ImagingStudy"}"#,
        "required ImagingStudy.status\nrequired ImagingStudy.subject",
    );
    check(
        r#"{"resourceType":"ImagingStudy","status":"available","subject":{"reference":"Patient/p1"},
            "series":[{"instance":[{"number":1}]}]}"#,
        "required ImagingStudy.series[0].instance[0].uid\nrequired ImagingStudy.series[0].instance[0].sopClass\n\
         required ImagingStudy.series[0].uid\nrequired ImagingStudy.series[0].modality",
    );
    check(
        r#"{"resourceType":"DocumentReference"}"#,
        "required DocumentReference.status\nrequired DocumentReference.content",
    );
    check(
        r#"{"resourceType":"DocumentReference","status":"current","content":[{"format":{"code":"urn:ihe:iti:xds:2017:mimeTypeSufficient"}}]}"#,
        "required DocumentReference.content[0].attachment",
    );
    check(
        r#"{"resourceType":"Encounter"}"#,
        "required Encounter.status\nrequired Encounter.class",
    );
    check(
        r#"{"resourceType":"AllergyIntolerance"}"#,
        "required AllergyIntolerance.patient",
    );
    check(
        r#"{"resourceType":"Patient","extension":[{"valueString":"x"}]}"#,
        "required Patient.extension[0].url",
    );
    check(
        r#"{"resourceType":"Patient","text":{"div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"}}"#,
        "required Patient.text.status",
    );
    check(
        r#"{"resourceType":"Patient","text":{"status":"generated"}}"#,
        "required Patient.text.div",
    );
    check(
        r#"{"resourceType":"Patient","link":[{"other":{"reference":"Patient/p2"}}]}"#,
        "required Patient.link[0].type",
    );
    check(
        r#"{"resourceType":"Patient","link":[{"type":"seealso"}]}"#,
        "required Patient.link[0].other",
    );
}

#[test]
fn value_checks() {
    check_msg(
        &appointment("").replace(r#""status":"booked""#, r#""status":"bookd""#),
        "value Appointment.status",
        "value 'bookd' is not in the required value set for Appointment.status: \
         proposed | pending | booked | arrived | fulfilled | cancelled | noshow | entered-in-error | checked-in | waitlist",
    );
    check(
        &appointment("").replace(r#""status":"accepted""#, r#""status":"maybe""#),
        "value Appointment.participant[0].status",
    );
    check(r#"{"resourceType":"Patient","gender":"M"}"#, "value Patient.gender");
    check_msg(
        r#"{"resourceType":"Patient","birthDate":"17/01/1990"}"#,
        "value Patient.birthDate",
        "value '17/01/1990' is not a valid date",
    );
    check_msg(
        r#"{"resourceType":"Patient","birthDate":"2023-02-29"}"#,
        "value Patient.birthDate",
        "value '2023-02-29' is not a valid date: no such calendar date",
    );
    // dateTime with a time needs seconds and a zone.
    check(
        r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"effectiveDateTime":"2024-05-01T10:00"}"#,
        "value Observation.effectiveDateTime",
    );
    check(
        r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"effectiveDateTime":"2024-05-01T10:00:00"}"#,
        "value Observation.effectiveDateTime",
    );
    check(
        r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"effectiveDateTime":"2024-05"}"#,
        "ok",
    );
    check(
        r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"issued":"2024-05-01"}"#,
        "value Observation.issued",
    );
    check(r#"{"resourceType":"Patient","id":"has space"}"#, "value Patient.id");
    check(r#"{"resourceType":"Patient","id":"a-valid.id-123"}"#, "ok");
    check(
        r#"{"resourceType":"Patient","managingOrganization":{"reference":"Organization/o1","type":"has space"}}"#,
        "value Patient.managingOrganization.type",
    );
    // R4 strings allow any character from U+0020 up, a non-breaking space included.
    check(
        r#"{"resourceType":"Patient","gender":"female","name":[{"family":"a\u00a0b"}]}"#,
        "ok",
    );
    check(
        r#"{"resourceType":"Patient","maritalStatus":{"coding":[{"code":" M"}]}}"#,
        "value Patient.maritalStatus.coding[0].code",
    );
    // Numbers: the pattern applies to the number's text.
    check(
        r#"{"resourceType":"Patient","multipleBirthInteger":1.5}"#,
        "value Patient.multipleBirthInteger",
    );
    check(r#"{"resourceType":"Patient","multipleBirthInteger":-3}"#, "ok");
    check(r#"{"resourceType":"Patient","multipleBirthInteger":2147483647}"#, "ok");
    check_msg(
        r#"{"resourceType":"Patient","multipleBirthInteger":2147483648}"#,
        "value Patient.multipleBirthInteger",
        "value '2147483648' is out of range for integer (32-bit)",
    );
    check(
        &appointment("").replace(r#""priority":4"#, r#""priority":99999999999"#),
        "value Appointment.priority\nvalue Appointment.priority",
    );
    check(
        &appointment(r#""minutesDuration":0"#),
        "value Appointment.minutesDuration",
    );
    check(
        &appointment("").replace(r#""priority":4"#, r#""priority":-1"#),
        "value Appointment.priority",
    );
    // `^true|false$` style patterns are whole-string alternatives.
    check(
        r#"{"resourceType":"Patient","extension":[{"url":"http://x","valueBoolean":"false"}]}"#,
        "structure Patient.extension[0].valueBoolean",
    );
    check(
        r#"{"resourceType":"Patient","extension":[{"url":"http://x","valueUnsignedInt":7}]}"#,
        "ok",
    );
    check(
        r#"{"resourceType":"Patient","extension":[{"url":"http://x","valueUnsignedInt":-7}]}"#,
        "value Patient.extension[0].valueUnsignedInt",
    );
    check(
        r#"{"resourceType":"Patient","extension":[{"url":"http://x","valueBase64Binary":"aGVsbG8="}]}"#,
        "ok",
    );
    check(
        r#"{"resourceType":"Patient","extension":[{"url":"http://x","valueBase64Binary":"abc"}]}"#,
        "value Patient.extension[0].valueBase64Binary",
    );
    check(
        r#"{"resourceType":"Patient","extension":[{"url":"http://x","valueInstant":"2024-02-30T00:00:00Z"}]}"#,
        "value Patient.extension[0].valueInstant",
    );
    check(
        r#"{"resourceType":"Patient","extension":[{"url":"has space","valueString":"x"}]}"#,
        "value Patient.extension[0].url",
    );
}

#[test]
fn nhs_numbers() {
    let patient = |value: &str| {
        format!(
            r#"{{"resourceType":"Patient","identifier":[{{"system":"https://example.org/mrn","value":"X1"}},
                   {{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"{value}"}}]}}"#
        )
    };
    check(&patient("9434765919"), "ok");
    check(&patient("943 476 5919"), "ok");
    check_msg(
        &patient("9434765918"),
        "value Patient.identifier[1].value",
        "'9434765918' is not a valid NHS number (ten digits with a modulus 11 check digit)",
    );
    check(&patient("12345"), "value Patient.identifier[1].value");
    check(&patient(""), "value Patient.identifier[1].value");
    check(
        r#"{"resourceType":"Patient","identifier":[{"system":"https://fhir.nhs.uk/Id/nhs-number"}]}"#,
        "required Patient.identifier[0].value",
    );
    // Other systems are not checked.
    check(
        r#"{"resourceType":"Patient","identifier":[{"system":"https://example.org/mrn","value":"9434765918"}]}"#,
        "ok",
    );
    // Anywhere in the resource: a contact's reference identifier, a contained resource.
    check(
        r#"{"resourceType":"Patient","generalPractitioner":[{"identifier":{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"1111111112"}}]}"#,
        "value Patient.generalPractitioner[0].identifier.value",
    );
    check(
        &appointment(
            r#""contained":[{"resourceType":"Patient","id":"p9","identifier":[{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"9434765918"}]}]"#,
        ),
        "value Appointment.contained[0].identifier[0].value",
    );
}

#[test]
fn empty_and_null() {
    check_msg(
        r#"{"resourceType":"Patient","gender":""}"#,
        "value Patient.gender",
        "empty strings are not allowed; omit the element instead",
    );
    check(
        r#"{"resourceType":"Patient","name":[{"family":""}]}"#,
        "value Patient.name[0].family",
    );
    check_msg(
        r#"{"resourceType":"Patient","gender":null}"#,
        "structure Patient.gender",
        "null is not allowed; omit the element instead",
    );
    check(r#"{"resourceType":"Patient","name":null}"#, "structure Patient.name");
    check(
        r#"{"resourceType":"Patient","name":[null]}"#,
        "structure Patient.name[0]",
    );
    check_msg(
        r#"{"resourceType":"Patient","name":[]}"#,
        "structure Patient.name",
        "empty arrays are not allowed; omit the element instead",
    );
    check_msg(
        r#"{"resourceType":"Patient","maritalStatus":{}}"#,
        "structure Patient.maritalStatus",
        "empty objects are not allowed; omit the element instead",
    );
    check(r#"{"resourceType":"Patient","name":[{}]}"#, "structure Patient.name[0]");
    // Primitive arrays with extensions use null as a placeholder in one of the two arrays.
    check(
        r#"{"resourceType":"Patient","name":[{"given":["Ann",null],"_given":[null,{"extension":[{"url":"http://x","valueString":"y"}]}]}]}"#,
        "ok",
    );
    check(
        r#"{"resourceType":"Patient","name":[{"given":["Ann",null],"_given":[null,null]}]}"#,
        "structure Patient.name[0].given[1]\nstructure Patient.name[0]._given[1]",
    );
    check(r#"{"resourceType":"Patient","_gender":{"id":"g1"}}"#, "ok");
    check(
        r#"{"resourceType":"Patient","_gender":{}}"#,
        "structure Patient._gender",
    );
}

#[test]
fn nested_paths() {
    check(
        &appointment("").replace(
            r#""participant":[{"actor":{"reference":"Patient/p1"},"status":"accepted"}]"#,
            r#""participant":[{"actor":{"reference":"Patient/p1"},"status":"accepted"},
                              {"actor":{"reference":"Location/l1"},"status":"accept","period":{"start":"yesterday"}}]"#,
        ),
        "value Appointment.participant[1].status\nvalue Appointment.participant[1].period.start",
    );
    check(
        r#"{"resourceType":"Patient","contact":[{"name":{"given":["A",5]}},{"telecom":[{"system":"fax","value":"1","rank":0}]}]}"#,
        "structure Patient.contact[0].name.given[1]\nvalue Patient.contact[1].telecom[0].rank",
    );
    check(
        r#"{"resourceType":"Patient","extension":[{"url":"http://x","extension":[{"url":"http://y","valueCoding":{"system":"s s"}}]}]}"#,
        "value Patient.extension[0].extension[0].valueCoding.system",
    );
}

#[test]
fn contained_resources() {
    check(
        r##"{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"#p"},
            "contained":[{"resourceType":"Patient","id":"p","name":[{"family":"Smith"}]}]}"##,
        "ok",
    );
    check(
        r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},
            "contained":[{"resourceType":"Patient","id":"p","gender":"M"},{"resourceType":"Observation","id":"o"}]}"#,
        "value Observation.contained[0].gender\nrequired Observation.contained[1].status\nrequired Observation.contained[1].code",
    );
    check(
        r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"contained":[{"id":"p"}]}"#,
        "required Observation.contained[0].resourceType",
    );
    check(
        r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"contained":[{"resourceType":"Medication","id":"m"}]}"#,
        "ok",
    );
    check(
        r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"contained":[{"resourceType":"Goat","id":"m"}]}"#,
        "not-supported Observation.contained[0].resourceType",
    );
    check(
        r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"contained":[{"resourceType":"Patient","id":"p",
            "contained":[{"resourceType":"Patient","id":"q"}]}]}"#,
        "invariant Observation.contained[0].contained",
    );
    check(
        r#"{"resourceType":"Patient","contained":{"resourceType":"Patient"}}"#,
        "structure Patient.contained",
    );
}

#[test]
fn appointment_profile() {
    check(&appointment(""), "ok");
    // Another system's appointment: no Hale category, its own codes, priority 5.
    check(
        r#"{"resourceType":"Appointment","status":"booked","priority":5,
            "serviceCategory":[{"coding":[{"system":"http://example.org/service-category","code":"gp"}]}],
            "participant":[{"actor":{"reference":"Patient/p1"},"status":"accepted"}]}"#,
        "ok",
    );
    check(
        &appointment("").replace("outpatient", "walk-in"),
        "value Appointment.serviceCategory[0].coding[0].code",
    );
    check(
        &appointment("").replace(
            r#""serviceCategory":[{"#,
            r#""serviceCategory":[{"coding":[{"system":"https://hale.health/fhir/CodeSystem/appointment-category","code":"day-case"}]},{"#,
        ),
        "value Appointment.serviceCategory",
    );
    // Other codings alongside are fine.
    check(
        &appointment("").replace(
            r#""serviceCategory":[{"#,
            r#""serviceCategory":[{"coding":[{"system":"http://snomed.info/sct","code":"394802001"}]},{"#,
        ),
        "ok",
    );
    // Priority is optional and 0..=9, as R4 allows.
    check(&appointment("").replace(r#""priority":4,"#, ""), "ok");
    check(&appointment("").replace(r#""priority":4"#, r#""priority":9"#), "ok");
    check(&appointment("").replace(r#""priority":4"#, r#""priority":0"#), "ok");
    check_msg(
        &appointment("").replace(r#""priority":4"#, r#""priority":10"#),
        "value Appointment.priority",
        "priority 10 is outside 0..=9 (0 undefined, 1 highest, larger numbers lower)",
    );
    check(&appointment("").replace(r#""priority":4"#, r#""priority":1"#), "ok");
    check(
        &appointment("").replace(r#""priority":4"#, r#""priority":"1""#),
        "structure Appointment.priority",
    );
    check(
        &appointment("").replace("Patient/p1", "Practitioner/d1"),
        "required Appointment.participant",
    );
    check(
        &appointment("").replace("Patient/p1", "https://other.example/fhir/Patient/p1"),
        "required Appointment.participant",
    );
    check(
        &appointment("").replace("Patient/p1", "Patient/"),
        "required Appointment.participant",
    );
}

#[test]
fn limits() {
    // Issues are capped, with a final warning.
    let many: Vec<String> = (0..150).map(|i| format!(r#""x{i}":1"#)).collect();
    let v: Value = serde_json::from_str(&format!(r#"{{"resourceType":"Patient",{}}}"#, many.join(","))).unwrap();
    let issues = validate_resource(&v, None).unwrap_err();
    assert_eq!(issues.len(), ISSUES_MAX + 1);
    assert_eq!(issues[ISSUES_MAX].code, IssueCode::TooCostly);
    // Deep nesting is cut off, not followed.
    let mut ext = json!({"url": "http://x", "valueString": "leaf"});
    for _ in 0..100 {
        ext = json!({"url": "http://x", "extension": [ext]});
    }
    let v = json!({"resourceType": "Patient", "extension": [ext]});
    let issues = validate_resource(&v, None).unwrap_err();
    assert_eq!(issues.len(), 1);
    assert_eq!(issues[0].code, IssueCode::TooCostly);
}

#[track_caller]
fn check_bundle(input: &str, expect: &str) {
    let v: Value = serde_json::from_str(input).unwrap_or_else(|e| panic!("bad test JSON {input}: {e}"));
    let got = render(validate_bundle_shell(&v).map(|()| ResourceType::Patient));
    assert_eq!(got, expect.trim(), "\ninput: {input}");
}

#[test]
fn bundle_shell() {
    check_bundle(
        r#"{"resourceType":"Bundle","type":"transaction","entry":[
            {"fullUrl":"urn:uuid:4b1f0b38-5c4f-4d2a-9c3e-1f2a3b4c5d6e","resource":{"resourceType":"Patient","gender":"NOT CHECKED"},
             "request":{"method":"POST","url":"Patient"}},
            {"resource":{"resourceType":"Goat"},"request":{"method":"PUT","url":"Goat/1"}}]}"#,
        "ok",
    );
    check_bundle(r#"{"resourceType":"Bundle"}"#, "required Bundle.type");
    check_bundle(r#"{"resourceType":"Bundle","type":"batch-ish"}"#, "value Bundle.type");
    check_bundle(r#"{"type":"batch"}"#, "required resourceType");
    check_bundle(r#"{"resourceType":"Patient"}"#, "invalid resourceType");
    check_bundle(r#"[]"#, "invalid -");
    check_bundle(
        r#"{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"FETCH"}},{"resource":[]},{"resource":{"id":"x"}},{"fullUrl":"a b"}]}"#,
        "value Bundle.entry[0].request.method\nrequired Bundle.entry[0].request.url\n\
         structure Bundle.entry[1].resource\nrequired Bundle.entry[2].resource.resourceType\nvalue Bundle.entry[3].fullUrl",
    );
    check_bundle(
        r#"{"resourceType":"Bundle","type":"batch","entry":{}}"#,
        "structure Bundle.entry",
    );
    check_bundle(
        r#"{"resourceType":"Bundle","type":"batch","foo":1}"#,
        "structure Bundle.foo",
    );
}

#[test]
fn operation_outcomes_hale_emits_are_valid() {
    use crate::outcome::operation_outcome;
    let oo = operation_outcome(&[
        Issue::error(IssueCode::Value, "bad").at("Patient.gender"),
        Issue::warning(IssueCode::TooCostly, "slow"),
    ]);
    assert_eq!(check_structure("OperationOutcome", &oo), vec![]);
    assert_eq!(check_structure("OperationOutcome", &operation_outcome(&[])), vec![]);
}

/// Timing of a typical Patient, for the record (run in release:
/// `cargo test -p hale-fhir --release -- --ignored --nocapture validation_timing`).
#[test]
#[ignore]
fn validation_timing() {
    let patient = json!({
        "resourceType": "Patient", "id": "3f2b8c1e-0d4a-4c55-9a43-0b1f2e3d4c5b",
        "meta": {"versionId": "3", "lastUpdated": "2024-05-01T09:30:00.000Z"},
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"},
                       {"system": "https://hospital.example/mrn", "value": "RX1-000123"}],
        "active": true,
        "name": [{"use": "official", "family": "Brontë", "given": ["Anne", "Élise"], "prefix": ["Ms"]}],
        "telecom": [{"system": "phone", "value": "+44 113 243 2799", "use": "mobile"},
                    {"system": "email", "value": "anne@example.org"}],
        "gender": "female", "birthDate": "1990-01-17",
        "address": [{"use": "home", "line": ["1 Park Row"], "city": "Leeds", "postalCode": "LS1 5AB", "country": "GB"}],
        "generalPractitioner": [{"reference": "Practitioner/gp1"}],
        "managingOrganization": {"reference": "Organization/o1"}
    });
    assert!(validate_resource(&patient, None).is_ok());
    let n = 100_000;
    let t = std::time::Instant::now();
    for _ in 0..n {
        std::hint::black_box(validate_resource(std::hint::black_box(&patient), None)).ok();
    }
    let per = t.elapsed() / n;
    println!("validate_resource(typical Patient): {per:?} per call");
}

/// An incident (Basic, `it-outage`) with these extensions.
fn incident(exts: &str) -> String {
    format!(
        r#"{{"resourceType":"Basic","code":{{"coding":[{{"system":"https://hale.health/fhir/CodeSystem/incident-type","code":"it-outage"}}]}},"extension":[{exts}]}}"#
    )
}

const PERIOD: &str = "https://hale.health/fhir/StructureDefinition/incident-period";
const STATUS: &str = "https://hale.health/fhir/StructureDefinition/incident-status";
const SITE: &str = "https://hale.health/fhir/StructureDefinition/incident-site";

#[test]
fn incident_profile() {
    let period = |p: &str| format!(r#"{{"url":"{PERIOD}","valuePeriod":{p}}}"#);
    let status = |s: &str| format!(r#"{{"url":"{STATUS}","valueCode":"{s}"}}"#);
    let open = period(r#"{"start":"2026-10-01T07:00:00Z"}"#);
    let closed = period(r#"{"start":"2026-10-01T07:00:00Z","end":"2026-10-02T18:00:00Z"}"#);
    check(&incident(&format!("{open},{}", status("open"))), "ok");
    check(&incident(&format!("{closed},{}", status("closed"))), "ok");
    check(
        &incident(&format!(
            r#"{closed},{},{{"url":"{SITE}","valueCode":"QEH"}}"#,
            status("closed")
        )),
        "ok",
    );
    check(&incident(&status("open")), "required Basic.extension");
    check(&incident(&open), "required Basic.extension");
    check(
        &incident(&format!("{open},{}", status("closed"))),
        "required Basic.extension[0].valuePeriod.end",
    );
    check(
        &incident(&format!("{open},{}", status("ended"))),
        "value Basic.extension[1].valueCode",
    );
    check(
        &incident(&format!(
            "{},{}",
            period(r#"{"start":"2026-10-02T07:00:00Z","end":"2026-10-01T18:00:00Z"}"#),
            status("closed")
        )),
        "invariant Basic.extension[0].valuePeriod.start\nvalue Basic.extension[0].valuePeriod.end",
    );
    check(
        &incident(&format!(
            "{},{}",
            period(r#"{"end":"2026-10-01T18:00:00Z"}"#),
            status("closed")
        )),
        "required Basic.extension[0].valuePeriod.start",
    );
    check(
        &incident(&format!(
            r#"{open},{},{{"url":"{SITE}","valueString":"QEH"}}"#,
            status("open")
        )),
        "required Basic.extension[2].valueCode",
    );
    check(
        &incident(&format!("{open},{open},{}", status("open"))),
        "value Basic.extension[1]",
    );
    // Other Basic resources are not incidents.
    check(r#"{"resourceType":"Basic","code":{"text":"a note"}}"#, "ok");
    // Communication.status is required.
    check(r#"{"resourceType":"Communication"}"#, "required Communication.status");
    check(
        r#"{"resourceType":"Communication","status":"preparation","payload":[{"id":"p1"}]}"#,
        "required Communication.payload[0].content",
    );
}

#[test]
fn invariants_strings_and_decimals() {
    // per-1, wherever a Period is.
    check(
        r#"{"resourceType":"Encounter","status":"finished","class":{"code":"AMB"},
            "period":{"start":"2024-05-02","end":"2024-05-01"}}"#,
        "invariant Encounter.period.start",
    );
    check(
        r#"{"resourceType":"Encounter","status":"finished","class":{"code":"AMB"},
            "period":{"start":"2024-05-01T10:00:00Z","end":"2024-05-01"}}"#,
        "ok",
    );
    check(
        r#"{"resourceType":"Patient","name":[{"family":"Smith","period":{"start":"2020","end":"2019"}}]}"#,
        "invariant Patient.name[0].period.start",
    );
    // Narratives: no active content.
    check(
        r#"{"resourceType":"Patient","text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\"><script>alert(1)</script></div>"}}"#,
        "invariant Patient.text.div",
    );
    check_msg(
        r#"{"resourceType":"Patient","text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\"><p onmouseover=\"x()\">Ann</p></div>"}}"#,
        "invariant Patient.text.div",
        "the event attribute 'onmouseover' on <p> is not allowed in a narrative",
    );
    check(
        r#"{"resourceType":"Patient","text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Ann <b>Smith</b></p></div>"}}"#,
        "ok",
    );
    // Any R4 string: a non-breaking space is a character like any other; control
    // characters other than tab, CR and LF are not.
    check(
        "{\"resourceType\":\"Patient\",\"name\":[{\"family\":\"Smith\u{a0}Jones\"}]}",
        "ok",
    );
    check(
        "{\"resourceType\":\"Patient\",\"name\":[{\"family\":\"Line\\nbreak\\tand tab\"}]}",
        "ok",
    );
    check(
        "{\"resourceType\":\"Patient\",\"name\":[{\"family\":\"bell\\u0007\"}]}",
        "value Patient.name[0].family",
    );
}
