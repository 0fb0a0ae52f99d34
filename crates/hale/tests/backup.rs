//! Backups of a running node through the `hale` binary: the node's own
//! archive and schedule, `hale backup` under write load, `hale restore` to a
//! time before a mistaken bulk update, `hale backup verify` on good and
//! damaged backups, and what `/ops/status` says.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("hale-backup-")
        .tempdir()
        .expect("tempdir")
}

fn keygen(dir: &Path, name: &str) -> (std::path::PathBuf, String) {
    let key = dir.join(name);
    let mut c = hale_cmd(dir);
    c.args(["backup", "keygen", "--out"]).arg(&key);
    let out = run(c, dir, &format!("keygen-{name}"));
    out.assert_success("hale backup keygen");
    let public = out.stdout.trim().to_string();
    assert!(public.starts_with("age1"), "{public}");
    (key, public)
}

fn status(s: &Server) -> Value {
    let r = s.get("/ops/status", Some(ADMIN_TOKEN));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["backup"].clone()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let limit = scaled(Duration::from_secs(60));
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn create(s: &Server, i: usize, family: &str) -> String {
    let nhs = nhs_numbers(999_200_000, i + 1).remove(i);
    let r = s.post("/Patient", Some(CLIN_TOKEN), &patient(None, &nhs, family));
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_string()
}

#[test]
fn a_node_archives_backs_up_and_restores_to_before_a_bad_bulk_update() {
    let dir = tempdir();
    let d = dir.path();
    let (key, public) = keygen(d, "key.txt");
    let port = free_port();
    let data = d.join("data");
    let backups = d.join("backups");
    let cfg = d.join("hale.toml");
    write_config(&cfg, &format!("127.0.0.1:{port}"), &data);
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "\n[backup]\ndir = '{}'\nrecipients = [\"{public}\"]\nevery_s = 0\narchive_interval_ms = 200\nverify_every_s = 3600\nidentity_file = '{}'\n",
        backups.display(),
        key.display()
    ));
    std::fs::write(&cfg, text).unwrap();
    let mut cmd = hale_cmd(d);
    cmd.arg("serve").arg("--config").arg(&cfg);
    let s = Server::start(cmd, port, d, "node");

    // The node takes a base for its archive at once, and verifies it.
    wait_for("the first base backup and its verification", || {
        let b = status(&s);
        b["lastBackupAgeS"].is_number() && b["lastVerifyOk"] == json!(true)
    });

    // Acknowledged writes, then the last good moment.
    let kept: Vec<String> = (0..30).map(|i| create(&s, i, "Kept")).collect();
    std::thread::sleep(Duration::from_millis(1_100));
    let good_time_ms = chrono_now_ms();
    std::thread::sleep(Duration::from_millis(1_100));

    // An online backup by the CLI into a second directory while writes go on.
    let other = d.join("cli-backups");
    let writer = {
        let port = s.port;
        std::thread::spawn(move || {
            for i in 0..40usize {
                let nhs = nhs_numbers(999_300_000, i + 1).remove(i);
                let r = request(
                    port,
                    "POST",
                    "/Patient",
                    Some(CLIN_TOKEN),
                    Some(serde_json::to_vec(&patient(None, &nhs, "During")).unwrap().as_slice()),
                );
                assert_eq!(r.status, 201, "{}", r.text());
            }
        })
    };
    let mut c = hale_cmd(d);
    c.args(["backup", "--to"])
        .arg(&other)
        .arg("--data")
        .arg(&data)
        .args(["--recipient", &public]);
    run(c, d, "cli-backup").assert_success("hale backup under load");
    writer.join().unwrap();

    // The mistaken bulk update: every kept patient renamed.
    for id in &kept {
        let mut p = s.get(&format!("/Patient/{id}"), Some(ADMIN_TOKEN)).json();
        p["name"][0]["family"] = json!("Overwritten");
        let r = s.put(&format!("/Patient/{id}"), Some(ADMIN_TOKEN), &p);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let applied = s.gauge("hale_last_applied_index").unwrap() as u64;
    wait_for("the archive to catch up", || {
        let b = status(&s);
        b["archiveLastIndex"].as_u64().is_some_and(|i| i >= applied)
    });
    let b = status(&s);
    assert_eq!(b["configured"], json!(true));
    assert!(b["lastError"].is_null(), "{b}");

    // The CLI's backup restores (its manifest's hash is checked on the way).
    let mut c = hale_cmd(d);
    c.args(["restore", "--from"])
        .arg(&other)
        .arg("--data")
        .arg(d.join("from-cli"))
        .arg("--identity")
        .arg(&key);
    run(c, d, "restore-cli").assert_success("hale restore of the CLI's backup");

    // Restore to the good moment, and serve it.
    let restored = d.join("restored");
    let mut c = hale_cmd(d);
    c.args(["restore", "--from"])
        .arg(&backups)
        .arg("--data")
        .arg(&restored)
        .arg("--identity")
        .arg(&key)
        .args(["--to-time", &good_time_ms.to_string()]);
    let out = run(c, d, "restore-pitr");
    out.assert_success("hale restore --to-time");
    let report: Value = serde_json::from_str(&out.stdout).expect("restore prints its report");
    assert!(report["stoppedBeforeIndex"].is_u64(), "{report}");
    let port2 = free_port();
    let cfg2 = d.join("restored.toml");
    write_config(&cfg2, &format!("127.0.0.1:{port2}"), &restored);
    let mut cmd = hale_cmd(d);
    cmd.arg("serve").arg("--config").arg(&cfg2);
    let r = Server::start(cmd, port2, d, "restored");
    for id in &kept {
        let p = r.get(&format!("/Patient/{id}"), Some(ADMIN_TOKEN));
        assert_eq!(p.status, 200, "acknowledged write {id} is in the restore: {}", p.text());
        assert_eq!(p.json()["name"][0]["family"], json!("Kept"), "the bulk update is not");
    }
    let during = r.get("/Patient?family=During&_summary=count", Some(ADMIN_TOKEN)).json();
    assert_eq!(during["total"], json!(0), "nothing after the chosen time: {during}");
    // The restored node is a cluster of one that takes writes.
    create(&r, 99, "AfterRestore");
    drop(r);

    // Verify passes; a damaged byte in the newest base fails it, by name.
    let verify = |label: &str| {
        let mut c = hale_cmd(d);
        c.args(["backup", "verify", "--from"])
            .arg(&backups)
            .arg("--identity")
            .arg(&key)
            .arg("--scratch")
            .arg(d);
        run(c, d, label)
    };
    verify("verify-ok").assert_success("hale backup verify");
    let newest = std::fs::read_dir(backups.join("base"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".db.age"))
        .max()
        .unwrap();
    let mut bytes = std::fs::read(&newest).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&newest, bytes).unwrap();
    let out = verify("verify-damaged");
    assert!(!out.status.success(), "verify of a damaged backup must fail");
    let name = newest.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        out.stderr.contains("damaged") && out.stderr.contains(&name),
        "{}",
        out.stderr
    );
    let mut c = hale_cmd(d);
    c.args(["backup", "list", "--from"]).arg(&backups);
    let out = run(c, d, "list");
    out.assert_success("hale backup list");
    assert!(out.stdout.contains("FAILED"), "{}", out.stdout);
    drop(s);
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
