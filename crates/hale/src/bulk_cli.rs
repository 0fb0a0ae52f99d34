//! `hale export --url`: a FHIR Bulk Data client. It kicks off `$export` on a
//! running server, polls the status URL as the server asks (`Retry-After`),
//! downloads every file of the manifest into a directory, checks each file
//! holds as many resources as the manifest says, and removes the job from the
//! server. What it writes is what `hale import` reads.

use crate::cluster_cli::outcome_text;
use crate::http::{transient_status, transport_failure, Client};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// Bound on one request (kick-off, poll, delete); a file download has none.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest wait between polls, whatever the server asks.
const POLL_WAIT_MAX: Duration = Duration::from_secs(30);
/// How long an export may run before the client gives up on it.
const EXPORT_DEADLINE: Duration = Duration::from_secs(6 * 3600);
/// Transient failures (503, a dropped connection) tolerated in a row while polling.
const POLL_FAILURES_MAX: u32 = 10;

/// Which export to start.
pub struct ExportRequest<'a> {
    pub url: &'a str,
    pub token: Option<&'a str>,
    pub types: &'a [String],
    pub since: Option<&'a str>,
    /// `Patient/$export` rather than the system-level `$export`.
    pub patients: bool,
    pub group: Option<&'a str>,
}

/// `http://host:port/path` -> (`http://host:port`, `/path`).
fn split_url(url: &str) -> Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("the server gave a URL that does not start with http://: {url}"))?;
    Ok(match rest.split_once('/') {
        Some((authority, path)) => (format!("http://{authority}"), format!("/{path}")),
        None => (url.to_string(), "/".to_string()),
    })
}

