//! Load in request classes, for measuring admission control (`hale bench
//! admission`, hale-server `tests/admission.rs`).
//!
//! [`capacity`] finds the rate a server serves (closed loop: every connection
//! sends its next request when the last one answers). [`run_mix`] then offers
//! an open-loop rate, split between classes by weight: requests are due at
//! fixed intervals whatever the server does, so an overloaded server is not
//! spared by a slow client. Each class has its own token and connections; a
//! request due while all of its class's connections are busy and as many
//! again are waiting is counted `not_sent` (the client, not the server, was
//! the limit). Latency is measured from when a request was due, so waiting for a
//! connection counts.

use crate::client::{Client, Failure, Target};
use crate::hist::Histogram;
use crate::{BenchError, Latency};
use hyper::Method;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bound on one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections per class.
pub const CONNECTIONS_MAX: usize = 256;

/// One class's share of the offered load.
#[derive(Debug, Clone)]
pub struct ClassLoad {
    /// A label for the report (the server's class name, say).
    pub name: String,
    /// Its bearer token (the server classifies by it).
    pub token: Option<String>,
    /// GET paths, used in turn (relative to the base URL).
    pub paths: Vec<String>,
    /// Its share of the offered rate (weights are normalised).
    pub weight: f64,
    /// Its connections (each one request at a time).
    pub connections: usize,
}

/// What one class got.
#[derive(Debug, Clone, Default)]
pub struct ClassFigures {
    pub name: String,
    /// Requests due in the run.
    pub offered: u64,
    /// Due while the class's connections were all busy: never sent.
    pub not_sent: u64,
    /// 2xx answers.
    pub ok: u64,
    /// 503s with `Retry-After` and an OperationOutcome: shed by admission control.
    pub shed: u64,
    /// Anything else (other statuses, 503s without Retry-After, transport failures, timeouts).
    pub errors: u64,
    /// `errors` by status ("transport", "timeout" for failures).
    pub error_kinds: BTreeMap<String, u64>,
    /// Latency of the 2xx answers, from when each was due.
    pub latency: Latency,
    /// Latency of the shed answers.
    pub shed_latency: Latency,
    /// The first shed answer: its Retry-After and diagnostics.
    pub shed_example: Option<(String, String)>,
}

impl ClassFigures {
    /// Requests that got an answer per second of the run.
    pub fn ok_per_s(&self, duration: Duration) -> f64 {
        self.ok as f64 / duration.as_secs_f64().max(1e-9)
    }
}

#[derive(Default)]
struct Tally {
    offered: u64,
    not_sent: u64,
    ok: u64,
    shed: u64,
    errors: u64,
    error_kinds: BTreeMap<String, u64>,
    latency: Histogram,
    shed_latency: Histogram,
    shed_example: Option<(String, String)>,
}

