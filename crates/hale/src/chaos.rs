//! `hale chaos`: start a local cluster of real processes with fault injection,
//! drive writes and contended bookings through every node, and meanwhile kill
//! leaders and followers (SIGKILL), cut nodes off and wipe a node's data.
//! Afterwards check that every acknowledged write is on every node, that no
//! slot is double-booked and that every replica has the same content hash.

use crate::http::{Client, Reply};
use crate::local::{wait_until, LocalCluster, Spec};
use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The workload's token (a clerk may write patients, slots and appointments).
pub const CLERK_TOKEN: &str = "demo-clerk";
/// System of the identifiers the harness gives the patients it creates.
const IDENTIFIER_SYSTEM: &str = "https://hale.health/chaos";
/// No single request may stall the run for longer than this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Booking attempts raced for each slot, each through a different node.
const CONTENDERS: usize = 3;
/// Free slots created before the faults start (more are made as they run out).
const SLOTS_UP_FRONT: usize = 20;
/// Snapshot often, so that lagging and wiped nodes must install one.
const SNAPSHOT_TOML: &str = "snapshot_entries_since_last = 300\nentries_kept_after_snapshot = 50\n";
/// Appended last to a drill's node configs: clinicians are not limited to
/// patients with a legitimate relationship (the drills' own patients have none).
pub const NO_RELATIONSHIP_TOML: &str = "\n[access]\nlegitimate_relationship = false\n";
/// Appointment statuses that hold a slot.
const HOLDING: [&str; 5] = ["pending", "booked", "arrived", "checked-in", "fulfilled"];
/// How long the cluster may go without a leader between faults.
const LEADER_WAIT_MS: u64 = 60_000;
/// How long the replicas may take to converge once the faults stop.
const CONVERGE_WAIT_MS: u64 = 120_000;

#[derive(Args, Debug, Clone)]
pub struct ChaosArgs {
    /// Faults to inject.
    #[arg(long, default_value_t = 20)]
    pub faults: usize,
    /// At least this many of the faults are SIGKILLs of the current leader.
    #[arg(long, default_value_t = 0)]
    pub leader_kills_min: usize,
    /// Seed of the fault schedule (default: from the clock; printed, so a run can be repeated).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Voting nodes (at least 3, so that one can fail).
    #[arg(long, default_value_t = 3)]
    pub voters: usize,
    /// Learners (read replicas; writes sent to them are forwarded too).
    #[arg(long, default_value_t = 1)]
    pub learners: usize,
    /// Directory for the nodes' data, configs and logs (default: a new directory under the
    /// system temporary directory, removed after a passing run; kept when a check fails).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Concurrent clients creating patients; a quarter as many (at least one) race bookings.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Clinical notes saved at a cut-off site in the offline-writes phase,
    /// which runs after the faults (0 skips it; it needs a learner).
    #[arg(long, default_value_t = 40)]
    pub offline_notes: usize,
    /// Also print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub link: crate::link_args::LinkArgs,
}

// ------------------------------------------------------------------ randomness

/// splitmix64: small, fast and good enough for a fault schedule.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // Multiply-shift: unbiased enough and no modulo.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A duration uniform in `lo_ms..=hi_ms`.
    pub fn millis(&mut self, lo_ms: u64, hi_ms: u64) -> Duration {
        Duration::from_millis(lo_ms + self.below(hi_ms - lo_ms + 1))
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        if items.is_empty() {
            None
        } else {
            Some(items[self.below(items.len() as u64) as usize])
        }
    }
}

// ---------------------------------------------------------------------- faults

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL the leader, restart it after 0-1.5 s.
    LeaderKill,
    /// SIGKILL a follower or learner, restart it after 0-1.5 s.
    FollowerKill,
    /// Cut one node (possibly the leader) off from raft traffic for 1-3 s.
    Isolate,
    /// Stop a follower, delete its data directory and restart it: it re-syncs from a snapshot.
    Wipe,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::LeaderKill => "leader_kill",
            Fault::FollowerKill => "follower_kill",
            Fault::Isolate => "isolate",
            Fault::Wipe => "wipe",
        }
    }
}

/// The kinds of `n` faults, drawn from `rng`, with at least `leader_kills_min` leader kills.
pub fn schedule(rng: &mut Rng, n: usize, leader_kills_min: usize) -> Result<Vec<Fault>> {
    if leader_kills_min > n {
        bail!("--leader-kills-min {leader_kills_min} is more than --faults {n}");
    }
    let mut s: Vec<Fault> = (0..n)
        .map(|_| match rng.below(8) {
            0..=2 => Fault::LeaderKill,
            3 | 4 => Fault::FollowerKill,
            5 | 6 => Fault::Isolate,
            _ => Fault::Wipe,
        })
        .collect();
    let mut kills = s.iter().filter(|f| **f == Fault::LeaderKill).count();
    while kills < leader_kills_min {
        let others: Vec<usize> = (0..n).filter(|&i| s[i] != Fault::LeaderKill).collect();
        let i = rng.pick(&others).expect("fewer leader kills than faults");
        s[i] = Fault::LeaderKill;
        kills += 1;
    }
    Ok(s)
}

// -------------------------------------------------------------------- requests

enum Outcome {
    /// 201: the cluster acknowledged the write.
    Acked(Reply),
    /// Any other answer (503 unavailable, 409 conflict, ...).
    Answered(Reply),
    /// Never sent: the connection was refused (the node is down).
    Refused,
    /// Timed out, or the connection broke after the request may have been sent.
    Unknown,
}

