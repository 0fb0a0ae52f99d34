//! The `hale` command: CLI and glue. Business rules live in the crates.

mod admission_bench;
mod admit_cli;
mod audit_cli;
mod backfill_cli;
mod backup_cli;
mod bulk_cli;
mod cert_cli;
mod chaos;
mod chaos_offline;
mod cluster_cli;
mod doctor;
mod downtime;
mod drill_cli;
mod examples;
mod failover;
mod http;
mod import;
mod link_args;
mod local;
mod offline_bench;
mod outage;
mod sigpipe;
mod sync_cli;
mod user_cli;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use hale_server::config::{demo_tokens, Config, References};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "hale",
    version,
    about = "Hale: patient records and appointment booking that keep working through failures"
)]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true, env = "HALE_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a Hale node: the FHIR R4 API on --listen, state in --data.
    Serve(ServeArgs),
    /// Load FHIR JSON Bundles or NDJSON files (or directories of them) into a running server.
    Import(ImportArgs),
    /// Write live resources as NDJSON: from a running server with FHIR Bulk Data
    /// `$export` (--url), or straight from a data directory (--data).
    Export(ExportArgs),
    /// Print a store's record hash: SHA-256 of every live resource's content
    /// without versionId and lastUpdated, equal on two stores that hold the
    /// same record however it was loaded (export from one, import into the other).
    RecordHash(RecordHashArgs),
    /// Load-test a running server and report throughput and latency.
    Bench(BenchArgs),
    /// Manage a cluster's membership and see its state.
    Cluster(cluster_cli::ClusterArgs),
    /// A node's site journal: writes saved while cut off, their replay, and a check that none was lost.
    Sync(sync_cli::SyncArgs),
    /// Start a local cluster of separate processes on loopback (Ctrl-C stops it).
    Up(cluster_cli::UpArgs),
    /// Kill, cut off and wipe nodes of a local cluster under load, then check no acknowledged write was lost.
    Chaos(chaos::ChaosArgs),
    /// IT outage incidents: declare, list, show, close, postpone, report, rebook.
    Outage(outage::OutageArgs),
    /// Write one site's downtime pack (clinic lists and patient summaries, PDF and CSV, age-encrypted).
    DowntimePack(downtime::DowntimePackArgs),
    /// List what was entered from paper after downtime (POST /$backfill), with who entered it and when.
    Backfill(backfill_cli::BackfillArgs),
    /// Local staff accounts for web UI sign-in: add, passwd, disable, enable, list (replicated to every node).
    User(user_cli::UserArgs),
    /// TLS certificates: `init` a cluster CA, `issue` node and server certificates signed by it.
    Cert(cert_cli::CertArgs),
    /// The audit trail's hash chain: `verify` a data directory's rows against it.
    Audit(audit_cli::AuditArgs),
    /// Admission control: which request classes a node admits; open them in steps after a failure.
    Admit(admit_cli::AdmitArgs),
    /// Check a node: config, disk space, clock skew, certificates, peers, backup and downtime pack age.
    Doctor(doctor::DoctorArgs),
    /// Back up a node (online, age-encrypted), or verify, list and prune a backup directory.
    Backup(backup_cli::BackupArgs),
    /// Restore a backup into a new data directory: the latest point, --to-time or --to-index.
    Restore(backup_cli::RestoreArgs),
    /// Drills that prove the standby on a live cluster: failover, voter-restart, site-cut, restore.
    Drill(drill_cli::DrillArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Data directory (default ./hale-data). Env: HALE_DATA.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:8080). Env: HALE_LISTEN.
    #[arg(long)]
    listen: Option<String>,
    /// TOML configuration file. Environment variables override it, flags override both.
    #[arg(long, env = "HALE_CONFIG")]
    config: Option<PathBuf>,
    /// Load the synthetic health board on first start and install demo tokens if none are configured.
    #[arg(long)]
    demo: bool,
    /// Patients in the demo board. Env: HALE_DEMO_PATIENTS.
    #[arg(long)]
    demo_patients: Option<usize>,
    /// This node's id in a cluster (default 1: a cluster of one). Env: HALE_NODE_ID.
    #[arg(long)]
    node_id: Option<u64>,
    /// Address for raft traffic from other nodes, e.g. 10.0.0.5:7080. Env: HALE_RAFT_LISTEN.
    #[arg(long)]
    raft_listen: Option<String>,
    /// Address other nodes use to reach --raft-listen (default: the same). Env: HALE_RAFT_ADVERTISE.
    #[arg(long)]
    raft_advertise: Option<String>,
    /// Data centre (voters) or hospital site (learners) of this node. Env: HALE_SITE.
    #[arg(long)]
    site: Option<String>,
    /// Start a new one-voter cluster of this node if it has none (the default for node 1
    /// without --raft-listen; use `hale cluster init` otherwise).
    #[arg(long)]
    bootstrap: bool,
    /// Whether a write must reference only resources this server holds: `enforce`
    /// (the default, as HAPI and Blaze) or `off` (store references as sent, and let
    /// deletes leave them dangling; for loading data whose references point outside
    /// it). Env: HALE_REFERENTIAL_INTEGRITY.
    #[arg(long, value_parser = ["enforce", "off"])]
    referential_integrity: Option<String>,
    /// Serve the API over TLS with this certificate chain (PEM; reloaded on SIGHUP). Needs --tls-key.
    /// Env: HALE_TLS_CERT.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert. Env: HALE_TLS_KEY.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Accept fault injection on the raft port (chaos testing only; never in production).
    #[arg(long, hide = true)]
    fault_injection: bool,
}

