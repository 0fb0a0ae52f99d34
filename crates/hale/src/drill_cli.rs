//! `hale drill failover|voter-restart|site-cut|restore|list`: drills that
//! prove the standby, on a live cluster, over the nodes' admin API
//! (hale-server `drill.rs`). Each result is stored on a node
//! (`/ops/drills`, `/ops/status` `drills`, `/metrics`).

use crate::cluster_cli::outcome_text;
use crate::failover::percentile;
use crate::http::{Client, Reply};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Bound on one admin request (a failover drill answers after the hand-over and checks).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(180);
/// Most failover runs in one invocation.
const RUNS_MAX: usize = 1_000;

#[derive(Args)]
#[command(after_help = "Examples:
  hale drill failover --url http://10.0.0.5:8080 --token $ADMIN_TOKEN
  hale drill failover --stop-leader --runs 20
  hale drill voter-restart --node-id 2
  hale drill site-cut --node-id 10 --seconds 30 --probe-token $CLINICIAN_TOKEN --probe-file probe.json
  hale drill restore
  hale drill list")]
pub struct DrillArgs {
    #[command(subcommand)]
    cmd: DrillCmd,
}

#[derive(Subcommand)]
enum DrillCmd {
    /// Hand the leadership to another voter (or, with --stop-leader, stop the leader for a
    /// moment) while writes go on; the RTO is from the stop to the first acknowledged write.
    #[command(after_help = "Examples:
  hale drill failover --url http://10.0.0.5:8080 --token $ADMIN_TOKEN            # to the most up-to-date voter
  hale drill failover --target 3                                                 # to node 3
  hale drill failover --stop-leader --runs 20                                    # RTO p50/p99 over 20 runs")]
    Failover(FailoverArgs),
    /// Restart a voter (it exits for its supervisor to start it again) and measure its catch-up.
    #[command(after_help = "Examples:
  hale drill voter-restart --url http://10.0.0.5:8080 --token $ADMIN_TOKEN --node-id 2")]
    VoterRestart(RestartArgs),
    /// Cut a learner (a hospital site) off for a while: its reads and journal must go on, and
    /// its journal must sync back after.
    #[command(after_help = "Examples:
  hale drill site-cut --node-id 10 --seconds 30
  hale drill site-cut --node-id 10 --probe-token $CLINICIAN_TOKEN --probe-file probe-observation.json")]
    SiteCut(SiteCutArgs),
    /// Restore the newest backup into scratch on a node with [backup] and verify it.
    #[command(after_help = "Examples:
  hale drill restore --url http://10.0.0.5:8080 --token $ADMIN_TOKEN")]
    Restore(Common),
    /// The drills a node recorded, newest first.
    #[command(after_help = "Examples:
  hale drill list --url http://10.0.0.5:8080 --token $ADMIN_TOKEN
  hale drill list --json")]
    List(Common),
}