/// One node's API with a keep-alive connection, replaced after any failure.
struct Conn {
    url: String,
    client: Client,
}

impl Conn {
    fn new(url: &str) -> Conn {
        Conn {
            url: url.to_string(),
            client: Client::new(url, Some(CLERK_TOKEN)).expect("an http:// URL"),
        }
    }

    fn reset(&mut self) {
        self.client = Client::new(&self.url, Some(CLERK_TOKEN)).expect("an http:// URL");
    }

    async fn send(&mut self, method: &str, path: &str, body: Option<Vec<u8>>, extra: &[(&str, &str)]) -> Outcome {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.client.send_with(method, path, body, extra)).await {
            Ok(Ok(r)) if r.status == 201 => Outcome::Acked(r),
            Ok(Ok(r)) => Outcome::Answered(r),
            Ok(Err(e)) => {
                self.reset();
                let refused = e.chain().any(|c| {
                    c.downcast_ref::<std::io::Error>()
                        .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
                });
                if refused {
                    Outcome::Refused
                } else {
                    Outcome::Unknown
                }
            }
            Err(_) => {
                self.reset();
                Outcome::Unknown
            }
        }
    }

    async fn post(&mut self, path: &str, body: &Value) -> Outcome {
        self.send("POST", path, Some(body.to_string().into_bytes()), &[]).await
    }

    /// GET this node's own state (no consistency barrier), with its status and JSON.
    async fn get_local(&mut self, path: &str) -> Result<(u16, Value)> {
        match self.send("GET", path, None, &[("x-hale-consistency", "local")]).await {
            Outcome::Acked(r) | Outcome::Answered(r) => {
                let v = if r.status == 200 { r.json()? } else { Value::Null };
                Ok((r.status, v))
            }
            Outcome::Refused => bail!("{}{path}: connection refused", self.url),
            Outcome::Unknown => bail!("{}{path}: no answer within {REQUEST_TIMEOUT:?}", self.url),
        }
    }
}

fn created_id(r: &Reply) -> Option<String> {
    if let Ok(v) = r.json() {
        if let Some(id) = v["id"].as_str() {
            return Some(id.to_string());
        }
    }
    // Location: <base>/<Type>/<id>/_history/<n>
    let loc = r.header("location")?;
    let parts: Vec<&str> = loc.split('/').collect();
    let h = parts.iter().position(|p| *p == "_history")?;
    (h >= 1).then(|| parts[h - 1].to_string())
}

fn patient_body(value: u64) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": IDENTIFIER_SYSTEM, "value": value.to_string()}],
        "name": [{"use": "official", "family": format!("Chaos{value}"), "given": ["Test"]}],
        "gender": "unknown",
        "birthDate": "1970-01-01",
    })
}

/// 15-minute slot number `n`, from 2031-01-01T00:00:00Z on.
fn slot_times(n: u64) -> (String, String) {
    const EPOCH_S: i64 = 1_924_992_000;
    let fmt = |s: i64| {
        chrono::DateTime::from_timestamp(s, 0)
            .expect("a time in range")
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };
    let start = EPOCH_S + n as i64 * 900;
    (fmt(start), fmt(start + 900))
}

fn slot_body(schedule_id: &str, n: u64) -> (Value, String, String) {
    let (start, end) = slot_times(n);
    let body = json!({
        "resourceType": "Slot",
        "schedule": {"reference": format!("Schedule/{schedule_id}")},
        "status": "free",
        "start": start,
        "end": end,
    });
    (body, start, end)
}

fn appointment_body(slot: &SlotInfo, patient_id: &str) -> Value {
    json!({
        "resourceType": "Appointment",
        "status": "booked",
        "serviceCategory": [{"coding": [{
            "system": "https://hale.health/fhir/CodeSystem/appointment-category",
            "code": "outpatient",
        }]}],
        "priority": 4,
        "start": slot.start,
        "end": slot.end,
        "slot": [{"reference": format!("Slot/{}", slot.id)}],
        "participant": [{"actor": {"reference": format!("Patient/{patient_id}")}, "status": "accepted"}],
    })
}

// -------------------------------------------------------------------- workload

#[derive(Debug, Clone)]
struct SlotInfo {
    id: String,
    start: String,
    end: String,
}

