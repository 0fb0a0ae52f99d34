//! Raft RPC over mutual TLS: real handshakes on loopback against a running
//! node, with certificates from a test CA (rcgen) and from a rogue one.

use hale_raft::forward::{ForwardRequest, Origin};
use hale_raft::network::{NetClient, SendError};
use hale_raft::peer_tls::{node_name, PeerTls, PeerTlsFiles, OPERATOR_NAME};
use hale_raft::{RaftNode, RaftSettings};
use hale_store::command::{Actor, Command, CommandKind, WriteOp};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let cert = p.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(p, key),
    }
}

/// (certificate PEM, key PEM) naming `dns`.
fn leaf(ca: &Ca, dns: &[&str]) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(dns.iter().map(|d| d.to_string()).collect::<Vec<_>>()).unwrap();
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn tls(ca: &Ca, dns: &[&str]) -> PeerTls {
    let (cert, key) = leaf(ca, dns);
    PeerTls::from_pem(ca.pem.as_bytes(), cert.as_bytes(), key.as_bytes()).unwrap()
}

fn client(me: Option<u64>, t: Option<&PeerTls>) -> NetClient {
    NetClient::new(Default::default(), None, 1 << 20, me, t)
}

struct Running {
    node: Arc<RaftNode>,
    addr: String,
    ca: Ca,
    _dir: tempfile::TempDir,
}

/// Node 1, a cluster of one (so it leads), with raft over mTLS.
async fn start() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("test cluster CA");
    let (cert, key) = leaf(&ca, &[&node_name(1, true)]);
    let files = PeerTlsFiles {
        ca: dir.path().join("ca.pem"),
        cert: dir.path().join("node-1.pem"),
        key: dir.path().join("node-1-key.pem"),
    };
    std::fs::write(&files.ca, &ca.pem).unwrap();
    std::fs::write(&files.cert, cert).unwrap();
    std::fs::write(&files.key, key).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let settings = RaftSettings {
        node_id: 1,
        listen: Some(addr.clone()),
        bootstrap_single: true,
        tls: Some(files),
        ..RaftSettings::default()
    };
    let node = RaftNode::start(&data, settings, "http://127.0.0.1:9".into())
        .await
        .unwrap();
    for _ in 0..100 {
        if node.metrics().current_leader == Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(node.metrics().current_leader, Some(1), "a cluster of one leads");
    Running {
        node,
        addr,
        ca,
        _dir: dir,
    }
}

async fn post(c: &NetClient, addr: &str, path: &str, body: &Value) -> Result<bytes::Bytes, SendError> {
    c.post_raw(
        None,
        addr,
        path,
        body.to_string().into_bytes(),
        Duration::from_secs(5),
        false,
    )
    .await
}

fn status_of(r: Result<bytes::Bytes, SendError>) -> u16 {
    match r {
        Ok(_) => 200,
        Err(SendError::Status(_, code, _)) => code,
        Err(e) => panic!("expected an HTTP answer, got {e}"),
    }
}

