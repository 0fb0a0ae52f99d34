//! Test harness: a real server on a loopback port over a temporary store, a
//! small HTTP client, FHIR JSON Schema checks of every body the server sends,
//! fixture builders and store inspection helpers.

#![allow(dead_code)]

use hale_server::config::{Config, Role, TokenEntry};
use hale_server::Node;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::oneshot;

pub const CLIN: &str = "t-clin";
pub const CLERK: &str = "t-clerk";
pub const ADMIN: &str = "t-admin";
/// A privacy officer (`po.pat`): reads the audit trail and Patients only.
pub const PRIVACY: &str = "t-privacy";

pub const NHS_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";
pub const CATEGORY_SYSTEM: &str = "https://hale.health/fhir/CodeSystem/appointment-category";
pub const CANCELLED_BY_SYSTEM: &str = "https://hale.health/fhir/CodeSystem/cancelled-by";
pub const SNOMED: &str = "http://snomed.info/sct";

/// Every R4 resource type, from the official schema (its discriminator, without
/// `Parameters`, which is an operation payload): what Hale must serve.
pub fn all_types() -> Vec<String> {
    let mapping = fhir_schema()["discriminator"]["mapping"]
        .as_object()
        .expect("the schema's discriminator mapping");
    mapping.keys().filter(|t| *t != "Parameters").cloned().collect()
}

// ---------------------------------------------------------------------------
// Server

