//! Raft RPC over HTTP/1.1 with JSON bodies, and fault injection.
//!
//! Each peer gets keep-alive connections from one pooled hyper client. Every
//! RPC carries a deadline (openraft's hard TTL). A connection refused or a
//! deadline passed is `Unreachable`: openraft backs off and retries, which is
//! what a dead or partitioned peer needs.
//!
//! Fault injection (`Faults`) lets the chaos harness cut a node off without
//! root or network namespaces: an isolated node drops every raft message it
//! would send and refuses every one it receives, exactly as if its cables
//! were pulled, while its HTTP API keeps serving (stale) reads.

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
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Header carrying the shared cluster secret on every raft RPC.
pub const SECRET_HEADER: &str = "x-hale-cluster-secret";
/// Largest raft RPC body accepted (a snapshot chunk or a batch of entries).
pub const RPC_BODY_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Idle keep-alive connections kept per peer.
pub const IDLE_CONNECTIONS_PER_PEER_MAX: usize = 8;

/// Injected faults (only honoured when the node runs with fault injection on).
#[derive(Default)]
pub struct Faults {
    pub isolated: AtomicBool,
}

impl Faults {
    pub fn isolated(&self) -> bool {
        self.isolated.load(Ordering::Acquire)
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
}

impl SendError {
    /// True when the request certainly did not reach the peer's handler, so
    /// a retry cannot apply it twice.
    pub fn not_delivered(&self) -> bool {
        matches!(self, SendError::Unreachable(..) | SendError::Isolated)
    }
}

/// The shared HTTP client for raft traffic.
pub struct NetClient {
    client: Client<HttpConnector, Full<Bytes>>,
    pub faults: Arc<Faults>,
    secret: Option<String>,
    /// When each peer last answered an RPC of ours.
    last_heard: Mutex<BTreeMap<NodeId, Instant>>,
}

impl NetClient {
    pub fn new(faults: Arc<Faults>, secret: Option<String>) -> NetClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_millis(500)));
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(IDLE_CONNECTIONS_PER_PEER_MAX)
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        NetClient {
            client,
            faults,
            secret,
            last_heard: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn last_heard(&self, id: NodeId) -> Option<Instant> {
        self.last_heard.lock().get(&id).copied()
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
        if self.faults.isolated() {
            return Err(SendError::Isolated);
        }
        let bytes = serde_json::to_vec(body).map_err(|e| SendError::Decode(addr.into(), e.to_string()))?;
        let mut req = hyper::Request::post(format!("http://{addr}{path}"))
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(s) = &self.secret {
            req = req.header(SECRET_HEADER, s);
        }
        let req = req
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| SendError::Decode(addr.into(), e.to_string()))?;
        let timeout_ms = timeout.as_millis() as u64;
        let fut = async {
            let resp = self.client.request(req).await.map_err(|e| {
                if e.is_connect() {
                    SendError::Unreachable(addr.into(), e.to_string())
                } else {
                    SendError::Status(addr.into(), 0, e.to_string())
                }
            })?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| SendError::Status(addr.into(), status.as_u16(), e.to_string()))?
                .to_bytes();
            if !status.is_success() {
                return Err(SendError::Status(
                    addr.into(),
                    status.as_u16(),
                    String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
                ));
            }
            serde_json::from_slice::<Resp>(&body).map_err(|e| SendError::Decode(addr.into(), e.to_string()))
        };
        let out = match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(SendError::Timeout(addr.into(), timeout_ms)),
        };
        if out.is_ok() {
            if let Some(t) = target {
                self.last_heard.lock().insert(t, Instant::now());
            }
        }
        out
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
        }
    }
}

pub struct Network {
    client: Arc<NetClient>,
    target: NodeId,
    addr: String,
}

type RpcResult<T, E = openraft::error::Infallible> = Result<T, RPCError<NodeId, HaleNode, RaftError<NodeId, E>>>;

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
            Err(e @ (SendError::Unreachable(..) | SendError::Isolated | SendError::Timeout(..))) => {
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }
}

impl RaftNetwork<TypeConfig> for Network {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        self.call("/raft/append", &rpc, &option).await
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
