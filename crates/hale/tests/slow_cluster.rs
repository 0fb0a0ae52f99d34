//! The cluster on a slow machine and slow links: the README's own `hale up`
//! and a 60-fault chaos run, each under a CPU hog (two busy loops at normal
//! priority for the whole run) and emulated WAN links between the nodes
//! (10 ms round trips, jitter, 100 Mbit/s). Before the pre-vote election
//! driver and link-sized AppendEntries, exactly this deposed healthy leaders
//! in a storm of elections and the demo board never loaded.
//!
//! Nothing here asserts on time: every wait is an upper bound that scales
//! with `HALE_TEST_TIMEOUT_SCALE` (default 1), and a run that exceeds it fails
//! with the node logs' location, not with a timing figure.

mod common;

use common::*;
use serde_json::Value;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Each test starts a whole cluster: run them one at a time.
static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::new(());

const WAN: [&str; 6] = ["--link-rtt-ms", "10", "--link-jitter-ms", "2", "--link-mbit", "100"];

fn scaled(d: Duration) -> Duration {
    let k = std::env::var("HALE_TEST_TIMEOUT_SCALE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|k| *k > 0.0)
        .unwrap_or(1.0);
    d.mul_f64(k)
}

/// Two busy loops at normal priority until dropped.
struct CpuHog {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<u64>>,
}

impl CpuHog {
    fn start(loops: usize) -> CpuHog {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..loops)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                    }
                    x
                })
            })
            .collect();
        CpuHog { stop, threads }
    }
}

impl Drop for CpuHog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A test's directory, kept (and named on stderr) if the test fails, so the
/// node logs of a failed run can be read.
struct KeptOnFailure(Option<tempfile::TempDir>);

impl KeptOnFailure {
    fn new(prefix: &str) -> KeptOnFailure {
        KeptOnFailure(Some(
            tempfile::Builder::new().prefix(prefix).tempdir().expect("tempdir"),
        ))
    }

    fn path(&self) -> &Path {
        self.0.as_ref().expect("present until drop").path()
    }
}

impl Drop for KeptOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(d) = self.0.take() {
                eprintln!("test failed: keeping {}", d.keep().display());
            }
        }
    }
}

/// A child in its own process group; the whole group is killed on drop.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        kill_process_group(self.0.id());
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A node's raft status, asked over mTLS with the operator certificate
/// `hale up` made in `data/certs`.
fn raft_status(data: &Path, raft_port: u16, with_hash: bool) -> Option<Value> {
    let certs = data.join("certs");
    let tls = hale_raft::peer_tls::PeerTls::load(&hale_raft::peer_tls::PeerTlsFiles {
        ca: certs.join("ca.pem"),
        cert: certs.join("operator.pem"),
        key: certs.join("operator-key.pem"),
    })
    .ok()?;
    let client = hale_raft::network::NetClient::new(Default::default(), None, 1 << 20, None, Some(&tls));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    let body = if with_hash { b"true".to_vec() } else { b"false".to_vec() };
    let addr = format!("127.0.0.1:{raft_port}");
    let answer = rt
        .block_on(client.post_raw(None, &addr, "/raft/status", body, Duration::from_secs(60), false))
        .ok()?;
    serde_json::from_slice(&answer).ok()
}

/// `(api port, raft port)` of every node, from `hale up`'s banner.
fn nodes_from_banner(text: &str) -> Vec<(u16, u16)> {
    let port = |s: &str| s.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
    text.lines()
        .filter(|l| l.trim_start().starts_with("node "))
        .filter_map(|l| {
            let api = l.split_whitespace().find(|w| w.starts_with("http://"))?;
            let raft = l.split("(raft ").nth(1)?.split(',').next()?;
            Some((port(api)?, port(raft)?))
        })
        .collect()
}

