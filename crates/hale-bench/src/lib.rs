//! `hale bench`: a load generator for a running Hale server.
//!
//! It opens exactly `connections` HTTP/1.1 keep-alive connections to the
//! server (one task each, one request in flight per connection), runs a
//! workload for `warmup_s` untimed then `duration_s` timed, and reports
//! throughput, latency percentiles (from a bounded log-linear histogram per
//! connection, merged at the end) and errors by status.
//!
//! Workloads:
//! - `Create`: POST Patient with fresh test-range NHS numbers (999…).
//! - `Read`: GET /Patient/{id} of seeded patients.
//! - `SearchIdentifier`: `GET /Patient?identifier=<nhs-number system>|<n>`.
//! - `SearchFamily`: `GET /Patient?family=<surname>&_count=10`.
//! - `Book`: race to book free slots, `book_contenders_per_slot` attempts per
//!   slot; counts 409 conflicts and any slot booked twice.
//! - `SearchMix`: "any search" latency — every connection cycles through a
//!   fixed list of clinical searches (Patient by NHS number / name / phone,
//!   Appointments of a patient / a clinic day / a slot, free Slots,
//!   Observations by LOINC code, DiagnosticReport, AllergyIntolerance,
//!   DocumentReference, `Patient/{id}/$everything`) with parameters from a
//!   seeded PRNG; any 200 counts. Meant for a server loaded with the demo
//!   health board (`hale serve --demo`), whose patients, clinics, schedules
//!   and slots it discovers at setup; without demo patients it searches the
//!   seeded ones. Reports a latency breakdown per kind of search.
//! - `All`: each of the above in turn with the same options.
//!
//! [`compare`] drives Hale and a peer FHIR server side by side in one run.
//!
//! Read / Search / Book first create `seed_patients` patients (untimed, over
//! `setup_connections` connections); `All` seeds once. `SearchMix` seeds only
//! when the server has no demo patients.

pub mod admission;
mod client;
pub mod compare;
mod data;
mod engine;
mod error;
mod hist;
mod mix;
mod nhs;
mod report;
mod workloads;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

pub use error::BenchError;
pub use report::{BookingFigures, Latency, Report, SearchKindFigures, WorkloadReport};

/// Options for a bench run. `BenchOpts::default()` gives sensible values for
/// everything but `base_url`/`token` (which default to
/// http://127.0.0.1:8080 and none).
#[derive(Debug, Clone)]
pub struct BenchOpts {
    /// FHIR base URL, plain http, e.g. "http://127.0.0.1:8080" (a path prefix
    /// such as "/fhir" is allowed).
    pub base_url: String,
    /// Bearer token sent as `Authorization: Bearer <token>`, if any.
    pub token: Option<String>,
    /// For an https base URL: the PEM CA certificate(s) the server's
    /// certificate must chain to (TLS 1.2+, rustls with ring).
    pub ca_pem: Option<Vec<u8>>,
    /// TCP connections for the timed workload (each one keep-alive).
    pub connections: usize,
    /// Timed phase per workload, seconds.
    pub duration_s: u64,
    /// Untimed warm-up before the timed phase, seconds (0 for none).
    pub warmup_s: u64,
    /// Patients to create (untimed) before Read / Search / Book (and before
    /// SearchMix when the server has no demo patients).
    pub seed_patients: usize,
    /// Connections for untimed setup (seeding patients, creating slots).
    pub setup_connections: usize,
    /// Cap on requests started in the timed phase of a workload (all
    /// connections together); None for no cap (the deadline still applies).
    pub requests_max: Option<u64>,
    /// Free slots created for the Book race. The race stops when every slot
    /// has had its contenders, so this bounds the Book workload.
    pub book_slots: usize,
    /// Booking attempts per slot (2 = two patients race for each slot).
    pub book_contenders_per_slot: usize,
    /// Per-request timeout, seconds (a request still in flight at the
    /// deadline can extend the run by at most this).
    pub request_timeout_s: u64,
    /// SearchMix: only these kinds (report names); empty for all.
    pub mix_kinds: Vec<String>,
    /// SearchMix: draw patient ids from these only (e.g. the longest records,
    /// for `$everything` at its worst); empty for every patient found.
    pub mix_patients: Vec<String>,
}

