//! The Notify adapter against a local stand-in for GOV.UK Notify (axum on
//! 127.0.0.1:0) that checks every request the way Notify does: the path, the
//! JSON fields, and the JWT (HS256 signature with the secret key, `iss` = the
//! service id, `iat` within 30 s). It can be told to fail, or to answer late,
//! to exercise retries and interrupted attempts.

mod common;

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use common::*;
use hale_notify::notify::{NotifyClient, NotifyConfig, NotifyKind, SmsRequest};
use hale_notify::{
    staff_lists, Adapter, Adapters, ApiKey, Channel, Check, Claim, Clock, ItemState, NotifyAdapter, NotifyError,
    Outbox, OutcomeStatus, SendError, SystemClock, Worker, WorkerPolicy,
};
use hale_sched::letters::Postage;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

const SERVICE_ID: &str = "26785a09-ab16-4eb0-8407-a37497a57506";
const SECRET: &str = "3d844edf-8d35-48ac-975b-e847b4f122b0";
const SMS_TEMPLATE: &str = "f33517ff-2a88-4f6e-b855-c550268ce08a";
const EMAIL_TEMPLATE: &str = "a1b2c3d4-2a88-4f6e-b855-c550268ce08a";
const LETTER_2ND: &str = "b2c3d4e5-2a88-4f6e-b855-c550268ce08a";
const LETTER_1ST: &str = "c3d4e5f6-2a88-4f6e-b855-c550268ce08a";

fn api_key() -> ApiKey {
    ApiKey::parse(&format!("hale-test-{SERVICE_ID}-{SECRET}")).unwrap()
}

/// What the stand-in does with the next POST.
#[derive(Debug, Clone)]
enum Next {
    /// Reply with this status and Notify error, creating nothing.
    Fail(u16, &'static str, &'static str),
    /// Create the notification, then reply only after this delay.
    CreateThenStall(Duration),
}

#[derive(Debug, Clone)]
struct Stored {
    id: String,
    reference: String,
    kind: String,
    status: String,
}

#[derive(Default)]
struct Stand {
    /// Every request: (method, path, body or query).
    requests: Mutex<Vec<(String, String, Value)>>,
    /// Requests that broke Notify's rules (the test asserts there are none,
    /// unless it sent them on purpose).
    violations: Mutex<Vec<String>>,
    created: Mutex<Vec<Stored>>,
    script: Mutex<VecDeque<Next>>,
}

fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn notify_error(status: u16, error: &str, message: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap();
    (
        code,
        Json(json!({"status_code": status, "errors": [{"error": error, "message": message}]})),
    )
        .into_response()
}

/// Checks the bearer token independently of the crate's own JWT code.
fn check_jwt(headers: &HeaderMap) -> Result<(), String> {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or("no Authorization header")?;
    let token = auth.strip_prefix("Bearer ").ok_or("not a Bearer token")?;
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err("token is not three parts".into());
    }
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    if header != json!({"typ": "JWT", "alg": "HS256"}) {
        return Err(format!("header {header}"));
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
    let sig = URL_SAFE_NO_PAD.decode(parts[2]).map_err(|e| e.to_string())?;
    mac.verify_slice(&sig)
        .map_err(|_| "Invalid token: signature, api token not found")?;
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    if claims["iss"] != json!(SERVICE_ID) {
        return Err(format!("iss {}", claims["iss"]));
    }
    let iat = claims["iat"].as_i64().ok_or("iat is not an integer")?;
    if (iat - now_secs()).abs() > 30 {
        return Err("Error: Your system clock must be accurate to within 30 seconds".into());
    }
    Ok(())
}

fn is_uuid(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        s.len() == 36
            && s.char_indices().all(|(i, c)| match i {
                8 | 13 | 18 | 23 => c == '-',
                _ => c.is_ascii_hexdigit(),
            })
    })
}

fn non_empty(v: &Value) -> bool {
    v.as_str().is_some_and(|s| !s.trim().is_empty())
}

