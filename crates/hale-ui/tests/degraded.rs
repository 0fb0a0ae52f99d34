//! Degraded mode, end to end in one process: three data-centre voters and a
//! hospital-site learner, each a real node with its raft port on loopback.
//! The site is cut off from the voters; its UI says so on every page, keeps
//! signing people in, saves a note in the site journal and shows it as
//! waiting to sync; after the heal the note reaches the data centres once and
//! the banner goes.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use hale_server::auth::Principal;
use hale_server::config::{demo_tokens, Config, Role};
use hale_store::accounts::AccountOp;
use scraper::{Html, Selector};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

const WAIT_MS: u64 = 60_000;

struct N {
    _dir: tempfile::TempDir,
    app: Arc<hale_server::App>,
    fhir: Router,
    ui: Router,
}

async fn node(id: u64, site: &str) -> N {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config {
        data: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".into(),
        ..Config::default()
    };
    cfg.auth.tokens = demo_tokens();
    cfg.cluster.node_id = id;
    cfg.cluster.listen = Some("127.0.0.1:0".into());
    cfg.cluster.bootstrap_single = false;
    cfg.cluster.site = site.into();
    cfg.cluster.write_timeout_ms = 3_000;
    cfg.cluster.leader_wait_ms = 2_000;
    cfg.cluster.read_timeout_ms = 1_000;
    let node = hale_server::Node::start(cfg, format!("http://127.0.0.1:{}", 20000 + id))
        .await
        .unwrap();
    let app = node.app.clone();
    let fhir = node.router();
    let ui = hale_ui::router(hale_ui::Ui::new(app.clone()).unwrap()).merge(node.router());
    // The drainer replays the site journal once the cluster is back.
    hale_server::offline::spawn_drainer(app.clone());
    std::mem::forget(node);
    N {
        _dir: dir,
        app,
        fhir,
        ui,
    }
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_millis(WAIT_MS),
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn call(r: &Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
    let resp = r.clone().oneshot(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 64 << 20).await.unwrap();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

async fn admin(r: &Router, method: &str, uri: &str, body: Value) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, "Bearer demo-admin")
        .header(header::CONTENT_TYPE, "application/fhir+json")
        .body(if body.is_null() {
            Body::empty()
        } else {
            Body::from(body.to_string())
        })
        .unwrap();
    let (s, _, b) = call(r, req).await;
    (s, serde_json::from_str(&b).unwrap_or(Value::Null))
}

struct Browser {
    cookies: Vec<(String, String)>,
}

impl Browser {
    async fn send(&mut self, r: &Router, req: Request<Body>) -> (StatusCode, String, String) {
        let resp = r.clone().oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        for v in parts.headers.get_all(header::SET_COOKIE) {
            let c = v.to_str().unwrap();
            let (kv, _) = c.split_once(';').unwrap_or((c, ""));
            let (k, val) = kv.split_once('=').unwrap();
            self.cookies.retain(|(n, _)| n != k);
            if !val.is_empty() {
                self.cookies.push((k.into(), val.into()));
            }
        }
        let loc = parts
            .headers
            .get(header::LOCATION)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let bytes = axum::body::to_bytes(body, 64 << 20).await.unwrap();
        (parts.status, loc, String::from_utf8_lossy(&bytes).into_owned())
    }

