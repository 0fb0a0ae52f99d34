//! The bench report: a table for people, JSON for machines.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::hist::Histogram;

/// The result of `run`: one entry per workload run, in order.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The FHIR base URL benched.
    pub base_url: String,
    /// Timed phase per workload, as requested.
    pub duration_s: u64,
    /// Untimed warm-up per workload, as requested.
    pub warmup_s: u64,
    /// Patients created (untimed) for Read / Search* / Book; 0 if none needed.
    pub seeded_patients: usize,
    pub workloads: Vec<WorkloadReport>,
}

/// Figures for one workload.
///
/// Only requests *started* in the timed phase (after warm-up, before the
/// deadline) are counted. Latency covers every request that got an HTTP
/// response, whatever its status; timeouts and broken connections have no
/// latency and are counted under `errors`.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadReport {
    /// "create", "read", "search-identifier", "search-family", "book", "search-mix".
    pub name: String,
    /// TCP connections used (each one keep-alive, one request in flight).
    pub connections: usize,
    /// Requests counted (ok + errors + conflicts + misses).
    pub requests: u64,
    /// Successful requests: 201 for create/book, 200 (with a match) for
    /// read/search, any 200 for search-mix.
    pub ok: u64,
    /// Failed requests by HTTP status ("404", "500", …) or by "timeout",
    /// "transport" (connection broke), "connect" (could not reconnect).
    pub errors: BTreeMap<String, u64>,
    /// Sum of `errors`.
    pub errors_total: u64,
    /// From the start of the timed phase to the last counted response.
    pub elapsed_s: f64,
    /// `ok / elapsed_s`: creates/s, reads/s, searches/s or bookings/s.
    pub throughput_per_s: f64,
    pub latency: Latency,
    /// Connections re-opened after the server closed one or a request failed.
    pub reconnects: u64,
    /// Search workloads only: 200 responses that did not contain the seeded
    /// patient searched for (a correctness figure; should be 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub misses: Option<u64>,
    /// Book workload only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub booking: Option<BookingFigures>,
    /// Search-mix workload only: figures per kind of search, in the order of
    /// the workload's cycle (the kinds it could run against this server).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search_kinds: Option<Vec<SearchKindFigures>>,
    /// Why the workload stopped early, or other caveats.
    pub notes: Vec<String>,
}

/// Latency percentiles in milliseconds (None when nothing was measured).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Responses measured (requests that got any HTTP response).
    pub samples: u64,
    pub min_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub mean_ms: Option<f64>,
}

impl Latency {
    pub(crate) fn from_histogram(h: &Histogram) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            samples: h.count(),
            min_ms: h.min_us().map(ms),
            p50_ms: h.value_at_quantile_us(0.50).map(ms),
            p90_ms: h.value_at_quantile_us(0.90).map(ms),
            p99_ms: h.value_at_quantile_us(0.99).map(ms),
            max_ms: h.max_us().map(ms),
            mean_ms: h.mean_us().map(|us| us / 1000.0),
        }
    }
}

/// One kind of search in the search-mix workload (timed phase only).
#[derive(Debug, Clone, Serialize)]
pub struct SearchKindFigures {
    /// e.g. "patient-identifier", "appointment-clinic-day", "patient-everything".
    pub kind: String,
    /// The request, with its varying parameters in angle brackets, e.g.
    /// "DiagnosticReport?patient=Patient/<id>".
    pub request: String,
    /// Requests of this kind counted (ok + errors).
    pub requests: u64,
    /// 200 responses.
    pub ok: u64,
    /// Anything else, timeouts and broken connections included.
    pub errors: u64,
    /// Latency of the responses of this kind (whatever their status).
    pub latency: Latency,
}

/// Booking contention figures (whole workload, warm-up included, since every
/// booking holds a slot whether or not it was timed).
#[derive(Debug, Clone, Serialize)]
pub struct BookingFigures {
    /// Free slots created for the race.
    pub slots: usize,
    /// Connections' attempts per slot (2 = two patients race for each slot).
    pub contenders_per_slot: usize,
    /// Booking attempts made (timed or not).
    pub attempts: u64,
    /// Slots with at least one 201.
    pub slots_booked: u64,
    /// 409 responses in the timed phase (slot already taken; expected).
    pub conflicts: u64,
    /// Slots that got more than one 201: the server let a slot be booked
    /// twice. Must be 0.
    pub double_bookings: u64,
    /// True when every slot had been raced for before the deadline.
    pub slots_exhausted: bool,
}

