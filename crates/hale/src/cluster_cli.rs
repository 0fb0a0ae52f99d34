//! `hale cluster ...` (membership and status) and `hale up` (a local cluster).

use crate::http::{transient_status, transport_failure, Backoff, Client, Delivery};
use crate::local::{LocalCluster, Spec, ADMIN_TOKEN};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

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

/// How long `hale cluster add-learner|promote|remove` keeps trying.
const CLI_CHANGE_DEADLINE: Duration = Duration::from_secs(120);
/// Bound on one membership request (a promotion waits for the learner to catch up).
pub const CHANGE_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub const CHANGE_RETRY_WAIT_FIRST: Duration = Duration::from_millis(250);
pub const CHANGE_RETRY_WAIT_MAX: Duration = Duration::from_secs(5);

/// The leader a 421 answer names: the `X-Hale-Leader` header, or else the API
/// URL in the OperationOutcome's text ("node 2 leads the cluster; send
/// membership changes to it (http://127.0.0.1:8082)").
pub fn leader_from_421(header: Option<&str>, body: &[u8]) -> Option<String> {
    if let Some(h) = header.map(str::trim).filter(|h| h.starts_with("http://")) {
        return Some(h.trim_end_matches('/').to_string());
    }
    let text = outcome_text(body);
    let start = text.find("(http://")? + 1;
    let end = start + text[start..].find(')')?;
    let url = &text[start..end];
    (!url.contains(char::is_whitespace)).then(|| url.trim_end_matches('/').to_string())
}

/// What one attempt at a membership change came to.
enum Attempt {
    Done(Value),
    /// The node does not lead; the leader's API URL.
    Redirect(String),
    /// Worth another try: why not now, and whether the node could not be reached at all.
    Transient(String, bool),
}

/// One POST of a membership change to `target`; Err for an answer that retrying cannot change.
async fn attempt_change(target: &str, token: Option<&str>, path: &str, body: &Value) -> Result<Attempt> {
    let mut c = Client::new(target, token)?.with_timeout(CHANGE_REQUEST_TIMEOUT);
    let r = match c.send("POST", path, Some(body.to_string().into_bytes())).await {
        Ok(r) => r,
        Err(e) => match transport_failure(&e) {
            Some(t) => return Ok(Attempt::Transient(t.to_string(), t.delivery == Delivery::NotSent)),
            None => return Err(e),
        },
    };
    let why = || outcome_text(&r.body);
    Ok(match r.status {
        200 => Attempt::Done(r.json()?),
        421 => match leader_from_421(r.header("x-hale-leader"), &r.body) {
            Some(l) => Attempt::Redirect(l),
            None => Attempt::Transient(
                format!("{target} does not lead and knows no leader yet: {}", why()),
                false,
            ),
        },
        s if transient_status(s) => Attempt::Transient(format!("{target} answered HTTP {s}: {}", why()), false),
        // openraft takes one membership change at a time: the one before is still committing.
        409 if why().contains("undergoing a configuration change") => {
            Attempt::Transient(format!("{target}: {}", why()), false)
        }
        s => bail!("{target} refused {path}: HTTP {s}: {}", why()),
    })
}

/// POST a membership change to the leader and return its answer and the
/// leader's URL. A node that does not lead answers 421 naming the leader: the
/// change is sent there. No leader, no quorum, a change still committing, a
/// timeout or a node that cannot be reached are retried with backoff until
/// `deadline`; when a node cannot be reached, the next of `urls` is asked.
/// Adding a learner and promoting are idempotent (adding a member again or
/// promoting a voter again leaves the membership as it is), so a retry after
/// an unanswered attempt is safe; a retried removal that had in fact
/// committed is refused with "node N is not a member".
pub async fn change(
    urls: &[String],
    token: Option<&str>,
    path: &str,
    body: &Value,
    deadline: Instant,
) -> Result<(Value, String)> {
    let mut target = urls.first().context("no node URL to send the change to")?.clone();
    let mut next_url = 1;
    let mut backoff = Backoff::new(CHANGE_RETRY_WAIT_FIRST, CHANGE_RETRY_WAIT_MAX, deadline);
    let mut redirected = false;
    loop {
        let why = match attempt_change(&target, token, path, body).await? {
            Attempt::Done(v) => return Ok((v, target)),
            Attempt::Redirect(leader) if leader != target && !redirected => {
                eprintln!("{target} does not lead; sending {path} to the leader at {leader}");
                target = leader;
                // Follow at once once; a leader that keeps moving is waited for.
                redirected = true;
                continue;
            }
            Attempt::Redirect(leader) => {
                let why = format!("{target} does not lead; the leader is {leader}");
                target = leader;
                why
            }
            Attempt::Transient(why, unreachable) => {
                if unreachable && urls.len() > 1 {
                    target = urls[next_url % urls.len()].clone();
                    next_url += 1;
                }
                why
            }
        };
        redirected = false;
        let Some(wait) = backoff.next_wait() else {
            bail!("gave up on {path} after {} attempts: {why}", backoff.retries() + 1);
        };
        eprintln!("{path}: {why}; retrying in {:.1} s", wait.as_secs_f64());
        tokio::time::sleep(wait).await;
    }
}

