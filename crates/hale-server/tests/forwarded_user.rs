//! The leader re-authenticates the user behind every forwarded write: a
//! voter and a site learner talking raft over mutual TLS (test CA, rcgen),
//! writes through the learner, and a learner certificate forging users on
//! the leader's raft port.

mod common;

use common::*;
use hale_raft::forward::{ForwardRequest, Origin};
use hale_raft::network::NetClient;
use hale_raft::peer_tls::{node_name, PeerTls, PeerTlsFiles};
use hale_store::command::{Actor, Command, CommandKind, WriteOp};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca() -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let cert = p.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(p, key),
    }
}

fn leaf(ca: &Ca, dns: &str) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec![dns.to_string()]).unwrap();
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    (p.signed_by(&key, &ca.issuer).unwrap().pem(), key.serialize_pem())
}

fn write_certs(dir: &Path, ca: &Ca, id: u64, voter: bool) -> PeerTlsFiles {
    let (cert, key) = leaf(ca, &node_name(id, voter));
    let f = PeerTlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("node-{id}.pem")),
        key: dir.join(format!("node-{id}-key.pem")),
    };
    std::fs::write(&f.ca, &ca.pem).unwrap();
    std::fs::write(&f.cert, cert).unwrap();
    std::fs::write(&f.key, key).unwrap();
    f
}

