//! Local staff accounts: password hashing, sign-in checks, and the admin
//! endpoints that change accounts through the log (`/admin/users`).
//!
//! Accounts are replicated state ([`hale_store::accounts`]): one added on any
//! node can sign in on every node, including a hospital-site replica that is
//! cut off, from its own copy. Passwords are hashed with Argon2id before a
//! command is proposed (by `hale user`, which sends only the hash), so apply
//! stays deterministic and the password never crosses the network.

use crate::auth::Principal;
use crate::config::Role;
use crate::wire::FhirError;
use crate::App;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hale_fhir::IssueCode;
use hale_store::accounts::{rejection_kind, Account, AccountOp, AccountRejection};
use hale_store::apply::Applied;
use hale_store::command::Command;
use hale_store::propose::ProposeError;
use hale_store::CommandKind;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::{Arc, OnceLock};

/// Shortest password accepted, in characters.
pub const PASSWORD_CHARS_MIN: usize = 12;
/// Longest password accepted, in characters.
pub const PASSWORD_CHARS_MAX: usize = 256;

/// Hash `pw` with Argon2id (default parameters) and a random salt, as a PHC
/// string (`$argon2id$...`) for [`AccountOp::Add`] or [`AccountOp::Passwd`].
pub fn hash_password(pw: &str) -> Result<String, String> {
    let n = pw.chars().count();
    if n < PASSWORD_CHARS_MIN {
        return Err(format!(
            "the password is {n} characters; use at least {PASSWORD_CHARS_MIN} (a phrase of several words is easiest to remember)"
        ));
    }
    if n > PASSWORD_CHARS_MAX {
        return Err(format!(
            "the password is {n} characters; use at most {PASSWORD_CHARS_MAX}"
        ));
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(pw.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("could not hash the password: {e}"))
}

/// A hash to verify against when the user is unknown, so an unknown user
/// takes about as long to refuse as a wrong password.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_password("not-a-real-password-only-for-timing").unwrap_or_default())
}

fn verify_hash(hash: &str, password: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

fn read_account(app: &App, user: &str) -> Option<Account> {
    match app.reader.with(|c| hale_store::accounts::get(c, user)) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "could not read the accounts table");
            None
        }
    }
}

fn principal(a: &Account) -> Option<Principal> {
    Some(Principal::new(a.user.clone(), role_named(&a.role)?))
}

/// The role an account's `role` column names (see [`hale_store::accounts::ROLES`]).
fn role_named(s: &str) -> Option<Role> {
    Some(match s {
        "clinician" => Role::Clinician,
        "clerk" => Role::Clerk,
        "admin" => Role::Admin,
        "service" => Role::Service,
        "privacy-officer" => Role::PrivacyOfficer,
        _ => return None,
    })
}

/// Check a sign-in: the account exists, is not disabled and `password`
/// matches its hash. CPU-heavy (Argon2id): call it off the async threads.
pub fn verify(app: &App, user: &str, password: &str) -> Option<Principal> {
    if password.len() > PASSWORD_CHARS_MAX * 4 {
        return None;
    }
    let Some(a) = read_account(app, user) else {
        verify_hash(dummy_hash(), password);
        return None;
    };
    let ok = verify_hash(&a.password_hash, password);
    if !ok || a.disabled {
        return None;
    }
    principal(&a)
}

/// The account's principal while it exists and is not disabled (checked on
/// every UI request, so disabling an account ends its sessions).
pub fn active(app: &App, user: &str) -> Option<Principal> {
    let a = read_account(app, user)?;
    if a.disabled {
        return None;
    }
    principal(&a)
}

/// Propose one account change as `by`; `Ok(Err(msg))` is a refusal by apply.
pub async fn propose(app: &App, actor: hale_store::Actor, op: AccountOp) -> Result<Result<(), String>, ProposeError> {
    let cmd = Command {
        time_ms: crate::now_ms(),
        actor,
        kind: CommandKind::Account(op),
        references: Default::default(),
    };
    match app.proposer.propose(cmd).await? {
        (_, Applied::Account(r)) => Ok(r),
        (_, other) => Ok(Err(format!("an account change answered {other:?}"))),
    }
}

/// The admin endpoints: `/admin/users`.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/admin/users", get(list_users).post(add_user))
        .route("/admin/users/{user}/passwd", post(passwd))
        .route("/admin/users/{user}/disable", post(disable))
        .route("/admin/users/{user}/enable", post(enable))
}