fn wait_for<T>(limit: Duration, what: &str, logs: &Path, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + scaled(limit);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!(
                "{what}: not within {:?} (scale with HALE_TEST_TIMEOUT_SCALE); node logs in {}",
                scaled(limit),
                logs.display()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn patients_on(api_port: u16) -> Option<f64> {
    let r = try_request(api_port, "GET", "/metrics", Some("demo-admin"), None).ok()?;
    let text = r.text();
    text.lines()
        .find(|l| l.starts_with("hale_resources{type=\"Patient\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
}

#[test]
fn hale_up_forms_and_loads_the_board_under_a_cpu_hog_and_a_wan() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = KeptOnFailure::new("hale-up-slow-");
    let data = dir.path().join("cluster");
    let _hog = CpuHog::start(2);
    let out_path = dir.path().join("up.stdout");
    let err_path = dir.path().join("up.stderr");
    let mut cmd = hale_cmd(dir.path());
    cmd.args([
        "up",
        "--nodes",
        "3",
        "--learners",
        "2",
        "--demo-patients",
        "1000",
        "--data",
    ])
    .arg(&data)
    .args(WAN)
    .env("HALE_LOG", "warn,hale_raft=info")
    .stdout(std::fs::File::create(&out_path).expect("stdout file"))
    .stderr(std::fs::File::create(&err_path).expect("stderr file"))
    .stdin(Stdio::null())
    .process_group(0);
    let mut up = Group(cmd.spawn().expect("spawn hale up"));
    let started = Instant::now();

    // It forms: every node listed, every member a voter or learner as asked.
    let nodes = wait_for(Duration::from_secs(300), "hale up printed its cluster", &data, || {
        if let Ok(Some(status)) = up.0.try_wait() {
            panic!(
                "hale up exited with {status}\n--- stdout\n{}\n--- stderr\n{}",
                read_lossy(&out_path),
                read_lossy(&err_path)
            );
        }
        let text = read_lossy(&out_path);
        text.contains("Hale cluster is up").then(|| nodes_from_banner(&text))
    });
    assert_eq!(nodes.len(), 5, "{}", read_lossy(&out_path));
    let formed = raft_status(&data, nodes[0].1, false).expect("node 1 answers");
    let formed_term = formed["term"].as_u64().expect("term");
    eprintln!(
        "formed in {:.1} s at term {formed_term}",
        started.elapsed().as_secs_f64()
    );

    // The demo board loads through node 1 and reaches every node.
    wait_for(Duration::from_secs(900), "node 1 loaded the demo board", &data, || {
        let r = try_request(nodes[0].0, "GET", "/readyz", None, None).ok()?;
        (r.status == 200).then_some(())
    });
    let loaded_s = started.elapsed().as_secs_f64();
    let statuses = wait_for(
        Duration::from_secs(300),
        "every node holds the whole board",
        &data,
        || {
            // Hash (which reads each whole store) only once the nodes agree on
            // what they applied and hold the board.
            let quick: Vec<Value> = nodes
                .iter()
                .map(|(_, raft)| raft_status(&data, *raft, false))
                .collect::<Option<_>>()?;
            let applied = quick[0]["applied_index"].as_u64()?;
            if quick.iter().any(|s| s["applied_index"].as_u64() != Some(applied)) {
                return None;
            }
            let all: Vec<Value> = nodes
                .iter()
                .map(|(_, raft)| raft_status(&data, *raft, true))
                .collect::<Option<_>>()?;
            let hash = all[0]["content_hash"].as_str()?;
            let same = all.iter().all(|s| s["content_hash"].as_str() == Some(hash));
            let patients: Vec<f64> = nodes.iter().map(|(api, _)| patients_on(*api)).collect::<Option<_>>()?;
            (same && patients.iter().all(|p| *p >= 1000.0)).then_some(all)
        },
    );
    eprintln!("demo board on all 5 nodes after {loaded_s:.1} s");

    // No storm of elections: every node on one term under one leader, and
    // at most STORM_ELECTIONS_MAX elections since formation. On a starved
    // machine (this test on a reviewer's 2-core VM behaves like one core
    // here) a leader can be silent for half a second before any node has
    // seen how slow its messages come, so a few elections early in the load
    // can happen: pinned to one core, runs had 0 to 3. A storm is tens: 28
    // on the reviewer's machine, and past term 100 pinned to one core,
    // before `election::Patience` and heartbeats that outlive their
    // deadline. Release builds under full write load on this machine are
    // held to zero needless elections by `hale bench failover`, not here.
    const STORM_ELECTIONS_MAX: u64 = 5;
    let ctx = format!("statuses: {statuses:#?}\nlogs in {}", data.display());
    let term = statuses[0]["term"].as_u64().expect("term");
    let started: u64 = statuses
        .iter()
        .map(|s| s["elections"]["elections_started"].as_u64().unwrap_or(0))
        .sum();
    eprintln!("term {formed_term} at formation, {term} with the board loaded; {started} election(s) started");
    for s in &statuses {
        assert_eq!(s["term"].as_u64(), Some(term), "the nodes disagree on the term: {ctx}");
    }
    assert!(
        term - formed_term <= STORM_ELECTIONS_MAX && started <= STORM_ELECTIONS_MAX,
        "an election storm: the term moved from {formed_term} to {term}, {started} elections: {ctx}"
    );
    let leaders: Vec<&Value> = statuses.iter().filter(|s| s["state"] == "leader").collect();
    assert_eq!(leaders.len(), 1, "{ctx}");
    drop(up);
}

#[test]
fn chaos_with_60_faults_under_a_cpu_hog_and_a_wan_loses_nothing() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = KeptOnFailure::new("hale-chaos-slow-");
    let _hog = CpuHog::start(2);
    let out_path = dir.path().join("chaos.stdout");
    let err_path = dir.path().join("chaos.stderr");
    let mut cmd = hale_cmd(dir.path());
    cmd.args(["chaos", "--faults", "60", "--seed", "17", "--json"])
        .args(WAN)
        .env("HALE_LOG", "warn,hale_raft=info")
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .process_group(0);
    let mut chaos = Group(cmd.spawn().expect("spawn hale chaos"));
    let deadline = Instant::now() + scaled(Duration::from_secs(1_800));
    let status = loop {
        if let Some(s) = chaos.0.try_wait().expect("try_wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "hale chaos did not finish within {:?} (scale with HALE_TEST_TIMEOUT_SCALE)\n--- stderr\n{}",
            scaled(Duration::from_secs(1_800)),
            read_lossy(&err_path)
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let stdout = read_lossy(&out_path);
    let ctx = format!("--- stdout\n{stdout}\n--- stderr\n{}", read_lossy(&err_path));
    assert!(status.success(), "{ctx}");
    let start = stdout.find("\n{").unwrap_or_else(|| panic!("no JSON summary: {ctx}"));
    let s: Value = serde_json::from_str(&stdout[start + 1..]).unwrap_or_else(|e| panic!("{e}: {ctx}"));
    assert_eq!(s["ok"], true, "{ctx}");
    assert_eq!(s["faults"]["total"], 60, "{ctx}");
    assert_eq!(s["writes_lost"], 0, "{ctx}");
    assert_eq!(s["double_bookings"], 0, "{ctx}");
    assert_eq!(s["hashes_equal"], true, "{ctx}");
    assert!(s["acknowledged_writes"]["creates"].as_u64().unwrap_or(0) > 0, "{ctx}");
    assert!(s["links"].as_str().unwrap_or("").contains("10 ms"), "{ctx}");
    assert!(s["elections"]["term"].as_u64().is_some(), "{ctx}");
    drop(chaos);
}

#[test]
fn banner_parsing() {
    let text = "  node 1  voter    dc-east      http://127.0.0.1:39999   (raft 127.0.0.1:37373, log x)\n\
                  node 4  learner  QEH          http://127.0.0.1:36053   (raft 127.0.0.1:39581, log y)\n";
    assert_eq!(nodes_from_banner(text), vec![(39999, 37373), (36053, 39581)]);
}
