//! Raft RPC over HTTP/1.1 with JSON bodies, and fault injection.
//!
//! Each peer gets keep-alive connections from one pooled hyper client. Every
//! RPC carries a deadline (openraft's hard TTL). Only a peer that certainly
//! did not get a message is `Unreachable` (openraft backs off from it); a
//! slow answer is an ordinary network error, retried without backing off.
//!
//! AppendEntries is sized to the link: openraft 0.9 gives it the heartbeat
//! interval as its deadline, so the client measures each peer's round trip
//! and throughput and sends only the prefix of entries that should arrive in
//! half of that deadline, answering `PartialSuccess` for the rest.
//!
//! Fault injection (`Faults`) lets the chaos harness cut a node off without
//! root or network namespaces: an isolated node drops every raft message it
//! would send and refuses every one it receives, exactly as if its cables
//! were pulled, while its HTTP API keeps serving (stale) reads. It also
//! emulates slow links (round trip, jitter, a bandwidth cap), since these
//! machines have no `netem`.

use crate::peer_tls::{peer_of, Peer, PeerTls};
use crate::types::{HaleNode, NodeId, TypeConfig};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Header carrying the shared cluster secret on every raft RPC.
pub const SECRET_HEADER: &str = "x-hale-cluster-secret";
/// Header naming the sending node (checked against its certificate under mTLS).
pub const FROM_HEADER: &str = "x-hale-raft-from";
/// Header naming the node a request is meant for (a node refuses one meant for another).
pub const TO_HEADER: &str = "x-hale-raft-to";
/// Largest raft RPC body accepted (a snapshot chunk or a batch of entries).
pub const RPC_BODY_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Idle keep-alive connections kept per peer.
pub const IDLE_CONNECTIONS_PER_PEER_MAX: usize = 8;

/// The shape of an emulated network link (fault injection only): what a
/// WAN between data centres looks like, on one machine without `netem`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinkShape {
    /// Round-trip time added to every RPC: half on the request, half on the answer.
    pub rtt_ms: u64,
    /// Up to this much more, drawn per message from a seeded generator.
    pub jitter_ms: u64,
    /// Bandwidth cap in megabits per second per direction (0: no cap).
    pub mbit: u64,
}

impl LinkShape {
    pub fn is_none(&self) -> bool {
        self.rtt_ms == 0 && self.jitter_ms == 0 && self.mbit == 0
    }

    /// How long `bytes` occupy the link.
    fn transmit(&self, bytes: usize) -> Duration {
        if self.mbit == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos((bytes as u64).saturating_mul(8_000) / self.mbit)
    }
}

/// Emulated links: a default shape for every peer, per-peer overrides, and
/// each direction's queue (a message waits for the ones before it to finish
/// transmitting, which is what a bandwidth cap means).
#[derive(Default)]
struct Links {
    default: LinkShape,
    per_node: BTreeMap<NodeId, LinkShape>,
    /// When each (peer address, direction) lane is free again.
    busy_until: BTreeMap<(String, bool), Instant>,
    /// xorshift64 state for jitter; seeded so a run's draws repeat.
    rng: u64,
}

/// Injected faults (only honoured when the node runs with fault injection on),
/// and the drill pause, which any build has: a bounded isolation an admin
/// starts for a drill (`RaftNode::hand_over`, `RaftNode::cut_site`) that ends by
/// itself at its deadline, even if whatever started it is gone.
#[derive(Default)]
pub struct Faults {
    pub isolated: AtomicBool,
    /// End of the drill pause, in ms since [`process_epoch`] (0: none).
    paused_until_ms: std::sync::atomic::AtomicU64,
    /// On the leader: answers to forwarded writes to drop after the write
    /// committed (the forwarding node sees "may still commit").
    pub drop_propose_replies: std::sync::atomic::AtomicU32,
    links: Mutex<Links>,
}