/// The request shape Notify requires for each endpoint; `Err` is Notify's message.
fn check_shape(kind: &str, b: &Value) -> Result<(), String> {
    let obj = b.as_object().ok_or("body is not a JSON object")?;
    if !non_empty(&b["reference"]) {
        return Err("reference is a required property".into());
    }
    let allowed: &[&str] = match kind {
        "sms" => &[
            "phone_number",
            "template_id",
            "personalisation",
            "reference",
            "sms_sender_id",
        ],
        "email" => &[
            "email_address",
            "template_id",
            "personalisation",
            "reference",
            "email_reply_to_id",
        ],
        "letter" if obj.contains_key("content") => &["reference", "content", "postage"],
        "letter" => &["template_id", "personalisation", "reference"],
        _ => return Err(format!("no such endpoint {kind}")),
    };
    if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!("Additional properties are not allowed ({k} was unexpected)"));
    }
    if kind == "letter" && obj.contains_key("content") {
        let pdf = STANDARD
            .decode(b["content"].as_str().unwrap_or(""))
            .map_err(|_| "Letter content is not a valid PDF")?;
        if !pdf.starts_with(b"%PDF-") {
            return Err("Letter content is not a valid PDF".into());
        }
        if !matches!(b["postage"].as_str(), Some("first" | "second")) {
            return Err("postage invalid. It must be either first or second.".into());
        }
        return Ok(());
    }
    if !is_uuid(&b["template_id"]) {
        return Err("template_id is not a valid UUID".into());
    }
    let p = b["personalisation"].as_object().ok_or("personalisation is required")?;
    for key in ["name", "new_time", "old_time", "clinic", "location", "phone"] {
        if !p.contains_key(key) {
            return Err(format!("Missing personalisation: {key}"));
        }
    }
    match kind {
        "sms" => {
            let n = b["phone_number"].as_str().unwrap_or("");
            if !(n.starts_with("+44") || n.starts_with("07")) {
                return Err("phone_number Not a UK mobile number".into());
            }
        }
        "email" => {
            if !b["email_address"].as_str().unwrap_or("").contains('@') {
                return Err("email_address Not a valid email address".into());
            }
        }
        _ => {
            let lines: Vec<&str> = (1..=7)
                .filter_map(|i| p.get(&format!("address_line_{i}")).and_then(|v| v.as_str()))
                .collect();
            if p.keys().any(|k| k == "address_line_8") || lines.len() < 3 {
                return Err("Address must be between 3 and 7 lines".into());
            }
            let last = lines.last().unwrap();
            let postcode_like = last.len() >= 5
                && last.len() <= 8
                && last.contains(' ')
                && last.chars().all(|c| c.is_ascii_alphanumeric() || c == ' ');
            if !postcode_like {
                return Err("Last line of address must be a real UK postcode or another country".into());
            }
        }
    }
    Ok(())
}

async fn send(State(s): State<Arc<Stand>>, Path(kind): Path<String>, headers: HeaderMap, body: String) -> Response {
    let b: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    s.requests
        .lock()
        .unwrap()
        .push(("POST".into(), format!("/v2/notifications/{kind}"), b.clone()));
    if let Err(e) = check_jwt(&headers) {
        s.violations.lock().unwrap().push(format!("auth: {e}"));
        return notify_error(403, "AuthError", &e);
    }
    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/json") {
        s.violations.lock().unwrap().push("content-type".into());
    }
    if let Err(e) = check_shape(&kind, &b) {
        s.violations.lock().unwrap().push(format!("{kind}: {e}"));
        return notify_error(400, "ValidationError", &e);
    }
    let next = s.script.lock().unwrap().pop_front();
    if let Some(Next::Fail(status, error, message)) = next {
        return notify_error(status, error, message);
    }
    let id = format!("740e5834-3a29-46b4-9a6f-{:012}", s.created.lock().unwrap().len() + 1);
    let reference = b["reference"].as_str().unwrap().to_string();
    s.created.lock().unwrap().push(Stored {
        id: id.clone(),
        reference: reference.clone(),
        kind: kind.clone(),
        status: "created".into(),
    });
    if let Some(Next::CreateThenStall(d)) = next {
        tokio::time::sleep(d).await;
    }
    let mut reply = json!({
        "id": id,
        "reference": reference,
        "uri": format!("https://api.notifications.service.gov.uk/v2/notifications/{id}"),
    });
    if b.get("content").is_some() {
        reply["postage"] = b["postage"].clone();
    } else {
        reply["content"] = json!({"body": "MESSAGE TEXT", "subject": "SUBJECT"});
        reply["template"] = json!({"id": b["template_id"], "version": 1, "uri": "/v2/template/x"});
    }
    (StatusCode::CREATED, Json(reply)).into_response()
}

