//! Sign in and out with a local account. Works on a cut-off node: the
//! account is the node's replicated copy and the session is node-local.
//! When `[auth.oidc.ui]` is set the page also offers the identity provider
//! (`pages::oidc`).

use super::{render, FieldError};
use crate::chrome::Chrome;
use crate::{cookie, error_page, read_form, same_origin, session, Ui, UiState};
use askama::Template;
use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use std::collections::HashMap;
use std::sync::Arc;

/// Failed attempts per user name before a pause.
const FAILURES_MAX: u32 = 5;
const LOCKOUT_MS: i64 = 5 * 60 * 1000;

#[derive(Template)]
#[template(path = "signin.html")]
struct SignIn {
    c: Chrome,
    error: Option<FieldError>,
    expired: bool,
    user: String,
    token: String,
    /// The provider's name for "Sign in with …", when provider sign-in is set up.
    oidc: Option<String>,
}

fn signin_cookie(ui: &Ui) -> &'static str {
    if ui.secure_cookies {
        "__Host-hale_signin"
    } else {
        "hale_signin"
    }
}

fn cookie_attrs(ui: &Ui) -> &'static str {
    if ui.secure_cookies {
        "; Path=/; Secure; HttpOnly; SameSite=Strict"
    } else {
        "; Path=/; HttpOnly; SameSite=Strict"
    }
}

fn form_page(ui: &Ui, error: Option<FieldError>, expired: bool, user: String, status: StatusCode) -> Response {
    let token = session::random_token();
    let page = SignIn {
        c: Chrome::anonymous(Some(ui), if error.is_some() { "Error: Sign in" } else { "Sign in" }),
        error,
        expired,
        user,
        token: token.clone(),
        oidc: ui.oidc.as_ref().map(|o| o.name.clone()),
    };
    let mut resp = render(&page);
    *resp.status_mut() = status;
    let cookie = format!("{}={token}{}", signin_cookie(ui), cookie_attrs(ui));
    if let Ok(v) = header::HeaderValue::from_str(&cookie) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

pub async fn page(State(ui): UiState, Query(q): Query<HashMap<String, String>>) -> Response {
    form_page(&ui, None, q.contains_key("expired"), String::new(), StatusCode::OK)
}

pub async fn submit(State(ui): UiState, req: Request) -> Response {
    let (headers, form) = match read_form(req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if let Err(r) = same_origin(&headers) {
        return r;
    }
    let token_ok = match (cookie(&headers, signin_cookie(&ui)), form.get("csrf")) {
        (Some(c), Some(f)) => session::same_secret(c, f),
        _ => false,
    };
    if !token_ok {
        return form_page(
            &ui,
            Some(FieldError::new(
                "user",
                "The sign-in form expired. Enter your details again",
            )),
            false,
            form.text("user"),
            StatusCode::FORBIDDEN,
        );
    }
    let user = form.text("user").to_lowercase();
    let password = form.get("password").unwrap_or("").to_string();
    if user.is_empty() {
        return form_page(
            &ui,
            Some(FieldError::new("user", "Enter your user name")),
            false,
            user,
            StatusCode::BAD_REQUEST,
        );
    }
    if password.is_empty() {
        return form_page(
            &ui,
            Some(FieldError::new("password", "Enter your password")),
            false,
            user,
            StatusCode::BAD_REQUEST,
        );
    }
    let now = hale_server::now_ms();
    if let Some((n, last)) = ui.failures.lock().get(&user).copied() {
        if n >= FAILURES_MAX && now - last < LOCKOUT_MS {
            return form_page(
                &ui,
                Some(FieldError::new(
                    "password",
                    "Too many wrong passwords for this user name. Wait 5 minutes, or ask IT to reset the password",
                )),
                false,
                user,
                StatusCode::TOO_MANY_REQUESTS,
            );
        }
    }
    let app = ui.app.clone();
    let u = user.clone();
    let verified = tokio::task::spawn_blocking(move || hale_server::accounts::verify(&app, &u, &password))
        .await
        .ok()
        .flatten();
    let Some(principal) = verified else {
        let mut f = ui.failures.lock();
        if f.len() > 10_000 {
            f.clear();
        }
        let e = f.entry(user.clone()).or_insert((0, now));
        *e = (e.0 + 1, now);
        drop(f);
        tracing::info!(user = %user, "web UI sign-in refused");
        return form_page(
            &ui,
            Some(FieldError::new("password", "The user name or password is not right")),
            false,
            user,
            StatusCode::UNAUTHORIZED,
        );
    };
    ui.failures.lock().remove(&user);
    let id = match ui.sessions.create(&principal.user, principal.role.as_str(), now) {
        Ok(id) => id,
        Err(e) => return error_page(&ui, StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    tracing::info!(user = %principal.user, role = principal.role.as_str(), method = "local", "web UI sign-in");
    let mut resp = Redirect::to("/ui/").into_response();
    let set = [
        format!("{}={id}{}", ui.cookie_name(), cookie_attrs(&ui)),
        format!("{}=; Max-Age=0{}", signin_cookie(&ui), cookie_attrs(&ui)),
    ];
    for c in set {
        if let Ok(v) = header::HeaderValue::from_str(&c) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp
}

pub async fn sign_out(State(ui): State<Arc<Ui>>, req: Request) -> Response {
    let (headers, form) = match read_form(req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if let Ok(s) = crate::check_post(&ui, &headers, &form) {
        let _ = ui.sessions.end(&s.session_id);
    }
    let mut resp = Redirect::to("/ui/sign-in").into_response();
    let c = format!("{}=; Max-Age=0{}", ui.cookie_name(), cookie_attrs(&ui));
    if let Ok(v) = header::HeaderValue::from_str(&c) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}
