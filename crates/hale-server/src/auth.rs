//! Who is asking (static development tokens, the trust's OpenID provider,
//! the web UI's in-process calls) and what each role and scope may touch.

use crate::config::{AuthConfig, Role};
use crate::wire::FhirError;
use axum::http::{HeaderMap, StatusCode};
use hale_auth::{Grant, Op, Scopes, Validator};
use hale_fhir::{IssueCode, ResourceType};
use std::collections::HashMap;
use std::sync::Arc;

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
    /// The SMART scopes an OpenID access token was granted; `None` for
    /// principals that scopes do not limit (static development tokens, local
    /// web-UI accounts), whose role alone decides.
    pub scopes: Option<Arc<Scopes>>,
}

impl Principal {
    /// A principal with no site and no patient context.
    pub fn new(user: impl Into<String>, role: Role) -> Principal {
        Principal {
            user: user.into(),
            role,
            site: None,
            patient: None,
            scopes: None,
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
    /// Access tokens from the trust's OpenID provider, when `[auth.oidc]` is set.
    oidc: Option<Arc<Validator>>,
    /// Random per process, never sent anywhere: marks a request the web UI
    /// makes in-process on behalf of a signed-in user ([`IN_PROCESS_HEADER`]).
    in_process_secret: String,
}

/// The header the web UI sets on the FHIR requests it makes in-process for
/// a signed-in user: `<process secret> <user> <role>`. It never crosses the
/// network; a request arriving with it and any other secret is refused.
pub const IN_PROCESS_HEADER: &str = "x-hale-in-process";

impl Authenticator {
    /// Static tokens and open access only (no OpenID provider).
    pub fn new(cfg: &AuthConfig) -> Authenticator {
        Authenticator::with_oidc(cfg, None)
    }

    /// With `oidc`, bearer JWTs are validated against the provider's keys.
    pub fn with_oidc(cfg: &AuthConfig, oidc: Option<Arc<Validator>>) -> Authenticator {
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
            oidc,
            in_process_secret,
        }
    }

    /// The OpenID validator, when configured.
    pub fn oidc(&self) -> Option<&Arc<Validator>> {
        self.oidc.as_ref()
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

    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, FhirError> {
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
                    .ok_or_else(|| unauthorized("the Authorization header must be 'Bearer <token>'"))?
                    .trim();
                if let Some(p) = self.tokens.get(token) {
                    return Ok(p.clone());
                }
                match &self.oidc {
                    Some(v) if token.bytes().filter(|&b| b == b'.').count() == 2 => {
                        self.principal_of_jwt(v, token).await
                    }
                    _ => Err(invalid_token(
                        "the bearer token is not recognised; ask an administrator for a valid token",
                    )),
                }
            }
            None if self.open_access => Ok(Principal::new("anonymous", Role::Admin)),
            None => Err(unauthorized(
                "this server needs a bearer token: send 'Authorization: Bearer <token>'",
            )),
        }
    }

    /// The principal of an access token from the OpenID provider, mapped
    /// exactly as for a bearer token on the API (the web UI's sign-in uses it).
    pub async fn oidc_principal(&self, token: &str) -> Result<Principal, FhirError> {
        match &self.oidc {
            Some(v) => self.principal_of_jwt(v, token).await,
            None => Err(unauthorized("[auth.oidc] is not configured on this node")),
        }
    }

    async fn principal_of_jwt(&self, v: &Validator, token: &str) -> Result<Principal, FhirError> {
        let t = v.validate(token).await.map_err(|e| {
            tracing::info!(error = %e, "bearer token refused");
            invalid_token(&format!("{e}; get a new token from the identity provider"))
        })?;
        let system_only = !t.scopes.granted().is_empty()
            && t.scopes
                .granted()
                .iter()
                .all(|s| s.context == hale_auth::Context::System);
        let role = match t.role.as_deref() {
            Some(r) => Role::parse_name(r).ok_or_else(|| {
                forbidden(format!(
                    "the token's role '{r}' is not a Hale role (clinician, clerk, admin, service, privacy-officer); map it with [auth.oidc] role_map"
                ))
            })?,
            // A backend client with system scopes only and no user role acts as a service.
            None if system_only => Role::Service,
            None => {
                return Err(forbidden(format!(
                    "the token carries no role claim '{}'; the identity provider must state the user's Hale role",
                    v.settings().role_claim
                )))
            }
        };
        let patient = if t.scopes.has_patient_scope() {
            Some(t.patient.clone().ok_or_else(|| {
                forbidden(format!(
                    "the token has patient/ scopes but no patient launch context (claim '{}')",
                    v.settings().patient_claim
                ))
            })?)
        } else {
            None
        };
        Ok(Principal {
            user: t.user,
            role,
            site: t.site,
            patient,
            scopes: Some(Arc::new(t.scopes)),
        })
    }
}

