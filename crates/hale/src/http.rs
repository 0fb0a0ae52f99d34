//! A minimal HTTP/1.1 client for the CLI's talks with a running server, and
//! the pieces the CLI's retries share: which failures are transient, and a
//! bounded exponential backoff.

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::time::{Duration, Instant};

pub struct Client {
    authority: String,
    base_path: String,
    token: Option<String>,
    sender: Option<http1::SendRequest<Full<Bytes>>>,
    /// Bound on one request, from connecting to the end of the reply body.
    timeout: Option<Duration>,
}

pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "the server answered HTTP {} with a body that is not JSON: {}",
                self.status,
                String::from_utf8_lossy(&self.body[..self.body.len().min(300)])
            )
        })
    }
}

/// Whether a request that failed without an HTTP answer reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// It never left this process (no connection): nothing can have happened.
    NotSent,
    /// It may have been received and acted on (timeout, connection lost mid-request).
    Unknown,
}

/// A request that got no HTTP answer. It sits in the error chain as context,
/// above the I/O or hyper error that caused it (`anyhow::Error::downcast_ref`).
#[derive(Debug)]
pub struct TransportError {
    pub delivery: Delivery,
    pub what: String,
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.what)
    }
}

impl std::error::Error for TransportError {}

/// The transport failure behind `e`, if `e` is one (always transient: the server
/// may be restarting, electing a leader, or too busy to answer in time).
pub fn transport_failure(e: &anyhow::Error) -> Option<&TransportError> {
    e.downcast_ref::<TransportError>()
}

/// HTTP statuses that mean "not now" rather than "no": overload, no leader,
/// no quorum, a proxy that could not reach the server.
pub fn transient_status(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

impl Client {
    pub fn new(base_url: &str, token: Option<&str>) -> Result<Client> {
        let rest = base_url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("the server URL must start with http:// (got {base_url})"))?;
        let (authority, path) = rest
            .split_once('/')
            .map(|(a, p)| (a, format!("/{p}")))
            .unwrap_or((rest, String::new()));
        Ok(Client {
            authority: authority.to_string(),
            base_path: path.trim_end_matches('/').to_string(),
            token: token.map(str::to_string),
            sender: None,
            timeout: None,
        })
    }

    /// Bound every request of this client (a request that times out is a
    /// [`TransportError`] with [`Delivery::Unknown`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = Some(timeout);
        self
    }

    async fn connect(&mut self) -> Result<&mut http1::SendRequest<Full<Bytes>>> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let not_sent = |what: String| TransportError {
                delivery: Delivery::NotSent,
                what,
            };
            let stream = tokio::net::TcpStream::connect(&self.authority).await.map_err(|e| {
                anyhow::Error::new(e).context(not_sent(format!(
                    "cannot connect to http://{}: is `hale serve` running?",
                    self.authority
                )))
            })?;
            stream.set_nodelay(true)?;
            let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.map_err(|e| {
                anyhow::Error::new(e).context(not_sent(format!("cannot start HTTP with http://{}", self.authority)))
            })?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        Ok(self.sender.as_mut().expect("connected"))
    }

    pub async fn send(&mut self, method: &str, path: &str, body: Option<Vec<u8>>) -> Result<Reply> {
        self.send_with(method, path, body, &[]).await
    }

    pub async fn send_with(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        extra: &[(&str, &str)],
    ) -> Result<Reply> {
        let result = match self.timeout {
            None => self.exchange(method, path, body, extra).await,
            Some(t) => match tokio::time::timeout(t, self.exchange(method, path, body, extra)).await {
                Ok(r) => r,
                Err(_) => Err(anyhow::Error::new(TransportError {
                    delivery: Delivery::Unknown,
                    what: format!(
                        "http://{} did not answer {method} {path} within {} s",
                        self.authority,
                        t.as_secs_f64()
                    ),
                })),
            },
        };
        if result.is_err() {
            // The connection is in an unknown state: start the next request afresh.
            self.sender = None;
        }
        result
    }

    /// GET `path` and write a 2xx answer's body to `dest` as it arrives (a
    /// bulk export file can be larger than memory should hold). Returns the
    /// status, and the bytes written (0 for an answer that is not 2xx, whose
    /// body is returned instead, for the error message).
    pub async fn download(&mut self, path: &str, dest: &std::path::Path, accept: &str) -> Result<(u16, u64, Bytes)> {
        use tokio::io::AsyncWriteExt;
        let resp = self.begin("GET", path, None, &[], accept).await?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        if !(200..300).contains(&status) {
            let bytes = body.collect().await.map_err(|e| self.lost("GET", path, e))?.to_bytes();
            return Ok((status, 0, bytes));
        }
        let mut f = tokio::fs::File::create(dest)
            .await
            .with_context(|| format!("cannot create {}", dest.display()))?;
        let mut written = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.lost("GET", path, e))?;
            if let Ok(data) = frame.into_data() {
                f.write_all(&data)
                    .await
                    .with_context(|| format!("cannot write {}", dest.display()))?;
                written += data.len() as u64;
            }
        }
        f.flush().await?;
        Ok((status, written, Bytes::new()))
    }

    /// A connection that failed mid-request: the request may have been acted on.
    fn lost(&self, method: &str, path: &str, e: hyper::Error) -> anyhow::Error {
        anyhow::Error::new(e).context(TransportError {
            delivery: Delivery::Unknown,
            what: format!(
                "the connection to http://{} failed during {method} {path}",
                self.authority
            ),
        })
    }

    /// Send a request and return the answer with its body not yet read.
    async fn begin(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        extra: &[(&str, &str)],
        accept: &str,
    ) -> Result<hyper::Response<hyper::body::Incoming>> {
        let uri = format!("{}{}", self.base_path, path);
        let mut b = hyper::Request::builder()
            .method(method)
            .uri(uri)
            .header("host", self.authority.clone())
            .header("accept", accept);
        if let Some(t) = &self.token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            b = b.header("content-type", "application/fhir+json");
        }
        for (k, v) in extra {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let sender = self.connect().await?;
        let sent = match sender.ready().await {
            Ok(()) => sender.send_request(req).await,
            Err(e) => Err(e),
        };
        sent.map_err(|e| self.lost(method, path, e))
    }

    async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        extra: &[(&str, &str)],
    ) -> Result<Reply> {
        let resp = self.begin(method, path, body, extra, "application/fhir+json").await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.lost(method, path, e))?
            .to_bytes();
        Ok(Reply { status, headers, body })
    }
}