impl Report {
    /// A fixed-width table, one row per workload, followed by any error
    /// breakdowns, booking figures and notes.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "hale bench against {} — {} s timed, {} s warm-up per workload{}",
            self.base_url,
            self.duration_s,
            self.warmup_s,
            if self.seeded_patients > 0 {
                format!(", {} seeded patients", self.seeded_patients)
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            out,
            "{:<18} {:>5} {:>9} {:>7} {:>10} {:>8} {:>8} {:>8} {:>9}",
            "workload", "conns", "ok", "errors", "ok/s", "p50_ms", "p90_ms", "p99_ms", "max_ms"
        );
        for w in &self.workloads {
            let l = &w.latency;
            let _ = writeln!(
                out,
                "{:<18} {:>5} {:>9} {:>7} {:>10.1} {:>8} {:>8} {:>8} {:>9}",
                w.name,
                w.connections,
                w.ok,
                w.errors_total,
                w.throughput_per_s,
                fmt_ms(l.p50_ms),
                fmt_ms(l.p90_ms),
                fmt_ms(l.p99_ms),
                fmt_ms(l.max_ms),
            );
        }
        for w in &self.workloads {
            if !w.errors.is_empty() {
                let parts: Vec<String> = w.errors.iter().map(|(k, v)| format!("{k} ×{v}")).collect();
                let _ = writeln!(out, "{}: errors {}", w.name, parts.join(", "));
            }
            if let Some(m) = w.misses {
                if m > 0 {
                    let _ = writeln!(out, "{}: {m} searches returned 200 without the seeded patient", w.name);
                }
            }
            if let Some(b) = &w.booking {
                let _ = writeln!(
                    out,
                    "{}: {} slots ({} contenders each), {} booked, {} conflicts (409), double bookings: {}{}",
                    w.name,
                    b.slots,
                    b.contenders_per_slot,
                    b.slots_booked,
                    b.conflicts,
                    b.double_bookings,
                    if b.double_bookings > 0 {
                        "  ← SLOTS BOOKED TWICE"
                    } else {
                        ""
                    },
                );
            }
            if let Some(kinds) = &w.search_kinds {
                let mut by_p99: Vec<&SearchKindFigures> = kinds.iter().collect();
                // Slowest first; kinds with nothing measured last.
                by_p99.sort_by(|a, b| {
                    b.latency
                        .p99_ms
                        .partial_cmp(&a.latency.p99_ms)
                        .unwrap_or(std::cmp::Ordering::Equal)
                });
                let _ = writeln!(
                    out,
                    "{}: by kind, slowest p99 first\n  {:<24} {:>8} {:>7} {:>8} {:>8} {:>9}",
                    w.name, "kind", "ok", "errors", "p50_ms", "p99_ms", "max_ms"
                );
                for k in by_p99 {
                    let _ = writeln!(
                        out,
                        "  {:<24} {:>8} {:>7} {:>8} {:>8} {:>9}",
                        k.kind,
                        k.ok,
                        k.errors,
                        fmt_ms(k.latency.p50_ms),
                        fmt_ms(k.latency.p99_ms),
                        fmt_ms(k.latency.max_ms),
                    );
                }
            }
            if w.reconnects > 0 {
                let _ = writeln!(out, "{}: {} reconnects", w.name, w.reconnects);
            }
            for n in &w.notes {
                let _ = writeln!(out, "{}: {n}", w.name);
            }
        }
        out
    }

    /// The whole report as JSON (field names as in the structs; times in the
    /// unit their name ends with).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self)
            .unwrap_or_else(|e| serde_json::json!({"error": format!("cannot serialise report: {e}")}))
    }
}

