//! The resource types Hale serves.

use std::fmt;
use std::str::FromStr;

macro_rules! resource_types {
    ($($name:ident),* $(,)?) => {
        /// A FHIR resource type that Hale stores and serves.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum ResourceType { $($name),* }

        impl ResourceType {
            /// Every type Hale serves, in a stable order.
            pub const ALL: &'static [ResourceType] = &[$(ResourceType::$name),*];

            pub fn as_str(self) -> &'static str {
                match self { $(ResourceType::$name => stringify!($name)),* }
            }
        }

        impl FromStr for ResourceType {
            type Err = UnknownResourceType;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $(stringify!($name) => Ok(ResourceType::$name),)*
                    _ => Err(UnknownResourceType(s.to_string())),
                }
            }
        }
    };
}

resource_types!(
    Patient,
    Practitioner,
    PractitionerRole,
    Organization,
    Location,
    HealthcareService,
    Schedule,
    Slot,
    Appointment,
    Encounter,
    Observation,
    DiagnosticReport,
    ImagingStudy,
    DocumentReference,
    AllergyIntolerance,
    AuditEvent,
    Basic,
    Communication,
);

impl ResourceType {
    /// AuditEvent is written only by the server itself; clients may read and search it.
    pub fn client_writable(self) -> bool {
        self != ResourceType::AuditEvent
    }

    /// Whether reading this type touches a patient's record, so that every read
    /// and search must leave an AuditEvent.
    ///
    /// Writes are audited whatever the type: `apply` (hale-store) records an audit
    /// row for every create, update and delete in the same commit, patient data or
    /// not. So an outage incident (`Basic`) is audited when it is declared, changed
    /// or closed, but reading the incident list is not.
    pub fn is_patient_data(self) -> bool {
        use ResourceType::*;
        matches!(
            self,
            Patient
                | Appointment
                | Encounter
                | Observation
                | DiagnosticReport
                | ImagingStudy
                | DocumentReference
                | AllergyIntolerance
                | AuditEvent
                | Communication
        )
    }

    /// Types only administrators may create, update or delete. `Basic` holds Hale's
    /// operational records (IT outage incidents), which decide what `$postpone` cancels.
    pub fn admin_writes_only(self) -> bool {
        self == ResourceType::Basic
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("resource type '{0}' is not supported by this server")]
pub struct UnknownResourceType(pub String);
