//! Hale's HTTP server: FHIR R4 REST (JSON) over axum.
//!
//! Only this crate knows FHIR wire details (content types, headers, Bundle
//! and OperationOutcome shapes on the wire, query strings). It turns requests
//! into `hale_store` commands and queries and never writes SQL.

pub mod access;
pub mod accounts;
pub mod admission;
pub mod audit_sink;
pub mod auth;
pub mod backfill;
pub mod backup;
pub mod bulk;
mod bundle;
pub mod capability;
pub mod cluster;
mod compartment;
pub mod config;
pub mod consistency;
pub mod demo;
pub mod downtime;
pub mod drill;
pub mod forward;
mod interactions;
pub mod metrics;
pub mod offline;
pub mod ops;
pub mod outage;
pub mod outbox;
pub mod rebook;
mod rest;
pub mod smart;
pub mod tls;
pub mod wire;

use crate::audit_sink::AuditSink;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::metrics::Metrics;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hale_raft::{RaftNode, RaftProposer};
use hale_store::propose::Proposer;
use hale_store::Reader;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Everything a request handler needs.
pub struct App {
    pub cfg: Config,
    pub proposer: Arc<dyn Proposer>,
    /// This node's replication: consistency checks, cluster status, membership.
    pub raft: Arc<RaftNode>,
    pub reader: Arc<Reader>,
    pub auth: Authenticator,
    pub audit: AuditSink,
    pub metrics: Metrics,
    /// False while the demo board is loading.
    pub ready: AtomicBool,
    /// Set when shutdown starts, so background work (the demo loader) stops.
    pub stopping: AtomicBool,
    /// Bounds the FHIR requests served at once (`limits.requests_inflight_max`),
    /// sharing them out among request classes (`[admission]`).
    pub admission: admission::Admission,
    /// Scheduled downtime packs: each site's last outcome.
    pub downtime: downtime::DowntimeState,
    /// Bulk Data `$export` jobs on this node.
    pub bulk: bulk::BulkJobs,
    /// The site journal: writes accepted while the cluster could not commit.
    pub offline: offline::Offline,
    /// Patient-level access: break-glass episodes this node started.
    pub access: access::Access,
    /// Backups: what the archive, base and verification schedules last did.
    pub backup: backup::BackupState,
    /// Drills: this node's records (`<data>/drills.jsonl`) and the one running.
    pub drills: drill::Drills,
}

static LAST_MS: AtomicI64 = AtomicI64::new(0);

/// Wall-clock ms, never going backwards within this process. Only the
/// accepting node calls this, before a command is proposed.
pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let prev = LAST_MS.fetch_max(now, Ordering::AcqRel);
    prev.max(now)
}