impl Default for BenchOpts {
    fn default() -> Self {
        BenchOpts {
            base_url: "http://127.0.0.1:8080".to_string(),
            token: None,
            ca_pem: None,
            connections: 8,
            duration_s: 10,
            warmup_s: 2,
            seed_patients: 1000,
            setup_connections: 4,
            requests_max: None,
            book_slots: 2000,
            book_contenders_per_slot: 2,
            request_timeout_s: 10,
            mix_kinds: Vec::new(),
            mix_patients: Vec::new(),
        }
    }
}

/// Longest `duration_s` / `warmup_s` accepted (one day).
const MAX_PHASE_S: u64 = 86_400;
/// Most connections accepted.
const MAX_CONNECTIONS: usize = 10_000;

impl BenchOpts {
    fn validate(&self, workload: Workload) -> Result<(), BenchError> {
        let bad = |message: String| Err(BenchError::InvalidOption { message });
        if self.connections == 0 || self.connections > MAX_CONNECTIONS {
            return bad(format!(
                "connections must be 1..={MAX_CONNECTIONS}, got {}",
                self.connections
            ));
        }
        if self.duration_s == 0 || self.duration_s > MAX_PHASE_S {
            return bad(format!("duration_s must be 1..={MAX_PHASE_S}, got {}", self.duration_s));
        }
        if self.warmup_s > MAX_PHASE_S {
            return bad(format!("warmup_s must be at most {MAX_PHASE_S}, got {}", self.warmup_s));
        }
        if self.request_timeout_s == 0 || self.request_timeout_s > MAX_PHASE_S {
            return bad(format!(
                "request_timeout_s must be 1..={MAX_PHASE_S}, got {}",
                self.request_timeout_s
            ));
        }
        if self.setup_connections == 0 || self.setup_connections > MAX_CONNECTIONS {
            return bad(format!(
                "setup_connections must be 1..={MAX_CONNECTIONS}, got {}",
                self.setup_connections
            ));
        }
        if self.requests_max == Some(0) {
            return bad("requests_max must be at least 1 (or unset for no cap)".to_string());
        }
        if workload.needs_seed() && self.seed_patients == 0 {
            return bad(format!(
                "the {workload} workload needs seeded patients: set seed_patients to at least 1"
            ));
        }
        if workload.includes(Workload::Book) {
            if self.book_slots == 0 {
                return bad("book_slots must be at least 1".to_string());
            }
            if self.book_contenders_per_slot == 0 {
                return bad("book_contenders_per_slot must be at least 1".to_string());
            }
        }
        Ok(())
    }
}

/// What to bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Workload {
    Create,
    Read,
    SearchIdentifier,
    SearchFamily,
    Book,
    SearchMix,
    All,
}

impl Workload {
    /// Every workload, `All` last.
    pub const VARIANTS: [Workload; 7] = [
        Workload::Create,
        Workload::Read,
        Workload::SearchIdentifier,
        Workload::SearchFamily,
        Workload::Book,
        Workload::SearchMix,
        Workload::All,
    ];

    /// Kebab-case name, as accepted by `FromStr` and used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Create => "create",
            Workload::Read => "read",
            Workload::SearchIdentifier => "search-identifier",
            Workload::SearchFamily => "search-family",
            Workload::Book => "book",
            Workload::SearchMix => "search-mix",
            Workload::All => "all",
        }
    }

    /// The single workloads this one runs, in order.
    fn steps(self) -> Vec<Workload> {
        match self {
            Workload::All => Workload::VARIANTS[..Workload::VARIANTS.len() - 1].to_vec(),
            w => vec![w],
        }
    }

    fn includes(self, w: Workload) -> bool {
        self.steps().contains(&w)
    }

    /// Does it need `seed_patients > 0`? (SearchMix seeds only against a
    /// server without demo patients, and says so then.)
    fn needs_seed(self) -> bool {
        self.steps()
            .iter()
            .any(|w| !matches!(w, Workload::Create | Workload::SearchMix))
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Workload {
    type Err = BenchError;

    /// Accepts the kebab-case names ("search-identifier"); '_' works for '-'
    /// and case is ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = s.trim().to_ascii_lowercase().replace('_', "-");
        Workload::VARIANTS
            .into_iter()
            .find(|w| w.name() == norm)
            .ok_or_else(|| BenchError::InvalidOption {
                message: format!(
                    "unknown workload `{s}`; expected one of: {}",
                    Workload::VARIANTS.map(Workload::name).join(", ")
                ),
            })
    }
}

