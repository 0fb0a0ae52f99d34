//! `hale doctor`: check one node and say what to fix.
//!
//! One line per check, `OK`, `WARN` or `FAIL`, and under each line that is
//! not OK what to do about it. The command fails (exit 1) when any check
//! FAILs, so a deployment script or a monitoring probe can run it.
//!
//! What it reads: the node's config file (parsed as `hale serve` would), the
//! disk of its data directory, and over HTTP the node's `/readyz`,
//! `/cluster/status` (the members and whether the leader reaches them),
//! `/ops/status` (the `backup` section) and `/downtime/status` (pack ages),
//! and the HTTP `Date` of every member's API for clock skew. It changes nothing.

use crate::http::Client;
use anyhow::{bail, Context, Result};
use clap::{Args, FromArgMatches};
use hale_server::config::Config;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Args)]
pub struct DoctorArgs {
    /// API URL of the node to check (http). Default: from the config's `base_url` or `listen`,
    /// else http://127.0.0.1:8080.
    #[arg(long, env = "HALE_URL")]
    url: Option<String>,
    /// Admin bearer token: the cluster, backup and downtime pack checks need it.
    #[arg(long, env = "HALE_TOKEN")]
    token: Option<String>,
    /// The node's TOML configuration, checked as `hale serve --config` reads it (with the
    /// same HALE_* environment variables). Without it, the defaults and the environment.
    #[arg(long, env = "HALE_CONFIG")]
    config: Option<PathBuf>,
    /// The data directory whose disk is checked (default: the config's `data`).
    #[arg(long, env = "HALE_DATA")]
    data: Option<PathBuf>,
    /// WARN when the data directory's file system has less than this percentage free.
    #[arg(long, default_value_t = 10.0)]
    disk_warn_percent: f64,
    /// FAIL when it has less than this percentage free (the raft log and the store stop writing when it is full).
    #[arg(long, default_value_t = 2.0)]
    disk_fail_percent: f64,
    /// WARN when a certificate expires within this many days (FAIL once it has expired).
    #[arg(long, default_value_t = 30)]
    cert_warn_days: u64,
    /// WARN when a member's clock differs from this machine's by more than this (beyond
    /// what the one-second HTTP `Date` can tell); FAIL at ten times it.
    #[arg(long, default_value_t = 2000)]
    skew_warn_ms: u64,
    /// WARN when the last backup is older than this many hours.
    #[arg(long, default_value_t = 26)]
    backup_warn_age_h: u64,
    /// Seconds to wait for each HTTP answer.
    #[arg(long, default_value_t = 5)]
    timeout_s: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl Level {
    fn label(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        }
    }
}

