//! `hale bench compare --peer URL`: Hale and a peer FHIR server driven side
//! by side in one run, with the same load generator, the same generated
//! patients (one seed for both, so the same NHS numbers and the same bodies)
//! and the same connection counts.
//!
//! DESIGN. A comparison taken on different days on a shared machine says more
//! about the machine than about the servers, so each row runs Hale and then the
//! peer back to back, and the table prints ratios. The rows are the issue's:
//! load `load_patients` Patients at 16 clients (timed create; Hale fsyncs every
//! commit), then, against `seed_patients` more, `GET /Patient/{id}` at 64
//! connections, search by NHS number at 16 and by family at 16. Search rows
//! count misses (a 200 without the patient searched for), so a peer that
//! ignores a filter is visible rather than fast. With `/proc/<pid>` of each
//! server, the report adds peak RSS (`VmHWM`).

use crate::client::Target;
use crate::report::WorkloadReport;
use crate::workloads::Ctx;
use crate::{data, nhs, BenchError, BenchOpts};
use serde::Serialize;
use std::fmt::Write as _;
use std::sync::Arc;

/// Most patients one comparison loads per server.
pub const LOAD_PATIENTS_MAX: usize = 1_000_000;

#[derive(Debug, Clone)]
pub struct CompareOpts {
    /// Hale's URL, token and CA, and the timed phase of the read rows.
    pub hale: BenchOpts,
    /// The peer's base URL (plain http or https with `hale.ca_pem`).
    pub peer_url: String,
    /// The peer's bearer token, if it needs one.
    pub peer_token: Option<String>,
    /// Patients created in the timed load row, per server.
    pub load_patients: usize,
    /// Connections of the load row.
    pub load_connections: usize,
    /// Connections of the read row.
    pub read_connections: usize,
    /// Connections of the two search rows.
    pub search_connections: usize,
    /// Process ids whose peak RSS to report (Linux `/proc`), if known.
    pub hale_pid: Option<u32>,
    pub peer_pid: Option<u32>,
}

impl Default for CompareOpts {
    fn default() -> Self {
        CompareOpts {
            hale: BenchOpts::default(),
            peer_url: String::new(),
            peer_token: None,
            load_patients: 10_000,
            load_connections: 16,
            read_connections: 64,
            search_connections: 16,
            hale_pid: None,
            peer_pid: None,
        }
    }
}

/// One row: the same workload against both servers.
#[derive(Debug, Clone, Serialize)]
pub struct CompareRow {
    pub name: String,
    pub connections: usize,
    pub hale: WorkloadReport,
    pub peer: WorkloadReport,
}