#[derive(Args, Clone)]
struct Common {
    /// API URL of a node of the cluster.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "HALE_URL")]
    url: String,
    /// Admin (or service) bearer token.
    #[arg(long, env = "HALE_TOKEN")]
    token: Option<String>,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct FailoverArgs {
    #[command(flatten)]
    common: Common,
    /// The voter to hand over to (default: the most up-to-date one).
    #[arg(long)]
    target: Option<u64>,
    /// Stop the leader instead of handing over: the voters elect a new one by themselves, as after a crash.
    #[arg(long, conflicts_with = "target")]
    stop_leader: bool,
    /// Drills to run one after the other (the figures are then p50 and p99).
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Most the old leader stays stopped before the drill fails (ms; the node's [drills] default otherwise).
    #[arg(long)]
    limit_ms: Option<u64>,
}

#[derive(Args)]
struct RestartArgs {
    #[command(flatten)]
    common: Common,
    /// The voter to restart (default: the highest-numbered voter that does not lead).
    #[arg(long)]
    node_id: Option<u64>,
    /// How long the node may take to come back and catch up (seconds).
    #[arg(long, default_value_t = 300)]
    wait_s: u64,
}

#[derive(Args)]
struct SiteCutArgs {
    #[command(flatten)]
    common: Common,
    /// The learner to cut off (default: the first learner).
    #[arg(long)]
    node_id: Option<u64>,
    /// How long the cut lasts (1 to 600 s).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// A user's token for the site checks: a local read, and with --probe-file a journal write.
    #[arg(long)]
    probe_token: Option<String>,
    /// A FHIR resource (JSON) the probe user may create at a cut-off site, e.g. an Observation
    /// marked entered-in-error on the trust's test patient; written during the cut, read back after.
    #[arg(long, requires = "probe_token")]
    probe_file: Option<std::path::PathBuf>,
    /// How long the journal may take to sync back after the cut (seconds).
    #[arg(long, default_value_t = 300)]
    wait_s: u64,
}

pub async fn run(a: DrillArgs) -> Result<()> {
    match a.cmd {
        DrillCmd::Failover(f) => failover(f).await,
        DrillCmd::VoterRestart(r) => voter_restart(r).await,
        DrillCmd::SiteCut(s) => site_cut(s).await,
        DrillCmd::Restore(c) => restore(c).await,
        DrillCmd::List(c) => list(c).await,
    }
}

fn client(url: &str, token: Option<&str>) -> Result<Client> {
    Ok(Client::new(url, token)?.with_timeout(REQUEST_TIMEOUT))
}

fn refused(what: &str, r: &Reply) -> anyhow::Error {
    let hint = match r.status {
        401 | 403 => "; pass an admin token with --token or HALE_TOKEN",
        404 => "; is this a Hale node new enough to have drills?",
        _ => "",
    };
    anyhow::anyhow!("{what}: HTTP {} {}{hint}", r.status, outcome_text(&r.body))
}

/// `/cluster/status` from `url`.
async fn cluster_status(url: &str, token: Option<&str>) -> Result<Value> {
    let r = client(url, token)?
        .with_timeout(Duration::from_secs(15))
        .send("GET", "/cluster/status", None)
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    if r.status != 200 {
        return Err(refused(&format!("{url}/cluster/status"), &r));
    }
    r.json()
}

fn member(status: &Value, id: u64) -> Option<&Value> {
    status["members"].as_array()?.iter().find(|m| m["id"] == id)
}

fn api_url_of(status: &Value, id: u64) -> Result<String> {
    member(status, id)
        .and_then(|m| m["api_url"].as_str())
        .map(str::to_string)
        .with_context(|| format!("node {id} is not a member of this cluster"))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Store a result the CLI measured on node `url`.
async fn record(url: &str, token: Option<&str>, rec: &Value) -> Result<()> {
    let r = client(url, token)?
        .send("POST", "/ops/drills", Some(rec.to_string().into_bytes()))
        .await?;
    if r.status != 201 {
        return Err(refused(&format!("recording the drill on {url}"), &r));
    }
    Ok(())
}

/// Wait until every member answers and none lags the leader by more than a few entries.
async fn wait_settled(url: &str, token: Option<&str>, limit: Duration) -> Result<()> {
    let started = Instant::now();
    loop {
        let why = match cluster_status(url, token).await {
            Ok(s) if s["leader"].is_u64() => {
                let behind: Vec<String> = s["members"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|m| m["reachable"] != true || m["lag_entries"].as_u64().is_none_or(|l| l > 5))
                    .map(|m| format!("node {}", m["id"]))
                    .collect();
                if behind.is_empty() {
                    return Ok(());
                }
                format!("{} not caught up", behind.join(", "))
            }
            Ok(_) => "no leader".into(),
            Err(e) => format!("{e:#}"),
        };
        if started.elapsed() > limit {
            bail!(
                "the cluster did not settle within {} s ({why}); see hale cluster status",
                limit.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ----------------------------------------------------------------- failover

async fn failover(a: FailoverArgs) -> Result<()> {
    if a.runs == 0 || a.runs > RUNS_MAX {
        bail!("--runs is 1 to {RUNS_MAX}");
    }
    let token = a.common.token.as_deref();
    let mut body = json!({"stop_leader": a.stop_leader});
    if let Some(t) = a.target {
        body["target"] = json!(t);
    }
    if let Some(l) = a.limit_ms {
        body["limit_ms"] = json!(l);
    }
    let mut rtos = Vec::new();
    let mut records = Vec::new();
    let mut failed = 0;
    for run in 1..=a.runs {
        if run > 1 {
            wait_settled(&a.common.url, token, Duration::from_secs(120)).await?;
        }
        let status = cluster_status(&a.common.url, token).await?;
        let Some(leader) = status["leader"].as_u64() else {
            bail!("the cluster has no leader now; a failover drill needs one. Retry in a moment, or see hale cluster status");
        };
        let mut url = api_url_of(&status, leader)?;
        let mut r = client(&url, token)?
            .send("POST", "/ops/drill/failover", Some(body.to_string().into_bytes()))
            .await?;
        if r.status == 421 {
            if let Some(l) = r.header("x-hale-leader") {
                url = l.to_string();
                r = client(&url, token)?
                    .send("POST", "/ops/drill/failover", Some(body.to_string().into_bytes()))
                    .await?;
            }
        }
        if r.status != 200 {
            return Err(refused(&format!("the failover drill on {url}"), &r));
        }
        let rec = r.json()?;
        let ok = rec["ok"] == true;
        if !ok {
            failed += 1;
        }
        if let Some(ms) = rec["rto_ms"].as_u64() {
            rtos.push(ms as f64);
        }
        if !a.common.json {
            println!(
                "run {run:>3}/{}: {} {}",
                a.runs,
                if ok { "ok  " } else { "FAILED" },
                rec["detail"].as_str().unwrap_or("")
            );
        }
        records.push(rec);
    }
    let mut sorted = rtos.clone();
    sorted.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&sorted, 50.0), percentile(&sorted, 99.0));
    if a.common.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"runs": a.runs, "failed": failed, "rto_p50_ms": p50, "rto_p99_ms": p99, "drills": records})
            )?
        );
    } else if a.runs > 1 {
        println!(
            "failover ({}): {} runs, {failed} failed; RTO p50 {p50:.0} ms, p99 {p99:.0} ms",
            if a.stop_leader { "leader stop" } else { "hand-over" },
            a.runs
        );
    }
    if failed > 0 {
        bail!("{failed} of {} failover drills failed: a standby did not take over, or writes did not resume; see the details above and GET /ops/status on the leader", a.runs);
    }
    Ok(())
}

