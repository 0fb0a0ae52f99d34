//! Bulk data end to end, with the real binary: `hale export --url` runs a FHIR
//! Bulk Data `$export` against a demo board (kick-off, polling, download),
//! `hale import` loads the files into an empty node, and the two stores'
//! record hashes (`hale record-hash`) are equal.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::Path;

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("hale-bulk-")
        .tempdir()
        .expect("tempdir")
}

fn record_hash(dir: &Path, data: &Path, label: &str) -> String {
    let mut cmd = hale_cmd(dir);
    cmd.arg("record-hash").arg("--data").arg(data);
    let out = run(cmd, dir, label);
    out.assert_success(label);
    let hash = out.stdout.trim().to_string();
    assert_eq!(hash.len(), 64, "a SHA-256 in hex: {hash:?}");
    hash
}

/// Live resources by type, from the server's metrics.
fn counts(s: &Server) -> BTreeMap<String, u64> {
    let r = s.get("/metrics", None);
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
        .lines()
        .filter_map(|l| l.strip_prefix("hale_resources{type=\""))
        .filter_map(|l| {
            let (t, n) = l.split_once("\"} ")?;
            Some((t.to_string(), n.trim().parse::<f64>().ok()? as u64))
        })
        .collect()
}

#[test]
fn export_then_import_into_an_empty_node_gives_the_same_record() {
    let dir = tempdir();
    let port_a = free_port();
    let data_a = dir.path().join("a");
    let mut cmd = hale_cmd(dir.path());
    cmd.args([
        "serve",
        "--demo",
        "--demo-patients",
        "60",
        "--listen",
        &format!("127.0.0.1:{port_a}"),
        "--data",
    ])
    .arg(&data_a);
    let a = Server::start(cmd, port_a, dir.path(), "source");

    let out_dir = dir.path().join("export");
    let mut cmd = hale_cmd(dir.path());
    cmd.arg("export")
        .args(["--url", &a.base_url(), "--token", "demo-admin", "--out"])
        .arg(&out_dir);
    let exported = run(cmd, dir.path(), "export");
    exported.assert_success("hale export --url");
    let total_line = exported
        .stdout
        .lines()
        .find(|l| l.contains("resources in") && l.contains("resources/s"))
        .unwrap_or_else(|| panic!("no total line in:\n{}", exported.stdout));
    let total: u64 = total_line.split_whitespace().next().unwrap().parse().unwrap();
    let source_counts = counts(&a);
    let expected: u64 = source_counts
        .iter()
        .filter(|(t, _)| t.as_str() != "AuditEvent")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        total, expected,
        "the export holds every live resource:\n{}",
        exported.stdout
    );
    assert!(
        source_counts.get("MedicationRequest").copied().unwrap_or(0) > 0,
        "the demo board has a record to carry: {source_counts:?}"
    );
    // The job was removed from the server once downloaded.
    assert!(
        std::fs::read_dir(data_a.join("bulk")).map_or(true, |d| d.count() == 0),
        "hale export deletes the job after downloading its files"
    );

    let dir_b = dir.path().join("b");
    std::fs::create_dir_all(&dir_b).unwrap();
    let port_b = free_port();
    let b = configured_server(&dir_b, port_b, "target");
    let mut cmd = hale_cmd(dir.path());
    cmd.arg("import")
        .arg(&out_dir)
        .args(["--url", &b.base_url(), "--token", ADMIN_TOKEN]);
    let imported = run(cmd, dir.path(), "import");
    imported.assert_success("hale import of the export");
    assert!(
        imported.stdout.contains("Rejected 0 resource(s)."),
        "every exported resource loads:\n{}",
        imported.stdout
    );
    assert!(imported.stdout.contains("resources/s"), "{}", imported.stdout);

    let mut target_counts = counts(&b);
    target_counts.remove("AuditEvent");
    let mut want = source_counts.clone();
    want.remove("AuditEvent");
    assert_eq!(target_counts, want, "the same resources by type");
    let ha = record_hash(dir.path(), &data_a, "hash-source");
    let hb = record_hash(dir.path(), &dir_b.join("data"), "hash-target");
    assert_eq!(ha, hb, "the imported record equals the exported one");

    // And the hash is not blind: one change on the target makes it differ.
    let r = b.get("/Patient?_count=1", Some(ADMIN_TOKEN));
    let mut p = r.json()["entry"][0]["resource"].clone();
    let id = p["id"].as_str().unwrap().to_string();
    p["gender"] = if p["gender"] == "male" {
        "female".into()
    } else {
        "male".into()
    };
    let r = b.put(&format!("/Patient/{id}"), Some(ADMIN_TOKEN), &p);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_ne!(record_hash(dir.path(), &dir_b.join("data"), "hash-changed"), ha);
}

#[test]
fn export_options_need_a_server() {
    let dir = tempdir();
    let mut cmd = hale_cmd(dir.path());
    cmd.args(["export", "--out", "x", "--type", "Patient"]);
    let out = run(cmd, dir.path(), "export-offline-type");
    assert!(!out.status.success());
    assert!(out.stderr.contains("--url"), "{}", out.stderr);
}