/// A fixed instant of this process that drill-pause deadlines count from.
fn process_epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Faults {
    /// Cut off from raft traffic: by fault injection, or by a drill pause.
    pub fn isolated(&self) -> bool {
        self.isolated.load(Ordering::Acquire) || self.paused()
    }

    /// Whether a drill pause is on (see [`Faults::pause_for`]).
    pub fn paused(&self) -> bool {
        let until = self.paused_until_ms.load(Ordering::Acquire);
        until != 0 && (process_epoch().elapsed().as_millis() as u64) < until
    }

    /// Drop every raft message this node sends, and refuse the ones it
    /// receives (but status, and forwarded writes and read-index requests,
    /// which are answered "not the leader"), for `d`; it ends by itself.
    pub fn pause_for(&self, d: Duration) {
        let until = process_epoch().elapsed() + d;
        self.paused_until_ms
            .store((until.as_millis() as u64).max(1), Ordering::Release);
    }

    /// End a drill pause now.
    pub fn unpause(&self) {
        self.paused_until_ms.store(0, Ordering::Release);
    }

    /// Milliseconds left of a drill pause (0: none).
    pub fn pause_left_ms(&self) -> u64 {
        let until = self.paused_until_ms.load(Ordering::Acquire);
        until.saturating_sub(process_epoch().elapsed().as_millis() as u64)
    }

    /// Seed the jitter generator (a node uses its id, so runs repeat).
    pub fn seed(&self, seed: u64) {
        self.links.lock().rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    }

    /// Emulate `shape` on every link, or only on the link to `node`.
    pub fn set_link(&self, node: Option<NodeId>, shape: LinkShape) {
        let mut l = self.links.lock();
        match node {
            None => l.default = shape,
            Some(n) if shape.is_none() => {
                l.per_node.remove(&n);
            }
            Some(n) => {
                l.per_node.insert(n, shape);
            }
        }
    }

    pub fn link(&self, node: Option<NodeId>) -> LinkShape {
        let l = self.links.lock();
        node.and_then(|n| l.per_node.get(&n).copied()).unwrap_or(l.default)
    }

    /// When a message of `bytes` sent now to `addr` arrives on the emulated link
    /// (`outbound`: request direction): `None` when the link is not emulated,
    /// `Some(None)` when it cannot arrive before `deadline` (it is dropped and
    /// takes no room on the link, as a sender that gave up would not send it),
    /// `Some(Some(t))` otherwise.
    fn arrival(
        &self,
        node: Option<NodeId>,
        addr: &str,
        outbound: bool,
        bytes: usize,
        deadline: Instant,
    ) -> Option<Option<Instant>> {
        let mut l = self.links.lock();
        let shape = node.and_then(|n| l.per_node.get(&n).copied()).unwrap_or(l.default);
        if shape.is_none() {
            return None;
        }
        let jitter_ms = if shape.jitter_ms > 0 {
            let mut x = l.rng.max(1);
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            l.rng = x;
            x % (shape.jitter_ms + 1)
        } else {
            0
        };
        let now = Instant::now();
        let lane = l.busy_until.entry((addr.to_string(), outbound)).or_insert(now);
        let start = (*lane).max(now);
        let done = start + shape.transmit(bytes);
        let at = done + Duration::from_micros(shape.rtt_ms * 500) + Duration::from_millis(jitter_ms);
        if at > deadline {
            return Some(None);
        }
        *lane = done;
        Some(Some(at))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{0} is unreachable: {1}")]
    Unreachable(String, String),
    #[error("{0} did not answer within {1} ms")]
    Timeout(String, u64),
    #[error("{0} answered with HTTP {1}: {2}")]
    Status(String, u16, String),
    #[error("{0} answered with a body that is not what was expected: {1}")]
    Decode(String, String),
    #[error("this node is isolated by fault injection")]
    Isolated,
    #[error("{0} answered as {1}, not as node {2}")]
    WrongPeer(String, String, NodeId),
}

impl SendError {
    /// True when the request certainly did not reach the peer's handler, so
    /// a retry cannot apply it twice.
    pub fn not_delivered(&self) -> bool {
        matches!(self, SendError::Unreachable(..) | SendError::Isolated)
    }
}

/// Requests at most this big measure a peer's fixed cost (round trip, fsync).
const SMALL_REQUEST_BYTES: usize = 8 * 1024;
/// Requests at least this big measure a peer's throughput.
const RATE_SAMPLE_BYTES_MIN: usize = 32 * 1024;
/// The smallest AppendEntries byte budget (one entry is always sent anyway).
/// Above `RATE_SAMPLE_BYTES_MIN`, so that even at the floor a full request
/// is a throughput sample and the estimate can recover.
pub const APPEND_BYTES_MIN: usize = 64 * 1024;

/// What this node has measured of one peer: the basis of AppendEntries sizing.
#[derive(Debug, Clone, Copy)]
struct PeerStats {
    /// Smoothed time of small RPCs: round trip plus the peer's fixed costs.
    base_ms: f64,
    /// Smoothed throughput of large RPCs beyond `base_ms`, in bytes per ms.
    rate_bytes_per_ms: f64,
}

impl Default for PeerStats {
    fn default() -> Self {
        // Cautious until measured: a 10 ms round trip and 10 MB/s.
        PeerStats {
            base_ms: 10.0,
            rate_bytes_per_ms: 10_000.0,
        }
    }
}

impl PeerStats {
    fn observe(&mut self, bytes: usize, elapsed_ms: f64) {
        const ALPHA: f64 = 0.2;
        if bytes <= SMALL_REQUEST_BYTES {
            self.base_ms += ALPHA * (elapsed_ms - self.base_ms);
        }
        if bytes >= RATE_SAMPLE_BYTES_MIN {
            let beyond = (elapsed_ms - self.base_ms).max(0.5);
            let rate = bytes as f64 / beyond;
            self.rate_bytes_per_ms += ALPHA * (rate - self.rate_bytes_per_ms);
        }
    }

    /// A request of `bytes` did not finish in `ttl_ms`: the link or the peer
    /// is slower than believed. Cut the estimate hard (multiplicative decrease).
    fn timed_out(&mut self, bytes: usize, ttl_ms: f64) {
        if bytes >= RATE_SAMPLE_BYTES_MIN {
            let ceiling = bytes as f64 / ttl_ms.max(1.0);
            self.rate_bytes_per_ms = (self.rate_bytes_per_ms.min(ceiling) / 2.0).max(100.0);
        } else {
            // A small request timing out says the peer or the path is slow, not the bandwidth.
            self.base_ms += 0.5 * (ttl_ms - self.base_ms).max(0.0);
        }
    }

    /// Bytes of entries to send so the RPC should finish in half of `ttl_ms`.
    fn append_budget(&self, ttl_ms: f64, bytes_max: usize) -> usize {
        let room_ms = (ttl_ms / 2.0 - self.base_ms).max(0.0);
        ((room_ms * self.rate_bytes_per_ms) as usize).clamp(APPEND_BYTES_MIN, bytes_max.max(APPEND_BYTES_MIN))
    }
}

/// The shared HTTP client for raft traffic.
pub struct NetClient {
    client: Client<PeerConnector, Full<Bytes>>,
    pub faults: Arc<Faults>,
    secret: Option<String>,
    /// This node's id, sent as [`FROM_HEADER`] (none for a tool).
    me: Option<NodeId>,
    /// Raft mTLS: present this certificate, check the server's.
    tls: bool,
    /// When each peer last answered an RPC of ours.
    last_heard: Mutex<BTreeMap<NodeId, Instant>>,
    /// Per peer address: measured round trip and throughput (AppendEntries only).
    stats: Mutex<BTreeMap<String, PeerStats>>,
    /// Per peer: the vote of the last AppendEntries it accepted, and when that
    /// request was sent (the basis of the leader's read lease).
    acks: Mutex<BTreeMap<NodeId, (openraft::Vote<NodeId>, Instant)>>,
    /// Upper bound on the entry bytes of one AppendEntries.
    pub append_bytes_max: usize,
}

impl NetClient {
    /// A node's client: `me` is its id (none for a tool such as the chaos
    /// harness), `tls` its raft mTLS configuration (none: plain HTTP).
    pub fn new(
        faults: Arc<Faults>,
        secret: Option<String>,
        append_bytes_max: usize,
        me: Option<NodeId>,
        tls: Option<&PeerTls>,
    ) -> NetClient {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_millis(500)));
        http.enforce_http(false);
        let connector = PeerConnector {
            http,
            tls: tls.map(|t| tokio_rustls::TlsConnector::from(t.client.clone())),
        };
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(IDLE_CONNECTIONS_PER_PEER_MAX)
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        NetClient {
            client,
            faults,
            secret,
            me,
            tls: tls.is_some(),
            last_heard: Mutex::new(BTreeMap::new()),
            stats: Mutex::new(BTreeMap::new()),
            acks: Mutex::new(BTreeMap::new()),
            append_bytes_max,
        }
    }

    pub fn last_heard(&self, id: NodeId) -> Option<Instant> {
        self.last_heard.lock().get(&id).copied()
    }

    /// The entry bytes one AppendEntries to `addr` may carry to finish within `ttl`.
    pub fn append_budget(&self, addr: &str, ttl: Duration) -> usize {
        let s = self.stats.lock().get(addr).copied().unwrap_or_default();
        s.append_budget(ttl.as_secs_f64() * 1e3, self.append_bytes_max)
    }

    /// When `peer` last accepted an AppendEntries at `vote`, as the time it was sent.
    pub fn acked_at(&self, peer: NodeId, vote: &openraft::Vote<NodeId>) -> Option<Instant> {
        self.acks.lock().get(&peer).filter(|(v, _)| v == vote).map(|(_, t)| *t)
    }

    /// Measured round trip (with the peer's fixed costs) to `addr`, in ms.
    pub fn base_ms(&self, addr: &str) -> Option<f64> {
        self.stats.lock().get(addr).map(|s| s.base_ms)
    }

    /// POST `body` as JSON to `http://{addr}{path}` and decode the JSON answer.
    pub async fn post<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: Option<NodeId>,
        addr: &str,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, SendError> {
        let bytes = serde_json::to_vec(body).map_err(|e| SendError::Decode(addr.into(), e.to_string()))?;
        let body = self.post_raw(target, addr, path, bytes, timeout, false).await?;
        serde_json::from_slice::<Resp>(&body).map_err(|e| SendError::Decode(addr.into(), e.to_string()))
    }

    /// POST already-encoded JSON and return the answer's body. With `measure`,
    /// the round trip feeds the peer's AppendEntries sizing.
    pub async fn post_raw(
        &self,
        target: Option<NodeId>,
        addr: &str,
        path: &str,
        bytes: Vec<u8>,
        timeout: Duration,
        measure: bool,
    ) -> Result<Bytes, SendError> {
        if self.faults.isolated() {
            return Err(SendError::Isolated);
        }
        self.send_raw(target, addr, path, bytes, timeout, measure).await
    }

    /// [`NetClient::post`] that goes out during this node's own drill pause:
    /// the paused node's hand-over message and its look at who leads now.
    /// Fault-injection isolation still stops it.
    pub async fn post_during_pause<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: Option<NodeId>,
        addr: &str,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, SendError> {
        if self.faults.isolated.load(Ordering::Acquire) {
            return Err(SendError::Isolated);
        }
        let bytes = serde_json::to_vec(body).map_err(|e| SendError::Decode(addr.into(), e.to_string()))?;
        let body = self.send_raw(target, addr, path, bytes, timeout, false).await?;
        serde_json::from_slice::<Resp>(&body).map_err(|e| SendError::Decode(addr.into(), e.to_string()))
    }

    async fn send_raw(
        &self,
        target: Option<NodeId>,
        addr: &str,
        path: &str,
        bytes: Vec<u8>,
        timeout: Duration,
        measure: bool,
    ) -> Result<Bytes, SendError> {
        let sent_bytes = bytes.len();
        let scheme = if self.tls { "https" } else { "http" };
        // AppendEntries travel as binary frames ([`crate::frame`]); everything else is JSON.
        let content_type = if bytes.first() == Some(&crate::frame::APPEND_MAGIC) {
            "application/octet-stream"
        } else {
            "application/json"
        };
        let mut req =
            hyper::Request::post(format!("{scheme}://{addr}{path}")).header(hyper::header::CONTENT_TYPE, content_type);
        if let Some(s) = &self.secret {
            req = req.header(SECRET_HEADER, s);
        }
        if let Some(me) = self.me {
            req = req.header(FROM_HEADER, me);
        }
        if let Some(t) = target {
            req = req.header(TO_HEADER, t);
        }
        let req = req
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| SendError::Decode(addr.into(), e.to_string()))?;
        let timeout_ms = timeout.as_millis() as u64;
        let started = Instant::now();
        let deadline = started + timeout;
        let fut = async {
            match self.faults.arrival(target, addr, true, sent_bytes, deadline) {
                None => {}
                Some(Some(at)) => tokio::time::sleep_until(at.into()).await,
                Some(None) => std::future::pending::<()>().await,
            }
            let resp = self.client.request(req).await.map_err(|e| {
                if e.is_connect() {
                    SendError::Unreachable(addr.into(), e.to_string())
                } else {
                    SendError::Status(addr.into(), 0, e.to_string())
                }
            })?;
            let status = resp.status();
            if self.tls {
                // The server proved a node name in the handshake; it must be the node meant.
                let answered = resp.extensions().get::<Peer>().copied();
                if let Some(t) = target {
                    if answered.and_then(|p| p.node_id()) != Some(t) {
                        let who = answered.map_or_else(|| "an unnamed peer".to_string(), |p| p.to_string());
                        return Err(SendError::WrongPeer(addr.into(), who, t));
                    }
                }
            }
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| SendError::Status(addr.into(), status.as_u16(), e.to_string()))?
                .to_bytes();
            match self.faults.arrival(target, addr, false, body.len(), deadline) {
                None => {}
                Some(Some(at)) => tokio::time::sleep_until(at.into()).await,
                Some(None) => std::future::pending::<()>().await,
            }
            if !status.is_success() {
                return Err(SendError::Status(
                    addr.into(),
                    status.as_u16(),
                    String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
                ));
            }
            Ok(body)
        };
        let out = match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(SendError::Timeout(addr.into(), timeout_ms)),
        };
        match &out {
            Ok(_) => {
                if measure {
                    let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
                    self.stats
                        .lock()
                        .entry(addr.to_string())
                        .or_default()
                        .observe(sent_bytes, elapsed_ms);
                }
                if let Some(t) = target {
                    self.last_heard.lock().insert(t, Instant::now());
                }
            }
            Err(SendError::Timeout(..)) if measure => {
                self.stats
                    .lock()
                    .entry(addr.to_string())
                    .or_default()
                    .timed_out(sent_bytes, timeout.as_secs_f64() * 1e3);
            }
            Err(_) => {}
        }
        out
    }
}

