//! A minimal HTTP/1.1 client for the CLI's talks with a running server.

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

pub struct Client {
    authority: String,
    base_path: String,
    token: Option<String>,
    sender: Option<http1::SendRequest<Full<Bytes>>>,
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
        })
    }

    async fn connect(&mut self) -> Result<&mut http1::SendRequest<Full<Bytes>>> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = tokio::net::TcpStream::connect(&self.authority)
                .await
                .with_context(|| format!("cannot connect to http://{}: is `hale serve` running?", self.authority))?;
            stream.set_nodelay(true)?;
            let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
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
        let uri = format!("{}{}", self.base_path, path);
        let mut b = hyper::Request::builder()
            .method(method)
            .uri(uri)
            .header("host", self.authority.clone())
            .header("accept", "application/fhir+json");
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
        sender.ready().await?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Reply { status, headers, body })
    }
}
