//! The exact model for small instances: a 0/1 assignment MILP solved with
//! good_lp's pure-Rust `microlp` backend.
//!
//! Variables: `x[a,s] = 1` if appointment `a` takes slot `s`, one per hard-feasible
//! pair (service, length, practitioner/location, window, deadline, fixed clashes).
//! Constraints: each appointment at most once, each slot at most once, and for two
//! appointments of one patient no two overlapping pairs together.
//!
//! Objective, lexicographic, solved as a short sequence of weighted-sum MILPs
//! (preemptive goal programming), each warm-started with the heuristic's answer:
//! 1. maximise `sum W[p] x` where `W[p] = 1 + sum over lower priorities q of W[q] * n[q]`
//!    (`n[q]` = appointments of priority q that have a feasible pair). These weights
//!    are large enough that one more placement of priority p outweighs every
//!    placement of lower priority, so the lexicographic order over priority classes
//!    is exact in one weighted sum;
//!    1b. with those counts fixed, the same for appointments on a hard-deadline pathway;
//! 2. with all placement counts fixed at that optimum, minimise the tier-2 cost
//!    (priority-weighted lateness + short-notice penalties);
//! 3. with the tier-2 cost fixed, minimise the total start minutes.
//!
//! Why stages rather than one sum for all three tiers: folding tiers 2 and 3 into the
//! same sum needs weights around 1e12-1e15 even for 30 appointments, past what an
//! f64 simplex resolves reliably; three small solves give the exact lexicographic
//! optimum without that numerical risk.

use std::time::Duration;

use good_lp::solvers::microlp::microlp;
use good_lp::{
    variable, Expression, ProblemVariables, ResolutionError, Solution as _, SolutionStatus, SolverModel, Variable,
    WithInitialSolution, WithTimeLimit,
};

use crate::heuristic::{self, HeuristicOptions};
use crate::model::{Instance, Solution};
use crate::prep::Prepared;

/// Limits for the exact model.
#[derive(Debug, Clone, PartialEq)]
pub struct ExactOptions {
    /// Refuse instances with more feasible (appointment, slot) pairs than this.
    pub max_pairs: usize,
    /// Time limit per stage. When a stage hits it, its best solution so far is kept
    /// and the result is not proven optimal.
    pub stage_time_limit: Duration,
}

