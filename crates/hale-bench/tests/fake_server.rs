//! End-to-end runs of every workload against a tiny in-test FHIR-ish HTTP/1.1
//! server (hand-rolled on tokio, keep-alive, one task per connection). No
//! timing assertions: only counts and correctness figures.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hale_bench::{run, BenchError, BenchOpts, Workload};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct State {
    next_id: u64,
    /// id -> (nhs, family)
    patients: HashMap<String, (String, String)>,
    nhs_taken: HashMap<String, String>,
    /// slot id -> booked
    slots_booked: HashMap<String, bool>,
    /// Created or demo Location / Schedule / Slot: type -> (id, json).
    others: HashMap<String, Vec<(String, String)>>,
    /// Request targets, when `Behaviour::log_targets`.
    targets: Vec<String>,
}

#[derive(Clone, Copy, Default)]
struct Behaviour {
    /// Book every attempt (a broken server): the bench must report double bookings.
    allow_double_booking: bool,
    /// Require this bearer token.
    token: Option<&'static str>,
    /// Answer with `Connection: close` and close after every response.
    close_each: bool,
    /// Hold a demo board: this many patients `pat-000001`…, two Locations
    /// (a site and a clinic `loc-qeh-cardiology`), one Schedule and
    /// `DEMO_SLOTS` slots `slot-000001`….
    demo_patients: Option<u64>,
    /// Keep every request target in `State::targets`.
    log_targets: bool,
}

const DEMO_SLOTS: u64 = 40;

struct Fake {
    base_url: String,
    connections: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
    state: Arc<Mutex<State>>,
}

async fn start(behaviour: Behaviour) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(Mutex::new(State::default()));
    if behaviour.demo_patients.is_some() {
        let mut st = state.lock().unwrap();
        let others = &mut st.others;
        others.entry("Location".into()).or_default().extend([
            (
                "loc-qeh".to_string(),
                r#"{"resourceType":"Location","id":"loc-qeh"}"#.to_string(),
            ),
            (
                "loc-qeh-cardiology".to_string(),
                r#"{"resourceType":"Location","id":"loc-qeh-cardiology","partOf":{"reference":"Location/loc-qeh"}}"#
                    .to_string(),
            ),
        ]);
        others.entry("Schedule".into()).or_default().push((
            "sched-qeh-cardiology".to_string(),
            r#"{"resourceType":"Schedule","id":"sched-qeh-cardiology"}"#.to_string(),
        ));
        for n in 1..=DEMO_SLOTS {
            let id = format!("slot-{n:06}");
            let json = format!(r#"{{"resourceType":"Slot","id":"{id}"}}"#);
            others.entry("Slot".into()).or_default().push((id, json));
        }
    }
    let connections = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let (c, r, st) = (connections.clone(), requests.clone(), state.clone());
    tokio::spawn(async move {
        let state = st;
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            c.fetch_add(1, Ordering::Relaxed);
            let (state, r) = (state.clone(), r.clone());
            tokio::spawn(serve_conn(sock, state, r, behaviour));
        }
    });
    Fake {
        base_url: format!("http://{addr}"),
        connections,
        requests,
        state,
    }
}