#[derive(Debug, Default)]
struct Tally {
    /// Acknowledged writes: (resource type, id).
    acked: Vec<(&'static str, String)>,
    creates_acked: u64,
    bookings_acked: u64,
    slots_acked: u64,
    /// Non-201 answers to writes, by status (409s of the booking race included).
    answered: BTreeMap<u16, u64>,
    refused: u64,
    unknown: u64,
    booking_attempts: u64,
    booking_conflicts: u64,
    /// Every raced slot with the appointment ids whose booking got a 201.
    raced: Vec<(SlotInfo, Vec<String>)>,
    /// A few bodies of unexpected answers (not 201, 409 or 503), for the report.
    unexpected: Vec<String>,
}

impl Tally {
    fn not_acked(&mut self, o: &Outcome) {
        match o {
            Outcome::Acked(_) => {}
            Outcome::Answered(r) => {
                *self.answered.entry(r.status).or_default() += 1;
                if !matches!(r.status, 409 | 503) && self.unexpected.len() < 5 {
                    let body = String::from_utf8_lossy(&r.body[..r.body.len().min(400)]).into_owned();
                    self.unexpected.push(format!("HTTP {}: {body}", r.status));
                }
            }
            Outcome::Refused => self.refused += 1,
            Outcome::Unknown => self.unknown += 1,
        }
    }
}

struct Workload {
    urls: Vec<String>,
    stop: AtomicBool,
    /// Round-robin over the nodes.
    next_node: AtomicUsize,
    next_value: AtomicU64,
    next_slot: AtomicU64,
    schedule_id: String,
    patients: Vec<String>,
    free_slots: Mutex<Vec<SlotInfo>>,
    tally: Mutex<Tally>,
}

impl Workload {
    fn node(&self) -> usize {
        self.next_node.fetch_add(1, Ordering::Relaxed) % self.urls.len()
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    async fn pause_after_failure(o: &Outcome) {
        // A down or cut-off node answers fast; do not spin on it.
        if !matches!(o, Outcome::Acked(_)) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn creator(self: Arc<Self>) {
        let mut conns: Vec<Conn> = self.urls.iter().map(|u| Conn::new(u)).collect();
        while !self.stopped() {
            let node = self.node();
            let value = self.next_value.fetch_add(1, Ordering::Relaxed);
            let o = conns[node].post("/Patient", &patient_body(value)).await;
            {
                let mut t = self.tally.lock().expect("tally");
                match &o {
                    Outcome::Acked(r) => match created_id(r) {
                        Some(id) => {
                            t.creates_acked += 1;
                            t.acked.push(("Patient", id));
                        }
                        None => t.unexpected.push("a 201 without an id".into()),
                    },
                    other => t.not_acked(other),
                }
            }
            Self::pause_after_failure(&o).await;
        }
    }

    /// A free slot: one made before the faults, else a new one (None once stopped).
    async fn slot(&self, conns: &mut [Conn]) -> Option<SlotInfo> {
        if let Some(s) = self.free_slots.lock().expect("slots").pop() {
            return Some(s);
        }
        while !self.stopped() {
            let n = self.next_slot.fetch_add(1, Ordering::Relaxed);
            let (body, start, end) = slot_body(&self.schedule_id, n);
            let node = self.node();
            let o = conns[node].post("/Slot", &body).await;
            if let Some(id) = self.record_slot(&o) {
                return Some(SlotInfo { id, start, end });
            }
            Self::pause_after_failure(&o).await;
        }
        None
    }

    fn record_slot(&self, o: &Outcome) -> Option<String> {
        let mut t = self.tally.lock().expect("tally");
        match o {
            Outcome::Acked(r) => {
                let id = created_id(r);
                match &id {
                    Some(id) => {
                        t.slots_acked += 1;
                        t.acked.push(("Slot", id.clone()));
                    }
                    None => t.unexpected.push("a 201 without an id".into()),
                }
                id
            }
            other => {
                t.not_acked(other);
                None
            }
        }
    }

    /// Race `CONTENDERS` bookings of one slot at a time, each through a different node.
    async fn booker(self: Arc<Self>) {
        let mut conns: Vec<Conn> = self.urls.iter().map(|u| Conn::new(u)).collect();
        let n = self.urls.len();
        while let Some(slot) = self.slot(&mut conns).await {
            let first = self.node();
            let mut races = Vec::new();
            for k in 0..CONTENDERS.min(n) {
                let url = self.urls[(first + k) % n].clone();
                let body = appointment_body(&slot, &self.patients[k % self.patients.len()]);
                races.push(tokio::spawn(async move {
                    Conn::new(&url).post("/Appointment", &body).await
                }));
            }
            let mut outcomes = Vec::new();
            for r in races {
                outcomes.push(r.await.unwrap_or(Outcome::Unknown));
            }
            self.record_race(slot, &outcomes);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn record_race(&self, slot: SlotInfo, outcomes: &[Outcome]) {
        let mut t = self.tally.lock().expect("tally");
        let mut won = Vec::new();
        for o in outcomes {
            t.booking_attempts += 1;
            match o {
                Outcome::Acked(r) => match created_id(r) {
                    Some(id) => {
                        t.bookings_acked += 1;
                        t.acked.push(("Appointment", id.clone()));
                        won.push(id);
                    }
                    None => t.unexpected.push("a 201 without an id".into()),
                },
                Outcome::Answered(r) if r.status == 409 => {
                    t.booking_conflicts += 1;
                    *t.answered.entry(409).or_default() += 1;
                }
                other => t.not_acked(other),
            }
        }
        t.raced.push((slot, won));
    }
}

/// Create one resource through `conn`, retrying a few times (set-up, before any fault).
async fn must_create(conn: &mut Conn, path: &str, body: &Value) -> Result<String> {
    let mut last = String::new();
    for _ in 0..20 {
        match conn.post(path, body).await {
            Outcome::Acked(r) => return created_id(&r).context("a 201 without an id"),
            Outcome::Answered(r) => {
                last = format!("HTTP {}: {}", r.status, String::from_utf8_lossy(&r.body));
                if r.status != 503 {
                    break;
                }
            }
            Outcome::Refused => last = "connection refused".into(),
            Outcome::Unknown => last = "no answer".into(),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!("set-up: POST {path} failed: {last}")
}

// ---------------------------------------------------------------------- driver

#[derive(Debug, Default)]
struct FaultLog {
    by_kind: BTreeMap<&'static str, u64>,
    leader_kills: u64,
    isolated_leaders: u64,
    wipes_resynced_from_snapshot: u64,
}

async fn wait_leader(c: &LocalCluster, what: &str) -> Result<u64> {
    let start = Instant::now();
    loop {
        if let Some(l) = c.leader().await {
            return Ok(l);
        }
        if start.elapsed() > Duration::from_millis(LEADER_WAIT_MS) {
            bail!("no leader within {LEADER_WAIT_MS} ms {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn applied(c: &LocalCluster, id: u64) -> Option<u64> {
    c.node_status(id, false).await.ok()?["applied_index"].as_u64()
}

/// Run one fault to completion (the node is back and healed when it returns).
async fn inject(c: &mut LocalCluster, rng: &mut Rng, fault: Fault, log: &mut FaultLog) -> Result<String> {
    let leader = wait_leader(c, "before a fault").await?;
    let others: Vec<u64> = c.procs.iter().filter(|p| p.id != leader).map(|p| p.id).collect();
    let text = match fault {
        Fault::LeaderKill | Fault::FollowerKill => {
            let id = if fault == Fault::LeaderKill {
                leader
            } else {
                rng.pick(&others).context("no follower to kill")?
            };
            let down = rng.millis(0, 1500);
            c.kill(id).await?;
            tokio::time::sleep(down).await;
            c.restart(id)
                .await
                .with_context(|| format!("node {id} did not come back after a SIGKILL"))?;
            if fault == Fault::LeaderKill {
                log.leader_kills += 1;
            }
            format!("SIGKILL node {id}, down {} ms", down.as_millis())
        }
        Fault::Isolate => {
            let all: Vec<u64> = c.procs.iter().map(|p| p.id).collect();
            let id = rng.pick(&all).expect("nodes");
            let cut = rng.millis(1000, 3000);
            c.isolate(id, true).await?;
            tokio::time::sleep(cut).await;
            c.isolate(id, false).await?;
            if id == leader {
                log.isolated_leaders += 1;
            }
            format!(
                "isolate node {id}{} for {} ms",
                if id == leader { " (the leader)" } else { "" },
                cut.as_millis()
            )
        }
        Fault::Wipe => {
            let id = rng.pick(&others).context("no follower to wipe")?;
            c.terminate(id).await?;
            c.wipe(id)?;
            c.restart(id)
                .await
                .with_context(|| format!("node {id} did not start after its data was wiped"))?;
            // Until it has everything back, losing another voter could lose
            // writes only it and the leader held: wait for it to catch up.
            let target = match c.leader().await {
                Some(l) => applied(c, l).await.unwrap_or(0),
                None => 0,
            };
            let c2 = &*c;
            let caught_up = wait_until(
                CONVERGE_WAIT_MS,
                &format!("wiped node {id} to catch up to index {target}"),
                || async move { Ok(applied(c2, id).await.is_some_and(|a| a >= target)) },
            )
            .await;
            if let Err(e) = caught_up {
                let mut states = Vec::new();
                for p in &c.procs {
                    let s = c.node_status(p.id, false).await.unwrap_or(Value::Null);
                    states.push(format!("node {}: {s}", p.id));
                }
                return Err(e.context(format!(
                    "a wiped node did not re-sync; node states: {}",
                    states.join("; ")
                )));
            }
            let s = c.node_status(id, false).await?;
            let from_snapshot = s["snapshot_index"].as_u64().is_some();
            if from_snapshot {
                log.wipes_resynced_from_snapshot += 1;
            }
            format!(
                "wipe node {id}; it caught up to index {target}{}",
                if from_snapshot {
                    " from a snapshot"
                } else {
                    " from the log"
                }
            )
        }
    };
    *log.by_kind.entry(fault.name()).or_default() += 1;
    Ok(text)
}

/// Every node up and healed, then wait until all have applied the same index.
async fn settle(c: &mut LocalCluster) -> Result<u64> {
    let ids: Vec<u64> = c.procs.iter().map(|p| p.id).collect();
    for &id in &ids {
        if !c.proc(id).running() {
            c.restart(id).await?;
        }
        c.isolate(id, false).await?;
    }
    let start = Instant::now();
    loop {
        let mut seen = Vec::new();
        for &id in &ids {
            seen.push(applied(c, id).await);
        }
        if let Some(first) = seen[0] {
            if seen.iter().all(|s| *s == Some(first)) {
                return Ok(first);
            }
        }
        if start.elapsed() > Duration::from_millis(CONVERGE_WAIT_MS) {
            bail!("the replicas did not converge within {CONVERGE_WAIT_MS} ms: applied indexes of nodes {ids:?}: {seen:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Ids of the appointments in a searchset Bundle whose status holds the slot.
fn holding_matches(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e.pointer("/search/mode").and_then(Value::as_str) != Some("include"))
        .filter(|e| {
            e.pointer("/resource/status")
                .and_then(Value::as_str)
                .is_some_and(|s| HOLDING.contains(&s))
        })
        .filter_map(|e| e.pointer("/resource/id").and_then(Value::as_str).map(str::to_string))
        .collect()
}

struct Verdict {
    /// Acknowledged writes missing on at least one node, with examples.
    lost: u64,
    lost_examples: Vec<String>,
    missing_by_node: BTreeMap<u64, u64>,
    double_bookings: u64,
    double_examples: Vec<String>,
}

/// A node and the holding appointments it has for one slot.
type NodeHolders = (u64, Vec<String>);

/// Check every acknowledged write on every node and every raced slot's holders.
async fn verify(c: &LocalCluster, tally: &Tally) -> Result<Verdict> {
    let nodes: Vec<(u64, String)> = c.procs.iter().map(|p| (p.id, p.api_url())).collect();
    let acked = Arc::new(tally.acked.clone());
    let slots: Arc<Vec<(SlotInfo, Vec<String>)>> = Arc::new(tally.raced.clone());
    // missing[i]: nodes lacking acked write i.
    let missing: Arc<Mutex<BTreeMap<usize, Vec<u64>>>> = Arc::default();
    let holders: Arc<Mutex<BTreeMap<usize, Vec<NodeHolders>>>> = Arc::default();
    let mut tasks = Vec::new();
    const WORKERS_PER_NODE: usize = 4;
    for (id, url) in &nodes {
        let next_write = Arc::new(AtomicUsize::new(0));
        let next_slot = Arc::new(AtomicUsize::new(0));
        for _ in 0..WORKERS_PER_NODE {
            let (id, url) = (*id, url.clone());
            let (acked, slots, missing, holders) = (acked.clone(), slots.clone(), missing.clone(), holders.clone());
            let (next_write, next_slot) = (next_write.clone(), next_slot.clone());
            tasks.push(tokio::spawn(async move {
                let mut conn = Conn::new(&url);
                loop {
                    let i = next_write.fetch_add(1, Ordering::Relaxed);
                    let Some((rt, rid)) = acked.get(i) else { break };
                    let (status, _) = conn.get_local(&format!("/{rt}/{rid}")).await?;
                    if status != 200 {
                        missing.lock().expect("missing").entry(i).or_default().push(id);
                    }
                }
                loop {
                    let i = next_slot.fetch_add(1, Ordering::Relaxed);
                    let Some((slot, _)) = slots.get(i) else { break };
                    let (status, bundle) = conn
                        .get_local(&format!("/Appointment?slot=Slot/{}&_count=100", slot.id))
                        .await?;
                    if status != 200 {
                        bail!(
                            "node {id}: searching the appointments of slot {} gave HTTP {status}",
                            slot.id
                        );
                    }
                    let h = holding_matches(&bundle);
                    if h.len() > 1 {
                        holders.lock().expect("holders").entry(i).or_default().push((id, h));
                    }
                }
                Ok::<(), anyhow::Error>(())
            }));
        }
    }
    for t in tasks {
        t.await.context("a verification task panicked")??;
    }
    let missing = std::mem::take(&mut *missing.lock().expect("missing"));
    let mut missing_by_node: BTreeMap<u64, u64> = nodes.iter().map(|(id, _)| (*id, 0)).collect();
    let mut lost_examples = Vec::new();
    for (i, on) in &missing {
        for id in on {
            *missing_by_node.entry(*id).or_default() += 1;
        }
        if lost_examples.len() < 10 {
            let (rt, rid) = &acked[*i];
            lost_examples.push(format!("{rt}/{rid} missing on nodes {on:?}"));
        }
    }
    let holders = std::mem::take(&mut *holders.lock().expect("holders"));
    let mut double_bookings = 0;
    let mut double_examples = Vec::new();
    for (i, (slot, won)) in slots.iter().enumerate() {
        let on_nodes = holders.get(&i);
        if won.len() > 1 || on_nodes.is_some() {
            double_bookings += 1;
            if double_examples.len() < 10 {
                double_examples.push(format!(
                    "Slot/{}: acknowledged bookings {won:?}, holders on nodes {:?}",
                    slot.id,
                    on_nodes.cloned().unwrap_or_default()
                ));
            }
        }
    }
    Ok(Verdict {
        lost: missing.len() as u64,
        lost_examples,
        missing_by_node,
        double_bookings,
        double_examples,
    })
}

fn default_data_dir() -> PathBuf {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    std::env::temp_dir().join(format!("hale-chaos-{}-{ms}", std::process::id()))
}

pub async fn run(a: ChaosArgs) -> Result<()> {
    if a.voters < 3 {
        bail!("chaos needs at least 3 voters, so that the cluster survives one of them failing");
    }
    if a.clients == 0 {
        bail!("--clients must be at least 1");
    }
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let mut rng = Rng::new(seed);
    let plan = schedule(&mut rng, a.faults, a.leader_kills_min)?;
    let (data, temporary) = match &a.data {
        Some(d) => (d.clone(), false),
        None => (default_data_dir(), true),
    };
    if data.read_dir().is_ok_and(|mut d| d.next().is_some()) {
        bail!("{} is not empty; give chaos a new directory", data.display());
    }
    eprintln!(
        "chaos: seed {seed}, {} voters + {} learners, {} faults, {}, data and node logs in {}",
        a.voters,
        a.learners,
        plan.len(),
        a.link.describe(),
        data.display()
    );
    let spec = Spec {
        voters: a.voters,
        learners: a.learners,
        data: data.clone(),
        fault_injection: true,
        mtls: true,
        // The drill writes as a clinician on patients it registers itself
        // (no bookings): patient-level access is not what it tests.
        extra_toml: format!("{SNAPSHOT_TOML}{}{NO_RELATIONSHIP_TOML}", a.link.cluster_toml()),
        demo_patients: 0,
        log: "warn".into(),
    };
    let started = Instant::now();
    let mut cluster = match LocalCluster::start(spec).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("the cluster did not start; node logs: {}/node-*.log", data.display());
            return Err(e);
        }
    };
    let result = drive(&mut cluster, &a, seed, &plan, &mut rng, started).await;
    cluster.stop_all().await;
    drop(cluster);
    match result {
        Ok(summary) => {
            print_summary(&summary, a.json)?;
            if summary["ok"] == true {
                if temporary {
                    let _ = std::fs::remove_dir_all(&data);
                }
                Ok(())
            } else {
                eprintln!("data and node logs kept in {} (node-N.log)", data.display());
                bail!(
                    "chaos checks failed: {}",
                    summary["failures"]
                        .as_array()
                        .map(|f| f.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("; "))
                        .unwrap_or_default()
                )
            }
        }
        Err(e) => {
            eprintln!("data and node logs kept in {} (node-N.log)", data.display());
            Err(e)
        }
    }
}

async fn drive(
    c: &mut LocalCluster,
    a: &ChaosArgs,
    seed: u64,
    plan: &[Fault],
    rng: &mut Rng,
    started: Instant,
) -> Result<Value> {
    // Set-up through node 1 (the first leader): a schedule, a few patients, free slots.
    let mut conn = Conn::new(&c.proc(1).api_url());
    let loc = must_create(
        &mut conn,
        "/Location",
        &json!({"resourceType": "Location", "status": "active", "name": "Chaos clinic"}),
    )
    .await?;
    let schedule_id = must_create(
        &mut conn,
        "/Schedule",
        &json!({"resourceType": "Schedule", "active": true, "actor": [{"reference": format!("Location/{loc}")}]}),
    )
    .await?;
    let mut patients = Vec::new();
    for k in 0..CONTENDERS {
        patients.push(must_create(&mut conn, "/Patient", &patient_body(u64::MAX - k as u64)).await?);
    }
    let mut free = Vec::new();
    for n in 0..SLOTS_UP_FRONT as u64 {
        let (body, start, end) = slot_body(&schedule_id, n);
        let id = must_create(&mut conn, "/Slot", &body).await?;
        free.push(SlotInfo { id, start, end });
    }
    let mut setup_acked: Vec<(&'static str, String)> = vec![("Location", loc), ("Schedule", schedule_id.clone())];
    setup_acked.extend(patients.iter().map(|p| ("Patient", p.clone())));
    setup_acked.extend(free.iter().map(|s| ("Slot", s.id.clone())));
    let setup_writes = setup_acked.len() as u64;

    let w = Arc::new(Workload {
        urls: c.procs.iter().map(|p| p.api_url()).collect(),
        stop: AtomicBool::new(false),
        next_node: AtomicUsize::new(0),
        next_value: AtomicU64::new(1),
        next_slot: AtomicU64::new(SLOTS_UP_FRONT as u64),
        schedule_id,
        patients,
        free_slots: Mutex::new(free),
        tally: Mutex::new(Tally {
            acked: setup_acked,
            ..Tally::default()
        }),
    });
    let mut tasks = Vec::new();
    for _ in 0..a.clients {
        tasks.push(tokio::spawn(w.clone().creator()));
    }
    for _ in 0..(a.clients / 4).max(1) {
        tasks.push(tokio::spawn(w.clone().booker()));
    }

    let mut log = FaultLog::default();
    let faulted = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (i, fault) in plan.iter().enumerate() {
            let t = Instant::now();
            let what = inject(c, rng, *fault, &mut log).await?;
            let leader = wait_leader(c, "after a fault").await?;
            let acked = w.tally.lock().expect("tally").acked.len();
            eprintln!(
                "[{:>4}/{}] {:<14} {what}; leader now {leader} ({} ms; {acked} writes acknowledged so far)",
                i + 1,
                plan.len(),
                fault.name(),
                t.elapsed().as_millis()
            );
            tokio::time::sleep(rng.millis(1000, 2000)).await;
        }
        // Everything back, a moment of calm writes, then stop the clients.
        for p in c.procs.iter().map(|p| p.id).collect::<Vec<_>>() {
            if !c.proc(p).running() {
                c.restart(p).await?;
            }
            c.isolate(p, false).await?;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok::<(), anyhow::Error>(())
    }
    .await;
    w.stop.store(true, Ordering::Release);
    for t in tasks {
        let _ = t.await;
    }
    faulted?;
    let faults_done = Instant::now();
    let offline = if a.learners > 0 && a.offline_notes > 0 {
        eprintln!("offline writes: cutting a site off while it keeps writing ...");
        let r = crate::chaos_offline::run(c, rng, a.offline_notes).await?;
        eprintln!(
            "offline writes: {} saved at the site, drained in {} s, tasks {}",
            r["offline_writes"], r["drain_s"], r["tasks"]
        );
        r
    } else {
        json!({"skipped": true, "failures": []})
    };

    eprintln!("faults done; waiting for the replicas to converge ...");
    // Each hash reports the applied index it reflects; compare them only when
    // every node hashed the same index (a late audit batch can land between
    // the settle and the hashes).
    let mut attempt = 0;
    let (applied_index, hashes, audit_heads, elections) = loop {
        attempt += 1;
        let applied_index = settle(c).await?;
        let mut hashes = BTreeMap::new();
        let mut audit_heads = BTreeMap::new();
        let mut at = BTreeMap::new();
        let mut elections = ElectionTotals::default();
        for p in &c.procs {
            let s = c.node_status(p.id, true).await?;
            hashes.insert(p.id, s["content_hash"].as_str().unwrap_or("").to_string());
            audit_heads.insert(p.id, s["audit_head"].clone());
            at.insert(p.id, s["applied_index"].as_u64().unwrap_or(0));
            elections.add(&s);
        }
        let same_index = at.values().all(|i| Some(i) == at.values().next());
        if same_index || attempt >= 10 {
            if !same_index {
                eprintln!("the nodes kept applying while being hashed: indexes {at:?}");
            }
            break (applied_index, hashes, audit_heads, elections);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let hashes_equal = hashes
        .values()
        .all(|h| !h.is_empty() && Some(h) == hashes.values().next());
    // The audit chain heads, compared explicitly (the content hash covers them
    // too): apply computes the chain, so replicas at one index hold one head.
    let audit_heads_equal = audit_heads
        .values()
        .all(|h| h.is_object() && Some(h) == audit_heads.values().next());
    let tally = std::mem::take(&mut *w.tally.lock().expect("tally"));
    eprintln!(
        "converged at index {applied_index}; checking {} acknowledged writes and {} raced slots on {} nodes ...",
        tally.acked.len(),
        tally.raced.len(),
        c.procs.len()
    );
    let v = verify(c, &tally).await?;

    let mut failures = Vec::new();
    if v.lost > 0 {
        failures.push(format!(
            "{} acknowledged writes are missing: {:?}",
            v.lost, v.lost_examples
        ));
    }
    if v.double_bookings > 0 {
        failures.push(format!(
            "{} slots are double-booked: {:?}",
            v.double_bookings, v.double_examples
        ));
    }
    if !hashes_equal {
        failures.push(format!("the replicas' content hashes differ: {hashes:?}"));
    }
    if !audit_heads_equal {
        failures.push(format!("the replicas' audit chain heads differ: {audit_heads:?}"));
    }
    if tally.creates_acked == 0 {
        failures.push("no create was acknowledged at all".into());
    }
    for f in offline["failures"].as_array().into_iter().flatten() {
        failures.push(format!("offline writes: {}", f.as_str().unwrap_or("")));
    }
    let not_acked: u64 = tally
        .answered
        .iter()
        .filter(|(s, _)| **s != 409)
        .map(|(_, n)| n)
        .sum::<u64>()
        + tally.refused
        + tally.unknown;
    Ok(json!({
        "ok": failures.is_empty(),
        "failures": failures,
        "seed": seed,
        "voters": a.voters,
        "learners": a.learners,
        "clients": a.clients,
        "faults": {
            "total": log.by_kind.values().sum::<u64>(),
            "by_kind": log.by_kind,
            "leader_kills": log.leader_kills,
            "isolated_leaders": log.isolated_leaders,
            "wipes_resynced_from_snapshot": log.wipes_resynced_from_snapshot,
        },
        "leader_kills": log.leader_kills,
        "links": a.link.describe(),
        "elections": elections.to_json(),
        "acknowledged_writes": {
            "total": tally.acked.len(),
            "creates": tally.creates_acked,
            "bookings": tally.bookings_acked,
            "slots": tally.slots_acked,
            "setup": setup_writes,
        },
        "not_acknowledged": {
            "total": not_acked,
            "refused_connections": tally.refused,
            "unknown": tally.unknown,
            "by_status": tally.answered.iter().map(|(s, n)| (s.to_string(), *n)).collect::<BTreeMap<_, _>>(),
            "unexpected_examples": tally.unexpected,
        },
        "bookings": {
            "slots_raced": tally.raced.len(),
            "attempts": tally.booking_attempts,
            "acknowledged": tally.bookings_acked,
            "conflicts_409": tally.booking_conflicts,
        },
        "writes_lost": v.lost,
        "missing_by_node": v.missing_by_node.iter().map(|(id, n)| (id.to_string(), *n)).collect::<BTreeMap<_, _>>(),
        "double_bookings": v.double_bookings,
        "offline": offline,
        "hashes_equal": hashes_equal,
        "content_hashes": hashes.iter().map(|(id, h)| (id.to_string(), h.clone())).collect::<BTreeMap<_, _>>(),
        "audit_heads_equal": audit_heads_equal,
        "audit_heads": audit_heads.iter().map(|(id, h)| (id.to_string(), h.clone())).collect::<BTreeMap<_, _>>(),
        "applied_index": applied_index,
        "data_dir": c.data().display().to_string(),
        "faults_elapsed_s": round1(faults_done.duration_since(started).as_secs_f64()),
        "elapsed_s": round1(started.elapsed().as_secs_f64()),
    }))
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn print_summary(s: &Value, json: bool) -> Result<()> {
    let f = &s["faults"];
    let k = &f["by_kind"];
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let a = &s["acknowledged_writes"];
    let u = &s["not_acknowledged"];
    let b = &s["bookings"];
    println!(
        "chaos {}: seed {}, {} voters + {} learners, {} clients",
        if s["ok"] == true { "PASSED" } else { "FAILED" },
        s["seed"],
        s["voters"],
        s["learners"],
        s["clients"]
    );
    println!(
        "  faults injected:      {} ({} leader SIGKILLs, {} follower SIGKILLs, {} isolations of which {} of the leader, {} wipes of which {} re-synced from a snapshot)",
        n(&f["total"]),
        n(&k["leader_kill"]),
        n(&k["follower_kill"]),
        n(&k["isolate"]),
        n(&f["isolated_leaders"]),
        n(&k["wipe"]),
        n(&f["wipes_resynced_from_snapshot"]),
    );
    println!("  leader kills:         {}", n(&s["leader_kills"]));
    println!(
        "  acknowledged writes:  {} ({} creates, {} bookings, {} slots, {} set-up)",
        n(&a["total"]),
        n(&a["creates"]),
        n(&a["bookings"]),
        n(&a["slots"]),
        n(&a["setup"])
    );
    println!(
        "  not acknowledged:     {} ({} refused connections, {} unknown outcomes, answers by status {})",
        n(&u["total"]),
        n(&u["refused_connections"]),
        n(&u["unknown"]),
        u["by_status"]
    );
    println!(
        "  booking race:         {} slots, {} attempts, {} acknowledged, {} conflicts (409)",
        n(&b["slots_raced"]),
        n(&b["attempts"]),
        n(&b["acknowledged"]),
        n(&b["conflicts_409"])
    );
    let e = &s["elections"];
    println!("  links:                {}", s["links"].as_str().unwrap_or(""));
    println!(
        "  elections:            final term {}, {} started after a won pre-vote, {} pre-votes lost (campaigns avoided), {} leaderships lost by running nodes",
        n(&e["term"]),
        n(&e["elections_started"]),
        n(&e["prevotes_lost"]),
        n(&e["leaderships_lost_while_running"])
    );
    let o = &s["offline"];
    if o["skipped"] != true {
        println!(
            "  offline writes:       {} at a cut-off site (SIGKILLed twice, one replay answer dropped), drained in {} s; tasks {} ({} per 1,000 writes); verify missing {}, duplicate {}; re-sent {} made {} new; {} of {} site reads audited",
            n(&o["offline_writes"]),
            o["drain_s"],
            o["tasks"],
            o["tasks_per_1000_writes"],
            o["verify"]["missing"].as_array().map(Vec::len).unwrap_or(0),
            o["verify"]["duplicate"],
            o["resend"]["sent"],
            o["resend"]["new"],
            n(&o["read_audits"]),
            n(&o["site_reads"]),
        );
    }
    println!("  writes lost:          {}", n(&s["writes_lost"]));
    println!("  double bookings:      {}", n(&s["double_bookings"]));
    println!(
        "  content hashes equal: {} (applied index {})",
        if s["hashes_equal"] == true { "yes" } else { "NO" },
        s["applied_index"]
    );
    println!(
        "  audit heads equal:    {} ({})",
        if s["audit_heads_equal"] == true { "yes" } else { "NO" },
        s["audit_heads"]
            .as_object()
            .and_then(|m| m.values().next())
            .map_or("-".into(), |h| format!(
                "row {} hash {}",
                h["seq"],
                h["hash"].as_str().unwrap_or("")
            ))
    );
    println!(
        "  elapsed:              {} s ({} s of faults)",
        s["elapsed_s"], s["faults_elapsed_s"]
    );
    for e in u["unexpected_examples"].as_array().into_iter().flatten() {
        println!("  unexpected answer:    {}", e.as_str().unwrap_or(""));
    }
    for e in s["failures"].as_array().into_iter().flatten() {
        println!("  FAILED: {}", e.as_str().unwrap_or(""));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(s)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_deterministic_and_meets_the_leader_kill_floor() {
        let a = schedule(&mut Rng::new(7), 400, 200).unwrap();
        let b = schedule(&mut Rng::new(7), 400, 200).unwrap();
        assert_eq!(a, b);
        assert!(a.iter().filter(|f| **f == Fault::LeaderKill).count() >= 200);
        assert!(a.contains(&Fault::Wipe) && a.contains(&Fault::Isolate) && a.contains(&Fault::FollowerKill));
        assert!(schedule(&mut Rng::new(1), 3, 4).is_err());
    }

    #[test]
    fn rng_below_stays_in_range() {
        let mut r = Rng::new(3);
        for n in 1..50 {
            assert!(r.below(n) < n);
        }
        assert_eq!(r.below(0), 0);
    }

    #[test]
    fn slot_times_are_rfc3339_and_15_minutes_apart() {
        assert_eq!(
            slot_times(1),
            ("2031-01-01T00:15:00Z".to_string(), "2031-01-01T00:30:00Z".to_string())
        );
    }
}

/// Terms and election counters summed over the nodes' own reports. Counters
/// restart with a node, so after kills they undercount; the term does not.
#[derive(Default)]
pub(crate) struct ElectionTotals {
    pub(crate) term_max: u64,
    prevotes_started: u64,
    prevotes_lost: u64,
    pub(crate) elections_started: u64,
    pub(crate) leaderships_lost: u64,
}

impl ElectionTotals {
    pub(crate) fn add(&mut self, status: &Value) {
        let e = &status["elections"];
        let n = |k: &str| e[k].as_u64().unwrap_or(0);
        self.term_max = self.term_max.max(status["term"].as_u64().unwrap_or(0));
        self.prevotes_started += n("prevotes_started");
        self.prevotes_lost += n("prevotes_lost");
        self.elections_started += n("elections_started");
        self.leaderships_lost += n("leaderships_lost");
    }

    fn to_json(&self) -> Value {
        json!({
            "term": self.term_max,
            "prevotes_started": self.prevotes_started,
            "prevotes_lost": self.prevotes_lost,
            "elections_started": self.elections_started,
            "leaderships_lost_while_running": self.leaderships_lost,
        })
    }
}
