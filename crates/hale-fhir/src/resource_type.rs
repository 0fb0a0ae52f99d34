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

include!("generated/resource_types.rs");

impl ResourceType {
    /// AuditEvent is written only by the server itself; clients may read and search it.
    pub fn client_writable(self) -> bool {
        self != ResourceType::AuditEvent
    }

    /// Whether reading this type touches a patient's record, so that every read
    /// and search must leave an AuditEvent: the Patient itself and every type in
    /// the official patient compartment, except `Schedule` (a clinic's diary) and
    /// `Basic`, which Hale keeps for operational records (outage incidents).
    ///
    /// Writes are audited whatever the type: `apply` (hale-store) records an audit
    /// row for every create, update and delete in the same commit, patient data or
    /// not. So an outage incident (`Basic`) is audited when it is declared, changed
    /// or closed, but reading the incident list is not.
    pub fn is_patient_data(self) -> bool {
        use ResourceType::*;
        match self {
            Patient | AuditEvent => true,
            Schedule | Basic => false,
            t => !crate::search_defs::patient_compartment(t).is_empty(),
        }
    }

    /// Patient data that is clinical (results, notes, medicines, problems...):
    /// everything in the patient compartment except what front-desk work needs
    /// (the patient, contacts, bookings, messages, cover and accounts).
    pub fn is_clinical(self) -> bool {
        use ResourceType::*;
        self.is_patient_data()
            && !matches!(
                self,
                Patient
                    | RelatedPerson
                    | Person
                    | Appointment
                    | AppointmentResponse
                    | Communication
                    | CommunicationRequest
                    | Coverage
                    | Account
                    | AuditEvent
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
