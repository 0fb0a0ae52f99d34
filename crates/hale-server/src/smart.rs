//! How clients learn to authenticate: `/.well-known/smart-configuration`
//! (SMART App Launch 2) and the CapabilityStatement's security section, both
//! from the running configuration, so they say what this node enforces.

use crate::App;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::sync::Arc;

/// The SMART capabilities Hale implements as a resource server.
const CAPABILITIES: &[&str] = &[
    "launch-standalone",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "context-standalone-patient",
    "permission-patient",
    "permission-user",
    "permission-v2",
    "permission-v1",
    "sso-openid-connect",
];

const SCOPES: &[&str] = &[
    "openid",
    "fhirUser",
    "launch/patient",
    "patient/*.rs",
    "user/*.cruds",
    "system/*.rs",
    "system/*.cruds",
];

/// `GET /.well-known/smart-configuration`: 404 when no OpenID provider is
/// configured (static development tokens are not SMART).
pub async fn configuration(State(app): State<Arc<App>>) -> Response {
    let Some(v) = app.auth.oidc() else {
        return crate::wire::FhirError::not_found(
            "this server has no [auth.oidc] provider configured, so it offers no SMART authorisation",
        )
        .into_response();
    };
    let endpoints = v.endpoints().await;
    let mut doc = json!({
        "issuer": v.settings().issuer,
        "jwks_uri": v.settings().jwks_uri,
        "grant_types_supported": ["authorization_code", "client_credentials"],
        "scopes_supported": SCOPES,
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt"],
        "capabilities": CAPABILITIES,
    });
    match endpoints {
        Some(e) => {
            doc["authorization_endpoint"] = json!(e.authorization_endpoint);
            doc["token_endpoint"] = json!(e.token_endpoint);
        }
        None => {
            return crate::wire::FhirError::unavailable(
                "the identity provider's discovery document has not been read yet; try again shortly",
            )
            .into_response()
        }
    }
    if doc["jwks_uri"].is_null() {
        doc.as_object_mut().map(|o| o.remove("jwks_uri"));
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        doc.to_string(),
    )
        .into_response()
}

/// The CapabilityStatement's `rest[0].security`.
pub async fn capability_security(app: &App) -> Value {
    let access = "Patient-level access: a clinician reads a patient's clinical record with a legitimate relationship \
        (an appointment or encounter at their site within the configured window, or CareTeam membership); otherwise \
        403 with an OperationOutcome offering break-glass. patient/ scopes see the launch patient's compartment only. \
        Every read and write is audited (AuditEvent, append-only, hash-chained).";
    match app.auth.oidc() {
        None => json!({
            "cors": false,
            "description": format!(
                "Development mode: static bearer tokens mapped to a user and a role (clinician, clerk, admin, service, \
                 privacy-officer), served on loopback only. {access}"
            ),
        }),
        Some(v) => {
            let mut sec = json!({
                "cors": false,
                "service": [{"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                    "code": "SMART-on-FHIR"
                }]}],
                "description": format!(
                    "OAuth 2.0 bearer access tokens (JWT, typ at+jwt) from {iss}, audience {aud}, checked against the \
                     provider's keys. SMART App Launch v2 scopes (patient/, user/, system/ with .cruds; v1 .read and \
                     .write accepted) are intersected with the Hale role from the '{role}' claim; a batch or \
                     transaction is authorised entry by entry and refused whole. Scopes with ?param restrictions are \
                     not granted. See /.well-known/smart-configuration. {access}",
                    iss = v.settings().issuer,
                    aud = v.settings().audience,
                    role = v.settings().role_claim,
                ),
            });
            if let Some(e) = v.endpoints().await {
                sec["extension"] = json!([{
                    "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                    "extension": [
                        {"url": "authorize", "valueUri": e.authorization_endpoint},
                        {"url": "token", "valueUri": e.token_endpoint}
                    ]
                }]);
            }
            sec
        }
    }
}