async fn list(
    State(s): State<Arc<Stand>>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    s.requests
        .lock()
        .unwrap()
        .push(("GET".into(), "/v2/notifications".into(), json!(q)));
    if let Err(e) = check_jwt(&headers) {
        s.violations.lock().unwrap().push(format!("auth: {e}"));
        return notify_error(403, "AuthError", &e);
    }
    let found: Vec<Value> = s
        .created
        .lock()
        .unwrap()
        .iter()
        .filter(|n| q.get("reference").is_none_or(|r| *r == n.reference))
        .filter(|n| q.get("template_type").is_none_or(|t| *t == n.kind))
        .map(|n| json!({"id": n.id, "reference": n.reference, "type": n.kind, "status": n.status, "created_at": "2026-10-05T10:00:00.000000Z"}))
        .collect();
    Json(json!({"notifications": found, "links": {"current": "/v2/notifications"}})).into_response()
}

/// Starts the stand-in; returns its base URL and state.
async fn stand_in() -> (String, Arc<Stand>) {
    let state = Arc::new(Stand::default());
    let app = Router::new()
        .route("/v2/notifications/{kind}", post(send))
        .route("/v2/notifications", get(list))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (format!("http://{addr}"), state)
}

fn client(base: &str) -> Arc<NotifyClient> {
    let mut c = NotifyConfig::new(base, api_key());
    c.request_timeout = Duration::from_secs(2);
    Arc::new(NotifyClient::new(c).unwrap())
}

fn sms_adapter(base: &str) -> Arc<NotifyAdapter> {
    Arc::new(NotifyAdapter::new(
        client(base),
        NotifyKind::Sms {
            template_id: SMS_TEMPLATE.into(),
            sms_sender_id: None,
        },
        sender(),
    ))
}

fn posts(s: &Stand) -> Vec<Value> {
    s.requests
        .lock()
        .unwrap()
        .iter()
        .filter(|(m, _, _)| m == "POST")
        .map(|(_, _, b)| b.clone())
        .collect()
}

fn policy() -> WorkerPolicy {
    let mut p = WorkerPolicy::new("node-1");
    p.concurrency = 1;
    p.retry.jitter_permille = 0;
    p
}

fn no_violations(s: &Stand) {
    let v = s.violations.lock().unwrap();
    assert!(v.is_empty(), "requests Notify would reject: {v:?}");
}