async fn serve_conn(mut sock: TcpStream, state: Arc<Mutex<State>>, requests: Arc<AtomicU64>, behaviour: Behaviour) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // Read the head.
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i;
            }
            let mut chunk = [0u8; 4096];
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or("").split(' ');
        let method = first.next().unwrap_or("").to_string();
        let target = first.next().unwrap_or("").to_string();
        let mut content_length = 0usize;
        let mut auth = None;
        let mut host = false;
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                match k.as_str() {
                    "content-length" => content_length = v.parse().unwrap_or(0),
                    "authorization" => auth = Some(v.to_string()),
                    "host" => host = true,
                    _ => {}
                }
            }
        }
        let body_start = head_end + 4;
        while buf.len() < body_start + content_length {
            let mut chunk = [0u8; 4096];
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[body_start..body_start + content_length].to_vec();
        buf.drain(..body_start + content_length);
        requests.fetch_add(1, Ordering::Relaxed);

        let (status, resp_body) = if !host {
            (400, "missing Host".to_string())
        } else if behaviour
            .token
            .is_some_and(|t| auth.as_deref() != Some(&format!("Bearer {t}")))
        {
            (401, r#"{"resourceType":"OperationOutcome"}"#.to_string())
        } else {
            handle(&state, behaviour, &method, &target, &body)
        };
        let reason = match status {
            200 => "OK",
            201 => "Created",
            401 => "Unauthorized",
            404 => "Not Found",
            409 => "Conflict",
            _ => "Other",
        };
        let close = if behaviour.close_each {
            "connection: close\r\n"
        } else {
            ""
        };
        let resp = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/fhir+json\r\n{close}content-length: {}\r\n\r\n{resp_body}",
            resp_body.len()
        );
        if sock.write_all(resp.as_bytes()).await.is_err() || behaviour.close_each {
            return;
        }
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

fn handle(state: &Mutex<State>, behaviour: Behaviour, method: &str, target: &str, body: &[u8]) -> (u16, String) {
    let mut st = state.lock().unwrap();
    if behaviour.log_targets {
        st.targets.push(target.to_string());
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let count_only = query.split('&').any(|p| p == "_count=0");
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        ("GET", ["metadata"]) => (200, r#"{"resourceType":"CapabilityStatement"}"#.into()),
        ("POST", ["Patient"]) => {
            let nhs = json["identifier"][0]["value"].as_str().unwrap_or("").to_string();
            let family = json["name"][0]["family"].as_str().unwrap_or("").to_string();
            if nhs.len() != 10 || st.nhs_taken.contains_key(&nhs) {
                return (409, r#"{"resourceType":"OperationOutcome"}"#.into());
            }
            st.next_id += 1;
            let id = format!("p{}", st.next_id);
            st.nhs_taken.insert(nhs.clone(), id.clone());
            st.patients.insert(id.clone(), (nhs, family));
            (201, format!(r#"{{"resourceType":"Patient","id":"{id}"}}"#))
        }
        ("GET", ["Patient", id]) => match st.patients.get(*id) {
            Some((nhs, family)) => (200, patient_json(id, nhs, family)),
            None => match demo_number(behaviour, id) {
                Some(n) => (200, patient_json(id, &demo_nhs(n), "Demo")),
                None => (404, "{}".into()),
            },
        },
        ("GET", ["Patient", id, "$everything"]) => {
            if st.patients.contains_key(*id) || demo_number(behaviour, id).is_some() {
                (200, r#"{"resourceType":"Bundle","type":"searchset","entry":[]}"#.into())
            } else {
                (404, "{}".into())
            }
        }
        ("GET", ["Patient"]) if count_only => {
            let total = st.patients.len() as u64 + behaviour.demo_patients.unwrap_or(0);
            (
                200,
                format!(r#"{{"resourceType":"Bundle","type":"searchset","total":{total}}}"#),
            )
        }
        ("GET", ["Patient"]) => {
            let mut entries = Vec::new();
            for pair in query.split('&') {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let v = v.replace("%7C", "|");
                match k {
                    "identifier" => {
                        let nhs = v.rsplit('|').next().unwrap_or("");
                        if let Some(id) = st.nhs_taken.get(nhs) {
                            let (n, f) = &st.patients[id];
                            entries.push(patient_json(id, n, f));
                        }
                    }
                    "family" => {
                        for (id, (n, f)) in &st.patients {
                            if f == &v && entries.len() < 10 {
                                entries.push(patient_json(id, n, f));
                            }
                        }
                    }
                    _ => {}
                }
            }
            (
                200,
                format!(
                    r#"{{"resourceType":"Bundle","type":"searchset","entry":[{}]}}"#,
                    entries.join(",")
                ),
            )
        }
        ("POST", [rt @ ("Location" | "Schedule" | "Slot")]) => {
            st.next_id += 1;
            let id = format!("x{}", st.next_id);
            if *rt == "Slot" {
                st.slots_booked.insert(id.clone(), false);
            }
            let json = format!(r#"{{"resourceType":"{rt}","id":"{id}"}}"#);
            st.others.entry(rt.to_string()).or_default().push((id, json.clone()));
            (201, json)
        }
        ("GET", [rt @ ("Location" | "Schedule" | "Slot"), id]) => {
            match st.others.get(*rt).and_then(|v| v.iter().find(|(i, _)| i == id)) {
                Some((_, json)) => (200, json.clone()),
                None => (404, "{}".into()),
            }
        }
        (
            "GET",
            [rt @ ("Location" | "Schedule" | "Slot" | "Appointment" | "Observation" | "DiagnosticReport"
            | "AllergyIntolerance" | "DocumentReference" | "Condition" | "MedicationRequest" | "Flag"
            | "Procedure" | "Immunization")],
        ) => {
            let listed = st.others.get(*rt).map(Vec::as_slice).unwrap_or_default();
            if count_only {
                return (
                    200,
                    format!(
                        r#"{{"resourceType":"Bundle","type":"searchset","total":{}}}"#,
                        listed.len()
                    ),
                );
            }
            let entries: Vec<String> = listed
                .iter()
                .take(100)
                .map(|(_, json)| format!(r#"{{"resource":{json},"search":{{"mode":"match"}}}}"#))
                .collect();
            (
                200,
                format!(
                    r#"{{"resourceType":"Bundle","type":"searchset","entry":[{}]}}"#,
                    entries.join(",")
                ),
            )
        }
        ("POST", ["Appointment"]) => {
            let slot = json["slot"][0]["reference"]
                .as_str()
                .unwrap_or("")
                .trim_start_matches("Slot/")
                .to_string();
            let patient_ok = json["participant"][0]["actor"]["reference"]
                .as_str()
                .and_then(|r| r.strip_prefix("Patient/"))
                .is_some_and(|id| st.patients.contains_key(id));
            let Some(booked) = st.slots_booked.get_mut(&slot) else {
                return (422, "unknown slot".into());
            };
            if !patient_ok {
                return (422, "unknown patient".into());
            }
            if *booked && !behaviour.allow_double_booking {
                return (409, r#"{"resourceType":"OperationOutcome"}"#.into());
            }
            *booked = true;
            st.next_id += 1;
            (
                201,
                format!(r#"{{"resourceType":"Appointment","id":"a{}"}}"#, st.next_id),
            )
        }
        _ => (404, "{}".into()),
    }
}

/// `n` when `id` is `pat-<n>` and the fake holds demo patient `n`.
fn demo_number(behaviour: Behaviour, id: &str) -> Option<u64> {
    let n: u64 = id.strip_prefix("pat-")?.parse().ok()?;
    (1..=behaviour.demo_patients?).contains(&n).then_some(n)
}

fn demo_nhs(n: u64) -> String {
    format!("998{n:07}")
}

fn patient_json(id: &str, nhs: &str, family: &str) -> String {
    format!(
        r#"{{"resourceType":"Patient","id":"{id}","identifier":[{{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"{nhs}"}}],"name":[{{"family":"{family}","given":["Ann"]}}]}}"#
    )
}

fn opts(base_url: &str) -> BenchOpts {
    BenchOpts {
        base_url: base_url.to_string(),
        connections: 3,
        duration_s: 1,
        warmup_s: 0,
        seed_patients: 40,
        setup_connections: 2,
        requests_max: Some(300),
        book_slots: 50,
        ..BenchOpts::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_uses_exactly_the_requested_connections() {
    let fake = start(Behaviour::default()).await;
    let report = run(&opts(&fake.base_url), Workload::Read).await.unwrap();
    assert_eq!(report.workloads.len(), 1);
    let w = &report.workloads[0];
    assert_eq!(w.name, "read");
    assert_eq!(w.connections, 3);
    assert!(w.ok > 0, "{}", report.to_table());
    assert_eq!(w.errors_total, 0, "{}", report.to_table());
    assert_eq!(w.reconnects, 0);
    assert!(w.requests <= 300, "requests_max caps the timed phase");
    assert_eq!(report.seeded_patients, 40);
    // 1 preflight + 2 setup + 3 load connections, none re-opened.
    assert_eq!(fake.connections.load(Ordering::Relaxed), 6);
    assert!(w.latency.p50_ms.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_workloads_run_and_report_no_double_bookings() {
    let fake = start(Behaviour::default()).await;
    let report = run(&opts(&fake.base_url), Workload::All).await.unwrap();
    let names: Vec<&str> = report.workloads.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "create",
            "read",
            "search-identifier",
            "search-family",
            "book",
            "search-mix"
        ]
    );
    let table = report.to_table();
    for w in &report.workloads {
        assert!(w.ok > 0, "{} had no successes\n{table}", w.name);
        assert_eq!(w.errors_total, 0, "{} had errors\n{table}", w.name);
    }
    for name in ["search-identifier", "search-family"] {
        let w = report.workloads.iter().find(|w| w.name == name).unwrap();
        assert_eq!(w.misses, Some(0), "{name}\n{table}");
    }
    let book = report.workloads.iter().find(|w| w.name == "book").unwrap();
    let b = book.booking.as_ref().unwrap();
    assert_eq!(b.slots, 50);
    assert_eq!(b.contenders_per_slot, 2);
    assert_eq!(b.double_bookings, 0, "{table}");
    assert!(b.slots_booked <= 50);
    // Every 201 is for a distinct slot.
    assert_eq!(book.ok, b.slots_booked, "{table}");
    // After Book the server has a Location, Schedule and Slots: every kind ran.
    let mix = report.workloads.iter().find(|w| w.name == "search-mix").unwrap();
    let kinds = mix.search_kinds.as_ref().unwrap();
    assert_eq!(kinds.len(), 20, "{table}");
    let json = report.to_json();
    assert_eq!(json["workloads"][4]["booking"]["double_bookings"], 0);
    assert_eq!(json["workloads"][5]["search_kinds"].as_array().unwrap().len(), 20);
    assert!(fake.requests.load(Ordering::Relaxed) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn book_reports_a_server_that_double_books() {
    let fake = start(Behaviour {
        allow_double_booking: true,
        ..Behaviour::default()
    })
    .await;
    let o = BenchOpts {
        book_slots: 10,
        requests_max: None,
        ..opts(&fake.base_url)
    };
    let report = run(&o, Workload::Book).await.unwrap();
    let w = &report.workloads[0];
    let b = w.booking.as_ref().unwrap();
    // 10 slots × 2 contenders, all 201: every slot booked twice; the race
    // then runs dry and stops before the deadline.
    assert_eq!(b.attempts, 20);
    assert_eq!(b.slots_booked, 10);
    assert_eq!(b.double_bookings, 10, "{}", report.to_table());
    assert_eq!(b.conflicts, 0);
    assert!(b.slots_exhausted);
    assert!(report.to_table().contains("double bookings: 10"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_is_sent_and_a_missing_one_is_explained() {
    let fake = start(Behaviour {
        token: Some("s3cret"),
        ..Behaviour::default()
    })
    .await;
    let err = run(&opts(&fake.base_url), Workload::Create).await.unwrap_err();
    assert!(matches!(err, BenchError::Unauthorized { status: 401, .. }), "{err}");
    assert!(err.to_string().contains("--token"), "{err}");

    let o = BenchOpts {
        token: Some("s3cret".into()),
        ..opts(&fake.base_url)
    };
    let report = run(&o, Workload::Create).await.unwrap();
    assert!(report.workloads[0].ok > 0);
    assert_eq!(report.workloads[0].errors_total, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_says_to_start_the_server() {
    // Bind then drop to get a port with (very probably) nothing listening.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let err = run(&opts(&url), Workload::Read).await.unwrap_err();
    assert!(matches!(err, BenchError::Connect { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&url), "{msg}");
    assert!(msg.contains("is `hale serve` running?"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_options_fail_before_connecting() {
    let err = run(
        &BenchOpts {
            base_url: "https://127.0.0.1:1".into(),
            ..BenchOpts::default()
        },
        Workload::Read,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, BenchError::BadUrl { .. }), "{err}");
    let err = run(
        &BenchOpts {
            connections: 0,
            ..BenchOpts::default()
        },
        Workload::Read,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, BenchError::InvalidOption { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_to_the_deadline_after_warm_up() {
    let fake = start(Behaviour::default()).await;
    let o = BenchOpts {
        warmup_s: 1,
        duration_s: 1,
        requests_max: None,
        ..opts(&fake.base_url)
    };
    let report = run(&o, Workload::SearchFamily).await.unwrap();
    let w = &report.workloads[0];
    assert!(w.ok > 0, "{}", report.to_table());
    assert_eq!(w.errors_total, 0, "{}", report.to_table());
    assert!(w.notes.is_empty(), "{:?}", w.notes);
    // Warm-up requests were sent but not counted.
    assert!(fake.requests.load(Ordering::Relaxed) > w.requests + 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_closing_idle_connections_is_not_an_error() {
    let fake = start(Behaviour {
        close_each: true,
        ..Behaviour::default()
    })
    .await;
    let o = BenchOpts {
        requests_max: Some(50),
        ..opts(&fake.base_url)
    };
    let report = run(&o, Workload::Read).await.unwrap();
    let w = &report.workloads[0];
    assert_eq!(w.ok, 50, "{}", report.to_table());
    assert_eq!(w.errors_total, 0, "{}", report.to_table());
    assert!(w.reconnects > 0);
}

/// Pulls the number out of "<marker>NNNNNN" occurrences in `target`.
fn numbers_after(target: &str, marker: &str) -> Vec<u64> {
    target
        .match_indices(marker)
        .filter_map(|(i, _)| {
            let digits: String = target[i + marker.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_mix_against_a_demo_board_uses_its_ids() {
    let fake = start(Behaviour {
        demo_patients: Some(25),
        log_targets: true,
        ..Behaviour::default()
    })
    .await;
    let o = BenchOpts {
        seed_patients: 0,
        requests_max: Some(260),
        ..opts(&fake.base_url)
    };
    let report = run(&o, Workload::SearchMix).await.unwrap();
    let table = report.to_table();
    assert_eq!(report.seeded_patients, 0, "demo data: nothing seeded\n{table}");
    let w = &report.workloads[0];
    assert_eq!(w.name, "search-mix");
    assert!(w.ok > 0, "{table}");
    assert_eq!(w.errors_total, 0, "{table}");
    assert!(w.requests <= 260);
    let kinds = w.search_kinds.as_ref().unwrap();
    assert_eq!(kinds.len(), 20, "{table}");
    assert_eq!(kinds.iter().map(|k| k.requests).sum::<u64>(), w.requests);
    assert_eq!(kinds.iter().map(|k| k.ok).sum::<u64>(), w.ok);
    // 260 requests over a 20-kind cycle on 3 connections: every kind ran.
    for k in kinds {
        assert!(k.requests > 0, "{} never ran\n{table}", k.kind);
    }
    assert!(table.contains("by kind, slowest p99 first"), "{table}");
    assert!(
        w.notes.iter().any(|n| n.starts_with("slowest search kind by p99")),
        "{:?}",
        w.notes
    );
    assert!(w.notes.iter().any(|n| n.contains("25 demo patients")), "{:?}", w.notes);

    let targets = fake.state.lock().unwrap().targets.clone();
    let timed: Vec<&String> = targets
        .iter()
        .filter(|t| t.contains('?') || t.ends_with("$everything"))
        .collect();
    let all = targets.join("\n");
    for n in numbers_after(&all, "Patient/pat-") {
        assert!((1..=25).contains(&n), "patient {n} is not on the board");
    }
    for n in numbers_after(&all, "Slot/slot-") {
        assert!((1..=40).contains(&n), "slot {n} is not on the board");
    }
    for n in numbers_after(&all, "nhs-number%7C") {
        assert!(
            (9_980_000_001..=9_980_000_025).contains(&n),
            "NHS number {n} is not a demo patient's"
        );
    }
    for needle in [
        "/Appointment?date=ge",
        "&location=Location/loc-qeh-cardiology&_count=50",
        "/Slot?schedule=Schedule/sched-qeh-cardiology&status=free&start=ge",
        "/Appointment?slot=Slot/slot-",
        "&_include=Appointment:patient",
        "/Observation?patient=Patient/pat-",
        "code=http://loinc.org%7C",
        "/Patient?family=Dem&_count=10",
        "/Patient?name=Ann&birthdate=ge",
        "/Patient?phone=07700900",
        "/$everything",
    ] {
        assert!(
            timed.iter().any(|t| t.contains(needle)),
            "no request with {needle}:\n{all}"
        );
    }
    assert!(!all.contains("loc-qeh&"), "the site Location is not a clinic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_mix_without_demo_data_searches_seeded_patients() {
    let fake = start(Behaviour::default()).await;
    let report = run(&opts(&fake.base_url), Workload::SearchMix).await.unwrap();
    let table = report.to_table();
    assert_eq!(report.seeded_patients, 40, "{table}");
    let w = &report.workloads[0];
    assert!(w.ok > 0, "{table}");
    assert_eq!(w.errors_total, 0, "{table}");
    // No Location, Schedule or Slot on this server: those kinds are left out.
    let kinds: Vec<&str> = w
        .search_kinds
        .as_ref()
        .unwrap()
        .iter()
        .map(|k| k.kind.as_str())
        .collect();
    assert_eq!(kinds.len(), 17, "{kinds:?}");
    for missing in ["appointment-clinic-day", "slot-free", "appointment-slot"] {
        assert!(!kinds.contains(&missing), "{kinds:?}");
    }
    assert!(w.notes.iter().any(|n| n.contains("seeded patients")), "{:?}", w.notes);
    assert!(
        w.notes
            .iter()
            .any(|n| n.starts_with("not run") && n.contains("slot-free")),
        "{:?}",
        w.notes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_mix_with_no_patients_at_all_says_what_to_do() {
    let fake = start(Behaviour::default()).await;
    let o = BenchOpts {
        seed_patients: 0,
        ..opts(&fake.base_url)
    };
    let err = run(&o, Workload::SearchMix).await.unwrap_err();
    assert!(matches!(err, BenchError::InvalidOption { .. }), "{err}");
    assert!(err.to_string().contains("hale serve --demo"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_mix_with_pinned_patients_asks_only_for_them() {
    let fake = start(Behaviour {
        demo_patients: Some(25),
        log_targets: true,
        ..Behaviour::default()
    })
    .await;
    let o = BenchOpts {
        seed_patients: 0,
        requests_max: Some(40),
        mix_kinds: vec!["patient-everything".into()],
        mix_patients: vec!["pat-000007".into()],
        ..opts(&fake.base_url)
    };
    let report = run(&o, Workload::SearchMix).await.unwrap();
    let w = &report.workloads[0];
    assert!(w.ok > 0, "{}", report.to_table());
    assert!(w.notes.iter().any(|n| n.contains("pat-000007")), "{:?}", w.notes);
    let targets = fake.state.lock().unwrap().targets.clone();
    let everything: Vec<&String> = targets.iter().filter(|t| t.ends_with("$everything")).collect();
    assert!(!everything.is_empty());
    for t in everything {
        assert_eq!(t, "/Patient/pat-000007/$everything");
    }
}
