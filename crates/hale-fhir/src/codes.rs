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
/// The largest Appointment.priority accepted from other systems (R4: 0
/// undefined, 1 highest, larger numbers lower; 9 by convention the lowest).
pub const R4_PRIORITY_MAX: u64 = 9;

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

// ---------------------------------------------------------------------------
// Outage recovery (see ARCHITECTURE.md, "Outage recovery").

/// `meta.tag` code on Appointments cancelled by `$postpone` (with [`TAG_SYSTEM`]).
pub const TAG_OUTAGE_POSTPONED: &str = "outage-postponed";
/// `meta.tag` code on Appointments created by `$rebook`.
pub const TAG_OUTAGE_REBOOKED: &str = "outage-rebooked";
/// `meta.tag` code on the outbox Communications created by `$rebook`.
pub const TAG_OUTAGE_NOTIFICATION: &str = "outage-notification";
/// Prefix of the per-incident `meta.tag` code: `incident-<Basic id>` (shared with `$backfill`).
pub const TAG_INCIDENT_PREFIX: &str = "incident-";

/// `Basic.code` of an incident: this system, code [`INCIDENT_IT_OUTAGE`].
pub const INCIDENT_TYPE_SYSTEM: &str = "https://hale.health/fhir/CodeSystem/incident-type";
/// An IT outage that stopped clinics or bookings.
pub const INCIDENT_IT_OUTAGE: &str = "it-outage";
/// `Basic.identifier` system for an incident's human reference (e.g. a service-desk ticket).
pub const INCIDENT_ID_SYSTEM: &str = "https://hale.health/fhir/Id/incident";
/// Extension on an incident (Basic): when it started and (once known) ended, `valuePeriod`. Exactly one.
pub const EXT_INCIDENT_PERIOD: &str = "https://hale.health/fhir/StructureDefinition/incident-period";
/// Extension on an incident: `valueCode` `open` or `closed`. Exactly one; `closed` needs the period's end.
pub const EXT_INCIDENT_STATUS: &str = "https://hale.health/fhir/StructureDefinition/incident-status";
/// Incident statuses.
pub const INCIDENT_STATUSES: &[&str] = &["open", "closed"];
/// Extension on an incident: an affected hospital site code (`valueCode`, as [`EXT_SITE`]); repeated.
/// None means every site.
pub const EXT_INCIDENT_SITE: &str = "https://hale.health/fhir/StructureDefinition/incident-site";
/// Extension on an incident: an affected service (`valueCode`); repeated. A code is either a Hale
/// appointment category ([`APPOINTMENT_CATEGORIES`]) or a service type code
/// (`Appointment.serviceType.coding.code`, e.g. `cardiology`). None means every service.
pub const EXT_INCIDENT_SERVICE: &str = "https://hale.health/fhir/StructureDefinition/incident-service";
/// Extension on an incident: what happened (`valueString`).
pub const EXT_INCIDENT_DESCRIPTION: &str = "https://hale.health/fhir/StructureDefinition/incident-description";

/// Extension on Appointment and Communication: the incident it was postponed, rebooked or sent
/// for (`valueReference` to `Basic/<id>`). Search: `Appointment?incident=Basic/<id>`.
pub const EXT_OUTAGE_INCIDENT: &str = "https://hale.health/fhir/StructureDefinition/outage-incident";
/// Extension on a cancelled Appointment: cancelled on the day of the appointment (UK local date), `valueBoolean`.
pub const EXT_CANCELLED_ON_THE_DAY: &str = "https://hale.health/fhir/StructureDefinition/cancelled-on-the-day";
/// Extension on a rebooked Appointment: the Appointment it replaces (`valueReference`).
/// Search: `Appointment?rebooked-from=Appointment/<id>`.
pub const EXT_REBOOKED_FROM: &str = "https://hale.health/fhir/StructureDefinition/rebooked-from";
/// Extension on Appointment: the patient agreed to short notice (`valueBoolean`).
pub const EXT_NOTICE_WAIVED: &str = "https://hale.health/fhir/StructureDefinition/notice-waived";
/// `cancelationReason.text` of an appointment postponed by an IT outage.
pub const OUTAGE_CANCEL_TEXT: &str = "provider: IT outage";

/// `Communication.category` of an outbox record: this system, code [`NOTIFICATION_APPOINTMENT_REBOOKED`].
pub const NOTIFICATION_CATEGORY_SYSTEM: &str = "https://hale.health/fhir/CodeSystem/notification-category";
pub const NOTIFICATION_APPOINTMENT_REBOOKED: &str = "appointment-rebooked";
/// `Communication.medium`: the channel chosen, one of [`NOTIFICATION_CHANNELS`].
pub const NOTIFICATION_CHANNEL_SYSTEM: &str = "https://hale.health/fhir/CodeSystem/notification-channel";
/// Channels (code, display).
pub const NOTIFICATION_CHANNELS: &[(&str, &str)] = &[
    ("letter", "Letter (GOV.UK Notify)"),
    ("sms", "SMS"),
    ("email", "Email"),
    ("phone-call", "Phone call by staff"),
    ("staff-list", "Staff list: no usable contact details in time"),
];
/// `Communication.identifier` system: the idempotency key of an outbox record (its id).
pub const NOTIFICATION_ID_SYSTEM: &str = "https://hale.health/fhir/Id/notification";
/// Extension on a letter Communication: postage class `first` or `second` (`valueCode`).
pub const EXT_LETTER_POSTAGE: &str = "https://hale.health/fhir/StructureDefinition/letter-postage";
/// Extension on a letter Communication: the expected delivery date (`valueDate`).
pub const EXT_LETTER_EXPECTED_DELIVERY: &str = "https://hale.health/fhir/StructureDefinition/letter-expected-delivery";