/// The diagnostics of an OperationOutcome body, or the body as text.
pub fn outcome_text(body: &[u8]) -> String {
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
    let urls = [a.url.clone()];
    let deadline = Instant::now() + CLI_CHANGE_DEADLINE;
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
            change(&urls, token, "/cluster/learners", &body, deadline).await?;
            println!("node {node_id} ({site}) added as a learner; it catches up in the background");
        }
        ClusterCmd::Promote { node_id } => {
            change(
                &urls,
                token,
                "/cluster/promote",
                &json!({ "node_id": node_id }),
                deadline,
            )
            .await?;
            println!("node {node_id} is now a voter");
        }
        ClusterCmd::Remove { node_id } => {
            change(
                &urls,
                token,
                "/cluster/remove",
                &json!({ "node_id": node_id }),
                deadline,
            )
            .await?;
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
        "{:>4}  {:<8} {:<11} {:<10} {:>5} {:>9} {:>7} {:>11} {:>10}  {}\n",
        "node", "role", "site", "state", "term", "applied", "lag", "last heard", "elections", "api"
    ));
    for m in s["members"].as_array().into_iter().flatten() {
        let opt = |v: &Value| v.as_u64().map(|x| x.to_string()).unwrap_or_else(|| "-".into());
        let heard = m["last_heard_ms"]
            .as_u64()
            .map(|ms| format!("{ms} ms ago"))
            .unwrap_or_else(|| "never".into());
        // started / pre-votes lost / leaderships lost while running
        let e = &m["elections"];
        let elections = if e.is_object() {
            format!(
                "{}/{}/{}",
                opt(&e["elections_started"]),
                opt(&e["prevotes_lost"]),
                opt(&e["leaderships_lost"])
            )
        } else {
            "-".into()
        };
        out.push_str(&format!(
            "{:>4}  {:<8} {:<11} {:<10} {:>5} {:>9} {:>7} {:>11} {:>10}  {}\n",
            m["id"].as_u64().unwrap_or(0),
            m["role"].as_str().unwrap_or("?"),
            m["site"].as_str().unwrap_or("?"),
            m["state"].as_str().unwrap_or("unreachable"),
            opt(&m["term"]),
            opt(&m["applied_index"]),
            opt(&m["lag_entries"]),
            heard,
            elections,
            m["api_url"].as_str().unwrap_or("?"),
        ));
    }
    out.push_str(
        "elections: started after a won pre-vote / pre-votes lost (campaigns avoided) / leaderships lost while running\n",
    );
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
    /// Let the nodes take injected faults on their raft port (`POST /raft/fault`,
    /// e.g. `{"isolated": true}` to cut a site off), for drills and demos.
    /// Only a test build has it (`cargo build -p hale --features fault-injection`).
    #[arg(long)]
    fault_injection: bool,
    /// Raft RPC in plain HTTP. By default the nodes talk mutual TLS, with a CA
    /// and node certificates `hale up` creates in DATA/certs.
    #[arg(long)]
    insecure_raft: bool,
    /// Emulate these links between the nodes.
    #[command(flatten)]
    link: crate::link_args::LinkArgs,
}

