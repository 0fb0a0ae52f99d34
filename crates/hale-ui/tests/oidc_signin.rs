//! The web UI signs staff in through a real OpenID provider (panva's
//! `oidc-provider`, `tests/oidc/idp.mjs`, on loopback): authorisation code
//! with PKCE, driven over HTTP by a cookie-keeping client through the
//! provider's own login form. Then: the session opens pages as the role the
//! token maps to; a replayed, tampered or unbound state, a code presented
//! with another sign-in's verifier, a denied sign-in and an unmapped role
//! are refused and open no session; a session outlives the provider going
//! away (cached keys) while a new sign-in needs it; and a write from a
//! provider session on a site replica is forwarded to the leader with the
//! user's access token, which the leader checks itself.
//!
//! Needs Node.js and `tests/oidc/node_modules` (`tools/test.sh` runs `npm ci`).

#[path = "../../../tests/oidc/idp.rs"]
mod idp;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use hale_server::config::{demo_tokens, Config};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use idp::{free_port, Idp};
use scraper::{Html, Selector};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

const AUDIENCE: &str = "https://hale.test/fhir";

/// One HTTP answer.
#[derive(Debug)]
struct Page {
    url: String,
    status: u16,
    headers: hyper::HeaderMap,
    body: String,
}

impl Page {
    fn location(&self) -> Option<String> {
        self.headers
            .get(header::LOCATION)
            .map(|v| v.to_str().unwrap().to_string())
    }

    fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    /// Whether this answer opened a web-UI session.
    fn opened_session(&self) -> bool {
        self.set_cookies()
            .iter()
            .any(|c| c.starts_with("hale_session=") && !c.starts_with("hale_session=;"))
    }

