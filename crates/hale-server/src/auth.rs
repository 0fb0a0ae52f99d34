//! Bearer tokens mapped to users and roles, and what each role may touch.

use crate::config::{AuthConfig, Role};
use crate::wire::FhirError;
use axum::http::{HeaderMap, StatusCode};
use hale_fhir::{IssueCode, ResourceType};
use std::collections::HashMap;

/// Who is asking, as authentication established it. Authorisation
/// ([`authorize`], and the patient-level checks) decides from this alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: String,
    pub role: Role,
    /// The hospital site the user works at (a Location id or site code), when
    /// known: from the token's claims, the static token entry or the account.
    pub site: Option<String>,
    /// The patient a `patient/` SMART token is bound to (its launch context):
    /// such a token sees that patient's compartment only.
    pub patient: Option<String>,
}

impl Principal {
    /// A principal with no site and no patient context.
    pub fn new(user: impl Into<String>, role: Role) -> Principal {
        Principal {
            user: user.into(),
            role,
            site: None,
            patient: None,
        }
    }

    pub fn actor(&self) -> hale_store::Actor {
        hale_store::Actor {
            user: self.user.clone(),
            role: self.role.as_str().into(),
        }
    }
}

pub struct Authenticator {
    tokens: HashMap<String, Principal>,
    open_access: bool,
    /// Random per process, never sent anywhere: marks a request the web UI
    /// makes in-process on behalf of a signed-in user ([`IN_PROCESS_HEADER`]).
    in_process_secret: String,
}

/// The header the web UI sets on the FHIR requests it makes in-process for
/// a signed-in user: `<process secret> <user> <role>`. It never crosses the
/// network; a request arriving with it and any other secret is refused.
pub const IN_PROCESS_HEADER: &str = "x-hale-in-process";

impl Authenticator {
    pub fn new(cfg: &AuthConfig) -> Authenticator {
        let tokens = cfg
            .tokens
            .iter()
            .map(|t| {
                (
                    t.token.clone(),
                    Principal {
                        site: t.site.clone(),
                        patient: t.patient.clone(),
                        ..Principal::new(t.user.clone(), t.role)
                    },
                )
            })
            .collect();
        let in_process_secret = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        Authenticator {
            tokens,
            open_access: cfg.open_access,
            in_process_secret,
        }
    }

    /// The [`IN_PROCESS_HEADER`] value that makes an in-process request act
    /// as `p`. Only code in this process can build it.
    pub fn in_process_value(&self, p: &Principal) -> String {
        format!("{} {} {}", self.in_process_secret, p.user, p.role.as_str())
    }

    fn in_process(&self, value: &str) -> Result<Principal, FhirError> {
        let mut parts = value.splitn(3, ' ');
        let (secret, user, role) = (parts.next(), parts.next(), parts.next());
        let same = secret.is_some_and(|s| {
            s.len() == self.in_process_secret.len()
                && s.bytes()
                    .zip(self.in_process_secret.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        });
        let role = role.and_then(Role::parse_name);
        match (same, user, role) {
            (true, Some(user), Some(role)) if !user.is_empty() => Ok(Principal::new(user, role)),
            _ => Err(unauthorized("this header is for Hale's own web UI; use a bearer token")),
        }
    }

    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, FhirError> {
        if let Some(v) = headers.get(IN_PROCESS_HEADER) {
            return self.in_process(v.to_str().unwrap_or(""));
        }
        let header = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match header {
            Some(h) => {
                let token = h
                    .strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
                    .ok_or_else(|| unauthorized("the Authorization header must be 'Bearer <token>'"))?;
                self.tokens.get(token.trim()).cloned().ok_or_else(|| {
                    unauthorized("the bearer token is not recognised; ask an administrator for a valid token")
                })
            }
            None if self.open_access => Ok(Principal::new("anonymous", Role::Admin)),
            None => Err(unauthorized(
                "this server needs a bearer token: send 'Authorization: Bearer <token>'",
            )),
        }
    }
}

fn unauthorized(msg: &str) -> FhirError {
    FhirError::new(StatusCode::UNAUTHORIZED, IssueCode::Login, msg)
}

/// Clinical types a clerk may not see (see [`ResourceType::is_clinical`]).
fn clinical(rt: ResourceType) -> bool {
    rt.is_clinical()
}

/// May `p` read (or, with `write`, change) resources of type `rt`?
pub fn authorize(p: &Principal, rt: ResourceType, write: bool) -> Result<(), FhirError> {
    if write && rt.admin_writes_only() && p.role != Role::Admin {
        return Err(FhirError::new(
            StatusCode::FORBIDDEN,
            IssueCode::Forbidden,
            format!(
                "user '{}' with role '{}' may not change {rt} resources (outage incidents); that needs the admin role",
                p.user,
                p.role.as_str()
            ),
        ));
    }
    // The audit trail is read by admins and privacy officers only: who looked
    // at a patient is itself sensitive. A privacy officer sees the trail and
    // whose record it is (Patient), nothing clinical, and changes nothing.
    let ok = match p.role {
        Role::Admin => true,
        Role::Service => rt != ResourceType::AuditEvent,
        Role::PrivacyOfficer => !write && matches!(rt, ResourceType::AuditEvent | ResourceType::Patient),
        Role::Clinician => rt != ResourceType::AuditEvent,
        Role::Clerk => rt != ResourceType::AuditEvent && !clinical(rt),
    };
    if ok {
        return Ok(());
    }
    let verb = if write { "change" } else { "read" };
    Err(FhirError::new(
        StatusCode::FORBIDDEN,
        IssueCode::Forbidden,
        format!(
            "user '{}' with role '{}' may not {verb} {rt} resources",
            p.user,
            p.role.as_str()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(role: Role, rt: ResourceType, expect: bool) {
        let p = Principal::new("u", role);
        assert_eq!(authorize(&p, rt, false).is_ok(), expect, "{role:?} {rt}");
    }

    #[test]
    fn roles() {
        check(Role::Clinician, ResourceType::Observation, true);
        check(Role::Clinician, ResourceType::AuditEvent, false);
        check(Role::Clerk, ResourceType::Patient, true);
        check(Role::Clerk, ResourceType::Appointment, true);
        check(Role::Clerk, ResourceType::DocumentReference, false);
        check(Role::Clerk, ResourceType::Observation, false);
        check(Role::Admin, ResourceType::AuditEvent, true);
        check(Role::Service, ResourceType::AuditEvent, false);
        check(Role::PrivacyOfficer, ResourceType::AuditEvent, true);
        check(Role::PrivacyOfficer, ResourceType::Patient, true);
        check(Role::PrivacyOfficer, ResourceType::Observation, false);
        check(Role::PrivacyOfficer, ResourceType::Appointment, false);
        let po = Principal::new("u", Role::PrivacyOfficer);
        assert!(
            authorize(&po, ResourceType::Patient, true).is_err(),
            "a privacy officer writes nothing"
        );
        check(Role::Clerk, ResourceType::Basic, true);
        check(Role::Clerk, ResourceType::Communication, true);
    }

    #[test]
    fn only_admins_change_incidents() {
        for (role, ok) in [
            (Role::Admin, true),
            (Role::Service, false),
            (Role::Clinician, false),
            (Role::Clerk, false),
        ] {
            let p = Principal::new("u", role);
            assert_eq!(authorize(&p, ResourceType::Basic, true).is_ok(), ok, "{role:?}");
            assert!(
                authorize(&p, ResourceType::Basic, false).is_ok(),
                "{role:?} reads incidents"
            );
        }
    }
}