/// A connection to a peer: plain TCP, or TLS with the peer's proven identity.
pub enum PeerStream {
    Plain(tokio::net::TcpStream),
    Tls(
        Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
        Option<Peer>,
    ),
}

impl tokio::io::AsyncRead for PeerStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            PeerStream::Tls(s, _) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for PeerStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            PeerStream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            PeerStream::Tls(s, _) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            PeerStream::Tls(s, _) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            PeerStream::Tls(s, _) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl hyper_util::client::legacy::connect::Connection for PeerStream {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        let c = hyper_util::client::legacy::connect::Connected::new();
        match self {
            // Every response on this connection carries the server's identity.
            PeerStream::Tls(_, Some(peer)) => c.extra(*peer),
            _ => c,
        }
    }
}

/// TCP, then (with raft mTLS) the TLS handshake: the client certificate
/// goes out, the server's chain and node name are checked.
#[derive(Clone)]
pub struct PeerConnector {
    http: HttpConnector,
    tls: Option<tokio_rustls::TlsConnector>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<hyper::Uri> for PeerConnector {
    type Response = hyper_util::rt::TokioIo<PeerStream>;
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: hyper::Uri) -> Self::Future {
        let tcp = self.http.call(uri);
        let tls = self.tls.clone();
        Box::pin(async move {
            let tcp = tcp.await?.into_inner();
            let Some(tls) = tls else {
                return Ok(hyper_util::rt::TokioIo::new(PeerStream::Plain(tcp)));
            };
            // The verifier checks the name the server's certificate claims; this one is only sent as SNI.
            let name = rustls::pki_types::ServerName::try_from("raft.hale").expect("a valid DNS name");
            let stream = tls.connect(name, tcp).await?;
            let peer = peer_of(stream.get_ref().1.peer_certificates());
            Ok(hyper_util::rt::TokioIo::new(PeerStream::Tls(Box::new(stream), peer)))
        })
    }
}