/// One check's outcome: a line, and for WARN and FAIL what to do.
#[derive(Debug)]
pub struct Check {
    pub level: Level,
    pub name: String,
    pub detail: String,
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            level: Level::Ok,
            name: name.into(),
            detail: detail.into(),
            fix: None,
        }
    }
    fn warn(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            level: Level::Warn,
            name: name.into(),
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
    fn fail(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            level: Level::Fail,
            name: name.into(),
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

pub async fn run(a: DoctorArgs) -> Result<()> {
    let mut checks = Vec::new();
    let cfg = check_config(&a, &mut checks);
    let data = a.data.clone().or_else(|| cfg.as_ref().map(|c| c.data.clone()));
    match &data {
        Some(d) => checks.push(check_disk(d, a.disk_warn_percent, a.disk_fail_percent)),
        None => checks.push(Check::warn(
            "disk",
            "not checked: no data directory (no --config that parses, no --data)",
            "pass the node's config with --config, or its data directory with --data",
        )),
    }
    if let Some(cfg) = &cfg {
        check_certificates(cfg, a.cert_warn_days, &mut checks);
    }
    let url = node_url(&a, cfg.as_ref());
    check_node(&a, &url, &mut checks).await;
    let failed = checks.iter().filter(|c| c.level == Level::Fail).count();
    let warned = checks.iter().filter(|c| c.level == Level::Warn).count();
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let indent = " ".repeat(4 + 2 + width + 2);
    for c in &checks {
        // A multi-line cause (a TOML error shows the line) stays under its check.
        let detail = c.detail.trim_end().replace('\n', &format!("\n{indent}"));
        println!("{:<4}  {:<width$}  {detail}", c.level.label(), c.name);
        if let Some(fix) = &c.fix {
            println!("{indent}fix: {fix}");
        }
    }
    println!(
        "{} checks: {} OK, {warned} WARN, {failed} FAIL",
        checks.len(),
        checks.len() - warned - failed
    );
    if failed > 0 {
        bail!("{failed} check(s) failed; the FAIL lines above say what to fix");
    }
    Ok(())
}

// ------------------------------------------------------------------ config

/// Read the config as `hale serve` does (file, environment, checks), and the
/// further checks serve makes when it starts (sign-in, TLS files, packs).
fn check_config(a: &DoctorArgs, checks: &mut Vec<Check>) -> Option<Config> {
    let Some(path) = &a.config else {
        checks.push(Check::warn(
            "config",
            "not checked: no --config (the flags the node was started with are not known here)",
            "pass the node's config file with --config (or HALE_CONFIG), e.g. /etc/hale/hale.toml",
        ));
        return None;
    };
    let what = path.display().to_string();
    let argv = ["serve".to_string(), "--config".into(), what.clone()];
    let cfg = <crate::ServeArgs as clap::Args>::augment_args(clap::Command::new("serve"))
        .try_get_matches_from(argv)
        .map_err(anyhow::Error::from)
        .and_then(|m| crate::ServeArgs::from_arg_matches(&m).map_err(anyhow::Error::from))
        .and_then(|args| crate::load_config(&args));
    let cfg = match cfg {
        Ok(cfg) => cfg,
        Err(e) => {
            checks.push(Check::fail(
                "config",
                format!("{what}: {e:#}"),
                "correct the file (hale serve would refuse to start with it); README, Configuration, lists every setting",
            ));
            return None;
        }
    };
    let mut problems = Vec::new();
    if let Err(e) = crate::sign_in_configured(&cfg) {
        problems.push(e.to_string());
    }
    if let Err(e) = hale_server::tls::Tls::from_settings(&cfg.tls) {
        problems.push(format!("[tls]: {e}"));
    }
    if let Some(files) = &cfg.cluster.tls {
        if let Err(e) = hale_raft::peer_tls::PeerTls::load(files) {
            problems.push(format!("[cluster.tls]: {e}"));
        }
    }
    if let Err(e) = hale_server::downtime::validate(&cfg.downtime) {
        problems.push(format!("[downtime]: {e}"));
    }
    if problems.is_empty() {
        checks.push(Check::ok(
            "config",
            format!(
                "{what}: node {}, listen {}, data {}",
                cfg.cluster.node_id,
                cfg.listen,
                cfg.data.display()
            ),
        ));
    } else {
        checks.push(Check::fail(
            "config",
            format!("{what}: {}", problems.join("; ")),
            "hale serve would refuse to start: correct these settings",
        ));
    }
    Some(cfg)
}

// -------------------------------------------------------------------- disk

fn check_disk(data: &Path, warn_percent: f64, fail_percent: f64) -> Check {
    // Before the first start the directory may not exist: its parent's disk is the one.
    let mut at = data.to_path_buf();
    while !at.exists() {
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p.to_path_buf(),
            _ => {
                at = PathBuf::from(".");
                break;
            }
        }
    }
    let (free_bytes, total_bytes) = match disk_space(&at) {
        Ok(v) => v,
        Err(e) => {
            return Check::warn(
                "disk",
                format!("cannot read the free space of {}: {e}", at.display()),
                "check the data directory exists and is readable by this user",
            )
        }
    };
    let free_percent = if total_bytes == 0 {
        0.0
    } else {
        free_bytes as f64 * 100.0 / total_bytes as f64
    };
    let detail = format!(
        "{}: {} free of {} ({free_percent:.1}%)",
        data.display(),
        bytes_text(free_bytes),
        bytes_text(total_bytes)
    );
    let fix = "free space on that file system or move the data directory to a larger one; the raft log, store, snapshots and journal all live there";
    if free_percent < fail_percent {
        Check::fail("disk", format!("{detail}, under {fail_percent}%"), fix)
    } else if free_percent < warn_percent {
        Check::warn("disk", format!("{detail}, under {warn_percent}%"), fix)
    } else {
        Check::ok("disk", detail)
    }
}

/// Free (for an unprivileged user) and total bytes of the file system holding `path`.
#[cfg(unix)]
fn disk_space(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a NUL-terminated path; `st` is written by statvfs before it is read.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let unit = st.f_frsize as u64;
    Ok((st.f_bavail as u64 * unit, st.f_blocks as u64 * unit))
}

#[cfg(not(unix))]
fn disk_space(_: &Path) -> std::io::Result<(u64, u64)> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "only on unix"))
}

