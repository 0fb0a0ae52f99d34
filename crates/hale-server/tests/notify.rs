//! Patient contact end to end over real HTTP on loopback: `$rebook` writes the
//! outbox, the server's own delivery worker (hale-notify) sends email through a
//! real SMTP server process (Python's aiosmtpd, installed by .ci/run) that this
//! test starts and whose Maildir it reads back; nothing on the sending side is
//! mocked. Every FHIR response is checked against the R4 schema by the harness.

mod common;

use chrono::Duration as Days;
use common::*;
use hale_fhir::codes;
use hale_notify::{Adapters, Worker};
use hale_sched::uktime::{uk_at, uk_date};
use hale_server::config::Config;
use hale_server::outbox::{ServerOutbox, SmtpSettings, EXT_CLAIM, RECEIPT_ID_SYSTEM, STATUS_REASON_SYSTEM};
use hale_server::App;
use serde_json::{json, Value};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

// ---------------------------------------------------------------------------
// A real SMTP server: aiosmtpd writing to a Maildir

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn require_aiosmtpd() {
    let out = Command::new("python3").args(["-c", "import aiosmtpd"]).output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "this test needs Python's aiosmtpd (a real SMTP server); install it with \
             `python3 -m pip install aiosmtpd` (.ci/run does this). python3 said: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("this test needs python3 with aiosmtpd; python3 could not be run: {e}"),
    }
}

/// An aiosmtpd process writing to a Maildir; killed on drop.
struct SmtpServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
    maildir: PathBuf,
}

impl SmtpServer {
    fn start() -> SmtpServer {
        require_aiosmtpd();
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let maildir = dir.path().join("Maildir");
        let mut child = Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start python3 -m aiosmtpd");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read;
                child.stderr.take().unwrap().read_to_string(&mut err).ok();
                panic!("aiosmtpd exited ({status}) before listening on {port}: {err}");
            }
            assert!(
                Instant::now() < deadline,
                "aiosmtpd did not listen on {port} within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        SmtpServer {
            child,
            port,
            _dir: dir,
            maildir,
        }
    }

    /// Paths of the messages received so far.
    fn messages(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(rd) = std::fs::read_dir(self.maildir.join(sub)) {
                out.extend(rd.map(|e| e.unwrap().path()));
            }
        }
        out.sort();
        out
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A received message, decoded by Python's email package.
#[derive(Debug)]
struct Received {
    to: String,
    subject: String,
    message_id: String,
    body: String,
}