/// Creates per-peer network handles for openraft.
#[derive(Clone)]
pub struct NetworkFactory {
    pub client: Arc<NetClient>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Network;

    async fn new_client(&mut self, target: NodeId, node: &HaleNode) -> Network {
        Network {
            client: self.client.clone(),
            target,
            addr: node.raft_addr.clone(),
            in_flight: None,
            keepalive: None,
            heartbeat: None,
        }
    }
}

pub struct Network {
    client: Arc<NetClient>,
    target: NodeId,
    addr: String,
    /// An AppendEntries still travelling after openraft stopped waiting for it.
    in_flight: Option<InFlight>,
    /// A keepalive sent while `in_flight` travels (at most one at a time).
    keepalive: Option<tokio::task::JoinHandle<()>>,
    /// A heartbeat still travelling after openraft stopped waiting for it (at most one).
    heartbeat: Option<Heartbeat>,
}

/// A heartbeat (an AppendEntries without entries) sent in its own task, for
/// the same reason as [`InFlight`]: openraft's deadline must cancel only the
/// wait. Dropping the request at the deadline closed its connection, so on a
/// starved machine every following heartbeat paid a new TLS handshake that
/// outlasted the deadline again; the followers heard nothing and deposed a
/// live leader, over and over (seen with the slow-cluster test pinned to one
/// core: 16 elections in its first 10 s, "tls handshake eof" on every node).
struct Heartbeat {
    vote: openraft::Vote<NodeId>,
    prev_log_id: Option<crate::types::LogId>,
    leader_commit: Option<crate::types::LogId>,
    sent_at: Instant,
    task: tokio::task::JoinHandle<Result<Bytes, SendError>>,
}

