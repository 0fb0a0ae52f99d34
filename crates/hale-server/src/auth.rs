//! Bearer tokens mapped to users and roles, and what each role may touch.

use crate::config::{AuthConfig, Role};
use crate::wire::FhirError;
use axum::http::{HeaderMap, StatusCode};
use hale_fhir::{IssueCode, ResourceType};
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: String,
    pub role: Role,
}

impl Principal {
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
}

impl Authenticator {
    pub fn new(cfg: &AuthConfig) -> Authenticator {
        let tokens = cfg
            .tokens
            .iter()
            .map(|t| {
                (
                    t.token.clone(),
                    Principal {
                        user: t.user.clone(),
                        role: t.role,
                    },
                )
            })
            .collect();
        Authenticator {
            tokens,
            open_access: cfg.open_access,
        }
    }

    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, FhirError> {
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
            None if self.open_access => Ok(Principal {
                user: "anonymous".into(),
                role: Role::Admin,
            }),
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
    let ok = match p.role {
        Role::Admin | Role::Service => true,
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
        let p = Principal { user: "u".into(), role };
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
        check(Role::Service, ResourceType::AuditEvent, true);
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
            let p = Principal { user: "u".into(), role };
            assert_eq!(authorize(&p, ResourceType::Basic, true).is_ok(), ok, "{role:?}");
            assert!(
                authorize(&p, ResourceType::Basic, false).is_ok(),
                "{role:?} reads incidents"
            );
        }
    }
}
