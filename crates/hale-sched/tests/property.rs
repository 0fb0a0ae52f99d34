//! Property tests over random instances (a hand-rolled, seeded loop): every
//! assignment of the heuristic, and of the exact model on small instances, obeys
//! every hard rule (checked by the independent `violations`); the exact model is
//! never worse than the heuristic; same seed, same solution; and the checker itself
//! catches broken solutions.

use hale_sched::*;

/// A random instance: generator settings and run parameters vary with `case`.
fn random_instance(case: u64) -> Instance {
    let mut rng = Rng::new(case);
    let n = rng.range(1, 60) as usize;
    let mut opts = GenOptions::new(n, case.wrapping_mul(7919).wrapping_add(1));
    opts.capacity = 0.3 + rng.unit() * 1.2;
    opts.weeks = rng.range(1, 6);
    opts.repeat_patients = rng.unit() * 0.5;
    let mut inst = generate(&opts);
    let p = &mut inst.params;
    p.min_lead_minutes = rng.range(0, 4 * 24 * 60);
    p.clash_buffer_minutes = [0, 0, 15, 60][rng.range(0, 3) as usize];
    if rng.chance(0.3) {
        p.rules = Rules::scotland();
    }
    p.rules.book_breached = rng.chance(0.7);
    p.target_days = rng.range(7, 42);
    // Extra busy intervals sitting exactly on free slots, to force clashes.
    if !inst.slots.is_empty() {
        for a in inst.appointments.iter_mut() {
            if rng.chance(0.3) {
                let s = &inst.slots[rng.range(0, inst.slots.len() as i64 - 1) as usize];
                a.busy.push(Interval::new(s.start_ms, s.end_ms));
            }
        }
    }
    inst
}

#[test]
fn every_assignment_obeys_every_hard_rule() {
    let mut exact_checked = 0;
    let mut greedy_mode = 0;
    let mut placed = 0;
    let mut unplaced = 0;
    for case in 0..200u64 {
        let inst = random_instance(case);
        // Half the cases force the large-backlog path (greedy + augmenting paths +
        // moves/swaps) so both code paths are covered.
        let opts = if case % 2 == 0 {
            HeuristicOptions::default()
        } else {
            greedy_mode += 1;
            HeuristicOptions {
                ssp_pairs: 0,
                ..HeuristicOptions::default()
            }
        };
        let h = solve_with(&inst, &opts);
        assert_eq!(violations(&inst, &h), Vec::<String>::new(), "case {case}: heuristic");
        assert_eq!(
            h.assignments.len() + h.unplaced.len(),
            inst.appointments.len(),
            "case {case}: everyone accounted for"
        );
        placed += h.assignments.len();
        unplaced += h.unplaced.len();

        if inst.appointments.len() <= 25 && case % 3 == 0 {
            let e = solve_exact(&inst, &ExactOptions::default()).expect("exact model");
            assert_eq!(
                violations(&inst, &e.solution),
                Vec::<String>::new(),
                "case {case}: exact"
            );
            if e.proven_optimal {
                let hd = solve(&inst);
                assert!(
                    e.solution.objective.no_worse_than(&hd.objective),
                    "case {case}: exact {} worse than heuristic {}",
                    e.solution.objective,
                    hd.objective
                );
            }
            exact_checked += 1;
        }
    }
    assert!(exact_checked >= 20, "only {exact_checked} exact runs");
    assert!(greedy_mode == 100);
    assert!(
        placed > 1000 && unplaced > 100,
        "instances should be mixed: {placed} placed, {unplaced} unplaced"
    );
}

#[test]
fn same_seed_same_solution() {
    let a = generate_backlog(709, 11);
    let b = generate_backlog(709, 11);
    assert_eq!(a, b);
    let (sa, sb) = (solve(&a), solve(&b));
    assert_eq!(sa, sb);
    let large = HeuristicOptions {
        ssp_pairs: 0,
        ..HeuristicOptions::default()
    };
    assert_eq!(solve_with(&a, &large), solve_with(&b, &large));
    let small = generate_backlog(20, 3);
    let (ea, eb) = (
        solve_exact(&small, &ExactOptions::default()).unwrap(),
        solve_exact(&small, &ExactOptions::default()).unwrap(),
    );
    assert_eq!(ea, eb);
    // A different seed gives a different backlog and solution.
    assert_ne!(solve(&generate_backlog(709, 12)), sa);
}