/// How long a detached AppendEntries may keep travelling: far beyond any
/// heartbeat deadline, so a slow link or follower still gets the entries.
pub const APPEND_DETACHED_TIMEOUT_MS: u64 = 10_000;

/// How long a detached heartbeat or keepalive may keep travelling: enough for
/// a TLS handshake on a starved machine, short enough that heartbeats resume
/// within a second after a link that swallowed one heals (only one travels
/// at a time, see [`Heartbeat`]).
pub const HEARTBEAT_DETACHED_TIMEOUT_MS: u64 = 1_000;

/// An AppendEntries sent in its own task, so that openraft's deadline (the
/// heartbeat interval) cancels only the wait, not the transfer. When openraft
/// sends the same range again, the answer of this one is used.
struct InFlight {
    vote: openraft::Vote<NodeId>,
    prev_log_id: Option<crate::types::LogId>,
    /// The last entry it carries.
    last: crate::types::LogId,
    sent_at: Instant,
    task: tokio::task::JoinHandle<Result<Bytes, SendError>>,
}

type RpcResult<T, E = openraft::error::Infallible> = Result<T, RPCError<NodeId, HaleNode, RaftError<NodeId, E>>>;

/// The openraft error for a failed send. Only a peer that certainly did not
/// get the message is `Unreachable` (openraft then backs off); a slow peer is
/// a plain network error, retried at the next heartbeat without backing off,
/// so a busy follower is not starved of the very traffic it is behind on.
fn rpc_error<E: std::error::Error>(e: SendError) -> RPCError<NodeId, HaleNode, RaftError<NodeId, E>> {
    match e {
        // 503: the peer is isolated; 401: it refuses our cluster secret. Neither
        // processed the message, and retrying at once would only spin.
        e @ (SendError::Unreachable(..) | SendError::Isolated | SendError::Status(_, 503 | 401, _)) => {
            RPCError::Unreachable(Unreachable::new(&e))
        }
        e => RPCError::Network(NetworkError::new(&e)),
    }
}

