//! `hale import`: read Bundles and NDJSON, send them to a running server as
//! batch Bundles, and say what was loaded and what was refused, and why.

use crate::http::Client;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Rejections printed in full; the rest are counted.
const REJECTIONS_SHOWN_MAX: usize = 50;
pub const BATCH_MAX: usize = 5_000;

#[derive(Default)]
struct Summary {
    loaded: BTreeMap<String, u64>,
    rejected: Vec<String>,
}

/// Resources of one file, each with where it came from (for messages). A
/// transaction Bundle comes back whole, wrapped as `{"__transaction": bundle}`.
fn read_file(path: &Path) -> Result<Vec<(String, Value)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let name = path.display().to_string();
    let trimmed = text.trim_start();
    let is_ndjson = path.extension().is_some_and(|e| e == "ndjson")
        || (trimmed.starts_with('{')
            && text.trim().lines().count() > 1
            && serde_json::from_str::<Value>(&text).is_err());
    let mut out = Vec::new();
    if is_ndjson {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Value>(line) {
                Ok(v) => out.push((format!("{name}:{}", i + 1), v)),
                Err(e) => out.push((format!("{name}:{}", i + 1), json!({"__invalid": e.to_string()}))),
            }
        }
        return Ok(out);
    }
    let v: Value = serde_json::from_str(&text).with_context(|| format!("{name} is not valid JSON"))?;
    if v.get("resourceType").and_then(Value::as_str) == Some("Bundle")
        && v.get("type").and_then(Value::as_str) == Some("transaction")
    {
        // All or nothing, with its own urn:uuid references: sent as it is.
        out.push((name, json!({ "__transaction": v })));
    } else if v.get("resourceType").and_then(Value::as_str) == Some("Bundle") {
        for (i, e) in v
            .get("entry")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            if let Some(r) = e.get("resource") {
                out.push((format!("{name} entry[{i}]"), r.clone()));
            }
        }
    } else {
        out.push((name, v));
    }
    Ok(out)
}

/// Send a transaction Bundle as it is; every entry is loaded or none is.
/// Returns the number of entries.
async fn import_transaction(client: &mut Client, s: &mut Summary, origin: &str, bundle: &Value) -> Result<u64> {
    let entries = bundle
        .get("entry")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let types: Vec<String> = entries
        .iter()
        .map(|e| {
            e.pointer("/resource/resourceType")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string()
        })
        .collect();
    let reply = client.send("POST", "/", Some(serde_json::to_vec(bundle)?)).await?;
    if reply.status == 200 {
        for t in types {
            *s.loaded.entry(t).or_default() += 1;
        }
    } else {
        let resp: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        // The entries are numbered as in the user's own file: keep the expressions.
        let why = describe_issues(resp.get("issue"), |x| x.to_string());
        s.rejected.push(format!(
            "{origin}: transaction of {} entries refused as a whole, HTTP {}: {}",
            entries.len(),
            reply.status,
            why
        ));
    }
    Ok(entries.len() as u64)
}

/// "diagnostics (at expression); ..." for an OperationOutcome's issues.
fn describe_issues(issues: Option<&Value>, path: impl Fn(&str) -> String) -> String {
    issues
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|i| {
            let d = i.get("diagnostics").and_then(Value::as_str).unwrap_or("");
            match i.pointer("/expression/0").and_then(Value::as_str) {
                Some(x) => format!("{d} (at {})", path(x)),
                None => d.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `Bundle.entry[7].resource.identifier[0]` -> `Patient.identifier[0]`.
fn resource_path(rt: &str, expression: &str) -> String {
    match expression
        .strip_prefix("Bundle.entry[")
        .and_then(|x| x.split_once("].resource"))
    {
        Some((_, tail)) => format!("{rt}{tail}"),
        None => expression.to_string(),
    }
}

pub async fn run(files: &[PathBuf], url: &str, token: Option<&str>, batch: usize) -> Result<()> {
    if batch == 0 || batch > BATCH_MAX {
        bail!("--batch must be between 1 and {BATCH_MAX}");
    }
    let mut all = Vec::new();
    for f in files {
        all.extend(read_file(f)?);
    }
    let mut client = Client::new(url, token)?;
    let bar = indicatif::ProgressBar::new(all.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} resources {per_sec} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut s = Summary::default();
    let mut pending: Vec<(String, Value)> = Vec::new();
    let mut units = all.into_iter().peekable();
    while units.peek().is_some() {
        // Gather up to `batch` plain resources, stopping before a transaction.
        while pending.len() < batch && units.peek().is_some_and(|(_, v)| v.get("__transaction").is_none()) {
            pending.extend(units.next());
        }
        if pending.is_empty() {
            if let Some((origin, v)) = units.next() {
                let n = import_transaction(&mut client, &mut s, &origin, &v["__transaction"]).await?;
                bar.inc(n);
            }
            continue;
        }
        let chunk = std::mem::take(&mut pending);
        let chunk = chunk.as_slice();
        let mut entries = Vec::new();
        let mut origins = Vec::new();
        for (origin, r) in chunk {
            if let Some(e) = r.get("__invalid") {
                s.rejected
                    .push(format!("{origin}: not valid JSON: {}", e.as_str().unwrap_or("")));
                continue;
            }
            let Some(rt) = r.get("resourceType").and_then(Value::as_str) else {
                let what = if r.is_object() {
                    "a JSON object without a resourceType"
                } else {
                    "not a JSON object"
                };
                s.rejected.push(format!("{origin}: not a FHIR resource: {what}"));
                continue;
            };
            let request = match r.get("id").and_then(Value::as_str) {
                Some(id) => json!({"method": "PUT", "url": format!("{rt}/{id}")}),
                None => json!({"method": "POST", "url": rt}),
            };
            entries.push(json!({"resource": r, "request": request}));
            origins.push((origin.clone(), rt.to_string()));
        }
        if !entries.is_empty() {
            let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": entries});
            let reply = client.send("POST", "/", Some(serde_json::to_vec(&bundle)?)).await?;
            if reply.status != 200 {
                bail!(
                    "the server refused a batch with HTTP {}: {}",
                    reply.status,
                    String::from_utf8_lossy(&reply.body)
                );
            }
            let resp: Value = serde_json::from_slice(&reply.body)?;
            let resp_entries = resp.get("entry").and_then(Value::as_array).cloned().unwrap_or_default();
            for ((origin, rt), e) in origins.iter().zip(resp_entries) {
                let status = e.pointer("/response/status").and_then(Value::as_str).unwrap_or("");
                if status.starts_with('2') {
                    *s.loaded.entry(rt.clone()).or_default() += 1;
                } else {
                    // The server numbers the entries of the batch this command built;
                    // the user knows the resource by its place in their own file.
                    let why = describe_issues(e.pointer("/response/outcome/issue"), |x| resource_path(rt, x));
                    s.rejected.push(format!("{origin} ({rt}): HTTP {status}: {why}"));
                }
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let loaded: u64 = s.loaded.values().sum();
    println!("Loaded {loaded} resource(s):");
    for (t, n) in &s.loaded {
        println!("  {n:>8}  {t}");
    }
    println!("Rejected {} resource(s).", s.rejected.len());
    for r in s.rejected.iter().take(REJECTIONS_SHOWN_MAX) {
        println!("  {r}");
    }
    if s.rejected.len() > REJECTIONS_SHOWN_MAX {
        println!("  ... and {} more", s.rejected.len() - REJECTIONS_SHOWN_MAX);
    }
    Ok(())
}
