//! Who is asking and what they were granted: OpenID Connect access tokens
//! (JWTs checked against the provider's keys) and SMART App Launch v2 scopes.
//!
//! Architecture Invariant: this crate knows nothing of FHIR storage, HTTP
//! routing or Hale's roles. It turns a bearer token into a [`Verified`]
//! identity and a scope string into [`Scopes`]; the server decides what those
//! allow. It fetches nothing itself: the server hands it a [`Fetch`].

pub mod oidc;
pub mod scopes;

pub use oidc::{Endpoints, Fetch, IdToken, OidcSettings, TokenError, UiClient, Validator, Verified};
pub use scopes::{parse_scope, Context, Grant, Op, Scope, ScopeError, Scopes};