impl Network {
    async fn call<Req: Serialize, Resp: DeserializeOwned, E: std::error::Error + DeserializeOwned>(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E> {
        let res: Result<Result<Resp, RaftError<NodeId, E>>, SendError> = self
            .client
            .post(Some(self.target), &self.addr, path, req, option.hard_ttl())
            .await;
        match res {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            Err(e) => Err(rpc_error(e)),
        }
    }
}

/// Encode an AppendEntries request carrying only the prefix of `rpc.entries`
/// that fits in `budget_bytes` (at least one entry), as a binary frame
/// ([`crate::frame`]): each command's bytes as proposed, not re-encoded.
/// Returns the body and how many entries it carries.
pub fn encode_append(rpc: &AppendEntriesRequest<TypeConfig>, budget_bytes: usize) -> (Vec<u8>, usize) {
    crate::frame::encode_append(rpc, budget_bytes)
}

impl RaftNetwork<TypeConfig> for Network {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        // openraft 0.9 gives every AppendEntries the heartbeat interval as its
        // deadline. So that a batch of large entries (a demo batch, a $postpone
        // commit) on a slow link or a busy follower still finishes in time, send
        // only the prefix that the measured link should carry in half of it, and
        // report the rest as not yet sent (`PartialSuccess`): openraft sends the
        // next range at once.
        //
        // Our own deadline is openraft's soft TTL, so that a slow request ends
        // here (and cuts the estimate) before openraft drops the future.
        //
        // A request with entries travels in its own task: if it outlives the
        // deadline, openraft sees a timeout, but the entries still arrive, and
        // when openraft sends the same range again its answer is used. So a
        // link or a follower that needs longer than a heartbeat interval for
        // one entry is slow, not cut off.
        let ttl = option.soft_ttl();
        if rpc.entries.is_empty() {
            return self.heartbeat(rpc, ttl).await;
        }
        let reusable = self.in_flight.as_ref().is_some_and(|f| {
            f.vote == rpc.vote && f.prev_log_id == rpc.prev_log_id && rpc.entries.iter().any(|e| e.log_id == f.last)
        });
        if !reusable {
            // A different range (or leader): the old transfer is of no use to
            // openraft any more; let it finish on its own.
            self.in_flight = None;
            let budget = self.client.append_budget(&self.addr, ttl);
            let (body, sent) = encode_append(&rpc, budget);
            let task = self.spawn_append(body, APPEND_DETACHED_TIMEOUT_MS);
            self.in_flight = Some(InFlight {
                vote: rpc.vote,
                prev_log_id: rpc.prev_log_id,
                last: rpc.entries[sent - 1].log_id,
                sent_at: Instant::now(),
                task,
            });
        }
        if reusable {
            // openraft retries the same range, and sends no heartbeat while it
            // has entries to send, so without this a follower slow to take a
            // large append hears nothing for as long as the transfer lasts and
            // campaigns against a healthy leader (seen under a CPU hog).
            self.send_keepalive(&rpc);
        }
        let flight = self.in_flight.as_mut().expect("set above");
        let joined = match tokio::time::timeout(ttl, &mut flight.task).await {
            Ok(j) => j,
            Err(_) => {
                return Err(rpc_error(SendError::Timeout(
                    format!("{} (still sending entries up to {})", self.addr, flight.last),
                    ttl.as_millis() as u64,
                )))
            }
        };
        let flight = self.in_flight.take().expect("set above");
        let res = joined
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?
            .map_err(rpc_error)?;
        let sent = rpc
            .entries
            .iter()
            .position(|e| e.log_id == flight.last)
            .expect("a reused transfer's last entry is in the request")
            + 1;
        self.answer(&rpc, res, sent, flight.sent_at)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call("/raft/snapshot", &rpc, &option).await
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> RpcResult<VoteResponse<NodeId>> {
        self.call("/raft/vote", &rpc, &option).await
    }

    fn backoff(&self) -> openraft::network::Backoff {
        // A dead peer is retried every 200 ms: quick to notice a restarted node,
        // cheap while it stays down.
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}

impl Network {
    /// POST an encoded AppendEntries to this peer in a task of its own, which
    /// runs for up to `timeout_ms` whoever still waits for it.
    fn spawn_append(&self, body: Vec<u8>, timeout_ms: u64) -> tokio::task::JoinHandle<Result<Bytes, SendError>> {
        let client = self.client.clone();
        let (target, addr) = (self.target, self.addr.clone());
        tokio::spawn(async move {
            client
                .post_raw(
                    Some(target),
                    &addr,
                    "/raft/append",
                    body,
                    Duration::from_millis(timeout_ms),
                    true,
                )
                .await
        })
    }