/// A raw TLS handshake with `config`: Ok when it completes.
async fn handshake(addr: &str, config: rustls::ClientConfig) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from(node_name(1, true)).unwrap();
    let mut s = connector.connect(name, tcp).await.map_err(|e| e.to_string())?;
    // Under TLS 1.3 the server judges the client's certificate after the
    // client's side finished: the refusal shows on the first exchange.
    s.write_all(b"POST /raft/status HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nfalse")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 12];
    match s.read(&mut buf).await {
        Ok(n) if n > 0 => Ok(()),
        Ok(_) => Err("closed without an answer".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn roots(ca: &Ca) -> rustls::RootCertStore {
    use rustls::pki_types::pem::PemObject;
    let mut r = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca.pem.as_bytes()) {
        r.add(c.unwrap()).unwrap();
    }
    r
}

fn builder() -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier> {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
}

fn client_config_with(ca: &Ca, cert_ca: Option<&Ca>, dns: &str) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    let b = builder().with_root_certificates(roots(ca));
    match cert_ca {
        None => b.with_no_client_auth(),
        Some(signer) => {
            let (cert, key) = leaf(signer, &[dns]);
            let chain = rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_cluster_certificates_get_past_the_handshake() {
    let r = start().await;
    // The genuine article: a voter certificate from the cluster CA.
    handshake(&r.addr, client_config_with(&r.ca, Some(&r.ca), &node_name(2, true)))
        .await
        .expect("a cluster certificate is accepted");
    // No client certificate at all.
    let e = handshake(&r.addr, client_config_with(&r.ca, None, ""))
        .await
        .expect_err("no client certificate must fail");
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    // A certificate naming node 2, signed by a rogue CA.
    let rogue = ca("rogue CA");
    let e = handshake(&r.addr, client_config_with(&r.ca, Some(&rogue), &node_name(2, true)))
        .await
        .expect_err("a rogue CA's certificate must fail");
    assert!(!e.is_empty());
    // The cluster CA, but no Hale identity in the certificate.
    handshake(&r.addr, client_config_with(&r.ca, Some(&r.ca), "node-2.hale"))
        .await
        .expect_err("a certificate naming no node must fail");
    // Through the node's own client: the rogue certificate never gets an HTTP answer.
    let rogue_tls = tls(&rogue, &[&node_name(2, true)]);
    let err = post(
        &client(Some(2), Some(&rogue_tls)),
        &r.addr,
        "/raft/status",
        &json!(false),
    )
    .await
    .expect_err("rogue CA");
    assert!(err.not_delivered(), "refused at the handshake, not by HTTP: {err}");
    // Plain HTTP to the mTLS port: no HTTP answer either.
    let err = post(&client(Some(2), None), &r.addr, "/raft/status", &json!(false))
        .await
        .expect_err("plain HTTP must fail");
    assert!(!matches!(err, SendError::Status(_, c, _) if c != 0), "{err}");
    r.node.shutdown().await;
}

fn vote(candidate: u64, term: u64) -> Value {
    serde_json::to_value(openraft::raft::VoteRequest::<u64>::new(
        openraft::Vote::new(term, candidate),
        None,
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_decide_who_may_vote_and_as_whom() {
    let r = start().await;
    let learner = tls(&r.ca, &[&node_name(4, false)]);
    let voter2 = tls(&r.ca, &[&node_name(2, true)]);
    let operator = tls(&r.ca, &[OPERATOR_NAME]);
    // A learner certificate may not vote, campaign or append as a leader.
    let c = client(Some(4), Some(&learner));
    assert_eq!(status_of(post(&c, &r.addr, "/raft/vote", &vote(4, 1)).await), 403);
    let prevote = json!({"candidate": 4, "term": 1, "last_log_id": null});
    assert_eq!(status_of(post(&c, &r.addr, "/raft/prevote", &prevote).await), 403);
    let term0 = r.node.metrics().current_term;
    let append = serde_json::to_value(openraft::raft::AppendEntriesRequest::<hale_raft::TypeConfig> {
        vote: openraft::Vote::new_committed(9, 4),
        prev_log_id: None,
        leader_commit: None,
        entries: vec![],
    })
    .unwrap();
    assert_eq!(status_of(post(&c, &r.addr, "/raft/append", &append).await), 403);
    assert_eq!(r.node.metrics().current_term, term0, "a refused append changes no term");
    assert_eq!(
        r.node.metrics().current_leader,
        Some(1),
        "a learner certificate deposes nobody"
    );
    // ... but reads status and may forward writes and ask for a read index.
    assert_eq!(status_of(post(&c, &r.addr, "/raft/status", &json!(false)).await), 200);
    assert_eq!(
        status_of(post(&c, &r.addr, "/raft/read-index", &json!(null)).await),
        200
    );
    // A voter certificate claiming another node's id, in the message or the header.
    let c2 = client(Some(2), Some(&voter2));
    assert_eq!(status_of(post(&c2, &r.addr, "/raft/vote", &vote(3, 1)).await), 403);
    let lying = client(Some(3), Some(&voter2));
    assert_eq!(
        status_of(post(&lying, &r.addr, "/raft/status", &json!(false)).await),
        403
    );
    // As itself, a voter's vote request is heard (and refused by raft: node 1 leads at a higher vote).
    let term = r.node.metrics().current_term;
    let body = post(&c2, &r.addr, "/raft/vote", &vote(2, term))
        .await
        .expect("a voter may ask");
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["Ok"]["vote_granted"], json!(false), "{answer}");
    // An operator certificate reads status only.
    let op = client(None, Some(&operator));
    assert_eq!(status_of(post(&op, &r.addr, "/raft/status", &json!(false)).await), 200);
    assert_eq!(
        status_of(post(&op, &r.addr, "/raft/read-index", &json!(null)).await),
        403
    );
    r.node.shutdown().await;
}

fn patient_write(actor: Actor) -> Command {
    Command {
        time_ms: 1_700_000_000_000,
        actor,
        kind: CommandKind::Write(WriteOp::Create {
            rtype: "Patient".into(),
            id: "forged".into(),
            resource: json!({"resourceType": "Patient", "id": "forged", "name": [{"family": "Forged"}]}),
            if_none_exist: None,
        }),
        references: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_forwarded_user_appends_nothing() {
    let r = start().await;
    let learner = tls(&r.ca, &[&node_name(4, false)]);
    let c = client(Some(4), Some(&learner));
    let clinician = Actor {
        user: "dr.forged".into(),
        role: "clinician".into(),
    };
    let before = r.node.metrics().last_log_index;
    let applied = r.node.applied_index();
    // The forwarding node claims the write as its own, in a user's name.
    let as_node = ForwardRequest {
        cmd: patient_write(clinician.clone()),
        origin: Origin::Node,
    };
    // In the name of a service, but it is a learner: only its own audit and journal.
    let as_service = ForwardRequest {
        cmd: patient_write(Actor::system()),
        origin: Origin::Node,
    };
    // With a credential no authenticator here can check (none is installed).
    let with_token = ForwardRequest {
        cmd: patient_write(clinician),
        origin: Origin::Request {
            authorization: Some("Bearer whatever".into()),
        },
    };
    for (what, req) in [
        ("as the node", as_node),
        ("as a service", as_service),
        ("with a token", with_token),
    ] {
        let body = serde_json::to_value(&req).unwrap();
        let answer = post(&c, &r.addr, "/raft/propose", &body).await.expect("an answer");
        let answer: Value = serde_json::from_slice(&answer).unwrap();
        assert!(answer.get("Refused").is_some(), "{what}: {answer}");
    }
    // An audit batch in another node's name.
    let audit = ForwardRequest {
        cmd: Command {
            time_ms: 1,
            actor: Actor::system(),
            kind: CommandKind::AuditOnce {
                node: 2,
                seq: 1,
                records: vec![],
            },
            references: Default::default(),
        },
        origin: Origin::Node,
    };
    let answer = post(&c, &r.addr, "/raft/propose", &serde_json::to_value(&audit).unwrap())
        .await
        .unwrap();
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert!(answer.get("Refused").is_some(), "{answer}");
    assert_eq!(r.node.metrics().last_log_index, before, "nothing was appended");
    assert_eq!(r.node.applied_index(), applied);
    // Its own (empty) audit batch goes in.
    let own = ForwardRequest {
        cmd: Command {
            time_ms: 1,
            actor: Actor::system(),
            kind: CommandKind::AuditOnce {
                node: 4,
                seq: 1,
                records: vec![],
            },
            references: Default::default(),
        },
        origin: Origin::Node,
    };
    let answer = post(&c, &r.addr, "/raft/propose", &serde_json::to_value(&own).unwrap())
        .await
        .unwrap();
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert!(answer.get("Done").is_some(), "{answer}");
    r.node.shutdown().await;
}

#[cfg(not(feature = "fault-injection"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_test_feature_there_is_no_fault_route() {
    let r = start().await;
    let voter2 = tls(&r.ca, &[&node_name(2, true)]);
    let c = client(Some(2), Some(&voter2));
    assert_eq!(
        status_of(post(&c, &r.addr, "/raft/fault", &json!({"isolated": true})).await),
        404
    );
    assert!(!r.node.faults().isolated());
    r.node.shutdown().await;
}
