//! The harness checks itself: the schema check must catch bad bodies and the
//! fixture NHS numbers must agree with hale-fhir.

use crate::common::*;
use serde_json::json;

#[test]
fn schema_check_catches_invalid_resources() {
    let cases = [
        (json!({"resourceType": "Patient", "gender": "female"}), true),
        (json!({"resourceType": "Patient", "foo": 1}), false),
        (json!({"resourceType": "Patient", "birthDate": 123}), false),
        (json!({"resourceType": "Patient", "gender": "dragon"}), false),
        (json!({"resourceType": "Patient", "name": {"family": "x"}}), false),
        (
            json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid"}]}),
            true,
        ),
        (
            json!({"resourceType": "OperationOutcome", "issue": [{"severity": "bad", "code": "invalid"}]}),
            false,
        ),
        (
            json!({"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": {"resourceType": "Patient", "foo": 1}}]}),
            false,
        ),
        (
            json!({"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": {"resourceType": "Patient", "id": "a"}}]}),
            true,
        ),
        (
            json!({"resourceType": "Slot", "status": "free", "start": "2031-03-01T09:00:00Z", "end": "2031-03-01T09:30:00Z", "schedule": {"reference": "Schedule/1"}}),
            true,
        ),
        (
            json!({"resourceType": "Slot", "status": "free", "start": "2031-03-01", "end": "2031-03-01T09:30:00Z", "schedule": {"reference": "Schedule/1"}}),
            false,
        ),
    ];
    for (v, valid) in cases {
        let errors = schema_errors(&v);
        assert_eq!(errors.is_empty(), valid, "{v}: {errors:?}");
    }
}

#[test]
fn fixture_nhs_numbers_agree_with_hale_fhir() {
    for _ in 0..200 {
        let n = nhs();
        assert!(n.starts_with("999") && n.len() == 10, "{n}");
        assert!(hale_fhir::nhs::is_valid(&n), "generated {n} is not valid");
        let bad = invalid_nhs();
        assert!(!hale_fhir::nhs::is_valid(&bad), "generated {bad} should be invalid");
    }
    assert_eq!(nhs_check(&[9, 4, 3, 4, 7, 6, 5, 9, 1]), Some(9));
    assert_eq!(nhs_check(&[0, 0, 0, 0, 0, 0, 0, 0, 6]), None);
}
