//! `hale admit` against a running `hale serve`: a node configured to start
//! with only its most urgent class open, reopened in steps.

mod common;

use common::*;
use std::io::Write;

const CLERK_TOKEN: &str = "e2e-clerk-token";

#[test]
fn admit_opens_a_node_in_steps_and_shows_its_levels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let cfg = dir.path().join("hale.toml");
    write_config(&cfg, &format!("127.0.0.1:{port}"), &dir.path().join("data"));
    let mut f = std::fs::OpenOptions::new().append(true).open(&cfg).unwrap();
    write!(
        f,
        r#"
[[auth.tokens]]
token = "{CLERK_TOKEN}"
user = "clerk.e2e"
role = "clerk"

[admission]
start_class = "clinical"
[[admission.classes]]
name = "clinical"
[[admission.classes]]
name = "back-office"
[[admission.rules]]
class = "clinical"
roles = ["clinician"]
"#
    )
    .unwrap();
    drop(f);
    let mut serve = hale_cmd(dir.path());
    serve.arg("serve").arg("--config").arg(&cfg);
    let srv = Server::start(serve, port, dir.path(), "serve");
    let url = srv.base_url();
    let admit = |args: &[&str], token: &str, label: &str| {
        let mut c = hale_cmd(dir.path());
        c.arg("admit").args(["--url", &url, "--token", token]).args(args);
        run(c, dir.path(), label)
    };

    // Started with class 1 only.
    let out = admit(&["--status"], ADMIN_TOKEN, "status");
    out.assert_success("hale admit --status");
    assert!(out.stdout.contains("the operator admits class 1\n"), "{}", out.stdout);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.contains("back-office") && l.contains("closed")),
        "{}",
        out.stdout
    );
    assert_eq!(srv.get("/Patient", Some(CLIN_TOKEN)).status, 200);
    let r = srv.get("/Patient", Some(CLERK_TOKEN));
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("60"));
    assert!(r.text().contains("class 2 (back-office)"), "{}", r.text());

    // A quarter of class 2, then all of it.
    let out = admit(&["--class", "2", "--percent", "25"], ADMIN_TOKEN, "class2-25");
    out.assert_success("hale admit --class 2 --percent 25");
    assert!(
        out.stdout.contains("(25% of class 2's users), set by e2e.admin"),
        "{}",
        out.stdout
    );
    let out = admit(&["--percent", "100"], ADMIN_TOKEN, "percent100");
    out.assert_success("hale admit --percent 100");
    assert!(
        out.stdout.contains("the operator admits classes 1-2, set by e2e.admin"),
        "{}",
        out.stdout
    );
    assert_eq!(srv.get("/Patient", Some(CLERK_TOKEN)).status, 200);

    // The JSON, as a monitoring probe reads it.
    let out = admit(&["--json"], ADMIN_TOKEN, "json");
    out.assert_success("hale admit --json");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(v["operator"]["class"], 2);
    assert_eq!(v["classes"][1]["state"], "open");
    assert!(v["classes"][1]["shed"]["operator"].as_u64().unwrap() >= 1, "{v}");

    // Refusals say what to do.
    let out = admit(&["--class", "3"], ADMIN_TOKEN, "class3");
    assert!(!out.status.success());
    assert!(out.stderr.contains("classes are 1-2"), "{}", out.stderr);
    let out = admit(&["--class", "1"], CLIN_TOKEN, "not-admin");
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("HTTP 403") && out.stderr.contains("admin token"),
        "{}",
        out.stderr
    );
    let out = admit(&["--percent", "0"], ADMIN_TOKEN, "percent0");
    assert!(!out.status.success());
    assert!(out.stderr.contains("--percent"), "{}", out.stderr);
}
