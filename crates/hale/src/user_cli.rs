//! `hale user add|passwd|disable|enable|list`: local staff accounts for
//! signing in to the web UI. The password is hashed here (Argon2id) and only
//! the hash is sent; the account replicates to every node through the log.

use crate::cluster_cli::outcome_text;
use crate::http::Client;
use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

#[derive(Args)]
pub struct UserArgs {
    /// API URL of any node of the cluster.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "HALE_URL", global = true)]
    url: String,
    /// Admin bearer token.
    #[arg(long, env = "HALE_TOKEN", global = true)]
    token: Option<String>,
    /// Print the raw JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: UserCmd,
}

#[derive(Subcommand)]
enum UserCmd {
    /// Add an account. The password is read from HALE_PASSWORD, else one line of stdin.
    Add {
        /// The sign-in name: lower-case letters, digits, '.', '_' or '-' (e.g. j.smith).
        user: String,
        /// clinician, clerk, admin, service or privacy-officer.
        #[arg(long)]
        role: String,
        /// The full name colleagues see (e.g. "Dr Jane Smith").
        #[arg(long)]
        name: String,
    },
    /// Set a new password (HALE_PASSWORD, else one line of stdin).
    Passwd { user: String },
    /// Stop an account signing in; its open sessions end at their next request.
    Disable { user: String },
    /// Let a disabled account sign in again.
    Enable { user: String },
    /// List accounts: user, role, name, disabled, last change.
    List,
}

/// The password from HALE_PASSWORD, else the first line of stdin, hashed.
fn password_hash() -> Result<String> {
    let pw = match std::env::var("HALE_PASSWORD") {
        Ok(p) => p,
        Err(_) => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("could not read the password from stdin")?;
            line.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    if pw.is_empty() {
        bail!("no password given: set HALE_PASSWORD or type the password on one line of stdin");
    }
    hale_server::accounts::hash_password(&pw).map_err(|e| anyhow!("{e}"))
}

async fn call(a: &UserArgs, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
    let mut c = Client::new(&a.url, a.token.as_deref())?;
    let body = body.map(|b| serde_json::to_vec(&b)).transpose()?;
    let r = c
        .send(method, path, body)
        .await
        .with_context(|| format!("could not reach {}; check --url (or HALE_URL)", a.url))?;
    if !(200..300).contains(&r.status) {
        let hint = match r.status {
            401 => " (check --token or HALE_TOKEN)",
            403 => " (account changes need an admin token)",
            _ => "",
        };
        bail!(
            "{method} {path} refused: HTTP {}: {}{hint}",
            r.status,
            outcome_text(&r.body)
        );
    }
    r.json()
}

pub async fn run(a: UserArgs) -> Result<()> {
    let (method, path, body) = match &a.cmd {
        UserCmd::List => {
            let v = call(&a, "GET", "/admin/users", None).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_table(&v);
            }
            return Ok(());
        }
        UserCmd::Add { user, role, name } => (
            "POST",
            "/admin/users".to_string(),
            Some(json!({"user": user, "role": role, "name": name, "password_hash": password_hash()?})),
        ),
        UserCmd::Passwd { user } => (
            "POST",
            format!("/admin/users/{}/passwd", path_segment(user)),
            Some(json!({"password_hash": password_hash()?})),
        ),
        UserCmd::Disable { user } => ("POST", format!("/admin/users/{}/disable", path_segment(user)), None),
        UserCmd::Enable { user } => ("POST", format!("/admin/users/{}/enable", path_segment(user)), None),
    };
    let v = call(&a, method, &path, body).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{}: {}",
            v["user"].as_str().unwrap_or("?"),
            v["result"].as_str().unwrap_or("done")
        );
    }
    Ok(())
}

/// A user name as one path segment (valid names need no escaping; others are
/// escaped so the server, not the URL parser, explains what is wrong).
fn path_segment(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

fn print_table(v: &Value) {
    let rows: Vec<[String; 5]> = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|u| {
                    [
                        u["user"].as_str().unwrap_or("").to_string(),
                        u["role"].as_str().unwrap_or("").to_string(),
                        u["name"].as_str().unwrap_or("").to_string(),
                        if u["disabled"] == true { "yes" } else { "no" }.to_string(),
                        format!(
                            "{} by {}",
                            u["updated"].as_str().unwrap_or(""),
                            u["updatedBy"].as_str().unwrap_or("")
                        ),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    if rows.is_empty() {
        println!("no accounts; add one with `hale user add NAME --role R --name \"Full Name\"`");
        return;
    }
    let head = ["USER", "ROLE", "NAME", "DISABLED", "UPDATED"];
    let mut w = head.map(|h| h.chars().count());
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: [&str; 5]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i == 4 {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(head);
    for r in &rows {
        line([&r[0], &r[1], &r[2], &r[3], &r[4]]);
    }
}
