//! FHIR R4 knowledge for Hale.
//!
//! This crate is pure: no IO, no clock, no SQLite, no HTTP. It knows
//! the resource types Hale serves, how to check an incoming resource
//! against the R4 structure, how NHS numbers are checked, which search
//! parameters exist and how their values are pulled out of a resource,
//! and how to parse a FHIR search query string into [`search::SearchQuery`].

pub mod codes;
pub mod date;
pub mod fhirpath;
pub mod nhs;
pub mod outcome;
pub mod resource_type;
mod schema;
pub mod search;
mod search_defs;
pub mod subset;
pub mod validate;
pub mod xhtml;

pub use outcome::{Issue, IssueCode, Severity};
pub use resource_type::ResourceType;
