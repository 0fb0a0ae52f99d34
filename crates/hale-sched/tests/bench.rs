//! Measurements, run in release:
//! `CARGO_TARGET_DIR=/work/target-sched cargo test --release -j 1 -p hale-sched --test bench -- --ignored --nocapture`

use std::time::Duration;

use hale_sched::{bench, generate_backlog, measure_gap, solve, violations, ExactOptions};

#[test]
#[ignore = "benchmark: run in release with --ignored"]
fn bench_709_and_12000() {
    for (n, limit) in [(709usize, Duration::from_secs(1)), (12_000, Duration::from_secs(30))] {
        for seed in [1u64, 2, 3] {
            let r = bench(n, seed);
            println!(
                "n={n} seed={seed} slots={} time={:.1} ms shortfall={} rows/{} h\n  objective: {}",
                r.slots,
                r.elapsed.as_secs_f64() * 1e3,
                r.shortfall_rows,
                r.shortfall_hours,
                r.objective
            );
            assert!(r.elapsed <= limit, "n={n}: {:?} > {limit:?}", r.elapsed);
        }
        let inst = generate_backlog(n, 1);
        let sol = solve(&inst);
        assert_eq!(violations(&inst, &sol), Vec::<String>::new());
    }
}

#[test]
#[ignore = "benchmark: run in release with --ignored"]
fn gap_on_small_instances() {
    let opts = ExactOptions {
        max_pairs: 50_000,
        ..ExactOptions::default()
    };
    for n in [10usize, 20, 30, 40, 60, 80, 120] {
        let s = measure_gap(n, 0..20, &opts);
        let worst = s.reports.iter().max_by(|a, b| a.gap.total_cmp(&b.gap)).unwrap();
        let exact_ms: f64 =
            s.reports.iter().map(|r| r.exact_time.as_secs_f64() * 1e3).sum::<f64>() / s.reports.len() as f64;
        println!(
            "n={n}: proven optimal {}/{} (skipped {}), mean gap {:.3}%, max gap {:.3}% (seed {}), placement mismatches {}, mean exact time {:.0} ms",
            s.optimal,
            s.reports.len(),
            s.skipped,
            s.mean_gap * 100.0,
            s.max_gap * 100.0,
            worst.seed,
            s.placement_mismatches,
            exact_ms
        );
        for r in &s.reports {
            if r.gap > 0.0 {
                println!(
                    "   seed {} pairs {} gap {:.3}%\n     h: {}\n     e: {}",
                    r.seed,
                    r.pairs,
                    r.gap * 100.0,
                    r.heuristic,
                    r.exact
                );
            }
        }
    }
}