async fn node(id: u64, site: &str, files: PeerTlsFiles) -> TestServer {
    let site = site.to_string();
    TestServer::start_with(move |cfg| {
        cfg.cluster.node_id = id;
        cfg.cluster.listen = Some("127.0.0.1:0".into());
        cfg.cluster.bootstrap_single = false;
        cfg.cluster.site = site;
        cfg.cluster.write_timeout_ms = 3_000;
        cfg.cluster.leader_wait_ms = 2_000;
        cfg.cluster.read_timeout_ms = 1_000;
        cfg.cluster.tls = Some(files);
        // Patient-level access on, as in production (the shared test config turns it off).
        cfg.access.legitimate_relationship = true;
    })
    .await
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(30), "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn write(actor: Actor, rtype: &str, id: &str, resource: Value) -> Command {
    Command {
        time_ms: 1_700_000_000_000,
        actor,
        kind: CommandKind::Write(WriteOp::Create {
            rtype: rtype.into(),
            id: id.into(),
            resource,
            if_none_exist: None,
        }),
        references: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_rebuilds_the_user_of_a_forwarded_write_from_its_credential() {
    let certs = tempfile::tempdir().unwrap();
    let ca = ca();
    let leader = node(1, "dc-1", write_certs(certs.path(), &ca, 1, true)).await;
    let site = node(2, "site-2", write_certs(certs.path(), &ca, 2, false)).await;
    leader.post("/cluster/init", ADMIN, &json!({})).await.expect(200);
    let raft = leader.raft.clone();
    wait_for("node 1 to lead", || raft.metrics().current_leader == Some(1)).await;
    let body = json!({
        "node_id": 2,
        "raft_addr": site.raft.me.raft_addr,
        "api_url": site.base(),
        "site": "site-2",
    });
    leader.post("/cluster/learners", ADMIN, &body).await.expect(200);
    let s = site.raft.clone();
    wait_for("the site to join", || s.metrics().current_leader == Some(1)).await;

    // An honest write through the site: forwarded with the clerk's token, re-checked, committed.
    let patient = json!({"resourceType": "Patient", "name": [{"family": "Forwarded"}]});
    let r = site.post("/Patient", CLERK, &patient).await;
    r.expect(201);
    let id = r.id();
    let read = leader.get(&format!("/Patient/{id}"), ADMIN).await;
    read.expect(200);

    // Now node 2's certificate on the leader's raft port, forging users.
    let tls = PeerTls::load(&PeerTlsFiles {
        ca: certs.path().join("ca.pem"),
        cert: certs.path().join("node-2.pem"),
        key: certs.path().join("node-2-key.pem"),
    })
    .unwrap();
    let client = NetClient::new(Default::default(), None, 1 << 20, Some(2), Some(&tls));
    let clinician = Actor {
        user: "dr.who".into(),
        role: "clinician".into(),
    };
    let clerk = Actor {
        user: "clerk.kent".into(),
        role: "clerk".into(),
    };
    let note =
        |id: &str| json!({"resourceType": "Observation", "id": id, "status": "final", "code": {"text": "forged"}});
    let bearer = |t: &str| Origin::Request {
        authorization: Some(format!("Bearer {t}")),
    };
    let cases: Vec<(&str, Command, Origin)> = vec![
        // The clerk's token, the clinician's name.
        (
            "a mismatched user",
            write(clinician.clone(), "Observation", "f1", note("f1")),
            bearer(CLERK),
        ),
        // The clerk as the clerk, but a clinical type a clerk may not write.
        (
            "a type the role may not write",
            write(clerk.clone(), "Observation", "f2", note("f2")),
            bearer(CLERK),
        ),
        // A token the leader does not know.
        (
            "an unknown token",
            write(clinician.clone(), "Observation", "f3", note("f3")),
            bearer("t-nonsense"),
        ),
        // No credential at all (the leader is not open access).
        (
            "no credential",
            write(clinician.clone(), "Observation", "f4", note("f4")),
            Origin::Request { authorization: None },
        ),
        // A web-UI session of an account that does not exist.
        (
            "a session of no account",
            write(clinician.clone(), "Observation", "f5", note("f5")),
            Origin::Session {
                user: "dr.who".into(),
                role: "clinician".into(),
            },
        ),
        // The node in its own name, writing as a user.
        (
            "the node as a user",
            write(clinician, "Observation", "f6", note("f6")),
            Origin::Node,
        ),
        // The clerk's token asking for an admin's account change.
        (
            "an account change by a clerk",
            Command {
                time_ms: 1,
                actor: clerk,
                kind: CommandKind::Account(hale_store::accounts::AccountOp::Disable {
                    user: "admin.ada".into(),
                }),
                references: Default::default(),
            },
            bearer(CLERK),
        ),
    ];
    let before = leader.raft.metrics().last_log_index;
    for (what, cmd, origin) in cases {
        let req = ForwardRequest { cmd, origin };
        let answer: Value = client
            .post(
                Some(1),
                &leader.raft.me.raft_addr,
                "/raft/propose",
                &req,
                Duration::from_secs(5),
            )
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(answer.get("Refused").is_some(), "{what}: {answer}");
    }
    assert_eq!(
        leader.raft.metrics().last_log_index,
        before,
        "a refused forwarded write appends nothing"
    );
    for id in ["f1", "f2", "f3", "f4", "f5", "f6"] {
        leader.get(&format!("/Observation/{id}"), ADMIN).await.expect(404);
    }

    // An admin adds a local account through the site: an account change,
    // forwarded with the admin's token, re-checked on the leader.
    let hash = hale_server::accounts::hash_password("a-long-enough-password").unwrap();
    let add = json!({"user": "nurse.nye", "role": "clinician", "name": "N Nye", "password_hash": hash});
    site.post("/admin/users", ADMIN, &add).await.expect(201);
    // A web-UI session of that account (the site's UI writes in-process as
    // it): the leader finds the account enabled with that role.
    let nurse = Actor {
        user: "nurse.nye".into(),
        role: "clinician".into(),
    };
    let session = |role: &str| Origin::Session {
        user: "nurse.nye".into(),
        role: role.into(),
    };
    let s1 = ForwardRequest {
        cmd: write(nurse.clone(), "Observation", "s1", note("s1")),
        origin: session("clinician"),
    };
    let answer: Value = client
        .post(
            Some(1),
            &leader.raft.me.raft_addr,
            "/raft/propose",
            &s1,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(answer.get("Done").is_some(), "a real session: {answer}");
    // The same account claiming a role it does not have.
    let s2 = ForwardRequest {
        cmd: write(
            Actor {
                user: "nurse.nye".into(),
                role: "admin".into(),
            },
            "Observation",
            "s2",
            note("s2"),
        ),
        origin: session("admin"),
    };
    let answer: Value = client
        .post(
            Some(1),
            &leader.raft.me.raft_addr,
            "/raft/propose",
            &s2,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(
        answer.get("Refused").is_some(),
        "a session with a role the account lacks: {answer}"
    );
    // A disabled account's session is refused.
    leader
        .post("/admin/users/nurse.nye/disable", ADMIN, &json!({}))
        .await
        .expect(200);
    let s3 = ForwardRequest {
        cmd: write(nurse, "Observation", "s3", note("s3")),
        origin: session("clinician"),
    };
    let answer: Value = client
        .post(
            Some(1),
            &leader.raft.me.raft_addr,
            "/raft/propose",
            &s3,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(answer.get("Refused").is_some(), "a disabled account: {answer}");

    // The same path with the clinician's own token goes through.
    let honest = write(
        Actor {
            user: "dr.who".into(),
            role: "clinician".into(),
        },
        "Observation",
        "h1",
        note("h1"),
    );
    let req = ForwardRequest {
        cmd: honest,
        origin: bearer(CLIN),
    };
    let answer: Value = client
        .post(
            Some(1),
            &leader.raft.me.raft_addr,
            "/raft/propose",
            &req,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(answer.get("Done").is_some(), "{answer}");

    // Patient-level access is decided again on the leader, not taken from
    // the site: a clinician without a site of their own is judged at the
    // site the membership records for the forwarding node's certificate.
    leader
        .put(
            "/Location/site-2",
            ADMIN,
            &json!({"resourceType": "Location", "id": "site-2", "name": "Site 2", "status": "active"}),
        )
        .await
        .expect(201);
    for id in ["pat-lr", "pat-none"] {
        leader
            .put(
                &format!("/Patient/{id}"),
                CLERK,
                &json!({"resourceType": "Patient", "id": id, "name": [{"family": "Access"}]}),
            )
            .await
            .expect(201);
    }
    let now = hale_server::now_ms();
    let appt = json!({
        "resourceType": "Appointment",
        "status": "booked",
        "start": hale_server::wire::instant(now + 86_400_000),
        "end": hale_server::wire::instant(now + 86_400_000 + 1_800_000),
        "participant": [
            {"actor": {"reference": "Patient/pat-lr"}, "status": "accepted"},
            {"actor": {"reference": "Location/site-2"}, "status": "accepted"}
        ]
    });
    leader.post("/Appointment", CLERK, &appt).await.expect(201);
    let obs = |id: &str, patient: &str| json!({"resourceType": "Observation", "id": id, "status": "final", "code": {"text": "pulse"}, "subject": {"reference": format!("Patient/{patient}")}});
    let dr_who = Actor {
        user: "dr.who".into(),
        role: "clinician".into(),
    };
    let forward = |cmd: Command| ForwardRequest {
        cmd,
        origin: bearer(CLIN),
    };
    let before = leader.raft.metrics().last_log_index;
    let refused: Value = client
        .post(
            Some(1),
            &leader.raft.me.raft_addr,
            "/raft/propose",
            &forward(write(
                dr_who.clone(),
                "Observation",
                "lr-none",
                obs("lr-none", "pat-none"),
            )),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let why = refused["Refused"]
        .as_str()
        .unwrap_or_else(|| panic!("no relationship: {refused}"));
    assert!(why.contains("patient-level access"), "{why}");
    assert_eq!(leader.raft.metrics().last_log_index, before, "nothing appended");
    let allowed: Value = client
        .post(
            Some(1),
            &leader.raft.me.raft_addr,
            "/raft/propose",
            &forward(write(dr_who, "Observation", "lr-ok", obs("lr-ok", "pat-lr"))),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(
        allowed.get("Done").is_some(),
        "an appointment at the forwarding node's site is a relationship: {allowed}"
    );
}
