//! The server keeps each configured site's downtime pack current.

mod common;

use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_regenerates_site_packs_and_reports_their_age() {
    let packs = tempfile::tempdir().unwrap();
    let out = packs.path().to_path_buf();
    let today = chrono::Utc::now().date_naive();
    let (srv, app) = TestServer::start_demo_with(300, 11, today, move |cfg| {
        cfg.downtime.out = Some(out);
        cfg.downtime.interval_s = 3600;
        cfg.downtime.sites = vec![hale_server::downtime::SitePack {
            site: "QEH".into(),
            recipients: Vec::new(),
            insecure_plaintext: true,
        }];
    })
    .await;
    drop(app);
    // The first regeneration runs at start; wait for it (bounded, not timed).
    let mut status = serde_json::Value::Null;
    for _ in 0..600 {
        let r = srv.get("/downtime/status", ADMIN).await;
        r.expect(200);
        status = r.body().clone();
        if status["sites"][0]["generated_at"].is_string() || status["sites"][0]["last_error"].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let site = &status["sites"][0];
    assert_eq!(site["site"], "QEH", "{status}");
    assert!(site["last_error"].is_null(), "pack generation failed: {status}");
    assert!(site["store_index"].as_u64().unwrap() > 0, "{status}");
    assert!(site["age_s"].as_u64().is_some(), "{status}");
    // The pack on disk is whole and its manifest hashes match.
    let current = hale_continuity::current_pack(&packs.path().join("QEH"))
        .unwrap()
        .expect("a current pack");
    let manifest = hale_continuity::verify_pack(&current.dir).expect("the pack verifies");
    assert_eq!(manifest.site, "QEH");
    assert!(!manifest.files.is_empty());
    // Age shows in the metrics; only admins see the status.
    let metrics = srv.req("GET", "/metrics").send().await;
    assert!(
        metrics.text.contains("hale_downtime_pack_age_seconds{site=\"QEH\"}"),
        "metrics lack the pack age"
    );
    srv.get("/downtime/status", CLERK).await.expect(403);
}

#[tokio::test]
async fn a_site_without_recipients_or_plaintext_opt_in_stops_startup() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.downtime.out = Some(dir.path().join("packs"));
    cfg.downtime.sites = vec![hale_server::downtime::SitePack {
        site: "QEH".into(),
        recipients: Vec::new(),
        insecure_plaintext: false,
    }];
    let err = hale_server::Node::start(cfg, "http://127.0.0.1:1".into())
        .await
        .err()
        .expect("the node must refuse to start");
    assert!(err.to_string().contains("no recipients"), "{err}");
}