#[tokio::test]
async fn sms_email_and_letters_have_notifys_shape_and_a_valid_jwt() {
    let (base, stand) = stand_in().await;
    let c = client(&base);
    let now = uk("2026-10-05", 11, 0);
    let s = sender();

    let sms = sms_adapter(&base);
    let r = sms
        .send(&item("comm-1", Channel::Sms), Channel::Sms, now)
        .await
        .unwrap();
    assert_eq!(r.provider, "notify");
    assert_eq!(r.id.as_deref(), Some("740e5834-3a29-46b4-9a6f-000000000001"));

    let email = NotifyAdapter::new(
        c.clone(),
        NotifyKind::Email {
            template_id: EMAIL_TEMPLATE.into(),
            email_reply_to_id: Some("8e222534-7f05-4972-86e3-17c5d9f894e2".into()),
        },
        s.clone(),
    );
    email
        .send(&item("comm-2", Channel::Email), Channel::Email, now)
        .await
        .unwrap();

    let letters = NotifyAdapter::new(
        c.clone(),
        NotifyKind::Letter {
            second_class_template_id: LETTER_2ND.into(),
            first_class_template_id: LETTER_1ST.into(),
        },
        s.clone(),
    );
    let first = Channel::Letter {
        postage: Postage::First,
    };
    letters.send(&item("comm-3", first), first, now).await.unwrap();

    let precompiled = NotifyAdapter::new(c.clone(), NotifyKind::PrecompiledLetter, s.clone());
    let second = Channel::Letter {
        postage: Postage::Second,
    };
    precompiled.send(&item("comm-4", second), second, now).await.unwrap();

    no_violations(&stand);
    let reqs = stand.requests.lock().unwrap().clone();
    let paths: Vec<&str> = reqs.iter().map(|(_, p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/v2/notifications/sms",
            "/v2/notifications/email",
            "/v2/notifications/letter",
            "/v2/notifications/letter"
        ]
    );
    let sms_body = &reqs[0].2;
    assert_eq!(sms_body["phone_number"], "+447700900123");
    assert_eq!(sms_body["template_id"], SMS_TEMPLATE);
    assert_eq!(sms_body["reference"], "comm-1");
    assert!(sms_body.get("sms_sender_id").is_none());
    let p = &sms_body["personalisation"];
    assert_eq!(p["name"], "Ada Okafor");
    assert_eq!(p["new_time"], NEW_TIME);
    assert_eq!(p["old_time"], OLD_TIME);
    assert_eq!(p["clinic"], "Cardiology outpatient clinic");
    assert_eq!(p["location"], "Outpatients B, Royal Infirmary");
    assert_eq!(p["phone"], "0141 496 0000");

    let email_body = &reqs[1].2;
    assert_eq!(email_body["email_address"], "ada.okafor@example.org");
    assert_eq!(email_body["email_reply_to_id"], "8e222534-7f05-4972-86e3-17c5d9f894e2");
    assert_eq!(email_body["reference"], "comm-2");

    let letter = &reqs[2].2;
    assert_eq!(letter["template_id"], LETTER_1ST, "first class template");
    let lp = &letter["personalisation"];
    assert_eq!(lp["address_line_1"], "Ada Okafor");
    assert_eq!(lp["address_line_2"], "Flat 2/1");
    assert_eq!(lp["address_line_3"], "14 Hyndland Road");
    assert_eq!(lp["address_line_4"], "Glasgow");
    assert_eq!(lp["address_line_5"], "G12 9UX");
    assert!(lp.get("address_line_6").is_none());

    let pre = &reqs[3].2;
    assert_eq!(pre["postage"], "second");
    assert_eq!(pre["reference"], "comm-4");
    let pdf = STANDARD.decode(pre["content"].as_str().unwrap()).unwrap();
    assert!(pdf.starts_with(b"%PDF-1.4"));
}