/// Cheaply: an OperationOutcome (every 503 is not parsed, so the client stays light).
fn is_outcome(body: &[u8]) -> bool {
    body.windows(br#""OperationOutcome""#.len())
        .take(64)
        .any(|w| w == br#""OperationOutcome""#)
}

fn diagnostics(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    if v["resourceType"] != "OperationOutcome" {
        return None;
    }
    v["issue"][0]["diagnostics"].as_str().map(str::to_string)
}

fn validate(base_url: &str, classes: &[ClassLoad]) -> Result<(), BenchError> {
    let bad = |m: String| Err(BenchError::InvalidOption { message: m });
    if classes.is_empty() {
        return bad("give at least one class of load".into());
    }
    for c in classes {
        if c.paths.is_empty() {
            return bad(format!("class {} has no paths to request", c.name));
        }
        if !(1..=CONNECTIONS_MAX).contains(&c.connections) {
            return bad(format!(
                "class {} has {} connections; give 1-{CONNECTIONS_MAX}",
                c.name, c.connections
            ));
        }
        if !(c.weight.is_finite() && c.weight >= 0.0) {
            return bad(format!("class {} has weight {}; give a number >= 0", c.name, c.weight));
        }
    }
    if classes.iter().map(|c| c.weight).sum::<f64>() <= 0.0 {
        return bad("the classes' weights add up to 0".into());
    }
    let _ = base_url;
    Ok(())
}

/// The rate (2xx answers per second) `connections` closed-loop connections get
/// from `paths` with `token`, over `duration` after `warmup`.
pub async fn capacity(
    base_url: &str,
    ca_pem: Option<&[u8]>,
    token: Option<&str>,
    paths: &[String],
    connections: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<f64, BenchError> {
    if paths.is_empty() || !(1..=CONNECTIONS_MAX).contains(&connections) {
        return Err(BenchError::InvalidOption {
            message: format!("capacity needs paths and 1-{CONNECTIONS_MAX} connections"),
        });
    }
    let target = Arc::new(Target::parse(base_url, token, ca_pem)?);
    let start = Instant::now();
    let (from, to) = (start + warmup, start + warmup + duration);
    let mut tasks = Vec::new();
    for i in 0..connections {
        let target = target.clone();
        let paths = paths.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::new(target.clone());
            let (mut ok, mut other) = (0u64, 0u64);
            let mut n = i;
            loop {
                let now = Instant::now();
                if now >= to {
                    break;
                }
                let r = c
                    .send(
                        Method::GET,
                        &target.path(&paths[n % paths.len()]),
                        None,
                        REQUEST_TIMEOUT,
                    )
                    .await;
                n += 1;
                let done = Instant::now();
                if done >= from && done < to {
                    match r {
                        Ok(r) if (200..300).contains(&r.status) => ok += 1,
                        _ => other += 1,
                    }
                }
            }
            (ok, other)
        }));
    }
    let (mut ok, mut other) = (0, 0);
    for t in tasks {
        let (o, e) = t.await.map_err(|e| BenchError::InvalidOption {
            message: format!("a load task failed: {e}"),
        })?;
        ok += o;
        other += e;
    }
    if ok == 0 {
        return Err(BenchError::InvalidOption {
            message: format!(
                "no request succeeded while measuring capacity ({other} failed); check the token and paths"
            ),
        });
    }
    Ok(ok as f64 / duration.as_secs_f64())
}

/// Offer `rate_per_s` requests a second for `duration`, split between
/// `classes` by weight (deterministically: smooth weighted round robin), and
/// report what each class got.
pub async fn run_mix(
    base_url: &str,
    ca_pem: Option<&[u8]>,
    classes: &[ClassLoad],
    rate_per_s: f64,
    duration: Duration,
) -> Result<Vec<ClassFigures>, BenchError> {
    validate(base_url, classes)?;
    if !(rate_per_s.is_finite() && rate_per_s > 0.0) {
        return Err(BenchError::InvalidOption {
            message: format!("the offered rate must be above 0, not {rate_per_s}"),
        });
    }
    let tallies: Vec<Arc<Mutex<Tally>>> = classes.iter().map(|_| Arc::default()).collect();
    let mut senders = Vec::new();
    let mut workers = Vec::new();
    for (c, tally) in classes.iter().zip(&tallies) {
        let target = Arc::new(Target::parse(base_url, c.token.as_deref(), ca_pem)?);
        // Up to one waiting request per connection (the schedule runs in bursts
        // of a timer tick); more would be the client's queue, not the server's.
        let (tx, rx) = tokio::sync::mpsc::channel::<(Instant, usize)>(c.connections);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        senders.push(tx);
        for _ in 0..c.connections {
            let (rx, target, tally, paths) = (rx.clone(), target.clone(), tally.clone(), c.paths.clone());
            workers.push(tokio::spawn(async move {
                let mut client = Client::new(target.clone());
                let _ = client.connect(REQUEST_TIMEOUT).await;
                loop {
                    let job = { rx.lock().await.recv().await };
                    let Some((due, n)) = job else { break };
                    let r = client
                        .send(
                            Method::GET,
                            &target.path(&paths[n % paths.len()]),
                            None,
                            REQUEST_TIMEOUT,
                        )
                        .await;
                    let us = due.elapsed().as_micros() as u64;
                    let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                    match r {
                        Ok(r) if (200..300).contains(&r.status) => {
                            t.ok += 1;
                            t.latency.record_us(us);
                        }
                        Ok(r) if r.status == 503 && r.retry_after.is_some() && is_outcome(&r.body) => {
                            t.shed += 1;
                            t.shed_latency.record_us(us);
                            if t.shed_example.is_none() {
                                t.shed_example = Some((
                                    r.retry_after.clone().unwrap_or_default(),
                                    diagnostics(&r.body).unwrap_or_default(),
                                ));
                            }
                        }
                        Ok(r) => {
                            t.errors += 1;
                            *t.error_kinds.entry(r.status.to_string()).or_default() += 1;
                        }
                        Err(f) => {
                            t.errors += 1;
                            let kind = match f {
                                Failure::Timeout => "timeout",
                                Failure::Connect(_) => "connect",
                                Failure::Transport(_) => "transport",
                            };
                            *t.error_kinds.entry(kind.into()).or_default() += 1;
                        }
                    }
                }
            }));
        }
    }
    // The schedule: request i is due at start + i / rate; its class by smooth
    // weighted round robin (each class gets its share, evenly spread).
    let total: f64 = classes.iter().map(|c| c.weight).sum();
    let weights: Vec<f64> = classes.iter().map(|c| c.weight / total).collect();
    let mut credit = vec![0.0f64; classes.len()];
    let mut next_path = vec![0usize; classes.len()];
    let interval = Duration::from_secs_f64(1.0 / rate_per_s);
    let start = Instant::now();
    let end = start + duration;
    let mut i: u64 = 0;
    loop {
        let due = start + interval.mul_f64(i as f64);
        if due >= end {
            break;
        }
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        for (c, w) in credit.iter_mut().zip(&weights) {
            *c += w;
        }
        let k = credit
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(k, _)| k)
            .unwrap_or(0);
        credit[k] -= 1.0;
        let mut t = tallies[k].lock().unwrap_or_else(|e| e.into_inner());
        t.offered += 1;
        if senders[k].try_send((due, next_path[k])).is_err() {
            t.not_sent += 1;
        }
        next_path[k] += 1;
        i += 1;
    }
    drop(senders);
    for w in workers {
        let _ = w.await;
    }
    Ok(classes
        .iter()
        .zip(tallies)
        .map(|(c, t)| {
            let t = t.lock().unwrap_or_else(|e| e.into_inner());
            ClassFigures {
                name: c.name.clone(),
                offered: t.offered,
                not_sent: t.not_sent,
                ok: t.ok,
                shed: t.shed,
                errors: t.errors,
                error_kinds: t.error_kinds.clone(),
                latency: Latency::from_histogram(&t.latency),
                shed_latency: Latency::from_histogram(&t.shed_latency),
                shed_example: t.shed_example.clone(),
            }
        })
        .collect())
}