/// Fetches the provider's discovery document and keys with the HTTP client
/// the outbox already uses (https with the webpki roots).
pub struct HttpFetch {
    pub timeout_ms: u64,
}

/// Largest discovery document or JWKS read.
const OIDC_BODY_BYTES_MAX: usize = 1024 * 1024;

impl hale_auth::Fetch for HttpFetch {
    fn get<'a>(
        &'a self,
        url: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<u8>, String>> + Send + 'a>> {
        Box::pin(async move {
            let uri: axum::http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
            let (scheme, authority) = match (uri.scheme_str(), uri.authority()) {
                (Some(s), Some(a)) => (s, a.as_str()),
                _ => return Err(format!("{url} is not an absolute http(s) URL")),
            };
            let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            let timeout = std::time::Duration::from_millis(self.timeout_ms.max(1));
            let ep = hale_notify::http::Endpoint::new(&format!("{scheme}://{authority}"), timeout, timeout)?;
            let r = ep
                .request(
                    axum::http::Method::GET,
                    path,
                    &[(axum::http::header::ACCEPT, "application/json".into())],
                    None,
                )
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            if r.status != 200 {
                return Err(format!("GET {url} answered {}", r.status));
            }
            if r.body.len() > OIDC_BODY_BYTES_MAX {
                return Err(format!(
                    "GET {url}: the answer is larger than {OIDC_BODY_BYTES_MAX} bytes"
                ));
            }
            Ok(r.body.to_vec())
        })
    }
}

/// Largest token-endpoint answer read.
pub const TOKEN_RESPONSE_BYTES_MAX: usize = 64 * 1024;

/// POST a form to the provider's token endpoint (RFC 6749 §4.1.3) with the
/// same HTTP client as the key fetches: `client` is sent as HTTP Basic
/// (§2.3.1: id and secret form-encoded first) when it has a secret.
/// Answers the status and body; the body is bounded by [`TOKEN_RESPONSE_BYTES_MAX`].
pub async fn token_request(
    url: &str,
    form: &[(&str, &str)],
    client: (&str, Option<&str>),
    timeout_ms: u64,
) -> Result<(u16, Vec<u8>), String> {
    let uri: axum::http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let (scheme, authority) = match (uri.scheme_str(), uri.authority()) {
        (Some(s), Some(a)) => (s, a.as_str()),
        _ => return Err(format!("{url} is not an absolute http(s) URL")),
    };
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let timeout = std::time::Duration::from_millis(timeout_ms.max(1));
    let ep = hale_notify::http::Endpoint::new(&format!("{scheme}://{authority}"), timeout, timeout)?;
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let mut headers = vec![
        (axum::http::header::ACCEPT, "application/json".to_string()),
        (
            axum::http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded".to_string(),
        ),
    ];
    // Built before any await: the serializer is not Send.
    let body = {
        let mut body = form_urlencoded::Serializer::new(String::new());
        body.extend_pairs(form);
        match client {
            (id, Some(secret)) => headers.push((
                axum::http::header::AUTHORIZATION,
                format!(
                    "Basic {}",
                    base64_std(format!("{}:{}", enc(id), enc(secret)).as_bytes())
                ),
            )),
            (id, None) => {
                body.append_pair("client_id", id);
            }
        }
        body.finish()
    };
    let r = ep
        .request(axum::http::Method::POST, path, &headers, Some(body.into_bytes()))
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    if r.body.len() > TOKEN_RESPONSE_BYTES_MAX {
        return Err(format!(
            "POST {url}: the answer is larger than {TOKEN_RESPONSE_BYTES_MAX} bytes"
        ));
    }
    Ok((r.status, r.body.to_vec()))
}

