//! `hale import`: read Bundles and NDJSON, send them to a running server as
//! batch Bundles, and say what was loaded and what was refused, and why.
//!
//! A batch the server cannot take now (503, 429, no answer, connection lost)
//! is sent again with backoff. Every entry is made safe to send twice where
//! it can be: a resource with an id is PUT at that id, one with an
//! identifier is a conditional create on it (`ifNoneExist`). A batch holding
//! a resource with neither is sent again only when the server cannot have
//! taken the first attempt. Progress is saved after each batch in a file in
//! the current directory, so running the same command again after a failure
//! carries on where it stopped.
//!
//! NDJSON files are read line by line as they are sent (an export of a
//! health board is never held in memory); Bundles are read whole. Files are
//! sent in an order that loads what records refer to first (organisations,
//! places and staff, then patients, then their records: an export's files
//! each hold one type), so a bulk export of another server loads under
//! referential integrity. A resource refused because
//! something it refers to is not there yet is held back and sent again after
//! the rest, until a round loads none of those still held back.

use crate::cluster_cli::outcome_text;
use crate::http::{transient_status, transport_failure, Backoff, Client, Delivery};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Rejections printed in full; the rest are counted.
const REJECTIONS_SHOWN_MAX: usize = 50;
pub const BATCH_MAX: usize = 5_000;
/// Bound on one batch request (the server answers 503 itself well before).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one batch may keep being retried before the import stops.
const BATCH_RETRY_DEADLINE: Duration = Duration::from_secs(300);
/// The same, before the server has answered anything in this run: a server
/// that cannot be reached at all is more likely a wrong --url than a restart.
const FIRST_CONTACT_DEADLINE: Duration = Duration::from_secs(15);
const RETRY_WAIT_FIRST: Duration = Duration::from_millis(500);
const RETRY_WAIT_MAX: Duration = Duration::from_secs(15);
/// Without a terminal, a progress line at most this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Rounds of sending held-back resources again.
const DEFER_ROUNDS_MAX: usize = 8;

/// The order plain resources are sent in: what others refer to comes first.
/// Types not listed come after the listed ones, in the order given.
const LOAD_ORDER: &[&str] = &[
    "Organization",
    "Location",
    "Endpoint",
    "HealthcareService",
    "Practitioner",
    "PractitionerRole",
    "Substance",
    "Medication",
    "Device",
    "Patient",
    "RelatedPerson",
    "Group",
    "Schedule",
    "Slot",
    "EpisodeOfCare",
    "ServiceRequest",
    "Appointment",
    "Encounter",
    "Condition",
    "CarePlan",
    "MedicationRequest",
    "Specimen",
    "Observation",
    "DiagnosticReport",
];

fn load_rank(rt: &str) -> usize {
    LOAD_ORDER.iter().position(|t| *t == rt).unwrap_or(LOAD_ORDER.len())
}

/// Files named on the command line, with each directory replaced by the
/// `.ndjson` and `.json` files in it, in name order.
fn expand_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("cannot list {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && f.extension().is_some_and(|e| e == "ndjson" || e == "json"))
                .collect();
            inside.sort();
            if inside.is_empty() {
                bail!("{} holds no .ndjson or .json files", p.display());
            }
            files.extend(inside);
        } else {
            files.push(p.clone());
        }
    }
    Ok(files)
}

/// Whether a batch entry is an Appointment refused because a slot it holds
/// is not free (409 at `Appointment.slot[n]`): as when a slot arrives from
/// another server's export already booked by the very appointment being loaded.
fn slot_taken(rt: &str, status: &str, entry: &Value) -> bool {
    rt == "Appointment"
        && status.starts_with("409")
        && entry
            .pointer("/response/outcome/issue")
            .and_then(Value::as_array)
            .is_some_and(|issues| {
                issues.iter().any(|i| {
                    i.pointer("/expression/0")
                        .and_then(Value::as_str)
                        .is_some_and(|x| resource_path(rt, x).starts_with("Appointment.slot"))
                })
            })
}