#[derive(Args)]
struct ImportArgs {
    /// Files: a FHIR Bundle (.json) or one resource per line (.ndjson); a
    /// directory stands for the .ndjson and .json files in it.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "HALE_URL")]
    url: String,
    /// Bearer token.
    #[arg(long, env = "HALE_TOKEN")]
    token: Option<String>,
    /// Resources per batch request.
    #[arg(long, default_value_t = 500)]
    batch: usize,
}

#[derive(Args)]
struct ExportArgs {
    /// Output directory; created if missing.
    #[arg(long)]
    out: PathBuf,
    /// Data directory of the node to export (safe while it runs); not with --url.
    #[arg(long, default_value = "./hale-data", env = "HALE_DATA")]
    data: PathBuf,
    /// Export from the server at this base URL with FHIR Bulk Data `$export`
    /// (kick-off, polling, download) instead of from a data directory.
    #[arg(long)]
    url: Option<String>,
    /// Bearer token (a service or admin token) for --url.
    #[arg(long, env = "HALE_TOKEN")]
    token: Option<String>,
    /// With --url: only these resource types (`_type`), comma-separated.
    #[arg(long = "type", value_delimiter = ',')]
    types: Vec<String>,
    /// With --url: only resources changed after this instant (`_since`), e.g. 2026-12-01T09:00:00Z.
    #[arg(long)]
    since: Option<String>,
    /// With --url: every patient's record (`Patient/$export`) rather than everything.
    #[arg(long, conflicts_with = "group")]
    patients: bool,
    /// With --url: the records of this Group's members (`Group/{id}/$export`).
    #[arg(long)]
    group: Option<String>,
}

#[derive(Args)]
struct RecordHashArgs {
    /// Data directory of the node (safe while it runs).
    #[arg(long, default_value = "./hale-data", env = "HALE_DATA")]
    data: PathBuf,
}

