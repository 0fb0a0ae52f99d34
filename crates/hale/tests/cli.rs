//! End-to-end tests of the `hale` binary: each runs the real executable as a
//! child process on a loopback port, over its own temporary directory.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("hale-cli-").tempdir().expect("tempdir")
}

/// Three distinct free ports.
fn three_ports() -> (u16, u16, u16) {
    loop {
        let (a, b, c) = (free_port(), free_port(), free_port());
        if a != b && b != c && a != c {
            return (a, b, c);
        }
    }
}

// ---------------------------------------------------------------------------
// 1. Help

#[test]
fn help_for_every_command_exits_zero_and_names_its_flags() {
    let dir = tempdir();
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--help"],
            &[
                "serve",
                "import",
                "export",
                "record-hash",
                "sync",
                "bench",
                "--log-json",
                "--help",
                "--version",
            ],
        ),
        (
            &["serve", "--help"],
            &[
                "--data",
                "--listen",
                "--config",
                "--demo",
                "--demo-patients",
                "HALE_CONFIG",
                "--tls-cert",
                "--tls-key",
            ],
        ),
        (&["cert", "--help"], &["init", "issue"]),
        (&["audit", "verify", "--help"], &["--data", "HALE_DATA"]),
        (
            &["cert", "issue", "--help"],
            &["--dir", "--name", "--node-id", "--role", "--dns", "--ip", "--force"],
        ),
        (
            &["import", "--help"],
            &["--url", "--token", "--batch", "FILES", "HALE_URL", "HALE_TOKEN"],
        ),
        (
            &["export", "--help"],
            &[
                "--out",
                "--data",
                "HALE_DATA",
                "--url",
                "--type",
                "--since",
                "--patients",
                "--group",
            ],
        ),
        (&["record-hash", "--help"], &["--data", "HALE_DATA"]),
        (
            &["sync", "--help"],
            &["status", "verify", "journal", "--url", "--token"],
        ),
        (
            &["bench", "--help"],
            &[
                "--url",
                "--token",
                "--connections",
                "--duration-s",
                "--warmup-s",
                "--seed-patients",
                "--json",
                "search-identifier",
            ],
        ),
    ];
    for (i, (args, expected)) in cases.iter().enumerate() {
        let mut cmd = hale_cmd(dir.path());
        cmd.args(*args);
        let out = run(cmd, dir.path(), &format!("help-{i}"));
        let what = format!("hale {}", args.join(" "));
        out.assert_success(&what);
        for flag in *expected {
            assert!(
                out.stdout.contains(flag),
                "`{what}` does not mention {flag}:\n{}",
                out.stdout
            );
        }
    }
}

// ---------------------------------------------------------------------------
// 2. Serve refuses to start when nobody could use it

