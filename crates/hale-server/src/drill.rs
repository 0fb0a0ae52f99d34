//! Drills that prove the standby (`[drills]`, `/ops/drill/*`, `/ops/drills`).
//!
//! - failover: on the leader, `RaftNode::hand_over` (to a chosen voter, or a
//!   leader stop), while a probe writer proposes small audit records through
//!   this node; the RTO is from the stop to the first probe acknowledged that
//!   was sent after it. Afterwards every voter must reach the last probe's
//!   index, and the voters' content hashes are compared at one applied index.
//! - voter-restart: the node answers, stops raft and exits with status 75
//!   ([`RESTART_EXIT_CODE`]) for its supervisor (systemd, `hale up`) to start
//!   it again; `hale drill voter-restart` measures the catch-up and records it.
//! - site-cut: on a learner, `RaftNode::cut_site` for N seconds; `hale drill
//!   site-cut` checks local reads and the journal meanwhile and records it.
//! - restore: `hale_backup::restore::verify` of the newest backup into scratch.
//!
//! Results are node-local (`<data>/drills.jsonl`, newest [`KEPT_MAX`] kept),
//! not FHIR resources: they describe this node's operation, a drill must be
//! recordable while the cluster cannot commit (that is when it matters), and
//! the replicated store stays a pure function of clinical and audit commands.

use crate::cluster::admin;
use crate::wire::FhirError;
use crate::App;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hale_fhir::IssueCode;
use hale_raft::node::AdminError;
use hale_store::command::{AuditAction, AuditRecord, Command, CommandKind};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Drill records kept in the file and in memory.
pub const KEPT_MAX: usize = 500;
/// The exit status of a node restarting for a drill (EX_TEMPFAIL).
pub const RESTART_EXIT_CODE: i32 = 75;
/// Default and largest time a failover drill may keep the old leader stopped.
pub const FAILOVER_LIMIT_MS_DEFAULT: u64 = 10_000;
/// How long after the stop probes keep trying for a first acknowledgement.
const PROBE_LIMIT: Duration = Duration::from_secs(30);
/// How long the voters may take to apply the last probe.
const CONVERGE_LIMIT: Duration = Duration::from_secs(60);
/// Attempts at reading every voter's content hash at one applied index.
const HASH_ATTEMPTS_MAX: usize = 20;
/// Detail text kept per record.
const DETAIL_BYTES_MAX: usize = 2_000;
pub const KINDS: [&str; 4] = ["failover", "voter-restart", "site-cut", "restore"];

/// `[drills]`: drills `serve` runs by itself. A voter that leads when its
/// failover slot comes hands over to the next voter in turn; slots are
/// staggered by node id so the voters' drills do not coincide.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DrillSettings {
    /// Seconds between failover drills (0: off). 86400: nightly.
    pub failover_every_s: u64,
    /// Seconds between restore drills of the newest backup (0: off; needs
    /// `[backup] dir` and `identity_file`).
    pub restore_every_s: u64,
    /// Seconds after the period's start that node 1's slot comes; node N's
    /// comes `(N - 1) * stagger_s` later.
    pub offset_s: u64,
    pub stagger_s: u64,
    /// Most the old leader stays stopped before the drill counts as failed.
    pub failover_limit_ms: u64,
}

impl Default for DrillSettings {
    fn default() -> Self {
        DrillSettings {
            failover_every_s: 0,
            restore_every_s: 0,
            offset_s: 2 * 3600,
            stagger_s: 600,
            failover_limit_ms: FAILOVER_LIMIT_MS_DEFAULT,
        }
    }
}

/// Checked at start.
pub fn validate(s: &DrillSettings) -> Result<(), String> {
    for (name, v) in [
        ("failover_every_s", s.failover_every_s),
        ("restore_every_s", s.restore_every_s),
    ] {
        if v != 0 && v < 60 {
            return Err(format!("[drills] {name} = {v}: use 0 (off) or at least 60 seconds"));
        }
    }
    if s.failover_limit_ms == 0 || s.failover_limit_ms > hale_raft::node::HAND_OVER_LIMIT_MS_MAX {
        return Err(format!(
            "[drills] failover_limit_ms = {}: use 1 to {}",
            s.failover_limit_ms,
            hale_raft::node::HAND_OVER_LIMIT_MS_MAX
        ));
    }
    Ok(())
}

