//! A cluster of real `hale serve` processes on loopback: `hale up`, the
//! failover benchmark and the chaos harness all start one of these.

use crate::http::Client;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The admin token every local-cluster node accepts (loopback only).
pub const ADMIN_TOKEN: &str = "demo-admin";
/// How long a node may take to start answering.
pub const START_TIMEOUT_MS: u64 = 30_000;

#[derive(Debug, Clone)]
pub struct Spec {
    pub voters: usize,
    pub learners: usize,
    pub data: PathBuf,
    /// Hidden `--fault-injection` on every node (chaos only).
    pub fault_injection: bool,
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
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free loopback port")?;
    Ok(l.local_addr()?.port())
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
    /// Start every node, initialise node 1, add the others as learners and promote the voters.
    pub async fn start(spec: Spec) -> Result<LocalCluster> {
        if spec.voters == 0 {
            bail!("a cluster needs at least one voting node");
        }
        std::fs::create_dir_all(&spec.data).with_context(|| format!("cannot create {}", spec.data.display()))?;
        let exe = std::env::current_exe().context("cannot find the hale executable")?;
        let mut procs = Vec::new();
        for i in 0..spec.voters + spec.learners {
            let voter = i < spec.voters;
            let id = i as u64 + 1;
            let dir = spec.data.join(format!("node-{id}"));
            procs.push(Proc {
                id,
                voter,
                site: site_of(if voter { i } else { i - spec.voters }, voter),
                api_addr: format!("127.0.0.1:{}", free_port()?),
                raft_addr: format!("127.0.0.1:{}", free_port()?),
                dir,
                child: None,
            });
        }
        let mut c = LocalCluster { procs, exe, spec };
        for i in 0..c.procs.len() {
            c.spawn(c.procs[i].id)?;
        }
        for p in &c.procs {
            wait_healthy(&p.api_url()).await?;
        }
        c.form().await?;
        Ok(c)
    }

    fn config_text(&self, p: &Proc) -> String {
        format!(
            "listen = \"{api}\"\ndata = \"{data}\"\n\n[auth]\n\
             tokens = [\n  {{ token = \"demo-clinician\", user = \"dr.demo\", role = \"clinician\" }},\n  \
             {{ token = \"demo-clerk\", user = \"clerk.demo\", role = \"clerk\" }},\n  \
             {{ token = \"{ADMIN_TOKEN}\", user = \"admin.demo\", role = \"admin\" }},\n]\n\n\
             [cluster]\nnode_id = {id}\nlisten = \"{raft}\"\nsite = \"{site}\"\nbootstrap_single = false\nfault_injection = {fi}\n{extra}\n",
            api = p.api_addr,
            data = p.dir.display().to_string().replace('\\', "/"),
            id = p.id,
            raft = p.raft_addr,
            site = p.site,
            fi = self.spec.fault_injection,
            extra = self.spec.extra_toml,
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

    async fn form(&self) -> Result<()> {
        let first = &self.procs[0];
        let mut c = Client::new(&first.api_url(), Some(ADMIN_TOKEN))?;
        let r = c.send("POST", "/cluster/init", Some(b"{}".to_vec())).await?;
        if r.status != 200 {
            bail!(
                "node 1 refused to initialise the cluster: HTTP {} {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
        }
        wait_until(START_TIMEOUT_MS, "node 1 to become leader", || async {
            Ok(self.leader().await == Some(1))
        })
        .await?;
        for p in &self.procs[1..] {
            let body = json!({"node_id": p.id, "raft_addr": p.raft_addr, "api_url": p.api_url(), "site": p.site});
            let r = c
                .send("POST", "/cluster/learners", Some(body.to_string().into_bytes()))
                .await?;
            if r.status != 200 {
                bail!(
                    "adding node {} failed: HTTP {} {}",
                    p.id,
                    r.status,
                    String::from_utf8_lossy(&r.body)
                );
            }
        }
        for p in self.procs.iter().filter(|p| p.voter && p.id != 1) {
            let body = json!({"node_id": p.id});
            let r = c
                .send("POST", "/cluster/promote", Some(body.to_string().into_bytes()))
                .await?;
            if r.status != 200 {
                bail!(
                    "promoting node {} failed: HTTP {} {}",
                    p.id,
                    r.status,
                    String::from_utf8_lossy(&r.body)
                );
            }
        }
        Ok(())
    }

    /// A node's own raft status (works even while it is isolated).
    pub async fn node_status(&self, id: u64, with_hash: bool) -> Result<Value> {
        let p = self.proc(id);
        let mut c = Client::new(&format!("http://{}", p.raft_addr), None)?;
        let r = tokio::time::timeout(
            Duration::from_secs(if with_hash { 60 } else { 2 }),
            c.send("POST", "/raft/status", Some(with_hash.to_string().into_bytes())),
        )
        .await
        .context("status request timed out")??;
        if r.status != 200 {
            bail!("node {id} status: HTTP {}", r.status);
        }
        r.json()
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
        wait_healthy(&self.proc(id).api_url()).await
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
        let p = self.proc(id);
        let mut c = Client::new(&format!("http://{}", p.raft_addr), None)?;
        let r = c
            .send(
                "POST",
                "/raft/fault",
                Some(json!({ "isolated": isolated }).to_string().into_bytes()),
            )
            .await?;
        if r.status != 200 {
            bail!(
                "node {id} refused fault injection: HTTP {} {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
        }
        Ok(())
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