#[test]
fn serve_without_tokens_or_demo_refuses_and_says_how_to_fix_it() {
    let dir = tempdir();
    let port = free_port();

    // Flags only.
    let mut cmd = hale_cmd(dir.path());
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(dir.path().join("data"));
    let out = run(cmd, dir.path(), "no-tokens-flags");
    assert_refuses_without_tokens(&out, port);

    // A config file that names no tokens.
    let cfg = dir.path().join("no-tokens.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata = '{}'\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let mut cmd = hale_cmd(dir.path());
    cmd.arg("serve").arg("--config").arg(&cfg);
    let out = run(cmd, dir.path(), "no-tokens-config");
    assert_refuses_without_tokens(&out, port);
}

fn assert_refuses_without_tokens(out: &Output, port: u16) {
    assert!(
        !out.status.success(),
        "hale serve without tokens must fail, got {}\n{}",
        out.status,
        out.stderr
    );
    assert!(
        out.stderr.contains("[[auth.tokens]]") || out.stderr.contains("--demo"),
        "the error must say how to fix it ([[auth.tokens]] or --demo):\n{}",
        out.stderr
    );
    assert!(
        nothing_listens(port),
        "a refused server must not be listening on {port}"
    );
}

// ---------------------------------------------------------------------------
// 3. Configuration precedence: file < environment < flags

#[test]
fn config_flag_beats_env_beats_file() {
    let dir = tempdir();
    let (a, b, c) = three_ports();
    let cfg = dir.path().join("hale.toml");
    write_config(&cfg, &format!("127.0.0.1:{a}"), &dir.path().join("data"));

    // File A, env B, flag C -> C.
    let mut cmd = hale_cmd(dir.path());
    cmd.env("HALE_LISTEN", format!("127.0.0.1:{b}"));
    cmd.arg("serve")
        .arg("--config")
        .arg(&cfg)
        .args(["--listen", &format!("127.0.0.1:{c}")]);
    let s = Server::start(cmd, c, dir.path(), "flag-wins");
    assert!(
        nothing_listens(a) && nothing_listens(b),
        "with --listen the server must listen on {c} only\n{}",
        s.logs()
    );
    // The tokens came from the file.
    assert_eq!(s.get("/Patient", Some(ADMIN_TOKEN)).status, 200, "{}", s.logs());
    drop(s);

    // File A, env B -> B.
    let mut cmd = hale_cmd(dir.path());
    cmd.env("HALE_LISTEN", format!("127.0.0.1:{b}"));
    cmd.arg("serve").arg("--config").arg(&cfg);
    let s = Server::start(cmd, b, dir.path(), "env-wins");
    assert!(
        nothing_listens(a) && nothing_listens(c),
        "HALE_LISTEN must override the file\n{}",
        s.logs()
    );
    drop(s);

    // File A alone -> A; HALE_CONFIG names the file as well as --config does.
    let mut cmd = hale_cmd(dir.path());
    cmd.env("HALE_CONFIG", &cfg).arg("serve");
    let s = Server::start(cmd, a, dir.path(), "file-only");
    assert!(
        nothing_listens(b) && nothing_listens(c),
        "the file's listen address must be used\n{}",
        s.logs()
    );
    drop(s);
}

#[test]
fn config_with_unknown_key_is_refused_naming_the_file() {
    let dir = tempdir();
    let port = free_port();
    // (file, key, text before the tables, text after them): each file is valid but for `key`.
    let cases = [
        ("top-level.toml", "colour", "colour = \"blue\"\n", ""),
        (
            "nested.toml",
            "body_bytes_maximum",
            "",
            "[limits]\nbody_bytes_maximum = 10\n",
        ),
        (
            "token.toml",
            "rol",
            "",
            "[[auth.tokens]]\ntoken = \"t\"\nuser = \"u\"\nrole = \"admin\"\nrol = \"admin\"\n",
        ),
    ];
    for (name, key, top, tables) in cases {
        let cfg = dir.path().join(name);
        let text = format!(
            "{top}listen = \"127.0.0.1:{port}\"\ndata = '{}'\n\n[[auth.tokens]]\ntoken = \"ok\"\nuser = \"ok\"\nrole = \"admin\"\n\n{tables}",
            dir.path().join("data").display()
        );
        std::fs::write(&cfg, &text).unwrap();
        let mut cmd = hale_cmd(dir.path());
        cmd.arg("serve").arg("--config").arg(&cfg);
        let out = run(cmd, dir.path(), name);
        assert!(
            !out.status.success(),
            "{name} has an unknown key and must be refused:\n{text}\n{}",
            out.stderr
        );
        assert!(
            out.stderr.contains(&cfg.display().to_string()),
            "the error must name the file {}:\n{}",
            cfg.display(),
            out.stderr
        );
        assert!(
            out.stderr.contains(key),
            "the error should name the unknown key '{key}':\n{}",
            out.stderr
        );
        assert!(nothing_listens(port), "a refused config must not start a server");
    }
}

// ---------------------------------------------------------------------------
// 4. Demo mode

#[test]
fn demo_board_loads_and_needs_a_token() {
    let dir = tempdir();
    let port = free_port();
    let mut cmd = hale_cmd(dir.path());
    cmd.args([
        "serve",
        "--demo",
        "--demo-patients",
        "200",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data",
    ])
    .arg(dir.path().join("data"));
    let s = Server::start(cmd, port, dir.path(), "demo");

    let r = s.get("/Patient?_count=1", Some("demo-clinician"));
    assert_eq!(r.status, 200, "{}\n{}", r.text(), s.logs());
    let bundle = r.json();
    assert_eq!(bundle["type"], "searchset");
    let found = matches(&bundle);
    assert_eq!(found.len(), 1, "_count=1 must return one patient: {bundle}");
    assert_eq!(found[0]["resourceType"], "Patient");
    assert!(
        bundle["link"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["relation"] == "next"),
        "200 demo patients with _count=1 must have a next page: {bundle}"
    );

    let r = s.get("/Patient", None);
    assert_eq!(r.status, 401, "GET /Patient without a token: {}", r.text());
    assert_eq!(r.json()["resourceType"], "OperationOutcome");

    let r = s.get("/Patient?_count=1", Some("not-a-demo-token"));
    assert_eq!(r.status, 401, "an unknown token: {}", r.text());
}

// ---------------------------------------------------------------------------
// 5. Import

struct Fixture {
    bundle: PathBuf,
    ndjson: PathBuf,
    /// (id if the file gave one, NHS number) of every Patient that must load.
    good_patients: Vec<(Option<&'static str>, String)>,
    /// NHS numbers (valid or not) of Patients that must be refused.
    refused_nhs: Vec<String>,
    refused_families: Vec<&'static str>,
}

fn write_fixture(dir: &Path) -> Fixture {
    let n = nhs_numbers(999_000_100, 7);
    let bad = bad_nhs(&n[3]);
    let mut unknown_element = patient(None, &n[2], "Unknownelement");
    unknown_element["favouriteColour"] = json!("green");

    let resources = [
        patient(Some("imp-p1"), &n[0], "Bundleperson"),
        location(Some("imp-l1"), "Imported Clinic A"),
        patient(None, &bad, "Badnumber"),
        patient(None, &n[1], "Bundlenoid"),
        unknown_element,
        location(None, "Imported Clinic B"),
    ];
    let entries: Vec<Value> = resources
        .iter()
        .enumerate()
        .map(|(i, r)| json!({"fullUrl": format!("urn:uuid:00000000-0000-4000-8000-00000000000{i}"), "resource": r}))
        .collect();
    let bundle = dir.join("bundle.json");
    std::fs::write(
        &bundle,
        serde_json::to_string_pretty(&json!({"resourceType": "Bundle", "type": "collection", "entry": entries}))
            .unwrap(),
    )
    .unwrap();

    let ndjson = dir.join("records.ndjson");
    let lines = [
        patient(Some("imp-p2"), &n[4], "Ndjsonperson").to_string(),
        location(None, "Imported Clinic C").to_string(),
        // Line 3: cut short.
        format!(
            r#"{{"resourceType": "Patient", "identifier": [{{"system": "{NHS_SYSTEM}", "value": "{}"}}], "name": [{{"family": "Brokenline""#,
            n[6]
        ),
        String::new(),
        patient(None, &n[5], "Ndjsonnoid").to_string(),
    ];
    std::fs::write(&ndjson, lines.join("\n") + "\n").unwrap();

    Fixture {
        bundle,
        ndjson,
        good_patients: vec![
            (Some("imp-p1"), n[0].clone()),
            (None, n[1].clone()),
            (Some("imp-p2"), n[4].clone()),
            (None, n[5].clone()),
        ],
        refused_nhs: vec![bad, n[2].clone(), n[6].clone()],
        refused_families: vec!["Badnumber", "Unknownelement", "Brokenline"],
    }
}

fn import(dir: &Path, s: &Server, f: &Fixture) -> Output {
    let mut cmd = hale_cmd(dir);
    cmd.arg("import")
        .arg(&f.bundle)
        .arg(&f.ndjson)
        .args(["--url", &s.base_url(), "--token", ADMIN_TOKEN]);
    run(cmd, dir, "import")
}

/// The line of `out` that contains `needle`.
fn line_with<'a>(out: &'a str, needle: &str) -> &'a str {
    out.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line mentions {needle:?} in:\n{out}"))
}

