//! Replicated clusters in one process: every node is a real server with its
//! own store, raft log and raft RPC listener on loopback.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const WAIT_MS: u64 = 30_000;

struct Cluster {
    nodes: Vec<TestServer>,
}

async fn start_node(id: u64, site: &str, tweak: fn(&mut hale_raft::RaftSettings)) -> TestServer {
    let site = site.to_string();
    TestServer::start_with(move |cfg| {
        cfg.cluster.node_id = id;
        cfg.cluster.listen = Some("127.0.0.1:0".into());
        cfg.cluster.bootstrap_single = false;
        cfg.cluster.site = site;
        cfg.cluster.write_timeout_ms = 3_000;
        cfg.cluster.leader_wait_ms = 2_000;
        cfg.cluster.read_timeout_ms = 1_000;
        tweak(&mut cfg.cluster);
    })
    .await
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_millis(WAIT_MS),
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Cluster {
    /// `voters` data-centre nodes, then `learners` site replicas; node 1 leads.
    async fn start(voters: usize, learners: usize, tweak: fn(&mut hale_raft::RaftSettings)) -> Cluster {
        let mut nodes = Vec::new();
        for i in 0..voters + learners {
            let site = if i < voters {
                format!("dc-{i}")
            } else {
                format!("site-{i}")
            };
            nodes.push(start_node(i as u64 + 1, &site, tweak).await);
        }
        nodes[0].post("/cluster/init", ADMIN, &json!({})).await.expect(200);
        let leader = nodes[0].raft.clone();
        wait_for("node 1 to lead", || leader.metrics().current_leader == Some(1)).await;
        let c = Cluster { nodes };
        for i in 1..voters + learners {
            c.add(i).await;
        }
        for i in 1..voters {
            c.nodes[0]
                .post("/cluster/promote", ADMIN, &json!({"node_id": i as u64 + 1}))
                .await
                .expect(200);
        }
        c.converge().await;
        c
    }

    async fn add(&self, i: usize) {
        let n = &self.nodes[i];
        let body = json!({
            "node_id": n.raft.id,
            "raft_addr": n.raft.me.raft_addr,
            "api_url": n.base(),
            "site": n.raft.me.site,
        });
        self.nodes[0].post("/cluster/learners", ADMIN, &body).await.expect(200);
    }

    /// Wait until every running node has applied everything the leader has.
    async fn converge(&self) {
        let leader = self.nodes[0].raft.clone();
        let all: Vec<_> = self.nodes.iter().map(|n| n.raft.clone()).collect();
        wait_for("replicas to converge", || {
            let target = leader.metrics().last_log_index.unwrap_or(0);
            all.iter().all(|r| r.applied_index() >= target)
        })
        .await;
    }

    /// Every node's content hash, read when all of them have applied the same
    /// index, the leader's last. Hashes are comparable only at one index: a
    /// read-audit batch from an earlier read can commit while they are read,
    /// so an index that moved during the reading means read them again.
    async fn hashes(&self) -> Vec<String> {
        let leader = self.nodes[0].raft.clone();
        let start = std::time::Instant::now();
        loop {
            let target = leader.metrics().last_log_index.unwrap_or(0);
            let applied = |nodes: &[TestServer]| -> Vec<u64> { nodes.iter().map(|n| n.raft.applied_index()).collect() };
            let before = applied(&self.nodes);
            if before.iter().all(|&i| i == target) {
                let h: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| n.raft.sm.content_hash().expect("hash"))
                    .collect();
                if applied(&self.nodes) == before && leader.metrics().last_log_index.unwrap_or(0) == target {
                    return h;
                }
            }
            assert!(
                start.elapsed() < Duration::from_millis(WAIT_MS),
                "gave up waiting for every node to apply the same index: {before:?}, leader at {target}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn header<'a>(r: &'a Resp, name: &str) -> &'a str {
    r.header(name).unwrap_or_else(|| panic!("response lacks {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_any_node_reach_every_node() {
    let c = Cluster::start(3, 1, |_| {}).await;
    // Through a follower and through a learner: both are forwarded to the leader.
    let via_follower = c.nodes[1].create_id(CLERK, &any_patient("Follower")).await;
    let via_learner = c.nodes[3].create_id(CLERK, &any_patient("Learner")).await;
    // Read-your-writes on the node that took the write, at once.
    c.nodes[3]
        .get(&format!("/Patient/{via_learner}"), CLIN)
        .await
        .expect(200);
    c.converge().await;
    for n in &c.nodes {
        for id in [&via_follower, &via_learner] {
            let r = n
                .req("GET", &format!("/Patient/{id}"))
                .token(CLIN)
                .header("X-Hale-Consistency", "local")
                .send()
                .await;
            r.expect(200);
            assert_eq!(header(&r, "x-hale-node"), n.raft.id.to_string());
            assert_eq!(header(&r, "x-hale-consistency"), "local");
            assert!(header(&r, "x-hale-applied-index").parse::<u64>().unwrap() > 0);
        }
    }
    // Defaults: voters read linearizably, learners locally with a staleness bound.
    let r = c.nodes[2].get("/Patient?family=Follower", CLIN).await;
    r.expect(200);
    assert_eq!(header(&r, "x-hale-consistency"), "linearizable");
    assert_eq!(header(&r, "x-hale-staleness-ms"), "0");
    assert_eq!(r.match_ids(), vec![via_follower.clone()]);
    let r = c.nodes[3].get("/Patient?family=Learner", CLIN).await;
    assert_eq!(header(&r, "x-hale-consistency"), "local");
    assert!(header(&r, "x-hale-staleness-ms").parse::<u64>().is_ok());
    // A learner can be asked for a linearizable read: it asks the leader first.
    let r = c.nodes[3]
        .req("GET", "/Patient?family=Learner")
        .token(CLIN)
        .header("X-Hale-Consistency", "linearizable")
        .send()
        .await;
    r.expect(200);
    assert_eq!(header(&r, "x-hale-consistency"), "linearizable");
    // A consistency level that does not exist is a 400 naming the header.
    let r = c.nodes[1]
        .req("GET", "/Patient")
        .token(CLIN)
        .header("X-Hale-Consistency", "eventually-maybe")
        .send()
        .await;
    r.expect(400);
    assert!(!r.outcome_at("X-Hale-Consistency").is_empty(), "{}", r.diagnostics());
    c.converge().await;
    let hashes = c.hashes().await;
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "replicas diverged: {hashes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_bookings_through_different_nodes_book_a_slot_once() {
    let c = Cluster::start(3, 1, |_| {}).await;
    let sched = make_schedule(&c.nodes[0]).await;
    let patients: Vec<String> = {
        let mut v = Vec::new();
        for i in 0..8 {
            v.push(c.nodes[0].create_id(CLERK, &any_patient(&format!("Race{i}"))).await);
        }
        v
    };
    for round in 0..3u32 {
        let (slot, s, e) = make_slot(&c.nodes[0], &sched, 3 + round, 9).await;
        c.converge().await;
        let mut tasks = Vec::new();
        for (i, p) in patients.iter().enumerate() {
            let client = c.nodes[i % c.nodes.len()].client;
            let body = appointment(p, &slot, &s, &e);
            tasks.push(tokio::spawn(async move {
                client.post("/Appointment", CLERK, &body).await.status
            }));
        }
        let mut statuses = Vec::new();
        for t in tasks {
            statuses.push(t.await.unwrap());
        }
        let booked = statuses.iter().filter(|s| **s == 201).count();
        assert_eq!(booked, 1, "round {round}: statuses {statuses:?}");
        assert!(statuses.iter().all(|s| *s == 201 || *s == 409), "{statuses:?}");
        c.converge().await;
        for n in &c.nodes {
            let r = n
                .req("GET", &format!("/Appointment?slot=Slot/{slot}"))
                .token(CLERK)
                .header("X-Hale-Consistency", "local")
                .send()
                .await;
            assert_eq!(r.match_ids().len(), 1, "node {} sees {:?}", n.raft.id, r.match_ids());
            let slot_now = n.read(CLERK, &format!("/Slot/{slot}")).await;
            assert_eq!(slot_now["status"], "busy");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_majority_refuses_writes_and_serves_stale_reads() {
    let mut c = Cluster::start(3, 1, |_| {}).await;
    let id = c.nodes[0].create_id(CLERK, &any_patient("Survivor")).await;
    c.converge().await;
    // Two of three voters go down; node 1 keeps running alone.
    c.nodes[1].stop().await;
    c.nodes[2].stop().await;
    let r = c.nodes[0].post("/Patient", CLERK, &any_patient("Lost")).await;
    r.expect(503);
    let why = r.diagnostics();
    assert!(
        why.contains("majority") || why.contains("quorum"),
        "the 503 must say why: {why}"
    );
    // Reads go on, marked stale.
    let r = c.nodes[0].get(&format!("/Patient/{id}"), CLIN).await;
    r.expect(200);
    assert_eq!(header(&r, "x-hale-consistency"), "stale");
    assert!(r.header("x-hale-stale-reason").is_some());
    let r = c.nodes[0]
        .req("GET", &format!("/Patient/{id}"))
        .token(CLIN)
        .header("X-Hale-Consistency", "linearizable")
        .send()
        .await;
    r.expect(503);
    // The learner still serves its local copy, and refuses writes with a reason.
    let r = c.nodes[3].get(&format!("/Patient/{id}"), CLIN).await;
    r.expect(200);
    assert_eq!(header(&r, "x-hale-consistency"), "local");
    let r = c.nodes[3].post("/Patient", CLERK, &any_patient("AlsoLost")).await;
    r.expect(503);
    // Nothing refused was written anywhere.
    assert_eq!(c.nodes[0].live_count("Patient"), 1);
    assert_eq!(c.nodes[3].live_count("Patient"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_learner_catches_up_from_a_snapshot() {
    fn small_snapshots(s: &mut hale_raft::RaftSettings) {
        s.snapshot_entries_since_last = 40;
        s.entries_kept_after_snapshot = 5;
    }
    let mut c = Cluster::start(1, 0, small_snapshots).await;
    let mut ids = Vec::new();
    for i in 0..120 {
        ids.push(c.nodes[0].create_id(CLERK, &any_patient(&format!("Snap{i}"))).await);
    }
    let leader = c.nodes[0].raft.clone();
    wait_for("the leader to compact its log", || {
        leader.metrics().purged.map(|p| p.index).unwrap_or(0) > 40
    })
    .await;
    // The new node's first entries are gone from the leader's log: it must take a snapshot.
    c.nodes.push(start_node(2, "site-new", small_snapshots).await);
    c.add(1).await;
    c.converge().await;
    let learner = &c.nodes[1];
    assert!(
        learner.raft.metrics().snapshot.is_some(),
        "the learner installed no snapshot"
    );
    for id in ids.iter().step_by(17) {
        learner
            .req("GET", &format!("/Patient/{id}"))
            .token(CLIN)
            .header("X-Hale-Consistency", "local")
            .send()
            .await
            .expect(200);
    }
    // Writes after the snapshot flow through the log as usual.
    let later = c.nodes[0].create_id(CLERK, &any_patient("AfterSnap")).await;
    c.converge().await;
    learner
        .req("GET", &format!("/Patient/{later}"))
        .token(CLIN)
        .header("X-Hale-Consistency", "local")
        .send()
        .await
        .expect(200);
    let hashes = c.hashes().await;
    assert_eq!(hashes[0], hashes[1], "the learner diverged after installing a snapshot");
    c.nodes[1].stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_and_membership_need_an_admin() {
    let c = Cluster::start(3, 1, |_| {}).await;
    c.nodes[1].get("/cluster/status", CLIN).await.expect(403);
    let r = c.nodes[1].get("/cluster/status", ADMIN).await;
    r.expect(200);
    let s: &Value = r.body();
    assert_eq!(s["leader"], 1);
    let members = s["members"].as_array().unwrap();
    assert_eq!(members.len(), 4);
    let roles: Vec<&str> = members.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["voter", "voter", "voter", "learner"]);
    assert!(members.iter().all(|m| m["reachable"] == true));
    assert_eq!(members[3]["site"], "site-3");
    // A change sent to a follower names the leader.
    let r = c.nodes[1].post("/cluster/remove", ADMIN, &json!({"node_id": 4})).await;
    r.expect(421);
    assert_eq!(r.header("x-hale-leader"), Some(c.nodes[0].base().as_str()));
    c.nodes[0]
        .post("/cluster/remove", ADMIN, &json!({"node_id": 4}))
        .await
        .expect(200);
    let r = c.nodes[0].get("/cluster/status", ADMIN).await;
    assert_eq!(r.body()["members"].as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_site_keeps_serving_reads_and_its_audit_trail_syncs_back() {
    let c = Cluster::start(3, 1, |_| {}).await;
    let id = c.nodes[0].create_id(CLERK, &any_patient("CutOff")).await;
    c.converge().await;
    let site = &c.nodes[3];
    site.raft
        .faults()
        .isolated
        .store(true, std::sync::atomic::Ordering::Release);
    for _ in 0..5 {
        let r = site.get(&format!("/Patient/{id}"), CLIN).await;
        r.expect(200);
        assert_eq!(header(&r, "x-hale-consistency"), "local");
    }
    // The reads' audit records wait on the site's disk.
    let spool = site.data_dir().join("audit-spool");
    wait_for("the audit batch to be spooled", || {
        std::fs::read_dir(&spool).map(|d| d.count() > 0).unwrap_or(false)
    })
    .await;
    site.raft
        .faults()
        .isolated
        .store(false, std::sync::atomic::Ordering::Release);
    wait_for("the spool to drain", || {
        std::fs::read_dir(&spool).map(|d| d.count() == 0).unwrap_or(false)
    })
    .await;
    c.converge().await;
    let r = c.nodes[0]
        .get(&format!("/AuditEvent?patient=Patient/{id}&_count=100"), ADMIN)
        .await;
    r.expect(200);
    let site_reads = r
        .entries()
        .iter()
        .filter(|e| {
            e["resource"]["action"] == "R" && e["resource"]["agent"][0]["who"]["identifier"]["value"] == "dr.who"
        })
        .count();
    assert_eq!(
        site_reads, 5,
        "the site's 5 reads must each reach the audit trail exactly once"
    );
}

fn small_entries(s: &mut hale_raft::RaftSettings) {
    // Every entry at most 4 KiB: a transaction of 40 patients (~12 kB) takes several parts.
    s.command_bytes_max = 4 * 1024;
    s.append_bytes_max = 16 * 1024;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_transaction_goes_in_bounded_parts_and_stays_atomic() {
    let c = Cluster::start(3, 1, small_entries).await;
    let entries = |families: &[String], bad: bool| -> Value {
        let mut e: Vec<Value> = families
            .iter()
            .map(|f| json!({"resource": any_patient(f), "request": {"method": "POST", "url": "Patient"}}))
            .collect();
        if bad {
            // An NHS number failing modulus 11 refuses the whole transaction.
            let mut p = any_patient("Broken");
            p["identifier"][0]["value"] = json!("9434765918");
            e.push(json!({"resource": p, "request": {"method": "POST", "url": "Patient"}}));
        }
        json!({"resourceType": "Bundle", "type": "transaction", "entry": e})
    };
    let families: Vec<String> = (0..40).map(|i| format!("Parted{i:02}")).collect();
    let before = c.nodes[0].raft.metrics().last_log_index.unwrap_or(0);
    // Through a follower: it splits, and forwards each part to the leader.
    let r = c.nodes[1].post("/", CLERK, &entries(&families, false)).await;
    r.expect(200);
    assert_eq!(r.body()["entry"].as_array().map(Vec::len), Some(40));
    c.converge().await;
    let after = c.nodes[0].raft.metrics().last_log_index.unwrap_or(0);
    assert!(
        after - before >= 3,
        "the transaction went into the log in parts ({before} -> {after})"
    );
    let entries_in_log =
        hale_raft::log_store::LogStore::read_all(c.nodes[0].data_dir()).expect("read the leader's log");
    for e in &entries_in_log {
        let bytes = serde_json::to_vec(&e.payload).expect("encode");
        assert!(
            bytes.len() <= 4 * 1024 + 512,
            "entry {} is {} bytes",
            e.log_id,
            bytes.len()
        );
    }
    for n in &c.nodes {
        let r = n
            .req("GET", "/Patient?family=Parted39")
            .token(CLIN)
            .header("X-Hale-Consistency", "local")
            .send()
            .await;
        r.expect(200);
        assert_eq!(
            r.body()["entry"].as_array().map(Vec::len),
            Some(1),
            "node {}",
            n.raft.id
        );
    }
    // A refused transaction in parts leaves nothing behind, on any node.
    let more: Vec<String> = (0..40).map(|i| format!("Refused{i:02}")).collect();
    let r = c.nodes[2].post("/", CLERK, &entries(&more, true)).await;
    assert!(r.status >= 400, "refused: {}", r.text);
    c.converge().await;
    for n in &c.nodes {
        let r = n
            .req("GET", "/Patient?family=Refused00")
            .token(CLIN)
            .header("X-Hale-Consistency", "local")
            .send()
            .await;
        assert_eq!(
            r.body()["entry"].as_array().map_or(0, Vec::len),
            0,
            "node {}",
            n.raft.id
        );
    }
    let h = c.hashes().await;
    assert!(h.iter().all(|x| x == &h[0]), "{h:?}");
}

/// Offline writes (`X-Hale-Offline: accept`) at a cut-off site: saved in the
/// site journal with 202, shown at the site as pending, replayed once through
/// the leader after the heal, each ending committed or as a Task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_site_keeps_writing_and_every_write_syncs_back_once_or_becomes_a_task() {
    let c = Cluster::start(3, 1, |_| {}).await;
    let leader = &c.nodes[0];
    let site = &c.nodes[3];
    let p = leader
        .create_id(
            CLERK,
            &patient_with_phone(&nhs(), "Offline", &["Ada"], "1980-02-03", "0141 000 0000"),
        )
        .await;
    let loc = leader.create_id(CLERK, &location("East clinic")).await;
    let sch = leader.create_id(CLERK, &schedule(&loc)).await;
    let s1 = leader
        .create_id(CLERK, &slot(&sch, "2030-01-07T09:00:00Z", "2030-01-07T09:20:00Z"))
        .await;
    let s2 = leader
        .create_id(CLERK, &slot(&sch, "2030-01-07T09:20:00Z", "2030-01-07T09:40:00Z"))
        .await;
    let appt = leader
        .create_id(
            CLERK,
            &appointment(&p, &s2, "2030-01-07T09:20:00Z", "2030-01-07T09:40:00Z"),
        )
        .await;
    c.converge().await;

    site.raft
        .faults()
        .isolated
        .store(true, std::sync::atomic::Ordering::Release);
    let raft = site.raft.clone();
    wait_for("the site to see it is cut off", || raft.cut_off().is_some()).await;

    let offline = |method: &str, path: &str, token: &str, body: &Value| {
        site.req(method, path)
            .token(token)
            .header("X-Hale-Offline", "accept")
            .json(body)
    };
    // A clinical note is saved at the site, and the site shows it.
    let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "pulse"},
                     "subject": {"reference": format!("Patient/{p}")}, "valueQuantity": {"value": 72, "unit": "/min"}});
    let r = offline("POST", "/Observation", CLIN, &obs).send().await;
    r.expect(202);
    assert_eq!(header(&r, "etag"), "W/\"p1\"");
    assert_eq!(header(&r, "x-hale-sync"), "pending");
    assert_eq!(header(&r, "x-hale-journal-seq"), "1");
    let obs_id = r.body()["id"].as_str().unwrap().to_string();
    let r = site.get(&format!("/Observation/{obs_id}"), CLIN).await;
    r.expect(200);
    assert_eq!(header(&r, "x-hale-sync"), "pending");
    let r = site.get(&format!("/Observation/{obs_id}/_history/p1"), CLIN).await;
    r.expect(200);
    assert_eq!(r.body()["meta"]["versionId"], "p1");
    let r = site.get(&format!("/Observation?subject=Patient/{p}"), CLIN).await;
    r.expect(200);
    assert_eq!(
        r.match_ids(),
        vec![obs_id.clone()],
        "the search must include the pending note"
    );
    assert_eq!(header(&r, "x-hale-consistency"), "stale");
    let r = site
        .get(&format!("/Observation?subject=Patient/{p}&code=not-pulse"), CLIN)
        .await;
    assert!(r.match_ids().is_empty(), "a filter must apply to pending writes too");

    // A phone change (different field from the central change below).
    let mut pat = site.read(CLERK, &format!("/Patient/{p}")).await;
    pat["telecom"] = json!([{"system": "phone", "value": "07700 900123", "use": "mobile"}]);
    offline("PUT", &format!("/Patient/{p}"), CLERK, &pat)
        .header("If-Match", "W/\"1\"")
        .send()
        .await
        .expect(202);
    // Arrival at the site's clinic.
    let mut a = site.read(CLERK, &format!("/Appointment/{appt}")).await;
    a["status"] = json!("arrived");
    offline("PUT", &format!("/Appointment/{appt}"), CLERK, &a)
        .send()
        .await
        .expect(202);
    // A new patient whose NHS number is registered centrally meanwhile.
    let twin_nhs = nhs();
    let r = offline(
        "POST",
        "/Patient",
        CLERK,
        &patient(&twin_nhs, "Twin", &["Site"], "1990-01-01"),
    )
    .send()
    .await;
    r.expect(202);
    let twin_site = r.body()["id"].as_str().unwrap().to_string();
    // A booking of a slot that is also booked centrally.
    let booking = appointment(&p, &s1, "2030-01-07T09:00:00Z", "2030-01-07T09:20:00Z");
    let r = offline("POST", "/Appointment", CLERK, &booking).send().await;
    r.expect(202);
    let site_booking = r.body()["id"].as_str().unwrap().to_string();
    // Without the opt-in header, or for what must wait: 503, as before.
    site.post("/Observation", CLIN, &obs).await.expect(503);
    let r = site
        .req("DELETE", &format!("/Observation/{obs_id}"))
        .token(CLIN)
        .header("X-Hale-Offline", "accept")
        .send()
        .await;
    r.expect(503);
    let r = offline("POST", "/Schedule", ADMIN, &schedule(&loc)).send().await;
    r.expect(503);

    // Meanwhile, centrally: the email changes, the twin registers, S1 is booked.
    let mut central = leader.read(CLERK, &format!("/Patient/{p}")).await;
    central["telecom"] = json!([{"system": "phone", "value": "0141 000 0000", "use": "mobile"},
                                 {"system": "email", "value": "ada@example.org"}]);
    leader.put(&format!("/Patient/{p}"), CLERK, &central).await.expect(200);
    let twin_central = leader
        .create_id(CLERK, &patient(&twin_nhs, "Twin", &["Central"], "1990-01-01"))
        .await;
    let other = leader.create_id(CLERK, &any_patient("Other")).await;
    leader
        .post(
            "/Appointment",
            CLERK,
            &appointment(&other, &s1, "2030-01-07T09:00:00Z", "2030-01-07T09:20:00Z"),
        )
        .await
        .expect(201);

    let r = site.get("/sync/status", ADMIN).await;
    r.expect(200);
    assert_eq!(r.body()["pending"], 5, "{}", r.body());

    // Heal: the journal drains through the leader.
    site.raft
        .faults()
        .isolated
        .store(false, std::sync::atomic::Ordering::Release);
    let start = std::time::Instant::now();
    loop {
        let r = site.get("/sync/status", ADMIN).await;
        if r.body()["pending"] == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_millis(WAIT_MS),
            "the journal did not drain: {}",
            r.body()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.converge().await;

    // Committed: the note, the arrival, and the phone merged with the email.
    leader.get(&format!("/Observation/{obs_id}"), CLIN).await.expect(200);
    let merged = leader.read(CLERK, &format!("/Patient/{p}")).await;
    let telecom = merged["telecom"].to_string();
    assert!(
        telecom.contains("07700 900123") && telecom.contains("ada@example.org"),
        "{merged}"
    );
    assert_eq!(
        leader.read(CLERK, &format!("/Appointment/{appt}")).await["status"],
        "arrived"
    );
    // Tasks: the twin and the slot, and nothing else.
    let r = leader
        .get(
            "/Task?code=https://hale.health/fhir/CodeSystem/sync-conflict|&status=requested&_count=50",
            ADMIN,
        )
        .await;
    r.expect(200);
    let mut kinds: Vec<String> = r
        .entries()
        .iter()
        .map(|e| e["resource"]["code"]["coding"][0]["code"].as_str().unwrap().to_string())
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["possible-duplicate", "slot-taken"], "{}", r.body());
    let twin = leader.read(CLERK, &format!("/Patient/{twin_site}")).await;
    assert_ne!(twin_site, twin_central);
    assert_eq!(
        twin["identifier"][0]["system"],
        "https://hale.health/fhir/Id/unverified-nhs-number"
    );
    assert_eq!(
        leader.read(CLERK, &format!("/Appointment/{site_booking}")).await["status"],
        "waitlist"
    );
    // Provenance keeps the site time; the write has commit time.
    let r = leader
        .get(&format!("/Provenance?target=Observation/{obs_id}"), ADMIN)
        .await;
    r.expect(200);
    assert_eq!(r.entries().len(), 1, "{}", r.body());
    // The patient's record is flagged until the tasks are done.
    let r = leader.get(&format!("/Flag?subject=Patient/{twin_site}"), CLIN).await;
    assert_eq!(r.match_ids().len(), 1, "{}", r.body());
    assert_eq!(r.entries()[0]["resource"]["status"], "active");

    // Verify: every entry has exactly one receipt.
    let r = site.get("/sync/verify", ADMIN).await;
    r.expect(200);
    let v = r.body();
    assert_eq!(v["entries"], 5, "{v}");
    assert_eq!(v["receipts"], 5, "{v}");
    assert_eq!(v["missing"], json!([]), "{v}");
    assert_eq!(v["duplicate"], 0, "{v}");
    assert_eq!(v["chainOk"], true, "{v}");

    // Re-sending the whole journal changes nothing.
    let before = c.hashes().await;
    assert!(before.iter().all(|h| *h == before[0]), "replicas diverged: {before:?}");
    let journal = hale_journal::Journal::open(site.data_dir(), site.raft.id, "site-3", Default::default()).unwrap();
    let all = journal.replays(1, 1000).unwrap();
    let cmd = hale_store::command::Command {
        references: Default::default(),
        time_ms: 1,
        actor: hale_store::Actor::system(),
        kind: hale_store::CommandKind::Replay(all),
    };
    let (_, applied) = site.raft.propose(cmd).await.expect("re-send");
    match applied {
        hale_store::apply::Applied::Replayed(r) => assert!(r.iter().all(|r| r.duplicate), "{r:?}"),
        other => panic!("{other:?}"),
    }
    c.converge().await;
    assert_eq!(c.hashes().await, before, "re-sending the journal changed the state");
}
