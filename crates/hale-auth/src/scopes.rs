//! SMART App Launch v2 scopes: parsing and decisions.
//!
//! A resource scope is `<context>/<type>.<permissions>`: the context is
//! `patient`, `user` or `system`; the type is a FHIR resource type or `*`; the
//! permissions are an in-order, non-empty subset of `cruds` (create, read,
//! update, delete, search). The v1 forms `.read`, `.write` and `.*` are taken
//! as their v2 equivalents `.rs`, `.cud` and `.cruds`.
//!
//! What is refused rather than guessed (SMART lets a server ignore or reject
//! such scopes; Hale never widens a grant):
//! - permissions out of order or repeated (`.dus`, `.rr`): `.rd` must never be
//!   read as `.read`;
//! - scopes with a `?param=value` restriction: Hale does not enforce the
//!   restriction, so it does not grant the scope at all;
//! - unknown contexts.
//!
//! Non-resource scopes (`openid`, `fhirUser`, `launch/patient`,
//! `offline_access`, ...) are not resource grants and are skipped.

use std::fmt;

/// Who the scope speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Context {
    /// The patient in the token's launch context.
    Patient,
    /// The signed-in user, within their own rights.
    User,
    /// A backend system with no user.
    System,
}

/// One of the five SMART v2 permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Op {
    const ALL: [Op; 5] = [Op::Create, Op::Read, Op::Update, Op::Delete, Op::Search];

    fn bit(self) -> u8 {
        match self {
            Op::Create => 1,
            Op::Read => 2,
            Op::Update => 4,
            Op::Delete => 8,
            Op::Search => 16,
        }
    }

    fn letter(self) -> char {
        match self {
            Op::Create => 'c',
            Op::Read => 'r',
            Op::Update => 'u',
            Op::Delete => 'd',
            Op::Search => 's',
        }
    }

    /// Whether the operation changes data.
    pub fn is_write(self) -> bool {
        matches!(self, Op::Create | Op::Update | Op::Delete)
    }
}

/// A set of permissions, kept as bits in `cruds` order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Perms(u8);

impl Perms {
    pub fn contains(self, op: Op) -> bool {
        self.0 & op.bit() != 0
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for Perms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for op in Op::ALL {
            if self.contains(op) {
                write!(f, "{}", op.letter())?;
            }
        }
        Ok(())
    }
}

/// One granted resource scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    pub context: Context,
    /// A resource type name, or `None` for `*`.
    pub resource: Option<String>,
    pub perms: Perms,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = match self.context {
            Context::Patient => "patient",
            Context::User => "user",
            Context::System => "system",
        };
        write!(f, "{c}/{}.{}", self.resource.as_deref().unwrap_or("*"), self.perms)
    }
}

/// Why a scope string is not granted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("'{0}' is not a resource scope")]
    NotResource(String),
    #[error("'{scope}': {why}")]
    Refused { scope: String, why: &'static str },
}

/// Longest scope string considered (a token's whole `scope` claim is bounded
/// by the token size limit; one scope this long is already nonsense).
pub const SCOPE_CHARS_MAX: usize = 256;

/// Parse one scope. `Err(NotResource)` for scopes such as `openid` that grant
/// no resource access; `Err(Refused)` for malformed resource scopes.
pub fn parse_scope(s: &str) -> Result<Scope, ScopeError> {
    let refuse = |why| ScopeError::Refused {
        scope: s.chars().take(SCOPE_CHARS_MAX).collect(),
        why,
    };
    let Some((ctx, rest)) = s.split_once('/') else {
        return Err(ScopeError::NotResource(s.chars().take(SCOPE_CHARS_MAX).collect()));
    };
    let context = match ctx {
        "patient" => Context::Patient,
        "user" => Context::User,
        "system" => Context::System,
        // `launch/patient`, `launch/encounter`: launch context requests, not grants.
        _ => return Err(ScopeError::NotResource(s.chars().take(SCOPE_CHARS_MAX).collect())),
    };
    if s.len() > SCOPE_CHARS_MAX {
        return Err(refuse("longer than any resource scope"));
    }
    if rest.contains('?') {
        return Err(refuse(
            "scopes with a search restriction (?param=value) are not supported, so not granted",
        ));
    }
    let Some((resource, perms)) = rest.rsplit_once('.') else {
        return Err(refuse("no permissions: use <type>.<cruds>, e.g. Patient.rs"));
    };
    let resource = match resource {
        "*" => None,
        t if !t.is_empty()
            && t.chars().next().is_some_and(|c| c.is_ascii_uppercase())
            && t.chars().all(|c| c.is_ascii_alphanumeric()) =>
        {
            Some(t.to_string())
        }
        _ => return Err(refuse("the resource must be a FHIR type name or *")),
    };
    let perms = match perms {
        "read" => Perms(Op::Read.bit() | Op::Search.bit()),
        "write" => Perms(Op::Create.bit() | Op::Update.bit() | Op::Delete.bit()),
        "*" => Perms(0b11111),
        p => {
            let mut bits = 0u8;
            let mut next = 0usize;
            for ch in p.chars() {
                let Some(i) = Op::ALL.iter().position(|o| o.letter() == ch) else {
                    return Err(refuse("permissions are letters of cruds (or read, write, *)"));
                };
                if i < next {
                    return Err(refuse("permissions must be in cruds order, each at most once"));
                }
                bits |= Op::ALL[i].bit();
                next = i + 1;
            }
            if bits == 0 {
                return Err(refuse("no permissions"));
            }
            Perms(bits)
        }
    };
    Ok(Scope {
        context,
        resource,
        perms,
    })
}

