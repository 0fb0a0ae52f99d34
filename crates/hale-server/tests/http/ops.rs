//! Health, readiness and metrics endpoints.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_and_metrics() {
    let srv = TestServer::start().await;
    let r = srv.get("/healthz", "").await;
    r.expect(200);
    let r = srv.get("/readyz", "").await;
    r.expect(200);

    let pid = srv.create_id(CLIN, &any_patient("Metric")).await;
    srv.read(CLIN, &format!("/Patient/{pid}")).await;
    srv.get("/Patient/missing", CLIN).await.expect(404);

    let r = srv.get("/metrics", "").await;
    r.expect(200);
    assert!(r.header("content-type").is_some_and(|c| c.starts_with("text/plain")));
    let m = &r.text;
    for needle in [
        "hale_http_requests_total{route=\"read\",status=\"2xx\"} 1",
        "hale_http_requests_total{route=\"read\",status=\"4xx\"} 1",
        "hale_http_requests_total{route=\"create\",status=\"2xx\"} 1",
        "hale_last_applied_index",
        "hale_http_request_duration_seconds_bucket{route=\"read\"",
        "hale_resources{type=\"Patient\"} 1",
    ] {
        assert!(m.contains(needle), "metrics lack {needle:?}:\n{m}");
    }
    let applied: f64 = m
        .lines()
        .find(|l| l.starts_with("hale_last_applied_index "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("hale_last_applied_index value");
    assert!(applied >= 1.0, "applied index {applied}");
}
