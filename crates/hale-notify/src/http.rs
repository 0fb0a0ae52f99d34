//! A small HTTP/1.1 client on hyper's connection API: one connection per
//! request (`Connection: close`), bounded connect and request timeouts, a
//! bounded response body, and errors that say whether the request may have
//! reached the server. https needs the `rustls` feature.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Largest response body read (Notify's replies are a few kB; a page of 250
/// notifications is well under this).
pub const RESPONSE_BODY_MAX: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// Failed before any of the request was written (bad URL, connect failed
    /// or timed out, TLS handshake failed).
    #[error("request not sent: {0}")]
    NotSent(String),
    /// Failed after the request may have been written: the server may have
    /// acted on it.
    #[error("no complete response: {0}")]
    MaybeSent(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub retry_after_secs: Option<u64>,
    pub body: Bytes,
}

/// Where requests go: scheme, host, port and an optional path prefix.
#[derive(Clone)]
pub struct Endpoint {
    https: bool,
    host: String,
    port: u16,
    /// Without a trailing slash; may be empty.
    prefix: String,
    connect_timeout: Duration,
    request_timeout: Duration,
    #[cfg(feature = "rustls")]
    tls: Option<tokio_rustls::TlsConnector>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("https", &self.https)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Endpoint {
    /// `base_url` like `https://api.notifications.service.gov.uk` or
    /// `http://127.0.0.1:8080/notify`.
    pub fn new(base_url: &str, connect_timeout: Duration, request_timeout: Duration) -> Result<Endpoint, String> {
        let uri: Uri = base_url
            .trim()
            .parse()
            .map_err(|e| format!("base URL {base_url:?}: {e}"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("base URL {base_url:?}: the scheme must be http or https")),
        };
        if https && !cfg!(feature = "rustls") {
            return Err(format!(
                "base URL {base_url:?} is https but hale-notify was built without the `rustls` feature \
                 (build with it, or point the base URL at a local egress proxy over http)"
            ));
        }
        let host = uri
            .host()
            .ok_or_else(|| format!("base URL {base_url:?} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        if uri.query().is_some() {
            return Err(format!("base URL {base_url:?} must not have a query"));
        }
        let prefix = uri.path().trim_end_matches('/').to_string();
        Ok(Endpoint {
            https,
            host,
            port,
            prefix,
            connect_timeout,
            request_timeout,
            #[cfg(feature = "rustls")]
            tls: if https { Some(tls::connector()) } else { None },
        })
    }

    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match (self.https, self.port) {
            (false, 80) | (true, 443) => host,
            (_, port) => format!("{host}:{port}"),
        }
    }

    /// Sends one request. `path_and_query` starts with `/` and is appended to
    /// the base URL's path.
    pub async fn request(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(HeaderName, String)],
        body: Option<Vec<u8>>,
    ) -> Result<HttpResponse, HttpError> {
        let target = format!("{}{}", self.prefix, path_and_query);
        let mut builder = Request::builder()
            .method(method)
            .uri(&target)
            .header(HOST, self.host_header())
            .header(USER_AGENT, concat!("hale-notify/", env!("CARGO_PKG_VERSION")))
            .header(CONNECTION, "close");
        for (name, value) in headers {
            let value = HeaderValue::from_str(value).map_err(|e| HttpError::NotSent(format!("header {name}: {e}")))?;
            builder = builder.header(name, value);
        }
        let body = body.unwrap_or_default();
        if !body.is_empty() {
            // JSON unless the caller named the type (an OAuth token request is a form).
            if !headers.iter().any(|(name, _)| name == CONTENT_TYPE) {
                builder = builder.header(CONTENT_TYPE, "application/json");
            }
            builder = builder.header(CONTENT_LENGTH, body.len());
        }
        let request = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| HttpError::NotSent(format!("request {target}: {e}")))?;

        let addr = (self.host.as_str(), self.port);
        let tcp = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
            Err(_) => {
                return Err(HttpError::NotSent(format!(
                    "connect to {}:{} timed out",
                    self.host, self.port
                )))
            }
            Ok(Err(e)) => {
                return Err(HttpError::NotSent(format!(
                    "connect to {}:{}: {e}",
                    self.host, self.port
                )))
            }
            Ok(Ok(s)) => s,
        };
        let _ = tcp.set_nodelay(true);
        #[cfg(feature = "rustls")]
        if let Some(connector) = &self.tls {
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from(self.host.clone())
                .map_err(|e| HttpError::NotSent(format!("TLS server name {}: {e}", self.host)))?;
            let stream = match tokio::time::timeout(self.connect_timeout, connector.connect(name, tcp)).await {
                Err(_) => return Err(HttpError::NotSent("TLS handshake timed out".into())),
                Ok(Err(e)) => return Err(HttpError::NotSent(format!("TLS handshake: {e}"))),
                Ok(Ok(s)) => s,
            };
            return self.exchange(stream, request).await;
        }
        self.exchange(tcp, request).await
    }

    async fn exchange<IO>(&self, io: IO, request: Request<Full<Bytes>>) -> Result<HttpResponse, HttpError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| HttpError::NotSent(format!("HTTP handshake: {e}")))?;
        let driver = tokio::spawn(conn);
        let work = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| HttpError::MaybeSent(e.to_string()))?;
            let status = response.status().as_u16();
            let retry_after_secs = response
                .headers()
                .get(hyper::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let body = Limited::new(response.into_body(), RESPONSE_BODY_MAX)
                .collect()
                .await
                .map_err(|e| HttpError::MaybeSent(format!("reading the response body: {e}")))?
                .to_bytes();
            Ok(HttpResponse {
                status,
                retry_after_secs,
                body,
            })
        };
        let result = match tokio::time::timeout(self.request_timeout, work).await {
            Err(_) => Err(HttpError::MaybeSent(format!(
                "no response within {} ms",
                self.request_timeout.as_millis()
            ))),
            Ok(r) => r,
        };
        driver.abort();
        result
    }
}

#[cfg(feature = "rustls")]
mod tls {
    use std::sync::Arc;
    use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

    pub(super) fn connector() -> tokio_rustls::TlsConnector {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let t = Duration::from_secs(1);
        let e = Endpoint::new("http://127.0.0.1:8080/notify/", t, t).unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.prefix.as_str()),
            ("127.0.0.1", 8080, "/notify")
        );
        assert_eq!(e.host_header(), "127.0.0.1:8080");
        let e = Endpoint::new("http://relay.local", t, t).unwrap();
        assert_eq!(
            (e.port, e.prefix.as_str(), e.host_header().as_str()),
            (80, "", "relay.local")
        );
        assert!(Endpoint::new("ftp://x", t, t).is_err());
        assert!(Endpoint::new("http://x/?a=b", t, t).is_err());
        let https = Endpoint::new("https://api.notifications.service.gov.uk", t, t);
        assert_eq!(https.is_ok(), cfg!(feature = "rustls"), "{https:?}");
    }
}