#[tokio::test]
async fn notify_errors_are_parsed_and_classified() {
    let (base, stand) = stand_in().await;
    let c = client(&base);
    let req = |reference: &str, phone: &str| SmsRequest {
        phone_number: phone.into(),
        template_id: SMS_TEMPLATE.into(),
        personalisation: hale_notify::message::personalisation(&item(reference, Channel::Sms), &sender()),
        reference: reference.into(),
        sms_sender_id: None,
    };

    // Validation error: permanent.
    let e = c.send_sms(&req("comm-e1", "12345")).await.unwrap_err();
    let NotifyError::Api { status, errors, .. } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(*status, 400);
    assert_eq!(errors[0].error, "ValidationError");
    assert_eq!(errors[0].message, "phone_number Not a UK mobile number");
    assert!(matches!(e.to_send_error(), SendError::Permanent { .. }));
    stand.violations.lock().unwrap().clear();

    // Rate limited, server error: transient.
    stand.script.lock().unwrap().extend([
        Next::Fail(
            429,
            "RateLimitError",
            "Exceeded rate limit for key type LIVE of 3000 requests per 60 seconds",
        ),
        Next::Fail(500, "Exception", "Internal server error"),
    ]);
    let e = c.send_sms(&req("comm-e2", "+447700900123")).await.unwrap_err();
    assert!(e.to_string().contains("RateLimitError"), "{e}");
    assert!(matches!(e.to_send_error(), SendError::Transient { .. }));
    let e = c.send_sms(&req("comm-e2", "+447700900123")).await.unwrap_err();
    assert!(matches!(e.to_send_error(), SendError::Transient { .. }), "{e}");

    // A token from a clock 2 minutes fast: Notify's AuthError.
    struct Fast;
    impl Clock for Fast {
        fn now_ms(&self) -> i64 {
            SystemClock.now_ms() + 120_000
        }
    }
    let mut cfg = NotifyConfig::new(&base, api_key());
    cfg.request_timeout = Duration::from_secs(2);
    let skewed = NotifyClient::new(cfg).unwrap().with_clock(Arc::new(Fast));
    let e = skewed.send_sms(&req("comm-e3", "+447700900123")).await.unwrap_err();
    let NotifyError::Api {
        status: 403, errors, ..
    } = &e
    else {
        panic!("{e:?}")
    };
    assert_eq!(errors[0].error, "AuthError");
    assert!(errors[0].message.contains("30 seconds"), "{errors:?}");

    // A wrong secret: signature rejected.
    let wrong = ApiKey::parse(&format!("hale-test-{SERVICE_ID}-00000000-0000-0000-0000-000000000000")).unwrap();
    let bad = NotifyClient::new(NotifyConfig::new(&base, wrong)).unwrap();
    let e = bad.send_sms(&req("comm-e4", "+447700900123")).await.unwrap_err();
    assert!(e.to_string().contains("signature"), "{e}");
    stand.violations.lock().unwrap().clear();

    // Nothing listening: not sent, transient.
    let gone = client(&format!("http://127.0.0.1:{}", free_port()));
    let e = gone.send_sms(&req("comm-e5", "+447700900123")).await.unwrap_err();
    assert!(matches!(e.to_send_error(), SendError::Transient { .. }), "{e}");
    assert!(stand.created.lock().unwrap().is_empty());
}

#[tokio::test]
async fn worker_retries_a_500_with_backoff_then_records_the_notification_id() {
    let (base, stand) = stand_in().await;
    stand
        .script
        .lock()
        .unwrap()
        .push_back(Next::Fail(500, "Exception", "Internal server error"));
    let t0 = uk("2026-10-05", 11, 0);
    let clock = ManualClock::at(t0);
    let outbox = MemOutbox::new([item("comm-r1", Channel::Sms)]);
    let adapters = Adapters {
        sms: Some(sms_adapter(&base)),
        ..Default::default()
    };
    let worker = Worker::new(outbox.clone(), adapters, policy(), clock.clone()).unwrap();
    let stop = Default::default();

    let r = worker.run_pass(&stop).await;
    assert_eq!(r.retry_scheduled, 1, "{r:?}");
    let it = outbox.get("comm-r1");
    assert_eq!(
        (it.attempts, it.next_attempt_ms, it.maybe_sent),
        (1, Some(t0 + 120_000), false)
    );
    let o = outbox.outcomes("comm-r1").pop().unwrap();
    assert_eq!(o.fhir_status(), "preparation");
    let OutcomeStatus::Retry { error, .. } = &o.status else {
        panic!("{o:?}")
    };
    assert!(
        error.contains("500") && error.contains("Internal server error"),
        "{error}"
    );

    // Not due yet.
    clock.advance_ms(60_000);
    assert_eq!(worker.run_pass(&stop).await.recorded(), 0);
    assert_eq!(posts(&stand).len(), 1);

    clock.set(t0 + 120_000);
    let r = worker.run_pass(&stop).await;
    assert_eq!(r.sent, 1, "{r:?}");
    let it = outbox.get("comm-r1");
    assert_eq!((it.state.clone(), it.attempts), (ItemState::Completed, 2));
    let OutcomeStatus::Sent { receipt } = outbox.outcomes("comm-r1").pop().unwrap().status else {
        panic!()
    };
    assert_eq!(receipt.id.as_deref(), Some("740e5834-3a29-46b4-9a6f-000000000001"));
    assert_eq!(posts(&stand).len(), 2);
    assert_eq!(stand.created.lock().unwrap().len(), 1, "one notification at Notify");
    no_violations(&stand);
}

