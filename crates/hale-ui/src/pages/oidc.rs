//! Sign in through the trust's OpenID provider: the authorisation code flow
//! with PKCE (RFC 7636, S256), `state` and `nonce`, all kept on this node.
//!
//! `/ui/oidc/start` makes a random state, nonce, PKCE verifier and browser
//! binder, stores them (digests of state and binder) in the node's session
//! file for [`session::PENDING_MS`], sets the binder as a cookie and sends
//! the browser to the provider's authorisation endpoint. `/ui/oidc/callback`
//! takes the pending sign-in once (a replayed or forged state finds nothing),
//! checks the binder cookie (a code delivered to another browser is refused),
//! exchanges the code with the verifier at the token endpoint, verifies the ID
//! token (signature, issuer, audience, expiry, nonce) and the access token
//! with the same validator and claim mapping the API uses, and only then
//! opens a session holding the access token. Every sign-in and every refusal
//! is logged, as local sign-ins are.

use super::render;
use crate::chrome::Chrome;
use crate::{cookie, error_page, same_origin, session, Ui, UiState};
use askama::Template;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use hale_server::App;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// The web UI as a client of the provider (`[auth.oidc.ui]`).
pub struct OidcUi {
    pub client_id: String,
    secret: Option<String>,
    pub scopes: String,
    /// The resource indicator asked for, so the access token is for Hale.
    pub resource: String,
    /// "Sign in with <name>".
    pub name: String,
    /// `<public base URL>/ui/oidc/callback`, registered with the provider.
    pub redirect_uri: String,
    timeout_ms: u64,
}

impl OidcUi {
    /// From `[auth.oidc.ui]`; `None` when it is not set. The redirect URI is
    /// built on `base_url`, or the URL the node advertises for its API.
    pub fn from_config(app: &App) -> Result<Option<OidcUi>, String> {
        let Some(o) = &app.cfg.auth.oidc else { return Ok(None) };
        let Some(c) = &o.ui else { return Ok(None) };
        c.check()?;
        let secret = c.secret()?;
        let base = app.cfg.base_url.clone().unwrap_or_else(|| app.raft.me.api_url.clone());
        Ok(Some(OidcUi {
            client_id: c.client_id.clone(),
            secret,
            scopes: c.scopes.clone(),
            resource: c.resource.clone().unwrap_or_else(|| o.audience.clone()),
            name: c.name.clone(),
            redirect_uri: format!("{}/ui/oidc/callback", base.trim_end_matches('/')),
            timeout_ms: o.fetch_timeout_ms,
        }))
    }
}

/// The cookie tying a sign-in in flight to the browser that started it.
/// `SameSite=Lax`: it must come back on the provider's redirect, a
/// cross-site top-level GET, where a `Strict` cookie is not sent.
fn binder_cookie(ui: &Ui) -> &'static str {
    if ui.secure_cookies {
        "__Host-hale_oidc"
    } else {
        "hale_oidc"
    }
}

fn binder_attrs(ui: &Ui) -> String {
    let secure = if ui.secure_cookies { "; Secure" } else { "" };
    format!(
        "; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
        session::PENDING_MS / 1000
    )
}

