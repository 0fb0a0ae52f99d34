//! `hale outage ...`: declare, list, show and close IT outage incidents, postpone what
//! they stopped, report on it and rebook it, through a running server's HTTP API; and
//! `hale bench rebook` ([`bench_rebook`]), which times the rebooking solver on
//! generated backlogs. The rules live in hale-server and hale-sched; this is glue.

use crate::http::{Client, Reply};
use anyhow::{anyhow, bail, Context, Result};
use chrono::{NaiveDate, NaiveDateTime};
use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

const TYPE_SYSTEM: &str = "https://hale.health/fhir/CodeSystem/incident-type";
const IT_OUTAGE: &str = "it-outage";
const ID_SYSTEM: &str = "https://hale.health/fhir/Id/incident";
const EXT_PERIOD: &str = "https://hale.health/fhir/StructureDefinition/incident-period";
const EXT_STATUS: &str = "https://hale.health/fhir/StructureDefinition/incident-status";
const EXT_SITE: &str = "https://hale.health/fhir/StructureDefinition/incident-site";
const EXT_SERVICE: &str = "https://hale.health/fhir/StructureDefinition/incident-service";
const EXT_DESCRIPTION: &str = "https://hale.health/fhir/StructureDefinition/incident-description";
/// Incidents listed at most.
const LIST_MAX: usize = 1_000;