// ------------------------------------------------------------ voter restart

async fn voter_restart(a: RestartArgs) -> Result<()> {
    let token = a.common.token.as_deref();
    let status = cluster_status(&a.common.url, token).await?;
    let leader = status["leader"].as_u64();
    let id = match a.node_id {
        Some(id) => id,
        None => status["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["role"] == "voter" && m["id"].as_u64() != leader)
            .filter_map(|m| m["id"].as_u64())
            .max()
            .context("no voter that does not lead; a voter restart drill needs at least 3 voters")?,
    };
    let node_url = api_url_of(&status, id)?;
    // Ask another node about the cluster while this one is away.
    let observer = status["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["id"].as_u64() != Some(id) && m["role"] == "voter")
        .find_map(|m| m["api_url"].as_str().map(str::to_string))
        .context("no other voter to watch the cluster from")?;
    let at_ms = now_ms();
    let t0 = Instant::now();
    let r = client(&node_url, token)?
        .send("POST", "/ops/drill/restart", None)
        .await?;
    if r.status != 202 {
        return Err(refused(&format!("restarting node {id}"), &r));
    }
    let limit = Duration::from_secs(a.wait_s);
    // Down, then back.
    let mut went_down = false;
    let back = loop {
        let up = match Client::new(&node_url, None)?
            .with_timeout(Duration::from_secs(2))
            .send("GET", "/healthz", None)
            .await
        {
            Ok(r) => r.status == 200,
            Err(_) => false,
        };
        if !up {
            went_down = true;
        } else if went_down {
            break t0.elapsed();
        }
        if t0.elapsed() > limit {
            let why = if went_down {
                format!("node {id} stopped but did not come back within {} s: is it run under a supervisor that restarts it (systemd Restart=on-failure, hale up)? Start it by hand", a.wait_s)
            } else {
                format!("node {id} did not stop within {} s", a.wait_s)
            };
            let rec = json!({"kind": "voter-restart", "at_ms": at_ms, "ok": false, "detail": why});
            let _ = record(&observer, token, &rec).await;
            bail!("{why}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Caught up: applied what the leader had applied when the node came back.
    let s = cluster_status(&observer, token).await?;
    let leader = s["leader"].as_u64().context("no leader while the node restarted")?;
    let goal = member(&s, leader)
        .and_then(|m| m["applied_index"].as_u64())
        .unwrap_or(0);
    let caught = loop {
        let applied = cluster_status(&observer, token)
            .await
            .ok()
            .and_then(|s| member(&s, id).and_then(|m| m["applied_index"].as_u64()));
        if applied.is_some_and(|a| a >= goal) {
            break t0.elapsed();
        }
        if t0.elapsed() > limit {
            let why = format!(
                "node {id} came back but did not apply index {goal} (the leader's when it returned) within {} s: applied {applied:?}",
                a.wait_s
            );
            let rec = json!({"kind": "voter-restart", "at_ms": at_ms, "ok": false, "detail": why});
            let _ = record(&node_url, token, &rec).await;
            bail!("{why}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let detail = format!(
        "node {id} restarted: back in {} ms, caught up with the leader's index {goal} {} ms after the restart began",
        back.as_millis(),
        caught.as_millis()
    );
    let rec = json!({"kind": "voter-restart", "at_ms": at_ms, "ok": true, "catch_up_ms": caught.as_millis() as u64,
        "detail": detail, "data": {"node": id, "back_ms": back.as_millis() as u64, "goal_index": goal}});
    record(&node_url, token, &rec).await?;
    if a.common.json {
        println!("{}", serde_json::to_string_pretty(&rec)?);
    } else {
        println!("ok   {detail}");
    }
    Ok(())
}

// ------------------------------------------------------------------ site cut

async fn site_cut(a: SiteCutArgs) -> Result<()> {
    let token = a.common.token.as_deref();
    let probe: Option<Value> = match &a.probe_file {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
            let v: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a FHIR resource in JSON", p.display()))?;
            if !v["resourceType"].is_string() {
                bail!("{} has no resourceType", p.display());
            }
            Some(v)
        }
        None => None,
    };
    let status = cluster_status(&a.common.url, token).await?;
    let id = match a.node_id {
        Some(id) => id,
        None => status["members"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["role"] == "learner")
            .and_then(|m| m["id"].as_u64())
            .context("this cluster has no learner (hospital site) to cut off")?,
    };
    let site_url = api_url_of(&status, id)?;
    let leader = status["leader"].as_u64().context("the cluster has no leader now")?;
    let leader_url = api_url_of(&status, leader)?;
    let at_ms = now_ms();
    let r = client(&site_url, token)?
        .send(
            "POST",
            "/ops/drill/site-cut",
            Some(json!({"seconds": a.seconds}).to_string().into_bytes()),
        )
        .await?;
    if r.status != 200 {
        return Err(refused(&format!("cutting node {id} off"), &r));
    }
    let cut_started = Instant::now();
    let cut = Duration::from_secs(a.seconds);
    let mut problems = Vec::new();
    // Reads at the site go on: the node's own store, local consistency.
    let read = probe_client(&site_url, a.probe_token.as_deref().or(token))?
        .send_with("GET", "/Patient?_count=1", None, &[("x-hale-consistency", "local")])
        .await;
    let reads_ok = match &read {
        Ok(r) if r.status == 200 => true,
        Ok(r) => {
            problems.push(format!("a local read at the site answered HTTP {}", r.status));
            false
        }
        Err(e) => {
            problems.push(format!("a local read at the site failed: {e:#}"));
            false
        }
    };
    // The journal takes a write.
    let mut probe_id = None;
    if let (Some(p), Some(t)) = (&probe, a.probe_token.as_deref()) {
        let rt = p["resourceType"].as_str().unwrap_or_default().to_string();
        let r = probe_client(&site_url, Some(t))?
            .send_with(
                "POST",
                &format!("/{rt}"),
                Some(p.to_string().into_bytes()),
                &[("x-hale-offline", "accept")],
            )
            .await;
        match r {
            Ok(r) if r.status == 202 => {
                probe_id = r
                    .json()
                    .ok()
                    .and_then(|v| v["id"].as_str().map(|id| format!("{rt}/{id}")));
            }
            Ok(r) => problems.push(format!(
                "the site's journal did not take the probe write: HTTP {} {}",
                r.status,
                outcome_text(&r.body)
            )),
            Err(e) => problems.push(format!("the probe write at the site failed: {e:#}")),
        }
    }
    // The cut ends by itself; then the journal drains.
    if let Some(left) = cut.checked_sub(cut_started.elapsed()) {
        tokio::time::sleep(left).await;
    }
    let healed = Instant::now();
    let limit = Duration::from_secs(a.wait_s);
    let synced = loop {
        let s = client(&site_url, token)?.send("GET", "/sync/status", None).await;
        let pending = s
            .ok()
            .filter(|r| r.status == 200)
            .and_then(|r| r.json().ok())
            .map(|v| (v["pending"].as_u64(), v["cutOff"].is_null()));
        if matches!(pending, Some((Some(0), true))) {
            break Some(healed.elapsed());
        }
        if healed.elapsed() > limit {
            problems.push(format!(
                "the site's journal did not sync back within {} s of the cut ending (pending, reconnected: {pending:?})",
                a.wait_s
            ));
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if let (Some(pid), Some(t)) = (&probe_id, a.probe_token.as_deref()) {
        let r = probe_client(&leader_url, Some(t))?
            .send("GET", &format!("/{pid}"), None)
            .await;
        match r {
            Ok(r) if r.status == 200 => {}
            Ok(r) => problems.push(format!(
                "the probe {pid} written at the site reads HTTP {} at the leader",
                r.status
            )),
            Err(e) => problems.push(format!("reading the probe {pid} at the leader failed: {e:#}")),
        }
    }
    let ok = problems.is_empty();
    let detail = if ok {
        format!(
            "node {id} cut off for {} s: local reads served{}, journal synced back {} ms after the cut ended",
            a.seconds,
            if probe_id.is_some() {
                ", a journal write accepted"
            } else {
                " (no --probe-file: journal write not tried)"
            },
            synced.map_or(0, |d| d.as_millis())
        )
    } else {
        format!("node {id} cut off for {} s: {}", a.seconds, problems.join("; "))
    };
    let rec = json!({"kind": "site-cut", "at_ms": at_ms, "ok": ok,
        "catch_up_ms": synced.map(|d| d.as_millis() as u64), "detail": detail,
        "data": {"node": id, "seconds": a.seconds, "reads_ok": reads_ok, "probe": probe_id}});
    record(&site_url, token, &rec).await?;
    if a.common.json {
        println!("{}", serde_json::to_string_pretty(&rec)?);
    } else {
        println!("{} {detail}", if ok { "ok  " } else { "FAILED" });
    }
    if !ok {
        bail!("the site cut-off drill failed: {}", problems.join("; "));
    }
    Ok(())
}

fn probe_client(url: &str, token: Option<&str>) -> Result<Client> {
    Ok(Client::new(url, token)?.with_timeout(Duration::from_secs(30)))
}

// ------------------------------------------------------------ restore, list

async fn restore(c: Common) -> Result<()> {
    let r = client(&c.url, c.token.as_deref())?
        .send("POST", "/ops/drill/restore", None)
        .await?;
    if r.status != 200 {
        return Err(refused(&format!("the restore drill on {}", c.url), &r));
    }
    let rec = r.json()?;
    if c.json {
        println!("{}", serde_json::to_string_pretty(&rec)?);
    } else {
        println!(
            "{} {}",
            if rec["ok"] == true { "ok  " } else { "FAILED" },
            rec["detail"].as_str().unwrap_or("")
        );
    }
    if rec["ok"] != true {
        bail!("the restore drill failed; see its detail above");
    }
    Ok(())
}

async fn list(c: Common) -> Result<()> {
    let r = client(&c.url, c.token.as_deref())?
        .send("GET", "/ops/drills", None)
        .await?;
    if r.status != 200 {
        return Err(refused(&format!("{}/ops/drills", c.url), &r));
    }
    let v = r.json()?;
    if c.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("{:<24} {:<14} {:<6} {:>8}  detail", "time (UTC)", "kind", "ok", "ms");
    for d in v["drills"].as_array().into_iter().flatten() {
        let when = d["at_ms"]
            .as_i64()
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        let ms = d["rto_ms"]
            .as_u64()
            .or(d["catch_up_ms"].as_u64())
            .map(|m| m.to_string())
            .unwrap_or("-".into());
        println!(
            "{when:<24} {:<14} {:<6} {ms:>8}  {}",
            d["kind"].as_str().unwrap_or(""),
            if d["ok"] == true { "yes" } else { "NO" },
            d["detail"].as_str().unwrap_or("")
        );
    }
    Ok(())
}
