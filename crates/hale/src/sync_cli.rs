//! `hale sync status|verify|journal`: a node's site journal as its operators see it.

use crate::cluster_cli::outcome_text;
use crate::http::Client;
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use serde_json::Value;

#[derive(Args)]
pub struct SyncArgs {
    /// API URL of the node whose journal to look at (a site replica, usually).
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "HALE_URL", global = true)]
    url: String,
    /// Admin bearer token.
    #[arg(long, env = "HALE_TOKEN", global = true)]
    token: Option<String>,
    /// Print the raw JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: SyncCmd,
}

#[derive(Subcommand)]
enum SyncCmd {
    /// Pending writes, oldest pending age, drained, open conflict tasks, chain head.
    Status,
    /// Compare the journal with the receipts the replicated store holds:
    /// missing, duplicate, unknown and the hash chain. Exits 1 on any problem.
    Verify,
    /// List journal entries, newest first.
    Journal {
        /// pending, committed or task.
        #[arg(long)]
        status: Option<String>,
        /// Only this patient's entries (an id).
        #[arg(long)]
        patient: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

async fn get(url: &str, token: Option<&str>, path: &str) -> Result<Value> {
    let mut c = Client::new(url, token)?;
    let r = c.send("GET", path, None).await?;
    if r.status != 200 {
        bail!("GET {path} refused: HTTP {}: {}", r.status, outcome_text(&r.body));
    }
    r.json()
}

pub async fn run(a: SyncArgs) -> Result<()> {
    let token = a.token.as_deref();
    match a.cmd {
        SyncCmd::Status => {
            let s = get(&a.url, token, "/sync/status").await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&s)?);
                return Ok(());
            }
            println!("node {} at {}", s["node"], s["site"].as_str().unwrap_or("?"));
            match s["cutOff"].as_str() {
                Some(why) => println!("cut off:        yes ({why})"),
                None => println!("cut off:        no"),
            }
            println!("pending:        {} ({} bytes)", s["pending"], s["pendingBytes"]);
            if let Some(age) = s["oldestPendingAgeMs"].as_i64() {
                println!("oldest pending: {:.1} s", age as f64 / 1000.0);
            }
            println!(
                "drained:        {} ({} committed, {} became tasks, {} refused)",
                s["drained"], s["committed"], s["tasks"], s["refused"]
            );
            println!(
                "chain head:     {} {}",
                s["chainHead"]["seq"],
                s["chainHead"]["hash"].as_str().unwrap_or("")
            );
            println!("committed head: {}", s["committedHead"]["seq"]);
            let open = s["openTasks"].as_object().cloned().unwrap_or_default();
            if open.is_empty() {
                println!("open conflict tasks: none");
            } else {
                println!("open conflict tasks:");
                for (k, n) in open {
                    println!("  {k:20} {n}");
                }
            }
        }
        SyncCmd::Verify => {
            let v = get(&a.url, token, "/sync/verify").await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let missing = v["missing"].as_array().map(Vec::len).unwrap_or(0);
                let unknown = v["unknown"].as_array().map(Vec::len).unwrap_or(0);
                let mismatched = v["mismatched"].as_array().map(Vec::len).unwrap_or(0);
                println!(
                    "node {}: {} entries, {} receipts, {} pending",
                    v["node"], v["entries"], v["receipts"], v["pending"]
                );
                println!("missing:    {missing} {}", list(&v["missing"]));
                println!("duplicate:  {}", v["duplicate"]);
                println!("unknown:    {unknown} {}", list(&v["unknown"]));
                println!("mismatched: {mismatched} {}", list(&v["mismatched"]));
                match v["chainBrokenAt"].as_u64() {
                    Some(seq) => println!("chain:      BROKEN at entry {seq}"),
                    None => println!("chain:      ok"),
                }
            }
            let bad = v["missing"].as_array().is_some_and(|a| !a.is_empty())
                || v["unknown"].as_array().is_some_and(|a| !a.is_empty())
                || v["mismatched"].as_array().is_some_and(|a| !a.is_empty())
                || v["duplicate"].as_u64().unwrap_or(0) > 0
                || v["chainOk"] != true;
            if bad {
                bail!("the journal and the replicated receipts disagree (see above)");
            }
        }
        SyncCmd::Journal { status, patient, limit } => {
            let mut q = form_urlencoded::Serializer::new(String::new());
            if let Some(s) = &status {
                q.append_pair("status", s);
            }
            if let Some(p) = &patient {
                q.append_pair("patient", p);
            }
            q.append_pair("limit", &limit.to_string());
            let j = get(&a.url, token, &format!("/sync/journal?{}", q.finish())).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&j)?);
                return Ok(());
            }
            println!(
                "{:>6}  {:9}  {:12}  {:40}  {:10}  outcome",
                "seq", "status", "policy", "resource", "user"
            );
            for e in j["entries"].as_array().into_iter().flatten() {
                let outcome = match e["outcome"]["outcome"].as_str() {
                    Some("task") => format!(
                        "Task/{} ({})",
                        e["outcome"]["task"].as_str().unwrap_or("?"),
                        e["outcome"]["kind"].as_str().unwrap_or("?")
                    ),
                    Some(o) => o.to_string(),
                    None => String::new(),
                };
                println!(
                    "{:>6}  {:9}  {:12}  {:40}  {:10}  {outcome}",
                    e["seq"],
                    e["status"].as_str().unwrap_or(""),
                    e["policy"].as_str().unwrap_or(""),
                    format!(
                        "{}/{}",
                        e["rtype"].as_str().unwrap_or(""),
                        e["id"].as_str().unwrap_or("")
                    ),
                    e["user"].as_str().unwrap_or(""),
                );
            }
        }
    }
    Ok(())
}

fn list(v: &Value) -> String {
    let a = v.as_array().cloned().unwrap_or_default();
    if a.is_empty() {
        return String::new();
    }
    let shown: Vec<String> = a.iter().take(20).map(|x| x.to_string()).collect();
    format!("({}{})", shown.join(", "), if a.len() > 20 { ", ..." } else { "" })
}