#[derive(Args)]
struct BenchArgs {
    /// What to measure (`failover` starts its own 3-node cluster and ignores --url).
    #[arg(default_value = "all", value_parser = workload_parser())]
    workload: BenchWhat,
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "HALE_URL")]
    url: String,
    /// Bearer token.
    #[arg(long, env = "HALE_TOKEN")]
    token: Option<String>,
    /// For an https --url: the CA certificate (PEM) that signed the server's certificate.
    #[arg(long, env = "HALE_CA")]
    ca: Option<PathBuf>,
    /// Concurrent connections.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Timed seconds per workload.
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// Untimed warm-up seconds per workload.
    #[arg(long, default_value_t = 2)]
    warmup_s: u64,
    /// Patients created before read and search workloads.
    #[arg(long, default_value_t = 1000)]
    seed_patients: usize,
    /// `search-mix`: run only these search kinds (comma-separated names, as the
    /// report prints them), e.g. to compare one release's mix with another's.
    #[arg(long, value_delimiter = ',')]
    kinds: Vec<String>,
    /// `search-mix`: per-patient searches draw from these patient ids only
    /// (comma-separated), e.g. the longest records for `patient-everything`.
    #[arg(long, value_delimiter = ',')]
    patients: Vec<String>,
    /// Free slots created for the booking race (the race ends when each has had its contenders).
    #[arg(long, default_value_t = 2000)]
    book_slots: usize,
    /// Booking attempts per slot in the booking race.
    #[arg(long, default_value_t = 2)]
    book_contenders: usize,
    /// `downtime-pack`: store directory for the demo board (loaded once, then reused).
    #[arg(long, default_value = "target/bench-downtime-store")]
    store: PathBuf,
    /// `downtime-pack`: patients in the demo board.
    #[arg(long, default_value_t = 10_000)]
    board_patients: usize,
    /// `downtime-pack`: the site whose pack is timed.
    #[arg(long, default_value = "QEH")]
    site: String,
    /// `offline`: notes saved at the cut-off site before the cut heals.
    #[arg(long, default_value_t = 10_000)]
    offline_entries: usize,
    /// Leader kills measured by `failover`.
    #[arg(long, default_value_t = 30)]
    trials: usize,
    /// `failover`: seconds of fault-free write load before the kills, in which every election is needless (0: skip).
    #[arg(long, default_value_t = 60)]
    load_s: u64,
    /// `failover`: concurrent writers in the fault-free phase.
    #[arg(long, default_value_t = 64)]
    load_clients: usize,
    /// `failover`: the voters' election_timeout_min_ms (default: the node's default).
    #[arg(long)]
    election_timeout_min_ms: Option<u64>,
    /// `failover`: the voters' election_timeout_max_ms.
    #[arg(long)]
    election_timeout_max_ms: Option<u64>,
    /// `failover`: the voters' heartbeat_interval_ms.
    #[arg(long)]
    heartbeat_interval_ms: Option<u64>,
    /// `failover`: emulate these links between the voters.
    #[command(flatten)]
    link: link_args::LinkArgs,
    /// `compare`: the peer FHIR server's base URL, driven side by side with --url.
    #[arg(long)]
    peer: Option<String>,
    /// `compare`: the peer's bearer token, if it needs one.
    #[arg(long)]
    peer_token: Option<String>,
    /// `compare`: Patients each server loads in the timed load row (16 connections).
    #[arg(long, default_value_t = 10_000)]
    load_patients: usize,
    /// `compare`: Hale's process id, to report its peak RSS.
    #[arg(long)]
    hale_pid: Option<u32>,
    /// `compare`: the peer's process id, to report its peak RSS.
    #[arg(long)]
    peer_pid: Option<u32>,
    /// Also print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// A load workload against a running server, or one of the self-contained benchmarks.
#[derive(Clone, Copy)]
enum BenchWhat {
    Load(hale_bench::Workload),
    Failover,
    Rebook,
    DowntimePack,
    Offline,
    Admission,
    Compare,
}