fn bytes_text(b: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    const MIB: f64 = (1u64 << 20) as f64;
    if b as f64 >= GIB {
        format!("{:.1} GiB", b as f64 / GIB)
    } else {
        format!("{:.1} MiB", b as f64 / MIB)
    }
}

// ------------------------------------------------------------ certificates

fn check_certificates(cfg: &Config, warn_days: u64, checks: &mut Vec<Check>) {
    let now_s = unix_now_s();
    if let Some(cert) = &cfg.tls.cert {
        checks.push(cert_check(
            "tls cert",
            cert,
            now_s,
            warn_days,
            "hale cert issue --dir CA_DIR --name api --dns HOST (then SIGHUP the node to load it)",
        ));
    }
    if let Some(files) = &cfg.cluster.tls {
        checks.push(cert_check(
            "raft cert",
            &files.cert,
            now_s,
            warn_days,
            &format!(
                "hale cert issue --dir CA_DIR --name node{0} --node-id {0} --role voter|learner, then restart the node",
                cfg.cluster.node_id
            ),
        ));
        checks.push(cert_check(
            "raft CA",
            &files.ca,
            now_s,
            warn_days,
            "create a new CA (hale cert init), issue every node a certificate from it, and roll the nodes one at a time",
        ));
    }
}

fn cert_check(name: &str, path: &Path, now_s: i64, warn_days: u64, renew: &str) -> Check {
    let not_after_s = match cert_not_after_s(path) {
        Ok(t) => t,
        Err(e) => {
            return Check::fail(
                name,
                format!("{}: {e}", path.display()),
                "point the config at a PEM certificate this user can read",
            )
        }
    };
    let until = chrono::DateTime::from_timestamp(not_after_s, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| not_after_s.to_string());
    let left_s = not_after_s - now_s;
    let left_days = left_s.div_euclid(86_400);
    if left_s <= 0 {
        Check::fail(
            name,
            format!("{} expired on {until}", path.display()),
            format!("renew it now: {renew}"),
        )
    } else if left_days < warn_days as i64 {
        Check::warn(
            name,
            format!("{} expires in {left_days} days ({until})", path.display()),
            format!("renew it before then: {renew}"),
        )
    } else {
        Check::ok(
            name,
            format!("{} valid for {left_days} more days ({until})", path.display()),
        )
    }
}

/// The `notAfter` (Unix seconds) of the first certificate in a PEM file (the leaf).
fn cert_not_after_s(path: &Path) -> Result<i64> {
    let pem = std::fs::read(path).context("cannot read it")?;
    let first = x509_parser::pem::Pem::iter_from_buffer(&pem)
        .next()
        .context("no PEM certificate in it")?
        .map_err(|e| anyhow::anyhow!("not PEM: {e}"))?;
    let cert = first
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))?;
    Ok(cert.validity().not_after.timestamp())
}

fn unix_now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