pub struct TestServer {
    pub client: Client,
    pub dir: tempfile::TempDir,
    /// This node's replication handle (status, applied index, content hash).
    pub raft: Arc<hale_raft::RaftNode>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl std::ops::Deref for TestServer {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

pub fn test_config(dir: &Path) -> Config {
    let mut cfg = Config {
        data: dir.to_path_buf(),
        listen: "127.0.0.1:0".into(),
        ..Config::default()
    };
    cfg.auth.tokens = vec![
        TokenEntry {
            token: CLIN.into(),
            user: "dr.who".into(),
            role: Role::Clinician,
            site: None,
            patient: None,
        },
        TokenEntry {
            token: CLERK.into(),
            user: "clerk.kent".into(),
            role: Role::Clerk,
            site: None,
            patient: None,
        },
        TokenEntry {
            token: ADMIN.into(),
            user: "admin.ada".into(),
            role: Role::Admin,
            site: None,
            patient: None,
        },
        TokenEntry {
            token: PRIVACY.into(),
            user: "po.pat".into(),
            role: Role::PrivacyOfficer,
            site: None,
            patient: None,
        },
    ];
    // Patient-level access (legitimate relationship) is on by default; the
    // tests of other features use site-less clinician tokens, so it is off
    // here and on in tests/http/access.rs.
    cfg.access.legitimate_relationship = false;
    cfg
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    pub async fn start_with(mutate: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = test_config(dir.path());
        mutate(&mut cfg);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let node = Node::start(cfg, format!("http://{addr}")).await.expect("start node");
        let raft = node.app.raft.clone();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(hale_server::serve(node, listener, async move {
            let _ = rx.await;
        }));
        TestServer {
            client: Client { addr },
            dir,
            raft,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// A server with the synthetic health board loaded through the write path
    /// (`hale_server::demo::load_if_empty`), and its `App` for calling library
    /// functions in-process. Drop the `App` before [`TestServer::stop`].
    pub async fn start_demo(
        patients: usize,
        seed: u64,
        today: chrono::NaiveDate,
    ) -> (TestServer, Arc<hale_server::App>) {
        TestServer::start_demo_with(patients, seed, today, |_| {}).await
    }

    pub async fn start_demo_with(
        patients: usize,
        seed: u64,
        today: chrono::NaiveDate,
        mutate: impl FnOnce(&mut Config),
    ) -> (TestServer, Arc<hale_server::App>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = test_config(dir.path());
        mutate(&mut cfg);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let node = Node::start(cfg, format!("http://{addr}")).await.expect("start node");
        hale_server::demo::load_if_empty(&node.app, patients, seed, today)
            .await
            .expect("load the demo board");
        let app = node.app.clone();
        let raft = node.app.raft.clone();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(hale_server::serve(node, listener, async move {
            let _ = rx.await;
        }));
        let srv = TestServer {
            client: Client { addr },
            dir,
            raft,
            shutdown: Some(tx),
            handle: Some(handle),
        };
        (srv, app)
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Graceful shutdown; returns once the read-audit queue has been drained.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.expect("server task panicked").expect("server failed");
        }
        // The writer thread exits once the last proposer handle is dropped; give
        // it a moment to close its connection (not a timing assertion).
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    /// Content hash of the store (the server must be stopped).
    pub fn content_hash(&self) -> String {
        assert!(self.handle.is_none(), "stop the server before hashing its store");
        hale_store::StateMachine::open(self.data_dir())
            .expect("open store")
            .content_hash()
            .expect("hash")
    }

    /// Resources, history, index and reference rows (not audit), as text.
    /// Safe while the server runs (read-only WAL connection).
    pub fn snapshot(&self) -> String {
        snapshot(self.data_dir())
    }

    /// Count of live resources of a type, straight from the store.
    pub fn live_count(&self, rtype: &str) -> i64 {
        let conn = ro_conn(self.data_dir());
        conn.query_row(
            "SELECT COUNT(*) FROM resources WHERE rtype = ?1 AND deleted = 0",
            [rtype],
            |r| r.get(0),
        )
        .expect("count")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub fn ro_conn(dir: &Path) -> hale_store::rusqlite::Connection {
    use hale_store::rusqlite::{Connection, OpenFlags};
    Connection::open_with_flags(dir.join(hale_store::DB_FILE), OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open read-only")
}

/// Every row of the state tables except `audit`, in key order.
pub fn snapshot(dir: &Path) -> String {
    use hale_store::rusqlite::types::ValueRef;
    let conn = ro_conn(dir);
    let mut out = String::new();
    for (table, order) in [
        ("resources", "rid"),
        ("history", "hid"),
        ("idx", "rid, rtype, param, s, v, lo, hi"),
        ("refs", "rid, dst_type, dst_id"),
    ] {
        out.push_str(&format!("== {table}\n"));
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM {table} ORDER BY {order}"))
            .expect("prepare");
        let cols = stmt.column_count();
        let mut rows = stmt.query([]).expect("query");
        while let Some(row) = rows.next().expect("row") {
            for i in 0..cols {
                match row.get_ref(i).expect("col") {
                    ValueRef::Null => out.push_str("NULL"),
                    ValueRef::Integer(v) => out.push_str(&v.to_string()),
                    ValueRef::Real(v) => out.push_str(&v.to_string()),
                    ValueRef::Text(t) => out.push_str(&String::from_utf8_lossy(t)),
                    ValueRef::Blob(b) => out.push_str(&format!("{b:?}")),
                }
                out.push('\t');
            }
            out.push('\n');
        }
    }
    out
}

// ---------------------------------------------------------------------------
// HTTP client

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
    pub json: Option<Value>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The JSON body; panics when there is none.
    pub fn body(&self) -> &Value {
        self.json
            .as_ref()
            .unwrap_or_else(|| panic!("expected a JSON body, got status {} body {:?}", self.status, self.text))
    }

    pub fn expect(&self, status: u16) -> &Resp {
        assert_eq!(self.status, status, "unexpected status; body: {}", self.text);
        self
    }

    /// `id` of the returned resource.
    pub fn id(&self) -> String {
        self.body()["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no id in {}", self.text))
            .to_string()
    }

    /// Assert an OperationOutcome with at least one error issue that has
    /// diagnostics; returns the issues.
    pub fn outcome(&self) -> Vec<Value> {
        let b = self.body();
        assert_eq!(
            b["resourceType"], "OperationOutcome",
            "expected an OperationOutcome: {}",
            self.text
        );
        let issues = b["issue"].as_array().cloned().unwrap_or_default();
        assert!(!issues.is_empty(), "OperationOutcome without issues: {}", self.text);
        for i in &issues {
            assert!(
                i["diagnostics"].as_str().is_some_and(|d| !d.is_empty()),
                "issue without diagnostics: {}",
                self.text
            );
        }
        issues
    }

    /// Assert an OperationOutcome whose issues' expressions include one containing `needle`.
    pub fn outcome_at(&self, needle: &str) -> Vec<Value> {
        let issues = self.outcome();
        let found = issues.iter().any(|i| {
            i["expression"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e.as_str().is_some_and(|e| e.contains(needle)))
        });
        assert!(
            found,
            "no issue with an expression containing {needle:?}: {}",
            self.text
        );
        issues
    }

    /// All diagnostics joined, for substring checks.
    pub fn diagnostics(&self) -> String {
        self.outcome()
            .iter()
            .filter_map(|i| i["diagnostics"].as_str())
            .collect::<Vec<_>>()
            .join(" | ")
    }

    /// Bundle entries.
    pub fn entries(&self) -> Vec<Value> {
        let b = self.body();
        assert_eq!(b["resourceType"], "Bundle", "expected a Bundle: {}", self.text);
        b["entry"].as_array().cloned().unwrap_or_default()
    }

    /// Ids of entries with search.mode `mode` (and resourceType `rtype` when given).
    pub fn ids(&self, mode: &str, rtype: Option<&str>) -> Vec<String> {
        self.entries()
            .iter()
            .filter(|e| e["search"]["mode"] == mode)
            .filter(|e| rtype.is_none_or(|t| e["resource"]["resourceType"] == t))
            .map(|e| e["resource"]["id"].as_str().expect("entry resource id").to_string())
            .collect()
    }

    pub fn match_ids(&self) -> Vec<String> {
        self.ids("match", None)
    }

    pub fn link(&self, relation: &str) -> Option<String> {
        self.body()["link"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["relation"] == relation)
            .and_then(|l| l["url"].as_str())
            .map(str::to_string)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Client {
    pub addr: SocketAddr,
}

pub struct ReqBuilder {
    addr: SocketAddr,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Client {
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn req(&self, method: &str, path: &str) -> ReqBuilder {
        // `|` (token searches) and spaces are not valid in a request target.
        let path = path.replace('|', "%7C").replace(' ', "%20");
        ReqBuilder {
            addr: self.addr,
            method: method.into(),
            path,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Resp {
        self.req("GET", path).token(token).send().await
    }

    pub async fn post(&self, path: &str, token: &str, body: &Value) -> Resp {
        self.req("POST", path).token(token).json(body).send().await
    }

    pub async fn put(&self, path: &str, token: &str, body: &Value) -> Resp {
        self.req("PUT", path).token(token).json(body).send().await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Resp {
        self.req("DELETE", path).token(token).send().await
    }

    /// POST a resource and expect 201; returns the stored resource.
    pub async fn create(&self, token: &str, resource: &Value) -> Value {
        let rt = resource["resourceType"].as_str().expect("resourceType");
        let r = self.post(&format!("/{rt}"), token, resource).await;
        r.expect(201);
        r.body().clone()
    }

    /// Create and return the id.
    pub async fn create_id(&self, token: &str, resource: &Value) -> String {
        self.create(token, resource).await["id"]
            .as_str()
            .expect("id")
            .to_string()
    }

    /// Search (GET) and expect 200.
    pub async fn search(&self, token: &str, query: &str) -> Resp {
        let r = self.get(query, token).await;
        r.expect(200);
        r
    }

    /// Current version of a resource.
    pub async fn read(&self, token: &str, path: &str) -> Value {
        let r = self.get(path, token).await;
        r.expect(200);
        r.body().clone()
    }
}

impl ReqBuilder {
    pub fn token(mut self, token: &str) -> Self {
        if !token.is_empty() {
            self.headers.push(("authorization".into(), format!("Bearer {token}")));
        }
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    pub fn json(mut self, v: &Value) -> Self {
        self.body = serde_json::to_vec(v).expect("serialise");
        if !self.headers.iter().any(|(k, _)| k == "content-type") {
            self.headers
                .push(("content-type".into(), "application/fhir+json".into()));
        }
        self
    }

    /// A raw body; no content type is added.
    pub fn raw(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    pub async fn send(self) -> Resp {
        let stream = tokio::net::TcpStream::connect(self.addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
            .await
            .expect("handshake");
        let conn_task = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = hyper::Request::builder()
            .method(self.method.as_str())
            .uri(self.path.as_str())
            .header("host", self.addr.to_string());
        for (k, v) in &self.headers {
            req = req.header(
                HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                HeaderValue::from_str(v).expect("header value"),
            );
        }
        let req = req.body(Full::new(Bytes::from(self.body))).expect("request");
        let resp = sender
            .send_request(req)
            .await
            .unwrap_or_else(|e| panic!("{} {}: {e}", self.method, self.path));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.expect("read body").to_bytes();
        drop(sender);
        let _ = conn_task.await;
        let text = String::from_utf8(bytes.to_vec()).expect("utf-8 body");
        let ct = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let trimmed = text.trim_start();
        let looks_json = trimmed.starts_with('{') || trimmed.starts_with('[');
        let json = if ct.starts_with("application/fhir+json") {
            assert!(
                !text.is_empty() || status == 204,
                "{} {}: empty body with a FHIR content type",
                self.method,
                self.path
            );
            if text.is_empty() {
                None
            } else {
                let v: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{} {}: body is not JSON ({e}): {text}", self.method, self.path));
                check_schema(&v, &format!("{} {} -> {status}", self.method, self.path));
                Some(v)
            }
        } else if ct.starts_with("application/json")
            && (self.path.starts_with("/cluster/")
                || self.path.starts_with("/downtime/")
                || self.path.starts_with("/ops/")
                || self.path.starts_with("/sync/")
                || self.path.starts_with("/admin/")
                || self.path.starts_with("/.well-known/")
                || self.path.starts_with("/$export-status/"))
        {
            // Cluster administration, accounts and a bulk export's manifest
            // are not FHIR resources: plain JSON, not schema-checked.
            Some(
                serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{} {}: not JSON ({e}): {text}", self.method, self.path)),
            )
        } else if ct == "application/fhir+ndjson" {
            // A bulk export file: one resource per line, each schema-checked.
            for line in text.lines().filter(|l| !l.is_empty()) {
                let v: Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{} {}: a line is not JSON ({e}): {line}", self.method, self.path));
                check_schema(&v, &format!("{} {} -> {status}", self.method, self.path));
            }
            None
        } else {
            assert!(
                !looks_json,
                "{} {}: JSON body without Content-Type application/fhir+json (got {ct:?}): {text}",
                self.method, self.path
            );
            None
        };
        Resp {
            status,
            headers,
            text,
            json,
        }
    }
}

// ---------------------------------------------------------------------------
// FHIR JSON Schema

fn fhir_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fhir/fhir.schema.json");
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        // The schema writes R4's string rule ("no characters below U+0020 but
        // tab, CR and LF") as `[ \r\n\t\S]`, whose `\S` also refuses a
        // non-breaking space, which the official examples themselves contain
        // (DiagnosticReport-ultrasound). Check the rule the specification states.
        let text = text.replace(
            r#"[ \\r\\n\\t\\S]"#,
            r#"[^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F]"#,
        );
        // And `code`'s whitespace is XML's, not every Unicode space (CodeSystem v2-0550).
        let text = text.replace(
            r#"[^\\s]+(\\s[^\\s]+)*"#,
            r#"[^ \\t\\r\\n]+([ \\t\\r\\n][^ \\t\\r\\n]+)*"#,
        );
        serde_json::from_str(&text).expect("FHIR schema is JSON")
    })
}

fn validator(rtype: &str) -> Arc<jsonschema::Validator> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<jsonschema::Validator>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(v) = map.get(rtype) {
        return v.clone();
    }
    let defs = &fhir_schema()["definitions"];
    assert!(
        defs.get(rtype).is_some(),
        "no definition for resourceType {rtype:?} in the FHIR schema"
    );
    let wrapper = json!({
        "$schema": "http://json-schema.org/draft-06/schema#",
        "$ref": format!("#/definitions/{rtype}"),
        "definitions": defs,
    });
    let v = Arc::new(
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft6)
            .build(&wrapper)
            .unwrap_or_else(|e| panic!("compile FHIR schema for {rtype}: {e}")),
    );
    map.insert(rtype.to_string(), v.clone());
    v
}

/// Schema errors of `v` against `#/definitions/<resourceType>` (at most 20).
pub fn schema_errors(v: &Value) -> Vec<String> {
    let Some(rtype) = v["resourceType"].as_str() else {
        return vec![format!("JSON body without resourceType: {v}")];
    };
    // Resources inside a resource (Bundle entries, contained) are checked one by
    // one against their own definitions: through the schema's `oneOf` a single
    // error would be reported as "the whole entry matches no resource type".
    let mut shell = v.clone();
    let mut inner: Vec<(String, Value)> = Vec::new();
    if let Some(entries) = shell.get_mut("entry").and_then(Value::as_array_mut) {
        for (i, e) in entries.iter_mut().enumerate() {
            if let Some(r) = e.as_object_mut().and_then(|e| e.remove("resource")) {
                inner.push((format!("/entry/{i}/resource"), r));
            }
        }
    }
    if let Some(Value::Array(contained)) = shell.as_object_mut().and_then(|o| o.remove("contained")) {
        for (i, r) in contained.into_iter().enumerate() {
            inner.push((format!("/contained/{i}"), r));
        }
    }
    if !inner.is_empty() {
        let mut errors = schema_errors(&shell);
        for (at, r) in inner {
            errors.extend(schema_errors(&r).into_iter().map(|e| format!("{e} (in {at})")));
        }
        errors.truncate(20);
        return errors;
    }
    let val = validator(rtype);
    val.iter_errors(v)
        // The R4 schema leaves out the `_name` sibling of some primitives
        // (canonical elements, such as ElementDefinition.type.profile), which
        // the official examples use: the sibling of an element that is there
        // is FHIR JSON, not an unknown property.
        .filter(|e| match e.kind() {
            jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } => !unexpected
                .iter()
                .all(|k| k.strip_prefix('_').is_some_and(|base| e.instance().get(base).is_some())),
            _ => true,
        })
        .take(20)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// Panic unless `v` is valid against `#/definitions/<resourceType>`.
pub fn check_schema(v: &Value, what: &str) {
    let rtype = v["resourceType"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: JSON body without resourceType: {v}"));
    let errors = schema_errors(v);
    if !errors.is_empty() {
        let body = serde_json::to_string_pretty(v).unwrap_or_default();
        let body: String = body.chars().take(20_000).collect();
        panic!(
            "{what}: body is not a valid FHIR R4 {rtype}:\n  {}\nbody: {body}",
            errors.join("\n  ")
        );
    }
}

// ---------------------------------------------------------------------------
// Fixtures

/// The NHS check digit for nine digits, None when it would be 10.
pub fn nhs_check(first_nine: &[u32; 9]) -> Option<u32> {
    let sum: u32 = first_nine.iter().zip((2..=10).rev()).map(|(d, w)| d * w).sum();
    match 11 - sum % 11 {
        11 => Some(0),
        10 => None,
        c => Some(c),
    }
}

fn digits9(n: u64) -> [u32; 9] {
    let s = format!("999{:06}", n % 1_000_000);
    let mut d = [0u32; 9];
    for (i, c) in s.chars().enumerate() {
        d[i] = c.to_digit(10).expect("digit");
    }
    d
}

/// A fresh valid NHS number in the test range 999xxxxxxx (unique within the process).
pub fn nhs() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let d = digits9(n);
        if let Some(c) = nhs_check(&d) {
            return d
                .iter()
                .chain(std::iter::once(&c))
                .map(|d| char::from_digit(*d, 10).expect("digit"))
                .collect();
        }
    }
}

/// A ten-digit number in the test range whose check digit is wrong.
pub fn invalid_nhs() -> String {
    let good = nhs();
    let last = good.chars().last().and_then(|c| c.to_digit(10)).expect("digit");
    format!("{}{}", &good[..9], (last + 1) % 10)
}

pub fn patient(nhs: &str, family: &str, given: &[&str], birth: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": NHS_SYSTEM, "value": nhs}],
        "name": [{"use": "official", "family": family, "given": given}],
        "gender": "female",
        "birthDate": birth,
    })
}

pub fn patient_with_phone(nhs: &str, family: &str, given: &[&str], birth: &str, phone: &str) -> Value {
    let mut p = patient(nhs, family, given, birth);
    p["telecom"] = json!([{"system": "phone", "value": phone, "use": "mobile"}]);
    p
}

/// A quick valid Patient with a fresh NHS number.
pub fn any_patient(family: &str) -> Value {
    patient(&nhs(), family, &["Test"], "1970-01-01")
}

pub fn location(name: &str) -> Value {
    json!({"resourceType": "Location", "status": "active", "name": name})
}

pub fn schedule(location_id: &str) -> Value {
    json!({
        "resourceType": "Schedule",
        "active": true,
        "actor": [{"reference": format!("Location/{location_id}")}],
    })
}

pub fn slot(schedule_id: &str, start: &str, end: &str) -> Value {
    json!({
        "resourceType": "Slot",
        "schedule": {"reference": format!("Schedule/{schedule_id}")},
        "status": "free",
        "start": start,
        "end": end,
    })
}

pub fn appointment(patient_id: &str, slot_id: &str, start: &str, end: &str) -> Value {
    appointment_cat(patient_id, slot_id, start, end, "outpatient")
}

pub fn appointment_cat(patient_id: &str, slot_id: &str, start: &str, end: &str, category: &str) -> Value {
    json!({
        "resourceType": "Appointment",
        "status": "booked",
        "serviceCategory": [{"coding": [{"system": CATEGORY_SYSTEM, "code": category}]}],
        "priority": 4,
        "slot": [{"reference": format!("Slot/{slot_id}")}],
        "start": start,
        "end": end,
        "participant": [{"actor": {"reference": format!("Patient/{patient_id}")}, "status": "accepted"}],
    })
}

/// `Appointment` as cancelled by the patient (from a stored version).
pub fn cancelled(mut appt: Value, by: Option<&str>) -> Value {
    appt["status"] = json!("cancelled");
    let mut reason = json!({"text": "patient is on holiday"});
    if let Some(by) = by {
        reason["coding"] = json!([{"system": CANCELLED_BY_SYSTEM, "code": by}]);
    }
    appt["cancelationReason"] = reason;
    appt
}

/// Slot start/end on day `day` (1..=28) of March 2031, hour `h`.
pub fn times(day: u32, h: u32) -> (String, String) {
    (
        format!("2031-03-{day:02}T{h:02}:00:00Z"),
        format!("2031-03-{day:02}T{h:02}:30:00Z"),
    )
}

/// A Location + Schedule; returns the schedule id.
pub async fn make_schedule(c: &Client) -> String {
    let loc = c.create_id(ADMIN, &location("Clinic A")).await;
    c.create_id(ADMIN, &schedule(&loc)).await
}

/// A free slot on `schedule` at (day, hour); returns (id, start, end).
pub async fn make_slot(c: &Client, schedule_id: &str, day: u32, hour: u32) -> (String, String, String) {
    let (s, e) = times(day, hour);
    let id = c.create_id(ADMIN, &slot(schedule_id, &s, &e)).await;
    (id, s, e)
}

pub fn set(items: &[String]) -> BTreeSet<String> {
    items.iter().cloned().collect()
}

pub fn set_of(items: &[&String]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// `http://host:port/Patient?x` -> `/Patient?x`.
pub fn path_of(url: &str, base: &str) -> String {
    url.strip_prefix(base)
        .unwrap_or_else(|| panic!("link {url} does not start with {base}"))
        .to_string()
}

pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