#[tokio::test]
async fn worker_gives_up_after_max_attempts_and_lists_the_patient_for_a_call() {
    let (base, stand) = stand_in().await;
    stand
        .script
        .lock()
        .unwrap()
        .extend((0..10).map(|_| Next::Fail(503, "Exception", "Service unavailable")));
    let t0 = uk("2026-10-05", 11, 0);
    let clock = ManualClock::at(t0);
    let outbox = MemOutbox::new([item("comm-r2", Channel::Sms)]);
    let adapters = Adapters {
        sms: Some(sms_adapter(&base)),
        ..Default::default()
    };
    let mut p = policy();
    p.retry.max_attempts = 4;
    let worker = Worker::new(outbox.clone(), adapters, p, clock.clone()).unwrap();
    let stop = Default::default();
    let mut delays = Vec::new();
    for _ in 0..4 {
        let r = worker.run_pass(&stop).await;
        assert_eq!(r.recorded(), 1, "{r:?}");
        let it = outbox.get("comm-r2");
        if let Some(next) = it.next_attempt_ms {
            delays.push((next - clock.now_ms()) / 60_000);
            clock.set(next);
        }
    }
    assert_eq!(delays, [2, 4, 8], "minutes between attempts");
    let it = outbox.get("comm-r2");
    let ItemState::Failed { error } = &it.state else {
        panic!("{it:?}")
    };
    assert!(error.contains("gave up after 4 attempts"), "{error}");
    assert_eq!(it.attempts, 4);
    assert_eq!(posts(&stand).len(), 4);
    let lists = staff_lists(&outbox.all());
    assert_eq!(lists.phone_calls.len(), 1);
    assert_eq!(lists.phone_calls[0].phones, ["+447700900123", "0141 496 0999"]);
}

#[tokio::test]
async fn after_a_crash_mid_send_notify_is_asked_by_reference_and_nothing_is_sent_twice() {
    let (base, stand) = stand_in().await;
    let t0 = uk("2026-10-05", 11, 0);
    let clock = ManualClock::at(t0);
    let mut later = item("comm-c2", Channel::Sms);
    later.appointment.start_ms += 3_600_000;
    let outbox = MemOutbox::new([item("comm-c1", Channel::Sms), later]);
    let adapters = Adapters {
        sms: Some(sms_adapter(&base)),
        ..Default::default()
    };
    let p = policy();
    let stale = p.claim_stale_after.as_millis() as i64;
    let stop = Default::default();

    // comm-c2 was claimed by a worker that died before sending anything.
    let c2 = outbox.get("comm-c2");
    outbox
        .claim(
            &c2,
            &Claim {
                id: "dead".into(),
                worker: "node-2".into(),
                at_ms: t0 - 1,
                channel: Channel::Sms,
                attempt: 1,
            },
        )
        .await
        .unwrap();

    // comm-c1 is sent, and the worker dies before recording it.
    outbox.fail_records.store(1, Ordering::SeqCst);
    let first = Worker::new(outbox.clone(), adapters.clone(), p.clone(), clock.clone()).unwrap();
    let r = first.run_pass(&stop).await;
    assert_eq!(r.store_errors, 1, "{r:?}");
    assert_eq!(posts(&stand).len(), 1);
    drop(first);

    // Restart. While the claims are fresh, nothing is touched.
    let restarted = Worker::new(outbox.clone(), adapters, p, clock.clone()).unwrap();
    clock.set(t0 + stale / 2);
    assert_eq!(restarted.run_pass(&stop).await.recorded(), 0);

    clock.set(t0 + stale + 1);
    let r = restarted.run_pass(&stop).await;
    assert_eq!(r.sent, 2, "{r:?}");
    // comm-c1: found at Notify by reference, not resent.
    let OutcomeStatus::Sent { receipt } = outbox.outcomes("comm-c1").pop().unwrap().status else {
        panic!()
    };
    assert_eq!(receipt.id.as_deref(), Some("740e5834-3a29-46b4-9a6f-000000000001"));
    assert!(
        receipt.detail.contains("found at Notify by reference"),
        "{}",
        receipt.detail
    );
    // comm-c2: Notify had nothing, so it was sent once.
    let OutcomeStatus::Sent { receipt } = outbox.outcomes("comm-c2").pop().unwrap().status else {
        panic!()
    };
    assert_eq!(receipt.id.as_deref(), Some("740e5834-3a29-46b4-9a6f-000000000002"));
    let post_refs: Vec<Value> = posts(&stand).iter().map(|b| b["reference"].clone()).collect();
    assert_eq!(
        post_refs,
        [json!("comm-c1"), json!("comm-c2")],
        "each sent exactly once"
    );
    let lookups: Vec<Value> = stand
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|(m, _, _)| m == "GET")
        .map(|(_, _, q)| q.clone())
        .collect();
    assert_eq!(
        lookups,
        [
            json!({"reference": "comm-c1", "template_type": "sms"}),
            json!({"reference": "comm-c2", "template_type": "sms"})
        ]
    );
    no_violations(&stand);
}