// -------------------------------------------------------------- over HTTP

fn node_url(a: &DoctorArgs, cfg: Option<&Config>) -> String {
    if let Some(u) = &a.url {
        return u.trim_end_matches('/').to_string();
    }
    match cfg {
        Some(c) => match &c.base_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => {
                let scheme = if c.tls.enabled() { "https" } else { "http" };
                let listen = c.listen.replace("0.0.0.0", "127.0.0.1").replace("[::]", "[::1]");
                format!("{scheme}://{listen}")
            }
        },
        None => "http://127.0.0.1:8080".into(),
    }
}

async fn check_node(a: &DoctorArgs, url: &str, checks: &mut Vec<Check>) {
    let timeout = Duration::from_secs(a.timeout_s.max(1));
    if url.starts_with("https://") {
        checks.push(Check::warn(
            "node",
            format!("{url}: not checked (hale doctor reaches nodes over http only), nor are peers, clocks, backups and packs"),
            "run hale doctor on a machine that reaches the node over http, or check those with `hale cluster status` and GET /ops/status",
        ));
        return;
    }
    let client = |token: Option<&str>| Client::new(url, token).map(|c| c.with_timeout(timeout));
    let mut anon = match client(None) {
        Ok(c) => c,
        Err(e) => {
            checks.push(Check::fail("node", format!("{e:#}"), "give --url as http://HOST:PORT"));
            return;
        }
    };
    let (ready, node_clock) = match timed_get(&mut anon, "/readyz").await {
        Ok((r, clock)) => (r, clock),
        Err(e) => {
            checks.push(Check::fail(
                "node",
                format!("{url}: {e:#}"),
                "start the node (hale serve, or systemctl start hale), or point --url at its API",
            ));
            return;
        }
    };
    if ready.status == 200 {
        checks.push(Check::ok("node", format!("{url} is ready")));
    } else {
        checks.push(Check::fail(
            "node",
            format!("{url} answers /readyz with HTTP {}: {}", ready.status, body_text(&ready)),
            "a node is not ready while it loads, restores a snapshot or has no leader: see its log (journalctl -u hale)",
        ));
    }
    let Some(token) = a.token.as_deref() else {
        checks.push(Check::warn(
            "cluster",
            "not checked: no --token (peers, their clocks, backups and downtime packs need an admin token)",
            "pass an admin token with --token or HALE_TOKEN",
        ));
        checks.push(clock_check("clock", node_clock, a.skew_warn_ms));
        return;
    };
    let mut admin = match client(Some(token)) {
        Ok(c) => c,
        Err(e) => {
            checks.push(Check::fail("node", format!("{e:#}"), "give --url as http://HOST:PORT"));
            return;
        }
    };
    let members = check_cluster(&mut admin, checks).await;
    check_clocks(url, node_clock, &members, timeout, a.skew_warn_ms, checks).await;
    check_backup(&mut admin, a.backup_warn_age_h, checks).await;
    check_packs(&mut admin, checks).await;
}

/// GET `path`, with this machine's clock around it: the reply, and how the
/// server's `Date` compares with the local time (see [`Clock`]).
async fn timed_get(c: &mut Client, path: &str) -> Result<(crate::http::Reply, Option<Clock>)> {
    let sent_ms = unix_now_ms();
    let reply = c.send("GET", path, None).await?;
    let got_ms = unix_now_ms();
    let clock = reply.header("date").and_then(|d| Clock::from_date(d, sent_ms, got_ms));
    Ok((reply, clock))
}

fn unix_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A peer's clock against this machine's, from an HTTP `Date` (whole seconds,
/// so the peer's time was in `[date, date + 1 s)`) read during a request sent
/// at `sent_ms` and answered at `got_ms` (local Unix milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    /// Best estimate of (peer time - local time).
    pub skew_ms: i64,
    /// How far the true skew may be from `skew_ms` either way.
    pub uncertainty_ms: i64,
}

