//! One HTTP/1.1 keep-alive connection per worker, on hyper's low-level client
//! (`hyper::client::conn::http1`), so "N connections" is exactly N TCP
//! connections (a dropped one is replaced, and counted as a reconnect).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST, LOCATION, RETRY_AFTER};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::error::BenchError;

pub(crate) const FHIR_JSON: &str = "application/fhir+json";

/// Where the server is, parsed once from the base URL.
#[derive(Debug)]
pub(crate) struct Target {
    /// The base URL as given (for messages).
    pub(crate) base_url: String,
    /// Host to connect to (brackets stripped for IPv6).
    host: String,
    port: u16,
    /// `Host` header value (`host:port` as written).
    host_header: HeaderValue,
    /// Path prefix of the FHIR base without trailing slash ("" or "/fhir").
    prefix: String,
    auth: Option<HeaderValue>,
    /// For an https base URL: the connector (trusting only the given CA) and
    /// the name the server's certificate must carry.
    tls: Option<Tls>,
}

/// An https target's connector (trusting only the given CA) and the name
/// its certificate must carry.
struct Tls {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Target {
    /// `ca_pem`: the PEM certificate(s) an https server's chain must lead
    /// to (only these are trusted: a bench measures the trust's own server,
    /// not the web). Required for https, refused for http.
    pub(crate) fn parse(base_url: &str, token: Option<&str>, ca_pem: Option<&[u8]>) -> Result<Target, BenchError> {
        let bad = |reason: &str| BenchError::BadUrl {
            url: base_url.to_string(),
            reason: reason.to_string(),
        };
        let trimmed = base_url.trim();
        let (rest, https) = if let Some(r) = trimmed.strip_prefix("http://") {
            (r, false)
        } else if let Some(r) = trimmed.strip_prefix("https://") {
            (r, true)
        } else {
            return Err(bad("it must start with http:// or https://"));
        };
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if path.contains(['?', '#']) {
            return Err(bad("it must not have a query or fragment"));
        }
        if authority.is_empty() {
            return Err(bad("it has no host"));
        }
        if authority.contains('@') {
            return Err(bad("user info is not supported; pass a token instead"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let Some(end) = v6.find(']') else {
                return Err(bad("unclosed '[' in IPv6 host"));
            };
            let host = &v6[..end];
            let port = match &v6[end + 1..] {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ']'"))?),
            };
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port = match port {
            None if https => 443,
            None => 80,
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| bad("the port is not a number from 0 to 65535"))?,
        };
        if host.is_empty() {
            return Err(bad("it has no host"));
        }
        let host_header = HeaderValue::from_str(authority).map_err(|_| bad("the host has invalid characters"))?;
        let auth = match token {
            Some(t) if !t.is_empty() => {
                Some(
                    HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| BenchError::InvalidOption {
                        message: "the token contains characters not allowed in an HTTP header".to_string(),
                    })?,
                )
            }
            _ => None,
        };
        let tls = match (https, ca_pem) {
            (false, None) => None,
            (false, Some(_)) => return Err(bad("a CA certificate was given for a plain http URL; use https://")),
            (true, None) => {
                return Err(bad(
                    "https needs the CA certificate that signed the server's certificate (--ca)",
                ))
            }
            (true, Some(pem)) => {
                let mut roots = rustls::RootCertStore::empty();
                let mut n = 0;
                for cert in CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| BenchError::InvalidOption {
                        message: format!("the CA file is not PEM certificates: {e}"),
                    })?;
                    roots.add(cert).map_err(|e| BenchError::InvalidOption {
                        message: format!("the CA file holds a certificate rustls cannot use: {e}"),
                    })?;
                    n += 1;
                }
                if n == 0 {
                    return Err(BenchError::InvalidOption {
                        message: "the CA file holds no PEM certificate".to_string(),
                    });
                }
                let config =
                    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                        .with_safe_default_protocol_versions()
                        .map_err(|e| BenchError::Internal {
                            what: "TLS client setup".to_string(),
                            message: e.to_string(),
                        })?
                        .with_root_certificates(roots)
                        .with_no_client_auth();
                let name = ServerName::try_from(host.to_string())
                    .map_err(|_| bad("the host is not a valid TLS server name"))?;
                Some(Tls {
                    connector: TlsConnector::from(Arc::new(config)),
                    name,
                })
            }
        };
        Ok(Target {
            base_url: trimmed.trim_end_matches('/').to_string(),
            host: host.to_string(),
            port,
            host_header,
            prefix: path.trim_end_matches('/').to_string(),
            auth,
            tls,
        })
    }

    /// Request path for a FHIR-relative path like "/Patient/123".
    pub(crate) fn path(&self, rel: &str) -> String {
        format!("{}{}", self.prefix, rel)
    }
}