    /// Send a heartbeat in its own task and wait for it up to `ttl` (see
    /// [`Heartbeat`]). While one is still travelling, another is not sent:
    /// the same request waits on it; a different one (a new commit index or
    /// vote) is reported as timed out, and goes once the first has landed.
    async fn heartbeat(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        ttl: Duration,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        debug_assert!(rpc.entries.is_empty());
        let pending = self.heartbeat.as_ref().is_some_and(|h| !h.task.is_finished());
        let same = self.heartbeat.as_ref().is_some_and(|h| {
            h.vote == rpc.vote && h.prev_log_id == rpc.prev_log_id && h.leader_commit == rpc.leader_commit
        });
        if pending && !same {
            return Err(rpc_error(SendError::Timeout(
                format!("{} (an earlier heartbeat is still travelling)", self.addr),
                ttl.as_millis() as u64,
            )));
        }
        if !(pending && same) {
            let (body, _) = encode_append(&rpc, 0);
            let task = self.spawn_append(body, HEARTBEAT_DETACHED_TIMEOUT_MS);
            self.heartbeat = Some(Heartbeat {
                vote: rpc.vote,
                prev_log_id: rpc.prev_log_id,
                leader_commit: rpc.leader_commit,
                sent_at: Instant::now(),
                task,
            });
        }
        let beat = self.heartbeat.as_mut().expect("set above");
        let joined = match tokio::time::timeout(ttl, &mut beat.task).await {
            Ok(j) => j,
            Err(_) => {
                return Err(rpc_error(SendError::Timeout(self.addr.clone(), ttl.as_millis() as u64)));
            }
        };
        let beat = self.heartbeat.take().expect("set above");
        let res = joined
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?
            .map_err(rpc_error)?;
        self.answer(&rpc, res, 0, beat.sent_at)
    }

    /// Tell the peer this leader is alive while an append to it is still
    /// travelling: an empty AppendEntries with no previous entry and no commit
    /// index matches any log, appends nothing and commits nothing, so it is
    /// safe whatever the transfer has done by the time it lands.
    fn send_keepalive(&mut self, rpc: &AppendEntriesRequest<TypeConfig>) {
        if self.keepalive.as_ref().is_some_and(|k| !k.is_finished()) {
            return;
        }
        let ping = AppendEntriesRequest::<TypeConfig> {
            vote: rpc.vote,
            prev_log_id: None,
            leader_commit: None,
            entries: Vec::new(),
        };
        let (body, _) = encode_append(&ping, 0);
        let client = self.client.clone();
        let (target, addr) = (self.target, self.addr.clone());
        // Not cut at openraft's deadline: that would close the connection
        // mid-request (see [`Heartbeat`]); one at a time bounds them.
        self.keepalive = Some(tokio::spawn(async move {
            if let Err(e) = client
                .post_raw(
                    Some(target),
                    &addr,
                    "/raft/append",
                    body,
                    Duration::from_millis(HEARTBEAT_DETACHED_TIMEOUT_MS),
                    false,
                )
                .await
            {
                tracing::debug!(target, error = %e, "keepalive during a long append failed");
            }
        }));
    }