impl Clock {
    pub fn from_date(date: &str, sent_ms: i64, got_ms: i64) -> Option<Clock> {
        let server_s = chrono::DateTime::parse_from_rfc2822(date).ok()?.timestamp();
        Some(Clock::from_seconds(server_s, sent_ms, got_ms))
    }

    fn from_seconds(server_s: i64, sent_ms: i64, got_ms: i64) -> Clock {
        let server_mid_ms = server_s * 1000 + 500;
        let local_mid_ms = (sent_ms + got_ms) / 2;
        Clock {
            skew_ms: server_mid_ms - local_mid_ms,
            uncertainty_ms: 500 + (got_ms - sent_ms).max(0) / 2,
        }
    }

    /// The skew this measurement proves at least (0 when it cannot tell).
    fn skew_at_least_ms(&self) -> u64 {
        (self.skew_ms.unsigned_abs()).saturating_sub(self.uncertainty_ms as u64)
    }
}

fn clock_check(name: &str, clock: Option<Clock>, warn_ms: u64) -> Check {
    let Some(c) = clock else {
        return Check::warn(
            name,
            "no usable HTTP Date header in its answer, so its clock was not compared",
            "check that nothing between here and the node strips the Date header",
        );
    };
    let detail = format!(
        "skew {:+} ms (± {} ms) against this machine",
        c.skew_ms, c.uncertainty_ms
    );
    let fix = "keep every node's clock synchronised with NTP (timedatectl status; chronyc tracking): timestamps, token expiry and outage times depend on it";
    let least = c.skew_at_least_ms();
    if least > warn_ms.saturating_mul(10) {
        Check::fail(name, detail, fix)
    } else if least > warn_ms {
        Check::warn(name, detail, fix)
    } else {
        Check::ok(name, detail)
    }
}

/// A member of the cluster as the node's `/cluster/status` shows it.
struct Member {
    id: u64,
    role: String,
    api_url: String,
}

async fn check_cluster(c: &mut Client, checks: &mut Vec<Check>) -> Vec<Member> {
    let status = match get_json(c, "/cluster/status").await {
        Ok(v) => v,
        Err(e) => {
            checks.push(Check::fail(
                "cluster",
                format!("{e:#}"),
                "use an admin token; if the node answers 5xx, see its log",
            ));
            return Vec::new();
        }
    };
    let leader = status["leader"].as_u64();
    let term = status["term"].as_u64().unwrap_or(0);
    let mut members = Vec::new();
    let empty = Vec::new();
    let list = status["members"].as_array().unwrap_or(&empty);
    match leader {
        Some(l) => checks.push(Check::ok(
            "cluster",
            format!("node {l} leads term {term}; {} member(s)", list.len()),
        )),
        None => checks.push(Check::fail(
            "cluster",
            format!("no leader (term {term}): the cluster cannot accept writes"),
            "a majority of voters must be running and reach each other: see `hale cluster status` and each voter's log",
        )),
    }
    let answered_by = status["answered_by"].as_u64();
    for m in list {
        let id = m["id"].as_u64().unwrap_or(0);
        let role = m["role"].as_str().unwrap_or("member").to_string();
        let site = m["site"].as_str().unwrap_or("");
        let raft_addr = m["raft_addr"].as_str().unwrap_or("");
        let name = format!("peer {id}");
        if Some(id) == answered_by {
            members.push(Member {
                id,
                role,
                api_url: m["api_url"].as_str().unwrap_or("").to_string(),
            });
            continue;
        }
        if m["reachable"].as_bool() == Some(true) {
            let lag = m["lag_entries"].as_u64().unwrap_or(0);
            checks.push(Check::ok(
                name,
                format!("{role} at {site} ({raft_addr}) answers; {lag} entries behind"),
            ));
        } else {
            let detail = format!("{role} at {site} ({raft_addr}) did not answer this node");
            let fix = format!("start node {id}, or open the raft port {raft_addr} between the nodes (firewall, [cluster.tls] certificates); its log says why");
            if role == "voter" {
                checks.push(Check::fail(name, detail, fix));
            } else {
                checks.push(Check::warn(name, detail, fix));
            }
        }
        members.push(Member {
            id,
            role,
            api_url: m["api_url"].as_str().unwrap_or("").to_string(),
        });
    }
    members
}