impl CompareRow {
    /// Hale's throughput over the peer's (None when the peer served nothing).
    pub fn ratio(&self) -> Option<f64> {
        (self.peer.throughput_per_s > 0.0).then(|| self.hale.throughput_per_s / self.peer.throughput_per_s)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub hale_url: String,
    pub peer_url: String,
    pub duration_s: u64,
    pub warmup_s: u64,
    pub load_patients: usize,
    pub seed_patients: usize,
    pub rows: Vec<CompareRow>,
    /// Peak resident set (`VmHWM`, KiB) of each server after the run.
    pub hale_peak_rss_kib: Option<u64>,
    pub peer_peak_rss_kib: Option<u64>,
}

fn ctx(opts: &BenchOpts, url: &str, token: Option<&str>, seed: u64) -> Result<Ctx, BenchError> {
    let target = Arc::new(Target::parse(url, token, opts.ca_pem.as_deref())?);
    Ok(Ctx {
        target,
        opts: BenchOpts {
            base_url: url.to_string(),
            token: token.map(str::to_string),
            ..opts.clone()
        },
        // The same seed: both servers get the same NHS numbers and bodies.
        nhs: Arc::new(nhs::NhsGen::new(seed)),
        seed,
        seeded: None,
    })
}

/// Peak RSS of `pid` in KiB, from `/proc/<pid>/status` (Linux).
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Run the comparison. Validates like [`crate::run`], checks both servers
/// answer `GET /metadata` before anything is written, then runs each row
/// against Hale and then against the peer.
pub async fn compare(o: &CompareOpts) -> Result<Comparison, BenchError> {
    if o.load_patients == 0 || o.load_patients > LOAD_PATIENTS_MAX {
        return Err(BenchError::InvalidOption {
            message: format!("load_patients must be 1..={LOAD_PATIENTS_MAX}, got {}", o.load_patients),
        });
    }
    if o.peer_url.trim().is_empty() {
        return Err(BenchError::InvalidOption {
            message: "--peer: the peer FHIR server's base URL is required".into(),
        });
    }
    for (what, c) in [
        ("load", o.load_connections),
        ("read", o.read_connections),
        ("search", o.search_connections),
    ] {
        let opts = BenchOpts {
            connections: c,
            ..o.hale.clone()
        };
        opts.validate(crate::Workload::All)
            .map_err(|e| BenchError::InvalidOption {
                message: format!("{what} row: {e}"),
            })?;
    }
    let seed = data::run_seed();
    let mut h = ctx(&o.hale, &o.hale.base_url, o.hale.token.as_deref(), seed)?;
    let mut p = ctx(&o.hale, &o.peer_url, o.peer_token.as_deref(), seed)?;
    h.preflight().await?;
    p.preflight().await?;

    let mut rows = Vec::new();
    // Load: a timed create of exactly `load_patients`, no warm-up.
    {
        let mut pair = Vec::new();
        for c in [&mut h, &mut p] {
            let saved = c.opts.clone();
            c.opts.connections = o.load_connections;
            c.opts.requests_max = Some(o.load_patients as u64);
            c.opts.warmup_s = 0;
            c.opts.duration_s = crate::MAX_PHASE_S;
            let mut r = c.create().await?;
            r.name = "load".into();
            c.opts = saved;
            pair.push(r);
        }
        let peer = pair.pop().expect("two reports");
        let hale = pair.pop().expect("two reports");
        rows.push(CompareRow {
            name: format!("load {} Patients", o.load_patients),
            connections: o.load_connections,
            hale,
            peer,
        });
    }
    // The read rows' patients, untimed, on both.
    h.seeded().await?;
    p.seeded().await?;
    for (name, conns) in [
        ("read Patient/{id}", o.read_connections),
        ("search identifier", o.search_connections),
        ("search family", o.search_connections),
    ] {
        let mut pair = Vec::new();
        for c in [&mut h, &mut p] {
            c.opts.connections = conns;
            let r = match name {
                "read Patient/{id}" => c.read().await?,
                "search identifier" => c.search_identifier().await?,
                _ => c.search_family().await?,
            };
            pair.push(r);
        }
        let peer = pair.pop().expect("two reports");
        let hale = pair.pop().expect("two reports");
        rows.push(CompareRow {
            name: name.into(),
            connections: conns,
            hale,
            peer,
        });
    }
    Ok(Comparison {
        hale_url: h.target.base_url.clone(),
        peer_url: p.target.base_url.clone(),
        duration_s: o.hale.duration_s,
        warmup_s: o.hale.warmup_s,
        load_patients: o.load_patients,
        seed_patients: o.hale.seed_patients,
        rows,
        hale_peak_rss_kib: o.hale_pid.and_then(peak_rss_kib),
        peer_peak_rss_kib: o.peer_pid.and_then(peak_rss_kib),
    })
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}

impl Comparison {
    /// The side-by-side table (Markdown), with errors and misses under it.
    pub fn to_table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "Hale {} vs peer {} ({} s timed per read row after {} s warm-up; {} + {} patients each)\n",
            self.hale_url, self.peer_url, self.duration_s, self.warmup_s, self.load_patients, self.seed_patients
        );
        let _ = writeln!(
            t,
            "| Workload | conns | Hale/s | Peer/s | Ratio | Hale p50 ms | Peer p50 ms | Hale p99 ms | Peer p99 ms |"
        );
        let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|");
        for r in &self.rows {
            let _ = writeln!(
                t,
                "| {} | {} | {:.0} | {:.0} | {} | {} | {} | {} | {} |",
                r.name,
                r.connections,
                r.hale.throughput_per_s,
                r.peer.throughput_per_s,
                r.ratio().map_or("-".into(), |x| format!("{x:.2}×")),
                ms(r.hale.latency.p50_ms),
                ms(r.peer.latency.p50_ms),
                ms(r.hale.latency.p99_ms),
                ms(r.peer.latency.p99_ms),
            );
        }
        if let (Some(a), Some(b)) = (self.hale_peak_rss_kib, self.peer_peak_rss_kib) {
            let _ = writeln!(
                t,
                "\nPeak RSS: Hale {:.1} MiB, peer {:.1} MiB",
                a as f64 / 1024.0,
                b as f64 / 1024.0
            );
        }
        for r in &self.rows {
            for (who, w) in [("Hale", &r.hale), ("peer", &r.peer)] {
                if w.errors_total > 0 || w.misses.unwrap_or(0) > 0 {
                    let _ = writeln!(
                        t,
                        "{who}, {}: {} errors {:?}, {} misses (a 200 without the patient searched for)",
                        r.name,
                        w.errors_total,
                        w.errors,
                        w.misses.unwrap_or(0)
                    );
                }
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_rss_reads_this_process() {
        let kib = peak_rss_kib(std::process::id()).expect("/proc/self/status has VmHWM on Linux");
        assert!(kib > 100, "{kib} KiB");
        assert_eq!(peak_rss_kib(u32::MAX), None);
    }
}