/// Run `workload` against the server at `opts.base_url` and report.
///
/// Checks the server first (GET /metadata), so a server that is not running
/// fails fast with `BenchError::Connect`. Per-request failures during the
/// timed phase are counted in the report, not returned as errors. Must be
/// called inside a Tokio runtime (multi-threaded recommended); spawns one
/// task per connection.
pub async fn run(opts: &BenchOpts, workload: Workload) -> Result<Report, BenchError> {
    opts.validate(workload)?;
    let target = Arc::new(client::Target::parse(
        &opts.base_url,
        opts.token.as_deref(),
        opts.ca_pem.as_deref(),
    )?);
    let seed = data::run_seed();
    let mut ctx = workloads::Ctx {
        target: target.clone(),
        opts: opts.clone(),
        nhs: Arc::new(nhs::NhsGen::new(seed)),
        seed,
        seeded: None,
    };
    ctx.preflight().await?;

    let mut reports = Vec::new();
    for step in workload.steps() {
        let r = match step {
            Workload::Create => ctx.create().await?,
            Workload::Read => ctx.read().await?,
            Workload::SearchIdentifier => ctx.search_identifier().await?,
            Workload::SearchFamily => ctx.search_family().await?,
            Workload::Book => ctx.book().await?,
            Workload::SearchMix => ctx.search_mix().await?,
            Workload::All => unreachable!("All expands to the single workloads"),
        };
        reports.push(r);
    }
    Ok(Report {
        base_url: target.base_url.clone(),
        duration_s: opts.duration_s,
        warmup_s: opts.warmup_s,
        seeded_patients: ctx.seeded.as_ref().map_or(0, |s| s.len()),
        workloads: reports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_names_round_trip() {
        fn check(input: &str, expected: Option<Workload>) {
            assert_eq!(input.parse::<Workload>().ok(), expected, "{input:?}");
        }
        for w in Workload::VARIANTS {
            check(w.name(), Some(w));
        }
        check("Search_Identifier", Some(Workload::SearchIdentifier));
        check(" book ", Some(Workload::Book));
        check("search-mix", Some(Workload::SearchMix));
        check("SEARCH_MIX", Some(Workload::SearchMix));
        check("searchmix", None);
        check("searchfamily", None);
        check("", None);
    }

    #[test]
    fn all_runs_every_single_workload_once() {
        fn check(w: Workload, expected: &[Workload]) {
            assert_eq!(w.steps(), expected, "{w}");
        }
        check(
            Workload::All,
            &[
                Workload::Create,
                Workload::Read,
                Workload::SearchIdentifier,
                Workload::SearchFamily,
                Workload::Book,
                Workload::SearchMix,
            ],
        );
        check(Workload::SearchMix, &[Workload::SearchMix]);
        check(Workload::Create, &[Workload::Create]);
    }

    #[test]
    fn validation_cases() {
        fn check(opts: BenchOpts, w: Workload, ok: bool) {
            assert_eq!(opts.validate(w).is_ok(), ok, "{opts:?} {w}");
        }
        let d = BenchOpts::default;
        check(d(), Workload::All, true);
        check(BenchOpts { connections: 0, ..d() }, Workload::Create, false);
        check(BenchOpts { duration_s: 0, ..d() }, Workload::Create, false);
        check(BenchOpts { warmup_s: 0, ..d() }, Workload::Create, true);
        check(
            BenchOpts {
                requests_max: Some(0),
                ..d()
            },
            Workload::Read,
            false,
        );
        check(
            BenchOpts {
                seed_patients: 0,
                ..d()
            },
            Workload::Create,
            true,
        );
        check(
            BenchOpts {
                seed_patients: 0,
                ..d()
            },
            Workload::Read,
            false,
        );
        check(
            BenchOpts {
                seed_patients: 0,
                ..d()
            },
            Workload::All,
            false,
        );
        check(BenchOpts { book_slots: 0, ..d() }, Workload::Read, true);
        check(
            BenchOpts {
                seed_patients: 0,
                ..d()
            },
            Workload::SearchMix,
            true,
        );
        check(BenchOpts { book_slots: 0, ..d() }, Workload::SearchMix, true);
        check(
            BenchOpts {
                requests_max: Some(0),
                ..d()
            },
            Workload::SearchMix,
            false,
        );
        check(BenchOpts { book_slots: 0, ..d() }, Workload::Book, false);
        check(
            BenchOpts {
                book_contenders_per_slot: 0,
                ..d()
            },
            Workload::All,
            false,
        );
        check(
            BenchOpts {
                request_timeout_s: 0,
                ..d()
            },
            Workload::Read,
            false,
        );
    }
}
