//! Bearer access tokens from the trust's OpenID provider: JWT validation
//! against the provider's JWKS, with a key cache that survives a restart and a
//! cut-off site.
//!
//! The checks, in order (RFC 9068 §4 and RFC 8725):
//! 1. the header parses, its `alg` is one of the configured asymmetric
//!    algorithms (never `none`, never an HMAC: an HS256 token "signed" with the
//!    public key fails here), and it names a `kid`;
//! 2. `typ` is `at+jwt` (an ID token, `typ: JWT`, is not an access token);
//! 3. the key with that `kid` is in the cache, or is after one refetch of the
//!    JWKS (at most one refetch per cooldown, however many unknown `kid`s
//!    arrive); the key's own `alg`, when it states one, equals the header's;
//! 4. the signature verifies with that key, and `iss` equals the issuer,
//!    `aud` contains the audience, `exp` is in the future and `nbf` in the past,
//!    each with a small leeway; `sub` is present.
//!
//! Keys are fetched from the `jwks_uri` found by OIDC discovery (or
//! configured). Every successful fetch is written to the cache file, so a node
//! restarted while the provider is unreachable still validates tokens signed
//! with the keys it last saw, until they expire.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::scopes::Scopes;

/// `[auth.oidc]`: where tokens come from and how their claims map to Hale's user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OidcSettings {
    /// The provider's issuer URL, exactly as tokens carry it in `iss`.
    pub issuer: String,
    /// This server's identifier: tokens must carry it in `aud`.
    pub audience: String,
    /// The JWKS URL. When absent it is read from
    /// `<issuer>/.well-known/openid-configuration`.
    pub jwks_uri: Option<String>,
    /// Signature algorithms accepted. Asymmetric only.
    pub algorithms: Vec<String>,
    /// Clock leeway for `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// Accepted `typ` header values (compared case-insensitively).
    pub token_types: Vec<String>,
    /// At most one JWKS refetch for an unknown `kid` per this many seconds.
    pub refetch_cooldown_secs: u64,
    /// Refetch the JWKS in the background when the cached copy is older than this.
    pub cache_max_age_secs: u64,
    /// Timeout of one discovery or JWKS request, in milliseconds.
    pub fetch_timeout_ms: u64,
    /// Claim holding the user name (`sub` by default; `preferred_username` is common).
    pub user_claim: String,
    /// Claim holding the Hale role (a string, or an array whose first mapped value wins).
    pub role_claim: String,
    /// Maps claim values to Hale roles (`"R8000" = "clinician"`); a value that
    /// is already a Hale role name maps to itself.
    pub role_map: BTreeMap<String, String>,
    /// Claim holding the user's site.
    pub site_claim: String,
    /// Claim holding the SMART launch patient.
    pub patient_claim: String,
    /// `[auth.oidc.ui]`: the web UI signs staff in through this provider
    /// (authorisation code with PKCE) when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ui: Option<UiClient>,
}

/// `[auth.oidc.ui]`: the web UI as an OpenID client of the provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UiClient {
    /// The client id the provider registered for Hale's web UI.
    pub client_id: String,
    /// Its secret (sent with HTTP Basic to the token endpoint). Prefer
    /// `client_secret_file`; with neither, the UI is a public client (PKCE only).
    pub client_secret: Option<String>,
    /// A file holding the secret (trailing whitespace removed).
    pub client_secret_file: Option<PathBuf>,
    /// Scopes requested: `openid` and the SMART scopes the UI's work needs
    /// (the user's role still narrows them).
    pub scopes: String,
    /// The resource indicator (RFC 8707) sent so the access token is issued
    /// for Hale's audience; default: `audience`.
    pub resource: Option<String>,
    /// Shown on the button: "Sign in with <name>".
    pub name: String,
}

impl Default for UiClient {
    fn default() -> Self {
        UiClient {
            client_id: String::new(),
            client_secret: None,
            client_secret_file: None,
            scopes: UI_SCOPES_DEFAULT.into(),
            resource: None,
            name: "your organisation's account".into(),
        }
    }
}