    fn cookie(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn get(&mut self, r: &Router, uri: &str) -> (StatusCode, String, String) {
        let req = Request::get(uri)
            .header(header::COOKIE, self.cookie())
            .body(Body::empty())
            .unwrap();
        self.send(r, req).await
    }

    async fn post(&mut self, r: &Router, uri: &str, form: &[(&str, &str)]) -> (StatusCode, String, String) {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let req = Request::post(uri)
            .header(header::COOKIE, self.cookie())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header("sec-fetch-site", "same-origin")
            .body(Body::from(body))
            .unwrap();
        self.send(r, req).await
    }
}

fn first(html: &str, css: &str) -> Option<String> {
    let d = Html::parse_document(html);
    let sel = Selector::parse(css).unwrap();
    d.select(&sel).next().map(|e| {
        e.text()
            .collect::<Vec<_>>()
            .join(" ")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    })
}

fn attr(html: &str, css: &str, a: &str) -> Option<String> {
    let d = Html::parse_document(html);
    let sel = Selector::parse(css).unwrap();
    d.select(&sel)
        .next()
        .and_then(|e| e.value().attr(a).map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_site_shows_the_banner_signs_in_and_saves_a_note_that_syncs() {
    let nodes = [
        node(1, "dc-a").await,
        node(2, "dc-b").await,
        node(3, "dc-c").await,
        node(4, "QEH").await,
    ];
    let (leader, site) = (&nodes[0], &nodes[3]);
    let (s, v) = admin(&leader.fhir, "POST", "/cluster/init", json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let r1 = leader.app.raft.clone();
    wait_for("node 1 to lead", || r1.metrics().current_leader == Some(1)).await;
    for n in &nodes[1..] {
        let body = json!({"node_id": n.app.raft.id, "raft_addr": n.app.raft.me.raft_addr,
                          "api_url": format!("http://127.0.0.1:{}", 20000 + n.app.raft.id), "site": n.app.raft.me.site});
        let (s, v) = admin(&leader.fhir, "POST", "/cluster/learners", body).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    for id in [2u64, 3] {
        let (s, v) = admin(&leader.fhir, "POST", "/cluster/promote", json!({"node_id": id})).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    // An account, added once at the data centres, replicated to the site.
    let password = "site-nurse-password";
    let hash = hale_server::accounts::hash_password(password).unwrap();
    let admin_p = Principal::new("admin.demo", Role::Admin);
    hale_server::accounts::propose(
        &leader.app,
        admin_p.actor(),
        AccountOp::Add {
            user: "nurse.qeh".into(),
            role: "clinician".into(),
            name: "Nurse at QEH".into(),
            password_hash: hash,
        },
    )
    .await
    .unwrap()
    .unwrap();
    let (s, p) = admin(
        &leader.fhir,
        "POST",
        "/Patient",
        json!({"resourceType": "Patient", "name": [{"family": "Offline", "given": ["Ada"]}], "birthDate": "1980-02-03"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    let pid = p["id"].as_str().unwrap().to_string();
    let all: Vec<_> = nodes.iter().map(|n| n.app.raft.clone()).collect();
    let lr = r1.clone();
    wait_for("replicas to converge", || {
        let t = lr.metrics().last_log_index.unwrap_or(0);
        all.iter().all(|r| r.applied_index() >= t)
    })
    .await;

    let mut b = Browser { cookies: vec![] };
    // In touch: no banner.
    let (_, _, page) = b.get(&site.ui, "/ui/sign-in").await;
    assert!(first(&page, "#degraded-banner").is_none());

    // Cut the site off. Signing in needs no quorum: the account is the
    // site's replicated copy and the session is the node's own.
    site.app
        .raft
        .faults()
        .isolated
        .store(true, std::sync::atomic::Ordering::Release);
    let sr = site.app.raft.clone();
    wait_for("the site to see it is cut off", || sr.cut_off().is_some()).await;
    let (_, _, page) = b.get(&site.ui, "/ui/sign-in").await;
    let token = attr(&page, "input[name=csrf]", "value").unwrap();
    let banner = first(&page, "#degraded-text").expect("banner on the sign-in page");
    assert!(banner.starts_with("Data as of "), "{banner}");
    let (s, loc, body) = b
        .post(
            &site.ui,
            "/ui/sign-in",
            &[("csrf", &token), ("user", "nurse.qeh"), ("password", password)],
        )
        .await;
    assert_eq!(s, StatusCode::SEE_OTHER, "{body}");
    assert_eq!(loc, "/ui/");
    let (s, _, page) = b.get(&site.ui, &format!("/ui/patient/{pid}")).await;
    assert_eq!(s, StatusCode::OK, "{page}");
    assert_eq!(
        first(&page, "#degraded-banner h2").unwrap(),
        "Cut off from the data centres."
    );
    // The nurse has no legitimate relationship with this new patient (no
    // appointment at QEH): the record offers break-glass, which works while
    // cut off (the episode is this node's, its audit spooled to disk).
    assert!(first(&page, "#break-glass").is_some(), "break-glass offered: {page}");
    assert!(
        first(&page, "#section-notes").is_none(),
        "no clinical sections without it"
    );
    let csrf = attr(&page, "#break-glass input[name=csrf]", "value").unwrap();
    let (s, loc, body) = b
        .post(
            &site.ui,
            &format!("/ui/patient/{pid}/break-glass"),
            &[("csrf", &csrf), ("reason", "short")],
        )
        .await;
    assert_eq!(s, StatusCode::SEE_OTHER, "{body}");
    assert!(loc.contains("btg-error"), "{loc}");
    let (s, loc, body) = b
        .post(
            &site.ui,
            &format!("/ui/patient/{pid}/break-glass"),
            &[
                ("csrf", &csrf),
                ("reason", "Collapsed in the waiting room, no records here"),
            ],
        )
        .await;
    assert_eq!(s, StatusCode::SEE_OTHER, "{body}");
    assert!(loc.contains("saved=break-glass"), "{loc}");
    let (_, _, page) = b.get(&site.ui, &format!("/ui/patient/{pid}")).await;
    assert!(first(&page, "#break-glass").is_none(), "{page}");
    let text = first(&page, "#degraded-text").unwrap();
    let re = regex_lite(&text);
    assert!(re, "banner text: {text}");
    assert!(text.ends_with("0 changes saved here, waiting to sync."), "{text}");
    // Error pages carry the banner too.
    let (s, _, page) = b.get(&site.ui, "/ui/patient/no-such-patient").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(first(&page, "#degraded-text").is_some(), "banner on an error page");
    let (_, _, page) = b.get(&site.ui, &format!("/ui/patient/{pid}")).await;
    // Sections say they are the site's copy.
    let asof = first(&page, "#section-notes .hale-asof").unwrap();
    assert!(asof.starts_with("This site's copy"), "{asof}");

    // A note saved while cut off goes to the site journal and shows as pending.
    let csrf = attr(&page, "form input[name=csrf]", "value").unwrap();
    let (s, loc, body) = b
        .post(
            &site.ui,
            &format!("/ui/patient/{pid}/note"),
            &[
                ("csrf", &csrf),
                ("title", "Cut-off note"),
                ("note", "Seen at QEH while cut off"),
            ],
        )
        .await;
    assert_eq!(s, StatusCode::SEE_OTHER, "{body}");
    assert!(loc.contains("saved=pending"), "{loc}");
    let (_, _, page) = b.get(&site.ui, &loc).await;
    assert!(first(&page, ".hale-flash").unwrap().contains("waiting to sync"));
    let notes = first(&page, "#section-notes").unwrap();
    assert!(notes.contains("Cut-off note: Seen at QEH while cut off"), "{notes}");
    assert!(notes.contains("Saved here, waiting to sync"), "{notes}");
    assert!(first(&page, "#degraded-text").unwrap().contains("1 change saved here"));

    // The same field changed on both sides while cut off: a conflict for a person.
    let mut pat = p.clone();
    pat["telecom"] = json!([{"system": "phone", "value": "0141 496 0001"}]);
    let req = Request::put(format!("/Patient/{pid}"))
        .header(header::AUTHORIZATION, "Bearer demo-admin")
        .header(header::CONTENT_TYPE, "application/fhir+json")
        .header("x-hale-offline", "accept")
        .header(header::IF_MATCH, "W/\"1\"")
        .body(Body::from(pat.to_string()))
        .unwrap();
    let (s, _, body) = call(&site.fhir, req).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    let mut there = p.clone();
    there["telecom"] = json!([{"system": "phone", "value": "0141 496 0002"}]);
    let (s, v) = admin(&leader.fhir, "PUT", &format!("/Patient/{pid}"), there).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // Heal: the journal drains through the leader, once; the banner goes.
    site.app
        .raft
        .faults()
        .isolated
        .store(false, std::sync::atomic::Ordering::Release);
    let app = site.app.clone();
    wait_for("the site journal to drain", || {
        app.offline.pending() == 0 && app.raft.cut_off().is_none()
    })
    .await;
    let (s, found) = admin(
        &leader.fhir,
        "GET",
        &format!("/DocumentReference?patient=Patient/{pid}"),
        Value::Null,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let docs: Vec<&Value> = found["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["search"]["mode"] == "match")
        .collect();
    assert_eq!(docs.len(), 1, "the note reached the data centres once: {found}");
    let lr = r1.clone();
    let sr = site.app.raft.clone();
    wait_for("the site to catch up", || {
        sr.applied_index() >= lr.metrics().last_log_index.unwrap_or(0)
    })
    .await;
    let (_, _, page) = b.get(&site.ui, &format!("/ui/patient/{pid}")).await;
    assert!(first(&page, "#degraded-banner").is_none(), "banner after the heal");
    let notes = first(&page, "#section-notes").unwrap();
    assert!(notes.contains("Cut-off note"), "{notes}");
    assert!(!notes.contains("waiting to sync"), "synced: {notes}");
    let review = first(&page, "#needs-review").expect("the clash is shown on the record");
    assert!(review.contains("1 change saved at a cut-off site clashed"), "{review}");
    assert!(review.contains("QEH"), "{review}");

    // The break-glass episode and the accesses under it reached the data
    // centres once: one start event, each access with purpose BTG.
    let app = site.app.clone();
    wait_for("the site's audit spool to drain", || app.audit.spooled_batches() == 0).await;
    let btg_events = || async {
        let (s, v) = admin(
            &leader.fhir,
            "GET",
            &format!("/AuditEvent?patient=Patient/{pid}&purpose=BTG&_count=200"),
            Value::Null,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["entry"].as_array().cloned().unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut events = btg_events().await;
    while std::time::Instant::now() < deadline
        && !events.iter().any(|e| e["resource"]["subtype"][0]["code"] == "110127")
    {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        events = btg_events().await;
    }
    let starts = events
        .iter()
        .filter(|e| e["resource"]["subtype"][0]["code"] == "110127")
        .count();
    assert_eq!(starts, 1, "one break-glass start at the data centres: {events:?}");
    assert!(events.len() >= 2, "accesses under break-glass audited: {events:?}");
    for e in &events {
        assert_eq!(e["resource"]["agent"][0]["who"]["display"], "nurse.qeh");
    }
    // Nothing lands twice when the spool is retried.
    tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
    let again = btg_events().await;
    let starts_again = again
        .iter()
        .filter(|e| e["resource"]["subtype"][0]["code"] == "110127")
        .count();
    assert_eq!(starts_again, 1, "{again:?}");
}

/// `Data as of HH:MM. ...`
fn regex_lite(text: &str) -> bool {
    let Some(rest) = text.strip_prefix("Data as of ") else {
        return false;
    };
    let b = rest.as_bytes();
    b.len() > 6
        && b[0].is_ascii_digit()
        && b[1].is_ascii_digit()
        && b[2] == b':'
        && b[3].is_ascii_digit()
        && b[4].is_ascii_digit()
        && b[5] == b'.'
}