async fn admin(app: &App, headers: &HeaderMap) -> Result<Principal, FhirError> {
    let p = app.auth.authenticate(headers).await?;
    if p.role != Role::Admin {
        return Err(FhirError::new(
            StatusCode::FORBIDDEN,
            IssueCode::Forbidden,
            format!(
                "user '{}' with role '{}' may not manage accounts; that needs an admin token",
                p.user,
                p.role.as_str()
            ),
        ));
    }
    Ok(p)
}

/// An account as the API shows it: never the hash.
pub fn account_json(a: &Account) -> Value {
    json!({
        "user": a.user,
        "role": a.role,
        "name": a.name,
        "disabled": a.disabled,
        "updatedMs": a.updated_ms,
        "updated": crate::wire::instant(a.updated_ms),
        "updatedBy": a.updated_by,
    })
}

async fn list_users(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(e) = admin(&app, &headers).await {
        return e.into_response();
    }
    match app.reader.with(hale_store::accounts::list) {
        Ok(all) => Json(Value::Array(all.iter().map(account_json).collect())).into_response(),
        Err(e) => FhirError::internal(format!("could not read the accounts: {e}")).into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    user: String,
    role: String,
    name: String,
    password_hash: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswdBody {
    password_hash: String,
}

async fn body_json<T: serde::de::DeserializeOwned>(app: &App, body: Body, shape: &str) -> Result<T, FhirError> {
    let bytes = crate::rest::read_body(app, body).await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        FhirError::new(
            StatusCode::BAD_REQUEST,
            IssueCode::Structure,
            format!("the body must be JSON {shape}: {e}"),
        )
    })
}

async fn change(app: &App, p: &Principal, op: AccountOp, status: StatusCode, done: &str) -> Response {
    let user = op.user().to_string();
    match propose(app, p.actor(), op).await {
        Ok(Ok(())) => {
            tracing::info!(user = %user, by = %p.user, "account {done}");
            (status, Json(json!({"user": user, "result": done}))).into_response()
        }
        Ok(Err(msg)) => {
            let (status, code) = match rejection_kind(&msg) {
                AccountRejection::Exists => (StatusCode::CONFLICT, IssueCode::Duplicate),
                AccountRejection::Missing => (StatusCode::NOT_FOUND, IssueCode::NotFound),
                AccountRejection::Invalid => (StatusCode::BAD_REQUEST, IssueCode::Invalid),
            };
            FhirError::new(status, code, msg).into_response()
        }
        Err(ProposeError::Unavailable(why)) => FhirError::unavailable(why).into_response(),
        Err(e) => FhirError::unavailable(format!(
            "the account change was not committed: {e}. It is safe to retry"
        ))
        .into_response(),
    }
}

async fn add_user(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let p = match admin(&app, &headers).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let b: AddBody = match body_json(&app, body, r#"{"user", "role", "name", "password_hash"}"#).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let op = AccountOp::Add {
        user: b.user,
        role: b.role,
        name: b.name,
        password_hash: b.password_hash,
    };
    change(&app, &p, op, StatusCode::CREATED, "added").await
}

async fn passwd(State(app): State<Arc<App>>, Path(user): Path<String>, headers: HeaderMap, body: Body) -> Response {
    let p = match admin(&app, &headers).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let b: PasswdBody = match body_json(&app, body, r#"{"password_hash"}"#).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let op = AccountOp::Passwd {
        user,
        password_hash: b.password_hash,
    };
    change(&app, &p, op, StatusCode::OK, "password changed").await
}

async fn disable(State(app): State<Arc<App>>, Path(user): Path<String>, headers: HeaderMap) -> Response {
    match admin(&app, &headers).await {
        Ok(p) => change(&app, &p, AccountOp::Disable { user }, StatusCode::OK, "disabled").await,
        Err(e) => e.into_response(),
    }
}

async fn enable(State(app): State<Arc<App>>, Path(user): Path<String>, headers: HeaderMap) -> Response {
    match admin(&app, &headers).await {
        Ok(p) => change(&app, &p, AccountOp::Enable { user }, StatusCode::OK, "enabled").await,
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify_round_trip() {
        assert!(hash_password("short").unwrap_err().contains("at least 12"));
        assert!(hash_password(&"x".repeat(257)).unwrap_err().contains("at most 256"));
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(h.len() <= hale_store::accounts::HASH_BYTES_MAX);
        assert!(verify_hash(&h, "correct horse battery"));
        assert!(!verify_hash(&h, "correct horse batterY"));
        assert_ne!(h, hash_password("correct horse battery").unwrap(), "salted");
    }
}