/// The figures as a table: one line per class.
pub fn table(title: &str, figures: &[ClassFigures], duration: Duration) -> String {
    let ms = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into());
    let mut out = format!(
        "{title}\n  {:<14} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9}\n",
        "class", "offered", "ok", "ok/s", "shed", "errors", "unsent", "p50 ms", "p99 ms", "max ms"
    );
    for f in figures {
        out.push_str(&format!(
            "  {:<14} {:>8} {:>8} {:>8.0} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9}\n",
            f.name,
            f.offered,
            f.ok,
            f.ok_per_s(duration),
            f.shed,
            f.errors,
            f.not_sent,
            ms(f.latency.p50_ms),
            ms(f.latency.p99_ms),
            ms(f.latency.max_ms),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked() {
        let c = |paths: Vec<String>, weight: f64, connections: usize| ClassLoad {
            name: "x".into(),
            token: None,
            paths,
            weight,
            connections,
        };
        let p = vec!["/Patient".to_string()];
        assert!(validate("http://127.0.0.1:1", &[]).is_err());
        assert!(validate("http://127.0.0.1:1", &[c(vec![], 1.0, 1)]).is_err());
        assert!(validate("http://127.0.0.1:1", &[c(p.clone(), 1.0, 0)]).is_err());
        assert!(validate("http://127.0.0.1:1", &[c(p.clone(), f64::NAN, 1)]).is_err());
        assert!(validate("http://127.0.0.1:1", &[c(p.clone(), 0.0, 1)]).is_err());
        assert!(validate("http://127.0.0.1:1", &[c(p, 1.0, 1)]).is_ok());
    }

    #[test]
    fn diagnostics_of_an_outcome_only() {
        let oo = br#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"transient","diagnostics":"class 4 shed"}]}"#;
        assert_eq!(diagnostics(oo).as_deref(), Some("class 4 shed"));
        assert!(is_outcome(oo));
        assert!(!is_outcome(br#"{"resourceType":"Bundle"}"#));
        assert_eq!(diagnostics(b"busy"), None);
        assert_eq!(diagnostics(br#"{"resourceType":"Patient"}"#), None);
    }
}
