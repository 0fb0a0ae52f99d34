//! TLS on the HTTP API: rustls with the `ring` provider, TLS 1.2 and 1.3
//! only, certificate and key from PEM files, reloaded on SIGHUP.
//!
//! The accept loop only accepts TCP; each connection's handshake runs in its
//! own task (a slow or silent client must not stall everyone else), then
//! hyper serves HTTP/1.1 over the TLS stream. Every response carries HSTS.

use crate::config::TlsSettings;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::TlsAcceptor;

/// The protocol versions offered: TLS 1.3 and 1.2. (rustls implements
/// nothing older, so 1.0 and 1.1 can never be negotiated.)
pub const PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// `Strict-Transport-Security` on every response when TLS is on: one year.
pub const HSTS: &str = "max-age=31536000";

/// A client gets this long to finish its handshake.
const HANDSHAKE_MAX: Duration = Duration::from_secs(10);

/// The certificate files and the server configuration built from them, which
/// a reload replaces for new handshakes (open connections keep theirs).
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<ServerConfig>>,
    serial: RwLock<String>,
}

impl Tls {
    /// `Ok(None)` when `[tls]` names no files; an error when only one is named,
    /// or the files are unreadable, not PEM, or the key does not match.
    pub fn from_settings(s: &TlsSettings) -> Result<Option<Arc<Tls>>, String> {
        match s.files()? {
            None => Ok(None),
            Some((cert, key)) => Tls::load(cert, key).map(Some),
        }
    }

    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Tls>, String> {
        let (config, serial) = server_config_from_files(cert, key)?;
        Ok(Arc::new(Tls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(Arc::new(config)),
            serial: RwLock::new(serial),
        }))
    }

    /// Read the files again. On success new handshakes use the new certificate
    /// and its serial (hex) is returned; on failure the old one stays.
    pub fn reload(&self) -> Result<String, String> {
        let (config, serial) = server_config_from_files(&self.cert, &self.key)?;
        *self.current.write() = Arc::new(config);
        *self.serial.write() = serial.clone();
        Ok(serial)
    }

    /// The serial number (hex) of the certificate being served.
    pub fn serial(&self) -> String {
        self.serial.read().clone()
    }

    /// The configuration new handshakes use.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.read().clone()
    }

    /// Reload on every SIGHUP, logging the outcome, for the life of the process.
    pub fn reload_on_sighup(self: &Arc<Self>) {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let mut hup = match signal(SignalKind::hangup()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGHUP; TLS certificates will not be reloaded");
                    return;
                }
            };
            let tls = Arc::downgrade(self);
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    let Some(tls) = tls.upgrade() else { return };
                    let t = tls.clone();
                    match tokio::task::spawn_blocking(move || t.reload()).await {
                        Ok(Ok(serial)) => tracing::info!(
                            cert = %tls.cert.display(),
                            serial = %serial,
                            "SIGHUP: reloaded the TLS certificate; new connections use it"
                        ),
                        Ok(Err(e)) => tracing::error!(
                            error = %e,
                            serial = %tls.serial(),
                            "SIGHUP: could not reload the TLS certificate; still serving the old one"
                        ),
                        Err(e) => tracing::error!(error = %e, "SIGHUP: TLS reload failed"),
                    }
                }
            });
        }
    }
}

/// Build the rustls server configuration from PEM files: the certificate
/// chain (leaf first) and its private key (PKCS#8, PKCS#1 or SEC1).
pub fn server_config_from_files(cert: &Path, key: &Path) -> Result<(ServerConfig, String), String> {
    let cert_pem =
        std::fs::read(cert).map_err(|e| format!("cannot read the TLS certificate file {}: {e}", cert.display()))?;
    let key_pem = std::fs::read(key).map_err(|e| format!("cannot read the TLS key file {}: {e}", key.display()))?;
    server_config(&cert_pem, &key_pem)
        .map_err(|e| format!("{e} (certificate {}, key {})", cert.display(), key.display()))
}

/// Build the rustls server configuration from PEM text; also returns the
/// leaf certificate's serial number in hex.
pub fn server_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<(ServerConfig, String), String> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the TLS certificate file is not valid PEM: {e}"))?;
    let Some(leaf) = chain.first() else {
        return Err("the TLS certificate file holds no CERTIFICATE block".into());
    };
    let serial = serial_hex(leaf).ok_or("the TLS certificate is not a valid X.509 certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => "the TLS key file holds no PRIVATE KEY block".to_string(),
        e => format!("the TLS key file is not valid PEM: {e}"),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => "the TLS key does not belong to the certificate".to_string(),
            e => format!("the TLS certificate or key is not usable: {e}"),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((config, serial))
}

