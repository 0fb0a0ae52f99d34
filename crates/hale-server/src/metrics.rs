//! Prometheus text metrics: request counts and latency histograms per route,
//! plus gauges filled at scrape time (store size, applied index, audit queue).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Routes, as the label `route` on request metrics.
pub const ROUTES: &[&str] = &[
    "read",
    "vread",
    "search-type",
    "create",
    "update",
    "delete",
    "history-instance",
    "history-type",
    "everything",
    "bulk-export",
    "bulk-status",
    "bulk-file",
    "batch",
    "backfill",
    "postpone",
    "rebook",
    "outage-report",
    "transaction",
    "metadata",
    "ops",
    "other",
];

/// Upper bounds of the latency buckets, in seconds.
pub const BUCKETS_S: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

struct RouteStats {
    /// By status class 2xx, 3xx, 4xx, 5xx.
    by_class: [AtomicU64; 4],
    buckets: Vec<AtomicU64>,
    sum_us: AtomicU64,
}

pub struct Metrics {
    routes: Vec<RouteStats>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            routes: ROUTES
                .iter()
                .map(|_| RouteStats {
                    by_class: Default::default(),
                    buckets: (0..=BUCKETS_S.len()).map(|_| AtomicU64::new(0)).collect(),
                    sum_us: AtomicU64::new(0),
                })
                .collect(),
        }
    }
}

pub fn route_index(route: &str) -> usize {
    ROUTES.iter().position(|r| *r == route).unwrap_or(ROUTES.len() - 1)
}

impl Metrics {
    pub fn observe(&self, route: &str, status: u16, elapsed_us: u64) {
        let r = &self.routes[route_index(route)];
        let class = match status {
            200..=299 => 0,
            300..=399 => 1,
            400..=499 => 2,
            _ => 3,
        };
        r.by_class[class].fetch_add(1, Ordering::Relaxed);
        let s = elapsed_us as f64 / 1e6;
        let b = BUCKETS_S.iter().position(|ub| s <= *ub).unwrap_or(BUCKETS_S.len());
        r.buckets[b].fetch_add(1, Ordering::Relaxed);
        r.sum_us.fetch_add(elapsed_us, Ordering::Relaxed);
    }

    /// Render request metrics; `gauges` are (name, help, value) added by the caller.
    pub fn render(&self, gauges: &[(String, &str, f64)]) -> String {
        let mut out = String::new();
        out.push_str("# HELP hale_http_requests_total HTTP requests by route and status class.\n");
        out.push_str("# TYPE hale_http_requests_total counter\n");
        for (name, r) in ROUTES.iter().zip(&self.routes) {
            for (i, class) in ["2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
                let n = r.by_class[i].load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "hale_http_requests_total{{route=\"{name}\",status=\"{class}\"}} {n}"
                    );
                }
            }
        }
        out.push_str("# HELP hale_http_request_duration_seconds HTTP request latency by route.\n");
        out.push_str("# TYPE hale_http_request_duration_seconds histogram\n");
        for (name, r) in ROUTES.iter().zip(&self.routes) {
            let total: u64 = r.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum();
            if total == 0 {
                continue;
            }
            let mut cum = 0;
            for (i, ub) in BUCKETS_S.iter().enumerate() {
                cum += r.buckets[i].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "hale_http_request_duration_seconds_bucket{{route=\"{name}\",le=\"{ub}\"}} {cum}"
                );
            }
            let _ = writeln!(
                out,
                "hale_http_request_duration_seconds_bucket{{route=\"{name}\",le=\"+Inf\"}} {total}"
            );
            let sum = r.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(out, "hale_http_request_duration_seconds_sum{{route=\"{name}\"}} {sum}");
            let _ = writeln!(
                out,
                "hale_http_request_duration_seconds_count{{route=\"{name}\"}} {total}"
            );
        }
        // One HELP/TYPE per metric family, however many labelled series it has.
        let mut last_family = "";
        for (name, help, v) in gauges {
            let family = name.split('{').next().unwrap_or(name);
            if family != last_family {
                let _ = writeln!(out, "# HELP {family} {help}\n# TYPE {family} gauge");
                last_family = family;
            }
            let _ = writeln!(out, "{name} {v}");
        }
        out
    }
}
