//! TLS on the API: real handshakes over loopback with a test CA (rcgen),
//! HSTS, refusal of untrusted clients and of plain HTTP, TLS 1.2 and 1.3,
//! certificate reload without dropping open connections, start-up errors.

use hale_server::config::{Config, Role, TokenEntry};
use hale_server::Node;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

struct Ca {
    der: CertificateDer<'static>,
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
        der: cert.der().clone(),
        issuer: Issuer::new(p, key),
    }
}

/// A server certificate for 127.0.0.1 and localhost: (cert PEM, key PEM, DER).
fn leaf(ca: &Ca) -> (String, String, CertificateDer<'static>) {
    let key = KeyPair::generate().unwrap();
    let p = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().clone())
}

fn write_pair(dir: &Path, cert: &str, key: &str) -> (PathBuf, PathBuf) {
    let (c, k) = (dir.join("server.pem"), dir.join("server-key.pem"));
    std::fs::write(&c, cert).unwrap();
    std::fs::write(&k, key).unwrap();
    (c, k)
}

fn config(dir: &Path, cert: Option<PathBuf>, key: Option<PathBuf>) -> Config {
    let mut cfg = Config {
        data: dir.join("data"),
        listen: "127.0.0.1:0".into(),
        ..Config::default()
    };
    cfg.auth.tokens = vec![TokenEntry {
        token: "t-admin".into(),
        user: "admin.ada".into(),
        role: Role::Admin,
        site: None,
        patient: None,
    }];
    cfg.tls.cert = cert;
    cfg.tls.key = key;
    cfg
}

struct Server {
    addr: SocketAddr,
    tls: Arc<hale_server::tls::Tls>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("shutdown is bounded")
            .unwrap()
            .unwrap();
    }
}

async fn start(ca: &Ca) -> (Server, CertificateDer<'static>) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = leaf(ca);
    let (c, k) = write_pair(dir.path(), &cert, &key);
    let cfg = config(dir.path(), Some(c), Some(k));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let node = Node::start(cfg, format!("https://{addr}")).await.expect("start node");
    let tls = node.tls.clone().expect("TLS is loaded at start");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(hale_server::serve(node, listener, async move {
        let _ = rx.await;
    }));
    let srv = Server {
        addr,
        tls,
        stop: Some(tx),
        handle,
        _dir: dir,
    };
    (srv, der)
}

fn connector(trust: &CertificateDer<'static>, versions: &[&'static rustls::SupportedProtocolVersion]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trust.clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(cfg))
}

type Stream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn connect(addr: SocketAddr, c: &TlsConnector) -> std::io::Result<Stream> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    c.connect(ServerName::try_from("127.0.0.1").unwrap(), tcp).await
}

/// What the client saw of the connection: version, ALPN, the server's certificate.
fn session(s: &Stream) -> (rustls::ProtocolVersion, Option<Vec<u8>>, CertificateDer<'static>) {
    let (_, conn) = s.get_ref();
    (
        conn.protocol_version().unwrap(),
        conn.alpn_protocol().map(|a| a.to_vec()),
        conn.peer_certificates().unwrap()[0].clone().into_owned(),
    )
}

/// An HTTP/1.1 connection over TLS; requests go one after another on it.
struct Conn {
    send: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

impl Conn {
    async fn over(s: Stream) -> Conn {
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.unwrap();
        tokio::spawn(conn);
        Conn { send }
    }