fn fmt_ms(v: Option<f64>) -> String {
    match v {
        None => "-".to_string(),
        Some(ms) if ms < 10.0 => format!("{ms:.2}"),
        Some(ms) if ms < 1000.0 => format!("{ms:.1}"),
        Some(ms) => format!("{ms:.0}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let mut h = Histogram::new();
        for us in [800, 1199, 1500, 40_000] {
            h.record_us(us);
        }
        let mut errors = BTreeMap::new();
        errors.insert("500".to_string(), 2);
        Report {
            base_url: "http://127.0.0.1:8080".into(),
            duration_s: 10,
            warmup_s: 2,
            seeded_patients: 1000,
            workloads: vec![
                WorkloadReport {
                    name: "read".into(),
                    connections: 8,
                    requests: 6,
                    ok: 4,
                    errors,
                    errors_total: 2,
                    elapsed_s: 2.0,
                    throughput_per_s: 2.0,
                    latency: Latency::from_histogram(&h),
                    reconnects: 0,
                    misses: None,
                    booking: None,
                    search_kinds: None,
                    notes: vec![],
                },
                WorkloadReport {
                    name: "book".into(),
                    connections: 4,
                    requests: 0,
                    ok: 0,
                    errors: BTreeMap::new(),
                    errors_total: 0,
                    elapsed_s: 0.0,
                    throughput_per_s: 0.0,
                    latency: Latency::default(),
                    reconnects: 1,
                    misses: None,
                    booking: Some(BookingFigures {
                        slots: 10,
                        contenders_per_slot: 2,
                        attempts: 20,
                        slots_booked: 10,
                        conflicts: 10,
                        double_bookings: 0,
                        slots_exhausted: true,
                    }),
                    search_kinds: None,
                    notes: vec!["all slots raced for".into()],
                },
            ],
        }
    }

    #[test]
    fn table_has_rows_and_details() {
        let t = sample().to_table();
        assert!(t.contains("read"), "{t}");
        assert!(t.contains("500 ×2"), "{t}");
        assert!(t.contains("double bookings: 0"), "{t}");
        assert!(t.contains("1 reconnects"), "{t}");
        // p50 of {0.8, 1.199, 1.5, 40} ms: 1199 µs is the top of its bucket.
        assert!(t.contains("1.20"), "{t}");
    }

    fn mix_sample() -> Report {
        let kind = |name: &str, us: &[u64]| {
            let mut h = Histogram::new();
            for &v in us {
                h.record_us(v);
            }
            SearchKindFigures {
                kind: name.into(),
                request: format!("{name}?x=<y>"),
                requests: us.len() as u64,
                ok: us.len() as u64,
                errors: 0,
                latency: Latency::from_histogram(&h),
            }
        };
        let mut r = sample();
        r.workloads.truncate(1);
        r.workloads[0].name = "search-mix".into();
        r.workloads[0].search_kinds = Some(vec![
            kind("quick", &[100, 120]),
            kind("idle", &[]),
            kind("slow", &[9_000, 30_000]),
            kind("middling", &[2_000]),
        ]);
        r
    }

    #[test]
    fn table_lists_search_kinds_slowest_first() {
        let t = mix_sample().to_table();
        let at = |needle: &str| t.find(needle).unwrap_or_else(|| panic!("{needle} missing\n{t}"));
        assert!(t.contains("search-mix: by kind, slowest p99 first"), "{t}");
        assert!(at("  slow ") < at("  middling "), "{t}");
        assert!(at("  middling ") < at("  quick "), "{t}");
        assert!(at("  quick ") < at("  idle "), "{t}");
        assert!(t.contains("30.0"), "{t}");
    }

    #[test]
    fn json_has_search_kinds_only_for_the_mix() {
        let j = mix_sample().to_json();
        let kinds = &j["workloads"][0]["search_kinds"];
        assert_eq!(kinds[0]["kind"], "quick");
        assert_eq!(kinds[2]["latency"]["p99_ms"], 30.0);
        assert!(kinds[1]["latency"]["p99_ms"].is_null());
        assert_eq!(kinds[3]["request"], "middling?x=<y>");
        let j = sample().to_json();
        assert!(j["workloads"][0].get("search_kinds").is_none());
    }

    #[test]
    fn json_uses_unit_suffixed_names() {
        let j = sample().to_json();
        let read = &j["workloads"][0];
        assert_eq!(read["name"], "read");
        assert_eq!(read["errors"]["500"], 2);
        assert_eq!(read["latency"]["max_ms"], 40.0);
        assert!(read.get("booking").is_none());
        let book = &j["workloads"][1];
        assert_eq!(book["booking"]["double_bookings"], 0);
        assert!(book["latency"]["p50_ms"].is_null());
    }
}