/// A running node's handles.
pub struct Node {
    pub app: Arc<App>,
    pub audit_task: tokio::task::JoinHandle<()>,
    /// TLS on the API, when `[tls]` is configured (loaded before the node starts).
    pub tls: Option<Arc<tls::Tls>>,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] hale_store::StoreError),
    #[error(transparent)]
    Raft(#[from] Box<hale_raft::node::NodeError>),
    #[error("cannot open the audit spool: {0}")]
    Spool(#[from] std::io::Error),
    #[error("configuration: {0}")]
    Config(String),
    #[error("cannot open the site journal: {0}")]
    Journal(#[from] hale_journal::JournalError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    StoreKey(#[from] hale_store::db::KeyError),
}

impl Node {
    /// Open the store in `cfg.data` and start replication (a single node is a
    /// cluster of one). `api_url` is how other nodes and tools reach this
    /// node's API; it is recorded in the cluster membership.
    pub async fn start(mut cfg: Config, api_url: String) -> Result<Node, StartError> {
        // Before anything opens a SQLite file: every one carries this key.
        if let Some(f) = &cfg.store.key_file {
            hale_store::db::use_key_file(f)?;
        }
        // A wrong or missing key stops the node here, with one message naming the file.
        hale_store::db::check_dir(&cfg.data).map_err(hale_store::StoreError::from)?;
        // The demo clinician works at a demo site, in the UI too (see access.rs).
        if cfg.demo.enabled && cfg.access.site.is_none() && matches!(cfg.cluster.site.as_str(), "" | "local") {
            cfg.access.site = Some(config::DEMO_SITE.into());
        }
        downtime::validate(&cfg.downtime).map_err(StartError::Config)?;
        backup::validate(&cfg.backup).map_err(StartError::Config)?;
        drill::validate(&cfg.drills).map_err(StartError::Config)?;
        auth::check_listen(&cfg.auth, &cfg.listen).map_err(StartError::Config)?;
        outbox::validate(&cfg.notify, &cfg.outage).map_err(StartError::Config)?;
        let tls = tls::Tls::from_settings(&cfg.tls).map_err(StartError::Tls)?;
        let raft = RaftNode::start(&cfg.data, cfg.cluster.clone(), api_url)
            .await
            .map_err(Box::new)?;
        let reader = Arc::new(Reader::open(&cfg.data, cfg.limits.readers)?);
        let mut node = Node::with_parts(cfg, raft, reader)?;
        node.tls = tls;
        Ok(node)
    }

    pub fn with_parts(cfg: Config, raft: Arc<RaftNode>, reader: Arc<Reader>) -> Result<Node, StartError> {
        let proposer: Arc<dyn Proposer> = Arc::new(RaftProposer(raft.clone()));
        let (audit, audit_task) = AuditSink::start(proposer.clone(), raft.id, cfg.limits.audit_queue_max, &cfg.data)?;
        let oidc = auth::oidc_validator(&cfg.auth, &cfg.data).map_err(StartError::Config)?;
        if let Some(v) = &oidc {
            auth::spawn_key_refresh(v.clone());
        }
        let auth = Authenticator::with_oidc(&cfg.auth, oidc);
        let admission =
            admission::Admission::new(&cfg.admission, cfg.limits.requests_inflight_max).map_err(StartError::Config)?;
        let bulk = bulk::BulkJobs::new(&cfg.data);
        let journal = hale_journal::Journal::open(
            &cfg.data,
            raft.id,
            &cfg.cluster.site,
            hale_journal::Limits {
                entries_max: cfg.limits.journal_entries_max,
                bytes_max: cfg.limits.journal_bytes_max,
            },
        )?;
        let offline = offline::Offline::open(journal)?;
        let drills = drill::Drills::open(&cfg.data);
        let app = Arc::new(App {
            bulk,
            offline,
            cfg,
            proposer,
            raft,
            reader,
            auth,
            audit,
            metrics: Metrics::default(),
            ready: AtomicBool::new(true),
            stopping: AtomicBool::new(false),
            admission,
            downtime: downtime::DowntimeState::default(),
            access: access::Access::default(),
            backup: backup::BackupState::default(),
            drills,
        });
        // The leader re-authenticates the users behind forwarded writes.
        app.raft
            .set_user_check(Arc::new(forward::ForwardedUsers(Arc::downgrade(&app))));
        Ok(Node {
            app,
            audit_task,
            tls: None,
        })
    }

    pub fn router(&self) -> Router {
        router(self.app.clone())
    }
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/.well-known/smart-configuration", get(smart::configuration))
        .merge(cluster::routes())
        .merge(offline::routes())
        .merge(ops::routes())
        .merge(drill::routes())
        .merge(admission::routes())
        .merge(accounts::routes())
        .route("/downtime/status", get(downtime::status))
        .route("/Communication/$staff-lists", get(outbox::staff_lists))
        .fallback(fhir)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            forward::capture_origin,
        ))
        .with_state(app)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    if app.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "loading demo data\n").into_response()
    }
}

