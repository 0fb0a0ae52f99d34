//! The chaos harness and the failover benchmark, run as the real binary: a
//! short, bounded chaos run (about 20 faults) must lose no acknowledged write,
//! double-book no slot and end with identical replicas; `hale bench failover`
//! must produce one sample per trial. Nothing here asserts on timings.

mod common;

use common::*;
use serde_json::Value;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Each test starts a whole cluster: run them one at a time.
static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Generous upper bound for a run (debug build, two shared cores).
const RUN_WAIT: Duration = Duration::from_secs(900);

/// Run `hale <args>` in its own process group, killing the whole group (the
/// nodes it started included) if it does not finish within `RUN_WAIT`.
fn run_bounded(dir: &Path, label: &str, args: &[&str]) -> Output {
    let out_path = dir.join(format!("{label}.stdout"));
    let err_path = dir.join(format!("{label}.stderr"));
    let mut cmd = hale_cmd(dir);
    cmd.args(args)
        .env("HALE_LOG", "warn")
        .stdout(std::fs::File::create(&out_path).expect("create stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("create stderr file"))
        .process_group(0);
    let mut child = cmd.spawn().expect("spawn hale");
    let deadline = Instant::now() + RUN_WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() > deadline {
            kill_process_group(child.id());
            let _ = child.wait();
            panic!(
                "`hale {}` did not finish within {RUN_WAIT:?}\n--- stdout\n{}\n--- stderr\n{}",
                args.join(" "),
                read_lossy(&out_path),
                read_lossy(&err_path)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Output {
        status,
        stdout: read_lossy(&out_path),
        stderr: read_lossy(&err_path),
    }
}

/// The JSON document printed after the human-readable summary.
fn trailing_json(out: &Output) -> Value {
    let start = out
        .stdout
        .find("\n{")
        .unwrap_or_else(|| panic!("no JSON in the output:\n{}\n{}", out.stdout, out.stderr));
    serde_json::from_str(&out.stdout[start + 1..])
        .unwrap_or_else(|e| panic!("the JSON does not parse ({e}):\n{}", out.stdout))
}

#[test]
fn chaos_with_20_faults_loses_nothing_and_replicas_agree() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::Builder::new()
        .prefix("hale-chaos-test-")
        .tempdir()
        .expect("tempdir");
    let out = run_bounded(
        dir.path(),
        "chaos",
        &["chaos", "--faults", "20", "--seed", "7", "--json"],
    );
    out.assert_success("hale chaos --faults 20 --seed 7");
    let s = trailing_json(&out);
    let ctx = format!("summary:\n{}\n--- stderr\n{}", out.stdout, out.stderr);
    assert_eq!(s["ok"], true, "{ctx}");
    assert_eq!(s["writes_lost"], 0, "{ctx}");
    assert_eq!(s["double_bookings"], 0, "{ctx}");
    assert_eq!(s["hashes_equal"], true, "{ctx}");
    assert_eq!(s["audit_heads_equal"], true, "{ctx}");
    assert_eq!(s["faults"]["total"], 20, "{ctx}");
    // Seed 7 schedules 6 leader kills, 7 follower kills, 3 isolations and 4 wipes.
    assert!(s["leader_kills"].as_u64().unwrap_or(0) >= 3, "{ctx}");
    assert!(s["faults"]["by_kind"]["wipe"].as_u64().unwrap_or(0) >= 1, "{ctx}");
    assert!(s["acknowledged_writes"]["creates"].as_u64().unwrap_or(0) > 0, "{ctx}");
    assert!(s["acknowledged_writes"]["total"].as_u64().unwrap_or(0) > 0, "{ctx}");
    assert!(s["bookings"]["slots_raced"].as_u64().unwrap_or(0) > 0, "{ctx}");
    let hashes: Vec<&Value> = s["content_hashes"].as_object().expect("hashes").values().collect();
    assert_eq!(hashes.len(), 4, "3 voters and a learner: {ctx}");
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{ctx}");
    // The offline phase: a cut-off site kept writing; every entry has one
    // receipt, exactly the expected tasks, a re-send makes nothing new and
    // every read at the site was audited once.
    let o = &s["offline"];
    let n = o["offline_writes"].as_u64().unwrap_or(0);
    assert!(n > 40, "{ctx}");
    assert_eq!(o["verify"]["entries"], n, "{ctx}");
    assert_eq!(o["verify"]["receipts"], n, "{ctx}");
    assert_eq!(o["verify"]["missing"], serde_json::json!([]), "{ctx}");
    assert_eq!(o["verify"]["duplicate"], 0, "{ctx}");
    assert_eq!(o["verify"]["chainOk"], true, "{ctx}");
    assert_eq!(
        o["tasks"],
        serde_json::json!({"field-conflict": 5, "possible-duplicate": 1, "slot-taken": 1, "status-diverged": 1}),
        "{ctx}"
    );
    assert_eq!(o["resend"]["new"], 0, "{ctx}");
    assert_eq!(o["read_audits"], o["site_reads"], "{ctx}");
}

#[test]
fn bench_failover_reports_one_sample_per_trial() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::Builder::new()
        .prefix("hale-failover-test-")
        .tempdir()
        .expect("tempdir");
    let out = run_bounded(
        dir.path(),
        "failover",
        &[
            "bench",
            "failover",
            "--trials",
            "2",
            "--load-s",
            "3",
            "--load-clients",
            "4",
            "--json",
        ],
    );
    out.assert_success("hale bench failover --trials 2 --load-s 3");
    let s = trailing_json(&out);
    let ctx = format!("output:\n{}\n--- stderr\n{}", out.stdout, out.stderr);
    assert_eq!(s["trials"], 2, "{ctx}");
    let samples = s["samples_ms"].as_array().expect("samples_ms");
    assert_eq!(samples.len(), 2, "{ctx}");
    assert!(samples.iter().all(|v| v.as_f64().is_some_and(|ms| ms > 0.0)), "{ctx}");
    for k in ["p50_ms", "p99_ms", "max_ms"] {
        assert!(s[k].as_f64().is_some(), "{k} missing: {ctx}");
    }
    assert!(out.stdout.contains("p50"), "{ctx}");
    // The fault-free phase wrote, and counted elections (a number, even if 0).
    let load = &s["load"];
    assert!(load["acknowledged"].as_u64().is_some_and(|n| n > 0), "{ctx}");
    assert!(load["elections"].as_u64().is_some(), "{ctx}");
    assert!(load["needless_elections_per_hour"].as_f64().is_some(), "{ctx}");
    // At least one election per kill (a kill of the leader cannot pass without one).
    assert!(s["terms_per_kill"].as_f64().is_some_and(|t| t >= 1.0), "{ctx}");
}

#[test]
fn help_lists_chaos_and_the_failover_benchmark() {
    let dir = tempfile::Builder::new()
        .prefix("hale-chaos-help-")
        .tempdir()
        .expect("tempdir");
    let out = run_bounded(dir.path(), "help", &["--help"]);
    out.assert_success("hale --help");
    assert!(out.stdout.contains("chaos"), "{}", out.stdout);
    let out = run_bounded(dir.path(), "chaos-help", &["chaos", "--help"]);
    out.assert_success("hale chaos --help");
    for flag in [
        "--faults",
        "--leader-kills-min",
        "--seed",
        "--voters",
        "--learners",
        "--data",
        "--clients",
        "--json",
    ] {
        assert!(out.stdout.contains(flag), "chaos --help lacks {flag}:\n{}", out.stdout);
    }
    let out = run_bounded(dir.path(), "bench-help", &["bench", "--help"]);
    out.assert_success("hale bench --help");
    for word in ["failover", "--trials", "search-identifier", "create"] {
        assert!(out.stdout.contains(word), "bench --help lacks {word}:\n{}", out.stdout);
    }
}