#[derive(Args)]
pub struct OutageArgs {
    #[command(subcommand)]
    cmd: OutageCmd,
    /// API URL of any node.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "HALE_URL", global = true)]
    url: String,
    /// Bearer token (declare, close, postpone and rebook need an admin token).
    #[arg(long, env = "HALE_TOKEN", global = true)]
    token: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

#[derive(Subcommand)]
enum OutageCmd {
    /// Record an incident (prints its id).
    Declare {
        /// When it started: `now`, a date (00:00 UK time) or a date and time (UK time unless it has a zone).
        #[arg(long, default_value = "now")]
        start: String,
        /// When it ended, if it is over (a date means the end of that UK day).
        #[arg(long)]
        end: Option<String>,
        /// An affected hospital site code (repeat for more; none means every site).
        #[arg(long = "site")]
        sites: Vec<String>,
        /// An affected service: a category (outpatient, inpatient-procedure, day-case,
        /// chemotherapy) or a service type code such as cardiology (repeat; none means every service).
        #[arg(long = "service")]
        services: Vec<String>,
        /// What happened.
        #[arg(long)]
        description: Option<String>,
        /// A reference of your own, such as a service-desk ticket number.
        #[arg(long)]
        reference: Option<String>,
    },
    /// List incidents.
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Show one incident.
    Show { id: String },
    /// Close an incident: set its end (default now) and status closed.
    Close {
        id: String,
        #[arg(long, default_value = "now")]
        end: String,
    },
    /// Cancel every booked appointment in scope, in one atomic command (rerunning changes nothing).
    #[command(group(ArgGroup::new("clinic").required(true).args(["clinic_runs", "clinic_closed"])))]
    Postpone {
        #[arg(long)]
        incident: String,
        /// Start of the time to postpone (default: the incident's start).
        #[arg(long)]
        from: Option<String>,
        /// End of the time to postpone (default: the incident's end; a date means the end of that day).
        #[arg(long)]
        to: Option<String>,
        /// Only this site (repeat for more; default: the incident's sites).
        #[arg(long = "site")]
        sites: Vec<String>,
        /// Only this category.
        #[arg(long)]
        category: Option<String>,
        /// The clinics still run: their slots are released for rebooking.
        #[arg(long)]
        clinic_runs: bool,
        /// The clinics are closed: their slots are blocked.
        #[arg(long)]
        clinic_closed: bool,
    },
    /// Postponed counts by category, site and day, with how many are rebooked and notified.
    Report {
        #[arg(long)]
        incident: String,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Give each postponed appointment a new slot and queue a notification (a dry run with --dry-run).
    Rebook {
        #[arg(long)]
        incident: String,
        /// Plan and show, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Only this category.
        #[arg(long)]
        category: Option<String>,
        /// Reasonable notice in days (default from the server's configuration: 21 in England, 10 in Scotland).
        #[arg(long)]
        notice_days: Option<i64>,
        /// Rebook into any site's clinic of the same service, not only the original site's.
        #[arg(long)]
        any_site: bool,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

/// An instant for a FHIR dateTime from the command line: `now`, `YYYY-MM-DD`
/// (00:00 UK time, or with `end` the end of that UK day), `YYYY-MM-DDTHH:MM[:SS]`
/// (UK time) or anything with a zone (`Z`, `+01:00`), passed through.
pub fn cli_instant(text: &str, end: bool) -> Result<String> {
    use hale_sched::uktime::{from_uk_local, uk_midnight};
    let t = text.trim();
    let ms = if t.eq_ignore_ascii_case("now") {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    } else if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        if end {
            uk_midnight(d + chrono::Duration::days(1)) - 1
        } else {
            uk_midnight(d)
        }
    } else if t.ends_with('Z') || t.get(19..).is_some_and(|z| z.contains('+') || z.contains('-')) {
        hale_fhir::date::parse_range_ms(t)
            .map(|r| r.0)
            .ok_or_else(|| anyhow!("'{t}' is not a date-time"))?
    } else {
        let local = NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S")
            .or_else(|_| NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M"))
            .or_else(|_| NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M"))
            .with_context(|| {
                format!("'{t}' is not `now`, a date (2026-10-01) or a date and time (2026-10-01T09:00)")
            })?;
        from_uk_local(local)
    };
    Ok(hale_fhir::date::format_instant_ms(ms))
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The body as JSON if the status is `ok`; otherwise the server's OperationOutcome as an error.
fn expect(r: &Reply, ok: u16, what: &str) -> Result<Value> {
    if r.status == ok {
        return r.json();
    }
    let detail = r
        .json()
        .ok()
        .and_then(|v| {
            let issues: Vec<String> = v["issue"]
                .as_array()?
                .iter()
                .map(|i| {
                    let at = i["expression"][0]
                        .as_str()
                        .map(|e| format!(" (at {e})"))
                        .unwrap_or_default();
                    format!("{}{at}", i["diagnostics"].as_str().unwrap_or("?"))
                })
                .collect();
            Some(issues.join("; "))
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&r.body).to_string());
    bail!("{what}: HTTP {}: {detail}", r.status)
}

fn ext<'v>(v: &'v Value, url: &str) -> impl Iterator<Item = &'v Value> + 'v {
    let url = url.to_string();
    v["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(move |e| e["url"] == url.as_str())
}

fn codes_of(v: &Value, url: &str) -> Vec<String> {
    ext(v, url)
        .filter_map(|e| e["valueCode"].as_str().map(str::to_string))
        .collect()
}

/// One incident as a flat row.
fn row(b: &Value) -> BTreeMap<&'static str, String> {
    let period = ext(b, EXT_PERIOD)
        .next()
        .map(|e| e["valuePeriod"].clone())
        .unwrap_or_default();
    let mut r = BTreeMap::new();
    r.insert("id", b["id"].as_str().unwrap_or("?").to_string());
    r.insert("status", codes_of(b, EXT_STATUS).join(","));
    r.insert("start", period["start"].as_str().unwrap_or("-").to_string());
    r.insert("end", period["end"].as_str().unwrap_or("-").to_string());
    r.insert("sites", or_all(codes_of(b, EXT_SITE)));
    r.insert("services", or_all(codes_of(b, EXT_SERVICE)));
    r.insert(
        "description",
        ext(b, EXT_DESCRIPTION)
            .next()
            .and_then(|e| e["valueString"].as_str())
            .unwrap_or("")
            .to_string(),
    );
    r.insert(
        "reference",
        b["identifier"][0]["value"].as_str().unwrap_or("").to_string(),
    );
    r
}

fn or_all(v: Vec<String>) -> String {
    if v.is_empty() {
        "all".into()
    } else {
        v.join(",")
    }
}

/// Value of the first parameter (or part) `name`.
fn pv<'v>(p: &'v Value, name: &str) -> &'v Value {
    let list = p["parameter"].as_array().or_else(|| p["part"].as_array());
    list.into_iter()
        .flatten()
        .find(|x| x["name"] == name)
        .and_then(|x| x.as_object())
        .and_then(|o| o.iter().find(|(k, _)| k.starts_with("value")).map(|(_, v)| v))
        .unwrap_or(&Value::Null)
}

fn groups<'v>(p: &'v Value, name: &str) -> Vec<&'v Value> {
    p["parameter"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|x| x["name"] == name)
        .collect()
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Object(o) => o.get("reference").and_then(Value::as_str).unwrap_or("").to_string(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Parameters (with parts) as plain JSON: `{name: value}`, repeated names as arrays.
pub fn parameters_to_json(p: &Value) -> Value {
    fn fold(items: &[Value]) -> Value {
        let mut out = serde_json::Map::new();
        for it in items {
            let name = it["name"].as_str().unwrap_or("?").to_string();
            let v = match it["part"].as_array() {
                Some(parts) => fold(parts),
                None => match it
                    .as_object()
                    .and_then(|o| o.iter().find(|(k, _)| k.starts_with("value")))
                {
                    Some((_, Value::Object(r))) if r.contains_key("reference") => r["reference"].clone(),
                    Some((_, v)) => v.clone(),
                    None => Value::Null,
                },
            };
            match out.get_mut(&name) {
                Some(Value::Array(a)) if it["part"].is_array() || a.first().is_some_and(Value::is_object) => a.push(v),
                Some(prev) => {
                    let p = prev.take();
                    *prev = json!([p, v]);
                }
                None if it["part"].is_array() => {
                    out.insert(name, json!([v]));
                }
                None => {
                    out.insert(name, v);
                }
            }
        }
        Value::Object(out)
    }
    fold(p["parameter"].as_array().map(Vec::as_slice).unwrap_or(&[]))
}

pub async fn run(a: OutageArgs) -> Result<()> {
    let mut c = Client::new(&a.url, a.token.as_deref())?;
    match a.cmd {
        OutageCmd::Declare {
            start,
            end,
            sites,
            services,
            description,
            reference,
        } => {
            let start = cli_instant(&start, false)?;
            let mut period = json!({"start": start});
            // An incident whose end has passed is declared closed; one still running (or planned) is open.
            let mut status = "open";
            if let Some(e) = &end {
                let end = cli_instant(e, true)?;
                if end <= cli_instant("now", false)? {
                    status = "closed";
                }
                period["end"] = json!(end);
            }
            let mut exts = vec![
                json!({"url": EXT_PERIOD, "valuePeriod": period}),
                json!({"url": EXT_STATUS, "valueCode": status}),
            ];
            exts.extend(sites.iter().map(|s| json!({"url": EXT_SITE, "valueCode": s})));
            exts.extend(services.iter().map(|s| json!({"url": EXT_SERVICE, "valueCode": s})));
            if let Some(d) = &description {
                exts.push(json!({"url": EXT_DESCRIPTION, "valueString": d}));
            }
            let mut b = json!({
                "resourceType": "Basic",
                "code": {"coding": [{"system": TYPE_SYSTEM, "code": IT_OUTAGE, "display": "IT outage"}], "text": "IT outage"},
                "created": start.get(..10).unwrap_or(&start),
                "extension": exts,
            });
            if let Some(r) = &reference {
                b["identifier"] = json!([{"system": ID_SYSTEM, "value": r}]);
            }
            let r = c.send("POST", "/Basic", Some(serde_json::to_vec(&b)?)).await?;
            let v = expect(&r, 201, "declaring the incident")?;
            let id = v["id"].as_str().unwrap_or("?");
            eprintln!("declared incident Basic/{id}");
            println!("{id}");
        }
        OutageCmd::List { format } => {
            let q = format!(
                "/Basic?code={}&_count={LIST_MAX}&_sort=-_lastUpdated",
                enc(&format!("{TYPE_SYSTEM}|{IT_OUTAGE}"))
            );
            let r = c.send("GET", &q, None).await?;
            let v = expect(&r, 200, "listing incidents")?;
            let rows: Vec<BTreeMap<&str, String>> = v["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["search"]["mode"] == "match")
                .map(|e| row(&e["resource"]))
                .collect();
            let cols = [
                "id",
                "status",
                "start",
                "end",
                "sites",
                "services",
                "reference",
                "description",
            ];
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
                Format::Csv => {
                    println!("{}", cols.join(","));
                    for r in &rows {
                        println!("{}", cols.iter().map(|k| csv(&r[k])).collect::<Vec<_>>().join(","));
                    }
                }
                Format::Table => {
                    println!(
                        "{:<37} {:<7} {:<25} {:<25} {:<12} {:<12} description",
                        "id", "status", "start", "end", "sites", "services"
                    );
                    for r in &rows {
                        println!(
                            "{:<37} {:<7} {:<25} {:<25} {:<12} {:<12} {}",
                            r["id"], r["status"], r["start"], r["end"], r["sites"], r["services"], r["description"]
                        );
                    }
                    println!("{} incident(s)", rows.len());
                }
            }
        }
        OutageCmd::Show { id } => {
            let r = c.send("GET", &format!("/Basic/{}", enc(&id)), None).await?;
            let v = expect(&r, 200, "reading the incident")?;
            for (k, val) in row(&v) {
                println!("{k:<12} {val}");
            }
            println!("{:<12} {}", "version", v["meta"]["versionId"].as_str().unwrap_or("?"));
        }
        OutageCmd::Close { id, end } => {
            let path = format!("/Basic/{}", enc(&id));
            let r = c.send("GET", &path, None).await?;
            let mut v = expect(&r, 200, "reading the incident")?;
            let etag = r.header("etag").unwrap_or("").to_string();
            let end = cli_instant(&end, true)?;
            for e in v["extension"].as_array_mut().into_iter().flatten() {
                if e["url"] == EXT_PERIOD {
                    e["valuePeriod"]["end"] = json!(end);
                } else if e["url"] == EXT_STATUS {
                    e["valueCode"] = json!("closed");
                }
            }
            let r = c
                .send_with(
                    "PUT",
                    &path,
                    Some(serde_json::to_vec(&v)?),
                    &[("if-match", etag.as_str())],
                )
                .await?;
            expect(&r, 200, "closing the incident")?;
            println!("closed incident Basic/{id} at {end}");
        }
        OutageCmd::Postpone {
            incident,
            from,
            to,
            sites,
            category,
            clinic_runs,
            clinic_closed: _,
        } => {
            let mut p = vec![
                json!({"name": "incident", "valueString": incident}),
                json!({"name": "clinicRuns", "valueBoolean": clinic_runs}),
            ];
            if let Some(f) = &from {
                p.push(json!({"name": "from", "valueDateTime": cli_instant(f, false)?}));
            }
            if let Some(t) = &to {
                // A date given as `to` covers that whole day: the server takes the date itself.
                if NaiveDate::parse_from_str(t, "%Y-%m-%d").is_ok() {
                    p.push(json!({"name": "to", "valueDate": t}));
                } else {
                    p.push(json!({"name": "to", "valueDateTime": cli_instant(t, false)?}));
                }
            }
            for s in &sites {
                p.push(json!({"name": "site", "valueCode": s}));
            }
            if let Some(cat) = &category {
                p.push(json!({"name": "category", "valueCode": cat}));
            }
            let body = json!({"resourceType": "Parameters", "parameter": p});
            let r = c
                .send("POST", "/Appointment/$postpone", Some(serde_json::to_vec(&body)?))
                .await?;
            let v = expect(&r, 200, "postponing")?;
            println!(
                "postponed {} appointment(s) from {} to {} ({}); {} slot(s) blocked",
                text(pv(&v, "postponed")),
                text(pv(&v, "from")),
                text(pv(&v, "to")),
                if clinic_runs {
                    "clinics run: slots released"
                } else {
                    "clinics closed"
                },
                text(pv(&v, "slotsBlocked")),
            );
            for g in groups(&v, "byCategory") {
                println!("  {:<22} {}", text(pv(g, "category")), text(pv(g, "count")));
            }
            for g in groups(&v, "bySite") {
                println!("  site {:<17} {}", text(pv(g, "site")), text(pv(g, "count")));
            }
        }
        OutageCmd::Report { incident, format } => {
            let r = c
                .send("GET", &format!("/Basic/{}/$report", enc(&incident)), None)
                .await?;
            let v = expect(&r, 200, "reading the report")?;
            print_report(&v, format)?;
        }
        OutageCmd::Rebook {
            incident,
            dry_run,
            category,
            notice_days,
            any_site,
            format,
        } => {
            let mut p = vec![
                json!({"name": "incident", "valueString": incident}),
                json!({"name": "commit", "valueBoolean": !dry_run}),
            ];
            if let Some(cat) = &category {
                p.push(json!({"name": "category", "valueCode": cat}));
            }
            if let Some(n) = notice_days {
                p.push(json!({"name": "noticeDays", "valueInteger": n}));
            }
            if any_site {
                p.push(json!({"name": "anySite", "valueBoolean": true}));
            }
            let body = json!({"resourceType": "Parameters", "parameter": p});
            let r = c
                .send("POST", "/Appointment/$rebook", Some(serde_json::to_vec(&body)?))
                .await?;
            let v = expect(&r, 200, "rebooking")?;
            print_rebook(&v, format, dry_run)?;
        }
    }
    Ok(())
}

fn csv(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn print_report(v: &Value, format: Format) -> Result<()> {
    let sections = [("byCategory", "category"), ("bySite", "site"), ("byDay", "day")];
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&parameters_to_json(v))?),
        Format::Csv => {
            println!("section,key,postponed,rebooked,notified");
            let total = groups(v, "total");
            for g in total {
                println!(
                    "total,all,{},{},{}",
                    text(pv(g, "postponed")),
                    text(pv(g, "rebooked")),
                    text(pv(g, "notified"))
                );
            }
            for (name, key) in sections {
                for g in groups(v, name) {
                    println!(
                        "{key},{},{},{},{}",
                        csv(&text(pv(g, key))),
                        text(pv(g, "postponed")),
                        text(pv(g, "rebooked")),
                        text(pv(g, "notified"))
                    );
                }
            }
        }
        Format::Table => {
            println!("incident {} ({})", text(pv(v, "incident")), text(pv(v, "status")));
            println!("{}", text(pv(v, "summary")));
            let line = |label: &str, g: &Value| {
                println!(
                    "{:<24} {:>9} {:>9} {:>9}",
                    label,
                    text(pv(g, "postponed")),
                    text(pv(g, "rebooked")),
                    text(pv(g, "notified"))
                )
            };
            for (name, key) in sections {
                println!();
                println!("{:<24} {:>9} {:>9} {:>9}", key, "postponed", "rebooked", "notified");
                for g in groups(v, name) {
                    line(&text(pv(g, key)), g);
                }
                if name == "byCategory" {
                    for g in groups(v, "total") {
                        line("total", g);
                    }
                }
            }
            let notes = groups(v, "notifications");
            if !notes.is_empty() {
                println!();
                println!("{:<14} {:<14} {:>7}", "channel", "status", "count");
                for g in notes {
                    println!(
                        "{:<14} {:<14} {:>7}",
                        text(pv(g, "channel")),
                        text(pv(g, "status")),
                        text(pv(g, "count"))
                    );
                }
            }
        }
    }
    Ok(())
}

/// The fields of one placement, in the order the CSV and the table print them.
fn placement_row(g: &Value) -> [String; 9] {
    [
        "appointment",
        "category",
        "priority",
        "start",
        "site",
        "latenessDays",
        "shortNotice",
        "channel",
        "newAppointment",
    ]
    .map(|name| text(pv(g, name)))
}

fn print_rebook(v: &Value, format: Format, dry_run: bool) -> Result<()> {
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&parameters_to_json(v))?);
        return Ok(());
    }
    if format == Format::Csv {
        println!("appointment,category,priority,new_start,site,lateness_days,short_notice,channel,new_appointment");
        for g in groups(v, "placement") {
            println!("{}", placement_row(g).join(","));
        }
        return Ok(());
    }
    println!(
        "{}: {} postponed, {} already rebooked, {} considered, {} free slots",
        if dry_run {
            "DRY RUN (nothing changed)"
        } else {
            "rebooked"
        },
        text(pv(v, "postponed")),
        text(pv(v, "alreadyRebooked")),
        text(pv(v, "considered")),
        text(pv(v, "freeSlots")),
    );
    println!(
        "placed {}, unplaced {}, committed {}; {}",
        text(pv(v, "placed")),
        text(pv(v, "unplaced")),
        text(pv(v, "committed")),
        text(pv(v, "objective"))
    );
    let placements = groups(v, "placement");
    if !placements.is_empty() {
        println!();
        println!(
            "{:<30} {:<20} {:>3} {:<25} {:<5} {:>5} {:<6} {:<11} new appointment",
            "appointment", "category", "pri", "new start", "site", "late", "short", "channel"
        );
        for g in placements {
            let [appt, cat, pri, start, site, late, short, channel, new_appt] = placement_row(g);
            println!(
                "{appt:<30} {cat:<20} {pri:>3} {start:<25} {site:<5} {late:>5} {short:<6} {channel:<11} {new_appt}"
            );
        }
    }
    let unplaced = groups(v, "unplacedAppointment");
    if !unplaced.is_empty() {
        println!();
        println!("not placed (staff must act):");
        for g in unplaced {
            println!(
                "  {} ({} priority {}): {}",
                text(pv(g, "appointment")),
                text(pv(g, "category")),
                text(pv(g, "priority")),
                text(pv(g, "text"))
            );
        }
    }
    let short = groups(v, "shortfall");
    if !short.is_empty() {
        println!();
        println!("capacity shortfall:");
        for g in short {
            println!("  {}", text(pv(g, "text")));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// hale bench rebook

/// Backlogs timed by `hale bench rebook`: (appointments, modelled on, target).
pub const BENCH_BACKLOGS: &[(usize, &str, Duration)] = &[
    (709, "Glasgow 2013", Duration::from_secs(1)),
    (12_000, "London pathology attack 2024", Duration::from_secs(30)),
];
/// Seeds per backlog size.
pub const BENCH_SEEDS: &[u64] = &[1, 2, 3];
/// Sizes on which the heuristic is compared with the exact model, and seeds per size.
pub const GAP_SIZES: &[usize] = &[20, 40, 60, 80];
pub const GAP_SEEDS: u64 = 5;

/// `hale bench rebook`: times the heuristic on generated backlogs of 709 and 12,000
/// appointments (three seeds each) and measures its gap to the exact MILP optimum on
/// small instances. Prints a table, or JSON with `json`. Fails if a target is missed.
pub fn bench_rebook(json: bool) -> Result<()> {
    let mut runs = Vec::new();
    let mut missed = Vec::new();
    for &(n, model, target) in BENCH_BACKLOGS {
        for &seed in BENCH_SEEDS {
            let r = hale_sched::bench(n, seed);
            if r.elapsed > target {
                missed.push(format!(
                    "{n} appointments (seed {seed}): {:.2} s > {:?}",
                    r.elapsed.as_secs_f64(),
                    target
                ));
            }
            if !json {
                println!(
                    "rebook {n:>6} appointments ({model}), seed {seed}: {:>8.1} ms (target {:?}), {} slots, placed {} / unplaced {}, cost {}, shortfall {} h",
                    r.elapsed.as_secs_f64() * 1e3,
                    target,
                    r.slots,
                    r.objective.placed_total(),
                    r.objective.unplaced_total(),
                    r.objective.cost,
                    r.shortfall_hours
                );
            }
            runs.push(json!({
                "appointments": n,
                "modelled_on": model,
                "seed": seed,
                "slots": r.slots,
                "elapsed_ms": r.elapsed.as_secs_f64() * 1e3,
                "target_ms": target.as_millis() as u64,
                "objective": r.objective,
                "shortfall_rows": r.shortfall_rows,
                "shortfall_hours": r.shortfall_hours,
            }));
        }
    }
    let opts = hale_sched::ExactOptions {
        max_pairs: 50_000,
        ..hale_sched::ExactOptions::default()
    };
    let mut gaps = Vec::new();
    for &n in GAP_SIZES {
        let s = hale_sched::measure_gap(n, 0..GAP_SEEDS, &opts);
        let exact_ms =
            s.reports.iter().map(|r| r.exact_time.as_secs_f64() * 1e3).sum::<f64>() / s.reports.len().max(1) as f64;
        let heur_ms = s
            .reports
            .iter()
            .map(|r| r.heuristic_time.as_secs_f64() * 1e3)
            .sum::<f64>()
            / s.reports.len().max(1) as f64;
        if s.max_gap > 0.01 {
            missed.push(format!("gap on {n} appointments: {:.3}% > 1%", s.max_gap * 100.0));
        }
        if !json {
            println!(
                "gap    {n:>6} appointments, {} seeds: proven optimal {}/{}, mean gap {:.3}%, max gap {:.3}% (target <= 1%), placement mismatches {}, heuristic {:.1} ms, exact {:.0} ms",
                GAP_SEEDS,
                s.optimal,
                s.reports.len(),
                s.mean_gap * 100.0,
                s.max_gap * 100.0,
                s.placement_mismatches,
                heur_ms,
                exact_ms
            );
        }
        gaps.push(json!({
            "appointments": n,
            "seeds": GAP_SEEDS,
            "proven_optimal": s.optimal,
            "skipped": s.skipped,
            "mean_gap": s.mean_gap,
            "max_gap": s.max_gap,
            "placement_mismatches": s.placement_mismatches,
            "heuristic_ms_mean": heur_ms,
            "exact_ms_mean": exact_ms,
        }));
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"rebook": runs, "gap": gaps, "missed": missed}))?
        );
    }
    if !missed.is_empty() {
        bail!("targets missed: {}", missed.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_from_the_command_line() {
        // BST: 00:00 UK time on 1 October 2026 is 23:00 UTC the day before.
        assert_eq!(cli_instant("2026-10-01", false).unwrap(), "2026-09-30T23:00:00.000Z");
        assert_eq!(cli_instant("2026-10-01", true).unwrap(), "2026-10-01T22:59:59.999Z");
        assert_eq!(
            cli_instant("2026-12-01T09:30", false).unwrap(),
            "2026-12-01T09:30:00.000Z"
        );
        assert_eq!(
            cli_instant("2026-10-01T09:30", false).unwrap(),
            "2026-10-01T08:30:00.000Z"
        );
        assert_eq!(
            cli_instant("2026-10-01T09:30:00Z", false).unwrap(),
            "2026-10-01T09:30:00.000Z"
        );
        assert!(cli_instant("yesterday", false).is_err());
        assert!(cli_instant("now", false).unwrap().ends_with('Z'));
    }

    #[test]
    fn parameters_as_plain_json() {
        let p = json!({"resourceType": "Parameters", "parameter": [
            {"name": "incident", "valueReference": {"reference": "Basic/1"}},
            {"name": "summary", "valueString": "Postponed: 3"},
            {"name": "byCategory", "part": [{"name": "category", "valueCode": "day-case"}, {"name": "postponed", "valueInteger": 3}]},
            {"name": "byCategory", "part": [{"name": "category", "valueCode": "outpatient"}, {"name": "postponed", "valueInteger": 1}]},
            {"name": "bySite", "part": [{"name": "site", "valueCode": "QEH"}]},
        ]});
        assert_eq!(
            parameters_to_json(&p),
            json!({
                "incident": "Basic/1",
                "summary": "Postponed: 3",
                "byCategory": [{"category": "day-case", "postponed": 3}, {"category": "outpatient", "postponed": 1}],
                "bySite": [{"site": "QEH"}],
            })
        );
    }
}