/// Load an Appointment whose slots arrived already busy: one transaction
/// marks each busy slot free (If-Match on the version read) and then writes
/// the appointment, so the server's booking rule marks the slots busy again
/// itself, and still refuses a slot that another appointment holds.
async fn load_booked(client: &mut Client, s: &mut Summary, origin: &str, appt: &Value, at: &Place) -> Result<()> {
    let mut entries = Vec::new();
    for slot in appt.get("slot").and_then(Value::as_array).into_iter().flatten() {
        let Some(id) = slot
            .get("reference")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("Slot/"))
        else {
            continue;
        };
        let reply = client.send("GET", &format!("/Slot/{id}"), None).await?;
        if reply.status != 200 {
            continue;
        }
        let mut current = reply.json()?;
        if current.get("status").and_then(Value::as_str) != Some("busy") {
            continue;
        }
        let version = current
            .pointer("/meta/versionId")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        current["status"] = json!("free");
        entries.push(json!({
            "resource": current,
            "request": {"method": "PUT", "url": format!("Slot/{id}"), "ifMatch": format!("W/\"{version}\"")}
        }));
    }
    let (request, _) = entry_request("Appointment", appt);
    entries.push(json!({"resource": appt, "request": request}));
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let reply = send_retrying(client, serde_json::to_vec(&bundle)?, true, at).await?;
    if reply.status == 200 {
        *s.loaded.entry("Appointment".into()).or_default() += 1;
    } else {
        let resp: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        let why = describe_issues(resp.get("issue"), |x| resource_path("Appointment", x));
        s.reject(format!("{origin} (Appointment): HTTP {}: {why}", reply.status));
    }
    Ok(())
}

/// Whether a batch entry was refused only because something it refers to
/// does not exist (yet): 422 with a `not-found` issue.
fn missing_reference(status: &str, entry: &Value) -> bool {
    status.starts_with("422")
        && entry
            .pointer("/response/outcome/issue")
            .and_then(Value::as_array)
            .is_some_and(|issues| {
                issues
                    .iter()
                    .any(|i| i.get("code").and_then(Value::as_str) == Some("not-found"))
            })
}

#[derive(Default)]
struct Summary {
    loaded: BTreeMap<String, u64>,
    /// Conditional creates that found the resource already there.
    existing: u64,
    /// The first [`REJECTIONS_SHOWN_MAX`] rejections, in full.
    rejected: Vec<String>,
    rejected_total: u64,
}

impl Summary {
    fn to_json(&self) -> Value {
        json!({"loaded": self.loaded, "existing": self.existing, "rejected": self.rejected, "rejected_total": self.rejected_total})
    }

    fn from_json(v: &Value) -> Option<Summary> {
        Some(Summary {
            loaded: v["loaded"]
                .as_object()?
                .iter()
                .map(|(k, n)| Some((k.clone(), n.as_u64()?)))
                .collect::<Option<_>>()?,
            existing: v["existing"].as_u64()?,
            rejected: v["rejected"]
                .as_array()?
                .iter()
                .map(|r| r.as_str().map(str::to_string))
                .collect::<Option<_>>()?,
            rejected_total: v["rejected_total"].as_u64()?,
        })
    }

    fn reject(&mut self, why: String) {
        self.rejected_total += 1;
        if self.rejected.len() < REJECTIONS_SHOWN_MAX {
            self.rejected.push(why);
        }
    }
}

/// Whether `path` is read line by line: `.ndjson` files are, so an export
/// of a whole health board is never held in memory.
fn streamed(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "ndjson")
}

/// One NDJSON line as a unit (an invalid line becomes `{"__invalid": why}`).
fn ndjson_unit(origin: String, line: &str) -> (String, Value) {
    match serde_json::from_str::<Value>(line) {
        Ok(v) => (origin, v),
        Err(e) => (origin, json!({"__invalid": e.to_string()})),
    }
}

