//! `hale admit`: a node's admission levels (hale-server `admission.rs`), and
//! the operator's phased reopening after a failure: `--class N` admits
//! classes 1..=N, `--percent P` admits P% of the users of the lowest admitted
//! class (the same users every time), `--status` shows the levels.
//! Admission is per node: run it against each node that serves users.

use crate::cluster_cli::outcome_text;
use crate::http::Client;
use anyhow::{bail, Result};
use clap::Args;
use serde_json::{json, Value};

#[derive(Args)]
#[command(after_help = "Examples:
  hale admit --status --url http://10.0.0.5:8080 --token $ADMIN_TOKEN
  hale admit --class 1                  # after a failure: the most urgent class only
  hale admit --class 2 --percent 25     # then a quarter of class 2's users (the same ones each time)
  hale admit --percent 100              # then all of them
  hale admit --class 4                  # and so on, until every class is open")]
pub struct AdmitArgs {
    /// API URL of the node (admission is per node: set each node that serves users).
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "HALE_URL")]
    url: String,
    /// Admin (or service) bearer token.
    #[arg(long, env = "HALE_TOKEN")]
    token: Option<String>,
    /// Admit classes 1 to N only (class 1 is the most urgent); all of class N's users unless --percent.
    #[arg(long, value_name = "N")]
    class: Option<u32>,
    /// Admit P% (1-100) of the users of the lowest admitted class (with --class, of class N).
    #[arg(long, value_name = "P", value_parser = clap::value_parser!(u64).range(1..=100))]
    percent: Option<u64>,
    /// Show the levels, each class's state, in-flight and shed counts (what it does with no other flag).
    #[arg(long, conflicts_with_all = ["class", "percent"])]
    status: bool,
    /// Print the raw JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(a: AdmitArgs) -> Result<()> {
    let mut c = Client::new(&a.url, a.token.as_deref())?;
    let r = if a.class.is_none() && a.percent.is_none() {
        c.send("GET", "/ops/admit", None).await?
    } else {
        let mut body = serde_json::Map::new();
        if let Some(k) = a.class {
            body.insert("class".into(), json!(k));
        }
        if let Some(p) = a.percent {
            body.insert("percent".into(), json!(p));
        }
        c.send("POST", "/ops/admit", Some(Value::Object(body).to_string().into_bytes()))
            .await?
    };
    if r.status != 200 {
        let hint = match r.status {
            401 | 403 => "; pass an admin token with --token or HALE_TOKEN",
            404 => "; is this a Hale node new enough to have admission control?",
            _ => "",
        };
        bail!(
            "{} refused the admission request: HTTP {}: {}{hint}",
            a.url,
            r.status,
            outcome_text(&r.body)
        );
    }
    let s = r.json()?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", render(&a.url, &s));
    }
    Ok(())
}

fn classes_upto(k: u64) -> String {
    if k <= 1 {
        "class 1".into()
    } else {
        format!("classes 1-{k}")
    }
}

/// The levels as an operator reads them.
pub fn render(url: &str, s: &Value) -> String {
    let op = &s["operator"];
    let auto = &s["automatic"];
    let (op_class, op_pct) = (op["class"].as_u64().unwrap_or(0), op["percent"].as_u64().unwrap_or(100));
    let mut out = format!("{url}: the operator admits {}", classes_upto(op_class));
    if op_pct < 100 {
        out.push_str(&format!(" ({op_pct}% of class {op_class}'s users)"));
    }
    if let (Some(by), Some(at)) = (op["setBy"].as_str(), op["setAt"].as_str()) {
        out.push_str(&format!(", set by {by} at {at}"));
    }
    out.push('\n');
    let auto_class = auto["class"].as_u64().unwrap_or(0);
    match auto["latencyTargetMs"].as_u64() {
        Some(t) if t > 0 => out.push_str(&format!(
            "latency signal: admits {} (moving average {} ms, target {t} ms)\n",
            classes_upto(auto_class),
            auto["latencyEwmaMs"]
                .as_f64()
                .map(|v| format!("{v:.1}"))
                .unwrap_or_else(|| "-".into())
        )),
        _ => out.push_str("latency signal: off (no [admission] latency_target_ms)\n"),
    }
    out.push_str(&format!(
        "in flight: {} of {}\n",
        s["inflight"].as_u64().unwrap_or(0),
        s["inflightMax"].as_u64().unwrap_or(0)
    ));
    out.push_str(&format!(
        "  {:<5} {:<20} {:<8} {:>9} {:>8} {:>10} {:>9} {:>8} {:>8} {:>9}\n",
        "class", "name", "state", "in flight", "ceiling", "admitted", "operator", "percent", "latency", "inflight"
    ));
    for c in s["classes"].as_array().into_iter().flatten() {
        let n = |v: &Value| v.as_u64().unwrap_or(0);
        out.push_str(&format!(
            "  {:<5} {:<20} {:<8} {:>9} {:>8} {:>10} {:>9} {:>8} {:>8} {:>9}\n",
            n(&c["class"]),
            c["name"].as_str().unwrap_or(""),
            c["state"].as_str().unwrap_or(""),
            n(&c["inflight"]),
            n(&c["inflightCeiling"]),
            n(&c["admitted"]),
            n(&c["shed"]["operator"]),
            n(&c["shed"]["percent"]),
            n(&c["shed"]["latency"]),
            n(&c["shed"]["inflight"]),
        ));
    }
    out.push_str("  (operator, percent, latency, inflight: requests shed since start, by reason)\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_says_who_is_admitted() {
        let s = json!({
            "inflight": 3, "inflightMax": 64,
            "operator": {"class": 2, "percent": 25, "setBy": "admin.ada", "setAt": "2025-01-01T00:00:00Z"},
            "automatic": {"class": 4, "latencyTargetMs": 500, "latencyEwmaMs": 3.25},
            "admittedClass": 2,
            "classes": [
                {"class": 1, "name": "emergency", "state": "open", "inflight": 3, "inflightCeiling": 64, "admitted": 10,
                 "shed": {"operator": 0, "percent": 0, "latency": 0, "inflight": 0}},
                {"class": 2, "name": "wards", "state": "partial", "inflight": 0, "inflightCeiling": 48, "admitted": 5,
                 "shed": {"operator": 0, "percent": 7, "latency": 0, "inflight": 0}}
            ]
        });
        let text = render("http://n1", &s);
        assert!(
            text.contains("the operator admits classes 1-2 (25% of class 2's users), set by admin.ada"),
            "{text}"
        );
        assert!(
            text.contains("admits classes 1-4 (moving average 3.2 ms, target 500 ms)"),
            "{text}"
        );
        assert!(text.contains("wards"), "{text}");
        assert!(text.contains("partial"), "{text}");
    }
}