/// Errors are printed as one line of causes (`Error: what: why`), never with
/// a backtrace or `Debug` formatting (which is what returning `Result` from
/// `main` does, with a backtrace when RUST_BACKTRACE or RUST_LIB_BACKTRACE is
/// set): each is an expected condition with a message saying what to do.
fn main() -> std::process::ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let matches = examples::add(Cli::command()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if !matches!(cli.cmd, Cmd::Serve(_) | Cmd::Up(_) | Cmd::Chaos(_) | Cmd::Bench(_)) {
        sigpipe::exit_quietly_on_closed_pipe();
    }
    init_tracing(cli.log_json);
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    // The key of every SQLite file this process opens, for every command
    // (`serve` may name it in its config file instead, `[store] key_file`).
    if let Some(f) = std::env::var_os(hale_store::db::KEY_FILE_ENV).filter(|v| !v.is_empty()) {
        hale_store::db::use_key_file(std::path::Path::new(&f))?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.cmd {
        Cmd::Serve(a) => rt.block_on(serve(a)),
        Cmd::Import(a) => rt.block_on(import::run(&a.files, &a.url, a.token.as_deref(), a.batch)),
        Cmd::Export(a) => match &a.url {
            Some(url) => rt.block_on(bulk_cli::run(
                &bulk_cli::ExportRequest {
                    url,
                    token: a.token.as_deref(),
                    types: &a.types,
                    since: a.since.as_deref(),
                    patients: a.patients,
                    group: a.group.as_deref(),
                },
                &a.out,
            )),
            None => {
                if !a.types.is_empty() || a.since.is_some() || a.patients || a.group.is_some() {
                    bail!("--type, --since, --patients and --group choose what a server's $export holds: use them with --url");
                }
                export(&a.data, &a.out)
            }
        },
        Cmd::RecordHash(a) => record_hash(&a.data),
        Cmd::Bench(a) => rt.block_on(bench(a)),
        Cmd::Cluster(a) => rt.block_on(cluster_cli::run(a)),
        Cmd::Sync(a) => rt.block_on(sync_cli::run(a)),
        Cmd::Up(a) => rt.block_on(cluster_cli::up(a)),
        Cmd::Chaos(a) => rt.block_on(chaos::run(a)),
        Cmd::Outage(a) => rt.block_on(outage::run(a)),
        Cmd::DowntimePack(a) => downtime::run(a),
        Cmd::Backfill(a) => rt.block_on(backfill_cli::run(a)),
        Cmd::User(a) => rt.block_on(user_cli::run(a)),
        Cmd::Cert(a) => cert_cli::run(a),
        Cmd::Audit(a) => audit_cli::run(a),
        Cmd::Admit(a) => rt.block_on(admit_cli::run(a)),
        Cmd::Doctor(a) => rt.block_on(doctor::run(a)),
        Cmd::Backup(a) => rt.block_on(backup_cli::run(a)),
        Cmd::Restore(a) => rt.block_on(backup_cli::restore(a)),
        Cmd::Drill(a) => rt.block_on(drill_cli::run(a)),
    }
}

/// The log filter when neither HALE_LOG nor RUST_LOG is set: Hale's own INFO
/// lines (one per leadership and membership change, with its duration, from
/// hale-raft), and only openraft's warnings and errors: its INFO lines dump
/// votes and state structs on every election and are for debugging openraft.
const LOG_FILTER_DEFAULT: &str = "info,openraft=warn";

/// HALE_LOG, else RUST_LOG, else [`LOG_FILTER_DEFAULT`] (an empty variable counts as unset).
fn log_filter_directives(hale_log: Option<String>, rust_log: Option<String>) -> String {
    hale_log
        .filter(|v| !v.trim().is_empty())
        .or(rust_log.filter(|v| !v.trim().is_empty()))
        .unwrap_or_else(|| LOG_FILTER_DEFAULT.to_string())
}

fn init_tracing(json: bool) {
    let directives = log_filter_directives(std::env::var("HALE_LOG").ok(), std::env::var("RUST_LOG").ok());
    let filter = tracing_subscriber::EnvFilter::try_new(&directives).unwrap_or_else(|e| {
        eprintln!("HALE_LOG/RUST_LOG `{directives}` is not a log filter ({e}); using `{LOG_FILTER_DEFAULT}`. Example: HALE_LOG=info,openraft=debug");
        LOG_FILTER_DEFAULT.into()
    });
    // Colours only on a terminal: a log file or a pipe gets plain `key=value`
    // fields (scripts and tests look for `user=` and `password=` of the demo users).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

/// File, then environment, then flags.
fn load_config(a: &ServeArgs) -> Result<Config> {
    let mut cfg = match &a.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("cannot read config file {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("config file {} is not valid", p.display()))?
        }
        None => Config::default(),
    };
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let Some(v) = env("HALE_LISTEN") {
        cfg.listen = v;
    }
    if let Some(v) = env("HALE_DATA") {
        cfg.data = v.into();
    }
    if let Some(v) = env(hale_store::db::KEY_FILE_ENV) {
        cfg.store.key_file = Some(v.into());
    }
    if let Some(v) = env("HALE_BASE_URL") {
        cfg.base_url = Some(v);
    }
    if let Some(v) = env("HALE_OPEN_ACCESS") {
        cfg.auth.open_access = matches!(v.as_str(), "1" | "true" | "yes");
    }
    if let Some(v) = env("HALE_DEMO_PATIENTS") {
        cfg.demo.patients = v.parse().context("HALE_DEMO_PATIENTS must be a number")?;
    }
    if let Some(v) = env("HALE_BODY_BYTES_MAX") {
        cfg.limits.body_bytes_max = v.parse().context("HALE_BODY_BYTES_MAX must be a number")?;
    }
    if let Some(v) = a
        .referential_integrity
        .clone()
        .or_else(|| env("HALE_REFERENTIAL_INTEGRITY"))
    {
        cfg.references = match v.as_str() {
            "enforce" => References::Enforce,
            "off" => References::Off,
            other => bail!("HALE_REFERENTIAL_INTEGRITY must be `enforce` or `off` (got `{other}`)"),
        };
    }
    if let Some(v) = &a.data {
        cfg.data = v.clone();
    }
    if let Some(v) = &a.listen {
        cfg.listen = v.clone();
    }
    if a.demo {
        cfg.demo.enabled = true;
    }
    if let Some(n) = a.demo_patients {
        cfg.demo.patients = n;
    }
    if let Some(v) = env("HALE_NODE_ID") {
        cfg.cluster.node_id = v.parse().context("HALE_NODE_ID must be a number")?;
    }
    if let Some(v) = env("HALE_RAFT_LISTEN") {
        cfg.cluster.listen = Some(v);
    }
    if let Some(v) = env("HALE_RAFT_ADVERTISE") {
        cfg.cluster.advertise = Some(v);
    }
    if let Some(v) = env("HALE_SITE") {
        cfg.cluster.site = v;
    }
    if let Some(v) = env("HALE_CLUSTER_SECRET") {
        cfg.cluster.cluster_secret = Some(v);
    }
    if let Some(v) = a.node_id {
        cfg.cluster.node_id = v;
    }
    if let Some(v) = &a.raft_listen {
        cfg.cluster.listen = Some(v.clone());
    }
    if let Some(v) = &a.raft_advertise {
        cfg.cluster.advertise = Some(v.clone());
    }
    if let Some(v) = &a.site {
        cfg.cluster.site = v.clone();
    }
    if a.fault_injection {
        cfg.cluster.fault_injection = true;
    }
    if let Some(v) = env("HALE_TLS_CERT") {
        cfg.tls.cert = Some(v.into());
    }
    if let Some(v) = env("HALE_TLS_KEY") {
        cfg.tls.key = Some(v.into());
    }
    if let Some(v) = &a.tls_cert {
        cfg.tls.cert = Some(v.clone());
    }
    if let Some(v) = &a.tls_key {
        cfg.tls.key = Some(v.clone());
    }
    cfg.tls.files().map_err(anyhow::Error::msg)?;
    // A lone node bootstraps itself; a node meant for a cluster waits for `hale cluster`.
    cfg.cluster.bootstrap_single = a.bootstrap || (cfg.cluster.listen.is_none() && cfg.cluster.node_id == 1);
    if cfg.demo.enabled && cfg.demo.patients > hale_demo::MAX_PATIENTS {
        bail!(
            "the demo board holds at most {} patients (its NHS numbers come from the test ranges); got {}",
            hale_demo::MAX_PATIENTS,
            cfg.demo.patients
        );
    }
    if cfg.demo.enabled && cfg.auth.tokens.is_empty() {
        cfg.auth.tokens = demo_tokens();
    }
    Ok(cfg)
}

/// A server nobody can sign in to is refused (by `serve` and `hale doctor`).
fn sign_in_configured(cfg: &Config) -> Result<()> {
    if cfg.auth.tokens.is_empty() && !cfg.auth.open_access && cfg.auth.oidc.is_none() {
        bail!("no way to sign in is configured, so nobody could use this server. Add [auth.oidc] with the trust's identity provider (or, for development on loopback, [[auth.tokens]]), or run with --demo");
    }
    Ok(())
}

async fn serve(a: ServeArgs) -> Result<()> {
    let cfg = load_config(&a)?;
    sign_in_configured(&cfg)?;
    if cfg.demo.enabled {
        for t in &cfg.auth.tokens {
            tracing::info!(token = %t.token, user = %t.user, role = t.role.as_str(), "demo token");
        }
        for (u, r, _, p) in hale_server::demo::DEMO_USERS {
            tracing::info!(user = %u, password = %p, role = *r, "demo user (web UI sign-in)");
        }
    }
    if cfg.auth.open_access {
        tracing::warn!("OPEN ACCESS IS ON: requests without a token are served as an administrator. Never use this with real patient data.");
        tokio::spawn(async {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                tracing::warn!("OPEN ACCESS IS ON: anyone who can reach this port can read and change every record");
            }
        });
    }
    let listener = tokio::net::TcpListener::bind(&cfg.listen).await.with_context(|| {
        format!(
            "cannot listen on {}; is another server using it? Pick one with --listen",
            cfg.listen
        )
    })?;
    let api_url = match &cfg.base_url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None if cfg.tls.enabled() => format!("https://{}", listener.local_addr()?),
        None => format!("http://{}", listener.local_addr()?),
    };
    let node = hale_server::Node::start(cfg.clone(), api_url.clone())
        .await
        .with_context(|| format!("cannot start the node on data directory {}", cfg.data.display()))?;
    tracing::info!(listen = %cfg.listen, data = %cfg.data.display(), node_id = cfg.cluster.node_id, raft = ?cfg.cluster.listen, site = %cfg.cluster.site, "hale is serving FHIR R4 at {api_url}/");
    if cfg.demo.enabled {
        let app = node.app.clone();
        app.ready.store(false, std::sync::atomic::Ordering::Release);
        let (patients, seed) = (cfg.demo.patients, cfg.demo.seed);
        let today = chrono::Utc::now().date_naive();
        tokio::spawn(async move {
            if let Err(e) = hale_server::demo::load_if_empty(&app, patients, seed, today).await {
                tracing::error!(error = %e, "could not load the demo health board");
            }
            app.ready.store(true, std::sync::atomic::Ordering::Release);
        });
    }
    // The staff web UI: same process, same authorisation, audit and journal.
    let ui = hale_ui::Ui::new(node.app.clone())
        .context("cannot start the web UI (its session store, or the [auth.oidc.ui] settings)")?;
    tracing::info!("staff web UI at {api_url}/ui/");
    hale_server::serve_with(
        node,
        listener,
        move |fhir| {
            hale_ui::router(ui)
                .merge(fhir)
                .layer(axum::middleware::from_fn(hale_ui::root_redirect))
        },
        shutdown_signal(),
    )
    .await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}

