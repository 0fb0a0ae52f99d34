//! `hale bench failover`: how long writes stop when the leader dies.
//!
//! Starts a 3-voter cluster on loopback. Each trial keeps one client writing
//! small Patient creates through a follower, one at a time, SIGKILLs the
//! leader, and measures from the kill to the first acknowledged (201) write
//! that was sent after the kill. The killed node is then restarted and the
//! next trial waits until all three nodes have applied the same index.
//!
//! Before the kills, a fault-free phase (`--load-s`, with `--load-clients`
//! writers spread over the three nodes) counts needless elections: with no
//! fault injected, every election it sees is one a stall or a slow disk
//! started, and it is reported per hour of full write load. During the kills,
//! the term should rise by one per kill; more means split votes or elections
//! a busy survivor started.

use crate::chaos::{ElectionTotals, CLERK_TOKEN};
use crate::http::Client;
use crate::local::{LocalCluster, Spec};
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Per-request timeout of the writing client.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed write before the next.
const RETRY_PAUSE: Duration = Duration::from_millis(5);
/// A trial that sees no acknowledged write this long after the kill fails.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(60);
const VOTERS: usize = 3;

fn patient(n: u64) -> Vec<u8> {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": "https://hale.health/failover", "value": n.to_string()}],
        "name": [{"family": format!("Failover{n}"), "given": ["Test"]}],
        "birthDate": "1970-01-01",
    })
    .to_string()
    .into_bytes()
}

