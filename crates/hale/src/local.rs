//! A cluster of real `hale serve` processes on loopback: `hale up`, the
//! failover benchmark and the chaos harness all start one of these.

use crate::cluster_cli::{change, outcome_text, CHANGE_RETRY_WAIT_FIRST, CHANGE_RETRY_WAIT_MAX};
use crate::http::{transient_status, transport_failure, Backoff, Client};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The admin token every local-cluster node accepts (loopback only).
pub const ADMIN_TOKEN: &str = "demo-admin";
/// How long a node may take to start answering.
pub const START_TIMEOUT_MS: u64 = 60_000;
/// How long forming the cluster (init, leader, learners, promotions, and the
/// membership seen to hold) may take in all. Generous: on a busy 2-core
/// machine an election can be delayed, and node 1 may be loading demo data.
pub const FORM_TIMEOUT: Duration = Duration::from_secs(180);
/// Bound on one `/cluster/init` or `/cluster/status` request.
const ADMIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
pub struct Spec {
    pub voters: usize,
    pub learners: usize,
    pub data: PathBuf,
    /// Hidden `--fault-injection` on every node (chaos only; needs a build
    /// with the `fault-injection` feature).
    pub fault_injection: bool,
    /// Raft over mutual TLS: a CA and node certificates under `<data>/certs`.
    pub mtls: bool,
    /// Extra TOML appended to every node's config (timeouts, snapshot policy).
    pub extra_toml: String,
    /// Demo patients loaded through node 1 (0: none).
    pub demo_patients: usize,
    /// Log level for the nodes (`HALE_LOG`).
    pub log: String,
}

#[derive(Debug)]
pub struct Proc {
    pub id: u64,
    pub voter: bool,
    pub site: String,
    pub api_addr: String,
    pub raft_addr: String,
    pub dir: PathBuf,
    pub child: Option<tokio::process::Child>,
}

impl Proc {
    pub fn api_url(&self) -> String {
        format!("http://{}", self.api_addr)
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }
}

pub struct LocalCluster {
    pub procs: Vec<Proc>,
    exe: PathBuf,
    spec: Spec,
    /// Talks to the nodes' raft ports (status, faults): with the operator
    /// certificate under mTLS.
    raft: hale_raft::network::NetClient,
}

/// Sites of the demo: voters in two data centres and a tie-breaker, learners at hospitals.
fn site_of(i: usize, voter: bool) -> String {
    const DCS: [&str; 3] = ["dc-east", "dc-west", "dc-tiebreak"];
    const HOSPITALS: [&str; 4] = ["QEH", "SRI", "KGH", "BMH"];
    if voter {
        DCS[i % DCS.len()].to_string()
    } else {
        HOSPITALS[i % HOSPITALS.len()].to_string()
    }
}

impl LocalCluster {
    /// Start every node, initialise node 1, add the others as learners and
    /// promote the voters. On any failure the nodes started are stopped again.
    pub async fn start(spec: Spec) -> Result<LocalCluster> {
        let mut c = LocalCluster::new(spec)?;
        if let Err(e) = c.boot().await {
            c.stop_all().await;
            return Err(e);
        }
        Ok(c)
    }

