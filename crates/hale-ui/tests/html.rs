//! Rendered HTML, checked with an HTML parser: a real node with the demo
//! board, the UI router called in-process (no network), as a browser would.
//!
//! What is checked: the patient banner and NHS-number formatting, escaping of
//! patient-supplied text, error summaries linked to their fields, CSRF and
//! cross-site refusals, sessions (sign-in, sign-out, disabled accounts),
//! headers, roles, and that viewing a record leaves an AuditEvent.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use hale_server::auth::Principal;
use hale_server::config::{demo_tokens, Config, Role};
use scraper::{Html, Selector};
use serde_json::{json, Value};
use std::sync::Arc;
use tower::ServiceExt;

struct Env {
    _dir: tempfile::TempDir,
    app: Arc<hale_server::App>,
    router: Router,
}

async fn env() -> Env {
    env_with(false).await
}

/// With `relationship`, patient-level access is on and the UI's users work
/// at the demo site; without, these tests see any record (the other tests
/// are about pages, not access).
async fn env_with(relationship: bool) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config {
        data: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".into(),
        ..Config::default()
    };
    cfg.auth.tokens = demo_tokens();
    cfg.access.legitimate_relationship = relationship;
    cfg.access.site = Some(hale_server::config::DEMO_SITE.into());
    let node = hale_server::Node::start(cfg, "http://127.0.0.1:9".into())
        .await
        .unwrap();
    let today = chrono::Utc::now().date_naive();
    hale_server::demo::load_if_empty(&node.app, 60, 7, today).await.unwrap();
    let app = node.app.clone();
    let ui = hale_ui::Ui::new(app.clone()).unwrap();
    let router = hale_ui::router(ui).merge(node.router());
    // The node's audit task keeps running for the test's life.
    std::mem::forget(node);
    Env { _dir: dir, app, router }
}

struct Page {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Page {
    fn doc(&self) -> Html {
        Html::parse_document(&self.body)
    }