fn export(data: &Path, out: &Path) -> Result<()> {
    use std::io::Write;
    if !data.join(hale_store::DB_FILE).exists() {
        bail!(
            "no Hale store in {}; point --data at a node's data directory",
            data.display()
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let reader = hale_store::Reader::open(data, 1)?;
    let mut total = 0;
    for rt in hale_fhir::ResourceType::ALL {
        let path = out.join(format!("{rt}.ndjson"));
        let tmp = out.join(format!(".{rt}.ndjson.tmp"));
        let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        let n = reader.with(|c| {
            hale_store::query::for_each_current(c, rt.as_str(), |json| {
                w.write_all(json.as_bytes())?;
                w.write_all(b"\n")
            })
        })?;
        w.flush()?;
        drop(w);
        if n == 0 {
            std::fs::remove_file(&tmp)?;
            // A file left from an earlier export would still hold deleted resources.
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
            continue;
        }
        std::fs::rename(&tmp, &path)?;
        println!("{:>8}  {}", n, path.display());
        total += n;
    }
    println!("{total:>8}  resources exported to {}", out.display());
    Ok(())
}

fn record_hash(data: &Path) -> Result<()> {
    if !data.join(hale_store::DB_FILE).exists() {
        bail!(
            "no Hale store in {}; point --data at a node's data directory",
            data.display()
        );
    }
    let hash = hale_store::export::record_hash_at(data)
        .with_context(|| format!("cannot read the store in {}", data.display()))?;
    println!("{hash}");
    Ok(())
}

/// The bench crate's own workload names and `failover`, listed in `--help`.
fn workload_parser() -> impl clap::builder::TypedValueParser<Value = BenchWhat> {
    use clap::builder::TypedValueParser;
    let mut names = hale_bench::Workload::VARIANTS.map(|w| w.name()).to_vec();
    names.extend(["failover", "rebook", "downtime-pack", "offline", "admission", "compare"]);
    clap::builder::PossibleValuesParser::new(names).map(|name| match name.as_str() {
        "failover" => BenchWhat::Failover,
        "rebook" => BenchWhat::Rebook,
        "downtime-pack" => BenchWhat::DowntimePack,
        "offline" => BenchWhat::Offline,
        "admission" => BenchWhat::Admission,
        "compare" => BenchWhat::Compare,
        _ => BenchWhat::Load(
            name.parse::<hale_bench::Workload>()
                .expect("a listed workload name parses"),
        ),
    })
}

async fn bench(a: BenchArgs) -> Result<()> {
    use hale_bench::BenchOpts;
    let workload = match a.workload {
        BenchWhat::Failover => {
            return failover::run(&failover::Opts {
                trials: a.trials,
                load_s: a.load_s,
                load_clients: a.load_clients,
                election_timeout_min_ms: a.election_timeout_min_ms,
                election_timeout_max_ms: a.election_timeout_max_ms,
                heartbeat_interval_ms: a.heartbeat_interval_ms,
                link: a.link.clone(),
                json: a.json,
            })
            .await
        }
        BenchWhat::Rebook => return tokio::task::spawn_blocking(move || outage::bench_rebook(a.json)).await?,
        BenchWhat::DowntimePack => return bench_downtime(&a),
        BenchWhat::Offline => return offline_bench::run(a.offline_entries, a.connections, a.json).await,
        BenchWhat::Admission => return admission_bench::run(a.duration_s, a.warmup_s, a.json).await,
        BenchWhat::Compare => match &a.peer {
            Some(_) => hale_bench::Workload::All,
            None => anyhow::bail!("bench compare needs --peer URL: the base URL of the FHIR server to compare with"),
        },
        BenchWhat::Load(w) => w,
    };
    let compare_peer = if matches!(a.workload, BenchWhat::Compare) {
        a.peer.clone()
    } else {
        None
    };
    let ca_pem = match &a.ca {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("cannot read the CA certificate {}", p.display()))?),
        None => None,
    };
    let opts = BenchOpts {
        base_url: a.url,
        token: a.token,
        ca_pem,
        connections: a.connections,
        duration_s: a.duration_s,
        warmup_s: a.warmup_s,
        seed_patients: a.seed_patients,
        book_slots: a.book_slots,
        book_contenders_per_slot: a.book_contenders,
        mix_kinds: a.kinds,
        mix_patients: a.patients,
        ..BenchOpts::default()
    };
    if let Some(peer_url) = compare_peer {
        let c = hale_bench::compare::compare(&hale_bench::compare::CompareOpts {
            hale: opts,
            peer_url,
            peer_token: a.peer_token,
            load_patients: a.load_patients,
            hale_pid: a.hale_pid,
            peer_pid: a.peer_pid,
            ..Default::default()
        })
        .await?;
        println!("{}", c.to_table());
        if a.json {
            println!("{}", serde_json::to_string_pretty(&c)?);
        }
        return Ok(());
    }
    let report = hale_bench::run(&opts, workload).await?;
    println!("{}", report.to_table());
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    }
    Ok(())
}

fn bench_downtime(a: &BenchArgs) -> Result<()> {
    eprintln!(
        "downtime-pack: {} patients' demo board in {} (loaded on first use) ...",
        a.board_patients,
        a.store.display()
    );
    let r = hale_continuity::bench::bench(&a.store, a.board_patients, &a.site, hale_continuity::DAYS_DEFAULT, 3)?;
    if let Some(s) = r.load_s {
        println!("loaded the board in {s:.1} s");
    }
    println!(
        "site {}, today + {} days, {}-patient board (encrypted for one age recipient):",
        r.site, r.days, r.board_patients
    );
    for (i, run) in r.runs.iter().enumerate() {
        println!(
            "  run {}: generate {:.0} ms, generate + write {:.0} ms; {} sessions, {} appointments, {} patients, {} pages, {:.2} MB",
            i + 1,
            run.generate_ms,
            run.generate_and_write_ms,
            run.sessions,
            run.appointments,
            run.patients,
            run.pages,
            run.bytes as f64 / 1e6
        );
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    }
    Ok(())
}

#[cfg(test)]
mod cli_tests;
