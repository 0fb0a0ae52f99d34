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

/// Past `requests_inflight_max` a request is refused at once with 503 and
/// Retry-After, instead of queueing without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_inflight_limit_get_503() {
    use tokio::io::AsyncWriteExt;
    let mut server = TestServer::start_with(|cfg| cfg.limits.requests_inflight_max = 1).await;
    // Hold the one permit with a request whose body never finishes arriving.
    let mut slow = tokio::net::TcpStream::connect(server.client.addr).await.unwrap();
    slow.write_all(
        b"POST /Patient HTTP/1.1\r\nhost: x\r\nauthorization: Bearer t-clin\r\ncontent-type: application/fhir+json\r\ncontent-length: 100\r\n\r\n{",
    )
    .await
    .unwrap();
    // Let the slow request take the permit before polling: a poll that got in
    // first would leave it refused, and then nothing would hold the permit.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // Poll (bounded) until the slow request holds the permit and a second one is refused.
    let mut refused = None;
    for _ in 0..200 {
        let r = server.get("/Patient", CLIN).await;
        if r.status == 503 {
            refused = Some(r);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let r = refused.expect("a second request must be refused while the first holds the only permit");
    assert_eq!(r.header("retry-after"), Some("1"));
    drop(slow);
    // With the permit released, requests are served again.
    let mut served = false;
    for _ in 0..200 {
        if server.get("/Patient", CLIN).await.status == 200 {
            served = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(served, "the permit is released when the slow request ends");
    server.stop().await;
}
