//! Mutual TLS between nodes: who a raft peer is, proven by a certificate
//! from the cluster CA.
//!
//! Every node certificate names its node and role in a DNS subject
//! alternative name, `node-<id>.voter.hale` or `node-<id>.learner.hale`
//! (`hale cert issue --node-id N --role voter|learner` writes it). Tools that
//! only read status or inject faults (the chaos harness) use one named
//! `operator.hale`. A certificate chained to the CA but naming none of these,
//! or more than one, fails the handshake.
//!
//! The raft listener requires a client certificate (rustls
//! `WebPkiClientVerifier` over the CA); the client side presents the node's
//! certificate and checks the server's chain against the CA and the server's
//! own node name (webpki's name check with the name the certificate claims).
//! After the handshake the connection's [`Peer`] rides on every request,
//! and the RPC handlers decide from it (see `node.rs`).

use crate::types::NodeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// TLS 1.3 only between nodes: every node runs the same software.
const PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// The certificate files of raft mTLS (`[cluster.tls]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerTlsFiles {
    /// The cluster CA certificate (PEM): peers must chain to it.
    pub ca: PathBuf,
    /// This node's certificate (PEM, leaf first), naming `node-<id>.<role>.hale`.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

/// Who is at the other end of a raft connection, from its certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// A node: its id and whether its certificate says voter.
    Node { id: NodeId, voter: bool },
    /// A tool (the chaos harness, `hale up`): status and fault injection only.
    Operator,
}

/// The DNS name of an operator certificate.
pub const OPERATOR_NAME: &str = "operator.hale";

impl Peer {
    /// The DNS name that identifies this peer in its certificate.
    pub fn dns_name(&self) -> String {
        match self {
            Peer::Node { id, voter } => node_name(*id, *voter),
            Peer::Operator => OPERATOR_NAME.into(),
        }
    }

    pub fn node_id(&self) -> Option<NodeId> {
        match self {
            Peer::Node { id, .. } => Some(*id),
            Peer::Operator => None,
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Node { id, voter: true } => write!(f, "node {id} (voter certificate)"),
            Peer::Node { id, voter: false } => write!(f, "node {id} (learner certificate)"),
            Peer::Operator => write!(f, "an operator certificate"),
        }
    }
}

/// `node-<id>.voter.hale` or `node-<id>.learner.hale`.
pub fn node_name(id: NodeId, voter: bool) -> String {
    format!("node-{id}.{}.hale", if voter { "voter" } else { "learner" })
}

/// Read one DNS name as a Hale identity.
pub fn parse_name(name: &str) -> Option<Peer> {
    let name = name.to_ascii_lowercase();
    if name == OPERATOR_NAME {
        return Some(Peer::Operator);
    }
    let rest = name.strip_prefix("node-")?.strip_suffix(".hale")?;
    let (id, role) = rest.split_once('.')?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) || (id.len() > 1 && id.starts_with('0')) {
        return None;
    }
    let id: NodeId = id.parse().ok()?;
    match role {
        "voter" => Some(Peer::Node { id, voter: true }),
        "learner" => Some(Peer::Node { id, voter: false }),
        _ => None,
    }
}

/// The one Hale identity a certificate names, or why there is none.
pub fn identity(cert: &CertificateDer<'_>) -> Result<Peer, String> {
    let ee = webpki::EndEntityCert::try_from(cert).map_err(|e| format!("not a valid certificate: {e:?}"))?;
    let found: Vec<Peer> = ee.valid_dns_names().filter_map(parse_name).collect();
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(format!(
            "the certificate names no Hale node (node-<id>.voter.hale, node-<id>.learner.hale or {OPERATOR_NAME})"
        )),
        _ => Err("the certificate names more than one Hale identity".into()),
    }
}

/// Both halves of raft mTLS, built from the cluster CA and this node's
/// certificate and key. Read once at start: a changed CA or certificate
/// takes effect when the node restarts.
pub struct PeerTls {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
    /// The identity this node's own certificate names.
    pub me: Peer,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PeerTls({})", self.me)
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
}

impl PeerTls {
    pub fn load(files: &PeerTlsFiles) -> Result<PeerTls, String> {
        let ca = read(&files.ca, "cluster CA certificate")?;
        let cert = read(&files.cert, "node certificate")?;
        let key = read(&files.key, "node key")?;
        PeerTls::from_pem(&ca, &cert, &key).map_err(|e| {
            format!(
                "raft mTLS: {e} (CA {}, certificate {}, key {})",
                files.ca.display(),
                files.cert.display(),
                files.key.display()
            )
        })
    }