/// One drill's outcome.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DrillRecord {
    /// Wall-clock ms when the drill started.
    pub at_ms: i64,
    pub kind: String,
    /// The node that recorded it.
    pub node: u64,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up_ms: Option<u64>,
    /// What happened, in words (what failed, and what to do).
    pub detail: String,
    /// "cli", "api" or "schedule".
    #[serde(default)]
    pub by: String,
    #[serde(default)]
    pub data: Value,
}

/// This node's drill records and the one drill that may run at a time.
pub struct Drills {
    path: PathBuf,
    records: Mutex<Vec<DrillRecord>>,
    running: AtomicBool,
}

impl Drills {
    pub fn open(data: &std::path::Path) -> Drills {
        let path = data.join("drills.jsonl");
        let mut records: Vec<DrillRecord> = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let excess = records.len().saturating_sub(KEPT_MAX);
        records.drain(..excess);
        Drills {
            path,
            records: Mutex::new(records),
            running: AtomicBool::new(false),
        }
    }

    /// Keep `r` (and rewrite the file when it has grown past twice the bound).
    pub fn record(&self, mut r: DrillRecord) {
        if r.detail.len() > DETAIL_BYTES_MAX {
            let mut cut = DETAIL_BYTES_MAX;
            while !r.detail.is_char_boundary(cut) {
                cut -= 1;
            }
            r.detail.truncate(cut);
        }
        if r.ok {
            tracing::info!(kind = %r.kind, rto_ms = ?r.rto_ms, catch_up_ms = ?r.catch_up_ms, "drill passed: {}", r.detail);
        } else {
            tracing::error!(kind = %r.kind, "DRILL FAILED: {}", r.detail);
        }
        let mut records = self.records.lock();
        records.push(r.clone());
        let excess = records.len().saturating_sub(KEPT_MAX);
        records.drain(..excess);
        let written = (|| -> std::io::Result<()> {
            let lines = std::fs::read_to_string(&self.path)
                .map(|t| t.lines().count())
                .unwrap_or(0);
            if lines >= 2 * KEPT_MAX {
                let tmp = self.path.with_extension("jsonl.tmp");
                let mut f = std::fs::File::create(&tmp)?;
                for r in records.iter() {
                    writeln!(f, "{}", serde_json::to_string(r)?)?;
                }
                f.sync_all()?;
                std::fs::rename(&tmp, &self.path)
            } else {
                let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
                writeln!(f, "{}", serde_json::to_string(&r)?)?;
                f.sync_data()
            }
        })();
        if let Err(e) = written {
            tracing::error!(error = %e, path = %self.path.display(), "cannot write the drill record; it is kept in memory only");
        }
    }

    pub fn list(&self) -> Vec<DrillRecord> {
        self.records.lock().clone()
    }

    /// The newest record of each kind.
    pub fn last_by_kind(&self) -> BTreeMap<String, DrillRecord> {
        let mut out = BTreeMap::new();
        for r in self.records.lock().iter() {
            out.insert(r.kind.clone(), r.clone());
        }
        out
    }

    fn start(&self) -> Option<RunningGuard<'_>> {
        self.running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| RunningGuard(&self.running))
    }
}

struct RunningGuard<'a>(&'a AtomicBool);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/ops/drills", get(list).post(record_from_cli))
        .route("/ops/drill/failover", post(failover))
        .route("/ops/drill/site-cut", post(site_cut))
        .route("/ops/drill/restart", post(restart))
        .route("/ops/drill/restore", post(restore))
}