    /// Turn the peer's answer to an AppendEntries that carried the first
    /// `sent` entries of `rpc` into openraft's answer to `rpc`.
    fn answer(
        &self,
        rpc: &AppendEntriesRequest<TypeConfig>,
        res: Bytes,
        sent: usize,
        sent_at: Instant,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let decoded: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> =
            serde_json::from_slice(&res).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if matches!(
            decoded,
            Ok(AppendEntriesResponse::Success
                | AppendEntriesResponse::PartialSuccess(_)
                | AppendEntriesResponse::Conflict)
        ) {
            // The peer accepted this leader's vote: it will not vote for another
            // candidate until its lease, counted from after `sent_at`, runs out.
            self.client.acks.lock().insert(self.target, (rpc.vote, sent_at));
        }
        match decoded {
            Ok(AppendEntriesResponse::Success) if sent < rpc.entries.len() => {
                let last = rpc.entries[sent - 1].log_id;
                debug_assert!(Some(last) > rpc.prev_log_id, "a partial append moves matching forward");
                Ok(AppendEntriesResponse::PartialSuccess(Some(last)))
            }
            Ok(r) => Ok(r),
            Err(e) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Entry;
    use hale_store::command::{Actor, Command, CommandKind};
    use openraft::{CommittedLeaderId, EntryPayload, LogId, Vote};

    fn entry(index: u64, bytes: usize) -> Entry {
        let cmd = Command {
            references: Default::default(),
            time_ms: 0,
            actor: Actor::system(),
            kind: CommandKind::Audit(vec![hale_store::command::AuditRecord {
                purpose: None,
                time_ms: 0,
                actor: Actor::system(),
                action: hale_store::command::AuditAction::Read,
                rtype: "Patient".into(),
                id: None,
                patient: None,
                outcome: 0,
                detail: "x".repeat(bytes),
            }]),
        };
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(crate::types::Payload::encode(&cmd)),
        }
    }

    fn request(sizes: &[usize]) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), 9)),
            leader_commit: None,
            entries: sizes
                .iter()
                .enumerate()
                .map(|(i, b)| entry(10 + i as u64, *b))
                .collect(),
        }
    }

    /// (entry sizes, budget) -> entries sent
    fn check(sizes: &[usize], budget: usize, expect: usize) {
        let rpc = request(sizes);
        let (body, sent) = encode_append(&rpc, budget);
        assert_eq!(sent, expect, "sizes {sizes:?} budget {budget}");
        let back = crate::frame::decode_append(Bytes::from(body)).unwrap();
        assert_eq!(back.entries.len(), sent);
        assert_eq!(back.vote, rpc.vote);
        assert_eq!(back.prev_log_id, rpc.prev_log_id);
        for (a, b) in back.entries.iter().zip(&rpc.entries) {
            assert_eq!(a.log_id, b.log_id);
        }
    }

    #[test]
    fn append_bodies_carry_the_prefix_that_fits() {
        check(&[], 1_000, 0);
        check(&[10], 1, 1); // one entry always goes, however big
        check(&[100_000], 1_000, 1);
        check(&[1_000, 1_000, 1_000], 1_000_000, 3);
        check(&[1_000, 1_000, 1_000], 2_700, 2); // each entry encodes to about 1.2 kB
        check(&[50_000, 10, 10], 20_000, 1);
        check(&[10, 50_000, 10], 20_000, 1);
    }

    #[test]
    fn the_budget_follows_measurements() {
        let mut s = PeerStats::default();
        // A fast local peer: 1 ms base, ~100 MB/s.
        for _ in 0..50 {
            s.observe(1_000, 1.0);
            s.observe(1_000_000, 11.0);
        }
        assert_eq!(s.append_budget(100.0, 1 << 20), 1 << 20);
        // A 10 ms WAN at 100 Mbit/s (12.5 bytes/µs): about (50 - 10) * 12.5k bytes.
        let mut w = PeerStats::default();
        for _ in 0..50 {
            w.observe(1_000, 10.0);
            w.observe(500_000, 50.0);
        }
        let b = w.append_budget(100.0, 4 << 20);
        assert!((400_000..=600_000).contains(&b), "{b}");
        // A timeout halves what is sent next, down to the floor.
        w.timed_out(b, 100.0);
        assert!(w.append_budget(100.0, 4 << 20) < b / 2 + 1);
        for _ in 0..20 {
            w.timed_out(APPEND_BYTES_MIN, 100.0);
        }
        assert_eq!(w.append_budget(100.0, 4 << 20), APPEND_BYTES_MIN);
        // ... and it recovers: requests at the floor are throughput samples.
        for _ in 0..50 {
            w.observe(1_000, 10.0);
            w.observe(APPEND_BYTES_MIN, 15.0);
        }
        assert!(w.append_budget(100.0, 4 << 20) > 4 * APPEND_BYTES_MIN);
        // A slow heartbeat raises the fixed cost, not the bandwidth estimate.
        let mut h = PeerStats::default();
        let before = h.rate_bytes_per_ms;
        h.timed_out(300, 100.0);
        assert_eq!(h.rate_bytes_per_ms, before);
        assert!(h.base_ms > 10.0);
    }

    #[tokio::test]
    async fn emulated_links_delay_and_queue() {
        let f = Faults::default();
        f.seed(7);
        let far = Instant::now() + Duration::from_secs(60);
        assert!(f.arrival(Some(2), "a", true, 1_000, far).is_none());
        f.set_link(
            None,
            LinkShape {
                rtt_ms: 10,
                jitter_ms: 0,
                mbit: 8,
            },
        );
        let now = Instant::now();
        // 1 MB at 8 Mbit/s occupies the lane for 1 s, then 5 ms one way.
        let a = f.arrival(Some(2), "a", true, 1_000_000, far).unwrap().unwrap();
        let b = f.arrival(Some(2), "a", true, 1_000, far).unwrap().unwrap();
        assert!(a >= now + Duration::from_millis(1_005));
        assert!(b > a, "the second message waits for the first");
        // A message that cannot arrive in time is dropped and takes no room.
        let soon = Instant::now() + Duration::from_millis(50);
        assert_eq!(f.arrival(Some(2), "a", true, 1_000_000, soon), Some(None));
        let d = f.arrival(Some(2), "a", true, 1_000, far).unwrap().unwrap();
        assert!(
            d < b + Duration::from_millis(10),
            "the dropped message left the lane as it was"
        );
        // The other direction and other peers have their own lanes.
        let c = f.arrival(Some(2), "a", false, 1_000, far).unwrap().unwrap();
        assert!(c < a);
        f.set_link(Some(3), LinkShape::default());
        assert_eq!(
            f.link(Some(3)).mbit,
            8,
            "clearing an override falls back to the default"
        );
    }
}