fn clear_binder(ui: &Ui, resp: &mut Response) {
    let c = format!("{}=; Max-Age=0; Path=/; HttpOnly; SameSite=Lax", binder_cookie(ui));
    if let Ok(v) = HeaderValue::from_str(&c) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// base64url without padding (RFC 7636 §4.2).
fn b64url(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &x)| acc | (x as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// The S256 code challenge of a PKCE verifier.
pub fn code_challenge(verifier: &str) -> String {
    b64url(&Sha256::digest(verifier.as_bytes()))
}

/// `GET` (a link: a form's redirect to another origin would break the
/// CSP's `form-action 'self'`) or `POST /ui/oidc/start`.
pub async fn start(State(ui): UiState, method: Method, headers: HeaderMap) -> Response {
    if method == Method::POST {
        if let Err(r) = same_origin(&headers) {
            return r;
        }
    }
    let Some(o) = &ui.oidc else {
        return error_page(
            &ui,
            StatusCode::NOT_FOUND,
            "Signing in through the identity provider is not set up on this server. Sign in with your Hale user name and password.",
        );
    };
    let Some(v) = ui.app.auth.oidc() else {
        return error_page(
            &ui,
            StatusCode::NOT_FOUND,
            "[auth.oidc] is not configured on this server.",
        );
    };
    let mut endpoints = v.endpoints().await;
    if endpoints.is_none() {
        // Never discovered (the provider was down when this node started): try now.
        if let Err(e) = v.refresh(false).await {
            tracing::info!(error = %e, "web UI sign-in through the identity provider: discovery failed");
        }
        endpoints = v.endpoints().await;
    }
    let Some(ep) = endpoints else {
        tracing::info!(
            method = "oidc",
            "web UI sign-in refused: the identity provider's endpoints are unknown"
        );
        return error_page(
            &ui,
            StatusCode::SERVICE_UNAVAILABLE,
            "Hale cannot reach the identity provider to start signing you in. Sign in with your Hale user name and password, or try again later.",
        );
    };
    let (state, nonce, verifier, binder) = (
        session::random_token(),
        session::random_token(),
        session::random_token(),
        session::random_token(),
    );
    if let Err(e) = ui
        .sessions
        .put_pending(&state, &binder, &nonce, &verifier, hale_server::now_ms())
    {
        return error_page(&ui, StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
    }
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("response_type", "code")
        .append_pair("client_id", &o.client_id)
        .append_pair("redirect_uri", &o.redirect_uri)
        .append_pair("scope", &o.scopes)
        .append_pair("state", &state)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &code_challenge(&verifier))
        .append_pair("code_challenge_method", "S256")
        .append_pair("resource", &o.resource)
        .finish();
    let sep = if ep.authorization_endpoint.contains('?') {
        '&'
    } else {
        '?'
    };
    let to = format!("{}{sep}{query}", ep.authorization_endpoint);
    tracing::info!(method = "oidc", "web UI sign-in sent to the identity provider");
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(&to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("{}={binder}{}", binder_cookie(&ui), binder_attrs(&ui))) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

#[derive(Template)]
#[template(path = "signin_oidc.html")]
struct Outcome<'a> {
    c: Chrome,
    ok: bool,
    status: u16,
    message: &'a str,
}

/// A refused sign-in: logged, and a page saying what happened and what to do.
fn refused(ui: &Ui, status: StatusCode, why: &str, message: &str) -> Response {
    tracing::info!(method = "oidc", status = status.as_u16(), why, "web UI sign-in refused");
    let mut resp = render(&Outcome {
        c: Chrome::anonymous(Some(ui), "You are not signed in"),
        ok: false,
        status: status.as_u16(),
        message,
    });
    *resp.status_mut() = status;
    clear_binder(ui, &mut resp);
    resp
}

/// `GET /ui/oidc/callback?code&state` (or `?error&state`) from the provider.
pub async fn callback(State(ui): UiState, Query(q): Query<HashMap<String, String>>, headers: HeaderMap) -> Response {
    let Some(o) = &ui.oidc else {
        return error_page(
            &ui,
            StatusCode::NOT_FOUND,
            "Signing in through the identity provider is not set up on this server.",
        );
    };
    let Some(v) = ui.app.auth.oidc() else {
        return error_page(
            &ui,
            StatusCode::NOT_FOUND,
            "[auth.oidc] is not configured on this server.",
        );
    };
    let again = "Go back to the sign-in page and start again.";
    let now = hale_server::now_ms();
    // The state: known, unexpired, and used up now whatever happens next.
    let Some(state) = q.get("state").filter(|s| !s.is_empty()) else {
        return refused(
            &ui,
            StatusCode::BAD_REQUEST,
            "no state",
            &format!("The identity provider's answer did not say which sign-in it belongs to. {again}"),
        );
    };
    let pending = match ui.sessions.take_pending(state, now) {
        Ok(Some(p)) => p,
        Ok(None) => {
            return refused(
                &ui,
                StatusCode::BAD_REQUEST,
                "unknown, used or expired state",
                &format!("This sign-in has expired or was already used (each one works once, for 10 minutes). {again}"),
            )
        }
        Err(e) => return error_page(&ui, StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let bound = cookie(&headers, binder_cookie(&ui))
        .is_some_and(|b| session::same_secret(&session::digest(b), &pending.binder_sha256));
    if !bound {
        return refused(
            &ui,
            StatusCode::BAD_REQUEST,
            "the browser binder cookie is missing or another sign-in's",
            &format!("This sign-in was started in another browser or window, or cookies are blocked for Hale. {again}"),
        );
    }
    if let Some(err) = q.get("error") {
        let desc = q.get("error_description").map(String::as_str).unwrap_or("");
        return refused(
            &ui,
            StatusCode::UNAUTHORIZED,
            &format!("the provider answered {err}: {desc}"),
            &format!(
                "The identity provider did not sign you in ({err}{}{desc}). {again} If you cannot sign in there, use your Hale user name and password.",
                if desc.is_empty() { "" } else { ": " }
            ),
        );
    }
    let Some(code) = q.get("code").filter(|c| !c.is_empty()) else {
        return refused(
            &ui,
            StatusCode::BAD_REQUEST,
            "no code",
            &format!("The identity provider's answer carried no sign-in code. {again}"),
        );
    };
    let Some(ep) = v.endpoints().await else {
        return refused(
            &ui,
            StatusCode::SERVICE_UNAVAILABLE,
            "the token endpoint is unknown",
            "Hale does not know the identity provider's token endpoint. Sign in with your Hale user name and password, or try again later.",
        );
    };
    // The code for tokens: the verifier proves this node started the sign-in.
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", o.redirect_uri.as_str()),
        ("code_verifier", pending.verifier.as_str()),
        ("resource", o.resource.as_str()),
    ];
    let answer = hale_server::auth::token_request(
        &ep.token_endpoint,
        &form,
        (&o.client_id, o.secret.as_deref()),
        o.timeout_ms,
    )
    .await;
    let body: Value = match answer {
        Err(e) => {
            return refused(
                &ui,
                StatusCode::SERVICE_UNAVAILABLE,
                &e,
                "Hale could not reach the identity provider to finish signing you in. Try again, or sign in with your Hale user name and password.",
            )
        }
        Ok((status, bytes)) => {
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if status != 200 {
                let err = body["error"].as_str().unwrap_or("no error code");
                let desc = body["error_description"].as_str().unwrap_or("");
                return refused(
                    &ui,
                    StatusCode::UNAUTHORIZED,
                    &format!("the token endpoint answered {status} {err}: {desc}"),
                    &format!("The identity provider refused to complete the sign-in ({err}{}{desc}). {again}", if desc.is_empty() { "" } else { ": " }),
                );
            }
            body
        }
    };
    let (Some(access_token), Some(id_token)) = (body["access_token"].as_str(), body["id_token"].as_str()) else {
        return refused(
            &ui,
            StatusCode::UNAUTHORIZED,
            "the token answer lacks access_token or id_token",
            &format!("The identity provider's answer lacked an access token or an ID token (is 'openid' among the scopes in [auth.oidc.ui]?). {again}"),
        );
    };
    if !body["token_type"]
        .as_str()
        .is_some_and(|t| t.eq_ignore_ascii_case("bearer"))
    {
        return refused(
            &ui,
            StatusCode::UNAUTHORIZED,
            &format!("token_type {}", body["token_type"]),
            &format!("The identity provider issued a token that is not a bearer token ({}); Hale accepts bearer tokens only. {again}", body["token_type"]),
        );
    }
    let id = match v.verify_id_token(id_token, &o.client_id, &pending.nonce).await {
        Ok(id) => id,
        Err(e) => {
            return refused(
                &ui,
                StatusCode::UNAUTHORIZED,
                &format!("ID token: {e}"),
                &format!("The identity provider's ID token was not valid: {e}. {again}"),
            )
        }
    };
    // The access token: what the API will see on every call this session makes.
    let verified = match v.verify(access_token).await {
        Ok(t) => t,
        Err(e) => {
            return refused(
                &ui,
                StatusCode::UNAUTHORIZED,
                &format!("access token: {e}"),
                &format!("The identity provider's access token is not one Hale accepts: {e}. Check [auth.oidc] audience and the resource indicator. {again}"),
            )
        }
    };
    if verified.subject != id.subject {
        return refused(
            &ui,
            StatusCode::UNAUTHORIZED,
            "the ID token and the access token name different subjects",
            &format!("The identity provider's tokens name different users. {again}"),
        );
    }
    let principal = match ui.app.auth.oidc_principal(access_token).await {
        Ok(p) => p,
        Err(e) => {
            let why = e
                .issues
                .iter()
                .map(|i| i.diagnostics.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            return refused(
                &ui,
                e.status,
                &why,
                &format!("You signed in at the identity provider, but Hale cannot let you in: {why}. Ask IT to give your account a Hale role."),
            );
        }
    };
    let exp_ms = (verified.expires_at_secs as i64).saturating_mul(1000);
    if exp_ms <= now {
        return refused(
            &ui,
            StatusCode::UNAUTHORIZED,
            "the access token has expired",
            &format!("The identity provider's access token had already expired. {again}"),
        );
    }
    let sid = match ui
        .sessions
        .create_oidc(&principal.user, principal.role.as_str(), access_token, exp_ms, now)
    {
        Ok(id) => id,
        Err(e) => return error_page(&ui, StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    tracing::info!(
        user = %principal.user,
        role = principal.role.as_str(),
        site = principal.site.as_deref().unwrap_or(""),
        method = "oidc",
        token_expires_in_s = (exp_ms - now) / 1000,
        "web UI sign-in"
    );
    // A page, not a redirect: the session cookie is SameSite=Strict, and a
    // browser does not send it on a redirect chain that began at the
    // provider; the page's refresh to /ui/ is a same-site navigation.
    let mut resp = render(&Outcome {
        c: Chrome::anonymous(Some(&*ui), "Signed in"),
        ok: true,
        status: 200,
        message: &principal.user,
    });
    let attrs = if ui.secure_cookies {
        "; Path=/; Secure; HttpOnly; SameSite=Strict"
    } else {
        "; Path=/; HttpOnly; SameSite=Strict"
    };
    if let Ok(v) = HeaderValue::from_str(&format!("{}={sid}{attrs}", ui.cookie_name())) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    clear_binder(&ui, &mut resp);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256_matches_rfc_7636() {
        // RFC 7636 Appendix B.
        assert_eq!(
            code_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert_eq!(b64url(b"a"), "YQ");
        assert_eq!(b64url(b"ab"), "YWI");
        assert_eq!(b64url(b"\xfb\xff"), "-_8");
    }
}