async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    let elections = app.raft.election_counts();
    let mut gauges: Vec<(String, &str, f64)> = vec![
        (
            "hale_store_bytes".into(),
            "Size of the SQLite database and WAL files.",
            hale_store::disk_bytes(&app.cfg.data) as f64,
        ),
        (
            "hale_last_applied_index".into(),
            "Index of the last command applied to this node's store.",
            app.proposer.last_applied() as f64,
        ),
        (
            "hale_raft_term".into(),
            "Current raft term of this node.",
            app.raft.metrics().current_term as f64,
        ),
        (
            "hale_raft_is_leader".into(),
            "1 when this node leads the cluster.",
            if app.raft.metrics().current_leader == Some(app.raft.id) {
                1.0
            } else {
                0.0
            },
        ),
        (
            "hale_raft_leader_contact_ms".into(),
            "Milliseconds since this node's data was known to match the leader's (0 on the leader).",
            app.raft
                .node_status()
                .millis_since_leader_contact
                .map(|v| v as f64)
                .unwrap_or(-1.0),
        ),
        (
            "hale_raft_prevotes_started".into(),
            "Pre-votes this node ran since start because it heard no leader.",
            elections.prevotes_started as f64,
        ),
        (
            "hale_raft_prevotes_lost".into(),
            "Pre-votes refused by a majority since start: elections that would have disrupted a live leader.",
            elections.prevotes_lost as f64,
        ),
        (
            "hale_raft_elections_started".into(),
            "Elections (term increases) this node started since start, each after winning a pre-vote.",
            elections.elections_started as f64,
        ),
        (
            "hale_raft_leaderships_lost".into(),
            "Times this node stopped leading while running (a leader change with no crash behind it).",
            elections.leaderships_lost as f64,
        ),
        (
            "hale_audit_spooled_batches".into(),
            "Read-audit batches waiting on local disk for the cluster to commit them.",
            app.audit.spooled_batches() as f64,
        ),
        (
            "hale_audit_queue_records".into(),
            "Read audit records waiting to be committed.",
            app.audit.queued() as f64,
        ),
    ];
    gauges.extend(offline::gauges(&app));
    gauges.extend(backup::gauges(&app));
    gauges.extend(drill::gauges(&app));
    gauges.extend(admission::gauges(&app));
    if let Some(v) = app.auth.oidc() {
        gauges.push((
            "hale_oidc_jwks_fetches".into(),
            "Fetches of the identity provider's keys since start (at start, on age, and on an unknown key id, rate-limited).",
            v.jwks_fetches() as f64,
        ));
        gauges.push((
            "hale_oidc_keys_cached".into(),
            "Identity-provider keys this node holds (kept on disk for when the provider is unreachable).",
            v.key_count().await as f64,
        ));
    }
    for s in app.downtime.snapshot(now_ms()) {
        if let Some(age) = s.age_s {
            gauges.push((
                format!("hale_downtime_pack_age_seconds{{site=\"{}\"}}", s.site),
                "Age of each site's current downtime pack.",
                age as f64,
            ));
        }
    }
    if let Ok(counts) = app.reader.with(hale_store::query::counts) {
        for (t, n) in counts {
            gauges.push((
                format!("hale_resources{{type=\"{t}\"}}"),
                "Live resources by type.",
                n as f64,
            ));
        }
    }
    let mut resp = Response::new(Body::from(app.metrics.render(&gauges)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

/// Serve one FHIR request made inside this process (the web UI), through
/// exactly the path a network request takes: authorisation, read barrier,
/// audit, the site journal.
pub async fn handle_in_process(app: Arc<App>, req: Request) -> Response {
    let origin = forward::origin_of_request(&app, req.headers()).await;
    hale_raft::forward::with_origin(origin, fhir(State(app), req)).await
}

/// Every FHIR request: time it, bound it, count it.
async fn fhir(State(app): State<Arc<App>>, mut req: Request) -> Response {
    // Admission control: this request's class, and whether it is served now.
    let ticket = match admission::admit(&app, &mut req).await {
        Ok(t) => t,
        Err(resp) => {
            app.metrics.observe("other", 503, 0);
            return resp;
        }
    };
    let start = Instant::now();
    let method = req.method().clone();
    // A cheap refcounted clone: the path is only formatted if the log line is on.
    let uri = req.uri().clone();
    let level = match consistency::requested(req.headers()) {
        Ok(l) => l,
        Err(e) => return e.into_response(),
    };
    let is_read = consistency::is_read(&method, uri.path());
    let read_info = if is_read {
        match app.raft.read_barrier(level).await {
            Ok(info) => Some(info),
            Err(why) => {
                let mut resp = wire::FhirError::unavailable(why).into_response();
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
                consistency::node_headers(&app, resp.headers_mut());
                app.metrics.observe("other", 503, start.elapsed().as_micros() as u64);
                return resp;
            }
        }
    } else {
        None
    };
    let timeout = std::time::Duration::from_millis(app.cfg.limits.request_timeout_ms);
    let (route, mut resp) = match tokio::time::timeout(timeout, rest::dispatch(&app, req)).await {
        Ok((route, Ok(r))) => (route, r),
        Ok((route, Err(e))) => (route, e.into_response()),
        Err(_) => (
            "other",
            wire::FhirError::unavailable(format!(
                "the request took longer than {} ms and was abandoned; a write may still complete — read it back before retrying",
                app.cfg.limits.request_timeout_ms
            ))
            .into_response(),
        ),
    };
    match &read_info {
        Some(info) => {
            consistency::read_headers(info, resp.headers_mut());
            // Tentative versions from the site journal: not what the cluster holds.
            if resp.headers().contains_key("x-hale-sync") {
                resp.headers_mut()
                    .insert("x-hale-consistency", header::HeaderValue::from_static("stale"));
            }
        }
        None => consistency::write_headers(&app, resp.headers_mut()),
    }
    consistency::node_headers(&app, resp.headers_mut());
    let elapsed_us = start.elapsed().as_micros() as u64;
    let status = resp.status().as_u16();
    app.metrics.observe(route, status, elapsed_us);
    if let Some(t) = ticket {
        t.served();
    }
    if status >= 500 {
        tracing::warn!(%method, path = uri.path(), route, status, elapsed_us, "request failed");
    } else {
        tracing::debug!(%method, path = uri.path(), route, status, elapsed_us, "request");
    }
    resp
}

/// Serve until `shutdown` resolves, then drain the audit queue.
pub async fn serve(
    node: Node,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(node, listener, |r| r, shutdown).await
}

/// [`serve`], with the node's router passed through `wrap` first: the binary
/// adds the web UI's routes this way, so this crate does not know the UI.
pub async fn serve_with(
    node: Node,
    listener: tokio::net::TcpListener,
    wrap: impl FnOnce(Router) -> Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = wrap(node.router());
    let app = node.app.clone();
    let tls = match node.tls.clone() {
        Some(t) => Some(t),
        None => tls::Tls::from_settings(&app.cfg.tls).map_err(std::io::Error::other)?,
    };
    let app_timeout_ms = app.cfg.limits.request_timeout_ms;
    downtime::spawn_scheduler(app.clone());
    backup::spawn(app.clone());
    drill::spawn(app.clone());
    let drainer = offline::spawn_drainer(app.clone());
    // Patient notifications: only when `[notify]` configures an adapter; delivers while leader.
    let notify_worker = outbox::spawn_worker(app.clone());
    let notify_stop = notify_worker.as_ref().map(|w| w.stopper());
    let shutdown = async move {
        shutdown.await;
        app.stopping.store(true, Ordering::Release);
        if let Some(stop) = notify_stop {
            stop.signal();
        }
    };
    let served = match tls {
        // Open connections get as long as a request may take, and a little more.
        Some(tls) => {
            let drain_max = std::time::Duration::from_millis(app_timeout_ms + 5_000);
            tls::serve(listener, router, tls, shutdown, drain_max).await
        }
        None => axum::serve(listener, router).with_graceful_shutdown(shutdown).await,
    };
    drainer.abort();
    // In-flight sends finish and are recorded before the write path stops.
    if let Some(w) = notify_worker {
        w.stop().await;
    }
    served?;
    let Node { app, audit_task, .. } = node;
    let raft = app.raft.clone();
    drop(app);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), audit_task).await;
    raft.shutdown().await;
    Ok(())
}