async fn wait_leader(c: &LocalCluster) -> Result<u64> {
    let start = Instant::now();
    loop {
        if let Some(l) = c.leader().await {
            return Ok(l);
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("the cluster elected no leader within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until every node answers with the same applied index.
async fn wait_converged(c: &LocalCluster) -> Result<()> {
    let start = Instant::now();
    loop {
        let mut seen = Vec::new();
        for p in &c.procs {
            seen.push(
                c.node_status(p.id, false)
                    .await
                    .ok()
                    .and_then(|s| s["applied_index"].as_u64()),
            );
        }
        if seen[0].is_some() && seen.iter().all(|s| *s == seen[0]) {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!("the nodes did not converge within 120 s: applied indexes {seen:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What `hale bench failover` runs.
#[derive(Debug, Clone)]
pub struct Opts {
    pub trials: usize,
    /// Seconds of fault-free write load before the kills (0: none).
    pub load_s: u64,
    /// Concurrent writers in that phase.
    pub load_clients: usize,
    /// Overrides of the nodes' `[cluster]` election settings (None: the defaults).
    pub election_timeout_min_ms: Option<u64>,
    pub election_timeout_max_ms: Option<u64>,
    pub heartbeat_interval_ms: Option<u64>,
    pub link: crate::link_args::LinkArgs,
    pub json: bool,
}

impl Opts {
    fn cluster_toml(&self) -> String {
        let mut t = self.link.cluster_toml();
        for (key, v) in [
            ("election_timeout_min_ms", self.election_timeout_min_ms),
            ("election_timeout_max_ms", self.election_timeout_max_ms),
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
        ] {
            if let Some(v) = v {
                t.push_str(&format!("{key} = {v}\n"));
            }
        }
        t
    }
}

/// Elections as the running nodes count them (chaos's totals), summed, and the highest term.
async fn elections(c: &LocalCluster) -> Result<ElectionTotals> {
    let mut e = ElectionTotals::default();
    for p in c.procs.iter().filter(|p| p.running()) {
        e.add(&c.node_status(p.id, false).await?);
    }
    Ok(e)
}

/// What the fault-free load phase saw.
#[derive(Debug, Clone, Copy)]
struct LoadPhase {
    seconds: f64,
    acked: u64,
    failed: u64,
    elections: u64,
    leaderships_lost: u64,
    terms: u64,
}

impl LoadPhase {
    fn per_hour(&self) -> f64 {
        self.elections as f64 * 3600.0 / self.seconds.max(1e-9)
    }
}

/// Write for `secs` with `clients` writers spread over every node (followers
/// forward), with no fault, and count the elections that happen anyway.
async fn load_phase(c: &LocalCluster, secs: u64, clients: usize, seq: Arc<AtomicU64>) -> Result<LoadPhase> {
    wait_leader(c).await?;
    let before = elections(c).await?;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let urls: Vec<String> = c.procs.iter().filter(|p| p.voter).map(|p| p.api_url()).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..clients {
        let url = urls[i % urls.len()].clone();
        let seq = seq.clone();
        tasks.spawn(async move {
            let mut client = Client::new(&url, Some(CLERK_TOKEN))?;
            let (mut acked, mut failed) = (0u64, 0u64);
            while Instant::now() < deadline {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                match tokio::time::timeout(REQUEST_TIMEOUT, client.send("POST", "/Patient", Some(patient(n)))).await {
                    Ok(Ok(r)) if r.status == 201 => acked += 1,
                    Ok(Ok(_)) => failed += 1,
                    _ => {
                        failed += 1;
                        client = Client::new(&url, Some(CLERK_TOKEN))?;
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                }
            }
            Ok::<(u64, u64), anyhow::Error>((acked, failed))
        });
    }
    let (mut acked, mut failed) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        let (a, f) = r.context("a load writer panicked")??;
        acked += a;
        failed += f;
    }
    let seconds = start.elapsed().as_secs_f64();
    wait_converged(c).await?;
    let after = elections(c).await?;
    Ok(LoadPhase {
        seconds,
        acked,
        failed,
        elections: after.elections_started.saturating_sub(before.elections_started),
        leaderships_lost: after.leaderships_lost.saturating_sub(before.leaderships_lost),
        terms: after.term_max.saturating_sub(before.term_max),
    })
}

/// One trial: the time from the leader's SIGKILL to the first write acknowledged after it.
async fn trial(c: &mut LocalCluster, seq: Arc<AtomicU64>) -> Result<(Duration, u64, u64)> {
    let leader = wait_leader(c).await?;
    let via = c
        .procs
        .iter()
        .find(|p| p.voter && p.id != leader)
        .map(|p| p.id)
        .context("no follower")?;
    let url = c.proc(via).api_url();
    let killed_at: Arc<OnceLock<Instant>> = Arc::default();
    let k = killed_at.clone();
    let writer = tokio::spawn(async move {
        let mut client = Client::new(&url, Some(CLERK_TOKEN))?;
        loop {
            let sent = Instant::now();
            let n = seq.fetch_add(1, Ordering::Relaxed);
            let r = tokio::time::timeout(REQUEST_TIMEOUT, client.send("POST", "/Patient", Some(patient(n)))).await;
            let acked = matches!(&r, Ok(Ok(reply)) if reply.status == 201);
            if acked {
                if let Some(kill) = k.get() {
                    if sent >= *kill {
                        return Ok::<Duration, anyhow::Error>(Instant::now().duration_since(*kill));
                    }
                }
                continue;
            }
            if !matches!(r, Ok(Ok(_))) {
                // Timed out or the connection broke: start afresh.
                client = Client::new(&url, Some(CLERK_TOKEN))?;
            }
            if let Some(kill) = k.get() {
                if kill.elapsed() > TRIAL_TIMEOUT {
                    bail!("no write was acknowledged within {TRIAL_TIMEOUT:?} of the leader's SIGKILL");
                }
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    });
    // Let the writer get going, then pull the plug on the leader.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = killed_at.set(Instant::now());
    c.kill(leader).await?;
    let took = writer.await.context("the writing client panicked")??;
    c.restart(leader)
        .await
        .with_context(|| format!("node {leader} did not come back"))?;
    wait_converged(c).await?;
    Ok((took, leader, via))
}

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

pub async fn run(o: &Opts) -> Result<()> {
    let (trials, link, json_out) = (o.trials, &o.link, o.json);
    if trials == 0 {
        bail!("--trials must be at least 1");
    }
    if o.load_s > 0 && o.load_clients == 0 {
        bail!("--load-clients must be at least 1 when --load-s is set");
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let data = std::env::temp_dir().join(format!("hale-failover-{}-{stamp}", std::process::id()));
    let node_log = std::env::var("HALE_BENCH_NODE_LOG").ok().filter(|v| !v.is_empty());
    let spec = Spec {
        voters: VOTERS,
        learners: 0,
        data: data.clone(),
        fault_injection: false,
        mtls: true,
        extra_toml: o.cluster_toml(),
        demo_patients: 0,
        // For a look at one run's elections: e.g. HALE_BENCH_NODE_LOG=info keeps the node logs.
        log: node_log.clone().unwrap_or_else(|| "warn".into()),
    };
    eprintln!("failover: starting {VOTERS} voters under {} ...", data.display());
    let mut cluster = LocalCluster::start(spec).await?;
    let seq = Arc::new(AtomicU64::new(1));
    let mut samples = Vec::new();
    let mut result = Ok(());
    let mut load = None;
    if o.load_s > 0 {
        eprintln!(
            "failover: {} s of write load with {} writers and no fault, counting elections ...",
            o.load_s, o.load_clients
        );
        match load_phase(&cluster, o.load_s, o.load_clients, seq.clone()).await {
            Ok(l) => load = Some(l),
            Err(e) => result = Err(e.context("the fault-free load phase failed")),
        }
    }
    let term_before = match elections(&cluster).await {
        Ok(e) => e.term_max,
        Err(e) => {
            result = result.and(Err(e));
            0
        }
    };
    let mut term_after = term_before;
    for i in 0..trials {
        if result.is_err() {
            break;
        }
        match trial(&mut cluster, seq.clone()).await {
            Ok((took, killed, via)) => {
                eprintln!(
                    "trial {:>3}/{trials}: killed leader {killed}, writing through node {via}: first acknowledged write {:.1} ms after the kill",
                    i + 1,
                    ms(took)
                );
                samples.push(ms(took));
            }
            Err(e) => {
                result = Err(e.context(format!("trial {} failed", i + 1)));
                break;
            }
        }
    }
    if result.is_ok() {
        match elections(&cluster).await {
            Ok(e) => term_after = e.term_max,
            Err(e) => result = Err(e),
        }
    }
    cluster.stop_all().await;
    drop(cluster);
    if let Err(e) = result {
        eprintln!("node logs kept in {} (node-N.log)", data.display());
        return Err(e);
    }
    if node_log.is_some() {
        eprintln!("node logs kept in {} (HALE_BENCH_NODE_LOG is set)", data.display());
    } else {
        let _ = std::fs::remove_dir_all(&data);
    }
    let mut sorted = samples.clone();
    sorted.sort_by(f64::total_cmp);
    let (p50, p99, max) = (
        percentile(&sorted, 50.0),
        percentile(&sorted, 99.0),
        *sorted.last().expect("at least one trial"),
    );
    println!(
        "failover: {trials} leader SIGKILLs, 3 voters on loopback ({}), one client writing through a follower",
        link.describe()
    );
    println!("  time from the kill to the first acknowledged write: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms");
    println!("  target: p50 <= 500 ms, p99 <= 800 ms");
    let terms_per_kill = term_after.saturating_sub(term_before) as f64 / trials as f64;
    println!("  terms per kill: {terms_per_kill:.2} (1.00: one election per kill, no split vote)");
    if let Some(l) = &load {
        println!(
            "  fault-free write load: {:.0} s, {} writers, {:.0} acknowledged creates/s, {} failed; elections {} (needless: {:.1} per hour), leaderships lost {}, term +{}",
            l.seconds,
            o.load_clients,
            l.acked as f64 / l.seconds.max(1e-9),
            l.failed,
            l.elections,
            l.per_hour(),
            l.leaderships_lost,
            l.terms
        );
    }
    println!(
        "  samples (ms): {}",
        samples.iter().map(|s| format!("{s:.1}")).collect::<Vec<_>>().join(", ")
    );
    if json_out {
        let j = json!({
            "workload": "failover",
            "trials": trials,
            "voters": VOTERS,
            "links": link.describe(),
            "p50_ms": p50,
            "p99_ms": p99,
            "max_ms": max,
            "samples_ms": samples,
            "terms_per_kill": terms_per_kill,
            "load": load.map(|l| json!({
                "seconds": l.seconds,
                "writers": o.load_clients,
                "acknowledged": l.acked,
                "failed": l.failed,
                "creates_per_s": l.acked as f64 / l.seconds.max(1e-9),
                "elections": l.elections,
                "needless_elections_per_hour": l.per_hour(),
                "leaderships_lost": l.leaderships_lost,
                "term_rise": l.terms,
            })),
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_percentiles() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 50.0), 50.0);
        assert_eq!(percentile(&s, 99.0), 99.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        assert_eq!(percentile(&[1.0, 2.0], 50.0), 1.0);
    }
}
