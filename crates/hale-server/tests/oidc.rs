//! Bearer tokens from a real OpenID provider: panva's `oidc-provider` (npm,
//! OpenID Certified), started on loopback from `tests/oidc/idp.mjs`. Valid
//! tokens read within their SMART scopes; every bad-token case is a 401; key
//! rotation costs one JWKS fetch; cached keys keep working with the provider
//! stopped, across a restart of the node.
//!
//! Needs Node.js and `tests/oidc/node_modules` (`tools/test.sh` runs `npm ci`
//! there).

mod common;
#[path = "../../../tests/oidc/idp.rs"]
mod idp;

use common::*;
use hale_server::config::Config;
use hale_server::Node;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use idp::{free_port, Idp};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;
use tokio::sync::oneshot;

const AUDIENCE: &str = "https://hale.test/fhir";

/// A plain HTTP exchange with the provider: (status, body).
async fn http(method: &str, url: &str, basic: Option<&str>, form: Option<&str>) -> (u16, String) {
    let uri: hyper::Uri = url.parse().unwrap();
    let addr = format!("{}:{}", uri.host().unwrap(), uri.port_u16().unwrap());
    let stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect to the provider");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(uri.path_and_query().unwrap().as_str())
        .header("host", &addr);
    if let Some(b) = basic {
        let enc = base64(b.as_bytes());
        req = req.header("authorization", format!("Basic {enc}"));
    }
    if form.is_some() {
        req = req.header("content-type", "application/x-www-form-urlencoded");
    }
    let req = req
        .body(Full::new(Bytes::from(form.unwrap_or("").to_string())))
        .unwrap();
    let resp = sender.send_request(req).await.expect("provider request");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn base64(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// A client-credentials access token: (token, granted scope).
async fn token(idp: &Idp, client: &str, scope: &str, extra: &str) -> (String, String) {
    let form = format!(
        "grant_type=client_credentials&scope={}{extra}",
        scope.replace(' ', "%20").replace('/', "%2F").replace('*', "%2A")
    );
    let (status, body) = http(
        "POST",
        &format!("{}/token", idp.issuer()),
        Some(&format!("{client}:secret")),
        Some(&form),
    )
    .await;
    assert_eq!(status, 200, "token request: {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    (
        v["access_token"].as_str().unwrap().to_string(),
        v["scope"].as_str().unwrap_or("").to_string(),
    )
}

async fn forged(idp: &Idp, kind: &str) -> String {
    let (status, body) = http("GET", &format!("{}/test/forge?kind={kind}", idp.issuer()), None, None).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn oidc_config(cfg: &mut Config, issuer: &str) {
    cfg.auth.oidc = Some(hale_auth::OidcSettings {
        issuer: issuer.into(),
        audience: AUDIENCE.into(),
        leeway_secs: 0,
        refetch_cooldown_secs: 2,
        ..hale_auth::OidcSettings::default()
    });
}

/// A node on `data` (kept between starts), serving until the sender is dropped.
async fn start_node(
    data: &Path,
    issuer: &str,
) -> (
    Client,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let mut cfg = test_config(data);
    oidc_config(&mut cfg, issuer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let node = Node::start(cfg, format!("http://{addr}")).await.expect("start node");
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(hale_server::serve(node, listener, async move {
        let _ = rx.await;
    }));
    (Client { addr }, tx, handle)
}

async fn jwks_fetches(c: &Client) -> u64 {
    let r = c.req("GET", "/metrics").send().await;
    r.text
        .lines()
        .find_map(|l| l.strip_prefix("hale_oidc_jwks_fetches "))
        .map(|v| v.trim().parse::<f64>().unwrap() as u64)
        .expect("hale_oidc_jwks_fetches in /metrics")
}

/// Wait (bounded) until the node has fetched the provider's keys once.
async fn keys_fetched(c: &Client) {
    for _ in 0..200 {
        if jwks_fetches(c).await >= 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the node never fetched the provider's keys");
}

fn patient() -> Value {
    json!({"resourceType": "Patient", "name": [{"family": "Okafor", "given": ["Ada"]}], "birthDate": "1961-03-04"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_a_real_openid_provider() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("k1.json");
    let port = free_port();
    let idp = Idp::start(port, &keys, "k1", AUDIENCE, None);
    let data = tmp.path().join("node");
    let (hale, stop, task) = start_node(&data, &idp.issuer()).await;
    keys_fetched(&hale).await;
    let id = hale.create_id(ADMIN, &patient()).await;

    // --- Clients can discover how to authenticate.
    let r = hale.req("GET", "/.well-known/smart-configuration").send().await;
    assert_eq!(r.status, 200, "{}", r.text);
    let smart = r.body().clone();
    assert_eq!(smart["token_endpoint"], format!("{}/token", idp.issuer()));
    assert_eq!(smart["authorization_endpoint"], format!("{}/auth", idp.issuer()));
    assert!(smart["capabilities"]
        .as_array()
        .unwrap()
        .contains(&json!("permission-v2")));
    let cs = hale.req("GET", "/metadata").send().await;
    let sec = &cs.body()["rest"][0]["security"];
    assert_eq!(sec["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
    assert_eq!(
        sec["extension"][0]["extension"][1]["valueUri"],
        format!("{}/token", idp.issuer())
    );

    // --- A valid token reads within its scopes; the provider dropped the scope it does not know.
    let (t, granted) = token(&idp, "clinician-app", "user/Patient.r user/Unknown.rs", "").await;
    assert_eq!(
        granted, "user/Patient.r",
        "the decision uses the scope actually granted"
    );
    hale.get(&format!("/Patient/{id}"), &t).await.expect(200);
    let r = hale.post("/Patient", &t, &patient()).await;
    r.expect(403);
    assert!(r.diagnostics().contains("user/Patient.r"), "{}", r.diagnostics());
    hale.get("/Patient?family=Okafor", &t).await.expect(403);
    hale.get("/Observation?_count=1", &t).await.expect(403);

    // A backend with system/*.rs reads and searches, and writes nothing.
    let (sys, granted) = token(&idp, "backend", "system/*.rs", "").await;
    assert_eq!(granted, "system/*.rs");
    hale.get(&format!("/Patient/{id}"), &sys).await.expect(200);
    hale.get("/Patient?family=Okafor", &sys).await.expect(200);
    hale.post("/Patient", &sys, &patient()).await.expect(403);

    // A transaction with one entry the scopes do not allow writes nothing.
    let (pt, _) = token(&idp, "clinician-app", "user/Patient.cruds", "").await;
    let before = hale.search(ADMIN, "/Patient?_summary=count").await.body()["total"].clone();
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427", "resource": patient(), "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "pulse"},
                      "subject": {"reference": "urn:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427"}},
         "request": {"method": "POST", "url": "Observation"}}
    ]});
    hale.post("/", &pt, &tx).await.expect(403);
    let after = hale.search(ADMIN, "/Patient?_summary=count").await.body()["total"].clone();
    assert_eq!(before, after, "nothing written");
    hale.post("/Patient", &pt, &patient()).await.expect(201);

    // A role the mapping does not know is refused, not guessed.
    let (odd, _) = token(&idp, "unmapped-role", "user/Patient.r", "").await;
    hale.get(&format!("/Patient/{id}"), &odd).await.expect(403);

    // --- Every bad token is a 401 with error="invalid_token".
    let expect_401 = |label: &'static str, r: Resp| {
        assert_eq!(r.status, 401, "{label}: {}", r.diagnostics());
        assert!(
            r.header("www-authenticate")
                .is_some_and(|h| h.contains("invalid_token")),
            "{label}: {:?}",
            r.header("www-authenticate")
        );
        r.diagnostics()
    };
    let (short, _) = token(&idp, "short-lived", "user/Patient.r", "").await;
    hale.get(&format!("/Patient/{id}"), &short).await.expect(200);
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let d = expect_401("expired", hale.get(&format!("/Patient/{id}"), &short).await);
    assert!(d.contains("expired"), "{d}");
    let (other_aud, _) = token(
        &idp,
        "clinician-app",
        "user/Patient.r",
        "&resource=https%3A%2F%2Fother.test%2F",
    )
    .await;
    let d = expect_401("wrong audience", hale.get(&format!("/Patient/{id}"), &other_aud).await);
    assert!(d.contains("audience"), "{d}");
    for (kind, needle) in [
        ("nbf-future", "not valid yet"),
        ("alg-none", "not a JWT"),
        ("hs256-public-key", "algorithm"),
        ("unknown-kid", "key id 'rogue'"),
        ("id-token", "not an access token"),
    ] {
        let t = forged(&idp, kind).await;
        let d = expect_401(kind, hale.get(&format!("/Patient/{id}"), &t).await);
        assert!(d.contains(needle), "{kind}: {d}");
    }
    // The forge signs valid tokens too: the refusals above are the token's fault.
    let good = forged(&idp, "valid").await;
    hale.get(&format!("/Patient/{id}"), &good).await.expect(200);
    // A second provider with the same key but another issuer URL.
    let idp2 = Idp::start(free_port(), &keys, "k1", AUDIENCE, None);
    let (t2, _) = token(&idp2, "clinician-app", "user/Patient.r", "").await;
    let d = expect_401("wrong issuer", hale.get(&format!("/Patient/{id}"), &t2).await);
    assert!(d.contains(&idp2.issuer()), "{d}");
    idp2.stop();

    // --- Key rotation: the provider restarts with a new key; the first token
    // signed with it costs exactly one JWKS fetch.
    idp.stop();
    tokio::time::sleep(Duration::from_millis(2_100)).await; // past the refetch cooldown
    let idp = Idp::start(port, &tmp.path().join("k2.json"), "k2", AUDIENCE, None);
    let fetches = jwks_fetches(&hale).await;
    let (t, _) = token(&idp, "clinician-app", "user/Patient.r", "").await;
    hale.get(&format!("/Patient/{id}"), &t).await.expect(200);
    hale.get(&format!("/Patient/{id}"), &t).await.expect(200);
    assert_eq!(jwks_fetches(&hale).await, fetches + 1, "one fetch for the new key");
    // A flood of unknown key ids costs at most one more fetch per cooldown.
    let fetches = jwks_fetches(&hale).await;
    for _ in 0..30 {
        let t = forged(&idp, "unknown-kid").await;
        hale.get(&format!("/Patient/{id}"), &t).await.expect(401);
    }
    assert!(
        jwks_fetches(&hale).await <= fetches + 1,
        "unknown kids are rate-limited"
    );

    // --- The provider stops: cached keys still verify, in this process and
    // after a restart of the node from its persisted key cache.
    let (t, _) = token(&idp, "clinician-app", "user/Patient.r", "").await;
    idp.stop();
    hale.get(&format!("/Patient/{id}"), &t).await.expect(200);
    drop(stop);
    task.await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (hale, stop, task) = start_node(&data, &format!("http://127.0.0.1:{port}")).await;
    hale.get(&format!("/Patient/{id}"), &t).await.expect(200);
    drop(stop);
    task.await.unwrap().unwrap();
}