/// What the web UI asks for by default: an ID token, and every interaction
/// on every type as the user (the user's Hale role decides what is allowed).
pub const UI_SCOPES_DEFAULT: &str = "openid user/*.cruds";

impl UiClient {
    /// Check the settings; the error says which field and what to do.
    pub fn check(&self) -> Result<(), String> {
        if self.client_id.trim().is_empty() {
            return Err("[auth.oidc.ui] client_id is empty: set it to the client id the identity provider registered for Hale's web UI".into());
        }
        if self.client_secret.is_some() && self.client_secret_file.is_some() {
            return Err(
                "[auth.oidc.ui] names both client_secret and client_secret_file: keep one (the file is better)".into(),
            );
        }
        if !self.scopes.split_whitespace().any(|s| s == "openid") {
            return Err(format!(
                "[auth.oidc.ui] scopes '{}' lack 'openid': the sign-in needs an ID token to check its nonce",
                self.scopes
            ));
        }
        Ok(())
    }

    /// The client secret, read from `client_secret_file` when that is set.
    pub fn secret(&self) -> Result<Option<String>, String> {
        match (&self.client_secret, &self.client_secret_file) {
            (Some(s), _) => Ok(Some(s.clone())),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(|s| Some(s.trim_end().to_string()))
                .map_err(|e| format!("[auth.oidc.ui] client_secret_file {}: {e}", path.display())),
            (None, None) => Ok(None),
        }
    }
}

impl Default for OidcSettings {
    fn default() -> Self {
        OidcSettings {
            issuer: String::new(),
            audience: String::new(),
            jwks_uri: None,
            algorithms: vec![
                "RS256".into(),
                "PS256".into(),
                "ES256".into(),
                "ES384".into(),
                "EdDSA".into(),
            ],
            leeway_secs: 30,
            token_types: vec!["at+jwt".into(), "application/at+jwt".into()],
            refetch_cooldown_secs: 30,
            cache_max_age_secs: 600,
            fetch_timeout_ms: 5_000,
            user_claim: "sub".into(),
            role_claim: "hale_role".into(),
            role_map: BTreeMap::new(),
            site_claim: "hale_site".into(),
            patient_claim: "patient".into(),
            ui: None,
        }
    }
}

impl OidcSettings {
    /// Check the settings; the error says which field and what to do.
    pub fn check(&self) -> Result<Vec<Algorithm>, String> {
        if self.issuer.trim().is_empty() {
            return Err("[auth.oidc] issuer is empty: set it to the provider's issuer URL".into());
        }
        if self.audience.trim().is_empty() {
            return Err("[auth.oidc] audience is empty: set it to this server's identifier in the provider (the resource indicator)".into());
        }
        if self.algorithms.is_empty() {
            return Err("[auth.oidc] algorithms is empty: name at least one, e.g. [\"RS256\", \"ES256\"]".into());
        }
        if let Some(ui) = &self.ui {
            ui.check()?;
        }
        self.algorithms
            .iter()
            .map(|a| {
                let alg: Algorithm = a
                    .parse()
                    .map_err(|_| format!("[auth.oidc] algorithms: '{a}' is not a JWS algorithm"))?;
                if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                    return Err(format!(
                        "[auth.oidc] algorithms: '{a}' is a shared-secret algorithm; only the provider's public keys are used, so name RS256, PS256, ES256, ES384 or EdDSA"
                    ));
                }
                Ok(alg)
            })
            .collect()
    }
}

/// Fetches a URL's body. Implemented by the server with its HTTP client, so
/// this crate needs no network stack of its own.
pub trait Fetch: Send + Sync + 'static {
    fn get<'a>(&'a self, url: &'a str) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + 'a>>;
}

/// Why a token was refused. Each maps to a 401 `invalid_token`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a JWT: {0}")]
    Malformed(String),
    #[error("the token's algorithm '{0}' is not accepted")]
    Algorithm(String),
    #[error("the token's type is '{0}', not an access token (at+jwt); an ID token cannot be used as a bearer token")]
    Type(String),
    #[error("the token names no key id (kid)")]
    NoKeyId,
    #[error("the token's key id '{0}' is not one of the provider's keys")]
    UnknownKey(String),
    #[error("the provider's keys could not be fetched and none are cached: {0}")]
    NoKeys(String),
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token was issued by '{0}', not by the configured issuer")]
    Issuer(String),
    #[error("the token's audience does not include this server")]
    Audience,
    #[error("the token's signature does not verify")]
    Signature,
    #[error("the token lacks the '{0}' claim")]
    MissingClaim(String),
    #[error("the token is invalid: {0}")]
    Invalid(String),
}

