//! Benchmark and optimality-gap measurement, for `hale bench rebook` and tests.
//!
//! This is the one module that reads a (monotonic) timer, and only to report how
//! long solving took; no result depends on it.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::exact::{solve_exact, ExactError, ExactOptions};
use crate::gen::generate_backlog;
use crate::heuristic::solve;
use crate::model::{Instance, Objective};

/// One heuristic run on a generated backlog.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub n: usize,
    pub seed: u64,
    pub slots: usize,
    /// Wall time of `solve` (generation excluded).
    pub elapsed: Duration,
    pub objective: Objective,
    /// (service, week) rows in the shortfall report.
    pub shortfall_rows: usize,
    /// Total shortfall in hours.
    pub shortfall_hours: i64,
}

/// Generates a backlog of `n` from `seed` and times the heuristic on it.
pub fn bench(n: usize, seed: u64) -> BenchReport {
    let inst = generate_backlog(n, seed);
    let t = Instant::now();
    let sol = solve(&inst);
    let elapsed = t.elapsed();
    BenchReport {
        n,
        seed,
        slots: inst.slots.len(),
        elapsed,
        objective: sol.objective,
        shortfall_rows: sol.shortfall.len(),
        shortfall_hours: sol.shortfall.iter().map(|s| s.hours()).sum(),
    }
}

/// The heuristic's relative gap to the exact objective (0.0 = optimal).
///
/// If both place the same number of appointments of every priority (and of every
/// priority on a deadline pathway), the gap is the relative excess of the tier-2
/// cost: `(h.cost - e.cost) / max(e.cost, 1)`. Otherwise it is the relative shortfall
/// of priority-weighted placements (weights 8/4/2/1 for priorities 1..4) in the first
/// count vector that differs: `(W(e) - W(h)) / W(e)`. Tier 3 (start minutes) is a
/// tie-break and not part of the gap.
pub fn relative_gap(heuristic: &Objective, exact: &Objective) -> f64 {
    let w = |v: [u32; 4]| {
        v.iter()
            .zip([8.0, 4.0, 2.0, 1.0])
            .map(|(&n, w)| n as f64 * w)
            .sum::<f64>()
    };
    if heuristic.placed != exact.placed {
        (w(exact.placed) - w(heuristic.placed)) / w(exact.placed).max(1.0)
    } else if heuristic.placed_with_deadline != exact.placed_with_deadline {
        (w(exact.placed_with_deadline) - w(heuristic.placed_with_deadline)) / w(exact.placed_with_deadline).max(1.0)
    } else {
        (heuristic.cost - exact.cost) as f64 / exact.cost.max(1) as f64
    }
}

/// Heuristic vs exact on one instance.
#[derive(Debug, Clone, Serialize)]
pub struct GapReport {
    pub n: usize,
    pub seed: u64,
    pub pairs: usize,
    pub heuristic: Objective,
    pub exact: Objective,
    pub proven_optimal: bool,
    pub gap: f64,
    pub heuristic_time: Duration,
    pub exact_time: Duration,
}

/// Solves `inst` both ways and compares.
pub fn gap_on(inst: &Instance, n: usize, seed: u64, opts: &ExactOptions) -> Result<GapReport, ExactError> {
    let t = Instant::now();
    let h = solve(inst);
    let heuristic_time = t.elapsed();
    let t = Instant::now();
    let e = solve_exact(inst, opts)?;
    let exact_time = t.elapsed();
    Ok(GapReport {
        n,
        seed,
        pairs: e.pairs,
        heuristic: h.objective,
        exact: e.solution.objective,
        proven_optimal: e.proven_optimal,
        gap: relative_gap(&h.objective, &e.solution.objective),
        heuristic_time,
        exact_time,
    })
}

/// Gap over several generated instances.
#[derive(Debug, Clone, Serialize)]
pub struct GapSummary {
    pub reports: Vec<GapReport>,
    /// Instances where the exact model proved optimality (only these count below).
    pub optimal: usize,
    /// Instances the exact model refused or failed on.
    pub skipped: usize,
    pub mean_gap: f64,
    pub max_gap: f64,
    /// Instances where the heuristic placed a different number per priority (or per
    /// priority on a deadline pathway).
    pub placement_mismatches: usize,
}

/// Measures the heuristic's gap on backlogs of `n` for each seed.
pub fn measure_gap(n: usize, seeds: impl IntoIterator<Item = u64>, opts: &ExactOptions) -> GapSummary {
    let mut reports = Vec::new();
    let mut skipped = 0;
    for seed in seeds {
        match gap_on(&generate_backlog(n, seed), n, seed, opts) {
            Ok(r) => reports.push(r),
            Err(_) => skipped += 1,
        }
    }
    let proven: Vec<&GapReport> = reports.iter().filter(|r| r.proven_optimal).collect();
    let mean_gap = if proven.is_empty() {
        0.0
    } else {
        proven.iter().map(|r| r.gap).sum::<f64>() / proven.len() as f64
    };
    let max_gap = proven.iter().map(|r| r.gap).fold(0.0, f64::max);
    let placement_mismatches = proven
        .iter()
        .filter(|r| {
            (r.heuristic.placed, r.heuristic.placed_with_deadline) != (r.exact.placed, r.exact.placed_with_deadline)
        })
        .count();
    GapSummary {
        optimal: proven.len(),
        skipped,
        mean_gap,
        max_gap,
        placement_mismatches,
        reports,
    }
}