/// The resource scopes a token was granted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scopes {
    granted: Vec<Scope>,
    /// Malformed resource scopes that were not granted (for the log and tests).
    refused: Vec<ScopeError>,
}

/// The outcome of a scope decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// No granted scope covers it.
    Denied,
    /// A `user/` or `system/` scope covers it.
    Granted,
    /// Only a `patient/` scope covers it: allowed within the launch patient's compartment.
    PatientCompartment,
}

impl Scopes {
    /// Parse a space-separated `scope` claim.
    pub fn parse(claim: &str) -> Scopes {
        let mut out = Scopes::default();
        for s in claim.split_ascii_whitespace() {
            match parse_scope(s) {
                Ok(scope) => out.granted.push(scope),
                Err(ScopeError::NotResource(_)) => {}
                Err(e) => out.refused.push(e),
            }
        }
        out
    }

    pub fn granted(&self) -> &[Scope] {
        &self.granted
    }

    pub fn refused(&self) -> &[ScopeError] {
        &self.refused
    }

    /// Whether any granted scope is a `patient/` scope.
    pub fn has_patient_scope(&self) -> bool {
        self.granted.iter().any(|s| s.context == Context::Patient)
    }

    /// May `op` be done on resources of type `resource`?
    pub fn decide(&self, resource: &str, op: Op) -> Grant {
        let covering = |s: &&Scope| s.perms.contains(op) && s.resource.as_deref().is_none_or(|t| t == resource);
        let mut grant = Grant::Denied;
        for s in self.granted.iter().filter(covering) {
            match s.context {
                Context::User | Context::System => return Grant::Granted,
                Context::Patient => grant = Grant::PatientCompartment,
            }
        }
        grant
    }

    /// The granted scopes as a space-separated string.
    pub fn to_claim(&self) -> String {
        self.granted.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect: &str) {
        let got = match parse_scope(input) {
            Ok(s) => s.to_string(),
            Err(e) => format!("error: {e}"),
        };
        assert_eq!(got, expect, "{input}");
    }

    #[test]
    fn parse() {
        check("patient/Observation.rs", "patient/Observation.rs");
        check("user/Patient.cruds", "user/Patient.cruds");
        check("system/*.rs", "system/*.rs");
        check("user/Patient.read", "user/Patient.rs");
        check("user/Patient.write", "user/Patient.cud");
        check("user/*.*", "user/*.cruds");
        check("user/Patient.r", "user/Patient.r");
        check(
            "user/Patient.dus",
            "error: 'user/Patient.dus': permissions must be in cruds order, each at most once",
        );
        check(
            "user/Patient.rr",
            "error: 'user/Patient.rr': permissions must be in cruds order, each at most once",
        );
        check("user/Patient.rd", "user/Patient.rd");
        check(
            "user/Patient.x",
            "error: 'user/Patient.x': permissions are letters of cruds (or read, write, *)",
        );
        check("user/Patient.", "error: 'user/Patient.': no permissions");
        check(
            "user/Patient",
            "error: 'user/Patient': no permissions: use <type>.<cruds>, e.g. Patient.rs",
        );
        check(
            "user/patient.rs",
            "error: 'user/patient.rs': the resource must be a FHIR type name or *",
        );
        check(
            "patient/Observation.rs?category=laboratory",
            "error: 'patient/Observation.rs?category=laboratory': scopes with a search restriction (?param=value) are not supported, so not granted",
        );
        check("openid", "error: 'openid' is not a resource scope");
        check("launch/patient", "error: 'launch/patient' is not a resource scope");
    }

    fn decide(claim: &str, rt: &str, op: Op, expect: Grant) {
        assert_eq!(Scopes::parse(claim).decide(rt, op), expect, "{claim} {rt} {op:?}");
    }

    #[test]
    fn decisions() {
        use Grant::*;
        decide("user/Patient.r", "Patient", Op::Read, Granted);
        decide("user/Patient.r", "Patient", Op::Create, Denied);
        decide("user/Patient.r", "Patient", Op::Search, Denied);
        decide("user/Patient.r", "Observation", Op::Read, Denied);
        decide("system/*.rs", "Observation", Op::Search, Granted);
        decide("system/*.rs", "Observation", Op::Update, Denied);
        decide("patient/*.rs", "Observation", Op::Read, PatientCompartment);
        decide("patient/*.rs user/Observation.r", "Observation", Op::Read, Granted);
        decide("openid fhirUser user/Patient.dus", "Patient", Op::Delete, Denied);
        decide("", "Patient", Op::Read, Denied);
        let s = Scopes::parse("openid user/Patient.dus user/Patient.rs");
        assert_eq!(s.refused().len(), 1);
        assert_eq!(s.to_claim(), "user/Patient.rs");
    }
}