    fn text(&self, css: &str) -> Option<String> {
        let d = Html::parse_document(&self.body);
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

    fn attr(&self, css: &str, a: &str) -> Option<String> {
        let d = Html::parse_document(&self.body);
        let sel = Selector::parse(css).unwrap();
        d.select(&sel)
            .next()
            .and_then(|e| e.value().attr(a).map(str::to_string))
    }
}

/// A browser: cookies per host and port, one connection per request.
#[derive(Default)]
struct Browser {
    jar: HashMap<String, Vec<(String, String)>>,
}

fn split_url(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("http URL");
    match rest.find('/') {
        Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
        None => (rest.to_string(), "/".to_string()),
    }
}

fn absolute(base: &str, loc: &str) -> String {
    if loc.starts_with("http://") {
        loc.to_string()
    } else {
        let (host, _) = split_url(base);
        format!("http://{host}{loc}")
    }
}

impl Browser {
    async fn send(&mut self, method: &str, url: &str, form: Option<&[(&str, &str)]>) -> Page {
        let (host, path) = split_url(url);
        let stream = tokio::net::TcpStream::connect(&host).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let cookies = self
            .jar
            .get(&host)
            .map(|c| c.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; "))
            .unwrap_or_default();
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(&path)
            .header("host", &host)
            .header("accept", "text/html")
            .header("connection", "close");
        if !cookies.is_empty() {
            req = req.header("cookie", cookies);
        }
        let body = match form {
            Some(f) => {
                req = req
                    .header("content-type", "application/x-www-form-urlencoded")
                    .header("origin", format!("http://{host}"))
                    .header("sec-fetch-site", "same-origin");
                form_urlencoded::Serializer::new(String::new()).extend_pairs(f).finish()
            }
            None => String::new(),
        };
        let resp = sender
            .send_request(req.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e:?}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        for v in headers.get_all(header::SET_COOKIE) {
            let c = v.to_str().unwrap();
            let (kv, attrs) = c.split_once(';').unwrap_or((c, ""));
            let (k, val) = kv.split_once('=').unwrap();
            let gone = val.is_empty() || attrs.to_ascii_lowercase().contains("max-age=0") || attrs.contains("1970");
            let jar = self.jar.entry(host.clone()).or_default();
            jar.retain(|(n, _)| n != k);
            if !gone {
                jar.push((k.to_string(), val.to_string()));
            }
        }
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        Page {
            url: url.to_string(),
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn get(&mut self, url: &str) -> Page {
        self.send("GET", url, None).await
    }

    /// Follow redirects and the provider's interaction forms (login with
    /// `login` and any password, then consent if asked) until the provider
    /// sends the browser to `stop_at`; answers that URL without visiting it.
    async fn through_provider(&mut self, start: &str, login: &str, stop_at: &str) -> String {
        let mut page = self.get(start).await;
        for _ in 0..20 {
            if let Some(loc) = page.location() {
                let next = absolute(&page.url, &loc);
                if next.starts_with(stop_at) {
                    return next;
                }
                page = self.get(&next).await;
                continue;
            }
            assert_eq!(page.status, 200, "the provider answered {}: {}", page.status, page.body);
            let action = page
                .attr("form[method=post]", "action")
                .unwrap_or_else(|| panic!("no form on the provider's page: {}", page.body));
            let d = Html::parse_document(&page.body);
            let hidden = Selector::parse("form[method=post] input[type=hidden]").unwrap();
            let mut fields: Vec<(String, String)> = d
                .select(&hidden)
                .filter_map(|e| {
                    Some((
                        e.value().attr("name")?.to_string(),
                        e.value().attr("value")?.to_string(),
                    ))
                })
                .collect();
            if page.body.contains("name=\"login\"") {
                fields.push(("login".into(), login.into()));
                fields.push(("password".into(), "any password".into()));
            }
            let f: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            page = self.send("POST", &absolute(&page.url, &action), Some(&f)).await;
        }
        panic!("the provider never sent the browser back to {stop_at}");
    }

    /// The provider's login page for a new sign-in (to abort it instead).
    async fn open_provider_login(&mut self, start: &str) -> Page {
        let mut page = self.get(start).await;
        for _ in 0..10 {
            match page.location() {
                Some(loc) => page = self.get(&absolute(&page.url, &loc)).await,
                None => return page,
            }
        }
        panic!("too many redirects");
    }
}

struct Site {
    app: Arc<hale_server::App>,
    base: String,
    fhir: Router,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Site {
    /// Stop serving and wait until the node has shut down.
    async fn shut_down(self) {
        drop(self.stop);
        self.task.await.unwrap().unwrap();
    }
}

/// A node serving the UI and the API over HTTP on `listener`, with
/// `[auth.oidc]` and `[auth.oidc.ui]` for `issuer`.
async fn serve(
    data: &std::path::Path,
    listener: tokio::net::TcpListener,
    issuer: &str,
    mutate: impl FnOnce(&mut Config),
) -> Site {
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut cfg = Config {
        data: data.to_path_buf(),
        listen: "127.0.0.1:0".into(),
        ..Config::default()
    };
    cfg.auth.tokens = demo_tokens();
    cfg.access.legitimate_relationship = false;
    cfg.auth.oidc = Some(hale_auth::OidcSettings {
        issuer: issuer.into(),
        audience: AUDIENCE.into(),
        leeway_secs: 0,
        ui: Some(hale_auth::UiClient {
            client_id: "hale-ui".into(),
            client_secret: Some("ui-secret".into()),
            name: "the Test Trust".into(),
            ..hale_auth::UiClient::default()
        }),
        ..hale_auth::OidcSettings::default()
    });
    mutate(&mut cfg);
    let node = hale_server::Node::start(cfg, base.clone()).await.expect("start node");
    let app = node.app.clone();
    let fhir = node.router();
    let ui = hale_ui::Ui::new(app.clone()).expect("UI");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(hale_server::serve_with(
        node,
        listener,
        move |f| hale_ui::router(ui).merge(f),
        async move {
            let _ = rx.await;
        },
    ));
    // The provider's endpoints and keys, fetched at start.
    let v = app.auth.oidc().unwrap().clone();
    for _ in 0..200 {
        if v.endpoints().await.is_some() && v.key_count().await > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(v.endpoints().await.is_some(), "the node never discovered the provider");
    Site {
        app,
        base,
        fhir,
        stop: tx,
        task,
    }
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
    let resp = r.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn patient() -> Value {
    json!({"resourceType": "Patient", "name": [{"family": "Okafor", "given": ["Ada"]}], "birthDate": "1961-03-04"})
}

/// Sign in through the provider as `login`: the callback's answer.
async fn sign_in(b: &mut Browser, site: &Site, login: &str) -> Page {
    let callback = format!("{}/ui/oidc/callback", site.base);
    let url = b
        .through_provider(&format!("{}/ui/oidc/start", site.base), login, &callback)
        .await;
    b.get(&url).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_sign_in_through_the_trusts_provider() {
    let tmp = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let callback = format!("{base}/ui/oidc/callback");
    let idp = Idp::start(free_port(), &tmp.path().join("k.json"), "k1", AUDIENCE, Some(&callback));
    let site = serve(&tmp.path().join("node"), listener, &idp.issuer(), |_| {}).await;
    let (s, p) = admin(&site.fhir, "POST", "/Patient", patient()).await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    let pid = p["id"].as_str().unwrap().to_string();

    // The sign-in page offers the provider beside the local-account form, as a plain link.
    let mut b = Browser::default();
    let page = b.get(&format!("{base}/ui/sign-in")).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.text("#oidc-start").as_deref(), Some("Sign in with the Test Trust"));
    assert_eq!(page.attr("#oidc-start", "href").as_deref(), Some("/ui/oidc/start"));
    assert!(page.body.contains("name=\"password\""), "the local-account form stays");

    // /ui/oidc/start sends the browser to the provider with PKCE S256, state and nonce.
    let start = b.get(&format!("{base}/ui/oidc/start")).await;
    assert_eq!(start.status, 303);
    let to = start.location().unwrap();
    assert!(to.starts_with(&format!("{}/auth?", idp.issuer())), "{to}");
    let q: HashMap<String, String> = form_urlencoded::parse(to.split_once('?').unwrap().1.as_bytes())
        .into_owned()
        .collect();
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], "hale-ui");
    assert_eq!(q["redirect_uri"], callback);
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["code_challenge"].len(), 43);
    assert_eq!(q["resource"], AUDIENCE);
    assert!(q["scope"].split(' ').any(|s| s == "openid"), "{}", q["scope"]);
    assert!(q["state"].len() >= 43 && q["nonce"].len() >= 43);
    assert!(
        start
            .set_cookies()
            .iter()
            .any(|c| c.starts_with("hale_oidc=") && c.contains("SameSite=Lax")),
        "{:?}",
        start.set_cookies()
    );

    // --- The whole flow: the provider's login form, back to the callback, a session.
    let mut b = Browser::default();
    let url = b
        .through_provider(&format!("{base}/ui/oidc/start"), "clinician", &callback)
        .await;
    let done = b.get(&url).await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.opened_session(), "{:?}", done.set_cookies());
    assert!(
        done.set_cookies()
            .iter()
            .any(|c| c.starts_with("hale_session=") && c.contains("SameSite=Strict")),
        "{:?}",
        done.set_cookies()
    );
    assert_eq!(
        done.text("#signed-in-as").as_deref(),
        Some("You are signed in as clinician through the identity provider.")
    );
    assert!(
        done.body.contains("http-equiv=\"refresh\" content=\"0; url=/ui/\""),
        "{}",
        done.body
    );
    // The session opens the patient search page as the role the token maps to.
    let find = b.get(&format!("{base}/ui/")).await;
    assert_eq!(find.status, 200, "{}", find.body);
    assert_eq!(
        find.text(".hale-whoami").as_deref(),
        Some("Signed in as clinician (clinician)")
    );
    let csrf = find.attr("input[name=csrf]", "value").unwrap();
    let results = b
        .send(
            "POST",
            &format!("{base}/ui/find"),
            Some(&[("csrf", &csrf), ("q", "Okafor 04/03/1961")]),
        )
        .await;
    assert!(
        results.body.contains("Okafor") || results.location().is_some_and(|l| l.contains(&pid)),
        "{} {}",
        results.status,
        results.body
    );
    let record = b.get(&format!("{base}/ui/patient/{pid}")).await;
    assert_eq!(record.status, 200, "{}", record.body);
    assert!(record.body.contains("OKAFOR") || record.body.contains("Okafor"));

    // The callback again (a replayed state and code): 400, and no session.
    let mut replay = Browser::default();
    let again = replay.get(&url).await;
    assert_eq!(again.status, 400, "{}", again.body);
    assert!(!again.opened_session());
    assert!(
        again.text("#refusal").unwrap().contains("expired or was already used"),
        "{}",
        again.body
    );
    // Even in the browser that started it.
    let again = b.get(&url).await;
    assert_eq!(again.status, 400);
    assert!(!again.opened_session());

    // A tampered state: 400, no session.
    let mut t = Browser::default();
    let url = t
        .through_provider(&format!("{base}/ui/oidc/start"), "clinician", &callback)
        .await;
    let tampered = url.replacen("state=", "state=x", 1);
    let r = t.get(&tampered).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(!r.opened_session());
    assert_eq!(t.get(&format!("{base}/ui/")).await.status, 303, "no session");

    // A genuine state and code delivered to another browser (login CSRF): 400.
    let mut other = Browser::default();
    let url = t
        .through_provider(&format!("{base}/ui/oidc/start"), "clinician", &callback)
        .await;
    let r = other.get(&url).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(!r.opened_session());
    assert!(r.text("#refusal").unwrap().contains("another browser"), "{}", r.body);

    // A code presented with another sign-in's verifier: the provider refuses
    // the exchange (PKCE), 401, no session.
    let mut v = Browser::default();
    let first = v
        .through_provider(&format!("{base}/ui/oidc/start"), "clinician", &callback)
        .await;
    let second = v
        .through_provider(&format!("{base}/ui/oidc/start"), "clinician", &callback)
        .await;
    let param = |u: &str, k: &str| {
        form_urlencoded::parse(u.split_once('?').unwrap().1.as_bytes())
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.into_owned())
            .unwrap()
    };
    let crossed = format!(
        "{callback}?code={}&state={}",
        param(&first, "code"),
        param(&second, "state")
    );
    let r = v.get(&crossed).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(!r.opened_session());
    assert!(r.text("#refusal").unwrap().contains("invalid_grant"), "{}", r.body);
    // And the second sign-in's state is used up by that attempt.
    let r = v.get(&second).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(!r.opened_session());

    // Denied at the provider (the user cancels): 401, no session.
    let mut d = Browser::default();
    let login = d.open_provider_login(&format!("{base}/ui/oidc/start")).await;
    assert_eq!(login.status, 200, "{}", login.body);
    let abort = format!("{}/abort", login.url.trim_end_matches('/'));
    let to = d.through_provider(&abort, "unused", &callback).await;
    let r = d.get(&to).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(!r.opened_session());
    assert!(r.text("#refusal").unwrap().contains("access_denied"), "{}", r.body);

    // A role Hale's mapping does not know: 403, no session.
    let mut u = Browser::default();
    let r = sign_in(&mut u, &site, "r9999").await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(!r.opened_session());
    assert!(r.text("#refusal").unwrap().contains("R9999"), "{}", r.body);
    assert_eq!(u.get(&format!("{base}/ui/")).await.status, 303);

    // A clerk is a clerk: the token's role, not a default.
    let mut c = Browser::default();
    let r = sign_in(&mut c, &site, "clerk.kim").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let find = c.get(&format!("{base}/ui/")).await;
    assert_eq!(
        find.text(".hale-whoami").as_deref(),
        Some("Signed in as clerk.kim (clerk)")
    );

    // The provider goes away (a cut-off site): the signed-in session goes on
    // with the node's cached keys until its token expires; a new sign-in
    // through the provider cannot complete.
    idp.stop();
    let record = b.get(&format!("{base}/ui/patient/{pid}")).await;
    assert_eq!(record.status, 200, "{}", record.body);
    let start = Browser::default().get(&format!("{base}/ui/oidc/start")).await;
    assert_eq!(start.status, 303, "the endpoints are remembered");
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(30), "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Cluster settings for an in-process node with its raft port on loopback.
fn clustered(id: u64, site: &'static str) -> impl FnOnce(&mut Config) {
    move |cfg| {
        cfg.cluster.node_id = id;
        cfg.cluster.listen = Some("127.0.0.1:0".into());
        cfg.cluster.bootstrap_single = false;
        cfg.cluster.site = site.into();
        cfg.cluster.write_timeout_ms = 3_000;
        cfg.cluster.leader_wait_ms = 2_000;
        cfg.cluster.read_timeout_ms = 1_000;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_sessions_write_at_a_site_reaches_the_leader_with_the_users_token() {
    let tmp = tempfile::tempdir().unwrap();
    let l1 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let l2 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let site_base = format!("http://{}", l2.local_addr().unwrap());
    let callback = format!("{site_base}/ui/oidc/callback");
    let idp = Idp::start(free_port(), &tmp.path().join("k.json"), "k1", AUDIENCE, Some(&callback));
    let leader = serve(&tmp.path().join("n1"), l1, &idp.issuer(), clustered(1, "dc-a")).await;
    let site = serve(&tmp.path().join("n2"), l2, &idp.issuer(), clustered(2, "QEUH")).await;
    let (s, v) = admin(&leader.fhir, "POST", "/cluster/init", json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let r1 = leader.app.raft.clone();
    wait_for("node 1 to lead", || r1.metrics().current_leader == Some(1)).await;
    let body = json!({"node_id": 2, "raft_addr": site.app.raft.me.raft_addr,
                      "api_url": site.base, "site": "QEUH"});
    let (s, v) = admin(&leader.fhir, "POST", "/cluster/learners", body).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let r2 = site.app.raft.clone();
    wait_for("the site to follow node 1", || r2.metrics().current_leader == Some(1)).await;
    let (s, p) = admin(&leader.fhir, "POST", "/Patient", patient()).await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    let pid = p["id"].as_str().unwrap().to_string();
    let start = std::time::Instant::now();
    while admin(&site.fhir, "GET", &format!("/Patient/{pid}"), Value::Null)
        .await
        .0
        != StatusCode::OK
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the patient never reached the site"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Signed in at the site through the provider; no local account exists anywhere.
    let mut b = Browser::default();
    let r = sign_in(&mut b, &site, "dr.provider").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let form = b.get(&format!("{site_base}/ui/patient/{pid}/note")).await;
    assert_eq!(form.status, 200, "{}", form.body);
    let csrf = form.attr("input[name=csrf]", "value").unwrap();
    let saved = b
        .send(
            "POST",
            &format!("{site_base}/ui/patient/{pid}/note"),
            Some(&[
                ("csrf", &csrf),
                ("title", "Ward round"),
                ("note", "Seen on the ward round; forwarded with the user's own token."),
            ]),
        )
        .await;
    // Committed through the leader (a learner appends nothing itself), not
    // held in the site journal: the leader accepted the user's token.
    assert_eq!(saved.status, 303, "{}", saved.body);
    assert_eq!(
        saved.location().as_deref(),
        Some(format!("/ui/patient/{pid}?saved=ok#section-notes").as_str()),
        "{}",
        saved.body
    );
    let (s, docs) = admin(
        &leader.fhir,
        "GET",
        &format!("/DocumentReference?subject=Patient/{pid}"),
        Value::Null,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{docs}");
    assert_eq!(docs["total"], 1, "{docs}");
    // The leader's audit trail names the provider's user as the writer.
    let start = std::time::Instant::now();
    loop {
        let (_, audit) = admin(
            &leader.fhir,
            "GET",
            &format!("/AuditEvent?patient=Patient/{pid}&action=C&_count=50"),
            Value::Null,
        )
        .await;
        let text = audit.to_string();
        if text.contains("DocumentReference") && text.contains("dr.provider") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no create audited as dr.provider: {audit}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(idp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_session_ends_when_its_access_token_expires() {
    let tmp = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let callback = format!("{base}/ui/oidc/callback");
    // Access tokens for the UI live 3 s here (300 s by default).
    let idp = Idp::start_with(
        free_port(),
        &tmp.path().join("k.json"),
        "k1",
        AUDIENCE,
        Some(&callback),
        &["--ui-ttl", "3"],
    );
    let site = serve(&tmp.path().join("node"), listener, &idp.issuer(), |_| {}).await;
    let mut b = Browser::default();
    let r = sign_in(&mut b, &site, "clinician").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(b.get(&format!("{base}/ui/")).await.status, 200);
    // Well inside the 15-minute idle and 12-hour limits, but past the token's exp.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let r = b.get(&format!("{base}/ui/")).await;
    assert_eq!(r.status, 303);
    assert_eq!(r.location().as_deref(), Some("/ui/sign-in?expired=1"));
    assert_eq!(b.get(&format!("{base}/ui/")).await.status, 303, "ended for good");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_in_session_outlives_the_provider_and_a_node_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("node");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let callback = format!("{base}/ui/oidc/callback");
    let idp = Idp::start(free_port(), &tmp.path().join("k.json"), "k1", AUDIENCE, Some(&callback));
    let issuer = idp.issuer();
    let site = serve(&data, listener, &issuer, |_| {}).await;
    let (s, p) = admin(&site.fhir, "POST", "/Patient", patient()).await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    let pid = p["id"].as_str().unwrap().to_string();
    let mut b = Browser::default();
    let r = sign_in(&mut b, &site, "clinician").await;
    assert_eq!(r.status, 200, "{}", r.body);

    // The site is cut off from the provider, and its node restarts.
    idp.stop();
    site.shut_down().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base2 = format!("http://{}", listener.local_addr().unwrap());
    let site = serve(&data, listener, &issuer, |_| {}).await;
    // The browser's cookie, for the node's new address.
    let cookies = b.jar.get(base.strip_prefix("http://").unwrap()).cloned().unwrap();
    b.jar
        .insert(base2.strip_prefix("http://").unwrap().to_string(), cookies);
    // The session's token still validates, with the keys the node persisted.
    let record = b.get(&format!("{base2}/ui/patient/{pid}")).await;
    assert_eq!(record.status, 200, "{}", record.body);
    assert!(record.body.contains("Okafor") || record.body.contains("OKAFOR"));
    // A new sign-in through the provider cannot complete: the provider is unreachable.
    let start = Browser::default().get(&format!("{base2}/ui/oidc/start")).await;
    assert_eq!(start.status, 303);
    let to = start.location().unwrap();
    let (host, _) = split_url(&to);
    assert!(
        tokio::net::TcpStream::connect(&host).await.is_err(),
        "the provider is down"
    );
    site.shut_down().await;
}