pub async fn run(req: &ExportRequest<'_>, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let started = Instant::now();
    let mut query = form_urlencoded::Serializer::new(String::new());
    if !req.types.is_empty() {
        query.append_pair("_type", &req.types.join(","));
    }
    if let Some(s) = req.since {
        query.append_pair("_since", s);
    }
    let query = query.finish();
    let path = match (req.group, req.patients) {
        (Some(g), _) => format!("/Group/{g}/$export"),
        (None, true) => "/Patient/$export".to_string(),
        (None, false) => "/$export".to_string(),
    };
    let path = if query.is_empty() {
        path
    } else {
        format!("{path}?{query}")
    };
    let mut client = Client::new(req.url, req.token)?.with_timeout(REQUEST_TIMEOUT);
    let kick = client
        .send_with("GET", &path, None, &[("prefer", "respond-async")])
        .await
        .with_context(|| format!("cannot start the export at {}{path}", req.url))?;
    if kick.status != 202 {
        bail!(
            "{}{path} did not start an export (HTTP {}): {}",
            req.url,
            kick.status,
            outcome_text(&kick.body)
        );
    }
    let status_url = kick
        .header("content-location")
        .ok_or_else(|| anyhow!("the server accepted the export but gave no Content-Location to poll"))?
        .to_string();
    eprintln!("export started; polling {status_url}");
    let (status_base, status_path) = split_url(&status_url)?;
    let mut poller = Client::new(&status_base, req.token)?.with_timeout(REQUEST_TIMEOUT);
    let mut failures = 0;
    let mut last_progress = String::new();
    let manifest: Value = loop {
        if started.elapsed() > EXPORT_DEADLINE {
            bail!(
                "the export has run for {} h without finishing; its status is at {status_url}",
                EXPORT_DEADLINE.as_secs() / 3600
            );
        }
        let reply = match poller.send("GET", &status_path, None).await {
            Ok(r) if transient_status(r.status) => Err(anyhow!("HTTP {}: {}", r.status, outcome_text(&r.body))),
            Ok(r) => Ok(r),
            Err(e) if transport_failure(&e).is_some() => Err(e),
            Err(e) => return Err(e),
        };
        let reply = match reply {
            Ok(r) => {
                failures = 0;
                r
            }
            Err(e) => {
                failures += 1;
                if failures > POLL_FAILURES_MAX {
                    return Err(e.context(format!("cannot read the export's status at {status_url}")));
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        match reply.status {
            200 => break reply.json()?,
            202 => {
                if let Some(p) = reply.header("x-progress") {
                    if p != last_progress {
                        eprintln!("  {p}");
                        last_progress = p.to_string();
                    }
                }
                let wait = reply
                    .header("retry-after")
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .map(Duration::from_secs)
                    .unwrap_or(Duration::from_secs(1))
                    .clamp(Duration::from_millis(200), POLL_WAIT_MAX);
                tokio::time::sleep(wait).await;
            }
            s => bail!(
                "the export failed (HTTP {s} from {status_url}): {}",
                outcome_text(&reply.body)
            ),
        }
    };
    let outputs = manifest
        .get("output")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("the export manifest has no output list: {manifest}"))?;
    let needs_token = manifest
        .get("requiresAccessToken")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let mut total = 0u64;
    let mut bytes = 0u64;
    for o in outputs {
        let (Some(url), Some(rtype)) = (
            o.get("url").and_then(Value::as_str),
            o.get("type").and_then(Value::as_str),
        ) else {
            bail!("an output of the export manifest lacks url or type: {o}");
        };
        let name = url.rsplit('/').next().unwrap_or(rtype);
        if name.is_empty() || name.contains("..") || name.contains('\\') {
            bail!("the export manifest names a file this client will not write: {url}");
        }
        let (file_base, file_path) = split_url(url)?;
        let mut files = Client::new(&file_base, if needs_token { req.token } else { None })?;
        let dest = out.join(name);
        let (status, n_bytes, body) = files
            .download(&file_path, &dest, "application/fhir+ndjson")
            .await
            .with_context(|| format!("cannot download {url}"))?;
        if status != 200 {
            bail!("cannot download {url} (HTTP {status}): {}", outcome_text(&body));
        }
        let lines = count_lines(&dest)?;
        if let Some(expected) = o.get("count").and_then(Value::as_u64) {
            if lines != expected {
                bail!(
                    "{} holds {lines} resources but the manifest says {expected}: the download is incomplete",
                    dest.display()
                );
            }
        }
        println!("{lines:>9}  {rtype:<24} {}", dest.display());
        total += lines;
        bytes += n_bytes;
    }
    let secs = started.elapsed().as_secs_f64();
    let tx = manifest.get("transactionTime").and_then(Value::as_str).unwrap_or("?");
    println!(
        "{total:>9}  resources in {} files ({:.1} MB), as of {tx}, in {secs:.1} s: {:.0} resources/s",
        outputs.len(),
        bytes as f64 / 1e6,
        total as f64 / secs.max(1e-3)
    );
    // The files are here now: free the server's copy.
    match poller.send("DELETE", &status_path, None).await {
        Ok(r) if r.status == 202 || r.status == 404 => {}
        Ok(r) => eprintln!(
            "warning: could not remove the export from the server (HTTP {}): {}; it expires there in a day",
            r.status,
            outcome_text(&r.body)
        ),
        Err(e) => eprintln!("warning: could not remove the export from the server ({e:#}); it expires there in a day"),
    }
    Ok(())
}

fn count_lines(path: &Path) -> Result<u64> {
    use std::io::BufRead;
    let f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut n = 0;
    for line in std::io::BufReader::new(f).lines() {
        if !line?.trim().is_empty() {
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_server_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:8080/$export-status/ab").unwrap(),
            ("http://127.0.0.1:8080".to_string(), "/$export-status/ab".to_string())
        );
        assert_eq!(
            split_url("http://h/fhir/$export-file/a/Patient-1.ndjson").unwrap().1,
            "/fhir/$export-file/a/Patient-1.ndjson"
        );
        assert!(split_url("https://h/x").is_err());
    }
}