    /// Choose every node's addresses; start nothing. A node whose data and
    /// config an earlier run left in `spec.data` keeps that run's addresses, so
    /// the cluster in its data comes back as it was.
    pub fn new(spec: Spec) -> Result<LocalCluster> {
        if spec.voters == 0 {
            bail!("a cluster needs at least one voting node");
        }
        std::fs::create_dir_all(&spec.data).with_context(|| format!("cannot create {}", spec.data.display()))?;
        let exe = std::env::current_exe().context("cannot find the hale executable")?;
        let total = spec.voters + spec.learners;
        if let Some(extra) = earlier_nodes(&spec.data)?.into_iter().find(|&id| id > total as u64) {
            bail!(
                "{} holds node {extra} of an earlier, larger cluster; run with the same --nodes and --learners as then, or delete {} to start a new cluster",
                spec.data.display(),
                spec.data.display()
            );
        }
        // Hold every fresh port until all are chosen, so no two nodes get the same one.
        let mut held = Vec::new();
        let mut fresh = || -> Result<String> {
            let l = bind_outside_ephemeral_range().context("cannot find a free loopback port")?;
            let addr = format!("127.0.0.1:{}", l.local_addr()?.port());
            held.push(l);
            Ok(addr)
        };
        let mut procs = Vec::new();
        for i in 0..total {
            let voter = i < spec.voters;
            let id = i as u64 + 1;
            let dir = spec.data.join(format!("node-{id}"));
            let (api_addr, raft_addr) = match earlier_addrs(&dir) {
                Some((api, raft)) => {
                    for addr in [&api, &raft] {
                        if std::net::TcpListener::bind(addr.as_str()).is_err() {
                            bail!(
                                "node {id} of the cluster in {} used {addr}, which something else now holds (is an earlier `hale up` still running?). Stop it, or delete {} to start a new cluster",
                                spec.data.display(),
                                spec.data.display()
                            );
                        }
                    }
                    (api, raft)
                }
                None => (fresh()?, fresh()?),
            };
            procs.push(Proc {
                id,
                voter,
                site: site_of(if voter { i } else { i - spec.voters }, voter),
                api_addr,
                raft_addr,
                dir,
                child: None,
            });
        }
        drop(held);
        let tls = if spec.mtls {
            let certs = spec.data.join("certs");
            let nodes: Vec<(u64, bool)> = procs.iter().map(|p| (p.id, p.voter)).collect();
            crate::cert_cli::local_cluster_certs(&certs, &nodes)
                .with_context(|| format!("cannot create the cluster's certificates in {}", certs.display()))?;
            let files = hale_raft::peer_tls::PeerTlsFiles {
                ca: certs.join("ca.pem"),
                cert: certs.join("operator.pem"),
                key: certs.join("operator-key.pem"),
            };
            Some(hale_raft::peer_tls::PeerTls::load(&files).map_err(anyhow::Error::msg)?)
        } else {
            None
        };
        let raft = hale_raft::network::NetClient::new(Default::default(), None, 1 << 20, None, tls.as_ref());
        Ok(LocalCluster { procs, exe, spec, raft })
    }

    /// POST to a node's raft port; the answer's body, or why not.
    async fn raft_post(&self, id: u64, path: &str, body: Vec<u8>, timeout: Duration) -> Result<bytes::Bytes> {
        let p = self.proc(id);
        self.raft
            .post_raw(None, &p.raft_addr, path, body, timeout, false)
            .await
            .map_err(|e| anyhow::anyhow!("node {id}: {e}"))
    }

    /// Start every node and form the cluster. The caller stops the nodes if this fails.
    pub async fn boot(&mut self) -> Result<()> {
        for i in 0..self.procs.len() {
            self.spawn(self.procs[i].id)?;
        }
        for i in 0..self.procs.len() {
            self.wait_started(self.procs[i].id).await?;
        }
        self.form().await
    }

