//! `hale drill` against live nodes, as the real binary: a `hale up` cluster
//! (3 voters, 1 learner) under a write load runs a hand-over, a leader stop,
//! a voter restart and a site cut-off, and afterwards every acknowledged
//! write is on every node. The failover drill's recorded RTO is compared with
//! the test's own writer (stop to its first acknowledged write), with a
//! tolerance that does not depend on the machine's speed. A single node with
//! `[backup]` runs the restore drill. Every wait is an upper bound scaled by
//! `HALE_TEST_TIMEOUT_SCALE`; nothing asserts on a timing figure.

mod common;

use common::*;
use serde_json::{json, Value};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ADMIN: &str = "demo-admin";
const CLERK: &str = "demo-clerk";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().trim_end_matches('/').parse().unwrap()
}

/// `hale up` in its own process group; the group is killed on drop.
struct Up {
    pid: u32,
    child: std::process::Child,
    /// API URL by node id.
    urls: Vec<(u64, String)>,
}

impl Drop for Up {
    fn drop(&mut self) {
        kill_process_group(self.pid);
        let _ = self.child.wait();
    }
}

fn hale_up(dir: &Path) -> Up {
    let out = dir.join("up.stdout");
    let mut cmd = hale_cmd(dir);
    cmd.args(["up", "--nodes", "3", "--learners", "1", "--data"])
        .arg(dir.join("cluster"))
        .env("HALE_LOG", "warn")
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(dir.join("up.stderr")).unwrap())
        .process_group(0);
    let child = cmd.spawn().expect("spawn hale up");
    let mut up = Up {
        pid: child.id(),
        child,
        urls: Vec::new(),
    };
    let limit = scaled(Duration::from_secs(300));
    let start = Instant::now();
    loop {
        let text = read_lossy(&out);
        if text.contains("Ctrl-C stops every node") {
            for line in text.lines() {
                let words: Vec<&str> = line.split_whitespace().collect();
                if words.first() == Some(&"node") {
                    let id: u64 = words[1].parse().unwrap();
                    let url = words.iter().find(|w| w.starts_with("http://")).unwrap();
                    up.urls.push((id, url.to_string()));
                }
            }
            return up;
        }
        if let Some(s) = up.child.try_wait().unwrap() {
            panic!("hale up exited ({s}): {}", read_lossy(&dir.join("up.stderr")));
        }
        assert!(start.elapsed() < limit, "hale up did not form the cluster in {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn drill(dir: &Path, label: &str, url: &str, args: &[&str]) -> Output {
    let mut c = hale_cmd(dir);
    c.arg("drill")
        .args(args)
        .args(["--url", url, "--token", ADMIN, "--json"]);
    let out = run(c, dir, label);
    out.assert_success(&format!("hale drill {}", args.join(" ")));
    out
}

fn json_of(out: &Output) -> Value {
    let start = out
        .stdout
        .find('{')
        .unwrap_or_else(|| panic!("no JSON: {}", out.stdout));
    serde_json::from_str(&out.stdout[start..]).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

/// One acknowledged create: id, when it was sent and when the 201 came (wall ms).
type Acked = (String, i64, i64);

/// Writers creating Patients through the voters, one request at a time each.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Acked>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn start_load(ports: Vec<u16>) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let seq = Arc::new(AtomicU64::new(0));
    let threads = ports
        .into_iter()
        .map(|port| {
            let (stop, acked, seq) = (stop.clone(), acked.clone(), seq.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    let n = seq.fetch_add(1, Ordering::Relaxed);
                    let body = json!({"resourceType": "Patient", "name": [{"family": format!("Drill{n}")}],
                        "birthDate": "1970-01-01"});
                    let sent = now_ms();
                    match try_request(port, "POST", "/Patient", Some(CLERK), Some(body.to_string().as_bytes())) {
                        Ok(r) if r.status == 201 => {
                            let id = r.json()["id"].as_str().unwrap().to_string();
                            acked.lock().unwrap().push((id, sent, now_ms()));
                        }
                        _ => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        })
        .collect();
    Load { stop, acked, threads }
}

impl Load {
    fn finish(self) -> Vec<Acked> {
        self.stop.store(true, Ordering::Release);
        for t in self.threads {
            t.join().unwrap();
        }
        Arc::try_unwrap(self.acked).unwrap().into_inner().unwrap()
    }

    fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    fn wait_more(&self, n: usize) {
        let goal = self.count() + n;
        let limit = scaled(Duration::from_secs(120));
        let start = Instant::now();
        while self.count() < goal {
            assert!(
                start.elapsed() < limit,
                "the writers got no acknowledgement for {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Wait until every node has applied the same index.
fn wait_converged(up: &Up) {
    let limit = scaled(Duration::from_secs(180));
    let start = Instant::now();
    loop {
        let r = try_request(port_of(&up.urls[0].1), "GET", "/cluster/status", Some(ADMIN), None);
        if let Ok(r) = r.filter_status() {
            let s = r.json();
            let applied: Vec<Option<u64>> = s["members"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["applied_index"].as_u64())
                .collect();
            if applied.len() == up.urls.len() && applied[0].is_some() && applied.iter().all(|a| *a == applied[0]) {
                return;
            }
        }
        assert!(start.elapsed() < limit, "the nodes did not converge within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

trait FilterStatus {
    fn filter_status(self) -> Result<Reply, ()>;
}

impl FilterStatus for std::io::Result<Reply> {
    fn filter_status(self) -> Result<Reply, ()> {
        match self {
            Ok(r) if r.status == 200 => Ok(r),
            _ => Err(()),
        }
    }
}

/// The test writer's own RTO: from the leader's stop to the first write it
/// sent after the stop that was acknowledged.
fn outside_rto_ms(acked: &[Acked], stopped_at_ms: i64) -> Option<i64> {
    acked
        .iter()
        .filter(|(_, sent, _)| *sent >= stopped_at_ms)
        .map(|(_, _, at)| at - stopped_at_ms)
        .min()
}

#[test]
fn drills_on_a_live_cluster_lose_no_acknowledged_write() {
    let dir = tempfile::Builder::new().prefix("hale-drill-").tempdir().unwrap();
    let d = dir.path();
    let up = hale_up(d);
    let url = up.urls[0].1.clone();
    let voters: Vec<u16> = up.urls.iter().take(3).map(|(_, u)| port_of(u)).collect();
    let load = start_load(voters.clone());
    load.wait_more(20);

    // A hand-over, then a leader stop, each recorded with its RTO.
    let mut compared = Vec::new();
    for (label, args) in [
        ("failover", vec!["failover"]),
        ("failover-stop", vec!["failover", "--stop-leader"]),
    ] {
        let out = drill(d, label, &url, &args);
        let v = json_of(&out);
        let rec = &v["drills"][0];
        assert_eq!(rec["ok"], true, "{rec}");
        let recorded = rec["rto_ms"].as_i64().expect("an RTO");
        let hand = &rec["data"]["hand_over"];
        assert!(hand["new_leader"].is_u64(), "a standby took over: {rec}");
        assert_ne!(hand["new_leader"], hand["from"], "{rec}");
        let stopped = hand["stopped_at_ms"].as_i64().unwrap();
        load.wait_more(10);
        let acked = load.acked.lock().unwrap().clone();
        let outside = outside_rto_ms(&acked, stopped).expect("the writers got a write through after the stop");
        compared.push((label, recorded, outside));
        // Both measure the same gap: stop -> first write committed through the new leader.
        // Tolerance: a second plus the larger of the two, whatever the machine's speed
        // (one writer may be mid-request on a slow path when the other gets through).
        let tolerance = 1_000 + recorded.max(outside);
        assert!(
            (recorded - outside).abs() <= tolerance,
            "{label}: the drill recorded {recorded} ms, the test's writer saw {outside} ms"
        );
        // The drill is in the node's status and metrics.
        let leader_port = port_of(&up.urls.iter().find(|(id, _)| json!(id) == hand["from"]).unwrap().1);
        let st = request(leader_port, "GET", "/ops/status", Some(ADMIN), None).json();
        assert_eq!(st["drills"]["last"]["failover"]["ok"], true, "{st}");
        let metrics = request(leader_port, "GET", "/metrics", None, None).text();
        assert!(metrics.contains("hale_drill_last_ok{kind=\"failover\"} 1"), "{metrics}");
    }
    eprintln!("RTO recorded vs outside (ms): {compared:?}");

    // A voter restart: `hale up` starts it again; its catch-up is recorded.
    let out = drill(d, "voter-restart", &url, &["voter-restart"]);
    let rec = json_of(&out);
    assert_eq!(rec["ok"], true, "{rec}");
    assert!(rec["catch_up_ms"].is_u64(), "{rec}");
    load.wait_more(10);

    // A site cut-off: local reads and a journal write at the site, synced back after.
    let probe = d.join("probe.json");
    std::fs::write(
        &probe,
        json!({"resourceType": "Patient", "name": [{"family": "DrillSiteProbe"}], "birthDate": "1970-01-01"})
            .to_string(),
    )
    .unwrap();
    let mut c = hale_cmd(d);
    c.args([
        "drill",
        "site-cut",
        "--seconds",
        "5",
        "--probe-token",
        CLERK,
        "--probe-file",
    ])
    .arg(&probe)
    .args(["--url", &url, "--token", ADMIN, "--json"]);
    let out = run(c, d, "site-cut");
    out.assert_success("hale drill site-cut");
    let rec = json_of(&out);
    assert_eq!(rec["ok"], true, "{rec}");
    assert_eq!(rec["data"]["reads_ok"], true, "{rec}");
    assert!(rec["data"]["probe"].is_string(), "a journal write was accepted: {rec}");

    // Every acknowledged write is on every node.
    let acked = load.finish();
    assert!(acked.len() > 50, "the load acknowledged only {} writes", acked.len());
    wait_converged(&up);
    let mut lost = Vec::new();
    for (id, url) in &up.urls {
        for (pid, _, _) in &acked {
            let r = {
                let mut tries = 0;
                loop {
                    tries += 1;
                    match try_request(port_of(url), "GET", &format!("/Patient/{pid}"), Some(CLERK), None) {
                        Ok(r) => break r,
                        Err(e) if tries < 5 => {
                            eprintln!("retrying a read on node {id}: {e}");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        Err(e) => panic!("node {id}: {e}"),
                    }
                }
            };
            if r.status != 200 {
                lost.push(format!("Patient/{pid} on node {id}: HTTP {}", r.status));
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{} acknowledged writes missing: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );

    // Every node kept its records.
    let listed = drill(d, "list", &url, &["list"]);
    assert!(json_of(&listed)["drills"].is_array());
}

#[test]
fn the_restore_drill_verifies_the_newest_backup() {
    let dir = tempfile::Builder::new()
        .prefix("hale-drill-restore-")
        .tempdir()
        .unwrap();
    let d = dir.path();
    let key = d.join("key.txt");
    let mut c = hale_cmd(d);
    c.args(["backup", "keygen", "--out"]).arg(&key);
    let out = run(c, d, "keygen");
    out.assert_success("hale backup keygen");
    let public = out.stdout.trim().to_string();
    let port = free_port();
    let cfg = d.join("hale.toml");
    write_config(&cfg, &format!("127.0.0.1:{port}"), &d.join("data"));
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "\n[backup]\ndir = '{}'\nrecipients = [\"{public}\"]\nevery_s = 0\narchive_interval_ms = 200\nidentity_file = '{}'\n",
        d.join("backups").display(),
        key.display()
    ));
    std::fs::write(&cfg, text).unwrap();
    let mut cmd = hale_cmd(d);
    cmd.arg("serve").arg("--config").arg(&cfg);
    let s = Server::start(cmd, port, d, "node");
    for (i, nhs) in nhs_numbers(999_400_000, 5).iter().enumerate() {
        let r = s.post(
            "/Patient",
            Some(CLIN_TOKEN),
            &patient(None, nhs, &format!("Restore{i}")),
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }
    // The node takes its first base for the archive by itself.
    let limit = scaled(Duration::from_secs(60));
    let start = Instant::now();
    while !s.get("/ops/status", Some(ADMIN_TOKEN)).json()["backup"]["lastBackupAgeS"].is_number() {
        assert!(start.elapsed() < limit, "no base backup within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut c = hale_cmd(d);
    c.args([
        "drill",
        "restore",
        "--url",
        &s.base_url(),
        "--token",
        ADMIN_TOKEN,
        "--json",
    ]);
    let out = run(c, d, "restore");
    out.assert_success("hale drill restore");
    let rec = json_of(&out);
    assert_eq!(rec["ok"], true, "{rec}");
    let st = s.get("/ops/status", Some(ADMIN_TOKEN)).json();
    assert_eq!(st["drills"]["last"]["restore"]["ok"], true, "{st}");
    assert!(s
        .get("/metrics", None)
        .text()
        .contains("hale_drill_last_ok{kind=\"restore\"} 1"));
}