    fn select_all(&self, css: &str) -> Vec<String> {
        let d = self.doc();
        let sel = Selector::parse(css).unwrap();
        d.select(&sel)
            .map(|e| {
                e.text()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    }

    fn text(&self, css: &str) -> String {
        self.select_all(css)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no element matches {css} in:\n{}", self.body))
    }

    fn attr(&self, css: &str, attr: &str) -> Option<String> {
        let d = self.doc();
        let sel = Selector::parse(css).unwrap();
        d.select(&sel)
            .next()
            .and_then(|e| e.value().attr(attr).map(str::to_string))
    }

    fn location(&self) -> String {
        self.headers
            .get(header::LOCATION)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }
}

/// A browser: keeps cookies, sends forms.
struct Browser<'a> {
    env: &'a Env,
    cookies: Vec<(String, String)>,
}

impl<'a> Browser<'a> {
    fn new(env: &'a Env) -> Browser<'a> {
        Browser { env, cookies: vec![] }
    }

    async fn send(&mut self, req: Request<Body>) -> Page {
        let resp = self.env.router.clone().oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        for v in parts.headers.get_all(header::SET_COOKIE) {
            let c = v.to_str().unwrap();
            let (kv, _) = c.split_once(';').unwrap_or((c, ""));
            let (k, val) = kv.split_once('=').unwrap();
            self.cookies.retain(|(n, _)| n != k);
            if !val.is_empty() && !c.contains("Max-Age=0") {
                self.cookies.push((k.to_string(), val.to_string()));
            }
        }
        let bytes = axum::body::to_bytes(body, 64 << 20).await.unwrap();
        Page {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn get(&mut self, uri: &str) -> Page {
        let req = Request::get(uri)
            .header(header::COOKIE, self.cookie_header())
            .header(header::ACCEPT, "text/html")
            .body(Body::empty())
            .unwrap();
        self.send(req).await
    }

    async fn post_with(&mut self, uri: &str, form: &[(&str, &str)], extra: &[(&str, &str)]) -> Page {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let mut b = Request::post(uri)
            .header(header::COOKIE, self.cookie_header())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::HOST, "127.0.0.1:8080");
        for (k, v) in extra {
            b = b.header(*k, *v);
        }
        self.send(b.body(Body::from(body)).unwrap()).await
    }

    async fn post(&mut self, uri: &str, form: &[(&str, &str)]) -> Page {
        self.post_with(
            uri,
            form,
            &[("origin", "http://127.0.0.1:8080"), ("sec-fetch-site", "same-origin")],
        )
        .await
    }

    async fn sign_in(&mut self, user: &str, password: &str) -> Page {
        let p = self.get("/ui/sign-in").await;
        let token = p.attr("input[name=csrf]", "value").unwrap();
        self.post(
            "/ui/sign-in",
            &[("csrf", &token), ("user", user), ("password", password)],
        )
        .await
    }

    /// The CSRF token of the signed-in session (from any page's forms).
    async fn csrf(&mut self) -> String {
        self.get("/ui/").await.attr("input[name=csrf]", "value").unwrap()
    }
}

fn demo_password(user: &str) -> &'static str {
    hale_server::demo::DEMO_USERS
        .iter()
        .find(|u| u.0 == user)
        .map(|u| u.3)
        .unwrap()
}

/// A FHIR request as the demo admin, in-process.
async fn fhir(env: &Env, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, "Bearer demo-admin");
    let body = match body {
        Some(v) => {
            b = b.header(header::CONTENT_TYPE, "application/fhir+json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    let resp = env.router.clone().oneshot(b.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn nhs_with_check(first_nine: &str) -> String {
    let d: Vec<u32> = first_nine.chars().map(|c| c.to_digit(10).unwrap()).collect();
    let sum: u32 = d.iter().enumerate().map(|(i, x)| x * (10 - i as u32)).sum();
    let check = (11 - sum % 11) % 11;
    assert_ne!(check, 10, "pick another prefix");
    format!("{first_nine}{check}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_sessions_and_csrf() {
    let env = env().await;
    let mut b = Browser::new(&env);
    // Not signed in: every page sends you to sign in.
    let p = b.get("/ui/").await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    assert_eq!(p.location(), "/ui/sign-in");
    // The sign-in page: headers and the form.
    let p = b.get("/ui/sign-in").await;
    assert_eq!(p.status, StatusCode::OK);
    let csp = p.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(p.headers["cache-control"], "no-store");
    assert_eq!(p.headers["x-frame-options"], "DENY");
    assert!(p.select_all("script").is_empty(), "no scripts at all");
    // A wrong password: an error summary whose link goes to the field.
    let p = b.sign_in("dr.demo", "not the password").await;
    assert_eq!(p.status, StatusCode::UNAUTHORIZED);
    assert_eq!(p.text(".nhsuk-error-summary__title"), "There is a problem");
    let href = p.attr(".nhsuk-error-summary__list a", "href").unwrap();
    assert_eq!(href, "#password");
    assert!(p.attr("input#password", "name").is_some(), "the link's target exists");
    assert!(p.text("title").starts_with("Error:"));
    // The right one: a session cookie, HttpOnly and SameSite=Strict (no
    // `Secure` on plain-HTTP loopback, so the name has no `__Host-` prefix).
    let p = b.sign_in("dr.demo", demo_password("dr.demo")).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    let set: Vec<String> = p
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    let session = set
        .iter()
        .find(|c| c.starts_with("hale_session="))
        .expect("session cookie");
    assert!(session.contains("HttpOnly") && session.contains("SameSite=Strict") && session.contains("Path=/"));
    let p = b.get("/ui/").await;
    assert_eq!(p.status, StatusCode::OK);
    assert!(p.text("header").contains("Dr Demo Clinician"));
    // Every form carries the session's token; a POST without it is refused.
    let token = b.csrf().await;
    let p = b.post("/ui/find", &[("q", "smith")]).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    let p = b.post("/ui/find", &[("csrf", "0000"), ("q", "smith")]).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    // Cross-site, even with the right token.
    let p = b
        .post_with(
            "/ui/find",
            &[("csrf", &token), ("q", "smith")],
            &[("sec-fetch-site", "cross-site")],
        )
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    let p = b
        .post_with(
            "/ui/find",
            &[("csrf", &token), ("q", "smith")],
            &[("origin", "https://evil.example")],
        )
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    let p = b.post("/ui/find", &[("csrf", &token), ("q", "smith")]).await;
    assert_eq!(p.status, StatusCode::OK);
    // Sign out ends the session on the server, not just in the browser.
    let id = b.cookies.iter().find(|c| c.0 == "hale_session").unwrap().1.clone();
    let p = b.post("/ui/sign-out", &[("csrf", &token)]).await;
    assert_eq!(p.location(), "/ui/sign-in");
    b.cookies.push(("hale_session".into(), id));
    let p = b.get("/ui/").await;
    assert!(p.location().starts_with("/ui/sign-in"), "{}", p.location());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_account_loses_its_session_at_once() {
    let env = env().await;
    let mut b = Browser::new(&env);
    b.sign_in("clerk.demo", demo_password("clerk.demo")).await;
    assert_eq!(b.get("/ui/").await.status, StatusCode::OK);
    let admin = Principal::new("admin.demo", Role::Admin);
    hale_server::accounts::propose(
        &env.app,
        admin.actor(),
        hale_store::accounts::AccountOp::Disable {
            user: "clerk.demo".into(),
        },
    )
    .await
    .unwrap()
    .unwrap();
    let p = b.get("/ui/").await;
    assert_eq!(p.location(), "/ui/sign-in");
    let p = b.sign_in("clerk.demo", demo_password("clerk.demo")).await;
    assert_eq!(p.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_by_nhs_number_opens_the_record_with_the_banner() {
    let env = env().await;
    let (_, bundle) = fhir(&env, "GET", "/Patient?_count=1&_sort=_id", None).await;
    let p = &bundle["entry"][0]["resource"];
    let id = p["id"].as_str().unwrap();
    let nhs = p["identifier"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["system"] == "https://fhir.nhs.uk/Id/nhs-number")
        .unwrap()["value"]
        .as_str()
        .unwrap()
        .to_string();
    let mut b = Browser::new(&env);
    b.sign_in("dr.demo", demo_password("dr.demo")).await;
    let token = b.csrf().await;
    // Type it with spaces, press Enter: straight to the record, and the
    // number is not in the URL.
    let spaced = format!("{} {} {}", &nhs[..3], &nhs[3..6], &nhs[6..]);
    let r = b.post("/ui/find", &[("csrf", &token), ("q", &spaced)]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location(), format!("/ui/patient/{id}"));
    assert!(!r.location().contains(&nhs));
    let rec = b.get(&r.location()).await;
    assert_eq!(rec.status, StatusCode::OK);
    assert_eq!(rec.headers["cache-control"], "no-store");
    assert_eq!(rec.text("#nhs-number"), spaced, "NHS number as 3-3-4");
    let name = rec.text("#patient-name");
    let family = p["name"][0]["family"].as_str().unwrap().to_uppercase();
    assert!(name.starts_with(&format!("{family}, ")), "{name}");
    let banner = rec.text("#patient-banner");
    let born = chrono::NaiveDate::parse_from_str(p["birthDate"].as_str().unwrap(), "%Y-%m-%d").unwrap();
    assert!(
        banner.contains(&format!("Born {}", born.format("%d-%b-%Y"))),
        "{banner}"
    );
    assert!(banner.contains("Gender"), "{banner}");
    assert!(banner.contains("Address"), "{banner}");
    assert!(
        [
            "Known allergies",
            "No known allergies",
            "Allergies not recorded",
            "Allergies unavailable"
        ]
        .iter()
        .any(|l| banner.contains(l)),
        "{banner}"
    );
    // Every section says how current it is.
    let asof = rec.select_all(".hale-section .hale-asof");
    assert!(asof.len() >= 8, "{asof:?}");
    assert!(asof.iter().all(|a| a.starts_with("Up to date at ")), "{asof:?}");
    // A wrong check digit: an error linked to the box, not a search.
    let mut bad = nhs.clone().into_bytes();
    bad[9] = if bad[9] == b'0' { b'1' } else { bad[9] - 1 };
    let bad = String::from_utf8(bad).unwrap();
    let r = b.post("/ui/find", &[("csrf", &token), ("q", &bad)]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.attr(".nhsuk-error-summary__list a", "href").unwrap(), "#q");
    assert!(r.text(".nhsuk-error-summary__list").contains("check digit"));
    assert_eq!(r.attr("input#q", "aria-describedby").unwrap(), "q-hint q-error");
    // A name and date of birth: a results table with the patient in it.
    let q = format!(
        "{}, {} {}",
        p["name"][0]["family"].as_str().unwrap(),
        p["name"][0]["given"][0].as_str().unwrap(),
        born.format("%d/%m/%Y")
    );
    let r = b.post("/ui/find", &[("csrf", &token), ("q", &q)]).await;
    assert_eq!(r.status, StatusCode::OK);
    let rows = r.select_all("table tbody tr");
    assert!(rows.iter().any(|row| row.contains(&spaced)), "{q}: {rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patient_supplied_text_is_escaped_everywhere() {
    let env = env().await;
    let nasty = "<script>alert(1)</script>";
    let nhs = nhs_with_check("999000123");
    let (st, created) = fhir(
        &env,
        "POST",
        "/Patient",
        Some(json!({"resourceType": "Patient",
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}],
            "name": [{"use": "official", "family": nasty, "given": ["<img src=x onerror=alert(2)>"]}],
            "gender": "female", "birthDate": "1970-01-01",
            "address": [{"line": ["1 <b>Bold</b> St"], "city": "\"Quote\" & Co", "postalCode": "G1 1AA"}]})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap();
    let mut b = Browser::new(&env);
    b.sign_in("dr.demo", demo_password("dr.demo")).await;
    let rec = b.get(&format!("/ui/patient/{id}")).await;
    assert_eq!(rec.status, StatusCode::OK);
    assert!(rec.select_all("script").is_empty(), "a script element got through");
    assert!(rec.select_all("img").is_empty(), "an img element got through");
    assert!(rec.select_all("#patient-banner b").is_empty());
    assert!(rec
        .text("#patient-name")
        .starts_with("<SCRIPT>ALERT(1)</SCRIPT>, <img src=x onerror=alert(2)>"));
    assert!(rec.text("#patient-banner").contains("1 <b>Bold</b> St, \"Quote\" & Co"));
    // A note with markup is stored and shown as text.
    let token = b.csrf().await;
    let r = b
        .post(
            &format!("/ui/patient/{id}/note"),
            &[("csrf", &token), ("note", "<script>alert(3)</script> seen")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let rec = b.get(&format!("/ui/patient/{id}")).await;
    assert!(rec.select_all("script").is_empty());
    assert!(rec.text("#section-notes").contains("<script>alert(3)</script> seen"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notes_and_observations_show_errors_by_field_and_save() {
    let env = env().await;
    let mut b = Browser::new(&env);
    b.sign_in("dr.demo", demo_password("dr.demo")).await;
    let token = b.csrf().await;
    let r = b
        .post("/ui/patient/pat-000002/note", &[("csrf", &token), ("note", "  ")])
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.attr(".nhsuk-error-summary__list a", "href").unwrap(), "#note");
    assert!(r.text("#note-error").contains("Enter the note"));
    let r = b
        .post(
            "/ui/patient/pat-000002/observation",
            &[("csrf", &token), ("pulse", "fast"), ("temp", "52")],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let links: Vec<String> = {
        let d = r.doc();
        let sel = Selector::parse(".nhsuk-error-summary__list a").unwrap();
        d.select(&sel)
            .map(|e| e.value().attr("href").unwrap().to_string())
            .collect()
    };
    assert_eq!(links, vec!["#pulse", "#temp"]);
    assert_eq!(
        r.attr("input#pulse", "value").unwrap(),
        "fast",
        "what was typed is kept"
    );
    let r = b
        .post(
            "/ui/patient/pat-000002/observation",
            &[("csrf", &token), ("pulse", "72"), ("systolic", "128")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let rec = b.get("/ui/patient/pat-000002").await;
    let vitals = rec.text("#section-vitals");
    assert!(vitals.contains("Heart rate 72 beats/minute"), "{vitals}");
    assert!(vitals.contains("Dr Demo Clinician"), "{vitals}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clerks_see_no_clinical_sections_and_check_in_with_undo() {
    let env = env().await;
    let mut b = Browser::new(&env);
    b.sign_in("clerk.demo", demo_password("clerk.demo")).await;
    let rec = b.get("/ui/patient/pat-000001").await;
    assert_eq!(rec.status, StatusCode::OK);
    assert!(rec.select_all("#section-notes").is_empty());
    assert!(rec.select_all("#section-results").is_empty());
    assert!(!rec.select_all("#section-upcoming").is_empty());
    assert!(rec.text("#patient-banner").contains("Allergies unavailable"));
    // A clerk cannot open the note form's write path either (the API refuses).
    let token = b.csrf().await;
    let r = b
        .post("/ui/patient/pat-000001/note", &[("csrf", &token), ("note", "x")])
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("may not change DocumentReference"), "{}", r.body);
    // Today's list of a clinic with appointments; one click checks in.
    let today = hale_sched::uktime::uk_date(hale_server::now_ms());
    let (_, bundle) = fhir(
        &env,
        "GET",
        &format!("/Appointment?date={today}&status=booked&_count=1"),
        None,
    )
    .await;
    let appt = &bundle["entry"][0]["resource"];
    let Some(appt_id) = appt["id"].as_str() else {
        eprintln!("no booked appointment today on this board; nothing to check in");
        return;
    };
    let loc = appt["participant"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|p| p["actor"]["reference"].as_str().filter(|r| r.starts_with("Location/")))
        .unwrap()
        .trim_start_matches("Location/loc-")
        .to_string();
    let sched = format!("sched-{loc}");
    let list = b.get(&format!("/ui/clinic/{sched}?date={today}")).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    assert_eq!(list.text(&format!("#status-{appt_id}")), "Booked");
    let back = format!("/ui/clinic/{sched}?date={today}");
    let r = b
        .post(
            &format!("/ui/appointment/{appt_id}/status"),
            &[("csrf", &token), ("status", "checked-in"), ("back", &back)],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let after = b.get(r.location().split('#').next().unwrap()).await;
    assert_eq!(after.text(&format!("#status-{appt_id}")), "Checked in");
    assert!(after.text("#flash").contains("Checked in"));
    let undo_status = after.attr("#flash input[name=status]", "value").unwrap();
    assert_eq!(undo_status, "booked");
    let r = b
        .post(
            &format!("/ui/appointment/{appt_id}/status"),
            &[("csrf", &token), ("status", &undo_status), ("back", &back)],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let again = b.get(&back).await;
    assert_eq!(again.text(&format!("#status-{appt_id}")), "Booked");
    // An open redirect through `back` goes nowhere but the clinic lists.
    let r = b
        .post(
            &format!("/ui/appointment/{appt_id}/status"),
            &[
                ("csrf", &token),
                ("status", "arrived"),
                ("back", "https://evil.example/"),
            ],
        )
        .await;
    assert!(r.location().starts_with("/ui/clinics"), "{}", r.location());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewing_a_record_in_the_ui_leaves_an_audit_event_for_the_user() {
    let env = env().await;
    let mut b = Browser::new(&env);
    b.sign_in("dr.demo", demo_password("dr.demo")).await;
    let rec = b.get("/ui/patient/pat-000003").await;
    assert_eq!(rec.status, StatusCode::OK);
    let start = std::time::Instant::now();
    loop {
        let (_, bundle) = fhir(&env, "GET", "/AuditEvent?patient=Patient/pat-000003&_count=50", None).await;
        let hit = bundle["entry"].as_array().into_iter().flatten().any(|e| {
            let s = e["resource"].to_string();
            s.contains("dr.demo") && s.contains("\"read\"")
        });
        if hit {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "no read AuditEvent for dr.demo on Patient/pat-000003: {bundle}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn booking_refuses_a_slot_taken_meanwhile() {
    let env = env().await;
    let mut b = Browser::new(&env);
    b.sign_in("clerk.demo", demo_password("clerk.demo")).await;
    let token = b.csrf().await;
    let page = b.get("/ui/book?patient=pat-000004&clinic=sched-qeh-cardiology").await;
    assert_eq!(page.status, StatusCode::OK);
    let href = page.attr("a[href^='/ui/book/check']", "href").expect("a free slot");
    let slot = href
        .split("slot=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_string();
    let check = b.get(&href).await;
    assert!(check.text(".nhsuk-summary-list").contains("Cardiology"));
    // Someone else books it between "check" and "confirm".
    let r = b
        .post(
            "/ui/book/confirm",
            &[("csrf", &token), ("patient", "pat-000005"), ("slot", &slot)],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let r = b
        .post(
            "/ui/book/confirm",
            &[("csrf", &token), ("patient", "pat-000004"), ("slot", &slot)],
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(r.text("main").contains("That slot was taken"), "{}", r.body);
    assert!(
        r.attr("main a[href^='/ui/book?']", "href").is_some(),
        "a way to choose another"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stylesheet_is_compiled_in_without_fonts_or_other_hosts() {
    let env = env().await;
    let mut b = Browser::new(&env);
    let page = b.get("/ui/sign-in").await;
    let href = page.attr("link[rel=stylesheet]", "href").unwrap();
    assert_eq!(href, format!("/ui/assets/{}/ui.css", hale_ui::assets::CSS_TAG));
    let css = b.get(&href).await;
    assert_eq!(css.status, StatusCode::OK);
    assert!(css.headers["cache-control"].to_str().unwrap().contains("immutable"));
    assert!(!css.body.contains("@font-face"));
    assert!(!css.body.contains("https://"));
    assert!(css.body.contains(".nhsuk-header"), "the NHS.UK frontend is in it");
    assert!(b.get("/ui/assets/000000000000/ui.css").await.status == StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paper_backfill_keeps_the_written_time_and_author() {
    let env = env().await;
    let (_, bundle) = fhir(&env, "GET", "/Patient?_id=pat-000006", None).await;
    let p = &bundle["entry"][0]["resource"];
    let nhs = p["identifier"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["system"] == "https://fhir.nhs.uk/Id/nhs-number")
        .unwrap()["value"]
        .as_str()
        .unwrap()
        .to_string();
    let mut b = Browser::new(&env);
    b.sign_in("clerk.demo", demo_password("clerk.demo")).await;
    assert_eq!(b.get("/ui/outage/backfill").await.status, StatusCode::FORBIDDEN);
    let mut b = Browser::new(&env);
    b.sign_in("admin.demo", demo_password("admin.demo")).await;
    let token = b.csrf().await;
    let r = b
        .post(
            "/ui/outage/backfill",
            &[
                ("csrf", &token),
                ("nhs", "123"),
                ("when", "31/12/2999 10:00"),
                ("author", ""),
                ("text", ""),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let links: Vec<String> = {
        let d = r.doc();
        let sel = Selector::parse(".nhsuk-error-summary__list a").unwrap();
        d.select(&sel)
            .map(|e| e.value().attr("href").unwrap().to_string())
            .collect()
    };
    assert_eq!(links, vec!["#nhs", "#when", "#author", "#text"]);
    let r = b
        .post(
            "/ui/outage/backfill",
            &[
                ("csrf", &token),
                ("nhs", &nhs),
                ("when", "01/12/2026 14:30"),
                ("author", "Staff Nurse Paper"),
                ("text", "Obs stable on paper chart"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let (_, found) = fhir(
        &env,
        "GET",
        "/DocumentReference?patient=Patient/pat-000006&_tag=https://hale.health/fhir/CodeSystem/tag|downtime-backfill",
        None,
    )
    .await;
    let doc = &found["entry"][0]["resource"];
    assert_eq!(doc["date"], "2026-12-01T14:30:00Z", "{found}");
    assert_eq!(doc["author"][0]["display"], "Staff Nurse Paper");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_gzipped_when_the_browser_takes_it() {
    use std::io::Read;
    let env = env().await;
    let mut b = Browser::new(&env);
    b.sign_in("clerk.demo", demo_password("clerk.demo")).await;
    let req = Request::get("/ui/clinics")
        .header(header::COOKIE, b.cookie_header())
        .header(header::ACCEPT_ENCODING, "gzip, deflate, br")
        .body(Body::empty())
        .unwrap();
    let resp = env.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.headers()[header::CONTENT_ENCODING], "gzip");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let z = axum::body::to_bytes(resp.into_body(), 1 << 24).await.unwrap();
    let mut html = String::new();
    flate2::read::GzDecoder::new(&z[..]).read_to_string(&mut html).unwrap();
    assert!(
        html.contains("Clinic lists") && html.len() > z.len(),
        "{} -> {}",
        html.len(),
        z.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outage_console_runs_the_recovery_and_ops_shows_the_cluster() {
    let env = env().await;
    let mut clerk = Browser::new(&env);
    clerk.sign_in("clerk.demo", demo_password("clerk.demo")).await;
    assert_eq!(clerk.get("/ui/outage").await.status, StatusCode::FORBIDDEN);
    assert_eq!(clerk.get("/ui/ops").await.status, StatusCode::FORBIDDEN);
    let mut b = Browser::new(&env);
    b.sign_in("admin.demo", demo_password("admin.demo")).await;
    let ops = b.get("/ui/ops").await;
    assert_eq!(ops.status, StatusCode::OK);
    assert!(ops.text("table").contains("voter"), "{}", ops.body);
    let token = b.csrf().await;
    // Tomorrow (a weekday board has clinics most days; the demo books 28 days ahead).
    let tomorrow = hale_sched::uktime::uk_date(hale_server::now_ms()).succ_opt().unwrap();
    let day = tomorrow.format("%Y-%m-%d").to_string();
    let r = b
        .post(
            "/ui/outage/declare",
            &[
                ("csrf", &token),
                ("start", &day),
                ("end", &day),
                ("sites", "qeh"),
                ("description", "PAS down"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let incident = r
        .location()
        .split("incident=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_string();
    let r = b
        .post(
            "/ui/outage/postpone",
            &[("csrf", &token), ("incident", &incident), ("clinic_runs", "false")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert!(r.location().contains("msg=Postponed"), "{}", r.location());
    let console = b.get(&r.location()).await;
    assert_eq!(console.status, StatusCode::OK);
    let report = console.text("#step-postponed + form ~ dl, .nhsuk-summary-list");
    assert!(report.contains("total"), "{report}");
    let postponed = console.select_all("table[aria-labelledby=postponed-list] tbody tr");
    let plan = b
        .post(
            "/ui/outage/rebook",
            &[("csrf", &token), ("incident", &incident), ("commit", "false")],
        )
        .await;
    assert_eq!(plan.status, StatusCode::OK);
    assert!(plan.text(".hale-flash").contains("nothing has changed yet"));
    assert!(plan.text("main").contains("placed"), "{}", plan.body);
    if !postponed.is_empty() {
        // One postponed appointment, rebooked by hand: open it, choose, confirm.
        let link = console.attr("a[href^='/ui/book?patient=']", "href").unwrap();
        let book = b.get(&link.replace("&amp;", "&")).await;
        assert_eq!(book.status, StatusCode::OK);
        assert!(book.text("h2.nhsuk-heading-l").starts_with("Rebook"), "{}", book.body);
        let choose = book
            .attr("a[href^='/ui/book/check']", "href")
            .expect("a free slot offered");
        let check = b.get(&choose.replace("&amp;", "&")).await;
        assert!(check.text(".nhsuk-summary-list").contains("Replaces"));
        let slot = check.attr("input[name=slot]", "value").unwrap();
        let patient = check.attr("input[name=patient]", "value").unwrap();
        let rebook = check.attr("input[name=rebook]", "value").unwrap();
        let done = b
            .post(
                "/ui/book/confirm",
                &[
                    ("csrf", &token),
                    ("patient", &patient),
                    ("slot", &slot),
                    ("rebook", &rebook),
                ],
            )
            .await;
        assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
        let (_, found) = fhir(
            &env,
            "GET",
            &format!("/Appointment?rebooked-from=Appointment/{rebook}"),
            None,
        )
        .await;
        assert_eq!(found["total"], 1, "{found}");
        let console = b.get(&format!("/ui/outage?incident={incident}")).await;
        let rows = console.select_all("table[aria-labelledby=postponed-list] tbody tr");
        assert_eq!(rows.len(), postponed.len(), "only the postponed are listed");
        assert_eq!(rows.iter().filter(|r| r.contains("Rebooked")).count(), 1, "{rows:?}");
    }
    let committed = b
        .post(
            "/ui/outage/rebook",
            &[("csrf", &token), ("incident", &incident), ("commit", "true")],
        )
        .await;
    assert_eq!(committed.status, StatusCode::OK);
    assert!(committed.text(".hale-flash").contains("committed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_from_the_record_page_and_its_review_by_a_privacy_officer() {
    let env = env_with(true).await;
    // A patient with no appointment anywhere: no legitimate relationship.
    let (s, p) = fhir(
        &env,
        "POST",
        "/Patient",
        Some(json!({"resourceType": "Patient", "name": [{"family": "Glass", "given": ["Bea"]}], "birthDate": "1990-04-05"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    let pid = p["id"].as_str().unwrap().to_string();
    let mut b = Browser::new(&env);
    b.sign_in("dr.demo", demo_password("dr.demo")).await;
    let rec = b.get(&format!("/ui/patient/{pid}")).await;
    assert_eq!(rec.status, StatusCode::OK);
    let refusal = rec.text("#break-glass");
    assert!(refusal.contains("no legitimate relationship"), "{refusal}");
    assert!(rec.select_all("#section-notes").is_empty(), "no clinical sections");
    assert!(!rec.body.contains("Write a note"), "no clinical actions");
    let token = rec.attr("#break-glass input[name=csrf]", "value").unwrap();
    // Too short a reason: back to the form with an error.
    let r = b
        .post(
            &format!("/ui/patient/{pid}/break-glass"),
            &[("csrf", &token), ("reason", "quick")],
        )
        .await;
    let again = b.get(&r.location()).await;
    assert!(again.text("#break-glass").contains("at least 10 characters"));
    let r = b
        .post(
            &format!("/ui/patient/{pid}/break-glass"),
            &[
                ("csrf", &token),
                ("reason", "<b>Chest pain</b> in ED, GP records unavailable"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let rec = b.get(&r.location()).await;
    assert!(rec.select_all("#break-glass").is_empty());
    assert!(!rec.select_all("#section-notes").is_empty(), "the record opens");
    assert!(rec.text(".hale-flash").contains("broke the glass"));
    // A clinician cannot see the review pages.
    assert_eq!(b.get("/ui/break-glass").await.status, StatusCode::FORBIDDEN);
    assert_eq!(b.get("/ui/who-looked").await.status, StatusCode::FORBIDDEN);

    // A privacy officer reviews it.
    let hash = hale_server::accounts::hash_password("privacy-officer-pw").unwrap();
    hale_server::accounts::propose(
        &env.app,
        Principal::new("admin.demo", Role::Admin).actor(),
        hale_store::accounts::AccountOp::Add {
            user: "po.demo".into(),
            role: "privacy-officer".into(),
            name: "Privacy Officer".into(),
            password_hash: hash,
        },
    )
    .await
    .unwrap()
    .unwrap();
    let mut po = Browser::new(&env);
    po.sign_in("po.demo", "privacy-officer-pw").await;
    let start = std::time::Instant::now();
    let list = loop {
        let list = po.get("/ui/break-glass").await;
        assert_eq!(list.status, StatusCode::OK, "{}", list.body);
        if !list.select_all("#episodes").is_empty() || start.elapsed() > std::time::Duration::from_secs(20) {
            break list;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let row = list.text("#episodes tbody tr");
    assert!(row.contains("dr.demo") && row.contains(&pid), "{row}");
    assert!(
        row.contains("<b>Chest pain</b> in ED"),
        "escaped text shown as text: {row}"
    );
    assert!(!list.body.contains("<b>Chest pain"), "never raw HTML");
    let action = list.attr("#episodes form", "action").unwrap();
    let token = list.attr("#episodes form input[name=csrf]", "value").unwrap();
    let r = po
        .post(&action, &[("csrf", &token), ("note", "ED attendance confirmed")])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let open = po.get("/ui/break-glass").await;
    assert!(!open.select_all("#no-episodes").is_empty(), "{}", open.body);
    let closed = po.get("/ui/break-glass?status=closed").await;
    assert!(closed.text("#episodes").contains("ED attendance confirmed"));
    // Who looked at this patient: the accesses under break-glass.
    let looked = po.get(&format!("/ui/who-looked?patient={pid}&purpose=BTG")).await;
    assert_eq!(looked.status, StatusCode::OK);
    let rows = looked.select_all("#looks tbody tr");
    assert!(
        rows.iter().any(|r| r.contains("dr.demo") && r.contains("BTG")),
        "{rows:?}"
    );
}