    /// Wait until node `id` answers /healthz; fail at once if its process exits.
    async fn wait_started(&mut self, id: u64) -> Result<()> {
        let i = self.index(id)?;
        let url = self.procs[i].api_url();
        let log = self.procs[i].dir.with_extension("log");
        let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
        loop {
            if let Some(child) = self.procs[i].child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.procs[i].child = None;
                    bail!(
                        "node {id} exited ({status}) before it answered on {url}. Its log, {}, ends:\n{}",
                        log.display(),
                        log_tail(&log, 8)
                    );
                }
            }
            let mut c = Client::new(&url, None)?.with_timeout(Duration::from_secs(5));
            if matches!(c.send("GET", "/healthz", None).await, Ok(r) if r.status == 200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "node {id} did not answer on {url} within {} s. Its log, {}, ends:\n{}",
                    START_TIMEOUT_MS / 1000,
                    log.display(),
                    log_tail(&log, 12)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn config_text(&self, p: &Proc) -> String {
        format!(
            "listen = \"{api}\"\ndata = \"{data}\"\n\n[auth]\n\
             tokens = [\n  {{ token = \"demo-clinician\", user = \"dr.demo\", role = \"clinician\", site = \"{demo_site}\" }},\n  \
             {{ token = \"demo-clerk\", user = \"clerk.demo\", role = \"clerk\" }},\n  \
             {{ token = \"{ADMIN_TOKEN}\", user = \"admin.demo\", role = \"admin\" }},\n]\n\n\
             [cluster]\nnode_id = {id}\nlisten = \"{raft}\"\nsite = \"{site}\"\nbootstrap_single = false\nfault_injection = {fi}\n{tls}{extra}\n",
            api = p.api_addr,
            data = p.dir.display().to_string().replace('\\', "/"),
            id = p.id,
            raft = p.raft_addr,
            site = p.site,
            fi = self.spec.fault_injection,
            tls = if self.spec.mtls {
                let certs = self.spec.data.join("certs");
                let path = |f: String| certs.join(f).display().to_string().replace('\\', "/");
                format!(
                    "tls = {{ ca = \"{}\", cert = \"{}\", key = \"{}\" }}\n",
                    path("ca.pem".into()),
                    path(format!("node-{}.pem", p.id)),
                    path(format!("node-{}-key.pem", p.id))
                )
            } else {
                String::new()
            },
            extra = self.spec.extra_toml,
            demo_site = hale_server::config::DEMO_SITE,
        )
    }

    /// Start (or restart) node `id` as a child process; its log goes to `<dir>/hale.log`.
    pub fn spawn(&mut self, id: u64) -> Result<()> {
        let i = self.index(id)?;
        let text = self.config_text(&self.procs[i]);
        let p = &mut self.procs[i];
        std::fs::create_dir_all(&p.dir)?;
        let cfg_path = p.dir.with_extension("toml");
        std::fs::write(&cfg_path, text)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p.dir.with_extension("log"))?;
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.arg("serve")
            .arg("--config")
            .arg(&cfg_path)
            .env("HALE_LOG", &self.spec.log)
            .env_remove("HALE_DATA")
            .env_remove("HALE_LISTEN")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        if p.id == 1 && self.spec.demo_patients > 0 {
            cmd.arg("--demo")
                .arg("--demo-patients")
                .arg(self.spec.demo_patients.to_string());
        }
        let child = cmd.spawn().context("cannot start a hale node process")?;
        p.child = Some(child);
        Ok(())
    }

    fn index(&self, id: u64) -> Result<usize> {
        self.procs
            .iter()
            .position(|p| p.id == id)
            .with_context(|| format!("no node {id} in this cluster"))
    }

    pub fn proc(&self, id: u64) -> &Proc {
        &self.procs[self.index(id).expect("known node")]
    }

    /// Make the membership what the spec says: node 1 initialises the cluster
    /// (unless it already belongs to one, from an earlier run), every other
    /// node is added as a learner and the voters are promoted, each change
    /// sent to whichever node leads then. Transient failures are retried until
    /// [`FORM_TIMEOUT`]; success means every node holds its intended role.
    async fn form(&self) -> Result<()> {
        let deadline = Instant::now() + FORM_TIMEOUT;
        self.init(deadline).await?;
        let mut leader = self.wait_leader(deadline).await?;
        for p in &self.procs[1..] {
            let body = json!({"node_id": p.id, "raft_addr": p.raft_addr, "api_url": p.api_url(), "site": p.site});
            leader = self
                .change(&leader, "/cluster/learners", &body, deadline)
                .await
                .with_context(|| format!("adding node {} as a learner failed", p.id))?;
        }
        for p in self.procs.iter().filter(|p| p.voter && p.id != 1) {
            leader = self
                .change(&leader, "/cluster/promote", &json!({"node_id": p.id}), deadline)
                .await
                .with_context(|| format!("promoting node {} to voter failed", p.id))?;
        }
        self.wait_membership(deadline).await
    }