async fn check_clocks(
    node_url: &str,
    node_clock: Option<Clock>,
    members: &[Member],
    timeout: Duration,
    warn_ms: u64,
    checks: &mut Vec<Check>,
) {
    checks.push(clock_check("clock", node_clock, warn_ms));
    for m in members {
        let url = m.api_url.trim_end_matches('/');
        if url.is_empty() || url == node_url {
            continue;
        }
        let name = format!("clock node {}", m.id);
        if !url.starts_with("http://") {
            checks.push(Check::warn(
                name,
                format!(
                    "{} API {url}: not compared (hale doctor reaches nodes over http only)",
                    m.role
                ),
                format!("run hale doctor on node {} itself", m.id),
            ));
            continue;
        }
        let mut c = match Client::new(url, None) {
            Ok(c) => c.with_timeout(timeout),
            Err(e) => {
                checks.push(Check::warn(name, format!("{e:#}"), "correct the member's api_url"));
                continue;
            }
        };
        match timed_get(&mut c, "/readyz").await {
            Ok((_, clock)) => checks.push(clock_check(&name, clock, warn_ms)),
            Err(e) => checks.push(Check::warn(
                name,
                format!("{} API {url} did not answer: {e:#}", m.role),
                format!("check node {} is running and its API reachable from here", m.id),
            )),
        }
    }
}

async fn check_backup(c: &mut Client, warn_age_h: u64, checks: &mut Vec<Check>) {
    let status = match get_json(c, "/ops/status").await {
        Ok(v) => v,
        Err(e) => {
            checks.push(Check::warn(
                "backup",
                format!("{e:#}"),
                "use an admin token; see the node's log",
            ));
            return;
        }
    };
    checks.extend(backup_checks(&status["backup"], warn_age_h));
}

/// The checks of the `backup` section of `/ops/status` (missing, or
/// `configured: false`: no backups).
pub fn backup_checks(b: &Value, warn_age_h: u64) -> Vec<Check> {
    let configure =
        "configure [backup] (dir, recipients) in the node's config: README, \"Backups and point-in-time restore\"";
    if !b.is_object() || b["configured"] == Value::Bool(false) {
        return vec![Check::warn(
            "backup",
            "no backups configured (the node's /ops/status shows none)",
            configure,
        )];
    }
    let last_error = b["lastError"]
        .as_str()
        .map(|e| format!("; last error: {e}"))
        .unwrap_or_default();
    let mut out = Vec::new();
    let warn_s = warn_age_h * 3600;
    match b["lastBackupAgeS"].as_u64() {
        None => out.push(Check::warn(
            "backup",
            format!("no backup taken yet{last_error}"),
            "take one now with `hale backup --to DIR --data NODE_DATA`, and check the node's log for the scheduled one",
        )),
        Some(age_s) if age_s > warn_s * 7 => out.push(Check::fail(
            "backup",
            format!("the last backup is {} old{last_error}", age_text(age_s)),
            "backups have stopped: fix the error in the node's log, then run `hale backup --to DIR`",
        )),
        Some(age_s) if age_s > warn_s => out.push(Check::warn(
            "backup",
            format!(
                "the last backup is {} old (over {warn_age_h} h){last_error}",
                age_text(age_s)
            ),
            "see the node's log for the scheduled backup's error, or run `hale backup --to DIR`",
        )),
        Some(age_s) => out.push(Check::ok(
            "backup",
            format!("the last backup is {} old{last_error}", age_text(age_s)),
        )),
    }
    match (b["lastVerifiedAgeS"].as_u64(), b["lastVerifyOk"].as_bool()) {
        (_, Some(false)) => out.push(Check::fail(
            "backup verify",
            format!(
                "the last verification failed: {}",
                b["lastVerifyProblems"]
            ),
            "a backup that does not verify may not restore: run `hale backup verify` to see which file, and take a new backup",
        )),
        (None, _) => out.push(Check::warn(
            "backup verify",
            "no backup has been verified by a test restore",
            "run `hale backup verify` (or schedule it with [backup] verify_every_s)",
        )),
        (Some(age_s), _) if age_s > warn_s * 7 => out.push(Check::warn(
            "backup verify",
            format!("the last verified restore is {} old", age_text(age_s)),
            "run `hale backup verify`, and see the node's log for the scheduled verify's error",
        )),
        (Some(age_s), _) => out.push(Check::ok(
            "backup verify",
            format!("the last verified restore is {} old", age_text(age_s)),
        )),
    }
    if let Some(lag) = b["archiveLagEntries"].as_u64() {
        if lag > 10_000 {
            out.push(Check::warn(
                "backup archive",
                format!("the raft log archive is {lag} entries behind"),
                "check the backup directory is writable and has space: point-in-time restore stops where the archive does",
            ));
        } else {
            out.push(Check::ok("backup archive", format!("{lag} entries behind")));
        }
    }
    out
}