/// Standard base64 with padding (HTTP Basic).
fn base64_std(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// The OpenID validator for `cfg`, with its key cache in the data directory.
pub fn oidc_validator(cfg: &AuthConfig, data: &std::path::Path) -> Result<Option<Arc<Validator>>, String> {
    let Some(settings) = &cfg.oidc else { return Ok(None) };
    let fetch = Arc::new(HttpFetch {
        timeout_ms: settings.fetch_timeout_ms,
    });
    let cache = data.join("oidc-jwks.json");
    Validator::new(settings.clone(), fetch, Some(cache)).map(|v| Some(Arc::new(v)))
}

/// Keep the provider's keys fresh: fetch at start (a failure is logged and the
/// cached keys serve), then whenever the copy is older than its maximum age.
pub fn spawn_key_refresh(v: Arc<Validator>) {
    tokio::spawn(async move {
        loop {
            if v.stale().await {
                if let Err(e) = v.refresh(true).await {
                    let cached = v.key_count().await;
                    tracing::warn!(error = %e, keys_cached = cached, "could not fetch the identity provider's keys; cached keys still serve");
                }
            }
            let wait_secs = v.settings().cache_max_age_secs.clamp(5, 3600) / 4;
            tokio::time::sleep(std::time::Duration::from_secs(wait_secs.max(1))).await;
        }
    });
}

/// Refuse to start with development authentication on a network address:
/// static tokens and open access identify nobody individually, so they only
/// serve on loopback (DSPT B2.a: every user individually identified).
pub fn check_listen(cfg: &AuthConfig, listen: &str) -> Result<(), String> {
    let loopback = match listen.parse::<std::net::SocketAddr>() {
        Ok(a) => a.ip().is_loopback(),
        Err(_) => listen.starts_with("localhost:"),
    };
    if loopback {
        return Ok(());
    }
    if cfg.open_access {
        return Err(format!(
            "open_access serves anyone as an administrator, so it is refused on {listen}: listen on 127.0.0.1, or turn open_access off"
        ));
    }
    if !cfg.tokens.is_empty() {
        return Err(format!(
            "static bearer tokens are for development and only serve on loopback, not on {listen}: configure [auth.oidc] with the trust's identity provider and remove [[auth.tokens]], or listen on 127.0.0.1"
        ));
    }
    Ok(())
}

/// A present but unusable bearer token: 401 with `error="invalid_token"`.
fn invalid_token(msg: &str) -> FhirError {
    FhirError::new(StatusCode::UNAUTHORIZED, IssueCode::Security, msg)
}

fn forbidden(msg: String) -> FhirError {
    FhirError::new(StatusCode::FORBIDDEN, IssueCode::Forbidden, msg)
}

fn unauthorized(msg: &str) -> FhirError {
    FhirError::new(StatusCode::UNAUTHORIZED, IssueCode::Login, msg)
}

/// Clinical types a clerk may not see (see [`ResourceType::is_clinical`]).
fn clinical(rt: ResourceType) -> bool {
    rt.is_clinical()
}

/// May `p` do `op` on resources of type `rt`? The role's rights intersected
/// with the token's SMART scopes (SMART scopes delegate: they never widen a
/// role). A grant by a `patient/` scope holds only within the principal's
/// launch patient's compartment, which the patient-level checks enforce.
pub fn authorize_op(p: &Principal, rt: ResourceType, op: Op) -> Result<(), FhirError> {
    authorize_role(p, rt, op.is_write())?;
    let Some(scopes) = &p.scopes else { return Ok(()) };
    match scopes.decide(rt.as_str(), op) {
        Grant::Granted => Ok(()),
        Grant::PatientCompartment if p.patient.is_some() => Ok(()),
        _ => Err(scope_refusal(p, rt, &[op])),
    }
}

/// May `p` read (or, with `write`, change) resources of type `rt` at all?
/// For scopes, reading needs `r` or `s`, and changing needs `c`, `u` or `d`;
/// the exact interaction is checked by [`authorize_op`] where it is known.
pub fn authorize(p: &Principal, rt: ResourceType, write: bool) -> Result<(), FhirError> {
    authorize_role(p, rt, write)?;
    let Some(scopes) = &p.scopes else { return Ok(()) };
    let ops: &[Op] = if write {
        &[Op::Create, Op::Update, Op::Delete]
    } else {
        &[Op::Read, Op::Search]
    };
    let ok = ops.iter().any(|&op| match scopes.decide(rt.as_str(), op) {
        Grant::Granted => true,
        Grant::PatientCompartment => p.patient.is_some(),
        Grant::Denied => false,
    });
    if ok {
        Ok(())
    } else {
        Err(scope_refusal(p, rt, ops))
    }
}

fn scope_refusal(p: &Principal, rt: ResourceType, ops: &[Op]) -> FhirError {
    let granted = p.scopes.as_deref().map(Scopes::to_claim).unwrap_or_default();
    let wanted: Vec<&str> = ops
        .iter()
        .map(|op| match op {
            Op::Create => "create",
            Op::Read => "read",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Search => "search",
        })
        .collect();
    FhirError::new(
        StatusCode::FORBIDDEN,
        IssueCode::Forbidden,
        format!(
            "the token's scopes ({}) do not allow {} on {rt}; ask for a scope such as user/{rt}.cruds",
            if granted.is_empty() {
                "none for FHIR resources".to_string()
            } else {
                granted
            },
            wanted.join(" or ")
        ),
    )
}

/// The role's rights alone.
fn authorize_role(p: &Principal, rt: ResourceType, write: bool) -> Result<(), FhirError> {
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
    fn development_authentication_serves_on_loopback_only() {
        let tokens = AuthConfig {
            tokens: crate::config::demo_tokens(),
            ..AuthConfig::default()
        };
        let open = AuthConfig {
            open_access: true,
            ..AuthConfig::default()
        };
        let oidc_only = AuthConfig::default();
        for (cfg, listen, ok) in [
            (&tokens, "127.0.0.1:8080", true),
            (&tokens, "[::1]:8080", true),
            (&tokens, "localhost:8080", true),
            (&tokens, "0.0.0.0:8080", false),
            (&tokens, "10.1.2.3:8080", false),
            (&open, "127.0.0.1:0", true),
            (&open, "0.0.0.0:8080", false),
            (&oidc_only, "0.0.0.0:8080", true),
        ] {
            assert_eq!(
                check_listen(cfg, listen).is_ok(),
                ok,
                "{listen} {:?}",
                check_listen(cfg, listen)
            );
        }
    }

    #[test]
    fn scopes_narrow_a_role_and_never_widen_it() {
        let with = |role, scopes: &str, patient: Option<&str>| Principal {
            scopes: Some(Arc::new(Scopes::parse(scopes))),
            patient: patient.map(str::to_string),
            ..Principal::new("u", role)
        };
        let p = with(Role::Clinician, "user/Patient.r", None);
        assert!(authorize_op(&p, ResourceType::Patient, Op::Read).is_ok());
        assert!(authorize_op(&p, ResourceType::Patient, Op::Search).is_err());
        assert!(authorize_op(&p, ResourceType::Patient, Op::Create).is_err());
        assert!(authorize(&p, ResourceType::Patient, true).is_err());
        // A clerk's role still forbids clinical types whatever the scope says.
        let clerk = with(Role::Clerk, "user/*.cruds", None);
        assert!(authorize_op(&clerk, ResourceType::Observation, Op::Read).is_err());
        assert!(authorize_op(&clerk, ResourceType::Appointment, Op::Update).is_ok());
        // patient/ scopes need the launch patient.
        let pat = with(Role::Clinician, "patient/*.rs", Some("p1"));
        assert!(authorize_op(&pat, ResourceType::Observation, Op::Search).is_ok());
        let no_ctx = with(Role::Clinician, "patient/*.rs", None);
        assert!(authorize_op(&no_ctx, ResourceType::Observation, Op::Search).is_err());
        // No scopes at all (a static token or a web-UI account): the role decides.
        assert!(authorize_op(
            &Principal::new("u", Role::Clinician),
            ResourceType::Observation,
            Op::Delete
        )
        .is_ok());
    }

    #[test]
    fn basic_credentials_are_base64() {
        // RFC 7617's example.
        assert_eq!(base64_std(b"Aladdin:open sesame"), "QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        assert_eq!(base64_std(b"a"), "YQ==");
        assert_eq!(base64_std(b"ab"), "YWI=");
        assert_eq!(base64_std(b""), "");
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