    /// `POST /cluster/init` on node 1; a node that already belongs to a cluster
    /// refuses (409), which is what a restarted cluster looks like.
    async fn init(&self, deadline: Instant) -> Result<()> {
        let first = &self.procs[0];
        let mut backoff = Backoff::new(CHANGE_RETRY_WAIT_FIRST, CHANGE_RETRY_WAIT_MAX, deadline);
        loop {
            let mut c = Client::new(&first.api_url(), Some(ADMIN_TOKEN))?.with_timeout(ADMIN_REQUEST_TIMEOUT);
            let why = match c.send("POST", "/cluster/init", Some(b"{}".to_vec())).await {
                Ok(r) if r.status == 200 => return Ok(()),
                Ok(r) if r.status == 409 => {
                    tracing::debug!(why = %outcome_text(&r.body), "node 1 already belongs to a cluster");
                    return Ok(());
                }
                Ok(r) if transient_status(r.status) => format!("HTTP {}: {}", r.status, outcome_text(&r.body)),
                Ok(r) => bail!(
                    "node 1 refused to initialise the cluster: HTTP {} {}",
                    r.status,
                    outcome_text(&r.body)
                ),
                Err(e) if transport_failure(&e).is_some() => format!("{e:#}"),
                Err(e) => return Err(e),
            };
            let Some(wait) = backoff.next_wait() else {
                bail!("node 1 could not initialise the cluster: {why}");
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// The API URL of the node that leads, once one does.
    async fn wait_leader(&self, deadline: Instant) -> Result<String> {
        loop {
            if let Some(id) = self.leader().await {
                return Ok(self.proc(id).api_url());
            }
            if Instant::now() > deadline {
                bail!(
                    "no node was elected leader within {} s of starting",
                    FORM_TIMEOUT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A membership change sent to `leader` (following it if it moves, asking
    /// the other nodes if it cannot be reached); returns the leader's URL.
    async fn change(&self, leader: &str, path: &str, body: &Value, deadline: Instant) -> Result<String> {
        let mut urls = vec![leader.to_string()];
        urls.extend(self.procs.iter().map(Proc::api_url).filter(|u| u != leader));
        let (_, leader) = change(&urls, Some(ADMIN_TOKEN), path, body, deadline).await?;
        Ok(leader)
    }

    /// Wait until the leader's membership holds every node in its intended role
    /// (and nothing else), and every node sees its own role so.
    async fn wait_membership(&self, deadline: Instant) -> Result<()> {
        loop {
            let problem = match self.membership_problem().await {
                Ok(None) => return Ok(()),
                Ok(Some(p)) => p,
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > deadline {
                bail!("the membership changes were accepted, but the cluster did not settle as intended: {problem}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// What keeps the membership from being as intended, if anything.
    async fn membership_problem(&self) -> Result<Option<String>> {
        let Some(leader) = self.leader().await else {
            return Ok(Some("no node leads".into()));
        };
        let mut c = Client::new(&self.proc(leader).api_url(), Some(ADMIN_TOKEN))?.with_timeout(ADMIN_REQUEST_TIMEOUT);
        let r = c.send("GET", "/cluster/status", None).await?;
        if r.status != 200 {
            return Ok(Some(format!(
                "node {leader} answered /cluster/status with HTTP {}: {}",
                r.status,
                outcome_text(&r.body)
            )));
        }
        let status = r.json()?;
        let roles: BTreeMap<u64, String> = status["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| Some((m["id"].as_u64()?, m["role"].as_str()?.to_string())))
            .collect();
        let intended: BTreeMap<u64, String> = self
            .procs
            .iter()
            .map(|p| (p.id, if p.voter { "voter" } else { "learner" }.to_string()))
            .collect();
        if let Some(p) = membership_diff(&intended, &roles) {
            return Ok(Some(format!("node {leader} leads, but {p}")));
        }
        for p in &self.procs {
            let s = self.node_status(p.id, false).await?;
            let state = s["state"].as_str().unwrap_or("?");
            let sees_itself_as_voter = matches!(state, "leader" | "follower" | "candidate");
            if sees_itself_as_voter != p.voter {
                return Ok(Some(format!(
                    "node {} has not yet learned its role (it is {state})",
                    p.id
                )));
            }
        }
        Ok(None)
    }

    /// A node's own raft status (works even while it is isolated).
    pub async fn node_status(&self, id: u64, with_hash: bool) -> Result<Value> {
        let timeout = Duration::from_secs(if with_hash { 60 } else { 2 });
        let body = self
            .raft_post(id, "/raft/status", with_hash.to_string().into_bytes(), timeout)
            .await
            .with_context(|| format!("node {id} status"))?;
        serde_json::from_slice(&body).with_context(|| format!("node {id} status is not JSON"))
    }

    /// The leader as the running, non-isolated nodes agree on it (the highest term wins).
    pub async fn leader(&self) -> Option<u64> {
        let mut best: Option<(u64, u64)> = None;
        for p in self.procs.iter().filter(|p| p.running()) {
            if let Ok(s) = self.node_status(p.id, false).await {
                if s["isolated"].as_bool() == Some(true) {
                    continue;
                }
                let term = s["term"].as_u64().unwrap_or(0);
                if s["state"] == "leader" && best.is_none_or(|(t, _)| term > t) {
                    best = Some((term, p.id));
                }
            }
        }
        best.map(|(_, id)| id)
    }

    /// SIGKILL a node: no shutdown, no flush, as if its power failed.
    pub async fn kill(&mut self, id: u64) -> Result<()> {
        let i = self.index(id)?;
        if let Some(mut child) = self.procs[i].child.take() {
            child.start_kill().ok();
            let _ = child.wait().await;
        }
        Ok(())
    }

    /// SIGTERM a node and wait for it to stop.
    pub async fn terminate(&mut self, id: u64) -> Result<()> {
        let i = self.index(id)?;
        if let Some(mut child) = self.procs[i].child.take() {
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .status();
            }
            if tokio::time::timeout(Duration::from_secs(15), child.wait())
                .await
                .is_err()
            {
                child.start_kill().ok();
                let _ = child.wait().await;
            }
        }
        Ok(())
    }

    pub async fn restart(&mut self, id: u64) -> Result<()> {
        self.spawn(id)?;
        self.wait_started(id).await
    }

    /// Delete a stopped node's data directory (it must re-sync from the others).
    pub fn wipe(&mut self, id: u64) -> Result<()> {
        let p = self.proc(id);
        if p.running() {
            bail!("node {id} is running; stop it before wiping its data");
        }
        if p.dir.exists() {
            std::fs::remove_dir_all(&p.dir).with_context(|| format!("cannot wipe {}", p.dir.display()))?;
        }
        Ok(())
    }

    /// Cut a node off from (or reconnect it to) every other node's raft traffic.
    pub async fn isolate(&self, id: u64, isolated: bool) -> Result<()> {
        self.fault(id, json!({ "isolated": isolated })).await
    }

    /// Inject a fault on a node (`FaultRequest` of hale-raft as JSON).
    pub async fn fault(&self, id: u64, req: Value) -> Result<()> {
        self.raft_post(id, "/raft/fault", req.to_string().into_bytes(), Duration::from_secs(10))
            .await
            .with_context(|| format!("node {id} refused fault injection"))?;
        Ok(())
    }

    /// Be the nodes' supervisor, as systemd's `Restart=on-failure` would: a
    /// node that exited with the drill's restart status
    /// (`hale_server::drill::RESTART_EXIT_CODE`) is started again; any other
    /// exit is reported and left. Returns the nodes restarted.
    pub fn supervise(&mut self) -> Vec<u64> {
        let mut restarted = Vec::new();
        for i in 0..self.procs.len() {
            let id = self.procs[i].id;
            let Some(child) = self.procs[i].child.as_mut() else {
                continue;
            };
            let Ok(Some(status)) = child.try_wait() else { continue };
            self.procs[i].child = None;
            if status.code() == Some(hale_server::drill::RESTART_EXIT_CODE) {
                match self.spawn(id) {
                    Ok(()) => restarted.push(id),
                    Err(e) => eprintln!("node {id} asked to be restarted, but could not be started again: {e:#}"),
                }
            } else {
                eprintln!(
                    "node {id} exited ({status}); see {}",
                    self.procs[i].dir.with_extension("log").display()
                );
            }
        }
        restarted
    }

    pub async fn stop_all(&mut self) {
        let ids: Vec<u64> = self.procs.iter().map(|p| p.id).collect();
        for id in ids {
            let _ = self.terminate(id).await;
        }
    }

    pub fn data(&self) -> &Path {
        &self.spec.data
    }
}

/// How the membership a leader reports (`id -> "voter" | "learner"`) differs
/// from the intended one, in words; None when it is the same.
pub fn membership_diff(intended: &BTreeMap<u64, String>, actual: &BTreeMap<u64, String>) -> Option<String> {
    let mut problems = Vec::new();
    for (id, role) in intended {
        match actual.get(id) {
            None => problems.push(format!("node {id} is not a member")),
            Some(r) if r != role => problems.push(format!("node {id} is a {r}, not a {role}")),
            Some(_) => {}
        }
    }
    for (id, role) in actual {
        if !intended.contains_key(id) {
            problems.push(format!("node {id} is a {role} but not part of this cluster"));
        }
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// Node ids of the `node-N` data directories an earlier run left in `data`.
fn earlier_nodes(data: &Path) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    for e in std::fs::read_dir(data).with_context(|| format!("cannot read {}", data.display()))? {
        let e = e?;
        if !e.file_type()?.is_dir() {
            continue;
        }
        if let Some(id) = e
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix("node-"))
            .and_then(|n| n.parse().ok())
        {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// The API and raft addresses a node had in an earlier run: from the config
/// that run wrote next to its data directory, if both are there.
fn earlier_addrs(dir: &Path) -> Option<(String, String)> {
    if !dir.read_dir().is_ok_and(|mut d| d.next().is_some()) {
        return None;
    }
    let text = std::fs::read_to_string(dir.with_extension("toml")).ok()?;
    let v: toml::Value = toml::from_str(&text).ok()?;
    let api = v.get("listen")?.as_str()?.to_string();
    let raft = v.get("cluster")?.get("listen")?.as_str()?.to_string();
    Some((api, raft))
}

/// The last `n` lines of a log file (for an error message).
fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A loopback listener on a free port below the kernel's ephemeral range.
///
/// A node's ports must stay free while it is down (a chaos kill, a drill):
/// a port from the ephemeral range (what binding port 0 gives) can be taken
/// meanwhile as the local end of any outgoing connection on the machine,
/// a peer's reconnect attempts included, and the node then cannot start
/// again. Ports below the range are only ever taken by an explicit bind.
pub fn bind_outside_ephemeral_range() -> std::io::Result<std::net::TcpListener> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    const FIRST: u16 = 10_000;
    if low > FIRST + 1_000 {
        use std::hash::{BuildHasher, Hasher};
        // Random starting points, so concurrent harnesses rarely collide.
        let seed = std::collections::hash_map::RandomState::new();
        for attempt in 0..200u64 {
            let mut h = seed.build_hasher();
            h.write_u64(attempt);
            let port = FIRST + (h.finish() % u64::from(low - FIRST)) as u16;
            if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
                return Ok(l);
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
}

pub async fn wait_healthy(url: &str) -> Result<()> {
    let url = url.to_string();
    wait_until(START_TIMEOUT_MS, &format!("{url}/healthz to answer"), || {
        let url = url.clone();
        async move {
            let mut c = Client::new(&url, None)?;
            Ok(matches!(c.send("GET", "/healthz", None).await, Ok(r) if r.status == 200))
        }
    })
    .await
}

/// Poll `f` every 50 ms until it says yes or `timeout_ms` passes.
pub async fn wait_until<F, Fut>(timeout_ms: u64, what: &str, mut f: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let start = Instant::now();
    loop {
        if f().await.unwrap_or(false) {
            return Ok(());
        }
        if start.elapsed() > Duration::from_millis(timeout_ms) {
            bail!("gave up after {timeout_ms} ms waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(v: &[(u64, &str)]) -> BTreeMap<u64, String> {
        v.iter().map(|(id, r)| (*id, r.to_string())).collect()
    }

    #[test]
    fn the_membership_diff_names_every_node_out_of_place() {
        let intended = roles(&[(1, "voter"), (2, "voter"), (3, "learner")]);
        assert_eq!(membership_diff(&intended, &intended), None);
        let actual = roles(&[(1, "voter"), (2, "learner"), (4, "learner")]);
        assert_eq!(
            membership_diff(&intended, &actual).as_deref(),
            Some("node 2 is a learner, not a voter; node 3 is not a member; node 4 is a learner but not part of this cluster")
        );
    }

    #[test]
    fn a_node_keeps_the_addresses_of_an_earlier_run_only_with_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join("node-1");
        std::fs::write(
            node.with_extension("toml"),
            "listen = \"127.0.0.1:1111\"\ndata = \"x\"\n\n[cluster]\nnode_id = 1\nlisten = \"127.0.0.1:2222\"\n",
        )
        .unwrap();
        assert_eq!(earlier_addrs(&node), None, "no data: a new node");
        std::fs::create_dir_all(node.join("raft")).unwrap();
        assert_eq!(
            earlier_addrs(&node),
            Some(("127.0.0.1:1111".to_string(), "127.0.0.1:2222".to_string()))
        );
        assert_eq!(earlier_nodes(dir.path()).unwrap(), vec![1]);
    }
}