/// A completed HTTP exchange.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: Bytes,
    pub(crate) location: Option<String>,
    /// The `Retry-After` header (admission control's 503s carry one).
    pub(crate) retry_after: Option<String>,
}

/// Why an exchange did not complete.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Could not open a TCP connection.
    Connect(std::io::Error),
    /// The connection broke mid-exchange (reset, closed, malformed response).
    Transport(String),
    /// No complete response within the request timeout.
    Timeout,
}

struct Conn {
    sender: SendRequest<Full<Bytes>>,
}

/// One logical connection that re-opens itself after a failure.
pub(crate) struct Client {
    target: Arc<Target>,
    conn: Option<Conn>,
    /// Connections opened after the first.
    pub(crate) reconnects: u64,
    opened: u64,
}

impl Client {
    pub(crate) fn new(target: Arc<Target>) -> Client {
        Client {
            target,
            conn: None,
            reconnects: 0,
            opened: 0,
        }
    }

    /// Open the TCP connection now (so setup cost is not in the first timing).
    pub(crate) async fn connect(&mut self, timeout: Duration) -> Result<(), Failure> {
        if self.conn.is_none() {
            let stream =
                match tokio::time::timeout(timeout, TcpStream::connect((&*self.target.host, self.target.port))).await {
                    Err(_) => return Err(Failure::Timeout),
                    Ok(Err(e)) => return Err(Failure::Connect(e)),
                    Ok(Ok(s)) => s,
                };
            let _ = stream.set_nodelay(true);
            let sender = match &self.target.tls {
                None => handshake(stream).await?,
                Some(t) => {
                    let tls = match tokio::time::timeout(timeout, t.connector.connect(t.name.clone(), stream)).await {
                        Err(_) => return Err(Failure::Timeout),
                        Ok(Err(e)) => return Err(Failure::Transport(format!("TLS handshake: {e}"))),
                        Ok(Ok(s)) => s,
                    };
                    handshake(tls).await?
                }
            };
            if self.opened > 0 {
                self.reconnects += 1;
            }
            self.opened += 1;
            self.conn = Some(Conn { sender });
        }
        Ok(())
    }

    /// Send one request and read the whole response body (which keeps the
    /// connection reusable). On any failure the connection is dropped and the
    /// next call opens a fresh one.
    pub(crate) async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        timeout: Duration,
    ) -> Result<Response, Failure> {
        let result = tokio::time::timeout(timeout, self.send_inner(method, path, body, timeout)).await;
        match result {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(f)) => {
                self.conn = None;
                Err(f)
            }
            Err(_) => {
                self.conn = None;
                Err(Failure::Timeout)
            }
        }
    }

    async fn send_inner(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        timeout: Duration,
    ) -> Result<Response, Failure> {
        // A connection the server closed while idle (keep-alive timeout,
        // `Connection: close`) is replaced without counting as a failure: no
        // request was lost.
        if self.conn.as_ref().is_some_and(|c| c.sender.is_closed()) {
            self.conn = None;
        }
        self.connect(timeout).await?;
        let idle_closed = match self.conn.as_mut() {
            Some(c) => c.sender.ready().await.is_err(),
            None => true,
        };
        if idle_closed {
            self.conn = None;
            self.connect(timeout).await?;
        }
        let target = &self.target;
        let conn = self.conn.as_mut().expect("connected above");
        conn.sender
            .ready()
            .await
            .map_err(|e| Failure::Transport(e.to_string()))?;

        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, target.host_header.clone())
            .header(ACCEPT, FHIR_JSON);
        if let Some(auth) = &target.auth {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        if body.is_some() {
            req = req.header(CONTENT_TYPE, FHIR_JSON);
        }
        let req = req
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| Failure::Transport(format!("cannot build request for {path}: {e}")))?;

        let resp = conn
            .sender
            .send_request(req)
            .await
            .map_err(|e| Failure::Transport(e.to_string()))?;
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| Failure::Transport(e.to_string()))?
            .to_bytes();
        Ok(Response {
            status,
            body,
            location,
            retry_after,
        })
    }
}

/// HTTP/1.1 over an open stream (plain TCP or TLS). A task drives the
/// socket; it ends when the sender is dropped or the peer closes.
async fn handshake<S>(stream: S) -> Result<SendRequest<Full<Bytes>>, Failure>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Failure::Transport(e.to_string()))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// Turn a setup-phase failure into a `BenchError` naming what was attempted.
pub(crate) fn failure_error(target: &Target, what: &str, f: Failure, timeout: Duration) -> BenchError {
    match f {
        Failure::Connect(source) => BenchError::Connect {
            url: target.base_url.clone(),
            source,
        },
        Failure::Transport(message) => BenchError::Transport {
            what: what.to_string(),
            message,
        },
        Failure::Timeout => BenchError::Timeout {
            what: what.to_string(),
            timeout_s: timeout.as_secs(),
        },
    }
}