/// A validated token's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub user: String,
    /// The token's `sub` (the same as `user` unless `user_claim` names another claim).
    pub subject: String,
    /// The role claim's value mapped through `role_map` (not yet checked
    /// against Hale's role names: the server does that).
    pub role: Option<String>,
    pub site: Option<String>,
    pub patient: Option<String>,
    pub scopes: Scopes,
    pub client_id: Option<String>,
    pub jti: Option<String>,
    /// `exp`, seconds since the epoch.
    pub expires_at_secs: u64,
}

/// A verified ID token: who signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdToken {
    pub subject: String,
    pub name: Option<String>,
    pub expires_at_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheFile {
    issuer: String,
    jwks_uri: String,
    /// Seconds since the epoch of the fetch.
    fetched_at_secs: u64,
    keys: JwkSet,
    #[serde(default)]
    endpoints: Option<Endpoints>,
}

/// Where clients get tokens, from the provider's discovery document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoints {
    pub authorization_endpoint: String,
    pub token_endpoint: String,
}

struct Keys {
    jwks_uri: Option<String>,
    endpoints: Option<Endpoints>,
    set: JwkSet,
    fetched: Option<Instant>,
}

/// Validates access tokens; shared by every request (cheap to clone the Arc).
pub struct Validator {
    settings: OidcSettings,
    algorithms: Vec<Algorithm>,
    fetcher: Arc<dyn Fetch>,
    cache_path: Option<PathBuf>,
    keys: tokio::sync::RwLock<Keys>,
    /// Serialises fetches and remembers when the last one was tried.
    last_attempt: tokio::sync::Mutex<Option<Instant>>,
    fetches: AtomicU64,
    /// Tokens already verified, by SHA-256 of the whole token, until their
    /// `exp`: a client sends the same token on every request, and a signature
    /// check costs far more than the read it guards. Bounded by [`VERIFIED_CACHE_MAX`].
    verified: std::sync::Mutex<std::collections::HashMap<[u8; 32], Verified>>,
}

/// Most verified tokens remembered; the cache is emptied when full.
pub const VERIFIED_CACHE_MAX: usize = 10_000;