async fn check_packs(c: &mut Client, checks: &mut Vec<Check>) {
    let status = match get_json(c, "/downtime/status").await {
        Ok(v) => v,
        Err(e) => {
            checks.push(Check::warn(
                "downtime packs",
                format!("{e:#}"),
                "use an admin token; see the node's log",
            ));
            return;
        }
    };
    checks.extend(pack_checks(&status));
}

/// The checks of `GET /downtime/status`: each site's pack age against the
/// regeneration interval.
pub fn pack_checks(status: &Value) -> Vec<Check> {
    let interval_s = status["interval_s"].as_u64().unwrap_or(900).max(1);
    let empty = Vec::new();
    let sites = status["sites"].as_array().unwrap_or(&empty);
    if sites.is_empty() {
        return vec![Check::warn(
            "downtime packs",
            "none scheduled on this node ([downtime] lists no sites)",
            "list each site this node serves under [downtime] with its age recipients (README \"Downtime packs\"), so staff have paper lists when systems are down",
        )];
    }
    let mut out = Vec::new();
    for s in sites {
        let site = s["site"].as_str().unwrap_or("?");
        let name = format!("pack {site}");
        let error = s["last_error"].as_str();
        match (s["age_s"].as_u64(), error) {
            (None, Some(e)) => out.push(Check::fail(
                name,
                format!("never written: {e}"),
                "fix the cause above ([downtime] out directory, recipients); the node retries every interval",
            )),
            (None, None) => out.push(Check::warn(
                name,
                "not written yet",
                format!("wait for the first run (every {interval_s} s), then run hale doctor again"),
            )),
            (Some(age_s), e) if age_s > 4 * interval_s => out.push(Check::fail(
                name,
                format!(
                    "{} old, over 4 intervals of {interval_s} s{}",
                    age_text(age_s),
                    e.map(|e| format!("; last error: {e}")).unwrap_or_default()
                ),
                "the pack on paper-fallback machines is stale: fix the last error, or run `hale downtime-pack` by hand",
            )),
            (Some(age_s), e) if age_s > 2 * interval_s || e.is_some() => out.push(Check::warn(
                name,
                format!(
                    "{} old (interval {interval_s} s){}",
                    age_text(age_s),
                    e.map(|e| format!("; last error: {e}")).unwrap_or_default()
                ),
                "see the node's log for the pack job's error",
            )),
            (Some(age_s), _) => out.push(Check::ok(
                name,
                format!("{} old (interval {interval_s} s)", age_text(age_s)),
            )),
        }
    }
    out
}

async fn get_json(c: &mut Client, path: &str) -> Result<Value> {
    let r = c.send("GET", path, None).await?;
    if r.status != 200 {
        bail!("GET {path} answered HTTP {}: {}", r.status, body_text(&r));
    }
    r.json()
}

