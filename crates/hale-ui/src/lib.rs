//! Hale's staff web UI: HTML pages rendered on the node the user reaches,
//! a cut-off site replica included, with plain forms that work with
//! JavaScript off. Styling is the NHS.UK frontend, vendored and compiled in.
//!
//! Architecture invariant: this crate knows HTML, cookies and forms; it does
//! not know SQL or the store's tables. Patient data comes and goes only
//! through [`fhir::Client`], the FHIR API's own handler called in-process as
//! the signed-in user, so the UI can never skip authorisation, read audit or
//! the site journal. It holds one node-local file of its own: sessions.
//!
//! Staff sign in with a local account (`pages::signin`) or through the
//! trust's OpenID provider (`pages::oidc`: authorisation code with PKCE);
//! a provider session's FHIR calls carry the user's own access token.

// Page helpers return the page to show instead (`Result<_, Response>`): the
// error *is* the answer, built once per request, so boxing it buys nothing.
#![allow(clippy::result_large_err)]

pub mod assets;
mod chrome;
pub mod fhir;
mod pages;
pub mod session;
pub mod view;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use hale_server::auth::Principal;
use hale_server::App;
use std::sync::Arc;

pub use chrome::Chrome;

/// Largest form body the UI accepts.
pub const FORM_BYTES_MAX: usize = 64 * 1024;

/// The UI's state beside the node's.
pub struct Ui {
    pub app: Arc<App>,
    pub sessions: session::Sessions,
    /// Send `Secure` cookies with the `__Host-` prefix. Off only for plain
    /// HTTP on a loopback address (development), where browsers would drop them.
    pub secure_cookies: bool,
    /// Failed sign-ins per user name, to slow guessing: (count, last failure ms).
    pub failures: parking_lot::Mutex<std::collections::HashMap<String, (u32, i64)>>,
    /// Sign-in through the trust's OpenID provider, when `[auth.oidc.ui]` is set.
    pub oidc: Option<pages::oidc::OidcUi>,
}

/// Why the UI could not start.
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error(transparent)]
    Session(#[from] session::SessionError),
    #[error("{0}")]
    Config(String),
}

impl Ui {
    pub fn new(app: Arc<App>) -> Result<Arc<Ui>, UiError> {
        let sessions = session::Sessions::open(&app.cfg.data)?;
        let secure_cookies = secure_cookies(&app.cfg.listen, app.cfg.base_url.as_deref(), app.cfg.tls.enabled());
        let oidc = pages::oidc::OidcUi::from_config(&app).map_err(UiError::Config)?;
        Ok(Arc::new(Ui {
            app,
            sessions,
            secure_cookies,
            failures: Default::default(),
            oidc,
        }))
    }

    pub fn cookie_name(&self) -> &'static str {
        if self.secure_cookies {
            "__Host-hale_session"
        } else {
            "hale_session"
        }
    }
}

/// `Secure` cookies unless the node serves plain HTTP on loopback.
pub fn secure_cookies(listen: &str, base_url: Option<&str>, tls: bool) -> bool {
    if tls || base_url.is_some_and(|u| u.starts_with("https://")) {
        return true;
    }
    let host = listen.rsplit_once(':').map(|(h, _)| h).unwrap_or(listen);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false);
    !loopback
}

/// The UI's routes, all under `/ui/`, plus `/` for a browser.
pub fn router(ui: Arc<Ui>) -> Router {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(pages::find::page))
        .route("/ui/find", post(pages::find::submit))
        .route("/ui/sign-in", get(pages::signin::page).post(pages::signin::submit))
        .route("/ui/sign-out", post(pages::signin::sign_out))
        .route("/ui/oidc/start", get(pages::oidc::start).post(pages::oidc::start))
        .route("/ui/oidc/callback", get(pages::oidc::callback))
        .route("/ui/patient/{id}", get(pages::record::page))
        .route("/ui/patient/{id}/print", get(pages::record::print))
        .route(
            "/ui/patient/{id}/note",
            get(pages::note::page).post(pages::note::submit),
        )
        .route(
            "/ui/patient/{id}/observation",
            get(pages::note::obs_page).post(pages::note::obs_submit),
        )
        .route("/ui/patient/{id}/break-glass", post(pages::privacy::break_glass))
        .route("/ui/break-glass", get(pages::privacy::review))
        .route("/ui/break-glass/{id}/close", post(pages::privacy::close))
        .route("/ui/who-looked", get(pages::privacy::who_looked))
        .route("/ui/clinics", get(pages::clinic::index))
        .route("/ui/clinic/{id}", get(pages::clinic::list))
        .route("/ui/clinic/{id}/print", get(pages::clinic::print))
        .route("/ui/appointment/{id}/status", post(pages::clinic::set_status))
        .route("/ui/book", get(pages::book::slots))
        .route("/ui/book/check", get(pages::book::check))
        .route("/ui/book/confirm", post(pages::book::confirm))
        .route("/ui/outage", get(pages::outage::page))
        .route("/ui/outage/declare", post(pages::outage::declare))
        .route("/ui/outage/postpone", post(pages::outage::postpone))
        .route("/ui/outage/rebook", post(pages::outage::rebook))
        .route(
            "/ui/outage/backfill",
            get(pages::backfill::page).post(pages::backfill::submit),
        )
        .route("/ui/ops", get(pages::ops::page))
        .route("/ui/assets/{tag}/ui.css", get(assets::css))
        .route("/ui/assets/images/{name}", get(assets::image))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(ui)
}

