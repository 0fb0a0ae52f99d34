//! Local staff accounts for sign-in (the web UI), as replicated state.
//!
//! Accounts are changed only by [`crate::CommandKind::Account`] commands, so an
//! account added once on any node reaches every replica through the log,
//! including a hospital-site learner that is cut off later: it signs people in
//! from its own copy. Passwords are hashed (Argon2id, PHC string) by whoever
//! proposes the command; apply only validates and stores, and never reads the
//! clock or randomness (`updated_ms` is the command's time).

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

/// Roles an account may have (the same names as bearer-token roles).
pub const ROLES: &[&str] = &["clinician", "clerk", "admin", "service", "privacy-officer"];
/// Longest display name, in characters.
pub const NAME_CHARS_MAX: usize = 200;
/// Longest stored password hash, in bytes.
pub const HASH_BYTES_MAX: usize = 512;
/// Every stored hash is an Argon2id PHC string.
pub const HASH_PREFIX: &str = "$argon2id$";

/// One change to the accounts table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum AccountOp {
    /// A new account; refused if the user name is taken.
    Add {
        user: String,
        role: String,
        name: String,
        password_hash: String,
    },
    /// A new password hash for an existing account.
    Passwd { user: String, password_hash: String },
    /// The account can no longer sign in (its sessions end at their next request).
    Disable { user: String },
    /// A disabled account can sign in again.
    Enable { user: String },
}

impl AccountOp {
    pub fn user(&self) -> &str {
        match self {
            AccountOp::Add { user, .. }
            | AccountOp::Passwd { user, .. }
            | AccountOp::Disable { user }
            | AccountOp::Enable { user } => user,
        }
    }
}

/// A stored account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub user: String,
    pub role: String,
    pub name: String,
    pub password_hash: String,
    pub disabled: bool,
    /// The time of the command that last changed it.
    pub updated_ms: i64,
    /// Who last changed it.
    pub updated_by: String,
}

/// Why an account command was refused, for mapping to a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountRejection {
    /// The user name is taken.
    Exists,
    /// No such account.
    Missing,
    /// A field is malformed.
    Invalid,
}

const EXISTS: &str = "already exists";
const MISSING: &str = "there is no account";

/// Classify the message of a refused account command
/// (`Applied::Account(Err(msg))`).
pub fn rejection_kind(msg: &str) -> AccountRejection {
    if msg.contains(EXISTS) {
        AccountRejection::Exists
    } else if msg.contains(MISSING) {
        AccountRejection::Missing
    } else {
        AccountRejection::Invalid
    }
}

/// Whether `user` is a valid account name: `^[a-z0-9][a-z0-9._-]{0,63}$`.
pub fn valid_user(user: &str) -> bool {
    let b = user.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-'))
}

fn check_user(user: &str) -> Result<(), String> {
    if valid_user(user) {
        Ok(())
    } else {
        Err(format!(
            "user name '{}' is not valid: use 1 to 64 characters, lower-case letters, digits, '.', '_' or '-', starting with a letter or digit (for example 'j.smith')",
            user.chars().take(80).collect::<String>()
        ))
    }
}

fn check_hash(hash: &str) -> Result<(), String> {
    if !hash.starts_with(HASH_PREFIX) || hash.len() > HASH_BYTES_MAX {
        return Err(format!(
            "the password hash must be an Argon2id PHC string ('{HASH_PREFIX}...') of at most {HASH_BYTES_MAX} bytes; use `hale user add` or `hale user passwd`, which hash the password for you"
        ));
    }
    Ok(())
}

fn row(r: &rusqlite::Row) -> rusqlite::Result<Account> {
    Ok(Account {
        user: r.get(0)?,
        role: r.get(1)?,
        name: r.get(2)?,
        password_hash: r.get(3)?,
        disabled: r.get::<_, i64>(4)? != 0,
        updated_ms: r.get(5)?,
        updated_by: r.get(6)?,
    })
}

const COLUMNS: &str = "user, role, name, password_hash, disabled, updated_ms, updated_by";

/// The account of `user`, if there is one.
pub fn get(conn: &Connection, user: &str) -> rusqlite::Result<Option<Account>> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM accounts WHERE user = ?1"))?
        .query_row([user], row)
        .optional()
}

/// Every account, ordered by user name.
pub fn list(conn: &Connection) -> rusqlite::Result<Vec<Account>> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM accounts ORDER BY user"))?;
    let rows = stmt.query_map([], row)?;
    rows.collect()
}

/// Apply one account op at `time_ms` by `by` (inside the caller's transaction).
/// `Ok(Err(msg))` is a refusal that changed nothing.
pub fn apply(conn: &Connection, op: &AccountOp, time_ms: i64, by: &str) -> rusqlite::Result<Result<(), String>> {
    let user = op.user();
    if let Err(e) = check_user(user) {
        return Ok(Err(e));
    }
    let existing = get(conn, user)?;
    match op {
        AccountOp::Add {
            role,
            name,
            password_hash,
            ..
        } => {
            if existing.is_some() {
                return Ok(Err(format!(
                    "user '{user}' {EXISTS}; use `hale user passwd {user}` to set a new password, or `hale user enable {user}` if it is disabled"
                )));
            }
            if !ROLES.contains(&role.as_str()) {
                return Ok(Err(format!(
                    "role '{}' is not known; use one of {}",
                    role.chars().take(40).collect::<String>(),
                    ROLES.join(", ")
                )));
            }
            if name.trim().is_empty() || name.chars().count() > NAME_CHARS_MAX {
                return Ok(Err(format!(
                    "the full name must be 1 to {NAME_CHARS_MAX} characters (it is shown to colleagues, e.g. 'Dr Jane Smith')"
                )));
            }
            if let Err(e) = check_hash(password_hash) {
                return Ok(Err(e));
            }
            conn.prepare_cached(
                "INSERT INTO accounts(user, role, name, password_hash, disabled, updated_ms, updated_by) VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6)",
            )?
            .execute(params![user, role, name, password_hash, time_ms, by])?;
        }
        AccountOp::Passwd { password_hash, .. } => {
            if existing.is_none() {
                return Ok(Err(missing(user)));
            }
            if let Err(e) = check_hash(password_hash) {
                return Ok(Err(e));
            }
            conn.prepare_cached(
                "UPDATE accounts SET password_hash = ?2, updated_ms = ?3, updated_by = ?4 WHERE user = ?1",
            )?
            .execute(params![user, password_hash, time_ms, by])?;
        }
        AccountOp::Disable { .. } | AccountOp::Enable { .. } => {
            if existing.is_none() {
                return Ok(Err(missing(user)));
            }
            let disabled = matches!(op, AccountOp::Disable { .. });
            conn.prepare_cached("UPDATE accounts SET disabled = ?2, updated_ms = ?3, updated_by = ?4 WHERE user = ?1")?
                .execute(params![user, disabled as i64, time_ms, by])?;
        }
    }
    Ok(Ok(()))
}

fn missing(user: &str) -> String {
    format!("{MISSING} for user '{user}'; check the name with `hale user list`, or add it with `hale user add {user}`")
}