    pub fn from_pem(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<PeerTls, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        let mut cas = 0;
        for c in CertificateDer::pem_slice_iter(ca_pem) {
            let c = c.map_err(|e| format!("the CA file is not valid PEM: {e}"))?;
            roots
                .add(c)
                .map_err(|e| format!("the CA certificate is not usable: {e}"))?;
            cas += 1;
        }
        if cas == 0 {
            return Err("the CA file holds no CERTIFICATE block".into());
        }
        let roots = Arc::new(roots);
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("the node certificate file is not valid PEM: {e}"))?;
        let leaf = chain
            .first()
            .ok_or("the node certificate file holds no CERTIFICATE block")?;
        let me = identity(leaf)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("the node key file: {e}"))?;

        let client_verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| format!("cannot verify clients with this CA: {e}"))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(PROTOCOL_VERSIONS)
            .map_err(|e| format!("TLS: {e}"))?
            .with_client_cert_verifier(Arc::new(NamedClient(client_verifier)))
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| format!("the node certificate or key is not usable: {e}"))?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];

        let server_verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| format!("cannot verify servers with this CA: {e}"))?;
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(PROTOCOL_VERSIONS)
            .map_err(|e| format!("TLS: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NamedServer(server_verifier)))
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("the node certificate or key is not usable: {e}"))?;
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(PeerTls {
            server: Arc::new(server),
            client: Arc::new(client),
            me,
        })
    }
}

/// The CA's client verifier, plus: the certificate must name one Hale identity.
#[derive(Debug)]
struct NamedClient(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for NamedClient {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.0.verify_client_cert(end_entity, intermediates, now)?;
        identity(end_entity).map_err(rustls::Error::General)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The CA's server verifier, checking the name the server's certificate
/// claims as a node (the caller compares that node with the one it meant to
/// reach: the connection's [`Peer`] is on every response).
#[derive(Debug)]
struct NamedServer(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for NamedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let peer = identity(end_entity).map_err(rustls::Error::General)?;
        if peer == Peer::Operator {
            return Err(rustls::Error::General(
                "an operator certificate cannot serve raft RPC".into(),
            ));
        }
        let name = ServerName::try_from(peer.dns_name()).map_err(|e| rustls::Error::General(e.to_string()))?;
        self.0
            .verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A client gets this long to finish its handshake.
const HANDSHAKE_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// Serve the raft routes over mutual TLS. Each connection's handshake runs
/// in its own task; a client without a certificate from the CA, or with one
/// that names no Hale identity, fails there and never reaches HTTP. The
/// proven [`Peer`] goes on every request of the connection.
pub async fn serve(listener: tokio::net::TcpListener, router: axum::Router, config: Arc<ServerConfig>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "raft accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let stream = match tokio::time::timeout(HANDSHAKE_MAX, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::warn!(%addr, error = %e, "raft mTLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%addr, "raft mTLS handshake timed out");
                    return;
                }
            };
            let Some(peer) = peer_of(stream.get_ref().1.peer_certificates()) else {
                return;
            };
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(peer);
                let mut r = router.clone();
                async move { tower_service::Service::call(&mut r, req).await }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(%addr, error = %e, "raft connection ended with an error");
            }
        });
    }
}

/// The peer a finished handshake proved (server or client side).
pub fn peer_of(certs: Option<&[CertificateDer<'static>]>) -> Option<Peer> {
    certs.and_then(|c| c.first()).and_then(|c| identity(c).ok())
}

/// Constant-time equality of two secrets (their lengths may leak).
pub fn secret_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_read_strictly() {
        assert_eq!(parse_name("node-3.voter.hale"), Some(Peer::Node { id: 3, voter: true }));
        assert_eq!(
            parse_name("node-12.learner.hale"),
            Some(Peer::Node { id: 12, voter: false })
        );
        assert_eq!(parse_name("operator.hale"), Some(Peer::Operator));
        for bad in [
            "node-3.hale",
            "node-.voter.hale",
            "node-03.voter.hale",
            "node-3.admin.hale",
            "node-3.voter.hale.evil",
            "x.node-3.voter.hale",
            "node-+3.voter.hale",
            "localhost",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
        assert_eq!(
            parse_name(&node_name(7, false)),
            Some(Peer::Node { id: 7, voter: false })
        );
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(secret_eq(b"abc", b"abc"));
        assert!(!secret_eq(b"abc", b"abd"));
        assert!(!secret_eq(b"abc", b"abcd"));
    }
}
