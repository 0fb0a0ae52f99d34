//! Code systems, identifier systems and extension URLs that Hale defines or uses.
//! Documented for humans in ARCHITECTURE.md ("Hale code systems").

/// NHS number identifier system.
pub const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";

/// Hale's appointment category code system, carried in `Appointment.serviceCategory`.
pub const APPOINTMENT_CATEGORY_SYSTEM: &str = "https://hale.health/fhir/CodeSystem/appointment-category";

/// The four appointment categories (code, display).
pub const APPOINTMENT_CATEGORIES: &[(&str, &str)] = &[
    ("outpatient", "Outpatient"),
    ("inpatient-procedure", "Inpatient procedure"),
    ("day-case", "Day case"),
    ("chemotherapy", "Chemotherapy"),
];

/// Who cancelled an appointment: carried in `Appointment.cancelationReason.coding`
/// with this system, code `patient` or `provider`.
pub const CANCELLED_BY_SYSTEM: &str = "https://hale.health/fhir/CodeSystem/cancelled-by";

/// Appointment priority (`Appointment.priority`, unsignedInt): 1 is most urgent.
/// 1 = emergency / cancer two-week-wait, 2 = urgent, 3 = soon, 4 = routine.
pub const PRIORITY_MIN: u64 = 1;
pub const PRIORITY_MAX: u64 = 4;

/// Extension on Appointment: RTT referral date (valueDate).
pub const EXT_RTT_REFERRAL_DATE: &str = "https://hale.health/fhir/StructureDefinition/rtt-referral-date";
/// Extension on Appointment: cancer decision-to-treat date (valueDate).
pub const EXT_DECISION_TO_TREAT_DATE: &str = "https://hale.health/fhir/StructureDefinition/decision-to-treat-date";
/// Extension on Appointment: chemotherapy regimen window (valuePeriod with start/end dates).
pub const EXT_REGIMEN_WINDOW: &str = "https://hale.health/fhir/StructureDefinition/regimen-window";

/// Extension on Location / Organization: the hospital site code a resource belongs to.
pub const EXT_SITE: &str = "https://hale.health/fhir/StructureDefinition/site";

/// `meta.tag` system for Hale's own tags (e.g. `downtime-backfill`).
pub const TAG_SYSTEM: &str = "https://hale.health/fhir/CodeSystem/tag";