fn read_message(path: &Path) -> Received {
    let script = r#"
import email, email.policy, json, sys
m = email.message_from_binary_file(open(sys.argv[1], 'rb'), policy=email.policy.default)
print(json.dumps({
  'to': str(m['To']), 'subject': str(m['Subject']), 'message_id': str(m['Message-ID']),
  'body': m.get_body(preferencelist=('plain',)).get_content(),
}))
"#;
    let out = Command::new("python3").args(["-c", script]).arg(path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = |k: &str| v[k].as_str().unwrap().to_string();
    Received {
        to: s("to"),
        subject: s("subject"),
        message_id: s("message_id"),
        body: s("body"),
    }
}

fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

// ---------------------------------------------------------------------------
// A server whose `App` the test can also use in-process

struct Running {
    client: Client,
    app: Option<Arc<App>>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl std::ops::Deref for Running {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Running {
    async fn start(cfg: Config) -> Running {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let node = hale_server::Node::start(cfg, format!("http://{addr}"))
            .await
            .expect("start node");
        let app = node.app.clone();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(hale_server::serve(node, listener, async move {
            let _ = rx.await;
        }));
        let r = Running {
            client: Client { addr },
            app: Some(app),
            stop: Some(tx),
            handle: Some(handle),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ServerOutbox::new(r.app()).is_leader() {
            assert!(Instant::now() < deadline, "a single node should lead within 30 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        r
    }

    fn app(&self) -> Arc<App> {
        self.app.clone().expect("running")
    }

    async fn stop(&mut self) {
        self.app = None;
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.expect("server task panicked").expect("server failed");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

const FROM: &str = "Hale General Hospital <appointments@hale.example>";

fn smtp_settings(port: u16) -> SmtpSettings {
    SmtpSettings {
        host: "127.0.0.1".into(),
        port,
        security: Default::default(),
        username: None,
        password: None,
        from: FROM.into(),
        reply_to: None,
        hello_name: None,
        message_id_domain: Some("hale.example".into()),
        step_timeout_ms: 10_000,
    }
}

fn notify_config(dir: &Path, smtp_port: u16) -> Config {
    let mut cfg = test_config(dir);
    cfg.notify.smtp = Some(smtp_settings(smtp_port));
    cfg.notify.sender.organisation = "Hale General Hospital".into();
    cfg.notify.sender.phone = "0141 496 0000".into();
    cfg.notify.poll_interval_ms = 100;
    cfg
}

/// Poll (bounded; not a timing assertion) until `done` holds for the resource at `path`.
async fn wait_for(c: &Client, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let v = c.read(ADMIN, path).await;
        if done(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "gave up waiting for {path} to be {what}: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ms(v: &Value) -> i64 {
    hale_fhir::date::parse_range_ms(v.as_str().unwrap_or_else(|| panic!("not a time: {v}")))
        .expect("time")
        .0
}

fn iso(ms: i64) -> String {
    hale_fhir::date::format_instant_ms(ms)
}

fn ext<'v>(v: &'v Value, url: &str) -> Option<&'v Value> {
    v["extension"].as_array()?.iter().find(|e| e["url"] == url)
}

fn reason_code(c: &Value) -> String {
    c["statusReason"]["coding"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["system"] == STATUS_REASON_SYSTEM)
        .and_then(|x| x["code"].as_str())
        .unwrap_or("")
        .to_string()
}

fn medium(c: &Value) -> String {
    c["medium"][0]["coding"][0]["code"].as_str().unwrap_or("").to_string()
}

fn params(items: &[(&str, &str, Value)]) -> Value {
    let list: Vec<Value> = items
        .iter()
        .map(|(name, key, value)| {
            let mut p = json!({"name": name});
            p[*key] = value.clone();
            p
        })
        .collect();
    json!({"resourceType": "Parameters", "parameter": list})
}

/// The value of part `name` of a Parameters group.
fn part<'v>(g: &'v Value, name: &str) -> &'v Value {
    let p = g["part"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["name"] == name)
        .unwrap_or_else(|| panic!("no part {name} in {g}"));
    p.as_object()
        .and_then(|o| o.iter().find(|(k, _)| k.starts_with("value")).map(|(_, v)| v))
        .unwrap_or(&Value::Null)
}

fn incident(day: &str) -> Value {
    json!({
        "resourceType": "Basic",
        "code": {"coding": [{"system": codes::INCIDENT_TYPE_SYSTEM, "code": codes::INCIDENT_IT_OUTAGE}]},
        "created": day,
        "extension": [
            {"url": codes::EXT_INCIDENT_PERIOD, "valuePeriod": {"start": day, "end": day}},
            {"url": codes::EXT_INCIDENT_STATUS, "valueCode": "open"},
            {"url": codes::EXT_INCIDENT_SITE, "valueCode": "QEH"},
            {"url": codes::EXT_INCIDENT_DESCRIPTION, "valueString": "PAS down"},
        ],
    })
}

fn cardiology() -> Value {
    json!([{"coding": [{"system": SNOMED, "code": "394579002", "display": "Cardiology"}]}])
}

fn outpatient() -> Value {
    json!([{"coding": [{"system": CATEGORY_SYSTEM, "code": "outpatient"}]}])
}

/// A Cardiology clinic at site QEH: (clinic Location, Practitioner, Schedule).
async fn clinic(c: &Client) -> (String, String, String) {
    let hospital = c
        .create_id(
            ADMIN,
            &json!({"resourceType": "Location", "status": "active", "name": "Queen Elizabeth Hospital",
                    "extension": [{"url": codes::EXT_SITE, "valueCode": "QEH"}]}),
        )
        .await;
    let loc = c
        .create_id(
            ADMIN,
            &json!({"resourceType": "Location", "status": "active", "name": "Outpatients B",
                    "partOf": {"reference": format!("Location/{hospital}")}}),
        )
        .await;
    let prac = c
        .create_id(
            ADMIN,
            &json!({"resourceType": "Practitioner", "name": [{"family": "Rao", "given": ["Priya"], "prefix": ["Dr"]}]}),
        )
        .await;
    let sched = c
        .create_id(
            ADMIN,
            &json!({
                "resourceType": "Schedule",
                "active": true,
                "serviceCategory": outpatient(),
                "serviceType": cardiology(),
                "actor": [{"reference": format!("Location/{loc}")}, {"reference": format!("Practitioner/{prac}")}],
            }),
        )
        .await;
    (loc, prac, sched)
}

async fn free_slot(c: &Client, sched: &str, start_ms: i64, minutes: i64) -> String {
    c.create_id(
        ADMIN,
        &json!({
            "resourceType": "Slot",
            "schedule": {"reference": format!("Schedule/{sched}")},
            "serviceCategory": outpatient(),
            "serviceType": cardiology(),
            "status": "free",
            "start": iso(start_ms),
            "end": iso(start_ms + minutes * 60_000),
        }),
    )
    .await
}

/// A booked Cardiology outpatient appointment of `patient` in `slot`.
async fn booked(c: &Client, patient: &str, slot: &str, start_ms: i64, loc: &str, prac: &str) -> String {
    c.create_id(
        CLERK,
        &json!({
            "resourceType": "Appointment",
            "status": "booked",
            "serviceCategory": outpatient(),
            "serviceType": cardiology(),
            "priority": 4,
            "description": "Cardiology outpatient",
            "slot": [{"reference": format!("Slot/{slot}")}],
            "start": iso(start_ms),
            "end": iso(start_ms + 20 * 60_000),
            "participant": [
                {"actor": {"reference": format!("Patient/{patient}")}, "required": "required", "status": "accepted"},
                {"actor": {"reference": format!("Practitioner/{prac}")}, "required": "required", "status": "accepted"},
                {"actor": {"reference": format!("Location/{loc}")}, "required": "required", "status": "accepted"},
            ],
        }),
    )
    .await
}

fn with_email(mut p: Value, email: &str) -> Value {
    p["telecom"] = json!([{"system": "email", "value": email, "use": "home"}]);
    p
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebooked_patient_is_emailed_once_and_never_again() {
    let smtp = SmtpServer::start();
    let data = tempfile::tempdir().unwrap();
    let mut srv = Running::start(notify_config(data.path(), smtp.port)).await;

    // A clinic, two patients booked on the outage day (one with only an email
    // address, one with no contact details at all) and free slots a week later.
    let now = hale_server::now_ms();
    let day = uk_date(now) + Days::days(3);
    let later = uk_date(now) + Days::days(10);
    let (loc, prac, sched) = clinic(&srv).await;
    let ada = srv
        .create_id(
            ADMIN,
            &with_email(
                patient(&nhs(), "Okafor", &["Ada"], "1961-04-02"),
                "ada.okafor@example.org",
            ),
        )
        .await;
    let bo = srv
        .create_id(ADMIN, &patient(&nhs(), "Brodie", &["Bo"], "1958-11-30"))
        .await;
    let mut old = Vec::new();
    for (i, p) in [&ada, &bo].into_iter().enumerate() {
        let start = uk_at(day, 10 + i as u32, 0);
        let slot = free_slot(&srv, &sched, start, 30).await;
        old.push(booked(&srv, p, &slot, start, &loc, &prac).await);
    }
    for h in [9, 10] {
        free_slot(&srv, &sched, uk_at(later, h, 30), 30).await;
    }

    // The outage: postpone the day, then rebook with commit.
    let inc = srv.create_id(ADMIN, &incident(&day.to_string())).await;
    let inc_param = ("incident", "valueString", json!(inc));
    let r = srv
        .post(
            "/Appointment/$postpone",
            ADMIN,
            &params(&[inc_param.clone(), ("clinicRuns", "valueBoolean", json!(false))]),
        )
        .await;
    r.expect(200);
    let r = srv
        .post(
            "/Appointment/$rebook",
            ADMIN,
            &params(&[inc_param.clone(), ("commit", "valueBoolean", json!(true))]),
        )
        .await;
    r.expect(200);
    let placements: Vec<Value> = r.body()["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "placement")
        .cloned()
        .collect();
    assert_eq!(placements.len(), 2, "both rebooked: {}", r.text);
    let of = |patient: &str| -> (String, i64, String, String) {
        let g = placements
            .iter()
            .find(|g| part(g, "patient")["reference"] == format!("Patient/{patient}"))
            .unwrap_or_else(|| panic!("no placement for {patient}"));
        (
            part(g, "channel").as_str().unwrap().to_string(),
            ms(part(g, "start")),
            part(g, "notification")["reference"].as_str().unwrap().to_string(),
            part(g, "newAppointment")["reference"].as_str().unwrap().to_string(),
        )
    };
    let (ada_channel, ada_start, ada_comm, ada_appt) = of(&ada);
    let (bo_channel, _, bo_comm, _) = of(&bo);
    assert_eq!(ada_channel, "email", "no address and no mobile: email");
    assert_eq!(bo_channel, "staff-list", "no contact details at all");

    // The server's worker sends it: wait until the record is completed.
    let done = wait_for(&srv, &format!("/{ada_comm}"), "completed", |c| {
        c["status"] == "completed"
    })
    .await;
    let comm_id = done["id"].as_str().unwrap().to_string();
    let message_id = format!("<hale-notify.{comm_id}@hale.example>");
    assert!(done["sent"].is_string(), "sent is recorded: {done:#}");
    assert_eq!(
        ext(&done, hale_server::outbox::EXT_ATTEMPTS).unwrap()["valueUnsignedInt"],
        1
    );
    let ids: Vec<&Value> = done["identifier"].as_array().unwrap().iter().collect();
    assert!(ids
        .iter()
        .any(|i| i["system"] == codes::NOTIFICATION_ID_SYSTEM && i["value"] == comm_id.as_str()));
    assert!(
        ids.iter()
            .any(|i| i["system"] == RECEIPT_ID_SYSTEM && i["value"] == message_id.as_str()),
        "the Message-ID is recorded: {done:#}"
    );
    // Everything the rebooking wrote is still there.
    let about: Vec<&str> = done["about"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["reference"].as_str().unwrap())
        .collect();
    assert_eq!(
        about,
        [
            ada_appt.as_str(),
            &format!("Appointment/{}", old[0]),
            &format!("Basic/{inc}")
        ]
    );
    let tags: Vec<&str> = done["meta"]["tag"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["code"].as_str().unwrap())
        .collect();
    assert!(tags.contains(&codes::TAG_OUTAGE_NOTIFICATION), "{tags:?}");
    assert_eq!(medium(&done), "email");
    // The worker's writes are attributed to it in the audit trail.
    wait_audit(&srv, &format!("/AuditEvent?patient={ada}&action=U&_count=1000"), |e| {
        e["agent"][0]["who"]["display"] == "hale-notify" && e.to_string().contains(&ada_comm)
    })
    .await;
    assert!(done["payload"][0]["contentString"].is_string());

    // Claimed (durably, conditionally) before it was sent: preparation -> in-progress -> completed.
    let hist = srv.search(ADMIN, &format!("/{ada_comm}/_history")).await;
    let mut versions: Vec<Value> = hist.entries().iter().map(|e| e["resource"].clone()).collect();
    versions.sort_by_key(|v| v["meta"]["versionId"].as_str().unwrap().parse::<u64>().unwrap());
    let statuses: Vec<&str> = versions.iter().map(|v| v["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["preparation", "in-progress", "completed"]);
    let claim = ext(&versions[1], EXT_CLAIM).expect("the claim is on the record");
    assert!(claim["extension"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["url"] == "channel" && e["valueCode"] == "email"));

    // What arrived: to Ada, with the new appointment's time, place and clinician.
    let deadline = Instant::now() + Duration::from_secs(30);
    while smtp.messages().is_empty() {
        assert!(Instant::now() < deadline, "the completed email is not in the Maildir");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let msgs = smtp.messages();
    assert_eq!(msgs.len(), 1, "exactly one email (Bo has no address to send to)");
    let m = read_message(&msgs[0]);
    assert!(m.to.contains("ada.okafor@example.org"), "{m:?}");
    assert!(m.to.contains("Ada Okafor"), "{m:?}");
    assert_eq!(m.message_id, message_id);
    let when = hale_notify::message::uk_datetime(ada_start);
    assert!(m.subject.contains(&when), "{m:?}");
    let body = squash(&m.body);
    for needle in [
        "Dear Ada Okafor".to_string(),
        format!("When: {when}"),
        "Clinic: Cardiology".to_string(),
        "Where: Outpatients B, Queen Elizabeth Hospital".to_string(),
        "With: Dr Priya Rao".to_string(),
        format!(
            "replaces your appointment on {}",
            hale_notify::message::uk_datetime(uk_at(day, 10, 0))
        ),
        "because of an IT outage at the hospital".to_string(),
        "0141 496 0000".to_string(),
        format!("Reference: {comm_id}"),
    ] {
        assert!(body.contains(&needle), "the email lacks {needle:?}: {body}");
    }

    // Bo has nobody to send to: on hold for staff, and on the staff list.
    let held = wait_for(&srv, &format!("/{bo_comm}"), "on-hold", |c| c["status"] == "on-hold").await;
    assert_eq!(reason_code(&held), "no-contact-details");
    let csv = srv.get("/Communication/$staff-lists", ADMIN).await;
    csv.expect(200);
    assert!(csv.header("content-type").unwrap().starts_with("text/csv"));
    let rows: Vec<&str> = csv.text.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{}", csv.text);
    assert!(
        rows[0].starts_with("no-contact-details,") && rows[0].contains("Bo Brodie"),
        "{}",
        csv.text
    );
    assert!(!csv.text.contains("Okafor"), "a patient who was emailed is on no list");

    // Restart safety: another worker's pass over the same store sends nothing more.
    let app = srv.app();
    let pass = second_worker_pass(app).await;
    assert_eq!((pass.fetched, pass.sent), (0, 0), "{pass:?}");
    // And after a real restart of the node on the same data.
    srv.stop().await;
    let mut srv = Running::start(notify_config(data.path(), smtp.port)).await;
    let pass = second_worker_pass(srv.app()).await;
    assert_eq!((pass.fetched, pass.sent), (0, 0), "{pass:?}");
    let after = srv.read(ADMIN, &format!("/{ada_comm}")).await;
    assert_eq!(
        after["meta"]["versionId"], done["meta"]["versionId"],
        "the record is unchanged"
    );
    assert_eq!(smtp.messages().len(), 1, "nothing was sent twice");
    let r = srv.get(&format!("/Basic/{inc}/$report"), ADMIN).await;
    r.expect(200);
    let total = r.body()["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "total")
        .unwrap()
        .clone();
    assert_eq!(part(&total, "notified"), 1);
    srv.stop().await;
}

/// Poll the audit trail (it is committed asynchronously) until an event matches.
async fn wait_audit(c: &Client, query: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = c.search(ADMIN, query).await;
        if let Some(e) = r.entries().into_iter().map(|e| e["resource"].clone()).find(|e| pred(e)) {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "no audit event like that in {query}: {}",
            r.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One pass of a fresh worker (another id, as after a restart) over the node's outbox,
/// with the node's own `[notify]` adapters.
async fn second_worker_pass(app: Arc<App>) -> hale_notify::PassReport {
    let outbox = ServerOutbox::new(app.clone());
    assert!(outbox.is_leader());
    let adapters: Adapters = hale_server::outbox::adapters(&app.cfg.notify).unwrap();
    assert!(adapters.email.is_some());
    let policy = hale_server::outbox::worker_policy(&app.cfg.notify, &app.cfg.outage, "second-worker").unwrap();
    let worker = Worker::new(Arc::new(outbox), adapters, policy, Arc::new(hale_notify::SystemClock)).unwrap();
    worker.run_pass(&Arc::new(AtomicBool::new(false))).await
}

/// A Communication exactly as `$rebook` writes one (client-chosen id = idempotency key).
fn like_rebook(id: &str, patient: &str, new: &str, old: &str, inc: &str, channel: &str) -> Value {
    json!({
        "resourceType": "Communication",
        "id": id,
        "meta": {"tag": [
            {"system": codes::TAG_SYSTEM, "code": format!("{}{inc}", codes::TAG_INCIDENT_PREFIX), "display": "Outage incident"},
            {"system": codes::TAG_SYSTEM, "code": codes::TAG_OUTAGE_NOTIFICATION, "display": "Outage notification"},
        ]},
        "extension": [{"url": codes::EXT_OUTAGE_INCIDENT, "valueReference": {"reference": format!("Basic/{inc}")}}],
        "identifier": [{"system": codes::NOTIFICATION_ID_SYSTEM, "value": id}],
        "status": "preparation",
        "category": [{"coding": [{
            "system": codes::NOTIFICATION_CATEGORY_SYSTEM,
            "code": codes::NOTIFICATION_APPOINTMENT_REBOOKED,
            "display": "Appointment rebooked",
        }]}],
        "priority": "routine",
        "medium": [{"coding": [{"system": codes::NOTIFICATION_CHANNEL_SYSTEM, "code": channel}], "text": channel}],
        "subject": {"reference": format!("Patient/{patient}")},
        "about": [
            {"reference": format!("Appointment/{new}")},
            {"reference": format!("Appointment/{old}")},
            {"reference": format!("Basic/{inc}")},
        ],
        "recipient": [{"reference": format!("Patient/{patient}")}],
        "payload": [{"contentString": "Your appointment was cancelled because of an IT outage. It has been rebooked."}],
    })
}

/// GET with the staff list's plain JSON (not FHIR, so not through the harness client).
async fn get_plain(addr: std::net::SocketAddr, path: &str, token: &str) -> (u16, String, String) {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioIo;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Full<hyper::body::Bytes>>(TokioIo::new(stream))
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::builder()
        .uri(path)
        .header("host", addr.to_string())
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(hyper::body::Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    drop(sender);
    let _ = task.await;
    (status, ct, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_lists_and_no_resend_of_an_interrupted_send() {
    let smtp = SmtpServer::start();
    let data = tempfile::tempdir().unwrap();
    let mut srv = Running::start(notify_config(data.path(), smtp.port)).await;

    let (loc, prac, sched) = clinic(&srv).await;
    let start = hale_server::now_ms() + 14 * 24 * 3600 * 1000;
    let inc = srv.create_id(ADMIN, &incident("2031-01-06")).await;
    let cy = srv
        .create_id(ADMIN, &patient(&nhs(), "Cole", &["Cy"], "1970-01-01"))
        .await;
    // A landline only: staff can phone, nothing can be sent.
    let mut di_p = patient(&nhs(), "Dunn", &["Di"], "1971-02-02");
    di_p["telecom"] = json!([{"system": "phone", "value": "0141 496 0123", "use": "home"}]);
    let di = srv.create_id(ADMIN, &di_p).await;
    let ed = srv
        .create_id(
            ADMIN,
            &with_email(patient(&nhs(), "Egan", &["Ed"], "1972-03-03"), "ed.egan@example.org"),
        )
        .await;
    let mut comms = Vec::new();
    for (i, (p, channel)) in [(&cy, "staff-list"), (&di, "phone-call"), (&ed, "email")]
        .into_iter()
        .enumerate()
    {
        let t = start + i as i64 * 3600 * 1000;
        let old_slot = free_slot(&srv, &sched, t - 7 * 24 * 3600 * 1000, 30).await;
        let old_id = booked(&srv, p, &old_slot, t - 7 * 24 * 3600 * 1000, &loc, &prac).await;
        let old_a = srv.read(ADMIN, &format!("/Appointment/{old_id}")).await;
        srv.put(
            &format!("/Appointment/{old_id}"),
            ADMIN,
            &cancelled(old_a, Some("provider")),
        )
        .await
        .expect(200);
        let slot = free_slot(&srv, &sched, t, 30).await;
        let new_id = booked(&srv, p, &slot, t, &loc, &prac).await;
        let id = uuid::Uuid::new_v4().to_string();
        let mut c = like_rebook(&id, p, &new_id, &old_id, &inc, channel);
        if channel == "email" {
            // A worker on another node claimed it an hour ago and died mid-send.
            c["status"] = json!("in-progress");
            c["extension"].as_array_mut().unwrap().extend([
                json!({"url": EXT_CLAIM, "extension": [
                    {"url": "id", "valueString": "node-9-1"},
                    {"url": "worker", "valueString": "node-9"},
                    {"url": "at", "valueInstant": iso(hale_server::now_ms() - 3600 * 1000)},
                    {"url": "channel", "valueCode": "email"},
                    {"url": "attempt", "valueUnsignedInt": 1},
                ]}),
                json!({"url": hale_server::outbox::EXT_ATTEMPTS, "valueUnsignedInt": 0}),
            ]);
        }
        srv.put(&format!("/Communication/{id}"), ADMIN, &c).await.expect(201);
        comms.push(id);
    }

    for (id, reason) in comms
        .iter()
        .zip(["no-contact-details", "phone-call", "delivery-unknown"])
    {
        let c = wait_for(&srv, &format!("/Communication/{id}"), "on-hold", |c| {
            c["status"] == "on-hold"
        })
        .await;
        assert_eq!(reason_code(&c), reason, "{c:#}");
    }
    assert!(
        smtp.messages().is_empty(),
        "an interrupted SMTP send is never blindly resent: staff check the relay's log"
    );

    // CSV: one row per patient, each on its list.
    let r = srv.get("/Communication/$staff-lists", ADMIN).await;
    r.expect(200);
    let lines: Vec<&str> = r.text.lines().collect();
    assert!(lines[0].starts_with("list,appointment,name,"), "{}", r.text);
    assert_eq!(lines.len(), 4, "{}", r.text);
    let row = |name: &str| {
        *lines
            .iter()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("{name}: {}", r.text))
    };
    assert!(row("Cy Cole").starts_with("no-contact-details,"));
    assert!(row("Di Dunn").starts_with("phone-calls,") && row("Di Dunn").contains("0141 496 0123"));
    assert!(row("Ed Egan").starts_with("check-delivery,") && row("Ed Egan").contains("hale-notify."));
    for l in &lines[1..] {
        assert!(l.contains("Outpatients B, Queen Elizabeth Hospital"), "{l}");
    }
    let only = srv
        .get(
            &format!("/Communication/$staff-lists?list=phone-calls&incident={inc}"),
            ADMIN,
        )
        .await;
    only.expect(200);
    assert_eq!(only.text.lines().count(), 2, "{}", only.text);
    assert!(only.text.contains("Di Dunn"));
    let none = srv
        .get("/Communication/$staff-lists?incident=no-such-incident", ADMIN)
        .await;
    assert_eq!(none.expect(200).text.lines().count(), 1);

    // JSON.
    let (status, ct, body) = get_plain(srv.addr, "/Communication/$staff-lists?_format=json", ADMIN).await;
    assert_eq!(status, 200, "{body}");
    assert!(ct.starts_with("application/json"), "{ct}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["phone_calls"].as_array().unwrap().len(), 1, "{v:#}");
    assert_eq!(v["no_contact_details"][0]["patient_id"], cy.as_str());
    assert_eq!(v["phone_calls"][0]["phones"][0], "0141 496 0123");
    assert_eq!(v["check_delivery"][0]["email"], "ed.egan@example.org");
    assert_eq!(v["check_delivery"][0]["clinic"], "Cardiology");

    // Only admins and services; bad parameters say so.
    srv.get("/Communication/$staff-lists", CLERK)
        .await
        .expect(403)
        .outcome();
    srv.get("/Communication/$staff-lists", "").await.expect(401).outcome();
    srv.get("/Communication/$staff-lists?colour=red", ADMIN)
        .await
        .expect(400)
        .outcome_at("colour");
    // Reading the lists is audited (they name patients).
    wait_audit(&srv, "/AuditEvent?action=E&_count=1000", |e| {
        e.to_string().contains("$staff-lists")
    })
    .await;
    srv.stop().await;
}