    async fn get(&mut self, path: &str) -> (u16, hyper::HeaderMap, String) {
        let req = hyper::Request::get(path)
            .header("host", "127.0.0.1")
            .header("authorization", "Bearer t-admin")
            .body(Empty::new())
            .unwrap();
        self.send.ready().await.unwrap();
        let resp = self.send.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_trusts_the_ca_gets_metadata_with_hsts_over_tls_1_2_and_1_3() {
    let ca = ca("Test CA");
    let (srv, leaf_der) = start(&ca).await;
    for (versions, expect) in [
        (&[&rustls::version::TLS13][..], rustls::ProtocolVersion::TLSv1_3),
        (&[&rustls::version::TLS12][..], rustls::ProtocolVersion::TLSv1_2),
        (rustls::ALL_VERSIONS, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let s = connect(srv.addr, &connector(&ca.der, versions))
            .await
            .expect("handshake");
        let (version, alpn, peer) = session(&s);
        assert_eq!(version, expect);
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
        assert_eq!(peer, leaf_der);
        let mut c = Conn::over(s).await;
        let (status, headers, body) = c.get("/metadata").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("CapabilityStatement"), "{body}");
        assert_eq!(headers["strict-transport-security"], "max-age=31536000");
        // Keep-alive: a second request on the same connection.
        let (status, headers, _) = c.get("/healthz").await;
        assert_eq!(status, 200);
        assert_eq!(headers["strict-transport-security"], "max-age=31536000");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_trust_the_ca_fails_the_handshake() {
    let ca = ca("Test CA");
    let rogue = ca_rogue();
    let (srv, _) = start(&ca).await;
    let err = connect(srv.addr, &connector(&rogue.der, rustls::ALL_VERSIONS))
        .await
        .expect_err("the handshake must fail");
    assert!(
        err.to_string().contains("invalid peer certificate: UnknownIssuer"),
        "{err}"
    );
    // The server is unharmed: a trusting client still gets through.
    let s = connect(srv.addr, &connector(&ca.der, rustls::ALL_VERSIONS))
        .await
        .unwrap();
    assert_eq!(Conn::over(s).await.get("/healthz").await.0, 200);
    srv.stop().await;
}

fn ca_rogue() -> Ca {
    ca("Rogue CA")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_the_tls_port_gets_no_http_answer() {
    let ca = ca("Test CA");
    let (srv, _) = start(&ca).await;
    let mut tcp = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    tcp.write_all(b"GET /metadata HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer t-admin\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), tcp.read_to_end(&mut got))
        .await
        .expect("the server closes the connection");
    let _ = read; // a reset is as good as a close
    assert!(!got.starts_with(b"HTTP/"), "{}", String::from_utf8_lossy(&got));
    assert!(!String::from_utf8_lossy(&got).contains("CapabilityStatement"));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_serves_the_new_certificate_to_new_connections_and_keeps_open_ones() {
    let ca = ca("Test CA");
    let (srv, first) = start(&ca).await;
    let client = connector(&ca.der, rustls::ALL_VERSIONS);
    let old = connect(srv.addr, &client).await.unwrap();
    assert_eq!(session(&old).2, first);
    let mut old = Conn::over(old).await;
    assert_eq!(old.get("/healthz").await.0, 200);
    let serial_before = srv.tls.serial();
    assert_eq!(hale_server::tls::serial_hex(&first).unwrap(), serial_before);

    // A broken file is refused and the old certificate stays.
    let dir = srv._dir.path();
    std::fs::write(dir.join("server-key.pem"), "garbage").unwrap();
    let e = srv.tls.reload().unwrap_err();
    assert!(e.contains("PRIVATE KEY"), "{e}");
    assert_eq!(srv.tls.serial(), serial_before);
    let s = connect(srv.addr, &client).await.unwrap();
    assert_eq!(session(&s).2, first);

    let (cert, key, second) = leaf(&ca);
    write_pair(dir, &cert, &key);
    let serial = srv.tls.reload().expect("reload");
    assert_ne!(serial, serial_before);
    let s = connect(srv.addr, &client).await.unwrap();
    assert_eq!(session(&s).2, second);
    assert_eq!(Conn::over(s).await.get("/healthz").await.0, 200);
    // The connection opened before the reload still works.
    assert_eq!(old.get("/metadata").await.0, 200);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_connections_and_finishes_promptly() {
    let ca = ca("Test CA");
    let (srv, _) = start(&ca).await;
    let client = connector(&ca.der, rustls::ALL_VERSIONS);
    let mut idle = Conn::over(connect(srv.addr, &client).await.unwrap()).await;
    assert_eq!(idle.get("/healthz").await.0, 200);
    // A client that connected and never said hello.
    let _silent = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let addr = srv.addr;
    let t = std::time::Instant::now();
    srv.stop().await;
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_refuses_missing_unreadable_or_mismatched_files() {
    let ca = ca("Test CA");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = leaf(&ca);
    let (c, k) = write_pair(dir.path(), &cert, &key);
    let (_, other_key, _) = leaf(&ca);
    let other = dir.path().join("other-key.pem");
    std::fs::write(&other, other_key).unwrap();
    for (cert, key, expect) in [
        (Some(c.clone()), None, "needs both a certificate and a key"),
        (None, Some(k.clone()), "needs both a certificate and a key"),
        (
            Some(dir.path().join("missing.pem")),
            Some(k.clone()),
            "cannot read the TLS certificate file",
        ),
        (
            Some(c.clone()),
            Some(other.clone()),
            "does not belong to the certificate",
        ),
        (Some(k.clone()), Some(k.clone()), "no CERTIFICATE"),
    ] {
        let cfg = config(dir.path(), cert, key);
        let err = match Node::start(cfg, "https://127.0.0.1:1".into()).await {
            Ok(_) => panic!("started with bad TLS files; expected {expect}"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(expect), "{err} (expected {expect})");
    }
}