/// The units of `files`, in order, read as they are asked for.
fn units(files: &[PathBuf]) -> impl Iterator<Item = Result<(String, Value)>> + '_ {
    use std::io::BufRead;
    files
        .iter()
        .flat_map(|f| -> Box<dyn Iterator<Item = Result<(String, Value)>>> {
            if !streamed(f) {
                return match read_file(f) {
                    Ok(v) => Box::new(v.into_iter().map(Ok)),
                    Err(e) => Box::new(std::iter::once(Err(e))),
                };
            }
            let name = f.display().to_string();
            match std::fs::File::open(f) {
                Err(e) => Box::new(std::iter::once(Err(
                    anyhow::Error::new(e).context(format!("cannot read {name}"))
                ))),
                Ok(file) => Box::new(
                    std::io::BufReader::with_capacity(1 << 20, file)
                        .lines()
                        .enumerate()
                        .filter_map(move |(i, line)| match line {
                            Ok(l) if l.trim().is_empty() => None,
                            Ok(l) => Some(Ok(ndjson_unit(format!("{name}:{}", i + 1), &l))),
                            Err(e) => Some(Err(anyhow::Error::new(e).context(format!("cannot read {name}")))),
                        }),
                ),
            }
        })
}

/// Resources a file holds (a transaction counts its entries), and the type
/// of its first resource (an export's NDJSON file holds one type).
fn survey(path: &Path) -> Result<(u64, Option<String>, bool)> {
    use std::io::BufRead;
    if !streamed(path) {
        let units = read_file(path)?;
        let first = units
            .first()
            .and_then(|(_, v)| v.get("resourceType").and_then(Value::as_str).map(str::to_string));
        let transaction = units.iter().any(|(_, v)| v.get("__transaction").is_some());
        return Ok((units.iter().map(|(_, v)| unit_size(v)).sum(), first, transaction));
    }
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut n = 0;
    let mut first = None;
    for line in std::io::BufReader::with_capacity(1 << 20, file).lines() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        if first.is_none() {
            first = Some(
                serde_json::from_str::<Value>(&line)
                    .ok()
                    .and_then(|v| v.get("resourceType").and_then(Value::as_str).map(str::to_string))
                    .unwrap_or_default(),
            );
        }
        n += 1;
    }
    Ok((n, first, false))
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
async fn import_transaction(
    client: &mut Client,
    s: &mut Summary,
    origin: &str,
    bundle: &Value,
    at: &Place,
) -> Result<u64> {
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
    // Safe to send twice only if every entry is: a PUT at an id, or a conditional create.
    let idempotent = entries.iter().all(|e| {
        let method = e.pointer("/request/method").and_then(Value::as_str).unwrap_or("");
        method == "PUT" || (method == "POST" && e.pointer("/request/ifNoneExist").is_some())
    });
    let reply = send_retrying(client, serde_json::to_vec(bundle)?, idempotent, at).await?;
    if reply.status == 200 {
        for t in types {
            *s.loaded.entry(t).or_default() += 1;
        }
    } else {
        let resp: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        // The entries are numbered as in the user's own file: keep the expressions.
        let why = describe_issues(resp.get("issue"), |x| x.to_string());
        s.reject(format!(
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

/// How an entry for a resource without a transaction around it is sent, and
/// whether sending it twice is harmless.
fn entry_request(rt: &str, r: &Value) -> (Value, bool) {
    if let Some(id) = r.get("id").and_then(Value::as_str) {
        return (json!({"method": "PUT", "url": format!("{rt}/{id}")}), true);
    }
    if let Some(q) = identifier_query(rt, r) {
        return (json!({"method": "POST", "url": rt, "ifNoneExist": q}), true);
    }
    (json!({"method": "POST", "url": rt}), false)
}

/// `identifier=<system>|<value>` of the first identifier with both, when the
/// server can search the type by identifier.
fn identifier_query(rt: &str, r: &Value) -> Option<String> {
    let ident = r
        .get("identifier")?
        .as_array()?
        .iter()
        .find_map(|i| Some((i.get("system")?.as_str()?, i.get("value")?.as_str()?)))?;
    let token = format!("{}|{}", ident.0, ident.1);
    let rtype: hale_fhir::ResourceType = rt.parse().ok()?;
    hale_fhir::search::parse_query(rtype, &[("identifier".to_string(), token.clone())], true).ok()?;
    Some(
        form_urlencoded::Serializer::new(String::new())
            .append_pair("identifier", &token)
            .finish(),
    )
}

/// Where the import stands, for messages: resources `from..=to` of `total`
/// are in flight; `resume` says how to carry on.
struct Place {
    from: u64,
    to: u64,
    total: u64,
    url: String,
    resume: String,
    /// Messages are printed around it.
    bar: indicatif::ProgressBar,
    /// Whether the server has answered any request of this run.
    answered: std::rc::Rc<std::cell::Cell<bool>>,
}

/// POST a batch or transaction Bundle; a transient failure is retried with
/// backoff (if `idempotent`, or if the server cannot have taken the attempt)
/// until [`BATCH_RETRY_DEADLINE`] ([`FIRST_CONTACT_DEADLINE`] until the server
/// has answered once). An answer that is not transient is returned.
async fn send_retrying(client: &mut Client, body: Vec<u8>, idempotent: bool, at: &Place) -> Result<crate::http::Reply> {
    let started = Instant::now();
    let limit = if at.answered.get() {
        BATCH_RETRY_DEADLINE
    } else {
        FIRST_CONTACT_DEADLINE
    };
    let mut backoff = Backoff::new(RETRY_WAIT_FIRST, RETRY_WAIT_MAX, started + limit);
    loop {
        let sent = client.send("POST", "/", Some(body.clone())).await;
        if sent.is_ok() {
            at.answered.set(true);
        }
        let (why, no_effect) = match sent {
            Ok(r) if !transient_status(r.status) => return Ok(r),
            // 429, and 503 with Retry-After (too busy to start), were turned away unread.
            Ok(r) => (
                format!("HTTP {}: {}", r.status, outcome_text(&r.body)),
                r.status == 429 || r.header("retry-after").is_some(),
            ),
            Err(e) => match transport_failure(&e) {
                Some(t) => (format!("{e:#}"), t.delivery == Delivery::NotSent),
                None => return Err(e),
            },
        };
        let what = format!("resources {}-{} of {}", at.from, at.to, at.total);
        if !idempotent && !no_effect {
            bail!(
                "{} did not confirm {what} ({why}). They may or may not have been loaded, and some of them have neither an id nor an identifier, so sending them again could load those twice: hale import stopped rather than guess. Running the same command again carries on from resource {} (the {} before it are done); first check whether those of {what} without an id or identifier are on the server already",
                at.url,
                at.from,
                at.from - 1
            );
        }
        let Some(wait) = backoff.next_wait() else {
            bail!(
                "{} could not take {what}: {why} (tried {} times over {:.0} s). {}",
                at.url,
                backoff.retries() + 1,
                started.elapsed().as_secs_f64(),
                at.resume
            );
        };
        at.bar.suspend(|| {
            eprintln!(
                "{what}: {why}; sending them again in {:.1} s (retry {})",
                wait.as_secs_f64(),
                backoff.retries()
            )
        });
        tokio::time::sleep(wait).await;
    }
}

/// Progress of an import, saved after each batch so that the same command run
/// again carries on after what was sent.
struct Saved {
    /// What the import was: server, files (with size and modification time), batch size.
    key: String,
    /// Resources sent and answered for, counted as the progress line counts them.
    done: u64,
    summary: Summary,
    /// Where the resources held back for a missing reference came from, to
    /// be sent again by a run that carries on.
    deferred: Vec<String>,
}

impl Saved {
    fn to_json(&self) -> Value {
        json!({"key": self.key, "done": self.done, "summary": self.summary.to_json(), "deferred": self.deferred})
    }

    fn from_json(v: &Value) -> Option<Saved> {
        Some(Saved {
            key: v["key"].as_str()?.to_string(),
            done: v["done"].as_u64()?,
            summary: Summary::from_json(&v["summary"])?,
            deferred: v["deferred"]
                .as_array()
                .map(|a| a.iter().filter_map(|o| o.as_str().map(str::to_string)).collect())
                .unwrap_or_default(),
        })
    }
}

/// The progress file for this import, in the current directory, and its key.
fn progress_file(files: &[PathBuf], url: &str, batch: usize) -> Result<(PathBuf, String)> {
    let mut key = format!("{url}\nbatch {batch}\n");
    for f in files {
        let m = std::fs::metadata(f).with_context(|| format!("cannot read {}", f.display()))?;
        let mtime = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = std::fs::canonicalize(f).unwrap_or_else(|_| f.clone());
        key.push_str(&format!("{} {} {mtime}\n", path.display(), m.len()));
    }
    // FNV-1a: stable across builds, enough to tell imports apart.
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    Ok((PathBuf::from(format!(".hale-import-{hash:016x}.progress")), key))
}

fn save_progress(path: &Path, saved: &Saved) -> std::io::Result<()> {
    let tmp = path.with_extension("progress.tmp");
    std::fs::write(&tmp, saved.to_json().to_string())?;
    std::fs::rename(&tmp, path)
}

/// Resources a unit counts for in the progress: a transaction its entries, anything else one.
fn unit_size(v: &Value) -> u64 {
    match v.get("__transaction") {
        Some(t) => t.get("entry").and_then(Value::as_array).map_or(0, |e| e.len() as u64),
        None => 1,
    }
}

/// Entries of a batch sent again another way, by position in the batch.
#[derive(Default)]
struct Held {
    /// Refused only because something they refer to is missing (yet).
    missing: Vec<usize>,
    /// Appointments whose slots arrived already busy ([`load_booked`]).
    booked: Vec<usize>,
}

/// Send plain resources as one batch Bundle and count what happened. Entries
/// refused only because something they refer to is missing are returned
/// rather than counted as rejected, unless `last_round`; so are Appointments
/// whose slots are busy.
async fn send_plain(
    client: &mut Client,
    s: &mut Summary,
    chunk: &[(String, Value)],
    at: &Place,
    last_round: bool,
) -> Result<Held> {
    let mut entries = Vec::new();
    let mut origins = Vec::new();
    let mut idempotent = true;
    for (i, (origin, r)) in chunk.iter().enumerate() {
        if let Some(e) = r.get("__invalid") {
            s.reject(format!("{origin}: not valid JSON: {}", e.as_str().unwrap_or("")));
            continue;
        }
        let Some(rt) = r.get("resourceType").and_then(Value::as_str) else {
            let what = if r.is_object() {
                "a JSON object without a resourceType"
            } else {
                "not a JSON object"
            };
            s.reject(format!("{origin}: not a FHIR resource: {what}"));
            continue;
        };
        let (request, safe) = entry_request(rt, r);
        idempotent &= safe;
        let conditional = request.get("ifNoneExist").is_some();
        entries.push(json!({"resource": r, "request": request}));
        origins.push((i, origin.clone(), rt.to_string(), conditional));
    }
    let mut held = Held::default();
    if entries.is_empty() {
        return Ok(held);
    }
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": entries});
    let reply = send_retrying(client, serde_json::to_vec(&bundle)?, idempotent, at).await?;
    if reply.status != 200 {
        bail!(
            "the server refused a batch (resources {}-{} of {}) with HTTP {}: {}\n{}",
            at.from,
            at.to,
            at.total,
            reply.status,
            String::from_utf8_lossy(&reply.body),
            at.resume
        );
    }
    let resp: Value = serde_json::from_slice(&reply.body)?;
    let resp_entries = resp.get("entry").and_then(Value::as_array).cloned().unwrap_or_default();
    for ((i, origin, rt, conditional), e) in origins.iter().zip(resp_entries) {
        let status = e.pointer("/response/status").and_then(Value::as_str).unwrap_or("");
        if status.starts_with('2') {
            *s.loaded.entry(rt.clone()).or_default() += 1;
            // A conditional create that found its resource answers 200, a create 201.
            if *conditional && status.starts_with("200") {
                s.existing += 1;
            }
        } else if !last_round && missing_reference(status, &e) {
            held.missing.push(*i);
        } else if slot_taken(rt, status, &e) {
            held.booked.push(*i);
        } else {
            // The server numbers the entries of the batch this command built;
            // the user knows the resource by its place in their own file.
            let why = describe_issues(e.pointer("/response/outcome/issue"), |x| resource_path(rt, x));
            s.reject(format!("{origin} ({rt}): HTTP {status}: {why}"));
        }
    }
    Ok(held)
}

pub async fn run(inputs: &[PathBuf], url: &str, token: Option<&str>, batch: usize) -> Result<()> {
    if batch == 0 || batch > BATCH_MAX {
        bail!("--batch must be between 1 and {BATCH_MAX}");
    }
    let started = Instant::now();
    let mut files = expand_inputs(inputs)?;
    let mut surveyed = Vec::with_capacity(files.len());
    for f in &files {
        surveyed.push(survey(f)?);
    }
    let total: u64 = surveyed.iter().map(|(n, _, _)| n).sum();
    // Files whose records others refer to go first (an export's files each
    // hold one type). Transactions carry their own order (and Synthea's refer
    // to the practitioners' Bundle loaded before them): keep the user's order then.
    if surveyed.iter().all(|(_, _, transaction)| !transaction) {
        let mut order: Vec<(usize, PathBuf)> = surveyed
            .iter()
            .map(|(_, first, _)| load_rank(first.as_deref().unwrap_or("")))
            .zip(files)
            .collect();
        order.sort_by_key(|(rank, _)| *rank);
        files = order.into_iter().map(|(_, f)| f).collect();
    }
    let (progress_path, key) = progress_file(&files, url, batch)?;
    let saved = std::fs::read(&progress_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| Saved::from_json(&v))
        .filter(|s| s.key == key && s.done <= total);
    let (mut done, mut s, deferred_before) = match saved {
        Some(saved) => {
            eprintln!(
                "carrying on an import that stopped: {} of {total} resources were sent before (delete {} to start over)",
                saved.done,
                progress_path.display()
            );
            (saved.done, saved.summary, saved.deferred)
        }
        None => (0, Summary::default(), Vec::new()),
    };
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} resources {per_sec} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut save_ok = true;
    let save_bar = bar.clone();
    // `held`: what was held back to send again (its origins are saved).
    let mut save = |done: u64, summary: Summary, held: &[&[(String, Value)]]| -> Summary {
        let saved = Saved {
            key: key.clone(),
            done,
            summary,
            deferred: held.iter().flat_map(|h| h.iter().map(|(o, _)| o.clone())).collect(),
        };
        if save_ok {
            if let Err(e) = save_progress(&progress_path, &saved) {
                save_bar.suspend(|| {
                    eprintln!(
                        "warning: cannot save progress in {} ({e}); if this import stops, it starts over when run again",
                        progress_path.display()
                    )
                });
                save_ok = false;
            }
        }
        saved.summary
    };
    let resume_hint = |at: u64| {
        if at == 0 {
            "Fix what is wrong and run the same command again.".to_string()
        } else {
            format!("The first {at} resources are done: run the same command again to carry on after them.")
        }
    };
    let mut client = Client::new(url, token)?.with_timeout(REQUEST_TIMEOUT);
    let answered = std::rc::Rc::new(std::cell::Cell::new(false));
    let tty = std::io::stderr().is_terminal();
    let mut last_line = Instant::now();
    let mut pending: Vec<(String, Value)> = Vec::new();
    // Resources held back because what they refer to was not there yet.
    let mut deferred: Vec<(String, Value)> = Vec::new();
    // Appointments whose slots arrived busy, loaded last (`load_booked`).
    let mut booked: Vec<(String, Value)> = Vec::new();
    // Skip what an earlier run sent (it saved its progress between units),
    // keeping what it held back to send again.
    let wanted: std::collections::HashSet<&str> = deferred_before.iter().map(String::as_str).collect();
    let mut units = units(&files).peekable();
    let mut skipped = 0;
    while skipped < done {
        let Some(next) = units.peek() else { break };
        let n = match next {
            Ok((_, v)) => unit_size(v),
            Err(_) => 0,
        };
        if skipped + n > done {
            break;
        }
        let (origin, v) = units.next().expect("peeked")?;
        if wanted.contains(origin.as_str()) {
            deferred.push((origin, v));
        }
        skipped += n;
    }
    done = skipped;
    bar.set_position(done);
    while units.peek().is_some() {
        // Gather up to `batch` plain resources, stopping before a transaction.
        while pending.len() < batch
            && units
                .peek()
                .is_some_and(|u| u.as_ref().map_or(true, |(_, v)| v.get("__transaction").is_none()))
        {
            pending.push(units.next().expect("peeked")?);
        }
        if pending.is_empty() {
            if let Some(unit) = units.next() {
                let (origin, v) = unit?;
                let n = unit_size(&v);
                let at = Place {
                    from: done + 1,
                    to: done + n,
                    total,
                    url: url.to_string(),
                    resume: resume_hint(done),
                    bar: bar.clone(),
                    answered: answered.clone(),
                };
                let n = import_transaction(&mut client, &mut s, &origin, &v["__transaction"], &at).await?;
                done += n;
                s = save(done, s, &[&deferred, &booked]);
                bar.inc(n);
            }
            continue;
        }
        let chunk = std::mem::take(&mut pending);
        let at = Place {
            from: done + 1,
            to: done + chunk.len() as u64,
            total,
            url: url.to_string(),
            resume: resume_hint(done),
            bar: bar.clone(),
            answered: answered.clone(),
        };
        let held = send_plain(&mut client, &mut s, &chunk, &at, false).await?;
        deferred.extend(held.missing.into_iter().map(|i| chunk[i].clone()));
        booked.extend(held.booked.into_iter().map(|i| chunk[i].clone()));
        done += chunk.len() as u64;
        s = save(done, s, &[&deferred, &booked]);
        bar.inc(chunk.len() as u64);
        if !tty && last_line.elapsed() >= PROGRESS_EVERY && done < total {
            eprintln!("imported {done}/{total} resources");
            last_line = Instant::now();
        }
    }
    // Send the held-back resources again while each round loads some of
    // them; appointments whose slots arrived booked go first in each round
    // (encounters refer to them).
    let place = || Place {
        from: done,
        to: done,
        total,
        url: url.to_string(),
        resume: "Run the same command again to carry on.".into(),
        bar: bar.clone(),
        answered: answered.clone(),
    };
    let mut round = 0;
    loop {
        if !booked.is_empty() {
            bar.suspend(|| {
                eprintln!(
                    "loading {} appointment(s) whose slots arrived already booked, each with its slots in one transaction",
                    booked.len()
                )
            });
            let this_round = std::mem::take(&mut booked);
            for (i, (origin, appt)) in this_round.iter().enumerate() {
                load_booked(&mut client, &mut s, origin, appt, &place()).await?;
                s = save(done, s, &[&deferred, &this_round[i + 1..]]);
            }
        }
        if deferred.is_empty() {
            break;
        }
        round += 1;
        let last_round = round == DEFER_ROUNDS_MAX;
        let before = deferred.len();
        bar.suspend(|| {
            eprintln!("sending {before} resource(s) again whose references were not loaded yet (round {round})")
        });
        let this_round = std::mem::take(&mut deferred);
        for chunk in this_round.chunks(batch) {
            let held = send_plain(&mut client, &mut s, chunk, &place(), last_round).await?;
            deferred.extend(held.missing.into_iter().map(|i| chunk[i].clone()));
            booked.extend(held.booked.into_iter().map(|i| chunk[i].clone()));
        }
        if !deferred.is_empty() && booked.is_empty() && (deferred.len() == before || last_round) {
            // No progress: what they refer to is not in this import or on the server.
            let held = std::mem::take(&mut deferred);
            for chunk in held.chunks(batch) {
                let again = send_plain(&mut client, &mut s, chunk, &place(), true).await?;
                booked.extend(again.booked.into_iter().map(|i| chunk[i].clone()));
            }
        }
        s = save(done, s, &[&deferred, &booked]);
    }
    bar.finish_and_clear();
    let _ = std::fs::remove_file(&progress_path);
    let loaded: u64 = s.loaded.values().sum();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "Loaded {loaded} resource(s) in {secs:.1} s ({:.0} resources/s):",
        loaded as f64 / secs.max(1e-3)
    );
    for (t, n) in &s.loaded {
        println!("  {n:>8}  {t}");
    }
    if s.existing > 0 {
        println!(
            "  ({} of them were already on the server, found by identifier, and were not loaded twice)",
            s.existing
        );
    }
    println!("Rejected {} resource(s).", s.rejected_total);
    for r in &s.rejected {
        println!("  {r}");
    }
    if s.rejected_total > s.rejected.len() as u64 {
        println!("  ... and {} more", s.rejected_total - s.rejected.len() as u64);
    }
    Ok(())
}