#[test]
fn import_loads_valid_resources_and_explains_each_rejection() {
    let dir = tempdir();
    let s = configured_server(dir.path(), free_port(), "import-server");
    let f = write_fixture(dir.path());
    let out = import(dir.path(), &s, &f);
    out.assert_success("hale import");
    let o = &out.stdout;

    // Counts.
    assert!(o.contains("Loaded 7 resource(s)"), "7 resources are valid:\n{o}");
    let patients = line_with(o, "Patient");
    assert_eq!(
        patients.split_whitespace().collect::<Vec<_>>(),
        ["4", "Patient"],
        "loaded Patients:\n{o}"
    );
    let locations = line_with(o, "Location");
    assert_eq!(
        locations.split_whitespace().collect::<Vec<_>>(),
        ["3", "Location"],
        "loaded Locations:\n{o}"
    );
    assert!(o.contains("Rejected 3 resource(s)"), "3 resources are invalid:\n{o}");

    // Each rejection names where it came from and why.
    let rejections: Vec<&str> = o.lines().skip_while(|l| !l.starts_with("Rejected")).skip(1).collect();
    assert_eq!(rejections.len(), 3, "one line per rejection:\n{o}");
    let bundle = f.bundle.display().to_string();
    let ndjson = f.ndjson.display().to_string();

    let bad_nhs = line_with(o, &format!("{bundle} entry[2]"));
    assert!(
        bad_nhs.contains("NHS number") && bad_nhs.contains(&f.refused_nhs[0]),
        "bad NHS number: {bad_nhs}"
    );
    assert!(bad_nhs.contains("400"), "{bad_nhs}");

    let unknown = line_with(o, &format!("{bundle} entry[4]"));
    assert!(
        unknown.contains("unknown element") && unknown.contains("favouriteColour"),
        "unknown element: {unknown}"
    );

    let broken = line_with(o, &format!("{ndjson}:3"));
    assert!(broken.contains("not valid JSON"), "malformed line: {broken}");

    // What loaded is there; what was refused is not.
    for (id, nhs) in &f.good_patients {
        let r = s.get(&by_nhs(nhs), Some(CLIN_TOKEN));
        assert_eq!(r.status, 200, "{}", r.text());
        let found = matches(&r.json());
        assert_eq!(
            found.len(),
            1,
            "imported patient {nhs} must be found once: {}",
            r.text()
        );
        if let Some(id) = id {
            assert_eq!(found[0]["id"], *id, "a resource with an id is stored under that id");
            assert_eq!(s.get(&format!("/Patient/{id}"), Some(CLIN_TOKEN)).status, 200);
        }
    }
    for nhs in &f.refused_nhs {
        let r = s.get(&by_nhs(nhs), Some(CLIN_TOKEN));
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            matches(&r.json()).is_empty(),
            "refused patient {nhs} must not exist: {}",
            r.text()
        );
    }
    for family in &f.refused_families {
        let r = s.get(&format!("/Patient?family={family}"), Some(CLIN_TOKEN));
        assert!(
            matches(&r.json()).is_empty(),
            "refused patient {family} must not exist: {}",
            r.text()
        );
    }
    assert_eq!(s.get("/Location/imp-l1", Some(CLIN_TOKEN)).status, 200);
    for name in ["Imported%20Clinic%20B", "Imported%20Clinic%20C"] {
        let r = s.get(&format!("/Location?name={name}"), Some(CLIN_TOKEN));
        assert_eq!(matches(&r.json()).len(), 1, "Location {name}: {}", r.text());
    }
    let r = s.get("/Patient?_count=100", Some(CLIN_TOKEN));
    assert_eq!(
        matches(&r.json()).len(),
        4,
        "exactly the 4 valid patients exist: {}",
        r.text()
    );
}

// ---------------------------------------------------------------------------
// 6. Export

/// Patient.ndjson in `out`, parsed; every line must be a Patient.
fn exported_patients(out: &Path) -> Vec<Value> {
    let path = out.join("Patient.ndjson");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}:{} is not JSON ({e}): {l}", path.display(), i + 1));
            assert_eq!(v["resourceType"], "Patient", "{}:{}", path.display(), i + 1);
            v
        })
        .collect()
}