#[tokio::test]
async fn a_timeout_after_notify_created_the_message_is_checked_not_resent() {
    let (base, stand) = stand_in().await;
    // Notify creates the notification but answers after the client has given up.
    stand
        .script
        .lock()
        .unwrap()
        .push_back(Next::CreateThenStall(Duration::from_secs(4)));
    let t0 = uk("2026-10-05", 11, 0);
    let clock = ManualClock::at(t0);
    let outbox = MemOutbox::new([item("comm-t1", Channel::Sms)]);
    let adapters = Adapters {
        sms: Some(sms_adapter(&base)),
        ..Default::default()
    };
    let worker = Worker::new(outbox.clone(), adapters, policy(), clock.clone()).unwrap();
    let stop = Default::default();

    let r = worker.run_pass(&stop).await;
    assert_eq!(r.retry_scheduled, 1, "{r:?}");
    let it = outbox.get("comm-t1");
    assert!(it.maybe_sent, "{it:?}");
    let OutcomeStatus::Retry { error, maybe_sent, .. } = outbox.outcomes("comm-t1").pop().unwrap().status else {
        panic!()
    };
    assert!(maybe_sent);
    assert!(error.contains("no response within"), "{error}");

    clock.set(it.next_attempt_ms.unwrap());
    let r = worker.run_pass(&stop).await;
    assert_eq!(r.sent, 1, "{r:?}");
    assert_eq!(posts(&stand).len(), 1, "checked by reference, not resent");
    assert_eq!(outbox.get("comm-t1").attempts, 1);
    no_violations(&stand);
}

#[tokio::test]
async fn check_by_reference_reports_failures_and_old_attempts() {
    let (base, stand) = stand_in().await;
    let a = sms_adapter(&base);
    let now = uk("2026-10-05", 11, 0);
    let mut it = item("comm-k1", Channel::Sms);
    assert_eq!(a.check(&it, now).await.unwrap(), Check::NotSent);
    stand.created.lock().unwrap().push(Stored {
        id: "n-1".into(),
        reference: "comm-k1".into(),
        kind: "sms".into(),
        status: "permanent-failure".into(),
    });
    let Check::Failed(why) = a.check(&it, now).await.unwrap() else {
        panic!()
    };
    assert!(why.contains("permanent-failure"), "{why}");
    stand.created.lock().unwrap()[0].status = "delivered".into();
    assert!(matches!(a.check(&it, now).await.unwrap(), Check::Sent(_)));
    // An attempt older than Notify's 7-day listing cannot be checked.
    it.last_claim = Some(Claim {
        id: "c".into(),
        worker: "w".into(),
        at_ms: now - 7 * 24 * 3600 * 1000,
        channel: Channel::Sms,
        attempt: 1,
    });
    assert!(matches!(a.check(&it, now).await.unwrap(), Check::Unknown(_)));
}