/// Turn an unexpected setup-phase status into a `BenchError`.
pub(crate) fn status_error(target: &Target, what: &str, resp: &Response) -> BenchError {
    if resp.status == 401 || resp.status == 403 {
        return BenchError::Unauthorized {
            url: target.base_url.clone(),
            what: what.to_string(),
            status: resp.status,
        };
    }
    BenchError::UnexpectedStatus {
        what: what.to_string(),
        status: resp.status,
        body: snippet(&resp.body),
    }
}

/// The start of a response body, for error messages.
pub(crate) fn snippet(body: &[u8]) -> String {
    const MAX: usize = 300;
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".to_string();
    }
    let mut end = text.len().min(MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    if end < text.len() {
        format!("{}…", &text[..end])
    } else {
        text.to_string()
    }
}

/// The logical id of a created resource: the body's "id", else the segment
/// after "<Type>/" in the Location header.
pub(crate) fn created_id(resource_type: &str, resp: &Response) -> Option<String> {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&resp.body) {
        if let Some(id) = v.get("id").and_then(|i| i.as_str()) {
            if !id.is_empty() {
                return Some(id.to_string());
            }
        }
    }
    let loc = resp.location.as_deref()?;
    let marker = format!("{resource_type}/");
    let start = loc.rfind(&marker)? + marker.len();
    let rest = &loc[start..];
    // "<Type>/<id>/_history/1" — rfind may land on "<Type>/" only; take the id.
    let id = rest.split('/').next()?;
    (!id.is_empty()).then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_base_urls() {
        fn check(url: &str, expected: Result<(&str, u16, &str, &str), ()>) {
            let got = Target::parse(url, None, None)
                .map(|t| {
                    (
                        t.host.clone(),
                        t.port,
                        t.host_header.to_str().unwrap().to_string(),
                        t.prefix.clone(),
                    )
                })
                .map_err(|_| ());
            let expected = expected.map(|(h, p, hh, pre)| (h.to_string(), p, hh.to_string(), pre.to_string()));
            assert_eq!(got, expected, "{url}");
        }
        check("http://127.0.0.1:8080", Ok(("127.0.0.1", 8080, "127.0.0.1:8080", "")));
        check("http://127.0.0.1:8080/", Ok(("127.0.0.1", 8080, "127.0.0.1:8080", "")));
        check("http://localhost/fhir/", Ok(("localhost", 80, "localhost", "/fhir")));
        check("http://[::1]:9000/r4", Ok(("::1", 9000, "[::1]:9000", "/r4")));
        check(" http://h:1 ", Ok(("h", 1, "h:1", "")));
        // https needs the CA to trust (parse_https_needs_a_ca below).
        check("https://127.0.0.1:8080", Err(()));
        check("127.0.0.1:8080", Err(()));
        check("http://", Err(()));
        check("http://h:99999", Err(()));
        check("http://h:80?x=1", Err(()));
        check("http://u:p@h:80", Err(()));
    }

    #[test]
    fn parse_https_needs_a_ca() {
        let err = |url: &str, ca: Option<&[u8]>| Target::parse(url, None, ca).err().map(|e| e.to_string());
        assert!(err("https://127.0.0.1:8443", None).unwrap().contains("--ca"));
        assert!(err("http://127.0.0.1:8080", Some(b"x")).unwrap().contains("https://"));
        assert!(err("https://127.0.0.1:8443", Some(b"not pem"))
            .unwrap()
            .contains("no PEM certificate"));
    }

    #[test]
    fn created_id_from_body_or_location() {
        fn check(body: &str, location: Option<&str>, expected: Option<&str>) {
            let resp = Response {
                status: 201,
                body: Bytes::from(body.to_string()),
                location: location.map(str::to_string),
                retry_after: None,
            };
            assert_eq!(created_id("Patient", &resp).as_deref(), expected, "{body} {location:?}");
        }
        check(r#"{"resourceType":"Patient","id":"abc"}"#, None, Some("abc"));
        check("", Some("http://h/Patient/xyz/_history/1"), Some("xyz"));
        check("", Some("/Patient/xyz"), Some("xyz"));
        check(r#"{"id":""}"#, Some("/Patient/q/_history/2"), Some("q"));
        check("", Some("/Location/xyz"), None);
        check("", None, None);
    }

    #[test]
    fn snippet_truncates_on_char_boundary() {
        assert_eq!(snippet(b""), "(empty body)");
        assert_eq!(snippet(b"  hi  "), "hi");
        let long = "é".repeat(400);
        let s = snippet(long.as_bytes());
        assert!(s.ends_with('…'));
        assert!(s.len() <= 300 + '…'.len_utf8());
    }
}