/// `GET /ops/status` `drills` section: the newest outcome of each kind and the schedule.
pub fn status_section(app: &App) -> Value {
    let now = crate::now_ms();
    let last: serde_json::Map<String, Value> = app
        .drills
        .last_by_kind()
        .into_iter()
        .map(|(k, r)| {
            (
                k,
                json!({
                    "at_ms": r.at_ms,
                    "age_s": (now - r.at_ms).max(0) / 1000,
                    "ok": r.ok,
                    "rto_ms": r.rto_ms,
                    "catch_up_ms": r.catch_up_ms,
                    "detail": r.detail,
                }),
            )
        })
        .collect();
    let failed: Vec<&String> = last.iter().filter(|(_, v)| v["ok"] == false).map(|(k, _)| k).collect();
    json!({
        "last": last,
        "failing": failed,
        "running": app.drills.running.load(Ordering::Acquire),
        "pause_left_ms": app.raft.drill_pause_left_ms(),
        "schedule": app.cfg.drills,
    })
}

/// `/metrics`: per kind, the last drill's age and outcome.
pub fn gauges(app: &App) -> Vec<(String, &'static str, f64)> {
    let now = crate::now_ms();
    let mut g = Vec::new();
    for (kind, r) in app.drills.last_by_kind() {
        g.push((
            format!("hale_drill_last_age_seconds{{kind=\"{kind}\"}}"),
            "Seconds since the last drill of each kind on this node.",
            ((now - r.at_ms).max(0) / 1000) as f64,
        ));
        g.push((
            format!("hale_drill_last_ok{{kind=\"{kind}\"}}"),
            "1 when the last drill of each kind passed, 0 when it failed (a standby that did not take over).",
            if r.ok { 1.0 } else { 0.0 },
        ));
        if let Some(ms) = r.rto_ms.or(r.catch_up_ms) {
            g.push((
                format!("hale_drill_last_ms{{kind=\"{kind}\"}}"),
                "The last drill's RTO (failover) or catch-up time (voter-restart), in ms.",
                ms as f64,
            ));
        }
    }
    g
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    let code = if status == StatusCode::CONFLICT {
        IssueCode::Conflict
    } else {
        IssueCode::Processing
    };
    FhirError::new(status, code, msg.into()).into_response()
}

fn admin_error(e: AdminError) -> Response {
    match e {
        AdminError::NotLeader { ref leader_api, .. } => {
            let mut r = error(StatusCode::MISDIRECTED_REQUEST, e.to_string());
            if let Ok(v) = HeaderValue::from_str(leader_api) {
                r.headers_mut().insert("x-hale-leader", v);
            }
            r
        }
        AdminError::NoLeader => FhirError::unavailable(e.to_string()).into_response(),
        AdminError::Refused(msg) => error(StatusCode::CONFLICT, msg),
    }
}

fn busy() -> Response {
    error(
        StatusCode::CONFLICT,
        "another drill is running on this node; wait for it to finish (GET /ops/status shows drills.running)",
    )
}

async fn list(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(r) = admin(&app, &headers).await {
        return *r;
    }
    let mut records = app.drills.list();
    records.reverse();
    Json(json!({"node": app.raft.id, "drills": records})).into_response()
}

/// A result `hale drill` measured from outside (voter-restart, site-cut).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CliRecord {
    kind: String,
    at_ms: i64,
    ok: bool,
    rto_ms: Option<u64>,
    catch_up_ms: Option<u64>,
    detail: String,
    #[serde(default)]
    data: Value,
}

async fn record_from_cli(State(app): State<Arc<App>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Err(r) = admin(&app, &headers).await {
        return *r;
    }
    let r: CliRecord = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("not a drill record: {e}")),
    };
    if !KINDS.contains(&r.kind.as_str()) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("unknown drill kind '{}'; one of {}", r.kind, KINDS.join(", ")),
        );
    }
    if r.data.to_string().len() > 16 * 1024 {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "a drill record's data is at most 16 KiB");
    }
    let rec = DrillRecord {
        at_ms: r.at_ms,
        kind: r.kind,
        node: app.raft.id,
        ok: r.ok,
        rto_ms: r.rto_ms,
        catch_up_ms: r.catch_up_ms,
        detail: r.detail,
        by: "cli".into(),
        data: r.data,
    };
    app.drills.record(rec.clone());
    (StatusCode::CREATED, Json(rec)).into_response()
}

// --------------------------------------------------------------- failover

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FailoverRequest {
    target: Option<u64>,
    stop_leader: bool,
    limit_ms: Option<u64>,
}