impl Default for ExactOptions {
    fn default() -> Self {
        ExactOptions {
            max_pairs: 10_000,
            stage_time_limit: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExactError {
    #[error("instance too large for the exact model: {pairs} feasible pairs (max {max})")]
    TooLarge { pairs: usize, max: usize },
    #[error("MILP solver failed: {0}")]
    Solver(String),
}

/// The exact model's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExactSolution {
    pub solution: Solution,
    /// Every stage finished with a proof of optimality.
    pub proven_optimal: bool,
    /// Feasible (appointment, slot) pairs, i.e. binary variables.
    pub pairs: usize,
}

struct Pair {
    a: usize,
    s: usize,
    var: Variable,
}

/// Solves `inst` exactly (see module docs).
pub fn solve_exact(inst: &Instance, opts: &ExactOptions) -> Result<ExactSolution, ExactError> {
    let p = Prepared::new(inst);
    let warm = heuristic::assign(&p, &HeuristicOptions::default());

    // Enumerate hard-feasible pairs.
    let mut raw: Vec<(usize, usize)> = Vec::new();
    for a in 0..p.apps.len() {
        if p.apps[a].invalid.is_some() || p.apps[a].allowed.closed {
            continue;
        }
        for &s in &p.by_cat[p.apps[a].category.index()] {
            if p.feasible(a, s) {
                raw.push((a, s));
                if raw.len() > opts.max_pairs {
                    return Err(ExactError::TooLarge {
                        pairs: count_pairs(&p),
                        max: opts.max_pairs,
                    });
                }
            }
        }
    }
    if raw.is_empty() {
        return Ok(ExactSolution {
            solution: p.build_solution(&vec![None; p.apps.len()]),
            proven_optimal: true,
            pairs: 0,
        });
    }

    let mut assign = warm;
    let mut proven = true;
    let class = |a: usize| p.apps[a].priority_index;
    let dl = |a: usize| p.has_deadline(a);

    // Lexicographic weights: W[p] = 1 + sum over lower priorities q of W[q] * n[q].
    let lex_weights = |counts: [i64; 4]| {
        let mut w = [0f64; 4];
        let mut acc = 0i64;
        for pi in (0..4).rev() {
            let wi = 1 + acc;
            w[pi] = wi as f64;
            acc += wi * counts[pi];
        }
        w
    };
    let mut n_class = [0i64; 4];
    let mut n_dl = [0i64; 4];
    let mut has_pair = vec![false; p.apps.len()];
    for &(a, _) in &raw {
        if !has_pair[a] {
            has_pair[a] = true;
            n_class[class(a)] += 1;
            n_dl[class(a)] += dl(a) as i64;
        }
    }

    // Stage 1: placements by priority.
    let w1 = lex_weights(n_class);
    let (a1, opt) = run_stage(&p, &raw, &assign, opts, |pairs| {
        let mut obj = Expression::with_capacity(pairs.len());
        for pr in pairs {
            obj.add_mul(-w1[class(pr.a)], pr.var);
        }
        (obj, Vec::new())
    })?;
    proven &= opt;
    assign = a1;
    let placed = counts(&assign, |a| Some(class(a)));

    // Stage 1b: placements on a deadline pathway by priority, placements fixed.
    let w1b = lex_weights(n_dl);
    match run_stage(&p, &raw, &assign, opts, |pairs| {
        let mut obj = Expression::with_capacity(pairs.len());
        for pr in pairs.iter().filter(|pr| dl(pr.a)) {
            obj.add_mul(-w1b[class(pr.a)], pr.var);
        }
        (obj, fixed(pairs, &placed, None, class, &dl))
    }) {
        Ok((a, opt)) if counts(&a, |x| Some(class(x))) == placed => {
            proven &= opt;
            assign = a;
        }
        _ => proven = false,
    }
    let placed_dl = counts(&assign, |a| dl(a).then(|| class(a)));

    // Stage 2: tier-2 cost with all placement counts fixed.
    match run_stage(&p, &raw, &assign, opts, |pairs| {
        let mut obj = Expression::with_capacity(pairs.len());
        for pr in pairs {
            obj.add_mul(p.cost(pr.a, pr.s) as f64, pr.var);
        }
        (obj, fixed(pairs, &placed, Some(&placed_dl), class, &dl))
    }) {
        Ok((a, opt)) if same(&a, &placed, &placed_dl, &class, &dl) => {
            proven &= opt;
            if total(&a, |x, s| p.cost(x, s)) <= total(&assign, |x, s| p.cost(x, s)) {
                assign = a;
            }
        }
        _ => proven = false,
    }
    let cost_opt = total(&assign, |a, s| p.cost(a, s));

    // Stage 3: start minutes with placements and tier-2 cost fixed.
    match run_stage(&p, &raw, &assign, opts, |pairs| {
        let mut obj = Expression::with_capacity(pairs.len());
        let mut cost = Expression::with_capacity(pairs.len());
        for pr in pairs {
            obj.add_mul(p.start_minutes(pr.s) as f64, pr.var);
            cost.add_mul(p.cost(pr.a, pr.s) as f64, pr.var);
        }
        let mut cons = fixed(pairs, &placed, Some(&placed_dl), class, &dl);
        cons.push(cost.leq(cost_opt as f64 + 0.5));
        (obj, cons)
    }) {
        // Guard against solver tolerances: never accept a worse earlier tier.
        Ok((a, opt))
            if same(&a, &placed, &placed_dl, &class, &dl)
                && total(&a, |x, s| p.cost(x, s)) <= cost_opt
                && total(&a, |_, s| p.start_minutes(s)) <= total(&assign, |_, s| p.start_minutes(s)) =>
        {
            proven &= opt;
            assign = a;
        }
        Ok((_, _)) => {}
        Err(_) => proven = false,
    }

    Ok(ExactSolution {
        solution: p.build_solution(&assign),
        proven_optimal: proven,
        pairs: raw.len(),
    })
}

/// Placed appointments per class (`class` returns None for "not counted").
fn counts(assign: &[Option<usize>], class: impl Fn(usize) -> Option<usize>) -> [i64; 4] {
    let mut n = [0i64; 4];
    for (a, s) in assign.iter().enumerate() {
        if let (Some(_), Some(c)) = (s, class(a)) {
            n[c] += 1;
        }
    }
    n
}

fn same(
    assign: &[Option<usize>],
    placed: &[i64; 4],
    placed_dl: &[i64; 4],
    class: &impl Fn(usize) -> usize,
    dl: &impl Fn(usize) -> bool,
) -> bool {
    counts(assign, |a| Some(class(a))) == *placed && counts(assign, |a| dl(a).then(|| class(a))) == *placed_dl
}

/// Equality constraints fixing the placement counts per priority (and per priority
/// among deadline-pathway appointments).
fn fixed(
    pairs: &[Pair],
    placed: &[i64; 4],
    placed_dl: Option<&[i64; 4]>,
    class: impl Fn(usize) -> usize,
    dl: &impl Fn(usize) -> bool,
) -> Vec<good_lp::Constraint> {
    let mut per: [Expression; 4] = Default::default();
    let mut per_dl: [Expression; 4] = Default::default();
    for pr in pairs {
        per[class(pr.a)].add_mul(1.0, pr.var);
        if dl(pr.a) {
            per_dl[class(pr.a)].add_mul(1.0, pr.var);
        }
    }
    let mut out: Vec<good_lp::Constraint> = per.into_iter().zip(placed).map(|(e, &n)| e.eq(n as f64)).collect();
    if let Some(pd) = placed_dl {
        out.extend(per_dl.into_iter().zip(pd).map(|(e, &n)| e.eq(n as f64)));
    }
    out
}

fn count_pairs(p: &Prepared<'_>) -> usize {
    (0..p.apps.len())
        .filter(|&a| p.apps[a].invalid.is_none() && !p.apps[a].allowed.closed)
        .map(|a| {
            p.by_cat[p.apps[a].category.index()]
                .iter()
                .filter(|&&s| p.feasible(a, s))
                .count()
        })
        .sum()
}

fn total(assign: &[Option<usize>], f: impl Fn(usize, usize) -> i64) -> i64 {
    assign.iter().enumerate().filter_map(|(a, s)| s.map(|s| f(a, s))).sum()
}

/// Builds the assignment model with the stage's objective (minimised) and extra
/// constraints, solves it, and decodes the answer. Returns (assignment, optimal).
fn run_stage(
    p: &Prepared<'_>,
    raw: &[(usize, usize)],
    warm: &[Option<usize>],
    opts: &ExactOptions,
    stage: impl FnOnce(&[Pair]) -> (Expression, Vec<good_lp::Constraint>),
) -> Result<(Vec<Option<usize>>, bool), ExactError> {
    let mut vars = ProblemVariables::new();
    let pairs: Vec<Pair> = raw
        .iter()
        .map(|&(a, s)| Pair {
            a,
            s,
            var: vars.add(variable().binary()),
        })
        .collect();
    let (objective, extra) = stage(&pairs);
    let initial: Vec<(Variable, f64)> = pairs
        .iter()
        .map(|pr| (pr.var, if warm[pr.a] == Some(pr.s) { 1.0 } else { 0.0 }))
        .collect();
    let mut model = vars
        .minimise(objective)
        .using(microlp)
        .with_time_limit(opts.stage_time_limit.as_secs_f64())
        .with_initial_solution(initial);

    // Each appointment at most once, each slot at most once.
    let mut by_app: Vec<Vec<usize>> = vec![Vec::new(); p.apps.len()];
    let mut by_slot: Vec<Vec<usize>> = vec![Vec::new(); p.slots.len()];
    for (i, pr) in pairs.iter().enumerate() {
        by_app[pr.a].push(i);
        by_slot[pr.s].push(i);
    }
    for group in by_app.iter().chain(by_slot.iter()) {
        if group.len() > 1 {
            let e: Expression = group.iter().map(|&i| pairs[i].var).sum();
            model.add_constraint(e.leq(1.0));
        }
    }
    // Same patient: no two overlapping rebookings.
    let mut by_patient: Vec<Vec<usize>> = vec![Vec::new(); p.n_patients];
    for a in 0..p.apps.len() {
        if !by_app[a].is_empty() {
            by_patient[p.apps[a].patient as usize].push(a);
        }
    }
    for apps in by_patient.iter().filter(|v| v.len() > 1) {
        for (i, &a) in apps.iter().enumerate() {
            for &b in &apps[i + 1..] {
                for &ia in &by_app[a] {
                    for &ib in &by_app[b] {
                        let (pa, pb) = (&pairs[ia], &pairs[ib]);
                        if pa.s != pb.s && p.pair_clash(a, pa.s, b, pb.s) {
                            model.add_constraint((pa.var + pb.var).leq(1.0));
                        }
                    }
                }
            }
        }
    }
    for c in extra {
        model.add_constraint(c);
    }

    let sol = model
        .solve()
        .map_err(|e: ResolutionError| ExactError::Solver(e.to_string()))?;
    let optimal = matches!(sol.status(), SolutionStatus::Optimal);
    let mut assign = vec![None; p.apps.len()];
    let mut used = vec![false; p.slots.len()];
    for pr in &pairs {
        if sol.value(pr.var) > 0.5 {
            if assign[pr.a].is_some() || used[pr.s] {
                return Err(ExactError::Solver("solver returned an inconsistent assignment".into()));
            }
            assign[pr.a] = Some(pr.s);
            used[pr.s] = true;
        }
    }
    Ok((assign, optimal))
}
