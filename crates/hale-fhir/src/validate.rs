//! R4 structural validation plus Hale's own profile rules.

use crate::outcome::Issue;
use crate::resource_type::ResourceType;
use serde_json::Value;

/// Check a resource a client sent for create/update.
///
/// Checks, each reported as an [`Issue`] with a FHIRPath-style expression:
/// - it is a JSON object with a supported, client-writable `resourceType`
///   (equal to `expected` when given);
/// - R4 structure: element names, JSON types, cardinality (array vs single),
///   required elements (including required primitives such as `Appointment.status`),
///   primitive formats (regex patterns), and the required code bindings (`enum`);
/// - NHS numbers (`identifier.system` = https://fhir.nhs.uk/Id/nhs-number) pass modulus 11;
/// - Hale profile rules: an Appointment carries exactly one category from
///   `codes::APPOINTMENT_CATEGORY_SYSTEM` in `serviceCategory` and a `priority`
///   in `codes::PRIORITY_MIN..=PRIORITY_MAX`.
///
/// Returns the resource type on success; all problems found (up to a limit) on failure.
pub fn validate_resource(resource: &Value, expected: Option<ResourceType>) -> Result<ResourceType, Vec<Issue>> {
    let _ = (resource, expected);
    todo!()
}

/// Check the outer structure of an incoming Bundle (type, entry, request, fullUrl)
/// without descending into `entry[].resource`, which the caller validates one by one
/// with [`validate_resource`].
pub fn validate_bundle_shell(bundle: &Value) -> Result<(), Vec<Issue>> {
    let _ = bundle;
    todo!()
}