#[test]
fn the_heuristic_is_within_one_percent_on_small_instances() {
    let summary = measure_gap(20, 0..8, &ExactOptions::default());
    assert_eq!(summary.skipped, 0);
    assert_eq!(summary.optimal, 8);
    for r in &summary.reports {
        assert!(r.exact.no_worse_than(&r.heuristic), "seed {}: exact worse", r.seed);
        assert!(r.gap >= 0.0);
    }
    assert!(summary.mean_gap <= 0.01, "mean gap {}", summary.mean_gap);
}

#[test]
fn relative_gap_definition() {
    let base = Objective {
        placed: [2, 2, 2, 2],
        placed_with_deadline: [1, 1, 1, 1],
        cost: 100,
        ..Default::default()
    };
    assert_eq!(relative_gap(&base, &base), 0.0);
    let costlier = Objective { cost: 101, ..base };
    assert!((relative_gap(&costlier, &base) - 0.01).abs() < 1e-12);
    // One fewer priority-4 placement: 1 / (2*8 + 2*4 + 2*2 + 2*1) = 1/30.
    let fewer = Objective {
        placed: [2, 2, 2, 1],
        ..base
    };
    assert!((relative_gap(&fewer, &base) - 1.0 / 30.0).abs() < 1e-12);
    assert!(base.no_worse_than(&fewer) && !fewer.no_worse_than(&base));
    // Placements beat cost.
    let cheap_but_fewer = Objective {
        placed: [2, 2, 2, 1],
        cost: 1,
        ..base
    };
    assert!(base.better_than(&cheap_but_fewer));
    // Deadline pathway placements come before cost.
    let fewer_deadline = Objective {
        placed_with_deadline: [1, 1, 1, 0],
        cost: 1,
        ..base
    };
    assert!(base.better_than(&fewer_deadline));
}

#[test]
fn the_checker_catches_broken_solutions() {
    let inst = generate_backlog(60, 5);
    let good = solve(&inst);
    assert!(violations(&inst, &good).is_empty());
    assert!(good.assignments.len() > 10);
    let find = |id: &str| inst.appointments.iter().find(|a| a.id == id).unwrap();

    let expect = |sol: &Solution, what: &str, needle: &str| {
        let v = violations(&inst, sol);
        assert!(
            v.iter().any(|m| m.contains(needle)),
            "{what}: expected '{needle}' in {v:?}"
        );
    };

    // Two appointments in one slot.
    let mut bad = good.clone();
    let other = bad.assignments[1].clone();
    bad.assignments[0].slot = other.slot.clone();
    bad.assignments[0].start_ms = other.start_ms;
    expect(&bad, "double booking", "used more than once");

    // A slot of another service.
    let mut bad = good.clone();
    let x = &bad.assignments[0];
    let a = find(&x.appointment);
    let foreign = inst.slots.iter().find(|s| s.category != a.category).unwrap();
    bad.assignments[0].slot = foreign.id.clone();
    bad.assignments[0].start_ms = foreign.start_ms;
    expect(&bad, "wrong service", "appointment in a");

    // An appointment dropped from the solution.
    let mut bad = good.clone();
    bad.assignments.remove(0);
    expect(&bad, "dropped", "0 times in the solution");

    // A clash with the patient's own appointment.
    let mut inst2 = inst.clone();
    let x = &good.assignments[0];
    let a = inst2.appointments.iter_mut().find(|a| a.id == x.appointment).unwrap();
    a.busy.push(Interval::new(x.start_ms, x.start_ms + 60_000));
    let v = violations(&inst2, &good);
    assert!(v.iter().any(|m| m.contains("clashes")), "{v:?}");

    // After the deadline: find an assignment with a deadline and a later slot of its service.
    let mut found = false;
    for (i, x) in good.assignments.iter().enumerate() {
        let Some(deadline) = x.deadline else { continue };
        let a = find(&x.appointment);
        let late = inst.slots.iter().find(|s| {
            s.category == a.category
                && hale_sched::uktime::uk_date(s.start_ms) > deadline
                && s.end_ms - s.start_ms >= a.duration_minutes * 60_000
        });
        if let Some(s) = late {
            let mut bad = good.clone();
            bad.assignments[i].slot = s.id.clone();
            bad.assignments[i].start_ms = s.start_ms;
            bad.assignments[i].end_ms = s.start_ms + a.duration_minutes * 60_000;
            expect(&bad, "late", "deadline");
            found = true;
            break;
        }
    }
    assert!(found, "no deadline case to break");

    // Wrong objective.
    let mut bad = good.clone();
    bad.objective.cost -= 1;
    expect(&bad, "objective", "objective: cost");
}
