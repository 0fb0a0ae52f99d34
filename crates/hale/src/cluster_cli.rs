//! `hale cluster ...` (membership and status) and `hale up` (a local cluster).

use crate::http::Client;
use crate::local::{LocalCluster, Spec, ADMIN_TOKEN};
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::path::PathBuf;

#[derive(Args)]
pub struct ClusterArgs {
    /// API URL of any node.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "HALE_URL", global = true)]
    url: String,
    /// Admin bearer token.
    #[arg(long, env = "HALE_TOKEN", global = true)]
    token: Option<String>,
    #[command(subcommand)]
    cmd: ClusterCmd,
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Start a new cluster whose only voter is the node at --url.
    Init,
    /// Add a node as a learner (a read replica, e.g. at a hospital site).
    AddLearner {
        #[arg(long)]
        node_id: u64,
        /// The node's --raft-listen address as the others reach it.
        #[arg(long)]
        raft_addr: String,
        /// The node's API URL.
        #[arg(long)]
        api_url: String,
        /// Hospital site or data centre.
        #[arg(long)]
        site: String,
    },
    /// Make a learner a voter (put voters in data centres).
    Promote {
        #[arg(long)]
        node_id: u64,
    },
    /// Remove a node from the cluster.
    Remove {
        #[arg(long)]
        node_id: u64,
    },
    /// Leader, term, and each node's role, site, applied index, lag and last contact.
    Status {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
}

/// POST to the leader: a node that does not lead answers 421 naming the leader.
async fn change(url: &str, token: Option<&str>, path: &str, body: Value) -> Result<Value> {
    let mut target = url.to_string();
    for _ in 0..3 {
        let mut c = Client::new(&target, token)?;
        let r = c.send("POST", path, Some(body.to_string().into_bytes())).await?;
        match r.status {
            200 => return r.json(),
            421 => match r.header("x-hale-leader") {
                Some(l) => {
                    eprintln!("{target} does not lead; sending to the leader at {l}");
                    target = l.to_string();
                }
                None => bail!("{target} does not lead and does not know who does; retry in a moment"),
            },
            s => bail!("{target} refused: HTTP {s}: {}", outcome_text(&r.body)),
        }
    }
    bail!("the leader kept moving; retry in a moment")
}

fn outcome_text(body: &[u8]) -> String {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => v["issue"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|i| i["diagnostics"].as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_else(|| v.to_string()),
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    }
}

pub async fn run(a: ClusterArgs) -> Result<()> {
    let token = a.token.as_deref();
    match a.cmd {
        ClusterCmd::Init => {
            let mut c = Client::new(&a.url, token)?;
            let r = c.send("POST", "/cluster/init", Some(b"{}".to_vec())).await?;
            if r.status != 200 {
                bail!("init refused: HTTP {}: {}", r.status, outcome_text(&r.body));
            }
            println!("initialised a new cluster led by the node at {}", a.url);
        }
        ClusterCmd::AddLearner {
            node_id,
            raft_addr,
            api_url,
            site,
        } => {
            let body = json!({"node_id": node_id, "raft_addr": raft_addr, "api_url": api_url, "site": site});
            change(&a.url, token, "/cluster/learners", body).await?;
            println!("node {node_id} ({site}) added as a learner; it catches up in the background");
        }
        ClusterCmd::Promote { node_id } => {
            change(&a.url, token, "/cluster/promote", json!({ "node_id": node_id })).await?;
            println!("node {node_id} is now a voter");
        }
        ClusterCmd::Remove { node_id } => {
            change(&a.url, token, "/cluster/remove", json!({ "node_id": node_id })).await?;
            println!("node {node_id} removed");
        }
        ClusterCmd::Status { json } => {
            let s = status(&a.url, token).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", status_table(&s));
            }
        }
    }
    Ok(())
}

pub async fn status(url: &str, token: Option<&str>) -> Result<Value> {
    let mut c = Client::new(url, token)?;
    let r = c.send("GET", "/cluster/status", None).await?;
    if r.status != 200 {
        bail!("status refused: HTTP {}: {}", r.status, outcome_text(&r.body));
    }
    r.json()
}

pub fn status_table(s: &Value) -> String {
    let mut out = String::new();
    let leader = s["leader"]
        .as_u64()
        .map(|l| l.to_string())
        .unwrap_or_else(|| "none".into());
    out.push_str(&format!(
        "leader: {leader}   term: {}   (answered by node {})\n",
        s["term"].as_u64().unwrap_or(0),
        s["answered_by"].as_u64().unwrap_or(0)
    ));
    out.push_str(&format!(
        "{:>4}  {:<8} {:<11} {:<10} {:>9} {:>7} {:>11}  {}\n",
        "node", "role", "site", "state", "applied", "lag", "last heard", "api"
    ));
    for m in s["members"].as_array().into_iter().flatten() {
        let opt = |v: &Value| v.as_u64().map(|x| x.to_string()).unwrap_or_else(|| "-".into());
        let heard = m["last_heard_ms"]
            .as_u64()
            .map(|ms| format!("{ms} ms ago"))
            .unwrap_or_else(|| "never".into());
        out.push_str(&format!(
            "{:>4}  {:<8} {:<11} {:<10} {:>9} {:>7} {:>11}  {}\n",
            m["id"].as_u64().unwrap_or(0),
            m["role"].as_str().unwrap_or("?"),
            m["site"].as_str().unwrap_or("?"),
            m["state"].as_str().unwrap_or("unreachable"),
            opt(&m["applied_index"]),
            opt(&m["lag_entries"]),
            heard,
            m["api_url"].as_str().unwrap_or("?"),
        ));
    }
    out
}

#[derive(Args)]
pub struct UpArgs {
    /// Voting nodes (data centres).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Learners (hospital-site read replicas).
    #[arg(long, default_value_t = 2)]
    learners: usize,
    /// Directory for the nodes' data, configs and logs.
    #[arg(long, default_value = "./hale-cluster")]
    data: PathBuf,
    /// Load the demo health board (this many patients) through node 1.
    #[arg(long, default_value_t = 0)]
    demo_patients: usize,
}

pub async fn up(a: UpArgs) -> Result<()> {
    let spec = Spec {
        voters: a.nodes,
        learners: a.learners,
        data: a.data.clone(),
        fault_injection: false,
        extra_toml: String::new(),
        demo_patients: a.demo_patients,
        log: "info".into(),
    };
    eprintln!(
        "starting {} voters and {} learners under {} ...",
        a.nodes,
        a.learners,
        a.data.display()
    );
    let mut cluster = LocalCluster::start(spec).await?;
    println!("Hale cluster is up. Tokens: demo-clinician, demo-clerk, {ADMIN_TOKEN}.");
    for p in &cluster.procs {
        println!(
            "  node {}  {:<7}  {:<11}  {}   (raft {}, log {})",
            p.id,
            if p.voter { "voter" } else { "learner" },
            p.site,
            p.api_url(),
            p.raft_addr,
            p.dir.with_extension("log").display()
        );
    }
    let first = cluster.procs[0].api_url();
    println!("\nTry:  hale cluster status --url {first} --token {ADMIN_TOKEN}");
    println!("      kill -9 the leader's process and watch another node take over.");
    println!("Ctrl-C stops every node.");
    let _ = tokio::signal::ctrl_c().await;
    eprintln!("stopping ...");
    cluster.stop_all().await;
    Ok(())
}