async fn failover(State(app): State<Arc<App>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Err(r) = admin(&app, &headers).await {
        return *r;
    }
    let req: FailoverRequest = if body.is_empty() {
        FailoverRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("not a failover drill request: {e}")),
        }
    };
    let limit_ms = req.limit_ms.unwrap_or(app.cfg.drills.failover_limit_ms);
    if limit_ms == 0 || limit_ms > hale_raft::node::HAND_OVER_LIMIT_MS_MAX {
        return error(
            StatusCode::BAD_REQUEST,
            format!("limit_ms is 1 to {}", hale_raft::node::HAND_OVER_LIMIT_MS_MAX),
        );
    }
    match run_failover(&app, req.target, req.stop_leader, limit_ms, "api").await {
        Ok(rec) => Json(rec).into_response(),
        Err(r) => r,
    }
}

/// Probes proposed one at a time through this node until one sent after
/// `stop` is acknowledged: (the RTO, the highest acknowledged index, probes acknowledged).
async fn probe_writer(
    app: Arc<App>,
    stop: Arc<std::sync::OnceLock<Instant>>,
    quit: Arc<AtomicBool>,
) -> (Option<Duration>, u64, u64) {
    let mut n = 0u64;
    let mut last_index = 0;
    let mut acked = 0;
    loop {
        if quit.load(Ordering::Acquire) {
            return (None, last_index, acked);
        }
        n += 1;
        let sent = Instant::now();
        let cmd = Command {
            references: Default::default(),
            time_ms: crate::now_ms(),
            actor: hale_store::Actor::system(),
            kind: CommandKind::Audit(vec![AuditRecord {
                time_ms: crate::now_ms(),
                actor: hale_store::Actor::system(),
                action: AuditAction::Execute,
                rtype: "Basic".into(),
                id: None,
                patient: None,
                outcome: 0,
                detail: format!("drill failover probe {n} (node {})", app.raft.id),
                purpose: None,
            }]),
        };
        match app.proposer.propose(cmd).await {
            Ok((index, _)) => {
                acked += 1;
                last_index = last_index.max(index);
                if let Some(s) = stop.get() {
                    if sent >= *s {
                        return (Some(Instant::now() - *s), last_index, acked);
                    }
                }
            }
            Err(_) => {
                if stop.get().is_some_and(|s| s.elapsed() > PROBE_LIMIT) {
                    return (None, last_index, acked);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        if stop.get().is_none() {
            // Before the stop: a gentle trickle, not a load.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub async fn run_failover(
    app: &Arc<App>,
    target: Option<u64>,
    stop_leader: bool,
    limit_ms: u64,
    by: &str,
) -> Result<DrillRecord, Response> {
    let Some(_guard) = app.drills.start() else {
        return Err(busy());
    };
    let at_ms = crate::now_ms();
    let stop: Arc<std::sync::OnceLock<Instant>> = Arc::default();
    let quit = Arc::new(AtomicBool::new(false));
    let probes = tokio::spawn(probe_writer(app.clone(), stop.clone(), quit.clone()));
    // A first probe acknowledged before the stop shows writes went through.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s = stop.clone();
    let handed = app
        .raft
        .hand_over(target, stop_leader, Duration::from_millis(limit_ms), move || {
            let _ = s.set(Instant::now());
        })
        .await;
    let report = match handed {
        Ok(r) => r,
        Err(e) => {
            quit.store(true, Ordering::Release);
            let _ = probes.await;
            return Err(admin_error(e));
        }
    };
    let (rto, last_index, acked) = if report.new_leader.is_some() {
        probes.await.unwrap_or((None, 0, 0))
    } else {
        quit.store(true, Ordering::Release);
        probes.await.unwrap_or((None, 0, 0))
    };
    let mut problems = report.problems.clone();
    let mut data = json!({"hand_over": report, "probes_acked": acked, "last_probe_index": last_index});
    let ok = match (report.new_leader, rto) {
        (None, _) => {
            problems.insert(
                0,
                format!(
                    "no standby took over within {limit_ms} ms of node {} stopping; it leads again. Check the other voters (hale cluster status) before relying on a failover",
                    app.raft.id
                ),
            );
            false
        }
        (Some(_), None) => {
            problems.insert(
                0,
                format!(
                    "a new leader was elected, but no write was acknowledged within {} s",
                    PROBE_LIMIT.as_secs()
                ),
            );
            false
        }
        (Some(_), Some(_)) => true,
    };
    if ok {
        match replicas_agree(app, last_index).await {
            Ok(v) => data["replicas"] = v,
            Err(e) => {
                problems.push(e);
                data["replicas"] = json!({"ok": false});
            }
        }
    }
    let ok = ok && data["replicas"]["ok"] != false;
    let mut detail = match (report.new_leader, rto) {
        (Some(l), Some(rto)) => format!(
            "node {} {} and node {l} took over (term {}); first acknowledged write {} ms after the stop",
            report.from,
            if stop_leader { "stopped" } else { "handed over" },
            report.term_after.unwrap_or(0),
            rto.as_millis()
        ),
        _ => format!("node {} stopped for a failover drill", report.from),
    };
    if !problems.is_empty() {
        detail = format!("{detail}. {}", problems.join("; "));
    }
    let rec = DrillRecord {
        at_ms,
        kind: "failover".into(),
        node: app.raft.id,
        ok,
        rto_ms: rto.map(|d| d.as_millis() as u64),
        catch_up_ms: None,
        detail,
        by: by.into(),
        data,
    };
    app.drills.record(rec.clone());
    Ok(rec)
}

/// Every voter applies `index` (the last acknowledged probe), then the voters'
/// content hashes are compared at one applied index (re-read while the
/// indexes differ, as writes go on; "not compared" if they never settle).
async fn replicas_agree(app: &Arc<App>, index: u64) -> Result<Value, String> {
    let m = app.raft.metrics();
    let membership = m.membership_config.membership().clone();
    let voters: Vec<(u64, String)> = membership
        .voter_ids()
        .filter_map(|v| Some((v, membership.get_node(&v)?.raft_addr.clone())))
        .collect();
    let status = |id: u64, addr: String, hash: bool| {
        let net = app.raft.net.clone();
        async move {
            net.post::<_, hale_raft::NodeStatus>(
                Some(id),
                &addr,
                "/raft/status",
                &hash,
                Duration::from_secs(if hash { 60 } else { 2 }),
            )
            .await
        }
    };
    let started = Instant::now();
    for (id, addr) in &voters {
        loop {
            let applied = if *id == app.raft.id {
                Some(app.raft.applied_index())
            } else {
                status(*id, addr.clone(), false).await.ok().map(|s| s.applied_index)
            };
            if applied.is_some_and(|a| a >= index) {
                break;
            }
            if started.elapsed() > CONVERGE_LIMIT {
                return Err(format!(
                    "voter {id} did not apply index {index} (the last acknowledged probe) within {} s: applied {applied:?}",
                    CONVERGE_LIMIT.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for _ in 0..HASH_ATTEMPTS_MAX {
        let mut seen = Vec::new();
        for (id, addr) in &voters {
            match status(*id, addr.clone(), true).await {
                Ok(s) => seen.push((*id, s.applied_index, s.content_hash.unwrap_or_default())),
                Err(e) => return Err(format!("voter {id} did not give its content hash: {e}")),
            }
        }
        let first = &seen[0];
        if seen.iter().all(|s| s.1 == first.1) {
            if seen.iter().all(|s| s.2 == first.2) {
                return Ok(
                    json!({"ok": true, "voters_applied": index, "hash_index": first.1, "content_hash": first.2}),
                );
            }
            return Err(format!(
                "the voters' content hashes differ at index {}: {:?}",
                first.1,
                seen.iter().map(|s| (s.0, s.2.clone())).collect::<Vec<_>>()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(json!({"ok": true, "voters_applied": index, "hash_index": null,
        "note": "every voter applied the last probe; content hashes not compared: the applied indexes kept moving under writes"}))
}

// -------------------------------------------------------------- site cut

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteCutRequest {
    seconds: u64,
}

async fn site_cut(State(app): State<Arc<App>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Err(r) = admin(&app, &headers).await {
        return *r;
    }
    let req: SiteCutRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("a site cut-off needs {{\"seconds\": N}}: {e}"),
            )
        }
    };
    match app.raft.cut_site(Duration::from_secs(req.seconds)) {
        Ok(ms) => {
            Json(json!({"node": app.raft.id, "cut_ms": ms, "until_ms": crate::now_ms() + ms as i64})).into_response()
        }
        Err(e) => admin_error(e),
    }
}

// --------------------------------------------------------------- restart

async fn restart(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(r) = admin(&app, &headers).await {
        return *r;
    }
    let m = app.raft.metrics();
    if m.current_leader == Some(app.raft.id) {
        return error(
            StatusCode::CONFLICT,
            "this node leads; hand the leadership over first (hale drill failover), then restart it",
        );
    }
    let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
    if voters.len() < 3 && voters.contains(&app.raft.id) {
        return error(
            StatusCode::CONFLICT,
            format!(
                "a voter restart drill needs at least 3 voters (this cluster has {}): the others must keep a quorum",
                voters.len()
            ),
        );
    }
    let Some(guard) = app.drills.start() else { return busy() };
    std::mem::forget(guard);
    tracing::warn!(
        exit = RESTART_EXIT_CODE,
        "drill: restarting; this process exits for its supervisor to start it again"
    );
    let a = app.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        a.stopping.store(true, Ordering::Release);
        a.raft.shutdown().await;
        std::process::exit(RESTART_EXIT_CODE);
    });
    (
        StatusCode::ACCEPTED,
        Json(
            json!({"node": app.raft.id, "exit_code": RESTART_EXIT_CODE, "at_ms": crate::now_ms(),
            "note": "the node exits now; its supervisor (systemd Restart=on-failure, hale up) starts it again"}),
        ),
    )
        .into_response()
}

// --------------------------------------------------------------- restore

async fn restore(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(r) = admin(&app, &headers).await {
        return *r;
    }
    match run_restore(&app, "api").await {
        Ok(rec) => Json(rec).into_response(),
        Err(r) => r,
    }
}

pub async fn run_restore(app: &Arc<App>, by: &str) -> Result<DrillRecord, Response> {
    let (Some(dir), Some(idf)) = (app.cfg.backup.dir.clone(), app.cfg.backup.identity_file.clone()) else {
        return Err(error(
            StatusCode::CONFLICT,
            "a restore drill needs [backup] dir and identity_file on this node (the age key verification decrypts with)",
        ));
    };
    let Some(_guard) = app.drills.start() else {
        return Err(busy());
    };
    let at_ms = crate::now_ms();
    let started = Instant::now();
    let data = app.cfg.data.clone();
    let handle = tokio::runtime::Handle::current();
    let res = tokio::task::spawn_blocking(move || -> Result<hale_backup::VerifyRecord, String> {
        let ids = hale_backup::read_identities(&idf).map_err(|e| e.to_string())?;
        handle
            .block_on(hale_backup::restore::verify(&dir, &ids, &data))
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(format!("the restore drill panicked: {e}")));
    let took_ms = started.elapsed().as_millis() as u64;
    let rec = match res {
        Ok(v) => DrillRecord {
            at_ms,
            kind: "restore".into(),
            node: app.raft.id,
            ok: v.ok,
            rto_ms: Some(took_ms),
            catch_up_ms: None,
            detail: if v.ok {
                format!(
                    "the newest backup (index {:?}) restored into scratch and matched its manifest's content hash in {took_ms} ms",
                    v.base_last_log_index
                )
            } else {
                format!("the newest backup did not verify: {}", v.problems.join("; "))
            },
            by: by.into(),
            data: serde_json::to_value(&v).unwrap_or(Value::Null),
        },
        Err(e) => DrillRecord {
            at_ms,
            kind: "restore".into(),
            node: app.raft.id,
            ok: false,
            rto_ms: None,
            catch_up_ms: None,
            detail: format!("the restore drill could not run: {e}"),
            by: by.into(),
            data: Value::Null,
        },
    };
    app.drills.record(rec.clone());
    Ok(rec)
}

// -------------------------------------------------------------- schedule

/// The slot number of `now_s` for a period `every_s` whose slots start
/// `phase_s` into each period (None when off).
pub fn slot(now_s: u64, every_s: u64, phase_s: u64) -> Option<u64> {
    if every_s == 0 {
        return None;
    }
    Some((now_s + every_s - phase_s % every_s) / every_s)
}

/// The voter the leader hands over to in slot `n`: the voters other than the
/// leader take turns.
pub fn target_for(voters: &[u64], leader: u64, n: u64) -> Option<u64> {
    let others: Vec<u64> = voters.iter().copied().filter(|v| *v != leader).collect();
    if others.is_empty() {
        return None;
    }
    Some(others[(n % others.len() as u64) as usize])
}

/// Run the `[drills]` schedule (nothing when both periods are 0).
pub fn spawn(app: Arc<App>) {
    let s = app.cfg.drills.clone();
    if s.failover_every_s == 0 && s.restore_every_s == 0 {
        return;
    }
    tokio::spawn(async move {
        let phase = s.offset_s + (app.raft.id.saturating_sub(1)) * s.stagger_s;
        let now_s = || (crate::now_ms() / 1000).max(0) as u64;
        // Slots already past at start are not run late.
        let mut failover_done = slot(now_s(), s.failover_every_s, phase);
        let mut restore_done = slot(now_s(), s.restore_every_s, phase);
        loop {
            tokio::time::sleep(Duration::from_secs(15)).await;
            if app.stopping.load(Ordering::Acquire) {
                return;
            }
            let n = slot(now_s(), s.failover_every_s, phase);
            if n > failover_done {
                failover_done = n;
                let m = app.raft.metrics();
                if m.current_leader == Some(app.raft.id) {
                    let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
                    let target = target_for(&voters, app.raft.id, n.unwrap_or(0));
                    if let Err(r) = run_failover(&app, target, false, s.failover_limit_ms, "schedule").await {
                        tracing::error!(status = %r.status(), "the scheduled failover drill could not start");
                    }
                }
            }
            let n = slot(now_s(), s.restore_every_s, phase);
            if n > restore_done {
                restore_done = n;
                if let Err(r) = run_restore(&app, "schedule").await {
                    tracing::error!(status = %r.status(), "the scheduled restore drill could not start");
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_staggered_and_targets_take_turns() {
        assert_eq!(slot(100, 0, 0), None);
        let day = 86_400;
        // Node 1's slot at 02:00, node 2's ten minutes later: a new slot
        // begins exactly then, once a day.
        let (n1, n2) = (2 * 3600, 2 * 3600 + 600);
        assert_eq!(slot(n1 - 1, day, n1), Some(0));
        assert_eq!(slot(n1, day, n1), Some(1));
        assert_eq!(slot(n1 + day - 1, day, n1), Some(1));
        assert_eq!(slot(n1 + day, day, n1), Some(2));
        assert_eq!(slot(n1, day, n2), Some(0));
        assert_eq!(slot(n2, day, n2), Some(1));
        let voters = [1, 2, 3];
        assert_eq!(target_for(&voters, 1, 0), Some(2));
        assert_eq!(target_for(&voters, 1, 1), Some(3));
        assert_eq!(target_for(&voters, 2, 1), Some(3));
        assert_eq!(target_for(&[1], 1, 0), None);
    }

    #[test]
    fn records_survive_a_restart_and_stay_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let d = Drills::open(dir.path());
        for i in 0..(KEPT_MAX + 10) {
            d.record(DrillRecord {
                at_ms: i as i64,
                kind: KINDS[i % 4].into(),
                node: 1,
                ok: i % 7 != 0,
                rto_ms: Some(i as u64),
                catch_up_ms: None,
                detail: "x".repeat(3_000),
                by: "api".into(),
                data: Value::Null,
            });
        }
        let again = Drills::open(dir.path());
        assert_eq!(again.list().len(), KEPT_MAX);
        assert_eq!(again.list().last().unwrap().at_ms, (KEPT_MAX + 9) as i64);
        assert!(again.list()[0].detail.len() <= DETAIL_BYTES_MAX);
        assert_eq!(again.last_by_kind().len(), 4);
    }
}