fn body_text(r: &crate::http::Reply) -> String {
    let text = String::from_utf8_lossy(&r.body[..r.body.len().min(300)]).into_owned();
    // An OperationOutcome: its diagnostics say it best.
    serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| {
            v.pointer("/issue/0/diagnostics")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or(text)
}

fn age_text(s: u64) -> String {
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} days", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn clock_from_a_date_header() {
        // Peer at 10:00:00.xxx while this machine read 10:00:00.400 .. 10:00:00.600.
        let base_s = chrono::DateTime::parse_from_rfc2822("Thu, 03 Dec 2026 10:00:00 GMT")
            .unwrap()
            .timestamp();
        let c = Clock::from_date(
            "Thu, 03 Dec 2026 10:00:00 GMT",
            base_s * 1000 + 400,
            base_s * 1000 + 600,
        )
        .unwrap();
        assert_eq!(
            c,
            Clock {
                skew_ms: 0,
                uncertainty_ms: 600
            }
        );
        assert_eq!(c.skew_at_least_ms(), 0);
        assert_eq!(clock_check("clock", Some(c), 2000).level, Level::Ok);
        // Peer 10 s ahead.
        let ahead = Clock::from_seconds(base_s + 10, base_s * 1000, base_s * 1000 + 100);
        assert_eq!(ahead.skew_ms, 10_450);
        assert_eq!(clock_check("clock", Some(ahead), 2000).level, Level::Warn);
        let far = Clock::from_seconds(base_s - 60, base_s * 1000, base_s * 1000);
        assert_eq!(clock_check("clock", Some(far), 2000).level, Level::Fail);
        assert_eq!(clock_check("clock", None, 2000).level, Level::Warn);
        assert!(Clock::from_date("yesterday", 0, 0).is_none());
    }

    #[test]
    fn backup_section_missing_is_a_warning() {
        for none in [Value::Null, json!({"configured": false})] {
            let missing = backup_checks(&none, 26);
            assert_eq!(missing.len(), 1);
            assert_eq!(missing[0].level, Level::Warn);
            assert!(missing[0].detail.contains("no backups configured"));
        }
        let fresh = backup_checks(
            &json!({"lastBackupAgeS": 3600, "lastVerifiedAgeS": 7200, "archiveLagEntries": 3}),
            26,
        );
        assert!(fresh.iter().all(|c| c.level == Level::Ok), "{fresh:?}");
        let stale = backup_checks(
            &json!({"configured": true, "lastBackupAgeS": 30 * 86_400, "lastVerifiedAgeS": null}),
            26,
        );
        assert_eq!(stale[0].level, Level::Fail);
        assert_eq!(stale[1].level, Level::Warn);
        let bad = backup_checks(
            &json!({"configured": true, "lastBackupAgeS": 60, "lastVerifiedAgeS": 60, "lastVerifyOk": false,
                    "lastVerifyProblems": ["segment 3: hash mismatch"]}),
            26,
        );
        assert_eq!(bad[1].level, Level::Fail);
        assert!(bad[1].detail.contains("hash mismatch"));
    }

    #[test]
    fn pack_ages_against_the_interval() {
        let none = pack_checks(&json!({"interval_s": 900, "sites": []}));
        assert_eq!(none[0].level, Level::Warn);
        let sites = pack_checks(&json!({"interval_s": 900, "sites": [
            {"site": "QEH", "age_s": 100, "last_error": null},
            {"site": "KGH", "age_s": 2000, "last_error": null},
            {"site": "WGH", "age_s": 9000, "last_error": "disk full"},
            {"site": "RIE", "age_s": null, "last_error": "no such directory"},
        ]}));
        let levels: Vec<Level> = sites.iter().map(|c| c.level).collect();
        assert_eq!(levels, [Level::Ok, Level::Warn, Level::Fail, Level::Fail]);
        assert!(sites[2].detail.contains("disk full"));
    }
}