pub async fn up(a: UpArgs) -> Result<()> {
    let spec = Spec {
        voters: a.nodes,
        learners: a.learners,
        data: a.data.clone(),
        fault_injection: a.fault_injection,
        mtls: !a.insecure_raft,
        // Web UI accounts have no site of their own: on every node of a demo
        // cluster they work at the demo site, like the demo clinician's token.
        extra_toml: format!(
            "{}\n[access]\nsite = \"{}\"\n",
            a.link.cluster_toml(),
            hale_server::config::DEMO_SITE
        ),
        demo_patients: a.demo_patients,
        // HALE_LOG or RUST_LOG of this shell, else the nodes' default (no openraft INFO).
        log: crate::log_filter_directives(std::env::var("HALE_LOG").ok(), std::env::var("RUST_LOG").ok()),
    };
    eprintln!(
        "starting {} voters and {} learners under {} ({}) ...",
        a.nodes,
        a.learners,
        a.data.display(),
        a.link.describe()
    );
    let mut cluster = LocalCluster::new(spec)?;
    let booted = tokio::select! {
        r = cluster.boot() => r.map_err(Some),
        _ = tokio::signal::ctrl_c() => Err(None),
    };
    if let Err(failure) = booted {
        let started = cluster.procs.iter().filter(|p| p.running()).count();
        eprintln!("stopping the {started} node(s) started ...");
        cluster.stop_all().await;
        let dir = a.data.display();
        match failure {
            None => bail!(
                "hale up was interrupted (Ctrl-C) while the cluster was forming. Every node it started has been stopped; \
                 their data and logs are in {dir}. Run the same command again to carry on, or delete {dir} to start a new cluster."
            ),
            Some(e) => bail!(
                "hale up could not bring the cluster up: {e:#}. Every node it started has been stopped; their data and logs are in {dir} (node-N.log). \
                 On a slow or busy machine an election or a catch-up can take longer than hale up waits: run the same command again \
                 (it reuses {dir} and carries on where it stopped), or delete {dir} to start a new cluster."
            ),
        }
    }
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
    if a.demo_patients > 0 {
        println!(
            "\nNode 1 loads the demo health board ({} patients) in the background; {first}/readyz answers 200 when it is done.",
            a.demo_patients
        );
    }
    println!("\nTry:  hale cluster status --url {first} --token {ADMIN_TOKEN}");
    println!("      kill -9 the leader's process and watch another node take over.");
    println!("Ctrl-C stops every node.");
    // Supervise the nodes until Ctrl-C: one that exits for a restart drill
    // (`hale drill voter-restart`) is started again.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                for id in cluster.supervise() {
                    eprintln!("node {id} exited to restart (a drill); started it again");
                }
            }
        }
    }
    eprintln!("stopping ...");
    cluster.stop_all().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn the_status_table_shows_terms_and_election_counters() {
        let s = json!({"leader": 1, "term": 4, "answered_by": 1, "members": [
            {"id": 1, "role": "voter", "site": "dc-east", "state": "leader", "term": 4, "applied_index": 90,
             "lag_entries": 0, "last_heard_ms": 0, "api_url": "http://a",
             "elections": {"prevotes_started": 3, "prevotes_lost": 2, "elections_started": 1, "leaderships_lost": 0}},
            {"id": 2, "role": "voter", "site": "dc-west", "api_url": "http://b"}
        ]});
        let t = status_table(&s);
        let row1 = t
            .lines()
            .find(|l| l.trim_start().starts_with("1 "))
            .expect("row of node 1");
        assert!(row1.contains(" 4 ") && row1.contains("1/2/0"), "{t}");
        let row2 = t
            .lines()
            .find(|l| l.trim_start().starts_with("2 "))
            .expect("row of node 2");
        assert!(row2.contains("unreachable") && row2.contains(" - "), "{t}");
    }

    #[test]
    fn the_leader_is_read_from_the_header_or_else_from_the_outcome() {
        let body = json!({"resourceType": "OperationOutcome", "issue": [{
            "severity": "error", "code": "processing",
            "diagnostics": "node 2 leads the cluster; send membership changes to it (http://127.0.0.1:8082)"
        }]})
        .to_string();
        assert_eq!(
            leader_from_421(Some("http://127.0.0.1:9000/"), body.as_bytes()).as_deref(),
            Some("http://127.0.0.1:9000")
        );
        assert_eq!(
            leader_from_421(None, body.as_bytes()).as_deref(),
            Some("http://127.0.0.1:8082")
        );
        assert_eq!(
            leader_from_421(Some(""), body.as_bytes()).as_deref(),
            Some("http://127.0.0.1:8082")
        );
        assert_eq!(leader_from_421(None, b"no leader known"), None);
    }

    /// A one-connection-per-request HTTP server on loopback that answers the
    /// `n`th request with `replies[n]` (the last one repeats) and records the requests.
    async fn scripted(replies: Vec<String>) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                let Ok((mut s, _)) = l.accept().await else { return };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read the head, then as much body as Content-Length says.
                let (head_end, want) = loop {
                    let k = s.read(&mut chunk).await.unwrap_or(0);
                    if k == 0 {
                        break (buf.len(), 0);
                    }
                    buf.extend_from_slice(&chunk[..k]);
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..p]).to_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (p + 4, len);
                    }
                };
                while buf.len() < head_end + want {
                    let k = s.read(&mut chunk).await.unwrap_or(0);
                    if k == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..k]);
                }
                let text = String::from_utf8_lossy(&buf);
                let line = text.lines().next().unwrap_or("").to_string();
                let body = text[head_end.min(text.len())..].to_string();
                log.lock().unwrap().push(format!("{line} {body}"));
                let reply = &replies[n.min(replies.len() - 1)];
                n += 1;
                let _ = s.write_all(reply.as_bytes()).await;
                let _ = s.shutdown().await;
            }
        });
        (url, seen)
    }

    fn http(status: &str, headers: &[(&str, &str)], body: &str) -> String {
        let mut r = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n",
            body.len()
        );
        for (k, v) in headers {
            r.push_str(&format!("{k}: {v}\r\n"));
        }
        r.push_str("\r\n");
        r.push_str(body);
        r
    }

    fn outcome(diagnostics: &str) -> String {
        json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "processing", "diagnostics": diagnostics}]})
            .to_string()
    }

    #[tokio::test]
    async fn a_change_follows_the_leader_named_by_a_421_and_retries_a_503() {
        let (leader, at_leader) = scripted(vec![
            http(
                "503 Service Unavailable",
                &[],
                &outcome("the cluster has no leader now; retry in a moment"),
            ),
            http("200 OK", &[], r#"{"voter": 2}"#),
        ])
        .await;
        // The 421 names the leader in its text only (no X-Hale-Leader header).
        let (follower, at_follower) = scripted(vec![http(
            "421 Misdirected Request",
            &[],
            &outcome(&format!(
                "node 2 leads the cluster; send membership changes to it ({leader})"
            )),
        )])
        .await;
        let deadline = Instant::now() + Duration::from_secs(120);
        let (reply, accepted_by) = change(
            std::slice::from_ref(&follower),
            Some("t"),
            "/cluster/promote",
            &json!({"node_id": 2}),
            deadline,
        )
        .await
        .expect("the change is accepted by the leader");
        assert_eq!(reply, json!({"voter": 2}));
        assert_eq!(accepted_by, leader);
        assert_eq!(at_follower.lock().unwrap().len(), 1, "asked the follower once");
        let at_leader = at_leader.lock().unwrap().clone();
        assert_eq!(at_leader.len(), 2, "the 503 was retried: {at_leader:?}");
        for r in &at_leader {
            assert!(
                r.starts_with("POST /cluster/promote") && r.ends_with(r#"{"node_id":2}"#),
                "{r}"
            );
        }
    }

    #[tokio::test]
    async fn a_change_refused_for_a_reason_retrying_cannot_change_fails_at_once() {
        let (url, seen) = scripted(vec![http("409 Conflict", &[], &outcome("node 9 is not a member"))]).await;
        let deadline = Instant::now() + Duration::from_secs(120);
        let e = change(&[url], None, "/cluster/remove", &json!({"node_id": 9}), deadline)
            .await
            .expect_err("a 409 is final");
        assert!(format!("{e:#}").contains("node 9 is not a member"), "{e:#}");
        assert_eq!(seen.lock().unwrap().len(), 1);
    }
}