/// Exponential backoff with a hard deadline: waits `first`, then doubling up
/// to `max`, and none that would end past `deadline`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
    deadline: Instant,
    attempts: u32,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration, deadline: Instant) -> Backoff {
        Backoff {
            next: first,
            max,
            deadline,
            attempts: 0,
        }
    }

    /// The wait before the next attempt, or None when the deadline leaves no room for one.
    pub fn next_wait(&mut self) -> Option<Duration> {
        let wait = self.next;
        if Instant::now() + wait > self.deadline {
            return None;
        }
        self.next = (self.next * 2).min(self.max);
        self.attempts += 1;
        Some(wait)
    }

    /// Retries granted so far.
    pub fn retries(&self) -> u32 {
        self.attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_stops_at_the_deadline() {
        let far = Instant::now() + Duration::from_secs(3600);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350), far);
        let waits: Vec<u128> = (0..4).map(|_| b.next_wait().unwrap().as_millis()).collect();
        assert_eq!(waits, [100, 200, 350, 350]);
        assert_eq!(b.retries(), 4);
        let mut spent = Backoff::new(Duration::from_secs(1), Duration::from_secs(1), Instant::now());
        assert!(spent.next_wait().is_none(), "no wait may end past the deadline");
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_transport_error_that_was_not_sent() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut c = Client::new(&format!("http://127.0.0.1:{port}"), None).unwrap();
        let e = c.send("GET", "/healthz", None).await.err().expect("nothing listens");
        let t = transport_failure(&e).expect("a transport error");
        assert_eq!(t.delivery, Delivery::NotSent);
        // The I/O error stays in the chain (the chaos harness looks for ConnectionRefused).
        assert!(e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some()));
    }
}