impl Validator {
    /// A validator for `settings`, with keys loaded from `cache_path` if it
    /// holds a cache for the same issuer. Fetches nothing yet.
    pub fn new(
        settings: OidcSettings,
        fetcher: Arc<dyn Fetch>,
        cache_path: Option<PathBuf>,
    ) -> Result<Validator, String> {
        let algorithms = settings.check()?;
        let mut keys = Keys {
            jwks_uri: settings.jwks_uri.clone(),
            endpoints: None,
            set: JwkSet { keys: Vec::new() },
            fetched: None,
        };
        if let Some(path) = &cache_path {
            match std::fs::read(path) {
                Ok(bytes) => match serde_json::from_slice::<CacheFile>(&bytes) {
                    Ok(c) if c.issuer == settings.issuer => {
                        keys.jwks_uri = keys.jwks_uri.or(Some(c.jwks_uri));
                        keys.endpoints = c.endpoints;
                        keys.set = c.keys;
                    }
                    Ok(_) => tracing::warn!(path = %path.display(), "the JWKS cache is for another issuer; ignored"),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "the JWKS cache is unreadable; ignored")
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "could not read the JWKS cache"),
            }
        }
        Ok(Validator {
            settings,
            algorithms,
            fetcher,
            cache_path,
            keys: tokio::sync::RwLock::new(keys),
            last_attempt: tokio::sync::Mutex::new(None),
            fetches: AtomicU64::new(0),
            verified: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    pub fn settings(&self) -> &OidcSettings {
        &self.settings
    }

    /// JWKS fetches attempted so far (discovery not counted).
    pub fn jwks_fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Number of keys held.
    pub async fn key_count(&self) -> usize {
        self.keys.read().await.set.keys.len()
    }

    /// Fetch the keys now (at start, and when the cache is old). `force`
    /// ignores the cooldown.
    pub async fn refresh(&self, force: bool) -> Result<(), String> {
        let mut last = self.last_attempt.lock().await;
        let cooldown = Duration::from_secs(self.settings.refetch_cooldown_secs);
        if !force && last.is_some_and(|t| t.elapsed() < cooldown) {
            return Err("the provider's keys were fetched moments ago; not fetched again yet".into());
        }
        *last = Some(Instant::now());
        let timeout = Duration::from_millis(self.settings.fetch_timeout_ms.max(1));
        let (known_uri, known_endpoints) = {
            let k = self.keys.read().await;
            (k.jwks_uri.clone(), k.endpoints.clone())
        };
        let (uri, endpoints) = match (known_uri, known_endpoints) {
            (Some(u), Some(e)) => (u, Some(e)),
            (known, _) => match self.discover(timeout).await {
                Ok((u, e)) => {
                    let u = known.unwrap_or(u);
                    let mut k = self.keys.write().await;
                    k.jwks_uri = Some(u.clone());
                    k.endpoints = e.clone();
                    (u, e)
                }
                // A configured jwks_uri works without discovery.
                Err(why) => match known {
                    Some(u) => {
                        tracing::warn!(error = %why, "OpenID discovery failed; using the configured jwks_uri");
                        (u, None)
                    }
                    None => return Err(why),
                },
            },
        };
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let body = tokio::time::timeout(timeout, self.fetcher.get(&uri))
            .await
            .map_err(|_| format!("fetching {uri} timed out"))??;
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| format!("{uri} is not a JWKS: {e}"))?;
        if let Some(path) = &self.cache_path {
            let file = CacheFile {
                issuer: self.settings.issuer.clone(),
                jwks_uri: uri.clone(),
                fetched_at_secs: now_secs(),
                keys: set.clone(),
                endpoints,
            };
            if let Err(e) = write_atomically(path, &serde_json::to_vec_pretty(&file).unwrap_or_default()) {
                tracing::warn!(path = %path.display(), error = %e, "could not save the JWKS cache");
            }
        }
        let mut keys = self.keys.write().await;
        keys.set = set;
        keys.fetched = Some(Instant::now());
        tracing::info!(jwks_uri = %uri, keys = keys.set.keys.len(), "fetched the identity provider's keys");
        Ok(())
    }

    async fn discover(&self, timeout: Duration) -> Result<(String, Option<Endpoints>), String> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.settings.issuer.trim_end_matches('/')
        );
        let body = tokio::time::timeout(timeout, self.fetcher.get(&url))
            .await
            .map_err(|_| format!("fetching {url} timed out"))??;
        let doc: Value = serde_json::from_slice(&body).map_err(|e| format!("{url} is not JSON: {e}"))?;
        if doc["issuer"].as_str() != Some(self.settings.issuer.as_str()) {
            return Err(format!(
                "{url} names issuer {} but [auth.oidc] issuer is '{}': they must be equal",
                doc["issuer"], self.settings.issuer
            ));
        }
        let jwks_uri = doc["jwks_uri"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("{url} has no jwks_uri"))?;
        let endpoints = match (doc["authorization_endpoint"].as_str(), doc["token_endpoint"].as_str()) {
            (Some(a), Some(t)) => Some(Endpoints {
                authorization_endpoint: a.into(),
                token_endpoint: t.into(),
            }),
            _ => None,
        };
        Ok((jwks_uri, endpoints))
    }

    /// The provider's authorisation and token endpoints, once discovered.
    pub async fn endpoints(&self) -> Option<Endpoints> {
        self.keys.read().await.endpoints.clone()
    }

    /// Whether the cached keys are older than `cache_max_age_secs` (or were never fetched).
    pub async fn stale(&self) -> bool {
        let max = Duration::from_secs(self.settings.cache_max_age_secs);
        self.keys.read().await.fetched.is_none_or(|t| t.elapsed() > max)
    }

    /// Validate a bearer access token: from the verified-token cache while it
    /// has not expired, else [`Validator::verify`].
    pub async fn validate(&self, token: &str) -> Result<Verified, TokenError> {
        use sha2::Digest;
        let key: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let now = now_secs();
        if let Some(v) = self.verified.lock().ok().and_then(|m| m.get(&key).cloned()) {
            // The same leeway as the full check: a cached token expires when it would.
            if now <= v.expires_at_secs.saturating_add(self.settings.leeway_secs) {
                return Ok(v);
            }
            return Err(TokenError::Expired);
        }
        let v = self.verify(token).await?;
        if let Ok(mut m) = self.verified.lock() {
            if m.len() >= VERIFIED_CACHE_MAX {
                m.clear();
            }
            m.insert(key, v.clone());
        }
        Ok(v)
    }

    /// Validate a bearer access token fully (signature and claims), bypassing the cache.
    pub async fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::Json(_) | jsonwebtoken::errors::ErrorKind::Base64(_) => {
                // `alg: none` and unknown algorithms fail to parse as a header.
                TokenError::Malformed(format!(
                    "{e} (the header's alg must be one of {})",
                    self.settings.algorithms.join(", ")
                ))
            }
            _ => TokenError::Malformed(e.to_string()),
        })?;
        if !self.algorithms.contains(&header.alg) {
            return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
        }
        let typ = header.typ.clone().unwrap_or_default();
        if !self.settings.token_types.iter().any(|t| t.eq_ignore_ascii_case(&typ)) {
            return Err(TokenError::Type(typ));
        }
        let key = self.key_of(&header).await?;
        let mut v = Validation::new(header.alg);
        v.algorithms = vec![header.alg];
        v.leeway = self.settings.leeway_secs;
        v.validate_nbf = true;
        v.set_issuer(&[&self.settings.issuer]);
        v.set_audience(&[&self.settings.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature => TokenError::Expired,
                K::ImmatureSignature => TokenError::NotYetValid,
                K::InvalidIssuer => TokenError::Issuer(String::new()),
                K::InvalidAudience => TokenError::Audience,
                K::InvalidSignature => TokenError::Signature,
                K::MissingRequiredClaim(c) => TokenError::MissingClaim(c.clone()),
                _ => TokenError::Invalid(e.to_string()),
            }
        });
        let claims = match data {
            Ok(d) => d.claims,
            Err(TokenError::Issuer(_)) => {
                let iss = jsonwebtoken::dangerous::insecure_decode_claims::<Map<String, Value>>(token)
                    .ok()
                    .and_then(|c| c.get("iss").and_then(Value::as_str).map(str::to_string))
                    .unwrap_or_default();
                return Err(TokenError::Issuer(iss.chars().take(200).collect()));
            }
            Err(e) => return Err(e),
        };
        self.identity(&claims)
    }

    /// The key the header names, after one rate-limited refetch of the JWKS
    /// for an unknown key id (a rotation).
    async fn key_of(&self, header: &jsonwebtoken::Header) -> Result<DecodingKey, TokenError> {
        let kid = header.kid.clone().ok_or(TokenError::NoKeyId)?;
        if let Some(k) = self.key(&kid, header.alg).await? {
            return Ok(k);
        }
        let fetched = self.refresh(false).await;
        match self.key(&kid, header.alg).await? {
            Some(k) => Ok(k),
            None => Err(match fetched {
                Err(why) if self.key_count().await == 0 => TokenError::NoKeys(why),
                _ => TokenError::UnknownKey(kid.chars().take(100).collect()),
            }),
        }
    }

    /// Verify an ID token from the authorisation-code flow of `client_id`
    /// (OpenID Connect Core §3.1.3.7): an allowed asymmetric algorithm, one of
    /// the provider's keys, `iss` the issuer, `aud` containing `client_id`
    /// (and `azp`, when present, equal to it), `exp` in the future, and
    /// `nonce` equal to the one this sign-in sent.
    pub async fn verify_id_token(&self, token: &str, client_id: &str, nonce: &str) -> Result<IdToken, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
        }
        let typ = header.typ.clone().unwrap_or_default();
        if self.settings.token_types.iter().any(|t| t.eq_ignore_ascii_case(&typ)) {
            return Err(TokenError::Invalid(format!(
                "a token of type '{typ}' is an access token, not an ID token"
            )));
        }
        let key = self.key_of(&header).await?;
        let mut v = Validation::new(header.alg);
        v.algorithms = vec![header.alg];
        v.leeway = self.settings.leeway_secs;
        v.validate_nbf = true;
        v.set_issuer(&[&self.settings.issuer]);
        v.set_audience(&[client_id]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &v)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::ExpiredSignature => TokenError::Expired,
                    K::ImmatureSignature => TokenError::NotYetValid,
                    K::InvalidIssuer => TokenError::Issuer(String::new()),
                    K::InvalidAudience => TokenError::Invalid("the ID token was issued to another client".into()),
                    K::InvalidSignature => TokenError::Signature,
                    K::MissingRequiredClaim(c) => TokenError::MissingClaim(c.clone()),
                    _ => TokenError::Invalid(e.to_string()),
                }
            })?
            .claims;
        let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_string);
        if let Some(azp) = text("azp") {
            if azp != client_id {
                return Err(TokenError::Invalid(format!(
                    "the ID token's authorised party is '{azp}', not this client"
                )));
            }
        }
        match text("nonce") {
            Some(n) if n == nonce => {}
            Some(_) => return Err(TokenError::Invalid("the ID token's nonce is not this sign-in's".into())),
            None => return Err(TokenError::MissingClaim("nonce".into())),
        }
        Ok(IdToken {
            subject: text("sub").unwrap_or_default(),
            name: text("name"),
            expires_at_secs: claims.get("exp").and_then(Value::as_u64).unwrap_or(0),
        })
    }

    /// The key for `kid`, usable with `alg`; `Ok(None)` when not cached.
    async fn key(&self, kid: &str, alg: Algorithm) -> Result<Option<DecodingKey>, TokenError> {
        let keys = self.keys.read().await;
        let Some(jwk) = keys.set.find(kid) else {
            return Ok(None);
        };
        if let Some(key_alg) = jwk.common.key_algorithm {
            if format!("{key_alg:?}") != format!("{alg:?}") {
                return Err(TokenError::Algorithm(format!(
                    "{alg:?} (the key '{kid}' is for {key_alg:?})"
                )));
            }
        }
        DecodingKey::from_jwk(jwk)
            .map(Some)
            .map_err(|e| TokenError::Invalid(format!("the key '{kid}' is unusable: {e}")))
    }

    fn identity(&self, c: &Map<String, Value>) -> Result<Verified, TokenError> {
        let s = &self.settings;
        let text = |name: &str| c.get(name).and_then(Value::as_str).map(str::to_string);
        let user = text(&s.user_claim)
            .filter(|u| !u.is_empty())
            .ok_or_else(|| TokenError::MissingClaim(s.user_claim.clone()))?;
        let role_values: Vec<String> = match c.get(&s.role_claim) {
            Some(Value::String(v)) => vec![v.clone()],
            Some(Value::Array(vs)) => vs.iter().filter_map(Value::as_str).map(str::to_string).collect(),
            _ => Vec::new(),
        };
        let role = role_values
            .iter()
            .find_map(|v| s.role_map.get(v).cloned())
            .or_else(|| role_values.first().cloned());
        // `scope` is a space-separated string (RFC 8693 / 9068); some providers send `scp` as an array.
        let scope = match (c.get("scope"), c.get("scp")) {
            (Some(Value::String(v)), _) => v.clone(),
            (_, Some(Value::Array(vs))) => vs.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" "),
            _ => String::new(),
        };
        Ok(Verified {
            user,
            subject: text("sub").unwrap_or_default(),
            role,
            site: text(&s.site_claim),
            patient: text(&s.patient_claim),
            scopes: Scopes::parse(&scope),
            client_id: text("client_id"),
            jti: text("jti"),
            expires_at_secs: c.get("exp").and_then(Value::as_u64).unwrap_or(0),
        })
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