fn nhs_of(patients: &[Value]) -> BTreeSet<String> {
    patients
        .iter()
        .map(|p| {
            p.pointer("/identifier/0/value")
                .and_then(Value::as_str)
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn export_writes_the_imported_patients_as_ndjson() {
    let dir = tempdir();
    let mut s = configured_server(dir.path(), free_port(), "export-server");
    let f = write_fixture(dir.path());
    import(dir.path(), &s, &f).assert_success("hale import");
    let data = dir.path().join("data");
    let want: BTreeSet<String> = f.good_patients.iter().map(|(_, n)| n.clone()).collect();

    // While the node runs.
    let live = dir.path().join("export-live");
    let mut cmd = hale_cmd(dir.path());
    cmd.arg("export").arg("--out").arg(&live).arg("--data").arg(&data);
    let out = run(cmd, dir.path(), "export-live");
    out.assert_success("hale export (server running)");
    let patients = exported_patients(&live);
    assert_eq!(patients.len(), f.good_patients.len(), "{}", out.stdout);
    assert_eq!(nhs_of(&patients), want);
    for id in ["imp-p1", "imp-p2"] {
        assert!(
            patients.iter().any(|p| p["id"] == id),
            "exported patients keep their ids: {id}"
        );
    }
    let patient_line = line_with(&out.stdout, "Patient.ndjson");
    assert_eq!(patient_line.split_whitespace().next(), Some("4"), "{}", out.stdout);
    let locations = std::fs::read_to_string(live.join("Location.ndjson")).unwrap();
    assert_eq!(locations.lines().count(), 3);
    let leftovers: Vec<_> = std::fs::read_dir(&live)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "export leaves no temporary files: {leftovers:?}");

    // After a clean stop, the same.
    s.signal("TERM");
    let st = s
        .wait_exit()
        .unwrap_or_else(|| panic!("server did not stop after SIGTERM\n{}", s.logs()));
    assert!(st.success(), "{st}\n{}", s.logs());
    let stopped = dir.path().join("export-stopped");
    let mut cmd = hale_cmd(dir.path());
    cmd.arg("export").arg("--out").arg(&stopped).arg("--data").arg(&data);
    run(cmd, dir.path(), "export-stopped").assert_success("hale export (server stopped)");
    assert_eq!(
        exported_patients(&stopped),
        patients,
        "export after stop matches export while running"
    );
}

#[test]
fn export_of_a_directory_without_a_store_fails_clearly() {
    let dir = tempdir();
    let mut cmd = hale_cmd(dir.path());
    cmd.arg("export")
        .arg("--out")
        .arg(dir.path().join("out"))
        .arg("--data")
        .arg(dir.path().join("nothing-here"));
    let out = run(cmd, dir.path(), "export-empty");
    assert!(!out.status.success(), "{}", out.stdout);
    assert!(out.stderr.contains("no Hale store"), "{}", out.stderr);
}

// ---------------------------------------------------------------------------
// 7. Graceful shutdown

#[test]
fn sigterm_stops_the_server_cleanly() {
    let dir = tempdir();
    let mut s = configured_server(dir.path(), free_port(), "sigterm");
    let nhs = &nhs_numbers(999_000_500, 1)[0];
    let r = s.put(
        "/Patient/term-1",
        Some(CLIN_TOKEN),
        &patient(Some("term-1"), nhs, "Terminated"),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    // A read leaves an audit record for the shutdown to drain.
    assert_eq!(s.get("/Patient/term-1", Some(CLIN_TOKEN)).status, 200);

    s.signal("TERM");
    let st = s
        .wait_exit()
        .unwrap_or_else(|| panic!("server did not exit within {EXIT_WAIT:?} of SIGTERM\n{}", s.logs()));
    assert_eq!(st.code(), Some(0), "SIGTERM must end in exit code 0\n{}", s.logs());
    assert!(nothing_listens(s.port), "the port is released");
}

/// `hale audit verify` passes on the chain a server wrote, and names the row
/// that was edited in the stopped data directory.
#[test]
fn audit_verify_detects_an_edited_row() {
    let dir = tempdir();
    let mut s = configured_server(dir.path(), free_port(), "audit");
    let nhs = &nhs_numbers(999_000_600, 1)[0];
    let r = s.put(
        "/Patient/audit-1",
        Some(CLIN_TOKEN),
        &patient(Some("audit-1"), nhs, "Audited"),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    for _ in 0..3 {
        assert_eq!(s.get("/Patient/audit-1", Some(CLIN_TOKEN)).status, 200);
    }
    // SIGTERM drains the read audit before exit.
    s.signal("TERM");
    let st = s
        .wait_exit()
        .unwrap_or_else(|| panic!("server did not exit\n{}", s.logs()));
    assert_eq!(st.code(), Some(0), "{}", s.logs());

    let data = dir.path().join("data");
    let verify = |label: &str| {
        let mut cmd = hale_cmd(dir.path());
        cmd.args(["audit", "verify", "--data"]).arg(&data);
        run(cmd, dir.path(), label)
    };
    let ok = verify("verify-ok");
    ok.assert_success("audit verify of an untouched store");
    assert!(ok.stdout.contains("audit chain OK"), "{}", ok.stdout);

    let conn = hale_store::rusqlite::Connection::open(data.join(hale_store::DB_FILE)).unwrap();
    let (rows, seq): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT COUNT(*) FROM audit), (SELECT MIN(seq) FROM audit WHERE action = 'R' AND user = 'dr.e2e')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("a read was audited");
    assert!(ok.stdout.contains(&format!("{rows} rows")), "{}", ok.stdout);
    conn.execute(
        "UPDATE audit SET user = 'someone.else', outcome = 0 WHERE seq = ?1",
        [seq],
    )
    .unwrap();
    drop(conn);

    let bad = verify("verify-bad");
    assert!(!bad.status.success(), "an edited row must fail verify: {}", bad.stdout);
    assert!(
        bad.stderr.contains(&format!("audit row {seq} was changed")),
        "names the row: {}",
        bad.stderr
    );
}

// ---------------------------------------------------------------------------
// 8. Durability across a crash

#[test]
fn acknowledged_writes_survive_sigkill_and_restart() {
    let dir = tempdir();
    let port = free_port();
    let mut s = configured_server(dir.path(), port, "before-crash");
    let n = nhs_numbers(999_000_700, 2);

    let put = s.put(
        "/Patient/durable-1",
        Some(CLIN_TOKEN),
        &patient(Some("durable-1"), &n[0], "Durable"),
    );
    assert_eq!(put.status, 201, "{}", put.text());
    let post = s.post("/Patient", Some(CLIN_TOKEN), &patient(None, &n[1], "Posted"));
    assert_eq!(post.status, 201, "{}", post.text());
    let posted_id = post.json()["id"]
        .as_str()
        .expect("created resource has an id")
        .to_string();

    s.crash();
    assert!(nothing_listens(port), "the crashed server is gone");

    let s = configured_server(dir.path(), port, "after-crash");
    for (id, created) in [("durable-1", &put), (posted_id.as_str(), &post)] {
        let r = s.get(&format!("/Patient/{id}"), Some(CLIN_TOKEN));
        assert_eq!(r.status, 200, "Patient/{id} after restart: {}\n{}", r.text(), s.logs());
        assert_eq!(r.json(), created.json(), "Patient/{id} reads back as it was written");
        assert_eq!(r.header("etag"), created.header("etag"), "same version after restart");
    }
    let r = s.get(&by_nhs(&n[0]), Some(CLIN_TOKEN));
    assert_eq!(matches(&r.json()).len(), 1, "search index survives too: {}", r.text());
}

// ---------------------------------------------------------------------------
// Defects found while writing the tests above (each test states the contract
// it checks; see the report for the cause).

/// One NDJSON line that is valid JSON but not a resource (no `resourceType`,
/// or not an object) must be a per-line rejection like a malformed line, not
/// abort the whole import and drop its batch.
#[test]
fn import_rejects_a_line_that_is_not_a_resource_and_loads_the_rest() {
    let dir = tempdir();
    let s = configured_server(dir.path(), free_port(), "not-a-resource");
    let n = nhs_numbers(999_000_300, 2);
    let file = dir.path().join("mixed.ndjson");
    let lines = [
        patient(None, &n[0], "Beforeline").to_string(),
        json!({"name": [{"family": "Noresourcetype"}]}).to_string(),
        "[1, 2, 3]".to_string(),
        patient(None, &n[1], "Afterline").to_string(),
    ];
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();

    let mut cmd = hale_cmd(dir.path());
    cmd.arg("import")
        .arg(&file)
        .args(["--url", &s.base_url(), "--token", ADMIN_TOKEN]);
    let out = run(cmd, dir.path(), "import-mixed");
    out.assert_success("hale import of a file with lines that are not resources");
    assert!(out.stdout.contains("Loaded 2 resource(s)"), "{}", out.stdout);
    assert!(out.stdout.contains("Rejected 2 resource(s)"), "{}", out.stdout);
    line_with(&out.stdout, &format!("{}:2", file.display()));
    line_with(&out.stdout, &format!("{}:3", file.display()));
    for nhs in &n {
        let r = s.get(&by_nhs(nhs), Some(CLIN_TOKEN));
        assert_eq!(
            matches(&r.json()).len(),
            1,
            "valid line with {nhs} must be loaded: {}",
            r.text()
        );
    }
}

/// Indices of every `entry[<n>]` in `s`.
fn entry_indices(s: &str) -> Vec<usize> {
    s.match_indices("entry[")
        .filter_map(|(at, m)| s[at + m.len()..].split(']').next().and_then(|n| n.parse().ok()))
        .collect()
}

/// A rejection line names the entry of the user's file; the location of the
/// problem on the same line must not point at a different entry (the index of
/// the synthetic batch Bundle the CLI built).
#[test]
fn import_rejection_points_at_the_entry_of_the_users_file() {
    let dir = tempdir();
    let s = configured_server(dir.path(), free_port(), "entry-index");
    let n = nhs_numbers(999_000_400, 3);
    let ndjson = dir.path().join("first.ndjson");
    std::fs::write(
        &ndjson,
        format!(
            "{}\n{}\n",
            patient(None, &n[0], "First"),
            patient(None, &n[1], "Second")
        ),
    )
    .unwrap();
    let bundle = dir.path().join("second.json");
    let b = json!({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": patient(None, &bad_nhs(&n[2]), "Badnumber")},
    ]});
    std::fs::write(&bundle, b.to_string()).unwrap();

    let mut cmd = hale_cmd(dir.path());
    cmd.arg("import")
        .arg(&ndjson)
        .arg(&bundle)
        .args(["--url", &s.base_url(), "--token", ADMIN_TOKEN]);
    let out = run(cmd, dir.path(), "import-index");
    out.assert_success("hale import");
    let line = line_with(&out.stdout, &format!("{} entry[0]", bundle.display()));
    assert!(line.contains("NHS number"), "{line}");
    assert!(
        entry_indices(line).iter().all(|i| *i == 0),
        "the rejection of entry[0] of {} points at another entry: {line}",
        bundle.display()
    );
}

/// `hale export` writes every live resource; re-exporting into the same
/// directory must not leave a file of a type that no longer has any (here: a
/// deleted Location would still be "exported").
#[test]
fn export_into_a_reused_directory_leaves_no_deleted_resources() {
    let dir = tempdir();
    let s = configured_server(dir.path(), free_port(), "export-reuse");
    let nhs = &nhs_numbers(999_000_600, 1)[0];
    assert_eq!(
        s.put("/Patient/keep", Some(CLIN_TOKEN), &patient(Some("keep"), nhs, "Kept"))
            .status,
        201
    );
    assert_eq!(
        s.put(
            "/Location/gone",
            Some(CLIN_TOKEN),
            &location(Some("gone"), "Closed Clinic")
        )
        .status,
        201
    );
    let out_dir = dir.path().join("export");
    let export = |label: &str| {
        let mut cmd = hale_cmd(dir.path());
        cmd.arg("export")
            .arg("--out")
            .arg(&out_dir)
            .arg("--data")
            .arg(dir.path().join("data"));
        let out = run(cmd, dir.path(), label);
        out.assert_success("hale export");
        out
    };
    export("export-1");
    assert!(out_dir.join("Location.ndjson").exists());

    assert_eq!(s.delete("/Location/gone", Some(CLIN_TOKEN)).status, 204);
    let out = export("export-2");
    assert!(
        !out.stdout.contains("Location.ndjson"),
        "no live Location is left: {}",
        out.stdout
    );
    let stale = std::fs::read_to_string(out_dir.join("Location.ndjson")).unwrap_or_default();
    assert!(
        stale.is_empty(),
        "the second export still holds the deleted Location in Location.ndjson:\n{stale}"
    );
}

/// If the first `--demo` start is interrupted while the board loads, the next
/// `--demo` start must not settle for a partial board.
#[test]
fn interrupted_demo_load_is_completed_on_the_next_start() {
    const PATIENTS: usize = 5_000;
    let dir = tempdir();
    let port = free_port();
    let demo = || {
        let mut cmd = hale_cmd(dir.path());
        cmd.args([
            "serve",
            "--demo",
            "--demo-patients",
            &PATIENTS.to_string(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--data")
        .arg(dir.path().join("data"));
        cmd
    };
    let mut s = Server::spawn(demo(), port, dir.path(), "demo-first");
    // Crash once some, but not all, of the board is committed.
    let deadline = std::time::Instant::now() + scaled(READY_WAIT);
    let interrupted = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "demo load never started\n{}",
            s.logs()
        );
        let ready = try_request(port, "GET", "/readyz", None, None)
            .map(|r| r.status)
            .unwrap_or(0);
        if ready == 200 {
            break false;
        }
        if ready == 503 && s.gauge("hale_resources{type=\"Patient\"}").is_some_and(|n| n > 0.0) {
            s.crash();
            break true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    drop(s);
    if !interrupted {
        eprintln!("inconclusive: the demo board loaded before the test could interrupt it");
        return;
    }

    // Loading the rest of a 5,000-patient board took over 60 s on a loaded
    // 2-core machine: this start gets three times the usual wait.
    let mut s = Server::spawn(demo(), port, dir.path(), "demo-second");
    s.wait_ready_within(READY_WAIT * 3);
    let patients = s.gauge("hale_resources{type=\"Patient\"}").unwrap_or(0.0) as usize;
    let appointments = s.gauge("hale_resources{type=\"Appointment\"}").unwrap_or(0.0) as usize;
    assert!(
        patients == PATIENTS && appointments > 0,
        "after an interrupted first load, `--demo` serves a partial board ({patients} of {PATIENTS} patients, \
         {appointments} appointments) and reports ready\n{}",
        s.logs()
    );
}

/// GET /metrics is Prometheus text: each metric family has one HELP and one
/// TYPE line (a second TYPE line makes the Prometheus parser reject the scrape).
#[test]
fn metrics_describe_each_family_once() {
    let dir = tempdir();
    let s = configured_server(dir.path(), free_port(), "metrics");
    let nhs = &nhs_numbers(999_000_800, 1)[0];
    assert_eq!(
        s.put("/Patient/m1", Some(CLIN_TOKEN), &patient(Some("m1"), nhs, "Metric"))
            .status,
        201
    );
    assert_eq!(
        s.put("/Location/m1", Some(CLIN_TOKEN), &location(Some("m1"), "Metric Clinic"))
            .status,
        201
    );
    let r = s.get("/metrics", None);
    assert_eq!(r.status, 200);
    let text = r.text();
    let mut seen = BTreeSet::new();
    let repeated: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| !seen.insert(*name))
        .collect();
    assert!(
        repeated.is_empty(),
        "families with more than one TYPE line: {repeated:?}\n{text}"
    );
}

/// A transaction Bundle file is sent whole: its urn:uuid references resolve,
/// and a bad entry refuses every entry of that file.
#[test]
fn import_sends_a_transaction_file_whole() {
    let dir = tempdir();
    let s = configured_server(dir.path(), free_port(), "import-tx-server");
    let nhs = nhs_numbers(999_700_000, 3);
    let good = dir.path().join("good-tx.json");
    let org = "urn:uuid:7f0c9c1e-0000-4000-8000-000000000001";
    std::fs::write(
        &good,
        serde_json::to_vec(&serde_json::json!({
            "resourceType": "Bundle", "type": "transaction",
            "entry": [
                {"fullUrl": org, "resource": {"resourceType": "Organization", "name": "Tx Hospital"},
                 "request": {"method": "POST", "url": "Organization"}},
                {"resource": {"resourceType": "Location", "name": "Tx Ward", "managingOrganization": {"reference": org}},
                 "request": {"method": "POST", "url": "Location"}},
                {"resource": patient(None, &nhs[0], "Transact"), "request": {"method": "POST", "url": "Patient"}}
            ]
        }))
        .unwrap(),
    )
    .unwrap();
    let bad = dir.path().join("bad-tx.json");
    std::fs::write(
        &bad,
        serde_json::to_vec(&serde_json::json!({
            "resourceType": "Bundle", "type": "transaction",
            "entry": [
                {"resource": patient(None, &nhs[1], "Fine"), "request": {"method": "POST", "url": "Patient"}},
                {"resource": patient(None, &bad_nhs(&nhs[2]), "Broken"), "request": {"method": "POST", "url": "Patient"}}
            ]
        }))
        .unwrap(),
    )
    .unwrap();
    let mut cmd = hale_cmd(dir.path());
    cmd.arg("import")
        .arg(&good)
        .arg(&bad)
        .args(["--url", &s.base_url(), "--token", ADMIN_TOKEN]);
    let out = run(cmd, dir.path(), "import");
    out.assert_success("hale import");
    let o = &out.stdout;
    assert!(o.contains("Loaded 3 resource(s)"), "{o}");
    let refused = line_with(o, &bad.display().to_string());
    assert!(refused.contains("transaction of 2 entries refused"), "{refused}");
    assert!(
        refused.contains("Bundle.entry[1]"),
        "the user's own entry is named: {refused}"
    );

    // The Location points at the Organization the transaction created.
    let loc = s.get("/Location?name=Tx%20Ward", Some(ADMIN_TOKEN)).json();
    let reference = loc["entry"][0]["resource"]["managingOrganization"]["reference"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reference.starts_with("Organization/"), "{reference}");
    assert_eq!(s.get(&format!("/{reference}"), Some(ADMIN_TOKEN)).status, 200);
    // Nothing from the refused file is stored, not even its valid entry.
    let fine = s.get(&by_nhs(&nhs[1]), Some(ADMIN_TOKEN)).json();
    assert!(matches(&fine).is_empty(), "{fine}");
}

// ---------------------------------------------------------------------------
// `hale up`: a local cluster of separate processes

/// `hale up` in its own process group; the whole group (it and every node it
/// started) is SIGKILLed on drop, so no node outlives its test.
struct Up {
    child: std::process::Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Up {
    fn spawn(dir: &Path, data: &Path, voters: usize, learners: usize) -> Up {
        use std::os::unix::process::CommandExt;
        let stdout = dir.join("up.stdout");
        let stderr = dir.join("up.stderr");
        let mut cmd = hale_cmd(dir);
        cmd.args([
            "up",
            "--nodes",
            &voters.to_string(),
            "--learners",
            &learners.to_string(),
            "--data",
        ])
        .arg(data)
        .stdout(std::fs::File::create(&stdout).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .process_group(0);
        Up {
            child: cmd.spawn().expect("spawn hale up"),
            stdout,
            stderr,
        }
    }

    fn output(&self) -> String {
        format!(
            "--- hale up stdout\n{}\n--- hale up stderr\n{}",
            read_lossy(&self.stdout),
            read_lossy(&self.stderr)
        )
    }

    /// Wait for the banner; `(api url, role)` of every node it lists.
    fn wait_up(&mut self) -> Vec<(String, String)> {
        let limit = scaled(std::time::Duration::from_secs(300));
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "hale up exited with {status} before the cluster was up\n{}",
                    self.output()
                );
            }
            let text = read_lossy(&self.stdout);
            if text.contains("Hale cluster is up") {
                return text
                    .lines()
                    .filter(|l| l.trim_start().starts_with("node "))
                    .filter_map(|l| {
                        let url = l.split_whitespace().find(|w| w.starts_with("http://"))?;
                        let role = l.split_whitespace().nth(2)?;
                        Some((url.to_string(), role.to_string()))
                    })
                    .collect();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "hale up did not bring the cluster up within {limit:?} (HALE_TEST_TIMEOUT_SCALE scales it)\n{}",
                self.output()
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// Ctrl-C (SIGINT), then wait for hale up to stop its nodes and exit.
    fn interrupt(&mut self) -> std::process::ExitStatus {
        let st = std::process::Command::new("kill")
            .arg("-INT")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(st.success());
        let limit = scaled(std::time::Duration::from_secs(120));
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "hale up did not stop within {limit:?} of Ctrl-C\n{}",
                self.output()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        // The nodes it started share its process group.
        kill_process_group(self.child.id());
        let _ = self.child.wait();
    }
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a URL with a port")
}

/// `id -> role` of the members `hale cluster status --json` reports, and the leader.
fn cluster_roles(dir: &Path, url: &str, label: &str) -> (std::collections::BTreeMap<u64, String>, u64) {
    let mut cmd = hale_cmd(dir);
    cmd.args(["cluster", "status", "--json", "--url", url, "--token", "demo-admin"]);
    let out = run(cmd, dir, label);
    out.assert_success("hale cluster status");
    let s: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    let roles = s["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| (m["id"].as_u64().unwrap(), m["role"].as_str().unwrap().to_string()))
        .collect();
    (roles, s["leader"].as_u64().expect("a leader"))
}

/// `hale up` forms the cluster as asked (voters, learners); adding a member
/// again or promoting a voter again, through any node, is idempotent; a
/// second `hale up` on the same directory fails with a one-line explanation
/// and no backtrace, even with RUST_BACKTRACE set; Ctrl-C stops every node.
#[test]
fn hale_up_forms_the_cluster_and_membership_changes_are_idempotent() {
    let dir = tempdir();
    let data = dir.path().join("cluster");
    let mut up = Up::spawn(dir.path(), &data, 3, 1);
    let nodes = up.wait_up();
    let ctx = up.output();
    assert_eq!(
        nodes.iter().map(|(_, r)| r.as_str()).collect::<Vec<_>>(),
        ["voter", "voter", "voter", "learner"],
        "{ctx}"
    );
    let expected: std::collections::BTreeMap<u64, String> = [(1, "voter"), (2, "voter"), (3, "voter"), (4, "learner")]
        .into_iter()
        .map(|(id, r)| (id, r.to_string()))
        .collect();
    let (roles, leader) = cluster_roles(dir.path(), &nodes[0].0, "status-1");
    assert_eq!(roles, expected, "{ctx}");

    // Through a node that does not lead: the change follows the 421 to the leader.
    let follower = (1..=3u64).find(|id| *id != leader).unwrap();
    let via = &nodes[follower as usize - 1].0;
    let mut cmd = hale_cmd(dir.path());
    cmd.args([
        "cluster",
        "promote",
        "--node-id",
        "2",
        "--url",
        via,
        "--token",
        "demo-admin",
    ]);
    run(cmd, dir.path(), "promote-again").assert_success("promoting a voter again");
    let learner_raft = std::fs::read_to_string(data.join("node-4.toml"))
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("listen = "))
        .nth(1)
        .map(|l| l.trim_start_matches("listen = ").trim_matches('"').to_string())
        .expect("node 4's raft address in its config");
    let mut cmd = hale_cmd(dir.path());
    cmd.args(["cluster", "add-learner", "--node-id", "4", "--raft-addr", &learner_raft])
        .args([
            "--api-url",
            &nodes[3].0,
            "--site",
            "QEH",
            "--url",
            via,
            "--token",
            "demo-admin",
        ]);
    run(cmd, dir.path(), "add-learner-again").assert_success("adding a learner again");
    let (roles, _) = cluster_roles(dir.path(), &nodes[2].0, "status-2");
    assert_eq!(roles, expected, "the membership is unchanged\n{ctx}");

    // Raft runs over mutual TLS by default: hale up made the certificates, a
    // plain HTTP request to a raft port gets no HTTP answer, and a write
    // through the learner is forwarded (and its user re-checked by the leader).
    for f in ["ca.pem", "node-1.pem", "node-4-key.pem", "operator.pem"] {
        assert!(data.join("certs").join(f).exists(), "hale up made certs/{f}");
    }
    let raft_port: u16 = learner_raft.rsplit(':').next().unwrap().parse().unwrap();
    let plain = try_request(raft_port, "POST", "/raft/status", None, Some(b"false"));
    assert!(
        plain.is_err(),
        "plain HTTP to an mTLS raft port: {:?}",
        plain.map(|r| r.status)
    );
    let body = br#"{"resourceType":"Patient","name":[{"family":"Forwarded"}]}"#;
    let r = request(port_of(&nodes[3].0), "POST", "/Patient", Some("demo-clerk"), Some(body));
    assert_eq!(r.status, 201, "a write through the learner\n{ctx}");

    // A second `hale up` on the same directory: its nodes' ports are taken.
    let mut cmd = hale_cmd(dir.path());
    cmd.args(["up", "--nodes", "3", "--learners", "1", "--data"])
        .arg(&data)
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LIB_BACKTRACE", "1");
    let second = run(cmd, dir.path(), "up-again");
    assert!(!second.status.success(), "{second:?}");
    let err = second.stderr.trim();
    assert!(err.starts_with("Error: ") || err.contains("\nError: "), "{err}");
    assert!(err.contains("is an earlier `hale up` still running?"), "{err}");
    assert!(
        !err.to_lowercase().contains("backtrace") && !err.contains("Caused by"),
        "an expected condition is one paragraph, not a trace:\n{err}"
    );

    let status = up.interrupt();
    assert!(status.success(), "hale up exits 0 on Ctrl-C: {status}\n{}", up.output());
    for (url, _) in &nodes {
        assert!(
            nothing_listens(port_of(url)),
            "{url} still answers after hale up stopped"
        );
    }
}

/// An import that stops part way (here: the server refuses a batch as too
/// large) saves its progress; the same command run again carries on after
/// what was loaded, so a resource without an id or identifier (a plain
/// POST) is not loaded twice.
#[test]
fn an_import_that_stopped_carries_on_where_it_stopped_when_run_again() {
    let dir = tempdir();
    let port = free_port();
    let data = dir.path().join("data");
    let cfg = dir.path().join("hale.toml");
    write_config(&cfg, &format!("127.0.0.1:{port}"), &data);
    let serve = |body_max: Option<&str>| {
        let mut cmd = hale_cmd(dir.path());
        cmd.arg("serve").arg("--config").arg(&cfg);
        if let Some(m) = body_max {
            cmd.env("HALE_BODY_BYTES_MAX", m);
        }
        cmd
    };
    let file = dir.path().join("sites.ndjson");
    let big = "x".repeat(6_000);
    let lines = [
        json!({"resourceType": "Location", "name": "Resume A", "status": "active"}),
        json!({"resourceType": "Location", "name": "Resume B", "status": "active", "description": big}),
        json!({"resourceType": "Location", "name": "Resume C", "status": "active"}),
    ];
    std::fs::write(&file, lines.map(|l| l.to_string()).join("\n") + "\n").unwrap();
    let import = |label: &str| {
        let mut cmd = hale_cmd(dir.path());
        cmd.arg("import").arg(&file).args([
            "--batch",
            "1",
            "--url",
            &format!("http://127.0.0.1:{port}"),
            "--token",
            ADMIN_TOKEN,
        ]);
        run(cmd, dir.path(), label)
    };
    let progress_files = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".progress"))
            .count()
    };

    let mut small = Server::start(serve(Some("4000")), port, dir.path(), "small-limit");
    let first = import("import-first");
    assert!(!first.status.success(), "the second batch is too large: {first:?}");
    assert!(first.stderr.contains("413"), "{}", first.stderr);
    assert!(first.stderr.contains("run the same command again"), "{}", first.stderr);
    assert_eq!(progress_files(), 1, "progress is saved");
    small.signal("TERM");
    small.wait_exit().expect("the server stops on SIGTERM");

    let s = Server::start(serve(None), port, dir.path(), "no-limit");
    let second = import("import-second");
    second.assert_success("the import run again");
    assert!(
        second.stderr.contains("1 of 3 resources were sent before"),
        "{}",
        second.stderr
    );
    assert!(second.stdout.contains("Loaded 3 resource(s)"), "{}", second.stdout);
    assert_eq!(progress_files(), 0, "a finished import leaves no progress file");
    for name in ["Resume%20A", "Resume%20B", "Resume%20C"] {
        let r = s.get(&format!("/Location?name={name}"), Some(CLIN_TOKEN));
        assert_eq!(matches(&r.json()).len(), 1, "Location {name} once: {}", r.text());
    }
}

// ---------------------------------------------------------------------------
// TLS on the API: `hale cert`, `--tls-cert`/`--tls-key`, reload on SIGHUP

/// A blocking TLS client connection to 127.0.0.1 that trusts `ca.pem`.
struct TlsConn {
    stream: std::io::BufReader<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>>,
}

impl TlsConn {
    fn connect(port: u16, ca_pem: &Path) -> std::io::Result<TlsConn> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_file_iter(ca_pem).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let cfg =
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap();
        let tcp = std::net::TcpStream::connect(("127.0.0.1", port))?;
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(TlsConn {
            stream: std::io::BufReader::new(stream),
        })
    }

    /// The serial number of the certificate the server presented.
    fn peer_serial(&self) -> String {
        let conn = &self.stream.get_ref().conn;
        hale_server::tls::serial_hex(&conn.peer_certificates().unwrap()[0]).unwrap()
    }

    /// GET on this (kept-alive) connection: status, lower-cased header lines, body.
    fn get(&mut self, path: &str) -> std::io::Result<(u16, Vec<String>, String)> {
        use std::io::{BufRead, Read, Write};
        write!(
            self.stream.get_mut(),
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer demo-admin\r\n\r\n"
        )?;
        self.stream.get_mut().flush()?;
        let mut status_line = String::new();
        self.stream.read_line(&mut status_line)?;
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {status_line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let mut l = String::new();
            self.stream.read_line(&mut l)?;
            let l = l.trim_end().to_ascii_lowercase();
            if l.is_empty() {
                break;
            }
            headers.push(l);
        }
        let header = |n: &str| {
            headers.iter().find_map(|h| {
                h.strip_prefix(n)
                    .and_then(|v| v.strip_prefix(':'))
                    .map(|v| v.trim().to_string())
            })
        };
        let mut body = Vec::new();
        if let Some(len) = header("content-length") {
            body.resize(len.parse().unwrap(), 0);
            self.stream.read_exact(&mut body)?;
        } else if header("transfer-encoding").as_deref() == Some("chunked") {
            loop {
                let mut size = String::new();
                self.stream.read_line(&mut size)?;
                let n = usize::from_str_radix(size.trim(), 16).unwrap();
                let mut chunk = vec![0; n + 2];
                self.stream.read_exact(&mut chunk)?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        }
        Ok((status, headers, String::from_utf8_lossy(&body).into_owned()))
    }
}

#[test]
fn tls_serves_with_hsts_and_a_sighup_reload_keeps_open_connections() {
    let dir = tempdir();
    let certs = dir.path().join("certs");
    let mut cmd = hale_cmd(dir.path());
    cmd.args(["cert", "init", "--dir"]).arg(&certs);
    run(cmd, dir.path(), "cert-init").assert_success("hale cert init");
    let issue = |label: &str, force: bool| {
        let mut cmd = hale_cmd(dir.path());
        cmd.args(["cert", "issue", "--dir"]).arg(&certs).args([
            "--name",
            "node1",
            "--ip",
            "127.0.0.1",
            "--dns",
            "localhost",
            "--node-id",
            "1",
            "--role",
            "voter",
        ]);
        if force {
            cmd.arg("--force");
        }
        run(cmd, dir.path(), label)
    };
    issue("cert-issue", false).assert_success("hale cert issue");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for key in ["ca-key.pem", "node1-key.pem"] {
            let mode = std::fs::metadata(certs.join(key)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
    }
    let again = issue("cert-issue-again", false);
    assert!(!again.status.success());
    assert!(again.stderr.contains("--force"), "{}", again.stderr);

    let port = free_port();
    let mut cmd = hale_cmd(dir.path());
    cmd.args(["serve", "--demo", "--demo-patients", "20", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data")
        .arg(dir.path().join("data"))
        .arg("--tls-cert")
        .arg(certs.join("node1.pem"))
        .arg("--tls-key")
        .arg(certs.join("node1-key.pem"));
    let s = Server::spawn(cmd, port, dir.path(), "tls-serve");
    let ca = certs.join("ca.pem");
    let deadline = std::time::Instant::now() + scaled(READY_WAIT);
    loop {
        if let Ok(mut c) = TlsConn::connect(port, &ca) {
            if matches!(c.get("/readyz"), Ok((200, _, _))) {
                break;
            }
        }
        assert!(std::time::Instant::now() < deadline, "not ready over TLS\n{}", s.logs());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        s.stderr().contains(&format!("https://127.0.0.1:{port}/")),
        "{}",
        s.logs()
    );

    let mut open = TlsConn::connect(port, &ca).unwrap();
    let first = open.peer_serial();
    let (status, headers, body) = open.get("/metadata").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        headers.contains(&"strict-transport-security: max-age=31536000".to_string()),
        "{headers:?}"
    );
    // Plain HTTP to the TLS port gets no HTTP answer.
    assert!(
        !matches!(try_request(port, "GET", "/readyz", None, None), Ok(r) if r.status == 200),
        "plain HTTP must not be served on the TLS port"
    );

    issue("cert-reissue", true).assert_success("hale cert issue --force");
    s.signal("HUP");
    let deadline = std::time::Instant::now() + scaled(std::time::Duration::from_secs(10));
    let second = loop {
        let serial = TlsConn::connect(port, &ca).unwrap().peer_serial();
        if serial != first {
            break serial;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not load the new certificate\n{}",
            s.logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(
        s.stderr().contains(&second),
        "the reload logs the new serial\n{}",
        s.logs()
    );
    let mut fresh = TlsConn::connect(port, &ca).unwrap();
    assert_eq!(fresh.get("/metadata").unwrap().0, 200);
    // The connection opened before the reload is still served.
    assert_eq!(open.get("/metadata").unwrap().0, 200);
    assert_eq!(open.peer_serial(), first);

    // A broken key is refused on SIGHUP; the server keeps the certificate it has.
    std::fs::write(certs.join("node1-key.pem"), "not a key").unwrap();
    s.signal("HUP");
    let deadline = std::time::Instant::now() + scaled(std::time::Duration::from_secs(10));
    while !s.stderr().contains("could not reload the TLS certificate") {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload error logged\n{}",
            s.logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let mut after = TlsConn::connect(port, &ca).unwrap();
    assert_eq!(after.peer_serial(), second);
    assert_eq!(after.get("/healthz").unwrap().0, 200);

    let mut s = s;
    s.signal("TERM");
    let st = s
        .wait_exit()
        .unwrap_or_else(|| panic!("no exit after SIGTERM\n{}", s.logs()));
    assert_eq!(st.code(), Some(0), "{}", s.logs());
}

#[test]
fn tls_needs_both_files_and_a_matching_key() {
    let dir = tempdir();
    let certs = dir.path().join("certs");
    let mut cmd = hale_cmd(dir.path());
    cmd.args(["cert", "init", "--dir"]).arg(&certs);
    run(cmd, dir.path(), "cert-init").assert_success("hale cert init");
    let mut cmd = hale_cmd(dir.path());
    cmd.args(["cert", "issue", "--dir"])
        .arg(&certs)
        .args(["--name", "api", "--dns", "localhost"]);
    run(cmd, dir.path(), "cert-issue").assert_success("hale cert issue");
    let serve = |label: &str, args: &[&std::ffi::OsStr]| {
        let mut cmd = hale_cmd(dir.path());
        cmd.args(["serve", "--demo", "--demo-patients", "1", "--listen"])
            .arg(format!("127.0.0.1:{}", free_port()))
            .args(args);
        run(cmd, dir.path(), label)
    };
    let (cert, key, ca_key) = (
        certs.join("api.pem"),
        certs.join("api-key.pem"),
        certs.join("ca-key.pem"),
    );
    let out = serve("only-cert", &["--tls-cert".as_ref(), cert.as_os_str()]);
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("TLS needs both a certificate and a key"),
        "{}",
        out.stderr
    );
    let out = serve(
        "wrong-key",
        &[
            "--tls-cert".as_ref(),
            cert.as_os_str(),
            "--tls-key".as_ref(),
            ca_key.as_os_str(),
        ],
    );
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("the TLS key does not belong to the certificate"),
        "{}",
        out.stderr
    );
    let missing = dir.path().join("missing.pem");
    let out = serve(
        "missing",
        &[
            "--tls-cert".as_ref(),
            missing.as_os_str(),
            "--tls-key".as_ref(),
            key.as_os_str(),
        ],
    );
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("cannot read the TLS certificate file"),
        "{}",
        out.stderr
    );
}
