//! One HTTP/1.1 keep-alive connection per worker, on hyper's low-level client
//! (`hyper::client::conn::http1`), so "N connections" is exactly N TCP
//! connections (a dropped one is replaced, and counted as a reconnect).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST, LOCATION};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

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
}

impl Target {
    pub(crate) fn parse(base_url: &str, token: Option<&str>) -> Result<Target, BenchError> {
        let bad = |reason: &str| BenchError::BadUrl {
            url: base_url.to_string(),
            reason: reason.to_string(),
        };
        let trimmed = base_url.trim();
        let rest = if let Some(r) = trimmed.strip_prefix("http://") {
            r
        } else if trimmed.starts_with("https://") {
            return Err(bad("https is not supported; bench a local server over plain http"));
        } else {
            return Err(bad("it must start with http://"));
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
        Ok(Target {
            base_url: trimmed.trim_end_matches('/').to_string(),
            host: host.to_string(),
            port,
            host_header,
            prefix: path.trim_end_matches('/').to_string(),
            auth,
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
            let (sender, connection) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                Ok(pair) => pair,
                Err(e) => return Err(Failure::Transport(e.to_string())),
            };
            // Drives the socket; ends when `sender` is dropped or the peer closes.
            tokio::spawn(async move {
                let _ = connection.await;
            });
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
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| Failure::Transport(e.to_string()))?
            .to_bytes();
        Ok(Response { status, body, location })
    }
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
            let got = Target::parse(url, None)
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
        check("https://127.0.0.1:8080", Err(()));
        check("127.0.0.1:8080", Err(()));
        check("http://", Err(()));
        check("http://h:99999", Err(()));
        check("http://h:80?x=1", Err(()));
        check("http://u:p@h:80", Err(()));
    }

    #[test]
    fn created_id_from_body_or_location() {
        fn check(body: &str, location: Option<&str>, expected: Option<&str>) {
            let resp = Response {
                status: 201,
                body: Bytes::from(body.to_string()),
                location: location.map(str::to_string),
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