/// The serial number of a DER certificate, as lower-case hex (leading zero
/// bytes of the DER integer dropped).
pub fn serial_hex(cert: &[u8]) -> Option<String> {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber INTEGER, ... } ... }
    let (tag, cert_body, _) = der_next(cert)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, tbs, _) = der_next(cert_body)?;
    if tag != 0x30 {
        return None;
    }
    let (mut tag, mut body, mut rest) = der_next(tbs)?;
    if tag == 0xa0 {
        (tag, body, rest) = der_next(rest)?;
    }
    let _ = rest;
    if tag != 0x02 || body.is_empty() {
        return None;
    }
    let trimmed = match body.iter().position(|b| *b != 0) {
        Some(i) => &body[i..],
        None => &body[body.len() - 1..],
    };
    Some(trimmed.iter().map(|b| format!("{b:02x}")).collect())
}

/// One DER element: (tag, contents, what follows).
fn der_next(d: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, d) = d.split_first()?;
    let (&len0, d) = d.split_first()?;
    let (len, d) = if len0 < 0x80 {
        (len0 as usize, d)
    } else {
        let n = (len0 & 0x7f) as usize;
        if n == 0 || n > 4 || d.len() < n {
            return None;
        }
        let len = d[..n].iter().fold(0usize, |a, b| (a << 8) | *b as usize);
        (len, &d[n..])
    };
    if d.len() < len {
        return None;
    }
    Some((tag, &d[..len], &d[len..]))
}

async fn add_hsts(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static(HSTS));
    resp
}

/// Serve `router` over TLS on `listener` until `shutdown` resolves; then stop
/// accepting, let open connections finish their requests for up to
/// `drain_max`, and return.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Arc<Tls>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    drain_max: Duration,
) -> std::io::Result<()> {
    let router = router.layer(axum::middleware::map_response(add_hsts));
    tls.reload_on_sighup();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let acceptor = TlsAcceptor::from(tls.config());
                let svc = router.clone();
                let stop = stop_rx.clone();
                conns.spawn(connection(tcp, peer, acceptor, svc, stop));
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let open = conns.len();
    if tokio::time::timeout(drain_max, async { while conns.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!(
            open,
            left = conns.len(),
            "TLS connections still open after the drain bound; closing them"
        );
    }
    conns.shutdown().await;
    Ok(())
}

async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

/// One connection: the handshake (bounded), then HTTP/1.1 until the client
/// closes or shutdown asks hyper to finish the request in flight and close.
async fn connection(
    tcp: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    acceptor: TlsAcceptor,
    router: Router,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let stream = tokio::select! {
        r = tokio::time::timeout(HANDSHAKE_MAX, acceptor.accept(tcp)) => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        },
        _ = stopped(stop.clone()) => return,
    };
    let svc = TowerToHyperService::new(router);
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "TLS connection ended with an error");
            }
        }
        _ = stopped(stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.as_mut().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tls_1_2_and_1_3_are_offered() {
        let v: Vec<_> = PROTOCOL_VERSIONS.iter().map(|v| v.version).collect();
        assert_eq!(
            v,
            vec![rustls::ProtocolVersion::TLSv1_3, rustls::ProtocolVersion::TLSv1_2]
        );
        // rustls implements nothing older, so no configuration can offer it.
        assert!(rustls::ALL_VERSIONS.iter().all(|v| matches!(
            v.version,
            rustls::ProtocolVersion::TLSv1_3 | rustls::ProtocolVersion::TLSv1_2
        )));
    }

    #[test]
    fn serial_numbers_are_read_from_der() {
        // SEQUENCE { SEQUENCE { [0] { INTEGER 2 }, INTEGER 00 ab cd } }
        let der = [
            0x30, 0x0c, 0x30, 0x0a, 0xa0, 0x03, 0x02, 0x01, 0x02, 0x02, 0x03, 0x00, 0xab, 0xcd,
        ];
        assert_eq!(serial_hex(&der).as_deref(), Some("abcd"));
        assert_eq!(serial_hex(&der[..8]), None);
        assert_eq!(serial_hex(b"not der"), None);
    }

    #[test]
    fn bad_pem_is_refused_with_a_reason() {
        let e = server_config(b"nonsense", b"nonsense").unwrap_err();
        assert!(e.contains("no CERTIFICATE"), "{e}");
    }
}
