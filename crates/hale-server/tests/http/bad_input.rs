//! Bad requests: each gets the right 4xx and an OperationOutcome that says what
//! and where, and leaves the store exactly as it was.

use crate::common::*;
use serde_json::{json, Value};

struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    token: &'static str,
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
    status: u16,
    /// A substring one issue's expression must contain.
    at: Option<&'static str>,
    /// A substring the diagnostics must contain.
    says: Option<&'static str>,
}

fn case(
    name: &'static str,
    method: &'static str,
    path: impl Into<String>,
    body: impl Into<Vec<u8>>,
    status: u16,
) -> Case {
    Case {
        name,
        method,
        path: path.into(),
        token: ADMIN,
        body: body.into(),
        headers: vec![("content-type", "application/fhir+json".into())],
        status,
        at: None,
        says: None,
    }
}

impl Case {
    fn at(mut self, at: &'static str) -> Case {
        self.at = Some(at);
        self
    }
    fn says(mut self, s: &'static str) -> Case {
        self.says = Some(s);
        self
    }
    fn header(mut self, k: &'static str, v: &str) -> Case {
        self.headers.retain(|(n, _)| *n != k);
        self.headers.push((k, v.into()));
        self
    }
    fn token(mut self, t: &'static str) -> Case {
        self.token = t;
        self
    }
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

/// Send the case, check status, outcome, expression, diagnostics, and that the store is unchanged.
async fn check(srv: &TestServer, c: &Case) {
    let before = srv.snapshot();
    let mut req = srv.req(c.method, &c.path).token(c.token).raw(c.body.clone());
    for (k, v) in &c.headers {
        req = req.header(k, v);
    }
    let r = req.send().await;
    assert_eq!(r.status, c.status, "{}: {}", c.name, r.text);
    let issues = r.outcome();
    assert!(
        issues
            .iter()
            .any(|i| i["severity"] == "error" || i["severity"] == "fatal"),
        "{}: no error issue: {}",
        c.name,
        r.text
    );
    if let Some(at) = c.at {
        r.outcome_at(at);
    }
    if let Some(s) = c.says {
        assert!(
            r.diagnostics().contains(s),
            "{}: diagnostics should mention {s:?}: {}",
            c.name,
            r.text
        );
    }
    assert_eq!(srv.snapshot(), before, "{}: the store changed", c.name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_cleanly() {
    let srv = TestServer::start().await;
    let existing_nhs = nhs();
    let existing = srv
        .create(CLIN, &patient(&existing_nhs, "Existing", &["E"], "1960-02-29"))
        .await;
    let existing_id = existing["id"].as_str().unwrap().to_string();

    let with = |f: &dyn Fn(&mut Value)| {
        let mut p = any_patient("Bad");
        f(&mut p);
        bytes(&p)
    };
    let bad_nhs = invalid_nhs();
    let cases = vec![
        case(
            "malformed JSON",
            "POST",
            "/Patient",
            "{\"resourceType\": \"Patient\",",
            400,
        )
        .says("JSON"),
        case("empty body", "POST", "/Patient", "", 400),
        case("JSON array", "POST", "/Patient", "[1, 2, 3]", 400).says("object"),
        case("JSON string", "POST", "/Patient", "\"Patient\"", 400),
        case(
            "resourceType mismatch",
            "POST",
            "/Patient",
            bytes(&location("Ward 9")),
            400,
        )
        .at("resourceType"),
        case("no resourceType", "POST", "/Patient", "{\"gender\": \"male\"}", 400).at("resourceType"),
        case(
            "unsupported type in URL",
            "POST",
            "/Foo",
            bytes(&json!({"resourceType": "Foo"})),
            404,
        )
        .says("Foo"),
        case("unsupported type read", "GET", "/Foo/1", "", 404),
        case(
            "AuditEvent create",
            "POST",
            "/AuditEvent",
            bytes(&json!({"resourceType": "AuditEvent", "action": "R", "recorded": "2024-01-01T00:00:00Z"})),
            405,
        )
        .says("cannot be changed"),
        case(
            "AuditEvent create as clinician",
            "POST",
            "/AuditEvent",
            bytes(&json!({"resourceType": "AuditEvent"})),
            405,
        )
        .token(CLIN),
        case(
            "unknown element",
            "POST",
            "/Patient",
            with(&|p| p["foo"] = json!("bar")),
            400,
        )
        .at("Patient.foo")
        .says("foo"),
        case(
            "wrong type",
            "POST",
            "/Patient",
            with(&|p| p["birthDate"] = json!(123)),
            400,
        )
        .at("Patient.birthDate"),
        case(
            "impossible date",
            "POST",
            "/Patient",
            with(&|p| p["birthDate"] = json!("1999-02-30")),
            400,
        )
        .at("Patient.birthDate"),
        case(
            "bad code",
            "POST",
            "/Patient",
            with(&|p| p["gender"] = json!("dragon")),
            400,
        )
        .at("Patient.gender"),
        case(
            "single where array",
            "POST",
            "/Patient",
            with(&|p| p["name"] = json!({"family": "X"})),
            400,
        )
        .at("Patient.name"),
        case(
            "null value",
            "POST",
            "/Patient",
            with(&|p| p["gender"] = Value::Null),
            400,
        )
        .at("Patient.gender"),
        case(
            "invalid NHS number",
            "POST",
            "/Patient",
            bytes(&patient(&bad_nhs, "Bad", &["Nhs"], "1970-01-01")),
            400,
        )
        .at("Patient.identifier[0].value")
        .says("NHS"),
        case(
            "duplicate NHS number",
            "POST",
            "/Patient",
            bytes(&patient(&existing_nhs, "Dup", &["Nhs"], "1970-01-01")),
            409,
        )
        .at("Patient.identifier[0].value")
        .says("NHS"),
        case(
            "reference to a missing Practitioner",
            "POST",
            "/Patient",
            with(&|p| p["generalPractitioner"] = json!([{"reference": "Practitioner/no-such-gp"}])),
            422,
        )
        .at("Patient.generalPractitioner[0]")
        .says("no-such-gp"),
        case("wrong content type", "POST", "/Patient", with(&|_| {}), 415).header("content-type", "text/plain"),
        case(
            "xml content type",
            "PUT",
            format!("/Patient/{existing_id}"),
            "<Patient/>",
            415,
        )
        .header("content-type", "application/fhir+xml"),
        case(
            "PUT id mismatch",
            "PUT",
            format!("/Patient/{existing_id}"),
            with(&|p| p["id"] = json!("someone-else")),
            400,
        )
        .at("Patient.id"),
        case(
            "PUT without id",
            "PUT",
            format!("/Patient/{existing_id}"),
            with(&|_| {}),
            400,
        )
        .at("Patient.id"),
        case(
            "bad If-Match",
            "PUT",
            format!("/Patient/{existing_id}"),
            bytes(&existing),
            400,
        )
        .header("if-match", "yesterday"),
        case(
            "method not supported",
            "POST",
            format!("/Patient/{existing_id}"),
            "",
            405,
        ),
        case(
            "bad bundle type",
            "POST",
            "/",
            bytes(&json!({"resourceType": "Bundle", "type": "collection"})),
            400,
        )
        .at("Bundle.type"),
        case("not a bundle at base", "POST", "/", bytes(&any_patient("X")), 400),
    ];
    for c in &cases {
        check(&srv, c).await;
    }
    // The existing patient is untouched.
    let now = srv.read(CLIN, &format!("/Patient/{existing_id}")).await;
    assert_eq!(now["meta"]["versionId"], "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_body_is_413_naming_the_limit() {
    let srv = TestServer::start_with(|cfg| cfg.limits.body_bytes_max = 2048).await;
    // A small one is fine.
    srv.create_id(CLIN, &any_patient("Small")).await;
    let before = srv.snapshot();
    let mut p = any_patient("Large");
    p["name"][0]["text"] = json!("x".repeat(4096));
    let r = srv.post("/Patient", CLIN, &p).await;
    r.expect(413);
    assert!(r.diagnostics().contains("2048"), "413 must state the limit: {}", r.text);
    assert_eq!(srv.snapshot(), before);
    // Same for a Bundle at the base URL.
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [{"resource": p, "request": {"method": "POST", "url": "Patient"}}]});
    let r = srv.post("/", CLIN, &bundle).await;
    r.expect(413);
    assert!(r.diagnostics().contains("2048"));
    assert_eq!(srv.snapshot(), before);
}

/// An NHS number may be written with spaces ("999 000 0018"); the duplicate
/// check must see through the layout either way round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_nhs_number_in_either_layout_is_409() {
    let srv = TestServer::start().await;
    let spaced = |n: &str| format!("{} {} {}", &n[..3], &n[3..6], &n[6..]);

    // Stored plain, sent spaced.
    let n1 = nhs();
    srv.create_id(CLIN, &patient(&n1, "Plain", &["A"], "1970-01-01")).await;
    let before = srv.snapshot();
    let r = srv
        .post("/Patient", CLIN, &patient(&spaced(&n1), "Spaced", &["B"], "1970-01-01"))
        .await;
    assert_eq!(r.status, 409, "plain stored, spaced sent: {}", r.text);
    assert_eq!(srv.snapshot(), before);

    // Stored spaced, sent plain.
    let n2 = nhs();
    srv.create_id(CLIN, &patient(&spaced(&n2), "Spaced", &["C"], "1970-01-01"))
        .await;
    let before = srv.snapshot();
    let r = srv
        .post("/Patient", CLIN, &patient(&n2, "Plain", &["D"], "1970-01-01"))
        .await;
    assert_eq!(
        r.status, 409,
        "spaced stored, plain sent: a second Patient got the same NHS number: {}",
        r.text
    );
    assert_eq!(srv.snapshot(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_bundle_entries_is_413() {
    let srv = TestServer::start_with(|cfg| cfg.limits.bundle_entries_max = 2).await;
    let entry = |n: &str| json!({"resource": any_patient(n), "request": {"method": "POST", "url": "Patient"}});
    let before = srv.snapshot();
    let b = json!({"resourceType": "Bundle", "type": "batch", "entry": [entry("A"), entry("B"), entry("C")]});
    let r = srv.post("/", CLIN, &b).await;
    r.expect(413);
    r.outcome_at("Bundle.entry");
    assert_eq!(srv.snapshot(), before);
    let b = json!({"resourceType": "Bundle", "type": "batch", "entry": [entry("A"), entry("B")]});
    srv.post("/", CLIN, &b).await.expect(200);
}