/// `GET /` from a browser goes to the UI; FHIR clients keep their answer.
pub fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

pub async fn root_redirect(req: Request, next: Next) -> Response {
    if req.method() == Method::GET && req.uri().path() == "/" && wants_html(req.headers()) {
        return Redirect::to("/ui/").into_response();
    }
    next.run(req).await
}

/// Headers on every UI response: a strict CSP with no inline script, no
/// framing, no referrer, and `no-store` unless an asset says otherwise.
async fn security_headers(req: Request, next: Next) -> Response {
    let gzip = req
        .headers()
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    let mut resp = next.run(req).await;
    if gzip {
        resp = gzip_html(resp).await;
    }
    let h = resp.headers_mut();
    let set = |h: &mut HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(
        h,
        "content-security-policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    );
    set(h, "x-content-type-options", "nosniff");
    // Same-origin only: no URL leaves for another site, and form posts still
    // carry a real `Origin` (with `no-referrer` browsers send `Origin: null`).
    set(h, "referrer-policy", "same-origin");
    set(h, "x-frame-options", "DENY");
    set(h, "cross-origin-opener-policy", "same-origin");
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, "cache-control", "no-store");
    }
    resp
}

/// Pages larger than this are sent gzip-compressed when the browser takes it.
const GZIP_BYTES_MIN: usize = 1024;

/// Compress an HTML page (assets come pre-compressed).
async fn gzip_html(resp: Response) -> Response {
    use std::io::Write;
    let is_html = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
    if !is_html || resp.headers().contains_key(header::CONTENT_ENCODING) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 16 << 20).await else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "page too large").into_response();
    };
    if bytes.len() < GZIP_BYTES_MIN {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::with_capacity(bytes.len() / 4), flate2::Compression::fast());
    if gz.write_all(&bytes).is_err() {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    }
    match gz.finish() {
        Ok(z) => {
            parts
                .headers
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            parts
                .headers
                .insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, axum::body::Body::from(z))
        }
        Err(_) => Response::from_parts(parts, axum::body::Body::from(bytes)),
    }
}

/// A signed-in user on a request.
pub struct Signed {
    pub principal: Principal,
    pub csrf: String,
    pub session_id: String,
    pub name: String,
    /// The access token of a session signed in through the identity
    /// provider: the UI's FHIR calls send it as `Authorization: Bearer`, so
    /// the token's scopes apply and a forwarded write is re-checked by the
    /// leader with the user's own credential. `None` for a local account.
    pub bearer: Option<String>,
}

impl Signed {
    /// The FHIR client acting as this user.
    pub fn client(&self, ui: &Ui) -> fhir::Client {
        fhir::Client {
            app: ui.app.clone(),
            principal: self.principal.clone(),
            bearer: self.bearer.clone(),
        }
    }

    /// The headers that make a request to one of the server's handlers act
    /// as this user (what [`fhir::Client`] sends).
    pub fn fhir_headers(&self, app: &App) -> HeaderMap {
        let mut h = HeaderMap::new();
        match &self.bearer {
            Some(t) => {
                if let Ok(v) = HeaderValue::from_str(&format!("Bearer {t}")) {
                    h.insert(header::AUTHORIZATION, v);
                }
            }
            None => {
                if let Ok(v) = HeaderValue::from_str(&app.auth.in_process_value(&self.principal)) {
                    h.insert(hale_server::auth::IN_PROCESS_HEADER, v);
                }
            }
        }
        h
    }
}

pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The session on this request, or a redirect to sign in.
pub fn signed_in(ui: &Ui, headers: &HeaderMap) -> Result<Signed, Response> {
    let to_sign_in = || Redirect::to("/ui/sign-in").into_response();
    let Some(id) = cookie(headers, ui.cookie_name()) else {
        return Err(to_sign_in());
    };
    let s = match ui.sessions.touch(id, hale_server::now_ms()) {
        Ok(Some(s)) => s,
        Ok(None) => return Err(Redirect::to("/ui/sign-in?expired=1").into_response()),
        Err(e) => return Err(error_page(ui, StatusCode::SERVICE_UNAVAILABLE, &e.to_string())),
    };
    if let session::Kind::Oidc { access_token, .. } = s.kind {
        // From the provider: the session lasts no longer than its access
        // token (checked by `touch`), and every FHIR call it makes presents
        // that token, which the API validates and maps to the principal
        // (role, site, scopes) itself. The role shown and used for page
        // choices is the one the token mapped to at sign-in.
        let Some(role) = hale_server::config::Role::parse_name(&s.role) else {
            let _ = ui.sessions.end(id);
            return Err(to_sign_in());
        };
        return Ok(Signed {
            principal: Principal::new(s.user.clone(), role),
            csrf: s.csrf,
            session_id: id.to_string(),
            name: s.user,
            bearer: Some(access_token),
        });
    }
    // The account must still be live: a disabled user's sessions end at once.
    let Some(principal) = hale_server::accounts::active(&ui.app, &s.user) else {
        let _ = ui.sessions.end_user(&s.user);
        return Err(to_sign_in());
    };
    let name = ui
        .app
        .reader
        .with(|c| hale_store::accounts::get(c, &s.user))
        .ok()
        .flatten()
        .map(|a| a.name)
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| s.user.clone());
    Ok(Signed {
        principal,
        csrf: s.csrf,
        session_id: id.to_string(),
        name,
        bearer: None,
    })
}

/// A state-changing request: from this origin, with the session's token.
pub fn check_post(ui: &Ui, headers: &HeaderMap, form: &Form) -> Result<Signed, Response> {
    same_origin(headers)?;
    let s = signed_in(ui, headers)?;
    match form.get("csrf") {
        Some(t) if session::same_secret(t, &s.csrf) => Ok(s),
        _ => Err(error_page(
            ui,
            StatusCode::FORBIDDEN,
            "This form has expired or did not come from Hale. Go back, reload the page and try again.",
        )),
    }
}

/// Refuse a cross-site POST: `Sec-Fetch-Site` when the browser sends it,
/// else `Origin` against `Host`.
pub fn same_origin(headers: &HeaderMap) -> Result<(), Response> {
    let get = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    if let Some(site) = get("sec-fetch-site") {
        if site != "same-origin" && site != "none" {
            return Err(plain_error_page(
                StatusCode::FORBIDDEN,
                "This request came from another site, so Hale refused it.",
            ));
        }
    }
    // A browser that sends Fetch Metadata has said where the request came
    // from; `Origin` is checked when it does not (older browsers).
    if get("sec-fetch-site").is_some() {
        return Ok(());
    }
    if let (Some(origin), Some(host)) = (get("origin"), get("host")) {
        let o = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"))
            .unwrap_or(origin);
        if o != host {
            return Err(plain_error_page(
                StatusCode::FORBIDDEN,
                "This request came from another site, so Hale refused it.",
            ));
        }
    }
    Ok(())
}

/// A parsed `application/x-www-form-urlencoded` body or query.
#[derive(Debug, Default)]
pub struct Form(pub Vec<(String, String)>);

impl Form {
    pub fn parse(bytes: &[u8]) -> Form {
        Form(form_urlencoded::parse(bytes).into_owned().collect())
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    pub fn text(&self, k: &str) -> String {
        self.get(k).unwrap_or("").trim().to_string()
    }
}

/// Read a form body within [`FORM_BYTES_MAX`].
pub async fn read_form(req: Request) -> Result<(HeaderMap, Form), Response> {
    let (parts, body) = req.into_parts();
    match axum::body::to_bytes(body, FORM_BYTES_MAX).await {
        Ok(b) => Ok((parts.headers, Form::parse(&b))),
        Err(_) => Err(plain_error_page(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("The form was larger than {FORM_BYTES_MAX} bytes. Shorten it and try again."),
        )),
    }
}

/// An error page, with the degraded banner when this node is cut off.
pub fn error_page(ui: &Ui, status: StatusCode, message: &str) -> Response {
    let html = chrome::render_error(Some(ui), status, message);
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

/// An error page where no UI state is at hand (an unreadable form body).
pub fn plain_error_page(status: StatusCode, message: &str) -> Response {
    let html = chrome::render_error(None, status, message);
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

pub(crate) fn html(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

pub(crate) type UiState = State<Arc<Ui>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_secure_except_on_loopback_http() {
        for (listen, base, tls, expect) in [
            ("127.0.0.1:8080", None, false, false),
            ("[::1]:8080", None, false, false),
            ("localhost:8080", None, false, false),
            ("0.0.0.0:8080", None, false, true),
            ("10.1.2.3:8080", None, false, true),
            ("127.0.0.1:8080", Some("https://hale.trust.nhs.uk"), false, true),
            // TLS on the API: browsers keep secure cookies on loopback over https.
            ("127.0.0.1:8080", None, true, true),
            ("[::1]:8080", None, true, true),
        ] {
            assert_eq!(secure_cookies(listen, base, tls), expect, "{listen} {base:?} {tls}");
        }
    }
}
